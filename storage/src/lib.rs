//! Durable stores of rcs-relay.
//!
//! The storage contract is split by domain in [`contract`] ([`Devices`], [`Mailboxes`],
//! [`KeyPackages`], [`Groups`], [`PushHandles`], [`Outbox`], [`Audit`], [`Maintenance`];
//! [`Store`] is all of them). [`Storage`] is what the services hold: a backend chosen at
//! run time behind one type, plus the mailbox [`watch`]ers it wakes after every durable
//! write. Stores take and return only ids ([`Rid`], [`DeviceId`], [`ServerId`]) and
//! [`Ciphertext`]: no API here accepts an address, a credential or plaintext, so none can
//! reach the disk.
//!
//! # Durability
//! Every mutating call returns only after the `fdatasync` of the [`journal`] record that holds
//! its whole write set ("ack ⇒ durable", also across a power loss); writers share one
//! `fdatasync` per group. [`SledStore`] keeps sled as the store and index, written with
//! single-key operations and flushed (then `fsync`ed) at checkpoints; a restart replays the
//! journal after the last checkpoint. sled 0.34's `flush_async` is never used: it hangs when
//! many tasks call it (sled#1308).
//!
//! # Layout
//! - [`contract`]: the domain traits every backend implements.
//! - [`model`]: request, result, record and error types shared by all backends.
//! - [`watch`]: mailbox watchers (long-polls) and the events a push notifier consumes.
//! - `sled`: the sled backend, one module per domain ([`SledStore`]).
//! - [`journal`]: the write-ahead journal (framing, group commit, recovery, checkpoints).
//!
//! # What it does not do
//! It never decides policy (limits, TTLs, quotas come in the requests) and never sees an
//! address: callers hash addresses into [`Rid`]s first.

#![forbid(unsafe_code)]

use std::sync::Arc;

use bytes::Bytes;
use relay_core::interconnect::EntryState;
pub use relay_core::{Ciphertext, ClientMessageId, DeviceId, Rid, ServerId};
use tokio::sync::Notify;

pub mod contract;
pub mod journal;
mod lazy_rekey;
pub mod model;
mod nodes;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sled")]
mod sled;
pub mod watch;

#[cfg(not(any(feature = "sled", feature = "postgres")))]
compile_error!("storage needs a backend: enable the `sled` or the `postgres` feature (both are on by default)");

pub use contract::{
    Audit, Controls, Devices, Groups, KeyPackages, Mailboxes, Maintenance, Outbox, PushHandles, Rekey, Reseal, Store,
};
pub use journal::Recovery;
pub use model::*;
#[cfg(feature = "postgres")]
pub use postgres::{PostgresConfig, PostgresStore};
#[cfg(feature = "sled")]
pub use sled::{SledConfig, SledStore};

/// The contract's traits, for `use storage::prelude::*;`.
pub mod prelude {
    pub use crate::contract::{
        Audit as _, Controls as _, Devices as _, Groups as _, KeyPackages as _, Mailboxes as _, Maintenance as _,
        Outbox as _, PushHandles as _, Rekey as _,
    };
}

/// Which backend to open.
#[derive(Debug, Clone)]
pub enum StorageConfig {
    /// The embedded default.
    #[cfg(feature = "sled")]
    Sled(SledConfig),
    /// Several gateway nodes on one PostgreSQL database.
    #[cfg(feature = "postgres")]
    Postgres(PostgresConfig),
}

/// The store the services hold: a backend chosen at run time, and the watchers it wakes.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct Storage {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    backend: Backend,
    watchers: Arc<watch::Watchers>,
    /// Notified when a send queued entries for peer carriers.
    outbox_written: Notify,
    /// The kill switches that are off and the suspended addresses, as stored (read at open,
    /// changed only through [`Controls`]), so every request can check them without I/O.
    controls: std::sync::RwLock<ControlState>,
    /// Shared rate-limit tokens this node holds ([`Storage::shared_rate`]).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    prepaid: nodes::Prepaid,
}

#[derive(Debug, Default)]
struct ControlState {
    switches_off: std::collections::BTreeSet<String>,
    suspended: std::collections::HashSet<Rid>,
    /// The rids still under the previous K_rid ([`Rekey`]); empty outside a rotation.
    rekey_marked: std::collections::HashSet<Rid>,
}

#[derive(Debug)]
enum Backend {
    #[cfg(feature = "sled")]
    Sled(SledStore),
    #[cfg(feature = "postgres")]
    Postgres(Box<PostgresStore>),
}

