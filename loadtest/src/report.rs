//! The report: `report.json` and `report.md` (`latency.svg` is drawn by `chart`).

use serde::Serialize;

use crate::args::{Args, Scenario};

#[derive(Debug, Serialize)]
pub(crate) struct Report {
    scenario: Scenario,
    protocol: &'static str,
    mode: &'static str,
    rate: Option<f64>,
    concurrency: usize,
    measured_secs: f64,
    /// Requests issued in the measured period (`attempted`; kept as `sent` for old readers).
    sent: u64,
    pub(crate) attempted: u64,
    /// Attempted requests that succeeded.
    pub(crate) accepted: u64,
    received: u64,
    pub(crate) errors: u64,
    /// Errors by kind: `"<status> <code>"` for an answer, `"transport"` for none.
    errors_by_kind: std::collections::BTreeMap<String, u64>,
    /// What a reader must know to trust the numbers (e.g. the gateway's limits refused load).
    warnings: Vec<String>,
    per_sec: f64,
    latency_ms: Percentiles,
    /// (percentile, milliseconds) for the latency curve.
    pub(crate) curve: Vec<(f64, f64)>,
    /// Completed requests per second of the measured period.
    pub(crate) timeline: Vec<u64>,
    /// Failed requests per second of the measured period, by kind.
    pub(crate) errors_per_second: std::collections::BTreeMap<String, Vec<u64>>,
    /// `abuse`: both phases and the attacker's outcome.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) abuse: Option<AbuseOutcome>,
}

/// What the second phase did to the well-behaved clients, and what the attacker got.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct AbuseOutcome {
    pub(crate) baseline_p99_ms: f64,
    pub(crate) attacked_p99_ms: f64,
    /// attacked / baseline (the goal: at most 2).
    pub(crate) p99_ratio: f64,
    pub(crate) well_behaved_errors: u64,
    pub(crate) attacker_rate: f64,
    pub(crate) attacker_sent: u64,
    pub(crate) attacker_accepted: u64,
    pub(crate) attacker_429: u64,
    pub(crate) attacker_other_errors: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct Percentiles {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

pub(crate) fn report(
    args: &Args,
    sent: u64,
    received: u64,
    errors: u64,
    secs: f64,
    hist: &hdrhistogram::Histogram<u64>,
    (timeline, errors_per_second): crate::recorder::Timelines,
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
        attempted: sent,
        accepted: sent.saturating_sub(errors),
        received,
        errors,
        errors_by_kind: std::collections::BTreeMap::new(),
        warnings: Vec::new(),
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
        errors_per_second,
        abuse: None,
    }
}

impl Report {
    /// Records the errors by kind, and warns when the gateway's limits refused load (naming
    /// the configuration keys that raise them).
    pub(crate) fn set_errors(&mut self, kinds: std::collections::BTreeMap<String, u64>) {
        let limited: u64 = kinds.iter().filter(|(k, _)| k.starts_with("429")).map(|(_, n)| n).sum();
        if limited > 0 {
            let keys: Vec<&str> = kinds
                .keys()
                .filter_map(|k| k.strip_prefix("429 "))
                .map(config_key_for)
                .collect();
            self.warnings.push(format!(
                "{limited} of {} requests were refused with 429 by the gateway's limits, so this measures the limits, \
                 not the gateway: raise {} for a load test (README, \"Load testing\")",
                self.attempted,
                keys.join(", ")
            ));
        }
        self.errors_by_kind = kinds;
    }

    pub(crate) fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// `send over h2 (closed-loop)`.
    pub(crate) fn title(&self) -> String {
        format!("{:?} over {} ({})", self.scenario, self.protocol, self.mode)
    }

    pub(crate) fn p99_ms(&self) -> f64 {
        self.latency_ms.p99
    }
}

/// The configuration key that raises the limit behind a 429 code.
fn config_key_for(code: &str) -> &'static str {
    match code {
        "rate_limited" => "[rate_limit] requests_per_second and burst",
        "sender_recipient_limited" => "[rate_limit] sender_recipient_burst and sender_recipient_per_second",
        "sender_share_exceeded" => "[rate_limit] sender_queue_share_percent (0 turns it off)",
        "recipient_inbound_limited" => "[rate_limit] recipient_bytes_burst and recipient_bytes_per_second",
        "registration_rate_limited" => "[rate_limit] registration_burst",
        "too_many_failed_auth" => "[rate_limit] failed_auth_burst",
        _ => "the gateway's [rate_limit] settings",
    }
}

pub(crate) fn markdown(r: &Report) -> String {
    let mut out = table(r);
    for w in &r.warnings {
        out.push_str(&format!("\n**Warning:** {w}\n"));
    }
    if !r.errors_by_kind.is_empty() {
        out.push_str("\n| error | count |\n|---|---|\n");
        for (k, n) in &r.errors_by_kind {
            out.push_str(&format!("| {k} | {n} |\n"));
        }
    }
    if let Some(a) = &r.abuse {
        out.push_str(&format!(
            "\n## Abuse: well-behaved p99 without and with an attacker at {:.0}/s\n\n| p99 without ms | p99 with ms | ratio (goal ≤ 2) | well-behaved errors | attacker sent | accepted | 429 | other errors |\n|---|---|---|---|---|---|---|---|\n| {:.2} | {:.2} | {:.2} | {} | {} | {} | {} | {} |\n",
            a.attacker_rate,
            a.baseline_p99_ms,
            a.attacked_p99_ms,
            a.p99_ratio,
            a.well_behaved_errors,
            a.attacker_sent,
            a.attacker_accepted,
            a.attacker_429,
            a.attacker_other_errors
        ));
    }
    out
}

fn table(r: &Report) -> String {
    format!(
        "# loadtest: {:?} over {} ({})\n\n| attempted | accepted | received | errors | per second | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms |\n|---|---|---|---|---|---|---|---|---|---|\n| {} | {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
        r.scenario,
        r.protocol,
        r.mode,
        r.attempted,
        r.accepted,
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
