//! The sled key layout (one tree, DESIGN.md section 4) and the helpers that build keys.
//!
//! ```text
//! d/{rid:32}{dev:4}            -> DeviceRecord
//! c/{lookup:16}                -> {rid:32}{dev:4}             credential lookup
//! n/{rid:32}                   -> next device id (u32)        ids are never reused
//! b/{server_id:16}             -> BlobRecord: recipient devices + message bytes, once per send
//! x/{server_id:16}{rid:32}{dev:4} -> empty                    tombstone: the device is done with it
//! G/{rid:32}{dev:4}{seq:8}     -> GapRecord                   envelopes dropped for the quota
//! e/{expires_at:8}{server_id}  -> idempotency key or empty    blob expiry index
//! k/{rid:32}{dev:4}{cmid:16}   -> {server_id:16}{digest:32}   idempotent sends
//! p/{nonce:16}                 -> expires_at                  used provisioning tokens
//! y/{rid:32}{dev:4}{lr:1}{ref} -> {not_after:8}{KeyPackage}   directory; lr=1 last resort
//! r/{ref}                      -> {rid:32}{dev:4}{not_after:8} Welcome routing by KeyPackageRef
//! g/{blake3(group_id):32}      -> current epoch               per-group commit ordering
//! f/{blake3(group_id):32}      -> latest GroupInfo MLSMessage  external joins
//! h/{rid:32}{dev:4}            -> push handle (sealed by the push proxy, opaque here)
//! o/{blake3(peer):16}{seq:8}   -> {EntryState:20}{envelope_id:16}{record}  interconnect outbox
//! a/{seq:8}                    -> {at:8}{kind_len:1}{kind}{detail}{hash:32}  audit log
//! A/                           -> {seq:8}{hash:32}{frontier}  audit chain head and Merkle frontier
//! C/{size:8}                   -> signed checkpoint (C2SP signed note, text)
//! B/                           -> {size:8}{chain:32}{frontier}  audit base after pruning
//! S/{name}                     -> {since:8}                   a kill switch that is off
//! U/{rid:32}                   -> {since:8}                   a suspended address
//! O/{rid:32}                   -> {since:8}                   a rid under the previous K_rid, to re-key
//! I/                           -> reserved id (u64)           ids below it may have been used
//! V/                           -> layout version (u8)         2 since the journal
//! ```
//! Integers are big-endian so ranges scan in order. Which envelopes each device still has to
//! receive is not a key per (device, envelope): it is derived from the blob records, the
//! tombstones and the gap records into the in-memory index at start (`index.rs`). Layout
//! version 1 kept one `m/{rid}{dev}{seq}` key per device and envelope; `migrate.rs` converts it.

use crate::{DeviceId, Rid, ServerId, StoreError};

pub(super) const DEVICE: &[u8; 2] = b"d/";
pub(super) const CREDENTIAL: &[u8; 2] = b"c/";
pub(super) const DEVICE_COUNTER: &[u8; 2] = b"n/";
pub(super) const BLOB: &[u8; 2] = b"b/";
/// Layout version 1 only (converted at open).
pub(super) const LEGACY_MAILBOX: &[u8; 2] = b"m/";
pub(super) const TOMBSTONE: &[u8; 2] = b"x/";
pub(super) const GAP: &[u8; 2] = b"G/";
pub(super) const ID_RESERVED: &[u8; 2] = b"I/";
pub(super) const LAYOUT_VERSION: &[u8; 2] = b"V/";
pub(super) const EXPIRY: &[u8; 2] = b"e/";
pub(super) const IDEMPOTENCY: &[u8; 2] = b"k/";
pub(super) const NONCE: &[u8; 2] = b"p/";
pub(super) const KEY_PACKAGE: &[u8; 2] = b"y/";
pub(super) const KEY_PACKAGE_ROUTE: &[u8; 2] = b"r/";
pub(super) const GROUP_EPOCH: &[u8; 2] = b"g/";
pub(super) const GROUP_INFO: &[u8; 2] = b"f/";
pub(super) const PUSH_HANDLE: &[u8; 2] = b"h/";
pub(super) const OUTBOX: &[u8; 2] = b"o/";
pub(super) const AUDIT: &[u8; 2] = b"a/";
pub(super) const AUDIT_HEAD: &[u8; 2] = b"A/";
pub(super) const AUDIT_CHECKPOINT: &[u8; 2] = b"C/";
pub(super) const AUDIT_BASE: &[u8; 2] = b"B/";
pub(super) const SWITCH_OFF: &[u8; 2] = b"S/";
pub(super) const SUSPENDED: &[u8; 2] = b"U/";
pub(super) const REKEY: &[u8; 2] = b"O/";

