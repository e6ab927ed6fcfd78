//! Eager dispatch: the commit that schedules an activity leases it to the committing worker,
//! which runs it at once instead of fetching it. Fetches and eager leases are counted by
//! the wrapper of `local.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use durable_core::prelude::*;
use durable_core::{RedbStore, Store, WorkerBuilder};
use durable_testing::ManualClock;

use super::local::{Counting, counted_worker as worker_on, wait};
use super::support::count;

// ------------------------------------------------------------------ a chain

static LINK_CALLS: [AtomicUsize; 5] = [const { AtomicUsize::new(0) }; 5];

/// Adds its position to the running text.
#[activity]
async fn link(input: (usize, String)) -> Result<String, ActivityError> {
    let (i, text) = input;
    LINK_CALLS[i].fetch_add(1, Ordering::SeqCst);
    Ok(format!("{text}{i}"))
}

#[orchestrator]
async fn chain(ctx: OrchestrationContext, start: String) -> Result<String, OrchestrationError> {
    let mut text = start;
    for i in 0..5 {
        text = ctx.call(link, (i, text)).await?;
    }
    Ok(text)
}

/// The first task comes with the start (its commit creates the instance) and is fetched;
/// each later one is leased by the commit that schedules it and run by the worker at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_next_step_of_a_chain_runs_without_a_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let stores: [(&str, Arc<dyn Store>); 2] = [
        ("memory", Arc::new(MemoryStore::new())),
        (
            "redb",
            Arc::new(RedbStore::open(dir.path().join("chain.redb")).unwrap()),
        ),
    ];
    for (name, inner) in stores {
        for calls in &LINK_CALLS {
            calls.store(0, Ordering::SeqCst);
        }
        let store = Counting::forwarding(inner);
        let clock = ManualClock::default();
        let worker = worker_on(&store, &clock, |b| b.register(link).register(chain));
        let run = chain::start(&worker.client(), "s".into()).await.unwrap();
        assert_eq!(
            wait("the run", run.wait()).await.unwrap(),
            "s01234",
            "{name}"
        );
        let h = run.history().await.unwrap();
        assert_eq!(count(&h, "TaskScheduled"), 5, "{name}");
        assert_eq!(count(&h, "TaskCompleted"), 5, "{name}");
        assert_eq!(
            store.eager(),
            4,
            "{name}: steps 2 to 5 leased by their commits"
        );
        assert_eq!(
            store.activities_fetched(),
            1,
            "{name}: only the first fetched"
        );
        for (i, calls) in LINK_CALLS.iter().enumerate() {
            assert_eq!(calls.load(Ordering::SeqCst), 1, "{name}: step {i} ran once");
        }
        worker.shutdown().await;
    }
}

// ------------------------------------------------------------------ a fan-out

static LEAF_CALLS: AtomicUsize = AtomicUsize::new(0);

#[activity]
async fn leaf(n: u32) -> Result<u32, ActivityError> {
    LEAF_CALLS.fetch_add(1, Ordering::SeqCst);
    Ok(n * 2)
}

#[orchestrator]
async fn fan(ctx: OrchestrationContext, n: u32) -> Result<u32, OrchestrationError> {
    let first = ctx.call(leaf, n).await?;
    let all = ctx
        .when_all((0..3).map(|i| ctx.call(leaf, first + i)))
        .await;
    let mut sum = 0;
    for r in all {
        sum += r?;
    }
    Ok(sum)
}

/// A commit that schedules several tasks leases one of them; the others are queued and
/// fetched as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_leases_one_task_and_queues_the_rest() {
    let store = Counting::forwarding(Arc::new(MemoryStore::new()));
    let clock = ManualClock::default();
    let worker = worker_on(&store, &clock, |b| b.register(leaf).register(fan));
    let run = fan::start(&worker.client(), 1).await.unwrap();
    // first = 2; 4 + 6 + 8.
    assert_eq!(wait("the run", run.wait()).await.unwrap(), 18);
    assert_eq!(LEAF_CALLS.load(Ordering::SeqCst), 4, "each task ran once");
    assert_eq!(store.eager(), 1, "one of the three fanned-out tasks");
    assert_eq!(
        store.activities_fetched(),
        3,
        "the first and two fanned-out tasks"
    );
    worker.shutdown().await;
}

// ------------------------------------------------------------------ a crash

static BEFORE_CALLS: AtomicUsize = AtomicUsize::new(0);
static BLOCKED_CALLS: AtomicUsize = AtomicUsize::new(0);
static NEVER: tokio::sync::Notify = tokio::sync::Notify::const_new();

