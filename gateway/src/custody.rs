//! Key custody for operators: the inventory of every provider key (`gateway keys list`, the
//! evidence bundle) and `gateway keys init`, which prepares a PKCS#11 token.

use anyhow::Context as _;
use relay_keys::token::{AUDIT, KEK};
use storage::prelude::*;

use crate::config::Config;

/// Every provider key: name, class, what holds it, a fingerprint (never the key), when its
/// file last changed; for keys inside a PKCS#11 token, the attributes that prove custody.
pub fn inventory(config: &Config) -> anyhow::Result<serde_json::Value> {
    let dir = crate::keys::key_dir(&config.data_dir);
    let provider = relay_keys::Provider::open(&config.keys).context("opening the key provider")?;
    let mut keys = Vec::new();
    let mut entries: Vec<_> = match std::fs::read_dir(&dir) {
        Ok(it) => it.collect::<Result<_, _>>()?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for e in entries {
        let file = e.file_name().to_string_lossy().into_owned();
        let (name, sealed) = match file.strip_suffix(".sealed") {
            Some(n) => (n.to_owned(), true),
            None => (file.clone(), false),
        };
        let (class, public) = match name.as_str() {
            "rid.key" => ("K_rid (recipient hashes)", None),
            n if n.starts_with("rid-") && n.ends_with(".key") => ("K_rid (recipient hashes)", None),
            "outbox.key" => ("interconnect outbox sealing", None),
            n if n.starts_with("outbox-") && n.ends_with(".key") => ("interconnect outbox sealing", None),
            "provisioning.pk8" => ("provisioning signing (first key)", Some("provisioning.pub")),
            n if n.starts_with("provisioning-") && n.ends_with(".pk8") => ("provisioning signing", None),
            "audit.key" => ("audit signing", None),
            n if n.starts_with("audit-") && n.ends_with(".key") => ("audit signing", None),
            "acme-account.json" => ("ACME account", None),
            _ => continue,
        };
        let bytes = std::fs::read(e.path()).with_context(|| format!("reading {file}"))?;
        let fingerprint = match (public, sealed) {
            (_, true) => {
                relay_keys::token::sealed_fingerprint(&bytes).with_context(|| format!("{file} is not a sealed key"))?
            }
            (Some(p), false) => {
                relay_keys::fingerprint(&std::fs::read(dir.join(p)).with_context(|| format!("reading {p}"))?)
            }
            (None, false) => relay_keys::fingerprint(&bytes),
        };
        let held_by = if sealed {
            format!("sealed under {KEK}")
        } else {
            "file (0600)".to_owned()
        };
        let mut entry = serde_json::json!({
            "name": name, "class": class, "held_by": held_by,
            "fingerprint": fingerprint, "modified_ms": modified_ms(&e)?,
        });
        if name == "audit.key" || name.starts_with("audit-") {
            let audit = crate::audit_keys::states(&dir)?;
            let v: u32 = name
                .strip_prefix("audit-")
                .and_then(|n| n.strip_suffix(".key")?.parse().ok())
                .unwrap_or(0);
            if let Some(s) = audit.versions.get(&v) {
                entry["version"] = v.into();
                entry["state"] = s.state.clone().into();
                entry["created_ms"] = created_or(s.created_ms, &e.path()).into();
                entry["current"] = (audit.current == v).into();
            }
        }
        let ring_base = [interconnect::record::KEY_RING, crate::keys::RID_RING]
            .into_iter()
            .find(|b| name == format!("{b}.key") || name.starts_with(&format!("{b}-")));
        if let Some(base) = ring_base {
            let ring = relay_keys::ring::states(&dir, base)?;
            let v: u8 = name
                .strip_prefix(&format!("{base}-"))
                .and_then(|n| n.strip_suffix(".key")?.parse().ok())
                .unwrap_or(0);
            if let Some(s) = ring.versions.get(&v) {
                entry["version"] = v.into();
                entry["state"] = s.state.clone().into();
                entry["created_ms"] = s.created_ms.into();
                entry["current"] = (ring.current == v).into();
            }
        }
        keys.push(entry);
    }
    if let Some(token) = provider.token() {
        let audit = crate::audit_keys::states(&dir)?;
        let mut labels = vec![(KEK.to_owned(), "key-encryption key (seals the symmetric keys)", None)];
        for (v, s) in &audit.versions {
            labels.push((crate::audit_keys::token_label(*v), "audit signing", Some((*v, s))));
        }
        let provisioning_labels = provisioning_in_token(&dir);
        for (label, class, version) in labels {
            let custody = token.custody(&label)?;
            let fingerprint = match version {
                Some(_) if custody.is_some() => Some(relay_keys::fingerprint(&token.signer(&label)?.public_key())),
                _ => None,
            };
            let mut entry = serde_json::json!({
                "name": label, "class": class, "held_by": format!("PKCS#11 token {:?}", token.label()),
                "fingerprint": fingerprint, "custody": custody,
            });
            if let Some((v, s)) = version {
                entry["version"] = v.into();
                entry["state"] = s.state.clone().into();
                entry["created_ms"] = created_or(s.created_ms, &dir.join("audit.vkey")).into();
            }
            keys.push(entry);
        }
        for (label, created_ms) in provisioning_labels {
            keys.push(serde_json::json!({
                "name": label, "class": "provisioning signing",
                "held_by": format!("PKCS#11 token {:?}", token.label()),
                "fingerprint": relay_keys::fingerprint(&token.signer(&label)?.public_key()),
                "custody": token.custody(&label)?, "created_ms": created_ms,
            }));
        }
    }
    keys.extend(certificate_keys(config));
    for k in &mut keys {
        let class = k["class"].as_str().unwrap_or_default();
        let cadence_days: Option<u64> = match class {
            c if c.starts_with("provisioning") => Some(90),
            c if c.starts_with("interconnect outbox") => Some(180),
            c if c.starts_with("audit") => Some(365),
            _ => None,
        };
        let created = k["created_ms"]
            .as_u64()
            .filter(|&c| c > 0)
            .or_else(|| k["modified_ms"].as_u64());
        if let (Some(days), Some(created), None) = (cadence_days, created, k.get("rotate_by_ms")) {
            k["rotate_by_ms"] = (created + days * 86_400_000).into();
        }
    }
    Ok(serde_json::json!({ "provider": provider.kind(), "keys": keys }))
}

fn modified_ms(e: &std::fs::DirEntry) -> anyhow::Result<u64> {
    Ok(e.metadata()?
        .modified()?
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64))
}

