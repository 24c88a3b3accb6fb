//! The audit log: `a/{seq}` records, each hash-chained to the one before and a leaf of an
//! RFC 6962 Merkle tree (`relay_core::auditlog`); the `A/` head holds the last sequence
//! number, chain hash and the tree's frontier, so appending and computing the root cost
//! O(log n); `C/{size}` keeps the signed checkpoints the gateway makes. Appends happen under
//! the `audit` lock.

use relay_core::auditlog::{CHAIN_START, Frontier, leaf_hash};

use super::layout::{AUDIT, AUDIT_BASE, AUDIT_CHECKPOINT, AUDIT_HEAD, audit_key, backend, be_u64, prefixed};
use super::records::{audit_hash, decode_audit, encode_audit};
use super::writeset::WriteSet;
use super::{Inner, SledStore, lock};
use crate::contract::Audit;
use crate::{AuditBase, AuditHead, AuditRecord, StoreError};

impl Audit for SledStore {
    async fn audit_append(&self, kind: &str, detail: String, now_ms: u64) -> Result<AuditRecord, StoreError> {
        let kind = kind.to_owned();
        self.write(move |s| {
            let _audit = lock(&s.audit);
            let mut ws = WriteSet::default();
            let r = s.audit_into(&mut ws, &kind, &detail, now_ms)?;
            Ok((r, s.commit(&ws)?))
        })
        .await
    }

    async fn audit_log(&self) -> Result<Vec<AuditRecord>, StoreError> {
        self.blocking(|s| {
            let out = s.audit_records()?;
            let head = s.audit_head_record()?;
            let pruned = s.audit_base_record()?.map_or(0, |b| b.size);
            if out.last().map_or(pruned, |r| r.seq) != head.seq {
                return Err(StoreError::Corrupt("audit log shorter than its head"));
            }
            Ok(out)
        })
        .await
    }

    async fn audit_head(&self) -> Result<AuditHead, StoreError> {
        self.blocking(|s| {
            let head = s.audit_head_record()?;
            Ok(AuditHead {
                size: head.frontier.size(),
                root: head.frontier.root(),
            })
        })
        .await
    }

    async fn audit_add_checkpoint(&self, size: u64, note: String) -> Result<(), StoreError> {
        self.write(move |s| {
            let mut ws = WriteSet::default();
            ws.put(&prefixed(AUDIT_CHECKPOINT, &size.to_be_bytes()), note.as_bytes());
            Ok(((), s.commit(&ws)?))
        })
        .await
    }

    async fn audit_prune(&self, upto: u64) -> Result<Option<AuditBase>, StoreError> {
        self.write(move |s| {
            let _audit = lock(&s.audit);
            let old = s.audit_base_record()?;
            let from = old.as_ref().map_or(0, |b| b.size);
            let head = s.audit_head_record()?;
            if upto <= from || upto > head.seq {
                return Ok((None, s.journal.last_lsn()));
            }
            let mut frontier = match &old {
                Some(b) => Frontier::decode(&b.frontier).ok_or(StoreError::Corrupt("audit base"))?,
                None => Frontier::default(),
            };
            let mut chain = old.as_ref().map_or(CHAIN_START, |b| b.chain);
            let mut ws = WriteSet::default();
            for r in s.audit_records()?.into_iter().take_while(|r| r.seq <= upto) {
                frontier.push(leaf_hash(r.seq, r.at_ms, &r.kind, &r.detail));
                chain = r.hash;
                ws.del(&audit_key(r.seq));
            }
            let base = AuditBase {
                size: upto,
                chain,
                frontier: frontier.encode(),
            };
            let mut value = upto.to_be_bytes().to_vec();
            value.extend_from_slice(&chain);
            value.extend_from_slice(&base.frontier);
            ws.put(AUDIT_BASE, &value);
            Ok((Some(base), s.commit(&ws)?))
        })
        .await
    }

