//! `Envelope::parse` never panics; what it accepts is kept byte for byte; a cleartext
//! header exists only for Public/PrivateMessage, Welcome refs only for a Welcome.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_core::envelope::MessageKind;
use relay_core::{Envelope, Limits};

fuzz_target!(|data: &[u8]| {
    let bytes = bytes::Bytes::copy_from_slice(data);
    if let Ok(env) = Envelope::parse(bytes, &Limits::default()) {
        assert_eq!(env.ciphertext().as_bytes().as_ref(), data);
        let framed = matches!(env.kind(), MessageKind::PublicMessage | MessageKind::PrivateMessage);
        assert_eq!(env.header().is_some(), framed);
        assert!(env.welcome_refs().is_empty() || env.kind() == MessageKind::Welcome);
        assert!(env.group_info_group_id().is_none() || env.kind() == MessageKind::GroupInfo);
    }
});
