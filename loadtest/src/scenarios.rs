//! The scenarios, one function each. Every one is bounded by `--duration` and/or `--count`
//! and stops by itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use relay_client::{Client, Recipient};
use tokio::task::JoinSet;

use crate::args::{Args, Scenario};
use crate::recorder::{Recorder, show_progress};
use crate::report::{Report, report};
use crate::setup::{MEASURED, Setup, live_stamp, message, now_us, setup};

/// Registers the devices, runs the scenario, returns its report.
pub(crate) async fn run(args: &Args) -> anyhow::Result<Report> {
    let s = setup(args).await?;
    match args.scenario {
        Scenario::Drain => drain(args, &s).await,
        Scenario::Abuse => crate::abuse::abuse(args, &s).await,
        Scenario::Idle => idle(args, &s).await,
        Scenario::Send | Scenario::Fanout | Scenario::Live | Scenario::Mixed => load(args, &s).await,
    }
}

/// Queue `count` envelopes (default 1,000), then measure receive + ack until empty.
async fn drain(args: &Args, s: &Setup) -> anyhow::Result<Report> {
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
    // Envelopes drained per second, for the chart.
    let mut timeline: Vec<u64> = Vec::new();
    loop {
        let t = Instant::now();
        let page = receiver.receive(0, 100, 0).await?;
        if page.envelopes.is_empty() {
            break;
        }
        got += page.envelopes.len() as u64;
        let second = t0.elapsed().as_secs() as usize;
        timeline.resize(timeline.len().max(second + 1), 0);
        timeline[second] += page.envelopes.len() as u64;
        receiver.ack(&[], Some(page.next_cursor)).await?;
        hist.record(t.elapsed().as_micros() as u64)?;
    }
    let secs = t0.elapsed().as_secs_f64();
    Ok(report(args, total, got, 0, secs, &hist, (timeline, Default::default())))
}

/// Every receiver long-polls (60 s) until the end; nothing is sent.
async fn idle(args: &Args, s: &Setup) -> anyhow::Result<Report> {
    let end = Instant::now() + Duration::from_secs(args.warmup + args.duration);
    let mut tasks = JoinSet::new();
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
    let hist = hdrhistogram::Histogram::<u64>::new(3)?;
    Ok(report(
        args,
        held.load(Ordering::Relaxed),
        s.receivers.len() as u64 - errors,
        errors,
        args.duration as f64,
        &hist,
        Default::default(),
    ))
}

/// The timing of one run.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    measure_from: Instant,
    end: Instant,
    /// Requests to issue in the measured period at most.
    limit: u64,
}

/// `send`, `fanout`, `live`, `mixed`: senders (open or closed loop) and, for `live` and
/// `mixed`, long-polling receivers.
async fn load(args: &Args, s: &Setup) -> anyhow::Result<Report> {
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(args.warmup);
    let w = Window {
        start,
        measure_from,
        end: measure_from + Duration::from_secs(args.duration),
        limit: args.count.unwrap_or(u64::MAX),
    };
    let rec = Arc::new(Recorder::new(measure_from, args.duration));
    show_progress(Arc::clone(&rec), w.start, w.end);
    let mut tasks = JoinSet::new();
    let mixed_received = Arc::new(AtomicU64::new(0));
    if matches!(args.scenario, Scenario::Live | Scenario::Mixed) {
        receivers(args.scenario, &s.receivers, &rec, &mixed_received, w, &mut tasks);
    }
    // `live` measures send → receive, so the receivers record; the others record sends.
    let record_sends = args.scenario != Scenario::Live;
    match args.rate {
        Some(rate) => open_loop(args, s, rate, &rec, record_sends, w, &mut tasks).await,
        None => closed_loop(args, s, &rec, record_sends, w, &mut tasks),
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let measured = w
        .end
        .min(Instant::now())
        .saturating_duration_since(w.measure_from)
        .as_secs_f64()
        .max(0.001);
    let hist = rec.hist.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let error_kinds = rec.error_kinds.lock().unwrap_or_else(|e| e.into_inner()).clone();
    // Only what was sent and received in the measured period counts (warm-up excluded).
    let got = if args.scenario == Scenario::Mixed {
        mixed_received.load(Ordering::Relaxed)
    } else {
        rec.ok.load(Ordering::Relaxed)
    };
    let mut r = report(
        args,
        rec.issued.load(Ordering::Relaxed),
        got,
        rec.errors.load(Ordering::Relaxed),
        measured,
        &hist,
        rec.timelines(),
    );
    r.set_errors(error_kinds);
    Ok(r)
}

/// Receivers long-poll and acknowledge; for `live` they record send → receive latency from
/// the time embedded in each measured message, for `mixed` they count. Acknowledgements go
/// out in the background (the newest cursor wins), as an app would send them, so a receive
/// never waits for the previous page's acknowledgement to become durable.
fn receivers(
    scenario: Scenario,
    clients: &[Client],
    rec: &Arc<Recorder>,
    mixed_received: &Arc<AtomicU64>,
    w: Window,
    tasks: &mut JoinSet<anyhow::Result<()>>,
) {
    let mixed = scenario == Scenario::Mixed;
    for r in clients {
        let (r, rec, mixed_received) = (r.clone(), Arc::clone(rec), Arc::clone(mixed_received));
        tasks.spawn(async move {
            let (ack_tx, mut ack_rx) = tokio::sync::watch::channel(0u64);
            let acker = r.clone();
            tokio::spawn(async move {
                while ack_rx.changed().await.is_ok() {
                    let up_to = *ack_rx.borrow_and_update();
                    let _ = acker.ack(&[], Some(up_to)).await;
                }
            });
            let mut cursor = 0;
            while Instant::now() < w.end + Duration::from_secs(2) {
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
                        rec.record_latency(Duration::from_micros(now_us().saturating_sub(sent_us)));
                    }
                }
                cursor = page.next_cursor;
                if !page.envelopes.is_empty() {
                    let _ = ack_tx.send(cursor);
                }
            }
            anyhow::Ok(())
        });
    }
}

