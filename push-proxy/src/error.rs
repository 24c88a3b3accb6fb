//! Typed errors of the push proxy: start-up ([`SetupError`], printed by `main` before it
//! exits), compact JWS ([`JwtError`]), VAPID headers ([`VapidError`]) and provider
//! exchanges outside a push ([`ProviderError`]: the UnifiedPush probe, the FCM token grant).

use std::net::SocketAddr;
use std::path::PathBuf;

use relay_net::https::ExchangeError;
use relay_net::pem::PemError;

/// The proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Key { path: PathBuf, reason: &'static str },
    #[error("push handle keys: {0}")]
    Keys(#[from] relay_keys::KeyError),
    #[error("current push handle key {0} is not configured")]
    NoCurrentKey(u8),
    #[error("{}: {reason}", path.display())]
    ServiceAccount { path: PathBuf, reason: String },
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error("{context}: {source}")]
    Tls {
        context: &'static str,
        #[source]
        source: rustls::Error,
    },
    #[error("development PKI: {0}")]
    DevPki(#[from] rcgen::Error),
    #[error("no certificate for the device listener: {0}")]
    Acme(#[from] relay_net::acme::AcmeError),
    #[error(transparent)]
    Cert(#[from] relay_net::certs::CertError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl SetupError {
    pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A compact JWS that does not verify or could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("a JWT has three parts")]
    Parts,
    #[error("JWT part is not base64url")]
    NotBase64,
    #[error("JWT part is not JSON")]
    NotJson,
    #[error("alg is not {0}")]
    Alg(&'static str),
    #[error("bad signature encoding")]
    SignatureEncoding,
    #[error("signature does not verify")]
    BadSignature,
    #[error("signing failed")]
    Sign,
}

/// A VAPID `Authorization` header a push service would refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VapidError {
    #[error("not a vapid authorization")]
    Scheme,
    #[error("no {0}= parameter")]
    Missing(&'static str),
    #[error("k is not a base64url P-256 key")]
    Key,
    #[error("token: {0}")]
    Jwt(#[from] JwtError),
    #[error("aud is not the push service's origin")]
    Audience,
    #[error("exp outside (now, now + 24 h]")]
    Expiry,
    #[error("sub must be a mailto: or https: URI")]
    Subject,
}

/// An exchange with a provider endpoint outside a push.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error(transparent)]
    Exchange(#[from] ExchangeError),
    #[error("answered {0}")]
    Status(u16),
    #[error("answer is not JSON")]
    NotJson,
    #[error("not a UnifiedPush endpoint")]
    NotUnifiedPush,
    #[error("no access_token in the answer")]
    NoAccessToken,
    #[error("signing the grant: {0}")]
    Sign(#[from] JwtError),
    #[error("bad request: {0}")]
    Request(String),
}
