//! Push proxy configuration: one TOML file (unknown keys are errors), validated at start-up.
//!
//! With no file at all it runs for development: loopback listeners, a generated development
//! PKI in `data_dir/tls/` (server certificate, and a client certificate a local gateway uses
//! for the mutual-TLS notify listener), generated handle and VAPID keys in `data_dir/keys/`,
//! and no APNs/FCM credentials (pushes to those platforms are rejected and counted).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "d_data_dir")]
    pub data_dir: PathBuf,
    /// Device-facing listener (TLS): token registration.
    #[serde(default = "d_listen")]
    pub listen: SocketAddr,
    /// Gateway-facing listener (mutual TLS): notify.
    #[serde(default = "d_notify_listen")]
    pub notify_listen: SocketAddr,
    /// `/metrics` and `/healthz`, plain HTTP: loopback unless you mean it.
    #[serde(default = "d_admin_listen")]
    pub admin_listen: SocketAddr,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub handles: HandlesConfig,
    #[serde(default)]
    pub delivery: DeliveryConfig,
    #[serde(default)]
    pub registration: RegistrationConfig,
    pub apns: Option<ApnsSection>,
    pub fcm: Option<FcmSection>,
    #[serde(default)]
    pub webpush: WebPushSection,
    #[serde(default)]
    pub log: LogConfig,
    /// Where the handle keys are held: files (default) or sealed by a PKCS#11 token.
    #[serde(default)]
    pub keys: relay_keys::KeysConfig,
    /// The device listener's certificate from an ACME CA (RFC 8555) instead of `tls.cert`
    /// (the notify listener, internal, keeps `tls.cert` or the development PKI).
    pub acme: Option<relay_net::acme::AcmeConfig>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Server certificate chain and key (PEM) for both listeners; generated if absent.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// CA that issues the gateways' client certificates; the generated development CA if absent.
    pub gateway_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlesConfig {
    /// Key id that seals new handles; `data_dir/keys/handle-<id>.key` (32 bytes) is created
    /// on first use. Every `handle-*.key` present still opens handles (rotation: add a key,
    /// make it current, remove the old one once its handles are re-registered).
    #[serde(default = "d_key_id")]
    pub current_key_id: u8,
}

impl Default for HandlesConfig {
    fn default() -> Self {
        Self {
            current_key_id: d_key_id(),
        }
    }
}

/// Token registrations per client IP (the device-facing listener is public).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrationConfig {
    #[serde(default = "d_reg_rate")]
    pub per_ip_per_second: u32,
    #[serde(default = "d_reg_burst")]
    pub per_ip_burst: u32,
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        Self {
            per_ip_per_second: d_reg_rate(),
            per_ip_burst: d_reg_burst(),
        }
    }
}

