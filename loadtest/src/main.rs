//! `loadtest`: drives a real gateway through the client SDK (so it tests the real wire).
//!
//! Scenarios: `send` (1:1), `fanout` (one send to N recipients), `drain` (queue `count`
//! envelopes, then receive + ack them all), `live` (long-polling receivers; latency is
//! send → receive). Modes: open loop at a fixed arrival `--rate` (latency is measured from
//! the *intended* send time, so queueing is not hidden by coordinated omission) or closed
//! loop with `--concurrency` workers. Every run is bounded by `--duration` and/or `--count`
//! and stops by itself; `--warmup` seconds are excluded. Writes `report.json`, `report.md`
//! and `latency.svg` to `--report`.
//!
//! Devices are registered in a setup phase with provisioning tokens signed by the
//! gateway's development key (`--data-dir`), so point it at a test gateway only.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a load generator reports on standard output and shows progress on standard error"
)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use relay_client::{Client, Protocol, Recipient, Trust};
use ring::signature::Ed25519KeyPair;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Scenario {
    Send,
    Fanout,
    Drain,
    Live,
    /// 1:1 sends (latency recorded) while live receivers receive and acknowledge.
    Mixed,
    /// `--recipients` devices each hold a long-poll open for the duration (memory per
    /// idle receiver: sample the gateway's RSS meanwhile, e.g. `benches/idle.sh`).
    Idle,
}

#[derive(Debug, Parser)]
#[command(name = "loadtest", version, about = "Load generator for rcs-relay")]
struct Args {
    /// Gateway URL, e.g. https://localhost:8443.
    #[arg(long)]
    server: String,
    /// The gateway's data dir: its dev CA and provisioning key.
    #[arg(long)]
    data_dir: PathBuf,
    #[arg(long, value_enum, default_value = "send")]
    scenario: Scenario,
    /// Use HTTP/3 instead of HTTP/2.
    #[arg(long)]
    http3: bool,
    /// Open loop: requests per second (fixed arrival rate). Without it: closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Closed loop: concurrent workers. Open loop: cap on requests in flight.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// Stop after this many measured requests (also bounds `drain`'s queue).
    #[arg(long)]
    count: Option<u64>,
    /// Recipients per send (`fanout`).
    #[arg(long, default_value_t = 100)]
    recipients: usize,
    /// Ciphertext bytes per message.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Connections the senders spread over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Spread connections over 127.0.0.1 ..= 127.0.0.N source addresses (loopback servers;
    /// for thousands of connections once one address runs out of ports).
    #[arg(long)]
    source_ips: Option<u8>,
    #[arg(long, default_value = "loadtest-report")]
    report: PathBuf,
}

#[derive(Debug, Serialize)]
struct Report {
    scenario: Scenario,
    protocol: &'static str,
    mode: &'static str,
    rate: Option<f64>,
    concurrency: usize,
    measured_secs: f64,
    sent: u64,
    received: u64,
    errors: u64,
    per_sec: f64,
    latency_ms: Percentiles,
    /// (percentile, milliseconds) for the latency curve.
    curve: Vec<(f64, f64)>,
    /// Completed requests per second of the measured period.
    timeline: Vec<u64>,
}

