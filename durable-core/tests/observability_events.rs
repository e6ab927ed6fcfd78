//! Lifecycle events (`durable::lifecycle`) and worker metrics: each real occurrence is
//! reported exactly once, whether episodes replay from the cache, replay from history every
//! time, or run on a second worker after a restart on the same redb file.
//!
//! The capture is thread-local (`tracing::subscriber::set_default`, a local metrics
//! recorder): each test runs its workers on a current-thread runtime, so everything they
//! emit lands in that test's capture and nothing of the other tests does.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use durable_core::RedbStore;
use durable_core::prelude::*;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

const TARGET: &str = "durable::lifecycle";
/// Longest a test waits for the engine (a guard against hangs, not a timing assertion).
const GUARD: Duration = Duration::from_secs(30);

// ------------------------------------------------------------------------------ capture

#[derive(Debug, Clone)]
struct Captured {
    level: tracing::Level,
    message: String,
    fields: BTreeMap<String, String>,
}

impl Captured {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

/// Records every `durable::lifecycle` event, and bumps `seen` after each.
#[derive(Clone)]
struct Capture {
    events: Arc<Mutex<Vec<Captured>>>,
    seen: Arc<watch::Sender<usize>>,
}

struct Fields<'a>(&'a mut Captured);

impl tracing::field::Visit for Fields<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.put(field, value.to_owned());
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.put(field, value.to_string());
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.put(field, value.to_string());
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.put(field, value.to_string());
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.put(field, format!("{value:?}"));
    }
}

impl Fields<'_> {
    fn put(&mut self, field: &tracing::field::Field, value: String) {
        if field.name() == "message" {
            self.0.message = value;
        } else {
            self.0.fields.insert(field.name().to_owned(), value);
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _cx: Context<'_, S>) {
        if event.metadata().target() != TARGET {
            return;
        }
        let mut c = Captured {
            level: *event.metadata().level(),
            message: String::new(),
            fields: BTreeMap::new(),
        };
        event.record(&mut Fields(&mut c));
        self.events.lock().unwrap().push(c);
        self.seen.send_modify(|n| *n += 1);
    }
}

impl Capture {
    fn new() -> Self {
        Self {
            events: Arc::default(),
            seen: Arc::new(watch::channel(0).0),
        }
    }

    fn events(&self) -> Vec<Captured> {
        self.events.lock().unwrap().clone()
    }

    /// The events with this message about this instance.
    fn about(&self, message: &str, instance: &str) -> Vec<Captured> {
        self.events()
            .into_iter()
            .filter(|e| e.message == message && e.field("instance_id") == Some(instance))
            .collect()
    }

    /// Waits until `pred` holds for the events captured so far.
    async fn wait_for(&self, what: &str, pred: impl Fn(&[Captured]) -> bool) {
        let mut seen = self.seen.subscribe();
        let wait = async {
            loop {
                if pred(&self.events()) {
                    return;
                }
                seen.changed().await.unwrap();
            }
        };
        let done = tokio::time::timeout(GUARD, wait).await.is_ok();
        assert!(
            done,
            "gave up waiting for {what}; captured: {:#?}",
            self.events()
        );
    }
}

/// The metrics recorded, taken at once (taking a snapshot resets the recorder's values).
struct Metrics(Vec<(metrics::Key, DebugValue)>);

impl Metrics {
    fn take(snapshotter: &Snapshotter) -> Self {
        Self(
            snapshotter
                .snapshot()
                .into_vec()
                .into_iter()
                .map(|(k, _, _, v)| (k.key().clone(), v))
                .collect(),
        )
    }

    /// A counter's count, a gauge's (whole) value or a histogram's number of samples, for the
    /// series with exactly these labels (0 when there is none).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let mut want = labels.to_vec();
        want.sort_unstable();
        let mut total = 0;
        for (key, value) in &self.0 {
            let mut have: Vec<(&str, &str)> = key.labels().map(|l| (l.key(), l.value())).collect();
            have.sort_unstable();
            if key.name() != name || have != want {
                continue;
            }
            total += match value {
                DebugValue::Counter(n) => *n,
                DebugValue::Gauge(g) => g.into_inner().round() as u64,
                DebugValue::Histogram(h) => h.len() as u64,
            };
        }
        total
    }
}

// ------------------------------------------------------------------------------ the flow

