//! What can go wrong setting up or reloading the interconnect, and a remote claim.

use std::path::PathBuf;

use relay_net::https::ExchangeError;
use relay_net::pem::PemError;

/// The interconnect could not be set up (at start) or reloaded (the old table stays).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{}: {source}", path.display())]
    ReadPeers {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    ParsePeers {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("{}: peer {name} is listed twice", path.display())]
    DuplicatePeer { path: PathBuf, name: String },
    #[error("peer {name}: endpoint must be https://")]
    Endpoint { name: String },
    #[error("peer {name}: prefixes look like \"+44\"")]
    Prefix { name: String },
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error("peer {domain}: {source}")]
    Verifier {
        domain: String,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    #[error("peer {domain}: spki_sha256 must be the base64 of 32 bytes")]
    Pin { domain: String },
    #[error("peer domain {domain} is not a DNS name")]
    Domain { domain: String },
    #[error("{context}: {source}")]
    Tls {
        context: &'static str,
        #[source]
        source: rustls::Error,
    },
    #[error("outbox key: {0}")]
    Keys(#[from] relay_keys::KeyError),
}

/// A KeyPackage claim at a peer carrier failed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("peer {0} is not configured")]
    UnknownPeer(String),
    #[error("peer {peer}: {source}")]
    Exchange {
        peer: String,
        #[source]
        source: ExchangeError,
    },
    #[error("peer {peer} answered {status}")]
    Status { peer: String, status: u16 },
    #[error("peer {peer}: {source}")]
    Body {
        peer: String,
        #[source]
        source: serde_json::Error,
    },
}
