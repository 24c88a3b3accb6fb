//! Operator calls on mutual TLS (`[admin] operator_ca`): the plain admin listener keeps
//! metrics and health only; a client certificate from the operators' CA is required (none, one
//! from another CA, or a revoked one is refused); each call is audited with the operator.

use std::path::Path;
use std::process::Command;

use test_support::pki::RcgenCa;

const GATEWAY: &str = env!("CARGO_BIN_EXE_gateway");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_calls_need_an_operator_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let operators = RcgenCa::new(&pki.join("operators"), "operators");
    let alice = operators.issue("alice", "alice.ops", 1, None);
    let bob = operators.issue("bob", "bob.ops", 2, None);
    let carol = operators.issue("carol", "carol.ops", 3, None);
    let crl = operators.crl("operators-crl", &[2], false);
    let intruders = RcgenCa::new(&pki.join("intruders"), "intruders");
    let eve = intruders.issue("eve", "eve.ops", 1, None);
    let port = test_support::process::free_port();
    let toml = format!(
        "[admin]\noperator_listen = \"127.0.0.1:{port}\"\noperator_ca = \"{}\"\noperator_crls = [\"{}\"]\n",
        operators.cert.display(),
        crl.display()
    );
    let (data, log) = (dir.path().join("data"), dir.path().join("gateway.log"));
    let p = crate::process::spawn_gateway_with(&data, &log, &[], &toml).await;
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], p.admin));
    let config = data.with_extension("toml");
    let as_operator = |who: Option<(&Path, &Path)>, args: &[&str]| {
        let mut cmd = Command::new(GATEWAY);
        cmd.arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(&data)
            .args(["--admin-listen", &admin.to_string()]);
        if let Some((cert, key)) = who {
            cmd.arg("--operator-cert").arg(cert).arg("--operator-key").arg(key);
        }
        cmd.args(args).output().unwrap()
    };

    // The plain listener: metrics and health, no operator call.
    let metrics = test_support::admin_request(admin, "GET", "/metrics").await.unwrap();
    assert!(metrics.starts_with("HTTP/1.1 200"));
    let refused = test_support::admin_request(admin, "POST", "/admin/switches/registration/off")
        .await
        .unwrap();
    assert!(refused.starts_with("HTTP/1.1 404"), "{refused}");

    // Alice (from the operators' CA) switches registration off; the audit log names her.
    let out = as_operator(Some((&alice.cert, &alice.key)), &["switch", "off", "registration"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown = as_operator(Some((&alice.cert, &alice.key)), &["audit", "show"]);
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(
        shown.contains("operator=alice.ops POST /admin/switches/registration/off -> 200"),
        "{shown}"
    );

    // No certificate, one from another CA, a revoked one: refused, nothing changes.
    let none = as_operator(None, &["switch", "on", "registration"]);
    assert!(String::from_utf8_lossy(&none.stderr).contains("need an operator certificate"));
    for (who, cert, alert) in [
        ("eve (another CA)", &eve, "UnknownCA"),
        ("bob (revoked)", &bob, "CertificateRevoked"),
    ] {
        let out = as_operator(Some((&cert.cert, &cert.key)), &["switch", "on", "registration"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(alert), "{who}: {stderr}");
    }
    let listed = as_operator(Some((&alice.cert, &alice.key)), &["switch", "list"]);
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("registration"),
        "still off"
    );

    // Dual control: destroying a retired provisioning key takes two different operators.
    let a = Some((alice.cert.as_path(), alice.key.as_path()));
    let c = Some((carol.cert.as_path(), carol.key.as_path()));
    let rotated = as_operator(a, &["keys", "rotate", "provisioning"]);
    let rotated = String::from_utf8_lossy(&rotated.stdout).into_owned();
    let second = rotated.split_whitespace().next().unwrap().to_owned(); // provisioning:<id>
    assert!(as_operator(a, &["keys", "rotate", "provisioning"]).status.success());
    assert!(as_operator(a, &["keys", "retire", &second]).status.success());
    let action = format!("keys.destroy:{second}");
    let destroy = |who| as_operator(who, &["keys", "destroy", &second]);
    let alone = destroy(a);
    assert!(!alone.status.success() && String::from_utf8_lossy(&alone.stdout).contains("needs a second operator"));
    assert!(as_operator(a, &["approve", &action]).status.success());
    let own = destroy(a);
    assert!(!own.status.success() && String::from_utf8_lossy(&own.stdout).contains("cannot also make the call"));
    let done = destroy(c);
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stdout));
    let keys = String::from_utf8_lossy(&as_operator(a, &["keys", "list"]).stdout).into_owned();
    assert!(!keys.contains(&format!("{second} ")), "{keys}");
    let shown = String::from_utf8_lossy(&as_operator(a, &["audit", "show"]).stdout).into_owned();
    let id = second.trim_start_matches("provisioning:");
    assert!(
        shown.contains(&format!("provisioning id={id} approved_by=alice.ops done_by=carol.ops")),
        "{shown}"
    );
    assert!(shown.contains("operator=alice.ops action=keys.destroy"), "{shown}");
    // A key operation: a checkpoint was signed after it.
    let export = String::from_utf8_lossy(&as_operator(a, &["audit", "export"]).stdout).into_owned();
    let destroyed_at = export
        .lines()
        .position(|l| l.contains("\"kind\":\"key.destroy\""))
        .unwrap()
        + 1;
    let signed_after = export.lines().filter_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        v["note"].as_str()?.lines().nth(1)?.parse::<usize>().ok()
    });
    assert!(signed_after.into_iter().any(|size| size >= destroyed_at), "{export}");
}
