//! Devices, credentials and provisioning nonces.

use relay_core::credential::CredentialHash;

use super::audit::audit_into;
use super::mailbox::release_blobs;
use super::{PostgresStore, Tx, array, db, dev, device_of, i64_of, q, q01, q1, retrying, rid_detail, rid_of, x};
use crate::contract::Devices;
use crate::{DeviceAuth, DeviceId, NewDevice, RegisterError, Rid, StoreError};

impl Devices for PostgresStore {
    async fn register_device(&self, req: NewDevice) -> Result<DeviceId, RegisterError> {
        retrying!(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await.map_err(db)?;
            let device = register(&tx, &req).await?;
            tx.commit().await.map_err(db)?;
            Ok::<_, RegisterError>(device)
        })
    }

    async fn device_by_lookup(&self, lookup: [u8; 16]) -> Result<Option<DeviceAuth>, StoreError> {
        let c = self.client().await?;
        let Some(row) = q01(
            &c,
            "SELECT rid, device, credential_salt, credential_hash FROM devices WHERE lookup = $1",
            &[&lookup.to_vec()],
        )
        .await?
        else {
            return Ok(None);
        };
        Ok(Some(DeviceAuth {
            rid: rid_of(row.get(0))?,
            device: device_of(row.get(1)),
            credential_hash: CredentialHash {
                salt: array(row.get::<_, &[u8]>(2), "credential salt")?,
                hash: array(row.get::<_, &[u8]>(3), "credential hash")?,
            },
        }))
    }

    async fn devices(&self, rid: Rid) -> Result<Vec<DeviceId>, StoreError> {
        let c = self.client().await?;
        let rows = q(
            &c,
            "SELECT device FROM devices WHERE rid = $1 ORDER BY device",
            &[&rid.0.to_vec()],
        )
        .await?;
        Ok(rows.iter().map(|r| device_of(r.get(0))).collect())
    }

    async fn delete_device(&self, rid: Rid, device: DeviceId) -> Result<bool, StoreError> {
        self.remove_device(rid, device, None).await
    }
}

async fn register(tx: &Tx<'_>, req: &NewDevice) -> Result<DeviceId, RegisterError> {
    let rid = req.rid.0.to_vec();
    let fresh = x(
        tx,
        "INSERT INTO provisioning_nonces (nonce, expires_at_ms) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        &[
            &req.provisioning_nonce.to_vec(),
            &i64_of(req.provisioning_expires_at_ms),
        ],
    )
    .await?;
    if fresh == 0 {
        return Err(RegisterError::TokenUsed);
    }
    // Locks the address's counter row: registrations of one address are serialized, so
    // the device cap holds across nodes.
    let next: i32 = q1(
        tx,
        "INSERT INTO device_counters (rid, next) VALUES ($1, 2) \
         ON CONFLICT (rid) DO UPDATE SET next = device_counters.next + 1 RETURNING next - 1",
        &[&rid],
    )
    .await?
    .get(0);
    let active: i64 = q1(tx, "SELECT count(*) FROM devices WHERE rid = $1", &[&rid])
        .await?
        .get(0);
    if active as usize >= req.max_devices {
        return Err(RegisterError::TooManyDevices(active as usize));
    }
    let lookup = req.credential_lookup.to_vec();
    if q01(tx, "SELECT 1 FROM devices WHERE lookup = $1", &[&lookup])
        .await?
        .is_some()
    {
        return Err(RegisterError::LookupCollision);
    }
    let device = device_of(next);
    x(
        tx,
        "INSERT INTO devices (rid, device, status, created_day, credential_salt, credential_hash, lookup) \
         VALUES ($1, $2, 1, $3, $4, $5, $6)",
        &[
            &rid,
            &dev(device),
            &((req.now_ms / 86_400_000) as i32),
            &req.credential_hash.salt.to_vec(),
            &req.credential_hash.hash.to_vec(),
            &lookup,
        ],
    )
    .await?;
    let detail = format!(
        "{} device={} key={}",
        rid_detail(&req.rid),
        device.0,
        req.provisioning_key
    );
    audit_into(tx, "device.register", &detail, req.now_ms).await?;
    Ok(device)
}

impl PostgresStore {
    /// Removes the device, its credential, push handle, KeyPackages and mailbox; with
    /// `revoked_at`, audited in the same transaction.
    pub(crate) async fn remove_device(
        &self,
        rid: Rid,
        device: DeviceId,
        revoked_at: Option<u64>,
    ) -> Result<bool, StoreError> {
        retrying!(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await.map_err(db)?;
            let (r, d) = (rid.0.to_vec(), dev(device));
            let gone = x(&tx, "DELETE FROM devices WHERE rid = $1 AND device = $2", &[&r, &d]).await?;
            if gone == 0 {
                return Ok::<_, StoreError>(false);
            }
            for sql in [
                "DELETE FROM push_handles WHERE rid = $1 AND device = $2",
                "DELETE FROM key_packages WHERE rid = $1 AND device = $2",
                "DELETE FROM gaps WHERE rid = $1 AND device = $2",
            ] {
                x(&tx, sql, &[&r, &d]).await?;
            }
            let seqs: Vec<i64> = q(
                &tx,
                "DELETE FROM mailbox WHERE rid = $1 AND device = $2 RETURNING seq",
                &[&r, &d],
            )
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
            release_blobs(&tx, &seqs).await?;
            // Its receivers on every node wake, find it gone, and end.
            let payload = super::live::mailbox_payload(&[(rid, device)]);
            x(&tx, "SELECT pg_notify('relay_mailbox', $1)", &[&payload]).await?;
            if let Some(now_ms) = revoked_at {
                let detail = format!("{} device={}", rid_detail(&rid), device.0);
                audit_into(&tx, "device.revoke", &detail, now_ms).await?;
            }
            tx.commit().await.map_err(db)?;
            Ok(true)
        })
    }
}
