//! Groups (epoch and GroupInfo), push handles and operator controls.

use bytes::Bytes;

use super::audit::audit_into;
use super::{PostgresStore, db, dev, i64_of, q, q01, retrying, rid_detail, rid_of, u64_of, x};
use crate::contract::{Controls, Groups, PushHandles};
use crate::{DeviceId, Rid, StoreError};

impl Groups for PostgresStore {
    async fn group_epoch(&self, group_key: [u8; 32]) -> Result<Option<u64>, StoreError> {
        let c = self.client().await?;
        Ok(q01(
            &c,
            "SELECT epoch FROM groups WHERE group_key = $1",
            &[&group_key.to_vec()],
        )
        .await?
        .and_then(|r| r.get::<_, Option<i64>>(0))
        .map(u64_of))
    }

    async fn set_group_epoch(&self, group_key: [u8; 32], epoch: u64) -> Result<(), StoreError> {
        let c = self.client().await?;
        x(
            &c,
            "INSERT INTO groups (group_key, epoch) VALUES ($1, $2) ON CONFLICT (group_key) DO UPDATE SET epoch = EXCLUDED.epoch",
            &[&group_key.to_vec(), &i64_of(epoch)],
        )
        .await?;
        Ok(())
    }

    async fn set_group_info(&self, group_key: [u8; 32], group_info: Bytes) -> Result<(), StoreError> {
        let c = self.client().await?;
        x(
            &c,
            "INSERT INTO groups (group_key, group_info) VALUES ($1, $2) \
             ON CONFLICT (group_key) DO UPDATE SET group_info = EXCLUDED.group_info",
            &[&group_key.to_vec(), &group_info.as_ref()],
        )
        .await?;
        Ok(())
    }

    async fn group_info(&self, group_key: [u8; 32]) -> Result<Option<Bytes>, StoreError> {
        let c = self.client().await?;
        Ok(q01(
            &c,
            "SELECT group_info FROM groups WHERE group_key = $1",
            &[&group_key.to_vec()],
        )
        .await?
        .and_then(|r| r.get::<_, Option<Vec<u8>>>(0))
        .map(Bytes::from))
    }
}

impl PushHandles for PostgresStore {
    async fn set_push_handle(&self, rid: Rid, device: DeviceId, handle: Option<String>) -> Result<bool, StoreError> {
        retrying!(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await.map_err(db)?;
            let (r, d) = (rid.0.to_vec(), dev(device));
            if q01(
                &tx,
                "SELECT 1 FROM devices WHERE rid = $1 AND device = $2 FOR KEY SHARE",
                &[&r, &d],
            )
            .await?
            .is_none()
            {
                return Ok::<_, StoreError>(false);
            }
            match &handle {
                Some(h) => {
                    x(
                        &tx,
                        "INSERT INTO push_handles (rid, device, handle) VALUES ($1, $2, $3) \
                     ON CONFLICT (rid, device) DO UPDATE SET handle = EXCLUDED.handle",
                        &[&r, &d, h],
                    )
                    .await?
                }
                None => {
                    x(
                        &tx,
                        "DELETE FROM push_handles WHERE rid = $1 AND device = $2",
                        &[&r, &d],
                    )
                    .await?
                }
            };
            tx.commit().await.map_err(db)?;
            Ok(true)
        })
    }

    async fn push_handle(&self, rid: Rid, device: DeviceId) -> Result<Option<String>, StoreError> {
        let c = self.client().await?;
        Ok(q01(
            &c,
            "SELECT handle FROM push_handles WHERE rid = $1 AND device = $2",
            &[&rid.0.to_vec(), &dev(device)],
        )
        .await?
        .map(|r| r.get(0)))
    }

    async fn drop_push_handle_if(&self, rid: Rid, device: DeviceId, handle: &str) -> Result<bool, StoreError> {
        let c = self.client().await?;
        let n = x(
            &c,
            "DELETE FROM push_handles WHERE rid = $1 AND device = $2 AND handle = $3",
            &[&rid.0.to_vec(), &dev(device), &handle],
        )
        .await?;
        Ok(n > 0)
    }
}

impl Controls for PostgresStore {
    async fn set_switch(&self, name: &str, off: bool, now_ms: u64) -> Result<(), StoreError> {
        retrying!(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await.map_err(db)?;
            if off {
                x(
                    &tx,
                    "INSERT INTO switches_off (name, since_ms) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET since_ms = EXCLUDED.since_ms",
                    &[&name, &i64_of(now_ms)],
                )
                .await?;
            } else {
                x(&tx, "DELETE FROM switches_off WHERE name = $1", &[&name]).await?;
            }
            audit_into(&tx, if off { "switch.off" } else { "switch.on" }, name, now_ms).await?;
            x(&tx, "SELECT pg_notify('relay_controls', '')", &[]).await?;
            tx.commit().await.map_err(db)?;
            Ok::<_, StoreError>(())
        })
    }

    async fn switches_off(&self) -> Result<Vec<String>, StoreError> {
        let c = self.client().await?;
        Ok(q(&c, "SELECT name FROM switches_off ORDER BY name", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    async fn set_suspended(&self, rid: Rid, suspended: bool, now_ms: u64) -> Result<(), StoreError> {
        retrying!(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await.map_err(db)?;
            let r = rid.0.to_vec();
            if suspended {
                x(
                    &tx,
                    "INSERT INTO suspended (rid, since_ms) VALUES ($1, $2) ON CONFLICT (rid) DO UPDATE SET since_ms = EXCLUDED.since_ms",
                    &[&r, &i64_of(now_ms)],
                )
                .await?;
            } else {
                x(&tx, "DELETE FROM suspended WHERE rid = $1", &[&r]).await?;
            }
            let kind = if suspended {
                "address.suspend"
            } else {
                "address.unsuspend"
            };
            audit_into(&tx, kind, &rid_detail(&rid), now_ms).await?;
            x(&tx, "SELECT pg_notify('relay_controls', '')", &[]).await?;
            tx.commit().await.map_err(db)?;
            Ok::<_, StoreError>(())
        })
    }

    async fn suspended(&self) -> Result<Vec<Rid>, StoreError> {
        let c = self.client().await?;
        q(&c, "SELECT rid FROM suspended ORDER BY rid", &[])
            .await?
            .iter()
            .map(|r| rid_of(r.get(0)))
            .collect()
    }

    async fn revoke_device(&self, rid: Rid, device: DeviceId, now_ms: u64) -> Result<bool, StoreError> {
        self.remove_device(rid, device, Some(now_ms)).await
    }
}

impl PostgresStore {
    /// The switches that are off, the suspended rids and the rids marked for re-keying.
    pub(crate) async fn controls_now(&self) -> Result<(Vec<String>, Vec<Rid>, Vec<Rid>), StoreError> {
        use crate::contract::Rekey as _;
        Ok((
            self.switches_off().await?,
            self.suspended().await?,
            self.rekey_marked().await?,
        ))
    }
}
