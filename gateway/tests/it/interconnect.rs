//! Two carriers on loopback peering over mutual TLS: delivery (single and mixed recipient
//! lists), remote KeyPackage claims, residency refusals, idempotent notify, and every mTLS
//! refusal the interconnect promises. One carrier's PKI is made with the `openssl` command
//! line, the other's with rcgen.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use interconnect::config::InterconnectConfig;
use relay_client::{ClientError, Recipient};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use storage::Store as _;
use test_support::pki::{Leaf, OpensslCa, RcgenCa};
use test_support::{TestGateway, framed_message};

pub(crate) struct Carrier {
    pub gw: TestGateway,
    pub peers_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Carrier {
    pub(crate) async fn start(domain: &str, jurisdiction: &str, leaf: &Leaf, local: &[&str], allowed: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let peers_file = dir.path().join("peers.toml");
        std::fs::write(&peers_file, "").unwrap();
        let cfg = InterconnectConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            domain: domain.into(),
            jurisdiction: jurisdiction.into(),
            cert: leaf.cert.clone(),
            key: leaf.key.clone(),
            peers_file: peers_file.clone(),
            local_prefixes: local.iter().map(|s| (*s).to_owned()).collect(),
            allowed_jurisdictions: allowed.iter().map(|s| (*s).to_owned()).collect(),
            outbox_ttl_secs: 3600,
            concurrency_per_peer: 8,
            request_timeout_secs: 5,
            backoff_base_ms: 50,
            backoff_cap_secs: 2,
            recheck_secs: 2,
        };
        let gw = TestGateway::start_with(|c| c.interconnect = Some(cfg)).await;
        Self {
            gw,
            peers_file,
            _dir: dir,
        }
    }

    pub(crate) fn ic_port(&self) -> u16 {
        self.gw.interconnect_addr.unwrap().port()
    }

    /// Writes the peers file and reloads it through the admin API.
    pub(crate) async fn set_peers(&self, peers: &[Peer<'_>]) {
        std::fs::write(&self.peers_file, peers_toml(peers)).unwrap();
        let resp = admin(self.gw.admin_addr, "POST", "/admin/interconnect/reload")
            .await
            .unwrap();
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(resp.contains(&format!("{} peers", peers.len())), "{resp}");
    }
}

pub(crate) struct Peer<'a> {
    pub name: &'a str,
    pub domain: &'a str,
    pub port: u16,
    pub ca: &'a Path,
    pub prefixes: &'a [&'a str],
    pub jurisdiction: &'a str,
    pub crls: Vec<PathBuf>,
}

