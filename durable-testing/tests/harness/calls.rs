//! Activity timeouts and heartbeats under the harness: a heartbeat timeout brings a lost
//! run back sooner, scripted timeouts meet the retry policy, and real activities heartbeat.

use std::time::Duration;

use durable_core::prelude::*;
use durable_testing::{Script, TestEnv};

const SECOND: Duration = Duration::from_secs(1);

#[activity]
async fn fetch_page(_page: u32) -> Result<u32, ActivityError> {
    unimplemented!("scripted in the test")
}

#[orchestrator]
async fn watched(ctx: OrchestrationContext, page: u32) -> Result<u32, OrchestrationError> {
    let options = CallOptions::new()
        .heartbeat_timeout(SECOND * 30)
        .retry(RetryPolicy::new(3, SECOND));
    Ok(ctx.call_with(fetch_page, page, options).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_run_with_a_heartbeat_timeout_is_delivered_again_after_it() {
    // Lost once (its worker never reports): taken over when the heartbeat timeout lapses,
    // not after the 5-minute activity lease.
    let env = TestEnv::builder()
        .register(watched)
        .script(fetch_page, Script::of(fetch_page).hang().ok(7))
        .start()
        .unwrap();
    let t0 = env.now();
    let run = env.start(watched, 1).await.unwrap();
    assert_eq!(env.wait(&run).await.unwrap(), 7);
    assert_eq!(env.call_count(fetch_page), 2);
    assert_eq!(env.now(), t0 + SECOND * 30);
    assert!(env.history(run.id()).await.failed(fetch_page).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_timeout_meets_the_retry_policy() {
    let timed_out = FailureDetails::new(CallOptions::HEARTBEAT_TIMEOUT, "no heartbeat for 30s");
    let env = TestEnv::builder()
        .register(watched)
        .script(fetch_page, Script::of(fetch_page).fail(timed_out).ok(9))
        .start()
        .unwrap();
    let run = env.start(watched, 2).await.unwrap();
    assert_eq!(env.wait(&run).await.unwrap(), 9);
    let failed = env.history(run.id()).await.failed(fetch_page);
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].error_type, CallOptions::HEARTBEAT_TIMEOUT);
}

/// Heartbeats each page it reads, and resumes after the last one a previous run reported.
#[activity]
async fn read_pages(ctx: ActivityContext, pages: u32) -> Result<Vec<u32>, ActivityError> {
    let start = ctx.last_heartbeat::<u32>().map_or(0, |p| p + 1);
    let mut read = Vec::new();
    for page in start..pages {
        read.push(page);
        ctx.heartbeat(page);
    }
    Ok(read)
}

#[orchestrator]
async fn reader(ctx: OrchestrationContext, pages: u32) -> Result<Vec<u32>, OrchestrationError> {
    let options = CallOptions::new()
        .timeout(SECOND * 60)
        .heartbeat_timeout(SECOND * 10);
    Ok(ctx.call_with(read_pages, pages, options).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_activity_heartbeats_under_the_harness() {
    let env = TestEnv::builder()
        .register(read_pages)
        .register(reader)
        .start()
        .unwrap();
    let run = env.start(reader, 4).await.unwrap();
    assert_eq!(env.wait(&run).await.unwrap(), [0, 1, 2, 3]);
    assert_eq!(env.call_count(read_pages), 1);
}
