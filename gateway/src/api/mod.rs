//! The client API: one axum [`Router`] that every transport serves.
//!
//! [`api`] builds the whole router, so tests drive it without a socket and the HTTP/3,
//! HTTP/2 and HTTP/1.1 listeners put the very same service in front of it. Handlers
//! validate every input before touching storage: a rejected request leaves no stored state
//! behind. Errors become responses in [`crate::error`].
//!
//! # Layout
//! - this module: [`AppState`], the router, its middleware (deadline, metrics).
//! - `extract`: authentication, body reading, protobuf responses.
//! - one module per resource: `devices`, `messages`, `keypackages`, `groups`.

mod devices;
mod extract;
mod groups;
mod keypackages;
mod messages;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use relay_core::{DeviceId, ErrorCode, Limits, Rid, RidKey};
use storage::Storage;
use tokio_util::sync::CancellationToken;

use crate::config::{AbuseLimits, MlsConfig, Timeouts};
use crate::error::ApiError;

/// Shared state of the API.
#[derive(Clone, Debug)]
pub struct AppState {
    inner: Arc<Inner>,
}

/// The source address of a request (set by each transport for the per-address limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub std::net::IpAddr);

impl ClientAddr {
    /// The key of the per-address limits: the address, or its /64 for IPv6 (one host
    /// usually holds a whole /64).
    fn key(self) -> [u8; 16] {
        relay_net::serve::address_key(self.0)
    }
}

/// Fixed-memory bucket tables (relay-core's `gcra`): about 19 MiB whatever the traffic.
#[derive(Debug)]
pub(crate) struct Abuse {
    pub(crate) sender_recipient: relay_core::gcra::BucketTable,
    pub(crate) recipient_bytes: relay_core::gcra::BucketTable,
    pub(crate) sender_share: Option<relay_core::gcra::BucketTable>,
    failed_auth: relay_core::gcra::BucketTable,
    registrations: relay_core::gcra::BucketTable,
    started: std::time::Instant,
}

impl Abuse {
    fn new(l: AbuseLimits) -> Self {
        use relay_core::gcra::BucketTable;
        Self {
            sender_recipient: BucketTable::new(1 << 20, l.sender_recipient),
            recipient_bytes: BucketTable::new(1 << 17, l.recipient_bytes),
            sender_share: l.sender_share.map(|rate| BucketTable::new(1 << 20, rate)),
            failed_auth: BucketTable::new(1 << 16, l.failed_auth),
            registrations: BucketTable::new(1 << 16, l.registrations),
            started: std::time::Instant::now(),
        }
    }

