//! The lazy re-key of one address during a K_rid rotation ([`crate::Rekey`]), for every
//! backend: its KeyPackages resealed for the new rid, then its records moved.

use bytes::Bytes;

use crate::{Rekey as _, Reseal, Storage, StoreError};

impl Storage {
    /// Moves the records of `address` to its rid under the current K_rid if they are still
    /// under the previous one (a rotation's lazy re-key, [`Rekey`]); its KeyPackages are
    /// resealed for the new rid. Nothing to do, and no I/O, outside a rotation.
    pub async fn rekey_address(
        &self,
        keys: &relay_core::RidKeys,
        address: &relay_core::Address,
    ) -> Result<(), StoreError> {
        let Some(previous) = &keys.previous else {
            return Ok(());
        };
        let old = previous.rid(address);
        if !self.is_rekey_marked(&old) {
            return Ok(());
        }
        let new = keys.current.rid(address);
        let (from, to) = (
            relay_core::atrest::AtRest::new(previous),
            relay_core::atrest::AtRest::new(&keys.current),
        );
        let reseal: Reseal = Box::new(move |stored: &[u8]| {
            let kp = from.open_key_package(&old, &Bytes::copy_from_slice(stored))?;
            Some(to.seal_key_package(&new, &kp).to_vec())
        });
        self.rekey(old, new, reseal).await?;
        metrics::gauge!("relay_rid_rekey_remaining").set(self.rekey_left() as f64);
        Ok(())
    }
}
