//! Listeners: device-facing TLS (`/v1/push/register`, `/healthz`), gateway-facing mutual TLS
//! (`/v1/notify`, `/healthz`) and a plain admin listener (`/metrics`, `/healthz`).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use relay_core::push::Backoff;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::error::SetupError;
use crate::sender::{ApnsConfig, FcmConfig, Sender, SenderConfig};
use crate::service::{self, Proxy, PushQueue};

/// Bodies larger than this are refused (a registration or a full notify batch fits).
const MAX_BODY: usize = 256 * 1024;
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_CONNECTIONS: usize = 4096;
/// Connections per source address (an IPv6 /64) on each TLS listener.
const MAX_CONNECTIONS_PER_ADDRESS: u32 = 256;

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

fn prometheus() -> &'static PrometheusHandle {
    PROMETHEUS.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // In a process that already has a recorder (a test running a gateway too), ours
        // renders only what reaches it.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// A running push proxy.
#[derive(Debug)]
pub struct Running {
    pub listen: SocketAddr,
    pub notify_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    tracker: TaskTracker,
}

impl Running {
    /// Waits until every listener and connection has finished after shutdown.
    pub async fn stopped(self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// Builds the proxy from `config` and serves until `shutdown` is cancelled.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running, SetupError> {
    // The recorder first: what certificate loading records is kept.
    let metrics = prometheus();
    ::metrics::counter!("push_connections_refused_total").increment(0);
    // The recorder first: what certificate loading records is kept.
    let key_dir = config.data_dir.join("keys");
    let provider = relay_keys::Provider::open(&config.keys)?;
    let keys = crate::keys::handle_keys(&provider, &key_dir, config.handles.current_key_id)?;
    for e in provider.take_events() {
        tracing::info!(key = %e.name, fingerprint = %e.fingerprint, event = e.kind, "{}", provider.describe(&key_dir));
    }
    let vapid_key = crate::keys::vapid_key(config.webpush.vapid_key_file.as_deref(), &key_dir)?;
    let apns = match &config.apns {
        Some(a) => Some(ApnsConfig {
            base_url: a.base_url.clone(),
            topic: a.topic.clone(),
            team_id: a.team_id.clone(),
            key_id: a.key_id.clone(),
            key: crate::keys::p256_key(&a.key_file)?,
        }),
        None => None,
    };
    let fcm = match &config.fcm {
        Some(f) => {
            let sa = crate::keys::service_account(&f.service_account_file)?;
            Some(FcmConfig {
                base_url: f.base_url.clone(),
                project_id: sa.project_id,
                token_uri: sa.token_uri,
                client_email: sa.client_email,
                key: sa.key,
            })
        }
        None => None,
    };
    let d = &config.delivery;
    let sender = Sender::new(SenderConfig {
        ca_file: d.ca_file.clone(),
        apns,
        fcm,
        vapid_key,
        vapid_subject: config.webpush.subject.clone(),
        ttl: Duration::from_secs(d.ttl_secs),
        backoff: Backoff {
            base: Duration::from_millis(d.backoff_base_ms),
            cap: Duration::from_secs(d.backoff_cap_secs),
            max_attempts: d.max_attempts,
        },
        max_in_flight: d.max_in_flight_per_provider,
        request_timeout: config.request_timeout(),
    })?;
    let tracker = TaskTracker::new();
    let proxy_providers = sender.providers();
    let proxy = Arc::new(Proxy::new(
        keys,
        sender,
        PushQueue {
            slots: d.queue,
            notify_wait: Duration::from_millis(d.notify_wait_ms),
            max_batch: d.max_batch,
        },
        config.webpush.allowed_hosts.clone(),
        tracker.clone(),
        shutdown.clone(),
    ));
    let device_certs = crate::tls::device_certs(&config)?;
    let (device_tls, notify_tls) = crate::tls::server_configs(&config, &device_certs)?;
    let acme = match &config.acme {
        Some(acme_config) => {
            let client = relay_net::acme::AcmeClient::new(
                acme_config.clone(),
                key_dir.join("acme-account.json"),
                Arc::clone(device_certs.challenges()),
            );
            Some(relay_net::acme::Manager::new(
                client,
                Arc::clone(&device_certs) as Arc<dyn relay_net::acme::CertSink>,
                "device",
            ))
        }
        None => None,
    };
    // The extractors enforce the limit (413 `body_too_large` in JSON, like every refusal).
    let body_limit = axum::extract::DefaultBodyLimit::max(MAX_BODY);
    let nz = |v: u32| std::num::NonZeroU32::new(v).unwrap_or(std::num::NonZeroU32::MIN);
    let limiter: Arc<governor::DefaultKeyedRateLimiter<std::net::IpAddr>> = Arc::new(governor::RateLimiter::keyed(
        governor::Quota::per_second(nz(config.registration.per_ip_per_second))
            .allow_burst(nz(config.registration.per_ip_burst)),
    ));
    let device = Router::new()
        .route("/v1/push/register", post(service::register))
        .route_layer(axum::middleware::from_fn_with_state(limiter, per_ip_limit))
        .route("/healthz", get(|| async { "ok" }))
        .layer(body_limit)
        .layer(axum::middleware::from_fn(relay_net::drain::drain_request_body))
        .with_state(Arc::clone(&proxy));
    let notify = Router::new()
        .route("/v1/notify", post(service::notify))
        .route("/healthz", get(|| async { "ok" }))
        .layer(body_limit)
        .layer(axum::middleware::from_fn(relay_net::drain::drain_request_body))
        .with_state(proxy);
    let admin = Router::new()
        .route("/metrics", get(move || async move { metrics.render() }))
        .route("/healthz", get(|| async { "ok" }))
        .merge(admin_tls_routes(
            Arc::clone(&device_certs),
            acme.as_ref().map(|(_, handle)| handle.clone()),
        ));

    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| SetupError::Bind { addr, source })
    };
    let (l1, l2, l3) = (
        bind(config.listen).await?,
        bind(config.notify_listen).await?,
        bind(config.admin_listen).await?,
    );
    if let Some(addr) = config.acme.as_ref().and_then(|a| {
        (a.challenge == relay_net::acme::ChallengeKind::Http01)
            .then_some(a.http01_listen)
            .flatten()
    }) {
        tracker.spawn(relay_net::acme::serve_http01(
            bind(addr).await?,
            Arc::clone(device_certs.challenges()),
            shutdown.clone(),
        ));
    }
    let addr = |l: &TcpListener| {
        l.local_addr().map_err(|source| SetupError::Bind {
            addr: config.listen,
            source,
        })
    };
    let running = Running {
        listen: addr(&l1)?,
        notify_listen: addr(&l2)?,
        admin_listen: addr(&l3)?,
        tracker,
    };
    let t = running.tracker.clone();
    t.spawn(serve_tls(
        "device",
        l1,
        TlsAcceptor::from(device_tls),
        device,
        shutdown.clone(),
        t.clone(),
    ));
    t.spawn(serve_tls(
        "notify",
        l2,
        TlsAcceptor::from(notify_tls),
        notify,
        shutdown.clone(),
        t.clone(),
    ));
    let admin_shutdown = shutdown.clone();
    t.spawn(async move {
        let _ = axum::serve(l3, admin)
            .with_graceful_shutdown(async move { admin_shutdown.cancelled().await })
            .await;
    });
    if let Some((mut manager, _)) = acme {
        // The first certificate before the proxy says it is ready; the device listener
        // just started answers the tls-alpn-01 validation and refuses other handshakes.
        if let Err(e) = manager.obtain_initial().await {
            shutdown.cancel();
            running.tracker.close();
            running.tracker.wait().await;
            return Err(e.into());
        }
        t.spawn(manager.run(shutdown.clone()));
    }
    let providers = proxy_providers.join(",");
    for (name, section) in [("apns", "[apns]"), ("fcm", "[fcm]")] {
        if !proxy_providers.contains(&name) {
            tracing::warn!(
                provider = name,
                "{name} is not configured: pushes to {name} devices will be rejected (add {section} to the configuration)"
            );
        }
    }
    tracing::info!(
        listen = %running.listen,
        notify_listen = %running.notify_listen,
        admin_listen = %running.admin_listen,
        providers,
        acme = config.acme.is_some(),
        "push proxy ready"
    );
    Ok(running)
}

