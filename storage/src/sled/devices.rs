//! Devices, credentials and provisioning nonces.

use super::index::Effect;
use super::layout::{
    CREDENTIAL, DEVICE_COUNTER, GAP, KEY_PACKAGE, NONCE, PUSH_HANDLE, backend, be_u32, device_key, device_key_with,
    prefixed,
};
use super::records::{DEVICE_ACTIVE, DeviceRecord};
use super::writeset::WriteSet;
use super::{Inner, SledStore, lock};
use crate::contract::Devices;
use crate::{DeviceAuth, DeviceId, NewDevice, RegisterError, Rid, StoreError};

impl Devices for SledStore {
    async fn register_device(&self, req: NewDevice) -> Result<DeviceId, RegisterError> {
        self.write(move |s| s.register(&req)).await
    }

    async fn device_by_lookup(&self, lookup: [u8; 16]) -> Result<Option<DeviceAuth>, StoreError> {
        let generation = {
            let cache = lock(&self.inner.auth);
            if let Some(auth) = cache.map.get(&lookup) {
                return Ok(Some(*auth));
            }
            cache.generation
        };
        let found = self.blocking(move |s| s.device_by_lookup(lookup)).await?;
        if let Some(auth) = found {
            let mut cache = lock(&self.inner.auth);
            if cache.generation == generation {
                if cache.map.len() >= super::CACHE_LIMIT {
                    cache.map.clear();
                }
                cache.map.insert(lookup, auth);
            }
        }
        Ok(found)
    }

    async fn devices(&self, rid: Rid) -> Result<Vec<DeviceId>, StoreError> {
        self.blocking(move |s| s.active_devices(&rid)).await
    }

    async fn delete_device(&self, rid: Rid, device: DeviceId) -> Result<bool, StoreError> {
        self.write(move |s| s.delete_device(rid, device, None)).await
    }
}

impl Inner {
    fn register(&self, req: &NewDevice) -> Result<(DeviceId, u64), RegisterError> {
        let mut cache = lock(&self.devices);
        let nonce_key = prefixed(NONCE, &req.provisioning_nonce);
        if self.tree.contains_key(&nonce_key).map_err(backend)? {
            return Err(RegisterError::TokenUsed);
        }
        let active = self.active_devices(&req.rid)?;
        if active.len() >= req.max_devices {
            return Err(RegisterError::TooManyDevices(active.len()));
        }
        let lookup_key = prefixed(CREDENTIAL, &req.credential_lookup);
        if self.tree.contains_key(&lookup_key).map_err(backend)? {
            return Err(RegisterError::LookupCollision);
        }
        let counter_key = prefixed(DEVICE_COUNTER, &req.rid.0);
        let next = match self.tree.get(&counter_key).map_err(backend)? {
            Some(v) => be_u32(&v)?,
            None => 1,
        };
        let device = DeviceId(next);
        let rec = DeviceRecord {
            status: DEVICE_ACTIVE,
            created_day: (req.now_ms / 86_400_000) as u32,
            credential: req.credential_hash,
            lookup: req.credential_lookup,
        };
        let mut ws = WriteSet::default();
        ws.put(&counter_key, &(next + 1).to_be_bytes());
        ws.put(&device_key(&req.rid, device), &rec.encode());
        let mut lookup_val = req.rid.0.to_vec();
        lookup_val.extend_from_slice(&device.0.to_be_bytes());
        ws.put(&lookup_key, &lookup_val);
        ws.put(&nonce_key, &req.provisioning_expires_at_ms.to_be_bytes());
        // Every registration is in the audit log, by rid (never the address), so what a
        // stolen provisioning key registered can be found.
        let _audit = lock(&self.audit);
        let detail = format!(
            "rid={} device={} key={}",
            relay_core::hex::encode(&req.rid.0),
            device.0,
            req.provisioning_key
        );
        self.audit_into(&mut ws, "device.register", &detail, req.now_ms)?;
        let lsn = self.commit(&ws)?;
        cache.remove(&req.rid);
        Ok((device, lsn))
    }

    fn device_by_lookup(&self, lookup: [u8; 16]) -> Result<Option<DeviceAuth>, StoreError> {
        let Some(v) = self.tree.get(prefixed(CREDENTIAL, &lookup)).map_err(backend)? else {
            return Ok(None);
        };
        if v.len() != 36 {
            return Err(StoreError::Corrupt("credential index"));
        }
        let rid = Rid(v[..32].try_into().map_err(|_| StoreError::Corrupt("rid"))?);
        let device = DeviceId(be_u32(&v[32..36])?);
        let Some(rec) = self.device_record(&rid, device)? else {
            return Ok(None);
        };
        if rec.status != DEVICE_ACTIVE || rec.lookup != lookup {
            return Ok(None);
        }
        Ok(Some(DeviceAuth {
            rid,
            device,
            credential_hash: rec.credential,
        }))
    }

    /// Removes the device, its credential, push handle, KeyPackages and mailbox; `false` if
    /// there was no such device. With `revoked_at`, the revocation is audited in the same write.
    pub(super) fn delete_device(
        &self,
        rid: Rid,
        device: DeviceId,
        revoked_at: Option<u64>,
    ) -> Result<(bool, u64), StoreError> {
        let mut cache = lock(&self.devices);
        let _kp = lock(&self.keypackages);
        let _push = lock(&self.push);
        let Some(rec) = self.device_record(&rid, device)? else {
            return Ok((false, self.journal.last_lsn()));
        };
        let mut ws = WriteSet::default();
        ws.del(&device_key(&rid, device));
        ws.del(&device_key_with(PUSH_HANDLE, &rid, device));
        ws.del(&prefixed(CREDENTIAL, &rec.lookup));
        for k in self.tree.scan_prefix(device_key_with(KEY_PACKAGE, &rid, device)).keys() {
            ws.del(&k.map_err(backend)?);
        }
        // Gap records of the device, whatever the index holds.
        for k in self.tree.scan_prefix(device_key_with(GAP, &rid, device)).keys() {
            ws.del(&k.map_err(backend)?);
        }
        let mut m = lock(&self.mailboxes);
        let mut effects = Vec::new();
        m.index.remove_device((rid, device), &mut effects);
        effects.retain(|e| !matches!(e, Effect::DelGap { .. }));
        self.effects_into(&effects, &mut ws)?;
        let _audit = revoked_at.map(|_| lock(&self.audit));
        if let Some(now_ms) = revoked_at {
            let detail = format!("rid={} device={}", relay_core::hex::encode(&rid.0), device.0);
            self.audit_into(&mut ws, "device.revoke", &detail, now_ms)?;
        }
        let lsn = self.commit(&ws)?;
        drop(m);
        cache.remove(&rid);
        let mut auth = lock(&self.auth);
        auth.map.remove(&rec.lookup);
        auth.generation += 1;
        Ok((true, lsn))
    }
}
