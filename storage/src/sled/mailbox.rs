//! Sends, receives and acknowledgements: one blob record per send (bytes and recipient
//! devices), the mailbox index in memory, tombstones and gap records for what leaves it.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use rand::RngCore as _;
use relay_core::interconnect::EntryState;

use super::index::{Blob, Effect, Index, Key, NewEntry, Slot, server_id};
use super::layout::{
    BLOB, GAP, GROUP_EPOCH, IDEMPOTENCY, TOMBSTONE, backend, be_u64, device_key_with, device_seq, expiry_key, gap_key,
    outbox_key, prefixed, rid_device, tombstone_key, tombstone_parts,
};
use super::records::{BlobRecord, IdempotencyRecord, decode_gap, encode_gap, encode_outbox};
use super::writeset::WriteSet;
use super::{Inner, SledStore, lock};
use crate::contract::Mailboxes;
use crate::{
    Ack, Ciphertext, DeviceId, GroupOrdering, OrderingKind, Page, Rid, SendError, SendOutcome, SendRequest, ServerId,
    StoreError, StoredEnvelope, flags,
};

impl Mailboxes for SledStore {
    async fn send(&self, req: SendRequest) -> Result<SendOutcome, SendError> {
        // A duplicate's first send may still be on its way to disk: its LSN is covered.
        self.write(move |s| s.send(&req)).await
    }

    async fn receive(
        &self,
        rid: Rid,
        device: DeviceId,
        after: u64,
        limit: u32,
        now_ms: u64,
    ) -> Result<Page, StoreError> {
        self.blocking(move |s| s.receive((rid, device), after, limit as usize, now_ms))
            .await
    }

    async fn ack(&self, rid: Rid, device: DeviceId, ack: Ack) -> Result<u64, StoreError> {
        self.write(move |s| s.ack((rid, device), &ack)).await
    }
}

/// The group-epoch decision of one send: the epoch it was accepted for and the new epoch to
/// write in the same write set.
#[derive(Debug, Default)]
struct EpochUpdate {
    write: Option<(Vec<u8>, u64)>,
    accepted_epoch: Option<u64>,
}

