//! Carrier interconnect logic, sans-IO: where an address is served, whether policy lets a
//! send go there, and what to do with an outbox entry after a delivery attempt.

use std::time::Duration;

use crate::Address;
use crate::push::{Backoff, retry_delay};

/// Where an address is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Local,
    /// The index of a peer in the [`RoutingTable`].
    Peer(usize),
}

/// One peer as routing sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRoute {
    pub name: String,
    /// E.164 prefixes without `tel:`, e.g. `+44` or `+1555`.
    pub prefixes: Vec<String>,
    /// ISO 3166-1 alpha-2 code where the peer stores and processes traffic.
    pub jurisdiction: String,
}

/// Routing by longest matching prefix, with a jurisdiction allow-list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutingTable {
    /// Prefixes this gateway serves. Addresses matching no prefix at all are local too.
    pub local_prefixes: Vec<String>,
    pub peers: Vec<PeerRoute>,
    /// Jurisdictions traffic may go to; empty means no restriction.
    pub allowed_jurisdictions: Vec<String>,
}

/// Why a send may not go where its route points.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("routing to peer {peer} in {jurisdiction} would leave the allowed jurisdictions")]
pub struct ResidencyViolation {
    pub peer: String,
    pub jurisdiction: String,
}

impl RoutingTable {
    /// The longest prefix among local and peer prefixes wins; ties go to local.
    pub fn route(&self, address: &Address) -> Route {
        let number = address.as_str().strip_prefix("tel:").unwrap_or(address.as_str());
        let mut best: (usize, Route) = (0, Route::Local);
        for p in &self.local_prefixes {
            if number.starts_with(p.as_str()) && p.len() > best.0 {
                best = (p.len(), Route::Local);
            }
        }
        for (i, peer) in self.peers.iter().enumerate() {
            for p in &peer.prefixes {
                if number.starts_with(p.as_str()) && p.len() > best.0 {
                    best = (p.len(), Route::Peer(i));
                }
            }
        }
        best.1
    }

    /// Whether the allow-list permits traffic to `peer`.
    pub fn allowed(&self, peer: usize) -> Result<(), ResidencyViolation> {
        let p = &self.peers[peer];
        if self.allowed_jurisdictions.is_empty() || self.allowed_jurisdictions.iter().any(|j| j == &p.jurisdiction) {
            Ok(())
        } else {
            Err(ResidencyViolation {
                peer: p.name.clone(),
                jurisdiction: p.jurisdiction.clone(),
            })
        }
    }

    /// Peers outside the allow-list (warned about at start).
    pub fn disallowed_peers(&self) -> Vec<&PeerRoute> {
        (0..self.peers.len())
            .filter(|&i| self.allowed(i).is_err())
            .map(|i| &self.peers[i])
            .collect()
    }
}

/// The result of one delivery attempt of an outbox entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The peer answered 2xx: it has the envelope (or had it already).
    Delivered,
    /// 429, 5xx, a connection error or a timeout: worth trying again.
    Transient { retry_after: Option<Duration> },
    /// Any other answer (the peer will never accept this envelope).
    Permanent { status: u16 },
}

/// What to do with the entry next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Delete,
    RetryAt(u64),
    DeadLetter(String),
}

/// An outbox entry's delivery state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryState {
    pub created_ms: u64,
    pub attempts: u32,
    pub next_attempt_ms: u64,
}

impl EntryState {
    pub const fn new(now_ms: u64) -> Self {
        Self {
            created_ms: now_ms,
            attempts: 0,
            next_attempt_ms: now_ms,
        }
    }

    /// Due for an attempt at `now_ms`?
    pub const fn due(&self, now_ms: u64) -> bool {
        self.next_attempt_ms <= now_ms
    }

    /// Applies an attempt's result. Entries older than `ttl_ms` are dead-lettered instead of
    /// retried; the backoff never gives up on its own (the TTL bounds the retries).
    pub fn after(&mut self, attempt: &Attempt, now_ms: u64, ttl_ms: u64, backoff: Backoff, jitter: f64) -> Next {
        self.attempts = self.attempts.saturating_add(1);
        match attempt {
            Attempt::Delivered => Next::Delete,
            Attempt::Permanent { status } => Next::DeadLetter(format!("peer answered {status}")),
            Attempt::Transient { retry_after } => {
                let unbounded = Backoff {
                    max_attempts: u32::MAX,
                    ..backoff
                };
                let delay =
                    retry_delay(unbounded, self.attempts.min(30), *retry_after, jitter).unwrap_or(unbounded.cap);
                let at = now_ms.saturating_add(delay.as_millis() as u64);
                if at >= self.created_ms.saturating_add(ttl_ms) {
                    Next::DeadLetter(format!("undelivered after {} attempts within the TTL", self.attempts))
                } else {
                    self.next_attempt_ms = at;
                    Next::RetryAt(at)
                }
            }
        }
    }

