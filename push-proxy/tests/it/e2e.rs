//! End to end: a real gateway, the real `push-proxy` binary (its logs captured), and loopback
//! APNs and Web Push endpoints that verify what real providers verify.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, header};
use p256::pkcs8::EncodePrivateKey as _;
use push_proxy::webpush;
use relay_client::{Client, Protocol, Recipient, Trust};
use relay_core::push::Pointer;
use storage::prelude::*;
use test_support::push_sinks::{PushSink, SinkKind};
use test_support::{TestGateway, framed_message};

pub(crate) struct ProxyProcess {
    child: Child,
    dir: tempfile::TempDir,
    listen: String,
    notify_listen: String,
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ProxyProcess {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("proxy.log")).unwrap_or_default()
    }

    pub(crate) fn tls(&self) -> PathBuf {
        self.dir.path().join("data/tls")
    }
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!("{name}="))? + name.len() + 1;
    line[start..].split_whitespace().next()
}

/// Starts the binary with `extra` TOML appended; waits for its "ready" line.
pub(crate) fn start_proxy(
    apns: &PushSink,
    apns_key: &p256::ecdsa::SigningKey,
    web: &PushSink,
    fcm: &PushSink,
    fcm_key_pem: &str,
) -> ProxyProcess {
    let dir = tempfile::tempdir().expect("temp dir");
    let sa = test_support::push_sinks::write_service_account(
        dir.path(),
        fcm,
        fcm_key_pem,
        "proj",
        "relay@proj.iam.gserviceaccount.com",
    );
    let key_file = dir.path().join("apns.p8");
    std::fs::write(
        &key_file,
        apns_key
            .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
            .expect("pkcs8")
            .as_bytes(),
    )
    .expect("write key");
    // One bundle trusting both loopback providers.
    let mut bundle = std::fs::read_to_string(apns.ca()).expect("ca");
    bundle.push_str(&std::fs::read_to_string(web.ca()).expect("ca"));
    bundle.push_str(&std::fs::read_to_string(fcm.ca()).expect("ca"));
    std::fs::write(dir.path().join("providers-ca.pem"), bundle).expect("bundle");
    let config = format!(
        r#"data_dir = "{data}"
listen = "127.0.0.1:0"
notify_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
[registration]
per_ip_per_second = 1
per_ip_burst = 40
[delivery]
ca_file = "{ca}"
backoff_base_ms = 100
max_attempts = 4
[apns]
base_url = "{apns_url}"
topic = "net.example.rcs"
team_id = "TEAM123456"
key_id = "KEY1234567"
key_file = "{key}"
[fcm]
base_url = "{fcm_url}"
service_account_file = "{sa}"
[webpush]
subject = "mailto:push-ops@example.net"
allowed_hosts = ["localhost"]
"#,
        data = dir.path().join("data").display(),
        ca = dir.path().join("providers-ca.pem").display(),
        apns_url = apns.url(),
        key = key_file.display(),
        fcm_url = fcm.url(),
        sa = sa.display(),
    );
    std::fs::write(dir.path().join("proxy.toml"), config).expect("config");
    let log = std::fs::File::create(dir.path().join("proxy.log")).expect("log");
    let child = Command::new(env!("CARGO_BIN_EXE_push-proxy"))
        .arg("--config")
        .arg(dir.path().join("proxy.toml"))
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawning push-proxy");
    let mut p = ProxyProcess {
        child,
        dir,
        listen: String::new(),
        notify_listen: String::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = p.log();
        if let Some(line) = log.lines().find(|l| l.contains("push proxy ready")) {
            p.listen = field(line, "listen").expect("listen").to_owned();
            p.notify_listen = field(line, "notify_listen").expect("notify_listen").to_owned();
            return p;
        }
        assert!(p.child.try_wait().expect("wait").is_none(), "push-proxy exited:\n{log}");
        assert!(Instant::now() < deadline, "push-proxy not ready:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn register_raw(proxy: &ProxyProcess, body: serde_json::Value) -> relay_client::RawResponse {
    let port = proxy.listen.rsplit(':').next().expect("port");
    let c = Client::connect(
        &format!("https://localhost:{port}"),
        Trust::CaFile(proxy.tls().join("dev-ca.pem")),
        Protocol::Http2,
    )
    .expect("client");
    c.raw(
        Method::POST,
        "/v1/push/register",
        &[(header::CONTENT_TYPE, "application/json".into())],
        Bytes::from(body.to_string()),
    )
    .await
    .expect("register")
}

async fn register_token(proxy: &ProxyProcess, body: serde_json::Value) -> String {
    let port = proxy.listen.rsplit(':').next().expect("port");
    let c = Client::connect(
        &format!("https://localhost:{port}"),
        Trust::CaFile(proxy.tls().join("dev-ca.pem")),
        Protocol::Http2,
    )
    .expect("client");
    let resp = c
        .raw(
            Method::POST,
            "/v1/push/register",
            &[(header::CONTENT_TYPE, "application/json".into())],
            Bytes::from(body.to_string()),
        )
        .await
        .expect("register");
    assert_eq!(resp.status, 201, "{:?}", resp.body);
    let v: serde_json::Value = serde_json::from_slice(&resp.body).expect("json");
    v["handle"].as_str().expect("handle").to_owned()
}

/// A device of `address` whose push handle, from registering `registration` with the proxy,
/// is stored at the gateway: (client, device id, handle).
pub(crate) async fn pushable(
    gw: &TestGateway,
    proxy: &ProxyProcess,
    address: &str,
    registration: serde_json::Value,
) -> (Client, u32, String) {
    let (client, device) = gw.device(address).await;
    let handle = register_token(proxy, registration).await;
    client.set_push_handle(&handle).await.expect("set handle");
    (client, device, handle)
}

/// One message from `from` to `address`.
async fn send_to(from: &Client, address: &str, tag: &[u8], urgent: bool) {
    from.send(&[Recipient::address(address)], framed_message(tag), None, urgent)
        .await
        .expect("send");
}

pub(crate) async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) fn pushes_to(sink: &PushSink, suffix: &str) -> Vec<test_support::push_sinks::Recorded> {
    sink.pushes().into_iter().filter(|p| p.path.ends_with(suffix)).collect()
}

const BOB_TOKEN: &str = "b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0";
const CAROL_TOKEN: &str = "ca401ca401ca401ca401ca401ca401ca";
const ERIN_TOKEN: &str = "e41ee41ee41ee41ee41ee41ee41ee41e";
const DAVE_TOKEN: &str = "da7eda7eda7eda7eda7eda7eda7eda7e";
const FCM_TOKEN: &str = "fcm:APA91bGinaGinaGina";
const HANK_TOKEN: &str = "4a4b4a4b4a4b4a4b4a4b4a4b4a4b4a4b";

/// Loopback APNs, Web Push and FCM endpoints, and the push proxy in front of them.
pub(crate) struct Providers {
    pub(crate) apns: PushSink,
    pub(crate) web: PushSink,
    pub(crate) fcm: PushSink,
    /// The Web Push user agent's key.
    pub(crate) ua: p256::SecretKey,
    pub(crate) proxy: ProxyProcess,
    _keys: tempfile::TempDir,
}

pub(crate) async fn providers() -> Providers {
    let apns_key = p256::ecdsa::SigningKey::from(webpush::random_secret());
    let apns = PushSink::start_apns(&apns_key).await;
    let ua = webpush::random_secret();
    let web = PushSink::start(SinkKind::WebPush {
        ua_secret: ua.clone(),
        auth: [9; 16],
    })
    .await;
    let keys = tempfile::tempdir().expect("temp dir");
    let (fcm_key, fcm_public) = test_support::push_sinks::rsa_key(keys.path());
    let fcm = PushSink::start(SinkKind::Fcm {
        rsa_public_der: fcm_public,
        client_email: "relay@proj.iam.gserviceaccount.com".into(),
        project_id: "proj".into(),
    })
    .await;
    let proxy = start_proxy(&apns, &apns_key, &web, &fcm, &fcm_key);
    Providers {
        apns,
        web,
        fcm,
        ua,
        proxy,
        _keys: keys,
    }
}

impl ProxyProcess {
    /// The notify listener, by the name its certificate carries.
    fn notify_url(&self) -> String {
        format!(
            "https://localhost:{}",
            self.notify_listen.rsplit(':').next().expect("port")
        )
    }

    /// Points a gateway's `[push]` at this proxy's notify listener, with its client certificate.
    pub(crate) fn configure(&self, c: &mut gateway::Config) {
        let tls = self.tls();
        c.push.proxy_url = Some(self.notify_url());
        c.push.ca = Some(tls.join("dev-ca.pem"));
        c.push.client_cert = Some(tls.join("gateway-client.pem"));
        c.push.client_key = Some(tls.join("gateway-client-key.pem"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pointer_pushes_through_gateway_proxy_and_providers() {
    let Providers {
        apns,
        web,
        fcm,
        ua,
        proxy,
        ..
    } = providers().await;
    let gw = TestGateway::start_with(|c| {
        proxy.configure(c);
        c.push.disconnect_delay_secs = 1;
    })
    .await;

    // The notify listener refuses clients without a gateway certificate.
    let anonymous = Client::connect(
        &proxy.notify_url(),
        Trust::CaFile(proxy.tls().join("dev-ca.pem")),
        Protocol::Http2,
    )
    .expect("client");
    let refused = anonymous
        .raw(
            Method::POST,
            "/v1/notify",
            &[(header::CONTENT_TYPE, "application/json".into())],
            Bytes::from_static(b"{\"notifications\":[]}"),
        )
        .await;
    assert!(refused.is_err(), "notify without a client certificate: {refused:?}");

    let (alice, _) = gw.device("tel:+15550100001").await;
    let (bob, _, bob_handle) = pushable(
        &gw,
        &proxy,
        "tel:+15550100002",
        serde_json::json!({"platform": "apns", "token": BOB_TOKEN}),
    )
    .await;
    assert!(!bob_handle.contains(BOB_TOKEN), "the handle is sealed");
    let to_bob = [Recipient::address("tel:+15550100002")];

    // Offline device: exactly one push, carrying only the pointer; the device then fetches.
    alice
        .send(&to_bob, framed_message(b"one"), None, false)
        .await
        .expect("send");
    wait_for("bob's first push", || pushes_to(&apns, BOB_TOKEN).len() == 1).await;
    let first = pushes_to(&apns, BOB_TOKEN).remove(0);
    let body: serde_json::Value = serde_json::from_slice(&first.payload).expect("json");
    let obj = body.as_object().expect("object");
    assert_eq!(obj.keys().collect::<Vec<_>>(), ["aps", "p"], "only aps and the pointer");
    assert_eq!(body["aps"], serde_json::json!({"content-available": 1}));
    assert!(Pointer::parse(body["p"].as_str().expect("pointer")).is_some());
    assert_eq!(first.headers["apns-push-type"], "background");
    let page = bob.receive(0, 10, 0).await.expect("fetch");
    assert_eq!(page.envelopes.len(), 1);

    // Coalesced within the window; urgent bypasses it.
    alice
        .send(&to_bob, framed_message(b"two"), None, false)
        .await
        .expect("send");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(pushes_to(&apns, BOB_TOKEN).len(), 1, "coalesced");
    alice
        .send(&to_bob, framed_message(b"three"), None, true)
        .await
        .expect("send");
    wait_for("bob's urgent push", || pushes_to(&apns, BOB_TOKEN).len() == 2).await;
    let urgent = pushes_to(&apns, BOB_TOKEN).remove(1);
    assert_eq!(urgent.headers["apns-priority"], "10");
    assert_ne!(urgent.payload, first.payload, "a fresh pointer per push");

    // A live receiver is not pushed; when it leaves with envelopes pending, one delayed push.
    let (carol, _, _) = pushable(
        &gw,
        &proxy,
        "tel:+15550100003",
        serde_json::json!({"platform": "apns", "token": CAROL_TOKEN}),
    )
    .await;
    let poll = tokio::spawn({
        let carol = carol.clone();
        async move { carol.receive(0, 10, 10).await }
    });
    // The long-poll is held (the store knows carol is watching) before the send.
    wait_for("carol's long-poll", || !gw.state().store().watchers().is_empty()).await;
    let left_at = Instant::now();
    send_to(&alice, "tel:+15550100003", b"live", false).await;
    let page = poll.await.expect("join").expect("long-poll");
    assert_eq!(page.envelopes.len(), 1, "woken live (and not acknowledged)");
    assert!(pushes_to(&apns, CAROL_TOKEN).is_empty(), "no push to a live receiver");
    wait_for("carol's delayed push", || pushes_to(&apns, CAROL_TOKEN).len() == 1).await;
    assert!(pushes_to(&apns, CAROL_TOKEN)[0].at.duration_since(left_at) >= Duration::from_secs(1));

    // 503 with Retry-After is retried after the delay.
    let _dave = pushable(
        &gw,
        &proxy,
        "tel:+15550100004",
        serde_json::json!({"platform": "apns", "token": DAVE_TOKEN}),
    )
    .await;
    apns.script(&[(503, Some(1))]);
    send_to(&alice, "tel:+15550100004", b"retry", false).await;
    wait_for("dave's retried push", || pushes_to(&apns, DAVE_TOKEN).len() == 2).await;
    let d = pushes_to(&apns, DAVE_TOKEN);
    assert_eq!((d[0].status, d[1].status), (503, 200));
    assert!(d[1].at.duration_since(d[0].at) >= Duration::from_secs(1));

    // A dead token: the gateway drops the handle.
    let (_, erin_dev, _) = pushable(
        &gw,
        &proxy,
        "tel:+15550100005",
        serde_json::json!({"platform": "apns", "token": ERIN_TOKEN}),
    )
    .await;
    apns.mark_dead(ERIN_TOKEN);
    send_to(&alice, "tel:+15550100005", b"dead", false).await;
    let erin_rid = gw.rid("tel:+15550100005");
    let store = gw.state().store().clone();
    let deadline = Instant::now() + Duration::from_secs(15);
    while store
        .push_handle(erin_rid, relay_core::DeviceId(erin_dev))
        .await
        .expect("read")
        .is_some()
    {
        assert!(Instant::now() < deadline, "dead handle was not dropped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(pushes_to(&apns, ERIN_TOKEN).len(), 1);

    // Web Push: the decrypted payload is exactly the pointer, at a constant size.
    let (frank, _) = gw.device("tel:+15550100006").await;
    let web_handle = register_token(
        &proxy,
        serde_json::json!({
            "platform": "webpush",
            "endpoint": format!("{}/push/frank", web.url()),
            "p256dh": push_proxy::providers::b64(&webpush::public_bytes(&ua.public_key())),
            "auth": push_proxy::providers::b64(&[9; 16]),
        }),
    )
    .await;
    frank.set_push_handle(&web_handle).await.expect("set handle");
    let to_frank = [Recipient::address("tel:+15550100006")];
    alice
        .send(&to_frank, framed_message(b"web"), None, false)
        .await
        .expect("send");
    alice
        .send(&to_frank, framed_message(b"web2"), None, true)
        .await
        .expect("send");
    wait_for("frank's pushes", || web.pushes().len() == 2).await;
    let w = web.pushes();
    assert_eq!(web.refused(), Vec::<String>::new());
    for p in &w {
        let v: serde_json::Value = serde_json::from_slice(&p.payload).expect("json");
        assert_eq!(v.as_object().expect("object").len(), 1, "only the pointer");
        assert!(Pointer::parse(v["p"].as_str().expect("p")).is_some());
        assert_eq!(p.body.len(), w[0].body.len(), "constant size");
    }
    assert_eq!(apns.refused(), Vec::<String>::new());

    // UnifiedPush: the endpoint must answer the discovery probe; an allowed host that is not
    // a distributor (the APNs endpoint) is refused, and so is a host off the allow-list.
    let keys = serde_json::json!({
        "p256dh": push_proxy::providers::b64(&webpush::public_bytes(&ua.public_key())),
        "auth": push_proxy::providers::b64(&[9; 16]),
    });
    let up = |endpoint: String| {
        let mut b = keys.clone();
        b["platform"] = "unifiedpush".into();
        b["endpoint"] = endpoint.into();
        b
    };
    let ok = register_raw(&proxy, up(format!("{}/up/ivan", web.url()))).await;
    assert_eq!(ok.status, 201, "{:?}", ok.body);
    let not_up = register_raw(&proxy, up(format!("{}/up/ivan", apns.url()))).await;
    assert_eq!(
        (not_up.status.as_u16(), not_up.body.as_ref()),
        (400, br#"{"code":"unifiedpush_probe_failed"}"#.as_slice())
    );
    let off_list = register_raw(&proxy, up("https://127.0.0.1:9/internal".into())).await;
    assert_eq!(
        (off_list.status.as_u16(), off_list.body.as_ref()),
        (403, br#"{"code":"endpoint_not_allowed"}"#.as_slice())
    );

    // A device whose credential we hold, for the canary below.
    let hank_client = gw.client();
    let hank_reg = hank_client
        .register(&gw.provision("tel:+15550100008"))
        .await
        .expect("register");
    let hank = hank_client.with_credential(hank_reg.credential.clone());
    let hank_handle = register_token(&proxy, serde_json::json!({"platform": "apns", "token": HANK_TOKEN})).await;
    hank.set_push_handle(&hank_handle).await.expect("set handle");
    send_to(&alice, "tel:+15550100008", b"hank", false).await;
    wait_for("hank's push", || pushes_to(&apns, HANK_TOKEN).len() == 1).await;

    // FCM: OAuth2 grant, then a data message carrying only the pointer.
    let _gina = pushable(
        &gw,
        &proxy,
        "tel:+15550100007",
        serde_json::json!({"platform": "fcm", "token": FCM_TOKEN}),
    )
    .await;
    send_to(&alice, "tel:+15550100007", b"fcm", false).await;
    wait_for("gina's FCM push", || fcm.pushes().len() == 1).await;
    assert_eq!(fcm.refused(), Vec::<String>::new());
    let data: serde_json::Value = serde_json::from_slice(&fcm.pushes()[0].payload).expect("json");
    assert_eq!(data.as_object().expect("object").len(), 1, "only the pointer");
    assert!(Pointer::parse(data["p"].as_str().expect("p")).is_some());

    // Registration is rate-limited per client address.
    let mut limited = None;
    for _ in 0..60 {
        let r = register_raw(
            &proxy,
            serde_json::json!({"platform": "apns", "token": "0123456789abcdef"}),
        )
        .await;
        if r.status == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status, 201);
    }
    let limited = limited.expect("no registration was rate-limited");
    assert_eq!(limited.body.as_ref(), br#"{"code":"rate_limited"}"#);
    assert!(limited.headers.contains_key("retry-after"));

    // Canary: no token, address or credential in the gateway's data, the proxy's logs, or a
    // push payload (every write is flushed before its 2xx, so the files are complete).
    let mut canaries: Vec<Vec<u8>> = [
        BOB_TOKEN,
        CAROL_TOKEN,
        DAVE_TOKEN,
        ERIN_TOKEN,
        FCM_TOKEN,
        HANK_TOKEN,
        "15550100002",
        "15550100005",
        "15550100007",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    canaries.push(push_proxy::providers::b64(&webpush::public_bytes(&ua.public_key())).into_bytes());
    canaries.push(b"push/frank".to_vec());
    canaries.push(hank_reg.credential.clone().into_bytes());
    // The credential's secret half alone, too (it is `rc1.` + base64 of lookup and secret).
    canaries.push(hank_reg.credential.as_bytes()[hank_reg.credential.len() - 24..].to_vec());
    let log = proxy.log();
    assert!(
        log.contains("DEBUG"),
        "the proxy logged at debug level (positive control)"
    );
    let payloads: Vec<Vec<u8>> = apns
        .pushes()
        .iter()
        .chain(web.pushes().iter())
        .chain(fcm.pushes().iter())
        .map(|p| p.payload.clone())
        .collect();
    for c in &canaries {
        let files = test_support::files_containing(&gw.data_dir, c);
        assert!(files.is_empty(), "{} found in {files:?}", String::from_utf8_lossy(c));
        assert!(
            !test_support::contains(log.as_bytes(), c),
            "{} in the proxy log",
            String::from_utf8_lossy(c)
        );
        for p in &payloads {
            assert!(
                !test_support::contains(p, c),
                "{} in a push payload",
                String::from_utf8_lossy(c)
            );
        }
    }
    // Positive control for the data-dir scan: the handle itself is stored there (a storage
    // checkpoint between the scan's reads of the journal and of sled can hide it from one
    // scan, never from two in a row).
    test_support::eventually(
        "the scan to find the stored handle",
        Duration::from_secs(10),
        async || !test_support::files_containing(&gw.data_dir, bob_handle.as_bytes()).is_empty(),
    )
    .await;
    gw.stop().await;
}
