//! The first episode of an instance started through a worker's own client runs in the
//! starting process and is committed with the instance's creation, in one durable write
//! (`Store::create_started`): when `start` returns, that episode is already in history. The
//! semantics of a start do not change: reuse policies, unknown names and ids that are taken
//! go the ordinary way.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use durable_core::prelude::*;
use durable_core::storage::IdReusePolicy;
use durable_core::{RedbStore, Store};
use durable_testing::ManualClock;

/// Runs of `gated_step` and what lets them finish, one of each per test.
static STEPS: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];
static GATES: [tokio::sync::Semaphore; 2] = [
    tokio::sync::Semaphore::const_new(0),
    tokio::sync::Semaphore::const_new(0),
];

#[activity]
async fn first_step(x: u32) -> Result<u32, ActivityError> {
    Ok(x + 1)
}

/// Waits for a permit of gate `gate`, so the history cannot move on before the test looks.
#[activity]
async fn gated_step(input: (usize, u32)) -> Result<u32, ActivityError> {
    let (gate, x) = input;
    STEPS[gate].fetch_add(1, Ordering::SeqCst);
    GATES[gate]
        .acquire()
        .await
        .expect("the gate stays open")
        .forget();
    Ok(x + 1)
}

#[orchestrator]
async fn gated(ctx: OrchestrationContext, input: (usize, u32)) -> Result<u32, OrchestrationError> {
    Ok(ctx.call(gated_step, input).await?)
}

#[orchestrator]
async fn two_steps(ctx: OrchestrationContext, x: u32) -> Result<u32, OrchestrationError> {
    let a = ctx.call(first_step, x).await?;
    Ok(ctx.call(first_step, a).await?)
}

#[orchestrator]
async fn at_once(_ctx: OrchestrationContext, x: u32) -> Result<u32, OrchestrationError> {
    Ok(x * 2)
}

fn kinds(history: &[durable_core::HistoryEvent]) -> Vec<&'static str> {
    history.iter().map(|e| e.event.kind()).collect()
}

/// A store under test; a `PostgresStore` task hub is dropped with it.
struct Subject {
    what: &'static str,
    store: Arc<dyn Store>,
    pg: Option<durable_core::PostgresStore>,
}

impl Drop for Subject {
    fn drop(&mut self) {
        if let Some(pg) = self.pg.take() {
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current()
                    .block_on(pg.drop_task_hub())
                    .expect("drop the task hub");
            });
        }
    }
}

/// The stores that run first episodes with the creation: memory, redb, and `PostgresStore` on a
/// fresh task hub when `DURABLE_TEST_POSTGRES_URL` is set (`.ci/run` sets it).
async fn stores() -> Vec<Subject> {
    let mut out = vec![
        Subject {
            what: "memory",
            store: Arc::new(MemoryStore::new()),
            pg: None,
        },
        Subject {
            what: "redb",
            store: Arc::new(RedbStore::in_memory().expect("redb")),
            pg: None,
        },
    ];
    match std::env::var("DURABLE_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => {
            let hub = format!("durable_test_{}", &InstanceId::random().as_str()[..16]);
            let pg =
                durable_core::PostgresStore::connect(&url, durable_core::PostgresOptions::new(hub))
                    .await
                    .expect("connect to PostgreSQL");
            out.push(Subject {
                what: "postgres",
                store: Arc::new(pg.clone()),
                pg: Some(pg),
            });
        }
        _ => {
            eprintln!("first episodes on PostgreSQL skipped: DURABLE_TEST_POSTGRES_URL is not set");
        }
    }
    out
}

