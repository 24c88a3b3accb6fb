//! Faults between two carrier processes: while A keeps sending to a subscriber of B, B is
//! killed with `kill -9` several times, the link is cut and slowed by a proxy, and A itself is
//! killed once. After recovery every send A acknowledged is in B's mailbox exactly once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use relay_client::{Client, Recipient};
use test_support::faulty_proxy::{FaultyProxy, Mode};
use test_support::pki::RcgenCa;

use crate::process::{KeepOnPanic, spawn_gateway_with};
use test_support::process::{Proc, free_port};

pub(crate) fn interconnect_toml(
    listen: u16,
    domain: &str,
    leaf: &test_support::pki::Leaf,
    peers: &std::path::Path,
    local: &str,
) -> String {
    format!(
        "[interconnect]\nlisten = \"127.0.0.1:{listen}\"\ndomain = \"{domain}\"\njurisdiction = \"US\"\ncert = \"{}\"\nkey = \"{}\"\npeers_file = \"{}\"\nlocal_prefixes = [\"{local}\"]\nbackoff_base_ms = 50\nbackoff_cap_secs = 1\nrequest_timeout_secs = 3\n",
        leaf.cert.display(),
        leaf.key.display(),
        peers.display(),
    )
}

pub(crate) fn peer_toml(name: &str, domain: &str, port: u16, ca: &std::path::Path, prefix: &str) -> String {
    format!(
        "[[peer]]\nname = \"{name}\"\ndomain = \"{domain}\"\nendpoint = \"https://localhost:{port}\"\nca = \"{}\"\nprefixes = [\"{prefix}\"]\njurisdiction = \"US\"\n",
        ca.display()
    )
}

