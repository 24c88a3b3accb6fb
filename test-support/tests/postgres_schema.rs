//! The PostgreSQL backend's schema, against a real PostgreSQL 15
//! started here: the migrations apply once and then are a no-op, and no column can hold an
//! address, a credential or a push token in the clear.

#![allow(clippy::unwrap_used)]

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_once_and_store_nothing_identifying() {
    let dir = tempfile::tempdir().unwrap();
    let pg = test_support::postgres::Postgres::start(&dir.path().join("pg"));
    let (mut client, connection) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let (applied, version) = storage::postgres::migrate(&mut client).await.unwrap();
    assert_eq!((applied, version), (1, 1));
    let (again, _) = storage::postgres::migrate(&mut client).await.unwrap();
    assert_eq!(again, 0, "an applied migration is not applied again");
    let rows = client
        .query(
            "SELECT table_name, column_name, data_type FROM information_schema.columns \
             WHERE table_schema = 'public' AND table_name <> 'refinery_schema_history'",
            &[],
        )
        .await
        .unwrap();
    let columns: Vec<(String, String, String)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    let tables: std::collections::BTreeSet<&str> = columns.iter().map(|c| c.0.as_str()).collect();
    for t in [
        "devices",
        "blobs",
        "mailbox",
        "key_packages",
        "groups",
        "outbox",
        "audit",
        "rekey_marks",
    ] {
        assert!(tables.contains(t), "{t} missing: {tables:?}");
    }
    for (table, column, _) in &columns {
        for word in [
            "address", "phone", "number", "msisdn", "token", "password", "pin", "secret",
        ] {
            assert!(
                !column.contains(word),
                "{table}.{column} could hold an identifier or a secret"
            );
        }
    }
    // Only the push proxy's sealed handle, audit text (rids, never addresses: the storage
    // contract's audit tests check that), operator-chosen names (switches, peer carriers),
    // node ids (random) and the nodes' agreement values (probes, hex) are text.
    let mut text: Vec<String> = columns
        .iter()
        .filter(|c| c.2 == "text")
        .map(|c| format!("{}.{}", c.0, c.1))
        .collect();
    text.sort();
    assert_eq!(
        text,
        [
            "audit.detail",
            "audit.kind",
            "audit_checkpoints.note",
            "cluster.name",
            "cluster.value",
            "outbox.leased_by",
            "outbox.peer",
            "push_handles.handle",
            "receivers.node",
            "switches_off.name",
        ],
        "no unexpected text column"
    );
}
