//! The IO shell: dispatchers that lease work from the store, run episodes through the replay
//! executor and activities through the registry, and commit the results.
//!
//! This is the only module that spawns, awaits the store or sleeps (through [`Clock`]).

mod activity;
pub(crate) mod cascade;
mod entity;
mod episode;
mod handoff;
mod kept;
mod lease;
pub(crate) mod lifecycle;
mod local;
mod meters;
#[cfg(feature = "metrics")]
mod queue_depth;
mod retention;
pub(crate) mod rewind;
#[cfg(any(feature = "redb", feature = "postgres"))]
mod transactional;

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinHandle;

use crate::client::Client;
use crate::clock::{Clock, SystemClock};
use crate::context::Limits;
use crate::error::{BuildError, WorkerError};
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

/// The default [`WorkerOptions::local_activity_budget`] (capped at half the lease).
const DEFAULT_LOCAL_ACTIVITY_BUDGET: Duration = Duration::from_secs(5);

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
    /// Longest time one episode spends running local activities
    /// ([`OrchestrationContext::call_local`](crate::OrchestrationContext::call_local),
    /// `#[activity(local)]`) before it enqueues the remaining ones as ordinary activity
    /// tasks and commits. A local step still running at the budget's end is stopped and
    /// enqueued too (it runs again as a task: at-least-once). Must be shorter than the
    /// orchestration lease the store grants ([`orchestration_lock`](Self::orchestration_lock),
    /// or the store's own: [`Store::orchestration_lease`]), which the episode holds
    /// meanwhile; whatever the budget, local runs stop half a lease after the episode
    /// started, so its commit still finds the lease held. `None` (the default): 5 s, or
    /// half the lease when that is shorter.
    pub local_activity_budget: Option<Duration>,
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
    /// How often the worker reads the store's queue depths into the queue gauges
    /// (`durable_queue_ready_orchestrations`, `durable_queue_ready_activities`,
    /// `durable_queue_timers_due`), on the worker's clock; at least 100 ms. `None`: never.
    /// Default 5 s.
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub queue_depth_interval: Option<Duration>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            max_concurrent_orchestrations: 32,
            max_concurrent_activities: 64,
            cache_capacity: 10_000,
            orchestration_lock: Duration::from_secs(60),
            activity_lock: Duration::from_secs(300),
            local_activity_budget: None,
            limits: Limits::default(),
            version: None,
            version_match: VersionMatch::Any,
            on_version_mismatch: VersionMismatchAction::LeavePending,
            max_stuck_backoff: Duration::from_secs(60),
            retention: None,
            #[cfg(feature = "metrics")]
            queue_depth_interval: Some(Duration::from_secs(5)),
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
    /// The base options ([`options`](WorkerBuilder::options)).
    options: WorkerOptions,
    /// The option setters called so far, applied over the base at `start()` in the order
    /// they were called: a later `options(..)` replaces the base, never a setter's value.
    setters: OptionSetters,
    states: crate::state::StateSet,
    #[cfg(feature = "opentelemetry")]
    tracer: crate::otel::WorkerTracer,
    /// Token sources and client of the built-in HTTP activity.
    #[cfg(feature = "http-calls")]
    http: crate::http_call::HttpCallConfig,
}

/// One option setter of a [`WorkerBuilder`].
type OptionSetter = Box<dyn FnOnce(&mut WorkerOptions) + Send>;

/// The option setters a [`WorkerBuilder`] was given.
#[derive(Default)]
struct OptionSetters(Vec<OptionSetter>);

impl std::fmt::Debug for OptionSetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} option setter(s)", self.0.len())
    }
}

