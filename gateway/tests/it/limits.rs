//! Server-side bounds: timeouts, the connection cap, graceful shutdown.

use std::time::{Duration, Instant};

use relay_client::{Protocol, Recipient};
use test_support::TestGateway;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Reads until the server closes the connection; returns what it sent and when it closed.
async fn read_to_close(s: &mut (impl tokio::io::AsyncRead + Unpin)) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out))
        .await
        .expect("server closed the connection");
    (out, started.elapsed())
}

/// The value of one metric line on the admin listener (`name{labels}` exactly as rendered).
pub(crate) async fn metric(gw: &TestGateway, series: &str) -> f64 {
    let text = crate::roundtrip::admin_get(gw.admin_addr, "/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The knob, not a default: 1 s configured, every other timeout at 30 s, so a close between
/// 1 s and 5 s is this timeout's doing.
fn only(set: impl FnOnce(&mut gateway::Config)) -> impl FnOnce(&mut gateway::Config) {
    |c| {
        c.timeouts.tls_handshake_secs = 30;
        c.timeouts.first_request_secs = 30;
        c.timeouts.header_read_secs = 30;
        c.timeouts.body_read_secs = 30;
        set(c);
    }
}

fn closed_by_the_knob(after: Duration) {
    assert!(
        (Duration::from_millis(900)..Duration::from_secs(5)).contains(&after),
        "closed after {after:?}, expected ~1 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_tcp_connection_is_closed_after_handshake_timeout() {
    let gw = TestGateway::start_with(only(|c| c.timeouts.tls_handshake_secs = 1)).await;
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (got, after) = read_to_close(&mut tcp).await;
    assert!(got.is_empty());
    closed_by_the_knob(after);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_without_request_is_closed() {
    let gw = TestGateway::start_with(only(|c| c.timeouts.first_request_secs = 1)).await;
    let mut tls = gw.tls_connect(b"http/1.1").await;
    let (got, after) = read_to_close(&mut tls).await;
    assert!(got.is_empty());
    closed_by_the_knob(after);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_body_gets_408_and_stores_nothing() {
    let gw = TestGateway::start_with(|c| c.timeouts.body_read_secs = 1).await;
    let (_, _) = gw.device("tel:+15550100002").await;
    let reg = gw.client().register(&gw.provision("tel:+15550100001")).await.unwrap();
    let before = gw.stats().await;
    let mut tls = gw.tls_connect(b"http/1.1").await;
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/x-protobuf\r\nContent-Length: 1000\r\n\r\npartial",
        reg.credential
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let n = tokio::time::timeout(Duration::from_secs(20), tls.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let resp = String::from_utf8_lossy(&buf[..n]);
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    assert!(resp.contains("\"timeout\""), "{resp}");
    assert_eq!(gw.stats().await, before);
    gw.stop().await;
}

/// One source address may hold `max_connections_per_address` connections, TCP and QUIC
/// together; another address is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_address_are_capped_on_both_transports() {
    let gw = TestGateway::start_with(only(|c| c.limits.max_connections_per_address = 2)).await;
    let from = |ip: &str, protocol| {
        let options = relay_client::ConnectOptions {
            local: Some(ip.parse().unwrap()),
            resolve: None,
        };
        relay_client::Client::connect_with(&gw.url(), relay_client::Trust::CaFile(gw.ca()), protocol, options).unwrap()
    };
    let tcp_refused = "relay_connections_refused_total{reason=\"per_address\",transport=\"tcp\"}";
    let h3_refused = "relay_connections_refused_total{reason=\"per_address\",transport=\"h3\"}";
    let (tcp_before, h3_before) = (metric(&gw, tcp_refused).await, metric(&gw, h3_refused).await);
    // Two connections from 127.0.0.6: one HTTP/2, one HTTP/3.
    let h2 = from("127.0.0.6", Protocol::Http2);
    h2.healthz().await.unwrap();
    let h3 = from("127.0.0.6", Protocol::Http3);
    h3.healthz().await.unwrap();
    // A third from the same address is refused on either transport.
    assert!(from("127.0.0.6", Protocol::Http2).healthz().await.is_err());
    assert!(from("127.0.0.6", Protocol::Http3).healthz().await.is_err());
    assert!(metric(&gw, tcp_refused).await > tcp_before);
    assert!(metric(&gw, h3_refused).await > h3_before);
    // Another address is served; the two open connections still are.
    from("127.0.0.7", Protocol::Http2).healthz().await.unwrap();
    from("127.0.0.7", Protocol::Http3).healthz().await.unwrap();
    h2.healthz().await.unwrap();
    h3.healthz().await.unwrap();
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_refused() {
    // Handshake and first-request timeouts at 30 s: only the cap can close a connection soon.
    let gw = TestGateway::start_with(only(|c| c.limits.max_connections = 2)).await;
    let refused = "relay_connections_refused_total{reason=\"limit\",transport=\"tcp\"}";
    let refused_before = metric(&gw, refused).await;
    let _a = gw.tls_connect(b"http/1.1").await;
    let _b = gw.tls_connect(b"http/1.1").await;
    // The third TCP connection is accepted by the kernel, then dropped at once.
    let mut third = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (got, after) = read_to_close(&mut third).await;
    assert!(got.is_empty());
    assert!(after < Duration::from_secs(3), "the third connection waited {after:?}");
    assert!(metric(&gw, refused).await > refused_before, "the refusal is counted");
    drop(_a);
    // A slot frees up once a connection ends.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if gw.client().healthz().await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "no slot freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_long_polls_and_completes() {
    let gw = TestGateway::start().await;
    let (receiver, _) = gw.device("tel:+15550100002").await;
    let poll = tokio::spawn(async move { receiver.receive(0, 10, 60).await });
    while gw.state().store().watchers().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = Instant::now();
    gw.stop().await;
    let page = poll.await.unwrap().unwrap();
    assert!(page.envelopes.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "did not wait for the 60 s poll"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_registration_on_loopback() {
    let gw = TestGateway::start_with(|c| c.registration.danger_open_registration = true).await;
    let reg = gw.client().register_open("tel:+15550100003").await.unwrap();
    let c = gw.client().with_credential(reg.credential);
    c.send(
        &[Recipient::address("tel:+15550100003")],
        test_support::framed_message(b"self"),
        None,
        false,
    )
    .await
    .unwrap();
    assert_eq!(c.receive(0, 10, 0).await.unwrap().envelopes.len(), 1);
    gw.stop().await;
    let closed = TestGateway::start().await;
    crate::assert_api_error(
        closed.client().register_open("tel:+15550100003").await,
        401,
        "invalid_provisioning_token",
    );
    closed.stop().await;
}

/// HTTP/3 needs the listener's port number on UDP too: a configured port whose UDP side is
/// taken is a start-up error naming it (with `:0`, the gateway picks another pair instead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_port_with_udp_taken_fails_clearly() {
    let (udp, port) = loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            break (udp, port);
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let config = gateway::Config {
        data_dir: dir.path().to_path_buf(),
        listen: format!("127.0.0.1:{port}").parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        ..gateway::Config::default()
    };
    let err = gateway::start(config.validate().unwrap(), tokio_util::sync::CancellationToken::new())
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("binding UDP"), "{err:#}");
    drop(udp);
}
