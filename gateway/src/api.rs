//! The client API: one axum [`Router`] that every transport serves.
//!
//! `api(state)` builds the whole router, so tests can drive it without a socket and
//! the HTTP/2 listener (and later HTTP/3) put the very same service in front of it.
//! Handlers validate every input before touching storage: a rejected request leaves
//! no stored state behind.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{MatchedPath, RawQuery, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use bytes::Bytes;
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::{HeaderMap, StatusCode, header};
use http_body_util::BodyExt as _;
use prost::Message;
use rand::RngCore as _;
use relay_core::credential::DeviceCredential;
use relay_core::envelope::{EnvelopeError, MessageContentType, MessageKind};
use relay_core::wire::{PROTOBUF, v1};
use relay_core::{
    Address, ClientMessageId, DeviceId, Envelope, ErrorCode, Limits, Rid, RidKey, ServerId, provisioning,
};
use storage::{Ack, NewDevice, RecipientSpec, RegisterError, SendError, SendRequest, SledStore, Store as _};
use tokio_util::sync::CancellationToken;

use crate::config::{MlsConfig, Timeouts};
use crate::error::ApiError;
use crate::live::Live;

/// Largest body of the small requests (register, ack).
const SMALL_BODY_LIMIT: usize = 64 * 1024;

/// Shared state of the API.
#[derive(Clone, Debug)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<SledStore>,
    rid_key: RidKey,
    provisioning_key: Vec<u8>,
    limits: Limits,
    timeouts: Timeouts,
    open_registration: bool,
    live: Arc<Live>,
    limiter: DefaultKeyedRateLimiter<(Rid, DeviceId)>,
    claim_limiter: DefaultKeyedRateLimiter<(Rid, Rid)>,
    mls: MlsConfig,
    shutdown: CancellationToken,
    push: Option<crate::push::PushEvents>,
    /// Set once at start-up when `[interconnect]` is configured.
    interconnect: std::sync::OnceLock<Arc<interconnect::Interconnect>>,
}

/// What the API needs to run.
#[derive(Debug)]
pub struct ApiConfig {
    pub store: Arc<SledStore>,
    pub rid_key: RidKey,
    pub provisioning_key: Vec<u8>,
    pub limits: Limits,
    pub timeouts: Timeouts,
    pub open_registration: bool,
    pub requests_per_second: NonZeroU32,
    pub burst: NonZeroU32,
    pub mls: MlsConfig,
    pub shutdown: CancellationToken,
    /// Where push events go (`None`: no push proxy configured).
    pub push: Option<crate::push::PushEvents>,
}

impl AppState {
    pub fn new(c: ApiConfig) -> Self {
        let quota = Quota::per_second(c.requests_per_second).allow_burst(c.burst);
        Self {
            inner: Arc::new(Inner {
                store: c.store,
                rid_key: c.rid_key,
                provisioning_key: c.provisioning_key,
                limits: c.limits,
                timeouts: c.timeouts,
                open_registration: c.open_registration,
                live: Arc::new(Live::new(c.push.clone())),
                limiter: RateLimiter::keyed(quota),
                claim_limiter: RateLimiter::keyed(
                    Quota::with_period(Duration::from_secs(c.mls.claim_refill_secs.max(1)))
                        .expect("the period is at least one second")
                        .allow_burst(NonZeroU32::new(c.mls.claim_burst).unwrap_or(NonZeroU32::MIN)),
                ),
                mls: c.mls,
                shutdown: c.shutdown,
                push: c.push,
                interconnect: std::sync::OnceLock::new(),
            }),
        }
    }

    pub fn store(&self) -> &Arc<SledStore> {
        &self.inner.store
    }

    pub fn live(&self) -> &Arc<Live> {
        &self.inner.live
    }

