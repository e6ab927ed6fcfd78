//! [`PostgresStore`]: the [`Store`] for many worker processes on many machines, on
//! Postgres (feature `postgres`).

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Object, Pool};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_postgres::types::ToSql;

use self::commit::{Commits, EagerAsk, Leader, MAX_BATCHES, PendingCommit};
use self::lease::WakeHint;
use self::notify::{Notifier, Wake};
use self::schema::{MIGRATION_LOCK, quote_ident};
use self::sql::Sql;
use self::util::{
    Error, MAX_ATTEMPTS, R, decode, describe, get, lock, new_token, pause, retryable, to_i64,
    to_u64, ts,
};
use crate::error::{BackendError, StoreError};
use crate::history::{HistoryEvent, Payload, RuntimeStatus};
use crate::ids::{InstanceId, Timestamp};
use crate::storage::metrics::CommitTimer;
use crate::storage::{
    ActivityWorkItem, CreateResult, EpisodeCommit, InstancePage, InstanceQuery, InstanceRecord,
    LockToken, Message, NewInstance, OrchestrationWorkItem, QueueDepths, Store, StoreSignals,
    WorkKind,
};

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

mod commit;
mod connect;
mod lease;
mod notify;
mod query;
mod schema;
mod sql;
#[cfg(test)]
mod tests;
#[cfg(feature = "postgres-rustls")]
mod tls;
mod transactional;
mod util;
mod write;

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
    /// Commits an episode — in a group with the episodes committed meanwhile (one
    /// transaction, one WAL flush), unless it creates sub-orchestrations — leasing the task
    /// `eager` names to the committer; answers that task if it was leased.
    async fn commit_grouped(
        &self,
        commit: EpisodeCommit,
        eager: Option<EagerAsk>,
    ) -> Result<Option<ActivityWorkItem>, StoreError> {
        if !commit.new_instances.is_empty() {
            let timer = CommitTimer::start();
            let wake =
                retry_tx!(self, "committing an episode", tx => self.commit_tx(&tx, &commit))?;
            timer.record_single("postgres");
            self.signal(wake);
            return Ok(None);
        }
        let (reply, answer) = oneshot::channel();
        let lead = {
            let mut q = lock(&self.inner.commits);
            q.queue.push_back(PendingCommit {
                commit,
                eager,
                reply,
            });
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
        self.commit_grouped(commit, None).await.map(drop)
    }

    async fn commit_episode_eager(
        &self,
        commit: EpisodeCommit,
        task: usize,
        now: Timestamp,
        lock_for: Duration,
    ) -> Result<Option<ActivityWorkItem>, StoreError> {
        let Some(t) = commit.activities.get(task) else {
            return self.commit_grouped(commit, None).await;
        };
        let lock_for = self.activity_lease(lock_for);
        let ask = EagerAsk {
            task,
            token: new_token(),
            now: ts(now),
            until: ts(now + t.lease_for(lock_for)),
            keep_until: commit
                .keep_lease
                .map(|keep| ts(now + self.orchestration_lease(keep))),
        };
        self.commit_grouped(commit, Some(ask)).await
    }

    fn supports_eager_dispatch(&self) -> bool {
        true
    }

    fn keeps_lease_for_eager(&self) -> bool {
        true
    }

    async fn release_kept_lease(
        &self,
        instance_id: &InstanceId,
        lock: LockToken,
    ) -> Result<(), StoreError> {
        self.release_kept(instance_id, lock).await
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

    async fn create_leased(
        &self,
        new: NewInstance,
        now: Timestamp,
        lock_for: Duration,
    ) -> Result<Option<OrchestrationWorkItem>, StoreError> {
        let lock_for = self.orchestration_lease(lock_for);
        // Leased to the caller: no worker needs waking, only watchers of changes.
        let wake = Wake {
            changed: true,
            ..Wake::default()
        };
        let item = self.create_leased_row(&new, now, lock_for, wake).await?;
        if item.is_some() {
            self.signal(wake);
        }
        Ok(item)
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

    async fn complete_activity_in_transaction(
        &self,
        id: u64,
        lock: LockToken,
        run: crate::storage::app::TransactionalRun,
    ) -> Result<(), StoreError> {
        self.complete_in_transaction(id, lock, run).await
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
