//! The audit log from the operator's side, with the `gateway` binary: registrations and
//! admin calls are recorded, checkpoints are signed every `audit.checkpoint_every` records
//! and on request, `gateway audit verify` proves an honest export (also against an auditor's
//! earlier checkpoint) and names the first bad record of a tampered one.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

const GATEWAY: &str = env!("CARGO_BIN_EXE_gateway");

/// `gateway audit ARGS` against the gateway whose admin port is `admin`.
fn audit(data: &Path, admin: u16, args: &[&str]) -> std::process::Output {
    Command::new(GATEWAY)
        .arg("--data-dir")
        .arg(data)
        .args(["--admin-listen", &format!("127.0.0.1:{admin}"), "audit"])
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: &std::process::Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
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
    // An auditor keeps a checkpoint of the log as it is now: 4 registrations and the reload.
    let kept_at_5 = ok(&audit(&data, p.admin, &["checkpoint"]));
    assert!(kept_at_5.contains("\n5\n"), "{kept_at_5}");
    std::fs::write(dir.path().join("kept-5"), &kept_at_5).unwrap();
    for n in 4..8 {
        register(n).await;
    }
    // Nine records: the background checkpointer signs one at 9 (three since the one at 5... 8).
    test_support::eventually("a checkpoint every 3 records", Duration::from_secs(10), async || {
        ok(&audit(&data, p.admin, &["export"])).contains("\\n9\\n")
    })
    .await;
    let export = ok(&audit(&data, p.admin, &["export"]));
    let shown = ok(&audit(&data, p.admin, &["show"]));
    assert_eq!(shown.lines().count(), 9, "{shown}");
    assert!(shown.contains("\"kind\":\"device.register\"") && shown.contains("\"kind\":\"admin.tls_reload\""));
    assert!(!shown.contains("1555011400"), "no address in the audit log");
    let file = dir.path().join("export.jsonl");
    std::fs::write(&file, &export).unwrap();
    let kept = dir.path().join("kept-5");
    let verify = |file: &Path, against: Option<&Path>| {
        let mut args = vec!["verify".to_owned(), "--file".into(), file.display().to_string()];
        if let Some(a) = against {
            args.extend(["--against".into(), a.display().to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        audit(&data, p.admin, &args)
    };
    let out = ok(&verify(&file, Some(&kept)));
    assert!(out.starts_with("ok: 9 records"), "{out}");
    assert!(
        ok(&audit(&data, p.admin, &["verify"])).starts_with("ok: 9 records"),
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
    // The tail cut (records and their checkpoints): the auditor's checkpoint at 5 still
    // verifies the first five, one kept at 9 says what is missing.
    let kept_at_9 = dir.path().join("kept-9");
    std::fs::write(&kept_at_9, ok(&audit(&data, p.admin, &["checkpoint"]))).unwrap();
    let cut: Vec<String> = owned(&lines[..5]);
    let path = dir.path().join("cut");
    std::fs::write(&path, cut.join("\n") + "\n").unwrap();
    assert!(ok(&verify(&path, Some(&kept))).starts_with("ok: 5 records"));
    let out = verify(&path, Some(&kept_at_9));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("record 6:") && stderr.contains("tail was cut"),
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
