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

pub mod schedule;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse, CertificateIdentifier, ChallengeType,
    HttpClient, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::ClientHello;
use rustls::sign::CertifiedKey;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub use instant_acme::RevocationReason;

/// The ALPN protocol of `tls-alpn-01` validation connections (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

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
fn err(stage: Stage) -> impl FnOnce(instant_acme::Error) -> AcmeError {
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

const NO_ANSWER: &str = "no answer from the ACME server in time";

/// The error with its sources (instant-acme wraps connection errors twice).
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
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

/// The validator's questions and our answers, while an order is open.
#[derive(Debug, Default)]
pub struct Challenges {
    tls_alpn: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    http01: RwLock<HashMap<String, String>>,
}

impl Challenges {
    /// The `tls-alpn-01` certificate for `server_name`, for a ClientHello offering
    /// `acme-tls/1` (see [`is_validation_hello`]).
    pub fn tls_alpn_certificate(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let name = server_name?.to_ascii_lowercase();
        self.tls_alpn
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&name)
            .cloned()
    }

    /// The key authorization for an `http-01` token.
    pub fn http01_answer(&self, token: &str) -> Option<String> {
        self.http01
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            .cloned()
    }

    fn publish_tls_alpn(&self, domain: &str, digest: &[u8]) -> Result<(), AcmeError> {
        let fail = |e: rcgen::Error| AcmeError {
            stage: Stage::Challenge,
            message: format!("building the tls-alpn-01 certificate: {e}"),
        };
        let key = rcgen::KeyPair::generate().map_err(fail)?;
        let mut params = rcgen::CertificateParams::new(vec![domain.to_owned()]).map_err(fail)?;
        params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
        let cert = params.self_signed(&key).map_err(fail)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        // `CertifiedKey::from_der` would parse the certificate with webpki, which refuses
        // the critical acmeIdentifier extension; the key is ours, so no check is needed.
        let signing_key = provider()
            .key_provider
            .load_private_key(key_der)
            .map_err(|e| AcmeError {
                stage: Stage::Challenge,
                message: format!("tls-alpn-01 key: {e}"),
            })?;
        let certified = CertifiedKey::new(vec![cert.der().clone()], signing_key);
        self.tls_alpn
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(domain.to_ascii_lowercase(), Arc::new(certified));
        Ok(())
    }

    fn publish_http01(&self, token: &str, key_authorization: &str) {
        self.http01
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token.to_owned(), key_authorization.to_owned());
    }

    fn clear(&self) {
        self.tls_alpn.write().unwrap_or_else(|e| e.into_inner()).clear();
        self.http01.write().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// Whether a ClientHello is an ACME validator's (it offers `acme-tls/1`).
pub fn is_validation_hello(hello: &ClientHello<'_>) -> bool {
    hello
        .alpn()
        .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN))
}

fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Answers `GET /.well-known/acme-challenge/{token}` on `listener` until `shutdown`; every
/// other request gets 404. Plain HTTP/1.1, as RFC 8555 section 8.3 requires.
pub async fn serve_http01(listener: tokio::net::TcpListener, challenges: Arc<Challenges>, shutdown: CancellationToken) {
    use hyper::service::service_fn;
    while let Some((tcp, _)) = crate::serve::accept(&listener, &shutdown).await {
        let challenges = Arc::clone(&challenges);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let answer = req
                    .uri()
                    .path()
                    .strip_prefix("/.well-known/acme-challenge/")
                    .and_then(|token| challenges.http01_answer(token));
                async move {
                    match answer {
                        Some(a) => http::Response::builder()
                            .header(http::header::CONTENT_TYPE, "application/octet-stream")
                            .body(Full::new(Bytes::from(a))),
                        None => http::Response::builder()
                            .status(http::StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::new())),
                    }
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service);
            crate::serve::until_shutdown(conn, &shutdown).await;
        });
    }
}

/// A new certificate: the chain (leaf first) and its fresh private key, both PEM.
pub struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued").finish_non_exhaustive()
    }
}

/// An HTTP client for the CA whose every exchange ends within a bound.
struct BoundedHttp {
    inner: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        BodyWrapper<Bytes>,
    >,
    timeout: Duration,
}

