//! The storage contract, split by domain so a backend can be written (and reviewed) one
//! domain at a time. [`Store`] is all of them; the contract suite in `storage/tests/it/`
//! runs against every backend through it.
//!
//! Every method is atomic: it either applies completely or changes nothing, and a mutating
//! method's future resolves only once the change is durable. Methods take and return ids
//! and [`Ciphertext`](crate::Ciphertext) only, never an address, a credential or a token.
//!
//! Callers bring the methods into scope with `use storage::prelude::*;`.

use std::future::Future;

use bytes::Bytes;
use relay_core::interconnect::EntryState;

use crate::{
    Ack, AuditBase, AuditHead, AuditRecord, ClaimedKeyPackage, DeviceAuth, DeviceId, KeyPackageCount, KeyPackageError,
    NewDevice, NewKeyPackage, OutboxEntry, Page, RegisterError, Rid, SendError, SendOutcome, SendRequest, Stats,
    StoreError, SweepStats,
};

/// Devices and their credentials.
pub trait Devices: Send + Sync + 'static {
    /// Registers a device for `rid`; consumes the provisioning nonce (single use).
    fn register_device(&self, req: NewDevice) -> impl Future<Output = Result<DeviceId, RegisterError>> + Send;

    /// Finds the device a credential lookup id belongs to.
    fn device_by_lookup(&self, lookup: [u8; 16])
    -> impl Future<Output = Result<Option<DeviceAuth>, StoreError>> + Send;

    /// Active devices of an address.
    fn devices(&self, rid: Rid) -> impl Future<Output = Result<Vec<DeviceId>, StoreError>> + Send;

    /// Removes a device, its credential, its push handle, its KeyPackages and its whole mailbox.
    fn delete_device(&self, rid: Rid, device: DeviceId) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// Message blobs and per-device mailboxes.
pub trait Mailboxes: Send + Sync + 'static {
    /// Stores one message once and queues it for every recipient device (and its remote
    /// parts in the outbox), after the idempotency and group-epoch checks.
    fn send(&self, req: SendRequest) -> impl Future<Output = Result<SendOutcome, SendError>> + Send;

    /// Reads up to `limit` envelopes with `seq > after`.
    fn receive(
        &self,
        rid: Rid,
        device: DeviceId,
        after: u64,
        limit: u32,
        now_ms: u64,
    ) -> impl Future<Output = Result<Page, StoreError>> + Send;

    /// Deletes acknowledged mailbox entries; unknown ids are ignored (idempotent).
    fn ack(&self, rid: Rid, device: DeviceId, ack: Ack) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// The KeyPackage directory.
pub trait KeyPackages: Send + Sync + 'static {
    /// Stores validated KeyPackages of a device. A last-resort package replaces the
    /// device's previous one.
    fn upload_key_packages(
        &self,
        rid: Rid,
        device: DeviceId,
        packages: Vec<NewKeyPackage>,
        max_per_device: usize,
        now_ms: u64,
    ) -> impl Future<Output = Result<u32, KeyPackageError>> + Send;

    /// One KeyPackage per active device of each target: a one-time package (handed out
    /// exactly once, durably removed before this returns), else the last-resort package.
    fn claim_key_packages(
        &self,
        targets: Vec<Rid>,
        now_ms: u64,
    ) -> impl Future<Output = Result<Vec<ClaimedKeyPackage>, StoreError>> + Send;

    /// Unexpired KeyPackages a device has left.
    fn key_package_count(
        &self,
        rid: Rid,
        device: DeviceId,
        now_ms: u64,
    ) -> impl Future<Output = Result<KeyPackageCount, StoreError>> + Send;

    /// The devices that uploaded the KeyPackages with these refs (Welcome routing).
    /// `Ok(Err(index))` names the first unknown ref.
    fn devices_for_key_packages(
        &self,
        refs: Vec<Vec<u8>>,
    ) -> impl Future<Output = Result<Result<Vec<(Rid, DeviceId)>, usize>, StoreError>> + Send;
}

