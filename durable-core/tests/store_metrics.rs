//! Store, queue and cache metrics (feature `metrics`) through `metrics-util`'s debugging
//! recorder: commit latency and batch size at the stores' commits, the worker's queue gauges
//! against a known store state, and replay-cache hits and misses.
//!
//! The recorder is process-global (the redb store records from its writer thread and from
//! callers' threads), so the tests of this file take turns ([`serial`]) and each reads only
//! what it caused.
#![cfg(feature = "metrics")]

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use async_trait::async_trait;
use durable_core::history::HistoryEvent;
use durable_core::prelude::*;
use durable_core::storage::{
    ActivityTask, ActivityWorkItem, CreateResult, EpisodeCommit, InstancePage, LockToken, Message,
    NewInstance, OrchestrationWorkItem, QueueDepths, StoreSignals,
};
use durable_core::{Event, InstanceQuery, InstanceRecord, RedbStore, Store, StoreError};
use durable_testing::ManualClock;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// Longest a test waits for the engine before failing (a guard against hangs, not timing).
const GUARD: Duration = Duration::from_secs(30);

// ------------------------------------------------------------------------------ recorder

/// Installs the debugging recorder once for this test binary.
fn snapshotter() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("no other recorder in this binary");
        snapshotter
    })
}

/// One test at a time: they share the recorder.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

/// A metric's name with its labels, as `name{key=value,..}`.
fn key_of(key: &metrics::Key) -> String {
    let labels: Vec<String> = key
        .labels()
        .map(|l| format!("{}={}", l.key(), l.value()))
        .collect();
    if labels.is_empty() {
        key.name().to_owned()
    } else {
        format!("{}{{{}}}", key.name(), labels.join(","))
    }
}

/// What the recorder got since the last reading. A snapshot of the debugging recorder
/// drains it (counters and gauges to 0, histograms emptied), so [`Seen::read`] adds each
/// snapshot to what was seen before.
#[derive(Debug, Default)]
struct Seen {
    counters: HashMap<String, u64>,
    /// The last non-zero value each gauge was seen with.
    gauges: HashMap<String, f64>,
    histograms: HashMap<String, Vec<f64>>,
}

impl Seen {
    /// Starts afresh: forgets what the recorder holds now.
    fn reset() -> Self {
        snapshotter().snapshot();
        Self::default()
    }

    fn read(&mut self) {
        for (key, _, _, value) in snapshotter().snapshot().into_vec() {
            let name = key_of(key.key());
            match value {
                DebugValue::Counter(n) => *self.counters.entry(name).or_default() += n,
                DebugValue::Gauge(v) if v.0 != 0.0 => {
                    self.gauges.insert(name, v.0);
                }
                DebugValue::Gauge(_) => {}
                DebugValue::Histogram(values) => self
                    .histograms
                    .entry(name)
                    .or_default()
                    .extend(values.into_iter().map(|v| v.0)),
            }
        }
    }

    fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }

    fn histogram(&self, name: &str) -> &[f64] {
        self.histograms.get(name).map_or(&[], Vec::as_slice)
    }

    fn gauges(&self) -> (Option<f64>, Option<f64>, Option<f64>) {
        let g = |name: &str| self.gauges.get(name).copied();
        (
            g("durable_queue_ready_orchestrations"),
            g("durable_queue_ready_activities"),
            g("durable_queue_timers_due"),
        )
    }
}

// ----------------------------------------------------------------------------- commits

fn id(s: &str) -> InstanceId {
    InstanceId::new(s).unwrap()
}

const T0: Timestamp = Timestamp::from_unix_millis(1_700_000_000_000);

fn raised(name: &str) -> Message {
    Message::new(
        Event::EventRaised {
            name: name.to_owned(),
            input: "null".to_owned(),
        },
        None,
        T0,
    )
}

/// Every redb group commit is timed, and its batch size is the number of writes it
/// applied: sequential writes commit one by one; concurrent ones may share commits, and
/// the sizes add up to the writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_group_commits_are_timed_and_sized() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path().join("store.redb")).unwrap();
    let mut seen = Seen::reset();

    for i in 0..5 {
        let new = NewInstance::new(id(&format!("i{i}")), "Job", "null".into(), T0);
        let created = store.create_instance(new).await.unwrap();
        assert!(matches!(created, CreateResult::Created(_)));
    }
    seen.read();
    let seconds = seen.histogram("durable_store_commit_seconds{store=redb}");
    assert_eq!(
        seconds.len(),
        5,
        "one commit per sequential write: {seen:?}"
    );
    assert!(
        seconds
            .iter()
            .all(|s| *s >= 0.0 && *s < GUARD.as_secs_f64())
    );
    assert_eq!(
        seen.histogram("durable_store_commit_batch_size{store=redb}"),
        [1.0; 5]
    );

    let mut seen = Seen::reset();
    let writes = (0..64).map(|n| {
        let store = store.clone();
        async move {
            store
                .send_message(&id(&format!("i{}", n % 5)), raised("ping"))
                .await
        }
    });
    for r in futures_join_all(writes).await {
        r.unwrap();
    }
    seen.read();
    let sizes = seen.histogram("durable_store_commit_batch_size{store=redb}");
    assert_eq!(
        sizes.iter().map(|s| *s as u64).sum::<u64>(),
        64,
        "every write is in one commit: {sizes:?}"
    );
    assert!(sizes.iter().all(|s| (1.0..=64.0).contains(s)), "{sizes:?}");
    assert_eq!(
        seen.histogram("durable_store_commit_seconds{store=redb}")
            .len(),
        sizes.len(),
        "one latency per commit"
    );
}

