//! K_rid rotation by lazy re-key, against the contract: every record of a marked rid moves to
//! its new rid in one write, and the store holds exactly what it held, under the new rid,
//! also after a restart.

use bytes::Bytes;
use storage::*;

use crate::Harness;
use crate::contract::{NOW, msg, new_device as device, rid, send_req};

fn send(to: &[Rid], tag: &str, from: (Rid, DeviceId), cmid: Option<[u8; 16]>) -> SendRequest {
    SendRequest {
        sender: from,
        client_message_id: cmid.map(ClientMessageId),
        request_digest: [1; 32],
        ..send_req(to, msg(tag))
    }
}

async fn tags<S: Store>(s: &S, r: Rid, d: DeviceId) -> Vec<String> {
    s.receive(r, d, 0, 100, NOW)
        .await
        .unwrap()
        .envelopes
        .into_iter()
        .map(|e| String::from_utf8(e.message.as_bytes().to_vec()).unwrap())
        .collect()
}

fn kp(tag: u8, last_resort: bool) -> NewKeyPackage {
    NewKeyPackage {
        kp_ref: vec![tag; 32],
        bytes: Bytes::from(format!("sealed-for-old-{tag}")),
        not_after_ms: NOW + 3_600_000,
        last_resort,
    }
}

pub(crate) async fn a_marked_rid_moves_with_everything_it_holds<H: Harness>() {
    let h = H::new();
    let s = h.store();
    let (old, new, other) = (rid(1), rid(9), rid(2));
    let (req, cred1) = device(old, 1);
    let a1 = s.register_device(req).await.unwrap();
    let a2 = s.register_device(device(old, 2).0).await.unwrap();
    let b = s.register_device(device(other, 3).0).await.unwrap();
    let m1 = s.send(send(&[old, other], "m1", (other, b), None)).await.unwrap();
    s.ack(
        old,
        a1,
        Ack {
            server_ids: vec![m1.server_id],
            up_to: None,
        },
    )
    .await
    .unwrap();
    s.send(send(&[old], "m2", (other, b), None)).await.unwrap();
    let first = s.send(send(&[other], "idem", (old, a1), Some([5; 16]))).await.unwrap();
    s.upload_key_packages(old, a1, vec![kp(1, false), kp(2, true)], 10, NOW)
        .await
        .unwrap();
    s.set_push_handle(old, a2, Some("handle-a2".into())).await.unwrap();
    s.set_suspended(old, true, NOW).await.unwrap();

    assert_eq!(s.rekey_begin(NOW).await.unwrap(), 2, "both registered rids are marked");
    let reseal: Reseal = Box::new(|b: &[u8]| {
        let text = std::str::from_utf8(b).ok()?;
        Some(text.replace("sealed-for-old", "sealed-for-new").into_bytes())
    });
    assert!(s.rekey(old, new, reseal).await.unwrap());
    let again: Reseal = Box::new(|b: &[u8]| Some(b.to_vec()));
    assert!(!s.rekey(old, new, again).await.unwrap(), "moved once");

    let check = async |s: &H::S| {
        let auth = s.device_by_lookup(cred1.lookup()).await.unwrap().unwrap();
        assert_eq!((auth.rid, auth.device), (new, a1), "the credential finds the new rid");
        assert_eq!(s.devices(new).await.unwrap(), vec![a1, a2]);
        assert!(s.devices(old).await.unwrap().is_empty());
        assert_eq!(
            tags(s, new, a1).await,
            vec!["mls-bytes-m2"],
            "what a1 acknowledged stays acknowledged"
        );
        assert_eq!(tags(s, new, a2).await, vec!["mls-bytes-m1", "mls-bytes-m2"]);
        assert!(tags(s, old, a2).await.is_empty());
        assert_eq!(
            tags(s, other, b).await,
            vec!["mls-bytes-m1", "mls-bytes-idem"],
            "others keep theirs"
        );
        assert_eq!(s.push_handle(new, a2).await.unwrap().as_deref(), Some("handle-a2"));
        assert_eq!(s.push_handle(old, a2).await.unwrap(), None);
        assert_eq!(s.suspended().await.unwrap(), vec![new]);
        assert_eq!(
            s.key_package_count(new, a1, NOW).await.unwrap(),
            KeyPackageCount {
                one_time: 1,
                last_resort: true
            }
        );
        assert_eq!(s.rekey_marked().await.unwrap(), vec![other]);
    };
    check(s).await;
    assert!(matches!(s.rekey_begin(NOW).await, Err(StoreError::Refused(_))));
    let h = h.reopen();
    let s = h.store();
    check(s).await;
    // The idempotency record moved with its sender.
    let retry = s.send(send(&[other], "idem", (new, a1), Some([5; 16]))).await.unwrap();
    assert_eq!(retry.server_id, first.server_id);
    // KeyPackages were resealed; Welcome routes point at the new rid.
    let claimed = s.claim_key_packages(vec![new], NOW).await.unwrap();
    assert_eq!(claimed[0].bytes, Bytes::from_static(b"sealed-for-new-1"));
    assert_eq!(claimed[0].rid, new);
    let routed = s.devices_for_key_packages(vec![vec![2; 32]]).await.unwrap();
    assert_eq!(routed, Ok(vec![(new, a1)]), "the Welcome route follows the rid");
    assert!(s.claim_key_packages(vec![old], NOW).await.unwrap().is_empty());
    // The device counter moved: the next device of the address gets id 3.
    assert_eq!(s.register_device(device(new, 4).0).await.unwrap(), DeviceId(3));
    // A forced retirement drops the marks left, audited.
    assert_eq!(s.rekey_abandon(NOW).await.unwrap(), 1);
    assert!(s.rekey_marked().await.unwrap().is_empty());
    let audit: Vec<String> = s.audit_log().await.unwrap().into_iter().map(|r| r.detail).collect();
    assert!(audit.contains(&"rid marked=2".to_owned()), "{audit:?}");
    assert!(audit.contains(&"rid forced unmigrated=1".to_owned()), "{audit:?}");
    assert_eq!(s.rekey_begin(NOW).await.unwrap(), 2);
}
