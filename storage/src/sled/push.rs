//! Push handles, one per device.

use super::SledStore;
use super::layout::{PUSH_HANDLE, backend, device_key_with};
use crate::contract::PushHandles;
use crate::{DeviceId, Rid, StoreError};

impl PushHandles for SledStore {
    async fn set_push_handle(&self, rid: Rid, device: DeviceId, handle: Option<String>) -> Result<bool, StoreError> {
        {
            let _guard = self.lock();
            if self.device_record(&rid, device)?.is_none() {
                return Ok(false);
            }
            let key = device_key_with(PUSH_HANDLE, &rid, device);
            match handle {
                Some(h) => self.tree.insert(key, h.as_bytes()).map_err(backend)?,
                None => self.tree.remove(key).map_err(backend)?,
            };
        }
        self.durable().await?;
        Ok(true)
    }

    async fn push_handle(&self, rid: Rid, device: DeviceId) -> Result<Option<String>, StoreError> {
        self.tree
            .get(device_key_with(PUSH_HANDLE, &rid, device))
            .map_err(backend)?
            .map(|v| String::from_utf8(v.to_vec()).map_err(|_| StoreError::Corrupt("push handle")))
            .transpose()
    }

    async fn drop_push_handle_if(&self, rid: Rid, device: DeviceId, handle: &str) -> Result<bool, StoreError> {
        let dropped = {
            let _guard = self.lock();
            let key = device_key_with(PUSH_HANDLE, &rid, device);
            let current = self.tree.get(&key).map_err(backend)?;
            if current.as_deref() == Some(handle.as_bytes()) {
                self.tree.remove(key).map_err(backend)?;
                true
            } else {
                false
            }
        };
        if dropped {
            self.durable().await?;
        }
        Ok(dropped)
    }
}