/// Offset of the device id in a `{prefix:2}{rid:32}{dev:4}` key, and of what follows it.
pub(super) const DEV_AT: std::ops::Range<usize> = 34..38;
pub(super) const SEQ_AT: std::ops::Range<usize> = 38..46;

pub(super) fn prefixed(prefix: &[u8; 2], rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + rest.len());
    k.extend_from_slice(prefix);
    k.extend_from_slice(rest);
    k
}

/// `{prefix}{rid}{dev}`: the key of a per-device record, or the prefix of per-device ranges.
pub(super) fn device_key_with(prefix: &[u8; 2], rid: &Rid, dev: DeviceId) -> Vec<u8> {
    let mut k = Vec::with_capacity(62);
    k.extend_from_slice(prefix);
    k.extend_from_slice(&rid.0);
    k.extend_from_slice(&dev.0.to_be_bytes());
    k
}

pub(super) fn device_key(rid: &Rid, dev: DeviceId) -> Vec<u8> {
    device_key_with(DEVICE, rid, dev)
}

pub(super) fn gap_key(rid: &Rid, dev: DeviceId, seq: u64) -> Vec<u8> {
    let mut k = device_key_with(GAP, rid, dev);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub(super) fn tombstone_key(id: &ServerId, rid: &Rid, dev: DeviceId) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + 16 + 36);
    k.extend_from_slice(TOMBSTONE);
    k.extend_from_slice(&id.0);
    k.extend_from_slice(&rid.0);
    k.extend_from_slice(&dev.0.to_be_bytes());
    k
}

/// The (server id, rid, device) of a tombstone key.
pub(super) fn tombstone_parts(k: &[u8]) -> Result<(ServerId, Rid, DeviceId), StoreError> {
    let corrupt = || StoreError::Corrupt("tombstone key");
    if k.len() != 2 + 16 + 36 {
        return Err(corrupt());
    }
    Ok((
        ServerId(k[2..18].try_into().map_err(|_| corrupt())?),
        Rid(k[18..50].try_into().map_err(|_| corrupt())?),
        DeviceId(be_u32(&k[50..54])?),
    ))
}

pub(super) fn kp_prefix(rid: &Rid, dev: DeviceId, last_resort: bool) -> Vec<u8> {
    let mut k = device_key_with(KEY_PACKAGE, rid, dev);
    k.push(u8::from(last_resort));
    k
}

pub(super) fn outbox_prefix(peer: &str) -> Vec<u8> {
    prefixed(OUTBOX, &blake3::hash(peer.as_bytes()).as_bytes()[..16])
}

pub(super) fn outbox_key(peer: &str, seq: u64) -> Vec<u8> {
    let mut k = outbox_prefix(peer);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub(super) fn expiry_key(expires_at: u64, server_id: &[u8; 16]) -> Vec<u8> {
    let mut k = Vec::with_capacity(26);
    k.extend_from_slice(EXPIRY);
    k.extend_from_slice(&expires_at.to_be_bytes());
    k.extend_from_slice(server_id);
    k
}

pub(super) fn audit_key(seq: u64) -> Vec<u8> {
    prefixed(AUDIT, &seq.to_be_bytes())
}

/// The (rid, device) of a `{prefix:2}{rid:32}{dev:4}…` key.
pub(super) fn rid_device(k: &[u8]) -> Result<(Rid, DeviceId), StoreError> {
    let rid = k.get(2..34).ok_or(StoreError::Corrupt("device key"))?;
    Ok((
        Rid(rid.try_into().map_err(|_| StoreError::Corrupt("device key"))?),
        DeviceId(be_u32(k.get(DEV_AT).ok_or(StoreError::Corrupt("device key"))?)?),
    ))
}

/// The seq of a `{prefix}{rid}{dev}{seq}` key (gap records, legacy mailbox entries).
pub(super) fn device_seq(k: &[u8]) -> Result<u64, StoreError> {
    be_u64(k.get(SEQ_AT).ok_or(StoreError::Corrupt("device seq key"))?)
}

pub(super) fn be_u32(b: &[u8]) -> Result<u32, StoreError> {
    b.try_into()
        .map(u32::from_be_bytes)
        .map_err(|_| StoreError::Corrupt("u32"))
}

pub(super) fn be_u64(b: &[u8]) -> Result<u64, StoreError> {
    b.try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt("u64"))
}

#[allow(clippy::needless_pass_by_value, reason = "used as map_err(backend)")]
pub(super) fn backend(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}
