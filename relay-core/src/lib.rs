//! Sans-IO core of rcs-relay.
//!
//! Everything here is pure: no sockets, no files, no clock (time is passed in as
//! milliseconds since the Unix epoch), no threads. The gateway, storage and the
//! client SDK build on these types so that validation, id formats and wire
//! encodings are defined exactly once and can be tested without I/O.
//!
//! # Layout
//! - [`address`]: `tel:` URIs in E.164, normalised; the only way to get an [`Address`].
//! - [`ids`]: recipient hashes ([`Rid`]), device and server ids, the keyed hash key.
//! - [`envelope`]: [`Envelope::parse`] turns upload bytes into a checked MLS envelope.
//! - [`credential`]: device bearer credentials and their salted hashes.
//! - [`provisioning`]: operator-signed registration tokens (Ed25519).
//! - [`interconnect`]: routing by longest prefix, the residency allow-list, and the
//!   outbox entry state machine (retry, delete, dead-letter).
//! - [`push`]: when to wake a device (coalescing window, urgent, delayed), retry backoff,
//!   the opaque pointer token.
//! - [`recipients`]: a request's addresses parsed, hashed and de-duplicated, once for
//!   every endpoint.
//! - [`wire`]: the protobuf client API (`proto/relay/v1/relay.proto`).
//! - [`error_code`]: the machine-readable error codes of the API.
//! - [`gcra`]: token buckets in fixed memory for limits keyed by what an attacker can mint.
//! - [`h2scan`]: counts the HTTP/2 control frames a client sends (flood protection).
//!
//! # What it does not do
//! It never decrypts anything: it holds no MLS group state and no key that could open
//! an envelope. It reads only the MLS header fields RFC 9420 leaves in the clear.

#![forbid(unsafe_code)]

pub mod address;
pub mod atrest;
pub mod auditlog;
pub mod credential;
pub mod envelope;
pub mod error_code;
pub mod gcra;
pub mod h2scan;
pub mod hex;
pub mod ids;
pub mod interconnect;
pub mod limits;
pub mod provisioning;
pub mod push;
pub mod recipients;
pub mod wire;

pub use address::{Address, AddressError};
pub use envelope::{Ciphertext, Envelope, EnvelopeError, GroupHeader};
pub use error_code::ErrorCode;
pub use ids::{ClientMessageId, DeviceId, Rid, RidKey, RidKeys, ServerId};
pub use limits::Limits;
