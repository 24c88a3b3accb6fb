//! The mailbox index: which envelopes each device still has to receive, kept in memory and
//! rebuilt at start from the durable records (blob records list their recipient devices,
//! tombstones and gap records say what left). Pure data structure: it decides, the caller
//! turns the decisions ([`Effect`]s) into writes and applies them in the same critical
//! section, so memory and disk never disagree once the writes are applied.
//!
//! A send therefore costs one blob record (bytes and recipient list, written once) plus a few
//! map inserts per recipient device, instead of one disk write per device. Memory: about 40
//! bytes per queued (device, envelope) pair and 40 per blob.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::{DeviceId, Rid, ServerId};

/// A device: the unit that owns a mailbox.
pub(super) type Key = (Rid, DeviceId);

/// One queued thing of a device, by seq (the send's id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Slot {
    /// An envelope: the random half of its server id, its size, its urgency.
    Entry { rand: [u8; 8], size: u32, urgent: bool },
    /// Envelopes dropped to make room (quota), counted, at the seq of the newest dropped one.
    Gap {
        dropped: u64,
        received_at_ms: u64,
        expires_at_ms: u64,
    },
}

/// What the caller must write for a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Effect {
    /// `dev` no longer holds the blob, which other recipients still hold: write a tombstone.
    Tombstone { id: ServerId, key: Key },
    /// Nobody holds the blob any more: delete it and its tombstones.
    Release { id: ServerId },
    /// Write a gap record.
    PutGap { key: Key, seq: u64, slot: Slot },
    /// Delete a gap record.
    DelGap { key: Key, seq: u64 },
}

/// Per-blob bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Blob {
    pub(super) remaining: u32,
    pub(super) received_at_ms: u64,
    pub(super) expires_at_ms: u64,
}

#[derive(Debug, Default)]
struct DeviceBox {
    slots: BTreeMap<u64, Slot>,
    /// Bytes of the entries (gaps count nothing).
    queued: u64,
}

/// The index of one store.
#[derive(Debug, Default)]
pub(super) struct Index {
    boxes: HashMap<Key, DeviceBox>,
    blobs: HashMap<u64, Blob>,
    /// Devices removed since start: a send that resolved its targets before the removal
    /// does not queue for them (device ids are never reused).
    closed: HashSet<Key>,
}

/// A new envelope.
#[derive(Debug, Clone, Copy)]
pub(super) struct NewEntry {
    pub(super) id: ServerId,
    pub(super) size: u32,
    pub(super) urgent: bool,
    pub(super) received_at_ms: u64,
    pub(super) expires_at_ms: u64,
}

impl Index {
    /// Queues `entry` for every device in `targets` (removed devices are dropped from the
    /// list), first dropping each device's oldest envelopes until it fits in `quota` bytes
    /// (replaced by one gap slot).
    pub(super) fn enqueue(&mut self, targets: &mut Vec<Key>, entry: NewEntry, quota: u64) -> Vec<Effect> {
        let mut effects = Vec::new();
        targets.retain(|k| !self.closed.contains(k));
        if targets.is_empty() {
            return effects;
        }
        let seq = entry.id.seq();
        self.blobs.insert(
            seq,
            Blob {
                remaining: targets.len() as u32,
                received_at_ms: entry.received_at_ms,
                expires_at_ms: entry.expires_at_ms,
            },
        );
        for key in targets.iter() {
            self.trim(*key, u64::from(entry.size), quota, &mut effects);
            let b = self.boxes.entry(*key).or_default();
            b.slots.insert(
                seq,
                Slot::Entry {
                    rand: rand_half(&entry.id),
                    size: entry.size,
                    urgent: entry.urgent,
                },
            );
            b.queued += u64::from(entry.size);
        }
        effects
    }

    /// Drops `key`'s oldest slots until `incoming` more bytes fit in `quota`.
    fn trim(&mut self, key: Key, incoming: u64, quota: u64, effects: &mut Vec<Effect>) {
        let Some(b) = self.boxes.get(&key) else { return };
        if b.queued + incoming <= quota {
            return;
        }
        let mut dropped = 0u64;
        let mut last: Option<(u64, u64, u64)> = None; // seq, received, expires
        while let Some(b) = self.boxes.get_mut(&key) {
            if b.queued + incoming <= quota {
                break;
            }
            let Some((seq, slot)) = b.slots.pop_first() else { break };
            match slot {
                Slot::Gap {
                    dropped: d,
                    received_at_ms,
                    expires_at_ms,
                } => {
                    dropped += d;
                    effects.push(Effect::DelGap { key, seq });
                    last = Some((seq, received_at_ms, expires_at_ms));
                }
                Slot::Entry { rand, size, .. } => {
                    b.queued -= u64::from(size);
                    dropped += 1;
                    let (received, expires) = self
                        .blobs
                        .get(&seq)
                        .map_or((0, 0), |x| (x.received_at_ms, x.expires_at_ms));
                    last = Some((seq, received, expires));
                    self.release(server_id(seq, rand), key, effects);
                }
            }
        }
        if let Some((seq, received_at_ms, expires_at_ms)) = last {
            let gap = Slot::Gap {
                dropped,
                received_at_ms,
                expires_at_ms,
            };
            self.boxes.entry(key).or_default().slots.insert(seq, gap);
            effects.push(Effect::PutGap { key, seq, slot: gap });
        }
    }

