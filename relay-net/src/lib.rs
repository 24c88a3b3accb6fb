//! Shared I/O helpers of rcs-relay's service crates.
//!
//! `relay-core` is sans-IO; the service crates (gateway, interconnect, push proxy) and the
//! tools (loadtest, test-support, benches) all need the same few pieces of I/O glue. They
//! live here once:
//!
//! - [`clock`]: the wall clock (`now_ms`, `unix_secs`) — the only place the workspace reads it
//!   outside of timers.
//! - [`pem`]: certificate chains, private keys and CRLs from PEM files, with typed errors.
//! - [`tls`]: the one crypto provider (ring) and TLS 1.3-only client configurations.
//! - [`https`]: an HTTPS client (hyper + rustls) whose every exchange is bounded in time and
//!   response size.
//! - [`serve`]: an accept step that stops on shutdown, and a connection drained gracefully.
//! - [`throttle`]: at most one log line a minute per kind for refusals that come in floods.
//!
//! # What it does not do
//! No policy: it does not decide which certificates to trust, what to retry or what a
//! status means. Callers pass those in.

#![forbid(unsafe_code)]

pub mod acme;
pub mod certs;
pub mod clock;
pub mod drain;
pub mod h2guard;
pub mod https;
pub mod pem;
pub mod serve;
pub mod throttle;
pub mod tls;
