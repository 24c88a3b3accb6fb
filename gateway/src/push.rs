//! Waking offline devices through the push proxy (DESIGN.md section 6).
//!
//! The API never waits for a push: a send that finds no live receiver for a device posts a
//! [`Event::Stored`] with `try_send` (a full queue drops the event and counts it). One
//! notifier task owns the [`Scheduler`] (coalescing window, urgent bypass, delayed push after
//! a receiver disconnects), looks up each device's push handle, mints a random pointer and
//! posts batches to the push proxy's `/v1/notify` over mutual TLS. Handles the proxy reports
//! dead are dropped with compare-and-delete, so a handle re-registered meanwhile survives.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use relay_core::push::{Decision, Pointer, PushPolicy, Scheduler, Wake};
use relay_core::{DeviceId, Rid};
use serde::{Deserialize, Serialize};
use storage::{SledStore, Store as _};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::PushConfig;
use crate::live::Live;

pub type Key = (Rid, DeviceId);

/// What the notifier hears about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// An envelope was stored for a device that had no live receiver.
    Stored { key: Key, urgent: bool },
    /// A device's first live receiver arrived.
    Connected(Key),
    /// A device's last live receiver left.
    Disconnected(Key),
}

/// The sending side: cheap to clone, never blocks.
#[derive(Debug, Clone)]
pub struct PushEvents(mpsc::Sender<Event>);

impl PushEvents {
    pub fn channel(queue: usize) -> (Self, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel(queue.max(1));
        (Self(tx), rx)
    }

    pub fn send(&self, event: Event) {
        if self.0.try_send(event).is_err() {
            metrics::counter!("relay_push_events_dropped_total").increment(1);
        }
    }
}

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

type Https = HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The notifier: owns the scheduling state and the mutual-TLS client.
pub struct Notifier {
    url: String,
    http: Https,
    policy: PushPolicy,
    batch: usize,
    store: Arc<SledStore>,
    live: Arc<Live>,
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
    pub fn new(cfg: &PushConfig, store: Arc<SledStore>, live: Arc<Live>) -> anyhow::Result<Option<Self>> {
        let (Some(url), Some(ca), Some(cert), Some(key)) = (&cfg.proxy_url, &cfg.ca, &cfg.client_cert, &cfg.client_key)
        else {
            return Ok(None);
        };
        let mut roots = rustls::RootCertStore::empty();
        for c in crate::tls::load_certs(ca)? {
            roots.add(c)?;
        }
        let (chain, key) = crate::tls::load_pair(cert, key)?;
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(Duration::from_secs(5)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http2()
            .wrap_connector(tcp);
        Ok(Some(Self {
            url: format!("{}/v1/notify", url.trim_end_matches('/')),
            http: HyperClient::builder(TokioExecutor::new())
                .http2_only(true)
                .build(connector),
            policy: PushPolicy {
                window_ms: cfg.window_secs * 1000,
                disconnect_delay_ms: cfg.disconnect_delay_secs * 1000,
            },
            batch: cfg.batch,
            store,
            live,
        }))
    }

    /// Runs until `shutdown`.
    pub async fn run(self, mut rx: mpsc::Receiver<Event>, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let epoch = Instant::now();
        let now = move || epoch.elapsed().as_millis() as u64;
        let mut sched: Scheduler<Key> = Scheduler::new(this.policy);
        // Batches in flight to the proxy: bounded, so a slow proxy backs events up into
        // the (bounded) queue instead of into memory.
        let in_flight = Arc::new(tokio::sync::Semaphore::new(4));
        let mut last_prune = now();
        loop {
            let mut due: Vec<(Key, bool)> = Vec::new();
            let next = sched.next_due().map(|at| epoch + Duration::from_millis(at));
            tokio::select! {
                () = shutdown.cancelled() => return,
                ev = rx.recv() => {
                    let Some(ev) = ev else { return };
                    // Take whatever else is queued, up to one batch.
                    let mut events = vec![ev];
                    while events.len() < this.batch && let Ok(e) = rx.try_recv() {
                        events.push(e);
                    }
                    for ev in events {
                        match ev {
                            Event::Stored { key, urgent } => {
                                if let Decision::Push(w) = sched.on_stored(key, false, urgent, now()) {
                                    due.push((key, w == Wake::Urgent));
                                } else {
                                    metrics::counter!("relay_push_coalesced_total").increment(1);
                                }
                            }
                            Event::Connected(key) => sched.on_connect(key),
                            Event::Disconnected(key) => sched.on_disconnect(key, true, now()),
                        }
                    }
                }
                () = async { tokio::time::sleep_until(next.unwrap_or(epoch).into()).await }, if next.is_some() => {
                    for key in sched.due(now()) {
                        // A delayed push only if the device is still away and has something waiting.
                        if !this.live.is_live(&key) && this.pending(key).await {
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
                tokio::spawn(async move {
                    let _permit = permit;
                    this.notify(chunk).await;
                });
            }
        }
    }

    async fn pending(&self, (rid, dev): Key) -> bool {
        self.store
            .receive(rid, dev, 0, 1, crate::api::now_ms())
            .await
            .is_ok_and(|p| !p.envelopes.is_empty())
    }

    async fn notify(&self, keys: Vec<(Key, bool)>) {
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
        for dead in resp.dead {
            let Some(&(rid, dev)) = handles.get(dead.as_str()) else {
                continue;
            };
            match self.store.drop_push_handle_if(rid, dev, &dead).await {
                Ok(true) => metrics::counter!("relay_push_dead_handles_total").increment(1),
                Ok(false) => {}
                Err(e) => tracing::warn!(cause = %e, "dropping a dead push handle"),
            }
        }
    }

    async fn post(&self, body: String) -> anyhow::Result<NotifyResponse> {
        let req = http::Request::post(&self.url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let exchange = async {
            let resp = self.http.request(req).await?;
            let status = resp.status();
            let body = http_body_util::Limited::new(resp.into_body(), 1 << 20)
                .collect()
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .to_bytes();
            anyhow::ensure!(status.is_success(), "push proxy answered {status}");
            Ok(serde_json::from_slice(&body)?)
        };
        tokio::time::timeout(Duration::from_secs(30), exchange)
            .await
            .map_err(|_| anyhow::anyhow!("push proxy: timeout"))?
    }
}
