//! Delivery reports: when an outbox entry is dead-lettered, the device that sent it learns
//! so from its own receive stream — an envelope with the `REPORT` flag carrying the send's
//! server id, the positions of the recipients not reached and a machine reason. Never an
//! address: the report is at rest in the sender's mailbox like any envelope.
//!
//! The report is stored before the entry is dead-lettered, under a client message id derived
//! from the envelope id and the peer, so a crash between the two makes the retried dead
//! letter store a duplicate, not a second report.

use bytes::Bytes;
use prost::Message as _;
use relay_core::interconnect::Attempt;
use relay_core::wire::v1;
use storage::prelude::*;
use storage::{Ciphertext, ClientMessageId, OutboxEntry, RecipientSpec, SendError, SendRequest};

use crate::Interconnect;
use crate::record::Origin;

/// Why a part was dead-lettered, as the sender's report says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reason {
    /// `unknown_recipient`, `peer_refused` or `peer_unreachable`.
    pub code: &'static str,
    /// The peer's HTTP status, 0 when it never answered.
    pub peer_status: u16,
}

/// The report reason for the attempt that dead-lettered an entry. `peer_code` is the
/// `error` field of the peer's JSON answer, if any.
pub fn reason(attempt: &Attempt, peer_code: Option<&str>) -> Reason {
    match attempt {
        Attempt::Permanent { status } => Reason {
            code: match (status, peer_code) {
                (404, Some("unknown_recipient")) => "unknown_recipient",
                _ => "peer_refused",
            },
            peer_status: *status,
        },
        Attempt::Delivered | Attempt::Transient { .. } => Reason {
            code: "peer_unreachable",
            peer_status: 0,
        },
    }
}

/// The `error` code of a peer's JSON error answer.
pub fn peer_code(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        error: String,
    }
    serde_json::from_slice::<ErrorBody>(body).ok().map(|b| b.error)
}

impl Interconnect {
    /// Queues the delivery report for `entry` to the device that sent it.
    pub(crate) async fn report(
        &self,
        peer_domain: &str,
        entry: &OutboxEntry,
        origin: &Origin,
        why: Reason,
    ) -> Result<(), SendError> {
        let report = v1::DeliveryReport {
            server_id: Bytes::copy_from_slice(&entry.envelope_id.0),
            reason: why.code.to_owned(),
            recipient_indexes: origin.indexes.iter().map(|&i| u32::from(i)).collect(),
            peer_domain: peer_domain.to_owned(),
            peer_status: u32::from(why.peer_status),
        };
        let mut id = blake3::Hasher::new_derive_key("rcs-relay 2026-12 delivery report id v1");
        id.update(&entry.envelope_id.0);
        id.update(peer_domain.as_bytes());
        let id = id.finalize();
        let mut cmid = [0u8; 16];
        cmid.copy_from_slice(&id.as_bytes()[..16]);
        let now_ms = relay_net::clock::now_ms();
        let request = SendRequest {
            sender: (origin.rid, origin.device),
            recipients: vec![RecipientSpec {
                rid: origin.rid,
                devices: Some(vec![origin.device]),
            }],
            // Not MLS: the REPORT flag tells the gateway to hand it out as `report`.
            message: Ciphertext::from_stored(Bytes::from(report.encode_to_vec())),
            client_message_id: Some(ClientMessageId(cmid)),
            request_digest: *id.as_bytes(),
            urgent: false,
            report: true,
            now_ms,
            ttl_ms: self.limits.ttl_ms,
            max_queue_bytes: self.limits.max_queue_bytes_per_device,
            ordering: None,
            outbox: Vec::new(),
        };
        self.store.send(request).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons() {
        let unknown = reason(&Attempt::Permanent { status: 404 }, Some("unknown_recipient"));
        assert_eq!(unknown.code, "unknown_recipient");
        assert_eq!(unknown.peer_status, 404);
        assert_eq!(reason(&Attempt::Permanent { status: 404 }, None).code, "peer_refused");
        assert_eq!(reason(&Attempt::Permanent { status: 403 }, Some("x")).peer_status, 403);
        let gone = reason(&Attempt::Transient { retry_after: None }, None);
        assert_eq!((gone.code, gone.peer_status), ("peer_unreachable", 0));
        assert_eq!(
            peer_code(br#"{"error":"unknown_recipient"}"#).as_deref(),
            Some("unknown_recipient")
        );
        assert_eq!(peer_code(b"<html>"), None);
    }
}
