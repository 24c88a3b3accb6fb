//! The protobuf client API, generated from `proto/relay/v1/relay.proto`.
//!
//! Only this module derives wire encodings; the rest of the code works with the
//! parsed types of this crate.

#![allow(missing_debug_implementations, unreachable_pub, clippy::all)]

/// `relay.v1`
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/relay.v1.rs"));
}

/// Media type of every protobuf body.
pub const PROTOBUF: &str = "application/x-protobuf";
