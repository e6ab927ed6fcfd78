//! [`RedbStore`]: the embedded, durable [`Store`] on redb, in one file or in memory.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use redb::{
    Database, DatabaseError, ReadableDatabase, ReadableTable, Table, TableDefinition,
    WriteTransaction,
};
use tokio::sync::oneshot;

use super::app::{RedbReadTransaction, RedbTransaction, TransactionalRun, run_redb_body};
use super::metrics::CommitTimer;
use super::replace::{self, Reuse, Teardown};
use super::{
    ActivityTask, ActivityWorkItem, CreateResult, EpisodeCommit, IdReusePolicy, InstancePage,
    InstanceQuery, InstanceRecord, LockToken, Message, MessageId, NewInstance,
    OrchestrationWorkItem, QueueDepths, Store, StoreSignals, WorkKind,
};
use crate::error::{BackendError, FailureDetails, StoreError};
use crate::history::{Event, HistoryEvent, Payload, RuntimeStatus};
use crate::ids::{InstanceId, Timestamp};

/// Names and small counters: the format version and the id counter.
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
/// Instance records by id (ordered: queries page by id).
const INSTANCES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("instances");
/// History of the current execution: (instance, index) so appends are contiguous.
const HISTORY: TableDefinition<'_, (&str, u64), &[u8]> = TableDefinition::new("history");
/// Inboxes: (instance, visible at, seq), so an instance's messages come in delivery order.
const INBOX: TableDefinition<'_, (&str, u64, u64), &[u8]> = TableDefinition::new("inbox");
/// One row per instance with messages, keyed by when it may be taken: its earliest
/// visibility, or the end of its hold (`HOLDS`) if later.
const READY: TableDefinition<'_, (u64, &str), ()> = TableDefinition::new("ready");
/// Instances held back by [`Store::abandon_episode`]: instance id → not before (ms).
const HOLDS: TableDefinition<'_, &str, u64> = TableDefinition::new("holds");
/// Activity queue: (visible at, task id).
const ACTIVITIES: TableDefinition<'_, (u64, u64), &[u8]> = TableDefinition::new("activities");
/// Format version 1 only: an instance's queued tasks, (instance, task id) -> visible at.
/// Version 2 indexes them in memory ([`ActivityOwners`]); opening a version-1 file deletes
/// this table (see [`init`]).
const V1_ACTIVITY_OWNERS: TableDefinition<'_, (&str, u64), u64> =
    TableDefinition::new("activity_owners");

/// The on-disk format this build reads and writes. Version 1 had an `activity_owners` table;
/// a version-1 file is migrated to version 2 when opened, after which older builds refuse it
/// (they would trust an owners table no longer kept).
const FORMAT_VERSION: u64 = 2;
const FORMAT_VERSION_KEY: &str = "format_version";
/// An upper bound of the message seqs and activity task ids handed out so far: the counter
/// starts from it after a restart. Written only when the counter reaches it, [`ID_BLOCK`]
/// ahead each time, so most commits leave `meta` alone (every table a transaction writes adds
/// to its commit). Files written by earlier builds hold the exact counter, which is a bound
/// too.
const NEXT_ID_KEY: &str = "next_id";
/// How far ahead of the counter [`NEXT_ID_KEY`] is moved when the counter reaches it.
const ID_BLOCK: u64 = 1 << 20;
/// The most operations one group commit applies.
const MAX_BATCH: usize = 1024;
/// With [`RedbDurability::Relaxed`], every this many batches one is committed durably.
const RELAXED_SYNC_EVERY: u32 = 256;
/// Callers commit on their own threads (see [`RedbStore::commit_here`]) only while a batch
/// takes less than this on average: on a slow disk, or under a load whose batches grow, the
/// writer thread commits and tokio's worker threads are not held up.
const COMMIT_HERE_BUDGET: Duration = Duration::from_millis(1);
/// What a failed batch counts as in the average of [`COMMIT_HERE_BUDGET`], at least.
const FAILED_COMMIT: Duration = Duration::from_secs(1);

/// How durable each commit of a [`RedbStore`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RedbDurability {
    /// Every commit is fsynced before the caller is answered: an acknowledged change survives
    /// a crash or power loss. The default.
    #[default]
    Immediate,
    /// Commits are not fsynced; one group commit in every 256 is, and so is the last one when
    /// the store is dropped cleanly. **Risk:** a crash (a killed process as much as a power
    /// loss) rolls the file back to the last durable commit, losing acknowledged changes made
    /// after it: started instances disappear, finished episodes and activities run again. The
    /// file itself stays consistent. For tests, benchmarks and throw-away work.
    Relaxed,
}

/// Builds a [`RedbStore`] with non-default options.
///
/// # Examples
///
/// ```
/// use durable_core::RedbStore;
/// use durable_core::storage::RedbDurability;
///
/// let store = RedbStore::builder()
///     .durability(RedbDurability::Relaxed)
///     .in_memory()
///     .unwrap();
/// # drop(store);
/// ```
#[derive(Debug, Clone, Default)]
pub struct RedbStoreBuilder {
    durability: RedbDurability,
    cache_size: Option<usize>,
    writer_only: bool,
}

impl RedbStoreBuilder {
    /// redb's page cache when none is set: 64 MiB. (redb's own default, 1 GiB, lets the cache
    /// grow with the file up to that size, so a store holding many instances would keep most
    /// of them in memory.)
    pub const DEFAULT_CACHE_SIZE: usize = 64 * 1024 * 1024;

    /// How durable commits are; see [`RedbDurability`].
    pub fn durability(mut self, durability: RedbDurability) -> Self {
        self.durability = durability;
        self
    }

    /// Whether every commit is made by the store's writer thread. By default a step of a
    /// sequential chain that is the only write under way is committed on its caller's thread
    /// instead (see [`RedbStore`], *Transactions, blocking and group commit*), which blocks
    /// that tokio worker thread for the commit — an fsync, rarely more than a millisecond,
    /// but a disk's occasional stall too. Set this for a runtime whose workers must never
    /// wait on the disk (a latency-critical server sharing the runtime); sequential chains
    /// then take two thread wake-ups more per step.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::RedbStore;
    ///
    /// let store = RedbStore::builder().writer_only(true).in_memory().unwrap();
    /// # drop(store);
    /// ```
    pub fn writer_only(mut self, writer_only: bool) -> Self {
        self.writer_only = writer_only;
        self
    }

    /// redb's page cache size in bytes; [`Self::DEFAULT_CACHE_SIZE`] (64 MiB) when not set.
    ///
    /// The cache bounds the memory the store uses for pages read and written; a larger cache
    /// keeps more of a large file in memory.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::RedbStore;
    ///
    /// let store = RedbStore::builder()
    ///     .cache_size(256 * 1024 * 1024)
    ///     .in_memory()
    ///     .unwrap();
    /// # drop(store);
    /// ```
    pub fn cache_size(mut self, bytes: usize) -> Self {
        self.cache_size = Some(bytes);
        self
    }

    /// Opens the store in the file at `path`, creating it if there is no file there.
    ///
    /// A file that exists must be a durable store: it is opened as it is and never
    /// initialised, emptied or replaced. An empty (0-byte) file, a file that is not a redb
    /// database, and a redb database without this store's format record are refused, and left
    /// untouched, so a wrong path never silently starts an empty store over what is there.
    ///
    /// When there is no file at `path`, the store is created beside it as
    /// `<file name>.creating` (a name this store reserves), initialised and made durable there,
    /// and only then moved to `path` with a hard link that never replaces an existing file (or
    /// a rename where the file system has no hard links); the directory is synced after. So the
    /// file at `path` is always a complete store: a crash during creation leaves, at most, the
    /// `.creating` file, and the next `open` of `path` discards it and creates the store
    /// afresh (it never held anything: the store is used only once it is at `path`). A crash
    /// between the link and the removal of the `.creating` name leaves a second name of the
    /// finished store, which the next `open` removes. If another process creates the store at
    /// `path` at the same moment, its store is opened.
    ///
    /// # Errors
    ///
    /// [`StoreError::Backend`], naming the path and what to do, when the file is empty, is not
    /// a redb file, is corrupt, holds another format version of the store or is a redb
    /// database of something else; when it is already open (by another process or another
    /// store in this one) or being created by another process; when it cannot be opened or
    /// created (a missing directory, permissions).
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::RedbStore;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("app.redb");
    /// drop(RedbStore::builder().open(&path)?); // created
    /// drop(RedbStore::builder().open(&path)?); // opened again
    ///
    /// // An empty file is not a store: refused, and left as it is.
    /// let empty = dir.path().join("empty.redb");
    /// std::fs::write(&empty, b"")?;
    /// let err = RedbStore::builder().open(&empty).unwrap_err();
    /// assert!(err.to_string().contains("empty"));
    /// assert_eq!(std::fs::metadata(&empty)?.len(), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open(self, path: impl AsRef<Path>) -> Result<RedbStore, StoreError> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let creating = creation_path(path, &shown)?;
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_file() && meta.len() == 0 => {
                return Err(StoreError::backend(format!(
                    "cannot open {shown}: the file is empty (0 bytes), so it is not a durable \
                     store (a store is created under another name and moved into place only \
                     once it is complete, so an empty file is never one); delete it to create \
                     a new store there, or check the path"
                )));
            }
            Ok(_) => forget_finished_creation(path, &creating),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.create_file(path, &creating, &shown)?;
            }
            Err(e) => {
                return Err(StoreError::backend_with(
                    format!("cannot open {shown}: {e}"),
                    e,
                ));
            }
        }
        let builder = self.redb_builder();
        let db = guard_panic(&shown, || builder.open(path)).map_err(|e| open_error(&shown, e))?;
        RedbStore::start(db, &self, &shown, Origin::Existing)
    }

    /// Creates a complete, empty store at `creating` and moves it to `path` (see
    /// [`open`](Self::open)).
    fn create_file(&self, path: &Path, creating: &Path, shown: &str) -> Result<(), StoreError> {
        let temp = creating.display().to_string();
        let fail =
            |e: std::io::Error| StoreError::backend_with(format!("cannot create {shown}: {e}"), e);
        let busy = || {
            StoreError::backend(format!(
                "cannot create {shown}: another process (or store) is creating it right now \
                 ({temp} is open); try again once it is done"
            ))
        };
        if creating.exists() {
            // Left by a creation that did not finish. Taking redb's lock on it tells a
            // creation still under way (refused) from a crashed one (discarded).
            match guard_panic(&temp, || self.redb_builder().create(creating)) {
                Err(OpenError::Db(
                    DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch,
                )) => return Err(busy()),
                Ok(db) => drop(db),
                Err(_) => {}
            }
            std::fs::remove_file(creating).map_err(fail)?;
        }
        // Exclusively ours from here: a creation racing this one fails here or at the link.
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(creating)
        {
            Ok(file) => drop(file),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(busy()),
            Err(e) => return Err(fail(e)),
        }
        let built = guard_panic(&temp, || self.redb_builder().create(creating))
            .map_err(|e| open_error(&temp, e))
            .and_then(|db| {
                catch_unwind(AssertUnwindSafe(|| init(&db, Origin::Created)))
                    .unwrap_or_else(|_| Err(Fatal::new("redb panicked while creating it")))
                    .map_err(|e| e.into_store_error(&format!("cannot create {temp}")))
            });
        if let Err(e) = built {
            let _ = std::fs::remove_file(creating);
            return Err(e);
        }
        // The database is closed (and its initialising commit durable): move it into place.
        match std::fs::hard_link(creating, path) {
            Ok(()) => std::fs::remove_file(creating).map_err(fail)?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // Created by someone else meanwhile: that one is opened.
                let _ = std::fs::remove_file(creating);
                return Ok(());
            }
            Err(_) if !path.exists() => std::fs::rename(creating, path).map_err(fail)?,
            Err(e) => {
                let _ = std::fs::remove_file(creating);
                return Err(fail(e));
            }
        }
        sync_dir(path).map_err(fail)
    }

    /// Opens a fresh store in memory (redb's `InMemoryBackend`): same code and semantics as
    /// the file store, nothing survives the process.
    pub fn in_memory(self) -> Result<RedbStore, StoreError> {
        let builder = self.redb_builder();
        let db = guard_panic("in-memory store", || {
            builder.create_with_backend(redb::backends::InMemoryBackend::new())
        })
        .map_err(|e| open_error("in-memory store", e))?;
        RedbStore::start(db, &self, "in-memory store", Origin::Created)
    }

    fn redb_builder(&self) -> redb::Builder {
        let mut builder = Database::builder();
        builder.set_cache_size(self.cache_size.unwrap_or(Self::DEFAULT_CACHE_SIZE));
        builder
    }
}

/// Whether the database being started was just created by this store or was already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// Just created (a new file under its `.creating` name, or in memory): initialised now.
    Created,
    /// An existing file: it must already be a durable store.
    Existing,
}

/// `<file name>.creating` beside `path`: where a new store is built before it is moved to
/// `path`.
fn creation_path(path: &Path, shown: &str) -> Result<std::path::PathBuf, StoreError> {
    let Some(name) = path.file_name() else {
        return Err(StoreError::backend(format!(
            "cannot open {shown}: the path does not name a file"
        )));
    };
    let mut temp = name.to_os_string();
    temp.push(".creating");
    Ok(path.with_file_name(temp))
}

/// Removes `creating` when it is a second name of the store at `path`: what a crash between
/// moving a new store into place and removing its creation name leaves.
fn forget_finished_creation(path: &Path, creating: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        if let (Ok(a), Ok(b)) = (std::fs::metadata(path), std::fs::metadata(creating))
            && a.dev() == b.dev()
            && a.ino() == b.ino()
        {
            let _ = std::fs::remove_file(creating);
        }
    }
    #[cfg(not(unix))]
    let _ = (path, creating);
}

/// Makes the new directory entry of `path` durable (on Unix; elsewhere the file system's own
/// ordering is relied upon).
fn sync_dir(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        std::fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(())
    }
}

/// Runs `f`, turning a panic inside redb (its debug builds assert on some corruptions) into an
/// error.
fn guard_panic<T>(
    what: &str,
    f: impl FnOnce() -> Result<T, DatabaseError>,
) -> Result<T, OpenError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(OpenError::Db),
        Err(_) => Err(OpenError::Panic(format!(
            "cannot open {what}: redb panicked while reading it (the file is probably corrupt)"
        ))),
    }
}

enum OpenError {
    Db(DatabaseError),
    Panic(String),
}

fn open_error(what: &str, e: OpenError) -> StoreError {
    let db = match e {
        OpenError::Panic(msg) => return StoreError::backend(msg),
        OpenError::Db(db) => db,
    };
    let message = match &db {
        DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => format!(
            "cannot open {what}: the database is already open (by another process or another store)"
        ),
        DatabaseError::UpgradeRequired(v) => {
            format!("cannot open {what}: redb file format {v} needs a manual upgrade")
        }
        DatabaseError::Storage(redb::StorageError::Io(io)) => format!("cannot open {what}: {io}"),
        DatabaseError::Storage(redb::StorageError::Corrupted(msg)) => {
            format!("cannot open {what}: the file is corrupt: {msg}")
        }
        other => format!("cannot open {what}: {other}"),
    };
    match db {
        // The OS error itself, so callers can tell "permission denied" from "not found".
        DatabaseError::Storage(redb::StorageError::Io(io)) => StoreError::backend_with(message, io),
        db => StoreError::backend_with(message, db),
    }
}

/// A durable [`Store`] on [redb](https://docs.rs/redb): one file, or redb's in-memory backend.
///
/// Clones share the same database. Dropping the last clone finishes the pending commits and
/// closes the file. Errors (a corrupt file, a file already open, IO) are
/// [`StoreError::Backend`] with a message saying what failed.
///
/// # Layout
///
/// Every table is a typed redb `TableDefinition` const. Values are JSON (`serde_json`); keys
/// are redb tuples, so every range is one B-tree scan:
///
/// | table | key | value |
/// | --- | --- | --- |
/// | `meta` | name | `u64` (format version, id counter) |
/// | `instances` | instance id | [`InstanceRecord`] |
/// | `history` | (instance id, index) | [`HistoryEvent`] |
/// | `inbox` | (instance id, visible at, seq) | [`Message`] |
/// | `ready` | (when it may be taken, instance id) | — one row per instance with messages: its earliest visibility, or the end of its hold if later |
/// | `holds` | instance id | not before — an instance held back by an abandoned episode, until its next commit or a terminate |
/// | `activities` | (visible at, task id) | [`ActivityTask`] |
///
/// An episode that only appends events and changes nothing else in the record (a step of
/// a sequence: a result in, the next call out) does not write the record: one table fewer
/// per commit, which shortens its fsync. Its last event then carries the instance's last
/// update, which every read of a running instance's record takes when it is later than
/// the record's own.
///
/// The instance table is ordered by id, which is what queries page by. Which tasks belong to
/// which instance (what purge and replace remove) is indexed in memory, rebuilt from
/// `activities` when the file is opened: keeping it in a table cost every commit that
/// schedules or finishes a task one more table written, which lengthens a durable commit.
///
/// The file records its format version in `meta`: this build writes version 2, and migrates a
/// version-1 file (which had an `activity_owners` table) when it opens it.
///
/// # Leases
///
/// redb is a single-process database, so leases (locked instances, leased activity tasks) live
/// in memory, in one mutex, next to the database; after a restart every lease is released,
/// which is exactly what an expired lease means. A leased task or a locked instance stays in
/// its queue table; fetches skip the leased entries.
///
/// # Transactions, blocking and group commit
///
/// Every operation that writes is applied inside one redb write transaction by a dedicated
/// writer thread. The writer takes every operation that is waiting (up to a bound) and
/// applies them in **one** transaction with one fsync (group commit); each caller is
/// answered once that transaction is durable. A step of a sequential chain — a start that
/// runs its first episode, an episode that takes activity results handed over in memory —
/// that is the only write under way is committed by its caller instead, on a tokio
/// multi-thread runtime with two workers or more, as the writer would (one transaction of
/// its own), without the two thread wake-ups to the writer and back. Not while a batch
/// takes 1 ms or more on average (a disk that is slow throughout stalls the writer thread,
/// not tokio's workers), nor on a store built
/// [`writer_only`](RedbStoreBuilder::writer_only). Other writes (clients' other writes,
/// episodes woken by messages and timers, which tend to come many at once, application
/// code) always go to the writer. An operation that fails its own checks (a lost lease, an
/// id taken) changes nothing and fails alone; a storage error fails the whole batch. Longer
/// reads (histories, queries, scans), which are blocking redb calls, run on tokio's
/// blocking pool (`spawn_blocking`); short ones (a lease fetch, one instance's record) run
/// on the calling thread, where the hop would cost more than the read.
///
/// Whoever commits a batch holds the lease mutex while it applies it, not while it is made
/// durable; the leases a batch releases stay held (and shield their instances and tasks from
/// fetches) until the batch is durable, so a fetch never sees a lease released by a commit
/// that is not yet visible, and fetches are not blocked by the fsync.
///
/// An episode may also name activity tasks whose results it consumed from the worker's
/// memory ([`EpisodeCommit::completed_activities`]): they leave the queue in the same
/// transaction. The unleased queued tasks are indexed in memory, so fetching activities
/// never walks over leased ones.
///
/// # Examples
///
/// ```
/// use durable_core::RedbStore;
///
/// let dir = std::env::temp_dir().join(format!("durable-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let store = RedbStore::open(dir.join("store.redb")).unwrap();
/// drop(store);
/// # std::fs::remove_dir_all(&dir).unwrap();
/// let scratch = RedbStore::in_memory().unwrap();
/// # drop(scratch);
/// ```
#[derive(Debug, Clone)]
pub struct RedbStore {
    inner: Arc<Inner>,
}