    pub fn encode(&self) -> [u8; 20] {
        let mut out = [0u8; 20];
        out[..8].copy_from_slice(&self.created_ms.to_be_bytes());
        out[8..12].copy_from_slice(&self.attempts.to_be_bytes());
        out[12..].copy_from_slice(&self.next_attempt_ms.to_be_bytes());
        out
    }

    pub fn decode(b: &[u8]) -> Option<Self> {
        Some(Self {
            created_ms: u64::from_be_bytes(b.get(..8)?.try_into().ok()?),
            attempts: u32::from_be_bytes(b.get(8..12)?.try_into().ok()?),
            next_attempt_ms: u64::from_be_bytes(b.get(12..20)?.try_into().ok()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn table() -> RoutingTable {
        RoutingTable {
            local_prefixes: vec!["+1555".into()],
            peers: vec![
                PeerRoute {
                    name: "b".into(),
                    prefixes: vec!["+1".into(), "+1666".into()],
                    jurisdiction: "US".into(),
                },
                PeerRoute {
                    name: "c".into(),
                    prefixes: vec!["+44".into()],
                    jurisdiction: "GB".into(),
                },
            ],
            allowed_jurisdictions: vec!["US".into()],
        }
    }

    fn addr(s: &str) -> Address {
        Address::parse(s).unwrap()
    }

    #[test]
    fn longest_prefix_wins_and_unmatched_is_local() {
        let t = table();
        assert_eq!(t.route(&addr("tel:+15550100001")), Route::Local);
        assert_eq!(t.route(&addr("tel:+16660100001")), Route::Peer(0));
        assert_eq!(t.route(&addr("tel:+12120100001")), Route::Peer(0));
        assert_eq!(t.route(&addr("tel:+447700900001")), Route::Peer(1));
        assert_eq!(t.route(&addr("tel:+33612345678")), Route::Local);
    }

    #[test]
    fn residency_allow_list() {
        let t = table();
        assert!(t.allowed(0).is_ok());
        assert_eq!(t.allowed(1).unwrap_err().jurisdiction, "GB");
        assert_eq!(t.disallowed_peers().len(), 1);
        let open = RoutingTable {
            allowed_jurisdictions: vec![],
            ..table()
        };
        assert!(open.allowed(1).is_ok());
    }

    #[test]
    fn outbox_entry_lifecycle() {
        let b = Backoff::default();
        let mut e = EntryState::new(1_000);
        assert!(e.due(1_000));
        let next = e.after(
            &Attempt::Transient {
                retry_after: Some(Duration::from_secs(5)),
            },
            1_000,
            60_000,
            b,
            0.0,
        );
        assert_eq!(next, Next::RetryAt(6_000));
        assert!(!e.due(5_999) && e.due(6_000));
        assert_eq!(e.after(&Attempt::Delivered, 6_000, 60_000, b, 0.5), Next::Delete);
        let mut e = EntryState::new(0);
        assert!(matches!(
            e.after(&Attempt::Permanent { status: 404 }, 0, 60_000, b, 0.5),
            Next::DeadLetter(_)
        ));
        let mut e = EntryState::new(0);
        assert!(matches!(
            e.after(
                &Attempt::Transient {
                    retry_after: Some(Duration::from_secs(61))
                },
                0,
                60_000,
                b,
                0.5
            ),
            Next::DeadLetter(_)
        ));
        assert_eq!(EntryState::decode(&e.encode()), Some(e));
    }

    proptest! {
        #[test]
        fn retries_stay_within_the_ttl_and_never_stop_early(
            results in proptest::collection::vec((0u64..120, any::<bool>()), 1..60),
            jitter in 0.0f64..1.0,
        ) {
            let ttl = 3_600_000;
            let mut e = EntryState::new(0);
            let mut now = 0;
            for (ra, transient) in results {
                let attempt = if transient {
                    Attempt::Transient { retry_after: Some(Duration::from_secs(ra)) }
                } else {
                    Attempt::Transient { retry_after: None }
                };
                match e.after(&attempt, now, ttl, Backoff::default(), jitter) {
                    Next::RetryAt(at) => {
                        prop_assert!(at >= now + ra * 1000 || !transient);
                        prop_assert!(at < ttl);
                        now = at;
                    }
                    Next::DeadLetter(_) => {
                        prop_assert!(now + ra * 1000 >= ttl || now + 60_000 >= ttl);
                        break;
                    }
                    Next::Delete => prop_assert!(false),
                }
            }
        }
    }
}
