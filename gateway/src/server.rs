//! The I/O shell: listeners, TLS, connection limits, timeouts, background tasks and
//! graceful shutdown. All request handling is in [`crate::api`].
//!
//! ```text
//!  TCP accept ─► permit (connection cap) ─► TLS 1.3 handshake (timeout)
//!            ─► hyper auto (h2 | http/1.1) ─► api() router ─► storage
//!  admin accept ─► /metrics, /healthz (plain HTTP, loopback by default)
//!  sweeper: TTL expiry, rate-limit state, storage gauges
//! ```
//! Shutdown is an input: [`start`] takes a [`CancellationToken`]; cancelling it stops
//! the accept loops, asks every connection to finish (HTTP/2 GOAWAY), ends long-polls,
//! waits at most `shutdown_grace`, then flushes and closes storage.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::response::IntoResponse as _;
use axum::routing::get;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use storage::{SledConfig, SledStore, Store as _};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use crate::api::{ApiConfig, AppState, api, healthz, now_ms};
use crate::config::{Settings, Timeouts};
use crate::keys::{FileKeyProvider, KeyProvider as _, key_dir};
use crate::telemetry;

/// A started gateway.
#[derive(Debug)]
pub struct Running {
    /// Client API address (TLS).
    pub addr: SocketAddr,
    /// Admin address (plain HTTP).
    pub admin_addr: SocketAddr,
    /// Interconnect listener (mutual TLS), when configured.
    pub interconnect_addr: Option<SocketAddr>,
    state: AppState,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    grace: Duration,
}

impl Running {
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Waits for `shutdown` to be cancelled, drains (bounded) and closes storage.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.shutdown.cancelled().await;
        self.tracker.close();
        if tokio::time::timeout(self.grace, self.tracker.wait()).await.is_err() {
            tracing::warn!(
                grace_secs = self.grace.as_secs(),
                "shutdown grace expired with requests in flight"
            );
        }
        let store = Arc::clone(self.state.store());
        tokio::task::spawn_blocking(move || store.close())
            .await
            .context("closing storage")?;
        tracing::info!("gateway stopped");
        Ok(())
    }
}

/// Opens storage and keys, binds the listeners and starts serving.
pub async fn start(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<Running> {
    let config = &settings.config;
    let data_dir = &config.data_dir;
    crate::keys::create_private_dir(data_dir)?;
    let keys = FileKeyProvider::open_or_create(
        &key_dir(data_dir),
        config.registration.provisioning_public_key.as_deref(),
    )
    .context("loading provider keys")?;
    let certs = crate::tls::CertStore::open(&config.tls, data_dir).context("setting up TLS")?;
    let tls = Arc::new(certs.server_config(&[b"h2", b"http/1.1"])?);
    let h3_settings = crate::h3::H3Settings {
        max_connections: config.limits.max_connections,
        max_concurrent_streams: config.limits.max_concurrent_streams,
        handshake_timeout: settings.timeouts.tls_handshake,
        config: config.http3.clone(),
    };
    let sled_config = SledConfig {
        path: data_dir.join("sled"),
        cache_capacity: config.storage.cache_capacity_mb << 20,
    };
    let store = tokio::task::spawn_blocking(move || SledStore::open(&sled_config))
        .await
        .context("opening storage")?
        .context("opening storage")?;
    let store = Arc::new(store);
    let rate = &config.rate_limit;
    let (push_events, push_rx) = if config.push.proxy_url.is_some() {
        let (tx, rx) = crate::push::PushEvents::channel(config.push.queue);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let state = AppState::new(ApiConfig {
        store: Arc::clone(&store),
        rid_key: keys.rid_key(),
        provisioning_key: keys.provisioning_public_key(),
        limits: settings.limits.clone(),
        timeouts: settings.timeouts,
        open_registration: config.registration.danger_open_registration,
        requests_per_second: NonZeroU32::new(rate.requests_per_second).context("rate_limit.requests_per_second")?,
        burst: NonZeroU32::new(rate.burst).context("rate_limit.burst")?,
        mls: config.mls.clone(),
        shutdown: shutdown.clone(),
        push: push_events,
    });
    let notifier = crate::push::Notifier::new(&config.push, Arc::clone(&store), Arc::clone(state.live()))
        .context("setting up the push proxy client")?;
    telemetry::prometheus();

    let (listener, endpoint) = bind_client_listeners(config, &tls, &h3_settings).await?;
    let admin = TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("binding admin {}", config.admin_listen))?;
    let addr = listener.local_addr()?;
    let admin_addr = admin.local_addr()?;

    let tracker = TaskTracker::new();
    let mut interconnect_addr = None;
    if let Some(ic_config) = &config.interconnect {
        let hook_state = state.clone();
        let ic = interconnect::Interconnect::new(
            ic_config.clone(),
            Arc::clone(&store),
            keys.rid_key(),
            &key_dir(data_dir),
            settings.limits.clone(),
            Arc::new(move |outcome, urgent| hook_state.stored(&outcome.delivered_to, urgent)),
        )
        .map_err(|e| anyhow::anyhow!("interconnect: {e}"))?;
        let listener = TcpListener::bind(ic_config.listen)
            .await
            .with_context(|| format!("binding interconnect {}", ic_config.listen))?;
        interconnect_addr = Some(listener.local_addr()?);
        state.set_interconnect(Arc::clone(&ic));
        tracker.spawn(Arc::clone(&ic).serve(listener, shutdown.clone(), tracker.clone()));
        tracker.spawn(ic.run_outbound(shutdown.clone()));
    }
    let router = api(state.clone());
    if let Some(endpoint) = endpoint {
        tracker.spawn(crate::h3::serve(
            endpoint,
            router.clone(),
            h3_settings,
            shutdown.clone(),
            tracker.clone(),
        ));
    }
    let tcp_router = if config.http3.enabled {
        // Advertise HTTP/3 on every HTTP/2 and HTTP/1.1 response (RFC 7838).
        let alt_svc =
            http::HeaderValue::from_str(&format!("h3=\":{}\"; ma=86400", addr.port())).context("alt-svc header")?;
        router.layer(axum::middleware::map_response(
            move |mut resp: axum::response::Response| {
                let alt_svc = alt_svc.clone();
                async move {
                    resp.headers_mut().insert(http::header::ALT_SVC, alt_svc);
                    resp
                }
            },
        ))
    } else {
        router
    };
    let limits = &config.limits;
    let conn_settings = ConnSettings {
        timeouts: settings.timeouts,
        max_concurrent_streams: limits.max_concurrent_streams,
    };
    tracker.spawn(serve_tls(
        listener,
        TlsAcceptor::from(tls),
        tcp_router,
        Arc::new(Semaphore::new(limits.max_connections)),
        conn_settings,
        shutdown.clone(),
        tracker.clone(),
    ));
    tracker.spawn(serve_admin(
        admin,
        Arc::clone(&certs),
        state.clone(),
        shutdown.clone(),
        tracker.clone(),
    ));
    if let (Some(notifier), Some(rx)) = (notifier, push_rx) {
        tracker.spawn(notifier.run(rx, shutdown.clone()));
    }
    tracker.spawn(reload_on_sighup(Arc::clone(&certs), state.clone(), shutdown.clone()));
    tracker.spawn(sweeper(
        state.clone(),
        Duration::from_secs(config.storage.sweep_interval_secs.max(1)),
        shutdown.clone(),
    ));

    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        git_sha = option_env!("RELAY_GIT_SHA").unwrap_or("unknown"),
        listen = %addr,
        http3 = config.http3.enabled,
        admin = %admin_addr,
        data_dir = %data_dir.display(),
        "gateway listening"
    );
    Ok(Running {
        addr,
        admin_addr,
        interconnect_addr,
        state,
        tracker,
        shutdown,
        grace: settings.timeouts.shutdown_grace,
    })
}

