//! The mutual-TLS listener: a connection cap, TLS 1.3 with client certificates mapped to
//! exactly one peer, and re-verification of every open connection at each reload and every
//! `recheck_secs` (a revoked or expired certificate, or a removed peer, loses its
//! connections).

use std::sync::Arc;
use std::time::Duration;

use axum::{Extension, Router};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::UnixTime;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Interconnect;
use crate::inbound::PeerName;
use crate::tls;

impl Interconnect {
    /// Accepts peer connections until `shutdown`, at most `max_connections` at a time;
    /// each connection is a task owned by `tracker`.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken, tracker: TaskTracker) {
        let router = self.router();
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, peers = self.table().peers.len(), domain = %self.cfg.domain, "interconnect listening");
        }
        let permits = Arc::new(Semaphore::new(self.cfg.max_connections.max(1)));
        // One address may hold a quarter of the listener (a peer runs a few gateways), or
        // all of a small one.
        let cap = self.cfg.max_connections;
        let per_address = relay_net::serve::PerAddress::new((cap / 4).max(cap.min(16)).max(1) as u32);
        for reason in ["limit", "per_address"] {
            metrics::counter!("interconnect_connections_refused_total", "reason" => reason).increment(0);
        }
        while let Some((tcp, peer)) = relay_net::serve::accept(&listener, &shutdown).await {
            let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                metrics::counter!("interconnect_connections_refused_total", "reason" => "limit").increment(1);
                drop(tcp);
                continue;
            };
            let Some(slot) = per_address.try_acquire(peer.ip()) else {
                metrics::counter!("interconnect_connections_refused_total", "reason" => "per_address").increment(1);
                drop(tcp);
                continue;
            };
            let (this, router, shutdown) = (Arc::clone(&self), router.clone(), shutdown.clone());
            tracker.spawn(async move {
                let (_permit, _slot) = (permit, slot);
                this.connection(tcp, router, shutdown).await;
            });
        }
    }

    async fn connection(self: Arc<Self>, tcp: TcpStream, router: Router, shutdown: CancellationToken) {
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
                warn_refused(reason);
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
        let http2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let conn = builder.serve_connection(
            TokioIo::new(relay_net::h2guard::Guarded::new(tls, http2, "interconnect")),
            hyper_util::service::TowerToHyperService::new(service),
        );
        tokio::pin!(conn);
        let mut reloads = self.generation.subscribe();
        let mut recheck = tokio::time::interval(Duration::from_secs(self.cfg.recheck_secs.max(1)));
        recheck.tick().await;
        loop {
            tokio::select! {
                res = conn.as_mut() => {
                    if let Err(e) = res {
                        relay_net::serve::connection_error("interconnect", &*e);
                    }
                    return;
                }
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
}

/// A refused peer handshake, in the log at most once a minute per reason (the counter
/// `interconnect_handshake_failures_total{reason}` has them all).
fn warn_refused(reason: &'static str) {
    static LOGGED: relay_net::throttle::Throttle = relay_net::throttle::Throttle::per_minute();
    if LOGGED.due(reason) {
        tracing::warn!(
            reason,
            "a peer's TLS handshake was refused (more of the same counted, not logged, for a minute)"
        );
    }
}
