//! Keys in a PKCS#11 token (a real SoftHSM2 token per test): two carriers, each on its own
//! token, register, send locally and across the interconnect, claim KeyPackages; no clear
//! K_rid or outbox key anywhere in the data directory; the token refuses to let its keys
//! out; every unseal is audited and the token-signed log verifies; an address keeps its rid
//! across a restart. And each bad token setting is a clear error that changes nothing.

use std::path::Path;
use std::time::Duration;

use relay_client::Recipient;
use test_support::softhsm::SoftHsm;

/// `gateway --config DATA.toml --data-dir DATA ARGS` seeing the token.
fn cli(data: &Path, hsm: &SoftHsm, admin: u16, args: &[&str]) -> std::process::Output {
    crate::process::gateway_cli_env(data, admin, hsm.env(), args)
}

fn ok(out: &std::process::Output) -> String {
    crate::process::ok(out)
}

#[track_caller]
fn fails(out: &std::process::Output, says: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "it succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr.contains(says), "expected {says:?} in: {stderr}");
    stderr
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Whether any 32 bytes anywhere under `dir` are the K_rid that maps `address` to `rid`.
fn rid_key_in_clear(dir: &Path, address: &str, rid: &[u8; 32]) -> Option<std::path::PathBuf> {
    let address = relay_core::Address::parse(address).unwrap();
    files(dir).into_iter().find(|f| {
        let bytes = std::fs::read(f).unwrap_or_default();
        bytes.windows(32).any(|w| {
            let key: [u8; 32] = w.try_into().unwrap();
            relay_core::RidKey::from_bytes(key).rid(&address).0 == *rid
        })
    })
}

fn rid_of(audit: &str) -> [u8; 32] {
    let hex = audit
        .split("rid=")
        .nth(1)
        .map(|s| &s[..64])
        .expect("a device.register record");
    let bytes: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    bytes.try_into().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_on_a_token_relays_and_keeps_no_clear_key() {
    use crate::interconnect_faults::{interconnect_toml, peer_toml};
    let dir = tempfile::tempdir().unwrap();
    let (hsm_a, hsm_b) = (
        SoftHsm::new(&dir.path().join("hsm-a"), "carrier-a", "1234"),
        SoftHsm::new(&dir.path().join("hsm-b"), "carrier-b", "5678"),
    );
    let ca = test_support::pki::RcgenCa::new(&dir.path().join("pki"), "carriers");
    let (leaf_a, leaf_b) = (
        ca.issue("a", "carrier-a.test", 1, None),
        ca.issue("b", "carrier-b.test", 2, None),
    );
    let (a_ic, b_ic) = (test_support::process::free_port(), test_support::process::free_port());
    let (peers_a, peers_b) = (dir.path().join("peers-a.toml"), dir.path().join("peers-b.toml"));
    std::fs::write(&peers_a, peer_toml("b", "carrier-b.test", b_ic, &ca.cert, "+4477")).unwrap();
    std::fs::write(&peers_b, peer_toml("a", "carrier-a.test", a_ic, &ca.cert, "+1555")).unwrap();
    let (data_a, data_b) = (dir.path().join("a"), dir.path().join("b"));
    let toml_a = format!(
        "{}{}",
        hsm_a.keys_toml(),
        interconnect_toml(a_ic, "carrier-a.test", &leaf_a, &peers_a, "+1555")
    );
    let toml_b = format!(
        "{}{}",
        hsm_b.keys_toml(),
        interconnect_toml(b_ic, "carrier-b.test", &leaf_b, &peers_b, "+4477")
    );
    for (data, hsm, toml) in [(&data_a, &hsm_a, &toml_a), (&data_b, &hsm_b, &toml_b)] {
        std::fs::write(data.with_extension("toml"), toml).unwrap();
        let init = ok(&cli(data, hsm, 1, &["keys", "init"]));
        assert!(
            init.contains("created rcs-relay-kek") && init.contains("created rcs-relay-audit"),
            "{init}"
        );
        // A second init finds everything in place.
        assert!(ok(&cli(data, hsm, 1, &["keys", "init"])).contains("nothing to do"));
    }
    let env_a: Vec<(&str, String)> = hsm_a.env();
    let env_a: Vec<(&str, &str)> = env_a.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let env_b: Vec<(&str, String)> = hsm_b.env();
    let env_b: Vec<(&str, &str)> = env_b.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (log_a, log_b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let a = crate::process::spawn_gateway_with(&data_a, &log_a, &env_a, &toml_a).await;
    let b = crate::process::spawn_gateway_with(&data_b, &log_b, &env_b, &toml_b).await;

    let (alice_addr, carol_addr, bob_addr) = ("tel:+15550117001", "tel:+15550117002", "tel:+447700917003");
    // Provisioning tokens are signed by the token (`gateway provision`).
    let register = async |gw: &test_support::process::Proc, data: &Path, address: &str| {
        let hsm = if data == data_a.as_path() { &hsm_a } else { &hsm_b };
        let t = ok(&cli(data, hsm, gw.admin, &["provision", address]));
        gw.client().register(t.trim()).await.unwrap().credential
    };
    let alice_credential = register(&a, &data_a, alice_addr).await;
    let alice = a.client().with_credential(alice_credential.clone());
    let carol_credential = register(&a, &data_a, carol_addr).await;
    let carol = a.client().with_credential(carol_credential.clone());
    let bob = b.client().with_credential(register(&b, &data_b, bob_addr).await);

    // A local send, a send across the interconnect (sealed in A's outbox), a claim.
    alice
        .send(
            &[Recipient::address(carol_addr)],
            test_support::framed_message(b"local"),
            None,
            false,
        )
        .await
        .unwrap();
    alice
        .send(
            &[Recipient::address(bob_addr)],
            test_support::framed_message(b"to carrier b"),
            None,
            false,
        )
        .await
        .unwrap();
    let member = test_support::mls::Member::new(carol_addr);
    carol.upload_key_packages(&[member.key_package_bytes()]).await.unwrap();
    assert_eq!(alice.claim_key_packages(&[carol_addr]).await.unwrap().len(), 1);
    let got = carol.receive(0, 10, 5).await.unwrap().envelopes;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message, test_support::framed_message(b"local"));
    test_support::eventually(
        "bob receives across the interconnect",
        Duration::from_secs(20),
        async || {
            bob.receive(0, 10, 1).await.is_ok_and(|r| {
                r.envelopes
                    .iter()
                    .any(|e| e.message == test_support::framed_message(b"to carrier b"))
            })
        },
    )
    .await;

    // Keys: only sealed on disk; no 32 bytes anywhere in the data directory are K_rid.
    let keys = data_a.join("keys");
    for name in ["rid.key", "outbox.key", "audit.key"] {
        assert!(!keys.join(name).exists(), "{name} in the clear");
    }
    for name in ["rid.key.sealed", "outbox.key.sealed", "audit.vkey"] {
        assert!(keys.join(name).exists(), "{name} missing");
    }
    let audit = ok(&cli(&data_a, &hsm_a, a.admin, &["audit", "show"]));
    let alice_rid = rid_of(&audit);
    assert_eq!(
        rid_key_in_clear(&data_a, alice_addr, &alice_rid),
        None,
        "K_rid in the clear"
    );
    // Nor any other copy of a sealed key: every 32 bytes checked against its fingerprint.
    for sealed in ["rid.key.sealed", "outbox.key.sealed"] {
        assert_eq!(
            test_support::softhsm::key_in_clear(&data_a, &keys.join(sealed)),
            None,
            "{sealed}'s key in the clear"
        );
    }
    for name in ["rid.key", "outbox.key"] {
        let created = audit
            .lines()
            .filter(|l| {
                l.contains("\"key.create\"") && l.contains(&format!("key={name} provider=pkcs11 token=carrier-a"))
            })
            .count();
        assert_eq!(created, 1, "the creation of {name} is audited: {audit}");
    }
    assert!(!audit.contains("key.unseal"), "nothing to unseal at the first start");
    // The token-signed log verifies with audit.vkey.
    let checkpoint = dir.path().join("kept.note");
    std::fs::write(
        &checkpoint,
        ok(&cli(&data_a, &hsm_a, a.admin, &["audit", "checkpoint"])),
    )
    .unwrap();
    ok(&cli(
        &data_a,
        &hsm_a,
        a.admin,
        &["audit", "verify", "--against", checkpoint.to_str().unwrap()],
    ));

    // Custody: the inventory shows the token's attributes; the token refuses to wrap its keys out.
    let inventory = ok(&cli(&data_a, &hsm_a, a.admin, &["keys", "list"]));
    let json: serde_json::Value = serde_json::from_str(&inventory[..inventory.rfind('}').unwrap() + 1]).unwrap();
    assert_eq!(json["provider"], "pkcs11");
    for label in ["rcs-relay-kek", "rcs-relay-audit", "rcs-relay-provisioning-0"] {
        let key = json["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["name"] == label)
            .unwrap();
        let c = &key["custody"];
        assert_eq!(
            (
                c["sensitive"].as_bool(),
                c["extractable"].as_bool(),
                c["local"].as_bool(),
                c["never_extractable"].as_bool()
            ),
            (Some(true), Some(false), Some(true), Some(true)),
            "{key}"
        );
    }
    // Every class is in the inventory, with a rotate-by where there is a cadence.
    let classes: Vec<&str> = json["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["class"].as_str().unwrap())
        .collect();
    for class in [
        "K_rid (recipient hashes)",
        "interconnect outbox sealing",
        "audit signing",
        "provisioning signing",
        "key-encryption key (seals the symmetric keys)",
        "TLS certificate key (client listener)",
        "interconnect certificate key (mutual TLS)",
    ] {
        assert!(classes.contains(&class), "{class} missing from {classes:?}");
    }
    for k in json["keys"].as_array().unwrap() {
        let class = k["class"].as_str().unwrap();
        if class.starts_with("provisioning") || class.starts_with("audit") || class.contains("certificate") {
            assert!(k["rotate_by_ms"].as_u64().is_some(), "{k}");
        }
    }
    let rid_entry = json["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "rid.key")
        .unwrap();
    assert_eq!(rid_entry["held_by"], "sealed under rcs-relay-kek");
    let proof = ok(&cli(&data_a, &hsm_a, a.admin, &["keys", "prove-custody"]));
    assert_eq!(proof.matches("the token refused to wrap it out").count(), 3, "{proof}");
    assert!(
        proof.contains("KeyUnextractable") || proof.contains("unextractable"),
        "{proof}"
    );

    // A restart unseals the same K_rid: Alice's credential still works and what Carol sent
    // her before the restart is in her mailbox.
    carol
        .send(
            &[Recipient::address(alice_addr)],
            test_support::framed_message(b"before restart"),
            None,
            false,
        )
        .await
        .unwrap();
    a.terminate();
    let a = crate::process::spawn_gateway_with(&data_a, &log_a, &env_a, &toml_a).await;
    let alice = a.client().with_credential(alice_credential.clone());
    let got = alice.receive(0, 10, 5).await.unwrap().envelopes;
    assert!(
        got.iter()
            .any(|e| e.message == test_support::framed_message(b"before restart")),
        "{got:?}"
    );
    bob.send(
        &[Recipient::address(alice_addr)],
        test_support::framed_message(b"from b"),
        None,
        false,
    )
    .await
    .unwrap();
    test_support::eventually(
        "alice receives from carrier b after the restart",
        Duration::from_secs(20),
        async || {
            alice.receive(0, 10, 1).await.is_ok_and(|r| {
                r.envelopes
                    .iter()
                    .any(|e| e.message == test_support::framed_message(b"from b"))
            })
        },
    )
    .await;
    let audit = ok(&cli(&data_a, &hsm_a, a.admin, &["audit", "show"]));
    for name in ["rid.key", "outbox.key"] {
        let unsealed = audit
            .lines()
            .filter(|l| l.contains("\"key.unseal\"") && l.contains(&format!("key={name} provider=pkcs11")))
            .count();
        assert_eq!(unsealed, 1, "the restart's unseal of {name} is audited: {audit}");
    }

    // The audit key rotates inside the token: a new Ed25519 key there, the handover signed by
    // both, and the log still verifies.
    let rotated = ok(&cli(&data_a, &hsm_a, a.admin, &["keys", "rotate", "audit"]));
    assert!(rotated.contains("audit version=1 state=active"), "{rotated}");
    assert!(hsm_a.objects().contains("rcs-relay-audit-1"), "{}", hsm_a.objects());
    let export = ok(&cli(&data_a, &hsm_a, a.admin, &["audit", "export"]));
    let vkeys = std::fs::read_to_string(data_a.join("keys/audit.vkey")).unwrap();
    let handovers = export
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "checkpoint")
        .filter(|v| relay_core::auditlog::signers(v["note"].as_str().unwrap(), &vkeys) == Ok(2))
        .count();
    assert_eq!(handovers, 1);
    ok(&cli(
        &data_a,
        &hsm_a,
        a.admin,
        &["audit", "verify", "--against", checkpoint.to_str().unwrap()],
    ));
    let proof = ok(&cli(&data_a, &hsm_a, a.admin, &["keys", "prove-custody"]));
    assert_eq!(proof.matches("the token refused to wrap it out").count(), 4, "{proof}");

    // The provisioning key rotates inside the token with an overlap window: a token of the
    // old key registers until the old key is retired, then it is refused.
    let provision = |address: &str| {
        ok(&cli(&data_a, &hsm_a, a.admin, &["provision", address]))
            .trim()
            .to_owned()
    };
    let (old_1, old_2) = (provision("tel:+15550117011"), provision("tel:+15550117012"));
    let old_id = gateway::api::provisioning_key_id(&std::fs::read(data_a.join("keys/provisioning.pub")).unwrap());
    let rotated = ok(&cli(&data_a, &hsm_a, a.admin, &["keys", "rotate", "provisioning"]));
    assert!(rotated.contains("active; the previous key is retiring"), "{rotated}");
    assert!(
        hsm_a.objects().contains("rcs-relay-provisioning-1"),
        "{}",
        hsm_a.objects()
    );
    a.client()
        .register(&old_1)
        .await
        .expect("the old key's token in the overlap window");
    let new = provision("tel:+15550117013");
    a.client().register(&new).await.expect("the new key's token");
    ok(&cli(
        &data_a,
        &hsm_a,
        a.admin,
        &["keys", "retire", &format!("provisioning:{old_id}")],
    ));
    let refused = a.client().register(&old_2).await;
    assert!(
        matches!(&refused, Err(relay_client::ClientError::Api { status: 401, code, .. }) if code == "provisioning_key_revoked"),
        "{refused:?}"
    );

    // K_rid rotates under the token too: the new version exists only sealed; after a restart
    // a delivery from carrier B (the interconnect's inbound path) re-keys Alice first.
    let rotated = ok(&cli(&data_a, &hsm_a, a.admin, &["keys", "rotate", "rid"]));
    assert!(rotated.contains("rid:1 created"), "{rotated}");
    assert!(data_a.join("keys/rid-1.key.sealed").exists() && !data_a.join("keys/rid-1.key").exists());
    a.terminate();
    let a = crate::process::spawn_gateway_with(&data_a, &log_a, &env_a, &toml_a).await;
    let remaining = || crate::interconnect_faults::metric(a.admin, "relay_rid_rekey_remaining");
    let before = remaining().await;
    assert!(before >= 3.0, "every registered address is marked: {before}");
    let alice = a.client().with_credential(alice_credential.clone());
    let m = test_support::framed_message(b"after the K_rid rotation");
    bob.send(&[Recipient::address(alice_addr)], m.clone(), None, false)
        .await
        .unwrap();
    test_support::eventually(
        "alice receives across the interconnect after the rotation",
        Duration::from_secs(20),
        async || {
            alice
                .receive(0, 10, 1)
                .await
                .is_ok_and(|r| r.envelopes.iter().any(|e| e.message == m))
        },
    )
    .await;
    assert_eq!(remaining().await, before - 1.0, "the peer's delivery re-keyed alice");
    let audit = ok(&cli(&data_a, &hsm_a, a.admin, &["audit", "show"]));
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"key.unseal\"") && l.contains("key=rid-1.key")),
        "the new K_rid's unseal is audited"
    );
    let _ = b;
}

#[test]
fn bad_token_settings_are_clear_errors_that_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let hsm = SoftHsm::new(&dir.path().join("hsm"), "relay", "1234");
    let data = dir.path().join("data");
    let config = data.with_extension("toml");
    let with = |toml: &str| std::fs::write(&config, toml).unwrap();
    let keys_toml = hsm.keys_toml();

    // The file provider has nothing to initialise.
    with("");
    fails(&cli(&data, &hsm, 1, &["keys", "init"]), "provider = \"pkcs11\"");
    // Unknown key names, a version where a class is rotated, a version that does not exist.
    fails(
        &cli(&data, &hsm, 1, &["keys", "rotate", "nonsense"]),
        "does not rotate this way",
    );
    fails(
        &cli(&data, &hsm, 1, &["keys", "rotate", "outbox:0"]),
        "does not rotate this way",
    );
    fails(
        &cli(&data, &hsm, 1, &["keys", "retire", "nonsense"]),
        "unknown key \"nonsense\"",
    );
    fails(
        &cli(&data, &hsm, 1, &["keys", "mark-compromised", "outbox:7"]),
        "no version 7 of outbox",
    );
    fails(
        &cli(&data, &hsm, 1, &["keys", "mark-compromised", "outbox:x"]),
        "outbox:<version>",
    );
    // Retiring an outbox key needs the running gateway, which checks the queue.
    fails(
        &cli(&data, &hsm, 1, &["keys", "retire", "outbox:0"]),
        "needs the running gateway",
    );
    assert!(!data.exists(), "a refused key command wrote nothing");
    // A wrong PIN, a missing module, a missing token.
    let wrong_pin = dir.path().join("wrong-pin");
    std::fs::write(&wrong_pin, "9999\n").unwrap();
    with(&keys_toml.replace(&hsm.pin_file.display().to_string(), &wrong_pin.display().to_string()));
    fails(
        &cli(&data, &hsm, 1, &["keys", "init"]),
        "the PIN for token \"relay\" is wrong",
    );
    let serve = fails(&cli(&data, &hsm, 1, &["serve"]), "the PIN for token \"relay\" is wrong");
    assert!(!serve.contains("9999"), "the PIN is never printed");
    with(&keys_toml.replace(test_support::softhsm::MODULE, "/nonexistent/libpkcs11.so"));
    fails(
        &cli(&data, &hsm, 1, &["keys", "init"]),
        "PKCS#11 module /nonexistent/libpkcs11.so: no such file",
    );
    with(&keys_toml.replace("token_label = \"relay\"", "token_label = \"elsewhere\""));
    fails(
        &cli(&data, &hsm, 1, &["keys", "init"]),
        "no PKCS#11 token labelled \"elsewhere\"",
    );
    // The gateway does not start on a token without its keys.
    with(&keys_toml);
    fails(&cli(&data, &hsm, 1, &["serve"]), "run `gateway keys init` first");
    assert!(
        !hsm.objects().contains("rcs-relay"),
        "nothing created: {}",
        hsm.objects()
    );

    // A key-encryption key made the way pkcs11-tool makes keys by default (extractable):
    // refused, and nothing else is created.
    let made = hsm.tool(&[
        "--keygen",
        "--key-type",
        "AES:32",
        "--label",
        "rcs-relay-kek",
        "--extractable",
    ]);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    fails(&cli(&data, &hsm, 1, &["keys", "init"]), "wrong attributes");
    assert!(!hsm.objects().contains("rcs-relay-audit"), "{}", hsm.objects());
    // And the custody probe sees such a key leave the token.
    fails(
        &cli(&data, &hsm, 1, &["keys", "prove-custody"]),
        "rcs-relay-kek LEFT the token",
    );
    assert!(
        std::fs::read_dir(data.join("keys")).map_or(true, |mut d| d.next().is_none()),
        "no key written"
    );
}
