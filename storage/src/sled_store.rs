//! The sled backend.
//!
//! # Key layout (one tree, DESIGN.md section 4)
//! ```text
//! d/{rid:32}{dev:4}            -> DeviceRecord
//! c/{lookup:16}                -> {rid:32}{dev:4}             credential lookup
//! n/{rid:32}                   -> next device id (u32)        ids are never reused
//! b/{server_id:16}             -> BlobRecord (message bytes, stored once per send)
//! m/{rid:32}{dev:4}{seq:8}     -> MailboxEntry                seq = the send's global id
//! e/{expires_at:8}{server_id}  -> idempotency key or empty    blob expiry index
//! k/{rid:32}{dev:4}{cmid:16}   -> {server_id:16}{digest:32}   idempotent sends
//! p/{nonce:16}                 -> expires_at                  used provisioning tokens
//! y/{rid:32}{dev:4}{lr:1}{ref} -> {not_after:8}{KeyPackage}   directory; lr=1 last resort
//! r/{ref}                      -> {rid:32}{dev:4}{not_after:8} Welcome routing by KeyPackageRef
//! g/{blake3(group_id):32}      -> current epoch               per-group commit ordering
//! f/{blake3(group_id):32}      -> latest GroupInfo MLSMessage  external joins
//! h/{rid:32}{dev:4}            -> push handle (sealed by the push proxy, opaque here)
//! o/{blake3(peer):16}{seq:8}   -> {EntryState:20}{envelope_id:16}{record}  interconnect outbox
//! a/{seq:8}                    -> {at:8}{kind_len:1}{kind}{detail}{hash:32}  audit log
//! A/                           -> {seq:8}{hash:32}            audit chain head
//! ```
//! Integers are big-endian so ranges scan in order.
//!
//! # Atomicity
//! All records live in one tree, so each operation is one `Tree::apply_batch`, which
//! sled applies atomically (also across a crash). Read-modify-write sequences run
//! under `write_lock`; readers do not take it. The flush that makes a batch durable
//! happens after the lock is released ([`crate::group_commit`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use bytes::Bytes;
use rand::RngCore as _;
use relay_core::credential::CredentialHash;

use crate::group_commit::GroupCommit;
use crate::model::flags;
use crate::{
    Ack, AuditRecord, Ciphertext, ClaimedKeyPackage, DeviceAuth, DeviceId, KeyPackageCount, KeyPackageError, NewDevice,
    NewKeyPackage, OrderingKind, OutboxEntry, Page, RegisterError, Rid, SendError, SendOutcome, SendRequest, ServerId,
    Stats, Store, StoreError, StoredEnvelope, SweepStats,
};

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

const DEVICE_ACTIVE: u8 = 1;
const RECORD_VERSION: u8 = 1;
/// Device records: version 2 dropped the per-device seq counter and queued-bytes fields.
const DEVICE_RECORD_VERSION: u8 = 2;
/// Operations per batch when sweeping, so the write lock is never held for long.
const SWEEP_CHUNK: usize = 1_000;