/// `POST /admin/tls/reload` (the device certificate's files) and, with `[acme]`,
/// `GET /admin/acme`, `POST /admin/acme/renew`, `POST /admin/acme/revoke?reason=…`.
fn admin_tls_routes(certs: Arc<relay_net::certs::CertStore>, acme: Option<relay_net::acme::AcmeHandle>) -> Router {
    use axum::response::IntoResponse as _;
    let reload = move || {
        let certs = Arc::clone(&certs);
        async move {
            match certs.reload() {
                Ok(()) => http::StatusCode::NO_CONTENT.into_response(),
                Err(e) => {
                    tracing::warn!(cause = %e, "TLS reload failed; keeping the old certificate");
                    (http::StatusCode::UNPROCESSABLE_ENTITY, format!("{e}\n")).into_response()
                }
            }
        }
    };
    // Operator ACME commands are logged (the proxy keeps no audit log).
    let record: relay_net::acme::admin::Record = Arc::new(|kind, detail| {
        Box::pin(async move { tracing::warn!(kind, detail = %detail, "device certificate changed by an operator") })
    });
    Router::new()
        .route("/admin/tls/reload", post(reload))
        .merge(relay_net::acme::admin::routes(acme, "device", record))
}

/// The client's address, set per connection.
#[derive(Debug, Clone, Copy)]
struct PeerIp(std::net::IpAddr);

