//! The inbound endpoints a peer calls (over the mutual-TLS listener): the directory,
//! `notify` (an envelope for our subscribers) and `keyMaterial` (KeyPackage claims).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path as AxPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use relay_core::interconnect::Route;
use relay_core::recipients::{Duplicates, RecipientError, resolve};
use relay_core::{ClientMessageId, DeviceId, Envelope, Rid};
use storage::prelude::*;
use storage::{RecipientSpec, SendError, SendRequest};

use crate::Interconnect;
use crate::wire::{KeyMaterialRequest, KeyMaterialResponse, NotifyBody, RemoteKeyPackage};

/// The peer a request came from (set per connection by the listener).
#[derive(Debug, Clone)]
pub struct PeerName(pub String);

/// Largest request body a peer may send.
const BODY_LIMIT: usize = 4 << 20;

fn err(status: StatusCode, code: &'static str) -> Response {
    (status, Json(serde_json::json!({ "error": code }))).into_response()
}

/// A body that is not the JSON asked for: 415 without the JSON media type, 413 past the
/// body limit, 400 `invalid_body` otherwise.
fn rejected(r: &axum::extract::rejection::JsonRejection) -> (StatusCode, &'static str) {
    use axum::extract::rejection::JsonRejection;
    match r {
        JsonRejection::MissingJsonContentType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
        JsonRejection::BytesRejection(b) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
        }
        _ => (StatusCode::BAD_REQUEST, "invalid_body"),
    }
}

impl Interconnect {
    /// The inbound router (needs a [`PeerName`] extension per connection).
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/.well-known/mimi-protocol-directory", get(directory))
            .route("/mimi/v1/notify/{envelope_id}", post(notify))
            .route("/mimi/v1/keyMaterial", post(key_material))
            // The extractors enforce the limit: 413 `body_too_large` in JSON like every refusal.
            .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
            // Outermost: early errors wait for the rest of the body (bounded), so a peer's
            // HTTP/2 client reads them instead of a reset stream.
            .layer(axum::middleware::from_fn(|req, next| {
                relay_net::drain::drain_up_to(BODY_LIMIT + (64 << 10), req, next)
            }))
            .with_state(Arc::clone(self))
    }

    fn rate_limited(&self, peer: &str) -> Option<Response> {
        if self.store.is_switched_off(&storage::switch::peer(peer)) {
            // The peer retries a 503, so what it has for us waits in its outbox; a few seconds
            // apart, so deliveries resume soon after the switch is back on.
            let mut r = err(StatusCode::SERVICE_UNAVAILABLE, "peer_switched_off");
            r.headers_mut()
                .insert("retry-after", http::HeaderValue::from_static("5"));
            return Some(r);
        }
        let table = self.table();
        let p = table.peer(peer)?;
        p.limiter.check().err().map(|_| {
            let mut r = err(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
            r.headers_mut()
                .insert("retry-after", http::HeaderValue::from_static("1"));
            r
        })
    }
}

async fn directory(State(ic): State<Arc<Interconnect>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "domain": ic.cfg.domain,
        "notify": "/mimi/v1/notify/{envelopeId}",
        "keyMaterial": "/mimi/v1/keyMaterial",
    }))
}