/// Runs futures concurrently on the runtime and collects their outputs in order.
async fn futures_join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

/// The Postgres store's episode and activity commits are timed (when a test database is
/// set).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_commits_are_timed() {
    let Some(url) = std::env::var("DURABLE_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        eprintln!("skipped: DURABLE_TEST_POSTGRES_URL is not set");
        return;
    };
    let _serial = serial().await;
    let hub = format!("durable_test_{}", &InstanceId::random().as_str()[..16]);
    let pg = durable_core::PostgresStore::connect(&url, durable_core::PostgresOptions::new(hub))
        .await
        .unwrap();
    let mut seen = Seen::reset();
    pg.create_instance(NewInstance::new(id("a"), "Job", "null".into(), T0))
        .await
        .unwrap();
    let item = pg
        .fetch_orchestration_work(T0, Duration::from_secs(60))
        .await
        .unwrap()
        .expect("work for `a`");
    let mut commit = EpisodeCommit::new(id("a"), item.lock, RuntimeStatus::Running, T0);
    commit.consumed = item.messages.iter().map(|m| m.id).collect();
    commit.activities = vec![ActivityTask::new(id("a"), 1, 0, "step", "1".into())];
    pg.commit_episode(commit).await.unwrap();
    let task = pg
        .fetch_activity_work(T0, Duration::from_secs(60), 1)
        .await
        .unwrap()
        .pop()
        .expect("the task");
    let done = Message::new(
        Event::TaskCompleted {
            seq: 0,
            result: "2".into(),
        },
        Some(1),
        T0,
    );
    pg.complete_activity(task.id, task.lock, done)
        .await
        .unwrap();
    seen.read();
    pg.drop_task_hub().await.unwrap();
    assert_eq!(
        seen.histogram("durable_store_commit_seconds{store=postgres}")
            .len(),
        2,
        "the episode commit and the activity completion: {seen:?}"
    );
}

// ------------------------------------------------------------------------ queue gauges

/// A store whose work no worker can take: fetches find nothing and nothing wakes the
/// dispatchers, while the test changes the store underneath and the worker reads its queue
/// depths.
#[derive(Debug)]
struct Untaken(MemoryStore);

#[async_trait]
impl Store for Untaken {
    async fn create_instance(&self, new: NewInstance) -> Result<CreateResult, StoreError> {
        self.0.create_instance(new).await
    }
    async fn send_message(&self, id: &InstanceId, m: Message) -> Result<(), StoreError> {
        self.0.send_message(id, m).await
    }
    async fn fetch_orchestration_work(
        &self,
        _now: Timestamp,
        _lock_for: Duration,
    ) -> Result<Option<OrchestrationWorkItem>, StoreError> {
        Ok(None)
    }
    async fn commit_episode(&self, commit: EpisodeCommit) -> Result<(), StoreError> {
        self.0.commit_episode(commit).await
    }
    async fn abandon_episode(
        &self,
        id: &InstanceId,
        lock: LockToken,
        retry_at: Timestamp,
        error: Option<String>,
    ) -> Result<(), StoreError> {
        self.0.abandon_episode(id, lock, retry_at, error).await
    }
    async fn fetch_activity_work(
        &self,
        _now: Timestamp,
        _lock_for: Duration,
        _max: usize,
    ) -> Result<Vec<ActivityWorkItem>, StoreError> {
        Ok(Vec::new())
    }
    async fn complete_activity(
        &self,
        id: u64,
        lock: LockToken,
        result: Message,
    ) -> Result<(), StoreError> {
        self.0.complete_activity(id, lock, result).await
    }
    async fn abandon_activity(
        &self,
        id: u64,
        lock: LockToken,
        retry_at: Timestamp,
    ) -> Result<(), StoreError> {
        self.0.abandon_activity(id, lock, retry_at).await
    }
    async fn renew_activity_lock(
        &self,
        id: u64,
        lock: LockToken,
        until: Timestamp,
    ) -> Result<(), StoreError> {
        self.0.renew_activity_lock(id, lock, until).await
    }
    async fn next_wake_time(&self) -> Result<Option<Timestamp>, StoreError> {
        Ok(None)
    }
    async fn queue_depths(&self, now: Timestamp) -> Result<Option<QueueDepths>, StoreError> {
        self.0.queue_depths(now).await
    }
    async fn read_instance(&self, id: &InstanceId) -> Result<Option<InstanceRecord>, StoreError> {
        self.0.read_instance(id).await
    }
    async fn read_history(&self, id: &InstanceId) -> Result<Vec<HistoryEvent>, StoreError> {
        self.0.read_history(id).await
    }
    async fn query_instances(&self, q: &InstanceQuery) -> Result<InstancePage, StoreError> {
        self.0.query_instances(q).await
    }
    async fn purge_instance(&self, id: &InstanceId) -> Result<bool, StoreError> {
        self.0.purge_instance(id).await
    }
    async fn purge_finished_instance(
        &self,
        id: &InstanceId,
        finished_by: Timestamp,
    ) -> Result<bool, StoreError> {
        self.0.purge_finished_instance(id, finished_by).await
    }
    fn signals(&self) -> &StoreSignals {
        self.0.signals()
    }
}

