//! Several gateway processes on one real PostgreSQL (started here): what one node stores,
//! another serves and wakes for; commits and one-time KeyPackages are decided once across
//! nodes; claim limits hold across them; the database's absence is a clear error at start
//! and a 503 with `Retry-After` (and `/healthz` not ready) while running, which passes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use relay_client::{ClientError, Recipient};
use test_support::mls::{Member, Processed};
use test_support::postgres::Postgres;
use test_support::process::Proc;

/// The TOML that puts a gateway on `pg`.
pub(crate) fn postgres_toml(pg: &Postgres, extra: &str) -> String {
    format!(
        "[storage]\nbackend = \"postgres\"\n[storage.postgres]\nurl = \"{}\"\npool_size = 8\nstatement_timeout_ms = 2000\nconnect_timeout_ms = 1000\n{extra}",
        pg.url()
    )
}

/// Node `name`'s data directory, with the keys of `first` (every node of a cluster holds
/// the same keys) when given.
pub(crate) fn node_dir(dir: &Path, name: &str, first: Option<&Path>) -> PathBuf {
    let data = dir.join(name);
    if let Some(first) = first {
        std::fs::create_dir_all(&data).unwrap();
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(first.join("keys"))
            .arg(data.join("keys"))
            .status()
            .unwrap();
        assert!(status.success());
    }
    data
}

/// The credential of a device of `address` registered through `node`, with a token signed
/// by the keys in `keys` (a node's data directory: every node of a cluster has them).
async fn credential(node: &Proc, keys: &Path, address: &str) -> String {
    node.client()
        .register(&test_support::provision_token(keys, address, 3_600_000))
        .await
        .unwrap()
        .credential
}

/// Two gateway nodes on a fresh database.
pub(crate) async fn two_nodes(dir: &Path, extra: &str) -> (Postgres, (Proc, PathBuf), (Proc, PathBuf)) {
    let pg = Postgres::start(&dir.join("pg"));
    let a_dir = node_dir(dir, "a", None);
    let a = crate::process::spawn_gateway_with(&a_dir, &dir.join("a.log"), &[], &postgres_toml(&pg, extra)).await;
    let b_dir = node_dir(dir, "b", Some(&a_dir));
    let b = crate::process::spawn_gateway_with(&b_dir, &dir.join("b.log"), &[], &postgres_toml(&pg, extra)).await;
    (pg, (a, a_dir), (b, b_dir))
}