impl HttpClient for BoundedHttp {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let fut = self.inner.request(req);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, fut).await {
                Ok(Ok(rsp)) => Ok(BytesResponse::from(rsp)),
                Ok(Err(e)) => Err(instant_acme::Error::Other(Box::new(e))),
                Err(_) => Err(instant_acme::Error::Str(NO_ANSWER)),
            }
        })
    }
}

/// One service's ACME account and orders.
pub struct AcmeClient {
    config: AcmeConfig,
    account_file: PathBuf,
    challenges: Arc<Challenges>,
    account: tokio::sync::Mutex<Option<Account>>,
}

impl std::fmt::Debug for AcmeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeClient")
            .field("directory", &self.config.directory)
            .field("domains", &self.config.domains)
            .finish_non_exhaustive()
    }
}

impl AcmeClient {
    /// `account_file`: where the account credentials (its private key) are kept, 0600.
    pub fn new(config: AcmeConfig, account_file: PathBuf, challenges: Arc<Challenges>) -> Self {
        Self {
            config,
            account_file,
            challenges,
            account: tokio::sync::Mutex::new(None),
        }
    }

    pub fn config(&self) -> &AcmeConfig {
        &self.config
    }

    fn http(&self) -> Result<Box<dyn HttpClient>, AcmeError> {
        let fail = |message: String| AcmeError {
            stage: Stage::Directory,
            message,
        };
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| fail(e.to_string()))?;
        let tls = match &self.config.ca_file {
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in crate::pem::load_certs(path).map_err(|e| fail(e.to_string()))? {
                    roots.add(c).map_err(|e| fail(format!("{}: {e}", path.display())))?;
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            None => {
                use hyper_rustls::ConfigBuilderExt as _;
                builder
                    .with_native_roots()
                    .map_err(|e| fail(format!("system roots: {e}")))?
                    .with_no_client_auth()
            }
        };
        let mut tcp = hyper_util::client::legacy::connect::HttpConnector::new();
        tcp.set_connect_timeout(Some(Duration::from_secs(10)));
        tcp.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .enable_http2()
            .wrap_connector(tcp);
        let inner = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
        Ok(Box::new(BoundedHttp {
            inner,
            timeout: Duration::from_secs(30),
        }))
    }

