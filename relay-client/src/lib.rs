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

mod h3;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prost::Message;
use relay_core::wire::{PROTOBUF, v1};
use rustls::ClientConfig;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

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

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

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
        let base = server.trim_end_matches('/');
        let uri: Uri = base
            .parse()
            .map_err(|e| ClientError::Config(format!("server URL: {e}")))?;
        if uri.scheme_str() != Some("https") {
            return Err(ClientError::Config("server URL must start with https://".into()));
        }
        if protocol == Protocol::Http3 {
            let h3 = h3::H3::new(&uri, tls_config(&trust, &[])?, local)?;
            return Ok(Self {
                transport: Transport::H3(Arc::new(h3)),
                base: base.into(),
                credential: None,
            });
        }
        let tls = tls_config(&trust, &[])?; // hyper-rustls sets ALPN (h2) itself
        // TCP_NODELAY: a lone request must not wait for the peer's delayed ACK (40 ms).
        let mut tcp = HttpConnector::new();
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

    /// `GET /healthz`.
    pub async fn healthz(&self) -> Result<(), ClientError> {
        let resp = self.raw(Method::GET, "/healthz", &[], Bytes::new()).await?;
        expect_status(&resp, StatusCode::OK)?;
        Ok(())
    }

    /// Registers a device with an operator-issued provisioning token.
    pub async fn register(&self, provisioning_token: &str) -> Result<Registration, ClientError> {
        self.register_with(v1::RegisterRequest {
            provisioning_token: provisioning_token.to_owned(),
            address: String::new(),
        })
        .await
    }

    /// Registers without a token (only on gateways with `danger_open_registration`).
    pub async fn register_open(&self, address: &str) -> Result<Registration, ClientError> {
        self.register_with(v1::RegisterRequest {
            provisioning_token: String::new(),
            address: address.to_owned(),
        })
        .await
    }

    async fn register_with(&self, body: v1::RegisterRequest) -> Result<Registration, ClientError> {
        let r: v1::RegisterResponse = self
            .call(Method::POST, "/v1/devices", &body, StatusCode::CREATED)
            .await?;
        Ok(Registration {
            device_id: r.device_id,
            credential: r.credential,
        })
    }

    /// Sends one MLS message to recipients. Returns once the gateway has it durably.
    pub async fn send(
        &self,
        recipients: &[Recipient],
        message: Bytes,
        client_message_id: Option<[u8; 16]>,
        urgent: bool,
    ) -> Result<v1::SendResponse, ClientError> {
        let body = v1::SendRequest {
            recipients: recipients
                .iter()
                .map(|r| v1::Recipient {
                    address: r.address.clone(),
                    device_ids: r.device_ids.clone(),
                })
                .collect(),
            message,
            client_message_id: client_message_id
                .map(|c| Bytes::copy_from_slice(&c))
                .unwrap_or_default(),
            urgent,
        };
        let resp = self.raw_proto(Method::POST, "/v1/messages", &body).await?;
        if resp.status != StatusCode::CREATED && resp.status != StatusCode::OK {
            return Err(api_error(&resp));
        }
        v1::SendResponse::decode(resp.body).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Reads envelopes after cursor `after`; with `wait_secs > 0`, waits for one.
    pub async fn receive(&self, after: u64, limit: u32, wait_secs: u32) -> Result<v1::ReceiveResponse, ClientError> {
        let path = format!("/v1/messages?after={after}&limit={limit}&wait={wait_secs}");
        let resp = self.raw(Method::GET, &path, &[], Bytes::new()).await?;
        expect_status(&resp, StatusCode::OK)?;
        v1::ReceiveResponse::decode(resp.body).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Acknowledges envelopes by server id and/or every envelope up to a cursor.
    pub async fn ack(&self, server_ids: &[Bytes], up_to: Option<u64>) -> Result<(), ClientError> {
        let body = v1::AckRequest {
            server_ids: server_ids.to_vec(),
            up_to: up_to.unwrap_or(0),
        };
        let resp = self.raw_proto(Method::POST, "/v1/messages/ack", &body).await?;
        expect_status(&resp, StatusCode::NO_CONTENT)
    }

    /// Uploads TLS-encoded KeyPackages (at most 100 per call) to the directory.
    pub async fn upload_key_packages(&self, key_packages: &[Bytes]) -> Result<u32, ClientError> {
        let body = v1::UploadKeyPackagesRequest {
            key_packages: key_packages.to_vec(),
        };
        let r: v1::UploadKeyPackagesResponse = self
            .call(Method::POST, "/v1/keypackages", &body, StatusCode::CREATED)
            .await?;
        Ok(r.stored)
    }

    /// Claims one KeyPackage per device of each address (one-time packages exactly once,
    /// then the last-resort package).
    pub async fn claim_key_packages(&self, addresses: &[&str]) -> Result<Vec<v1::ClaimedKeyPackage>, ClientError> {
        self.claim_key_packages_as("", addresses).await
    }

    /// [`Client::claim_key_packages`] naming the claimer's own address, which a claim from a
    /// peer carrier's subscribers needs.
    pub async fn claim_key_packages_as(
        &self,
        requester: &str,
        addresses: &[&str],
    ) -> Result<Vec<v1::ClaimedKeyPackage>, ClientError> {
        let body = v1::ClaimKeyPackagesRequest {
            addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
            requester: requester.to_owned(),
        };
        let r: v1::ClaimKeyPackagesResponse = self
            .call(Method::POST, "/v1/keypackages/claim", &body, StatusCode::OK)
            .await?;
        Ok(r.key_packages)
    }

    /// How many KeyPackages this device has left in the directory.
    pub async fn key_package_count(&self) -> Result<v1::KeyPackageCountResponse, ClientError> {
        let resp = self
            .raw(Method::GET, "/v1/keypackages/count", &[], Bytes::new())
            .await?;
        expect_status(&resp, StatusCode::OK)?;
        v1::KeyPackageCountResponse::decode(resp.body).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Publishes a group's latest GroupInfo (an MLSMessage) for external joins.
    pub async fn put_group_info(&self, group_id: &[u8], group_info: Bytes) -> Result<(), ClientError> {
        let path = format!("/v1/groups/{}/info", relay_core::hex::encode(group_id));
        let ct = [(header::CONTENT_TYPE, "message/mls".to_owned())];
        let resp = self.raw(Method::PUT, &path, &ct, group_info).await?;
        expect_status(&resp, StatusCode::NO_CONTENT)
    }

    /// The latest GroupInfo published for a group.
    pub async fn group_info(&self, group_id: &[u8]) -> Result<Bytes, ClientError> {
        let resp = self
            .raw(
                Method::GET,
                &format!("/v1/groups/{}/info", relay_core::hex::encode(group_id)),
                &[],
                Bytes::new(),
            )
            .await?;
        expect_status(&resp, StatusCode::OK)?;
        Ok(resp.body)
    }

    /// Stores this device's push handle (from the push proxy) at the gateway.
    pub async fn set_push_handle(&self, handle: &str) -> Result<(), ClientError> {
        let body = v1::SetPushHandleRequest { handle: handle.into() };
        let resp = self.raw_proto(Method::PUT, "/v1/devices/self/push", &body).await?;
        expect_status(&resp, StatusCode::NO_CONTENT)
    }

    /// Removes this device's push handle: no more pushes.
    pub async fn clear_push_handle(&self) -> Result<(), ClientError> {
        let resp = self
            .raw(Method::DELETE, "/v1/devices/self/push", &[], Bytes::new())
            .await?;
        expect_status(&resp, StatusCode::NO_CONTENT)
    }

    /// Deletes this device and its queued envelopes.
    pub async fn delete_device(&self) -> Result<(), ClientError> {
        let resp = self.raw(Method::DELETE, "/v1/devices/self", &[], Bytes::new()).await?;
        expect_status(&resp, StatusCode::NO_CONTENT)
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

fn expect_status(resp: &RawResponse, expect: StatusCode) -> Result<(), ClientError> {
    if resp.status == expect {
        Ok(())
    } else {
        Err(api_error(resp))
    }
}

fn api_error(resp: &RawResponse) -> ClientError {
    let json = serde_json::from_slice::<serde_json::Value>(&resp.body).ok();
    let field = |name: &str| json.as_ref().and_then(|v| v.get(name));
    let code = field("error").and_then(|e| e.as_str()).unwrap_or("unknown").to_owned();
    let detail = match &json {
        Some(_) => field("detail").and_then(|e| e.as_str()).unwrap_or("").to_owned(),
        None => String::from_utf8_lossy(&resp.body).into_owned(),
    };
    let current_epoch = field("current_epoch").and_then(serde_json::Value::as_u64);
    let retry_after = resp
        .headers
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    ClientError::Api {
        status: resp.status.as_u16(),
        code,
        detail,
        retry_after,
        current_epoch,
    }
}

/// A rustls client configuration (TLS 1.3 only, ring) for `trust`.
pub fn tls_config(trust: &Trust, alpn: &[&[u8]]) -> Result<ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Config(e.to_string()))?;
    let mut config = match trust {
        Trust::CaFile(path) => builder
            .with_root_certificates(roots(&load_pem(path)?)?)
            .with_no_client_auth(),
        Trust::Roots(certs) => builder.with_root_certificates(roots(certs)?).with_no_client_auth(),
        Trust::DangerAcceptAnyCertificate => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(danger::AcceptAny(provider)))
            .with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

fn load_pem(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ClientError::Config(format!("{}: {e}", path.display())))
}

fn roots(certs: &[CertificateDer<'static>]) -> Result<rustls::RootCertStore, ClientError> {
    let mut store = rustls::RootCertStore::empty();
    for c in certs {
        store
            .add(c.clone())
            .map_err(|e| ClientError::Config(format!("CA certificate: {e}")))?;
    }
    if store.is_empty() {
        return Err(ClientError::Config("no CA certificate given".into()));
    }
    Ok(store)
}

mod danger {
    use std::sync::Arc;

    use rustls::DigitallySignedStruct;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::{CryptoProvider, verify_tls13_signature};
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

    /// Accepts any certificate but still checks the handshake signature.
    #[derive(Debug)]
    pub(crate) struct AcceptAny(pub(crate) Arc<CryptoProvider>);

    impl ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Err(rustls::Error::General("TLS 1.2 is not used".into()))
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
}
