//! Peer identity over mutual TLS.
//!
//! Inbound, a client certificate is accepted only if it maps to **exactly one** configured
//! peer: it chains to that peer's CA (rustls `WebPkiClientVerifier`, with the peer's CRLs and
//! `enforce_revocation_expiration()` — without it a stale CRL would be silently accepted),
//! it is valid for the peer's domain, and it matches the peer's SPKI pin if one is set.
//! Outbound, each peer gets a client configuration trusting only its CA and presenting our
//! certificate. TLS 1.3 only, both ways.

use std::path::PathBuf;
use std::sync::Arc;

use relay_net::pem::{load_certs, load_crl};
use relay_net::tls::provider;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};

use crate::error::SetupError;

/// One peer's identity check.
pub struct PeerIdentity {
    pub domain: String,
    verifier: Arc<dyn ClientCertVerifier>,
    pin: Option<[u8; 32]>,
}

impl std::fmt::Debug for PeerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerIdentity")
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

impl PeerIdentity {
    pub fn new(domain: &str, ca: &std::path::Path, crls: &[PathBuf], pin: Option<&str>) -> Result<Self, SetupError> {
        let mut roots = rustls::RootCertStore::empty();
        for c in load_certs(ca)? {
            roots.add(c).map_err(|source| SetupError::Tls {
                context: "peer CA certificate",
                source,
            })?;
        }
        let crls = crls.iter().map(|p| load_crl(p)).collect::<Result<Vec<_>, _>>()?;
        let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
        if !crls.is_empty() {
            builder = builder.with_crls(crls).enforce_revocation_expiration();
        }
        let verifier = builder.build().map_err(|source| SetupError::Verifier {
            domain: domain.to_owned(),
            source,
        })?;
        let pin = match pin {
            Some(p) => {
                use base64::Engine as _;
                let bad = || SetupError::Pin {
                    domain: domain.to_owned(),
                };
                let raw = base64::engine::general_purpose::STANDARD.decode(p).map_err(|_| bad())?;
                Some(raw.try_into().map_err(|_| bad())?)
            }
            None => None,
        };
        ServerName::try_from(domain.to_owned()).map_err(|_| SetupError::Domain {
            domain: domain.to_owned(),
        })?;
        Ok(Self {
            domain: domain.to_owned(),
            verifier,
            pin,
        })
    }

    /// Whether `end_entity` (with `intermediates`) is this peer's certificate at `now`.
    pub fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), Error> {
        self.verifier.verify_client_cert(end_entity, intermediates, now)?;
        let name = ServerName::try_from(self.domain.as_str()).map_err(|_| Error::General("peer domain".into()))?;
        webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?
            .verify_is_valid_for_subject_name(&name)
            .map_err(|_| Error::InvalidCertificate(CertificateError::NotValidForName))?;
        if let Some(pin) = &self.pin
            && spki_sha256(end_entity).as_ref() != Some(pin)
        {
            return Err(Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(())
    }
}

/// SHA-256 of a certificate's SubjectPublicKeyInfo.
pub fn spki_sha256(cert: &CertificateDer<'_>) -> Option<[u8; 32]> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let digest = ring::digest::digest(&ring::digest::SHA256, parsed.tbs_certificate.subject_pki.raw);
    digest.as_ref().try_into().ok()
}

/// Maps a certificate to exactly one peer (index into `peers`).
pub fn identify(
    peers: &[PeerIdentity],
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
) -> Result<usize, Error> {
    let mut found = None;
    let mut first_error = None;
    for (i, p) in peers.iter().enumerate() {
        match p.check(end_entity, intermediates, now) {
            Ok(()) if found.is_none() => found = Some(i),
            // Two peers accepting one certificate is a configuration error: refuse.
            Ok(()) => {
                return Err(Error::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure,
                ));
            }
            Err(e) => {
                // Prefer the most specific reason: a certificate that chains to a peer's CA
                // but fails later says more than "unknown issuer" from the others.
                let unknown = |e: &Error| matches!(e, Error::InvalidCertificate(CertificateError::UnknownIssuer));
                if first_error.as_ref().is_none_or(|f| unknown(f) && !unknown(&e)) {
                    first_error = Some(e);
                }
            }
        }
    }
    found.ok_or_else(|| first_error.unwrap_or(Error::InvalidCertificate(CertificateError::UnknownIssuer)))
}

