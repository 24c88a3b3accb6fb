//! `/v1/messages`: send (one MLS message to many recipients, stored once), receive (pages
//! and long-polls) and acknowledge.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::{RawQuery, Request, State};
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use prost::Message as _;
use relay_core::envelope::{MessageContentType, MessageKind};
use relay_core::recipients::{Duplicates, Recipient, resolve};
use relay_core::wire::v1;
use relay_core::{Address, ClientMessageId, DeviceId, Envelope, ErrorCode, Limits, ServerId};
use relay_net::clock::now_ms;
use storage::prelude::*;
use storage::{Ack, OutboxItem, Page, RecipientSpec, SendError, SendRequest};

use super::AppState;
use super::extract::{SMALL_BODY_LIMIT, authenticate, proto_response, read_proto};
use crate::error::ApiError;

/// DESIGN §5's limits of a send, before anything is stored: messages per (sender,
/// recipient), one sender's share of each recipient's queue, and bytes into each recipient
/// from everyone. A refusal names the limit and
/// the longest wait; what the earlier recipients' buckets gave is not returned (a refused
/// send costs the sender, which is the point).
fn check_send_limits(
    state: &AppState,
    sender: relay_core::Rid,
    recipients: &[Recipient],
    bytes: usize,
) -> Result<(), ApiError> {
    let abuse = &state.inner.abuse;
    let now = abuse.now_ns();
    let mut pair_wait = Duration::ZERO;
    let mut bytes_wait = Duration::ZERO;
    let mut share_wait = Duration::ZERO;
    for r in recipients {
        if let Err(w) = abuse.sender_recipient.take(&(sender, r.rid), 1, now) {
            pair_wait = pair_wait.max(w);
        }
        if let Some(share) = &abuse.sender_share
            && let Err(w) = share.take(&(sender, r.rid), bytes as u64, now)
        {
            share_wait = share_wait.max(w);
        }
        if let Err(w) = abuse.recipient_bytes.take(&r.rid, bytes as u64, now) {
            bytes_wait = bytes_wait.max(w);
        }
    }
    if !pair_wait.is_zero() {
        metrics::counter!("relay_requests_limited_total", "limit" => "sender_recipient").increment(1);
        return Err(ApiError::limited(
            ErrorCode::SenderRecipientLimited,
            "too many messages from this sender to a recipient",
            pair_wait,
        ));
    }
    if !share_wait.is_zero() {
        metrics::counter!("relay_requests_limited_total", "limit" => "sender_share").increment(1);
        return Err(ApiError::limited(
            ErrorCode::SenderShareExceeded,
            "this sender holds its share of a recipient's queue",
            share_wait,
        ));
    }
    if !bytes_wait.is_zero() {
        metrics::counter!("relay_requests_limited_total", "limit" => "recipient_bytes").increment(1);
        return Err(ApiError::limited(
            ErrorCode::RecipientInboundLimited,
            "a recipient is receiving too much",
            bytes_wait,
        ));
    }
    Ok(())
}

