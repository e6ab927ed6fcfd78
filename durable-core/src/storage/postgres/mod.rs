//! [`PostgresStore`]: the [`Store`] for many worker processes on many machines, on
//! Postgres (feature `postgres`).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::error::Error as _;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{
    GenericClient, Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
    Transaction,
};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, Config, NoTls, Notification, Socket};

use super::metrics::CommitTimer;
use super::replace::{self, Reuse, Teardown};
use super::{
    ActivityTask, ActivityWorkItem, CreateResult, EpisodeCommit, InstancePage, InstanceQuery,
    InstanceRecord, LockToken, Message, MessageId, NewInstance, OrchestrationWorkItem, QueueDepths,
    StatusCounts, Store, StoreSignals, WorkKind,
};
use crate::error::{BackendError, FailureDetails, StoreError};
use crate::history::{Event, HistoryEvent, Payload, RuntimeStatus};
use crate::ids::{InstanceId, Timestamp};

/// The schema version this build creates and understands.
const SCHEMA_VERSION: i32 = 3;
/// First key of the advisory lock that serialises migrations (the second is the hub's hash).
const MIGRATION_LOCK: i32 = 0x6475_7261; // "dura"
/// How often a transaction that Postgres aborted (deadlock, serialisation) is retried.
const MAX_ATTEMPTS: u32 = 8;
/// The longest task hub name (it is also part of the notification channel's name, which
/// Postgres limits to 63 bytes).
const MAX_HUB_LEN: usize = 48;
/// Connections for taking leases (fetches) and reading wake times.
const LEASE_POOL_SIZE: usize = 4;

/// Runs `$body` (an async block using the transaction `$tx` and returning `R<T>`) in a
/// transaction and commits it; retries when Postgres aborted the transaction (deadlock,
/// serialisation failure). Evaluates to `Result<T, StoreError>`.
macro_rules! retry_tx {
    ($store:expr, $what:expr, $tx:ident => $body:expr) => {{
        let store = &$store;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let result: R<_> = async {
                let mut conn = store.conn().await?;
                let $tx = conn.transaction().await?;
                match $body.await {
                    Ok(out) => {
                        $tx.commit().await?;
                        Ok(out)
                    }
                    Err(e) => {
                        // Awaited, so the row locks are gone before the caller goes on
                        // (a fetch would skip a row still locked by this transaction).
                        let _ = $tx.rollback().await;
                        Err(e)
                    }
                }
            }
            .await;
            match result {
                Err(Error::Db(e)) if attempt < MAX_ATTEMPTS && retryable(&e) => {
                    tracing::debug!(error = %e, attempt, "transaction aborted by PostgreSQL; retrying");
                    pause(Duration::from_millis(u64::from(attempt) * 5)).await;
                }
                other => break other.map_err(|e| store.err($what, e)),
            }
        }
    }};
}

/// Appended to "permission denied" errors.
const PRIVILEGES_HINT: &str = " (to create a task hub, the database user needs the CREATE \
    privilege on the database; or an administrator creates the schema, owned by that user, \
    and the store creates its tables in it)";

/// The migrations, in order: entry `n` brings the schema from version `n` to `n + 1`.
/// `{s}` is the quoted schema (the task hub).
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE {s}.schema_version (
    version INT NOT NULL PRIMARY KEY,
    installed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- Message seqs, activity task ids and lease tokens.
CREATE SEQUENCE {s}.ids;
CREATE TABLE {s}.instances (
    id TEXT COLLATE "C" PRIMARY KEY,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    -- The InstanceRecord as JSON.
    record TEXT NOT NULL,
    -- Earliest visible_at in the inbox; NULL when the inbox is empty.
    ready_at BIGINT,
    -- The lease: token and expiry (ms since the Unix epoch); NULL when not leased.
    lock_token BIGINT,
    locked_until BIGINT,
    -- When a worker may take the instance: its first message, or its lease expiry.
    due_at BIGINT GENERATED ALWAYS AS (
        CASE WHEN lock_token IS NULL THEN ready_at
             WHEN ready_at IS NULL THEN NULL
             ELSE GREATEST(locked_until, ready_at) END
    ) STORED
);
CREATE INDEX instances_due ON {s}.instances (due_at, id);
CREATE TABLE {s}.history (
    instance_id TEXT COLLATE "C" NOT NULL,
    idx BIGINT NOT NULL,
    event TEXT NOT NULL,
    PRIMARY KEY (instance_id, idx)
);
CREATE TABLE {s}.inbox (
    instance_id TEXT COLLATE "C" NOT NULL,
    seq BIGINT NOT NULL,
    visible_at BIGINT NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (instance_id, seq)
);
CREATE INDEX inbox_visible ON {s}.inbox (instance_id, visible_at, seq);
CREATE TABLE {s}.activities (
    id BIGINT PRIMARY KEY,
    instance_id TEXT COLLATE "C" NOT NULL,
    -- When the task may be taken: enqueue or retry time, or, while leased, the lease expiry.
    visible_at BIGINT NOT NULL,
    lock_token BIGINT,
    task TEXT NOT NULL
);
CREATE INDEX activities_visible ON {s}.activities (visible_at, id);
CREATE INDEX activities_instance ON {s}.activities (instance_id);
"#,
    r"
-- The latest heartbeat details a run recorded (JSON), replacing those in `task`.
ALTER TABLE {s}.activities ADD COLUMN heartbeat TEXT;
-- The task's heartbeat timeout (ms): it is leased for no longer than this.
ALTER TABLE {s}.activities ADD COLUMN heartbeat_timeout BIGINT;
",
    r"
-- The hold an abandoned episode left (ms; NULL: none), cleared by the next commit or a
-- terminate: the instance is not taken before it, while its messages keep their own times
-- (and order).
ALTER TABLE {s}.instances ADD COLUMN not_before BIGINT;
-- `due_at` honours the hold (a generated column's expression cannot be altered before
-- PostgreSQL 17: it is dropped, with its index, and added again).
ALTER TABLE {s}.instances DROP COLUMN due_at;
ALTER TABLE {s}.instances ADD COLUMN due_at BIGINT GENERATED ALWAYS AS (
    CASE WHEN ready_at IS NULL THEN NULL
         WHEN lock_token IS NULL THEN GREATEST(ready_at, not_before)
         ELSE GREATEST(locked_until, ready_at, not_before) END
) STORED;
CREATE INDEX instances_due ON {s}.instances (due_at, id);
-- Newest first (the dashboard's list): one page read backwards from the index.
CREATE INDEX instances_created ON {s}.instances (created_at, id);
",
];

/// A next wake time (ms, `None`: nothing to wake for) read with a fetch, and the store's
/// write count then.
#[derive(Clone, Copy)]
struct WakeHint {
    writes: u64,
    next: Option<i64>,
}

/// Options of a [`PostgresStore`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use durable_core::PostgresOptions;
///
/// let options = PostgresOptions::new("orders")
///     .pool_size(32)
///     .orchestration_lease(Duration::from_secs(30));
/// assert_eq!(options.task_hub, "orders");
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PostgresOptions {
    /// The task hub: a Postgres schema holding its tables, so several hubs share one
    /// database. ASCII letters, digits and `_`, not starting with a digit or `pg_`, at most
    /// 48 characters. Default `durable`.
    pub task_hub: String,
    /// Connections in the pool (one more is used for notifications). Default 16.
    pub pool_size: usize,
    /// Lease on an instance during an episode; `None` (the default) uses the worker's
    /// `WorkerOptions::orchestration_lock`.
    pub orchestration_lease: Option<Duration>,
    /// Lease on an activity task, renewed by the worker every half lease while the activity
    /// runs and until its result is committed; `None` (the default) uses the worker's
    /// `WorkerOptions::activity_lock`.
    pub activity_lease: Option<Duration>,
    /// How often idle workers look for work even without a notification: the safety net
    /// for a notification lost while the listening connection reconnects. Default 5 s.
    pub fallback_poll: Duration,
    /// Timeout for opening a connection. Default 10 s.
    pub connect_timeout: Duration,
    /// Send each write's `NOTIFY` inside the write's own transaction instead of right after
    /// it commits. Default `false`: Postgres serialises the commits of all transactions that
    /// notify (one lock, held through the WAL flush), which caps a busy hub's write rate.
    pub notify_in_transaction: bool,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            task_hub: "durable".to_owned(),
            pool_size: 16,
            orchestration_lease: None,
            activity_lease: None,
            fallback_poll: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            notify_in_transaction: false,
        }
    }
}

impl PostgresOptions {
    /// Default options for the task hub `task_hub`.
    pub fn new(task_hub: impl Into<String>) -> Self {
        Self::default().task_hub(task_hub)
    }
    /// Sets the task hub (the schema).
    pub fn task_hub(mut self, task_hub: impl Into<String>) -> Self {
        self.task_hub = task_hub.into();
        self
    }
    /// Sets the number of pooled connections.
    pub fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = n.max(1);
        self
    }
    /// Sets the lease on instances for every worker on this store.
    pub fn orchestration_lease(mut self, lease: Duration) -> Self {
        self.orchestration_lease = Some(lease);
        self
    }
    /// Sets the lease on activity tasks for every worker on this store.
    pub fn activity_lease(mut self, lease: Duration) -> Self {
        self.activity_lease = Some(lease);
        self
    }
    /// Sets the fallback poll interval.
    pub fn fallback_poll(mut self, every: Duration) -> Self {
        self.fallback_poll = every;
        self
    }
    /// Sets the connect timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
    /// Sends notifications inside each write's transaction; see
    /// [`notify_in_transaction`](Self::notify_in_transaction).
    pub fn notify_in_transaction(mut self, yes: bool) -> Self {
        self.notify_in_transaction = yes;
        self
    }
}