impl WorkerBuilder {
    /// The store to run on.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_core::RedbStore;
    ///
    /// #[orchestrator]
    /// async fn greet(_ctx: OrchestrationContext, name: String) -> Result<String, OrchestrationError> {
    ///     Ok(format!("Hello {name}"))
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// # let path = dir.path().join("durable.redb");
    /// // A file that survives restarts (`MemoryStore::new()` for tests).
    /// let worker = Worker::builder().store(RedbStore::open(&path)?).register(greet).start()?;
    /// let run = worker.client().start(greet, "Ada".into()).await?;
    /// assert_eq!(run.wait().await?, "Hello Ada");
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn store(mut self, store: impl Store) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// The store to run on, shared.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use durable_core::prelude::*;
    /// use durable_core::Store;
    ///
    /// #[orchestrator]
    /// async fn greet(_ctx: OrchestrationContext, name: String) -> Result<String, OrchestrationError> {
    ///     Ok(format!("Hello {name}"))
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store: Arc<dyn Store> = Arc::new(MemoryStore::new()); // chosen at run time, say
    /// let worker = Worker::builder().store_arc(Arc::clone(&store)).register(greet).start()?;
    /// let run = worker.client().start(greet, "Ada".into()).await?;
    /// run.wait().await?;
    /// assert!(store.read_instance(run.id()).await?.is_some()); // the same store
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn store_arc(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Registers anything the macros generate (activity or orchestrator markers).
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[activity]
    /// async fn price(item: String) -> Result<u32, ActivityError> {
    ///     Ok(if item == "lamp" { 40 } else { 10 })
    /// }
    ///
    /// #[orchestrator]
    /// async fn quote(ctx: OrchestrationContext, item: String) -> Result<u32, OrchestrationError> {
    ///     Ok(ctx.call(price, item).await?)
    /// }
    ///
    /// #[entity]
    /// #[derive(Default, Serialize, Deserialize)]
    /// struct Counter { value: i64 }
    /// # #[entity]
    /// # impl Counter {
    /// #     fn add(&mut self, amount: i64) { self.value += amount; }
    /// # }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = Worker::builder()
    ///     .store(MemoryStore::new())
    ///     .register(price) // an #[activity]
    ///     .register(quote) // an #[orchestrator]
    ///     .register(Counter::entity()) // an #[entity]
    ///     .start()?;
    /// let run = worker.client().start(quote, "lamp".into()).await?;
    /// assert_eq!(run.wait().await?, 40);
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn register(mut self, r: impl Registration) -> Self {
        self.registry.register(r);
        self
    }

    /// Registers an activity implemented by hand.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    ///
    /// #[derive(Clone, Copy)]
    /// struct Shout;
    /// impl Activity for Shout {
    ///     const NAME: &'static str = "shout";
    ///     type Input = String;
    ///     type Output = String;
    ///     type Error = ActivityError;
    ///     async fn run(&self, _ctx: ActivityContext, text: String) -> Result<String, ActivityError> {
    ///         Ok(text.to_uppercase())
    ///     }
    /// }
    ///
    /// #[orchestrator]
    /// async fn announce(ctx: OrchestrationContext, text: String) -> Result<String, OrchestrationError> {
    ///     Ok(ctx.call(Shout, text).await?)
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = Worker::builder().store(MemoryStore::new()).activity(Shout).register(announce).start()?;
    /// let run = worker.client().start(announce, "doors open".into()).await?;
    /// assert_eq!(run.wait().await?, "DOORS OPEN");
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn activity<A: Activity>(self, activity: A) -> Self {
        self.register(ActivityRegistration(activity))
    }

    /// Registers an orchestrator implemented by hand.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    ///
    /// #[derive(Clone, Copy)]
    /// struct Double;
    /// impl Orchestrator for Double {
    ///     const NAME: &'static str = "double";
    ///     type Input = i64;
    ///     type Output = i64;
    ///     type Error = OrchestrationError;
    ///     async fn run(_ctx: OrchestrationContext, x: i64) -> Result<i64, OrchestrationError> {
    ///         Ok(x * 2)
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = Worker::builder().store(MemoryStore::new()).orchestrator(Double).start()?;
    /// let run = worker.client().start(Double, 21).await?;
    /// assert_eq!(run.wait().await?, 42);
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn orchestrator<O: Orchestrator>(self, orchestrator: O) -> Self {
        self.register(OrchestratorRegistration(orchestrator))
    }

    /// Registers an entity type (`#[entity]` types can also use `.register(Type::entity())`).
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[entity]
    /// #[derive(Default, Serialize, Deserialize)]
    /// struct Counter { value: i64 }
    ///
    /// #[entity]
    /// impl Counter {
    ///     fn add(&mut self, amount: i64) { self.value += amount; }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = Worker::builder().store(MemoryStore::new()).entity::<Counter>().start()?;
    /// let client = worker.client();
    /// assert_eq!(client.knows_entity("counter"), Some(true));
    /// client.entity::<Counter>("page-views").add(1).await?;
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
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
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_core::States;
    ///
    /// #[derive(Clone)]
    /// struct Greeting(&'static str);
    /// #[derive(Clone)]
    /// struct Punctuation(char);
    ///
    /// #[activity]
    /// async fn greet(State(g): State<Greeting>, State(p): State<Punctuation>, name: String) -> Result<String, ActivityError> {
    ///     Ok(format!("{} {name}{}", g.0, p.0))
    /// }
    ///
    /// #[orchestrator]
    /// async fn welcome(ctx: OrchestrationContext, name: String) -> Result<String, OrchestrationError> {
    ///     Ok(ctx.call(greet, name).await?)
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut shared = States::new(); // built once, shared by several workers
    /// shared.insert(Greeting("Hello"));
    /// shared.insert(Punctuation('!'));
    /// let worker = Worker::builder()
    ///     .store(MemoryStore::new())
    ///     .states(shared)
    ///     .register(greet)
    ///     .register(welcome)
    ///     .start()?;
    /// let run = worker.client().start(welcome, "Ada".into()).await?;
    /// assert_eq!(run.wait().await?, "Hello Ada!");
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn states(mut self, states: crate::States) -> Self {
        self.states.extend(&states);
        self
    }

    /// Builds execution spans with `provider` (see [`crate::otel`]; feature
    /// `opentelemetry`). Without it they go to OpenTelemetry's global tracer provider.
    /// Give the provider that the `tracing-opentelemetry` layer's tracer comes from, built
    /// with [`otel::IdGenerator`](crate::otel::IdGenerator).
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use opentelemetry_sdk::trace::SdkTracerProvider;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let provider = SdkTracerProvider::builder()
    ///     .with_id_generator(durable_core::otel::IdGenerator::default())
    ///     .build();
    /// let worker = Worker::builder()
    ///     .store(MemoryStore::new())
    ///     .tracer_provider(provider.clone())
    ///     .start()?;
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "opentelemetry")]
    #[cfg_attr(docsrs, doc(cfg(feature = "opentelemetry")))]
    pub fn tracer_provider<P>(mut self, provider: P) -> Self
    where
        P: opentelemetry::trace::TracerProvider,
        P::Tracer: Send + Sync + 'static,
        <P::Tracer as opentelemetry::trace::Tracer>::Span: Send + Sync + 'static,
    {
        self.tracer = crate::otel::WorkerTracer::from_provider(&provider);
        self
    }

    /// Uses a complete registry (replacing registrations made so far).
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_core::Registry;
    ///
    /// #[orchestrator]
    /// async fn greet(_ctx: OrchestrationContext, name: String) -> Result<String, OrchestrationError> {
    ///     Ok(format!("Hello {name}"))
    /// }
    ///
    /// /// Everything this service runs, in one place (shared by its workers and its tests).
    /// fn registry() -> Registry {
    ///     let mut registry = Registry::new();
    ///     registry.register(greet);
    ///     registry
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = Worker::builder().store(MemoryStore::new()).registry(registry()).start()?;
    /// let run = worker.client().start(greet, "Ada".into()).await?;
    /// assert_eq!(run.wait().await?, "Hello Ada");
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = registry;
        self
    }

    /// The clock (default: [`SystemClock`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use durable_core::prelude::*;
    /// use durable_core::Clock;
    /// use durable_testing::ManualClock;
    ///
    /// #[orchestrator]
    /// async fn reminder(ctx: OrchestrationContext, _input: ()) -> Result<Timestamp, OrchestrationError> {
    ///     ctx.sleep(Duration::from_secs(3600)).await;
    ///     Ok(ctx.now())
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let clock = ManualClock::default(); // time moves only when told to
    /// let t0 = clock.now();
    /// let worker = Worker::builder().store(MemoryStore::new()).clock(clock.as_clock()).register(reminder).start()?;
    /// let run = worker.client().start(reminder, ()).await?;
    /// run.wait_until(|r| r.status == RuntimeStatus::Running, Duration::from_secs(30)).await?;
    /// clock.advance(Duration::from_secs(3600)); // an hour passes at once
    /// assert_eq!(run.wait().await?, t0 + Duration::from_secs(3600));
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Uses `options` as the base for every option.
    ///
    /// The individual setters ([`cache_capacity`](Self::cache_capacity),
    /// [`concurrency`](Self::concurrency), [`activity_lock`](Self::activity_lock), …) win over
    /// it whatever the order they are called in: `options(..)` replaces the base, and the
    /// setters are applied on top of it at [`start`](Self::start). Called twice, the second
    /// base replaces the first.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_core::WorkerOptions;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut tuned = WorkerOptions::default();
    /// tuned.max_concurrent_activities = 8;
    /// let worker = Worker::builder()
    ///     .store(MemoryStore::new())
    ///     .cache_capacity(0) // kept: setters win over `options`
    ///     .options(tuned)
    ///     .start()?;
    /// assert_eq!(worker.options().cache_capacity, 0);
    /// assert_eq!(worker.options().max_concurrent_activities, 8);
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn options(mut self, options: WorkerOptions) -> Self {
        self.options = options;
        self
    }

    /// Records a setter, applied over the base options at `start()`.
    fn set(mut self, setter: impl FnOnce(&mut WorkerOptions) + Send + 'static) -> Self {
        self.setters.0.push(Box::new(setter));
        self
    }

    /// Sets the live-orchestration cache size (0 disables caching: every episode replays).
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = Worker::builder()
    ///     .store(MemoryStore::new())
    ///     .cache_capacity(1_000) // a smaller memory footprint: more replays
    ///     .start()?;
    /// assert_eq!(worker.options().cache_capacity, 1_000);
    /// assert_eq!(worker.cached_instances(), 0);
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn cache_capacity(self, n: usize) -> Self {
        self.set(move |o| o.cache_capacity = n)
    }

    /// Sets concurrency limits (each at least 1).
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = Worker::builder()
    ///     .store(MemoryStore::new())
    ///     .concurrency(8, 0) // 8 episodes at once; activities: at least 1
    ///     .start()?;
    /// assert_eq!(worker.options().max_concurrent_orchestrations, 8);
    /// assert_eq!(worker.options().max_concurrent_activities, 1);
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn concurrency(self, orchestrations: usize, activities: usize) -> Self {
        self.max_concurrent_orchestrations(orchestrations)
            .max_concurrent_activities(activities)
    }

    /// Sets how many episodes run at once (at least 1; default 32).
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = Worker::builder()
    ///     .store(MemoryStore::new())
    ///     .max_concurrent_orchestrations(4)
    ///     .start()?;
    /// assert_eq!(worker.options().max_concurrent_orchestrations, 4);
    /// assert_eq!(worker.options().max_concurrent_activities, 64); // untouched: the default
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn max_concurrent_orchestrations(self, n: usize) -> Self {
        self.set(move |o| o.max_concurrent_orchestrations = n.max(1))
    }

    /// Sets how many activities run at once (at least 1; default 64).
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// // A rate-limited downstream API: at most 2 calls at a time from this worker.
    /// let worker = Worker::builder()
    ///     .store(MemoryStore::new())
    ///     .max_concurrent_activities(2)
    ///     .start()?;
    /// assert_eq!(worker.options().max_concurrent_activities, 2);
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn max_concurrent_activities(self, n: usize) -> Self {
        self.set(move |o| o.max_concurrent_activities = n.max(1))
    }

    /// Sets the lease on an instance during an episode (default 60 s).
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
    ///     .orchestration_lock(Duration::from_secs(20)) // a crashed worker's episode moves on sooner
    ///     .start()?;
    /// assert_eq!(worker.options().orchestration_lock, Duration::from_secs(20));
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn orchestration_lock(self, lease: Duration) -> Self {
        self.set(move |o| o.orchestration_lock = lease)
    }

    /// Sets the lease on an activity task (default 5 min; see
    /// [`WorkerOptions::activity_lock`]).
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
    ///     .activity_lock(Duration::from_secs(60)) // re-run a lost worker's activities after a minute
    ///     .start()?;
    /// assert_eq!(worker.options().activity_lock, Duration::from_secs(60));
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn activity_lock(self, lease: Duration) -> Self {
        self.set(move |o| o.activity_lock = lease)
    }

    /// Sets the time budget of local activities per episode (default 5 s, or half the
    /// orchestration lease when that is shorter; see
    /// [`WorkerOptions::local_activity_budget`]). [`start`](Self::start) fails with
    /// [`BuildError::LocalActivityBudget`] unless it is shorter than the orchestration
    /// lease.
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
    ///     .local_activity_budget(Duration::from_secs(2))
    ///     .start()?;
    /// assert_eq!(worker.options().local_activity_budget, Some(Duration::from_secs(2)));
    /// # worker.shutdown().await;
    ///
    /// let too_long = Worker::builder()
    ///     .store(MemoryStore::new())
    ///     .orchestration_lock(Duration::from_secs(10))
    ///     .local_activity_budget(Duration::from_secs(10))
    ///     .start();
    /// assert!(matches!(too_long, Err(durable_core::BuildError::LocalActivityBudget { .. })));
    /// # Ok(()) }
    /// ```
    pub fn local_activity_budget(self, budget: Duration) -> Self {
        self.set(move |o| o.local_activity_budget = Some(budget))
    }

    /// Sets payload and action limits.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_core::Limits;
    ///
    /// #[orchestrator]
    /// async fn echo(_ctx: OrchestrationContext, text: String) -> Result<String, OrchestrationError> {
    ///     Ok(text)
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut limits = Limits::default();
    /// limits.max_payload_bytes = 64 * 1024;
    /// let worker = Worker::builder().store(MemoryStore::new()).register(echo).limits(limits).start()?;
    /// let big = worker.client().start(echo, "x".repeat(100_000)).await;
    /// assert!(matches!(big, Err(ClientError::PayloadTooLarge { limit: 65_536, .. })));
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn limits(self, limits: Limits) -> Self {
        self.set(move |o| o.limits = limits)
    }

    /// Sets the worker's version and how it treats other versions.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_core::{VersionMatch, VersionMismatchAction};
    ///
    /// #[orchestrator]
    /// async fn checkout(_ctx: OrchestrationContext, _input: ()) -> Result<(), OrchestrationError> {
    ///     Ok(())
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = Worker::builder()
    ///     .store(MemoryStore::new())
    ///     .register(checkout)
    ///     .version("2", VersionMatch::Strict, VersionMismatchAction::Fail)
    ///     .start()?;
    /// let client = worker.client();
    /// let current = client.start(checkout, ()).await?; // stamped "2"
    /// current.wait().await?;
    /// assert_eq!(current.status().await?.version.as_deref(), Some("2"));
    /// let old = client.start_with(checkout, (), StartOptions::new().version("1")).await?;
    /// assert!(matches!(old.wait().await, Err(ClientError::Failed(_)))); // not this worker's version
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn version(
        self,
        version: impl Into<String>,
        matching: VersionMatch,
        on_mismatch: VersionMismatchAction,
    ) -> Self {
        let version = version.into();
        self.set(move |o| o.version = Some(version))
            .version_match(matching)
            .on_version_mismatch(on_mismatch)
    }

    /// Sets which instance versions this worker runs (default [`VersionMatch::Any`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_core::VersionMatch;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// // During a rolling upgrade, the new workers also take the older versions' instances.
    /// let worker = Worker::builder()
    ///     .store(MemoryStore::new())
    ///     .version_match(VersionMatch::CurrentOrOlder)
    ///     .start()?;
    /// assert_eq!(worker.options().version_match, VersionMatch::CurrentOrOlder);
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn version_match(self, matching: VersionMatch) -> Self {
        self.set(move |o| o.version_match = matching)
    }

    /// Sets what happens to instances of a version this worker may not run (default
    /// [`VersionMismatchAction::LeavePending`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_core::VersionMismatchAction;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = Worker::builder()
    ///     .store(MemoryStore::new())
    ///     .on_version_mismatch(VersionMismatchAction::Fail) // instead of leaving them pending
    ///     .start()?;
    /// assert_eq!(worker.options().on_version_mismatch, VersionMismatchAction::Fail);
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn on_version_mismatch(self, action: VersionMismatchAction) -> Self {
        self.set(move |o| o.on_version_mismatch = action)
    }

    /// Sets the longest back-off before a stuck episode (non-determinism, unknown name) is
    /// retried (default 60 s).
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
    ///     .max_stuck_backoff(Duration::from_secs(10)) // retry a stuck episode at least every 10 s
    ///     .start()?;
    /// assert_eq!(worker.options().max_stuck_backoff, Duration::from_secs(10));
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn max_stuck_backoff(self, backoff: Duration) -> Self {
        self.set(move |o| o.max_stuck_backoff = backoff)
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
    pub fn retention(self, keep_for: Duration) -> Self {
        self.set(move |o| o.retention = Some(keep_for))
    }

    /// Sets how often the worker reads the store's queue depths into the queue gauges
    /// ([`WorkerOptions::queue_depth_interval`]; default 5 s, `None` turns them off). With
    /// several workers on one store, one reading is enough: turn it off on the others.
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
    ///     .queue_depth_interval(Some(Duration::from_secs(15)))
    ///     .start()?;
    /// assert_eq!(worker.options().queue_depth_interval, Some(Duration::from_secs(15)));
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn queue_depth_interval(self, every: Option<Duration>) -> Self {
        self.set(move |o| o.queue_depth_interval = every)
    }

    /// Registers `source` under `name` for durable HTTP calls
    /// ([`OrchestrationContext::call_http`](crate::OrchestrationContext::call_http)): a
    /// request naming it in [`token_source`](crate::http_call::DurableHttpRequest::token_source)
    /// or [`secret_header`](crate::http_call::DurableHttpRequest::secret_header) gets its
    /// value when this worker sends it. History and the activity queue hold the name only.
    /// A second source under one name replaces the first.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = Worker::builder()
    ///     .store(MemoryStore::new())
    ///     .http_token_source("billing", || async {
    ///         // Fetch or refresh a token here (a cached OAuth client, a vault lookup).
    ///         Ok::<_, ActivityError>("eyJhbGciOi...".to_owned())
    ///     })
    ///     .start()?;
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "http-calls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "http-calls")))]
    pub fn http_token_source(
        mut self,
        name: impl Into<String>,
        source: impl crate::http_call::HttpTokenSource,
    ) -> Self {
        self.http
            .sources
            .insert(name.into(), std::sync::Arc::new(source));
        self
    }

    /// The HTTP client durable HTTP calls go through (proxies, extra root certificates,
    /// connection pool settings). By default the worker builds one on first use from
    /// [`http_call::client_builder`](crate::http_call::client_builder): HTTP/1, rustls
    /// trusting the platform's roots, redirects not followed by the client. Start from that
    /// builder (see its note on TLS providers). Per-request timeouts and body limits come
    /// from each [`DurableHttpRequest`](crate::http_call::DurableHttpRequest) either way.
    ///
    /// **Keep redirects off in the client** (`client_builder` does):
    /// durable follows them itself (at most 10), dropping the bearer token and secret
    /// headers when a redirect leaves the request's origin. A client that follows redirects
    /// on its own hands secret headers to whatever host a redirect names.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = durable_core::http_call::client_builder()?
    ///     .connect_timeout(std::time::Duration::from_secs(3))
    ///     .build()?;
    /// let worker = Worker::builder().store(MemoryStore::new()).http_client(client).start()?;
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "http-calls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "http-calls")))]
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http.client = Some(client);
        self
    }

    /// The built-in HTTP activity (`BuiltIn::HttpActivity`) as [`start`](Self::start)
    /// would register it now — with the token sources and client given so far — as a
    /// type-erased handler.
    ///
    /// `start` keeps an activity already registered under
    /// [`HTTP_ACTIVITY_NAME`](crate::http_call::HTTP_ACTIVITY_NAME) instead of adding the
    /// built-in one; a test harness or middleware registering its own (to record requests,
    /// or answer some without the network) forwards the rest to this handler.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use durable_core::prelude::*;
    /// use durable_core::Registry;
    /// use durable_core::http_call::HTTP_ACTIVITY_NAME;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let builder = Worker::builder().store(MemoryStore::new());
    /// // Counts the requests, then sends them as the built-in activity does.
    /// let real = builder.http_activity();
    /// let sent = Arc::new(AtomicUsize::new(0));
    /// let counter = Arc::clone(&sent);
    /// let mut registry = Registry::new();
    /// registry.add_activity_raw(HTTP_ACTIVITY_NAME, move |ctx, input| {
    ///     counter.fetch_add(1, Ordering::SeqCst);
    ///     real(ctx, input)
    /// });
    /// let worker = builder.registry(registry).start()?;
    /// # assert_eq!(sent.load(Ordering::SeqCst), 0);
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "http-calls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "http-calls")))]
    #[must_use]
    pub fn http_activity(&self) -> crate::registry::ActivityHandler {
        crate::registry::handler_of(self.http.clone().into_activity())
    }

    /// The base options with the setters applied (taken from the builder).
    fn resolved_options(&mut self) -> WorkerOptions {
        let mut options = std::mem::take(&mut self.options);
        for setter in std::mem::take(&mut self.setters.0) {
            setter(&mut options);
        }
        options
    }

    /// Adds the engine's own activities to the registry, then checks it.
    fn finish_registry(&mut self) -> Result<(), BuildError> {
        // The built-in HTTP activity, unless an activity of that name is already there (a
        // test double, say).
        #[cfg(feature = "http-calls")]
        if !self
            .registry
            .has_activity(crate::http_call::HTTP_ACTIVITY_NAME)
        {
            let activity = std::mem::take(&mut self.http).into_activity();
            self.registry.add_activity(activity);
        }
        self.registry.validate()
    }

    /// Starts the dispatchers on the current Tokio runtime.
    ///
    /// Keep the returned [`Worker`]: dropping it stops the dispatchers.
    ///
    /// # Errors
    /// [`BuildError::LocalActivityBudget`] when the local activity budget is not shorter
    /// than the orchestration lease; [`BuildError::MissingStore`] without a store; [`BuildError::DuplicateName`] when two
    /// registrations share a name; [`BuildError::MissingState`] when an activity takes a
    /// state type the builder was not given; [`BuildError::DuplicateState`] when one type was
    /// given twice; [`BuildError::NoRuntime`] outside a Tokio runtime.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_core::BuildError;
    ///
    /// #[orchestrator]
    /// async fn greet(_ctx: OrchestrationContext, name: String) -> Result<String, OrchestrationError> {
    ///     Ok(format!("Hello {name}"))
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = Worker::builder().store(MemoryStore::new()).register(greet).start()?;
    /// let run = worker.client().start(greet, "Ada".into()).await?;
    /// assert_eq!(run.wait().await?, "Hello Ada");
    /// worker.shutdown().await;
    ///
    /// // Mistakes are caught at start:
    /// let no_store = Worker::builder().register(greet).start();
    /// assert!(matches!(no_store, Err(BuildError::MissingStore)));
    /// # Ok(()) }
    /// ```
    pub fn start(mut self) -> Result<Worker, BuildError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| BuildError::NoRuntime)?;
        let store = self.store.take().ok_or(BuildError::MissingStore)?;
        let mut options = self.resolved_options();
        self.finish_registry()?;
        options.max_concurrent_orchestrations = options.max_concurrent_orchestrations.max(1);
        options.max_concurrent_activities = options.max_concurrent_activities.max(1);
        // The lease the store grants, which may be its own rather than the one asked for.
        let orchestration_lease = store.orchestration_lease(options.orchestration_lock);
        if let Some(budget) = options.local_activity_budget
            && budget >= orchestration_lease
        {
            return Err(BuildError::LocalActivityBudget {
                budget,
                lease: orchestration_lease,
            });
        }
        let states = self.states.finish(|s| self.registry.missing_state(s))?;
        let clock = self.clock.unwrap_or_else(|| Arc::new(SystemClock));
        let registry = Arc::new(self.registry);
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let cache = NonZeroUsize::new(options.cache_capacity).map(lru::LruCache::new);
        let client = Client::from_parts(
            Arc::clone(&store),
            Some(Arc::clone(&registry)),
            Arc::clone(&clock),
            options.limits.clone(),
            options.version.clone(),
        );
        let activity_lease = store.activity_lease(options.activity_lock);
        meters::describe();
        let inner = Arc::new(Inner {
            orch_slots: Arc::new(Semaphore::new(options.max_concurrent_orchestrations)),
            activity_slots: Arc::new(Semaphore::new(options.max_concurrent_activities)),
            store,
            registry,
            states,
            clock,
            options,
            cache: Mutex::new(cache),
            stuck: Mutex::new(HashMap::new()),
            handoff: Mutex::new(handoff::Handoffs::default()),
            handoff_ready: Notify::new(),
            eager_reserved: Arc::default(),
            created: Mutex::new(Created::default()),
            kept: Mutex::default(),
            activity_lease,
            orchestration_lease,
            activity_leases: Arc::new(lease::ActivityLeases::default()),
            shutdown: shutdown_rx,
            aborted: std::sync::atomic::AtomicBool::new(false),
            died: watch::channel(None).0,
            #[cfg(feature = "opentelemetry")]
            tracer: self.tracer,
        });
        let first_episode: std::sync::Weak<dyn crate::client::FirstEpisode> =
            Arc::downgrade(&inner) as std::sync::Weak<Inner>;
        let client = client.with_first_episode(first_episode);
        let mut tasks = vec![
            supervise(
                &runtime,
                &inner,
                "orchestration dispatcher",
                episode::dispatch(Arc::clone(&inner)),
            ),
            supervise(
                &runtime,
                &inner,
                "activity dispatcher",
                activity::dispatch(Arc::clone(&inner)),
            ),
        ];
        if let Some(keep_for) = inner.options.retention {
            tasks.push(supervise(
                &runtime,
                &inner,
                "retention sweeper",
                retention::run(Arc::clone(&inner), keep_for),
            ));
        }
        #[cfg(feature = "metrics")]
        if let Some(every) = inner.options.queue_depth_interval {
            tasks.push(supervise(
                &runtime,
                &inner,
                "queue gauges",
                queue_depth::run(Arc::clone(&inner), every),
            ));
        }
        let lease_keeper = Some(supervise(
            &runtime,
            &inner,
            "lease keeper",
            lease::keep(Arc::clone(&inner)),
        ));
        Ok(Worker {
            inner,
            client,
            tasks,
            lease_keeper,
            shutdown: shutdown_tx,
        })
    }
}

