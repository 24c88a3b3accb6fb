//! Interconnect integration tests: two carriers (two gateways in this process) on loopback
//! peering over mutual TLS. One carrier's PKI is made with the `openssl` command line, the
//! other's with rcgen.
//!
//! - `delivery`: single and mixed recipient lists both ways, remote KeyPackage claims,
//!   residency refusals, idempotent notify, no transit, no number at rest.
//! - `mtls`: every refusal the listener promises, and revocation closing open connections.
//! - `reports`: delivery reports to the sender for refused and undeliverable remote parts.
//!
//! The fault test with gateway processes (`kill -9`, a cut and a slowed link) is in
//! `gateway/tests/it/interconnect_faults.rs`, next to the gateway binary it runs.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod delivery;
mod early_errors;
mod mtls;
mod outbox_keys;
mod reports;
mod rotation;
mod switches;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use interconnect::config::InterconnectConfig;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use test_support::TestGateway;
use test_support::pki::Leaf;

pub(crate) struct Carrier {
    pub gw: TestGateway,
    pub peers_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Carrier {
    pub(crate) async fn start(domain: &str, jurisdiction: &str, leaf: &Leaf, local: &[&str], allowed: &[&str]) -> Self {
        Self::start_with(domain, jurisdiction, leaf, local, allowed, |_| {}).await
    }

    /// Like [`Carrier::start`], with the interconnect configuration adjusted by `tweak`.
    pub(crate) async fn start_with(
        domain: &str,
        jurisdiction: &str,
        leaf: &Leaf,
        local: &[&str],
        allowed: &[&str],
        tweak: impl FnOnce(&mut InterconnectConfig),
    ) -> Self {
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
            max_connections: 64,
        };
        let mut cfg = cfg;
        tweak(&mut cfg);
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

/// Carriers A (`carrier-a.test`, US, serving `+1555`) and B (`carrier-b.test`, GB, serving
/// `+4477`), each with its own CA, peering with each other. `tweak_a` adjusts A's
/// interconnect configuration; `extra_a` are more peers of A — (name, domain, port,
/// prefixes, jurisdiction), checked against B's CA — for tests that need a peer that never
/// answers.
pub(crate) struct Pair {
    pub a: Carrier,
    pub b: Carrier,
    /// The CAs' files.
    _pki: tempfile::TempDir,
}

pub(crate) type ExtraPeer<'a> = (&'a str, &'a str, u16, &'a [&'a str], &'a str);

impl Pair {
    pub(crate) async fn start(tweak_a: impl FnOnce(&mut InterconnectConfig), extra_a: &[ExtraPeer<'_>]) -> Self {
        let pki = tempfile::tempdir().unwrap();
        let ca_a = test_support::pki::RcgenCa::new(&pki.path().join("a"), "carrier-a");
        let leaf_a = ca_a.issue("a", "carrier-a.test", 1, None);
        let ca_b = test_support::pki::RcgenCa::new(&pki.path().join("b"), "carrier-b");
        let leaf_b = ca_b.issue("b", "carrier-b.test", 1, None);
        let a = Carrier::start_with("carrier-a.test", "US", &leaf_a, &["+1555"], &[], tweak_a).await;
        let b = Carrier::start("carrier-b.test", "GB", &leaf_b, &["+4477"], &[]).await;
        let peer = |name, domain, port, ca, prefixes, jurisdiction| Peer {
            name,
            domain,
            port,
            ca,
            prefixes,
            jurisdiction,
            crls: vec![],
        };
        let mut peers_a = vec![peer(
            "b",
            "carrier-b.test",
            b.ic_port(),
            &ca_b.cert,
            &["+4477"][..],
            "GB",
        )];
        for &(name, domain, port, prefixes, jurisdiction) in extra_a {
            peers_a.push(peer(name, domain, port, &ca_b.cert, prefixes, jurisdiction));
        }
        a.set_peers(&peers_a).await;
        b.set_peers(&[peer(
            "a",
            "carrier-a.test",
            a.ic_port(),
            &ca_a.cert,
            &["+1555"][..],
            "US",
        )])
        .await;
        Self { a, b, _pki: pki }
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

pub(crate) fn peers_toml(peers: &[Peer<'_>]) -> String {
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

pub(crate) async fn receive_all(c: &relay_client::Client, want: usize) -> Vec<Bytes> {
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

pub(crate) fn base64_std(b: &[u8]) -> String {
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

pub(crate) async fn failures(gw: &TestGateway, reason: &str) -> u64 {
    let text = admin(gw.admin_addr, "GET", "/metrics").await.unwrap();
    let needle = format!("interconnect_handshake_failures_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&needle))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap_or(0.0) as u64)
}

pub(crate) use test_support::admin_request as admin;
