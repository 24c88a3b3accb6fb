//! The interconnect outbox, shared by the nodes: a dispatcher leases the entries it is
//! about to deliver (`FOR UPDATE SKIP LOCKED`, then `lease_until_ms`), so each entry is in
//! one node's hands at a time; recording the attempt ends the lease, and the lease of a
//! node that died expires.

use bytes::Bytes;
use relay_core::interconnect::EntryState;

use super::audit::audit_into;
use super::{PostgresStore, array, db, i64_of, q, q1, retrying, u64_of, x};
use crate::contract::Outbox;
use crate::{OutboxEntry, ServerId, StoreError};

const COLUMNS: &str = "seq, envelope_id, created_at_ms, attempts, next_attempt_ms, record";

fn entry(row: &tokio_postgres::Row) -> Result<OutboxEntry, StoreError> {
    Ok(OutboxEntry {
        seq: u64_of(row.get(0)),
        envelope_id: ServerId(array(row.get::<_, &[u8]>(1), "outbox envelope id")?),
        state: EntryState {
            created_ms: u64_of(row.get(2)),
            attempts: row.get::<_, i32>(3) as u32,
            next_attempt_ms: u64_of(row.get(4)),
        },
        record: Bytes::from(row.get::<_, Vec<u8>>(5)),
    })
}

impl Outbox for PostgresStore {
    async fn outbox_due(&self, peer: &str, now_ms: u64, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        let c = self.client().await?;
        let rows = q(
            &c,
            &format!("SELECT {COLUMNS} FROM outbox WHERE peer = $1 AND next_attempt_ms <= $2 ORDER BY seq LIMIT $3"),
            &[&peer, &i64_of(now_ms), &i64_of(limit as u64)],
        )
        .await?;
        rows.iter().map(entry).collect()
    }

    async fn outbox_lease(&self, peer: &str, now_ms: u64, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        let c = self.client().await?;
        let now = i64_of(now_ms);
        let until = i64_of(now_ms.saturating_add(self.cfg.outbox_lease.as_millis() as u64));
        let rows = q(
            &c,
            &format!(
                "UPDATE outbox SET lease_until_ms = $4, leased_by = $5 WHERE (peer, seq) IN ( \
                   SELECT peer, seq FROM outbox WHERE peer = $1 AND next_attempt_ms <= $2 AND lease_until_ms <= $2 \
                   ORDER BY seq LIMIT $3 FOR UPDATE SKIP LOCKED) \
                 RETURNING {COLUMNS}"
            ),
            &[&peer, &now, &i64_of(limit as u64), &until, &self.node],
        )
        .await?;
        let mut out = rows.iter().map(entry).collect::<Result<Vec<_>, _>>()?;
        out.sort_by_key(|e| e.seq);
        Ok(out)
    }

    async fn outbox_depth(&self, peer: &str) -> Result<(u64, Option<u64>), StoreError> {
        let c = self.client().await?;
        let row = q1(
            &c,
            "SELECT count(*), min(created_at_ms) FROM outbox WHERE peer = $1",
            &[&peer],
        )
        .await?;
        Ok((u64_of(row.get(0)), row.get::<_, Option<i64>>(1).map(u64_of)))
    }

    async fn outbox_retry(&self, peer: &str, seq: u64, state: EntryState) -> Result<(), StoreError> {
        let c = self.client().await?;
        x(
            &c,
            "UPDATE outbox SET attempts = $3, next_attempt_ms = $4, lease_until_ms = 0 WHERE peer = $1 AND seq = $2",
            &[
                &peer,
                &i64_of(seq),
                &(state.attempts as i32),
                &i64_of(state.next_attempt_ms),
            ],
        )
        .await?;
        Ok(())
    }

    async fn outbox_delete(&self, peer: &str, seq: u64) -> Result<(), StoreError> {
        let c = self.client().await?;
        x(
            &c,
            "DELETE FROM outbox WHERE peer = $1 AND seq = $2",
            &[&peer, &i64_of(seq)],
        )
        .await?;
        Ok(())
    }

    async fn outbox_dead_letter(&self, peer: &str, seq: u64, detail: String, now_ms: u64) -> Result<(), StoreError> {
        retrying!(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await.map_err(db)?;
            x(
                &tx,
                "DELETE FROM outbox WHERE peer = $1 AND seq = $2",
                &[&peer, &i64_of(seq)],
            )
            .await?;
            audit_into(&tx, "interconnect.dead_letter", &detail, now_ms).await?;
            tx.commit().await.map_err(db)?;
            Ok::<_, StoreError>(())
        })
    }
}
