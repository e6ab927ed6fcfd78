//! [`TestEnv`]: the real worker on the in-memory store and a [`ManualClock`], with typed
//! mocks, virtual time, inspection, replay checks, crash injection and seeded simulation.

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use durable_core::client::output_of;
use durable_core::registry::ActivityHandler;
use durable_core::registry::{ActivityRegistration, OrchestratorRegistration};
use durable_core::{
    Activity, BuildError, Client, ClientError, InstanceHandle, InstanceId, InstanceQuery,
    InstanceRecord, MemoryStore, Orchestrator, Registration, Registry, RuntimeStatus, StartOptions,
    States, Store, StoreError, Timestamp, Worker, WorkerBuilder, WorkerOptions,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::clock::ManualClock;
use crate::history::History;
#[cfg(feature = "http-calls")]
use crate::http::{HttpCall, HttpScript, MockHttp};
use crate::mock::{ActivityCall, Script, switchboard, typed_mock};
use crate::replay_check::{ReplayCheckError, export_history, replay_check};
use crate::sim::{SimConfig, SimStats};
use crate::store::{CrashPlan, HarnessStore, Shared, lock};

type MockSpec = Box<dyn FnOnce(&Arc<Shared>) -> ActivityHandler + Send>;

/// A change to the worker builder, applied to every worker the env starts (restarts too).
type WorkerHook = Arc<dyn Fn(WorkerBuilder) -> WorkerBuilder + Send + Sync>;

/// Longest wall-clock time the harness waits for the engine to go idle before it reports a
/// hang (a guard against bugs, never a timing assertion).
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Most jumps to the next timer one [`TestEnv::wait`] makes before it reports a hang.
const MAX_WAIT_STEPS: usize = 100_000;

/// Builds a [`TestEnv`]: registrations, mocks, worker options, start time, and the
/// harness's modes (auto-advance, simulation, crash injection).
///
/// # Examples
///
/// ```
/// use durable_core::prelude::*;
/// use durable_testing::TestEnv;
///
/// #[activity]
/// async fn greet(name: String) -> Result<String, ActivityError> {
///     Ok(format!("Hello {name}!"))
/// }
///
/// #[orchestrator]
/// async fn hello(ctx: OrchestrationContext, name: String) -> Result<String, OrchestrationError> {
///     Ok(ctx.call(greet, name).await?)
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let env = TestEnv::builder()
///     .register(hello)
///     .mock(greet, |name: String| Ok(format!("Hi {name}")))
///     .start()
///     .unwrap();
/// let run = env.start(hello, "Ada".into()).await.unwrap();
/// assert_eq!(env.wait(&run).await.unwrap(), "Hi Ada");
/// # }
/// ```
pub struct TestEnvBuilder {
    registry: Registry,
    mocks: Vec<(String, MockSpec)>,
    states: States,
    /// State types given twice.
    states_twice: Vec<&'static str>,
    options: WorkerOptions,
    clock: Option<ManualClock>,
    store: Option<MemoryStore>,
    auto_advance: bool,
    sim: Option<SimConfig>,
    crash_plan: CrashPlan,
    idle_timeout: Duration,
    worker_hooks: Vec<WorkerHook>,
}

impl fmt::Debug for TestEnvBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestEnvBuilder")
            .field("registry", &self.registry)
            .field(
                "mocks",
                &self.mocks.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("states", &self.states)
            .field("options", &self.options)
            .field("auto_advance", &self.auto_advance)
            .field("sim", &self.sim)
            .field("crash_plan", &self.crash_plan)
            .finish_non_exhaustive()
    }
}

impl Default for TestEnvBuilder {
    fn default() -> Self {
        Self {
            registry: Registry::new(),
            mocks: Vec::new(),
            states: States::new(),
            states_twice: Vec::new(),
            options: WorkerOptions::default(),
            clock: None,
            store: None,
            auto_advance: false,
            sim: None,
            crash_plan: CrashPlan::Never,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            worker_hooks: Vec::new(),
        }
    }
}

impl TestEnvBuilder {
    /// Registers an activity or orchestrator marker (what `#[activity]` and `#[orchestrator]`
    /// generate), or anything else implementing [`Registration`].
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_testing::TestEnv;
    ///
    /// #[activity]
    /// async fn ping(_x: ()) -> Result<(), ActivityError> { Ok(()) }
    ///
    /// let builder = TestEnv::builder().register(ping);
    /// # let _ = builder;
    /// ```
    pub fn register(mut self, registration: impl Registration) -> Self {
        self.registry.register(registration);
        self
    }

    /// Registers an activity implemented by hand.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_testing::TestEnv;
    ///
    /// #[derive(Clone, Copy)]
    /// struct Ping;
    /// impl Activity for Ping {
    ///     const NAME: &'static str = "ping";
    ///     type Input = ();
    ///     type Output = ();
    ///     type Error = ActivityError;
    ///     async fn run(&self, _ctx: ActivityContext, _x: ()) -> Result<(), ActivityError> { Ok(()) }
    /// }
    ///
    /// let builder = TestEnv::builder().activity(Ping);
    /// # let _ = builder;
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
    /// use durable_testing::TestEnv;
    ///
    /// #[derive(Clone, Copy)]
    /// struct Noop;
    /// impl Orchestrator for Noop {
    ///     const NAME: &'static str = "noop";
    ///     type Input = ();
    ///     type Output = ();
    ///     type Error = OrchestrationError;
    ///     async fn run(_ctx: OrchestrationContext, _x: ()) -> Result<(), OrchestrationError> { Ok(()) }
    /// }
    ///
    /// let builder = TestEnv::builder().orchestrator(Noop);
    /// # let _ = builder;
    /// ```
    pub fn orchestrator<O: Orchestrator>(self, orchestrator: O) -> Self {
        self.register(OrchestratorRegistration(orchestrator))
    }

    /// Registers an HTTP token source on the worker (feature `http-calls`), as
    /// [`WorkerBuilder::http_token_source`] does: durable HTTP calls
    /// ([`call_http`](durable_core::OrchestrationContext::call_http)) run for real in the
    /// harness — the request goes out, its poll waits and retry back-offs run on the
    /// virtual clock, and time never moves while a request is in flight.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_testing::TestEnv;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let env = TestEnv::builder()
    ///     .http_token_source("api", || async { Ok::<_, ActivityError>("test-token".to_owned()) })
    ///     .start()
    ///     .unwrap();
    /// # let _ = env;
    /// # }
    /// ```
    #[cfg(feature = "http-calls")]
    pub fn http_token_source(
        mut self,
        name: impl Into<String>,
        source: impl durable_core::http_call::HttpTokenSource,
    ) -> Self {
        let name = name.into();
        let source: Arc<dyn durable_core::http_call::HttpTokenSource> = Arc::new(source);
        self.worker_hooks.push(Arc::new(move |b: WorkerBuilder| {
            let source = Arc::clone(&source);
            b.http_token_source(name.clone(), move || {
                let source = Arc::clone(&source);
                async move { source.token().await }
            })
        }));
        self
    }

