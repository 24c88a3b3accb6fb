//! Device bearer credentials.
//!
//! A credential is `rc1.` followed by base64url of a 16-byte lookup id and a 32-byte
//! secret. The gateway stores the lookup id (to find the device) and a salted BLAKE3
//! hash of the secret; it compares hashes in constant time (`blake3::Hash`'s `==`).
//! A slow password hash is unnecessary: the secret is 256 random bits, not a password.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

const PREFIX: &str = "rc1.";
const HASH_CONTEXT: &str = "rcs-relay 2026-11 device credential v1";

/// A device credential as the device holds it. `Debug` prints nothing secret.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceCredential {
    lookup: [u8; 16],
    secret: [u8; 32],
}

/// Why a presented credential could not even be looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed credential")]
pub struct MalformedCredential;

impl DeviceCredential {
    /// Builds a credential from 48 random bytes supplied by the caller (core has no RNG).
    pub fn from_random(random: [u8; 48]) -> Self {
        let mut lookup = [0; 16];
        let mut secret = [0; 32];
        lookup.copy_from_slice(&random[..16]);
        secret.copy_from_slice(&random[16..]);
        Self { lookup, secret }
    }

    pub fn parse(s: &str) -> Result<Self, MalformedCredential> {
        let body = s.strip_prefix(PREFIX).ok_or(MalformedCredential)?;
        if body.len() != 64 {
            return Err(MalformedCredential);
        }
        let raw = URL_SAFE_NO_PAD.decode(body).map_err(|_| MalformedCredential)?;
        let random: [u8; 48] = raw.try_into().map_err(|_| MalformedCredential)?;
        Ok(Self::from_random(random))
    }

    /// The public half used as a database key.
    pub fn lookup(&self) -> [u8; 16] {
        self.lookup
    }

    /// The string handed to the device once.
    pub fn encode(&self) -> String {
        let mut raw = [0u8; 48];
        raw[..16].copy_from_slice(&self.lookup);
        raw[16..].copy_from_slice(&self.secret);
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(raw))
    }

    /// The salted hash stored at rest.
    pub fn hash(&self, salt: [u8; 16]) -> CredentialHash {
        CredentialHash {
            salt,
            hash: digest(salt, &self.secret),
        }
    }

    /// Constant-time check against a stored hash.
    pub fn verify(&self, stored: &CredentialHash) -> bool {
        blake3::Hash::from(stored.hash) == blake3::Hash::from(digest(stored.salt, &self.secret))
    }
}

impl fmt::Debug for DeviceCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeviceCredential(<secret>)")
    }
}

/// What is stored for a credential: salt and salted hash.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CredentialHash {
    pub salt: [u8; 16],
    pub hash: [u8; 32],
}

fn digest(salt: [u8; 16], secret: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(HASH_CONTEXT);
    h.update(&salt);
    h.update(secret);
    *h.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_verify() {
        let mut random = [0u8; 48];
        random.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
        let c = DeviceCredential::from_random(random);
        let s = c.encode();
        assert!(s.starts_with("rc1."));
        let parsed = DeviceCredential::parse(&s).unwrap();
        assert_eq!(parsed, c);
        let stored = c.hash([9; 16]);
        assert!(parsed.verify(&stored));
        let mut other = random;
        other[47] ^= 1;
        assert!(!DeviceCredential::from_random(other).verify(&stored));
        assert_ne!(c.hash([8; 16]).hash, stored.hash, "salt changes the hash");
    }

    #[test]
    fn rejects_malformed() {
        for bad in ["", "rc1.", "rc2.AAAA", "rc1.!!!!", &format!("rc1.{}", "A".repeat(65))] {
            assert_eq!(DeviceCredential::parse(bad), Err(MalformedCredential), "{bad}");
        }
    }
}
