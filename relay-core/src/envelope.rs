//! Parsing of uploaded MLS messages.
//!
//! [`Envelope::parse`] is the only constructor of an [`Envelope`]: it checks the size
//! before touching the bytes, then parses them as one RFC 9420 `MLSMessage` with
//! `tls_deserialize_exact_bytes` (trailing bytes are an error). The bytes are kept
//! verbatim; the only fields read are the ones MLS leaves in the clear.

use std::fmt;

use bytes::Bytes;
use openmls::prelude::tls_codec::DeserializeBytes;
use openmls::prelude::{ContentType, MlsMessageBodyIn, MlsMessageIn, WireFormat};

use crate::Limits;

/// Opaque MLS message bytes. `Debug` prints only the length, so ciphertext can never
/// end up in a log line by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Ciphertext(Bytes);

impl Ciphertext {
    /// Wraps bytes that are already known to be an MLS message (read back from storage).
    pub fn from_stored(bytes: Bytes) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Ciphertext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ciphertext({} bytes)", self.0.len())
    }
}

/// The cleartext header of a PublicMessage or PrivateMessage (RFC 9420 section 6).
#[derive(Clone, PartialEq, Eq)]
pub struct GroupHeader {
    pub group_id: Bytes,
    pub epoch: u64,
    pub content_type: MessageContentType,
}

impl fmt::Debug for GroupHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupHeader")
            .field("group_id_len", &self.group_id.len())
            .field("epoch", &self.epoch)
            .field("content_type", &self.content_type)
            .finish()
    }
}

/// MLS content types (RFC 9420 section 6).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MessageContentType {
    Application,
    Proposal,
    Commit,
}

/// MLS wire formats (RFC 9420 section 6).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MessageKind {
    PublicMessage,
    PrivateMessage,
    Welcome,
    GroupInfo,
    KeyPackage,
}

/// A size-checked, well-formed MLS message.
#[derive(Clone, Debug)]
pub struct Envelope {
    ciphertext: Ciphertext,
    kind: MessageKind,
    header: Option<GroupHeader>,
    welcome_refs: Vec<Vec<u8>>,
    group_info_group_id: Option<Bytes>,
}

/// Why an upload is not an acceptable MLS message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope is {len} bytes, limit is {max}")]
    TooLarge { len: usize, max: usize },
    #[error("envelope is empty")]
    Empty,
    #[error("not a well-formed MLSMessage: {0}")]
    Malformed(String),
}

impl Envelope {
    /// Checks the size, then parses `bytes` as exactly one `MLSMessage`.
    pub fn parse(bytes: Bytes, limits: &Limits) -> Result<Self, EnvelopeError> {
        if bytes.len() > limits.max_envelope_bytes {
            return Err(EnvelopeError::TooLarge {
                len: bytes.len(),
                max: limits.max_envelope_bytes,
            });
        }
        if bytes.is_empty() {
            return Err(EnvelopeError::Empty);
        }
        let message =
            MlsMessageIn::tls_deserialize_exact_bytes(&bytes).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        let kind = match message.wire_format() {
            WireFormat::PublicMessage => MessageKind::PublicMessage,
            WireFormat::PrivateMessage => MessageKind::PrivateMessage,
            WireFormat::Welcome => MessageKind::Welcome,
            WireFormat::GroupInfo => MessageKind::GroupInfo,
            WireFormat::KeyPackage => MessageKind::KeyPackage,
        };
        let mut welcome_refs = Vec::new();
        let mut group_info_group_id = None;
        let header = match message.extract() {
            MlsMessageBodyIn::GroupInfo(g) => {
                group_info_group_id = Some(Bytes::copy_from_slice(g.group_id().as_slice()));
                None
            }
            MlsMessageBodyIn::Welcome(w) => {
                welcome_refs = w.secrets().iter().map(|s| s.new_member().as_slice().to_vec()).collect();
                None
            }
            MlsMessageBodyIn::PublicMessage(m) => {
                Some(header(m.group_id().as_slice(), m.epoch().as_u64(), m.content_type()))
            }
            MlsMessageBodyIn::PrivateMessage(m) => {
                Some(header(m.group_id().as_slice(), m.epoch().as_u64(), m.content_type()))
            }
            _ => None,
        };
        Ok(Self {
            ciphertext: Ciphertext(bytes),
            kind,
            header,
            welcome_refs,
            group_info_group_id,
        })
    }

    pub fn kind(&self) -> MessageKind {
        self.kind
    }

    /// The cleartext group header, for PublicMessage and PrivateMessage only.
    pub fn header(&self) -> Option<&GroupHeader> {
        self.header.as_ref()
    }

    /// For a GroupInfo: the (unverified) group id it describes.
    pub fn group_info_group_id(&self) -> Option<&[u8]> {
        self.group_info_group_id.as_deref()
    }

