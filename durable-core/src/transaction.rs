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

use std::fmt;
use std::sync::Arc;

use crate::error::FailureDetails;
use crate::history::Payload;
use crate::storage::Message;

#[cfg(feature = "postgres")]
pub use self::pg_tx::{PgTransaction, PostgresActivity};
#[cfg(feature = "redb")]
pub use self::redb_tx::{RedbActivity, RedbReadTransaction, RedbTransaction};

/// The kind of application transaction a transactional activity runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransactionKind {
    /// A write transaction on the application's tables in a [`RedbStore`](crate::RedbStore)'s
    /// database (`RedbTransaction`).
    Redb,
    /// A transaction on the task hub's `PostgreSQL` database (`PgTransaction`).
    Postgres,
}

impl fmt::Display for TransactionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransactionKind::Redb => f.write_str("a redb transaction (RedbStore)"),
            TransactionKind::Postgres => f.write_str("a PostgreSQL transaction (PostgresStore)"),
        }
    }
}

/// The body of a redb transactional run: JSON input already bound, JSON output or failure
/// out.
#[cfg(feature = "redb")]
pub(crate) type RedbBody =
    Box<dyn FnOnce(&RedbTransaction<'_>) -> Result<Payload, FailureDetails> + Send>;

/// The body of a `PostgreSQL` transactional run.
#[cfg(feature = "postgres")]
pub(crate) type PgBody = Box<
    dyn for<'t> FnOnce(
            &'t PgTransaction<'t>,
        ) -> crate::registry::BoxFuture<'t, Result<Payload, FailureDetails>>
        + Send,
>;

/// What a transactional run's body needs from its store.
pub(crate) enum Body {
    #[cfg(feature = "redb")]
    Redb(RedbBody),
    #[cfg(feature = "postgres")]
    Postgres(PgBody),
    /// No transaction kind is compiled in (no store feature that offers one).
    #[cfg(not(any(feature = "redb", feature = "postgres")))]
    #[allow(dead_code, reason = "uninhabited without a store feature")]
    None(std::convert::Infallible),
}

/// One run of a transactional activity, handed by the worker to
/// [`Store::complete_activity_in_transaction`](crate::Store::complete_activity_in_transaction):
/// the activity's body, bound to its input, and how to turn its outcome into the result
/// message the task's completion enqueues.
///
/// The store runs the body in a transaction of [`kind`](Self::kind) and commits its writes
/// with the task's completion when it succeeds; when it fails (or panics) the store rolls
/// the writes back and completes the task with the failure.
pub struct TransactionalRun {
    pub(crate) activity: Arc<str>,
    pub(crate) body: Body,
    #[cfg_attr(
        not(any(feature = "redb", feature = "postgres")),
        allow(dead_code, reason = "no store runs it")
    )]
    pub(crate) finish: Box<dyn FnOnce(Result<Payload, FailureDetails>) -> Message + Send>,
}

impl TransactionalRun {
    /// The kind of transaction the run needs.
    pub fn kind(&self) -> TransactionKind {
        match self.body {
            #[cfg(feature = "redb")]
            Body::Redb(_) => TransactionKind::Redb,
            #[cfg(feature = "postgres")]
            Body::Postgres(_) => TransactionKind::Postgres,
            #[cfg(not(any(feature = "redb", feature = "postgres")))]
            Body::None(never) => match never {},
        }
    }

    /// The activity's durable name.
    pub fn activity(&self) -> &str {
        &self.activity
    }
}

impl fmt::Debug for TransactionalRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransactionalRun")
            .field("activity", &self.activity)
            .field("kind", &self.kind())
            .finish_non_exhaustive()
    }
}

/// The transactional activities of a [`Registry`](crate::Registry), by durable name.
#[derive(Clone, Default)]
pub(crate) struct TxActivities {
    #[cfg(feature = "redb")]
    pub(crate) redb: std::collections::HashMap<Arc<str>, Arc<RedbActivityFn>>,
    #[cfg(feature = "postgres")]
    pub(crate) postgres: std::collections::HashMap<Arc<str>, Arc<PgActivityFn>>,
}

