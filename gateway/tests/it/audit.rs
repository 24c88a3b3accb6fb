//! The audit log from the operator's side, with the `gateway` binary: registrations and
//! admin calls are recorded, checkpoints are signed every `audit.checkpoint_every` records
//! and on request, `gateway audit verify` proves an honest export (also against an auditor's
//! earlier checkpoint) and names the first bad record of a tampered one.

use crate::process::{gateway_cli, ok};
use std::path::Path;
use std::time::Duration;

/// `gateway audit ARGS` against the gateway whose admin port is `admin`.
fn audit(data: &Path, admin: u16, args: &[&str]) -> std::process::Output {
    let args: Vec<&str> = std::iter::once("audit").chain(args.iter().copied()).collect();
    gateway_cli(data, admin, &args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_verifies_and_tampering_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (data, log) = (dir.path().join("data"), dir.path().join("gateway.log"));
    let p = crate::process::spawn_gateway_with(&data, &log, &[], "[audit]\ncheckpoint_every = 3\n").await;
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], p.admin));
    let client = p.client();
    let register = async |n: u32| {
        let token = test_support::provision_token(&data, &format!("tel:+1555011400{n}"), 3_600_000);
        client.register(&token).await.unwrap();
    };
    for n in 0..4 {
        register(n).await;
    }
    let reload = test_support::admin_request(admin, "POST", "/admin/tls/reload")
        .await
        .unwrap();
    assert!(reload.starts_with("HTTP/1.1 204"), "{reload}");
    // An auditor keeps a checkpoint of the log as it is now: 4 registrations, the reload and
    // its operator record.
    let kept_note = ok(&audit(&data, p.admin, &["checkpoint"]));
    let kept_size: usize = kept_note.lines().nth(1).unwrap().parse().unwrap();
    assert_eq!(kept_size, 6, "{kept_note}");
    std::fs::write(dir.path().join("kept"), &kept_note).unwrap();
    for n in 4..8 {
        register(n).await;
    }
    // The background checkpointer signs another once three more records are in.
    test_support::eventually("a checkpoint every 3 records", Duration::from_secs(10), async || {
        ok(&audit(&data, p.admin, &["export"]))
            .matches("\"type\":\"checkpoint\"")
            .count()
            >= 2
    })
    .await;
    let export = ok(&audit(&data, p.admin, &["export"]));
    let shown = ok(&audit(&data, p.admin, &["show"]));
    assert_eq!(shown.matches("\"kind\":\"device.register\"").count(), 8, "{shown}");
    assert_eq!(shown.matches("\"kind\":\"admin.tls_reload\"").count(), 1, "{shown}");
    assert!(!shown.contains("1555011400"), "no address in the audit log");
    let file = dir.path().join("export.jsonl");
    std::fs::write(&file, &export).unwrap();
    let kept = dir.path().join("kept");
    let verify = |file: &Path, against: Option<&Path>| {
        let mut args = vec!["verify".to_owned(), "--file".into(), file.display().to_string()];
        if let Some(a) = against {
            args.extend(["--against".into(), a.display().to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        audit(&data, p.admin, &args)
    };
    let out = ok(&verify(&file, Some(&kept)));
    assert!(out.starts_with("ok: "), "{out}");
    assert!(
        ok(&audit(&data, p.admin, &["verify"])).starts_with("ok: "),
        "the live log"
    );

    // Tampered exports: the first bad record is named, exit status 1.
    let lines: Vec<&str> = export.lines().collect();
    let tampered = |name: &str, lines: Vec<String>| {
        let path = dir.path().join(name);
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let out = verify(&path, Some(&kept));
        assert_eq!(out.status.code(), Some(1), "{name} verified");
        String::from_utf8(out.stderr).unwrap()
    };
    let owned = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<String>>();
    let mut edited = owned(&lines);
    edited[2] = edited[2].replace("device=1", "device=7");
    assert!(tampered("edited", edited).contains("record 3:"));
    let mut deleted = owned(&lines);
    deleted.remove(5);
    assert!(tampered("deleted", deleted).contains("record 6:"));
    let mut reordered = owned(&lines);
    reordered.swap(6, 7);
    assert!(tampered("reordered", reordered).contains("record 7:"));
    // The tail cut (records and their checkpoints): the auditor's first checkpoint still
    // verifies what it covers, a later one says what is missing.
    let kept_later = dir.path().join("kept-later");
    std::fs::write(&kept_later, ok(&audit(&data, p.admin, &["checkpoint"]))).unwrap();
    let cut: Vec<String> = owned(&lines[..kept_size]);
    let path = dir.path().join("cut");
    std::fs::write(&path, cut.join("\n") + "\n").unwrap();
    assert!(ok(&verify(&path, Some(&kept))).starts_with(&format!("ok: {kept_size} records")));
    let out = verify(&path, Some(&kept_later));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let first_cut = format!("record {}:", kept_size + 1);
    assert!(
        !out.status.success() && stderr.contains(&first_cut) && stderr.contains("tail was cut"),
        "{stderr}"
    );
    // A key that is not the audit key proves nothing.
    let other = dir.path().join("other.vkey");
    std::fs::write(&other, relay_core::auditlog::generate_key("rcs-relay/audit/00000000").1).unwrap();
    let out = audit(
        &data,
        p.admin,
        &[
            "verify",
            "--file",
            file.to_str().unwrap(),
            "--key",
            other.to_str().unwrap(),
        ],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("not signed by the audit key"));
}

/// Retention: records older than `audit.retention_secs` are pruned behind a checkpoint that
/// still proves the rest; the export starts with the base and verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_records_are_pruned_behind_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (data, log) = (dir.path().join("data"), dir.path().join("gateway.log"));
    let toml = "[audit]\ncheckpoint_every = 1000\nretention_secs = 1\n";
    let p = crate::process::spawn_gateway_with(&data, &log, &[], toml).await;
    let client = p.client();
    for n in 0..3 {
        let token = test_support::provision_token(&data, &format!("tel:+1555011410{n}"), 3_600_000);
        client.register(&token).await.unwrap();
    }
    test_support::eventually("the first records to be pruned", Duration::from_secs(20), async || {
        ok(&audit(&data, p.admin, &["export"])).contains("\"type\":\"base\"")
    })
    .await;
    let export = ok(&audit(&data, p.admin, &["export"]));
    assert!(!export.contains("\"seq\":1,"), "record 1 is gone: {export}");
    assert!(ok(&audit(&data, p.admin, &["verify"])).starts_with("ok: "));
    assert!(ok(&audit(&data, p.admin, &["show"])).contains("\"kind\":\"audit.prune\""));
    // The base without its checkpoint proves nothing.
    let stripped: String = export
        .lines()
        .filter(|l| !l.contains("\"type\":\"checkpoint\""))
        .map(|l| format!("{l}\n"))
        .collect();
    let file = dir.path().join("stripped.jsonl");
    std::fs::write(&file, stripped).unwrap();
    let out = audit(&data, p.admin, &["verify", "--file", file.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("were pruned, but no checkpoint"));
}

/// Rotating the audit key: the running gateway signs a handover checkpoint with the old and
/// the new key, then signs with the new one only; an auditor holding only the old verifier
/// key can check the handover (and learns the new key from `audit.vkey`), the full export
/// verifies with both, also against a checkpoint kept before the rotation, and after a
/// restart the new key keeps signing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_key_rotation_is_handed_over_by_both_keys() {
    use relay_core::auditlog::signers;
    let dir = tempfile::tempdir().unwrap();
    let (data, log) = (dir.path().join("data"), dir.path().join("gateway.log"));
    let p = crate::process::spawn_gateway_with(&data, &log, &[], "").await;
    let client = p.client();
    for n in 0..3 {
        let token = test_support::provision_token(&data, &format!("tel:+1555011600{n}"), 3_600_000);
        client.register(&token).await.unwrap();
    }
    let kept = dir.path().join("kept");
    std::fs::write(&kept, ok(&audit(&data, p.admin, &["checkpoint"]))).unwrap();
    let old_vkey = std::fs::read_to_string(data.join("keys/audit.vkey")).unwrap();
    assert_eq!(old_vkey.lines().count(), 1);

    let rotated = ok(&gateway_cli(&data, p.admin, &["keys", "rotate", "audit"]));
    assert!(
        rotated.contains("audit:1 active") && rotated.contains("audit version=1"),
        "{rotated}"
    );
    let vkeys = std::fs::read_to_string(data.join("keys/audit.vkey")).unwrap();
    assert_eq!(vkeys.lines().count(), 2, "{vkeys}");
    let listed = ok(&gateway_cli(&data, p.admin, &["keys", "list"]));
    let inventory: serde_json::Value = serde_json::from_str(&listed[..listed.rfind('}').unwrap() + 1]).unwrap();
    let state = |name: &str| {
        let keys = inventory["keys"].as_array().unwrap();
        let k = keys.iter().find(|k| k["name"] == name).unwrap();
        (
            k["version"].as_u64(),
            k["state"].as_str().map(str::to_owned),
            k["rotate_by_ms"].is_u64(),
        )
    };
    assert_eq!(state("audit.key"), (Some(0), Some("retiring".into()), true));
    assert_eq!(state("audit-1.key"), (Some(1), Some("active".into()), true));
    assert!(vkeys.starts_with(&old_vkey), "the old key stays listed");
    let after = ok(&audit(&data, p.admin, &["checkpoint"]));

    let export = ok(&audit(&data, p.admin, &["export"]));
    let checkpoints: Vec<String> = export
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "checkpoint")
        .map(|v| v["note"].as_str().unwrap().to_owned())
        .collect();
    let both: Vec<&String> = checkpoints.iter().filter(|n| signers(n, &vkeys) == Ok(2)).collect();
    assert_eq!(
        both.len(),
        1,
        "one handover checkpoint, signed by both keys: {checkpoints:?}"
    );
    assert_eq!(
        signers(both[0], &old_vkey),
        Ok(1),
        "the old key's holder can check the handover"
    );
    assert!(signers(&after, &old_vkey).is_err(), "after it, only the new key signs");
    assert_eq!(signers(&after, &vkeys), Ok(1));
    assert!(export.contains("audit from=0 to=1"), "the rotation is a record");
    let file = dir.path().join("export.jsonl");
    std::fs::write(&file, &export).unwrap();
    ok(&audit(
        &data,
        p.admin,
        &[
            "verify",
            "--file",
            file.to_str().unwrap(),
            "--against",
            kept.to_str().unwrap(),
        ],
    ));

    // A restart signs with the new key; no second handover.
    assert!(p.terminate().success());
    let p = crate::process::spawn_gateway_with(&data, &log, &[], "").await;
    let again = ok(&audit(&data, p.admin, &["checkpoint"]));
    assert_eq!(signers(&again, &vkeys), Ok(1));
    assert!(signers(&again, &old_vkey).is_err());
    ok(&audit(&data, p.admin, &["verify", "--against", kept.to_str().unwrap()]));
    let shown = ok(&audit(&data, p.admin, &["show"]));
    assert_eq!(shown.matches("audit from=0 to=1").count(), 1, "{shown}");
}
