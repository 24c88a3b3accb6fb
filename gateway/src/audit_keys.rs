//! The audit log's signing keys, with rotation: version 0 is `keys/audit.key` (or, under a
//! PKCS#11 provider, the token's `rcs-relay-audit`); version `v` is `keys/audit-v.key` (or
//! `rcs-relay-audit-v`). Every version signs for the same log (the same origin), so
//! `keys/audit.vkey` holds one verifier key per line, oldest first, and a checkpoint verifies
//! if any of them signed it. `keys/audit-keys.json` holds the current version, each
//! version's state, and whether the handover checkpoint — signed by the outgoing and the
//! incoming key — is still to be made (the running gateway makes it on reload, or at start).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use rand::RngCore as _;
use relay_core::auditlog::AuditSigner;
use serde::{Deserialize, Serialize};

const STATES: &str = "audit-keys.json";
const VKEY: &str = "audit.vkey";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Version {
    pub state: String,
    pub created_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct States {
    pub current: u32,
    pub versions: BTreeMap<u32, Version>,
    /// The previous version, until the handover checkpoint is signed.
    pub handover_from: Option<u32>,
}

pub fn states(dir: &Path) -> anyhow::Result<States> {
    let path = dir.join(STATES);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).with_context(|| format!("parsing {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(States {
            current: 0,
            versions: BTreeMap::from([(
                0,
                Version {
                    state: "active".into(),
                    created_ms: 0,
                },
            )]),
            handover_from: None,
        }),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn save(dir: &Path, states: &States) -> anyhow::Result<()> {
    crate::keyfile::write_durable(&dir.join(STATES), &serde_json::to_vec_pretty(states)?)
}

fn file_name(v: u32) -> String {
    if v == 0 {
        "audit.key".into()
    } else {
        format!("audit-{v}.key")
    }
}

/// The token label of version `v`.
pub fn token_label(v: u32) -> String {
    if v == 0 {
        relay_keys::token::AUDIT.into()
    } else {
        format!("{}-{v}", relay_keys::token::AUDIT)
    }
}

/// The log's origin: the name in the verifier keys (a new one if there is none yet).
fn origin(dir: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(dir.join(VKEY)) {
        Ok(text) => Ok(text.lines().next().and_then(|l| l.split('+').next()).map(str::to_owned)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).context("reading audit.vkey"),
    }
}

fn append_vkey(dir: &Path, vkey: &str) -> anyhow::Result<()> {
    let mut text = std::fs::read_to_string(dir.join(VKEY)).unwrap_or_default();
    text.push_str(vkey.trim());
    text.push('\n');
    crate::keyfile::write_durable(&dir.join(VKEY), text.as_bytes())
}

/// The signer of version `v`, created if it is version 0 and missing (first start).
pub fn signer(dir: &Path, provider: &relay_keys::Provider, v: u32) -> anyhow::Result<AuditSigner> {
    crate::keyfile::create_private_dir(dir)?;
    let Some(token) = provider.token() else {
        let path = dir.join(file_name(v));
        return match std::fs::read_to_string(&path) {
            Ok(skey) => AuditSigner::new(&skey).with_context(|| format!("loading {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && v == 0 => {
                let origin = origin(dir)?.unwrap_or_else(new_origin);
                let (skey, vkey) = relay_core::auditlog::generate_key(&origin);
                // The verifier key first: a power cut between the two leaves no signer without it.
                append_vkey(dir, &vkey)?;
                crate::keyfile::write_private(&path, skey.as_bytes())?;
                AuditSigner::new(&skey).with_context(|| format!("loading {}", path.display()))
            }
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        };
    };
    let file = dir.join("audit.key");
    anyhow::ensure!(
        !file.exists(),
        "{} is a file audit key while the provider is pkcs11: the log's signer cannot change silently (keep the file provider, or start a new data directory on the token)",
        file.display()
    );
    let label = token_label(v);
    let key = token.signer(&label)?;
    let public_key = key.public_key();
    let origin = match origin(dir)? {
        Some(origin) => {
            let vkey = relay_core::auditlog::verifier_key(&origin, &public_key);
            let listed = std::fs::read_to_string(dir.join(VKEY)).unwrap_or_default();
            anyhow::ensure!(
                listed.lines().any(|l| l.trim() == vkey),
                "{} does not list the audit key {label} in token {:?}: another token, or the key was replaced",
                dir.join(VKEY).display(),
                token.label()
            );
            origin
        }
        None => {
            let origin = new_origin();
            append_vkey(dir, &relay_core::auditlog::verifier_key(&origin, &public_key))?;
            origin
        }
    };
    let sign: relay_core::auditlog::SignFn =
        std::sync::Arc::new(move |msg: &[u8]| key.sign(msg).map_err(|e| e.to_string()));
    Ok(AuditSigner::external(&origin, &public_key, sign))
}

fn new_origin() -> String {
    format!("rcs-relay/audit/{:08x}", rand::rng().next_u32())
}

/// The current signer.
pub fn current(dir: &Path, provider: &relay_keys::Provider) -> anyhow::Result<AuditSigner> {
    signer(dir, provider, states(dir)?.current)
}

/// A new audit key (in the token under a PKCS#11 provider), listed in `audit.vkey`; the
/// current one becomes retiring and a handover is due. Returns the new version.
pub fn rotate(dir: &Path, provider: &relay_keys::Provider, now_ms: u64) -> anyhow::Result<u32> {
    let mut st = states(dir)?;
    let old = current(dir, provider)?;
    let v = st.versions.keys().max().copied().unwrap_or(0) + 1;
    let vkey = match provider.token() {
        None => {
            let (skey, vkey) = relay_core::auditlog::generate_key(old.origin());
            crate::keyfile::write_private(&dir.join(file_name(v)), skey.as_bytes())?;
            vkey
        }
        Some(token) => {
            let label = token_label(v);
            token.init(&[&label])?;
            relay_core::auditlog::verifier_key(old.origin(), &token.signer(&label)?.public_key())
        }
    };
    append_vkey(dir, &vkey)?;
    if let Some(s) = st.versions.get_mut(&st.current) {
        s.state = "retiring".into();
    }
    st.versions.insert(
        v,
        Version {
            state: "active".into(),
            created_ms: now_ms,
        },
    );
    st.handover_from = Some(st.current);
    st.current = v;
    save(dir, &st)?;
    Ok(v)
}

/// The (outgoing, incoming) signers of a handover still to be signed.
pub fn pending_handover(
    dir: &Path,
    provider: &relay_keys::Provider,
) -> anyhow::Result<Option<(u32, AuditSigner, u32, AuditSigner)>> {
    let st = states(dir)?;
    let Some(from) = st.handover_from else {
        return Ok(None);
    };
    Ok(Some((
        from,
        signer(dir, provider, from)?,
        st.current,
        signer(dir, provider, st.current)?,
    )))
}

/// Records that the handover checkpoint was signed.
pub fn handover_done(dir: &Path) -> anyhow::Result<()> {
    let mut st = states(dir)?;
    st.handover_from = None;
    save(dir, &st)
}
