//! Every mutual-TLS refusal, and revocation closing an open connection.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use test_support::pki::{Leaf, RcgenCa};

use crate::{Carrier, Peer, connect, failures, mtls};

/// Carrier A as B's peer (it does not listen: only its certificates matter here).
fn carrier_a(ca: &RcgenCa, crls: Vec<PathBuf>) -> Peer<'_> {
    Peer {
        name: "a",
        domain: "carrier-a.test",
        port: 9,
        ca: &ca.cert,
        prefixes: &["+1555"],
        jurisdiction: "US",
        crls,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refusals_and_revocation_closes_open_connections() {
    let pki = tempfile::tempdir().unwrap();
    let ca = RcgenCa::new(&pki.path().join("peers"), "carrier-a");
    let good = ca.issue("good", "carrier-a.test", 1, None);
    let revoked = ca.issue("revoked", "carrier-a.test", 7, None);
    let expired = ca.issue("expired", "carrier-a.test", 3, Some((-30, -1)));
    let unconfigured = ca.issue("other-peer", "carrier-x.test", 4, None);
    let stranger_ca = RcgenCa::new(&pki.path().join("stranger"), "stranger");
    let stranger = stranger_ca.issue("stranger", "carrier-a.test", 1, None);
    let own_ca = RcgenCa::new(&pki.path().join("b"), "carrier-b");
    let leaf_b = own_ca.issue("b", "carrier-b.test", 1, None);
    let b = Carrier::start("carrier-b.test", "GB", &leaf_b, &["+4477"], &[]).await;
    let crl = ca.crl("current", &[7], false);
    let peer = |crls: Vec<PathBuf>| carrier_a(&ca, crls);
    b.set_peers(&[peer(vec![crl.clone()])]).await;
    let addr = b.gw.interconnect_addr.unwrap();
    let get = |leaf: Option<&Leaf>, tls12: bool| {
        let leaf = leaf.cloned();
        let ca = own_ca.cert.clone();
        async move {
            mtls(
                addr,
                &ca,
                leaf.as_ref(),
                tls12,
                "GET",
                "/.well-known/mimi-protocol-directory",
                None,
            )
            .await
        }
    };
    assert_eq!(
        get(Some(&good), false).await.unwrap().0,
        200,
        "the configured peer is accepted"
    );

    for (what, leaf, tls12, reason) in [
        ("no client certificate", None, false, "no_certificate"),
        ("unknown CA", Some(&stranger), false, "unknown_ca"),
        ("expired", Some(&expired), false, "expired"),
        ("revoked by CRL", Some(&revoked), false, "revoked"),
        (
            "valid certificate of an unconfigured peer",
            Some(&unconfigured),
            false,
            "unconfigured_peer",
        ),
    ] {
        let before = failures(&b.gw, reason).await;
        let r = get(leaf, tls12).await;
        assert!(r.is_err(), "{what}: {r:?}");
        let deadline = Instant::now() + Duration::from_secs(5);
        while failures(&b.gw, reason).await <= before {
            assert!(Instant::now() < deadline, "{what}: no {reason} failure counted");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(
        get(Some(&good), true).await.is_err(),
        "a TLS 1.2-only client is refused"
    );

    // An open connection of the peer is closed once its certificate is revoked (reload).
    let (mut sender, conn) = connect(addr, &own_ca.cert, Some(&good), false).await.unwrap();
    let driver = tokio::spawn(conn);
    let req = || {
        http::Request::get("/.well-known/mimi-protocol-directory")
            .header("host", "localhost")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    assert_eq!(sender.send_request(req()).await.unwrap().status(), 200);
    let reverified = reverify_closes(&b.gw).await;
    let revoke_all = ca.crl("revoke-good", &[1, 7], false);
    let revoked_at = Instant::now();
    b.set_peers(&[peer(vec![revoke_all])]).await;
    // Closed by the reload's re-verification: well before the listener's 10 s header-read
    // timeout could close an idle connection on its own.
    let closed = tokio::time::timeout(Duration::from_secs(5), driver).await;
    assert!(closed.is_ok(), "the revoked peer's connection stayed open");
    assert!(revoked_at.elapsed() < Duration::from_secs(5));
    assert!(reverify_closes(&b.gw).await > reverified, "closed for reverification");
    assert!(get(Some(&good), false).await.is_err());

    // A stale CRL refuses even an unrevoked certificate (enforce_revocation_expiration).
    b.set_peers(&[peer(vec![crl])]).await;
    assert_eq!(get(Some(&good), false).await.unwrap().0, 200);
    let stale = ca.crl("stale", &[], true);
    let before = failures(&b.gw, "stale_crl").await;
    b.set_peers(&[peer(vec![stale])]).await;
    assert!(get(Some(&good), false).await.is_err(), "stale CRL accepted");
    let deadline = Instant::now() + Duration::from_secs(5);
    while failures(&b.gw, "stale_crl").await <= before {
        assert!(Instant::now() < deadline, "no stale_crl failure counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.gw.stop().await;
}

/// Connections closed because their certificate no longer verifies (all peers).
async fn reverify_closes(gw: &test_support::TestGateway) -> u64 {
    let text = crate::admin(gw.admin_addr, "GET", "/metrics").await.unwrap();
    text.lines()
        .filter(|l| l.starts_with("interconnect_connections_closed_total{") && l.contains("reason=\"reverify\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The listener holds at most `max_connections`: past it a connection is closed at once (not
/// after the 10 s handshake timeout, which would close it anyway), the refusal is counted,
/// and a slot freed by a closed connection serves the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cap_refuses_past_the_limit() {
    use tokio::io::AsyncReadExt as _;
    let pki = tempfile::tempdir().unwrap();
    let ca = RcgenCa::new(&pki.path().join("peers"), "carrier-a");
    let good = ca.issue("good", "carrier-a.test", 1, None);
    let own_ca = RcgenCa::new(&pki.path().join("b"), "carrier-b");
    let leaf_b = own_ca.issue("b", "carrier-b.test", 1, None);
    let b = Carrier::start_with("carrier-b.test", "GB", &leaf_b, &["+4477"], &[], |c| {
        c.max_connections = 2;
    })
    .await;
    b.set_peers(&[carrier_a(&ca, vec![])]).await;
    let addr = b.gw.interconnect_addr.unwrap();
    // Two silent connections hold both slots (their TLS handshake waits for a ClientHello).
    let held = [
        tokio::net::TcpStream::connect(addr).await.unwrap(),
        tokio::net::TcpStream::connect(addr).await.unwrap(),
    ];
    let refused = || async {
        crate::admin(b.gw.admin_addr, "GET", "/metrics")
            .await
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("interconnect_connections_refused_total{reason=\"limit\"} "))
            .map_or(0.0, |v| v.trim().parse::<f64>().unwrap())
    };
    let before = refused().await;
    let started = Instant::now();
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
        .await
        .expect("the third connection is closed, not left waiting")
        .unwrap_or(0);
    let closed_after = started.elapsed();
    assert_eq!(n, 0, "closed without a byte");
    assert!(
        closed_after < Duration::from_secs(3),
        "closed by the cap, not by the 10 s handshake timeout: {closed_after:?}"
    );
    assert!(refused().await > before, "the refusal is counted");
    drop(held);
    // Freed slots serve the next peer connection.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = mtls(
            addr,
            &own_ca.cert,
            Some(&good),
            false,
            "GET",
            "/.well-known/mimi-protocol-directory",
            None,
        )
        .await;
        if matches!(r, Ok((200, _))) {
            break;
        }
        assert!(Instant::now() < deadline, "a freed slot never served: {r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    b.gw.stop().await;
}