/// Per-group state: the epoch (commit ordering) and the latest GroupInfo.
pub trait Groups: Send + Sync + 'static {
    /// The current epoch of a group, if the group is known.
    fn group_epoch(&self, group_key: [u8; 32]) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send;

    /// Operator reset of a group's epoch (RFC 9750 section 5.3 desynchronisation).
    fn set_group_epoch(&self, group_key: [u8; 32], epoch: u64) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Stores the latest GroupInfo (an opaque MLSMessage) of a group, for external joins.
    fn set_group_info(
        &self,
        group_key: [u8; 32],
        group_info: Bytes,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The latest GroupInfo of a group.
    fn group_info(&self, group_key: [u8; 32]) -> impl Future<Output = Result<Option<Bytes>, StoreError>> + Send;
}

/// Push handles (sealed by the push proxy, opaque here).
pub trait PushHandles: Send + Sync + 'static {
    /// Sets (`Some`) or clears (`None`) a device's push handle. `false` if the device does
    /// not exist.
    fn set_push_handle(
        &self,
        rid: Rid,
        device: DeviceId,
        handle: Option<String>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// A device's push handle.
    fn push_handle(
        &self,
        rid: Rid,
        device: DeviceId,
    ) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;

    /// Clears a device's push handle only if it is still `handle` (compare-and-delete: a
    /// handle the device registered since the push proxy reported the old one dead survives).
    fn drop_push_handle_if(
        &self,
        rid: Rid,
        device: DeviceId,
        handle: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// The interconnect outbox: envelopes for peer carriers, written in a send's batch.
pub trait Outbox: Send + Sync + 'static {
    /// Entries for `peer` due at `now_ms`, oldest first, at most `limit`.
    fn outbox_due(
        &self,
        peer: &str,
        now_ms: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<OutboxEntry>, StoreError>> + Send;

    /// The entries a dispatcher is about to deliver: as [`Outbox::outbox_due`], and where
    /// several nodes share the store, leased to this node (no other node is handed them
    /// until it records the attempt, or the lease expires because it died). A store of one
    /// node returns what is due.
    fn outbox_lease(
        &self,
        peer: &str,
        now_ms: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<OutboxEntry>, StoreError>> + Send;

    /// Entries queued for `peer` and the creation time of the oldest.
    fn outbox_depth(&self, peer: &str) -> impl Future<Output = Result<(u64, Option<u64>), StoreError>> + Send;

    /// Records a failed attempt (the entry's new state).
    fn outbox_retry(
        &self,
        peer: &str,
        seq: u64,
        state: EntryState,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Deletes a delivered entry.
    fn outbox_delete(&self, peer: &str, seq: u64) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Deletes an undeliverable entry and appends the audit record saying so, atomically.
    fn outbox_dead_letter(
        &self,
        peer: &str,
        seq: u64,
        detail: String,
        now_ms: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The hash-chained audit log.
pub trait Audit: Send + Sync + 'static {
    /// Appends a record.
    fn audit_append(
        &self,
        kind: &str,
        detail: String,
        now_ms: u64,
    ) -> impl Future<Output = Result<AuditRecord, StoreError>> + Send;

    /// Every record, oldest first, after checking the hash chain and that it ends where the
    /// head says (a broken chain or a cut tail is `StoreError::Corrupt`).
    fn audit_log(&self) -> impl Future<Output = Result<Vec<AuditRecord>, StoreError>> + Send;

    /// The log's Merkle tree head: how many records, and the RFC 6962 root over them.
    fn audit_head(&self) -> impl Future<Output = Result<AuditHead, StoreError>> + Send;

    /// Keeps a signed checkpoint (a C2SP signed note) of the tree at `size` records.
    fn audit_add_checkpoint(&self, size: u64, note: String) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Every checkpoint kept, by size.
    fn audit_checkpoints(&self) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// Deletes the records up to `upto` (retention), keeping what proves the rest: the chain
    /// hash and Merkle frontier after `upto` (the caller has stored a signed checkpoint at
    /// `upto` first). Returns the new base; nothing changes if `upto` is not past the old one.
    fn audit_prune(&self, upto: u64) -> impl Future<Output = Result<Option<AuditBase>, StoreError>> + Send;

    /// Where the log starts, if it was pruned.
    fn audit_base(&self) -> impl Future<Output = Result<Option<AuditBase>, StoreError>> + Send;
}

/// Operator controls for incident response: kill switches, suspended addresses, revoked
/// devices. Each change is written with its audit record, atomically.
pub trait Controls: Send + Sync + 'static {
    /// Switches `name` off (`off = true`) or back on. Off stays off across restarts.
    fn set_switch(&self, name: &str, off: bool, now_ms: u64) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The switches that are off.
    fn switches_off(&self) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// Suspends an address (`true`: it may not register or send) or lifts the suspension.
    fn set_suspended(
        &self,
        rid: Rid,
        suspended: bool,
        now_ms: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The suspended addresses.
    fn suspended(&self) -> impl Future<Output = Result<Vec<Rid>, StoreError>> + Send;

    /// Revokes a device: its credential, KeyPackages (so Welcomes to them are refused), push
    /// handle and mailbox go, as with [`Devices::delete_device`], and the revocation is
    /// audited. `false` if there was no such device.
    fn revoke_device(
        &self,
        rid: Rid,
        device: DeviceId,
        now_ms: u64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// Re-keys a rid's records with the new K_rid's packages: given the stored bytes of a
/// KeyPackage sealed for the old rid, the bytes sealed for the new one (`None`: it does not
/// open, which fails the re-key).
pub type Reseal = Box<dyn Fn(&[u8]) -> Option<Vec<u8>> + Send + Sync>;

/// K_rid rotation by lazy re-key: at the rotation every rid (an address, under the previous
/// K_rid) is marked; a request naming the address moves the rid's records to its rid under
/// the new K_rid. Only the marks and the moves are stored, never which rid became which.
pub trait Rekey: Send + Sync + 'static {
    /// Marks every rid that ever registered a device as still under the previous key
    /// (audited: `key.rotate rid marked=N`). Refused while an earlier re-key has marks left.
    fn rekey_begin(&self, now_ms: u64) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// The rids still marked.
    fn rekey_marked(&self) -> impl Future<Output = Result<Vec<Rid>, StoreError>> + Send;

    /// Moves every record of the marked rid `old` to `new` in one write: devices and
    /// their credentials, the device counter, KeyPackages (through `reseal`) and their
    /// Welcome routes, push handles, queued envelopes (their blob records re-addressed),
    /// gaps, idempotency records, a suspension; then drops the mark. `false` if `old` was
    /// not marked (already moved, or never registered).
    fn rekey(&self, old: Rid, new: Rid, reseal: Reseal) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Drops every mark left (a forced retirement of the previous key; audited
    /// `key.retire rid forced unmigrated=N`). Returns how many there were.
    fn rekey_abandon(&self, now_ms: u64) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// Expiry, statistics and lifecycle.
pub trait Maintenance: Send + Sync + 'static {
    /// Deletes everything whose time to live has passed, in bounded chunks.
    fn sweep(&self, now_ms: u64) -> impl Future<Output = Result<SweepStats, StoreError>> + Send;

    /// Counts of stored records (tests, metrics).
    fn stats(&self) -> impl Future<Output = Result<Stats, StoreError>> + Send;

    /// A hash of every stored record, key and value, of every kind (devices, credentials,
    /// used provisioning nonces, idempotency keys, envelopes, KeyPackages, epochs, push
    /// handles, outbox, audit). Tests use it to show a refused request changed nothing.
    fn digest(&self) -> impl Future<Output = Result<[u8; 32], StoreError>> + Send;

    /// Bytes the backend uses on disk (0 where it cannot tell).
    fn size_on_disk(&self) -> u64;

    /// Makes everything durable and releases the backend (blocking; call from a blocking
    /// context at shutdown).
    fn close(&self);
}

/// The whole contract.
pub trait Store:
    Devices + Mailboxes + KeyPackages + Groups + PushHandles + Outbox + Audit + Controls + Rekey + Maintenance
{
}

impl<T> Store for T where
    T: Devices + Mailboxes + KeyPackages + Groups + PushHandles + Outbox + Audit + Controls + Rekey + Maintenance
{
}
