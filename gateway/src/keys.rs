//! Provider keys (DESIGN.md section 8).
//!
//! A [`KeyProvider`] hands out K_rid (the recipient-hash key) and the provisioning
//! verification keys. [`ProviderKeys`] keeps them in `data_dir/keys/`, held by the configured
//! [`relay_keys::Provider`]: 0600 files (the default), or sealed under a PKCS#11 token's
//! key-encryption key, the audit key then being an Ed25519 key inside the token.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rand::RngCore as _;
use relay_core::RidKey;

pub(crate) use crate::keyfile::{create_private_dir, write_private};

/// Source of the gateway's secret keys.
pub trait KeyProvider: std::fmt::Debug + Send + Sync + 'static {
    fn rid_key(&self) -> RidKey;
    /// K_rid's current version and, while a rotation's re-key runs, the previous one.
    fn rid_keys(&self) -> relay_core::RidKeys;
    /// The keys that verify provisioning tokens, with their states (read again on reload).
    fn provisioning_keys(&self) -> anyhow::Result<Vec<relay_core::provisioning::VerifyingKey>>;
    /// Deletes a retired or compromised provisioning key (a dual-control call).
    fn destroy_provisioning_key(&self, id: &str) -> anyhow::Result<()>;
    /// The key directory.
    fn key_dir(&self) -> &Path;
    /// The interconnect outbox key ring as it is now on disk.
    fn outbox_ring(&self) -> anyhow::Result<relay_keys::ring::Ring>;
    /// Retires version `v` of the outbox key ring on disk.
    fn retire_outbox_key(&self, v: u8) -> anyhow::Result<()>;
}

/// The gateway's keys in its key directory, held by a [`relay_keys::Provider`].
#[derive(Debug)]
pub struct ProviderKeys {
    rid_keys: relay_core::RidKeys,
    /// K_rid's current version (0 before any rotation).
    rid_version: u8,
    provider: relay_keys::Provider,
    dir: PathBuf,
    /// `registration.provisioning_public_key`: the operator signs elsewhere with this one key.
    external_provisioning_key: Option<Vec<u8>>,
}

/// K_rid's key ring in the key directory (`rid.key`, `rid-<v>.key`).
pub const RID_RING: &str = "rid";

/// The symmetric keys the gateway holds (sealed by `keys init` under a PKCS#11 provider).
pub const SYMMETRIC_KEYS: [&str; 2] = ["rid.key", "outbox.key"];

impl ProviderKeys {
    /// Loads the keys in `dir`, generating missing ones. `provisioning_public_key`
    /// overrides the generated verification key (production: the operator keeps the
    /// signing key elsewhere).
    pub fn open_or_create(
        dir: &Path,
        provider: &relay_keys::Provider,
        provisioning_public_key: Option<&Path>,
    ) -> anyhow::Result<Self> {
        create_private_dir(dir)?;
        // K_rid is a key ring (`rid.key`, `rid-<v>.key`): the current version, and the
        // previous one (retiring) while the rids made with it are re-keyed.
        let ring = provider.ring(dir, RID_RING)?;
        let key = |v: u8| ring.key(v).map(|k| RidKey::from_bytes(**k));
        let current = key(ring.current).context("the current K_rid is missing")?;
        let previous = ring
            .keys
            .iter()
            .map(|(v, _)| *v)
            .filter(|v| *v < ring.current)
            .max()
            .and_then(key);
        let external_provisioning_key = match provisioning_public_key {
            Some(p) => Some(read_public_key(p)?),
            None => {
                crate::provisioning_keys::ProvisioningKeys::open(dir, provider, relay_net::clock::now_ms())?;
                None
            }
        };
        Ok(Self {
            rid_keys: relay_core::RidKeys { current, previous },
            rid_version: ring.current,
            provider: provider.clone(),
            dir: dir.to_path_buf(),
            external_provisioning_key,
        })
    }
}

impl ProviderKeys {
    /// K_rid's current version (0 before any rotation).
    pub fn rid_version(&self) -> u8 {
        self.rid_version
    }
}

