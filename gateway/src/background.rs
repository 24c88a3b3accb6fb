//! Background tasks of the gateway: the sweeper (TTL expiry, rate-limit state, storage
//! gauges) and the SIGHUP reload. Both are owned by the shutdown drain.

use std::sync::Arc;
use std::time::Duration;

use storage::prelude::*;
use tokio_util::sync::CancellationToken;

use crate::api::AppState;

/// SIGHUP reloads the TLS certificate of every listener.
pub(crate) async fn reload_on_sighup(certs: Arc<crate::tls::CertStore>, state: AppState, shutdown: CancellationToken) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        return;
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = hup.recv() => {
                if let Err(e) = certs.reload() {
                    tracing::warn!(cause = %format!("{e:#}"), "TLS reload failed; keeping the old certificate");
                }
                if let Some(ic) = state.interconnect()
                    && let Err(e) = ic.reload().await
                {
                    tracing::warn!(cause = %e, "interconnect reload failed; keeping the old peer table");
                }
            }
        }
    }
}

/// Expires envelopes, forgets idle rate-limit state, publishes storage gauges.
pub(crate) async fn sweeper(state: AppState, every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match state.store().sweep(relay_net::clock::now_ms()).await {
            Ok(s) if s.mailbox_entries + s.blobs > 0 => {
                tracing::debug!(
                    entries = s.mailbox_entries,
                    blobs = s.blobs,
                    "expired envelopes removed"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(cause = %e, "sweep failed"),
        }
        state.retain_recent_limits();
        metrics::gauge!("relay_storage_disk_bytes").set(state.store().size_on_disk() as f64);
        metrics::gauge!("relay_live_receivers").set(state.store().watchers().len() as f64);
        crate::custody::set_key_ages(state.key_provider().key_dir(), relay_net::clock::now_ms());
    }
}
