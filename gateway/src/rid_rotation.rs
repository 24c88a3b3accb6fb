//! K_rid rotation. `gateway keys rotate rid` adds a version to K_rid's key ring; the next
//! start marks every rid under the previous version ([`begin_if_due`], storage's `Rekey`)
//! and runs with both: a request that names an address (a send, a claim, a registration, a
//! peer's delivery, an operator call) moves the address's records to its new rid first.
//! Addresses nobody names are moved by a background scan of the carrier's number ranges
//! (`POST /admin/keys/rid/migrate?from=&to=`, `gateway keys migrate-rid`): only the carrier
//! knows its numbers, the data directory holds none. `relay_rid_rekey_remaining` shows the
//! progress; the previous version can be retired (`gateway keys retire rid:<v>`) once none
//! is left, or forced (audited, the rest stays unreachable).

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context as _;
use axum::extract::{Query, State};
use axum::response::{IntoResponse as _, Response};
use http::StatusCode;
use relay_net::clock::now_ms;
use storage::Storage;
use storage::prelude::*;

use crate::api::AppState;

const STARTED: &str = "rid-rekey.json";

/// At start: if K_rid has a new version the store has not been marked for, marks every rid.
pub(crate) async fn begin_if_due(store: &Storage, dir: &Path, version: u8) -> anyhow::Result<()> {
    metrics::gauge!("relay_rid_rekey_remaining").set(store.rekey_left() as f64);
    if version == 0 {
        return Ok(());
    }
    let path = dir.join(STARTED);
    let recorded: Option<u8> = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["version"].as_u64())
        .and_then(|v| u8::try_from(v).ok());
    if recorded == Some(version) {
        return Ok(());
    }
    match store.rekey_begin(now_ms()).await {
        Ok(marked) => {
            tracing::warn!(
                version,
                marked,
                "K_rid rotated: every address is re-keyed when it is next named"
            );
        }
        // Marked before a crash kept us from recording it.
        Err(storage::StoreError::Refused(_)) if recorded.is_none() || store.rekey_left() > 0 => {}
        Err(e) => return Err(e).context("marking the rids for K_rid's rotation"),
    }
    crate::keyfile::write_durable(&path, serde_json::json!({ "version": version }).to_string().as_bytes())?;
    metrics::gauge!("relay_rid_rekey_remaining").set(store.rekey_left() as f64);
    Ok(())
}

fn answer(status: StatusCode, text: impl Into<String>) -> Response {
    let mut text = text.into();
    text.push('\n');
    (status, text).into_response()
}

/// `POST /admin/keys/rid/migrate?from=tel:+…&to=tel:+…`: re-keys, in the background, every
/// address of the number range still under the previous K_rid.
pub(crate) async fn migrate(State(state): State<AppState>, Query(q): Query<HashMap<String, String>>) -> Response {
    let number = |k: &str| -> Result<(usize, u64), String> {
        let a = relay_core::Address::parse(q.get(k).ok_or_else(|| format!("{k}= is required"))?)
            .map_err(|e| e.to_string())?;
        let digits = a.as_str().trim_start_matches("tel:+");
        Ok((
            digits.len(),
            digits.parse().map_err(|_| format!("{k}= is not a number"))?,
        ))
    };
    let ((len, from), (len_to, to)) = match (number("from"), number("to")) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(e), _) | (_, Err(e)) => return answer(StatusCode::BAD_REQUEST, e),
    };
    if len != len_to || to < from || to - from >= 100_000_000 {
        return answer(
            StatusCode::BAD_REQUEST,
            "from= and to= are numbers of the same length, from <= to, at most 100000000 apart",
        );
    }
    if state.rid_keys().previous.is_none() || state.store().rekey_left() == 0 {
        return answer(StatusCode::CONFLICT, "no K_rid re-key is under way");
    }
    let count = to - from + 1;
    let left = state.store().rekey_left();
    tokio::spawn(async move {
        let mut moved = 0u64;
        for n in from..=to {
            if state.store().rekey_left() == 0 {
                break;
            }
            let Ok(address) = relay_core::Address::parse(&format!("tel:+{n:0len$}")) else {
                continue;
            };
            let before = state.store().rekey_left();
            if let Err(e) = state.store().rekey_address(state.rid_keys(), &address).await {
                tracing::error!(cause = %e, "the K_rid re-key scan stopped");
                return;
            }
            moved += (before - state.store().rekey_left()) as u64;
            metrics::counter!("relay_rid_migration_scanned_total").increment(1);
            if n % 1024 == 0 {
                tokio::task::yield_now().await;
            }
        }
        tracing::info!(moved, left = state.store().rekey_left(), "K_rid re-key scan finished");
    });
    answer(
        StatusCode::ACCEPTED,
        format!("scanning {count} numbers; {left} addresses left to re-key (relay_rid_rekey_remaining)"),
    )
}

/// Retires K_rid's version `v` (not the current one): refused while addresses are still
/// under it, unless `force` (then they are dropped from the re-key, audited).
pub(crate) async fn retire(
    state: &AppState,
    checkpointer: &crate::audit::Checkpointer,
    v: u8,
    force: bool,
) -> Response {
    let dir = state.key_provider().key_dir().to_path_buf();
    match relay_keys::ring::states(&dir, crate::keys::RID_RING) {
        Ok(states) if states.current == v => {
            return answer(
                StatusCode::CONFLICT,
                format!("rid:{v} is the current key: rotate first"),
            );
        }
        Ok(states) if !states.versions.contains_key(&v) => {
            return answer(
                StatusCode::CONFLICT,
                format!("no version {v} of rid (see `gateway keys list`)"),
            );
        }
        Ok(_) => {}
        Err(e) => return answer(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
    let left = state.store().rekey_left();
    if left > 0 && !force {
        return answer(
            StatusCode::CONFLICT,
            format!(
                "{left} addresses are still under rid:{v}: let the re-key finish (`gateway keys migrate-rid`), or --force (they become unreachable)"
            ),
        );
    }
    if let Err(e) = relay_keys::ring::set_state(&dir, crate::keys::RID_RING, v, relay_keys::ring::RETIRED) {
        return answer(StatusCode::CONFLICT, e.to_string());
    }
    if left > 0 {
        match state.store().rekey_abandon(now_ms()).await {
            Ok(n) => tracing::warn!(dropped = n, "K_rid's previous version retired by force"),
            Err(e) => return answer(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
    metrics::gauge!("relay_rid_rekey_remaining").set(0.0);
    let detail = format!("rid version={v} state=retired forced={}", left > 0);
    if let Err(e) = state.store().audit_append("key.state", detail, now_ms()).await {
        return answer(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    if let Err(e) = checkpointer.checkpoint_now().await {
        return answer(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"));
    }
    answer(StatusCode::OK, format!("rid:{v} retired"))
}