#[derive(Clone, Copy)]
struct Flaky;
impl Activity for Flaky {
    const NAME: &'static str = "flaky";
    type Input = ();
    type Output = u32;
    type Error = ActivityError;
    async fn run(&self, ctx: ActivityContext, (): ()) -> Result<u32, ActivityError> {
        if ctx.attempt == 1 {
            return Err(ActivityError::new("flaky failure"));
        }
        Ok(ctx.attempt)
    }
}

#[derive(Clone, Copy)]
struct Broken;
impl Activity for Broken {
    const NAME: &'static str = "broken";
    type Input = ();
    type Output = ();
    type Error = ActivityError;
    async fn run(&self, _ctx: ActivityContext, (): ()) -> Result<(), ActivityError> {
        Err(ActivityError::new("always broken"))
    }
}

#[entity]
#[derive(Default, Serialize, Deserialize, Debug)]
struct Tally {
    value: i64,
}

#[entity]
impl Tally {
    fn add(&mut self, amount: i64) -> i64 {
        self.value += amount;
        self.value
    }
}

/// A retried activity, a timer, an entity call, then an external event.
#[derive(Clone, Copy)]
struct MainFlow;
impl Orchestrator for MainFlow {
    const NAME: &'static str = "main_flow";
    type Input = ();
    type Output = u32;
    type Error = OrchestrationError;
    async fn run(ctx: OrchestrationContext, (): ()) -> Result<u32, OrchestrationError> {
        let attempts = ctx
            .call_with_retry(Flaky, (), RetryPolicy::new(3, Duration::from_millis(5)))
            .await?;
        ctx.sleep(Duration::from_millis(5)).await;
        let total = ctx.entity::<Tally>("t1").add(2).await?;
        ctx.set_custom_status("waiting")?;
        let go: u32 = ctx.wait_for_event("go").await?;
        Ok(attempts + total as u32 + go)
    }
}

/// Fails after an activity failure it does not retry.
#[derive(Clone, Copy)]
struct Failing;
impl Orchestrator for Failing {
    const NAME: &'static str = "failing";
    type Input = ();
    type Output = ();
    type Error = OrchestrationError;
    async fn run(ctx: OrchestrationContext, (): ()) -> Result<(), OrchestrationError> {
        if ctx.call(Broken, ()).await.is_err() {
            return Err(OrchestrationError::new("gave up"));
        }
        Ok(())
    }
}

/// Waits for an event that never comes (it is suspended, resumed and terminated).
#[derive(Clone, Copy)]
struct Waiter;
impl Orchestrator for Waiter {
    const NAME: &'static str = "waiter";
    type Input = ();
    type Output = ();
    type Error = OrchestrationError;
    async fn run(ctx: OrchestrationContext, (): ()) -> Result<(), OrchestrationError> {
        ctx.wait_for_event::<()>("never").await?;
        Ok(())
    }
}

/// Continues as new once.
#[derive(Clone, Copy)]
struct Looper;
impl Orchestrator for Looper {
    const NAME: &'static str = "looper";
    type Input = u32;
    type Output = u32;
    type Error = OrchestrationError;
    async fn run(ctx: OrchestrationContext, n: u32) -> Result<u32, OrchestrationError> {
        if n == 0 {
            return ctx.continue_as_new(1).await;
        }
        Ok(n)
    }
}

fn start_worker(path: &Path, cache: bool) -> Worker {
    let store = RedbStore::open(path).expect("the store opens");
    let mut builder = Worker::builder()
        .store(store)
        .activity(Flaky)
        .activity(Broken)
        .register(Tally::entity())
        .orchestrator(MainFlow)
        .orchestrator(Failing)
        .orchestrator(Waiter)
        .orchestrator(Looper);
    if !cache {
        builder = builder.cache_capacity(0);
    }
    builder.start().expect("the worker starts")
}

fn id(s: &str) -> InstanceId {
    InstanceId::new(s).unwrap()
}

async fn wait_record(
    client: &Client,
    instance: &str,
    pred: impl FnMut(&durable_core::InstanceRecord) -> bool,
) {
    client
        .wait_until(&id(instance), pred, GUARD)
        .await
        .unwrap_or_else(|e| panic!("{instance}: {e}"));
}

