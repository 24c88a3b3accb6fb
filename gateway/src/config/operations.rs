//! The operations sections: `[admin]` (operator calls on mutual TLS, dual control) and
//! `[audit]` (checkpoints, retention).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// Operator calls on mutual TLS. Without `operator_ca`, they are served on the plain admin
/// listener (loopback by default), as in development; with it, only on `operator_listen`,
/// to clients presenting a certificate from that CA (its common name is the operator's
/// identity in the audit log), and the plain listener keeps `/metrics` and `/healthz` only.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub operator_listen: Option<SocketAddr>,
    /// PEM CA certificates of the operators' client certificates.
    pub operator_ca: Option<PathBuf>,
    /// PEM CRLs of that CA (a stale one refuses every operator, by design).
    #[serde(default)]
    pub operator_crls: Vec<PathBuf>,
    /// How long one operator's approval of a destructive call waits for a second operator.
    #[serde(default = "d_dual_control_window")]
    pub dual_control_window_secs: u64,
}

const fn d_dual_control_window() -> u64 {
    600
}

impl Default for AdminConfig {
    fn default() -> Self {
        toml::from_str("").expect("every admin setting has a default")
    }
}

/// The audit log's signed checkpoints.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Sign a checkpoint once this many records have been added since the last one (also
    /// after every key operation, on request, and at shutdown).
    #[serde(default = "d_checkpoint_every")]
    pub checkpoint_every: u64,
    /// Records older than this are pruned, behind a signed checkpoint that still proves the
    /// rest (0: keep everything).
    #[serde(default)]
    pub retention_secs: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            checkpoint_every: d_checkpoint_every(),
            retention_secs: 0,
        }
    }
}

const fn d_checkpoint_every() -> u64 {
    100
}
