//! Incident-response controls on the admin listener: kill switches, device revocation,
//! address suspension, and what was registered in a time window. Storage writes each change
//! with its audit record; requests check the switches and suspensions in memory.
//!
//! | call | effect |
//! |---|---|
//! | `GET /admin/switches` | the switches that are off |
//! | `POST /admin/switches/{name}/off`, `…/on` | `registration`, `keypackage_upload`, `push`, `peer:{name}` |
//! | `POST /admin/devices/revoke?address=&device=` (or `rid=`) | the device's credential, KeyPackages, push handle and queue go; its open long-polls end with 401 |
//! | `POST /admin/addresses/suspend?address=`, `…/unsuspend` | the address may not register or send |
//! | `GET /admin/devices/registered?since_ms=&until_ms=&key=` | registrations in the window (from the audit log), by rid, optionally by provisioning key |
//! | `POST /admin/keys/reload` | re-reads the provisioning keys' states and the outbox key ring; each change audited, then a checkpoint |
//! | `POST /admin/keys/retire?key=outbox:<v>` | retires an outbox key version; refused (409) while queued entries are sealed under it |

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse as _, Response};
use axum::routing::{get, post};
use http::StatusCode;
use relay_core::Address;
use relay_net::clock::now_ms;
use storage::prelude::*;
use storage::switch::{KEYPACKAGE_UPLOAD, PUSH, REGISTRATION};

use crate::api::AppState;

pub(crate) fn routes(state: AppState, checkpointer: std::sync::Arc<crate::audit::Checkpointer>) -> Router {
    let reload = {
        let checkpointer = std::sync::Arc::clone(&checkpointer);
        move |State(state): State<AppState>| {
            let checkpointer = std::sync::Arc::clone(&checkpointer);
            async move { reload_keys(&state, &checkpointer).await }
        }
    };
    let retire = move |State(state): State<AppState>, Query(q): Query<HashMap<String, String>>| {
        let checkpointer = std::sync::Arc::clone(&checkpointer);
        async move {
            let key = q.get("key").map_or("", String::as_str);
            match key.strip_prefix("rid:").map(str::parse::<u8>) {
                Some(Ok(v)) => crate::rid_rotation::retire(&state, &checkpointer, v, q.contains_key("force")).await,
                Some(Err(_)) => answer(StatusCode::BAD_REQUEST, "name K_rid's version as rid:<version>"),
                None => retire_outbox_key(&state, &checkpointer, key).await,
            }
        }
    };
    Router::new()
        .route("/admin/keys/reload", post(reload))
        .route("/admin/keys/retire", post(retire))
        .route("/admin/keys/rid/migrate", post(crate::rid_rotation::migrate))
        .route("/admin/switches", get(list_switches))
        .route("/admin/switches/{name}/{state}", post(set_switch))
        .route("/admin/devices/revoke", post(revoke))
        .route("/admin/addresses/{action}", post(suspend))
        .route("/admin/devices/registered", get(registered))
        .with_state(state)
}

