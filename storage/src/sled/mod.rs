//! The sled backend: sled as the store and index, behind the write-ahead [`journal`].
//!
//! ```text
//!  request ─► spawn_blocking ─► domain locks ─► write set ─► journal append (LSN) ─► sled
//!                                                             single-key puts/deletes
//!          ◄─ 2xx ◄─ await journal.durable(LSN) ◄── group fdatasync (journal thread)
//!  checkpoint thread: watermark W ─► Db::flush ─► fsync sled's files ─► checkpoint(W)
//! ```
//!
//! # Layout
//! - `layout`: the key layout (one tree) and key builders; `records`: value codecs.
//! - `writeset`: the journal payload and how it is applied.
//! - `index`: the in-memory mailbox index (rebuilt at start); `migrate`: layout 1 → 2.
//! - one module per domain of the contract: `devices`, `mailbox`, `keypackages`, `groups`,
//!   `push`, `outbox`, `audit`, `sweep`; `checkpoint`: the checkpoint thread.
//!
//! # Durability and atomicity
//! Every mutation is one write set: one journal record, then single-key sled operations. The
//! caller's future resolves only after the journal's `fdatasync` covering the record, so an
//! acknowledged write survives a power loss; a crash between the append and the sled writes
//! is repaired by replaying the journal after the last checkpoint (write sets are idempotent).
//! sled itself is flushed only at checkpoints, after which its files are `fsync`ed.
//!
//! # Locks
//! No global writer lock: each invariant has its own, always taken in this order —
//! `devices` (registration, deletion, the device cache) → `keypackages` (exactly-once claims)
//! → `push` → an idempotency stripe (one client message id) → a group stripe (first commit
//! for an epoch wins) → `mailboxes` (the index, quotas, ids) → `outbox` → `audit`. A write
//! set is appended *and applied* while its writer holds the locks that order its keys, so
//! the journal and sled see conflicting writes in the same order. All of it runs on tokio's
//! blocking pool, never on the async workers.

mod audit;
mod checkpoint;
mod controls;
mod devices;
mod groups;
mod index;
mod keypackages;
mod layout;
mod mailbox;
mod migrate;
mod outbox;
mod push;
mod records;
mod rekey;
mod sweep;
mod writer;
mod writeset;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use self::index::Index;
use self::layout::{DEVICE, ID_RESERVED, backend, be_u64, device_key, prefixed, rid_device};
use self::records::{DEVICE_ACTIVE, DeviceRecord};
use self::writeset::WriteSet;
use crate::journal::{Journal, JournalConfig, Recovery};
use crate::{DeviceId, Rid, StoreError};

/// Configuration of the sled backend.
#[derive(Debug, Clone)]
pub struct SledConfig {
    /// sled's directory.
    pub path: PathBuf,
    /// The journal's directory (beside sled's, not inside it).
    pub journal: PathBuf,
    /// sled page cache, bytes.
    pub cache_capacity: u64,
    /// A new journal segment after this many bytes.
    pub journal_segment_bytes: u64,
    /// Checkpoint once this many journal bytes are not yet covered by one (bounds recovery).
    pub checkpoint_bytes: u64,
    /// ... or once this much time has passed with anything to cover.
    pub checkpoint_interval: Duration,
}

impl SledConfig {
    /// The defaults for a data directory: `sled/` and `journal/` in it.
    pub fn in_dir(data_dir: &std::path::Path) -> Self {
        Self {
            path: data_dir.join("sled"),
            journal: data_dir.join("journal"),
            cache_capacity: 256 << 20,
            journal_segment_bytes: 64 << 20,
            checkpoint_bytes: 256 << 20,
            checkpoint_interval: Duration::from_secs(60),
        }
    }
}

/// The embedded store; cheap to clone.
#[derive(Debug, Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: sled::Db,
    tree: sled::Tree,
    path: PathBuf,
    journal: Journal,
    /// Active devices per address (filled on first use), guarding device writes.
    devices: Mutex<HashMap<Rid, Vec<DeviceId>>>,
    /// Credential lookups of active devices (every request authenticates: no disk read and
    /// no hand-off to the blocking pool once a credential is known).
    auth: Mutex<AuthCache>,
    keypackages: Mutex<()>,
    push: Mutex<()>,
    idempotency: Stripes,
    groups: Stripes,
    mailboxes: Mutex<Mailboxes>,
    /// Guards outbox writes; holds the leases handed to the dispatcher: (peer, seq) → until.
    outbox: Mutex<HashMap<(String, u64), u64>>,
    audit: Mutex<()>,
    checkpoint: checkpoint::Checkpointer,
    writer: writer::Writer,
    /// What the last open replayed.
    recovery: Recovery,
}