    /// The account: the stored one, or a new one (stored before use). `fresh` forgets the
    /// stored one (the CA no longer knows it).
    async fn account(&self, fresh: bool) -> Result<Account, AcmeError> {
        let mut slot = self.account.lock().await;
        if !fresh && let Some(a) = slot.as_ref() {
            return Ok(a.clone());
        }
        let stored = if fresh {
            None
        } else {
            match std::fs::read(&self.account_file) {
                Ok(bytes) => Some(
                    serde_json::from_slice::<AccountCredentials>(&bytes).map_err(|e| AcmeError {
                        stage: Stage::Account,
                        message: format!("{}: {e}", self.account_file.display()),
                    })?,
                ),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => {
                    return Err(AcmeError {
                        stage: Stage::Account,
                        message: format!("{}: {e}", self.account_file.display()),
                    });
                }
            }
        };
        let account = match stored {
            Some(credentials) => Account::builder_with_http(self.http()?)
                .from_credentials(credentials)
                .await
                .map_err(|e| self.directory_error(e))?,
            None => {
                let contact: Vec<&str> = self.config.contact.iter().map(String::as_str).collect();
                // Fetching the directory is the first request: its failure is "directory".
                let (account, credentials) = Account::builder_with_http(self.http()?)
                    .create(
                        &NewAccount {
                            contact: &contact,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        self.config.directory.clone(),
                        None,
                    )
                    .await
                    .map_err(|e| match e {
                        instant_acme::Error::Api(_) => err(Stage::Account)(e),
                        _ => self.directory_error(e),
                    })?;
                let json = serde_json::to_vec(&credentials).map_err(|e| AcmeError {
                    stage: Stage::Account,
                    message: e.to_string(),
                })?;
                write_private_atomic(&self.account_file, &json).map_err(|e| AcmeError {
                    stage: Stage::Account,
                    message: format!("{}: {e}", self.account_file.display()),
                })?;
                tracing::info!(account = account.id(), "ACME account created");
                account
            }
        };
        *slot = Some(account.clone());
        Ok(account)
    }

    fn directory_error(&self, e: instant_acme::Error) -> AcmeError {
        err(Stage::Directory)(e)
    }

    /// Names the CA in what went wrong talking to it.
    fn locate(&self, mut e: AcmeError) -> AcmeError {
        if matches!(e.stage, Stage::Unreachable | Stage::Directory | Stage::Timeout) {
            e.message = format!("{}: {}", self.config.directory, e.message);
        }
        e
    }

    /// Obtains a certificate for the configured names with a new private key.
    pub async fn issue(&self) -> Result<Issued, AcmeError> {
        let timeout = Duration::from_secs(self.config.timeout_secs);
        let result = match tokio::time::timeout(timeout, self.issue_inner()).await {
            Ok(r) => r,
            Err(_) => Err(AcmeError {
                stage: Stage::Timeout,
                message: format!("no certificate within {timeout:?}"),
            }),
        };
        self.challenges.clear();
        result.map_err(|e| self.locate(e))
    }

    async fn issue_inner(&self) -> Result<Issued, AcmeError> {
        let identifiers: Vec<Identifier> = self.config.domains.iter().cloned().map(Identifier::Dns).collect();
        let mut account = self.account(false).await?;
        let mut order = match account.new_order(&NewOrder::new(&identifiers)).await {
            Ok(o) => o,
            Err(instant_acme::Error::Api(p)) if p.r#type.as_deref().is_some_and(is_unknown_account) => {
                tracing::warn!("the ACME server no longer knows our account; creating a new one");
                account = self.account(true).await?;
                account
                    .new_order(&NewOrder::new(&identifiers))
                    .await
                    .map_err(err(Stage::Order))?
            }
            Err(e) => return Err(err(Stage::Order)(e)),
        };
        let kind = match self.config.challenge {
            ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
            ChallengeKind::Http01 => ChallengeType::Http01,
        };
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(err(Stage::Order))?;
            match authz.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                other => {
                    return Err(AcmeError {
                        stage: Stage::Challenge,
                        message: format!("authorization is {other:?}"),
                    });
                }
            }
            let mut challenge = authz.challenge(kind.clone()).ok_or_else(|| AcmeError {
                stage: Stage::Challenge,
                message: format!("the CA offers no {kind:?} challenge"),
            })?;
            let key_authorization = challenge.key_authorization();
            match kind {
                ChallengeType::TlsAlpn01 => {
                    let domain = challenge.identifier().to_string();
                    self.challenges
                        .publish_tls_alpn(&domain, key_authorization.digest().as_ref())?;
                }
                _ => self
                    .challenges
                    .publish_http01(&challenge.token, key_authorization.as_str()),
            }
            challenge.set_ready().await.map_err(err(Stage::Challenge))?;
        }
        let retry = RetryPolicy::new()
            .initial_delay(Duration::from_millis(100))
            .backoff(1.5)
            .timeout(Duration::from_secs(self.config.timeout_secs));
        let status = order.poll_ready(&retry).await.map_err(err(Stage::Challenge))?;
        if status != OrderStatus::Ready {
            return Err(AcmeError {
                stage: Stage::Challenge,
                message: format!("order is {status:?} after validation"),
            });
        }
        let key = rcgen::KeyPair::generate().map_err(|e| AcmeError {
            stage: Stage::Finalize,
            message: e.to_string(),
        })?;
        let mut params = rcgen::CertificateParams::new(self.config.domains.clone()).map_err(|e| AcmeError {
            stage: Stage::Finalize,
            message: e.to_string(),
        })?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params.serialize_request(&key).map_err(|e| AcmeError {
            stage: Stage::Finalize,
            message: e.to_string(),
        })?;
        order.finalize_csr(csr.der()).await.map_err(err(Stage::Finalize))?;
        let chain_pem = order.poll_certificate(&retry).await.map_err(err(Stage::Certificate))?;
        Ok(Issued {
            chain_pem,
            key_pem: key.serialize_pem(),
        })
    }

    /// Asks the CA to revoke `leaf`.
    pub async fn revoke(&self, leaf: &CertificateDer<'_>, reason: RevocationReason) -> Result<(), AcmeError> {
        let account = self.account(false).await.map_err(|e| self.locate(e))?;
        let request = instant_acme::RevocationRequest {
            certificate: leaf,
            reason: Some(reason),
        };
        let result =
            match tokio::time::timeout(Duration::from_secs(self.config.timeout_secs), account.revoke(&request)).await {
                Ok(r) => r.map_err(err(Stage::Revoke)),
                Err(_) => Err(AcmeError {
                    stage: Stage::Timeout,
                    message: "no answer to the revocation in time".into(),
                }),
            };
        result.map_err(|e| self.locate(e))
    }

    /// The CA's suggested renewal window for `leaf` (RFC 9773), if it offers one.
    pub async fn renewal_window(&self, leaf: &CertificateDer<'_>) -> Option<(SystemTime, SystemTime)> {
        let account = self.account(false).await.ok()?;
        let id = CertificateIdentifier::try_from(leaf).ok()?;
        match account.renewal_info(&id).await {
            Ok((info, _)) => {
                let w = info.suggested_window;
                let to_system = |t: time::OffsetDateTime| {
                    SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t.unix_timestamp()).unwrap_or(0))
                };
                Some((to_system(w.start), to_system(w.end)))
            }
            Err(instant_acme::Error::Unsupported(_)) => None,
            Err(e) => {
                tracing::debug!(cause = %describe(&e), "no renewal information from the ACME server");
                None
            }
        }
    }
}

