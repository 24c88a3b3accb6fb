//! Outbound: the dispatcher draining the durable outbox, and synchronous remote KeyPackage
//! claims.
//!
//! An entry leaves the outbox only on the peer's 2xx (or as an audited dead letter after
//! the TTL); every other answer schedules a retry from relay-core's `EntryState`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use relay_core::Address;
use relay_core::interconnect::{Attempt, Next};
use relay_core::push::{Backoff, parse_retry_after};
use relay_net::clock::now_ms;
use relay_net::https::Reply;
use storage::OutboxEntry;
use storage::prelude::*;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Interconnect;
use crate::error::ClaimError;
use crate::peers::Peer;
use crate::routing::Plan;
use crate::wire::{KeyMaterialRequest, KeyMaterialResponse, NotifyBody, RemoteKeyPackage};

/// Largest answer read from a peer.
const MAX_REPLY: usize = 4 << 20;

/// Outbox entries being delivered, so one entry is never in flight twice.
type InFlight = Arc<Mutex<HashSet<(String, u64)>>>;

impl Interconnect {
    /// Delivers outbox entries until `shutdown`: per peer at most `concurrency_per_peer` in
    /// flight, each delivery a task owned by `tracker` (so the shutdown drain waits for it).
    pub async fn run_outbound(self: Arc<Self>, shutdown: CancellationToken, tracker: TaskTracker) {
        let in_flight: InFlight = Arc::default();
        let backoff = Backoff {
            base: Duration::from_millis(self.cfg.backoff_base_ms),
            cap: Duration::from_secs(self.cfg.backoff_cap_secs),
            max_attempts: u32::MAX,
        };
        let mut gauges = Instant::now();
        loop {
            let table = self.table();
            for peer in &table.peers {
                self.start_due(peer, &in_flight, backoff, &tracker).await;
            }
            if gauges.elapsed() >= Duration::from_secs(1) {
                gauges = Instant::now();
                self.publish_depth(&table.peers).await;
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.store.outbox_written() => {}
                () = self.wake.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    /// Starts deliveries of `peer`'s due entries, up to its free concurrency.
    async fn start_due(
        self: &Arc<Self>,
        peer: &Arc<Peer>,
        in_flight: &InFlight,
        backoff: Backoff,
        tracker: &TaskTracker,
    ) {
        let name = peer.cfg.name.clone();
        // A peer switched off by the operator: its entries stay queued until it is back on.
        if self.store.is_switched_off(&storage::switch::peer(&name)) {
            return;
        }
        let busy = lock(in_flight).iter().filter(|(p, _)| *p == name).count();
        let free = self.cfg.concurrency_per_peer.saturating_sub(busy);
        if free == 0 {
            return;
        }
        let due = match self.store.outbox_lease(&name, now_ms(), free).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(cause = %e, "reading the outbox");
                return;
            }
        };
        for entry in due {
            let seq = entry.seq;
            if !lock(in_flight).insert((name.clone(), seq)) {
                continue;
            }
            let (this, peer, in_flight) = (Arc::clone(self), Arc::clone(peer), Arc::clone(in_flight));
            tracker.spawn(async move {
                this.deliver(&peer, entry, backoff).await;
                lock(&in_flight).remove(&(peer.cfg.name.clone(), seq));
                this.wake.notify_one();
            });
        }
    }

    async fn publish_depth(&self, peers: &[Arc<Peer>]) {
        for peer in peers {
            if let Ok((depth, oldest)) = self.store.outbox_depth(&peer.cfg.name).await {
                let name = peer.cfg.name.clone();
                metrics::gauge!("interconnect_outbox_depth", "peer" => name.clone()).set(depth as f64);
                let age = oldest.map_or(0, |o| now_ms().saturating_sub(o)) as f64 / 1000.0;
                metrics::gauge!("interconnect_outbox_oldest_seconds", "peer" => name).set(age);
            }
        }
    }

    async fn deliver(&self, peer: &Peer, entry: OutboxEntry, backoff: Backoff) {
        let name = peer.cfg.name.as_str();
        let Some(part) = self.sealer().open(&entry.record) else {
            let _ = self
                .store
                .outbox_dead_letter(name, entry.seq, "outbox record does not open".into(), now_ms())
                .await;
            return;
        };
        let body = serde_json::to_vec(&NotifyBody {
            recipients: part.recipients.clone(),
            message: B64.encode(&part.message),
            urgent: part.urgent,
        })
        .unwrap_or_default();
        let url = format!(
            "{}/mimi/v1/notify/{}",
            peer.cfg.endpoint.trim_end_matches('/'),
            relay_core::hex::encode(&entry.envelope_id.0)
        );
        let started = Instant::now();
        let mut peer_code = None;
        let attempt = match self.post(peer, &url, body).await {
            Ok(Reply { status: 200..=299, .. }) => Attempt::Delivered,
            Ok(Reply {
                status: status @ (429 | 500..=599),
                retry_after,
                ..
            }) => {
                tracing::debug!(peer = name, status, "interconnect delivery deferred");
                Attempt::Transient {
                    retry_after: retry_after.as_deref().and_then(parse_retry_after),
                }
            }
            Ok(Reply { status, body, .. }) => {
                peer_code = crate::report::peer_code(&body);
                Attempt::Permanent { status }
            }
            Err(e) => {
                tracing::debug!(peer = name, cause = %e, "interconnect delivery failed");
                Attempt::Transient { retry_after: None }
            }
        };
        metrics::histogram!("interconnect_delivery_seconds", "peer" => name.to_owned())
            .record(started.elapsed().as_secs_f64());
        let mut state = entry.state;
        let next = state.after(
            &attempt,
            now_ms(),
            self.cfg.outbox_ttl_secs * 1000,
            backoff,
            rand::random(),
        );
        let result = match &next {
            Next::Delete => {
                metrics::counter!("interconnect_deliveries_total", "peer" => name.to_owned(), "result" => "delivered")
                    .increment(1);
                self.store.outbox_delete(name, entry.seq).await
            }
            Next::RetryAt(_) => {
                metrics::counter!("interconnect_retries_total", "peer" => name.to_owned()).increment(1);
                self.store.outbox_retry(name, entry.seq, state).await
            }
            Next::DeadLetter(reason) => {
                metrics::counter!("interconnect_dead_letters_total", "peer" => name.to_owned()).increment(1);
                static LOGGED: relay_net::throttle::Throttle = relay_net::throttle::Throttle::per_minute();
                if LOGGED.due(name) {
                    tracing::warn!(
                        peer = name,
                        reason = reason.as_str(),
                        "an envelope for a peer carrier was dead-lettered; its sender gets a delivery report (more for this peer counted in interconnect_dead_letters_total, not logged, for a minute)"
                    );
                }
                let why = crate::report::reason(&attempt, peer_code.as_deref());
                let mut detail = format!(
                    "peer={name} envelope={} {reason}",
                    relay_core::hex::encode(&entry.envelope_id.0)
                );
                // The sender hears of it first: a crash before the dead letter below
                // retries both, and the report's fixed id makes the second one a duplicate.
                if let Some(origin) = &part.origin {
                    match self.report(&peer.cfg.domain, &entry, origin, why).await {
                        Ok(()) => detail.push_str(&format!(" reported={}", why.code)),
                        Err(e) => {
                            tracing::warn!(peer = name, cause = %e, "queueing a delivery report to the sender");
                            detail.push_str(" report_failed");
                        }
                    }
                }
                self.store.outbox_dead_letter(name, entry.seq, detail, now_ms()).await
            }
        };
        if let Err(e) = result {
            tracing::warn!(cause = %e, "updating the outbox");
        }
    }

    /// Claims KeyPackages of every remote recipient in `plan` for `requester`, peer by peer
    /// (synchronous, over mutual TLS).
    pub async fn claim_remote(&self, plan: &Plan, requester: &Address) -> Result<Vec<RemoteKeyPackage>, ClaimError> {
        let mut out = Vec::new();
        for part in &plan.remote {
            out.extend(self.claim_at(&part.peer, requester, &part.addresses).await?);
        }
        Ok(out)
    }

    async fn claim_at(
        &self,
        peer: &str,
        requester: &Address,
        targets: &[String],
    ) -> Result<Vec<RemoteKeyPackage>, ClaimError> {
        let table = self.table();
        let p = table
            .peer(peer)
            .ok_or_else(|| ClaimError::UnknownPeer(peer.to_owned()))?;
        let body = serde_json::to_vec(&KeyMaterialRequest {
            requester: requester.as_str().to_owned(),
            targets: targets.to_vec(),
        })
        .map_err(|source| ClaimError::Body {
            peer: peer.to_owned(),
            source,
        })?;
        let url = format!("{}/mimi/v1/keyMaterial", p.cfg.endpoint.trim_end_matches('/'));
        let reply = self.post(p, &url, body).await.map_err(|source| ClaimError::Exchange {
            peer: peer.to_owned(),
            source,
        })?;
        if reply.status != 200 {
            return Err(ClaimError::Status {
                peer: peer.to_owned(),
                status: reply.status,
            });
        }
        let resp: KeyMaterialResponse = serde_json::from_slice(&reply.body).map_err(|source| ClaimError::Body {
            peer: peer.to_owned(),
            source,
        })?;
        Ok(resp.key_packages)
    }

    async fn post(&self, p: &Peer, url: &str, body: Vec<u8>) -> Result<Reply, relay_net::https::ExchangeError> {
        let timeout = Duration::from_secs(self.cfg.request_timeout_secs);
        p.http
            .post(url, "application/json", Bytes::from(body), timeout, MAX_REPLY)
            .await
    }
}

fn lock(in_flight: &InFlight) -> std::sync::MutexGuard<'_, HashSet<(String, u64)>> {
    // Plain inserts and removes: the set stays consistent across a panic.
    in_flight.lock().unwrap_or_else(|e| e.into_inner())
}
