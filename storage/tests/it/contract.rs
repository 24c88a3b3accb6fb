use bytes::Bytes;
use relay_core::credential::DeviceCredential;
use storage::model::flags;
use storage::*;

use crate::Harness;
pub(crate) use crate::rekey::a_marked_rid_moves_with_everything_it_holds;

pub(crate) const NOW: u64 = 1_800_000_000_000;
const TTL: u64 = 30 * 24 * 3600 * 1000;
const QUOTA: u64 = 1 << 30;

pub(crate) fn rid(n: u8) -> Rid {
    Rid([n; 32])
}

pub(crate) fn new_device(rid: Rid, seed: u8) -> (NewDevice, DeviceCredential) {
    let mut random = [seed; 48];
    random[0] = rid.0[0];
    let cred = DeviceCredential::from_random(random);
    let req = NewDevice {
        rid,
        credential_lookup: cred.lookup(),
        credential_hash: cred.hash([seed; 16]),
        provisioning_nonce: {
            let mut n = [0; 16];
            n[0] = rid.0[0];
            n[1] = seed;
            n
        },
        provisioning_expires_at_ms: NOW + 60_000,
        provisioning_key: "test".into(),
        max_devices: 6,
        now_ms: NOW,
    };
    (req, cred)
}

async fn register<S: Store>(s: &S, rid: Rid, seed: u8) -> DeviceId {
    s.register_device(new_device(rid, seed).0).await.unwrap()
}

pub(crate) fn msg(tag: &str) -> Ciphertext {
    Ciphertext::from_stored(Bytes::from(format!("mls-bytes-{tag}")))
}

pub(crate) fn send_req(to: &[Rid], m: Ciphertext) -> SendRequest {
    SendRequest {
        sender: (rid(200), DeviceId(1)),
        recipients: to.iter().map(|r| RecipientSpec { rid: *r, devices: None }).collect(),
        message: m,
        client_message_id: None,
        request_digest: [0; 32],
        urgent: false,
        report: false,
        now_ms: NOW,
        ttl_ms: TTL,
        max_queue_bytes: QUOTA,
        ordering: None,
        outbox: Vec::new(),
    }
}

async fn page<S: Store>(s: &S, r: Rid, d: DeviceId) -> Page {
    s.receive(r, d, 0, 1000, NOW).await.unwrap()
}

pub(crate) async fn register_and_authenticate<H: Harness>() {
    let h = H::new();
    let s = h.store();
    let (req, cred) = new_device(rid(1), 1);
    let d1 = s.register_device(req).await.unwrap();
    let d2 = register(s, rid(1), 2).await;
    assert_ne!(d1, d2);
    let auth = s.device_by_lookup(cred.lookup()).await.unwrap().unwrap();
    assert_eq!((auth.rid, auth.device), (rid(1), d1));
    assert!(cred.verify(&auth.credential_hash));
    assert!(s.device_by_lookup([0xee; 16]).await.unwrap().is_none());
    assert_eq!(s.devices(rid(1)).await.unwrap(), vec![d1, d2]);
}

pub(crate) async fn provisioning_nonce_is_single_use<H: Harness>() {
    let h = H::new();
    let s = h.store();
    let (req, _) = new_device(rid(1), 1);
    s.register_device(req.clone()).await.unwrap();
    let mut again = req;
    again.credential_lookup = [0x55; 16];
    assert!(matches!(s.register_device(again).await, Err(RegisterError::TokenUsed)));
    assert_eq!(s.stats().await.unwrap().devices, 1);
}

pub(crate) async fn device_cap_per_address<H: Harness>() {
    let h = H::new();
    let s = h.store();
    for seed in 1..=6 {
        register(s, rid(1), seed).await;
    }
    let err = s.register_device(new_device(rid(1), 7).0).await.unwrap_err();
    assert!(matches!(err, RegisterError::TooManyDevices(6)));
    assert_eq!(s.stats().await.unwrap().devices, 6);
}

pub(crate) async fn fan_out_stores_message_once<H: Harness>() {
    let h = H::new();
    let s = h.store();
    let mut rids = Vec::new();
    for n in 1..=50u8 {
        register(s, rid(n), 1).await;
        register(s, rid(n), 2).await;
        rids.push(rid(n));
    }
    let m = msg("fan-out");
    let out = s.send(send_req(&rids, m.clone())).await.unwrap();
    assert_eq!(out.delivered_to.len(), 100);
    let stats = s.stats().await.unwrap();
    assert_eq!(stats.blobs, 1, "one blob for any number of recipients");
    assert_eq!(stats.blob_bytes, m.len() as u64);
    assert_eq!(stats.mailbox_entries, 100);
    let p = page(s, rid(7), DeviceId(2)).await;
    assert_eq!(p.envelopes.len(), 1);
    assert_eq!(p.envelopes[0].message, m);
    assert_eq!(p.envelopes[0].server_id, out.server_id);
}

