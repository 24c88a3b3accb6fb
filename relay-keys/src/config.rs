//! `[keys]`: which provider holds the keys.

use std::path::PathBuf;

use serde::Deserialize;

use crate::KeyError;

/// The default environment variable holding the token PIN.
pub const PIN_ENV: &str = "RELAY_PKCS11_PIN";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Keys in 0600 files in the key directory (the embedded default).
    #[default]
    File,
    /// Keys in, or sealed by, a PKCS#11 token (an HSM).
    Pkcs11,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// `file` (default) or `pkcs11`.
    #[serde(default)]
    pub provider: ProviderKind,
    /// The PKCS#11 module (e.g. `/usr/lib/softhsm/libsofthsm2.so`).
    pub pkcs11_module: Option<PathBuf>,
    /// The token's label.
    pub token_label: Option<String>,
    /// A file holding the user PIN (its first line); otherwise the environment variable
    /// `pin_env` (default `RELAY_PKCS11_PIN`). The PIN is never logged.
    pub pin_file: Option<PathBuf>,
    pub pin_env: Option<String>,
}

/// The token settings, present when the provider is `pkcs11`.
#[derive(Debug)]
pub struct Pkcs11Settings {
    pub module: PathBuf,
    pub token_label: String,
}

impl KeysConfig {
    /// Checks that a `pkcs11` provider names its module and token.
    pub fn pkcs11(&self) -> Result<Pkcs11Settings, KeyError> {
        let missing = |k: &str| KeyError::PinSource(format!("[keys] provider = \"pkcs11\" needs {k}"));
        Ok(Pkcs11Settings {
            module: self.pkcs11_module.clone().ok_or_else(|| missing("pkcs11_module"))?,
            token_label: self.token_label.clone().ok_or_else(|| missing("token_label"))?,
        })
    }

    /// The user PIN, from `pin_file` or the environment.
    pub fn pin(&self) -> Result<zeroize::Zeroizing<String>, KeyError> {
        if let Some(path) = &self.pin_file {
            let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(KeyError::io(path))?);
            let pin = text.lines().next().unwrap_or_default().trim();
            if pin.is_empty() {
                return Err(KeyError::PinSource(format!("{} is empty", path.display())));
            }
            return Ok(zeroize::Zeroizing::new(pin.to_owned()));
        }
        let var = self.pin_env.as_deref().unwrap_or(PIN_ENV);
        match std::env::var(var) {
            Ok(pin) if !pin.is_empty() => Ok(zeroize::Zeroizing::new(pin)),
            _ => Err(KeyError::PinSource(format!(
                "no PIN: set [keys] pin_file, or the environment variable {var}"
            ))),
        }
    }
}
