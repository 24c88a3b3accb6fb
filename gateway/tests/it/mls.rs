//! MLS Delivery Service semantics: the KeyPackage directory, one commit per epoch,
//! Welcome routing — each driven by real openmls clients.

use bytes::Bytes;
use http::{Method, header};
use prost::Message as _;
use relay_client::{Client, ClientError, Protocol, Recipient};
use test_support::TestGateway;
use test_support::mls::{Member, Processed};

const ALICE: &str = "tel:+15550100001";
const BOB: &str = "tel:+15550100002";

/// Alice and Bob in one group, created through the directory; returns their clients.
async fn pair(gw: &TestGateway) -> ((Client, Member), (Client, Member)) {
    let (a, _) = gw.device(ALICE).await;
    let (b, _) = gw.device(BOB).await;
    let mut alice = Member::new(ALICE);
    let mut bob = Member::new(BOB);
    b.upload_key_packages(&[bob.key_package_bytes()]).await.unwrap();
    let claimed = a.claim_key_packages(&[BOB]).await.unwrap();
    let kp = alice.verify_key_package(&claimed[0].key_package);
    alice.create_group();
    let (commit, welcome) = alice.add(&[kp]);
    a.send(&[], commit, None, false).await.unwrap();
    a.send(&[], welcome, None, false).await.unwrap();
    let page = b.receive(0, 10, 0).await.unwrap();
    assert_eq!(bob.process(&page.envelopes[0].message), Processed::Joined);
    b.ack(&[], Some(page.next_cursor)).await.unwrap();
    ((a, alice), (b, bob))
}

async fn drain_one(c: &Client) -> Vec<Bytes> {
    let page = c.receive(0, 100, 0).await.unwrap();
    if page.next_cursor > 0 {
        c.ack(&[], Some(page.next_cursor)).await.unwrap();
    }
    page.envelopes.into_iter().map(|e| e.message).collect()
}

/// Two members commit concurrently for the same epoch, many times: exactly one wins,
/// the loser gets 409 `wrong_epoch` with the current epoch, processes the winner's commit
/// and commits again. Nobody ever receives two commits for one epoch.
async fn concurrent_commits_one_wins(p: Protocol) {
    let gw = TestGateway::start().await.speaking(p);
    let ((a, mut alice), (b, mut bob)) = pair(&gw).await;
    for round in 0..8 {
        let epoch = alice.epoch();
        assert_eq!(epoch, bob.epoch());
        let ca = alice.pending_update();
        let cb = bob.pending_update();
        let (to_bob, to_alice) = ([Recipient::address(BOB)], [Recipient::address(ALICE)]);
        let (ra, rb) = tokio::join!(a.send(&to_bob, ca, None, false), b.send(&to_alice, cb, None, false));
        let (winner, loser, loser_err) = match (ra, rb) {
            (Ok(w), Err(e)) => {
                assert_eq!(w.accepted_epoch, Some(epoch));
                alice.merge_pending();
                ((&a, &mut alice), (&b, &mut bob), e)
            }
            (Err(e), Ok(w)) => {
                assert_eq!(w.accepted_epoch, Some(epoch));
                bob.merge_pending();
                ((&b, &mut bob), (&a, &mut alice), e)
            }
            other => panic!("round {round}: exactly one commit must win: {other:?}"),
        };
        match loser_err {
            ClientError::Api {
                status: 409,
                code,
                current_epoch,
                ..
            } => {
                assert_eq!(code, "wrong_epoch");
                assert_eq!(current_epoch, Some(epoch + 1));
            }
            other => panic!("{other:?}"),
        }
        // The loser recovers: drop its commit, apply the winner's, commit again.
        let (loser_client, loser_member) = loser;
        loser_member.discard_pending();
        let inbox = drain_one(loser_client).await;
        assert_eq!(inbox.len(), 1, "the loser sees one commit for epoch {epoch}");
        assert_eq!(loser_member.process(&inbox[0]), Processed::Commit);
        let retry = loser_member.pending_update();
        let to = if std::ptr::eq(loser_client, &a) { BOB } else { ALICE };
        let accepted = loser_client
            .send(&[Recipient::address(to)], retry, None, false)
            .await
            .unwrap();
        assert_eq!(accepted.accepted_epoch, Some(epoch + 1));
        loser_member.merge_pending();
        let (winner_client, winner_member) = winner;
        let inbox = drain_one(winner_client).await;
        assert_eq!(inbox.len(), 1, "the winner never saw the losing commit");
        assert_eq!(winner_member.process(&inbox[0]), Processed::Commit);
    }
    assert_eq!(alice.epoch(), bob.epoch());
    let m = alice.encrypt(b"still in sync");
    a.send(&[Recipient::address(BOB)], m, None, false).await.unwrap();
    let inbox = drain_one(&b).await;
    assert_eq!(
        bob.process(&inbox[0]),
        Processed::Application(b"still in sync".to_vec())
    );
    gw.stop().await;
}