fn is_unknown_account(problem_type: &str) -> bool {
    problem_type.ends_with(":accountDoesNotExist")
}

/// Writes `bytes` to `path` readable by the owner only, atomically (temporary file, fsync,
/// rename, directory fsync): a crash leaves the old file or the new one.
pub fn write_private_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic(path, bytes, 0o600)
}

/// [`write_private_atomic`] with the given mode.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Where a [`Manager`] puts what it obtains: the service's certificate store.
pub trait CertSink: Send + Sync + 'static {
    /// Stores the new chain and key durably, then serves them to new connections.
    fn install(&self, issued: &Issued) -> Result<(), String>;
    /// The leaf certificate being served, if any.
    fn leaf(&self) -> Option<CertificateDer<'static>>;
}

/// What an operator command produced.
#[derive(Debug, Clone)]
pub struct Renewed {
    /// Serial of the new certificate (lowercase hex).
    pub serial: String,
    /// Its `notAfter`, seconds since the Unix epoch.
    pub not_after: i64,
    /// Serial of the certificate revoked before, for a revocation.
    pub revoked_serial: Option<String>,
}

/// The state the admin API reports.
#[derive(Debug, Clone)]
pub struct Status {
    pub serial: Option<String>,
    pub not_after: Option<i64>,
    /// When the next renewal is due (seconds since the Unix epoch).
    pub renew_at: Option<i64>,
    /// Failed attempts since the last success.
    pub failures: u32,
    pub last_error: Option<String>,
}

enum Command {
    Renew(oneshot::Sender<Result<Renewed, AcmeError>>),
    Revoke(RevocationReason, oneshot::Sender<Result<Renewed, AcmeError>>),
    Status(oneshot::Sender<Status>),
}

/// Sends operator commands to a running [`Manager`]; cheap to clone.
#[derive(Debug, Clone)]
pub struct AcmeHandle {
    tx: mpsc::Sender<Command>,
}

impl AcmeHandle {
    /// Renews now, whatever the schedule says.
    pub async fn renew_now(&self) -> Result<Renewed, AcmeError> {
        self.ask(Command::Renew).await?
    }

    /// Revokes the certificate being served, then obtains one with a new key.
    pub async fn revoke(&self, reason: RevocationReason) -> Result<Renewed, AcmeError> {
        self.ask(|tx| Command::Revoke(reason, tx)).await?
    }

    pub async fn status(&self) -> Result<Status, AcmeError> {
        self.ask(Command::Status).await
    }

