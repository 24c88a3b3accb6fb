//! HTTP/3: a quinn endpoint on the client listener's port number (UDP), with h3 in front
//! of the same [`Router`] the HTTP/2 listener serves. No route exists twice.
//!
//! ```text
//!  UDP ─► quinn Endpoint ─► Incoming: refuse over the cap, Retry when busy
//!      ─► QUIC handshake (TLS 1.3, ALPN h3, no 0-RTT, timeout) ─► h3 connection
//!      ─► each request stream: h3 request + body ─► api() router ─► response + body
//! ```
//! Every limit is set explicitly: header section size (h3 defaults to unlimited),
//! concurrent bidirectional streams, stream and connection receive windows, idle timeout,
//! pending handshakes, concurrent connections, UDP socket buffers.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::body::Body;
use bytes::{Buf as _, Bytes};
use h3::server::RequestStream;
use http_body_util::BodyExt as _;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use crate::config::Http3Config;

/// Largest HTTP/3 header section accepted (h3's default is unlimited).
pub const MAX_FIELD_SECTION_SIZE: u64 = 16 * 1024;

/// Settings of the HTTP/3 listener.
#[derive(Debug, Clone)]
pub(crate) struct H3Settings {
    /// Connections per source address, shared with the TCP listener.
    pub(crate) per_address: Arc<relay_net::serve::PerAddress>,
    pub(crate) max_connections: usize,
    pub(crate) max_concurrent_streams: u32,
    pub(crate) handshake_timeout: Duration,
    pub(crate) config: Http3Config,
}

/// Binds the UDP socket (with large buffers) and builds the endpoint.
pub(crate) fn endpoint(
    addr: SocketAddr,
    tls: &rustls::ServerConfig,
    settings: &H3Settings,
) -> anyhow::Result<quinn::Endpoint> {
    let mut tls = tls.clone();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    tls.max_early_data_size = 0; // 0-RTT off: replayable requests are not worth a round trip
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).context("QUIC TLS configuration")?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let c = &settings.config;
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(settings.max_concurrent_streams.into())
        // h3 needs three unidirectional streams per side (control, QPACK encoder/decoder).
        .max_concurrent_uni_streams(8u32.into())
        .stream_receive_window((256u32 * 1024).into())
        .receive_window((4u32 << 20).into())
        .send_window(4 << 20)
        .max_idle_timeout(Some(
            Duration::from_secs(c.idle_timeout_secs)
                .try_into()
                .context("http3.idle_timeout_secs")?,
        ));
    server.transport_config(Arc::new(transport));
    server.max_incoming(c.max_pending_handshakes);
    let socket = std::net::UdpSocket::bind(addr).with_context(|| format!("binding UDP {addr}"))?;
    let sock = socket2::SockRef::from(&socket);
    // Default buffers dropped packets at 64 connections here, giving second-long tails.
    let _ = sock.set_recv_buffer_size(c.udp_buffer_bytes);
    let _ = sock.set_send_buffer_size(c.udp_buffer_bytes);
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .context("creating the QUIC endpoint")
}

/// Accepts QUIC connections until `shutdown`, then closes the endpoint cleanly.
pub(crate) async fn serve(
    endpoint: quinn::Endpoint,
    router: Router,
    settings: H3Settings,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let permits = Arc::new(Semaphore::new(settings.max_connections));
    let retry_above = settings
        .config
        .retry_above_connections
        .unwrap_or(settings.max_connections / 2);
    loop {
        let incoming = tokio::select! {
            () = shutdown.cancelled() => break,
            incoming = endpoint.accept() => match incoming {
                Some(i) => i,
                None => break,
            },
        };
        // Under load, make unvalidated clients prove their address first (QUIC Retry,
        // stateless), so a flood of spoofed Initials costs one small packet each and
        // never a connection slot.
        let in_use = settings.max_connections - permits.available_permits();
        if !incoming.remote_address_validated() && in_use >= retry_above {
            metrics::counter!("relay_quic_retries_total").increment(1);
            let _ = incoming.retry();
            continue;
        }
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            crate::telemetry::connection_refused("limit", "h3");
            incoming.refuse();
            continue;
        };
        // Only a validated address counts against its own cap (a spoofed one is Retried
        // above under load; below it, refusing costs as little as the Initial did).
        let Some(slot) = settings.per_address.try_acquire(incoming.remote_address().ip()) else {
            crate::telemetry::connection_refused("per_address", "h3");
            incoming.refuse();
            continue;
        };
        let router = router.clone();
        let shutdown = shutdown.clone();
        let settings = settings.clone();
        let inner_tracker = tracker.clone();
        tracker.spawn(async move {
            let (_permit, _slot) = (permit, slot);
            metrics::gauge!("relay_connections_open", "transport" => "h3").increment(1.0);
            serve_connection(incoming, router, &settings, shutdown, inner_tracker).await;
            metrics::gauge!("relay_connections_open", "transport" => "h3").decrement(1.0);
        });
    }
    endpoint.close(0u32.into(), b"shutting down");
}

