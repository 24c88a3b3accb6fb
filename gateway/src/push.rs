//! Waking offline devices through the push proxy (DESIGN.md section 6).
//!
//! The API never waits for a push: storage reports an envelope stored for a device nobody
//! is watching as a [`storage::watch::Unwatched`] event (`try_send`: a full queue drops the
//! event and counts it). One notifier task owns the [`Scheduler`] (coalescing window, urgent
//! bypass, delayed push after a receiver disconnects) and learns which devices are live from
//! the [`Presence`] events it receives; it looks up each device's push handle, mints a random
//! pointer and posts batches to the push proxy's `/v1/notify` over mutual TLS. Where several
//! nodes share a database, a device with a live receiver on another node is live too
//! ([`storage::Storage::live_elsewhere`]). Handles the
//! proxy reports dead are dropped with compare-and-delete, so a handle re-registered
//! meanwhile survives. Every notify is a task owned by the gateway's shutdown drain.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use relay_core::push::{Decision, Pointer, PushPolicy, Scheduler, Wake};
use relay_net::https::{ClientOptions, HttpsClient};
use serde::{Deserialize, Serialize};
use storage::Storage;
use storage::prelude::*;
use storage::watch::{DeviceKey, Events, Presence, Unwatched};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::PushConfig;

type Key = DeviceKey;

#[derive(Debug, Serialize)]
struct Notification<'a> {
    handle: &'a str,
    pointer: String,
    urgent: bool,
}

#[derive(Debug, Deserialize)]
struct NotifyResponse {
    #[serde(default)]
    dead: Vec<String>,
    #[serde(default)]
    shed: Vec<String>,
}

/// The notifier: owns the scheduling state and the mutual-TLS client.
pub struct Notifier {
    url: String,
    http: HttpsClient,
    policy: PushPolicy,
    batch: usize,
    store: Storage,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Notifier {
    /// `None` when no push proxy is configured.
    pub fn new(cfg: &PushConfig, store: Storage) -> anyhow::Result<Option<Self>> {
        let (Some(url), Some(ca), Some(cert), Some(key)) = (&cfg.proxy_url, &cfg.ca, &cfg.client_cert, &cfg.client_key)
        else {
            return Ok(None);
        };
        let roots = relay_net::pem::load_certs(ca)?;
        let identity = relay_net::pem::load_pair(cert, key)?;
        let tls = relay_net::tls::client_config(&roots, Some(identity))?;
        Ok(Some(Self {
            url: format!("{}/v1/notify", url.trim_end_matches('/')),
            http: HttpsClient::new(tls, ClientOptions::default()),
            policy: PushPolicy {
                window_ms: cfg.window_secs * 1000,
                disconnect_delay_ms: cfg.disconnect_delay_secs * 1000,
            },
            batch: cfg.batch,
            store,
        }))
    }

    /// Runs until `shutdown`; each batch posted to the proxy is a task owned by `tracker`.
    pub async fn run(self, mut events: Events, shutdown: CancellationToken, tracker: TaskTracker) {
        let this = Arc::new(self);
        for result in ["ok", "error"] {
            metrics::counter!("relay_push_notifies_total", "result" => result).increment(0);
        }
        metrics::counter!("relay_push_dead_handles_total").increment(0);
        let epoch = Instant::now();
        let now = move || epoch.elapsed().as_millis() as u64;
        let mut sched: Scheduler<Key> = Scheduler::new(this.policy);
        // Devices with a watcher now, from the presence events.
        let mut live: HashSet<Key> = HashSet::new();
        // Batches in flight to the proxy: bounded, so a slow proxy backs events up into
        // the (bounded) queue instead of into memory.
        let in_flight = Arc::new(tokio::sync::Semaphore::new(4));
        let mut last_prune = now();
        loop {
            let mut due: Vec<(Key, bool)> = Vec::new();
            let next = sched.next_due().map(|at| epoch + Duration::from_millis(at));
            tokio::select! {
                // Presence first, so a device is known live before its envelopes are seen.
                biased;
                () = shutdown.cancelled() => return,
                p = events.presence.recv() => {
                    let Some(p) = p else { return };
                    apply_presence(p, &mut sched, &mut live, now());
                    while let Ok(p) = events.presence.try_recv() {
                        apply_presence(p, &mut sched, &mut live, now());
                    }
                }
                ev = events.unwatched.recv() => {
                    let Some(ev) = ev else { return };
                    // Take whatever else is queued, up to one batch.
                    let mut batch = vec![ev];
                    while batch.len() < this.batch && let Ok(e) = events.unwatched.try_recv() {
                        batch.push(e);
                    }
                    for Unwatched { key, urgent } in batch {
                        // Live here, or (several nodes on one database) on another node.
                        let live_now = live.contains(&key) || this.store.live_elsewhere(key).await;
                        if let Decision::Push(w) = sched.on_stored(key, live_now, urgent, now()) {
                            due.push((key, w == Wake::Urgent));
                        } else {
                            metrics::counter!("relay_push_coalesced_total").increment(1);
                        }
                    }
                }
                () = async { tokio::time::sleep_until(next.unwrap_or(epoch).into()).await }, if next.is_some() => {
                    for key in sched.due(now()) {
                        // A delayed push only if the device is still away and has something waiting.
                        if !live.contains(&key) && !this.store.live_elsewhere(key).await && this.pending(key).await {
                            due.push((key, false));
                        }
                    }
                }
            }
            if now().saturating_sub(last_prune) > 60_000 {
                sched.prune(now());
                last_prune = now();
            }
            for chunk in due.chunks(this.batch) {
                let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
                    return;
                };
                let (this, chunk) = (Arc::clone(&this), chunk.to_vec());
                tracker.spawn(async move {
                    let _permit = permit;
                    this.notify(chunk).await;
                });
            }
        }
    }