    /// For a Welcome: the `KeyPackageRef` of every new member (RFC 9420 section 12.4.3.1).
    pub fn welcome_refs(&self) -> &[Vec<u8>] {
        &self.welcome_refs
    }

    pub fn ciphertext(&self) -> &Ciphertext {
        &self.ciphertext
    }

    pub fn into_ciphertext(self) -> Ciphertext {
        self.ciphertext
    }
}

fn header(group_id: &[u8], epoch: u64, content_type: ContentType) -> GroupHeader {
    GroupHeader {
        group_id: Bytes::copy_from_slice(group_id),
        epoch,
        content_type: match content_type {
            ContentType::Application => MessageContentType::Application,
            ContentType::Proposal => MessageContentType::Proposal,
            ContentType::Commit => MessageContentType::Commit,
        },
    }
}

/// Builds the TLS-encoded frame of a `PrivateMessage` (RFC 9420 section 6.3) around
/// arbitrary ciphertext. Used by tests, fuzz seeds and load generation that need many
/// distinct well-formed envelopes cheaply; real clients get theirs from an MLS library.
pub fn frame_private_message(group_id: &[u8], epoch: u64, ciphertext: &[u8]) -> Vec<u8> {
    frame_private(group_id, epoch, MessageContentType::Application, ciphertext)
}

/// [`frame_private_message`] with another content type (a commit, for ordering benchmarks).
pub fn frame_private(group_id: &[u8], epoch: u64, content_type: MessageContentType, ciphertext: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + group_id.len() + ciphertext.len());
    out.extend_from_slice(&1u16.to_be_bytes()); // version mls10
    out.extend_from_slice(&2u16.to_be_bytes()); // wire_format mls_private_message
    put_varbytes(&mut out, group_id);
    out.extend_from_slice(&epoch.to_be_bytes());
    out.push(match content_type {
        MessageContentType::Application => 1,
        MessageContentType::Proposal => 2,
        MessageContentType::Commit => 3,
    });
    put_varbytes(&mut out, &[]); // authenticated_data
    put_varbytes(&mut out, &[0u8; 16]); // encrypted_sender_data
    put_varbytes(&mut out, ciphertext);
    out
}

/// RFC 9000-style variable-length integer prefix used by MLS vectors (RFC 9420 section 2.1.2).
fn put_varbytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = bytes.len();
    if len < 0x40 {
        out.push(len as u8);
    } else if len < 0x4000 {
        out.extend_from_slice(&(0x4000 | len as u16).to_be_bytes());
    } else {
        out.extend_from_slice(&(0x8000_0000 | len as u32).to_be_bytes());
    }
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        Envelope::parse(Bytes::copy_from_slice(bytes), &Limits::default())
    }

    #[test]
    fn private_message_header_is_read() {
        let bytes = frame_private_message(b"group-1", 7, &[0xaa; 100]);
        let env = parse(&bytes).unwrap();
        assert_eq!(env.kind(), MessageKind::PrivateMessage);
        let h = env.header().unwrap();
        assert_eq!(&h.group_id[..], b"group-1");
        assert_eq!(h.epoch, 7);
        assert_eq!(h.content_type, MessageContentType::Application);
        assert_eq!(env.ciphertext().as_bytes().as_ref(), &bytes[..]);
    }

    #[test]
    fn rejects_trailing_truncated_garbage_and_empty() {
        let mut bytes = frame_private_message(b"g", 1, &[1; 70]);
        assert!(parse(&bytes[..bytes.len() - 1]).is_err());
        bytes.push(0);
        assert!(matches!(parse(&bytes), Err(EnvelopeError::Malformed(_))));
        assert!(matches!(parse(b"hello world"), Err(EnvelopeError::Malformed(_))));
        assert_eq!(parse(b"").unwrap_err(), EnvelopeError::Empty);
    }

    #[test]
    fn size_is_checked_before_parsing() {
        let limits = Limits {
            max_envelope_bytes: 10,
            ..Limits::default()
        };
        let err = Envelope::parse(Bytes::from(vec![0u8; 11]), &limits).unwrap_err();
        assert_eq!(err, EnvelopeError::TooLarge { len: 11, max: 10 });
    }

    #[test]
    fn debug_never_shows_bytes() {
        let env = parse(&frame_private_message(b"secret-group", 1, b"secret-bytes")).unwrap();
        let dbg = format!("{env:?}");
        assert!(!dbg.contains("secret"), "{dbg}");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn framed_messages_round_trip(gid in proptest::collection::vec(proptest::num::u8::ANY, 1..80),
                                      epoch: u64,
                                      ct in proptest::collection::vec(proptest::num::u8::ANY, 0..20_000)) {
            let bytes = frame_private_message(&gid, epoch, &ct);
            let env = parse(&bytes).unwrap();
            let h = env.header().unwrap();
            proptest::prop_assert_eq!(&h.group_id[..], &gid[..]);
            proptest::prop_assert_eq!(h.epoch, epoch);
        }
    }
}
