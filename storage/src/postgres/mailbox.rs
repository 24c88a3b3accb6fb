//! Sends, receives and acknowledgements: one `blobs` row per send (the bytes, once), one
//! `mailbox` row per recipient device, `gaps` rows for what the quota dropped.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use rand::RngCore as _;

use super::{PostgresStore, Tx, db, dev, device_of, i64_of, q, q01, q1, retrying, rid_of, u64_of, x};
use crate::contract::Mailboxes;
use crate::{
    Ack, Ciphertext, DeviceId, GroupOrdering, OrderingKind, Page, Rid, SendError, SendOutcome, SendRequest, ServerId,
    StoreError, StoredEnvelope, flags,
};

/// Notifications carry at most this many devices (a payload stays under 8000 bytes).
const NOTIFY_BATCH: usize = 100;

impl Mailboxes for PostgresStore {
    async fn send(&self, req: SendRequest) -> Result<SendOutcome, SendError> {
        retrying!(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await.map_err(db)?;
            match send(&tx, &req).await? {
                Sent::New(outcome) => {
                    tx.commit().await.map_err(db)?;
                    Ok::<_, SendError>(outcome)
                }
                Sent::Repeated => {
                    drop(tx); // rolled back: the earlier send stands
                    earlier_send(&c, &req)
                        .await?
                        .ok_or_else(|| SendError::Store(StoreError::Conflict("idempotency record vanished".into())))
                }
                Sent::Earlier(outcome) => Ok(outcome),
            }
        })
    }

    async fn receive(
        &self,
        rid: Rid,
        device: DeviceId,
        after: u64,
        limit: u32,
        now_ms: u64,
    ) -> Result<Page, StoreError> {
        let c = self.client().await?;
        let rows = q(
            &c,
            "(SELECT m.seq, b.rand, b.flags, b.received_at_ms, b.expires_at_ms, b.payload, 0::bigint AS dropped \
               FROM mailbox m JOIN blobs b ON b.seq = m.seq \
              WHERE m.rid = $1 AND m.device = $2 AND m.seq > $3 ORDER BY m.seq LIMIT $4) \
             UNION ALL \
             (SELECT seq, NULL, $5, received_at_ms, expires_at_ms, NULL, dropped FROM gaps \
              WHERE rid = $1 AND device = $2 AND seq > $3 ORDER BY seq LIMIT $4) \
             ORDER BY 1 LIMIT $4",
            &[
                &rid.0.to_vec(),
                &dev(device),
                &i64_of(after),
                &(i64::from(limit) + 1),
                &(flags::GAP as i32),
            ],
        )
        .await?;
        let queue_empty = rows.len() <= limit as usize;
        let mut envelopes = Vec::with_capacity(rows.len());
        let mut next_cursor = after;
        for row in rows.iter().take(limit as usize) {
            let seq = u64_of(row.get(0));
            next_cursor = seq;
            let expires_at_ms = u64_of(row.get(4));
            if expires_at_ms <= now_ms {
                continue;
            }
            let rand: Option<&[u8]> = row.get(1);
            let payload: Option<Vec<u8>> = row.get(5);
            envelopes.push(StoredEnvelope {
                server_id: match rand {
                    Some(r) => server_id(seq, r)?,
                    None => ServerId([0; 16]),
                },
                seq,
                received_at_ms: u64_of(row.get(3)),
                expires_at_ms,
                flags: row.get::<_, i32>(2) as u32,
                message: Ciphertext::from_stored(payload.map(Bytes::from).unwrap_or_default()),
                dropped: u64_of(row.get(6)),
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
        if ack.up_to.is_none() && ack.server_ids.is_empty() {
            return Ok(0);
        }
        let (seqs, rands): (Vec<i64>, Vec<Vec<u8>>) = ack
            .server_ids
            .iter()
            .map(|id| (i64_of(id.seq()), id.0[8..].to_vec()))
            .unzip();
        let up_to = ack.up_to.map_or(-1, i64_of);
        let n = retrying!(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await.map_err(db)?;
            let (r, d) = (rid.0.to_vec(), dev(device));
            if q01(
                &tx,
                "SELECT 1 FROM devices WHERE rid = $1 AND device = $2 FOR NO KEY UPDATE",
                &[&r, &d],
            )
            .await?
            .is_none()
            {
                return Ok::<_, StoreError>(0);
            }
            let gone = q(
                &tx,
                "DELETE FROM mailbox m USING blobs b \
                 WHERE m.rid = $1 AND m.device = $2 AND b.seq = m.seq \
                   AND (m.seq <= $3 OR (m.seq, b.rand) IN (SELECT * FROM unnest($4::bigint[], $5::bytea[]))) \
                 RETURNING m.seq, m.size",
                &[&r, &d, &up_to, &seqs, &rands],
            )
            .await?;
            let gaps = x(
                &tx,
                "DELETE FROM gaps WHERE rid = $1 AND device = $2 AND seq <= $3",
                &[&r, &d, &up_to],
            )
            .await?;
            if gone.is_empty() && gaps == 0 {
                return Ok(0);
            }
            let bytes: i64 = gone.iter().map(|row| i64::from(row.get::<_, i32>(1))).sum();
            x(
                &tx,
                "UPDATE devices SET queued = queued - $3 WHERE rid = $1 AND device = $2",
                &[&r, &d, &bytes],
            )
            .await?;
            let released: Vec<i64> = gone.iter().map(|row| row.get(0)).collect();
            release_blobs(&tx, &released).await?;
            tx.commit().await.map_err(db)?;
            Ok(gone.len() as u64 + gaps)
        })?;
        metrics::counter!("relay_mailbox_ops_total", "op" => "ack").increment(n);
        Ok(n)
    }
}

enum Sent {
    New(SendOutcome),
    /// A concurrent send with the same client message id committed first.
    Repeated,
    /// An earlier send had the same client message id.
    Earlier(SendOutcome),
}

async fn send(tx: &Tx<'_>, req: &SendRequest) -> Result<Sent, SendError> {
    if let Some(earlier) = earlier_send(tx, req).await? {
        return Ok(Sent::Earlier(earlier));
    }
    let (new_epoch, accepted_epoch) = match req.ordering {
        Some(o) => check_epoch(tx, o).await?,
        None => (None, None),
    };
    let targets = lock_targets(tx, req).await?;
    let mut rand = [0u8; 8];
    rand::rng().fill_bytes(&mut rand);
    let expires_at = req.now_ms.saturating_add(req.ttl_ms);
    let size = req.message.len() as i64;
    for (rid, device, queued) in &targets {
        if queued + size > i64_of(req.max_queue_bytes) {
            trim(tx, rid, *device, queued + size - i64_of(req.max_queue_bytes)).await?;
        }
    }
    // The seq is taken only now, holding every recipient's row (see the module's notes on
    // ordering); the blob, the mailbox rows, the quotas and the wake-ups in one statement.
    let seq: i64 = if targets.is_empty() {
        q1(tx, "SELECT nextval('send_seq')", &[]).await?.get(0)
    } else {
        let f = (if req.urgent { flags::URGENT } else { 0 }) | (if req.report { flags::REPORT } else { 0 });
        let rids: Vec<Vec<u8>> = targets.iter().map(|t| t.0.0.to_vec()).collect();
        let devices: Vec<i32> = targets.iter().map(|t| dev(t.1)).collect();
        let keys: Vec<(Rid, DeviceId)> = targets.iter().map(|(r, d, _)| (*r, *d)).collect();
        let wakeups: Vec<String> = keys.chunks(NOTIFY_BATCH).map(super::live::mailbox_payload).collect();
        q1(
            tx,
            "WITH s AS (SELECT nextval('send_seq') AS seq), \
             b AS (INSERT INTO blobs (seq, rand, flags, received_at_ms, expires_at_ms, payload) \
             SELECT seq, $1, $2, $3, $4, $5 FROM s), \
             m AS (INSERT INTO mailbox (rid, device, seq, size, urgent) \
             SELECT t.r, t.d, s.seq, $6, $7 FROM s, unnest($8::bytea[], $9::int[]) AS t(r, d)), \
             u AS (UPDATE devices SET queued = queued + $10 FROM unnest($8::bytea[], $9::int[]) AS t(r, d) \
             WHERE devices.rid = t.r AND devices.device = t.d), \
             n AS (SELECT pg_notify('relay_mailbox', p) FROM unnest($11::text[]) AS p) \
             SELECT seq, (SELECT count(*) FROM n) FROM s",
            &[
                &rand.to_vec(),
                &(f as i32),
                &i64_of(req.now_ms),
                &i64_of(expires_at),
                &req.message.as_bytes().as_ref(),
                &(size as i32),
                &req.urgent,
                &rids,
                &devices,
                &size,
                &wakeups,
            ],
        )
        .await?
        .get(0)
    };
    let server_id = server_id(u64_of(seq), &rand)?;
    if let Some(cmid) = req.client_message_id {
        let inserted = x(
            tx,
            "INSERT INTO idempotency (rid, device, cmid, server_id, digest, accepted_epoch, expires_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            &[
                &req.sender.0.0.to_vec(),
                &dev(req.sender.1),
                &cmid.0.to_vec(),
                &server_id.0.to_vec(),
                &req.request_digest.to_vec(),
                &accepted_epoch.map(i64_of),
                &i64_of(expires_at),
            ],
        )
        .await?;
        if inserted == 0 {
            return Ok(Sent::Repeated);
        }
    }
    if let Some((group_key, epoch)) = new_epoch {
        x(
            tx,
            "UPDATE groups SET epoch = $2 WHERE group_key = $1",
            &[&group_key.to_vec(), &i64_of(epoch)],
        )
        .await?;
    }
    for item in &req.outbox {
        x(
            tx,
            "INSERT INTO outbox (peer, seq, envelope_id, created_at_ms, attempts, next_attempt_ms, record) \
             VALUES ($1, nextval('send_seq'), $2, $3, 0, $3, $4)",
            &[
                &item.peer,
                &server_id.0.to_vec(),
                &i64_of(req.now_ms),
                &item.record.as_ref(),
            ],
        )
        .await?;
    }
    if !req.outbox.is_empty() {
        x(tx, "SELECT pg_notify('relay_outbox', '')", &[]).await?;
    }
    metrics::counter!("relay_mailbox_ops_total", "op" => "enqueue").increment(targets.len() as u64);
    Ok(Sent::New(SendOutcome {
        server_id,
        delivered_to: targets.into_iter().map(|(r, d, _)| (r, d)).collect(),
        duplicate: false,
        accepted_epoch,
    }))
}