    /// Shares `value` with the activities that take a `State<T>` of its type, as
    /// [`WorkerBuilder::state`](durable_core::WorkerBuilder::state) does: the real thing or a
    /// test double of the same type. One value per type; a registered activity whose state
    /// is missing makes [`start`](Self::start) fail with [`BuildError::MissingState`] — unless
    /// it is mocked on this builder (a mock replaces the activity, so it needs no state).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use durable_core::prelude::*;
    /// use durable_testing::TestEnv;
    ///
    /// /// Where sent mail goes: an SMTP client in production, a list in this test.
    /// #[derive(Clone, Default)]
    /// struct Outbox(Arc<Mutex<Vec<String>>>);
    ///
    /// #[activity]
    /// async fn send(State(outbox): State<Outbox>, to: String) -> Result<(), ActivityError> {
    ///     outbox.0.lock().unwrap().push(to);
    ///     Ok(())
    /// }
    ///
    /// #[orchestrator]
    /// async fn welcome(ctx: OrchestrationContext, to: String) -> Result<(), OrchestrationError> {
    ///     Ok(ctx.call(send, to).await?)
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let outbox = Outbox::default();
    /// let env = TestEnv::builder()
    ///     .state(outbox.clone())
    ///     .register(send)
    ///     .register(welcome)
    ///     .start()
    ///     .unwrap();
    /// let run = env.start(welcome, "ada@example.com".into()).await.unwrap();
    /// env.wait(&run).await.unwrap();
    /// assert_eq!(*outbox.0.lock().unwrap(), ["ada@example.com"]);
    ///
    /// // Mocked, the activity needs no state:
    /// let env = TestEnv::builder()
    ///     .register(send)
    ///     .register(welcome)
    ///     .mock(send, |_to: String| Ok(()))
    ///     .start()
    ///     .unwrap();
    /// # let _ = env;
    /// # }
    /// ```
    pub fn state<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        if self.states.get::<T>().is_some() {
            self.states_twice.push(std::any::type_name::<T>());
        }
        self.states.insert(value);
        self
    }

    /// Replaces activity `A` by a closure on its typed input, returning its typed output or
    /// its error. The activity need not be registered, and takes no state when mocked. See
    /// [`TestEnv::mock`] to change a mock while the env runs.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_testing::TestEnv;
    ///
    /// #[activity]
    /// async fn charge(cents: u64) -> Result<String, ActivityError> {
    ///     unimplemented!("calls the payment provider with {cents}")
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let env = TestEnv::builder()
    ///     .mock(charge, |cents: u64| {
    ///         if cents > 10_000 { Err(ActivityError::non_retriable("limit exceeded")) } else { Ok(format!("rcpt-{cents}")) }
    ///     })
    ///     .start()
    ///     .unwrap();
    /// # let _ = env;
    /// # }
    /// ```
    pub fn mock<A, F>(mut self, activity: A, f: F) -> Self
    where
        A: Activity,
        F: FnMut(A::Input) -> Result<A::Output, A::Error> + Send + 'static,
    {
        let _ = activity;
        let handler = typed_mock::<A, F>(f);
        self.mocks
            .push((A::NAME.to_owned(), Box::new(move |_| handler)));
        self
    }

    /// Replaces activity `A` by a [`Script`]: fail N times then succeed, never complete, ….
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_testing::{Script, TestEnv};
    ///
    /// #[activity]
    /// async fn fetch(_url: String) -> Result<String, ActivityError> { Ok(String::new()) }
    ///
    /// let builder = TestEnv::builder()
    ///     .script(fetch, Script::of(fetch).fail(ActivityError::new("503")).ok("<html>".into()));
    /// # let _ = builder;
    /// ```
    pub fn script<A: Activity>(mut self, activity: A, script: Script<A>) -> Self {
        let _ = activity;
        self.mocks.push((
            A::NAME.to_owned(),
            Box::new(move |shared| script.into_handler(shared)),
        ));
        self
    }

    /// Answers durable HTTP calls ([`call_http`](durable_core::OrchestrationContext::call_http),
    /// feature `http-calls`) with `f` instead of the network: `f` sees each request — the
    /// first, every 202 poll and every retry — as history records it, and returns a
    /// response, a failure, or [`MockHttp::pass_through`] to send it for real. Poll waits
    /// and retry back-offs run on the virtual clock; token sources are not asked for
    /// mocked requests. Every request is listed by [`TestEnv::http_requests`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use durable_core::prelude::*;
    /// use durable_core::http_call::DurableHttpResponse;
    /// use durable_testing::{MockHttp, TestEnv};
    ///
    /// #[orchestrator]
    /// async fn rate(ctx: OrchestrationContext, currency: String) -> Result<String, OrchestrationError> {
    ///     let request = DurableHttpRequest::get(format!("https://fx.example.com/{currency}"))
    ///         .retry(RetryPolicy::new(3, Duration::from_secs(10)));
    ///     Ok(ctx.call_http(request).await?.text().into_owned())
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let env = TestEnv::builder()
    ///     .register(rate)
    ///     .mock_http(|request| match request.uri().rsplit('/').next() {
    ///         Some("EUR") => DurableHttpResponse::new(200).with_body("1.08").into(),
    ///         _ => MockHttp::status(404),
    ///     })
    ///     .start()
    ///     .unwrap();
    /// let run = env.start(rate, "EUR".into()).await.unwrap();
    /// assert_eq!(env.wait(&run).await.unwrap(), "1.08");
    /// # }
    /// ```
    #[cfg(feature = "http-calls")]
    pub fn mock_http<F>(mut self, f: F) -> Self
    where
        F: FnMut(&durable_core::http_call::HttpRequestRecord) -> MockHttp + Send + 'static,
    {
        self.mocks.push((
            durable_core::http_call::HTTP_ACTIVITY_NAME.to_owned(),
            Box::new(move |shared| crate::http::mock_handler(shared, Box::new(f))),
        ));
        self
    }

    /// Answers durable HTTP calls from an [`HttpScript`] instead of the network, as
    /// [`mock_http`](Self::mock_http) does with a closure.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_testing::{HttpScript, MockHttp, TestEnv};
    ///
    /// let builder = TestEnv::builder()
    ///     .http_script(HttpScript::new().on("DELETE", "https://api.example.com/carts/9", MockHttp::status(204)));
    /// # let _ = builder;
    /// ```
    #[cfg(feature = "http-calls")]
    pub fn http_script(self, script: HttpScript) -> Self {
        self.mock_http(script.into_fn())
    }

    /// Worker options (concurrency, lease durations, limits, version). The harness keeps the
    /// engine's defaults otherwise.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use durable_core::WorkerOptions;
    /// use durable_testing::TestEnv;
    ///
    /// let mut options = WorkerOptions::default();
    /// options.activity_lock = Duration::from_secs(30);
    /// let builder = TestEnv::builder().options(options);
    /// # let _ = builder;
    /// ```
    pub fn options(mut self, options: WorkerOptions) -> Self {
        self.options = options;
        self
    }

    /// The virtual time the env starts at (default 2024-01-01T00:00:00Z).
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::Timestamp;
    /// use durable_testing::TestEnv;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let env = TestEnv::builder().start_time(Timestamp::from_unix_millis(0)).start().unwrap();
    /// assert_eq!(env.now(), Timestamp::EPOCH);
    /// # }
    /// ```
    pub fn start_time(mut self, at: Timestamp) -> Self {
        self.clock = Some(ManualClock::new(at));
        self
    }

    /// Runs on an existing clock (shared with another env or a test).
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_testing::{ManualClock, TestEnv};
    ///
    /// let builder = TestEnv::builder().clock(ManualClock::default());
    /// # let _ = builder;
    /// ```
    pub fn clock(mut self, clock: ManualClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Runs on an existing in-memory store, for instance the store of an env running the
    /// previous version of the code: stop that env, start this one with the new code on the
    /// same store (and clock), and in-flight instances continue — a deployment, in a test.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_testing::TestEnv;
    ///
    /// #[orchestrator]
    /// async fn wait_go(ctx: OrchestrationContext, _x: ()) -> Result<String, OrchestrationError> {
    ///     Ok(ctx.wait_for_event::<String>("go").await?)
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let v1 = TestEnv::builder().register(wait_go).start().unwrap();
    /// let run = v1.start(wait_go, ()).await.unwrap();
    /// v1.run_until_idle().await;
    /// let (store, clock) = (v1.store().clone(), v1.clock().clone());
    /// drop(v1);
    ///
    /// let v2 = TestEnv::builder().register(wait_go).store(store).clock(clock).start().unwrap();
    /// v2.raise(run.id(), "go", "now").await.unwrap();
    /// assert_eq!(v2.wait(&run).await.unwrap(), "now");
    /// # }
    /// ```
    pub fn store(mut self, store: MemoryStore) -> Self {
        self.store = Some(store);
        self
    }

    /// Like tokio's paused time: whenever the engine is idle, jump the clock to the next
    /// timer. Lets code that awaits a handle's `wait()` pass 72-hour timeouts at once — and
    /// fires a timeout the moment nothing else can happen, so raise events before waiting.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use durable_core::prelude::*;
    /// use durable_testing::TestEnv;
    ///
    /// #[orchestrator]
    /// async fn nap(ctx: OrchestrationContext, hours: u64) -> Result<(), OrchestrationError> {
    ///     ctx.sleep(Duration::from_secs(hours * 3600)).await;
    ///     Ok(())
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let env = TestEnv::builder().register(nap).auto_advance(true).start().unwrap();
    /// let t0 = env.now();
    /// let run = nap::start(env.client(), 72).await.unwrap();
    /// run.wait().await.unwrap();
    /// assert_eq!(env.now(), t0 + Duration::from_secs(72 * 3600));
    /// # }
    /// ```
    pub fn auto_advance(mut self, on: bool) -> Self {
        self.auto_advance = on;
        self
    }

    /// Runs the env as a seeded simulation: activity results are applied in a seeded order,
    /// some are delivered twice, some executions fail (see [`SimConfig`]). The same seed
    /// makes the same choices.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_testing::{SimConfig, TestEnv};
    ///
    /// let builder = TestEnv::builder().simulate(SimConfig::new(17).failure_rate(0.1));
    /// # let _ = builder;
    /// ```
    pub fn simulate(mut self, config: SimConfig) -> Self {
        self.sim = Some(config);
        self
    }

    /// Simulates a crash of the worker right after each of these store commits (1-based;
    /// commits are episode commits and activity completions, counted over the whole run).
    /// The harness then starts a new worker on the same store and moves the clock past the
    /// crashed worker's leases, as a restarted process would find them.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_testing::TestEnv;
    ///
    /// let builder = TestEnv::builder().crash_after_commits([3]);
    /// # let _ = builder;
    /// ```
    pub fn crash_after_commits(mut self, commits: impl IntoIterator<Item = u64>) -> Self {
        self.crash_plan = CrashPlan::After(commits.into_iter().collect());
        self
    }

    /// Simulates a crash after every store commit.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_testing::TestEnv;
    ///
    /// let builder = TestEnv::builder().crash_after_every_commit();
    /// # let _ = builder;
    /// ```
    pub fn crash_after_every_commit(mut self) -> Self {
        self.crash_plan = CrashPlan::Every;
        self
    }

    /// How long (wall-clock) to wait for the engine to go idle before reporting a hang with
    /// what is still running (default 30 s). A guard against bugs; tests never wait for it.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use durable_testing::TestEnv;
    ///
    /// let builder = TestEnv::builder().idle_timeout(Duration::from_secs(5));
    /// # let _ = builder;
    /// ```
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Starts the worker. Call it inside a tokio runtime (either flavour), but not under
    /// tokio's paused time (`start_paused`): the env has its own virtual clock, and the
    /// wall-clock [idle timeout](Self::idle_timeout) would fire at once.
    ///
    /// # Errors
    ///
    /// [`BuildError::DuplicateName`] when two registrations share a name;
    /// [`BuildError::MissingState`] when a registered activity that is not mocked takes a
    /// state type the builder was not given; [`BuildError::DuplicateState`] when one type was
    /// given twice.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let env = durable_testing::TestEnv::builder().start().unwrap();
    /// # let _ = env;
    /// # }
    /// ```
    pub fn start(self) -> Result<TestEnv, BuildError> {
        if let Some(type_name) = self.states_twice.first() {
            return Err(BuildError::DuplicateState { type_name });
        }
        let clock = self.clock.unwrap_or_default();
        let store = self.store.unwrap_or_default();
        let shared = Arc::new(Shared::new(store, clock, self.sim, self.crash_plan));
        let mut registry = self.registry;
        let mut switched: BTreeSet<String> = registry.activity_names().into_iter().collect();
        {
            let mut mocks = lock(&shared.mocks);
            for (name, spec) in self.mocks {
                mocks.insert(name.clone(), spec(&shared));
                switched.insert(name);
            }
        }
        #[cfg(feature = "http-calls")]
        {
            // Durable HTTP requests go through the switchboard too (recorded, mockable);
            // unmocked, they reach the worker's built-in activity.
            let name = durable_core::http_call::HTTP_ACTIVITY_NAME;
            if !registry.has_activity(name) {
                let real = crate::http::real_handler(&shared);
                registry.add_activity_raw(name, move |ctx, input| real(ctx, input));
            }
            switched.insert(name.to_owned());
        }
        for name in &switched {
            let real = registry.activity_handler(name);
            let board = switchboard(Arc::clone(&shared), real);
            // Keeps the real activity's state types: the switchboard runs it when unmocked.
            registry.replace_activity_raw(name, move |ctx, input| board(ctx, input));
        }
        for name in lock(&shared.mocks).keys() {
            // Mocked from the start: the mock replaces the activity and needs no state.
            registry.set_activity_states(name, []);
        }
        let worker = start_worker(
            &shared,
            &registry,
            &self.states,
            &self.options,
            &self.worker_hooks,
            shared.epoch(),
        )?;
        let client = worker.client();
        let inner = Arc::new(EnvInner {
            shared: Arc::clone(&shared),
            worker: Mutex::new(Some(worker)),
            client,
            registry,
            switched,
            states: self.states,
            options: self.options,
            worker_hooks: self.worker_hooks,
            idle_timeout: self.idle_timeout,
            next_id: AtomicU64::new(1),
            restart: tokio::sync::Mutex::new(()),
        });
        tokio::spawn(supervise(Arc::downgrade(&inner), Arc::clone(&shared)));
        if shared.sim.is_some() {
            tokio::spawn(release_held(Arc::clone(&shared)));
        }
        if self.auto_advance {
            tokio::spawn(auto_advance(shared));
        }
        Ok(TestEnv { inner })
    }
}

