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

use anyhow::Context as _;
use relay_core::auditlog::AuditSigner;
use storage::Storage;
use storage::prelude::*;
use tokio_util::sync::CancellationToken;

/// Signs and stores checkpoints of one gateway's audit log.
#[derive(Debug)]
pub struct Checkpointer {
    store: Storage,
    /// The current audit key, replaced at a rotation's handover.
    signer: std::sync::RwLock<Arc<AuditSigner>>,
    /// Where the audit keys are, to complete a rotation ([`crate::audit_keys`]).
    keys: (std::path::PathBuf, relay_keys::Provider),
    every: u64,
    /// The size of the last checkpoint stored (0: none yet).
    last: AtomicU64,
    /// One checkpoint at a time.
    signing: tokio::sync::Mutex<()>,
    /// Records older than this are pruned behind a checkpoint.
    retention: Option<Duration>,
}

impl Checkpointer {
    pub async fn new(
        store: Storage,
        (signer, key_dir, provider): (AuditSigner, std::path::PathBuf, relay_keys::Provider),
        every: u64,
        retention: Option<Duration>,
    ) -> Result<Arc<Self>, storage::StoreError> {
        let last = store
            .audit_checkpoints()
            .await?
            .iter()
            .filter_map(|note| note.lines().nth(1)?.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        Ok(Arc::new(Self {
            store,
            signer: std::sync::RwLock::new(Arc::new(signer)),
            keys: (key_dir, provider),
            every: every.max(1),
            retention,
            last: AtomicU64::new(last),
            signing: tokio::sync::Mutex::new(()),
        }))
    }

    fn signer(&self) -> Arc<AuditSigner> {
        Arc::clone(&self.signer.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Completes an audit-key rotation ([`crate::audit_keys::rotate`]) if one is due: records
    /// `key.rotate`, signs a checkpoint with both the outgoing and the incoming key, and signs
    /// with the incoming one from then on. Returns the new version.
    pub async fn hand_over_if_due(&self) -> anyhow::Result<Option<u32>> {
        let (dir, provider) = &self.keys;
        let Some((from, old, to, new)) = crate::audit_keys::pending_handover(dir, provider)? else {
            return Ok(None);
        };
        let _one = self.signing.lock().await;
        self.store
            .audit_append(
                "key.rotate",
                format!("audit from={from} to={to}"),
                relay_net::clock::now_ms(),
            )
            .await?;
        let head = self.store.audit_head().await?;
        let note = old.handover(&new, head.size, head.root)?;
        self.store.audit_add_checkpoint(head.size, note).await?;
        self.last.store(head.size, Ordering::Relaxed);
        *self.signer.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(new);
        crate::audit_keys::handover_done(dir)?;
        tracing::warn!(
            from,
            to,
            size = head.size,
            "audit key rotated: handover checkpoint signed by both keys"
        );
        Ok(Some(to))
    }

    /// Signs and stores a checkpoint of the log as it is now, unless the last one already
    /// covers every record; returns the signed note of the current head.
    pub async fn checkpoint_now(&self) -> anyhow::Result<String> {
        let _one = self.signing.lock().await;
        let head = self.store.audit_head().await?;
        let note = self.signer().checkpoint(head.size, head.root)?;
        if head.size > self.last.load(Ordering::Relaxed) {
            self.store.audit_add_checkpoint(head.size, note.clone()).await?;
            self.last.store(head.size, Ordering::Relaxed);
            metrics::counter!("relay_audit_checkpoints_total").increment(1);
            tracing::debug!(size = head.size, "audit checkpoint signed");
        }
        Ok(note)
    }

    /// Prunes the records older than the retention period: first a signed checkpoint at the
    /// last of them (so the rest stays provable), then storage drops them and keeps the base.
    /// Returns how many records the log starts after.
    pub async fn prune_expired(&self) -> anyhow::Result<Option<u64>> {
        let Some(keep) = self.retention else {
            return Ok(None);
        };
        let cutoff = relay_net::clock::now_ms().saturating_sub(keep.as_millis() as u64);
        let records = self.store.audit_log().await?;
        let Some(upto) = records.iter().take_while(|r| r.at_ms < cutoff).last().map(|r| r.seq) else {
            return Ok(None);
        };
        let mut frontier = match self.store.audit_base().await? {
            Some(b) => relay_core::auditlog::Frontier::decode(&b.frontier).context("the audit base")?,
            None => relay_core::auditlog::Frontier::default(),
        };
        for r in records.iter().take_while(|r| r.seq <= upto) {
            frontier.push(relay_core::auditlog::leaf_hash(r.seq, r.at_ms, &r.kind, &r.detail));
        }
        let note = self.signer().checkpoint(upto, frontier.root())?;
        self.store.audit_add_checkpoint(upto, note).await?;
        if self.store.audit_prune(upto).await?.is_some() {
            let detail = format!(
                "records 1..={upto} older than {} s pruned behind the checkpoint at {upto}",
                keep.as_secs()
            );
            self.store
                .audit_append("audit.prune", detail, relay_net::clock::now_ms())
                .await?;
            tracing::info!(upto, "audit records pruned behind a checkpoint");
        }
        Ok(Some(upto))
    }

    /// Checkpoints every `checkpoint_every` records (checked each second), prunes past the
    /// retention period, and checkpoints once more at shutdown.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        metrics::counter!("relay_audit_checkpoints_total").increment(0);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Pruning reads the whole log: at most hourly (every retention period if shorter).
        let prune_every = self
            .retention
            .map(|r| r.clamp(Duration::from_secs(1), Duration::from_secs(3600)));
        let mut pruned_at = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            if let Some(every) = prune_every
                && pruned_at.elapsed() >= every
            {
                pruned_at = tokio::time::Instant::now();
                if let Err(e) = self.prune_expired().await {
                    tracing::error!(cause = %format!("{e:#}"), "could not prune the audit log");
                }
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
        if let Some(b) = self.store.audit_base().await? {
            let line = serde_json::json!({
                "type": "base",
                "size": b.size,
                "chain": relay_core::hex::encode(&b.chain),
                "frontier": relay_core::hex::encode(&b.frontier),
            });
            out.push_str(&format!("{line}\n"));
        }
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

/// An export read back.
#[derive(Debug, Default)]
pub struct Export {
    /// Where the log starts, if its oldest records were pruned.
    pub base: Option<relay_core::auditlog::Base>,
    pub records: Vec<relay_core::auditlog::Record>,
    pub checkpoints: Vec<String>,
}

impl Export {
    /// [`relay_core::auditlog::verify_from`] over this export.
    pub fn verify(
        &self,
        vkey: &str,
        against: Option<&str>,
    ) -> Result<relay_core::auditlog::Verified, relay_core::auditlog::Bad> {
        relay_core::auditlog::verify_from(self.base.as_ref(), &self.records, &self.checkpoints, vkey, against)
    }
}

pub fn parse_export(text: &str) -> anyhow::Result<Export> {
    let mut export = Export::default();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("line {}: not JSON", n + 1))?;
        let field = |name: &str| v[name].as_str().with_context(|| format!("line {}: no {name}", n + 1));
        let hex32 = |name: &str| -> anyhow::Result<[u8; 32]> {
            relay_core::hex::decode(field(name)?)
                .and_then(|b| b.try_into().ok())
                .with_context(|| format!("line {}: {name} is not 32 bytes of hex", n + 1))
        };
        match v["type"].as_str() {
            Some("base") => {
                let frontier = relay_core::hex::decode(field("frontier")?)
                    .and_then(|b| relay_core::auditlog::Frontier::decode(&b))
                    .with_context(|| format!("line {}: a malformed frontier", n + 1))?;
                export.base = Some(relay_core::auditlog::Base {
                    size: v["size"].as_u64().with_context(|| format!("line {}: no size", n + 1))?,
                    chain: hex32("chain")?,
                    frontier,
                });
            }
            Some("checkpoint") => export.checkpoints.push(field("note")?.to_owned()),
            Some("record") => export.records.push(relay_core::auditlog::Record {
                seq: v["seq"].as_u64().with_context(|| format!("line {}: no seq", n + 1))?,
                at_ms: v["at_ms"]
                    .as_u64()
                    .with_context(|| format!("line {}: no at_ms", n + 1))?,
                kind: field("kind")?.to_owned(),
                detail: field("detail")?.to_owned(),
                chain: hex32("chain")?,
            }),
            _ => anyhow::bail!("line {}: unknown type", n + 1),
        }
    }
    Ok(export)
}
