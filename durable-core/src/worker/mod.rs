//! The IO shell: dispatchers that lease work from the store, run episodes through the replay
//! executor and activities through the registry, and commit the results.
//!
//! This is the only module that spawns, awaits the store or sleeps (through [`Clock`]).

mod activity;
pub(crate) mod cascade;
mod entity;
mod episode;
mod handoff;
mod lease;
mod retention;
pub(crate) mod rewind;

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinHandle;

use crate::client::Client;
use crate::clock::{Clock, SystemClock};
use crate::context::Limits;
use crate::error::BuildError;
use crate::ids::InstanceId;
use crate::registry::{
    Activity, ActivityRegistration, Orchestrator, OrchestratorRegistration, Registration, Registry,
};
use crate::replay::Replayer;
use crate::storage::Store;

/// How a worker treats instances stamped with another version than its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum VersionMatch {
    /// Run every instance regardless of version.
    #[default]
    Any,
    /// Run only instances of exactly the worker's version.
    Strict,
    /// Run instances of the worker's version or older.
    CurrentOrOlder,
}

/// What a worker does with an instance whose version it may not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum VersionMismatchAction {
    /// Leave it pending (another worker may run it); the status shows why.
    #[default]
    LeavePending,
    /// Fail it.
    Fail,
}

/// Tuning knobs of a [`Worker`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerOptions {
    /// Episodes run at once. Default 32.
    pub max_concurrent_orchestrations: usize,
    /// Activities run at once. Default 64.
    pub max_concurrent_activities: usize,
    /// Live orchestrations kept in memory between episodes. Default 10,000.
    pub cache_capacity: usize,
    /// Lease on an instance during an episode. Default 60 s.
    pub orchestration_lock: Duration,
    /// Lease on an activity task, renewed every half lease while the activity runs and,
    /// when its result is handed to its orchestration in memory, until that result is
    /// committed. A store may grant a lease of its own instead
    /// ([`Store::activity_lease`]). Default 5 min.
    pub activity_lock: Duration,
    /// Payload and action limits.
    pub limits: Limits,
    /// Version stamped on new instances started through this worker's client.
    pub version: Option<String>,
    /// Which instance versions this worker runs.
    pub version_match: VersionMatch,
    /// What happens to instances it may not run.
    pub on_version_mismatch: VersionMismatchAction,
    /// Longest back-off before a stuck episode (non-determinism, unknown name) is retried.
    pub max_stuck_backoff: Duration,
    /// Purge orchestrations this long after they finished (completed, failed or
    /// terminated), history included. Default `None`: keep everything.
    pub retention: Option<Duration>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            max_concurrent_orchestrations: 32,
            max_concurrent_activities: 64,
            cache_capacity: 10_000,
            orchestration_lock: Duration::from_secs(60),
            activity_lock: Duration::from_secs(300),
            limits: Limits::default(),
            version: None,
            version_match: VersionMatch::Any,
            on_version_mismatch: VersionMismatchAction::LeavePending,
            max_stuck_backoff: Duration::from_secs(60),
            retention: None,
        }
    }
}

/// Builds a [`Worker`]: store, registrations, clock and options.
///
/// # Examples
///
/// ```
/// use durable_core::prelude::*;
///
/// # #[derive(Clone, Copy)] struct Double;
/// # impl Orchestrator for Double {
/// #     const NAME: &'static str = "double";
/// #     type Input = i64; type Output = i64; type Error = OrchestrationError;
/// #     async fn run(_ctx: OrchestrationContext, x: i64) -> Result<i64, OrchestrationError> { Ok(x * 2) }
/// # }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let worker = Worker::builder()
///     .store(MemoryStore::new())
///     .orchestrator(Double)
///     .start()?;
/// let client = worker.client();
/// let run = client.start(Double, 21).await?;
/// assert_eq!(run.wait().await?, 42);
/// worker.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Debug, Default)]
pub struct WorkerBuilder {
    store: Option<Arc<dyn Store>>,
    registry: Registry,
    clock: Option<Arc<dyn Clock>>,
    options: WorkerOptions,
    states: crate::state::StateSet,
}