fn start_worker(
    shared: &Arc<Shared>,
    registry: &Registry,
    states: &States,
    options: &WorkerOptions,
    hooks: &[WorkerHook],
    epoch: u64,
) -> Result<Worker, BuildError> {
    let builder = Worker::builder()
        .store_arc(Arc::new(HarnessStore::new(Arc::clone(shared), epoch)))
        .registry(registry.clone())
        .states(states.clone())
        .clock(shared.clock.as_clock())
        .options(options.clone());
    let builder = hooks.iter().fold(builder, |b, hook| hook(b));
    #[cfg(feature = "http-calls")]
    shared.http_builtin.set(builder.http_activity());
    builder.start()
}

/// Restarts the worker after each simulated crash.
async fn supervise(env: Weak<EnvInner>, shared: Arc<Shared>) {
    loop {
        shared.crash_signal.notified().await;
        let Some(env) = env.upgrade() else { return };
        if shared.is_closed() {
            return;
        }
        env.restart_after_crash().await;
    }
}

/// Jumps the clock to the next timer whenever the engine is idle.
async fn auto_advance(shared: Arc<Shared>) {
    let mut changes = shared.changes();
    loop {
        changes.mark_seen();
        shared.idle().await;
        if shared.is_closed() {
            return;
        }
        match shared.next_event_time().await {
            Some(t) => shared.clock.set(t),
            None => changes.next().await,
        }
    }
}

