//! Expiry in bounded chunks (one transaction each), statistics, the digest.

use std::collections::HashMap;

use super::{PostgresStore, db, i64_of, q, q1, retrying, u64_of, x};
use crate::contract::Maintenance;
use crate::{Stats, StoreError, SweepStats};

const SWEEP_CHUNK: i64 = 1_000;

/// The tables of the contract, in the digest's order (never the migrations' history or the
/// per-node tables: receivers and rate limits are not stored data).
const TABLES: &[&str] = &[
    "audit",
    "audit_base",
    "audit_checkpoints",
    "audit_head",
    "blobs",
    "device_counters",
    "devices",
    "gaps",
    "groups",
    "idempotency",
    "key_package_routes",
    "key_packages",
    "mailbox",
    "outbox",
    "provisioning_nonces",
    "push_handles",
    "rekey_marks",
    "suspended",
    "switches_off",
];

impl Maintenance for PostgresStore {
    async fn sweep(&self, now_ms: u64) -> Result<SweepStats, StoreError> {
        let now = i64_of(now_ms);
        let mut stats = SweepStats::default();
        loop {
            let (blobs, entries) = retrying!(async {
                let mut c = self.client().await?;
                let tx = c.transaction().await.map_err(db)?;
                let seqs: Vec<i64> = q(
                    &tx,
                    "SELECT seq FROM blobs WHERE expires_at_ms <= $1 ORDER BY seq LIMIT $2 FOR UPDATE SKIP LOCKED",
                    &[&now, &SWEEP_CHUNK],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
                if seqs.is_empty() {
                    return Ok::<_, StoreError>((0, 0));
                }
                let gone = q(
                    &tx,
                    "DELETE FROM mailbox WHERE seq = ANY($1) RETURNING rid, device, size",
                    &[&seqs],
                )
                .await?;
                let mut per_device: HashMap<(Vec<u8>, i32), i64> = HashMap::new();
                for row in &gone {
                    *per_device.entry((row.get(0), row.get(1))).or_default() += i64::from(row.get::<_, i32>(2));
                }
                let mut keys: Vec<_> = per_device.into_iter().collect();
                keys.sort();
                let rids: Vec<Vec<u8>> = keys.iter().map(|k| k.0.0.clone()).collect();
                let devices: Vec<i32> = keys.iter().map(|k| k.0.1).collect();
                let bytes: Vec<i64> = keys.iter().map(|k| k.1).collect();
                x(
                    &tx,
                    "UPDATE devices SET queued = queued - t.b FROM unnest($1::bytea[], $2::int[], $3::bigint[]) AS t(r, d, b) \
                     WHERE devices.rid = t.r AND devices.device = t.d",
                    &[&rids, &devices, &bytes],
                )
                .await?;
                x(&tx, "DELETE FROM blobs WHERE seq = ANY($1)", &[&seqs]).await?;
                tx.commit().await.map_err(db)?;
                Ok((seqs.len() as u64, gone.len() as u64))
            })?;
            stats.blobs += blobs;
            stats.mailbox_entries += entries;
            if blobs == 0 {
                break;
            }
        }
        let c = self.client().await?;
        for (table, column) in [
            ("gaps", "expires_at_ms"),
            ("idempotency", "expires_at_ms"),
            ("provisioning_nonces", "expires_at_ms"),
            ("key_packages", "not_after_ms"),
            ("key_package_routes", "not_after_ms"),
            ("receivers", "until_ms"),
        ] {
            let sql = format!(
                "DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {table} WHERE {column} <= $1 LIMIT $2))"
            );
            loop {
                let n = x(&c, &sql, &[&now, &SWEEP_CHUNK]).await?;
                match table {
                    "provisioning_nonces" => stats.nonces += n,
                    "key_packages" => metrics::counter!("relay_key_packages_expired_total").increment(n),
                    _ => {}
                }
                if n < SWEEP_CHUNK as u64 {
                    break;
                }
            }
        }
        metrics::counter!("relay_mailbox_ops_total", "op" => "expire").increment(stats.mailbox_entries);
        Ok(stats)
    }

    async fn stats(&self) -> Result<Stats, StoreError> {
        let c = self.client().await?;
        let row = q1(
            &c,
            "SELECT (SELECT count(*) FROM devices), (SELECT count(*) FROM blobs), \
                    (SELECT coalesce(sum(length(payload)), 0)::bigint FROM blobs), \
                    (SELECT count(*) FROM mailbox) + (SELECT count(*) FROM gaps)",
            &[],
        )
        .await?;
        Ok(Stats {
            devices: u64_of(row.get(0)),
            blobs: u64_of(row.get(1)),
            blob_bytes: u64_of(row.get(2)),
            mailbox_entries: u64_of(row.get(3)),
        })
    }

    async fn digest(&self) -> Result<[u8; 32], StoreError> {
        let mut c = self.client().await?;
        let tx = super::snapshot(&mut c).await?;
        let mut h = blake3::Hasher::new();
        for table in TABLES {
            let row = q1(
                &tx,
                &format!("SELECT coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '') FROM {table} t"),
                &[],
            )
            .await?;
            let md5: String = row.get(0);
            h.update(table.as_bytes())
                .update(b"\0")
                .update(md5.as_bytes())
                .update(b"\0");
        }
        Ok(*h.finalize().as_bytes())
    }

    /// The database's size (every node sees the same).
    fn size_on_disk(&self) -> u64 {
        0
    }

    fn close(&self) {
        self.pool.close();
    }
}
