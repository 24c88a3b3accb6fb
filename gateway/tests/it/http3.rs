//! HTTP/3-specific bad input: oversized header sections, more streams than allowed, and
//! a flood of connection attempts. Each is bounded and leaves the gateway serving.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, Method};
use relay_client::{Client, Protocol, Trust};
use test_support::TestGateway;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_header_section_is_refused() {
    let gw = TestGateway::start().await.speaking(Protocol::Http3);
    let (bob, _) = gw.device("tel:+15550100002").await;
    let before = gw.stats().await;
    let big = vec![(HeaderName::from_static("x-padding"), "a".repeat(20 * 1024))];
    match bob.raw(Method::GET, "/v1/messages", &big, Bytes::new()).await {
        Ok(resp) => assert_eq!(resp.status.as_u16(), 431, "header section over 16 KiB"),
        // The client library may refuse to send what the server's SETTINGS forbid.
        Err(e) => assert!(matches!(e, relay_client::ClientError::Transport(_)), "{e:?}"),
    }
    assert_eq!(gw.stats().await, before);
    bob.receive(0, 10, 0).await.unwrap();
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_streams_than_allowed_queue_and_complete() {
    let gw = TestGateway::start_with(|c| c.limits.max_concurrent_streams = 4)
        .await
        .speaking(Protocol::Http3);
    let (bob, _) = gw.device("tel:+15550100002").await;
    let mut polls = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let bob = bob.clone();
        polls.spawn(async move { bob.receive(0, 10, 1).await });
    }
    while let Some(r) = polls.join_next().await {
        r.unwrap().unwrap();
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_flood_is_bounded() {
    let gw = TestGateway::start_with(|c| {
        c.limits.max_connections = 8;
        c.http3.retry_above_connections = Some(4);
    })
    .await;
    let ca = gw.ca();
    let url = gw.url();
    let mut attempts = tokio::task::JoinSet::new();
    let clients = Arc::new(std::sync::Mutex::new(Vec::new()));
    for _ in 0..100 {
        let (ca, url, clients) = (ca.clone(), url.clone(), Arc::clone(&clients));
        attempts.spawn(async move {
            let c = Client::connect(&url, Trust::CaFile(ca), Protocol::Http3).unwrap();
            let ok = tokio::time::timeout(Duration::from_secs(10), c.healthz())
                .await
                .is_ok_and(|r| r.is_ok());
            clients.lock().unwrap().push(c); // hold the connection open
            ok
        });
    }
    let mut served = 0;
    while let Some(r) = attempts.join_next().await {
        served += usize::from(r.unwrap());
    }
    assert!((1..=8).contains(&served), "at most max_connections at once: {served}");
    drop(clients);
    // Still serving once the flood is over.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let c = gw.client_over(Protocol::Http3);
        if c.healthz().await.is_ok() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "gateway did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gw.client().healthz().await.unwrap();
    gw.stop().await;
}
