//! Records whose bytes name an address, sealed at rest.
//!
//! An MLS KeyPackage carries its owner's credential, and with basic credentials the identity
//! is the address (`mls.identity_must_match`); a GroupInfo with the ratchet tree carries every
//! member's. The relay must keep both (claims hand KeyPackages out, external joiners fetch
//! GroupInfo), so it stores them sealed (AES-256-GCM) under a key derived from a subkey of
//! K_rid and what the reader names: the rid (which only someone holding K_rid and the address
//! computes) for a KeyPackage, the group id (stored only as its hash) for a GroupInfo. The data
//! directory alone then reveals no number, while claims (which name the address) and GroupInfo
//! fetches (which name the group) still open them.
//!
//! Sealed: `{MAGIC:2}{nonce:12}{ciphertext+tag}`. A record stored before sealing (a
//! KeyPackage or MLSMessage starts with the protocol version, `00 01`) opens as it is.

use bytes::Bytes;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom as _, SystemRandom};

use crate::{Rid, RidKey};

const MAGIC: [u8; 2] = [0xff, 0x53];
const KEY_PACKAGE: &str = "rcs-relay 2026-12 key package at rest v1";
const GROUP_INFO: &str = "rcs-relay 2026-12 group info at rest v1";

/// Seals and opens the records that name addresses.
pub struct AtRest {
    key_packages: [u8; 32],
    group_infos: [u8; 32],
}

impl std::fmt::Debug for AtRest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AtRest(<secret>)")
    }
}

fn aead(base: &[u8; 32], name: &[u8]) -> LessSafeKey {
    let key = blake3::keyed_hash(base, name);
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key.as_bytes()).expect("32 bytes is an AES-256 key"))
}

fn seal(key: &LessSafeKey, aad: &str, plain: &[u8]) -> Bytes {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .expect("the system random source is available");
    let mut buf = plain.to_vec();
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad.as_bytes()), &mut buf)
        .expect("sealing a bounded buffer cannot fail");
    let mut out = Vec::with_capacity(2 + NONCE_LEN + buf.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&buf);
    Bytes::from(out)
}

fn open(key: &LessSafeKey, aad: &str, stored: &Bytes) -> Option<Bytes> {
    let Some(rest) = stored.strip_prefix(MAGIC.as_slice()) else {
        return Some(stored.clone());
    };
    if rest.len() < NONCE_LEN + AES_256_GCM.tag_len() {
        return None;
    }
    let nonce = Nonce::try_assume_unique_for_key(&rest[..NONCE_LEN]).ok()?;
    let mut buf = rest[NONCE_LEN..].to_vec();
    let n = key
        .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut buf)
        .ok()?
        .len();
    buf.truncate(n);
    Some(Bytes::from(buf))
}

impl AtRest {
    pub fn new(rid_key: &RidKey) -> Self {
        Self {
            key_packages: rid_key.derive(KEY_PACKAGE),
            group_infos: rid_key.derive(GROUP_INFO),
        }
    }

    /// A KeyPackage of the address with `rid`, as stored.
    pub fn seal_key_package(&self, rid: &Rid, key_package: &[u8]) -> Bytes {
        seal(&aead(&self.key_packages, &rid.0), KEY_PACKAGE, key_package)
    }

    /// A stored KeyPackage of `rid` (`None` if it does not open under that rid).
    pub fn open_key_package(&self, rid: &Rid, stored: &Bytes) -> Option<Bytes> {
        open(&aead(&self.key_packages, &rid.0), KEY_PACKAGE, stored)
    }

    /// A GroupInfo of the group `group_id`, as stored.
    pub fn seal_group_info(&self, group_id: &[u8], group_info: &[u8]) -> Bytes {
        seal(&aead(&self.group_infos, group_id), GROUP_INFO, group_info)
    }

    pub fn open_group_info(&self, group_id: &[u8], stored: &Bytes) -> Option<Bytes> {
        open(&aead(&self.group_infos, group_id), GROUP_INFO, stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_under_the_rid_or_group_and_legacy_records_open() {
        let at_rest = AtRest::new(&RidKey::from_bytes([5; 32]));
        let (rid, other) = (Rid([1; 32]), Rid([2; 32]));
        let kp = b"\x00\x01 a key package naming tel:+15550100001";
        let sealed = at_rest.seal_key_package(&rid, kp);
        assert!(!sealed.windows(10).any(|w| w == b"1555010000"), "no number at rest");
        assert_eq!(at_rest.open_key_package(&rid, &sealed).as_deref(), Some(kp.as_slice()));
        assert_eq!(at_rest.open_key_package(&other, &sealed), None, "another rid's key");
        let elsewhere = AtRest::new(&RidKey::from_bytes([6; 32]));
        assert_eq!(elsewhere.open_key_package(&rid, &sealed), None, "another K_rid");
        let mut tampered = sealed.to_vec();
        tampered[20] ^= 1;
        assert_eq!(at_rest.open_key_package(&rid, &Bytes::from(tampered)), None);
        let legacy = Bytes::from_static(b"\x00\x01 stored before sealing");
        assert_eq!(at_rest.open_key_package(&rid, &legacy), Some(legacy.clone()));
        let gi = at_rest.seal_group_info(b"group", b"\x00\x01 group info");
        assert_eq!(
            at_rest.open_group_info(b"group", &gi).as_deref(),
            Some(b"\x00\x01 group info".as_slice())
        );
        assert_eq!(at_rest.open_group_info(b"other", &gi), None);
        assert_eq!(
            at_rest.open_key_package(&rid, &gi),
            None,
            "a group info is not a key package"
        );
    }
}