/// `gateway keys init`: creates in the token what is missing (the key-encryption key, the
/// audit key), seals the gateway's clear symmetric keys, and writes the audit verifier key.
/// Checks first, so a refusal leaves nothing half-created.
pub fn init(config: &Config) -> anyhow::Result<Vec<String>> {
    anyhow::ensure!(
        config.keys.provider == relay_keys::ProviderKind::Pkcs11,
        "`gateway keys init` prepares a PKCS#11 token: set [keys] provider = \"pkcs11\" (the file provider creates its keys at first start)"
    );
    let dir = crate::keys::key_dir(&config.data_dir);
    let audit_file = dir.join("audit.key");
    anyhow::ensure!(
        !audit_file.exists(),
        "{} is a file audit key: this data directory's log is signed by it, so its signer cannot move into the token",
        audit_file.display()
    );
    let provider = relay_keys::Provider::open(&config.keys).context("opening the key provider")?;
    crate::keys::create_private_dir(&dir)?;
    let names: Vec<String> = crate::keys::SYMMETRIC_KEYS.iter().map(|&n| n.to_owned()).collect();
    let mut done = provider.init(&dir, &[AUDIT], &names)?;
    if config.registration.provisioning_public_key.is_none() {
        let now = relay_net::clock::now_ms();
        let had = std::fs::read_to_string(dir.join("provisioning-keys.json")).unwrap_or_default();
        let keys = crate::provisioning_keys::ProvisioningKeys::open(&dir, &provider, now)?;
        if keys.signer_is_a_file()? {
            let id = keys.rotate(now)?;
            done.push(format!(
                "provisioning:{id} created in the token and active; the file key is retiring (retire it once its tokens are used)"
            ));
        } else if had.is_empty() {
            done.push("created rcs-relay-provisioning-0 in the token (provisioning signing)".to_owned());
        }
    }
    if !dir.join("audit.vkey").exists() {
        crate::keys::audit_signer(&dir, &provider)?;
        done.push(format!("wrote {}", dir.join("audit.vkey").display()));
    }
    if done.is_empty() {
        done.push(format!(
            "token {:?} is ready; nothing to do",
            config.keys.token_label.as_deref().unwrap_or("")
        ));
    }
    Ok(done)
}