/// Runs a gateway on `toml` that must fail to start; its standard error.
fn start_fails(dir: &Path, name: &str, toml: &str) -> String {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(&config, toml).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.join(name))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{name} started: {stderr}");
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_serve_one_set_of_mailboxes() {
    let dir = tempfile::tempdir().unwrap();
    let _keep = crate::process::KeepOnPanic(dir.path().to_path_buf());
    let (pg, (a, a_dir), (b, _)) = two_nodes(dir.path(), "").await;
    const ALICE: &str = "tel:+15550170001";
    const BOB: &str = "tel:+15550170002";
    let alice = a.client().with_credential(credential(&a, &a_dir, ALICE).await);
    // Bob registers on B; his credential works on A too.
    let bob_cred = credential(&b, &a_dir, BOB).await;
    let (bob_b, bob_a) = (
        b.client().with_credential(&bob_cred),
        a.client().with_credential(&bob_cred),
    );

    // A send on A wakes Bob's long-poll on B, long before the poll would end by itself.
    let waiting = {
        let bob_b = bob_b.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            (bob_b.receive(0, 10, 25).await.unwrap(), started.elapsed())
        })
    };
    let mut mls_bob = Member::new(BOB);
    // The long-poll has begun once B published its live receiver; then Alice sends.
    test_support::eventually("Bob's long-poll to wait on B", Duration::from_secs(10), async || {
        pg.psql("SELECT count(*) FROM receivers") == "1"
    })
    .await;
    alice
        .send(
            &[Recipient::address(BOB)],
            test_support::framed_message(b"cross-node"),
            None,
            false,
        )
        .await
        .unwrap();
    let (page, took) = waiting.await.unwrap();
    assert_eq!(page.envelopes.len(), 1, "B's long-poll returned without A's envelope");
    assert!(
        took < Duration::from_secs(10),
        "woken by the poll's end, not by A's send: {took:?}"
    );
    // Acknowledged on B: gone on A.
    bob_b.ack(&[], Some(page.next_cursor)).await.unwrap();
    assert!(bob_a.receive(0, 10, 0).await.unwrap().envelopes.is_empty());

    // One MLS group, Alice's commits through A, Bob's through B: exactly one per epoch.
    bob_b.upload_key_packages(&[mls_bob.key_package_bytes()]).await.unwrap();
    let mut mls_alice = Member::new(ALICE);
    let claimed = alice.claim_key_packages(&[BOB]).await.unwrap();
    let kp = mls_alice.verify_key_package(&claimed[0].key_package);
    mls_alice.create_group();
    let (commit, welcome) = mls_alice.add(&[kp]);
    alice.send(&[], commit, None, false).await.unwrap();
    alice.send(&[], welcome, None, false).await.unwrap();
    let page = bob_b.receive(0, 10, 0).await.unwrap();
    assert_eq!(mls_bob.process(&page.envelopes[0].message), Processed::Joined);
    bob_b.ack(&[], Some(page.next_cursor)).await.unwrap();
    for round in 0..6 {
        let epoch = mls_alice.epoch();
        let (ca, cb) = (mls_alice.pending_update(), mls_bob.pending_update());
        let (to_bob, to_alice) = ([Recipient::address(BOB)], [Recipient::address(ALICE)]);
        let (ra, rb) = tokio::join!(
            alice.send(&to_bob, ca, None, false),
            bob_b.send(&to_alice, cb, None, false)
        );
        let (loser_client, loser, winner_client, _winner) = match (ra, rb) {
            (Ok(w), Err(ClientError::Api { status: 409, .. })) => {
                assert_eq!(w.accepted_epoch, Some(epoch));
                mls_alice.merge_pending();
                (&bob_b, &mut mls_bob, &alice, &mut mls_alice)
            }
            (Err(ClientError::Api { status: 409, .. }), Ok(w)) => {
                assert_eq!(w.accepted_epoch, Some(epoch));
                mls_bob.merge_pending();
                (&alice, &mut mls_alice, &bob_b, &mut mls_bob)
            }
            other => panic!("round {round}: exactly one commit must win across the nodes: {other:?}"),
        };
        loser.discard_pending();
        let page = loser_client.receive(0, 10, 0).await.unwrap();
        assert_eq!(page.envelopes.len(), 1, "round {round}: the loser sees one commit");
        assert_eq!(loser.process(&page.envelopes[0].message), Processed::Commit);
        loser_client.ack(&[], Some(page.next_cursor)).await.unwrap();
        let page = winner_client.receive(0, 10, 0).await.unwrap();
        assert!(page.envelopes.is_empty(), "round {round}: the losing commit was stored");
    }
    assert_eq!(mls_alice.epoch(), mls_bob.epoch());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_time_key_packages_and_claim_limits_hold_across_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let _keep = crate::process::KeepOnPanic(dir.path().to_path_buf());
    let (_pg, (a, a_dir), (b, _)) = two_nodes(dir.path(), "").await;
    const CAROL: &str = "tel:+15550170100";
    let carol = b.client().with_credential(credential(&b, &a_dir, CAROL).await);
    let member = Member::new(CAROL);
    let one_time: Vec<_> = (0..5).map(|_| member.key_package_bytes()).collect();
    carol.upload_key_packages(&one_time).await.unwrap();
    carol
        .upload_key_packages(&[member.last_resort_key_package_bytes()])
        .await
        .unwrap();
    // Sixteen claimers, half on each node, all at once.
    let mut claimers = Vec::new();
    for n in 0..16 {
        let node = if n % 2 == 0 { &a } else { &b };
        let credential = credential(node, &a_dir, &format!("tel:+155501702{n:02}")).await;
        claimers.push((node.client().with_credential(&credential), credential));
    }
    let mut claims = tokio::task::JoinSet::new();
    for (c, _) in &claimers {
        let c = c.clone();
        claims.spawn(async move { c.claim_key_packages(&[CAROL]).await });
    }
    let mut handed_out = std::collections::HashSet::new();
    let mut last_resort = 0;
    while let Some(claim) = claims.join_next().await {
        let kp = claim.unwrap().unwrap().remove(0);
        if kp.last_resort {
            last_resort += 1;
        } else {
            assert!(
                handed_out.insert(kp.key_package.clone()),
                "a one-time KeyPackage was handed out twice"
            );
        }
    }
    assert_eq!((handed_out.len(), last_resort), (5, 11));
    for kp in &handed_out {
        assert!(one_time.contains(kp));
    }

    // One requester claiming one target, alternating nodes: the burst (6) is counted
    // across both, so the seventh claim is refused wherever it lands.
    let (dave, credential) = &claimers[0];
    let dave_b = b.client().with_credential(credential);
    let mut refused = None;
    for n in 1..=7 {
        let via = if n % 2 == 0 { &dave_b } else { dave };
        if let Err(e) = via.claim_key_packages(&[CAROL]).await {
            refused = Some((n, e));
            break;
        }
    }
    match refused {
        Some((n, ClientError::Api { status: 429, .. })) => assert_eq!(n, 6, "the burst includes the first claim"),
        other => panic!("the claim limit did not hold across the nodes: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_its_database_a_node_says_so_and_recovers_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let _keep = crate::process::KeepOnPanic(dir.path().to_path_buf());
    // At start: a clear error and a non-zero exit, the password nowhere in it.
    let down = test_support::process::free_port();
    let stderr = start_fails(
        dir.path(),
        "down",
        &format!(
            "[storage]\nbackend = \"postgres\"\n[storage.postgres]\nurl = \"host=127.0.0.1 port={down} user=relay password=hunter2 dbname=relay\"\nconnect_timeout_ms = 1000\n"
        ),
    );
    assert!(
        stderr.contains("opening the postgres storage backend") && stderr.contains("unavailable"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("hunter2"),
        "the database password was printed: {stderr}"
    );

    // While running: 503 with Retry-After, not ready; then back by itself.
    let mut pg = Postgres::start(&dir.path().join("pg"));
    let data = dir.path().join("node");
    let node =
        crate::process::spawn_gateway_with(&data, &dir.path().join("node.log"), &[], &postgres_toml(&pg, "")).await;
    const ALICE: &str = "tel:+15550170301";
    let alice = node.client().with_credential(credential(&node, &data, ALICE).await);
    let to = [Recipient::address(ALICE)];
    alice
        .send(&to, test_support::framed_message(b"before"), None, false)
        .await
        .unwrap();
    tokio::task::block_in_place(|| pg.kill());
    let started = Instant::now();
    match alice
        .send(&to, test_support::framed_message(b"during"), None, false)
        .await
    {
        Err(ClientError::Api {
            status: 503,
            code,
            retry_after: Some(1),
            ..
        }) => assert_eq!(code, "unavailable"),
        other => panic!("expected 503 unavailable with Retry-After: {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the request hung: {:?}",
        started.elapsed()
    );
    assert!(node.client().healthz().await.is_err(), "ready without its database");
    let admin = test_support::admin_request(([127, 0, 0, 1], node.admin).into(), "GET", "/healthz")
        .await
        .unwrap();
    assert!(admin.starts_with("HTTP/1.1 503"), "{admin}");
    tokio::task::block_in_place(|| pg.restart());
    test_support::eventually("the node to be ready again", Duration::from_secs(30), async || {
        node.client().healthz().await.is_ok()
    })
    .await;
    alice
        .send(&to, test_support::framed_message(b"after"), None, false)
        .await
        .unwrap();
    let page = alice.receive(0, 10, 0).await.unwrap();
    let got: Vec<_> = page.envelopes.iter().map(|e| e.message.clone()).collect();
    assert_eq!(
        got,
        vec![
            test_support::framed_message(b"before"),
            test_support::framed_message(b"after")
        ]
    );
}

/// Carrier A runs as two nodes on one database, carrier C as one sled node. Both of A's
/// nodes deliver from the shared outbox without ever handing C an envelope twice; with C
/// away, sends are acknowledged and queued, node A1 is killed holding leases, C comes back,
/// and A2 delivers everything (A1's entries once their leases expire): C's recipient gets
/// every envelope exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_outbox_delivers_once_with_a_node_killed() {
    use crate::interconnect_faults::{interconnect_toml, metric, peer_toml};
    let dir = tempfile::tempdir().unwrap();
    let _keep = crate::process::KeepOnPanic(dir.path().to_path_buf());
    let ca = test_support::pki::RcgenCa::new(&dir.path().join("pki"), "carriers");
    let (leaf_a, leaf_c) = (
        ca.issue("a", "carrier-a.test", 1, None),
        ca.issue("c", "carrier-c.test", 2, None),
    );
    let (a1_ic, a2_ic, c_ic) = (
        test_support::process::free_port(),
        test_support::process::free_port(),
        test_support::process::free_port(),
    );
    let (peers_a, peers_c) = (dir.path().join("peers-a.toml"), dir.path().join("peers-c.toml"));
    std::fs::write(&peers_a, peer_toml("c", "carrier-c.test", c_ic, &ca.cert, "+4477")).unwrap();
    std::fs::write(&peers_c, peer_toml("a", "carrier-a.test", a1_ic, &ca.cert, "+1555")).unwrap();
    let toml_c = interconnect_toml(c_ic, "carrier-c.test", &leaf_c, &peers_c, "+4477");
    let (c_dir, c_log) = (dir.path().join("c"), dir.path().join("c.log"));
    let c = crate::process::spawn_gateway_with(&c_dir, &c_log, &[], &toml_c).await;
    const CAROL: &str = "tel:+447700900001";
    let carol_cred = credential(&c, &c_dir, CAROL).await;

    let pg = Postgres::start(&dir.path().join("pg"));
    let lease = "outbox_lease_secs = 2\n";
    let a1_dir = node_dir(dir.path(), "a1", None);
    let a1 = crate::process::spawn_gateway_with(
        &a1_dir,
        &dir.path().join("a1.log"),
        &[],
        &(postgres_toml(&pg, lease) + &interconnect_toml(a1_ic, "carrier-a.test", &leaf_a, &peers_a, "+1555")),
    )
    .await;
    let a2_dir = node_dir(dir.path(), "a2", Some(&a1_dir));
    let a2 = crate::process::spawn_gateway_with(
        &a2_dir,
        &dir.path().join("a2.log"),
        &[],
        &(postgres_toml(&pg, lease) + &interconnect_toml(a2_ic, "carrier-a.test", &leaf_a, &peers_a, "+1555")),
    )
    .await;
    const ALICE: &str = "tel:+15550170401";
    let alice_cred = credential(&a1, &a1_dir, ALICE).await;
    let (via_a1, via_a2) = (
        a1.client().with_credential(&alice_cred),
        a2.client().with_credential(&alice_cred),
    );
    let to = [Recipient::address(CAROL)];
    let mut sent = Vec::new();
    for n in 0..30u32 {
        let via = if n % 2 == 0 { &via_a1 } else { &via_a2 };
        let m = test_support::framed_message(format!("up-{n}").as_bytes());
        via.send(&to, m.clone(), None, false).await.unwrap();
        sent.push(m);
    }
    let carol = c.client().with_credential(&carol_cred);
    let mut got = Vec::new();
    test_support::eventually("C to receive the first 30", Duration::from_secs(30), async || {
        let page = carol.receive(0, 100, 0).await.unwrap();
        got = page.envelopes.iter().map(|e| e.message.clone()).collect();
        got.len() >= 30
    })
    .await;
    let duplicate = "interconnect_inbound_total{peer=\"a\",result=\"duplicate\"}";
    assert_eq!(metric(c.admin, duplicate).await, 0.0, "both nodes delivered an entry");

    // C goes away; A's nodes acknowledge and queue; A1 dies holding leases; C returns.
    drop(carol);
    assert!(c.terminate().success());
    // Where C was, a listener that accepts and never answers: deliveries hang mid-way,
    // each holding its entry's lease.
    let black_hole = tokio::net::TcpListener::bind(("127.0.0.1", c_ic)).await.unwrap();
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = black_hole.accept().await {
            held.push(s);
        }
    });
    for n in 30..50u32 {
        let via = if n % 2 == 0 { &via_a1 } else { &via_a2 };
        let m = test_support::framed_message(format!("down-{n}").as_bytes());
        via.send(&to, m.clone(), None, false).await.unwrap();
        sent.push(m);
    }
    test_support::eventually("both nodes to hold leases mid-delivery", Duration::from_secs(30), async || {
        pg.psql(
            "SELECT count(DISTINCT leased_by) FROM outbox WHERE lease_until_ms > (extract(epoch from now()) * 1000)::bigint",
        ) == "2"
    })
    .await;
    a1.kill9();
    held.abort();
    let _ = held.await;
    let c = crate::process::spawn_gateway_with(&c_dir, &c_log, &[], &toml_c).await;
    let carol = c.client().with_credential(&carol_cred);
    test_support::eventually("C to receive all 50", Duration::from_secs(60), async || {
        let page = carol.receive(0, 200, 0).await.unwrap();
        got = page.envelopes.iter().map(|e| e.message.clone()).collect();
        got.len() >= 50
    })
    .await;
    let mut want = sent.clone();
    want.sort();
    got.sort();
    assert_eq!(got, want, "every acknowledged envelope, each once");
    assert_eq!(metric(c.admin, duplicate).await, 0.0, "an entry was delivered twice");
}