    pub fn rid_key(&self) -> &RidKey {
        &self.inner.rid_key
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Attaches the interconnect (once, at start-up).
    pub fn set_interconnect(&self, ic: Arc<interconnect::Interconnect>) {
        let _ = self.inner.interconnect.set(ic);
    }

    pub fn interconnect(&self) -> Option<&Arc<interconnect::Interconnect>> {
        self.inner.interconnect.get()
    }

    /// After envelopes are stored: wake live receivers, or hand the device to the push
    /// notifier (never awaited).
    pub fn stored(&self, delivered_to: &[(Rid, DeviceId)], urgent: bool) {
        for key in delivered_to {
            if !self.inner.live.wake(key)
                && let Some(push) = &self.inner.push
            {
                push.send(crate::push::Event::Stored { key: *key, urgent });
            }
        }
    }

    /// Forgets rate-limit state of idle credentials (called by the sweeper).
    pub fn retain_recent_limits(&self) {
        self.inner.limiter.retain_recent();
        self.inner.claim_limiter.retain_recent();
    }
}

/// The whole client API.
pub fn api(state: AppState) -> Router {
    let request_limit = state.inner.timeouts.request + Duration::from_secs(u64::from(state.inner.limits.max_wait_secs));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/devices", post(register))
        .route("/v1/devices/self", axum::routing::delete(delete_self))
        .route("/v1/devices/self/push", put(set_push_handle).delete(clear_push_handle))
        .route("/v1/messages", post(send).get(receive))
        .route("/v1/messages/ack", post(ack))
        .route("/v1/keypackages", post(upload_key_packages))
        .route("/v1/keypackages/claim", post(claim_key_packages))
        .route("/v1/keypackages/count", get(count_key_packages))
        .route("/v1/groups/{group}/info", get(get_group_info).put(put_group_info))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(move |req, next| {
            with_deadline(request_limit, req, next)
        }))
        .layer(middleware::from_fn(track_metrics))
        .with_state(state)
}

pub async fn healthz() -> &'static str {
    "ok\n"
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(ErrorCode::MethodNotAllowed, "method not allowed on this endpoint")
}

async fn with_deadline(limit: Duration, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::new(ErrorCode::Timeout, "request took too long").into_response(),
    }
}

/// Requests by route, method, status and HTTP version; latency by route. Routes are
/// the matched templates, never a raw path, so no identifier becomes a label.
async fn track_metrics(req: Request, next: Next) -> Response {
    let start = std::time::Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let version = match req.version() {
        http::Version::HTTP_2 => "h2",
        http::Version::HTTP_3 => "h3",
        _ => "http1",
    };
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("relay_http_requests_total", "route" => route.clone(), "method" => method, "status" => status, "transport" => version)
        .increment(1);
    metrics::histogram!("relay_http_request_duration_seconds", "route" => route, "transport" => version)
        .record(start.elapsed().as_secs_f64());
    resp
}

/// An authenticated device.
#[derive(Debug, Clone, Copy)]
struct Device {
    rid: Rid,
    id: DeviceId,
}

/// Checks the bearer credential, then the device's rate limit. Every failure of the
/// credential is the same 401, so a client learns nothing about which part was wrong.
async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Device, ApiError> {
    let unauthorized = || ApiError::new(ErrorCode::Unauthorized, "missing or invalid credential");
    let value = headers.get(header::AUTHORIZATION).ok_or_else(unauthorized)?;
    let value = value.to_str().map_err(|_| unauthorized())?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(unauthorized)?;
    let cred = DeviceCredential::parse(token.trim()).map_err(|_| unauthorized())?;
    let auth = state
        .inner
        .store
        .device_by_lookup(cred.lookup())
        .await?
        .ok_or_else(unauthorized)?;
    if !cred.verify(&auth.credential_hash) {
        return Err(unauthorized());
    }
    let device = Device {
        rid: auth.rid,
        id: auth.device,
    };
    if let Err(not_until) = state.inner.limiter.check_key(&(device.rid, device.id)) {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        let mut e = ApiError::new(ErrorCode::RateLimited, "too many requests for this credential");
        e.retry_after_secs = Some(wait.as_secs_f64().ceil() as u64);
        return Err(e);
    }
    Ok(device)
}

