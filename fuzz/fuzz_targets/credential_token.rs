//! Bearer credentials and provisioning tokens: parsing never panics; a parsed credential
//! re-encodes to the same string; a token never verifies against a fixed unrelated key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_core::credential::DeviceCredential;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(c) = DeviceCredential::parse(s) {
        assert_eq!(c.encode(), s);
    }
    assert!(relay_core::provisioning::verify(s, &[7u8; 32], 0).is_err());
});
