//! Carrier interconnect: peering with other carriers over mutual TLS, modelled on the IETF
//! MIMI protocol (draft-ietf-mimi-protocol-06).
//!
//! - [`config`]: `[interconnect]` and the peers file (re-read on reload).
//! - [`tls`]: a client certificate maps to exactly one peer (CA + CRLs with
//!   `enforce_revocation_expiration`, domain name, optional SPKI pin), TLS 1.3 only.
//! - [`record`]: outbox records sealed under the gateway's outbox key.
//! - This module: the peer table, the inbound endpoints (directory, `notify`, key material),
//!   the accept loop that drops a peer's connections when its certificate stops verifying,
//!   the outbound dispatcher draining the durable outbox, and remote KeyPackage claims.
//!
//! Routing, residency and the outbox entry state machine are sans-IO in
//! [`relay_core::interconnect`].
//!
//! # Deviations from the MIMI draft
//! Bodies are JSON (addresses, base64 MLS messages) rather than TLS-presentation-language
//! structures; `notify` carries an envelope for named recipients rather than a hub's fan-out
//! of a room's handshake and application messages (this relay has no room state: it is a
//! Delivery Service for MLS messages whose ordering the hub carrier enforces); the envelope id
//! is the sending gateway's 16-byte server id in the path; key-material requests name the
//! requester's address instead of a MIMI user URI and are rate-limited per (peer, requester,
//! target) as our consent policy.

#![forbid(unsafe_code)]

pub mod config;
pub mod record;
pub mod tls;

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Path as AxPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use relay_core::interconnect::{Attempt, Next, PeerRoute, Route, RoutingTable};
use relay_core::push::{Backoff, parse_retry_after};
use relay_core::{Address, ClientMessageId, DeviceId, Envelope, Rid, RidKey, ServerId};
use rustls::pki_types::UnixTime;
use serde::{Deserialize, Serialize};
use storage::{OutboxItem, RecipientSpec, SendError, SendOutcome, SendRequest, SledStore, Store as _};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{InterconnectConfig, PeerConfig, PeersFile};
use crate::record::{RemotePart, Sealer};
use crate::tls::PeerIdentity;

type Https = HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// One configured peer.
pub struct Peer {
    pub cfg: PeerConfig,
    http: Https,
    limiter: DefaultDirectRateLimiter,
    claim_limiter: DefaultKeyedRateLimiter<(Rid, Rid)>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("name", &self.cfg.name)
            .finish_non_exhaustive()
    }
}

/// The peer table: replaced whole on reload.
#[derive(Debug)]
pub struct Table {
    pub routing: RoutingTable,
    pub peers: Vec<Arc<Peer>>,
    identities: Arc<Vec<PeerIdentity>>,
    server: Arc<rustls::ServerConfig>,
}

impl Table {
    fn peer(&self, name: &str) -> Option<&Arc<Peer>> {
        self.peers.iter().find(|p| p.cfg.name == name)
    }
}

/// Called after an inbound envelope is stored (wake live receivers, schedule pushes).
pub type OnStored = Arc<dyn Fn(&SendOutcome, bool) + Send + Sync>;

/// The interconnect of one gateway.
pub struct Interconnect {
    cfg: InterconnectConfig,
    table: RwLock<Arc<Table>>,
    generation: watch::Sender<u64>,
    store: Arc<SledStore>,
    rid_key: RidKey,
    sealer: Sealer,
    kick: Notify,
    on_stored: OnStored,
    limits: relay_core::Limits,
}

impl std::fmt::Debug for Interconnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interconnect")
            .field("domain", &self.cfg.domain)
            .finish_non_exhaustive()
    }
}

/// A send refused by policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("recipient {index} is served by peer {peer} in {jurisdiction}, outside the allowed jurisdictions")]
pub struct ResidencyRefusal {
    pub index: usize,
    pub peer: String,
    pub jurisdiction: String,
}