/// Reads a protobuf body: media type, encoding, declared and actual size, read timeout.
async fn read_proto<M: Message + Default>(state: &AppState, req: Request, limit: usize) -> Result<M, ApiError> {
    let bytes = read_body(state, req, limit, &[PROTOBUF, "application/protobuf"]).await?;
    M::decode(bytes).map_err(|_| ApiError::new(ErrorCode::InvalidBody, "body is not a valid protobuf message"))
}

/// Reads a body of one of the `media` types, checking encoding, size and read time.
async fn read_body(state: &AppState, req: Request, limit: usize, media: &[&str]) -> Result<Bytes, ApiError> {
    let headers = req.headers();
    let given = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
    if !given.as_deref().is_some_and(|g| media.contains(&g)) {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!("body must be {}", media[0]),
        ));
    }
    if let Some(enc) = headers.get(header::CONTENT_ENCODING)
        && !enc.as_bytes().eq_ignore_ascii_case(b"identity")
    {
        return Err(ApiError::new(
            ErrorCode::UnsupportedContentEncoding,
            "ciphertext does not compress; send it uncompressed",
        ));
    }
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(body_too_large(limit));
    }
    let body = http_body_util::Limited::new(req.into_body(), limit);
    let bytes = match tokio::time::timeout(state.inner.timeouts.body_read, body.collect()).await {
        Err(_) => {
            return Err(ApiError::new(
                ErrorCode::Timeout,
                "request body was not received in time",
            ));
        }
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            return Err(body_too_large(limit));
        }
        Ok(Err(_)) => return Err(ApiError::new(ErrorCode::InvalidBody, "request body could not be read")),
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    Ok(bytes)
}

/// Parses an uploaded MLS message; the error codes are the same for every endpoint.
fn parse_envelope(bytes: Bytes, limits: &Limits) -> Result<Envelope, ApiError> {
    Envelope::parse(bytes, limits).map_err(|e| match e {
        EnvelopeError::TooLarge { .. } => ApiError::new(ErrorCode::EnvelopeTooLarge, e.to_string()),
        _ => ApiError::new(ErrorCode::InvalidMls, e.to_string()),
    })
}

fn body_too_large(limit: usize) -> ApiError {
    ApiError::new(ErrorCode::BodyTooLarge, format!("request body exceeds {limit} bytes"))
}

fn proto_response(status: StatusCode, m: &impl Message) -> Response {
    (status, [(header::CONTENT_TYPE, PROTOBUF)], m.encode_to_vec()).into_response()
}

/// Wall-clock milliseconds since the Unix epoch (the shell reads the clock; core never does).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn register(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let body: v1::RegisterRequest = read_proto(&state, req, SMALL_BODY_LIMIT).await?;
    let now = now_ms();
    let (address, nonce, expires_at) = if body.provisioning_token.is_empty() && state.inner.open_registration {
        let address =
            Address::parse(&body.address).map_err(|e| ApiError::new(ErrorCode::InvalidAddress, e.to_string()))?;
        let mut nonce = [0u8; 16];
        rand::rng().fill_bytes(&mut nonce);
        (address, nonce, now + 60_000)
    } else {
        let claims =
            provisioning::verify(&body.provisioning_token, &state.inner.provisioning_key, now).map_err(|e| {
                let code = match e {
                    provisioning::ProvisioningError::Expired => ErrorCode::ProvisioningTokenExpired,
                    _ => ErrorCode::InvalidProvisioningToken,
                };
                ApiError::new(code, e.to_string())
            })?;
        (claims.address, claims.nonce, claims.expires_at_ms)
    };
    let mut random = [0u8; 48];
    rand::rng().fill_bytes(&mut random);
    let credential = DeviceCredential::from_random(random);
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let new = NewDevice {
        rid: state.inner.rid_key.rid(&address),
        credential_lookup: credential.lookup(),
        credential_hash: credential.hash(salt),
        provisioning_nonce: nonce,
        provisioning_expires_at_ms: expires_at,
        max_devices: state.inner.limits.max_devices_per_address,
        now_ms: now,
    };
    let device = state.inner.store.register_device(new).await.map_err(|e| match e {
        RegisterError::TooManyDevices(n) => ApiError::new(
            ErrorCode::TooManyDevices,
            format!("this address already has {n} devices"),
        ),
        RegisterError::TokenUsed => {
            ApiError::new(ErrorCode::ProvisioningTokenUsed, "provisioning token was already used")
        }
        RegisterError::LookupCollision => ApiError::internal(&"credential lookup collision"),
        RegisterError::Store(e) => e.into(),
    })?;
    metrics::counter!("relay_devices_registered_total").increment(1);
    let resp = v1::RegisterResponse {
        device_id: device.0,
        credential: credential.encode(),
    };
    Ok(proto_response(StatusCode::CREATED, &resp))
}

