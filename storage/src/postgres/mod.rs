//! The PostgreSQL backend: several stateless gateway nodes on one database.
//!
//! ```text
//!  request ─► pool connection ─► BEGIN ─► row locks ─► writes ─► COMMIT ─► 2xx
//!                                                       (synchronous_commit = on:
//!                                                        durable on the quorum)
//!  every send: pg_notify('relay_mailbox', rid:device…) ─► each node's listener wakes its
//!  long-polls and streams
//! ```
//!
//! # Layout
//! - `migrations/V<n>__<name>.sql` (the crate's directory): the schema, applied by refinery
//!   at open under an advisory lock (several nodes may start at once), each once, in order.
//! - one module per domain of the contract, like the sled backend: `devices`, `mailbox`,
//!   `keypackages`, `small` (groups, push handles, controls), `outbox`, `audit`, `sweep`,
//!   `rekey`; `live`: cross-node wake-ups, live receivers and shared rate limits.
//!
//! # Transactions and locks
//! Every operation is one transaction at READ COMMITTED with explicit row locks, taken in
//! this order: a group's row (first commit for an epoch wins) → the recipient devices' rows,
//! sorted (quota, and the order of seqs: a send takes its seq only once it holds every
//! recipient's row, so any later send to a device takes a larger seq and commits after it —
//! a receiver never sees seq n+1 before n) → blob rows being released → the audit head row
//! (one chain). Every mailbox change of a device holds the device's row. A deadlock or
//! serialization failure is retried (`RETRIES` times), then surfaces as
//! [`StoreError::Conflict`]. A lost connection, a timeout or a read-only server (a failover
//! in progress) is [`StoreError::Unavailable`]: the outcome of a commit in flight is unknown
//! to the caller, which is why sends carry client message ids.

mod audit;
mod devices;
mod keypackages;
pub(crate) mod live;
mod mailbox;
mod outbox;
mod rekey;
mod small;
mod sweep;

use std::time::Duration;

