//! The hash-chained audit log: `a/{seq}` records and the `A/` chain head, appended under the
//! `audit` lock.

use super::layout::{AUDIT, AUDIT_HEAD, audit_key, backend, be_u64};
use super::records::{audit_hash, decode_audit, encode_audit};
use super::writeset::WriteSet;
use super::{Inner, SledStore, lock};
use crate::contract::Audit;
use crate::{AuditRecord, StoreError};

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
            let mut out: Vec<AuditRecord> = Vec::new();
            let mut prev = [0u8; 32];
            for item in s.tree.scan_prefix(AUDIT) {
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
        })
        .await
    }
}

impl Inner {
    /// Adds the next audit record (and the new chain head) to `ws`. Caller holds `audit`.
    pub(super) fn audit_into(
        &self,
        ws: &mut WriteSet,
        kind: &str,
        detail: &str,
        now_ms: u64,
    ) -> Result<AuditRecord, StoreError> {
        let (seq, prev) = match self.tree.get(AUDIT_HEAD).map_err(backend)? {
            Some(v) if v.len() == 40 => (
                be_u64(&v[..8])? + 1,
                v[8..].try_into().map_err(|_| StoreError::Corrupt("audit head"))?,
            ),
            Some(_) => return Err(StoreError::Corrupt("audit head")),
            None => (1, [0u8; 32]),
        };
        let kind = &kind[..kind.floor_char_boundary(255)];
        let record = AuditRecord {
            seq,
            at_ms: now_ms,
            kind: kind.to_owned(),
            detail: detail.to_owned(),
            hash: audit_hash(&prev, seq, now_ms, kind, detail),
        };
        ws.put(&audit_key(seq), &encode_audit(&record));
        let mut head = seq.to_be_bytes().to_vec();
        head.extend_from_slice(&record.hash);
        ws.put(AUDIT_HEAD, &head);
        Ok(record)
    }
}
