//! The `abuse` scenario (issue 17's goal): well-behaved senders at `--rate` for `--duration`
//! seconds alone, then again with one attacker sending at `--attacker-rate` (meant to be
//! about 10× the gateway's per-credential limit). Reported: the well-behaved p99 in both
//! phases and their ratio, and what the attacker got (accepted, 429, other).
//!
//! Run it against a gateway whose per-credential limit is the one under test and whose
//! per-pair and registration limits let the well-behaved load through (`benches/abuse.sh`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use relay_client::{Client, ClientError, Recipient};
use tokio::task::JoinSet;

use crate::args::Args;
use crate::recorder::{Recorder, error_kind};
use crate::report::{AbuseOutcome, Report, report};
use crate::setup::{MEASURED, Setup, message};

struct Phase {
    hist: hdrhistogram::Histogram<u64>,
    ok: u64,
    errors: u64,
    timelines: crate::recorder::Timelines,
}

/// One phase: the well-behaved open loop, and the attacker if given.
async fn phase(
    args: &Args,
    s: &Setup,
    rate: f64,
    attacker: Option<(&Client, &[Recipient], f64, &AttackTally)>,
) -> anyhow::Result<Phase> {
    let start = Instant::now();
    let end = start + Duration::from_secs(args.duration);
    let rec = Arc::new(Recorder::new(start, args.duration));
    let mut tasks = JoinSet::new();
    if let Some((client, target, attack_rate, tally)) = attacker {
        let (client, to) = (client.clone(), target.to_vec());
        let tally = tally.clone();
        let size = args.size;
        tasks.spawn(async move {
            let interval = Duration::from_secs_f64(1.0 / attack_rate.max(0.001));
            let mut inflight = JoinSet::new();
            let mut i = 0u64;
            loop {
                let due = start + interval.mul_f64(i as f64);
                if due >= end {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
                let (client, to, tally) = (client.clone(), to.clone(), tally.clone());
                inflight.spawn(async move { tally.count(client.send(&to, message(size, i), None, false).await) });
                i += 1;
            }
            while inflight.join_next().await.is_some() {}
            anyhow::Ok(())
        });
    }
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let mut i = 0u64;
    loop {
        let intended = start + interval.mul_f64(i as f64);
        if intended >= end {
            break;
        }
        tokio::time::sleep_until(intended.into()).await;
        let client = s.senders[i as usize % s.senders.len()].clone();
        let to: Vec<Recipient> = s.recipients.clone();
        let (rec, size) = (Arc::clone(&rec), args.size);
        tasks.spawn(async move {
            let outcome = client.send(&to, message(size, i | MEASURED), None, false).await;
            rec.record(intended, outcome.map(drop).map_err(|e| error_kind(&e)));
            anyhow::Ok(())
        });
        i += 1;
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let hist = rec.hist.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(Phase {
        hist,
        ok: rec.ok.load(Ordering::Relaxed),
        errors: rec.errors.load(Ordering::Relaxed),
        timelines: rec.timelines(),
    })
}

/// What the attacker's sends got.
#[derive(Clone, Default)]
struct AttackTally {
    sent: Arc<AtomicU64>,
    accepted: Arc<AtomicU64>,
    limited: Arc<AtomicU64>,
    other: Arc<AtomicU64>,
}

impl AttackTally {
    fn count<T>(&self, r: Result<T, ClientError>) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        let slot = match r {
            Ok(_) => &self.accepted,
            Err(e) if e.status() == Some(429) => &self.limited,
            Err(_) => &self.other,
        };
        slot.fetch_add(1, Ordering::Relaxed);
    }
}

pub(crate) async fn abuse(args: &Args, s: &Setup) -> anyhow::Result<Report> {
    let (attacker, target) = s
        .attacker
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("the abuse scenario registers an attacker"))?;
    let rate = args.rate.unwrap_or(100.0);
    eprintln!("phase 1: {rate}/s well-behaved, {} s", args.duration);
    let baseline = phase(args, s, rate, None).await?;
    let tally = AttackTally::default();
    eprintln!(
        "phase 2: the same, and an attacker at {}/s on one credential",
        args.attacker_rate
    );
    let attacked = phase(args, s, rate, Some((attacker, target, args.attacker_rate, &tally))).await?;
    let p99 = |h: &hdrhistogram::Histogram<u64>| h.value_at_quantile(0.99) as f64 / 1000.0;
    let outcome = AbuseOutcome {
        baseline_p99_ms: p99(&baseline.hist),
        attacked_p99_ms: p99(&attacked.hist),
        p99_ratio: p99(&attacked.hist) / p99(&baseline.hist).max(0.001),
        well_behaved_errors: baseline.errors + attacked.errors,
        attacker_rate: args.attacker_rate,
        attacker_sent: tally.sent.load(Ordering::Relaxed),
        attacker_accepted: tally.accepted.load(Ordering::Relaxed),
        attacker_429: tally.limited.load(Ordering::Relaxed),
        attacker_other_errors: tally.other.load(Ordering::Relaxed),
    };
    let mut r = report(
        args,
        baseline.ok + baseline.errors + attacked.ok + attacked.errors,
        baseline.ok + attacked.ok,
        baseline.errors + attacked.errors,
        (2 * args.duration) as f64,
        &attacked.hist,
        // The chart's time axis: the attacked phase after the baseline, second by second.
        one_after_the_other(baseline.timelines, attacked.timelines, args.duration as usize),
    );
    r.abuse = Some(outcome);
    Ok(r)
}

/// The two phases' timelines as one run: the attacked phase's seconds after the baseline's.
fn one_after_the_other(
    (ok_a, errors_a): crate::recorder::Timelines,
    (ok_b, errors_b): crate::recorder::Timelines,
    secs: usize,
) -> crate::recorder::Timelines {
    let mut errors = std::collections::BTreeMap::new();
    for kind in errors_a.keys().chain(errors_b.keys()) {
        let phase =
            |m: &std::collections::BTreeMap<String, Vec<u64>>| m.get(kind).cloned().unwrap_or_else(|| vec![0; secs]);
        errors.insert(kind.clone(), [phase(&errors_a), phase(&errors_b)].concat());
    }
    ([ok_a, ok_b].concat(), errors)
}
