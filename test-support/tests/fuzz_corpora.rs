//! The fuzz targets' checks (`fuzz/checks.rs`, shared with `fuzz/fuzz_targets/`) over every
//! input kept on disk — the committed seeds (`fuzz/seeds/<target>/`), and where a local
//! `.ci/fuzz` run left them, its corpus and its crash artifacts — plus seeds made here from
//! the real encoders. A crash input that `.ci/fuzz` finds is copied into `fuzz/seeds/` with
//! the fix, so it is replayed here from then on.
//!
//! `WRITE_FUZZ_SEEDS=1 cargo test -p test-support --test fuzz_corpora` rewrites the
//! generated seeds into `fuzz/seeds/`.

#![allow(clippy::unwrap_used)]

#[path = "../../fuzz/checks.rs"]
mod checks;

use std::path::{Path, PathBuf};

use prost::Message as _;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Seeds from the real encoders: one valid input of each kind, and some near misses.
fn generated() -> Vec<(&'static str, String, Vec<u8>)> {
    use relay_core::wire::v1;
    let mut out: Vec<(&'static str, String, Vec<u8>)> = Vec::new();
    let mut add = |target: &'static str, name: &str, bytes: Vec<u8>| out.push((target, name.to_owned(), bytes));

    // envelope: a real openmls PrivateMessage, a framed one, and a cut-short one.
    let hello = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../relay-client/samples/hello.mls")).unwrap();
    add("envelope", "openmls-private-message", hello.clone());
    add("envelope", "truncated", hello[..hello.len() / 2].to_vec());
    let framed = relay_core::envelope::frame_private_message(b"group", 7, b"ciphertext");
    add("envelope", "framed-private-message", framed.clone());

    // address
    for (name, a) in [
        ("e164", "tel:+15550100001"),
        ("visual-separators", "tel:+1-555-010-0002"),
        ("no-scheme", "+447700900001"),
        ("too-long", "tel:+1234567890123456"),
        ("non-ascii", "tel:+١٥٥٥٠١٠٠٠٠١"),
    ] {
        add("address", name, a.as_bytes().to_vec());
    }

    // credential_token: a credential, a signed provisioning token, a near miss.
    let credential = relay_core::credential::DeviceCredential::from_random([5; 48]).encode();
    add("credential_token", "credential", credential.clone().into_bytes());
    add(
        "credential_token",
        "credential-short",
        credential.as_bytes()[..credential.len() - 1].to_vec(),
    );
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let key = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let claims = relay_core::provisioning::ProvisioningClaims {
        address: relay_core::Address::parse("tel:+15550100001").unwrap(),
        expires_at_ms: 1_900_000_000_000,
        nonce: [9; 16],
    };
    add(
        "credential_token",
        "provisioning-token",
        relay_core::provisioning::sign(&key, &claims).into_bytes(),
    );

    // wire: each request body.
    let send = v1::SendRequest {
        recipients: vec![v1::Recipient {
            address: "tel:+15550100002".into(),
            device_ids: vec![1, 2],
        }],
        message: framed.into(),
        ..Default::default()
    };
    add("wire", "send", send.encode_to_vec());
    add(
        "wire",
        "register",
        v1::RegisterRequest {
            provisioning_token: "pt1.x.y".into(),
            ..Default::default()
        }
        .encode_to_vec(),
    );
    add(
        "wire",
        "ack",
        v1::AckRequest {
            up_to: 42,
            ..Default::default()
        }
        .encode_to_vec(),
    );

    // push_handle: sealed handles of each platform, a pointer, a JWT shape, Retry-After.
    let keys = checks::handle_keys();
    use push_proxy::handle::PushTarget;
    for (name, target) in [
        ("apns", PushTarget::Apns { token: "ab12".into() }),
        (
            "fcm",
            PushTarget::Fcm {
                token: "fcm-token".into(),
            },
        ),
        (
            "webpush",
            PushTarget::WebPush {
                endpoint: "https://push.example/sub/1".into(),
                p256dh: vec![4; 65],
                auth: vec![1; 16],
            },
        ),
    ] {
        add(
            "push_handle",
            &format!("handle-{name}"),
            keys.seal(&target).into_bytes(),
        );
    }
    add(
        "push_handle",
        "pointer",
        relay_core::push::Pointer::from_random([3; 16]).encode().into_bytes(),
    );
    add(
        "push_handle",
        "jwt-shape",
        b"eyJhbGciOiJFUzI1NiJ9.eyJhdWQiOiJ4In0.c2ln".to_vec(),
    );
    add("push_handle", "retry-after", b"120".to_vec());

    // interconnect: a sealed outbox record, an entry state, the peers' JSON bodies.
    let sealer = interconnect::record::Sealer::new(&checks::OUTBOX_KEY);
    let part = interconnect::record::RemotePart {
        recipients: vec!["tel:+447700900001".into()],
        message: bytes::Bytes::from_static(b"mls"),
        urgent: true,
        origin: None,
    };
    add("interconnect", "outbox-record", sealer.seal(&part));
    let with_origin = interconnect::record::RemotePart {
        origin: Some(interconnect::record::Origin {
            rid: relay_core::Rid([5; 32]),
            device: relay_core::DeviceId(2),
            indexes: vec![1],
        }),
        ..part
    };
    add("interconnect", "outbox-record-origin", sealer.seal(&with_origin));
    add(
        "interconnect",
        "entry-state",
        relay_core::interconnect::EntryState::new(1_700_000_000_000)
            .encode()
            .to_vec(),
    );
    add(
        "interconnect",
        "notify-body",
        br#"{"recipients":["tel:+447700900001"],"message":"AAEC","urgent":false}"#.to_vec(),
    );
    add(
        "interconnect",
        "key-material",
        br#"{"requester":"tel:+15550100001","targets":["tel:+447700900001"]}"#.to_vec(),
    );

    // at_rest: a sealed KeyPackage and GroupInfo, a record from before sealing, a sealed
    // key file's header, and outbox records under a rotated ring (current and previous).
    let at_rest = relay_core::atrest::AtRest::new(&relay_core::RidKey::from_bytes(checks::AT_REST_KEY));
    let rid = relay_core::Rid(checks::AT_REST_RID);
    add(
        "at_rest",
        "key-package",
        at_rest.seal_key_package(&rid, b"\x00\x01kp").to_vec(),
    );
    add(
        "at_rest",
        "group-info",
        at_rest.seal_group_info(checks::AT_REST_GROUP, b"\x00\x01gi").to_vec(),
    );
    add("at_rest", "legacy", b"\x00\x01 stored before sealing".to_vec());
    let mut key_file = b"RKS1".to_vec();
    key_file.extend_from_slice(&relay_keys::fingerprint_bytes(&[9; 32]));
    key_file.extend_from_slice(&[0; 60]);
    add("at_rest", "sealed-key-file", key_file);
    add("at_rest", "outbox-v1", checks::outbox_ring().seal(&part_for_ring()));
    add(
        "at_rest",
        "outbox-v0",
        interconnect::record::Sealer::new(&checks::OUTBOX_KEY).seal(&part_for_ring()),
    );
    out
}

fn part_for_ring() -> interconnect::record::RemotePart {
    interconnect::record::RemotePart {
        recipients: vec!["tel:+447700900002".into()],
        message: bytes::Bytes::from_static(b"mls"),
        urgent: false,
        origin: None,
    }
}

/// Every file in `dir` (none if it does not exist).
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    v.sort();
    v
}

