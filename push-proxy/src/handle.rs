//! Push handles: a device's platform token sealed (AES-256-GCM) under the push proxy's key.
//!
//! `ph1.` + base64url(`key_id` ‖ nonce(12) ‖ AEAD(target)). The key id lets keys rotate: new
//! handles are sealed under the current key, old handles open while their key is still
//! configured. The gateway stores handles and cannot read them; the push proxy can read them
//! but is never told whose device a handle belongs to.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::SetupError;

const PREFIX: &str = "ph1.";
const AAD: &[u8] = b"rcs-relay push handle v1";
/// Longest handle accepted (base64 characters after the prefix): bounds parsing work.
pub const MAX_HANDLE_LEN: usize = 2048;
/// Longest token or endpoint accepted at registration.
pub const MAX_FIELD_LEN: usize = 1024;

/// Where a push goes: what a handle seals.
#[derive(Clone, PartialEq, Eq)]
pub enum PushTarget {
    /// An APNs device token (hex, as the device reports it).
    Apns { token: String },
    /// An FCM registration token.
    Fcm { token: String },
    /// A Web Push (RFC 8030) / UnifiedPush subscription.
    WebPush {
        endpoint: String,
        /// The user agent's P-256 public key (65 bytes, uncompressed).
        p256dh: Vec<u8>,
        /// The 16-byte authentication secret.
        auth: Vec<u8>,
    },
}

impl PushTarget {
    pub const fn provider(&self) -> &'static str {
        match self {
            Self::Apns { .. } => "apns",
            Self::Fcm { .. } => "fcm",
            Self::WebPush { .. } => "webpush",
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut field = |b: &[u8]| {
            out.extend_from_slice(&(b.len() as u16).to_be_bytes());
            out.extend_from_slice(b);
        };
        match self {
            Self::Apns { token } => {
                field(b"a");
                field(token.as_bytes());
            }
            Self::Fcm { token } => {
                field(b"f");
                field(token.as_bytes());
            }
            Self::WebPush { endpoint, p256dh, auth } => {
                field(b"w");
                field(endpoint.as_bytes());
                field(p256dh);
                field(auth);
            }
        }
        out
    }

    fn decode(mut b: &[u8]) -> Option<Self> {
        let mut field = || -> Option<Vec<u8>> {
            let len = usize::from(u16::from_be_bytes(b.get(..2)?.try_into().ok()?));
            let v = b.get(2..2 + len)?.to_vec();
            b = &b[2 + len..];
            Some(v)
        };
        let kind = field()?;
        let t = match kind.as_slice() {
            b"a" => Self::Apns {
                token: String::from_utf8(field()?).ok()?,
            },
            b"f" => Self::Fcm {
                token: String::from_utf8(field()?).ok()?,
            },
            b"w" => Self::WebPush {
                endpoint: String::from_utf8(field()?).ok()?,
                p256dh: field()?,
                auth: field()?,
            },
            _ => return None,
        };
        b.is_empty().then_some(t)
    }
}

// Tokens are secrets: never printed.
impl std::fmt::Debug for PushTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PushTarget::{}(..)", self.provider())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandleError {
    #[error("not a push handle")]
    Malformed,
    #[error("push handle sealed under an unknown or retired key")]
    UnknownKey,
    #[error("push handle does not authenticate")]
    Forged,
}

/// The sealing keys: one current key (new handles) plus retired keys still accepted.
pub struct HandleKeys {
    current: u8,
    keys: Vec<(u8, LessSafeKey)>,
    rng: SystemRandom,
}

impl std::fmt::Debug for HandleKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandleKeys")
            .field("current", &self.current)
            .field("key_ids", &self.keys.iter().map(|(id, _)| *id).collect::<Vec<_>>())
            .finish()
    }
}

impl HandleKeys {
    /// `keys`: (key id, 32 secret bytes); `current` must be among them.
    pub fn new(current: u8, keys: &[(u8, [u8; 32])]) -> Result<Self, SetupError> {
        if !keys.iter().any(|(id, _)| *id == current) {
            return Err(SetupError::NoCurrentKey(current));
        }
        let keys = keys
            .iter()
            .map(|(id, k)| {
                let key = UnboundKey::new(&AES_256_GCM, k).expect("32 bytes is an AES-256 key");
                (*id, LessSafeKey::new(key))
            })
            .collect();
        Ok(Self {
            current,
            keys,
            rng: SystemRandom::new(),
        })
    }

