//! Gateway integration tests: real servers on loopback ports picked at run time.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

/// Instantiates each `async fn name(p: Protocol)` as `name::h2` and `name::h3`.
macro_rules! both_transports {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn h2() {
                    super::$name(relay_client::Protocol::Http2).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn h3() {
                    super::$name(relay_client::Protocol::Http3).await;
                }
            }
        )*
    };
}

mod abuse;
mod acme;
mod audit;
mod bad_input;
mod controls;
mod deploy;
mod drill;
mod early_errors;
mod evidence;
mod failover;
mod floods;
mod hsm;
mod http3;
mod interconnect_faults;
mod interop;
mod limits;
mod mls;
mod nodes;
mod operators;
mod power_loss;
mod process;
mod readme;
mod rid_rotation;
mod roundtrip;
mod tidy;

use relay_client::ClientError;

/// Asserts a client call failed with `status` and machine code `code`.
#[track_caller]
pub(crate) fn assert_api_error<T: std::fmt::Debug>(r: Result<T, ClientError>, status: u16, code: &str) {
    match r {
        Err(ClientError::Api { status: s, code: c, .. }) => {
            assert_eq!((s, c.as_str()), (status, code));
        }
        other => panic!("expected {status} {code}, got {other:?}"),
    }
}