impl RedbStore {
    /// Opens the store in the file at `path`, or creates it when there is no file there,
    /// with durable commits. An existing file that is not a durable store (an empty file
    /// among them) is refused and left as it is; a new store appears at `path` only once it
    /// is complete. See [`RedbStoreBuilder::open`] for the rules.
    ///
    /// # Errors
    ///
    /// See [`RedbStoreBuilder::open`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::builder().open(path)
    }

    /// A fresh store in memory (redb's `InMemoryBackend`).
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::builder().in_memory()
    }

    /// A builder for non-default options (durability, cache size).
    pub fn builder() -> RedbStoreBuilder {
        RedbStoreBuilder::default()
    }

    /// How many write transactions (group commits) this store has committed since it was
    /// opened: each is one fsync with [`RedbDurability::Immediate`]. Counts every clone's
    /// writes; opening the store is not counted. For benchmarks and diagnostics: the
    /// commits an operation costs are the difference of two readings around it.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::storage::{NewInstance, Store};
    /// use durable_core::{InstanceId, RedbStore, Timestamp};
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let store = RedbStore::in_memory().unwrap();
    /// let before = store.commits();
    /// let id = InstanceId::new("order-1").unwrap();
    /// let new = NewInstance::new(id, "Order", "null".into(), Timestamp::EPOCH);
    /// store.create_instance(new).await.unwrap();
    /// assert_eq!(store.commits() - before, 1);
    /// # });
    /// ```
    pub fn commits(&self) -> u64 {
        self.inner.core.commits.load(Ordering::Relaxed)
    }

    /// Reads the application's tables (those transactional activities and
    /// [`write_app`](Self::write_app) write) in a read transaction: a consistent snapshot of
    /// every commit so far, taken without waiting for the writer. Runs `f` on the calling
    /// thread; keep it short in async code (or call it from `spawn_blocking`).
    ///
    /// # Errors
    ///
    /// `f`'s error, or the failure to begin the read transaction (as `E`).
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::redb::TableDefinition;
    /// use durable_core::{ActivityError, RedbStore};
    ///
    /// const SETTINGS: TableDefinition<'_, &str, &str> = TableDefinition::new("settings");
    ///
    /// let store = RedbStore::in_memory().unwrap();
    /// // A table no transaction created yet reads as `None`.
    /// let theme = store
    ///     .read_app(|tx| -> Result<Option<String>, ActivityError> {
    ///         let Some(t) = tx.open_table(SETTINGS)? else { return Ok(None) };
    ///         Ok(t.get("theme")?.map(|v| v.value().to_owned()))
    ///     })
    ///     .unwrap();
    /// assert_eq!(theme, None);
    /// ```
    pub fn read_app<T, E>(
        &self,
        f: impl FnOnce(&RedbReadTransaction<'_>) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let txn = self.inner.core.db.begin_read().map_err(|e| {
            StoreError::backend_with(format!("cannot read the application's tables: {e}"), e)
        })?;
        f(&RedbReadTransaction::new(&txn))
    }

    /// Writes the application's tables outside any activity (setup, migrations, seeding):
    /// `f` runs on the store's writer thread in a write transaction of its own, committed
    /// (durably, as every commit of the store) when it returns `Ok` and rolled back when it
    /// returns `Err` or panics. Returns once the commit is done.
    ///
    /// # Errors
    ///
    /// `f`'s error, or the store's failure (as `E`); a panic in `f` is a
    /// [`StoreError::Backend`].
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::redb::TableDefinition;
    /// use durable_core::{ActivityError, RedbStore};
    ///
    /// const ACCOUNTS: TableDefinition<'_, &str, i64> = TableDefinition::new("accounts");
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let store = RedbStore::in_memory().unwrap();
    /// store
    ///     .write_app(|tx| -> Result<(), ActivityError> {
    ///         tx.open_table(ACCOUNTS)?.insert("alice", 100)?;
    ///         Ok(())
    ///     })
    ///     .await
    ///     .unwrap();
    /// let alice = store.read_app(|tx| -> Result<Option<i64>, ActivityError> {
    ///     Ok(tx.open_table(ACCOUNTS)?.and_then(|t| t.get("alice").ok()?.map(|v| v.value())))
    /// });
    /// assert_eq!(alice.unwrap(), Some(100));
    /// # });
    /// ```
    pub async fn write_app<T, E>(
        &self,
        f: impl FnOnce(&RedbTransaction<'_>) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let body: AppWrite = Box::new(move |tx| {
            let r = catch_unwind(AssertUnwindSafe(|| f(tx))).unwrap_or_else(|_| {
                let e = StoreError::backend("the application's write panicked; rolled back");
                Err(e.into())
            });
            let commit = r.is_ok();
            (Box::new(r), commit)
        });
        let Outcome::App(answer) = self.write(WriteOp::AppWrite(body)).await? else {
            return Err(Outcome::unexpected().into());
        };
        match answer.downcast::<Result<T, E>>() {
            Ok(r) => *r,
            Err(_) => Err(Outcome::unexpected().into()),
        }
    }

    fn start(
        db: Database,
        options: &RedbStoreBuilder,
        what: &str,
        origin: Origin,
    ) -> Result<Self, StoreError> {
        let leases = catch_unwind(AssertUnwindSafe(|| init(&db, origin)))
            .unwrap_or_else(|_| {
                Err(Fatal::new(
                    "redb panicked while reading the file (corrupt file?)",
                ))
            })
            .map_err(|e| e.into_store_error(&format!("cannot open {what}")))?;
        let core = Arc::new(Core {
            db,
            leases: Mutex::new(leases),
            signals: StoreSignals::default(),
            durability: options.durability,
            commits: AtomicU64::new(0),
            writer_only: options.writer_only,
            broken: AtomicBool::new(false),
            committing: Mutex::new(()),
            queued: AtomicUsize::new(0),
            writing: AtomicUsize::new(0),
            batches: AtomicU32::new(0),
            commit_nanos: AtomicU64::new(0),
            #[cfg(test)]
            commits_here: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel();
        let writer_core = Arc::clone(&core);
        let writer = std::thread::Builder::new()
            .name("durable-redb-writer".into())
            .spawn(move || writer_loop(&writer_core, &rx))
            .map_err(|e| {
                StoreError::backend_with(format!("cannot start the store's writer thread: {e}"), e)
            })?;
        Ok(Self {
            inner: Arc::new(Inner {
                core,
                tx: Some(tx),
                writer: Some(writer),
            }),
        })
    }

    /// Commits `op`: on the calling thread when it is a lone step of a chain (see
    /// [`commit_here`](Self::commit_here)), otherwise by the writer thread, batched with
    /// whatever else is waiting.
    async fn write(&self, op: WriteOp) -> Result<Outcome, StoreError> {
        let core = &self.inner.core;
        core.writing.fetch_add(1, Ordering::SeqCst);
        let _done = Writing(&core.writing);
        let (reply, rx) = oneshot::channel();
        let request = Request { op, reply };
        if let Some(request) = self.commit_here(request) {
            let tx = self.inner.tx.as_ref().ok_or_else(writer_gone)?;
            core.queued.fetch_add(1, Ordering::SeqCst);
            if tx.send(request).is_err() {
                core.queued.fetch_sub(1, Ordering::SeqCst);
                return Err(writer_gone());
            }
        }
        rx.await.map_err(|_| writer_gone())?
    }

    /// Commits `request` as a batch of one on the calling thread if it is a step of a chain
    /// ([`WriteOp::continues_a_chain`]) and the only write under way (nothing queued for the
    /// writer, no batch being committed); gives it back otherwise.
    ///
    /// With nothing to batch it with, the writer thread would commit it alone anyway;
    /// committing here saves two thread wake-ups (to the writer and back) on each step of a
    /// sequential chain. Only on tokio's multi-thread runtime with two workers or more
    /// (the others keep running tasks meanwhile), and only while batches are quick on average
    /// ([`COMMIT_HERE_BUDGET`]): a disk that is slow throughout stalls the writer thread,
    /// not tokio's workers (a stall of an otherwise quick disk still lands on the caller's
    /// thread once). Concurrent writes go to the writer, whose group commit serves them
    /// better than callers taking turns. A write future polled once and then neither
    /// finished nor dropped counts as under way, and keeps commits off callers' threads.
    fn commit_here(&self, request: Request) -> Option<Request> {
        let core = &self.inner.core;
        if !request.op.continues_a_chain()
            || core.writer_only
            || core.writing.load(Ordering::SeqCst) != 1
            || core.queued.load(Ordering::SeqCst) != 0
            || !core.commits_here_allowed()
            || !on_tokio_workers()
        {
            return Some(request);
        }
        let Ok(turn) = core.committing.try_lock() else {
            return Some(request);
        };
        if core.broken.load(Ordering::SeqCst) {
            return Some(request);
        }
        if commit_batch(core, turn, vec![request]) {
            #[cfg(test)]
            core.commits_here.fetch_add(1, Ordering::Relaxed);
        }
        None
    }

    /// Runs a short read (a lease fetch: one read transaction over a few keys, plus the
    /// in-memory lease table) on the calling thread: handing it to the blocking pool and
    /// back costs more than the read itself.
    fn inline<T>(&self, f: impl FnOnce(&Core) -> Result<T, Fatal>) -> Result<T, StoreError> {
        // A panic in the storage engine becomes an error, as it would on the blocking pool,
        // rather than unwinding through the caller's dispatcher.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&self.inner.core))) {
            Ok(r) => r.map_err(StoreError::from),
            Err(_) => Err(StoreError::backend("store read panicked")),
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Core) -> Result<T, Fatal> + Send + 'static,
    ) -> Result<T, StoreError> {
        let core = Arc::clone(&self.inner.core);
        match tokio::task::spawn_blocking(move || f(&core)).await {
            Ok(r) => r.map_err(StoreError::from),
            Err(e) => Err(StoreError::backend_with(
                format!("store read failed: {e}"),
                e,
            )),
        }
    }
}

/// Counts a write as under way until it is answered or dropped.
struct Writing<'a>(&'a AtomicUsize);

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn writer_gone() -> StoreError {
    StoreError::backend("the store's writer thread has stopped")
}

/// Checks the format version (or, in a database just created, writes it), migrates a
/// version-1 file, and creates the tables; returns the lease state to start with: the id
/// counter, the keys of the queued activity tasks (none is leased after a start) and their
/// owners.
fn init(db: &Database, origin: Origin) -> Result<Leases, Fatal> {
    let txn = db.begin_write()?;
    let existing: Vec<String> = txn
        .list_tables()?
        .map(|t| redb::TableHandle::name(&t).to_owned())
        .collect();
    let next_id = {
        let mut meta = txn.open_table(META)?;
        let version = meta.get(FORMAT_VERSION_KEY)?.map(|v| v.value());
        match version {
            Some(FORMAT_VERSION) => {}
            Some(1) => {
                // Version 1 kept the owners index in a table; it is rebuilt below instead.
                txn.delete_table(V1_ACTIVITY_OWNERS)?;
                meta.insert(FORMAT_VERSION_KEY, FORMAT_VERSION)?;
            }
            Some(v) => {
                return Err(Fatal::new(format!(
                    "the file holds store format version {v}; this build of durable reads version {FORMAT_VERSION} (and migrates version 1)"
                )));
            }
            None if existing.is_empty() && origin == Origin::Created => {
                meta.insert(FORMAT_VERSION_KEY, FORMAT_VERSION)?;
            }
            None if existing.is_empty() => {
                return Err(Fatal::new(
                    "the file is an empty redb database, not a durable store (a store is moved \
                     into place only once it holds its format version record); delete it to \
                     create a new store there, or check the path",
                ));
            }
            None => {
                return Err(Fatal::new(
                    "the file is a redb database but not a durable store (it has no format \
                     version record); check the path",
                ));
            }
        }
        meta.get(NEXT_ID_KEY)?.map_or(0, |v| v.value())
    };
    let mut available = BTreeSet::new();
    let mut owners = ActivityOwners::default();
    {
        let tables = Tables::open(&txn)?;
        for entry in tables.activities.iter()? {
            let (key, value) = entry?;
            let (visible_at, task) = key.value();
            let owner: TaskOwner = decode(value.value())?;
            available.insert((visible_at, task));
            owners.tasks.insert((owner.instance_id, task), visible_at);
        }
    }
    txn.commit()?;
    Ok(Leases {
        next_id,
        id_bound: next_id,
        available,
        owners,
        ..Leases::default()
    })
}

/// The part of an [`ActivityTask`] that [`init`] reads to index the task by its instance.
#[derive(serde::Deserialize)]
struct TaskOwner {
    instance_id: String,
}

