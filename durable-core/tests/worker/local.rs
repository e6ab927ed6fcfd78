//! Local activities (`#[activity(local)]`, `ctx.call_local`): run inside the episode and
//! committed with it. Commits are counted by a wrapper around the store.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use durable_core::history::{HistoryEvent, Payload};
use durable_core::prelude::*;
use durable_core::storage::{
    ActivityWorkItem, CreateResult, EpisodeCommit, InstancePage, LockToken, Message, NewInstance,
    OrchestrationWorkItem, QueueDepths, StoreSignals, WorkKind,
};
use durable_core::{InstanceQuery, InstanceRecord, RedbStore, Store, StoreError, WorkerBuilder};
use durable_testing::ManualClock;

use super::support::{count, start, start_on};

/// Longest a test waits for the engine (a guard against hangs, not timing).
const GUARD: Duration = Duration::from_secs(20);

// ------------------------------------------------------------------ a store that counts

/// Forwards to a store and counts episode commits, the activity tasks they enqueue,
/// activity completions written to the store, instances created leased and the work items
/// fetches answered.
#[derive(Debug)]
pub(crate) struct Counting {
    inner: Arc<dyn Store>,
    episodes: AtomicUsize,
    created_leased: AtomicUsize,
    fetched: AtomicUsize,
    /// Says it leases in process when set (as the memory and redb stores do); otherwise it
    /// does not, as a store behind a network.
    in_process: std::sync::atomic::AtomicBool,
    tasks_enqueued: AtomicUsize,
    /// Activity tasks leased by the commits that enqueued them (eager dispatch).
    eager: AtomicUsize,
    /// Activity tasks the worker fetched.
    activities_fetched: AtomicUsize,
    /// Activity lease renewals asked for.
    renewals: AtomicUsize,
    /// Of each eager commit: the episode's time (`commit.now`) and the lease's start.
    eager_times: std::sync::Mutex<Vec<(Timestamp, Timestamp)>>,
    completions: AtomicUsize,
    heartbeats: AtomicUsize,
    /// A lease of the store's own on instances, in ms (0: the one asked for), as
    /// `PostgresOptions::orchestration_lease` grants.
    own_lease_ms: AtomicU64,
    /// Says it keeps instance leases for eager tasks when set and the inner store does.
    keeps: std::sync::atomic::AtomicBool,
    /// Kept instance leases given back (`release_kept_lease` calls).
    given_back: AtomicUsize,
}

impl Counting {
    pub(crate) fn new(inner: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            episodes: AtomicUsize::new(0),
            created_leased: AtomicUsize::new(0),
            fetched: AtomicUsize::new(0),
            in_process: std::sync::atomic::AtomicBool::new(false),
            tasks_enqueued: AtomicUsize::new(0),
            eager: AtomicUsize::new(0),
            activities_fetched: AtomicUsize::new(0),
            renewals: AtomicUsize::new(0),
            eager_times: std::sync::Mutex::default(),
            completions: AtomicUsize::new(0),
            heartbeats: AtomicUsize::new(0),
            own_lease_ms: AtomicU64::new(0),
            keeps: std::sync::atomic::AtomicBool::new(true),
            given_back: AtomicUsize::new(0),
        })
    }

    /// Says it keeps no instance lease for eager tasks, whatever the inner store does.
    pub(crate) fn keep_no_leases(&self) {
        self.keeps.store(false, Ordering::SeqCst);
    }

    /// Kept instance leases given back without an episode.
    pub(crate) fn given_back(&self) -> usize {
        self.given_back.load(Ordering::SeqCst)
    }

    /// Forwards to `inner`, saying it leases in process when `inner` does.
    pub(crate) fn forwarding(inner: Arc<dyn Store>) -> Arc<Self> {
        let in_process = inner.leases_in_process();
        let store = Self::new(inner);
        store.in_process.store(in_process, Ordering::SeqCst);
        store
    }

    /// Instances created leased to a worker ([`Store::create_leased`] calls that did).
    pub(crate) fn created_leased(&self) -> usize {
        self.created_leased.load(Ordering::SeqCst)
    }

    /// Work items fetches answered.
    pub(crate) fn fetched_items(&self) -> usize {
        self.fetched.load(Ordering::SeqCst)
    }

    /// Activity tasks leased to the worker by the commits that enqueued them.
    pub(crate) fn eager(&self) -> usize {
        self.eager.load(Ordering::SeqCst)
    }

    /// Of each eager commit: the episode's time and the lease's start.
    pub(crate) fn eager_times(&self) -> Vec<(Timestamp, Timestamp)> {
        self.eager_times.lock().unwrap().clone()
    }

    /// Activity lease renewals asked for (one per lease per call).
    pub(crate) fn renewals(&self) -> usize {
        self.renewals.load(Ordering::SeqCst)
    }

    /// Activity tasks fetches answered.
    pub(crate) fn activities_fetched(&self) -> usize {
        self.activities_fetched.load(Ordering::SeqCst)
    }

    /// Grants `lease` on instances whatever a worker asks for.
    fn grant_lease(&self, lease: Duration) {
        self.own_lease_ms
            .store(lease.as_millis() as u64, Ordering::SeqCst);
    }

    /// Heartbeat details written (`record_activity_heartbeat` calls that succeeded).
    pub(crate) fn heartbeats(&self) -> usize {
        self.heartbeats.load(Ordering::SeqCst)
    }

    fn episodes(&self) -> usize {
        self.episodes.load(Ordering::SeqCst)
    }

    fn tasks_enqueued(&self) -> usize {
        self.tasks_enqueued.load(Ordering::SeqCst)
    }

    /// Counts the work items of a fetch's answer.
    fn fetched<T>(&self, items: Result<Vec<T>, StoreError>) -> Result<Vec<T>, StoreError> {
        if let Ok(items) = &items {
            self.fetched.fetch_add(items.len(), Ordering::SeqCst);
        }
        items
    }
}

