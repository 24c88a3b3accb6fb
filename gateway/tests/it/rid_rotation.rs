//! Rotating K_rid with the `gateway` binary: 100 registered addresses, a rotation and a
//! restart, sends to 50 of them — every message delivered and exactly those 50 re-keyed; the
//! previous key's retirement refused until a background scan of the number range has moved
//! the rest, then allowed; after another restart, on the new key alone, everyone still
//! receives. What was queued before the rotation is delivered after it.

use std::path::Path;
use std::time::Duration;

use relay_client::{Client, Recipient};

use crate::interconnect_faults::metric;
use crate::process::{gateway_cli, ok};

fn address(n: u32) -> String {
    format!("tel:+1555012{n:04}")
}

async fn messages(c: &Client) -> Vec<bytes::Bytes> {
    c.receive(0, 100, 0)
        .await
        .unwrap()
        .envelopes
        .into_iter()
        .map(|e| e.message)
        .collect()
}

fn fails(data: &Path, admin: u16, args: &[&str], says: &str) {
    let out = gateway_cli(data, admin, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{args:?} succeeded: {stdout}");
    assert!(
        stdout.contains(says) || stderr.contains(says),
        "{says:?} not in {stdout}{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_k_rid_rotation_rekeys_every_address_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (data, log) = (dir.path().join("data"), dir.path().join("gateway.log"));
    let p = crate::process::spawn_gateway_with(&data, &log, &[], "").await;
    let mut credentials = Vec::new();
    for n in 0..100 {
        let token = test_support::provision_token(&data, &address(n), 3_600_000);
        credentials.push(p.client().register(&token).await.unwrap().credential);
    }
    let before = test_support::framed_message(b"queued before the rotation");
    let as_device = |p: &test_support::process::Proc, n: usize| p.client().with_credential(credentials[n].clone());
    as_device(&p, 99)
        .send(&[Recipient::address(address(60))], before.clone(), None, false)
        .await
        .unwrap();

    let rotated = ok(&gateway_cli(&data, p.admin, &["keys", "rotate", "rid"]));
    assert!(rotated.contains("rid:1 created"), "{rotated}");
    fails(&data, p.admin, &["keys", "rotate", "rid"], "rid:0 is not retired yet");
    assert!(p.terminate().success());
    let p = crate::process::spawn_gateway_with(&data, &log, &[], "").await;
    assert_eq!(metric(p.admin, "relay_rid_rekey_remaining").await, 100.0);

    // Sends to 50 addresses: each re-keys its recipient first, and is delivered.
    let sender = as_device(&p, 0);
    for n in 0..50 {
        let m = test_support::framed_message(format!("to {n}").as_bytes());
        sender
            .send(&[Recipient::address(address(n))], m, None, false)
            .await
            .unwrap();
    }
    for n in 0..50 {
        let got = messages(&as_device(&p, n as usize)).await;
        assert_eq!(
            got,
            vec![test_support::framed_message(format!("to {n}").as_bytes())],
            "{n}"
        );
    }
    assert_eq!(
        metric(p.admin, "relay_rid_rekey_remaining").await,
        50.0,
        "exactly those 50 moved"
    );
    assert_eq!(metric(p.admin, "relay_rid_rekeyed_total").await, 50.0);
    // An address not named yet still works under the previous key.
    assert_eq!(messages(&as_device(&p, 60)).await, vec![before.clone()]);

    // The previous key cannot retire while addresses are under it.
    fails(
        &data,
        p.admin,
        &["keys", "retire", "rid:0"],
        "50 addresses are still under rid:0",
    );
    fails(&data, p.admin, &["keys", "retire", "rid:1"], "the current key");
    // The background scan of the carrier's range moves the rest.
    let scan = ok(&gateway_cli(
        &data,
        p.admin,
        &["keys", "migrate-rid", "--from", &address(0), "--to", &address(9999)],
    ));
    assert!(scan.contains("scanning 10000 numbers; 50 addresses left"), "{scan}");
    test_support::eventually("the scan re-keys the rest", Duration::from_secs(30), async || {
        metric(p.admin, "relay_rid_rekey_remaining").await == 0.0
    })
    .await;
    assert_eq!(
        messages(&as_device(&p, 60)).await,
        vec![before.clone()],
        "queued mail moved along"
    );
    let retired = ok(&gateway_cli(&data, p.admin, &["keys", "retire", "rid:0"]));
    assert!(retired.contains("rid:0 retired"), "{retired}");
    let audit = ok(&gateway_cli(&data, p.admin, &["audit", "show"]));
    assert!(audit.contains("rid marked=100"), "{audit}");
    assert!(audit.contains("rid version=0 state=retired forced=false"), "{audit}");

    // On the new key alone: every device still authenticates and receives.
    assert!(p.terminate().success());
    let p = crate::process::spawn_gateway_with(&data, &log, &[], "").await;
    assert_eq!(metric(p.admin, "relay_rid_rekey_remaining").await, 0.0);
    for n in [0usize, 49, 60, 99] {
        let m = test_support::framed_message(format!("after {n}").as_bytes());
        as_device(&p, 99)
            .send(&[Recipient::address(address(n as u32))], m.clone(), None, false)
            .await
            .unwrap();
        assert!(messages(&as_device(&p, n)).await.contains(&m), "{n}");
    }
    let fresh = test_support::provision_token(&data, &address(5), 3_600_000);
    let again = p.client().register(&fresh).await.unwrap();
    assert_eq!(again.device_id, 2, "the address keeps its devices: the next one is 2");
    assert!(
        !std::fs::read_to_string(&log).unwrap().contains("1555012"),
        "no address in the log"
    );

    // A forced retirement: a second rotation, one address re-keyed, the rest given up
    // (audited); a given-up address is then unknown under the new key.
    ok(&gateway_cli(&data, p.admin, &["keys", "rotate", "rid"]));
    assert!(p.terminate().success());
    let p = crate::process::spawn_gateway_with(&data, &log, &[], "").await;
    assert_eq!(metric(p.admin, "relay_rid_rekey_remaining").await, 100.0);
    let m = test_support::framed_message(b"re-keyed");
    as_device(&p, 1)
        .send(&[Recipient::address(address(7))], m.clone(), None, false)
        .await
        .unwrap();
    let forced = ok(&gateway_cli(&data, p.admin, &["keys", "retire", "rid:1", "--force"]));
    assert!(forced.contains("rid:1 retired"), "{forced}");
    assert_eq!(metric(p.admin, "relay_rid_rekey_remaining").await, 0.0);
    let audit = ok(&gateway_cli(&data, p.admin, &["audit", "show"]));
    assert!(audit.contains("rid forced unmigrated=99"), "{audit}");
    assert!(audit.contains("rid version=1 state=retired forced=true"), "{audit}");
    assert!(messages(&as_device(&p, 7)).await.contains(&m));
    let lost = as_device(&p, 1)
        .send(&[Recipient::address(address(8))], m, None, false)
        .await;
    assert!(
        matches!(&lost, Err(relay_client::ClientError::Api { status: 404, code, .. }) if code == "unknown_recipient"),
        "{lost:?}"
    );
}