use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{NoTls, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::{DeviceId, Rid, StoreError};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// How often an operation is retried after a deadlock or serialization failure.
const RETRIES: usize = 8;

/// Configuration of the PostgreSQL backend.
#[derive(Clone)]
pub struct PostgresConfig {
    /// A libpq connection string or URL. Several hosts with
    /// `target_session_attrs=read-write` follow a failover to the new primary.
    pub url: String,
    /// The password, if not in `url` (read from a file by the caller).
    pub password: Option<String>,
    /// TLS to the database (the roots that verify the server; `sslmode=require` in `url`
    /// insists on it). `None`: plain TCP.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// Connections per node.
    pub pool_size: usize,
    /// Longest a statement may run (and a request wait for a connection).
    pub statement_timeout: Duration,
    /// Longest a connection attempt may take.
    pub connect_timeout: Duration,
    /// How long an outbox entry handed to a node's dispatcher stays leased to it.
    pub outbox_lease: Duration,
    /// How long a node's live-receiver rows stay valid without being refreshed.
    pub receiver_lease: Duration,
}

impl PostgresConfig {
    /// The defaults for a connection string.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            password: None,
            tls: None,
            pool_size: 16,
            statement_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
            outbox_lease: Duration::from_secs(30),
            receiver_lease: Duration::from_secs(15),
        }
    }
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The connection string and the password are secrets: never printed.
        f.debug_struct("PostgresConfig")
            .field("pool_size", &self.pool_size)
            .field("statement_timeout", &self.statement_timeout)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// The PostgreSQL backend.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    cfg: PostgresConfig,
    pg: tokio_postgres::Config,
    tls: Option<MakeRustlsConnect>,
    /// This process's id in leases and live-receiver rows.
    node: String,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The connection string may hold a password: never printed.
        f.debug_struct("PostgresStore")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects, applies the migrations not yet applied, and opens the pool. Fails (with
    /// [`StoreError::Unavailable`]) when no server can be reached.
    pub async fn open(cfg: &PostgresConfig) -> Result<Self, StoreError> {
        let mut pg: tokio_postgres::Config = cfg
            .url
            .parse()
            .map_err(|e| StoreError::Backend(format!("storage.postgres.url is not a connection string: {e}")))?;
        let timeout_ms = cfg.statement_timeout.as_millis();
        pg.options(format!(
            "-c statement_timeout={timeout_ms} -c lock_timeout={timeout_ms} -c synchronous_commit=on \
             -c idle_in_transaction_session_timeout={}",
            timeout_ms * 2
        ));
        pg.connect_timeout(cfg.connect_timeout);
        if let Some(p) = &cfg.password {
            pg.password(p.trim_end_matches(['\r', '\n']));
        }
        pg.application_name("rcs-relay");
        let tls = cfg.tls.as_ref().map(|c| MakeRustlsConnect::new((**c).clone()));
        {
            let (mut client, conn) = match &tls {
                Some(t) => connect(&pg, t.clone()).await?,
                None => connect(&pg, NoTls).await?,
            };
            let read_only: String = client
                .query_one("SHOW transaction_read_only", &[])
                .await
                .map_err(db)?
                .get(0);
            if read_only == "on" {
                return Err(StoreError::Unavailable(
                    "the database server is read-only (a standby): list every cluster member in \
                     storage.postgres.url with target_session_attrs=read-write"
                        .into(),
                ));
            }
            client
                .execute("SELECT pg_advisory_lock(7420113)", &[])
                .await
                .map_err(db)?;
            let migrated = migrate(&mut client).await;
            let unlocked = client.execute("SELECT pg_advisory_unlock(7420113)", &[]).await;
            let (applied, version) = migrated?;
            unlocked.map_err(db)?;
            client
                .execute(
                    "INSERT INTO audit_head (id, seq, hash, frontier) VALUES (1, 0, $1, $2) ON CONFLICT DO NOTHING",
                    &[
                        &relay_core::auditlog::CHAIN_START.to_vec(),
                        &relay_core::auditlog::Frontier::default().encode(),
                    ],
                )
                .await
                .map_err(db)?;
            tracing::info!(
                applied,
                schema_version = version,
                tls = tls.is_some(),
                "postgres schema current"
            );
            drop(client);
            let _ = conn.await;
        }
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &tls {
            Some(t) => Manager::from_config(pg.clone(), t.clone(), manager_config),
            None => Manager::from_config(pg.clone(), NoTls, manager_config),
        };
        let pool = Pool::builder(manager)
            .max_size(cfg.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(cfg.statement_timeout))
            .create_timeout(Some(cfg.connect_timeout))
            .recycle_timeout(Some(cfg.connect_timeout))
            .build()
            .map_err(|e| StoreError::Backend(format!("postgres pool: {e}")))?;
        let mut node = [0u8; 8];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut node);
        Ok(Self {
            pool,
            cfg: cfg.clone(),
            pg,
            tls,
            node: relay_core::hex::encode(&node),
        })
    }

    /// A pooled connection.
    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => unreachable(&e),
            other => StoreError::Unavailable(format!("postgres: {other}")),
        })
    }

    /// Whether the database answers now (readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let c = self.client().await?;
        c.simple_query("SELECT 1").await.map_err(db)?;
        Ok(())
    }

    /// This node's id in leases.
    pub fn node(&self) -> &str {
        &self.node
    }
}

/// A transaction.
pub(crate) type Tx<'a> = deadpool_postgres::Transaction<'a>;

/// A read-only transaction that sees one snapshot throughout (REPEATABLE READ).
pub(crate) async fn snapshot(c: &mut deadpool_postgres::Object) -> Result<Tx<'_>, StoreError> {
    c.build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(db)
}

/// A connection of its own (not pooled), its driver spawned.
async fn connect<T>(
    pg: &tokio_postgres::Config,
    tls: T,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), StoreError>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
{
    let (client, connection) = pg.connect(tls).await.map_err(|e| unreachable(&e))?;
    Ok((
        client,
        tokio::spawn(async move {
            let _ = connection.await;
        }),
    ))
}

/// Applies the migrations not yet applied (none if the schema is current); returns how many
/// it applied and the schema version now in force.
pub async fn migrate(client: &mut tokio_postgres::Client) -> Result<(usize, u32), StoreError> {
    let runner = embedded::migrations::runner();
    let latest = runner
        .get_migrations()
        .iter()
        .map(refinery::Migration::version)
        .max()
        .unwrap_or(0);
    let report = runner
        .run_async(client)
        .await
        .map_err(|e| StoreError::Backend(format!("schema migration: {e}")))?;
    Ok((report.applied_migrations().len(), latest))
}