/// With `storage.postgres.ca`, a node talks TLS to its database (verified against that CA);
/// against a server that refuses plain connections, a node without it fails to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reaches_its_database_over_verified_tls() {
    let dir = tempfile::tempdir().unwrap();
    let _keep = crate::process::KeepOnPanic(dir.path().to_path_buf());
    let ca = test_support::pki::RcgenCa::new(&dir.path().join("pki"), "database");
    let leaf = ca.issue("db", "db.test", 1, None);
    let mut pg = Postgres::start(&dir.path().join("pg"));
    tokio::task::block_in_place(|| pg.require_tls(&leaf.cert, &leaf.key));
    let url = format!(
        "host=localhost port={} user=postgres dbname=postgres sslmode=require",
        pg.port
    );

    let plain = format!(
        "[storage]\nbackend = \"postgres\"\n[storage.postgres]\nurl = \"host=localhost port={} user=postgres dbname=postgres\"\n",
        pg.port
    );
    let stderr = start_fails(dir.path(), "plain", &plain);
    assert!(stderr.contains("opening the postgres storage backend"), "{stderr}");
    // A certificate from another CA is not the database's.
    let other = test_support::pki::RcgenCa::new(&dir.path().join("pki-other"), "other");
    let stderr = start_fails(
        dir.path(),
        "other-ca",
        &format!(
            "[storage]\nbackend = \"postgres\"\n[storage.postgres]\nurl = \"{url}\"\nca = \"{}\"\n",
            other.cert.display()
        ),
    );
    assert!(stderr.contains("opening the postgres storage backend"), "{stderr}");

    let toml = format!(
        "[storage]\nbackend = \"postgres\"\n[storage.postgres]\nurl = \"{url}\"\nca = \"{}\"\n",
        ca.cert.display()
    );
    let data = dir.path().join("node");
    let node = crate::process::spawn_gateway_with(&data, &dir.path().join("node.log"), &[], &toml).await;
    const ALICE: &str = "tel:+15550170501";
    let alice = node.client().with_credential(credential(&node, &data, ALICE).await);
    alice
        .send(
            &[Recipient::address(ALICE)],
            test_support::framed_message(b"over tls"),
            None,
            false,
        )
        .await
        .unwrap();
    assert_eq!(alice.receive(0, 10, 0).await.unwrap().envelopes.len(), 1);
    let log = std::fs::read_to_string(dir.path().join("node.log")).unwrap();
    assert!(log.contains("tls=true") || log.contains("\"tls\":true"), "{log}");
}

