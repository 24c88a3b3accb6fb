//! The operator's ACME routes on a service's admin listener: `GET /admin/acme` (status),
//! `POST /admin/acme/renew`, `POST /admin/acme/revoke?reason=…` (then a new certificate with
//! a new key). Every renewal and revocation, failed ones too, is handed to the service's
//! `record` (the gateway writes its audit log, the push proxy a log line). Without `[acme]`,
//! every route answers 404.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::response::{IntoResponse as _, Response};
use axum::routing::{get, post};

use super::{AcmeError, AcmeHandle, REVOCATION_REASONS, revocation_reason};

/// What an operator command did: `kind` is `acme.renew` or `acme.revoke`; `detail` names
/// the listener, the result, serials and the reason (never a key).
pub type Record = Arc<dyn Fn(&'static str, String) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

fn failed(e: &AcmeError) -> Response {
    (
        http::StatusCode::BAD_GATEWAY,
        axum::Json(serde_json::json!({"error": "acme_failed", "stage": e.stage.as_str(), "detail": e.message})),
    )
        .into_response()
}

/// The routes for `listener`'s certificate (see the module documentation).
pub fn routes(acme: Option<AcmeHandle>, listener: &'static str, record: Record) -> Router {
    let Some(acme) = acme else {
        let none = || async { (http::StatusCode::NOT_FOUND, "no [acme] configured\n").into_response() };
        return Router::new()
            .route("/admin/acme", get(none))
            .route("/admin/acme/renew", post(none))
            .route("/admin/acme/revoke", post(none));
    };
    let status_handle = acme.clone();
    let status = move || {
        let acme = status_handle.clone();
        async move {
            match acme.status().await {
                Ok(s) => axum::Json(serde_json::json!({
                    "serial": s.serial, "not_after": s.not_after, "renew_at": s.renew_at,
                    "failures": s.failures, "last_error": s.last_error,
                }))
                .into_response(),
                Err(e) => failed(&e),
            }
        }
    };
    let (renew_handle, renew_record) = (acme.clone(), Arc::clone(&record));
    let renew = move || {
        let (acme, record) = (renew_handle.clone(), Arc::clone(&renew_record));
        async move {
            match acme.renew_now().await {
                Ok(r) => {
                    let detail = format!(
                        "listener={listener} result=ok serial={} not_after={}",
                        r.serial, r.not_after
                    );
                    record("acme.renew", detail).await;
                    axum::Json(serde_json::json!({"serial": r.serial, "not_after": r.not_after})).into_response()
                }
                Err(e) => {
                    record(
                        "acme.renew",
                        format!("listener={listener} result=failed stage={}", e.stage),
                    )
                    .await;
                    failed(&e)
                }
            }
        }
    };
    let revoke = move |axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>| {
        let (acme, record) = (acme.clone(), Arc::clone(&record));
        async move {
            let name = q.get("reason").map_or("unspecified", String::as_str);
            let Some(reason) = revocation_reason(name) else {
                return (
                    http::StatusCode::BAD_REQUEST,
                    axum::Json(serde_json::json!({"error": "bad_reason", "detail": format!(
                        "unknown revocation reason {name:?}: {}", REVOCATION_REASONS.join(", ")
                    )})),
                )
                    .into_response();
            };
            match acme.revoke(reason).await {
                Ok(r) => {
                    let detail = format!(
                        "listener={listener} result=ok reason={name} revoked={} serial={} not_after={}",
                        r.revoked_serial.as_deref().unwrap_or("-"),
                        r.serial,
                        r.not_after
                    );
                    record("acme.revoke", detail).await;
                    axum::Json(serde_json::json!({
                        "revoked": r.revoked_serial, "serial": r.serial, "not_after": r.not_after
                    }))
                    .into_response()
                }
                Err(e) => {
                    let detail = format!("listener={listener} result=failed reason={name} stage={}", e.stage);
                    record("acme.revoke", detail).await;
                    failed(&e)
                }
            }
        }
    };
    Router::new()
        .route("/admin/acme", get(status))
        .route("/admin/acme/renew", post(renew))
        .route("/admin/acme/revoke", post(revoke))
}