/// A series of A's metrics (0 until it exists).
pub(crate) async fn metric(admin: u16, series: &str) -> f64 {
    test_support::admin_request(([127, 0, 0, 1], admin).into(), "GET", "/metrics")
        .await
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

const DELIVERED: &str = "interconnect_deliveries_total{peer=\"b\",result=\"delivered\"}";
const RETRIES: &str = "interconnect_retries_total{peer=\"b\"}";

/// Waits (bounded) until A's `series` grows by more than `by` from now.
async fn grows(admin: u16, series: &str, by: f64, what: &str) {
    let start = metric(admin, series).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(admin, series).await <= start + by {
        assert!(Instant::now() < deadline, "{what}: {series} stayed at {start}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn outbox_depth(admin: u16) -> Option<f64> {
    test_support::admin_request(([127, 0, 0, 1], admin).into(), "GET", "/metrics")
        .await?
        .lines()
        .find_map(|l| l.strip_prefix("interconnect_outbox_depth{peer=\"b\"} "))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_sends_arrive_exactly_once_across_kills_and_cuts() {
    let dir = tempfile::tempdir().unwrap();
    let keep = KeepOnPanic(dir.path().to_path_buf());
    let ca = RcgenCa::new(&dir.path().join("pki"), "carriers");
    let leaf_a = ca.issue("a", "carrier-a.test", 1, None);
    let leaf_b = ca.issue("b", "carrier-b.test", 2, None);
    let (a_ic, b_ic) = (free_port(), free_port());
    let (data_a, data_b) = (dir.path().join("a"), dir.path().join("b"));
    let (log_a, log_b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let (peers_a, peers_b) = (dir.path().join("peers-a.toml"), dir.path().join("peers-b.toml"));
    let proxy = FaultyProxy::start(([127, 0, 0, 1], b_ic).into()).await;
    std::fs::write(
        &peers_a,
        peer_toml("b", "carrier-b.test", proxy.addr.port(), &ca.cert, "+4477"),
    )
    .unwrap();
    std::fs::write(&peers_b, peer_toml("a", "carrier-a.test", a_ic, &ca.cert, "+1555")).unwrap();
    let toml_a = interconnect_toml(a_ic, "carrier-a.test", &leaf_a, &peers_a, "+1555");
    let toml_b = interconnect_toml(b_ic, "carrier-b.test", &leaf_b, &peers_b, "+4477");
    let start_a = || spawn_gateway_with(&data_a, &log_a, &[], &toml_a);
    let start_b = || spawn_gateway_with(&data_b, &log_b, &[], &toml_b);

    let a = start_a().await;
    let b = start_b().await;
    // Each says it peers, with whom, and where (the start-up summary and the listener).
    for log in [&log_a, &log_b] {
        let text = std::fs::read_to_string(log).unwrap();
        assert!(
            text.contains("interconnect listening") && text.contains("peers=1"),
            "{text}"
        );
    }
    let alice = a
        .client()
        .register(&test_support::provision_token(&data_a, "tel:+15550100001", 600_000))
        .await
        .unwrap()
        .credential;
    let bob = b
        .client()
        .register(&test_support::provision_token(&data_b, "tel:+447700900001", 600_000))
        .await
        .unwrap()
        .credential;

    // The sender: one message at a time, recording which were acknowledged.
    let sender: Arc<Mutex<Client>> = Arc::new(Mutex::new(a.client().with_credential(alice.clone())));
    let acked: Arc<Mutex<Vec<Bytes>>> = Arc::default();
    let attempted: Arc<Mutex<Vec<Bytes>>> = Arc::default();
    let running = Arc::new(AtomicBool::new(true));
    let send_task = {
        let (sender, acked, attempted, running) = (
            Arc::clone(&sender),
            Arc::clone(&acked),
            Arc::clone(&attempted),
            Arc::clone(&running),
        );
        tokio::spawn(async move {
            let mut i = 0u32;
            while running.load(Ordering::Relaxed) && i < 2_000 {
                let m = test_support::framed_message(format!("fault-{i}").as_bytes());
                i += 1;
                attempted.lock().unwrap().push(m.clone());
                let c = sender.lock().unwrap().clone();
                match c
                    .send(&[Recipient::address("tel:+447700900001")], m.clone(), None, false)
                    .await
                {
                    Ok(_) => acked.lock().unwrap().push(m),
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    // Faults, bounded, each fired while deliveries are flowing (A's delivered counter is
    // rising) and each shown to bite (A retries): three kill -9 cycles of B, a cut, a link
    // slower than A's 3 s request timeout, one kill -9 of A.
    let mut b: Proc = b;
    for _ in 0..3 {
        grows(a.admin, DELIVERED, 5.0, "deliveries before killing B").await;
        b.kill9();
        grows(a.admin, RETRIES, 0.0, "A retries while B is down").await;
        b = start_b().await;
    }
    grows(a.admin, DELIVERED, 5.0, "deliveries before the cut").await;
    proxy.set(Mode::Drop);
    grows(a.admin, RETRIES, 0.0, "A retries across the cut").await;
    proxy.set_delay(Duration::from_millis(2_000));
    proxy.set(Mode::Pass);
    grows(a.admin, DELIVERED, 5.0, "deliveries before the slow link").await;
    proxy.set(Mode::Delay);
    // 2 s per chunk each way: a delivery cannot finish inside the 3 s timeout.
    grows(a.admin, RETRIES, 0.0, "A times out on the slow link and retries").await;
    proxy.set(Mode::Pass);
    grows(a.admin, DELIVERED, 5.0, "deliveries before killing A").await;
    a.kill9();
    let a = start_a().await;
    *sender.lock().unwrap() = a.client().with_credential(alice.clone());
    // Sends are acknowledged again by the restarted A before the load stops.
    let resumed = acked.lock().unwrap().len();
    test_support::eventually(
        "sends acknowledged after A's restart",
        Duration::from_secs(30),
        async || acked.lock().unwrap().len() >= resumed + 20,
    )
    .await;
    running.store(false, Ordering::Relaxed);
    send_task.await.unwrap();

    // Recovery: A's outbox drains to B.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if outbox_depth(a.admin).await == Some(0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "A's outbox did not drain");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The gauge is sampled each second: wait for a sample after the last delivery.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(outbox_depth(a.admin).await, Some(0.0));

    let bob = b.client().with_credential(bob);
    let mut seen: HashMap<Bytes, usize> = HashMap::new();
    let mut cursor = 0;
    loop {
        let page = bob.receive(cursor, 1000, 0).await.unwrap();
        for e in &page.envelopes {
            *seen.entry(e.message.clone()).or_default() += 1;
        }
        cursor = page.next_cursor;
        if page.queue_empty {
            break;
        }
    }
    let acked = acked.lock().unwrap().clone();
    let attempted = attempted.lock().unwrap().clone();
    assert!(
        acked.len() > 50,
        "too few acknowledged sends to mean anything: {}",
        acked.len()
    );
    for m in &acked {
        assert_eq!(
            seen.get(m),
            Some(&1),
            "an acknowledged send is not in B's mailbox exactly once"
        );
    }
    for (m, n) in &seen {
        assert!(attempted.contains(m), "B holds something never sent");
        assert_eq!(*n, 1, "delivered twice");
    }
    eprintln!(
        "fault test: {} attempted, {} acknowledged, {} delivered",
        attempted.len(),
        acked.len(),
        seen.len()
    );
    a.kill9();
    b.kill9();
    drop(keep);
}
