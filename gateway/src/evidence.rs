//! The evidence bundle (`gateway evidence export|verify`): one tar archive an incident
//! responder hands on, with a manifest — the SHA-256 of every file — signed by the audit key
//! (a C2SP signed note). Inside: the audit log's export and a fresh checkpoint, the key
//! inventory (fingerprints, never keys), the configuration's hash, the peer table and
//! residency policy, and the certificates and CRLs in use. No address, credential, PIN or key.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context as _, bail, ensure};
use relay_core::auditlog::AuditSigner;

use crate::config::Settings;

/// The manifest's first line.
const MANIFEST_HEADER: &str = "rcs-relay evidence v1";
const MANIFEST: &str = "manifest.note";

fn sha256_hex(bytes: &[u8]) -> String {
    relay_core::hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// What the running gateway contributes: its audit export and a checkpoint it just signed.
#[derive(Debug)]
pub struct FromGateway {
    pub audit_export: String,
    pub checkpoint: String,
}

/// Collects the bundle's files and signs the manifest; returns the tar archive.
pub fn export(
    settings: &Settings,
    config_file: Option<&Path>,
    live: FromGateway,
    signer: &AuditSigner,
    now_ms: u64,
) -> anyhow::Result<Vec<u8>> {
    let config = &settings.config;
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    files.insert("audit.jsonl".into(), live.audit_export.into_bytes());
    files.insert("checkpoint.note".into(), live.checkpoint.into_bytes());
    let config_hash = match config_file {
        Some(p) => Some(sha256_hex(
            &std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
        )),
        None => None,
    };
    let json = |v: serde_json::Value| serde_json::to_vec_pretty(&v).expect("JSON values serialize");
    files.insert(
        "config.json".into(),
        json(serde_json::json!({
            "file": config_file.map(|p| p.display().to_string()),
            "sha256": config_hash,
            "exported_at_ms": now_ms,
        })),
    );
    files.insert("keys.json".into(), json(crate::custody::inventory(config)?));
    let mut certificates: Vec<(String, &Path)> = Vec::new();
    let dev_cert = config.data_dir.join("tls/dev-cert.pem");
    match (&config.tls.cert, &config.acme) {
        (Some(cert), _) => certificates.push(("client-listener.pem".into(), cert)),
        (None, None) => certificates.push(("client-listener.pem".into(), &dev_cert)),
        (None, Some(_)) => {}
    }
    let mut residency = serde_json::json!({ "interconnect": null });
    let peers_file;
    if let Some(ic) = &config.interconnect {
        certificates.push(("interconnect.pem".into(), &ic.cert));
        peers_file = interconnect::config::PeersFile::load(&ic.peers_file)?;
        let mut peers = Vec::new();
        for p in &peers_file.peers {
            certificates.push((format!("peer-{}-ca.pem", p.name), &p.ca));
            for (i, crl) in p.crls.iter().enumerate() {
                certificates.push((format!("peer-{}-crl-{i}.pem", p.name), crl));
            }
            peers.push(serde_json::json!({
                "name": p.name, "domain": p.domain, "endpoint": p.endpoint,
                "jurisdiction": p.jurisdiction, "prefixes": p.prefixes,
            }));
        }
        residency = serde_json::json!({
            "interconnect": {
                "domain": ic.domain, "jurisdiction": ic.jurisdiction,
                "local_prefixes": ic.local_prefixes, "allowed_jurisdictions": ic.allowed_jurisdictions,
                "peers": peers,
            }
        });
    }
    files.insert("residency.json".into(), json(residency));
    for (name, path) in certificates {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        files.insert(format!("certificates/{name}"), bytes);
    }
    let mut manifest = format!("{MANIFEST_HEADER}\n");
    for (name, bytes) in &files {
        manifest.push_str(&format!("{} {name}\n", sha256_hex(bytes)));
    }
    files.insert(MANIFEST.into(), signer.sign_note(&manifest)?.into_bytes());
    let mut tar = tar::Builder::new(Vec::new());
    for (name, bytes) in &files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(now_ms / 1000);
        header.set_cksum();
        tar.append_data(&mut header, name, bytes.as_slice())?;
    }
    Ok(tar.into_inner()?)
}

/// What `verify` proved.
#[derive(Debug)]
pub struct Verified {
    pub files: usize,
    pub audit: relay_core::auditlog::Verified,
}

/// Checks a bundle: the manifest's signature (audit verifier key `vkey`), every file's hash,
/// no file missing or added, and the audit log against the bundle's checkpoint.
pub fn verify(archive: &[u8], vkey: &str) -> anyhow::Result<Verified> {
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut tar = tar::Archive::new(archive);
    for entry in tar.entries().context("not a tar archive")? {
        let mut entry = entry.context("a damaged tar entry")?;
        let name = entry.path()?.to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes)?;
        ensure!(
            files.insert(name.clone(), bytes).is_none(),
            "{name} is in the archive twice"
        );
    }
    let note = files.remove(MANIFEST).context("no manifest.note in the archive")?;
    let manifest = relay_core::auditlog::open_note(std::str::from_utf8(&note)?, vkey)
        .map_err(|e| anyhow::anyhow!("the manifest is {e}"))?;
    let mut lines = manifest.lines();
    ensure!(
        lines.next() == Some(MANIFEST_HEADER),
        "not an rcs-relay evidence manifest"
    );
    let mut listed = 0;
    for line in lines {
        let (hash, name) = line.split_once(' ').context("a malformed manifest line")?;
        let bytes = files
            .get(name)
            .with_context(|| format!("{name} is in the manifest but not in the archive"))?;
        ensure!(
            sha256_hex(bytes) == hash,
            "{name} does not match the manifest (changed)"
        );
        listed += 1;
    }
    if listed != files.len() {
        let extra: Vec<&String> = files
            .keys()
            .filter(|n| !manifest.contains(&format!(" {n}\n")))
            .collect();
        bail!("not in the manifest (added): {extra:?}");
    }
    let text = |name: &str| -> anyhow::Result<String> {
        Ok(String::from_utf8(
            files.get(name).with_context(|| format!("no {name}"))?.clone(),
        )?)
    };
    let audit = crate::audit::parse_export(&text("audit.jsonl")?)?
        .verify(vkey, Some(&text("checkpoint.note")?))
        .map_err(|bad| anyhow::anyhow!("the audit log in the bundle does not verify: {bad}"))?;
    Ok(Verified { files: listed, audit })
}