#[derive(Debug)]
struct Inner {
    core: Arc<Core>,
    tx: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel lets the writer finish what is queued and stop; joining it
        // means the file is closed when the last clone is gone (a re-open then succeeds).
        drop(self.tx.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

struct Core {
    db: Database,
    leases: Mutex<Leases>,
    signals: StoreSignals,
    durability: RedbDurability,
    /// Write transactions committed (see [`RedbStore::commits`]).
    commits: AtomicU64,
    /// [`RedbStoreBuilder::writer_only`].
    writer_only: bool,
    /// Set when committing a batch panicked outside the batch's own panic guard (on the
    /// writer thread or a caller's): the lease state may be half updated, so the store
    /// stops writing.
    broken: AtomicBool,
    /// Held while a batch is applied and made durable, by the writer thread or by a caller
    /// committing on its own thread: one write transaction at a time, and the leases a
    /// batch defers ([`Leases::finish_batch`]) are that batch's alone.
    committing: Mutex<()>,
    /// Requests sent to the writer thread and not yet taken by it. A caller commits on its
    /// own thread only when this is zero, so a write never overtakes one sent before it
    /// (`writing == 1` implies it, except for requests whose write futures were dropped).
    queued: AtomicUsize,
    /// Writes begun and not yet answered or dropped ([`RedbStore::write`]).
    writing: AtomicUsize,
    /// Batches begun, for [`RedbDurability::Relaxed`]'s periodic durable commit.
    batches: AtomicU32,
    /// A moving average of how long a batch takes to apply and commit, in nanoseconds
    /// (weight 1/8 to the newest), against [`COMMIT_HERE_BUDGET`].
    commit_nanos: AtomicU64,
    /// Batches committed on callers' threads.
    #[cfg(test)]
    commits_here: AtomicU64,
}

impl Core {
    /// Whether the next batch is committed durably.
    fn next_batch_durable(&self) -> bool {
        match self.durability {
            RedbDurability::Immediate => true,
            RedbDurability::Relaxed => {
                let n = self.batches.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
                n.is_multiple_of(RELAXED_SYNC_EVERY)
            }
        }
    }

    /// Whether batches are quick enough to commit on callers' threads.
    fn commits_here_allowed(&self) -> bool {
        self.commit_nanos.load(Ordering::Relaxed) < nanos(COMMIT_HERE_BUDGET)
    }

    /// Folds how long a batch took into the moving average. Batches call it with the
    /// `committing` lock held, so their updates do not race.
    fn note_commit_time(&self, took: Duration) {
        let average = self.commit_nanos.load(Ordering::Relaxed);
        let took = nanos(took);
        let next = if took >= average {
            average + (took - average) / 8
        } else {
            average - (average - took) / 8
        };
        self.commit_nanos.store(next, Ordering::Relaxed);
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl fmt::Debug for Core {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Core")
            .field("durability", &self.durability)
            .finish_non_exhaustive()
    }
}

impl Core {
    fn leases(&self) -> MutexGuard<'_, Leases> {
        self.leases
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// In-memory lease state, plus the id counter (its bound persisted, see [`NEXT_ID_KEY`]) and
/// the index of the queued activity tasks by instance.
#[derive(Debug, Clone, Default)]
struct Leases {
    /// The last message seq / activity id handed out.
    next_id: u64,
    /// The bound on `next_id` that `meta` holds ([`NEXT_ID_KEY`]) as of the last committed
    /// batch: a batch whose ids pass it writes a new one.
    id_bound: u64,
    /// Lease tokens (in memory only: leases do not survive a restart).
    next_token: u64,
    /// Locked instances.
    orch: HashMap<String, OrchLease>,
    orch_expiry: BTreeSet<(Timestamp, String)>,
    /// Leased activity tasks.
    activity: HashMap<u64, ActivityLease>,
    activity_expiry: BTreeSet<(Timestamp, u64)>,
    /// Instance locks released by the batch being committed, with the token released. They
    /// stay in `orch` (so fetches skip the instance) until the batch is durable.
    releasing_orch: HashMap<String, u64>,
    /// Activity leases released by the batch being committed, likewise kept until then.
    releasing_activity: HashSet<u64>,
    /// Instance locks taken by the batch being committed (with their tokens), dropped again
    /// if it fails.
    acquiring_orch: Vec<(String, u64)>,
    /// Leases of activity tasks the batch being committed queues leased (eager dispatch),
    /// dropped again if it fails.
    acquiring_activity: Vec<u64>,
    /// Keys of the queued activity tasks that are not leased, so a fetch never walks over
    /// leased ones (which stay in the table until their result is committed).
    available: BTreeSet<(u64, u64)>,
    /// Changes to `available` made by the batch being committed, applied once it is durable:
    /// `true` adds the key, `false` removes it.
    available_changes: Vec<((u64, u64), bool)>,
    /// The committed record and history length of unlocked instances whose last commit
    /// handed activity tasks out, so leasing them again when a result comes back (see
    /// [`EpisodeCommit::completed_activities`]) need not read and decode them. An entry is
    /// taken by the next lease of its instance and dropped by any other write to the
    /// instance's record or history ([`Tables::put_record`], [`Tables::remove_instance`]).
    committed: HashMap<String, Box<Seen>>,
    /// Changes to `committed` made by the batch being committed, applied in order once it is
    /// durable (`None` drops the entry).
    committed_changes: Vec<(String, Option<Box<Seen>>)>,
    /// Every queued activity task (leased or not) by instance.
    owners: ActivityOwners,
}

/// The queued activity tasks of each instance, leased or not, so purge and replace find
/// them ([`Tables::remove_instance`]) without a table in the file (format version 2).
/// Rebuilt from `activities` when the store opens ([`init`]).
///
/// Only queued tasks have entries: an instance with none costs nothing.
///
/// A batch changes the index in place, so a later operation of the batch sees an earlier
/// one's change (a task scheduled, then its instance purged). Each change logs the value the
/// entry had before it; [`finish_batch`](Self::finish_batch) forgets the log once the batch
/// is committed, or restores those values in reverse order when the batch failed, which puts
/// back exactly the index the batch started from.
#[derive(Debug, Clone, Default)]
struct ActivityOwners {
    /// (instance id, task id) → visible at: the task's key in `activities` is
    /// (visible at, task id).
    tasks: BTreeMap<(String, u64), u64>,
    /// The previous value of each entry the batch being applied changed, oldest first.
    undo: Vec<((String, u64), Option<u64>)>,
}

impl ActivityOwners {
    /// Records that task `task` of `instance` is queued at `visible_at`.
    fn insert(&mut self, instance: &str, task: u64, visible_at: u64) {
        let key = (instance.to_owned(), task);
        let before = self.tasks.insert(key.clone(), visible_at);
        self.undo.push((key, before));
    }

    /// Records that task `task` of `instance` left the queue.
    fn remove(&mut self, instance: &str, task: u64) {
        let key = (instance.to_owned(), task);
        let before = self.tasks.remove(&key);
        self.undo.push((key, before));
    }

    /// Removes `instance`'s tasks; returns their keys in `activities`.
    fn take(&mut self, instance: &str) -> Vec<(u64, u64)> {
        let keys: Vec<(u64, u64)> = self
            .tasks
            .range((instance.to_owned(), 0)..=(instance.to_owned(), u64::MAX))
            .map(|(&(_, task), &visible_at)| (visible_at, task))
            .collect();
        for &(_, task) in &keys {
            self.remove(instance, task);
        }
        keys
    }

    /// Ends a batch: keeps its changes if it was committed, undoes them if it failed.
    fn finish_batch(&mut self, committed: bool) {
        let undo = std::mem::take(&mut self.undo);
        if committed {
            return;
        }
        for (key, before) in undo.into_iter().rev() {
            match before {
                Some(visible_at) => self.tasks.insert(key, visible_at),
                None => self.tasks.remove(&key),
            };
        }
    }
}

/// At most this many [`Leases::committed`] entries are kept (one per instance waiting for a
/// handed-out activity); past it, leases read the record as before.
const MAX_COMMITTED_SEEN: usize = 1 << 16;

/// A locked instance.
#[derive(Debug, Clone)]
struct OrchLease {
    token: u64,
    until: Timestamp,
    /// The record and history length read when the lease was taken, so the episode's commit
    /// need not read and decode them again. Only the lease holder changes either while the
    /// lease is held; every other write to the instance releases the lease ([`Leases::unlock`]
    /// drops this copy first), so it is current whenever [`Leases::holds`] is `true`.
    seen: Option<Box<Seen>>,
}

/// What [`lease_instance`] read of a locked instance.
#[derive(Debug, Clone)]
struct Seen {
    record: InstanceRecord,
    history_len: u64,
}

#[derive(Debug, Clone)]
struct ActivityLease {
    /// The task's key in `activities`.
    visible_at: Timestamp,
    until: Timestamp,
    token: u64,
    instance_id: String,
}

impl Leases {
    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    /// Drops expired leases, except those the batch being committed releases anyway (its
    /// changes are not visible yet, so the entries must keep shielding them) or takes (a
    /// task leased as it is queued is not in the table until the batch is durable: its
    /// lease stays, and expires after that).
    fn release_expired(&mut self, now: Timestamp) {
        while let Some((t, id)) = self.orch_expiry.first().cloned() {
            if t > now {
                break;
            }
            self.orch_expiry.pop_first();
            if self.orch.get(&id).is_some_and(|l| l.until <= now)
                && !self.releasing_orch.contains_key(&id)
            {
                self.orch.remove(&id);
            }
        }
        self.release_expired_activities(now);
    }

    /// The activity half of [`release_expired`](Self::release_expired).
    fn release_expired_activities(&mut self, now: Timestamp) {
        let mut kept = Vec::new();
        while let Some((t, id)) = self.activity_expiry.first().copied() {
            if t > now {
                break;
            }
            self.activity_expiry.pop_first();
            if self.acquiring_activity.contains(&id) {
                kept.push((t, id));
                continue;
            }
            if self.activity.get(&id).is_some_and(|l| l.until <= now)
                && !self.releasing_activity.contains(&id)
                && let Some(lease) = self.activity.remove(&id)
            {
                self.available.insert((ts(lease.visible_at), id));
            }
        }
        self.activity_expiry.extend(kept);
    }

    fn lock(&mut self, id: &str, until: Timestamp, seen: Option<Box<Seen>>) -> u64 {
        let token = self.token();
        self.orch
            .insert(id.to_owned(), OrchLease { token, until, seen });
        self.orch_expiry.insert((until, id.to_owned()));
        token
    }

    /// The record and history length seen when `id` was locked, if it still is (see
    /// [`OrchLease::seen`]); taken out, as the commit that asks for them releases the lock.
    fn take_seen(&mut self, id: &str) -> Option<Box<Seen>> {
        if self.releasing_orch.contains_key(id) {
            return None;
        }
        self.orch.get_mut(id).and_then(|l| l.seen.take())
    }

    /// `true` if `lock` holds `id` (and the batch being applied has not released it).
    fn holds(&self, id: &str, lock: LockToken) -> bool {
        !self.releasing_orch.contains_key(id)
            && self.orch.get(id).is_some_and(|l| l.token == lock.0)
    }

    /// Releases the lock on `id` once the batch being applied is durable.
    fn unlock(&mut self, id: &str) {
        if let Some(lease) = self.orch.get_mut(id) {
            lease.seen = None;
            self.releasing_orch.insert(id.to_owned(), lease.token);
        }
    }

    /// Releases an activity lease once the batch being applied is durable.
    fn release_activity(&mut self, id: u64) {
        if self.activity.contains_key(&id) {
            self.releasing_activity.insert(id);
        }
    }

    /// Checks and releases (once the batch is durable) an activity lease.
    /// Extends a held activity lease; `false` when it is not held (any more).
    fn renew_activity(&mut self, id: u64, lock: LockToken, until: Timestamp) -> bool {
        if self.releasing_activity.contains(&id) {
            return false;
        }
        let Some(lease) = self.activity.get_mut(&id).filter(|l| l.token == lock.0) else {
            return false;
        };
        let old = std::mem::replace(&mut lease.until, until);
        // The old expiry goes, so the next wake-up is the lease's real expiry (a lease held
        // for long, renewed many times, would otherwise wake the dispatcher at each old one).
        self.activity_expiry.remove(&(old, id));
        self.activity_expiry.insert((until, id));
        true
    }

    /// `true` if `lock` holds activity task `id` (and the batch being applied has not
    /// released it).
    fn holds_activity(&self, id: u64, lock: LockToken) -> bool {
        !self.releasing_activity.contains(&id)
            && self.activity.get(&id).is_some_and(|l| l.token == lock.0)
    }

    /// `true` if queued activity tasks that nobody holds are due at `now` — committed, or
    /// queued by the batch being applied.
    fn activities_due(&self, now: u64) -> bool {
        self.available.range(..=(now, u64::MAX)).next().is_some()
            || self
                .available_changes
                .iter()
                .any(|&((visible_at, _), add)| add && visible_at <= now)
    }

    fn take_activity(&mut self, id: u64, lock: LockToken) -> Option<ActivityLease> {
        if self.releasing_activity.contains(&id) {
            return None;
        }
        let lease = self
            .activity
            .get(&id)
            .filter(|l| l.token == lock.0)?
            .clone();
        self.releasing_activity.insert(id);
        Some(lease)
    }

    /// Ends a batch: applies its releases once it is durable, or forgets them when it failed
    /// (nothing it did is visible then).
    fn finish_batch(&mut self, committed: bool) {
        let orch = std::mem::take(&mut self.releasing_orch);
        let activities = std::mem::take(&mut self.releasing_activity);
        let available = std::mem::take(&mut self.available_changes);
        let seen = std::mem::take(&mut self.committed_changes);
        let acquired = std::mem::take(&mut self.acquiring_orch);
        let acquired_tasks = std::mem::take(&mut self.acquiring_activity);
        self.owners.finish_batch(committed);
        if !committed {
            for id in acquired_tasks {
                if let Some(lease) = self.activity.remove(&id) {
                    self.activity_expiry.remove(&(lease.until, id));
                }
            }
            for (id, token) in acquired {
                if self.orch.get(&id).is_some_and(|l| l.token == token)
                    && let Some(lease) = self.orch.remove(&id)
                {
                    self.orch_expiry.remove(&(lease.until, id));
                }
            }
            return;
        }
        for (id, change) in seen {
            match change {
                Some(s) if self.committed.len() < MAX_COMMITTED_SEEN => {
                    self.committed.insert(id, s);
                }
                _ => {
                    self.committed.remove(&id);
                }
            }
        }
        for (key, add) in available {
            if add {
                self.available.insert(key);
            } else {
                self.available.remove(&key);
            }
        }
        for (id, token) in orch {
            if self.orch.get(&id).is_some_and(|l| l.token == token)
                && let Some(lease) = self.orch.remove(&id)
            {
                self.orch_expiry.remove(&(lease.until, id));
            }
        }
        for id in activities {
            if let Some(lease) = self.activity.remove(&id) {
                self.activity_expiry.remove(&(lease.until, id));
            }
        }
    }
}

/// A storage failure: aborts the whole batch (or read) it happens in.
#[derive(Debug)]
struct Fatal {
    message: String,
    /// The redb, IO or decoding error behind it, shared by every request of a failed batch.
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl Fatal {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
        }
    }

    fn caused_by(message: String, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self {
            message,
            source: Some(Arc::new(source)),
        }
    }

    /// The store error for it, its message prefixed with `context`.
    fn into_store_error(self, context: &str) -> StoreError {
        self.backend(format!("{context}: {}", self.message))
    }

    /// A backend error with `message` and this failure's cause.
    fn backend(&self, message: String) -> StoreError {
        let e = BackendError::new(message);
        match &self.source {
            Some(s) => e.with_shared_source(Arc::clone(s)),
            None => e,
        }
        .into()
    }
}

macro_rules! fatal_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Fatal {
            fn from(e: $t) -> Self {
                Fatal::caused_by(format!("redb: {e}"), e)
            }
        }
    )*};
}
fatal_from!(
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::CommitError,
    redb::SetDurabilityError
);

impl From<serde_json::Error> for Fatal {
    fn from(e: serde_json::Error) -> Self {
        Fatal::caused_by(format!("a stored value does not decode: {e}"), e)
    }
}

impl From<Fatal> for StoreError {
    fn from(e: Fatal) -> Self {
        e.backend(e.message.clone())
    }
}

type R<T> = Result<T, Fatal>;

fn ts(t: Timestamp) -> u64 {
    t.as_unix_millis()
}

/// The fields of a stored [`InstanceRecord`] that queries filter and sort on: decoding only
/// these skips allocating the payloads.
#[derive(serde::Deserialize)]
struct RecordHead {
    name: String,
    status: RuntimeStatus,
    created_at: Timestamp,
}

impl RecordHead {
    /// [`InstanceQuery::matches`] on the head and the key.
    fn matches(&self, id: &str, q: &InstanceQuery) -> bool {
        (q.include_entities || !id.starts_with('@'))
            && (q.statuses.is_empty() || q.statuses.contains(&self.status))
            && q.name.as_ref().is_none_or(|n| *n == self.name)
            && q.created_from.is_none_or(|t| self.created_at >= t)
            && q.created_to.is_none_or(|t| self.created_at <= t)
            && q.id_prefix
                .as_ref()
                .is_none_or(|p| id.starts_with(p.as_str()))
    }
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> R<T> {
    Ok(serde_json::from_slice(bytes)?)
}

fn read_record(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &str,
) -> R<Option<InstanceRecord>> {
    t.get(id)?.map(|v| decode(v.value())).transpose()
}

/// Applies an episode's outcome (status, output, failure, custom status, last error, time)
/// to `record`; `false` when the episode only appends events and changes nothing else but
/// the time (a step of a sequence: a result in, the next call out). The stored record is
/// then left as it is — its last event carries the commit's time, which readers take as
/// the last update ([`last_update_applied`]) — so the commit writes one table fewer, which
/// shortens its fsync.
fn take_outcome(record: &mut InstanceRecord, commit: &mut EpisodeCommit) -> bool {
    let unchanged = commit.next_execution.is_none()
        && !commit.status.is_terminal()
        && commit
            .new_events
            .last()
            .is_some_and(|e| e.timestamp == commit.now)
        && record.status == commit.status
        && record.output == commit.output
        && record.failure == commit.failure
        && record.custom_status == commit.custom_status
        && record.last_error == commit.last_error;
    // Set either way: the record the next lease hands out (`Seen`) shows it.
    record.last_updated_at = commit.now;
    if unchanged {
        return false;
    }
    record.status = commit.status;
    record.output = commit.output.take();
    record.failure = commit.failure.take();
    record.custom_status = commit.custom_status.take();
    record.last_error = commit.last_error.take();
    true
}

/// The time of an event, decoding nothing else.
#[derive(serde::Deserialize)]
struct EventTime {
    timestamp: Timestamp,
}

/// `r` as readers see it: an episode that appends events and changes nothing else in the
/// record leaves the stored record alone (see [`Tables::apply_commit`]), so the instance's
/// last update is its last event's time when that is later than the record's.
fn last_update_applied(
    history: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    r: InstanceRecord,
) -> R<InstanceRecord> {
    Ok(with_history_tail(history, r)?.0)
}

/// [`last_update_applied`] and the instance's history length ([`history_len`]), from one
/// read of its last history row.
fn with_history_tail(
    history: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    mut r: InstanceRecord,
) -> R<(InstanceRecord, u64)> {
    let id = r.instance_id.as_str();
    let Some(last) = history.range((id, 0u64)..=(id, u64::MAX))?.next_back() else {
        return Ok((r, 0));
    };
    let (key, value) = last?;
    let len = key.value().1 + 1;
    // A terminal record is always written with its final commit's time.
    if !r.status.is_terminal() {
        let at = decode::<EventTime>(value.value())?.timestamp;
        r.last_updated_at = r.last_updated_at.max(at);
    }
    Ok((r, len))
}

/// An instance's history rows, decoded in one pass each (see
/// [`crate::history::from_stored_json`]). Indexes are contiguous from 0, so the last key
/// sizes the vector.
fn history_rows(
    t: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    id: &str,
) -> R<Vec<HistoryEvent>> {
    // Bounded: the length comes from a key, and a long history grows the vector as usual.
    let mut out = Vec::with_capacity((history_len(t, id)? as usize).min(1 << 16));
    for entry in t.range((id, 0u64)..=(id, u64::MAX))? {
        let (_, v) = entry?;
        out.push(crate::history::from_stored_json(v.value())?);
    }
    Ok(out)
}

fn history_len(t: &impl ReadableTable<(&'static str, u64), &'static [u8]>, id: &str) -> R<u64> {
    let last = t
        .range((id, 0u64)..=(id, u64::MAX))?
        .next_back()
        .transpose()?;
    Ok(last.map_or(0, |(k, _)| k.value().1 + 1))
}

fn inbox_first(
    t: &impl ReadableTable<(&'static str, u64, u64), &'static [u8]>,
    id: &str,
) -> R<Option<u64>> {
    let first = t
        .range((id, 0u64, 0u64)..=(id, u64::MAX, u64::MAX))?
        .next()
        .transpose()?;
    Ok(first.map(|(k, _)| k.value().1))
}

/// `true` if a stored inbox message is a `TimerFired`; reads the event's tag only, not the
/// whole message.
fn is_timer(bytes: &[u8]) -> R<bool> {
    #[derive(serde::Deserialize)]
    struct Stored<'a> {
        #[serde(borrow)]
        event: Tagged<'a>,
    }
    #[derive(serde::Deserialize)]
    struct Tagged<'a> {
        #[serde(rename = "eventType", borrow)]
        kind: std::borrow::Cow<'a, str>,
    }
    let stored: Stored<'_> = serde_json::from_slice(bytes)?;
    Ok(stored.event.kind == "TimerFired")
}

/// Decodes an inbox row, taking the id from the key.
fn inbox_message(key: (&str, u64, u64), value: &[u8]) -> R<Message> {
    let mut m: Message = decode(value)?;
    m.id = MessageId {
        visible_at: Timestamp::from_unix_millis(key.1),
        seq: key.2,
    };
    Ok(m)
}

/// The write-side tables of one transaction.
struct Tables<'t> {
    meta: Table<'t, &'static str, u64>,
    instances: Table<'t, &'static str, &'static [u8]>,
    history: Table<'t, (&'static str, u64), &'static [u8]>,
    inbox: Table<'t, (&'static str, u64, u64), &'static [u8]>,
    ready: Table<'t, (u64, &'static str), ()>,
    holds: Table<'t, &'static str, u64>,
    activities: Table<'t, (u64, u64), &'static [u8]>,
    /// One buffer for every value the batch encodes (see [`json`]).
    buf: Vec<u8>,
}

