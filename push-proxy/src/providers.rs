//! The three providers' wire protocols, sans-IO: build the HTTP request for one push, and
//! classify the response. The I/O shell sends what [`build`] returns and feeds the answer
//! to [`classify`]; retries and backoff are decided from the [`Outcome`].
//!
//! Every push carries the same payload, `{"p":"<pointer>"}` (constant size, the pointer is
//! [`relay_core::push::Pointer`]): no address, sender, group or content.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use relay_core::push::{Pointer, parse_retry_after};
use serde_json::json;

use crate::handle::PushTarget;

/// Coalescing key sent to every provider (APNs collapse id, FCM collapse key, Web Push Topic):
/// a newer wake-up replaces an undelivered older one.
pub const COLLAPSE_KEY: &str = "rcs-relay";
/// Web Push plaintext is padded to this length, so ciphertexts have one size.
pub const WEBPUSH_PAD: usize = 64;

/// The payload of every push.
pub fn payload(pointer: &Pointer) -> String {
    json!({ "p": pointer.encode() }).to_string()
}

/// Settings the request builders need (from the config, plus current credentials).
#[derive(Clone)]
pub struct Context<'a> {
    pub apns_base: &'a str,
    pub apns_topic: &'a str,
    /// The current APNs provider token (ES256 JWT).
    pub apns_jwt: &'a str,
    pub fcm_base: &'a str,
    pub fcm_project: &'a str,
    /// The current FCM OAuth2 access token.
    pub fcm_access_token: &'a str,
    /// `Authorization` header for a Web Push endpoint's origin (VAPID).
    pub vapid: &'a (dyn Fn(&str) -> String + Sync),
    pub ttl: Duration,
    /// Seconds since the Unix epoch (APNs expiration).
    pub now_unix: u64,
}

impl std::fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("apns_base", &self.apns_base)
            .field("fcm_base", &self.fcm_base)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildError {
    #[error("push target is malformed: {0}")]
    BadTarget(&'static str),
    #[error(transparent)]
    WebPush(#[from] crate::webpush::WebPushError),
}

/// The HTTP request for one push.
pub fn build(
    target: &PushTarget,
    pointer: &Pointer,
    urgent: bool,
    cx: &Context<'_>,
) -> Result<http::Request<Vec<u8>>, BuildError> {
    let body = payload(pointer);
    let ttl = cx.ttl.as_secs();
    let req = match target {
        PushTarget::Apns { token } => {
            if token.is_empty() || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(BuildError::BadTarget("APNs token is not hex"));
            }
            let aps = if urgent {
                // A visible alert with a generic, localised text the app owns: no content.
                json!({ "alert": { "loc-key": "RCS_NEW_MESSAGE" }, "mutable-content": 1 })
            } else {
                json!({ "content-available": 1 })
            };
            http::Request::post(format!("{}/3/device/{token}", cx.apns_base.trim_end_matches('/')))
                .header("authorization", format!("bearer {}", cx.apns_jwt))
                .header("apns-topic", cx.apns_topic)
                .header("apns-push-type", if urgent { "alert" } else { "background" })
                .header("apns-priority", if urgent { "10" } else { "5" })
                .header("apns-collapse-id", COLLAPSE_KEY)
                .header("apns-expiration", (cx.now_unix + ttl).to_string())
                .header("content-type", "application/json")
                .body(json!({ "aps": aps, "p": pointer.encode() }).to_string().into_bytes())
        }
        PushTarget::Fcm { token } => {
            if token.is_empty() || token.bytes().any(|b| b.is_ascii_whitespace() || b == b'"') {
                return Err(BuildError::BadTarget("FCM token is malformed"));
            }
            let message = json!({ "message": {
                "token": token,
                "data": { "p": pointer.encode() },
                "android": {
                    "priority": if urgent { "high" } else { "normal" },
                    "collapse_key": COLLAPSE_KEY,
                    "ttl": format!("{ttl}s"),
                },
            }});
            http::Request::post(format!(
                "{}/v1/projects/{}/messages:send",
                cx.fcm_base.trim_end_matches('/'),
                cx.fcm_project
            ))
            .header("authorization", format!("Bearer {}", cx.fcm_access_token))
            .header("content-type", "application/json")
            .body(message.to_string().into_bytes())
        }
        PushTarget::WebPush { endpoint, p256dh, auth } => {
            let origin = origin(endpoint).ok_or(BuildError::BadTarget("Web Push endpoint is not an https URL"))?;
            let encrypted = crate::webpush::encrypt(p256dh, auth, body.as_bytes(), WEBPUSH_PAD)?;
            http::Request::post(endpoint.as_str())
                .header("ttl", ttl.to_string())
                .header("urgency", if urgent { "high" } else { "normal" })
                .header("topic", COLLAPSE_KEY)
                .header("content-encoding", "aes128gcm")
                .header("content-type", "application/octet-stream")
                .header("authorization", (cx.vapid)(&origin))
                .body(encrypted)
        }
    };
    req.map_err(|_| BuildError::BadTarget("not a valid HTTP request"))
}

/// `https://host[:port]` of an https URL (the VAPID audience); `None` for anything else.
pub fn origin(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    if uri.scheme_str() != Some("https") {
        return None;
    }
    let authority = uri.authority()?;
    Some(format!("https://{authority}"))
}

/// What a provider's answer means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// The token is gone for good: the gateway must drop the handle.
    Dead(String),
    /// Try again after at least this long (`None`: the backoff decides).
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    /// Refused for a reason retrying will not fix (bad request, auth): counted, not retried.
    Rejected(String),
}

