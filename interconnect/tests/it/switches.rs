//! A peer's kill switch: while it is off at the sender, envelopes for the peer stay queued;
//! while it is off at the receiver, the peer's deliveries are refused (503) and it retries;
//! switched back on, each envelope arrives exactly once.

use relay_client::Recipient;
use storage::prelude::*;
use test_support::framed_message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switched_off_peer_keeps_its_envelopes_until_it_is_back() {
    let pair = crate::Pair::start(|_| {}, &[]).await;
    let (a, b) = (&pair.a, &pair.b);
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
    pair.a.gw.stop().await;
    pair.b.gw.stop().await;
}