#[async_trait]
impl Store for Counting {
    async fn create_instance(&self, new: NewInstance) -> Result<CreateResult, StoreError> {
        self.inner.create_instance(new).await
    }
    async fn send_message(&self, id: &InstanceId, m: Message) -> Result<(), StoreError> {
        self.inner.send_message(id, m).await
    }
    async fn fetch_orchestration_work(
        &self,
        now: Timestamp,
        lock_for: Duration,
    ) -> Result<Option<OrchestrationWorkItem>, StoreError> {
        let item = self.inner.fetch_orchestration_work(now, lock_for).await;
        self.fetched(item.map(Vec::from_iter))
            .map(|items| items.into_iter().next())
    }
    async fn fetch_orchestration_batch(
        &self,
        now: Timestamp,
        lock_for: Duration,
        max: usize,
    ) -> Result<Vec<OrchestrationWorkItem>, StoreError> {
        self.fetched(
            self.inner
                .fetch_orchestration_batch(now, lock_for, max)
                .await,
        )
    }
    async fn create_leased(
        &self,
        new: NewInstance,
        now: Timestamp,
        lock_for: Duration,
    ) -> Result<Option<OrchestrationWorkItem>, StoreError> {
        let item = self.inner.create_leased(new, now, lock_for).await?;
        if item.is_some() {
            self.created_leased.fetch_add(1, Ordering::SeqCst);
        }
        Ok(item)
    }
    async fn create_started(
        &self,
        new: NewInstance,
        first: EpisodeCommit,
    ) -> Result<Option<InstanceRecord>, StoreError> {
        self.inner.create_started(new, first).await
    }
    fn supports_create_started(&self) -> bool {
        self.inner.supports_create_started()
    }
    fn leases_in_process(&self) -> bool {
        self.in_process.load(Ordering::SeqCst)
    }
    async fn commit_episode(&self, commit: EpisodeCommit) -> Result<(), StoreError> {
        // Counted before the commit: a waiter may see its effect before it returns.
        self.episodes.fetch_add(1, Ordering::SeqCst);
        self.tasks_enqueued
            .fetch_add(commit.activities.len(), Ordering::SeqCst);
        self.inner.commit_episode(commit).await
    }
    async fn commit_episode_eager(
        &self,
        commit: EpisodeCommit,
        task: usize,
        now: Timestamp,
        lock_for: Duration,
    ) -> Result<Option<ActivityWorkItem>, StoreError> {
        self.episodes.fetch_add(1, Ordering::SeqCst);
        self.tasks_enqueued
            .fetch_add(commit.activities.len(), Ordering::SeqCst);
        self.eager_times.lock().unwrap().push((commit.now, now));
        let leased = self
            .inner
            .commit_episode_eager(commit, task, now, lock_for)
            .await?;
        if leased.is_some() {
            self.eager.fetch_add(1, Ordering::SeqCst);
        }
        Ok(leased)
    }
    fn supports_eager_dispatch(&self) -> bool {
        self.inner.supports_eager_dispatch()
    }
    fn keeps_lease_for_eager(&self) -> bool {
        self.keeps.load(Ordering::SeqCst) && self.inner.keeps_lease_for_eager()
    }
    fn supports_activity_handoff(&self) -> bool {
        self.inner.supports_activity_handoff()
    }
    async fn fetch_instances_work(
        &self,
        ids: &[InstanceId],
        now: Timestamp,
        lock_for: Duration,
    ) -> Result<Vec<OrchestrationWorkItem>, StoreError> {
        self.fetched(self.inner.fetch_instances_work(ids, now, lock_for).await)
    }
    async fn abandon_episode(
        &self,
        id: &InstanceId,
        lock: LockToken,
        retry_at: Timestamp,
        error: Option<String>,
    ) -> Result<(), StoreError> {
        self.inner.abandon_episode(id, lock, retry_at, error).await
    }
    async fn release_kept_lease(&self, id: &InstanceId, lock: LockToken) -> Result<(), StoreError> {
        self.given_back.fetch_add(1, Ordering::SeqCst);
        self.inner.release_kept_lease(id, lock).await
    }
    fn activity_lease(&self, requested: Duration) -> Duration {
        self.inner.activity_lease(requested)
    }
    fn orchestration_lease(&self, requested: Duration) -> Duration {
        match self.own_lease_ms.load(Ordering::SeqCst) {
            0 => self.inner.orchestration_lease(requested),
            ms => Duration::from_millis(ms),
        }
    }
    async fn fetch_activity_work(
        &self,
        now: Timestamp,
        lock_for: Duration,
        max: usize,
    ) -> Result<Vec<ActivityWorkItem>, StoreError> {
        let items = self.inner.fetch_activity_work(now, lock_for, max).await?;
        self.activities_fetched
            .fetch_add(items.len(), Ordering::SeqCst);
        Ok(items)
    }
    async fn complete_activity(
        &self,
        id: u64,
        lock: LockToken,
        result: Message,
    ) -> Result<(), StoreError> {
        self.completions.fetch_add(1, Ordering::SeqCst);
        self.inner.complete_activity(id, lock, result).await
    }
    async fn abandon_activity(
        &self,
        id: u64,
        lock: LockToken,
        retry_at: Timestamp,
    ) -> Result<(), StoreError> {
        self.inner.abandon_activity(id, lock, retry_at).await
    }
    async fn renew_activity_lock(
        &self,
        id: u64,
        lock: LockToken,
        until: Timestamp,
    ) -> Result<(), StoreError> {
        self.renewals.fetch_add(1, Ordering::SeqCst);
        self.inner.renew_activity_lock(id, lock, until).await
    }
    async fn renew_activity_locks(
        &self,
        leases: &[(u64, LockToken)],
        until: Timestamp,
    ) -> Result<Vec<u64>, StoreError> {
        self.renewals.fetch_add(leases.len(), Ordering::SeqCst);
        self.inner.renew_activity_locks(leases, until).await
    }
    async fn record_activity_heartbeat(
        &self,
        id: u64,
        lock: LockToken,
        details: Payload,
        until: Timestamp,
    ) -> Result<(), StoreError> {
        self.inner
            .record_activity_heartbeat(id, lock, details, until)
            .await?;
        self.heartbeats.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    async fn next_wake_time(&self) -> Result<Option<Timestamp>, StoreError> {
        self.inner.next_wake_time().await
    }
    async fn next_wake_time_for(&self, kind: WorkKind) -> Result<Option<Timestamp>, StoreError> {
        self.inner.next_wake_time_for(kind).await
    }
    async fn queue_depths(&self, now: Timestamp) -> Result<Option<QueueDepths>, StoreError> {
        self.inner.queue_depths(now).await
    }
    async fn read_instance(&self, id: &InstanceId) -> Result<Option<InstanceRecord>, StoreError> {
        self.inner.read_instance(id).await
    }
    async fn read_history(&self, id: &InstanceId) -> Result<Vec<HistoryEvent>, StoreError> {
        self.inner.read_history(id).await
    }
    async fn query_instances(&self, q: &InstanceQuery) -> Result<InstancePage, StoreError> {
        self.inner.query_instances(q).await
    }
    async fn purge_instance(&self, id: &InstanceId) -> Result<bool, StoreError> {
        self.inner.purge_instance(id).await
    }
    async fn purge_finished_instance(
        &self,
        id: &InstanceId,
        finished_by: Timestamp,
    ) -> Result<bool, StoreError> {
        self.inner.purge_finished_instance(id, finished_by).await
    }
    fn signals(&self) -> &StoreSignals {
        self.inner.signals()
    }
}

/// A worker on `store` (counted) with a manual clock.
pub(crate) fn counted_worker(
    store: &Arc<Counting>,
    clock: &ManualClock,
    configure: impl FnOnce(WorkerBuilder) -> WorkerBuilder,
) -> Worker {
    configure(
        Worker::builder()
            .store_arc(Arc::clone(store) as Arc<dyn Store>)
            .clock(clock.as_clock()),
    )
    .start()
    .expect("worker starts")
}

pub(crate) async fn wait<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, f)
        .await
        .unwrap_or_else(|_| panic!("gave up waiting for {what}"))
}

