//! Key files: private directories and files written so that they and their names survive a
//! power loss (a key that vanished would change every rid; a state file left empty would stop
//! the gateway from starting).

use std::path::Path;

use anyhow::Context as _;
use ring::signature::Ed25519KeyPair;

pub(crate) fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    Ok(relay_keys::files::create_private_dir(dir)?)
}

/// Writes a secret file with mode 0600, refusing to overwrite; durable when this returns.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    Ok(relay_keys::files::write_private(path, bytes)?)
}

/// Replaces `path` with `bytes` atomically and durably.
pub(crate) fn write_durable(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    Ok(relay_keys::files::write_durable(path, bytes)?)
}

/// A provisioning key file (PKCS#8 Ed25519), generated if missing.
pub(crate) fn provisioning_keypair_at(path: &Path) -> anyhow::Result<Ed25519KeyPair> {
    let pkcs8 = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let doc = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
                .map_err(|_| anyhow::anyhow!("generating the provisioning key"))?;
            write_private(path, doc.as_ref())?;
            doc.as_ref().to_vec()
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    Ed25519KeyPair::from_pkcs8(&pkcs8)
        .map_err(|e| anyhow::anyhow!("{}: invalid PKCS#8 Ed25519 key: {e}", path.display()))
}