impl Storage {
    /// Opens the configured backend (sled's recovery runs on the blocking pool; a database
    /// backend connects and applies its migrations). On a database backend, the store also
    /// listens for the other nodes' notifications from now on.
    pub async fn open(config: &StorageConfig) -> Result<Self, StoreError> {
        let backend = match config {
            #[cfg(feature = "sled")]
            StorageConfig::Sled(c) => {
                let c = c.clone();
                let b = tokio::task::spawn_blocking(move || SledStore::open(&c))
                    .await
                    .map_err(|e| StoreError::Backend(format!("opening sled: {e}")))??;
                Backend::Sled(b)
            }
            #[cfg(feature = "postgres")]
            StorageConfig::Postgres(c) => Backend::Postgres(Box::new(PostgresStore::open(c).await?)),
        };
        let (switches_off, suspended, rekey_marked) = match &backend {
            #[cfg(feature = "sled")]
            Backend::Sled(b) => b.controls_now()?,
            #[cfg(feature = "postgres")]
            Backend::Postgres(b) => b.controls_now().await?,
        };
        let store = Self {
            inner: Arc::new(Inner {
                backend,
                watchers: Arc::default(),
                outbox_written: Notify::new(),
                prepaid: nodes::Prepaid::default(),
                controls: std::sync::RwLock::new(ControlState {
                    switches_off: switches_off.into_iter().collect(),
                    suspended: suspended.into_iter().collect(),
                    rekey_marked: rekey_marked.into_iter().collect(),
                }),
            }),
        };
        #[cfg(feature = "postgres")]
        #[allow(irrefutable_let_patterns, reason = "without sled, PostgreSQL is the only backend")]
        if let Backend::Postgres(b) = &store.inner.backend {
            nodes::share(&store, (**b).clone());
        }
        Ok(store)
    }

    /// Whether the kill switch `name` is off.
    pub fn is_switched_off(&self, name: &str) -> bool {
        self.controls().switches_off.contains(name)
    }

    /// Whether an address is suspended.
    pub fn is_suspended(&self, rid: &Rid) -> bool {
        self.controls().suspended.contains(rid)
    }

    fn controls(&self) -> std::sync::RwLockReadGuard<'_, ControlState> {
        self.inner
            .controls
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn controls_mut(&self) -> std::sync::RwLockWriteGuard<'_, ControlState> {
        self.inner
            .controls
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The backend's name, for logs.
    pub fn backend_name(&self) -> &'static str {
        match self.inner.backend {
            #[cfg(feature = "sled")]
            Backend::Sled(_) => "sled",
            #[cfg(feature = "postgres")]
            Backend::Postgres(_) => "postgres",
        }
    }

    /// The mailbox watchers this store wakes after every durable write.
    pub fn watchers(&self) -> &Arc<watch::Watchers> {
        &self.inner.watchers
    }

    /// Resolves when a send has queued envelopes for peer carriers (a permit is kept if no
    /// one is waiting, so a wake-up between two waits is not lost).
    pub async fn outbox_written(&self) {
        self.inner.outbox_written.notified().await;
    }
}

/// Runs `$e` with `$b` bound to the backend.
macro_rules! on_backend {
    ($self:ident, $b:ident => $e:expr) => {
        match &$self.inner.backend {
            #[cfg(feature = "sled")]
            Backend::Sled($b) => $e,
            #[cfg(feature = "postgres")]
            Backend::Postgres($b) => $e,
        }
    };
}

impl Devices for Storage {
    async fn register_device(&self, req: NewDevice) -> Result<DeviceId, RegisterError> {
        on_backend!(self, b => b.register_device(req).await)
    }

    async fn device_by_lookup(&self, lookup: [u8; 16]) -> Result<Option<DeviceAuth>, StoreError> {
        on_backend!(self, b => b.device_by_lookup(lookup).await)
    }

    async fn devices(&self, rid: Rid) -> Result<Vec<DeviceId>, StoreError> {
        on_backend!(self, b => b.devices(rid).await)
    }

    /// Also wakes the device's watchers, so an open long-poll ends.
    async fn delete_device(&self, rid: Rid, device: DeviceId) -> Result<bool, StoreError> {
        let deleted = on_backend!(self, b => b.delete_device(rid, device).await)?;
        if deleted {
            self.inner.watchers.wake(&(rid, device));
        }
        Ok(deleted)
    }
}

impl Mailboxes for Storage {
    /// Also wakes the recipients' watchers (or reports unwatched devices) once the envelope
    /// is durable, and signals the outbox dispatcher when remote parts were queued.
    async fn send(&self, req: SendRequest) -> Result<SendOutcome, SendError> {
        let urgent = req.urgent;
        let queued_remote = !req.outbox.is_empty();
        let outcome = on_backend!(self, b => b.send(req).await)?;
        self.inner.watchers.stored(&outcome.delivered_to, urgent);
        if queued_remote && !outcome.duplicate {
            self.inner.outbox_written.notify_one();
        }
        Ok(outcome)
    }