pub(super) async fn send(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let sender = authenticate(&state, req.headers()).await?;
    if state.inner.store.is_suspended(&sender.rid) {
        return Err(ApiError::new(ErrorCode::AddressSuspended, "this address is suspended"));
    }
    let limits = &state.inner.limits;
    let body: v1::SendRequest = read_proto(&state, req, limits.max_send_body_bytes()).await?;
    let checked = check_send(&body, limits)?;
    let recipients = resolve(
        &state.inner.rid_key,
        body.recipients.iter().map(|r| r.address.as_str()),
        Duplicates::Refuse,
    )?;
    check_send_limits(&state, sender.rid, &recipients, body.message.len())?;
    // During a K_rid rotation the recipients' records move to their new rids first.
    state
        .rekey(recipients.iter().map(|r| r.address.clone()).collect())
        .await?;
    // The digest only tells a retry from a reused client message id: without an id there is
    // nothing to compare it with.
    let digest = match checked.client_message_id {
        Some(_) => request_digest(&checked.envelope, &recipients, &body),
        None => [0; 32],
    };
    let mut specs: Vec<RecipientSpec> = recipients
        .iter()
        .zip(&body.recipients)
        .map(|(r, b)| RecipientSpec {
            rid: r.rid,
            devices: (!b.device_ids.is_empty()).then(|| b.device_ids.iter().map(|d| DeviceId(*d)).collect()),
        })
        .collect();
    // Recipients served by peer carriers go to the durable outbox, in the same batch.
    let (outbox, peer_recipients) =
        route_remote(&state, &body, &recipients, &checked.envelope, &mut specs, sender.key()).await?;
    let is_welcome = checked.envelope.kind() == MessageKind::Welcome;
    if is_welcome {
        add_welcome_recipients(&state, &checked.envelope, &mut specs).await?;
    }
    let request = SendRequest {
        sender: sender.key(),
        recipients: specs,
        ordering: crate::mls::ordering(&checked.envelope, &state.inner.mls),
        message: checked.envelope.into_ciphertext(),
        client_message_id: checked.client_message_id,
        request_digest: digest,
        urgent: body.urgent,
        report: false,
        now_ms: now_ms(),
        ttl_ms: limits.ttl_ms,
        max_queue_bytes: limits.max_queue_bytes_per_device,
        outbox,
    };
    let size = request.message.len() as u64;
    // Storage wakes live receivers (or hands devices to the push notifier) and signals the
    // interconnect's dispatcher once the envelope is durable.
    let outcome = state.inner.store.send(request).await.map_err(|e| match e {
        SendError::UnknownDevice { .. } if is_welcome => {
            ApiError::new(ErrorCode::UnknownKeyPackage, "a new member's device no longer exists")
        }
        other => other.into(),
    })?;
    metrics::counter!("relay_envelopes_stored_total").increment(u64::from(!outcome.duplicate));
    if is_welcome && !outcome.duplicate {
        metrics::counter!("relay_welcomes_total").increment(1);
    }
    metrics::counter!("relay_envelope_bytes_stored_total").increment(if outcome.duplicate { 0 } else { size });
    let resp = v1::SendResponse {
        server_id: Bytes::copy_from_slice(&outcome.server_id.0),
        recipient_devices: outcome.delivered_to.len() as u32,
        duplicate: outcome.duplicate,
        accepted_epoch: outcome.accepted_epoch,
        peer_recipients: if outcome.duplicate { 0 } else { peer_recipients },
    };
    let status = if outcome.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(proto_response(status, &resp))
}

/// A send whose shape is valid: the message parses, its kind fits the recipient list.
struct CheckedSend {
    envelope: Envelope,
    client_message_id: Option<ClientMessageId>,
}

fn check_send(body: &v1::SendRequest, limits: &Limits) -> Result<CheckedSend, ApiError> {
    if body.recipients.len() > limits.max_recipients {
        return Err(ApiError::new(
            ErrorCode::TooManyRecipients,
            format!(
                "{} recipients, limit is {}",
                body.recipients.len(),
                limits.max_recipients
            ),
        ));
    }
    let client_message_id =
        match body.client_message_id.len() {
            0 => None,
            _ => Some(ClientMessageId::from_slice(&body.client_message_id).ok_or_else(|| {
                ApiError::new(ErrorCode::InvalidClientMessageId, "client_message_id must be 16 bytes")
            })?),
        };
    let envelope = Envelope::parse(body.message.clone(), limits)?;
    let is_commit = envelope
        .header()
        .is_some_and(|h| h.content_type == MessageContentType::Commit);
    match envelope.kind() {
        MessageKind::KeyPackage => Err(ApiError::new(
            ErrorCode::UnexpectedMessageType,
            "KeyPackages are uploaded to /v1/keypackages, not sent",
        )),
        MessageKind::Welcome if !body.recipients.is_empty() => Err(ApiError::new(
            ErrorCode::InvalidRecipients,
            "a Welcome is routed by the KeyPackageRefs it names: list no recipients",
        )),
        MessageKind::Welcome => Ok(()),
        // A commit reaches the DS even when its group has no other member: it sets the epoch.
        _ if body.recipients.is_empty() && !is_commit => Err(ApiError::new(
            ErrorCode::NoRecipients,
            "a send needs at least one recipient",
        )),
        _ => Ok(()),
    }?;
    Ok(CheckedSend {
        envelope,
        client_message_id,
    })
}

