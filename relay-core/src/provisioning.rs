//! Provisioning tokens: the operator's signed statement that an address may register
//! a device (the carrier's attestation of the number).
//!
//! Format: `pt2.<base64url(claims)>.<base64url(Ed25519 signature over claims)>`, where
//! claims are `version (2) || key id (4) || expires_at_ms (u64 BE) || nonce (16) || address
//! (UTF-8)`. The key id names the provisioning key that signed it, so during a rotation old
//! and new keys both verify, and a retired or compromised key's tokens are refused. Version 1
//! tokens (`pt1.`, no key id) are still read: their key is the one their signature verifies
//! with. The nonce makes every token single-use: the gateway records it until expiry.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};

use crate::Address;

const PREFIX_V1: &str = "pt1.";
const PREFIX: &str = "pt2.";
const VERSION: u8 = 2;
const MAX_TOKEN_LEN: usize = 512;

/// A provisioning key's id: the first 4 bytes of SHA-256 over its public key (8 hex digits).
pub type KeyId = [u8; 4];

/// The id of a provisioning public key.
pub fn key_id(public_key: &[u8]) -> KeyId {
    let digest = ring::digest::digest(&ring::digest::SHA256, public_key);
    digest.as_ref()[..4].try_into().expect("4 bytes")
}

/// Where a provisioning key is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Signs new tokens; its tokens verify.
    Active,
    /// Replaced by a newer key; its tokens still verify (the overlap window).
    Retiring,
    /// Its tokens are refused.
    Retired,
    /// Its tokens are refused; kept, not deleted, as evidence.
    Compromised,
}

impl KeyState {
    pub fn accepts_tokens(self) -> bool {
        matches!(self, Self::Active | Self::Retiring)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Retiring => "retiring",
            Self::Retired => "retired",
            Self::Compromised => "compromised",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Active, Self::Retiring, Self::Retired, Self::Compromised]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// A provisioning key that verifies tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyingKey {
    pub public_key: Vec<u8>,
    pub state: KeyState,
}

/// The verified content of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisioningClaims {
    pub address: Address,
    pub expires_at_ms: u64,
    pub nonce: [u8; 16],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProvisioningError {
    #[error("malformed provisioning token")]
    Malformed,
    #[error("provisioning token signature does not verify")]
    BadSignature,
    #[error("provisioning token expired")]
    Expired,
    /// Signed by a key that is retired or compromised.
    #[error("provisioning token signed by a key that is no longer accepted")]
    KeyNotAccepted,
}

/// Signs claims with the operator's provisioning key (a `pt2` token naming the key).
pub fn sign(key: &Ed25519KeyPair, claims: &ProvisioningClaims) -> String {
    sign_with(key.public_key().as_ref(), claims, |payload| {
        key.sign(payload).as_ref().to_vec()
    })
}

/// A token signed by the Ed25519 key with `public_key` through `sign` (a key held in an HSM).
pub fn sign_with(public_key: &[u8], claims: &ProvisioningClaims, sign: impl FnOnce(&[u8]) -> Vec<u8>) -> String {
    let payload = encode_claims(claims, key_id(public_key));
    let sig = sign(&payload);
    format!(
        "{PREFIX}{}.{}",
        URL_SAFE_NO_PAD.encode(&payload),
        URL_SAFE_NO_PAD.encode(&sig)
    )
}

/// Verifies a token against one provisioning public key (32 raw bytes) at `now_ms`.
pub fn verify(token: &str, public_key: &[u8], now_ms: u64) -> Result<ProvisioningClaims, ProvisioningError> {
    let key = VerifyingKey {
        public_key: public_key.to_vec(),
        state: KeyState::Active,
    };
    verify_with(token, std::slice::from_ref(&key), now_ms).map(|(claims, _)| claims)
}

