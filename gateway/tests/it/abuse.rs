//! The limits keyed by what an attacker can mint (DESIGN §5 and issue 17): messages per
//! (sender, recipient), bytes into a recipient, failed authentications and registrations per
//! source address. Each answers 429 with `Retry-After` and its own code, stores nothing,
//! and leaves other senders, recipients and addresses alone.

use std::time::Instant;

use relay_client::{Client, ClientError, ConnectOptions, Protocol, Recipient, Trust};
use test_support::{TestGateway, framed_message};

const ALICE: &str = "tel:+15550110001";
const BOB: &str = "tel:+15550110002";
const CAROL: &str = "tel:+15550110003";
const DAVE: &str = "tel:+15550110004";

/// The code and `Retry-After` of a 429, or a panic.
fn limited(e: &ClientError) -> (String, u64) {
    match e {
        ClientError::Api {
            status: 429,
            code,
            retry_after,
            ..
        } => (code.clone(), retry_after.expect("a 429 says when to retry")),
        other => panic!("expected a 429, got {other}"),
    }
}

async fn metric(gw: &TestGateway, series: &str) -> f64 {
    crate::limits::metric(gw, series).await
}

/// A client of `gw` connecting from `source` (another loopback address: another client).
fn client_from(gw: &TestGateway, source: &str) -> Client {
    let options = ConnectOptions {
        local: Some(source.parse().unwrap()),
        resolve: None,
    };
    Client::connect_with(&gw.url(), Trust::CaFile(gw.ca()), Protocol::Http2, options).unwrap()
}

