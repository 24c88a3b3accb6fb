//! The KeyPackage directory and Welcome routing by KeyPackageRef. Uploads and claims hold the
//! `keypackages` lock from the first read to the applied write, so a one-time package is
//! handed out exactly once.

use std::collections::HashSet;

use bytes::Bytes;

use super::layout::{KEY_PACKAGE, KEY_PACKAGE_ROUTE, backend, be_u32, be_u64, device_key_with, kp_prefix, prefixed};
use super::writeset::WriteSet;
use super::{Inner, SledStore, lock};
use crate::contract::KeyPackages;
use crate::{ClaimedKeyPackage, DeviceId, KeyPackageCount, KeyPackageError, NewKeyPackage, Rid, StoreError};

impl KeyPackages for SledStore {
    async fn upload_key_packages(
        &self,
        rid: Rid,
        device: DeviceId,
        packages: Vec<NewKeyPackage>,
        max_per_device: usize,
        _now_ms: u64,
    ) -> Result<u32, KeyPackageError> {
        self.write(move |s| s.upload(&rid, device, &packages, max_per_device))
            .await
    }

    async fn claim_key_packages(&self, targets: Vec<Rid>, now_ms: u64) -> Result<Vec<ClaimedKeyPackage>, StoreError> {
        // Exactly once: the removal is durable before anyone sees the package.
        self.write(move |s| s.claim(&targets, now_ms)).await
    }

    async fn key_package_count(&self, rid: Rid, device: DeviceId, now_ms: u64) -> Result<KeyPackageCount, StoreError> {
        self.blocking(move |s| {
            let mut count = KeyPackageCount::default();
            for last_resort in [false, true] {
                for item in s.tree.scan_prefix(kp_prefix(&rid, device, last_resort)) {
                    let (_, v) = item.map_err(backend)?;
                    if not_after(&v)? > now_ms {
                        if last_resort {
                            count.last_resort = true;
                        } else {
                            count.one_time += 1;
                        }
                    }
                }
            }
            Ok(count)
        })
        .await
    }

    async fn devices_for_key_packages(
        &self,
        refs: Vec<Vec<u8>>,
    ) -> Result<Result<Vec<(Rid, DeviceId)>, usize>, StoreError> {
        self.blocking(move |s| {
            let mut out: Vec<(Rid, DeviceId)> = Vec::with_capacity(refs.len());
            for (index, r) in refs.iter().enumerate() {
                let Some(v) = s.tree.get(prefixed(KEY_PACKAGE_ROUTE, r)).map_err(backend)? else {
                    return Ok(Err(index));
                };
                if v.len() != 44 {
                    return Err(StoreError::Corrupt("key package route"));
                }
                let target = (
                    Rid(v[..32].try_into().map_err(|_| StoreError::Corrupt("rid"))?),
                    DeviceId(be_u32(&v[32..36])?),
                );
                if !out.contains(&target) {
                    out.push(target);
                }
            }
            Ok(Ok(out))
        })
        .await
    }
}

/// The `not_after` a directory value starts with.
fn not_after(v: &[u8]) -> Result<u64, StoreError> {
    be_u64(v.get(..8).ok_or(StoreError::Corrupt("key package"))?)
}

impl Inner {
    fn upload(
        &self,
        rid: &Rid,
        dev: DeviceId,
        packages: &[NewKeyPackage],
        max_per_device: usize,
    ) -> Result<(u32, u64), KeyPackageError> {
        let _kp = lock(&self.keypackages);
        let mut seen = HashSet::new();
        for (index, p) in packages.iter().enumerate() {
            if !seen.insert(&p.kp_ref)
                || self
                    .tree
                    .contains_key(prefixed(KEY_PACKAGE_ROUTE, &p.kp_ref))
                    .map_err(backend)?
            {
                return Err(KeyPackageError::Duplicate { index });
            }
        }
        let held = self.tree.scan_prefix(device_key_with(KEY_PACKAGE, rid, dev)).count();
        let replaced_last_resort =
            packages.iter().any(|p| p.last_resort) && self.tree.scan_prefix(kp_prefix(rid, dev, true)).next().is_some();
        if held - usize::from(replaced_last_resort) + packages.len() > max_per_device {
            return Err(KeyPackageError::TooMany { max: max_per_device });
        }
        let mut ws = WriteSet::default();
        for p in packages {
            if p.last_resort {
                // One last-resort package per device: the new one replaces the old.
                for old in self.tree.scan_prefix(kp_prefix(rid, dev, true)).keys() {
                    ws.del(&old.map_err(backend)?);
                }
            }
            let mut key = kp_prefix(rid, dev, p.last_resort);
            key.extend_from_slice(&p.kp_ref);
            let mut value = Vec::with_capacity(8 + p.bytes.len());
            value.extend_from_slice(&p.not_after_ms.to_be_bytes());
            value.extend_from_slice(&p.bytes);
            ws.put(&key, &value);
            let mut route = Vec::with_capacity(44);
            route.extend_from_slice(&rid.0);
            route.extend_from_slice(&dev.0.to_be_bytes());
            route.extend_from_slice(&p.not_after_ms.to_be_bytes());
            ws.put(&prefixed(KEY_PACKAGE_ROUTE, &p.kp_ref), &route);
        }
        let lsn = self.commit(&ws)?;
        Ok((packages.len() as u32, lsn))
    }

    fn claim(&self, targets: &[Rid], now_ms: u64) -> Result<(Vec<ClaimedKeyPackage>, u64), StoreError> {
        let _kp = lock(&self.keypackages);
        let mut ws = WriteSet::default();
        let mut out = Vec::new();
        for rid in targets {
            for dev in self.active_devices(rid)? {
                let mut claimed = None;
                for item in self.tree.scan_prefix(kp_prefix(rid, dev, false)) {
                    let (k, v) = item.map_err(backend)?;
                    ws.del(&k); // expired, or handed out now: never again
                    if not_after(&v)? > now_ms {
                        claimed = Some((Bytes::copy_from_slice(&v[8..]), false));
                        break;
                    }
                }
                if claimed.is_none() {
                    for item in self.tree.scan_prefix(kp_prefix(rid, dev, true)) {
                        let (_, v) = item.map_err(backend)?;
                        if not_after(&v)? > now_ms {
                            claimed = Some((Bytes::copy_from_slice(&v[8..]), true));
                            break;
                        }
                    }
                }
                if let Some((bytes, last_resort)) = claimed {
                    out.push(ClaimedKeyPackage {
                        rid: *rid,
                        device: dev,
                        bytes,
                        last_resort,
                    });
                }
            }
        }
        let lsn = self.commit(&ws)?;
        Ok((out, lsn))
    }
}
