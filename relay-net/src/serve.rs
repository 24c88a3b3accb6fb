//! The two pieces every listener of the workspace repeats: an accept loop step that stops
//! on shutdown and backs off on accept errors (EMFILE and friends) instead of spinning, and
//! a connection driven until it ends or, on shutdown, drained gracefully within a bound.

use std::net::SocketAddr;
use std::pin::pin;
use std::time::Duration;

use hyper_util::server::graceful::GracefulConnection;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// How long a connection may take to finish its requests after shutdown.
pub const DRAIN: Duration = Duration::from_secs(5);

/// The next connection, or `None` once `shutdown` is cancelled.
pub async fn accept(listener: &TcpListener, shutdown: &CancellationToken) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok(a) => return Some(a),
                Err(e) => {
                    tracing::warn!(cause = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Drives `conn` to its end; on `shutdown` asks it to finish (HTTP/2 GOAWAY, HTTP/1.1
/// `connection: close`) and waits at most [`DRAIN`].
pub async fn until_shutdown<C: GracefulConnection>(conn: C, shutdown: &CancellationToken) {
    let mut conn = pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN, conn).await;
        }
    }
}
