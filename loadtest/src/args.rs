//! Command-line arguments.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Scenario {
    Send,
    Fanout,
    Drain,
    Live,
    /// 1:1 sends (latency recorded) while live receivers receive and acknowledge.
    Mixed,
    /// `--recipients` devices each hold a long-poll open for the duration (memory per
    /// idle receiver: sample the gateway's RSS meanwhile, e.g. `benches/idle.sh`).
    Idle,
    /// Well-behaved senders at `--rate`, alone and then beside an attacker at
    /// `--attacker-rate` on one credential: the well-behaved p99 with and without it.
    Abuse,
}

#[derive(Debug, Parser)]
#[command(name = "loadtest", version, about = "Load generator for rcs-relay")]
pub(crate) struct Args {
    /// Gateway URL, e.g. https://localhost:8443.
    #[arg(long)]
    pub(crate) server: String,
    /// The gateway's data dir: its dev CA and provisioning key.
    #[arg(long)]
    pub(crate) data_dir: PathBuf,
    #[arg(long, value_enum, default_value = "send")]
    pub(crate) scenario: Scenario,
    /// Use HTTP/3 instead of HTTP/2.
    #[arg(long)]
    pub(crate) http3: bool,
    /// Open loop: requests per second (fixed arrival rate). Without it: closed loop.
    #[arg(long)]
    pub(crate) rate: Option<f64>,
    /// Closed loop: concurrent workers. Open loop: cap on requests in flight.
    #[arg(long, default_value_t = 16)]
    pub(crate) concurrency: usize,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 10)]
    pub(crate) duration: u64,
    #[arg(long, default_value_t = 1)]
    pub(crate) warmup: u64,
    /// Stop after this many measured requests (also bounds `drain`'s queue).
    #[arg(long)]
    pub(crate) count: Option<u64>,
    /// Recipients per send (`fanout`).
    #[arg(long, default_value_t = 100)]
    pub(crate) recipients: usize,
    /// Ciphertext bytes per message.
    #[arg(long, default_value_t = 1024)]
    pub(crate) size: usize,
    /// Connections the senders spread over.
    #[arg(long, default_value_t = 4)]
    pub(crate) connections: usize,
    /// Spread connections over 127.0.0.1 ..= 127.0.0.N source addresses (loopback servers;
    /// for thousands of connections once one address runs out of ports).
    #[arg(long)]
    pub(crate) source_ips: Option<u8>,
    #[arg(long, default_value = "loadtest-report")]
    pub(crate) report: PathBuf,
    /// `abuse`: the attacker's sends per second (default: 10× the default per-credential limit).
    #[arg(long, default_value_t = 1000.0)]
    pub(crate) attacker_rate: f64,
}