pub(crate) async fn receive_pages_in_order<H: Harness>() {
    let h = H::new();
    let s = h.store();
    let d = register(s, rid(1), 1).await;
    for i in 0..10 {
        s.send(send_req(&[rid(1)], msg(&i.to_string()))).await.unwrap();
    }
    let p1 = s.receive(rid(1), d, 0, 4, NOW).await.unwrap();
    assert_eq!(p1.envelopes.len(), 4);
    assert!(!p1.queue_empty);
    let p2 = s.receive(rid(1), d, p1.next_cursor, 100, NOW).await.unwrap();
    assert_eq!(p2.envelopes.len(), 6);
    assert!(p2.queue_empty);
    let all: Vec<_> = p1.envelopes.iter().chain(&p2.envelopes).collect();
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.message, msg(&i.to_string()));
    }
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    let p3 = s.receive(rid(1), d, p2.next_cursor, 100, NOW).await.unwrap();
    assert!(p3.envelopes.is_empty() && p3.queue_empty);
    assert_eq!(p3.next_cursor, p2.next_cursor);
}

pub(crate) async fn ack_by_id_and_cursor_is_idempotent<H: Harness>() {
    let h = H::new();
    let s = h.store();
    let d = register(s, rid(1), 1).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            s.send(send_req(&[rid(1)], msg(&i.to_string())))
                .await
                .unwrap()
                .server_id,
        );
    }
    let p = page(s, rid(1), d).await;
    let n = s
        .ack(
            rid(1),
            d,
            Ack {
                server_ids: vec![ids[3]],
                up_to: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    let n = s
        .ack(
            rid(1),
            d,
            Ack {
                server_ids: vec![ids[3]],
                up_to: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(n, 0, "second ack of the same id is a no-op");
    let n = s
        .ack(
            rid(1),
            d,
            Ack {
                server_ids: vec![],
                up_to: Some(p.envelopes[1].seq),
            },
        )
        .await
        .unwrap();
    assert_eq!(n, 2);
    let left: Vec<_> = page(s, rid(1), d)
        .await
        .envelopes
        .into_iter()
        .map(|e| e.server_id)
        .collect();
    assert_eq!(left, vec![ids[2], ids[4]]);
    let n = s
        .ack(
            rid(1),
            d,
            Ack {
                server_ids: vec![ServerId([9; 16])],
                up_to: Some(0),
            },
        )
        .await
        .unwrap();
    assert_eq!(n, 0);
}

pub(crate) async fn blob_deleted_after_last_ack<H: Harness>() {
    let h = H::new();
    let s = h.store();
    let a = register(s, rid(1), 1).await;
    let b = register(s, rid(2), 1).await;
    let out = s.send(send_req(&[rid(1), rid(2)], msg("x"))).await.unwrap();
    let ack = || Ack {
        server_ids: vec![out.server_id],
        up_to: None,
    };
    s.ack(rid(1), a, ack()).await.unwrap();
    assert_eq!(s.stats().await.unwrap().blobs, 1, "rid 2 has not acknowledged yet");
    s.ack(rid(2), b, ack()).await.unwrap();
    let st = s.stats().await.unwrap();
    assert_eq!((st.blobs, st.mailbox_entries), (0, 0));
}

pub(crate) async fn idempotent_send<H: Harness>() {
    let h = H::new();
    let s = h.store();
    register(s, rid(1), 1).await;
    let mut req = send_req(&[rid(1)], msg("a"));
    req.client_message_id = Some(ClientMessageId([3; 16]));
    req.request_digest = [1; 32];
    let first = s.send(req.clone()).await.unwrap();
    let again = s.send(req.clone()).await.unwrap();
    assert!(again.duplicate && !first.duplicate);
    assert_eq!(again.server_id, first.server_id);
    assert_eq!(s.stats().await.unwrap().mailbox_entries, 1);
    req.request_digest = [2; 32];
    assert!(matches!(s.send(req).await, Err(SendError::ClientMessageIdConflict)));
    assert_eq!(s.stats().await.unwrap().mailbox_entries, 1);
}

pub(crate) async fn unknown_recipient_changes_nothing<H: Harness>() {
    let h = H::new();
    let s = h.store();
    register(s, rid(1), 1).await;
    let before = s.stats().await.unwrap();
    let err = s.send(send_req(&[rid(1), rid(99)], msg("x"))).await.unwrap_err();
    assert!(matches!(err, SendError::UnknownRecipient { index: 1 }));
    assert_eq!(s.stats().await.unwrap(), before);
}

pub(crate) async fn unknown_device_changes_nothing<H: Harness>() {
    let h = H::new();
    let s = h.store();
    register(s, rid(1), 1).await;
    let before = s.stats().await.unwrap();
    let mut req = send_req(&[rid(1)], msg("x"));
    req.recipients[0].devices = Some(vec![DeviceId(42)]);
    assert!(matches!(s.send(req).await, Err(SendError::UnknownDevice { index: 0 })));
    assert_eq!(s.stats().await.unwrap(), before);
}

pub(crate) async fn quota_trims_oldest_with_gap_marker<H: Harness>() {
    let h = H::new();
    let s = h.store();
    let d = register(s, rid(1), 1).await;
    let m = |i: u32| Ciphertext::from_stored(Bytes::from(vec![i as u8; 100]));
    for i in 0..10 {
        let mut req = send_req(&[rid(1)], m(i));
        req.max_queue_bytes = 350;
        s.send(req).await.unwrap();
    }
    let p = page(s, rid(1), d).await;
    let gap = &p.envelopes[0];
    assert_eq!(gap.flags & flags::GAP, flags::GAP);
    assert!(gap.message.is_empty());
    assert_eq!(gap.dropped, 7);
    let kept: Vec<_> = p.envelopes[1..].iter().map(|e| e.message.clone()).collect();
    assert_eq!(kept, vec![m(7), m(8), m(9)]);
    assert_eq!(s.stats().await.unwrap().blobs, 3, "trimmed blobs are released");
    s.ack(
        rid(1),
        d,
        Ack {
            server_ids: vec![],
            up_to: Some(gap.seq),
        },
    )
    .await
    .unwrap();
    assert_eq!(page(s, rid(1), d).await.envelopes.len(), 3);
}

pub(crate) async fn ttl_sweep_removes_everything<H: Harness>() {
    let h = H::new();
    let s = h.store();
    let d = register(s, rid(1), 1).await;
    let mut req = send_req(&[rid(1)], msg("x"));
    req.client_message_id = Some(ClientMessageId([4; 16]));
    s.send(req.clone()).await.unwrap();
    let later = NOW + TTL + 1;
    assert!(
        s.receive(rid(1), d, 0, 10, later).await.unwrap().envelopes.is_empty(),
        "expired is never served"
    );
    let swept = s.sweep(later).await.unwrap();
    assert_eq!((swept.mailbox_entries, swept.blobs), (1, 1));
    let st = s.stats().await.unwrap();
    assert_eq!((st.blobs, st.mailbox_entries, st.devices), (0, 0, 1));
    // The idempotency record expired with the blob: the same id stores anew.
    assert!(!s.send(req).await.unwrap().duplicate);
}

pub(crate) async fn delete_device_removes_mailbox<H: Harness>() {
    let h = H::new();
    let s = h.store();
    let (req, cred) = new_device(rid(1), 1);
    let d = s.register_device(req).await.unwrap();
    s.send(send_req(&[rid(1)], msg("x"))).await.unwrap();
    assert!(s.delete_device(rid(1), d).await.unwrap());
    assert!(!s.delete_device(rid(1), d).await.unwrap());
    assert!(s.device_by_lookup(cred.lookup()).await.unwrap().is_none());
    let st = s.stats().await.unwrap();
    assert_eq!((st.blobs, st.mailbox_entries, st.devices), (0, 0, 0));
    let err = s.send(send_req(&[rid(1)], msg("y"))).await.unwrap_err();
    assert!(matches!(err, SendError::UnknownRecipient { index: 0 }));
}

pub(crate) async fn writes_survive_reopen<H: Harness>() {
    let h = H::new();
    let d = register(h.store(), rid(1), 1).await;
    let out = h.store().send(send_req(&[rid(1)], msg("keep"))).await.unwrap();
    let h = h.reopen();
    let p = page(h.store(), rid(1), d).await;
    assert_eq!(p.envelopes[0].server_id, out.server_id);
    assert_eq!(p.envelopes[0].message, msg("keep"));
    // Sequence numbers continue after a restart.
    h.store().send(send_req(&[rid(1)], msg("next"))).await.unwrap();
    let p = page(h.store(), rid(1), d).await;
    assert!(p.envelopes[1].seq > p.envelopes[0].seq);
}

pub(crate) async fn concurrent_sends_are_all_durable<H: Harness>() {
    let h = H::new();
    let d = register(h.store(), rid(1), 1).await;
    let store = std::sync::Arc::new(h);
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..32 {
        let h = std::sync::Arc::clone(&store);
        tasks.spawn(async move {
            for i in 0..20 {
                h.store()
                    .send(send_req(&[rid(1)], msg(&format!("{t}-{i}"))))
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let h = std::sync::Arc::into_inner(store).unwrap().reopen();
    let p = page(h.store(), rid(1), d).await;
    assert_eq!(p.envelopes.len(), 640);
    let mut seen: Vec<_> = p.envelopes.iter().map(|e| e.server_id).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 640, "server ids are unique");
}

fn kp(tag: u8, last_resort: bool, not_after_ms: u64) -> NewKeyPackage {
    NewKeyPackage {
        kp_ref: vec![tag; 32],
        bytes: Bytes::from(vec![tag; 100]),
        not_after_ms,
        last_resort,
    }
}

pub(crate) async fn key_packages_claimed_exactly_once_then_last_resort<H: Harness>() {
    let h = H::new();
    let s = h.store();
    let d = register(s, rid(1), 1).await;
    let later = NOW + 3_600_000;
    s.upload_key_packages(
        rid(1),
        d,
        vec![kp(1, false, later), kp(2, false, later), kp(3, true, later)],
        10,
        NOW,
    )
    .await
    .unwrap();
    assert_eq!(
        s.key_package_count(rid(1), d, NOW).await.unwrap(),
        KeyPackageCount {
            one_time: 2,
            last_resort: true
        }
    );
    let mut handed = Vec::new();
    for _ in 0..2 {
        let c = s.claim_key_packages(vec![rid(1)], NOW).await.unwrap();
        assert_eq!(c.len(), 1);
        assert!(!c[0].last_resort);
        handed.push(c[0].bytes.clone());
    }
    handed.sort();
    handed.dedup();
    assert_eq!(handed.len(), 2, "each one-time package is handed out once");
    for _ in 0..3 {
        let c = s.claim_key_packages(vec![rid(1)], NOW).await.unwrap();
        assert!(c[0].last_resort, "then the last-resort package, again and again");
        assert_eq!(c[0].bytes, kp(3, true, later).bytes);
    }
    assert_eq!(
        s.key_package_count(rid(1), d, NOW).await.unwrap(),
        KeyPackageCount {
            one_time: 0,
            last_resort: true
        }
    );
    assert!(
        s.claim_key_packages(vec![rid(9)], NOW).await.unwrap().is_empty(),
        "unknown address: nothing"
    );
}

pub(crate) async fn concurrent_claims_hand_out_each_package_once<H: Harness>() {
    let h = std::sync::Arc::new(H::new());
    let d = register(h.store(), rid(1), 1).await;
    let later = NOW + 3_600_000;
    let packages: Vec<_> = (1..=20)
        .map(|i| kp(i, false, later))
        .chain([kp(99, true, later)])
        .collect();
    h.store()
        .upload_key_packages(rid(1), d, packages, 100, NOW)
        .await
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let h = std::sync::Arc::clone(&h);
        tasks.spawn(async move { h.store().claim_key_packages(vec![rid(1)], NOW).await.unwrap() });
    }
    let (mut one_time, mut last_resort) = (Vec::new(), 0);
    while let Some(r) = tasks.join_next().await {
        for c in r.unwrap() {
            if c.last_resort {
                last_resort += 1
            } else {
                one_time.push(c.bytes)
            }
        }
    }
    let n = one_time.len();
    one_time.sort();
    one_time.dedup();
    assert_eq!((n, one_time.len(), last_resort), (20, 20, 20));
}

pub(crate) async fn key_package_rules<H: Harness>() {
    let h = H::new();
    let s = h.store();
    let d = register(s, rid(1), 1).await;
    let later = NOW + 3_600_000;
    s.upload_key_packages(rid(1), d, vec![kp(1, false, later), kp(2, true, later)], 3, NOW)
        .await
        .unwrap();
    let dup = s
        .upload_key_packages(rid(1), d, vec![kp(5, false, later), kp(1, false, later)], 3, NOW)
        .await;
    assert!(matches!(dup, Err(KeyPackageError::Duplicate { index: 1 })));
    let dup_in_request = s
        .upload_key_packages(rid(1), d, vec![kp(6, false, later), kp(6, false, later)], 9, NOW)
        .await;
    assert!(matches!(dup_in_request, Err(KeyPackageError::Duplicate { index: 1 })));
    let too_many = s
        .upload_key_packages(rid(1), d, vec![kp(7, false, later), kp(8, false, later)], 3, NOW)
        .await;
    assert!(matches!(too_many, Err(KeyPackageError::TooMany { max: 3 })));
    assert_eq!(
        s.key_package_count(rid(1), d, NOW).await.unwrap(),
        KeyPackageCount {
            one_time: 1,
            last_resort: true
        },
        "rejections store nothing"
    );
    // A new last-resort package replaces the old one (and does not count twice).
    s.upload_key_packages(rid(1), d, vec![kp(10, true, later)], 2, NOW)
        .await
        .unwrap();
    let mut claims = Vec::new();
    for _ in 0..2 {
        claims.extend(s.claim_key_packages(vec![rid(1)], NOW).await.unwrap());
    }
    assert_eq!(claims[1].bytes, kp(10, true, later).bytes);
    // Expired packages are never served, and are swept.
    let d2 = register(s, rid(2), 1).await;
    s.upload_key_packages(rid(2), d2, vec![kp(20, false, NOW + 10)], 3, NOW)
        .await
        .unwrap();
    assert!(s.claim_key_packages(vec![rid(2)], NOW + 10).await.unwrap().is_empty());
    assert_eq!(
        s.devices_for_key_packages(vec![vec![20; 32]]).await.unwrap(),
        Ok(vec![(rid(2), d2)])
    );
    s.sweep(NOW + 11).await.unwrap();
    assert_eq!(
        s.devices_for_key_packages(vec![vec![20; 32]]).await.unwrap(),
        Err(0),
        "expired routes are swept"
    );
    assert_eq!(
        s.key_package_count(rid(2), d2, 0).await.unwrap().one_time,
        0,
        "expired packages are swept"
    );
    // Welcome routing finds the uploading device by KeyPackageRef, even after the claim.
    assert_eq!(
        s.devices_for_key_packages(vec![vec![1; 32], vec![2; 32]])
            .await
            .unwrap(),
        Ok(vec![(rid(1), d)])
    );
    assert_eq!(
        s.devices_for_key_packages(vec![vec![1; 32], vec![77; 32]])
            .await
            .unwrap(),
        Err(1)
    );
}

fn ordered(kind: OrderingKind, epoch: u64, tag: &str) -> SendRequest {
    let mut r = send_req(&[rid(1)], msg(tag));
    r.ordering = Some(GroupOrdering {
        group_key: [42; 32],
        epoch,
        kind,
    });
    r
}

pub(crate) async fn one_commit_per_epoch<H: Harness>() {
    let h = H::new();
    let s = h.store();
    register(s, rid(1), 1).await;
    let err = s.send(ordered(OrderingKind::Commit, 3, "future")).await.unwrap_err();
    assert!(matches!(err, SendError::UnknownGroup));
    assert_eq!(s.group_epoch([42; 32]).await.unwrap(), None);
    let first = s.send(ordered(OrderingKind::Commit, 0, "create")).await.unwrap();
    assert_eq!(first.accepted_epoch, Some(0));
    let before = s.stats().await.unwrap();
    let err = s.send(ordered(OrderingKind::Commit, 0, "loser")).await.unwrap_err();
    assert!(matches!(err, SendError::WrongEpoch { epoch: 0, current: 1 }));
    assert_eq!(s.stats().await.unwrap(), before, "the losing commit stores nothing");
    assert_eq!(
        s.send(ordered(OrderingKind::Commit, 1, "next"))
            .await
            .unwrap()
            .accepted_epoch,
        Some(1)
    );
    let err = s
        .send(ordered(OrderingKind::Proposal, 1, "stale proposal"))
        .await
        .unwrap_err();
    assert!(matches!(err, SendError::WrongEpoch { epoch: 1, current: 2 }));
    s.send(ordered(OrderingKind::Application { window: 1 }, 1, "recent"))
        .await
        .unwrap();
    let err = s
        .send(ordered(OrderingKind::Application { window: 1 }, 0, "old"))
        .await
        .unwrap_err();
    assert!(matches!(err, SendError::EpochTooOld { epoch: 0, current: 2 }));
    // A commit with no other member (the creator alone) still advances the epoch.
    let mut solo = ordered(OrderingKind::Commit, 2, "solo");
    solo.recipients.clear();
    assert_eq!(s.send(solo).await.unwrap().accepted_epoch, Some(2));
    assert_eq!(s.group_epoch([42; 32]).await.unwrap(), Some(3));
    s.set_group_epoch([42; 32], 7).await.unwrap();
    assert_eq!(s.group_epoch([42; 32]).await.unwrap(), Some(7));
}

pub(crate) async fn concurrent_commits_exactly_one_wins<H: Harness>() {
    let h = std::sync::Arc::new(H::new());
    register(h.store(), rid(1), 1).await;
    for epoch in 0..10u64 {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..8 {
            let h = std::sync::Arc::clone(&h);
            tasks.spawn(async move {
                h.store()
                    .send(ordered(OrderingKind::Commit, epoch, &format!("{epoch}-{i}")))
                    .await
            });
        }
        let (mut won, mut lost) = (0, 0);
        while let Some(r) = tasks.join_next().await {
            match r.unwrap() {
                Ok(o) => {
                    assert_eq!(o.accepted_epoch, Some(epoch));
                    won += 1;
                }
                Err(SendError::WrongEpoch { current, .. }) => {
                    assert_eq!(current, epoch + 1);
                    lost += 1;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!((won, lost), (1, 7));
    }
}

pub(crate) async fn push_handle_set_clear_and_compare_and_delete<H: Harness>() {
    let h = H::new();
    let s = h.store();
    let d = register(s, rid(1), 1).await;
    assert_eq!(s.push_handle(rid(1), d).await.unwrap(), None);
    assert!(
        !s.set_push_handle(rid(9), d, Some("ph1.x".into())).await.unwrap(),
        "unknown device"
    );
    assert!(s.set_push_handle(rid(1), d, Some("ph1.old".into())).await.unwrap());
    // The device re-registers a new handle before the dead report for the old one arrives.
    assert!(s.set_push_handle(rid(1), d, Some("ph1.new".into())).await.unwrap());
    assert!(!s.drop_push_handle_if(rid(1), d, "ph1.old").await.unwrap());
    assert_eq!(s.push_handle(rid(1), d).await.unwrap().as_deref(), Some("ph1.new"));
    assert!(s.drop_push_handle_if(rid(1), d, "ph1.new").await.unwrap());
    assert_eq!(s.push_handle(rid(1), d).await.unwrap(), None);
    // Survives a restart; goes with the device.
    assert!(s.set_push_handle(rid(1), d, Some("ph1.kept".into())).await.unwrap());
    let h = h.reopen();
    let s = h.store();
    assert_eq!(s.push_handle(rid(1), d).await.unwrap().as_deref(), Some("ph1.kept"));
    assert!(s.set_push_handle(rid(1), d, None).await.unwrap());
    assert_eq!(s.push_handle(rid(1), d).await.unwrap(), None);
    s.set_push_handle(rid(1), d, Some("ph1.again".into())).await.unwrap();
    assert!(s.delete_device(rid(1), d).await.unwrap());
    assert_eq!(s.push_handle(rid(1), d).await.unwrap(), None);
}

pub(crate) async fn outbox_is_written_with_the_send_and_survives_restart<H: Harness>() {
    use relay_core::interconnect::EntryState;
    use storage::OutboxItem;
    let h = H::new();
    let s = h.store();
    let d = register(s, rid(1), 1).await;
    let mut req = send_req(&[rid(1)], msg("mixed"));
    req.outbox = vec![
        OutboxItem {
            peer: "carrier-b".into(),
            record: Bytes::from_static(b"sealed-part-b"),
        },
        OutboxItem {
            peer: "carrier-c".into(),
            record: Bytes::from_static(b"sealed-part-c"),
        },
    ];
    let out = s.send(req).await.unwrap();
    assert_eq!(out.delivered_to, vec![(rid(1), d)]);
    // A remote-only send: nothing local, one outbox entry.
    let mut remote = send_req(&[], msg("remote"));
    remote.outbox = vec![OutboxItem {
        peer: "carrier-b".into(),
        record: Bytes::from_static(b"sealed-remote"),
    }];
    let remote_out = s.send(remote).await.unwrap();
    assert!(remote_out.delivered_to.is_empty());

    let h = h.reopen();
    let s = h.store();
    let due = s.outbox_due("carrier-b", NOW, 10).await.unwrap();
    assert_eq!(due.len(), 2);
    assert_eq!(
        (due[0].envelope_id, &due[0].record[..]),
        (out.server_id, &b"sealed-part-b"[..])
    );
    assert_eq!(due[1].envelope_id, remote_out.server_id);
    assert_eq!(s.outbox_depth("carrier-b").await.unwrap(), (2, Some(NOW)));
    assert_eq!(s.outbox_depth("carrier-c").await.unwrap().0, 1);
    assert_eq!(s.outbox_depth("nobody").await.unwrap(), (0, None));

    // Retry: not due until its time; delete; dead-letter with an audit record.
    let mut st = due[0].state;
    st.attempts = 1;
    st.next_attempt_ms = NOW + 5_000;
    s.outbox_retry("carrier-b", due[0].seq, st).await.unwrap();
    assert_eq!(s.outbox_due("carrier-b", NOW, 10).await.unwrap().len(), 1);
    let later = s.outbox_due("carrier-b", NOW + 5_000, 10).await.unwrap();
    assert_eq!(later.len(), 2);
    assert_eq!(later[0].state, EntryState { attempts: 1, ..st });
    s.outbox_delete("carrier-b", due[1].seq).await.unwrap();
    s.outbox_dead_letter("carrier-b", due[0].seq, "peer answered 404".into(), NOW)
        .await
        .unwrap();
    assert_eq!(s.outbox_depth("carrier-b").await.unwrap(), (0, None));
    let log = s.audit_log().await.unwrap();
    let dead: Vec<_> = log.iter().filter(|r| r.kind == "interconnect.dead_letter").collect();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].detail, "peer answered 404");
    // The registrations before it are there too, by rid.
    assert!(
        log.iter()
            .any(|r| r.kind == "device.register" && r.detail.starts_with("rid="))
    );

    // An idempotent retry of the mixed send queues nothing new.
    let mut again = send_req(&[rid(1)], msg("idem"));
    again.client_message_id = Some(ClientMessageId([7; 16]));
    again.outbox = vec![OutboxItem {
        peer: "carrier-d".into(),
        record: Bytes::from_static(b"x"),
    }];
    s.send(again.clone()).await.unwrap();
    assert!(s.send(again).await.unwrap().duplicate);
    assert_eq!(s.outbox_depth("carrier-d").await.unwrap().0, 1);
}

pub(crate) async fn audit_log_is_a_hash_chain<H: Harness>() {
    let h = H::new();
    let s = h.store();
    let a = s
        .audit_append("residency.refused", "peer c (GB)".into(), NOW)
        .await
        .unwrap();
    let b = s
        .audit_append("interconnect.reload", "3 peers".into(), NOW + 1)
        .await
        .unwrap();
    assert_eq!((a.seq, b.seq), (1, 2));
    assert_ne!(a.hash, b.hash);
    let h = h.reopen();
    let s = h.store();
    let c = s.audit_append("x", String::new(), NOW + 2).await.unwrap();
    assert_eq!(c.seq, 3, "the chain continues after a restart");
    let log = s.audit_log().await.unwrap();
    assert_eq!(log.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(log[1], b);
}

/// The audit records are the leaves of an RFC 6962 tree whose head the store keeps (across
/// restarts), and signed checkpoints are kept by size.
pub(crate) async fn audit_log_is_a_merkle_tree_with_checkpoints<H: Harness>() {
    use relay_core::auditlog::{Frontier, leaf_hash};
    let h = H::new();
    let s = h.store();
    let empty = s.audit_head().await.unwrap();
    assert_eq!((empty.size, empty.root), (0, Frontier::default().root()));
    for i in 0..5 {
        s.audit_append("interconnect.reload", format!("{i} peers"), NOW + i)
            .await
            .unwrap();
    }
    let leaves = |log: &[AuditRecord]| {
        let mut f = Frontier::default();
        for r in log {
            f.push(leaf_hash(r.seq, r.at_ms, &r.kind, &r.detail));
        }
        f
    };
    let head = s.audit_head().await.unwrap();
    assert_eq!(
        (head.size, head.root),
        (5, leaves(&s.audit_log().await.unwrap()).root())
    );
    s.audit_add_checkpoint(5, "note at 5\n".into()).await.unwrap();
    s.audit_add_checkpoint(2, "note at 2\n".into()).await.unwrap();
    let h = h.reopen();
    let s = h.store();
    s.audit_append("x", "after the restart".into(), NOW + 9).await.unwrap();
    let log = s.audit_log().await.unwrap();
    let head = s.audit_head().await.unwrap();
    assert_eq!(
        (head.size, head.root),
        (6, leaves(&log).root()),
        "the frontier survives a restart"
    );
    assert_eq!(
        s.audit_checkpoints().await.unwrap(),
        vec!["note at 2\n".to_owned(), "note at 5\n".to_owned()],
        "by size"
    );
}

/// Retention: pruning keeps the chain hash and frontier after the last pruned record, so the
/// tree head does not change and the rest of the chain still checks, across a restart.
pub(crate) async fn audit_log_prunes_behind_a_base<H: Harness>() {
    use relay_core::auditlog::{Frontier, leaf_hash};
    let h = H::new();
    let s = h.store();
    for i in 0..5 {
        s.audit_append("interconnect.reload", format!("{i} peers"), NOW + i)
            .await
            .unwrap();
    }
    let all = s.audit_log().await.unwrap();
    let head = s.audit_head().await.unwrap();
    assert_eq!(s.audit_base().await.unwrap(), None);
    let base = s.audit_prune(3).await.unwrap().expect("pruned");
    let mut f = Frontier::default();
    for r in &all[..3] {
        f.push(leaf_hash(r.seq, r.at_ms, &r.kind, &r.detail));
    }
    assert_eq!(
        (base.size, base.chain, base.frontier.clone()),
        (3, all[2].hash, f.encode())
    );
    assert_eq!(s.audit_prune(2).await.unwrap(), None, "not past the base");
    let h = h.reopen();
    let s = h.store();
    assert_eq!(s.audit_log().await.unwrap(), all[3..].to_vec());
    assert_eq!(s.audit_head().await.unwrap(), head, "the tree is the same");
    assert_eq!(s.audit_base().await.unwrap(), Some(base));
    s.audit_append("x", "after".into(), NOW + 9).await.unwrap();
    assert_eq!(s.audit_log().await.unwrap().len(), 3);
    assert!(s.audit_prune(6).await.unwrap().is_some());
    assert!(
        s.audit_log().await.unwrap().is_empty(),
        "everything pruned is still a valid log"
    );
}

pub(crate) async fn ack_needs_the_whole_server_id<H: Harness>() {
    let h = H::new();
    let s = h.store();
    let d = register(s, rid(1), 1).await;
    let out = s.send(send_req(&[rid(1)], msg("a"))).await.unwrap();
    let mut forged = out.server_id;
    forged.0[15] ^= 1; // same sequence half, different random half
    let n = s
        .ack(
            rid(1),
            d,
            Ack {
                server_ids: vec![forged],
                up_to: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(n, 0);
    assert_eq!(page(s, rid(1), d).await.envelopes.len(), 1);
    // The queued-bytes bookkeeping survives a restart (it is derived from the mailbox).
    let h = h.reopen();
    let s = h.store();
    let ack = Ack {
        server_ids: vec![out.server_id],
        up_to: None,
    };
    assert_eq!(s.ack(rid(1), d, ack).await.unwrap(), 1);
    assert_eq!(s.stats().await.unwrap().blobs, 0);
}

pub(crate) async fn outbox_leases_hand_each_entry_out_once<H: Harness>() {
    let h = H::new();
    let s = h.store();
    for tag in ["a", "b", "c"] {
        let mut req = send_req(&[], msg(tag));
        req.outbox = vec![OutboxItem {
            peer: "carrier-b".into(),
            record: Bytes::from(tag.as_bytes().to_vec()),
        }];
        s.send(req).await.unwrap();
    }
    let first = s.outbox_lease("carrier-b", NOW, 2).await.unwrap();
    assert_eq!(first.len(), 2);
    let rest = s.outbox_lease("carrier-b", NOW, 10).await.unwrap();
    assert_eq!(rest.len(), 1, "leased entries are not handed out again");
    assert!(s.outbox_lease("carrier-b", NOW, 10).await.unwrap().is_empty());
    assert_eq!(
        s.outbox_due("carrier-b", NOW, 10).await.unwrap().len(),
        3,
        "reading what is due leases nothing"
    );
    // Recording an attempt ends the lease; a lease nobody ends expires.
    s.outbox_retry("carrier-b", first[0].seq, first[0].state).await.unwrap();
    let again = s.outbox_lease("carrier-b", NOW, 10).await.unwrap();
    assert_eq!(again.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![first[0].seq]);
    let expired = s.outbox_lease("carrier-b", NOW + 3_600_000, 10).await.unwrap();
    assert_eq!(expired.len(), 3, "every lease expired after an hour");
}
