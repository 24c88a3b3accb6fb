//! TLS for the client listener: TLS 1.3 only, ALPN `h2` then `http/1.1`.
//!
//! Without configured files, a development CA and a server certificate signed by it
//! are generated in `data_dir/tls/` (`dev-ca.pem` is what clients pass as `--ca`).
//! With `[acme]`, certificates come from an ACME CA instead ([`relay_net::acme`]).
//! Both listeners resolve their certificate through one [`CertStore`], so a reload
//! (SIGHUP or `POST /admin/tls/reload`) or a renewal applies to HTTP/2 and HTTP/3 alike.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use relay_net::acme::{AcmeConfig, CertSink, Challenges, Issued};
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::TlsConfig;
use crate::keys::{create_private_dir, write_private};

/// The server certificate, shared by the TCP (HTTP/2, HTTP/1.1) and QUIC (HTTP/3)
/// listeners: both TLS configurations resolve through one `CertStore`, so
/// [`CertStore::reload`] (or a new ACME certificate) changes the certificate of both at
/// once. Connections already open keep the certificate they were established with.
///
/// With `[acme]`, the certificate lives in `data_dir/acme/client/` and may be absent until
/// the first issuance: handshakes then fail, except an ACME validator's (`acme-tls/1`),
/// which gets its `tls-alpn-01` challenge certificate.
#[derive(Debug)]
pub struct CertStore {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Option<Arc<CertifiedKey>>>,
    challenges: Arc<Challenges>,
}

impl CertStore {
    /// Loads the configured files, or the development certificate (generated if missing),
    /// or with `acme` the last certificate obtained (if any).
    pub fn open(tls: &TlsConfig, acme: Option<&AcmeConfig>, data_dir: &Path) -> anyhow::Result<Arc<Self>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (cert, key) = match (&tls.cert, &tls.key, acme) {
            (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
                anyhow::bail!("tls.cert/tls.key and [acme] exclude each other: choose one source of certificates")
            }
            (None, None, Some(_)) => {
                let dir = acme_dir(data_dir);
                create_private_dir(&data_dir.join("acme"))?;
                create_private_dir(&dir)?;
                let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
                let current = if cert.exists() {
                    match load_certified_key(&cert, &key, &provider) {
                        Ok(c) => Some(c),
                        Err(e) => {
                            tracing::warn!(cause = %format!("{e:#}"), "the stored ACME certificate is unusable; obtaining a new one");
                            None
                        }
                    }
                } else {
                    None
                };
                return Ok(Arc::new(Self {
                    cert,
                    key,
                    provider,
                    current: RwLock::new(current),
                    challenges: Arc::default(),
                }));
            }
            (Some(cert), Some(key), None) => (cert.clone(), key.clone()),
            _ => {
                let dir = data_dir.join("tls");
                ensure_dev_certificate(&dir, &tls.dev_cert_names)?;
                (dir.join("dev-cert.pem"), dir.join("dev-key.pem"))
            }
        };
        let current = load_certified_key(&cert, &key, &provider)?;
        Ok(Arc::new(Self {
            cert,
            key,
            provider,
            current: RwLock::new(Some(current)),
            challenges: Arc::default(),
        }))
    }

    /// Re-reads the certificate and key files. On error the old certificate stays.
    pub fn reload(&self) -> anyhow::Result<()> {
        let fresh = load_certified_key(&self.cert, &self.key, &self.provider)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(fresh);
        metrics::counter!("relay_tls_reloads_total").increment(1);
        tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
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
    pub fn server_config(self: &Arc<Self>, alpn: &[&[u8]]) -> anyhow::Result<ServerConfig> {
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("TLS 1.3 with the ring provider")?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if relay_net::acme::is_validation_hello(&hello) {
            return self.challenges.tls_alpn_certificate(hello.server_name());
        }
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl CertSink for CertStore {
    fn install(&self, issued: &Issued) -> Result<(), String> {
        // Parse before writing: a chain that does not load never replaces a good one.
        let certs = relay_net::pem::parse_certs(issued.chain_pem.as_bytes()).map_err(|e| e.to_string())?;
        let key = relay_net::pem::parse_key(issued.key_pem.as_bytes()).map_err(|e| e.to_string())?;
        let certified = CertifiedKey::from_der(certs.clone(), key, &self.provider)
            .map_err(|e| format!("the new certificate and key do not match: {e}"))?;
        // The key first, then the certificate: after a crash, a certificate on disk always
        // has its key (a new key with the old certificate fails to load and is reissued).
        relay_net::acme::write_private_atomic(&self.key, issued.key_pem.as_bytes())
            .and_then(|()| relay_net::acme::write_atomic(&self.cert, issued.chain_pem.as_bytes(), 0o644))
            .map_err(|e| format!("storing the certificate in {}: {e}", self.cert.display()))?;
        relay_net::pem::export_expiry("relay_cert_expiry_seconds", "client", &certs);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(certified));
        Ok(())
    }

    fn leaf(&self) -> Option<CertificateDer<'static>> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        current.as_ref().and_then(|c| c.cert.first().cloned())
    }
}

/// Where the ACME certificate and key of the client listener are kept.
pub fn acme_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("acme").join("client")
}

/// Builds a standalone server TLS configuration (benchmark baselines use this to get the
/// gateway's exact settings).
pub fn server_config(tls: &TlsConfig, data_dir: &Path, alpn: &[&[u8]]) -> anyhow::Result<Arc<ServerConfig>> {
    Ok(Arc::new(CertStore::open(tls, None, data_dir)?.server_config(alpn)?))
}

fn load_certified_key(cert: &Path, key: &Path, provider: &CryptoProvider) -> anyhow::Result<Arc<CertifiedKey>> {
    let (certs, key_der) = relay_net::pem::load_pair(cert, key)?;
    relay_net::pem::export_expiry("relay_cert_expiry_seconds", "client", &certs);
    let certified = CertifiedKey::from_der(certs, key_der, provider).with_context(|| {
        format!(
            "{} and {} do not form a usable certificate",
            cert.display(),
            key.display()
        )
    })?;
    Ok(Arc::new(certified))
}

/// Generates `dev-ca.pem`, `dev-cert.pem` and `dev-key.pem` in `dir` unless present.
pub fn ensure_dev_certificate(dir: &Path, extra_names: &[String]) -> anyhow::Result<()> {
    if dir.join("dev-cert.pem").exists() && dir.join("dev-key.pem").exists() {
        return Ok(());
    }
    create_private_dir(dir)?;
    let ca_key = rcgen::KeyPair::generate().context("generating the dev CA key")?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "rcs-relay development CA");
    ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);

    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    names.extend(extra_names.iter().cloned());
    let leaf_key = rcgen::KeyPair::generate().context("generating the dev server key")?;
    let mut leaf = rcgen::CertificateParams::new(names)?;
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "rcs-relay development server");
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;

    // The certificates are synced before the key, and the key (with the directory) last:
    // once `dev-key.pem` exists after a power loss, the certificates do too, with content.
    write_synced(&dir.join("dev-ca.pem"), ca_cert.pem().as_bytes())?;
    write_synced(&dir.join("dev-cert.pem"), leaf_cert.pem().as_bytes())?;
    write_private(&dir.join("dev-key.pem"), leaf_key.serialize_pem().as_bytes())?;
    Ok(())
}

/// Writes a public file and `fsync`s it.
fn write_synced(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}
