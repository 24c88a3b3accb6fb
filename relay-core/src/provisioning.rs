//! Provisioning tokens: the operator's signed statement that an address may register
//! a device (the carrier's attestation of the number).
//!
//! Format: `pt1.<base64url(claims)>.<base64url(Ed25519 signature over claims)>`, where
//! claims are `version (1) || expires_at_ms (u64 BE) || nonce (16) || address (UTF-8)`.
//! The nonce makes every token single-use: the gateway records it until expiry.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{ED25519, Ed25519KeyPair, UnparsedPublicKey};

use crate::Address;

const PREFIX: &str = "pt1.";
const VERSION: u8 = 1;
const MAX_TOKEN_LEN: usize = 512;

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
}

/// Signs claims with the operator's provisioning key.
pub fn sign(key: &Ed25519KeyPair, claims: &ProvisioningClaims) -> String {
    let payload = encode_claims(claims);
    let sig = key.sign(&payload);
    format!(
        "{PREFIX}{}.{}",
        URL_SAFE_NO_PAD.encode(&payload),
        URL_SAFE_NO_PAD.encode(sig.as_ref())
    )
}

/// Verifies a token against the provisioning public key (32 raw bytes) at `now_ms`.
pub fn verify(token: &str, public_key: &[u8], now_ms: u64) -> Result<ProvisioningClaims, ProvisioningError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(ProvisioningError::Malformed);
    }
    let body = token.strip_prefix(PREFIX).ok_or(ProvisioningError::Malformed)?;
    let (payload_b64, sig_b64) = body.split_once('.').ok_or(ProvisioningError::Malformed)?;
    let payload = URL_SAFE_NO_PAD
        .decode(payload_b64)
        .map_err(|_| ProvisioningError::Malformed)?;
    let sig = URL_SAFE_NO_PAD
        .decode(sig_b64)
        .map_err(|_| ProvisioningError::Malformed)?;
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(&payload, &sig)
        .map_err(|_| ProvisioningError::BadSignature)?;
    let claims = decode_claims(&payload).ok_or(ProvisioningError::Malformed)?;
    if claims.expires_at_ms <= now_ms {
        return Err(ProvisioningError::Expired);
    }
    Ok(claims)
}

fn encode_claims(claims: &ProvisioningClaims) -> Vec<u8> {
    let addr = claims.address.as_str().as_bytes();
    let mut out = Vec::with_capacity(25 + addr.len());
    out.push(VERSION);
    out.extend_from_slice(&claims.expires_at_ms.to_be_bytes());
    out.extend_from_slice(&claims.nonce);
    out.extend_from_slice(addr);
    out
}

fn decode_claims(payload: &[u8]) -> Option<ProvisioningClaims> {
    let (&version, rest) = payload.split_first()?;
    if version != VERSION || rest.len() < 24 {
        return None;
    }
    let expires_at_ms = u64::from_be_bytes(rest[..8].try_into().ok()?);
    let nonce: [u8; 16] = rest[8..24].try_into().ok()?;
    let address = Address::parse(std::str::from_utf8(&rest[24..]).ok()?).ok()?;
    Some(ProvisioningClaims {
        address,
        expires_at_ms,
        nonce,
    })
}

#[cfg(test)]
mod tests {
    use ring::rand::SystemRandom;
    use ring::signature::KeyPair as _;

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
        let good = encode_claims(&claims(5));
        assert_eq!(decode_claims(&good), Some(claims(5)));
        let mut other_version = good.clone();
        other_version[0] = VERSION + 1;
        assert_eq!(
            decode_claims(&other_version),
            None,
            "a version this build does not know"
        );
        // Too short to hold expiry and nonce: refused, never sliced past its end.
        assert_eq!(decode_claims(&good[..10]), None);
        assert_eq!(decode_claims(&good[..25]), None, "expiry and nonce but no address");
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
        payload[1] ^= 0xff; // push the expiry far out
        let forged = format!("pt1.{}.{sig}", URL_SAFE_NO_PAD.encode(payload));
        assert_eq!(
            verify(&forged, key.public_key().as_ref(), 0),
            Err(ProvisioningError::BadSignature)
        );
        for bad in ["", "pt1.", "pt1.a.b", "xx1.abc.def", &"a".repeat(600)] {
            assert!(verify(bad, key.public_key().as_ref(), 0).is_err(), "{bad}");
        }
    }
}