/// Under simulation: whenever the engine is quiet, applies the next due held result. The
/// only task that releases, so the order is the seed's.
async fn release_held(shared: Arc<Shared>) {
    let mut changes = shared.changes();
    loop {
        changes.mark_seen();
        shared.settle(false).await;
        if shared.is_closed() {
            return;
        }
        match shared.take_due_held() {
            Some(held) => shared.release(held).await,
            None => changes.next().await,
        }
    }
}

/// Runs a scenario on its own task so that its panic can be reported with context.
pub(crate) async fn run_caught<T: Send + 'static>(
    fut: impl Future<Output = T> + Send + 'static,
) -> Result<T, String> {
    match tokio::spawn(fut).await {
        Ok(v) => Ok(v),
        Err(e) if e.is_panic() => {
            let payload = e.into_panic();
            Err(payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic with a non-string payload".to_owned()))
        }
        Err(e) => Err(e.to_string()),
    }
}

struct EnvInner {
    shared: Arc<Shared>,
    worker: Mutex<Option<Worker>>,
    client: Client,
    registry: Registry,
    switched: BTreeSet<String>,
    states: States,
    options: WorkerOptions,
    worker_hooks: Vec<WorkerHook>,
    idle_timeout: Duration,
    next_id: AtomicU64,
    restart: tokio::sync::Mutex<()>,
}

impl EnvInner {
    async fn restart_after_crash(&self) {
        let _one_at_a_time = self.restart.lock().await;
        // A worker started here may crash in turn before the loop looks again.
        while let Some((epoch, resume_at)) = self.shared.pending_crash() {
            let old = lock(&self.worker).take();
            if let Some(old) = old {
                old.abort();
            }
            let worker = start_worker(
                &self.shared,
                &self.registry,
                &self.states,
                &self.options,
                &self.worker_hooks,
                epoch,
            )
            .expect("the registry and state were validated when the env started");
            *lock(&self.worker) = Some(worker);
            if let Some(t) = resume_at {
                // A restarted process finds the crashed one's leases expired only later.
                self.shared.clock.set(t);
            }
            self.shared.crash_handled(epoch);
        }
    }
}

impl Drop for EnvInner {
    fn drop(&mut self) {
        self.shared.close();
    }
}

/// A deterministic test environment running the real engine — [`Worker`], replay executor,
/// [`MemoryStore`] — on a [`ManualClock`].
///
/// Time only moves when the test says so ([`advance`](Self::advance),
/// [`advance_to_next_timer`](Self::advance_to_next_timer), [`wait`](Self::wait)), and every
/// driving method returns once the engine is idle: every message, activity and timer due at
/// the current virtual time has been processed. Idleness is read from the store's books,
/// never by sleeping, so a 72-hour timeout takes milliseconds.
///
/// Activities can be replaced by typed mocks and scripts, and every execution is recorded
/// ([`calls`](Self::calls)). Histories can be inspected typed ([`history`](Self::history)),
/// pretty-printed ([`describe`](Self::describe)), exported and replayed against the current
/// code ([`replay_check`](Self::replay_check)). The env can crash and restart the worker
/// ([`crash`](Self::crash), [`TestEnvBuilder::crash_after_commits`], [`CrashTest`]) and run
/// as a seeded simulation ([`TestEnvBuilder::simulate`], [`Simulation`]).
///
/// Clones share the env; the worker stops when the last clone is dropped.
///
/// [`CrashTest`]: crate::CrashTest
/// [`Simulation`]: crate::Simulation
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use durable_core::prelude::*;
/// use durable_testing::TestEnv;
///
/// #[activity]
/// async fn notify(text: String) -> Result<(), ActivityError> {
///     unimplemented!("sends an email: {text}")
/// }
///
/// #[orchestrator]
/// async fn approval(ctx: OrchestrationContext, item: String) -> Result<String, OrchestrationError> {
///     ctx.call(notify, format!("please approve {item}")).await?;
///     match ctx.wait_for_event_timeout::<bool>("approved", Duration::from_secs(72 * 3600)).await {
///         Ok(true) => Ok("approved".into()),
///         Ok(false) => Ok("rejected".into()),
///         Err(e) if e.is_timeout() => {
///             ctx.call(notify, format!("escalating {item}")).await?;
///             Ok("escalated".into())
///         }
///         Err(e) => Err(e.into()),
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let env = TestEnv::builder()
///     .register(approval)
///     .mock(notify, |_text: String| Ok(()))
///     .start()
///     .unwrap();
/// let run = env.start(approval, "po-7".into()).await.unwrap();
/// env.advance(Duration::from_secs(71 * 3600)).await;
/// env.assert_status(run.id(), RuntimeStatus::Running).await;
/// env.advance(Duration::from_secs(3600)).await;
/// assert_eq!(env.output(&run).await.unwrap(), "escalated");
/// assert_eq!(env.calls(notify), ["please approve po-7", "escalating po-7"]);
/// # }
/// ```
#[derive(Clone)]
pub struct TestEnv {
    inner: Arc<EnvInner>,
}

impl fmt::Debug for TestEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestEnv")
            .field("now", &self.now())
            .field("registry", &self.inner.registry)
            .field("shared", &self.inner.shared)
            .finish_non_exhaustive()
    }
}

impl TestEnv {
    /// A builder.
    ///
    /// # Examples
    ///
    /// ```
    /// let builder = durable_testing::TestEnv::builder();
    /// # let _ = builder;
    /// ```
    pub fn builder() -> TestEnvBuilder {
        TestEnvBuilder::default()
    }

    // ------------------------------------------------------------------ parts

