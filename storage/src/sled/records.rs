//! Value codecs of the sled backend. Every record starts with a version byte (or has a
//! fixed length), so a layout change is detected rather than misread.

use std::collections::HashMap;

use bytes::Bytes;
use relay_core::credential::CredentialHash;
use relay_core::interconnect::EntryState;

use super::layout::{BLOB, backend, be_u32, be_u64, prefixed};
use crate::{AuditRecord, OutboxEntry, ServerId, StoreError};

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

/// `version:1 flags:1 server_id:16 received_at:8 expires_at:8 size:4 dropped:8`
#[derive(Debug, Clone)]
pub(super) struct MailboxEntry {
    pub(super) flags: u32,
    pub(super) server_id: ServerId,
    pub(super) received_at_ms: u64,
    pub(super) expires_at_ms: u64,
    pub(super) size: u32,
    pub(super) dropped: u64,
}

const MAILBOX_ENTRY_LEN: usize = 46;

impl MailboxEntry {
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(MAILBOX_ENTRY_LEN);
        v.push(RECORD_VERSION);
        v.push(self.flags as u8);
        v.extend_from_slice(&self.server_id.0);
        v.extend_from_slice(&self.received_at_ms.to_be_bytes());
        v.extend_from_slice(&self.expires_at_ms.to_be_bytes());
        v.extend_from_slice(&self.size.to_be_bytes());
        v.extend_from_slice(&self.dropped.to_be_bytes());
        v
    }

    pub(super) fn decode(v: &[u8]) -> Result<Self, StoreError> {
        if v.len() != MAILBOX_ENTRY_LEN || v[0] != RECORD_VERSION {
            return Err(StoreError::Corrupt("mailbox entry"));
        }
        Ok(Self {
            flags: u32::from(v[1]),
            server_id: ServerId(v[2..18].try_into().map_err(|_| StoreError::Corrupt("server id"))?),
            received_at_ms: be_u64(&v[18..26])?,
            expires_at_ms: be_u64(&v[26..34])?,
            size: be_u32(&v[34..38])?,
            dropped: be_u64(&v[38..46])?,
        })
    }

    pub(super) fn is_gap(&self) -> bool {
        self.flags & crate::flags::GAP != 0
    }
}

/// `version:1 remaining:4 expires_at:8 payload`
pub(super) struct BlobRecord;

impl BlobRecord {
    pub(super) fn encode(remaining: u32, expires_at: u64, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(13 + payload.len());
        v.push(RECORD_VERSION);
        v.extend_from_slice(&remaining.to_be_bytes());
        v.extend_from_slice(&expires_at.to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    pub(super) fn remaining(raw: &[u8]) -> Result<u32, StoreError> {
        if raw.len() < 13 || raw[0] != RECORD_VERSION {
            return Err(StoreError::Corrupt("blob record"));
        }
        be_u32(&raw[1..5])
    }

    pub(super) fn payload(raw: &sled::IVec) -> Result<Bytes, StoreError> {
        if raw.len() < 13 || raw[0] != RECORD_VERSION {
            return Err(StoreError::Corrupt("blob record"));
        }
        Ok(Bytes::copy_from_slice(&raw[13..]))
    }
}

/// Remaining-recipient counts of blobs touched by one operation, so a blob released
/// twice in one batch is counted correctly.
#[derive(Default)]
pub(super) struct BlobCounts {
    touched: HashMap<ServerId, BlobState>,
}

enum BlobState {
    New {
        remaining: u32,
        expires_at: u64,
        payload: Bytes,
    },
    Existing {
        remaining: u32,
        raw: sled::IVec,
    },
    Gone,
}

impl BlobCounts {
    pub(super) fn insert_new(&mut self, id: ServerId, remaining: u32, expires_at: u64, payload: Bytes) {
        self.touched.insert(
            id,
            BlobState::New {
                remaining,
                expires_at,
                payload,
            },
        );
    }

    /// One recipient fewer holds blob `id`.
    pub(super) fn release(&mut self, tree: &sled::Tree, id: ServerId) -> Result<(), StoreError> {
        if let std::collections::hash_map::Entry::Vacant(slot) = self.touched.entry(id) {
            let state = match tree.get(prefixed(BLOB, &id.0)).map_err(backend)? {
                Some(raw) => BlobState::Existing {
                    remaining: BlobRecord::remaining(&raw)?,
                    raw,
                },
                None => BlobState::Gone,
            };
            slot.insert(state);
        }
        match self.touched.get_mut(&id) {
            Some(BlobState::New { remaining, .. } | BlobState::Existing { remaining, .. }) => {
                *remaining = remaining.saturating_sub(1);
            }
            Some(BlobState::Gone) | None => {}
        }
        Ok(())
    }

    /// Adds the new counts to `batch`; a blob nobody holds any more is deleted.
    pub(super) fn write(self, batch: &mut sled::Batch) {
        for (id, state) in self.touched {
            let key = prefixed(BLOB, &id.0);
            match state {
                BlobState::New { remaining: 0, .. } | BlobState::Existing { remaining: 0, .. } => {
                    batch.remove(key);
                }
                BlobState::New {
                    remaining,
                    expires_at,
                    payload,
                } => {
                    batch.insert(key, BlobRecord::encode(remaining, expires_at, &payload));
                }
                BlobState::Existing { remaining, raw } => {
                    let mut v = raw.to_vec();
                    v[1..5].copy_from_slice(&remaining.to_be_bytes());
                    batch.insert(key, v);
                }
                BlobState::Gone => {}
            }
        }
    }
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
    let mut h = blake3::Hasher::new();
    h.update(prev);
    h.update(&seq.to_be_bytes());
    h.update(&at_ms.to_be_bytes());
    h.update(kind.as_bytes());
    h.update(&[0]);
    h.update(detail.as_bytes());
    *h.finalize().as_bytes()
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