/// `value` as JSON in `buf` (cleared first): a batch encodes its records, events and tasks
/// into one buffer instead of allocating (and growing) a vector for each on the writer
/// thread.
fn json<'b, T: serde::Serialize + ?Sized>(buf: &'b mut Vec<u8>, value: &T) -> R<&'b [u8]> {
    buf.clear();
    serde_json::to_writer(&mut *buf, value)?;
    Ok(buf)
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction) -> R<Self> {
        Ok(Self {
            meta: txn.open_table(META)?,
            instances: txn.open_table(INSTANCES)?,
            history: txn.open_table(HISTORY)?,
            inbox: txn.open_table(INBOX)?,
            ready: txn.open_table(READY)?,
            holds: txn.open_table(HOLDS)?,
            activities: txn.open_table(ACTIVITIES)?,
            buf: Vec::with_capacity(1024),
        })
    }

    /// Writes an instance's record; drops what [`Leases::committed`] knows of it.
    fn put_record(&mut self, leases: &mut Leases, r: &InstanceRecord) -> R<()> {
        leases
            .committed_changes
            .push((r.instance_id.as_str().to_owned(), None));
        let bytes = json(&mut self.buf, r)?;
        self.instances.insert(r.instance_id.as_str(), bytes)?;
        Ok(())
    }

    /// When `id` may be taken, as `ready` keys it: its first inbox visibility, or the end of
    /// its hold if later; `None` when its inbox is empty.
    fn ready_at(&self, id: &str) -> R<Option<u64>> {
        match inbox_first(&self.inbox, id)? {
            Some(first) => Ok(Some(first.max(self.hold(id)?))),
            None => Ok(None),
        }
    }

    /// The end of the hold on `id` (0: none).
    fn hold(&self, id: &str) -> R<u64> {
        Ok(self.holds.get(id)?.map_or(0, |v| v.value()))
    }

    /// Keeps `ready` equal to ([`ready_at`](Self::ready_at), id) after the inbox or the hold
    /// of `id` changed.
    fn fix_ready(&mut self, id: &str, before: Option<u64>, after: Option<u64>) -> R<()> {
        if before != after {
            if let Some(b) = before {
                self.ready.remove((b, id))?;
            }
            if let Some(a) = after {
                self.ready.insert((a, id), ())?;
            }
        }
        Ok(())
    }

    /// Adds a message to an existing instance's inbox; `false` if there is no such instance.
    fn enqueue(&mut self, leases: &mut Leases, id: &str, mut message: Message) -> R<bool> {
        message.id.seq = leases.next_id();
        if self.instances.get(id)?.is_none() {
            return Ok(false);
        }
        let first = inbox_first(&self.inbox, id)?;
        let mut hold = self.hold(id)?;
        let before = first.map(|f| f.max(hold));
        if hold > 0 && super::ends_hold(&message.event) {
            self.holds.remove(id)?;
            hold = 0;
        }
        let vis = ts(message.id.visible_at);
        let bytes = json(&mut self.buf, &message)?;
        self.inbox.insert((id, vis, message.id.seq), bytes)?;
        let after = Some(first.map_or(vis, |f| f.min(vis)).max(hold));
        self.fix_ready(id, before, after)?;
        Ok(true)
    }

    fn enqueue_activity(
        &mut self,
        leases: &mut Leases,
        now: Timestamp,
        task: &ActivityTask,
    ) -> R<()> {
        let id = leases.next_id();
        let bytes = json(&mut self.buf, task)?;
        self.activities.insert((ts(now), id), bytes)?;
        leases.owners.insert(task.instance_id.as_str(), id, ts(now));
        leases.available_changes.push(((ts(now), id), true));
        Ok(())
    }

    /// Queues an episode's new activity `tasks` at `now`, except the one `eager` names,
    /// leased to the committer unless tasks queued earlier are due; whether any task was
    /// queued (not leased), and the leased one.
    fn enqueue_tasks(
        &mut self,
        leases: &mut Leases,
        tasks: Vec<ActivityTask>,
        now: Timestamp,
        eager: Option<(usize, Timestamp, Duration)>,
    ) -> R<(bool, Option<ActivityWorkItem>)> {
        // An eager task must not overtake tasks queued before it (those whose leases have
        // run out included).
        let eager = eager.filter(|&(task, leased_at, _)| {
            if task >= tasks.len() {
                return false;
            }
            leases.release_expired_activities(leased_at);
            !leases.activities_due(ts(leased_at))
        });
        let (mut queued, mut eager_item) = (false, None);
        for (i, task) in tasks.into_iter().enumerate() {
            match eager {
                Some((at, leased_at, lock_for)) if at == i => {
                    let until = leased_at + task.lease_for(lock_for);
                    let (id, token) = self.enqueue_leased(leases, now, &task, until)?;
                    eager_item = Some(ActivityWorkItem {
                        id,
                        task,
                        lock: LockToken(token),
                    });
                }
                _ => {
                    self.enqueue_activity(leases, now, &task)?;
                    queued = true;
                }
            }
        }
        Ok((queued, eager_item))
    }

    /// Queues `task` leased until `until` (a fresh token; undone if the batch fails, see
    /// [`Leases::finish_batch`]) instead of available: its id and token.
    fn enqueue_leased(
        &mut self,
        leases: &mut Leases,
        now: Timestamp,
        task: &ActivityTask,
        until: Timestamp,
    ) -> R<(u64, u64)> {
        let id = leases.next_id();
        let bytes = json(&mut self.buf, task)?;
        self.activities.insert((ts(now), id), bytes)?;
        leases.owners.insert(task.instance_id.as_str(), id, ts(now));
        let token = leases.token();
        leases.activity.insert(
            id,
            ActivityLease {
                visible_at: now,
                until,
                token,
                instance_id: task.instance_id.as_str().to_owned(),
            },
        );
        leases.activity_expiry.insert((until, id));
        leases.acquiring_activity.push(id);
        Ok((id, token))
    }

    /// Removes every trace of an instance: record, history, inbox, queued and leased tasks,
    /// its lock.
    fn remove_instance(&mut self, leases: &mut Leases, id: &str) -> R<bool> {
        if self.instances.remove(id)?.is_none() {
            return Ok(false);
        }
        leases.committed_changes.push((id.to_owned(), None));
        let before = self.ready_at(id)?;
        self.fix_ready(id, before, None)?;
        self.holds.remove(id)?;
        self.inbox
            .retain_in((id, 0u64, 0u64)..=(id, u64::MAX, u64::MAX), |_, _| false)?;
        self.history
            .retain_in((id, 0u64)..=(id, u64::MAX), |_, _| false)?;
        for (vis, task) in leases.owners.take(id) {
            self.activities.remove((vis, task))?;
            leases.release_activity(task);
            leases.available_changes.push(((vis, task), false));
        }
        leases.unlock(id);
        Ok(true)
    }

    fn create(
        &mut self,
        leases: &mut Leases,
        new: NewInstance,
    ) -> R<Result<CreateResult, StoreError>> {
        let key = new.instance_id.as_str().to_owned();
        let mut teardown = None;
        let existing = read_record(&self.instances, &key)?;
        if let Some(existing) = &existing {
            match replace::decide(new.reuse, existing.status.is_terminal()) {
                Reuse::Existing => {
                    let existing = last_update_applied(&self.history, existing.clone())?;
                    return Ok(Ok(CreateResult::Existing(existing)));
                }
                Reuse::Reject => return Ok(Err(StoreError::InstanceAlreadyExists(key))),
                Reuse::Replace => {}
                Reuse::TerminateAndReplace => {
                    let history = self.history_of(&key)?;
                    let inbox = self.inbox_events(&key)?;
                    teardown = Some(Teardown::new(existing, &history, &inbox, new.created_at));
                }
            }
            self.remove_instance(leases, &key)?;
        }
        let start = new.start_message();
        let record = new.record(existing.as_ref());
        self.put_record(leases, &record)?;
        self.enqueue(leases, &key, start)?;
        if let Some(t) = teardown {
            for (target, m) in self.tear_down(leases, t)? {
                self.enqueue(leases, target.as_str(), m)?;
            }
        }
        Ok(Ok(CreateResult::Created(record)))
    }

    fn history_of(&self, id: &str) -> R<Vec<HistoryEvent>> {
        history_rows(&self.history, id)
    }

    fn inbox_events(&self, id: &str) -> R<Vec<Event>> {
        self.inbox
            .range((id, 0u64, 0u64)..=(id, u64::MAX, u64::MAX))?
            .map(|e| {
                let (k, v) = e?;
                inbox_message(k.value(), v.value()).map(|m| m.event)
            })
            .collect()
    }

    /// Terminates the running descendants of an execution being replaced; returns the
    /// messages to send once the new instance exists.
    fn tear_down(&mut self, leases: &mut Leases, mut t: Teardown) -> R<Vec<(InstanceId, Message)>> {
        while let Some((id, parent)) = t.next() {
            let key = id.as_str();
            let record = read_record(&self.instances, key)?;
            if !record.as_ref().is_some_and(|r| r.is_child_of(&parent)) {
                continue;
            }
            let Some(record) = record else { continue };
            let history = self.history_of(key)?;
            let inbox = self.inbox_events(key)?;
            let Some((record, events)) = t.visit(record, &history, &inbox) else {
                continue;
            };
            for e in &events {
                let bytes = json(&mut self.buf, e)?;
                self.history.insert((key, e.index), bytes)?;
            }
            self.put_record(leases, &record)?;
            let before = self.ready_at(key)?;
            self.fix_ready(key, before, None)?;
            self.holds.remove(key)?;
            self.inbox
                .retain_in((key, 0u64, 0u64)..=(key, u64::MAX, u64::MAX), |_, _| false)?;
            leases.unlock(key);
        }
        Ok(t.messages)
    }

    fn send(
        &mut self,
        leases: &mut Leases,
        id: &InstanceId,
        message: Message,
    ) -> R<Result<(), StoreError>> {
        match read_record(&self.instances, id.as_str())? {
            None => Ok(Err(StoreError::InstanceNotFound(id.to_string()))),
            Some(r) if !super::accepts_message(r.status, &message.event) => {
                Ok(Err(StoreError::InstanceNotRunning(id.to_string())))
            }
            Some(r) => {
                if super::is_control_request(&message.event) {
                    let key = id.as_str();
                    let queued = self
                        .inbox
                        .range((key, 0u64, 0u64)..=(key, u64::MAX, u64::MAX))?
                        .map(|e| {
                            let (k, v) = e?;
                            inbox_message(k.value(), v.value()).map(|m| m.event)
                        })
                        .collect::<R<Vec<Event>>>()?;
                    if let Err(e) = super::check_control(id, r.status, &queued, &message.event) {
                        return Ok(Err(e));
                    }
                }
                self.enqueue(leases, id.as_str(), message)?;
                Ok(Ok(()))
            }
        }
    }

    /// Applies an episode; returns whether activity tasks were queued (not leased), and the
    /// task leased to the committer with `eager`.
    fn commit(
        &mut self,
        leases: &mut Leases,
        commit: EpisodeCommit,
        eager: Option<(usize, Timestamp, Duration)>,
    ) -> R<Result<(bool, Option<ActivityWorkItem>), StoreError>> {
        if !leases.holds(commit.instance_id.as_str(), commit.lock) {
            return Ok(Err(StoreError::LockLost(commit.instance_id.to_string())));
        }
        let seen = leases.take_seen(commit.instance_id.as_str());
        self.apply_commit(leases, commit, seen, eager)
    }

    /// Creates a brand-new instance and applies its first episode (see
    /// [`Store::create_started`]); `None`, with nothing written, when the id is taken or
    /// leased. The instance is never visible unleased in between: both happen in this
    /// transaction, so no lease is taken.
    fn create_started(
        &mut self,
        leases: &mut Leases,
        new: NewInstance,
        mut first: EpisodeCommit,
    ) -> R<Result<Option<(InstanceRecord, bool)>, StoreError>> {
        let key = new.instance_id.as_str().to_owned();
        if leases.orch.contains_key(&key) || self.instances.get(key.as_str())?.is_some() {
            return Ok(Ok(None));
        }
        // A brand-new id: the record as `create` writes it, without the start message,
        // which the first episode consumes in this same transaction (enqueuing it, with its
        // ready row, only to remove both would be four B-tree writes for nothing).
        let record = new.record(None);
        self.put_record(leases, &record)?;
        first.consumed = Vec::new();
        // A new instance: no history yet.
        let seen = Box::new(Seen {
            record: record.clone(),
            history_len: 0,
        });
        Ok(self
            .apply_commit(leases, first, Some(seen), None)?
            .map(|(activity, _)| Some((record, activity))))
    }

    /// Creates a brand-new instance leased to the caller until `until` (see
    /// [`Store::create_leased`]); `None`, with nothing written, when the id is taken or
    /// leased. The lock is taken in memory as the batch is applied and dropped again if the
    /// batch fails ([`Leases::finish_batch`]).
    fn create_leased(
        &mut self,
        leases: &mut Leases,
        new: NewInstance,
        until: Timestamp,
    ) -> R<Result<Option<OrchestrationWorkItem>, StoreError>> {
        let key = new.instance_id.as_str().to_owned();
        if leases.orch.contains_key(&key) || self.instances.get(key.as_str())?.is_some() {
            return Ok(Ok(None));
        }
        let instance = match self.create(leases, new)? {
            Ok(CreateResult::Created(record)) => record,
            Ok(CreateResult::Existing(_)) => return Ok(Ok(None)),
            Err(e) => return Ok(Err(e)),
        };
        let messages = self
            .inbox
            .range((key.as_str(), 0u64, 0u64)..=(key.as_str(), u64::MAX, u64::MAX))?
            .map(|e| {
                let (k, v) = e?;
                inbox_message(k.value(), v.value())
            })
            .collect::<R<Vec<Message>>>()?;
        let seen = Box::new(Seen {
            record: instance.clone(),
            history_len: 0,
        });
        let token = leases.lock(&key, until, Some(seen));
        leases.acquiring_orch.push((key, token));
        Ok(Ok(Some(OrchestrationWorkItem {
            instance,
            history_len: 0,
            messages,
            lock: LockToken(token),
        })))
    }

    /// [`commit`](Self::commit) once the lease is checked. `seen` is the instance's current
    /// record and history length when the caller has them (read otherwise).
    fn apply_commit(
        &mut self,
        leases: &mut Leases,
        mut commit: EpisodeCommit,
        seen: Option<Box<Seen>>,
        eager: Option<(usize, Timestamp, Duration)>,
    ) -> R<Result<(bool, Option<ActivityWorkItem>), StoreError>> {
        let key = commit.instance_id.as_str().to_owned();
        let (mut record, known_len) = if let Some(seen) = seen {
            (seen.record, Some(seen.history_len))
        } else if let Some(record) = read_record(&self.instances, &key)? {
            (record, None)
        } else {
            return Ok(Err(StoreError::LockLost(key)));
        };
        for &(task, lock) in &commit.completed_activities {
            if let Some(lease) = leases.take_activity(task, lock) {
                self.activities.remove((ts(lease.visible_at), task))?;
                leases.owners.remove(&lease.instance_id, task);
            }
        }
        let execution = record.execution;
        // Sub-orchestrations first: a refused child becomes a failure message to us.
        let mut refusals = Vec::new();
        for (seq, child) in std::mem::take(&mut commit.new_instances) {
            let child_id = child.instance_id.clone();
            let refused = if child_id == commit.instance_id {
                Some("a sub-orchestration cannot take its parent's id".to_owned())
            } else {
                self.create(leases, child)?.err().map(|e| e.to_string())
            };
            if let Some(reason) = refused {
                refusals.push(Message::new(
                    Event::SubOrchestrationFailed {
                        seq,
                        failure: FailureDetails::new(
                            "SubOrchestrationNotCreated",
                            format!("could not create sub-orchestration `{child_id}`: {reason}"),
                        ),
                    },
                    Some(execution),
                    commit.now,
                ));
            }
        }
        self.consume(&key, &commit.consumed)?;
        let record_unchanged = !take_outcome(&mut record, &mut commit);
        let history_len_now;
        if let Some(next) = &commit.next_execution {
            self.history
                .retain_in((key.as_str(), 0u64)..=(key.as_str(), u64::MAX), |_, _| {
                    false
                })?;
            history_len_now = 0;
            record.continue_as(next);
        } else {
            let start = match known_len {
                Some(len) => len,
                None => history_len(&self.history, &key)?,
            };
            for (i, event) in commit.new_events.iter().enumerate() {
                let bytes = json(&mut self.buf, event)?;
                self.history
                    .insert((key.as_str(), start + i as u64), bytes)?;
            }
            history_len_now = start + commit.new_events.len() as u64;
        }
        if record_unchanged {
            leases.committed_changes.push((key.clone(), None));
        } else {
            self.put_record(leases, &record)?;
        }
        leases.unlock(&key);
        if !commit.activities.is_empty() && !record.status.is_terminal() {
            // The worker leases the instance again when a result comes back.
            leases.committed_changes.push((
                key.clone(),
                Some(Box::new(Seen {
                    record,
                    history_len: history_len_now,
                })),
            ));
        }
        if let Some(next) = commit.next_execution {
            for m in next.messages {
                self.enqueue(leases, &key, m)?;
            }
        }
        for m in refusals {
            self.enqueue(leases, &key, m)?;
        }
        let (activity_work, eager_item) =
            self.enqueue_tasks(leases, commit.activities, commit.now, eager)?;
        for (target, m) in commit.messages {
            if !self.enqueue(leases, target.as_str(), m)? {
                tracing::debug!(target = %target, "message to unknown instance dropped");
            }
        }
        Ok(Ok((activity_work, eager_item)))
    }

    /// Removes the messages an episode consumed from `key`'s inbox and ends the hold an
    /// abandoned episode left, keeping its ready row current.
    fn consume(&mut self, key: &str, consumed: &[MessageId]) -> R<()> {
        if consumed.is_empty() {
            // Nothing leaves the inbox (results handed off in memory): the ready row moves
            // only if the commit ends a hold.
            let hold = self.holds.remove(key)?.map(|h| h.value());
            if let Some(hold) = hold {
                let first = inbox_first(&self.inbox, key)?;
                self.fix_ready(key, first.map(|f| f.max(hold)), first)?;
            }
            return Ok(());
        }
        let before = self.ready_at(key)?;
        for id in consumed {
            self.inbox.remove((key, ts(id.visible_at), id.seq))?;
        }
        self.holds.remove(key)?;
        let after = self.ready_at(key)?;
        self.fix_ready(key, before, after)
    }

    fn abandon_episode(
        &mut self,
        leases: &mut Leases,
        id: &InstanceId,
        lock: LockToken,
        retry_at: Timestamp,
        error: Option<String>,
    ) -> R<Result<(), StoreError>> {
        let key = id.as_str();
        if !leases.holds(key, lock) {
            return Ok(Err(StoreError::LockLost(key.to_owned())));
        }
        let Some(mut record) = read_record(&self.instances, key)? else {
            return Ok(Err(StoreError::LockLost(key.to_owned())));
        };
        record.last_error = error;
        self.put_record(leases, &record)?;
        leases.unlock(key);
        // Hold the instance, not its messages: they keep their times and their order.
        let before = self.ready_at(key)?;
        self.holds.insert(key, ts(retry_at))?;
        let after = self.ready_at(key)?;
        self.fix_ready(key, before, after)?;
        Ok(Ok(()))
    }

    fn complete_activity(
        &mut self,
        leases: &mut Leases,
        id: u64,
        lock: LockToken,
        result: Message,
    ) -> R<Result<(), StoreError>> {
        let Some(lease) = leases.take_activity(id, lock) else {
            return Ok(Err(StoreError::LockLost(format!("activity task {id}"))));
        };
        self.activities.remove((ts(lease.visible_at), id))?;
        leases.owners.remove(&lease.instance_id, id);
        let running = read_record(&self.instances, &lease.instance_id)?
            .is_some_and(|r| !r.status.is_terminal());
        if running {
            self.enqueue(leases, &lease.instance_id, result)?;
        }
        Ok(Ok(()))
    }

    /// Stores the task's latest heartbeat details and extends its lease.
    fn record_heartbeat(
        &mut self,
        leases: &mut Leases,
        id: u64,
        lock: LockToken,
        details: Payload,
        until: Timestamp,
    ) -> R<Result<(), StoreError>> {
        let lost = || Ok(Err(StoreError::LockLost(format!("activity task {id}"))));
        let held = leases
            .activity
            .get(&id)
            .filter(|l| l.token == lock.0 && !leases.releasing_activity.contains(&id));
        let Some(key) = held.map(|l| (ts(l.visible_at), id)) else {
            return lost();
        };
        let bytes = self.activities.get(key)?.map(|v| v.value().to_vec());
        let Some(bytes) = bytes else {
            return lost();
        };
        let mut task: ActivityTask = decode(&bytes)?;
        task.heartbeat = Some(details);
        let bytes = json(&mut self.buf, &task)?;
        self.activities.insert(key, bytes)?;
        leases.renew_activity(id, lock, until);
        Ok(Ok(()))
    }

    fn abandon_activity(
        &mut self,
        leases: &mut Leases,
        id: u64,
        lock: LockToken,
        retry_at: Timestamp,
    ) -> R<Result<(), StoreError>> {
        let Some(lease) = leases.take_activity(id, lock) else {
            return Ok(Err(StoreError::LockLost(format!("activity task {id}"))));
        };
        let bytes = self
            .activities
            .remove((ts(lease.visible_at), id))?
            .map(|v| v.value().to_vec());
        if let Some(bytes) = bytes {
            self.activities
                .insert((ts(retry_at), id), bytes.as_slice())?;
            leases.owners.insert(&lease.instance_id, id, ts(retry_at));
            leases.available_changes.push(((ts(retry_at), id), true));
        } else {
            leases.owners.remove(&lease.instance_id, id);
        }
        Ok(Ok(()))
    }
}

