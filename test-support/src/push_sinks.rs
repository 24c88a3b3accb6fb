//! Local provider endpoints that speak APNs and Web Push on loopback (HTTPS, HTTP/2 and
//! HTTP/1.1, a certificate from the development CA), check what a real provider checks,
//! and record every push. Each answers from a script first (e.g. `503` with `Retry-After`)
//! and then with its provider's success status; tokens marked dead answer `410`.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

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
    /// FCM HTTP v1 and its OAuth2 token endpoint (`POST /token`): the JWT-bearer assertion
    /// must be signed (RS256) by the service account's key (`rsa_public_der`, PKCS#1 DER);
    /// messages need a token the endpoint issued.
    Fcm {
        rsa_public_der: Vec<u8>,
        client_email: String,
        project_id: String,
    },
}

impl std::fmt::Debug for SinkKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Apns { .. } => "SinkKind::Apns",
            Self::WebPush { .. } => "SinkKind::WebPush",
            Self::Fcm { .. } => "SinkKind::Fcm",
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
    /// OAuth2 access tokens issued (FCM).
    issued: Vec<String>,
    /// Every OAuth2 JWT-bearer assertion received (FCM), accepted or not.
    assertions: Vec<String>,
}

#[derive(Debug)]
pub struct PushSink {
    addr: SocketAddr,
    ca: PathBuf,
    inner: Arc<Mutex<Inner>>,
    /// The certificate's directory, when the sink made its own.
    _dir: Option<tempfile::TempDir>,
    task: tokio::task::JoinHandle<()>,
}

/// The APNs team, key id and topic [`PushSink::start_apns`] expects.
pub const APNS_TEAM_ID: &str = "TEAM123456";
pub const APNS_KEY_ID: &str = "KEY1234567";
pub const APNS_TOPIC: &str = "net.example.rcs";

impl PushSink {
    /// An APNs endpoint accepting provider tokens signed by `key` for [`APNS_TEAM_ID`],
    /// [`APNS_KEY_ID`] and [`APNS_TOPIC`].
    pub async fn start_apns(key: &p256::ecdsa::SigningKey) -> Self {
        Self::start(SinkKind::Apns {
            key: *key.verifying_key(),
            team_id: APNS_TEAM_ID.into(),
            key_id: APNS_KEY_ID.into(),
            topic: APNS_TOPIC.into(),
        })
        .await
    }

    /// The push proxy's APNs settings for this endpoint (see [`PushSink::start_apns`]).
    pub fn apns_config(&self, key: &p256::ecdsa::SigningKey) -> push_proxy::sender::ApnsConfig {
        push_proxy::sender::ApnsConfig {
            base_url: self.url(),
            topic: APNS_TOPIC.into(),
            team_id: APNS_TEAM_ID.into(),
            key_id: APNS_KEY_ID.into(),
            key: key.clone(),
        }
    }

    pub async fn start(kind: SinkKind) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let listen = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut sink = Self::start_at(kind, listen, dir.path())
            .await
            .expect("a sink on a free port");
        sink._dir = Some(dir);
        sink
    }

    /// A sink listening on `listen`, its development CA and certificate (for `localhost`)
    /// in `dir` (`dev-ca.pem`, kept across restarts).
    pub async fn start_at(kind: SinkKind, listen: SocketAddr, dir: &std::path::Path) -> std::io::Result<Self> {
        gateway::tls::ensure_dev_certificate(dir, &[]).map_err(std::io::Error::other)?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("dev-cert.pem"))
            .expect("cert")
            .collect::<Result<_, _>>()
            .expect("cert");
        let key = PrivateKeyDer::from_pem_file(dir.join("dev-key.pem")).expect("key");
        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server config");
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
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
        Ok(Self {
            addr,
            ca: dir.join("dev-ca.pem"),
            inner,
            _dir: None,
            task,
        })
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

    /// The FCM OAuth2 assertions (JWTs) the token endpoint received.
    pub fn assertions(&self) -> Vec<String> {
        self.lock().assertions.clone()
    }

    /// OAuth2 access tokens the FCM token endpoint issued.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.lock().issued.clone()
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

