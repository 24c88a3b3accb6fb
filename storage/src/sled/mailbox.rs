//! Sends, receives and acknowledgements: blobs stored once, one mailbox entry per device.

use std::collections::HashSet;

use bytes::Bytes;
use relay_core::interconnect::EntryState;

use super::layout::{
    BLOB, GROUP_EPOCH, IDEMPOTENCY, MAILBOX, backend, be_u64, device_key_with, expiry_key, mailbox_key, mailbox_seq,
    outbox_key, prefixed,
};
use super::records::{BlobCounts, BlobRecord, IdempotencyRecord, MailboxEntry, encode_outbox};
use super::{SledStore, WriterState};
use crate::contract::Mailboxes;
use crate::{
    Ack, Ciphertext, DeviceId, GroupOrdering, OrderingKind, Page, Rid, SendError, SendOutcome, SendRequest, ServerId,
    StoreError, StoredEnvelope, flags,
};

impl Mailboxes for SledStore {
    async fn send(&self, req: SendRequest) -> Result<SendOutcome, SendError> {
        let outcome = {
            let mut st = self.lock();
            let start = std::time::Instant::now();
            let r = self.send_locked(&mut st, &req);
            metrics::histogram!("relay_storage_write_seconds", "op" => "send").record(start.elapsed().as_secs_f64());
            r?
        };
        // A duplicate is durable already, or its first send is still waiting for the
        // same flush; waiting here keeps "2xx means durable" true in both cases.
        self.durable().await?;
        Ok(outcome)
    }

    async fn receive(
        &self,
        rid: Rid,
        device: DeviceId,
        after: u64,
        limit: u32,
        now_ms: u64,
    ) -> Result<Page, StoreError> {
        let start = mailbox_key(&rid, device, after.saturating_add(1));
        let end = mailbox_key(&rid, device, u64::MAX);
        let mut envelopes = Vec::new();
        let mut next_cursor = after;
        let mut queue_empty = true;
        for item in self.tree.range(start..=end) {
            let (k, v) = item.map_err(backend)?;
            let seq = mailbox_seq(&k)?;
            if envelopes.len() >= limit as usize {
                queue_empty = false;
                break;
            }
            next_cursor = seq;
            let entry = MailboxEntry::decode(&v)?;
            if entry.expires_at_ms <= now_ms {
                continue;
            }
            let message = if entry.is_gap() {
                Ciphertext::from_stored(Bytes::new())
            } else {
                match self.tree.get(prefixed(BLOB, &entry.server_id.0)).map_err(backend)? {
                    Some(blob) => Ciphertext::from_stored(BlobRecord::payload(&blob)?),
                    // Blob expired before the sweeper reached this entry.
                    None => continue,
                }
            };
            envelopes.push(StoredEnvelope {
                server_id: entry.server_id,
                seq,
                received_at_ms: entry.received_at_ms,
                expires_at_ms: entry.expires_at_ms,
                flags: entry.flags,
                message,
                dropped: entry.dropped,
            });
        }
        metrics::counter!("relay_mailbox_ops_total", "op" => "read").increment(envelopes.len() as u64);
        Ok(Page {
            envelopes,
            next_cursor,
            queue_empty,
        })
    }

    async fn ack(&self, rid: Rid, device: DeviceId, ack: Ack) -> Result<u64, StoreError> {
        let n = {
            let mut st = self.lock();
            self.ack_locked(&mut st, &rid, device, &ack)?
        };
        self.durable().await?;
        Ok(n)
    }
}

/// The group-epoch decision of one send: the epoch it was accepted for and the new epoch to
/// write in the same batch.
#[derive(Debug, Default)]
struct EpochUpdate {
    write: Option<(Vec<u8>, u64)>,
    accepted_epoch: Option<u64>,
}

