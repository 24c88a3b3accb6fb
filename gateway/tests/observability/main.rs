//! The dashboard and the alert rules in `deploy/` against a real Prometheus: the `gateway`
//! binary (with push and an interconnect peer configured) and the push proxy run a short
//! load; Debian's `prometheus` scrapes both with `deploy/prometheus/rules.yml` loaded; then
//! every dashboard query, every recorded series and every alert's measured side must return
//! at least one series, and every rule must evaluate without error. A panel that queries a
//! metric nobody emits fails here.
//!
//! Its own test binary: the push proxy runs in this process, and its metrics recorder must be
//! the only one here (the `it` binary installs the gateway's).

#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, header};
use p256::pkcs8::EncodePrivateKey as _;
use relay_client::{Client, Protocol, Recipient, Trust};
use test_support::pki::RcgenCa;
use test_support::process::{free_port, spawn_gateway};
use test_support::push_sinks::PushSink;
use tokio::io::AsyncWriteExt as _;

const GATEWAY: &str = env!("CARGO_BIN_EXE_gateway");
const ALICE: &str = "tel:+15550300001";
const BOB: &str = "tel:+15550300002";
const ERIN: &str = "tel:+15550300003";
const REMOTE: &str = "tel:+16660300004";
const BOB_TOKEN: &str = "b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0";
const ERIN_TOKEN: &str = "e41ee41ee41ee41ee41ee41ee41ee41e";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A Prometheus server on a loopback port, stopped on drop.
struct Prometheus {
    child: Child,
    url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(dir: &Path, gateway_admin: u16, proxy_admin: u16) -> Self {
        let rules = root().join("deploy/prometheus/rules.yml");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules}\n\
                 scrape_configs:\n  - job_name: rcs-relay-gateway\n    static_configs:\n      - targets: [\"127.0.0.1:{gateway_admin}\"]\n\
                 \x20 - job_name: rcs-relay-push-proxy\n    static_configs:\n      - targets: [\"127.0.0.1:{proxy_admin}\"]\n",
                rules = rules.display()
            ),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting prometheus ({e}); install it: apt-get install prometheus"));
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// `GET path` with `query` form-encoded, as JSON (`None` until the server answers).
    fn get(&self, path: &str, query: Option<&str>) -> Option<serde_json::Value> {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "10", "-G"])
            .arg(format!("{}{path}", self.url));
        if let Some(q) = query {
            cmd.arg("--data-urlencode").arg(format!("query={q}"));
        }
        let out = cmd.output().expect("curl (apt-get install curl)");
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    /// The series `expr` returns now (an error names the query).
    fn series(&self, expr: &str) -> Result<usize, String> {
        let v = self.get("/api/v1/query", Some(expr)).ok_or("no answer")?;
        if v["status"] != "success" {
            return Err(format!("{expr}: {v}"));
        }
        Ok(v["data"]["result"].as_array().map_or(0, Vec::len))
    }
}

/// Every query of the dashboard.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root().join("deploy/grafana/rcs-relay.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push((
                format!("panel {:?}", panel["title"].as_str().unwrap()),
                target["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    out
}

/// An alert's measured side: its query without the final comparison with a constant
/// (`x > 0.01` → `x`). Prometheus reports queries normalised, constants folded or not.
fn measured_side(query: &str) -> String {
    for op in [" >= ", " <= ", " > ", " < "] {
        if let Some(i) = query.rfind(op) {
            let rhs = &query[i + op.len()..];
            if rhs.chars().all(|c| c.is_ascii_digit() || " .*+-e()".contains(c)) {
                return query[..i].trim().to_owned();
            }
        }
    }
    panic!("alert query {query:?} does not end in a comparison with a constant");
}

/// Every metric name a query mentions (so `a or b` cannot hide a missing `a`).
fn metric_names(query: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = query.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
        if word(bytes[i]) && (i == 0 || !word(bytes[i - 1])) {
            let end = (i..bytes.len()).find(|&j| !word(bytes[j])).unwrap_or(bytes.len());
            let w = &query[i..end];
            let metric = ["relay_", "push_", "interconnect_"].iter().any(|p| w.starts_with(p)) && !w.contains(':');
            if metric {
                names.push(w.to_owned());
            }
            i = end;
        } else {
            i += 1;
        }
    }
    names
}