#[activity]
async fn before_block(_input: ()) -> Result<u32, ActivityError> {
    BEFORE_CALLS.fetch_add(1, Ordering::SeqCst);
    Ok(1)
}

/// Its first run never ends (the worker crashes meanwhile).
#[activity]
async fn blocks_once(n: u32) -> Result<u32, ActivityError> {
    if BLOCKED_CALLS.fetch_add(1, Ordering::SeqCst) == 0 {
        NEVER.notified().await;
    }
    Ok(n + 1)
}

#[orchestrator]
async fn blocked_chain(ctx: OrchestrationContext, _input: ()) -> Result<u32, OrchestrationError> {
    let n = ctx.call(before_block, ()).await?;
    Ok(ctx.call(blocks_once, n).await?)
}

/// A task leased by its commit is stored like any other: a worker that crashes while it
/// runs leaves it to its lease, and once that runs out another worker runs it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eager_task_whose_worker_crashed_runs_again() {
    let dir = tempfile::tempdir().unwrap();
    let redb: Arc<dyn Store> = Arc::new(RedbStore::open(dir.path().join("crash.redb")).unwrap());
    let store = Counting::forwarding(redb);
    let clock = ManualClock::default();
    let register = |b: WorkerBuilder| {
        b.register(before_block)
            .register(blocks_once)
            .register(blocked_chain)
    };
    let worker = worker_on(&store, &clock, register);
    let run = blocked_chain::start(&worker.client(), ()).await.unwrap();
    wait("the blocking step", async {
        while BLOCKED_CALLS.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(store.eager(), 1, "the second step was leased by its commit");
    worker.abort();

    let worker = worker_on(&store, &clock, register);
    // Past the dead worker's activity lease.
    clock.advance(Duration::from_secs(3600));
    let run = blocked_chain::handle(&worker.client(), run.id().clone());
    assert_eq!(wait("the run", run.wait()).await.unwrap(), 2);
    assert_eq!(BEFORE_CALLS.load(Ordering::SeqCst), 1);
    assert_eq!(
        BLOCKED_CALLS.load(Ordering::SeqCst),
        2,
        "ran again: at least once"
    );
    let h = run.history().await.unwrap();
    assert_eq!(count(&h, "TaskScheduled"), 2);
    assert_eq!(count(&h, "TaskCompleted"), 2);
    worker.shutdown().await;
}

// ------------------------------------------------------------------ a long run

static QUICK_CALLS: AtomicUsize = AtomicUsize::new(0);
static LONG_CALLS: AtomicUsize = AtomicUsize::new(0);
static LONG_RELEASE: tokio::sync::Notify = tokio::sync::Notify::const_new();

#[activity]
async fn quick(n: u32) -> Result<u32, ActivityError> {
    QUICK_CALLS.fetch_add(1, Ordering::SeqCst);
    Ok(n + 1)
}

/// Runs until released.
#[activity]
async fn long_step(n: u32) -> Result<u32, ActivityError> {
    LONG_CALLS.fetch_add(1, Ordering::SeqCst);
    LONG_RELEASE.notified().await;
    Ok(n * 10)
}

#[orchestrator]
async fn quick_then_long(ctx: OrchestrationContext, n: u32) -> Result<u32, OrchestrationError> {
    let n = ctx.call(quick, n).await?;
    Ok(ctx.call(long_step, n).await?)
}

/// A task leased by its commit keeps its lease while it runs for longer than a lease:
/// the worker renews it as it renews fetched tasks, and nobody else takes the task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eager_task_keeps_its_lease_while_it_runs_long() {
    let store = Counting::forwarding(Arc::new(MemoryStore::new()));
    let clock = ManualClock::default();
    let worker = worker_on(&store, &clock, |b| {
        b.register(quick)
            .register(long_step)
            .register(quick_then_long)
    });
    let lease = store.activity_lease(durable_core::WorkerOptions::default().activity_lock);
    let run = quick_then_long::start(&worker.client(), 1).await.unwrap();
    wait("the long step", async {
        while LONG_CALLS.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(store.eager(), 1, "the long step was leased by its commit");
    // Four half-leases: two whole leases go by, each half renewed before the next.
    for round in 1..=4 {
        clock.advance(lease / 2 + Duration::from_secs(1));
        wait("a renewal", async {
            while store.renewals() < round {
                tokio::task::yield_now().await;
            }
        })
        .await;
    }
    LONG_RELEASE.notify_one();
    assert_eq!(wait("the run", run.wait()).await.unwrap(), 20);
    assert_eq!(LONG_CALLS.load(Ordering::SeqCst), 1, "ran once");
    assert_eq!(QUICK_CALLS.load(Ordering::SeqCst), 1);
    assert_eq!(
        store.activities_fetched(),
        1,
        "only the quick step was fetched"
    );
    worker.shutdown().await;
}

// ------------------------------------------------------------------ a long episode

static AFTER_CALLS: AtomicUsize = AtomicUsize::new(0);

#[derive(Clone)]
struct Clock(ManualClock);

/// Takes ten seconds of the worker's (manual) clock, inside the episode (within its
/// budget for local steps).
#[activity(local)]
async fn ten_seconds(State(clock): State<Clock>, _input: ()) -> Result<(), ActivityError> {
    clock.0.advance(Duration::from_secs(10));
    Ok(())
}

#[activity]
async fn after_the_wait(_input: ()) -> Result<u32, ActivityError> {
    AFTER_CALLS.fetch_add(1, Ordering::SeqCst);
    Ok(7)
}

#[orchestrator]
async fn long_episode(ctx: OrchestrationContext, _input: ()) -> Result<u32, OrchestrationError> {
    ctx.call(ten_seconds, ()).await?;
    // Leased for no longer than its heartbeat timeout: shorter than the episode took.
    let options = CallOptions::new().heartbeat_timeout(Duration::from_secs(5));
    Ok(ctx.call_with(after_the_wait, (), options).await?)
}

/// The lease of a task leased by its commit starts when the commit is written, not when
/// its episode began: an episode whose local step took ten seconds does not hand out a
/// five-second lease that ran out before it was taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eager_lease_starts_at_the_write() {
    let store = Counting::forwarding(Arc::new(MemoryStore::new()));
    let clock = ManualClock::default();
    let worker = worker_on(&store, &clock, |b| {
        b.register(ten_seconds)
            .register(after_the_wait)
            .register(long_episode)
            .state(Clock(clock.clone()))
    });
    let started = clock.as_clock().now();
    let run = long_episode::start(&worker.client(), ()).await.unwrap();
    assert_eq!(wait("the run", run.wait()).await.unwrap(), 7);
    assert_eq!(AFTER_CALLS.load(Ordering::SeqCst), 1);
    assert_eq!(
        store.eager(),
        1,
        "the task after the wait was leased by its commit"
    );
    let (episode, leased) = store.eager_times()[0];
    assert_eq!(episode, started, "one episode ran both steps");
    assert!(
        leased >= started + Duration::from_secs(10),
        "leased from the write, after the local step: {leased:?}"
    );
    worker.shutdown().await;
}

// ------------------------------------------------------------------ kept instance leases

static HOP_CALLS: [AtomicUsize; 5] = [const { AtomicUsize::new(0) }; 5];

/// Adds its position to the running text.
#[activity]
async fn hop(input: (usize, String)) -> Result<String, ActivityError> {
    let (i, text) = input;
    HOP_CALLS[i].fetch_add(1, Ordering::SeqCst);
    Ok(format!("{text}{i}"))
}

#[orchestrator]
async fn hops(ctx: OrchestrationContext, start: String) -> Result<String, OrchestrationError> {
    let mut text = start;
    for i in 0..5 {
        text = ctx.call(hop, (i, text)).await?;
    }
    Ok(text)
}

/// On a store that leases over the network (the wrapper says it does not lease in
/// process), a commit that leases its task to the worker keeps the instance leased too, and
/// the episode that takes the result runs under that lease: only the episode after the
/// first (fetched) task leases the instance. Without kept leases, every episode after a
/// result does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_next_episode_of_a_chain_runs_under_the_kept_lease() {
    for keep in [true, false] {
        for calls in &HOP_CALLS {
            calls.store(0, Ordering::SeqCst);
        }
        let store = Counting::new(Arc::new(MemoryStore::new()));
        if !keep {
            store.keep_no_leases();
        }
        let clock = ManualClock::default();
        let worker = worker_on(&store, &clock, |b| b.register(hop).register(hops));
        let run = hops::start(&worker.client(), "s".into()).await.unwrap();
        assert_eq!(wait("the run", run.wait()).await.unwrap(), "s01234");
        assert_eq!(store.eager(), 4, "keep {keep}: steps 2 to 5 leased eagerly");
        assert_eq!(
            store.fetched_items(),
            if keep { 1 } else { 5 },
            "keep {keep}: instances leased for results"
        );
        assert_eq!(store.given_back(), 0, "keep {keep}: no lease given back");
        for (i, calls) in HOP_CALLS.iter().enumerate() {
            assert_eq!(
                calls.load(Ordering::SeqCst),
                1,
                "keep {keep}: step {i} ran once"
            );
        }
        let h = run.history().await.unwrap();
        assert_eq!(count(&h, "TaskCompleted"), 5, "keep {keep}");
        worker.shutdown().await;
    }
}