/// Verifies a token against the gateway's provisioning keys at `now_ms`; returns the claims
/// and the id of the key that signed them.
pub fn verify_with(
    token: &str,
    keys: &[VerifyingKey],
    now_ms: u64,
) -> Result<(ProvisioningClaims, KeyId), ProvisioningError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(ProvisioningError::Malformed);
    }
    let (v1, body) = match (token.strip_prefix(PREFIX), token.strip_prefix(PREFIX_V1)) {
        (Some(body), _) => (false, body),
        (None, Some(body)) => (true, body),
        (None, None) => return Err(ProvisioningError::Malformed),
    };
    let (payload_b64, sig_b64) = body.split_once('.').ok_or(ProvisioningError::Malformed)?;
    let payload = URL_SAFE_NO_PAD
        .decode(payload_b64)
        .map_err(|_| ProvisioningError::Malformed)?;
    let sig = URL_SAFE_NO_PAD
        .decode(sig_b64)
        .map_err(|_| ProvisioningError::Malformed)?;
    let verifies = |k: &VerifyingKey| {
        UnparsedPublicKey::new(&ED25519, &k.public_key)
            .verify(&payload, &sig)
            .is_ok()
    };
    // The signature first (by the key a version 2 token names), then the claims.
    let named: Option<KeyId> = match payload.split_first() {
        Some((&VERSION, rest)) if !v1 => rest.get(..4).and_then(|id| id.try_into().ok()),
        _ => None,
    };
    let key = match named {
        Some(id) => keys
            .iter()
            .find(|k| key_id(&k.public_key) == id)
            .filter(|k| verifies(k)),
        None => keys.iter().find(|k| verifies(k)),
    }
    .ok_or(ProvisioningError::BadSignature)?;
    let (claims, _) = decode_claims(&payload, v1).ok_or(ProvisioningError::Malformed)?;
    if !key.state.accepts_tokens() {
        return Err(ProvisioningError::KeyNotAccepted);
    }
    if claims.expires_at_ms <= now_ms {
        return Err(ProvisioningError::Expired);
    }
    Ok((claims, key_id(&key.public_key)))
}

fn encode_claims(claims: &ProvisioningClaims, key: KeyId) -> Vec<u8> {
    let addr = claims.address.as_str().as_bytes();
    let mut out = Vec::with_capacity(29 + addr.len());
    out.push(VERSION);
    out.extend_from_slice(&key);
    out.extend_from_slice(&claims.expires_at_ms.to_be_bytes());
    out.extend_from_slice(&claims.nonce);
    out.extend_from_slice(addr);
    out
}

/// The claims and, for version 2, the key id they name.
fn decode_claims(payload: &[u8], v1: bool) -> Option<(ProvisioningClaims, Option<KeyId>)> {
    let (&version, rest) = payload.split_first()?;
    let (key, rest) = match (version, v1) {
        (1, true) => (None, rest),
        (VERSION, false) => {
            let (id, rest) = rest.split_at_checked(4)?;
            (Some(id.try_into().ok()?), rest)
        }
        _ => return None,
    };
    if rest.len() < 24 {
        return None;
    }
    let expires_at_ms = u64::from_be_bytes(rest[..8].try_into().ok()?);
    let nonce: [u8; 16] = rest[8..24].try_into().ok()?;
    let address = Address::parse(std::str::from_utf8(&rest[24..]).ok()?).ok()?;
    Some((
        ProvisioningClaims {
            address,
            expires_at_ms,
            nonce,
        },
        key,
    ))
}

#[cfg(test)]
mod tests {
    use ring::rand::SystemRandom;

    use super::*;

    fn keypair() -> Ed25519KeyPair {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
    }

    fn claims(expires_at_ms: u64) -> ProvisioningClaims {
        ProvisioningClaims {
            address: Address::parse("tel:+15550100001").unwrap(),
            expires_at_ms,
            nonce: [7; 16],
        }
    }

    #[test]
    fn claims_need_the_version_and_24_bytes_before_the_address() {
        let good = encode_claims(&claims(5), [1, 2, 3, 4]);
        assert_eq!(decode_claims(&good, false), Some((claims(5), Some([1, 2, 3, 4]))));
        assert_eq!(decode_claims(&good, true), None, "a v2 payload under pt1");
        let mut other_version = good.clone();
        other_version[0] = VERSION + 1;
        assert_eq!(
            decode_claims(&other_version, false),
            None,
            "a version this build does not know"
        );
        // Too short to hold expiry and nonce: refused, never sliced past its end.
        assert_eq!(decode_claims(&good[..10], false), None);
        assert_eq!(
            decode_claims(&good[..29], false),
            None,
            "expiry and nonce but no address"
        );
    }

