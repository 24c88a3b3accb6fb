//! A peer's HTTP/2 client reads every early error of the interconnect listener: curl
//! (Debian's 7.88), presenting the peer's certificate, posts 100 bodies of each bad kind.

use std::ffi::OsString;

use test_support::curl::Expect;
use test_support::pki::RcgenCa;

use crate::{Carrier, Peer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_gets_every_early_error_from_the_interconnect() {
    let pki = tempfile::tempdir().unwrap();
    let ca_a = RcgenCa::new(&pki.path().join("a"), "early-a");
    let leaf_a = ca_a.issue("a", "early-a.test", 1, None);
    let ca_b = RcgenCa::new(&pki.path().join("b"), "early-b");
    let leaf_b = ca_b.issue("b", "early-b.test", 1, None);
    let b = Carrier::start("early-b.test", "GB", &leaf_b, &["+4477"], &[]).await;
    b.set_peers(&[Peer {
        name: "early-a",
        domain: "early-a.test",
        port: 9,
        ca: &ca_a.cert,
        prefixes: &["+1555"],
        jurisdiction: "US",
        crls: vec![],
    }])
    .await;
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
        wrong.extend(test_support::curl::post_many(url, &tls, &expect, 100, pki.path()));
    }
    assert!(
        wrong.is_empty(),
        "{} not delivered, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(3)]
    );
    b.gw.stop().await;
}