/// The digest that tells a retried send (same client message id, same content) from a
/// reused id: the message, each recipient's rid and device ids, and the urgency.
fn request_digest(envelope: &Envelope, recipients: &[Recipient], body: &v1::SendRequest) -> [u8; 32] {
    let mut digest = blake3::Hasher::new_derive_key("rcs-relay 2026-11 send request digest v1");
    digest.update(envelope.ciphertext().as_bytes());
    for (r, b) in recipients.iter().zip(&body.recipients) {
        digest.update(&r.rid.0);
        for d in &b.device_ids {
            digest.update(&d.to_be_bytes());
        }
        digest.update(b"|");
    }
    digest.update(&[u8::from(body.urgent)]);
    *digest.finalize().as_bytes()
}

/// Asks the interconnect where the recipients go; keeps the local ones in `specs` and
/// returns the sealed outbox items for the others, and how many recipients they hold.
async fn route_remote(
    state: &AppState,
    body: &v1::SendRequest,
    recipients: &[Recipient],
    envelope: &Envelope,
    specs: &mut Vec<RecipientSpec>,
    sender: (storage::Rid, DeviceId),
) -> Result<(Vec<OutboxItem>, u32), ApiError> {
    let Some(ic) = state.interconnect() else {
        return Ok((Vec::new(), 0));
    };
    if recipients.is_empty() {
        return Ok((Vec::new(), 0));
    }
    let addresses: Vec<Address> = recipients.iter().map(|r| r.address.clone()).collect();
    let plan = ic.route(&addresses).await?;
    if plan.is_local_only() {
        return Ok((Vec::new(), 0));
    }
    for (index, r) in body.recipients.iter().enumerate() {
        if !plan.local.contains(&index) && !r.device_ids.is_empty() {
            return Err(ApiError::new(
                ErrorCode::InvalidRecipients,
                format!("recipient {index} is served by a peer carrier: name no device ids"),
            ));
        }
    }
    *specs = plan.local.iter().map(|&i| specs[i].clone()).collect();
    let remote = (recipients.len() - plan.local.len()) as u32;
    Ok((
        ic.hand_over(&plan, envelope.ciphertext().as_bytes(), body.urgent, sender),
        remote,
    ))
}

/// A Welcome's recipients are the devices that uploaded the KeyPackages it names.
async fn add_welcome_recipients(
    state: &AppState,
    envelope: &Envelope,
    specs: &mut Vec<RecipientSpec>,
) -> Result<(), ApiError> {
    let refs = envelope.welcome_refs().to_vec();
    let targets = state
        .inner
        .store
        .devices_for_key_packages(refs)
        .await?
        .map_err(|index| {
            ApiError::new(
                ErrorCode::UnknownKeyPackage,
                format!("new member {index} names an unknown KeyPackage"),
            )
        })?;
    for (rid, device) in targets {
        match specs.iter_mut().find(|r| r.rid == rid) {
            Some(r) => r.devices.get_or_insert_with(Vec::new).push(device),
            None => specs.push(RecipientSpec {
                rid,
                devices: Some(vec![device]),
            }),
        }
    }
    Ok(())
}

/// `after`, `limit`, `wait` of a receive.
#[derive(Debug, PartialEq, Eq)]
struct ReceiveQuery {
    after: u64,
    limit: u32,
    wait: Duration,
}

fn parse_receive_query(raw: Option<&str>, limits: &Limits) -> Result<ReceiveQuery, ApiError> {
    // `a=1&b=2`; percent-decoding is unnecessary: every value is a number.
    let params: HashMap<&str, &str> = raw
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    let after = match params.get("after") {
        None => 0,
        Some(v) => v.parse::<u64>().map_err(|_| {
            ApiError::new(
                ErrorCode::InvalidCursor,
                "after must be a cursor returned by a previous receive",
            )
        })?,
    };
    let limit = match params.get("limit") {
        None => 100.min(limits.max_page),
        Some(v) => match v.parse::<u32>() {
            Ok(n) if (1..=limits.max_page).contains(&n) => n,
            _ => {
                return Err(ApiError::new(
                    ErrorCode::InvalidLimit,
                    format!("limit must be 1..={}", limits.max_page),
                ));
            }
        },
    };
    let wait = match params.get("wait") {
        None => 0,
        Some(v) => match v.parse::<u32>() {
            Ok(n) if n <= limits.max_wait_secs => n,
            _ => {
                return Err(ApiError::new(
                    ErrorCode::InvalidWait,
                    format!("wait must be 0..={} seconds", limits.max_wait_secs),
                ));
            }
        },
    };
    Ok(ReceiveQuery {
        after,
        limit,
        wait: Duration::from_secs(u64::from(wait)),
    })
}