async fn delete_self(State(state): State<AppState>, headers: HeaderMap) -> Result<StatusCode, ApiError> {
    let device = authenticate(&state, &headers).await?;
    state.inner.store.delete_device(device.rid, device.id).await?;
    state.inner.live.wake(&(device.rid, device.id));
    Ok(StatusCode::NO_CONTENT)
}

/// Longest push handle accepted (the push proxy's handles are far shorter).
const MAX_PUSH_HANDLE: usize = 2048;

async fn set_push_handle(State(state): State<AppState>, req: Request) -> Result<StatusCode, ApiError> {
    let device = authenticate(&state, req.headers()).await?;
    let body: v1::SetPushHandleRequest = read_proto(&state, req, SMALL_BODY_LIMIT).await?;
    let h = &body.handle;
    let well_formed = h.len() <= MAX_PUSH_HANDLE
        && h.strip_prefix("ph1.")
            .is_some_and(|b| !b.is_empty() && b.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
    if !well_formed {
        return Err(ApiError::new(
            ErrorCode::InvalidPushHandle,
            "a push handle is \"ph1.\" and base64url, as returned by the push proxy",
        ));
    }
    state
        .inner
        .store
        .set_push_handle(device.rid, device.id, Some(body.handle))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn clear_push_handle(State(state): State<AppState>, headers: HeaderMap) -> Result<StatusCode, ApiError> {
    let device = authenticate(&state, &headers).await?;
    state.inner.store.set_push_handle(device.rid, device.id, None).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn send(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let sender = authenticate(&state, req.headers()).await?;
    let limits = &state.inner.limits;
    let body: v1::SendRequest = read_proto(&state, req, limits.max_send_body_bytes()).await?;
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
    let envelope = parse_envelope(body.message, limits)?;
    let is_commit = envelope
        .header()
        .is_some_and(|h| h.content_type == MessageContentType::Commit);
    let envelope_is_welcome = envelope.kind() == MessageKind::Welcome;
    match envelope.kind() {
        MessageKind::KeyPackage => {
            return Err(ApiError::new(
                ErrorCode::UnexpectedMessageType,
                "KeyPackages are uploaded to /v1/keypackages, not sent",
            ));
        }
        MessageKind::Welcome if !body.recipients.is_empty() => {
            return Err(ApiError::new(
                ErrorCode::InvalidRecipients,
                "a Welcome is routed by the KeyPackageRefs it names: list no recipients",
            ));
        }
        MessageKind::Welcome => {}
        // A commit reaches the DS even when its group has no other member: it sets the epoch.
        _ if body.recipients.is_empty() && !is_commit => {
            return Err(ApiError::new(
                ErrorCode::NoRecipients,
                "a send needs at least one recipient",
            ));
        }
        _ => {}
    }
    let mut digest = blake3::Hasher::new_derive_key("rcs-relay 2026-11 send request digest v1");
    digest.update(envelope.ciphertext().as_bytes());
    let mut recipients = Vec::with_capacity(body.recipients.len());
    let mut addresses = Vec::with_capacity(body.recipients.len());
    let mut seen = std::collections::HashSet::with_capacity(body.recipients.len());
    for (index, r) in body.recipients.iter().enumerate() {
        let address = Address::parse(&r.address)
            .map_err(|e| ApiError::new(ErrorCode::InvalidAddress, format!("recipient {index}: {e}")))?;
        let rid = state.inner.rid_key.rid(&address);
        addresses.push(address);
        if !seen.insert(rid) {
            return Err(ApiError::new(
                ErrorCode::DuplicateRecipient,
                format!("recipient {index} is listed twice"),
            ));
        }
        digest.update(&rid.0);
        for d in &r.device_ids {
            digest.update(&d.to_be_bytes());
        }
        digest.update(b"|");
        let devices = (!r.device_ids.is_empty()).then(|| r.device_ids.iter().map(|d| DeviceId(*d)).collect());
        recipients.push(RecipientSpec { rid, devices });
    }
    digest.update(&[u8::from(body.urgent)]);
    // Recipients served by peer carriers go to the durable outbox, in the same batch.
    let mut outbox = Vec::new();
    if let Some(ic) = state.interconnect()
        && !addresses.is_empty()
    {
        let plan = match ic.plan(&addresses) {
            Ok(p) => p,
            Err(refusal) => {
                ic.audit_refusal(&refusal).await;
                return Err(ApiError::new(ErrorCode::ResidencyPolicy, refusal.to_string()));
            }
        };
        if plan.local.len() != recipients.len() {
            for (index, r) in body.recipients.iter().enumerate() {
                if !plan.local.contains(&index) && !r.device_ids.is_empty() {
                    return Err(ApiError::new(
                        ErrorCode::InvalidRecipients,
                        format!("recipient {index} is served by a peer carrier: name no device ids"),
                    ));
                }
            }
            recipients = plan.local.iter().map(|&i| recipients[i].clone()).collect();
            outbox = ic.outbox_items(&plan, envelope.ciphertext().as_bytes(), body.urgent);
        }
    }
    let has_outbox = !outbox.is_empty();
    if envelope.kind() == MessageKind::Welcome {
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
            match recipients.iter_mut().find(|r: &&mut RecipientSpec| r.rid == rid) {
                Some(r) => r.devices.get_or_insert_with(Vec::new).push(device),
                None => recipients.push(RecipientSpec {
                    rid,
                    devices: Some(vec![device]),
                }),
            }
        }
    }
    let ordering = crate::mls::ordering(&envelope, &state.inner.mls);
    let urgent = body.urgent;
    let request = SendRequest {
        sender: (sender.rid, sender.id),
        recipients,
        message: envelope.into_ciphertext(),
        client_message_id,
        request_digest: *digest.finalize().as_bytes(),
        urgent,
        now_ms: now_ms(),
        ttl_ms: limits.ttl_ms,
        max_queue_bytes: limits.max_queue_bytes_per_device,
        ordering,
        outbox,
    };
    let size = request.message.len();
    let outcome = state.inner.store.send(request).await.map_err(|e| match e {
        SendError::UnknownRecipient { index } => ApiError::new(
            ErrorCode::UnknownRecipient,
            format!("recipient {index} has no registered device"),
        ),
        SendError::UnknownDevice { .. } if envelope_is_welcome => {
            ApiError::new(ErrorCode::UnknownKeyPackage, "a new member's device no longer exists")
        }
        SendError::UnknownDevice { index } => ApiError::new(
            ErrorCode::UnknownDevice,
            format!("recipient {index} names an unknown device"),
        ),
        SendError::ClientMessageIdConflict => ApiError::new(
            ErrorCode::ClientMessageIdConflict,
            "client_message_id was used for a different message",
        ),
        SendError::WrongEpoch { epoch, current } => ApiError::new(
            ErrorCode::WrongEpoch,
            format!("message is for epoch {epoch}; the group is at epoch {current}"),
        )
        .with_current_epoch(current),
        SendError::EpochTooOld { epoch, current } => ApiError::new(
            ErrorCode::EpochTooOld,
            format!("application message is for epoch {epoch}; the group is at epoch {current}"),
        )
        .with_current_epoch(current),
        SendError::UnknownGroup => ApiError::new(
            ErrorCode::UnknownGroup,
            "the group is unknown: its first commit must be for epoch 0",
        ),
        SendError::Store(e) => e.into(),
    })?;
    state.stored(&outcome.delivered_to, urgent);
    if has_outbox && let Some(ic) = state.interconnect() {
        ic.kick();
    }
    metrics::counter!("relay_envelopes_stored_total").increment(u64::from(!outcome.duplicate));
    metrics::counter!("relay_envelope_bytes_stored_total").increment(if outcome.duplicate { 0 } else { size as u64 });
    let resp = v1::SendResponse {
        server_id: Bytes::copy_from_slice(&outcome.server_id.0),
        recipient_devices: outcome.delivered_to.len() as u32,
        duplicate: outcome.duplicate,
        accepted_epoch: outcome.accepted_epoch,
    };
    let status = if outcome.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(proto_response(status, &resp))
}

/// `after`, `limit`, `wait` of a receive.
#[derive(Debug, PartialEq, Eq)]
struct ReceiveQuery {
    after: u64,
    limit: u32,
    wait: Duration,
}

fn parse_receive_query(raw: Option<&str>, limits: &Limits) -> Result<ReceiveQuery, ApiError> {
    let params: HashMap<String, String> = match raw {
        Some(q) => serde_urlencoded_pairs(q),
        None => HashMap::new(),
    };
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

/// Splits `a=1&b=2` (percent-decoding is unnecessary: every value is a number).
fn serde_urlencoded_pairs(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (p.to_owned(), String::new()),
        })
        .collect()
}

async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let device = authenticate(&state, &headers).await?;
    let q = parse_receive_query(raw.as_deref(), &state.inner.limits)?;
    let store = &state.inner.store;
    let key = (device.rid, device.id);
    let page = if q.wait.is_zero() {
        store.receive(device.rid, device.id, q.after, q.limit, now_ms()).await?
    } else {
        let sub = state.inner.live.subscribe(key);
        let deadline = tokio::time::Instant::now() + q.wait;
        loop {
            let notified = sub.notify().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let page = store.receive(device.rid, device.id, q.after, q.limit, now_ms()).await?;
            if !page.envelopes.is_empty() {
                break page;
            }
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(deadline) => break page,
                () = state.inner.shutdown.cancelled() => break page,
            }
        }
    };
    let resp = v1::ReceiveResponse {
        envelopes: page
            .envelopes
            .into_iter()
            .map(|e| v1::Envelope {
                server_id: Bytes::copy_from_slice(&e.server_id.0),
                seq: e.seq,
                received_at_ms: e.received_at_ms,
                expires_at_ms: e.expires_at_ms,
                flags: e.flags,
                message: e.message.into_bytes(),
                dropped: e.dropped,
            })
            .collect(),
        next_cursor: page.next_cursor,
        queue_empty: page.queue_empty,
    };
    Ok(proto_response(StatusCode::OK, &resp))
}