impl WorkerBuilder {
    /// The store to run on.
    pub fn store(mut self, store: impl Store) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// The store to run on, shared.
    pub fn store_arc(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Registers anything the macros generate (activity or orchestrator markers).
    pub fn register(mut self, r: impl Registration) -> Self {
        self.registry.register(r);
        self
    }

    /// Registers an activity implemented by hand.
    pub fn activity<A: Activity>(self, activity: A) -> Self {
        self.register(ActivityRegistration(activity))
    }

    /// Registers an orchestrator implemented by hand.
    pub fn orchestrator<O: Orchestrator>(self, orchestrator: O) -> Self {
        self.register(OrchestratorRegistration(orchestrator))
    }

    /// Registers an entity type (`#[entity]` types can also use `.register(Type::entity())`).
    pub fn entity<E: crate::entity::Entity>(mut self) -> Self {
        self.registry.add_entity::<E>();
        self
    }

    /// Shares `value` with every activity that takes a [`State<T>`](crate::State) parameter
    /// of its type (a connection pool, an HTTP client, configuration): each run gets a clone,
    /// so keep `T` cheap to clone. One value per type: a second value of the same type makes
    /// [`start`](Self::start) fail with [`BuildError::DuplicateState`] (wrap each in a type of
    /// its own). Orchestrations never see state.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    ///
    /// #[derive(Clone)]
    /// struct Greeting(String);
    ///
    /// #[activity]
    /// async fn greet(State(greeting): State<Greeting>, name: String) -> Result<String, ActivityError> {
    ///     Ok(format!("{} {name}!", greeting.0))
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// // Without the state, the worker does not start:
    /// let err = Worker::builder().store(MemoryStore::new()).register(greet).start().unwrap_err();
    /// assert!(matches!(err, durable_core::BuildError::MissingState { .. }));
    ///
    /// let worker = Worker::builder()
    ///     .store(MemoryStore::new())
    ///     .state(Greeting("Hello".into()))
    ///     .register(greet)
    ///     .start()?;
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn state<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.states.insert(value);
        self
    }

    /// Shares every value of `states` with the activities, as [`state`](Self::state) does
    /// one at a time.
    pub fn states(mut self, states: crate::States) -> Self {
        self.states.extend(&states);
        self
    }

    /// Uses a complete registry (replacing registrations made so far).
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = registry;
        self
    }

    /// The clock (default: [`SystemClock`]).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Replaces all options.
    pub fn options(mut self, options: WorkerOptions) -> Self {
        self.options = options;
        self
    }

    /// Sets the live-orchestration cache size (0 disables caching: every episode replays).
    pub fn cache_capacity(mut self, n: usize) -> Self {
        self.options.cache_capacity = n;
        self
    }

    /// Sets concurrency limits.
    pub fn concurrency(mut self, orchestrations: usize, activities: usize) -> Self {
        self.options.max_concurrent_orchestrations = orchestrations.max(1);
        self.options.max_concurrent_activities = activities.max(1);
        self
    }

    /// Sets payload and action limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.options.limits = limits;
        self
    }

    /// Sets the worker's version and how it treats other versions.
    pub fn version(
        mut self,
        version: impl Into<String>,
        matching: VersionMatch,
        on_mismatch: VersionMismatchAction,
    ) -> Self {
        self.options.version = Some(version.into());
        self.options.version_match = matching;
        self.options.on_version_mismatch = on_mismatch;
        self
    }

    /// Purges orchestrations `keep_for` after they finished (completed, failed or
    /// terminated), with their history, so the store does not grow forever. The worker
    /// sweeps at start and then every quarter of `keep_for` (at least every hour); with many
    /// workers on one store, each sweeps (purging is idempotent). Entities are not purged.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use durable_core::prelude::*;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = Worker::builder()
    ///     .store(MemoryStore::new())
    ///     .retention(Duration::from_secs(30 * 24 * 3600)) // keep 30 days
    ///     .start()?;
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn retention(mut self, keep_for: Duration) -> Self {
        self.options.retention = Some(keep_for);
        self
    }

    /// Starts the dispatchers on the current tokio runtime.
    ///
    /// # Errors
    /// [`BuildError::MissingStore`] without a store; [`BuildError::DuplicateName`] when two
    /// registrations share a name; [`BuildError::MissingState`] when an activity takes a
    /// state type the builder was not given; [`BuildError::DuplicateState`] when one type was
    /// given twice.
    pub fn start(self) -> Result<Worker, BuildError> {
        let store = self.store.ok_or(BuildError::MissingStore)?;
        self.registry.validate()?;
        let states = self.states.finish(&self.registry)?;
        let clock = self.clock.unwrap_or_else(|| Arc::new(SystemClock));
        let registry = Arc::new(self.registry);
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let cache = NonZeroUsize::new(self.options.cache_capacity).map(lru::LruCache::new);
        let client = Client::from_parts(
            Arc::clone(&store),
            Some(Arc::clone(&registry)),
            Arc::clone(&clock),
            self.options.limits.clone(),
            self.options.version.clone(),
        );
        let activity_lease = store.activity_lease(self.options.activity_lock);
        let inner = Arc::new(Inner {
            orch_slots: Arc::new(Semaphore::new(self.options.max_concurrent_orchestrations)),
            activity_slots: Arc::new(Semaphore::new(self.options.max_concurrent_activities)),
            store,
            registry,
            states,
            clock,
            options: self.options,
            cache: Mutex::new(cache),
            stuck: Mutex::new(HashMap::new()),
            handoff: Mutex::new(handoff::Handoffs::default()),
            handoff_ready: Notify::new(),
            activity_lease,
            activity_leases: Arc::new(lease::ActivityLeases::default()),
            shutdown: shutdown_rx,
            aborted: std::sync::atomic::AtomicBool::new(false),
        });
        let mut tasks = vec![
            tokio::spawn(episode::dispatch(Arc::clone(&inner))),
            tokio::spawn(activity::dispatch(Arc::clone(&inner))),
        ];
        if let Some(keep_for) = inner.options.retention {
            tasks.push(tokio::spawn(retention::run(Arc::clone(&inner), keep_for)));
        }
        let lease_keeper = Some(tokio::spawn(lease::keep(Arc::clone(&inner))));
        Ok(Worker {
            inner,
            client,
            tasks,
            lease_keeper,
            shutdown: shutdown_tx,
        })
    }
}