    async fn ask<T>(&self, command: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, AcmeError> {
        let gone = || AcmeError {
            stage: Stage::Install,
            message: "the certificate manager has stopped".into(),
        };
        let (tx, rx) = oneshot::channel();
        self.tx.send(command(tx)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }
}

/// The longest single sleep: the schedule is re-read at least this often (clock changes).
const MAX_SLEEP: Duration = Duration::from_secs(6 * 3600);

/// Keeps one listener's certificate current.
pub struct Manager {
    client: AcmeClient,
    sink: Arc<dyn CertSink>,
    listener: &'static str,
    backoff: schedule::Backoff,
    rx: mpsc::Receiver<Command>,
    last_error: Option<String>,
    /// A failed attempt (scheduled or an operator's) is retried with backoff, whatever the
    /// schedule says, until one succeeds.
    retry_pending: bool,
    jitter: f64,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

impl Manager {
    /// `listener`: the metric label (`client`, `device`).
    pub fn new(client: AcmeClient, sink: Arc<dyn CertSink>, listener: &'static str) -> (Self, AcmeHandle) {
        for stage in [
            Stage::Unreachable,
            Stage::Directory,
            Stage::Account,
            Stage::Order,
            Stage::Challenge,
            Stage::Finalize,
            Stage::Certificate,
            Stage::Revoke,
            Stage::Install,
            Stage::Timeout,
        ] {
            metrics::counter!("relay_acme_failures_total", "listener" => listener, "reason" => stage.as_str())
                .increment(0);
        }
        metrics::counter!("relay_acme_renewals_total", "listener" => listener).increment(0);
        let backoff = schedule::Backoff::new(
            Duration::from_secs(client.config.retry_min_secs),
            Duration::from_secs(client.config.retry_max_secs),
        );
        let (tx, rx) = mpsc::channel(8);
        let jitter = f64::from(rand_u16()) / f64::from(u16::MAX);
        (
            Self {
                client,
                sink,
                listener,
                backoff,
                rx,
                last_error: None,
                retry_pending: false,
                jitter,
            },
            AcmeHandle { tx },
        )
    }

    /// Obtains the first certificate when none is served yet (start-up). One attempt: a
    /// service that cannot get a certificate at first start should say so and stop.
    pub async fn obtain_initial(&mut self) -> Result<(), AcmeError> {
        if self.sink.leaf().is_some() {
            return Ok(());
        }
        let started = Instant::now();
        self.renew().await?;
        tracing::info!(
            listener = self.listener,
            secs = format!("{:.2}", started.elapsed().as_secs_f64()),
            "ACME certificate obtained"
        );
        Ok(())
    }

    /// Renews on schedule and runs commands until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut next = self.next_attempt().await;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep_until(next.into()) => {
                    next = if self.retry_pending || self.due().await {
                        let r = self.renew().await;
                        self.attempt(r).await
                    } else {
                        self.next_attempt().await
                    };
                }
                Some(command) = self.rx.recv() => match command {
                    Command::Renew(reply) => {
                        let r = self.renew().await;
                        next = self.attempt(r.clone()).await;
                        let _ = reply.send(r);
                    }
                    Command::Revoke(reason, reply) => {
                        let r = self.revoke_and_reissue(reason).await;
                        next = match r {
                            // A revocation that did not happen is the operator's to retry:
                            // renewing would take the certificate they want revoked out of
                            // service, unrevoked.
                            Err((_, false)) => self.next_attempt().await,
                            ref r => self.attempt(r.clone().map_err(|(e, _)| e)).await,
                        };
                        let _ = reply.send(r.map_err(|(e, _)| e));
                    }
                    Command::Status(reply) => {
                        let _ = reply.send(self.status(next).await);
                    }
                },
            }
        }
    }

    /// When to try next after an attempt that ended with `result`.
    async fn attempt(&mut self, result: Result<Renewed, AcmeError>) -> Instant {
        match result {
            Ok(_) => {
                self.retry_pending = false;
                self.next_attempt().await
            }
            Err(_) => {
                self.retry_pending = true;
                Instant::now() + self.backoff.failed()
            }
        }
    }

    async fn status(&self, next: Instant) -> Status {
        let leaf = self.sink.leaf();
        let info = leaf.as_ref().and_then(cert_info);
        let wait = next.saturating_duration_since(Instant::now());
        Status {
            serial: info.as_ref().map(|i| i.serial.clone()),
            not_after: info.as_ref().map(|i| i.not_after),
            renew_at: Some(crate::clock::unix_secs() as i64 + wait.as_secs() as i64),
            failures: self.backoff.failures(),
            last_error: self.last_error.clone(),
        }
    }

    /// When the schedule says to renew the served certificate (now, without one).
    async fn renew_time(&self) -> SystemTime {
        let Some(leaf) = self.sink.leaf() else {
            return SystemTime::now();
        };
        let Some(info) = cert_info(&leaf) else {
            return SystemTime::now();
        };
        let window = self.client.renewal_window(&leaf).await;
        schedule::renew_at(
            unix(info.not_before),
            unix(info.not_after),
            self.client.config.renew_after,
            window,
            self.jitter,
        )
    }

    async fn due(&self) -> bool {
        self.renew_time().await <= SystemTime::now()
    }

    async fn next_attempt(&self) -> Instant {
        let wait = self
            .renew_time()
            .await
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        Instant::now() + wait.min(MAX_SLEEP)
    }

    async fn renew(&mut self) -> Result<Renewed, AcmeError> {
        let result = match self.client.issue().await {
            Ok(issued) => self
                .sink
                .install(&issued)
                .map_err(|message| AcmeError {
                    stage: Stage::Install,
                    message,
                })
                .and_then(|()| {
                    self.sink.leaf().as_ref().and_then(cert_info).ok_or_else(|| AcmeError {
                        stage: Stage::Install,
                        message: "the installed certificate does not parse".into(),
                    })
                }),
            Err(e) => Err(e),
        };
        match result {
            Ok(info) => {
                self.backoff.succeeded();
                self.last_error = None;
                metrics::counter!("relay_acme_renewals_total", "listener" => self.listener).increment(1);
                tracing::info!(
                    listener = self.listener,
                    serial = %info.serial,
                    not_after = info.not_after,
                    "ACME certificate installed"
                );
                Ok(Renewed {
                    serial: info.serial,
                    not_after: info.not_after,
                    revoked_serial: None,
                })
            }
            Err(e) => {
                self.fail(&e);
                Err(e)
            }
        }
    }

    fn fail(&mut self, e: &AcmeError) {
        metrics::counter!("relay_acme_failures_total", "listener" => self.listener, "reason" => e.stage.as_str())
            .increment(1);
        tracing::warn!(
            listener = self.listener,
            reason = e.stage.as_str(),
            cause = %e.message,
            "ACME renewal failed; the current certificate stays in service"
        );
        self.last_error = Some(e.to_string());
    }

    /// On error, also whether the revocation itself went through.
    async fn revoke_and_reissue(&mut self, reason: RevocationReason) -> Result<Renewed, (AcmeError, bool)> {
        let leaf = self.sink.leaf().ok_or_else(|| {
            let e = AcmeError {
                stage: Stage::Revoke,
                message: "no certificate is being served".into(),
            };
            (e, false)
        })?;
        let old = cert_info(&leaf).map(|i| i.serial);
        if let Err(e) = self.client.revoke(&leaf, reason).await {
            self.fail(&e);
            return Err((e, false));
        }
        tracing::warn!(listener = self.listener, serial = ?old, "ACME certificate revoked; reissuing with a new key");
        let mut renewed = self.renew().await.map_err(|e| (e, true))?;
        renewed.revoked_serial = old;
        Ok(renewed)
    }
}

fn unix(secs: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

fn rand_u16() -> u16 {
    // Jitter only needs to differ between gateways: the low bits of the clock and the pid.
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    (nanos ^ std::process::id().rotate_left(16)) as u16
}

/// What the manager needs from a certificate.
#[derive(Debug, Clone)]
pub struct CertInfo {
    /// Lowercase hex of the serial number's bytes.
    pub serial: String,
    pub not_before: i64,
    pub not_after: i64,
}

/// Serial and validity of a DER certificate.
pub fn cert_info(cert: &CertificateDer<'_>) -> Option<CertInfo> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let serial = parsed
        .tbs_certificate
        .raw_serial()
        .iter()
        .skip_while(|b| **b == 0)
        .map(|b| format!("{b:02x}"))
        .collect();
    Some(CertInfo {
        serial,
        not_before: parsed.validity().not_before.timestamp(),
        not_after: parsed.validity().not_after.timestamp(),
    })
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
