//! Certificates from an ACME CA (RFC 8555): issuance, background renewal, revocation.
//!
//! The pieces, from the outside in:
//! - [`AcmeConfig`]: the `[acme]` table a service embeds in its configuration.
//! - [`Challenges`]: the answers a CA's validator asks for — a `tls-alpn-01` certificate
//!   (RFC 8737) the service's certificate resolver returns for a ClientHello offering
//!   `acme-tls/1`, or an `http-01` key authorization [`serve_http01`] answers.
//! - [`AcmeClient`]: one issuance or revocation against the CA (instant-acme), with the
//!   account credentials kept in a 0600 file of the service's key directory.
//! - [`Manager`]: the background task. It renews when [`schedule::renew_at`] says (ACME
//!   Renewal Information where the CA offers it, else two thirds into the lifetime), retries
//!   failures with [`schedule::Backoff`], and takes operator commands through an
//!   [`AcmeHandle`]. A failed renewal never touches the certificate being served.
//!
//! The service owns the certificate store: it implements [`CertSink`] (write the new
//! chain and key durably, then swap), so open connections keep their certificate and new
//! ones get the new one.
//!
//! Metrics: `relay_acme_renewals_total{listener}`, `relay_acme_failures_total{listener,
//! reason}` (`reason` is the [`Stage`] that failed), and the service's own
//! `*_cert_expiry_seconds{listener}` gauge, which moves when a certificate is installed.

pub mod admin;
pub mod schedule;

mod challenge;
mod client;
mod manager;

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

pub use challenge::{Challenges, is_validation_hello, serve_http01};
pub use client::{AcmeClient, Issued, write_atomic, write_private_atomic};
pub use instant_acme::RevocationReason;
pub use manager::{AcmeHandle, CertInfo, CertSink, Manager, Renewed, Status, cert_info};

/// The revocation reasons an operator may give, by their RFC 5280 / RFC 8555 names.
pub const REVOCATION_REASONS: [&str; 5] = [
    "unspecified",
    "keyCompromise",
    "affiliationChanged",
    "superseded",
    "cessationOfOperation",
];

/// A revocation reason from its name (one of [`REVOCATION_REASONS`]).
pub fn revocation_reason(name: &str) -> Option<RevocationReason> {
    Some(match name {
        "unspecified" => RevocationReason::Unspecified,
        "keyCompromise" => RevocationReason::KeyCompromise,
        "affiliationChanged" => RevocationReason::AffiliationChanged,
        "superseded" => RevocationReason::Superseded,
        "cessationOfOperation" => RevocationReason::CessationOfOperation,
        _ => return None,
    })
}

/// The ALPN protocol of `tls-alpn-01` validation connections (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// A TLS listener's ALPN list: `base`, plus `acme-tls/1` when `acme` validates with
/// `tls-alpn-01` on that listener.
pub fn alpn(acme: Option<&AcmeConfig>, base: &[&'static [u8]]) -> Vec<&'static [u8]> {
    let mut alpn = base.to_vec();
    if acme.is_some_and(|a| a.challenge == ChallengeKind::TlsAlpn01) {
        alpn.push(ACME_TLS_ALPN);
    }
    alpn
}

/// The `[acme]` configuration table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// The CA's directory URL, e.g. `https://acme-v02.api.letsencrypt.org/directory`.
    pub directory: String,
    /// Account contacts, e.g. `mailto:pki@carrier.example`.
    #[serde(default)]
    pub contact: Vec<String>,
    /// The DNS names the certificate is for (at least one).
    #[serde(default)]
    pub domains: Vec<String>,
    /// How the CA validates control of the names.
    #[serde(default)]
    pub challenge: ChallengeKind,
    /// For `http-01`: where to answer `/.well-known/acme-challenge/` (port 80 in production).
    pub http01_listen: Option<SocketAddr>,
    /// PEM roots to trust for the directory (test CAs); default: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Without renewal information from the CA, renew after this part of the lifetime.
    #[serde(default = "d_renew_after")]
    pub renew_after: f64,
    /// First wait after a failed attempt; doubles up to `retry_max_secs`.
    #[serde(default = "d_retry_min")]
    pub retry_min_secs: u64,
    #[serde(default = "d_retry_max")]
    pub retry_max_secs: u64,
    /// One whole issuance (order, validation, finalization, download) must end within this.
    #[serde(default = "d_timeout")]
    pub timeout_secs: u64,
}

fn d_renew_after() -> f64 {
    schedule::DEFAULT_RENEW_AFTER
}
fn d_retry_min() -> u64 {
    30
}
fn d_retry_max() -> u64 {
    3600
}
fn d_timeout() -> u64 {
    120
}

/// The challenge type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum ChallengeKind {
    /// Answered on the TLS listener itself (port 443): no other port needed.
    #[default]
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    /// Answered by a plain HTTP listener (`http01_listen`, port 80).
    #[serde(rename = "http-01")]
    Http01,
}

impl AcmeConfig {
    /// Checks what can be checked without the network.
    pub fn validate(&self) -> Result<(), String> {
        if !self.directory.starts_with("https://") {
            return Err(format!(
                "acme.directory must be an https:// URL, not {:?}",
                self.directory
            ));
        }
        if self.domains.is_empty() {
            return Err("acme.domains: name at least one DNS name for the certificate".into());
        }
        for d in &self.domains {
            let ok = d.len() <= 253
                && d.contains('.')
                && d.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                });
            if !ok {
                return Err(format!("acme.domains: {d:?} is not a fully qualified DNS name"));
            }
        }
        if self.challenge == ChallengeKind::Http01 && self.http01_listen.is_none() {
            return Err("acme.challenge = \"http-01\" needs acme.http01_listen (e.g. \"0.0.0.0:80\")".into());
        }
        if !(self.renew_after > 0.0 && self.renew_after < 1.0) {
            return Err(format!(
                "acme.renew_after must be between 0 and 1, not {}",
                self.renew_after
            ));
        }
        if self.retry_min_secs == 0 || self.timeout_secs == 0 {
            return Err("acme.retry_min_secs and acme.timeout_secs must be positive".into());
        }
        Ok(())
    }
}

