//! Layout conversion at open. Layout 1 (before the journal) kept one `m/{rid}{dev}{seq}`
//! entry per device and envelope and blob records without recipients; layout 2 keeps the
//! recipient list in the blob record and derives mailboxes into memory. The conversion runs
//! once, before anything is served, and is safe to repeat if a crash cuts it short: new
//! records are written first, old ones removed after, the version marker last, then sled is
//! flushed and `fsync`ed.

use std::collections::BTreeMap;

use super::layout::{BLOB, LAYOUT_VERSION, LEGACY_MAILBOX, backend, device_seq, gap_key, prefixed, rid_device};
use super::records::{BlobRecord, LegacyEntry, encode_gap};
use crate::{DeviceId, Rid, ServerId, StoreError, flags};

/// The layout this code reads and writes.
const CURRENT: u8 = 2;

/// Converts the tree to the current layout if it is older.
pub(super) fn to_current(db: &sled::Db, tree: &sled::Tree) -> Result<(), StoreError> {
    match tree.get(LAYOUT_VERSION).map_err(backend)?.as_deref() {
        Some([CURRENT]) => return Ok(()),
        Some(v) => {
            return Err(StoreError::Backend(format!(
                "the data directory has layout version {v:?}; this build reads version {CURRENT}"
            )));
        }
        None => {}
    }
    let mut recipients: BTreeMap<ServerId, (Vec<(Rid, DeviceId)>, LegacyEntry)> = BTreeMap::new();
    let mut legacy_keys = Vec::new();
    let mut gaps = 0u64;
    for item in tree.scan_prefix(LEGACY_MAILBOX) {
        let (k, v) = item.map_err(backend)?;
        let (rid, dev) = rid_device(&k)?;
        let e = LegacyEntry::decode(&v)?;
        if e.flags & flags::GAP != 0 {
            tree.insert(
                gap_key(&rid, dev, device_seq(&k)?),
                encode_gap(e.dropped, e.received_at_ms, e.expires_at_ms),
            )
            .map_err(backend)?;
            gaps += 1;
        } else {
            recipients
                .entry(e.server_id)
                .or_insert_with(|| (Vec::new(), e.clone()))
                .0
                .push((rid, dev));
        }
        legacy_keys.push(k);
    }
    let mut converted = 0u64;
    for item in tree.scan_prefix(BLOB) {
        let (k, v) = item.map_err(backend)?;
        if v.first() == Some(&CURRENT) {
            continue; // converted by an earlier, interrupted run
        }
        let (expires_at_ms, payload) = BlobRecord::legacy(&v)?;
        let id = ServerId(
            k.get(2..18)
                .and_then(|b| b.try_into().ok())
                .ok_or(StoreError::Corrupt("blob key"))?,
        );
        match recipients.remove(&id) {
            Some((list, first)) => {
                let record = BlobRecord {
                    flags: first.flags & flags::URGENT,
                    received_at_ms: first.received_at_ms,
                    expires_at_ms,
                    recipients: list,
                    payload,
                };
                tree.insert(prefixed(BLOB, &id.0), record.encode()).map_err(backend)?;
                converted += 1;
            }
            None => {
                tree.remove(&k).map_err(backend)?;
            }
        }
    }
    for k in &legacy_keys {
        tree.remove(k).map_err(backend)?;
    }
    tree.insert(LAYOUT_VERSION, &[CURRENT]).map_err(backend)?;
    db.flush().map_err(backend)?;
    if !legacy_keys.is_empty() {
        tracing::info!(
            blobs = converted,
            entries = legacy_keys.len(),
            gaps,
            "storage layout converted from version 1 to version 2"
        );
    }
    Ok(())
}
