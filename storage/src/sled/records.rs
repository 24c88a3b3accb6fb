//! Value codecs of the sled backend. Every record starts with a version byte (or has a
//! fixed length), so a layout change is detected rather than misread.

use bytes::Bytes;
use relay_core::credential::CredentialHash;
use relay_core::interconnect::EntryState;

use super::layout::{be_u32, be_u64};
use crate::{AuditRecord, DeviceId, OutboxEntry, Rid, ServerId, StoreError};

const RECORD_VERSION: u8 = 1;
pub(super) const DEVICE_ACTIVE: u8 = 1;
/// Device records: version 2 dropped the per-device seq counter and queued-bytes fields.
const DEVICE_RECORD_VERSION: u8 = 2;

/// `version:1 status:1 created_day:4 salt:16 hash:32 lookup:16` (version 2; version 1 also
/// held a per-device seq counter and queued bytes, 16 bytes after `created_day`, now derived).
#[derive(Debug, Clone)]
pub(super) struct DeviceRecord {
    pub(super) status: u8,
    pub(super) created_day: u32,
    pub(super) credential: CredentialHash,
    pub(super) lookup: [u8; 16],
}

const DEVICE_RECORD_LEN: usize = 70;

impl DeviceRecord {
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(DEVICE_RECORD_LEN);
        v.push(DEVICE_RECORD_VERSION);
        v.push(self.status);
        v.extend_from_slice(&self.created_day.to_be_bytes());
        v.extend_from_slice(&self.credential.salt);
        v.extend_from_slice(&self.credential.hash);
        v.extend_from_slice(&self.lookup);
        v
    }

    pub(super) fn decode(v: &[u8]) -> Result<Self, StoreError> {
        // Version 1 records carry 16 more bytes (seq counter, queued bytes) after created_day.
        let skip = match (v.first(), v.len()) {
            (Some(&DEVICE_RECORD_VERSION), DEVICE_RECORD_LEN) => 0,
            (Some(1), 86) => 16,
            _ => return Err(StoreError::Corrupt("device record")),
        };
        let arr = |r: std::ops::Range<usize>| v[r.start + skip..r.end + skip].to_vec();
        Ok(Self {
            status: v[1],
            created_day: be_u32(&v[2..6])?,
            credential: CredentialHash {
                salt: arr(6..22).try_into().map_err(|_| StoreError::Corrupt("salt"))?,
                hash: arr(22..54).try_into().map_err(|_| StoreError::Corrupt("hash"))?,
            },
            lookup: arr(54..70).try_into().map_err(|_| StoreError::Corrupt("lookup"))?,
        })
    }
}

/// Layout version 1's per-device mailbox entry (read only by the migration):
/// `version:1 flags:1 server_id:16 received_at:8 expires_at:8 size:4 dropped:8`
#[derive(Debug, Clone)]
pub(super) struct LegacyEntry {
    pub(super) flags: u32,
    pub(super) server_id: ServerId,
    pub(super) received_at_ms: u64,
    pub(super) expires_at_ms: u64,
    pub(super) dropped: u64,
}

impl LegacyEntry {
    pub(super) fn decode(v: &[u8]) -> Result<Self, StoreError> {
        if v.len() != 46 || v[0] != RECORD_VERSION {
            return Err(StoreError::Corrupt("legacy mailbox entry"));
        }
        Ok(Self {
            flags: u32::from(v[1]),
            server_id: ServerId(v[2..18].try_into().map_err(|_| StoreError::Corrupt("server id"))?),
            received_at_ms: be_u64(&v[18..26])?,
            expires_at_ms: be_u64(&v[26..34])?,
            dropped: be_u64(&v[38..46])?,
        })
    }
}

const BLOB_VERSION: u8 = 2;
const BLOB_HEADER: usize = 1 + 1 + 8 + 8 + 4;