/// Every rule's check: (what, query); and the rules' own health.
fn rule_queries(prom: &Prometheus) -> Result<Vec<(String, String)>, String> {
    let v = prom.get("/api/v1/rules", None).ok_or("no answer from /api/v1/rules")?;
    let mut out = Vec::new();
    for group in v["data"]["groups"].as_array().ok_or("no rule groups")? {
        for rule in group["rules"].as_array().unwrap() {
            let name = rule["name"].as_str().unwrap();
            if rule["health"] != "ok" {
                return Err(format!("rule {name}: health {} {}", rule["health"], rule["lastError"]));
            }
            let query = rule["query"].as_str().unwrap();
            match rule["type"].as_str() {
                Some("recording") => out.push((format!("recording rule {name}"), name.to_owned())),
                _ => out.push((format!("alert {name}"), measured_side(query))),
            }
        }
    }
    Ok(out)
}

fn push_proxy_config(dir: &Path, apns: &PushSink, apns_key: &p256::ecdsa::SigningKey) -> push_proxy::config::Config {
    let key_file = dir.join("apns.p8");
    std::fs::write(
        &key_file,
        apns_key.to_pkcs8_pem(p256::pkcs8::LineEnding::LF).unwrap().as_bytes(),
    )
    .unwrap();
    let path = dir.join("push-proxy.toml");
    std::fs::write(
        &path,
        format!(
            "data_dir = \"{data}\"\nlisten = \"127.0.0.1:0\"\nnotify_listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
             [delivery]\nca_file = \"{ca}\"\nbackoff_base_ms = 20\nmax_attempts = 2\n\
             [apns]\nbase_url = \"{url}\"\ntopic = \"net.example.rcs\"\nteam_id = \"TEAM123456\"\nkey_id = \"KEY1234567\"\nkey_file = \"{key}\"\n",
            data = dir.join("data").display(),
            ca = apns.ca().display(),
            url = apns.url(),
            key = key_file.display(),
        ),
    )
    .unwrap();
    push_proxy::config::Config::load(Some(&path)).unwrap()
}

