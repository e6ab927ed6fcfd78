//! Issue 12: control requests — terminate reaches every running descendant, wrong-state
//! suspend and resume are refused, id reuse can terminate and replace, and nothing a
//! client is told was accepted is dropped without a trace.

use durable_core::prelude::*;

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
