//! Group epochs (set by accepted commits, reset by an operator) and GroupInfos.

use bytes::Bytes;

use super::SledStore;
use super::layout::{GROUP_EPOCH, GROUP_INFO, backend, be_u64, prefixed};
use crate::StoreError;
use crate::contract::Groups;

impl Groups for SledStore {
    async fn group_epoch(&self, group_key: [u8; 32]) -> Result<Option<u64>, StoreError> {
        self.tree
            .get(prefixed(GROUP_EPOCH, &group_key))
            .map_err(backend)?
            .map(|v| be_u64(&v))
            .transpose()
    }

    async fn set_group_epoch(&self, group_key: [u8; 32], epoch: u64) -> Result<(), StoreError> {
        {
            let _guard = self.lock();
            self.tree
                .insert(prefixed(GROUP_EPOCH, &group_key), &epoch.to_be_bytes())
                .map_err(backend)?;
        }
        self.durable().await
    }

    async fn set_group_info(&self, group_key: [u8; 32], group_info: Bytes) -> Result<(), StoreError> {
        self.tree
            .insert(prefixed(GROUP_INFO, &group_key), group_info.as_ref())
            .map_err(backend)?;
        self.durable().await
    }

    async fn group_info(&self, group_key: [u8; 32]) -> Result<Option<Bytes>, StoreError> {
        Ok(self
            .tree
            .get(prefixed(GROUP_INFO, &group_key))
            .map_err(backend)?
            .map(|v| Bytes::copy_from_slice(&v)))
    }
}