    /// A version 1 token (no key id), as issued before rotation existed.
    fn sign_v1(key: &Ed25519KeyPair, c: &ProvisioningClaims) -> String {
        let mut payload = vec![1];
        payload.extend_from_slice(&encode_claims(c, [0; 4])[5..]);
        let sig = key.sign(&payload);
        format!(
            "pt1.{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(sig.as_ref())
        )
    }

    #[test]
    fn rotation_overlap_and_refused_keys() {
        let (old, new) = (keypair(), keypair());
        let ring = |old_state| {
            vec![
                VerifyingKey {
                    public_key: old.public_key().as_ref().to_vec(),
                    state: old_state,
                },
                VerifyingKey {
                    public_key: new.public_key().as_ref().to_vec(),
                    state: KeyState::Active,
                },
            ]
        };
        let old_id = key_id(old.public_key().as_ref());
        let by_old = sign(&old, &claims(2_000));
        let by_old_v1 = sign_v1(&old, &claims(2_000));
        let by_new = sign(&new, &claims(2_000));
        assert!(by_old.starts_with("pt2."));
        // Overlap: both keys' tokens verify, each naming its key; v1 tokens still read.
        let keys = ring(KeyState::Retiring);
        assert_eq!(verify_with(&by_old, &keys, 0), Ok((claims(2_000), old_id)));
        assert_eq!(verify_with(&by_old_v1, &keys, 0), Ok((claims(2_000), old_id)));
        assert_eq!(
            verify_with(&by_new, &keys, 0).unwrap().1,
            key_id(new.public_key().as_ref())
        );
        // Retired or compromised: the old key's tokens are refused, the new key's are not.
        for state in [KeyState::Retired, KeyState::Compromised] {
            let keys = ring(state);
            assert_eq!(verify_with(&by_old, &keys, 0), Err(ProvisioningError::KeyNotAccepted));
            assert_eq!(
                verify_with(&by_old_v1, &keys, 0),
                Err(ProvisioningError::KeyNotAccepted)
            );
            assert!(verify_with(&by_new, &keys, 0).is_ok());
        }
        // A token naming one key but signed by another does not verify.
        let mut lying = encode_claims(&claims(2_000), old_id);
        lying[0] = VERSION;
        let sig = new.sign(&lying);
        let lying = format!(
            "pt2.{}.{}",
            URL_SAFE_NO_PAD.encode(&lying),
            URL_SAFE_NO_PAD.encode(sig.as_ref())
        );
        assert_eq!(
            verify_with(&lying, &ring(KeyState::Active), 0),
            Err(ProvisioningError::BadSignature)
        );
        assert!(KeyState::parse("compromised").is_some_and(|k| !k.accepts_tokens()));
    }

    #[test]
    fn sign_then_verify() {
        let key = keypair();
        let token = sign(&key, &claims(2_000));
        assert_eq!(verify(&token, key.public_key().as_ref(), 1_000), Ok(claims(2_000)));
        assert_eq!(
            verify(&token, key.public_key().as_ref(), 2_000),
            Err(ProvisioningError::Expired)
        );
    }

    #[test]
    fn rejects_other_key_tampering_and_garbage() {
        let key = keypair();
        let token = sign(&key, &claims(2_000));
        let other = keypair();
        assert_eq!(
            verify(&token, other.public_key().as_ref(), 0),
            Err(ProvisioningError::BadSignature)
        );
        let (head, sig) = token.rsplit_once('.').unwrap();
        let mut payload = URL_SAFE_NO_PAD.decode(&head[4..]).unwrap();
        payload[5] ^= 0xff; // push the expiry far out
        let forged = format!("pt2.{}.{sig}", URL_SAFE_NO_PAD.encode(payload));
        assert_eq!(
            verify(&forged, key.public_key().as_ref(), 0),
            Err(ProvisioningError::BadSignature)
        );
        for bad in ["", "pt1.", "pt2.", "pt2.a.b", "xx1.abc.def", &"a".repeat(600)] {
            assert!(verify(bad, key.public_key().as_ref(), 0).is_err(), "{bad}");
        }
    }
}