    pub fn seal(&self, target: &PushTarget) -> String {
        let (id, key) = self
            .keys
            .iter()
            .find(|(id, _)| *id == self.current)
            .expect("HandleKeys::new checked that the current key is configured");
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .expect("the system random source is available on supported platforms");
        let mut buf = target.encode();
        key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(AAD), &mut buf)
            .expect("AES-GCM sealing of a short buffer cannot fail");
        let mut raw = Vec::with_capacity(1 + NONCE_LEN + buf.len());
        raw.push(*id);
        raw.extend_from_slice(&nonce);
        raw.extend_from_slice(&buf);
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(raw))
    }

    pub fn open(&self, handle: &str) -> Result<PushTarget, HandleError> {
        let body = handle.strip_prefix(PREFIX).ok_or(HandleError::Malformed)?;
        if body.len() > MAX_HANDLE_LEN {
            return Err(HandleError::Malformed);
        }
        let mut raw = URL_SAFE_NO_PAD.decode(body).map_err(|_| HandleError::Malformed)?;
        if raw.len() < 1 + NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(HandleError::Malformed);
        }
        let (_, key) = self
            .keys
            .iter()
            .find(|(id, _)| *id == raw[0])
            .ok_or(HandleError::UnknownKey)?;
        let nonce = Nonce::try_assume_unique_for_key(&raw[1..=NONCE_LEN]).map_err(|_| HandleError::Malformed)?;
        let plain = key
            .open_in_place(nonce, Aad::from(AAD), &mut raw[1 + NONCE_LEN..])
            .map_err(|_| HandleError::Forged)?;
        PushTarget::decode(plain).ok_or(HandleError::Forged)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn keys(current: u8) -> HandleKeys {
        HandleKeys::new(current, &[(1, [1; 32]), (2, [2; 32])]).unwrap()
    }

    fn web() -> PushTarget {
        PushTarget::WebPush {
            endpoint: "https://push.example/abc".into(),
            p256dh: vec![4; 65],
            auth: vec![9; 16],
        }
    }

    #[test]
    fn seal_open_rotate_and_refuse() {
        let k1 = keys(1);
        let h = k1.seal(&web());
        assert!(h.starts_with("ph1."));
        assert_eq!(k1.open(&h), Ok(web()));
        // Rotated: the new current key seals, the old key still opens.
        let k2 = keys(2);
        assert_eq!(k2.open(&h), Ok(web()));
        let key_id = |h: &str| URL_SAFE_NO_PAD.decode(&h[4..]).unwrap()[0];
        assert_eq!(
            (key_id(&h), key_id(&k2.seal(&web()))),
            (1, 2),
            "new handles use the current key"
        );
        // Retired key removed: refused.
        let only2 = HandleKeys::new(2, &[(2, [2; 32])]).unwrap();
        assert_eq!(only2.open(&h), Err(HandleError::UnknownKey));
        // A flipped bit anywhere past the key id is a forgery.
        let mut raw = URL_SAFE_NO_PAD.decode(&h[4..]).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        assert_eq!(
            k1.open(&format!("ph1.{}", URL_SAFE_NO_PAD.encode(&raw))),
            Err(HandleError::Forged)
        );
        assert_eq!(k1.open("nope"), Err(HandleError::Malformed));
        assert_eq!(k1.open("ph1.!!"), Err(HandleError::Malformed));
        assert!(HandleKeys::new(3, &[(1, [1; 32])]).is_err());
        // Two seals of one target differ (random nonce): handles are unlinkable.
        assert_ne!(k1.seal(&web()), k1.seal(&web()));
        assert_eq!(format!("{:?}", web()), "PushTarget::webpush(..)");
    }

    proptest! {
        #[test]
        fn any_target_round_trips(token in "[0-9a-f]{1,200}", fcm in any::<bool>()) {
            let k = keys(1);
            let t = if fcm { PushTarget::Fcm { token } } else { PushTarget::Apns { token } };
            prop_assert_eq!(k.open(&k.seal(&t)), Ok(t));
        }

        #[test]
        fn garbage_never_panics(s in "ph1\\.[A-Za-z0-9_-]{0,300}") {
            let _ = keys(1).open(&s);
        }
    }
}
