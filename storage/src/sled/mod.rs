//! The sled backend.
//!
//! # Layout
//! - `layout`: the key layout (one tree) and key builders.
//! - `records`: value codecs (devices, mailbox entries, blobs, idempotency, outbox, audit).
//! - one module per domain of the contract: `devices`, `mailbox`, `keypackages`, `groups`,
//!   `push`, `outbox`, `audit`, `sweep`.
//!
//! # Atomicity
//! All records live in one tree, so each operation is one `Tree::apply_batch`, which
//! sled applies atomically (also across a crash). Read-modify-write sequences run
//! under `write_lock`; readers do not take it. The flush that makes a batch durable
//! happens after the lock is released ([`crate::group_commit`]).

mod audit;
mod devices;
mod groups;
mod keypackages;
mod layout;
mod mailbox;
mod outbox;
mod push;
mod records;
mod sweep;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use rand::RngCore as _;

use self::layout::{DEVICE, MAILBOX, backend, device_key, device_key_with, prefixed, rid_device};
use self::records::{DEVICE_ACTIVE, DeviceRecord, MailboxEntry};
use crate::group_commit::GroupCommit;
use crate::{DeviceId, Rid, ServerId, StoreError};

/// Configuration of the sled backend.
#[derive(Debug, Clone)]
pub struct SledConfig {
    pub path: PathBuf,
    /// sled page cache, bytes.
    pub cache_capacity: u64,
}

/// The embedded store.
#[derive(Debug)]
pub struct SledStore {
    db: sled::Db,
    tree: sled::Tree,
    commit: GroupCommit,
    /// The writer lock, and the state only writers touch (derived from the tree, so it is
    /// rebuilt lazily after a restart).
    write_lock: Mutex<WriterState>,
}

/// Per-device state kept in memory so a send writes one key per recipient device: its
/// mailbox entry. A mailbox entry's seq is the send's global id (the first 8 bytes of its
/// server id), so there is no per-device counter to rewrite and ack-by-id needs no index.
#[derive(Debug, Default)]
struct WriterState {
    /// Bytes queued per device (non-gap entries), filled on first use by a mailbox scan.
    queued: HashMap<(Rid, DeviceId), u64>,
    /// Active devices per address, filled on first use; dropped on register and delete.
    devices: HashMap<Rid, Vec<DeviceId>>,
}

/// Entries per cache before it is simply cleared (memory bound; everything is re-derivable).
const CACHE_LIMIT: usize = 1_000_000;

/// sled reports a held directory lock only as text in an I/O error; this is the one place
/// that reads it, so callers get [`StoreError::InUse`].
#[allow(clippy::needless_pass_by_value, reason = "used as map_err(open_error)")]
fn open_error(e: sled::Error) -> StoreError {
    match &e {
        sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => StoreError::InUse(io.to_string()),
        _ => backend(e),
    }
}

impl SledStore {
    pub fn open(config: &SledConfig) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(&config.path)
            .cache_capacity(config.cache_capacity)
            // The group-commit thread flushes continuously; sled's own 500 ms flusher would
            // only add a competing periodic flush.
            .flush_every_ms(None)
            .open()
            .map_err(open_error)?;
        let tree = db.open_tree("relay-v1").map_err(backend)?;
        let commit = GroupCommit::start(db.clone());
        Ok(Self {
            db,
            tree,
            commit,
            write_lock: Mutex::new(WriterState::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WriterState> {
        let start = std::time::Instant::now();
        // A panic while holding the lock cannot leave a half-applied batch behind
        // (batches are atomic), so a poisoned lock is safe to reuse.
        let guard = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        metrics::histogram!("relay_storage_lock_wait_seconds").record(start.elapsed().as_secs_f64());
        guard
    }

    /// Resolves once a flush that started after this call has completed.
    async fn durable(&self) -> Result<(), StoreError> {
        let start = std::time::Instant::now();
        let r = self.commit.durable().await;
        metrics::histogram!("relay_storage_durable_wait_seconds").record(start.elapsed().as_secs_f64());
        r
    }

    fn device_record(&self, rid: &Rid, dev: DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        match self.tree.get(device_key(rid, dev)).map_err(backend)? {
            Some(v) => DeviceRecord::decode(&v).map(Some),
            None => Ok(None),
        }
    }

    /// Active devices of an address, from one prefix scan.
    fn active_devices(&self, rid: &Rid) -> Result<Vec<DeviceId>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(prefixed(DEVICE, &rid.0)) {
            let (k, v) = item.map_err(backend)?;
            if DeviceRecord::decode(&v)?.status == DEVICE_ACTIVE {
                out.push(rid_device(&k)?.1);
            }
        }
        Ok(out)
    }

    /// Active devices of `rid`, cached. Caller holds the lock.
    fn cached_devices(&self, st: &mut WriterState, rid: &Rid) -> Result<Vec<DeviceId>, StoreError> {
        if let Some(d) = st.devices.get(rid) {
            return Ok(d.clone());
        }
        let d = self.active_devices(rid)?;
        if st.devices.len() >= CACHE_LIMIT {
            st.devices.clear();
        }
        st.devices.insert(*rid, d.clone());
        Ok(d)
    }

    /// Bytes queued for a device, cached. Caller holds the lock.
    fn queued_bytes(&self, st: &mut WriterState, rid: &Rid, dev: DeviceId) -> Result<u64, StoreError> {
        if let Some(q) = st.queued.get(&(*rid, dev)) {
            return Ok(*q);
        }
        let mut q = 0u64;
        for item in self.tree.scan_prefix(device_key_with(MAILBOX, rid, dev)) {
            let (_, v) = item.map_err(backend)?;
            let e = MailboxEntry::decode(&v)?;
            if !e.is_gap() {
                q += u64::from(e.size);
            }
        }
        if st.queued.len() >= CACHE_LIMIT {
            st.queued.clear();
        }
        st.queued.insert((*rid, dev), q);
        Ok(q)
    }

    fn new_server_id(&self) -> Result<ServerId, StoreError> {
        // sled's id generator is monotonic and never repeats across restarts; the
        // random half keeps ids unguessable.
        // +1: mailbox seqs are these ids, and a receive cursor of 0 means "from the start".
        let id = self.db.generate_id().map_err(backend)? + 1;
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&id.to_be_bytes());
        rand::rng().fill_bytes(&mut out[8..]);
        Ok(ServerId(out))
    }
}