    async fn audit_base(&self) -> Result<Option<AuditBase>, StoreError> {
        self.blocking(|s| s.audit_base_record()).await
    }

    async fn audit_checkpoints(&self) -> Result<Vec<String>, StoreError> {
        self.blocking(|s| {
            s.tree
                .scan_prefix(AUDIT_CHECKPOINT)
                .values()
                .map(|v| {
                    let v = v.map_err(backend)?;
                    String::from_utf8(v.to_vec()).map_err(|_| StoreError::Corrupt("audit checkpoint"))
                })
                .collect()
        })
        .await
    }
}

/// The `A/` value: the last record's sequence number and chain hash, and the Merkle frontier.
struct Head {
    seq: u64,
    chain: [u8; 32],
    frontier: Frontier,
}

impl Inner {
    fn audit_base_record(&self) -> Result<Option<AuditBase>, StoreError> {
        let Some(v) = self.tree.get(AUDIT_BASE).map_err(backend)? else {
            return Ok(None);
        };
        let corrupt = || StoreError::Corrupt("audit base");
        if v.len() < 40 {
            return Err(corrupt());
        }
        Ok(Some(AuditBase {
            size: be_u64(&v[..8])?,
            chain: v[8..40].try_into().map_err(|_| corrupt())?,
            frontier: v[40..].to_vec(),
        }))
    }

    /// Every record kept, oldest first, after checking the chain (from the base, if pruned).
    fn audit_records(&self) -> Result<Vec<AuditRecord>, StoreError> {
        let mut out: Vec<AuditRecord> = Vec::new();
        let mut prev = self.audit_base_record()?.map_or(CHAIN_START, |b| b.chain);
        for item in self.tree.scan_prefix(AUDIT) {
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

    /// The head; one written before the Merkle tree existed (40 bytes) gets its frontier
    /// rebuilt from the records.
    fn audit_head_record(&self) -> Result<Head, StoreError> {
        let corrupt = || StoreError::Corrupt("audit head");
        match self.tree.get(AUDIT_HEAD).map_err(backend)? {
            None => Ok(Head {
                seq: 0,
                chain: CHAIN_START,
                frontier: Frontier::default(),
            }),
            Some(v) if v.len() == 40 => {
                let mut frontier = Frontier::default();
                for r in self.audit_records()? {
                    frontier.push(leaf_hash(r.seq, r.at_ms, &r.kind, &r.detail));
                }
                Ok(Head {
                    seq: be_u64(&v[..8])?,
                    chain: v[8..40].try_into().map_err(|_| corrupt())?,
                    frontier,
                })
            }
            Some(v) if v.len() > 40 => Ok(Head {
                seq: be_u64(&v[..8])?,
                chain: v[8..40].try_into().map_err(|_| corrupt())?,
                frontier: Frontier::decode(&v[40..]).ok_or_else(corrupt)?,
            }),
            Some(_) => Err(corrupt()),
        }
    }

    /// Adds the next audit record (and the new head) to `ws`. Caller holds `audit`.
    pub(super) fn audit_into(
        &self,
        ws: &mut WriteSet,
        kind: &str,
        detail: &str,
        now_ms: u64,
    ) -> Result<AuditRecord, StoreError> {
        let mut head = self.audit_head_record()?;
        let seq = head.seq + 1;
        let kind = &kind[..kind.floor_char_boundary(255)];
        let record = AuditRecord {
            seq,
            at_ms: now_ms,
            kind: kind.to_owned(),
            detail: detail.to_owned(),
            hash: audit_hash(&head.chain, seq, now_ms, kind, detail),
        };
        ws.put(&audit_key(seq), &encode_audit(&record));
        head.frontier.push(leaf_hash(seq, now_ms, kind, detail));
        let mut value = seq.to_be_bytes().to_vec();
        value.extend_from_slice(&record.hash);
        value.extend_from_slice(&head.frontier.encode());
        ws.put(AUDIT_HEAD, &value);
        Ok(record)
    }
}