/// One write operation, applied in a batch by the writer thread or alone on its caller's
/// thread ([`RedbStore::commit_here`]).
enum WriteOp {
    Create(NewInstance),
    Send(InstanceId, Message),
    /// An episode's commit; with `eager` (a task's index, the lease's start and length)
    /// that new activity task is leased to the committer ([`Store::commit_episode_eager`]).
    Commit {
        commit: Box<EpisodeCommit>,
        eager: Option<(usize, Timestamp, Duration)>,
    },
    CreateStarted(Box<(NewInstance, EpisodeCommit)>),
    CreateLeased {
        new: NewInstance,
        until: Timestamp,
    },
    AbandonEpisode {
        instance_id: InstanceId,
        lock: LockToken,
        retry_at: Timestamp,
        error: Option<String>,
    },
    CompleteActivity {
        id: u64,
        lock: LockToken,
        result: Message,
    },
    AbandonActivity {
        id: u64,
        lock: LockToken,
        retry_at: Timestamp,
    },
    Heartbeat {
        id: u64,
        lock: LockToken,
        details: Payload,
        until: Timestamp,
    },
    Purge(InstanceId),
    /// Purge if finished by the time given.
    PurgeFinished(InstanceId, Timestamp),
    /// A transactional activity's run: its body and the task's completion in one
    /// transaction, which it starts (see [`run_app_head`]).
    Transactional {
        id: u64,
        lock: LockToken,
        run: TransactionalRun,
    },
    /// [`RedbStore::write_app`], in a transaction of its own.
    AppWrite(AppWrite),
}