async fn register_token(proxy_listen: std::net::SocketAddr, ca: &Path, token: &str) -> String {
    let c = Client::connect(
        &format!("https://localhost:{}", proxy_listen.port()),
        Trust::CaFile(ca.to_path_buf()),
        Protocol::Http2,
    )
    .unwrap();
    let body = serde_json::json!({"platform": "apns", "token": token});
    let resp = c
        .raw(
            Method::POST,
            "/v1/push/register",
            &[(header::CONTENT_TYPE, "application/json".into())],
            Bytes::from(body.to_string()),
        )
        .await
        .unwrap();
    assert_eq!(resp.status, 201, "{:?}", resp.body);
    let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    v["handle"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_and_alert_query_returns_a_series() {
    let dir = tempfile::tempdir().unwrap();

    // The push proxy (in this process) in front of a loopback APNs.
    let apns_key = p256::ecdsa::SigningKey::from(push_proxy::webpush::random_secret());
    let apns = PushSink::start_apns(&apns_key).await;
    apns.mark_dead(ERIN_TOKEN);
    let proxy_dir = dir.path().join("proxy");
    std::fs::create_dir_all(&proxy_dir).unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let proxy = push_proxy::server::start(push_proxy_config(&proxy_dir, &apns, &apns_key), shutdown.clone())
        .await
        .unwrap();
    let proxy_tls = proxy_dir.join("data/tls");

    // Our interconnect identity, and a peer whose address answers nothing.
    let ours = RcgenCa::new(&dir.path().join("pki-a"), "carrier-a");
    let theirs = RcgenCa::new(&dir.path().join("pki-b"), "carrier-b");
    let leaf = ours.issue("a", "carrier-a.example", 1, None);
    let peers = dir.path().join("peers.toml");
    std::fs::write(
        &peers,
        format!(
            "[[peer]]\nname = \"carrier-b\"\ndomain = \"carrier-b.example\"\nendpoint = \"https://localhost:{}\"\n\
             ca = \"{}\"\nprefixes = [\"+1666\"]\njurisdiction = \"US\"\n",
            free_port(),
            theirs.cert.display()
        ),
    )
    .unwrap();
    let toml = format!(
        "[storage]\ncheckpoint_secs = 1\nsweep_interval_secs = 1\n\
         [push]\nproxy_url = \"https://localhost:{notify}\"\nca = \"{tls}/dev-ca.pem\"\n\
         client_cert = \"{tls}/gateway-client.pem\"\nclient_key = \"{tls}/gateway-client-key.pem\"\n\
         [interconnect]\nlisten = \"127.0.0.1:{ic}\"\ndomain = \"carrier-a.example\"\njurisdiction = \"US\"\n\
         cert = \"{cert}\"\nkey = \"{key}\"\npeers_file = \"{peers}\"\nlocal_prefixes = [\"+1555\"]\n\
         allowed_jurisdictions = [\"US\"]\noutbox_ttl_secs = 2\nbackoff_base_ms = 50\nbackoff_cap_secs = 1\n",
        notify = proxy.notify_listen.port(),
        tls = proxy_tls.display(),
        ic = free_port(),
        cert = leaf.cert.display(),
        key = leaf.key.display(),
        peers = peers.display(),
    );
    let data = dir.path().join("gw");
    let log = dir.path().join("gateway.log");
    let gw = spawn_gateway(Path::new(GATEWAY), &data, &log, &[], &toml).await;
    let prom = Prometheus::start(dir.path(), gw.admin, proxy.admin_listen.port());

    // A short load that touches every subsystem the dashboard shows.
    let device = |address: &'static str| {
        let client = gw.client();
        let token = test_support::provision_token(&data, address, 600_000);
        async move {
            let reg = client.register(&token).await.unwrap();
            client.with_credential(reg.credential)
        }
    };
    let (alice, bob, erin) = (device(ALICE).await, device(BOB).await, device(ERIN).await);
    let proxy_ca = proxy_tls.join("dev-ca.pem");
    bob.set_push_handle(&register_token(proxy.listen, &proxy_ca, BOB_TOKEN).await)
        .await
        .unwrap();
    erin.set_push_handle(&register_token(proxy.listen, &proxy_ca, ERIN_TOKEN).await)
        .await
        .unwrap();
    // The provider refuses bob's next pushes (a push that fails after its retries).
    apns.script(&[(500, None); 4]);
    let live = tokio::spawn({
        let bob = bob.clone();
        async move { bob.receive(0, 1, 5).await }
    });
    for i in 0..200u32 {
        let to: &[Recipient] = match i % 4 {
            0 => &[Recipient::address(BOB)],
            1 => &[Recipient::address(ERIN)],
            2 => &[Recipient::address(REMOTE)],
            _ => &[Recipient::address(BOB), Recipient::address(ERIN)],
        };
        alice
            .send(to, test_support::framed_message(&i.to_be_bytes()), None, i % 10 == 0)
            .await
            .unwrap();
    }
    live.await.unwrap().unwrap();
    let page = bob.receive(0, 1000, 0).await.unwrap();
    bob.ack(&[], Some(page.next_cursor)).await.unwrap();
    // A TLS handshake that fails, and a certificate reload.
    let port: u16 = gw.url.rsplit(':').next().unwrap().parse().unwrap();
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    drop(tcp);
    let reload = test_support::admin_request(
        std::net::SocketAddr::from(([127, 0, 0, 1], gw.admin)),
        "POST",
        "/admin/tls/reload",
    )
    .await
    .unwrap();
    assert!(reload.starts_with("HTTP/1.1 204"), "{reload}");

    // Positive control: the check tells a missing metric from a present one.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut missing: Vec<String>;
    loop {
        missing = Vec::new();
        match rule_queries(&prom) {
            Ok(rules) => {
                for (what, expr) in dashboard_queries().into_iter().chain(rules) {
                    match prom.series(&expr) {
                        Ok(0) => missing.push(format!("{what}: {expr}")),
                        Ok(_) => {}
                        Err(e) => missing.push(format!("{what}: {e}")),
                    }
                    for name in metric_names(&expr) {
                        // A histogram is named by its series (`_bucket`, `_sum`, `_count`).
                        let selector = format!("{{__name__=~\"{name}|{name}_bucket|{name}_sum|{name}_count\"}}");
                        if let Ok(0) | Err(_) = prom.series(&selector) {
                            missing.push(format!("{what}: no series of {name}"));
                        }
                    }
                }
            }
            Err(e) => missing.push(e),
        }
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "queries with no series after 120 s (gateway log {}):\n{}",
            log.display(),
            missing.join("\n")
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(prom.series("relay_no_such_metric_total").unwrap(), 0);
    // Each listener's certificate is watched, and its notAfter is in the future.
    for listener in [
        "relay_cert_expiry_seconds{listener=\"client\"}",
        "relay_cert_expiry_seconds{listener=\"interconnect\"}",
        "push_cert_expiry_seconds{listener=\"device\"}",
    ] {
        assert_eq!(
            prom.series(&format!("{listener} - time() > 86400")),
            Ok(1),
            "{listener}"
        );
    }
    assert!(prom.series("relay_http_requests_total").unwrap() > 0);
    let queries: Vec<(String, String)> = dashboard_queries()
        .into_iter()
        .chain(rule_queries(&prom).unwrap())
        .collect();
    let mut names: Vec<String> = queries.iter().flat_map(|(_, q)| metric_names(q)).collect();
    names.sort();
    names.dedup();
    eprintln!(
        "{} dashboard and rule queries each returned a series; {} metrics named, each present",
        queries.len(),
        names.len()
    );
    shutdown.cancel();
    proxy.stopped().await;
}
