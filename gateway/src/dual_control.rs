//! Dual control for destructive operator calls: one operator approves
//! (`POST /admin/approvals?action=…`), a *different* operator then makes the call within
//! `admin.dual_control_window_secs`; both are named in the audit record. Without an approval,
//! or with the caller's own, the call is refused (403). Operators are the common names of their
//! client certificates (`operators.rs`), so without `[admin] operator_ca` every call comes
//! from the same `admin_listen` identity and no destructive call can be made.
//!
//! Destructive calls today: `POST /admin/keys/destroy?key=provisioning:<id>` (action
//! `keys.destroy:provisioning:<id>`): deletes a retired or compromised provisioning key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Extension, Query, State};
use axum::response::{IntoResponse as _, Response};
use axum::routing::post;
use http::StatusCode;
use relay_net::clock::now_ms;
use storage::prelude::*;

use crate::api::AppState;
use crate::operators::Operator;

/// Approvals waiting for a second operator: action → (operator, when).
#[derive(Debug, Default)]
struct Approvals(Mutex<HashMap<String, (String, u64)>>);

#[derive(Clone)]
struct Dual {
    state: AppState,
    approvals: Arc<Approvals>,
    window: Duration,
    checkpointer: Arc<crate::audit::Checkpointer>,
}

pub(crate) fn routes(state: AppState, window: Duration, checkpointer: Arc<crate::audit::Checkpointer>) -> Router {
    Router::new()
        .route("/admin/approvals", post(approve))
        .route("/admin/keys/destroy", post(destroy))
        .with_state(Dual {
            state,
            approvals: Arc::default(),
            window,
            checkpointer,
        })
}

fn answer(status: StatusCode, text: impl Into<String>) -> Response {
    let mut text = text.into();
    text.push('\n');
    (status, text).into_response()
}

async fn approve(
    State(d): State<Dual>,
    Extension(Operator(operator)): Extension<Operator>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(action) = q.get("action").filter(|a| a.starts_with("keys.destroy:")) else {
        return answer(
            StatusCode::BAD_REQUEST,
            "action= names a destructive call, e.g. keys.destroy:provisioning:<id>",
        );
    };
    d.approvals
        .0
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(action.clone(), (operator.clone(), now_ms()));
    let detail = format!("operator={operator} action={action}");
    if let Err(e) = d.state.store().audit_append("admin.approve", detail, now_ms()).await {
        return answer(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    answer(
        StatusCode::OK,
        format!(
            "approved {action}; another operator may now make the call within {} s",
            d.window.as_secs()
        ),
    )
}

/// Takes the approval of `action` if another operator gave it within the window.
fn approved_by_another(d: &Dual, action: &str, operator: &str) -> Result<String, String> {
    let mut approvals = d.approvals.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let fresh = |at: u64| now_ms().saturating_sub(at) <= d.window.as_millis() as u64;
    match approvals.get(action) {
        Some((by, at)) if by != operator && fresh(*at) => {
            let by = by.clone();
            approvals.remove(action);
            Ok(by)
        }
        Some((by, at)) if by == operator && fresh(*at) => Err(format!(
            "dual control: {operator} approved {action} and cannot also make the call; another operator must"
        )),
        _ => Err(format!(
            "dual control: {action} needs a second operator's approval first (POST /admin/approvals?action={action}, `gateway approve {action}`)"
        )),
    }
}

async fn destroy(
    State(d): State<Dual>,
    Extension(Operator(operator)): Extension<Operator>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(id) = q.get("key").and_then(|k| k.strip_prefix("provisioning:")) else {
        return answer(StatusCode::BAD_REQUEST, "key=provisioning:<id>");
    };
    let action = format!("keys.destroy:provisioning:{id}");
    let approver = match approved_by_another(&d, &action, &operator) {
        Ok(by) => by,
        Err(why) => return answer(StatusCode::FORBIDDEN, why),
    };
    if let Err(e) = d.state.destroy_provisioning_key(id) {
        return answer(StatusCode::UNPROCESSABLE_ENTITY, format!("{e:#}"));
    }
    let detail = format!("provisioning id={id} approved_by={approver} done_by={operator}");
    if let Err(e) = d.state.store().audit_append("key.destroy", detail, now_ms()).await {
        return answer(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    // A key operation: a checkpoint follows.
    if let Err(e) = d.checkpointer.checkpoint_now().await {
        return answer(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"));
    }
    tracing::warn!(
        key = id,
        approver,
        operator,
        "provisioning key destroyed under dual control"
    );
    answer(StatusCode::OK, format!("provisioning:{id} destroyed"))
}
