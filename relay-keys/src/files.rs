//! Key files: private directories and files written so that they and their names survive a
//! power loss (a key that vanished would change every rid; a state file left empty would stop
//! the gateway from starting).

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::Path;

use crate::KeyError;

pub fn create_private_dir(dir: &Path) -> Result<(), KeyError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(KeyError::io(dir))
}

fn sync_parent(path: &Path) -> Result<(), KeyError> {
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(KeyError::io(dir))?;
    }
    Ok(())
}

/// Writes a secret file with mode 0600, refusing to overwrite. The file and its name are
/// durable when this returns (a key that vanished in a power loss would change every rid).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(KeyError::io(path))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(KeyError::io(path))?;
    sync_parent(path)
}

/// Replaces `path` with `bytes` atomically and durably: a temporary file written and synced,
/// renamed over the old one, the directory synced.
pub fn write_durable(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(KeyError::io(&tmp))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(KeyError::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(KeyError::io(path))?;
    sync_parent(path)
}

/// Overwrites a clear key file with zeros, then removes it durably.
pub fn remove_durably(path: &Path) -> Result<(), KeyError> {
    let len = std::fs::metadata(path).map_err(KeyError::io(path))?.len();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(KeyError::io(path))?;
    f.write_all(&vec![0u8; usize::try_from(len).unwrap_or(0)])
        .and_then(|()| f.sync_all())
        .map_err(KeyError::io(path))?;
    std::fs::remove_file(path).map_err(KeyError::io(path))?;
    sync_parent(path)
}