    async fn pending(&self, (rid, dev): Key) -> bool {
        self.store
            .receive(rid, dev, 0, 1, relay_net::clock::now_ms())
            .await
            .is_ok_and(|p| !p.envelopes.is_empty())
    }

    async fn notify(&self, keys: Vec<(Key, bool)>) {
        if self.store.is_switched_off(storage::switch::PUSH) {
            // Envelopes are stored as always; only the wake-up is not sent.
            metrics::counter!("relay_push_skipped_total", "reason" => "switched_off").increment(keys.len() as u64);
            return;
        }
        // One notification per handle (a device due twice in one batch is pushed once,
        // urgently if either was urgent), in the order the devices came.
        let mut batch: Vec<(String, Key, bool)> = Vec::with_capacity(keys.len());
        for (key, urgent) in keys {
            match self.store.push_handle(key.0, key.1).await {
                Ok(Some(h)) => match batch.iter_mut().find(|(other, _, _)| *other == h) {
                    Some(existing) => existing.2 |= urgent,
                    None => batch.push((h, key, urgent)),
                },
                Ok(None) => metrics::counter!("relay_push_skipped_total", "reason" => "no_handle").increment(1),
                Err(e) => tracing::warn!(cause = %e, "reading a push handle"),
            }
        }
        if batch.is_empty() {
            return;
        }
        let handles: HashMap<&str, Key> = batch.iter().map(|(h, k, _)| (h.as_str(), *k)).collect();
        let notifications: Vec<Notification<'_>> = batch
            .iter()
            .map(|(handle, _, urgent)| {
                let mut p = [0u8; relay_core::push::POINTER_LEN];
                rand::fill(&mut p);
                Notification {
                    handle,
                    pointer: Pointer::from_random(p).encode(),
                    urgent: *urgent,
                }
            })
            .collect();
        let body = serde_json::json!({ "notifications": notifications }).to_string();
        let started = Instant::now();
        let result = self.post(body).await;
        metrics::histogram!("relay_push_notify_seconds").record(started.elapsed().as_secs_f64());
        let resp = match result {
            Ok(r) => r,
            Err(e) => {
                metrics::counter!("relay_push_notifies_total", "result" => "error").increment(1);
                tracing::warn!(cause = %e, "push proxy notify failed");
                return;
            }
        };
        metrics::counter!("relay_push_notifies_total", "result" => "ok").increment(1);
        metrics::counter!("relay_push_shed_total").increment(resp.shed.len() as u64);
        if !resp.shed.is_empty() {
            static LOGGED: relay_net::throttle::Throttle = relay_net::throttle::Throttle::per_minute();
            if LOGGED.due("shed") {
                tracing::warn!(
                    shed = resp.shed.len(),
                    "the push proxy's queue is full: it shed pushes, those devices are woken at their next push (more counted in relay_push_shed_total, not logged, for a minute)"
                );
            }
        }
        for dead in resp.dead {
            let Some(&(rid, dev)) = handles.get(dead.as_str()) else {
                continue;
            };
            match self.store.drop_push_handle_if(rid, dev, &dead).await {
                Ok(true) => {
                    metrics::counter!("relay_push_dead_handles_total").increment(1);
                    static LOGGED: relay_net::throttle::Throttle = relay_net::throttle::Throttle::per_minute();
                    if LOGGED.due("dead") {
                        tracing::info!(
                            "dropped a push handle the push proxy reported dead: that device is woken again once it stores a new handle (more counted in relay_push_dead_handles_total, not logged, for a minute)"
                        );
                    }
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(cause = %e, "dropping a dead push handle"),
            }
        }
    }

    async fn post(&self, body: String) -> anyhow::Result<NotifyResponse> {
        let reply = self
            .http
            .post(
                &self.url,
                "application/json",
                Bytes::from(body),
                Duration::from_secs(30),
                1 << 20,
            )
            .await?;
        anyhow::ensure!(
            (200..300).contains(&reply.status),
            "push proxy answered {}",
            reply.status
        );
        Ok(serde_json::from_slice(&reply.body)?)
    }
}

fn apply_presence(p: Presence, sched: &mut Scheduler<Key>, live: &mut HashSet<Key>, now_ms: u64) {
    match p {
        Presence::Connected(key) => {
            live.insert(key);
            sched.on_connect(key);
        }
        Presence::Disconnected(key) => {
            live.remove(&key);
            sched.on_disconnect(key, true, now_ms);
        }
    }
}