impl SledStore {
    fn send_locked(&self, st: &mut WriterState, req: &SendRequest) -> Result<SendOutcome, SendError> {
        let (sender_rid, sender_dev) = req.sender;
        let idem_key = req.client_message_id.map(|c| {
            let mut k = device_key_with(IDEMPOTENCY, &sender_rid, sender_dev);
            k.extend_from_slice(&c.0);
            k
        });
        if let Some(k) = &idem_key
            && let Some(earlier) = self.earlier_send(k, &req.request_digest)?
        {
            return Ok(earlier);
        }
        // Per-group ordering: decided under the write lock and written in the same batch as
        // the envelope, so two commits for one epoch can never both win.
        let epoch = match req.ordering {
            Some(o) => self.check_epoch(o)?,
            None => EpochUpdate::default(),
        };
        let targets = self.resolve_targets(st, req)?;

        let server_id = self.new_server_id()?;
        let size = req.message.len() as u64;
        let expires_at = req.now_ms.saturating_add(req.ttl_ms);
        let mut batch = sled::Batch::default();
        let mut blobs = BlobCounts::default();
        if !targets.is_empty() {
            blobs.insert_new(
                server_id,
                targets.len() as u32,
                expires_at,
                req.message.as_bytes().clone(),
            );
        }
        let entry = MailboxEntry {
            flags: if req.urgent { flags::URGENT } else { 0 },
            server_id,
            received_at_ms: req.now_ms,
            expires_at_ms: expires_at,
            size: size as u32,
            dropped: 0,
        }
        .encode();
        let mut queued_after = Vec::with_capacity(targets.len());
        for &(rid, dev) in &targets {
            let mut queued = self.queued_bytes(st, &rid, dev)?;
            self.trim_for_quota(
                &mut batch,
                &mut blobs,
                &rid,
                dev,
                &mut queued,
                size,
                req.max_queue_bytes,
            )?;
            queued_after.push(((rid, dev), queued + size));
            batch.insert(mailbox_key(&rid, dev, server_id.seq()), entry.as_slice());
        }
        // The expiry index also carries the idempotency key, which expires with the blob.
        if !targets.is_empty() || idem_key.is_some() {
            batch.insert(
                expiry_key(expires_at, &server_id.0),
                idem_key.clone().unwrap_or_default(),
            );
        }
        if let Some(k) = idem_key {
            let record = IdempotencyRecord {
                server_id,
                digest: req.request_digest,
                accepted_epoch: epoch.accepted_epoch,
            };
            batch.insert(k, record.encode());
        }
        if let Some((key, epoch)) = epoch.write {
            batch.insert(key, &epoch.to_be_bytes());
        }
        let now_state = EntryState::new(req.now_ms);
        for item in &req.outbox {
            let seq = self.db.generate_id().map_err(backend)?;
            batch.insert(
                outbox_key(&item.peer, seq),
                encode_outbox(&now_state, &server_id, &item.record),
            );
        }
        blobs.write(&mut batch);
        self.tree.apply_batch(batch).map_err(backend)?;
        // Only a written batch changes what is queued.
        st.queued.extend(queued_after);
        metrics::counter!("relay_mailbox_ops_total", "op" => "enqueue").increment(targets.len() as u64);
        Ok(SendOutcome {
            server_id,
            delivered_to: targets,
            duplicate: false,
            accepted_epoch: epoch.accepted_epoch,
        })
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
    fn resolve_targets(&self, st: &mut WriterState, req: &SendRequest) -> Result<Vec<(Rid, DeviceId)>, SendError> {
        let mut targets = Vec::new();
        let mut seen = HashSet::new();
        for (index, r) in req.recipients.iter().enumerate() {
            let active = self.cached_devices(st, &r.rid)?;
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

    /// Drops the oldest entries of a device until `incoming` more bytes fit, leaving one
    /// gap marker (at the seq of the newest dropped entry) that counts what was dropped.
    #[allow(clippy::too_many_arguments)]
    fn trim_for_quota(
        &self,
        batch: &mut sled::Batch,
        blobs: &mut BlobCounts,
        rid: &Rid,
        dev: DeviceId,
        queued: &mut u64,
        incoming: u64,
        quota: u64,
    ) -> Result<(), StoreError> {
        if *queued + incoming <= quota {
            return Ok(());
        }
        let mut dropped = 0u64;
        let mut last: Option<(Vec<u8>, MailboxEntry)> = None;
        for item in self.tree.scan_prefix(device_key_with(MAILBOX, rid, dev)) {
            if *queued + incoming <= quota {
                break;
            }
            let (k, v) = item.map_err(backend)?;
            let entry = MailboxEntry::decode(&v)?;
            batch.remove(k.to_vec());
            if entry.is_gap() {
                dropped += entry.dropped;
            } else {
                dropped += 1;
                *queued = queued.saturating_sub(u64::from(entry.size));
                blobs.release(&self.tree, entry.server_id)?;
            }
            last = Some((k.to_vec(), entry));
        }
        if let Some((key, entry)) = last {
            let gap = MailboxEntry {
                flags: flags::GAP,
                server_id: ServerId([0; 16]),
                received_at_ms: entry.received_at_ms,
                expires_at_ms: entry.expires_at_ms,
                size: 0,
                dropped,
            };
            batch.insert(key, gap.encode());
            metrics::counter!("relay_mailbox_ops_total", "op" => "trim").increment(dropped);
        }
        Ok(())
    }

    /// Removes mailbox entries and releases their blobs; returns the bytes freed.
    pub(super) fn remove_entries(
        &self,
        batch: &mut sled::Batch,
        blobs: &mut BlobCounts,
        rid: &Rid,
        dev: DeviceId,
        entries: &[(u64, MailboxEntry)],
    ) -> Result<u64, StoreError> {
        let mut freed = 0u64;
        for (seq, entry) in entries {
            batch.remove(mailbox_key(rid, dev, *seq));
            if !entry.is_gap() {
                blobs.release(&self.tree, entry.server_id)?;
                freed += u64::from(entry.size);
            }
        }
        Ok(freed)
    }

    fn ack_locked(&self, st: &mut WriterState, rid: &Rid, dev: DeviceId, ack: &Ack) -> Result<u64, StoreError> {
        let mut entries: Vec<(u64, MailboxEntry)> = Vec::new();
        if let Some(up_to) = ack.up_to {
            let start = mailbox_key(rid, dev, 0);
            let end = mailbox_key(rid, dev, up_to);
            for item in self.tree.range(start..=end) {
                let (k, v) = item.map_err(backend)?;
                entries.push((mailbox_seq(&k)?, MailboxEntry::decode(&v)?));
            }
        }
        for id in &ack.server_ids {
            // The entry sits at the send's global id; the whole server id must match.
            let seq = id.seq();
            if entries.iter().any(|(s, _)| *s == seq) {
                continue;
            }
            if let Some(v) = self.tree.get(mailbox_key(rid, dev, seq)).map_err(backend)? {
                let entry = MailboxEntry::decode(&v)?;
                if entry.server_id == *id && !entry.is_gap() {
                    entries.push((seq, entry));
                }
            }
        }
        if entries.is_empty() {
            return Ok(0);
        }
        let mut batch = sled::Batch::default();
        let mut blobs = BlobCounts::default();
        let freed = self.remove_entries(&mut batch, &mut blobs, rid, dev, &entries)?;
        blobs.write(&mut batch);
        self.tree.apply_batch(batch).map_err(backend)?;
        if let Some(q) = st.queued.get_mut(&(*rid, dev)) {
            *q = q.saturating_sub(freed);
        }
        metrics::counter!("relay_mailbox_ops_total", "op" => "ack").increment(entries.len() as u64);
        Ok(entries.len() as u64)
    }
}
