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

/// Two gateway nodes on a fresh database.
pub(crate) async fn two_nodes(dir: &Path, extra: &str) -> (Postgres, (Proc, PathBuf), (Proc, PathBuf)) {
    let pg = Postgres::start(&dir.join("pg"));
    let a_dir = node_dir(dir, "a", None);
    let a = crate::process::spawn_gateway_with(&a_dir, &dir.join("a.log"), &[], &postgres_toml(&pg, extra)).await;
    let b_dir = node_dir(dir, "b", Some(&a_dir));
    let b = crate::process::spawn_gateway_with(&b_dir, &dir.join("b.log"), &[], &postgres_toml(&pg, extra)).await;
    (pg, (a, a_dir), (b, b_dir))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_serve_one_set_of_mailboxes() {
    let dir = tempfile::tempdir().unwrap();
    let _keep = crate::process::KeepOnPanic(dir.path().to_path_buf());
    let (pg, (a, a_dir), (b, _)) = two_nodes(dir.path(), "").await;
    const ALICE: &str = "tel:+15550170001";
    const BOB: &str = "tel:+15550170002";
    let token = |address: &str| test_support::provision_token(&a_dir, address, 3_600_000);
    let alice = a.client().with_credential(a.client().register(&token(ALICE)).await.unwrap().credential);
    // Bob registers on B; his credential works on A too.
    let bob_cred = b.client().register(&token(BOB)).await.unwrap().credential;
    let (bob_b, bob_a) = (b.client().with_credential(&bob_cred), a.client().with_credential(&bob_cred));

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
        .send(&[Recipient::address(BOB)], test_support::framed_message(b"cross-node"), None, false)
        .await
        .unwrap();
    let (page, took) = waiting.await.unwrap();
    assert_eq!(page.envelopes.len(), 1, "B's long-poll returned without A's envelope");
    assert!(took < Duration::from_secs(10), "woken by the poll's end, not by A's send: {took:?}");
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
        let (ra, rb) = tokio::join!(alice.send(&to_bob, ca, None, false), bob_b.send(&to_alice, cb, None, false));
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
    let token = |address: &str| test_support::provision_token(&a_dir, address, 3_600_000);
    const CAROL: &str = "tel:+15550170100";
    let carol = b.client().with_credential(b.client().register(&token(CAROL)).await.unwrap().credential);
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
        let c = node.client();
        let credential = c.register(&token(&format!("tel:+155501702{n:02}"))).await.unwrap().credential;
        claimers.push((c.with_credential(&credential), credential));
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
            assert!(handed_out.insert(kp.key_package.clone()), "a one-time KeyPackage was handed out twice");
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
