//! `[storage]`: the backend (sled, or PostgreSQL for several nodes) and its settings.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Where envelopes live: `sled` (embedded, one node) or `postgres` (several nodes on
    /// one database, `[storage.postgres]`).
    #[serde(default)]
    pub backend: BackendKind,
    /// The PostgreSQL backend; required with `backend = "postgres"`.
    #[serde(default)]
    pub postgres: Option<PostgresSettings>,
    #[serde(default = "d_cache")]
    pub cache_capacity_mb: u64,
    /// Interval of the TTL sweeper.
    #[serde(default = "d_sweep")]
    pub sweep_interval_secs: u64,
    /// The journal is cut into segment files of this size.
    #[serde(default = "d_segment")]
    pub journal_segment_mb: u64,
    /// A checkpoint is taken once this much journal is not covered by one: it bounds what a
    /// restart after a crash replays.
    #[serde(default = "d_checkpoint_mb")]
    pub checkpoint_mb: u64,
    /// ... or this long after the last one, if anything was written.
    #[serde(default = "d_checkpoint_secs")]
    pub checkpoint_secs: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        toml::from_str("").expect("every field has a default")
    }
}

/// The storage backends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    #[default]
    Sled,
    Postgres,
}

/// `[storage.postgres]`: the database every gateway node of a cluster shares.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSettings {
    /// A libpq connection string or `postgresql://` URL; several hosts with
    /// `target_session_attrs=read-write` follow a failover. It may hold a password: it is
    /// never logged (prefer `password_file`).
    pub url: String,
    /// A file holding the password (kept out of the configuration).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// TLS to the database: the CA (PEM) that verifies its certificate. With it, set
    /// `sslmode=require` in `url` so a server without TLS is refused.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Connections per node.
    #[serde(default = "d_pool")]
    pub pool_size: usize,
    /// Longest a statement may run, and a request wait for a connection: past it the
    /// request gets 503 with `Retry-After`.
    #[serde(default = "d_statement_ms")]
    pub statement_timeout_ms: u64,
    #[serde(default = "d_connect_ms")]
    pub connect_timeout_ms: u64,
    /// How long an outbox entry stays with the node delivering it (a node that dies gives
    /// its entries up after this).
    #[serde(default = "d_lease")]
    pub outbox_lease_secs: u64,
}

impl std::fmt::Debug for PostgresSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSettings")
            .field("pool_size", &self.pool_size)
            .finish_non_exhaustive()
    }
}

fn d_pool() -> usize {
    16
}
fn d_statement_ms() -> u64 {
    5_000
}
fn d_connect_ms() -> u64 {
    3_000
}
fn d_lease() -> u64 {
    30
}

fn d_cache() -> u64 {
    256
}
fn d_sweep() -> u64 {
    60
}
fn d_segment() -> u64 {
    32
}
fn d_checkpoint_mb() -> u64 {
    32
}
fn d_checkpoint_secs() -> u64 {
    10
}
