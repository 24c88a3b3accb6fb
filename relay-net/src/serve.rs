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

/// Why a connection ended in error, as a metric label: the HTTP/2 error code the protocol
/// library closed it with (`enhance_your_calm` for rapid reset and CONTINUATION floods,
/// `protocol_error`, `compression_error` for an oversized header list …), `flood` for our
/// own control-frame guard, `io` otherwise.
pub fn http2_error_reason(e: &(dyn std::error::Error + 'static)) -> &'static str {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(h2) = err.downcast_ref::<h2::Error>()
            && let Some(reason) = h2.reason()
        {
            return match reason {
                h2::Reason::ENHANCE_YOUR_CALM => "enhance_your_calm",
                h2::Reason::PROTOCOL_ERROR => "protocol_error",
                h2::Reason::COMPRESSION_ERROR => "compression_error",
                h2::Reason::FRAME_SIZE_ERROR => "frame_size_error",
                h2::Reason::FLOW_CONTROL_ERROR => "flow_control_error",
                _ => "http2_other",
            };
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionAborted
            && io.to_string().contains("flood")
        {
            return "flood";
        }
        cur = err.source();
    }
    "io"
}

/// Counts (`relay_http2_connection_errors_total{listener,reason}`) and logs at debug a
/// connection that ended in error.
pub fn connection_error(listener: &'static str, e: &(dyn std::error::Error + 'static)) {
    let reason = http2_error_reason(e);
    metrics::counter!("relay_http2_connection_errors_total", "listener" => listener, "reason" => reason).increment(1);
    tracing::debug!(listener, reason, cause = %e, "connection ended with error");
}

/// [`until_shutdown`], counting the connection's error ([`connection_error`]).
pub async fn until_shutdown_counted<C>(conn: C, shutdown: &CancellationToken, listener: &'static str)
where
    C: GracefulConnection,
    C::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut conn = pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::time::timeout(DRAIN, conn).await.unwrap_or(Ok(()))
        }
    };
    if let Err(e) = result {
        let e: Box<dyn std::error::Error + Send + Sync> = e.into();
        connection_error(listener, &*e);
    }
}

/// Open connections per source address (an IPv6 address counts as its /64), capped: one
/// host cannot take a listener's whole connection budget. Entries exist only while their
/// address has a connection open, so memory follows open connections.
#[derive(Debug)]
pub struct PerAddress {
    cap: u32,
    open: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<[u8; 16], u32>>>,
}

/// One connection's place in a [`PerAddress`]; released on drop.
#[derive(Debug)]
pub struct AddressSlot {
    key: [u8; 16],
    open: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<[u8; 16], u32>>>,
}

impl PerAddress {
    pub fn new(cap: u32) -> Self {
        Self {
            cap: cap.max(1),
            open: std::sync::Arc::default(),
        }
    }

    /// A slot for a connection from `ip`, or `None` when that address is at the cap.
    pub fn try_acquire(&self, ip: std::net::IpAddr) -> Option<AddressSlot> {
        let key = address_key(ip);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(key).or_insert(0);
        if *n >= self.cap {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            key,
            open: std::sync::Arc::clone(&self.open),
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// An address as a limit key: IPv4 as IPv6-mapped, IPv6 as its /64.
pub fn address_key(ip: std::net::IpAddr) -> [u8; 16] {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(v6) => {
            let mut o = v6.octets();
            o[8..].fill(0);
            o
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_address_caps_and_releases() {
        let p = PerAddress::new(2);
        let a: std::net::IpAddr = "10.0.0.1".parse().unwrap();
        let b: std::net::IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = p.try_acquire(a).unwrap();
        let _s2 = p.try_acquire(a).unwrap();
        assert!(p.try_acquire(a).is_none());
        assert!(p.try_acquire(b).is_some());
        drop(s1);
        assert!(p.try_acquire(a).is_some());
        // One IPv6 /64 is one address.
        let v6a: std::net::IpAddr = "2001:db8::1".parse().unwrap();
        let v6b: std::net::IpAddr = "2001:db8::ffff:1".parse().unwrap();
        let _x = p.try_acquire(v6a).unwrap();
        let _y = p.try_acquire(v6b).unwrap();
        assert!(p.try_acquire("2001:db8::77".parse().unwrap()).is_none());
        assert!(p.try_acquire("2001:db8:0:1::1".parse().unwrap()).is_some());
    }

    #[test]
    fn entries_go_when_connections_do() {
        let p = PerAddress::new(3);
        let slots: Vec<_> = (0..100u8)
            .map(|i| p.try_acquire(std::net::IpAddr::from([10, 0, 0, i])).unwrap())
            .collect();
        assert_eq!(p.open.lock().unwrap().len(), 100);
        drop(slots);
        assert!(p.open.lock().unwrap().is_empty());
    }
}