    /// `key` no longer holds blob `id`.
    fn release(&mut self, id: ServerId, key: Key, effects: &mut Vec<Effect>) {
        let seq = id.seq();
        match self.blobs.get_mut(&seq) {
            Some(b) if b.remaining > 1 => {
                b.remaining -= 1;
                effects.push(Effect::Tombstone { id, key });
            }
            Some(_) => {
                self.blobs.remove(&seq);
                effects.push(Effect::Release { id });
            }
            None => {}
        }
    }

    /// Up to `limit` slots of `key` after `after`, and whether more follow.
    pub(super) fn page(&self, key: &Key, after: u64, limit: usize) -> (Vec<(u64, Slot)>, bool) {
        let Some(b) = self.boxes.get(key) else {
            return (Vec::new(), true);
        };
        let mut it = b.slots.range(after.saturating_add(1)..);
        let page: Vec<(u64, Slot)> = it.by_ref().take(limit).map(|(s, x)| (*s, *x)).collect();
        let empty = it.next().is_none();
        (page, empty)
    }

    /// Whether `key` still holds the slot at `seq`.
    pub(super) fn holds(&self, key: &Key, seq: u64) -> bool {
        self.boxes.get(key).is_some_and(|b| b.slots.contains_key(&seq))
    }

    /// The bookkeeping of blob `seq`.
    pub(super) fn blob(&self, seq: u64) -> Option<Blob> {
        self.blobs.get(&seq).copied()
    }

    /// Acknowledges every slot with `seq <= up_to` and the entries with these exact ids
    /// (a forged random half acknowledges nothing); returns how many slots left.
    pub(super) fn ack(&mut self, key: Key, up_to: Option<u64>, ids: &[ServerId], effects: &mut Vec<Effect>) -> u64 {
        let Some(b) = self.boxes.get_mut(&key) else { return 0 };
        let mut gone: Vec<(u64, Slot)> = Vec::new();
        if let Some(up_to) = up_to {
            let seqs: Vec<u64> = b.slots.range(..=up_to).map(|(s, _)| *s).collect();
            for s in seqs {
                if let Some(slot) = b.slots.remove(&s) {
                    gone.push((s, slot));
                }
            }
        }
        for id in ids {
            let seq = id.seq();
            if let Some(Slot::Entry { rand, .. }) = b.slots.get(&seq)
                && *rand == rand_half(id)
                && let Some(slot) = b.slots.remove(&seq)
            {
                gone.push((seq, slot));
            }
        }
        self.forget(key, &gone, effects);
        gone.len() as u64
    }

    /// Removes a device's whole mailbox; nothing is queued for it any more.
    pub(super) fn remove_device(&mut self, key: Key, effects: &mut Vec<Effect>) -> u64 {
        self.closed.insert(key);
        let Some(b) = self.boxes.get_mut(&key) else { return 0 };
        let gone: Vec<(u64, Slot)> = std::mem::take(&mut b.slots).into_iter().collect();
        self.forget(key, &gone, effects);
        self.boxes.remove(&key);
        gone.len() as u64
    }

    /// Removes slot `seq` of `key` if it is an expired gap (the sweeper).
    pub(super) fn expire_gap(&mut self, key: Key, seq: u64, effects: &mut Vec<Effect>) {
        if let Some(b) = self.boxes.get_mut(&key)
            && let Some(Slot::Gap { .. }) = b.slots.get(&seq)
            && let Some(slot) = b.slots.remove(&seq)
        {
            self.forget(key, &[(seq, slot)], effects);
        }
    }

