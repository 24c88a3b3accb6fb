//! Delivery, claims and residency between two carriers.

use std::time::{Duration, Instant};

use relay_client::{ClientError, Recipient};
use storage::prelude::*;
use test_support::framed_message;
use test_support::pki::{OpensslCa, RcgenCa};

use crate::{Carrier, Peer, base64_std, mtls, receive_all};

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
    // Scan control: the same scan finds what is stored (Dave's unacknowledged envelope). A
    // storage checkpoint moving it from the journal into sled between the scan's reads of the
    // two can hide it from one scan, never from two in a row.
    test_support::eventually("the scan to read B's storage", Duration::from_secs(10), async || {
        !test_support::files_containing(&b.gw.data_dir, b"to-dave").is_empty()
    })
    .await;
    a.gw.stop().await;
    b.gw.stop().await;
}
