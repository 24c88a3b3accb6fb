//! Key files in `data_dir/keys/`: push handle keys (`handle-<id>.key`, 32 raw bytes) and the
//! VAPID key (`vapid.pem`). Created 0600 on first use; never logged.

use std::path::Path;

use p256::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use rustls::pki_types::pem::PemObject as _;

use crate::error::SetupError;
use crate::handle::HandleKeys;

/// Writes `data` to `path`, 0600 if `secret` (created exclusively, so an existing key is
/// never overwritten).
pub fn write_file(path: &Path, data: &[u8], secret: bool) -> Result<(), SetupError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    if secret {
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(SetupError::io(path))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(SetupError::io(path))?;
    // A handle key whose name vanished in a power loss would leave every handle unopenable.
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(SetupError::io(dir))?;
    }
    Ok(())
}

/// Every `handle-<id>.key` in `dir`, creating the current one if missing.
pub fn handle_keys(dir: &Path, current: u8) -> Result<HandleKeys, SetupError> {
    std::fs::create_dir_all(dir).map_err(SetupError::io(dir))?;
    let current_path = dir.join(format!("handle-{current}.key"));
    if !current_path.exists() {
        let mut key = [0u8; 32];
        rand::fill(&mut key);
        write_file(&current_path, &key, true)?;
    }
    let mut keys = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(SetupError::io(dir))? {
        let path = entry.map_err(SetupError::io(dir))?.path();
        let Some(id) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("handle-")?.strip_suffix(".key"))
        else {
            continue;
        };
        let id: u8 = id.parse().map_err(|_| SetupError::Key {
            path: path.clone(),
            reason: "key id is not 0-255",
        })?;
        let bytes = std::fs::read(&path).map_err(SetupError::io(&path))?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| SetupError::Key {
            path: path.clone(),
            reason: "a handle key is 32 bytes",
        })?;
        keys.push((id, key));
    }
    HandleKeys::new(current, &keys)
}

/// A P-256 signing key from a PKCS#8 PEM file (APNs `.p8`, VAPID).
pub fn p256_key(path: &Path) -> Result<p256::ecdsa::SigningKey, SetupError> {
    let pem = std::fs::read_to_string(path).map_err(SetupError::io(path))?;
    p256::ecdsa::SigningKey::from_pkcs8_pem(&pem).map_err(|_| SetupError::Key {
        path: path.to_path_buf(),
        reason: "not a P-256 PKCS#8 key",
    })
}

/// The VAPID key: `path`, or `dir/vapid.pem` created on first use.
pub fn vapid_key(path: Option<&Path>, dir: &Path) -> Result<p256::ecdsa::SigningKey, SetupError> {
    if let Some(p) = path {
        return p256_key(p);
    }
    let generated = dir.join("vapid.pem");
    if !generated.exists() {
        let key = p256::ecdsa::SigningKey::from(crate::webpush::random_secret());
        let pem = key
            .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
            .map_err(|_| SetupError::Key {
                path: generated.clone(),
                reason: "the VAPID key could not be encoded",
            })?;
        write_file(&generated, pem.as_bytes(), true)?;
    }
    p256_key(&generated)
}

/// An FCM service account: project, client email, token URI and RSA key.
pub struct ServiceAccount {
    pub project_id: String,
    pub client_email: String,
    pub token_uri: String,
    pub key: ring::signature::RsaKeyPair,
}

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("project_id", &self.project_id)
            .finish_non_exhaustive()
    }
}

pub fn service_account(path: &Path) -> Result<ServiceAccount, SetupError> {
    let bad = |reason: String| SetupError::ServiceAccount {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(SetupError::io(path))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let field = |k: &str| v[k].as_str().map(str::to_owned).ok_or_else(|| bad(format!("no {k}")));
    let pem = field("private_key")?;
    let der = rustls::pki_types::PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| bad(format!("private_key: {e}")))?;
    let key = ring::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
        .map_err(|e| bad(format!("private_key is not an RSA PKCS#8 key: {e}")))?;
    Ok(ServiceAccount {
        project_id: field("project_id")?,
        client_email: field("client_email")?,
        token_uri: field("token_uri")?,
        key,
    })
}
