//! The audit log: a hash chain and its RFC 6962 Merkle frontier kept in the one
//! `audit_head` row, which every append locks (so the chain has one order across nodes).

use deadpool_postgres::GenericClient;
use relay_core::auditlog::{CHAIN_START, Frontier, leaf_hash};

use super::{PostgresStore, Tx, array, db, i64_of, q, q01, q1, retrying, u64_of, x};
use crate::contract::Audit;
use crate::{AuditBase, AuditHead, AuditRecord, StoreError};

/// Appends a record in `tx` (locks the head row until the transaction ends).
pub(crate) async fn audit_into(tx: &Tx<'_>, kind: &str, detail: &str, now_ms: u64) -> Result<AuditRecord, StoreError> {
    let row = q1(
        tx,
        "SELECT seq, hash, frontier FROM audit_head WHERE id = 1 FOR UPDATE",
        &[],
    )
    .await?;
    let seq = u64_of(row.get(0)) + 1;
    let prev: [u8; 32] = array(row.get::<_, &[u8]>(1), "audit head")?;
    let mut frontier = Frontier::decode(row.get::<_, &[u8]>(2)).ok_or(StoreError::Corrupt("audit head"))?;
    let kind = &kind[..kind.floor_char_boundary(255)];
    let record = AuditRecord {
        seq,
        at_ms: now_ms,
        kind: kind.to_owned(),
        detail: detail.to_owned(),
        hash: relay_core::auditlog::chain_hash(&prev, seq, now_ms, kind, detail),
    };
    frontier.push(leaf_hash(seq, now_ms, kind, detail));
    x(
        tx,
        "INSERT INTO audit (seq, at_ms, kind, detail, hash) VALUES ($1, $2, $3, $4, $5)",
        &[&i64_of(seq), &i64_of(now_ms), &kind, &detail, &record.hash.to_vec()],
    )
    .await?;
    x(
        tx,
        "UPDATE audit_head SET seq = $1, hash = $2, frontier = $3 WHERE id = 1",
        &[&i64_of(seq), &record.hash.to_vec(), &frontier.encode()],
    )
    .await?;
    Ok(record)
}

impl PostgresStore {
    async fn audit_base_in(c: &impl GenericClient) -> Result<Option<AuditBase>, StoreError> {
        let Some(row) = q01(c, "SELECT size, chain, frontier FROM audit_base WHERE id = 1", &[]).await? else {
            return Ok(None);
        };
        Ok(Some(AuditBase {
            size: u64_of(row.get(0)),
            chain: array(row.get::<_, &[u8]>(1), "audit base")?,
            frontier: row.get(2),
        }))
    }

    /// The records after the base, with the chain checked.
    async fn audit_records(c: &impl GenericClient) -> Result<Vec<AuditRecord>, StoreError> {
        let mut prev = Self::audit_base_in(c).await?.map_or(CHAIN_START, |b| b.chain);
        let rows = q(c, "SELECT seq, at_ms, kind, detail, hash FROM audit ORDER BY seq", &[]).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let r = AuditRecord {
                seq: u64_of(row.get(0)),
                at_ms: u64_of(row.get(1)),
                kind: row.get(2),
                detail: row.get(3),
                hash: array(row.get::<_, &[u8]>(4), "audit hash")?,
            };
            if r.hash != relay_core::auditlog::chain_hash(&prev, r.seq, r.at_ms, &r.kind, &r.detail) {
                return Err(StoreError::Corrupt("audit chain"));
            }
            prev = r.hash;
            out.push(r);
        }
        Ok(out)
    }
}

impl Audit for PostgresStore {
    async fn audit_append(&self, kind: &str, detail: String, now_ms: u64) -> Result<AuditRecord, StoreError> {
        retrying!(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await.map_err(db)?;
            let r = audit_into(&tx, kind, &detail, now_ms).await?;
            tx.commit().await.map_err(db)?;
            Ok::<_, StoreError>(r)
        })
    }

    async fn audit_log(&self) -> Result<Vec<AuditRecord>, StoreError> {
        let mut c = self.client().await?;
        // One snapshot for the records and the head.
        let tx = super::snapshot(&mut c).await?;
        let out = Self::audit_records(&tx).await?;
        let head: i64 = tx
            .query_one("SELECT seq FROM audit_head WHERE id = 1", &[])
            .await
            .map_err(db)?
            .get(0);
        let pruned = Self::audit_base_in(&tx).await?.map_or(0, |b| b.size);
        if out.last().map_or(pruned, |r| r.seq) != u64_of(head) {
            return Err(StoreError::Corrupt("audit log shorter than its head"));
        }
        Ok(out)
    }

    async fn audit_head(&self) -> Result<AuditHead, StoreError> {
        let c = self.client().await?;
        let row = c
            .query_one("SELECT frontier FROM audit_head WHERE id = 1", &[])
            .await
            .map_err(db)?;
        let frontier = Frontier::decode(row.get::<_, &[u8]>(0)).ok_or(StoreError::Corrupt("audit head"))?;
        Ok(AuditHead {
            size: frontier.size(),
            root: frontier.root(),
        })
    }

    async fn audit_add_checkpoint(&self, size: u64, note: String) -> Result<(), StoreError> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO audit_checkpoints (size, note) VALUES ($1, $2) \
             ON CONFLICT (size) DO UPDATE SET note = EXCLUDED.note",
            &[&i64_of(size), &note],
        )
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn audit_checkpoints(&self) -> Result<Vec<String>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query("SELECT note FROM audit_checkpoints ORDER BY size", &[])
            .await
            .map_err(db)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn audit_prune(&self, upto: u64) -> Result<Option<AuditBase>, StoreError> {
        retrying!(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await.map_err(db)?;
            let head: i64 = q1(&tx, "SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE", &[])
                .await?
                .get(0);
            let old = Self::audit_base_in(&tx).await?;
            let from = old.as_ref().map_or(0, |b| b.size);
            if upto <= from || upto > u64_of(head) {
                return Ok::<_, StoreError>(None);
            }
            let mut frontier = match &old {
                Some(b) => Frontier::decode(&b.frontier).ok_or(StoreError::Corrupt("audit base"))?,
                None => Frontier::default(),
            };
            let mut chain = old.as_ref().map_or(CHAIN_START, |b| b.chain);
            for r in Self::audit_records(&tx)
                .await?
                .into_iter()
                .take_while(|r| r.seq <= upto)
            {
                frontier.push(leaf_hash(r.seq, r.at_ms, &r.kind, &r.detail));
                chain = r.hash;
            }
            tx.execute("DELETE FROM audit WHERE seq <= $1", &[&i64_of(upto)])
                .await
                .map_err(db)?;
            let base = AuditBase {
                size: upto,
                chain,
                frontier: frontier.encode(),
            };
            tx.execute(
                "INSERT INTO audit_base (id, size, chain, frontier) VALUES (1, $1, $2, $3) \
                 ON CONFLICT (id) DO UPDATE SET size = EXCLUDED.size, chain = EXCLUDED.chain, \
                 frontier = EXCLUDED.frontier",
                &[&i64_of(upto), &chain.to_vec(), &base.frontier],
            )
            .await
            .map_err(db)?;
            tx.commit().await.map_err(db)?;
            Ok::<_, StoreError>(Some(base))
        })
    }

    async fn audit_base(&self) -> Result<Option<AuditBase>, StoreError> {
        let c = self.client().await?;
        Self::audit_base_in(&c).await
    }
}
