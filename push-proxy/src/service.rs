//! The two APIs: devices register platform targets (and get handles); gateways notify.
//! Request and response bodies are JSON; errors are `{"code": "..."}` with a 4xx status.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use relay_core::push::Pointer;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::handle::{HandleKeys, MAX_FIELD_LEN, PushTarget};
use crate::providers::Outcome;
use crate::sender::Sender;

/// Dead handles remembered so a later notify can report them at once.
const DEAD_CACHE: usize = 100_000;

/// Shared state of both APIs.
pub struct Proxy {
    pub(crate) keys: HandleKeys,
    pub(crate) sender: Arc<Sender>,
    queue: Arc<Semaphore>,
    dead: Mutex<HashMap<[u8; 32], Instant>>,
    notify_wait: Duration,
    max_batch: usize,
    allowed_hosts: Vec<String>,
    /// Every push is a task of the shutdown drain; on shutdown a push still retrying stops
    /// (a push is a wake-up: the device fetches everything on its next connection anyway).
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

/// The bounded queue of pushes a notify feeds.
#[derive(Debug, Clone, Copy)]
pub struct PushQueue {
    /// Pushes queued or in flight at once; more are shed.
    pub slots: usize,
    /// How long a notify waits for its pushes' outcomes before answering.
    pub notify_wait: Duration,
    /// Notifications per notify request.
    pub max_batch: usize,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    pub fn new(
        keys: HandleKeys,
        sender: Sender,
        queue: PushQueue,
        allowed_hosts: Vec<String>,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            keys,
            sender: Arc::new(sender),
            queue: Arc::new(Semaphore::new(queue.slots)),
            dead: Mutex::new(HashMap::new()),
            notify_wait: queue.notify_wait,
            max_batch: queue.max_batch,
            allowed_hosts,
            tasks,
            shutdown,
        }
    }

    fn dead_lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Instant>> {
        self.dead.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn remember_dead(&self, handle: &str) {
        let mut dead = self.dead_lock();
        if dead.len() >= DEAD_CACHE {
            dead.retain(|_, at| at.elapsed() < Duration::from_secs(3600));
            if dead.len() >= DEAD_CACHE {
                dead.clear();
            }
        }
        dead.insert(*blake3::hash(handle.as_bytes()).as_bytes(), Instant::now());
    }

    fn known_dead(&self, handle: &str) -> bool {
        self.dead_lock()
            .contains_key(blake3::hash(handle.as_bytes()).as_bytes())
    }
}

/// Is `endpoint` an https URL on an allowed host (exact name, or `.domain` for the domain
/// and its subdomains)? No userinfo; IP literals only if listed.
pub fn endpoint_allowed(allowed_hosts: &[String], endpoint: &str) -> bool {
    let Ok(uri) = endpoint.parse::<http::Uri>() else {
        return false;
    };
    let Some(auth) = uri.authority() else { return false };
    if uri.scheme_str() != Some("https") || auth.as_str().contains('@') {
        return false;
    }
    let host = auth.host().to_ascii_lowercase();
    allowed_hosts.iter().any(|a| {
        let a = a.to_ascii_lowercase();
        match a.strip_prefix('.') {
            Some(domain) => host == domain || host.ends_with(&a),
            None => host == a,
        }
    })
}

/// An API error: status and machine-readable code.
#[derive(Debug)]
pub struct ApiError(StatusCode, &'static str);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "code": self.1 }))).into_response()
    }
}

fn bad(code: &'static str) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, code)
}

