//! The sender against local APNs and Web Push sinks that check what the real services check.

mod e2e;
mod nodes;

use std::time::Duration;

use p256::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _, LineEnding};
use push_proxy::providers::Outcome;
use push_proxy::sender::{Sender, SenderConfig};
use push_proxy::{PushTarget, webpush};
use relay_core::push::{Backoff, Pointer};
use test_support::independent::{self, Key};
use test_support::push_sinks::{APNS_KEY_ID, APNS_TEAM_ID, PushSink, SinkKind};

fn apns_key() -> p256::ecdsa::SigningKey {
    p256::ecdsa::SigningKey::from(webpush::random_secret())
}

fn sender(ca: std::path::PathBuf, apns: Option<(&PushSink, &p256::ecdsa::SigningKey)>) -> Sender {
    sender_with(ca, apns, None)
}

fn sender_with(
    ca: std::path::PathBuf,
    apns: Option<(&PushSink, &p256::ecdsa::SigningKey)>,
    fcm: Option<push_proxy::sender::FcmConfig>,
) -> Sender {
    Sender::new(SenderConfig {
        ca_file: ca,
        apns: apns.map(|(sink, key)| sink.apns_config(key)),
        fcm,
        vapid_key: apns_key(),
        vapid_subject: "mailto:push-ops@example.net".into(),
        ttl: Duration::from_secs(3600),
        backoff: Backoff {
            base: Duration::from_millis(50),
            cap: Duration::from_secs(5),
            max_attempts: 4,
        },
        max_in_flight: 8,
        request_timeout: Duration::from_secs(5),
    })
    .expect("a valid sender configuration")
}

const FCM_ACCOUNT: &str = "relay@proj.iam.gserviceaccount.com";

/// A loopback FCM (project `proj`) that accepts assertions signed by `rsa_public_der`'s key.
async fn fcm_sink(rsa_public_der: Vec<u8>) -> PushSink {
    PushSink::start(SinkKind::Fcm {
        rsa_public_der,
        client_email: FCM_ACCOUNT.into(),
        project_id: "proj".into(),
    })
    .await
}

/// A sender whose FCM service account (written to `dir`) signs with `key_pem`.
fn fcm_sender(dir: &std::path::Path, sink: &PushSink, key_pem: &str) -> Sender {
    let sa_path = test_support::push_sinks::write_service_account(dir, sink, key_pem, "proj", FCM_ACCOUNT);
    let sa = push_proxy::keys::service_account(&sa_path).expect("the service account parses");
    let fcm = push_proxy::sender::FcmConfig {
        base_url: sink.url(),
        project_id: sa.project_id,
        token_uri: sa.token_uri,
        client_email: sa.client_email,
        key: sa.key,
    };
    sender_with(sink.ca(), None, Some(fcm))
}

fn pointer(n: u8) -> Pointer {
    Pointer::from_random([n; 16])
}

