use std::time::Duration;

use bytes::Bytes;
use relay_client::{Client, Protocol, Recipient};
use test_support::TestGateway;
use test_support::mls::{Member, Processed};

const ALICE: &str = "tel:+15550100001";
const BOB: &str = "tel:+15550100002";
const CAROL: &str = "tel:+15550100003";

/// Receives everything queued for `c`, acknowledges it, returns the message bytes.
async fn drain(c: &Client) -> Vec<Bytes> {
    let page = c.receive(0, 1000, 0).await.unwrap();
    assert!(page.queue_empty);
    if let Some(last) = page.envelopes.last() {
        c.ack(&[], Some(last.seq)).await.unwrap();
    }
    page.envelopes.into_iter().map(|e| e.message).collect()
}

async fn send(c: &Client, to: &[&str], m: &Bytes) {
    let r: Vec<_> = to.iter().map(|a| Recipient::address(*a)).collect();
    let resp = c.send(&r, m.clone(), None, false).await.unwrap();
    assert_eq!(resp.server_id.len(), 16);
}

/// A group of three driven by openmls: Welcome, commits and application messages all
/// pass through the gateway byte-for-byte.
async fn mls_group_of_three_round_trip(p: Protocol) {
    let gw = TestGateway::start().await.speaking(p);
    let (a, _) = gw.device(ALICE).await;
    let (b, _) = gw.device(BOB).await;
    let (c, _) = gw.device(CAROL).await;
    let mut alice = Member::new(ALICE);
    let mut bob = Member::new(BOB);
    let mut carol = Member::new(CAROL);

    // Bob and Carol publish KeyPackages; Alice claims them from the directory.
    b.upload_key_packages(&[bob.key_package_bytes()]).await.unwrap();
    c.upload_key_packages(&[carol.key_package_bytes()]).await.unwrap();
    let claimed = a.claim_key_packages(&[BOB, CAROL]).await.unwrap();
    assert_eq!(claimed.len(), 2);
    let kps: Vec<_> = claimed
        .iter()
        .map(|k| alice.verify_key_package(&k.key_package))
        .collect();
    alice.create_group();
    let (commit, welcome) = alice.add(&kps);
    // The creator is alone at epoch 0: the commit goes to the DS only, to set the epoch.
    let accepted = a.send(&[], commit, None, false).await.unwrap();
    assert_eq!(accepted.accepted_epoch, Some(0));
    // The Welcome names the claimed KeyPackages; the DS routes it with no recipient list.
    let routed = a.send(&[], welcome.clone(), None, false).await.unwrap();
    assert_eq!(routed.recipient_devices, 2, "one Welcome reaches every new member");
    for (client, member) in [(&b, &mut bob), (&c, &mut carol)] {
        let got = drain(client).await;
        assert_eq!(got, vec![welcome.clone()], "Welcome arrives byte-identical");
        assert_eq!(member.process(&got[0]), Processed::Joined);
    }

    let hello = alice.encrypt(b"hello from alice");
    send(&a, &[BOB, CAROL], &hello).await;
    for (client, member) in [(&b, &mut bob), (&c, &mut carol)] {
        let got = drain(client).await;
        assert_eq!(got, vec![hello.clone()]);
        assert_eq!(
            member.process(&got[0]),
            Processed::Application(b"hello from alice".to_vec())
        );
    }

    let update = bob.update();
    send(&b, &[ALICE, CAROL], &update).await;
    for (client, member) in [(&a, &mut alice), (&c, &mut carol)] {
        let got = drain(client).await;
        assert_eq!(got, vec![update.clone()]);
        assert_eq!(member.process(&got[0]), Processed::Commit);
    }

    let from_carol = carol.encrypt(b"carol here");
    send(&c, &[ALICE, BOB], &from_carol).await;
    for (client, member) in [(&a, &mut alice), (&b, &mut bob)] {
        let got = drain(client).await;
        assert_eq!(member.process(&got[0]), Processed::Application(b"carol here".to_vec()));
    }

    let leaf = alice.leaf_of(CAROL);
    let remove = alice.remove(leaf);
    send(&a, &[BOB, CAROL], &remove).await;
    let got = drain(&b).await;
    assert_eq!(bob.process(&got[0]), Processed::Commit);
    assert_eq!(drain(&c).await, vec![remove.clone()]);
    assert_eq!(alice.epoch(), bob.epoch());

    let last = alice.encrypt(b"just us");
    send(&a, &[BOB], &last).await;
    let got = drain(&b).await;
    assert_eq!(bob.process(&got[0]), Processed::Application(b"just us".to_vec()));

    let stats = gw.stats().await;
    assert_eq!(
        (stats.blobs, stats.mailbox_entries),
        (0, 0),
        "acknowledged envelopes are deleted"
    );
    gw.stop().await;
}