/// The outcome of an earlier send with the same client message id, if there was one.
async fn earlier_send(
    c: &impl deadpool_postgres::GenericClient,
    req: &SendRequest,
) -> Result<Option<SendOutcome>, SendError> {
    let Some(cmid) = req.client_message_id else {
        return Ok(None);
    };
    let Some(row) = q01(
        c,
        "SELECT server_id, digest, accepted_epoch FROM idempotency WHERE rid = $1 AND device = $2 AND cmid = $3",
        &[&req.sender.0.0.to_vec(), &dev(req.sender.1), &cmid.0.to_vec()],
    )
    .await?
    else {
        return Ok(None);
    };
    if row.get::<_, &[u8]>(1) != req.request_digest.as_slice() {
        return Err(SendError::ClientMessageIdConflict);
    }
    Ok(Some(SendOutcome {
        server_id: ServerId(super::array(row.get::<_, &[u8]>(0), "server id")?),
        delivered_to: Vec::new(),
        duplicate: true,
        accepted_epoch: row.get::<_, Option<i64>>(2).map(u64_of),
    }))
}

/// RFC 9420 section 14 / RFC 9750 section 5.2: the first commit for an epoch wins. A commit
/// locks the group's row (created if new) until the send commits.
async fn check_epoch(tx: &Tx<'_>, o: GroupOrdering) -> Result<(Option<([u8; 32], u64)>, Option<u64>), SendError> {
    let key = o.group_key.to_vec();
    let current: Option<i64> = if o.kind == OrderingKind::Commit {
        x(
            tx,
            "INSERT INTO groups (group_key) VALUES ($1) ON CONFLICT DO NOTHING",
            &[&key],
        )
        .await?;
        q1(tx, "SELECT epoch FROM groups WHERE group_key = $1 FOR UPDATE", &[&key])
            .await?
            .get(0)
    } else {
        q01(tx, "SELECT epoch FROM groups WHERE group_key = $1 FOR SHARE", &[&key])
            .await?
            .and_then(|r| r.get(0))
    };
    let current = current.map(u64_of);
    match (o.kind, current) {
        (OrderingKind::Commit, None) if o.epoch == 0 => Ok((Some((o.group_key, 1)), Some(0))),
        (OrderingKind::Commit, None) => Err(SendError::UnknownGroup),
        (OrderingKind::Commit, Some(c)) if o.epoch == c => Ok((Some((o.group_key, c + 1)), Some(c))),
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
        _ => Ok((None, None)),
    }
}

