//! MLS checks the Delivery Service makes on public MLS structures: KeyPackage
//! validation (signatures, lifetime, ciphersuite, identity) and the group ordering of a
//! message. Nothing here can decrypt anything.

use openmls::prelude::tls_codec::DeserializeBytes as _;
use openmls::prelude::{BasicCredential, KeyPackageIn, ProtocolVersion};
use openmls_rust_crypto::RustCrypto;
use relay_core::envelope::MessageContentType;
use relay_core::{Address, Envelope};
use storage::{GroupOrdering, NewKeyPackage, OrderingKind};

use crate::config::MlsConfig;

/// How far in the future a KeyPackage's `not_before` may be (client clocks run ahead;
/// mls-rs starts lifetimes at exactly "now").
const CLOCK_SKEW_SECS: u64 = 300;

/// Why one KeyPackage of an upload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyPackageRejection {
    #[error("not a TLS-encoded KeyPackage")]
    Malformed,
    #[error("signature or structure does not verify: {0}")]
    Invalid(String),
    #[error("ciphersuite 0x{0:04x} is not allowed")]
    Ciphersuite(u16),
    #[error("lifetime has expired or has not started")]
    Lifetime,
    #[error("credential identity is not the uploading device's address")]
    Identity,
}

/// Parses and verifies one KeyPackage for the device with recipient hash `rid`.
pub fn validate_key_package(
    bytes: &[u8],
    device_rid: &relay_core::Rid,
    rid_keys: &relay_core::RidKeys,
    config: &MlsConfig,
    now_ms: u64,
) -> Result<NewKeyPackage, KeyPackageRejection> {
    let kp_in = KeyPackageIn::tls_deserialize_exact_bytes(bytes).map_err(|_| KeyPackageRejection::Malformed)?;
    let crypto = RustCrypto::default();
    let kp = kp_in.validate(&crypto, ProtocolVersion::Mls10).map_err(|e| match e {
        openmls::prelude::KeyPackageVerifyError::LifetimeError(_) => KeyPackageRejection::Lifetime,
        other => KeyPackageRejection::Invalid(other.to_string()),
    })?;
    let suite = u16::from(kp.ciphersuite());
    if !config.ciphersuites.contains(&suite) {
        return Err(KeyPackageRejection::Ciphersuite(suite));
    }
    let lifetime = kp.life_time();
    let now_secs = now_ms / 1000;
    if lifetime.not_after() <= now_secs || lifetime.not_before() > now_secs + CLOCK_SKEW_SECS {
        return Err(KeyPackageRejection::Lifetime);
    }
    if config.identity_must_match {
        let credential = BasicCredential::try_from(kp.leaf_node().credential().clone())
            .map_err(|_| KeyPackageRejection::Identity)?;
        let address = std::str::from_utf8(credential.identity())
            .ok()
            .and_then(|s| Address::parse(s).ok())
            .ok_or(KeyPackageRejection::Identity)?;
        if !rid_keys.is_rid_of(&address, device_rid) {
            return Err(KeyPackageRejection::Identity);
        }
    }
    let kp_ref = kp
        .hash_ref(&crypto)
        .map_err(|e| KeyPackageRejection::Invalid(e.to_string()))?;
    Ok(NewKeyPackage {
        kp_ref: kp_ref.as_slice().to_vec(),
        bytes: bytes::Bytes::copy_from_slice(bytes),
        not_after_ms: lifetime.not_after().saturating_mul(1000),
        last_resort: kp.last_resort(),
    })
}

/// The ordering rule for a PublicMessage or PrivateMessage.
pub fn ordering(envelope: &Envelope, config: &MlsConfig) -> Option<GroupOrdering> {
    let header = envelope.header()?;
    let kind = match header.content_type {
        MessageContentType::Commit => OrderingKind::Commit,
        MessageContentType::Proposal => OrderingKind::Proposal,
        MessageContentType::Application => OrderingKind::Application {
            window: config.application_epoch_window,
        },
    };
    Some(GroupOrdering {
        group_key: group_key(&header.group_id),
        epoch: header.epoch,
        kind,
    })
}

/// Decodes a group id written as hex (API paths, admin endpoints): non-empty, even length,
/// at most 256 bytes. Never panics on arbitrary input.
pub fn decode_group_id(hex: &str) -> Option<Vec<u8>> {
    if hex.is_empty() || hex.len() > 512 {
        return None;
    }
    relay_core::hex::decode(hex)
}

/// Groups are stored under a hash of their id.
pub fn group_key(group_id: &[u8]) -> [u8; 32] {
    *blake3::Hasher::new_derive_key("rcs-relay 2026-11 group key v1")
        .update(group_id)
        .finalize()
        .as_bytes()
}

#[cfg(test)]
mod tests {
    use super::decode_group_id;

    #[test]
    fn group_ids_decode_and_bad_input_is_refused_without_panicking() {
        assert_eq!(decode_group_id("00ff10"), Some(vec![0, 0xff, 0x10]));
        for bad in ["", "0", "zz", "a\u{e9}b", "\u{e9}\u{e9}", &"ab".repeat(257)] {
            assert_eq!(decode_group_id(bad), None, "{bad:?}");
        }
    }
}
