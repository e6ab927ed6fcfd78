//! Transactional activities: an activity whose writes to the application's own data commit
//! in the same transaction as its task's completion, so they are applied exactly once.
//!
//! An ordinary activity runs at least once: a crash after its side effect and before its
//! result is recorded runs it again. A transactional activity instead receives a
//! transaction on the application's tables *in the store's own database*, and the store
//! commits that transaction together with the removal of the task and the enqueueing of its
//! result, under the task's lease check. Either both happen or neither does:
//!
//! - the body returns `Ok`: its writes and the result commit together;
//! - the body returns an error or panics: its writes are rolled back and the failure is
//!   recorded like any activity failure (a [`RetryPolicy`](crate::RetryPolicy) runs it
//!   again);
//! - the worker lost the task's lease (another worker took it over): nothing is written;
//! - the process dies before the commit: nothing is written and the task runs again.
//!
//! With the redb store ([`RedbStore`](crate::RedbStore)) the body is a synchronous function
//! taking a `RedbTransaction`; it runs on the store's writer thread, as the first
//! operation of a group commit (a failed body's writes can only be undone by aborting the
//! transaction, so each run starts one; the writes queued behind it join it). The
//! application reads its tables with [`RedbStore::read_app`](crate::RedbStore::read_app)
//! and writes outside activities (setup, migrations) with
//! [`RedbStore::write_app`](crate::RedbStore::write_app). [`MemoryStore`](crate::MemoryStore)
//! runs the same activities on a redb database in memory (`MemoryStore::read_app`), so the
//! test harness runs them too.
//!
//! With the `PostgreSQL` store (feature `postgres`) the body is an `async fn` taking a
//! `PgTransaction` (a `tokio_postgres::Transaction` on the task hub's database): the store
//! locks the task's row under its lease, runs the body after a savepoint, and completes the
//! task in the same transaction. The application's tables are its own, in the same
//! database.
//!
//! A store that cannot run the kind of transaction an activity asks for fails its task with
//! a non-retriable error naming the store and the activity.
//!
//! # What a body must know
//!
//! - Its writes commit even when the instance has already finished or been terminated:
//!   the result is then dropped, as for any activity that completes after a terminate.
//! - It must not call [`RedbStore::write_app`](crate::RedbStore::write_app) (or another
//!   write) on the same store: it runs inside that store's write, which would wait for
//!   itself (a deadlock). On [`MemoryStore`](crate::MemoryStore) it runs under the store's
//!   data lock: every other call to the store waits for it.
//! - On `PostgreSQL` it must not end the transaction itself (no `COMMIT` or `ROLLBACK`
//!   statement) nor change session state with a session-level `SET`: the connection goes
//!   back to the store's pool. Use `SET LOCAL`, which ends with the transaction.
//! - On `PostgreSQL` an SQL error it ignores (`let _ = tx.execute(..).await;`) aborts the
//!   transaction: nothing it wrote can commit, so even if it then returns `Ok` its task
//!   fails, not retriably, with error type `TransactionAborted`. An SQL error it passes on
//!   with `?` is recorded with the database's message and SQLSTATE code.
//! - A `PostgreSQL` body runs under its call's start-to-close timeout
//!   ([`CallOptions::timeout`](crate::CallOptions::timeout)): at the deadline its statements
//!   are rolled back and the attempt fails with error type
//!   [`CallOptions::TIMEOUT`](crate::CallOptions::TIMEOUT). A worker shutting down stops it
//!   too: its statements are rolled back, nothing is recorded, and the task runs again once
//!   its lease lapses. It gets no heartbeats. A redb body runs synchronously on the store's
//!   writer thread: no timeout, heartbeat or shutdown stops it.
//!
//! # Examples
//!
//! ```
//! use durable_core::prelude::*;
//! use durable_core::redb::{ReadableTable, TableDefinition};
//! use durable_core::{RedbStore, RedbTransaction};
//!
//! const BALANCES: TableDefinition<'_, &str, i64> = TableDefinition::new("balances");
//!
//! #[activity(transactional)]
//! fn deposit(tx: &RedbTransaction<'_>, cents: i64) -> Result<i64, ActivityError> {
//!     let mut balances = tx.open_table(BALANCES)?;
//!     let balance = balances.get("alice")?.map_or(0, |v| v.value()) + cents;
//!     balances.insert("alice", balance)?;
//!     Ok(balance)
//! }
//!
//! #[orchestrator]
//! async fn pay_in(ctx: OrchestrationContext, cents: i64) -> Result<i64, OrchestrationError> {
//!     Ok(ctx.call(deposit, cents).await?)
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = RedbStore::in_memory()?;
//! let worker = Worker::builder()
//!     .store(store.clone())
//!     .register(deposit)
//!     .register(pay_in)
//!     .start()?;
//! let run = pay_in::start(&worker.client(), 250).await?;
//! assert_eq!(run.wait().await?, 250);
//! let balance = store.read_app(|tx| -> Result<Option<i64>, ActivityError> {
//!     let Some(balances) = tx.open_table(BALANCES)? else { return Ok(None) };
//!     Ok(balances.get("alice")?.map(|v| v.value()))
//! })?;
//! assert_eq!(balance, Some(250));
//! # worker.shutdown().await;
//! # Ok(()) }
//! ```

