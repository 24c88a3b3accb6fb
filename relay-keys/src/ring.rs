//! Versioned symmetric keys: a key ring per class (the interconnect outbox key), so a key can
//! be rotated while records sealed under the old one stay readable until it is retired.
//!
//! Version 0 is `BASE.key` (the key from before rotation existed), version `v` is
//! `BASE-v.key` (each sealed as `….sealed` under a PKCS#11 provider); `BASE-keys.json` holds the
//! current version and each version's state and creation time. A missing state file means
//! version 0, current and active.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{KeyError, Provider, Secret};

pub const ACTIVE: &str = "active";
pub const RETIRING: &str = "retiring";
pub const RETIRED: &str = "retired";
pub const COMPROMISED: &str = "compromised";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionState {
    pub state: String,
    pub created_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct States {
    pub current: u8,
    pub versions: BTreeMap<u8, VersionState>,
}

/// The keys of a ring that open records: every version not retired.
#[derive(Debug)]
pub struct Ring {
    pub current: u8,
    pub keys: Vec<(u8, Secret)>,
}

impl Ring {
    pub fn key(&self, version: u8) -> Option<&Secret> {
        self.keys.iter().find(|(v, _)| *v == version).map(|(_, k)| k)
    }
}

/// The file name of `base`'s version `v` (before sealing).
pub fn file_name(base: &str, v: u8) -> String {
    if v == 0 {
        format!("{base}.key")
    } else {
        format!("{base}-{v}.key")
    }
}

fn states_path(dir: &Path, base: &str) -> std::path::PathBuf {
    dir.join(format!("{base}-keys.json"))
}

/// The ring's states (version 0 current and active if the file is missing).
pub fn states(dir: &Path, base: &str) -> Result<States, KeyError> {
    let path = states_path(dir, base);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| KeyError::Bad {
            path,
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(States {
            current: 0,
            versions: BTreeMap::from([(
                0,
                VersionState {
                    state: ACTIVE.into(),
                    created_ms: 0,
                },
            )]),
        }),
        Err(e) => Err(KeyError::io(&path)(e)),
    }
}

fn save(dir: &Path, base: &str, states: &States) -> Result<(), KeyError> {
    let bytes = serde_json::to_vec_pretty(states).map_err(|e| KeyError::Bad {
        path: states_path(dir, base),
        reason: e.to_string(),
    })?;
    crate::files::write_durable(&states_path(dir, base), &bytes)
}

impl Provider {
    /// The ring `base` in `dir` (its first key created if missing).
    pub fn ring(&self, dir: &Path, base: &str) -> Result<Ring, KeyError> {
        let states = states(dir, base)?;
        let mut keys = Vec::new();
        for (&v, s) in &states.versions {
            if s.state == RETIRED {
                continue;
            }
            let create = v == states.current;
            match self.secret(dir, &file_name(base, v), create)? {
                Some(k) => keys.push((v, k)),
                None => {
                    return Err(KeyError::Bad {
                        path: self.path(dir, &file_name(base, v)),
                        reason: format!("version {v} is {} but its key is missing", s.state),
                    });
                }
            }
        }
        Ok(Ring {
            current: states.current,
            keys,
        })
    }

    /// A new current version of `base`; the previous current one becomes retiring (it still
    /// opens what it sealed). Returns the new version.
    pub fn rotate_ring(&self, dir: &Path, base: &str, now_ms: u64) -> Result<u8, KeyError> {
        let mut states = states(dir, base)?;
        let next = states
            .versions
            .keys()
            .max()
            .copied()
            .unwrap_or(0)
            .checked_add(1)
            .ok_or_else(|| KeyError::Bad {
                path: states_path(dir, base),
                reason: "255 versions: no more rotations".into(),
            })?;
        self.secret(dir, &file_name(base, next), true)?;
        if let Some(s) = states.versions.get_mut(&states.current)
            && s.state == ACTIVE
        {
            s.state = RETIRING.into();
        }
        states.versions.insert(
            next,
            VersionState {
                state: ACTIVE.into(),
                created_ms: now_ms,
            },
        );
        states.current = next;
        save(dir, base, &states)?;
        Ok(next)
    }
}

/// Sets version `v` of `base` retired or compromised (the current version cannot be: rotate
/// first). A retired version no longer opens anything; a compromised one still opens what it
/// sealed (so nothing queued is lost) but never seals again.
pub fn set_state(dir: &Path, base: &str, v: u8, state: &str) -> Result<(), KeyError> {
    let mut states = states(dir, base)?;
    let bad = |reason: String| KeyError::Bad {
        path: states_path(dir, base),
        reason,
    };
    if states.current == v {
        return Err(bad(format!("{base}:{v} is the current key: rotate first")));
    }
    let s = states
        .versions
        .get_mut(&v)
        .ok_or_else(|| bad(format!("no version {v} of {base} (see `gateway keys list`)")))?;
    if s.state == RETIRED {
        return Err(bad(format!("{base}:{v} is already retired")));
    }
    if s.state == COMPROMISED && state == RETIRED {
        // A compromised key may be retired once nothing needs it.
    } else if s.state == COMPROMISED {
        return Err(bad(format!("{base}:{v} is already compromised")));
    }
    s.state = state.to_owned();
    save(dir, base, &states)
}
