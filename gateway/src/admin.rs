//! The admin listener (plain HTTP, loopback by default): `/metrics`, `/healthz`, and the
//! operator's calls — TLS reload, interconnect reload, group epoch reset.

use std::sync::Arc;

use axum::Router;
use axum::response::IntoResponse as _;
use axum::routing::get;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use storage::prelude::*;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::AppState;
use crate::telemetry;

/// Serves the admin API until `shutdown`; each connection is a task owned by `tracker`.
pub(crate) async fn serve(
    listener: TcpListener,
    certs: Arc<crate::tls::CertStore>,
    acme: Option<relay_net::acme::AcmeHandle>,
    state: AppState,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let store = state.store().clone();
    let acme_routes = acme_routes(acme, store.clone());
    let ready_certs = Arc::clone(&certs);
    let healthz = move || {
        let certs = Arc::clone(&ready_certs);
        async move {
            if certs.has_certificate() {
                crate::api::healthz().await.into_response()
            } else {
                (http::StatusCode::SERVICE_UNAVAILABLE, "no TLS certificate yet\n").into_response()
            }
        }
    };
    // Re-reads the interconnect's peers file and CRLs (also on SIGHUP).
    let ic_reload = move || {
        let state = state.clone();
        async move {
            let Some(ic) = state.interconnect() else {
                return (http::StatusCode::NOT_FOUND, "no [interconnect] configured\n".to_owned()).into_response();
            };
            match ic.reload().await {
                Ok(n) => (http::StatusCode::OK, format!("{n} peers\n")).into_response(),
                Err(e) => {
                    tracing::warn!(cause = %e, "interconnect reload failed; keeping the old peer table");
                    (http::StatusCode::UNPROCESSABLE_ENTITY, format!("{e}\n")).into_response()
                }
            }
        }
    };
    // RFC 9750 section 5.3: if members and the DS disagree on a group's epoch, an operator
    // sets it (`PUT /admin/groups/{hex group id}/epoch` with the epoch as the body).
    let set_epoch = move |axum::extract::Path(group): axum::extract::Path<String>, body: String| {
        let store = store.clone();
        async move {
            let Some(group_id) = crate::mls::decode_group_id(&group) else {
                return (http::StatusCode::BAD_REQUEST, "group id must be hex\n".to_owned()).into_response();
            };
            let Ok(epoch) = body.trim().parse::<u64>() else {
                return (http::StatusCode::BAD_REQUEST, "body must be the epoch\n".to_owned()).into_response();
            };
            match store.set_group_epoch(crate::mls::group_key(&group_id), epoch).await {
                Ok(()) => {
                    tracing::warn!(epoch, "group epoch reset by an operator");
                    http::StatusCode::NO_CONTENT.into_response()
                }
                Err(e) => (http::StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
            }
        }
    };
    let reload = move || {
        let certs = Arc::clone(&certs);
        async move {
            match certs.reload() {
                Ok(()) => http::StatusCode::NO_CONTENT.into_response(),
                Err(e) => {
                    tracing::warn!(cause = %format!("{e:#}"), "TLS reload failed; keeping the old certificate");
                    (http::StatusCode::UNPROCESSABLE_ENTITY, format!("{e:#}\n")).into_response()
                }
            }
        }
    };
    let router = Router::new()
        .route("/metrics", get(|| async { telemetry::prometheus().render() }))
        .route("/healthz", get(healthz))
        .route("/admin/tls/reload", axum::routing::post(reload))
        .route("/admin/interconnect/reload", axum::routing::post(ic_reload))
        .route("/admin/groups/{group}/epoch", axum::routing::put(set_epoch))
        .merge(acme_routes);
    while let Some((tcp, _)) = relay_net::serve::accept(&listener, &shutdown).await {
        let router = router.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(router));
            relay_net::serve::until_shutdown(conn, &shutdown).await;
        });
    }
}

/// `GET /admin/acme` (status), `POST /admin/acme/renew`, `POST /admin/acme/revoke?reason=…`
/// (then a new certificate with a new key). Renewals and revocations are audited, failed
/// ones too. Without `[acme]`, every route answers 404.
fn acme_routes(acme: Option<relay_net::acme::AcmeHandle>, store: storage::Storage) -> Router {
    use relay_net::acme::AcmeError;
    let Some(acme) = acme else {
        let none = || async { (http::StatusCode::NOT_FOUND, "no [acme] configured\n").into_response() };
        return Router::new()
            .route("/admin/acme", get(none))
            .route("/admin/acme/renew", axum::routing::post(none))
            .route("/admin/acme/revoke", axum::routing::post(none));
    };
    let failed = |e: &AcmeError| {
        (
            http::StatusCode::BAD_GATEWAY,
            axum::Json(serde_json::json!({"error": "acme_failed", "stage": e.stage.as_str(), "detail": e.message})),
        )
            .into_response()
    };
    let audit = move |store: storage::Storage, kind: &'static str, detail: String| async move {
        if let Err(e) = store.audit_append(kind, detail, relay_net::clock::now_ms()).await {
            tracing::error!(cause = %e, kind, "could not audit an ACME operation");
        }
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
    let renew_handle = acme.clone();
    let renew_store = store.clone();
    let renew = move || {
        let (acme, store) = (renew_handle.clone(), renew_store.clone());
        async move {
            match acme.renew_now().await {
                Ok(r) => {
                    let detail = format!(
                        "listener=client result=ok serial={} not_after={}",
                        r.serial, r.not_after
                    );
                    audit(store, "acme.renew", detail).await;
                    axum::Json(serde_json::json!({"serial": r.serial, "not_after": r.not_after})).into_response()
                }
                Err(e) => {
                    audit(
                        store,
                        "acme.renew",
                        format!("listener=client result=failed stage={}", e.stage),
                    )
                    .await;
                    failed(&e)
                }
            }
        }
    };
    let revoke = move |axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>| {
        let (acme, store) = (acme.clone(), store.clone());
        async move {
            let name = q.get("reason").map_or("unspecified", String::as_str);
            let Some(reason) = relay_net::acme::revocation_reason(name) else {
                return (
                    http::StatusCode::BAD_REQUEST,
                    axum::Json(serde_json::json!({"error": "bad_reason", "detail": format!(
                        "unknown revocation reason {name:?}: {}", relay_net::acme::REVOCATION_REASONS.join(", ")
                    )})),
                )
                    .into_response();
            };
            match acme.revoke(reason).await {
                Ok(r) => {
                    let detail = format!(
                        "listener=client result=ok reason={name} revoked={} serial={} not_after={}",
                        r.revoked_serial.as_deref().unwrap_or("-"),
                        r.serial,
                        r.not_after
                    );
                    audit(store, "acme.revoke", detail).await;
                    axum::Json(serde_json::json!({
                        "revoked": r.revoked_serial, "serial": r.serial, "not_after": r.not_after
                    }))
                    .into_response()
                }
                Err(e) => {
                    let detail = format!("listener=client result=failed reason={name} stage={}", e.stage);
                    audit(store, "acme.revoke", detail).await;
                    failed(&e)
                }
            }
        }
    };
    Router::new()
        .route("/admin/acme", get(status))
        .route("/admin/acme/renew", axum::routing::post(renew))
        .route("/admin/acme/revoke", axum::routing::post(revoke))
}
