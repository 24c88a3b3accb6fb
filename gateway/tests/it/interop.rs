//! Interoperability with an HTTP/3 client nobody here wrote: aioquic's example client
//! (`http3_client.py` from its source distribution). `.ci/run` installs aioquic and
//! unpacks the examples; `AIOQUIC_EXAMPLES` names their directory.

use std::path::PathBuf;
use std::process::Command;

use prost::Message as _;
use relay_client::wire::{Recipient as WireRecipient, SendRequest};
use test_support::TestGateway;

fn examples_dir() -> PathBuf {
    let dir = std::env::var_os("AIOQUIC_EXAMPLES").map(PathBuf::from).expect(
        "AIOQUIC_EXAMPLES must name the examples/ directory of aioquic's source distribution \
         (.ci/run sets it up: pip install aioquic wsproto, pip download --no-binary :all: aioquic)",
    );
    assert!(
        dir.join("http3_client.py").exists(),
        "{} has no http3_client.py",
        dir.display()
    );
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aioquic_example_client_gets_health_and_sends() {
    let examples = examples_dir();
    let gw = TestGateway::start().await;
    let alice = gw.client().register(&gw.provision("tel:+15550100001")).await.unwrap();
    let (bob, _) = gw.device("tel:+15550100002").await;
    let message = test_support::framed_message(b"sent by aioquic");
    let body = SendRequest {
        recipients: vec![WireRecipient {
            address: "tel:+15550100002".into(),
            device_ids: vec![],
        }],
        message: message.clone(),
        client_message_id: bytes::Bytes::new(),
        urgent: false,
    }
    .encode_to_vec();
    let dir = tempfile::tempdir().unwrap();
    let body_path = dir.path().join("body.bin");
    std::fs::write(&body_path, body).unwrap();
    let driver = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/aioquic_driver.py");
    let out = tokio::process::Command::from({
        let mut c = Command::new("python3");
        c.arg(driver)
            .arg("--examples")
            .arg(&examples)
            .arg("--url")
            .arg(gw.url())
            .arg("--ca")
            .arg(gw.ca())
            .arg("--credential")
            .arg(&alice.credential)
            .arg("--body")
            .arg(&body_path);
        c
    })
    .output()
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "aioquic client failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(result["healthz"], 200, "{stdout}");
    assert_eq!(result["send"], 201, "{stdout}");
    let page = bob.receive(0, 10, 0).await.unwrap();
    assert_eq!(
        page.envelopes[0].message, message,
        "bytes sent over aioquic arrive intact"
    );
    gw.stop().await;
}
