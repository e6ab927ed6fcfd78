//! Issue 12 on the harness: the harness gives the errors the client gives (wrong-state
//! suspend and resume), replaces running instances under `TerminateRunning`, and a
//! terminate that arrives in the same batch as the instance's completion still reaches
//! the descendants it left running.

use durable_core::prelude::*;
use durable_core::{IdReusePolicy, StartOptions};
use durable_testing::TestEnv;

#[orchestrator]
async fn forever(ctx: OrchestrationContext, _input: ()) -> Result<(), OrchestrationError> {
    let () = ctx.wait_for_event("never").await?;
    Ok(())
}

/// Starts a child it does not wait for, and finishes when told to.
#[orchestrator]
async fn leaves_a_child(ctx: OrchestrationContext, _input: ()) -> Result<u32, OrchestrationError> {
    drop(ctx.call_sub_orchestrator(forever, ()));
    let n: u32 = ctx.wait_for_event("finish").await?;
    Ok(n)
}

fn env() -> TestEnv {
    TestEnv::builder()
        .register(forever)
        .register(leaves_a_child)
        .start()
        .unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn wrong_state_suspend_and_resume_are_typed_errors() {
    let env = env();
    let run = env.start(forever, ()).await.unwrap();
    env.run_until_idle().await;
    assert!(matches!(
        run.resume("r").await,
        Err(ClientError::InvalidState {
            status: RuntimeStatus::Running,
            operation: "resume",
            ..
        })
    ));
    env.client().suspend(run.id(), "s").await.unwrap();
    assert!(matches!(
        run.suspend("again").await,
        Err(ClientError::InvalidState {
            status: RuntimeStatus::Suspended,
            operation: "suspend",
            ..
        })
    ));
    env.run_until_idle().await;
    env.assert_status(run.id(), RuntimeStatus::Suspended).await;
    run.resume("r").await.unwrap();
    env.run_until_idle().await;
    env.assert_status(run.id(), RuntimeStatus::Running).await;
}

#[tokio::test(flavor = "current_thread")]
async fn terminate_running_replaces_at_once() {
    let env = env();
    let id = InstanceId::new("singleton").unwrap();
    let opts = || StartOptions::new().instance_id(id.clone());
    env.start_with(leaves_a_child, (), opts()).await.unwrap();
    env.run_until_idle().await;
    let child = InstanceId::new("singleton:0").unwrap();
    env.assert_status(&child, RuntimeStatus::Running).await;

    let replace = opts().reuse(IdReusePolicy::TerminateRunning);
    let run = env.start_with(leaves_a_child, (), replace).await.unwrap();
    // In the same step, before the engine ran again.
    assert_eq!(env.status(&id).await.unwrap().execution, 2);
    env.assert_status(&child, RuntimeStatus::Terminated).await;
    env.run_until_idle().await;
    env.raise(&id, "finish", &3).await.unwrap();
    assert_eq!(env.wait(&run).await.unwrap(), 3);
}

#[tokio::test(flavor = "current_thread")]
async fn a_terminate_queued_behind_the_completion_still_reaches_the_running_child() {
    let env = env();
    let run = env.start(leaves_a_child, ()).await.unwrap();
    env.run_until_idle().await;
    let child = InstanceId::new(format!("{}:0", run.id())).unwrap();
    env.assert_status(&child, RuntimeStatus::Running).await;
    // Both accepted while it runs; one batch delivers them: it completes, then the
    // terminate arrives for a finished execution.
    env.raise(run.id(), "finish", &7).await.unwrap();
    env.client().terminate(run.id(), "stop").await.unwrap();
    env.run_until_idle().await;
    assert_eq!(env.wait(&run).await.unwrap(), 7);
    env.assert_status(&child, RuntimeStatus::Terminated).await;
    let reason = env.status(&child).await.unwrap().output;
    assert_eq!(reason.as_deref(), Some("\"stop\""));
}