fn worker_on(store: &Arc<dyn Store>, clock: &ManualClock) -> Worker {
    Worker::builder()
        .store_arc(Arc::clone(store))
        .clock(clock.as_clock())
        .register(first_step)
        .register(two_steps)
        .register(at_once)
        .register(gated_step)
        .register(gated)
        .start()
        .expect("worker starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_commits_the_first_episode_with_the_creation() {
    for subject in stores().await {
        let (what, store) = (subject.what, Arc::clone(&subject.store));
        let clock = ManualClock::default();
        let worker = worker_on(&store, &clock);
        let client = worker.client();
        let runs_before = STEPS[0].load(Ordering::SeqCst);
        let run = gated::start(&client, (0, 1)).await.unwrap();
        // No waiting: the write that created the instance holds its first episode (and the
        // activity it scheduled cannot finish before the gate opens).
        let record = client.status(run.id()).await.unwrap();
        assert_eq!(record.status, RuntimeStatus::Running, "{what}");
        let history = store.read_history(run.id()).await.unwrap();
        assert_eq!(
            kinds(&history),
            ["OrchestratorStarted", "ExecutionStarted", "TaskScheduled"],
            "{what}"
        );
        GATES[0].add_permits(1);
        assert_eq!(run.wait().await.unwrap(), 2, "{what}");
        assert_eq!(
            STEPS[0].load(Ordering::SeqCst) - runs_before,
            1,
            "{what}: one run"
        );
        let history = store.read_history(run.id()).await.unwrap();
        assert_eq!(
            kinds(&history),
            [
                "OrchestratorStarted",
                "ExecutionStarted",
                "TaskScheduled",
                "OrchestratorStarted",
                "TaskCompleted",
                "ExecutionCompleted"
            ],
            "{what}"
        );
        worker.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orchestration_that_ends_in_its_first_episode_is_finished_when_start_returns() {
    for subject in stores().await {
        let (what, store) = (subject.what, Arc::clone(&subject.store));
        let clock = ManualClock::default();
        let worker = worker_on(&store, &clock);
        let client = worker.client();
        let run = at_once::start(&client, 21).await.unwrap();
        let record = client.status(run.id()).await.unwrap();
        assert_eq!(record.status, RuntimeStatus::Completed, "{what}");
        assert_eq!(run.wait().await.unwrap(), 42, "{what}");
        worker.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_id_follows_the_reuse_policy() {
    for subject in stores().await {
        let (what, store) = (subject.what, Arc::clone(&subject.store));
        let clock = ManualClock::default();
        let worker = worker_on(&store, &clock);
        let client = worker.client();
        let id = InstanceId::new("fixed").unwrap();
        let options = || StartOptions::new().instance_id(id.clone());
        let first = gated::start_with(&client, (1, 1), options()).await.unwrap();
        // Running (its activity waits at the gate): the default policy refuses,
        // DedupeRunning returns the running instance.
        let refused = gated::start_with(&client, (1, 5), options()).await;
        assert!(
            matches!(refused, Err(ClientError::InstanceAlreadyExists(_))),
            "{what}: {refused:?}"
        );
        let deduped = gated::start_with(
            &client,
            (1, 5),
            options().reuse(IdReusePolicy::DedupeRunning),
        )
        .await
        .unwrap();
        assert_eq!(deduped.id(), first.id(), "{what}");
        GATES[1].add_permits(1);
        assert_eq!(first.wait().await.unwrap(), 2, "{what}");
        // Finished: a new start replaces it (the ordinary way) and runs again.
        let replaced = two_steps::start_with(&client, 10, options()).await.unwrap();
        assert_eq!(replaced.wait().await.unwrap(), 12, "{what}");
        let history = store.read_history(&id).await.unwrap();
        assert_eq!(
            history
                .iter()
                .filter(|e| e.event.kind() == "ExecutionStarted")
                .count(),
            1,
            "{what}: the replacement's history alone"
        );
        worker.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_worker_creates_a_pending_instance() {
    let store: Arc<dyn Store> = Arc::new(RedbStore::in_memory().expect("redb"));
    let plain = Client::new(Arc::clone(&store));
    let id = plain
        .start_raw(at_once::NAME, "1", StartOptions::new())
        .await
        .unwrap();
    assert_eq!(
        plain.status(&id).await.unwrap().status,
        RuntimeStatus::Pending
    );
    assert!(store.read_history(&id).await.unwrap().is_empty());
    // A worker started later runs it the ordinary way (on the system clock the plain
    // client stamped the start with).
    let worker = Worker::builder()
        .store_arc(Arc::clone(&store))
        .register(at_once)
        .start()
        .unwrap();
    let done = worker.client().wait_for_completion(&id).await.unwrap();
    assert_eq!(done.output.as_deref(), Some("2"));
    worker.shutdown().await;
}

/// A caller that drops `start` while the creation is being written (a timeout, an HTTP
/// client that went away) does not strand the instance: if the write landed, the results
/// of the activities it scheduled still reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_dropped_during_its_write_leaves_a_working_instance() {
    let store: Arc<dyn Store> = Arc::new(RedbStore::in_memory().expect("redb"));
    let clock = ManualClock::default();
    let worker = worker_on(&store, &clock);
    let client = worker.client();
    let id = InstanceId::new("dropped-start").unwrap();
    let start = two_steps::start_with(&client, 1, StartOptions::new().instance_id(id.clone()));
    let mut start = Box::pin(start);
    let mut fused = false;
    loop {
        tokio::select! {
            biased;
            r = &mut start => {
                r.unwrap();
                break;
            }
            () = tokio::task::yield_now() => {}
        }
        // Still pending: once the write has landed, give up on the call.
        if !store.read_history(&id).await.unwrap().is_empty() {
            fused = true;
            break;
        }
    }
    drop(start);
    let done = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        client.wait_for_completion(&id),
    )
    .await
    .expect("the instance finishes (fused first episode ended)")
    .unwrap();
    assert_eq!(
        done.output.as_deref(),
        Some("3"),
        "dropped mid-write: {fused}"
    );
    worker.shutdown().await;
}

static LOCAL_STEPS: AtomicUsize = AtomicUsize::new(0);

#[activity(local)]
async fn local_step(x: u32) -> Result<u32, ActivityError> {
    LOCAL_STEPS.fetch_add(1, Ordering::SeqCst);
    Ok(x * 10)
}

#[orchestrator]
async fn local_then_plain(ctx: OrchestrationContext, x: u32) -> Result<u32, OrchestrationError> {
    let a = ctx.call(local_step, x).await?;
    Ok(ctx.call(first_step, a).await?)
}

/// A start whose first episode runs a local step: `start` runs none of it. On a store that
/// does not lease in process (`PostgresStore`) the instance is created leased to the
/// starting worker, which runs the episode without fetching it — and that episode's commit,
/// which leases the plain step to the worker, keeps the instance leased for the episode that
/// takes its result, so nothing is fetched; on the memory and redb stores the dispatcher
/// fetches it. Either way each step runs once and the run completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_with_a_local_step_runs_once_on_every_store() {
    for subject in stores().await {
        let what = subject.what;
        let store = super::local::Counting::forwarding(Arc::clone(&subject.store));
        let clock = ManualClock::default();
        let worker = Worker::builder()
            .store_arc(Arc::clone(&store) as Arc<dyn Store>)
            .clock(clock.as_clock())
            .register(local_step)
            .register(first_step)
            .register(local_then_plain)
            .start()
            .expect("worker starts");
        let before = LOCAL_STEPS.load(Ordering::SeqCst);
        let run = local_then_plain::start(&worker.client(), 4).await.unwrap();
        let out = tokio::time::timeout(std::time::Duration::from_secs(20), run.wait())
            .await
            .unwrap_or_else(|_| panic!("{what}: the run did not finish"))
            .unwrap();
        assert_eq!(out, 41, "{what}");
        assert_eq!(LOCAL_STEPS.load(Ordering::SeqCst) - before, 1, "{what}");
        let leased = !subject.store.leases_in_process();
        assert_eq!(store.created_leased(), usize::from(leased), "{what}");
        if leased {
            assert_eq!(
                store.eager(),
                1,
                "{what}: the plain step was leased eagerly"
            );
            assert_eq!(
                store.fetched_items(),
                0,
                "{what}: the result's episode ran under the kept lease"
            );
        }
        let h = run.history().await.unwrap();
        assert_eq!(
            kinds(&h).iter().filter(|k| **k == "TaskCompleted").count(),
            2,
            "{what}"
        );
        worker.shutdown().await;
    }
}
