//! Web Push message encryption (RFC 8291, `aes128gcm` content coding of RFC 8188) and VAPID
//! (RFC 8292). The decryption side is here too: the local Web Push receiver in the tests
//! and any UnifiedPush distributor test harness use it to check what was really sent.

use aes_gcm::aead::{Aead as _, KeyInit as _, Payload};
use aes_gcm::{Aes128Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hkdf::Hkdf;
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use p256::{PublicKey, SecretKey};
use sha2::Sha256;

use crate::error::VapidError;

/// Record size written into the header (one record: pushes are small).
const RECORD_SIZE: u32 = 4096;
const HEADER_LEN: usize = 16 + 4 + 1 + 65;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WebPushError {
    #[error("subscription key is not a P-256 point")]
    BadPublicKey,
    #[error("authentication secret must be 16 bytes")]
    BadAuthSecret,
    #[error("payload too large for one record")]
    TooLarge,
    #[error("message does not decrypt")]
    Decrypt,
}
pub use crate::jwt::random_secret;

/// Uncompressed SEC1 encoding (65 bytes).
pub fn public_bytes(key: &PublicKey) -> Vec<u8> {
    key.to_encoded_point(false).as_bytes().to_vec()
}

/// Encrypts `plaintext` for a subscription with a fresh sender key and salt, padding the
/// plaintext to `pad_to` bytes so every push has the same length.
pub fn encrypt(ua_public: &[u8], auth: &[u8], plaintext: &[u8], pad_to: usize) -> Result<Vec<u8>, WebPushError> {
    let mut salt = [0u8; 16];
    rand::fill(&mut salt);
    encrypt_with(&random_secret(), &salt, ua_public, auth, plaintext, pad_to)
}

/// [`encrypt`] with the sender key and salt given (the RFC's test vector uses this).
pub fn encrypt_with(
    as_secret: &SecretKey,
    salt: &[u8; 16],
    ua_public: &[u8],
    auth: &[u8],
    plaintext: &[u8],
    pad_to: usize,
) -> Result<Vec<u8>, WebPushError> {
    let ua = PublicKey::from_sec1_bytes(ua_public).map_err(|_| WebPushError::BadPublicKey)?;
    let auth: &[u8; 16] = auth.try_into().map_err(|_| WebPushError::BadAuthSecret)?;
    let as_public = public_bytes(&as_secret.public_key());
    let shared = p256::ecdh::diffie_hellman(as_secret.to_nonzero_scalar(), ua.as_affine());
    let (cek, nonce) = derive(shared.raw_secret_bytes(), auth, &public_bytes(&ua), &as_public, salt);
    let padded_len = plaintext.len().max(pad_to);
    // Plaintext, the last-record delimiter 0x02, then zero padding (RFC 8188 section 2).
    let mut record = Vec::with_capacity(padded_len + 1);
    record.extend_from_slice(plaintext);
    record.push(2);
    record.resize(padded_len + 1, 0);
    if record.len() + 16 > RECORD_SIZE as usize {
        return Err(WebPushError::TooLarge);
    }
    let cipher = Aes128Gcm::new(&cek.into());
    let ct = cipher
        .encrypt(&Nonce::from(nonce), Payload { msg: &record, aad: b"" })
        .map_err(|_| WebPushError::TooLarge)?;
    let mut out = Vec::with_capacity(HEADER_LEN + ct.len());
    out.extend_from_slice(salt);
    out.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    out.push(65);
    out.extend_from_slice(&as_public);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// The user agent's side: decrypts an `aes128gcm` body with the subscription's private key.
/// Returns the plaintext without its padding.
pub fn decrypt(ua_secret: &SecretKey, auth: &[u8], body: &[u8]) -> Result<Vec<u8>, WebPushError> {
    let auth: &[u8; 16] = auth.try_into().map_err(|_| WebPushError::BadAuthSecret)?;
    if body.len() < HEADER_LEN + 17 || body[20] != 65 {
        return Err(WebPushError::Decrypt);
    }
    let salt: &[u8; 16] = body[..16].try_into().map_err(|_| WebPushError::Decrypt)?;
    let as_public = &body[21..86];
    let peer = PublicKey::from_sec1_bytes(as_public).map_err(|_| WebPushError::BadPublicKey)?;
    let shared = p256::ecdh::diffie_hellman(ua_secret.to_nonzero_scalar(), peer.as_affine());
    let ua_public = public_bytes(&ua_secret.public_key());
    let (cek, nonce) = derive(shared.raw_secret_bytes(), auth, &ua_public, as_public, salt);
    let cipher = Aes128Gcm::new(&cek.into());
    let mut record = cipher
        .decrypt(
            &Nonce::from(nonce),
            Payload {
                msg: &body[86..],
                aad: b"",
            },
        )
        .map_err(|_| WebPushError::Decrypt)?;
    while record.last() == Some(&0) {
        record.pop();
    }
    match record.pop() {
        Some(2) => Ok(record),
        _ => Err(WebPushError::Decrypt),
    }
}

/// RFC 8291 section 3.4 then RFC 8188 section 2.2: content-encryption key and nonce.
fn derive(ecdh: &[u8], auth: &[u8; 16], ua_public: &[u8], as_public: &[u8], salt: &[u8; 16]) -> ([u8; 16], [u8; 12]) {
    let mut key_info = Vec::with_capacity(14 + 130);
    key_info.extend_from_slice(b"WebPush: info\0");
    key_info.extend_from_slice(ua_public);
    key_info.extend_from_slice(as_public);
    let mut ikm = [0u8; 32];
    Hkdf::<Sha256>::new(Some(auth), ecdh)
        .expand(&key_info, &mut ikm)
        .expect("32 bytes is a valid HKDF-SHA-256 output length");
    let prk = Hkdf::<Sha256>::new(Some(salt), &ikm);
    let mut cek = [0u8; 16];
    let mut nonce = [0u8; 12];
    prk.expand(b"Content-Encoding: aes128gcm\0", &mut cek)
        .expect("16 bytes is a valid HKDF-SHA-256 output length");
    prk.expand(b"Content-Encoding: nonce\0", &mut nonce)
        .expect("12 bytes is a valid HKDF-SHA-256 output length");
    (cek, nonce)
}

/// The `Authorization` header of RFC 8292: `vapid t=<JWT>, k=<public key>`.
pub fn vapid_authorization(
    key: &p256::ecdsa::SigningKey,
    endpoint_origin: &str,
    subject: &str,
    expires_unix: u64,
) -> String {
    let claims = serde_json::json!({ "aud": endpoint_origin, "exp": expires_unix, "sub": subject });
    let jwt = crate::jwt::sign_es256(key, None, &claims);
    let public = key.verifying_key().to_encoded_point(false);
    format!("vapid t={jwt}, k={}", URL_SAFE_NO_PAD.encode(public.as_bytes()))
}

/// Checks a VAPID `Authorization` header (the receiving push service's side): the JWT is
/// signed by the key in `k`, names `audience`, and has not expired at `now_unix`.
/// Returns the public key (what a push service pins a subscription to).
pub fn verify_vapid(header: &str, audience: &str, now_unix: u64) -> Result<Vec<u8>, VapidError> {
    let rest = header.strip_prefix("vapid ").ok_or(VapidError::Scheme)?;
    let mut t = None;
    let mut k = None;
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("t=") {
            t = Some(v);
        } else if let Some(v) = part.strip_prefix("k=") {
            k = Some(v);
        }
    }
    let (t, k) = (t.ok_or(VapidError::Missing("t"))?, k.ok_or(VapidError::Missing("k"))?);
    let key_bytes = URL_SAFE_NO_PAD.decode(k).map_err(|_| VapidError::Key)?;
    let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&key_bytes).map_err(|_| VapidError::Key)?;
    let claims = crate::jwt::verify_es256(&key, t)?;
    if claims["aud"] != audience {
        return Err(VapidError::Audience);
    }
    let exp = claims["exp"].as_u64().ok_or(VapidError::Expiry)?;
    if exp <= now_unix || exp > now_unix + 24 * 3600 {
        return Err(VapidError::Expiry);
    }
    if !claims["sub"]
        .as_str()
        .is_some_and(|s| s.starts_with("mailto:") || s.starts_with("https:"))
    {
        return Err(VapidError::Subject);
    }
    Ok(key_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(s).unwrap()
    }

    // RFC 8291 Appendix A.
    const PLAINTEXT: &[u8] = b"When I grow up, I want to be a watermelon";
    const AS_PRIVATE: &str = "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw";
    const UA_PRIVATE: &str = "q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94";
    const UA_PUBLIC: &str = "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
    const AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";
    const SALT: &str = "DGv6ra1nlYgDCS1FRnbzlw";
    const BODY: &str = "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN";

    #[test]
    fn rfc8291_appendix_a() {
        let as_secret = SecretKey::from_slice(&b(AS_PRIVATE)).unwrap();
        let salt: [u8; 16] = b(SALT).try_into().unwrap();
        let body = encrypt_with(&as_secret, &salt, &b(UA_PUBLIC), &b(AUTH), PLAINTEXT, 0).unwrap();
        assert_eq!(URL_SAFE_NO_PAD.encode(&body), BODY);
        let ua = SecretKey::from_slice(&b(UA_PRIVATE)).unwrap();
        assert_eq!(decrypt(&ua, &b(AUTH), &b(BODY)).unwrap(), PLAINTEXT);
    }

    #[test]
    fn padded_round_trip_has_constant_length_and_wrong_keys_fail() {
        let ua = random_secret();
        let ua_pub = public_bytes(&ua.public_key());
        let auth = [5u8; 16];
        let short = encrypt(&ua_pub, &auth, b"x", 64).unwrap();
        let long = encrypt(&ua_pub, &auth, &[b'y'; 60], 64).unwrap();
        assert_eq!(short.len(), long.len());
        assert_eq!(decrypt(&ua, &auth, &short).unwrap(), b"x");
        assert_eq!(decrypt(&random_secret(), &auth, &short), Err(WebPushError::Decrypt));
        assert_eq!(decrypt(&ua, &[6u8; 16], &short), Err(WebPushError::Decrypt));
        assert_eq!(encrypt(&[4; 65], &auth, b"x", 0), Err(WebPushError::BadPublicKey));
        assert_eq!(encrypt(&ua_pub, &[0; 15], b"x", 0), Err(WebPushError::BadAuthSecret));
    }

    #[test]
    fn vapid_header_verifies() {
        let key = p256::ecdsa::SigningKey::from(random_secret());
        let h = vapid_authorization(&key, "https://push.example", "mailto:ops@example.net", 2_000);
        assert!(verify_vapid(&h, "https://push.example", 1_000).is_ok());
        assert!(verify_vapid(&h, "https://other.example", 1_000).is_err());
        assert!(verify_vapid(&h, "https://push.example", 2_000).is_err(), "expired");
        let other = p256::ecdsa::SigningKey::from(random_secret());
        let forged = h.replace(
            &h[h.find("k=").unwrap()..],
            &format!(
                "k={}",
                URL_SAFE_NO_PAD.encode(other.verifying_key().to_encoded_point(false).as_bytes())
            ),
        );
        assert!(verify_vapid(&forged, "https://push.example", 1_000).is_err());
    }
}
