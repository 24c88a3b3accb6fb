//! HTTP/2 abuse against the gateway binary's client listener (raw frames from
//! `test_support::h2flood`): rapid reset, a CONTINUATION flood, an oversized header list,
//! PING and SETTINGS floods. After each the gateway is up, its memory is bounded, and a
//! legitimate client's requests succeed.

use std::path::Path;

use relay_client::Recipient;
use test_support::h2flood::{self, Outcome, Target};

fn target(p: &test_support::process::Proc) -> Target {
    let mut roots = rustls::RootCertStore::empty();
    for c in relay_net::pem::load_certs(p.ca()).unwrap() {
        roots.add(c).unwrap();
    }
    Target {
        addr: p.addr(),
        tls: rustls::ClientConfig::builder_with_provider(relay_net::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
        server_name: "localhost".into(),
    }
}

/// The attack was stopped: the server sent GOAWAY or closed the connection.
fn stopped(what: &str, o: &Outcome) {
    assert!(
        o.goaway.is_some() || o.closed,
        "{what}: the attacking connection was left open: {o:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_floods_are_stopped_and_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("gateway.log");
    let p = crate::process::spawn_gateway_with(&dir.path().join("data"), &log, &[], "").await;
    let t = target(&p);
    let client = p.client();
    let alice = client.with_credential(
        client
            .register(&token(&dir.path().join("data"), "tel:+15550112001"))
            .await
            .unwrap()
            .credential,
    );
    let bob = client.with_credential(
        client
            .register(&token(&dir.path().join("data"), "tel:+15550112002"))
            .await
            .unwrap()
            .credential,
    );
    let mut sent = 0;
    let mut legit = async || {
        sent += 1;
        let m = test_support::framed_message(format!("legit {sent}").as_bytes());
        alice
            .send(&[Recipient::address("tel:+15550112002")], m, None, false)
            .await
            .unwrap();
        let page = bob.receive(0, 100, 0).await.unwrap();
        assert_eq!(page.envelopes.len(), sent, "every legitimate send arrived");
    };
    legit().await;
    let rss_before = p.rss_bytes();

    let o = h2flood::rapid_reset(&t, 20_000).await.unwrap();
    eprintln!("rapid reset: {o:?}");
    stopped("rapid reset", &o);
    legit().await;

    let o = h2flood::continuation_flood(&t, 16_000, 100_000).await.unwrap();
    eprintln!("CONTINUATION flood: {o:?}");
    stopped("CONTINUATION flood", &o);
    assert!(
        o.bytes_sent < 64 << 20,
        "the server stopped reading long before 1.6 GB: {o:?}"
    );
    legit().await;

    let o = h2flood::oversized_headers(&t, 256 << 10).await.unwrap();
    eprintln!("oversized header list: {o:?}");
    assert!(
        o.responses == 0 || o.resets > 0 || o.goaway.is_some() || o.closed,
        "{o:?}"
    );
    assert!(
        o.goaway.is_some() || o.closed || o.resets > 0,
        "a 256 KiB header list is refused: {o:?}"
    );
    legit().await;

    let o = h2flood::ping_flood(&t, 300_000).await.unwrap();
    eprintln!("PING flood: {o:?}");
    stopped("PING flood", &o);
    assert!(o.frames_sent < 100_000, "{o:?}");
    legit().await;

    let o = h2flood::settings_flood(&t, 100_000).await.unwrap();
    eprintln!("SETTINGS flood: {o:?}");
    stopped("SETTINGS flood", &o);
    assert!(o.frames_sent < 50_000, "{o:?}");
    legit().await;

    // Each protection has its metric.
    let metrics = crate::roundtrip::admin_get(std::net::SocketAddr::from(([127, 0, 0, 1], p.admin)), "/metrics").await;
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    assert!(
        value(r#"relay_http2_control_floods_total{listener="client"}"#) >= 2.0,
        "{metrics}"
    );
    assert!(value(r#"relay_http2_connection_errors_total{listener="client",reason="enhance_your_calm"}"#) >= 1.0);

    let rss_after = p.rss_bytes();
    eprintln!(
        "gateway RSS {} MiB before the floods, {} MiB after",
        rss_before >> 20,
        rss_after >> 20
    );
    assert!(
        rss_after < rss_before + (64 << 20),
        "memory stayed bounded: {} -> {} MiB",
        rss_before >> 20,
        rss_after >> 20
    );
    assert!(p.client().healthz().await.is_ok());
}

fn token(data_dir: &Path, address: &str) -> String {
    test_support::provision_token(data_dir, address, 3_600_000)
}

/// The push proxy's two TLS listeners close flooding connections the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_proxy_listeners_stop_floods() {
    let dir = tempfile::tempdir().unwrap();
    let config = push_proxy::config::Config {
        data_dir: dir.path().join("proxy"),
        listen: "127.0.0.1:0".parse().unwrap(),
        notify_listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        ..push_proxy::config::Config::default()
    };
    let tls_dir = config.data_dir.join("tls");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let proxy = push_proxy::server::start(config.validate().unwrap(), shutdown.clone())
        .await
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in relay_net::pem::load_certs(&tls_dir.join(push_proxy::tls::DEV_CA)).unwrap() {
        roots.add(c).unwrap();
    }
    let builder = || {
        rustls::ClientConfig::builder_with_provider(relay_net::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots.clone())
    };
    let device = Target {
        addr: proxy.listen,
        tls: builder().with_no_client_auth(),
        server_name: "localhost".into(),
    };
    let (chain, key) = relay_net::pem::load_pair(
        &tls_dir.join(push_proxy::tls::GATEWAY_CLIENT_CERT),
        &tls_dir.join(push_proxy::tls::GATEWAY_CLIENT_KEY),
    )
    .unwrap();
    let notify = Target {
        addr: proxy.notify_listen,
        tls: builder().with_client_auth_cert(chain, key).unwrap(),
        server_name: "localhost".into(),
    };
    for (name, t) in [("device", &device), ("notify", &notify)] {
        let o = h2flood::ping_flood(t, 300_000).await.unwrap();
        stopped(&format!("{name} PING flood"), &o);
        let o = h2flood::rapid_reset(t, 20_000).await.unwrap();
        stopped(&format!("{name} rapid reset"), &o);
        let o = h2flood::continuation_flood(t, 16_000, 100_000).await.unwrap();
        stopped(&format!("{name} CONTINUATION flood"), &o);
        let o = h2flood::oversized_headers(t, 256 << 10).await.unwrap();
        stopped(&format!("{name} oversized header list"), &o);
    }
    // Still serving.
    let health = std::process::Command::new("curl")
        .args(["-sS", "--http2", "--cacert"])
        .arg(tls_dir.join(push_proxy::tls::DEV_CA))
        .arg(format!("https://localhost:{}/healthz", proxy.listen.port()))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&health.stdout), "ok");
    shutdown.cancel();
    proxy.stopped().await;
}
