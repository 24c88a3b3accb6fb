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
    /// The id of the provisioning key that signed the token (audited with the registration).
    pub provisioning_key: String,
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

/// Per-group ordering of a PublicMessage/PrivateMessage (RFC 9420 section 14, RFC 9750
/// section 5.2), checked and applied atomically with storing the envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupOrdering {
    /// BLAKE3 of the group id: group ids are not stored in the clear.
    pub group_key: [u8; 32],
    pub epoch: u64,
    pub kind: OrderingKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderingKind {
    /// Accepted only for the group's current epoch; advances it (first one wins).
    /// An unknown group accepts a commit for epoch 0 (its creation).
    Commit,
    /// Accepted only for the group's current epoch (or any epoch of an unknown group).
    Proposal,
    /// Refused when more than `window` epochs behind the group's current epoch.
    Application { window: u64 },
}

/// A KeyPackage to store in the directory (already validated by the caller).
#[derive(Debug, Clone)]
pub struct NewKeyPackage {
    /// `KeyPackageRef` (RFC 9420 section 5.2).
    pub kp_ref: Vec<u8>,
    /// The TLS-encoded KeyPackage.
    pub bytes: bytes::Bytes,
    /// End of the KeyPackage's lifetime, milliseconds since the Unix epoch.
    pub not_after_ms: u64,
    pub last_resort: bool,
}

/// A KeyPackage handed out by a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedKeyPackage {
    pub rid: Rid,
    pub device: DeviceId,
    pub bytes: bytes::Bytes,
    pub last_resort: bool,
}

/// How many KeyPackages a device has left.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyPackageCount {
    pub one_time: u32,
    pub last_resort: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyPackageError {
    #[error("key package {index} is already stored")]
    Duplicate { index: usize },
    #[error("the device would hold more than {max} key packages")]
    TooMany { max: usize },
    #[error(transparent)]
    Store(#[from] StoreError),
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
    /// The message is a delivery report for the recipient (see [`flags::REPORT`]).
    pub report: bool,
    pub now_ms: u64,
    pub ttl_ms: u64,
    pub max_queue_bytes: u64,
    /// Epoch check for handshake and application messages; `None` for other kinds.
    pub ordering: Option<GroupOrdering>,
    /// Parts for peer carriers, written to the outbox in the same atomic batch.
    pub outbox: Vec<OutboxItem>,
}

/// One remote part of a send: an opaque record (the gateway seals what it contains) queued
/// for a peer carrier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxItem {
    pub peer: String,
    pub record: bytes::Bytes,
}

/// An outbox entry as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub seq: u64,
    pub state: relay_core::interconnect::EntryState,
    /// The envelope's id on the interconnect (the send's server id): the peer deduplicates
    /// on it, so a redelivery after a crash is harmless.
    pub envelope_id: ServerId,
    pub record: bytes::Bytes,
}

/// One audit record, hash-chained to its predecessor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub seq: u64,
    pub at_ms: u64,
    pub kind: String,
    pub detail: String,
    /// blake3(previous hash ‖ seq ‖ at_ms ‖ kind ‖ 0 ‖ detail).
    pub hash: [u8; 32],
}

/// Where the audit log starts after its oldest records were pruned: the chain hash and the
/// encoded Merkle frontier (`relay_core::auditlog::Frontier`) after record `size`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditBase {
    pub size: u64,
    pub chain: [u8; 32],
    pub frontier: Vec<u8>,
}

/// The audit log's Merkle tree head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditHead {
    pub size: u64,
    pub root: [u8; 32],
}

/// Result of a send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendOutcome {
    pub server_id: ServerId,
    /// The devices the envelope was queued for (empty for a duplicate).
    pub delivered_to: Vec<(Rid, DeviceId)>,
    /// The request repeated an earlier client message id; nothing new was stored.
    pub duplicate: bool,
    /// For a commit: the epoch it was accepted for (the committer's signal to merge).
    pub accepted_epoch: Option<u64>,
}

/// The kill switches' names ([`crate::Controls`]).
pub mod switch {
    /// New registrations get 503 `registration_disabled`.
    pub const REGISTRATION: &str = "registration";
    /// KeyPackage uploads get 503 `key_package_upload_disabled`.
    pub const KEYPACKAGE_UPLOAD: &str = "keypackage_upload";
    /// No pushes are sent (envelopes are stored as always).
    pub const PUSH: &str = "push";

    /// One peer carrier's switch: while it is off, nothing is delivered to the peer (its
    /// envelopes stay in the outbox) and nothing is accepted from it.
    pub fn peer(name: &str) -> String {
        format!("peer:{name}")
    }
}

/// Flags of a mailbox entry (wire `Envelope.flags`).
pub mod flags {
    pub const URGENT: u32 = 1;
    pub const GAP: u32 = 2;
    /// A delivery report for the sending device (the payload is an encoded
    /// `DeliveryReport`, not an MLS message).
    pub const REPORT: u32 = 4;
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
    /// Another process (or a store not yet closed in this one) holds the data directory.
    #[error("the data directory is in use: {0}")]
    InUse(String),
    /// The journal could not be replayed (corruption, a missing segment): the store refuses
    /// to start rather than skip acknowledged data. The text names the file and offset.
    #[error("storage recovery refused: {0}")]
    Recovery(String),
    /// The operation does not apply in the store's state (the text says why).
    #[error("{0}")]
    Refused(String),
    /// The database cannot be reached, timed out, or is read-only (a failover in progress);
    /// the operation's outcome is unknown (a commit may have been in flight). Retry later.
    #[error("storage is unavailable: {0}")]
    Unavailable(String),
    /// A concurrent operation conflicted (deadlock, serialization failure) and retrying
    /// did not resolve it; nothing changed.
    #[error("storage conflict: {0}")]
    Conflict(String),
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
    #[error("message is for epoch {epoch}, the group is at epoch {current}")]
    WrongEpoch { epoch: u64, current: u64 },
    #[error("application message is for epoch {epoch}, too far behind the group's epoch {current}")]
    EpochTooOld { epoch: u64, current: u64 },
    #[error("the group is unknown and the commit is not for epoch 0")]
    UnknownGroup,
    #[error(transparent)]
    Store(#[from] StoreError),
}
