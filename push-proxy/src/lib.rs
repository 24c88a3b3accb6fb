//! The push proxy: wakes devices without learning whose they are.
//!
//! A device registers its platform token here and gets back a sealed **push handle**
//! ([`handle`]); it stores the handle at its gateway. The gateway later asks the proxy to
//! notify `{handle, pointer}`; the proxy opens the handle and sends a push carrying only
//! the pointer — to APNs, FCM HTTP v1 or a Web Push endpoint ([`webpush`], RFC 8291 +
//! RFC 8292). Signing for the providers' tokens is in [`jwt`].

#![forbid(unsafe_code)]

pub mod config;
pub mod error;
pub mod handle;
pub mod jwt;
pub mod keys;
pub mod providers;
pub mod sender;
pub mod server;
pub mod service;
pub mod tls;
pub mod webpush;

pub use handle::{HandleError, HandleKeys, PushTarget};