#[tokio::test]
async fn apns_pushes_carry_only_the_pointer_retry_after_503_and_report_dead_tokens() {
    let key = apns_key();
    let sink = PushSink::start_apns(&key).await;
    let s = sender(sink.ca(), Some((&sink, &key)));
    let token = PushTarget::Apns {
        token: "a1b2c3d4".into(),
    };

    assert_eq!(s.push(&token, &pointer(1), false).await, Outcome::Delivered);
    let pushes = sink.pushes();
    assert_eq!((pushes.len(), sink.refused()), (1, vec![]));
    let body: serde_json::Value = serde_json::from_slice(&pushes[0].payload).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"aps": {"content-available": 1}, "p": pointer(1).encode()}),
        "exactly the pointer, nothing else"
    );
    assert_eq!(pushes[0].headers["apns-push-type"], "background");
    assert_eq!(pushes[0].path, "/3/device/a1b2c3d4");
    // The provider token verifies with a second ES256 implementation (OpenSSL via Python),
    // and not with another key.
    let jwt = pushes[0].headers["authorization"]
        .to_str()
        .unwrap()
        .strip_prefix("bearer ")
        .unwrap();
    let public_pem = key.verifying_key().to_public_key_pem(LineEnding::LF).unwrap();
    let (header, claims) = independent::verify_jwt(jwt, "ES256", Key::PublicPem(&public_pem)).unwrap();
    assert_eq!(
        (header["kid"].as_str(), claims["iss"].as_str()),
        (Some(APNS_KEY_ID), Some(APNS_TEAM_ID))
    );
    let other_pem = apns_key().verifying_key().to_public_key_pem(LineEnding::LF).unwrap();
    assert!(independent::verify_jwt(jwt, "ES256", Key::PublicPem(&other_pem)).is_err());

    // Urgent: a visible alert at priority 10 whose text is the app's own localised string —
    // the body, in full, is this and the pointer.
    assert_eq!(s.push(&token, &pointer(2), true).await, Outcome::Delivered);
    let urgent = &sink.pushes()[1];
    assert_eq!(urgent.headers["apns-priority"], "10");
    assert_eq!(urgent.headers["apns-push-type"], "alert");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&urgent.payload).unwrap(),
        serde_json::json!({
            "aps": {"alert": {"loc-key": "RCS_NEW_MESSAGE"}, "mutable-content": 1},
            "p": pointer(2).encode(),
        })
    );

    // 503 with Retry-After: 1 is retried no sooner than a second later.
    sink.script(&[(503, Some(1))]);
    assert_eq!(s.push(&token, &pointer(3), false).await, Outcome::Delivered);
    let p = sink.pushes();
    assert_eq!((p[2].status, p[3].status), (503, 200));
    assert!(
        p[3].at.duration_since(p[2].at) >= Duration::from_secs(1),
        "Retry-After honoured"
    );

    // Unregistered: dead, not retried.
    sink.mark_dead("deadbeef");
    let before = sink.pushes().len();
    assert_eq!(
        s.push(
            &PushTarget::Apns {
                token: "deadbeef".into()
            },
            &pointer(4),
            false
        )
        .await,
        Outcome::Dead("Unregistered".into())
    );
    assert_eq!(sink.pushes().len(), before + 1);

    // Persistent 500s: bounded attempts, then given up.
    sink.script(&[(500, None); 4]);
    assert!(matches!(s.push(&token, &pointer(5), false).await, Outcome::Rejected(r) if r.contains("gave up")));

    // A provider token signed by another key is refused by the sink (the check is real).
    let wrong = sender(sink.ca(), Some((&sink, &apns_key())));
    assert!(matches!(
        wrong.push(&token, &pointer(6), false).await,
        Outcome::Rejected(_)
    ));
    assert_eq!(sink.refused().len(), 1);
}

