//! Interconnect parsers never panic: sealed outbox records, outbox entry states, and the
//! JSON bodies peers send.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let sealer = interconnect::record::Sealer::new(&[3; 32]);
    if let Some(part) = sealer.open(data) {
        assert_eq!(sealer.open(&sealer.seal(&part)), Some(part));
    }
    if let Some(state) = relay_core::interconnect::EntryState::decode(data) {
        assert_eq!(relay_core::interconnect::EntryState::decode(&state.encode()), Some(state));
    }
    let _ = serde_json::from_slice::<interconnect::NotifyBody>(data);
    let _ = serde_json::from_slice::<interconnect::KeyMaterialRequest>(data);
});