impl TxActivities {
    /// Forgets the transactional activity named `name`, if any.
    #[cfg_attr(
        not(feature = "redb"),
        allow(clippy::unused_self, reason = "nothing to forget")
    )]
    pub(crate) fn forget(&mut self, name: &str) -> bool {
        #[cfg_attr(
            not(any(feature = "redb", feature = "postgres")),
            allow(unused_mut, reason = "nothing to forget")
        )]
        let mut forgot = false;
        #[cfg(feature = "redb")]
        {
            forgot |= self.redb.remove(name).is_some();
        }
        #[cfg(feature = "postgres")]
        {
            forgot |= self.postgres.remove(name).is_some();
        }
        let _ = name;
        forgot
    }

    /// The registered `PostgreSQL` body named `name`, with the registry's copy of the name.
    #[cfg(feature = "postgres")]
    pub(crate) fn postgres(&self, name: &str) -> Option<(&Arc<str>, &Arc<PgActivityFn>)> {
        self.postgres.get_key_value(name)
    }

    /// The registered body named `name`, with the registry's copy of the name.
    #[cfg(feature = "redb")]
    pub(crate) fn redb(&self, name: &str) -> Option<(&Arc<str>, &Arc<RedbActivityFn>)> {
        self.redb.get_key_value(name)
    }
}

/// A registered redb transactional activity with its types erased.
#[cfg(feature = "redb")]
pub(crate) type RedbActivityFn =
    dyn Fn(&RedbTransaction<'_>, Payload) -> Result<Payload, FailureDetails> + Send + Sync;

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

/// A registered `PostgreSQL` transactional activity with its types erased.
#[cfg(feature = "postgres")]
pub(crate) type PgActivityFn = dyn for<'t> Fn(
        &'t PgTransaction<'t>,
        Payload,
    ) -> crate::registry::BoxFuture<'t, Result<Payload, FailureDetails>>
    + Send
    + Sync;

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

/// The failure a body's panic is recorded as.
#[cfg_attr(
    not(feature = "redb"),
    allow(dead_code, reason = "no store runs a body")
)]
pub(crate) fn panic_failure(activity: &str, panic: &(dyn std::any::Any + Send)) -> FailureDetails {
    let mut f = FailureDetails::from_panic(panic);
    f.message = format!("activity `{activity}` panicked: {}", f.message);
    f
}

#[cfg(feature = "redb")]
mod redb_tx {
    use redb::{Key, ReadOnlyTable, ReadTransaction, Table, TableDefinition, TableHandle, Value};

    use crate::error::FailureDetails;
    use crate::registry::Activity;

    /// The prefix every application table's name gets in the store's database: the engine's
    /// own tables never start with it, so an application table cannot collide with them.
    pub(crate) const APP_PREFIX: &str = "app:";

    fn app_name(name: &str) -> String {
        format!("{APP_PREFIX}{name}")
    }

