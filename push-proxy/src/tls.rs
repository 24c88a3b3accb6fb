//! TLS for the two listeners, and the development PKI.
//!
//! Both listeners speak TLS 1.3 only. The notify listener requires a client certificate
//! issued by `tls.gateway_ca` (rustls `WebPkiClientVerifier`): only gateways may ask for
//! pushes. Without configured certificates, `data_dir/tls/` gets a development CA, a server
//! certificate for localhost, and `gateway-client.pem`/`gateway-client-key.pem` for a local
//! gateway.

use std::path::Path;
use std::sync::Arc;

use relay_net::certs::CertStore;
use relay_net::pem::{load_certs, load_key};
use relay_net::tls::provider;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;

use crate::config::Config;
use crate::error::SetupError;

pub const DEV_CA: &str = "dev-ca.pem";
pub const GATEWAY_CLIENT_CERT: &str = "gateway-client.pem";
pub const GATEWAY_CLIENT_KEY: &str = "gateway-client-key.pem";

/// The device listener's certificate store (ACME, or the same files as the notify listener).
pub fn device_certs(config: &Config) -> Result<Arc<CertStore>, SetupError> {
    const METRIC: &str = "push_cert_expiry_seconds";
    if config.acme.is_some() {
        let dir = config.data_dir.join("acme").join("device");
        std::fs::create_dir_all(&dir).map_err(SetupError::io(&dir))?;
        return Ok(CertStore::for_acme(&dir, METRIC, "device"));
    }
    let (cert, key) = server_files(config)?;
    Ok(CertStore::from_files(&cert, &key, METRIC, "device")?)
}

fn server_files(config: &Config) -> Result<(std::path::PathBuf, std::path::PathBuf), SetupError> {
    let dir = config.data_dir.join("tls");
    Ok(match (&config.tls.cert, &config.tls.key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => {
            ensure_dev_pki(&dir)?;
            (dir.join("dev-cert.pem"), dir.join("dev-key.pem"))
        }
    })
}

/// (device listener, notify listener) server configurations; the device listener resolves
/// its certificate through `device` (reloads and ACME renewals).
pub fn server_configs(
    config: &Config,
    device: &Arc<CertStore>,
) -> Result<(Arc<ServerConfig>, Arc<ServerConfig>), SetupError> {
    let dir = config.data_dir.join("tls");
    let (cert, key) = server_files(config)?;
    let gateway_ca = match &config.tls.gateway_ca {
        Some(ca) => ca.clone(),
        None => {
            ensure_dev_pki(&dir)?;
            dir.join(DEV_CA)
        }
    };
    let chain = load_certs(&cert)?;
    let tls = |context| move |source| SetupError::Tls { context, source };
    let builder = || {
        ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls("TLS 1.3 with the ring provider"))
    };
    let alpn = relay_net::acme::alpn(config.acme.as_ref(), &[b"h2", b"http/1.1"]);
    let device = device.server_config(&alpn).map_err(tls("device listener"))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(&gateway_ca)? {
        roots.add(c).map_err(tls("gateway CA"))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| SetupError::Tls {
            context: "gateway CA",
            source: rustls::Error::General(e.to_string()),
        })?;
    let mut notify = builder()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, load_key(&key)?)
        .map_err(tls("server certificate"))?;
    notify.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(device), Arc::new(notify)))
}

/// Creates the development CA, server certificate and gateway client certificate.
pub fn ensure_dev_pki(dir: &Path) -> Result<(), SetupError> {
    if dir.join(GATEWAY_CLIENT_KEY).exists() {
        return Ok(());
    }
    let err = SetupError::DevPki;
    std::fs::create_dir_all(dir).map_err(SetupError::io(dir))?;
    let ca_key = rcgen::KeyPair::generate().map_err(err)?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "rcs-relay push proxy development CA");
    ca.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
    let issuer = rcgen::Issuer::new(ca, ca_key);

    let server_key = rcgen::KeyPair::generate().map_err(err)?;
    let mut server =
        rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into(), "::1".into()]).map_err(err)?;
    server.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server.signed_by(&server_key, &issuer).map_err(err)?;

    let client_key = rcgen::KeyPair::generate().map_err(err)?;
    let mut client = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    client
        .distinguished_name
        .push(rcgen::DnType::CommonName, "rcs-relay development gateway");
    client.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client.signed_by(&client_key, &issuer).map_err(err)?;

    let write = |name: &str, data: String, secret: bool| -> Result<(), SetupError> {
        let path = dir.join(name);
        crate::keys::write_file(&path, data.as_bytes(), secret)
    };
    write(DEV_CA, ca_cert.pem(), false)?;
    write("dev-cert.pem", server_cert.pem(), false)?;
    write("dev-key.pem", server_key.serialize_pem(), true)?;
    write(GATEWAY_CLIENT_CERT, client_cert.pem(), false)?;
    write(GATEWAY_CLIENT_KEY, client_key.serialize_pem(), true)
}