/// `gateway keys prove-custody`: asks the token to wrap each of its keys out under a fresh
/// session key; one line per key with the token's answer. An error if any key left.
pub fn prove(config: &Config) -> anyhow::Result<Vec<String>> {
    let provider = relay_keys::Provider::open(&config.keys).context("opening the key provider")?;
    let token = provider
        .token()
        .context("the file provider keeps its keys in files: there is no token to prove custody with")?;
    let mut lines = Vec::new();
    let dir = crate::keys::key_dir(&config.data_dir);
    let mut labels = vec![KEK.to_owned()];
    labels.extend(
        crate::audit_keys::states(&dir)?
            .versions
            .keys()
            .map(|&v| crate::audit_keys::token_label(v)),
    );
    labels.extend(provisioning_token_labels(&dir));
    for label in &labels {
        match token.try_wrap_out(label) {
            Ok(wrapped) => anyhow::bail!(
                "{label} LEFT the token {:?}: it wrapped out as {} bytes; the key is not held (see `gateway keys list`)",
                token.label(),
                wrapped.len()
            ),
            Err(relay_keys::KeyError::Pkcs11 {
                op: "C_WrapKey",
                reason,
            }) => {
                lines.push(format!("{label}: the token refused to wrap it out ({reason})"));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(lines)
}

/// The labels of the provisioning keys held in the token (`provisioning-keys.json`).
fn provisioning_token_labels(dir: &std::path::Path) -> Vec<String> {
    provisioning_in_token(dir).into_iter().map(|(label, _)| label).collect()
}

/// The provisioning keys held in the token, with their creation times.
fn provisioning_in_token(dir: &std::path::Path) -> Vec<(String, u64)> {
    let states: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("provisioning-keys.json")).unwrap_or_default())
            .unwrap_or_default();
    states
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(_, e)| {
            let label = e["file"].as_str()?.strip_prefix("token:")?.to_owned();
            Some((label, e["created_ms"].as_u64().unwrap_or(0)))
        })
        .collect()
}

