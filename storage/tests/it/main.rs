//! Storage contract: every backend must pass every test in `contract`.
//!
//! A backend is added by one line in `backends!`; the tests are written once against
//! the [`storage::Store`] trait.

#![allow(clippy::unwrap_used)]

mod contract;
mod journal;
mod migrate;
mod nodes;
#[allow(unreachable_pub, dead_code)]
#[path = "../../../test-support/src/postgres.rs"]
mod pg_server;
mod rekey;
#[allow(unreachable_pub)]
#[path = "../../../test-support/src/wait.rs"]
mod wait;

use std::future::Future;

use storage::prelude::*;
use storage::{PostgresConfig, SledConfig, Storage, StorageConfig, StoreError};

/// A fresh store of one backend, plus whatever keeps it alive.
pub(crate) trait Harness: Sized + Send + Sync + 'static {
    type S: storage::Store;
    fn new() -> Self;
    fn store(&self) -> &Self::S;
    /// Closes and reopens the same data (crash-free restart).
    fn reopen(self) -> Self;
}

/// The sled backend, through the [`Storage`] handle the services use.
pub(crate) struct Sled {
    dir: tempfile::TempDir,
    store: Option<Storage>,
}

impl Harness for Sled {
    type S = Storage;

    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        Self {
            dir,
            store: Some(store),
        }
    }

    fn store(&self) -> &Storage {
        self.store.as_ref().unwrap()
    }

    fn reopen(mut self) -> Self {
        let store = self.store.take().unwrap();
        store.close();
        drop(store);
        self.store = Some(open(self.dir.path()));
        self
    }
}

fn open(path: &std::path::Path) -> Storage {
    // sled's own background threads may hold the directory lock for a moment after the
    // last handle is dropped (a reopen in the same process races it): retry briefly.
    let config = StorageConfig::Sled(SledConfig {
        cache_capacity: 16 << 20,
        ..SledConfig::in_dir(path)
    });
    for _ in 0..100 {
        match block_on(Storage::open(&config)) {
            Ok(s) => return s,
            Err(StoreError::InUse(_)) => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("{e}"),
        }
    }
    panic!("the sled directory stayed locked");
}

/// The PostgreSQL backend: a real server of its own per test (started here), through the
/// same [`Storage`] handle; a reopen is a new store (a new pool) on the same database.
pub(crate) struct Postgres {
    pub(crate) server: pg_server::Postgres,
    _dir: tempfile::TempDir,
    store: Option<Storage>,
}

impl Postgres {
    pub(crate) fn config(&self) -> StorageConfig {
        StorageConfig::Postgres(PostgresConfig {
            pool_size: 8,
            ..PostgresConfig::new(self.server.url())
        })
    }
}

/// Runs `f` to completion from a synchronous harness method inside the test's runtime.
pub(crate) fn block_on<F: Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

impl Harness for Postgres {
    type S = Storage;

    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server = pg_server::Postgres::start(&dir.path().join("pg"));
        let mut h = Self {
            server,
            _dir: dir,
            store: None,
        };
        h.store = Some(block_on(Storage::open(&h.config())).unwrap());
        h
    }

    fn store(&self) -> &Storage {
        self.store.as_ref().unwrap()
    }

    fn reopen(mut self) -> Self {
        let store = self.store.take().unwrap();
        store.close();
        drop(store);
        self.store = Some(block_on(Storage::open(&self.config())).unwrap());
        self
    }
}

macro_rules! backends {
    ($($backend:ident => $harness:ty),* $(,)?) => {
        $(
            mod $backend {
                contract_tests!($harness);
            }
        )*
    };
}

macro_rules! contract_tests {
    ($harness:ty) => {
        contract_tests!(@each $harness;
            register_and_authenticate,
            provisioning_nonce_is_single_use,
            device_cap_per_address,
            fan_out_stores_message_once,
            receive_pages_in_order,
            ack_by_id_and_cursor_is_idempotent,
            blob_deleted_after_last_ack,
            idempotent_send,
            unknown_recipient_changes_nothing,
            unknown_device_changes_nothing,
            quota_trims_oldest_with_gap_marker,
            ttl_sweep_removes_everything,
            delete_device_removes_mailbox,
            writes_survive_reopen,
            concurrent_sends_are_all_durable,
            key_packages_claimed_exactly_once_then_last_resort,
            concurrent_claims_hand_out_each_package_once,
            key_package_rules,
            one_commit_per_epoch,
            concurrent_commits_exactly_one_wins,
            push_handle_set_clear_and_compare_and_delete,
            outbox_is_written_with_the_send_and_survives_restart,
            audit_log_is_a_hash_chain,
            audit_log_is_a_merkle_tree_with_checkpoints,
            audit_log_prunes_behind_a_base,
            ack_needs_the_whole_server_id,
            a_marked_rid_moves_with_everything_it_holds,
            outbox_leases_hand_each_entry_out_once,
        );
    };
    (@each $harness:ty; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                crate::contract::$name::<$harness>().await;
            }
        )*
    };
}

backends! {
    sled => crate::Sled,
    postgres => crate::Postgres,
}