/// The body of a [`RedbStore::write_app`]: its answer (a boxed `Result<T, E>`) and whether
/// to commit.
type AppWrite = Box<dyn FnOnce(&RedbTransaction<'_>) -> (AppAnswer, bool) + Send>;
type AppAnswer = Box<dyn std::any::Any + Send>;

impl WriteOp {
    /// `true` for a step of a sequential chain, which its caller may commit on its own
    /// thread ([`RedbStore::commit_here`]): a start that runs its first episode, and an
    /// episode's commit that takes activity results handed over in memory (the worker ran
    /// the activities right after an earlier step). Episodes woken by messages and timers,
    /// and other writes, tend to come many at once: they go to the writer's group commit
    /// and leave tokio's workers free.
    fn continues_a_chain(&self) -> bool {
        match self {
            WriteOp::CreateStarted(_) => true,
            WriteOp::Commit { commit, .. } => !commit.completed_activities.is_empty(),
            _ => false,
        }
    }

    /// `true` for the operations that run the application's code in the transaction: each
    /// starts a transaction of its own, since a failed body's writes can only be undone by
    /// aborting the transaction (redb savepoints cannot be taken once a transaction wrote).
    fn runs_app_code(&self) -> bool {
        matches!(self, WriteOp::Transactional { .. } | WriteOp::AppWrite(_))
    }
}

/// What a write returned.
enum Outcome {
    Done,
    Created(Box<CreateResult>),
    /// [`WriteOp::CreateStarted`]: the record, or `None` when nothing was written.
    CreatedStarted(Option<Box<InstanceRecord>>),
    /// [`WriteOp::CreateLeased`]: the lease's work item, or `None` when nothing was written.
    CreatedLeased(Option<Box<OrchestrationWorkItem>>),
    /// [`WriteOp::Commit`] with `eager`: the task leased to the committer, if it was.
    Committed(Option<Box<ActivityWorkItem>>),
    Purged(bool),
    /// [`WriteOp::AppWrite`]: the body's answer.
    App(AppAnswer),
}

impl Outcome {
    fn unexpected() -> StoreError {
        StoreError::backend(
            "internal error: the store's writer answered with the wrong kind of result",
        )
    }
}

/// Which signals to send once a write is durable.
#[derive(Debug, Clone, Copy, Default)]
struct Wake {
    orchestration: bool,
    activity: bool,
    changed: bool,
    finished: bool,
}

impl Wake {
    fn merge(&mut self, other: Wake) {
        self.orchestration |= other.orchestration;
        self.activity |= other.activity;
        self.changed |= other.changed;
        self.finished |= other.finished;
    }
}

struct Request {
    op: WriteOp,
    reply: oneshot::Sender<Result<Outcome, StoreError>>,
}

/// Whether the caller runs on a tokio multi-thread runtime with two workers or more.
fn on_tokio_workers() -> bool {
    tokio::runtime::Handle::try_current().is_ok_and(|h| {
        h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
            && h.metrics().num_workers() >= 2
    })
}

fn writer_loop(core: &Core, rx: &mpsc::Receiver<Request>) {
    while let Ok(first) = rx.recv() {
        // Taken before the batch is gathered, so what arrives while a caller commits on its
        // own thread joins this batch.
        let Ok(turn) = core.committing.lock() else {
            return;
        };
        if core.broken.load(Ordering::SeqCst) {
            return;
        }
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        core.queued.fetch_sub(batch.len(), Ordering::SeqCst);
        commit_batch(core, turn, batch);
    }
}

/// Commits `batch` under `turn` (the `committing` lock, held by the writer thread or a
/// caller committing on its own thread), gives the turn up, then answers every caller — so
/// a caller's next write may commit on its own thread. Returns `false` if committing
/// panicked outside the batch's own guard: the store is then marked broken and stops
/// writing (the callers of the batch are told the writer stopped, as are all after them).
fn commit_batch(core: &Core, turn: MutexGuard<'_, ()>, batch: Vec<Request>) -> bool {
    let durable = core.next_batch_durable();
    let mut answers = Vec::with_capacity(batch.len());
    let ran = catch_unwind(AssertUnwindSafe(|| {
        // A run of application code starts a transaction of its own (see
        // `WriteOp::runs_app_code`); the operations after it join that transaction.
        let mut rest = batch.into_iter().peekable();
        while rest.peek().is_some() {
            let mut part = vec![rest.next().expect("peeked")];
            while let Some(next) = rest.next_if(|r| !r.op.runs_app_code()) {
                part.push(next);
            }
            run_batch(core, part, durable, &mut answers);
        }
    }));
    if ran.is_err() {
        tracing::error!("internal error: a commit panicked; the store stops writing");
        core.broken.store(true, Ordering::SeqCst);
    }
    drop(turn);
    answer(answers);
    ran.is_ok()
}

/// A caller's reply and what it is told.
type Answer = (
    oneshot::Sender<Result<Outcome, StoreError>>,
    Result<Outcome, StoreError>,
);

fn answer(answers: Vec<Answer>) {
    for (reply, result) in answers {
        let _ = reply.send(result);
    }
}

/// Applies a batch in one write transaction and, once it is committed (or has failed), adds
/// every caller's answer to `answers`, to be sent when the `committing` turn is given up.
///
/// The lease mutex is held while the operations are applied, not while the transaction is
/// made durable: lease releases are deferred (see [`Leases::finish_batch`]) until then, so
/// fetches can run during the fsync and still never see a lease released by a commit that is
/// not yet visible.
fn run_batch(core: &Core, batch: Vec<Request>, durable: bool, answers_out: &mut Vec<Answer>) {
    let items = batch.len();
    let timer = CommitTimer::start();
    // Every caller's reply is kept here from the start, so a failure anywhere in the batch
    // (opening the tables, a storage error in application code) answers every one of them
    // with that failure rather than dropping their replies.
    let (ops, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|r| (r.op, r.reply)).unzip();
    let mut answers: Vec<Option<Result<(Outcome, Wake), StoreError>>> = Vec::with_capacity(items);
    // The id bound this batch writes to `meta`, if its ids reached the last one.
    let mut new_bound = None;
    let ran = catch_unwind(AssertUnwindSafe(|| -> R<()> {
        let mut ops = ops.into_iter().peekable();
        let head = ops.next_if(WriteOp::runs_app_code);
        let (txn, head) = run_app_head(core, durable, head)?;
        let head = match head {
            Head::None => None,
            Head::Apply(op) => Some(op),
            Head::Answer(answer) => {
                answers.push(Some(answer));
                None
            }
        };
        let mut fatal = None;
        {
            let mut tables = Tables::open(&txn)?;
            let mut leases = core.leases();
            for op in head.into_iter().chain(ops) {
                if fatal.is_some() {
                    answers.push(None);
                    continue;
                }
                match apply(&mut tables, &mut leases, op) {
                    Ok(r) => answers.push(Some(r)),
                    Err(e) => {
                        fatal = Some(e);
                        answers.push(None);
                    }
                }
            }
            if fatal.is_none() && leases.next_id > leases.id_bound {
                new_bound = Some(leases.next_id.saturating_add(ID_BLOCK));
                tables
                    .meta
                    .insert(NEXT_ID_KEY, new_bound.expect("just set"))?;
            }
        }
        if let Some(e) = fatal {
            return Err(e);
        }
        txn.commit()?;
        core.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }));
    let failure = match ran {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(_) => Some(Fatal::new(
            "internal error: the store's writer panicked; the batch was discarded",
        )),
    };
    {
        let mut leases = core.leases();
        leases.finish_batch(failure.is_none());
        if failure.is_none()
            && let Some(bound) = new_bound
        {
            leases.id_bound = bound;
        }
    }
    if let Some(fatal) = failure {
        tracing::error!(error = %fatal.message, "store commit failed");
        // A failing disk is no place for callers' threads.
        core.note_commit_time(timer.elapsed().max(FAILED_COMMIT));
        answers_out.extend(
            replies
                .into_iter()
                .map(|r| (r, Err(fatal.backend(fatal.message.clone())))),
        );
        return;
    }
    core.note_commit_time(timer.record("redb", items));
    answers.resize_with(items, || None);
    signal_and_answer(core, replies, answers, answers_out);
}

/// Sends one round of signals for a durable batch, then adds each caller's answer.
fn signal_and_answer(
    core: &Core,
    replies: Vec<oneshot::Sender<Result<Outcome, StoreError>>>,
    answers: Vec<Option<Result<(Outcome, Wake), StoreError>>>,
    answers_out: &mut Vec<Answer>,
) {
    let mut wake = Wake::default();
    let results: Vec<_> = replies
        .into_iter()
        .zip(answers)
        .map(|(reply, result)| {
            let result = result.unwrap_or_else(|| Err(Outcome::unexpected()));
            if let Ok((_, w)) = &result {
                wake.merge(*w);
            }
            (reply, result)
        })
        .collect();
    if wake.activity {
        core.signals.activity_work();
    }
    if wake.orchestration {
        core.signals.orchestration_work();
    }
    if wake.finished {
        core.signals.instance_finished();
    } else if wake.changed {
        core.signals.changed.send_modify(|v| *v = v.wrapping_add(1));
    }
    // The replies last: whoever a write returns to finds its signals sent.
    answers_out.extend(
        results
            .into_iter()
            .map(|(r, result)| (r, result.map(|(o, _)| o))),
    );
}

fn begin(core: &Core, durable: bool) -> R<WriteTransaction> {
    let mut txn = core.db.begin_write()?;
    if !durable {
        txn.set_durability(redb::Durability::None)?;
    }
    Ok(txn)
}

/// What is left to do for the head of a batch once [`run_app_head`] ran it.
enum Head {
    /// Nothing: the batch holds no application code.
    None,
    /// An operation for the batch loop to apply first.
    Apply(WriteOp),
    /// The head's answer, sent with the others once the batch is committed.
    Answer(Result<(Outcome, Wake), StoreError>),
}

/// Starts the batch's transaction and, when the batch starts with a run of application code,
/// runs it first. Returns the transaction the rest of the batch joins and what is left to do
/// for the head.
///
/// A transactional activity's body runs on the application's tables only; if it succeeds,
/// the task's completion is applied in the same transaction. If the body fails, or the lease
/// was lost meanwhile, the transaction is aborted (the only way to undo the body's writes)
/// and a fresh one is started: the task is then completed with the failure as an ordinary
/// operation of the batch, or the caller is told the lease is lost.
fn run_app_head(core: &Core, durable: bool, head: Option<WriteOp>) -> R<(WriteTransaction, Head)> {
    let txn = begin(core, durable)?;
    let Some(op) = head else {
        return Ok((txn, Head::None));
    };
    let lost = |id: u64| Err(StoreError::LockLost(format!("activity task {id}")));
    match op {
        WriteOp::AppWrite(body) => {
            let (answer, commit) = body(&RedbTransaction::new(&txn));
            let answer = Ok((Outcome::App(answer), Wake::default()));
            if commit {
                return Ok((txn, Head::Answer(answer)));
            }
            txn.abort()?;
            Ok((begin(core, durable)?, Head::Answer(answer)))
        }
        WriteOp::Transactional { id, lock, run } => {
            if !core.leases().holds_activity(id, lock) {
                // Fenced out: the body does not run, nothing is written.
                return Ok((txn, Head::Answer(lost(id))));
            }
            let (activity, body, finish) = match run.into_redb("RedbStore") {
                Ok(parts) => parts,
                Err(unsupported) => return Ok((txn, Head::Answer(Err(unsupported)))),
            };
            let failed = match run_redb_body(&activity, body, &txn) {
                Ok(out) => {
                    let message = finish(Ok(out));
                    let completed = {
                        let mut tables = Tables::open(&txn)?;
                        let mut leases = core.leases();
                        tables.complete_activity(&mut leases, id, lock, message)?
                    };
                    if completed.is_ok() {
                        let wake = Wake {
                            orchestration: true,
                            ..Wake::default()
                        };
                        return Ok((txn, Head::Answer(Ok((Outcome::Done, wake)))));
                    }
                    // Lost while the body ran: its writes go with the transaction.
                    None
                }
                Err(failure) => Some(finish(Err(failure))),
            };
            txn.abort()?;
            let txn = begin(core, durable)?;
            let head = match failed {
                Some(message) => Head::Apply(WriteOp::CompleteActivity {
                    id,
                    lock,
                    result: message,
                }),
                None => Head::Answer(lost(id)),
            };
            Ok((txn, head))
        }
        op => Ok((txn, Head::Apply(op))),
    }
}

/// Applies one operation. The inner error is the operation's own (nothing was written); the
/// outer one is a storage failure that aborts the batch.
#[allow(clippy::too_many_lines, reason = "one arm per operation")]
fn apply(
    t: &mut Tables<'_>,
    leases: &mut Leases,
    op: WriteOp,
) -> R<Result<(Outcome, Wake), StoreError>> {
    let orchestration = Wake {
        orchestration: true,
        ..Wake::default()
    };
    Ok(match op {
        WriteOp::Create(new) => {
            // Replacing a running instance terminates it (and its tree) in place: whoever
            // waits for those to finish must wake.
            let finished = new.reuse == IdReusePolicy::TerminateRunning;
            t.create(leases, new)?.map(|r| {
                (
                    Outcome::Created(Box::new(r)),
                    Wake {
                        finished,
                        ..orchestration
                    },
                )
            })
        }
        WriteOp::Send(id, message) => t
            .send(leases, &id, message)?
            .map(|()| (Outcome::Done, orchestration)),
        WriteOp::Commit { commit, eager } => {
            let finished = commit.status.is_terminal();
            t.commit(leases, *commit, eager)?.map(|(activity, leased)| {
                (
                    Outcome::Committed(leased.map(Box::new)),
                    Wake {
                        orchestration: true,
                        activity,
                        changed: false,
                        finished,
                    },
                )
            })
        }
        WriteOp::CreateStarted(started) => {
            let (new, first) = *started;
            let finished = first.status.is_terminal();
            t.create_started(leases, new, first)?
                .map(|created| match created {
                    None => (Outcome::CreatedStarted(None), Wake::default()),
                    Some((record, activity)) => (
                        Outcome::CreatedStarted(Some(Box::new(record))),
                        Wake {
                            orchestration: true,
                            activity,
                            changed: true,
                            finished,
                        },
                    ),
                })
        }
        WriteOp::CreateLeased { new, until } => {
            t.create_leased(leases, new, until)?.map(|item| match item {
                None => (Outcome::CreatedLeased(None), Wake::default()),
                // Leased to the caller: no worker needs waking.
                Some(item) => (
                    Outcome::CreatedLeased(Some(Box::new(item))),
                    Wake {
                        changed: true,
                        ..Wake::default()
                    },
                ),
            })
        }
        WriteOp::AbandonEpisode {
            instance_id,
            lock,
            retry_at,
            error,
        } => t
            .abandon_episode(leases, &instance_id, lock, retry_at, error)?
            .map(|()| (Outcome::Done, orchestration)),
        WriteOp::CompleteActivity { id, lock, result } => t
            .complete_activity(leases, id, lock, result)?
            .map(|()| (Outcome::Done, orchestration)),
        WriteOp::AbandonActivity { id, lock, retry_at } => {
            t.abandon_activity(leases, id, lock, retry_at)?.map(|()| {
                (
                    Outcome::Done,
                    Wake {
                        activity: true,
                        ..Wake::default()
                    },
                )
            })
        }
        WriteOp::Heartbeat {
            id,
            lock,
            details,
            until,
        } => t
            .record_heartbeat(leases, id, lock, details, until)?
            .map(|()| (Outcome::Done, Wake::default())),
        WriteOp::PurgeFinished(id, finished_by) => {
            let qualifies = read_record(&t.instances, id.as_str())?
                .is_some_and(|r| r.status.is_terminal() && r.last_updated_at <= finished_by);
            let removed = qualifies && t.remove_instance(leases, id.as_str())?;
            Ok((
                Outcome::Purged(removed),
                Wake {
                    changed: removed,
                    finished: removed,
                    ..Wake::default()
                },
            ))
        }
        WriteOp::Transactional { .. } | WriteOp::AppWrite(_) => {
            // Run by `run_app_head` at the start of a transaction, never here.
            return Err(Fatal::new(
                "internal error: application code reached the store's batch loop",
            ));
        }
        WriteOp::Purge(id) => {
            let removed = t.remove_instance(leases, id.as_str())?;
            Ok((
                Outcome::Purged(removed),
                Wake {
                    changed: removed,
                    finished: removed,
                    ..Wake::default()
                },
            ))
        }
    })
}

impl Core {
    /// Leases up to `max` unlocked instances with messages visible at `now`.
    fn fetch_orchestration(
        &self,
        now: Timestamp,
        lock_for: Duration,
        max: usize,
    ) -> R<Vec<OrchestrationWorkItem>> {
        let mut leases = self.leases();
        leases.release_expired(now);
        let txn = self.db.begin_read()?;
        let ready = txn.open_table(READY)?;
        let mut chosen = Vec::new();
        for entry in ready.iter()? {
            if chosen.len() >= max {
                break;
            }
            let (k, _) = entry?;
            let (vis, id) = k.value();
            if vis > ts(now) {
                break;
            }
            if !leases.orch.contains_key(id) {
                chosen.push(id.to_owned());
            }
        }
        let mut items = Vec::with_capacity(chosen.len());
        for id in chosen {
            let Some(item) = lease_instance(&txn, &mut leases, &id, now, lock_for)? else {
                return Err(Fatal::new(format!(
                    "the ready index names instance `{id}`, which has no record"
                )));
            };
            items.push(item);
        }
        Ok(items)
    }

    /// Leases the given instances, messages or not, leaving out locked or unknown ones.
    fn fetch_instances(
        &self,
        ids: &[InstanceId],
        now: Timestamp,
        lock_for: Duration,
    ) -> R<Vec<OrchestrationWorkItem>> {
        let mut leases = self.leases();
        leases.release_expired(now);
        let txn = self.db.begin_read()?;
        let mut items = Vec::with_capacity(ids.len());
        for id in ids {
            if leases.orch.contains_key(id.as_str()) {
                continue;
            }
            if let Some(item) = lease_instance(&txn, &mut leases, id.as_str(), now, lock_for)? {
                items.push(item);
            }
        }
        Ok(items)
    }

    fn fetch_activities(
        &self,
        now: Timestamp,
        lock_for: Duration,
        max: usize,
    ) -> R<Vec<ActivityWorkItem>> {
        let mut leases = self.leases();
        leases.release_expired(now);
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        let keys: Vec<(u64, u64)> = leases
            .available
            .range(..=(ts(now), u64::MAX))
            .take(max)
            .copied()
            .collect();
        if keys.is_empty() {
            return Ok(out);
        }
        let txn = self.db.begin_read()?;
        let queue = txn.open_table(ACTIVITIES)?;
        for key in keys {
            leases.available.remove(&key);
            let Some(value) = queue.get(key)? else {
                // Not in the committed table (removed by a batch being committed).
                continue;
            };
            let task: ActivityTask = decode(value.value())?;
            let (vis, id) = key;
            let token = leases.token();
            let until = now + task.lease_for(lock_for);
            leases.activity.insert(
                id,
                ActivityLease {
                    visible_at: Timestamp::from_unix_millis(vis),
                    until,
                    token,
                    instance_id: task.instance_id.as_str().to_owned(),
                },
            );
            leases.activity_expiry.insert((until, id));
            out.push(ActivityWorkItem {
                id,
                task,
                lock: LockToken(token),
            });
        }
        Ok(out)
    }

    fn next_wake_time(&self, kind: Option<WorkKind>) -> R<Option<Timestamp>> {
        let leases = self.leases();
        let txn = self.db.begin_read()?;
        let want_orch = kind != Some(WorkKind::Activity);
        let want_activity = kind != Some(WorkKind::Orchestration);
        let mut ready_at = None;
        if want_orch {
            for entry in txn.open_table(READY)?.iter()? {
                let (k, _) = entry?;
                let (vis, id) = k.value();
                if !leases.orch.contains_key(id) {
                    ready_at = Some(vis);
                    break;
                }
            }
        }
        let activity_at = if want_activity {
            leases.available.first().map(|(vis, _)| *vis)
        } else {
            None
        };
        let candidates = [
            ready_at.map(Timestamp::from_unix_millis),
            leases
                .orch_expiry
                .first()
                .map(|(t, _)| *t)
                .filter(|_| want_orch),
            activity_at.map(Timestamp::from_unix_millis),
            leases
                .activity_expiry
                .first()
                .map(|(t, _)| *t)
                .filter(|_| want_activity),
        ];
        Ok(candidates.into_iter().flatten().min())
    }

    /// Counts the work waiting at `now` ([`QueueDepths`]): the unlocked rows of the ready
    /// index due by `now` and their due timer messages, and the unleased activity tasks.
    fn queue_depths(&self, now: Timestamp) -> R<QueueDepths> {
        // The leases are copied out so the scan below does not hold up fetches and the
        // writer; the locked instances are few (one per episode in flight).
        let (locked, ready_activities) = {
            let leases = self.leases();
            let locked: HashSet<String> = leases
                .orch
                .iter()
                .filter(|(_, l)| l.until > now)
                .map(|(id, _)| id.clone())
                .collect();
            let queued = leases.available.range(..=(ts(now), u64::MAX)).count();
            let expired = leases
                .activity_expiry
                .range(..=(now, u64::MAX))
                .filter(|(_, id)| {
                    !leases.releasing_activity.contains(id)
                        && leases.activity.get(id).is_some_and(|l| l.until <= now)
                })
                .count();
            (locked, (queued + expired) as u64)
        };
        let txn = self.db.begin_read()?;
        let ready = txn.open_table(READY)?;
        let inbox = txn.open_table(INBOX)?;
        let mut depths = QueueDepths {
            ready_activities,
            ..QueueDepths::default()
        };
        for entry in ready.iter()? {
            let (k, _) = entry?;
            let (vis, id) = k.value();
            if vis > ts(now) {
                break;
            }
            if locked.contains(id) {
                continue;
            }
            depths.ready_orchestrations += 1;
            for message in inbox.range((id, 0u64, 0u64)..=(id, ts(now), u64::MAX))? {
                if is_timer(message?.1.value())? {
                    depths.timers_due += 1;
                }
            }
        }
        Ok(depths)
    }

    fn read_instance(&self, id: &str) -> R<Option<InstanceRecord>> {
        let txn = self.db.begin_read()?;
        let history = txn.open_table(HISTORY)?;
        read_record(&txn.open_table(INSTANCES)?, id)?
            .map(|r| last_update_applied(&history, r))
            .transpose()
    }

    fn read_history(&self, id: &str) -> R<Vec<HistoryEvent>> {
        let txn = self.db.begin_read()?;
        history_rows(&txn.open_table(HISTORY)?, id)
    }

    /// Every instance `query` matches (paging aside), as (created, id), decoding only the
    /// fields filters read.
    fn scan_heads(
        table: &impl ReadableTable<&'static str, &'static [u8]>,
        query: &InstanceQuery,
        mut each: impl FnMut(&str, &RecordHead),
    ) -> R<()> {
        use std::ops::Bound;
        let start = query
            .id_prefix
            .as_deref()
            .map_or(Bound::Unbounded, Bound::Included);
        for entry in table.range::<&str>((start, Bound::Unbounded))? {
            let (k, v) = entry?;
            let key = k.value();
            if let Some(p) = &query.id_prefix
                && !key.starts_with(p.as_str())
            {
                break;
            }
            let head: RecordHead = decode(v.value())?;
            if head.matches(key, query) {
                each(key, &head);
            }
        }
        Ok(())
    }

    /// Newest first: sorts the matching (created, id) pairs, then reads one page of records.
    fn query_newest(
        table: &impl ReadableTable<&'static str, &'static [u8]>,
        history: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
        query: &InstanceQuery,
    ) -> R<InstancePage> {
        let after = query
            .continuation
            .as_deref()
            .and_then(super::parse_newest_first_token);
        let mut keys: Vec<(Timestamp, String)> = Vec::new();
        Self::scan_heads(table, query, |key, head| {
            if after.is_none_or(|(at, id)| (head.created_at, key) < (at, id)) {
                keys.push((head.created_at, key.to_owned()));
            }
        })?;
        let page = query.effective_page_size();
        let newest = |a: &(Timestamp, String), b: &(Timestamp, String)| b.cmp(a);
        let more = keys.len() > page;
        if more {
            keys.select_nth_unstable_by(page, newest);
            keys.truncate(page);
        }
        keys.sort_unstable_by(newest);
        let mut instances = Vec::with_capacity(keys.len());
        for (_, key) in &keys {
            if let Some(v) = table.get(key.as_str())? {
                instances.push(last_update_applied(history, decode(v.value())?)?);
            }
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

    fn count(&self, query: &InstanceQuery) -> R<Vec<(RuntimeStatus, u64)>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(INSTANCES)?;
        let mut counts = super::StatusCounts::default();
        Self::scan_heads(&table, query, |_, head| counts.add(head.status, 1))?;
        Ok(counts.into_vec())
    }

    fn query(&self, query: &InstanceQuery) -> R<InstancePage> {
        use std::ops::Bound;
        let txn = self.db.begin_read()?;
        let table = txn.open_table(INSTANCES)?;
        let history = txn.open_table(HISTORY)?;
        let page = query.effective_page_size();
        let start = match (&query.continuation, &query.id_prefix) {
            (Some(c), _) => Bound::Excluded(c.as_str()),
            (None, Some(p)) => Bound::Included(p.as_str()),
            (None, None) => Bound::Unbounded,
        };
        if query.newest_first {
            return Self::query_newest(&table, &history, query);
        }
        let mut instances = Vec::new();
        let mut last = None;
        let mut more = false;
        for entry in table.range::<&str>((start, Bound::Unbounded))? {
            let (k, v) = entry?;
            let key = k.value();
            if let Some(p) = &query.id_prefix
                && !key.starts_with(p.as_str())
            {
                break;
            }
            let record: InstanceRecord = decode(v.value())?;
            if !query.matches(&record) {
                continue;
            }
            if instances.len() == page {
                more = true;
                break;
            }
            last = Some(key.to_owned());
            instances.push(last_update_applied(&history, record)?);
        }
        Ok(InstancePage {
            instances,
            continuation: if more { last } else { None },
        })
    }
}

/// Reads an unlocked instance's record, history length and visible messages, and locks it.
fn lease_instance(
    txn: &redb::ReadTransaction,
    leases: &mut Leases,
    id: &str,
    now: Timestamp,
    lock_for: Duration,
) -> R<Option<OrchestrationWorkItem>> {
    let (instance, history_len) = if let Some(seen) = leases.committed.remove(id) {
        (seen.record, seen.history_len)
    } else {
        let Some(instance) = read_record(&txn.open_table(INSTANCES)?, id)? else {
            return Ok(None);
        };
        with_history_tail(&txn.open_table(HISTORY)?, instance)?
    };
    let inbox = txn.open_table(INBOX)?;
    let mut messages = Vec::new();
    for entry in inbox.range((id, 0u64, 0u64)..=(id, ts(now), u64::MAX))? {
        let (k, v) = entry?;
        messages.push(inbox_message(k.value(), v.value())?);
    }
    let seen = Box::new(Seen {
        record: instance.clone(),
        history_len,
    });
    let token = leases.lock(id, now + lock_for, Some(seen));
    Ok(Some(OrchestrationWorkItem {
        instance,
        history_len,
        messages,
        lock: LockToken(token),
    }))
}

#[async_trait]
impl Store for RedbStore {
    async fn create_instance(&self, new: NewInstance) -> Result<CreateResult, StoreError> {
        match self.write(WriteOp::Create(new)).await? {
            Outcome::Created(r) => Ok(*r),
            _ => Err(Outcome::unexpected()),
        }
    }

    async fn send_message(
        &self,
        instance_id: &InstanceId,
        message: Message,
    ) -> Result<(), StoreError> {
        self.write(WriteOp::Send(instance_id.clone(), message))
            .await
            .map(drop)
    }

    async fn fetch_orchestration_work(
        &self,
        now: Timestamp,
        lock_for: Duration,
    ) -> Result<Option<OrchestrationWorkItem>, StoreError> {
        self.inline(move |core| core.fetch_orchestration(now, lock_for, 1))
            .map(|items| items.into_iter().next())
    }

    async fn fetch_orchestration_batch(
        &self,
        now: Timestamp,
        lock_for: Duration,
        max: usize,
    ) -> Result<Vec<OrchestrationWorkItem>, StoreError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        self.inline(move |core| core.fetch_orchestration(now, lock_for, max))
    }

    async fn commit_episode(&self, commit: EpisodeCommit) -> Result<(), StoreError> {
        self.write(WriteOp::Commit {
            commit: Box::new(commit),
            eager: None,
        })
        .await
        .map(drop)
    }

    fn supports_eager_dispatch(&self) -> bool {
        true
    }

    async fn commit_episode_eager(
        &self,
        commit: EpisodeCommit,
        task: usize,
        now: Timestamp,
        lock_for: Duration,
    ) -> Result<Option<ActivityWorkItem>, StoreError> {
        let op = WriteOp::Commit {
            commit: Box::new(commit),
            eager: Some((task, now, lock_for)),
        };
        match self.write(op).await? {
            Outcome::Committed(leased) => Ok(leased.map(|item| *item)),
            _ => Err(Outcome::unexpected()),
        }
    }

    async fn create_started(
        &self,
        new: NewInstance,
        first: EpisodeCommit,
    ) -> Result<Option<InstanceRecord>, StoreError> {
        match self
            .write(WriteOp::CreateStarted(Box::new((new, first))))
            .await?
        {
            Outcome::CreatedStarted(created) => Ok(created.map(|r| *r)),
            _ => Err(Outcome::unexpected()),
        }
    }

    async fn create_leased(
        &self,
        new: NewInstance,
        now: Timestamp,
        lock_for: Duration,
    ) -> Result<Option<OrchestrationWorkItem>, StoreError> {
        let until = now + lock_for;
        match self.write(WriteOp::CreateLeased { new, until }).await? {
            Outcome::CreatedLeased(item) => Ok(item.map(|i| *i)),
            _ => Err(Outcome::unexpected()),
        }
    }

    fn supports_activity_handoff(&self) -> bool {
        true
    }

    fn leases_in_process(&self) -> bool {
        true
    }

    fn supports_create_started(&self) -> bool {
        true
    }

    async fn fetch_instances_work(
        &self,
        instance_ids: &[InstanceId],
        now: Timestamp,
        lock_for: Duration,
    ) -> Result<Vec<OrchestrationWorkItem>, StoreError> {
        let ids = instance_ids.to_vec();
        self.inline(move |core| core.fetch_instances(&ids, now, lock_for))
    }

    async fn abandon_episode(
        &self,
        instance_id: &InstanceId,
        lock: LockToken,
        retry_at: Timestamp,
        error: Option<String>,
    ) -> Result<(), StoreError> {
        self.write(WriteOp::AbandonEpisode {
            instance_id: instance_id.clone(),
            lock,
            retry_at,
            error,
        })
        .await
        .map(drop)
    }

    async fn fetch_activity_work(
        &self,
        now: Timestamp,
        lock_for: Duration,
        max: usize,
    ) -> Result<Vec<ActivityWorkItem>, StoreError> {
        self.inline(move |core| core.fetch_activities(now, lock_for, max))
    }

    async fn complete_activity(
        &self,
        id: u64,
        lock: LockToken,
        result: Message,
    ) -> Result<(), StoreError> {
        self.write(WriteOp::CompleteActivity { id, lock, result })
            .await
            .map(drop)
    }

    async fn renew_activity_lock(
        &self,
        id: u64,
        lock: LockToken,
        until: Timestamp,
    ) -> Result<(), StoreError> {
        // Leases live in memory (one process owns the file): nothing to write.
        if self.inner.core.leases().renew_activity(id, lock, until) {
            Ok(())
        } else {
            Err(StoreError::LockLost(format!("activity task {id}")))
        }
    }

    async fn complete_activity_in_transaction(
        &self,
        id: u64,
        lock: LockToken,
        run: TransactionalRun,
    ) -> Result<(), StoreError> {
        self.write(WriteOp::Transactional { id, lock, run })
            .await
            .map(drop)
    }

    async fn abandon_activity(
        &self,
        id: u64,
        lock: LockToken,
        retry_at: Timestamp,
    ) -> Result<(), StoreError> {
        self.write(WriteOp::AbandonActivity { id, lock, retry_at })
            .await
            .map(drop)
    }

    async fn record_activity_heartbeat(
        &self,
        id: u64,
        lock: LockToken,
        details: Payload,
        until: Timestamp,
    ) -> Result<(), StoreError> {
        self.write(WriteOp::Heartbeat {
            id,
            lock,
            details,
            until,
        })
        .await
        .map(drop)
    }

    async fn next_wake_time(&self) -> Result<Option<Timestamp>, StoreError> {
        self.blocking(|core| core.next_wake_time(None)).await
    }

    async fn next_wake_time_for(&self, kind: WorkKind) -> Result<Option<Timestamp>, StoreError> {
        self.blocking(move |core| core.next_wake_time(Some(kind)))
            .await
    }

    async fn queue_depths(&self, now: Timestamp) -> Result<Option<QueueDepths>, StoreError> {
        self.blocking(move |core| core.queue_depths(now))
            .await
            .map(Some)
    }

    async fn read_instance(
        &self,
        instance_id: &InstanceId,
    ) -> Result<Option<InstanceRecord>, StoreError> {
        // One key in one read transaction, as short as a lease fetch: read inline (a
        // client waiting for a completion reads this right after the commit's signal).
        self.inline(|core| core.read_instance(instance_id.as_str()))
    }

    async fn read_history(
        &self,
        instance_id: &InstanceId,
    ) -> Result<Vec<HistoryEvent>, StoreError> {
        let id = instance_id.as_str().to_owned();
        self.blocking(move |core| core.read_history(&id)).await
    }

    async fn query_instances(&self, query: &InstanceQuery) -> Result<InstancePage, StoreError> {
        let query = query.clone();
        self.blocking(move |core| core.query(&query)).await
    }

    async fn count_instances(
        &self,
        query: &InstanceQuery,
    ) -> Result<Vec<(RuntimeStatus, u64)>, StoreError> {
        let query = query.clone();
        self.blocking(move |core| core.count(&query)).await
    }

    async fn purge_finished_instance(
        &self,
        instance_id: &InstanceId,
        finished_by: Timestamp,
    ) -> Result<bool, StoreError> {
        match self
            .write(WriteOp::PurgeFinished(instance_id.clone(), finished_by))
            .await?
        {
            Outcome::Purged(removed) => Ok(removed),
            _ => Err(Outcome::unexpected()),
        }
    }

    async fn purge_instance(&self, instance_id: &InstanceId) -> Result<bool, StoreError> {
        match self.write(WriteOp::Purge(instance_id.clone())).await? {
            Outcome::Purged(removed) => Ok(removed),
            _ => Err(Outcome::unexpected()),
        }
    }

    fn signals(&self) -> &StoreSignals {
        &self.inner.core.signals
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(name: &str) -> NewInstance {
        let id = InstanceId::new(name).unwrap();
        NewInstance::new(id, "Job", "null".into(), Timestamp::EPOCH)
    }

    /// `name`'s start and a first episode for `create_started` (which fills in the lock).
    fn with_first_episode(name: &str) -> (NewInstance, EpisodeCommit) {
        let new = job(name);
        let mut first = EpisodeCommit::new(
            new.instance_id.clone(),
            LockToken(u64::MAX),
            RuntimeStatus::Running,
            Timestamp::EPOCH,
        );
        first.consumed = vec![new.start_message().id];
        (new, first)
    }

    /// Starts `name` with its first episode in the same write: a step of a chain.
    async fn start(store: &RedbStore, name: &str) {
        let (new, first) = with_first_episode(name);
        let created = store.create_started(new, first).await.unwrap();
        assert!(created.is_some(), "{name} is started");
    }

    /// With the writer idle and commits quick, a chain's steps on the multi-thread runtime
    /// commit on their own thread, one transaction each; while commits are slow on average,
    /// they go to the writer thread (and still commit), until quick ones bring the average
    /// back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sequential_writes_commit_on_the_callers_thread_while_commits_are_quick() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path().join("here.redb")).unwrap();
        let core = Arc::clone(&store.inner.core);
        let here = || core.commits_here.load(Ordering::Relaxed);
        let commits = store.commits();
        // Each write starts from a quick average (an unoptimized build commits slowly).
        for i in 0..5 {
            core.commit_nanos.store(0, Ordering::Relaxed);
            start(&store, &format!("a-{i}")).await;
        }
        assert_eq!(store.commits() - commits, 5);
        assert_eq!(here(), 5);

        for _ in 0..4 {
            core.note_commit_time(Duration::from_millis(100));
        }
        for i in 0..3 {
            core.note_commit_time(Duration::from_millis(100));
            start(&store, &format!("b-{i}")).await;
        }
        assert_eq!(
            here(),
            5,
            "while commits are slow the writer thread commits"
        );
        assert_eq!(store.commits() - commits, 8);

        // The average follows quick commits down: 1/8 of the way per batch.
        let mut quick = 0;
        while !core.commits_here_allowed() {
            core.note_commit_time(Duration::ZERO);
            quick += 1;
        }
        assert!((20..200).contains(&quick), "{quick} quick batches");
        // The writer answered the last write after giving up its turn.
        start(&store, "c").await;
        assert_eq!(here(), 6, "callers commit again");
        let page = store.query_instances(&InstanceQuery::new()).await.unwrap();
        assert_eq!(page.instances.len(), 9);
    }

    /// A step of a chain commits on its caller's thread only when it is the only write under
    /// way; other writes never do, nor does anything on a store built `writer_only`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_alongside_another_goes_to_the_writer() {
        let store = RedbStore::in_memory().unwrap();
        let core = Arc::clone(&store.inner.core);
        let here = || core.commits_here.load(Ordering::Relaxed);
        let quick = || core.commit_nanos.store(0, Ordering::Relaxed);
        // A request queued for the writer (sent by another caller, not yet taken).
        quick();
        core.queued.fetch_add(1, Ordering::SeqCst);
        start(&store, "queued").await;
        core.queued.fetch_sub(1, Ordering::SeqCst);
        assert_eq!(here(), 0, "a write never overtakes one queued before it");
        // Another write under way (being answered, or not yet sent).
        quick();
        core.writing.fetch_add(1, Ordering::SeqCst);
        start(&store, "alongside").await;
        core.writing.fetch_sub(1, Ordering::SeqCst);
        assert_eq!(here(), 0, "concurrent writes go to the group commit");
        quick();
        store.create_instance(job("client")).await.unwrap();
        assert_eq!(
            here(),
            0,
            "a write that is not a step of a chain goes to the writer"
        );
        quick();
        start(&store, "alone").await;
        assert_eq!(here(), 1);
        assert_eq!(store.commits(), 4);

        let writer_only = RedbStore::builder().writer_only(true).in_memory().unwrap();
        start(&writer_only, "w").await;
        assert_eq!(
            writer_only.inner.core.commits_here.load(Ordering::Relaxed),
            0
        );
        assert_eq!(writer_only.commits(), 1);
    }

    /// A chain's steps are the start with its first episode and the commits that take
    /// results handed over in memory.
    #[test]
    fn the_steps_of_a_chain() {
        let id = InstanceId::new("i").unwrap();
        let plain = || {
            EpisodeCommit::new(
                id.clone(),
                LockToken(1),
                RuntimeStatus::Running,
                Timestamp::EPOCH,
            )
        };
        let commit = |commit: EpisodeCommit, eager| WriteOp::Commit {
            commit: Box::new(commit),
            eager,
        };
        let mut handed = plain();
        handed.completed_activities = vec![(7, LockToken(2))];
        let eager = Some((0, Timestamp::EPOCH, Duration::from_secs(1)));
        assert!(commit(handed.clone(), eager).continues_a_chain());
        assert!(commit(handed, None).continues_a_chain());
        assert!(
            !commit(plain(), eager).continues_a_chain(),
            "an episode woken by a timer that leases its new task is not a chain's step"
        );
        assert!(WriteOp::CreateStarted(Box::new((job("s"), plain()))).continues_a_chain());
        assert!(
            !commit(plain(), None).continues_a_chain(),
            "woken by a message or timer"
        );
        assert!(!WriteOp::Create(job("c")).continues_a_chain());
        assert!(!WriteOp::Purge(id.clone()).continues_a_chain());
    }

    /// A store whose commit panicked on a caller's thread stops writing: a later write is
    /// answered with an error (not left waiting), on either path, and the store still drops.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_broken_store_answers_writes_with_an_error() {
        let store = RedbStore::in_memory().unwrap();
        start(&store, "before").await;
        store.inner.core.broken.store(true, Ordering::SeqCst);
        let wait = Duration::from_secs(30);
        let (new, first) = with_first_episode("after");
        let chain_step = tokio::time::timeout(wait, store.create_started(new, first)).await;
        let err = chain_step.expect("answered").unwrap_err();
        assert!(err.to_string().contains("writer"), "{err}");
        let other = tokio::time::timeout(wait, store.create_instance(job("other"))).await;
        assert!(other.expect("answered").is_err());
        drop(store);
    }

    /// A current-thread runtime keeps its one thread: every write goes to the writer.
    #[tokio::test]
    async fn a_current_thread_runtime_leaves_commits_to_the_writer() {
        let store = RedbStore::in_memory().unwrap();
        for i in 0..3 {
            start(&store, &format!("c-{i}")).await;
        }
        assert_eq!(store.inner.core.commits_here.load(Ordering::Relaxed), 0);
        assert_eq!(store.commits(), 3);
    }

    /// Writes that arrive while a batch is being committed queue for the writer thread, which
    /// commits them together in one transaction once that batch is done; none of them
    /// commits on its own thread ahead of the queue.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_arriving_during_a_commit_are_committed_together() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path().join("batch.redb")).unwrap();
        let core = Arc::clone(&store.inner.core);
        let before = store.commits();
        // Another thread holds the turn, as the writer does while it commits a batch.
        let (locked, is_locked) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let holder = {
            let core = Arc::clone(&core);
            std::thread::spawn(move || {
                let _turn = core.committing.lock().unwrap();
                locked.send(()).unwrap();
                released.recv().unwrap();
            })
        };
        is_locked.recv().unwrap();
        // Each write sends its request when first polled.
        let names: Vec<_> = (0..16).map(|i| format!("q-{i}")).collect();
        let mut writes: Vec<_> = names.iter().map(|n| Box::pin(start(&store, n))).collect();
        std::future::poll_fn(|cx| {
            for write in &mut writes {
                assert!(write.as_mut().poll(cx).is_pending());
            }
            std::task::Poll::Ready(())
        })
        .await;
        assert_eq!(core.queued.load(Ordering::SeqCst), 16);
        release.send(()).unwrap();
        holder.join().unwrap();
        for write in writes {
            write.await;
        }
        assert_eq!(
            store.commits() - before,
            1,
            "one transaction for the queued writes"
        );
        assert_eq!(core.commits_here.load(Ordering::Relaxed), 0);
        assert_eq!(core.queued.load(Ordering::SeqCst), 0);
        let page = store.query_instances(&InstanceQuery::new()).await.unwrap();
        assert_eq!(page.instances.len(), 16);
    }

    fn write_meta(path: &Path, key: &str, value: u64) {
        let db = Database::create(path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META).unwrap().insert(key, value).unwrap();
        txn.commit().unwrap();
    }

    /// The id bound `meta` holds.
    pub(super) fn meta_next_id(store: &RedbStore) -> u64 {
        let txn = store.inner.core.db.begin_read().unwrap();
        let meta = txn.open_table(META).unwrap();
        meta.get(NEXT_ID_KEY).unwrap().unwrap().value()
    }

    /// The stored bytes of `id`'s record.
    fn stored_record(store: &RedbStore, id: &str) -> Vec<u8> {
        let txn = store.inner.core.db.begin_read().unwrap();
        let table = txn.open_table(INSTANCES).unwrap();
        table.get(id).unwrap().unwrap().value().to_vec()
    }

    /// An episode that only appends events (a step of a sequence) leaves the stored record
    /// as it was, and every read — one instance, a page by id, a page newest first — shows
    /// its time as the last update, before and after the file is opened again; an episode
    /// that changes the record writes it.
    #[tokio::test]
    async fn an_episode_that_only_appends_events_leaves_the_record_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("elide.redb");
        let t0 = Timestamp::from_unix_millis(1_000_000);
        let (t1, t2) = (t0 + Duration::from_secs(1), t0 + Duration::from_secs(2));
        let lease = Duration::from_secs(60);
        let id = InstanceId::new("i").unwrap();
        let episode = |store: RedbStore, at: Timestamp, custom: Option<&'static str>| {
            let id = id.clone();
            async move {
                let item = store
                    .fetch_orchestration_work(at, lease)
                    .await
                    .unwrap()
                    .unwrap();
                let mut c = EpisodeCommit::new(id, item.lock, RuntimeStatus::Running, at);
                c.consumed = item.messages.iter().map(|m| m.id).collect();
                c.new_events = vec![HistoryEvent {
                    index: item.history_len,
                    timestamp: at,
                    event: Event::OrchestratorStarted,
                }];
                c.custom_status = custom.map(Into::into);
                store.commit_episode(c).await.unwrap();
                store
            }
        };
        let raise = |store: RedbStore, at: Timestamp| {
            let id = id.clone();
            async move {
                let go = Event::EventRaised {
                    name: "go".into(),
                    input: "null".into(),
                };
                store
                    .send_message(&id, Message::new(go, None, at))
                    .await
                    .unwrap();
                store
            }
        };
        let updated = |store: RedbStore| {
            let id = id.clone();
            async move {
                let one = store
                    .read_instance(&id)
                    .await
                    .unwrap()
                    .unwrap()
                    .last_updated_at;
                let mut by_id = InstanceQuery::new();
                by_id.include_entities = true;
                let page = store.query_instances(&by_id).await.unwrap();
                let mut newest = by_id.clone();
                newest.newest_first = true;
                let newest = store.query_instances(&newest).await.unwrap();
                let times = [
                    one,
                    page.instances[0].last_updated_at,
                    newest.instances[0].last_updated_at,
                ];
                (store, times)
            }
        };

        let store = RedbStore::open(&path).unwrap();
        store
            .create_instance(NewInstance::new(id.clone(), "Job", "null".into(), t0))
            .await
            .unwrap();
        let store = episode(store, t0, None).await;
        let before = stored_record(&store, "i");
        let store = raise(store, t1).await;
        let store = episode(store, t1, None).await;
        assert_eq!(
            stored_record(&store, "i"),
            before,
            "the record was not written"
        );
        let (store, times) = updated(store).await;
        assert_eq!(times, [t1; 3]);
        drop(store);

        let store = RedbStore::open(&path).unwrap();
        let (store, times) = updated(store).await;
        assert_eq!(times, [t1; 3], "after a reopen too");
        let store = raise(store, t2).await;
        let store = episode(store, t2, Some("\"busy\"")).await;
        assert_ne!(
            stored_record(&store, "i"),
            before,
            "a changed record is written"
        );
        let r = store.read_instance(&id).await.unwrap().unwrap();
        assert_eq!(
            (r.last_updated_at, r.custom_status.as_deref()),
            (t2, Some("\"busy\""))
        );
    }

    /// The id counter is persisted as a bound, a block ahead, so commits whose ids stay
    /// under it leave `meta` alone; after a restart, ids start above every id used before.
    #[tokio::test]
    async fn ids_are_reserved_in_blocks_and_never_reused_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ids.redb");
        let t0 = Timestamp::from_unix_millis(1_000_000);
        let lease = Duration::from_secs(60);
        let (task, bound) = {
            let store = RedbStore::open(&path).unwrap();
            let task = crate::storage::lease_one_activity_task(&store, t0, lease).await;
            let bound = meta_next_id(&store);
            assert!(
                bound > task.id && bound >= ID_BLOCK,
                "bound {bound}, task {}",
                task.id
            );
            // More ids (the result's message), under the bound: `meta` is not written.
            let result = Message::new(
                Event::TaskCompleted {
                    seq: 0,
                    result: "1".into(),
                },
                Some(1),
                t0,
            );
            store
                .complete_activity(task.id, task.lock, result)
                .await
                .unwrap();
            assert!(store.inner.core.leases().next_id > task.id);
            assert_eq!(meta_next_id(&store), bound);
            (task, bound)
        };
        let store = RedbStore::open(&path).unwrap();
        assert_eq!(store.inner.core.leases().next_id, bound);
        store
            .create_instance(NewInstance::new(
                InstanceId::new("b").unwrap(),
                "Job",
                "null".into(),
                t0,
            ))
            .await
            .unwrap();
        let next = store.inner.core.leases().next_id;
        assert!(next > bound && next > task.id);
    }

    /// A commit takes the record and history length its lease read (not read again): after
    /// an abandoned episode, an expired lease taken over by another worker, and a refused
    /// stale commit, every commit still appends at the history's end and keeps the fields it
    /// does not set; a commit that consumes nothing still ends the hold on its messages.
    #[tokio::test]
    #[allow(clippy::too_many_lines, reason = "one instance's episodes, in order")]
    async fn commits_after_leases_see_the_current_record_and_history() {
        let store = RedbStore::in_memory().unwrap();
        let t0 = Timestamp::from_unix_millis(1_000_000);
        let lock_for = Duration::from_secs(60);
        let id = InstanceId::new("i").unwrap();
        let ids = std::slice::from_ref(&id);
        let started = |index: u64, at: Timestamp| HistoryEvent {
            index,
            timestamp: at,
            event: Event::OrchestratorStarted,
        };
        store
            .create_instance(NewInstance::new(id.clone(), "Job", "\"in\"".into(), t0))
            .await
            .unwrap();

        // Episode 1: two events, a custom status.
        let item = store
            .fetch_orchestration_work(t0, lock_for)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(item.history_len, 0);
        let mut c = EpisodeCommit::new(id.clone(), item.lock, RuntimeStatus::Running, t0);
        c.consumed = item.messages.iter().map(|m| m.id).collect();
        c.new_events = vec![started(0, t0), started(1, t0)];
        c.custom_status = Some("\"one\"".into());
        store.commit_episode(c).await.unwrap();

        // Episode 2 is abandoned; its retry holds the instance until t1.
        let item = store
            .fetch_instances_work(ids, t0, lock_for)
            .await
            .unwrap()
            .pop()
            .unwrap();
        assert_eq!(item.history_len, 2);
        let t1 = t0 + Duration::from_secs(1);
        store
            .abandon_episode(&id, item.lock, t1, Some("boom".into()))
            .await
            .unwrap();

        // An event arrives during the hold: it is ready at t1, not before.
        let raised = Event::EventRaised {
            name: "go".into(),
            input: "null".into(),
        };
        store
            .send_message(&id, Message::new(raised, None, t0))
            .await
            .unwrap();
        assert!(
            store
                .fetch_orchestration_work(t0, lock_for)
                .await
                .unwrap()
                .is_none()
        );

        // Episode 3's lease expires and another worker takes the instance over.
        let stale = store
            .fetch_instances_work(ids, t1, lock_for)
            .await
            .unwrap()
            .pop()
            .unwrap();
        let t2 = t1 + lock_for + Duration::from_secs(1);
        let item = store
            .fetch_instances_work(ids, t2, lock_for)
            .await
            .unwrap()
            .pop()
            .unwrap();
        assert_eq!(item.instance.last_error.as_deref(), Some("boom"));
        let mut c = EpisodeCommit::new(id.clone(), item.lock, RuntimeStatus::Running, t2);
        c.new_events = vec![started(2, t2)];
        c.custom_status = Some("\"three\"".into());
        store.commit_episode(c).await.unwrap();
        // The commit consumed nothing but ended the hold: the event is ready from t0 again.
        let item = store
            .fetch_orchestration_work(t0, lock_for)
            .await
            .unwrap()
            .expect("the event is ready once the hold is over");
        assert_eq!(item.messages.len(), 1);
        let mut c = EpisodeCommit::new(id.clone(), item.lock, RuntimeStatus::Running, t2);
        c.consumed = vec![item.messages[0].id];
        c.new_events = vec![started(3, t2)];
        c.custom_status = Some("\"three\"".into());
        store.commit_episode(c).await.unwrap();
        // The stale lease's commit is refused and changes nothing.
        let mut c = EpisodeCommit::new(id.clone(), stale.lock, RuntimeStatus::Completed, t2);
        c.new_events = vec![started(2, t2)];
        assert!(matches!(
            store.commit_episode(c).await,
            Err(StoreError::LockLost(_))
        ));

        // Episode 4 completes.
        let item = store
            .fetch_instances_work(ids, t2, lock_for)
            .await
            .unwrap()
            .pop()
            .unwrap();
        assert_eq!(item.history_len, 4);
        assert_eq!(item.instance.custom_status.as_deref(), Some("\"three\""));
        let mut c = EpisodeCommit::new(id.clone(), item.lock, RuntimeStatus::Completed, t2);
        c.new_events = vec![started(4, t2)];
        c.output = Some("7".into());
        store.commit_episode(c).await.unwrap();

        let history = store.read_history(&id).await.unwrap();
        let indexes: Vec<u64> = history.iter().map(|e| e.index).collect();
        assert_eq!(indexes, [0, 1, 2, 3, 4]);
        assert!(
            store
                .fetch_orchestration_work(t2 + lock_for * 10, lock_for)
                .await
                .unwrap()
                .is_none(),
            "no ready row is left behind"
        );
        let r = store.read_instance(&id).await.unwrap().unwrap();
        assert_eq!(r.status, RuntimeStatus::Completed);
        assert_eq!((r.input.as_str(), r.name.as_str()), ("\"in\"", "Job"));
        assert_eq!(r.output.as_deref(), Some("7"));
        assert_eq!(r.custom_status, None, "episode 4 set no custom status");
        assert_eq!((r.created_at, r.last_updated_at), (t0, t2));
        assert_eq!(r.last_error, None);
    }

    /// A commit that hands out an activity keeps the committed record for the lease that
    /// comes with its result; any other write to the instance in between drops it: a
    /// purged instance cannot be leased, a replaced one is leased as the new execution.
    #[tokio::test]
    async fn a_handed_out_commit_keeps_its_record_until_the_instance_changes() {
        let store = RedbStore::in_memory().unwrap();
        let t0 = Timestamp::from_unix_millis(1_000_000);
        let lock_for = Duration::from_secs(60);
        let kept = |id: &InstanceId| {
            store
                .inline(|core| Ok(core.leases().committed.contains_key(id.as_str())))
                .unwrap()
        };
        // Three instances, each with an episode that hands an activity out.
        let mut ids = Vec::new();
        for name in ["a", "b", "c"] {
            let id = InstanceId::new(name).unwrap();
            store
                .create_instance(NewInstance::new(id.clone(), "Job", "\"in\"".into(), t0))
                .await
                .unwrap();
            let item = store
                .fetch_instances_work(std::slice::from_ref(&id), t0, lock_for)
                .await
                .unwrap()
                .pop()
                .unwrap();
            let mut c = EpisodeCommit::new(id.clone(), item.lock, RuntimeStatus::Running, t0);
            c.consumed = item.messages.iter().map(|m| m.id).collect();
            c.new_events = vec![HistoryEvent {
                index: 0,
                timestamp: t0,
                event: Event::OrchestratorStarted,
            }];
            c.custom_status = Some(format!("\"{name}\""));
            c.activities
                .push(ActivityTask::new(id.clone(), 1, 0, "work", "null".into()));
            store.commit_episode(c).await.unwrap();
            assert!(kept(&id), "{name}: the commit's record is kept");
            ids.push(id);
        }
        let [a, b, c] = &ids[..] else { unreachable!() };

        // a: leased with the kept record, which the lease takes.
        let item = store
            .fetch_instances_work(std::slice::from_ref(a), t0, lock_for)
            .await
            .unwrap()
            .pop()
            .unwrap();
        assert!(!kept(a));
        assert_eq!(item.history_len, 1);
        assert_eq!(item.instance.custom_status.as_deref(), Some("\"a\""));
        assert_eq!(item.instance.status, RuntimeStatus::Running);

        // b: purged while its activity runs: nothing to lease.
        assert!(store.purge_instance(b).await.unwrap());
        assert!(!kept(b));
        assert!(
            store
                .fetch_instances_work(std::slice::from_ref(b), t0, lock_for)
                .await
                .unwrap()
                .is_empty()
        );

        // c: replaced while its activity runs: the lease sees the new execution.
        let mut again = NewInstance::new(c.clone(), "Job", "\"new\"".into(), t0);
        again.reuse = IdReusePolicy::TerminateRunning;
        store.create_instance(again).await.unwrap();
        assert!(!kept(c));
        let item = store
            .fetch_instances_work(std::slice::from_ref(c), t0, lock_for)
            .await
            .unwrap()
            .pop()
            .unwrap();
        assert_eq!(item.history_len, 0);
        assert_eq!(item.instance.input, "\"new\"");
        assert_eq!(item.instance.execution, 2);
        assert_eq!(item.instance.custom_status, None);
    }

    /// An activity result handed off in memory is committed with the episode that consumes
    /// it: the task leaves the queue in that commit, and only when its lease is still held.
    #[tokio::test]
    async fn handed_off_results_remove_their_task_with_the_episode() {
        let store = RedbStore::in_memory().unwrap();
        let t0 = Timestamp::from_unix_millis(1_000_000);
        let lock_for = Duration::from_secs(60);
        let id = InstanceId::new("i").unwrap();
        store
            .create_instance(NewInstance::new(id.clone(), "Job", "null".into(), t0))
            .await
            .unwrap();
        // First episode schedules two activities.
        let item = store
            .fetch_orchestration_work(t0, lock_for)
            .await
            .unwrap()
            .unwrap();
        let mut c = EpisodeCommit::new(id.clone(), item.lock, RuntimeStatus::Running, t0);
        c.consumed = item.messages.iter().map(|m| m.id).collect();
        for seq in 0..2 {
            c.activities
                .push(ActivityTask::new(id.clone(), 1, seq, "work", "null".into()));
        }
        store.commit_episode(c).await.unwrap();
        let tasks = store.fetch_activity_work(t0, lock_for, 10).await.unwrap();
        assert_eq!(tasks.len(), 2);
        assert!(store.supports_activity_handoff());

        // The results come from memory: the instance is leased without inbox messages, and
        // the commit names the tasks; the second with a stale lease, so it stays queued.
        let items = store
            .fetch_instances_work(std::slice::from_ref(&id), t0, lock_for)
            .await
            .unwrap();
        assert_eq!(items.len(), 1);
        assert!(items[0].messages.is_empty());
        // Leased now: a second lease is refused.
        assert!(
            store
                .fetch_instances_work(std::slice::from_ref(&id), t0, lock_for)
                .await
                .unwrap()
                .is_empty()
        );
        let mut c = EpisodeCommit::new(id.clone(), items[0].lock, RuntimeStatus::Running, t0);
        c.completed_activities = vec![
            (tasks[0].id, tasks[0].lock),
            (tasks[1].id, LockToken(tasks[1].lock.0 + 1000)),
        ];
        store.commit_episode(c).await.unwrap();

        // Past every lease, only the task whose result was not committed comes back.
        let later = t0 + Duration::from_secs(3600);
        let again = store
            .fetch_activity_work(later, lock_for, 10)
            .await
            .unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].id, tasks[1].id);
        assert_eq!(
            store.next_wake_time_for(WorkKind::Activity).await.unwrap(),
            Some(later + lock_for),
            "the re-leased task's expiry is the next activity wake-up"
        );
    }

    #[test]
    fn unknown_format_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        drop(RedbStore::open(&path).unwrap());
        write_meta(&path, FORMAT_VERSION_KEY, 99);
        let err = RedbStore::open(&path).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
        assert!(
            msg.contains("format version 99") && msg.contains("version 2"),
            "{msg}"
        );
    }

    #[test]
    fn foreign_redb_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.redb");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            let def: TableDefinition<'_, u64, u64> = TableDefinition::new("something_else");
            txn.open_table(def).unwrap().insert(1, 2).unwrap();
            txn.commit().unwrap();
        }
        let msg = RedbStore::open(&path).unwrap_err().to_string();
        assert!(msg.contains("not a durable store"), "{msg}");
    }

    #[test]
    fn fresh_file_gets_the_current_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        drop(RedbStore::open(&path).unwrap());
        let db = Database::open(&path).unwrap();
        let txn = db.begin_read().unwrap();
        let meta = txn.open_table(META).unwrap();
        assert_eq!(
            meta.get(FORMAT_VERSION_KEY).unwrap().map(|v| v.value()),
            Some(FORMAT_VERSION)
        );
    }

    /// A file written before instance holds (it has no `holds` table) opens, and an
    /// abandoned episode then holds its instance back without moving its messages.
    #[tokio::test]
    async fn a_file_without_the_holds_table_opens_and_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let t0 = Timestamp::from_unix_millis(1_000_000);
        let id = InstanceId::new("i").unwrap();
        {
            let store = RedbStore::open(&path).unwrap();
            let new = NewInstance::new(id.clone(), "Job", "null".into(), t0);
            store.create_instance(new).await.unwrap();
        }
        {
            let db = Database::open(&path).unwrap();
            let txn = db.begin_write().unwrap();
            assert!(txn.delete_table(HOLDS).unwrap(), "a store has the table");
            txn.commit().unwrap();
        }
        let store = RedbStore::open(&path).unwrap();
        let lock_for = Duration::from_secs(60);
        let item = store
            .fetch_orchestration_work(t0, lock_for)
            .await
            .unwrap()
            .expect("the instance is ready");
        let retry_at = t0 + Duration::from_secs(5);
        store
            .abandon_episode(&id, item.lock, retry_at, None)
            .await
            .unwrap();
        let held = t0 + Duration::from_millis(4_999);
        assert!(
            store
                .fetch_orchestration_work(held, lock_for)
                .await
                .unwrap()
                .is_none()
        );
        let again = store
            .fetch_orchestration_work(retry_at, lock_for)
            .await
            .unwrap()
            .expect("ready at retry_at");
        assert_eq!(again.messages, item.messages, "the messages did not move");
    }

    type Damage = Box<dyn Fn(&mut Vec<u8>)>;

    /// Damaged files give errors (or, where redb does not notice, a working store), never a
    /// panic in the caller.
    #[tokio::test]
    async fn damaged_files_never_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        {
            let store = RedbStore::open(&path).unwrap();
            for i in 0..50 {
                let id = InstanceId::new(format!("i-{i}")).unwrap();
                store
                    .create_instance(NewInstance::new(
                        id,
                        "Job",
                        "\"x\"".repeat(50),
                        Timestamp::EPOCH,
                    ))
                    .await
                    .unwrap();
            }
        }
        let pristine = std::fs::read(&path).unwrap();
        let len = pristine.len();
        let damages: Vec<Damage> = vec![
            Box::new(|b| b.truncate(b.len() / 2)),
            Box::new(|b| b.truncate(100)),
            Box::new(|b| b[..512].fill(0xFF)),
            Box::new(move |b| b[len / 3..len / 3 + 8192].fill(0x5A)),
            Box::new(move |b| b[len - 8192..].fill(0)),
        ];
        for (i, damage) in damages.iter().enumerate() {
            let mut bytes = pristine.clone();
            damage(&mut bytes);
            std::fs::write(&path, &bytes).unwrap();
            let opened = RedbStore::open(&path);
            eprintln!("damage {i}: {:?}", opened.as_ref().map(|_| "opened"));
            match opened {
                Err(StoreError::Backend(e)) => assert!(!e.message().is_empty()),
                Err(other) => panic!("damage {i}: unexpected error {other:?}"),
                Ok(store) => {
                    // Whatever redb makes of it, every call answers.
                    let _ = store.query_instances(&InstanceQuery::new()).await;
                    let _ = store
                        .create_instance(NewInstance::new(
                            InstanceId::new("new").unwrap(),
                            "Job",
                            "null".into(),
                            Timestamp::EPOCH,
                        ))
                        .await;
                    let _ = store
                        .fetch_orchestration_work(Timestamp::EPOCH, Duration::from_secs(1))
                        .await;
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "redb_txn_tests.rs"]
mod txn_tests;

#[cfg(test)]
#[path = "redb_owners_tests.rs"]
mod owners_tests;
