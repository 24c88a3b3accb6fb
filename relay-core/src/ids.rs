//! Identifiers. None of them reveals an address: `Rid` is a keyed hash, and every
//! `Debug` impl prints at most a short prefix.

use std::fmt;

use crate::Address;

/// The secret key of the recipient hash (K_rid, DESIGN.md section 2).
///
/// An unkeyed hash of a phone number is brute-forced in minutes; with a 256-bit key
/// held by the key provider, a stolen database reveals nothing.
#[derive(Clone)]
pub struct RidKey([u8; 32]);

impl RidKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A subkey of K_rid for `context` (BLAKE3 key derivation): keys for records that are
    /// sealed per rid ([`crate::atrest`]).
    pub fn derive(&self, context: &str) -> [u8; 32] {
        blake3::derive_key(context, &self.0)
    }

    /// `rid = BLAKE3-keyed(K_rid, canonical address)`.
    pub fn rid(&self, address: &Address) -> Rid {
        Rid(*blake3::keyed_hash(&self.0, address.as_str().as_bytes()).as_bytes())
    }

    /// A value only this key gives (not a rid: no address hashes to it), so nodes sharing a
    /// database can check they hold the same key without showing it.
    pub fn probe(&self) -> [u8; 16] {
        let mut p = [0u8; 16];
        p.copy_from_slice(&blake3::keyed_hash(&self.0, b"\0rcs-relay node agreement").as_bytes()[..16]);
        p
    }
}

/// K_rid during a rotation: the current key, and the previous one while the rids made with
/// it are re-keyed (lazily: a request naming an address moves its records).
#[derive(Clone, Debug)]
pub struct RidKeys {
    pub current: RidKey,
    pub previous: Option<RidKey>,
}

impl RidKeys {
    /// No rotation under way.
    pub fn single(current: RidKey) -> Self {
        Self {
            current,
            previous: None,
        }
    }

    /// The address's rid under the current key.
    pub fn rid(&self, address: &Address) -> Rid {
        self.current.rid(address)
    }

    /// Whether `rid` is the address's rid under the current or the previous key.
    pub fn is_rid_of(&self, address: &Address, rid: &Rid) -> bool {
        self.current.rid(address) == *rid || self.previous.as_ref().is_some_and(|p| p.rid(address) == *rid)
    }
}

impl fmt::Debug for RidKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RidKey(<secret>)")
    }
}

/// Recipient id: the keyed hash of an address. The only form an address takes at rest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rid(pub [u8; 32]);

impl fmt::Debug for Rid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Rid({:02x}{:02x}{:02x}{:02x}..)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// A device of an address, unique among that address's devices.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct DeviceId(pub u32);

/// Server-assigned id of one envelope, shared by all its recipients; used to
/// de-duplicate (delivery is at-least-once) and to acknowledge.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerId(pub [u8; 16]);

impl ServerId {
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    /// The first 8 bytes: the store's monotonic id of the send (also each recipient's
    /// mailbox sequence number for it); the other 8 are random.
    pub fn seq(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[..8]);
        u64::from_be_bytes(b)
    }
}

impl fmt::Debug for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerId({self})")
    }
}

impl fmt::Display for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Optional 16-byte id a client puts on a send so a retry is idempotent.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ClientMessageId(pub [u8; 16]);

impl ClientMessageId {
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rid_depends_on_key_and_canonical_address() {
        let k1 = RidKey::from_bytes([1; 32]);
        let k2 = RidKey::from_bytes([2; 32]);
        let a = Address::parse("tel:+15550100001").unwrap();
        let b = Address::parse("tel:+1-555-010-0001").unwrap();
        assert_eq!(k1.rid(&a), k1.rid(&b));
        assert_ne!(k1.rid(&a), k2.rid(&a));
        assert_eq!(
            k1.rid(&a).0,
            *blake3::keyed_hash(&[1; 32], b"tel:+15550100001").as_bytes()
        );
    }

    #[test]
    fn server_id_displays_as_hex() {
        let id = ServerId([0xab; 16]);
        assert_eq!(id.to_string(), "ab".repeat(16));
        assert_eq!(ServerId::from_slice(&[0; 15]), None);
    }
}
