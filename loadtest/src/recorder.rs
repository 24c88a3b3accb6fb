//! What a run measures: latencies (HDR histogram), successes and errors, completions per
//! second; and progress on standard error while it runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Requests completed per second, and failed per second by error kind (`"<status> <code>"`).
pub(crate) type Timelines = (Vec<u64>, std::collections::BTreeMap<String, Vec<u64>>);

/// Shared by every worker of a run.
pub(crate) struct Recorder {
    pub(crate) hist: std::sync::Mutex<hdrhistogram::Histogram<u64>>,
    pub(crate) ok: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) timeline: std::sync::Mutex<Vec<u64>>,
    /// Failed requests per second of the measured period, by kind.
    pub(crate) error_timelines: std::sync::Mutex<std::collections::BTreeMap<String, Vec<u64>>>,
    secs: usize,
    /// Requests issued in the measured period.
    pub(crate) issued: AtomicU64,
    /// Errors by kind: `"<status> <code>"` for an answer, `"transport"` for none.
    pub(crate) error_kinds: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    measure_from: Instant,
}

impl Recorder {
    pub(crate) fn new(measure_from: Instant, secs: u64) -> Self {
        Self {
            hist: std::sync::Mutex::new(hdrhistogram::Histogram::new(3).expect("3 significant digits is valid")),
            ok: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            timeline: std::sync::Mutex::new(vec![0; secs as usize]),
            error_timelines: std::sync::Mutex::default(),
            secs: secs as usize,
            issued: AtomicU64::new(0),
            error_kinds: std::sync::Mutex::default(),
            measure_from,
        }
    }

    /// Whether a request intended at `at` belongs to the measured period.
    pub(crate) fn measured(&self, at: Instant) -> bool {
        at >= self.measure_from
    }

    /// A request intended at `intended` finished now (latency from the intended time, so
    /// an open loop does not hide queueing).
    pub(crate) fn record(&self, intended: Instant, outcome: Result<(), String>) {
        let done = Instant::now();
        if !self.measured(intended) {
            return;
        }
        if let Err(kind) = outcome {
            self.errors.fetch_add(1, Ordering::Relaxed);
            let second = self.second(done);
            let mut timelines = self.error_timelines.lock().unwrap_or_else(|e| e.into_inner());
            let timeline = timelines.entry(kind.clone()).or_insert_with(|| vec![0; self.secs]);
            if let Some(slot) = timeline.get_mut(second) {
                *slot += 1;
            }
            drop(timelines);
            *self
                .error_kinds
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(kind)
                .or_default() += 1;
            return;
        }
        self.record_latency(done.duration_since(intended));
    }

    /// A success whose request belongs to the measured period, taking `latency`.
    pub(crate) fn record_latency(&self, latency: Duration) {
        let done = Instant::now();
        self.ok.fetch_add(1, Ordering::Relaxed);
        let us = latency.as_micros() as u64;
        let _ = self.hist.lock().unwrap_or_else(|e| e.into_inner()).record(us.max(1));
        let second = self.second(done);
        if let Some(slot) = self.timeline.lock().unwrap_or_else(|e| e.into_inner()).get_mut(second) {
            *slot += 1;
        }
    }

    /// The second of the measured period that `at` falls in.
    fn second(&self, at: Instant) -> usize {
        at.duration_since(self.measure_from).as_secs() as usize
    }

    /// Completed per second, and failed per second by kind.
    pub(crate) fn timelines(&self) -> Timelines {
        (
            self.timeline.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            self.error_timelines.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        )
    }
}

/// Progress on standard error until `end`: a bar on a terminal, a line a second in logs.
pub(crate) fn show_progress(rec: Arc<Recorder>, start: Instant, end: Instant) {
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
                rec.issued.load(Ordering::Relaxed),
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

/// A seconds-elapsed bar on a terminal; hidden (and replaced by log lines) otherwise.
fn progress_bar(total_secs: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(Some(total_secs), indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) = indicatif::ProgressStyle::with_template("[{elapsed_precise}] {bar:30} {pos}/{len}s {msg}") {
        bar.set_style(style);
    }
    bar
}

/// How a failed request is counted in the report.
pub(crate) fn error_kind(e: &relay_client::ClientError) -> String {
    match (e.status(), e.code()) {
        (Some(status), Some(code)) => format!("{status} {code}"),
        (Some(status), None) => status.to_string(),
        _ => "transport".to_owned(),
    }
}