#[tokio::test]
async fn webpush_payload_decrypts_to_the_pointer_at_a_constant_size() {
    let ua = webpush::random_secret();
    let auth = [3u8; 16];
    let sink = PushSink::start(SinkKind::WebPush {
        ua_secret: ua.clone(),
        auth,
    })
    .await;
    let s = sender(sink.ca(), None);
    let target = PushTarget::WebPush {
        endpoint: format!("{}/push/sub-1", sink.url()),
        p256dh: webpush::public_bytes(&ua.public_key()),
        auth: auth.to_vec(),
    };
    for n in 0..3 {
        assert_eq!(s.push(&target, &pointer(n), n == 2).await, Outcome::Delivered);
    }
    let pushes = sink.pushes();
    assert_eq!((pushes.len(), sink.refused()), (3, vec![]));
    let ua_pem = ua.to_pkcs8_pem(LineEnding::LF).unwrap();
    for (n, p) in pushes.iter().enumerate() {
        // Decrypted by a second RFC 8291 implementation: exactly this JSON, nothing else.
        let (plain, padded) = independent::webpush_decrypt(&p.body, &ua_pem, &auth).unwrap();
        let expected = format!(r#"{{"p":"{}"}}"#, pointer(n as u8).encode());
        assert_eq!(String::from_utf8(plain).unwrap(), expected);
        assert!(padded > expected.len(), "padded to hide the length");
        assert_eq!(p.body.len(), pushes[0].body.len(), "constant ciphertext size");
        assert_eq!(p.headers["topic"], "rcs-relay");
        // VAPID (RFC 8292): `vapid t=JWT, k=key`, the JWT verified with the key it names.
        let vapid = p.headers["authorization"].to_str().unwrap();
        let (t, k) = vapid
            .strip_prefix("vapid t=")
            .and_then(|rest| rest.split_once(", k="))
            .unwrap_or_else(|| panic!("{vapid}"));
        let (_, claims) = independent::verify_jwt(t, "ES256", Key::Point(k)).unwrap();
        assert_eq!(claims["aud"], sink.url().trim_end_matches('/'));
        assert_eq!(claims["sub"], "mailto:push-ops@example.net");
    }
    assert_eq!(pushes[2].headers["urgency"], "high");

    sink.mark_dead("sub-1");
    assert_eq!(s.push(&target, &pointer(9), false).await, Outcome::Dead("410".into()));
}

#[tokio::test]
async fn fcm_oauth_grant_message_quota_backoff_and_unregistered() {
    let dir = tempfile::tempdir().unwrap();
    let (key_pem, public_der) = test_support::push_sinks::rsa_key(dir.path());
    let sink = fcm_sink(public_der).await;
    let s = fcm_sender(dir.path(), &sink, &key_pem);
    let token = PushTarget::Fcm {
        token: "fcm:APA91b-token_1".into(),
    };
    assert_eq!(s.push(&token, &pointer(1), false).await, Outcome::Delivered);
    assert_eq!(s.push(&token, &pointer(2), true).await, Outcome::Delivered);
    assert_eq!(sink.refused(), Vec::<String>::new());
    assert_eq!(sink.issued_tokens().len(), 1, "the access token is cached");
    let p = sink.pushes();
    // The whole request, not only `data`: no `notification`, no other field.
    let message = |n: usize, priority: &str| {
        serde_json::json!({"message": {
            "token": "fcm:APA91b-token_1",
            "data": {"p": pointer(n as u8).encode()},
            "android": {"priority": priority, "collapse_key": "rcs-relay", "ttl": "3600s"},
        }})
    };
    let body = |n: usize| serde_json::from_slice::<serde_json::Value>(&p[n].body).unwrap();
    assert_eq!(body(0), message(1, "normal"));
    assert_eq!(body(1), message(2, "high"));
    // The OAuth2 assertion verifies (RS256) with a second implementation.
    let assertion = &sink.assertions()[0];
    let (_, claims) = independent::verify_jwt(assertion, "RS256", Key::PrivatePem(&key_pem)).unwrap();
    assert_eq!(claims["iss"], "relay@proj.iam.gserviceaccount.com");
    assert_eq!(claims["scope"], "https://www.googleapis.com/auth/firebase.messaging");

    sink.mark_dead("token_1");
    assert_eq!(
        s.push(&token, &pointer(3), false).await,
        Outcome::Dead("UNREGISTERED".into())
    );

    // QUOTA_EXCEEDED backs off at least 60 s: with a 1 s timeout on the test, the push is
    // still waiting (not retried early).
    let other = PushTarget::Fcm {
        token: "fcm:other".into(),
    };
    sink.script(&[(429, Some(1))]);
    let waited = tokio::time::timeout(Duration::from_secs(2), s.push(&other, &pointer(4), false)).await;
    assert!(waited.is_err(), "retried before 60 s");
    let attempts = sink.pushes().iter().filter(|r| r.status == 429).count();
    assert_eq!(attempts, 1);
}

#[tokio::test]
async fn a_full_queue_sheds_and_forged_handles_are_dead() {
    use axum::Json;
    use axum::extract::State;
    use push_proxy::service::{Notification, NotifyRequest, Proxy, PushQueue, notify};

    let key = apns_key();
    let sink = PushSink::start_apns(&key).await;
    let keys = push_proxy::HandleKeys::new(1, &[(1, [7; 32])]).unwrap();
    let handle = keys.seal(&PushTarget::Apns {
        token: "abcdef01".into(),
    });
    let proxy = std::sync::Arc::new(Proxy::new(
        keys,
        sender(sink.ca(), Some((&sink, &key))),
        PushQueue {
            slots: 1,
            notify_wait: Duration::from_millis(200),
            max_batch: 10,
        },
        vec![],
        tokio_util::task::TaskTracker::new(),
        tokio_util::sync::CancellationToken::new(),
    ));
    let req = |handle: &str| NotifyRequest {
        notifications: vec![Notification {
            handle: handle.into(),
            pointer: pointer(1).encode(),
            urgent: false,
        }],
    };
    // The first push holds the only queue slot while it waits out Retry-After.
    sink.script(&[(503, Some(2))]);
    let Json(first) = notify(State(std::sync::Arc::clone(&proxy)), Ok(Json(req(&handle))))
        .await
        .unwrap();
    assert_eq!((first.pending, first.shed.len()), (1, 0));
    let Json(second) = notify(State(std::sync::Arc::clone(&proxy)), Ok(Json(req(&handle))))
        .await
        .unwrap();
    assert_eq!(second.shed, vec![handle.clone()], "queue full: shed, not queued");
    // A handle sealed under another key is reported dead without any provider call.
    let other = push_proxy::HandleKeys::new(1, &[(1, [8; 32])]).unwrap();
    let forged = other.seal(&PushTarget::Apns {
        token: "abcdef02".into(),
    });
    let Json(third) = notify(State(std::sync::Arc::clone(&proxy)), Ok(Json(req(&forged))))
        .await
        .unwrap();
    assert_eq!(third.dead, vec![forged]);
    // A bad pointer refuses the whole batch.
    let bad = NotifyRequest {
        notifications: vec![Notification {
            handle,
            pointer: "short".into(),
            urgent: false,
        }],
    };
    assert!(notify(State(proxy), Ok(Json(bad))).await.is_err());
}

/// A service account whose key is not the one FCM knows gets no access token and sends
/// nothing (the sink's check is real).
#[tokio::test]
async fn fcm_refuses_an_assertion_signed_by_another_key() {
    let dir = tempfile::tempdir().unwrap();
    let (known, other) = (dir.path().join("known"), dir.path().join("other"));
    std::fs::create_dir_all(&known).unwrap();
    std::fs::create_dir_all(&other).unwrap();
    let (_, known_public) = test_support::push_sinks::rsa_key(&known);
    let (other_pem, _) = test_support::push_sinks::rsa_key(&other);
    let sink = fcm_sink(known_public).await;
    let s = fcm_sender(dir.path(), &sink, &other_pem);
    let target = PushTarget::Fcm {
        token: "fcm:APA91b-token_2".into(),
    };
    assert!(matches!(
        s.push(&target, &pointer(1), false).await,
        Outcome::Rejected(_)
    ));
    assert!(sink.issued_tokens().is_empty());
    assert!(sink.pushes().is_empty(), "no message without a token");
    assert!(!sink.refused().is_empty());
    assert!(!sink.assertions().is_empty(), "the grant was attempted");
}

/// Started with no APNs or FCM configuration, the binary says so before it says it is
/// ready, and lists the providers it can deliver to.
#[test]
fn start_up_says_which_providers_are_missing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("push.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\nnotify_listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let log = log_until_ready(
        std::process::Command::new(env!("CARGO_BIN_EXE_push-proxy"))
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info"),
    );
    assert!(
        log.contains("push proxy ready") && log.contains("providers=\"webpush\""),
        "{log}"
    );
    assert!(
        log.contains("apns is not configured") && log.contains("[apns]"),
        "{log}"
    );
    assert!(log.contains("fcm is not configured") && log.contains("[fcm]"), "{log}");
}