const fn d_reg_rate() -> u32 {
    5
}
const fn d_reg_burst() -> u32 {
    20
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// PEM bundle of CAs trusted for provider endpoints.
    #[serde(default = "d_ca_file")]
    pub ca_file: PathBuf,
    /// How long providers keep an undelivered push.
    #[serde(default = "d_ttl")]
    pub ttl_secs: u64,
    #[serde(default = "d_in_flight")]
    pub max_in_flight_per_provider: usize,
    /// Pushes queued or in flight; beyond it notifications are shed (and counted).
    #[serde(default = "d_queue")]
    pub queue: usize,
    #[serde(default = "d_timeout")]
    pub request_timeout_secs: u64,
    #[serde(default = "d_attempts")]
    pub max_attempts: u32,
    #[serde(default = "d_backoff_base")]
    pub backoff_base_ms: u64,
    #[serde(default = "d_backoff_cap")]
    pub backoff_cap_secs: u64,
    /// A notify request waits this long for outcomes before answering (dead handles found
    /// later are answered on the handle's next notify).
    #[serde(default = "d_notify_wait")]
    pub notify_wait_ms: u64,
    /// Notifications per notify request.
    #[serde(default = "d_batch")]
    pub max_batch: usize,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        toml::from_str("").expect("every delivery setting has a default")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApnsSection {
    #[serde(default = "d_apns_url")]
    pub base_url: String,
    /// The app's bundle id.
    pub topic: String,
    pub team_id: String,
    pub key_id: String,
    /// The `.p8` signing key from Apple (PKCS#8 PEM, P-256).
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FcmSection {
    #[serde(default = "d_fcm_url")]
    pub base_url: String,
    /// Google service-account JSON (`project_id`, `client_email`, `private_key`, `token_uri`).
    pub service_account_file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebPushSection {
    /// VAPID signing key (PKCS#8 PEM, P-256); generated in `data_dir/keys/vapid.pem` if absent.
    pub vapid_key_file: Option<PathBuf>,
    /// Operator contact in VAPID tokens.
    #[serde(default = "d_subject")]
    pub subject: String,
    /// Hosts a Web Push / UnifiedPush endpoint may point at: exact names, or `.suffix` for
    /// a domain and its subdomains. Anything else is refused at registration (no SSRF).
    #[serde(default = "d_allowed_hosts")]
    pub allowed_hosts: Vec<String>,
}

impl Default for WebPushSection {
    fn default() -> Self {
        toml::from_str("").expect("every webpush setting has a default")
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub json: bool,
}

fn d_data_dir() -> PathBuf {
    PathBuf::from("push-data")
}
fn d_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8450))
}
fn d_notify_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8451))
}
fn d_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9451))
}
const fn d_key_id() -> u8 {
    1
}
fn d_ca_file() -> PathBuf {
    PathBuf::from("/etc/ssl/certs/ca-certificates.crt")
}
const fn d_ttl() -> u64 {
    7 * 24 * 3600
}
const fn d_in_flight() -> usize {
    256
}
const fn d_queue() -> usize {
    100_000
}
const fn d_timeout() -> u64 {
    10
}
const fn d_attempts() -> u32 {
    6
}
const fn d_backoff_base() -> u64 {
    500
}
const fn d_backoff_cap() -> u64 {
    300
}
const fn d_notify_wait() -> u64 {
    2000
}
const fn d_batch() -> usize {
    500
}
fn d_apns_url() -> String {
    "https://api.push.apple.com".into()
}
fn d_fcm_url() -> String {
    "https://fcm.googleapis.com".into()
}
fn d_subject() -> String {
    "mailto:push-admin@localhost".into()
}
fn d_allowed_hosts() -> Vec<String> {
    [
        ".push.services.mozilla.com",
        "fcm.googleapis.com",
        ".notify.windows.com",
        "web.push.apple.com",
    ]
    .map(String::from)
    .to_vec()
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {cause}")]
    Read { path: PathBuf, cause: std::io::Error },
    #[error("{path}: {cause}")]
    Parse { path: PathBuf, cause: toml::de::Error },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Default for Config {
    fn default() -> Self {
        toml::from_str("").expect("every setting has a default")
    }
}

impl Config {
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let config = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|cause| ConfigError::Read {
                    path: p.to_path_buf(),
                    cause,
                })?;
                toml::from_str(&text).map_err(|cause| ConfigError::Parse {
                    path: p.to_path_buf(),
                    cause,
                })?
            }
            None => Self::default(),
        };
        config.validate()
    }

    pub fn validate(self) -> Result<Self, ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if let Some(acme) = &self.acme {
            acme.validate().map_err(ConfigError::Invalid)?;
        }
        let d = &self.delivery;
        if d.queue == 0 || d.max_in_flight_per_provider == 0 || d.max_batch == 0 || d.max_attempts == 0 {
            return invalid("delivery.queue, max_in_flight_per_provider, max_batch and max_attempts must be positive");
        }
        if d.ttl_secs == 0 || d.request_timeout_secs == 0 {
            return invalid("delivery.ttl_secs and request_timeout_secs must be positive");
        }
        if self.registration.per_ip_per_second == 0 || self.registration.per_ip_burst == 0 {
            return invalid("registration.per_ip_per_second and per_ip_burst must be positive");
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return invalid("tls.cert and tls.key go together");
        }
        let https = |u: &str| u.starts_with("https://");
        if self.apns.as_ref().is_some_and(|a| !https(&a.base_url))
            || self.fcm.as_ref().is_some_and(|f| !https(&f.base_url))
        {
            return invalid("provider base URLs must be https://");
        }
        if !(self.webpush.subject.starts_with("mailto:") || self.webpush.subject.starts_with("https://")) {
            return invalid("webpush.subject must be a mailto: or https: URI (RFC 8292)");
        }
        Ok(self)
    }

    pub const fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.delivery.request_timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deploy_example_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/push-proxy.toml");
        let c = Config::load(Some(&path)).unwrap();
        assert_eq!(c.handles.current_key_id, 2);
        assert!(c.apns.is_some() && c.fcm.is_some());
    }

    #[test]
    fn defaults_and_errors() {
        let c = Config::default().validate().unwrap();
        assert!(c.listen.ip().is_loopback() && c.notify_listen.ip().is_loopback());
        assert!(toml::from_str::<Config>("lisen = \"1.2.3.4:5\"").is_err());
        let bad: Config = toml::from_str("[delivery]\nqueue = 0").unwrap();
        assert!(bad.validate().is_err());
        let bad: Config = toml::from_str("[webpush]\nsubject = \"ops\"").unwrap();
        assert!(bad.validate().is_err());
        let bad: Config = toml::from_str(
            "[apns]\nbase_url = \"http://x\"\ntopic = \"t\"\nteam_id = \"T\"\nkey_id = \"K\"\nkey_file = \"k\"",
        )
        .unwrap();
        assert!(bad.validate().is_err());
    }
}
