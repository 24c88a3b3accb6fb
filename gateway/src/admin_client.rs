//! The `gateway` command's client for the running gateway's admin API: plain HTTP to
//! `admin_listen`, or mutual TLS with the operator's certificate to `[admin]
//! operator_listen` for `/admin/…` calls when it is configured.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

/// An address in a query string (`+` would read as a space).
pub fn query_value(address: &str) -> String {
    address
        .replace('%', "%25")
        .replace('+', "%2B")
        .replace('&', "%26")
        .replace(' ', "%20")
}

/// One request to the running gateway's admin listener; prints the answer.
pub fn admin_call(admin: SocketAddr, method: &str, path: &str) -> anyhow::Result<()> {
    let (status, body) = admin_request(admin, method, path)?;
    std::io::stdout().write_all(&body)?;
    if !body.ends_with(b"\n") {
        writeln!(std::io::stdout())?;
    }
    anyhow::ensure!(status.is_success(), "the gateway answered {status}");
    Ok(())
}

/// Where operator calls go when `[admin] operator_listen` is configured: mutual TLS with the
/// operator's certificate.
#[derive(Debug)]
pub struct OperatorTarget {
    pub addr: SocketAddr,
    pub ca: PathBuf,
    pub identity: Option<(PathBuf, PathBuf)>,
}

static OPERATOR: std::sync::OnceLock<OperatorTarget> = std::sync::OnceLock::new();

/// Sends this process's `/admin/…` calls to the operator listener (once, at start).
pub fn use_operator_listener(target: OperatorTarget) {
    let _ = OPERATOR.set(target);
}

/// One request to the running gateway's admin listener (or, for `/admin/…` calls with an
/// operator listener configured, to that listener over mutual TLS).
pub fn admin_request(admin: SocketAddr, method: &str, path: &str) -> anyhow::Result<(http::StatusCode, bytes::Bytes)> {
    use anyhow::Context as _;
    use http_body_util::BodyExt as _;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let operator = OPERATOR.get().filter(|_| path.starts_with("/admin/"));
    let admin = operator.map_or(admin, |o| o.addr);
    let (status, body) = runtime.block_on(async {
        let tcp = tokio::net::TcpStream::connect(admin)
            .await
            .with_context(|| format!("no gateway admin listener at {admin} (is the gateway running?)"))?;
        let mut sender = match operator {
            None => {
                let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
                tokio::spawn(conn);
                sender
            }
            Some(o) => {
                let (cert, key) = o.identity.as_ref().context(
                    "operator calls need an operator certificate: --operator-cert and --operator-key (or RELAY_OPERATOR_CERT, RELAY_OPERATOR_KEY)",
                )?;
                let identity = relay_net::pem::load_pair(cert, key)?;
                let roots = relay_net::pem::load_certs(&o.ca)?;
                let tls = relay_net::tls::client_config(&roots, Some(identity))?;
                let name = rustls::pki_types::ServerName::try_from("localhost")?;
                let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
                    .connect(name, tcp)
                    .await
                    .context("the operator listener refused the TLS handshake")?;
                let (sender, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
                tokio::spawn(conn);
                sender
            }
        };
        let request = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, admin.to_string())
            .body(http_body_util::Empty::<bytes::Bytes>::new())?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, body))
    })?;
    Ok((status, body))
}
