//! Local activities in the harness: they run inline in the episode, on the virtual clock,
//! mocked and recorded like any activity.

use std::time::Duration;

use durable_core::prelude::*;
use durable_testing::{CrashTest, Script, TestEnv};

const MINUTE: Duration = Duration::from_secs(60);

#[activity(local)]
async fn add(pair: (u64, u64)) -> Result<u64, ActivityError> {
    Ok(pair.0 + pair.1)
}

/// Fibonacci by local steps.
#[orchestrator]
async fn fib(ctx: OrchestrationContext, n: u32) -> Result<u64, OrchestrationError> {
    let (mut a, mut b) = (0, 1);
    for _ in 0..n {
        (a, b) = (b, ctx.call(add, (a, b)).await?);
    }
    Ok(a)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_steps_run_inline_in_one_episode() {
    let env = TestEnv::builder()
        .register(add)
        .register(fib)
        .start()
        .unwrap();
    let run = env.start(fib, 10).await.unwrap();
    assert_eq!(env.wait(&run).await.unwrap(), 55);
    assert_eq!(env.call_count(add), 10);
    let h = env.history(run.id()).await;
    assert_eq!(h.count("TaskCompleted"), 10);
    assert_eq!(h.count("OrchestratorStarted"), 1, "{}", h.pretty());
}

#[activity]
async fn fetch_rate(currency: String) -> Result<u32, ActivityError> {
    unimplemented!("asks a rate service for {currency}")
}

#[orchestrator]
async fn convert(ctx: OrchestrationContext, cents: u32) -> Result<u32, OrchestrationError> {
    let options = CallOptions::new().retry(RetryPolicy::new(5, MINUTE));
    let rate = ctx
        .call_local_with(fetch_rate, "EUR".to_owned(), options)
        .await?;
    Ok(cents * rate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mocked_local_activity_retries_on_virtual_time() {
    let env = TestEnv::builder()
        .register(convert)
        .script(
            fetch_rate,
            Script::new()
                .fail_times(2, ActivityError::new("rate service down"))
                .ok(3),
        )
        .start()
        .unwrap();
    let t0 = env.now();
    let run = env.start(convert, 100).await.unwrap();
    env.run_until_idle().await;
    assert_eq!(
        env.call_count(fetch_rate),
        1,
        "waits for the first back-off"
    );
    env.advance(MINUTE * 2).await;
    assert_eq!(env.wait(&run).await.unwrap(), 300);
    assert_eq!(env.calls(fetch_rate), ["EUR", "EUR", "EUR"]);
    let h = env.history(run.id()).await;
    assert_eq!(h.timers(), [t0 + MINUTE, t0 + MINUTE * 2]);
    assert_eq!(h.failed(fetch_rate).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_never_change_the_outcome_of_local_steps() {
    let report = CrashTest::new(|| TestEnv::builder().register(add).register(fib))
        .run(|env| async move {
            let run = env.start(fib, 6).await.unwrap();
            env.wait(&run).await.unwrap()
        })
        .await;
    // One episode commit: the six local steps ride on it (ordinary activities would make
    // six more commits, and a crash after each).
    assert_eq!(report.commits, 1, "{report}");
    assert_eq!(report.baseline_executions, 6, "{report}");
}
