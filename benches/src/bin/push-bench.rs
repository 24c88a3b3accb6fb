//! Pointer pushes per second through the push proxy to a loopback APNs endpoint, against a
//! baseline measured in the same run: the proxy's own sender pushing straight to the same
//! endpoint (no notify hop). Both paths do the full work of a push (ES256 provider token,
//! HTTP/2 + TLS 1.3, the endpoint verifying the token and headers).
//!
//!   push-bench [--secs 5] [--concurrency 32] [--batch 50] [--devices 200]

#![allow(clippy::print_stdout, reason = "a benchmark reports on standard output")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use p256::pkcs8::EncodePrivateKey as _;
use push_proxy::PushTarget;
use push_proxy::providers::Outcome;
use relay_core::push::{Backoff, Pointer};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use test_support::push_sinks::PushSink;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 5)]
    secs: u64,
    /// Concurrent notify requests (proxy path) / concurrent pushes (baseline).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Notifications per notify request.
    #[arg(long, default_value_t = 50)]
    batch: usize,
    /// Distinct device tokens.
    #[arg(long, default_value_t = 200)]
    devices: usize,
}

fn token(i: usize) -> String {
    format!("{i:064x}")
}

fn pointer() -> String {
    let mut p = [0u8; 16];
    rand::fill(&mut p);
    Pointer::from_random(p).encode()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let key = p256::ecdsa::SigningKey::from(push_proxy::webpush::random_secret());
    let sink = PushSink::start_apns(&key).await;
    let dir = tempfile::tempdir()?;
    let key_file = dir.path().join("apns.p8");
    std::fs::write(&key_file, key.to_pkcs8_pem(p256::pkcs8::LineEnding::LF)?.as_bytes())?;

    // Baseline: the sender alone.
    let sender = push_proxy::sender::Sender::new(push_proxy::sender::SenderConfig {
        ca_file: sink.ca(),
        apns: Some(sink.apns_config(&key)),
        fcm: None,
        vapid_key: p256::ecdsa::SigningKey::from(push_proxy::webpush::random_secret()),
        vapid_subject: "mailto:bench@example.net".into(),
        ttl: Duration::from_secs(3600),
        backoff: Backoff::default(),
        max_in_flight: args.concurrency * args.batch,
        request_timeout: Duration::from_secs(10),
    })
    .map_err(anyhow::Error::msg)?;
    let sender = Arc::new(sender);
    let done = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(args.secs);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..args.concurrency * args.batch {
        let (sender, done, devices) = (Arc::clone(&sender), Arc::clone(&done), args.devices);
        tasks.spawn(async move {
            let mut i = w;
            while Instant::now() < end {
                let target = PushTarget::Apns {
                    token: token(i % devices),
                };
                let p = Pointer::parse(&pointer()).expect("a fresh pointer parses");
                if sender.push(&target, &p, false).await == Outcome::Delivered {
                    done.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let baseline = done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();

    // Through the proxy: notify batches over mutual TLS.
    let config: push_proxy::config::Config = toml::from_str(&format!(
        r#"data_dir = "{data}"
listen = "127.0.0.1:0"
notify_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
[delivery]
ca_file = "{ca}"
max_in_flight_per_provider = {inflight}
notify_wait_ms = 10000
[apns]
base_url = "{url}"
topic = "net.example.rcs"
team_id = "TEAM123456"
key_id = "KEY1234567"
key_file = "{key}"
"#,
        data = dir.path().join("proxy").display(),
        ca = sink.ca().display(),
        inflight = args.concurrency * args.batch,
        url = sink.url(),
        key = key_file.display(),
    ))?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = push_proxy::server::start(config.validate()?, shutdown.clone())
        .await
        .map_err(anyhow::Error::msg)?;
    let tls_dir = dir.path().join("proxy/tls");
    let keys = push_proxy::keys::handle_keys(&relay_keys::Provider::files(), &dir.path().join("proxy/keys"), 1)
        .map_err(anyhow::Error::msg)?;
    let handles: Vec<String> = (0..args.devices)
        .map(|i| keys.seal(&PushTarget::Apns { token: token(i) }))
        .collect();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(tls_dir.join("dev-ca.pem"))? {
        roots.add(c?)?;
    }
    let certs = CertificateDer::pem_file_iter(tls_dir.join("gateway-client.pem"))?.collect::<Result<Vec<_>, _>>()?;
    let client_key = PrivateKeyDer::from_pem_file(tls_dir.join("gateway-client-key.pem"))?;
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, client_key)?;
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http2()
        .wrap_connector(tcp);
    let http: HyperClient<_, Full<Bytes>> = HyperClient::builder(TokioExecutor::new())
        .http2_only(true)
        .build(connector);
    let url = format!("https://localhost:{}/v1/notify", running.notify_listen.port());
    let before = sink.pushes().len();
    let delivered = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(args.secs);
    let start = Instant::now();
    let handles = Arc::new(handles);
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..args.concurrency {
        let (http, url, handles, delivered, batch) = (
            http.clone(),
            url.clone(),
            Arc::clone(&handles),
            Arc::clone(&delivered),
            args.batch,
        );
        tasks.spawn(async move {
            let mut i = w * batch;
            while Instant::now() < end {
                let items: Vec<_> = (0..batch)
                    .map(|k| {
                        serde_json::json!({
                            "handle": handles[(i + k) % handles.len()],
                            "pointer": pointer(),
                            "urgent": false,
                        })
                    })
                    .collect();
                i += batch;
                let body = serde_json::json!({ "notifications": items }).to_string();
                let req = http::Request::post(&url)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)))
                    .context("request")?;
                let resp = http.request(req).await.context("notify")?;
                anyhow::ensure!(resp.status().is_success(), "notify answered {}", resp.status());
                let body = resp.into_body().collect().await.context("body")?.to_bytes();
                let v: serde_json::Value = serde_json::from_slice(&body)?;
                delivered.fetch_add(v["delivered"].as_u64().unwrap_or(0), Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let secs = start.elapsed().as_secs_f64();
    let proxied = (sink.pushes().len() - before) as f64 / secs;
    shutdown.cancel();
    running.stopped().await;
    println!(
        "baseline (sender alone → loopback APNs): {baseline:.0} pushes/s\n\
         through the proxy (notify over mTLS → proxy → loopback APNs, batches of {}): {proxied:.0} pushes/s \
         ({} delivered in responses)\nratio: {:.2}",
        args.batch,
        delivered.load(Ordering::Relaxed),
        proxied / baseline
    );
    Ok(())
}
