//! The provisioning keys: the operator's keys that sign provisioning tokens, each with an id
//! (in every token it signs) and a state, so a key can be rotated with an overlap window and a
//! retired or compromised key's tokens are refused.
//!
//! `keys/provisioning.pk8` is the first key (created at first start); a rotation adds
//! `keys/provisioning-<id>.pk8` and makes it the signing key, the previous one retiring.
//! Under a PKCS#11 provider the keys are Ed25519 keys in the token instead
//! (`rcs-relay-provisioning-<n>`, non-extractable; `gateway provision` has the token sign);
//! `keys/provisioning-keys.json` holds each key's state and creation time. Every active or
//! retiring key verifies; the newest active one signs (`gateway provision`). A compromised
//! key is kept, not deleted (evidence). The running gateway re-reads the states on
//! `POST /admin/keys/reload`, which `gateway keys …` calls, and audits each change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use relay_core::provisioning::{KeyState, VerifyingKey, key_id};
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use serde::{Deserialize, Serialize};

const STATES: &str = "provisioning-keys.json";
const FIRST: &str = "provisioning.pk8";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    state: String,
    created_ms: u64,
    file: String,
}

/// One provisioning key as the inventory lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// 8 hex digits.
    pub id: String,
    pub state: KeyState,
    pub created_ms: u64,
    pub public_key: Vec<u8>,
}

/// The provisioning keys in a key directory (and, under a PKCS#11 provider, in its token).
#[derive(Debug)]
pub struct ProvisioningKeys {
    dir: PathBuf,
    token: Option<std::sync::Arc<relay_keys::Token>>,
}

/// Entries whose key is in the token: `token:<label>`.
const IN_TOKEN: &str = "token:";

fn token_label(n: usize) -> String {
    format!("rcs-relay-provisioning-{n}")
}

/// The key that signs new tokens.
#[derive(Debug)]
pub enum Signer {
    File(Ed25519KeyPair),
    Token(relay_keys::TokenSigner),
}

impl Signer {
    pub fn public_key(&self) -> Vec<u8> {
        match self {
            Self::File(k) => k.public_key().as_ref().to_vec(),
            Self::Token(k) => k.public_key().to_vec(),
        }
    }

    /// A provisioning token for `claims`.
    pub fn sign(&self, claims: &relay_core::provisioning::ProvisioningClaims) -> anyhow::Result<String> {
        match self {
            Self::File(k) => Ok(relay_core::provisioning::sign(k, claims)),
            Self::Token(k) => {
                let mut failed = None;
                let token = relay_core::provisioning::sign_with(&k.public_key(), claims, |payload| {
                    k.sign(payload).unwrap_or_else(|e| {
                        failed = Some(e);
                        Vec::new()
                    })
                });
                match failed {
                    Some(e) => Err(e.into()),
                    None => Ok(token),
                }
            }
        }
    }
}

fn hex_id(public_key: &[u8]) -> String {
    relay_core::hex::encode(&key_id(public_key))
}

impl ProvisioningKeys {
    /// Opens the keys in `dir` held by `provider`, creating the first key (and the state
    /// file) if there is none.
    pub fn open(dir: &Path, provider: &relay_keys::Provider, now_ms: u64) -> anyhow::Result<Self> {
        crate::keyfile::create_private_dir(dir)?;
        let keys = Self {
            dir: dir.to_path_buf(),
            token: provider.token().cloned(),
        };
        let mut states = keys.states()?;
        if states.is_empty() || keys.token.is_none() {
            let (file, public_key) = match &keys.token {
                None => {
                    let first = crate::keyfile::provisioning_keypair_at(&dir.join(FIRST))?;
                    (FIRST.to_owned(), first.public_key().as_ref().to_vec())
                }
                Some(token) => {
                    let label = token_label(0);
                    token.init(&[&label])?;
                    (
                        format!("{IN_TOKEN}{label}"),
                        token.signer(&label)?.public_key().to_vec(),
                    )
                }
            };
            if let std::collections::btree_map::Entry::Vacant(v) = states.entry(hex_id(&public_key)) {
                v.insert(Entry {
                    state: KeyState::Active.as_str().into(),
                    created_ms: now_ms,
                    file,
                });
                keys.save(&states)?;
                crate::keyfile::write_durable(&dir.join("provisioning.pub"), &public_key)?;
            }
        }
        Ok(keys)
    }

    fn public_key(&self, e: &Entry) -> anyhow::Result<Vec<u8>> {
        match e.file.strip_prefix(IN_TOKEN) {
            Some(label) => Ok(self.token_for(label)?.signer(label)?.public_key().to_vec()),
            None => Ok(crate::keyfile::provisioning_keypair_at(&self.dir.join(&e.file))?
                .public_key()
                .as_ref()
                .to_vec()),
        }
    }

    fn token_for(&self, label: &str) -> anyhow::Result<&std::sync::Arc<relay_keys::Token>> {
        self.token.as_ref().with_context(|| {
            format!("provisioning key {label} is in a PKCS#11 token: configure [keys] provider = \"pkcs11\"")
        })
    }

    /// Whether the newest active key is a file (`keys init` then rotates into the token).
    pub fn signer_is_a_file(&self) -> anyhow::Result<bool> {
        let states = self.states()?;
        let newest = self.list()?.into_iter().rev().find(|k| k.state == KeyState::Active);
        Ok(newest.is_some_and(|k| !states[&k.id].file.starts_with(IN_TOKEN)))
    }

