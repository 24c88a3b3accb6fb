//! Gateway configuration: one TOML file, with a few command-line overrides.
//!
//! Everything is parsed into typed values at start-up ([`Settings`]); an invalid file
//! is reported and the process exits 64 (`EX_USAGE`). Unknown keys are errors, so a
//! typo never silently falls back to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use relay_core::Limits;
use serde::Deserialize;

/// The configuration file, as written by an operator.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where sled, generated keys and the dev certificate live.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Client API listener (TLS).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Admin listener: `/metrics`, `/healthz`. Loopback unless you mean it.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: SocketAddr,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
    #[serde(default)]
    pub registration: RegistrationConfig,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub http3: Http3Config,
    #[serde(default)]
    pub mls: MlsConfig,
    #[serde(default)]
    pub push: PushConfig,
    /// Peering with other carriers (DESIGN.md section 7); absent: every address is local.
    pub interconnect: Option<interconnect::config::InterconnectConfig>,
}

/// Waking devices through the push proxy (DESIGN.md section 6). Without `proxy_url`, no
/// pushes are sent (devices must keep a live receiver).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    /// The push proxy's notify listener, e.g. `https://push-proxy.internal:8451`.
    pub proxy_url: Option<String>,
    /// CA of the push proxy's server certificate (PEM).
    pub ca: Option<PathBuf>,
    /// This gateway's client certificate chain and key for mutual TLS (PEM).
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// At most one background push per device per window.
    #[serde(default = "d_push_window")]
    pub window_secs: u64,
    /// Push this long after a live receiver disconnects with envelopes pending.
    #[serde(default = "d_push_delay")]
    pub disconnect_delay_secs: u64,
    /// Push events waiting for the notifier; beyond it they are dropped (and counted), never
    /// delaying a send.
    #[serde(default = "d_push_queue")]
    pub queue: usize,
    /// Notifications per request to the push proxy.
    #[serde(default = "d_push_batch")]
    pub batch: usize,
}

impl Default for PushConfig {
    fn default() -> Self {
        toml::from_str("").expect("every push setting has a default")
    }
}

const fn d_push_window() -> u64 {
    20 * 60
}
const fn d_push_delay() -> u64 {
    60
}
const fn d_push_queue() -> usize {
    65_536
}
const fn d_push_batch() -> usize {
    100
}

