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

/// Every handle key in `dir` (`handle-<id>.key`, or `handle-<id>.key.sealed` under a
/// PKCS#11 provider), creating the current one if missing.
pub fn handle_keys(provider: &relay_keys::Provider, dir: &Path, current: u8) -> Result<HandleKeys, SetupError> {
    std::fs::create_dir_all(dir).map_err(SetupError::io(dir))?;
    provider.secret(dir, &format!("handle-{current}.key"), true)?;
    let mut keys = Vec::new();
    for (id, name) in handle_key_names(dir)? {
        if let Some(key) = provider.secret(dir, &name, false)? {
            keys.push((id, *key));
        }
    }
    HandleKeys::new(current, &keys)
}

/// The handle keys' ids and names (`handle-<id>.key`) in `dir`, clear or sealed.
pub fn handle_key_names(dir: &Path) -> Result<Vec<(u8, String)>, SetupError> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(SetupError::io(dir))? {
        let path = entry.map_err(SetupError::io(dir))?.path();
        let Some(file) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let name = file.strip_suffix(".sealed").unwrap_or(file);
        let Some(id) = name.strip_prefix("handle-").and_then(|n| n.strip_suffix(".key")) else {
            continue;
        };
        let id: u8 = id.parse().map_err(|_| SetupError::Key {
            path: path.clone(),
            reason: "key id is not 0-255",
        })?;
        if !names.iter().any(|(i, _)| *i == id) {
            names.push((id, name.to_owned()));
        }
    }
    names.sort();
    Ok(names)
}

/// `push-proxy --init-keys`: under a PKCS#11 provider, creates the token's key-encryption
/// key if missing and seals every clear handle key (and the current one, created sealed).
pub fn init(config: &crate::config::Config) -> Result<Vec<String>, SetupError> {
    if config.keys.provider != relay_keys::ProviderKind::Pkcs11 {
        return Err(SetupError::Keys(relay_keys::KeyError::PinSource(
            "--init-keys prepares a PKCS#11 token: set [keys] provider = \"pkcs11\"".into(),
        )));
    }
    let provider = relay_keys::Provider::open(&config.keys)?;
    let dir = config.data_dir.join("keys");
    relay_keys::files::create_private_dir(&dir)?;
    let names: Vec<String> = handle_key_names(&dir)?.into_iter().map(|(_, n)| n).collect();
    let mut done = provider.init(&dir, &[], &names)?;
    let current = format!("handle-{}.key", config.handles.current_key_id);
    if !provider.path(&dir, &current).exists() {
        provider.secret(&dir, &current, true)?;
        done.push(format!("created {current}, sealed"));
    }
    Ok(done)
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
