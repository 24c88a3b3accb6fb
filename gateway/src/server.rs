//! The I/O shell: listeners, TLS, connection limits, timeouts, background tasks and
//! graceful shutdown. All request handling is in [`crate::api`].
//!
//! ```text
//!  TCP accept ─► permit (connection cap) ─► TLS 1.3 handshake (timeout)
//!            ─► hyper auto (h2 | http/1.1) ─► api() router ─► storage
//! ```
//! The admin listener is in [`crate::admin`], the sweeper and SIGHUP reload in
//! [`crate::background`].
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
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use storage::prelude::*;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use crate::api::{ApiConfig, AppState, api};
use crate::config::{Settings, Timeouts};
use crate::keys::{KeyProvider as _, ProviderKeys, key_dir};
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
        let store = self.state.store().clone();
        tokio::task::spawn_blocking(move || store.close())
            .await
            .context("closing storage")?;
        tracing::info!("gateway stopped");
        Ok(())
    }
}

/// Opens storage and keys, binds the listeners and starts serving.
pub async fn start(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<Running> {
    // The recorder first: what storage recovery and certificate loading record is kept.
    telemetry::prometheus();
    for transport in ["tcp", "h3"] {
        for reason in ["limit", "per_address"] {
            metrics::counter!("relay_connections_refused_total", "reason" => reason, "transport" => transport)
                .increment(0);
        }
    }
    let config = &settings.config;
    let data_dir = &config.data_dir;
    crate::keys::create_private_dir(data_dir)?;
    let provider = relay_keys::Provider::open(&config.keys).context("opening the key provider")?;
    let keys = Arc::new(
        ProviderKeys::open_or_create(
            &key_dir(data_dir),
            &provider,
            config.registration.provisioning_public_key.as_deref(),
        )
        .context("loading provider keys")?,
    );
    let certs = crate::tls::open_cert_store(&config.tls, config.acme.as_ref(), data_dir).context("setting up TLS")?;
    let alpn = relay_net::acme::alpn(config.acme.as_ref(), &[b"h2", b"http/1.1"]);
    let tls = Arc::new(certs.server_config(&alpn)?);
    let per_address = Arc::new(relay_net::serve::PerAddress::new(
        config.limits.max_connections_per_address,
    ));
    let h3_settings = crate::h3::H3Settings {
        per_address: Arc::clone(&per_address),
        max_connections: config.limits.max_connections,
        max_concurrent_streams: config.limits.max_concurrent_streams,
        handshake_timeout: settings.timeouts.tls_handshake,
        config: config.http3.clone(),
    };
    let store = crate::nodes::open(&config.storage, data_dir, &keys).await?;
    let push_events = if config.push.proxy_url.is_some() {
        let (sink, events) = storage::watch::events(config.push.queue);
        store.watchers().attach(sink);
        Some(events)
    } else {
        None
    };
    let notifier =
        crate::push::Notifier::new(&config.push, store.clone()).context("setting up the push proxy client")?;
    let interconnect = match &config.interconnect {
        Some(ic_config) => Some(
            interconnect::Interconnect::new(
                ic_config.clone(),
                store.clone(),
                keys.rid_keys(),
                (&provider, &key_dir(data_dir)),
                settings.limits.clone(),
            )
            .context("setting up the interconnect")?,
        ),
        None => None,
    };
    let rate = &config.rate_limit;
    let state = AppState::new(ApiConfig {
        store: store.clone(),
        rid_keys: keys.rid_keys(),
        key_provider: Arc::clone(&keys) as Arc<dyn crate::keys::KeyProvider>,
        limits: settings.limits.clone(),
        timeouts: settings.timeouts,
        open_registration: config.registration.danger_open_registration,
        requests_per_second: NonZeroU32::new(rate.requests_per_second).context("rate_limit.requests_per_second")?,
        burst: NonZeroU32::new(rate.burst).context("rate_limit.burst")?,
        abuse: rate.abuse_limits(config.limits.max_queue_bytes_per_device, config.limits.ttl_secs),
        mls: config.mls.clone(),
        shutdown: shutdown.clone(),
        interconnect: interconnect.clone(),
    });

    let (listener, endpoint) = bind_client_listeners(config, &tls, &h3_settings).await?;
    let admin = TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("binding admin {}", config.admin_listen))?;
    let addr = listener.local_addr()?;
    let admin_addr = admin.local_addr()?;

    let tracker = TaskTracker::new();
    let acme = match &config.acme {
        Some(acme_config) => {
            if let Some(addr) = acme_config.http01_listen
                && acme_config.challenge == relay_net::acme::ChallengeKind::Http01
            {
                let listener = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding acme.http01_listen {addr}"))?;
                tracker.spawn(relay_net::acme::serve_http01(
                    listener,
                    Arc::clone(certs.challenges()),
                    shutdown.clone(),
                ));
            }
            let client = relay_net::acme::AcmeClient::new(
                acme_config.clone(),
                key_dir(data_dir).join("acme-account.json"),
                Arc::clone(certs.challenges()),
            );
            Some(relay_net::acme::Manager::new(
                client,
                Arc::clone(&certs) as Arc<dyn relay_net::acme::CertSink>,
                "client",
            ))
        }
        None => None,
    };
    let mut interconnect_addr = None;
    if let (Some(ic), Some(ic_config)) = (interconnect, &config.interconnect) {
        let listener = TcpListener::bind(ic_config.listen)
            .await
            .with_context(|| format!("binding interconnect {}", ic_config.listen))?;
        interconnect_addr = Some(listener.local_addr()?);
        tracker.spawn(Arc::clone(&ic).serve(listener, shutdown.clone(), tracker.clone()));
        tracker.spawn(ic.run_outbound(shutdown.clone(), tracker.clone()));
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
        Caps {
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            per_address,
        },
        conn_settings,
        shutdown.clone(),
        tracker.clone(),
    ));
    let signer = crate::keys::audit_signer(&key_dir(data_dir), &provider).context("loading the audit key")?;
    crate::custody::audit_key_events(&store, &provider).await?;
    crate::custody::set_key_ages(&key_dir(data_dir), relay_net::clock::now_ms());
    crate::rid_rotation::begin_if_due(&store, &key_dir(data_dir), keys.rid_version()).await?;
    let checkpointer = crate::audit::Checkpointer::new(
        store.clone(),
        (signer, key_dir(data_dir), provider.clone()),
        config.audit.checkpoint_every,
        (config.audit.retention_secs > 0).then(|| Duration::from_secs(config.audit.retention_secs)),
    )
    .await
    .context("reading the audit log's checkpoints")?;
    checkpointer
        .hand_over_if_due()
        .await
        .context("completing the audit key's rotation")?;
    tracker.spawn(Arc::clone(&checkpointer).run(shutdown.clone()));
    let operators = match (&config.admin.operator_listen, &config.admin.operator_ca) {
        (Some(addr), Some(ca)) => {
            let tls = crate::operators::server_config(&certs, ca, &config.admin.operator_crls)
                .context("setting up the operator listener")?;
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the operator listener {addr}"))?;
            tracing::info!(addr = %listener.local_addr()?, "operator calls on mutual TLS");
            Some((listener, tls))
        }
        _ => {
            tracing::warn!(
                admin = %config.admin_listen,
                "operator calls are served on the plain admin listener without authentication: configure [admin] operator_ca for production"
            );
            None
        }
    };
    tracker.spawn(crate::admin::serve(
        crate::admin::Listeners {
            plain: admin,
            operators,
            dual_control_window: Duration::from_secs(config.admin.dual_control_window_secs),
        },
        Arc::clone(&certs),
        acme.as_ref().map(|(_, handle)| handle.clone()),
        state.clone(),
        checkpointer,
        shutdown.clone(),
        tracker.clone(),
    ));
    if let (Some(notifier), Some(events)) = (notifier, push_events) {
        tracker.spawn(notifier.run(events, shutdown.clone(), tracker.clone()));
    }
    tracker.spawn(crate::background::reload_on_sighup(
        Arc::clone(&certs),
        state.clone(),
        shutdown.clone(),
    ));
    tracker.spawn(crate::background::sweeper(
        state.clone(),
        Duration::from_secs(config.storage.sweep_interval_secs.max(1)),
        shutdown.clone(),
    ));

    if let Some((mut manager, _)) = acme {
        // The first certificate before anything is served; tls-alpn-01 is answered by the
        // listener just started, which refuses every other handshake until then.
        if let Err(e) = manager.obtain_initial().await {
            shutdown.cancel();
            tracker.close();
            let _ = tokio::time::timeout(settings.timeouts.shutdown_grace, tracker.wait()).await;
            let store = store.clone();
            let _ = tokio::task::spawn_blocking(move || store.close()).await;
            return Err(anyhow::Error::new(e).context("no certificate for the client listener"));
        }
        tracker.spawn(manager.run(shutdown.clone()));
    }

    let certificates = match (&config.acme, &config.tls.cert) {
        (Some(_), _) => "acme",
        (None, Some(_)) => "files",
        (None, None) => "development CA",
    };
    if config.push.proxy_url.is_none() {
        tracing::warn!("no push proxy configured ([push] proxy_url): devices without a live receiver are not woken");
    }
    if certificates == "development CA" {
        tracing::warn!(
            ca = %data_dir.join("tls/dev-ca.pem").display(),
            "serving a development certificate: clients must trust this CA; configure [tls] or [acme] for production"
        );
    }
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        git_sha = option_env!("RELAY_GIT_SHA").unwrap_or("unknown"),
        listen = %addr,
        http3 = config.http3.enabled,
        admin = %admin_addr,
        data_dir = %data_dir.display(),
        storage = store.backend_name(),
        keys = %provider.describe(&key_dir(data_dir)),
        certificates,
        push_proxy = config.push.proxy_url.as_deref().unwrap_or("none"),
        interconnect = %interconnect_addr.map_or_else(|| "off".to_owned(), |a| a.to_string()),
        peers = state.interconnect().map_or(0, |ic| ic.table().peers.len()),
        open_registration = config.registration.danger_open_registration,
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

