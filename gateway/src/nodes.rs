//! Opening the storage backend the configuration names, and — where several gateway nodes
//! share one database — checking that this node derives rids with the same K_rid as the
//! others (a node with other key files would file every address under other rids).

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
#[cfg(feature = "postgres")]
use storage::PostgresConfig;
#[cfg(feature = "sled")]
use storage::SledConfig;
use storage::{Storage, StorageConfig};

use crate::config::{self, BackendKind};
use crate::keys::{KeyProvider as _, ProviderKeys};

/// The backend's configuration (reads the database password file, if any).
#[cfg_attr(not(feature = "sled"), allow(unused_variables))]
pub(crate) fn storage_config(st: &config::StorageConfig, data_dir: &Path) -> anyhow::Result<StorageConfig> {
    Ok(match (st.backend, &st.postgres) {
        #[cfg(feature = "postgres")]
        (BackendKind::Postgres, Some(pg)) => {
            let password = match &pg.password_file {
                Some(p) => Some(
                    std::fs::read_to_string(p)
                        .with_context(|| format!("reading storage.postgres.password_file {}", p.display()))?,
                ),
                None => None,
            };
            let tls = match &pg.ca {
                Some(ca) => {
                    let roots = relay_net::pem::load_certs(ca)
                        .with_context(|| format!("reading storage.postgres.ca {}", ca.display()))?;
                    Some(std::sync::Arc::new(relay_net::tls::client_config(&roots, None)?))
                }
                None => None,
            };
            StorageConfig::Postgres(PostgresConfig {
                password,
                tls,
                pool_size: pg.pool_size,
                statement_timeout: Duration::from_millis(pg.statement_timeout_ms),
                connect_timeout: Duration::from_millis(pg.connect_timeout_ms),
                outbox_lease: Duration::from_secs(pg.outbox_lease_secs),
                ..PostgresConfig::new(pg.url.clone())
            })
        }
        #[cfg(feature = "sled")]
        (BackendKind::Sled, _) => StorageConfig::Sled(SledConfig {
            cache_capacity: st.cache_capacity_mb << 20,
            journal_segment_bytes: st.journal_segment_mb.max(1) << 20,
            checkpoint_bytes: st.checkpoint_mb.max(1) << 20,
            checkpoint_interval: Duration::from_secs(st.checkpoint_secs.max(1)),
            ..SledConfig::in_dir(data_dir)
        }),
        (backend, _) => {
            anyhow::bail!("storage.backend = {backend:?} is not in this build (cargo features `sled`, `postgres`)")
        }
    })
}

/// Opens the store and checks this node's K_rid against the other nodes'.
pub(crate) async fn open(st: &config::StorageConfig, data_dir: &Path, keys: &ProviderKeys) -> anyhow::Result<Storage> {
    let store = Storage::open(&storage_config(st, data_dir)?)
        .await
        .with_context(|| format!("opening the {:?} storage backend", st.backend).to_lowercase())?;
    let rid_keys = keys.rid_keys();
    let name = format!("rid-key-v{}", keys.rid_version());
    let mine = relay_core::hex::encode(&rid_keys.current.probe());
    let agreed = store
        .agree(&name, &mine)
        .await
        .context("checking the rid key with the other nodes")?;
    anyhow::ensure!(
        agreed == mine,
        "this node's rid key (version {}) is not the one the other nodes on this database use: \
         give every node the same keys (copy keys/ from a running node, or use the same PKCS#11 token)",
        keys.rid_version()
    );
    tracing::info!(backend = store.backend_name(), "storage open");
    Ok(store)
}
