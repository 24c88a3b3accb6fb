//! Mailbox watchers: receivers waiting for a device's next envelope, and the events a push
//! notifier needs.
//!
//! A waiter registers interest *before* it reads the mailbox, so an envelope stored between
//! the read and the wait still wakes it (no lost wake-ups). [`crate::Storage`] wakes a
//! device only after its envelope is durable, whoever stored it (a client's send, a peer
//! carrier's delivery), so no caller has to remember to. Entries are removed when their last
//! waiter leaves: the map holds one entry per watched device, never more.
//!
//! With an [`EventSink`] attached, the watchers also report
//! - [`Unwatched`]: an envelope was stored for a device nobody is watching (a push may wake
//!   it) — sent with `try_send` on a bounded queue, dropped and counted when full, so a
//!   slow consumer never delays a send;
//! - [`Presence`]: a device's first watcher arrived or its last one left — never dropped
//!   (a lost "left" would stop pushes to that device), on an unbounded queue whose length is
//!   bounded by the connections being opened and closed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::{Notify, mpsc};

use crate::{DeviceId, Rid};

/// A device: the unit that is watched, woken and pushed.
pub type DeviceKey = (Rid, DeviceId);

/// An envelope was stored for a device with no watcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unwatched {
    pub key: DeviceKey,
    pub urgent: bool,
}

/// A device's watchers came or went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// The device's first watcher arrived.
    Connected(DeviceKey),
    /// The device's last watcher left.
    Disconnected(DeviceKey),
}

/// Where watcher events go.
#[derive(Debug)]
pub struct EventSink {
    unwatched: mpsc::Sender<Unwatched>,
    presence: mpsc::UnboundedSender<Presence>,
}

/// What a consumer reads.
#[derive(Debug)]
pub struct Events {
    pub unwatched: mpsc::Receiver<Unwatched>,
    pub presence: mpsc::UnboundedReceiver<Presence>,
}

/// A sink and its stream; `queue` bounds the [`Unwatched`] events waiting to be read.
pub fn events(queue: usize) -> (EventSink, Events) {
    let (utx, urx) = mpsc::channel(queue.max(1));
    let (ptx, prx) = mpsc::unbounded_channel();
    (
        EventSink {
            unwatched: utx,
            presence: ptx,
        },
        Events {
            unwatched: urx,
            presence: prx,
        },
    )
}

/// The registry of watchers.
#[derive(Debug, Default)]
pub struct Watchers {
    map: Mutex<HashMap<DeviceKey, Arc<Notify>>>,
    events: OnceLock<EventSink>,
    /// Where the store shares presence with other nodes (a database backend).
    shared: OnceLock<mpsc::UnboundedSender<Presence>>,
}

/// A registered watcher; dropping it unregisters.
#[derive(Debug)]
pub struct Subscription {
    watchers: Arc<Watchers>,
    key: DeviceKey,
    notify: Arc<Notify>,
}

impl Watchers {
    /// Sends events to `sink` from now on (once; `false` if a sink was attached already).
    pub fn attach(&self, sink: EventSink) -> bool {
        self.events.set(sink).is_ok()
    }

    /// Also sends presence changes to `tx` (once; the store that shares them with other nodes).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn share_presence(&self, tx: mpsc::UnboundedSender<Presence>) -> bool {
        self.shared.set(tx).is_ok()
    }

    fn presence(&self, p: Presence) {
        if let Some(e) = self.events.get() {
            let _ = e.presence.send(p);
        }
        if let Some(s) = self.shared.get() {
            let _ = s.send(p);
        }
    }

    /// Wakes every watcher (after notifications may have been missed); they re-read.
    pub fn wake_all(&self) {
        for n in self.lock().values() {
            n.notify_waiters();
        }
    }

    /// The devices watched now.
    pub fn watched(&self) -> Vec<DeviceKey> {
        self.lock().keys().copied().collect()
    }

    /// Watches `key`. Enable a `notified()` future *before* reading the mailbox.
    pub fn subscribe(self: &Arc<Self>, key: DeviceKey) -> Subscription {
        let mut map = self.lock();
        let first = !map.contains_key(&key);
        let notify = Arc::clone(map.entry(key).or_default());
        // Sent under the lock, so connect and disconnect events of a device stay in order.
        if first {
            self.presence(Presence::Connected(key));
        }
        drop(map);
        Subscription {
            watchers: Arc::clone(self),
            key,
            notify,
        }
    }

    /// Wakes every watcher of `key`; returns whether there was one.
    pub fn wake(&self, key: &DeviceKey) -> bool {
        match self.lock().get(key) {
            Some(n) => {
                n.notify_waiters();
                true
            }
            None => false,
        }
    }

    /// Envelopes were made durable for `devices`: wake their watchers, and report the
    /// devices nobody watches.
    pub fn stored(&self, devices: &[DeviceKey], urgent: bool) {
        for key in devices {
            if !self.wake(key)
                && let Some(e) = self.events.get()
                && e.unwatched.try_send(Unwatched { key: *key, urgent }).is_err()
            {
                metrics::counter!("relay_push_events_dropped_total").increment(1);
            }
        }
    }

    /// Number of watched devices.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<DeviceKey, Arc<Notify>>> {
        // Plain inserts and removes: the map stays consistent across a panic.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Subscription {
    pub fn notify(&self) -> &Notify {
        &self.notify
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut map = self.watchers.lock();
        // Clones are only made under the lock, so the count is stable here:
        // the map's own reference plus ours means we are the last watcher.
        if Arc::strong_count(&self.notify) == 2 {
            map.remove(&self.key);
            self.watchers.presence(Presence::Disconnected(self.key));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn wake_reaches_enabled_waiter_and_entries_are_cleaned() {
        let w = Arc::new(Watchers::default());
        let key = (Rid([1; 32]), DeviceId(1));
        let sub = w.subscribe(key);
        let sub2 = w.subscribe(key);
        {
            let notified = sub.notify().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            assert!(w.wake(&key));
            tokio::time::timeout(Duration::from_secs(1), notified).await.unwrap();
        }
        drop(sub);
        assert_eq!(w.len(), 1);
        drop(sub2);
        assert!(w.is_empty());
        assert!(!w.wake(&key));
    }

    #[tokio::test]
    async fn events_report_presence_in_order_and_unwatched_devices() {
        let w = Arc::new(Watchers::default());
        let (sink, mut events) = events(4);
        assert!(w.attach(sink));
        let (a, b) = ((Rid([1; 32]), DeviceId(1)), (Rid([2; 32]), DeviceId(1)));
        let sub = w.subscribe(a);
        let again = w.subscribe(a);
        w.stored(&[a, b], true);
        drop(sub);
        drop(again);
        assert_eq!(events.presence.recv().await, Some(Presence::Connected(a)));
        assert_eq!(events.presence.recv().await, Some(Presence::Disconnected(a)));
        assert!(
            events.presence.try_recv().is_err(),
            "one event per arrival and departure"
        );
        assert_eq!(events.unwatched.recv().await, Some(Unwatched { key: b, urgent: true }));
        assert!(
            events.unwatched.try_recv().is_err(),
            "a watched device is woken, not reported"
        );
    }
}