/// One send to many recipients stores the message bytes once.
async fn fan_out_stores_bytes_once(p: Protocol) {
    let gw = TestGateway::start().await.speaking(p);
    let (sender, _) = gw.device("tel:+15550200000").await;
    let mut recipients = Vec::new();
    for i in 0..200 {
        let addr = format!("tel:+1555030{i:04}");
        gw.device(&addr).await;
        recipients.push(Recipient::address(addr));
    }
    let message = test_support::framed_message(&[0x5a; 4096]);
    let resp = sender.send(&recipients, message.clone(), None, false).await.unwrap();
    assert_eq!(resp.recipient_devices, 200);
    let stats = gw.stats().await;
    assert_eq!(stats.blobs, 1);
    assert_eq!(stats.blob_bytes, message.len() as u64);
    assert_eq!(stats.mailbox_entries, 200);
    gw.stop().await;
}

/// A long-polling receiver is woken by a new envelope long before its timeout.
async fn live_receive_wakes_on_new_envelope(p: Protocol) {
    let gw = TestGateway::start().await.speaking(p);
    let (sender, _) = gw.device(ALICE).await;
    let (receiver, _) = gw.device(BOB).await;
    let started = std::time::Instant::now();
    let waiting = tokio::spawn(async move { receiver.receive(0, 10, 60).await.unwrap() });
    while gw.state().store().watchers().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let m = test_support::framed_message(b"wake up");
    sender
        .send(&[Recipient::address(BOB)], m.clone(), None, false)
        .await
        .unwrap();
    let page = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(page.envelopes.len(), 1);
    assert_eq!(page.envelopes[0].message, m);
    assert!(started.elapsed() < Duration::from_secs(30), "woken, not timed out");
    gw.stop().await;
}

/// A long-poll with nothing to deliver ends at its wait with `queue_empty`.
async fn long_poll_times_out_empty(p: Protocol) {
    let gw = TestGateway::start().await.speaking(p);
    let (receiver, _) = gw.device(BOB).await;
    let page = receiver.receive(0, 10, 1).await.unwrap();
    assert!(page.envelopes.is_empty() && page.queue_empty);
    gw.stop().await;
}

/// A retried send with the same client message id is stored once.
async fn retried_send_is_idempotent(p: Protocol) {
    let gw = TestGateway::start().await.speaking(p);
    let (a, _) = gw.device(ALICE).await;
    let (b, _) = gw.device(BOB).await;
    let m = test_support::framed_message(b"once");
    let to = [Recipient::address(BOB)];
    let first = a.send(&to, m.clone(), Some([7; 16]), false).await.unwrap();
    let again = a.send(&to, m.clone(), Some([7; 16]), false).await.unwrap();
    assert_eq!(first.server_id, again.server_id);
    assert!(again.duplicate);
    assert_eq!(b.receive(0, 10, 0).await.unwrap().envelopes.len(), 1);
    let other = test_support::framed_message(b"different");
    crate::assert_api_error(
        a.send(&to, other, Some([7; 16]), false).await,
        409,
        "client_message_id_conflict",
    );
    gw.stop().await;
}

