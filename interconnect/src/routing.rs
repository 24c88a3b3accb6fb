//! What the gateway asks of the interconnect on its hot path: "route these recipients"
//! ([`Interconnect::route`]) and "hand these to peers" ([`Interconnect::hand_over`]: sealed
//! outbox items the gateway writes in the send's own batch; the dispatcher is signalled by
//! storage once they are durable).

use std::collections::HashMap;

use bytes::Bytes;
use relay_core::Address;
use relay_core::interconnect::Route;
use storage::prelude::*;
use storage::{DeviceId, OutboxItem, Rid};

use crate::Interconnect;
use crate::record::{Origin, RemotePart};

/// A send refused by policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("recipient {index} is served by peer {peer} in {jurisdiction}, outside the allowed jurisdictions")]
pub struct ResidencyRefusal {
    pub index: usize,
    pub peer: String,
    pub jurisdiction: String,
}

/// Where a request's recipients go.
#[derive(Debug, Default)]
pub struct Plan {
    /// Indices of local recipients.
    pub local: Vec<usize>,
    /// The recipients each peer serves, in the order they were listed.
    pub remote: Vec<PeerPart>,
}

/// The recipients of one send served by one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPart {
    pub peer: String,
    pub addresses: Vec<String>,
    /// Each address's position in the send's recipient list.
    pub indexes: Vec<u16>,
}

impl Plan {
    /// Every recipient is ours.
    pub fn is_local_only(&self) -> bool {
        self.remote.is_empty()
    }
}

impl Interconnect {
    /// Splits recipients into local ones and remote ones per peer. If any route leaves the
    /// allowed jurisdictions the whole request is refused, and the refusal is audited
    /// (peer and jurisdiction, never the address).
    pub async fn route(&self, addresses: &[Address]) -> Result<Plan, ResidencyRefusal> {
        let plan = self.plan(addresses);
        if let Err(refusal) = &plan {
            metrics::counter!("interconnect_refusals_total", "peer" => refusal.peer.clone(), "reason" => "residency")
                .increment(1);
            let detail = format!("peer={} jurisdiction={}", refusal.peer, refusal.jurisdiction);
            if let Err(e) = self
                .store
                .audit_append("residency.refused", detail, relay_net::clock::now_ms())
                .await
            {
                tracing::warn!(cause = %e, "auditing a residency refusal");
            }
        }
        plan
    }

    fn plan(&self, addresses: &[Address]) -> Result<Plan, ResidencyRefusal> {
        let table = self.table();
        let mut plan = Plan::default();
        let mut by_peer: HashMap<usize, Vec<(u16, String)>> = HashMap::new();
        for (index, a) in addresses.iter().enumerate() {
            match table.routing.route(a) {
                Route::Local => plan.local.push(index),
                Route::Peer(p) => {
                    table.routing.allowed(p).map_err(|v| ResidencyRefusal {
                        index,
                        peer: v.peer,
                        jurisdiction: v.jurisdiction,
                    })?;
                    // `limits.max_recipients` is far below 65536.
                    let index = u16::try_from(index).unwrap_or(u16::MAX);
                    by_peer.entry(p).or_default().push((index, a.as_str().to_owned()));
                }
            }
        }
        let mut remote: Vec<_> = by_peer.into_iter().collect();
        remote.sort_by_key(|(p, _)| *p);
        plan.remote = remote
            .into_iter()
            .map(|(p, listed)| {
                let (indexes, addresses) = listed.into_iter().unzip();
                PeerPart {
                    peer: table.routing.peers[p].name.clone(),
                    addresses,
                    indexes,
                }
            })
            .collect();
        Ok(plan)
    }

    /// Sealed outbox items for a send's remote parts (no address is at rest in the clear),
    /// each naming the sending device, which gets a delivery report if the part is
    /// dead-lettered.
    pub fn hand_over(&self, plan: &Plan, message: &Bytes, urgent: bool, sender: (Rid, DeviceId)) -> Vec<OutboxItem> {
        let sealer = self.sealer();
        plan.remote
            .iter()
            .map(|part| OutboxItem {
                peer: part.peer.clone(),
                record: Bytes::from(sealer.seal(&RemotePart {
                    recipients: part.addresses.clone(),
                    message: message.clone(),
                    urgent,
                    origin: Some(Origin {
                        rid: sender.0,
                        device: sender.1,
                        indexes: part.indexes.clone(),
                    }),
                })),
            })
            .collect()
    }
}