/// The mailbox index and the id allocator, under one lock.
#[derive(Debug)]
struct Mailboxes {
    index: Index,
    /// The next send id; ids up to `reserved` are covered by a durable `I/` record.
    next_id: u64,
    reserved: u64,
}

/// Positive credential lookups, and a generation bumped by every deletion so a lookup read
/// before a deletion is never cached after it.
#[derive(Debug, Default)]
struct AuthCache {
    map: HashMap<[u8; 16], crate::DeviceAuth>,
    generation: u64,
}

/// Ids reserved per `I/` record.
const ID_BATCH: u64 = 1 << 20;

/// Entries per device cache before it is simply cleared (memory bound).
const CACHE_LIMIT: usize = 1_000_000;

/// Locks striped by a key's hash.
#[derive(Debug)]
struct Stripes([Mutex<()>; 64]);

impl Stripes {
    fn new() -> Self {
        Self(std::array::from_fn(|_| Mutex::new(())))
    }

    fn lock(&self, key: &[u8]) -> MutexGuard<'_, ()> {
        let h = blake3::hash(key);
        lock(&self.0[usize::from(h.as_bytes()[0]) % self.0.len()])
    }
}

/// A poisoned lock is safe to reuse: every critical section leaves memory consistent before
/// it can fail (write sets are applied last).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

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
    /// Opens sled, replays the journal after the last checkpoint, converts an older layout,
    /// rebuilds the mailbox index and starts the checkpoint thread (blocking).
    pub fn open(config: &SledConfig) -> Result<Self, StoreError> {
        let started = Instant::now();
        let db = sled::Config::new()
            .path(&config.path)
            .cache_capacity(config.cache_capacity)
            // Durability comes from the journal and checkpoints. sled's own flusher writes its
            // dirty pages every second, so a checkpoint has little left to write and the disk
            // sees a steady trickle instead of bursts that stall the journal's fdatasyncs.
            .flush_every_ms(Some(1000))
            .open()
            .map_err(open_error)?;
        let tree = db.open_tree("relay-v1").map_err(backend)?;
        let journal_config = JournalConfig {
            dir: config.journal.clone(),
            segment_bytes: config.journal_segment_bytes,
        };
        let (journal, recovery) = Journal::open(&journal_config, |_, payload| writeset::apply(&tree, payload))
            .map_err(|e| StoreError::Recovery(e.to_string()))?;
        migrate::to_current(&db, &tree)?;
        let index = Self::rebuild_index(&tree)?;
        let reserved = tree
            .get(ID_RESERVED)
            .map_err(backend)?
            .map(|v| be_u64(&v))
            .transpose()?
            // Layout 1 ids came from sled's own generator.
            .map_or_else(|| db.generate_id().map_err(backend).map(|id| id + 1), Ok)?;
        let inner = Arc::new(Inner {
            checkpoint: checkpoint::Checkpointer::default(),
            writer: writer::Writer::default(),
            db,
            tree,
            path: config.path.clone(),
            journal,
            devices: Mutex::default(),
            auth: Mutex::default(),
            keypackages: Mutex::default(),
            push: Mutex::default(),
            idempotency: Stripes::new(),
            groups: Stripes::new(),
            mailboxes: Mutex::new(Mailboxes {
                index,
                next_id: reserved,
                reserved,
            }),
            outbox: Mutex::default(),
            audit: Mutex::default(),
            recovery,
        });
        // Everything replayed is made durable in sled at once, so a crash during the next
        // run never replays it again.
        if recovery.records > 0 {
            inner.checkpoint_now()?;
        }
        checkpoint::Checkpointer::start(&inner, config);
        writer::Writer::start(&inner)?;
        // Present at zero from the start, so an alert on their increase sees the first one.
        for stage in ["journal", "checkpoint"] {
            metrics::counter!("relay_storage_failures_total", "stage" => stage).increment(0);
        }
        log_recovery(&inner.recovery, started);
        Ok(Self { inner })
    }

    /// What opening this store replayed from the journal.
    pub fn recovery(&self) -> Recovery {
        self.inner.recovery
    }

    /// Takes a checkpoint now (blocking; the checkpoint thread does this on its own).
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.inner.checkpoint_now()
    }

    /// Runs the mutation `op` on the writer thread and resolves once its write set is durable
    /// (`op` returns its result and the LSN to wait for).
    async fn write<T, E>(&self, op: impl FnOnce(&Inner) -> Result<(T, u64), E> + Send + 'static) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let start = Instant::now();
        let (tx, rx) = tokio::sync::oneshot::channel::<Result<T, E>>();
        let job: writer::Job = Box::new(move |inner: &Inner| match op(inner) {
            Ok((value, lsn)) => inner.journal.when_durable(
                lsn,
                Box::new(move |r| {
                    let _ = tx.send(r.map(|()| value).map_err(E::from));
                }),
            ),
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        });
        self.inner.writer.submit(job)?;
        let r = rx.await.unwrap_or_else(|_| Err(StoreError::Closed.into()));
        metrics::histogram!("relay_storage_durable_wait_seconds").record(start.elapsed().as_secs_f64());
        r
    }

    /// Runs the read `f` on tokio's blocking pool (storage never blocks an async worker).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|_| StoreError::Backend("a storage task panicked".into()))?
    }

    /// Resolves once journal record `lsn` is durable.
    async fn durable(&self, lsn: u64) -> Result<(), StoreError> {
        let start = Instant::now();
        let r = self.inner.journal.durable(lsn).await;
        metrics::histogram!("relay_storage_durable_wait_seconds").record(start.elapsed().as_secs_f64());
        r
    }

    /// Rebuilds the mailbox index from the blob records, tombstones and gap records.
    fn rebuild_index(tree: &sled::Tree) -> Result<Index, StoreError> {
        let started = Instant::now();
        let mut active = std::collections::HashSet::new();
        for item in tree.scan_prefix(DEVICE) {
            let (k, v) = item.map_err(backend)?;
            if DeviceRecord::decode(&v)?.status == DEVICE_ACTIVE {
                active.insert(rid_device(&k)?);
            }
        }
        let index = mailbox::load_index(tree, &active)?;
        tracing::debug!(
            slots = index.len(),
            secs = started.elapsed().as_secs_f64(),
            "mailbox index rebuilt"
        );
        Ok(index)
    }
}

