//! A listener's server certificate, swappable while serving: files reloaded on request, or
//! certificates installed by ACME ([`crate::acme`]).
//!
//! Every TLS configuration of a listener (TCP and QUIC alike) resolves through one
//! [`CertStore`], so a reload or a renewal changes what new handshakes get on all of them
//! at once. Connections already open keep the certificate they were established with.
//!
//! With ACME the certificate may be absent until the first issuance: handshakes then fail,
//! except an ACME validator's (`acme-tls/1`), which gets its `tls-alpn-01` certificate.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::acme::{CertSink, Challenges, Issued};
use crate::pem::PemError;

/// A certificate that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error("{} and {} do not form a usable certificate: {source}", cert.display(), key.display())]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

/// One listener's certificate (see the module documentation).
#[derive(Debug)]
pub struct CertStore {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Option<Arc<CertifiedKey>>>,
    challenges: Arc<Challenges>,
    /// The expiry gauge (`relay_cert_expiry_seconds`, `push_cert_expiry_seconds`) and its
    /// `listener` label.
    metric: &'static str,
    listener: &'static str,
}

impl CertStore {
    /// Serves the chain and key in these PEM files (reloadable).
    pub fn from_files(
        cert: &Path,
        key: &Path,
        metric: &'static str,
        listener: &'static str,
    ) -> Result<Arc<Self>, CertError> {
        let store = Self::empty(cert, key, metric, listener);
        let current = store.load()?;
        *store.current.write().unwrap_or_else(|e| e.into_inner()) = Some(current);
        Ok(Arc::new(store))
    }

    /// Serves what ACME installs in `dir` (`cert.pem`, `key.pem`): the last certificate
    /// obtained if it is there and usable, else nothing until the first issuance.
    pub fn for_acme(dir: &Path, metric: &'static str, listener: &'static str) -> Arc<Self> {
        let store = Self::empty(&dir.join("cert.pem"), &dir.join("key.pem"), metric, listener);
        if store.cert.exists() {
            match store.load() {
                Ok(c) => *store.current.write().unwrap_or_else(|e| e.into_inner()) = Some(c),
                Err(e) => {
                    tracing::warn!(listener, cause = %e, "the stored ACME certificate is unusable; obtaining a new one");
                }
            }
        }
        Arc::new(store)
    }

    fn empty(cert: &Path, key: &Path, metric: &'static str, listener: &'static str) -> Self {
        Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            provider: crate::tls::provider(),
            current: RwLock::new(None),
            challenges: Arc::default(),
            metric,
            listener,
        }
    }

    fn load(&self) -> Result<Arc<CertifiedKey>, CertError> {
        let (certs, key) = crate::pem::load_pair(&self.cert, &self.key)?;
        let certified = CertifiedKey::from_der(certs, key, &self.provider).map_err(|source| CertError::Mismatch {
            cert: self.cert.clone(),
            key: self.key.clone(),
            source,
        })?;
        crate::pem::export_expiry(self.metric, self.listener, &certified.cert);
        Ok(Arc::new(certified))
    }

    /// Re-reads the certificate and key files. On error the old certificate stays.
    pub fn reload(&self) -> Result<(), CertError> {
        let fresh = self.load()?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(fresh);
        metrics::counter!("relay_tls_reloads_total", "listener" => self.listener).increment(1);
        tracing::info!(listener = self.listener, cert = %self.cert.display(), "TLS certificate reloaded");
        Ok(())
    }

    /// Whether a certificate is being served (false only while waiting for ACME).
    pub fn has_certificate(&self) -> bool {
        self.current.read().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// The ACME validator's answers, published here while an order is open.
    pub fn challenges(&self) -> &Arc<Challenges> {
        &self.challenges
    }

    /// A TLS 1.3-only server configuration resolving through this store.
    pub fn server_config(self: &Arc<Self>, alpn: &[&[u8]]) -> Result<ServerConfig, rustls::Error> {
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }

    /// The same, requiring a client certificate that `verifier` accepts (mutual TLS).
    pub fn server_config_verifying_clients(
        self: &Arc<Self>,
        alpn: &[&[u8]],
        verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    ) -> Result<ServerConfig, rustls::Error> {
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if crate::acme::is_validation_hello(&hello) {
            return self.challenges.tls_alpn_certificate(hello.server_name());
        }
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl CertSink for CertStore {
    fn install(&self, issued: &Issued) -> Result<(), String> {
        // Parse before writing: a chain that does not load never replaces a good one.
        let certs = crate::pem::parse_certs(issued.chain_pem.as_bytes()).map_err(|e| e.to_string())?;
        let key = crate::pem::parse_key(issued.key_pem.as_bytes()).map_err(|e| e.to_string())?;
        let certified = CertifiedKey::from_der(certs, key, &self.provider)
            .map_err(|e| format!("the new certificate and key do not match: {e}"))?;
        // The key first, then the certificate: after a crash, a new key beside the old
        // certificate fails to load (and a new certificate is obtained); never the reverse.
        crate::acme::write_private_atomic(&self.key, issued.key_pem.as_bytes())
            .and_then(|()| crate::acme::write_atomic(&self.cert, issued.chain_pem.as_bytes(), 0o644))
            .map_err(|e| format!("storing the certificate in {}: {e}", self.cert.display()))?;
        crate::pem::export_expiry(self.metric, self.listener, &certified.cert);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(certified));
        Ok(())
    }

    fn leaf(&self) -> Option<CertificateDer<'static>> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        current.as_ref().and_then(|c| c.cert.first().cloned())
    }
}
