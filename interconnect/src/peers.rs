//! The peer table: who our peers are, how to reach them, how to recognise them. Built from
//! the peers file and swapped whole on reload.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use relay_core::Rid;
use relay_core::interconnect::{PeerRoute, RoutingTable};
use relay_net::https::{ClientOptions, HttpsClient};
use relay_net::pem::load_pair;

use crate::config::{InterconnectConfig, PeerConfig, PeersFile};
use crate::error::SetupError;
use crate::tls::{self, OwnIdentity, PeerIdentity};

/// One configured peer.
pub struct Peer {
    pub cfg: PeerConfig,
    /// The peer's CA file as read: a reload with the same CA and endpoint keeps `http`
    /// (and its open connections).
    ca_pem: Vec<u8>,
    pub(crate) http: HttpsClient,
    pub(crate) limiter: DefaultDirectRateLimiter,
    pub(crate) claim_limiter: DefaultKeyedRateLimiter<(Rid, Rid)>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("name", &self.cfg.name)
            .finish_non_exhaustive()
    }
}

/// The peer table: replaced whole on reload.
#[derive(Debug)]
pub struct Table {
    pub routing: RoutingTable,
    pub peers: Vec<Arc<Peer>>,
    pub(crate) identities: Arc<Vec<PeerIdentity>>,
    pub(crate) server: Arc<rustls::ServerConfig>,
}

impl Table {
    /// Reads the peers file, the certificates and CRLs it names, and our own certificate,
    /// which `identity` presents from then on. A peer whose endpoint and CA are those of
    /// `previous` keeps its HTTP client, so established connections survive a reload
    /// (a certificate rotation among them).
    pub(crate) fn build(
        cfg: &InterconnectConfig,
        identity: &Arc<OwnIdentity>,
        previous: Option<&Self>,
    ) -> Result<Self, SetupError> {
        let file = PeersFile::load(&cfg.peers_file)?;
        let (chain, key) = load_pair(&cfg.cert, &cfg.key)?;
        let mut identities = Vec::new();
        let mut peers = Vec::new();
        let mut routes = Vec::new();
        for p in &file.peers {
            // Per-peer failure counters exist (at zero) from the moment a peer is configured.
            metrics::counter!("interconnect_retries_total", "peer" => p.name.clone()).increment(0);
            metrics::counter!("interconnect_dead_letters_total", "peer" => p.name.clone()).increment(0);
            identities.push(PeerIdentity::new(&p.domain, &p.ca, &p.crls, p.spki_sha256.as_deref())?);
            let ca_pem = std::fs::read(&p.ca).map_err(|source| relay_net::pem::PemError::Io {
                path: p.ca.clone(),
                source,
            })?;
            let kept = previous
                .and_then(|t| t.peer(&p.name))
                .filter(|old| old.cfg.endpoint == p.endpoint && old.cfg.domain == p.domain && old.ca_pem == ca_pem)
                .map(|old| old.http.clone());
            let http = match kept {
                Some(http) => http,
                None => HttpsClient::new(
                    tls::client_config(&ca_pem, Arc::clone(identity))?,
                    ClientOptions {
                        http2_only: true,
                        connect_timeout: Duration::from_secs(cfg.request_timeout_secs),
                        pool_idle_timeout: Some(Duration::from_secs(30)),
                    },
                ),
            };
            let nz = |v: u32| NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN);
            peers.push(Arc::new(Peer {
                ca_pem,
                http,
                limiter: RateLimiter::direct(Quota::per_second(nz(p.requests_per_second)).allow_burst(nz(p.burst))),
                claim_limiter: RateLimiter::keyed(
                    Quota::with_period(Duration::from_secs(p.claim_refill_secs.max(1)))
                        .expect("the period is at least a second")
                        .allow_burst(nz(p.claim_burst)),
                ),
                cfg: p.clone(),
            }));
            routes.push(PeerRoute {
                name: p.name.clone(),
                prefixes: p.prefixes.clone(),
                jurisdiction: p.jurisdiction.clone(),
            });
        }
        let identities = Arc::new(identities);
        let server = Arc::new(tls::server_config(
            chain.clone(),
            key.clone_key(),
            Arc::clone(&identities),
        )?);
        // Last: nothing above failed, so the new certificate is presented from now on.
        identity.replace(chain.clone(), key)?;
        relay_net::pem::export_expiry("relay_cert_expiry_seconds", "interconnect", &chain);
        let table = Self {
            routing: RoutingTable {
                local_prefixes: cfg.local_prefixes.clone(),
                peers: routes,
                allowed_jurisdictions: cfg.allowed_jurisdictions.clone(),
            },
            peers,
            identities,
            server,
        };
        for p in table.routing.disallowed_peers() {
            tracing::warn!(
                peer = p.name.as_str(),
                jurisdiction = p.jurisdiction.as_str(),
                "peer is outside the allowed jurisdictions: sends routed to it will be refused"
            );
        }
        Ok(table)
    }

    pub fn peer(&self, name: &str) -> Option<&Arc<Peer>> {
        self.peers.iter().find(|p| p.cfg.name == name)
    }

    /// The index of peer `name` in the routing table.
    pub(crate) fn position(&self, name: &str) -> Option<usize> {
        self.peers.iter().position(|p| p.cfg.name == name)
    }
}
