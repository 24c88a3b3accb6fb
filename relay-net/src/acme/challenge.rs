//! The answers to a CA's validator: `tls-alpn-01` certificates (RFC 8737) and `http-01`
//! key authorizations, published while an order is open.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::ClientHello;
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

use super::*;

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

    pub(crate) fn publish_tls_alpn(&self, domain: &str, digest: &[u8]) -> Result<(), AcmeError> {
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

    pub(crate) fn publish_http01(&self, token: &str, key_authorization: &str) {
        self.http01
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token.to_owned(), key_authorization.to_owned());
    }

    pub(crate) fn clear(&self) {
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

pub(crate) fn provider() -> CryptoProvider {
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
