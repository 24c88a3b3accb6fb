//! Outbox records: the remote part of a send (recipient addresses, message, urgency) sealed
//! with AES-256-GCM under the gateway's outbox key, so no phone number is ever at rest in the
//! clear (the peer needs the addresses; we must keep them until it has them).

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom as _, SystemRandom};

use storage::{DeviceId, Rid};

use crate::error::SetupError;

/// What a peer receives for one envelope, and who to tell if it cannot be delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemotePart {
    /// `tel:` addresses, normalised.
    pub recipients: Vec<String>,
    pub message: bytes::Bytes,
    pub urgent: bool,
    /// The sending device (records written before delivery reports have none).
    pub origin: Option<Origin>,
}

/// The device a send came from, and where this part's recipients were in its list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub rid: Rid,
    pub device: DeviceId,
    /// Positions of [`RemotePart::recipients`] in the send's recipient list.
    pub indexes: Vec<u16>,
}

/// First plaintext byte: bit 0 urgent, bit 1 an [`Origin`] follows.
const URGENT: u8 = 1;
const HAS_ORIGIN: u8 = 2;

/// Records sealed before key versions: `{nonce}{ciphertext}` under version 0.
const LEGACY_AAD: &[u8] = b"rcs-relay outbox v1";
/// Versioned records: `{VERSIONED}{version:1}{nonce}{ciphertext}`, the version bound as AAD.
const VERSIONED: u8 = 0xa5;
const AAD: &[u8] = b"rcs-relay outbox v2";

/// The key ring's base name in the key directory (`outbox.key`, `outbox-<v>.key`).
pub const KEY_RING: &str = "outbox";

/// Seals and opens outbox records: seals under the current version of the outbox key, opens
/// under any version not retired.
pub struct Sealer {
    current: u8,
    keys: Vec<(u8, LessSafeKey)>,
    rng: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealer(current version {})", self.current)
    }
}

fn aead_key(key: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("32 bytes is an AES-256 key"))
}

impl Sealer {
    /// One key, version 0.
    pub fn new(key: &[u8; 32]) -> Self {
        Self {
            current: 0,
            keys: vec![(0, aead_key(key))],
            rng: SystemRandom::new(),
        }
    }

    /// The versions of a key ring.
    pub fn from_ring(ring: &relay_keys::ring::Ring) -> Self {
        Self {
            current: ring.current,
            keys: ring.keys.iter().map(|(v, k)| (*v, aead_key(k))).collect(),
            rng: SystemRandom::new(),
        }
    }

    /// The outbox key ring in `dir`, held by `provider` (created on first use).
    pub fn open_or_create(provider: &relay_keys::Provider, dir: &std::path::Path) -> Result<Self, SetupError> {
        Ok(Self::from_ring(&provider.ring(dir, KEY_RING)?))
    }

    /// The version new records are sealed under.
    pub fn current(&self) -> u8 {
        self.current
    }

    fn key(&self, version: u8) -> Option<&LessSafeKey> {
        self.keys.iter().find(|(v, _)| *v == version).map(|(_, k)| k)
    }

    /// The key version a sealed record was sealed under.
    pub fn version_of(&self, sealed: &[u8]) -> u8 {
        // A legacy record may start with the marker by chance: only if the versioned reading
        // opens is it versioned.
        match sealed {
            [VERSIONED, v, rest @ ..]
                if rest.len() >= NONCE_LEN + AES_256_GCM.tag_len() && self.open_versioned(*v, rest).is_some() =>
            {
                *v
            }
            _ => 0,
        }
    }

    fn open_versioned(&self, version: u8, rest: &[u8]) -> Option<Vec<u8>> {
        let key = self.key(version)?;
        let nonce = Nonce::try_assume_unique_for_key(&rest[..NONCE_LEN]).ok()?;
        let mut buf = rest[NONCE_LEN..].to_vec();
        let aad = [AAD, &[version]].concat();
        let n = key.open_in_place(nonce, Aad::from(&aad), &mut buf).ok()?.len();
        buf.truncate(n);
        Some(buf)
    }

    fn open_legacy(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        let key = self.key(0)?;
        let nonce = Nonce::try_assume_unique_for_key(&sealed[..NONCE_LEN]).ok()?;
        let mut buf = sealed[NONCE_LEN..].to_vec();
        let n = key.open_in_place(nonce, Aad::from(LEGACY_AAD), &mut buf).ok()?.len();
        buf.truncate(n);
        Some(buf)
    }

