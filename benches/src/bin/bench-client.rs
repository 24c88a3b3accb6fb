//! Closed-loop load client over the rcs-relay SDK, for HTTP/3 or HTTP/2: `connections`
//! connections, each with `streams` requests in flight, for `duration` seconds after a
//! warm-up. The same client drives the gateway and the bare baselines, so their numbers
//! are comparable. Prints one JSON line.

#![allow(clippy::print_stdout, reason = "a benchmark tool reports on standard output")]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http::{HeaderName, Method, header};
use relay_client::{Client, Protocol, Trust};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long)]
    url: String,
    #[arg(long)]
    ca: PathBuf,
    /// `h3` or `h2`.
    #[arg(long, default_value = "h3")]
    protocol: String,
    #[arg(long, default_value_t = 4)]
    connections: usize,
    #[arg(long, default_value_t = 16)]
    streams: usize,
    #[arg(long, default_value_t = 10)]
    duration: u64,
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Request body (a protobuf SendRequest).
    #[arg(long)]
    body: PathBuf,
    #[arg(long)]
    credential: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let protocol = match args.protocol.as_str() {
        "h3" => Protocol::Http3,
        "h2" => Protocol::Http2,
        other => anyhow::bail!("unknown protocol {other}"),
    };
    let body = Bytes::from(std::fs::read(&args.body)?);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let headers = vec![
            (header::CONTENT_TYPE, "application/x-protobuf".to_owned()),
            (header::AUTHORIZATION, format!("Bearer {}", args.credential)),
        ];
        let start = Instant::now();
        let measure_from = start + Duration::from_secs(args.warmup);
        let end = measure_from + Duration::from_secs(args.duration);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..args.connections {
            let client = Client::connect(&args.url, Trust::CaFile(args.ca.clone()), protocol)?;
            for _ in 0..args.streams {
                let (client, body, headers) = (client.clone(), body.clone(), headers.clone());
                tasks.spawn(worker(client, body, headers, measure_from, end));
            }
        }
        let mut hist = hdrhistogram::Histogram::<u64>::new(3)?;
        let (mut ok, mut failed) = (0u64, 0u64);
        while let Some(r) = tasks.join_next().await {
            let (h, o, f) = r?;
            hist.add(h)?;
            ok += o;
            failed += f;
        }
        let secs = args.duration as f64;
        let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "{{\"protocol\":\"{}\",\"requests_per_sec\":{:.0},\"ok\":{ok},\"failed\":{failed},\"p50_ms\":{:.2},\"p90_ms\":{:.2},\"p99_ms\":{:.2},\"max_ms\":{:.2}}}",
            args.protocol,
            ok as f64 / secs,
            ms(0.5),
            ms(0.9),
            ms(0.99),
            hist.max() as f64 / 1000.0
        );
        anyhow::Ok(())
    })
}

async fn worker(
    client: Client,
    body: Bytes,
    headers: Vec<(HeaderName, String)>,
    measure_from: Instant,
    end: Instant,
) -> (hdrhistogram::Histogram<u64>, u64, u64) {
    let mut hist = hdrhistogram::Histogram::<u64>::new(3).expect("3 significant digits is valid");
    let (mut ok, mut failed) = (0, 0);
    loop {
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        let r = client.raw(Method::POST, "/v1/messages", &headers, body.clone()).await;
        if sent < measure_from {
            continue;
        }
        match r {
            Ok(resp) if resp.status.is_success() => {
                ok += 1;
                let _ = hist.record(sent.elapsed().as_micros() as u64);
            }
            _ => failed += 1,
        }
    }
    (hist, ok, failed)
}