    /// The client: start, raise, terminate, query — as in production. Generated proxies
    /// take it: `my_orchestrator::start(env.client(), input)`. It keeps working across
    /// simulated crashes (only the worker crashes).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let env = durable_testing::TestEnv::builder().start().unwrap();
    /// let page = env.client().query(&durable_core::InstanceQuery::new()).await.unwrap();
    /// assert!(page.instances.is_empty());
    /// # }
    /// ```
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The virtual clock. Moving it directly does not wait for the engine; prefer
    /// [`advance`](Self::advance).
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::Clock;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let env = durable_testing::TestEnv::builder().start().unwrap();
    /// assert_eq!(env.clock().now(), env.now());
    /// # }
    /// ```
    pub fn clock(&self) -> &ManualClock {
        &self.inner.shared.clock
    }

    /// The in-memory store the engine runs on.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::{InstanceId, Store};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let env = durable_testing::TestEnv::builder().start().unwrap();
    /// let id = InstanceId::new("nobody").unwrap();
    /// assert!(env.store().read_instance(&id).await.unwrap().is_none());
    /// # }
    /// ```
    pub fn store(&self) -> &MemoryStore {
        &self.inner.shared.store
    }

    /// The registry the worker runs: the registered code, with every activity routed through
    /// the harness (for mocks and the call log).
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    ///
    /// #[activity]
    /// async fn ping(_x: ()) -> Result<(), ActivityError> { Ok(()) }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let env = durable_testing::TestEnv::builder().register(ping).start().unwrap();
    /// assert!(env.registry().has_activity("ping"));
    /// # }
    /// ```
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// The current virtual time.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let env = durable_testing::TestEnv::builder().start().unwrap();
    /// assert_eq!(env.now().to_rfc3339(), "2024-01-01T00:00:00.000Z");
    /// # }
    /// ```
    pub fn now(&self) -> Timestamp {
        durable_core::Clock::now(&self.inner.shared.clock)
    }

    // ------------------------------------------------------------------ driving

    /// Starts an orchestration with a deterministic instance id (`<name>-<n>`, counting
    /// from 1 in this env), so runs and simulations are reproducible.
    ///
    /// # Errors
    ///
    /// As [`Client::start_with`].
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    ///
    /// #[orchestrator]
    /// async fn noop(_ctx: OrchestrationContext, _x: ()) -> Result<(), OrchestrationError> { Ok(()) }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let env = durable_testing::TestEnv::builder().register(noop).start().unwrap();
    /// let run = env.start(noop, ()).await.unwrap();
    /// assert_eq!(run.id().as_str(), "noop-1");
    /// # }
    /// ```
    pub async fn start<O: Orchestrator>(
        &self,
        orchestrator: O,
        input: O::Input,
    ) -> Result<InstanceHandle<O::Output>, ClientError> {
        self.start_with(orchestrator, input, StartOptions::new())
            .await
    }

    /// [`start`](Self::start) with options (explicit id, scheduled start, reuse policy,
    /// version). Without an explicit id the id is deterministic.
    ///
    /// # Errors
    ///
    /// As [`Client::start_with`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use durable_core::prelude::*;
    ///
    /// #[orchestrator]
    /// async fn noop(_ctx: OrchestrationContext, _x: ()) -> Result<(), OrchestrationError> { Ok(()) }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let env = durable_testing::TestEnv::builder().register(noop).start().unwrap();
    /// let later = StartOptions::new().scheduled_start(env.now() + Duration::from_secs(60));
    /// let run = env.start_with(noop, (), later).await.unwrap();
    /// env.run_until_idle().await;
    /// env.assert_status(run.id(), RuntimeStatus::Pending).await;
    /// env.advance(Duration::from_secs(60)).await;
    /// env.assert_status(run.id(), RuntimeStatus::Completed).await;
    /// # }
    /// ```
    pub async fn start_with<O: Orchestrator>(
        &self,
        orchestrator: O,
        input: O::Input,
        options: StartOptions,
    ) -> Result<InstanceHandle<O::Output>, ClientError> {
        let mut options = options;
        if options.instance_id.is_none() {
            let n = self.inner.next_id.fetch_add(1, Ordering::SeqCst);
            let id = InstanceId::new(format!("{}-{n}", O::NAME))
                .or_else(|_| InstanceId::new(format!("instance-{n}")))
                .expect("`instance-<n>` is a valid instance id");
            options.instance_id = Some(id);
        }
        self.inner
            .client
            .start_with(orchestrator, input, options)
            .await
    }

    /// Raises an external event on an instance (it is processed by the next driving call).
    ///
    /// # Errors
    ///
    /// As [`Client::raise_event`]: unknown instance, finished instance, payload too large.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    ///
    /// #[orchestrator]
    /// async fn greet(ctx: OrchestrationContext, _x: ()) -> Result<String, OrchestrationError> {
    ///     let name: String = ctx.wait_for_event("name").await?;
    ///     Ok(format!("Hello {name}"))
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let env = durable_testing::TestEnv::builder().register(greet).start().unwrap();
    /// let run = env.start(greet, ()).await.unwrap();
    /// env.raise(run.id(), "name", "Ada").await.unwrap();
    /// assert_eq!(env.wait(&run).await.unwrap(), "Hello Ada");
    /// # }
    /// ```
    pub async fn raise<T: Serialize + ?Sized>(
        &self,
        instance_id: &InstanceId,
        name: &str,
        data: &T,
    ) -> Result<(), ClientError> {
        self.inner.client.raise_event(instance_id, name, data).await
    }

    async fn settle(&self) {
        let timeout = self.inner.idle_timeout;
        if tokio::time::timeout(timeout, self.inner.shared.idle())
            .await
            .is_err()
        {
            let busy = self.inner.shared.busy_report();
            let dump = self.dump().await;
            panic!(
                "the engine did not become idle within {timeout:?} of wall-clock time: {busy}\n\n{dump}"
            );
        }
    }

    /// Processes everything due at the current virtual time — messages, activities, timers,
    /// their follow-ups — and returns when the engine is idle. Time does not move.
    ///
    /// # Panics
    ///
    /// If the engine stays busy for the idle timeout (an activity awaiting something outside
    /// the harness, say): the panic says what is still running and dumps every instance.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    ///
    /// #[activity]
    /// async fn add_one(x: u32) -> Result<u32, ActivityError> { Ok(x + 1) }
    ///
    /// #[orchestrator]
    /// async fn count(ctx: OrchestrationContext, n: u32) -> Result<u32, OrchestrationError> {
    ///     let mut x = 0;
    ///     for _ in 0..n { x = ctx.call(add_one, x).await?; }
    ///     Ok(x)
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let env = durable_testing::TestEnv::builder().register(add_one).register(count).start().unwrap();
    /// let run = env.start(count, 10).await.unwrap();
    /// env.run_until_idle().await;
    /// assert_eq!(env.output(&run).await.unwrap(), 10);
    /// # }
    /// ```
    pub async fn run_until_idle(&self) {
        self.settle().await;
    }

    /// Moves virtual time forward by `d`, firing every timer due within it in order — each
    /// at its own due time, with the engine idle before the next — and returns once the
    /// engine is idle at the end time.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use durable_core::prelude::*;
    ///
    /// #[orchestrator]
    /// async fn ticks(ctx: OrchestrationContext, n: u32) -> Result<Vec<Timestamp>, OrchestrationError> {
    ///     let mut at = Vec::new();
    ///     for _ in 0..n {
    ///         ctx.sleep(Duration::from_secs(3600)).await;
    ///         at.push(ctx.now());
    ///     }
    ///     Ok(at)
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let env = durable_testing::TestEnv::builder().register(ticks).start().unwrap();
    /// let t0 = env.now();
    /// let run = env.start(ticks, 3).await.unwrap();
    /// env.advance(Duration::from_secs(10 * 3600)).await;
    /// let hour = Duration::from_secs(3600);
    /// assert_eq!(env.output(&run).await.unwrap(), [t0 + hour, t0 + hour * 2, t0 + hour * 3]);
    /// assert_eq!(env.now(), t0 + hour * 10);
    /// # }
    /// ```
    pub async fn advance(&self, d: Duration) {
        let target = self.now() + d;
        self.advance_to(target).await;
    }

