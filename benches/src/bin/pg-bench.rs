//! Durable 1 KiB sends on PostgreSQL through one and two gateway nodes, against the sled
//! backend measured in the same run. Every configuration gets the same closed-loop load:
//! `--concurrency` senders, each sending to its own recipient (so sends do not queue on one
//! recipient's row), for `--secs` seconds after a second of warm-up; an acknowledgement
//! means committed (sled: the journal's `fdatasync`; PostgreSQL: `synchronous_commit = on`,
//! its WAL flushed). Starts its own PostgreSQL 15 (Debian `postgresql`), and with
//! `--patroni` also a three-node Patroni cluster (a synchronous standby on every commit).
//! The gateway nodes run in this process, sharing its two cores with the database and the
//! client: the figures compare configurations, they do not measure a node.
//!
//!   pg-bench [--secs 5] [--concurrency 32] [--patroni]

#![allow(clippy::print_stdout, reason = "a benchmark reports on standard output")]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use relay_client::{Client, Recipient};
use test_support::TestGateway;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 5)]
    secs: u64,
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Also measure on a three-node Patroni cluster (synchronous replication).
    #[arg(long)]
    patroni: bool,
}

struct Figures {
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// CPU per acknowledged send: this process (gateway nodes and client), the database.
    own_cpu_ms: f64,
    db_cpu_ms: f64,
}

/// CPU seconds used so far by the processes whose command is `comm` (`None`: this one).
fn cpu_secs(comm: Option<&str>) -> f64 {
    let tick = 100.0; // USER_HZ on Linux
    let read = |pid: &str| -> Option<(String, f64)> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (name, rest) = stat.split_once(") ")?;
        let name = name.split_once(" (")?.1.to_owned();
        let f: Vec<&str> = rest.split_whitespace().collect();
        let (u, s) = (f.get(11)?.parse::<f64>().ok()?, f.get(12)?.parse::<f64>().ok()?);
        Some((name, (u + s) / tick))
    };
    match comm {
        None => read("self").map_or(0.0, |(_, t)| t),
        Some(comm) => std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| read(e.file_name().to_str()?))
            .filter(|(name, _)| name == comm)
            .map(|(_, t)| t)
            .sum(),
    }
}

fn message() -> Bytes {
    Bytes::from(relay_core::envelope::frame_private_message(
        b"pg-bench",
        1,
        &[7u8; 1024],
    ))
}

/// A gateway node on `url` (or sled when `None`), in `data` (keys copied from `first`).
async fn node(data: &Path, url: Option<&str>, first: Option<&Path>) -> anyhow::Result<TestGateway> {
    if let Some(first) = first {
        std::fs::create_dir_all(data)?;
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(first.join("keys"))
            .arg(data.join("keys"))
            .status()?;
        anyhow::ensure!(status.success(), "copying the keys");
    }
    let url = url.map(str::to_owned);
    Ok(TestGateway::start_in(data, move |c| {
        c.rate_limit.requests_per_second = 1_000_000;
        c.rate_limit.burst = 1_000_000;
        if let Some(url) = url {
            c.storage.backend = gateway::config::BackendKind::Postgres;
            c.storage.postgres =
                Some(toml::from_str(&format!("url = \"{url}\"\npool_size = 32\n")).expect("postgres settings"));
        }
    })
    .await)
}

/// `concurrency` senders and as many recipients, registered through `nodes` in turn.
async fn devices(nodes: &[&TestGateway], n: usize, tag: &str) -> Vec<(Client, String)> {
    let mut out = Vec::new();
    for i in 0..n {
        let gw = nodes[i % nodes.len()];
        let (sender, _) = gw.device(&format!("tel:+1555{tag}{i:04}1")).await;
        let to = format!("tel:+1555{tag}{i:04}2");
        let _ = gw.device(&to).await;
        out.push((sender, to));
    }
    out
}

async fn run(senders: &[(Client, String)], secs: u64) -> Figures {
    let hist = Arc::new(std::sync::Mutex::new(
        hdrhistogram::Histogram::<u64>::new(3).expect("histogram"),
    ));
    let warm = Instant::now() + Duration::from_secs(1);
    let end = warm + Duration::from_secs(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for (sender, to) in senders {
        let (sender, to, hist) = (sender.clone(), to.clone(), Arc::clone(&hist));
        tasks.spawn(async move {
            let mut done = 0u64;
            while Instant::now() < end {
                let started = Instant::now();
                if sender
                    .send(&[Recipient::address(&to)], message(), None, false)
                    .await
                    .is_ok()
                    && started >= warm
                {
                    let _ = hist.lock().expect("lock").record(started.elapsed().as_micros() as u64);
                    done += 1;
                }
            }
            done
        });
    }
    tokio::time::sleep_until(warm.into()).await;
    let (own0, db0) = (cpu_secs(None), cpu_secs(Some("postgres")));
    let mut total = 0;
    while let Some(n) = tasks.join_next().await {
        total += n.unwrap_or(0);
    }
    let (own, db) = (cpu_secs(None) - own0, cpu_secs(Some("postgres")) - db0);
    let h = hist.lock().expect("lock");
    let n = total.max(1) as f64;
    Figures {
        per_sec: total as f64 / secs as f64,
        p50_ms: h.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
        own_cpu_ms: own * 1000.0 / n,
        db_cpu_ms: db * 1000.0 / n,
    }
}

fn report(what: &str, f: &Figures, base: &Figures) {
    println!(
        "{what:<36} {:>6.0} sends/s  p50 {:>6.2} ms  p99 {:>7.2} ms  ({:.2}x sled)  CPU/send: gateway+client {:.2} ms, database {:.2} ms",
        f.per_sec,
        f.p50_ms,
        f.p99_ms,
        f.per_sec / base.per_sec,
        f.own_cpu_ms,
        f.db_cpu_ms,
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let n = args.concurrency;

    let sled = node(&dir.path().join("sled"), None, None).await?;
    let base = run(&devices(&[&sled], n, "10").await, args.secs).await;
    sled.stop().await;
    report("sled, one node", &base, &base);

    let pg = test_support::postgres::Postgres::start(&dir.path().join("pg"));
    let url = pg.url();
    let a = node(&dir.path().join("a"), Some(&url), None).await?;
    let one = run(&devices(&[&a], n, "20").await, args.secs).await;
    report("postgres, one node", &one, &base);
    let b = node(&dir.path().join("b"), Some(&url), Some(&dir.path().join("a"))).await?;
    let two = run(&devices(&[&a, &b], n, "30").await, args.secs).await;
    report("postgres, two nodes", &two, &base);
    a.stop().await;
    b.stop().await;

    if args.patroni {
        let cluster = test_support::patroni::Cluster::start(&dir.path().join("patroni"));
        let url = cluster.url();
        let a = node(&dir.path().join("ha-a"), Some(&url), None).await?;
        let b = node(&dir.path().join("ha-b"), Some(&url), Some(&dir.path().join("ha-a"))).await?;
        let ha = run(&devices(&[&a, &b], n, "40").await, args.secs).await;
        report("patroni (sync standby), two nodes", &ha, &base);
        a.stop().await;
        b.stop().await;
    }
    Ok(())
}