/// Which step of an ACME exchange failed (the `reason` label of the failure counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// No answer from the CA (connection refused, TLS failure, timeout of one exchange).
    Unreachable,
    /// The directory answered but not with a usable directory.
    Directory,
    Account,
    Order,
    Challenge,
    Finalize,
    Certificate,
    Revoke,
    Install,
    Timeout,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unreachable => "unreachable",
            Self::Directory => "directory",
            Self::Account => "account",
            Self::Order => "order",
            Self::Challenge => "challenge",
            Self::Finalize => "finalize",
            Self::Certificate => "certificate",
            Self::Revoke => "revoke",
            Self::Install => "install",
            Self::Timeout => "timeout",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An ACME exchange that did not produce a certificate (or a revocation).
#[derive(Debug, Clone, thiserror::Error)]
#[error("ACME {stage} failed: {message}")]
pub struct AcmeError {
    pub stage: Stage,
    pub message: String,
}

/// `stage` failed with `e`; an exchange that got no answer from the CA is `Unreachable`,
/// whatever the stage.
pub(crate) fn err(stage: Stage) -> impl FnOnce(instant_acme::Error) -> AcmeError {
    move |e| {
        let unreachable = matches!(
            e,
            instant_acme::Error::Hyper(_) | instant_acme::Error::Other(_) | instant_acme::Error::Str(NO_ANSWER)
        );
        AcmeError {
            stage: if unreachable { Stage::Unreachable } else { stage },
            message: describe(&e),
        }
    }
}

pub(crate) const NO_ANSWER: &str = "no answer from the ACME server in time";

/// The error with its sources (instant-acme wraps connection errors twice).
pub(crate) fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let c_s = c.to_string();
        if !s.contains(&c_s) {
            s.push_str(": ");
            s.push_str(&c_s);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AcmeConfig {
        toml_config("directory = \"https://ca.example/dir\"\ndomains = [\"relay.example.net\"]\n").unwrap()
    }

    fn toml_config(s: &str) -> Result<AcmeConfig, String> {
        toml::from_str::<AcmeConfig>(s).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_tls_alpn_and_two_thirds() {
        let c = config();
        assert_eq!(c.challenge, ChallengeKind::TlsAlpn01);
        assert!((c.renew_after - 2.0 / 3.0).abs() < 1e-9);
        c.validate().unwrap();
    }

    #[test]
    fn bad_configurations_are_refused_with_the_key_named() {
        let with = |f: &dyn Fn(&mut AcmeConfig)| {
            let mut c = config();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert!(with(&|c| c.domains.clear()).contains("acme.domains"));
        assert!(with(&|c| c.domains = vec!["localhost".into()]).contains("fully qualified"));
        assert!(with(&|c| c.domains = vec!["bad_name.example".into()]).contains("fully qualified"));
        assert!(with(&|c| c.directory = "http://ca.example/dir".into()).contains("https://"));
        assert!(with(&|c| c.challenge = ChallengeKind::Http01).contains("http01_listen"));
        assert!(with(&|c| c.renew_after = 1.0).contains("renew_after"));
        assert!(
            toml_config("directory = \"https://x.example/d\"\nchallenge = \"dns-01\"\n")
                .unwrap_err()
                .contains("unknown variant")
        );
    }

    #[test]
    fn validation_hellos_get_the_challenge_certificate_for_their_name_only() {
        let c = Challenges::default();
        c.publish_tls_alpn("Relay.Example.net", &[7u8; 32]).unwrap();
        assert!(c.tls_alpn_certificate(Some("relay.example.net")).is_some());
        assert!(c.tls_alpn_certificate(Some("other.example.net")).is_none());
        assert!(c.tls_alpn_certificate(None).is_none());
        c.publish_http01("tok", "tok.thumb");
        assert_eq!(c.http01_answer("tok").as_deref(), Some("tok.thumb"));
        assert_eq!(c.http01_answer("other"), None);
        c.clear();
        assert!(c.tls_alpn_certificate(Some("relay.example.net")).is_none());
        assert_eq!(c.http01_answer("tok"), None);
    }

    #[test]
    fn the_challenge_certificate_carries_the_acme_identifier() {
        let c = Challenges::default();
        let digest = [0xabu8; 32];
        c.publish_tls_alpn("relay.example.net", &digest).unwrap();
        let cert = c.tls_alpn_certificate(Some("relay.example.net")).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.cert[0].as_ref()).unwrap();
        // id-pe-acmeIdentifier (1.3.6.1.5.5.7.1.31), critical, OCTET STRING of the digest.
        let ext = parsed
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier extension");
        assert!(ext.critical);
        assert_eq!(ext.value, [&[0x04, 0x20][..], &digest[..]].concat());
    }

    #[test]
    fn atomic_private_files_are_0600_and_replace_whole() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/acct.json");
        write_private_atomic(&path, b"one").unwrap();
        write_private_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!path.with_extension("tmp").exists());
    }
}
