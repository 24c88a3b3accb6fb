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
    /// Nobody holds the blob any more: delete it, and its tombstones if it has any.
    Release { id: ServerId, tombstones: bool },
    /// Write a gap record.
    PutGap { key: Key, seq: u64, slot: Slot },
    /// Delete a gap record.
    DelGap { key: Key, seq: u64 },
}

/// Per-blob bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Blob {
    pub(super) remaining: u32,
    /// Whether a tombstone was written for it (a release then deletes them too).
    pub(super) tombstones: bool,
    /// The random half of the blob's server id.
    pub(super) rand: [u8; 8],
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
                tombstones: false,
                rand: rand_half(&entry.id),
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
                b.tombstones = true;
                effects.push(Effect::Tombstone { id, key });
            }
            Some(b) => {
                let tombstones = b.tombstones;
                self.blobs.remove(&seq);
                effects.push(Effect::Release { id, tombstones });
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

    /// Moves `from`'s mailbox to `to` (a re-keyed rid); returns the seqs of its envelopes.
    pub(super) fn rename(&mut self, from: Key, to: Key) -> Vec<(u64, Slot)> {
        let Some(b) = self.boxes.remove(&from) else {
            return Vec::new();
        };
        let slots = b.slots.iter().map(|(s, x)| (*s, *x)).collect();
        self.boxes.insert(to, b);
        slots
    }

    /// Whether `key` still holds the slot at `seq`.
    pub(super) fn holds(&self, key: &Key, seq: u64) -> bool {
        self.boxes.get(key).is_some_and(|b| b.slots.contains_key(&seq))
    }

    /// The bookkeeping of blob `seq`.
    pub(super) fn blob(&self, seq: u64) -> Option<Blob> {
        self.blobs.get(&seq).copied()
    }

    /// Up to `limit` blobs whose time to live has passed at `now_ms`.
    pub(super) fn expired(&self, now_ms: u64, limit: usize) -> Vec<ServerId> {
        self.blobs
            .iter()
            .filter(|(_, b)| b.expires_at_ms <= now_ms)
            .take(limit)
            .map(|(seq, b)| server_id(*seq, b.rand))
            .collect()
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
        let tombstones = self.blobs.remove(&seq).is_none_or(|b| b.tombstones);
        effects.push(Effect::Release { id, tombstones });
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
            self.blobs.insert(
                seq,
                Blob {
                    remaining,
                    rand: rand_half(&id),
                    // Tombstones may exist on disk: a release after a restart looks for them.
                    tombstones: true,
                    ..meta
                },
            );
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
mod tests;
