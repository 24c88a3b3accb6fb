//! Expiry (mailbox entries, blobs, idempotency records, provisioning nonces, KeyPackages)
//! in bounded chunks, statistics and lifecycle.

use super::SledStore;
use super::layout::{
    BLOB, DEVICE, EXPIRY, KEY_PACKAGE, KEY_PACKAGE_ROUTE, MAILBOX, NONCE, backend, be_u64, device_key_with,
    mailbox_seq, prefixed, rid_device,
};
use super::records::{BlobCounts, BlobRecord, MailboxEntry};
use crate::contract::Maintenance;
use crate::{Stats, StoreError, SweepStats};

/// Operations per batch when sweeping, so the write lock is never held for long.
const SWEEP_CHUNK: usize = 1_000;

impl Maintenance for SledStore {
    async fn sweep(&self, now_ms: u64) -> Result<SweepStats, StoreError> {
        let mailbox_entries = self.sweep_mailboxes(now_ms)?;
        let blobs = self.sweep_blobs(now_ms)?;
        // Expired tokens are refused before storage is asked, so no lock is needed.
        let nonces = self.remove_expired(NONCE, now_ms, |v| v.get(..8))?;
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
            devices: self.tree.scan_prefix(DEVICE).count() as u64,
            mailbox_entries: self.tree.scan_prefix(MAILBOX).count() as u64,
            ..Stats::default()
        };
        for item in self.tree.scan_prefix(BLOB) {
            let (_, v) = item.map_err(backend)?;
            s.blobs += 1;
            s.blob_bytes += BlobRecord::payload(&v)?.len() as u64;
        }
        Ok(s)
    }

    fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// Flushes and stops the flusher thread.
    fn close(&self) {
        self.commit.stop();
    }
}

impl SledStore {
    /// Expired mailbox entries, device by device, each device's removal one batch.
    fn sweep_mailboxes(&self, now_ms: u64) -> Result<u64, StoreError> {
        let devices = self
            .tree
            .scan_prefix(DEVICE)
            .keys()
            .map(|k| rid_device(&k.map_err(backend)?))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let mut removed = 0u64;
        for (rid, dev) in devices {
            let mut st = self.lock();
            let mut expired = Vec::new();
            for item in self.tree.scan_prefix(device_key_with(MAILBOX, &rid, dev)) {
                let (k, v) = item.map_err(backend)?;
                let entry = MailboxEntry::decode(&v)?;
                if entry.expires_at_ms > now_ms || expired.len() >= SWEEP_CHUNK {
                    break;
                }
                expired.push((mailbox_seq(&k)?, entry));
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

    /// Expired blobs and the idempotency records that expire with them.
    fn sweep_blobs(&self, now_ms: u64) -> Result<u64, StoreError> {
        let mut removed = 0u64;
        loop {
            let _guard = self.lock();
            let mut batch = sled::Batch::default();
            let mut n = 0usize;
            let end = prefixed(EXPIRY, &now_ms.to_be_bytes());
            for item in self.tree.range(EXPIRY.to_vec()..=end) {
                let (k, idem) = item.map_err(backend)?;
                if k.len() != 26 {
                    return Err(StoreError::Corrupt("expiry key"));
                }
                batch.remove(prefixed(BLOB, &k[10..26]));
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

    /// Expired KeyPackages and their routes. Scanned without the writer lock (removing an
    /// expired record cannot race with anything meaningful: an expired package is never
    /// served and cannot be uploaded again), removed in bounded batches.
    fn sweep_key_packages(&self, now_ms: u64) -> Result<u64, StoreError> {
        let packages = self.remove_expired(KEY_PACKAGE, now_ms, |v| v.get(..8))?;
        self.remove_expired(KEY_PACKAGE_ROUTE, now_ms, |v| v.get(36..44))?;
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
}
