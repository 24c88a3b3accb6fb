//! The failover drill: two gateway nodes on a three-node Patroni + etcd cluster, a client
//! sending continuously through both (retrying with its client message id, as clients do),
//! the PostgreSQL primary killed twice (`SIGKILL`, Patroni with it, so the cluster fails
//! over), then a gateway node killed: every acknowledged send is received exactly once.
//! The outages are printed (`failover outage`) for the note.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use relay_client::{Client, Recipient};
use test_support::patroni::Cluster;

use crate::nodes::node_dir;

/// What the sender saw: the acknowledged sequence numbers and when each was acknowledged.
#[derive(Default)]
struct Acked {
    ns: Vec<u32>,
    at: Vec<Instant>,
}

/// Waits until `more` sends beyond now were acknowledged.
async fn acks_grow(acked: &Arc<Mutex<Acked>>, more: usize, what: &str) {
    let start = acked.lock().unwrap().ns.len();
    test_support::eventually(what, Duration::from_secs(120), async || {
        acked.lock().unwrap().ns.len() >= start + more
    })
    .await;
}

/// The longest time without an acknowledgement since `since`.
fn outage(acked: &Mutex<Acked>, since: Instant) -> Duration {
    let a = acked.lock().unwrap();
    let mut last = since;
    let mut worst = Duration::ZERO;
    for t in a.at.iter().filter(|t| **t >= since) {
        worst = worst.max(t.duration_since(last));
        last = *t;
    }
    worst
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_drill_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let _keep = crate::process::KeepOnPanic(dir.path().to_path_buf());
    let mut cluster = tokio::task::block_in_place(|| Cluster::start(&dir.path().join("patroni")));
    let toml = format!(
        "[storage]\nbackend = \"postgres\"\n[storage.postgres]\nurl = \"{}\"\npool_size = 4\nstatement_timeout_ms = 2000\nconnect_timeout_ms = 1000\n",
        cluster.url()
    );
    let a_dir = node_dir(dir.path(), "a", None);
    let a = crate::process::spawn_gateway_with(&a_dir, &dir.path().join("a.log"), &[], &toml).await;
    let b_dir = node_dir(dir.path(), "b", Some(&a_dir));
    let b = crate::process::spawn_gateway_with(&b_dir, &dir.path().join("b.log"), &[], &toml).await;
    const ALICE: &str = "tel:+15550180001";
    const BOB: &str = "tel:+15550180002";
    let token = |address: &str| test_support::provision_token(&a_dir, address, 3_600_000);
    let alice_cred = a.client().register(&token(ALICE)).await.unwrap().credential;
    let bob = a
        .client()
        .with_credential(a.client().register(&token(BOB)).await.unwrap().credential);
    let nodes: Vec<Client> = vec![
        a.client().with_credential(&alice_cred),
        b.client().with_credential(&alice_cred),
    ];

    let acked = Arc::new(Mutex::new(Acked::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let (acked, stop) = (Arc::clone(&acked), Arc::clone(&stop));
        tokio::spawn(async move {
            let to = [Recipient::address(BOB)];
            // A paced client: one attempt (a retry included) every 10 ms at most, so a
            // failover's run of 503s is not a busy loop.
            let mut pace = tokio::time::interval(Duration::from_millis(10));
            pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let message = test_support::framed_message(format!("m-{n}").as_bytes());
                let mut cmid = [0u8; 16];
                cmid[..4].copy_from_slice(&n.to_be_bytes());
                // Until acknowledged: the same message and id, through either node.
                let mut attempt = 0usize;
                loop {
                    pace.tick().await;
                    let via = &nodes[(n as usize + attempt) % 2];
                    if via.send(&to, message.clone(), Some(cmid), false).await.is_ok() {
                        break;
                    }
                    attempt += 1;
                }
                let mut a = acked.lock().unwrap();
                a.ns.push(n);
                a.at.push(Instant::now());
                n += 1;
            }
        })
    };

    acks_grow(&acked, 50, "sends before the first failover").await;
    let mut outages = Vec::new();
    for round in 0..2 {
        let since = Instant::now();
        let killed = tokio::task::block_in_place(|| cluster.kill_leader());
        acks_grow(&acked, 50, "sends after the primary was killed").await;
        outages.push(outage(&acked, since));
        eprintln!("failover outage, round {round}: {:?} (killed {killed})", outages[round]);
        tokio::task::block_in_place(|| {
            cluster.restart(&killed);
            cluster.wait_healthy(Duration::from_secs(120));
        });
    }
    let since = Instant::now();
    b.kill9();
    acks_grow(&acked, 50, "sends after a gateway node was killed").await;
    eprintln!("gateway node outage: {:?}", outage(&acked, since));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sender.await.unwrap();

    let want: Vec<u32> = acked.lock().unwrap().ns.clone();
    eprintln!("failover drill: {} sends acknowledged", want.len());
    let mut got = Vec::new();
    let mut cursor = 0;
    loop {
        let page = bob.receive(cursor, 500, 0).await.unwrap();
        got.extend(page.envelopes.iter().map(|e| e.message.clone()));
        cursor = page.next_cursor;
        if page.queue_empty {
            break;
        }
    }
    let want_messages: Vec<_> = want
        .iter()
        .map(|n| test_support::framed_message(format!("m-{n}").as_bytes()))
        .collect();
    assert_eq!(
        got.len(),
        want_messages.len(),
        "received {} of {} acknowledged",
        got.len(),
        want.len()
    );
    assert_eq!(got, want_messages, "every acknowledged send, once, in order");
}
