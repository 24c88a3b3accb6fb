//! What each fuzz target checks, once: the cargo-fuzz targets (`fuzz_targets/`) call these,
//! and `test-support/tests/fuzz_corpora.rs` replays every seed and corpus input through them
//! as an ordinary test in `.ci/run`. Every function must not panic on any input.

use std::sync::OnceLock;

use prost::Message as _;

/// A target's check.
pub(crate) type Check = fn(&[u8]);

/// Every target: its name (the directory under `fuzz/seeds/` and `fuzz/corpus/`) and check.
pub(crate) const TARGETS: [(&str, Check); 7] = [
    ("envelope", envelope),
    ("address", address),
    ("credential_token", credential_token),
    ("wire", wire),
    ("push_handle", push_handle),
    ("interconnect", interconnect),
    ("at_rest", at_rest),
];

/// `Envelope::parse` never panics; what it accepts is kept byte for byte; a cleartext
/// header exists only for Public/PrivateMessage, Welcome refs only for a Welcome.
pub(crate) fn envelope(data: &[u8]) {
    use relay_core::envelope::MessageKind;
    let bytes = bytes::Bytes::copy_from_slice(data);
    if let Ok(env) = relay_core::Envelope::parse(bytes, &relay_core::Limits::default()) {
        assert_eq!(env.ciphertext().as_bytes().as_ref(), data);
        let framed = matches!(env.kind(), MessageKind::PublicMessage | MessageKind::PrivateMessage);
        assert_eq!(env.header().is_some(), framed);
        assert!(env.welcome_refs().is_empty() || env.kind() == MessageKind::Welcome);
        assert!(env.group_info_group_id().is_none() || env.kind() == MessageKind::GroupInfo);
    }
}

/// `Address::parse` never panics, and its canonical form parses to itself.
pub(crate) fn address(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data)
        && let Ok(a) = relay_core::Address::parse(s)
    {
        assert_eq!(relay_core::Address::parse(a.as_str()).unwrap(), a);
    }
}

/// Bearer credentials and provisioning tokens: parsing never panics; a parsed credential
/// re-encodes to the same string; a token never verifies against a fixed unrelated key.
pub(crate) fn credential_token(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(c) = relay_core::credential::DeviceCredential::parse(s) {
        assert_eq!(c.encode(), s);
    }
    assert!(relay_core::provisioning::verify(s, &[7u8; 32], 0).is_err());
}

/// Protobuf bodies of the client API: decoding never panics and re-encoding round-trips.
pub(crate) fn wire(data: &[u8]) {
    use relay_core::wire::v1;
    if let Ok(m) = v1::SendRequest::decode(data) {
        let again = v1::SendRequest::decode(m.encode_to_vec().as_slice()).unwrap();
        assert_eq!(again, m);
    }
    let _ = v1::AckRequest::decode(data);
    let _ = v1::RegisterRequest::decode(data);
    let _ = v1::UploadKeyPackagesRequest::decode(data);
    let _ = v1::ClaimKeyPackagesRequest::decode(data);
}

/// The handle keys the push-handle check (and its seeds) use.
pub(crate) fn handle_keys() -> &'static push_proxy::handle::HandleKeys {
    static KEYS: OnceLock<push_proxy::handle::HandleKeys> = OnceLock::new();
    KEYS.get_or_init(|| push_proxy::handle::HandleKeys::new(1, &[(1, [1; 32]), (2, [2; 32])]).expect("valid keys"))
}

/// Push-proxy parsers never panic: sealed handles, pointers, JWTs and Web Push bodies.
pub(crate) fn push_handle(data: &[u8]) {
    let ua = p256::SecretKey::from_slice(&[7; 32]).expect("a valid scalar");
    let _ = push_proxy::webpush::decrypt(&ua, &[9; 16], data);
    if let Ok(s) = std::str::from_utf8(data) {
        let keys = handle_keys();
        let _ = relay_core::push::Pointer::parse(s);
        let _ = push_proxy::jwt::parts(s);
        let _ = push_proxy::webpush::verify_vapid(s, "https://push.example", 0);
        let _ = relay_core::push::parse_retry_after(s);
        // Anything that opens re-seals to something that opens to the same target.
        if let Ok(t) = keys.open(s) {
            let again: push_proxy::handle::PushTarget = keys.open(&keys.seal(&t)).expect("round trip");
            assert_eq!(again, t);
        }
    }
}

/// The outbox sealing key the interconnect check (and its seeds) use.
pub(crate) const OUTBOX_KEY: [u8; 32] = [3; 32];

/// Interconnect parsers never panic: sealed outbox records, outbox entry states, and the
/// JSON bodies peers send.
pub(crate) fn interconnect(data: &[u8]) {
    let sealer = interconnect::record::Sealer::new(&OUTBOX_KEY);
    if let Some(part) = sealer.open(data) {
        assert_eq!(sealer.open(&sealer.seal(&part)), Some(part));
    }
    if let Some(state) = relay_core::interconnect::EntryState::decode(data) {
        assert_eq!(
            relay_core::interconnect::EntryState::decode(&state.encode()),
            Some(state)
        );
    }
    let _ = serde_json::from_slice::<interconnect::wire::NotifyBody>(data);
    let _ = serde_json::from_slice::<interconnect::wire::KeyMaterialRequest>(data);
}

/// The K_rid the at-rest check (and its seeds) use, and the rid its KeyPackages are sealed for.
pub(crate) const AT_REST_KEY: [u8; 32] = [4; 32];
pub(crate) const AT_REST_RID: [u8; 32] = [1; 32];
pub(crate) const AT_REST_GROUP: &[u8] = b"group";

/// A rotated outbox key ring: version 0 ([`OUTBOX_KEY`]) and version 1, current.
pub(crate) fn outbox_ring() -> interconnect::record::Sealer {
    interconnect::record::Sealer::from_ring(&relay_keys::ring::Ring {
        current: 1,
        keys: vec![
            (0, relay_keys::Secret::new(OUTBOX_KEY)),
            (1, relay_keys::Secret::new([5; 32])),
        ],
    })
}

/// Records sealed at rest never make their openers panic: KeyPackages and GroupInfo
/// (`relay_core::atrest`; what opens re-seals to something that opens the same), sealed key
/// files' clear header, and versioned outbox records under a rotated ring.
pub(crate) fn at_rest(data: &[u8]) {
    let at_rest = relay_core::atrest::AtRest::new(&relay_core::RidKey::from_bytes(AT_REST_KEY));
    let rid = relay_core::Rid(AT_REST_RID);
    let stored = bytes::Bytes::copy_from_slice(data);
    if let Some(kp) = at_rest.open_key_package(&rid, &stored) {
        let again = at_rest.seal_key_package(&rid, &kp);
        assert_eq!(at_rest.open_key_package(&rid, &again), Some(kp));
    }
    if let Some(gi) = at_rest.open_group_info(AT_REST_GROUP, &stored) {
        let again = at_rest.seal_group_info(AT_REST_GROUP, &gi);
        assert_eq!(at_rest.open_group_info(AT_REST_GROUP, &again), Some(gi));
    }
    if let Some(fp) = relay_keys::token::sealed_fingerprint(data) {
        assert_eq!(fp.len(), 32);
    }
    let ring = outbox_ring();
    let version = ring.version_of(data);
    if let Some(part) = ring.open(data) {
        assert!(version <= 1);
        assert_eq!(ring.open(&ring.seal(&part)), Some(part));
    }
}
