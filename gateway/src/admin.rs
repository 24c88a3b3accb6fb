//! The admin listener (plain HTTP, loopback by default): `/metrics`, `/healthz`, and — unless
//! `[admin] operator_ca` moves them to mutual TLS (`operators.rs`) — the operator's calls: TLS
//! and interconnect reload, group epoch reset, the audit log, the incident controls.

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

/// The admin listener, and the operators' mutual-TLS listener when configured.
pub(crate) struct Listeners {
    pub plain: TcpListener,
    pub operators: Option<(TcpListener, Arc<rustls::ServerConfig>)>,
    /// How long an approval of a destructive call waits for a second operator.
    pub dual_control_window: std::time::Duration,
}

/// Serves the admin API until `shutdown`; each connection is a task owned by `tracker`.
pub(crate) async fn serve(
    Listeners {
        plain: listener,
        operators,
        dual_control_window,
    }: Listeners,
    certs: Arc<crate::tls::CertStore>,
    acme: Option<relay_net::acme::AcmeHandle>,
    state: AppState,
    checkpointer: Arc<crate::audit::Checkpointer>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let store = state.store().clone();
    let reload_store = store.clone();
    let audit_store = store.clone();
    let controls_state = state.clone();
    let acme_routes = acme_routes(acme, store.clone(), Arc::clone(&checkpointer));
    let ready_certs = Arc::clone(&certs);
    let ready_store = store.clone();
    let healthz = move || {
        let certs = Arc::clone(&ready_certs);
        let store = ready_store.clone();
        async move {
            if certs.has_certificate() {
                crate::api::ready(&store).await
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
            let key = crate::mls::group_key(&group_id);
            match store.set_group_epoch(key, epoch).await {
                Ok(()) => {
                    tracing::warn!(epoch, "group epoch reset by an operator");
                    // The group by the hash it is stored under, never its id.
                    let detail = format!("group={} epoch={epoch}", relay_core::hex::encode(&key[..8]));
                    audit(&store, "admin.group_epoch", detail).await;
                    http::StatusCode::NO_CONTENT.into_response()
                }
                Err(e) => (http::StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
            }
        }
    };
    let reload = move || {
        let (certs, store) = (Arc::clone(&certs), reload_store.clone());
        async move {
            match certs.reload() {
                Ok(()) => {
                    audit(&store, "admin.tls_reload", "reloaded".into()).await;
                    http::StatusCode::NO_CONTENT.into_response()
                }
                Err(e) => {
                    tracing::warn!(cause = %format!("{e:#}"), "TLS reload failed; keeping the old certificate");
                    audit(&store, "admin.tls_reload", "failed; the old certificate is kept".into()).await;
                    (http::StatusCode::UNPROCESSABLE_ENTITY, format!("{e:#}\n")).into_response()
                }
            }
        }
    };
    let public = Router::new()
        .route("/metrics", get(|| async { telemetry::prometheus().render() }))
        .route("/healthz", get(healthz));
    let operator = Router::new()
        .route("/admin/tls/reload", axum::routing::post(reload))
        .route("/admin/interconnect/reload", axum::routing::post(ic_reload))
        .route("/admin/groups/{group}/epoch", axum::routing::put(set_epoch))
        .merge(crate::audit::routes(Arc::clone(&checkpointer)))
        .merge(crate::controls::routes(
            controls_state.clone(),
            Arc::clone(&checkpointer),
        ))
        .merge(crate::dual_control::routes(
            controls_state,
            dual_control_window,
            checkpointer,
        ))
        .merge(acme_routes)
        .layer(axum::middleware::from_fn(move |req, next| {
            crate::operators::audit_calls(audit_store.clone(), req, next)
        }));
    let router = match operators {
        // Operator calls only on mutual TLS; the plain listener keeps metrics and health.
        Some((listener, tls)) => {
            tracker.spawn(crate::operators::serve(
                listener,
                tls,
                operator,
                shutdown.clone(),
                tracker.clone(),
            ));
            public
        }
        None => public.merge(operator.layer(axum::Extension(crate::operators::Operator("admin_listen".into())))),
    };
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

/// Appends an audit record of an operator's call (an error is logged: the call is done).
async fn audit(store: &storage::Storage, kind: &str, detail: String) {
    if let Err(e) = store.audit_append(kind, detail, relay_net::clock::now_ms()).await {
        tracing::error!(cause = %e, kind, "could not audit an admin call");
    }
}

/// The ACME routes (relay-net's), each renewal and revocation written to the audit log and
/// followed by a signed checkpoint (a key operation).
fn acme_routes(
    acme: Option<relay_net::acme::AcmeHandle>,
    store: storage::Storage,
    checkpointer: Arc<crate::audit::Checkpointer>,
) -> Router {
    let record: relay_net::acme::admin::Record = Arc::new(move |kind, detail| {
        let (store, checkpointer) = (store.clone(), Arc::clone(&checkpointer));
        Box::pin(async move {
            audit(&store, kind, detail).await;
            if let Err(e) = checkpointer.checkpoint_now().await {
                tracing::error!(cause = %format!("{e:#}"), "could not checkpoint the audit log");
            }
        })
    });
    relay_net::acme::admin::routes(acme, "client", record)
}
