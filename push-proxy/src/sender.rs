//! The I/O shell around [`crate::providers`]: one HTTPS client (HTTP/2 where the provider
//! offers it, TLS 1.3), provider credentials kept fresh (APNs provider token re-signed every
//! 30 minutes — Apple refuses tokens older than 60 and refreshes faster than 20; the FCM
//! OAuth2 access token fetched with a service-account JWT and cached until shortly before it
//! expires), an in-flight cap per provider, and retries of 429/5xx/connection errors with
//! [`relay_core::push::retry_delay`].

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use relay_core::push::{Backoff, Pointer, retry_delay};
use relay_net::clock::unix_secs as unix_now;
use relay_net::https::{ClientOptions, HttpsClient, Reply};
use tokio::sync::Semaphore;

use crate::error::{ProviderError, SetupError};
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
    http: HttpsClient,
    cfg: SenderConfig,
    apns_jwt: Mutex<Option<(String, Instant)>>,
    fcm_token: tokio::sync::Mutex<Option<(String, Instant)>>,
    in_flight: [Arc<Semaphore>; 3],
}

/// A push for a provider this proxy has no configuration for: says so in the log, at most
/// once a minute per provider (the counter `push_sent_total{result="rejected"}` has them all).
fn unconfigured(provider: &'static str, section: &'static str) {
    static LOGGED: relay_net::throttle::Throttle = relay_net::throttle::Throttle::per_minute();
    if LOGGED.due(provider) {
        tracing::warn!(
            provider,
            "a push for {provider} was rejected: {provider} is not configured (add {section} to the push proxy's configuration)"
        );
    }
}

impl Sender {
    /// Whether this proxy can deliver to `target`'s provider.
    pub fn configured(&self, target: &PushTarget) -> bool {
        match target {
            PushTarget::Apns { .. } => self.cfg.apns.is_some(),
            PushTarget::Fcm { .. } => self.cfg.fcm.is_some(),
            PushTarget::WebPush { .. } => true,
        }
    }

    /// The providers this proxy can deliver to.
    pub fn providers(&self) -> Vec<&'static str> {
        let mut p = Vec::new();
        if self.cfg.apns.is_some() {
            p.push("apns");
        }
        if self.cfg.fcm.is_some() {
            p.push("fcm");
        }
        p.push("webpush");
        p
    }
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

const APNS_TOKEN_REFRESH: Duration = Duration::from_secs(30 * 60);

/// Largest answer read from a provider.
const MAX_REPLY: usize = 64 * 1024;

impl Sender {
    pub fn new(cfg: SenderConfig) -> Result<Self, SetupError> {
        let roots = relay_net::pem::load_certs(&cfg.ca_file)?;
        let tls = relay_net::tls::client_config(&roots, None).map_err(|source| SetupError::Tls {
            context: "provider CA certificate",
            source,
        })?;
        let http = HttpsClient::new(
            tls,
            ClientOptions {
                http2_only: false,
                connect_timeout: cfg.request_timeout,
                pool_idle_timeout: None,
            },
        );
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
            (PushTarget::Apns { .. }, None) => {
                unconfigured("APNs", "[apns]");
                return Outcome::Rejected("APNs is not configured".into());
            }
            (PushTarget::Apns { .. }, Some(a)) => self.apns_token(a),
            _ => String::new(),
        };
        let fcm_token = match (target, &self.cfg.fcm) {
            (PushTarget::Fcm { .. }, None) => {
                unconfigured("FCM", "[fcm]");
                return Outcome::Rejected("FCM is not configured".into());
            }
            (PushTarget::Fcm { .. }, Some(f)) => match self.fcm_access_token(f).await {
                Ok(t) => t,
                Err(e) => {
                    return Outcome::Retry {
                        after: None,
                        reason: format!("token endpoint: {e}"),
                    };
                }
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
        match self.http.exchange(req, self.cfg.request_timeout, MAX_REPLY).await {
            Ok(Reply {
                status,
                retry_after,
                body,
            }) => providers::classify(target.provider(), status, retry_after.as_deref(), &body),
            Err(relay_net::https::ExchangeError::Timeout(_)) => Outcome::Retry {
                after: None,
                reason: "timeout".into(),
            },
            Err(e) => Outcome::Retry {
                after: None,
                reason: format!("connection: {e}"),
            },
        }
    }

    /// The UnifiedPush discovery probe: a `GET` of the endpoint must answer 2xx with JSON
    /// naming `unifiedpush` — proof that the URL is a push distributor, not an arbitrary
    /// service the proxy would otherwise be made to POST to.
    pub async fn probe_unifiedpush(&self, endpoint: &str) -> Result<(), ProviderError> {
        let req = http::Request::get(endpoint)
            .body(Full::new(Bytes::new()))
            .map_err(|e| ProviderError::Request(e.to_string()))?;
        let reply = self.http.exchange(req, self.cfg.request_timeout, 16 * 1024).await?;
        if !(200..300).contains(&reply.status) {
            return Err(ProviderError::Status(reply.status));
        }
        let v: serde_json::Value = serde_json::from_slice(&reply.body).map_err(|_| ProviderError::NotJson)?;
        if v.get("unifiedpush").is_some_and(serde_json::Value::is_object) {
            Ok(())
        } else {
            Err(ProviderError::NotUnifiedPush)
        }
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
    async fn fcm_access_token(&self, f: &FcmConfig) -> Result<String, ProviderError> {
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
        let reply = self
            .http
            .post(
                &f.token_uri,
                "application/x-www-form-urlencoded",
                Bytes::from(form),
                self.cfg.request_timeout,
                MAX_REPLY,
            )
            .await?;
        if !(200..300).contains(&reply.status) {
            return Err(ProviderError::Status(reply.status));
        }
        let v: serde_json::Value = serde_json::from_slice(&reply.body).map_err(|_| ProviderError::NotJson)?;
        let token = v["access_token"].as_str().ok_or(ProviderError::NoAccessToken)?;
        let expires_in = v["expires_in"].as_u64().unwrap_or(3600);
        let valid = Duration::from_secs(expires_in.saturating_sub(60).max(1));
        *cached = Some((token.to_owned(), Instant::now() + valid));
        Ok(token.to_owned())
    }
}

fn providers_vapid(key: &p256::ecdsa::SigningKey, origin: &str, subject: &str, exp: u64) -> String {
    crate::webpush::vapid_authorization(key, origin, subject, exp)
}