/// Binds the client listener (TCP) and, for HTTP/3, UDP on the same port number. With an
/// ephemeral port (`:0`) the UDP half of the pair may already be taken by another
/// socket, so a few fresh pairs are tried; a configured port must be free on both.
async fn bind_client_listeners(
    config: &crate::config::Config,
    tls: &rustls::ServerConfig,
    h3: &crate::h3::H3Settings,
) -> anyhow::Result<(TcpListener, Option<quinn::Endpoint>)> {
    let attempts = if config.listen.port() == 0 { 16 } else { 1 };
    let mut last_error = None;
    for _ in 0..attempts {
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        if !config.http3.enabled {
            return Ok((listener, None));
        }
        match crate::h3::endpoint(listener.local_addr()?, tls, h3) {
            Ok(endpoint) => return Ok((listener, Some(endpoint))),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no listener bound")))
}

#[derive(Debug, Clone, Copy)]
struct ConnSettings {
    timeouts: Timeouts,
    max_concurrent_streams: u32,
}

async fn serve_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: Router,
    permits: Arc<Semaphore>,
    settings: ConnSettings,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(cause = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            metrics::counter!("relay_connections_refused_total", "reason" => "limit").increment(1);
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let _permit = permit;
            metrics::gauge!("relay_connections_open").increment(1.0);
            serve_connection(tcp, peer, acceptor, router, settings, shutdown).await;
            metrics::gauge!("relay_connections_open").decrement(1.0);
        });
    }
}