/// The per-credential limit (burst 10, then 1 a second) holds across nodes: a device
/// alternating between two nodes gets the burst once, not once per node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_credential_limit_holds_across_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start(&dir.path().join("pg"));
    let url = pg.url();
    let tweak = |c: &mut gateway::Config| {
        c.storage.backend = gateway::config::BackendKind::Postgres;
        c.storage.postgres = Some(toml::from_str(&format!("url = \"{url}\"\n")).unwrap());
        c.rate_limit.requests_per_second = 1;
        c.rate_limit.burst = 10;
    };
    let a = test_support::TestGateway::start_in(&dir.path().join("a"), tweak).await;
    let b_dir = node_dir(dir.path(), "b", Some(&dir.path().join("a")));
    let b = test_support::TestGateway::start_in(&b_dir, tweak).await;
    let registered = a.client().register(&a.provision("tel:+15550170601")).await.unwrap();
    let on_a = a.client().with_credential(&registered.credential);
    let on_b = b.client().with_credential(&registered.credential);
    let mut allowed = 0;
    let started = Instant::now();
    for n in 0..20 {
        let via = if n % 2 == 0 { &on_a } else { &on_b };
        match via.receive(0, 1, 0).await {
            Ok(_) => allowed += 1,
            Err(ClientError::Api { status: 429, .. }) => {}
            Err(e) => panic!("{e:?}"),
        }
    }
    // The burst, plus the tokens that refilled meanwhile (one a second).
    let refilled = started.elapsed().as_secs() + 1;
    assert!(
        allowed >= 10 && allowed <= 10 + refilled,
        "{allowed} of 20 allowed in {:?}: the limit is per node",
        started.elapsed()
    );
    a.stop().await;
    b.stop().await;
}
