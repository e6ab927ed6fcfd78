//! Issue 12: event order across continue-as-new, combinators over nothing, event-name
//! matching, and failures that name the failed task.

use std::sync::Arc;
use std::time::Duration;

use durable_core::prelude::*;
use durable_core::{RedbStore, Store};

// ---------------------------------------------------------------- event order across generations

/// Counts `false` events, one per generation, until a `true` arrives.
#[orchestrator]
async fn count_falses(ctx: OrchestrationContext, seen: u32) -> Result<u32, OrchestrationError> {
    let flag: bool = ctx.wait_for_event("flag").await?;
    if flag {
        return Ok(seen);
    }
    ctx.continue_as_new(seen + 1).await
}

/// Raises ten `false` then one `true` while generations run (yielding between raises so the
/// worker runs episodes meanwhile), and checks every `false` was seen before the `true`.
async fn ten_falses_then_true(worker: &Worker, round: usize, spread: bool) {
    let client = worker.client();
    let id = InstanceId::new(format!("order-{round}")).unwrap();
    let run = client
        .start_with(count_falses, 0, StartOptions::new().instance_id(id))
        .await
        .unwrap();
    for i in 0..11 {
        run.raise("flag", &(i == 10)).await.unwrap();
        if spread && i % 3 == round % 3 {
            tokio::task::yield_now().await;
        }
    }
    let seen = tokio::time::timeout(Duration::from_secs(30), run.wait())
        .await
        .expect("the orchestration finishes")
        .unwrap();
    assert_eq!(seen, 10, "round {round}: the `true` overtook a `false`");
}

async fn order_holds_on(store: Arc<dyn Store>, cache: usize) {
    order_holds_for(store, cache, 40).await;
}

async fn order_holds_for(store: Arc<dyn Store>, cache: usize, rounds: usize) {
    let worker = Worker::builder()
        .store_arc(store)
        .register(count_falses)
        .cache_capacity(cache)
        .start()
        .unwrap();
    for round in 0..rounds {
        ten_falses_then_true(&worker, round, round % 2 == 1).await;
    }
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn continue_as_new_keeps_arrival_order_on_redb() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path().join("order.redb")).unwrap();
    order_holds_on(Arc::new(store), 10_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn continue_as_new_keeps_arrival_order_in_memory_with_the_cache() {
    order_holds_on(Arc::new(MemoryStore::new()), 10_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn continue_as_new_keeps_arrival_order_in_memory_without_the_cache() {
    order_holds_on(Arc::new(MemoryStore::new()), 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn continue_as_new_keeps_arrival_order_on_postgres() {
    let Ok(url) = std::env::var("DURABLE_TEST_POSTGRES_URL") else {
        eprintln!("skipped: DURABLE_TEST_POSTGRES_URL is not set (.ci/run sets it)");
        return;
    };
    let hub = format!("durable_test_{}", &InstanceId::random().as_str()[..16]);
    let store = durable_core::PostgresStore::connect(&url, durable_core::PostgresOptions::new(hub))
        .await
        .expect("connect to PostgreSQL");
    order_holds_for(Arc::new(store.clone()), 10_000, 10).await;
    store.drop_task_hub().await.unwrap();
}
