//! Issue 12: control requests — terminate reaches every running descendant, wrong-state
//! suspend and resume are refused, id reuse can terminate and replace, and nothing a
//! client is told was accepted is dropped without a trace.

use durable_core::prelude::*;
use durable_core::{Clock, IdReusePolicy, StartOptions};
use std::future::Future as _;

use crate::support::*;

fn id(s: String) -> InstanceId {
    InstanceId::new(s).unwrap()
}

// ------------------------------------------------------------- terminate through finished

#[orchestrator]
async fn ct_leaf(ctx: OrchestrationContext, _input: ()) -> Result<(), OrchestrationError> {
    let () = ctx.wait_for_event("never").await?;
    Ok(())
}

/// Runs as long as its own child does.
#[orchestrator]
async fn ct_grandchild(ctx: OrchestrationContext, _input: ()) -> Result<(), OrchestrationError> {
    Ok(ctx.call_sub_orchestrator(ct_leaf, ()).await?)
}

/// Starts a grandchild it does not wait for, then finishes (fails when asked to).
#[orchestrator]
async fn ct_child(ctx: OrchestrationContext, fail: bool) -> Result<u32, OrchestrationError> {
    drop(ctx.call_sub_orchestrator(ct_grandchild, ()));
    if fail {
        return Err(OrchestrationError::new("the child gives up"));
    }
    Ok(7)
}

/// Waits for its child, whatever the outcome, then for an event that never comes.
#[orchestrator]
async fn ct_root(ctx: OrchestrationContext, fail: bool) -> Result<(), OrchestrationError> {
    let _ = ctx.call_sub_orchestrator(ct_child, fail).await;
    let () = ctx.wait_for_event("never").await?;
    Ok(())
}

fn tree_env() -> Env {
    start(|b| {
        b.register(ct_leaf)
            .register(ct_grandchild)
            .register(ct_child)
            .register(ct_root)
    })
}

