//! A peer's HTTP/2 client reads every early error of the interconnect listener: curl
//! (Debian's 7.88), presenting the peer's certificate, posts 100 bodies of each bad kind.

use std::ffi::OsString;

use test_support::curl::Expect;
use test_support::pki::RcgenCa;

use crate::{Carrier, Peer};

/// Carrier A's leaf and B's CA, on disk while this lives.
struct Pki {
    dir: tempfile::TempDir,
    leaf_a: test_support::pki::Leaf,
    ca_b: RcgenCa,
}

/// Carrier B running, with carrier A (named `{prefix}-a`, which does not listen) as its
/// peer: A's leaf is what the attacking client presents.
async fn carrier_b_with_peer_a(prefix: &str) -> (Pki, Carrier) {
    let dir = tempfile::tempdir().unwrap();
    let ca_a = RcgenCa::new(&dir.path().join("a"), &format!("{prefix}-a"));
    let leaf_a = ca_a.issue("a", &format!("{prefix}-a.test"), 1, None);
    let ca_b = RcgenCa::new(&dir.path().join("b"), &format!("{prefix}-b"));
    let leaf_b = ca_b.issue("b", &format!("{prefix}-b.test"), 1, None);
    let b = Carrier::start(&format!("{prefix}-b.test"), "GB", &leaf_b, &["+4477"], &[]).await;
    b.set_peers(&[Peer {
        name: &format!("{prefix}-a"),
        domain: &format!("{prefix}-a.test"),
        port: 9,
        ca: &ca_a.cert,
        prefixes: &["+1555"],
        jurisdiction: "US",
        crls: vec![],
    }])
    .await;
    (Pki { dir, leaf_a, ca_b }, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_gets_every_early_error_from_the_interconnect() {
    let (pki, b) = carrier_b_with_peer_a("early").await;
    let (leaf_a, ca_b) = (&pki.leaf_a, &pki.ca_b);
    let tls: Vec<OsString> = vec![
        "--cacert".into(),
        ca_b.cert.clone().into(),
        "--cert".into(),
        leaf_a.cert.clone().into(),
        "--key".into(),
        leaf_a.key.clone().into(),
    ];
    let notify = format!("https://localhost:{}/mimi/v1/notify/{}", b.ic_port(), "00".repeat(16));
    let claim = format!("https://localhost:{}/mimi/v1/keyMaterial", b.ic_port());
    let cases = [
        (&notify, "text/plain", 2_000, 415, "unsupported_media_type"),
        (&notify, "application/json", (4 << 20) + 1_000, 413, "body_too_large"),
        (&notify, "application/json", 2_000, 400, "invalid_body"),
        (&claim, "text/plain", 2_000, 415, "unsupported_media_type"),
        (&claim, "application/json", 2_000, 400, "invalid_body"),
    ];
    let mut wrong = Vec::new();
    for (url, content_type, body_len, status, code) in cases {
        let expect = Expect {
            what: code,
            content_type,
            headers: vec![],
            body_len,
            status,
            code,
            field: "error",
        };
        wrong.extend(test_support::curl::post_many(url, &tls, &expect, 100, pki.dir.path()));
    }
    assert!(
        wrong.is_empty(),
        "{} not delivered, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(3)]
    );
    b.gw.stop().await;
}

/// A peer (authenticated, so the mutual TLS does not stop it) flooding control frames or
/// resetting streams is disconnected; the listener goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_peer_is_disconnected() {
    use test_support::h2flood::{self, Target};
    let (pki, b) = carrier_b_with_peer_a("flood").await;
    let (leaf_a, ca_b) = (&pki.leaf_a, &pki.ca_b);
    let mut roots = rustls::RootCertStore::empty();
    for c in relay_net::pem::load_certs(&ca_b.cert).unwrap() {
        roots.add(c).unwrap();
    }
    let (chain, key) = relay_net::pem::load_pair(&leaf_a.cert, &leaf_a.key).unwrap();
    let t = Target {
        addr: b.gw.interconnect_addr.unwrap(),
        tls: rustls::ClientConfig::builder_with_provider(relay_net::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap(),
        server_name: "localhost".into(),
    };
    for (what, o) in [
        ("PING flood", h2flood::ping_flood(&t, 300_000).await.unwrap()),
        ("SETTINGS flood", h2flood::settings_flood(&t, 100_000).await.unwrap()),
        ("rapid reset", h2flood::rapid_reset(&t, 20_000).await.unwrap()),
        (
            "CONTINUATION flood",
            h2flood::continuation_flood(&t, 16_000, 100_000).await.unwrap(),
        ),
    ] {
        assert!(o.goaway.is_some() || o.closed, "{what}: {o:?}");
    }
    let (status, _) = crate::mtls(
        b.gw.interconnect_addr.unwrap(),
        &ca_b.cert,
        Some(leaf_a),
        false,
        "GET",
        "/.well-known/mimi-protocol-directory",
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    b.gw.stop().await;
}