/// MLS Delivery Service policy (DESIGN.md section 5).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlsConfig {
    /// Allowed ciphersuites (RFC 9420 section 17.1 code points). Default: the three
    /// mandatory-to-implement-style suites 0x0001, 0x0002, 0x0003.
    #[serde(default = "d_suites")]
    pub ciphersuites: Vec<u16>,
    /// A basic credential's identity must be the uploading device's own address.
    #[serde(default = "d_true")]
    pub identity_must_match: bool,
    #[serde(default = "d_kp_per_upload")]
    pub max_key_packages_per_upload: usize,
    #[serde(default = "d_kp_per_device")]
    pub max_key_packages_per_device: usize,
    /// Application messages more than this many epochs behind the group are refused.
    #[serde(default = "d_epoch_window")]
    pub application_epoch_window: u64,
    /// KeyPackage claims per (requester, target): burst, then one per `claim_refill_secs`.
    #[serde(default = "d_claim_burst")]
    pub claim_burst: u32,
    #[serde(default = "d_claim_refill")]
    pub claim_refill_secs: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain. Without `cert` and `key`, a development CA and
    /// certificate are generated in `data_dir/tls/` on first run.
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, SEC1 or PKCS#1).
    pub key: Option<PathBuf>,
    /// Extra DNS names for the generated development certificate.
    #[serde(default)]
    pub dev_cert_names: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    #[serde(default = "d_envelope")]
    pub max_envelope_bytes: usize,
    #[serde(default = "d_recipients")]
    pub max_recipients: usize,
    #[serde(default = "d_devices")]
    pub max_devices_per_address: usize,
    #[serde(default = "d_queue")]
    pub max_queue_bytes_per_device: u64,
    #[serde(default = "d_ttl")]
    pub ttl_secs: u64,
    #[serde(default = "d_page")]
    pub max_page: u32,
    #[serde(default = "d_wait")]
    pub max_wait_secs: u32,
    /// Concurrent TLS connections on the client listener.
    #[serde(default = "d_connections")]
    pub max_connections: usize,
    /// Concurrent HTTP/2 streams per connection.
    #[serde(default = "d_streams")]
    pub max_concurrent_streams: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Sustained requests per second per device credential.
    #[serde(default = "d_rps")]
    pub requests_per_second: u32,
    /// Burst per device credential.
    #[serde(default = "d_burst")]
    pub burst: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsConfig {
    #[serde(default = "d_10")]
    pub tls_handshake_secs: u64,
    /// Time from TLS handshake to the first request (HTTP/2 preface and settings included).
    #[serde(default = "d_10")]
    pub first_request_secs: u64,
    #[serde(default = "d_10")]
    pub header_read_secs: u64,
    #[serde(default = "d_30")]
    pub body_read_secs: u64,
    /// Handler time limit, on top of a long-poll's `wait`.
    #[serde(default = "d_30")]
    pub request_secs: u64,
    /// How long shutdown waits for in-flight requests.
    #[serde(default = "d_10")]
    pub shutdown_grace_secs: u64,
    /// Idle HTTP/2 connections are pinged at this interval and closed if silent.
    #[serde(default = "d_30")]
    pub keepalive_secs: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrationConfig {
    /// Ed25519 public key (32 raw bytes, or a file written by the gateway) that verifies
    /// provisioning tokens. Default: `data_dir/keys/provisioning.pub`, generated with its
    /// signing key on first run (development).
    pub provisioning_public_key: Option<PathBuf>,
    /// Registration without a provisioning token. Refused unless every listener is on
    /// loopback: it lets anyone claim any number.
    #[serde(default)]
    pub danger_open_registration: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    #[serde(default = "d_cache")]
    pub cache_capacity_mb: u64,
    /// Interval of the TTL sweeper.
    #[serde(default = "d_sweep")]
    pub sweep_interval_secs: u64,
}

/// HTTP/3 (QUIC) on the client listener's port number, UDP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http3Config {
    #[serde(default = "d_true")]
    pub enabled: bool,
    /// Connections idle this long are closed.
    #[serde(default = "d_30")]
    pub idle_timeout_secs: u64,
    /// QUIC handshakes in progress before new ones are refused.
    #[serde(default = "d_pending")]
    pub max_pending_handshakes: usize,
    /// Above this many open connections, unvalidated clients get a Retry first.
    /// Default: half of `limits.max_connections`.
    pub retry_above_connections: Option<usize>,
    /// UDP socket send and receive buffer size.
    #[serde(default = "d_udp_buffer")]
    pub udp_buffer_bytes: usize,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// JSON lines instead of human-readable logs.
    #[serde(default)]
    pub json: bool,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./relay-data")
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8443))
}
fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}
fn d_envelope() -> usize {
    Limits::default().max_envelope_bytes
}
fn d_recipients() -> usize {
    Limits::default().max_recipients
}
fn d_devices() -> usize {
    Limits::default().max_devices_per_address
}
fn d_queue() -> u64 {
    Limits::default().max_queue_bytes_per_device
}
fn d_ttl() -> u64 {
    Limits::default().ttl_ms / 1000
}
fn d_page() -> u32 {
    Limits::default().max_page
}
fn d_wait() -> u32 {
    Limits::default().max_wait_secs
}
fn d_connections() -> usize {
    10_000
}
fn d_streams() -> u32 {
    256
}
fn d_rps() -> u32 {
    100
}
fn d_burst() -> u32 {
    200
}
fn d_10() -> u64 {
    10
}
fn d_30() -> u64 {
    30
}
fn d_suites() -> Vec<u16> {
    vec![1, 2, 3]
}
fn d_kp_per_upload() -> usize {
    100
}
fn d_kp_per_device() -> usize {
    200
}
fn d_epoch_window() -> u64 {
    5
}
fn d_claim_burst() -> u32 {
    6
}
fn d_claim_refill() -> u64 {
    600
}
fn d_true() -> bool {
    true
}
fn d_pending() -> usize {
    1024
}
fn d_udp_buffer() -> usize {
    4 << 20
}
fn d_cache() -> u64 {
    256
}
fn d_sweep() -> u64 {
    60
}

impl Default for Config {
    fn default() -> Self {
        toml::from_str("").expect("the empty config is valid: every field has a default")
    }
}
impl Default for LimitsConfig {
    fn default() -> Self {
        toml::from_str("").expect("every field has a default")
    }
}
impl Default for RateLimitConfig {
    fn default() -> Self {
        toml::from_str("").expect("every field has a default")
    }
}
impl Default for TimeoutsConfig {
    fn default() -> Self {
        toml::from_str("").expect("every field has a default")
    }
}
impl Default for Http3Config {
    fn default() -> Self {
        toml::from_str("").expect("every field has a default")
    }
}
impl Default for MlsConfig {
    fn default() -> Self {
        toml::from_str("").expect("every field has a default")
    }
}
impl Default for StorageConfig {
    fn default() -> Self {
        toml::from_str("").expect("every field has a default")
    }
}

/// A configuration problem; the binary prints it and exits 64.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {cause}")]
    Read { path: PathBuf, cause: std::io::Error },
    #[error("parsing {path}: {cause}")]
    Parse { path: PathBuf, cause: Box<toml::de::Error> },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Command-line overrides of the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
}

