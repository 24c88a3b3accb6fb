//! Provider keys (DESIGN.md section 8).
//!
//! A [`KeyProvider`] hands out K_rid (the recipient-hash key) and the provisioning
//! verification key. [`FileKeyProvider`] keeps them in `data_dir/keys/`, created on
//! first run with mode 0600; a PKCS#11 provider (HSM) implements the same trait.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rand::RngCore as _;
use relay_core::RidKey;
use ring::signature::Ed25519KeyPair;

pub(crate) use crate::keyfile::{create_private_dir, write_durable, write_private};

/// Source of the gateway's secret keys.
pub trait KeyProvider: std::fmt::Debug + Send + Sync + 'static {
    fn rid_key(&self) -> RidKey;
    /// The keys that verify provisioning tokens, with their states (read again on reload).
    fn provisioning_keys(&self) -> anyhow::Result<Vec<relay_core::provisioning::VerifyingKey>>;
    /// Deletes a retired or compromised provisioning key (a dual-control call).
    fn destroy_provisioning_key(&self, id: &str) -> anyhow::Result<()>;
}

/// Keys in files (development and small deployments).
#[derive(Debug)]
pub struct FileKeyProvider {
    rid_key: RidKey,
    dir: PathBuf,
    /// `registration.provisioning_public_key`: the operator signs elsewhere with this one key.
    external_provisioning_key: Option<Vec<u8>>,
}

impl FileKeyProvider {
    /// Loads the keys in `dir`, generating missing ones. `provisioning_public_key`
    /// overrides the generated verification key (production: the operator keeps the
    /// signing key elsewhere).
    pub fn open_or_create(dir: &Path, provisioning_public_key: Option<&Path>) -> anyhow::Result<Self> {
        create_private_dir(dir)?;
        let rid_path = dir.join("rid.key");
        let rid_bytes = match std::fs::read(&rid_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                rand::rng().fill_bytes(&mut key);
                write_private(&rid_path, &key)?;
                key.to_vec()
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", rid_path.display())),
        };
        let rid_key: [u8; 32] = rid_bytes
            .try_into()
            .map_err(|_| anyhow::anyhow!("{} must hold exactly 32 bytes", rid_path.display()))?;
        let external_provisioning_key = match provisioning_public_key {
            Some(p) => Some(read_public_key(p)?),
            None => {
                crate::provisioning_keys::ProvisioningKeys::open(dir, relay_net::clock::now_ms())?;
                None
            }
        };
        Ok(Self {
            rid_key: RidKey::from_bytes(rid_key),
            dir: dir.to_path_buf(),
            external_provisioning_key,
        })
    }
}

impl KeyProvider for FileKeyProvider {
    fn rid_key(&self) -> RidKey {
        self.rid_key.clone()
    }

    fn provisioning_keys(&self) -> anyhow::Result<Vec<relay_core::provisioning::VerifyingKey>> {
        match &self.external_provisioning_key {
            Some(public_key) => Ok(vec![relay_core::provisioning::VerifyingKey {
                public_key: public_key.clone(),
                state: relay_core::provisioning::KeyState::Active,
            }]),
            None => {
                crate::provisioning_keys::ProvisioningKeys::open(&self.dir, relay_net::clock::now_ms())?.verifying()
            }
        }
    }

    fn destroy_provisioning_key(&self, id: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.external_provisioning_key.is_none(),
            "the provisioning key is kept outside this gateway (registration.provisioning_public_key)"
        );
        crate::provisioning_keys::ProvisioningKeys::open(&self.dir, relay_net::clock::now_ms())?.destroy(id)
    }
}

/// The operator's provisioning signing key in `dir`: the newest active one (the first,
/// `provisioning.pk8`, is generated if missing). See [`crate::provisioning_keys`].
pub fn provisioning_keypair(dir: &Path) -> anyhow::Result<Ed25519KeyPair> {
    crate::provisioning_keys::ProvisioningKeys::open(dir, relay_net::clock::now_ms())?.signer()
}

/// The audit signing key in `dir` (`audit.key`, a signed-note Ed25519 signer key, 0600),
/// generated with its verifier key (`audit.vkey`, public) if missing. The key's name is the
/// log's origin: `rcs-relay/audit/` and 8 random hex digits, one per installation.
pub fn audit_signer(dir: &Path) -> anyhow::Result<relay_core::auditlog::AuditSigner> {
    create_private_dir(dir)?;
    let path = dir.join("audit.key");
    let skey = match std::fs::read_to_string(&path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let origin = format!("rcs-relay/audit/{:08x}", rand::rng().next_u32());
            let (skey, vkey) = relay_core::auditlog::generate_key(&origin);
            // The verifier key first: a power cut between the two leaves no signer without it.
            write_durable(&dir.join("audit.vkey"), format!("{vkey}\n").as_bytes())?;
            write_private(&path, skey.as_bytes())?;
            skey
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    relay_core::auditlog::AuditSigner::new(&skey).with_context(|| format!("loading {}", path.display()))
}

/// Directory of the provider keys under a data directory.
pub fn key_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("keys")
}

fn read_public_key(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    anyhow::ensure!(
        bytes.len() == 32,
        "{}: expected a 32-byte Ed25519 public key",
        path.display()
    );
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn keys_are_created_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let a = FileKeyProvider::open_or_create(&keys, None).unwrap();
        let b = FileKeyProvider::open_or_create(&keys, None).unwrap();
        let addr = relay_core::Address::parse("tel:+15550100001").unwrap();
        assert_eq!(a.rid_key().rid(&addr), b.rid_key().rid(&addr));
        assert_eq!(a.provisioning_keys().unwrap(), b.provisioning_keys().unwrap());
        for f in ["rid.key", "provisioning.pk8"] {
            let mode = std::fs::metadata(keys.join(f)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
    }
}
