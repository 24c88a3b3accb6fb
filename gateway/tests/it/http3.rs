//! HTTP/3-specific bad input: oversized header sections, more streams than allowed, and
//! a flood of connection attempts. Each is bounded and leaves the gateway serving.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, Method};
use relay_client::{Client, Protocol, Trust};
use test_support::TestGateway;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_header_section_is_refused() {
    let gw = TestGateway::start().await.speaking(Protocol::Http3);
    let (bob, _) = gw.device("tel:+15550100002").await;
    let before = gw.stats().await;
    let big = vec![(HeaderName::from_static("x-padding"), "a".repeat(20 * 1024))];
    // Either the server answers 431, or — once the client has read the server's SETTINGS —
    // the client refuses to send a section over the advertised 16 KiB. Nothing else passes.
    match bob.raw(Method::GET, "/v1/messages", &big, Bytes::new()).await {
        Ok(resp) => assert_eq!(resp.status.as_u16(), 431, "header section over 16 KiB"),
        Err(relay_client::ClientError::Transport(e)) => {
            assert!(e.contains("Header too big") && e.contains("max size: 16384"), "{e}");
        }
        Err(e) => panic!("{e:?}"),
    }
    assert_eq!(gw.stats().await, before);
    bob.receive(0, 10, 0).await.unwrap();
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_streams_than_allowed_queue_and_complete() {
    let gw = TestGateway::start_with(|c| c.limits.max_concurrent_streams = 4)
        .await
        .speaking(Protocol::Http3);
    let (bob, _) = gw.device("tel:+15550100002").await;
    // 20 one-second long-polls on one connection with 4 streams allowed: they run in waves
    // of 4, so all of them take about five seconds — about one with no limit, about twenty if
    // the limit were one.
    let started = std::time::Instant::now();
    let mut polls = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let bob = bob.clone();
        polls.spawn(async move { bob.receive(0, 10, 1).await });
    }
    while let Some(r) = polls.join_next().await {
        r.unwrap().unwrap();
    }
    let took = started.elapsed();
    assert!(
        (Duration::from_millis(4500)..Duration::from_secs(15)).contains(&took),
        "20 polls of 1 s, 4 at a time, took {took:?}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_flood_is_bounded() {
    let gw = TestGateway::start_with(|c| {
        c.limits.max_connections = 8;
        c.http3.retry_above_connections = Some(4);
    })
    .await;
    let ca = gw.ca();
    let url = gw.url();
    let mut attempts = tokio::task::JoinSet::new();
    let clients = Arc::new(std::sync::Mutex::new(Vec::new()));
    for _ in 0..100 {
        let (ca, url, clients) = (ca.clone(), url.clone(), Arc::clone(&clients));
        attempts.spawn(async move {
            let c = Client::connect(&url, Trust::CaFile(ca), Protocol::Http3).unwrap();
            let ok = tokio::time::timeout(Duration::from_secs(10), c.healthz())
                .await
                .is_ok_and(|r| r.is_ok());
            clients.lock().unwrap().push(c); // hold the connection open
            ok
        });
    }
    let mut served = 0;
    while let Some(r) = attempts.join_next().await {
        served += usize::from(r.unwrap());
    }
    assert!((1..=8).contains(&served), "at most max_connections at once: {served}");
    let metrics = crate::roundtrip::admin_get(gw.admin_addr, "/metrics").await;
    let retries: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("relay_quic_retries_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(
        retries > 0.0,
        "clients beyond retry_above_connections were asked to validate their address"
    );
    drop(clients);
    // Still serving once the flood is over.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let c = gw.client_over(Protocol::Http3);
        if c.healthz().await.is_ok() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "gateway did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gw.client().healthz().await.unwrap();
    gw.stop().await;
}

/// Writes a CA and a localhost server certificate signed by it; returns the CA path.
fn issue(
    dir: &std::path::Path,
    name: &str,
    cert_path: &std::path::Path,
    key_path: &std::path::Path,
) -> std::path::PathBuf {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} CA"));
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    std::fs::write(cert_path, cert.pem()).unwrap();
    std::fs::write(key_path, key.serialize_pem()).unwrap();
    let ca_path = dir.join(format!("{name}-ca.pem"));
    std::fs::write(&ca_path, ca_cert.pem()).unwrap();
    ca_path
}