    /// Moves virtual time forward to `target` (see [`advance`](Self::advance)); a target in
    /// the past only runs until idle.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let env = durable_testing::TestEnv::builder().start().unwrap();
    /// let noon = env.now() + Duration::from_secs(12 * 3600);
    /// env.advance_to(noon).await;
    /// assert_eq!(env.now(), noon);
    /// # }
    /// ```
    pub async fn advance_to(&self, target: Timestamp) {
        loop {
            self.run_until_idle().await;
            match self.inner.shared.next_event_time().await {
                Some(t) if t <= target => self.inner.shared.clock.set(t),
                _ => break,
            }
        }
        self.inner.shared.clock.set(target);
        self.run_until_idle().await;
    }

    /// The time of the next scheduled event — a timer, a delayed message or retry, a lease
    /// expiry, a held simulation result — or `None` when nothing is scheduled.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let env = durable_testing::TestEnv::builder().start().unwrap();
    /// assert_eq!(env.next_timer().await, None);
    /// # }
    /// ```
    pub async fn next_timer(&self) -> Option<Timestamp> {
        self.run_until_idle().await;
        self.inner.shared.next_event_time().await
    }

    /// Runs until idle, then jumps to the [next scheduled event](Self::next_timer) and runs
    /// until idle again. Returns the time jumped to, or `None` (time unchanged) when nothing
    /// is scheduled.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use durable_core::prelude::*;
    ///
    /// #[orchestrator]
    /// async fn nap(ctx: OrchestrationContext, _x: ()) -> Result<(), OrchestrationError> {
    ///     ctx.sleep(Duration::from_secs(90)).await;
    ///     Ok(())
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let env = durable_testing::TestEnv::builder().register(nap).start().unwrap();
    /// let t0 = env.now();
    /// let run = env.start(nap, ()).await.unwrap();
    /// assert_eq!(env.advance_to_next_timer().await, Some(t0 + Duration::from_secs(90)));
    /// env.assert_status(run.id(), RuntimeStatus::Completed).await;
    /// assert_eq!(env.advance_to_next_timer().await, None);
    /// # }
    /// ```
    pub async fn advance_to_next_timer(&self) -> Option<Timestamp> {
        let next = self.next_timer().await?;
        self.inner.shared.clock.set(next);
        self.run_until_idle().await;
        Some(next)
    }

    /// Drives the instance to its end — running until idle and jumping to the next timer
    /// whenever nothing else can happen — and returns its typed output.
    ///
    /// # Errors
    ///
    /// As the handle's `wait()`: [`ClientError::Failed`] with the failure details,
    /// [`ClientError::Terminated`], …
    ///
    /// # Panics
    ///
    /// When the instance can never finish: the engine is idle, nothing is scheduled, and the
    /// instance is still running (waiting for an event nobody raised, say) — or it is still
    /// running after 100,000 jumps in time. The panic shows its status and history.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use durable_core::prelude::*;
    ///
    /// #[orchestrator]
    /// async fn week(ctx: OrchestrationContext, _x: ()) -> Result<u32, OrchestrationError> {
    ///     for _ in 0..7 { ctx.sleep(Duration::from_secs(86_400)).await; }
    ///     Ok(7)
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let env = durable_testing::TestEnv::builder().register(week).start().unwrap();
    /// let run = env.start(week, ()).await.unwrap();
    /// assert_eq!(env.wait(&run).await.unwrap(), 7);
    /// # }
    /// ```
    pub async fn wait<O: DeserializeOwned>(
        &self,
        run: &InstanceHandle<O>,
    ) -> Result<O, ClientError> {
        output_of(self.wait_for_completion(run.id()).await?)
    }

    /// [`wait`](Self::wait) by instance id, returning the final status record.
    ///
    /// # Errors
    ///
    /// [`ClientError::InstanceNotFound`] for an unknown id.
    ///
    /// # Panics
    ///
    /// As [`wait`](Self::wait).
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    ///
    /// #[orchestrator]
    /// async fn fails(_ctx: OrchestrationContext, _x: ()) -> Result<(), OrchestrationError> {
    ///     Err(OrchestrationError::new("out of stock"))
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let env = durable_testing::TestEnv::builder().register(fails).start().unwrap();
    /// let run = env.start(fails, ()).await.unwrap();
    /// let record = env.wait_for_completion(run.id()).await.unwrap();
    /// assert_eq!(record.status, RuntimeStatus::Failed);
    /// assert_eq!(record.failure.unwrap().message, "out of stock");
    /// # }
    /// ```
    pub async fn wait_for_completion(
        &self,
        instance_id: &InstanceId,
    ) -> Result<InstanceRecord, ClientError> {
        let start = self.now();
        for _ in 0..MAX_WAIT_STEPS {
            self.run_until_idle().await;
            let record = self.inner.client.status(instance_id).await?;
            if record.status.is_terminal() {
                return Ok(record);
            }
            let Some(next) = self.inner.shared.next_event_time().await else {
                let described = self.describe(instance_id).await;
                panic!(
                    "instance `{instance_id}` can never finish: the engine is idle and nothing is \
                     scheduled (is it waiting for an event nobody raised?)\n\n{described}"
                );
            };
            self.inner.shared.clock.set(next);
        }
        let described = self.describe(instance_id).await;
        panic!(
            "instance `{instance_id}` did not finish after {MAX_WAIT_STEPS} timer steps ({start} to {}); \
             an activity scripted to hang forever is delivered again every `activity_lock`\n\n{described}",
            self.now()
        );
    }

    // ------------------------------------------------------------------ inspection

    /// The instance's status record (status, input, output, failure, custom status, …).
    ///
    /// # Errors
    ///
    /// [`ClientError::InstanceNotFound`] for an unknown id.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::InstanceId;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let env = durable_testing::TestEnv::builder().start().unwrap();
    /// assert!(env.status(&InstanceId::new("nobody").unwrap()).await.is_err());
    /// # }
    /// ```
    pub async fn status(&self, instance_id: &InstanceId) -> Result<InstanceRecord, ClientError> {
        self.inner.client.status(instance_id).await
    }

    /// The typed output of a finished instance (without driving the engine).
    ///
    /// # Errors
    ///
    /// [`ClientError::InstanceNotRunning`] while it has not finished; otherwise as
    /// [`wait`](Self::wait).
    ///
    /// # Examples
    ///
    /// See [`run_until_idle`](Self::run_until_idle).
    pub async fn output<O: DeserializeOwned>(
        &self,
        run: &InstanceHandle<O>,
    ) -> Result<O, ClientError> {
        output_of(self.inner.client.status(run.id()).await?)
    }