    /// A write transaction on the application's tables in a [`RedbStore`](crate::RedbStore)'s
    /// database: what a transactional activity (and
    /// [`RedbStore::write_app`](crate::RedbStore::write_app)) receives.
    ///
    /// Tables are opened with the application's own [`TableDefinition`]s; each is stored
    /// under the name `app:<name>`, apart from the store's internal tables, which this
    /// transaction cannot reach. The writes commit with the task's completion (or roll back
    /// with its failure): do not keep state outside the transaction that assumes they
    /// committed.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_core::RedbTransaction;
    /// use durable_core::redb::TableDefinition;
    ///
    /// const ORDERS: TableDefinition<'_, u64, &str> = TableDefinition::new("orders");
    ///
    /// #[activity(transactional)]
    /// fn record_order(tx: &RedbTransaction<'_>, id: u64) -> Result<(), ActivityError> {
    ///     tx.open_table(ORDERS)?.insert(id, "placed")?;
    ///     Ok(())
    /// }
    /// # let _ = record_order;
    /// ```
    pub struct RedbTransaction<'a> {
        txn: &'a redb::WriteTransaction,
    }

    impl<'a> RedbTransaction<'a> {
        pub(crate) fn new(txn: &'a redb::WriteTransaction) -> Self {
            Self { txn }
        }

        /// Opens (creating it if needed) the application table `definition` names, for
        /// reading and writing.
        ///
        /// # Errors
        ///
        /// redb's [`TableError`](redb::TableError): the table is already open in this
        /// transaction, or it exists with other key or value types.
        pub fn open_table<K: Key + 'static, V: Value + 'static>(
            &self,
            definition: TableDefinition<'_, K, V>,
        ) -> Result<Table<'_, K, V>, redb::TableError> {
            let name = app_name(definition.name());
            self.txn.open_table(TableDefinition::<K, V>::new(&name))
        }
    }

    impl std::fmt::Debug for RedbTransaction<'_> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("RedbTransaction").finish_non_exhaustive()
        }
    }

    /// A read transaction on the application's tables in a [`RedbStore`](crate::RedbStore)'s
    /// database (see [`RedbStore::read_app`](crate::RedbStore::read_app)): a consistent
    /// snapshot of every committed transaction, without waiting for the writer.
    pub struct RedbReadTransaction<'a> {
        txn: &'a ReadTransaction,
    }

    impl<'a> RedbReadTransaction<'a> {
        pub(crate) fn new(txn: &'a ReadTransaction) -> Self {
            Self { txn }
        }

        /// Opens the application table `definition` names for reading; `None` when no
        /// transaction has created it yet.
        ///
        /// # Errors
        ///
        /// redb's [`TableError`](redb::TableError): the table exists with other key or
        /// value types, or the storage failed.
        pub fn open_table<K: Key + 'static, V: Value + 'static>(
            &self,
            definition: TableDefinition<'_, K, V>,
        ) -> Result<Option<ReadOnlyTable<K, V>>, redb::TableError> {
            let name = app_name(definition.name());
            match self.txn.open_table(TableDefinition::<K, V>::new(&name)) {
                Ok(t) => Ok(Some(t)),
                Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
                Err(e) => Err(e),
            }
        }
    }

    impl std::fmt::Debug for RedbReadTransaction<'_> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("RedbReadTransaction")
                .finish_non_exhaustive()
        }
    }

    /// An activity whose body runs inside a redb write transaction on the application's
    /// tables, committed with the task's completion (see the [module docs](super)).
    ///
    /// `#[activity(transactional)]` implements it (and [`Activity`], so orchestrations call
    /// it like any activity) for a synchronous function taking `tx: &RedbTransaction<'_>`.
    ///
    /// The body runs on the store's writer thread while the store's single write
    /// transaction is open: every other commit of the store waits for it. Keep it short
    /// and free of IO other than the transaction's own (no network calls, no sleeps). It
    /// has no [`ActivityContext`](crate::ActivityContext): timeouts, heartbeats and
    /// cancellation do not apply to it.
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

    /// The transaction a `PostgreSQL` transactional activity receives: a
    /// [`tokio_postgres::Transaction`] on the task hub's database. Its statements commit with
    /// the task's completion, under the task's lease (the task's row is locked first, so a
    /// worker that lost the lease writes nothing), or roll back with its failure.
    ///
    /// The application's tables are its own: create them in any schema of the database
    /// (the task hub's schema belongs to the store). Do not commit or roll back yourself.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_core::PgTransaction;
    ///
    /// #[activity(transactional)]
    /// async fn record_order(tx: &PgTransaction<'_>, id: i64) -> Result<(), ActivityError> {
    ///     tx.execute("INSERT INTO orders (id, state) VALUES ($1, 'placed')", &[&id])
    ///         .await?;
    ///     Ok(())
    /// }
    /// # let _ = record_order;
    /// ```
    pub type PgTransaction<'a> = tokio_postgres::Transaction<'a>;

    /// An activity whose body runs in a `PostgreSQL` transaction on the task hub's database,
    /// committed with the task's completion (see the [module docs](super)).
    ///
    /// `#[activity(transactional)]` implements it (and [`Activity`]) for an `async fn`
    /// taking `tx: &PgTransaction<'_>`. The body holds one of the store's pooled
    /// connections and its row lock on the task while it runs: keep it short.
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

/// A future that turns a panic of the one it polls into an error (a body's panic is a
/// failure of the task, not of the worker or the store).
#[cfg(feature = "postgres")]
pub(crate) struct CatchPanic<F>(pub(crate) F);

#[cfg(feature = "postgres")]
impl<F: Future + Unpin> Future for CatchPanic<F> {
    type Output = Result<F::Output, Box<dyn std::any::Any + Send>>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let inner = &mut self.0;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            std::pin::Pin::new(inner).poll(cx)
        })) {
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Ok(v)),
            Err(panic) => std::task::Poll::Ready(Err(panic)),
        }
    }
}
