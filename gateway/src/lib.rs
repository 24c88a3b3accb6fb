//! The rcs-relay gateway.
//!
//! Serves the client API (DESIGN.md section 5) over HTTP/3, HTTP/2 and HTTP/1.1 with TLS 1.3,
//! on top of [`storage`]. A device uploads an MLS message for recipients; the gateway
//! checks it is one well-formed MLSMessage, hashes each recipient address with K_rid,
//! stores the bytes once and a mailbox entry per recipient device, and answers 201
//! only when that is durable. Recipients page or long-poll their mailbox and
//! acknowledge what they have; devices nobody watches are woken through the push proxy;
//! recipients served by peer carriers go through the [`interconnect`].
//!
//! # Layout
//! - [`api`]: the one router every transport serves (one module per resource).
//! - [`error`]: every domain error becomes an HTTP answer here, in one place.
//! - [`server`]: listeners, TLS, limits, timeouts, start-up and the bounded shutdown drain.
//! - [`h3`]: the HTTP/3 adapter (quinn + h3) in front of the same router.
//! - [`admin`]: the admin listener (`/metrics`, `/healthz`, reloads, epoch reset).
//! - [`background`]: the sweeper and the SIGHUP reload.
//! - [`push`]: the push notifier (scheduler, mutual-TLS notify batches to the push proxy).
//! - [`mls`]: KeyPackage validation (openmls) and per-group ordering rules.
//! - [`config`]: the TOML configuration and its validation.
//! - [`keys`]: provider keys (K_rid, provisioning verification key).
//! - [`tls`]: the certificate store, TLS 1.3 configurations and the development certificate.
//! - [`telemetry`]: logging and Prometheus metrics.
//!
//! Long-poll wake-ups live in [`storage::watch`]: storage wakes receivers after every
//! durable write, whoever made it.
//!
//! # What it does not do
//! It never decrypts, never logs or stores an address, credential or token in the
//! clear, and never answers 2xx to a write that is not yet durable.

#![forbid(unsafe_code)]

pub mod admin;
pub mod admin_client;
pub mod api;
pub mod audit;
pub mod audit_keys;
pub mod background;
pub mod config;
pub mod controls;
pub mod custody;
pub mod dual_control;
pub mod error;
pub mod evidence;
pub mod h3;
mod keyfile;
pub mod keys;
pub mod keys_cli;
pub mod mls;
mod nodes;
pub mod operators;
pub mod provisioning_keys;
pub mod push;
pub mod rid_rotation;
pub mod server;
pub mod telemetry;
pub mod tls;

pub use config::{Config, Overrides, Settings};
pub use server::{Running, start};

/// SIGTERM and SIGINT, as one future (the only place signals are handled).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