#[cfg(any(feature = "redb", feature = "postgres"))]
use std::sync::Arc;

use crate::error::FailureDetails;
#[cfg(any(feature = "redb", feature = "postgres"))]
use crate::history::Payload;
#[cfg(feature = "postgres")]
use crate::storage::app::PgActivityFn;
#[cfg(feature = "redb")]
use crate::storage::app::RedbActivityFn;

#[cfg(feature = "postgres")]
pub use self::pg_tx::PostgresActivity;
#[cfg(feature = "redb")]
pub use self::redb_tx::RedbActivity;
#[cfg(feature = "postgres")]
pub use crate::storage::app::PgTransaction;
#[cfg(feature = "redb")]
pub use crate::storage::app::{RedbReadTransaction, RedbTransaction};
pub use crate::storage::app::{TransactionKind, TransactionalRun};

#[cfg(feature = "redb")]
impl crate::Registry {
    /// Registers a redb transactional activity under `A::NAME` (what `.register(marker)`
    /// does for an `#[activity(transactional)]` function).
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_core::{RedbTransaction, Registry};
    ///
    /// #[activity(transactional)]
    /// fn noop(_tx: &RedbTransaction<'_>, x: u32) -> Result<u32, ActivityError> {
    ///     Ok(x)
    /// }
    ///
    /// let mut registry = Registry::new();
    /// registry.add_redb_activity(noop);
    /// assert!(registry.has_activity("noop"));
    /// ```
    pub fn add_redb_activity<A: RedbActivity>(&mut self, activity: A) {
        let name = A::NAME;
        let f: Arc<RedbActivityFn> = Arc::new(move |tx: &RedbTransaction<'_>, input: Payload| {
            let input: A::Input = crate::error::decode(&input)
                .map_err(|e| FailureDetails::from_error(&e).non_retriable())?;
            let out = activity.run_in(tx, input)?;
            crate::error::encode(&out).map_err(|e| FailureDetails::from_error(&e))
        });
        // Also an ordinary entry, so the activity is known by name; only a run outside a
        // store transaction (a local call) reaches it.
        self.add_activity_raw(name, move |_ctx, _input| {
            Box::pin(async move { Err(outside_store(name)) })
        });
        self.transactional.redb.insert(Arc::from(name), f);
    }
}

impl crate::Registry {
    /// Makes the transactional activity registered under `name` an ordinary one again: its
    /// runs then go to its ordinary handler (see
    /// [`replace_activity_raw`](Self::replace_activity_raw)), not to the store. For test
    /// harnesses that mock it. `false` when `name` is not a transactional activity.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_core::{RedbTransaction, Registry};
    ///
    /// #[activity(transactional)]
    /// fn noop(_tx: &RedbTransaction<'_>) -> Result<(), ActivityError> {
    ///     Ok(())
    /// }
    ///
    /// let mut registry = Registry::new();
    /// registry.register(noop);
    /// assert!(registry.forget_transactional("noop"));
    /// assert!(!registry.forget_transactional("noop"));
    /// assert!(registry.has_activity("noop"));
    /// ```
    pub fn forget_transactional(&mut self, name: &str) -> bool {
        self.transactional.forget(name)
    }
}

#[cfg(feature = "postgres")]
impl crate::Registry {
    /// Registers a `PostgreSQL` transactional activity under `A::NAME` (what
    /// `.register(marker)` does for an `#[activity(transactional)]` function taking
    /// `tx: &PgTransaction<'_>`).
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_core::{PgTransaction, Registry};
    ///
    /// #[activity(transactional)]
    /// async fn noop(_tx: &PgTransaction<'_>, x: u32) -> Result<u32, ActivityError> {
    ///     Ok(x)
    /// }
    ///
    /// let mut registry = Registry::new();
    /// registry.add_postgres_activity(noop);
    /// assert!(registry.has_activity("noop"));
    /// ```
    pub fn add_postgres_activity<A: PostgresActivity>(&mut self, activity: A) {
        let name = A::NAME;
        let activity = Arc::new(activity);
        let f: Arc<PgActivityFn> = Arc::new(move |tx: &PgTransaction<'_>, input: Payload| {
            let activity = Arc::clone(&activity);
            Box::pin(async move {
                let input: A::Input = crate::error::decode(&input)
                    .map_err(|e| FailureDetails::from_error(&e).non_retriable())?;
                let out = activity.run_in(tx, input).await?;
                crate::error::encode(&out).map_err(|e| FailureDetails::from_error(&e))
            })
        });
        self.add_activity_raw(name, move |_ctx, _input| {
            Box::pin(async move { Err(outside_store(name)) })
        });
        self.transactional.postgres.insert(Arc::from(name), f);
    }
}