fn log_recovery(recovery: &Recovery, started: Instant) {
    if recovery.records > 0 || recovery.torn_at.is_some() {
        tracing::info!(
            records = recovery.records,
            bytes = recovery.bytes,
            checkpoint_lsn = recovery.checkpoint_lsn,
            torn_tail = recovery.torn_at.is_some(),
            secs = started.elapsed().as_secs_f64(),
            "storage recovered from the journal"
        );
    }
}

impl Inner {
    /// Appends `ws` to the journal and applies it to sled; the caller holds the locks that
    /// order its keys. Returns the LSN to wait on (for an empty set: the last one appended,
    /// so a decision read from not-yet-durable state is still covered).
    fn commit(&self, ws: &WriteSet) -> Result<u64, StoreError> {
        if ws.is_empty() {
            return Ok(self.journal.last_lsn());
        }
        let start = Instant::now();
        let (lsn, applied) = self
            .journal
            .append(ws.as_bytes(), || writeset::apply(&self.tree, ws.as_bytes()))?;
        applied?;
        metrics::histogram!("relay_storage_write_seconds").record(start.elapsed().as_secs_f64());
        Ok(lsn)
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

    /// Active devices of `rid`, cached.
    fn cached_devices(&self, rid: &Rid) -> Result<Vec<DeviceId>, StoreError> {
        let mut cache = lock(&self.devices);
        if let Some(d) = cache.get(rid) {
            return Ok(d.clone());
        }
        let d = self.active_devices(rid)?;
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(*rid, d.clone());
        Ok(d)
    }

    /// The next send id, reserving a new batch in `ws` when the last one is used up.
    fn next_id(m: &mut Mailboxes, ws: &mut WriteSet) -> u64 {
        let id = m.next_id;
        m.next_id += 1;
        if m.next_id > m.reserved {
            m.reserved = m.next_id + ID_BATCH;
            ws.put(ID_RESERVED, &m.reserved.to_be_bytes());
        }
        id
    }
}