#[test]
fn every_seed_and_corpus_input_passes_its_check() {
    let generated = generated();
    if std::env::var_os("WRITE_FUZZ_SEEDS").is_some() {
        for (target, name, bytes) in &generated {
            let dir = fuzz_dir().join("seeds").join(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
    let mut replayed = 0;
    for (target, check) in checks::TARGETS {
        for (_, _, bytes) in generated.iter().filter(|(t, _, _)| *t == target) {
            check(bytes);
            replayed += 1;
        }
        let seeds = files(&fuzz_dir().join("seeds").join(target));
        assert!(!seeds.is_empty(), "fuzz/seeds/{target}/ holds the committed seeds");
        let on_disk = seeds
            .into_iter()
            .chain(files(&fuzz_dir().join("corpus").join(target)))
            .chain(files(&fuzz_dir().join("artifacts").join(target)));
        for path in on_disk {
            let bytes = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| check(&bytes));
            assert!(outcome.is_ok(), "{} fails its check", path.display());
            replayed += 1;
        }
    }
    eprintln!("replayed {replayed} inputs");
}

/// The seeds reach each check's accepting path (not only its refusals): the envelope
/// parses, the address and credential parse, the send decodes, the handle and the outbox
/// record open, the entry state decodes.
#[test]
fn the_seeds_reach_the_accepting_paths() {
    use relay_core::wire::v1;
    let g = generated();
    let seed = |t: &str, n: &str| g.iter().find(|(gt, gn, _)| *gt == t && gn == n).unwrap().2.clone();
    let limits = relay_core::Limits::default();
    assert!(relay_core::Envelope::parse(seed("envelope", "openmls-private-message").into(), &limits).is_ok());
    assert!(relay_core::Address::parse(std::str::from_utf8(&seed("address", "e164")).unwrap()).is_ok());
    let cred = String::from_utf8(seed("credential_token", "credential")).unwrap();
    assert!(relay_core::credential::DeviceCredential::parse(&cred).is_ok());
    assert!(
        !v1::SendRequest::decode(seed("wire", "send").as_slice())
            .unwrap()
            .recipients
            .is_empty()
    );
    let handle = String::from_utf8(seed("push_handle", "handle-webpush")).unwrap();
    assert!(checks::handle_keys().open(&handle).is_ok());
    let sealer = interconnect::record::Sealer::new(&checks::OUTBOX_KEY);
    assert!(sealer.open(&seed("interconnect", "outbox-record")).is_some());
    assert!(relay_core::interconnect::EntryState::decode(&seed("interconnect", "entry-state")).is_some());
    let at_rest = relay_core::atrest::AtRest::new(&relay_core::RidKey::from_bytes(checks::AT_REST_KEY));
    let kp = bytes::Bytes::from(seed("at_rest", "key-package"));
    assert_eq!(
        at_rest
            .open_key_package(&relay_core::Rid(checks::AT_REST_RID), &kp)
            .as_deref(),
        Some(b"\x00\x01kp".as_slice())
    );
    assert!(relay_keys::token::sealed_fingerprint(&seed("at_rest", "sealed-key-file")).is_some());
    let ring = checks::outbox_ring();
    assert_eq!(ring.version_of(&seed("at_rest", "outbox-v1")), 1);
    assert!(
        ring.open(&seed("at_rest", "outbox-v0")).is_some(),
        "the previous version opens"
    );
}