impl Inner {
    fn send(&self, req: &SendRequest) -> Result<(SendOutcome, u64), SendError> {
        let (sender_rid, sender_dev) = req.sender;
        let idem_key = req.client_message_id.map(|c| {
            let mut k = device_key_with(IDEMPOTENCY, &sender_rid, sender_dev);
            k.extend_from_slice(&c.0);
            k
        });
        let _idem = idem_key.as_deref().map(|k| self.idempotency.lock(k));
        if let Some(k) = &idem_key
            && let Some(earlier) = self.earlier_send(k, &req.request_digest)?
        {
            return Ok((earlier, self.journal.last_lsn()));
        }
        // Per-group ordering: decided under the group's stripe, written in the same write set
        // as the envelope, so two commits for one epoch can never both win.
        let _group = req.ordering.map(|o| self.groups.lock(&o.group_key));
        let epoch = match req.ordering {
            Some(o) => self.check_epoch(o)?,
            None => EpochUpdate::default(),
        };
        let mut targets = self.resolve_targets(req)?;

        let mut ws = WriteSet::default();
        let mut m = lock(&self.mailboxes);
        let seq = Self::next_id(&mut m, &mut ws);
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&seq.to_be_bytes());
        rand::rng().fill_bytes(&mut id[8..]);
        let server_id = ServerId(id);
        let expires_at = req.now_ms.saturating_add(req.ttl_ms);
        let entry = NewEntry {
            id: server_id,
            size: req.message.len() as u32,
            urgent: req.urgent,
            received_at_ms: req.now_ms,
            expires_at_ms: expires_at,
        };
        let effects = m.index.enqueue(&mut targets, entry, req.max_queue_bytes);
        self.effects_into(&effects, &mut ws)?;
        if !targets.is_empty() {
            let blob = BlobRecord {
                flags: (if req.urgent { flags::URGENT } else { 0 }) | (if req.report { flags::REPORT } else { 0 }),
                received_at_ms: req.now_ms,
                expires_at_ms: expires_at,
                recipients: targets.clone(),
                payload: req.message.as_bytes().clone(),
            };
            ws.put_with(&prefixed(BLOB, &server_id.0), blob.encoded_len(), |v| {
                blob.encode_into(v)
            });
        }
        if let Some(k) = &idem_key {
            // The idempotency record expires with the blob (blobs expire from the index).
            ws.put(&expiry_key(expires_at, &server_id.0), k);
            let record = IdempotencyRecord {
                server_id,
                digest: req.request_digest,
                accepted_epoch: epoch.accepted_epoch,
            };
            ws.put(k, &record.encode());
        }
        if let Some((key, epoch)) = &epoch.write {
            ws.put(key, &epoch.to_be_bytes());
        }
        let now_state = EntryState::new(req.now_ms);
        for item in &req.outbox {
            let oseq = Self::next_id(&mut m, &mut ws);
            ws.put(
                &outbox_key(&item.peer, oseq),
                &encode_outbox(&now_state, &server_id, &item.record),
            );
        }
        let lsn = self.commit(&ws)?;
        drop(m);
        metrics::counter!("relay_mailbox_ops_total", "op" => "enqueue").increment(targets.len() as u64);
        Ok((
            SendOutcome {
                server_id,
                delivered_to: targets,
                duplicate: false,
                accepted_epoch: epoch.accepted_epoch,
            },
            lsn,
        ))
    }

    /// The outcome of an earlier send with the same client message id, if there was one.
    fn earlier_send(&self, idem_key: &[u8], digest: &[u8; 32]) -> Result<Option<SendOutcome>, SendError> {
        let Some(v) = self.tree.get(idem_key).map_err(backend)? else {
            return Ok(None);
        };
        let earlier = IdempotencyRecord::decode(&v)?;
        if earlier.digest != *digest {
            return Err(SendError::ClientMessageIdConflict);
        }
        Ok(Some(SendOutcome {
            server_id: earlier.server_id,
            delivered_to: Vec::new(),
            duplicate: true,
            accepted_epoch: earlier.accepted_epoch,
        }))
    }

    /// RFC 9420 section 14 / RFC 9750 section 5.2: first commit for an epoch wins.
    fn check_epoch(&self, o: GroupOrdering) -> Result<EpochUpdate, SendError> {
        let key = prefixed(GROUP_EPOCH, &o.group_key);
        let current = self.tree.get(&key).map_err(backend)?.map(|v| be_u64(&v)).transpose()?;
        match (o.kind, current) {
            (OrderingKind::Commit, None) if o.epoch == 0 => Ok(EpochUpdate {
                write: Some((key, 1)),
                accepted_epoch: Some(0),
            }),
            (OrderingKind::Commit, None) => Err(SendError::UnknownGroup),
            (OrderingKind::Commit, Some(c)) if o.epoch == c => Ok(EpochUpdate {
                write: Some((key, c + 1)),
                accepted_epoch: Some(c),
            }),
            (OrderingKind::Commit | OrderingKind::Proposal, Some(c)) if o.epoch != c => Err(SendError::WrongEpoch {
                epoch: o.epoch,
                current: c,
            }),
            (OrderingKind::Application { window }, Some(c)) if o.epoch.saturating_add(window) < c => {
                Err(SendError::EpochTooOld {
                    epoch: o.epoch,
                    current: c,
                })
            }
            _ => Ok(EpochUpdate::default()),
        }
    }

    /// Every recipient device, resolved before anything is written: an unknown address or
    /// device fails the whole send.
    fn resolve_targets(&self, req: &SendRequest) -> Result<Vec<Key>, SendError> {
        let mut targets = Vec::new();
        let mut seen = HashSet::new();
        for (index, r) in req.recipients.iter().enumerate() {
            let active = self.cached_devices(&r.rid)?;
            if active.is_empty() {
                return Err(SendError::UnknownRecipient { index });
            }
            let chosen: Vec<DeviceId> = match &r.devices {
                None => active,
                Some(wanted) => {
                    if wanted.iter().any(|w| !active.contains(w)) {
                        return Err(SendError::UnknownDevice { index });
                    }
                    active.into_iter().filter(|d| wanted.contains(d)).collect()
                }
            };
            for dev in chosen {
                if seen.insert((r.rid, dev)) {
                    targets.push((r.rid, dev));
                }
            }
        }
        Ok(targets)
    }

    /// The writes the index's decisions need. The caller holds the mailboxes lock.
    pub(super) fn effects_into(&self, effects: &[Effect], ws: &mut WriteSet) -> Result<(), StoreError> {
        for e in effects {
            match e {
                Effect::Tombstone { id, key } => ws.put(&tombstone_key(id, &key.0, key.1), &[]),
                Effect::Release { id, tombstones } => {
                    ws.del(&prefixed(BLOB, &id.0));
                    if *tombstones {
                        for k in self.tree.scan_prefix(prefixed(TOMBSTONE, &id.0)).keys() {
                            ws.del(&k.map_err(backend)?);
                        }
                    }
                }
                Effect::PutGap { key, seq, slot } => {
                    if let Slot::Gap {
                        dropped,
                        received_at_ms,
                        expires_at_ms,
                    } = slot
                    {
                        ws.put(
                            &gap_key(&key.0, key.1, *seq),
                            &encode_gap(*dropped, *received_at_ms, *expires_at_ms),
                        );
                        metrics::counter!("relay_mailbox_ops_total", "op" => "trim").increment(*dropped);
                    }
                }
                Effect::DelGap { key, seq } => ws.del(&gap_key(&key.0, key.1, *seq)),
            }
        }
        Ok(())
    }

    fn receive(&self, key: Key, after: u64, limit: usize, now_ms: u64) -> Result<Page, StoreError> {
        let (slots, mut queue_empty) = lock(&self.mailboxes).index.page(&key, after, limit);
        let mut envelopes = Vec::with_capacity(slots.len());
        let mut next_cursor = after;
        for (seq, slot) in slots {
            let envelope = match slot {
                Slot::Gap {
                    dropped,
                    received_at_ms,
                    expires_at_ms,
                } => (expires_at_ms > now_ms).then(|| StoredEnvelope {
                    server_id: ServerId([0; 16]),
                    seq,
                    received_at_ms,
                    expires_at_ms,
                    flags: flags::GAP,
                    message: Ciphertext::from_stored(Bytes::new()),
                    dropped,
                }),
                Slot::Entry { rand, .. } => {
                    let id = server_id(seq, rand);
                    match self.tree.get(prefixed(BLOB, &id.0)).map_err(backend)? {
                        Some(raw) => {
                            let blob = BlobRecord::decode(raw)?;
                            (blob.expires_at_ms > now_ms).then(|| StoredEnvelope {
                                server_id: id,
                                seq,
                                received_at_ms: blob.received_at_ms,
                                expires_at_ms: blob.expires_at_ms,
                                flags: blob.flags,
                                message: Ciphertext::from_stored(blob.payload),
                                dropped: 0,
                            })
                        }
                        // Acknowledged, trimmed or expired since the page was read: gone.
                        None if !lock(&self.mailboxes).index.holds(&key, seq) => None,
                        // Still held but not readable yet: stop here, never skip it.
                        None => {
                            queue_empty = false;
                            break;
                        }
                    }
                }
            };
            next_cursor = seq;
            envelopes.extend(envelope);
        }
        metrics::counter!("relay_mailbox_ops_total", "op" => "read").increment(envelopes.len() as u64);
        Ok(Page {
            envelopes,
            next_cursor,
            queue_empty,
        })
    }

    fn ack(&self, key: Key, ack: &Ack) -> Result<(u64, u64), StoreError> {
        let mut m = lock(&self.mailboxes);
        let mut effects = Vec::new();
        let n = m.index.ack(key, ack.up_to, &ack.server_ids, &mut effects);
        if n == 0 {
            return Ok((0, self.journal.last_lsn()));
        }
        let mut ws = WriteSet::default();
        self.effects_into(&effects, &mut ws)?;
        let lsn = self.commit(&ws)?;
        drop(m);
        metrics::counter!("relay_mailbox_ops_total", "op" => "ack").increment(n);
        Ok((n, lsn))
    }
}