/// A database error as the contract's: conflicts are retried, an unreachable or read-only
/// server is unavailable (503 upstream), the rest is a backend error.
#[allow(clippy::needless_pass_by_value, reason = "used as `.map_err(db)`")]
pub(crate) fn db(e: tokio_postgres::Error) -> StoreError {
    if let Some(code) = e.code() {
        if *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED {
            return StoreError::Conflict(code.code().to_owned());
        }
        let c = code.code();
        if c.starts_with("08")
            || c.starts_with("57P")
            || c.starts_with("53")
            || *code == SqlState::READ_ONLY_SQL_TRANSACTION
            || *code == SqlState::QUERY_CANCELED
            || *code == SqlState::LOCK_NOT_AVAILABLE
        {
            return StoreError::Unavailable(format!("postgres: {c}"));
        }
        return StoreError::Backend(format!("postgres: {c}: {e}"));
    }
    unreachable(&e)
}

fn unreachable(e: &tokio_postgres::Error) -> StoreError {
    StoreError::Unavailable(format!("postgres: {e}"))
}

/// Errors that may carry a retryable conflict.
pub(crate) trait MaybeConflict {
    fn is_conflict(&self) -> bool;
}

impl MaybeConflict for StoreError {
    fn is_conflict(&self) -> bool {
        matches!(self, Self::Conflict(_))
    }
}

macro_rules! conflict_via_store {
    ($($t:ty),*) => {$(
        impl MaybeConflict for $t {
            fn is_conflict(&self) -> bool {
                matches!(self, Self::Store(StoreError::Conflict(_)))
            }
        }
    )*};
}
conflict_via_store!(crate::SendError, crate::RegisterError, crate::KeyPackageError);

/// Runs the future `$op` builds again after a deadlock or serialization failure, up to
/// [`RETRIES`] times (`$op` is an `async` block: `?` and `return` leave the attempt).
macro_rules! retrying {
    ($op:expr) => {{
        let mut attempt = 0usize;
        loop {
            match $op.await {
                Err(e) if crate::postgres::MaybeConflict::is_conflict(&e) && attempt < crate::postgres::RETRIES => {
                    attempt += 1;
                    metrics::counter!("relay_postgres_retries_total").increment(1);
                    tokio::time::sleep(std::time::Duration::from_millis(2 << attempt.min(6))).await;
                }
                other => break other,
            }
        }
    }};
}
pub(crate) use retrying;

/// Parameters of a statement.
pub(crate) type Params<'a> = &'a [&'a (dyn tokio_postgres::types::ToSql + Sync)];

/// Rows of a statement prepared once per connection (cached).
pub(crate) async fn q<C: GenericClient>(c: &C, sql: &str, params: Params<'_>) -> Result<Vec<Row>, StoreError> {
    let st = c.prepare_cached(sql).await.map_err(db)?;
    c.query(&st, params).await.map_err(db)
}

/// The one row of a cached statement.
pub(crate) async fn q1<C: GenericClient>(c: &C, sql: &str, params: Params<'_>) -> Result<Row, StoreError> {
    let st = c.prepare_cached(sql).await.map_err(db)?;
    c.query_one(&st, params).await.map_err(db)
}

/// The row, if any, of a cached statement.
pub(crate) async fn q01<C: GenericClient>(c: &C, sql: &str, params: Params<'_>) -> Result<Option<Row>, StoreError> {
    let st = c.prepare_cached(sql).await.map_err(db)?;
    c.query_opt(&st, params).await.map_err(db)
}

/// Runs a cached statement; how many rows it changed.
pub(crate) async fn x<C: GenericClient>(c: &C, sql: &str, params: Params<'_>) -> Result<u64, StoreError> {
    let st = c.prepare_cached(sql).await.map_err(db)?;
    c.execute(&st, params).await.map_err(db)
}

// Conversions between the contract's types and columns.

pub(crate) fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(crate) fn dev(d: DeviceId) -> i32 {
    d.0 as i32
}

pub(crate) fn device_of(v: i32) -> DeviceId {
    DeviceId(v as u32)
}

pub(crate) fn rid_of(v: &[u8]) -> Result<Rid, StoreError> {
    Ok(Rid(v.try_into().map_err(|_| StoreError::Corrupt("rid"))?))
}

pub(crate) fn array<const N: usize>(v: &[u8], what: &'static str) -> Result<[u8; N], StoreError> {
    v.try_into().map_err(|_| StoreError::Corrupt(what))
}

/// The audit detail naming a rid.
pub(crate) fn rid_detail(rid: &Rid) -> String {
    format!("rid={}", relay_core::hex::encode(&rid.0))
}