/// Runs the whole flow; with `restart`, the first worker stops while `main` waits for its
/// event and `waiter` is suspended, and a second worker on the same file finishes.
async fn run_flow(cache: bool, restart: bool) -> (Capture, Snapshotter) {
    let capture = Capture::new();
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    let _events = tracing::subscriber::set_default(subscriber);
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _metrics = metrics::set_default_local_recorder(&recorder);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let mut worker = start_worker(&path, cache);
    let mut client = worker.client();
    let start = |name: &str| StartOptions::new().instance_id(id(name));
    client
        .start_with(MainFlow, (), start("main"))
        .await
        .unwrap();
    client
        .start_with(Failing, (), start("failing"))
        .await
        .unwrap();
    client
        .start_with(Waiter, (), start("waiter"))
        .await
        .unwrap();
    client.start_with(Looper, 0, start("looper")).await.unwrap();

    wait_record(&client, "main", |r| r.custom_status.is_some()).await;
    wait_record(&client, "failing", |r| r.status.is_terminal()).await;
    wait_record(&client, "looper", |r| r.status.is_terminal()).await;
    client.suspend(&id("waiter"), "pause").await.unwrap();
    wait_record(&client, "waiter", |r| r.status == RuntimeStatus::Suspended).await;

    if restart {
        worker.shutdown().await;
        drop(client);
        worker = start_worker(&path, cache);
        client = worker.client();
    }

    client.raise_event(&id("main"), "go", &10u32).await.unwrap();
    client.resume(&id("waiter"), "go on").await.unwrap();
    wait_record(&client, "waiter", |r| r.status == RuntimeStatus::Running).await;
    client.terminate(&id("waiter"), "enough").await.unwrap();
    let main = client.handle::<u32>(id("main"));
    // 2 attempts + a tally of 2 + the event's 10.
    assert_eq!(main.wait().await.unwrap(), 14);
    wait_record(&client, "waiter", |r| r.status.is_terminal()).await;
    worker.shutdown().await;
    (capture, snapshotter)
}

/// Exactly these lifecycle events, each once: (level, message, instance id, execution).
fn expected_events() -> Vec<(tracing::Level, &'static str, &'static str, Option<u32>)> {
    use tracing::Level;
    let mut v = vec![
        (Level::INFO, "instance started", "main", Some(1)),
        (Level::WARN, "activity failed", "main", Some(1)),
        (Level::DEBUG, "timer created", "main", Some(1)),
        (Level::DEBUG, "timer fired", "main", Some(1)),
        (Level::DEBUG, "timer created", "main", Some(1)),
        (Level::DEBUG, "timer fired", "main", Some(1)),
        (Level::DEBUG, "entity operation", "@tally@t1", None),
        (Level::DEBUG, "event raised", "main", None),
        (Level::DEBUG, "event delivered", "main", Some(1)),
        (Level::INFO, "instance completed", "main", Some(1)),
        (Level::INFO, "instance started", "failing", Some(1)),
        (Level::WARN, "activity failed", "failing", Some(1)),
        (Level::INFO, "instance failed", "failing", Some(1)),
        (Level::INFO, "instance started", "waiter", Some(1)),
        (Level::INFO, "instance suspended", "waiter", Some(1)),
        (Level::INFO, "instance resumed", "waiter", Some(1)),
        (Level::INFO, "instance terminated", "waiter", Some(1)),
        (Level::INFO, "instance started", "looper", Some(1)),
        (Level::INFO, "instance continued as new", "looper", Some(1)),
        (Level::INFO, "instance started", "looper", Some(2)),
        (Level::INFO, "instance completed", "looper", Some(2)),
    ];
    v.sort();
    v
}