/// A [`Store`] on Postgres: any number of worker processes, on any number of machines,
/// share one task hub in one database.
///
/// Clones share one connection pool (plus a few connections for leases and one for
/// notifications). Every error (connection refused, authentication,
/// permissions, a task hub of an unknown schema version) is a [`StoreError::Backend`] whose
/// message says what failed.
///
/// # Connecting
///
/// | constructor | connections | TLS |
/// | --- | --- | --- |
/// | [`connect`](Self::connect) | from a URL | none; with the feature `postgres-rustls`, rustls for `sslmode=require` (the platform's trusted roots) |
/// | [`from_config`](Self::from_config) | from a `tokio_postgres::Config` | any `MakeTlsConnect` connector (rustls with a private CA, native-tls, …) |
/// | [`from_pool`](Self::from_pool) | the application's `deadpool_postgres::Pool` (e.g. IAM or Entra tokens per connection); no notification listener: other processes' work is found on the fallback poll | the pool's |
/// | [`from_pool_with_listener`](Self::from_pool_with_listener) | the same, and a listening connection of its own | the pool's; the listener's connector |
///
/// # Schema
///
/// The task hub is a schema, created and migrated when the store is made (under an
/// advisory lock, so any number of processes may start at once); its `schema_version` table
/// records the version, and a version newer than this build knows is refused. Values are
/// JSON text; times are milliseconds since the Unix epoch.
///
/// | table | holds |
/// | --- | --- |
/// | `instances` | one row per instance: the [`InstanceRecord`], its earliest message time (`ready_at`), its lease (`lock_token`, `locked_until`), the hold an abandoned episode left (`not_before`, until the next commit or a terminate) and `due_at`, when a worker may take it |
/// | `history` | the current execution's [`HistoryEvent`]s by `(instance_id, idx)` |
/// | `inbox` | [`Message`]s by `(instance_id, seq)`, read in `(visible_at, seq)` order |
/// | `activities` | activity tasks; `visible_at` is when one may be taken (while leased: the lease expiry); a leased task's latest heartbeat details (`heartbeat`), and its heartbeat timeout, which caps its lease |
///
/// # Leases and fencing
///
/// A worker takes an instance with `SELECT … FOR UPDATE SKIP LOCKED` on `due_at`, in the same
/// statement as it writes a fresh random lease token and the lease expiry into the row;
/// activity tasks likewise. Taking a lease is committed asynchronously (a lease lost in a
/// database crash is just a released lease, and a random token is never handed out again);
/// every other write is durable before it is acknowledged. A worker that dies leaves its
/// leases to expire; `due_at` then makes the work visible again and the next worker takes it
/// under a new token. Every commit locks the rows it touches (in id order, so commits never
/// deadlock each other) and compares the token **inside the commit's transaction**: a worker
/// whose lease was taken over (or whose instance was purged or replaced) gets
/// [`StoreError::LockLost`] and changes nothing, so an episode is applied exactly once even
/// when clocks disagree. An episode commits in one transaction: history, consumed messages,
/// status, new messages, activity tasks (and those whose results it consumed from memory),
/// timers, sub-orchestrations.
///
/// # Wake-ups
///
/// Right after each write commits, the store sends a `NOTIFY` on the channel
/// `durable_<task hub>` (coalescing the writes made meanwhile into one); with
/// [`PostgresOptions::notify_in_transaction`] it is sent inside the write's own transaction
/// instead. Each store keeps one connection `LISTEN`ing and turns other processes'
/// notifications into [`StoreSignals`] (its own writes signal in-process at once). Timers and
/// lease expiries need no notification: dispatchers sleep until
/// [`Store::next_wake_time_for`]. A slow poll ([`PostgresOptions::fallback_poll`]) covers
/// notifications lost while reconnecting.
///
/// # Examples
///
/// ```no_run
/// use durable_core::prelude::*;
/// use durable_core::{PostgresOptions, PostgresStore};
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = PostgresStore::connect(
///     "postgres://durable@db.internal:5432/app",
///     PostgresOptions::new("orders"),
/// )
/// .await?;
/// let worker = Worker::builder().store(store).start()?;
/// # worker.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    /// Connections for leases: their sessions commit asynchronously; or, on a user's pool,
    /// that pool (`lease_local`).
    lease_pool: Pool,
    /// Lease statements set `synchronous_commit` off in a transaction of their own (see
    /// [`PostgresStore::leasing`]), as the lease pool's connections are the user's.
    lease_local: bool,
    sql: Sql,
    hub: String,
    channel: String,
    /// Identifies this store in notification payloads, so it ignores its own.
    origin: String,
    options: PostgresOptions,
    signals: Arc<StoreSignals>,
    notifier: Arc<Notifier>,
    /// Episode commits waiting to be committed together.
    commits: std::sync::Mutex<Commits>,
    /// Bumped by every write of this store (see [`signal`](PostgresStore::signal)).
    writes: AtomicU64,
    /// The next wake times (orchestrations, activities) read in the same round trip as the
    /// last fetch of that kind, with the [`writes`](Self::writes) count they were read at:
    /// the dispatcher that goes idle right after its fetch needs no query of its own.
    wake_hints: std::sync::Mutex<[Option<WakeHint>; 2]>,
    listener: JoinHandle<()>,
    notifier_task: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.listener.abort();
        self.notifier_task.abort();
    }
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.inner.pool.status();
        f.debug_struct("PostgresStore")
            .field("task_hub", &self.inner.hub)
            .field("pool_size", &status.size)
            .field("pool_max_size", &status.max_size)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to the database at `url` (a `postgres://user:password@host:port/database`
    /// URL or a `host=… user=… dbname=…` string), creates or migrates the task hub's schema,
    /// and starts listening for other processes' notifications.
    ///
    /// Without the feature `postgres-rustls` the connections use no TLS (`sslmode=require`
    /// fails): run them over a trusted network, or give a TLS connector to
    /// [`from_config`](Self::from_config). With it, a URL with `sslmode=require` connects
    /// over TLS (rustls), verifying the server's certificate against the platform's trusted
    /// roots (or, when the platform has none, the Mozilla roots of `webpki-roots`); other
    /// URLs (`sslmode=prefer`, the default, and `disable`) connect without TLS as before. For
    /// a private CA, build the connector yourself and use [`from_config`](Self::from_config).
    ///
    /// # Errors
    ///
    /// [`StoreError::Backend`] when the URL is invalid, the server cannot be reached or
    /// refuses the login (or the TLS handshake), the user may not create the schema, the
    /// schema exists but is not a task hub, or it holds a schema version newer than this
    /// build knows.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use durable_core::{PostgresOptions, PostgresStore};
    ///
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), durable_core::StoreError> {
    /// let store = PostgresStore::connect("postgres://postgres@localhost/app", PostgresOptions::default()).await?;
    /// assert_eq!(store.task_hub(), "durable");
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str, options: PostgresOptions) -> Result<Self, StoreError> {
        let config: Config = url.parse().map_err(|e| {
            StoreError::backend_with(
                format!("invalid PostgreSQL connection string: {}", describe(&e)),
                e,
            )
        })?;
        #[cfg(feature = "postgres-rustls")]
        if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
            return Self::from_config(config, tls::platform_connector()?, options).await;
        }
        Self::from_config(config, NoTls, options).await
    }

    /// Connects with `config` through the TLS connector `tls` (any
    /// [`MakeTlsConnect`](tokio_postgres::tls::MakeTlsConnect), e.g. `NoTls`,
    /// `tokio_postgres_rustls::MakeRustlsConnect` or `postgres_native_tls::MakeTlsConnector`),
    /// creates or migrates the task hub's schema, and starts listening for other processes'
    /// notifications on a connection of its own (reopened with `config` and `tls` when it is
    /// lost).
    ///
    /// Like [`connect`](Self::connect), it opens a pool of
    /// [`pool_size`](PostgresOptions::pool_size) connections, a few more for taking leases
    /// (whose sessions commit asynchronously) and one for notifications. An
    /// `application_name` (`durable`) and a connect timeout
    /// ([`PostgresOptions::connect_timeout`]) are set when `config` has none.
    ///
    /// `config` and `tls` are of `tokio-postgres` 0.7, re-exported as
    /// [`durable_core::tokio_postgres`](crate::tokio_postgres) (depend on the same version,
    /// or use the re-export). With the feature `postgres-rustls`, rustls and its connector
    /// are re-exported as [`durable_core::rustls`](crate::rustls) and
    /// [`durable_core::tokio_postgres_rustls`](crate::tokio_postgres_rustls).
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    ///
    /// # Examples
    ///
    /// A server whose certificate is signed by a private CA, over rustls (feature
    /// `postgres-rustls`):
    ///
    /// ```no_run
    /// # #[cfg(feature = "postgres-rustls")]
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use durable_core::rustls::{self, pki_types::{CertificateDer, pem::PemObject}};
    /// use durable_core::tokio_postgres::Config;
    /// use durable_core::tokio_postgres_rustls::MakeRustlsConnect;
    /// use durable_core::{PostgresOptions, PostgresStore};
    ///
    /// let mut roots = rustls::RootCertStore::empty();
    /// for cert in CertificateDer::pem_file_iter("/etc/durable/db-ca.pem")? {
    ///     roots.add(cert?)?;
    /// }
    /// // The process's default crypto provider: ring, when no other is enabled.
    /// let tls = rustls::ClientConfig::builder()
    ///     .with_root_certificates(roots)
    ///     .with_no_client_auth();
    /// let config: Config = "postgres://durable@db.internal/app?sslmode=require".parse()?;
    /// let store =
    ///     PostgresStore::from_config(config, MakeRustlsConnect::new(tls), PostgresOptions::new("orders"))
    ///         .await?;
    /// # drop(store);
    /// # Ok(()) }
    /// # #[cfg(not(feature = "postgres-rustls"))]
    /// # fn main() {}
    /// ```
    #[allow(clippy::similar_names, reason = "config and lease_config")]
    pub async fn from_config<T>(
        mut config: Config,
        tls: T,
        options: PostgresOptions,
    ) -> Result<Self, StoreError>
    where
        T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
        T::Stream: Send + Sync,
        T::TlsConnect: Send + Sync,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        validate_hub(&options.task_hub)?;
        set_defaults(&mut config, &options);
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = build_pool(manager, options.pool_size.max(1), &options)?;
        // Leases are taken on their own connections with asynchronous commit: a lease lost
        // in a database crash is a released lease, so taking one need not wait for the WAL
        // flush. Every other write is durable before it is acknowledged.
        let mut lease_config = config.clone();
        let session = match config.get_options() {
            Some(o) => format!("{o} -c synchronous_commit=off"),
            None => "-c synchronous_commit=off".to_owned(),
        };
        lease_config.options(&session);
        let lease_pool = build_pool(
            Manager::from_config(
                lease_config,
                tls.clone(),
                ManagerConfig {
                    recycling_method: RecyclingMethod::Fast,
                },
            ),
            LEASE_POOL_SIZE,
            &options,
        )?;
        Self::start(
            pool,
            lease_pool,
            false,
            Some(listen_connector(config, tls)),
            options,
        )
        .await
    }

    /// A store on a connection pool the application built (say, with a custom
    /// [`Manager`](deadpool_postgres::Manager) or hook that fetches a short-lived IAM or
    /// Entra token per connection): creates or migrates the task hub's schema through it.
    ///
    /// Everything runs on `pool` (of `deadpool-postgres` 0.14, re-exported as
    /// [`durable_core::deadpool_postgres`](crate::deadpool_postgres));
    /// [`PostgresOptions::pool_size`] does not apply, and the pool should hold at least a
    /// few connections (episode commits, fetches and notifications use one each at a time).
    /// Its connections' session state is left as it is: taking or renewing a lease runs in
    /// a transaction of its own that turns `synchronous_commit` off for that transaction
    /// alone (`SET LOCAL`, in the same round trip), and each notification likewise.
    ///
    /// **No notifications are received**: a pooled connection cannot `LISTEN` (the pool's
    /// connection task drops what arrives). Writes of this store still wake its own
    /// workers at once, but work written by other processes is found on the next
    /// [`fallback_poll`](PostgresOptions::fallback_poll) (default 5 s), and timers as
    /// usual. Lower `fallback_poll`, or give a connection to listen on with
    /// [`from_pool_with_listener`](Self::from_pool_with_listener).
    ///
    /// # Errors
    ///
    /// [`StoreError::Backend`] when the task hub's name is invalid, no connection can be
    /// had from `pool`, or the schema cannot be created or migrated (as
    /// [`connect`](Self::connect)).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use durable_core::deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
    /// use durable_core::tokio_postgres::{Config, NoTls};
    /// use durable_core::{PostgresOptions, PostgresStore};
    ///
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let config: Config = "postgres://durable@db.internal/app".parse()?;
    /// let manager = Manager::from_config(
    ///     config,
    ///     NoTls,
    ///     ManagerConfig { recycling_method: RecyclingMethod::Fast },
    /// );
    /// let pool = Pool::builder(manager).max_size(16).build()?;
    /// let store = PostgresStore::from_pool(
    ///     pool,
    ///     PostgresOptions::new("orders").fallback_poll(Duration::from_millis(500)),
    /// )
    /// .await?;
    /// # drop(store);
    /// # Ok(()) }
    /// ```
    pub async fn from_pool(pool: Pool, options: PostgresOptions) -> Result<Self, StoreError> {
        validate_hub(&options.task_hub)?;
        Self::start(pool.clone(), pool, true, None, options).await
    }

    /// Like [`from_pool`](Self::from_pool), and listens for other processes' notifications
    /// on a connection of its own opened with `listen_config` and `tls` (and reopened with
    /// them when it is lost), so their work is picked up at once rather than on the
    /// fallback poll.
    ///
    /// `listen_config` is used as it is each time (an `application_name` and connect
    /// timeout are added when it has none): a password that expires (an IAM token) must
    /// stay valid for reconnections, or the listener keeps retrying while the fallback poll
    /// carries on.
    ///
    /// # Errors
    ///
    /// As [`from_pool`](Self::from_pool), and when the listening connection cannot be
    /// opened.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use durable_core::deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
    /// use durable_core::tokio_postgres::{Config, NoTls};
    /// use durable_core::{PostgresOptions, PostgresStore};
    ///
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let config: Config = "postgres://durable@db.internal/app".parse()?;
    /// let manager = Manager::from_config(
    ///     config.clone(),
    ///     NoTls,
    ///     ManagerConfig { recycling_method: RecyclingMethod::Fast },
    /// );
    /// let pool = Pool::builder(manager).max_size(16).build()?;
    /// let store =
    ///     PostgresStore::from_pool_with_listener(pool, config, NoTls, PostgresOptions::new("orders"))
    ///         .await?;
    /// # drop(store);
    /// # Ok(()) }
    /// ```
    pub async fn from_pool_with_listener<T>(
        pool: Pool,
        mut listen_config: Config,
        tls: T,
        options: PostgresOptions,
    ) -> Result<Self, StoreError>
    where
        T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
        T::Stream: Send + Sync,
        T::TlsConnect: Send + Sync,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        validate_hub(&options.task_hub)?;
        set_defaults(&mut listen_config, &options);
        let connector = listen_connector(listen_config, tls);
        Self::start(pool.clone(), pool, true, Some(connector), options).await
    }

    /// Migrates the task hub through `pool`, starts the listener (with `listen`; without,
    /// only the fallback poll) and the notifier. `lease_local`: leases are taken on the
    /// main pool's connections (see [`leasing`](Self::leasing)).
    async fn start(
        pool: Pool,
        lease_pool: Pool,
        lease_local: bool,
        listen: Option<ListenConnector>,
        options: PostgresOptions,
    ) -> Result<Self, StoreError> {
        let hub = options.task_hub.clone();
        let schema = quote_ident(&hub);
        migrate(&pool, &hub, &schema).await?;

        let channel = format!("durable_{hub}");
        let origin = format!("{:032x}", uuid::Uuid::new_v4().as_u128());
        let signals = Arc::new(StoreSignals::default());
        let first = match &listen {
            Some(connect) => Some(connect(channel.clone()).await.map_err(|e| {
                StoreError::backend_with(
                    format!(
                        "task hub `{hub}`: cannot open the notification connection: {}",
                        describe(&e)
                    ),
                    e,
                )
            })?),
            None => None,
        };
        let listener = tokio::spawn(
            Listener {
                connect: listen,
                channel: channel.clone(),
                origin: origin.clone(),
                signals: Arc::clone(&signals),
                poll: options.fallback_poll,
            }
            .run(first),
        );
        let notifier = Arc::new(Notifier::default());
        let notifier_task = tokio::spawn(Arc::clone(&notifier).run(
            pool.clone(),
            format!(
                "BEGIN; SET LOCAL synchronous_commit TO OFF; NOTIFY {}, '{origin}:",
                quote_ident(&channel)
            ),
        ));
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                lease_pool,
                lease_local,
                sql: Sql::new(&schema),
                hub,
                channel,
                origin,
                options,
                signals,
                notifier,
                commits: std::sync::Mutex::default(),
                writes: AtomicU64::new(0),
                wake_hints: std::sync::Mutex::default(),
                listener,
                notifier_task,
            }),
        })
    }

    /// The task hub (schema) this store works in.
    pub fn task_hub(&self) -> &str {
        &self.inner.hub
    }

    /// Removes the task hub: its schema and everything in it. Other processes on the hub
    /// fail from then on. For tests and tear-down.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use durable_core::{PostgresOptions, PostgresStore};
    ///
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), durable_core::StoreError> {
    /// let store = PostgresStore::connect("postgres://postgres@localhost/test", PostgresOptions::new("scratch")).await?;
    /// store.drop_task_hub().await?;
    /// # Ok(()) }
    /// ```
    pub async fn drop_task_hub(&self) -> Result<(), StoreError> {
        let hub = self.inner.hub.clone();
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", quote_ident(&hub));
        retry_tx!(self, "dropping the task hub", tx => async {
            tx.execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                &[&MIGRATION_LOCK, &hub],
            )
            .await?;
            tx.batch_execute(&sql).await?;
            Ok::<(), Error>(())
        })
    }

    fn err(&self, what: &str, e: Error) -> StoreError {
        match e {
            Error::Op(e) => e,
            Error::Db(e) => StoreError::backend_with(
                format!(
                    "PostgreSQL store, task hub `{}`: {what}: {}",
                    self.inner.hub,
                    describe(&e)
                ),
                e,
            ),
            Error::Other(msg, source) => {
                let e = BackendError::new(format!(
                    "PostgreSQL store, task hub `{}`: {what}: {msg}",
                    self.inner.hub
                ));
                match source {
                    Some(s) => e.with_shared_source(Arc::from(s)),
                    None => e,
                }
                .into()
            }
        }
    }

    async fn conn(&self) -> R<Object> {
        get(&self.inner.pool).await
    }

    /// A connection for taking and renewing leases: one of the lease pool's (whose sessions
    /// commit asynchronously), or, on a user's pool, one of its own (see
    /// [`leasing`](Self::leasing)).
    async fn lease_conn(&self) -> R<Object> {
        get(&self.inner.lease_pool).await
    }

    /// Runs `work`, statements on `conn` (a [`lease_conn`](Self::lease_conn)) that are all
    /// sent on its first poll, so they commit asynchronously: on a lease pool's connection
    /// the session already does; on a user's pool (`lease_local`) they run in one
    /// transaction that sets `synchronous_commit` off for itself alone (`SET LOCAL`), its
    /// `BEGIN` and `COMMIT` pipelined with the statements in the same round trip. The
    /// `COMMIT` is queued before `work` can fail or be dropped, so the connection goes back
    /// to the pool outside any transaction (a failed statement's transaction is rolled
    /// back by it).
    async fn leasing<T>(&self, conn: &Object, work: impl Future<Output = R<T>>) -> R<T> {
        if !self.inner.lease_local {
            return work.await;
        }
        let ((), out, ()) = tokio::try_join!(
            async {
                conn.batch_execute("BEGIN; SET LOCAL synchronous_commit TO OFF")
                    .await
                    .map_err(Error::from)
            },
            work,
            async { conn.batch_execute("COMMIT").await.map_err(Error::from) },
        )?;
        Ok(out)
    }

    /// Sends the signals for `wake` in this process, and (unless the write's transaction
    /// did) has the notifier tell the other processes.
    fn signal(&self, wake: Wake) {
        // Wake times read before this write may be stale.
        self.inner.writes.fetch_add(1, Ordering::AcqRel);
        if !self.inner.options.notify_in_transaction {
            self.inner.notifier.post(wake);
        }
        let s = &self.inner.signals;
        if wake.activity {
            s.activity_work();
        }
        if wake.orchestration {
            s.orchestration_work();
        }
        if wake.finished {
            s.instance_finished();
        } else if wake.changed {
            s.changed.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// With [`PostgresOptions::notify_in_transaction`], queues the `NOTIFY` for `wake` in
    /// `tx` (delivered if `tx` commits).
    async fn notify(&self, tx: &Transaction<'_>, wake: Wake) -> R<()> {
        if !self.inner.options.notify_in_transaction {
            return Ok(());
        }
        let kinds = wake.kinds();
        if kinds.is_empty() {
            return Ok(());
        }
        let payload = format!("{}:{kinds}", self.inner.origin);
        let st = tx.prepare_cached("SELECT pg_notify($1, $2)").await?;
        tx.execute(&st, &[&self.inner.channel, &payload]).await?;
        Ok(())
    }

    /// Creates (or replaces) an instance inside `tx`; its start message goes to `batch`.
    async fn create_in(
        &self,
        tx: &Transaction<'_>,
        new: &NewInstance,
        batch: &mut Enqueue,
    ) -> R<Result<CreateResult, StoreError>> {
        let sql = &self.inner.sql;
        let key = new.instance_id.as_str();
        for _ in 0..MAX_ATTEMPTS {
            let select = tx.prepare_cached(&sql.select_for_update).await?;
            let existing = match tx.query_opt(&select, &[&key]).await? {
                Some(row) => Some(decode::<InstanceRecord>(row.try_get(0)?)?),
                None => None,
            };
            let mut teardown = None;
            if let Some(existing) = &existing {
                match replace::decide(new.reuse, existing.status.is_terminal()) {
                    Reuse::Existing => return Ok(Ok(CreateResult::Existing(existing.clone()))),
                    Reuse::Reject => {
                        return Ok(Err(StoreError::InstanceAlreadyExists(key.to_owned())));
                    }
                    Reuse::Replace => {}
                    Reuse::TerminateAndReplace => {
                        let history = self.history_in(tx, key).await?;
                        let inbox = self.inbox_in(tx, key).await?;
                        teardown = Some(Teardown::new(existing, &history, &inbox, new.created_at));
                    }
                }
            }
            let record = new.record(existing.as_ref());
            let json = serde_json::to_string(&record)?;
            let status = record.status.as_str();
            let created = ts(record.created_at);
            let params: [&(dyn ToSql + Sync); 5] = [&key, &record.name, &status, &created, &json];
            if existing.is_some() {
                let (del_history, del_inbox, del_tasks, replace) = tokio::try_join!(
                    tx.prepare_cached(&sql.delete_history),
                    tx.prepare_cached(&sql.delete_inbox),
                    tx.prepare_cached(&sql.delete_activities),
                    tx.prepare_cached(&sql.replace_instance),
                )?;
                tokio::try_join!(
                    async { tx.execute(&del_history, &[&key]).await },
                    async { tx.execute(&del_inbox, &[&key]).await },
                    async { tx.execute(&del_tasks, &[&key]).await },
                    tx.execute(&replace, &params),
                )?;
            } else {
                let insert = tx.prepare_cached(&sql.insert_instance).await?;
                if tx.execute(&insert, &params).await? == 0 {
                    // Created by a concurrent transaction since we looked: look again.
                    continue;
                }
            }
            batch.push(key, &new.start_message())?;
            batch.touch(key);
            if let Some(t) = teardown {
                self.tear_down(tx, t, batch).await?;
            }
            return Ok(Ok(CreateResult::Created(record)));
        }
        Err(Error::Other(
            format!("instance `{key}` kept appearing and disappearing while being created"),
            None,
        ))
    }

    async fn history_in(&self, tx: &Transaction<'_>, key: &str) -> R<Vec<HistoryEvent>> {
        let st = tx.prepare_cached(&self.inner.sql.read_history).await?;
        let mut out = Vec::new();
        for row in tx.query(&st, &[&key]).await? {
            out.push(decode_event(row.try_get(0)?)?);
        }
        Ok(out)
    }

    async fn inbox_in(&self, tx: &Transaction<'_>, key: &str) -> R<Vec<Event>> {
        let st = tx.prepare_cached(&self.inner.sql.read_inbox).await?;
        let mut out = Vec::new();
        for row in tx.query(&st, &[&key]).await? {
            out.push(decode::<Message>(row.try_get(0)?)?.event);
        }
        Ok(out)
    }

    /// Terminates the running descendants of an execution being replaced inside `tx`, and
    /// queues the teardown's messages to `batch` (to instances that exist).
    async fn tear_down(&self, tx: &Transaction<'_>, mut t: Teardown, batch: &mut Enqueue) -> R<()> {
        let sql = &self.inner.sql;
        while let Some((id, parent)) = t.next() {
            let key = id.as_str();
            let select = tx.prepare_cached(&sql.select_for_update).await?;
            let record = match tx.query_opt(&select, &[&key]).await? {
                Some(row) => Some(decode::<InstanceRecord>(row.try_get(0)?)?),
                None => None,
            };
            if !record.as_ref().is_some_and(|r| r.is_child_of(&parent)) {
                continue;
            }
            let Some(record) = record else { continue };
            let history = self.history_in(tx, key).await?;
            let inbox = self.inbox_in(tx, key).await?;
            let Some((record, events)) = t.visit(record, &history, &inbox) else {
                continue;
            };
            let events = events
                .iter()
                .map(serde_json::to_string)
                .collect::<Result<Vec<_>, _>>()?;
            let json = serde_json::to_string(&record)?;
            let status = record.status.as_str();
            let (append, del_inbox, update) = tokio::try_join!(
                tx.prepare_cached(&sql.append_history),
                tx.prepare_cached(&sql.delete_inbox),
                tx.prepare_cached(&sql.update_record),
            )?;
            let owners = vec![key; events.len()];
            tx.execute(&append, &[&owners, &events]).await?;
            tx.execute(&del_inbox, &[&key]).await?;
            // Clears the lease (a worker mid-episode loses its commit) and `ready_at`.
            tx.execute(&update, &[&key, &status, &json]).await?;
        }
        let targets: Vec<&str> = t.messages.iter().map(|(id, _)| id.as_str()).collect();
        let st = tx.prepare_cached(&sql.existing_ids).await?;
        let existing: HashSet<String> = tx
            .query(&st, &[&targets])
            .await?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?;
        for (target, m) in &t.messages {
            if existing.contains(target.as_str()) {
                batch.push(target.as_str(), m)?;
            }
        }
        Ok(())
    }

    async fn create_tx(&self, tx: &Transaction<'_>, new: &NewInstance) -> R<CreateResult> {
        let mut batch = Enqueue::default();
        let created = self
            .create_in(tx, new, &mut batch)
            .await?
            .map_err(Error::Op)?;
        batch.flush(self, tx).await?;
        self.notify(tx, Wake::CREATED).await?;
        Ok(created)
    }

    async fn send_tx(&self, tx: &Transaction<'_>, id: &InstanceId, message: &Message) -> R<()> {
        let key = id.as_str();
        let select = tx.prepare_cached(&self.inner.sql.select_status).await?;
        let Some(row) = tx.query_opt(&select, &[&key]).await? else {
            return Err(Error::Op(StoreError::InstanceNotFound(key.to_owned())));
        };
        let status = RuntimeStatus::parse(row.try_get(0)?);
        let accepted = status.is_none_or(|s| super::accepts_message(s, &message.event));
        if !accepted {
            return Err(Error::Op(StoreError::InstanceNotRunning(key.to_owned())));
        }
        if let (Some(status), true) = (status, super::is_control_request(&message.event)) {
            // Under the row lock taken above, as every commit to this instance takes it.
            let read = tx.prepare_cached(&self.inner.sql.read_inbox).await?;
            let mut queued = Vec::new();
            for row in tx.query(&read, &[&key]).await? {
                queued.push(decode::<Message>(row.try_get(0)?)?.event);
            }
            super::check_control(id, status, &queued, &message.event).map_err(Error::Op)?;
        }
        let mut batch = Enqueue::default();
        batch.push(key, message)?;
        batch.flush(self, tx).await?;
        self.notify(tx, Wake::ORCHESTRATION).await
    }

    /// Applies an episode with sub-orchestrations to create inside `tx`; returns whom to
    /// wake. (Episodes without go through [`commit_batch_tx`].)
    ///
    /// [`commit_batch_tx`]: Self::commit_batch_tx
    async fn commit_tx(&self, tx: &Transaction<'_>, c: &EpisodeCommit) -> R<Wake> {
        let sql = &self.inner.sql;
        let key = c.instance_id.as_str();
        // Lock every row this commit touches, in id order, so concurrent commits never
        // deadlock; then check the lease under that lock.
        let ids: Vec<&str> = commit_ids(c).into_iter().collect();
        let lock_rows = tx.prepare_cached(&sql.lock_rows).await?;
        let rows = tx.query(&lock_rows, &[&ids, &vec![key]]).await?;
        let mut locked = Locked::read(&rows)?;
        let record = locked.lease(c)?;
        let execution = record.execution;

        // Sub-orchestrations first: a refused child becomes a failure message to us.
        let mut writes = Writes::default();
        let mut refusals = Vec::new();
        for (seq, child) in &c.new_instances {
            let child_id = &child.instance_id;
            let refused = if *child_id == c.instance_id {
                Some("a sub-orchestration cannot take its parent's id".to_owned())
            } else {
                match self.create_in(tx, child, &mut writes.batch).await? {
                    Ok(_) => {
                        locked.existing.insert(child_id.as_str().to_owned());
                        None
                    }
                    Err(e) => Some(e.to_string()),
                }
            };
            if let Some(reason) = refused {
                refusals.push(Message::new(
                    Event::SubOrchestrationFailed {
                        seq: *seq,
                        failure: FailureDetails::new(
                            "SubOrchestrationNotCreated",
                            format!("could not create sub-orchestration `{child_id}`: {reason}"),
                        ),
                    },
                    Some(execution),
                    c.now,
                ));
            }
        }
        writes.add(c, record, &refusals, &locked.existing)?;
        let mut wake = writes.run(self, tx, false).await?;
        // A child may replace (and terminate) an instance.
        wake.finished = true;
        self.notify(tx, wake).await?;
        Ok(wake)
    }

    /// Inserts `record`, a brand-new instance, leased under `first`'s token, for `first` to
    /// be committed in the same transaction ([`Store::create_started`]); `false`, with
    /// nothing written, when the id is taken.
    async fn insert_started<C: GenericClient>(
        &self,
        tx: &C,
        record: &InstanceRecord,
        first: &EpisodeCommit,
    ) -> R<bool> {
        let st = tx.prepare_cached(&self.inner.sql.insert_started).await?;
        let json = serde_json::to_string(record)?;
        let status = record.status.as_str();
        let params: [&(dyn ToSql + Sync); 7] = [
            &record.instance_id.as_str(),
            &record.name,
            &status,
            &ts(record.created_at),
            &json,
            &to_i64(first.lock.0),
            &ts(first.now),
        ];
        Ok(tx.execute(&st, &params).await? > 0)
    }

    /// [`Store::create_started`] in one transaction of any shape (sub-orchestrations,
    /// [`PostgresOptions::notify_in_transaction`]): `None` when the id is taken.
    async fn create_started_tx(
        &self,
        tx: &Transaction<'_>,
        record: &InstanceRecord,
        first: &EpisodeCommit,
    ) -> R<Option<Wake>> {
        if !self.insert_started(tx, record, first).await? {
            return Ok(None);
        }
        self.commit_tx(tx, first).await.map(Some)
    }

    /// [`Store::create_started`] for a first episode without sub-orchestrations, in two
    /// round trips as [`commit_batch_pipelined`](Self::commit_batch_pipelined): `BEGIN`,
    /// the insert and the lock statement pipelined, then the writes with `COMMIT` (or a
    /// `ROLLBACK` when the id is taken: `None`). Not with
    /// [`PostgresOptions::notify_in_transaction`].
    async fn create_started_pipelined(
        &self,
        record: &InstanceRecord,
        first: &EpisodeCommit,
    ) -> R<Option<Wake>> {
        let sql = &self.inner.sql;
        let ids: Vec<&str> = commit_ids(first).into_iter().collect();
        let owners = vec![first.instance_id.as_str()];
        let json = serde_json::to_string(record)?;
        let status = record.status.as_str();
        let key = record.instance_id.as_str();
        let (created, token, until) = (ts(record.created_at), to_i64(first.lock.0), ts(first.now));
        let conn = self.conn().await?;
        let (insert, lock_rows) = tokio::try_join!(
            conn.prepare_cached(&sql.insert_started),
            conn.prepare_cached(&sql.lock_rows),
        )?;
        let open = OpenTx(Some(conn));
        let conn = open.conn()?;
        let insert_params: [&(dyn ToSql + Sync); 7] =
            [&key, &record.name, &status, &created, &json, &token, &until];
        let lock_params: [&(dyn ToSql + Sync); 2] = [&ids, &owners];
        let result = async {
            let ((), inserted, rows) = tokio::try_join!(
                conn.batch_execute("BEGIN"),
                conn.execute(&insert, &insert_params),
                conn.query(&lock_rows, &lock_params),
            )?;
            if inserted == 0 {
                conn.batch_execute("ROLLBACK").await?;
                return Ok(None);
            }
            let mut locked = Locked::read(&rows)?;
            let own = locked.lease(first)?;
            let mut writes = Writes::default();
            writes.add(first, own, &[], &locked.existing)?;
            writes.run(self, conn, true).await.map(Some)
        }
        .await;
        if result.is_err() {
            // Awaited, so the row locks are gone before the caller goes on.
            let _ = conn.batch_execute("ROLLBACK").await;
        }
        open.close();
        result
    }

    /// Applies episodes without sub-orchestrations (each instance at most once) inside one
    /// transaction: one statement locks every row they touch (in id order), then one
    /// statement per kind of write covers them all, pipelined. Answers each episode's
    /// outcome (whether it enqueued activity tasks, or `LockLost`: that episode changes
    /// nothing, the others commit).
    async fn commit_batch_tx(
        &self,
        tx: &Transaction<'_>,
        commits: &[EpisodeCommit],
    ) -> R<(Vec<Result<(), StoreError>>, Wake)> {
        let sql = &self.inner.sql;
        let mut ids = BTreeSet::new();
        for c in commits {
            ids.extend(commit_ids(c));
        }
        let ids: Vec<&str> = ids.into_iter().collect();
        let owners: Vec<&str> = commits.iter().map(|c| c.instance_id.as_str()).collect();
        let lock_rows = tx.prepare_cached(&sql.lock_rows).await?;
        let rows = tx.query(&lock_rows, &[&ids, &owners]).await?;
        let mut locked = Locked::read(&rows)?;
        let mut writes = Writes::default();
        let mut out = Vec::with_capacity(commits.len());
        for c in commits {
            match locked.lease(c) {
                Ok(record) => {
                    writes.add(c, record, &[], &locked.existing)?;
                    out.push(Ok(()));
                }
                Err(Error::Op(e)) => out.push(Err(e)),
                Err(e) => return Err(e),
            }
        }
        if writes.record_ids.is_empty() {
            return Ok((out, Wake::default()));
        }
        let wake = writes.run(self, tx, false).await?;
        self.notify(tx, wake).await?;
        Ok((out, wake))
    }

    /// [`commit_batch_tx`](Self::commit_batch_tx) in two round trips: `BEGIN` pipelined
    /// with the lock statement, the writes pipelined with `COMMIT` (a failed statement
    /// aborts the transaction, and `COMMIT` then rolls it back). Not with
    /// [`PostgresOptions::notify_in_transaction`].
    async fn commit_batch_pipelined(
        &self,
        commits: &[EpisodeCommit],
    ) -> R<(Vec<Result<(), StoreError>>, Wake)> {
        let sql = &self.inner.sql;
        let mut ids = BTreeSet::new();
        for c in commits {
            ids.extend(commit_ids(c));
        }
        let ids: Vec<&str> = ids.into_iter().collect();
        let owners: Vec<&str> = commits.iter().map(|c| c.instance_id.as_str()).collect();
        let conn = self.conn().await?;
        let lock_rows = conn.prepare_cached(&sql.lock_rows).await?;
        let open = OpenTx(Some(conn));
        let conn = open.conn()?;
        let lock_params: [&(dyn ToSql + Sync); 2] = [&ids, &owners];
        let result = async {
            let ((), rows) = tokio::try_join!(
                conn.batch_execute("BEGIN"),
                conn.query(&lock_rows, &lock_params),
            )?;
            let mut locked = Locked::read(&rows)?;
            let mut writes = Writes::default();
            let mut out = Vec::with_capacity(commits.len());
            for c in commits {
                match locked.lease(c) {
                    Ok(record) => {
                        writes.add(c, record, &[], &locked.existing)?;
                        out.push(Ok(()));
                    }
                    Err(Error::Op(e)) => out.push(Err(e)),
                    Err(e) => return Err(e),
                }
            }
            if writes.record_ids.is_empty() {
                conn.batch_execute("COMMIT").await?;
                return Ok((out, Wake::default()));
            }
            let wake = writes.run(self, conn, true).await?;
            Ok((out, wake))
        }
        .await;
        if result.is_err() {
            // Awaited, so the row locks are gone before the caller goes on. (After a
            // pipelined `COMMIT` there is no transaction left: a warning, no harm.)
            let _ = conn.batch_execute("ROLLBACK").await;
        }
        open.close();
        result
    }

    /// Commits `commits` (episodes without sub-orchestrations) in one transaction, retried
    /// when Postgres aborts it; if it fails otherwise, each episode is committed on its
    /// own, so one episode's failure is not the others'. Answers each episode's outcome and
    /// whom to wake.
    async fn commit_batch(&self, commits: &[EpisodeCommit]) -> (Vec<Result<(), StoreError>>, Wake) {
        let timer = CommitTimer::start();
        let batch = if self.inner.options.notify_in_transaction {
            retry_tx!(self, "committing episodes", tx => self.commit_batch_tx(&tx, commits))
        } else {
            let mut attempt = 0u32;
            loop {
                attempt += 1;
                match self.commit_batch_pipelined(commits).await {
                    Err(Error::Db(e)) if attempt < MAX_ATTEMPTS && retryable(&e) => {
                        tracing::debug!(error = %e, attempt, "transaction aborted by PostgreSQL; retrying");
                        pause(Duration::from_millis(u64::from(attempt) * 5)).await;
                    }
                    other => break other.map_err(|e| self.err("committing episodes", e)),
                }
            }
        };
        match batch {
            Ok(out) => {
                timer.record("postgres", commits.len());
                out
            }
            Err(e) if commits.len() == 1 => (vec![Err(e)], Wake::default()),
            Err(e) => {
                tracing::debug!(error = %e, n = commits.len(), "a batch of episode commits failed; committing them one by one");
                let mut out = Vec::with_capacity(commits.len());
                let mut wake = Wake::default();
                for c in commits {
                    let one = retry_tx!(self, "committing an episode", tx => {
                        self.commit_batch_tx(&tx, std::slice::from_ref(c))
                    });
                    out.push(match one {
                        Ok((mut r, w)) => {
                            wake = wake.or(w);
                            r.pop().unwrap_or(Ok(()))
                        }
                        Err(e) => Err(e),
                    });
                }
                (out, wake)
            }
        }
    }

    /// The next batch of queued episode commits (each instance at most once: a later
    /// commit to the same instance, after a lease it lost, say, waits for the next batch);
    /// `None` if none are queued.
    fn next_batch(&self) -> Option<Vec<PendingCommit>> {
        let mut q = lock(&self.inner.commits);
        if q.queue.is_empty() {
            return None;
        }
        let mut seen = HashSet::new();
        let mut batch = Vec::new();
        let mut rest = std::collections::VecDeque::new();
        while let Some(p) = q.queue.pop_front() {
            if p.reply.is_closed() {
                // Its caller is gone (an aborted worker's episode, say): not written. Writing
                // it would be safe too (the commit checks the lease in its transaction, so
                // it applies only if no one took the instance over), but a worker that was
                // stopped writes nothing more; the lease expires and the episode runs again.
                continue;
            }
            if batch.len() < MAX_BATCH && seen.insert(p.commit.instance_id.clone()) {
                batch.push(p);
            } else {
                rest.push_back(p);
            }
        }
        q.queue = rest;
        (!batch.is_empty()).then_some(batch)
    }

    /// Commits a batch and answers each of its episodes.
    async fn run_batch(&self, batch: Vec<PendingCommit>) {
        let (commits, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|p| (p.commit, p.reply)).unzip();
        let (results, wake) = self.commit_batch(&commits).await;
        // Signalled first: a caller that sees its commit done finds its signals sent.
        self.signal(wake);
        for (result, reply) in results.into_iter().zip(replies) {
            let _ = reply.send(result);
        }
    }

    /// Runs batches until none are queued, holding `leader`'s slot.
    async fn lead_commits(self, leader: Leader) {
        while let Some(batch) = self.next_batch() {
            self.run_batch(batch).await;
        }
        drop(leader);
    }

    async fn abandon_tx(
        &self,
        tx: &Transaction<'_>,
        id: &InstanceId,
        lock: LockToken,
        retry_at: Timestamp,
        error: Option<&str>,
    ) -> R<()> {
        let sql = &self.inner.sql;
        let key = id.as_str();
        let lock_rows = tx.prepare_cached(&sql.lock_rows).await?;
        let rows = tx.query(&lock_rows, &[&vec![key], &vec![key]]).await?;
        let record = match rows.first() {
            Some(row) if row.try_get::<_, Option<i64>>(1)? == Some(to_i64(lock.0)) => {
                row.try_get::<_, Option<String>>(2)?
            }
            _ => None,
        };
        let Some(record) = record else {
            return Err(Error::Op(StoreError::LockLost(key.to_owned())));
        };
        let mut record: InstanceRecord = decode(&record)?;
        record.last_error = error.map(str::to_owned);
        let json = serde_json::to_string(&record)?;
        let status = record.status.as_str();
        // Hold the instance, not its messages: they keep their times and their order.
        let hold = tx.prepare_cached(&sql.hold_record).await?;
        tx.execute(&hold, &[&key, &status, &json, &ts(retry_at)])
            .await?;
        self.notify(tx, Wake::ORCHESTRATION).await
    }

    /// Runs one statement that is a whole write: in autocommit, or, with
    /// [`PostgresOptions::notify_in_transaction`], in a transaction with its `NOTIFY`.
    async fn write_one(
        &self,
        what: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        wake: Wake,
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        if self.inner.options.notify_in_transaction {
            return retry_tx!(self, what, tx => async {
                let st = tx.prepare_cached(sql).await?;
                let rows = tx.query(&st, params).await?;
                self.notify(&tx, wake).await?;
                Ok::<_, Error>(rows)
            });
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result: R<Vec<tokio_postgres::Row>> = async {
                let conn = self.conn().await?;
                let st = conn.prepare_cached(sql).await?;
                Ok(conn.query(&st, params).await?)
            }
            .await;
            match result {
                Err(Error::Db(e)) if attempt < MAX_ATTEMPTS && retryable(&e) => {
                    pause(Duration::from_millis(u64::from(attempt) * 5)).await;
                }
                other => return other.map_err(|e| self.err(what, e)),
            }
        }
    }

    async fn purge_tx(&self, tx: &Transaction<'_>, id: &InstanceId) -> R<bool> {
        let sql = &self.inner.sql;
        let key = id.as_str();
        let (del_tasks, del_inbox, del_history, del_instance) = tokio::try_join!(
            tx.prepare_cached(&sql.delete_activities),
            tx.prepare_cached(&sql.delete_inbox),
            tx.prepare_cached(&sql.delete_history),
            tx.prepare_cached(&sql.delete_instance),
        )?;
        // Tasks before the instance: the order `complete_activity` locks them in.
        let (_, _, _, n) = tokio::try_join!(
            async { tx.execute(&del_tasks, &[&key]).await },
            async { tx.execute(&del_inbox, &[&key]).await },
            async { tx.execute(&del_history, &[&key]).await },
            async { tx.execute(&del_instance, &[&key]).await },
        )?;
        if n > 0 {
            self.notify(tx, Wake::PURGED).await?;
        }
        Ok(n > 0)
    }

    async fn fetch_orchestrations(
        &self,
        now: Timestamp,
        lock_for: Duration,
        max: usize,
    ) -> R<Vec<OrchestrationWorkItem>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let conn = self.lease_conn().await?;
        let sql = &self.inner.sql;
        let (st, wake) = tokio::try_join!(
            conn.prepare_cached(&sql.fetch_orchestrations),
            conn.prepare_cached(&sql.next_wake),
        )?;
        let until = ts(now + lock_for);
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let writes = self.inner.writes.load(Ordering::Acquire);
        let params: [&(dyn ToSql + Sync); 4] = [&ts(now), &until, &new_token(), &limit];
        // The next wake time in the same round trip, after the lease is taken (its own
        // implicit transaction, run in order).
        let (rows, next) = self
            .leasing(&conn, async {
                Ok(tokio::try_join!(
                    conn.query(&st, &params),
                    conn.query_one(&wake, &[])
                )?)
            })
            .await?;
        self.hint(0, writes, next.try_get(0)?);
        work_items(&rows)
    }

    async fn fetch_instances(
        &self,
        ids: &[InstanceId],
        now: Timestamp,
        lock_for: Duration,
    ) -> R<Vec<OrchestrationWorkItem>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let conn = self.lease_conn().await?;
        let sql = &self.inner.sql;
        let (st, wake) = tokio::try_join!(
            conn.prepare_cached(&sql.fetch_instances),
            conn.prepare_cached(&sql.next_wake),
        )?;
        let until = ts(now + lock_for);
        let ids: Vec<&str> = ids.iter().map(InstanceId::as_str).collect();
        let writes = self.inner.writes.load(Ordering::Acquire);
        let params: [&(dyn ToSql + Sync); 4] = [&ids, &ts(now), &until, &new_token()];
        let (rows, next) = self
            .leasing(&conn, async {
                Ok(tokio::try_join!(
                    conn.query(&st, &params),
                    conn.query_one(&wake, &[])
                )?)
            })
            .await?;
        self.hint(0, writes, next.try_get(0)?);
        work_items(&rows)
    }

    async fn fetch_activities(
        &self,
        now: Timestamp,
        lock_for: Duration,
        max: usize,
    ) -> R<Vec<ActivityWorkItem>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let conn = self.lease_conn().await?;
        let sql = &self.inner.sql;
        let (st, wake) = tokio::try_join!(
            conn.prepare_cached(&sql.fetch_activities),
            conn.prepare_cached(&sql.next_wake),
        )?;
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let writes = self.inner.writes.load(Ordering::Acquire);
        let params: [&(dyn ToSql + Sync); 4] =
            [&ts(now), &ts(now + lock_for), &limit, &new_token()];
        let (rows, next) = self
            .leasing(&conn, async {
                Ok(tokio::try_join!(
                    conn.query(&st, &params),
                    conn.query_one(&wake, &[])
                )?)
            })
            .await?;
        self.hint(1, writes, next.try_get(1)?);
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let mut task: ActivityTask = decode(row.try_get(1)?)?;
            if let Some(heartbeat) = row.try_get::<_, Option<String>>(3)? {
                task.heartbeat = Some(heartbeat);
            }
            out.push(ActivityWorkItem {
                id: to_u64(row.try_get(0)?),
                task,
                lock: LockToken(to_u64(row.try_get(2)?)),
            });
        }
        Ok(out)
    }

    /// Lease expiries moved (renewals): wake times read before are stale.
    fn moved_leases(&self) {
        self.inner.writes.fetch_add(1, Ordering::AcqRel);
    }

    /// Keeps `next` (read when `writes` writes had been made) as the next wake time of kind
    /// `slot` (0: orchestrations, 1: activities).
    fn hint(&self, slot: usize, writes: u64, next: Option<i64>) {
        lock(&self.inner.wake_hints)[slot] = Some(WakeHint { writes, next });
    }

    /// The wake time of `kind` read with the last fetch, if no write was made since.
    fn take_hint(&self, kind: WorkKind) -> Option<WakeHint> {
        let slot = match kind {
            WorkKind::Orchestration => 0,
            WorkKind::Activity => 1,
        };
        let hint = lock(&self.inner.wake_hints)[slot].take()?;
        (hint.writes == self.inner.writes.load(Ordering::Acquire)).then_some(hint)
    }

    async fn wake_time(&self, kind: Option<WorkKind>) -> R<Option<Timestamp>> {
        if let Some(hint) = kind.and_then(|k| self.take_hint(k)) {
            return Ok(hint.next.map(from_ts));
        }
        let conn = self.lease_conn().await?;
        let st = conn.prepare_cached(&self.inner.sql.next_wake).await?;
        let row = conn.query_one(&st, &[]).await?;
        let orch: Option<i64> = row.try_get(0)?;
        let act: Option<i64> = row.try_get(1)?;
        let candidates = match kind {
            Some(WorkKind::Orchestration) => [orch, None],
            Some(WorkKind::Activity) => [None, act],
            None => [orch, act],
        };
        Ok(candidates.into_iter().flatten().min().map(from_ts))
    }

    async fn count_queues(&self, now: Timestamp) -> R<QueueDepths> {
        let conn = self.conn().await?;
        let st = conn.prepare_cached(&self.inner.sql.queue_depths).await?;
        let row = conn.query_one(&st, &[&ts(now)]).await?;
        let count = |i: usize| row.try_get::<_, i64>(i).map(to_u64);
        Ok(QueueDepths::new(count(0)?, count(1)?, count(2)?))
    }

    async fn read_record(&self, id: &InstanceId) -> R<Option<InstanceRecord>> {
        let conn = self.conn().await?;
        let st = conn.prepare_cached(&self.inner.sql.read_record).await?;
        match conn.query_opt(&st, &[&id.as_str()]).await? {
            Some(row) => Ok(Some(decode(row.try_get(0)?)?)),
            None => Ok(None),
        }
    }

    async fn read_events(&self, id: &InstanceId) -> R<Vec<HistoryEvent>> {
        let conn = self.conn().await?;
        let st = conn.prepare_cached(&self.inner.sql.read_history).await?;
        let rows = conn.query(&st, &[&id.as_str()]).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push(decode_event(row.try_get(0)?)?);
        }
        Ok(out)
    }

    async fn query_newest(&self, query: &InstanceQuery) -> R<InstancePage> {
        let conn = self.conn().await?;
        let st = conn.prepare_cached(&self.inner.sql.query_newest).await?;
        let page = query.effective_page_size();
        let after = query
            .continuation
            .as_deref()
            .and_then(super::parse_newest_first_token);
        let after_at = after.map(|(t, _)| ts(t));
        let after_id = after.map(|(_, id)| id.to_owned());
        let (statuses, from, to) = filter_params(query);
        let limit = i64::try_from(page + 1).unwrap_or(i64::MAX);
        let rows = conn
            .query(
                &st,
                &[
                    &after_at,
                    &after_id,
                    &query.id_prefix,
                    &statuses,
                    &query.name,
                    &from,
                    &to,
                    &query.include_entities,
                    &limit,
                ],
            )
            .await?;
        let more = rows.len() > page;
        let mut instances = Vec::with_capacity(rows.len().min(page));
        for row in rows.iter().take(page) {
            instances.push(decode::<InstanceRecord>(row.try_get(0)?)?);
        }
        let continuation = if more {
            instances.last().map(super::newest_first_token)
        } else {
            None
        };
        Ok(InstancePage {
            instances,
            continuation,
        })
    }

    async fn query(&self, query: &InstanceQuery) -> R<InstancePage> {
        if query.newest_first {
            return self.query_newest(query).await;
        }
        let conn = self.conn().await?;
        let st = conn.prepare_cached(&self.inner.sql.query).await?;
        let page = query.effective_page_size();
        let (statuses, from, to) = filter_params(query);
        let limit = i64::try_from(page + 1).unwrap_or(i64::MAX);
        let rows = conn
            .query(
                &st,
                &[
                    &query.continuation,
                    &query.id_prefix,
                    &statuses,
                    &query.name,
                    &from,
                    &to,
                    &query.include_entities,
                    &limit,
                ],
            )
            .await?;
        let more = rows.len() > page;
        let mut instances = Vec::with_capacity(rows.len().min(page));
        for row in rows.iter().take(page) {
            let record: InstanceRecord = decode(row.try_get(0)?)?;
            if query.matches(&record) {
                instances.push(record);
            }
        }
        let continuation = if more {
            rows.get(page - 1)
                .map(|row| row.try_get::<_, String>(1))
                .transpose()?
        } else {
            None
        };
        Ok(InstancePage {
            instances,
            continuation,
        })
    }
}

