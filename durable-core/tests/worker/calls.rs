//! Durable calls: scheduling when created (fire-and-forget), independent instances started
//! from an orchestration, and activity timeouts and heartbeats on the manual clock.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use durable_core::history::Event;
use durable_core::prelude::*;
use durable_core::storage::WorkKind;
use durable_core::{CallOptions, Clock, Store, SubOrchestrationOptions};
use durable_testing::ManualClock;
use tokio::sync::Semaphore;

use super::support::*;

const SECOND: Duration = Duration::from_secs(1);

/// Waits (yielding, guarded) until `done` holds.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let check = async {
        while !done() {
            tokio::task::yield_now().await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(20), check)
        .await
        .is_err()
    {
        panic!("gave up waiting for {what}");
    }
}

/// The expiry of the earliest activity lease (or queued task), once it is `want`.
async fn activity_wake_is(store: &MemoryStore, want: Timestamp) {
    let check = async {
        loop {
            if store.next_wake_time_for(WorkKind::Activity).await.unwrap() == Some(want) {
                return;
            }
            tokio::task::yield_now().await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(20), check)
        .await
        .is_err()
    {
        let now = store.next_wake_time_for(WorkKind::Activity).await.unwrap();
        panic!("the next activity wake-up stayed {now:?}, expected {want}");
    }
}

/// Moves the clock to `target` in steps of `step`, each time waiting until no activity lease
/// can lapse within the next step (the worker's lease keeper has renewed what is due), as
/// real time would let it.
async fn advance_in_steps(env: &Env, target: Timestamp, step: Duration) {
    while env.clock.now() < target {
        let d = step.min(target.saturating_duration_since(env.clock.now()));
        env.clock.advance(d);
        let floor = env.clock.now() + step;
        let check = async {
            loop {
                match env
                    .store
                    .next_wake_time_for(WorkKind::Activity)
                    .await
                    .unwrap()
                {
                    Some(t) if t <= floor => tokio::task::yield_now().await,
                    _ => return,
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(20), check)
            .await
            .is_err()
        {
            panic!("an activity lease was not renewed by {}", env.clock.now());
        }
    }
}

fn actions(history: &[durable_core::HistoryEvent]) -> Vec<(u64, &'static str)> {
    history
        .iter()
        .filter_map(|e| e.event.action_seq().map(|s| (s, e.event.kind())))
        .collect()
}

fn failures(history: &[durable_core::HistoryEvent]) -> Vec<(String, Option<String>)> {
    history
        .iter()
        .filter_map(|e| match &e.event {
            Event::TaskFailed {
                failure, heartbeat, ..
            } => Some((failure.error_type.clone(), heartbeat.clone())),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------- scheduled when created

static NOTES: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[activity]
async fn note(text: String) -> Result<String, ActivityError> {
    NOTES.lock().unwrap().push(text.clone());
    Ok(text)
}

#[orchestrator]
async fn twice(_ctx: OrchestrationContext, x: u32) -> Result<u32, OrchestrationError> {
    Ok(x * 2)
}

/// Creates a retried call, a child and a timer, then awaits them in the opposite order:
/// the actions are numbered in creation order.
#[orchestrator]
async fn creation_order(ctx: OrchestrationContext, _input: ()) -> Result<u32, OrchestrationError> {
    let retried = ctx.call_with_retry(note, "order".into(), RetryPolicy::new(2, SECOND));
    let child = ctx.call_sub_orchestrator_with(twice, 4, SubOrchestrationOptions::new());
    let nap = ctx.sleep(SECOND);
    nap.await;
    let doubled = child.await?;
    retried.await?;
    Ok(doubled)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_calls_and_children_are_numbered_when_created() {
    let env = start(|b| b.register(note).register(twice).register(creation_order));
    let run = creation_order::start(&env.client, ()).await.unwrap();
    wait_for_events(&env.store, run.id(), "TimerCreated", 1).await;
    env.clock.advance(SECOND);
    assert_eq!(run.wait().await.unwrap(), 8);
    let h = run.history().await.unwrap();
    assert_eq!(
        actions(&h),
        [
            (0, "TaskScheduled"),
            (1, "SubOrchestrationCreated"),
            (2, "TimerCreated")
        ],
        "{}",
        durable_core::history::pretty(&h)
    );
}

/// Starts a child under an explicit id and a retried activity, awaits neither, and ends.
#[orchestrator]
async fn fire_and_forget(
    ctx: OrchestrationContext,
    _input: (),
) -> Result<String, OrchestrationError> {
    let kid = InstanceId::new("forgotten-kid").unwrap();
    drop(ctx.call_sub_orchestrator_with(
        twice,
        21,
        SubOrchestrationOptions::new().instance_id(kid),
    ));
    drop(ctx.call_with_retry(note, "forgotten".into(), RetryPolicy::new(3, SECOND)));
    Ok("left them running".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_child_and_retried_call_still_run() {
    let env = start(|b| b.register(note).register(twice).register(fire_and_forget));
    let run = fire_and_forget::start(&env.client, ()).await.unwrap();
    assert_eq!(run.wait().await.unwrap(), "left them running");
    let kid = InstanceId::new("forgotten-kid").unwrap();
    let child = wait_done(&env.store, &kid).await;
    assert_eq!(child.status, RuntimeStatus::Completed);
    assert_eq!(child.output.as_deref(), Some("42"));
    until("the dropped activity to run", || {
        NOTES.lock().unwrap().iter().any(|n| n == "forgotten")
    })
    .await;
}

// ---------------------------------------------------------------- independent instances

#[orchestrator]
async fn waits_for_go(ctx: OrchestrationContext, x: u32) -> Result<u32, OrchestrationError> {
    let y: u32 = ctx.wait_for_event("go").await?;
    Ok(x + y)
}

/// Starts two independent instances (one under a derived id, one under `waiter`), then
/// waits for two events, each in an episode of its own.
#[orchestrator]
async fn starter(ctx: OrchestrationContext, waiter: String) -> Result<String, OrchestrationError> {
    let derived = ctx.start_orchestration(twice, 5, StartOptions::new())?;
    let waiter = InstanceId::new(waiter)?;
    ctx.start_orchestration(waits_for_go, 1, StartOptions::new().instance_id(waiter))?;
    ctx.set_custom_status(&derived)?;
    let a: u32 = ctx.wait_for_event("a").await?;
    let b: u32 = ctx.wait_for_event("b").await?;
    Ok(format!("{derived} {}", a + b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_started_instance_is_started_once_and_outlives_its_starter() {
    // No cache: every episode of the starter replays its history from the start.
    let env = start(|b| {
        b.register(twice)
            .register(waits_for_go)
            .register(starter)
            .cache_capacity(0)
    });
    let run = starter::start(&env.client, "waiter-1".into())
        .await
        .unwrap();
    let id = run.id().clone();
    let (r, _) = wait_until(&env.store, &id, "the derived id", |r, _| {
        r.custom_status.is_some()
    })
    .await;
    let derived: InstanceId = serde_json::from_str(r.custom_status.as_deref().unwrap()).unwrap();
    let done = wait_done(&env.store, &derived).await;
    assert_eq!(done.output.as_deref(), Some("10"));
    assert_eq!(done.parent, None, "not a child");
    run.raise("a", &1).await.unwrap();
    wait_for_events(&env.store, &id, "EventRaised", 1).await;
    // The starter replayed (twice, with the next event) without starting anything again: a
    // second start of the finished instance would have replaced it (execution 2).
    run.raise("b", &2).await.unwrap();
    let out = run.wait().await.unwrap();
    assert_eq!(out, format!("{derived} 3"));
    let again = env.store.read_instance(&derived).await.unwrap().unwrap();
    assert_eq!(
        (again.execution, again.status),
        (1, RuntimeStatus::Completed)
    );
    let h = env.store.read_history(&derived).await.unwrap();
    assert_eq!(count(&h, "ExecutionStarted"), 1);
    let starter_history = run.history().await.unwrap();
    assert_eq!(count(&starter_history, "OrchestrationCreated"), 2);
    assert_eq!(count(&starter_history, "SubOrchestrationFailed"), 0);
    // The same code replays against the recorded history.
    durable_core::replay::replay_history(&registry(), "starter", &id, &starter_history)
        .expect("the recorded history replays");

    // A second starter: the waiter it names is still running, so that start is refused
    // (recorded, and otherwise ignored); then the starter is terminated, and the waiter
    // started by the first one runs on.
    let waiter = InstanceId::new("waiter-1").unwrap();
    let second = starter::start(&env.client, "waiter-1".into())
        .await
        .unwrap();
    wait_for_events(&env.store, second.id(), "SubOrchestrationFailed", 1).await;
    second.terminate("enough").await.unwrap();
    wait_status(&env.store, second.id(), RuntimeStatus::Terminated).await;
    let w = env.store.read_instance(&waiter).await.unwrap().unwrap();
    assert_eq!((w.status, w.parent), (RuntimeStatus::Running, None));
    let handle = waits_for_go::handle(&env.client, waiter.clone());
    handle.raise("go", &41).await.unwrap();
    assert_eq!(handle.wait().await.unwrap(), 42);
}

fn registry() -> durable_core::Registry {
    let mut r = durable_core::Registry::new();
    r.register(twice);
    r.register(waits_for_go);
    r.register(starter);
    r
}

// ---------------------------------------------------------------- start-to-close timeout

static STUCK_RUNS: AtomicU32 = AtomicU32::new(0);
static STUCK_TOKEN_CANCELLED: AtomicBool = AtomicBool::new(false);
static STUCK_DROPPED: AtomicBool = AtomicBool::new(false);

struct OnDrop(&'static AtomicBool);

impl Drop for OnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The first run hangs (ignoring its cancellation, as hung IO would), after handing a
/// token to a task it spawned; the second answers.
#[activity]
async fn hangs_once(ctx: ActivityContext, _input: ()) -> Result<u32, ActivityError> {
    if STUCK_RUNS.fetch_add(1, Ordering::SeqCst) == 0 {
        let token = ctx.cancellation.token();
        tokio::spawn(async move {
            token.cancelled().await;
            STUCK_TOKEN_CANCELLED.store(true, Ordering::SeqCst);
        });
        let _guard = OnDrop(&STUCK_DROPPED);
        std::future::pending::<()>().await;
    }
    Ok(ctx.attempt)
}

#[orchestrator]
async fn bounded(ctx: OrchestrationContext, _input: ()) -> Result<u32, OrchestrationError> {
    let options = CallOptions::new()
        .timeout(Duration::from_secs(30))
        .retry(RetryPolicy::new(3, SECOND));
    Ok(ctx.call_with(hangs_once, (), options).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_past_its_timeout_is_cancelled_and_retried() {
    let env = start(|b| b.register(hangs_once).register(bounded));
    let t0 = env.clock.now();
    let run = bounded::start(&env.client, ()).await.unwrap();
    until("the first run", || STUCK_RUNS.load(Ordering::SeqCst) == 1).await;
    env.clock.advance(Duration::from_secs(30));
    let h = wait_for_events(&env.store, run.id(), "TaskFailed", 1).await;
    assert_eq!(failures(&h), [(CallOptions::TIMEOUT.to_owned(), None)]);
    let failed_at = h
        .iter()
        .find(|e| e.event.kind() == "TaskFailed")
        .unwrap()
        .timestamp;
    assert_eq!(failed_at, t0 + Duration::from_secs(30), "at the deadline");
    until("the spawned task to see the cancellation", || {
        STUCK_TOKEN_CANCELLED.load(Ordering::SeqCst)
    })
    .await;
    assert!(
        STUCK_DROPPED.load(Ordering::SeqCst),
        "the hung run was dropped"
    );
    // The retry policy applies: a second attempt after the back-off.
    wait_for_events(&env.store, run.id(), "TimerCreated", 1).await;
    env.clock.advance(SECOND);
    assert_eq!(run.wait().await.unwrap(), 2);
    let h = run.history().await.unwrap();
    let scheduled: Vec<Option<Duration>> = h
        .iter()
        .filter_map(|e| match &e.event {
            Event::TaskScheduled { timeout, .. } => Some(*timeout),
            _ => None,
        })
        .collect();
    assert_eq!(scheduled, [Some(Duration::from_secs(30)); 2]);
}

// ---------------------------------------------------------------- heartbeat timeout

static BEAT_GATE: Semaphore = Semaphore::const_new(0);
static BEATS: AtomicU32 = AtomicU32::new(0);
static RESUMED_FROM: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Works through `total` items, one per permit of `BEAT_GATE`, heartbeating each item done;
/// resumes after the last item a previous run reported.
#[activity]
async fn items(ctx: ActivityContext, total: u32) -> Result<u32, ActivityError> {
    let start = ctx.last_heartbeat::<u32>().map_or(0, |done| done + 1);
    RESUMED_FROM.lock().unwrap().push(start);
    for i in start..total {
        BEAT_GATE.acquire().await.unwrap().forget();
        ctx.heartbeat(i);
        BEATS.fetch_add(1, Ordering::SeqCst);
    }
    Ok(start)
}

#[orchestrator]
async fn watched(ctx: OrchestrationContext, total: u32) -> Result<u32, OrchestrationError> {
    let options = CallOptions::new()
        .heartbeat_timeout(Duration::from_secs(60))
        .retry(RetryPolicy::new(2, SECOND));
    Ok(ctx.call_with(items, total, options).await?)
}

/// Lets the activity do one more item at the current time.
async fn one_item() {
    let before = BEATS.load(Ordering::SeqCst);
    BEAT_GATE.add_permits(1);
    until("a heartbeat", || BEATS.load(Ordering::SeqCst) > before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_stops_heartbeating_times_out_and_the_next_attempt_resumes() {
    let env = start(|b| b.register(items).register(watched));
    let t0 = env.clock.now();
    let run = watched::start(&env.client, 5).await.unwrap();
    until("the first run", || RESUMED_FROM.lock().unwrap().len() == 1).await;
    // The task's lease is the heartbeat timeout, not the worker's 5-minute lease.
    activity_wake_is(&env.store, t0 + Duration::from_secs(60)).await;
    // Heartbeats 50 s apart keep it alive well past its 60 s heartbeat timeout.
    let step = Duration::from_secs(10);
    for (i, at) in [10u64, 60, 110].into_iter().enumerate() {
        advance_in_steps(&env, t0 + Duration::from_secs(at), step).await;
        one_item().await;
        assert_eq!(BEATS.load(Ordering::SeqCst), i as u32 + 1);
    }
    advance_in_steps(&env, t0 + Duration::from_secs(160), step).await;
    let h = env.store.read_history(run.id()).await.unwrap();
    assert_eq!(count(&h, "TaskFailed"), 0, "alive while it heartbeats");
    // Then silence: a heartbeat timeout after the last heartbeat (at 110 s), the attempt
    // fails, carrying the last details to the next attempt.
    advance_in_steps(&env, t0 + Duration::from_secs(170), step).await;
    let h = wait_for_events(&env.store, run.id(), "TaskFailed", 1).await;
    assert_eq!(
        failures(&h),
        [(
            CallOptions::HEARTBEAT_TIMEOUT.to_owned(),
            Some("2".to_owned())
        )]
    );
    wait_for_events(&env.store, run.id(), "TimerCreated", 1).await;
    advance_in_steps(&env, t0 + Duration::from_secs(171), step).await;
    until("the second run", || RESUMED_FROM.lock().unwrap().len() == 2).await;
    one_item().await;
    one_item().await;
    assert_eq!(run.wait().await.unwrap(), 3);
    assert_eq!(
        *RESUMED_FROM.lock().unwrap(),
        [0, 3],
        "resumed after item 2"
    );
}

// ---------------------------------------------------------------- failures carry details

static FLAKY_RUNS: Mutex<Vec<Option<String>>> = Mutex::new(Vec::new());

#[activity]
async fn fails_halfway(ctx: ActivityContext, _input: ()) -> Result<String, ActivityError> {
    let last = ctx.last_heartbeat::<String>();
    FLAKY_RUNS.lock().unwrap().push(last.clone());
    match last {
        None => {
            ctx.heartbeat("page 7");
            Err(ActivityError::new("connection reset"))
        }
        Some(page) => Ok(format!("resumed at {page}")),
    }
}

#[orchestrator]
async fn retries_halfway(
    ctx: OrchestrationContext,
    _input: (),
) -> Result<String, OrchestrationError> {
    Ok(ctx
        .call_with_retry(fails_halfway, (), RetryPolicy::new(2, SECOND))
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_attempt_hands_its_last_heartbeat_to_the_next() {
    let env = start(|b| b.register(fails_halfway).register(retries_halfway));
    let run = retries_halfway::start(&env.client, ()).await.unwrap();
    let h = wait_for_events(&env.store, run.id(), "TimerCreated", 1).await;
    assert_eq!(
        failures(&h),
        [("ActivityError".to_owned(), Some("\"page 7\"".to_owned()))]
    );
    env.clock.advance(SECOND);
    assert_eq!(run.wait().await.unwrap(), "resumed at page 7");
    assert_eq!(
        *FLAKY_RUNS.lock().unwrap(),
        [None, Some("page 7".to_owned())]
    );
}

// ---------------------------------------------------------------- crash and shutdown

static CRASH_GATE: Semaphore = Semaphore::const_new(0);
static CRASH_BEATS: AtomicU32 = AtomicU32::new(0);
static CRASH_RUNS: Mutex<Vec<(u32, Option<u32>)>> = Mutex::new(Vec::new());

/// The first run heartbeats 41, then 42 (one per permit of `CRASH_GATE`), then hangs; a
/// later run answers with the details it resumed from.
#[activity]
async fn survives_crash(ctx: ActivityContext, _input: ()) -> Result<u32, ActivityError> {
    let last = ctx.last_heartbeat::<u32>();
    CRASH_RUNS.lock().unwrap().push((ctx.attempt, last));
    if let Some(done) = last {
        return Ok(done);
    }
    for i in [41u32, 42] {
        CRASH_GATE.acquire().await.unwrap().forget();
        ctx.heartbeat(i);
        CRASH_BEATS.fetch_add(1, Ordering::SeqCst);
    }
    std::future::pending().await
}

#[orchestrator]
async fn crash_job(ctx: OrchestrationContext, _input: ()) -> Result<u32, OrchestrationError> {
    let options = CallOptions::new().heartbeat_timeout(Duration::from_secs(60));
    Ok(ctx.call_with(survives_crash, (), options).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_crash_the_next_worker_resumes_from_the_written_heartbeat() {
    // The first worker writes through a counting store, so the test can wait for the
    // heartbeat write itself (the lease keeper renews the same lease at the same instant).
    let memory = MemoryStore::new();
    let counting = super::local::Counting::new(Arc::new(memory.clone()));
    let clock = ManualClock::default();
    let worker = Worker::builder()
        .store_arc(counting.clone())
        .clock(clock.as_clock())
        .register(survives_crash)
        .register(crash_job)
        .start()
        .unwrap();
    let env = Env {
        client: worker.client(),
        worker,
        clock,
        store: memory,
    };
    let t0 = env.clock.now();
    let run = crash_job::start(&env.client, ()).await.unwrap();
    let id = run.id().clone();
    until("the first run", || CRASH_RUNS.lock().unwrap().len() == 1).await;
    activity_wake_is(&env.store, t0 + Duration::from_secs(60)).await;
    // 41 at 5 s: not written yet (the first write waits half a lease from the start, so
    // a short run that heartbeats costs no write) ...
    env.clock.advance(Duration::from_secs(5));
    CRASH_GATE.add_permits(1);
    until("the first heartbeat", || {
        CRASH_BEATS.load(Ordering::SeqCst) == 1
    })
    .await;
    // ... written at 30 s, the lease moving to 90 s with it ...
    env.clock.advance(Duration::from_secs(25));
    activity_wake_is(&env.store, t0 + Duration::from_secs(90)).await;
    until("the heartbeat write", || counting.heartbeats() == 1).await;
    // ... and 42 a second later is held back by the throttle (one write per 30 s).
    env.clock.advance(SECOND);
    CRASH_GATE.add_permits(1);
    until("the second heartbeat", || {
        CRASH_BEATS.load(Ordering::SeqCst) == 2
    })
    .await;
    // The worker dies; another starts on the same store.
    let (store, clock) = (env.store.clone(), env.clock.clone());
    env.worker.abort();
    let env2 = start_on(store, clock, |b| {
        b.register(survives_crash).register(crash_job)
    });
    // Its lease lapses a heartbeat timeout after the last write (or the lease keeper's
    // renewal of that instant, which may run a moment later), not 5 minutes later.
    env2.clock.set(t0 + Duration::from_secs(91));
    let out = crash_job::handle(&env2.client, id.clone())
        .wait()
        .await
        .unwrap();
    assert_eq!(out, 41, "the last written details");
    assert_eq!(
        *CRASH_RUNS.lock().unwrap(),
        [(1, None), (1, Some(41))],
        "the same attempt, run again"
    );
    let h = env2.store.read_history(&id).await.unwrap();
    assert_eq!(
        count(&h, "TaskFailed"),
        0,
        "a crash is not a failed attempt"
    );
}

static STOP_GATE: Semaphore = Semaphore::const_new(0);
static STOP_BEATS: AtomicU32 = AtomicU32::new(0);
static STOP_RUNS: Mutex<Vec<Option<u32>>> = Mutex::new(Vec::new());

/// The first run heartbeats 1, then 2 (one per permit of `STOP_GATE`), then waits for its
/// cancellation and stops.
#[activity]
async fn stops_on_shutdown(ctx: ActivityContext, _input: ()) -> Result<u32, ActivityError> {
    let last = ctx.last_heartbeat::<u32>();
    STOP_RUNS.lock().unwrap().push(last);
    if let Some(done) = last {
        return Ok(done);
    }
    for i in [1u32, 2] {
        STOP_GATE.acquire().await.unwrap().forget();
        ctx.heartbeat(i);
        STOP_BEATS.fetch_add(1, Ordering::SeqCst);
    }
    ctx.cancellation.cancelled().await;
    Err(ActivityError::new("stopped"))
}

#[orchestrator]
async fn stop_job(ctx: OrchestrationContext, _input: ()) -> Result<u32, OrchestrationError> {
    Ok(ctx.call(stops_on_shutdown, ()).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_writes_the_latest_heartbeat_before_putting_the_task_back() {
    let env = start(|b| b.register(stops_on_shutdown).register(stop_job));
    env.clock.now();
    let run = stop_job::start(&env.client, ()).await.unwrap();
    let id = run.id().clone();
    until("the first run", || STOP_RUNS.lock().unwrap().len() == 1).await;
    // 1 at 1 s and 2 right after: both held back by the throttle (the first write waits
    // half a lease from the start).
    env.clock.advance(SECOND);
    STOP_GATE.add_permits(1);
    STOP_GATE.add_permits(1);
    until("the second heartbeat", || {
        STOP_BEATS.load(Ordering::SeqCst) == 2
    })
    .await;
    let (store, clock) = (env.store.clone(), env.clock.clone());
    env.worker.shutdown().await;
    let env2 = start_on(store, clock, |b| {
        b.register(stops_on_shutdown).register(stop_job)
    });
    let out = stop_job::handle(&env2.client, id.clone())
        .wait()
        .await
        .unwrap();
    assert_eq!(out, 2, "written at the shutdown, before the task went back");
    assert_eq!(*STOP_RUNS.lock().unwrap(), [None, Some(2)]);
    let h = env2.store.read_history(&id).await.unwrap();
    assert_eq!(count(&h, "TaskFailed"), 0);
}

// ------------------------------------------------------------------ review: issue 13

#[orchestrator]
async fn replacement(_ctx: OrchestrationContext, _x: ()) -> Result<u32, OrchestrationError> {
    Ok(9)
}

/// Tries to replace its own parent, terminate-and-replace.
#[orchestrator]
async fn minion(ctx: OrchestrationContext, boss_id: String) -> Result<String, OrchestrationError> {
    let options = StartOptions::new()
        .instance_id(InstanceId::new(boss_id)?)
        .reuse(IdReusePolicy::TerminateRunning);
    match ctx.start_orchestration(replacement, (), options) {
        Ok(id) => Ok(format!("started {id}")),
        Err(e) => Ok(format!("refused: {e}")),
    }
}

#[orchestrator]
async fn boss(ctx: OrchestrationContext, _x: ()) -> Result<String, OrchestrationError> {
    let me = ctx.instance_id().to_string();
    Ok(ctx.call_sub_orchestrator(minion, me).await?)
}

/// An orchestration cannot terminate-and-replace another instance: the replaced tree could
/// hold the orchestration itself (here, its parent), which is in the middle of its commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_orchestration_refuses_to_terminate_and_replace() {
    let env = start(|b| b.register(replacement).register(minion).register(boss));
    let opts = StartOptions::new().instance_id(InstanceId::new("the-boss").unwrap());
    let run = env.client.start_with(boss, (), opts).await.unwrap();
    let out = run.wait().await.unwrap();
    assert!(
        out.starts_with("refused: ") && out.contains("TerminateRunning"),
        "{out}"
    );
    let h = run.history().await.unwrap();
    assert_eq!(count(&h, "ExecutionCompleted"), 1);
}

static RACE_CLOCK: std::sync::OnceLock<durable_testing::ManualClock> = std::sync::OnceLock::new();

/// Heartbeats 6 s in, then works 5 s more before it yields: its last heartbeat is 5 s old
/// when the worker looks, well within the 10 s heartbeat timeout, while the deadline set
/// before the heartbeat (10 s) has passed.
#[activity]
async fn chunked(ctx: ActivityContext, _x: u32) -> Result<u32, ActivityError> {
    let clock = RACE_CLOCK.get().expect("set by the test");
    clock.advance(Duration::from_secs(6));
    ctx.heartbeat(1u32);
    clock.advance(Duration::from_secs(5));
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    Ok(1)
}

#[orchestrator]
async fn chunked_job(ctx: OrchestrationContext, x: u32) -> Result<u32, OrchestrationError> {
    let options = CallOptions::new().heartbeat_timeout(Duration::from_secs(10));
    Ok(ctx.call_with(chunked, x, options).await?)
}

/// A heartbeat that came in before the old deadline fired always counts (the watch used to
/// pick between the two at random).
#[tokio::test(flavor = "current_thread")]
async fn a_heartbeat_within_the_timeout_never_times_out() {
    let clock = durable_testing::ManualClock::default();
    RACE_CLOCK.set(clock.clone()).ok();
    let env = start_on(MemoryStore::new(), clock, |b| {
        b.register(chunked)
            .register(chunked_job)
            .max_concurrent_activities(1)
    });
    for i in 0..16 {
        let run = chunked_job::start(&env.client, i).await.unwrap();
        let out = tokio::time::timeout(Duration::from_secs(20), run.wait())
            .await
            .expect("finishes");
        assert_eq!(out.unwrap(), 1, "run {i} timed out 5 s after a heartbeat");
    }
}

static BLOCKED_RUNS: AtomicU32 = AtomicU32::new(0);
static BLOCKED_RELEASE: AtomicBool = AtomicBool::new(false);

/// Stuck in blocking code (a sync driver call, a deadlock): never heartbeats, never yields.
#[activity]
async fn stuck(_x: ()) -> Result<u32, ActivityError> {
    BLOCKED_RUNS.fetch_add(1, Ordering::SeqCst);
    while !BLOCKED_RELEASE.load(Ordering::SeqCst) {
        std::thread::yield_now();
    }
    Ok(1)
}

#[orchestrator]
async fn stuck_job(ctx: OrchestrationContext, _x: ()) -> Result<u32, OrchestrationError> {
    let options = CallOptions::new().heartbeat_timeout(Duration::from_secs(60));
    Ok(ctx.call_with(stuck, (), options).await?)
}

/// A run that blocks its thread cannot time itself out; its lease is given up once it has
/// gone silent past its heartbeat timeout, so another worker can take the task over. With a
/// 60 s heartbeat timeout the lease (60 s) is renewed at 30 s and 60 s, given up at 90 s
/// (silent since the start, 75 s ago), and lapses at 120 s at the latest.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn a_silent_blocked_run_loses_its_task_to_another_worker() {
    let env = start(|b| b.register(stuck).register(stuck_job));
    let t0 = env.clock.now();
    stuck_job::start(&env.client, ()).await.unwrap();
    until("the stuck run starts", || {
        BLOCKED_RUNS.load(Ordering::SeqCst) > 0
    })
    .await;
    let step = Duration::from_secs(10);
    // Until 110 s the lease is always renewed ahead of the clock.
    while env.clock.now() < t0 + Duration::from_secs(110) {
        env.clock.advance(step);
        let now = env.clock.now();
        let renewed = tokio::time::timeout(Duration::from_secs(20), async {
            while env
                .store
                .next_wake_time_for(WorkKind::Activity)
                .await
                .unwrap()
                .is_none_or(|t| t <= now)
            {
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert!(
            renewed.is_ok(),
            "the lease is renewed while within the timeout"
        );
    }
    // At 130 s the lease has lapsed: the task is taken over (here by this worker's own
    // dispatcher, which has free slots: a second run starts).
    env.clock.advance(step * 2);
    let check = async {
        while BLOCKED_RUNS.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
    };
    let taken = tokio::time::timeout(Duration::from_secs(20), check).await;
    BLOCKED_RELEASE.store(true, Ordering::SeqCst);
    assert!(taken.is_ok(), "the silent run's task is taken over");
}