/// The failure of a transactional activity asked to run outside its store's transaction.
pub(crate) fn outside_store(activity: &str) -> FailureDetails {
    FailureDetails::new(
        "TransactionalActivity",
        format!(
            "activity `{activity}` is transactional: it runs only in its store's transaction, as a \
             task called with `ctx.call`, not locally; register it with `.register({activity})`"
        ),
    )
    .non_retriable()
}

#[cfg(feature = "redb")]
mod redb_tx {
    use crate::error::FailureDetails;
    use crate::registry::Activity;
    use crate::storage::app::RedbTransaction;

    /// An activity whose body runs inside a redb write transaction on the application's
    /// tables, committed with the task's completion (see the [module docs](super)).
    ///
    /// `#[activity(transactional)]` implements it (and [`Activity`], so orchestrations call
    /// it like any activity) for a synchronous function taking `tx: &RedbTransaction<'_>`.
    ///
    /// The body runs on the store's writer thread while the store's single write
    /// transaction is open: every other commit of the store waits for it. Keep it short
    /// and free of IO other than the transaction's own (no network calls, no sleeps). It
    /// has no [`ActivityContext`](crate::ActivityContext) and is synchronous: neither
    /// [`CallOptions::timeout`](crate::CallOptions::timeout) nor a heartbeat timeout applies
    /// to it, it cannot heartbeat, and a worker's shutdown waits for it to end.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_core::RedbTransaction;
    /// use durable_core::transaction::RedbActivity;
    ///
    /// #[activity(transactional)]
    /// fn noop(_tx: &RedbTransaction<'_>, x: u32) -> Result<u32, ActivityError> {
    ///     Ok(x)
    /// }
    ///
    /// fn assert_redb_activity<A: RedbActivity>(_: A) {}
    /// assert_redb_activity(noop);
    /// ```
    #[diagnostic::on_unimplemented(
        message = "`{Self}` is not a redb transactional activity",
        note = "write `#[activity(transactional)] fn name(tx: &RedbTransaction<'_>, input: T) -> Result<O, E>`"
    )]
    pub trait RedbActivity: Activity {
        /// Runs the body in `tx`. An `Err` rolls the body's writes back.
        fn run_in(
            &self,
            tx: &RedbTransaction<'_>,
            input: Self::Input,
        ) -> Result<Self::Output, FailureDetails>;
    }
}

#[cfg(feature = "postgres")]
mod pg_tx {
    use crate::error::FailureDetails;
    use crate::registry::{Activity, BoxFuture};
    use crate::storage::app::PgTransaction;

    /// An activity whose body runs in a `PostgreSQL` transaction on the task hub's database,
    /// committed with the task's completion (see the [module docs](super)).
    ///
    /// `#[activity(transactional)]` implements it (and [`Activity`]) for an `async fn`
    /// taking `tx: &PgTransaction<'_>`. The body holds one of the store's pooled
    /// connections and its row lock on the task while it runs (a purge of its instance
    /// waits for it): keep it short.
    ///
    /// It runs under its call's start-to-close timeout
    /// ([`CallOptions::timeout`](crate::CallOptions::timeout)): at the deadline its future
    /// is dropped, its statements are rolled back to the savepoint taken before it, and the
    /// attempt fails with error type [`CallOptions::TIMEOUT`](crate::CallOptions::TIMEOUT).
    /// The worker's shutdown stops it as well (rolled back, nothing recorded: the task runs
    /// again after its lease). It has no [`ActivityContext`](crate::ActivityContext): no
    /// heartbeats, no heartbeat timeout, no cancellation token. The timeout is checked only
    /// when the body yields; a statement already running on the server finishes (or is
    /// cancelled by the server's own `statement_timeout`) before the rollback runs.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_core::PgTransaction;
    /// use durable_core::transaction::PostgresActivity;
    ///
    /// #[activity(transactional)]
    /// async fn noop(_tx: &PgTransaction<'_>, x: u32) -> Result<u32, ActivityError> {
    ///     Ok(x)
    /// }
    ///
    /// fn assert_postgres_activity<A: PostgresActivity>(_: A) {}
    /// assert_postgres_activity(noop);
    /// ```
    #[diagnostic::on_unimplemented(
        message = "`{Self}` is not a PostgreSQL transactional activity",
        note = "write `#[activity(transactional)] async fn name(tx: &PgTransaction<'_>, input: T) -> Result<O, E>`"
    )]
    pub trait PostgresActivity: Activity {
        /// Runs the body in `tx`. An `Err` rolls the body's statements back.
        fn run_in<'t>(
            &'t self,
            tx: &'t PgTransaction<'t>,
            input: Self::Input,
        ) -> BoxFuture<'t, Result<Self::Output, FailureDetails>>;
    }
}