    pub fn seal(&self, part: &RemotePart) -> Vec<u8> {
        let mut plain = Vec::with_capacity(3 + part.message.len() + part.recipients.len() * 20 + 40);
        plain.push((u8::from(part.urgent) * URGENT) | (u8::from(part.origin.is_some()) * HAS_ORIGIN));
        plain.extend_from_slice(&(part.recipients.len() as u16).to_be_bytes());
        for r in &part.recipients {
            let r = &r.as_bytes()[..r.len().min(255)];
            plain.push(r.len() as u8);
            plain.extend_from_slice(r);
        }
        if let Some(o) = &part.origin {
            plain.extend_from_slice(&o.rid.0);
            plain.extend_from_slice(&o.device.0.to_be_bytes());
            // One index per recipient, in the same order.
            for i in part
                .recipients
                .iter()
                .enumerate()
                .map(|(n, _)| o.indexes.get(n).copied().unwrap_or(0))
            {
                plain.extend_from_slice(&i.to_be_bytes());
            }
        }
        plain.extend_from_slice(&part.message);
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .expect("the system random source is available");
        let aad = [AAD, &[self.current]].concat();
        self.key(self.current)
            .expect("the current version is loaded")
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&aad), &mut plain)
            .expect("sealing a bounded buffer cannot fail");
        let mut out = Vec::with_capacity(2 + NONCE_LEN + plain.len());
        out.extend_from_slice(&[VERSIONED, self.current]);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&plain);
        out
    }

    pub fn open(&self, sealed: &[u8]) -> Option<RemotePart> {
        if sealed.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return None;
        }
        let plain = match sealed {
            [VERSIONED, v, rest @ ..] if rest.len() >= NONCE_LEN + AES_256_GCM.tag_len() => {
                self.open_versioned(*v, rest).or_else(|| self.open_legacy(sealed))?
            }
            _ => self.open_legacy(sealed)?,
        };
        let head = *plain.first()?;
        let n = usize::from(u16::from_be_bytes(plain.get(1..3)?.try_into().ok()?));
        let mut at = 3;
        let mut recipients = Vec::with_capacity(n);
        for _ in 0..n {
            let len = usize::from(*plain.get(at)?);
            recipients.push(String::from_utf8(plain.get(at + 1..at + 1 + len)?.to_vec()).ok()?);
            at += 1 + len;
        }
        let origin = if head & HAS_ORIGIN == 0 {
            None
        } else {
            let rid = Rid(plain.get(at..at + 32)?.try_into().ok()?);
            let device = DeviceId(u32::from_be_bytes(plain.get(at + 32..at + 36)?.try_into().ok()?));
            at += 36;
            let indexes = plain
                .get(at..at + 2 * n)?
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            at += 2 * n;
            Some(Origin { rid, device, indexes })
        };
        Some(RemotePart {
            recipients,
            message: bytes::Bytes::copy_from_slice(plain.get(at..)?),
            urgent: head & URGENT != 0,
            origin,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let s = Sealer::new(&[3; 32]);
        let part = RemotePart {
            recipients: vec!["tel:+447700900001".into(), "tel:+447700900002".into()],
            message: bytes::Bytes::from_static(b"mls"),
            urgent: true,
            origin: Some(Origin {
                rid: Rid([7; 32]),
                device: DeviceId(3),
                indexes: vec![4, 0],
            }),
        };
        let sealed = s.seal(&part);
        assert!(!sealed.windows(5).any(|w| w == b"44770"), "no number in the clear");
        assert_eq!(s.open(&sealed), Some(part.clone()));
        let mut bad = sealed.clone();
        bad[20] ^= 1;
        assert_eq!(s.open(&bad), None);
        assert_eq!(Sealer::new(&[4; 32]).open(&sealed), None);
        // Without an origin the layout is the one records had before delivery reports.
        let bare = RemotePart {
            origin: None,
            urgent: false,
            ..part
        };
        assert_eq!(s.open(&s.seal(&bare)), Some(bare));
    }

    /// A rotated ring seals under the new version and still opens the old one's records
    /// (versioned and legacy); once the old version is gone, they no longer open.
    #[test]
    fn versions_open_until_retired() {
        let legacy = {
            // A record from before key versions: {nonce}{ciphertext} under LEGACY_AAD.
            let key = aead_key(&[1; 32]);
            let mut plain = vec![0u8, 0, 0];
            plain.extend_from_slice(b"old");
            key.seal_in_place_append_tag(
                Nonce::assume_unique_for_key([9; NONCE_LEN]),
                Aad::from(LEGACY_AAD),
                &mut plain,
            )
            .unwrap();
            [[9; NONCE_LEN].as_slice(), &plain].concat()
        };
        let ring = |current: u8, keys: &[(u8, u8)]| relay_keys::ring::Ring {
            current,
            keys: keys
                .iter()
                .map(|&(v, b)| (v, zeroize::Zeroizing::new([b; 32])))
                .collect(),
        };
        let v0 = Sealer::from_ring(&ring(0, &[(0, 1)]));
        let part = RemotePart {
            recipients: vec!["tel:+447700900001".into()],
            message: bytes::Bytes::from_static(b"mls"),
            urgent: false,
            origin: None,
        };
        let sealed0 = v0.seal(&part);
        assert_eq!(v0.version_of(&sealed0), 0);
        assert!(v0.open(&legacy).is_some());
        let v1 = Sealer::from_ring(&ring(1, &[(0, 1), (1, 2)]));
        let sealed1 = v1.seal(&part);
        assert_eq!(
            (v1.version_of(&sealed1), v1.version_of(&sealed0), v1.version_of(&legacy)),
            (1, 0, 0)
        );
        assert_eq!(v1.open(&sealed0), Some(part.clone()));
        assert_eq!(v1.open(&sealed1), Some(part.clone()));
        assert_eq!(
            v1.open(&legacy).map(|p| p.message),
            Some(bytes::Bytes::from_static(b"old"))
        );
        assert_eq!(v0.open(&sealed1), None, "the old ring does not know version 1");
        let retired = Sealer::from_ring(&ring(1, &[(1, 2)]));
        assert_eq!(retired.open(&sealed0), None);
        assert_eq!(retired.open(&legacy), None);
        assert_eq!(retired.open(&sealed1), Some(part));
    }
}
