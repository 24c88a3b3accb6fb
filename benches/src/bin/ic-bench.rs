//! Cross-carrier delivery on loopback: two gateways peering over mutual TLS, a closed-loop
//! sender at carrier A and a long-polling receiver at carrier B, against a baseline measured
//! in the same run — the same sender and receiver both on carrier A.
//!
//!   ic-bench [--secs 5] [--concurrency 16]

#![allow(clippy::print_stdout, reason = "a benchmark reports on standard output")]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use interconnect::config::InterconnectConfig;
use relay_client::{Client, Recipient};
use relay_net::clock::now_us;
use test_support::TestGateway;
use test_support::pki::{Leaf, RcgenCa};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 5)]
    secs: u64,
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
}

fn message() -> Bytes {
    let mut ct = vec![0u8; 1024];
    ct[1016..].copy_from_slice(&now_us().to_be_bytes());
    Bytes::from(relay_core::envelope::frame_private_message(b"ic-bench", 1, &ct))
}

async fn carrier(dir: &std::path::Path, domain: &str, leaf: &Leaf, local: &str) -> TestGateway {
    let peers = dir.join(format!("{domain}-peers.toml"));
    std::fs::write(&peers, "").expect("peers file");
    let cfg = InterconnectConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        domain: domain.into(),
        jurisdiction: "US".into(),
        cert: leaf.cert.clone(),
        key: leaf.key.clone(),
        peers_file: peers,
        local_prefixes: vec![local.into()],
        allowed_jurisdictions: vec![],
        outbox_ttl_secs: 3600,
        concurrency_per_peer: 64,
        request_timeout_secs: 5,
        backoff_base_ms: 50,
        backoff_cap_secs: 1,
        recheck_secs: 30,
        max_connections: 1024,
    };
    TestGateway::start_with(|c| {
        c.interconnect = Some(cfg);
        c.rate_limit.requests_per_second = 1_000_000;
        c.rate_limit.burst = 1_000_000;
    })
    .await
}

fn peer(name: &str, domain: &str, port: u16, ca: &std::path::Path, prefix: &str) -> String {
    format!(
        "[[peer]]\nname = \"{name}\"\ndomain = \"{domain}\"\nendpoint = \"https://localhost:{port}\"\nca = \"{}\"\nprefixes = [\"{prefix}\"]\njurisdiction = \"US\"\nrequests_per_second = 1000000\nburst = 1000000\n",
        ca.display()
    )
}

struct Result {
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn run(sender: &Client, to: &str, receiver: &Client, args: &Args) -> Result {
    let running = Arc::new(AtomicBool::new(true));
    let received = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(std::sync::Mutex::new(
        hdrhistogram::Histogram::<u64>::new(3).expect("histogram"),
    ));
    let rx = {
        let (receiver, running, received, hist) = (
            receiver.clone(),
            Arc::clone(&running),
            Arc::clone(&received),
            Arc::clone(&hist),
        );
        tokio::spawn(async move {
            let mut cursor = 0;
            while running.load(Ordering::Relaxed) {
                let Ok(page) = receiver.receive(cursor, 500, 1).await else {
                    continue;
                };
                let now = now_us();
                for e in &page.envelopes {
                    let m = &e.message;
                    let sent = u64::from_be_bytes(m[m.len() - 8..].try_into().expect("8 bytes"));
                    let _ = hist.lock().expect("lock").record(now.saturating_sub(sent).max(1));
                    received.fetch_add(1, Ordering::Relaxed);
                }
                cursor = page.next_cursor;
                if !page.envelopes.is_empty() {
                    let _ = receiver.ack(&[], Some(cursor)).await;
                }
            }
        })
    };
    let start = Instant::now();
    let end = start + Duration::from_secs(args.secs);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let (sender, to) = (sender.clone(), to.to_owned());
        tasks.spawn(async move {
            while Instant::now() < end {
                let _ = sender.send(&[Recipient::address(&to)], message(), None, false).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    // Let the tail arrive, then stop the receiver.
    tokio::time::sleep(Duration::from_secs(2)).await;
    running.store(false, Ordering::Relaxed);
    let _ = rx.await;
    let h = hist.lock().expect("lock");
    Result {
        per_sec: received.load(Ordering::Relaxed) as f64 / args.secs as f64,
        p50_ms: h.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let ca = RcgenCa::new(&dir.path().join("pki"), "carriers");
    let leaf_a = ca.issue("a", "carrier-a.test", 1, None);
    let leaf_b = ca.issue("b", "carrier-b.test", 2, None);
    let a = carrier(dir.path(), "carrier-a.test", &leaf_a, "+1555").await;
    let b = carrier(dir.path(), "carrier-b.test", &leaf_b, "+4477").await;
    let a_port = a.interconnect_addr.expect("a").port();
    let b_port = b.interconnect_addr.expect("b").port();
    std::fs::write(
        dir.path().join("carrier-a.test-peers.toml"),
        peer("b", "carrier-b.test", b_port, &ca.cert, "+4477"),
    )?;
    std::fs::write(
        dir.path().join("carrier-b.test-peers.toml"),
        peer("a", "carrier-a.test", a_port, &ca.cert, "+1555"),
    )?;
    a.state()
        .interconnect()
        .expect("ic")
        .reload()
        .await
        .map_err(anyhow::Error::msg)?;
    b.state()
        .interconnect()
        .expect("ic")
        .reload()
        .await
        .map_err(anyhow::Error::msg)?;
    let (alice, _) = a.device("tel:+15550100001").await;
    let (carol, _) = a.device("tel:+15550100002").await;
    let (bob, _) = b.device("tel:+447700900001").await;

    let local = run(&alice, "tel:+15550100002", &carol, &args).await;
    let cross = run(&alice, "tel:+447700900001", &bob, &args).await;
    println!(
        "same carrier (A → A):  {:.0} msgs/s, send→receive p50 {:.2} ms, p99 {:.2} ms\n\
         cross-carrier (A → B over mTLS): {:.0} msgs/s, p50 {:.2} ms, p99 {:.2} ms\n\
         ratio (cross / same): throughput {:.2}, p50 latency {:.2}",
        local.per_sec,
        local.p50_ms,
        local.p99_ms,
        cross.per_sec,
        cross.p50_ms,
        cross.p99_ms,
        cross.per_sec / local.per_sec,
        cross.p50_ms / local.p50_ms,
    );
    a.stop().await;
    b.stop().await;
    Ok(())
}
