//! Two gateway nodes on one PostgreSQL, node A configured with the push proxy: a device
//! whose live receiver is on node B is not pushed when A stores for it (B wakes it through
//! the database); once it has left, A's urgent send pushes it.

use std::time::Duration;

use relay_client::Recipient;
use test_support::{TestGateway, framed_message};

use crate::e2e::{Providers, providers, pushable, pushes_to, wait_for};

const DAVE: &str = "tel:+15550160004";
const DAVE_TOKEN: &str = "da7eda7eda7eda7eda7eda7eda7e0004";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_push_to_a_device_live_on_another_node() {
    let Providers { apns, proxy, .. } = providers().await;
    let dir = tempfile::tempdir().expect("temp dir");

    let pg = test_support::postgres::Postgres::start(&dir.path().join("pg"));
    let url = pg.url();
    let on_postgres = |c: &mut gateway::Config| {
        c.storage.backend = gateway::config::BackendKind::Postgres;
        c.storage.postgres = Some(toml::from_str(&format!("url = \"{url}\"\n")).expect("settings"));
    };
    let a = TestGateway::start_in(&dir.path().join("a"), |c| {
        on_postgres(c);
        proxy.configure(c);
    })
    .await;
    std::fs::create_dir_all(dir.path().join("b")).expect("dir");
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(dir.path().join("a/keys"))
        .arg(dir.path().join("b/keys"))
        .status()
        .expect("cp");
    assert!(copied.success());
    let b = TestGateway::start_in(&dir.path().join("b"), on_postgres).await;

    let (alice, _) = a.device("tel:+15550160001").await;
    let (dave, _, _) = pushable(
        &b,
        &proxy,
        DAVE,
        serde_json::json!({"platform": "apns", "token": DAVE_TOKEN}),
    )
    .await;
    let poll = tokio::spawn({
        let dave = dave.clone();
        async move { dave.receive(0, 10, 20).await }
    });
    // Node B has published Dave's live receiver before Alice sends through node A.
    test_support::eventually("Dave's receiver on B", Duration::from_secs(10), async || {
        pg.psql("SELECT count(*) FROM receivers") == "1"
    })
    .await;
    let to_dave = [Recipient::address(DAVE)];
    alice
        .send(&to_dave, framed_message(b"live on B"), None, false)
        .await
        .expect("send");
    let page = poll.await.expect("join").expect("long-poll");
    assert_eq!(page.envelopes.len(), 1, "B woke Dave for A's envelope");

    // Dave has left: A's urgent send pushes him, and that is the only push he ever got.
    test_support::eventually("Dave's receiver to leave", Duration::from_secs(10), async || {
        pg.psql("SELECT count(*) FROM receivers") == "0"
    })
    .await;
    alice
        .send(&to_dave, framed_message(b"away"), None, true)
        .await
        .expect("send");
    wait_for("Dave's push", || !pushes_to(&apns, DAVE_TOKEN).is_empty()).await;
    let pushes = pushes_to(&apns, DAVE_TOKEN);
    assert_eq!(pushes.len(), 1, "a push went to a device live on another node");
    assert_eq!(
        pushes[0].headers["apns-priority"], "10",
        "the push is the urgent send's"
    );
    a.stop().await;
    b.stop().await;
}
