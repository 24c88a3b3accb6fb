//! Compact JWS for the providers: ES256 (APNs provider tokens, VAPID) and RS256 (the FCM
//! OAuth2 service-account grant). Hand-written because it is three base64url parts and one
//! signature; the signatures themselves come from p256 (RFC 6979 ECDSA) and ring (RSA).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::SecretKey;
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use serde_json::Value;

use crate::error::JwtError;

/// A fresh P-256 secret key from the system random source.
pub fn random_secret() -> SecretKey {
    loop {
        let mut bytes = [0u8; 32];
        rand::fill(&mut bytes);
        // Out-of-range scalars (probability ~2^-32) are simply redrawn.
        if let Ok(k) = SecretKey::from_slice(&bytes) {
            return k;
        }
    }
}

fn signing_input(alg: &str, kid: Option<&str>, claims: &Value) -> String {
    let mut header = serde_json::json!({ "alg": alg, "typ": "JWT" });
    if let Some(kid) = kid {
        header["kid"] = Value::from(kid);
    }
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// An ES256 JWT (signature as the 64-byte `r ‖ s` of RFC 7518).
pub fn sign_es256(key: &SigningKey, kid: Option<&str>, claims: &Value) -> String {
    let input = signing_input("ES256", kid, claims);
    let sig: Signature = key.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
}

/// An RS256 JWT with a PKCS#8 RSA key.
pub fn sign_rs256(key: &ring::signature::RsaKeyPair, kid: Option<&str>, claims: &Value) -> Result<String, JwtError> {
    let input = signing_input("RS256", kid, claims);
    let mut sig = vec![0u8; key.public().modulus_len()];
    key.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        input.as_bytes(),
        &mut sig,
    )
    .map_err(|_| JwtError::Sign)?;
    Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)))
}

/// The decoded header and claims of a compact JWS, and its signing input and signature.
pub struct Parts {
    pub header: Value,
    pub claims: Value,
    pub signing_input: String,
    pub signature: Vec<u8>,
}

impl std::fmt::Debug for Parts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parts")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

pub fn parts(jwt: &str) -> Result<Parts, JwtError> {
    let mut it = jwt.split('.');
    let (Some(h), Some(c), Some(s), None) = (it.next(), it.next(), it.next(), it.next()) else {
        return Err(JwtError::Parts);
    };
    let json = |p: &str| -> Result<Value, JwtError> {
        let raw = URL_SAFE_NO_PAD.decode(p).map_err(|_| JwtError::NotBase64)?;
        serde_json::from_slice(&raw).map_err(|_| JwtError::NotJson)
    };
    Ok(Parts {
        header: json(h)?,
        claims: json(c)?,
        signing_input: format!("{h}.{c}"),
        signature: URL_SAFE_NO_PAD.decode(s).map_err(|_| JwtError::NotBase64)?,
    })
}

/// Verifies an ES256 JWT and returns its claims.
pub fn verify_es256(key: &VerifyingKey, jwt: &str) -> Result<Value, JwtError> {
    let p = parts(jwt)?;
    if p.header["alg"] != "ES256" {
        return Err(JwtError::Alg("ES256"));
    }
    let sig = Signature::from_slice(&p.signature).map_err(|_| JwtError::SignatureEncoding)?;
    key.verify(p.signing_input.as_bytes(), &sig)
        .map_err(|_| JwtError::BadSignature)?;
    Ok(p.claims)
}

/// Verifies an RS256 JWT against a DER `RSAPublicKey` and returns its claims.
pub fn verify_rs256(public_key_der: &[u8], jwt: &str) -> Result<Value, JwtError> {
    let p = parts(jwt)?;
    if p.header["alg"] != "RS256" {
        return Err(JwtError::Alg("RS256"));
    }
    ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, public_key_der)
        .verify(p.signing_input.as_bytes(), &p.signature)
        .map_err(|_| JwtError::BadSignature)?;
    Ok(p.claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn es256_round_trip_and_tamper() {
        let key = SigningKey::from(random_secret());
        let jwt = sign_es256(&key, Some("ABC123"), &serde_json::json!({"iss": "TEAM", "iat": 1}));
        let claims = verify_es256(key.verifying_key(), &jwt).unwrap();
        assert_eq!(claims["iss"], "TEAM");
        assert_eq!(parts(&jwt).unwrap().header["kid"], "ABC123");
        let tampered = jwt.replacen('.', ".e30", 1);
        assert!(verify_es256(key.verifying_key(), &tampered).is_err());
        let other = SigningKey::from(random_secret());
        assert!(verify_es256(other.verifying_key(), &jwt).is_err());
        assert!(parts("a.b").is_err());
    }
}
