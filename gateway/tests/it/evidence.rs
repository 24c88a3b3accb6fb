//! The evidence bundle with the `gateway` binary: exported from a running gateway, verified,
//! and refused once a file in it is changed, added or signed by another key; nothing
//! identifying or secret inside.

use crate::process::gateway_cli as gateway;
use std::path::Path;

/// The archive's files, and an archive made of them.
fn unpack(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for e in tar::Archive::new(bytes).entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        out.push((name, data));
    }
    out
}

fn pack(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    tar.into_inner().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_evidence_bundle_verifies_and_tampering_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (data, log) = (dir.path().join("data"), dir.path().join("gateway.log"));
    let p = crate::process::spawn_gateway_with(&data, &log, &[], "").await;
    let client = p.client();
    let token = test_support::provision_token(&data, "tel:+15550116001", 3_600_000);
    let credential = client.register(&token).await.unwrap().credential;
    let bundle = dir.path().join("evidence.tar");
    let out = gateway(
        &data,
        p.admin,
        &["evidence", "export", "--out", bundle.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let verify = |file: &Path| gateway(&data, p.admin, &["evidence", "verify", file.to_str().unwrap()]);
    let ok = verify(&bundle);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).starts_with("ok: "));

    let archive = std::fs::read(&bundle).unwrap();
    let files = unpack(&archive);
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    for wanted in [
        "audit.jsonl",
        "checkpoint.note",
        "config.json",
        "keys.json",
        "residency.json",
        "certificates/client-listener.pem",
        "manifest.note",
    ] {
        assert!(names.contains(&wanted), "{wanted} missing from {names:?}");
    }
    // Nothing identifying or secret: no address, no credential, no key.
    let secret = credential.trim_start_matches("rc1.");
    let rid_key = std::fs::read(data.join("keys/rid.key")).unwrap();
    let audit_key = std::fs::read(data.join("keys/audit.key")).unwrap();
    for (what, needle) in [
        ("the address", b"15550116001".as_slice()),
        ("the credential", secret.as_bytes()),
        ("K_rid", &rid_key),
        ("the audit signing key", &audit_key[audit_key.len() - 40..]),
    ] {
        assert!(!test_support::contains(&archive, needle), "{what} is in the bundle");
    }
    let keys = String::from_utf8(files.iter().find(|(n, _)| n == "keys.json").unwrap().1.clone()).unwrap();
    assert!(keys.contains("\"rid.key\"") && keys.contains("fingerprint"), "{keys}");

    // Tampered bundles are refused, naming what is wrong.
    let refused = |name: &str, files: Vec<(String, Vec<u8>)>| {
        let path = dir.path().join(name);
        std::fs::write(&path, pack(&files)).unwrap();
        let out = verify(&path);
        assert!(!out.status.success(), "{name} verified");
        String::from_utf8(out.stderr).unwrap()
    };
    let mut changed = files.clone();
    let i = changed.iter().position(|(n, _)| n == "residency.json").unwrap();
    changed[i].1.extend_from_slice(b" ");
    assert!(refused("changed", changed).contains("residency.json does not match the manifest"));
    let mut added = files.clone();
    added.push(("extra.txt".into(), b"planted".to_vec()));
    assert!(refused("added", added).contains("extra.txt"));
    let mut removed = files.clone();
    removed.retain(|(n, _)| n != "keys.json");
    assert!(refused("removed", removed).contains("keys.json"));
    let (other, _) = relay_core::auditlog::generate_key("rcs-relay/audit/00000000");
    let other = relay_core::auditlog::AuditSigner::new(&other).unwrap();
    let mut resigned = files.clone();
    let m = resigned.iter().position(|(n, _)| n == "manifest.note").unwrap();
    let text = String::from_utf8(resigned[m].1.clone()).unwrap();
    let body = &text[..text.find("\n\n").unwrap() + 1];
    resigned[m].1 = other.sign_note(body).unwrap().into_bytes();
    assert!(refused("resigned", resigned).contains("not signed by the audit key"));
}