/// Reads the recorder until the three queue gauges show `want`.
async fn gauges_reach(seen: &mut Seen, want: (f64, f64, f64)) {
    let settled = async {
        loop {
            seen.read();
            if seen.gauges() == (Some(want.0), Some(want.1), Some(want.2)) {
                return;
            }
            tokio::task::yield_now().await;
        }
    };
    let settled = tokio::time::timeout(GUARD, settled).await.is_ok();
    assert!(settled, "the queue gauges never showed {want:?}: {seen:?}");
}

/// The worker's queue gauges show the store's depths at start and again every interval on
/// the worker's clock: here 2 ready instances (one with a due timer), 3 ready activity
/// tasks; then, with a task leased and 5 s later, a second timer due.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_gauges_show_the_store_depths_on_the_worker_clock() {
    let _serial = serial().await;
    let clock = ManualClock::new(T0);
    let memory = MemoryStore::new();
    for name in ["x", "y"] {
        memory
            .create_instance(NewInstance::new(id(name), "Job", "null".into(), T0))
            .await
            .unwrap();
    }
    let x = memory
        .fetch_orchestration_work(T0, Duration::from_secs(3600))
        .await
        .unwrap()
        .expect("work for `x`");
    let mut commit = EpisodeCommit::new(id("x"), x.lock, RuntimeStatus::Running, T0);
    commit.consumed = x.messages.iter().map(|m| m.id).collect();
    commit.activities = (0..3)
        .map(|seq| ActivityTask::new(id("x"), 1, seq, "step", "1".into()))
        .collect();
    let timer = |seq, fire_at| Message::new(Event::TimerFired { seq, fire_at }, Some(1), fire_at);
    let in_5s = T0 + Duration::from_secs(5);
    commit.messages = vec![(id("x"), timer(3, T0)), (id("y"), timer(0, in_5s))];
    memory.commit_episode(commit).await.unwrap();

    let mut seen = Seen::reset();
    let worker = Worker::builder()
        .store(Untaken(memory.clone()))
        .clock(clock.as_clock())
        .queue_depth_interval(Some(Duration::from_secs(5)))
        .start()
        .unwrap();
    gauges_reach(&mut seen, (2.0, 3.0, 1.0)).await;

    let leased = memory
        .fetch_activity_work(T0, Duration::from_secs(3600), 1)
        .await
        .unwrap();
    assert_eq!(leased.len(), 1);
    let mut seen = Seen::reset();
    clock.advance(Duration::from_secs(5));
    gauges_reach(&mut seen, (2.0, 2.0, 2.0)).await;

    // The gauge task stops with the worker (shutdown waits for it).
    tokio::time::timeout(GUARD, worker.shutdown())
        .await
        .expect("the worker shuts down");
}

// ------------------------------------------------------------------------------- cache

#[activity]
async fn add_one(n: u32) -> Result<u32, ActivityError> {
    Ok(n + 1)
}

#[orchestrator]
async fn count_to_three(ctx: OrchestrationContext, _input: ()) -> Result<u32, OrchestrationError> {
    let mut n = 0;
    for _ in 0..3 {
        n = ctx.call(add_one, n).await?;
    }
    Ok(n)
}

/// Runs `count_to_three` (four episodes: the start and one per result) on a worker with
/// `cache` live orchestrations, and returns (hits, misses).
async fn cache_counts(cache: usize) -> (u64, u64) {
    let mut seen = Seen::reset();
    let worker = Worker::builder()
        .store(MemoryStore::new())
        .cache_capacity(cache)
        .register(add_one)
        .register(count_to_three)
        .start()
        .unwrap();
    let run = count_to_three::start(&worker.client(), ()).await.unwrap();
    let out = tokio::time::timeout(GUARD, run.wait())
        .await
        .expect("the run finishes")
        .unwrap();
    assert_eq!(out, 3);
    worker.shutdown().await;
    seen.read();
    (
        seen.counter("durable_cache_hits_total"),
        seen.counter("durable_cache_misses_total"),
    )
}

/// An episode that finds its orchestration in the cache is a hit; one that reads the
/// history and replays it (the first episode, or every one without a cache) is a miss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_cache_hits_and_misses_are_counted() {
    let _serial = serial().await;
    assert_eq!(
        cache_counts(100).await,
        (3, 1),
        "cached after the first episode"
    );
    assert_eq!(
        cache_counts(0).await,
        (0, 4),
        "no cache: every episode replays"
    );
}
