//! Requests, results and errors of the storage contract.

use relay_core::credential::CredentialHash;

use crate::{Ciphertext, ClientMessageId, DeviceId, Rid, ServerId};

/// A device to register.
#[derive(Debug, Clone)]
pub struct NewDevice {
    pub rid: Rid,
    pub credential_lookup: [u8; 16],
    pub credential_hash: CredentialHash,
    /// Nonce of the provisioning token; a second registration with it is refused.
    pub provisioning_nonce: [u8; 16],
    pub provisioning_expires_at_ms: u64,
    pub max_devices: usize,
    pub now_ms: u64,
}

/// What authenticating a credential needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceAuth {
    pub rid: Rid,
    pub device: DeviceId,
    pub credential_hash: CredentialHash,
}

/// One recipient address of a send.
#[derive(Debug, Clone)]
pub struct RecipientSpec {
    pub rid: Rid,
    /// `None`: every active device of the address.
    pub devices: Option<Vec<DeviceId>>,
}

/// A send, after validation.
#[derive(Debug, Clone)]
pub struct SendRequest {
    pub sender: (Rid, DeviceId),
    pub recipients: Vec<RecipientSpec>,
    pub message: Ciphertext,
    pub client_message_id: Option<ClientMessageId>,
    /// Digest of the request, so a reused client message id with other content is caught.
    pub request_digest: [u8; 32],
    pub urgent: bool,
    pub now_ms: u64,
    pub ttl_ms: u64,
    pub max_queue_bytes: u64,
}

/// Result of a send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendOutcome {
    pub server_id: ServerId,
    /// The devices the envelope was queued for (empty for a duplicate).
    pub delivered_to: Vec<(Rid, DeviceId)>,
    /// The request repeated an earlier client message id; nothing new was stored.
    pub duplicate: bool,
}

/// Flags of a mailbox entry (wire `Envelope.flags`).
pub mod flags {
    pub const URGENT: u32 = 1;
    pub const GAP: u32 = 2;
}

/// One envelope as a recipient device sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEnvelope {
    pub server_id: ServerId,
    pub seq: u64,
    pub received_at_ms: u64,
    pub expires_at_ms: u64,
    pub flags: u32,
    /// Empty for a gap marker.
    pub message: Ciphertext,
    /// For a gap marker: envelopes dropped in its place.
    pub dropped: u64,
}

/// A page of a device's mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub envelopes: Vec<StoredEnvelope>,
    pub next_cursor: u64,
    pub queue_empty: bool,
}

/// What to acknowledge.
#[derive(Debug, Clone, Default)]
pub struct Ack {
    pub server_ids: Vec<ServerId>,
    /// Every entry with `seq <= up_to`.
    pub up_to: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepStats {
    pub blobs: u64,
    pub mailbox_entries: u64,
    pub nonces: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub devices: u64,
    pub blobs: u64,
    pub blob_bytes: u64,
    pub mailbox_entries: u64,
}

/// The backend failed; the operation changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage backend error: {0}")]
    Backend(String),
    #[error("stored record is corrupt: {0}")]
    Corrupt(&'static str),
    #[error("storage is shutting down")]
    Closed,
}

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("address already has {0} devices")]
    TooManyDevices(usize),
    #[error("provisioning token already used")]
    TokenUsed,
    #[error("credential lookup id collision")]
    LookupCollision,
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("recipient {index} has no device")]
    UnknownRecipient { index: usize },
    #[error("recipient {index} names a device it does not have")]
    UnknownDevice { index: usize },
    #[error("client message id reused for a different message")]
    ClientMessageIdConflict,
    #[error(transparent)]
    Store(#[from] StoreError),
}