/// Where a send's recipients go.
#[derive(Debug, Default)]
pub struct Plan {
    /// Indices of local recipients.
    pub local: Vec<usize>,
    /// Peer name → addresses.
    pub remote: Vec<(String, Vec<String>)>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn build_table(cfg: &InterconnectConfig) -> Result<Table, String> {
    let file = PeersFile::load(&cfg.peers_file)?;
    let chain = tls::load_certs(&cfg.cert)?;
    let key = tls::load_key(&cfg.key)?;
    let mut identities = Vec::new();
    let mut peers = Vec::new();
    let mut routes = Vec::new();
    for p in &file.peers {
        identities.push(PeerIdentity::new(&p.domain, &p.ca, &p.crls, p.spki_sha256.as_deref())?);
        let client = tls::client_config(&p.ca, chain.clone(), key.clone_key())?;
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(Duration::from_secs(cfg.request_timeout_secs)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(client)
            .https_only()
            .enable_http2()
            .wrap_connector(tcp);
        let nz = |v: u32| NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN);
        peers.push(Arc::new(Peer {
            http: HyperClient::builder(TokioExecutor::new())
                .http2_only(true)
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
            limiter: RateLimiter::direct(Quota::per_second(nz(p.requests_per_second)).allow_burst(nz(p.burst))),
            claim_limiter: RateLimiter::keyed(
                Quota::with_period(Duration::from_secs(p.claim_refill_secs.max(1)))
                    .expect("the period is at least a second")
                    .allow_burst(nz(p.claim_burst)),
            ),
            cfg: p.clone(),
        }));
        routes.push(PeerRoute {
            name: p.name.clone(),
            prefixes: p.prefixes.clone(),
            jurisdiction: p.jurisdiction.clone(),
        });
    }
    let identities = Arc::new(identities);
    let server = Arc::new(tls::server_config(chain, key, Arc::clone(&identities))?);
    Ok(Table {
        routing: RoutingTable {
            local_prefixes: cfg.local_prefixes.clone(),
            peers: routes,
            allowed_jurisdictions: cfg.allowed_jurisdictions.clone(),
        },
        peers,
        identities,
        server,
    })
}

impl Interconnect {
    pub fn new(
        cfg: InterconnectConfig,
        store: Arc<SledStore>,
        rid_key: RidKey,
        key_dir: &std::path::Path,
        limits: relay_core::Limits,
        on_stored: OnStored,
    ) -> Result<Arc<Self>, String> {
        let table = build_table(&cfg)?;
        warn_disallowed(&table.routing);
        Ok(Arc::new(Self {
            sealer: Sealer::open_or_create(key_dir)?,
            table: RwLock::new(Arc::new(table)),
            generation: watch::channel(0).0,
            store,
            rid_key,
            kick: Notify::new(),
            on_stored,
            limits,
            cfg,
        }))
    }

