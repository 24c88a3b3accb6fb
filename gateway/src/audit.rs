//! Signed checkpoints of the audit log, and its export.
//!
//! Storage keeps the records as the leaves of an RFC 6962 Merkle tree (`relay_core::auditlog`);
//! the [`Checkpointer`] signs the tree head with the audit key (`keys/audit.key`, a C2SP
//! signed-note Ed25519 key whose name is the log's origin) and stores the checkpoint: once
//! `audit.checkpoint_every` records have been added since the last one, after every key
//! operation, when an operator asks (`gateway audit checkpoint`, to keep one), and at
//! shutdown. `gateway audit verify` checks an export against the verifier key
//! (`keys/audit.vkey`) and, optionally, an auditor's older checkpoint.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use relay_core::auditlog::AuditSigner;
use storage::Storage;
use storage::prelude::*;
use tokio_util::sync::CancellationToken;

/// Signs and stores checkpoints of one gateway's audit log.
#[derive(Debug)]
pub struct Checkpointer {
    store: Storage,
    signer: AuditSigner,
    every: u64,
    /// The size of the last checkpoint stored (0: none yet).
    last: AtomicU64,
    /// One checkpoint at a time.
    signing: tokio::sync::Mutex<()>,
}

impl Checkpointer {
    pub async fn new(store: Storage, signer: AuditSigner, every: u64) -> Result<Arc<Self>, storage::StoreError> {
        let last = store
            .audit_checkpoints()
            .await?
            .iter()
            .filter_map(|note| note.lines().nth(1)?.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        Ok(Arc::new(Self {
            store,
            signer,
            every: every.max(1),
            last: AtomicU64::new(last),
            signing: tokio::sync::Mutex::new(()),
        }))
    }

    /// Signs and stores a checkpoint of the log as it is now, unless the last one already
    /// covers every record; returns the signed note of the current head.
    pub async fn checkpoint_now(&self) -> anyhow::Result<String> {
        let _one = self.signing.lock().await;
        let head = self.store.audit_head().await?;
        let note = self.signer.checkpoint(head.size, head.root)?;
        if head.size > self.last.load(Ordering::Relaxed) {
            self.store.audit_add_checkpoint(head.size, note.clone()).await?;
            self.last.store(head.size, Ordering::Relaxed);
            metrics::counter!("relay_audit_checkpoints_total").increment(1);
            tracing::debug!(size = head.size, "audit checkpoint signed");
        }
        Ok(note)
    }

    /// Checkpoints every `checkpoint_every` records (checked each second), and once more at
    /// shutdown.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        metrics::counter!("relay_audit_checkpoints_total").increment(0);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            match self.store.audit_head().await {
                Ok(head) if head.size >= self.last.load(Ordering::Relaxed) + self.every => {
                    if let Err(e) = self.checkpoint_now().await {
                        tracing::error!(cause = %format!("{e:#}"), "could not checkpoint the audit log");
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(cause = %e, "reading the audit log's head"),
            }
        }
        if let Err(e) = self.checkpoint_now().await {
            tracing::error!(cause = %format!("{e:#}"), "could not checkpoint the audit log at shutdown");
        }
    }

    /// The whole log for an auditor or a SIEM: one JSON object per line, every record
    /// (`"type":"record"`: seq, at_ms, kind, detail, chain) then every checkpoint
    /// (`"type":"checkpoint"`: the signed note).
    pub async fn export(&self) -> Result<String, storage::StoreError> {
        let mut out = String::new();
        for r in self.store.audit_log().await? {
            let line = serde_json::json!({
                "type": "record",
                "seq": r.seq,
                "at_ms": r.at_ms,
                "kind": r.kind,
                "detail": r.detail,
                "chain": relay_core::hex::encode(&r.hash),
            });
            out.push_str(&format!("{line}\n"));
        }
        for note in self.store.audit_checkpoints().await? {
            out.push_str(&format!(
                "{}\n",
                serde_json::json!({ "type": "checkpoint", "note": note })
            ));
        }
        Ok(out)
    }
}

/// The admin listener's audit routes: `GET /admin/audit` (the records, JSON lines),
/// `GET /admin/audit/export` (records and checkpoints) and `POST /admin/audit/checkpoint`
/// (sign the current head now; answers the signed note, for an auditor to keep).
pub(crate) fn routes(checkpointer: Arc<Checkpointer>) -> axum::Router {
    use axum::response::IntoResponse as _;
    let failed = |e: String| (http::StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response();
    let jsonl = |body: String| ([(http::header::CONTENT_TYPE, "application/jsonl")], body).into_response();
    let records = {
        let c = Arc::clone(&checkpointer);
        move || {
            let c = Arc::clone(&c);
            async move {
                match c.store.audit_log().await {
                    Ok(records) => jsonl(
                        records
                            .iter()
                            .map(|r| {
                                let line = serde_json::json!({
                                    "seq": r.seq,
                                    "at_ms": r.at_ms,
                                    "kind": r.kind,
                                    "detail": r.detail,
                                    "hash": relay_core::hex::encode(&r.hash),
                                });
                                format!("{line}\n")
                            })
                            .collect(),
                    ),
                    Err(e) => failed(e.to_string()),
                }
            }
        }
    };
    let export = {
        let c = Arc::clone(&checkpointer);
        move || {
            let c = Arc::clone(&c);
            async move { c.export().await.map_or_else(|e| failed(e.to_string()), jsonl) }
        }
    };
    let checkpoint = move || {
        let c = Arc::clone(&checkpointer);
        async move {
            match c.checkpoint_now().await {
                Ok(note) => note.into_response(),
                Err(e) => failed(format!("{e:#}")),
            }
        }
    };
    axum::Router::new()
        .route("/admin/audit", axum::routing::get(records))
        .route("/admin/audit/export", axum::routing::get(export))
        .route("/admin/audit/checkpoint", axum::routing::post(checkpoint))
}

/// An export read back: records and checkpoints.
pub fn parse_export(text: &str) -> anyhow::Result<(Vec<relay_core::auditlog::Record>, Vec<String>)> {
    use anyhow::Context as _;
    let mut records = Vec::new();
    let mut checkpoints = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("line {}: not JSON", n + 1))?;
        let field = |name: &str| v[name].as_str().with_context(|| format!("line {}: no {name}", n + 1));
        match v["type"].as_str() {
            Some("checkpoint") => checkpoints.push(field("note")?.to_owned()),
            Some("record") => records.push(relay_core::auditlog::Record {
                seq: v["seq"].as_u64().with_context(|| format!("line {}: no seq", n + 1))?,
                at_ms: v["at_ms"]
                    .as_u64()
                    .with_context(|| format!("line {}: no at_ms", n + 1))?,
                kind: field("kind")?.to_owned(),
                detail: field("detail")?.to_owned(),
                chain: relay_core::hex::decode(field("chain")?)
                    .and_then(|b| b.try_into().ok())
                    .with_context(|| format!("line {}: chain is not 32 bytes of hex", n + 1))?,
            }),
            _ => anyhow::bail!("line {}: unknown type", n + 1),
        }
    }
    Ok((records, checkpoints))
}