/// Under a PKCS#11 provider (a SoftHSM2 token of its own) the handle keys exist on disk only
/// sealed: `--init-keys` creates the token's key-encryption key and the current handle key,
/// each start unseals it (and says so), and a wrong PIN stops the proxy with a clear error.
#[test]
fn handle_keys_sealed_by_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let hsm = test_support::softhsm::SoftHsm::new(&dir.path().join("hsm"), "push", "2468");
    let data = dir.path().join("data");
    let config = dir.path().join("push.toml");
    let write = |keys: &str| {
        std::fs::write(
            &config,
            format!(
                "data_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\nnotify_listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{keys}",
                data.display()
            ),
        )
        .unwrap();
    };
    let proxy = |args: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_push-proxy"));
        cmd.arg("--config")
            .arg(&config)
            .args(args)
            .envs(hsm.env())
            .env("RUST_LOG", "info");
        cmd
    };
    write(&hsm.keys_toml());
    let init = proxy(&["--init-keys"]).output().unwrap();
    let said = String::from_utf8_lossy(&init.stdout).into_owned();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    assert!(
        said.contains("created rcs-relay-kek") && said.contains("created handle-1.key, sealed"),
        "{said}"
    );
    let run_until_ready = || log_until_ready(&mut proxy(&[]));
    let log = run_until_ready();
    assert!(log.contains("push proxy ready"), "{log}");
    assert!(log.contains("key.unseal") && log.contains("handle-1.key"), "{log}");
    let keys = data.join("keys");
    assert!(keys.join("handle-1.key.sealed").exists());
    assert!(!keys.join("handle-1.key").exists(), "a handle key in the clear");
    assert_eq!(
        test_support::softhsm::key_in_clear(&data, &keys.join("handle-1.key.sealed")),
        None,
        "the handle key's bytes anywhere in the data directory"
    );
    let sealed = std::fs::read(keys.join("handle-1.key.sealed")).unwrap();
    // A second start unseals the same key.
    assert!(run_until_ready().contains("push proxy ready"));
    assert_eq!(std::fs::read(keys.join("handle-1.key.sealed")).unwrap(), sealed);

    let wrong = dir.path().join("wrong-pin");
    std::fs::write(&wrong, "1111\n").unwrap();
    write(
        &hsm.keys_toml()
            .replace(&hsm.pin_file.display().to_string(), &wrong.display().to_string()),
    );
    let out = proxy(&[]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the PIN for token \"push\" is wrong") && !stderr.contains("1111"),
        "{stderr}"
    );
}

/// Runs the push-proxy command `cmd` until it says it is ready (at most 200 lines), stops it,
/// and returns what it logged.
fn log_until_ready(cmd: &mut std::process::Command) -> String {
    use std::io::BufRead as _;
    let mut child = cmd
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("push-proxy starts");
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut lines = Vec::new();
    for line in std::io::BufReader::new(stderr).lines() {
        let line = line.expect("log lines are UTF-8");
        let ready = line.contains("push proxy ready");
        lines.push(line);
        if ready || lines.len() > 200 {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    lines.join("\n")
}
