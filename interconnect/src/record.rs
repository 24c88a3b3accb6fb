//! Outbox records: the remote part of a send (recipient addresses, message, urgency) sealed
//! with AES-256-GCM under the gateway's outbox key, so no phone number is ever at rest in the
//! clear (the peer needs the addresses; we must keep them until it has them).

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom as _, SystemRandom};

use crate::error::SetupError;

/// What a peer receives for one envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemotePart {
    /// `tel:` addresses, normalised.
    pub recipients: Vec<String>,
    pub message: bytes::Bytes,
    pub urgent: bool,
}

const AAD: &[u8] = b"rcs-relay outbox v1";

/// Seals and opens outbox records.
pub struct Sealer {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    pub fn new(key: &[u8; 32]) -> Self {
        Self {
            key: LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("32 bytes is an AES-256 key")),
            rng: SystemRandom::new(),
        }
    }

    /// `keys/outbox.key` (created 0600 on first use).
    pub fn open_or_create(dir: &std::path::Path) -> Result<Self, SetupError> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = dir.join("outbox.key");
        let io = |source| SetupError::OutboxKey {
            path: path.clone(),
            source,
        };
        if !path.exists() {
            let mut key = [0u8; 32];
            SystemRandom::new()
                .fill(&mut key)
                .map_err(|_| io(std::io::Error::other("no randomness")))?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(io)?;
            f.write_all(&key).and_then(|()| f.sync_all()).map_err(io)?;
            // The name must survive a power loss too: queued records are sealed under it.
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        let bytes = std::fs::read(&path).map_err(io)?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| SetupError::OutboxKeyLength { path: path.clone() })?;
        Ok(Self::new(&key))
    }

    pub fn seal(&self, part: &RemotePart) -> Vec<u8> {
        let mut plain = Vec::with_capacity(3 + part.message.len() + part.recipients.len() * 20);
        plain.push(u8::from(part.urgent));
        plain.extend_from_slice(&(part.recipients.len() as u16).to_be_bytes());
        for r in &part.recipients {
            let r = &r.as_bytes()[..r.len().min(255)];
            plain.push(r.len() as u8);
            plain.extend_from_slice(r);
        }
        plain.extend_from_slice(&part.message);
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .expect("the system random source is available");
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(AAD), &mut plain)
            .expect("sealing a bounded buffer cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&plain);
        out
    }

    pub fn open(&self, sealed: &[u8]) -> Option<RemotePart> {
        if sealed.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return None;
        }
        let nonce = Nonce::try_assume_unique_for_key(&sealed[..NONCE_LEN]).ok()?;
        let mut buf = sealed[NONCE_LEN..].to_vec();
        let plain = self.key.open_in_place(nonce, Aad::from(AAD), &mut buf).ok()?;
        let urgent = *plain.first()? == 1;
        let n = usize::from(u16::from_be_bytes(plain.get(1..3)?.try_into().ok()?));
        let mut at = 3;
        let mut recipients = Vec::with_capacity(n);
        for _ in 0..n {
            let len = usize::from(*plain.get(at)?);
            recipients.push(String::from_utf8(plain.get(at + 1..at + 1 + len)?.to_vec()).ok()?);
            at += 1 + len;
        }
        Some(RemotePart {
            recipients,
            message: bytes::Bytes::copy_from_slice(plain.get(at..)?),
            urgent,
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
        };
        let sealed = s.seal(&part);
        assert!(!sealed.windows(5).any(|w| w == b"44770"), "no number in the clear");
        assert_eq!(s.open(&sealed), Some(part));
        let mut bad = sealed.clone();
        bad[20] ^= 1;
        assert_eq!(s.open(&bad), None);
        assert_eq!(Sealer::new(&[4; 32]).open(&sealed), None);
    }
}