    /// The limiters' clock: nanoseconds since start-up (monotonic).
    pub(crate) fn now_ns(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

#[derive(Debug)]
struct Inner {
    store: Storage,
    rid_key: RidKey,
    rid_keys: relay_core::RidKeys,
    at_rest: relay_core::atrest::AtRest,
    /// Opens what was sealed under the previous K_rid (during a rotation).
    previous_at_rest: Option<relay_core::atrest::AtRest>,
    /// The keys that verify provisioning tokens (replaced on `/admin/keys/reload`).
    provisioning_keys: std::sync::RwLock<Vec<relay_core::provisioning::VerifyingKey>>,
    key_provider: Arc<dyn crate::keys::KeyProvider>,
    limits: Limits,
    timeouts: Timeouts,
    open_registration: bool,
    limiter: DefaultKeyedRateLimiter<(Rid, DeviceId)>,
    /// The same limits as (period, burst), for the limiter the nodes on a database share.
    credential_rate: (Duration, u32),
    claim_rate: (Duration, u32),
    claim_limiter: DefaultKeyedRateLimiter<(Rid, Rid)>,
    abuse: Abuse,
    /// Credential lookups in storage (also `relay_credential_lookups_total`).
    pub(crate) lookups: std::sync::atomic::AtomicU64,
    mls: MlsConfig,
    shutdown: CancellationToken,
    interconnect: Option<Arc<interconnect::Interconnect>>,
}

/// What the API needs to run.
#[derive(Debug)]
pub struct ApiConfig {
    pub store: Storage,
    /// K_rid: the current key, and the previous one during a rotation's re-key.
    pub rid_keys: relay_core::RidKeys,
    pub key_provider: Arc<dyn crate::keys::KeyProvider>,
    pub limits: Limits,
    pub timeouts: Timeouts,
    pub open_registration: bool,
    pub requests_per_second: NonZeroU32,
    pub burst: NonZeroU32,
    pub abuse: AbuseLimits,
    pub mls: MlsConfig,
    pub shutdown: CancellationToken,
    /// Peer carriers, when `[interconnect]` is configured.
    pub interconnect: Option<Arc<interconnect::Interconnect>>,
}

impl AppState {
    pub fn new(c: ApiConfig) -> Self {
        let quota = Quota::per_second(c.requests_per_second).allow_burst(c.burst);
        // The detection metrics exist from the start, so alert rules have a baseline.
        let provisioning_keys = c.key_provider.provisioning_keys().unwrap_or_default();
        for k in provisioning_keys.iter().filter(|k| k.state.accepts_tokens()) {
            metrics::counter!("relay_registrations_total", "key" => provisioning_key_id(&k.public_key)).increment(0);
        }
        metrics::counter!("relay_welcomes_total").increment(0);
        metrics::counter!("relay_key_package_claims_total").increment(0);
        Self {
            inner: Arc::new(Inner {
                store: c.store,
                at_rest: relay_core::atrest::AtRest::new(&c.rid_keys.current),
                previous_at_rest: c.rid_keys.previous.as_ref().map(relay_core::atrest::AtRest::new),
                rid_key: c.rid_keys.current.clone(),
                rid_keys: c.rid_keys,
                provisioning_keys: std::sync::RwLock::new(provisioning_keys),
                key_provider: c.key_provider,
                limits: c.limits,
                timeouts: c.timeouts,
                open_registration: c.open_registration,
                limiter: RateLimiter::keyed(quota),
                credential_rate: (
                    Duration::from_micros(1_000_000 / u64::from(c.requests_per_second.get())),
                    c.burst.get(),
                ),
                claim_rate: (
                    Duration::from_secs(c.mls.claim_refill_secs.max(1)),
                    c.mls.claim_burst.max(1),
                ),
                claim_limiter: RateLimiter::keyed(
                    Quota::with_period(Duration::from_secs(c.mls.claim_refill_secs.max(1)))
                        .expect("the period is at least one second")
                        .allow_burst(NonZeroU32::new(c.mls.claim_burst).unwrap_or(NonZeroU32::MIN)),
                ),
                abuse: Abuse::new(c.abuse),
                lookups: std::sync::atomic::AtomicU64::new(0),
                mls: c.mls,
                shutdown: c.shutdown,
                interconnect: c.interconnect,
            }),
        }
    }

    pub fn store(&self) -> &Storage {
        &self.inner.store
    }

    /// The keys that verify provisioning tokens now.
    pub fn provisioning_keys(&self) -> Vec<relay_core::provisioning::VerifyingKey> {
        self.inner
            .provisioning_keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Deletes a retired or compromised provisioning key, then re-reads the keys.
    pub fn destroy_provisioning_key(&self, id: &str) -> anyhow::Result<()> {
        self.inner.key_provider.destroy_provisioning_key(id)?;
        self.reload_provisioning_keys().map(drop)
    }

    /// Re-reads the provisioning keys from the key provider; returns (old, new).
    pub fn reload_provisioning_keys(
        &self,
    ) -> anyhow::Result<(
        Vec<relay_core::provisioning::VerifyingKey>,
        Vec<relay_core::provisioning::VerifyingKey>,
    )> {
        let new = self.inner.key_provider.provisioning_keys()?;
        for k in new.iter().filter(|k| k.state.accepts_tokens()) {
            metrics::counter!("relay_registrations_total", "key" => provisioning_key_id(&k.public_key)).increment(0);
        }
        let mut keys = self
            .inner
            .provisioning_keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let old = std::mem::replace(&mut *keys, new.clone());
        Ok((old, new))
    }

    /// Re-reads the outbox key ring and hands it to the interconnect; returns the (old, new)
    /// current versions and the versions loaded, or `None` without an interconnect.
    pub fn reload_outbox_keys(&self) -> anyhow::Result<Option<(u8, u8, Vec<u8>)>> {
        let Some(ic) = self.interconnect() else {
            return Ok(None);
        };
        let ring = self.inner.key_provider.outbox_ring()?;
        let old = ic.sealer();
        let new = interconnect::record::Sealer::from_ring(&ring);
        let (old_current, new_current) = (old.current(), new.current());
        ic.set_sealer(new);
        Ok(Some((
            old_current,
            new_current,
            ring.keys.iter().map(|(v, _)| *v).collect(),
        )))
    }

    /// Seals and opens the records that name addresses (KeyPackages, GroupInfo).
    pub fn at_rest(&self) -> &relay_core::atrest::AtRest {
        &self.inner.at_rest
    }

    /// The sealing for records of `rid`: under the previous K_rid while `rid` still is.
    pub fn at_rest_for(&self, rid: &Rid) -> &relay_core::atrest::AtRest {
        match &self.inner.previous_at_rest {
            Some(previous) if self.inner.store.is_rekey_marked(rid) => previous,
            _ => &self.inner.at_rest,
        }
    }

    /// The sealing under the previous K_rid, during a rotation.
    pub fn previous_at_rest(&self) -> Option<&relay_core::atrest::AtRest> {
        self.inner.previous_at_rest.as_ref()
    }

    /// K_rid, current and (during a rotation) previous.
    pub fn rid_keys(&self) -> &relay_core::RidKeys {
        &self.inner.rid_keys
    }

    /// Moves the records of `addresses` to their rids under the current K_rid if a rotation
    /// left them under the previous one (nothing to do outside a rotation).
    pub async fn rekey(&self, addresses: Vec<relay_core::Address>) -> Result<(), ApiError> {
        if self.inner.rid_keys.previous.is_none() || self.inner.store.rekey_left() == 0 {
            return Ok(());
        }
        for a in &addresses {
            self.inner.store.rekey_address(&self.inner.rid_keys, a).await?;
        }
        Ok(())
    }

    pub fn key_provider(&self) -> &dyn crate::keys::KeyProvider {
        self.inner.key_provider.as_ref()
    }

    pub fn rid_key(&self) -> &RidKey {
        &self.inner.rid_key
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// How many credential lookups this gateway has made in storage (what credential
    /// guessing costs; a source past its failed authentications causes none).
    pub fn credential_lookups(&self) -> u64 {
        self.inner.lookups.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn interconnect(&self) -> Option<&Arc<interconnect::Interconnect>> {
        self.inner.interconnect.as_ref()
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
        .route("/v1/devices", post(devices::register))
        .route("/v1/devices/self", delete(devices::delete_self))
        .route(
            "/v1/devices/self/push",
            put(devices::set_push_handle).delete(devices::clear_push_handle),
        )
        .route("/v1/messages", post(messages::send).get(messages::receive))
        .route("/v1/messages/ack", post(messages::ack))
        .route("/v1/keypackages", post(keypackages::upload))
        .route("/v1/keypackages/claim", post(keypackages::claim))
        .route("/v1/keypackages/count", get(keypackages::count))
        .route("/v1/groups/{group}/info", get(groups::get_info).put(groups::put_info))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(move |req, next| {
            with_deadline(request_limit, req, next)
        }))
        .layer(middleware::from_fn(track_metrics))
        .layer(middleware::from_fn_with_state(state.clone(), guard_source))
        // Outermost: an early error waits for the rest of the request body (bounded), so
        // HTTP/2 clients read it instead of a reset stream.
        .layer(middleware::from_fn(relay_net::drain::drain_request_body))
        .with_state(state)
}

/// Ready when storage answers (a database node whose database is away is not: a load
/// balancer sends its clients elsewhere until it is back).
pub async fn healthz(State(state): State<AppState>) -> Response {
    ready(state.store()).await
}

/// `200 ok`, or `503` while storage does not answer within two seconds.
pub async fn ready(store: &Storage) -> Response {
    match tokio::time::timeout(Duration::from_secs(2), store.ready()).await {
        Ok(Ok(())) => "ok\n".into_response(),
        Ok(Err(e)) => {
            tracing::debug!(cause = %e, "not ready");
            (http::StatusCode::SERVICE_UNAVAILABLE, "storage unavailable\n").into_response()
        }
        Err(_) => (http::StatusCode::SERVICE_UNAVAILABLE, "storage unavailable\n").into_response(),
    }
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(ErrorCode::MethodNotAllowed, "method not allowed on this endpoint")
}

/// The per-source-address limits, before anything else runs: a source past its failed
/// authentications gets 429 `too_many_failed_auth` without a storage read (every request,
/// since telling a good credential from a guess takes one); a registration takes one of
/// the source's registration tokens. Each 401 answered costs the source one token.
async fn guard_source(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(source) = req.extensions().get::<ClientAddr>().copied() else {
        return next.run(req).await;
    };
    let abuse = &state.inner.abuse;
    let key = source.key();
    let now = abuse.now_ns();
    if req.uri().path() != "/healthz"
        && let Err(wait) = abuse.failed_auth.check(&key, 1, now)
    {
        metrics::counter!("relay_requests_limited_total", "limit" => "failed_auth").increment(1);
        return ApiError::limited(
            ErrorCode::TooManyFailedAuth,
            "too many failed authentications from this address",
            wait,
        )
        .into_response();
    }
    if req.method() == http::Method::POST
        && req.uri().path() == "/v1/devices"
        && let Err(wait) = abuse.registrations.take(&key, 1, now)
    {
        metrics::counter!("relay_requests_limited_total", "limit" => "registration").increment(1);
        return ApiError::limited(
            ErrorCode::RegistrationRateLimited,
            "too many registrations from this address",
            wait,
        )
        .into_response();
    }
    let resp = next.run(req).await;
    if resp.status() == http::StatusCode::UNAUTHORIZED {
        let _ = abuse.failed_auth.take(&key, 1, abuse.now_ns());
    }
    resp
}

async fn with_deadline(limit: Duration, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::new(ErrorCode::Timeout, "request took too long").into_response(),
    }
}

/// Requests by route, method, status and HTTP version; latency by route, method and version. Routes are
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
    metrics::counter!("relay_http_requests_total", "route" => route.clone(), "method" => method.clone(), "status" => status, "transport" => version)
        .increment(1);
    metrics::histogram!("relay_http_request_duration_seconds", "route" => route, "method" => method, "transport" => version)
        .record(start.elapsed().as_secs_f64());
    resp
}

/// The provisioning key's id in metrics and logs: the first 8 hex digits of SHA-256 over the
/// public key (what an operator compares with `keys/provisioning.pub`).
pub fn provisioning_key_id(public_key: &[u8]) -> String {
    relay_core::hex::encode(&relay_core::provisioning::key_id(public_key))
}
