//! The application's side of a store: the transactions a transactional activity's body
//! runs in ([`RedbTransaction`], [`PgTransaction`]), a run handed to
//! [`Store::complete_activity_in_transaction`](crate::Store::complete_activity_in_transaction)
//! ([`TransactionalRun`]), and the registered bodies (see [`crate::transaction`]). Kept
//! apart from the registry's traits so the stores do not depend on the registry.

use std::fmt;
use std::sync::Arc;

use crate::error::FailureDetails;
#[cfg(feature = "redb")]
use crate::error::StoreError;
use crate::history::Payload;
use crate::storage::Message;

#[cfg(feature = "postgres")]
pub use self::pg_tx::PgTransaction;
#[cfg(feature = "redb")]
pub use self::redb_tx::{RedbReadTransaction, RedbTransaction};

/// A boxed, sendable future (as [`crate::registry::BoxFuture`]).
#[cfg(feature = "postgres")]
pub(crate) type BoxFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

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
    dyn for<'t> FnOnce(&'t PgTransaction<'t>) -> BoxFuture<'t, Result<Payload, FailureDetails>>
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
    pub(crate) finish: Finish,
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

/// A registered `PostgreSQL` transactional activity with its types erased.
#[cfg(feature = "postgres")]
pub(crate) type PgActivityFn = dyn for<'t> Fn(&'t PgTransaction<'t>, Payload) -> BoxFuture<'t, Result<Payload, FailureDetails>>
    + Send
    + Sync;

/// How a run's outcome becomes the message its task's completion enqueues.
pub(crate) type Finish = Box<dyn FnOnce(Result<Payload, FailureDetails>) -> Message + Send>;

/// A redb run taken apart: the activity's name, its body, and its [`Finish`].
#[cfg(feature = "redb")]
pub(crate) type RedbRun = (Arc<str>, RedbBody, Finish);

#[cfg(feature = "redb")]
impl TransactionalRun {
    /// The run's redb body, or `Unsupported` naming `store` when it needs another kind of
    /// transaction.
    pub(crate) fn into_redb(self, store: &str) -> Result<RedbRun, StoreError> {
        let Self {
            activity,
            body,
            finish,
        } = self;
        #[allow(
            irrefutable_let_patterns,
            reason = "refutable with the postgres feature"
        )]
        let Body::Redb(body) = body else {
            return Err(StoreError::Unsupported(format!(
                "{store} cannot run this kind of transaction for activity `{activity}`"
            )));
        };
        Ok((activity, body, finish))
    }
}

/// Runs a redb body in `txn`; a panic becomes the activity's failure.
#[cfg(feature = "redb")]
pub(crate) fn run_redb_body(
    activity: &str,
    body: RedbBody,
    txn: &redb::WriteTransaction,
) -> Result<Payload, FailureDetails> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        body(&RedbTransaction::new(txn))
    }))
    .unwrap_or_else(|panic| Err(panic_failure(activity, panic.as_ref())))
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
}

#[cfg(feature = "postgres")]
mod pg_tx {

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