static HELD_CALLS: AtomicUsize = AtomicUsize::new(0);
static HELD_RELEASE: tokio::sync::Notify = tokio::sync::Notify::const_new();

#[activity]
async fn first_hop(n: u32) -> Result<u32, ActivityError> {
    Ok(n + 1)
}

/// Runs until released.
#[activity]
async fn held(n: u32) -> Result<u32, ActivityError> {
    HELD_CALLS.fetch_add(1, Ordering::SeqCst);
    HELD_RELEASE.notified().await;
    Ok(n * 10)
}

/// Waits for a slow task and an event at once; shows the event in its custom status as
/// soon as it has it.
#[orchestrator]
async fn held_and_event(ctx: OrchestrationContext, n: u32) -> Result<u32, OrchestrationError> {
    let n = ctx.call(first_hop, n).await?;
    let event = async {
        let go: u32 = ctx.wait_for_event("go").await?;
        ctx.set_custom_status("got go")?;
        Ok::<_, OrchestrationError>(go)
    };
    let (result, go) = tokio::join!(ctx.call(held, n), event);
    Ok(result? + go?)
}

/// A kept lease holds the instance's other messages back, so it is kept only briefly: an
/// eager task that runs longer gives it back, and an event raised meanwhile is delivered
/// while the task still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_lease_is_given_back_while_its_task_runs_long() {
    let store = Counting::new(Arc::new(MemoryStore::new()));
    let clock = ManualClock::default();
    let worker = worker_on(&store, &clock, |b| {
        b.register(first_hop)
            .register(held)
            .register(held_and_event)
    });
    let run = held_and_event::start(&worker.client(), 1).await.unwrap();
    wait("the held step", async {
        while HELD_CALLS.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(store.eager(), 1, "the held step was leased by its commit");
    worker
        .client()
        .raise_event(run.id(), "go", &3)
        .await
        .unwrap();
    assert_eq!(store.given_back(), 0, "the lease is kept");
    // Past the kept lease's hold (a tenth of a second).
    clock.advance(Duration::from_secs(1));
    run.wait_until(
        |r| r.custom_status.as_deref() == Some("\"got go\""),
        Duration::from_secs(30),
    )
    .await
    .expect("the event is delivered while the task runs");
    assert_eq!(store.given_back(), 1, "given back once its hold ran out");
    assert_eq!(HELD_CALLS.load(Ordering::SeqCst), 1, "the task still runs");
    HELD_RELEASE.notify_one();
    assert_eq!(wait("the run", run.wait()).await.unwrap(), 23);
    assert_eq!(HELD_CALLS.load(Ordering::SeqCst), 1, "ran once");
    worker.shutdown().await;
}

static TICKS: AtomicUsize = AtomicUsize::new(0);

/// A quick step: counts itself.
#[activity]
async fn tick(n: u32) -> Result<u32, ActivityError> {
    TICKS.fetch_add(1, Ordering::SeqCst);
    Ok(n + 1)
}

/// Runs quick steps one after another until the event `stop` arrives; answers how many
/// ran.
#[orchestrator]
async fn ticks_until_stopped(
    ctx: OrchestrationContext,
    _input: (),
) -> Result<u32, OrchestrationError> {
    let stop = ctx.wait_for_event::<u32>("stop");
    let steps = async {
        let mut n = 0;
        loop {
            n = ctx.call(tick, n).await?;
        }
        #[allow(unreachable_code)]
        Ok::<u32, OrchestrationError>(n)
    };
    tokio::select! {
        biased;
        stop = stop => { stop?; Ok(0) }
        n = steps => n,
    }
}

/// A kept lease does not hold messages back for longer than a step: the store keeps none
/// while messages are due, so an event raised during an endless chain of quick steps, each
/// leased to the worker by the commit before it, is delivered — with the clock standing
/// still, so no hold runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_reaches_an_endless_chain_of_quick_steps() {
    let store = Counting::new(Arc::new(MemoryStore::new()));
    let clock = ManualClock::default();
    let worker = worker_on(&store, &clock, |b| {
        b.register(tick).register(ticks_until_stopped)
    });
    let run = ticks_until_stopped::start(&worker.client(), ())
        .await
        .unwrap();
    wait("a few steps", async {
        while TICKS.load(Ordering::SeqCst) < 5 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(store.eager() >= 3, "the steps are leased by their commits");
    run.raise("stop", &1).await.unwrap();
    assert_eq!(wait("the run", run.wait()).await.unwrap(), 0);
    assert_eq!(
        store.given_back(),
        0,
        "no hold ran out: the clock stood still"
    );
    worker.shutdown().await;
}