/// Classifies a provider response.
pub fn classify(provider: &str, status: u16, retry_after: Option<&str>, body: &[u8]) -> Outcome {
    let after = retry_after.and_then(parse_retry_after);
    let text = String::from_utf8_lossy(&body[..body.len().min(4096)]);
    let reason = || match provider {
        "apns" => serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["reason"].as_str().map(str::to_owned))
            .unwrap_or_else(|| status.to_string()),
        "fcm" => serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| {
                let details = v["error"]["details"].as_array()?.clone();
                details
                    .iter()
                    .find_map(|d| d["errorCode"].as_str().map(str::to_owned))
                    .or_else(|| v["error"]["status"].as_str().map(str::to_owned))
            })
            .unwrap_or_else(|| status.to_string()),
        _ => status.to_string(),
    };
    match (provider, status) {
        (_, 200..=299) => Outcome::Delivered,
        ("apns", 410) => Outcome::Dead(reason()),
        ("apns", 400) if reason() == "BadDeviceToken" => Outcome::Dead(reason()),
        ("fcm", 404) => Outcome::Dead(reason()),
        ("fcm", 400) if reason() == "UNREGISTERED" => Outcome::Dead(reason()),
        ("webpush", 404 | 410) => Outcome::Dead(status.to_string()),
        ("fcm", 429) => Outcome::Retry {
            // FCM asks for at least a minute after QUOTA_EXCEEDED.
            after: Some(after.unwrap_or_default().max(Duration::from_secs(60))),
            reason: reason(),
        },
        (_, 429 | 500..=599) => Outcome::Retry {
            after,
            reason: reason(),
        },
        _ => Outcome::Rejected(reason()),
    }
}