pub(crate) struct Inner {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) registry: Arc<Registry>,
    /// Handed to every activity run (see [`crate::State`]).
    pub(crate) states: crate::States,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) options: WorkerOptions,
    pub(crate) cache: Mutex<Option<lru::LruCache<InstanceId, Replayer>>>,
    pub(crate) stuck: Mutex<HashMap<InstanceId, u32>>,
    /// Activity results handed to orchestrations in memory.
    pub(crate) handoff: Mutex<handoff::Handoffs>,
    /// Woken when an instance has handed-off results to deliver.
    pub(crate) handoff_ready: Notify,
    /// The lease the store grants on activity tasks.
    pub(crate) activity_lease: Duration,
    /// The activity leases held, renewed by the lease keeper.
    pub(crate) activity_leases: Arc<lease::ActivityLeases>,
    pub(crate) orch_slots: Arc<Semaphore>,
    pub(crate) activity_slots: Arc<Semaphore>,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Set by [`Worker::abort`]: nothing of this worker may touch the store any more (its
    /// aborted tasks may still be polled once before they are dropped).
    pub(crate) aborted: std::sync::atomic::AtomicBool,
}

impl Inner {
    pub(crate) fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    pub(crate) fn handoffs(&self) -> std::sync::MutexGuard<'_, handoff::Handoffs> {
        self.handoff
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A running worker: dispatchers for orchestration episodes, activities and timers.
///
/// Dropping a worker aborts its dispatchers; call [`Worker::shutdown`] to let in-flight
/// work finish first.
pub struct Worker {
    inner: Arc<Inner>,
    client: Client,
    tasks: Vec<JoinHandle<()>>,
    /// Renews activity leases until the last result is written at shutdown.
    lease_keeper: Option<JoinHandle<()>>,
    shutdown: watch::Sender<bool>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("registry", &self.inner.registry)
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// A builder.
    pub fn builder() -> WorkerBuilder {
        WorkerBuilder::default()
    }

    /// A client on the same store, knowing this worker's registrations (so starting an
    /// unknown orchestrator is rejected at once).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Number of live orchestrations in the cache.
    pub fn cached_instances(&self) -> usize {
        self.inner
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map_or(0, lru::LruCache::len)
    }

    /// Replay work counters summed over cached instances, for tests and benchmarks.
    pub fn cached_stats(&self, instance_id: &InstanceId) -> Option<crate::replay::ReplayStats> {
        self.inner
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_mut()
            .and_then(|c| c.peek(instance_id).map(Replayer::stats))
    }

    /// Activity results that finished in this worker and wait in memory for an episode of
    /// their orchestration to take them (see [`Store::supports_activity_handoff`]); their
    /// tasks stay leased, and the leases renewed, until the results are committed. For tests
    /// and monitoring.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = Worker::builder().store(MemoryStore::new()).start()?;
    /// assert_eq!(worker.waiting_activity_results(), 0);
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn waiting_activity_results(&self) -> usize {
        self.inner.handoffs().waiting()
    }

    /// Stops taking new work, waits for in-flight episodes and activities to finish, then
    /// stops the dispatchers.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        let orch = self.inner.options.max_concurrent_orchestrations as u32;
        let act = self.inner.options.max_concurrent_activities as u32;
        let _ = self.inner.orch_slots.acquire_many(orch).await;
        let _ = self.inner.activity_slots.acquire_many(act).await;
        // Results still held in memory are written through, so none runs again (their
        // leases are renewed until then).
        let rest = self.inner.handoffs().take_all();
        handoff::write_through(&self.inner, rest).await;
        if let Some(keeper) = self.lease_keeper.take() {
            keeper.abort();
            // Gone (with its hold on the store) when this returns.
            let _ = keeper.await;
        }
    }

    /// Stops everything at once without waiting or releasing leases — as if the process
    /// crashed. Leased work becomes available again when its lease expires.
    pub fn abort(mut self) {
        self.inner
            .aborted
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for t in self.tasks.drain(..) {
            t.abort();
        }
        if let Some(keeper) = self.lease_keeper.take() {
            keeper.abort();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks.iter().chain(&self.lease_keeper) {
            t.abort();
        }
    }
}
