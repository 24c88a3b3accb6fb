//! What a [`Storage`] shares with the other nodes on its database: it wakes its receivers
//! when another node stores for them, reloads the operator controls another node changed,
//! wakes its outbox dispatcher, publishes its live receivers (so no node pushes to a device
//! another node is streaming to) and counts shared rate limits. On sled (one node) these
//! are no-ops.

use std::time::Duration;

use crate::watch::DeviceKey;
use crate::{Backend, Storage, StoreError};

impl Storage {
    /// Whether the store can serve requests now (the database answers).
    pub async fn ready(&self) -> Result<(), StoreError> {
        match &self.inner.backend {
            #[cfg(feature = "sled")]
            Backend::Sled(_) => Ok(()),
            #[cfg(feature = "postgres")]
            Backend::Postgres(b) => b.ping().await,
        }
    }

    /// Whether another node has a live receiver for `key` (a push would be redundant).
    pub async fn live_elsewhere(&self, key: DeviceKey) -> bool {
        match &self.inner.backend {
            #[cfg(feature = "sled")]
            Backend::Sled(_) => {
                let _ = key;
                false
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres(b) => b.live_elsewhere(key, relay_net_now()).await.unwrap_or_else(|e| {
                tracing::debug!(cause = %e, "live receivers");
                false
            }),
        }
    }

    /// A rate limit shared by the nodes: one per `period`, `burst` at once, for `key`.
    /// `Ok(None)`: allowed (and counted); else how long to wait. A single node (sled)
    /// allows everything here: its in-process limiters are the whole truth.
    ///
    /// On a database a node takes a tenth of the burst at a time and spends it locally, so
    /// most requests cost no round trip; tokens are taken from the shared budget before they
    /// are spent, so the nodes together never exceed it (one node's unspent tokens expire
    /// unused).
    pub async fn shared_rate(&self, key: &[u8], period: Duration, burst: u32) -> Result<Option<Duration>, StoreError> {
        match &self.inner.backend {
            #[cfg(feature = "sled")]
            Backend::Sled(_) => {
                let _ = (key, period, burst);
                Ok(None)
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres(b) => {
                let now = relay_net_now();
                let period_ms = (period.as_millis() as u64).max(1);
                if self.inner.prepaid.take(key, now) {
                    return Ok(None);
                }
                let chunk = (burst / 10).max(1);
                if b.rate(key, period_ms, burst, chunk, now).await?.is_none() {
                    self.inner
                        .prepaid
                        .put(key, chunk - 1, now + period_ms.saturating_mul(u64::from(chunk)));
                    return Ok(None);
                }
                // Fewer than a chunk left: one at a time.
                Ok(b.rate(key, period_ms, burst, 1, now).await?.map(Duration::from_millis))
            }
        }
    }

    /// The value every node on the store must share under `name`: the first node's
    /// `value` is kept, and returned to every later one (compare it with yours). A store of
    /// one node returns `value`.
    pub async fn agree(&self, name: &str, value: &str) -> Result<String, StoreError> {
        match &self.inner.backend {
            #[cfg(feature = "sled")]
            Backend::Sled(_) => {
                let _ = name;
                Ok(value.to_owned())
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres(b) => b.agree(name, value).await,
        }
    }

    /// Re-reads the operator controls (another node changed them).
    #[cfg(feature = "postgres")]
    async fn reload_controls(&self) {
        #[allow(irrefutable_let_patterns, reason = "without sled, PostgreSQL is the only backend")]
        let Backend::Postgres(b) = &self.inner.backend else {
            return;
        };
        match b.controls_now().await {
            Ok((switches, suspended, marked)) => {
                let mut c = self.controls_mut();
                c.switches_off = switches.into_iter().collect();
                c.suspended = suspended.into_iter().collect();
                c.rekey_marked = marked.into_iter().collect();
            }
            Err(e) => tracing::warn!(cause = %e, "reloading the operator controls"),
        }
    }
}

#[cfg(feature = "postgres")]
fn relay_net_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Starts the tasks that share `store`'s state through `pg`; they end when the store is
/// dropped.
#[cfg(feature = "postgres")]
pub(crate) fn share(store: &Storage, pg: crate::PostgresStore) {
    use std::sync::Arc;

    use tokio::sync::mpsc;

    use crate::postgres::live::Heard;
    use crate::watch::Presence;

    let weak = Arc::downgrade(&store.inner);
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(pg.clone().listen(tx));
    tokio::spawn(async move {
        while let Some(heard) = rx.recv().await {
            let Some(inner) = weak.upgrade() else { return };
            let store = Storage { inner };
            match heard {
                Heard::Mailbox(keys) => {
                    for key in &keys {
                        store.inner.watchers.wake(key);
                    }
                }
                Heard::Outbox => store.inner.outbox_written.notify_one(),
                Heard::Controls => store.reload_controls().await,
                Heard::Resync => {
                    store.inner.watchers.wake_all();
                    store.inner.outbox_written.notify_one();
                    store.reload_controls().await;
                }
            }
        }
    });

    let (ptx, mut prx) = mpsc::unbounded_channel();
    store.inner.watchers.share_presence(ptx);
    let weak = Arc::downgrade(&store.inner);
    tokio::spawn(async move {
        let mut refresh = tokio::time::interval(pg.receiver_refresh());
        let mut republish = false;
        loop {
            tokio::select! {
                p = prx.recv() => {
                    let Some(p) = p else { return };
                    let (key, live) = match p {
                        Presence::Connected(k) => (k, true),
                        Presence::Disconnected(k) => (k, false),
                    };
                    if let Err(e) = pg.set_receiver(key, live, relay_net_now()).await {
                        tracing::debug!(cause = %e, "publishing a live receiver");
                    }
                }
                _ = refresh.tick() => {
                    if republish {
                        // The rows may have been lost while the database was away.
                        let Some(inner) = weak.upgrade() else { return };
                        let watched = inner.watchers.watched();
                        drop(inner);
                        republish = false;
                        for key in watched {
                            republish |= pg.set_receiver(key, true, relay_net_now()).await.is_err();
                        }
                    }
                    republish |= pg.refresh_receivers(relay_net_now()).await.is_err();
                }
            }
        }
    });
}

/// Tokens of shared rate limits this node has taken and not spent yet, per key, until they
/// expire. Bounded: past `LIMIT` keys it starts afresh (only stricter).
#[derive(Debug, Default)]
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) struct Prepaid(std::sync::Mutex<std::collections::HashMap<Vec<u8>, (u32, u64)>>);

#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
impl Prepaid {
    const LIMIT: usize = 100_000;

    /// Spends one token of `key`, if there is one.
    fn take(&self, key: &[u8], now_ms: u64) -> bool {
        let mut m = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match m.get_mut(key) {
            Some((left, until)) if *left > 0 && *until > now_ms => {
                *left -= 1;
                true
            }
            _ => false,
        }
    }

    fn put(&self, key: &[u8], tokens: u32, until_ms: u64) {
        let mut m = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if m.len() >= Self::LIMIT {
            m.clear();
        }
        m.insert(key.to_vec(), (tokens, until_ms));
    }
}