/// A metric label for a handshake failure.
pub fn failure_reason(e: &Error) -> &'static str {
    match e {
        Error::NoCertificatesPresented => "no_certificate",
        Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => "unknown_ca",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::Revoked => "revoked",
            CertificateError::ExpiredRevocationList | CertificateError::ExpiredRevocationListContext { .. } => {
                "stale_crl"
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => "unconfigured_peer",
            CertificateError::ApplicationVerificationFailure => "pin_or_ambiguous",
            _ => "invalid_certificate",
        },
        Error::PeerIncompatible(_) => "protocol",
        _ => "other",
    }
}

/// The server-side verifier: accepts exactly-one-peer certificates.
#[derive(Debug)]
pub struct PeersVerifier {
    peers: Arc<Vec<PeerIdentity>>,
    hints: Vec<DistinguishedName>,
}

impl PeersVerifier {
    pub fn new(peers: Arc<Vec<PeerIdentity>>) -> Self {
        let hints = peers
            .iter()
            .flat_map(|p| p.verifier.root_hint_subjects().to_vec())
            .collect();
        Self { peers, hints }
    }
}

impl ClientCertVerifier for PeersVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        identify(&self.peers, end_entity, intermediates, now).map(|_| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        // The server speaks TLS 1.3 only; a TLS 1.2 handshake never gets here.
        Err(Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &provider().signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider().signature_verification_algorithms.supported_schemes()
    }
}

/// Our server configuration: TLS 1.3, client certificates mapped to peers.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    peers: Arc<Vec<PeerIdentity>>,
) -> Result<rustls::ServerConfig, SetupError> {
    let tls = |context| move |source| SetupError::Tls { context, source };
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls("TLS 1.3 with the ring provider"))?
        .with_client_cert_verifier(Arc::new(PeersVerifier::new(peers)))
        .with_single_cert(chain, key)
        .map_err(tls("interconnect certificate"))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Our client certificate, shared by every peer's client configuration and replaced on
/// reload: new connections present the new certificate, established ones (and the
/// connection pools holding them) carry on.
#[derive(Debug)]
pub struct OwnIdentity {
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
}

impl OwnIdentity {
    pub fn new(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<Self, SetupError> {
        Ok(Self {
            current: std::sync::RwLock::new(Arc::new(certified(chain, key)?)),
        })
    }

    /// Presents `chain` from the next handshake on.
    pub fn replace(&self, chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<(), SetupError> {
        let fresh = Arc::new(certified(chain, key)?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::sign::CertifiedKey, SetupError> {
    rustls::sign::CertifiedKey::from_der(chain, key, &provider()).map_err(|source| SetupError::Tls {
        context: "interconnect client certificate",
        source,
    })
}

impl rustls::client::ResolvesClientCert for OwnIdentity {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner())))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A client configuration for one peer: trusts only its CA (`peer_ca`, PEM), presents our
/// certificate as `identity` holds it at each handshake.
pub fn client_config(peer_ca: &[u8], identity: Arc<OwnIdentity>) -> Result<rustls::ClientConfig, SetupError> {
    use rustls::pki_types::pem::PemObject as _;
    let tls = |source| SetupError::Tls {
        context: "peer CA certificate",
        source,
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(peer_ca) {
        roots
            .add(c.map_err(|_| tls(Error::General("not a PEM certificate".into())))?)
            .map_err(tls)?;
    }
    if roots.is_empty() {
        return Err(tls(Error::General("no certificate in the peer CA file".into())));
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_root_certificates(roots)
        .with_client_cert_resolver(identity))
}
