//! Edges and small contracts of the pure logic that `cargo mutants -p relay-core` showed no
//! test pinned down: length limits at exactly the limit, redacting `Debug` output, id
//! accessors, routing ties, the push window's end, and varint framing at its boundaries.

#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use relay_core::credential::DeviceCredential;
use relay_core::envelope::{Envelope, EnvelopeError, frame_private_message};
use relay_core::interconnect::{PeerRoute, Route, RoutingTable};
use relay_core::push::{Decision, PushPolicy, Scheduler, Wake};
use relay_core::{Address, AddressError, Ciphertext, ClientMessageId, Limits, Rid, RidKey, ServerId};

#[test]
fn an_address_of_exactly_64_characters_is_considered_and_65_is_not() {
    let padded = |n: usize| format!("tel:+15550100001{}", " ".repeat(n - 16));
    assert_eq!(Address::parse(&padded(64)).unwrap().as_str(), "tel:+15550100001");
    assert_eq!(Address::parse(&padded(65)), Err(AddressError::WrongLength(65)));
}

#[test]
fn debug_output_redacts_identifiers_and_secrets() {
    let address = Address::parse("tel:+15550100001").unwrap();
    assert_eq!(format!("{address:?}"), "Address(<redacted>)");
    let credential = DeviceCredential::from_random([5; 48]);
    assert_eq!(format!("{credential:?}"), "DeviceCredential(<secret>)");
    assert_eq!(format!("{:?}", RidKey::from_bytes([1; 32])), "RidKey(<secret>)");
    let mut rid = [0u8; 32];
    rid[..4].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    assert_eq!(format!("{:?}", Rid(rid)), "Rid(deadbeef..)");
    assert_eq!(
        format!("{:?}", Ciphertext::from_stored(Bytes::from_static(b"secret"))),
        "Ciphertext(6 bytes)"
    );
    let env = Envelope::parse(
        Bytes::from(frame_private_message(b"gid-secret", 7, b"ct")),
        &Limits::default(),
    )
    .unwrap();
    let header = format!("{:?}", env.header().unwrap());
    assert_eq!(
        header,
        "GroupHeader { group_id_len: 10, epoch: 7, content_type: Application }"
    );
}

#[test]
fn a_credential_lookup_is_its_public_half() {
    let a = DeviceCredential::from_random([5; 48]);
    let b = DeviceCredential::from_random([6; 48]);
    assert_ne!(a.lookup(), b.lookup());
    assert_eq!(DeviceCredential::parse(&a.encode()).unwrap().lookup(), a.lookup());
    assert_eq!(a.lookup(), [5; 16], "the first 16 random bytes");
}

#[test]
fn ciphertext_accessors() {
    let c = Ciphertext::from_stored(Bytes::from_static(b"abc"));
    assert_eq!((c.len(), c.is_empty()), (3, false));
    assert_eq!(c.into_bytes(), Bytes::from_static(b"abc"));
    assert!(Ciphertext::from_stored(Bytes::new()).is_empty());
}

#[test]
fn an_envelope_of_exactly_the_limit_is_accepted() {
    let bytes = Bytes::from(frame_private_message(b"g", 1, &[9; 100]));
    let exact = Limits {
        max_envelope_bytes: bytes.len(),
        ..Limits::default()
    };
    assert!(Envelope::parse(bytes.clone(), &exact).is_ok());
    let under = Limits {
        max_envelope_bytes: bytes.len() - 1,
        ..Limits::default()
    };
    assert_eq!(
        Envelope::parse(bytes.clone(), &under).unwrap_err(),
        EnvelopeError::TooLarge {
            len: bytes.len(),
            max: bytes.len() - 1
        }
    );
}

