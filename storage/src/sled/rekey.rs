//! K_rid rotation by lazy re-key (see [`crate::contract::Rekey`]): `O/{rid}` marks the rids
//! still under the previous key; [`Inner::rekey`] moves one rid's records to its new rid in
//! one write set.

use super::index::{Slot, server_id};
use super::layout::{
    BLOB, CREDENTIAL, DEVICE, DEVICE_COUNTER, GAP, IDEMPOTENCY, KEY_PACKAGE, KEY_PACKAGE_ROUTE, PUSH_HANDLE, REKEY,
    SUSPENDED, backend, be_u32, prefixed, tombstone_key,
};
use super::records::{BlobRecord, DeviceRecord};
use super::writeset::WriteSet;
use super::{Inner, SledStore, lock};
use crate::contract::{Rekey, Reseal};
use crate::{DeviceId, Rid, StoreError};

impl Rekey for SledStore {
    async fn rekey_begin(&self, now_ms: u64) -> Result<u64, StoreError> {
        self.write(move |s| s.rekey_begin(now_ms)).await
    }

    async fn rekey_marked(&self) -> Result<Vec<Rid>, StoreError> {
        self.blocking(|s| s.rekey_marked()).await
    }

    async fn rekey(&self, old: Rid, new: Rid, reseal: Reseal) -> Result<bool, StoreError> {
        self.write(move |s| s.rekey(old, new, &reseal)).await
    }

    async fn rekey_abandon(&self, now_ms: u64) -> Result<u64, StoreError> {
        self.write(move |s| s.rekey_abandon(now_ms)).await
    }
}

fn rid_at(k: &[u8]) -> Result<Rid, StoreError> {
    Ok(Rid(k
        .get(2..34)
        .and_then(|r| r.try_into().ok())
        .ok_or(StoreError::Corrupt("rid key"))?))
}

impl Inner {
    pub(super) fn rekey_marked(&self) -> Result<Vec<Rid>, StoreError> {
        self.tree
            .scan_prefix(REKEY)
            .keys()
            .map(|k| rid_at(&k.map_err(backend)?))
            .collect()
    }

    fn rekey_begin(&self, now_ms: u64) -> Result<(u64, u64), StoreError> {
        let _devices = lock(&self.devices);
        let left = self.tree.scan_prefix(REKEY).count();
        if left > 0 {
            return Err(StoreError::Refused(format!(
                "{left} addresses are still under the key before the previous one: finish that re-key (or force the retirement) first"
            )));
        }
        let mut ws = WriteSet::default();
        let mut marked = 0u64;
        // Every rid that ever registered has a device counter.
        for k in self.tree.scan_prefix(DEVICE_COUNTER).keys() {
            let rid = rid_at(&k.map_err(backend)?)?;
            ws.put(&prefixed(REKEY, &rid.0), &now_ms.to_be_bytes());
            marked += 1;
        }
        let _audit = lock(&self.audit);
        self.audit_into(&mut ws, "key.rotate", &format!("rid marked={marked}"), now_ms)?;
        Ok((marked, self.commit(&ws)?))
    }

    fn rekey_abandon(&self, now_ms: u64) -> Result<(u64, u64), StoreError> {
        let mut ws = WriteSet::default();
        let mut left = 0u64;
        for k in self.tree.scan_prefix(REKEY).keys() {
            ws.del(&k.map_err(backend)?);
            left += 1;
        }
        let _audit = lock(&self.audit);
        self.audit_into(&mut ws, "key.retire", &format!("rid forced unmigrated={left}"), now_ms)?;
        Ok((left, self.commit(&ws)?))
    }

    /// Moves `old`'s records under `prefix` (keys `{prefix}{rid}{rest}`) to `new`.
    fn move_prefix(&self, prefix: &[u8; 2], old: &Rid, new: &Rid, ws: &mut WriteSet) -> Result<(), StoreError> {
        for item in self.tree.scan_prefix(prefixed(prefix, &old.0)) {
            let (k, v) = item.map_err(backend)?;
            let mut moved = prefixed(prefix, &new.0);
            moved.extend_from_slice(&k[34..]);
            ws.put(&moved, &v);
            ws.del(&k);
        }
        Ok(())
    }