/// A stored envelope as the client sees it: a delivery report's payload is the encoded
/// report, moved from `message` to `report`.
fn wire_envelope(e: storage::StoredEnvelope) -> v1::Envelope {
    let mut message = e.message.into_bytes();
    let report = if e.flags & storage::flags::REPORT == 0 {
        None
    } else {
        Some(v1::DeliveryReport::decode(std::mem::take(&mut message)).unwrap_or_default())
    };
    v1::Envelope {
        server_id: Bytes::copy_from_slice(&e.server_id.0),
        seq: e.seq,
        received_at_ms: e.received_at_ms,
        expires_at_ms: e.expires_at_ms,
        flags: e.flags,
        message,
        dropped: e.dropped,
        report,
    }
}

pub(super) async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let device = authenticate(&state, &headers).await?;
    let q = parse_receive_query(raw.as_deref(), &state.inner.limits)?;
    let page = if q.wait.is_zero() {
        state
            .inner
            .store
            .receive(device.rid, device.id, q.after, q.limit, now_ms())
            .await?
    } else {
        long_poll(&state, device.key(), &q).await?
    };
    let resp = v1::ReceiveResponse {
        envelopes: page.envelopes.into_iter().map(wire_envelope).collect(),
        next_cursor: page.next_cursor,
        queue_empty: page.queue_empty,
    };
    Ok(proto_response(StatusCode::OK, &resp))
}

/// Watches the device *before* each read (no lost wake-ups), then sleeps until woken, the
/// deadline, or shutdown.
async fn long_poll(state: &AppState, key: storage::watch::DeviceKey, q: &ReceiveQuery) -> Result<Page, ApiError> {
    let store = &state.inner.store;
    let sub = store.watchers().subscribe(key);
    let deadline = tokio::time::Instant::now() + q.wait;
    loop {
        let notified = sub.notify().notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let page = store.receive(key.0, key.1, q.after, q.limit, now_ms()).await?;
        if !page.envelopes.is_empty() {
            return Ok(page);
        }
        tokio::select! {
            () = notified => {}
            () = tokio::time::sleep_until(deadline) => return Ok(page),
            () = state.inner.shutdown.cancelled() => return Ok(page),
        }
        // A revoked (or deleted) device's wait ends here, with the 401 its credential now gets.
        if !store.devices(key.0).await?.contains(&key.1) {
            return Err(ApiError::new(ErrorCode::Unauthorized, "this device no longer exists"));
        }
    }
}

pub(super) async fn ack(State(state): State<AppState>, req: Request) -> Result<StatusCode, ApiError> {
    let device = authenticate(&state, req.headers()).await?;
    let body: v1::AckRequest = read_proto(&state, req, SMALL_BODY_LIMIT).await?;
    let server_ids = body
        .server_ids
        .iter()
        .map(|b| ServerId::from_slice(b))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidServerId, "server ids are 16 bytes"))?;
    let ack = Ack {
        server_ids,
        up_to: (body.up_to > 0).then_some(body.up_to),
    };
    state.inner.store.ack(device.rid, device.id, ack).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(q: &str, expect: Result<(u64, u32, u64), ErrorCode>) {
        let got = parse_receive_query(Some(q), &Limits::default())
            .map(|r| (r.after, r.limit, r.wait.as_secs()))
            .map_err(|e| e.code);
        assert_eq!(got, expect, "{q}");
    }

    #[test]
    fn receive_query() {
        check("", Ok((0, 100, 0)));
        check("after=5&limit=10&wait=30", Ok((5, 10, 30)));
        check("after=-1", Err(ErrorCode::InvalidCursor));
        check("after=abc", Err(ErrorCode::InvalidCursor));
        check("limit=0", Err(ErrorCode::InvalidLimit));
        check("limit=1001", Err(ErrorCode::InvalidLimit));
        check("wait=61", Err(ErrorCode::InvalidWait));
        check("wait=x", Err(ErrorCode::InvalidWait));
    }
}
