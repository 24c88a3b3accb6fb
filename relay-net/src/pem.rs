//! PEM files: certificate chains, private keys and CRLs.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

/// A PEM file could not be used; names the file.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} holds no certificate", path.display())]
    NoCertificate { path: PathBuf },
}

/// Every certificate in a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let read = |source| PemError::Read {
        path: path.to_path_buf(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(read)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read)?;
    if certs.is_empty() {
        return Err(PemError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The first private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| PemError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Every certificate in PEM text (at least one).
pub fn parse_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, rustls::pki_types::pem::Error> {
    let certs = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        return Err(rustls::pki_types::pem::Error::NoItemsFound);
    }
    Ok(certs)
}

/// The first private key in PEM text.
pub fn parse_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, rustls::pki_types::pem::Error> {
    PrivateKeyDer::from_pem_slice(pem)
}

/// A certificate chain and its private key.
pub fn load_pair(cert: &Path, key: &Path) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PemError> {
    Ok((load_certs(cert)?, load_key(key)?))
}

/// A CRL in PEM or DER.
pub fn load_crl(path: &Path) -> Result<CertificateRevocationListDer<'static>, PemError> {
    let bytes = std::fs::read(path).map_err(|source| PemError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if bytes.starts_with(b"-----") {
        CertificateRevocationListDer::from_pem_slice(&bytes).map_err(|source| PemError::Read {
            path: path.to_path_buf(),
            source,
        })
    } else {
        Ok(CertificateRevocationListDer::from(bytes))
    }
}

/// The end of a certificate's validity (`notAfter`) in seconds since the Unix epoch, or
/// `None` if the DER does not parse as X.509.
pub fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some(parsed.validity().not_after.timestamp())
}

/// Exports the leaf's `notAfter` as the gauge `name{listener}` (Unix seconds), so an alert can
/// fire well before a certificate expires: `name - time() < 14 * 86400`.
pub fn export_expiry(name: &'static str, listener: &'static str, chain: &[CertificateDer<'_>]) {
    if let Some(t) = chain.first().and_then(not_after) {
        metrics::gauge!(name, "listener" => listener).set(t as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no pem here\n").unwrap();
        assert!(matches!(load_certs(&empty), Err(PemError::NoCertificate { .. })));
        let missing = dir.path().join("missing.pem");
        let e = load_certs(&missing).unwrap_err();
        assert!(matches!(e, PemError::Read { .. }), "{e:?}");
        assert!(e.to_string().contains("missing.pem"), "{e}");
        assert!(matches!(load_crl(&missing), Err(PemError::Io { .. })));
    }
}