/// Many claimers race for a device's one-time KeyPackages: each is handed out once,
/// then the last-resort package.
async fn racing_claims_hand_out_each_package_once(p: Protocol) {
    let gw = TestGateway::start().await.speaking(p);
    let (b, _) = gw.device(BOB).await;
    let bob = Member::new(BOB);
    let mut packages: Vec<Bytes> = (0..5).map(|_| bob.key_package_bytes()).collect();
    packages.push(bob.last_resort_key_package_bytes());
    assert_eq!(b.upload_key_packages(&packages).await.unwrap(), 6);
    let count = b.key_package_count().await.unwrap();
    assert_eq!((count.one_time, count.last_resort), (5, true));
    let mut claimers = Vec::new();
    for i in 0..16 {
        claimers.push(gw.device(&format!("tel:+1555020{i:04}")).await.0);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for c in claimers {
        tasks.spawn(async move { c.claim_key_packages(&[BOB]).await.unwrap() });
    }
    let (mut one_time, mut last_resort) = (Vec::new(), 0);
    while let Some(r) = tasks.join_next().await {
        for k in r.unwrap() {
            if k.last_resort {
                assert_eq!(k.key_package, packages[5]);
                last_resort += 1;
            } else {
                one_time.push(k.key_package);
            }
        }
    }
    one_time.sort();
    let n = one_time.len();
    one_time.dedup();
    assert_eq!((n, one_time.len(), last_resort), (5, 5, 11));
    let count = b.key_package_count().await.unwrap();
    assert_eq!((count.one_time, count.last_resort), (0, true));
    gw.stop().await;
}

both_transports!(concurrent_commits_one_wins, racing_claims_hand_out_each_package_once);

/// The KeyPackage and ordering bad-input catalogue: each a 4xx with a machine code and
/// no stored change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_service_bad_input() {
    let gw = TestGateway::start_with(|c| c.mls.max_key_packages_per_upload = 10).await;
    let ((a, mut alice), (b, bob)) = pair(&gw).await;
    let before = gw.stats().await;
    let bob_count = || async { b.key_package_count().await.unwrap() };
    let count_before = bob_count().await;

    let upload = |kps: Vec<Bytes>| {
        let b = b.clone();
        async move { b.upload_key_packages(&kps).await }
    };
    let mut tampered = bob.key_package_bytes().to_vec();
    let last = tampered.len() - 1;
    tampered[last] ^= 1; // inside the signature
    crate::assert_api_error(upload(vec![tampered.into()]).await, 400, "invalid_key_package");
    crate::assert_api_error(
        upload(vec![Bytes::from_static(b"garbage")]).await,
        400,
        "invalid_key_package",
    );
    let alices = Member::new(ALICE).key_package_bytes();
    crate::assert_api_error(upload(vec![alices]).await, 403, "identity_mismatch");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expired = bob.key_package_with_lifetime_bytes(now - 7200, now - 3600);
    crate::assert_api_error(upload(vec![expired]).await, 400, "key_package_expired");
    let not_yet = bob.key_package_with_lifetime_bytes(now + 86_400, now + 2 * 86_400);
    crate::assert_api_error(upload(vec![not_yet]).await, 400, "key_package_expired");
    let eleven: Vec<_> = (0..11).map(|_| bob.key_package_bytes()).collect();
    crate::assert_api_error(upload(eleven).await, 413, "too_many_key_packages");
    let once = bob.key_package_bytes();
    upload(vec![once.clone()]).await.unwrap();
    crate::assert_api_error(upload(vec![once]).await, 409, "duplicate_key_package");
    let after_one = bob_count().await;
    assert_eq!(
        after_one.one_time,
        count_before.one_time + 1,
        "only the valid upload was stored"
    );

    // A KeyPackage is uploaded, never sent.
    let (_, kp_message) = bob.key_package();
    crate::assert_api_error(
        a.send(&[Recipient::address(BOB)], kp_message, None, false).await,
        400,
        "unexpected_message_type",
    );
    // A Welcome naming KeyPackages the directory never saw.
    let mut outsider = Member::new("tel:+15550100077");
    let mut stranger = Member::new("tel:+15550100078");
    outsider.create_group();
    let (_, welcome) = outsider.add(&[stranger.key_package().0]);
    crate::assert_api_error(
        a.send(&[], welcome.clone(), None, false).await,
        404,
        "unknown_key_package",
    );
    crate::assert_api_error(
        a.send(&[Recipient::address(BOB)], welcome, None, false).await,
        400,
        "invalid_recipients",
    );
    let _ = &mut stranger;
    // A commit for an unknown group's future epoch.
    let _ = outsider.update();
    let future = outsider.update();
    crate::assert_api_error(
        a.send(&[Recipient::address(BOB)], future, None, false).await,
        404,
        "unknown_group",
    );
    // A stale commit for a known group.
    let epoch = alice.epoch();
    let stale = alice.pending_update();
    alice.discard_pending();
    let fresh = alice.pending_update();
    a.send(&[Recipient::address(BOB)], fresh, None, false).await.unwrap();
    alice.merge_pending();
    match a.send(&[Recipient::address(BOB)], stale, None, false).await {
        Err(ClientError::Api {
            status: 409,
            code,
            current_epoch,
            ..
        }) => {
            assert_eq!((code.as_str(), current_epoch), ("wrong_epoch", Some(epoch + 1)));
        }
        other => panic!("{other:?}"),
    }
    let after = gw.stats().await;
    assert_eq!(after.blobs, before.blobs + 1, "only the accepted commit was stored");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_ciphersuite_and_claim_rate_limit() {
    let gw = TestGateway::start_with(|c| {
        c.mls.ciphersuites = vec![2];
        c.mls.claim_burst = 2;
    })
    .await;
    let (a, _) = gw.device(ALICE).await;
    let (b, _) = gw.device(BOB).await;
    let bob = Member::new(BOB);
    crate::assert_api_error(
        b.upload_key_packages(&[bob.key_package_bytes()]).await,
        400,
        "unsupported_ciphersuite",
    );
    assert_eq!(b.key_package_count().await.unwrap().one_time, 0);
    a.claim_key_packages(&[BOB]).await.unwrap();
    a.claim_key_packages(&[BOB]).await.unwrap();
    match a.claim_key_packages(&[BOB]).await {
        Err(ClientError::Api {
            status: 429,
            code,
            retry_after: Some(s),
            ..
        }) => {
            assert_eq!(code, "rate_limited");
            assert!(s >= 1);
        }
        other => panic!("{other:?}"),
    }
    let body = relay_client::wire::ClaimKeyPackagesRequest {
        addresses: vec!["tel:+1".into()],
        requester: String::new(),
    }
    .encode_to_vec();
    let resp = a
        .raw(
            Method::POST,
            "/v1/keypackages/claim",
            &[(header::CONTENT_TYPE, "application/x-protobuf".into())],
            body.into(),
        )
        .await
        .unwrap();
    assert_eq!(
        (resp.status.as_u16(), resp.error_code().as_deref()),
        (400, Some("invalid_address"))
    );
    gw.stop().await;
}

/// RFC 9750 section 5.3: an operator can reset a group's epoch at the DS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_resets_group_epoch() {
    let gw = TestGateway::start().await;
    let ((a, mut alice), _) = pair(&gw).await;
    let gid: String = alice.group_id().iter().map(|b| format!("{b:02x}")).collect();
    // Pretend the members moved on without the DS (desync): the DS is told epoch 1 again.
    let resp = admin_put(gw.admin_addr, &format!("/admin/groups/{gid}/epoch"), "1").await;
    assert!(resp.starts_with("HTTP/1.1 204"), "{resp}");
    let commit = alice.pending_update();
    assert_eq!(
        a.send(&[Recipient::address(BOB)], commit, None, false)
            .await
            .unwrap()
            .accepted_epoch,
        Some(1)
    );
    gw.stop().await;
}