    /// Blob `id` expired: every device drops it; it is released.
    pub(super) fn expire_blob(&mut self, id: ServerId, holders: &[Key], effects: &mut Vec<Effect>) -> u64 {
        let seq = id.seq();
        let mut n = 0;
        for key in holders {
            if let Some(b) = self.boxes.get_mut(key)
                && let Some(Slot::Entry { size, .. }) = b.slots.get(&seq).copied()
            {
                b.slots.remove(&seq);
                b.queued -= u64::from(size);
                n += 1;
                if b.slots.is_empty() {
                    self.boxes.remove(key);
                }
            }
        }
        self.blobs.remove(&seq);
        effects.push(Effect::Release { id });
        n
    }

    fn forget(&mut self, key: Key, gone: &[(u64, Slot)], effects: &mut Vec<Effect>) {
        for (seq, slot) in gone {
            match *slot {
                Slot::Entry { rand, size, .. } => {
                    if let Some(b) = self.boxes.get_mut(&key) {
                        b.queued -= u64::from(size);
                    }
                    self.release(server_id(*seq, rand), key, effects);
                }
                Slot::Gap { .. } => effects.push(Effect::DelGap { key, seq: *seq }),
            }
        }
        if self.boxes.get(&key).is_some_and(|b| b.slots.is_empty()) {
            self.boxes.remove(&key);
        }
    }

    /// Slots held, gaps included.
    pub(super) fn len(&self) -> u64 {
        self.boxes.values().map(|b| b.slots.len() as u64).sum()
    }

    // Rebuilding at start.

    /// A durable blob record: `holders` are its recipients still active.
    pub(super) fn load_blob(&mut self, id: ServerId, size: u32, urgent: bool, meta: Blob, holders: &[Key]) {
        let seq = id.seq();
        let mut remaining = 0;
        for key in holders {
            let b = self.boxes.entry(*key).or_default();
            b.slots.insert(
                seq,
                Slot::Entry {
                    rand: rand_half(&id),
                    size,
                    urgent,
                },
            );
            b.queued += u64::from(size);
            remaining += 1;
        }
        if remaining > 0 {
            self.blobs.insert(seq, Blob { remaining, ..meta });
        }
    }

    /// A durable tombstone: `key` no longer holds `id`. Returns whether the blob is now
    /// held by nobody (the caller deletes it).
    pub(super) fn load_tombstone(&mut self, id: ServerId, key: Key) -> bool {
        let seq = id.seq();
        let Some(b) = self.boxes.get_mut(&key) else {
            return false;
        };
        if let Some(Slot::Entry { size, .. }) = b.slots.remove(&seq) {
            b.queued -= u64::from(size);
            if b.slots.is_empty() {
                self.boxes.remove(&key);
            }
            if let Some(blob) = self.blobs.get_mut(&seq) {
                blob.remaining -= 1;
                if blob.remaining == 0 {
                    self.blobs.remove(&seq);
                    return true;
                }
            }
        }
        false
    }

    /// A durable gap record.
    pub(super) fn load_gap(&mut self, key: Key, seq: u64, gap: Slot) {
        self.boxes.entry(key).or_default().slots.insert(seq, gap);
    }
}

/// The second half of a server id: random, so ids cannot be guessed.
pub(super) fn rand_half(id: &ServerId) -> [u8; 8] {
    let mut r = [0u8; 8];
    r.copy_from_slice(&id.0[8..]);
    r
}