/// One certificate source for both listeners: a reload changes what new HTTP/2 and
/// HTTP/3 connections see; open connections keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_reload_applies_to_both_transports() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("server.pem"), dir.path().join("server-key.pem"));
    let old_ca = issue(dir.path(), "old", &cert, &key);
    let (c, k) = (cert.clone(), key.clone());
    let gw = TestGateway::start_with(move |config| {
        config.tls.cert = Some(c);
        config.tls.key = Some(k);
    })
    .await;
    let connect = |ca: &std::path::Path, p| Client::connect(&gw.url(), Trust::CaFile(ca.to_path_buf()), p).unwrap();
    let old_h2 = connect(&old_ca, Protocol::Http2);
    let old_h3 = connect(&old_ca, Protocol::Http3);
    old_h2.healthz().await.unwrap();
    old_h3.healthz().await.unwrap();

    let new_ca = issue(dir.path(), "new", &cert, &key);
    for p in [Protocol::Http2, Protocol::Http3] {
        assert!(connect(&new_ca, p).healthz().await.is_err(), "{p:?}: not reloaded yet");
    }
    let reload = admin_post(gw.admin_addr, "/admin/tls/reload").await;
    assert!(reload.starts_with("HTTP/1.1 204"), "{reload}");
    for p in [Protocol::Http2, Protocol::Http3] {
        connect(&new_ca, p).healthz().await.unwrap();
        assert!(
            connect(&old_ca, p).healthz().await.is_err(),
            "{p:?}: new connections get the new certificate"
        );
    }
    old_h2.healthz().await.unwrap();
    old_h3.healthz().await.unwrap();

    // A broken file is refused and the current certificate stays.
    std::fs::write(&cert, "not a certificate").unwrap();
    let reload = admin_post(gw.admin_addr, "/admin/tls/reload").await;
    assert!(reload.starts_with("HTTP/1.1 422"), "{reload}");
    connect(&new_ca, Protocol::Http3).healthz().await.unwrap();
    gw.stop().await;
}

async fn admin_post(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// Initials from 1,000 source ports that never finish their handshake (as spoofed ones
/// would not): under load each gets a stateless Retry and takes no connection slot, and a
/// real client is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_initials_from_many_ports_get_retries_and_take_no_slot() {
    let gw = TestGateway::start_with(|c| {
        c.limits.max_connections = 8;
        c.http3.retry_above_connections = Some(2);
    })
    .await;
    // Load: two connections held open, so new unvalidated clients are asked to Retry.
    let held = [gw.client_over(Protocol::Http3), gw.client_over(Protocol::Http3)];
    for c in &held {
        c.healthz().await.unwrap();
    }
    let retries = async || crate::limits::metric(&gw, "relay_quic_retries_total").await;
    let before = retries().await;
    let mut roots = rustls::RootCertStore::empty();
    for c in relay_net::pem::load_certs(&gw.ca()).unwrap() {
        roots.add(c).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(relay_net::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let quic = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
    ));
    const FLOOD: usize = 1_000;
    for _ in 0..FLOOD {
        // A fresh socket (source port) per Initial; closed before the Retry can be answered.
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let connecting = endpoint.connect_with(quic.clone(), gw.addr, "localhost").unwrap();
        tokio::task::yield_now().await;
        drop(connecting);
        endpoint.close(0u32.into(), b"");
    }
    // Most Initials reached the server and got a Retry (a few may be dropped on loopback).
    test_support::eventually("a Retry for 80% of the Initials", Duration::from_secs(10), async || {
        retries().await - before >= (FLOOD as f64) * 0.8
    })
    .await;
    // No slot was taken: of the 8, 6 are free for real clients, which validate and are served.
    let real: Vec<_> = (0..6).map(|_| gw.client_over(Protocol::Http3)).collect();
    for c in &real {
        tokio::time::timeout(Duration::from_secs(10), c.healthz())
            .await
            .expect("served in time")
            .unwrap();
    }
    for c in &held {
        c.healthz().await.unwrap();
    }
    gw.stop().await;
}