async fn ack(State(state): State<AppState>, req: Request) -> Result<StatusCode, ApiError> {
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

/// Largest KeyPackage upload body: 100 packages of a few KiB each.
const KEY_PACKAGE_BODY_LIMIT: usize = 1 << 20;

async fn upload_key_packages(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let device = authenticate(&state, req.headers()).await?;
    let body: v1::UploadKeyPackagesRequest = read_proto(&state, req, KEY_PACKAGE_BODY_LIMIT).await?;
    let mls = &state.inner.mls;
    if body.key_packages.is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidKeyPackage,
            "no KeyPackage in the upload",
        ));
    }
    if body.key_packages.len() > mls.max_key_packages_per_upload {
        return Err(ApiError::new(
            ErrorCode::TooManyKeyPackages,
            format!(
                "{} KeyPackages, at most {} per upload",
                body.key_packages.len(),
                mls.max_key_packages_per_upload
            ),
        ));
    }
    let now = now_ms();
    let mut packages = Vec::with_capacity(body.key_packages.len());
    for (index, bytes) in body.key_packages.iter().enumerate() {
        let kp = crate::mls::validate_key_package(bytes, &device.rid, &state.inner.rid_key, mls, now).map_err(|e| {
            let code = match e {
                crate::mls::KeyPackageRejection::Malformed | crate::mls::KeyPackageRejection::Invalid(_) => {
                    ErrorCode::InvalidKeyPackage
                }
                crate::mls::KeyPackageRejection::Ciphersuite(_) => ErrorCode::UnsupportedCiphersuite,
                crate::mls::KeyPackageRejection::Lifetime => ErrorCode::KeyPackageExpired,
                crate::mls::KeyPackageRejection::Identity => ErrorCode::IdentityMismatch,
            };
            ApiError::new(code, format!("KeyPackage {index}: {e}"))
        })?;
        packages.push(kp);
    }
    let stored = state
        .inner
        .store
        .upload_key_packages(device.rid, device.id, packages, mls.max_key_packages_per_device, now)
        .await
        .map_err(|e| match e {
            storage::KeyPackageError::Duplicate { index } => ApiError::new(
                ErrorCode::DuplicateKeyPackage,
                format!("KeyPackage {index} was uploaded before"),
            ),
            storage::KeyPackageError::TooMany { max } => ApiError::new(
                ErrorCode::TooManyKeyPackages,
                format!("a device holds at most {max} KeyPackages"),
            ),
            storage::KeyPackageError::Store(e) => e.into(),
        })?;
    metrics::counter!("relay_key_packages_uploaded_total").increment(u64::from(stored));
    Ok(proto_response(
        StatusCode::CREATED,
        &v1::UploadKeyPackagesResponse { stored },
    ))
}

