//! Client SDK for the rcs-relay client API.
//!
//! One [`Client`] holds one multiplexed HTTP/2 connection (re-established on demand)
//! to a gateway, and speaks the protobuf API of `relay_core::wire::v1`. It is what the
//! `relay` CLI, the integration tests and `loadtest` use, so they all exercise the real
//! wire.
//!
//! ```no_run
//! # async fn demo() -> Result<(), relay_client::ClientError> {
//! use relay_client::{Client, Trust};
//! let client = Client::new("https://127.0.0.1:8443", Trust::DangerAcceptAnyCertificate)?;
//! let reg = client.register("pt1....").await?;
//! let client = client.with_credential(reg.credential);
//! let page = client.receive(0, 100, 30).await?;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod calls;
mod h3;
mod tls;

pub use tls::tls_config;

use crate::calls::expect_status;

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prost::Message;
use relay_core::wire::PROTOBUF;
use rustls_pki_types::CertificateDer;

pub use relay_core::wire::v1 as wire;

/// How the client decides to trust the gateway's certificate.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Trust anchors from a PEM file (for the development CA: `data_dir/tls/dev-ca.pem`).
    CaFile(std::path::PathBuf),
    /// Trust anchors given directly.
    Roots(Vec<CertificateDer<'static>>),
    /// Accept any certificate. Only for throwaway local setups.
    DangerAcceptAnyCertificate,
}

/// Everything that can go wrong talking to a gateway.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("gateway answered {status} {code}: {detail}")]
    Api {
        status: u16,
        code: String,
        detail: String,
        retry_after: Option<u64>,
        /// For `wrong_epoch` and `epoch_too_old`: the group's current epoch.
        current_epoch: Option<u64>,
    },
    #[error("transport error: {0}")]
    Transport(String),
    #[error("unexpected response: {0}")]
    Protocol(String),
    #[error("invalid client configuration: {0}")]
    Config(String),
    #[error("this call needs a device credential")]
    NoCredential,
}

impl ClientError {
    /// The API error code, if the gateway answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The HTTP status, if the gateway answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A registered device: its id and its credential (shown once by the gateway).
#[derive(Debug, Clone)]
pub struct Registration {
    pub device_id: u32,
    pub credential: String,
}

/// One recipient of a send.
#[derive(Debug, Clone)]
pub struct Recipient {
    pub address: String,
    /// Empty: every device of the address.
    pub device_ids: Vec<u32>,
}

impl Recipient {
    pub fn address(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            device_ids: Vec::new(),
        }
    }
}

/// A raw HTTP exchange (for tests of malformed requests).
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl RawResponse {
    /// The `error` field of a JSON error body.
    pub fn error_code(&self) -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        v.get("error")?.as_str().map(str::to_owned)
    }
}

type Https = hyper_rustls::HttpsConnector<HttpConnector<Resolve>>;

/// Name resolution of the HTTP/2 transport: the system's, or one fixed address (like
/// curl's `--resolve`: the URL's host still names the server for TLS and `:authority`).
#[derive(Clone, Debug)]
struct Resolve {
    fixed: Option<std::net::SocketAddr>,
    system: hyper_util::client::legacy::connect::dns::GaiResolver,
}

impl tower::Service<hyper_util::client::legacy::connect::dns::Name> for Resolve {
    type Response = std::vec::IntoIter<std::net::SocketAddr>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.system.poll_ready(cx)
    }

    fn call(&mut self, name: hyper_util::client::legacy::connect::dns::Name) -> Self::Future {
        if let Some(addr) = self.fixed {
            return Box::pin(std::future::ready(Ok(vec![addr].into_iter())));
        }
        let lookup = self.system.call(name);
        Box::pin(async move { Ok(lookup.await?.collect::<Vec<_>>().into_iter()) })
    }
}

/// How a [`Client`] reaches the server, beyond the URL.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnectOptions {
    /// The local (source) address to connect from.
    pub local: Option<std::net::IpAddr>,
    /// Connect here instead of resolving the URL's host (which still names the server for
    /// TLS); the URL's port is kept.
    pub resolve: Option<std::net::SocketAddr>,
}

/// Which HTTP version a [`Client`] speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/2 over TLS 1.3 (TCP).
    Http2,
    /// HTTP/3 over QUIC (UDP, same port number).
    Http3,
}

#[derive(Clone, Debug)]
enum Transport {
    H2(Box<HyperClient<Https, Full<Bytes>>>),
    H3(Arc<h3::H3>),
}

/// A connection to one gateway, optionally authenticated as one device.
/// Cloning is cheap and shares the connection.
#[derive(Clone, Debug)]
pub struct Client {
    transport: Transport,
    base: Arc<str>,
    credential: Option<Arc<str>>,
}

impl Client {
    /// An HTTP/2 client for `server` (an `https://host:port` URL).
    pub fn new(server: &str, trust: Trust) -> Result<Self, ClientError> {
        Self::connect(server, trust, Protocol::Http2)
    }