/// A body that is not the JSON asked for: 415 without the JSON media type, 413 past the
/// body limit, 400 otherwise.
fn rejected(r: &axum::extract::rejection::JsonRejection) -> ApiError {
    use axum::extract::rejection::JsonRejection;
    match r {
        JsonRejection::MissingJsonContentType(_) => {
            ApiError(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
        }
        JsonRejection::BytesRejection(b) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
        }
        _ => bad("bad_request"),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub platform: String,
    pub token: Option<String>,
    pub endpoint: Option<String>,
    /// base64url P-256 public key of the subscription (65 bytes).
    pub p256dh: Option<String>,
    /// base64url authentication secret (16 bytes).
    pub auth: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub handle: String,
}

/// `POST /v1/push/register`.
pub async fn register(
    State(proxy): State<Arc<Proxy>>,
    body: Result<Json<RegisterRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<RegisterResponse>), ApiError> {
    let Json(req) = body.map_err(|r| rejected(&r))?;
    let (target, probe) = parse_target(&proxy.allowed_hosts, req)?;
    // A token this proxy could never deliver to is refused now, not silently at every push.
    if !proxy.sender.configured(&target) {
        metrics::counter!("push_registrations_refused_total", "reason" => "provider_not_configured").increment(1);
        return Err(ApiError(StatusCode::NOT_IMPLEMENTED, "provider_not_configured"));
    }
    if probe && let PushTarget::WebPush { endpoint, .. } = &target {
        proxy
            .sender
            .probe_unifiedpush(endpoint)
            .await
            .map_err(|_| bad("unifiedpush_probe_failed"))?;
    }
    metrics::counter!("push_registrations_total", "provider" => target.provider()).increment(1);
    Ok((
        StatusCode::CREATED,
        Json(RegisterResponse {
            handle: proxy.keys.seal(&target),
        }),
    ))
}

/// The target a registration names, and whether it is a UnifiedPush endpoint to probe.
fn parse_target(allowed_hosts: &[String], req: RegisterRequest) -> Result<(PushTarget, bool), ApiError> {
    let field = |v: Option<String>, code: &'static str| {
        v.filter(|s| !s.is_empty() && s.len() <= MAX_FIELD_LEN)
            .ok_or_else(|| bad(code))
    };
    match req.platform.as_str() {
        "apns" => {
            let token = field(req.token, "bad_token")?;
            if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad("bad_token"));
            }
            Ok((
                PushTarget::Apns {
                    token: token.to_ascii_lowercase(),
                },
                false,
            ))
        }
        "fcm" => {
            let token = field(req.token, "bad_token")?;
            if !token.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_:.".contains(&b)) {
                return Err(bad("bad_token"));
            }
            Ok((PushTarget::Fcm { token }, false))
        }
        p @ ("webpush" | "unifiedpush") => {
            let endpoint = field(req.endpoint, "bad_endpoint")?;
            if endpoint.contains('#') {
                return Err(bad("bad_endpoint"));
            }
            if !endpoint_allowed(allowed_hosts, &endpoint) {
                return Err(ApiError(StatusCode::FORBIDDEN, "endpoint_not_allowed"));
            }
            let decode = |v: Option<String>| {
                v.filter(|s| s.len() <= 128)
                    .and_then(|s| URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok())
            };
            let p256dh = decode(req.p256dh).ok_or_else(|| bad("bad_keys"))?;
            let auth = decode(req.auth).ok_or_else(|| bad("bad_keys"))?;
            if auth.len() != 16 || p256::PublicKey::from_sec1_bytes(&p256dh).is_err() || p256dh.len() != 65 {
                return Err(bad("bad_keys"));
            }
            Ok((PushTarget::WebPush { endpoint, p256dh, auth }, p == "unifiedpush"))
        }
        _ => Err(bad("unknown_platform")),
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Notification {
    pub handle: String,
    pub pointer: String,
    #[serde(default)]
    pub urgent: bool,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyRequest {
    pub notifications: Vec<Notification>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct NotifyResponse {
    /// Handles that will never work again: the gateway must drop them.
    pub dead: Vec<String>,
    /// Not queued (the queue is full): the gateway may try again later.
    pub shed: Vec<String>,
    pub delivered: usize,
    /// Still being delivered (retrying) when the response was sent.
    pub pending: usize,
}

/// `POST /v1/notify` (mutual TLS).
pub async fn notify(
    State(proxy): State<Arc<Proxy>>,
    body: Result<Json<NotifyRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<NotifyResponse>, ApiError> {
    let Json(req) = body.map_err(|r| rejected(&r))?;
    if req.notifications.len() > proxy.max_batch {
        return Err(ApiError(StatusCode::PAYLOAD_TOO_LARGE, "batch_too_large"));
    }
    // Validate the whole batch before queueing anything.
    let mut items = Vec::with_capacity(req.notifications.len());
    for n in req.notifications {
        let pointer = Pointer::parse(&n.pointer).ok_or_else(|| bad("bad_pointer"))?;
        items.push((n.handle, pointer, n.urgent));
    }
    let mut resp = NotifyResponse::default();
    let mut waiting = Vec::new();
    for (handle, pointer, urgent) in items {
        if proxy.known_dead(&handle) {
            resp.dead.push(handle);
            continue;
        }
        let target = match proxy.keys.open(&handle) {
            Ok(t) => t,
            Err(e) => {
                metrics::counter!("push_dead_handles_total", "reason" => e.to_string()).increment(1);
                dead_handle_logged(&e.to_string());
                resp.dead.push(handle);
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&proxy.queue).try_acquire_owned() else {
            metrics::counter!("push_shed_total").increment(1);
            static LOGGED: relay_net::throttle::Throttle = relay_net::throttle::Throttle::per_minute();
            if LOGGED.due("shed") {
                tracing::warn!(
                    "the delivery queue is full (delivery.queue): a push was shed (more counted in push_shed_total, not logged, for a minute)"
                );
            }
            resp.shed.push(handle);
            continue;
        };
        let (tx, rx) = oneshot::channel();
        let p = Arc::clone(&proxy);
        proxy.tasks.spawn(async move {
            let _permit = permit;
            let outcome = tokio::select! {
                outcome = p.sender.push(&target, &pointer, urgent) => outcome,
                () = p.shutdown.cancelled() => return,
            };
            if let Outcome::Dead(_) = &outcome {
                p.remember_dead(&handle);
                metrics::counter!("push_dead_handles_total", "reason" => "provider").increment(1);
                dead_handle_logged("provider");
            }
            let _ = tx.send((handle, outcome));
        });
        waiting.push(rx);
    }
    let deadline = tokio::time::Instant::now() + proxy.notify_wait;
    for rx in waiting {
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok((_, Outcome::Delivered))) => resp.delivered += 1,
            Ok(Ok((handle, Outcome::Dead(_)))) => resp.dead.push(handle),
            Ok(Ok((_, Outcome::Rejected(_) | Outcome::Retry { .. })) | Err(_)) => {}
            Err(_) => resp.pending += 1,
        }
    }
    Ok(Json(resp))
}

/// A handle reported dead to the gateway, in the log at most once a minute per reason (the
/// counter `push_dead_handles_total{reason}` has them all; the handle itself is never logged).
fn dead_handle_logged(reason: &str) {
    static LOGGED: relay_net::throttle::Throttle = relay_net::throttle::Throttle::per_minute();
    if LOGGED.due(reason) {
        tracing::info!(
            reason,
            "a push handle is dead (the provider says the device is gone, or it does not open); the gateway is told to drop it (more counted, not logged, for a minute)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(allowed: &[&str]) -> Vec<String> {
        allowed.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn endpoint_allow_list_blocks_ssrf() {
        let h = hosts(&[".push.example", "up.example.org"]);
        let p = |e: &str| endpoint_allowed(&h, e);
        assert!(p("https://push.example/x"));
        assert!(p("https://eu.push.example:8443/x"));
        assert!(p("https://up.example.org/x"));
        assert!(!p("https://evilpush.example/x"));
        assert!(!p("http://push.example/x"));
        assert!(!p("https://127.0.0.1/x"));
        assert!(!p("https://user@push.example/x"));
        assert!(!p("https://sub.up.example.org/x"));
        assert!(!p("not a url"));
    }

    #[test]
    fn registration_validation() {
        let p = hosts(&["push.example"]);
        let req = |platform: &str, token: Option<&str>, endpoint: Option<&str>, keys: bool| RegisterRequest {
            platform: platform.into(),
            token: token.map(Into::into),
            endpoint: endpoint.map(Into::into),
            p256dh: keys.then(|| {
                URL_SAFE_NO_PAD.encode(crate::webpush::public_bytes(
                    &crate::webpush::random_secret().public_key(),
                ))
            }),
            auth: keys.then(|| URL_SAFE_NO_PAD.encode([1u8; 16])),
        };
        let code = |r: Result<(PushTarget, bool), ApiError>| r.err().map(|e| e.1);
        assert_eq!(
            code(parse_target(&p, req("apns", Some("00ff00ff00ff00ff"), None, false))),
            None
        );
        assert_eq!(
            code(parse_target(&p, req("apns", Some("xyz"), None, false))),
            Some("bad_token")
        );
        assert_eq!(
            code(parse_target(&p, req("fcm", Some("a b"), None, false))),
            Some("bad_token")
        );
        assert_eq!(code(parse_target(&p, req("fcm", None, None, false))), Some("bad_token"));
        assert_eq!(
            code(parse_target(
                &p,
                req("webpush", None, Some("https://push.example/s"), true)
            )),
            None
        );
        assert_eq!(
            code(parse_target(
                &p,
                req("webpush", None, Some("https://other.example/s"), true)
            )),
            Some("endpoint_not_allowed")
        );
        assert_eq!(
            code(parse_target(
                &p,
                req("webpush", None, Some("https://push.example/s"), false)
            )),
            Some("bad_keys")
        );
        assert_eq!(
            code(parse_target(&p, req("sms", None, None, false))),
            Some("unknown_platform")
        );
    }
}
