//! Carrier interconnect: peering with other carriers over mutual TLS, modelled on the IETF
//! MIMI protocol (draft-ietf-mimi-protocol-06).
//!
//! - [`config`]: `[interconnect]` and the peers file (re-read on reload).
//! - [`peers`]: the peer table built from them (swapped whole on reload).
//! - [`tls`]: a client certificate maps to exactly one peer (CA + CRLs with
//!   `enforce_revocation_expiration`, domain name, optional SPKI pin), TLS 1.3 only.
//! - [`routing`]: the gateway's seam — [`Interconnect::route`] (local vs. per peer,
//!   residency refusal) and [`Interconnect::hand_over`] (sealed outbox items).
//! - [`record`]: outbox records sealed under the gateway's outbox key.
//! - [`inbound`]: the endpoints peers call (directory, `notify`, key material).
//! - [`outbound`]: the dispatcher draining the durable outbox, and remote KeyPackage claims.
//! - [`listener`]: the accept loop (connection cap) that drops a peer's connections when
//!   its certificate stops verifying.
//! - [`wire`]: the JSON bodies; [`error`]: setup and claim errors.
//!
//! The interconnect never calls back into the gateway: an inbound envelope is stored
//! through [`storage::Storage`], which wakes receivers itself, and the dispatcher learns of
//! new outbox entries from storage too.
//!
//! Routing, residency and the outbox entry state machine are sans-IO in
//! [`relay_core::interconnect`].
//!
//! # Deviations from the MIMI draft
//! Bodies are JSON (addresses, base64 MLS messages) rather than TLS-presentation-language
//! structures; `notify` carries an envelope for named recipients rather than a hub's fan-out
//! of a room's handshake and application messages (this relay has no room state: it is a
//! Delivery Service for MLS messages whose ordering the hub carrier enforces); the envelope id
//! is the sending gateway's 16-byte server id in the path; key-material requests name the
//! requester's address instead of a MIMI user URI and are rate-limited per (peer, requester,
//! target) as our consent policy.

#![forbid(unsafe_code)]

pub mod config;
pub mod error;
pub mod inbound;
pub mod listener;
pub mod outbound;
pub mod peers;
pub mod record;
pub mod report;
pub mod routing;
pub mod tls;
pub mod wire;

use std::sync::{Arc, RwLock};

use relay_core::{Limits, RidKey};
use storage::Storage;
use storage::prelude::*;
use tokio::sync::{Notify, watch};

pub use crate::config::InterconnectConfig;
pub use crate::error::{ClaimError, SetupError};
pub use crate::inbound::PeerName;
pub use crate::peers::{Peer, Table};
pub use crate::routing::{Plan, ResidencyRefusal};
pub use crate::wire::RemoteKeyPackage;

use crate::record::Sealer;

/// The interconnect of one gateway.
pub struct Interconnect {
    cfg: InterconnectConfig,
    table: RwLock<Arc<Table>>,
    /// Our client certificate, swapped on reload (see [`tls::OwnIdentity`]).
    identity: Arc<tls::OwnIdentity>,
    /// Bumped at every reload: open connections re-verify their peer.
    generation: watch::Sender<u64>,
    store: Storage,
    rid_key: RidKey,
    /// K_rid with, during a rotation, its previous version (for the lazy re-key).
    rid_keys: relay_core::RidKeys,
    /// Opens the KeyPackages a peer claims (sealed at rest).
    at_rest: relay_core::atrest::AtRest,
    /// The outbox key ring, swapped when a rotation is reloaded.
    sealer: RwLock<Arc<Sealer>>,
    /// Wakes the dispatcher (a delivery finished, the table changed).
    wake: Notify,
    limits: Limits,
}

impl std::fmt::Debug for Interconnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interconnect")
            .field("domain", &self.cfg.domain)
            .finish_non_exhaustive()
    }
}

impl Interconnect {
    /// Loads the peer table and the outbox key.
    pub fn new(
        cfg: InterconnectConfig,
        store: Storage,
        rid_keys: relay_core::RidKeys,
        keys: (&relay_keys::Provider, &std::path::Path),
        limits: Limits,
    ) -> Result<Arc<Self>, SetupError> {
        let (chain, key) = relay_net::pem::load_pair(&cfg.cert, &cfg.key)?;
        let identity = Arc::new(tls::OwnIdentity::new(chain, key)?);
        let table = Table::build(&cfg, &identity, None)?;
        Ok(Arc::new(Self {
            identity,
            sealer: RwLock::new(Arc::new(Sealer::open_or_create(keys.0, keys.1)?)),
            table: RwLock::new(Arc::new(table)),
            generation: watch::channel(0).0,
            store,
            at_rest: relay_core::atrest::AtRest::new(&rid_keys.current),
            rid_key: rid_keys.current.clone(),
            rid_keys,
            wake: Notify::new(),
            limits,
            cfg,
        }))
    }

    /// The outbox key ring in use.
    pub fn sealer(&self) -> Arc<Sealer> {
        Arc::clone(&self.sealer.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Uses a new outbox key ring (after a rotation or a retirement was reloaded).
    pub fn set_sealer(&self, sealer: Sealer) {
        *self.sealer.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(sealer);
    }

    /// How many queued outbox entries (every peer in the table) each key version sealed.
    pub async fn outbox_key_versions(&self) -> Result<std::collections::BTreeMap<u8, u64>, storage::StoreError> {
        use storage::prelude::*;
        let sealer = self.sealer();
        let mut versions = std::collections::BTreeMap::new();
        for peer in &self.table().peers {
            for entry in self.store.outbox_due(&peer.cfg.name, u64::MAX, usize::MAX).await? {
                *versions.entry(sealer.version_of(&entry.record)).or_default() += 1;
            }
        }
        Ok(versions)
    }

    pub fn table(&self) -> Arc<Table> {
        Arc::clone(&self.table.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn config(&self) -> &InterconnectConfig {
        &self.cfg
    }

    /// Re-reads the peers file and CRLs; open connections of peers that no longer verify are
    /// closed. Returns the number of peers. On error the old table stays.
    pub async fn reload(&self) -> Result<usize, SetupError> {
        let table = Table::build(&self.cfg, &self.identity, Some(&self.table()))?;
        let n = table.peers.len();
        // Entries queued for a peer that is no longer configured wait (they are delivered if
        // it comes back); say so rather than let them age silently.
        for old in &self.table().peers {
            let name = old.cfg.name.as_str();
            if table.peer(name).is_none()
                && let Ok((depth, _)) = self.store.outbox_depth(name).await
                && depth > 0
            {
                tracing::warn!(peer = name, depth, "peer removed with envelopes still in its outbox");
            }
        }
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
        self.generation.send_modify(|g| *g += 1);
        if let Err(e) = self
            .store
            .audit_append("interconnect.reload", format!("{n} peers"), relay_net::clock::now_ms())
            .await
        {
            tracing::warn!(cause = %e, "auditing an interconnect reload");
        }
        tracing::info!(peers = n, "interconnect peers reloaded");
        self.wake.notify_one();
        Ok(n)
    }
}
