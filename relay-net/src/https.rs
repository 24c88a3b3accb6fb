//! An HTTPS client (hyper + rustls) whose every exchange is bounded: a connect timeout, a
//! timeout over the whole exchange, and a cap on the response body.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// How the client talks.
#[derive(Debug, Clone, Copy)]
pub struct ClientOptions {
    /// HTTP/2 only (prior knowledge through ALPN `h2`); otherwise HTTP/2 or HTTP/1.1 by ALPN.
    pub http2_only: bool,
    pub connect_timeout: Duration,
    /// How long an idle pooled connection is kept (`None`: hyper's default).
    pub pool_idle_timeout: Option<Duration>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            http2_only: true,
            connect_timeout: Duration::from_secs(5),
            pool_idle_timeout: None,
        }
    }
}

/// A pooled HTTPS client; cheap to clone.
#[derive(Clone)]
pub struct HttpsClient {
    inner: HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl std::fmt::Debug for HttpsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsClient").finish_non_exhaustive()
    }
}

/// A complete answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// The `Retry-After` header, verbatim.
    pub retry_after: Option<String>,
    pub body: Bytes,
}

/// An exchange that produced no answer.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("request failed: {0}")]
    Request(String),
    #[error("response body: {0}")]
    Body(String),
}

impl HttpsClient {
    /// A client over `tls` (see [`crate::tls::client_config`]).
    pub fn new(tls: rustls::ClientConfig, options: ClientOptions) -> Self {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(options.connect_timeout));
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only();
        let connector = if options.http2_only {
            builder.enable_http2().wrap_connector(tcp)
        } else {
            builder.enable_all_versions().wrap_connector(tcp)
        };
        let mut client = HyperClient::builder(TokioExecutor::new());
        client.http2_only(options.http2_only);
        if let Some(idle) = options.pool_idle_timeout {
            client.pool_idle_timeout(idle);
        }
        Self {
            inner: client.build(connector),
        }
    }

    /// Sends `req` and reads the whole answer, within `timeout` and `max_body` bytes.
    pub async fn exchange(
        &self,
        req: http::Request<Full<Bytes>>,
        timeout: Duration,
        max_body: usize,
    ) -> Result<Reply, ExchangeError> {
        let exchange = async {
            let resp = self
                .inner
                .request(req)
                .await
                .map_err(|e| ExchangeError::Request(format!("{e:#}")))?;
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = http_body_util::Limited::new(resp.into_body(), max_body)
                .collect()
                .await
                .map_err(|e| ExchangeError::Body(e.to_string()))?
                .to_bytes();
            Ok(Reply {
                status,
                retry_after,
                body,
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ExchangeError::Timeout(timeout))?
    }

    /// `POST url` with a body of `content_type`, bounded as [`Self::exchange`].
    pub async fn post(
        &self,
        url: &str,
        content_type: &str,
        body: Bytes,
        timeout: Duration,
        max_body: usize,
    ) -> Result<Reply, ExchangeError> {
        let req = http::Request::post(url)
            .header(http::header::CONTENT_TYPE, content_type)
            .body(Full::new(body))
            .map_err(|e| ExchangeError::Request(e.to_string()))?;
        self.exchange(req, timeout, max_body).await
    }
}
