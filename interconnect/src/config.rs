//! `[interconnect]` in the gateway's configuration, and the peers file it names (re-read on
//! reload, so peers and CRLs change without a restart).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::SetupError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterconnectConfig {
    /// The interconnect listener (TLS 1.3, client certificates required).
    pub listen: SocketAddr,
    /// This carrier's domain: the name in its certificate, which peers map to us.
    pub domain: String,
    /// Where this carrier stores and processes traffic (ISO 3166-1 alpha-2).
    pub jurisdiction: String,
    /// Certificate chain and key (PEM), served to peers and presented as our client certificate.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// TOML file with `[[peer]]` entries; re-read on SIGHUP or `POST /admin/interconnect/reload`.
    pub peers_file: PathBuf,
    /// Number prefixes this gateway serves (e.g. `"+1555"`); unmatched numbers are local too.
    #[serde(default)]
    pub local_prefixes: Vec<String>,
    /// Jurisdictions traffic may be routed to; empty: no restriction.
    #[serde(default)]
    pub allowed_jurisdictions: Vec<String>,
    /// An outbox entry undelivered this long is dead-lettered (metric + audit record).
    #[serde(default = "d_ttl")]
    pub outbox_ttl_secs: u64,
    /// Deliveries in flight per peer.
    #[serde(default = "d_concurrency")]
    pub concurrency_per_peer: usize,
    #[serde(default = "d_timeout")]
    pub request_timeout_secs: u64,
    #[serde(default = "d_base")]
    pub backoff_base_ms: u64,
    #[serde(default = "d_cap")]
    pub backoff_cap_secs: u64,
    /// Open peer connections are re-verified this often (and at every reload): a revoked or
    /// expired peer certificate loses its connections.
    #[serde(default = "d_recheck")]
    pub recheck_secs: u64,
    /// Peer connections open at once; more are refused at accept.
    #[serde(default = "d_max_connections")]
    pub max_connections: usize,
}

const fn d_ttl() -> u64 {
    24 * 3600
}
const fn d_concurrency() -> usize {
    16
}
const fn d_timeout() -> u64 {
    10
}
const fn d_base() -> u64 {
    200
}
const fn d_cap() -> u64 {
    30
}
const fn d_recheck() -> u64 {
    30
}
const fn d_max_connections() -> usize {
    1024
}

/// The peers file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeersFile {
    #[serde(default, rename = "peer")]
    pub peers: Vec<PeerConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// A short name for logs and metrics.
    pub name: String,
    /// The peer's domain: its client certificate must be valid for this name.
    pub domain: String,
    /// `https://host:port` of the peer's interconnect listener.
    pub endpoint: String,
    /// CA bundle (PEM) that issues the peer's certificates.
    pub ca: PathBuf,
    /// Optional pin: base64 SHA-256 of the peer certificate's SubjectPublicKeyInfo.
    pub spki_sha256: Option<String>,
    /// CRLs (PEM or DER) of the peer's CA; expired CRLs refuse the peer.
    #[serde(default)]
    pub crls: Vec<PathBuf>,
    /// Number prefixes the peer serves.
    pub prefixes: Vec<String>,
    pub jurisdiction: String,
    /// Inbound requests per second from this peer (token bucket).
    #[serde(default = "d_rps")]
    pub requests_per_second: u32,
    #[serde(default = "d_burst")]
    pub burst: u32,
    /// Key-material requests per (requester, target): burst, then one per `claim_refill_secs`.
    #[serde(default = "d_claim_burst")]
    pub claim_burst: u32,
    #[serde(default = "d_claim_refill")]
    pub claim_refill_secs: u64,
}

const fn d_rps() -> u32 {
    1000
}
const fn d_burst() -> u32 {
    2000
}
const fn d_claim_burst() -> u32 {
    6
}
const fn d_claim_refill() -> u64 {
    600
}

impl PeersFile {
    pub fn load(path: &Path) -> Result<Self, SetupError> {
        let text = std::fs::read_to_string(path).map_err(|source| SetupError::ReadPeers {
            path: path.to_path_buf(),
            source,
        })?;
        let file: Self = toml::from_str(&text).map_err(|source| SetupError::ParsePeers {
            path: path.to_path_buf(),
            source,
        })?;
        let mut names = std::collections::HashSet::new();
        for p in &file.peers {
            if !names.insert(p.name.as_str()) {
                return Err(SetupError::DuplicatePeer {
                    path: path.to_path_buf(),
                    name: p.name.clone(),
                });
            }
            if !p.endpoint.starts_with("https://") {
                return Err(SetupError::Endpoint { name: p.name.clone() });
            }
            if p.prefixes
                .iter()
                .any(|x| !x.starts_with('+') || !x[1..].bytes().all(|b| b.is_ascii_digit()))
            {
                return Err(SetupError::Prefix { name: p.name.clone() });
            }
        }
        Ok(file)
    }
}
