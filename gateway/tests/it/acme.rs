//! ACME against a real CA: pebble (Debian `pebble`), started here, validating `tls-alpn-01`
//! on the gateway's own client listener (127.0.0.1:5001) and `http-01` on 127.0.0.1:5002.
//! One pebble at a time (fixed ports): [`Pebble::start`] holds a lock.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay_client::{Client, ConnectOptions, Protocol, Recipient, Trust};
use relay_net::acme::{AcmeConfig, ChallengeKind};
use rustls::pki_types::CertificateDer;
use storage::prelude::*;
use test_support::TestGateway;
use test_support::pebble::{self, Pebble};

const GATEWAY: &str = env!("CARGO_BIN_EXE_gateway");
const DOMAIN: &str = "gateway.relay.test";
const ALICE: &str = "tel:+15550107001";
const BOB: &str = "tel:+15550107002";

fn acme_config(pebble: &Pebble, challenge: ChallengeKind) -> AcmeConfig {
    let mut text = format!(
        "directory = \"{}\"\ndomains = [\"{DOMAIN}\"]\nca_file = \"{}\"\nretry_min_secs = 1\nretry_max_secs = 2\ntimeout_secs = 30\n",
        pebble::DIRECTORY,
        pebble.listener_ca().display()
    );
    if challenge == ChallengeKind::Http01 {
        text.push_str(&format!(
            "challenge = \"http-01\"\nhttp01_listen = \"127.0.0.1:{}\"\n",
            pebble::HTTP01_PORT
        ));
    }
    toml::from_str(&text).unwrap()
}

/// A client of `gw` that trusts only `roots` and reaches `DOMAIN` at the gateway's address.
fn client(gw: &TestGateway, roots: &[CertificateDer<'static>], protocol: Protocol) -> Client {
    let url = format!("https://{DOMAIN}:{}", gw.addr.port());
    let options = ConnectOptions {
        resolve: Some(gw.addr),
        ..ConnectOptions::default()
    };
    Client::connect_with(&url, Trust::Roots(roots.to_vec()), protocol, options).unwrap()
}

async fn device(gw: &TestGateway, client: &Client, address: &str) -> Client {
    let reg = client.register(&gw.provision(address)).await.unwrap();
    client.with_credential(reg.credential)
}

/// The serial (lowercase hex) of the certificate a new TLS connection to `addr` gets.
async fn served_serial(addr: SocketAddr) -> String {
    let mut tls = rustls::ClientConfig::builder_with_provider(relay_net::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerify))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(DOMAIN).unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .unwrap();
    let leaf = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
    relay_net::acme::cert_info(&leaf).unwrap().serial
}

/// One series of this process's metrics (gateways in one test process share the recorder;
/// pebble tests run one at a time, so deltas are this test's).
async fn metric(_gw: &TestGateway, series: &str) -> f64 {
    global_metric(series)
}