    /// The instance's current custom status, decoded.
    ///
    /// # Errors
    ///
    /// [`ClientError::InstanceNotFound`] for an unknown id.
    ///
    /// # Panics
    ///
    /// If the custom status is not a `T`.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    ///
    /// #[orchestrator]
    /// async fn staged(ctx: OrchestrationContext, _x: ()) -> Result<(), OrchestrationError> {
    ///     ctx.set_custom_status(&"waiting for go")?;
    ///     ctx.wait_for_event::<()>("go").await?;
    ///     Ok(())
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let env = durable_testing::TestEnv::builder().register(staged).start().unwrap();
    /// let run = env.start(staged, ()).await.unwrap();
    /// env.run_until_idle().await;
    /// let status: Option<String> = env.custom_status(run.id()).await.unwrap();
    /// assert_eq!(status.as_deref(), Some("waiting for go"));
    /// # }
    /// ```
    pub async fn custom_status<T: DeserializeOwned>(
        &self,
        instance_id: &InstanceId,
    ) -> Result<Option<T>, ClientError> {
        let record = self.inner.client.status(instance_id).await?;
        Ok(record.custom_status.map(|s| {
            serde_json::from_str(&s).unwrap_or_else(|e| {
                panic!(
                    "custom status `{s}` of `{instance_id}` is not a `{}`: {e}",
                    std::any::type_name::<T>()
                )
            })
        }))
    }

    /// The history of the instance's current execution (empty for an unknown id).
    ///
    /// # Examples
    ///
    /// See [`History`].
    pub async fn history(&self, instance_id: &InstanceId) -> History {
        History::new(
            self.store()
                .read_history(instance_id)
                .await
                .expect("the in-memory store does not fail"),
        )
    }

    /// A readable account of one instance: status, output or failure, custom status, stuck
    /// error, and its history one event per line. For assertion messages.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    ///
    /// #[orchestrator]
    /// async fn noop(_ctx: OrchestrationContext, _x: ()) -> Result<(), OrchestrationError> { Ok(()) }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let env = durable_testing::TestEnv::builder().register(noop).start().unwrap();
    /// let run = env.start(noop, ()).await.unwrap();
    /// env.run_until_idle().await;
    /// let text = env.describe(run.id()).await;
    /// assert!(text.starts_with("instance `noop-1` (noop): Completed"), "{text}");
    /// assert!(text.contains("ExecutionCompleted"), "{text}");
    /// # }
    /// ```
    pub async fn describe(&self, instance_id: &InstanceId) -> String {
        use std::fmt::Write;
        let Ok(Some(r)) = self.store().read_instance(instance_id).await else {
            return format!("instance `{instance_id}`: not found\n");
        };
        let mut out = format!(
            "instance `{instance_id}` ({}): {}",
            r.name,
            r.status.as_str()
        );
        if let Some(o) = &r.output {
            let _ = write!(out, ", output {o}");
        }
        if let Some(f) = &r.failure {
            let _ = write!(out, ", failure {f}");
        }
        if let Some(c) = &r.custom_status {
            let _ = write!(out, ", custom status {c}");
        }
        if let Some(e) = &r.last_error {
            let _ = write!(out, "\n  stuck: {e}");
        }
        out.push('\n');
        out.push_str(&self.history(instance_id).await.pretty());
        out
    }

    /// [`describe`](Self::describe) for every instance in the store, and the virtual time.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let env = durable_testing::TestEnv::builder().start().unwrap();
    /// assert!(env.dump().await.starts_with("virtual time 2024-01-01T00:00:00.000Z"));
    /// # }
    /// ```
    pub async fn dump(&self) -> String {
        let mut out = format!(
            "virtual time {}; {} activity calls\n",
            self.now(),
            self.all_calls().len()
        );
        let mut query = InstanceQuery::new();
        loop {
            let Ok(page) = self.store().query_instances(&query).await else {
                break;
            };
            for r in &page.instances {
                out.push('\n');
                out.push_str(&self.describe(&r.instance_id).await);
            }
            match page.continuation {
                Some(c) => query = query.continuation(Some(c)),
                None => break,
            }
        }
        out
    }

    /// Asserts the instance's status, showing its history when it differs.
    ///
    /// # Panics
    ///
    /// When the status differs or the instance does not exist.
    ///
    /// # Examples
    ///
    /// See [`start_with`](Self::start_with).
    pub async fn assert_status(&self, instance_id: &InstanceId, expected: RuntimeStatus) {
        let actual = self.status(instance_id).await.map(|r| r.status);
        if actual.as_ref() != Ok(&expected) {
            let described = self.describe(instance_id).await;
            panic!(
                "expected instance `{instance_id}` to be {}, found {}\n\n{described}",
                expected.as_str(),
                match &actual {
                    Ok(s) => s.as_str().to_owned(),
                    Err(e) => e.to_string(),
                }
            );
        }
    }

    // ------------------------------------------------------------------ mocks and calls

    fn set_mock(&self, name: &str, handler: Option<ActivityHandler>) {
        assert!(
            self.inner.switched.contains(name),
            "activity `{name}` is neither registered nor mocked in this env, so the worker cannot \
             route it; register it (`.register({name})`) or mock it on the builder \
             (`TestEnv::builder().mock({name}, ..)`)"
        );
        let mut mocks = lock(&self.inner.shared.mocks);
        match handler {
            Some(h) => mocks.insert(name.to_owned(), h),
            None => mocks.remove(name),
        };
    }

    /// Replaces activity `A` from now on by a closure on its typed input returning its typed
    /// output or its error.
    ///
    /// # Panics
    ///
    /// If `A` was neither registered nor mocked when the env started (the worker's registry
    /// is fixed then): mock it on the [builder](TestEnvBuilder::mock) instead.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    ///
    /// #[activity]
    /// async fn price(_item: String) -> Result<u64, ActivityError> { Ok(100) }
    ///
    /// #[orchestrator]
    /// async fn quote(ctx: OrchestrationContext, item: String) -> Result<u64, OrchestrationError> {
    ///     Ok(ctx.call(price, item).await?)
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let env = durable_testing::TestEnv::builder().register(price).register(quote).start().unwrap();
    /// env.mock(price, |item: String| Ok(if item == "gold" { 9_999 } else { 1 }));
    /// let run = env.start(quote, "gold".into()).await.unwrap();
    /// assert_eq!(env.wait(&run).await.unwrap(), 9_999);
    ///
    /// env.unmock(price);
    /// let run = env.start(quote, "gold".into()).await.unwrap();
    /// assert_eq!(env.wait(&run).await.unwrap(), 100);
    /// # }
    /// ```
    pub fn mock<A, F>(&self, activity: A, f: F)
    where
        A: Activity,
        F: FnMut(A::Input) -> Result<A::Output, A::Error> + Send + 'static,
    {
        let _ = activity;
        self.set_mock(A::NAME, Some(typed_mock::<A, F>(f)));
    }

    /// Replaces activity `A` from now on by a [`Script`].
    ///
    /// # Panics
    ///
    /// As [`mock`](Self::mock).
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_testing::Script;
    ///
    /// #[activity]
    /// async fn ping(_x: ()) -> Result<(), ActivityError> { Ok(()) }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let env = durable_testing::TestEnv::builder().register(ping).start().unwrap();
    /// env.script(ping, Script::of(ping).fail(ActivityError::new("down")).ok(()));
    /// # }
    /// ```
    pub fn script<A: Activity>(&self, activity: A, script: Script<A>) {
        let _ = activity;
        self.set_mock(A::NAME, Some(script.into_handler(&self.inner.shared)));
    }