    async fn receive(
        &self,
        rid: Rid,
        device: DeviceId,
        after: u64,
        limit: u32,
        now_ms: u64,
    ) -> Result<Page, StoreError> {
        on_backend!(self, b => b.receive(rid, device, after, limit, now_ms).await)
    }

    async fn ack(&self, rid: Rid, device: DeviceId, ack: Ack) -> Result<u64, StoreError> {
        on_backend!(self, b => b.ack(rid, device, ack).await)
    }
}

impl KeyPackages for Storage {
    async fn upload_key_packages(
        &self,
        rid: Rid,
        device: DeviceId,
        packages: Vec<NewKeyPackage>,
        max_per_device: usize,
        now_ms: u64,
    ) -> Result<u32, KeyPackageError> {
        on_backend!(self, b => b.upload_key_packages(rid, device, packages, max_per_device, now_ms).await)
    }

    async fn claim_key_packages(&self, targets: Vec<Rid>, now_ms: u64) -> Result<Vec<ClaimedKeyPackage>, StoreError> {
        on_backend!(self, b => b.claim_key_packages(targets, now_ms).await)
    }

    async fn key_package_count(&self, rid: Rid, device: DeviceId, now_ms: u64) -> Result<KeyPackageCount, StoreError> {
        on_backend!(self, b => b.key_package_count(rid, device, now_ms).await)
    }

    async fn devices_for_key_packages(
        &self,
        refs: Vec<Vec<u8>>,
    ) -> Result<Result<Vec<(Rid, DeviceId)>, usize>, StoreError> {
        on_backend!(self, b => b.devices_for_key_packages(refs).await)
    }
}

impl Groups for Storage {
    async fn group_epoch(&self, group_key: [u8; 32]) -> Result<Option<u64>, StoreError> {
        on_backend!(self, b => b.group_epoch(group_key).await)
    }

    async fn set_group_epoch(&self, group_key: [u8; 32], epoch: u64) -> Result<(), StoreError> {
        on_backend!(self, b => b.set_group_epoch(group_key, epoch).await)
    }

    async fn set_group_info(&self, group_key: [u8; 32], group_info: Bytes) -> Result<(), StoreError> {
        on_backend!(self, b => b.set_group_info(group_key, group_info).await)
    }

    async fn group_info(&self, group_key: [u8; 32]) -> Result<Option<Bytes>, StoreError> {
        on_backend!(self, b => b.group_info(group_key).await)
    }
}

impl PushHandles for Storage {
    async fn set_push_handle(&self, rid: Rid, device: DeviceId, handle: Option<String>) -> Result<bool, StoreError> {
        on_backend!(self, b => b.set_push_handle(rid, device, handle).await)
    }

    async fn push_handle(&self, rid: Rid, device: DeviceId) -> Result<Option<String>, StoreError> {
        on_backend!(self, b => b.push_handle(rid, device).await)
    }

    async fn drop_push_handle_if(&self, rid: Rid, device: DeviceId, handle: &str) -> Result<bool, StoreError> {
        on_backend!(self, b => b.drop_push_handle_if(rid, device, handle).await)
    }
}

impl Outbox for Storage {
    async fn outbox_due(&self, peer: &str, now_ms: u64, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        on_backend!(self, b => b.outbox_due(peer, now_ms, limit).await)
    }

    async fn outbox_lease(&self, peer: &str, now_ms: u64, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        on_backend!(self, b => b.outbox_lease(peer, now_ms, limit).await)
    }

    async fn outbox_depth(&self, peer: &str) -> Result<(u64, Option<u64>), StoreError> {
        on_backend!(self, b => b.outbox_depth(peer).await)
    }

    async fn outbox_retry(&self, peer: &str, seq: u64, state: EntryState) -> Result<(), StoreError> {
        on_backend!(self, b => b.outbox_retry(peer, seq, state).await)
    }

    async fn outbox_delete(&self, peer: &str, seq: u64) -> Result<(), StoreError> {
        on_backend!(self, b => b.outbox_delete(peer, seq).await)
    }

    async fn outbox_dead_letter(&self, peer: &str, seq: u64, detail: String, now_ms: u64) -> Result<(), StoreError> {
        on_backend!(self, b => b.outbox_dead_letter(peer, seq, detail, now_ms).await)
    }
}

impl Audit for Storage {
    async fn audit_append(&self, kind: &str, detail: String, now_ms: u64) -> Result<AuditRecord, StoreError> {
        on_backend!(self, b => b.audit_append(kind, detail, now_ms).await)
    }