impl KeyProvider for ProviderKeys {
    fn key_dir(&self) -> &Path {
        &self.dir
    }

    fn outbox_ring(&self) -> anyhow::Result<relay_keys::ring::Ring> {
        Ok(self.provider.ring(&self.dir, interconnect::record::KEY_RING)?)
    }

    fn retire_outbox_key(&self, v: u8) -> anyhow::Result<()> {
        Ok(relay_keys::ring::set_state(
            &self.dir,
            interconnect::record::KEY_RING,
            v,
            relay_keys::ring::RETIRED,
        )?)
    }

    fn rid_key(&self) -> RidKey {
        self.rid_keys.current.clone()
    }

    fn rid_keys(&self) -> relay_core::RidKeys {
        self.rid_keys.clone()
    }

    fn provisioning_keys(&self) -> anyhow::Result<Vec<relay_core::provisioning::VerifyingKey>> {
        match &self.external_provisioning_key {
            Some(public_key) => Ok(vec![relay_core::provisioning::VerifyingKey {
                public_key: public_key.clone(),
                state: relay_core::provisioning::KeyState::Active,
            }]),
            None => {
                crate::provisioning_keys::ProvisioningKeys::open(&self.dir, &self.provider, relay_net::clock::now_ms())?
                    .verifying()
            }
        }
    }

    fn destroy_provisioning_key(&self, id: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.external_provisioning_key.is_none(),
            "the provisioning key is kept outside this gateway (registration.provisioning_public_key)"
        );
        crate::provisioning_keys::ProvisioningKeys::open(&self.dir, &self.provider, relay_net::clock::now_ms())?
            .destroy(id)
    }
}

/// The operator's provisioning signing key in `dir`: the newest active one (the first is
/// generated if missing). See [`crate::provisioning_keys`].
pub fn provisioning_signer(
    dir: &Path,
    provider: &relay_keys::Provider,
) -> anyhow::Result<crate::provisioning_keys::Signer> {
    crate::provisioning_keys::ProvisioningKeys::open(dir, provider, relay_net::clock::now_ms())?.signer()
}

/// The current audit signing key (see [`crate::audit_keys`]): under a PKCS#11 provider an
/// Ed25519 key in the token (created by `gateway keys init`), otherwise `dir/audit.key`
/// (created at first start). `dir/audit.vkey` lists its verifier key.
pub fn audit_signer(dir: &Path, provider: &relay_keys::Provider) -> anyhow::Result<relay_core::auditlog::AuditSigner> {
    crate::audit_keys::current(dir, provider)
}

/// A provisioning token for `address`, valid for `valid_for` seconds, signed with the newest
/// active provisioning key in `dir` (`gateway provision`).
pub fn provisioning_token(
    dir: &Path,
    provider: &relay_keys::Provider,
    address: &str,
    valid_for: u64,
    now_ms: u64,
) -> anyhow::Result<String> {
    let address = relay_core::Address::parse(address).map_err(|e| anyhow::anyhow!("invalid address: {e}"))?;
    let key = provisioning_signer(dir, provider)?;
    let mut nonce = [0u8; 16];
    rand::rng().fill_bytes(&mut nonce);
    let claims = relay_core::provisioning::ProvisioningClaims {
        address,
        expires_at_ms: now_ms + valid_for.saturating_mul(1000),
        nonce,
    };
    key.sign(&claims)
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
        let files = relay_keys::Provider::files();
        let a = ProviderKeys::open_or_create(&keys, &files, None).unwrap();
        let b = ProviderKeys::open_or_create(&keys, &files, None).unwrap();
        let addr = relay_core::Address::parse("tel:+15550100001").unwrap();
        assert_eq!(a.rid_key().rid(&addr), b.rid_key().rid(&addr));
        assert_eq!(a.provisioning_keys().unwrap(), b.provisioning_keys().unwrap());
        for f in ["rid.key", "provisioning.pk8"] {
            let mode = std::fs::metadata(keys.join(f)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
    }
}