async fn notify(
    State(ic): State<Arc<Interconnect>>,
    Extension(PeerName(peer)): Extension<PeerName>,
    AxPath(envelope_id): AxPath<String>,
    body: Result<Json<NotifyBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Some(r) = ic.rate_limited(&peer) {
        return r;
    }
    let count = |result: &'static str| {
        metrics::counter!("interconnect_inbound_total", "peer" => peer.clone(), "result" => result).increment(1);
    };
    let invalid = |code| {
        count("invalid");
        err(StatusCode::BAD_REQUEST, code)
    };
    let Some(id) = relay_core::hex::decode(&envelope_id).and_then(|b| <[u8; 16]>::try_from(b).ok()) else {
        return invalid("invalid_envelope_id");
    };
    let body = match body {
        Ok(Json(body)) => body,
        Err(r) => {
            count("invalid");
            let (status, code) = rejected(&r);
            return err(status, code);
        }
    };
    if body.recipients.is_empty() || body.recipients.len() > ic.limits.max_recipients {
        return invalid("invalid_recipients");
    }
    let Ok(message) = B64.decode(&body.message) else {
        return invalid("invalid_body");
    };
    let Ok(envelope) = Envelope::parse(Bytes::from(message), &ic.limits) else {
        return invalid("invalid_mls");
    };
    // A peer's list is merged rather than refused when it names a number twice.
    let Ok(resolved) = resolve(
        &ic.rid_key,
        body.recipients.iter().map(String::as_str),
        Duplicates::Merge,
    ) else {
        return invalid("invalid_address");
    };
    let table = ic.table();
    // Only numbers we serve: a peer must not use us as a transit.
    if resolved.iter().any(|r| table.routing.route(&r.address) != Route::Local) {
        count("misrouted");
        return err(StatusCode::MISDIRECTED_REQUEST, "not_served_here");
    }
    // During a K_rid rotation, the recipients' records move to their new rids first.
    for r in &resolved {
        if let Err(e) = ic.store.rekey_address(&ic.rid_keys, &r.address).await {
            tracing::error!(cause = %e, "re-keying a recipient");
            return err(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable");
        }
    }
    let mut digest = blake3::Hasher::new();
    digest.update(envelope.ciphertext().as_bytes());
    for r in &body.recipients {
        digest.update(r.as_bytes());
        digest.update(&[0]);
    }
    digest.update(&[u8::from(body.urgent)]);
    let peer_rid = Rid(*blake3::hash(format!("peer:{peer}").as_bytes()).as_bytes());
    let request = SendRequest {
        sender: (peer_rid, DeviceId(0)),
        recipients: resolved
            .iter()
            .map(|r| RecipientSpec {
                rid: r.rid,
                devices: None,
            })
            .collect(),
        message: envelope.into_ciphertext(),
        client_message_id: Some(ClientMessageId(id)),
        request_digest: *digest.finalize().as_bytes(),
        urgent: body.urgent,
        report: false,
        now_ms: relay_net::clock::now_ms(),
        ttl_ms: ic.limits.ttl_ms,
        max_queue_bytes: ic.limits.max_queue_bytes_per_device,
        ordering: None,
        outbox: Vec::new(),
    };
    // Storage wakes the recipients' receivers (or their push notifier) once it is durable.
    match ic.store.send(request).await {
        Ok(outcome) => {
            count(if outcome.duplicate { "duplicate" } else { "stored" });
            (
                StatusCode::CREATED,
                Json(serde_json::json!({ "id": relay_core::hex::encode(&outcome.server_id.0) })),
            )
                .into_response()
        }
        Err(SendError::UnknownRecipient { .. } | SendError::UnknownDevice { .. }) => {
            count("unknown_recipient");
            err(StatusCode::NOT_FOUND, "unknown_recipient")
        }
        Err(SendError::ClientMessageIdConflict) => {
            count("conflict");
            err(StatusCode::CONFLICT, "envelope_id_conflict")
        }
        Err(e) => {
            count("error");
            tracing::warn!(cause = %e, "storing an inbound envelope");
            err(StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        }
    }
}

async fn key_material(
    State(ic): State<Arc<Interconnect>>,
    Extension(PeerName(peer)): Extension<PeerName>,
    body: Result<Json<KeyMaterialRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Some(r) = ic.rate_limited(&peer) {
        return r;
    }
    let req = match body {
        Ok(Json(req)) => req,
        Err(r) => {
            let (status, code) = rejected(&r);
            return err(status, code);
        }
    };
    let Ok(requester) = relay_core::Address::parse(&req.requester) else {
        return err(StatusCode::BAD_REQUEST, "invalid_address");
    };
    if req.targets.is_empty() || req.targets.len() > ic.limits.max_recipients {
        return err(StatusCode::BAD_REQUEST, "invalid_recipients");
    }
    let table = ic.table();
    let (Some(p), Some(position)) = (table.peer(&peer), table.position(&peer)) else {
        return err(StatusCode::FORBIDDEN, "unknown_peer");
    };
    // The requester must be a number the requesting peer serves.
    if table.routing.route(&requester) != Route::Peer(position) {
        return err(StatusCode::FORBIDDEN, "requester_not_served_by_peer");
    }
    let targets = match resolve(&ic.rid_key, req.targets.iter().map(String::as_str), Duplicates::Refuse) {
        Ok(t) => t,
        Err(RecipientError::Invalid { .. }) => return err(StatusCode::BAD_REQUEST, "invalid_address"),
        Err(RecipientError::Duplicate { .. }) => return err(StatusCode::BAD_REQUEST, "duplicate_target"),
    };
    if targets.iter().any(|t| table.routing.route(&t.address) != Route::Local) {
        return err(StatusCode::MISDIRECTED_REQUEST, "not_served_here");
    }
    for t in &targets {
        if let Err(e) = ic.store.rekey_address(&ic.rid_keys, &t.address).await {
            tracing::error!(cause = %e, "re-keying a claim target");
            return err(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable");
        }
    }
    let requester_rid = ic.rid_key.rid(&requester);
    if targets
        .iter()
        .any(|t| p.claim_limiter.check_key(&(requester_rid, t.rid)).is_err())
    {
        let mut r = err(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
        r.headers_mut()
            .insert("retry-after", http::HeaderValue::from_static("60"));
        return r;
    }
    let by_rid: HashMap<Rid, String> = targets.iter().map(|t| (t.rid, t.address.as_str().to_owned())).collect();
    let rids = targets.iter().map(|t| t.rid).collect();
    match ic.store.claim_key_packages(rids, relay_net::clock::now_ms()).await {
        Ok(claimed) => {
            metrics::counter!("interconnect_key_packages_claimed_total", "peer" => peer.clone())
                .increment(claimed.len() as u64);
            Json(KeyMaterialResponse {
                key_packages: claimed
                    .into_iter()
                    .map(|c| RemoteKeyPackage {
                        address: by_rid.get(&c.rid).cloned().unwrap_or_default(),
                        device_id: c.device.0,
                        key_package: B64.encode(ic.at_rest.open_key_package(&c.rid, &c.bytes).unwrap_or_default()),
                        last_resort: c.last_resort,
                    })
                    .collect(),
            })
            .into_response()
        }
        Err(e) => {
            tracing::warn!(cause = %e, "claiming KeyPackages for a peer");
            err(StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        }
    }
}
