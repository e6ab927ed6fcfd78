//! Rewind: a failed instance resumes at the point of failure.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use durable_core::history::{Event, HistoryEvent};
use durable_core::prelude::*;
use durable_core::{Clock, Store};

use crate::support::*;

// ------------------------------------------------------------- a failed fan-out step

static STEP_CALLS: [AtomicUsize; 5] = [const { AtomicUsize::new(0) }; 5];
static STEP_FIXED: AtomicBool = AtomicBool::new(false);
static TOTAL_CALLS: AtomicUsize = AtomicUsize::new(0);

#[activity]
async fn rw_step(i: usize) -> Result<usize, ActivityError> {
    STEP_CALLS[i].fetch_add(1, Ordering::SeqCst);
    if i == 3 && !STEP_FIXED.load(Ordering::SeqCst) {
        return Err(ActivityError::new("step 3 is broken"));
    }
    Ok(i * 10)
}

#[activity]
async fn rw_total(sum: usize) -> Result<String, ActivityError> {
    TOTAL_CALLS.fetch_add(1, Ordering::SeqCst);
    Ok(format!("total {sum}"))
}

#[orchestrator]
async fn rw_fan(ctx: OrchestrationContext, _input: ()) -> Result<String, OrchestrationError> {
    let mut sum = ctx.call(rw_step, 0).await? + ctx.call(rw_step, 1).await?;
    for r in ctx.when_all((2..5).map(|i| ctx.call(rw_step, i))).await {
        sum += r?;
    }
    Ok(ctx.call(rw_total, sum).await?)
}

fn rewinds(h: &[HistoryEvent]) -> Vec<Vec<u64>> {
    h.iter()
        .filter_map(|e| match &e.event {
            Event::ExecutionRewound { seqs, .. } => Some(seqs.clone()),
            _ => None,
        })
        .collect()
}

/// The sequence number of the `rw_step` call with this input, and the index of its
/// `TaskCompleted`.
fn step_events(h: &[HistoryEvent], i: usize) -> (u64, Option<u64>) {
    let seq = h
        .iter()
        .find_map(|e| match &e.event {
            Event::TaskScheduled { seq, input, .. } if *input == i.to_string() => Some(*seq),
            _ => None,
        })
        .unwrap();
    let done = h.iter().find_map(|e| match &e.event {
        Event::TaskCompleted { seq: s, .. } if *s == seq => Some(e.index),
        _ => None,
    });
    (seq, done)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewind_reruns_the_failed_step_and_what_was_in_flight_only() {
    let env = start(|b| b.register(rw_step).register(rw_total).register(rw_fan));
    let run = rw_fan::start(&env.client, ()).await.unwrap();
    let failed = wait_status(&env.store, run.id(), RuntimeStatus::Failed).await;
    assert!(failed.failure.unwrap().message.contains("step 3 is broken"));
    let failed_at = run
        .history()
        .await
        .unwrap()
        .iter()
        .find(|e| matches!(e.event, Event::ExecutionCompleted { .. }))
        .unwrap()
        .index;

    STEP_FIXED.store(true, Ordering::SeqCst);
    run.rewind("fixed").await.unwrap();
    let r = wait_status(&env.store, run.id(), RuntimeStatus::Completed).await;
    assert_eq!(r.output.as_deref(), Some("\"total 100\""));
    assert!(r.failure.is_none());
    assert_eq!(run.wait().await.unwrap(), "total 100");

    let h = run.history().await.unwrap();
    // Steps 0 and 1 finished before the failure: not re-run. Step 3 failed: re-run once.
    // Steps 2 and 4 ran beside it: re-run only if their result had not been recorded when
    // the run failed (a result reaching a failed instance is dropped).
    for (i, calls) in STEP_CALLS.iter().enumerate() {
        let (_, done) = step_events(&h, i);
        let done = done.unwrap();
        let expected = match i {
            3 => 2,
            _ if done < failed_at => 1,
            _ => 2,
        };
        assert_eq!(calls.load(Ordering::SeqCst), expected, "step {i}");
    }
    assert_eq!(TOTAL_CALLS.load(Ordering::SeqCst), 1);
    // Append-only: the failure and the rewind (naming the step it undid) stay in history.
    assert_eq!(rewinds(&h), vec![vec![step_events(&h, 3).0]]);
    assert_eq!(count(&h, "TaskFailed"), 1);
    assert_eq!(count(&h, "ExecutionCompleted"), 2);

    // A completed instance cannot be rewound, nor an unknown one.
    let err = run.rewind("again").await.unwrap_err();
    assert!(
        matches!(&err, ClientError::CannotRewind { reason, .. } if reason.contains("Completed")),
        "{err}"
    );
    let err = env
        .client
        .rewind(&InstanceId::new("nobody").unwrap(), "")
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::InstanceNotFound(_)), "{err}");
}