/// What a dispatcher does with nothing to do: waits until `woken` (its store signal) fires,
/// the store's next due time for `kind` work comes, or the worker shuts down.
///
/// Work due already at `fetched_at`, when the dispatcher's fetch came back short, is work
/// another transaction holds (a store that skips locked rows, as `PostgresStore` does): rather
/// than fetch again at once, and again until that transaction ends, the dispatcher waits
/// for a signal or [`SKIPPED_WORK_PAUSE`].
async fn idle(
    inner: &Inner,
    kind: crate::storage::WorkKind,
    fetched_at: crate::ids::Timestamp,
    woken: impl Future<Output = ()>,
    shutdown: &mut watch::Receiver<bool>,
) {
    let next = inner.store.next_wake_time_for(kind).await.ok().flatten();
    let sleep = async {
        match next {
            // Held by another transaction: wait for it in real time, whatever the worker's
            // clock (a virtual clock would not move for it).
            #[allow(
                clippy::disallowed_methods,
                reason = "a pause for another database transaction, not a durable time"
            )]
            Some(t) if t <= fetched_at => tokio::time::sleep(SKIPPED_WORK_PAUSE).await,
            Some(t) => inner.clock.sleep_until(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = woken => {}
        () = sleep => {}
        _ = shutdown.changed() => {}
    }
}