/// `created_ms`, or where it is unknown (0: a key from before versions were recorded) the
/// modification time of `file`.
fn created_or(created_ms: u64, file: &std::path::Path) -> u64 {
    if created_ms > 0 {
        return created_ms;
    }
    std::fs::metadata(file)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

/// Records in the audit log each sealed key the provider created or unsealed at start
/// (`key.create`, `key.unseal`).
pub(crate) async fn audit_key_events(store: &storage::Storage, provider: &relay_keys::Provider) -> anyhow::Result<()> {
    let Some(token) = provider.token() else {
        return Ok(());
    };
    for e in provider.take_events() {
        let detail = format!(
            "key={} provider=pkcs11 token={} fingerprint={}",
            e.name,
            token.label(),
            e.fingerprint
        );
        store
            .audit_append(e.kind, detail, relay_net::clock::now_ms())
            .await
            .context("recording a key unseal in the audit log")?;
    }
    Ok(())
}

/// When each class's current key was created (ms since the Unix epoch), from the key
/// directory's state files (a key from before they existed: its file's modification time).
pub fn key_created(dir: &std::path::Path) -> Vec<(&'static str, u64)> {
    let mtime = |name: &str| {
        std::fs::metadata(dir.join(name))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as u64)
    };
    let mut out = Vec::new();
    if let Some(t) = mtime("rid.key").or_else(|| mtime("rid.key.sealed")) {
        out.push(("rid", t));
    }
    if let Ok(ring) = relay_keys::ring::states(dir, interconnect::record::KEY_RING) {
        let file = relay_keys::ring::file_name(interconnect::record::KEY_RING, ring.current);
        let created = ring.versions.get(&ring.current).map_or(0, |v| v.created_ms);
        if let Some(t) = Some(created)
            .filter(|&c| c > 0)
            .or_else(|| mtime(&file).or_else(|| mtime(&format!("{file}.sealed"))))
        {
            out.push(("outbox", t));
        }
    }
    if let Ok(audit) = crate::audit_keys::states(dir) {
        let created = audit.versions.get(&audit.current).map_or(0, |v| v.created_ms);
        if let Some(t) = Some(created).filter(|&c| c > 0).or_else(|| mtime("audit.vkey")) {
            out.push(("audit", t));
        }
    }
    let provisioning: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("provisioning-keys.json")).unwrap_or_default())
            .unwrap_or_default();
    let newest_active = provisioning
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, e)| e["state"] == "active")
        .filter_map(|(_, e)| e["created_ms"].as_u64())
        .max();
    if let Some(t) = newest_active {
        out.push(("provisioning", t));
    }
    out
}

/// `relay_key_age_seconds{class}`: how old each class's current key is (rotation cadence).
pub fn set_key_ages(dir: &std::path::Path, now_ms: u64) {
    for (class, created) in key_created(dir) {
        metrics::gauge!("relay_key_age_seconds", "class" => class).set(now_ms.saturating_sub(created) as f64 / 1000.0);
    }
}

/// The TLS and interconnect certificates' keys: where they are, the certificate's SHA-256
/// (their fingerprint), when it was issued and when it must be replaced (notAfter).
fn certificate_keys(config: &Config) -> Vec<serde_json::Value> {
    let dev = (
        config.data_dir.join("tls/dev-cert.pem"),
        config.data_dir.join("tls/dev-key.pem"),
    );
    let mut pairs = vec![(
        "TLS certificate key (client listener)",
        match (&config.tls.cert, &config.tls.key, &config.acme) {
            (Some(c), Some(k), _) => (c.clone(), k.clone()),
            (_, _, Some(_)) => {
                let acme = crate::tls::acme_dir(&config.data_dir);
                (acme.join("cert.pem"), acme.join("key.pem"))
            }
            _ => dev,
        },
    )];
    if let Some(ic) = &config.interconnect {
        pairs.push((
            "interconnect certificate key (mutual TLS)",
            (ic.cert.clone(), ic.key.clone()),
        ));
    }
    let mut out = Vec::new();
    for (class, (cert, key)) in pairs {
        let Ok(chain) = relay_net::pem::load_certs(&cert) else {
            continue;
        };
        let Some(leaf) = chain.first() else { continue };
        let info = relay_net::acme::cert_info(leaf);
        out.push(serde_json::json!({
            "name": key.display().to_string(), "class": class, "held_by": "file (PEM)",
            "fingerprint": relay_core::hex::encode(ring::digest::digest(&ring::digest::SHA256, leaf.as_ref()).as_ref())[..32].to_owned(),
            "created_ms": info.as_ref().map(|i| i.not_before.max(0) as u64 * 1000),
            "rotate_by_ms": info.as_ref().map(|i| i.not_after.max(0) as u64 * 1000),
        }));
    }
    out
}
