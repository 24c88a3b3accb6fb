//! A bare hyper + rustls HTTP/2 server with the gateway's TLS settings (TLS 1.3 only,
//! ring, ALPN h2/http1.1, same HTTP/2 limits) that answers 201 after reading the body.

use std::net::SocketAddr;
use std::path::PathBuf;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;

/// The gateway's allocator, so the comparison measures the transport, not malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long)]
    listen: SocketAddr,
    /// Directory holding `tls/dev-cert.pem` and `tls/dev-key.pem` (a gateway data dir).
    #[arg(long)]
    data_dir: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tls = gateway::tls::server_config(
        &gateway::config::TlsConfig::default(),
        &args.data_dir,
        &[b"h2", b"http/1.1"],
    )?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        loop {
            let (tcp, _) = listener.accept().await?;
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder
                    .http2()
                    .timer(TokioTimer::new())
                    .max_concurrent_streams(256)
                    .max_header_list_size(16 * 1024)
                    .initial_stream_window_size(256 * 1024)
                    .initial_connection_window_size(4 * 1024 * 1024);
                let service = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let body = req.into_body().collect().await?.to_bytes();
                    let _ = body.len();
                    let resp = http::Response::builder()
                        .status(201)
                        .body(Full::new(Bytes::from_static(b"")))?;
                    anyhow::Ok(resp)
                });
                let _ = builder.serve_connection(TokioIo::new(tls), service).await;
            });
        }
    })
}