// ------------------------------------------------------------------ five chained steps

static STEP_CALLS: [AtomicUsize; 5] = [const { AtomicUsize::new(0) }; 5];

/// Adds its position to the running text.
#[activity(local)]
async fn step(input: (usize, String)) -> Result<String, ActivityError> {
    let (i, text) = input;
    STEP_CALLS[i].fetch_add(1, Ordering::SeqCst);
    Ok(format!("{text}{i}"))
}

#[orchestrator]
async fn five_steps(
    ctx: OrchestrationContext,
    start: String,
) -> Result<String, OrchestrationError> {
    let mut text = start;
    for i in 0..5 {
        text = ctx.call(step, (i, text)).await?;
    }
    Ok(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_local_steps_cost_one_episode_commit_on_redb() {
    let dir = tempfile::tempdir().unwrap();
    let redb = RedbStore::open(dir.path().join("hub.redb")).unwrap();
    let store = Counting::new(Arc::new(redb));
    let clock = ManualClock::default();
    let worker = counted_worker(&store, &clock, |b| b.register(step).register(five_steps));
    let run = five_steps::start(&worker.client(), "s".into())
        .await
        .unwrap();
    assert_eq!(wait("the run", run.wait()).await.unwrap(), "s01234");
    let h = run.history().await.unwrap();
    assert_eq!(count(&h, "TaskScheduled"), 5);
    assert_eq!(count(&h, "TaskCompleted"), 5);
    assert_eq!(count(&h, "OrchestratorStarted"), 1, "one episode");
    assert_eq!(store.episodes(), 1, "one episode commit after the start");
    assert_eq!(
        store.tasks_enqueued(),
        0,
        "no activity task went to the store"
    );
    assert_eq!(store.completions.load(Ordering::SeqCst), 0);
    for (i, calls) in STEP_CALLS.iter().enumerate() {
        assert_eq!(calls.load(Ordering::SeqCst), 1, "step {i} ran once");
    }
    worker.shutdown().await;
}

// ------------------------------------------------------------------ created leased

static LEASED_STEPS: AtomicUsize = AtomicUsize::new(0);

#[activity(local)]
async fn leased_step(n: u32) -> Result<u32, ActivityError> {
    LEASED_STEPS.fetch_add(1, Ordering::SeqCst);
    Ok(n + 1)
}

#[orchestrator]
async fn two_leased_steps(ctx: OrchestrationContext, n: u32) -> Result<u32, OrchestrationError> {
    let n = ctx.call(leased_step, n).await?;
    Ok(ctx.call(leased_step, n).await?)
}

/// A start whose first episode runs local steps creates the instance leased to the
/// starting worker, which runs the episode without fetching it, on a store that does not
/// lease in process (where a fetch is a round trip and a wake-up): here the memory and redb
/// stores behind `Counting`, which does not say it leases in process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_with_local_steps_runs_its_episode_without_a_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let stores: [Arc<dyn Store>; 2] = [
        Arc::new(durable_core::MemoryStore::new()),
        Arc::new(RedbStore::open(dir.path().join("hub.redb")).unwrap()),
    ];
    for inner in stores {
        let store = Counting::new(inner);
        let clock = ManualClock::default();
        let worker = counted_worker(&store, &clock, |b| {
            b.register(leased_step).register(two_leased_steps)
        });
        let before = LEASED_STEPS.load(Ordering::SeqCst);
        let run = two_leased_steps::start(&worker.client(), 40).await.unwrap();
        assert_eq!(wait("the run", run.wait()).await.unwrap(), 42);
        assert_eq!(
            LEASED_STEPS.load(Ordering::SeqCst) - before,
            2,
            "each step ran once"
        );
        assert_eq!(store.created_leased.load(Ordering::SeqCst), 1);
        assert_eq!(store.fetched.load(Ordering::SeqCst), 0, "no fetch took it");
        assert_eq!(store.episodes(), 1, "one episode commit after the start");
        let h = run.history().await.unwrap();
        assert_eq!(count(&h, "OrchestratorStarted"), 1);
        assert_eq!(count(&h, "TaskCompleted"), 2);
        worker.shutdown().await;
    }
}

