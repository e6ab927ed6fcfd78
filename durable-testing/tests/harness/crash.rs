//! Crash injection: a crash after any commit leaves the outcome unchanged; activities may
//! run again (at-least-once) and are counted.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use durable_core::prelude::*;
use durable_testing::{CrashTest, Script, TestEnv};

const HOUR: Duration = Duration::from_secs(3600);

#[activity]
async fn double(x: u64) -> Result<u64, ActivityError> {
    Ok(2 * x)
}

#[activity]
async fn notify(text: String) -> Result<(), ActivityError> {
    let _ = text;
    Ok(())
}

#[orchestrator]
async fn chain(ctx: OrchestrationContext, n: u32) -> Result<u64, OrchestrationError> {
    let mut x = 1;
    for _ in 0..n {
        x = ctx.call(double, x).await?;
    }
    Ok(x)
}

#[orchestrator]
async fn fan(ctx: OrchestrationContext, n: u64) -> Result<u64, OrchestrationError> {
    let all = ctx.when_all((1..=n).map(|i| ctx.call(double, i))).await;
    let mut sum = 0;
    for r in all {
        sum += r?;
    }
    Ok(sum)
}

#[orchestrator]
async fn approval(ctx: OrchestrationContext, item: String) -> Result<String, OrchestrationError> {
    ctx.call(notify, format!("approve {item}?")).await?;
    match ctx
        .wait_for_event_timeout::<bool>("approved", HOUR * 72)
        .await
    {
        Ok(true) => Ok("approved".into()),
        Ok(false) => Ok("rejected".into()),
        Err(e) if e.is_timeout() => {
            ctx.call(notify, format!("escalate {item}")).await?;
            Ok("escalated".into())
        }
        Err(e) => Err(e.into()),
    }
}

fn builder() -> durable_testing::TestEnvBuilder {
    TestEnv::builder()
        .register(double)
        .register(notify)
        .register(chain)
        .register(fan)
        .register(approval)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_any_commit_of_a_chain_changes_nothing() {
    let report = CrashTest::new(builder)
        .run(|env| async move {
            let run = env.start(chain, 6).await.unwrap();
            env.wait(&run).await.unwrap()
        })
        .await;
    // 1 start + 6 × (activity completion + episode) commits.
    assert_eq!(report.commits, 13, "{report}");
    assert_eq!(report.runs.len(), 13);
    assert!(report.runs.iter().all(|r| r.crashes == 1), "{report:?}");
    // Sequential steps: a crash loses at most the one activity in flight.
    assert!(report.runs.iter().all(|r| r.reruns <= 1), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_midway_through_a_fan_out_reruns_only_unfinished_activities() {
    let report = CrashTest::new(builder)
        .run(|env| async move {
            let run = env.start(fan, 12).await.unwrap();
            let sum = env.wait(&run).await.unwrap();
            // Per run: a completed activity is never executed again.
            let h = env.history(run.id()).await;
            assert_eq!(h.count("TaskCompleted"), 12, "{h}");
            let mut per_input = std::collections::HashMap::new();
            for x in env.calls(double) {
                *per_input.entry(x).or_insert(0) += 1;
            }
            assert!(per_input.values().all(|n| *n <= 2), "{per_input:?}");
            (sum, h.count("TaskScheduled"))
        })
        .await;
    assert_eq!(report.runs.len() as u64, report.commits);
    assert!(report.runs.iter().all(|r| r.reruns <= 12), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashing_after_every_commit_still_reaches_the_same_end() {
    for approve in [Some(true), Some(false), None] {
        let report = CrashTest::new(builder)
            .every_commit()
            .run(move |env| async move {
                let run = env.start(approval, "po-9".into()).await.unwrap();
                env.run_until_idle().await;
                if let Some(answer) = approve {
                    env.raise(run.id(), "approved", &answer).await.unwrap();
                }
                let out = env.wait(&run).await.unwrap();
                (out, env.call_count(notify) > 0)
            })
            .await;
        assert_eq!(report.runs.len(), 1);
        assert!(report.runs[0].crashes >= 3, "{report:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_a_72_hour_wait_still_escalates() {
    let env = builder().crash_after_commits([3]).start().unwrap();
    let run = env.start(approval, "po-1".into()).await.unwrap();
    env.run_until_idle().await;
    assert_eq!(env.crashes(), 1);
    env.advance(HOUR * 72).await;
    assert_eq!(env.output(&run).await.unwrap(), "escalated");
    assert_eq!(env.calls(notify), ["approve po-1?", "escalate po-1"]);
}

static SLOW_CALLS: AtomicUsize = AtomicUsize::new(0);
static SLOW_STARTED: Notify = Notify::const_new();

/// The first execution never returns (it is in flight when the worker crashes).
#[activity]
async fn slow_double(x: u64) -> Result<u64, ActivityError> {
    if SLOW_CALLS.fetch_add(1, Ordering::SeqCst) == 0 {
        SLOW_STARTED.notify_one();
        std::future::pending::<()>().await;
    }
    Ok(2 * x)
}

#[orchestrator]
async fn slow_chain(ctx: OrchestrationContext, x: u64) -> Result<u64, OrchestrationError> {
    Ok(ctx.call(slow_double, x).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loses_the_activity_in_flight_which_runs_again_once_its_lease_expires() {
    let env = TestEnv::builder()
        .register(slow_double)
        .register(slow_chain)
        .start()
        .unwrap();
    let run = env.start(slow_chain, 21).await.unwrap();
    SLOW_STARTED.notified().await;
    let before = env.now();
    env.crash().await;
    // The restarted worker finds the crashed one's activity lease expired.
    assert_eq!(env.now(), before + Duration::from_secs(300));
    assert_eq!(env.wait(&run).await.unwrap(), 42);
    assert_eq!(env.calls(slow_double), [21, 21]);
    assert_eq!(env.crashes(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_result_is_delivered_again_after_a_crash() {
    let env = TestEnv::builder()
        .register(chain)
        .script(double, Script::of(double).hang().ok(2))
        .start()
        .unwrap();
    let run = env.start(chain, 1).await.unwrap();
    env.run_until_idle().await;
    assert_eq!(env.call_count(double), 1);
    env.crash().await;
    assert_eq!(env.wait(&run).await.unwrap(), 2);
    assert_eq!(env.call_count(double), 2);
    assert_eq!(env.crashes(), 1);
}