    fn states(&self) -> anyhow::Result<BTreeMap<String, Entry>> {
        let path = self.dir.join(STATES);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes the states atomically and durably.
    fn save(&self, states: &BTreeMap<String, Entry>) -> anyhow::Result<()> {
        crate::keyfile::write_durable(&self.dir.join(STATES), &serde_json::to_vec_pretty(states)?)
    }

    /// Every key, oldest first.
    pub fn list(&self) -> anyhow::Result<Vec<KeyInfo>> {
        let mut out = Vec::new();
        for (id, e) in self.states()? {
            let state = KeyState::parse(&e.state).with_context(|| format!("key {id}: unknown state {:?}", e.state))?;
            out.push(KeyInfo {
                public_key: self.public_key(&e)?,
                id,
                state,
                created_ms: e.created_ms,
            });
        }
        out.sort_by_key(|k| k.created_ms);
        Ok(out)
    }

    /// The keys that verify tokens (and those that no longer do, so their tokens are
    /// refused as such rather than as forgeries).
    pub fn verifying(&self) -> anyhow::Result<Vec<VerifyingKey>> {
        Ok(self
            .list()?
            .into_iter()
            .map(|k| VerifyingKey {
                public_key: k.public_key,
                state: k.state,
            })
            .collect())
    }

    /// The signing key: the newest active one.
    pub fn signer(&self) -> anyhow::Result<Signer> {
        let states = self.states()?;
        let newest = self
            .list()?
            .into_iter()
            .rev()
            .find(|k| k.state == KeyState::Active)
            .context("no active provisioning key: rotate one in (`gateway keys rotate provisioning`)")?;
        let file = &states[&newest.id].file;
        match file.strip_prefix(IN_TOKEN) {
            Some(label) => Ok(Signer::Token(self.token_for(label)?.signer(label)?)),
            None => Ok(Signer::File(crate::keyfile::provisioning_keypair_at(
                &self.dir.join(file),
            )?)),
        }
    }

    /// A new signing key; the active ones become retiring (their tokens still verify).
    pub fn rotate(&self, now_ms: u64) -> anyhow::Result<String> {
        let mut states = self.states()?;
        let (id, file) = match &self.token {
            None => {
                let doc = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
                    .map_err(|_| anyhow::anyhow!("generating a provisioning key"))?;
                let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).map_err(|_| anyhow::anyhow!("a generated key"))?;
                let id = hex_id(pair.public_key().as_ref());
                let file = format!("provisioning-{id}.pk8");
                crate::keyfile::write_private(&self.dir.join(&file), doc.as_ref())?;
                (id, file)
            }
            Some(token) => {
                let n = (0..)
                    .find(|n| {
                        !states
                            .values()
                            .any(|e| e.file == format!("{IN_TOKEN}{}", token_label(*n)))
                    })
                    .unwrap_or(0);
                let label = token_label(n);
                token.init(&[&label])?;
                (
                    hex_id(&token.signer(&label)?.public_key()),
                    format!("{IN_TOKEN}{label}"),
                )
            }
        };
        for e in states.values_mut() {
            if e.state == KeyState::Active.as_str() {
                e.state = KeyState::Retiring.as_str().into();
            }
        }
        states.insert(
            id.clone(),
            Entry {
                state: KeyState::Active.as_str().into(),
                created_ms: now_ms,
                file,
            },
        );
        self.save(&states)?;
        Ok(id)
    }

    /// Deletes a retired or compromised key (its tokens stay refused: no key verifies them).
    pub fn destroy(&self, id: &str) -> anyhow::Result<()> {
        let mut states = self.states()?;
        let entry = states
            .get(id)
            .with_context(|| format!("no provisioning key {id} (see `gateway keys list`)"))?;
        let state = KeyState::parse(&entry.state).unwrap_or(KeyState::Active);
        if state.accepts_tokens() {
            bail!(
                "key {id} is {}: retire it (or mark it compromised) first",
                state.as_str()
            );
        }
        if entry.file == FIRST {
            bail!("key {id} is the first key ({FIRST}), which the key directory is built around; it stays retired");
        }
        let file = entry.file.clone();
        states.remove(id);
        self.save(&states)?;
        match file.strip_prefix(IN_TOKEN) {
            Some(label) => Ok(self.token_for(label)?.destroy(label)?),
            None => {
                let file = self.dir.join(file);
                std::fs::remove_file(&file).with_context(|| format!("removing {}", file.display()))
            }
        }
    }

    /// Retires a key or marks it compromised (its tokens are refused from then on).
    pub fn set_state(&self, id: &str, state: KeyState) -> anyhow::Result<()> {
        if state.accepts_tokens() {
            bail!("a key goes back into use only by rotation");
        }
        let mut states = self.states()?;
        let entry = states
            .get_mut(id)
            .with_context(|| format!("no provisioning key {id} (see `gateway keys list`)"))?;
        if entry.state == KeyState::Compromised.as_str() && state != KeyState::Compromised {
            bail!("key {id} is compromised: it stays so");
        }
        entry.state = state.as_str().into();
        self.save(&states)
    }
}