pub(super) fn server_id(seq: u64, rand: [u8; 8]) -> ServerId {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&seq.to_be_bytes());
    id[8..].copy_from_slice(&rand);
    ServerId(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> Key {
        (Rid([n; 32]), DeviceId(1))
    }

    fn entry(seq: u64, size: u32) -> NewEntry {
        NewEntry {
            id: server_id(seq, [seq as u8; 8]),
            size,
            urgent: false,
            received_at_ms: seq * 10,
            expires_at_ms: 1_000_000,
        }
    }

    #[test]
    fn fan_out_is_one_blob_released_by_the_last_ack() {
        let mut ix = Index::default();
        let e = entry(1, 100);
        assert!(ix.enqueue(&mut vec![key(1), key(2), key(3)], e, 1 << 20).is_empty());
        assert_eq!(ix.blob(1).map(|b| b.remaining), Some(3));
        let mut fx = Vec::new();
        assert_eq!(ix.ack(key(1), None, &[e.id], &mut fx), 1);
        assert_eq!(ix.ack(key(2), Some(1), &[], &mut fx), 1);
        assert_eq!(
            fx,
            [
                Effect::Tombstone { id: e.id, key: key(1) },
                Effect::Tombstone { id: e.id, key: key(2) }
            ]
        );
        fx.clear();
        assert_eq!(ix.ack(key(3), None, &[e.id, e.id], &mut fx), 1, "acked once");
        assert_eq!(fx, [Effect::Release { id: e.id }]);
        assert_eq!((ix.len(), ix.blob(1)), (0, None));
        assert_eq!(ix.ack(key(3), Some(99), &[e.id], &mut fx), 0, "idempotent");
    }

    #[test]
    fn a_forged_random_half_acknowledges_nothing() {
        let mut ix = Index::default();
        let e = entry(5, 10);
        ix.enqueue(&mut vec![key(1)], e, 1 << 20);
        let forged = server_id(5, [0xee; 8]);
        let mut fx = Vec::new();
        assert_eq!(ix.ack(key(1), None, &[forged], &mut fx), 0);
        assert!(fx.is_empty());
        assert!(ix.holds(&key(1), 5));
    }

    #[test]
    fn the_quota_trims_the_oldest_into_one_gap() {
        let mut ix = Index::default();
        for seq in 1..=5 {
            assert!(ix.enqueue(&mut vec![key(1)], entry(seq, 100), 500).is_empty());
        }
        // The sixth needs room: the oldest goes, replaced by a gap at its seq.
        let fx = ix.enqueue(&mut vec![key(1)], entry(6, 100), 500);
        assert_eq!(
            fx,
            [
                Effect::Release { id: entry(1, 0).id },
                Effect::PutGap {
                    key: key(1),
                    seq: 1,
                    slot: Slot::Gap {
                        dropped: 1,
                        received_at_ms: 10,
                        expires_at_ms: 1_000_000
                    }
                }
            ]
        );
        // A large one (300 of 500 bytes) drops the gap and three more: one merged gap
        // counting four, at the seq of the newest dropped envelope.
        let fx = ix.enqueue(&mut vec![key(1)], entry(7, 300), 500);
        let (page, empty) = ix.page(&key(1), 0, 10);
        assert!(empty);
        assert_eq!(page.len(), 4, "{page:?}");
        assert_eq!(
            page[0],
            (
                4,
                Slot::Gap {
                    dropped: 4,
                    received_at_ms: 40,
                    expires_at_ms: 1_000_000
                }
            )
        );
        assert!(fx.contains(&Effect::DelGap { key: key(1), seq: 1 }));
        assert_eq!(page.iter().map(|p| p.0).collect::<Vec<_>>(), [4, 5, 6, 7]);
    }

    #[test]
    fn rebuilding_from_records_gives_the_same_mailboxes() {
        let mut live = Index::default();
        let a = entry(1, 10);
        let b = entry(2, 20);
        live.enqueue(&mut vec![key(1), key(2)], a, 1 << 20);
        live.enqueue(&mut vec![key(1)], b, 1 << 20);
        let mut fx = Vec::new();
        live.ack(key(2), None, &[a.id], &mut fx);
        let mut rebuilt = Index::default();
        let meta = |e: NewEntry| Blob {
            remaining: 0,
            received_at_ms: e.received_at_ms,
            expires_at_ms: e.expires_at_ms,
        };
        rebuilt.load_blob(a.id, 10, false, meta(a), &[key(1), key(2)]);
        rebuilt.load_blob(b.id, 20, false, meta(b), &[key(1)]);
        for f in fx {
            if let Effect::Tombstone { id, key } = f {
                assert!(!rebuilt.load_tombstone(id, key));
            }
        }
        for k in [key(1), key(2)] {
            assert_eq!(live.page(&k, 0, 10), rebuilt.page(&k, 0, 10));
        }
        assert_eq!(live.blob(1), rebuilt.blob(1));
        assert!(
            rebuilt.load_tombstone(a.id, key(1)),
            "the last holder's tombstone frees the blob"
        );
    }

    #[test]
    fn removing_a_device_releases_what_only_it_held() {
        let mut ix = Index::default();
        ix.enqueue(&mut vec![key(1), key(2)], entry(1, 10), 1 << 20);
        ix.enqueue(&mut vec![key(1)], entry(2, 10), 1 << 20);
        let mut fx = Vec::new();
        assert_eq!(ix.remove_device(key(1), &mut fx), 2);
        assert_eq!(
            fx,
            [
                Effect::Tombstone {
                    id: entry(1, 0).id,
                    key: key(1)
                },
                Effect::Release { id: entry(2, 0).id }
            ]
        );
        assert_eq!(ix.len(), 1);
        let mut targets = vec![key(1), key(2)];
        ix.enqueue(&mut targets, entry(3, 10), 1 << 20);
        assert_eq!(targets, [key(2)], "nothing is queued for a removed device");
        assert_eq!(ix.blob(3).map(|b| b.remaining), Some(1));
    }
}
