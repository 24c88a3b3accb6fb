//! Devices, credentials and provisioning nonces.

use super::SledStore;
use super::layout::{
    CREDENTIAL, DEVICE_COUNTER, KEY_PACKAGE, MAILBOX, NONCE, PUSH_HANDLE, backend, be_u32, device_key, device_key_with,
    mailbox_seq, prefixed,
};
use super::records::{BlobCounts, DEVICE_ACTIVE, DeviceRecord, MailboxEntry};
use crate::contract::Devices;
use crate::{DeviceAuth, DeviceId, NewDevice, RegisterError, Rid, StoreError};

impl Devices for SledStore {
    async fn register_device(&self, req: NewDevice) -> Result<DeviceId, RegisterError> {
        let device = {
            let mut st = self.lock();
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
            let mut batch = sled::Batch::default();
            batch.insert(counter_key, &(next + 1).to_be_bytes());
            batch.insert(device_key(&req.rid, device), rec.encode());
            let mut lookup_val = req.rid.0.to_vec();
            lookup_val.extend_from_slice(&device.0.to_be_bytes());
            batch.insert(lookup_key, lookup_val);
            batch.insert(nonce_key, &req.provisioning_expires_at_ms.to_be_bytes());
            self.tree.apply_batch(batch).map_err(backend)?;
            st.devices.remove(&req.rid);
            device
        };
        self.durable().await?;
        Ok(device)
    }

    async fn device_by_lookup(&self, lookup: [u8; 16]) -> Result<Option<DeviceAuth>, StoreError> {
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

    async fn devices(&self, rid: Rid) -> Result<Vec<DeviceId>, StoreError> {
        self.active_devices(&rid)
    }

    async fn delete_device(&self, rid: Rid, device: DeviceId) -> Result<bool, StoreError> {
        {
            let mut st = self.lock();
            let Some(rec) = self.device_record(&rid, device)? else {
                return Ok(false);
            };
            let mut entries = Vec::new();
            for item in self.tree.scan_prefix(device_key_with(MAILBOX, &rid, device)) {
                let (k, v) = item.map_err(backend)?;
                entries.push((mailbox_seq(&k)?, MailboxEntry::decode(&v)?));
            }
            let mut batch = sled::Batch::default();
            let mut blobs = BlobCounts::default();
            self.remove_entries(&mut batch, &mut blobs, &rid, device, &entries)?;
            blobs.write(&mut batch);
            batch.remove(device_key(&rid, device));
            batch.remove(device_key_with(PUSH_HANDLE, &rid, device));
            batch.remove(prefixed(CREDENTIAL, &rec.lookup));
            for k in self.tree.scan_prefix(device_key_with(KEY_PACKAGE, &rid, device)).keys() {
                batch.remove(k.map_err(backend)?);
            }
            self.tree.apply_batch(batch).map_err(backend)?;
            st.devices.remove(&rid);
            st.queued.remove(&(rid, device));
        }
        self.durable().await?;
        Ok(true)
    }
}