/// The client listener's connection caps: in all, and per source address.
#[derive(Debug)]
struct Caps {
    permits: Arc<Semaphore>,
    per_address: Arc<relay_net::serve::PerAddress>,
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
    caps: Caps,
    settings: ConnSettings,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    while let Some((tcp, peer)) = relay_net::serve::accept(&listener, &shutdown).await {
        let Ok(permit) = Arc::clone(&caps.permits).try_acquire_owned() else {
            telemetry::connection_refused("limit", "tcp");
            drop(tcp);
            continue;
        };
        let Some(slot) = caps.per_address.try_acquire(peer.ip()) else {
            telemetry::connection_refused("per_address", "tcp");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let (_permit, _slot) = (permit, slot);
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
    if tls.get_ref().1.alpn_protocol() == Some(relay_net::acme::ACME_TLS_ALPN) {
        // An ACME validator: the handshake was the answer (RFC 8737 section 3).
        return;
    }
    let seen_request = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&seen_request);
    let source = crate::api::ClientAddr(peer.ip());
    let service = router.map_request(move |mut req: http::Request<hyper::body::Incoming>| {
        seen.store(true, Ordering::Relaxed);
        req.extensions_mut().insert(source);
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
    let http2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = relay_net::h2guard::Guarded::new(tls, http2, "client");
    let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
    tokio::pin!(conn);
    let first_request = tokio::time::sleep(t.first_request);
    tokio::pin!(first_request);
    let mut checked_first = false;
    let mut draining = false;
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    relay_net::serve::connection_error("client", &*e);
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