impl PostgresStore {
    async fn count(&self, query: &InstanceQuery) -> R<Vec<(RuntimeStatus, u64)>> {
        let conn = self.conn().await?;
        let st = conn.prepare_cached(&self.inner.sql.count).await?;
        let (statuses, from, to) = filter_params(query);
        let rows = conn
            .query(
                &st,
                &[
                    &query.id_prefix,
                    &statuses,
                    &query.name,
                    &from,
                    &to,
                    &query.include_entities,
                ],
            )
            .await?;
        let mut counts = StatusCounts::default();
        for row in &rows {
            let status: String = row.try_get(0)?;
            let n: i64 = row.try_get(1)?;
            if let Some(status) = RuntimeStatus::parse(&status) {
                counts.add(status, u64::try_from(n).unwrap_or(0));
            }
        }
        Ok(counts.into_vec())
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn create_instance(&self, new: NewInstance) -> Result<CreateResult, StoreError> {
        let r = retry_tx!(self, "creating an instance", tx => self.create_tx(&tx, &new))?;
        self.signal(Wake::CREATED);
        Ok(r)
    }

    async fn send_message(
        &self,
        instance_id: &InstanceId,
        message: Message,
    ) -> Result<(), StoreError> {
        retry_tx!(self, "sending a message", tx => self.send_tx(&tx, instance_id, &message))?;
        self.signal(Wake::ORCHESTRATION);
        Ok(())
    }

    async fn fetch_orchestration_work(
        &self,
        now: Timestamp,
        lock_for: Duration,
    ) -> Result<Option<OrchestrationWorkItem>, StoreError> {
        let lock_for = self.orchestration_lease(lock_for);
        self.fetch_orchestrations(now, lock_for, 1)
            .await
            .map(|items| items.into_iter().next())
            .map_err(|e| self.err("fetching orchestration work", e))
    }

    async fn fetch_orchestration_batch(
        &self,
        now: Timestamp,
        lock_for: Duration,
        max: usize,
    ) -> Result<Vec<OrchestrationWorkItem>, StoreError> {
        let lock_for = self.orchestration_lease(lock_for);
        self.fetch_orchestrations(now, lock_for, max)
            .await
            .map_err(|e| self.err("fetching orchestration work", e))
    }

    async fn commit_episode(&self, commit: EpisodeCommit) -> Result<(), StoreError> {
        if !commit.new_instances.is_empty() {
            let timer = CommitTimer::start();
            let wake =
                retry_tx!(self, "committing an episode", tx => self.commit_tx(&tx, &commit))?;
            timer.record_single("postgres");
            self.signal(wake);
            return Ok(());
        }
        // Group commit: the episodes committed meanwhile share one transaction (one WAL
        // flush).
        let (reply, answer) = oneshot::channel();
        let lead = {
            let mut q = lock(&self.inner.commits);
            q.queue.push_back(PendingCommit { commit, reply });
            if q.leaders < MAX_BATCHES {
                q.leaders += 1;
                true
            } else {
                false
            }
        };
        let mut answer = answer;
        if lead {
            // Commit batches until this episode's is done; then the slot passes on
            // (`Leader`'s drop). Each batch runs on its own task, which holds the slot while
            // it runs: a batch carries other episodes' commits, and this caller going away
            // (its worker aborted, its future dropped) must not cancel it.
            let mut leader = Leader::new(self);
            while let Some(batch) = self.next_batch() {
                let store = self.clone();
                let task = tokio::spawn(async move {
                    store.run_batch(batch).await;
                    leader
                });
                match task.await {
                    Ok(back) => leader = back,
                    // It panicked: its `Leader` was dropped with it (the slot passed on).
                    Err(_) => break,
                }
                if let Ok(result) = answer.try_recv() {
                    drop(leader);
                    return result;
                }
            }
        }
        match answer.await {
            Ok(result) => result,
            Err(_) => Err(StoreError::backend(format!(
                "PostgreSQL store, task hub `{}`: committing an episode: the commit task ended",
                self.inner.hub
            ))),
        }
    }

    async fn create_started(
        &self,
        new: NewInstance,
        mut first: EpisodeCommit,
    ) -> Result<Option<InstanceRecord>, StoreError> {
        // The start message is never stored: it is consumed in the same transaction. The
        // instance is leased under a fresh token inside it, released by the commit.
        first.consumed = Vec::new();
        first.lock = LockToken(to_u64(new_token()));
        let record = new.record(None);
        let timer = CommitTimer::start();
        let what = "creating an instance with its first episode";
        let wake = if first.new_instances.is_empty() && !self.inner.options.notify_in_transaction {
            let mut attempt = 0u32;
            loop {
                attempt += 1;
                match self.create_started_pipelined(&record, &first).await {
                    Err(Error::Db(e)) if attempt < MAX_ATTEMPTS && retryable(&e) => {
                        tracing::debug!(error = %e, attempt, "transaction aborted by PostgreSQL; retrying");
                        pause(Duration::from_millis(u64::from(attempt) * 5)).await;
                    }
                    other => break other.map_err(|e| self.err(what, e)),
                }
            }
        } else {
            retry_tx!(self, what, tx => self.create_started_tx(&tx, &record, &first))
        }?;
        let Some(wake) = wake else {
            return Ok(None);
        };
        timer.record_single("postgres");
        self.signal(wake);
        Ok(Some(record))
    }

    fn supports_create_started(&self) -> bool {
        true
    }

    fn supports_activity_handoff(&self) -> bool {
        true
    }

    async fn fetch_instances_work(
        &self,
        instance_ids: &[InstanceId],
        now: Timestamp,
        lock_for: Duration,
    ) -> Result<Vec<OrchestrationWorkItem>, StoreError> {
        let lock_for = self.orchestration_lease(lock_for);
        self.fetch_instances(instance_ids, now, lock_for)
            .await
            .map_err(|e| self.err("leasing instances", e))
    }

    async fn abandon_episode(
        &self,
        instance_id: &InstanceId,
        lock: LockToken,
        retry_at: Timestamp,
        error: Option<String>,
    ) -> Result<(), StoreError> {
        retry_tx!(self, "abandoning an episode", tx => self.abandon_tx(
            &tx,
            instance_id,
            lock,
            retry_at,
            error.as_deref(),
        ))?;
        self.signal(Wake::ORCHESTRATION);
        Ok(())
    }

    fn activity_lease(&self, requested: Duration) -> Duration {
        self.inner.options.activity_lease.unwrap_or(requested)
    }

    fn orchestration_lease(&self, requested: Duration) -> Duration {
        self.inner.options.orchestration_lease.unwrap_or(requested)
    }

    async fn fetch_activity_work(
        &self,
        now: Timestamp,
        lock_for: Duration,
        max: usize,
    ) -> Result<Vec<ActivityWorkItem>, StoreError> {
        let lock_for = self.activity_lease(lock_for);
        self.fetch_activities(now, lock_for, max)
            .await
            .map_err(|e| self.err("fetching activity work", e))
    }

    async fn complete_activity(
        &self,
        id: u64,
        lock: LockToken,
        result: Message,
    ) -> Result<(), StoreError> {
        let message = serde_json::to_string(&result)
            .map_err(|e| self.err("completing an activity", e.into()))?;
        let timer = CommitTimer::start();
        let rows = self
            .write_one(
                "completing an activity",
                &self.inner.sql.complete_activity,
                &[
                    &to_i64(id),
                    &to_i64(lock.0),
                    &ts(result.id.visible_at),
                    &message,
                ],
                Wake::ORCHESTRATION,
            )
            .await?;
        let taken = match rows.first() {
            Some(row) => row
                .try_get::<_, i64>(0)
                .map_err(|e| self.err("completing an activity", e.into()))?,
            None => 0,
        };
        if taken == 0 {
            return Err(StoreError::LockLost(format!("activity task {id}")));
        }
        timer.record_single("postgres");
        self.signal(Wake::ORCHESTRATION);
        Ok(())
    }

    async fn renew_activity_lock(
        &self,
        id: u64,
        lock: LockToken,
        until: Timestamp,
    ) -> Result<(), StoreError> {
        // While leased, a task's `visible_at` is its lease expiry.
        let rows = async {
            let conn = self.lease_conn().await?;
            let st = conn.prepare_cached(&self.inner.sql.renew_activity).await?;
            let params: [&(dyn ToSql + Sync); 3] = [&to_i64(id), &to_i64(lock.0), &ts(until)];
            self.leasing(&conn, async { Ok(conn.query(&st, &params).await?) })
                .await
        }
        .await
        .map_err(|e| self.err("renewing an activity lease", e))?;
        self.moved_leases();
        if rows.is_empty() {
            return Err(StoreError::LockLost(format!("activity task {id}")));
        }
        Ok(())
    }

    async fn renew_activity_locks(
        &self,
        leases: &[(u64, LockToken)],
        until: Timestamp,
    ) -> Result<Vec<u64>, StoreError> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = leases.iter().map(|(id, _)| to_i64(*id)).collect();
        let tokens: Vec<i64> = leases.iter().map(|(_, lock)| to_i64(lock.0)).collect();
        // One statement; the rows are locked in id order (as commits lock theirs), so it
        // never deadlocks with a commit removing some of them.
        let rows = async {
            let conn = self.lease_conn().await?;
            let st = conn
                .prepare_cached(&self.inner.sql.renew_activities)
                .await?;
            let params: [&(dyn ToSql + Sync); 3] = [&ids, &tokens, &ts(until)];
            self.leasing(&conn, async { Ok(conn.query(&st, &params).await?) })
                .await
        }
        .await
        .map_err(|e| self.err("renewing activity leases", e))?;
        self.moved_leases();
        let mut renewed = HashSet::with_capacity(rows.len());
        for row in rows {
            let id: i64 = row
                .try_get(0)
                .map_err(|e| self.err("renewing activity leases", e.into()))?;
            renewed.insert(to_u64(id));
        }
        Ok(leases
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| !renewed.contains(id))
            .collect())
    }

    async fn record_activity_heartbeat(
        &self,
        id: u64,
        lock: LockToken,
        details: Payload,
        until: Timestamp,
    ) -> Result<(), StoreError> {
        // A durable write (unlike a lease renewal): the details must survive this worker.
        let rows = self
            .write_one(
                "recording activity heartbeat details",
                &self.inner.sql.record_heartbeat,
                &[&to_i64(id), &to_i64(lock.0), &ts(until), &details],
                Wake::default(),
            )
            .await?;
        self.moved_leases();
        if rows.is_empty() {
            return Err(StoreError::LockLost(format!("activity task {id}")));
        }
        Ok(())
    }

    async fn abandon_activity(
        &self,
        id: u64,
        lock: LockToken,
        retry_at: Timestamp,
    ) -> Result<(), StoreError> {
        let wake = Wake {
            activity: true,
            ..Wake::default()
        };
        let rows = self
            .write_one(
                "abandoning an activity",
                &self.inner.sql.release_activity,
                &[&to_i64(id), &to_i64(lock.0), &ts(retry_at)],
                wake,
            )
            .await?;
        if rows.is_empty() {
            return Err(StoreError::LockLost(format!("activity task {id}")));
        }
        self.signal(wake);
        Ok(())
    }

    async fn next_wake_time(&self) -> Result<Option<Timestamp>, StoreError> {
        self.wake_time(None)
            .await
            .map_err(|e| self.err("reading the next wake time", e))
    }

    async fn next_wake_time_for(&self, kind: WorkKind) -> Result<Option<Timestamp>, StoreError> {
        self.wake_time(Some(kind))
            .await
            .map_err(|e| self.err("reading the next wake time", e))
    }

    async fn queue_depths(&self, now: Timestamp) -> Result<Option<QueueDepths>, StoreError> {
        self.count_queues(now)
            .await
            .map(Some)
            .map_err(|e| self.err("counting the queues", e))
    }

    async fn read_instance(
        &self,
        instance_id: &InstanceId,
    ) -> Result<Option<InstanceRecord>, StoreError> {
        self.read_record(instance_id)
            .await
            .map_err(|e| self.err("reading an instance", e))
    }

    async fn read_history(
        &self,
        instance_id: &InstanceId,
    ) -> Result<Vec<HistoryEvent>, StoreError> {
        self.read_events(instance_id)
            .await
            .map_err(|e| self.err("reading a history", e))
    }

    async fn query_instances(&self, query: &InstanceQuery) -> Result<InstancePage, StoreError> {
        self.query(query)
            .await
            .map_err(|e| self.err("querying instances", e))
    }

    async fn count_instances(
        &self,
        query: &InstanceQuery,
    ) -> Result<Vec<(RuntimeStatus, u64)>, StoreError> {
        self.count(query)
            .await
            .map_err(|e| self.err("counting instances", e))
    }

    async fn purge_finished_instance(
        &self,
        instance_id: &InstanceId,
        finished_by: Timestamp,
    ) -> Result<bool, StoreError> {
        let removed = retry_tx!(self, "purging a finished instance", tx => async {
            // The row lock holds the record still while it is checked and deleted.
            let select = tx.prepare_cached(&self.inner.sql.select_for_update).await?;
            let qualifies = match tx.query_opt(&select, &[&instance_id.as_str()]).await? {
                Some(row) => {
                    let r = decode::<InstanceRecord>(row.try_get(0)?)?;
                    r.status.is_terminal() && r.last_updated_at <= finished_by
                }
                None => false,
            };
            if qualifies {
                self.purge_tx(&tx, instance_id).await
            } else {
                Ok(false)
            }
        })?;
        if removed {
            self.signal(Wake::PURGED);
        }
        Ok(removed)
    }

    async fn purge_instance(&self, instance_id: &InstanceId) -> Result<bool, StoreError> {
        let removed =
            retry_tx!(self, "purging an instance", tx => self.purge_tx(&tx, instance_id))?;
        if removed {
            self.signal(Wake::PURGED);
        }
        Ok(removed)
    }

    fn signals(&self) -> &StoreSignals {
        &self.inner.signals
    }
}

