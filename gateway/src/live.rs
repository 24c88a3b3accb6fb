//! Live receivers: long-polls waiting for a device's next envelope.
//!
//! A waiter registers interest *before* it reads the mailbox, so an envelope stored
//! between the read and the wait still wakes it (no lost wake-ups). Senders wake a
//! device only after its envelope is durable. Entries are removed when their last
//! waiter leaves, so the map holds one entry per connected receiver, never more.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use relay_core::{DeviceId, Rid};
use tokio::sync::Notify;

type Key = (Rid, DeviceId);

/// Registry of live receivers.
#[derive(Debug, Default)]
pub struct Live {
    map: Mutex<HashMap<Key, Arc<Notify>>>,
    /// Told when a device's first receiver arrives and its last one leaves (push scheduling).
    events: Option<crate::push::PushEvents>,
}

/// A registered waiter; dropping it unregisters.
#[derive(Debug)]
pub struct Subscription {
    live: Arc<Live>,
    key: Key,
    notify: Arc<Notify>,
}

impl Live {
    pub fn new(events: Option<crate::push::PushEvents>) -> Self {
        Self {
            map: Mutex::default(),
            events,
        }
    }

    pub fn subscribe(self: &Arc<Self>, key: Key) -> Subscription {
        let mut map = self.lock();
        let first = !map.contains_key(&key);
        let notify = Arc::clone(map.entry(key).or_default());
        // Sent under the lock, so connect and disconnect events of a device stay in order.
        if first && let Some(e) = &self.events {
            e.send(crate::push::Event::Connected(key));
        }
        drop(map);
        Subscription {
            live: Arc::clone(self),
            key,
            notify,
        }
    }

    /// Wakes every waiter of `key`; returns whether there was one.
    pub fn wake(&self, key: &Key) -> bool {
        match self.lock().get(key) {
            Some(n) => {
                n.notify_waiters();
                true
            }
            None => false,
        }
    }

    /// Whether `key` has a live receiver now.
    pub fn is_live(&self, key: &Key) -> bool {
        self.lock().contains_key(key)
    }

    /// Number of devices with a live receiver.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Arc<Notify>>> {
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
        let mut map = self.live.lock();
        // Clones are only made under the lock, so the count is stable here:
        // the map's own reference plus ours means we are the last waiter.
        if Arc::strong_count(&self.notify) == 2 {
            map.remove(&self.key);
            if let Some(e) = &self.live.events {
                e.send(crate::push::Event::Disconnected(self.key));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn wake_reaches_enabled_waiter_and_entries_are_cleaned() {
        let live = Arc::new(Live::default());
        let key = (Rid([1; 32]), DeviceId(1));
        let sub = live.subscribe(key);
        let sub2 = live.subscribe(key);
        {
            let notified = sub.notify().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            assert!(live.wake(&key));
            tokio::time::timeout(Duration::from_secs(1), notified).await.unwrap();
        }
        drop(sub);
        assert_eq!(live.len(), 1);
        drop(sub2);
        assert!(live.is_empty());
        assert!(!live.wake(&key));
    }
}
