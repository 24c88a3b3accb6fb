//! `loadtest`: drives a real gateway through the client SDK (so it tests the real wire).
//!
//! Scenarios: `send` (1:1), `fanout` (one send to N recipients), `drain` (queue `count`
//! envelopes, then receive + ack them all), `live` (long-polling receivers; latency is
//! send → receive), `mixed` (1:1 sends while live receivers receive and acknowledge) and
//! `idle` (receivers holding long-polls, for memory per receiver). Modes: open loop at a
//! fixed arrival `--rate` (latency is measured from the *intended* send time, so queueing is
//! not hidden by coordinated omission) or closed loop with `--concurrency` workers. Every run is bounded by `--duration` and/or `--count`
//! and stops by itself; `--warmup` seconds are excluded. Writes `report.json`, `report.md`
//! and `latency.svg` to `--report`.
//!
//! Devices are registered in a setup phase with provisioning tokens signed by the
//! gateway's development key (`--data-dir`), so point it at a test gateway only.
//!
//! # Layout
//! `args` (the command line), `setup` (devices and messages), `scenarios` (one function
//! each), `recorder` (histograms, counters, progress), `report` (JSON, Markdown, SVG).

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a load generator reports on standard output and shows progress on standard error"
)]

mod abuse;
mod args;
mod chart;
mod recorder;
mod report;
mod scenarios;
mod setup;

use anyhow::Context as _;
use clap::Parser as _;

fn main() -> anyhow::Result<()> {
    let args = args::Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = rt.block_on(scenarios::run(&args))?;
    std::fs::create_dir_all(&args.report).with_context(|| format!("creating {}", args.report.display()))?;
    std::fs::write(args.report.join("report.json"), serde_json::to_string_pretty(&report)?)?;
    std::fs::write(args.report.join("report.md"), report::markdown(&report))?;
    std::fs::write(args.report.join("latency.svg"), chart::svg(&report))?;
    println!("{}", report::markdown(&report));
    for w in report.warnings() {
        eprintln!("warning: {w}");
    }
    Ok(())
}