static FETCHED_STEPS: AtomicUsize = AtomicUsize::new(0);

#[activity(local)]
async fn fetched_step(n: u32) -> Result<u32, ActivityError> {
    FETCHED_STEPS.fetch_add(1, Ordering::SeqCst);
    Ok(n * 2)
}

#[orchestrator]
async fn one_fetched_step(ctx: OrchestrationContext, n: u32) -> Result<u32, OrchestrationError> {
    Ok(ctx.call(fetched_step, n).await?)
}

/// On a store that leases in process a fetch costs next to nothing (and takes many new
/// instances at once): a start whose first episode runs local steps creates the instance
/// the ordinary way, and the dispatcher fetches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_leasing_is_in_process_a_start_with_local_steps_is_fetched() {
    let store = Counting::new(Arc::new(durable_core::MemoryStore::new()));
    store.in_process.store(true, Ordering::SeqCst);
    let clock = ManualClock::default();
    let worker = counted_worker(&store, &clock, |b| {
        b.register(fetched_step).register(one_fetched_step)
    });
    let run = one_fetched_step::start(&worker.client(), 4).await.unwrap();
    assert_eq!(wait("the run", run.wait()).await.unwrap(), 8);
    assert_eq!(FETCHED_STEPS.load(Ordering::SeqCst), 1);
    assert_eq!(store.created_leased.load(Ordering::SeqCst), 0);
    assert_eq!(
        store.fetched.load(Ordering::SeqCst),
        1,
        "the dispatcher fetched it"
    );
    worker.shutdown().await;
}

static SLOT_HOLDS: AtomicUsize = AtomicUsize::new(0);
static SLOT_RELEASE: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Holds the worker's only orchestration slot until released.
#[activity(local)]
async fn holds_the_slot(_input: ()) -> Result<u32, ActivityError> {
    SLOT_HOLDS.fetch_add(1, Ordering::SeqCst);
    SLOT_RELEASE.notified().await;
    Ok(0)
}

#[orchestrator]
async fn occupies(ctx: OrchestrationContext, _input: ()) -> Result<u32, OrchestrationError> {
    Ok(ctx.call(holds_the_slot, ()).await?)
}

static WAITING_STEPS: AtomicUsize = AtomicUsize::new(0);

#[activity(local)]
async fn waiting_step(n: u32) -> Result<u32, ActivityError> {
    WAITING_STEPS.fetch_add(1, Ordering::SeqCst);
    Ok(n * 3)
}

#[orchestrator]
async fn waits_for_a_slot(ctx: OrchestrationContext, n: u32) -> Result<u32, OrchestrationError> {
    Ok(ctx.call(waiting_step, n).await?)
}

