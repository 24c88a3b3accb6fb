//! The KeyPackage directory: `key_packages` (claimed with `FOR UPDATE SKIP LOCKED`, so
//! concurrent claimers on any node each take a different one) and `key_package_routes`
//! (Welcome routing, kept after the claim until the package expires).

use std::collections::HashSet;

use bytes::Bytes;

use super::{PostgresStore, db, dev, device_of, i64_of, q, q01, q1, retrying, rid_of, x};
use crate::contract::KeyPackages;
use crate::{ClaimedKeyPackage, DeviceId, KeyPackageCount, KeyPackageError, NewKeyPackage, Rid, StoreError};

impl KeyPackages for PostgresStore {
    async fn upload_key_packages(
        &self,
        rid: Rid,
        device: DeviceId,
        packages: Vec<NewKeyPackage>,
        max_per_device: usize,
        _now_ms: u64,
    ) -> Result<u32, KeyPackageError> {
        retrying!(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await.map_err(db)?;
            let (r, d) = (rid.0.to_vec(), dev(device));
            // One upload per device at a time: the count below stays true until commit.
            q01(
                &tx,
                "SELECT 1 FROM devices WHERE rid = $1 AND device = $2 FOR NO KEY UPDATE",
                &[&r, &d],
            )
            .await?;
            let mut seen = HashSet::new();
            for (index, p) in packages.iter().enumerate() {
                if !seen.insert(&p.kp_ref)
                    || q01(&tx, "SELECT 1 FROM key_package_routes WHERE kp_ref = $1", &[&p.kp_ref])
                        .await?
                        .is_some()
                {
                    return Err(KeyPackageError::Duplicate { index });
                }
            }
            let held: i64 = q1(
                &tx,
                "SELECT count(*) FROM key_packages WHERE rid = $1 AND device = $2",
                &[&r, &d],
            )
            .await?
            .get(0);
            let replaced_last_resort = packages.iter().any(|p| p.last_resort)
                && q01(
                    &tx,
                    "SELECT 1 FROM key_packages WHERE rid = $1 AND device = $2 AND last_resort LIMIT 1",
                    &[&r, &d],
                )
                .await?
                .is_some();
            if held as usize - usize::from(replaced_last_resort) + packages.len() > max_per_device {
                return Err(KeyPackageError::TooMany { max: max_per_device });
            }
            for p in &packages {
                if p.last_resort {
                    x(
                        &tx,
                        "DELETE FROM key_packages WHERE rid = $1 AND device = $2 AND last_resort",
                        &[&r, &d],
                    )
                    .await?;
                }
                x(
                    &tx,
                    "INSERT INTO key_packages (kp_ref, rid, device, last_resort, not_after_ms, sealed) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                    &[
                        &p.kp_ref,
                        &r,
                        &d,
                        &p.last_resort,
                        &i64_of(p.not_after_ms),
                        &p.bytes.as_ref(),
                    ],
                )
                .await?;
                x(
                    &tx,
                    "INSERT INTO key_package_routes (kp_ref, rid, device, not_after_ms) VALUES ($1, $2, $3, $4)",
                    &[&p.kp_ref, &r, &d, &i64_of(p.not_after_ms)],
                )
                .await?;
            }
            tx.commit().await.map_err(db)?;
            Ok::<_, KeyPackageError>(packages.len() as u32)
        })
    }

    async fn claim_key_packages(&self, targets: Vec<Rid>, now_ms: u64) -> Result<Vec<ClaimedKeyPackage>, StoreError> {
        retrying!(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await.map_err(db)?;
            let now = i64_of(now_ms);
            let mut out = Vec::new();
            for rid in &targets {
                let r = rid.0.to_vec();
                let devices = q(&tx, "SELECT device FROM devices WHERE rid = $1 ORDER BY device", &[&r]).await?;
                for row in devices {
                    let d: i32 = row.get(0);
                    // Expired one-time packages are never handed out: they go now.
                    x(
                        &tx,
                        "DELETE FROM key_packages WHERE rid = $1 AND device = $2 AND NOT last_resort AND not_after_ms <= $3",
                        &[&r, &d, &now],
                    )
                    .await?;
                    let one_time = q01(
                        &tx,
                        "DELETE FROM key_packages WHERE kp_ref = (SELECT kp_ref FROM key_packages \
                           WHERE rid = $1 AND device = $2 AND NOT last_resort AND not_after_ms > $3 \
                           ORDER BY kp_ref LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING sealed",
                        &[&r, &d, &now],
                    )
                    .await?;
                    let claimed = match one_time {
                        Some(row) => Some((row.get::<_, Vec<u8>>(0), false)),
                        None => q01(
                            &tx,
                            "SELECT sealed FROM key_packages WHERE rid = $1 AND device = $2 AND last_resort \
                               AND not_after_ms > $3 LIMIT 1",
                            &[&r, &d, &now],
                        )
                        .await?
                        .map(|row| (row.get::<_, Vec<u8>>(0), true)),
                    };
                    if let Some((bytes, last_resort)) = claimed {
                        out.push(ClaimedKeyPackage {
                            rid: *rid,
                            device: device_of(d),
                            bytes: Bytes::from(bytes),
                            last_resort,
                        });
                    }
                }
            }
            tx.commit().await.map_err(db)?;
            Ok::<_, StoreError>(out)
        })
    }

    async fn key_package_count(&self, rid: Rid, device: DeviceId, now_ms: u64) -> Result<KeyPackageCount, StoreError> {
        let c = self.client().await?;
        let row = q1(
            &c,
            "SELECT count(*) FILTER (WHERE NOT last_resort), bool_or(last_resort) FROM key_packages \
             WHERE rid = $1 AND device = $2 AND not_after_ms > $3",
            &[&rid.0.to_vec(), &dev(device), &i64_of(now_ms)],
        )
        .await?;
        Ok(KeyPackageCount {
            one_time: row.get::<_, i64>(0) as u32,
            last_resort: row.get::<_, Option<bool>>(1).unwrap_or(false),
        })
    }

    async fn devices_for_key_packages(
        &self,
        refs: Vec<Vec<u8>>,
    ) -> Result<Result<Vec<(Rid, DeviceId)>, usize>, StoreError> {
        let c = self.client().await?;
        // One round trip for every ref, then the answer in the refs' order.
        let rows = q(
            &c,
            "SELECT kp_ref, rid, device FROM key_package_routes WHERE kp_ref = ANY($1)",
            &[&refs],
        )
        .await?;
        let mut routes = std::collections::HashMap::with_capacity(rows.len());
        for row in &rows {
            routes.insert(row.get::<_, Vec<u8>>(0), (rid_of(row.get(1))?, device_of(row.get(2))));
        }
        let mut out: Vec<(Rid, DeviceId)> = Vec::with_capacity(refs.len());
        for (index, r) in refs.iter().enumerate() {
            let Some(target) = routes.get(r) else {
                return Ok(Err(index));
            };
            if !out.contains(target) {
                out.push(*target);
            }
        }
        Ok(Ok(out))
    }
}