#[test]
fn frames_round_trip_at_every_varint_width() {
    // 63 and 64 bytes straddle the one-byte/two-byte boundary; 16,383 and 16,384 the
    // two-byte/four-byte one.
    for len in [0, 63, 64, 16_383, 16_384] {
        let gid = vec![7u8; len.min(255)];
        let ct = vec![3u8; len];
        let env = Envelope::parse(Bytes::from(frame_private_message(&gid, 2, &ct)), &Limits::default())
            .unwrap_or_else(|e| panic!("{len}: {e}"));
        assert_eq!(env.header().unwrap().group_id.as_ref(), gid.as_slice(), "{len}");
    }
}

#[test]
fn ids_from_slices_and_sequence_numbers() {
    let bytes = [[0, 0, 0, 0, 0, 0, 1, 2], [9; 8]].concat();
    let id = ServerId::from_slice(&bytes).unwrap();
    assert_eq!(id.0.as_slice(), bytes.as_slice());
    assert_eq!(id.seq(), 0x0102);
    assert_eq!(ServerId::from_slice(&bytes[..15]), None);
    assert_eq!(format!("{id:?}"), "ServerId(00000000000001020909090909090909)");
    assert_eq!(ClientMessageId::from_slice(&[4; 16]), Some(ClientMessageId([4; 16])));
    assert_eq!(ClientMessageId::from_slice(&[4; 17]), None);
}

#[test]
fn routing_ties_go_to_local_then_to_the_first_peer() {
    let peer = |name: &str, prefix: &str| PeerRoute {
        name: name.into(),
        prefixes: vec![prefix.into()],
        jurisdiction: "GB".into(),
    };
    let table = RoutingTable {
        local_prefixes: vec!["+4477".into()],
        peers: vec![peer("b", "+4477"), peer("c", "+447"), peer("d", "+447")],
        allowed_jurisdictions: vec![],
    };
    let addr = |s: &str| Address::parse(s).unwrap();
    assert_eq!(table.route(&addr("tel:+447700900001")), Route::Local, "tie with local");
    assert_eq!(
        table.route(&addr("tel:+447800900001")),
        Route::Peer(1),
        "tie between peers"
    );
}

#[test]
fn send_body_limit_is_envelope_plus_recipients_plus_slack() {
    let l = Limits {
        max_envelope_bytes: 1_000,
        max_recipients: 10,
        ..Limits::default()
    };
    assert_eq!(l.max_send_body_bytes(), 1_000 + 64 * 10 + 1_024);
}

#[test]
fn the_push_window_ends_exactly_after_window_ms_and_forget_clears_it() {
    let policy = PushPolicy {
        window_ms: 1_000,
        disconnect_delay_ms: 100,
    };
    let mut s: Scheduler<u32> = Scheduler::new(policy);
    assert_eq!(s.on_stored(1, false, false, 0), Decision::Push(Wake::Background));
    assert_eq!(s.on_stored(1, false, false, 999), Decision::Coalesced);
    assert_eq!(s.on_stored(1, false, false, 1_000), Decision::Push(Wake::Background));
    // Forgetting a device (handle dropped) clears its window.
    s.forget(1);
    assert_eq!(s.on_stored(1, false, false, 1_001), Decision::Push(Wake::Background));
    // Delayed pushes are counted per device.
    s.on_disconnect(2, true, 0);
    s.on_disconnect(3, true, 0);
    assert_eq!(s.pending(), 2);
    s.forget(2);
    assert_eq!(s.pending(), 1);
}

#[test]
fn a_provisioning_token_of_exactly_the_maximum_length_is_read() {
    // 512 characters, well-formed base64, a wrong signature: read, then refused as such.
    let token = |payload: usize| format!("pt1.{}.{}", "A".repeat(payload), "B".repeat(84));
    let key = [7u8; 32];
    assert_eq!(token(423).len(), 512);
    assert_eq!(
        relay_core::provisioning::verify(&token(423), &key, 0).unwrap_err(),
        relay_core::provisioning::ProvisioningError::BadSignature
    );
    assert_eq!(
        relay_core::provisioning::verify(&token(424), &key, 0).unwrap_err(),
        relay_core::provisioning::ProvisioningError::Malformed
    );
}
