//! A data directory written by layout version 1 (one `m/` key per device and envelope, blob
//! records without recipients) opens under the current layout with every queued envelope and
//! gap marker where it was, byte for byte.

use std::time::Duration;

use bytes::Bytes;
use storage::prelude::*;
use storage::*;

const NOW: u64 = 1_800_000_000_000;

fn legacy_entry(flags: u8, server_id: [u8; 16], size: u32, dropped: u64) -> Vec<u8> {
    let mut v = vec![1, flags];
    v.extend_from_slice(&server_id);
    v.extend_from_slice(&NOW.to_be_bytes());
    v.extend_from_slice(&(NOW + 3_600_000).to_be_bytes());
    v.extend_from_slice(&size.to_be_bytes());
    v.extend_from_slice(&dropped.to_be_bytes());
    v
}

fn key(prefix: &[u8], rid: Rid, dev: u32, tail: &[u8]) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&rid.0);
    k.extend_from_slice(&dev.to_be_bytes());
    k.extend_from_slice(tail);
    k
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layout_1_mailbox_is_converted_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let config = SledConfig {
        cache_capacity: 16 << 20,
        ..SledConfig::in_dir(dir.path())
    };
    // Two devices registered through the store, then layout 1 records written under them.
    let (bob, carol) = {
        let s = SledStore::open(&config).unwrap();
        let (bob, _) = crate::journal::device(&s, 1).await;
        let (carol, _) = crate::journal::device(&s, 2).await;
        s.close();
        (bob, carol)
    };
    let fan_out_id = [[0, 0, 0, 0, 0, 0, 0, 9], [7; 8]].concat();
    let solo_id = [[0, 0, 0, 0, 0, 0, 0, 11], [8; 8]].concat();
    {
        let db = loop {
            match sled::open(&config.path) {
                Ok(db) => break db,
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        let tree = db.open_tree("relay-v1").unwrap();
        tree.remove(b"V/").unwrap();
        for (id, payload, remaining) in [(&fan_out_id, &b"to-both"[..], 2u32), (&solo_id, &b"to-bob"[..], 1)] {
            let mut blob = vec![1];
            blob.extend_from_slice(&remaining.to_be_bytes());
            blob.extend_from_slice(&(NOW + 3_600_000).to_be_bytes());
            blob.extend_from_slice(payload);
            tree.insert([&b"b/"[..], id].concat(), blob).unwrap();
        }
        let id = |v: &Vec<u8>| -> [u8; 16] { v.as_slice().try_into().unwrap() };
        tree.insert(key(b"m/", bob, 1, &5u64.to_be_bytes()), legacy_entry(2, [0; 16], 0, 3))
            .unwrap();
        tree.insert(
            key(b"m/", bob, 1, &9u64.to_be_bytes()),
            legacy_entry(0, id(&fan_out_id), 7, 0),
        )
        .unwrap();
        tree.insert(
            key(b"m/", carol, 1, &9u64.to_be_bytes()),
            legacy_entry(0, id(&fan_out_id), 7, 0),
        )
        .unwrap();
        tree.insert(
            key(b"m/", bob, 1, &11u64.to_be_bytes()),
            legacy_entry(1, id(&solo_id), 6, 0),
        )
        .unwrap();
        db.flush().unwrap();
    }
    let s = loop {
        match SledStore::open(&config) {
            Err(StoreError::InUse(_)) => std::thread::sleep(Duration::from_millis(20)),
            other => break other.unwrap(),
        }
    };
    let page = s.receive(bob, DeviceId(1), 0, 10, NOW).await.unwrap();
    let got: Vec<(u64, u32, u64, Bytes)> = page
        .envelopes
        .iter()
        .map(|e| (e.seq, e.flags, e.dropped, e.message.as_bytes().clone()))
        .collect();
    assert_eq!(
        got,
        [
            (5, flags::GAP, 3, Bytes::new()),
            (9, 0, 0, Bytes::from_static(b"to-both")),
            (11, flags::URGENT, 0, Bytes::from_static(b"to-bob")),
        ]
    );
    let carol_page = s.receive(carol, DeviceId(1), 0, 10, NOW).await.unwrap();
    assert_eq!(carol_page.envelopes.len(), 1);
    // The converted fan-out blob is shared: it lives until its last holder acknowledges.
    s.ack(
        bob,
        DeviceId(1),
        Ack {
            server_ids: vec![],
            up_to: Some(11),
        },
    )
    .await
    .unwrap();
    assert_eq!(s.stats().await.unwrap().blobs, 1);
    s.ack(
        carol,
        DeviceId(1),
        Ack {
            server_ids: vec![],
            up_to: Some(9),
        },
    )
    .await
    .unwrap();
    assert_eq!(s.stats().await.unwrap().blobs, 0);
    // New sends get ids above the old ones (cursors never go backwards).
    let sent = s
        .send(SendRequest {
            sender: (carol, DeviceId(1)),
            recipients: vec![RecipientSpec {
                rid: bob,
                devices: None,
            }],
            message: Ciphertext::from_stored(Bytes::from_static(b"after")),
            client_message_id: None,
            request_digest: [0; 32],
            urgent: false,
            report: false,
            now_ms: NOW,
            ttl_ms: 3_600_000,
            max_queue_bytes: 1 << 20,
            ordering: None,
            outbox: Vec::new(),
        })
        .await
        .unwrap();
    assert!(sent.server_id.seq() > 11);
    s.close();
}
