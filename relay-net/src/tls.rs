//! The one crypto provider (ring) and TLS 1.3-only client configurations.

use std::sync::Arc;

use rustls::ClientConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The workspace's only crypto provider (a tidy test bans the other one).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client's certificate chain and key, for mutual TLS.
pub type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// A TLS 1.3-only client configuration trusting exactly `roots`, presenting `identity`
/// when given (mutual TLS).
pub fn client_config(
    roots: &[CertificateDer<'static>],
    identity: Option<Identity>,
) -> Result<ClientConfig, rustls::Error> {
    let mut store = rustls::RootCertStore::empty();
    for c in roots {
        store.add(c.clone())?;
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(store);
    match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key),
        None => Ok(builder.with_no_client_auth()),
    }
}