fn global_metric(series: &str) -> f64 {
    gateway::telemetry::prometheus()
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// `gateway acme …` against the running gateway's admin listener: (exit code, stdout, stderr).
fn cli(gw: &TestGateway, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(GATEWAY)
        .arg("--admin-listen")
        .arg(gw.admin_addr.to_string())
        .arg("--data-dir")
        .arg(&gw.data_dir)
        .arg("acme")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

async fn audit_kinds(gw: &TestGateway) -> Vec<(String, String)> {
    let log = gw.state().store().audit_log().await.unwrap();
    log.into_iter()
        .filter(|r| r.kind.starts_with("acme."))
        .map(|r| (r.kind, r.detail))
        .collect()
}

/// From nothing to a certificate, then every operation on it: HTTP/2 and HTTP/3 clients
/// trusting only pebble's root; forced renewal under an open long-poll; revocation and
/// reissue with a new key; pebble gone (old certificate keeps serving, failures counted,
/// background retries) and back (renewed, with a new account).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_issuance_renewal_revocation_and_outage() {
    let mut pebble = Pebble::start().await;
    let acme = acme_config(&pebble, ChallengeKind::TlsAlpn01);
    let renewals = r#"relay_acme_renewals_total{listener="client"}"#;
    let renewed_before = global_metric(renewals);
    let started = Instant::now();
    let gw = TestGateway::start_with(|c| {
        c.listen = format!("127.0.0.1:{}", pebble::TLS_ALPN_PORT).parse().unwrap();
        c.acme = Some(acme);
    })
    .await;
    eprintln!(
        "fresh start with an ACME certificate: {:.2} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        !gw.data_dir.join("tls/dev-cert.pem").exists(),
        "no development certificate with [acme]"
    );
    let key_file = gw.data_dir.join("acme/client/key.pem");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(gw.data_dir.join("keys/acme-account.json"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    // HTTP/2 and HTTP/3 clients that trust only pebble's root connect and send.
    let roots = pebble.issuing_roots();
    let alice = device(&gw, &client(&gw, &roots, Protocol::Http2), ALICE).await;
    let bob_h3 = device(&gw, &client(&gw, &roots, Protocol::Http3), BOB).await;
    let hello = test_support::framed_message(b"over an ACME certificate");
    alice
        .send(&[Recipient::address(BOB)], hello.clone(), None, false)
        .await
        .unwrap();
    let page = bob_h3.receive(0, 10, 5).await.unwrap();
    assert_eq!(page.envelopes.len(), 1);
    assert_eq!(page.envelopes[0].message, hello);
    let after = page.envelopes[0].seq;
    // A client trusting the development CA instead does not.
    let dev_ca = Client::connect_with(
        &format!("https://{DOMAIN}:{}", gw.addr.port()),
        Trust::Roots(vec![rcgen_root()]),
        Protocol::Http2,
        ConnectOptions {
            resolve: Some(gw.addr),
            ..ConnectOptions::default()
        },
    )
    .unwrap();
    assert!(
        dev_ca.healthz().await.is_err(),
        "only pebble's root makes the certificate trusted"
    );

    let first = served_serial(gw.addr).await;
    let (code, out, err) = cli(&gw, &["status"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["serial"], first.as_str());
    assert_eq!(metric(&gw, renewals).await, renewed_before + 1.0);

    // Forced renewal while a long-poll opened before it waits: the serial changes, the
    // long-poll completes normally with the next envelope.
    let bob_h2 = device(&gw, &client(&gw, &roots, Protocol::Http2), BOB).await;
    let waiting = tokio::spawn(async move { bob_h2.receive(after, 10, 30).await });
    // And one over the HTTP/3 connection opened at the start: a dropped QUIC connection
    // would fail it rather than reconnect.
    let bob_h3_poll = bob_h3.clone();
    let waiting_h3 = tokio::spawn(async move { bob_h3_poll.receive(after, 10, 30).await });
    test_support::eventually("the long-polls", Duration::from_secs(10), async || {
        gw.state().store().watchers().len() >= 2
    })
    .await;
    let renewing = Instant::now();
    let (code, out, err) = cli(&gw, &["renew", "--now"]);
    assert_eq!(code, 0, "renew --now: {out}{err}");
    eprintln!("gateway acme renew --now: {:.2} s", renewing.elapsed().as_secs_f64());
    let second = served_serial(gw.addr).await;
    assert_ne!(second, first, "forced renewal serves a new certificate");
    assert_eq!(json(&out)["serial"], second.as_str());
    let during = test_support::framed_message(b"after the renewal");
    alice
        .send(&[Recipient::address(BOB)], during.clone(), None, false)
        .await
        .unwrap();
    let page = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the long-poll ended")
        .unwrap()
        .expect("the long-poll opened before the renewal completed normally");
    assert_eq!(page.envelopes.len(), 1);
    assert_eq!(page.envelopes[0].message, during);
    let page = tokio::time::timeout(Duration::from_secs(20), waiting_h3)
        .await
        .expect("the HTTP/3 long-poll ended")
        .unwrap()
        .expect("the HTTP/3 long-poll opened before the renewal completed normally");
    assert_eq!(page.envelopes[0].message, during);
    assert_eq!(metric(&gw, renewals).await, renewed_before + 2.0);
    // `renew` without `--now` changes nothing and says why.
    let (code, _, err) = cli(&gw, &["renew"]);
    assert_eq!(code, 64);
    assert!(err.contains("--now"), "{err}");

    // Revocation: pebble reports the old certificate revoked; a new one (new key) is served.
    let key_before = std::fs::read(&key_file).unwrap();
    assert_eq!(pebble.cert_status(&second), "Valid");
    let (code, out, err) = cli(&gw, &["revoke", "--reason", "keyCompromise"]);
    assert_eq!(code, 0, "revoke: {out}{err}");
    let answer = json(&out);
    assert_eq!(answer["revoked"], second.as_str());
    assert_eq!(pebble.cert_status(&second), "Revoked");
    let third = served_serial(gw.addr).await;
    assert_ne!(third, second);
    assert_eq!(answer["serial"], third.as_str());
    assert_eq!(pebble.cert_status(&third), "Valid");
    assert_ne!(std::fs::read(&key_file).unwrap(), key_before, "reissued with a new key");
    alice.healthz().await.unwrap();
    let (code, _, err) = cli(&gw, &["revoke", "--reason", "becauseISaidSo"]);
    assert_eq!(code, 2, "an unknown reason is a usage error: {err}");
    assert_eq!(served_serial(gw.addr).await, third);

    // Both operations are in the audit log.
    let audit = audit_kinds(&gw).await;
    assert!(
        audit
            .iter()
            .any(|(k, d)| k == "acme.renew" && d.contains(&format!("serial={second}"))),
        "{audit:?}"
    );
    assert!(
        audit.iter().any(|(k, d)| k == "acme.revoke"
            && d.contains("reason=keyCompromise")
            && d.contains(&format!("revoked={second}"))
            && d.contains(&format!("serial={third}"))),
        "{audit:?}"
    );

    // Pebble stopped: the renewal fails, is counted and audited, and retried in the
    // background; the old certificate keeps serving.
    pebble.stop();
    let failures = r#"relay_acme_failures_total{listener="client",reason="unreachable"}"#;
    let failures_before = metric(&gw, failures).await;
    let (code, out, _) = cli(&gw, &["renew", "--now"]);
    assert_ne!(code, 0);
    assert_eq!(json(&out)["error"], "acme_failed", "{out}");
    assert!(metric(&gw, failures).await > failures_before);
    let counted = metric(&gw, failures).await;
    test_support::eventually("a background retry", Duration::from_secs(20), async || {
        metric(&gw, failures).await > counted
    })
    .await;
    assert_eq!(served_serial(gw.addr).await, third, "the old certificate keeps serving");
    let fresh = client(&gw, &roots, Protocol::Http2);
    fresh.healthz().await.unwrap();
    let (code, out, _) = cli(&gw, &["status"]);
    assert_eq!(code, 0);
    assert!(json(&out)["failures"].as_u64().unwrap() >= 2, "{out}");
    assert!(
        audit_kinds(&gw)
            .await
            .iter()
            .any(|(k, d)| k == "acme.renew" && d.contains("result=failed stage=unreachable"))
    );

    // Pebble back (a new CA: new roots, no memory of our account): the background retry
    // renews without anyone asking.
    pebble.restart().await;
    test_support::eventually(
        "the renewal after pebble returned",
        Duration::from_secs(30),
        async || served_serial(gw.addr).await != third,
    )
    .await;
    let new_roots = pebble.issuing_roots();
    assert_ne!(new_roots, roots);
    let after_outage = client(&gw, &new_roots, Protocol::Http3);
    after_outage.healthz().await.unwrap();
    assert_eq!(json(&cli(&gw, &["status"]).1)["failures"], 0);

    // Every metric the ACME alert rules name is exported by this gateway.
    let rules = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/prometheus/acme-rules.yml"
    ))
    .unwrap();
    let rendered = gateway::telemetry::prometheus().render();
    let mut named = 0;
    for line in rules.lines().filter_map(|l| l.trim().strip_prefix("expr:")) {
        for name in line
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("relay_") || w.starts_with("push_"))
        {
            named += 1;
            assert!(
                rendered.contains(&format!("\n{name}{{")),
                "acme-rules.yml names {name}, which is not exported"
            );
        }
    }
    assert!(named > 0, "the rules name metrics");
    gw.stop().await;
}

/// `http-01` on its own listener, for operators who cannot route `acme-tls/1` to the
/// gateway (a TLS-terminating balancer in front of port 443).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_issuance() {
    let pebble = Pebble::start().await;
    let acme = acme_config(&pebble, ChallengeKind::Http01);
    let gw = TestGateway::start_with(|c| c.acme = Some(acme)).await;
    let roots = pebble.issuing_roots();
    let alice = device(&gw, &client(&gw, &roots, Protocol::Http2), ALICE).await;
    let bob = device(&gw, &client(&gw, &roots, Protocol::Http3), BOB).await;
    let m = test_support::framed_message(b"http-01");
    alice
        .send(&[Recipient::address(BOB)], m.clone(), None, false)
        .await
        .unwrap();
    assert_eq!(bob.receive(0, 10, 5).await.unwrap().envelopes[0].message, m);
    // The challenge listener answers nothing but open challenges.
    let stray = test_support::admin_request(
        format!("127.0.0.1:{}", pebble::HTTP01_PORT).parse().unwrap(),
        "GET",
        "/.well-known/acme-challenge/unknown",
    )
    .await
    .unwrap();
    assert!(stray.starts_with("HTTP/1.1 404"), "{stray}");
    gw.stop().await;
}

