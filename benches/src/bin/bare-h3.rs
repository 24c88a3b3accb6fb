//! A bare quinn + h3 server with the gateway's QUIC and TLS settings (TLS 1.3, ALPN h3,
//! same transport limits and UDP buffers) that answers 201 after reading the body.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;

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
    let tls = gateway::tls::server_config(&gateway::config::TlsConfig::default(), &args.data_dir, &[])?;
    let mut tls = (*tls).clone();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(256u32.into())
        .max_concurrent_uni_streams(8u32.into())
        .stream_receive_window((256u32 * 1024).into())
        .receive_window((4u32 << 20).into())
        .send_window(4 << 20)
        .max_idle_timeout(Some(Duration::from_secs(30).try_into()?));
    server.transport_config(Arc::new(transport));
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let socket = std::net::UdpSocket::bind(args.listen)?;
        socket2_buffers(&socket)?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )?;
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                let Ok(mut h3) = h3::server::builder()
                    .max_field_section_size(16 * 1024)
                    .build::<_, Bytes>(h3_quinn::Connection::new(conn))
                    .await
                else {
                    return;
                };
                while let Ok(Some(resolver)) = h3.accept().await {
                    tokio::spawn(async move {
                        let Ok((_req, mut stream)) = resolver.resolve_request().await else {
                            return;
                        };
                        while let Ok(Some(_chunk)) = stream.recv_data().await {}
                        let resp = http::Response::builder().status(201).body(()).expect("static response");
                        if stream.send_response(resp).await.is_ok() {
                            let _ = stream.finish().await;
                        }
                    });
                }
            });
        }
        anyhow::Ok(())
    })
}

/// The gateway's UDP buffer sizes (4 MiB).
fn socket2_buffers(socket: &std::net::UdpSocket) -> std::io::Result<()> {
    let sock = socket2::SockRef::from(socket);
    sock.set_recv_buffer_size(4 << 20)?;
    sock.set_send_buffer_size(4 << 20)
}