async fn claim_key_packages(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let device = authenticate(&state, req.headers()).await?;
    let body: v1::ClaimKeyPackagesRequest = read_proto(&state, req, SMALL_BODY_LIMIT).await?;
    if body.addresses.is_empty() || body.addresses.len() > state.inner.limits.max_recipients {
        return Err(ApiError::new(
            ErrorCode::InvalidRecipients,
            format!("claim 1..={} addresses", state.inner.limits.max_recipients),
        ));
    }
    let mut targets = Vec::with_capacity(body.addresses.len());
    let mut by_rid = HashMap::with_capacity(body.addresses.len());
    let mut parsed = Vec::with_capacity(body.addresses.len());
    for (index, a) in body.addresses.iter().enumerate() {
        let address =
            Address::parse(a).map_err(|e| ApiError::new(ErrorCode::InvalidAddress, format!("address {index}: {e}")))?;
        let rid = state.inner.rid_key.rid(&address);
        let known = by_rid.insert(rid, address.as_str().to_owned()).is_some();
        parsed.push(address);
        if known {
            return Err(ApiError::new(
                ErrorCode::DuplicateRecipient,
                format!("address {index} is listed twice"),
            ));
        }
        targets.push(rid);
    }
    // Rate limit per (requester, target), checked for all before any package is handed out.
    for rid in &targets {
        if let Err(not_until) = state.inner.claim_limiter.check_key(&(device.rid, *rid)) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let mut e = ApiError::new(ErrorCode::RateLimited, "too many KeyPackage claims for this address");
            e.retry_after_secs = Some(wait.as_secs_f64().ceil() as u64);
            return Err(e);
        }
    }
    // Targets served by peer carriers are claimed through the interconnect.
    let mut remote = Vec::new();
    if let Some(ic) = state.interconnect() {
        let plan = match ic.plan(&parsed) {
            Ok(p) => p,
            Err(refusal) => {
                ic.audit_refusal(&refusal).await;
                return Err(ApiError::new(ErrorCode::ResidencyPolicy, refusal.to_string()));
            }
        };
        if !plan.remote.is_empty() {
            targets = plan.local.iter().map(|&i| targets[i]).collect();
            // The peer's request names the requester; the client says who it is, and the
            // gateway checks that against the credential.
            let requester = Address::parse(&body.requester)
                .ok()
                .filter(|a| state.inner.rid_key.rid(a) == device.rid)
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::InvalidAddress,
                        "claiming from a peer carrier needs `requester`: your own address",
                    )
                })?;
            for (peer, addrs) in &plan.remote {
                let got = ic.claim_remote(peer, &requester, addrs).await.map_err(|e| {
                    tracing::warn!(peer = peer.as_str(), cause = %e, "remote KeyPackage claim failed");
                    ApiError::new(
                        ErrorCode::PeerUnavailable,
                        format!("peer {peer} did not answer the claim"),
                    )
                })?;
                remote.extend(got);
            }
        }
    }
    let claimed = if targets.is_empty() {
        Vec::new()
    } else {
        state.inner.store.claim_key_packages(targets, now_ms()).await?
    };
    metrics::counter!("relay_key_packages_claimed_total").increment(claimed.len() as u64);
    let mut key_packages: Vec<v1::ClaimedKeyPackage> = claimed
        .into_iter()
        .map(|c| v1::ClaimedKeyPackage {
            address: by_rid.get(&c.rid).cloned().unwrap_or_default(),
            device_id: c.device.0,
            key_package: c.bytes,
            last_resort: c.last_resort,
        })
        .collect();
    for r in remote {
        use base64::Engine as _;
        let Ok(kp) = base64::engine::general_purpose::STANDARD.decode(&r.key_package) else {
            continue;
        };
        key_packages.push(v1::ClaimedKeyPackage {
            address: r.address,
            device_id: r.device_id,
            key_package: Bytes::from(kp),
            last_resort: r.last_resort,
        });
    }
    let resp = v1::ClaimKeyPackagesResponse { key_packages };
    Ok(proto_response(StatusCode::OK, &resp))
}