    /// A client for `server` speaking `protocol`.
    #[allow(
        clippy::needless_pass_by_value,
        reason = "the trust setting is handed over, like a builder argument"
    )]
    pub fn connect(server: &str, trust: Trust, protocol: Protocol) -> Result<Self, ClientError> {
        Self::connect_from(server, trust, protocol, None)
    }

    /// Like [`Client::connect`], with the local (source) address to connect from — load
    /// generators spread connections over 127.0.0.x when one address runs out of ports.
    #[allow(
        clippy::needless_pass_by_value,
        reason = "the trust setting is handed over, like a builder argument"
    )]
    pub fn connect_from(
        server: &str,
        trust: Trust,
        protocol: Protocol,
        local: Option<std::net::IpAddr>,
    ) -> Result<Self, ClientError> {
        Self::connect_with(server, trust, protocol, ConnectOptions { local, resolve: None })
    }

    /// A client for `server` speaking `protocol`, reached as `options` say.
    #[allow(
        clippy::needless_pass_by_value,
        reason = "the trust setting is handed over, like a builder argument"
    )]
    pub fn connect_with(
        server: &str,
        trust: Trust,
        protocol: Protocol,
        options: ConnectOptions,
    ) -> Result<Self, ClientError> {
        let ConnectOptions { local, resolve } = options;
        let base = server.trim_end_matches('/');
        let uri: Uri = base
            .parse()
            .map_err(|e| ClientError::Config(format!("server URL: {e}")))?;
        if uri.scheme_str() != Some("https") {
            return Err(ClientError::Config("server URL must start with https://".into()));
        }
        if protocol == Protocol::Http3 {
            let h3 = h3::H3::new(&uri, tls_config(&trust, &[])?, local, resolve)?;
            return Ok(Self {
                transport: Transport::H3(Arc::new(h3)),
                base: base.into(),
                credential: None,
            });
        }
        let tls = tls_config(&trust, &[])?; // hyper-rustls sets ALPN (h2) itself
        // TCP_NODELAY: a lone request must not wait for the peer's delayed ACK (40 ms).
        let mut tcp = HttpConnector::new_with_resolver(Resolve {
            fixed: resolve,
            system: hyper_util::client::legacy::connect::dns::GaiResolver::new(),
        });
        tcp.set_nodelay(true);
        tcp.enforce_http(false);
        tcp.set_local_address(local);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http2()
            .wrap_connector(tcp);
        let http = HyperClient::builder(TokioExecutor::new())
            .http2_only(true)
            .http2_initial_stream_window_size(1 << 20)
            .http2_initial_connection_window_size(4 << 20)
            .build(connector);
        Ok(Self {
            transport: Transport::H2(Box::new(http)),
            base: base.into(),
            credential: None,
        })
    }

    /// The HTTP version this client speaks.
    pub fn protocol(&self) -> Protocol {
        match self.transport {
            Transport::H2(_) => Protocol::Http2,
            Transport::H3(_) => Protocol::Http3,
        }
    }

    /// The same connection, authenticated with `credential`.
    pub fn with_credential(&self, credential: impl Into<String>) -> Self {
        let credential: String = credential.into();
        Self {
            transport: self.transport.clone(),
            base: Arc::clone(&self.base),
            credential: Some(credential.into()),
        }
    }

    async fn call<M: Message, R: Message + Default>(
        &self,
        method: Method,
        path: &str,
        body: &M,
        expect: StatusCode,
    ) -> Result<R, ClientError> {
        let resp = self.raw_proto(method, path, body).await?;
        expect_status(&resp, expect)?;
        R::decode(resp.body).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    async fn raw_proto(&self, method: Method, path: &str, body: &impl Message) -> Result<RawResponse, ClientError> {
        let ct = [(header::CONTENT_TYPE, PROTOBUF.to_owned())];
        self.raw(method, path, &ct, Bytes::from(body.encode_to_vec())).await
    }

    /// Sends any request (the credential, if set, is added as a bearer token unless
    /// `headers` sets `authorization` itself).
    pub async fn raw(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &[(HeaderName, String)],
        body: Bytes,
    ) -> Result<RawResponse, ClientError> {
        let uri = format!("{}{path_and_query}", self.base);
        let version = match self.transport {
            Transport::H2(_) => http::Version::HTTP_2,
            Transport::H3(_) => http::Version::HTTP_3,
        };
        let mut req = Request::builder().method(method).uri(uri).version(version);
        let hdrs = req
            .headers_mut()
            .ok_or_else(|| ClientError::Config("invalid request".into()))?;
        for (name, value) in headers {
            let v = HeaderValue::from_str(value).map_err(|e| ClientError::Config(e.to_string()))?;
            hdrs.append(name.clone(), v);
        }
        if let Some(c) = &self.credential
            && !hdrs.contains_key(header::AUTHORIZATION)
        {
            let v = HeaderValue::from_str(&format!("Bearer {c}")).map_err(|e| ClientError::Config(e.to_string()))?;
            hdrs.insert(header::AUTHORIZATION, v);
        }
        let req = req.body(body).map_err(|e| ClientError::Config(e.to_string()))?;
        let http = match &self.transport {
            Transport::H3(h3) => return h3.request(req).await,
            Transport::H2(http) => http,
        };
        let resp = http
            .request(req.map(Full::new))
            .await
            .map_err(|e| ClientError::Transport(format!("{e:#}")))?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?
            .to_bytes();
        Ok(RawResponse {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}
