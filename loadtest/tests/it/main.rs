//! Smoke runs of every scenario against a real gateway: tiny counts, seconds, and the
//! report must exist and add up. No timing assertions.

#![allow(clippy::unwrap_used)]

mod chart;

use std::process::Command;

use test_support::TestGateway;

const LOADTEST: &str = env!("CARGO_BIN_EXE_loadtest");

fn run(gw: &TestGateway, args: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(LOADTEST)
        .arg("--server")
        .arg(gw.url())
        .arg("--data-dir")
        .arg(&gw.data_dir)
        .arg("--report")
        .arg(dir.path())
        .args(["--duration", "1", "--warmup", "0", "--connections", "2"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "loadtest {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in ["report.json", "report.md", "latency.svg"] {
        assert!(dir.path().join(f).exists(), "{f} missing");
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap()).unwrap();
    // Every scenario's chart shows what the report says (idle completes no requests).
    let expect = chart::Expect {
        completed: !args.contains(&"idle"),
        errors: report["errors"].as_u64().unwrap() > 0,
        error_kinds: report["errors_by_kind"].as_object().unwrap().keys().cloned().collect(),
    };
    chart::check(&dir.path().join("latency.svg"), &expect);
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_reports_and_adds_up() {
    let gw = TestGateway::start().await;
    let r = run(&gw, &["--scenario", "send", "--concurrency", "4", "--count", "50"]);
    assert_eq!(r["errors"], 0);
    assert_eq!(r["sent"], r["received"], "closed loop: every issued send completed");
    assert!(r["sent"].as_u64().unwrap() > 0);

    let r = run(&gw, &["--scenario", "send", "--rate", "100", "--http3"]);
    assert_eq!(
        (r["mode"].as_str(), r["protocol"].as_str()),
        (Some("open-loop"), Some("h3"))
    );
    assert_eq!(r["sent"], r["received"]);

    let r = run(
        &gw,
        &[
            "--scenario",
            "fanout",
            "--recipients",
            "20",
            "--count",
            "10",
            "--concurrency",
            "2",
        ],
    );
    assert_eq!(r["errors"], 0);
    assert_eq!(r["sent"], r["received"]);

    let r = run(&gw, &["--scenario", "drain", "--count", "120"]);
    assert_eq!(
        (r["sent"].as_u64(), r["received"].as_u64()),
        (Some(120), Some(120)),
        "drain: sent = received"
    );

    let r = run(&gw, &["--scenario", "mixed", "--rate", "50", "--source-ips", "3"]);
    assert_eq!(r["errors"], 0);
    assert!(
        r["received"].as_u64().unwrap() >= r["sent"].as_u64().unwrap(),
        "mixed: everything sent was received"
    );

    let r = run(&gw, &["--scenario", "idle", "--recipients", "30"]);
    assert_eq!(
        (r["sent"].as_u64(), r["received"].as_u64(), r["errors"].as_u64()),
        (Some(30), Some(30), Some(0))
    );

    let r = run(&gw, &["--scenario", "live", "--rate", "50"]);
    assert_eq!(
        (r["received"].as_u64(), r["errors"].as_u64()),
        (r["sent"].as_u64(), Some(0)),
        "every measured live send was received once (warm-up sends excluded)"
    );
    assert!(
        r["latency_ms"]["p50"].as_f64().unwrap() > 0.0,
        "send→receive latency was measured"
    );
    gw.stop().await;
}

/// The `abuse` scenario against a gateway whose per-credential limit is 20/s: the attacker
/// at 10× gets 429s, the well-behaved senders (10/s each) get none, both phases' p99 are
/// reported. (The goal's ratio is measured by `benches/abuse.sh`, not asserted here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_abuse_scenario_reports_both_phases_and_the_attackers_429s() {
    let gw = TestGateway::start_with(|c| {
        c.rate_limit.requests_per_second = 20;
        c.rate_limit.burst = 20;
    })
    .await;
    let r = run(&gw, &["--scenario", "abuse", "--rate", "20", "--attacker-rate", "200"]);
    let a = &r["abuse"];
    assert!(a["attacker_429"].as_u64().unwrap() > 100, "{a}");
    assert!(a["attacker_accepted"].as_u64().unwrap() <= 20 + 20 + 5, "{a}");
    assert_eq!(a["well_behaved_errors"], 0, "{a}");
    assert!(a["baseline_p99_ms"].as_f64().unwrap() > 0.0 && a["attacked_p99_ms"].as_f64().unwrap() > 0.0);
    assert!(a["p99_ratio"].as_f64().is_some());
    gw.stop().await;
}

/// A run the gateway's limits refuse says so: errors by status and code, accepted apart from
/// attempted, and a warning naming the configuration keys to raise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_refused_by_the_limits_says_why() {
    let gw = TestGateway::start_with(|c| {
        c.rate_limit.requests_per_second = 5;
        c.rate_limit.burst = 5;
    })
    .await;
    let r = run(&gw, &["--scenario", "send", "--concurrency", "4", "--count", "200"]);
    let limited = r["errors_by_kind"]["429 rate_limited"].as_u64().unwrap();
    assert!(limited > 0, "{r}");
    assert_eq!(r["errors"].as_u64().unwrap(), limited, "every error is counted by kind");
    assert_eq!(
        r["attempted"].as_u64().unwrap(),
        r["accepted"].as_u64().unwrap() + limited
    );
    let warning = r["warnings"][0].as_str().unwrap();
    assert!(
        warning.contains("429") && warning.contains("requests_per_second"),
        "{warning}"
    );
    gw.stop().await;
}