impl SledStore {
    pub fn open(config: &SledConfig) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(&config.path)
            .cache_capacity(config.cache_capacity)
            // The group-commit thread flushes continuously; sled's own 500 ms flusher would
            // only add a competing periodic flush.
            .flush_every_ms(None)
            .open()
            .map_err(backend)?;
        let tree = db.open_tree("relay-v1").map_err(backend)?;
        let commit = GroupCommit::start(db.clone());
        Ok(Self {
            db,
            tree,
            commit,
            write_lock: Mutex::new(WriterState::default()),
        })
    }

    /// Bytes sled uses on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// Flushes and stops the flusher thread.
    pub fn close(&self) {
        self.commit.stop();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WriterState> {
        let start = std::time::Instant::now();
        // A panic while holding the lock cannot leave a half-applied batch behind
        // (batches are atomic), so a poisoned lock is safe to reuse.
        let guard = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        metrics::histogram!("relay_storage_lock_wait_seconds").record(start.elapsed().as_secs_f64());
        guard
    }

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

    fn active_devices(&self, rid: &Rid) -> Result<Vec<DeviceId>, StoreError> {
        Ok(self.active_device_records(rid)?.into_iter().map(|(d, _)| d).collect())
    }

    /// Active devices of an address with their records, from one prefix scan.
    fn active_device_records(&self, rid: &Rid) -> Result<Vec<(DeviceId, DeviceRecord)>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(prefixed(b"d/", &rid.0)) {
            let (k, v) = item.map_err(backend)?;
            let rec = DeviceRecord::decode(&v)?;
            if rec.status == DEVICE_ACTIVE {
                out.push((DeviceId(be_u32(&k[34..38])?), rec));
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
        for item in self.tree.scan_prefix(device_key_with(b"m/", rid, dev)) {
            let (_, v) = item.map_err(backend)?;
            let e = MailboxEntry::decode(&v)?;
            if e.flags & flags::GAP == 0 {
                q += u64::from(e.size);
            }
        }
        if st.queued.len() >= CACHE_LIMIT {
            st.queued.clear();
        }
        st.queued.insert((*rid, dev), q);
        Ok(q)
    }

    fn send_locked(&self, st: &mut WriterState, req: &SendRequest) -> Result<SendOutcome, SendError> {
        let (sender_rid, sender_dev) = req.sender;
        let idem_key = req.client_message_id.map(|c| {
            let mut k = device_key_with(b"k/", &sender_rid, sender_dev);
            k.extend_from_slice(&c.0);
            k
        });
        if let Some(k) = &idem_key
            && let Some(v) = self.tree.get(k).map_err(backend)?
        {
            if v.len() != IDEM_RECORD_LEN {
                return Err(StoreError::Corrupt("idempotency record").into());
            }
            if v[16..48] != req.request_digest {
                return Err(SendError::ClientMessageIdConflict);
            }
            let server_id = ServerId(v[..16].try_into().map_err(|_| StoreError::Corrupt("idem"))?);
            let accepted_epoch = (v[48] == 1).then(|| be_u64(&v[49..57])).transpose()?;
            return Ok(SendOutcome {
                server_id,
                delivered_to: Vec::new(),
                duplicate: true,
                accepted_epoch,
            });
        }

        // Per-group ordering: decided under the write lock and written in the same batch as
        // the envelope, so two commits for one epoch can never both win.
        let mut group_update: Option<(Vec<u8>, u64)> = None;
        let mut accepted_epoch = None;
        if let Some(o) = req.ordering {
            let key = prefixed(b"g/", &o.group_key);
            let current = self.tree.get(&key).map_err(backend)?.map(|v| be_u64(&v)).transpose()?;
            match (o.kind, current) {
                (OrderingKind::Commit, None) if o.epoch == 0 => {
                    group_update = Some((key, 1));
                    accepted_epoch = Some(0);
                }
                (OrderingKind::Commit, None) => return Err(SendError::UnknownGroup),
                (OrderingKind::Commit, Some(c)) if o.epoch == c => {
                    group_update = Some((key, c + 1));
                    accepted_epoch = Some(c);
                }
                (OrderingKind::Commit | OrderingKind::Proposal, Some(c)) if o.epoch != c => {
                    return Err(SendError::WrongEpoch {
                        epoch: o.epoch,
                        current: c,
                    });
                }
                (OrderingKind::Application { window }, Some(c)) if o.epoch.saturating_add(window) < c => {
                    return Err(SendError::EpochTooOld {
                        epoch: o.epoch,
                        current: c,
                    });
                }
                _ => {}
            }
        }

        // Resolve every recipient device before writing anything.
        let mut targets: Vec<(Rid, DeviceId)> = Vec::new();
        let mut seen: std::collections::HashSet<(Rid, DeviceId)> = std::collections::HashSet::new();
        for (index, r) in req.recipients.iter().enumerate() {
            let active = self.cached_devices(st, &r.rid)?;
            if active.is_empty() {
                return Err(SendError::UnknownRecipient { index });
            }
            let chosen: Vec<DeviceId> = match &r.devices {
                None => active,
                Some(wanted) => {
                    if wanted.iter().any(|w| !active.contains(w)) {
                        return Err(SendError::UnknownDevice { index });
                    }
                    active.into_iter().filter(|d| wanted.contains(d)).collect()
                }
            };
            for dev in chosen {
                if seen.insert((r.rid, dev)) {
                    targets.push((r.rid, dev));
                }
            }
        }

        let server_id = self.new_server_id()?;
        let seq = server_id.seq();
        let size = req.message.len() as u64;
        let expires_at = req.now_ms.saturating_add(req.ttl_ms);
        let entry_flags = if req.urgent { flags::URGENT } else { 0 };
        let mut batch = sled::Batch::default();
        let mut blobs = BlobCounts::default();
        if !targets.is_empty() {
            blobs.insert_new(
                server_id,
                targets.len() as u32,
                expires_at,
                req.message.as_bytes().clone(),
            );
        }
        let mut delivered_to = Vec::with_capacity(targets.len());
        let mut queued_after = Vec::with_capacity(targets.len());
        for (rid, dev) in targets {
            let mut queued = self.queued_bytes(st, &rid, dev)?;
            self.trim_for_quota(
                &mut batch,
                &mut blobs,
                &rid,
                dev,
                &mut queued,
                size,
                req.max_queue_bytes,
            )?;
            queued_after.push(((rid, dev), queued + size));
            let entry = MailboxEntry {
                flags: entry_flags,
                server_id,
                received_at_ms: req.now_ms,
                expires_at_ms: expires_at,
                size: size as u32,
                dropped: 0,
            };
            batch.insert(mailbox_key(&rid, dev, seq), entry.encode());
            delivered_to.push((rid, dev));
        }
        // The expiry index also carries the idempotency key, which expires with the blob.
        if !delivered_to.is_empty() || idem_key.is_some() {
            let mut exp_key = Vec::with_capacity(26);
            exp_key.extend_from_slice(b"e/");
            exp_key.extend_from_slice(&expires_at.to_be_bytes());
            exp_key.extend_from_slice(&server_id.0);
            batch.insert(exp_key, idem_key.clone().unwrap_or_default());
        }
        if let Some(k) = idem_key {
            let mut v = Vec::with_capacity(IDEM_RECORD_LEN);
            v.extend_from_slice(&server_id.0);
            v.extend_from_slice(&req.request_digest);
            v.push(u8::from(accepted_epoch.is_some()));
            v.extend_from_slice(&accepted_epoch.unwrap_or(0).to_be_bytes());
            batch.insert(k, v);
        }
        if let Some((key, epoch)) = group_update {
            batch.insert(key, &epoch.to_be_bytes());
        }
        let now_state = relay_core::interconnect::EntryState::new(req.now_ms);
        for item in &req.outbox {
            let seq = self.db.generate_id().map_err(backend)?;
            let mut v = Vec::with_capacity(36 + item.record.len());
            v.extend_from_slice(&now_state.encode());
            v.extend_from_slice(&server_id.0);
            v.extend_from_slice(&item.record);
            batch.insert(outbox_key(&item.peer, seq), v);
        }
        blobs.write(&mut batch);
        self.tree.apply_batch(batch).map_err(backend)?;
        // Only a written batch changes what is queued.
        st.queued.extend(queued_after);
        metrics::counter!("relay_mailbox_ops_total", "op" => "enqueue").increment(delivered_to.len() as u64);
        Ok(SendOutcome {
            server_id,
            delivered_to,
            duplicate: false,
            accepted_epoch,
        })
    }

    fn upload_key_packages_locked(
        &self,
        rid: &Rid,
        dev: DeviceId,
        packages: &[NewKeyPackage],
        max_per_device: usize,
    ) -> Result<u32, KeyPackageError> {
        let mut seen = std::collections::HashSet::new();
        for (index, p) in packages.iter().enumerate() {
            if !seen.insert(&p.kp_ref) || self.tree.contains_key(prefixed(b"r/", &p.kp_ref)).map_err(backend)? {
                return Err(KeyPackageError::Duplicate { index });
            }
        }
        let held = self.tree.scan_prefix(device_key_with(b"y/", rid, dev)).count();
        let replaced_last_resort =
            packages.iter().any(|p| p.last_resort) && self.tree.scan_prefix(kp_prefix(rid, dev, true)).next().is_some();
        if held - usize::from(replaced_last_resort) + packages.len() > max_per_device {
            return Err(KeyPackageError::TooMany { max: max_per_device });
        }
        let mut batch = sled::Batch::default();
        for p in packages {
            let route_key = prefixed(b"r/", &p.kp_ref);
            if p.last_resort {
                // One last-resort package per device: the new one replaces the old.
                for old in self.tree.scan_prefix(kp_prefix(rid, dev, true)).keys() {
                    batch.remove(old.map_err(backend)?);
                }
            }
            let mut key = kp_prefix(rid, dev, p.last_resort);
            key.extend_from_slice(&p.kp_ref);
            let mut value = Vec::with_capacity(8 + p.bytes.len());
            value.extend_from_slice(&p.not_after_ms.to_be_bytes());
            value.extend_from_slice(&p.bytes);
            batch.insert(key, value);
            let mut route = Vec::with_capacity(44);
            route.extend_from_slice(&rid.0);
            route.extend_from_slice(&dev.0.to_be_bytes());
            route.extend_from_slice(&p.not_after_ms.to_be_bytes());
            batch.insert(route_key, route);
        }
        self.tree.apply_batch(batch).map_err(backend)?;
        Ok(packages.len() as u32)
    }

    fn claim_locked(&self, targets: &[Rid], now_ms: u64) -> Result<Vec<ClaimedKeyPackage>, StoreError> {
        let mut batch = sled::Batch::default();
        let mut out = Vec::new();
        for rid in targets {
            for dev in self.active_devices(rid)? {
                let mut claimed = None;
                for item in self.tree.scan_prefix(kp_prefix(rid, dev, false)) {
                    let (k, v) = item.map_err(backend)?;
                    let not_after = be_u64(v.get(..8).ok_or(StoreError::Corrupt("key package"))?)?;
                    batch.remove(k.to_vec()); // expired, or handed out now: never again
                    if not_after > now_ms {
                        claimed = Some((Bytes::copy_from_slice(&v[8..]), false));
                        break;
                    }
                }
                if claimed.is_none() {
                    for item in self.tree.scan_prefix(kp_prefix(rid, dev, true)) {
                        let (_, v) = item.map_err(backend)?;
                        let not_after = be_u64(v.get(..8).ok_or(StoreError::Corrupt("key package"))?)?;
                        if not_after > now_ms {
                            claimed = Some((Bytes::copy_from_slice(&v[8..]), true));
                            break;
                        }
                    }
                }
                if let Some((bytes, last_resort)) = claimed {
                    out.push(ClaimedKeyPackage {
                        rid: *rid,
                        device: dev,
                        bytes,
                        last_resort,
                    });
                }
            }
        }
        self.tree.apply_batch(batch).map_err(backend)?;
        Ok(out)
    }

    /// Expired KeyPackages and their routes. Scanned without the writer lock (removing an
    /// expired record cannot race with anything meaningful: an expired package is never
    /// served and cannot be uploaded again), removed in bounded batches.
    fn sweep_key_packages(&self, now_ms: u64) -> Result<u64, StoreError> {
        let packages = self.remove_expired(b"y/", now_ms, |v| v.get(..8))?;
        self.remove_expired(b"r/", now_ms, |v| v.get(36..44))?;
        Ok(packages)
    }

    /// Removes every record under `prefix` whose big-endian expiry (found by `expiry`) has
    /// passed, `SWEEP_CHUNK` keys per batch.
    fn remove_expired(
        &self,
        prefix: &[u8],
        now_ms: u64,
        expiry: impl Fn(&[u8]) -> Option<&[u8]>,
    ) -> Result<u64, StoreError> {
        let mut removed = 0u64;
        let mut batch = sled::Batch::default();
        let mut pending = 0usize;
        for item in self.tree.scan_prefix(prefix) {
            let (k, v) = item.map_err(backend)?;
            if be_u64(expiry(&v).ok_or(StoreError::Corrupt("expiry"))?)? <= now_ms {
                batch.remove(k);
                pending += 1;
                if pending == SWEEP_CHUNK {
                    self.tree.apply_batch(std::mem::take(&mut batch)).map_err(backend)?;
                    removed += pending as u64;
                    pending = 0;
                }
            }
        }
        self.tree.apply_batch(batch).map_err(backend)?;
        Ok(removed + pending as u64)
    }

    /// Drops the oldest entries of a device until `incoming` more bytes fit, leaving one
    /// gap marker (at the seq of the newest dropped entry) that counts what was dropped.
    #[allow(clippy::too_many_arguments)]
    fn trim_for_quota(
        &self,
        batch: &mut sled::Batch,
        blobs: &mut BlobCounts,
        rid: &Rid,
        dev: DeviceId,
        queued: &mut u64,
        incoming: u64,
        quota: u64,
    ) -> Result<(), StoreError> {
        if *queued + incoming <= quota {
            return Ok(());
        }
        let mut dropped = 0u64;
        let mut last: Option<(Vec<u8>, MailboxEntry)> = None;
        for item in self.tree.scan_prefix(device_key_with(b"m/", rid, dev)) {
            if *queued + incoming <= quota {
                break;
            }
            let (k, v) = item.map_err(backend)?;
            let entry = MailboxEntry::decode(&v)?;
            batch.remove(k.to_vec());
            if entry.flags & flags::GAP != 0 {
                dropped += entry.dropped;
            } else {
                dropped += 1;
                *queued = queued.saturating_sub(u64::from(entry.size));
                blobs.release(&self.tree, entry.server_id)?;
            }
            last = Some((k.to_vec(), entry));
        }
        if let Some((key, entry)) = last {
            let gap = MailboxEntry {
                flags: flags::GAP,
                server_id: ServerId([0; 16]),
                received_at_ms: entry.received_at_ms,
                expires_at_ms: entry.expires_at_ms,
                size: 0,
                dropped,
            };
            batch.insert(key, gap.encode());
            metrics::counter!("relay_mailbox_ops_total", "op" => "trim").increment(dropped);
        }
        Ok(())
    }

    /// Adds the next audit record (and the new chain head) to `batch`. Caller holds the lock.
    fn audit_into(
        &self,
        batch: &mut sled::Batch,
        kind: &str,
        detail: &str,
        now_ms: u64,
    ) -> Result<AuditRecord, StoreError> {
        let (seq, prev) = match self.tree.get(b"A/").map_err(backend)? {
            Some(v) if v.len() == 40 => (
                be_u64(&v[..8])? + 1,
                v[8..].try_into().map_err(|_| StoreError::Corrupt("audit head"))?,
            ),
            Some(_) => return Err(StoreError::Corrupt("audit head")),
            None => (1, [0u8; 32]),
        };
        let kind = &kind[..kind.len().min(255)];
        let hash = audit_hash(&prev, seq, now_ms, kind, detail);
        let mut v = Vec::with_capacity(8 + 1 + kind.len() + detail.len() + 32);
        v.extend_from_slice(&now_ms.to_be_bytes());
        v.push(kind.len() as u8);
        v.extend_from_slice(kind.as_bytes());
        v.extend_from_slice(detail.as_bytes());
        v.extend_from_slice(&hash);
        let mut key = b"a/".to_vec();
        key.extend_from_slice(&seq.to_be_bytes());
        batch.insert(key, v);
        let mut head = seq.to_be_bytes().to_vec();
        head.extend_from_slice(&hash);
        batch.insert(b"A/".to_vec(), head);
        Ok(AuditRecord {
            seq,
            at_ms: now_ms,
            kind: kind.to_owned(),
            detail: detail.to_owned(),
            hash,
        })
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

    fn remove_entries(
        &self,
        batch: &mut sled::Batch,
        blobs: &mut BlobCounts,
        rid: &Rid,
        dev: DeviceId,
        entries: &[(u64, MailboxEntry)],
    ) -> Result<u64, StoreError> {
        let mut freed = 0u64;
        for (seq, entry) in entries {
            batch.remove(mailbox_key(rid, dev, *seq));
            if entry.flags & flags::GAP == 0 {
                blobs.release(&self.tree, entry.server_id)?;
                freed += u64::from(entry.size);
            }
        }
        Ok(freed)
    }

    fn ack_locked(&self, st: &mut WriterState, rid: &Rid, dev: DeviceId, ack: &Ack) -> Result<u64, StoreError> {
        let mut entries: Vec<(u64, MailboxEntry)> = Vec::new();
        if let Some(up_to) = ack.up_to {
            let start = mailbox_key(rid, dev, 0);
            let end = mailbox_key(rid, dev, up_to);
            for item in self.tree.range(start..=end) {
                let (k, v) = item.map_err(backend)?;
                entries.push((be_u64(&k[38..46])?, MailboxEntry::decode(&v)?));
            }
        }
        for id in &ack.server_ids {
            // The entry sits at the send's global id; the whole server id must match.
            let seq = id.seq();
            if entries.iter().any(|(s, _)| *s == seq) {
                continue;
            }
            if let Some(v) = self.tree.get(mailbox_key(rid, dev, seq)).map_err(backend)? {
                let entry = MailboxEntry::decode(&v)?;
                if entry.server_id == *id && entry.flags & flags::GAP == 0 {
                    entries.push((seq, entry));
                }
            }
        }
        if entries.is_empty() {
            return Ok(0);
        }
        let mut batch = sled::Batch::default();
        let mut blobs = BlobCounts::default();
        let freed = self.remove_entries(&mut batch, &mut blobs, rid, dev, &entries)?;
        blobs.write(&mut batch);
        self.tree.apply_batch(batch).map_err(backend)?;
        if let Some(q) = st.queued.get_mut(&(*rid, dev)) {
            *q = q.saturating_sub(freed);
        }
        metrics::counter!("relay_mailbox_ops_total", "op" => "ack").increment(entries.len() as u64);
        Ok(entries.len() as u64)
    }

    fn sweep_mailbox_chunk(&self, now_ms: u64) -> Result<u64, StoreError> {
        let devices: Vec<(Rid, DeviceId)> = self
            .tree
            .scan_prefix(b"d/")
            .keys()
            .map(|k| {
                let k = k.map_err(backend)?;
                Ok((
                    Rid(k[2..34].try_into().map_err(|_| StoreError::Corrupt("device key"))?),
                    DeviceId(be_u32(&k[34..38])?),
                ))
            })
            .collect::<Result<_, StoreError>>()?;
        let mut removed = 0u64;
        for (rid, dev) in devices {
            let mut st = self.lock();
            let mut expired = Vec::new();
            for item in self.tree.scan_prefix(device_key_with(b"m/", &rid, dev)) {
                let (k, v) = item.map_err(backend)?;
                let entry = MailboxEntry::decode(&v)?;
                if entry.expires_at_ms > now_ms || expired.len() >= SWEEP_CHUNK {
                    break;
                }
                expired.push((be_u64(&k[38..46])?, entry));
            }
            if expired.is_empty() {
                continue;
            }
            let mut batch = sled::Batch::default();
            let mut blobs = BlobCounts::default();
            let freed = self.remove_entries(&mut batch, &mut blobs, &rid, dev, &expired)?;
            blobs.write(&mut batch);
            self.tree.apply_batch(batch).map_err(backend)?;
            if let Some(q) = st.queued.get_mut(&(rid, dev)) {
                *q = q.saturating_sub(freed);
            }
            removed += expired.len() as u64;
        }
        Ok(removed)
    }

    fn sweep_blobs(&self, now_ms: u64) -> Result<u64, StoreError> {
        let mut removed = 0u64;
        loop {
            let _guard = self.lock();
            let mut batch = sled::Batch::default();
            let mut n = 0usize;
            let end = prefixed(b"e/", &now_ms.to_be_bytes());
            for item in self.tree.range(b"e/".to_vec()..=end) {
                let (k, idem) = item.map_err(backend)?;
                if k.len() != 26 {
                    return Err(StoreError::Corrupt("expiry key"));
                }
                batch.remove(prefixed(b"b/", &k[10..26]));
                if !idem.is_empty() {
                    batch.remove(idem.to_vec());
                }
                batch.remove(k.to_vec());
                n += 1;
                if n >= SWEEP_CHUNK {
                    break;
                }
            }
            if n == 0 {
                return Ok(removed);
            }
            self.tree.apply_batch(batch).map_err(backend)?;
            removed += n as u64;
        }
    }

    fn sweep_nonces(&self, now_ms: u64) -> Result<u64, StoreError> {
        // Expired tokens are refused before storage is asked, so no lock is needed.
        self.remove_expired(b"p/", now_ms, |v| v.get(..8))
    }
}

impl Store for SledStore {
    async fn upload_key_packages(
        &self,
        rid: Rid,
        device: DeviceId,
        packages: Vec<NewKeyPackage>,
        max_per_device: usize,
        _now_ms: u64,
    ) -> Result<u32, KeyPackageError> {
        let n = {
            let _guard = self.lock();
            self.upload_key_packages_locked(&rid, device, &packages, max_per_device)?
        };
        self.durable().await?;
        Ok(n)
    }

    async fn claim_key_packages(&self, targets: Vec<Rid>, now_ms: u64) -> Result<Vec<ClaimedKeyPackage>, StoreError> {
        let claimed = {
            let _guard = self.lock();
            self.claim_locked(&targets, now_ms)?
        };
        // Exactly once: the removal is durable before anyone sees the package.
        self.durable().await?;
        Ok(claimed)
    }

    async fn key_package_count(&self, rid: Rid, device: DeviceId, now_ms: u64) -> Result<KeyPackageCount, StoreError> {
        let mut count = KeyPackageCount::default();
        for (last_resort, slot) in [(false, 0), (true, 1)] {
            for item in self.tree.scan_prefix(kp_prefix(&rid, device, last_resort)) {
                let (_, v) = item.map_err(backend)?;
                if be_u64(v.get(..8).ok_or(StoreError::Corrupt("key package"))?)? > now_ms {
                    if slot == 0 {
                        count.one_time += 1;
                    } else {
                        count.last_resort = true;
                    }
                }
            }
        }
        Ok(count)
    }

    async fn devices_for_key_packages(
        &self,
        refs: Vec<Vec<u8>>,
    ) -> Result<Result<Vec<(Rid, DeviceId)>, usize>, StoreError> {
        let mut out: Vec<(Rid, DeviceId)> = Vec::with_capacity(refs.len());
        for (index, r) in refs.iter().enumerate() {
            let Some(v) = self.tree.get(prefixed(b"r/", r)).map_err(backend)? else {
                return Ok(Err(index));
            };
            if v.len() != 44 {
                return Err(StoreError::Corrupt("key package route"));
            }
            let target = (
                Rid(v[..32].try_into().map_err(|_| StoreError::Corrupt("rid"))?),
                DeviceId(be_u32(&v[32..36])?),
            );
            if !out.contains(&target) {
                out.push(target);
            }
        }
        Ok(Ok(out))
    }

    async fn set_group_info(&self, group_key: [u8; 32], group_info: Bytes) -> Result<(), StoreError> {
        self.tree
            .insert(prefixed(b"f/", &group_key), group_info.as_ref())
            .map_err(backend)?;
        self.durable().await
    }

    async fn set_push_handle(&self, rid: Rid, device: DeviceId, handle: Option<String>) -> Result<bool, StoreError> {
        {
            let _guard = self.lock();
            if self.device_record(&rid, device)?.is_none() {
                return Ok(false);
            }
            let key = device_key_with(b"h/", &rid, device);
            match handle {
                Some(h) => self.tree.insert(key, h.as_bytes()).map_err(backend)?,
                None => self.tree.remove(key).map_err(backend)?,
            };
        }
        self.durable().await?;
        Ok(true)
    }

    async fn push_handle(&self, rid: Rid, device: DeviceId) -> Result<Option<String>, StoreError> {
        self.tree
            .get(device_key_with(b"h/", &rid, device))
            .map_err(backend)?
            .map(|v| String::from_utf8(v.to_vec()).map_err(|_| StoreError::Corrupt("push handle")))
            .transpose()
    }

    async fn drop_push_handle_if(&self, rid: Rid, device: DeviceId, handle: &str) -> Result<bool, StoreError> {
        let dropped = {
            let _guard = self.lock();
            let key = device_key_with(b"h/", &rid, device);
            let current = self.tree.get(&key).map_err(backend)?;
            if current.as_deref() == Some(handle.as_bytes()) {
                self.tree.remove(key).map_err(backend)?;
                true
            } else {
                false
            }
        };
        if dropped {
            self.durable().await?;
        }
        Ok(dropped)
    }

    async fn outbox_due(&self, peer: &str, now_ms: u64, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(outbox_prefix(peer)) {
            let (k, v) = item.map_err(backend)?;
            let entry = decode_outbox(&k, &v)?;
            if entry.state.due(now_ms) {
                out.push(entry);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    async fn outbox_depth(&self, peer: &str) -> Result<(u64, Option<u64>), StoreError> {
        let mut n = 0;
        let mut oldest: Option<u64> = None;
        for item in self.tree.scan_prefix(outbox_prefix(peer)) {
            let (k, v) = item.map_err(backend)?;
            let e = decode_outbox(&k, &v)?;
            n += 1;
            oldest = Some(oldest.map_or(e.state.created_ms, |o| o.min(e.state.created_ms)));
        }
        Ok((n, oldest))
    }

    async fn outbox_retry(
        &self,
        peer: &str,
        seq: u64,
        state: relay_core::interconnect::EntryState,
    ) -> Result<(), StoreError> {
        {
            let _guard = self.lock();
            let key = outbox_key(peer, seq);
            if let Some(v) = self.tree.get(&key).map_err(backend)? {
                let mut v = v.to_vec();
                v[..20].copy_from_slice(&state.encode());
                self.tree.insert(key, v).map_err(backend)?;
            }
        }
        self.durable().await
    }

    async fn outbox_delete(&self, peer: &str, seq: u64) -> Result<(), StoreError> {
        {
            let _guard = self.lock();
            self.tree.remove(outbox_key(peer, seq)).map_err(backend)?;
        }
        self.durable().await
    }

    async fn outbox_dead_letter(&self, peer: &str, seq: u64, detail: String, now_ms: u64) -> Result<(), StoreError> {
        {
            let _guard = self.lock();
            let mut batch = sled::Batch::default();
            batch.remove(outbox_key(peer, seq));
            self.audit_into(&mut batch, "interconnect.dead_letter", &detail, now_ms)?;
            self.tree.apply_batch(batch).map_err(backend)?;
        }
        self.durable().await
    }

    async fn audit_append(&self, kind: &str, detail: String, now_ms: u64) -> Result<AuditRecord, StoreError> {
        let record = {
            let _guard = self.lock();
            let mut batch = sled::Batch::default();
            let r = self.audit_into(&mut batch, kind, &detail, now_ms)?;
            self.tree.apply_batch(batch).map_err(backend)?;
            r
        };
        self.durable().await?;
        Ok(record)
    }

    async fn audit_log(&self) -> Result<Vec<AuditRecord>, StoreError> {
        let mut out: Vec<AuditRecord> = Vec::new();
        let mut prev = [0u8; 32];
        for item in self.tree.scan_prefix(b"a/") {
            let (k, v) = item.map_err(backend)?;
            let seq = be_u64(&k[2..])?;
            let r = decode_audit(seq, &v)?;
            if r.hash != audit_hash(&prev, seq, r.at_ms, &r.kind, &r.detail) {
                return Err(StoreError::Corrupt("audit chain"));
            }
            prev = r.hash;
            out.push(r);
        }
        Ok(out)
    }

    async fn group_info(&self, group_key: [u8; 32]) -> Result<Option<Bytes>, StoreError> {
        Ok(self
            .tree
            .get(prefixed(b"f/", &group_key))
            .map_err(backend)?
            .map(|v| Bytes::copy_from_slice(&v)))
    }

    async fn group_epoch(&self, group_key: [u8; 32]) -> Result<Option<u64>, StoreError> {
        self.tree
            .get(prefixed(b"g/", &group_key))
            .map_err(backend)?
            .map(|v| be_u64(&v))
            .transpose()
    }

    async fn set_group_epoch(&self, group_key: [u8; 32], epoch: u64) -> Result<(), StoreError> {
        {
            let _guard = self.lock();
            self.tree
                .insert(prefixed(b"g/", &group_key), &epoch.to_be_bytes())
                .map_err(backend)?;
        }
        self.durable().await
    }

    async fn register_device(&self, req: NewDevice) -> Result<DeviceId, RegisterError> {
        let device = {
            let mut st = self.lock();
            let nonce_key = prefixed(b"p/", &req.provisioning_nonce);
            if self.tree.contains_key(&nonce_key).map_err(backend)? {
                return Err(RegisterError::TokenUsed);
            }
            let active = self.active_devices(&req.rid)?;
            if active.len() >= req.max_devices {
                return Err(RegisterError::TooManyDevices(active.len()));
            }
            let lookup_key = prefixed(b"c/", &req.credential_lookup);
            if self.tree.contains_key(&lookup_key).map_err(backend)? {
                return Err(RegisterError::LookupCollision);
            }
            let counter_key = prefixed(b"n/", &req.rid.0);
            let next = match self.tree.get(&counter_key).map_err(backend)? {
                Some(v) => be_u32(&v)?,
                None => 1,
            };
            let device = DeviceId(next);
            let rec = DeviceRecord {
                status: DEVICE_ACTIVE,
                created_day: (req.now_ms / 86_400_000) as u32,
                credential: req.credential_hash,
                lookup: req.credential_lookup,
            };
            let mut batch = sled::Batch::default();
            batch.insert(counter_key, &(next + 1).to_be_bytes());
            batch.insert(device_key(&req.rid, device), rec.encode());
            let mut lookup_val = req.rid.0.to_vec();
            lookup_val.extend_from_slice(&device.0.to_be_bytes());
            batch.insert(lookup_key, lookup_val);
            batch.insert(nonce_key, &req.provisioning_expires_at_ms.to_be_bytes());
            self.tree.apply_batch(batch).map_err(backend)?;
            st.devices.remove(&req.rid);
            device
        };
        self.durable().await?;
        Ok(device)
    }

    async fn device_by_lookup(&self, lookup: [u8; 16]) -> Result<Option<DeviceAuth>, StoreError> {
        let Some(v) = self.tree.get(prefixed(b"c/", &lookup)).map_err(backend)? else {
            return Ok(None);
        };
        if v.len() != 36 {
            return Err(StoreError::Corrupt("credential index"));
        }
        let rid = Rid(v[..32].try_into().map_err(|_| StoreError::Corrupt("rid"))?);
        let device = DeviceId(be_u32(&v[32..36])?);
        let Some(rec) = self.device_record(&rid, device)? else {
            return Ok(None);
        };
        if rec.status != DEVICE_ACTIVE || rec.lookup != lookup {
            return Ok(None);
        }
        Ok(Some(DeviceAuth {
            rid,
            device,
            credential_hash: rec.credential,
        }))
    }

    async fn devices(&self, rid: Rid) -> Result<Vec<DeviceId>, StoreError> {
        self.active_devices(&rid)
    }

    async fn delete_device(&self, rid: Rid, device: DeviceId) -> Result<bool, StoreError> {
        {
            let mut st = self.lock();
            let Some(rec) = self.device_record(&rid, device)? else {
                return Ok(false);
            };
            let mut entries = Vec::new();
            for item in self.tree.scan_prefix(device_key_with(b"m/", &rid, device)) {
                let (k, v) = item.map_err(backend)?;
                entries.push((be_u64(&k[38..46])?, MailboxEntry::decode(&v)?));
            }
            let mut batch = sled::Batch::default();
            let mut blobs = BlobCounts::default();
            self.remove_entries(&mut batch, &mut blobs, &rid, device, &entries)?;
            blobs.write(&mut batch);
            batch.remove(device_key(&rid, device));
            batch.remove(device_key_with(b"h/", &rid, device));
            batch.remove(prefixed(b"c/", &rec.lookup));
            for k in self.tree.scan_prefix(device_key_with(b"y/", &rid, device)).keys() {
                batch.remove(k.map_err(backend)?);
            }
            self.tree.apply_batch(batch).map_err(backend)?;
            st.devices.remove(&rid);
            st.queued.remove(&(rid, device));
        }
        self.durable().await?;
        Ok(true)
    }

    async fn send(&self, req: SendRequest) -> Result<SendOutcome, SendError> {
        let outcome = {
            let mut st = self.lock();
            let start = std::time::Instant::now();
            let r = self.send_locked(&mut st, &req);
            metrics::histogram!("relay_storage_write_seconds", "op" => "send").record(start.elapsed().as_secs_f64());
            r?
        };
        // A duplicate is durable already, or its first send is still waiting for the
        // same flush; waiting here keeps "2xx means durable" true in both cases.
        self.durable().await?;
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
        let start = mailbox_key(&rid, device, after.saturating_add(1));
        let end = mailbox_key(&rid, device, u64::MAX);
        let mut envelopes = Vec::new();
        let mut next_cursor = after;
        let mut queue_empty = true;
        for item in self.tree.range(start..=end) {
            let (k, v) = item.map_err(backend)?;
            let seq = be_u64(&k[38..46])?;
            if envelopes.len() >= limit as usize {
                queue_empty = false;
                break;
            }
            next_cursor = seq;
            let entry = MailboxEntry::decode(&v)?;
            if entry.expires_at_ms <= now_ms {
                continue;
            }
            let message = if entry.flags & flags::GAP != 0 {
                Ciphertext::from_stored(Bytes::new())
            } else {
                match self.tree.get(prefixed(b"b/", &entry.server_id.0)).map_err(backend)? {
                    Some(blob) => Ciphertext::from_stored(BlobRecord::payload(&blob)?),
                    // Blob expired before the sweeper reached this entry.
                    None => continue,
                }
            };
            envelopes.push(StoredEnvelope {
                server_id: entry.server_id,
                seq,
                received_at_ms: entry.received_at_ms,
                expires_at_ms: entry.expires_at_ms,
                flags: entry.flags,
                message,
                dropped: entry.dropped,
            });
        }
        metrics::counter!("relay_mailbox_ops_total", "op" => "read").increment(envelopes.len() as u64);
        Ok(Page {
            envelopes,
            next_cursor,
            queue_empty,
        })
    }

    async fn ack(&self, rid: Rid, device: DeviceId, ack: Ack) -> Result<u64, StoreError> {
        let n = {
            let mut st = self.lock();
            self.ack_locked(&mut st, &rid, device, &ack)?
        };
        self.durable().await?;
        Ok(n)
    }

    async fn sweep(&self, now_ms: u64) -> Result<SweepStats, StoreError> {
        let mailbox_entries = self.sweep_mailbox_chunk(now_ms)?;
        let blobs = self.sweep_blobs(now_ms)?;
        let nonces = self.sweep_nonces(now_ms)?;
        let key_packages = self.sweep_key_packages(now_ms)?;
        metrics::counter!("relay_key_packages_expired_total").increment(key_packages);
        metrics::counter!("relay_mailbox_ops_total", "op" => "expire").increment(mailbox_entries);
        Ok(SweepStats {
            blobs,
            mailbox_entries,
            nonces,
        })
    }

    async fn stats(&self) -> Result<Stats, StoreError> {
        let mut s = Stats {
            devices: self.tree.scan_prefix(b"d/").count() as u64,
            mailbox_entries: self.tree.scan_prefix(b"m/").count() as u64,
            ..Stats::default()
        };
        for item in self.tree.scan_prefix(b"b/") {
            let (_, v) = item.map_err(backend)?;
            s.blobs += 1;
            s.blob_bytes += BlobRecord::payload(&v)?.len() as u64;
        }
        Ok(s)
    }
}

/// Remaining-recipient counts of blobs touched by one operation, so a blob released
/// twice in one batch is counted correctly.
#[derive(Default)]
struct BlobCounts {
    touched: HashMap<ServerId, BlobState>,
}

enum BlobState {
    New {
        remaining: u32,
        expires_at: u64,
        payload: Bytes,
    },
    Existing {
        remaining: u32,
        raw: sled::IVec,
    },
    Gone,
}

impl BlobCounts {
    fn insert_new(&mut self, id: ServerId, remaining: u32, expires_at: u64, payload: Bytes) {
        self.touched.insert(
            id,
            BlobState::New {
                remaining,
                expires_at,
                payload,
            },
        );
    }

    fn release(&mut self, tree: &sled::Tree, id: ServerId) -> Result<(), StoreError> {
        if let std::collections::hash_map::Entry::Vacant(slot) = self.touched.entry(id) {
            let state = match tree.get(prefixed(b"b/", &id.0)).map_err(backend)? {
                Some(raw) => BlobState::Existing {
                    remaining: BlobRecord::remaining(&raw)?,
                    raw,
                },
                None => BlobState::Gone,
            };
            slot.insert(state);
        }
        match self.touched.get_mut(&id) {
            Some(BlobState::New { remaining, .. } | BlobState::Existing { remaining, .. }) => {
                *remaining = remaining.saturating_sub(1);
            }
            Some(BlobState::Gone) | None => {}
        }
        Ok(())
    }

    fn write(self, batch: &mut sled::Batch) {
        for (id, state) in self.touched {
            let key = prefixed(b"b/", &id.0);
            match state {
                BlobState::New { remaining: 0, .. } | BlobState::Existing { remaining: 0, .. } => {
                    batch.remove(key);
                }
                BlobState::New {
                    remaining,
                    expires_at,
                    payload,
                } => {
                    batch.insert(key, BlobRecord::encode(remaining, expires_at, &payload));
                }
                BlobState::Existing { remaining, raw } => {
                    let mut v = raw.to_vec();
                    v[1..5].copy_from_slice(&remaining.to_be_bytes());
                    batch.insert(key, v);
                }
                BlobState::Gone => {}
            }
        }
    }
}

/// `version:1 remaining:4 expires_at:8 payload`
struct BlobRecord;

impl BlobRecord {
    fn encode(remaining: u32, expires_at: u64, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(13 + payload.len());
        v.push(RECORD_VERSION);
        v.extend_from_slice(&remaining.to_be_bytes());
        v.extend_from_slice(&expires_at.to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    fn remaining(raw: &[u8]) -> Result<u32, StoreError> {
        if raw.len() < 13 || raw[0] != RECORD_VERSION {
            return Err(StoreError::Corrupt("blob record"));
        }
        be_u32(&raw[1..5])
    }

    fn payload(raw: &sled::IVec) -> Result<Bytes, StoreError> {
        if raw.len() < 13 || raw[0] != RECORD_VERSION {
            return Err(StoreError::Corrupt("blob record"));
        }
        Ok(Bytes::copy_from_slice(&raw[13..]))
    }
}

/// `version:1 status:1 created_day:4 salt:16 hash:32 lookup:16` (version 2; version 1 also
/// held a per-device seq counter and queued bytes, 16 bytes after `created_day`, now derived).
#[derive(Debug, Clone)]
struct DeviceRecord {
    status: u8,
    created_day: u32,
    credential: CredentialHash,
    lookup: [u8; 16],
}

const DEVICE_RECORD_LEN: usize = 70;

impl DeviceRecord {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(DEVICE_RECORD_LEN);
        v.push(DEVICE_RECORD_VERSION);
        v.push(self.status);
        v.extend_from_slice(&self.created_day.to_be_bytes());
        v.extend_from_slice(&self.credential.salt);
        v.extend_from_slice(&self.credential.hash);
        v.extend_from_slice(&self.lookup);
        v
    }

    fn decode(v: &[u8]) -> Result<Self, StoreError> {
        // Version 1 records carry 16 more bytes (seq counter, queued bytes) after created_day.
        let skip = match (v.first(), v.len()) {
            (Some(&DEVICE_RECORD_VERSION), DEVICE_RECORD_LEN) => 0,
            (Some(1), 86) => 16,
            _ => return Err(StoreError::Corrupt("device record")),
        };
        let arr = |r: std::ops::Range<usize>| v[r.start + skip..r.end + skip].to_vec();
        Ok(Self {
            status: v[1],
            created_day: be_u32(&v[2..6])?,
            credential: CredentialHash {
                salt: arr(6..22).try_into().map_err(|_| StoreError::Corrupt("salt"))?,
                hash: arr(22..54).try_into().map_err(|_| StoreError::Corrupt("hash"))?,
            },
            lookup: arr(54..70).try_into().map_err(|_| StoreError::Corrupt("lookup"))?,
        })
    }
}

/// `version:1 flags:1 server_id:16 received_at:8 expires_at:8 size:4 dropped:8`
#[derive(Debug, Clone)]
struct MailboxEntry {
    flags: u32,
    server_id: ServerId,
    received_at_ms: u64,
    expires_at_ms: u64,
    size: u32,
    dropped: u64,
}

const MAILBOX_ENTRY_LEN: usize = 46;

impl MailboxEntry {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(MAILBOX_ENTRY_LEN);
        v.push(RECORD_VERSION);
        v.push(self.flags as u8);
        v.extend_from_slice(&self.server_id.0);
        v.extend_from_slice(&self.received_at_ms.to_be_bytes());
        v.extend_from_slice(&self.expires_at_ms.to_be_bytes());
        v.extend_from_slice(&self.size.to_be_bytes());
        v.extend_from_slice(&self.dropped.to_be_bytes());
        v
    }

    fn decode(v: &[u8]) -> Result<Self, StoreError> {
        if v.len() != MAILBOX_ENTRY_LEN || v[0] != RECORD_VERSION {
            return Err(StoreError::Corrupt("mailbox entry"));
        }
        Ok(Self {
            flags: u32::from(v[1]),
            server_id: ServerId(v[2..18].try_into().map_err(|_| StoreError::Corrupt("server id"))?),
            received_at_ms: be_u64(&v[18..26])?,
            expires_at_ms: be_u64(&v[26..34])?,
            size: be_u32(&v[34..38])?,
            dropped: be_u64(&v[38..46])?,
        })
    }
}

#[allow(clippy::needless_pass_by_value, reason = "used as map_err(backend)")]
fn backend(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn be_u32(b: &[u8]) -> Result<u32, StoreError> {
    b.try_into()
        .map(u32::from_be_bytes)
        .map_err(|_| StoreError::Corrupt("u32"))
}

fn be_u64(b: &[u8]) -> Result<u64, StoreError> {
    b.try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt("u64"))
}

fn prefixed(prefix: &[u8; 2], rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + rest.len());
    k.extend_from_slice(prefix);
    k.extend_from_slice(rest);
    k
}

fn device_key_with(prefix: &[u8; 2], rid: &Rid, dev: DeviceId) -> Vec<u8> {
    let mut k = Vec::with_capacity(62);
    k.extend_from_slice(prefix);
    k.extend_from_slice(&rid.0);
    k.extend_from_slice(&dev.0.to_be_bytes());
    k
}

fn device_key(rid: &Rid, dev: DeviceId) -> Vec<u8> {
    device_key_with(b"d/", rid, dev)
}

/// `[u8; 16]` server id, 32-byte request digest, epoch flag, epoch.
const IDEM_RECORD_LEN: usize = 57;

fn kp_prefix(rid: &Rid, dev: DeviceId, last_resort: bool) -> Vec<u8> {
    let mut k = device_key_with(b"y/", rid, dev);
    k.push(u8::from(last_resort));
    k
}

fn mailbox_key(rid: &Rid, dev: DeviceId, seq: u64) -> Vec<u8> {
    let mut k = device_key_with(b"m/", rid, dev);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn outbox_prefix(peer: &str) -> Vec<u8> {
    let mut k = b"o/".to_vec();
    k.extend_from_slice(&blake3::hash(peer.as_bytes()).as_bytes()[..16]);
    k
}

fn outbox_key(peer: &str, seq: u64) -> Vec<u8> {
    let mut k = outbox_prefix(peer);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn decode_outbox(k: &[u8], v: &[u8]) -> Result<OutboxEntry, StoreError> {
    let corrupt = || StoreError::Corrupt("outbox entry");
    if k.len() != 26 || v.len() < 36 {
        return Err(corrupt());
    }
    Ok(OutboxEntry {
        seq: be_u64(&k[18..])?,
        state: relay_core::interconnect::EntryState::decode(&v[..20]).ok_or_else(corrupt)?,
        envelope_id: ServerId(v[20..36].try_into().map_err(|_| corrupt())?),
        record: Bytes::copy_from_slice(&v[36..]),
    })
}

fn audit_hash(prev: &[u8; 32], seq: u64, at_ms: u64, kind: &str, detail: &str) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(prev);
    h.update(&seq.to_be_bytes());
    h.update(&at_ms.to_be_bytes());
    h.update(kind.as_bytes());
    h.update(&[0]);
    h.update(detail.as_bytes());
    *h.finalize().as_bytes()
}

fn decode_audit(seq: u64, v: &[u8]) -> Result<AuditRecord, StoreError> {
    let corrupt = || StoreError::Corrupt("audit record");
    if v.len() < 8 + 1 + 32 {
        return Err(corrupt());
    }
    let at_ms = be_u64(&v[..8])?;
    let kind_len = usize::from(v[8]);
    let body = &v[9..v.len() - 32];
    if body.len() < kind_len {
        return Err(corrupt());
    }
    let kind = std::str::from_utf8(&body[..kind_len])
        .map_err(|_| corrupt())?
        .to_owned();
    let detail = std::str::from_utf8(&body[kind_len..])
        .map_err(|_| corrupt())?
        .to_owned();
    Ok(AuditRecord {
        seq,
        at_ms,
        kind,
        detail,
        hash: v[v.len() - 32..].try_into().map_err(|_| corrupt())?,
    })
}
