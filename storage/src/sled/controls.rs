//! Operator controls: kill switches (`S/{name}`), suspended addresses (`U/{rid}`) and device
//! revocation; each change written with its audit record.

use super::layout::{SUSPENDED, SWITCH_OFF, backend, prefixed};
use super::writeset::WriteSet;
use super::{SledStore, lock};
use crate::contract::Controls;
use crate::{DeviceId, Rid, StoreError};

/// What [`SledStore::controls_now`] reads at open.
pub(crate) type ControlsNow = (Vec<String>, Vec<Rid>, Vec<Rid>);

impl Controls for SledStore {
    async fn set_switch(&self, name: &str, off: bool, now_ms: u64) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.write(move |s| {
            let _audit = lock(&s.audit);
            let mut ws = WriteSet::default();
            let key = prefixed(SWITCH_OFF, name.as_bytes());
            if off {
                ws.put(&key, &now_ms.to_be_bytes());
            } else {
                ws.del(&key);
            }
            let kind = if off { "switch.off" } else { "switch.on" };
            s.audit_into(&mut ws, kind, &name, now_ms)?;
            Ok(((), s.commit(&ws)?))
        })
        .await
    }

    async fn switches_off(&self) -> Result<Vec<String>, StoreError> {
        self.blocking(|s| s.switches_off()).await
    }

    async fn set_suspended(&self, rid: Rid, suspended: bool, now_ms: u64) -> Result<(), StoreError> {
        self.write(move |s| {
            let _audit = lock(&s.audit);
            let mut ws = WriteSet::default();
            let key = prefixed(SUSPENDED, &rid.0);
            if suspended {
                ws.put(&key, &now_ms.to_be_bytes());
            } else {
                ws.del(&key);
            }
            let kind = if suspended {
                "address.suspend"
            } else {
                "address.unsuspend"
            };
            s.audit_into(
                &mut ws,
                kind,
                &format!("rid={}", relay_core::hex::encode(&rid.0)),
                now_ms,
            )?;
            Ok(((), s.commit(&ws)?))
        })
        .await
    }

    async fn suspended(&self) -> Result<Vec<Rid>, StoreError> {
        self.blocking(|s| s.suspended()).await
    }

    async fn revoke_device(&self, rid: Rid, device: DeviceId, now_ms: u64) -> Result<bool, StoreError> {
        self.write(move |s| s.delete_device(rid, device, Some(now_ms))).await
    }
}

impl super::Inner {
    pub(super) fn switches_off(&self) -> Result<Vec<String>, StoreError> {
        self.tree
            .scan_prefix(SWITCH_OFF)
            .keys()
            .map(|k| {
                let k = k.map_err(backend)?;
                String::from_utf8(k[2..].to_vec()).map_err(|_| StoreError::Corrupt("switch name"))
            })
            .collect()
    }

    pub(super) fn suspended(&self) -> Result<Vec<Rid>, StoreError> {
        self.tree
            .scan_prefix(SUSPENDED)
            .keys()
            .map(|k| {
                let k = k.map_err(backend)?;
                Ok(Rid(k[2..]
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("suspended rid"))?))
            })
            .collect()
    }
}

impl SledStore {
    /// The switches that are off and the suspended addresses, read at open (blocking).
    /// The switches that are off, the suspended rids and the rids marked for re-key.
    pub(crate) fn controls_now(&self) -> Result<ControlsNow, StoreError> {
        Ok((
            self.inner.switches_off()?,
            self.inner.suspended()?,
            self.inner.rekey_marked()?,
        ))
    }
}
