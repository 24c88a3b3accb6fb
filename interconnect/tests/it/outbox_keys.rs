//! Rotating the outbox key while envelopes are queued: entries sealed under the old version
//! are delivered after the rotation (new ones are sealed under the new version); retiring
//! the old version is refused while any entry is still sealed under it, and allowed once
//! they are delivered. Each change is audited.

use relay_client::Recipient;
use storage::prelude::*;
use test_support::framed_message;

async fn admin(gw: &test_support::TestGateway, path: &str) -> String {
    test_support::admin_request(gw.admin_addr, "POST", path).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_queued_before_an_outbox_key_rotation_are_delivered_after_it() {
    let pair = crate::Pair::start(|_| {}, &[]).await;
    let (a, b) = (&pair.a, &pair.b);
    let (alice, _) = a.gw.device("tel:+15550100001").await;
    let (bob, _) = b.gw.device("tel:+447700900001").await;
    let to_bob = [Recipient::address("tel:+447700900001")];
    let store_a = a.gw.state().store().clone();
    let now = relay_net::clock::now_ms();

    // Three envelopes queued (the peer switched off at A) under version 0.
    store_a.set_switch("peer:b", true, now).await.unwrap();
    for m in [b"one".as_slice(), b"two", b"three"] {
        alice.send(&to_bob, framed_message(m), None, false).await.unwrap();
    }
    assert_eq!(store_a.outbox_depth("b").await.unwrap().0, 3);

    // Rotate (what `gateway keys rotate outbox` does: a new version on disk, then a reload).
    let key_dir = a.gw.data_dir.join("keys");
    let v = relay_keys::Provider::files()
        .rotate_ring(&key_dir, interconnect::record::KEY_RING, now)
        .unwrap();
    assert_eq!(v, 1);
    let reloaded = admin(&a.gw, "/admin/keys/reload").await;
    assert!(
        reloaded.contains("outbox key version 1 seals, versions [0, 1] open"),
        "{reloaded}"
    );
    alice.send(&to_bob, framed_message(b"four"), None, false).await.unwrap();
    let versions =
        a.gw.state()
            .interconnect()
            .unwrap()
            .outbox_key_versions()
            .await
            .unwrap();
    assert_eq!(
        versions,
        [(0, 3), (1, 1)].into(),
        "old entries under 0, the new one under 1"
    );

    // Retiring version 0 now would strand three envelopes: refused, nothing changes.
    let refused = admin(&a.gw, "/admin/keys/retire?key=outbox:0").await;
    assert!(
        refused.starts_with("HTTP/1.1 409") && refused.contains("still seals 3 queued entries"),
        "{refused}"
    );
    let current = admin(&a.gw, "/admin/keys/retire?key=outbox:1").await;
    assert!(
        current.starts_with("HTTP/1.1 409") && current.contains("rotate first"),
        "{current}"
    );

    // Back on: every envelope arrives, exactly once.
    store_a.set_switch("peer:b", false, now).await.unwrap();
    let mut got = crate::receive_all(&bob, 4).await;
    got.sort();
    let mut want = [b"one".as_slice(), b"two", b"three", b"four"]
        .map(framed_message)
        .to_vec();
    want.sort();
    assert_eq!(
        got, want,
        "each envelope once (deliveries run concurrently: in any order)"
    );
    test_support::eventually("A's outbox drains", std::time::Duration::from_secs(10), async || {
        store_a.outbox_depth("b").await.unwrap().0 == 0
    })
    .await;
    let retired = admin(&a.gw, "/admin/keys/retire?key=outbox:0").await;
    assert!(
        retired.starts_with("HTTP/1.1 200") && retired.contains("outbox:0 retired"),
        "{retired}"
    );
    let states = relay_keys::ring::states(&key_dir, interconnect::record::KEY_RING).unwrap();
    assert_eq!(states.versions[&0].state, "retired");
    let again = admin(&a.gw, "/admin/keys/retire?key=outbox:0").await;
    assert!(
        again.starts_with("HTTP/1.1 409") && again.contains("already retired"),
        "{again}"
    );
    let audit: Vec<String> = store_a
        .audit_log()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.detail)
        .collect();
    for detail in ["outbox version=1 state=active", "outbox version=0 state=retired"] {
        assert!(audit.iter().any(|d| d == detail), "{detail} audited: {audit:?}");
    }
    pair.a.gw.stop().await;
    pair.b.gw.stop().await;
}