fn check_events(capture: &Capture) {
    let mut got: Vec<_> = capture
        .events()
        .iter()
        .map(|e| {
            let instance = e.field("instance_id").unwrap_or("?").to_owned();
            let execution = e.field("execution").map(|x| x.parse::<u32>().unwrap());
            (e.level, e.message.clone(), instance, execution)
        })
        .collect();
    got.sort();
    let want: Vec<_> = expected_events()
        .into_iter()
        .map(|(l, m, i, x)| (l, m.to_owned(), i.to_owned(), x))
        .collect();
    assert_eq!(
        got,
        want,
        "lifecycle events differ; captured: {:#?}",
        capture.events()
    );

    // The fields of each.
    let started = &capture.about("instance started", "main")[0];
    assert_eq!(started.field("orchestrator"), Some("main_flow"));

    let retried = &capture.about("activity failed", "main")[0];
    assert_eq!(retried.field("activity"), Some("flaky"));
    assert_eq!(retried.field("orchestrator"), Some("main_flow"));
    assert_eq!(retried.field("attempt"), Some("1"));
    assert_eq!(retried.field("retrying"), Some("true"));
    assert_eq!(retried.field("retry_in_ms"), Some("5"));
    assert_eq!(retried.field("failure"), Some("flaky failure"));
    assert!(retried.field("failure_type").is_some());

    let given_up = &capture.about("activity failed", "failing")[0];
    assert_eq!(given_up.field("activity"), Some("broken"));
    assert_eq!(given_up.field("retrying"), Some("false"));
    assert_eq!(given_up.field("retry_in_ms"), None);
    assert_eq!(given_up.field("failure"), Some("always broken"));

    let failed = &capture.about("instance failed", "failing")[0];
    assert_eq!(failed.field("failure"), Some("gave up"));
    assert!(failed.field("failure_type").is_some());
    assert!(failed.field("duration_ms").is_some());

    let completed = &capture.about("instance completed", "main")[0];
    assert!(completed.field("duration_ms").is_some());
    assert!(
        capture.about("instance completed", "looper")[0]
            .field("duration_ms")
            .is_some()
    );
    assert!(
        capture.about("instance continued as new", "looper")[0]
            .field("duration_ms")
            .is_some()
    );

    let reason = |message, want| {
        assert_eq!(
            capture.about(message, "waiter")[0].field("reason"),
            Some(want),
            "{message}"
        );
    };
    reason("instance suspended", "pause");
    reason("instance resumed", "go on");
    reason("instance terminated", "enough");

    let op = &capture.about("entity operation", "@tally@t1")[0];
    assert_eq!(op.field("entity"), Some("tally"));
    assert_eq!(op.field("operation"), Some("add"));
    assert_eq!(op.field("outcome"), Some("completed"));
    assert_eq!(op.field("signal"), Some("false"));

    for message in ["event raised", "event delivered"] {
        assert_eq!(
            capture.about(message, "main")[0].field("event"),
            Some("go"),
            "{message}"
        );
    }
    let fired: Vec<_> = capture
        .about("timer fired", "main")
        .iter()
        .map(|e| e.field("seq").unwrap().to_owned())
        .collect();
    let created: Vec<_> = capture
        .about("timer created", "main")
        .iter()
        .map(|e| e.field("seq").unwrap().to_owned())
        .collect();
    assert_eq!(fired, created, "each timer created fires once");
}

fn check_metrics(snapshotter: &Snapshotter) {
    let m = Metrics::take(snapshotter);
    let count = |name, labels: &[(&str, &str)]| m.get(name, labels);
    let started = "durable_instances_started_total";
    assert_eq!(count(started, &[("orchestrator", "main_flow")]), 1);
    assert_eq!(count(started, &[("orchestrator", "failing")]), 1);
    assert_eq!(count(started, &[("orchestrator", "waiter")]), 1);
    assert_eq!(count(started, &[("orchestrator", "looper")]), 2);

    let finished = "durable_instances_finished_total";
    let ended = |o, s| count(finished, &[("orchestrator", o), ("status", s)]);
    assert_eq!(ended("main_flow", "completed"), 1);
    assert_eq!(ended("failing", "failed"), 1);
    assert_eq!(ended("waiter", "terminated"), 1);
    assert_eq!(ended("looper", "continued_as_new"), 1);
    assert_eq!(ended("looper", "completed"), 1);
    let durations = "durable_instance_duration_seconds";
    assert_eq!(
        count(
            durations,
            &[("orchestrator", "main_flow"), ("status", "completed")]
        ),
        1
    );

    let runs = "durable_activities_total";
    let ran = |a, o| count(runs, &[("activity", a), ("outcome", o)]);
    assert_eq!(ran("flaky", "failed"), 1);
    assert_eq!(ran("flaky", "completed"), 1);
    assert_eq!(ran("broken", "failed"), 1);
    assert_eq!(
        count(
            "durable_activity_duration_seconds",
            &[("activity", "flaky"), ("outcome", "completed")]
        ),
        1
    );
    assert_eq!(
        count("durable_activity_retries_total", &[("activity", "flaky")]),
        1
    );
    assert_eq!(
        count("durable_activity_retries_total", &[("activity", "broken")]),
        0
    );
    assert_eq!(
        count(
            "durable_entity_operations_total",
            &[("entity", "tally"), ("outcome", "completed")]
        ),
        1
    );
    // Episodes batch differently from run to run; each orchestrator has some, each timed.
    for o in ["main_flow", "failing", "waiter", "looper"] {
        let episodes = count("durable_episodes_total", &[("orchestrator", o)]);
        assert!(episodes >= 1, "{o}: {episodes} episodes");
        assert_eq!(
            count("durable_episode_duration_seconds", &[("orchestrator", o)]),
            episodes
        );
    }
    assert_eq!(count("durable_stuck_episodes_total", &[]), 0);
}

