//! Early error answers reach every HTTP/2 client: `curl` (Debian's 7.88, which drops a
//! response when the stream is reset mid-upload), `nghttp` and the SDK each send 100
//! unauthenticated POSTs, 100 oversized bodies and 100 with the wrong media type, and every
//! one must come back with its status and JSON error code.

use std::ffi::OsString;
use std::process::Command;

use bytes::Bytes;
use http::Method;
use test_support::TestGateway;
use test_support::curl::Expect;

const ROUNDS: usize = 100;

struct Case {
    what: &'static str,
    credential: bool,
    content_type: &'static str,
    body_len: usize,
    status: u16,
    code: &'static str,
}

const CASES: [Case; 3] = [
    Case {
        what: "unauthenticated",
        credential: false,
        content_type: relay_core::wire::PROTOBUF,
        body_len: 2_000,
        status: 401,
        code: "unauthorized",
    },
    Case {
        what: "oversized",
        credential: true,
        content_type: relay_core::wire::PROTOBUF,
        body_len: 200_000,
        status: 413,
        code: "body_too_large",
    },
    Case {
        what: "wrong media type",
        credential: true,
        content_type: "text/plain",
        body_len: 2_000,
        status: 415,
        code: "unsupported_media_type",
    },
];

async fn gateway() -> (TestGateway, String) {
    let gw = TestGateway::start_with(|c| {
        // A send body is at most ~6 KiB here, so 200 KB is oversized by any measure.
        c.limits.max_envelope_bytes = 4096;
        c.limits.max_recipients = 10;
        c.limits.max_queue_bytes_per_device = 1 << 20;
    })
    .await;
    let reg = gw.client().register(&gw.provision("tel:+15550109001")).await.unwrap();
    (gw, reg.credential)
}

fn body_file(dir: &std::path::Path, len: usize) -> std::path::PathBuf {
    let path = dir.join(format!("body-{len}"));
    std::fs::write(&path, vec![0x5au8; len]).unwrap();
    path
}

fn error_code(body: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body.trim()).ok()?;
    v["error"].as_str().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_gets_every_early_error_over_http2() {
    let (gw, credential) = gateway().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{}/v1/messages", gw.url());
    let tls = [OsString::from("--cacert"), gw.ca().into_os_string()];
    let mut wrong = Vec::new();
    for case in &CASES {
        let expect = Expect {
            what: case.what,
            content_type: case.content_type,
            headers: if case.credential {
                vec![format!("authorization: Bearer {credential}")]
            } else {
                vec![]
            },
            body_len: case.body_len,
            status: case.status,
            code: case.code,
            field: "error",
        };
        wrong.extend(test_support::curl::post_many(&url, &tls, &expect, ROUNDS, dir.path()));
    }
    assert!(
        wrong.is_empty(),
        "{} of {} early errors not delivered to curl, e.g. {:?}",
        wrong.len(),
        ROUNDS * CASES.len(),
        &wrong[..wrong.len().min(3)]
    );
    gw.stop().await;
}

/// The push proxy's two listeners: device registration (TLS) and notify (mutual TLS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_gets_every_early_error_from_the_push_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = push_proxy::config::Config {
        data_dir: dir.path().join("proxy"),
        listen: "127.0.0.1:0".parse().unwrap(),
        notify_listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        ..push_proxy::config::Config::default()
    };
    // 300 registrations from one address: above the per-address limit, which is not tested here.
    config.registration.per_ip_per_second = 10_000;
    config.registration.per_ip_burst = 10_000;
    let tls_dir = config.data_dir.join("tls");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let proxy = push_proxy::server::start(config.validate().unwrap(), shutdown.clone())
        .await
        .unwrap();
    let ca = tls_dir.join(push_proxy::tls::DEV_CA);
    let device_tls = [OsString::from("--cacert"), ca.clone().into_os_string()];
    let notify_tls = [
        OsString::from("--cacert"),
        ca.into_os_string(),
        OsString::from("--cert"),
        tls_dir.join(push_proxy::tls::GATEWAY_CLIENT_CERT).into_os_string(),
        OsString::from("--key"),
        tls_dir.join(push_proxy::tls::GATEWAY_CLIENT_KEY).into_os_string(),
    ];
    let cases = |what: &'static str| {
        [
            ("text/plain", 2_000, 415, "unsupported_media_type"),
            ("application/json", 300_000, 413, "body_too_large"),
            ("application/json", 2_000, 400, "bad_request"),
        ]
        .map(|(content_type, body_len, status, code)| Expect {
            what,
            content_type,
            headers: vec![],
            body_len,
            status,
            code,
            field: "code",
        })
    };
    let mut wrong = Vec::new();
    for (url, tls, what) in [
        (
            format!("https://localhost:{}/v1/push/register", proxy.listen.port()),
            &device_tls[..],
            "register",
        ),
        (
            format!("https://localhost:{}/v1/notify", proxy.notify_listen.port()),
            &notify_tls[..],
            "notify",
        ),
    ] {
        for expect in cases(what) {
            wrong.extend(test_support::curl::post_many(&url, tls, &expect, ROUNDS, dir.path()));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} not delivered, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(3)]
    );
    shutdown.cancel();
    proxy.stopped().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nghttp_gets_every_early_error() {
    let (gw, credential) = gateway().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{}/v1/messages", gw.url());
    let mut wrong = Vec::new();
    for case in &CASES {
        let body = body_file(dir.path(), case.body_len);
        for _ in 0..ROUNDS {
            // nghttp does not verify the server certificate; it is here for its HTTP/2 framing.
            let mut cmd = Command::new("nghttp");
            cmd.arg("-v")
                .arg("-d")
                .arg(&body)
                .args(["-H", &format!("content-type: {}", case.content_type)]);
            if case.credential {
                cmd.args(["-H", &format!("authorization: Bearer {credential}")]);
            }
            let out = cmd.arg(&url).output().expect("nghttp (apt-get install nghttp2-client)");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let status = format!(":status: {}", case.status);
            // The body is printed between the frame log lines, without a line break after it.
            let json = text
                .find("{\"")
                .and_then(|i| text[i..].find('}').map(|j| &text[i..=i + j]))
                .unwrap_or_default();
            if !text.contains(&status) || error_code(json).as_deref() != Some(case.code) {
                wrong.push(format!("{}: {}", case.what, text.lines().last().unwrap_or_default()));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} early errors not delivered to nghttp, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(3)]
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_gets_every_early_error_over_both_transports() {
    let (gw, credential) = gateway().await;
    for protocol in [relay_client::Protocol::Http2, relay_client::Protocol::Http3] {
        let anonymous = gw.client_over(protocol);
        let device = anonymous.with_credential(credential.clone());
        for case in &CASES {
            let client = if case.credential { &device } else { &anonymous };
            for _ in 0..ROUNDS {
                let resp = client
                    .raw(
                        Method::POST,
                        "/v1/messages",
                        &[(http::header::CONTENT_TYPE, case.content_type.to_owned())],
                        Bytes::from(vec![0x5au8; case.body_len]),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("{protocol:?} {}: {e}", case.what));
                assert_eq!(resp.status.as_u16(), case.status, "{protocol:?} {}", case.what);
                assert_eq!(
                    resp.error_code().as_deref(),
                    Some(case.code),
                    "{protocol:?} {}",
                    case.what
                );
            }
        }
    }
    gw.stop().await;
}