// ---------------------------------------------------------------------------------------
// SQL

/// Every statement, with the schema filled in (prepared and cached per connection).
struct Sql {
    fetch_orchestrations: String,
    fetch_instances: String,
    complete_handed_off: String,
    fetch_activities: String,
    lock_rows: String,
    select_for_update: String,
    select_status: String,
    insert_instance: String,
    insert_started: String,
    replace_instance: String,
    update_record: String,
    update_records: String,
    delete_instance: String,
    delete_history: String,
    delete_histories: String,
    delete_inbox: String,
    delete_activities: String,
    append_history: String,
    consume: String,
    enqueue: String,
    refresh_ready: String,
    hold_record: String,
    release_holds: String,
    enqueue_activities: String,
    complete_activity: String,
    release_activity: String,
    renew_activity: String,
    record_heartbeat: String,
    renew_activities: String,
    next_wake: String,
    queue_depths: String,
    read_record: String,
    read_history: String,
    read_inbox: String,
    existing_ids: String,
    query: String,
    count: String,
    query_newest: String,
}

impl Sql {
    #[allow(clippy::too_many_lines, reason = "one SQL text per statement")]
    fn new(schema: &str) -> Self {
        let s = |text: &str| text.replace("{s}", schema);
        // The leased instance `picked` with its history length and its messages visible
        // at $1.
        let work_item = "SELECT p.record, p.lock_token,
                   (SELECT COALESCE(MAX(h.idx) + 1, 0) FROM {s}.history h
                    WHERE h.instance_id = p.id),
                   m.visible_at, m.seq, m.message, p.id
            FROM picked p
            LEFT JOIN {s}.inbox m ON m.instance_id = p.id AND m.visible_at <= $1
            ORDER BY p.id, m.visible_at, m.seq";
        let terminal = RuntimeStatus::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .map(|s| format!("'{}'", s.as_str()))
            .collect::<Vec<_>>()
            .join(", ");
        Self {
            // Lease the first $4 due instances and read them with their visible messages,
            // in one statement.
            fetch_orchestrations: s(&format!(
                "WITH picked AS (
                    UPDATE {{s}}.instances SET lock_token = $3, locked_until = $2
                    WHERE id IN (SELECT id FROM {{s}}.instances WHERE due_at <= $1
                                 ORDER BY due_at, id LIMIT $4 FOR UPDATE SKIP LOCKED)
                    RETURNING id, record, lock_token)
                {work_item}"
            )),
            // Leases the instances in $1 that no one else holds, whatever their messages
            // (rows locked in id order, as commits lock them).
            fetch_instances: s(&format!(
                "WITH picked AS (
                    UPDATE {{s}}.instances SET lock_token = $4, locked_until = $3
                    WHERE id IN (SELECT id FROM {{s}}.instances
                                 WHERE id = ANY($1)
                                   AND (lock_token IS NULL OR locked_until <= $2)
                                 ORDER BY id FOR UPDATE)
                    RETURNING id, record, lock_token)
                {}",
                work_item.replace("$1", "$2")
            )),
            // Lease up to $3 due tasks: while leased, a task is due again at its expiry (no
            // later than its heartbeat timeout after $1).
            fetch_activities: s("WITH cand AS (
                    SELECT id, visible_at FROM {s}.activities WHERE visible_at <= $1
                    ORDER BY visible_at, id LIMIT $3 FOR UPDATE SKIP LOCKED),
                leased AS (
                    UPDATE {s}.activities a
                    SET lock_token = $4,
                        visible_at = LEAST($2, $1 + COALESCE(a.heartbeat_timeout, $2 - $1))
                    FROM cand WHERE a.id = cand.id
                    RETURNING a.id, a.task, a.lock_token, a.heartbeat, cand.visible_at AS was)
                SELECT id, task, lock_token, heartbeat FROM leased ORDER BY was, id"),
            // Locks the rows in $1 in id order; answers the records of those in $2.
            lock_rows: s(
                "SELECT id, lock_token, CASE WHEN id = ANY($2) THEN record END
                FROM {s}.instances WHERE id = ANY($1) ORDER BY id FOR UPDATE",
            ),
            select_for_update: s("SELECT record FROM {s}.instances WHERE id = $1 FOR UPDATE"),
            select_status: s("SELECT status FROM {s}.instances WHERE id = $1 FOR UPDATE"),
            insert_instance: s(
                "INSERT INTO {s}.instances (id, name, status, created_at, record)
                VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
            ),
            // A brand-new instance leased (token $6, until $7) for its first episode's commit
            // in the same transaction; nothing when the id is taken.
            insert_started: s("INSERT INTO {s}.instances
                    (id, name, status, created_at, record, lock_token, locked_until)
                VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING"),
            replace_instance: s("UPDATE {s}.instances
                SET name = $2, status = $3, created_at = $4, record = $5,
                    ready_at = NULL, lock_token = NULL, locked_until = NULL, not_before = NULL
                WHERE id = $1"),
            // Ends the lease and the hold; run after the inbox changes, whose first time it
            // records.
            update_record: s("UPDATE {s}.instances
                SET status = $2, record = $3, lock_token = NULL, locked_until = NULL,
                    not_before = NULL,
                    ready_at = (SELECT MIN(m.visible_at) FROM {s}.inbox m
                                WHERE m.instance_id = $1)
                WHERE id = $1"),
            // Applies episodes: records, statuses, ends of leases and holds; run after the
            // inbox changes, whose first times they record.
            update_records: s("UPDATE {s}.instances i
                SET status = t.status, record = t.record, lock_token = NULL,
                    locked_until = NULL, not_before = NULL,
                    ready_at = (SELECT MIN(m.visible_at) FROM {s}.inbox m
                                WHERE m.instance_id = i.id)
                FROM unnest($1::text[], $2::text[], $3::text[]) AS t(id, status, record)
                WHERE i.id = t.id
                RETURNING i.ready_at IS NOT NULL"),
            // Ends the lease and holds the instance until $4 (its inbox is unchanged).
            hold_record: s("UPDATE {s}.instances
                SET status = $2, record = $3, lock_token = NULL, locked_until = NULL,
                    not_before = $4
                WHERE id = $1"),
            // Ends the holds of the instances in $1 (a terminate arrived: `ends_hold`).
            release_holds: s("UPDATE {s}.instances SET not_before = NULL
                WHERE id = ANY($1) AND not_before IS NOT NULL"),
            delete_instance: s("DELETE FROM {s}.instances WHERE id = $1"),
            delete_history: s("DELETE FROM {s}.history WHERE instance_id = $1"),
            delete_histories: s("DELETE FROM {s}.history WHERE instance_id = ANY($1)"),
            delete_inbox: s("DELETE FROM {s}.inbox WHERE instance_id = $1"),
            delete_activities: s("DELETE FROM {s}.activities WHERE instance_id = $1"),
            // Appends events ($2) to the histories of instances ($1), in array order.
            append_history: s("INSERT INTO {s}.history (instance_id, idx, event)
                SELECT t.id,
                       COALESCE((SELECT MAX(h.idx) + 1 FROM {s}.history h
                                 WHERE h.instance_id = t.id), 0)
                         + row_number() OVER (PARTITION BY t.id ORDER BY t.ord) - 1,
                       t.event
                FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS t(id, event, ord)"),
            consume: s("DELETE FROM {s}.inbox m
                USING unnest($1::text[], $2::bigint[]) AS t(id, seq)
                WHERE m.instance_id = t.id AND m.seq = t.seq"),
            // Seqs follow the order of the arrays (nextval runs after the sort).
            enqueue: s(
                "INSERT INTO {s}.inbox (instance_id, seq, visible_at, message)
                SELECT t.instance_id, nextval('{s}.ids'), t.visible_at, t.message
                FROM unnest($1::text[], $2::bigint[], $3::text[])
                     WITH ORDINALITY AS t(instance_id, visible_at, message, ord)
                ORDER BY t.ord",
            ),
            refresh_ready: s("UPDATE {s}.instances i SET ready_at = x.first
                FROM (SELECT u.id, (SELECT MIN(m.visible_at) FROM {s}.inbox m
                                    WHERE m.instance_id = u.id) AS first
                      FROM unnest($1::text[]) AS u(id)) x
                WHERE i.id = x.id AND i.ready_at IS DISTINCT FROM x.first"),
            enqueue_activities: s(
                "INSERT INTO {s}.activities (id, instance_id, visible_at, task, heartbeat_timeout)
                SELECT nextval('{s}.ids'), t.instance_id, t.visible_at, t.task, t.heartbeat_timeout
                FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[])
                     WITH ORDINALITY AS t(instance_id, visible_at, task, heartbeat_timeout, ord)
                ORDER BY t.ord",
            ),
            // Removes tasks whose results an episode consumed from memory, if still leased;
            // the rows are locked in id order, as lease renewals lock them.
            complete_handed_off: s("WITH held AS (
                    SELECT a.id FROM {s}.activities a
                    JOIN unnest($1::bigint[], $2::bigint[]) AS t(id, token)
                      ON a.id = t.id AND a.lock_token = t.token
                    ORDER BY a.id FOR UPDATE OF a)
                DELETE FROM {s}.activities a USING held WHERE a.id = held.id"),
            // Removes the leased task and, if its instance is still running, enqueues the
            // result: one statement. Answers (tasks removed, results enqueued).
            complete_activity: s(&format!(
                "WITH done AS (
                    DELETE FROM {{s}}.activities WHERE id = $1 AND lock_token = $2
                    RETURNING instance_id),
                live AS (
                    UPDATE {{s}}.instances i SET ready_at = LEAST(COALESCE(i.ready_at, $3), $3)
                    FROM done WHERE i.id = done.instance_id AND i.status NOT IN ({terminal})
                    RETURNING i.id),
                queued AS (
                    INSERT INTO {{s}}.inbox (instance_id, seq, visible_at, message)
                    SELECT id, nextval('{{s}}.ids'), $3, $4 FROM live
                    RETURNING 1)
                SELECT (SELECT count(*) FROM done), (SELECT count(*) FROM queued)"
            )),
            release_activity: s(
                "UPDATE {s}.activities SET visible_at = $3, lock_token = NULL
                WHERE id = $1 AND lock_token = $2 RETURNING 1",
            ),
            renew_activity: s("UPDATE {s}.activities SET visible_at = $3
                WHERE id = $1 AND lock_token = $2 RETURNING 1"),
            record_heartbeat: s("UPDATE {s}.activities SET visible_at = $3, heartbeat = $4
                WHERE id = $1 AND lock_token = $2 RETURNING 1"),
            // Answers the ids whose lease was held (and is now extended).
            renew_activities: s("WITH held AS (
                    SELECT a.id FROM {s}.activities a
                    JOIN unnest($1::bigint[], $2::bigint[]) AS t(id, token)
                      ON a.id = t.id AND a.lock_token = t.token
                    ORDER BY a.id FOR UPDATE OF a)
                UPDATE {s}.activities a SET visible_at = $3
                FROM held WHERE a.id = held.id RETURNING a.id"),
            next_wake: s("SELECT (SELECT MIN(due_at) FROM {s}.instances),
                                 (SELECT MIN(visible_at) FROM {s}.activities)"),
            // Over the indexes: due instances (`instances_due`), their visible messages
            // (`inbox_visible`), visible tasks (`activities_visible`); a leased instance or
            // task is due again only at its lease's expiry.
            queue_depths: s("SELECT
                (SELECT count(*) FROM {s}.instances WHERE due_at <= $1),
                (SELECT count(*) FROM {s}.activities WHERE visible_at <= $1),
                (SELECT count(*) FROM {s}.instances i
                 JOIN {s}.inbox m ON m.instance_id = i.id AND m.visible_at <= $1
                 WHERE i.due_at <= $1
                   AND m.message::json -> 'event' ->> 'eventType' = 'TimerFired')"),
            read_record: s("SELECT record FROM {s}.instances WHERE id = $1"),
            read_history: s("SELECT event FROM {s}.history WHERE instance_id = $1 ORDER BY idx"),
            read_inbox: s("SELECT message FROM {s}.inbox WHERE instance_id = $1
                ORDER BY visible_at, seq"),
            existing_ids: s("SELECT id FROM {s}.instances WHERE id = ANY($1)"),
            query: s("SELECT record, id FROM {s}.instances
                WHERE ($1::text IS NULL OR id > $1)
                  AND ($2::text IS NULL OR (id >= $2 AND starts_with(id, $2)))
                  AND (cardinality($3::text[]) = 0 OR status = ANY($3))
                  AND ($4::text IS NULL OR name = $4)
                  AND ($5::bigint IS NULL OR created_at >= $5)
                  AND ($6::bigint IS NULL OR created_at <= $6)
                  AND ($7 OR left(id, 1) <> '@')
                ORDER BY id LIMIT $8"),
            query_newest: s("SELECT record, id FROM {s}.instances
                WHERE ($1::bigint IS NULL OR (created_at, id) < ($1, $2::text))
                  AND ($3::text IS NULL OR (id >= $3 AND starts_with(id, $3)))
                  AND (cardinality($4::text[]) = 0 OR status = ANY($4))
                  AND ($5::text IS NULL OR name = $5)
                  AND ($6::bigint IS NULL OR created_at >= $6)
                  AND ($7::bigint IS NULL OR created_at <= $7)
                  AND ($8 OR left(id, 1) <> '@')
                ORDER BY created_at DESC, id DESC LIMIT $9"),
            count: s("SELECT status, count(*) FROM {s}.instances
                WHERE ($1::text IS NULL OR (id >= $1 AND starts_with(id, $1)))
                  AND (cardinality($2::text[]) = 0 OR status = ANY($2))
                  AND ($3::text IS NULL OR name = $3)
                  AND ($4::bigint IS NULL OR created_at >= $4)
                  AND ($5::bigint IS NULL OR created_at <= $5)
                  AND ($6 OR left(id, 1) <> '@')
                GROUP BY status"),
        }
    }
}

/// Every instance row an episode commit touches: its own, its messages' targets and its
/// new sub-orchestrations.
fn commit_ids(c: &EpisodeCommit) -> BTreeSet<&str> {
    let mut ids = BTreeSet::new();
    ids.insert(c.instance_id.as_str());
    ids.extend(c.messages.iter().map(|(t, _)| t.as_str()));
    ids.extend(c.new_instances.iter().map(|(_, n)| n.instance_id.as_str()));
    ids
}

/// The rows `lock_rows` locked: which exist, and the committing instances' leases and
/// records.
struct Locked {
    own: HashMap<String, (Option<i64>, String)>,
    existing: HashSet<String>,
}

impl Locked {
    fn read(rows: &[tokio_postgres::Row]) -> R<Self> {
        let mut own = HashMap::new();
        let mut existing = HashSet::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get(0)?;
            if let Some(record) = row.try_get::<_, Option<String>>(2)? {
                own.insert(id.clone(), (row.try_get(1)?, record));
            }
            existing.insert(id);
        }
        Ok(Self { own, existing })
    }

    /// `c`'s instance record, if `c` still holds its lease; `LockLost` if not.
    fn lease(&mut self, c: &EpisodeCommit) -> R<InstanceRecord> {
        let key = c.instance_id.as_str();
        match self.own.remove(key) {
            Some((Some(token), record)) if token == to_i64(c.lock.0) => decode(&record),
            _ => Err(Error::Op(StoreError::LockLost(key.to_owned()))),
        }
    }
}

/// The writes of one or more episode commits, as one statement per kind.
#[derive(Default)]
struct Writes {
    handed_ids: Vec<i64>,
    handed_tokens: Vec<i64>,
    consumed_ids: Vec<String>,
    consumed_seqs: Vec<i64>,
    history_ids: Vec<String>,
    history_events: Vec<String>,
    /// Instances continuing as new: their history is removed.
    reset_history: Vec<String>,
    task_owners: Vec<String>,
    task_visible_at: Vec<i64>,
    tasks: Vec<String>,
    heartbeat_timeouts: Vec<Option<i64>>,
    record_ids: Vec<String>,
    record_statuses: Vec<&'static str>,
    records: Vec<String>,
    /// Messages, and the instances whose `ready_at` and holds they change.
    batch: Enqueue,
    /// An episode ends its instance.
    finished: bool,
}

impl Writes {
    /// Adds episode `c`, applied to its instance's `record` (read under the lease), with
    /// `refusals` (messages to itself) and the messages to instances in `existing`.
    fn add(
        &mut self,
        c: &EpisodeCommit,
        mut record: InstanceRecord,
        refusals: &[Message],
        existing: &HashSet<String>,
    ) -> R<()> {
        let key = c.instance_id.as_str();
        self.finished |= c.status.is_terminal();
        record.status = c.status;
        record.output.clone_from(&c.output);
        record.failure.clone_from(&c.failure);
        record.custom_status.clone_from(&c.custom_status);
        record.last_updated_at = c.now;
        record.last_error.clone_from(&c.last_error);
        if let Some(next) = &c.next_execution {
            record.execution += 1;
            record.input.clone_from(&next.input);
            record.version.clone_from(&next.version);
            record.status = RuntimeStatus::ContinuedAsNew;
            record.output = None;
            record.failure = None;
            for m in &next.messages {
                self.batch.push(key, m)?;
            }
            self.reset_history.push(key.to_owned());
        } else {
            for e in &c.new_events {
                self.history_ids.push(key.to_owned());
                self.history_events.push(serde_json::to_string(e)?);
            }
        }
        for m in refusals {
            self.batch.push(key, m)?;
        }
        for (target, m) in &c.messages {
            if existing.contains(target.as_str()) {
                self.batch.push(target.as_str(), m)?;
            } else {
                tracing::debug!(target = %target, "message to unknown instance dropped");
            }
        }
        for m in &c.consumed {
            self.consumed_ids.push(key.to_owned());
            self.consumed_seqs.push(to_i64(m.seq));
        }
        for t in &c.activities {
            self.task_owners.push(t.instance_id.as_str().to_owned());
            self.task_visible_at.push(ts(c.now));
            self.tasks.push(serde_json::to_string(t)?);
            self.heartbeat_timeouts.push(
                t.heartbeat_timeout
                    .filter(|d| !d.is_zero())
                    .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            );
        }
        for (id, lock) in &c.completed_activities {
            self.handed_ids.push(to_i64(*id));
            self.handed_tokens.push(to_i64(lock.0));
        }
        self.records.push(serde_json::to_string(&record)?);
        self.record_statuses.push(record.status.as_str());
        self.record_ids.push(key.to_owned());
        Ok(())
    }

    /// Runs the writes in `tx`, pipelined (one round trip), and `COMMIT` after them if
    /// `commit`; returns whom to wake: the
    /// dispatchers only if there is new work (messages, activity tasks, or messages that
    /// arrived during an episode), and whoever waits for a change to an instance.
    #[allow(
        clippy::too_many_lines,
        reason = "one pipelined statement per kind of write, in order"
    )]
    async fn run<C: GenericClient>(
        mut self,
        store: &PostgresStore,
        tx: &C,
        commit: bool,
    ) -> R<Wake> {
        let sql = &store.inner.sql;
        let (handed, consume, reset, history, update, enqueue_tasks, enqueue, ready, release) = tokio::try_join!(
            tx.prepare_cached(&sql.complete_handed_off),
            tx.prepare_cached(&sql.consume),
            tx.prepare_cached(&sql.delete_histories),
            tx.prepare_cached(&sql.append_history),
            tx.prepare_cached(&sql.update_records),
            tx.prepare_cached(&sql.enqueue_activities),
            tx.prepare_cached(&sql.enqueue),
            tx.prepare_cached(&sql.refresh_ready),
            tx.prepare_cached(&sql.release_holds),
        )?;
        // The committing rows' `ready_at` is set by `update_records`; others' by
        // `refresh_ready`.
        for id in &self.record_ids {
            self.batch.touched.remove(id);
        }
        let touched: Vec<String> = std::mem::take(&mut self.batch.touched)
            .into_iter()
            .collect();
        let activities = !self.tasks.is_empty();
        let messages = !self.batch.ids.is_empty();
        let b = &self.batch;
        // Pipelined, one round trip: a statement is sent on its future's first poll and
        // `try_join!` polls first in this order, so the server runs them in this order
        // (the records after the inbox changes, whose first time they record).
        let (_, _, _, _, _, _, still_ready, _, _, ()) = tokio::try_join!(
            async {
                if self.handed_ids.is_empty() {
                    Ok(0)
                } else {
                    tx.execute(&handed, &[&self.handed_ids, &self.handed_tokens])
                        .await
                }
            },
            async {
                if self.consumed_ids.is_empty() {
                    Ok(0)
                } else {
                    tx.execute(&consume, &[&self.consumed_ids, &self.consumed_seqs])
                        .await
                }
            },
            async {
                if self.reset_history.is_empty() {
                    Ok(0)
                } else {
                    tx.execute(&reset, &[&self.reset_history]).await
                }
            },
            async {
                if self.history_ids.is_empty() {
                    Ok(0)
                } else {
                    tx.execute(&history, &[&self.history_ids, &self.history_events])
                        .await
                }
            },
            async {
                if activities {
                    tx.execute(
                        &enqueue_tasks,
                        &[
                            &self.task_owners,
                            &self.task_visible_at,
                            &self.tasks,
                            &self.heartbeat_timeouts,
                        ],
                    )
                    .await
                } else {
                    Ok(0)
                }
            },
            async {
                if b.ids.is_empty() {
                    Ok(0)
                } else {
                    tx.execute(&enqueue, &[&b.ids, &b.visible_at, &b.messages])
                        .await
                }
            },
            async {
                let rows = tx
                    .query(
                        &update,
                        &[&self.record_ids, &self.record_statuses, &self.records],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .filter(|r| r.try_get::<_, bool>(0).unwrap_or(true))
                    .count() as u64)
            },
            async {
                if touched.is_empty() {
                    Ok(0)
                } else {
                    tx.execute(&ready, &[&touched]).await
                }
            },
            async {
                if b.released.is_empty() {
                    Ok(0)
                } else {
                    tx.execute(&release, &[&b.released]).await
                }
            },
            async {
                if commit {
                    tx.batch_execute("COMMIT").await
                } else {
                    Ok(())
                }
            },
        )?;
        let wake = Wake {
            orchestration: messages || still_ready > 0,
            activity: activities,
            changed: true,
            finished: self.finished,
        };
        Ok(wake)
    }
}

/// A pooled connection that may be inside a transaction: unless [`close`](Self::close)d
/// (the transaction ended), dropping it (a cancelled commit) takes the connection out of
/// the pool and closes it, so Postgres rolls the transaction back.
struct OpenTx(Option<Object>);

impl OpenTx {
    fn conn(&self) -> R<&Object> {
        self.0
            .as_ref()
            .ok_or_else(|| Error::Other("the connection is gone".to_owned(), None))
    }

    /// The transaction ended: the connection goes back to the pool.
    fn close(mut self) {
        drop(self.0.take());
    }
}

impl Drop for OpenTx {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            drop(Object::take(conn));
        }
    }
}

/// An episode commit waiting for its batch, and where its outcome goes.
struct PendingCommit {
    commit: EpisodeCommit,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

/// The episode commits waiting for a batch, and how many tasks are committing batches.
#[derive(Default)]
struct Commits {
    queue: std::collections::VecDeque<PendingCommit>,
    leaders: usize,
}

/// One of the [`MAX_BATCHES`] slots for committing batches; dropped, it passes to a new
/// task if commits are still queued (unless it belongs to such a task that never ran: the
/// runtime is shutting down).
struct Leader {
    store: PostgresStore,
    pass_on: bool,
}

impl Leader {
    fn new(store: &PostgresStore) -> Self {
        Self {
            store: store.clone(),
            pass_on: true,
        }
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        let store = &self.store;
        let mut q = lock(&store.inner.commits);
        if q.queue.is_empty() || !self.pass_on {
            q.leaders -= 1;
            return;
        }
        drop(q);
        let mut next = Leader {
            store: store.clone(),
            pass_on: false,
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                next.pass_on = true;
                let store = next.store.clone();
                store.lead_commits(next).await;
            });
        }
        // Without a runtime (it is shutting down), `next` is dropped here and frees the slot:
        // the queued commits' callers are gone with the runtime.
    }
}

/// The most episodes in one commit transaction.
const MAX_BATCH: usize = 128;
/// The most commit transactions of batched episodes at once (each on its own connection;
/// Postgres flushes the WAL of concurrent commits together).
const MAX_BATCHES: usize = 4;

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Messages to enqueue in one statement at the end of a transaction, plus the instances
/// whose `ready_at` must be recomputed and those whose hold a terminate ends.
#[derive(Default)]
struct Enqueue {
    ids: Vec<String>,
    visible_at: Vec<i64>,
    messages: Vec<String>,
    touched: BTreeSet<String>,
    released: Vec<String>,
}

impl Enqueue {
    fn push(&mut self, id: &str, message: &Message) -> R<()> {
        self.ids.push(id.to_owned());
        self.visible_at.push(ts(message.id.visible_at));
        self.messages.push(serde_json::to_string(message)?);
        self.touch(id);
        if super::ends_hold(&message.event) {
            self.released.push(id.to_owned());
        }
        Ok(())
    }

    fn touch(&mut self, id: &str) {
        self.touched.insert(id.to_owned());
    }

    async fn flush(self, store: &PostgresStore, tx: &Transaction<'_>) -> R<()> {
        let sql = &store.inner.sql;
        let (enqueue, ready, release) = tokio::try_join!(
            tx.prepare_cached(&sql.enqueue),
            tx.prepare_cached(&sql.refresh_ready),
            tx.prepare_cached(&sql.release_holds),
        )?;
        let touched: Vec<String> = self.touched.into_iter().collect();
        tokio::try_join!(
            async {
                if self.released.is_empty() {
                    Ok(0)
                } else {
                    tx.execute(&release, &[&self.released]).await
                }
            },
            async {
                if self.ids.is_empty() {
                    Ok(0)
                } else {
                    tx.execute(&enqueue, &[&self.ids, &self.visible_at, &self.messages])
                        .await
                }
            },
            async {
                if touched.is_empty() {
                    Ok(0)
                } else {
                    tx.execute(&ready, &[&touched]).await
                }
            },
        )?;
        Ok(())
    }
}

/// Checks or creates the task hub's schema, under an advisory lock so concurrent starts
/// do not race.
async fn migrate(pool: &Pool, hub: &str, schema: &str) -> Result<(), StoreError> {
    let fail = |what: &str, e: tokio_postgres::Error| {
        let mut msg = format!("task hub `{hub}`: {what}: {}", describe(&e));
        if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
            msg.push_str(PRIVILEGES_HINT);
        }
        StoreError::backend_with(msg, e)
    };
    let mut conn = pool.get().await.map_err(|e| match e {
        PoolError::Backend(e) => fail("cannot connect to PostgreSQL", e),
        other => StoreError::backend_with(
            format!("task hub `{hub}`: cannot connect to PostgreSQL: {other}"),
            other,
        ),
    })?;
    let tx = conn
        .transaction()
        .await
        .map_err(|e| fail("cannot begin a transaction", e))?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        &[&MIGRATION_LOCK, &hub],
    )
    .await
    .map_err(|e| fail("cannot take the migration lock", e))?;
    let exists: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
            &[&hub],
        )
        .await
        .and_then(|r| r.try_get(0))
        .map_err(|e| fail("cannot look for the schema", e))?;
    if !exists {
        tx.batch_execute(&format!("CREATE SCHEMA {schema}"))
            .await
            .map_err(|e| fail("cannot create the schema", e))?;
    }
    let versioned: bool = tx
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&format!("{schema}.schema_version")],
        )
        .await
        .and_then(|r| r.try_get(0))
        .map_err(|e| fail("cannot read the schema version", e))?;
    let current: i32 = if versioned {
        tx.query_one(
            &format!("SELECT COALESCE(MAX(version), 0) FROM {schema}.schema_version"),
            &[],
        )
        .await
        .and_then(|r| r.try_get(0))
        .map_err(|e| fail("cannot read the schema version", e))?
    } else {
        let relations: i64 = tx
            .query_one(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1",
                &[&hub],
            )
            .await
            .and_then(|r| r.try_get(0))
            .map_err(|e| fail("cannot inspect the schema", e))?;
        if relations > 0 {
            return Err(StoreError::backend(format!(
                "task hub `{hub}`: the schema `{hub}` exists but is not a durable task hub (it has \
                 no schema_version table); choose another task hub name"
            )));
        }
        0
    };
    if current > SCHEMA_VERSION {
        return Err(StoreError::backend(format!(
            "task hub `{hub}` has schema version {current}, but this build of durable knows \
             versions up to {SCHEMA_VERSION}: upgrade durable, or use another task hub"
        )));
    }
    for version in current + 1..=SCHEMA_VERSION {
        let ddl =
            MIGRATIONS[usize::try_from(version - 1).unwrap_or_default()].replace("{s}", schema);
        tx.batch_execute(&ddl)
            .await
            .map_err(|e| fail(&format!("cannot migrate to schema version {version}"), e))?;
        tx.execute(
            &format!("INSERT INTO {schema}.schema_version (version) VALUES ($1)"),
            &[&version],
        )
        .await
        .map_err(|e| fail("cannot record the schema version", e))?;
    }
    tx.commit()
        .await
        .map_err(|e| fail("cannot commit the schema", e))
}

// ---------------------------------------------------------------------------------------
// Notifications

/// Which signals a write sends.
#[derive(Debug, Clone, Copy, Default)]
struct Wake {
    orchestration: bool,
    activity: bool,
    /// Some instance changed.
    changed: bool,
    /// Some instance may have finished (or been purged, or replaced): completion waiters
    /// look again. Not set by steps that finish nothing, so a waiter does not read its
    /// instance after every step.
    finished: bool,
}

impl Wake {
    const ORCHESTRATION: Wake = Wake {
        orchestration: true,
        activity: false,
        changed: false,
        finished: false,
    };

    /// A creation (which may replace, and terminate, an instance).
    const CREATED: Wake = Wake {
        orchestration: true,
        activity: false,
        changed: false,
        finished: true,
    };

    /// A purge.
    const PURGED: Wake = Wake {
        orchestration: false,
        activity: false,
        changed: true,
        finished: true,
    };

    /// The notification payload's kinds: `o` (orchestration work), `a` (activity work),
    /// `c` (an instance may have finished: what every change was before `u`), `u` (an
    /// instance changed, none finished; a listener that does not know `u` ignores it).
    fn kinds(self) -> String {
        let mut kinds = String::new();
        if self.orchestration {
            kinds.push('o');
        }
        if self.activity {
            kinds.push('a');
        }
        if self.finished {
            kinds.push('c');
        } else if self.changed {
            kinds.push('u');
        }
        kinds
    }

    fn or(self, other: Wake) -> Wake {
        Wake {
            orchestration: self.orchestration || other.orchestration,
            activity: self.activity || other.activity,
            changed: self.changed || other.changed,
            finished: self.finished || other.finished,
        }
    }

    fn bits(self) -> u8 {
        u8::from(self.orchestration)
            | u8::from(self.activity) << 1
            | u8::from(self.changed) << 2
            | u8::from(self.finished) << 3
    }

    fn from_bits(bits: u8) -> Self {
        Wake {
            orchestration: bits & 1 != 0,
            activity: bits & 2 != 0,
            changed: bits & 4 != 0,
            finished: bits & 8 != 0,
        }
    }
}

/// Sends this process's notifications right after its writes commit, coalescing the writes
/// made while one is on its way into the next. Each is its own short transaction with
/// `synchronous_commit` off (a notification is not durable anyway), so the writes themselves
/// commit without Postgres's notification lock and group their WAL flushes.
#[derive(Default)]
struct Notifier {
    pending: AtomicU8,
    wake: Notify,
}

impl Notifier {
    fn post(&self, wake: Wake) {
        let bits = wake.bits();
        if bits != 0 {
            self.pending.fetch_or(bits, Ordering::AcqRel);
            self.wake.notify_one();
        }
    }

    /// `prefix` is the batch up to the payload's opening quote and origin.
    async fn run(self: Arc<Self>, pool: Pool, prefix: String) {
        loop {
            self.wake.notified().await;
            let bits = self.pending.swap(0, Ordering::AcqRel);
            if bits == 0 {
                continue;
            }
            let sql = format!("{prefix}{}'; COMMIT", Wake::from_bits(bits).kinds());
            let sent = match pool.get().await {
                Ok(conn) => {
                    let sent = conn.batch_execute(&sql).await;
                    if sent.is_err() {
                        // A statement that failed after the batch's `BEGIN` leaves its
                        // transaction open (aborted): end it before the connection goes back
                        // to the pool (a user's pool, with `from_pool`).
                        let _ = conn.batch_execute("ROLLBACK").await;
                    }
                    sent.map_err(|e| describe(&e))
                }
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = sent {
                // Other processes find the work on their fallback poll.
                tracing::warn!(error = %e, "cannot send a PostgreSQL notification");
            }
        }
    }
}

/// A listening connection: its client (kept open) and the notifications it receives.
type Listening = (
    tokio_postgres::Client,
    mpsc::UnboundedReceiver<Notification>,
);

/// Opens a connection `LISTEN`ing on the channel it is given, with the `Config` and TLS
/// connector it was made with (so `PostgresStore` needs no TLS type parameter).
type ListenConnector = Arc<
    dyn Fn(String) -> Pin<Box<dyn Future<Output = Result<Listening, tokio_postgres::Error>> + Send>>
        + Send
        + Sync,
>;

/// A [`ListenConnector`] opening connections with `config` through `tls`.
fn listen_connector<T>(config: Config, tls: T) -> ListenConnector
where
    T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
    T::Stream: Send + Sync,
    T::TlsConnect: Send + Sync,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    Arc::new(move |channel: String| {
        let config = config.clone();
        let tls = tls.clone();
        Box::pin(async move { listen(&config, tls, &channel).await })
    })
}

/// The `application_name` (`durable`) and connect timeout of `options`, unless `config`
/// has its own.
fn set_defaults(config: &mut Config, options: &PostgresOptions) {
    if config.get_application_name().is_none() {
        config.application_name("durable");
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(options.connect_timeout);
    }
}

/// Opens a connection that `LISTEN`s on `channel`; notifications arrive on the receiver,
/// which closes when the connection is lost.
async fn listen<T>(
    config: &Config,
    tls: T,
    channel: &str,
) -> Result<Listening, tokio_postgres::Error>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let (client, mut connection) = config.connect(tls).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx.send(n).is_err() {
                        break;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "PostgreSQL notification connection failed");
                    break;
                }
                None => break,
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {}", quote_ident(channel)))
        .await?;
    Ok((client, rx))
}

