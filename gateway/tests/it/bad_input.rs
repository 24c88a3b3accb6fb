//! The bad-input catalogue: each rejected request gets the right status and machine
//! code, and leaves storage exactly as it was.

use bytes::Bytes;
use http::{HeaderName, Method, header};
use prost::Message as _;
use relay_client::wire::{AckRequest, Recipient as WireRecipient, RegisterRequest, SendRequest};
use relay_client::{Client, Protocol, RawResponse, Recipient};
use test_support::TestGateway;

const ALICE: &str = "tel:+15550100001";
const BOB: &str = "tel:+15550100002";

struct Fixture {
    gw: TestGateway,
    alice: Client,
    credential: String,
}

async fn fixture(p: Protocol) -> Fixture {
    let gw = TestGateway::start().await.speaking(p);
    let reg = gw.client().register(&gw.provision(ALICE)).await.unwrap();
    let alice = gw.client().with_credential(reg.credential.clone());
    gw.device(BOB).await;
    // Something stored, so "unchanged" is checked against a non-empty state.
    alice
        .send(
            &[Recipient::address(BOB)],
            test_support::framed_message(b"seed"),
            None,
            false,
        )
        .await
        .unwrap();
    Fixture {
        gw,
        alice,
        credential: reg.credential,
    }
}

fn proto_headers() -> Vec<(HeaderName, String)> {
    vec![(header::CONTENT_TYPE, "application/x-protobuf".into())]
}

fn send_body(to: &[&str], message: Bytes) -> Bytes {
    let req = SendRequest {
        recipients: to
            .iter()
            .map(|a| WireRecipient {
                address: (*a).into(),
                device_ids: vec![],
            })
            .collect(),
        message,
        client_message_id: Bytes::new(),
        urgent: false,
    };
    req.encode_to_vec().into()
}

impl Fixture {
    /// Runs `req`, asserts status and code, and that nothing stored changed.
    async fn reject(&self, what: &str, resp: RawResponse, status: u16, code: &str, before: test_support::Snapshot) {
        assert_eq!(
            resp.status.as_u16(),
            status,
            "{what}: {:?}",
            String::from_utf8_lossy(&resp.body)
        );
        assert_eq!(resp.error_code().as_deref(), Some(code), "{what}");
        assert_eq!(self.gw.snapshot().await, before, "{what}: storage changed");
    }

    async fn post(&self, client: &Client, path: &str, headers: &[(HeaderName, String)], body: Bytes) -> RawResponse {
        client.raw(Method::POST, path, headers, body).await.unwrap()
    }
}

