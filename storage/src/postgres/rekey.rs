//! K_rid rotation by lazy re-key (see [`crate::contract::Rekey`]): `rekey_marks` holds the
//! rids still under the previous key; [`Rekey::rekey`] moves one rid's rows in one
//! transaction.

use super::audit::audit_into;
use super::{PostgresStore, db, i64_of, q, q1, retrying, rid_of, x};
use crate::contract::{Rekey, Reseal};
use crate::{Rid, StoreError};

/// The tables whose rows name a rid (besides `key_packages`, which are resealed).
const BY_RID: &[&str] = &[
    "devices",
    "device_counters",
    "gaps",
    "idempotency",
    "push_handles",
    "suspended",
    "mailbox",
    "key_package_routes",
    "receivers",
];

impl Rekey for PostgresStore {
    async fn rekey_begin(&self, now_ms: u64) -> Result<u64, StoreError> {
        retrying!(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await.map_err(db)?;
            // One rotation at a time, whichever node asks.
            x(&tx, "LOCK TABLE rekey_marks IN EXCLUSIVE MODE", &[]).await?;
            let left: i64 = q1(&tx, "SELECT count(*) FROM rekey_marks", &[]).await?.get(0);
            if left > 0 {
                return Err(StoreError::Refused(format!(
                    "{left} addresses are still under the key before the previous one: finish that re-key (or force the retirement) first"
                )));
            }
            // Every rid that ever registered has a device counter.
            let marked = x(
                &tx,
                "INSERT INTO rekey_marks (rid, since_ms) SELECT rid, $1 FROM device_counters",
                &[&i64_of(now_ms)],
            )
            .await?;
            audit_into(&tx, "key.rotate", &format!("rid marked={marked}"), now_ms).await?;
            x(&tx, "SELECT pg_notify('relay_controls', '')", &[]).await?;
            tx.commit().await.map_err(db)?;
            Ok::<_, StoreError>(marked)
        })
    }

    async fn rekey_marked(&self) -> Result<Vec<Rid>, StoreError> {
        let c = self.client().await?;
        q(&c, "SELECT rid FROM rekey_marks ORDER BY rid", &[])
            .await?
            .iter()
            .map(|r| rid_of(r.get(0)))
            .collect()
    }

    async fn rekey(&self, old: Rid, new: Rid, reseal: Reseal) -> Result<bool, StoreError> {
        retrying!(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await.map_err(db)?;
            let (o, n) = (old.0.to_vec(), new.0.to_vec());
            if x(&tx, "DELETE FROM rekey_marks WHERE rid = $1", &[&o]).await? == 0 {
                return Ok::<_, StoreError>(false);
            }
            if q(&tx, "SELECT 1 FROM device_counters WHERE rid = $1", &[&n])
                .await?
                .len()
                == 1
            {
                return Err(StoreError::Refused(
                    "the address registered under the new key before its records were moved".into(),
                ));
            }
            for table in BY_RID {
                x(&tx, &format!("UPDATE {table} SET rid = $2 WHERE rid = $1"), &[&o, &n]).await?;
            }
            for row in q(
                &tx,
                "SELECT kp_ref, sealed FROM key_packages WHERE rid = $1 FOR UPDATE",
                &[&o],
            )
            .await?
            {
                let kp_ref: Vec<u8> = row.get(0);
                let resealed = reseal(row.get::<_, &[u8]>(1))
                    .ok_or(StoreError::Corrupt("a KeyPackage does not open under its rid"))?;
                x(
                    &tx,
                    "UPDATE key_packages SET rid = $2, sealed = $3 WHERE kp_ref = $1",
                    &[&kp_ref, &n, &resealed],
                )
                .await?;
            }
            tx.commit().await.map_err(db)?;
            metrics::counter!("relay_rid_rekeyed_total").increment(1);
            Ok(true)
        })
    }

    async fn rekey_abandon(&self, now_ms: u64) -> Result<u64, StoreError> {
        retrying!(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await.map_err(db)?;
            let left = x(&tx, "DELETE FROM rekey_marks", &[]).await?;
            audit_into(&tx, "key.retire", &format!("rid forced unmigrated={left}"), now_ms).await?;
            x(&tx, "SELECT pg_notify('relay_controls', '')", &[]).await?;
            tx.commit().await.map_err(db)?;
            Ok::<_, StoreError>(left)
        })
    }
}
