//! The interconnect outbox (entries are written by `send`, in the send's write set); changes
//! to an entry are made under the `outbox` lock.

use relay_core::interconnect::EntryState;

use super::layout::{backend, outbox_key, outbox_prefix};
use super::records::decode_outbox;
use super::writeset::WriteSet;
use super::{SledStore, lock};
use crate::contract::Outbox;
use crate::{OutboxEntry, StoreError};

/// How long an entry handed to the dispatcher stays its own.
const LEASE_MS: u64 = 30_000;

impl Outbox for SledStore {
    async fn outbox_due(&self, peer: &str, now_ms: u64, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        let peer = peer.to_owned();
        self.blocking(move |s| {
            let mut out = Vec::new();
            for item in s.tree.scan_prefix(outbox_prefix(&peer)) {
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
        })
        .await
    }

    /// One process owns the store: the leases are kept in memory.
    async fn outbox_lease(&self, peer: &str, now_ms: u64, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        let owned = peer.to_owned();
        self.blocking(move |s| {
            let mut leases = lock(&s.outbox);
            leases.retain(|_, until| *until > now_ms);
            let mut out = Vec::new();
            for item in s.tree.scan_prefix(outbox_prefix(&owned)) {
                let (k, v) = item.map_err(backend)?;
                let entry = decode_outbox(&k, &v)?;
                if entry.state.due(now_ms) && !leases.contains_key(&(owned.clone(), entry.seq)) {
                    leases.insert((owned.clone(), entry.seq), now_ms.saturating_add(LEASE_MS));
                    out.push(entry);
                    if out.len() >= limit {
                        break;
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn outbox_depth(&self, peer: &str) -> Result<(u64, Option<u64>), StoreError> {
        let peer = peer.to_owned();
        self.blocking(move |s| {
            let mut n = 0;
            let mut oldest: Option<u64> = None;
            for item in s.tree.scan_prefix(outbox_prefix(&peer)) {
                let (k, v) = item.map_err(backend)?;
                let e = decode_outbox(&k, &v)?;
                n += 1;
                oldest = Some(oldest.map_or(e.state.created_ms, |o| o.min(e.state.created_ms)));
            }
            Ok((n, oldest))
        })
        .await
    }

    async fn outbox_retry(&self, peer: &str, seq: u64, state: EntryState) -> Result<(), StoreError> {
        let peer = peer.to_owned();
        self.write(move |s| {
            let mut leases = lock(&s.outbox);
            leases.remove(&(peer.clone(), seq));
            let key = outbox_key(&peer, seq);
            let mut ws = WriteSet::default();
            if let Some(v) = s.tree.get(&key).map_err(backend)? {
                let mut v = v.to_vec();
                v[..20].copy_from_slice(&state.encode());
                ws.put(&key, &v);
            }
            Ok(((), s.commit(&ws)?))
        })
        .await
    }

    async fn outbox_delete(&self, peer: &str, seq: u64) -> Result<(), StoreError> {
        let peer = peer.to_owned();
        self.write(move |s| {
            let mut leases = lock(&s.outbox);
            leases.remove(&(peer.clone(), seq));
            let mut ws = WriteSet::default();
            ws.del(&outbox_key(&peer, seq));
            Ok(((), s.commit(&ws)?))
        })
        .await
    }

    async fn outbox_dead_letter(&self, peer: &str, seq: u64, detail: String, now_ms: u64) -> Result<(), StoreError> {
        let peer = peer.to_owned();
        self.write(move |s| {
            let mut leases = lock(&s.outbox);
            leases.remove(&(peer.clone(), seq));
            let _audit = lock(&s.audit);
            let mut ws = WriteSet::default();
            ws.del(&outbox_key(&peer, seq));
            s.audit_into(&mut ws, "interconnect.dead_letter", &detail, now_ms)?;
            Ok(((), s.commit(&ws)?))
        })
        .await
    }
}