    pub fn table(&self) -> Arc<Table> {
        Arc::clone(&self.table.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Re-reads the peers file and CRLs; open connections of peers that no longer verify are
    /// closed. Returns the number of peers.
    pub async fn reload(&self) -> Result<usize, String> {
        let table = build_table(&self.cfg)?;
        warn_disallowed(&table.routing);
        let n = table.peers.len();
        // Entries queued for a peer that is no longer configured wait (they are delivered if
        // it comes back); say so rather than let them age silently.
        for old in &self.table().peers {
            let name = old.cfg.name.as_str();
            if table.peer(name).is_none()
                && let Ok((depth, _)) = self.store.outbox_depth(name).await
                && depth > 0
            {
                tracing::warn!(peer = name, depth, "peer removed with envelopes still in its outbox");
            }
        }
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
        self.generation.send_modify(|g| *g += 1);
        let _ = self
            .store
            .audit_append("interconnect.reload", format!("{n} peers"), now_ms())
            .await;
        tracing::info!(peers = n, "interconnect peers reloaded");
        self.kick.notify_one();
        Ok(n)
    }

    /// Splits recipients into local ones and remote ones per peer, refusing the whole send if
    /// any route leaves the allowed jurisdictions (the refusal is audited by the caller).
    pub fn plan(&self, addresses: &[Address]) -> Result<Plan, ResidencyRefusal> {
        let table = self.table();
        let mut plan = Plan::default();
        let mut by_peer: HashMap<usize, Vec<String>> = HashMap::new();
        for (index, a) in addresses.iter().enumerate() {
            match table.routing.route(a) {
                Route::Local => plan.local.push(index),
                Route::Peer(p) => {
                    table.routing.allowed(p).map_err(|v| ResidencyRefusal {
                        index,
                        peer: v.peer,
                        jurisdiction: v.jurisdiction,
                    })?;
                    by_peer.entry(p).or_default().push(a.as_str().to_owned());
                }
            }
        }
        let mut remote: Vec<_> = by_peer.into_iter().collect();
        remote.sort_by_key(|(p, _)| *p);
        plan.remote = remote
            .into_iter()
            .map(|(p, addrs)| (table.routing.peers[p].name.clone(), addrs))
            .collect();
        Ok(plan)
    }

    /// Records a residency refusal in the audit log.
    pub async fn audit_refusal(&self, refusal: &ResidencyRefusal) {
        metrics::counter!("interconnect_refusals_total", "peer" => refusal.peer.clone(), "reason" => "residency")
            .increment(1);
        // The audit record names the peer and jurisdiction, never the address.
        let _ = self
            .store
            .audit_append(
                "residency.refused",
                format!("peer={} jurisdiction={}", refusal.peer, refusal.jurisdiction),
                now_ms(),
            )
            .await;
    }

    /// Outbox items for a send's remote parts.
    pub fn outbox_items(&self, plan: &Plan, message: &Bytes, urgent: bool) -> Vec<OutboxItem> {
        plan.remote
            .iter()
            .map(|(peer, recipients)| OutboxItem {
                peer: peer.clone(),
                record: Bytes::from(self.sealer.seal(&RemotePart {
                    recipients: recipients.clone(),
                    message: message.clone(),
                    urgent,
                })),
            })
            .collect()
    }

    /// New outbox entries exist: deliver now.
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// Claims KeyPackages of `targets` at `peer` for `requester` (synchronous, over mTLS).
    pub async fn claim_remote(
        &self,
        peer: &str,
        requester: &Address,
        targets: &[String],
    ) -> Result<Vec<RemoteKeyPackage>, String> {
        let table = self.table();
        let p = table.peer(peer).ok_or_else(|| format!("unknown peer {peer}"))?;
        let body = serde_json::to_vec(&KeyMaterialRequest {
            requester: requester.as_str().to_owned(),
            targets: targets.to_vec(),
        })
        .map_err(|e| e.to_string())?;
        let url = format!("{}/mimi/v1/keyMaterial", p.cfg.endpoint.trim_end_matches('/'));
        let (status, _, body) = self.post(p, &url, body).await?;
        if status != 200 {
            return Err(format!("peer {peer} answered {status}"));
        }
        let resp: KeyMaterialResponse = serde_json::from_slice(&body).map_err(|e| format!("peer {peer}: {e}"))?;
        Ok(resp.key_packages)
    }

    async fn post(&self, p: &Peer, url: &str, body: Vec<u8>) -> Result<(u16, Option<String>, Bytes), String> {
        let req = http::Request::post(url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let resp = p.http.request(req).await.map_err(|e| format!("{e:#}"))?;
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = http_body_util::Limited::new(resp.into_body(), 4 << 20)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok((status, retry_after, body))
        };
        tokio::time::timeout(Duration::from_secs(self.cfg.request_timeout_secs), exchange)
            .await
            .map_err(|_| "timeout".to_owned())?
    }

    /// Delivers outbox entries until `shutdown`: per peer at most `concurrency_per_peer` in
    /// flight; an entry is deleted only after the peer's 2xx.
    pub async fn run_outbound(self: Arc<Self>, shutdown: CancellationToken) {
        let in_flight: Arc<std::sync::Mutex<HashSet<(String, u64)>>> = Arc::default();
        let backoff = Backoff {
            base: Duration::from_millis(self.cfg.backoff_base_ms),
            cap: Duration::from_secs(self.cfg.backoff_cap_secs),
            max_attempts: u32::MAX,
        };
        let mut gauges = Instant::now();
        loop {
            let table = self.table();
            for peer in &table.peers {
                let name = peer.cfg.name.clone();
                let busy: usize = in_flight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .filter(|(p, _)| *p == name)
                    .count();
                let free = self.cfg.concurrency_per_peer.saturating_sub(busy);
                if free == 0 {
                    continue;
                }
                let due = match self.store.outbox_due(&name, now_ms(), free + busy).await {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::warn!(cause = %e, "reading the outbox");
                        continue;
                    }
                };
                for entry in due {
                    if !in_flight
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert((name.clone(), entry.seq))
                    {
                        continue;
                    }
                    let seq = entry.seq;
                    let (this, peer, in_flight) = (Arc::clone(&self), Arc::clone(peer), Arc::clone(&in_flight));
                    tokio::spawn(async move {
                        this.deliver(&peer, entry, backoff).await;
                        in_flight
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&(peer.cfg.name.clone(), seq));
                        this.kick.notify_one();
                    });
                }
            }
            if gauges.elapsed() >= Duration::from_secs(1) {
                gauges = Instant::now();
                for peer in &table.peers {
                    if let Ok((depth, oldest)) = self.store.outbox_depth(&peer.cfg.name).await {
                        let name = peer.cfg.name.clone();
                        metrics::gauge!("interconnect_outbox_depth", "peer" => name.clone()).set(depth as f64);
                        let age = oldest.map_or(0, |o| now_ms().saturating_sub(o)) as f64 / 1000.0;
                        metrics::gauge!("interconnect_outbox_oldest_seconds", "peer" => name).set(age);
                    }
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.kick.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    async fn deliver(&self, peer: &Peer, entry: storage::OutboxEntry, backoff: Backoff) {
        let name = peer.cfg.name.as_str();
        let Some(part) = self.sealer.open(&entry.record) else {
            let _ = self
                .store
                .outbox_dead_letter(name, entry.seq, "outbox record does not open".into(), now_ms())
                .await;
            return;
        };
        let body = serde_json::to_vec(&NotifyBody {
            recipients: part.recipients,
            message: B64.encode(&part.message),
            urgent: part.urgent,
        })
        .unwrap_or_default();
        let url = format!(
            "{}/mimi/v1/notify/{}",
            peer.cfg.endpoint.trim_end_matches('/'),
            relay_core::hex::encode(&entry.envelope_id.0)
        );
        let started = Instant::now();
        let attempt = match self.post(peer, &url, body).await {
            Ok((200..=299, _, _)) => Attempt::Delivered,
            Ok((status @ (429 | 500..=599), ra, _)) => {
                tracing::debug!(peer = name, status, "interconnect delivery deferred");
                Attempt::Transient {
                    retry_after: ra.as_deref().and_then(parse_retry_after),
                }
            }
            Ok((status, _, _)) => Attempt::Permanent { status },
            Err(e) => {
                tracing::debug!(peer = name, cause = %e, "interconnect delivery failed");
                Attempt::Transient { retry_after: None }
            }
        };
        metrics::histogram!("interconnect_delivery_seconds", "peer" => name.to_owned())
            .record(started.elapsed().as_secs_f64());
        let mut state = entry.state;
        let next = state.after(
            &attempt,
            now_ms(),
            self.cfg.outbox_ttl_secs * 1000,
            backoff,
            rand::random(),
        );
        let result = match &next {
            Next::Delete => {
                metrics::counter!("interconnect_deliveries_total", "peer" => name.to_owned(), "result" => "delivered")
                    .increment(1);
                self.store.outbox_delete(name, entry.seq).await
            }
            Next::RetryAt(_) => {
                metrics::counter!("interconnect_retries_total", "peer" => name.to_owned()).increment(1);
                self.store.outbox_retry(name, entry.seq, state).await
            }
            Next::DeadLetter(reason) => {
                metrics::counter!("interconnect_dead_letters_total", "peer" => name.to_owned()).increment(1);
                tracing::warn!(
                    peer = name,
                    reason = reason.as_str(),
                    "interconnect envelope dead-lettered"
                );
                self.store
                    .outbox_dead_letter(
                        name,
                        entry.seq,
                        format!(
                            "peer={name} envelope={} {reason}",
                            relay_core::hex::encode(&entry.envelope_id.0)
                        ),
                        now_ms(),
                    )
                    .await
            }
        };
        if let Err(e) = result {
            tracing::warn!(cause = %e, "updating the outbox");
        }
    }
}

fn warn_disallowed(routing: &RoutingTable) {
    for p in routing.disallowed_peers() {
        tracing::warn!(
            peer = p.name.as_str(),
            jurisdiction = p.jurisdiction.as_str(),
            "peer is outside the allowed jurisdictions: sends routed to it will be refused"
        );
    }
}

fn unhex16(s: &str) -> Option<[u8; 16]> {
    relay_core::hex::decode(s)?.try_into().ok()
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyBody {
    pub recipients: Vec<String>,
    /// Standard base64 of one MLSMessage.
    pub message: String,
    #[serde(default)]
    pub urgent: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyMaterialRequest {
    pub requester: String,
    pub targets: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RemoteKeyPackage {
    pub address: String,
    pub device_id: u32,
    /// Standard base64 of the TLS-encoded KeyPackage.
    pub key_package: String,
    pub last_resort: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct KeyMaterialResponse {
    pub key_packages: Vec<RemoteKeyPackage>,
}

/// The peer a request came from (set per connection by the accept loop).
#[derive(Debug, Clone)]
pub struct PeerName(pub String);

fn err(status: StatusCode, code: &'static str) -> Response {
    (status, Json(serde_json::json!({ "error": code }))).into_response()
}

impl Interconnect {
    /// The inbound router (needs a [`PeerName`] extension per connection).
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/.well-known/mimi-protocol-directory", get(directory))
            .route("/mimi/v1/notify/{envelope_id}", post(notify))
            .route("/mimi/v1/keyMaterial", post(key_material))
            .layer(tower_http::limit::RequestBodyLimitLayer::new(4 << 20))
            .with_state(Arc::clone(self))
    }

    fn rate_limited(&self, peer: &str) -> Option<Response> {
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
    let Some(id) = unhex16(&envelope_id) else {
        count("invalid");
        return err(StatusCode::BAD_REQUEST, "invalid_envelope_id");
    };
    let Ok(Json(body)) = body else {
        count("invalid");
        return err(StatusCode::BAD_REQUEST, "invalid_body");
    };
    if body.recipients.is_empty() || body.recipients.len() > ic.limits.max_recipients {
        count("invalid");
        return err(StatusCode::BAD_REQUEST, "invalid_recipients");
    }
    let Ok(message) = B64.decode(&body.message) else {
        count("invalid");
        return err(StatusCode::BAD_REQUEST, "invalid_body");
    };
    let Ok(envelope) = Envelope::parse(Bytes::from(message), &ic.limits) else {
        count("invalid");
        return err(StatusCode::BAD_REQUEST, "invalid_mls");
    };
    let table = ic.table();
    let mut recipients = Vec::with_capacity(body.recipients.len());
    let mut seen = HashSet::new();
    for r in &body.recipients {
        let Ok(a) = Address::parse(r) else {
            count("invalid");
            return err(StatusCode::BAD_REQUEST, "invalid_address");
        };
        // Only numbers we serve: a peer must not use us as a transit.
        if table.routing.route(&a) != Route::Local {
            count("misrouted");
            return err(StatusCode::MISDIRECTED_REQUEST, "not_served_here");
        }
        let rid = ic.rid_key.rid(&a);
        if seen.insert(rid) {
            recipients.push(RecipientSpec { rid, devices: None });
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
        recipients,
        message: envelope.into_ciphertext(),
        client_message_id: Some(ClientMessageId(id)),
        request_digest: *digest.finalize().as_bytes(),
        urgent: body.urgent,
        now_ms: now_ms(),
        ttl_ms: ic.limits.ttl_ms,
        max_queue_bytes: ic.limits.max_queue_bytes_per_device,
        ordering: None,
        outbox: Vec::new(),
    };
    match ic.store.send(request).await {
        Ok(outcome) => {
            count(if outcome.duplicate { "duplicate" } else { "stored" });
            (ic.on_stored)(&outcome, body.urgent);
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
    let Ok(Json(req)) = body else {
        return err(StatusCode::BAD_REQUEST, "invalid_body");
    };
    let Ok(requester) = Address::parse(&req.requester) else {
        return err(StatusCode::BAD_REQUEST, "invalid_address");
    };
    if req.targets.is_empty() || req.targets.len() > ic.limits.max_recipients {
        return err(StatusCode::BAD_REQUEST, "invalid_recipients");
    }
    let table = ic.table();
    let Some(p) = table.peer(&peer) else {
        return err(StatusCode::FORBIDDEN, "unknown_peer");
    };
    // The requester must be a number the requesting peer serves.
    if table.routing.route(&requester)
        != Route::Peer(
            table
                .peers
                .iter()
                .position(|x| x.cfg.name == peer)
                .unwrap_or(usize::MAX),
        )
    {
        return err(StatusCode::FORBIDDEN, "requester_not_served_by_peer");
    }
    let requester_rid = ic.rid_key.rid(&requester);
    let mut targets = Vec::new();
    let mut by_rid = HashMap::new();
    for t in &req.targets {
        let Ok(a) = Address::parse(t) else {
            return err(StatusCode::BAD_REQUEST, "invalid_address");
        };
        if table.routing.route(&a) != Route::Local {
            return err(StatusCode::MISDIRECTED_REQUEST, "not_served_here");
        }
        let rid = ic.rid_key.rid(&a);
        if by_rid.insert(rid, a.as_str().to_owned()).is_some() {
            return err(StatusCode::BAD_REQUEST, "duplicate_target");
        }
        targets.push(rid);
    }
    for rid in &targets {
        if p.claim_limiter.check_key(&(requester_rid, *rid)).is_err() {
            let mut r = err(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
            r.headers_mut()
                .insert("retry-after", http::HeaderValue::from_static("60"));
            return r;
        }
    }
    match ic.store.claim_key_packages(targets, now_ms()).await {
        Ok(claimed) => {
            metrics::counter!("interconnect_key_packages_claimed_total", "peer" => peer.clone())
                .increment(claimed.len() as u64);
            Json(KeyMaterialResponse {
                key_packages: claimed
                    .into_iter()
                    .map(|c| RemoteKeyPackage {
                        address: by_rid.get(&c.rid).cloned().unwrap_or_default(),
                        device_id: c.device.0,
                        key_package: B64.encode(&c.bytes),
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

impl Interconnect {
    /// Accepts peer connections until `shutdown`. Each connection is bound to the peer its
    /// certificate maps to, and re-verified at every reload and every `recheck_secs`: a
    /// certificate that no longer verifies (revoked, expired, peer removed) closes it.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken, tracker: TaskTracker) {
        let router = self.router();
        loop {
            let tcp = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _)) => tcp,
                    Err(e) => {
                        tracing::warn!(cause = %e, "interconnect accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let (this, router, shutdown) = (Arc::clone(&self), router.clone(), shutdown.clone());
            tracker.spawn(async move { this.connection(tcp, router, shutdown).await });
        }
    }

    async fn connection(self: Arc<Self>, tcp: tokio::net::TcpStream, router: Router, shutdown: CancellationToken) {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&self.table().server));
        let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                let reason = e
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                    .map_or("handshake", tls::failure_reason);
                metrics::counter!("interconnect_handshake_failures_total", "reason" => reason).increment(1);
                tracing::debug!(reason, cause = %e, "interconnect handshake refused");
                return;
            }
            Err(_) => {
                metrics::counter!("interconnect_handshake_failures_total", "reason" => "timeout").increment(1);
                return;
            }
        };
        let chain: Vec<_> = tls
            .get_ref()
            .1
            .peer_certificates()
            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default();
        let identify = |ic: &Self| -> Option<String> {
            let (ee, rest) = chain.split_first()?;
            let table = ic.table();
            let i = tls::identify(&table.identities, ee, rest, UnixTime::now()).ok()?;
            Some(table.peers[i].cfg.name.clone())
        };
        let Some(peer) = identify(&self) else { return };
        metrics::counter!("interconnect_connections_total", "peer" => peer.clone()).increment(1);
        let service = router.layer(Extension(PeerName(peer.clone())));
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(10));
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(256)
            .keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(20));
        let conn = builder.serve_connection(
            TokioIo::new(tls),
            hyper_util::service::TowerToHyperService::new(service),
        );
        tokio::pin!(conn);
        let mut reloads = self.generation.subscribe();
        let mut recheck = tokio::time::interval(Duration::from_secs(self.cfg.recheck_secs.max(1)));
        recheck.tick().await;
        loop {
            tokio::select! {
                _ = conn.as_mut() => return,
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn.as_mut()).await;
                    return;
                }
                changed = reloads.changed() => {
                    if changed.is_err() { return; }
                }
                _ = recheck.tick() => {}
            }
            if identify(&self).as_deref() != Some(peer.as_str()) {
                tracing::info!(
                    peer = peer.as_str(),
                    "closing a connection whose certificate no longer verifies"
                );
                metrics::counter!("interconnect_connections_closed_total", "peer" => peer.clone(), "reason" => "reverify")
                    .increment(1);
                return;
            }
        }
    }

    pub fn config(&self) -> &InterconnectConfig {
        &self.cfg
    }

    pub fn server_id_hex(id: &ServerId) -> String {
        relay_core::hex::encode(&id.0)
    }
}
