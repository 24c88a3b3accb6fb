//! Delivery Service throughput against a running gateway: KeyPackage claims (one-time
//! packages racing to be handed out exactly once) and commits (many groups, each a
//! strictly sequential chain of epochs). Mints its own provisioning tokens from the
//! gateway's data dir. Prints one JSON line per measurement.

#![allow(clippy::print_stdout, reason = "a benchmark tool reports on standard output")]

use std::path::PathBuf;
use std::time::Instant;

use bytes::Bytes;
use clap::Parser;
use relay_client::{Client, Recipient, Trust};
use relay_core::envelope::{MessageContentType, frame_private};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long)]
    url: String,
    /// The gateway's data dir (for its CA and provisioning key).
    #[arg(long)]
    data_dir: PathBuf,
    /// One-time KeyPackages to upload and claim.
    #[arg(long, default_value_t = 2000)]
    key_packages: usize,
    /// Concurrent claimers.
    #[arg(long, default_value_t = 16)]
    claimers: usize,
    /// Groups committing concurrently.
    #[arg(long, default_value_t = 32)]
    groups: usize,
    /// Commits per group (epochs 0..N).
    #[arg(long, default_value_t = 50)]
    commits: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run(args))
}

async fn device(args: &Args, address: &str) -> anyhow::Result<Client> {
    let c = Client::new(&args.url, Trust::CaFile(args.data_dir.join("tls/dev-ca.pem")))?;
    let reg = c
        .register(&test_support::provision_token(&args.data_dir, address, 3_600_000))
        .await?;
    Ok(c.with_credential(reg.credential))
}

fn report(what: &str, n: usize, elapsed: std::time::Duration, mut lat_us: Vec<u64>) {
    lat_us.sort_unstable();
    let q = |p: f64| {
        lat_us
            .get(((lat_us.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    println!(
        "{{\"measure\":\"{what}\",\"count\":{n},\"per_sec\":{:.0},\"p50_ms\":{:.2},\"p99_ms\":{:.2}}}",
        n as f64 / elapsed.as_secs_f64(),
        q(0.5),
        q(0.99)
    );
}

async fn run(args: Args) -> anyhow::Result<()> {
    const TARGET: &str = "tel:+15550800000";
    let target = device(&args, TARGET).await?;
    let member = test_support::mls::Member::new(TARGET);
    let packages: Vec<Bytes> = (0..args.key_packages).map(|_| member.key_package_bytes()).collect();
    for chunk in packages.chunks(100) {
        target.upload_key_packages(chunk).await?;
    }
    target
        .upload_key_packages(&[member.last_resort_key_package_bytes()])
        .await?;

    // Claims: every claimer claims until only the last-resort package is left.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.claimers {
        let c = device(&args, &format!("tel:+1555081{i:04}")).await?;
        tasks.spawn(async move {
            let mut lat = Vec::new();
            loop {
                let t = Instant::now();
                let got = c.claim_key_packages(&[TARGET]).await?;
                if got.iter().all(|k| k.last_resort) {
                    return anyhow::Ok(lat);
                }
                lat.push(t.elapsed().as_micros() as u64);
            }
        });
    }
    let start = Instant::now();
    let mut lat = Vec::new();
    while let Some(r) = tasks.join_next().await {
        lat.extend(r??);
    }
    anyhow::ensure!(
        lat.len() == args.key_packages,
        "claimed {} of {}",
        lat.len(),
        args.key_packages
    );
    report("key_package_claims", lat.len(), start.elapsed(), lat);

    // Commits: each group advances its epoch one commit at a time; groups run in parallel.
    let sender = device(&args, "tel:+15550820000").await?;
    let mut tasks = tokio::task::JoinSet::new();
    for g in 0..args.groups {
        let sender = sender.clone();
        let commits = args.commits;
        tasks.spawn(async move {
            let mut lat = Vec::new();
            let group = format!("bench-group-{g}-{}", rand::random::<u64>());
            for epoch in 0..commits {
                let m = frame_private(group.as_bytes(), epoch, MessageContentType::Commit, &[0x5a; 256]);
                let t = Instant::now();
                let r = sender
                    .send(&[Recipient::address(TARGET)], m.into(), None, false)
                    .await?;
                anyhow::ensure!(r.accepted_epoch == Some(epoch), "commit not accepted for epoch {epoch}");
                lat.push(t.elapsed().as_micros() as u64);
            }
            anyhow::Ok(lat)
        });
    }
    let start = Instant::now();
    let mut lat = Vec::new();
    while let Some(r) = tasks.join_next().await {
        lat.extend(r??);
    }
    report("commits", lat.len(), start.elapsed(), lat);
    Ok(())
}