    async fn audit_log(&self) -> Result<Vec<AuditRecord>, StoreError> {
        on_backend!(self, b => b.audit_log().await)
    }

    async fn audit_head(&self) -> Result<AuditHead, StoreError> {
        on_backend!(self, b => b.audit_head().await)
    }

    async fn audit_add_checkpoint(&self, size: u64, note: String) -> Result<(), StoreError> {
        on_backend!(self, b => b.audit_add_checkpoint(size, note).await)
    }

    async fn audit_checkpoints(&self) -> Result<Vec<String>, StoreError> {
        on_backend!(self, b => b.audit_checkpoints().await)
    }

    async fn audit_prune(&self, upto: u64) -> Result<Option<AuditBase>, StoreError> {
        on_backend!(self, b => b.audit_prune(upto).await)
    }

    async fn audit_base(&self) -> Result<Option<AuditBase>, StoreError> {
        on_backend!(self, b => b.audit_base().await)
    }
}

impl Controls for Storage {
    async fn set_switch(&self, name: &str, off: bool, now_ms: u64) -> Result<(), StoreError> {
        on_backend!(self, b => b.set_switch(name, off, now_ms).await)?;
        let mut c = self.controls_mut();
        if off {
            c.switches_off.insert(name.to_owned());
        } else {
            c.switches_off.remove(name);
        }
        Ok(())
    }

    async fn switches_off(&self) -> Result<Vec<String>, StoreError> {
        on_backend!(self, b => b.switches_off().await)
    }

    async fn set_suspended(&self, rid: Rid, suspended: bool, now_ms: u64) -> Result<(), StoreError> {
        on_backend!(self, b => b.set_suspended(rid, suspended, now_ms).await)?;
        let mut c = self.controls_mut();
        if suspended {
            c.suspended.insert(rid);
        } else {
            c.suspended.remove(&rid);
        }
        Ok(())
    }

    async fn suspended(&self) -> Result<Vec<Rid>, StoreError> {
        on_backend!(self, b => b.suspended().await)
    }

    /// Also wakes the device's live receivers, which find it gone and answer 401.
    async fn revoke_device(&self, rid: Rid, device: DeviceId, now_ms: u64) -> Result<bool, StoreError> {
        let revoked = on_backend!(self, b => b.revoke_device(rid, device, now_ms).await)?;
        self.inner.watchers.wake(&(rid, device));
        Ok(revoked)
    }
}

impl Maintenance for Storage {
    async fn sweep(&self, now_ms: u64) -> Result<SweepStats, StoreError> {
        on_backend!(self, b => b.sweep(now_ms).await)
    }

    async fn stats(&self) -> Result<Stats, StoreError> {
        on_backend!(self, b => b.stats().await)
    }

    async fn digest(&self) -> Result<[u8; 32], StoreError> {
        on_backend!(self, b => b.digest().await)
    }

    fn size_on_disk(&self) -> u64 {
        on_backend!(self, b => b.size_on_disk())
    }

    fn close(&self) {
        on_backend!(self, b => b.close());
    }
}

impl Storage {
    /// Whether `rid` is still under the previous K_rid (a rotation's re-key is due).
    pub fn is_rekey_marked(&self, rid: &Rid) -> bool {
        let c = self.controls();
        !c.rekey_marked.is_empty() && c.rekey_marked.contains(rid)
    }

    /// How many rids are still under the previous K_rid.
    pub fn rekey_left(&self) -> usize {
        self.controls().rekey_marked.len()
    }
}

impl Rekey for Storage {
    async fn rekey_begin(&self, now_ms: u64) -> Result<u64, StoreError> {
        let marked = on_backend!(self, b => b.rekey_begin(now_ms).await)?;
        let all = on_backend!(self, b => b.rekey_marked().await)?;
        self.controls_mut().rekey_marked = all.into_iter().collect();
        Ok(marked)
    }

    async fn rekey_marked(&self) -> Result<Vec<Rid>, StoreError> {
        on_backend!(self, b => b.rekey_marked().await)
    }

    async fn rekey(&self, old: Rid, new: Rid, reseal: Reseal) -> Result<bool, StoreError> {
        let moved = on_backend!(self, b => b.rekey(old, new, reseal).await)?;
        let mut c = self.controls_mut();
        c.rekey_marked.remove(&old);
        if moved && c.suspended.remove(&old) {
            c.suspended.insert(new);
        }
        Ok(moved)
    }

    async fn rekey_abandon(&self, now_ms: u64) -> Result<u64, StoreError> {
        let left = on_backend!(self, b => b.rekey_abandon(now_ms).await)?;
        self.controls_mut().rekey_marked.clear();
        Ok(left)
    }
}
