//! A peer's kill switch: while it is off at the sender, envelopes for the peer stay queued;
//! while it is off at the receiver, the peer's deliveries are refused (503) and it retries;
//! switched back on, each envelope arrives exactly once.

use relay_client::Recipient;
use storage::prelude::*;
use test_support::framed_message;
use test_support::pki::RcgenCa;

use crate::{Carrier, Peer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switched_off_peer_keeps_its_envelopes_until_it_is_back() {
    let pki = tempfile::tempdir().unwrap();
    let ca_a = RcgenCa::new(&pki.path().join("a"), "carrier-a");
    let leaf_a = ca_a.issue("a", "carrier-a.test", 1, None);
    let ca_b = RcgenCa::new(&pki.path().join("b"), "carrier-b");
    let leaf_b = ca_b.issue("b", "carrier-b.test", 1, None);
    let a = Carrier::start("carrier-a.test", "US", &leaf_a, &["+1555"], &[]).await;
    let b = Carrier::start("carrier-b.test", "GB", &leaf_b, &["+4477"], &[]).await;
    let peer = |name, domain, port, ca, prefix, jurisdiction| Peer {
        name,
        domain,
        port,
        ca,
        prefixes: prefix,
        jurisdiction,
        crls: vec![],
    };
    a.set_peers(&[peer("b", "carrier-b.test", b.ic_port(), &ca_b.cert, &["+4477"], "GB")])
        .await;
    b.set_peers(&[peer("a", "carrier-a.test", a.ic_port(), &ca_a.cert, &["+1555"], "US")])
        .await;
    let (alice, _) = a.gw.device("tel:+15550100001").await;
    let (bob, _) = b.gw.device("tel:+447700900001").await;
    let to_bob = [Recipient::address("tel:+447700900001")];
    let now = relay_net::clock::now_ms();
    let (store_a, store_b) = (a.gw.state().store().clone(), b.gw.state().store().clone());

    // Off at the sender: queued, not delivered (Bob's 2 s long-poll sees nothing).
    store_a.set_switch("peer:b", true, now).await.unwrap();
    alice.send(&to_bob, framed_message(b"one"), None, false).await.unwrap();
    assert!(bob.receive(0, 10, 2).await.unwrap().envelopes.is_empty());
    assert_eq!(store_a.outbox_depth("b").await.unwrap().0, 1, "still queued");
    store_a.set_switch("peer:b", false, now).await.unwrap();
    let got = crate::receive_all(&bob, 1).await;
    assert_eq!(got, vec![framed_message(b"one")]);

    // Off at the receiver: B refuses A's deliveries with 503; A keeps them and retries.
    store_b.set_switch("peer:a", true, now).await.unwrap();
    alice.send(&to_bob, framed_message(b"two"), None, false).await.unwrap();
    assert!(bob.receive(1, 10, 2).await.unwrap().envelopes.is_empty());
    assert_eq!(store_a.outbox_depth("b").await.unwrap().0, 1, "still queued at A");
    store_b.set_switch("peer:a", false, now).await.unwrap();
    let all = crate::receive_all(&bob, 2).await;
    assert_eq!(
        all,
        vec![framed_message(b"one"), framed_message(b"two")],
        "each exactly once"
    );
    let page = bob.receive(0, 10, 1).await.unwrap();
    assert_eq!(page.envelopes.len(), 2, "nothing delivered twice");
    a.gw.stop().await;
    b.gw.stop().await;
}
