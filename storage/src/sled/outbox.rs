//! The interconnect outbox (entries are written by `send`, in the send's batch).

use relay_core::interconnect::EntryState;

use super::SledStore;
use super::layout::{backend, outbox_key, outbox_prefix};
use super::records::decode_outbox;
use crate::contract::Outbox;
use crate::{OutboxEntry, StoreError};

impl Outbox for SledStore {
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

    async fn outbox_retry(&self, peer: &str, seq: u64, state: EntryState) -> Result<(), StoreError> {
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
}
