//! Custody of the provider keys, shared by the gateway and the push proxy.
//!
//! A [`Provider`] hands out the 32-byte symmetric keys that run at line rate outside any
//! HSM (K_rid for BLAKE3, the outbox sealing key, the push-handle keys):
//! - `file` (the embedded default): each key is a 0600 file in the key directory;
//! - `pkcs11`: each key exists on disk only sealed (`NAME.sealed`) under the token's
//!   non-extractable key-encryption key ([`token::KEK`]); it is unsealed at start into
//!   zeroizing memory and every unseal is reported ([`Provider::take_events`]) so the
//!   gateway can audit it. Signing keys live in the token itself ([`token::TokenSigner`]).
//!
//! `keys init` ([`Provider::init`]) creates what is missing in the token and seals any key
//! still in the clear, removing the clear file.

pub mod config;
pub mod files;
pub mod ring;
pub mod token;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use config::{KeysConfig, ProviderKind};
pub use token::{Custody, Token, TokenSigner};
use zeroize::Zeroizing;

/// A 32-byte secret key, wiped from memory when dropped.
pub type Secret = Zeroizing<[u8; 32]>;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("PKCS#11 module {}: {reason}", path.display())]
    Module { path: PathBuf, reason: String },
    #[error("no PKCS#11 token labelled {label:?} (tokens present: {found:?})")]
    NoToken { label: String, found: Vec<String> },
    #[error("the PIN for token {label:?} is wrong")]
    Pin { label: String },
    #[error("the token PIN: {0}")]
    PinSource(String),
    #[error("key {label:?} is not in the token: run `gateway keys init` first")]
    Missing { label: String },
    #[error("key {label:?} in the token has the wrong attributes: {what}")]
    Attributes { label: String, what: String },
    #[error("{op}: {reason}")]
    Pkcs11 { op: &'static str, reason: String },
    #[error("sealed key {name}: {reason}")]
    Sealed { name: String, reason: String },
    #[error("{}: a key in the clear while the provider is pkcs11: run `gateway keys init` to seal it", path.display())]
    Clear { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: {reason}", path.display())]
    Bad { path: PathBuf, reason: String },
}

impl KeyError {
    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Where the provider keys are held.
#[derive(Debug, Clone)]
pub struct Provider {
    token: Option<Arc<Token>>,
    events: Arc<Mutex<Vec<KeyEvent>>>,
}

/// A sealed key created or unsealed (for the audit log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEvent {
    /// `key.create` or `key.unseal`.
    pub kind: &'static str,
    pub name: String,
    pub fingerprint: String,
}

impl Provider {
    /// The embedded default: keys in files.
    pub fn files() -> Self {
        Self {
            token: None,
            events: Arc::default(),
        }
    }

    /// Opens the configured provider (for `pkcs11`: the module, the token, the login).
    pub fn open(config: &KeysConfig) -> Result<Self, KeyError> {
        match config.provider {
            ProviderKind::File => Ok(Self::files()),
            ProviderKind::Pkcs11 => {
                let p = config.pkcs11()?;
                let pin = config.pin()?;
                Ok(Self {
                    token: Some(Arc::new(Token::open(&p.module, &p.token_label, &pin)?)),
                    events: Arc::default(),
                })
            }
        }
    }

    pub fn token(&self) -> Option<&Arc<Token>> {
        self.token.as_ref()
    }

    /// `files` or `pkcs11`.
    pub fn kind(&self) -> &'static str {
        if self.token.is_some() { "pkcs11" } else { "file" }
    }

    /// For the start-up line: where the keys are.
    pub fn describe(&self, dir: &Path) -> String {
        match &self.token {
            None => format!("files in {}", dir.display()),
            Some(t) => format!(
                "sealed in {} under the key-encryption key of PKCS#11 token {:?} ({})",
                dir.display(),
                t.label(),
                t.module().display()
            ),
        }
    }

    /// Where the key `name` is on disk under this provider.
    pub fn path(&self, dir: &Path, name: &str) -> PathBuf {
        match self.token {
            None => dir.join(name),
            Some(_) => dir.join(format!("{name}.sealed")),
        }
    }

    /// The 32-byte key `name` in `dir`, generated (and written durably) if missing and
    /// `create`; `None` if missing and not `create`.
    pub fn secret(&self, dir: &Path, name: &str, create: bool) -> Result<Option<Secret>, KeyError> {
        let clear = dir.join(name);
        let Some(token) = &self.token else {
            return match std::fs::read(&clear) {
                Ok(b) => to_secret(&clear, &b).map(Some),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                    let key = random_secret();
                    files::create_private_dir(dir)?;
                    files::write_private(&clear, key.as_slice())?;
                    Ok(Some(key))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(KeyError::io(&clear)(e)),
            };
        };
        if clear.exists() {
            return Err(KeyError::Clear { path: clear });
        }
        let sealed_path = self.path(dir, name);
        match std::fs::read(&sealed_path) {
            Ok(sealed) => {
                let plain = token.unseal(name, &sealed)?;
                let key = to_secret(&sealed_path, &plain)?;
                self.event("key.unseal", name, &key);
                Ok(Some(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let key = random_secret();
                let sealed = token.seal(name, key.as_slice())?;
                files::create_private_dir(dir)?;
                files::write_private(&sealed_path, &sealed)?;
                self.event("key.create", name, &key);
                Ok(Some(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(KeyError::io(&sealed_path)(e)),
        }
    }

    fn event(&self, kind: &'static str, name: &str, key: &Secret) {
        self.events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(KeyEvent {
                kind,
                name: name.to_owned(),
                fingerprint: fingerprint(key.as_slice()),
            });
    }

    /// The sealed keys created or unsealed since the last call (for the audit log).
    pub fn take_events(&self) -> Vec<KeyEvent> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// `keys init`: creates the key-encryption key and the signing keys `signing` that are
    /// missing in the token, then seals every clear key in `dir` among `names` (the
    /// sealed file written durably before the clear one is removed). Returns what it did,
    /// one line each. Nothing is created if an existing key has the wrong attributes.
    pub fn init(&self, dir: &Path, signing: &[&str], names: &[String]) -> Result<Vec<String>, KeyError> {
        let token = self.token.as_ref().ok_or_else(|| {
            KeyError::PinSource("`keys init` is for the pkcs11 provider: set [keys] provider = \"pkcs11\"".into())
        })?;
        let mut done: Vec<String> = token
            .init(signing)?
            .into_iter()
            .map(|l| format!("created {l} in token {:?}", token.label()))
            .collect();
        for name in names {
            let clear = dir.join(name);
            let plain = match std::fs::read(&clear) {
                Ok(b) => Zeroizing::new(b),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(KeyError::io(&clear)(e)),
            };
            to_secret(&clear, &plain)?;
            let sealed_path = self.path(dir, name);
            if sealed_path.exists() {
                return Err(KeyError::Bad {
                    path: clear,
                    reason: format!("both it and {} exist: remove the one not in use", sealed_path.display()),
                });
            }
            files::write_private(&sealed_path, &token.seal(name, &plain)?)?;
            files::remove_durably(&clear)?;
            done.push(format!("sealed {name} under {}", token::KEK));
        }
        Ok(done)
    }
}

const FINGERPRINT_CONTEXT: &str = "rcs-relay 2026-12 key fingerprint v1";

/// [`fingerprint`] as bytes (what a sealed key carries in the clear).
pub fn fingerprint_bytes(key: &[u8]) -> [u8; 16] {
    let mut fp = [0u8; 16];
    fp.copy_from_slice(&blake3::derive_key(FINGERPRINT_CONTEXT, key)[..16]);
    fp
}

/// A key's fingerprint (32 hex digits): a one-way, domain-separated hash that names the key
/// in inventories and audit records without revealing it.
pub fn fingerprint(key: &[u8]) -> String {
    fingerprint_bytes(key).iter().map(|b| format!("{b:02x}")).collect()
}

fn random_secret() -> Secret {
    let mut key = Zeroizing::new([0u8; 32]);
    rand::fill(key.as_mut_slice());
    key
}

fn to_secret(path: &Path, bytes: &[u8]) -> Result<Secret, KeyError> {
    let key: [u8; 32] = bytes.try_into().map_err(|_| KeyError::Bad {
        path: path.to_path_buf(),
        reason: "a key is exactly 32 bytes".into(),
    })?;
    Ok(Zeroizing::new(key))
}