#[tracing::instrument(skip_all, fields(peer = %peer))]
async fn serve_connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    router: Router,
    settings: ConnSettings,
    shutdown: CancellationToken,
) {
    let t = settings.timeouts;
    let tls = match tokio::time::timeout(t.tls_handshake, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(cause = %e, "TLS handshake failed");
            metrics::counter!("relay_tls_handshake_failures_total", "reason" => "error").increment(1);
            return;
        }
        Err(_) => {
            metrics::counter!("relay_tls_handshake_failures_total", "reason" => "timeout").increment(1);
            return;
        }
    };
    let seen_request = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&seen_request);
    let service = router.map_request(move |req: http::Request<hyper::body::Incoming>| {
        seen.store(true, Ordering::Relaxed);
        req
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(t.header_read)
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.max_concurrent_streams)
        .max_header_list_size(16 * 1024)
        .keep_alive_interval(t.keepalive)
        .keep_alive_timeout(t.keepalive)
        .initial_stream_window_size(256 * 1024)
        .initial_connection_window_size(4 * 1024 * 1024);
    let conn = builder.serve_connection(TokioIo::new(tls), TowerToHyperService::new(service));
    tokio::pin!(conn);
    let first_request = tokio::time::sleep(t.first_request);
    tokio::pin!(first_request);
    let mut checked_first = false;
    let mut draining = false;
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(cause = %e, "connection ended with error");
                }
                return;
            }
            () = &mut first_request, if !checked_first => {
                checked_first = true;
                if !seen_request.load(Ordering::Relaxed) {
                    metrics::counter!("relay_connections_closed_total", "reason" => "no_request").increment(1);
                    return;
                }
            }
            () = shutdown.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

async fn serve_admin(
    listener: TcpListener,
    certs: Arc<crate::tls::CertStore>,
    state: AppState,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let store = Arc::clone(state.store());
    // Re-reads the interconnect's peers file and CRLs (also on SIGHUP).
    let ic_reload = move || {
        let state = state.clone();
        async move {
            let Some(ic) = state.interconnect() else {
                return (http::StatusCode::NOT_FOUND, "no [interconnect] configured\n".to_owned()).into_response();
            };
            match ic.reload().await {
                Ok(n) => (http::StatusCode::OK, format!("{n} peers\n")).into_response(),
                Err(e) => {
                    tracing::warn!(cause = %e, "interconnect reload failed; keeping the old peer table");
                    (http::StatusCode::UNPROCESSABLE_ENTITY, format!("{e}\n")).into_response()
                }
            }
        }
    };
    // RFC 9750 section 5.3: if members and the DS disagree on a group's epoch, an operator
    // sets it (`PUT /admin/groups/{hex group id}/epoch` with the epoch as the body).
    let set_epoch = move |axum::extract::Path(group): axum::extract::Path<String>, body: String| {
        let store = Arc::clone(&store);
        async move {
            let Some(group_id) = crate::mls::decode_group_id(&group) else {
                return (http::StatusCode::BAD_REQUEST, "group id must be hex\n".to_owned()).into_response();
            };
            let Ok(epoch) = body.trim().parse::<u64>() else {
                return (http::StatusCode::BAD_REQUEST, "body must be the epoch\n".to_owned()).into_response();
            };
            match store.set_group_epoch(crate::mls::group_key(&group_id), epoch).await {
                Ok(()) => {
                    tracing::warn!(epoch, "group epoch reset by an operator");
                    http::StatusCode::NO_CONTENT.into_response()
                }
                Err(e) => (http::StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
            }
        }
    };
    let reload = move || {
        let certs = Arc::clone(&certs);
        async move {
            match certs.reload() {
                Ok(()) => http::StatusCode::NO_CONTENT.into_response(),
                Err(e) => {
                    tracing::warn!(cause = %format!("{e:#}"), "TLS reload failed; keeping the old certificate");
                    (http::StatusCode::UNPROCESSABLE_ENTITY, format!("{e:#}\n")).into_response()
                }
            }
        }
    };
    let router = Router::new()
        .route("/metrics", get(|| async { telemetry::prometheus().render() }))
        .route("/healthz", get(healthz))
        .route("/admin/tls/reload", axum::routing::post(reload))
        .route("/admin/interconnect/reload", axum::routing::post(ic_reload))
        .route("/admin/groups/{group}/epoch", axum::routing::put(set_epoch));
    loop {
        let (tcp, _) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let router = router.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(router));
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
        });
    }
}

/// SIGHUP reloads the TLS certificate of every listener.
async fn reload_on_sighup(certs: Arc<crate::tls::CertStore>, state: AppState, shutdown: CancellationToken) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        return;
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = hup.recv() => {
                if let Err(e) = certs.reload() {
                    tracing::warn!(cause = %format!("{e:#}"), "TLS reload failed; keeping the old certificate");
                }
                if let Some(ic) = state.interconnect()
                    && let Err(e) = ic.reload().await
                {
                    tracing::warn!(cause = %e, "interconnect reload failed; keeping the old peer table");
                }
            }
        }
    }
}

/// Expires envelopes, forgets idle rate-limit state, publishes storage gauges.
async fn sweeper(state: AppState, every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match state.store().sweep(now_ms()).await {
            Ok(s) if s.mailbox_entries + s.blobs > 0 => {
                tracing::debug!(
                    entries = s.mailbox_entries,
                    blobs = s.blobs,
                    "expired envelopes removed"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(cause = %e, "sweep failed"),
        }
        state.retain_recent_limits();
        metrics::gauge!("relay_storage_disk_bytes").set(state.store().size_on_disk() as f64);
        metrics::gauge!("relay_live_receivers").set(state.live().len() as f64);
    }
}
