//! Local provider endpoints that speak APNs and Web Push on loopback (HTTPS, HTTP/2 and
//! HTTP/1.1, a certificate from the development CA), check what a real provider checks,
//! and record every push. Each answers from a script first (e.g. `503` with `Retry-After`)
//! and then with its provider's success status; tokens marked dead answer `410`.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// What the sink checks.
#[derive(Clone)]
pub enum SinkKind {
    /// APNs: `POST /3/device/{token}`, ES256 provider token signed by `key`, required headers.
    Apns {
        key: p256::ecdsa::VerifyingKey,
        team_id: String,
        key_id: String,
        topic: String,
    },
    /// A Web Push service: VAPID on every request, body decrypted with the subscription key.
    WebPush { ua_secret: p256::SecretKey, auth: [u8; 16] },
}

impl std::fmt::Debug for SinkKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Apns { .. } => "SinkKind::Apns",
            Self::WebPush { .. } => "SinkKind::WebPush",
        })
    }
}

/// One push as the sink saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub at: Instant,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The payload as the device would see it (APNs: the JSON body; Web Push: decrypted).
    pub payload: Vec<u8>,
    /// The status the sink answered.
    pub status: u16,
}

#[derive(Debug, Default)]
struct Inner {
    script: VecDeque<(u16, Option<u64>)>,
    dead: HashSet<String>,
    pushes: Vec<Recorded>,
    refused: Vec<String>,
}

#[derive(Debug)]
pub struct PushSink {
    addr: SocketAddr,
    ca: PathBuf,
    inner: Arc<Mutex<Inner>>,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl PushSink {
    pub async fn start(kind: SinkKind) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        gateway::tls::ensure_dev_certificate(dir.path(), &[]).expect("dev certificate");
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.path().join("dev-cert.pem"))
            .expect("cert")
            .collect::<Result<_, _>>()
            .expect("cert");
        let key = PrivateKeyDer::from_pem_file(dir.path().join("dev-key.pem")).expect("key");
        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server config");
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = axum::Router::new()
            .fallback(handle)
            .with_state((Arc::new(kind), Arc::clone(&inner), addr));
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), TowerToHyperService::new(app))
                        .await;
                });
            }
        });
        Self {
            addr,
            ca: dir.path().join("dev-ca.pem"),
            inner,
            _dir: dir,
            task,
        }
    }

    /// `https://localhost:port`.
    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    /// The CA that signed the sink's certificate.
    pub fn ca(&self) -> PathBuf {
        self.ca.clone()
    }

    /// The next requests get these answers (status, `Retry-After` seconds), in order.
    pub fn script(&self, answers: &[(u16, Option<u64>)]) {
        self.lock().script.extend(answers.iter().copied());
    }

    /// Requests whose path ends with `suffix` (an APNs token, a subscription id) answer 410.
    pub fn mark_dead(&self, suffix: &str) {
        self.lock().dead.insert(suffix.to_owned());
    }

    pub fn pushes(&self) -> Vec<Recorded> {
        self.lock().pushes.clone()
    }

    /// Requests refused because a check failed, with the reason.
    pub fn refused(&self) -> Vec<String> {
        self.lock().refused.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for PushSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type SinkState = (Arc<SinkKind>, Arc<Mutex<Inner>>, SocketAddr);

async fn handle(State((kind, inner, addr)): State<SinkState>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path().to_owned();
    let checked = match kind.as_ref() {
        SinkKind::Apns {
            key,
            team_id,
            key_id,
            topic,
        } => check_apns(key, team_id, key_id, topic, &path, &headers, &body),
        SinkKind::WebPush { ua_secret, auth } => check_webpush(ua_secret, auth, addr, &headers, &body),
    };
    let mut inner = inner.lock().unwrap_or_else(|e| e.into_inner());
    let payload = match checked {
        Ok(p) => p,
        Err(reason) => {
            inner.refused.push(reason.clone());
            return (StatusCode::BAD_REQUEST, reason).into_response();
        }
    };
    let ok = if matches!(kind.as_ref(), SinkKind::Apns { .. }) {
        200
    } else {
        201
    };
    let (status, retry_after) = if inner.dead.iter().any(|d| path.ends_with(d.as_str())) {
        (410, None)
    } else {
        inner.script.pop_front().unwrap_or((ok, None))
    };
    inner.pushes.push(Recorded {
        at: Instant::now(),
        path,
        headers,
        body,
        payload,
        status,
    });
    let mut resp = if status == 410 && matches!(kind.as_ref(), SinkKind::Apns { .. }) {
        (StatusCode::GONE, r#"{"reason":"Unregistered"}"#).into_response()
    } else {
        StatusCode::from_u16(status).unwrap_or(StatusCode::OK).into_response()
    };
    if let Some(secs) = retry_after {
        resp.headers_mut().insert("retry-after", secs.into());
    }
    resp
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Result<&'h str, String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| format!("missing header {name}"))
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn check_apns(
    key: &p256::ecdsa::VerifyingKey,
    team_id: &str,
    key_id: &str,
    topic: &str,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Vec<u8>, String> {
    let token = path.strip_prefix("/3/device/").ok_or("not /3/device/{token}")?;
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("BadDeviceToken".into());
    }
    let jwt = header(headers, "authorization")?
        .strip_prefix("bearer ")
        .ok_or("authorization is not a bearer token")?;
    let claims = push_proxy::jwt::verify_es256(key, jwt)?;
    let header_kid = push_proxy::jwt::parts(jwt)?.header["kid"].clone();
    if header_kid != key_id || claims["iss"] != team_id {
        return Err("InvalidProviderToken: kid or iss".into());
    }
    let iat = claims["iat"].as_u64().ok_or("no iat")?;
    if iat + 3600 < unix_now() || iat > unix_now() + 60 {
        return Err("ExpiredProviderToken".into());
    }
    if header(headers, "apns-topic")? != topic {
        return Err("BadTopic".into());
    }
    match (header(headers, "apns-push-type")?, header(headers, "apns-priority")?) {
        ("background", "5") | ("alert", "10") => {}
        other => return Err(format!("push type / priority {other:?}")),
    }
    header(headers, "apns-collapse-id")?;
    header(headers, "apns-expiration")?
        .parse::<u64>()
        .map_err(|_| "apns-expiration")?;
    serde_json::from_slice::<serde_json::Value>(body).map_err(|_| "body is not JSON")?;
    Ok(body.to_vec())
}

fn check_webpush(
    ua_secret: &p256::SecretKey,
    auth: &[u8; 16],
    addr: SocketAddr,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Vec<u8>, String> {
    let audience = format!("https://localhost:{}", addr.port());
    push_proxy::webpush::verify_vapid(header(headers, "authorization")?, &audience, unix_now())?;
    if header(headers, "content-encoding")? != "aes128gcm" {
        return Err("content-encoding must be aes128gcm".into());
    }
    header(headers, "ttl")?.parse::<u64>().map_err(|_| "TTL")?;
    if !matches!(header(headers, "urgency")?, "very-low" | "low" | "normal" | "high") {
        return Err("Urgency".into());
    }
    push_proxy::webpush::decrypt(ua_secret, auth, body).map_err(|e| e.to_string())
}
