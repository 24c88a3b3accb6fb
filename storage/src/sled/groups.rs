//! Group epochs (set by accepted commits, reset by an operator) and GroupInfos, each
//! written under the group's stripe.

use bytes::Bytes;

use super::layout::{GROUP_EPOCH, GROUP_INFO, backend, be_u64, prefixed};
use super::writeset::WriteSet;
use super::{Inner, SledStore};
use crate::StoreError;
use crate::contract::Groups;

impl Groups for SledStore {
    async fn group_epoch(&self, group_key: [u8; 32]) -> Result<Option<u64>, StoreError> {
        self.blocking(move |s| {
            s.tree
                .get(prefixed(GROUP_EPOCH, &group_key))
                .map_err(backend)?
                .map(|v| be_u64(&v))
                .transpose()
        })
        .await
    }

    async fn set_group_epoch(&self, group_key: [u8; 32], epoch: u64) -> Result<(), StoreError> {
        self.write(move |s| Ok(((), s.put_group(&group_key, GROUP_EPOCH, &epoch.to_be_bytes())?)))
            .await
    }

    async fn set_group_info(&self, group_key: [u8; 32], group_info: Bytes) -> Result<(), StoreError> {
        self.write(move |s| Ok(((), s.put_group(&group_key, GROUP_INFO, &group_info)?)))
            .await
    }

    async fn group_info(&self, group_key: [u8; 32]) -> Result<Option<Bytes>, StoreError> {
        self.blocking(move |s| {
            Ok(s.tree
                .get(prefixed(GROUP_INFO, &group_key))
                .map_err(backend)?
                .map(|v| Bytes::copy_from_slice(&v)))
        })
        .await
    }
}

impl Inner {
    fn put_group(&self, group_key: &[u8; 32], prefix: &[u8; 2], value: &[u8]) -> Result<u64, StoreError> {
        let _group = self.groups.lock(group_key);
        let mut ws = WriteSet::default();
        ws.put(&prefixed(prefix, group_key), value);
        self.commit(&ws)
    }
}