/// A message and who it is for, written once per send:
/// `version:1 (2) flags:1 received_at:8 expires_at:8 n:4 (rid:32 dev:4)×n payload`.
/// Version 1 (`1 remaining:4 expires_at:8 payload`) is read by the migration only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BlobRecord {
    pub(super) flags: u32,
    pub(super) received_at_ms: u64,
    pub(super) expires_at_ms: u64,
    pub(super) recipients: Vec<(Rid, DeviceId)>,
    pub(super) payload: Bytes,
}

impl BlobRecord {
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut v);
        v
    }

    pub(super) fn encoded_len(&self) -> usize {
        BLOB_HEADER + self.recipients.len() * 36 + self.payload.len()
    }

    pub(super) fn encode_into(&self, v: &mut Vec<u8>) {
        v.push(BLOB_VERSION);
        v.push(self.flags as u8);
        v.extend_from_slice(&self.received_at_ms.to_be_bytes());
        v.extend_from_slice(&self.expires_at_ms.to_be_bytes());
        v.extend_from_slice(&(self.recipients.len() as u32).to_be_bytes());
        for (rid, dev) in &self.recipients {
            v.extend_from_slice(&rid.0);
            v.extend_from_slice(&dev.0.to_be_bytes());
        }
        v.extend_from_slice(&self.payload);
    }

    /// Everything but the payload (index rebuilds read only this).
    pub(super) fn header(raw: &[u8]) -> Result<(Self, usize), StoreError> {
        let corrupt = || StoreError::Corrupt("blob record");
        if raw.len() < BLOB_HEADER || raw[0] != BLOB_VERSION {
            return Err(corrupt());
        }
        let n = be_u32(&raw[18..22])? as usize;
        let end = BLOB_HEADER + n.checked_mul(36).ok_or_else(corrupt)?;
        let list = raw.get(BLOB_HEADER..end).ok_or_else(corrupt)?;
        let recipients = list
            .chunks_exact(36)
            .map(|c| {
                Ok((
                    Rid(c[..32].try_into().map_err(|_| corrupt())?),
                    DeviceId(be_u32(&c[32..36])?),
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok((
            Self {
                flags: u32::from(raw[1]),
                received_at_ms: be_u64(&raw[2..10])?,
                expires_at_ms: be_u64(&raw[10..18])?,
                recipients,
                payload: Bytes::new(),
            },
            end,
        ))
    }

    /// The whole record; the payload shares sled's buffer (no copy).
    pub(super) fn decode(raw: sled::IVec) -> Result<Self, StoreError> {
        let (mut r, end) = Self::header(&raw)?;
        r.payload = Bytes::from_owner(raw).slice(end..);
        Ok(r)
    }

    /// The bytes and expiry of a layout version 1 blob.
    pub(super) fn legacy(raw: &[u8]) -> Result<(u64, Bytes), StoreError> {
        if raw.len() < 13 || raw[0] != RECORD_VERSION {
            return Err(StoreError::Corrupt("legacy blob record"));
        }
        Ok((be_u64(&raw[5..13])?, Bytes::copy_from_slice(&raw[13..])))
    }
}

/// A gap record: `dropped:8 received_at:8 expires_at:8`.
pub(super) fn encode_gap(dropped: u64, received_at_ms: u64, expires_at_ms: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(24);
    v.extend_from_slice(&dropped.to_be_bytes());
    v.extend_from_slice(&received_at_ms.to_be_bytes());
    v.extend_from_slice(&expires_at_ms.to_be_bytes());
    v
}

/// (dropped, received_at, expires_at) of a gap record.
pub(super) fn decode_gap(v: &[u8]) -> Result<(u64, u64, u64), StoreError> {
    if v.len() != 24 {
        return Err(StoreError::Corrupt("gap record"));
    }
    Ok((be_u64(&v[..8])?, be_u64(&v[8..16])?, be_u64(&v[16..24])?))
}

/// An idempotency record: `server_id:16 digest:32 has_epoch:1 epoch:8`.
#[derive(Debug, Clone, Copy)]
pub(super) struct IdempotencyRecord {
    pub(super) server_id: ServerId,
    pub(super) digest: [u8; 32],
    pub(super) accepted_epoch: Option<u64>,
}

const IDEM_RECORD_LEN: usize = 57;

impl IdempotencyRecord {
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(IDEM_RECORD_LEN);
        v.extend_from_slice(&self.server_id.0);
        v.extend_from_slice(&self.digest);
        v.push(u8::from(self.accepted_epoch.is_some()));
        v.extend_from_slice(&self.accepted_epoch.unwrap_or(0).to_be_bytes());
        v
    }

    pub(super) fn decode(v: &[u8]) -> Result<Self, StoreError> {
        let corrupt = || StoreError::Corrupt("idempotency record");
        if v.len() != IDEM_RECORD_LEN {
            return Err(corrupt());
        }
        Ok(Self {
            server_id: ServerId(v[..16].try_into().map_err(|_| corrupt())?),
            digest: v[16..48].try_into().map_err(|_| corrupt())?,
            accepted_epoch: (v[48] == 1).then(|| be_u64(&v[49..57])).transpose()?,
        })
    }
}

/// An outbox value: `state:20 envelope_id:16 record`.
pub(super) fn encode_outbox(state: &EntryState, envelope_id: &ServerId, record: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(36 + record.len());
    v.extend_from_slice(&state.encode());
    v.extend_from_slice(&envelope_id.0);
    v.extend_from_slice(record);
    v
}

pub(super) fn decode_outbox(k: &[u8], v: &[u8]) -> Result<OutboxEntry, StoreError> {
    let corrupt = || StoreError::Corrupt("outbox entry");
    if k.len() != 26 || v.len() < 36 {
        return Err(corrupt());
    }
    Ok(OutboxEntry {
        seq: be_u64(&k[18..])?,
        state: EntryState::decode(&v[..20]).ok_or_else(corrupt)?,
        envelope_id: ServerId(v[20..36].try_into().map_err(|_| corrupt())?),
        record: Bytes::copy_from_slice(&v[36..]),
    })
}

/// blake3(previous hash ‖ seq ‖ at_ms ‖ kind ‖ 0 ‖ detail).
pub(super) fn audit_hash(prev: &[u8; 32], seq: u64, at_ms: u64, kind: &str, detail: &str) -> [u8; 32] {
    relay_core::auditlog::chain_hash(prev, seq, at_ms, kind, detail)
}

/// An audit value: `at:8 kind_len:1 kind detail hash:32`.
pub(super) fn encode_audit(r: &AuditRecord) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + 1 + r.kind.len() + r.detail.len() + 32);
    v.extend_from_slice(&r.at_ms.to_be_bytes());
    v.push(r.kind.len() as u8);
    v.extend_from_slice(r.kind.as_bytes());
    v.extend_from_slice(r.detail.as_bytes());
    v.extend_from_slice(&r.hash);
    v
}

pub(super) fn decode_audit(seq: u64, v: &[u8]) -> Result<AuditRecord, StoreError> {
    let corrupt = || StoreError::Corrupt("audit record");
    if v.len() < 8 + 1 + 32 {
        return Err(corrupt());
    }
    let at_ms = be_u64(&v[..8])?;
    let kind_len = usize::from(v[8]);
    let body = &v[9..v.len() - 32];
    if body.len() < kind_len {
        return Err(corrupt());
    }
    let kind = std::str::from_utf8(&body[..kind_len])
        .map_err(|_| corrupt())?
        .to_owned();
    let detail = std::str::from_utf8(&body[kind_len..])
        .map_err(|_| corrupt())?
        .to_owned();
    Ok(AuditRecord {
        seq,
        at_ms,
        kind,
        detail,
        hash: v[v.len() - 32..].try_into().map_err(|_| corrupt())?,
    })
}
