//! TLS for the client listener: TLS 1.3 only, ALPN `h2` then `http/1.1`.
//!
//! Without configured files, a development CA and a server certificate signed by it
//! are generated in `data_dir/tls/` (`dev-ca.pem` is what clients pass as `--ca`).
//! With `[acme]`, certificates come from an ACME CA instead ([`relay_net::acme`]).
//! Both listeners resolve their certificate through one [`CertStore`], so a reload
//! (SIGHUP or `POST /admin/tls/reload`) or a renewal applies to HTTP/2 and HTTP/3 alike.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use relay_net::acme::AcmeConfig;
use rustls::ServerConfig;

use crate::config::TlsConfig;
use crate::keys::{create_private_dir, write_private};

pub use relay_net::certs::CertStore;

/// The client listener's certificate store: the configured files, or the development
/// certificate (generated if missing), or with `acme` the last certificate obtained (if any).
pub fn open_cert_store(tls: &TlsConfig, acme: Option<&AcmeConfig>, data_dir: &Path) -> anyhow::Result<Arc<CertStore>> {
    const METRIC: &str = "relay_cert_expiry_seconds";
    match (&tls.cert, &tls.key, acme) {
        (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
            anyhow::bail!("tls.cert/tls.key and [acme] exclude each other: choose one source of certificates")
        }
        (None, None, Some(_)) => {
            create_private_dir(&data_dir.join("acme"))?;
            let dir = acme_dir(data_dir);
            create_private_dir(&dir)?;
            Ok(CertStore::for_acme(&dir, METRIC, "client"))
        }
        (Some(cert), Some(key), None) => Ok(CertStore::from_files(cert, key, METRIC, "client")?),
        _ => {
            let dir = data_dir.join("tls");
            ensure_dev_certificate(&dir, &tls.dev_cert_names)?;
            Ok(CertStore::from_files(
                &dir.join("dev-cert.pem"),
                &dir.join("dev-key.pem"),
                METRIC,
                "client",
            )?)
        }
    }
}

/// Where the ACME certificate and key of the client listener are kept.
pub fn acme_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("acme").join("client")
}

/// Builds a standalone server TLS configuration (benchmark baselines use this to get the
/// gateway's exact settings).
pub fn server_config(tls: &TlsConfig, data_dir: &Path, alpn: &[&[u8]]) -> anyhow::Result<Arc<ServerConfig>> {
    Ok(Arc::new(open_cert_store(tls, None, data_dir)?.server_config(alpn)?))
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