/// Every recipient device, resolved before anything is written (an unknown address or
/// device fails the whole send), then their rows locked in order, with what they queue.
async fn lock_targets(tx: &Tx<'_>, req: &SendRequest) -> Result<Vec<(Rid, DeviceId, i64)>, SendError> {
    let rids: Vec<Vec<u8>> = req.recipients.iter().map(|r| r.rid.0.to_vec()).collect();
    // Every recipient's devices, their rows locked in order; a device deleted meanwhile is
    // simply not there (its ids are never reused).
    let rows = q(
        tx,
        "SELECT rid, device, queued FROM devices WHERE rid = ANY($1) ORDER BY rid, device FOR NO KEY UPDATE",
        &[&rids],
    )
    .await?;
    let mut by_rid: HashMap<Rid, Vec<(DeviceId, i64)>> = HashMap::new();
    for row in &rows {
        by_rid
            .entry(rid_of(row.get(0))?)
            .or_default()
            .push((device_of(row.get(1)), row.get(2)));
    }
    let mut targets = Vec::new();
    let mut seen = HashSet::new();
    for (index, r) in req.recipients.iter().enumerate() {
        let active = by_rid.get(&r.rid).map(Vec::as_slice).unwrap_or_default();
        if active.is_empty() {
            return Err(SendError::UnknownRecipient { index });
        }
        if let Some(wanted) = &r.devices
            && wanted.iter().any(|w| !active.iter().any(|(d, _)| d == w))
        {
            return Err(SendError::UnknownDevice { index });
        }
        for (d, queued) in active {
            let chosen = r.devices.as_ref().is_none_or(|w| w.contains(d));
            if chosen && seen.insert((r.rid, *d)) {
                targets.push((r.rid, *d, *queued));
            }
        }
    }
    Ok(targets)
}