async fn admin_put(addr: std::net::SocketAddr, path: &str, body: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// mls-rs, an independent MLS implementation, interoperates through the DS: its
/// KeyPackage passes the gateway's validation, an openmls creator adds it from the
/// directory, the Welcome is routed to it, and messages and commits flow both ways.
async fn mls_rs_member_interoperates(p: Protocol) {
    const CAROL: &str = "tel:+15550100003";
    let gw = TestGateway::start().await.speaking(p);
    let (a, _) = gw.device(ALICE).await;
    let (c, _) = gw.device(CAROL).await;
    let mut alice = Member::new(ALICE);
    let mut carol = test_support::mlsrs::member(CAROL);
    assert_eq!(
        c.upload_key_packages(&[carol.key_package_bytes(), carol.key_package_bytes()])
            .await
            .unwrap(),
        2
    );
    let claimed = a.claim_key_packages(&[CAROL]).await.unwrap();
    let kp = alice.verify_key_package(&claimed[0].key_package);
    alice.create_group();
    let (commit, welcome) = alice.add(&[kp]);
    a.send(&[], commit, None, false).await.unwrap();
    assert_eq!(a.send(&[], welcome, None, false).await.unwrap().recipient_devices, 1);
    let inbox = drain_one(&c).await;
    carol.join(&inbox[0]);
    assert_eq!(carol.epoch(), alice.epoch());

    let to_carol = [Recipient::address(CAROL)];
    let to_alice = [Recipient::address(ALICE)];
    a.send(&to_carol, alice.encrypt(b"openmls to mls-rs"), None, false)
        .await
        .unwrap();
    assert_eq!(
        carol.process(&drain_one(&c).await[0]),
        Some(b"openmls to mls-rs".to_vec())
    );
    c.send(&to_alice, carol.encrypt(b"mls-rs to openmls"), None, false)
        .await
        .unwrap();
    assert_eq!(
        alice.process(&drain_one(&a).await[0]),
        Processed::Application(b"mls-rs to openmls".to_vec())
    );

    // An mls-rs commit is epoch-checked like any other.
    let epoch = carol.epoch();
    let racing = alice.pending_update(); // openmls's commit for the same epoch, sent second
    let commit = carol.pending_commit();
    let accepted = c.send(&to_alice, commit, None, false).await.unwrap();
    assert_eq!(accepted.accepted_epoch, Some(epoch));
    carol.merge_pending();
    crate::assert_api_error(a.send(&to_carol, racing, None, false).await, 409, "wrong_epoch");
    alice.discard_pending();
    assert_eq!(alice.process(&drain_one(&a).await[0]), Processed::Commit);
    a.send(&to_carol, alice.encrypt(b"new epoch"), None, false)
        .await
        .unwrap();
    assert_eq!(carol.process(&drain_one(&c).await[0]), Some(b"new epoch".to_vec()));
    gw.stop().await;
}

both_transports!(mls_rs_member_interoperates);

/// The latest GroupInfo a member publishes is served to others (external joins); the DS
/// checks it is a GroupInfo of the group named in the path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_info_published_and_fetched() {
    let gw = TestGateway::start().await;
    let ((a, mut alice), (b, mut bob)) = pair(&gw).await;
    let gid = alice.group_id();
    crate::assert_api_error(b.group_info(&gid).await, 404, "unknown_group");
    let info = alice.group_info();
    a.put_group_info(&gid, info.clone()).await.unwrap();
    assert_eq!(b.group_info(&gid).await.unwrap(), info, "served byte for byte");
    // A newer one replaces it.
    let update = alice.update();
    a.send(&[Recipient::address(BOB)], update, None, false).await.unwrap();
    assert_eq!(bob.process(&drain_one(&b).await[0]), Processed::Commit);
    let newer = alice.group_info();
    a.put_group_info(&gid, newer.clone()).await.unwrap();
    assert_eq!(b.group_info(&gid).await.unwrap(), newer);
    // Wrong group, wrong message type, bad path: refused, nothing replaced.
    crate::assert_api_error(
        a.put_group_info(b"another group", info.clone()).await,
        400,
        "invalid_mls",
    );
    let app = alice.encrypt(b"not a group info");
    crate::assert_api_error(a.put_group_info(&gid, app).await, 400, "unexpected_message_type");
    let resp = a
        .raw(Method::GET, "/v1/groups/zz/info", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(
        (resp.status.as_u16(), resp.error_code().as_deref()),
        (400, Some("invalid_body"))
    );
    assert_eq!(b.group_info(&gid).await.unwrap(), newer);
    gw.stop().await;
}