/// Configurations that cannot work stop the binary with a message and a non-zero status.
#[test]
fn bad_acme_configuration_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, acme: &str| {
        let config = dir.path().join(format!("{name}.toml"));
        std::fs::write(&config, format!("[acme]\n{acme}")).unwrap();
        let out = Command::new(GATEWAY)
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.path().join(name))
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    // Nothing listens on port 9 of loopback: the directory is unreachable.
    let (code, err) = run(
        "unreachable",
        "directory = \"https://127.0.0.1:9/dir\"\ndomains = [\"gateway.relay.test\"]\n",
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("no certificate for the client listener") && err.contains("https://127.0.0.1:9/dir"),
        "{err}"
    );
    let (code, err) = run("no-domains", "directory = \"https://127.0.0.1:9/dir\"\n");
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("acme.domains"), "{err}");
    let (code, err) = run(
        "dns-01",
        "directory = \"https://127.0.0.1:9/dir\"\ndomains = [\"gateway.relay.test\"]\nchallenge = \"dns-01\"\n",
    );
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("unknown variant `dns-01`"), "{err}");
    let (code, err) = run(
        "http01-without-listener",
        "directory = \"https://127.0.0.1:9/dir\"\ndomains = [\"gateway.relay.test\"]\nchallenge = \"http-01\"\n",
    );
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("http01_listen"), "{err}");
    let config = dir.path().join("both.toml");
    std::fs::write(
        &config,
        "[tls]\ncert = \"/nonexistent/c.pem\"\nkey = \"/nonexistent/k.pem\"\n[acme]\ndirectory = \"https://127.0.0.1:9/dir\"\ndomains = [\"gateway.relay.test\"]\n",
    )
    .unwrap();
    let out = Command::new(GATEWAY).arg("--config").arg(&config).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("exclude each other"));
    // Nothing was created for a refused configuration.
    assert!(!Path::new(&dir.path().join("no-domains")).exists());
}

