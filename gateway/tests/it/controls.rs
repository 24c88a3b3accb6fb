//! Incident-response controls with the `gateway` binary: kill switches survive a restart,
//! a revoked device's open long-poll ends at once, a suspended address cannot register or
//! send, and the registrations of a time window are listed — each change audited.

use std::time::Duration;

use relay_client::{ClientError, Recipient};

use crate::process::{gateway_cli as gateway, ok};

#[track_caller]
fn refused<T: std::fmt::Debug>(r: Result<T, ClientError>, status: u16, code: &str) {
    match r {
        Err(ClientError::Api { status: s, code: c, .. }) => assert_eq!((s, c.as_str()), (status, code)),
        other => panic!("expected {status} {code}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switches_revocation_and_suspension() {
    let dir = tempfile::tempdir().unwrap();
    let (data, log) = (dir.path().join("data"), dir.path().join("gateway.log"));
    let token = |n: u32| test_support::provision_token(&data, &format!("tel:+155501150{n:02}"), 3_600_000);
    // The sweeper publishes the live receivers gauge every second.
    let toml = "[storage]\nsweep_interval_secs = 1\n";
    let p = crate::process::spawn_gateway_with(&data, &log, &[], toml).await;
    let client = p.client();
    let alice_credential = client.register(&token(1)).await.unwrap().credential;
    let bob_credential = client.register(&token(2)).await.unwrap().credential;

    // Registration off: 503 with Retry-After and a machine code, also after a restart.
    assert_eq!(
        ok(&gateway(&data, p.admin, &["switch", "off", "registration"])),
        "registration off\n"
    );
    refused(client.register(&token(3)).await, 503, "registration_disabled");
    let raw = client
        .raw(
            http::Method::POST,
            "/v1/devices",
            &[] as &[(http::HeaderName, String)],
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(raw.status, 503);
    assert_eq!(raw.headers.get("retry-after").unwrap(), "60");
    assert!(!gateway(&data, p.admin, &["switch", "off", "nonsense"]).status.success());
    assert!(p.terminate().success());
    let p = crate::process::spawn_gateway_with(&data, &log, &[], toml).await;
    let client = p.client();
    let (alice, bob) = (
        client.with_credential(alice_credential),
        client.with_credential(bob_credential),
    );
    assert!(ok(&gateway(&data, p.admin, &["switch", "list"])).contains("registration"));
    refused(client.register(&token(3)).await, 503, "registration_disabled");
    ok(&gateway(&data, p.admin, &["switch", "on", "registration"]));
    let since = relay_net::clock::now_ms();
    let carol = client.with_credential(client.register(&token(3)).await.unwrap().credential);
    let dave_token = token(4);
    client.register(&dave_token).await.unwrap();

    // KeyPackage uploads off.
    let member = test_support::mls::Member::new("tel:+15550115002");
    ok(&gateway(&data, p.admin, &["switch", "off", "keypackage_upload"]));
    refused(
        bob.upload_key_packages(&[member.key_package_bytes()]).await,
        503,
        "key_package_upload_disabled",
    );
    ok(&gateway(&data, p.admin, &["switch", "on", "keypackage_upload"]));
    bob.upload_key_packages(&[member.key_package_bytes()]).await.unwrap();

    // Revocation: Bob's open long-poll ends with 401 at once, his credential fails, his
    // KeyPackages are not handed out.
    let waiting = {
        let bob = bob.clone();
        tokio::spawn(async move { bob.receive(0, 10, 30).await })
    };
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], p.admin));
    test_support::eventually("Bob's long-poll to be waiting", Duration::from_secs(10), async || {
        test_support::admin_request(admin, "GET", "/metrics")
            .await
            .is_some_and(|m| m.lines().any(|l| l == "relay_live_receivers 1"))
    })
    .await;
    ok(&gateway(
        &data,
        p.admin,
        &["revoke", "tel:+15550115002", "--device", "1"],
    ));
    // Storage wakes the long-poll before the revoke call is answered: within a second of it.
    let ended = tokio::time::timeout(Duration::from_secs(1), waiting)
        .await
        .expect("the long-poll ended within a second of the revocation")
        .unwrap();
    refused(ended, 401, "unauthorized");
    refused(bob.receive(0, 10, 0).await, 401, "unauthorized");
    assert!(
        alice
            .claim_key_packages(&["tel:+15550115002"])
            .await
            .map_or(true, |k| k.is_empty()),
        "no KeyPackage of a revoked device"
    );
    assert!(
        !gateway(&data, p.admin, &["revoke", "tel:+15550115002", "--device", "1"])
            .status
            .success()
    );

    // Suspension: Carol may not send, nor register another device; lifted, she sends again.
    ok(&gateway(&data, p.admin, &["suspend", "tel:+15550115003"]));
    let to_alice = [Recipient::address("tel:+15550115001")];
    let m = test_support::framed_message(b"from carol");
    refused(
        carol.send(&to_alice, m.clone(), None, false).await,
        403,
        "address_suspended",
    );
    refused(client.register(&token(3)).await, 403, "address_suspended");
    ok(&gateway(&data, p.admin, &["suspend", "tel:+15550115003", "--lift"]));
    carol.send(&to_alice, m, None, false).await.unwrap();

    // What was registered since `since`: Carol's and Dave's devices, by rid.
    let listed = ok(&gateway(
        &data,
        p.admin,
        &["registered", "--since-ms", &since.to_string()],
    ));
    assert_eq!(listed.lines().count(), 2, "{listed}");
    assert!(!listed.contains("1555011500"), "rids, not addresses: {listed}");

    // The detection metric moved, labelled with the provisioning key's id (RegistrationSpike
    // in deploy/prometheus/rules.yml watches it; its promtool test fires on a burst).
    let public = std::fs::read(data.join("keys/provisioning.pub")).unwrap();
    let key = gateway::api::provisioning_key_id(&public);
    let metrics = test_support::admin_request(admin, "GET", "/metrics").await.unwrap();
    let registered: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("relay_registrations_total{{key=\"{key}\"}} ")))
        .unwrap_or_else(|| panic!("no relay_registrations_total for key {key}:\n{metrics}"))
        .trim()
        .parse()
        .unwrap();
    assert!(registered >= 2.0, "Carol and Dave since the restart: {registered}");

    // Every change is in the audit log, which verifies.
    let shown = ok(&gateway(&data, p.admin, &["audit", "show"]));
    for kind in [
        "switch.off",
        "switch.on",
        "device.revoke",
        "address.suspend",
        "address.unsuspend",
    ] {
        assert!(shown.contains(&format!("\"kind\":\"{kind}\"")), "no {kind} in {shown}");
    }
    assert!(ok(&gateway(&data, p.admin, &["audit", "verify"])).starts_with("ok:"));
}