async fn handle(
    State((kind, inner, addr)): State<SinkState>,
    method: axum::http::Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    // A Web Push sink is also a UnifiedPush distributor: it answers the discovery probe.
    if method == axum::http::Method::GET && matches!(kind.as_ref(), SinkKind::WebPush { .. }) {
        return axum::Json(serde_json::json!({ "unifiedpush": { "version": 1 } })).into_response();
    }
    if let (
        SinkKind::Fcm {
            rsa_public_der,
            client_email,
            ..
        },
        "/token",
    ) = (kind.as_ref(), path.as_str())
    {
        let audience = format!("https://localhost:{}/token", addr.port());
        let mut inner = inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = form_value(&body, "assertion") {
            inner.assertions.push(a.to_owned());
        }
        return match check_oauth(rsa_public_der, client_email, &audience, &body) {
            Ok(()) => {
                let token = format!("ya29.test-{}", inner.issued.len());
                inner.issued.push(token.clone());
                axum::Json(serde_json::json!({ "access_token": token, "expires_in": 3599, "token_type": "Bearer" }))
                    .into_response()
            }
            Err(reason) => {
                inner.refused.push(reason);
                (
                    StatusCode::BAD_REQUEST,
                    axum::Json(serde_json::json!({ "error": "invalid_grant" })),
                )
                    .into_response()
            }
        };
    }
    let checked = match kind.as_ref() {
        SinkKind::Apns {
            key,
            team_id,
            key_id,
            topic,
        } => check_apns(key, team_id, key_id, topic, &path, &headers, &body),
        SinkKind::WebPush { ua_secret, auth } => check_webpush(ua_secret, auth, addr, &headers, &body),
        SinkKind::Fcm { project_id, .. } => {
            let issued = inner.lock().unwrap_or_else(|e| e.into_inner()).issued.clone();
            check_fcm(project_id, &issued, &path, &headers, &body)
        }
    };
    let mut inner = inner.lock().unwrap_or_else(|e| e.into_inner());
    let payload = match checked {
        Ok(p) => p,
        Err(reason) => {
            inner.refused.push(reason.clone());
            return (StatusCode::BAD_REQUEST, reason).into_response();
        }
    };
    let ok = if matches!(kind.as_ref(), SinkKind::WebPush { .. }) {
        201
    } else {
        200
    };
    // FCM names the token in the body; the others in the path.
    let target = match kind.as_ref() {
        SinkKind::Fcm { .. } => serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["message"]["token"].as_str().map(str::to_owned))
            .unwrap_or_default(),
        _ => path.clone(),
    };
    let (status, retry_after) = if inner.dead.iter().any(|d| target.ends_with(d.as_str())) {
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
    } else if status == 410 && matches!(kind.as_ref(), SinkKind::Fcm { .. }) {
        // FCM's answer for a token that is gone: 404 UNREGISTERED.
        (
            StatusCode::NOT_FOUND,
            r#"{"error":{"code":404,"status":"NOT_FOUND","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}]}}"#,
        )
            .into_response()
    } else if status == 429 && matches!(kind.as_ref(), SinkKind::Fcm { .. }) {
        (
            StatusCode::TOO_MANY_REQUESTS,
            r#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"QUOTA_EXCEEDED"}]}}"#,
        )
            .into_response()
    } else {
        StatusCode::from_u16(status).unwrap_or(StatusCode::OK).into_response()
    };
    if let Some(secs) = retry_after {
        resp.headers_mut().insert("retry-after", secs.into());
    }
    resp
}

fn form_value<'b>(body: &'b [u8], name: &str) -> Option<&'b str> {
    std::str::from_utf8(body)
        .ok()?
        .split('&')
        .find_map(|pair| pair.split_once('=').filter(|(k, _)| *k == name).map(|(_, v)| v))
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Result<&'h str, String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| format!("missing header {name}"))
}