/// Open loop: the i-th request is due at start + i / rate, whatever happened before;
/// `--concurrency` caps requests in flight.
async fn open_loop(
    args: &Args,
    s: &Setup,
    rate: f64,
    rec: &Arc<Recorder>,
    record_sends: bool,
    w: Window,
    tasks: &mut JoinSet<anyhow::Result<()>>,
) {
    let sem = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let mut i = 0u64;
    loop {
        let intended = w.start + interval.mul_f64(i as f64);
        if intended >= w.end || rec.issued.load(Ordering::Relaxed) >= w.limit {
            break;
        }
        tokio::time::sleep_until(intended.into()).await;
        let Ok(permit) = Arc::clone(&sem).acquire_owned().await else {
            break;
        };
        let client = s.senders[i as usize % s.senders.len()].clone();
        let (rec, to, size) = (Arc::clone(rec), s.recipients.clone(), args.size);
        let measured = rec.measured(intended);
        if measured {
            rec.issued.fetch_add(1, Ordering::Relaxed);
        }
        let tag = if measured { i | MEASURED } else { i };
        tasks.spawn(async move {
            let outcome = send(&client, &to, size, tag).await;
            if record_sends || outcome.is_err() {
                rec.record(intended, outcome);
            }
            drop(permit);
            anyhow::Ok(())
        });
        i += 1;
    }
}

/// Closed loop: `--concurrency` workers, each sending as soon as its last send finished.
fn closed_loop(
    args: &Args,
    s: &Setup,
    rec: &Arc<Recorder>,
    record_sends: bool,
    w: Window,
    tasks: &mut JoinSet<anyhow::Result<()>>,
) {
    for worker in 0..args.concurrency.max(1) {
        let client = s.senders[worker % s.senders.len()].clone();
        let (rec, to, size) = (Arc::clone(rec), s.recipients.clone(), args.size);
        tasks.spawn(async move {
            let mut seq = (worker as u64) << 32;
            loop {
                let intended = Instant::now();
                if intended >= w.end || rec.issued.load(Ordering::Relaxed) >= w.limit {
                    return anyhow::Ok(());
                }
                let measured = rec.measured(intended);
                if measured {
                    rec.issued.fetch_add(1, Ordering::Relaxed);
                }
                let tag = if measured { seq | MEASURED } else { seq };
                let outcome = send(&client, &to, size, tag).await;
                if record_sends || outcome.is_err() {
                    rec.record(intended, outcome);
                }
                seq += 1;
            }
        });
    }
}

/// One send; an error as its kind (`"429 rate_limited"`, `"transport"`).
async fn send(client: &Client, to: &[Recipient], size: usize, tag: u64) -> Result<(), String> {
    client
        .send(to, message(size, tag), None, false)
        .await
        .map(drop)
        .map_err(|e| crate::recorder::error_kind(&e))
}