    /// Restores the real activity `A` (or, if it was never registered, makes its calls fail
    /// with `UnknownActivity`).
    ///
    /// # Panics
    ///
    /// As [`mock`](Self::mock); and when `A` takes a `State<T>` the env was not given
    /// ([`TestEnvBuilder::state`]): the real activity could not run.
    ///
    /// # Examples
    ///
    /// See [`mock`](Self::mock).
    pub fn unmock<A: Activity>(&self, activity: A) {
        let _ = activity;
        if let Some(missing) = A::STATES.iter().find(|t| !self.inner.states.contains(t)) {
            panic!(
                "activity `{}` takes `State<{}>`, which this env was not given, so the real \
                 activity cannot run: give it with `TestEnv::builder().state(..)`",
                A::NAME,
                missing.type_name()
            );
        }
        self.set_mock(A::NAME, None);
    }

    /// The inputs of every execution of activity `A` so far, real or mocked, in execution
    /// order — re-executions (at-least-once) included.
    ///
    /// # Examples
    ///
    /// See [`TestEnv`].
    pub fn calls<A: Activity>(&self, activity: A) -> Vec<A::Input> {
        let _ = activity;
        self.inner
            .shared
            .calls()
            .into_iter()
            .filter(|c| c.name == A::NAME)
            .map(|c| {
                serde_json::from_str(&c.input).unwrap_or_else(|e| {
                    panic!(
                        "recorded input `{}` of `{}` does not deserialize: {e}",
                        c.input,
                        A::NAME
                    )
                })
            })
            .collect()
    }

    /// How many times activity `A` has executed.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    ///
    /// #[activity]
    /// async fn ping(_x: ()) -> Result<(), ActivityError> { Ok(()) }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let env = durable_testing::TestEnv::builder().register(ping).start().unwrap();
    /// assert_eq!(env.call_count(ping), 0);
    /// # }
    /// ```
    pub fn call_count<A: Activity>(&self, activity: A) -> usize {
        let _ = activity;
        self.inner
            .shared
            .calls()
            .iter()
            .filter(|c| c.name == A::NAME)
            .count()
    }

    /// Every durable HTTP request sent so far (feature `http-calls`), in order: one per
    /// `BuiltIn::HttpActivity` execution — first requests, 202 polls and retries — mocked
    /// or real, secrets by source name only.
    ///
    /// # Examples
    ///
    /// See [`HttpCall`].
    #[cfg(feature = "http-calls")]
    pub fn http_requests(&self) -> Vec<HttpCall> {
        self.inner
            .shared
            .calls()
            .iter()
            .filter_map(HttpCall::from_call)
            .collect()
    }

    /// Every activity execution so far, in order.
    ///
    /// # Examples
    ///
    /// See [`ActivityCall`].
    pub fn all_calls(&self) -> Vec<ActivityCall> {
        self.inner.shared.calls()
    }

    // ------------------------------------------------------------------ versioning

    /// Replays an exported history against this env's code (see [`replay_check`]).
    ///
    /// # Errors
    ///
    /// See [`ReplayCheckError`].
    ///
    /// [`replay_check`]: crate::replay_check
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    ///
    /// #[activity]
    /// async fn step(x: u32) -> Result<u32, ActivityError> { Ok(x + 1) }
    ///
    /// #[orchestrator]
    /// async fn flow(ctx: OrchestrationContext, x: u32) -> Result<u32, OrchestrationError> {
    ///     Ok(ctx.call(step, x).await?)
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let env = durable_testing::TestEnv::builder().register(step).register(flow).start().unwrap();
    /// let run = env.start(flow, 1).await.unwrap();
    /// env.wait(&run).await.unwrap();
    /// let exported = env.export_history(run.id()).await.unwrap();
    /// env.replay_check(run.id(), &exported).unwrap();
    /// # }
    /// ```
    pub fn replay_check(
        &self,
        instance_id: &InstanceId,
        json: &str,
    ) -> Result<(), ReplayCheckError> {
        replay_check(&self.inner.registry, instance_id, json)
    }

    /// Exports an instance's history as JSON (see [`export_history`]).
    ///
    /// # Errors
    ///
    /// [`StoreError::InstanceNotFound`] for an unknown id.
    ///
    /// [`export_history`]: crate::export_history
    ///
    /// # Examples
    ///
    /// See [`replay_check`](Self::replay_check).
    pub async fn export_history(&self, instance_id: &InstanceId) -> Result<String, StoreError> {
        export_history(self.store(), instance_id).await
    }

    // ------------------------------------------------------------------ crashes and simulation

    /// Crashes the worker now — its in-flight work is lost, its leases stay held — then
    /// starts a new worker on the same store and moves the clock past the old leases, and
    /// returns once the new worker runs. Call [`run_until_idle`](Self::run_until_idle) or
    /// [`wait`](Self::wait) to let it recover.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    ///
    /// #[orchestrator]
    /// async fn wait_go(ctx: OrchestrationContext, _x: ()) -> Result<u32, OrchestrationError> {
    ///     Ok(ctx.wait_for_event::<u32>("go").await?)
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let env = durable_testing::TestEnv::builder().register(wait_go).start().unwrap();
    /// let run = env.start(wait_go, ()).await.unwrap();
    /// env.run_until_idle().await;
    /// env.crash().await;
    /// env.raise(run.id(), "go", &5).await.unwrap();
    /// assert_eq!(env.wait(&run).await.unwrap(), 5);
    /// assert_eq!(env.crashes(), 1);
    /// # }
    /// ```
    pub async fn crash(&self) {
        self.inner.shared.crash_now();
        self.inner.restart_after_crash().await;
    }

    /// How many simulated crashes have happened (each followed by a restart).
    ///
    /// # Examples
    ///
    /// See [`crash`](Self::crash).
    pub fn crashes(&self) -> usize {
        self.inner.shared.crashes()
    }

    /// How many store commits (episode commits and activity completions) have happened.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    ///
    /// #[orchestrator]
    /// async fn noop(_ctx: OrchestrationContext, _x: ()) -> Result<(), OrchestrationError> { Ok(()) }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let env = durable_testing::TestEnv::builder().register(noop).start().unwrap();
    /// let run = env.start(noop, ()).await.unwrap();
    /// env.wait(&run).await.unwrap();
    /// assert_eq!(env.commits(), 1);
    /// # }
    /// ```
    pub fn commits(&self) -> u64 {
        self.inner.shared.commits()
    }

    /// The simulation's seed, if the env runs as one.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_testing::{SimConfig, TestEnv};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let env = TestEnv::builder().simulate(SimConfig::new(9)).start().unwrap();
    /// assert_eq!(env.seed(), Some(9));
    /// # }
    /// ```
    pub fn seed(&self) -> Option<u64> {
        self.inner.shared.sim.as_ref().map(|s| s.seed)
    }

    /// What the simulation has done so far (all zero outside simulation).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let env = durable_testing::TestEnv::builder().start().unwrap();
    /// assert_eq!(env.sim_stats(), durable_testing::SimStats::default());
    /// # }
    /// ```
    pub fn sim_stats(&self) -> SimStats {
        self.inner.shared.sim_stats()
    }
}