fn peers_toml(peers: &[Peer<'_>]) -> String {
    let mut out = String::new();
    for p in peers {
        out.push_str(&format!(
            "[[peer]]\nname = \"{}\"\ndomain = \"{}\"\nendpoint = \"https://localhost:{}\"\nca = \"{}\"\nprefixes = {:?}\njurisdiction = \"{}\"\ncrls = {:?}\n\n",
            p.name,
            p.domain,
            p.port,
            p.ca.display(),
            p.prefixes,
            p.jurisdiction,
            p.crls.iter().map(|c| c.display().to_string()).collect::<Vec<_>>(),
        ));
    }
    out
}

async fn receive_all(c: &relay_client::Client, want: usize) -> Vec<Bytes> {
    let mut got = Vec::new();
    let mut cursor = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < want {
        assert!(Instant::now() < deadline, "received {} of {want}", got.len());
        let page = c.receive(cursor, 100, 1).await.unwrap();
        cursor = page.next_cursor;
        got.extend(page.envelopes.into_iter().map(|e| e.message));
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_carriers_deliver_claim_and_refuse_by_residency() {
    let pki = tempfile::tempdir().unwrap();
    let ca_a = OpensslCa::new(&pki.path().join("a"), "carrier-a");
    let leaf_a = ca_a.issue("a", "carrier-a.test", 1);
    let ca_b = RcgenCa::new(&pki.path().join("b"), "carrier-b");
    let leaf_b = ca_b.issue("b", "carrier-b.test", 1, None);
    let a = Carrier::start("carrier-a.test", "US", &leaf_a, &["+1555"], &["US", "GB"]).await;
    let b = Carrier::start("carrier-b.test", "GB", &leaf_b, &["+4477"], &[]).await;
    a.set_peers(&[
        Peer {
            name: "b",
            domain: "carrier-b.test",
            port: b.ic_port(),
            ca: &ca_b.cert,
            prefixes: &["+4477"],
            jurisdiction: "GB",
            crls: vec![],
        },
        Peer {
            name: "c",
            domain: "carrier-c.test",
            port: 9,
            ca: &ca_b.cert,
            prefixes: &["+86"],
            jurisdiction: "CN",
            crls: vec![],
        },
    ])
    .await;
    b.set_peers(&[Peer {
        name: "a",
        domain: "carrier-a.test",
        port: a.ic_port(),
        ca: &ca_a.cert,
        prefixes: &["+1555"],
        jurisdiction: "US",
        crls: vec![],
    }])
    .await;

    let (alice, _) = a.gw.device("tel:+15550100001").await;
    let (carol, _) = a.gw.device("tel:+15550100002").await;
    let (bob, _) = b.gw.device("tel:+447700900001").await;

    // A to B, then a mixed list (one local, one remote), then B to A.
    let m1 = framed_message(b"a-to-b");
    alice
        .send(&[Recipient::address("tel:+447700900001")], m1.clone(), None, false)
        .await
        .unwrap();
    assert_eq!(receive_all(&bob, 1).await, vec![m1.clone()]);
    let m2 = framed_message(b"mixed");
    alice
        .send(
            &[
                Recipient::address("tel:+447700900001"),
                Recipient::address("tel:+15550100002"),
            ],
            m2.clone(),
            None,
            false,
        )
        .await
        .unwrap();
    assert_eq!(receive_all(&carol, 1).await, vec![m2.clone()]);
    assert_eq!(receive_all(&bob, 2).await, vec![m1, m2]);
    let m3 = framed_message(b"b-to-a");
    bob.send(&[Recipient::address("tel:+15550100001")], m3.clone(), None, false)
        .await
        .unwrap();
    assert_eq!(receive_all(&alice, 1).await, vec![m3]);

    // A claims B's KeyPackages through the interconnect, each exactly once.
    let member = test_support::mls::Member::new("tel:+447700900001");
    let kps = [member.key_package_bytes(), member.key_package_bytes()];
    bob.upload_key_packages(&kps).await.unwrap();
    let mut claimed = Vec::new();
    for _ in 0..2 {
        let got = alice
            .claim_key_packages_as("tel:+15550100001", &["tel:+447700900001"])
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].address, "tel:+447700900001");
        claimed.push(got[0].key_package.clone());
    }
    claimed.sort();
    let mut uploaded = kps.to_vec();
    uploaded.sort();
    assert_eq!(claimed, uploaded, "each package handed out once");
    assert!(
        alice
            .claim_key_packages_as("tel:+15550100001", &["tel:+447700900001"])
            .await
            .unwrap()
            .is_empty(),
        "no one-time packages left and no last resort"
    );
    // The requester must be the claimer itself.
    match alice
        .claim_key_packages_as("tel:+15550100002", &["tel:+447700900001"])
        .await
    {
        Err(ClientError::Api { status, code, .. }) => assert_eq!((status, code.as_str()), (400, "invalid_address")),
        other => panic!("{other:?}"),
    }

    // Residency: a route into a disallowed jurisdiction is refused; nothing stored or queued.
    let before = a.gw.stats().await;
    match alice
        .send(
            &[
                Recipient::address("tel:+15550100002"),
                Recipient::address("tel:+8613800000000"),
            ],
            framed_message(b"to-cn"),
            None,
            false,
        )
        .await
    {
        Err(ClientError::Api { status, code, .. }) => assert_eq!((status, code.as_str()), (451, "residency_policy")),
        other => panic!("{other:?}"),
    }
    assert_eq!(a.gw.stats().await, before);
    let store = a.gw.state().store();
    assert_eq!(store.outbox_depth("c").await.unwrap().0, 0);
    let audit = store.audit_log().await.unwrap();
    assert!(
        audit
            .iter()
            .any(|r| r.kind == "residency.refused" && r.detail == "peer=c jurisdiction=CN"),
        "{audit:?}"
    );
    assert!(
        !audit.iter().any(|r| r.detail.contains("8613800000000")),
        "no number in the audit log"
    );

    // Every acknowledged remote part left the outbox.
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.outbox_depth("b").await.unwrap().0 > 0 {
        assert!(Instant::now() < deadline, "outbox not drained");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // notify is idempotent per envelope id: a redelivery answers 201 and stores nothing.
    let b_addr = b.gw.interconnect_addr.unwrap();
    let body = serde_json::json!({
        "recipients": ["tel:+447700900001"],
        "message": base64_std(&framed_message(b"twice")),
        "urgent": false,
    })
    .to_string();
    let path = format!("/mimi/v1/notify/{}", "ab".repeat(16));
    for _ in 0..2 {
        let (status, _) = mtls(
            b_addr,
            &ca_b.cert,
            Some(&leaf_a),
            false,
            "POST",
            &path,
            Some(body.clone()),
        )
        .await
        .unwrap();
        assert_eq!(status, 201);
    }
    let page = bob.receive(0, 100, 0).await.unwrap();
    let twice = page
        .envelopes
        .iter()
        .filter(|e| e.message == framed_message(b"twice"))
        .count();
    assert_eq!(twice, 1, "stored once");
    // A number B does not serve is refused (no transit), as is a body that is not MLS.
    let transit = serde_json::json!({"recipients": ["tel:+15550100001"], "message": base64_std(&framed_message(b"x"))})
        .to_string();
    let (status, _) = mtls(
        b_addr,
        &ca_b.cert,
        Some(&leaf_a),
        false,
        "POST",
        &format!("/mimi/v1/notify/{}", "cd".repeat(16)),
        Some(transit),
    )
    .await
    .unwrap();
    assert_eq!(status, 421);
    let junk = serde_json::json!({"recipients": ["tel:+447700900001"], "message": "AAAA"}).to_string();
    let (status, _) = mtls(
        b_addr,
        &ca_b.cert,
        Some(&leaf_a),
        false,
        "POST",
        &format!("/mimi/v1/notify/{}", "ef".repeat(16)),
        Some(junk),
    )
    .await
    .unwrap();
    assert_eq!(status, 400);
    let (status, dir) = mtls(
        b_addr,
        &ca_b.cert,
        Some(&leaf_a),
        false,
        "GET",
        "/.well-known/mimi-protocol-directory",
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&dir).contains("carrier-b.test"));

    // No subscriber number crosses into storage on either side: outbox records are sealed,
    // B stores rids. (Bob's own number is in his KeyPackages' basic credentials, which is
    // MLS's doing, so the check uses Dave, who only receives.)
    let (dave, _) = b.gw.device("tel:+447700900002").await;
    let m4 = framed_message(b"to-dave");
    alice
        .send(&[Recipient::address("tel:+447700900002")], m4.clone(), None, false)
        .await
        .unwrap();
    assert_eq!(receive_all(&dave, 1).await, vec![m4]);
    for (gw, numbers) in [
        (
            &a.gw,
            &["447700900001", "447700900002", "15550100001", "15550100002"][..],
        ),
        (&b.gw, &["447700900002", "15550100001", "15550100002"][..]),
    ] {
        for number in numbers {
            let found = test_support::files_containing(&gw.data_dir, number.as_bytes());
            assert!(found.is_empty(), "{number} at rest in {found:?}");
        }
    }
    a.gw.stop().await;
    b.gw.stop().await;
}

fn base64_std(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// One HTTP/1.1 request over TLS to an interconnect listener, presenting `client` (or no
/// certificate), TLS 1.3 or (for the refusal test) TLS 1.2 only.
pub(crate) async fn mtls(
    addr: SocketAddr,
    server_ca: &Path,
    client: Option<&Leaf>,
    tls12_only: bool,
    method: &str,
    path: &str,
    body: Option<String>,
) -> Result<(u16, Bytes), String> {
    let (mut sender, conn) = connect(addr, server_ca, client, tls12_only).await?;
    let driver = tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .unwrap();
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    drop(sender);
    let _ = driver.await;
    Ok((status, body))
}

type Conn = hyper::client::conn::http1::Connection<
    TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    Full<Bytes>,
>;

pub(crate) async fn connect(
    addr: SocketAddr,
    server_ca: &Path,
    client: Option<&Leaf>,
    tls12_only: bool,
) -> Result<(hyper::client::conn::http1::SendRequest<Full<Bytes>>, Conn), String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(server_ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client {
        Some(l) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(&l.cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(&l.key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())
}

async fn failures(gw: &TestGateway, reason: &str) -> u64 {
    let text = admin(gw.admin_addr, "GET", "/metrics").await.unwrap();
    let needle = format!("interconnect_handshake_failures_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&needle))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap_or(0.0) as u64)
}

/// One plain HTTP/1.1 request to a gateway's admin listener: the raw response, or `None` if
/// the gateway is not answering.
pub(crate) async fn admin(addr: SocketAddr, method: &str, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    Some(out)
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
    let peer = |crls: Vec<PathBuf>| Peer {
        name: "a",
        domain: "carrier-a.test",
        port: 9,
        ca: &ca.cert,
        prefixes: &["+1555"],
        jurisdiction: "US",
        crls,
    };
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
    let revoke_all = ca.crl("revoke-good", &[1, 7], false);
    b.set_peers(&[peer(vec![revoke_all])]).await;
    let closed = tokio::time::timeout(Duration::from_secs(60), driver).await;
    assert!(closed.is_ok(), "the revoked peer's connection stayed open");
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