impl Config {
    /// Parses a configuration from TOML text (no I/O, for tests and `deploy/` checks).
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_path_buf(),
            cause: Box::new(e),
        })
    }

    /// Reads `path` (if any), applies `overrides`, and validates.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Settings, ConfigError> {
        let mut config = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|cause| ConfigError::Read {
                    path: p.to_path_buf(),
                    cause,
                })?;
                Self::from_toml(&text, p)?
            }
            None => Self::default(),
        };
        if let Some(d) = &overrides.data_dir {
            config.data_dir.clone_from(d);
        }
        if let Some(l) = overrides.listen {
            config.listen = l;
        }
        if let Some(l) = overrides.admin_listen {
            config.admin_listen = l;
        }
        config.validate()
    }

    /// Checks cross-field rules and produces typed settings.
    pub fn validate(self) -> Result<Settings, ConfigError> {
        let l = &self.limits;
        let invalid = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if l.max_envelope_bytes == 0 || l.max_envelope_bytes > 16 << 20 {
            return invalid("limits.max_envelope_bytes must be between 1 and 16 MiB");
        }
        if l.max_queue_bytes_per_device < l.max_envelope_bytes as u64 {
            return invalid("limits.max_queue_bytes_per_device must hold at least one envelope");
        }
        if l.max_recipients == 0 || l.max_devices_per_address == 0 || l.max_page == 0 {
            return invalid("limits must be positive");
        }
        if l.max_connections == 0 || l.max_concurrent_streams == 0 {
            return invalid("limits.max_connections and max_concurrent_streams must be positive");
        }
        if l.ttl_secs == 0 {
            return invalid("limits.ttl_secs must be positive");
        }
        if self.http3.idle_timeout_secs == 0 || self.http3.max_pending_handshakes == 0 {
            return invalid("http3.idle_timeout_secs and http3.max_pending_handshakes must be positive");
        }
        if self.mls.claim_burst == 0 || self.mls.claim_refill_secs == 0 || self.mls.max_key_packages_per_upload == 0 {
            return invalid(
                "mls.claim_burst, mls.claim_refill_secs and mls.max_key_packages_per_upload must be positive",
            );
        }
        if self.rate_limit.requests_per_second == 0 || self.rate_limit.burst == 0 {
            return invalid("rate_limit values must be positive");
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return invalid("tls.cert and tls.key go together");
        }
        if self.registration.danger_open_registration
            && !(self.listen.ip().is_loopback() && self.admin_listen.ip().is_loopback())
        {
            return invalid("registration.danger_open_registration is only allowed when every listener is on loopback");
        }
        let limits = Limits {
            max_envelope_bytes: l.max_envelope_bytes,
            max_recipients: l.max_recipients,
            max_devices_per_address: l.max_devices_per_address,
            max_queue_bytes_per_device: l.max_queue_bytes_per_device,
            ttl_ms: l.ttl_secs.saturating_mul(1000),
            max_page: l.max_page,
            max_wait_secs: l.max_wait_secs,
        };
        let t = &self.timeouts;
        let timeouts = Timeouts {
            tls_handshake: Duration::from_secs(t.tls_handshake_secs),
            first_request: Duration::from_secs(t.first_request_secs),
            header_read: Duration::from_secs(t.header_read_secs),
            body_read: Duration::from_secs(t.body_read_secs),
            request: Duration::from_secs(t.request_secs),
            shutdown_grace: Duration::from_secs(t.shutdown_grace_secs),
            keepalive: Duration::from_secs(t.keepalive_secs.max(1)),
        };
        let p = &self.push;
        if let Some(url) = &p.proxy_url {
            if !url.starts_with("https://") {
                return invalid("push.proxy_url must be https://");
            }
            if p.ca.is_none() || p.client_cert.is_none() || p.client_key.is_none() {
                return invalid("push.proxy_url needs push.ca, push.client_cert and push.client_key (mutual TLS)");
            }
        }
        if p.queue == 0 || p.batch == 0 {
            return invalid("push.queue and push.batch must be positive");
        }
        Ok(Settings {
            limits,
            timeouts,
            config: self,
        })
    }
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config: Config,
    pub limits: Limits,
    pub timeouts: Timeouts,
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub tls_handshake: Duration,
    pub first_request: Duration,
    pub header_read: Duration,
    pub body_read: Duration,
    pub request: Duration,
    pub shutdown_grace: Duration,
    pub keepalive: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Settings, ConfigError> {
        Config::from_toml(text, Path::new("test.toml"))?.validate()
    }

    #[test]
    fn empty_file_gives_defaults() {
        let s = load("").unwrap();
        assert_eq!(s.limits, Limits::default());
        assert!(s.config.listen.ip().is_loopback());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        assert!(matches!(load("listn = \"1.2.3.4:1\""), Err(ConfigError::Parse { .. })));
        assert!(matches!(
            load("[limits]\nmax_recipents = 3"),
            Err(ConfigError::Parse { .. })
        ));
        assert!(matches!(load("listen = \"nonsense\""), Err(ConfigError::Parse { .. })));
        assert!(matches!(load("[tls]\ncert = \"a.pem\""), Err(ConfigError::Invalid(_))));
        assert!(matches!(
            load("[limits]\nmax_envelope_bytes = 0"),
            Err(ConfigError::Invalid(_))
        ));
    }

    #[test]
    fn open_registration_only_on_loopback() {
        assert!(load("[registration]\ndanger_open_registration = true").is_ok());
        let public = "listen = \"0.0.0.0:8443\"\n[registration]\ndanger_open_registration = true";
        assert!(matches!(load(public), Err(ConfigError::Invalid(_))));
    }
}
