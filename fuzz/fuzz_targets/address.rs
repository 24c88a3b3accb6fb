//! `Address::parse` never panics, and its canonical form parses to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_core::Address;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data)
        && let Ok(a) = Address::parse(s)
    {
        assert_eq!(Address::parse(a.as_str()).unwrap(), a);
    }
});
