//! Loading and validation: the file, command-line overrides, cross-field rules, and the
//! typed [`Settings`] the gateway runs with.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use relay_core::Limits;

use super::Config;

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
        if self.admin.operator_listen.is_some() != self.admin.operator_ca.is_some() {
            return invalid("admin.operator_listen and admin.operator_ca go together");
        }
        if l.max_envelope_bytes == 0 || l.max_envelope_bytes > 16 << 20 {
            return invalid("limits.max_envelope_bytes must be between 1 and 16 MiB");
        }
        if l.max_queue_bytes_per_device < l.max_envelope_bytes as u64 {
            return invalid("limits.max_queue_bytes_per_device must hold at least one envelope");
        }
        if l.max_recipients == 0 || l.max_devices_per_address == 0 || l.max_page == 0 {
            return invalid("limits must be positive");
        }
        if l.max_connections == 0 || l.max_concurrent_streams == 0 || l.max_connections_per_address == 0 {
            return invalid(
                "limits.max_connections, max_connections_per_address and max_concurrent_streams must be positive",
            );
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
        let r = &self.rate_limit;
        if [
            u64::from(r.requests_per_second),
            u64::from(r.burst),
            r.sender_recipient_burst,
            r.sender_recipient_per_second,
            r.recipient_bytes_burst,
            r.recipient_bytes_per_second,
            r.failed_auth_burst,
            r.failed_auth_refill_secs,
            r.registration_burst,
            r.registration_refill_secs,
        ]
        .contains(&0)
        {
            return invalid("rate_limit values must be positive");
        }
        if r.recipient_bytes_burst < self.limits.max_envelope_bytes as u64 {
            return invalid("rate_limit.recipient_bytes_burst must hold at least one envelope");
        }
        if r.sender_queue_share_percent > 100 {
            return invalid("rate_limit.sender_queue_share_percent is a percentage (0 turns it off)");
        }
        if r.sender_queue_share_percent > 0
            && self.limits.max_queue_bytes_per_device / 100 * u64::from(r.sender_queue_share_percent)
                < self.limits.max_envelope_bytes as u64
        {
            return invalid(
                "rate_limit.sender_queue_share_percent of limits.max_queue_bytes_per_device must hold at least one envelope",
            );
        }
        match (self.storage.backend, &self.storage.postgres) {
            (crate::config::BackendKind::Postgres, None) => {
                return invalid("storage.backend = \"postgres\" needs [storage.postgres] with its url");
            }
            (crate::config::BackendKind::Sled, Some(_)) => {
                return invalid("[storage.postgres] is set but storage.backend is \"sled\"");
            }
            (_, Some(pg)) if pg.pool_size == 0 || pg.statement_timeout_ms == 0 || pg.outbox_lease_secs == 0 => {
                return invalid(
                    "storage.postgres.pool_size, statement_timeout_ms and outbox_lease_secs must be positive",
                );
            }
            _ => {}
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return invalid("tls.cert and tls.key go together");
        }
        if let Some(acme) = &self.acme {
            acme.validate().map_err(ConfigError::Invalid)?;
            if self.tls.cert.is_some() {
                return invalid("tls.cert/tls.key and [acme] exclude each other: choose one source of certificates");
            }
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

    /// The commented `[acme]` example of deploy/gateway.toml, uncommented, is a valid
    /// configuration (and `[tls]` beside it is refused).
    #[test]
    fn the_deploy_acme_example_parses() {
        let text = include_str!("../../../deploy/gateway.toml");
        let block: String = text
            .lines()
            .skip_while(|l| !l.starts_with("# [acme]"))
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(block.starts_with("[acme]\n") && block.contains("domains"), "{block}");
        let s = load(&block).unwrap();
        let acme = s.config.acme.unwrap();
        assert_eq!(acme.domains, ["relay.carrier-a.example"]);
        assert_eq!(acme.challenge, relay_net::acme::ChallengeKind::TlsAlpn01);
        let both = format!("[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n{block}");
        assert!(load(&both).unwrap_err().to_string().contains("exclude each other"));
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
