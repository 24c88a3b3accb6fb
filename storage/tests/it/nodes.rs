//! PostgreSQL only: several stores (nodes) on one database share wake-ups, live receivers,
//! operator controls and rate limits; an outage is an error, not a hang, and passes.

use std::time::Duration;

use storage::prelude::*;
use storage::{DeviceId, Storage, StoreError, switch};

use crate::contract::{NOW, msg, new_device, rid, send_req};
use crate::{Harness, Postgres};

/// A second node on the harness's database.
async fn second(h: &Postgres) -> Storage {
    Storage::open(&h.config()).await.unwrap()
}

/// Waits (bounded) until `cond` holds.
async fn eventually(what: &str, cond: impl AsyncFnMut() -> bool) {
    crate::wait::eventually(what, Duration::from_secs(10), cond).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_on_one_node_wakes_a_receiver_on_another() {
    let h = Postgres::new();
    let (a, b) = (h.store(), second(&h).await);
    let r = rid(1);
    let d = a.register_device(new_device(r, 1).0).await.unwrap();
    let sub = b.watchers().subscribe((r, d));
    // Once B listens (its listener is up when a notification reaches it), a send on A
    // must wake B's receiver within the wait below.
    let woke = async {
        loop {
            let notified = sub.notify().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !b.receive(r, d, 0, 10, NOW).await.unwrap().envelopes.is_empty() {
                return;
            }
            notified.await;
        }
    };
    let send = async {
        // Another node's send: B hears of it only through the database.
        a.send(send_req(&[r], msg("cross"))).await.unwrap();
    };
    let ((), ()) = tokio::time::timeout(Duration::from_secs(5), async { tokio::join!(woke, send) })
        .await
        .expect("node B's receiver was not woken by node A's send");
    // An ack on B is seen on A.
    let page = b.receive(r, d, 0, 10, NOW).await.unwrap();
    b.ack(
        r,
        d,
        storage::Ack {
            up_to: Some(page.next_cursor),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(a.receive(r, d, 0, 10, NOW).await.unwrap().envelopes.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_receivers_controls_and_rate_limits_are_shared() {
    let h = Postgres::new();
    let (a, b) = (h.store(), second(&h).await);
    let key = (rid(2), DeviceId(1));
    assert!(!a.live_elsewhere(key).await);
    let sub = b.watchers().subscribe(key);
    eventually("A to see B's receiver", async || a.live_elsewhere(key).await).await;
    assert!(!b.live_elsewhere(key).await, "a node's own receivers are not elsewhere");
    drop(sub);
    eventually("B's receiver to leave", async || !a.live_elsewhere(key).await).await;

    // A kill switch set on A holds on B.
    a.set_switch(switch::REGISTRATION, true, NOW).await.unwrap();
    eventually("the switch to reach B", async || {
        b.is_switched_off(switch::REGISTRATION)
    })
    .await;
    a.set_switch(switch::REGISTRATION, false, NOW).await.unwrap();
    eventually("the switch to come back on at B", async || {
        !b.is_switched_off(switch::REGISTRATION)
    })
    .await;

    // Three at once per minute, counted across both nodes.
    let period = Duration::from_secs(60);
    let mut allowed = 0;
    for node in [a, &b, a, &b, a, &b] {
        if node.shared_rate(b"claims:x", period, 3).await.unwrap().is_none() {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 3);
    let wait = b.shared_rate(b"claims:x", period, 3).await.unwrap().unwrap();
    assert!(wait > Duration::from_secs(50) && wait <= period, "{wait:?}");
    assert!(
        a.shared_rate(b"claims:y", period, 3).await.unwrap().is_none(),
        "keys are separate"
    );
    // A larger burst is taken in chunks and spent locally: across both nodes the budget is
    // never exceeded, and at most one unspent chunk per node is lost to it.
    let mut allowed = 0;
    for n in 0..60 {
        let node = if n % 2 == 0 { a } else { &b };
        if node.shared_rate(b"credential:z", period, 40).await.unwrap().is_none() {
            allowed += 1;
        }
    }
    assert!((32..=40).contains(&allowed), "{allowed} of a burst of 40");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_unavailable_not_a_hang_and_passes() {
    let mut h = Postgres::new();
    let r = rid(3);
    let d = h.store().register_device(new_device(r, 1).0).await.unwrap();
    h.server.kill();
    let started = std::time::Instant::now();
    let err = h.store().send(send_req(&[r], msg("down"))).await.unwrap_err();
    assert!(
        matches!(err, storage::SendError::Store(StoreError::Unavailable(_))),
        "{err:?}"
    );
    assert!(h.store().ready().await.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "it hung: {:?}",
        started.elapsed()
    );
    // A new node cannot start without its database: a clear error.
    let open = Storage::open(&h.config()).await.unwrap_err();
    assert!(matches!(open, StoreError::Unavailable(_)), "{open:?}");
    assert!(open.to_string().contains("unavailable"), "{open}");

    tokio::task::block_in_place(|| h.server.restart());
    eventually("the store to recover", async || h.store().ready().await.is_ok()).await;
    h.store().send(send_req(&[r], msg("back"))).await.unwrap();
    let page = h.store().receive(r, d, 0, 10, NOW).await.unwrap();
    assert_eq!(
        page.envelopes.len(),
        1,
        "what was acknowledged before is there, and the new one"
    );
}

/// Senders on both nodes race to one device while its receiver pages by cursor and
/// acknowledges up to it: every envelope is read exactly once and none is left behind the
/// cursor (a send committed after a later one was read would be skipped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_paging_by_cursor_never_skips_a_late_commit() {
    let h = Postgres::new();
    let b = second(&h).await;
    let r = rid(4);
    let d = h.store().register_device(new_device(r, 1).0).await.unwrap();
    let mut senders = tokio::task::JoinSet::new();
    for t in 0..4u8 {
        let node = if t % 2 == 0 { h.store().clone() } else { b.clone() };
        senders.spawn(async move {
            for n in 0..50 {
                node.send(send_req(&[r], msg(&format!("{t}-{n}")))).await.unwrap();
            }
        });
    }
    let (a, mut cursor) = (h.store().clone(), 0);
    let mut seen = std::collections::HashSet::new();
    loop {
        let done = senders.is_empty();
        let page = a.receive(r, d, cursor, 7, NOW).await.unwrap();
        for e in &page.envelopes {
            assert!(seen.insert(e.message.as_bytes().clone()), "read twice");
        }
        if page.next_cursor > cursor {
            cursor = page.next_cursor;
            a.ack(
                r,
                d,
                storage::Ack {
                    up_to: Some(cursor),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        }
        while let Some(joined) = senders.try_join_next() {
            joined.unwrap();
        }
        if done && page.queue_empty {
            break;
        }
    }
    let left = a.receive(r, d, 0, 500, NOW).await.unwrap();
    assert!(
        left.envelopes.is_empty(),
        "{} envelopes left behind the cursor",
        left.envelopes.len()
    );
    assert_eq!(seen.len(), 200);
}

/// A standby (read-only) server is refused at open, saying how to reach the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_server_is_refused_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let server = crate::pg_server::Postgres::start(&dir.path().join("pg"));
    server.psql("ALTER SYSTEM SET default_transaction_read_only = on");
    server.psql("SELECT pg_reload_conf()");
    let config = storage::StorageConfig::Postgres(storage::PostgresConfig::new(server.url()));
    let err = Storage::open(&config).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Unavailable(m) if m.contains("read-only") && m.contains("target_session_attrs")),
        "{err}"
    );
}