/// Token bucket per client IP on registration: 429 `rate_limited` with `Retry-After`.
async fn per_ip_limit(
    axum::extract::State(limiter): axum::extract::State<Arc<governor::DefaultKeyedRateLimiter<std::net::IpAddr>>>,
    axum::Extension(PeerIp(ip)): axum::Extension<PeerIp>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    match limiter.check_key(&ip) {
        Ok(()) => next.run(req).await,
        Err(not_until) => {
            metrics::counter!("push_registrations_refused_total", "reason" => "rate_limited").increment(1);
            let wait = not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
            let mut r = (
                http::StatusCode::TOO_MANY_REQUESTS,
                axum::Json(serde_json::json!({ "code": "rate_limited" })),
            )
                .into_response();
            if let Ok(v) = http::HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
                r.headers_mut().insert("retry-after", v);
            }
            r
        }
    }
}

async fn serve_tls(
    listener_name: &'static str,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: Router,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let per_address = relay_net::serve::PerAddress::new(MAX_CONNECTIONS_PER_ADDRESS);
    loop {
        let Some(tcp) = relay_net::serve::accept(&listener, &shutdown).await else {
            return;
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            metrics::counter!("push_connections_refused_total").increment(1);
            continue;
        };
        let (tcp, peer) = tcp;
        let Some(slot) = per_address.try_acquire(peer.ip()) else {
            metrics::counter!("push_connections_refused_total", "reason" => "per_address").increment(1);
            continue;
        };
        let (acceptor, shutdown) = (acceptor.clone(), shutdown.clone());
        let router = router.clone().layer(axum::Extension(PeerIp(peer.ip())));
        tracker.spawn(async move {
            let (_permit, _slot) = (permit, slot);
            let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(cause = %e, "TLS handshake failed");
                    metrics::counter!("push_tls_handshake_failures_total").increment(1);
                    return;
                }
                Err(_) => return,
            };
            if tls.get_ref().1.alpn_protocol() == Some(relay_net::acme::ACME_TLS_ALPN) {
                return; // an ACME validator: the handshake was the answer (RFC 8737)
            }
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10));
            builder.http2().timer(TokioTimer::new()).max_concurrent_streams(256);
            let http2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let io = relay_net::h2guard::Guarded::new(tls, http2, listener_name);
            let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(router));
            relay_net::serve::until_shutdown_counted(conn, &shutdown, listener_name).await;
        });
    }
}