/// The index from the durable records: blob records (recipients still active), minus
/// tombstones, plus gap records. Blobs nobody holds any more are deleted.
pub(super) fn load_index(tree: &sled::Tree, active: &HashSet<Key>) -> Result<Index, StoreError> {
    let mut index = Index::default();
    let mut holders: HashMap<u64, ServerId> = HashMap::new();
    for item in tree.scan_prefix(BLOB) {
        let (k, v) = item.map_err(backend)?;
        let id = ServerId(
            k.get(2..18)
                .and_then(|b| b.try_into().ok())
                .ok_or(StoreError::Corrupt("blob key"))?,
        );
        let (blob, end) = BlobRecord::header(&v)?;
        let held: Vec<Key> = blob.recipients.iter().filter(|r| active.contains(r)).copied().collect();
        let meta = Blob {
            remaining: 0,
            tombstones: true,
            rand: [0; 8],
            received_at_ms: blob.received_at_ms,
            expires_at_ms: blob.expires_at_ms,
        };
        index.load_blob(id, (v.len() - end) as u32, blob.flags & flags::URGENT != 0, meta, &held);
        holders.insert(id.seq(), id);
    }
    let mut garbage = Vec::new();
    for k in tree.scan_prefix(TOMBSTONE).keys() {
        let k = k.map_err(backend)?;
        let (id, rid, dev) = tombstone_parts(&k)?;
        if !holders.contains_key(&id.seq()) || index.load_tombstone(id, (rid, dev)) {
            // Nobody holds the blob any more (or it is gone): its records go.
            garbage.push(prefixed(BLOB, &id.0));
        }
        if !holders.contains_key(&id.seq()) {
            garbage.push(k.to_vec());
        }
    }
    for item in tree.scan_prefix(GAP) {
        let (k, v) = item.map_err(backend)?;
        let key = rid_device(&k)?;
        if active.contains(&key) {
            let (dropped, received_at_ms, expires_at_ms) = decode_gap(&v)?;
            index.load_gap(
                key,
                device_seq(&k)?,
                Slot::Gap {
                    dropped,
                    received_at_ms,
                    expires_at_ms,
                },
            );
        } else {
            garbage.push(k.to_vec());
        }
    }
    // Blobs every recipient of which is gone (devices deleted meanwhile).
    for (seq, id) in &holders {
        if index.blob(*seq).is_none() {
            garbage.push(prefixed(BLOB, &id.0));
            for k in tree.scan_prefix(prefixed(TOMBSTONE, &id.0)).keys() {
                garbage.push(k.map_err(backend)?.to_vec());
            }
        }
    }
    // Cleaning up is itself idempotent: these records describe nothing any more, so losing the
    // removal in a crash only repeats it at the next start.
    for k in garbage {
        tree.remove(k).map_err(backend)?;
    }
    Ok(index)
}
