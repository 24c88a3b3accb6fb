//! The compromise drill, end to end with two `gateway` processes peering as carriers A and B:
//! a stolen provisioning key of A registers three rogue devices among twenty legitimate ones
//! (ten on each carrier) while legitimate traffic flows within and across the carriers; the registration metric moves (the `RegistrationSpike` alert's
//! promtool test in deploy/prometheus/rules_test.yml fires on such a burst); the operator
//! switches registration off, rotates the provisioning key, marks the old one compromised,
//! lists what it registered since the incident began (exactly the three), revokes them,
//! switches registration back on; the old key's tokens are refused, a new-key token
//! registers; evidence is exported and verified; the audit log verifies against a checkpoint
//! kept before the incident. Every legitimate message is delivered exactly once.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use relay_client::{ClientError, Recipient};

const LEGIT: u32 = 20;

fn gateway(data: &Path, admin: u16, args: &[&str]) -> String {
    crate::process::ok(&crate::process::gateway_cli(data, admin, args))
}

/// Legitimate device `n`: the first half on carrier A (`+1555…`), the rest on B (`+4477…`).
fn address(n: u32) -> String {
    if !(LEGIT / 2..100).contains(&n) {
        format!("tel:+1555011{n:04}")
    } else {
        format!("tel:+44770090{n:04}")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compromise_drill() {
    use crate::interconnect_faults::{interconnect_toml, peer_toml};
    let dir = tempfile::tempdir().unwrap();
    let ca = test_support::pki::RcgenCa::new(&dir.path().join("pki"), "carriers");
    let (leaf_a, leaf_b) = (
        ca.issue("a", "carrier-a.test", 1, None),
        ca.issue("b", "carrier-b.test", 2, None),
    );
    let (a_ic, b_ic) = (test_support::process::free_port(), test_support::process::free_port());
    let (peers_a, peers_b) = (dir.path().join("peers-a.toml"), dir.path().join("peers-b.toml"));
    std::fs::write(&peers_a, peer_toml("b", "carrier-b.test", b_ic, &ca.cert, "+4477")).unwrap();
    std::fs::write(&peers_b, peer_toml("a", "carrier-a.test", a_ic, &ca.cert, "+1555")).unwrap();
    let (data, log) = (dir.path().join("a"), dir.path().join("a.log"));
    let (data_b, log_b) = (dir.path().join("b"), dir.path().join("b.log"));
    let p = crate::process::spawn_gateway_with(
        &data,
        &log,
        &[],
        &interconnect_toml(a_ic, "carrier-a.test", &leaf_a, &peers_a, "+1555"),
    )
    .await;
    let b = crate::process::spawn_gateway_with(
        &data_b,
        &log_b,
        &[],
        &interconnect_toml(b_ic, "carrier-b.test", &leaf_b, &peers_b, "+4477"),
    )
    .await;
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], p.admin));
    let client = p.client();
    let token = |n: u32| test_support::provision_token(&data, &address(n), 3_600_000);
    let mut legit = Vec::new();
    for n in 0..LEGIT {
        let (gw, data) = if n < LEGIT / 2 { (&p, &data) } else { (&b, &data_b) };
        let c = gw.client();
        let t = test_support::provision_token(data, &address(n), 3_600_000);
        legit.push(c.with_credential(c.register(&t).await.unwrap().credential));
    }
    // The auditor's checkpoint, kept before the incident.
    let kept = dir.path().join("kept.note");
    std::fs::write(&kept, gateway(&data, p.admin, &["audit", "checkpoint"])).unwrap();
    let old_key = gateway::api::provisioning_key_id(&std::fs::read(data.join("keys/provisioning.pub")).unwrap());

    // Legitimate traffic flows throughout: each device sends to the next, every payload unique.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (legit, stop) = (legit.clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut sent: HashMap<u32, Vec<bytes::Bytes>> = HashMap::new();
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) || i < LEGIT {
                let (from, to) = (i % LEGIT, (i + 1) % LEGIT);
                let m = test_support::framed_message(format!("legit {i}").as_bytes());
                legit[from as usize]
                    .send(&[Recipient::address(address(to))], m.clone(), None, false)
                    .await
                    .unwrap();
                sent.entry(to).or_default().push(m);
                i += 1;
            }
            sent
        })
    };

    // The incident: the stolen (first) key registers three rogue devices; one more token was
    // minted with it for later.
    let since = relay_net::clock::now_ms();
    for n in 100..103 {
        client.register(&token(n)).await.unwrap();
    }
    let late_rogue_token = token(103);
    let metrics = test_support::admin_request(admin, "GET", "/metrics").await.unwrap();
    let registered = metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("relay_registrations_total{{key=\"{old_key}\"}} ")))
        .unwrap()
        .trim()
        .parse::<f64>()
        .unwrap();
    assert!(registered >= f64::from(LEGIT / 2 + 3), "the metric moved: {registered}");

    // Contain: registration off, a new key, the old one compromised.
    gateway(&data, p.admin, &["switch", "off", "registration"]);
    let rotated = gateway(&data, p.admin, &["keys", "rotate", "provisioning"]);
    assert!(
        rotated.contains("1 changed") || rotated.contains("changed"),
        "{rotated}"
    );
    gateway(
        &data,
        p.admin,
        &["keys", "mark-compromised", &format!("provisioning:{old_key}")],
    );
    let listed = gateway(&data, p.admin, &["keys", "list"]);
    assert!(
        listed.contains(&format!("provisioning:{old_key} compromised")),
        "{listed}"
    );

    // What the stolen key registered since the incident began: exactly the three.
    let found = gateway(
        &data,
        p.admin,
        &["registered", "--since-ms", &since.to_string(), "--key", &old_key],
    );
    let rogue: Vec<serde_json::Value> = found.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rogue.len(), 3, "{found}");
    for r in &rogue {
        let rid = r["rid"].as_str().unwrap();
        let device = r["device"].as_u64().unwrap().to_string();
        gateway(&data, p.admin, &["revoke", "--rid", rid, "--device", &device]);
    }
    let after = gateway(&data, p.admin, &["registered", "--since-ms", &since.to_string()]);
    assert_eq!(after.matches("\"revoked\":true").count(), 3, "{after}");

    // Recover: registration back on; the old key's tokens are refused, the new key's work.
    gateway(&data, p.admin, &["switch", "on", "registration"]);
    match client.register(&late_rogue_token).await {
        Err(ClientError::Api { status, code, .. }) => {
            assert_eq!((status, code.as_str()), (401, "provisioning_key_revoked"));
        }
        other => panic!("a compromised key's token: {other:?}"),
    }
    let again = client.register(&token(200)).await.unwrap();
    assert_eq!(
        again.device_id, 1,
        "a legitimate device re-registered with a new-key token"
    );

    // Evidence, and the audit log against the checkpoint kept before the incident.
    let bundle = dir.path().join("evidence.tar");
    gateway(
        &data,
        p.admin,
        &["evidence", "export", "--out", bundle.to_str().unwrap()],
    );
    assert!(gateway(&data, p.admin, &["evidence", "verify", bundle.to_str().unwrap()]).starts_with("ok:"));
    let verified = gateway(
        &data,
        p.admin,
        &["audit", "verify", "--against", kept.to_str().unwrap()],
    );
    assert!(verified.starts_with("ok:"), "{verified}");
    let shown = gateway(&data, p.admin, &["audit", "show"]);
    for kind in ["switch.off", "key.state", "device.revoke", "switch.on"] {
        assert!(shown.contains(&format!("\"kind\":\"{kind}\"")), "no {kind}");
    }
    assert!(shown.contains(&format!("provisioning id={old_key} state=compromised")));

    // Every legitimate message arrived exactly once.
    stop.store(true, Ordering::Relaxed);
    let sent = traffic.await.unwrap();
    for (to, messages) in sent {
        let receiver = &legit[to as usize];
        let mut got = Vec::new();
        test_support::eventually("every legitimate message", Duration::from_secs(20), async || {
            let cursor = 0;
            got = receiver.receive(cursor, 1000, 0).await.unwrap().envelopes;
            got.len() >= messages.len()
        })
        .await;
        let mut got: Vec<bytes::Bytes> = got.into_iter().map(|e| e.message).collect();
        let mut messages = messages;
        // Across carriers the outbox delivers concurrently: the same messages, once each.
        got.sort();
        messages.sort();
        assert_eq!(got, messages, "device {to}: each message once");
    }
}
