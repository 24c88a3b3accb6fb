//! Gateway configuration: one TOML file, with a few command-line overrides.
//!
//! Everything is parsed into typed values at start-up ([`Settings`]); an invalid file
//! is reported and the process exits 64 (`EX_USAGE`). Unknown keys are errors, so a
//! typo never silently falls back to a default.

use std::net::SocketAddr;
use std::path::PathBuf;

use relay_core::Limits;
use serde::Deserialize;

mod operations;
pub use operations::{AdminConfig, AuditConfig};

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
    pub audit: AuditConfig,
    /// Where the provider keys are held: files (default) or a PKCS#11 token.
    #[serde(default)]
    pub keys: relay_keys::KeysConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub http3: Http3Config,
    #[serde(default)]
    pub mls: MlsConfig,
    #[serde(default)]
    pub push: PushConfig,
    /// Peering with other carriers (DESIGN.md section 7); absent: every address is local.
    pub interconnect: Option<interconnect::config::InterconnectConfig>,
    /// The client listener's certificate from an ACME CA (RFC 8555) instead of `[tls]` files.
    pub acme: Option<relay_net::acme::AcmeConfig>,
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
    /// Concurrent connections (TCP and QUIC together) from one source address (an IPv6
    /// /64); beyond it new ones are refused (`relay_connections_refused_total{reason="per_address"}`).
    #[serde(default = "d_connections_per_address")]
    pub max_connections_per_address: u32,
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
    /// Messages from one sender to one recipient address: burst, then per second
    /// (429 `sender_recipient_limited`).
    #[serde(default = "d_pair_burst")]
    pub sender_recipient_burst: u64,
    #[serde(default = "d_1")]
    pub sender_recipient_per_second: u64,
    /// Bytes into one recipient address from every sender together: burst, then per second
    /// (429 `recipient_inbound_limited`).
    #[serde(default = "d_inbound_burst")]
    pub recipient_bytes_burst: u64,
    #[serde(default = "d_inbound_rate")]
    pub recipient_bytes_per_second: u64,
    /// Failed authentications from one source address (an IPv6 /64): burst, then one more
    /// every `failed_auth_refill_secs`. Beyond it, every request from there gets 429
    /// `too_many_failed_auth` before any storage read.
    #[serde(default = "d_auth_burst")]
    pub failed_auth_burst: u64,
    #[serde(default = "d_auth_refill")]
    pub failed_auth_refill_secs: u64,
    /// Registrations from one source address: burst, then one more every
    /// `registration_refill_secs` (429 `registration_rate_limited`).
    #[serde(default = "d_reg_burst")]
    pub registration_burst: u64,
    #[serde(default = "d_reg_refill")]
    pub registration_refill_secs: u64,
    /// The most of a recipient device's queue (`limits.max_queue_bytes_per_device`) one
    /// sender may fill within an envelope lifetime, in percent (0: no share limit). Its bytes
    /// to one recipient: this share of the queue at once, refilled at the same share per
    /// `limits.ttl_secs`, so within any lifetime one sender holds at most twice the share — at
    /// 25%, half a queue: one sender alone can never fill a queue and so never trims anyone
    /// else's envelopes (429 `sender_share_exceeded`).
    #[serde(default = "d_share")]
    pub sender_queue_share_percent: u32,
}

/// The shapes of the limits keyed by what an attacker can mint (`[rate_limit]`).
#[derive(Debug, Clone, Copy)]
pub struct AbuseLimits {
    pub sender_recipient: relay_core::gcra::Rate,
    /// Bytes from one sender to one recipient (the queue share); `None`: no share limit.
    pub sender_share: Option<relay_core::gcra::Rate>,
    pub recipient_bytes: relay_core::gcra::Rate,
    pub failed_auth: relay_core::gcra::Rate,
    pub registrations: relay_core::gcra::Rate,
}

impl RateLimitConfig {
    /// The shapes of the limits keyed by what an attacker can mint.
    /// `queue_bytes` and `ttl_secs` are the device queue quota and the envelope lifetime.
    pub fn abuse_limits(&self, queue_bytes: u64, ttl_secs: u64) -> AbuseLimits {
        use relay_core::gcra::Rate;
        use std::time::Duration;
        let share = queue_bytes / 100 * u64::from(self.sender_queue_share_percent.min(100));
        AbuseLimits {
            sender_recipient: Rate::per_second(self.sender_recipient_burst, self.sender_recipient_per_second),
            sender_share: (self.sender_queue_share_percent > 0)
                .then(|| Rate::per_second(share, (share / ttl_secs.max(1)).max(1))),
            recipient_bytes: Rate::per_second(self.recipient_bytes_burst, self.recipient_bytes_per_second),
            failed_auth: Rate::every(
                self.failed_auth_burst,
                Duration::from_secs(self.failed_auth_refill_secs),
            ),
            registrations: Rate::every(
                self.registration_burst,
                Duration::from_secs(self.registration_refill_secs),
            ),
        }
    }
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
fn d_share() -> u32 {
    25
}
fn d_connections_per_address() -> u32 {
    1000
}
fn d_pair_burst() -> u64 {
    60
}
fn d_1() -> u64 {
    1
}
fn d_inbound_burst() -> u64 {
    128 << 20
}
fn d_inbound_rate() -> u64 {
    2000
}
fn d_auth_burst() -> u64 {
    30
}
fn d_auth_refill() -> u64 {
    2
}
fn d_reg_burst() -> u64 {
    20
}
fn d_reg_refill() -> u64 {
    30
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

mod settings;
mod storage;

pub use settings::{ConfigError, Overrides, Settings, Timeouts};
pub use storage::{BackendKind, PostgresSettings, StorageConfig};
