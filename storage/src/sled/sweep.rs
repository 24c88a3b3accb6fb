//! Expiry (blobs with their idempotency records, gap records, provisioning nonces,
//! KeyPackages) in bounded chunks, statistics and lifecycle.

use super::layout::{
    BLOB, DEVICE, EXPIRY, GAP, KEY_PACKAGE, KEY_PACKAGE_ROUTE, NONCE, backend, be_u64, device_seq, prefixed, rid_device,
};
use super::records::{BlobRecord, decode_gap};
use super::writeset::WriteSet;
use super::{Inner, SledStore, lock};
use crate::contract::Maintenance;
use crate::{Stats, StoreError, SweepStats};

/// Records per write set when sweeping, so no lock is held for long.
const SWEEP_CHUNK: usize = 1_000;

impl Maintenance for SledStore {
    async fn sweep(&self, now_ms: u64) -> Result<SweepStats, StoreError> {
        let (stats, lsn) = self
            .blocking(move |s| {
                let (blobs, mailbox_entries) = s.sweep_blobs(now_ms)?;
                s.sweep_gaps(now_ms)?;
                let nonces = {
                    let _devices = lock(&s.devices);
                    // Expired tokens are refused before storage is asked.
                    s.remove_expired(NONCE, now_ms, |v| v.get(..8))?
                };
                let key_packages = {
                    let _kp = lock(&s.keypackages);
                    let n = s.remove_expired(KEY_PACKAGE, now_ms, |v| v.get(..8))?;
                    s.remove_expired(KEY_PACKAGE_ROUTE, now_ms, |v| v.get(36..44))?;
                    n
                };
                metrics::counter!("relay_key_packages_expired_total").increment(key_packages);
                metrics::counter!("relay_mailbox_ops_total", "op" => "expire").increment(mailbox_entries);
                let stats = SweepStats {
                    blobs,
                    mailbox_entries,
                    nonces,
                };
                Ok((stats, s.journal.last_lsn()))
            })
            .await?;
        self.durable(lsn).await?;
        Ok(stats)
    }

    async fn stats(&self) -> Result<Stats, StoreError> {
        self.blocking(|s| {
            let mut st = Stats {
                devices: s.tree.scan_prefix(DEVICE).count() as u64,
                mailbox_entries: lock(&s.mailboxes).index.len(),
                ..Stats::default()
            };
            for item in s.tree.scan_prefix(BLOB) {
                let (_, v) = item.map_err(backend)?;
                let (_, end) = BlobRecord::header(&v)?;
                st.blobs += 1;
                st.blob_bytes += (v.len() - end) as u64;
            }
            Ok(st)
        })
        .await
    }

    /// Every tree, in name order, every key and value in key order (length-prefixed). The
    /// in-memory mailbox index is derived from these records, so they are the whole state.
    async fn digest(&self) -> Result<[u8; 32], StoreError> {
        self.blocking(|s| {
            let mut h = blake3::Hasher::new();
            let mut names = s.db.tree_names();
            names.sort();
            for name in names {
                let tree = s.db.open_tree(&name).map_err(backend)?;
                h.update(&(name.len() as u64).to_be_bytes()).update(&name);
                for item in tree.iter() {
                    let (k, v) = item.map_err(backend)?;
                    h.update(&(k.len() as u64).to_be_bytes()).update(&k);
                    h.update(&(v.len() as u64).to_be_bytes()).update(&v);
                }
            }
            Ok(*h.finalize().as_bytes())
        })
        .await
    }

    fn size_on_disk(&self) -> u64 {
        self.inner.db.size_on_disk().unwrap_or(0)
    }

    /// Stops the checkpoint thread, makes every appended record durable and takes a final
    /// checkpoint, so the next start replays nothing.
    fn close(&self) {
        self.inner.writer.stop();
        self.inner.checkpoint.stop();
        self.inner.journal.stop();
        if let Err(e) = self.inner.checkpoint_now() {
            tracing::error!(cause = %e, "final checkpoint failed; the next start replays the journal");
        }
    }
}

impl Inner {
    /// Expired blobs (found in the index) with their tombstones, then expired idempotency
    /// records (the `e/` index); returns (blobs, mailbox entries) removed.
    fn sweep_blobs(&self, now_ms: u64) -> Result<(u64, u64), StoreError> {
        let (mut blobs, mut entries) = (0u64, 0u64);
        loop {
            let mut m = lock(&self.mailboxes);
            let expired = m.index.expired(now_ms, SWEEP_CHUNK);
            if expired.is_empty() {
                break;
            }
            let mut effects = Vec::new();
            for id in &expired {
                let holders = match self.tree.get(prefixed(BLOB, &id.0)).map_err(backend)? {
                    Some(raw) => BlobRecord::header(&raw)?.0.recipients,
                    None => Vec::new(),
                };
                entries += m.index.expire_blob(*id, &holders, &mut effects);
                blobs += 1;
            }
            let mut ws = WriteSet::default();
            self.effects_into(&effects, &mut ws)?;
            self.commit(&ws)?;
        }
        loop {
            let _m = lock(&self.mailboxes);
            let mut ws = WriteSet::default();
            let end = prefixed(EXPIRY, &now_ms.to_be_bytes());
            for item in self.tree.range(EXPIRY.to_vec()..=end).take(SWEEP_CHUNK) {
                let (k, idem) = item.map_err(backend)?;
                if !idem.is_empty() {
                    ws.del(&idem);
                }
                ws.del(&k);
            }
            if ws.is_empty() {
                return Ok((blobs, entries));
            }
            self.commit(&ws)?;
        }
    }

    /// Gap records past their expiry.
    fn sweep_gaps(&self, now_ms: u64) -> Result<(), StoreError> {
        let mut expired = Vec::new();
        for item in self.tree.scan_prefix(GAP) {
            let (k, v) = item.map_err(backend)?;
            if decode_gap(&v)?.2 <= now_ms {
                expired.push((rid_device(&k)?, device_seq(&k)?));
            }
        }
        for chunk in expired.chunks(SWEEP_CHUNK) {
            let mut m = lock(&self.mailboxes);
            let mut effects = Vec::new();
            for (key, seq) in chunk {
                m.index.expire_gap(*key, *seq, &mut effects);
            }
            let mut ws = WriteSet::default();
            self.effects_into(&effects, &mut ws)?;
            for (key, seq) in chunk {
                ws.del(&super::layout::gap_key(&key.0, key.1, *seq));
            }
            self.commit(&ws)?;
        }
        Ok(())
    }

    /// Removes every record under `prefix` whose big-endian expiry (found by `expiry`) has
    /// passed, `SWEEP_CHUNK` keys per write set. The caller holds the domain's lock.
    fn remove_expired(
        &self,
        prefix: &[u8],
        now_ms: u64,
        expiry: impl Fn(&[u8]) -> Option<&[u8]>,
    ) -> Result<u64, StoreError> {
        let mut removed = 0u64;
        let mut ws = WriteSet::default();
        let mut pending = 0usize;
        for item in self.tree.scan_prefix(prefix) {
            let (k, v) = item.map_err(backend)?;
            if be_u64(expiry(&v).ok_or(StoreError::Corrupt("expiry"))?)? <= now_ms {
                ws.del(&k);
                pending += 1;
                if pending == SWEEP_CHUNK {
                    self.commit(&std::mem::take(&mut ws))?;
                    removed += pending as u64;
                    pending = 0;
                }
            }
        }
        self.commit(&ws)?;
        Ok(removed + pending as u64)
    }
}
