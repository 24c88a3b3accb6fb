//! Closes an HTTP/2 connection whose client floods control frames (PING, SETTINGS,
//! RST_STREAM, PRIORITY, empty DATA): an I/O wrapper between TLS and hyper that follows the
//! client's frames ([`relay_core::h2scan`]) and fails the read once the connection's
//! budget — a token bucket, [`BURST`] frames then [`PER_SECOND`] a second — is spent. hyper
//! then drops the connection; nobody else is affected. Counted in
//! `relay_http2_control_floods_total{listener}`.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use relay_core::gcra::{BucketTable, Rate};
use relay_core::h2scan::FrameScanner;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Control frames a connection may send at once.
pub const BURST: u64 = 1_000;
/// And then per second.
pub const PER_SECOND: u64 = 100;

/// `S` with its incoming HTTP/2 control frames counted (see the module documentation).
pub struct Guarded<S> {
    inner: S,
    scanner: Option<FrameScanner>,
    bucket: BucketTable,
    started: Instant,
    listener: &'static str,
    tripped: bool,
}

impl<S> std::fmt::Debug for Guarded<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

impl<S> Guarded<S> {
    /// `http2`: whether the connection speaks HTTP/2 (ALPN `h2`); otherwise the bytes pass
    /// through uncounted.
    pub fn new(inner: S, http2: bool, listener: &'static str) -> Self {
        Self::with_rate(inner, http2, listener, Rate::per_second(BURST, PER_SECOND))
    }

    /// With another budget (tests).
    pub fn with_rate(inner: S, http2: bool, listener: &'static str, rate: Rate) -> Self {
        Self {
            inner,
            scanner: http2.then(FrameScanner::new),
            bucket: BucketTable::new(1, rate),
            started: Instant::now(),
            listener,
            tripped: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.tripped {
            return Poll::Ready(Err(flood()));
        }
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some(scanner)) = (&poll, this.scanner.as_mut()) {
            let control = scanner.feed(&buf.filled()[before..]);
            if control > 0 {
                let now = u64::try_from(this.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                if this.bucket.take(&(), u64::from(control), now).is_err() {
                    this.tripped = true;
                    metrics::counter!("relay_http2_control_floods_total", "listener" => this.listener).increment(1);
                    tracing::debug!(
                        listener = this.listener,
                        "HTTP/2 control frame flood: closing the connection"
                    );
                    return Poll::Ready(Err(flood()));
                }
            }
        }
        poll
    }
}

fn flood() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "HTTP/2 control frame flood")
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    fn ping() -> Vec<u8> {
        let mut f = vec![0, 0, 8, 6, 0, 0, 0, 0, 0];
        f.extend([1u8; 8]);
        f
    }

    #[tokio::test]
    async fn a_ping_flood_fails_the_read_and_ordinary_traffic_does_not() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut guarded = Guarded::with_rate(server, true, "test", Rate::per_second(10, 1));
        let mut bytes = relay_core::h2scan::PREFACE.to_vec();
        for _ in 0..10 {
            bytes.extend(ping());
        }
        client.write_all(&bytes).await.unwrap();
        let mut buf = vec![0u8; bytes.len()];
        guarded.read_exact(&mut buf).await.unwrap();
        // The eleventh PING is one too many.
        client.write_all(&ping()).await.unwrap();
        let mut more = [0u8; 17];
        let err = guarded.read_exact(&mut more).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionAborted);
        // And it stays closed.
        assert!(guarded.read(&mut more).await.is_err());
    }

    #[tokio::test]
    async fn http1_bytes_are_not_scanned() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut guarded = Guarded::with_rate(server, false, "test", Rate::per_second(1, 1));
        let junk: Vec<u8> = ping().repeat(100);
        client.write_all(&junk).await.unwrap();
        let mut buf = vec![0u8; junk.len()];
        guarded.read_exact(&mut buf).await.unwrap();
    }
}
