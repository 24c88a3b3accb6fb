//! One service's ACME account, orders and revocations (instant-acme over a bounded HTTP
//! client), and the atomic private files they are kept in.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse, CertificateIdentifier, ChallengeType,
    HttpClient, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rustls::pki_types::CertificateDer;

use super::challenge::provider;
use super::*;

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