use relay_net::clock::unix_secs as unix_now;

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
    let claims = push_proxy::jwt::verify_es256(key, jwt).map_err(|e| e.to_string())?;
    let header_kid = push_proxy::jwt::parts(jwt).map_err(|e| e.to_string())?.header["kid"].clone();
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
    push_proxy::webpush::verify_vapid(header(headers, "authorization")?, &audience, unix_now())
        .map_err(|e| e.to_string())?;
    if header(headers, "content-encoding")? != "aes128gcm" {
        return Err("content-encoding must be aes128gcm".into());
    }
    header(headers, "ttl")?.parse::<u64>().map_err(|_| "TTL")?;
    if !matches!(header(headers, "urgency")?, "very-low" | "low" | "normal" | "high") {
        return Err("Urgency".into());
    }
    push_proxy::webpush::decrypt(ua_secret, auth, body).map_err(|e| e.to_string())
}

fn check_oauth(rsa_public_der: &[u8], client_email: &str, audience: &str, body: &[u8]) -> Result<(), String> {
    let form = std::str::from_utf8(body).map_err(|_| "form is not UTF-8")?;
    let mut grant = None;
    let mut assertion = None;
    for pair in form.split('&') {
        match pair.split_once('=') {
            Some(("grant_type", v)) => grant = Some(v),
            Some(("assertion", v)) => assertion = Some(v),
            _ => {}
        }
    }
    if grant != Some("urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer") {
        return Err("grant_type is not jwt-bearer".into());
    }
    let claims =
        push_proxy::jwt::verify_rs256(rsa_public_der, assertion.ok_or("no assertion")?).map_err(|e| e.to_string())?;
    if claims["iss"] != client_email || claims["aud"] != audience {
        return Err(format!("iss/aud: {claims}"));
    }
    if claims["scope"] != "https://www.googleapis.com/auth/firebase.messaging" {
        return Err("scope".into());
    }
    let (iat, exp) = (
        claims["iat"].as_u64().ok_or("iat")?,
        claims["exp"].as_u64().ok_or("exp")?,
    );
    if exp <= unix_now() || exp > iat + 3600 {
        return Err("exp".into());
    }
    Ok(())
}

fn check_fcm(
    project_id: &str,
    issued: &[String],
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Vec<u8>, String> {
    if path != format!("/v1/projects/{project_id}/messages:send") {
        return Err(format!("path {path}"));
    }
    let token = header(headers, "authorization")?
        .strip_prefix("Bearer ")
        .ok_or("authorization is not a Bearer token")?;
    if !issued.iter().any(|t| t == token) {
        return Err("UNAUTHENTICATED: access token was not issued".into());
    }
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|_| "body is not JSON")?;
    let m = &v["message"];
    if !m["token"].is_string() || !matches!(m["android"]["priority"].as_str(), Some("high" | "normal")) {
        return Err("message.token / android.priority".into());
    }
    if !m["android"]["ttl"].as_str().is_some_and(|t| t.ends_with('s')) || !m["android"]["collapse_key"].is_string() {
        return Err("android.ttl / collapse_key".into());
    }
    serde_json::to_vec(&m["data"]).map_err(|e| e.to_string())
}

/// A 2048-bit RSA key for a test FCM service account, made with the `openssl` command line:
/// (PKCS#8 PEM, PKCS#1 DER public key for [`SinkKind::Fcm`]).
pub fn rsa_key(dir: &std::path::Path) -> (String, Vec<u8>) {
    let key = dir.join("fcm-key.pem");
    let status = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key)
        .status()
        .expect("the openssl command line is installed (.ci/run installs it)");
    assert!(status.success(), "openssl genpkey failed");
    let public = std::process::Command::new("openssl")
        .args(["rsa", "-RSAPublicKey_out", "-outform", "DER", "-in"])
        .arg(&key)
        .output()
        .expect("openssl rsa");
    assert!(public.status.success(), "openssl rsa failed");
    (std::fs::read_to_string(&key).expect("key"), public.stdout)
}

/// Writes a Google service-account JSON file for `sink` (its `/token` endpoint).
pub fn write_service_account(
    dir: &std::path::Path,
    sink: &PushSink,
    key_pem: &str,
    project_id: &str,
    client_email: &str,
) -> PathBuf {
    let sa = serde_json::json!({
        "type": "service_account",
        "project_id": project_id,
        "client_email": client_email,
        "private_key": key_pem,
        "token_uri": format!("{}/token", sink.url()),
    });
    let path = dir.join("service-account.json");
    std::fs::write(&path, sa.to_string()).expect("write service account");
    path
}