#[tokio::test]
async fn lifecycle_events_once_with_the_cache() {
    let (capture, metrics) = run_flow(true, false).await;
    check_events(&capture);
    check_metrics(&metrics);
}

#[tokio::test]
async fn lifecycle_events_once_when_every_episode_replays() {
    let (capture, metrics) = run_flow(false, false).await;
    check_events(&capture);
    check_metrics(&metrics);
}

#[tokio::test]
async fn lifecycle_events_once_across_a_restart() {
    let (capture, metrics) = run_flow(true, true).await;
    check_events(&capture);
    check_metrics(&metrics);
}

#[tokio::test]
async fn lifecycle_events_once_across_a_restart_without_cache() {
    let (capture, metrics) = run_flow(false, true).await;
    check_events(&capture);
    check_metrics(&metrics);
}

// ------------------------------------------------------------------------------ stuck

#[derive(Clone, Copy)]
struct Step;
impl Activity for Step {
    const NAME: &'static str = "step";
    type Input = u32;
    type Output = u32;
    type Error = ActivityError;
    async fn run(&self, _ctx: ActivityContext, i: u32) -> Result<u32, ActivityError> {
        Ok(i + 1)
    }
}

/// The code as first deployed: an activity, then an event.
#[derive(Clone, Copy)]
struct DriftBefore;
impl Orchestrator for DriftBefore {
    const NAME: &'static str = "drift";
    type Input = ();
    type Output = u32;
    type Error = OrchestrationError;
    async fn run(ctx: OrchestrationContext, (): ()) -> Result<u32, OrchestrationError> {
        let n = ctx.call(Step, 1).await?;
        ctx.set_custom_status("waiting")?;
        let go: u32 = ctx.wait_for_event("go").await?;
        Ok(n + go)
    }
}

/// The same orchestrator changed incompatibly: a timer where the activity was.
#[derive(Clone, Copy)]
struct DriftAfter;
impl Orchestrator for DriftAfter {
    const NAME: &'static str = "drift";
    type Input = ();
    type Output = u32;
    type Error = OrchestrationError;
    async fn run(ctx: OrchestrationContext, (): ()) -> Result<u32, OrchestrationError> {
        ctx.sleep(Duration::from_millis(1)).await;
        let go: u32 = ctx.wait_for_event("go").await?;
        Ok(go)
    }
}

fn drift_worker(path: &Path, changed: bool) -> Worker {
    let store = RedbStore::open(path).expect("the store opens");
    let builder = Worker::builder()
        .store(store)
        .activity(Step)
        .cache_capacity(0)
        .max_stuck_backoff(Duration::from_millis(1));
    let builder = if changed {
        builder.orchestrator(DriftAfter)
    } else {
        builder.orchestrator(DriftBefore)
    };
    builder.start().expect("the worker starts")
}

fn count_of(events: &[Captured], message: &str) -> usize {
    events.iter().filter(|e| e.message == message).count()
}

