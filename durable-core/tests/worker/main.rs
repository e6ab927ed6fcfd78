//! The engine end to end: worker + client + in-memory store + manual clock.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use durable_core::history::Event;
use durable_core::prelude::*;
use durable_core::{Clock, InstanceQuery, Store, SubOrchestrationOptions, VersionMatch, VersionMismatchAction};
use support::*;

const HOUR: Duration = Duration::from_secs(3600);

// ---------------------------------------------------------------- chaining

activity!(Greet, String => String, |name| { Ok(format!("Hello {name}!")) });
activity!(Shout, String => String, |s| { Ok(s.to_uppercase()) });

orchestrator!(Chain, String => String, |ctx, name| {
    let a = ctx.call(Greet, name).await?;
    let b = ctx.call(Shout, a).await?;
    let c = ctx.call(Greet, b).await?;
    Ok(c)
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaining_passes_each_output_to_the_next_step() {
    let env = start(|b| b.activity(Greet).activity(Shout).orchestrator(Chain));
    let run = env.client.start(Chain, "ada".into()).await.unwrap();
    assert_eq!(run.wait().await.unwrap(), "Hello HELLO ADA!!");
    let h = run.history().await.unwrap();
    assert_eq!(count(&h, "TaskScheduled"), 3);
    assert_eq!(count(&h, "TaskCompleted"), 3);
    assert!(matches!(h.last().unwrap().event, Event::ExecutionCompleted { status: RuntimeStatus::Completed, .. }));
    let names: Vec<_> = h
        .iter()
        .filter_map(|e| match &e.event {
            Event::TaskScheduled { name, location, .. } => Some((name.clone(), location.clone().unwrap().file)),
            _ => None,
        })
        .collect();
    assert_eq!(names[0].0, "Greet");
    assert_eq!(names[1].0, "Shout");
    assert!(names[0].1.ends_with("main.rs"), "location recorded: {:?}", names[0].1);
}

// ---------------------------------------------------------------- fan-out with a crash

static FAN_CALLS: [AtomicUsize; 20] = [const { AtomicUsize::new(0) }; 20];
static FAN_GATE_OPEN: AtomicBool = AtomicBool::new(false);

activity!(FanWork, u64 => u64, |i| {
    FAN_CALLS[i as usize].fetch_add(1, Ordering::SeqCst);
    if i >= 10 && !FAN_GATE_OPEN.load(Ordering::SeqCst) {
        // The first worker "crashes" while these are in flight.
        std::future::pending::<()>().await;
    }
    Ok(i * i)
});

orchestrator!(FanOut, u64 => u64, |ctx, n| {
    let tasks = (0..n).map(|i| ctx.call(FanWork, i));
    let results = ctx.when_all(tasks).await;
    let mut sum = 0;
    for r in results {
        sum += r?;
    }
    Ok(sum)
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_survives_a_crash_without_rerunning_completed_activities() {
    let env = start(|b| b.activity(FanWork).orchestrator(FanOut));
    let run = env.client.start(FanOut, 20).await.unwrap();
    wait_for_events(&env.store, run.id(), "TaskCompleted", 10).await;
    // Crash: no cleanup, leases stay held until they expire.
    let (store, clock) = (env.store.clone(), env.clock.clone());
    env.worker.abort();
    FAN_GATE_OPEN.store(true, Ordering::SeqCst);

    let env2 = start_on(store, clock, |b| b.activity(FanWork).orchestrator(FanOut));
    env2.clock.advance(Duration::from_secs(600)); // past every lease
    let out = env2.client.handle::<u64>(run.id().clone()).wait().await.unwrap();
    assert_eq!(out, (0..20).map(|i| i * i).sum::<u64>());
    for (i, calls) in FAN_CALLS.iter().enumerate().take(10) {
        assert_eq!(calls.load(Ordering::SeqCst), 1, "completed activity {i} ran again");
    }
    for (i, calls) in FAN_CALLS.iter().enumerate().skip(10) {
        assert_eq!(calls.load(Ordering::SeqCst), 2, "in-flight activity {i} runs once more");
    }
    let h = run.history().await.unwrap();
    assert_eq!(count(&h, "TaskCompleted"), 20);
}

// ---------------------------------------------------------------- timers

orchestrator!(Nap, u64 => Timestamp, |ctx, hours| {
    ctx.sleep(HOUR * hours as u32).await;
    Ok(ctx.now())
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_timer_fires_on_the_manual_clock() {
    let env = start(|b| b.orchestrator(Nap));
    let t0 = env.clock.now();
    let run = env.client.start(Nap, 72).await.unwrap();
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

orchestrator!(TwoWaiters, () => (i32, i32), |ctx, _input| {
    let first = ctx.wait_for_event::<i32>("x");
    let second = ctx.wait_for_event::<i32>("x");
    let b = second.await?;
    let a = first.await?;
    Ok((a, b))
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_go_to_waiters_oldest_first_even_when_raised_before_the_wait() {
    let env = start(|b| b.orchestrator(TwoWaiters));
    // Scheduled start: the events arrive before the orchestration runs at all.
    let opts = StartOptions::new().scheduled_start(env.clock.now() + HOUR);
    let run = env.client.start_with(TwoWaiters, (), opts).await.unwrap();
    run.raise("x", &1).await.unwrap();
    run.raise("x", &2).await.unwrap();
    assert_eq!(run.status().await.unwrap().status, RuntimeStatus::Pending);
    env.clock.advance(HOUR);
    assert_eq!(run.wait().await.unwrap(), (1, 2));

    // Raised after the wait began.
    let run = env.client.start(TwoWaiters, ()).await.unwrap();
    wait_status(&env.store, run.id(), RuntimeStatus::Running).await;
    run.raise("x", &10).await.unwrap();
    run.raise("x", &20).await.unwrap();
    assert_eq!(run.wait().await.unwrap(), (10, 20));
}

orchestrator!(Approval, () => String, |ctx, _input| {
    match ctx.wait_for_event_timeout::<bool>("approve", HOUR * 72).await {
        Ok(true) => Ok("approved".into()),
        Ok(false) => Ok("rejected".into()),
        Err(e) if e.is_timeout() => {
            // The timed-out waiter released its claim: the next wait gets the late event.
            let late: bool = ctx.wait_for_event("approve").await?;
            Ok(format!("escalated, then {late}"))
        }
        Err(e) => Err(e.into()),
    }
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_versus_timer_race_both_ways() {
    let env = start(|b| b.orchestrator(Approval));
    let run = env.client.start(Approval, ()).await.unwrap();
    wait_for_events(&env.store, run.id(), "TimerCreated", 1).await;
    run.raise("approve", &true).await.unwrap();
    assert_eq!(run.wait().await.unwrap(), "approved");

    let run = env.client.start(Approval, ()).await.unwrap();
    wait_for_events(&env.store, run.id(), "TimerCreated", 1).await;
    env.clock.advance(HOUR * 72);
    wait_for_events(&env.store, run.id(), "TimerFired", 1).await;
    run.raise("approve", &false).await.unwrap();
    assert_eq!(run.wait().await.unwrap(), "escalated, then false");
    // Finished: events are refused with a typed error.
    assert!(matches!(run.raise("approve", &true).await, Err(ClientError::InstanceNotRunning(_))));
}

// ---------------------------------------------------------------- sub-orchestrations

orchestrator!(Child, i64 => i64, |ctx, x| {
    if x < 0 {
        return Err(OrchestrationError::new(format!("negative input {x}")));
    }
    Ok(x * 2)
});

orchestrator!(Parent, i64 => String, |ctx, x| {
    match ctx.call_sub_orchestrator(Child, x).await {
        Ok(v) => Ok(format!("child said {v}")),
        Err(TaskError::Failed(f)) => Ok(format!("child failed: {}", f.message)),
        Err(e) => Err(e.into()),
    }
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_orchestration_results_and_failures_reach_the_parent() {
    let env = start(|b| b.orchestrator(Child).orchestrator(Parent));
    let ok = env.client.start(Parent, 21).await.unwrap();
    assert_eq!(ok.wait().await.unwrap(), "child said 42");
    let child_id = InstanceId::new(format!("{}:0", ok.id())).unwrap();
    let child = env.client.status(&child_id).await.unwrap();
    assert_eq!(child.status, RuntimeStatus::Completed);
    assert_eq!(child.parent.unwrap().instance_id, *ok.id());

    let bad = env.client.start(Parent, -1).await.unwrap();
    assert_eq!(bad.wait().await.unwrap(), "child failed: negative input -1");
}

// ---------------------------------------------------------------- retries

static FLAKY_CALLS: AtomicUsize = AtomicUsize::new(0);

activity!(Flaky, () => u32, |_input| {
    let n = FLAKY_CALLS.fetch_add(1, Ordering::SeqCst) + 1;
    if n < 3 {
        return Err(ActivityError::new(format!("attempt {n} failed")));
    }
    Ok(n as u32)
});

orchestrator!(RetryFlaky, () => u32, |ctx, _input| {
    let policy = RetryPolicy::new(5, Duration::from_secs(10)).backoff_coefficient(2.0);
    Ok(ctx.call_with_retry(Flaky, (), policy).await?)
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_back_off_on_durable_timers() {
    let env = start(|b| b.activity(Flaky).orchestrator(RetryFlaky));
    let t0 = env.clock.now();
    let run = env.client.start(RetryFlaky, ()).await.unwrap();
    let h = wait_for_events(&env.store, run.id(), "TimerCreated", 1).await;
    assert_eq!(timers(&h), vec![t0 + Duration::from_secs(10)]);
    env.clock.advance(Duration::from_secs(10));
    let h = wait_for_events(&env.store, run.id(), "TimerCreated", 2).await;
    assert_eq!(timers(&h)[1], t0 + Duration::from_secs(30), "second back-off is doubled");
    env.clock.advance(Duration::from_secs(20));
    assert_eq!(run.wait().await.unwrap(), 3);
    assert_eq!(FLAKY_CALLS.load(Ordering::SeqCst), 3);
    let h = run.history().await.unwrap();
    assert_eq!(count(&h, "TaskFailed"), 2);
    assert_eq!(count(&h, "TaskScheduled"), 3);
}

// ---------------------------------------------------------------- continue-as-new

orchestrator!(Accumulate, i32 => i32, |ctx, total| {
    if total >= 3 {
        return Ok(total);
    }
    let add: i32 = ctx.wait_for_event("add").await?;
    ctx.continue_as_new(total + add).await
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continue_as_new_carries_unprocessed_events_over() {
    let env = start(|b| b.orchestrator(Accumulate));
    let opts = StartOptions::new().scheduled_start(env.clock.now() + HOUR);
    let run = env.client.start_with(Accumulate, 0, opts).await.unwrap();
    for _ in 0..3 {
        run.raise("add", &1).await.unwrap();
    }
    env.clock.advance(HOUR);
    assert_eq!(run.wait().await.unwrap(), 3);
    let r = run.status().await.unwrap();
    assert_eq!(r.execution, 4, "three continue-as-new generations");
    let h = run.history().await.unwrap();
    assert_eq!(count(&h, "EventRaised"), 0, "the last execution needed no event");
}

// ---------------------------------------------------------------- terminate / suspend / resume

orchestrator!(WaitForGo, () => String, |ctx, _input| {
    let v: String = ctx.wait_for_event("go").await?;
    Ok(v)
});

orchestrator!(ParentOfWaiter, () => String, |ctx, _input| {
    Ok(ctx.call_sub_orchestrator(WaitForGo, ()).await?)
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_suspend_resume_and_their_errors() {
    let env = start(|b| b.orchestrator(WaitForGo).orchestrator(ParentOfWaiter));
    let unknown = InstanceId::new("nope").unwrap();
    assert!(matches!(env.client.terminate(&unknown, "x").await, Err(ClientError::InstanceNotFound(_))));
    assert!(matches!(env.client.suspend(&unknown, "x").await, Err(ClientError::InstanceNotFound(_))));
    assert!(matches!(env.client.status(&unknown).await, Err(ClientError::InstanceNotFound(_))));

    // Suspend holds events back; resume delivers them.
    let run = env.client.start(WaitForGo, ()).await.unwrap();
    wait_status(&env.store, run.id(), RuntimeStatus::Running).await;
    run.suspend("maintenance").await.unwrap();
    wait_status(&env.store, run.id(), RuntimeStatus::Suspended).await;
    run.raise("go", "now").await.unwrap();
    wait_for_events(&env.store, run.id(), "EventRaised", 1).await;
    assert_eq!(run.status().await.unwrap().status, RuntimeStatus::Suspended);
    run.resume("done").await.unwrap();
    assert_eq!(run.wait().await.unwrap(), "now");
    assert!(matches!(run.suspend("x").await, Err(ClientError::InstanceNotRunning(_))));
    assert!(matches!(run.resume("x").await, Err(ClientError::InstanceNotRunning(_))));

    // Terminate cascades to the running child.
    let parent = env.client.start(ParentOfWaiter, ()).await.unwrap();
    let child_id = InstanceId::new(format!("{}:0", parent.id())).unwrap();
    wait_status(&env.store, &child_id, RuntimeStatus::Running).await;
    parent.terminate("shutting down").await.unwrap();
    match parent.wait().await {
        Err(ClientError::Terminated { reason }) => assert_eq!(reason, "shutting down"),
        other => panic!("expected terminated, got {other:?}"),
    }
    let child = wait_done(&env.store, &child_id).await;
    assert_eq!(child.status, RuntimeStatus::Terminated);
    assert!(matches!(parent.terminate("again").await, Err(ClientError::InstanceNotRunning(_))));
}

// ---------------------------------------------------------------- purge, query, id reuse

orchestrator!(Echo, String => String, |ctx, s| { Ok(s) });

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_removes_instances_and_children() {
    let env = start(|b| b.orchestrator(Child).orchestrator(Parent).orchestrator(WaitForGo));
    let run = env.client.start(Parent, 1).await.unwrap();
    run.wait().await.unwrap();
    let child_id = InstanceId::new(format!("{}:0", run.id())).unwrap();
    let purged = env.client.purge(run.id()).await.unwrap();
    assert_eq!(purged.deleted, 2, "parent and child");
    assert!(matches!(env.client.status(run.id()).await, Err(ClientError::InstanceNotFound(_))));
    assert!(matches!(env.client.status(&child_id).await, Err(ClientError::InstanceNotFound(_))));
    assert!(env.store.read_history(run.id()).await.unwrap().is_empty());
    assert!(matches!(env.client.purge(run.id()).await, Err(ClientError::InstanceNotFound(_))));

    let running = env.client.start(WaitForGo, ()).await.unwrap();
    assert!(matches!(env.client.purge(running.id()).await, Err(ClientError::InstanceStillRunning(_))));

    for _ in 0..3 {
        env.client.start(Child, 5).await.unwrap().wait().await.unwrap();
    }
    let r = env
        .client
        .purge_by_filter(InstanceQuery::new().name("Child"))
        .await
        .unwrap();
    assert_eq!(r.deleted, 3);
    assert_eq!(env.client.status(running.id()).await.unwrap().status, RuntimeStatus::Running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_filters_and_pages() {
    let env = start(|b| b.orchestrator(Echo).orchestrator(WaitForGo));
    for i in 0..25 {
        let opts = StartOptions::new().instance_id(InstanceId::new(format!("q-{i:02}")).unwrap());
        env.client.start_with(Echo, format!("{i}"), opts).await.unwrap().wait().await.unwrap();
    }
    let waiting = env.client.start(WaitForGo, ()).await.unwrap();
    wait_status(&env.store, waiting.id(), RuntimeStatus::Running).await;

    let mut q = InstanceQuery::new().id_prefix("q-").page_size(10);
    let mut sizes = Vec::new();
    let mut seen = Vec::new();
    loop {
        let page = env.client.query(&q).await.unwrap();
        sizes.push(page.instances.len());
        seen.extend(page.instances.into_iter().map(|r| r.instance_id.to_string()));
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
    let by_name = env.client.query(&InstanceQuery::new().name("Echo").page_size(100)).await.unwrap();
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
    let env = start(|b| b.orchestrator(Echo).orchestrator(WaitForGo));
    let id = InstanceId::new("singleton").unwrap();
    let opts = || StartOptions::new().instance_id(id.clone());
    let first = env.client.start_with(Echo, "one".into(), opts()).await.unwrap();
    assert_eq!(first.wait().await.unwrap(), "one");
    // Finished: the default policy replaces it.
    let second = env.client.start_with(Echo, "two".into(), opts()).await.unwrap();
    assert_eq!(second.wait().await.unwrap(), "two");
    assert_eq!(second.status().await.unwrap().execution, 2);
    // RejectExisting refuses even a finished instance.
    let reject = env
        .client
        .start_with(Echo, "three".into(), opts().reuse(IdReusePolicy::RejectExisting))
        .await;
    assert!(matches!(reject, Err(ClientError::InstanceAlreadyExists(_))));

    let wid = InstanceId::new("waiting-singleton").unwrap();
    let wopts = || StartOptions::new().instance_id(wid.clone());
    env.client.start_with(WaitForGo, (), wopts()).await.unwrap();
    let again = env.client.start_with(WaitForGo, (), wopts()).await;
    assert!(matches!(again, Err(ClientError::InstanceAlreadyExists(_))));
    let deduped = env
        .client
        .start_with(WaitForGo, (), wopts().reuse(IdReusePolicy::DedupeRunning))
        .await
        .unwrap();
    assert_eq!(deduped.id(), &wid);
    assert_eq!(deduped.status().await.unwrap().execution, 1);
}

// ---------------------------------------------------------------- non-determinism and foreign wakes

activity!(StepA, () => String, |_i| { Ok("a".into()) });
activity!(StepB, () => String, |_i| { Ok("b".into()) });

orchestrator!(Versioned, () => String, |ctx, _input| {
    let first = ctx.call(StepA, ()).await?;
    let go: String = ctx.wait_for_event("go").await?;
    Ok(format!("{first}{go}"))
});

mod v2 {
    use super::*;
    // The same orchestrator name, but the first step changed: replay must notice.
    #[derive(Clone, Copy, Debug)]
    pub(super) struct Versioned;
    impl Orchestrator for Versioned {
        const NAME: &'static str = "Versioned";
        type Input = ();
        type Output = String;
        type Error = OrchestrationError;
        async fn run(ctx: OrchestrationContext, _input: ()) -> Result<String, OrchestrationError> {
            let first = ctx.call(StepB, ()).await?;
            let go: String = ctx.wait_for_event("go").await?;
            Ok(format!("{first}{go}"))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nondeterminism_leaves_the_instance_stuck_until_fixed_code_runs_it() {
    let env = start(|b| b.activity(StepA).activity(StepB).orchestrator(Versioned));
    let run = env.client.start(Versioned, ()).await.unwrap();
    wait_for_events(&env.store, run.id(), "TaskCompleted", 1).await;
    let (store, clock) = (env.store.clone(), env.clock.clone());
    env.worker.shutdown().await;

    // A deploy with changed code and no cache: replay detects the change.
    let bad = start_on(store.clone(), clock.clone(), |b| {
        b.activity(StepA).activity(StepB).orchestrator(v2::Versioned)
    });
    run.raise("go", "!").await.unwrap();
    let err = wait_error(&store, run.id()).await;
    assert!(err.contains("non-determinism"), "{err}");
    assert!(err.contains("recorded activity `StepA`"), "{err}");
    assert!(err.contains("now schedules activity `StepB`"), "{err}");
    assert!(err.contains("main.rs"), "source locations are named: {err}");
    assert_eq!(run.status().await.unwrap().status, RuntimeStatus::Running, "stuck, not failed");
    bad.worker.shutdown().await;

    // Rolling the fix out rescues it.
    let good = start_on(store.clone(), clock.clone(), |b| b.activity(StepA).orchestrator(Versioned));
    good.clock.advance(Duration::from_secs(3600)); // past the retry back-off
    assert_eq!(run.wait().await.unwrap(), "a!");
}

orchestrator!(AwaitsChannel, () => (), |ctx, _input| {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::mem::forget(tx);
    let _ = rx.await;
    Ok(())
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awaiting_a_non_durable_future_is_reported() {
    let env = start(|b| b.orchestrator(AwaitsChannel));
    let run = env.client.start(AwaitsChannel, ()).await.unwrap();
    let err = wait_error(&env.store, run.id()).await;
    assert!(err.contains("not a durable operation"), "{err}");
    assert!(err.contains("ctx.sleep"), "{err}");
    assert_eq!(run.status().await.unwrap().status, RuntimeStatus::Pending);
}

// ---------------------------------------------------------------- bad input and failures

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_rejected_with_typed_errors() {
    let env = start(|b| b.orchestrator(Nap));
    let err = env.client.start_raw("Nap", "\"ten\"", StartOptions::new()).await.unwrap_err();
    match err {
        ClientError::PayloadDecode(e) => assert_eq!(e.expected, "u64"),
        other => panic!("{other:?}"),
    }
    let err = env.client.start_raw("NoSuchThing", "1", StartOptions::new()).await.unwrap_err();
    assert!(matches!(err, ClientError::UnknownOrchestrator(ref n) if n == "NoSuchThing"));
    assert!(InstanceId::new("bad/id").is_err());
    let big = "x".repeat(2 << 20);
    let run = env.client.start(Nap, 1).await.unwrap();
    assert!(matches!(run.raise("e", &big).await, Err(ClientError::PayloadTooLarge { .. })));
}

activity!(Explode, () => (), |_i| { panic!("kaboom") });

orchestrator!(CallsExplode, () => String, |ctx, _input| {
    match ctx.call(Explode, ()).await {
        Err(TaskError::Failed(f)) => Ok(format!("{}|{}", f.error_type, f.message)),
        other => Ok(format!("unexpected {other:?}")),
    }
});

orchestrator!(PanicsItself, () => (), |ctx, _input| { panic!("orchestrator bug") });

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_become_failures_with_details() {
    let env = start(|b| b.activity(Explode).orchestrator(CallsExplode).orchestrator(PanicsItself));
    let out = env.client.start(CallsExplode, ()).await.unwrap().wait().await.unwrap();
    assert_eq!(out, "panic|activity `Explode` panicked: kaboom");
    match env.client.start(PanicsItself, ()).await.unwrap().wait().await {
        Err(ClientError::Failed(f)) => assert!(f.message.contains("orchestrator bug"), "{f}"),
        other => panic!("{other:?}"),
    }
    // The worker survived both.
    let out = env.client.start(CallsExplode, ()).await.unwrap().wait().await.unwrap();
    assert!(out.starts_with("panic|"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_activity_completion_is_ignored() {
    let env = start(|b| b.activity(StepA).orchestrator(Versioned));
    let run = env.client.start(Versioned, ()).await.unwrap();
    wait_for_events(&env.store, run.id(), "TaskCompleted", 1).await;
    // At-least-once redelivery of the same result, then a stale one for an unknown step.
    let dup = durable_core::storage::Message::new(
        Event::TaskCompleted { seq: 0, result: "\"z\"".into() },
        Some(1),
        env.clock.now(),
    );
    env.store.send_message(run.id(), dup.clone()).await.unwrap();
    let unknown = durable_core::storage::Message::new(
        Event::TaskCompleted { seq: 99, result: "1".into() },
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

orchestrator!(ReportVersion, () => Option<String>, |ctx, _input| {
    ctx.set_custom_status(&"checking")?;
    Ok(ctx.version())
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_is_stamped_and_matched() {
    let env = start(|b| {
        b.orchestrator(ReportVersion)
            .version("2.0", VersionMatch::CurrentOrOlder, VersionMismatchAction::LeavePending)
    });
    let run = env.client.start(ReportVersion, ()).await.unwrap();
    assert_eq!(run.wait().await.unwrap().as_deref(), Some("2.0"));
    assert_eq!(run.status().await.unwrap().custom_status.as_deref(), Some("\"checking\""));

    let older = env
        .client
        .start_with(ReportVersion, (), StartOptions::new().version("1.9"))
        .await
        .unwrap();
    assert_eq!(older.wait().await.unwrap().as_deref(), Some("1.9"));

    let newer = env
        .client
        .start_with(ReportVersion, (), StartOptions::new().version("2.1"))
        .await
        .unwrap();
    let err = wait_error(&env.store, newer.id()).await;
    assert!(err.contains("version"), "{err}");
    assert_eq!(newer.status().await.unwrap().status, RuntimeStatus::Pending);
}

orchestrator!(SubWithOptions, () => i64, |ctx, _input| {
    let id = InstanceId::new("explicit-child").unwrap();
    let opts = SubOrchestrationOptions::new().instance_id(id);
    Ok(ctx.call_sub_orchestrator_with(Child, 4, opts).await?)
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_orchestration_with_explicit_id() {
    let env = start(|b| b.orchestrator(Child).orchestrator(SubWithOptions));
    let run = env.client.start(SubWithOptions, ()).await.unwrap();
    assert_eq!(run.wait().await.unwrap(), 8);
    let child = env.client.status(&InstanceId::new("explicit-child").unwrap()).await.unwrap();
    assert_eq!(child.status, RuntimeStatus::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_registration_is_a_clear_error() {
    let err = Worker::builder()
        .store(MemoryStore::new())
        .orchestrator(Echo)
        .orchestrator(Echo)
        .start()
        .unwrap_err();
    assert!(err.to_string().contains("duplicate orchestrator name `Echo`"), "{err}");
}
