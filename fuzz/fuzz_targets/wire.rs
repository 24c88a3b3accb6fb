//! Protobuf bodies of the client API: decoding never panics and re-encoding round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use relay_core::wire::v1;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = v1::SendRequest::decode(data) {
        let again = v1::SendRequest::decode(m.encode_to_vec().as_slice()).unwrap();
        assert_eq!(again, m);
    }
    let _ = v1::AckRequest::decode(data);
    let _ = v1::RegisterRequest::decode(data);
    let _ = v1::UploadKeyPackagesRequest::decode(data);
    let _ = v1::ClaimKeyPackagesRequest::decode(data);
});