/// base64url of bytes (for config and API fields).
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx(vapid: &(dyn Fn(&str) -> String + Sync)) -> Context<'_> {
        Context {
            apns_base: "https://apns.test:1/",
            apns_topic: "net.example.rcs",
            apns_jwt: "JWT",
            fcm_base: "https://fcm.test:2",
            fcm_project: "proj",
            fcm_access_token: "ya29.tok",
            vapid,
            ttl: Duration::from_secs(3600),
            now_unix: 1_000,
        }
    }

    #[test]
    fn apns_request_has_the_required_headers_and_only_the_pointer() {
        let p = Pointer::from_random([1; 16]);
        let vapid = |_: &str| String::new();
        let r = build(&PushTarget::Apns { token: "abcd01".into() }, &p, false, &cx(&vapid)).unwrap();
        assert_eq!(r.uri(), "https://apns.test:1/3/device/abcd01");
        let h = |n: &str| r.headers()[n].to_str().unwrap().to_owned();
        assert_eq!(h("authorization"), "bearer JWT");
        assert_eq!(
            (h("apns-push-type"), h("apns-priority"), h("apns-expiration")),
            ("background".into(), "5".into(), "4600".into())
        );
        let body: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(body, json!({"aps": {"content-available": 1}, "p": p.encode()}));
        let urgent = build(&PushTarget::Apns { token: "ab".into() }, &p, true, &cx(&vapid)).unwrap();
        assert_eq!(urgent.headers()["apns-priority"], "10");
        assert!(build(&PushTarget::Apns { token: "a/b".into() }, &p, true, &cx(&vapid)).is_err());
    }

    #[test]
    fn fcm_and_webpush_requests() {
        let p = Pointer::from_random([2; 16]);
        let vapid = |origin: &str| format!("vapid for {origin}");
        let r = build(&PushTarget::Fcm { token: "tok".into() }, &p, true, &cx(&vapid)).unwrap();
        assert_eq!(r.uri(), "https://fcm.test:2/v1/projects/proj/messages:send");
        let body: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(body["message"]["data"], json!({"p": p.encode()}));
        assert_eq!(body["message"]["android"]["priority"], "high");

        let ua = crate::webpush::random_secret();
        let target = PushTarget::WebPush {
            endpoint: "https://push.test:3/sub/1".into(),
            p256dh: crate::webpush::public_bytes(&ua.public_key()),
            auth: vec![7; 16],
        };
        let r = build(&target, &p, false, &cx(&vapid)).unwrap();
        assert_eq!(r.headers()["authorization"], "vapid for https://push.test:3");
        assert_eq!(r.headers()["topic"], COLLAPSE_KEY);
        let plain = crate::webpush::decrypt(&ua, &[7; 16], r.body()).unwrap();
        assert_eq!(plain, payload(&p).as_bytes());
        let http = PushTarget::WebPush {
            endpoint: "http://push.test/sub".into(),
            p256dh: vec![],
            auth: vec![],
        };
        assert!(build(&http, &p, false, &cx(&vapid)).is_err());
    }

    #[test]
    fn responses_are_classified() {
        assert_eq!(classify("apns", 200, None, b""), Outcome::Delivered);
        assert_eq!(
            classify("apns", 410, None, br#"{"reason":"Unregistered"}"#),
            Outcome::Dead("Unregistered".into())
        );
        assert_eq!(
            classify("apns", 400, None, br#"{"reason":"BadDeviceToken"}"#),
            Outcome::Dead("BadDeviceToken".into())
        );
        assert_eq!(
            classify("apns", 400, None, br#"{"reason":"BadTopic"}"#),
            Outcome::Rejected("BadTopic".into())
        );
        assert_eq!(
            classify("apns", 503, Some("7"), b""),
            Outcome::Retry {
                after: Some(Duration::from_secs(7)),
                reason: "503".into()
            }
        );
        let unregistered =
            br#"{"error":{"status":"NOT_FOUND","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}]}}"#;
        assert_eq!(
            classify("fcm", 404, None, unregistered),
            Outcome::Dead("UNREGISTERED".into())
        );
        assert!(matches!(
            classify("fcm", 429, Some("5"), b"{}"),
            Outcome::Retry { after: Some(d), .. } if d == Duration::from_secs(60)
        ));
        assert_eq!(classify("webpush", 410, None, b""), Outcome::Dead("410".into()));
        assert_eq!(classify("webpush", 201, None, b""), Outcome::Delivered);
        assert_eq!(classify("webpush", 413, None, b""), Outcome::Rejected("413".into()));
    }
}