#[derive(Debug, Serialize)]
struct Percentiles {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

/// A seconds-elapsed bar on a terminal; hidden (and replaced by log lines) otherwise.
fn progress_bar(total_secs: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(Some(total_secs), indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) = indicatif::ProgressStyle::with_template("[{elapsed_precise}] {bar:30} {pos}/{len}s {msg}") {
        bar.set_style(style);
    }
    bar
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = rt.block_on(run(&args))?;
    std::fs::create_dir_all(&args.report).with_context(|| format!("creating {}", args.report.display()))?;
    std::fs::write(args.report.join("report.json"), serde_json::to_string_pretty(&report)?)?;
    std::fs::write(args.report.join("report.md"), markdown(&report))?;
    std::fs::write(args.report.join("latency.svg"), svg(&report))?;
    println!("{}", markdown(&report));
    Ok(())
}

struct Setup {
    senders: Vec<Client>,
    receivers: Vec<Client>,
    recipients: Vec<Recipient>,
}

async fn setup(args: &Args) -> anyhow::Result<Setup> {
    let key_path = args.data_dir.join("keys/provisioning.pk8");
    let pkcs8 = std::fs::read(&key_path).with_context(|| format!("reading {}", key_path.display()))?;
    let key = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|e| anyhow::anyhow!("provisioning key: {e}"))?;
    let protocol = if args.http3 { Protocol::Http3 } else { Protocol::Http2 };
    let trust = Trust::CaFile(args.data_dir.join("tls/dev-ca.pem"));
    let run_id: u32 = rand::random::<u32>() % 100_000;
    // Devices share `connections` connections (HTTP/2 or QUIC multiplexing), so thousands
    // of receivers do not need thousands of sockets.
    let bases = (0..args.connections.max(1))
        .map(|i| {
            let local = args
                .source_ips
                .map(|n| std::net::IpAddr::from([127, 0, 0, 1 + (i % usize::from(n.max(1))) as u8]));
            Client::connect_from(&args.server, trust.clone(), protocol, local)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let register = |n: usize| {
        let key = &key;
        let base = bases[n % bases.len()].clone();
        async move {
            let address = format!("tel:+1{run_id:05}{n:06}");
            let claims = relay_core::provisioning::ProvisioningClaims {
                address: relay_core::Address::parse(&address)?,
                expires_at_ms: now_ms() + 600_000,
                nonce: rand::random(),
            };
            let reg = base.register(&relay_core::provisioning::sign(key, &claims)).await?;
            anyhow::Ok((base.with_credential(reg.credential), address))
        }
    };
    let mut senders = Vec::new();
    for i in 0..args.connections.max(1) {
        senders.push(register(i).await?.0);
    }
    let wanted = if matches!(args.scenario, Scenario::Fanout | Scenario::Idle) {
        args.recipients.max(1)
    } else {
        1
    };
    let mut receivers = Vec::new();
    let mut recipients = Vec::new();
    for i in 0..wanted {
        let (client, address) = register(1000 + i).await?;
        receivers.push(client);
        recipients.push(Recipient::address(address));
    }
    Ok(Setup {
        senders,
        receivers,
        recipients,
    })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A distinct well-formed MLS message carrying the wall-clock send time (for `live`).
fn message(size: usize, seq: u64) -> Bytes {
    let mut ct = vec![0u8; size.max(16)];
    let sent_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    // The ciphertext is the last field of the frame (RFC 9420 section 6.3), so its tail is
    // the message's tail: sequence number, then send time.
    let n = ct.len();
    ct[n - 16..n - 8].copy_from_slice(&seq.to_be_bytes());
    ct[n - 8..].copy_from_slice(&sent_us.to_be_bytes());
    relay_core::envelope::frame_private_message(b"loadtest", 1, &ct).into()
}

struct Recorder {
    hist: std::sync::Mutex<hdrhistogram::Histogram<u64>>,
    ok: AtomicU64,
    errors: AtomicU64,
    timeline: std::sync::Mutex<Vec<u64>>,
    measure_from: Instant,
}

impl Recorder {
    fn new(measure_from: Instant, secs: u64) -> Self {
        Self {
            hist: std::sync::Mutex::new(hdrhistogram::Histogram::new(3).expect("3 significant digits is valid")),
            ok: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            timeline: std::sync::Mutex::new(vec![0; secs as usize]),
            measure_from,
        }
    }

    fn record(&self, intended: Instant, ok: bool) {
        let done = Instant::now();
        if intended < self.measure_from {
            return;
        }
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.record_latency(done.duration_since(intended));
    }

    /// A success whose request belongs to the measured period, taking `latency`.
    fn record_latency(&self, latency: Duration) {
        let done = Instant::now();
        self.ok.fetch_add(1, Ordering::Relaxed);
        let us = latency.as_micros() as u64;
        let _ = self.hist.lock().unwrap_or_else(|e| e.into_inner()).record(us.max(1));
        let second = done.duration_since(self.measure_from).as_secs() as usize;
        if let Some(slot) = self.timeline.lock().unwrap_or_else(|e| e.into_inner()).get_mut(second) {
            *slot += 1;
        }
    }
}

async fn run(args: &Args) -> anyhow::Result<Report> {
    let s = setup(args).await?;
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(args.warmup);
    let end = measure_from + Duration::from_secs(args.duration);
    let rec = Arc::new(Recorder::new(measure_from, args.duration));
    let issued = Arc::new(AtomicU64::new(0));
    let limit = args.count.unwrap_or(u64::MAX);

    if args.scenario == Scenario::Drain {
        // Queue `count` envelopes (default 1,000), then measure receive + ack until empty.
        let total = args.count.unwrap_or(1_000);
        for i in 0..total {
            s.senders[0]
                .send(&s.recipients, message(args.size, i), None, false)
                .await?;
        }
        let t0 = Instant::now();
        let receiver = &s.receivers[0];
        let mut hist = hdrhistogram::Histogram::<u64>::new(3)?;
        let mut got = 0u64;
        loop {
            let t = Instant::now();
            let page = receiver.receive(0, 100, 0).await?;
            if page.envelopes.is_empty() {
                break;
            }
            got += page.envelopes.len() as u64;
            receiver.ack(&[], Some(page.next_cursor)).await?;
            hist.record(t.elapsed().as_micros() as u64)?;
        }
        let secs = t0.elapsed().as_secs_f64();
        return Ok(report(args, total, got, 0, secs, &hist, vec![]));
    }

    if args.scenario == Scenario::Idle {
        // Every receiver long-polls (60 s) until the end; nothing is sent.
        let mut tasks = tokio::task::JoinSet::new();
        let held = Arc::new(AtomicU64::new(0));
        for r in s.receivers.clone() {
            let held = Arc::clone(&held);
            tasks.spawn(async move {
                held.fetch_add(1, Ordering::Relaxed);
                while Instant::now() < end {
                    let wait = end.saturating_duration_since(Instant::now()).as_secs().clamp(1, 60) as u32;
                    r.receive(0, 10, wait).await?;
                }
                anyhow::Ok(())
            });
        }
        println!("holding {} idle receivers until the end of the run", s.receivers.len());
        let mut errors = 0;
        while let Some(r) = tasks.join_next().await {
            errors += u64::from(r?.is_err());
        }
        let secs = args.duration as f64;
        let hist = hdrhistogram::Histogram::<u64>::new(3)?;
        return Ok(report(
            args,
            held.load(Ordering::Relaxed),
            s.receivers.len() as u64 - errors,
            errors,
            secs,
            &hist,
            vec![],
        ));
    }

    let mut tasks = tokio::task::JoinSet::new();
    let mixed_received = Arc::new(AtomicU64::new(0));
    {
        // Progress on standard error: a bar on a terminal, a line a second in logs.
        let (rec, issued) = (Arc::clone(&rec), Arc::clone(&issued));
        let total = end.saturating_duration_since(start).as_secs();
        tokio::spawn(async move {
            let bar = progress_bar(total);
            let mut tick = tokio::time::interval(Duration::from_millis(if bar.is_hidden() { 1000 } else { 200 }));
            tick.tick().await;
            while Instant::now() < end {
                tick.tick().await;
                let t = start.elapsed().as_secs();
                let status = format!(
                    "issued={} ok={} errors={}",
                    issued.load(Ordering::Relaxed),
                    rec.ok.load(Ordering::Relaxed),
                    rec.errors.load(Ordering::Relaxed)
                );
                if bar.is_hidden() {
                    eprintln!("[{t:>3}s] {status}");
                } else {
                    bar.set_position(t.min(total));
                    bar.set_message(status);
                }
            }
            bar.finish_and_clear();
        });
    }
    if matches!(args.scenario, Scenario::Live | Scenario::Mixed) {
        let mixed = args.scenario == Scenario::Mixed;
        // Receivers long-poll and record send → receive latency from the embedded time.
        for r in s.receivers.clone() {
            let (rec, mixed_received) = (Arc::clone(&rec), Arc::clone(&mixed_received));
            tasks.spawn(async move {
                let mut cursor = 0;
                while Instant::now() < end + Duration::from_secs(2) {
                    let Ok(page) = r.receive(cursor, 100, 1).await else {
                        continue;
                    };
                    for e in &page.envelopes {
                        if mixed {
                            mixed_received.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        if let Some((tag, sent_us)) = live_stamp(&e.message)
                            && tag & MEASURED != 0
                        {
                            let now_us = SystemTime::now()
                                .duration_since(UNIX_EPOCH)
                                .map_or(0, |d| d.as_micros() as u64);
                            rec.record_latency(Duration::from_micros(now_us.saturating_sub(sent_us)));
                        }
                    }
                    cursor = page.next_cursor;
                    if !page.envelopes.is_empty() {
                        let _ = r.ack(&[], Some(cursor)).await;
                    }
                }
                anyhow::Ok(())
            });
        }
    }
    let record_sends = args.scenario != Scenario::Live;
    let sem = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    match args.rate {
        Some(rate) => {
            // Open loop: the i-th request is due at start + i / rate, whatever happened before.
            let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
            let mut i = 0u64;
            loop {
                let intended = start + interval.mul_f64(i as f64);
                if intended >= end || issued.load(Ordering::Relaxed) >= limit {
                    break;
                }
                tokio::time::sleep_until(intended.into()).await;
                let Ok(permit) = Arc::clone(&sem).acquire_owned().await else {
                    break;
                };
                let client = s.senders[i as usize % s.senders.len()].clone();
                let (rec, to, size) = (Arc::clone(&rec), s.recipients.clone(), args.size);
                if intended >= measure_from {
                    issued.fetch_add(1, Ordering::Relaxed);
                }
                let tag = if intended >= measure_from { i | MEASURED } else { i };
                tasks.spawn(async move {
                    let ok = client.send(&to, message(size, tag), None, false).await.is_ok();
                    if record_sends || !ok {
                        rec.record(intended, ok);
                    }
                    drop(permit);
                    anyhow::Ok(())
                });
                i += 1;
            }
        }
        None => {
            for w in 0..args.concurrency.max(1) {
                let client = s.senders[w % s.senders.len()].clone();
                let (rec, to, size, issued) = (Arc::clone(&rec), s.recipients.clone(), args.size, Arc::clone(&issued));
                tasks.spawn(async move {
                    let mut seq = (w as u64) << 32;
                    loop {
                        let intended = Instant::now();
                        if intended >= end || issued.load(Ordering::Relaxed) >= limit {
                            return anyhow::Ok(());
                        }
                        if intended >= measure_from {
                            issued.fetch_add(1, Ordering::Relaxed);
                        }
                        let tag = if intended >= measure_from { seq | MEASURED } else { seq };
                        let ok = client.send(&to, message(size, tag), None, false).await.is_ok();
                        if record_sends || !ok {
                            rec.record(intended, ok);
                        }
                        seq += 1;
                    }
                });
            }
        }
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let measured = end
        .min(Instant::now())
        .saturating_duration_since(measure_from)
        .as_secs_f64()
        .max(0.001);
    let hist = rec.hist.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let timeline = rec.timeline.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let sent = issued.load(Ordering::Relaxed);
    // Only what was sent and received in the measured period counts (warm-up excluded).
    let got = if args.scenario == Scenario::Mixed {
        mixed_received.load(Ordering::Relaxed)
    } else {
        rec.ok.load(Ordering::Relaxed)
    };
    Ok(report(
        args,
        sent,
        got,
        rec.errors.load(Ordering::Relaxed),
        measured,
        &hist,
        timeline,
    ))
}

/// Set in a message's sequence number when it was sent in the measured period.
const MEASURED: u64 = 1 << 63;

/// The sequence number and send time embedded by [`message`]: the last 16 bytes.
fn live_stamp(message: &[u8]) -> Option<(u64, u64)> {
    let tail = message.get(message.len().checked_sub(16)?..)?;
    Some((
        u64::from_be_bytes(tail[..8].try_into().ok()?),
        u64::from_be_bytes(tail[8..].try_into().ok()?),
    ))
}

fn report(
    args: &Args,
    sent: u64,
    received: u64,
    errors: u64,
    secs: f64,
    hist: &hdrhistogram::Histogram<u64>,
    timeline: Vec<u64>,
) -> Report {
    let ms = |v: u64| v as f64 / 1000.0;
    let curve = [0.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.99, 100.0]
        .iter()
        .map(|p| (*p, ms(hist.value_at_percentile(*p))))
        .collect();
    Report {
        scenario: args.scenario,
        protocol: if args.http3 { "h3" } else { "h2" },
        mode: if args.rate.is_some() {
            "open-loop"
        } else {
            "closed-loop"
        },
        rate: args.rate,
        concurrency: args.concurrency,
        measured_secs: secs,
        sent,
        received,
        errors,
        per_sec: received as f64 / secs,
        latency_ms: Percentiles {
            p50: ms(hist.value_at_quantile(0.5)),
            p90: ms(hist.value_at_quantile(0.9)),
            p99: ms(hist.value_at_quantile(0.99)),
            p999: ms(hist.value_at_quantile(0.999)),
            max: ms(hist.max()),
        },
        curve,
        timeline,
    }
}

fn markdown(r: &Report) -> String {
    format!(
        "# loadtest: {:?} over {} ({})\n\n| sent | received | errors | per second | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms |\n|---|---|---|---|---|---|---|---|---|\n| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
        r.scenario,
        r.protocol,
        r.mode,
        r.sent,
        r.received,
        r.errors,
        r.per_sec,
        r.latency_ms.p50,
        r.latency_ms.p90,
        r.latency_ms.p99,
        r.latency_ms.p999,
        r.latency_ms.max
    )
}

/// A dependency-free SVG: the latency percentile curve (top) and completed requests per
/// second over the measured period (bottom).
fn svg(r: &Report) -> String {
    let w = 640.0;
    let panel = |values: &[f64], top: f64, height: f64| -> String {
        let max = values.iter().copied().fold(0.001, f64::max);
        let n = values.len().max(2) - 1;
        values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                format!(
                    "{:.1},{:.1}",
                    40.0 + (w - 60.0) * i as f64 / n as f64,
                    top + height - height * v / max
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let latency: Vec<f64> = r.curve.iter().map(|c| c.1).collect();
    let throughput: Vec<f64> = r.timeline.iter().map(|v| *v as f64).collect();
    let max_latency = latency.iter().copied().fold(0.0, f64::max);
    let max_rate = throughput.iter().copied().fold(0.0, f64::max);
    let labels: String = r
        .curve
        .iter()
        .enumerate()
        .map(|(i, (p, _))| {
            let x = 40.0 + (w - 60.0) * i as f64 / (r.curve.len().max(2) - 1) as f64;
            format!("<text x=\"{x:.1}\" y=\"190\" font-size=\"10\" text-anchor=\"middle\">p{p}</text>")
        })
        .collect();
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"400\"><rect width=\"100%\" height=\"100%\" fill=\"white\"/>\
         <text x=\"40\" y=\"20\" font-size=\"13\">{:?} {} {}: latency by percentile (max {max_latency:.2} ms)</text>\
         <polyline fill=\"none\" stroke=\"steelblue\" stroke-width=\"2\" points=\"{}\"/>{labels}\
         <text x=\"40\" y=\"220\" font-size=\"13\">completed per second (max {max_rate:.0})</text>\
         <polyline fill=\"none\" stroke=\"darkorange\" stroke-width=\"2\" points=\"{}\"/></svg>\n",
        r.scenario,
        r.protocol,
        r.mode,
        panel(&latency, 30.0, 140.0),
        panel(&throughput, 235.0, 140.0)
    )
}