/// The background task turning notifications into [`StoreSignals`].
struct Listener {
    /// Opens the listening connection; `None`: there is none (a user's pool), only the
    /// fallback poll.
    connect: Option<ListenConnector>,
    channel: String,
    origin: String,
    signals: Arc<StoreSignals>,
    poll: Duration,
}

impl Listener {
    /// `first`: the listening connection opened at start (`None` without a connector).
    async fn run(self, first: Option<Listening>) {
        // Without a listening connection, a receiver that never yields (its sender lives as
        // long as this task).
        let (_never_sends, idle) = mpsc::unbounded_channel();
        let (mut client, mut notifications) = match first {
            Some((client, rx)) => (Some(client), rx),
            None => (None, idle),
        };
        let mut tick = tokio::time::interval(self.poll.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                n = notifications.recv() => {
                    if let Some(n) = n {
                        self.handle(&n);
                    } else if let Some(connect) = &self.connect {
                        drop(client.take());
                        let (c, rx) = self.reconnect(connect).await;
                        client = Some(c);
                        notifications = rx;
                        // Notifications may have been missed meanwhile: look at everything.
                        self.signals.orchestration_work();
                        self.signals.activity_work();
                        self.signals.instance_finished();
                    }
                }
                _ = tick.tick() => {
                    self.signals.orchestration.notify_one();
                    self.signals.activity.notify_one();
                    // Completion waiters too, in case a notification was lost.
                    self.signals.instance_finished();
                }
            }
        }
    }

    fn handle(&self, n: &Notification) {
        let Some((origin, kinds)) = n.payload().split_once(':') else {
            return;
        };
        if origin == self.origin {
            return;
        }
        for kind in kinds.chars() {
            match kind {
                'o' => {
                    self.signals.orchestration_work();
                    self.signals.instance_finished();
                }
                'a' => self.signals.activity_work(),
                'c' => self.signals.instance_finished(),
                'u' => {
                    self.signals.changed.send_modify(|v| *v = v.wrapping_add(1));
                }
                _ => {}
            }
        }
    }

    async fn reconnect(&self, connect: &ListenConnector) -> Listening {
        let mut backoff = Duration::from_millis(100);
        loop {
            match connect(self.channel.clone()).await {
                Ok(pair) => return pair,
                Err(e) => {
                    tracing::warn!(error = %describe(&e), retry_in = ?backoff, "cannot reconnect the PostgreSQL notification listener");
                    pause(backoff).await;
                    // Keep polling meanwhile (slowly), so work still gets done.
                    self.signals.orchestration.notify_one();
                    self.signals.activity.notify_one();
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Helpers

/// An internal failure: the operation's own error (the transaction is rolled back), a
/// database error, or anything else.
enum Error {
    Op(StoreError),
    Db(tokio_postgres::Error),
    /// What failed, and the error behind it when there is one.
    Other(String, Option<Source>),
}

/// The cause kept in a [`StoreError::Backend`].
type Source = Box<dyn std::error::Error + Send + Sync>;

type R<T> = Result<T, Error>;

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        Error::Db(e)
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Other(
            format!("a stored value does not encode or decode: {e}"),
            Some(Box::new(e)),
        )
    }
}

fn retryable(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    })
}