/// Sends until refused; returns (accepted, the refusal).
async fn send_until_refused(from: &Client, to: &str, max: usize) -> (usize, ClientError) {
    for accepted in 0..max {
        let m = framed_message(format!("spam {accepted}").as_bytes());
        if let Err(e) = from.send(&[Recipient::address(to)], m, None, false).await {
            return (accepted, e);
        }
    }
    panic!("{max} sends to {to} and no refusal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sender_to_one_recipient_is_limited_and_nobody_else_is() {
    let gw = TestGateway::start_with(|c| {
        c.rate_limit.sender_recipient_burst = 5;
        c.rate_limit.sender_recipient_per_second = 1;
    })
    .await;
    let (alice, _) = gw.device(ALICE).await;
    let (_bob, _) = gw.device(BOB).await;
    let (_carol, _) = gw.device(CAROL).await;
    let (dave, _) = gw.device(DAVE).await;
    let started = Instant::now();
    let (accepted, refusal) = send_until_refused(&alice, BOB, 100).await;
    let refills = started.elapsed().as_secs() as usize;
    assert!(
        (5..=5 + refills + 1).contains(&accepted),
        "{accepted} accepted in {refills} s"
    );
    let (code, retry) = limited(&refusal);
    assert_eq!(code, "sender_recipient_limited");
    assert_eq!(retry, 1);
    // Nothing was stored for the refused send.
    let before = gw.stats().await;
    let refused = alice
        .send(&[Recipient::address(BOB)], framed_message(b"refused"), None, false)
        .await;
    assert_eq!(limited(&refused.unwrap_err()).0, "sender_recipient_limited");
    assert_eq!(gw.stats().await.blobs, before.blobs);
    // The same sender to someone else, and someone else to the same recipient, go through.
    alice
        .send(&[Recipient::address(CAROL)], framed_message(b"to carol"), None, false)
        .await
        .unwrap();
    dave.send(&[Recipient::address(BOB)], framed_message(b"dave to bob"), None, false)
        .await
        .unwrap();
    // A list naming the limited recipient is refused whole: nothing for Carol either.
    let mixed = alice
        .send(
            &[Recipient::address(CAROL), Recipient::address(BOB)],
            framed_message(b"mixed"),
            None,
            false,
        )
        .await;
    assert_eq!(limited(&mixed.unwrap_err()).0, "sender_recipient_limited");
    assert!(metric(&gw, r#"relay_requests_limited_total{limit="sender_recipient"}"#).await >= 3.0);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_into_one_recipient_are_limited_whoever_sends_them() {
    let gw = TestGateway::start_with(|c| {
        c.limits.max_envelope_bytes = 4096;
        // Three 3,000-byte envelopes, and practically no refill.
        c.rate_limit.recipient_bytes_burst = 10_000;
        c.rate_limit.recipient_bytes_per_second = 1;
    })
    .await;
    let (alice, _) = gw.device(ALICE).await;
    let (dave, _) = gw.device(DAVE).await;
    let (bob, _) = gw.device(BOB).await;
    let (carol, _) = gw.device(CAROL).await;
    let big = |tag: &str| framed_message(format!("{tag}{}", "x".repeat(2_950)).as_bytes());
    assert!((2_900..3_400).contains(&big("a").len()));
    for (i, from) in [&alice, &dave, &alice].into_iter().enumerate() {
        from.send(&[Recipient::address(BOB)], big(&i.to_string()), None, false)
            .await
            .unwrap();
    }
    let refused = dave
        .send(&[Recipient::address(BOB)], big("over"), None, false)
        .await
        .unwrap_err();
    let (code, retry) = limited(&refused);
    assert_eq!(code, "recipient_inbound_limited");
    assert!(retry > 1_000, "about 2,000 bytes short at 1 B/s: {retry} s");
    // Carol still receives; Bob still has exactly the three.
    alice
        .send(&[Recipient::address(CAROL)], big("carol"), None, false)
        .await
        .unwrap();
    assert_eq!(carol.receive(0, 10, 0).await.unwrap().envelopes.len(), 1);
    assert_eq!(bob.receive(0, 10, 0).await.unwrap().envelopes.len(), 3);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_are_limited_per_address_before_any_lookup() {
    let gw = TestGateway::start_with(|c| {
        c.rate_limit.failed_auth_burst = 5;
        c.rate_limit.failed_auth_refill_secs = 600;
    })
    .await;
    // A real credential, registered from another address.
    let good = client_from(&gw, "127.0.0.3");
    let reg = good.register(&gw.provision(ALICE)).await.unwrap();
    let guesser = client_from(&gw, "127.0.0.2");
    let wrong = guesser.with_credential("rc1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    for i in 0..5 {
        let e = wrong.receive(0, 1, 0).await.unwrap_err();
        assert_eq!(e.status(), Some(401), "guess {i}: {e}");
    }
    let lookups = gw.state().credential_lookups();
    assert!(lookups >= 5, "each guess so far was looked up: {lookups}");
    let e = wrong.receive(0, 1, 0).await.unwrap_err();
    let (code, retry) = limited(&e);
    assert_eq!(code, "too_many_failed_auth");
    assert!((100..=600).contains(&retry), "{retry}");
    // From that address even a good credential waits (telling it from a guess would take
    // the lookup the limit is there to save).
    let same_address = guesser.with_credential(reg.credential.clone());
    assert_eq!(
        limited(&same_address.receive(0, 1, 0).await.unwrap_err()).0,
        "too_many_failed_auth"
    );
    for _ in 0..20 {
        assert_eq!(
            limited(&wrong.receive(0, 1, 0).await.unwrap_err()).0,
            "too_many_failed_auth"
        );
    }
    assert_eq!(
        gw.state().credential_lookups(),
        lookups,
        "no storage read for a limited address"
    );
    // Another address is unaffected (and its request is looked up).
    good.with_credential(reg.credential).receive(0, 1, 0).await.unwrap();
    assert_eq!(gw.state().credential_lookups(), lookups + 1);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_are_limited_per_address() {
    let gw = TestGateway::start_with(|c| {
        c.rate_limit.registration_burst = 3;
        c.rate_limit.registration_refill_secs = 600;
    })
    .await;
    let farm = client_from(&gw, "127.0.0.4");
    for i in 0..3 {
        farm.register(&gw.provision(&format!("tel:+1555011100{i}")))
            .await
            .unwrap();
    }
    let devices_before = gw.stats().await;
    let e = farm.register(&gw.provision("tel:+15550111009")).await.unwrap_err();
    let (code, retry) = limited(&e);
    assert_eq!(code, "registration_rate_limited");
    assert!(retry > 100, "{retry}");
    assert_eq!(gw.stats().await.devices, devices_before.devices, "nothing registered");
    client_from(&gw, "127.0.0.5")
        .register(&gw.provision("tel:+15550111009"))
        .await
        .unwrap();
    gw.stop().await;
}

/// The queue-flush attack: one sender writing a recipient's queue full would trim the
/// recipient's older envelopes. With the sender's share of a queue limited (25%, within
/// an envelope lifetime at most half a queue), one sender alone can never fill it: its
/// sends are refused (429 `sender_share_exceeded`) and everything before stays. The control
/// run without the share limit shows the attack working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sender_cannot_flush_a_recipients_queue() {
    async fn attack(share_percent: u32) -> (Vec<bytes::Bytes>, u64, Option<String>) {
        let gw = TestGateway::start_with(|c| {
            c.limits.max_envelope_bytes = 4096;
            c.limits.max_queue_bytes_per_device = 100_000;
            c.rate_limit.sender_queue_share_percent = share_percent;
        })
        .await;
        let (alice, _) = gw.device(ALICE).await;
        let (mallory, _) = gw.device(DAVE).await;
        let (bob, _) = gw.device(BOB).await;
        let big = |tag: String| framed_message(format!("{tag}{}", "x".repeat(2_950)).as_bytes());
        let mut legit = Vec::new();
        for i in 0..3 {
            let m = big(format!("legit {i}"));
            alice
                .send(&[Recipient::address(BOB)], m.clone(), None, false)
                .await
                .unwrap();
            legit.push(m);
        }
        // Mallory sends 60 envelopes (180 KB against a 100 KB queue), as many as allowed.
        let mut refusal = None;
        for i in 0..60 {
            match mallory
                .send(&[Recipient::address(BOB)], big(format!("spam {i}")), None, false)
                .await
            {
                Ok(_) => {}
                Err(e) => {
                    refusal = Some(limited(&e).0);
                    break;
                }
            }
        }
        let page = bob.receive(0, 1000, 0).await.unwrap();
        let dropped = page.envelopes.iter().map(|e| e.dropped).sum();
        let kept = page
            .envelopes
            .into_iter()
            .map(|e| e.message)
            .filter(|m| legit.contains(m))
            .collect();
        gw.stop().await;
        (kept, dropped, refusal)
    }

    let (kept, dropped, refusal) = attack(25).await;
    assert_eq!(refusal.as_deref(), Some("sender_share_exceeded"));
    assert_eq!(kept.len(), 3, "every earlier legitimate envelope is still queued");
    assert_eq!(dropped, 0, "nothing was trimmed");

    // Control: without the share limit the same sender flushes the queue.
    let (kept, dropped, refusal) = attack(0).await;
    assert_eq!(refusal, None);
    assert!(
        dropped > 0 && kept.len() < 3,
        "the attack works without the limit: kept {}",
        kept.len()
    );
}
