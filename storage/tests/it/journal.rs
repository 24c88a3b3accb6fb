//! The sled backend's write-ahead journal seen from outside: whatever a crash leaves, every
//! acknowledged write comes back, and what cannot be trusted stops the start.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use relay_core::credential::DeviceCredential;
use storage::prelude::*;
use storage::*;

const NOW: u64 = 1_800_000_000_000;

/// No automatic checkpoints: the tests decide when one happens.
fn config(dir: &Path) -> SledConfig {
    SledConfig {
        cache_capacity: 16 << 20,
        checkpoint_bytes: u64::MAX,
        checkpoint_interval: Duration::from_secs(3600),
        journal_segment_bytes: 1 << 20,
        ..SledConfig::in_dir(dir)
    }
}

fn open(dir: &Path) -> Result<SledStore, StoreError> {
    // A store dropped a moment ago may still hold sled's directory lock.
    for _ in 0..100 {
        match SledStore::open(&config(dir)) {
            Err(StoreError::InUse(_)) => std::thread::sleep(Duration::from_millis(20)),
            other => return other,
        }
    }
    panic!("the sled directory stayed locked");
}

/// Ends a store without `close()`: no final checkpoint, so the next open must replay.
fn crash(store: SledStore) {
    drop(store);
}

/// Registers device `n` of address `Rid([n; 32])`.
pub(crate) async fn device(s: &SledStore, n: u8) -> (Rid, DeviceId) {
    let rid = Rid([n; 32]);
    let cred = DeviceCredential::from_random([n; 48]);
    let dev = s
        .register_device(NewDevice {
            rid,
            credential_lookup: cred.lookup(),
            credential_hash: cred.hash([n; 16]),
            provisioning_nonce: [n; 16],
            provisioning_expires_at_ms: NOW + 60_000,
            provisioning_key: "test".into(),
            max_devices: 6,
            now_ms: NOW,
        })
        .await
        .unwrap();
    (rid, dev)
}

async fn send(s: &SledStore, to: Rid, tag: u32) -> ServerId {
    s.send(SendRequest {
        sender: (Rid([200; 32]), DeviceId(1)),
        recipients: vec![RecipientSpec { rid: to, devices: None }],
        message: Ciphertext::from_stored(Bytes::from(format!("envelope-{tag:06}"))),
        client_message_id: None,
        request_digest: [0; 32],
        urgent: false,
        report: false,
        now_ms: NOW,
        ttl_ms: 3_600_000,
        max_queue_bytes: 1 << 30,
        ordering: None,
        outbox: Vec::new(),
    })
    .await
    .unwrap()
    .server_id
}

async fn all(s: &SledStore, (rid, dev): (Rid, DeviceId)) -> Vec<Bytes> {
    let page = s.receive(rid, dev, 0, 10_000, NOW).await.unwrap();
    assert!(page.queue_empty);
    page.envelopes.into_iter().map(|e| e.message.into_bytes()).collect()
}

fn expected(range: std::ops::Range<u32>) -> Vec<Bytes> {
    range.map(|i| Bytes::from(format!("envelope-{i:06}"))).collect()
}

fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("journal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_come_back_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).unwrap();
    let bob = device(&s, 1).await;
    for i in 0..300 {
        send(&s, bob.0, i).await;
    }
    crash(s);
    let s = open(dir.path()).unwrap();
    assert!(s.recovery().records >= 300, "{:?}", s.recovery());
    assert_eq!(all(&s, bob).await, expected(0..300));
    s.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_is_cut_and_nothing_acknowledged_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).unwrap();
    let bob = device(&s, 1).await;
    for i in 0..50 {
        send(&s, bob.0, i).await;
    }
    crash(s);
    // The write of the next group was cut by the crash: half a record at the end of the
    // segment the records are in.
    let last = segments(dir.path())
        .into_iter()
        .rev()
        .find(|p| std::fs::metadata(p).unwrap().len() > 0)
        .unwrap();
    let len = std::fs::metadata(&last).unwrap().len();
    let mut f = std::fs::OpenOptions::new().append(true).open(&last).unwrap();
    std::io::Write::write_all(&mut f, b"RCJ1\x40\x00\x00\x00torn-before-its-checksum").unwrap();
    drop(f);
    let s = open(dir.path()).unwrap();
    assert_eq!(s.recovery().torn_at.map(|t| t.1 as u64), Some(len));
    assert_eq!(all(&s, bob).await, expected(0..50));
    s.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_record_before_valid_ones_refuses_to_start_and_names_the_offset() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).unwrap();
    let bob = device(&s, 1).await;
    for i in 0..50 {
        send(&s, bob.0, i).await;
    }
    crash(s);
    let first = &segments(dir.path())[0];
    let mut bytes = std::fs::read(first).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    std::fs::write(first, &bytes).unwrap();
    let err = open(dir.path()).map(drop).unwrap_err();
    assert!(matches!(err, StoreError::Recovery(_)), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("corrupt at byte") && text.contains(".log"), "{text}");
    // Refusing changed nothing: the same error again, the file untouched.
    assert_eq!(std::fs::read(first).unwrap(), bytes);
    assert_eq!(open(dir.path()).map(drop).unwrap_err().to_string(), text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_bounds_replay_and_a_crash_after_it_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).unwrap();
    let bob = device(&s, 1).await;
    for i in 0..200 {
        send(&s, bob.0, i).await;
    }
    let store = s.clone();
    tokio::task::spawn_blocking(move || store.checkpoint())
        .await
        .unwrap()
        .unwrap();
    for i in 200..230 {
        send(&s, bob.0, i).await;
    }
    crash(s);
    let s = open(dir.path()).unwrap();
    let r = s.recovery();
    assert!(r.checkpoint_lsn > 200, "{r:?}");
    assert_eq!(r.records, 30, "only what followed the checkpoint is replayed: {r:?}");
    assert_eq!(all(&s, bob).await, expected(0..230));
    s.close();
}

/// Replay applies a record whose effects sled may already hold: the result is the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_twice_ends_in_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).unwrap();
    let bob = device(&s, 1).await;
    let alice = device(&s, 2).await;
    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(send(&s, if i % 2 == 0 { bob.0 } else { alice.0 }, i).await);
    }
    s.ack(
        bob.0,
        bob.1,
        Ack {
            server_ids: vec![ids[0], ids[2]],
            up_to: None,
        },
    )
    .await
    .unwrap();
    crash(s);
    // Keep the journal as the crash left it, replay it once (which applies and checkpoints),
    // then put the old journal back and replay it again over the state that holds it all.
    let journal = dir.path().join("journal");
    let saved = dir.path().join("journal.saved");
    copy_dir(&journal, &saved);
    let s = open(dir.path()).unwrap();
    let (once_bob, once_alice, once_stats) = (all(&s, bob).await, all(&s, alice).await, s.stats().await.unwrap());
    assert!(s.recovery().records > 0);
    s.close();
    drop(s);
    std::fs::remove_dir_all(&journal).unwrap();
    copy_dir(&saved, &journal);
    let s = open(dir.path()).unwrap();
    assert!(s.recovery().records > 0, "the journal was replayed again");
    assert_eq!(all(&s, bob).await, once_bob);
    assert_eq!(all(&s, alice).await, once_alice);
    assert_eq!(s.stats().await.unwrap(), once_stats);
    assert_eq!(once_bob.len(), 18, "20 sent to bob, 2 acknowledged");
    s.close();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}