/// A database error with its cause, SQLSTATE, detail and hint.
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut msg = format!("{} ({})", db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            msg.push_str("; ");
            msg.push_str(detail);
        }
        if let Some(hint) = db.hint() {
            msg.push_str("; hint: ");
            msg.push_str(hint);
        }
        return msg;
    }
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}

/// Waits before retrying a database operation. Network back-off, not engine time: it does
/// not go through the worker's `Clock`.
#[allow(
    clippy::disallowed_methods,
    reason = "a retry back-off against the database, not orchestration or timer time"
)]
async fn pause(d: Duration) {
    tokio::time::sleep(d).await;
}

/// Work items from the rows of `fetch_orchestration` / `fetch_instances`: per leased instance
/// (ordered by id), one row per visible message, or one row of NULL message columns.
fn work_items(rows: &[tokio_postgres::Row]) -> R<Vec<OrchestrationWorkItem>> {
    let mut out: Vec<OrchestrationWorkItem> = Vec::new();
    let mut current: Option<String> = None;
    for row in rows {
        let id: String = row.try_get(6)?;
        if current.as_deref() != Some(id.as_str()) {
            out.push(OrchestrationWorkItem {
                instance: decode(row.try_get(0)?)?,
                history_len: to_u64(row.try_get(2)?),
                messages: Vec::new(),
                lock: LockToken(to_u64(row.try_get(1)?)),
            });
            current = Some(id);
        }
        let Some(visible_at) = row.try_get::<_, Option<i64>>(3)? else {
            continue;
        };
        let seq: i64 = row.try_get(4)?;
        let mut m: Message = decode(row.try_get(5)?)?;
        m.id = MessageId {
            visible_at: from_ts(visible_at),
            seq: to_u64(seq),
        };
        if let Some(item) = out.last_mut() {
            item.messages.push(m);
        }
    }
    Ok(out)
}