/// Devices pick recipients' devices; delete removes a device and its queue; the
/// device cap holds.
async fn devices_targeting_delete_and_cap(p: Protocol) {
    let gw = TestGateway::start_with(|c| c.limits.max_devices_per_address = 2)
        .await
        .speaking(p);
    let (a, _) = gw.device(ALICE).await;
    let (b1, id1) = gw.device(BOB).await;
    let (b2, id2) = gw.device(BOB).await;
    crate::assert_api_error(gw.client().register(&gw.provision(BOB)).await, 403, "too_many_devices");
    let m = test_support::framed_message(b"only device 2");
    let to = [Recipient {
        address: BOB.into(),
        device_ids: vec![id2],
    }];
    a.send(&to, m, None, false).await.unwrap();
    assert!(b1.receive(0, 10, 0).await.unwrap().envelopes.is_empty());
    assert_eq!(b2.receive(0, 10, 0).await.unwrap().envelopes.len(), 1);
    b2.delete_device().await.unwrap();
    crate::assert_api_error(b2.receive(0, 10, 0).await, 401, "unauthorized");
    assert_eq!(gw.stats().await.blobs, 0);
    let to = [Recipient {
        address: BOB.into(),
        device_ids: vec![id2],
    }];
    crate::assert_api_error(
        a.send(&to, test_support::framed_message(b"x"), None, false).await,
        404,
        "unknown_device",
    );
    let _ = id1;
    gw.stop().await;
}

/// `/healthz` on both listeners; `/metrics` on the admin listener shows our series.
async fn health_and_metrics(p: Protocol) {
    let gw = TestGateway::start().await.speaking(p);
    gw.client().healthz().await.unwrap();
    let (a, _) = gw.device(ALICE).await;
    gw.device(BOB).await;
    a.send(
        &[Recipient::address(BOB)],
        test_support::framed_message(b"m"),
        None,
        false,
    )
    .await
    .unwrap();
    if p == Protocol::Http2 {
        let resp = gw
            .client()
            .raw(http::Method::GET, "/healthz", &[], Bytes::new())
            .await
            .unwrap();
        let alt_svc = resp.headers.get(http::header::ALT_SVC).unwrap().to_str().unwrap();
        assert_eq!(alt_svc, format!("h3=\":{}\"; ma=86400", gw.addr.port()));
    }
    let admin = admin_get(gw.admin_addr, "/healthz").await;
    assert!(admin.starts_with("HTTP/1.1 200"), "{admin}");
    let metrics = admin_get(gw.admin_addr, "/metrics").await;
    for series in [
        "relay_http_requests_total",
        "relay_http_request_duration_seconds",
        "relay_journal_group_records",
        "relay_journal_fsync_seconds",
        "relay_mailbox_ops_total",
    ] {
        assert!(metrics.contains(series), "{series} missing from /metrics");
    }
    assert!(metrics.contains("route=\"/v1/messages\""));
    let transport = if p == Protocol::Http3 { "h3" } else { "h2" };
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("relay_http_requests_total") && l.contains(&format!("transport=\"{transport}\""))),
        "requests are counted by transport"
    );
    gw.stop().await;
}

pub(crate) async fn admin_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

both_transports!(
    mls_group_of_three_round_trip,
    fan_out_stores_bytes_once,
    live_receive_wakes_on_new_envelope,
    long_poll_times_out_empty,
    retried_send_is_idempotent,
    devices_targeting_delete_and_cap,
    health_and_metrics
);

/// Send over one transport, receive over the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_transports() {
    let gw = TestGateway::start().await;
    for (send_over, receive_over) in [(Protocol::Http3, Protocol::Http2), (Protocol::Http2, Protocol::Http3)] {
        let a = gw.client_over(send_over).register(&gw.provision(ALICE)).await.unwrap();
        let b = gw.client_over(receive_over).register(&gw.provision(BOB)).await.unwrap();
        let sender = gw.client_over(send_over).with_credential(a.credential);
        let receiver = gw.client_over(receive_over).with_credential(b.credential);
        let waiting = tokio::spawn(async move { receiver.receive(0, 10, 30).await.unwrap() });
        let m = test_support::framed_message(format!("{send_over:?} to {receive_over:?}").as_bytes());
        let to = [Recipient {
            address: BOB.into(),
            device_ids: vec![b.device_id],
        }];
        sender.send(&to, m.clone(), None, false).await.unwrap();
        let page = waiting.await.unwrap();
        assert_eq!(page.envelopes[0].message, m);
    }
    gw.stop().await;
}
