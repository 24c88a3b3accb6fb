//! The I/O shell around [`crate::providers`]: one HTTPS client (HTTP/2 where the provider
//! offers it, TLS 1.3), provider credentials kept fresh (APNs provider token re-signed every
//! 30 minutes — Apple refuses tokens older than 60 and refreshes faster than 20; the FCM
//! OAuth2 access token fetched with a service-account JWT and cached until shortly before it
//! expires), an in-flight cap per provider, and retries of 429/5xx/connection errors with
//! [`relay_core::push::retry_delay`].

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use relay_core::push::{Backoff, Pointer, retry_delay};
use tokio::sync::Semaphore;

use crate::handle::PushTarget;
use crate::providers::{self, Outcome};

/// Provider settings and keys.
pub struct SenderConfig {
    /// PEM bundle of the CAs trusted for provider endpoints.
    pub ca_file: PathBuf,
    pub apns: Option<ApnsConfig>,
    pub fcm: Option<FcmConfig>,
    pub vapid_key: p256::ecdsa::SigningKey,
    /// `sub` of VAPID tokens: `mailto:` or `https:` contact of the operator.
    pub vapid_subject: String,
    /// How long a provider keeps an undelivered push.
    pub ttl: Duration,
    pub backoff: Backoff,
    /// Requests in flight per provider.
    pub max_in_flight: usize,
    /// Upper bound on one attempt (connect, TLS, request, response).
    pub request_timeout: Duration,
}

impl std::fmt::Debug for SenderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SenderConfig")
            .field("ca_file", &self.ca_file)
            .field("apns", &self.apns.as_ref().map(|a| &a.base_url))
            .field("fcm", &self.fcm.as_ref().map(|c| &c.base_url))
            .finish_non_exhaustive()
    }
}

/// APNs token-based authentication.
pub struct ApnsConfig {
    pub base_url: String,
    /// The app's bundle id (`apns-topic`).
    pub topic: String,
    pub team_id: String,
    pub key_id: String,
    pub key: p256::ecdsa::SigningKey,
}

impl std::fmt::Debug for ApnsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApnsConfig")
            .field("base_url", &self.base_url)
            .field("topic", &self.topic)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// FCM HTTP v1 with a service account.
pub struct FcmConfig {
    pub base_url: String,
    pub project_id: String,
    pub token_uri: String,
    pub client_email: String,
    pub key: ring::signature::RsaKeyPair,
}

impl std::fmt::Debug for FcmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FcmConfig")
            .field("base_url", &self.base_url)
            .field("project_id", &self.project_id)
            .finish_non_exhaustive()
    }
}