async fn send_catalogue(p: Protocol) {
    let f = fixture(p).await;
    let before = f.gw.snapshot().await;
    let valid = test_support::framed_message(b"valid");
    let a = &f.alice;
    let h = proto_headers();

    let cases: Vec<(&str, Bytes, u16, &str)> = vec![
        (
            "non-MLS body",
            send_body(&[BOB], Bytes::from_static(b"hello, plaintext")),
            400,
            "invalid_mls",
        ),
        ("empty MLS", send_body(&[BOB], Bytes::new()), 400, "invalid_mls"),
        (
            "truncated MLS",
            send_body(&[BOB], valid.slice(..valid.len() - 3)),
            400,
            "invalid_mls",
        ),
        (
            "trailing bytes",
            send_body(&[BOB], [&valid[..], b"\0"].concat().into()),
            400,
            "invalid_mls",
        ),
        (
            "envelope over 96 KiB",
            send_body(&[BOB], test_support::framed_message(&vec![1; 96 * 1024])),
            413,
            "envelope_too_large",
        ),
        ("no recipients", send_body(&[], valid.clone()), 400, "no_recipients"),
        (
            "malformed address",
            send_body(&["tel:555-0100"], valid.clone()),
            400,
            "invalid_address",
        ),
        (
            "address with letters",
            send_body(&["tel:+1555010000x"], valid.clone()),
            400,
            "invalid_address",
        ),
        (
            "unknown recipient",
            send_body(&[BOB, "tel:+15559999999"], valid.clone()),
            404,
            "unknown_recipient",
        ),
        (
            "duplicate recipient",
            send_body(&[BOB, "tel:+1-555-010-0002"], valid.clone()),
            400,
            "duplicate_recipient",
        ),
        (
            "not protobuf",
            Bytes::from_static(b"\xff\xff\xff\xff"),
            400,
            "invalid_body",
        ),
    ];
    for (what, body, status, code) in cases {
        let resp = f.post(a, "/v1/messages", &h, body).await;
        f.reject(what, resp, status, code, before).await;
    }

    let many: Vec<String> = (0..5_001).map(|i| format!("tel:+1555{i:07}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let resp = f.post(a, "/v1/messages", &h, send_body(&many, valid.clone())).await;
    f.reject("5,001 recipients", resp, 413, "too_many_recipients", before)
        .await;

    let mut bad_cmid = SendRequest::decode(send_body(&[BOB], valid.clone())).unwrap();
    bad_cmid.client_message_id = Bytes::from_static(b"short");
    let resp = f.post(a, "/v1/messages", &h, bad_cmid.encode_to_vec().into()).await;
    f.reject(
        "5-byte client message id",
        resp,
        400,
        "invalid_client_message_id",
        before,
    )
    .await;

    let resp = f
        .post(
            a,
            "/v1/messages",
            &[(header::CONTENT_TYPE, "application/json".into())],
            send_body(&[BOB], valid.clone()),
        )
        .await;
    f.reject("wrong content type", resp, 415, "unsupported_media_type", before)
        .await;
    let resp = f.post(a, "/v1/messages", &[], send_body(&[BOB], valid.clone())).await;
    f.reject("missing content type", resp, 415, "unsupported_media_type", before)
        .await;

    let mut gz = h.clone();
    gz.push((header::CONTENT_ENCODING, "gzip".into()));
    let resp = f.post(a, "/v1/messages", &gz, send_body(&[BOB], valid.clone())).await;
    f.reject("compressed body", resp, 415, "unsupported_content_encoding", before)
        .await;

    let huge = Bytes::from(vec![0u8; 2 << 20]);
    let mut declared = h.clone();
    declared.push((header::CONTENT_LENGTH, huge.len().to_string()));
    let resp = f.post(a, "/v1/messages", &declared, huge.clone()).await;
    f.reject("declared oversize body", resp, 413, "body_too_large", before)
        .await;

    if p == Protocol::Http3 {
        // The SDK's HTTP/3 requests carry no Content-Length: the limit applies while streaming.
        let resp = f.post(a, "/v1/messages", &h, huge).await;
        f.reject("streamed oversize body (HTTP/3)", resp, 413, "body_too_large", before)
            .await;
    } else {
        let streamed = http1_chunked_post(&f.gw, &f.credential, 2 << 20).await;
        assert!(
            streamed.starts_with("HTTP/1.1 413"),
            "streamed oversize body: {streamed}"
        );
        assert!(streamed.contains("body_too_large"), "{streamed}");
        assert_eq!(f.gw.snapshot().await, before);
    }

    f.gw.stop().await;
}

async fn auth_and_provisioning_catalogue(p: Protocol) {
    let f = fixture(p).await;
    let before = f.gw.snapshot().await;
    let anon = f.gw.client();
    let h = proto_headers();
    let body = send_body(&[BOB], test_support::framed_message(b"x"));

    let resp = f.post(&anon, "/v1/messages", &h, body.clone()).await;
    f.reject("missing credential", resp, 401, "unauthorized", before).await;
    let wrong_secret = {
        let mut c = f.credential.clone();
        let last = c.pop().unwrap();
        c.push(if last == 'A' { 'B' } else { 'A' });
        c
    };
    for (what, cred) in [
        ("wrong secret", wrong_secret.as_str()),
        ("garbage credential", "rc1.nonsense"),
        (
            "unknown credential",
            "rc1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ),
    ] {
        let mut hh = h.clone();
        hh.push((header::AUTHORIZATION, format!("Bearer {cred}")));
        let resp = f.post(&anon, "/v1/messages", &hh, body.clone()).await;
        assert!(resp.headers.contains_key(header::WWW_AUTHENTICATE));
        f.reject(what, resp, 401, "unauthorized", before).await;
    }
    let resp = anon.raw(Method::GET, "/v1/messages", &[], Bytes::new()).await.unwrap();
    f.reject("receive without credential", resp, 401, "unauthorized", before)
        .await;

    let register = |token: String| {
        RegisterRequest {
            provisioning_token: token,
            address: String::new(),
        }
        .encode_to_vec()
    };
    let other_gw_token = {
        let other = tempfile::tempdir().unwrap();
        test_support::provision_token(other.path(), "tel:+15550100009", 60_000)
    };
    let cases = [
        (
            "garbage token",
            "pt1.garbage".to_owned(),
            401,
            "invalid_provisioning_token",
        ),
        (
            "token of another operator",
            other_gw_token,
            401,
            "invalid_provisioning_token",
        ),
        (
            "expired token",
            test_support::expired_token(&f.gw.data_dir, "tel:+15550100009"),
            401,
            "provisioning_token_expired",
        ),
    ];
    for (what, token, status, code) in cases {
        let resp = f.post(&anon, "/v1/devices", &h, register(token).into()).await;
        f.reject(what, resp, status, code, before).await;
    }
    let token = f.gw.provision("tel:+15550100009");
    anon.register(&token).await.unwrap();
    let before = f.gw.snapshot().await;
    let resp = f.post(&anon, "/v1/devices", &h, register(token).into()).await;
    f.reject("replayed token", resp, 409, "provisioning_token_used", before)
        .await;
    f.gw.stop().await;
}

async fn receive_ack_and_routing_catalogue(p: Protocol) {
    let f = fixture(p).await;
    let before = f.gw.snapshot().await;
    let a = &f.alice;
    for (query, code) in [
        ("after=-1", "invalid_cursor"),
        ("after=abc", "invalid_cursor"),
        ("limit=0", "invalid_limit"),
        ("limit=100000", "invalid_limit"),
        ("wait=3600", "invalid_wait"),
        ("wait=soon", "invalid_wait"),
    ] {
        let resp = a
            .raw(Method::GET, &format!("/v1/messages?{query}"), &[], Bytes::new())
            .await
            .unwrap();
        f.reject(query, resp, 400, code, before).await;
    }
    let bad_ack = AckRequest {
        server_ids: vec![Bytes::from_static(b"short")],
        up_to: 0,
    }
    .encode_to_vec();
    let resp = f.post(a, "/v1/messages/ack", &proto_headers(), bad_ack.into()).await;
    f.reject("ack with malformed server id", resp, 400, "invalid_server_id", before)
        .await;
    let resp = a.raw(Method::GET, "/v1/nothing-here", &[], Bytes::new()).await.unwrap();
    f.reject("unknown endpoint", resp, 404, "not_found", before).await;
    let resp = a.raw(Method::PUT, "/v1/messages", &[], Bytes::new()).await.unwrap();
    f.reject("wrong method", resp, 405, "method_not_allowed", before).await;
    f.gw.stop().await;
}

async fn rate_limit_answers_429_with_retry_after(p: Protocol) {
    let gw = TestGateway::start_with(|c| {
        c.rate_limit.requests_per_second = 1;
        c.rate_limit.burst = 3;
    })
    .await
    .speaking(p);
    let (bob, _) = gw.device(BOB).await;
    // The burst (3) is served, then 429s; the bucket refills one a second, so a slow machine
    // may see one more success per second elapsed — measured, not assumed.
    let started = std::time::Instant::now();
    let mut served = 0;
    let refusal = loop {
        match bob.receive(0, 10, 0).await {
            Ok(_) => served += 1,
            Err(e) => break e,
        }
        assert!(served <= 20, "no 429 after {served} requests");
    };
    let refilled = started.elapsed().as_secs() as usize;
    assert!(
        (3..=3 + refilled).contains(&served),
        "{served} served in {refilled} s with burst 3 at 1/s"
    );
    match refusal {
        relay_client::ClientError::Api {
            status: 429,
            code,
            retry_after: Some(secs),
            ..
        } => {
            assert_eq!(code, "rate_limited");
            assert!((1..=2).contains(&secs), "Retry-After {secs}");
        }
        other => panic!("expected 429, got {other:?}"),
    }
    gw.stop().await;
}

/// Posts an oversize body with HTTP/1.1 chunked encoding (no Content-Length), so the
/// limit must be enforced while streaming.
async fn http1_chunked_post(gw: &TestGateway, credential: &str, total: usize) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tls = gw.tls_connect(b"http/1.1").await;
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {credential}\r\n\
         Content-Type: application/x-protobuf\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![0u8; 16 * 1024];
    let mut sent = 0;
    while sent < total {
        let ok = tls.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await.is_ok()
            && tls.write_all(&chunk).await.is_ok()
            && tls.write_all(b"\r\n").await.is_ok();
        if !ok {
            break; // the server answered and closed early: fine
        }
        sent += chunk.len();
    }
    let _ = tls.write_all(b"0\r\n\r\n").await;
    let mut buf = vec![0u8; 4096];
    let n = tls.read(&mut buf).await.unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

both_transports!(
    send_catalogue,
    auth_and_provisioning_catalogue,
    receive_ack_and_routing_catalogue,
    rate_limit_answers_429_with_retry_after
);
