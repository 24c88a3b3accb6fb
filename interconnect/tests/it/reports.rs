//! Delivery reports: a sender learns, in its own receive stream, of a remote part the peer
//! refused (a number it does not serve) or that could not be delivered within the outbox TTL.

use std::time::Duration;

use relay_client::Recipient;
use relay_core::wire::v1;
use storage::prelude::*;
use test_support::framed_message;

/// Envelopes of `client` after `after` until `want` have arrived.
async fn envelopes(client: &relay_client::Client, want: usize) -> Vec<v1::Envelope> {
    let mut got = Vec::new();
    test_support::eventually("the envelopes to arrive", Duration::from_secs(20), async || {
        let cursor = got.last().map_or(0, |e: &v1::Envelope| e.seq);
        got.extend(client.receive(cursor, 100, 1).await.unwrap().envelopes);
        got.len() >= want
    })
    .await;
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sender_hears_of_a_refused_or_undeliverable_remote_part() {
    // A short outbox TTL, so the part for the unreachable peer is dead-lettered in seconds.
    let pair = crate::Pair::start(
        |c| c.outbox_ttl_secs = 2,
        &[("gone", "carrier-gone.test", 9, &["+49"], "DE")],
    )
    .await;
    let (a, b) = (&pair.a, &pair.b);
    let (alice, _) = a.gw.device("tel:+15550100001").await;
    let (carol, _) = a.gw.device("tel:+15550100002").await;
    let (bob, _) = b.gw.device("tel:+447700900001").await;

    // Carol (local) and a number B does not serve: accepted (B is asked later), Carol gets it.
    let message = framed_message(b"to-nobody");
    let sent = alice
        .send(
            &[
                Recipient::address("tel:+15550100002"),
                Recipient::address("tel:+447700900099"),
            ],
            message.clone(),
            None,
            false,
        )
        .await
        .unwrap();
    assert_eq!(sent.recipient_devices, 1);
    assert_eq!(sent.peer_recipients, 1, "one recipient handed to a peer");
    assert_eq!(envelopes(&carol, 1).await[0].message, message);
    // Alice's own stream carries the report: the send, the position, the reason, the peer.
    let got = envelopes(&alice, 1).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let e = &got[0];
    assert_eq!(e.flags & 4, 4, "the report flag");
    assert!(e.message.is_empty());
    let report = e.report.clone().expect("a delivery report");
    assert_eq!(report.server_id, sent.server_id);
    assert_eq!(report.reason, "unknown_recipient");
    assert_eq!(report.recipient_indexes, vec![1]);
    assert_eq!(report.peer_domain, "carrier-b.test");
    assert_eq!(report.peer_status, 404);

    // A part for a peer that never answers: reported as `peer_unreachable` once the TTL is up.
    let sent = alice
        .send(
            &[
                Recipient::address("tel:+447700900001"),
                Recipient::address("tel:+4915100000001"),
            ],
            framed_message(b"half-way"),
            None,
            false,
        )
        .await
        .unwrap();
    assert_eq!(envelopes(&bob, 1).await[0].message, framed_message(b"half-way"));
    let after = got[0].seq;
    let mut more = Vec::new();
    test_support::eventually("the unreachable report", Duration::from_secs(30), async || {
        more.extend(alice.receive(after, 100, 1).await.unwrap().envelopes);
        !more.is_empty()
    })
    .await;
    let report = more[0].report.clone().expect("a delivery report");
    assert_eq!(report.server_id, sent.server_id);
    assert_eq!(report.reason, "peer_unreachable");
    assert_eq!(report.recipient_indexes, vec![1]);
    assert_eq!(
        (report.peer_domain.as_str(), report.peer_status),
        ("carrier-gone.test", 0)
    );

    // Exactly one report per dead letter, and both are in the audit log without a number.
    let page = alice.receive(0, 100, 0).await.unwrap();
    assert_eq!(page.envelopes.len(), 2, "{page:?}");
    // The report is stored before its dead letter is written (so a crash cannot lose it).
    let store = a.gw.state().store().clone();
    let dead_letters = async || {
        let log = store.audit_log().await.unwrap();
        log.iter().filter(|r| r.kind == "interconnect.dead_letter").count() == 2
    };
    test_support::eventually("both dead letters", Duration::from_secs(10), dead_letters).await;
    let audit = store.audit_log().await.unwrap();
    let dead: Vec<_> = audit.iter().filter(|r| r.kind == "interconnect.dead_letter").collect();
    assert_eq!(dead.len(), 2, "{audit:?}");
    assert!(dead[0].detail.contains("reported=unknown_recipient"), "{dead:?}");
    assert!(dead[1].detail.contains("reported=peer_unreachable"), "{dead:?}");
    assert!(
        !audit.iter().any(|r| r.detail.contains("447700900099")),
        "no number in the audit log"
    );
    pair.a.gw.stop().await;
    pair.b.gw.stop().await;
}
