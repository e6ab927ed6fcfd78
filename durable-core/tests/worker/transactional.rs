//! A transactional activity on a store that cannot run its transaction fails once, clearly.

use std::sync::Arc;
use std::time::Duration;

use durable_core::prelude::*;
use durable_core::{RedbTransaction, Store};

use super::local::Counting;
use super::support::count;

#[activity(transactional)]
fn bump(_tx: &RedbTransaction<'_>, n: u32) -> Result<u32, ActivityError> {
    Ok(n + 1)
}

#[orchestrator]
async fn bump_with_retries(
    ctx: OrchestrationContext,
    n: u32,
) -> Result<String, OrchestrationError> {
    let options = CallOptions::new().retry(RetryPolicy::new(5, Duration::ZERO));
    match ctx.call_with(bump, n, options).await {
        Ok(n) => Ok(format!("ran: {n}")),
        Err(e) => Ok(e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_without_transactions_fails_the_task_once_naming_store_and_activity() {
    // `Counting` forwards every operation but this one: the trait's default answers.
    let memory = MemoryStore::new();
    let store = Counting::new(Arc::new(memory.clone()));
    let worker = Worker::builder()
        .store_arc(store)
        .clock(durable_testing::ManualClock::default().as_clock())
        .register(bump)
        .register(bump_with_retries)
        .start()
        .unwrap();
    let run = bump_with_retries::start(&worker.client(), 1).await.unwrap();
    let out = run.wait().await.unwrap();
    assert!(out.contains("activity `bump` cannot run"), "{out}");
    assert!(out.contains("Counting"), "names the store: {out}");
    assert!(out.contains("redb transaction"), "{out}");
    let history = memory.read_history(run.id()).await.unwrap();
    assert_eq!(count(&history, "TaskScheduled"), 1, "not retried");
    assert_eq!(count(&history, "TaskFailed"), 1);
    worker.shutdown().await;
}
