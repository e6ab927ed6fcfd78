//! The application's tables of a [`MemoryStore`]: a redb database in memory, so
//! transactional activities run under the test harness as they do on a
//! [`RedbStore`](crate::RedbStore).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};

use redb::{Database, ReadableDatabase};

use super::MemoryStore;
use crate::error::StoreError;
use crate::storage::LockToken;
use crate::storage::app::{RedbReadTransaction, RedbTransaction, TransactionalRun, run_redb_body};

/// The database, created on first use.
#[derive(Debug, Default)]
pub(super) struct AppDb(Mutex<Option<Arc<Database>>>);

fn backend(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::backend_with(format!("the application's tables: {what}: {e}"), e)
}

impl MemoryStore {
    fn app_db(&self) -> Result<Arc<Database>, StoreError> {
        let mut db = self
            .inner
            .app
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(db) = &*db {
            return Ok(Arc::clone(db));
        }
        let created = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| backend("cannot create the database", e))?;
        Ok(Arc::clone(db.insert(Arc::new(created))))
    }

    /// Runs the body and completes the task under the store's lock: the body's writes
    /// commit (in memory) and the result is enqueued, or neither.
    pub(super) fn complete_in_transaction(
        &self,
        id: u64,
        lock: LockToken,
        run: TransactionalRun,
    ) -> Result<(), StoreError> {
        let db = self.app_db()?;
        let mut d = self.data();
        let (task, until) = d.held_activity(id, lock)?;
        let (activity, body, finish) = run.into_redb("MemoryStore")?;
        let txn = db
            .begin_write()
            .map_err(|e| backend("cannot begin a transaction", e))?;
        let message = match run_redb_body(&activity, body, &txn) {
            Ok(out) => {
                txn.commit().map_err(|e| backend("cannot commit", e))?;
                finish(Ok(out))
            }
            Err(failure) => {
                txn.abort().map_err(|e| backend("cannot roll back", e))?;
                finish(Err(failure))
            }
        };
        d.complete_held_activity(id, until, &task, message);
        Ok(())
    }

    /// Reads the application's tables, as [`RedbStore::read_app`](crate::RedbStore::read_app)
    /// does (feature `redb`).
    ///
    /// # Errors
    ///
    /// `f`'s error, or the failure to begin the read transaction (as `E`).
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::redb::TableDefinition;
    /// use durable_core::{ActivityError, MemoryStore};
    ///
    /// const NOTES: TableDefinition<'_, u64, &str> = TableDefinition::new("notes");
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let store = MemoryStore::new();
    /// store
    ///     .write_app(|tx| -> Result<(), ActivityError> {
    ///         tx.open_table(NOTES)?.insert(1, "hello")?;
    ///         Ok(())
    ///     })
    ///     .await
    ///     .unwrap();
    /// let note = store.read_app(|tx| -> Result<Option<String>, ActivityError> {
    ///     let Some(notes) = tx.open_table(NOTES)? else { return Ok(None) };
    ///     Ok(notes.get(1)?.map(|v| v.value().to_owned()))
    /// });
    /// assert_eq!(note.unwrap().as_deref(), Some("hello"));
    /// # });
    /// ```
    pub fn read_app<T, E>(
        &self,
        f: impl FnOnce(&RedbReadTransaction<'_>) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let db = self.app_db()?;
        let txn = db
            .begin_read()
            .map_err(|e| backend("cannot begin a read", e))?;
        f(&RedbReadTransaction::new(&txn))
    }

    /// Writes the application's tables outside any activity, as
    /// [`RedbStore::write_app`](crate::RedbStore::write_app) does (feature `redb`): committed
    /// when `f` returns `Ok`, rolled back when it returns `Err` or panics. See
    /// [`read_app`](Self::read_app) for an example.
    ///
    /// # Errors
    ///
    /// `f`'s error, or the store's failure (as `E`); a panic in `f` is a
    /// [`StoreError::Backend`].
    #[allow(
        clippy::unused_async,
        reason = "the same signature as RedbStore::write_app, whose write waits for its writer"
    )]
    pub async fn write_app<T, E>(
        &self,
        f: impl FnOnce(&RedbTransaction<'_>) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let db = self.app_db()?;
        let txn = db
            .begin_write()
            .map_err(|e| backend("cannot begin a transaction", e))?;
        let r = catch_unwind(AssertUnwindSafe(|| f(&RedbTransaction::new(&txn)))).unwrap_or_else(
            |_| Err(StoreError::backend("the application's write panicked; rolled back").into()),
        );
        if r.is_ok() {
            txn.commit().map_err(|e| backend("cannot commit", e))?;
        } else {
            txn.abort().map_err(|e| backend("cannot roll back", e))?;
        }
        r
    }
}