#[tracing::instrument(skip_all, fields(peer = %incoming.remote_address()))]
async fn serve_connection(
    incoming: quinn::Incoming,
    router: Router,
    settings: &H3Settings,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let source = crate::api::ClientAddr(incoming.remote_address().ip());
    let conn = match tokio::time::timeout(settings.handshake_timeout, incoming).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!(cause = %e, "QUIC handshake failed");
            metrics::counter!("relay_tls_handshake_failures_total", "reason" => "error", "transport" => "h3")
                .increment(1);
            return;
        }
        Err(_) => {
            metrics::counter!("relay_tls_handshake_failures_total", "reason" => "timeout", "transport" => "h3")
                .increment(1);
            return;
        }
    };
    let mut h3_conn = match h3::server::builder()
        .max_field_section_size(MAX_FIELD_SECTION_SIZE)
        .send_grease(true)
        .build::<_, Bytes>(h3_quinn::Connection::new(conn))
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(cause = %e, "HTTP/3 connection set-up failed");
            return;
        }
    };
    let mut draining = false;
    loop {
        tokio::select! {
            accepted = h3_conn.accept() => match accepted {
                Ok(Some(resolver)) => {
                    let router = router.clone();
                    tracker.spawn(async move {
                        match resolver.resolve_request().await {
                            Ok((req, stream)) => {
                                if let Err(e) = serve_request(req, stream, router, source).await {
                                    tracing::debug!(cause = %e, "HTTP/3 request stream failed");
                                }
                            }
                            Err(e) => tracing::debug!(cause = %e, "HTTP/3 request rejected"),
                        }
                    });
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!(cause = %e, "HTTP/3 connection ended");
                    return;
                }
            },
            () = shutdown.cancelled(), if !draining => {
                draining = true;
                // GOAWAY: finish what was accepted, take nothing new.
                let _ = h3_conn.shutdown(0).await;
            }
        }
    }
}

type Stream = RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

async fn serve_request(
    req: http::Request<()>,
    stream: Stream,
    router: Router,
    source: crate::api::ClientAddr,
) -> anyhow::Result<()> {
    let (mut send, recv) = stream.split();
    let (mut parts, ()) = req.into_parts();
    parts.version = http::Version::HTTP_3;
    parts.extensions.insert(source);
    let req = http::Request::from_parts(parts, Body::new(RecvBody { recv }));
    let resp = router.oneshot(req).await.unwrap_or_else(|never| match never {});
    let (parts, mut body) = resp.into_parts();
    send.send_response(http::Response::from_parts(parts, ())).await?;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data()
            && !data.is_empty()
        {
            send.send_data(data).await?;
        }
    }
    send.finish().await?;
    Ok(())
}

/// The request body of an HTTP/3 stream as an `http_body::Body`.
struct RecvBody {
    recv: RequestStream<h3_quinn::RecvStream, Bytes>,
}

impl http_body::Body for RecvBody {
    type Data = Bytes;
    type Error = h3::error::StreamError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        match self.recv.poll_recv_data(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(Some(mut buf))) => {
                Poll::Ready(Some(Ok(http_body::Frame::data(buf.copy_to_bytes(buf.remaining())))))
            }
            Poll::Ready(Ok(None)) => Poll::Ready(None),
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
        }
    }
}
