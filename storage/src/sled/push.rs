//! Push handles, one per device, written under the `push` lock.

use super::layout::{PUSH_HANDLE, backend, device_key_with};
use super::writeset::WriteSet;
use super::{SledStore, lock};
use crate::contract::PushHandles;
use crate::{DeviceId, Rid, StoreError};

impl PushHandles for SledStore {
    async fn set_push_handle(&self, rid: Rid, device: DeviceId, handle: Option<String>) -> Result<bool, StoreError> {
        self.write(move |s| {
            let _push = lock(&s.push);
            if s.device_record(&rid, device)?.is_none() {
                return Ok((false, s.journal.last_lsn()));
            }
            let key = device_key_with(PUSH_HANDLE, &rid, device);
            let mut ws = WriteSet::default();
            match handle {
                Some(h) => ws.put(&key, h.as_bytes()),
                None => ws.del(&key),
            }
            Ok((true, s.commit(&ws)?))
        })
        .await
    }

    async fn push_handle(&self, rid: Rid, device: DeviceId) -> Result<Option<String>, StoreError> {
        self.blocking(move |s| {
            s.tree
                .get(device_key_with(PUSH_HANDLE, &rid, device))
                .map_err(backend)?
                .map(|v| String::from_utf8(v.to_vec()).map_err(|_| StoreError::Corrupt("push handle")))
                .transpose()
        })
        .await
    }

    async fn drop_push_handle_if(&self, rid: Rid, device: DeviceId, handle: &str) -> Result<bool, StoreError> {
        let handle = handle.to_owned();
        self.write(move |s| {
            let _push = lock(&s.push);
            let key = device_key_with(PUSH_HANDLE, &rid, device);
            if s.tree.get(&key).map_err(backend)?.as_deref() != Some(handle.as_bytes()) {
                return Ok((false, s.journal.last_lsn()));
            }
            let mut ws = WriteSet::default();
            ws.del(&key);
            Ok((true, s.commit(&ws)?))
        })
        .await
    }
}