/// How long a dispatcher waits (unless signalled) before fetching again when work that was
/// due was not fetched: another transaction held it.
const SKIPPED_WORK_PAUSE: Duration = Duration::from_millis(5);

/// Spawns one of the worker's long-running tasks on `runtime`, recording in
/// [`Inner::died`] a panic or a return while the worker is not shutting down.
fn supervise(
    runtime: &tokio::runtime::Handle,
    inner: &Arc<Inner>,
    dispatcher: &'static str,
    task: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<()> {
    let inner = Arc::clone(inner);
    runtime.spawn(async move {
        let outcome = crate::entity::CatchUnwind(Box::pin(task)).await;
        let stopping = inner.is_shutting_down()
            || inner.aborted.load(std::sync::atomic::Ordering::SeqCst);
        let error = match outcome {
            Err(panic) => WorkerError::DispatcherPanicked {
                dispatcher,
                message: crate::error::FailureDetails::from_panic(panic.as_ref()).message,
            },
            Ok(()) if stopping => return,
            Ok(()) => WorkerError::DispatcherStopped { dispatcher },
        };
        tracing::error!(error = %error, "worker dispatcher died; the worker no longer does that work");
        inner.died.send_if_modified(|died| {
            let first = died.is_none();
            if first {
                *died = Some(error);
            }
            first
        });
    })
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
    /// Woken when an instance has handed-off results to deliver, or when one is queued in
    /// `created`.
    pub(crate) handoff_ready: Notify,
    /// Instances this worker created leased to itself at their start, their first episodes
    /// (which run local activities) waiting for the dispatcher.
    pub(crate) created: Mutex<Created>,
    /// Instance leases kept by eager commits, for the episodes that take their tasks'
    /// results.
    pub(crate) kept: Mutex<kept::KeptLeases>,
    /// The lease the store grants on activity tasks.
    pub(crate) activity_lease: Duration,
    /// The lease the store grants on an instance for an episode
    /// ([`Store::orchestration_lease`]).
    pub(crate) orchestration_lease: Duration,
    /// The activity leases held, renewed by the lease keeper.
    pub(crate) activity_leases: Arc<lease::ActivityLeases>,
    pub(crate) orch_slots: Arc<Semaphore>,
    pub(crate) activity_slots: Arc<Semaphore>,
    /// Activity slots promised to tasks leased by their episodes' commits (eager dispatch)
    /// that have not taken theirs yet: a commit asks for such a lease only while more slots
    /// are free than promised, and the dispatcher fetches for the rest.
    pub(crate) eager_reserved: Arc<std::sync::atomic::AtomicUsize>,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Set by [`Worker::abort`]: nothing of this worker may touch the store any more (its
    /// aborted tasks may still be polled once before they are dropped).
    pub(crate) aborted: std::sync::atomic::AtomicBool,
    /// The first dispatcher that died (panicked, or returned while not shutting down).
    pub(crate) died: watch::Sender<Option<WorkerError>>,
    /// Builds execution spans.
    #[cfg(feature = "opentelemetry")]
    pub(crate) tracer: crate::otel::WorkerTracer,
}

/// Instances a worker created leased to itself at their start (`episode::start_leased`),
/// waiting for its dispatcher to spawn their first episodes.
#[derive(Default)]
pub(crate) struct Created {
    /// Each with the time its lease began.
    pub(crate) items:
        std::collections::VecDeque<(crate::storage::OrchestrationWorkItem, crate::ids::Timestamp)>,
    /// The dispatcher stopped: whoever creates one now gives its lease back.
    pub(crate) closed: bool,
}

impl Inner {
    pub(crate) fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// The time one episode may spend on local activities.
    pub(crate) fn local_activity_budget(&self) -> Duration {
        self.options
            .local_activity_budget
            .unwrap_or_else(|| DEFAULT_LOCAL_ACTIVITY_BUDGET.min(self.orchestration_lease / 2))
    }

    pub(crate) fn kept(&self) -> std::sync::MutexGuard<'_, kept::KeptLeases> {
        self.kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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
/// work finish first, or hand the rest of the program's life to
/// [`Worker::run_until`], which also reports a dispatcher that died.
///
/// A worker that is started and not kept stops at once, so an unused `Worker` is a
/// warning (`#[must_use]`):
///
/// ```compile_fail
/// # #![deny(unused_must_use)]
/// # use durable_core::prelude::*;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// Worker::builder().store(MemoryStore::new()).start()?; // warning: unused `Worker`
/// # Ok(()) }
/// ```
///
/// ```
/// # #![deny(unused_must_use)]
/// # use durable_core::prelude::*;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let worker = Worker::builder().store(MemoryStore::new()).start()?;
/// # worker.shutdown().await;
/// # Ok(()) }
/// ```
#[must_use = "a worker stops its dispatchers when dropped: keep it, and end it with `shutdown()` or `run_until(..)`"]
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

    /// The options the worker runs with: the builder's base options with its setters
    /// applied.
    pub fn options(&self) -> &WorkerOptions {
        &self.inner.options
    }

    /// Resolves when the worker stops working on its own: one of its dispatchers (the
    /// orchestration or activity dispatcher, the lease keeper, the retention sweeper, the
    /// queue gauges) panicked or returned while the worker was not shutting down. Pending for
    /// as long as all of them run. The worker does not restart a dead dispatcher; shut it
    /// down (see [`WorkerError`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = Worker::builder().store(MemoryStore::new()).start()?;
    /// tokio::select! {
    ///     died = worker.closed() => eprintln!("worker died: {died}"),
    ///     () = tokio::task::yield_now() => {} // the application's own work
    /// }
    /// worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub async fn closed(&self) -> WorkerError {
        let mut died = self.inner.died.subscribe();
        loop {
            if let Some(e) = died.borrow_and_update().clone() {
                return e;
            }
            if died.changed().await.is_err() {
                // The sender lives in `inner`, which this worker holds: not reached.
                return std::future::pending().await;
            }
        }
    }

    /// Runs until `shutdown` completes (a Ctrl-C future, a cancellation token, a channel),
    /// then shuts down gracefully ([`shutdown`](Self::shutdown)) and returns `Ok(())`.
    ///
    /// If a dispatcher dies first (see [`closed`](Self::closed)), the rest of the worker is
    /// shut down gracefully too and the error says what died, so a process supervisor can
    /// restart the process instead of running on with a worker that no longer works.
    ///
    /// # Errors
    /// [`WorkerError`] when a dispatcher panicked or stopped on its own.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = Worker::builder().store(MemoryStore::new()).start()?;
    /// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    /// # stop.send(()).unwrap();
    /// // In a server: `worker.run_until(tokio::signal::ctrl_c()).await?`.
    /// worker.run_until(stopped).await?;
    /// # Ok(()) }
    /// ```
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = impl Sized>,
    ) -> Result<(), WorkerError> {
        let died = tokio::select! {
            _ = shutdown => None,
            e = self.closed() => Some(e),
        };
        let inner = Arc::clone(&self.inner);
        self.shutdown().await;
        // A dispatcher that died while the rest shut down is reported as well.
        match died.or_else(|| inner.died.borrow().clone()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
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
        meters::worker_stopped();
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