    fn rekey(&self, old: Rid, new: Rid, reseal: &Reseal) -> Result<(bool, u64), StoreError> {
        let mut cache = lock(&self.devices);
        let _kp = lock(&self.keypackages);
        let _push = lock(&self.push);
        let mark = prefixed(REKEY, &old.0);
        if !self.tree.contains_key(&mark).map_err(backend)? {
            return Ok((false, self.journal.last_lsn()));
        }
        if self
            .tree
            .contains_key(prefixed(DEVICE_COUNTER, &new.0))
            .map_err(backend)?
        {
            return Err(StoreError::Refused(
                "the address registered under the new key before its records were moved".into(),
            ));
        }
        let mut ws = WriteSet::default();
        ws.del(&mark);
        // Devices and their credentials.
        let mut devices: Vec<DeviceId> = Vec::new();
        let mut lookups = Vec::new();
        for item in self.tree.scan_prefix(prefixed(DEVICE, &old.0)) {
            let (k, v) = item.map_err(backend)?;
            let device = DeviceId(be_u32(&k[34..38])?);
            let rec = DeviceRecord::decode(&v)?;
            let mut route = new.0.to_vec();
            route.extend_from_slice(&device.0.to_be_bytes());
            ws.put(&prefixed(CREDENTIAL, &rec.lookup), &route);
            lookups.push(rec.lookup);
            devices.push(device);
        }
        for prefix in [DEVICE, DEVICE_COUNTER, GAP, IDEMPOTENCY, PUSH_HANDLE, SUSPENDED] {
            self.move_prefix(prefix, &old, &new, &mut ws)?;
        }
        // KeyPackages, resealed for the new rid, and their Welcome routes.
        for item in self.tree.scan_prefix(prefixed(KEY_PACKAGE, &old.0)) {
            let (k, v) = item.map_err(backend)?;
            if v.len() < 8 {
                return Err(StoreError::Corrupt("key package record"));
            }
            let resealed = reseal(&v[8..]).ok_or(StoreError::Corrupt("a KeyPackage does not open under its rid"))?;
            let mut moved = prefixed(KEY_PACKAGE, &new.0);
            moved.extend_from_slice(&k[34..]);
            let mut value = v[..8].to_vec();
            value.extend_from_slice(&resealed);
            ws.put(&moved, &value);
            ws.del(&k);
            // y/{rid:32}{dev:4}{lr:1}{ref} -> r/{ref} = {rid}{dev}{not_after}
            let kp_ref = &k[39..];
            let mut route = new.0.to_vec();
            route.extend_from_slice(&k[34..38]);
            route.extend_from_slice(&v[..8]);
            ws.put(&prefixed(KEY_PACKAGE_ROUTE, kp_ref), &route);
        }
        // Queued envelopes: each blob re-addressed once, with the tombstones of the rid's
        // devices that already took it.
        let mut m = lock(&self.mailboxes);
        let mut blobs = std::collections::BTreeMap::new();
        for &device in &devices {
            for (seq, slot) in m.index.rename((old, device), (new, device)) {
                if let Slot::Entry { rand, .. } = slot {
                    blobs.insert(seq, server_id(seq, rand));
                }
            }
        }
        for id in blobs.values() {
            let key = prefixed(BLOB, &id.0);
            let Some(raw) = self.tree.get(&key).map_err(backend)? else {
                continue;
            };
            let mut blob = BlobRecord::decode(raw)?;
            for r in &mut blob.recipients {
                if r.0 == old {
                    let was = tombstone_key(id, &old, r.1);
                    if let Some(t) = self.tree.get(&was).map_err(backend)? {
                        ws.put(&tombstone_key(id, &new, r.1), &t);
                        ws.del(&was);
                    }
                    r.0 = new;
                }
            }
            ws.put(&key, &blob.encode());
        }
        let lsn = self.commit(&ws)?;
        drop(m);
        cache.remove(&old);
        cache.remove(&new);
        let mut auth = lock(&self.auth);
        for l in lookups {
            auth.map.remove(&l);
        }
        auth.generation += 1;
        metrics::counter!("relay_rid_rekeyed_total").increment(1);
        Ok((true, lsn))
    }
}