/// A start that finds every orchestration slot taken is still created leased: it waits for
/// a slot in this worker (no other takes it meanwhile) and runs without a fetch once the
/// slot frees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_with_every_slot_taken_waits_leased_for_one() {
    let store = Counting::new(Arc::new(durable_core::MemoryStore::new()));
    let clock = ManualClock::default();
    let worker = counted_worker(&store, &clock, |b| {
        b.max_concurrent_orchestrations(1)
            .register(holds_the_slot)
            .register(occupies)
            .register(waiting_step)
            .register(waits_for_a_slot)
    });
    let client = worker.client();
    let first = client.start(occupies, ()).await.unwrap();
    wait("the slot to be taken", async {
        while SLOT_HOLDS.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let run = client.start(waits_for_a_slot, 7).await.unwrap();
    assert_eq!(store.created_leased.load(Ordering::SeqCst), 2);
    let depths = store
        .queue_depths(clock.as_clock().now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        depths.ready_orchestrations, 0,
        "leased: no other worker takes it"
    );
    assert_eq!(WAITING_STEPS.load(Ordering::SeqCst), 0);
    SLOT_RELEASE.notify_one();
    assert_eq!(wait("the first run", first.wait()).await.unwrap(), 0);
    assert_eq!(wait("the second run", run.wait()).await.unwrap(), 21);
    assert_eq!(WAITING_STEPS.load(Ordering::SeqCst), 1);
    assert_eq!(
        store.fetched.load(Ordering::SeqCst),
        0,
        "neither was fetched"
    );
    worker.shutdown().await;
}

static SHUTDOWN_HOLDS: AtomicUsize = AtomicUsize::new(0);
static SHUTDOWN_RELEASE: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// The first run holds the worker's only orchestration slot until released.
#[activity(local)]
async fn holds_through_shutdown(_input: ()) -> Result<u32, ActivityError> {
    if SHUTDOWN_HOLDS.fetch_add(1, Ordering::SeqCst) == 0 {
        SHUTDOWN_RELEASE.notified().await;
    }
    Ok(0)
}

#[orchestrator]
async fn occupies_through_shutdown(
    ctx: OrchestrationContext,
    _input: (),
) -> Result<u32, OrchestrationError> {
    Ok(ctx.call(holds_through_shutdown, ()).await?)
}

static GIVEN_BACK_STEPS: AtomicUsize = AtomicUsize::new(0);

#[activity(local)]
async fn given_back_step(n: u32) -> Result<u32, ActivityError> {
    GIVEN_BACK_STEPS.fetch_add(1, Ordering::SeqCst);
    Ok(n + 100)
}

#[orchestrator]
async fn given_back(ctx: OrchestrationContext, n: u32) -> Result<u32, OrchestrationError> {
    Ok(ctx.call(given_back_step, n).await?)
}

/// A worker that shuts down before it started the episode of an instance it created leased
/// gives the lease back: another worker takes the instance at once, not when the lease runs
/// out (the clock never moves here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_gives_back_the_leases_of_starts_it_did_not_run() {
    let store = Counting::new(Arc::new(durable_core::MemoryStore::new()));
    let clock = ManualClock::default();
    let configure = |b: WorkerBuilder| {
        b.max_concurrent_orchestrations(1)
            .register(holds_through_shutdown)
            .register(occupies_through_shutdown)
            .register(given_back_step)
            .register(given_back)
    };
    let worker = counted_worker(&store, &clock, configure);
    let client = worker.client();
    client.start(occupies_through_shutdown, ()).await.unwrap();
    wait("the slot to be taken", async {
        while SHUTDOWN_HOLDS.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let run = client.start(given_back, 1).await.unwrap();
    assert_eq!(store.created_leased.load(Ordering::SeqCst), 2);
    let now = clock.as_clock().now();
    let ready = || async {
        store
            .queue_depths(now)
            .await
            .unwrap()
            .unwrap()
            .ready_orchestrations
    };
    assert_eq!(ready().await, 0, "leased to the worker");
    let shutdown = tokio::spawn(worker.shutdown());
    wait("the lease to be given back", async {
        while ready().await == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    SHUTDOWN_RELEASE.notify_one();
    wait("the shutdown", shutdown).await.unwrap();
    assert_eq!(
        GIVEN_BACK_STEPS.load(Ordering::SeqCst),
        0,
        "never ran there"
    );
    let worker = counted_worker(&store, &clock, configure);
    let out = given_back::handle(&worker.client(), run.id().clone());
    assert_eq!(wait("the run", out.wait()).await.unwrap(), 101);
    assert_eq!(GIVEN_BACK_STEPS.load(Ordering::SeqCst), 1);
    worker.shutdown().await;
}

// ------------------------------------------------------------------ retries run locally

static FLAKY_CALLS: AtomicUsize = AtomicUsize::new(0);

#[activity]
async fn flaky(ctx: ActivityContext, _input: ()) -> Result<u32, ActivityError> {
    FLAKY_CALLS.fetch_add(1, Ordering::SeqCst);
    if ctx.attempt < 3 {
        return Err(ActivityError::new(format!(
            "attempt {} failed",
            ctx.attempt
        )));
    }
    Ok(ctx.attempt)
}

#[orchestrator]
async fn retry_locally(
    ctx: OrchestrationContext,
    back_off_secs: u64,
) -> Result<u32, OrchestrationError> {
    let options = CallOptions::new().retry(RetryPolicy::new(5, Duration::from_secs(back_off_secs)));
    Ok(ctx.call_local_with(flaky, (), options).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_local_activity_retries_locally_and_succeeds() {
    let store = Counting::new(Arc::new(MemoryStore::new()));
    let clock = ManualClock::default();
    let worker = counted_worker(&store, &clock, |b| {
        b.register(flaky).register(retry_locally)
    });
    let client = worker.client();

    // Zero back-off: the retries fire within the episode.
    let run = retry_locally::start(&client, 0).await.unwrap();
    assert_eq!(wait("the run", run.wait()).await.unwrap(), 3);
    assert_eq!(FLAKY_CALLS.load(Ordering::SeqCst), 3);
    let h = run.history().await.unwrap();
    assert_eq!(count(&h, "TaskScheduled"), 3);
    assert_eq!(count(&h, "TaskFailed"), 2);
    assert_eq!(count(&h, "TimerCreated"), 2);
    assert_eq!(count(&h, "TimerFired"), 2);
    assert_eq!(store.episodes(), 1, "three attempts, one commit");

    // A real back-off is a durable timer; the attempt it wakes runs locally again.
    let run = retry_locally::start(&client, 10).await.unwrap();
    for n in 1..=2 {
        wait_for_timer(&client, run.id(), n).await;
        clock.advance(Duration::from_secs(10));
    }
    assert_eq!(wait("the run", run.wait()).await.unwrap(), 3);
    assert_eq!(FLAKY_CALLS.load(Ordering::SeqCst), 6);
    assert_eq!(store.tasks_enqueued(), 0, "every attempt ran locally");
    let h = run.history().await.unwrap();
    assert_eq!(count(&h, "TaskFailed"), 2);
    assert_eq!(
        count(&h, "OrchestratorStarted"),
        3,
        "one episode per back-off"
    );
    worker.shutdown().await;
}

async fn wait_for_timer(client: &Client, id: &InstanceId, n: usize) {
    wait("a timer", async {
        loop {
            let h = client.status_with_history(id).await.unwrap().1;
            if count(&h, "TimerCreated") >= n {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
}

// ------------------------------------------------------------------ a panic

#[activity(local)]
async fn explodes(_input: ()) -> Result<u32, ActivityError> {
    panic!("kaboom in a local step");
}

#[orchestrator]
async fn catches(ctx: OrchestrationContext, _input: ()) -> Result<String, OrchestrationError> {
    match ctx.call(explodes, ()).await {
        Ok(v) => Ok(format!("ok {v}")),
        Err(TaskError::Failed(f)) => Ok(format!("failed: {}", f.details.message)),
        Err(e) => Err(e.into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_local_activity_becomes_a_failed_task() {
    let env = start(|b| b.register(explodes).register(catches));
    let run = env.client.start(catches, ()).await.unwrap();
    let out = wait("the run", run.wait()).await.unwrap();
    assert!(out.contains("panicked"), "{out}");
    assert!(out.contains("kaboom in a local step"), "{out}");
    let h = run.history().await.unwrap();
    assert_eq!(count(&h, "TaskFailed"), 1);
    assert_eq!(count(&h, "OrchestratorStarted"), 1);
}

// ------------------------------------------------------------------ the budget

static SLOW_CALLS: [AtomicUsize; 3] = [const { AtomicUsize::new(0) }; 3];

#[derive(Clone)]
struct TestClock(ManualClock);

/// Takes ten seconds of the worker's (manual) clock.
#[activity]
async fn slow(State(clock): State<TestClock>, i: usize) -> Result<usize, ActivityError> {
    SLOW_CALLS[i].fetch_add(1, Ordering::SeqCst);
    clock.0.advance(Duration::from_secs(10));
    Ok(i)
}

#[orchestrator]
async fn slow_chain(ctx: OrchestrationContext, _input: ()) -> Result<usize, OrchestrationError> {
    let mut sum = 0;
    for i in 0..3 {
        sum += ctx.call_local(slow, i).await?;
    }
    Ok(sum)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_budget_the_remaining_steps_run_as_ordinary_tasks() {
    let store = Counting::new(Arc::new(MemoryStore::new()));
    let clock = ManualClock::default();
    let worker = counted_worker(&store, &clock, |b| {
        b.register(slow)
            .register(slow_chain)
            .state(TestClock(clock.clone()))
            .local_activity_budget(Duration::from_secs(1))
    });
    let run = worker.client().start(slow_chain, ()).await.unwrap();
    assert_eq!(wait("the run", run.wait()).await.unwrap(), 3);
    for (i, calls) in SLOW_CALLS.iter().enumerate() {
        assert_eq!(calls.load(Ordering::SeqCst), 1, "step {i} ran once");
    }
    // Step 0 used the first episode's budget: step 1 went to the store as a task; its
    // result woke an episode that ran step 2 locally.
    assert_eq!(store.tasks_enqueued(), 1);
    let h = run.history().await.unwrap();
    assert_eq!(count(&h, "TaskCompleted"), 3);
    assert_eq!(count(&h, "OrchestratorStarted"), 2);
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_not_shorter_than_the_lease_is_refused() {
    let err = Worker::builder()
        .store(MemoryStore::new())
        .orchestration_lock(Duration::from_secs(5))
        .local_activity_budget(Duration::from_secs(5))
        .start()
        .expect_err("refused");
    assert!(
        matches!(err, durable_core::BuildError::LocalActivityBudget { .. }),
        "{err}"
    );
    // Left unset, the budget follows a short lease.
    let worker = Worker::builder()
        .store(MemoryStore::new())
        .orchestration_lock(Duration::from_secs(2))
        .start()
        .expect("a short lease alone is fine");
    worker.shutdown().await;
}

static LEASED_CALLS: [AtomicUsize; 2] = [const { AtomicUsize::new(0) }; 2];

/// Takes three seconds of the worker's (manual) clock.
#[activity]
async fn three_seconds(State(clock): State<TestClock>, i: usize) -> Result<usize, ActivityError> {
    LEASED_CALLS[i].fetch_add(1, Ordering::SeqCst);
    clock.0.advance(Duration::from_secs(3));
    Ok(i)
}

#[orchestrator]
async fn two_slow_steps(
    ctx: OrchestrationContext,
    _input: (),
) -> Result<usize, OrchestrationError> {
    let a = ctx.call_local(three_seconds, 0).await?;
    let b = ctx.call_local(three_seconds, 1).await?;
    Ok(a + b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_follows_the_lease_the_store_grants() {
    // The worker asks for 60 s; the store grants 4 s of its own, so the default budget is
    // 2 s (half of it), not 5 s: the first 3-second step uses it up and the second runs as
    // an ordinary task rather than locally while the lease runs out.
    let store = Counting::new(Arc::new(MemoryStore::new()));
    store.grant_lease(Duration::from_secs(4));
    let clock = ManualClock::default();
    let worker = counted_worker(&store, &clock, |b| {
        b.register(three_seconds)
            .register(two_slow_steps)
            .state(TestClock(clock.clone()))
    });
    let run = worker.client().start(two_slow_steps, ()).await.unwrap();
    assert_eq!(wait("the run", run.wait()).await.unwrap(), 1);
    for (i, calls) in LEASED_CALLS.iter().enumerate() {
        assert_eq!(calls.load(Ordering::SeqCst), 1, "step {i} ran once");
    }
    assert_eq!(store.tasks_enqueued(), 1, "the second step became a task");
    worker.shutdown().await;

    // An explicit budget is checked against the granted lease, not the one asked for.
    let err = Worker::builder()
        .store_arc(Arc::clone(&store) as Arc<dyn Store>)
        .local_activity_budget(Duration::from_secs(10))
        .start()
        .expect_err("a budget longer than the granted lease is refused");
    assert!(
        matches!(
            err,
            durable_core::BuildError::LocalActivityBudget { lease, .. } if lease == Duration::from_secs(4)
        ),
        "{err}"
    );
}

// ------------------------------------------------------------------ replay after a restart

static BEFORE_CALLS: AtomicUsize = AtomicUsize::new(0);

#[activity(local)]
async fn before_event(n: u32) -> Result<u32, ActivityError> {
    BEFORE_CALLS.fetch_add(1, Ordering::SeqCst);
    Ok(n * 10)
}

#[orchestrator]
async fn local_then_event(ctx: OrchestrationContext, n: u32) -> Result<u32, OrchestrationError> {
    let a = ctx.call(before_event, n).await?;
    let b = ctx.call(before_event, n + 1).await?;
    let c: u32 = ctx.wait_for_event("go").await?;
    Ok(a + b + c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_worker_on_the_same_file_does_not_rerun_committed_local_steps() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.redb");
    let clock = ManualClock::default();
    let id = {
        let store = Arc::new(RedbStore::open(&path).unwrap());
        let worker = Worker::builder()
            .store_arc(store)
            .clock(clock.as_clock())
            .register(before_event)
            .register(local_then_event)
            .start()
            .unwrap();
        let run = worker.client().start(local_then_event, 1).await.unwrap();
        let client = worker.client();
        wait("the local steps", async {
            while count(
                &client.status_with_history(run.id()).await.unwrap().1,
                "TaskCompleted",
            ) < 2
            {
                tokio::task::yield_now().await;
            }
        })
        .await;
        worker.shutdown().await;
        run.id().clone()
    };
    assert_eq!(BEFORE_CALLS.load(Ordering::SeqCst), 2);
    let store = Arc::new(RedbStore::open(&path).unwrap());
    let worker = Worker::builder()
        .store_arc(store)
        .clock(clock.as_clock())
        .register(before_event)
        .register(local_then_event)
        .start()
        .unwrap();
    let run = local_then_event::handle(&worker.client(), id);
    run.raise("go", &5).await.unwrap();
    assert_eq!(wait("the run", run.wait()).await.unwrap(), 10 + 20 + 5);
    assert_eq!(
        BEFORE_CALLS.load(Ordering::SeqCst),
        2,
        "replayed, not re-run"
    );
    worker.shutdown().await;
}

// ------------------------------------------------------------------ crash before the commit

static BLOCKING_CALLS: AtomicUsize = AtomicUsize::new(0);
static RELEASE: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// The first run blocks until released (the worker crashes meanwhile).
#[activity(local)]
async fn blocks_first(_input: ()) -> Result<String, ActivityError> {
    if BLOCKING_CALLS.fetch_add(1, Ordering::SeqCst) == 0 {
        RELEASE.notified().await;
    }
    Ok("done".into())
}

#[orchestrator]
async fn crashes_mid_step(
    ctx: OrchestrationContext,
    _input: (),
) -> Result<String, OrchestrationError> {
    Ok(ctx.call(blocks_first, ()).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_the_commit_runs_the_local_step_again() {
    let env = start(|b| b.register(blocks_first).register(crashes_mid_step));
    let run = env.client.start(crashes_mid_step, ()).await.unwrap();
    let id = run.id().clone();
    wait("the step to start", async {
        while BLOCKING_CALLS.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let (store, clock) = (env.store.clone(), env.clock.clone());
    env.worker.abort();
    // Nothing of the lost episode was committed.
    let h = store.read_history(&id).await.unwrap();
    assert_eq!(
        count(&h, "TaskScheduled"),
        0,
        "{}",
        durable_core::history::pretty(&h)
    );
    let env2 = start_on(store, clock, |b| {
        b.register(blocks_first).register(crashes_mid_step)
    });
    env2.clock.advance(Duration::from_secs(120)); // past the episode's lease
    let out = crashes_mid_step::handle(&env2.client, id)
        .wait()
        .await
        .unwrap();
    assert_eq!(out, "done");
    assert_eq!(
        BLOCKING_CALLS.load(Ordering::SeqCst),
        2,
        "ran again: at least once"
    );
    let h = run.history().await.unwrap();
    assert_eq!(count(&h, "TaskScheduled"), 1);
    assert_eq!(count(&h, "TaskCompleted"), 1);
}

// ------------------------------------------------------------------ local and ordinary

static MIXED_LOCAL: AtomicUsize = AtomicUsize::new(0);
static MIXED_REMOTE: AtomicUsize = AtomicUsize::new(0);

#[activity]
async fn double(n: u64) -> Result<u64, ActivityError> {
    MIXED_REMOTE.fetch_add(1, Ordering::SeqCst);
    Ok(n * 2)
}

#[activity(local)]
async fn triple(n: u64) -> Result<u64, ActivityError> {
    MIXED_LOCAL.fetch_add(1, Ordering::SeqCst);
    Ok(n * 3)
}

#[orchestrator]
async fn mixed(ctx: OrchestrationContext, n: u64) -> Result<u64, OrchestrationError> {
    let remote = (0..3).map(|i| ctx.call(double, n + i));
    let local = (0..3).map(|i| ctx.call(triple, n + i));
    let results = ctx.when_all(remote.chain(local)).await;
    let mut sum = 0;
    for r in results {
        sum += r?;
    }
    Ok(sum)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_and_ordinary_activities_mix_in_when_all() {
    let store = Counting::new(Arc::new(MemoryStore::new()));
    let clock = ManualClock::default();
    let worker = counted_worker(&store, &clock, |b| {
        b.register(double).register(triple).register(mixed)
    });
    let run = worker.client().start(mixed, 1).await.unwrap();
    // 2*(1+2+3) + 3*(1+2+3)
    assert_eq!(wait("the run", run.wait()).await.unwrap(), 30);
    assert_eq!(MIXED_LOCAL.load(Ordering::SeqCst), 3);
    assert_eq!(MIXED_REMOTE.load(Ordering::SeqCst), 3);
    assert_eq!(
        store.tasks_enqueued(),
        3,
        "only the ordinary ones are tasks"
    );
    let h = run.history().await.unwrap();
    assert_eq!(count(&h, "TaskScheduled"), 6);
    assert_eq!(count(&h, "TaskCompleted"), 6);
    // The local results are in the first episode, before any ordinary one.
    let first_episode: Vec<&str> = h
        .iter()
        .skip(1)
        .take_while(|e| e.event.kind() != "OrchestratorStarted")
        .map(|e| e.event.kind())
        .collect();
    assert_eq!(
        first_episode
            .iter()
            .filter(|k| **k == "TaskCompleted")
            .count(),
        3,
        "{first_episode:?}"
    );
    worker.shutdown().await;
}

// ------------------------------------------------------------------ not registered here

static ELSEWHERE_CALLS: AtomicUsize = AtomicUsize::new(0);

#[activity(local)]
async fn elsewhere(n: u32) -> Result<u32, ActivityError> {
    ELSEWHERE_CALLS.fetch_add(1, Ordering::SeqCst);
    Ok(n + 1)
}

#[orchestrator]
async fn calls_elsewhere(ctx: OrchestrationContext, n: u32) -> Result<u32, OrchestrationError> {
    Ok(ctx.call(elsewhere, n).await?)
}

/// Not registered on the worker that runs the episode: the step is enqueued as an ordinary
/// task, so it runs wherever activity tasks run (here: a worker that knows neither fails it
/// as unknown, as it would any task).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_activity_not_registered_here_becomes_an_ordinary_task() {
    let store = Counting::new(Arc::new(MemoryStore::new()));
    let clock = ManualClock::default();
    let worker = counted_worker(&store, &clock, |b| b.register(calls_elsewhere));
    let run = worker.client().start(calls_elsewhere, 41).await.unwrap();
    let err = wait("the run", run.wait()).await.unwrap_err().to_string();
    assert!(err.contains("no activity named `elsewhere`"), "{err}");
    assert_eq!(
        store.tasks_enqueued(),
        1,
        "the step went to the store as a task"
    );
    assert_eq!(ELSEWHERE_CALLS.load(Ordering::SeqCst), 0);
    // Registered, it runs locally.
    let worker2 = counted_worker(&store, &clock, |b| {
        b.register(calls_elsewhere).register(elsewhere)
    });
    worker.shutdown().await;
    let run = worker2.client().start(calls_elsewhere, 41).await.unwrap();
    assert_eq!(wait("the run", run.wait()).await.unwrap(), 42);
    assert_eq!(store.tasks_enqueued(), 1, "no further task");
    assert_eq!(ELSEWHERE_CALLS.load(Ordering::SeqCst), 1);
    worker2.shutdown().await;
}

// ------------------------------------------------------------------ zero-length sleeps

#[activity(local)]
async fn tick(n: u32) -> Result<u32, ActivityError> {
    Ok(n + 1)
}

/// A local step, then zero-length sleeps: only the first fires within the episode (right
/// after a local run); the rest are ordinary timers, each an episode of its own.
#[orchestrator]
async fn naps(ctx: OrchestrationContext, n: u32) -> Result<u32, OrchestrationError> {
    let n = ctx.call(tick, n).await?;
    for _ in 0..3 {
        ctx.sleep(Duration::ZERO).await;
    }
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_length_sleeps_after_a_local_step_still_end_the_episode() {
    let env = start(|b| b.register(tick).register(naps));
    let run = env.client.start(naps, 1).await.unwrap();
    assert_eq!(wait("the run", run.wait()).await.unwrap(), 2);
    let h = run.history().await.unwrap();
    assert_eq!(count(&h, "TimerFired"), 3);
    assert_eq!(
        count(&h, "OrchestratorStarted"),
        3,
        "{}",
        durable_core::history::pretty(&h)
    );
}
