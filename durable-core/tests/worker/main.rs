//! The engine end to end: worker + client + in-memory store + manual clock.

mod calls;
mod eager;
mod first_episode;
mod issue12;
mod issue12_control;
mod issue13_errors;
mod issue13_state;
mod issue13_worker;
mod local;
mod rewind;
mod support;
mod transactional;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use durable_core::history::Event;
use durable_core::prelude::*;
use durable_core::{
    Clock, InstanceQuery, Store, SubOrchestrationOptions, VersionMatch, VersionMismatchAction,
};
use support::*;

const HOUR: Duration = Duration::from_secs(3600);

// ---------------------------------------------------------------- chaining

#[activity]
async fn greet(name: String) -> Result<String, ActivityError> {
    Ok(format!("Hello {name}!"))
}
#[activity]
async fn shout(s: String) -> Result<String, ActivityError> {
    Ok(s.to_uppercase())
}

#[orchestrator]
async fn chain(ctx: OrchestrationContext, name: String) -> Result<String, OrchestrationError> {
    let a = ctx.call(greet, name).await?;
    let b = ctx.call(shout, a).await?;
    let c = ctx.call(greet, b).await?;
    Ok(c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaining_passes_each_output_to_the_next_step() {
    let env = start(|b| b.register(greet).register(shout).register(chain));
    let run = chain::start(&env.client, "ada".into()).await.unwrap();
    assert_eq!(run.wait().await.unwrap(), "Hello HELLO ADA!!");
    let h = run.history().await.unwrap();
    assert_eq!(count(&h, "TaskScheduled"), 3);
    assert_eq!(count(&h, "TaskCompleted"), 3);
    assert!(matches!(
        h.last().unwrap().event,
        Event::ExecutionCompleted {
            status: RuntimeStatus::Completed,
            ..
        }
    ));
    let names: Vec<_> = h
        .iter()
        .filter_map(|e| match &e.event {
            Event::TaskScheduled { name, location, .. } => {
                Some((name.clone(), location.clone().unwrap().file))
            }
            _ => None,
        })
        .collect();
    assert_eq!(names[0].0, "greet");
    assert_eq!(names[1].0, "shout");
    assert!(
        names[0].1.ends_with("main.rs"),
        "location recorded: {:?}",
        names[0].1
    );
}

// ---------------------------------------------------------------- fan-out with a crash

static FAN_CALLS: [AtomicUsize; 20] = [const { AtomicUsize::new(0) }; 20];
static FAN_GATE_OPEN: AtomicBool = AtomicBool::new(false);

#[activity]
async fn fan_work(i: u64) -> Result<u64, ActivityError> {
    FAN_CALLS[i as usize].fetch_add(1, Ordering::SeqCst);
    if i >= 10 && !FAN_GATE_OPEN.load(Ordering::SeqCst) {
        // The first worker "crashes" while these are in flight.
        std::future::pending::<()>().await;
    }
    Ok(i * i)
}

#[orchestrator]
async fn fan_out(ctx: OrchestrationContext, n: u64) -> Result<u64, OrchestrationError> {
    let tasks = (0..n).map(|i| ctx.call(fan_work, i));
    let results = ctx.when_all(tasks).await;
    let mut sum = 0;
    for r in results {
        sum += r?;
    }
    Ok(sum)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_survives_a_crash_without_rerunning_completed_activities() {
    let env = start(|b| b.register(fan_work).register(fan_out));
    let run = fan_out::start(&env.client, 20).await.unwrap();
    wait_for_events(&env.store, run.id(), "TaskCompleted", 10).await;
    // Crash: no cleanup, leases stay held until they expire.
    let (store, clock) = (env.store.clone(), env.clock.clone());
    env.worker.abort();
    // Activities 10.. were in flight or not yet started when the worker died.
    let before: Vec<usize> = FAN_CALLS.iter().map(|c| c.load(Ordering::SeqCst)).collect();
    FAN_GATE_OPEN.store(true, Ordering::SeqCst);

    let env2 = start_on(store, clock, |b| b.register(fan_work).register(fan_out));
    env2.clock.advance(Duration::from_secs(600)); // past every lease
    let out = fan_out::handle(&env2.client, run.id().clone())
        .wait()
        .await
        .unwrap();
    assert_eq!(out, (0..20).map(|i| i * i).sum::<u64>());
    for (i, calls) in FAN_CALLS.iter().enumerate().take(10) {
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "completed activity {i} ran again"
        );
    }
    for (i, calls) in FAN_CALLS.iter().enumerate().skip(10) {
        // Unfinished at the crash: it runs again (at least once), and at most once more
        // than it had started (an aborted worker's task can still be starting as the crash
        // is observed, so "before" is a lower bound).
        let calls = calls.load(Ordering::SeqCst);
        assert!(
            before[i] <= 1,
            "activity {i} ran {} times before the crash",
            before[i]
        );
        assert!(
            calls > before[i] && calls <= 2,
            "activity {i}: {} runs before the crash, {calls} in all",
            before[i]
        );
    }
    let h = run.history().await.unwrap();
    assert_eq!(count(&h, "TaskCompleted"), 20);
}

// ---------------------------------------------------------------- timers

#[orchestrator]
async fn nap(ctx: OrchestrationContext, hours: u64) -> Result<Timestamp, OrchestrationError> {
    ctx.sleep(HOUR * hours as u32).await;
    Ok(ctx.now())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_timer_fires_on_the_manual_clock() {
    let env = start(|b| b.register(nap));
    let t0 = env.clock.now();
    let run = env.client.start(nap, 72).await.unwrap();
    let h = wait_for_events(&env.store, run.id(), "TimerCreated", 1).await;
    assert_eq!(timers(&h), vec![t0 + HOUR * 72]);
    env.clock.advance(HOUR * 71);
    // Not yet due: the instance is still running after the advance is processed.
    assert_eq!(run.status().await.unwrap().status, RuntimeStatus::Running);
    env.clock.advance(HOUR);
    let woke_at = run.wait().await.unwrap();
    assert_eq!(woke_at, t0 + HOUR * 72);
}

// ---------------------------------------------------------------- events

#[orchestrator]
async fn two_waiters(
    ctx: OrchestrationContext,
    _input: (),
) -> Result<(i32, i32), OrchestrationError> {
    let first = ctx.wait_for_event::<i32>("x");
    let second = ctx.wait_for_event::<i32>("x");
    let b = second.await?;
    let a = first.await?;
    Ok((a, b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_go_to_waiters_oldest_first_even_when_raised_before_the_wait() {
    let env = start(|b| b.register(two_waiters));
    // Scheduled start: the events arrive before the orchestration runs at all.
    let opts = StartOptions::new().scheduled_start(env.clock.now() + HOUR);
    let run = env.client.start_with(two_waiters, (), opts).await.unwrap();
    run.raise("x", &1).await.unwrap();
    run.raise("x", &2).await.unwrap();
    assert_eq!(run.status().await.unwrap().status, RuntimeStatus::Pending);
    env.clock.advance(HOUR);
    assert_eq!(run.wait().await.unwrap(), (1, 2));

    // Raised after the wait began.
    let run = env.client.start(two_waiters, ()).await.unwrap();
    wait_status(&env.store, run.id(), RuntimeStatus::Running).await;
    run.raise("x", &10).await.unwrap();
    run.raise("x", &20).await.unwrap();
    assert_eq!(run.wait().await.unwrap(), (10, 20));
}

/// An event raised after a worker found the instance not yet started and put it back comes
/// after the events raised before it, even when no worker sees it before the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_raised_while_the_start_is_awaited_keeps_its_place() {
    let env = start(|b| b.register(two_waiters));
    let starts_at = env.clock.now() + HOUR;
    let opts = StartOptions::new().scheduled_start(starts_at);
    let run = env.client.start_with(two_waiters, (), opts).await.unwrap();
    let mut changes = env.store.signals().changed.subscribe();
    run.raise("x", &1).await.unwrap();
    // A worker takes the instance for the event, finds it not started and puts it back
    // until the start.
    let put_back = async {
        while env.store.next_wake_time().await.unwrap() != Some(starts_at) {
            changes.changed().await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(20), put_back)
        .await
        .expect("the worker puts the instance back until its start");
    let (store, clock) = (env.store.clone(), env.clock.clone());
    env.worker.shutdown().await;
    run.raise("x", &2).await.unwrap();
    clock.advance(HOUR);
    let _env = start_on(store, clock, |b| b.register(two_waiters));
    assert_eq!(run.wait().await.unwrap(), (1, 2));
}

/// A terminate does not wait for the scheduled start, also when a worker already put the
/// instance back until then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminate_does_not_wait_for_the_scheduled_start() {
    let env = start(|b| b.register(two_waiters));
    let starts_at = env.clock.now() + HOUR;
    let opts = StartOptions::new().scheduled_start(starts_at);
    let run = env.client.start_with(two_waiters, (), opts).await.unwrap();
    let mut changes = env.store.signals().changed.subscribe();
    run.raise("x", &1).await.unwrap();
    let put_back = async {
        while env.store.next_wake_time().await.unwrap() != Some(starts_at) {
            changes.changed().await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(20), put_back)
        .await
        .expect("the worker puts the instance back until its start");
    run.terminate("stop").await.unwrap();
    wait_status(&env.store, run.id(), RuntimeStatus::Terminated).await;
    assert!(env.clock.now() < starts_at, "terminated before the start");
}

#[orchestrator]
async fn approval(ctx: OrchestrationContext, _input: ()) -> Result<String, OrchestrationError> {
    match ctx
        .wait_for_event_timeout::<bool>("approve", HOUR * 72)
        .await
    {
        Ok(true) => Ok("approved".into()),
        Ok(false) => Ok("rejected".into()),
        Err(e) if e.is_timeout() => {
            // The timed-out waiter released its claim: the next wait gets the late event.
            let late: bool = ctx.wait_for_event("approve").await?;
            Ok(format!("escalated, then {late}"))
        }
        Err(e) => Err(e.into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_versus_timer_race_both_ways() {
    let env = start(|b| b.register(approval));
    let run = env.client.start(approval, ()).await.unwrap();
    wait_for_events(&env.store, run.id(), "TimerCreated", 1).await;
    run.raise("approve", &true).await.unwrap();
    assert_eq!(run.wait().await.unwrap(), "approved");

    let run = env.client.start(approval, ()).await.unwrap();
    wait_for_events(&env.store, run.id(), "TimerCreated", 1).await;
    env.clock.advance(HOUR * 72);
    wait_for_events(&env.store, run.id(), "TimerFired", 1).await;
    run.raise("approve", &false).await.unwrap();
    assert_eq!(run.wait().await.unwrap(), "escalated, then false");
    // Finished: events are refused with a typed error.
    assert!(matches!(
        run.raise("approve", &true).await,
        Err(ClientError::InstanceNotRunning(_))
    ));
}

// ---------------------------------------------------------------- sub-orchestrations

#[orchestrator]
async fn child(_ctx: OrchestrationContext, x: i64) -> Result<i64, OrchestrationError> {
    if x < 0 {
        return Err(OrchestrationError::new(format!("negative input {x}")));
    }
    Ok(x * 2)
}

#[orchestrator]
async fn parent(ctx: OrchestrationContext, x: i64) -> Result<String, OrchestrationError> {
    match ctx.call_sub_orchestrator(child, x).await {
        Ok(v) => Ok(format!("child said {v}")),
        Err(TaskError::Failed(f)) => Ok(format!("child failed: {}", f.details.message)),
        Err(e) => Err(e.into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_orchestration_results_and_failures_reach_the_parent() {
    let env = start(|b| b.register(child).register(parent));
    let ok = env.client.start(parent, 21).await.unwrap();
    assert_eq!(ok.wait().await.unwrap(), "child said 42");
    let child_id = InstanceId::new(format!("{}:0", ok.id())).unwrap();
    let child_record = env.client.status(&child_id).await.unwrap();
    assert_eq!(child_record.status, RuntimeStatus::Completed);
    assert_eq!(child_record.parent.unwrap().instance_id, *ok.id());

    let bad = env.client.start(parent, -1).await.unwrap();
    assert_eq!(bad.wait().await.unwrap(), "child failed: negative input -1");
}

// ---------------------------------------------------------------- retries

static FLAKY_CALLS: AtomicUsize = AtomicUsize::new(0);

#[activity]
async fn flaky(_input: ()) -> Result<u32, ActivityError> {
    let n = FLAKY_CALLS.fetch_add(1, Ordering::SeqCst) + 1;
    if n < 3 {
        return Err(ActivityError::new(format!("attempt {n} failed")));
    }
    Ok(n as u32)
}

#[orchestrator]
async fn retry_flaky(ctx: OrchestrationContext, _input: ()) -> Result<u32, OrchestrationError> {
    let policy = RetryPolicy::new(5, Duration::from_secs(10)).backoff_coefficient(2.0);
    Ok(ctx.call_with_retry(flaky, (), policy).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_back_off_on_durable_timers() {
    let env = start(|b| b.register(flaky).register(retry_flaky));
    let t0 = env.clock.now();
    let run = env.client.start(retry_flaky, ()).await.unwrap();
    let h = wait_for_events(&env.store, run.id(), "TimerCreated", 1).await;
    assert_eq!(timers(&h), vec![t0 + Duration::from_secs(10)]);
    env.clock.advance(Duration::from_secs(10));
    let h = wait_for_events(&env.store, run.id(), "TimerCreated", 2).await;
    assert_eq!(
        timers(&h)[1],
        t0 + Duration::from_secs(30),
        "second back-off is doubled"
    );
    env.clock.advance(Duration::from_secs(20));
    assert_eq!(run.wait().await.unwrap(), 3);
    assert_eq!(FLAKY_CALLS.load(Ordering::SeqCst), 3);
    let h = run.history().await.unwrap();
    assert_eq!(count(&h, "TaskFailed"), 2);
    assert_eq!(count(&h, "TaskScheduled"), 3);
}

// ---------------------------------------------------------------- continue-as-new

#[orchestrator]
async fn accumulate(ctx: OrchestrationContext, total: i32) -> Result<i32, OrchestrationError> {
    if total >= 3 {
        return Ok(total);
    }
    let add: i32 = ctx.wait_for_event("add").await?;
    ctx.continue_as_new(total + add).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continue_as_new_carries_unprocessed_events_over() {
    let env = start(|b| b.register(accumulate));
    let opts = StartOptions::new().scheduled_start(env.clock.now() + HOUR);
    let run = env.client.start_with(accumulate, 0, opts).await.unwrap();
    for _ in 0..3 {
        run.raise("add", &1).await.unwrap();
    }
    env.clock.advance(HOUR);
    assert_eq!(run.wait().await.unwrap(), 3);
    let r = run.status().await.unwrap();
    assert_eq!(r.execution, 4, "three continue-as-new generations");
    let h = run.history().await.unwrap();
    assert_eq!(
        count(&h, "EventRaised"),
        0,
        "the last execution needed no event"
    );
}

// ---------------------------------------------------------------- terminate / suspend / resume

#[orchestrator]
async fn wait_for_go(ctx: OrchestrationContext, _input: ()) -> Result<String, OrchestrationError> {
    let v: String = ctx.wait_for_event("go").await?;
    Ok(v)
}

#[orchestrator]
async fn parent_of_waiter(
    ctx: OrchestrationContext,
    _input: (),
) -> Result<String, OrchestrationError> {
    Ok(ctx.call_sub_orchestrator(wait_for_go, ()).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_suspend_resume_and_their_errors() {
    let env = start(|b| b.register(wait_for_go).register(parent_of_waiter));
    let unknown = InstanceId::new("nope").unwrap();
    assert!(matches!(
        env.client.terminate(&unknown, "x").await,
        Err(ClientError::InstanceNotFound(_))
    ));
    assert!(matches!(
        env.client.suspend(&unknown, "x").await,
        Err(ClientError::InstanceNotFound(_))
    ));
    assert!(matches!(
        env.client.status(&unknown).await,
        Err(ClientError::InstanceNotFound(_))
    ));

    // Suspend holds events back; resume delivers them.
    let run = env.client.start(wait_for_go, ()).await.unwrap();
    wait_status(&env.store, run.id(), RuntimeStatus::Running).await;
    run.suspend("maintenance").await.unwrap();
    wait_status(&env.store, run.id(), RuntimeStatus::Suspended).await;
    run.raise("go", "now").await.unwrap();
    wait_for_events(&env.store, run.id(), "EventRaised", 1).await;
    assert_eq!(run.status().await.unwrap().status, RuntimeStatus::Suspended);
    run.resume("done").await.unwrap();
    assert_eq!(run.wait().await.unwrap(), "now");
    assert!(matches!(
        run.suspend("x").await,
        Err(ClientError::InstanceNotRunning(_))
    ));
    assert!(matches!(
        run.resume("x").await,
        Err(ClientError::InstanceNotRunning(_))
    ));

    // Terminate cascades to the running child.
    let parent_run = env.client.start(parent_of_waiter, ()).await.unwrap();
    let child_id = InstanceId::new(format!("{}:0", parent_run.id())).unwrap();
    wait_status(&env.store, &child_id, RuntimeStatus::Running).await;
    parent_run.terminate("shutting down").await.unwrap();
    match parent_run.wait().await {
        Err(ClientError::Terminated { reason }) => assert_eq!(reason, "shutting down"),
        other => panic!("expected terminated, got {other:?}"),
    }
    let child_record = wait_done(&env.store, &child_id).await;
    assert_eq!(child_record.status, RuntimeStatus::Terminated);
    assert!(matches!(
        parent_run.terminate("again").await,
        Err(ClientError::InstanceNotRunning(_))
    ));
}

// ---------------------------------------------------------------- purge, query, id reuse

#[orchestrator]
async fn echo(_ctx: OrchestrationContext, s: String) -> Result<String, OrchestrationError> {
    Ok(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_removes_instances_and_children() {
    let env = start(|b| b.register(child).register(parent).register(wait_for_go));
    let run = env.client.start(parent, 1).await.unwrap();
    run.wait().await.unwrap();
    let child_id = InstanceId::new(format!("{}:0", run.id())).unwrap();
    let purged = env.client.purge(run.id()).await.unwrap();
    assert_eq!(purged.deleted, 2, "parent and child");
    assert!(matches!(
        env.client.status(run.id()).await,
        Err(ClientError::InstanceNotFound(_))
    ));
    assert!(matches!(
        env.client.status(&child_id).await,
        Err(ClientError::InstanceNotFound(_))
    ));
    assert!(env.store.read_history(run.id()).await.unwrap().is_empty());
    assert!(matches!(
        env.client.purge(run.id()).await,
        Err(ClientError::InstanceNotFound(_))
    ));

    let running = env.client.start(wait_for_go, ()).await.unwrap();
    assert!(matches!(
        env.client.purge(running.id()).await,
        Err(ClientError::InstanceStillRunning(_))
    ));

    for _ in 0..3 {
        env.client
            .start(child, 5)
            .await
            .unwrap()
            .wait()
            .await
            .unwrap();
    }
    let r = env
        .client
        .purge_by_filter(InstanceQuery::new().name("child"))
        .await
        .unwrap();
    assert_eq!(r.deleted, 3);
    // Left alone (still Pending if the worker has not run its first episode yet).
    let status = env.client.status(running.id()).await.unwrap().status;
    assert!(!status.is_terminal(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_filters_and_pages() {
    let env = start(|b| b.register(echo).register(wait_for_go));
    for i in 0..25 {
        let opts = StartOptions::new().instance_id(InstanceId::new(format!("q-{i:02}")).unwrap());
        env.client
            .start_with(echo, format!("{i}"), opts)
            .await
            .unwrap()
            .wait()
            .await
            .unwrap();
    }
    let waiting = env.client.start(wait_for_go, ()).await.unwrap();
    wait_status(&env.store, waiting.id(), RuntimeStatus::Running).await;

    let mut q = InstanceQuery::new().id_prefix("q-").page_size(10);
    let mut sizes = Vec::new();
    let mut seen = Vec::new();
    loop {
        let page = env.client.query(&q).await.unwrap();
        sizes.push(page.instances.len());
        seen.extend(
            page.instances
                .into_iter()
                .map(|r| r.instance_id.to_string()),
        );
        match page.continuation {
            Some(c) => q = q.continuation(Some(c)),
            None => break,
        }
    }
    assert_eq!(sizes, vec![10, 10, 5]);
    let expected: Vec<_> = (0..25).map(|i| format!("q-{i:02}")).collect();
    assert_eq!(seen, expected);

    let running = env
        .client
        .query(&InstanceQuery::new().statuses([RuntimeStatus::Running]))
        .await
        .unwrap();
    assert_eq!(running.instances.len(), 1);
    assert_eq!(running.instances[0].instance_id, *waiting.id());
    let by_name = env
        .client
        .query(&InstanceQuery::new().name("echo").page_size(100))
        .await
        .unwrap();
    assert_eq!(by_name.instances.len(), 25);
    let none = env
        .client
        .query(&InstanceQuery::new().created_between(Some(env.clock.now() + HOUR), None))
        .await
        .unwrap();
    assert!(none.instances.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_reuse_policies() {
    let env = start(|b| b.register(echo).register(wait_for_go));
    let id = InstanceId::new("singleton").unwrap();
    let opts = || StartOptions::new().instance_id(id.clone());
    let first = env
        .client
        .start_with(echo, "one".into(), opts())
        .await
        .unwrap();
    assert_eq!(first.wait().await.unwrap(), "one");
    // Finished: the default policy replaces it.
    let second = env
        .client
        .start_with(echo, "two".into(), opts())
        .await
        .unwrap();
    assert_eq!(second.wait().await.unwrap(), "two");
    assert_eq!(second.status().await.unwrap().execution, 2);
    // RejectExisting refuses even a finished instance.
    let reject = env
        .client
        .start_with(
            echo,
            "three".into(),
            opts().reuse(IdReusePolicy::RejectExisting),
        )
        .await;
    assert!(matches!(reject, Err(ClientError::InstanceAlreadyExists(_))));

    let wid = InstanceId::new("waiting-singleton").unwrap();
    let wopts = || StartOptions::new().instance_id(wid.clone());
    env.client
        .start_with(wait_for_go, (), wopts())
        .await
        .unwrap();
    let again = env.client.start_with(wait_for_go, (), wopts()).await;
    assert!(matches!(again, Err(ClientError::InstanceAlreadyExists(_))));
    let deduped = env
        .client
        .start_with(wait_for_go, (), wopts().reuse(IdReusePolicy::DedupeRunning))
        .await
        .unwrap();
    assert_eq!(deduped.id(), &wid);
    assert_eq!(deduped.status().await.unwrap().execution, 1);
}

// ---------------------------------------------------------------- non-determinism and foreign wakes

#[activity]
async fn step_a(_i: ()) -> Result<String, ActivityError> {
    Ok("a".into())
}
#[activity]
async fn step_b(_i: ()) -> Result<String, ActivityError> {
    Ok("b".into())
}

#[orchestrator]
async fn versioned(ctx: OrchestrationContext, _input: ()) -> Result<String, OrchestrationError> {
    let first = ctx.call(step_a, ()).await?;
    let go: String = ctx.wait_for_event("go").await?;
    Ok(format!("{first}{go}"))
}

mod v2 {
    use super::*;

    /// The same durable name as `versioned`, but the first step changed: replay must notice.
    #[orchestrator(name = "versioned")]
    pub(super) async fn versioned(
        ctx: OrchestrationContext,
        _input: (),
    ) -> Result<String, OrchestrationError> {
        let first = ctx.call(step_b, ()).await?;
        let go: String = ctx.wait_for_event("go").await?;
        Ok(format!("{first}{go}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nondeterminism_leaves_the_instance_stuck_until_fixed_code_runs_it() {
    let env = start(|b| b.register(step_a).register(step_b).register(versioned));
    let run = env.client.start(versioned, ()).await.unwrap();
    wait_for_events(&env.store, run.id(), "TaskCompleted", 1).await;
    let (store, clock) = (env.store.clone(), env.clock.clone());
    env.worker.shutdown().await;

    // A deploy with changed code and no cache: replay detects the change.
    let bad = start_on(store.clone(), clock.clone(), |b| {
        b.register(step_a)
            .register(step_b)
            .orchestrator(v2::versioned)
    });
    run.raise("go", "!").await.unwrap();
    let err = wait_error(&store, run.id()).await;
    assert!(err.contains("non-determinism"), "{err}");
    assert!(err.contains("recorded activity `step_a`"), "{err}");
    assert!(err.contains("now schedules activity `step_b`"), "{err}");
    assert!(err.contains("main.rs"), "source locations are named: {err}");
    assert_eq!(
        run.status().await.unwrap().status,
        RuntimeStatus::Running,
        "stuck, not failed"
    );
    bad.worker.shutdown().await;

    // Rolling the fix out rescues it.
    let good = start_on(store.clone(), clock.clone(), |b| {
        b.register(step_a).register(versioned)
    });
    good.clock.advance(Duration::from_secs(3600)); // past the retry back-off
    assert_eq!(run.wait().await.unwrap(), "a!");
}

#[orchestrator]
async fn awaits_channel(_ctx: OrchestrationContext, _input: ()) -> Result<(), OrchestrationError> {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::mem::forget(tx);
    let _ = rx.await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awaiting_a_non_durable_future_is_reported() {
    let env = start(|b| b.register(awaits_channel));
    let run = env.client.start(awaits_channel, ()).await.unwrap();
    let err = wait_error(&env.store, run.id()).await;
    assert!(err.contains("not a durable operation"), "{err}");
    assert!(err.contains("ctx.sleep"), "{err}");
    assert_eq!(run.status().await.unwrap().status, RuntimeStatus::Pending);
}

// ---------------------------------------------------------------- bad input and failures

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_rejected_with_typed_errors() {
    let env = start(|b| b.register(nap));
    let err = env
        .client
        .start_raw("nap", "\"ten\"", StartOptions::new())
        .await
        .unwrap_err();
    match err {
        ClientError::PayloadDecode(e) => assert_eq!(e.expected, "u64"),
        other => panic!("{other:?}"),
    }
    let err = env
        .client
        .start_raw("NoSuchThing", "1", StartOptions::new())
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::UnknownOrchestrator(ref n) if n == "NoSuchThing"));
    assert!(InstanceId::new("bad/id").is_err());
    let big = "x".repeat(2 << 20);
    let run = env.client.start(nap, 1).await.unwrap();
    assert!(matches!(
        run.raise("e", &big).await,
        Err(ClientError::PayloadTooLarge { .. })
    ));
}

#[activity]
async fn explode(_i: ()) -> Result<(), ActivityError> {
    panic!("kaboom")
}

#[orchestrator]
async fn calls_explode(
    ctx: OrchestrationContext,
    _input: (),
) -> Result<String, OrchestrationError> {
    match ctx.call(explode, ()).await {
        Err(TaskError::Failed(f)) => Ok(format!("{}|{}", f.details.error_type, f.details.message)),
        other => Ok(format!("unexpected {other:?}")),
    }
}

#[orchestrator]
async fn panics_itself(_ctx: OrchestrationContext, _input: ()) -> Result<(), OrchestrationError> {
    panic!("orchestrator bug")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_become_failures_with_details() {
    let env = start(|b| {
        b.register(explode)
            .register(calls_explode)
            .register(panics_itself)
    });
    let out = env
        .client
        .start(calls_explode, ())
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(out, "panic|activity `explode` panicked: kaboom");
    match env
        .client
        .start(panics_itself, ())
        .await
        .unwrap()
        .wait()
        .await
    {
        Err(ClientError::Failed(f)) => assert!(f.message.contains("orchestrator bug"), "{f}"),
        other => panic!("{other:?}"),
    }
    // The worker survived both.
    let out = env
        .client
        .start(calls_explode, ())
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert!(out.starts_with("panic|"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_activity_completion_is_ignored() {
    let env = start(|b| b.register(step_a).register(versioned));
    let run = env.client.start(versioned, ()).await.unwrap();
    wait_for_events(&env.store, run.id(), "TaskCompleted", 1).await;
    // At-least-once redelivery of the same result, then a stale one for an unknown step.
    let dup = durable_core::storage::Message::new(
        Event::TaskCompleted {
            seq: 0,
            result: "\"z\"".into(),
        },
        Some(1),
        env.clock.now(),
    );
    env.store.send_message(run.id(), dup.clone()).await.unwrap();
    let unknown = durable_core::storage::Message::new(
        Event::TaskCompleted {
            seq: 99,
            result: "1".into(),
        },
        Some(1),
        env.clock.now(),
    );
    env.store.send_message(run.id(), unknown).await.unwrap();
    run.raise("go", "?").await.unwrap();
    assert_eq!(run.wait().await.unwrap(), "a?");
    let h = run.history().await.unwrap();
    assert_eq!(count(&h, "TaskCompleted"), 1);
}

// ---------------------------------------------------------------- versioning and custom status

#[orchestrator]
async fn report_version(
    ctx: OrchestrationContext,
    _input: (),
) -> Result<Option<String>, OrchestrationError> {
    ctx.set_custom_status(&"checking")?;
    Ok(ctx.version())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_is_stamped_and_matched() {
    let env = start(|b| {
        b.register(report_version).version(
            "2.0",
            VersionMatch::CurrentOrOlder,
            VersionMismatchAction::LeavePending,
        )
    });
    let run = env.client.start(report_version, ()).await.unwrap();
    assert_eq!(run.wait().await.unwrap().as_deref(), Some("2.0"));
    assert_eq!(
        run.status().await.unwrap().custom_status.as_deref(),
        Some("\"checking\"")
    );

    let older = env
        .client
        .start_with(report_version, (), StartOptions::new().version("1.9"))
        .await
        .unwrap();
    assert_eq!(older.wait().await.unwrap().as_deref(), Some("1.9"));

    let newer = env
        .client
        .start_with(report_version, (), StartOptions::new().version("2.1"))
        .await
        .unwrap();
    let err = wait_error(&env.store, newer.id()).await;
    assert!(err.contains("version"), "{err}");
    assert_eq!(newer.status().await.unwrap().status, RuntimeStatus::Pending);
}

#[orchestrator]
async fn sub_with_options(
    ctx: OrchestrationContext,
    _input: (),
) -> Result<i64, OrchestrationError> {
    let id = InstanceId::new("explicit-child").unwrap();
    let opts = SubOrchestrationOptions::new().instance_id(id);
    Ok(ctx.call_sub_orchestrator_with(child, 4, opts).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_orchestration_with_explicit_id() {
    let env = start(|b| b.register(child).register(sub_with_options));
    let run = env.client.start(sub_with_options, ()).await.unwrap();
    assert_eq!(run.wait().await.unwrap(), 8);
    let child_record = env
        .client
        .status(&InstanceId::new("explicit-child").unwrap())
        .await
        .unwrap();
    assert_eq!(child_record.status, RuntimeStatus::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_registration_is_a_clear_error() {
    let err = Worker::builder()
        .store(MemoryStore::new())
        .register(echo)
        .register(echo)
        .start()
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("duplicate orchestrator name `echo`"),
        "{err}"
    );
}

// ---------------------------------------------------------------- review regressions

#[orchestrator]
async fn ticker(ctx: OrchestrationContext, n: u32) -> Result<u32, OrchestrationError> {
    let () = ctx.wait_for_event("tick").await?;
    ctx.continue_as_new(n + 1).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_in_the_same_batch_as_continue_as_new_is_not_lost() {
    let env = start(|b| b.register(ticker));
    let opts = StartOptions::new().scheduled_start(env.clock.now() + HOUR);
    let run = ticker::start_with(&env.client, 0, opts).await.unwrap();
    run.raise("tick", &()).await.unwrap();
    run.terminate("stop").await.unwrap();
    // One batch: start, tick (continues as new), terminate (applies to the next execution).
    env.clock.advance(HOUR);
    match run.wait().await {
        Err(ClientError::Terminated { reason }) => assert_eq!(reason, "stop"),
        other => panic!("expected terminated, got {other:?}"),
    }
    assert_eq!(run.status().await.unwrap().execution, 2);
}

#[orchestrator]
async fn reports_status(ctx: OrchestrationContext, _input: ()) -> Result<u32, OrchestrationError> {
    let a = ctx.call(step_a, ()).await?;
    ctx.set_custom_status(&format!("got {a}"))?;
    Ok(7)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_history_with_a_final_custom_status_replays_cleanly() {
    let env = start(|b| b.register(step_a).register(reports_status));
    let run = reports_status::start(&env.client, ()).await.unwrap();
    assert_eq!(run.wait().await.unwrap(), 7);
    let history = run.history().await.unwrap();
    let mut registry = durable_core::Registry::new();
    registry.register(step_a);
    registry.register(reports_status);
    durable_core::replay::replay_history(&registry, "reports_status", run.id(), &history)
        .expect("the recorded history replays against the same code");
}

// ---------------------------------------------------------------- long activities

static LONG_CALLS: AtomicUsize = AtomicUsize::new(0);
static LONG_GATE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(0);

#[activity]
async fn long_job(_input: ()) -> Result<u32, ActivityError> {
    LONG_CALLS.fetch_add(1, Ordering::SeqCst);
    LONG_GATE.acquire().await.unwrap().forget();
    Ok(7)
}

#[orchestrator]
async fn long_run(ctx: OrchestrationContext, _input: ()) -> Result<u32, OrchestrationError> {
    Ok(ctx.call(long_job, ()).await?)
}

/// Waits (yielding, guarded) until `done` holds.
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut done: impl FnMut() -> F,
) {
    let check = async {
        while !done().await {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_activity_keeps_its_lease_and_runs_once() {
    let env = start(|b| b.register(long_job).register(long_run));
    let run = long_run::start(&env.client, ()).await.unwrap();
    eventually("the activity to start", || async {
        LONG_CALLS.load(Ordering::SeqCst) == 1
    })
    .await;
    // Twenty virtual minutes: four times the 5-minute activity lease. Each step waits for
    // the worker's renewal to push the lease's expiry past the next step.
    let half = Duration::from_secs(150);
    for _ in 0..8 {
        env.clock.advance(half);
        let floor = env.clock.now() + half;
        eventually("the lease to be renewed", || async {
            env.store
                .next_wake_time_for(durable_core::storage::WorkKind::Activity)
                .await
                .unwrap()
                .is_some_and(|t| t > floor)
        })
        .await;
    }
    LONG_GATE.add_permits(1);
    assert_eq!(run.wait().await.unwrap(), 7);
    assert_eq!(
        LONG_CALLS.load(Ordering::SeqCst),
        1,
        "the running activity was not taken over and run again"
    );
}

// ---------------------------------------------------------------- version mismatch: fail

#[orchestrator]
async fn newer_child_parent(
    ctx: OrchestrationContext,
    _input: (),
) -> Result<String, OrchestrationError> {
    let opts = SubOrchestrationOptions::new().version("9.0");
    match ctx.call_sub_orchestrator_with(child, 1, opts).await {
        Ok(v) => Ok(format!("child answered {v}")),
        Err(e) => Ok(format!("child failed: {e}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_failed_for_its_version_reports_to_its_parent() {
    let env = start(|b| {
        b.register(child).register(newer_child_parent).version(
            "1.0",
            VersionMatch::CurrentOrOlder,
            VersionMismatchAction::Fail,
        )
    });
    let run = env.client.start(newer_child_parent, ()).await.unwrap();
    let out = run.wait().await.unwrap();
    assert!(out.starts_with("child failed"), "{out}");
    assert!(out.contains("does not match"), "{out}");
    let h = run.history().await.unwrap();
    assert_eq!(count(&h, "SubOrchestrationFailed"), 1);
}

// ---------------------------------------------------------------- activity context

static SEEN_ATTEMPTS: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

#[activity]
async fn counts_attempts(ctx: ActivityContext, _input: ()) -> Result<u32, ActivityError> {
    SEEN_ATTEMPTS.lock().unwrap().push(ctx.attempt);
    if ctx.attempt < 3 {
        return Err(ActivityError::new(format!(
            "attempt {} failed",
            ctx.attempt
        )));
    }
    Ok(ctx.attempt)
}

#[orchestrator]
async fn retry_counting(ctx: OrchestrationContext, _input: ()) -> Result<u32, OrchestrationError> {
    let policy = RetryPolicy::new(5, Duration::from_secs(1));
    Ok(ctx.call_with_retry(counts_attempts, (), policy).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activity_sees_its_attempt_number() {
    let env = start(|b| b.register(counts_attempts).register(retry_counting));
    let run = env.client.start(retry_counting, ()).await.unwrap();
    for n in 1..=2 {
        wait_for_events(&env.store, run.id(), "TimerCreated", n).await;
        env.clock.advance(Duration::from_secs(60));
    }
    assert_eq!(run.wait().await.unwrap(), 3);
    assert_eq!(*SEEN_ATTEMPTS.lock().unwrap(), vec![1, 2, 3]);
}

static STOPPABLE_RUNS: AtomicUsize = AtomicUsize::new(0);

#[activity]
async fn stoppable(ctx: ActivityContext, _input: ()) -> Result<String, ActivityError> {
    if STOPPABLE_RUNS.fetch_add(1, Ordering::SeqCst) == 0 {
        // The first run waits until it is told to stop, and stops.
        ctx.cancellation.cancelled().await;
        assert!(ctx.is_cancelled());
        return Err(ActivityError::new("stopped early"));
    }
    Ok("done".into())
}

#[orchestrator]
async fn runs_stoppable(
    ctx: OrchestrationContext,
    _input: (),
) -> Result<String, OrchestrationError> {
    Ok(ctx.call(stoppable, ()).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_cancels_running_activities_without_failing_them() {
    let env = start(|b| b.register(stoppable).register(runs_stoppable));
    let run = env.client.start(runs_stoppable, ()).await.unwrap();
    let id = run.id().clone();
    wait_for_events(&env.store, &id, "TaskScheduled", 1).await;
    let started = tokio::time::timeout(Duration::from_secs(20), async {
        while STOPPABLE_RUNS.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(started.is_ok(), "the activity started");
    let (store, clock) = (env.store.clone(), env.clock.clone());
    // Graceful shutdown: the running activity is cancelled, stops with an error, and that
    // error is not recorded as the task's failure.
    env.worker.shutdown().await;
    let h = store.read_history(&id).await.unwrap();
    assert_eq!(
        count(&h, "TaskFailed"),
        0,
        "{}",
        durable_core::history::pretty(&h)
    );
    assert_eq!(
        store.read_instance(&id).await.unwrap().unwrap().status,
        RuntimeStatus::Running
    );
    // The task went back to the queue: the next worker runs it at once.
    let env2 = start_on(store, clock, |b| {
        b.register(stoppable).register(runs_stoppable)
    });
    let out = runs_stoppable::handle(&env2.client, id)
        .wait()
        .await
        .unwrap();
    assert_eq!(out, "done");
    assert_eq!(STOPPABLE_RUNS.load(Ordering::SeqCst), 2);
}

// ---------------------------------------------------------------- retention

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_purges_instances_a_while_after_they_finished() {
    const DAY: Duration = Duration::from_secs(24 * 3600);
    let env = start(|b| {
        b.register(greet)
            .register(shout)
            .register(chain)
            .register(wait_for_go)
            .retention(DAY)
    });
    let done = chain::start(&env.client, "ada".into()).await.unwrap();
    done.wait().await.unwrap();
    let waiting = env.client.start(wait_for_go, ()).await.unwrap();
    wait_status(&env.store, waiting.id(), RuntimeStatus::Running).await;

    // Half a day later the finished one is still there; two days later it is gone, history
    // and all, while the one still running is kept.
    env.clock.advance(DAY / 2);
    tokio::task::yield_now().await;
    assert!(env.store.read_instance(done.id()).await.unwrap().is_some());
    env.clock.advance(DAY * 2);
    let gone = tokio::time::timeout(Duration::from_secs(20), async {
        while env.store.read_instance(done.id()).await.unwrap().is_some() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(gone.is_ok(), "the finished instance was purged");
    assert!(env.store.read_history(done.id()).await.unwrap().is_empty());
    assert_eq!(
        env.client.status(waiting.id()).await.unwrap().status,
        RuntimeStatus::Running
    );
}

// ---------------------------------------------------------------- a lost activity lease

static LL_RUNS: AtomicUsize = AtomicUsize::new(0);
static LL_CANCELLED: AtomicUsize = AtomicUsize::new(0);

#[activity]
async fn ll_act(ctx: ActivityContext, _input: ()) -> Result<String, ActivityError> {
    LL_RUNS.fetch_add(1, Ordering::SeqCst);
    ctx.cancellation.cancelled().await;
    LL_CANCELLED.fetch_add(1, Ordering::SeqCst);
    Err(ActivityError::new("cancelled"))
}

#[orchestrator]
async fn ll_orch(ctx: OrchestrationContext, _input: ()) -> Result<String, OrchestrationError> {
    Ok(ctx.call(ll_act, ()).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activity_that_lost_its_lease_does_not_report_a_result() {
    use durable_core::storage::Message;
    let env = start(|b| b.register(ll_act).register(ll_orch));
    let run = env.client.start(ll_orch, ()).await.unwrap();
    let id = run.id().clone();
    let started = tokio::time::timeout(Duration::from_secs(20), async {
        while LL_RUNS.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(started.is_ok(), "the activity started");
    // "Another worker" takes the task over once the lease has expired (as if this worker had
    // been cut off from the store).
    let lock = Duration::from_secs(300);
    let later = env.clock.now() + lock * 2;
    let stolen = env
        .store
        .fetch_activity_work(later, lock * 10, 10)
        .await
        .unwrap();
    assert_eq!(stolen.len(), 1);
    // The first worker's renewal fails: its activity is cancelled and stops with an error.
    env.clock.advance(lock / 2 + Duration::from_secs(1));
    let cancelled = tokio::time::timeout(Duration::from_secs(20), async {
        while LL_CANCELLED.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(cancelled.is_ok(), "the activity saw the cancellation");
    // Give a wrongly reported result every chance to reach the orchestration first.
    for _ in 0..5_000 {
        let h = env.store.read_history(&id).await.unwrap();
        assert_eq!(
            count(&h, "TaskFailed"),
            0,
            "the cancelled run's failure was reported"
        );
        tokio::task::yield_now().await;
    }
    // The new owner's result is the one that counts.
    let w = &stolen[0];
    let done = Event::TaskCompleted {
        seq: w.task.seq,
        result: "\"from the new owner\"".into(),
    };
    let now = env.clock.now();
    env.store
        .complete_activity(
            w.id,
            w.lock,
            Message::new(done, Some(w.task.execution), now),
        )
        .await
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(20), run.wait()).await;
    assert_eq!(out.expect("completes").unwrap(), "from the new owner");
    let h = env.store.read_history(&id).await.unwrap();
    assert_eq!(count(&h, "TaskFailed"), 0);
}