/// The values every instance query binds for its filters: the statuses (as the `status`
/// column holds them) and the created-time bounds (ms).
fn filter_params(query: &InstanceQuery) -> (Vec<&'static str>, Option<i64>, Option<i64>) {
    let statuses = query.statuses.iter().map(|s| s.as_str()).collect();
    (
        statuses,
        query.created_from.map(ts),
        query.created_to.map(ts),
    )
}

fn decode<T: serde::de::DeserializeOwned>(json: &str) -> R<T> {
    Ok(serde_json::from_str(json)?)
}

/// Decodes a history row (TEXT, as `serde_json` wrote it, so its tag comes first) in one
/// pass: see [`crate::history::from_stored_json`].
fn decode_event(json: &str) -> R<HistoryEvent> {
    Ok(crate::history::from_stored_json(json.as_bytes())?)
}

/// A fresh lease token: 63 random bits. Not from a sequence, because leases are written with
/// asynchronous commit: after a database crash a sequence could hand out a token again, a
/// random one (practically) never.
fn new_token() -> i64 {
    i64::try_from(uuid::Uuid::new_v4().as_u128() >> 65).unwrap_or(1)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn ts(t: Timestamp) -> i64 {
    to_i64(t.as_unix_millis())
}

fn from_ts(v: i64) -> Timestamp {
    Timestamp::from_unix_millis(to_u64(v))
}

async fn get(pool: &Pool) -> R<Object> {
    pool.get().await.map_err(|e| match e {
        PoolError::Backend(e) => Error::Db(e),
        PoolError::Timeout(_) => Error::Other(
            format!(
                "no database connection became free in time (pool of {}): {e}",
                pool.status().max_size
            ),
            Some(Box::new(e)),
        ),
        other => Error::Other(
            format!("cannot get a database connection: {other}"),
            Some(Box::new(other)),
        ),
    })
}

fn build_pool(
    manager: Manager,
    size: usize,
    options: &PostgresOptions,
) -> Result<Pool, StoreError> {
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .create_timeout(Some(options.connect_timeout))
        .wait_timeout(Some(Duration::from_secs(120)))
        .build()
        .map_err(|e| StoreError::backend_with(format!("cannot create the connection pool: {e}"), e))
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn validate_hub(hub: &str) -> Result<(), StoreError> {
    let valid = !hub.is_empty()
        && hub.len() <= MAX_HUB_LEN
        && hub.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !hub.starts_with(|c: char| c.is_ascii_digit())
        && !hub.to_ascii_lowercase().starts_with("pg_");
    if valid {
        Ok(())
    } else {
        Err(StoreError::backend(format!(
            "invalid task hub name `{hub}`: use 1 to {MAX_HUB_LEN} ASCII letters, digits and `_`, \
             not starting with a digit or `pg_`"
        )))
    }
}

/// The TLS connector of [`PostgresStore::connect`] for `sslmode=require` (feature
/// `postgres-rustls`).
#[cfg(feature = "postgres-rustls")]
mod tls {
    use std::sync::Arc;

    use tokio_postgres_rustls::MakeRustlsConnect;

    use crate::error::StoreError;

    /// rustls with the `ring` provider (set here, so a process-wide default provider is not
    /// needed, nor disturbed), trusting the platform's roots, or the Mozilla roots of
    /// `webpki-roots` when the platform has none.
    pub(super) fn platform_connector() -> Result<MakeRustlsConnect, StoreError> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for e in &native.errors {
            tracing::debug!(error = %e, "while loading the platform's trusted certificates");
        }
        let (added, _ignored) = roots.add_parsable_certificates(native.certs);
        if added == 0 {
            tracing::debug!(
                "no trusted certificates on this platform: using the Mozilla roots of webpki-roots"
            );
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        // rustls 0.23.48 deprecates the ring provider for its lack of post-quantum key
        // exchange; aws-lc-rs has it but needs a heavier C build. Ring still negotiates
        // X25519 and the NIST curves with every PostgreSQL server.
        #[allow(deprecated, reason = "ring: no C toolchain beyond a C compiler")]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| StoreError::backend_with(format!("cannot set up TLS: {e}"), e))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(MakeRustlsConnect::new(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test database, if `DURABLE_TEST_POSTGRES_URL` names one.
    fn test_url() -> Option<String> {
        std::env::var("DURABLE_TEST_POSTGRES_URL")
            .ok()
            .filter(|u| !u.is_empty())
    }

    const T0: Timestamp = Timestamp::from_unix_millis(1_700_000_000_000);

    fn first_commit(item: &OrchestrationWorkItem) -> EpisodeCommit {
        let mut c = EpisodeCommit::new(
            item.instance.instance_id.clone(),
            item.lock,
            RuntimeStatus::Running,
            T0,
        );
        c.consumed = item.messages.iter().map(|m| m.id).collect();
        c.new_events.push(HistoryEvent {
            index: 0,
            timestamp: T0,
            event: Event::OrchestratorStarted,
        });
        c
    }

    /// A batch's leader whose caller goes away mid-batch (its worker aborted) does not
    /// cancel the batch: the other episodes in it are committed and answered. A queued
    /// commit whose caller is gone before its batch starts is not written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_leader_does_not_cancel_its_batch() {
        let Some(url) = test_url() else { return };
        let hub = format!("durable_test_{}", &InstanceId::random().as_str()[..16]);
        let store = PostgresStore::connect(&url, PostgresOptions::new(&hub))
            .await
            .expect("connect");
        for name in ["a", "b", "c", "d"] {
            let id = InstanceId::new(name).expect("id");
            store
                .create_instance(NewInstance::new(id, "X", "null".into(), T0))
                .await
                .expect("create");
        }
        let mut items = store
            .fetch_orchestration_batch(T0, Duration::from_secs(3600), 4)
            .await
            .expect("fetch");
        items.sort_by(|x, y| x.instance.instance_id.cmp(&y.instance.instance_id));
        let [a, b, c, d] = &items[..] else {
            panic!("four instances leased: {items:?}")
        };
        // Another connection holds a's row, so the batch waits in its lock statement.
        let (holder, connection) = tokio_postgres::connect(&url, NoTls).await.expect("connect");
        let driver = tokio::spawn(connection);
        holder
            .batch_execute(&format!(
                "BEGIN; SELECT 1 FROM \"{hub}\".instances WHERE id = 'a' FOR UPDATE"
            ))
            .await
            .expect("lock a");
        // b's commit is queued, as by another episode while a's caller took the lead.
        let (reply, b_answer) = oneshot::channel();
        lock(&store.inner.commits).queue.push_back(PendingCommit {
            commit: first_commit(b),
            reply,
        });
        let leader = tokio::spawn({
            let store = store.clone();
            let commit = first_commit(a);
            async move { store.commit_episode(commit).await }
        });
        // Until the batch (b and a) waits for a's row.
        let waiting = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
             AND query LIKE '%\"{hub}\".instances%'"
        );
        let mut polls = 0;
        loop {
            // Inside the holder's transaction the activity view is a snapshot: drop it.
            holder
                .batch_execute("SELECT pg_stat_clear_snapshot()")
                .await
                .expect("clear the stats snapshot");
            let row = holder
                .query_one(&waiting, &[])
                .await
                .expect("pg_stat_activity");
            if row.get::<_, i64>(0) > 0 {
                break;
            }
            polls += 1;
            assert!(polls < 2000, "the batch never reached the database");
            pause(Duration::from_millis(5)).await;
        }
        leader.abort();
        assert!(leader.await.expect_err("aborted").is_cancelled());
        holder.batch_execute("ROLLBACK").await.expect("release a");
        assert_eq!(
            b_answer.await.expect("b is answered"),
            Ok(()),
            "b's commit went through"
        );
        for id in ["a", "b"] {
            let history = store
                .read_history(&InstanceId::new(id).expect("id"))
                .await
                .expect("history");
            assert_eq!(history.len(), 1, "{id}'s episode was committed");
        }

        // c's caller is gone before its batch: nothing of it is written.
        let (reply, gone) = oneshot::channel();
        drop(gone);
        lock(&store.inner.commits).queue.push_back(PendingCommit {
            commit: first_commit(c),
            reply,
        });
        store
            .commit_episode(first_commit(d))
            .await
            .expect("commit d");
        let c_history = store
            .read_history(&InstanceId::new("c").expect("id"))
            .await
            .expect("history");
        assert!(c_history.is_empty(), "c was not written: {c_history:?}");
        assert!(
            lock(&store.inner.commits).queue.is_empty(),
            "c is no longer queued"
        );
        drop(holder);
        let _ = driver.await;
        store.drop_task_hub().await.expect("drop the hub");
    }

    #[test]
    fn hub_names() {
        for ok in ["durable", "Orders_2", "_x", &"h".repeat(MAX_HUB_LEN)] {
            assert!(validate_hub(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1abc",
            "pg_hub",
            "a-b",
            "a b",
            "a\"b",
            &"h".repeat(MAX_HUB_LEN + 1),
        ] {
            let err = validate_hub(bad).unwrap_err();
            assert!(err.to_string().contains("invalid task hub name"), "{err}");
        }
    }

    #[tokio::test]
    async fn bad_url_is_a_clear_error() {
        let err = PostgresStore::connect("postgres://[::1", PostgresOptions::default())
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("invalid PostgreSQL connection string"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn unreachable_server_is_a_clear_error() {
        // Port 1 on loopback: nothing listens there.
        let err = PostgresStore::connect(
            "postgres://postgres@127.0.0.1:1/none",
            PostgresOptions::default().connect_timeout(Duration::from_secs(2)),
        )
        .await
        .unwrap_err();
        let msg = err.to_string();
        eprintln!("{msg}");
        assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
        assert!(msg.contains("cannot connect to PostgreSQL"), "{msg}");
        // The driver's error, and the OS error under it, stay reachable.
        let driver = std::error::Error::source(&err)
            .and_then(|s| s.downcast_ref::<tokio_postgres::Error>())
            .expect("the tokio-postgres error is the source");
        let mut chain = std::error::Error::source(driver);
        let mut refused = false;
        while let Some(e) = chain {
            refused |= e
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused);
            chain = e.source();
        }
        assert!(refused, "the connection refusal is in the chain: {err:?}");
        // A client error carries it on.
        let client = crate::ClientError::from(err);
        assert!(
            std::error::Error::source(&client)
                .unwrap()
                .is::<tokio_postgres::Error>(),
            "{client:?}"
        );
    }
}
