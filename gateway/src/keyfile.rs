//! Key files: private directories and files written so that they and their names survive a
//! power loss (a key that vanished would change every rid; a state file left empty would stop
//! the gateway from starting).

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::Path;

use anyhow::Context as _;
use ring::signature::Ed25519KeyPair;

pub(crate) fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

/// Writes a secret file with mode 0600, refusing to overwrite. The file and its name are
/// durable when this returns (a key that vanished in a power loss would change every rid).
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", dir.display()))?;
    }
    Ok(())
}

/// Replaces `path` with `bytes` atomically and durably: a temporary file written and synced,
/// renamed over the old one, the directory synced.
pub(crate) fn write_durable(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", dir.display()))?;
    }
    Ok(())
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