/// The development CA of a throwaway gateway directory (a root pebble never signed under).
fn rcgen_root() -> CertificateDer<'static> {
    let dir = tempfile::tempdir().unwrap();
    gateway::tls::ensure_dev_certificate(dir.path(), &[]).unwrap();
    relay_net::pem::load_certs(&dir.path().join("dev-ca.pem"))
        .unwrap()
        .remove(0)
}

#[derive(Debug)]
struct NoVerify;

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.3 only".into()))
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        relay_net::tls::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The push proxy's device listener gets its certificate the same way: from nothing at
/// start, renewed and revoked through its admin listener. The client is `curl` (HTTP/2),
/// trusting only pebble's root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_proxy_device_listener() {
    // The gateway's recorder is the process's (as in every test here), so the proxy's
    // gauges are read from it.
    gateway::telemetry::prometheus();
    let pebble = Pebble::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = push_proxy::config::Config {
        data_dir: dir.path().join("proxy"),
        listen: format!("127.0.0.1:{}", pebble::TLS_ALPN_PORT).parse().unwrap(),
        notify_listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        ..push_proxy::config::Config::default()
    };
    config.acme = Some(acme_config(&pebble, ChallengeKind::TlsAlpn01));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let proxy = push_proxy::server::start(config.validate().unwrap(), shutdown.clone())
        .await
        .unwrap();
    let roots_file = dir.path().join("pebble-root.pem");
    let root = &pebble.issuing_roots()[0];
    std::fs::write(&roots_file, pem("CERTIFICATE", root)).unwrap();
    let curl = |path: &str| {
        let out = Command::new("curl")
            .args(["-sS", "--http2", "--max-time", "10", "--cacert"])
            .arg(&roots_file)
            .arg("--resolve")
            .arg(format!("{DOMAIN}:{}:127.0.0.1", pebble::TLS_ALPN_PORT))
            .arg(format!("https://{DOMAIN}:{}{path}", pebble::TLS_ALPN_PORT))
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    assert_eq!(curl("/healthz"), (true, "ok".to_owned()));
    let first = served_serial(proxy.listen).await;
    let admin = |method: &'static str, path: &'static str| {
        let addr = proxy.admin_listen;
        async move { test_support::admin_request(addr, method, path).await.unwrap() }
    };
    let renewed = admin("POST", "/admin/acme/renew").await;
    assert!(renewed.starts_with("HTTP/1.1 200"), "{renewed}");
    let second = served_serial(proxy.listen).await;
    assert_ne!(second, first);
    let revoked = admin("POST", "/admin/acme/revoke?reason=keyCompromise").await;
    assert!(revoked.starts_with("HTTP/1.1 200"), "{revoked}");
    assert_eq!(pebble.cert_status(&second), "Revoked");
    assert_ne!(served_serial(proxy.listen).await, second);
    assert_eq!(curl("/healthz"), (true, "ok".to_owned()));
    assert!(
        admin("POST", "/admin/acme/revoke?reason=whim")
            .await
            .starts_with("HTTP/1.1 400")
    );
    let expiry = global_metric(r#"push_cert_expiry_seconds{listener="device"}"#);
    assert!(
        expiry > relay_net::clock::unix_secs() as f64,
        "expiry gauge set: {expiry}"
    );
    shutdown.cancel();
    proxy.stopped().await;
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
