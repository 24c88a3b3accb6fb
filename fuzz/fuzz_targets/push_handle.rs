//! Push-proxy parsers never panic: sealed handles, pointers, JWTs and Web Push bodies.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use push_proxy::handle::{HandleKeys, PushTarget};

fn keys() -> &'static HandleKeys {
    static KEYS: OnceLock<HandleKeys> = OnceLock::new();
    KEYS.get_or_init(|| HandleKeys::new(1, &[(1, [1; 32]), (2, [2; 32])]).expect("valid keys"))
}

fuzz_target!(|data: &[u8]| {
    let ua = p256::SecretKey::from_slice(&[7; 32]).expect("a valid scalar");
    let _ = push_proxy::webpush::decrypt(&ua, &[9; 16], data);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = keys().open(s);
        let _ = relay_core::push::Pointer::parse(s);
        let _ = push_proxy::jwt::parts(s);
        let _ = push_proxy::webpush::verify_vapid(s, "https://push.example", 0);
        let _ = relay_core::push::parse_retry_after(s);
        // Anything that opens re-seals to something that opens to the same target.
        if let Ok(t) = keys().open(s) {
            let again: PushTarget = keys().open(&keys().seal(&t)).expect("round trip");
            assert_eq!(again, t);
        }
    }
});