async fn count_key_packages(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let device = authenticate(&state, &headers).await?;
    let count = state
        .inner
        .store
        .key_package_count(device.rid, device.id, now_ms())
        .await?;
    let resp = v1::KeyPackageCountResponse {
        one_time: count.one_time,
        last_resort: count.last_resort,
    };
    Ok(proto_response(StatusCode::OK, &resp))
}

/// Media type of a raw MLSMessage (RFC 9420 section 17.10).
const MESSAGE_MLS: &str = "message/mls";

fn group_id_from_path(hex: &str) -> Result<Vec<u8>, ApiError> {
    crate::mls::decode_group_id(hex)
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidBody, "the group id in the path must be non-empty hex"))
}

/// `PUT /v1/groups/{hex group id}/info`: a member publishes the group's latest GroupInfo
/// (an MLSMessage, `message/mls`) for external joins. The DS checks it is a GroupInfo for
/// that group; joiners verify its signature themselves.
async fn put_group_info(
    State(state): State<AppState>,
    axum::extract::Path(group): axum::extract::Path<String>,
    req: Request,
) -> Result<StatusCode, ApiError> {
    authenticate(&state, req.headers()).await?;
    let group_id = group_id_from_path(&group)?;
    let limit = state.inner.limits.max_envelope_bytes;
    let body = read_body(&state, req, limit, &[MESSAGE_MLS]).await?;
    let envelope = parse_envelope(body, &state.inner.limits)?;
    let Some(info_group) = envelope.group_info_group_id() else {
        return Err(ApiError::new(
            ErrorCode::UnexpectedMessageType,
            "the body must be a GroupInfo MLSMessage",
        ));
    };
    if info_group != group_id.as_slice() {
        return Err(ApiError::new(
            ErrorCode::InvalidMls,
            "the GroupInfo describes another group",
        ));
    }
    let key = crate::mls::group_key(&group_id);
    state
        .inner
        .store
        .set_group_info(key, envelope.into_ciphertext().into_bytes())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/groups/{hex group id}/info`: the latest GroupInfo, `message/mls`.
async fn get_group_info(
    State(state): State<AppState>,
    axum::extract::Path(group): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authenticate(&state, &headers).await?;
    let group_id = group_id_from_path(&group)?;
    match state.inner.store.group_info(crate::mls::group_key(&group_id)).await? {
        Some(bytes) => Ok((StatusCode::OK, [(header::CONTENT_TYPE, MESSAGE_MLS)], bytes).into_response()),
        None => Err(ApiError::new(
            ErrorCode::UnknownGroup,
            "no GroupInfo was published for this group",
        )),
    }
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
