//! Baselines for rcs-relay's benchmarks.
//!
//! On shared 2-core machines an absolute rate means little; a ratio against a bare server
//! measured in the same run, with the same TLS settings and the same load generator, means
//! a lot. `bare-h2` is that bare server for HTTP/2; `send-body` writes the protobuf request
//! body the load generator posts; `compare-h2.sh` runs both back to back.

#![forbid(unsafe_code)]
