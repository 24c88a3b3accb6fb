//! The README's CLI walkthrough, run with the real `relay` binary against a gateway.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use relay_core::envelope::MessageKind;
use test_support::TestGateway;

const RELAY: &str = env!("CARGO_BIN_EXE_relay");
const SAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/samples/hello.mls");

fn relay(dir: &Path, gw: &TestGateway, profile: &str, args: &[&str]) -> String {
    let out = Command::new(RELAY)
        .current_dir(dir)
        .arg("--server")
        .arg(gw.url())
        .arg("--ca")
        .arg(gw.ca())
        .arg("--profile")
        .arg(profile)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "relay {args:?} failed: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_walkthrough() {
    let gw = TestGateway::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = relay(
        d,
        &gw,
        "alice.toml",
        &["register", "--token", &gw.provision("tel:+15550100001")],
    );
    assert!(out.contains("registered device 1"), "{out}");
    relay(
        d,
        &gw,
        "bob.toml",
        &["register", "--token", &gw.provision("tel:+15550100002")],
    );
    let out = relay(
        d,
        &gw,
        "alice.toml",
        &["send", "--to", "tel:+15550100002", "--file", SAMPLE],
    );
    assert!(out.contains("devices=1"), "{out}");
    let out = relay(d, &gw, "bob.toml", &["receive", "--out-dir", "inbox", "--ack"]);
    assert!(out.contains("seq=1 "), "{out}");
    let files: Vec<_> = std::fs::read_dir(d.join("inbox"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1);
    assert_eq!(
        std::fs::read(&files[0]).unwrap(),
        std::fs::read(SAMPLE).unwrap(),
        "bytes received equal bytes sent"
    );
    let out = relay(d, &gw, "bob.toml", &["receive"]);
    assert!(out.contains("queue_empty"), "acknowledged envelopes are gone: {out}");
    // Every command also runs over HTTP/3.
    let out = relay(
        d,
        &gw,
        "alice.toml",
        &["--http3", "send", "--to", "tel:+15550100002", "--file", SAMPLE],
    );
    assert!(out.contains("devices=1"), "{out}");
    let out = relay(d, &gw, "bob.toml", &["--http3", "receive", "--ack"]);
    assert!(out.contains("seq=2 "), "{out}");
    let out = relay(d, &gw, "bob.toml", &["--http3", "health"]);
    assert!(out.contains("ok"), "{out}");

    // The KeyPackage directory from the CLI.
    let bob = test_support::mls::Member::new("tel:+15550100002");
    for (i, kp) in [bob.key_package_bytes(), bob.last_resort_key_package_bytes()]
        .iter()
        .enumerate()
    {
        std::fs::write(d.join(format!("kp{i}.bin")), kp).unwrap();
    }
    let out = relay(
        d,
        &gw,
        "bob.toml",
        &["keypackages", "upload", "--file", "kp0.bin", "--file", "kp1.bin"],
    );
    assert!(out.contains("stored 2"), "{out}");
    let out = relay(d, &gw, "bob.toml", &["keypackages", "count"]);
    assert!(out.contains("one_time=1 last_resort=true"), "{out}");
    let out = relay(
        d,
        &gw,
        "alice.toml",
        &[
            "keypackages",
            "claim",
            "--address",
            "tel:+15550100002",
            "--out-dir",
            "kps",
        ],
    );
    assert!(out.contains("tel:+15550100002 device=1"), "{out}");
    assert_eq!(
        std::fs::read(d.join("kps/15550100002-1.kp")).unwrap(),
        std::fs::read(d.join("kp0.bin")).unwrap()
    );
    let out = relay(
        d,
        &gw,
        "alice.toml",
        &["--http3", "keypackages", "claim", "--address", "tel:+15550100002"],
    );
    assert!(out.contains("last_resort"), "{out}");
    // GroupInfo for external joins: published from a file, fetched byte for byte.
    let mut carol = test_support::mls::Member::new("tel:+15550100001");
    carol.create_group();
    let group = relay_core::hex::encode(&carol.group_id());
    std::fs::write(d.join("gi.mls"), carol.group_info()).unwrap();
    let before = Command::new(RELAY)
        .current_dir(d)
        .args(["--profile", "bob.toml", "group-info", "get", "--group", &group])
        .output()
        .unwrap();
    assert!(!before.status.success());
    assert!(String::from_utf8_lossy(&before.stderr).contains("unknown_group"));
    let out = relay(
        d,
        &gw,
        "alice.toml",
        &["group-info", "publish", "--group", &group, "--file", "gi.mls"],
    );
    assert!(out.contains("published"), "{out}");
    let out = relay(
        d,
        &gw,
        "bob.toml",
        &["group-info", "get", "--group", &group, "--out", "fetched.mls"],
    );
    assert!(out.contains("bytes="), "{out}");
    assert_eq!(
        std::fs::read(d.join("fetched.mls")).unwrap(),
        std::fs::read(d.join("gi.mls")).unwrap()
    );
    let out = Command::new(RELAY)
        .current_dir(d)
        .args(["--profile", "bob.toml", "send", "--to", "tel:+1", "--file", SAMPLE])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid_address"));
    gw.stop().await;
}

/// `relay register --open-address` on a loopback gateway with open registration; refused
/// (with the API's code) on one without.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_registration_from_the_cli() {
    let open = TestGateway::start_with(|c| c.registration.danger_open_registration = true).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = relay(
        d,
        &open,
        "dev.toml",
        &["register", "--open-address", "tel:+15550100009"],
    );
    assert!(out.contains("registered device 1"), "{out}");
    let out = relay(
        d,
        &open,
        "dev.toml",
        &["send", "--to", "tel:+15550100009", "--file", SAMPLE],
    );
    assert!(out.contains("devices=1"), "{out}");
    open.stop().await;
    let closed = TestGateway::start().await;
    let out = Command::new(RELAY)
        .current_dir(d)
        .args(["--server", &closed.url(), "--ca"])
        .arg(closed.ca())
        .args([
            "--profile",
            "other.toml",
            "register",
            "--open-address",
            "tel:+15550100009",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("401") || stderr.contains("invalid_provisioning_token"),
        "{stderr}"
    );
    closed.stop().await;
}

/// The committed sample is a real openmls PrivateMessage (regenerate with
/// `RELAY_WRITE_SAMPLE=1 cargo test -p relay-client sample`).
#[test]
fn sample_is_a_real_mls_message() {
    if std::env::var_os("RELAY_WRITE_SAMPLE").is_some() {
        let mut alice = test_support::mls::Member::new("tel:+15550100001");
        let bob = test_support::mls::Member::new("tel:+15550100002");
        alice.create_group();
        alice.add(&[bob.key_package().0]);
        std::fs::write(SAMPLE, alice.encrypt(b"hello, bob")).unwrap();
    }
    let bytes = std::fs::read(SAMPLE).unwrap();
    let env = relay_core::Envelope::parse(bytes.into(), &relay_core::Limits::default()).unwrap();
    assert_eq!(env.kind(), MessageKind::PrivateMessage);
}

/// A Web Push subscription (the P-256 generator as the user agent's key; registration does
/// not contact the endpoint). This proxy has no APNs or FCM configuration, so it refuses
/// those tokens (501 `provider_not_configured`).
const WEB_PUSH_REGISTRATION: &str = r#"{"platform":"webpush","endpoint":"https://updates.push.services.mozilla.com/wpush/v2/abc","p256dh":"BGsX0fLhLEJH-Lzm5WOkQPJ3A32BLeszoPShOUXYmMKWT-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfU","auth":"AAECAwQFBgcICQoLDA0ODw"}"#;

/// `relay push set` takes the push proxy's register answer as it comes (curl's output
/// file), the gateway stores the handle; `show` and `clear` do what they say; a malformed
/// handle is refused with the API's code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_handle_from_the_push_proxy_answer() {
    use storage::prelude::*;
    let gw = TestGateway::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = push_proxy::config::Config {
        data_dir: d.join("push-data"),
        listen: "127.0.0.1:0".parse().unwrap(),
        notify_listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        ..push_proxy::config::Config::default()
    };
    let ca = config.data_dir.join("tls").join(push_proxy::tls::DEV_CA);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let proxy = push_proxy::server::start(config.validate().unwrap(), shutdown.clone())
        .await
        .unwrap();
    let answer = d.join("answer.json");
    let out = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(&ca)
        .args(["-H", "content-type: application/json", "-d", WEB_PUSH_REGISTRATION])
        .arg("-o")
        .arg(&answer)
        .arg(format!("https://localhost:{}/v1/push/register", proxy.listen.port()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // An APNs token on a proxy without APNs is refused at registration.
    let apns = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(&ca)
        .args([
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"platform":"apns","token":"a1b2c3d4e5f60718293a4b5c6d7e8f90"}"#,
        ])
        .arg(format!("https://localhost:{}/v1/push/register", proxy.listen.port()))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&apns.stdout), "501");
    let answer_text = std::fs::read_to_string(&answer).unwrap();
    let handle = serde_json::from_str::<serde_json::Value>(&answer_text).unwrap()["handle"]
        .as_str()
        .unwrap_or_else(|| panic!("the proxy's answer: {answer_text}"))
        .to_owned();

    relay(
        d,
        &gw,
        "alice.toml",
        &["register", "--token", &gw.provision("tel:+15550100001")],
    );
    let out = relay(d, &gw, "alice.toml", &["push", "set", "--handle-file", "answer.json"]);
    assert!(out.contains("push handle stored"), "{out}");
    let rid = gw.rid("tel:+15550100001");
    let stored = gw
        .state()
        .store()
        .push_handle(rid, relay_core::DeviceId(1))
        .await
        .unwrap();
    assert_eq!(stored.as_deref(), Some(handle.as_str()));
    assert_eq!(relay(d, &gw, "alice.toml", &["push", "show"]).trim(), handle);
    relay(d, &gw, "alice.toml", &["push", "clear"]);
    assert_eq!(
        gw.state()
            .store()
            .push_handle(rid, relay_core::DeviceId(1))
            .await
            .unwrap(),
        None
    );
    let bad = Command::new(RELAY)
        .current_dir(d)
        .args(["--profile", "alice.toml", "push", "set", "--handle", "not-a-handle"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid_push_handle"));
    shutdown.cancel();
    proxy.stopped().await;
    gw.stop().await;
}