/// Sends pushes; cheap to share (`Arc`).
pub struct Sender {
    http: HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    cfg: SenderConfig,
    apns_jwt: Mutex<Option<(String, Instant)>>,
    fcm_token: tokio::sync::Mutex<Option<(String, Instant)>>,
    in_flight: [Arc<Semaphore>; 3],
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

const APNS_TOKEN_REFRESH: Duration = Duration::from_secs(30 * 60);

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Sender {
    pub fn new(cfg: SenderConfig) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        for c in crate::tls::load_certs(&cfg.ca_file)? {
            roots.add(c).map_err(|e| format!("CA certificate: {e}"))?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut tcp = HttpConnector::new();
        tcp.set_nodelay(true);
        tcp.enforce_http(false);
        tcp.set_connect_timeout(Some(cfg.request_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .enable_http2()
            .wrap_connector(tcp);
        let http = HyperClient::builder(TokioExecutor::new()).build(connector);
        let cap = cfg.max_in_flight.max(1);
        Ok(Self {
            http,
            apns_jwt: Mutex::new(None),
            fcm_token: tokio::sync::Mutex::new(None),
            in_flight: std::array::from_fn(|_| Arc::new(Semaphore::new(cap))),
            cfg,
        })
    }

    /// Delivers one push, retrying transient failures; returns the final outcome.
    pub async fn push(&self, target: &PushTarget, pointer: &Pointer, urgent: bool) -> Outcome {
        let provider = target.provider();
        let slot = match target {
            PushTarget::Apns { .. } => 0,
            PushTarget::Fcm { .. } => 1,
            PushTarget::WebPush { .. } => 2,
        };
        let queued = Instant::now();
        let Ok(_permit) = self.in_flight[slot].acquire().await else {
            return Outcome::Rejected("shutting down".into());
        };
        metrics::histogram!("push_queue_seconds", "provider" => provider).record(queued.elapsed().as_secs_f64());
        metrics::gauge!("push_in_flight", "provider" => provider).increment(1.0);
        let mut attempt = 0;
        let outcome = loop {
            attempt += 1;
            let started = Instant::now();
            let outcome = self.attempt(target, pointer, urgent).await;
            metrics::histogram!("push_provider_seconds", "provider" => provider)
                .record(started.elapsed().as_secs_f64());
            let Outcome::Retry { after, reason } = &outcome else {
                break outcome;
            };
            let Some(delay) = retry_delay(self.cfg.backoff, attempt, *after, rand::random::<f64>()) else {
                break Outcome::Rejected(format!("gave up after {attempt} attempts: {reason}"));
            };
            metrics::counter!("push_retries_total", "provider" => provider).increment(1);
            tracing::debug!(provider, attempt, ?delay, reason = reason.as_str(), "push retry");
            tokio::time::sleep(delay).await;
        };
        metrics::gauge!("push_in_flight", "provider" => provider).decrement(1.0);
        let (result, reason) = match &outcome {
            Outcome::Delivered => ("accepted", String::new()),
            Outcome::Dead(r) => ("dead", r.clone()),
            Outcome::Rejected(r) | Outcome::Retry { reason: r, .. } => ("rejected", r.clone()),
        };
        metrics::counter!("push_sent_total", "provider" => provider, "result" => result, "reason" => reason)
            .increment(1);
        outcome
    }

    async fn attempt(&self, target: &PushTarget, pointer: &Pointer, urgent: bool) -> Outcome {
        let apns_jwt = match (target, &self.cfg.apns) {
            (PushTarget::Apns { .. }, None) => return Outcome::Rejected("APNs is not configured".into()),
            (PushTarget::Apns { .. }, Some(a)) => self.apns_token(a),
            _ => String::new(),
        };
        let fcm_token = match (target, &self.cfg.fcm) {
            (PushTarget::Fcm { .. }, None) => return Outcome::Rejected("FCM is not configured".into()),
            (PushTarget::Fcm { .. }, Some(f)) => match self.fcm_access_token(f).await {
                Ok(t) => t,
                Err(e) => return Outcome::Retry { after: None, reason: e },
            },
            _ => String::new(),
        };
        let vapid = |origin: &str| {
            providers_vapid(
                &self.cfg.vapid_key,
                origin,
                &self.cfg.vapid_subject,
                unix_now() + 12 * 3600,
            )
        };
        let cx = providers::Context {
            apns_base: self.cfg.apns.as_ref().map_or("", |a| a.base_url.as_str()),
            apns_topic: self.cfg.apns.as_ref().map_or("", |a| a.topic.as_str()),
            apns_jwt: &apns_jwt,
            fcm_base: self.cfg.fcm.as_ref().map_or("", |f| f.base_url.as_str()),
            fcm_project: self.cfg.fcm.as_ref().map_or("", |f| f.project_id.as_str()),
            fcm_access_token: &fcm_token,
            vapid: &vapid,
            ttl: self.cfg.ttl,
            now_unix: unix_now(),
        };
        let req = match providers::build(target, pointer, urgent, &cx) {
            Ok(r) => r.map(|b| Full::new(Bytes::from(b))),
            Err(e) => return Outcome::Rejected(e.to_string()),
        };
        let exchange = async {
            let resp = self.http.request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, retry_after, body))
        };
        match tokio::time::timeout(self.cfg.request_timeout, exchange).await {
            Ok(Ok((status, retry_after, body))) => {
                providers::classify(target.provider(), status, retry_after.as_deref(), &body)
            }
            Ok(Err(e)) => Outcome::Retry {
                after: None,
                reason: format!("connection: {e}"),
            },
            Err(_) => Outcome::Retry {
                after: None,
                reason: "timeout".into(),
            },
        }
    }

    /// The UnifiedPush discovery probe: a `GET` of the endpoint must answer 2xx with JSON
    /// naming `unifiedpush` — proof that the URL is a push distributor, not an arbitrary
    /// service the proxy would otherwise be made to POST to.
    pub async fn probe_unifiedpush(&self, endpoint: &str) -> Result<(), String> {
        let req = http::Request::get(endpoint)
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let resp = self.http.request(req).await.map_err(|e| e.to_string())?;
            if !resp.status().is_success() {
                return Err(format!("probe answered {}", resp.status()));
            }
            let body = http_body_util::Limited::new(resp.into_body(), 16 * 1024)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&body).map_err(|_| "probe: not JSON".to_owned())?;
            if v.get("unifiedpush").is_some_and(serde_json::Value::is_object) {
                Ok(())
            } else {
                Err("probe: not a UnifiedPush endpoint".into())
            }
        };
        tokio::time::timeout(self.cfg.request_timeout, exchange)
            .await
            .map_err(|_| "probe: timeout".to_owned())?
    }

    /// The shared APNs provider token, re-signed every 30 minutes.
    fn apns_token(&self, a: &ApnsConfig) -> String {
        let mut cached = self.apns_jwt.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((jwt, at)) = cached.as_ref()
            && at.elapsed() < APNS_TOKEN_REFRESH
        {
            return jwt.clone();
        }
        let jwt = crate::jwt::sign_es256(
            &a.key,
            Some(&a.key_id),
            &serde_json::json!({ "iss": a.team_id, "iat": unix_now() }),
        );
        *cached = Some((jwt.clone(), Instant::now()));
        jwt
    }

    /// An FCM access token from the OAuth2 JWT-bearer grant, cached until a minute before
    /// it expires.
    async fn fcm_access_token(&self, f: &FcmConfig) -> Result<String, String> {
        let mut cached = self.fcm_token.lock().await;
        if let Some((token, until)) = cached.as_ref()
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        let now = unix_now();
        let assertion = crate::jwt::sign_rs256(
            &f.key,
            None,
            &serde_json::json!({
                "iss": f.client_email,
                "scope": "https://www.googleapis.com/auth/firebase.messaging",
                "aud": f.token_uri,
                "iat": now,
                "exp": now + 3600,
            }),
        )?;
        let form = format!("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}");
        let req = http::Request::post(&f.token_uri)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(form)))
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| format!("token endpoint: {e}"))?;
            let status = resp.status();
            let body = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            if !status.is_success() {
                return Err(format!("token endpoint answered {status}"));
            }
            let v: serde_json::Value = serde_json::from_slice(&body).map_err(|_| "token endpoint: not JSON")?;
            let token = v["access_token"].as_str().ok_or("token endpoint: no access_token")?;
            let expires_in = v["expires_in"].as_u64().unwrap_or(3600);
            Ok((token.to_owned(), expires_in))
        };
        let (token, expires_in) = tokio::time::timeout(self.cfg.request_timeout, exchange)
            .await
            .map_err(|_| "token endpoint: timeout".to_owned())??;
        let valid = Duration::from_secs(expires_in.saturating_sub(60).max(1));
        *cached = Some((token.clone(), Instant::now() + valid));
        Ok(token)
    }
}

fn providers_vapid(key: &p256::ecdsa::SigningKey, origin: &str, subject: &str, exp: u64) -> String {
    crate::webpush::vapid_authorization(key, origin, subject, exp)
}
