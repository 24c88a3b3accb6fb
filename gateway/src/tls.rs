//! TLS for the client listener: TLS 1.3 only, ALPN `h2` then `http/1.1`.
//!
//! Without configured files, a development CA and a server certificate signed by it
//! are generated in `data_dir/tls/` (`dev-ca.pem` is what clients pass as `--ca`).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;
use crate::keys::{create_private_dir, write_private};

/// Builds the server TLS configuration from files or the development certificate.
pub fn server_config(tls: &TlsConfig, data_dir: &Path, alpn: &[&[u8]]) -> anyhow::Result<Arc<ServerConfig>> {
    let (certs, key) = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => load_pair(cert, key)?,
        _ => {
            let dir = data_dir.join("tls");
            ensure_dev_certificate(&dir, &tls.dev_cert_names)?;
            load_pair(&dir.join("dev-cert.pem"), &dir.join("dev-key.pem"))?
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with the ring provider")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("certificate and key do not match")?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

fn load_pair(cert: &Path, key: &Path) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", cert.display());
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading key {}", key.display()))?;
    Ok((certs, key))
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

    std::fs::write(dir.join("dev-ca.pem"), ca_cert.pem()).context("writing dev-ca.pem")?;
    std::fs::write(dir.join("dev-cert.pem"), leaf_cert.pem()).context("writing dev-cert.pem")?;
    write_private(&dir.join("dev-key.pem"), leaf_key.serialize_pem().as_bytes())?;
    Ok(())
}
