//! Operator calls on mutual TLS (`[admin] operator_listen`, `operator_ca`): only clients with
//! a certificate from the operators' CA (and not on its CRLs) reach the `/admin/…` routes; the
//! certificate's common name is the operator, and every call is audited with it
//! (`admin.call operator=<name> <METHOD> <path> -> <status>`; the path without its query, so
//! no address is recorded).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::server::WebPkiClientVerifier;
use storage::prelude::*;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Who made a call: the common name of the client certificate, or `admin_listen` for calls
/// on the plain listener (development, no operator CA configured).
#[derive(Debug, Clone)]
pub struct Operator(pub String);

/// The operator listener's TLS configuration: the client listener's certificate, client
/// certificates verified against the operators' CA and CRLs.
pub fn server_config(
    certs: &Arc<crate::tls::CertStore>,
    ca: &std::path::Path,
    crls: &[std::path::PathBuf],
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use anyhow::Context as _;
    let mut roots = rustls::RootCertStore::empty();
    for c in relay_net::pem::load_certs(ca)? {
        roots.add(c).context("an operator CA certificate")?;
    }
    let crls = crls
        .iter()
        .map(|p| relay_net::pem::load_crl(p))
        .collect::<Result<Vec<_>, _>>()?;
    let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), relay_net::tls::provider());
    if !crls.is_empty() {
        builder = builder.with_crls(crls).enforce_revocation_expiration();
    }
    let verifier = builder.build().context("the operators' client certificate verifier")?;
    Ok(Arc::new(
        certs.server_config_verifying_clients(&[b"h2", b"http/1.1"], verifier)?,
    ))
}

/// The common name of a certificate, if it has one.
fn common_name(cert: &rustls::pki_types::CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?.as_str().ok()?.to_owned();
    Some(cn)
}

/// Audits every operator call — reads too (who exported the log, who listed what a key
/// registered) — with the operator who made it.
pub async fn audit_calls(store: storage::Storage, req: Request, next: Next) -> Response {
    let operator = req
        .extensions()
        .get::<Operator>()
        .map_or_else(|| "unknown".to_owned(), |o| o.0.clone());
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let resp = next.run(req).await;
    let detail = format!("operator={operator} {method} {path} -> {}", resp.status().as_u16());
    if let Err(e) = store
        .audit_append("admin.call", detail, relay_net::clock::now_ms())
        .await
    {
        tracing::error!(cause = %e, "could not audit an operator call");
    }
    resp
}

/// Serves `router` to operators on mutual TLS until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    while let Some((tcp, _)) = relay_net::serve::accept(&listener, &shutdown).await {
        let (acceptor, router, shutdown) = (acceptor.clone(), router.clone(), shutdown.clone());
        tracker.spawn(async move {
            let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await else {
                static LOGGED: relay_net::throttle::Throttle = relay_net::throttle::Throttle::per_minute();
                if LOGGED.due("handshake") {
                    tracing::warn!("an operator TLS handshake was refused (no or untrusted client certificate)");
                }
                return;
            };
            let Some(name) = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(common_name)
            else {
                return;
            };
            let router = router.layer(axum::Extension(Operator(name)));
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(tls), TowerToHyperService::new(router));
            relay_net::serve::until_shutdown(conn, &shutdown).await;
        });
    }
}