/// Drops the device's oldest slots until `excess` bytes are gone, replaced by one gap at
/// the newest dropped seq (which also counts the gaps it absorbed). The caller holds the
/// device's row.
async fn trim(tx: &Tx<'_>, rid: &Rid, device: DeviceId, excess: i64) -> Result<(), StoreError> {
    let (r, d) = (rid.0.to_vec(), dev(device));
    let (mut freed, mut dropped) = (0i64, 0i64);
    let mut last: Option<(i64, i64, i64)> = None;
    let (mut entries, mut gaps) = (Vec::new(), Vec::new());
    'pages: loop {
        let after = last.map_or(0, |l| l.0);
        let rows = q(
            tx,
            "(SELECT m.seq, m.size, 0::bigint AS dropped, b.received_at_ms, b.expires_at_ms, false AS gap \
               FROM mailbox m JOIN blobs b ON b.seq = m.seq WHERE m.rid = $1 AND m.device = $2 AND m.seq > $3 \
              ORDER BY m.seq LIMIT 256) \
             UNION ALL \
             (SELECT seq, 0, dropped, received_at_ms, expires_at_ms, true FROM gaps \
              WHERE rid = $1 AND device = $2 AND seq > $3 ORDER BY seq LIMIT 256) \
             ORDER BY 1 LIMIT 256",
            &[&r, &d, &after],
        )
        .await?;
        if rows.is_empty() {
            break;
        }
        for row in rows {
            if freed >= excess {
                break 'pages;
            }
            let seq: i64 = row.get(0);
            if row.get::<_, bool>(5) {
                dropped += row.get::<_, i64>(2);
                gaps.push(seq);
            } else {
                freed += i64::from(row.get::<_, i32>(1));
                dropped += 1;
                entries.push(seq);
            }
            last = Some((seq, row.get(3), row.get(4)));
        }
    }
    let Some((seq, received, expires)) = last else {
        return Ok(());
    };
    x(
        tx,
        "DELETE FROM gaps WHERE rid = $1 AND device = $2 AND seq = ANY($3)",
        &[&r, &d, &gaps],
    )
    .await?;
    x(
        tx,
        "DELETE FROM mailbox WHERE rid = $1 AND device = $2 AND seq = ANY($3)",
        &[&r, &d, &entries],
    )
    .await?;
    x(
        tx,
        "INSERT INTO gaps (rid, device, seq, dropped, received_at_ms, expires_at_ms) VALUES ($1, $2, $3, $4, $5, $6)",
        &[&r, &d, &seq, &dropped, &received, &expires],
    )
    .await?;
    x(
        tx,
        "UPDATE devices SET queued = queued - $3 WHERE rid = $1 AND device = $2",
        &[&r, &d, &freed],
    )
    .await?;
    release_blobs(tx, &entries).await?;
    metrics::counter!("relay_mailbox_ops_total", "op" => "trim").increment(u64_of(dropped));
    Ok(())
}

/// Deletes the blobs among `seqs` that no device holds any more. Their rows are locked
/// first, so of two transactions releasing one blob the later sees the earlier's deletions.
pub(crate) async fn release_blobs(tx: &Tx<'_>, seqs: &[i64]) -> Result<(), StoreError> {
    if seqs.is_empty() {
        return Ok(());
    }
    let seqs = seqs.to_vec();
    q(
        tx,
        "SELECT seq FROM blobs WHERE seq = ANY($1) ORDER BY seq FOR UPDATE",
        &[&seqs],
    )
    .await?;
    x(
        tx,
        "DELETE FROM blobs b WHERE b.seq = ANY($1) AND NOT EXISTS (SELECT 1 FROM mailbox m WHERE m.seq = b.seq)",
        &[&seqs],
    )
    .await?;
    Ok(())
}

fn server_id(seq: u64, rand: &[u8]) -> Result<ServerId, StoreError> {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&seq.to_be_bytes());
    id[8..].copy_from_slice(rand.get(..8).ok_or(StoreError::Corrupt("blob id"))?);
    Ok(ServerId(id))
}