// ------------------------------------------------------------- retries exhausted

static RETRIED_CALLS: AtomicUsize = AtomicUsize::new(0);
static RETRIED_FIXED: AtomicBool = AtomicBool::new(false);

#[activity]
async fn rw_retried(_input: ()) -> Result<u32, ActivityError> {
    let n = RETRIED_CALLS.fetch_add(1, Ordering::SeqCst) + 1;
    if !RETRIED_FIXED.load(Ordering::SeqCst) {
        return Err(ActivityError::new(format!("attempt {n} failed")));
    }
    Ok(n as u32)
}

#[orchestrator]
async fn rw_with_retry(ctx: OrchestrationContext, _input: ()) -> Result<u32, OrchestrationError> {
    let policy = RetryPolicy::new(2, Duration::from_secs(5));
    Ok(ctx.call_with_retry(rw_retried, (), policy).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewind_after_exhausted_retries_reruns_the_last_attempt() {
    let env = start(|b| b.register(rw_retried).register(rw_with_retry));
    let run = rw_with_retry::start(&env.client, ()).await.unwrap();
    wait_for_events(&env.store, run.id(), "TimerCreated", 1).await;
    env.clock.advance(Duration::from_secs(5));
    wait_status(&env.store, run.id(), RuntimeStatus::Failed).await;
    assert_eq!(RETRIED_CALLS.load(Ordering::SeqCst), 2);

    // Rewound before the fix: the last attempt runs again, fails again, and the instance
    // is Failed again.
    run.rewind("try again").await.unwrap();
    wait_until(&env.store, run.id(), "failed after the rewind", |r, h| {
        r.status == RuntimeStatus::Failed && count(h, "ExecutionCompleted") == 2
    })
    .await;
    assert_eq!(RETRIED_CALLS.load(Ordering::SeqCst), 3);

    // Fixed and rewound again: it completes. The first attempt's handled failure and the
    // back-off stay as they were; each rewind re-ran the last attempt only.
    RETRIED_FIXED.store(true, Ordering::SeqCst);
    run.rewind("fixed").await.unwrap();
    let r = wait_status(&env.store, run.id(), RuntimeStatus::Completed).await;
    assert_eq!(r.output.as_deref(), Some("4"));
    assert_eq!(RETRIED_CALLS.load(Ordering::SeqCst), 4);
    let h = run.history().await.unwrap();
    assert_eq!(count(&h, "TimerFired"), 1);
    assert_eq!(count(&h, "TaskFailed"), 3);
    assert_eq!(rewinds(&h).len(), 2);
}

// ------------------------------------------------------------- a failed sub-orchestration

static LEAF_CALLS: AtomicUsize = AtomicUsize::new(0);
static LEAF_FIXED: AtomicBool = AtomicBool::new(false);

#[activity]
async fn rw_leaf(x: u32) -> Result<u32, ActivityError> {
    LEAF_CALLS.fetch_add(1, Ordering::SeqCst);
    if !LEAF_FIXED.load(Ordering::SeqCst) {
        return Err(ActivityError::new("leaf is broken"));
    }
    Ok(x + 1)
}

#[activity]
async fn rw_one(_input: ()) -> Result<u32, ActivityError> {
    Ok(10)
}

#[orchestrator]
async fn rw_child(ctx: OrchestrationContext, x: u32) -> Result<u32, OrchestrationError> {
    Ok(ctx.call(rw_leaf, x).await? * 2)
}

#[orchestrator]
async fn rw_parent(ctx: OrchestrationContext, x: u32) -> Result<u32, OrchestrationError> {
    let a = ctx.call(rw_one, ()).await?;
    let b = ctx.call_sub_orchestrator(rw_child, x).await?;
    Ok(a + b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewinding_a_parent_rewinds_its_failed_child() {
    let env = start(|b| {
        b.register(rw_one)
            .register(rw_leaf)
            .register(rw_child)
            .register(rw_parent)
    });
    let run = rw_parent::start(&env.client, 4).await.unwrap();
    wait_status(&env.store, run.id(), RuntimeStatus::Failed).await;
    let child_id = first_child(&run.history().await.unwrap());
    assert_eq!(
        env.client.status(&child_id).await.unwrap().status,
        RuntimeStatus::Failed
    );

    LEAF_FIXED.store(true, Ordering::SeqCst);
    run.rewind("leaf fixed").await.unwrap();
    let r = wait_status(&env.store, run.id(), RuntimeStatus::Completed).await;
    assert_eq!(r.output.as_deref(), Some("20"));
    let child = wait_status(&env.store, &child_id, RuntimeStatus::Completed).await;
    assert_eq!(child.output.as_deref(), Some("10"));
    assert_eq!(LEAF_CALLS.load(Ordering::SeqCst), 2);
    let child_history = env.client.status_with_history(&child_id).await.unwrap().1;
    assert_eq!(rewinds(&child_history).len(), 1);
}

// ------------------------------------------------------------- a bug in the orchestrator

static PICKY_FIXED: AtomicBool = AtomicBool::new(false);
static PICKY_CALLS: AtomicUsize = AtomicUsize::new(0);

#[activity]
async fn rw_picky_step(i: usize) -> Result<usize, ActivityError> {
    PICKY_CALLS.fetch_add(1, Ordering::SeqCst);
    Ok(i * 10)
}

#[orchestrator]
async fn rw_picky(ctx: OrchestrationContext, _input: ()) -> Result<String, OrchestrationError> {
    let a = ctx.call(rw_picky_step, 2).await?;
    // Stands for a bug fixed by deploying new code (a flag is not deterministic, which is
    // the point: the fixed code takes a path the failed run did not).
    if !PICKY_FIXED.load(Ordering::SeqCst) {
        return Err(OrchestrationError::new("bug in the orchestrator"));
    }
    let b = ctx.call(rw_picky_step, a).await?;
    Ok(format!("total {b}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewind_after_fixing_the_orchestrator_resumes_without_rerunning_activities() {
    let env = start(|b| b.register(rw_picky_step).register(rw_picky));
    let run = rw_picky::start(&env.client, ()).await.unwrap();
    let r = wait_status(&env.store, run.id(), RuntimeStatus::Failed).await;
    assert!(
        r.failure
            .unwrap()
            .message
            .contains("bug in the orchestrator")
    );
    let calls = PICKY_CALLS.load(Ordering::SeqCst);

    PICKY_FIXED.store(true, Ordering::SeqCst);
    run.rewind("deployed the fix").await.unwrap();
    let r = wait_status(&env.store, run.id(), RuntimeStatus::Completed).await;
    assert_eq!(r.output.as_deref(), Some("\"total 200\""));
    // The first step's recorded result was replayed, not re-run (one more call: the second
    // step, which the fixed code went on to); nothing was undone.
    assert_eq!(calls, 1);
    assert_eq!(PICKY_CALLS.load(Ordering::SeqCst), 2);
    let h = run.history().await.unwrap();
    assert_eq!(rewinds(&h), vec![Vec::<u64>::new()]);
}

// ------------------------------------------------------------- what a rewind declines

static RV_BLOCK: AtomicBool = AtomicBool::new(true);

#[activity]
async fn rv_act(i: u32) -> Result<u32, ActivityError> {
    if RV_BLOCK.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
    Ok(i)
}

#[orchestrator]
async fn rv_fallback(ctx: OrchestrationContext, _input: ()) -> Result<u32, OrchestrationError> {
    let a = ctx.call(rv_act, 0);
    let b = ctx.call(rv_act, 1);
    if a.await.is_err() {
        // Handled: a fallback starts (and is not awaited).
        drop(ctx.call(rv_act, 2));
    }
    Ok(b.await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_handled_in_the_failing_episode_is_not_undone() {
    use durable_core::storage::Message;
    let store = MemoryStore::new();
    let clock = durable_testing::ManualClock::default();
    let env1 = start_on(store.clone(), clock.clone(), |b| {
        b.register(rv_act).register(rv_fallback)
    });
    let run = rv_fallback::start(&env1.client, ()).await.unwrap();
    let id = run.id().clone();
    wait_for_events(&store, &id, "TaskScheduled", 2).await;
    env1.worker.abort();
    // Both activities fail, and both results reach the orchestration in one episode.
    let far = clock.now() + Duration::from_secs(3600);
    let mut work = store
        .fetch_activity_work(far, Duration::from_secs(600), 10)
        .await
        .unwrap();
    work.sort_by_key(|w| w.task.seq);
    assert_eq!(work.len(), 2);
    for w in work {
        let failed = Event::TaskFailed {
            seq: w.task.seq,
            failure: durable_core::error::FailureDetails::new("E", "boom"),
            heartbeat: None,
        };
        let m = Message::new(failed, Some(w.task.execution), clock.now());
        store.complete_activity(w.id, w.lock, m).await.unwrap();
    }
    RV_BLOCK.store(false, Ordering::SeqCst);
    let env2 = start_on(store.clone(), clock.clone(), |b| {
        b.register(rv_act).register(rv_fallback)
    });
    wait_status(&store, &id, RuntimeStatus::Failed).await;

    env2.client.rewind(&id, "fixed").await.unwrap();
    let r = wait_status(&store, &id, RuntimeStatus::Completed).await;
    assert_eq!(r.output.as_deref(), Some("1"));
    let h = env2.client.status_with_history(&id).await.unwrap().1;
    // Only the failure that failed the run (activity 1, seq 1) was undone.
    assert_eq!(rewinds(&h), vec![vec![1]]);
}

#[orchestrator]
async fn rv_buggy(_ctx: OrchestrationContext, _input: ()) -> Result<u32, OrchestrationError> {
    Err(OrchestrationError::new("bug"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_of_another_version_declines_a_rewind_once() {
    use durable_core::{VersionMatch, VersionMismatchAction};
    let store = MemoryStore::new();
    let clock = durable_testing::ManualClock::default();
    let env1 = start_on(store.clone(), clock.clone(), |b| b.register(rv_buggy));
    let run = rv_buggy::start(&env1.client, ()).await.unwrap();
    let id = run.id().clone();
    wait_status(&store, &id, RuntimeStatus::Failed).await;
    env1.worker.shutdown().await;

    let env2 = start_on(store.clone(), clock.clone(), |b| {
        b.register(rv_buggy)
            .version("2", VersionMatch::Strict, VersionMismatchAction::Fail)
    });
    env2.client.rewind(&id, "r").await.unwrap();
    // The request is consumed and dropped once: nothing left in the inbox, no lease held,
    // the failure as it was.
    let far = clock.now() + Duration::from_secs(3600);
    let idle = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let next = store
                .next_wake_time_for(durable_core::storage::WorkKind::Orchestration)
                .await
                .unwrap();
            if next.is_none_or(|t| t > far) {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(idle.is_ok(), "the declined request left work behind");
    let r = env2.client.status(&id).await.unwrap();
    assert_eq!(r.status, RuntimeStatus::Failed);
    assert_eq!(r.failure.unwrap().message, "bug");
    // Issue 12: not dropped without a trace — the status says why.
    let why = r.last_error.unwrap_or_default();
    assert!(
        why.starts_with("rewind declined: instance version"),
        "{why}"
    );
    let h = env2.client.status_with_history(&id).await.unwrap().1;
    assert!(rewinds(&h).is_empty());
}

#[orchestrator]
async fn rv_waiter(ctx: OrchestrationContext, _input: ()) -> Result<String, OrchestrationError> {
    let v: String = ctx.wait_for_event("go").await?;
    Ok(format!("got {v}"))
}

#[orchestrator]
async fn rv_parent_of(
    ctx: OrchestrationContext,
    (child_id, version): (String, String),
) -> Result<String, OrchestrationError> {
    let opts = durable_core::SubOrchestrationOptions::new()
        .instance_id(InstanceId::new(child_id).unwrap())
        .version(version);
    Ok(ctx.call_sub_orchestrator_with(rv_waiter, (), opts).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewind_that_depends_on_someone_elses_or_an_unrewindable_child_is_refused() {
    use durable_core::{VersionMatch, VersionMismatchAction};
    let env = start(|b| {
        b.register(rv_waiter).register(rv_parent_of).version(
            "9",
            VersionMatch::CurrentOrOlder,
            VersionMismatchAction::Fail,
        )
    });
    // The child id is taken by an unrelated running instance: the parent fails.
    let shared = InstanceId::new("rv-shared").unwrap();
    env.client
        .start_with(
            rv_waiter,
            (),
            durable_core::StartOptions::new().instance_id(shared.clone()),
        )
        .await
        .unwrap();
    let p = rv_parent_of::start(&env.client, ("rv-shared".into(), "9".into()))
        .await
        .unwrap();
    wait_status(&env.store, p.id(), RuntimeStatus::Failed).await;
    env.client.raise_event(&shared, "go", "x").await.unwrap();
    wait_status(&env.store, &shared, RuntimeStatus::Completed).await;
    let err = p.rewind("retry").await.unwrap_err();
    assert!(
        matches!(&err, ClientError::CannotRewind { reason, .. } if reason.contains("not this orchestration's")),
        "{err}"
    );

    // The child fails for its version (outside its code), so it cannot be rewound, and
    // neither can the parent that failed with it.
    let p = rv_parent_of::start(&env.client, ("rv-newer".into(), "10".into()))
        .await
        .unwrap();
    wait_status(&env.store, p.id(), RuntimeStatus::Failed).await;
    let child = env
        .client
        .status(&InstanceId::new("rv-newer").unwrap())
        .await
        .unwrap();
    assert_eq!(child.failure.unwrap().error_type, "VersionMismatch");
    let err = p.rewind("retry").await.unwrap_err();
    assert!(
        matches!(&err, ClientError::CannotRewind { reason, .. } if reason.contains("rv-newer")),
        "{err}"
    );
}

// ------------------------------------------------------------- failures and results in flight

static ME_FIXED: AtomicBool = AtomicBool::new(false);
static ME_GATE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(0);

#[activity]
async fn me_act(i: u32) -> Result<u32, ActivityError> {
    if i == 1 {
        ME_GATE.acquire().await.unwrap().forget();
        return Ok(1);
    }
    if !ME_FIXED.load(Ordering::SeqCst) {
        return Err(ActivityError::new("broken"));
    }
    Ok(0)
}

#[orchestrator]
async fn me_orch(ctx: OrchestrationContext, _input: ()) -> Result<u32, OrchestrationError> {
    let mut s = 0;
    for r in ctx.when_all((0..2).map(|i| ctx.call(me_act, i))).await {
        s += r?;
    }
    Ok(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_delivered_before_the_failing_episode_is_undone() {
    let env = start(|b| b.register(me_act).register(me_orch));
    let run = me_orch::start(&env.client, ()).await.unwrap();
    // Activity 0 fails while 1 is still running; the run fails only once 1 is in too.
    wait_for_events(&env.store, run.id(), "TaskFailed", 1).await;
    ME_GATE.add_permits(1);
    wait_status(&env.store, run.id(), RuntimeStatus::Failed).await;
    ME_FIXED.store(true, Ordering::SeqCst);
    run.rewind("fixed").await.unwrap();
    let r = wait_status(&env.store, run.id(), RuntimeStatus::Completed).await;
    assert_eq!(r.output.as_deref(), Some("1"));
    let h = run.history().await.unwrap();
    assert_eq!(rewinds(&h), vec![vec![0]]);
}

static QB_FIXED: AtomicBool = AtomicBool::new(false);
static QB_GATE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(0);

#[activity]
async fn qb_act(_i: u32) -> Result<u32, ActivityError> {
    if !QB_FIXED.load(Ordering::SeqCst) {
        return Err(ActivityError::new("a broken"));
    }
    Ok(1)
}

#[activity]
async fn qb_leaf(_i: u32) -> Result<u32, ActivityError> {
    if !QB_FIXED.load(Ordering::SeqCst) {
        QB_GATE.acquire().await.unwrap().forget();
        return Err(ActivityError::new("leaf broken"));
    }
    Ok(10)
}

#[orchestrator]
async fn qb_child(ctx: OrchestrationContext, _input: ()) -> Result<u32, OrchestrationError> {
    Ok(ctx.call(qb_leaf, 0).await?)
}

#[orchestrator]
async fn qb_orch(ctx: OrchestrationContext, _input: ()) -> Result<u32, OrchestrationError> {
    let a = ctx.call(qb_act, 0);
    let c = ctx.call_sub_orchestrator(qb_child, ());
    let a = a.await?;
    Ok(a + c.await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_childs_failure_queued_for_the_failed_parent_does_not_defeat_its_rewind() {
    let env = start(|b| {
        b.register(qb_act)
            .register(qb_leaf)
            .register(qb_child)
            .register(qb_orch)
    });
    let run = qb_orch::start(&env.client, ()).await.unwrap();
    let id = run.id().clone();
    let h = wait_for_events(&env.store, &id, "ExecutionCompleted", 1).await;
    let child_id = first_child(&h);
    wait_for_events(&env.store, &child_id, "TaskScheduled", 1).await;
    // Hold the failed parent's lease, so the child's failure waits in its inbox (as when no
    // worker has got to it yet).
    let item = env
        .store
        .fetch_instances_work(
            std::slice::from_ref(&id),
            env.clock.now(),
            Duration::from_secs(600),
        )
        .await
        .unwrap()
        .pop()
        .unwrap();
    QB_GATE.add_permits(1);
    wait_status(&env.store, &child_id, RuntimeStatus::Failed).await;
    QB_FIXED.store(true, Ordering::SeqCst);
    env.client.rewind(&id, "fixed").await.unwrap();
    env.store
        .abandon_episode(&id, item.lock, env.clock.now(), None)
        .await
        .unwrap();
    let r = wait_status(&env.store, &id, RuntimeStatus::Completed).await;
    assert_eq!(r.output.as_deref(), Some("11"));
    let c = wait_status(&env.store, &child_id, RuntimeStatus::Completed).await;
    assert_eq!(c.output.as_deref(), Some("10"));
}

// ------------------------------------------------------------- issue 12: critical sections

#[durable_core::entity]
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct RwAccount {
    balance: i64,
}

#[durable_core::entity]
impl RwAccount {
    fn deposit(&mut self, n: i64) {
        self.balance += n;
    }
}

#[activity]
async fn rw_charge(_amount: u32) -> Result<u32, ActivityError> {
    Err(ActivityError::new("card declined"))
}

#[orchestrator]
async fn rw_in_section(ctx: OrchestrationContext, _input: ()) -> Result<u32, OrchestrationError> {
    let _section = ctx.lock(&[EntityId::of::<RwAccount>("a")?]).await?;
    // The failure drops the section's guard on its way out.
    Ok(ctx.call(rw_charge, 1).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue12_a_failure_inside_a_critical_section_is_refused_up_front() {
    let env = start(|b| {
        b.register(rw_charge)
            .register(rw_in_section)
            .register(RwAccount::entity())
    });
    let run = rw_in_section::start(&env.client, ()).await.unwrap();
    assert!(matches!(run.wait().await, Err(ClientError::Failed(_))));
    let err = run.rewind("retry").await.unwrap_err();
    assert!(
        matches!(&err, ClientError::CannotRewind { reason, .. } if reason.contains("critical section")),
        "{err}"
    );
    let (r, h) = env.client.status_with_history(run.id()).await.unwrap();
    assert_eq!(r.status, RuntimeStatus::Failed);
    assert!(rewinds(&h).is_empty());
}
