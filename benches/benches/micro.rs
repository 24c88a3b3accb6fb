//! Criterion micro-benchmarks: MLS header parse, recipient hashing, protobuf codec,
//! storage send/receive/ack (each including its durable flush), fan-out cost, and group
//! commit with N concurrent writers.
//!
//! `cargo bench -p benches --bench micro` (add `-- --quick` for a short run).

#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use prost::Message as _;
use relay_core::credential::DeviceCredential;
use relay_core::wire::v1;
use relay_core::{Address, Ciphertext, DeviceId, Envelope, Limits, Rid, RidKey};
use storage::prelude::*;
use storage::{Ack, NewDevice, RecipientSpec, SendRequest, SledConfig, SledStore};

fn parse(c: &mut Criterion) {
    let limits = Limits::default();
    let framed = Bytes::from(relay_core::envelope::frame_private_message(b"group", 7, &[0xa5; 1024]));
    let mut alice = test_support::mls::Member::new("tel:+15550100001");
    let bob = test_support::mls::Member::new("tel:+15550100002");
    alice.create_group();
    alice.add(&[bob.key_package().0]);
    let real = alice.encrypt(&[0x42; 1024]);
    let mut g = c.benchmark_group("envelope_parse");
    g.throughput(Throughput::Bytes(real.len() as u64));
    g.bench_function("openmls_private_message_1k", |b| {
        b.iter(|| Envelope::parse(real.clone(), &limits).unwrap())
    });
    g.bench_function("framed_private_message_1k", |b| {
        b.iter(|| Envelope::parse(framed.clone(), &limits).unwrap())
    });
    g.finish();
}

fn hashing(c: &mut Criterion) {
    let key = RidKey::from_bytes([7; 32]);
    let address = Address::parse("tel:+15550100001").unwrap();
    c.bench_function("rid_keyed_blake3", |b| b.iter(|| key.rid(&address)));
    c.bench_function("address_parse_and_rid", |b| {
        b.iter(|| key.rid(&Address::parse("tel:+1 (555) 010-0001").unwrap()));
    });
}

fn protobuf(c: &mut Criterion) {
    let message = Bytes::from(relay_core::envelope::frame_private_message(b"group", 7, &[0xa5; 1024]));
    for n in [1usize, 1000] {
        let req = v1::SendRequest {
            recipients: (0..n)
                .map(|i| v1::Recipient {
                    address: format!("tel:+1555{i:07}"),
                    device_ids: vec![],
                })
                .collect(),
            message: message.clone(),
            client_message_id: Bytes::new(),
            urgent: false,
        };
        let encoded = Bytes::from(req.encode_to_vec());
        c.bench_with_input(BenchmarkId::new("send_request_encode", n), &req, |b, r| {
            b.iter(|| r.encode_to_vec())
        });
        c.bench_with_input(BenchmarkId::new("send_request_decode", n), &encoded, |b, e| {
            b.iter(|| v1::SendRequest::decode(e.clone()).unwrap());
        });
    }
}

struct Fixture {
    store: Arc<SledStore>,
    _dir: tempfile::TempDir,
    rids: Vec<Rid>,
}

async fn fixture(recipients: usize) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(&SledConfig::in_dir(dir.path())).unwrap());
    let mut rids = Vec::new();
    for i in 0..recipients as u32 {
        let mut raw = [0u8; 32];
        raw[..4].copy_from_slice(&i.to_be_bytes());
        let rid = Rid(raw);
        let mut random = [1u8; 48];
        random[..4].copy_from_slice(&i.to_be_bytes());
        let cred = DeviceCredential::from_random(random);
        let mut nonce = [0u8; 16];
        nonce[..4].copy_from_slice(&i.to_be_bytes());
        store
            .register_device(NewDevice {
                rid,
                credential_lookup: cred.lookup(),
                credential_hash: cred.hash([0; 16]),
                provisioning_nonce: nonce,
                provisioning_expires_at_ms: u64::MAX,
                provisioning_key: "test".into(),
                max_devices: 6,
                now_ms: 0,
            })
            .await
            .unwrap();
        rids.push(rid);
    }
    Fixture { store, _dir: dir, rids }
}

fn send_request(rids: &[Rid], message: &Ciphertext) -> SendRequest {
    SendRequest {
        sender: (Rid([0xff; 32]), DeviceId(1)),
        recipients: rids.iter().map(|r| RecipientSpec { rid: *r, devices: None }).collect(),
        message: message.clone(),
        client_message_id: None,
        request_digest: [0; 32],
        urgent: false,
        report: false,
        now_ms: 1,
        ttl_ms: 86_400_000,
        max_queue_bytes: 1 << 40,
        ordering: None,
        outbox: Vec::new(),
    }
}

fn storage_ops(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let message = Ciphertext::from_stored(Bytes::from(vec![0xa5; 1024]));
    let mut g = c.benchmark_group("storage");
    g.sample_size(20);
    for n in [1usize, 1000] {
        let f = rt.block_on(fixture(n));
        g.bench_function(BenchmarkId::new("durable_send_1k_to_recipients", n), |b| {
            b.to_async(&rt)
                .iter(|| async { f.store.send(send_request(&f.rids, &message)).await.unwrap() });
        });
    }
    let f = rt.block_on(fixture(1));
    let rid = f.rids[0];
    g.bench_function("receive_ack_one", |b| {
        b.to_async(&rt).iter(|| async {
            f.store.send(send_request(&f.rids, &message)).await.unwrap();
            let page = f.store.receive(rid, DeviceId(1), 0, 10, 2).await.unwrap();
            f.store
                .ack(
                    rid,
                    DeviceId(1),
                    Ack {
                        server_ids: vec![],
                        up_to: Some(page.next_cursor),
                    },
                )
                .await
                .unwrap();
        });
    });
    g.finish();

    // Group commit: N concurrent writers share flushes. Reported per send.
    let mut g = c.benchmark_group("group_commit_send");
    g.sample_size(10);
    for writers in [1usize, 8, 64] {
        let f = rt.block_on(fixture(1));
        g.throughput(Throughput::Elements(writers as u64));
        g.bench_function(BenchmarkId::from_parameter(writers), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let mut tasks = tokio::task::JoinSet::new();
                        for _ in 0..writers {
                            let store = Arc::clone(&f.store);
                            let req = send_request(&f.rids, &message);
                            tasks.spawn(async move { store.send(req).await.unwrap() });
                        }
                        while tasks.join_next().await.is_some() {}
                    }
                    start.elapsed()
                })
            });
        });
    }
    g.finish();
}

criterion_group! {
    name = micro;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = parse, hashing, protobuf, storage_ops
}
criterion_main!(micro);