/// Re-reads the provisioning keys; audits every key that is new or changed state (a key
/// operation, so a checkpoint follows).
async fn reload_keys(state: &AppState, checkpointer: &crate::audit::Checkpointer) -> Response {
    let (old, new) = match state.reload_provisioning_keys() {
        Ok(pair) => pair,
        Err(e) => return answer(StatusCode::UNPROCESSABLE_ENTITY, format!("{e:#}")),
    };
    let mut changed = Vec::new();
    for k in &new {
        if !old.iter().any(|o| o.public_key == k.public_key && o.state == k.state) {
            let id = crate::api::provisioning_key_id(&k.public_key);
            let detail = format!("provisioning id={id} state={}", k.state.as_str());
            if let Err(e) = state.store().audit_append("key.state", detail.clone(), now_ms()).await {
                return failed(&e);
            }
            tracing::warn!(key = %id, state = k.state.as_str(), "provisioning key state changed");
            changed.push(detail);
        }
    }
    match checkpointer.hand_over_if_due().await {
        Ok(Some(v)) => changed.push(format!("audit version={v} state=active")),
        Ok(None) => {}
        Err(e) => return answer(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
    }
    let outbox = match state.reload_outbox_keys() {
        Ok(Some((old, new, loaded))) => {
            if old != new {
                let detail = format!("outbox version={new} state=active");
                if let Err(e) = state.store().audit_append("key.state", detail.clone(), now_ms()).await {
                    return failed(&e);
                }
                tracing::warn!(version = new, "outbox key rotated");
                changed.push(detail);
            }
            format!("; outbox key version {new} seals, versions {loaded:?} open")
        }
        Ok(None) => String::new(),
        Err(e) => return answer(StatusCode::UNPROCESSABLE_ENTITY, format!("{e:#}")),
    };
    if !changed.is_empty()
        && let Err(e) = checkpointer.checkpoint_now().await
    {
        return answer(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"));
    }
    answer(
        StatusCode::OK,
        format!(
            "{} provisioning keys, {} changed{outbox}{}",
            new.len(),
            changed.len(),
            if changed.is_empty() {
                String::new()
            } else {
                format!("; changed: {}", changed.join(", "))
            }
        ),
    )
}

/// Retires an outbox key version unless queued entries are still sealed under it (they
/// would no longer open: an acknowledged envelope would be lost).
async fn retire_outbox_key(state: &AppState, checkpointer: &crate::audit::Checkpointer, key: &str) -> Response {
    let v = match crate::keys_cli::outbox_version(key) {
        Ok(v) => v,
        Err(e) => return answer(StatusCode::BAD_REQUEST, format!("{e:#}")),
    };
    let Some(ic) = state.interconnect() else {
        return answer(
            StatusCode::CONFLICT,
            "no interconnect is configured: there is no outbox key",
        );
    };
    if ic.sealer().current() == v {
        return answer(
            StatusCode::CONFLICT,
            format!("outbox:{v} is the current key: rotate first"),
        );
    }
    let queued = match ic.outbox_key_versions().await {
        Ok(versions) => versions.get(&v).copied().unwrap_or(0),
        Err(e) => return failed(&e),
    };
    if queued > 0 {
        return answer(
            StatusCode::CONFLICT,
            format!("outbox:{v} still seals {queued} queued entries: retire it once they are delivered"),
        );
    }
    if let Err(e) = state.key_provider().retire_outbox_key(v) {
        return answer(StatusCode::CONFLICT, format!("{e:#}"));
    }
    if let Err(e) = state.reload_outbox_keys() {
        return answer(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"));
    }
    let detail = format!("outbox version={v} state=retired");
    if let Err(e) = state.store().audit_append("key.state", detail, now_ms()).await {
        return failed(&e);
    }
    if let Err(e) = checkpointer.checkpoint_now().await {
        return answer(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"));
    }
    answer(StatusCode::OK, format!("outbox:{v} retired"))
}

fn answer(status: StatusCode, text: impl Into<String>) -> Response {
    let mut text = text.into();
    text.push('\n');
    (status, text).into_response()
}

fn failed(e: &storage::StoreError) -> Response {
    answer(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

async fn list_switches(State(state): State<AppState>) -> Response {
    match state.store().switches_off().await {
        Ok(off) => axum::Json(serde_json::json!({ "off": off })).into_response(),
        Err(e) => failed(&e),
    }
}

async fn set_switch(State(state): State<AppState>, Path((name, to)): Path<(String, String)>) -> Response {
    let known = [REGISTRATION, KEYPACKAGE_UPLOAD, PUSH].contains(&name.as_str())
        || state.interconnect().is_some_and(|ic| {
            ic.table()
                .peers
                .iter()
                .any(|p| storage::switch::peer(&p.cfg.name) == name)
        });
    if !known {
        return answer(
            StatusCode::NOT_FOUND,
            format!("no switch {name:?}: registration, keypackage_upload, push or peer:<configured peer>"),
        );
    }
    let off = match to.as_str() {
        "off" => true,
        "on" => false,
        _ => return answer(StatusCode::NOT_FOUND, "switch to on or off"),
    };
    match state.store().set_switch(&name, off, now_ms()).await {
        Ok(()) => {
            tracing::warn!(switch = %name, off, "kill switch changed by an operator");
            answer(StatusCode::OK, format!("{name} {to}"))
        }
        Err(e) => failed(&e),
    }
}

/// The `address` query parameter, hashed: the address itself goes no further.
async fn rid_of(state: &AppState, q: &HashMap<String, String>) -> Result<relay_core::Rid, String> {
    // The rid itself, as `registered` lists it.
    if let Some(rid) = q.get("rid") {
        let bytes = relay_core::hex::decode(rid).ok_or("rid= is 64 hex digits")?;
        return Ok(relay_core::Rid(bytes.try_into().map_err(|_| "rid= is 64 hex digits")?));
    }
    let address = q.get("address").ok_or("address= or rid= is required")?;
    let address = Address::parse(address).map_err(|e| e.to_string())?;
    // During a K_rid rotation the address's records move to its new rid first.
    state
        .store()
        .rekey_address(state.rid_keys(), &address)
        .await
        .map_err(|e| e.to_string())?;
    Ok(state.rid_key().rid(&address))
}

async fn revoke(State(state): State<AppState>, Query(q): Query<HashMap<String, String>>) -> Response {
    let rid = match rid_of(&state, &q).await {
        Ok(r) => r,
        Err(e) => return answer(StatusCode::BAD_REQUEST, e),
    };
    let Some(device) = q.get("device").and_then(|d| d.parse::<u32>().ok()) else {
        return answer(StatusCode::BAD_REQUEST, "device= (a device id) is required");
    };
    match state
        .store()
        .revoke_device(rid, relay_core::DeviceId(device), now_ms())
        .await
    {
        Ok(true) => {
            tracing::warn!(device, "device revoked by an operator");
            answer(StatusCode::OK, format!("device {device} revoked"))
        }
        Ok(false) => answer(StatusCode::NOT_FOUND, "no such device"),
        Err(e) => failed(&e),
    }
}

async fn suspend(
    State(state): State<AppState>,
    Path(action): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let suspended = match action.as_str() {
        "suspend" => true,
        "unsuspend" => false,
        _ => return answer(StatusCode::NOT_FOUND, "suspend or unsuspend"),
    };
    let rid = match rid_of(&state, &q).await {
        Ok(r) => r,
        Err(e) => return answer(StatusCode::BAD_REQUEST, e),
    };
    match state.store().set_suspended(rid, suspended, now_ms()).await {
        Ok(()) => answer(StatusCode::OK, format!("address {action}ed")),
        Err(e) => failed(&e),
    }
}

/// Registrations in `[since_ms, until_ms]` from the audit log (JSON lines: at_ms, rid,
/// device, and whether it has been revoked since).
async fn registered(State(state): State<AppState>, Query(q): Query<HashMap<String, String>>) -> Response {
    let bound = |name: &str, default: u64| q.get(name).map_or(Ok(default), |v| v.parse::<u64>());
    let key = q.get("key").map(|k| format!(" key={k}"));
    let (Ok(since), Ok(until)) = (bound("since_ms", 0), bound("until_ms", u64::MAX)) else {
        return answer(
            StatusCode::BAD_REQUEST,
            "since_ms and until_ms are milliseconds since the epoch",
        );
    };
    let log = match state.store().audit_log().await {
        Ok(l) => l,
        Err(e) => return failed(&e),
    };
    let revoked: Vec<&str> = log
        .iter()
        .filter(|r| r.kind == "device.revoke")
        .map(|r| r.detail.as_str())
        .collect();
    let lines: String = log
        .iter()
        .filter(|r| r.kind == "device.register" && (since..=until).contains(&r.at_ms))
        .filter(|r| key.as_ref().is_none_or(|k| r.detail.ends_with(k.as_str())))
        .filter_map(|r| {
            let mut fields = r.detail.split(' ');
            let rid = fields.next()?.strip_prefix("rid=")?;
            let device = fields.next()?.strip_prefix("device=")?.parse::<u32>().ok()?;
            let key = fields.next().and_then(|k| k.strip_prefix("key="));
            let line = serde_json::json!({
                "at_ms": r.at_ms,
                "rid": rid,
                "device": device,
                "key": key,
                "revoked": revoked.iter().any(|d| *d == format!("rid={rid} device={device}")),
            });
            Some(format!("{line}\n"))
        })
        .collect();
    ([(http::header::CONTENT_TYPE, "application/jsonl")], lines).into_response()
}