async fn terminate_through_a_finished_child(fail: bool) {
    let env = tree_env();
    let root = ct_root::start(&env.client, fail).await.unwrap();
    let child = id(format!("{}:0", root.id()));
    let grandchild = id(format!("{child}:0"));
    let leaf = id(format!("{grandchild}:0"));
    wait_status(&env.store, &leaf, RuntimeStatus::Running).await;
    let child_status = wait_done(&env.store, &child).await.status;
    assert_eq!(
        child_status,
        if fail {
            RuntimeStatus::Failed
        } else {
            RuntimeStatus::Completed
        }
    );
    // The root has moved on to its event, the grandchild and the leaf still run.
    wait_until(&env.store, root.id(), "the child's result", |_, h| {
        count(h, "SubOrchestrationCompleted") + count(h, "SubOrchestrationFailed") == 1
    })
    .await;
    root.terminate("shutting down").await.unwrap();
    assert!(matches!(
        root.wait().await,
        Err(ClientError::Terminated { reason }) if reason == "shutting down"
    ));
    for d in [&grandchild, &leaf] {
        let r = wait_done(&env.store, d).await;
        assert_eq!(r.status, RuntimeStatus::Terminated, "{d}");
        assert_eq!(r.output.as_deref(), Some("\"shutting down\""), "{d}");
    }
    // The finished child keeps its own outcome.
    assert_eq!(
        env.client.status(&child).await.unwrap().status,
        child_status
    );
    // Purge goes through the whole (now finished) tree.
    assert_eq!(env.client.purge(root.id()).await.unwrap().deleted, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_reaches_descendants_under_a_completed_child() {
    terminate_through_a_finished_child(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_reaches_descendants_under_a_failed_child() {
    terminate_through_a_finished_child(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_leaves_an_instance_that_took_a_childs_id_over() {
    let env = start(|b| b.register(crate::child).register(crate::parent));
    let run = env.client.start(crate::parent, 1).await.unwrap();
    run.wait().await.unwrap();
    // The finished child's id is reused by an unrelated instance.
    let child_id = id(format!("{}:0", run.id()));
    let opts = StartOptions::new().instance_id(child_id.clone());
    let other = env.client.start_with(crate::child, 21, opts).await.unwrap();
    assert_eq!(other.wait().await.unwrap(), 42);
    assert_eq!(env.client.purge(run.id()).await.unwrap().deleted, 1);
    assert_eq!(
        other.wait().await.unwrap(),
        42,
        "the unrelated instance stays"
    );
}

// ------------------------------------------------------------- id reuse: terminate and replace

#[durable_core::entity]
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct TrLocked {
    n: u32,
}

#[durable_core::entity]
impl TrLocked {
    fn bump(&mut self) {
        self.n += 1;
    }
}

static TR_STARTED: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(0);
static TR_OLD_GATE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(0);
static TR_NEW_GATE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(0);

#[activity]
async fn tr_slow(tag: String) -> Result<String, ActivityError> {
    TR_STARTED.add_permits(1);
    let gate = if tag == "old" {
        &TR_OLD_GATE
    } else {
        &TR_NEW_GATE
    };
    gate.acquire().await.expect("gate").forget();
    Ok(tag)
}

#[orchestrator]
async fn tr_child(ctx: OrchestrationContext, _input: ()) -> Result<String, OrchestrationError> {
    Ok(ctx.wait_for_event("go").await?)
}

/// Starts a child, then runs `tr_slow` holding a lock on an entity; the first generation
/// never gets further than that.
#[orchestrator]
async fn tr_job(ctx: OrchestrationContext, tag: String) -> Result<String, OrchestrationError> {
    let child = ctx.call_sub_orchestrator(tr_child, ());
    let section = ctx.lock(&[EntityId::of::<TrLocked>("k")?]).await?;
    let slow = ctx.call(tr_slow, tag).await?;
    drop(section);
    let child = child.await?;
    Ok(format!("{slow}+{child}"))
}

async fn acquire(s: &tokio::sync::Semaphore) {
    tokio::time::timeout(std::time::Duration::from_secs(20), s.acquire())
        .await
        .expect("the activity should start")
        .expect("semaphore")
        .forget();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_running_replaces_the_instance_and_its_tree() {
    let env = start(|b| {
        b.register(tr_slow)
            .register(tr_child)
            .register(tr_job)
            .register(TrLocked::entity())
    });
    let job = id("tr-job".into());
    let opts = || StartOptions::new().instance_id(job.clone());
    tr_job::start_with(&env.client, "old".into(), opts())
        .await
        .unwrap();
    acquire(&TR_STARTED).await;
    let h = wait_for_events(&env.store, &job, "SubOrchestrationCreated", 1).await;
    let child = first_child(&h);
    wait_status(&env.store, &child, RuntimeStatus::Running).await;

    // The default policy refuses a running instance.
    assert!(matches!(
        tr_job::start_with(&env.client, "new".into(), opts()).await,
        Err(ClientError::InstanceAlreadyExists(_))
    ));
    let run = tr_job::start_with(
        &env.client,
        "new".into(),
        opts().reuse(IdReusePolicy::TerminateRunning),
    )
    .await
    .unwrap();
    // Replaced at once: the new execution, and the old child terminated in the same step.
    let r = run.status().await.unwrap();
    assert_eq!((r.execution, r.input.as_str()), (2, "\"new\""));
    let old_child = env.client.status(&child).await.unwrap();
    assert_eq!(old_child.status, RuntimeStatus::Terminated);
    // The new generation got the entity lock (the old one released it), started its own
    // child and waits for its own `tr_slow`.
    acquire(&TR_STARTED).await;
    let child = id(format!("{job}:2:0"));
    wait_status(&env.store, &child, RuntimeStatus::Running).await;

    // The old generation's result comes in late, for the same action number as the new
    // generation's open call: it carries the old execution number and is dropped.
    let before = run.status().await.unwrap().last_updated_at;
    env.clock.advance(std::time::Duration::from_secs(1));
    TR_OLD_GATE.add_permits(1);
    wait_until(&env.store, &job, "the late result's episode", |r, _| {
        r.last_updated_at > before
    })
    .await;
    TR_NEW_GATE.add_permits(1);
    env.client.raise_event(&child, "go", "go").await.unwrap();
    let r = wait_done(&env.store, &job).await;
    assert_eq!(r.status, RuntimeStatus::Completed);
    assert_eq!(r.output.as_deref(), Some("\"new+go\""));
    let h = run.history().await.unwrap();
    assert_eq!(count(&h, "TaskCompleted"), 1);
}

// ------------------------------------------------------------- wrong-state suspend / resume

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_and_resume_in_the_wrong_state_are_typed_errors() {
    let env = start(|b| b.register(crate::wait_for_go));
    let run = crate::wait_for_go::start(&env.client, ()).await.unwrap();
    wait_status(&env.store, run.id(), RuntimeStatus::Running).await;
    let err = run.resume("r").await.unwrap_err();
    assert_eq!(
        err,
        ClientError::InvalidState {
            instance: run.id().to_string(),
            status: RuntimeStatus::Running,
            operation: "resume",
        }
    );
    assert_eq!(
        err.to_string(),
        format!("cannot resume instance `{}` in the Running state", run.id())
    );
    run.suspend("s").await.unwrap();
    // Refused before and after a worker applied the first suspend.
    assert!(matches!(
        run.suspend("again").await,
        Err(ClientError::InvalidState {
            status: RuntimeStatus::Suspended,
            ..
        })
    ));
    wait_status(&env.store, run.id(), RuntimeStatus::Suspended).await;
    assert!(matches!(
        env.client.suspend(run.id(), "again").await,
        Err(ClientError::InvalidState {
            status: RuntimeStatus::Suspended,
            ..
        })
    ));
    run.resume("r").await.unwrap();
    run.raise("go", "went").await.unwrap();
    assert_eq!(run.wait().await.unwrap(), "went");
    let h = run.history().await.unwrap();
    assert_eq!(count(&h, "ExecutionSuspended"), 1);
    assert_eq!(count(&h, "ExecutionResumed"), 1);

    // A pending instance can be suspended; it starts suspended.
    let later = env.clock.now() + std::time::Duration::from_secs(60);
    let opts = StartOptions::new().scheduled_start(later);
    let pending = crate::wait_for_go::start_with(&env.client, (), opts)
        .await
        .unwrap();
    assert!(matches!(
        pending.resume("r").await,
        Err(ClientError::InvalidState {
            status: RuntimeStatus::Pending,
            ..
        })
    ));
    pending.suspend("s").await.unwrap();
    env.clock.advance(std::time::Duration::from_secs(60));
    wait_status(&env.store, pending.id(), RuntimeStatus::Suspended).await;
}

// ------------------------------------------------------------- accepted, then dropped

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchestration_requests_to_an_entity_are_refused_not_dropped() {
    let env = start(|b| b.register(TrLocked::entity()));
    let entity = EntityId::of::<TrLocked>("k").unwrap();
    env.client.entity::<TrLocked>("k").bump().await.unwrap();
    let id = entity.instance_id();
    wait_until(&env.store, &id, "the entity", |r, _| r.output.is_some()).await;
    let refused = |r: Result<(), ClientError>| {
        assert!(matches!(r, Err(ClientError::InvalidInstanceId(_))), "{r:?}");
    };
    refused(env.client.raise_event(&id, "go", &1).await);
    refused(env.client.terminate(&id, "x").await);
    refused(env.client.suspend(&id, "x").await);
    refused(env.client.resume(&id, "x").await);
}

/// A parent's terminate is addressed to its child: an unrelated instance that took the
/// child's id over is not terminated.
#[orchestrator]
async fn rv_parent(ctx: OrchestrationContext, _input: ()) -> Result<(), OrchestrationError> {
    let opts =
        durable_core::SubOrchestrationOptions::new().instance_id(InstanceId::new("rv-c").unwrap());
    ctx.call_sub_orchestrator_with(ct_leaf, (), opts).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parents_terminate_spares_the_instance_that_took_its_childs_id() {
    let env = start(|b| b.register(ct_leaf).register(rv_parent));
    let parent = rv_parent::start(&env.client, ()).await.unwrap();
    let child = id("rv-c".into());
    wait_status(&env.store, &child, RuntimeStatus::Running).await;
    let Env {
        worker,
        client,
        clock,
        store,
    } = env;
    worker.shutdown().await;
    // While no worker runs: the parent is terminated, and the child's id is taken over by
    // an unrelated top-level instance (TerminateRunning tears the old child down).
    parent.terminate("stop").await.unwrap();
    let opts = StartOptions::new()
        .instance_id(child.clone())
        .reuse(IdReusePolicy::TerminateRunning);
    ct_leaf::start_with(&client, (), opts).await.unwrap();
    let r = client.status(&child).await.unwrap();
    assert_eq!((r.execution, r.parent.is_none()), (2, true));
    let env = start_on(store, clock, |b| b.register(ct_leaf).register(rv_parent));
    wait_done(&env.store, parent.id()).await;
    // Anything the parent sent `rv-c` is queued ahead of this probe.
    let _ = env.client.raise_event(&child, "probe", &()).await;
    let (r, h) = wait_until(&env.store, &child, "the probe or an end", |r, h| {
        r.status.is_terminal() || h.iter().any(|e| e.event.kind() == "EventRaised")
    })
    .await;
    assert_eq!(
        r.status,
        RuntimeStatus::Running,
        "the new `rv-c` is not the parent's child, yet it was terminated:\n{}",
        durable_core::history::pretty(&h)
    );
}

#[orchestrator]
async fn rv_forever(ctx: OrchestrationContext, _input: ()) -> Result<u32, OrchestrationError> {
    ctx.call_sub_orchestrator(ct_leaf, ()).await?;
    Ok(1)
}

#[orchestrator]
async fn rv_seven(_ctx: OrchestrationContext, _input: ()) -> Result<u32, OrchestrationError> {
    Ok(7)
}

/// A handle follows the run it started: once another start replaced it, `wait` says so
/// instead of returning the new run's result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_on_a_replaced_run_says_it_was_replaced() {
    let env = start(|b| b.register(ct_leaf).register(rv_forever).register(rv_seven));
    let w = id("rv-w".into());
    let opts = || StartOptions::new().instance_id(w.clone());
    let old = rv_forever::start_with(&env.client, (), opts())
        .await
        .unwrap();
    wait_for_events(&env.store, &w, "SubOrchestrationCreated", 1).await;
    rv_seven::start_with(
        &env.client,
        (),
        opts().reuse(IdReusePolicy::TerminateRunning),
    )
    .await
    .unwrap();
    let got = old.wait().await;
    assert!(
        matches!(got, Err(ClientError::Replaced(_))),
        "the old run was replaced, but its handle says {got:?}"
    );
    // A handle on the id (not on one run) follows the new run.
    let any: InstanceHandle<u32> = env.client.handle(w.clone());
    assert_eq!(any.wait().await.unwrap(), 7);
}

/// Whoever waits for an instance that a replacement tears down is woken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_on_torn_down_descendants_wake() {
    let env = start(|b| b.register(ct_leaf).register(rv_forever));
    let w = id("rv-x".into());
    let opts = || StartOptions::new().instance_id(w.clone());
    rv_forever::start_with(&env.client, (), opts())
        .await
        .unwrap();
    let h = wait_for_events(&env.store, &w, "SubOrchestrationCreated", 1).await;
    let child = first_child(&h);
    wait_status(&env.store, &child, RuntimeStatus::Running).await;
    let mut waiter = Box::pin(env.client.wait_for_completion(&child));
    // Polled once: it has read the status (Running) and now waits for a signal.
    std::future::poll_fn(|cx| {
        assert!(waiter.as_mut().poll(cx).is_pending());
        std::task::Poll::Ready(())
    })
    .await;
    // The replacement waits forever too: nothing else finishes.
    ct_leaf::start_with(
        &env.client,
        (),
        opts().reuse(IdReusePolicy::TerminateRunning),
    )
    .await
    .unwrap();
    assert_eq!(
        env.client.status(&child).await.unwrap().status,
        RuntimeStatus::Terminated
    );
    let woke = tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await;
    assert!(
        woke.is_ok(),
        "wait_for_completion on the terminated child never returned"
    );
}