#[tokio::test]
async fn nondeterminism_is_an_error_once_then_debug_on_each_retry_and_after_a_restart() {
    let capture = Capture::new();
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    let _events = tracing::subscriber::set_default(subscriber);
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _metrics = metrics::set_default_local_recorder(&recorder);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");

    let worker = drift_worker(&path, false);
    let client = worker.client();
    client
        .start_with(
            DriftBefore,
            (),
            StartOptions::new().instance_id(id("drift")),
        )
        .await
        .unwrap();
    wait_record(&client, "drift", |r| r.custom_status.is_some()).await;
    worker.shutdown().await;
    drop(client);

    // The changed code cannot replay the history: stuck, retried every millisecond.
    let worker = drift_worker(&path, true);
    worker
        .client()
        .raise_event(&id("drift"), "go", &1u32)
        .await
        .unwrap();
    capture
        .wait_for("three retries", |e| {
            count_of(e, "instance still stuck") >= 3
        })
        .await;
    let m = Metrics::take(&snapshotter);
    let stuck_episodes = m.get("durable_stuck_episodes_total", &[]);
    assert!(stuck_episodes >= 4, "{stuck_episodes} stuck episodes");
    assert_eq!(m.get("durable_stuck_instances", &[]), 1);
    worker.shutdown().await;
    // A stopped worker holds nothing stuck any more.
    let m = Metrics::take(&snapshotter);
    assert_eq!(m.get("durable_stuck_instances", &[]), 0);

    // Another worker with the same code: the diagnostic is the one already reported.
    let worker = drift_worker(&path, true);
    let before = count_of(&capture.events(), "instance still stuck");
    capture
        .wait_for("a retry on the new worker", |e| {
            count_of(e, "instance still stuck") > before
        })
        .await;
    worker.shutdown().await;

    let errors: Vec<_> = capture
        .events()
        .into_iter()
        .filter(|e| e.level == tracing::Level::ERROR)
        .collect();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let error = &errors[0];
    assert_eq!(error.message, "non-determinism detected; instance stuck");
    assert_eq!(error.field("instance_id"), Some("drift"));
    let diagnostic = error.field("diagnostic").unwrap();
    assert!(diagnostic.contains("non-determinism"), "{diagnostic}");
    assert!(error.field("retry_in_ms").is_some());
    let retries = capture.about("instance still stuck", "drift");
    assert!(
        retries
            .iter()
            .all(|e| e.level == tracing::Level::DEBUG && e.field("diagnostic") == Some(diagnostic))
    );
}

// ------------------------------------------------------------------------------ rewind

static FIXED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[derive(Clone, Copy)]
struct Fixable;
impl Activity for Fixable {
    const NAME: &'static str = "fixable";
    type Input = ();
    type Output = u32;
    type Error = ActivityError;
    async fn run(&self, _ctx: ActivityContext, (): ()) -> Result<u32, ActivityError> {
        if FIXED.load(std::sync::atomic::Ordering::SeqCst) {
            Ok(7)
        } else {
            Err(ActivityError::new("not yet"))
        }
    }
}

#[derive(Clone, Copy)]
struct Fragile;
impl Orchestrator for Fragile {
    const NAME: &'static str = "fragile";
    type Input = ();
    type Output = u32;
    type Error = OrchestrationError;
    async fn run(ctx: OrchestrationContext, (): ()) -> Result<u32, OrchestrationError> {
        Ok(ctx.call(Fixable, ()).await?)
    }
}

#[tokio::test]
async fn a_rewind_is_reported_once_and_the_failure_before_it_is_not_repeated() {
    let capture = Capture::new();
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    let _events = tracing::subscriber::set_default(subscriber);
    let dir = tempfile::tempdir().unwrap();
    let worker = Worker::builder()
        .store(RedbStore::open(dir.path().join("store.redb")).unwrap())
        .activity(Fixable)
        .orchestrator(Fragile)
        .start()
        .unwrap();
    let client = worker.client();
    let run = client
        .start_with(Fragile, (), StartOptions::new().instance_id(id("fragile")))
        .await
        .unwrap();
    wait_record(&client, "fragile", |r| r.status == RuntimeStatus::Failed).await;
    FIXED.store(true, std::sync::atomic::Ordering::SeqCst);
    run.rewind("fixed it").await.unwrap();
    wait_record(&client, "fragile", |r| r.status == RuntimeStatus::Completed).await;
    assert_eq!(run.status().await.unwrap().output.as_deref(), Some("7"));
    worker.shutdown().await;

    let mut got: Vec<_> = capture
        .events()
        .iter()
        .map(|e| (e.message.clone(), e.field("instance_id").map(str::to_owned)))
        .collect();
    got.sort();
    let mut want: Vec<_> = [
        "instance started",
        "activity failed",
        "instance failed",
        "instance rewound",
        "instance completed",
    ]
    .iter()
    .map(|m| ((*m).to_owned(), Some("fragile".to_owned())))
    .collect();
    want.sort();
    assert_eq!(got, want, "{:#?}", capture.events());
    let rewound = &capture.about("instance rewound", "fragile")[0];
    assert_eq!(rewound.level, tracing::Level::INFO);
    assert_eq!(rewound.field("reason"), Some("fixed it"));
    assert_eq!(rewound.field("undone"), Some("1"));
    assert_eq!(rewound.field("activities"), Some("1"));
}
