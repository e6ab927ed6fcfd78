//! `PostgreSQL` transactional activities through the worker (issue 18): the statements commit
//! with the result, roll back with a failure or a panic, and a retry runs the body again.
//! Runs when `DURABLE_TEST_POSTGRES_URL` names a database (each test on a fresh task hub).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use durable_core::prelude::*;
use durable_core::{PgTransaction, PostgresOptions, PostgresStore, Store};
use durable_testing::ManualClock;
use tokio_postgres::NoTls;

/// Inserts `row` into table `table`, then fails or panics as `how` says.
#[activity(transactional)]
async fn insert(
    tx: &PgTransaction<'_>,
    args: (String, String, String),
) -> Result<u64, ActivityError> {
    let (table, row, how) = args;
    let n = tx
        .execute(&format!("INSERT INTO {table} (k) VALUES ($1)"), &[&row])
        .await?;
    match how.as_str() {
        "fail" => Err(ActivityError::non_retriable("refused after the insert")),
        "panic" => panic!("the body blew up"),
        _ => Ok(n),
    }
}

static FLAKY_RUNS: AtomicU32 = AtomicU32::new(0);

/// Inserts a row named after its attempt; the first attempt then fails.
#[activity(transactional)]
async fn flaky(tx: &PgTransaction<'_>, table: String) -> Result<u32, ActivityError> {
    let attempt = FLAKY_RUNS.fetch_add(1, Ordering::SeqCst) + 1;
    tx.execute(
        &format!("INSERT INTO {table} (k) VALUES ($1)"),
        &[&format!("attempt-{attempt}")],
    )
    .await?;
    if attempt == 1 {
        return Err(ActivityError::new("the first attempt fails"));
    }
    Ok(attempt)
}

#[orchestrator]
async fn call_insert(
    ctx: OrchestrationContext,
    args: (String, String, String),
) -> Result<Result<u64, String>, OrchestrationError> {
    Ok(ctx.call(insert, args).await.map_err(|e| e.to_string()))
}

#[orchestrator]
async fn retried(ctx: OrchestrationContext, table: String) -> Result<u32, OrchestrationError> {
    let options = CallOptions::new().retry(RetryPolicy::new(3, Duration::ZERO));
    Ok(ctx.call_with(flaky, table, options).await?)
}

struct Pg {
    worker: Worker,
    store: PostgresStore,
    client: tokio_postgres::Client,
    table: String,
}

async fn start() -> Option<Pg> {
    let Some(url) = std::env::var("DURABLE_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        println!("skipped: DURABLE_TEST_POSTGRES_URL is not set");
        return None;
    };
    let hub = format!("durable_txn_pg_{}", &InstanceId::random().as_str()[..12]);
    let store = PostgresStore::connect(&url, PostgresOptions::new(&hub))
        .await
        .expect("connect");
    let (client, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(connection);
    let table = format!("{hub}_rows");
    client
        .batch_execute(&format!("CREATE TABLE {table} (k text PRIMARY KEY)"))
        .await
        .unwrap();
    let worker = Worker::builder()
        .store(store.clone())
        .clock(ManualClock::default().as_clock())
        .register(insert)
        .register(flaky)
        .register(call_insert)
        .register(retried)
        .start()
        .unwrap();
    Some(Pg {
        worker,
        store,
        client,
        table,
    })
}

impl Pg {
    async fn rows(&self) -> Vec<String> {
        self.client
            .query(&format!("SELECT k FROM {} ORDER BY k", self.table), &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    async fn stop(self) {
        self.worker.shutdown().await;
        self.client
            .batch_execute(&format!("DROP TABLE {}", self.table))
            .await
            .unwrap();
        self.store.drop_task_hub().await.unwrap();
    }

    async fn insert(&self, row: &str, how: &str) -> Result<u64, String> {
        let args = (self.table.clone(), row.to_owned(), how.to_owned());
        let run = call_insert::start(&self.worker.client(), args)
            .await
            .unwrap();
        run.wait().await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_statements_commit_with_the_result_or_roll_back_with_the_failure() {
    let Some(pg) = start().await else { return };
    assert_eq!(pg.insert("kept", "ok").await, Ok(1));
    let refused = pg.insert("refused", "fail").await.unwrap_err();
    assert!(refused.contains("refused after the insert"), "{refused}");
    let panicked = pg.insert("panicked", "panic").await.unwrap_err();
    assert!(
        panicked.contains("activity `insert` panicked: the body blew up"),
        "{panicked}"
    );
    assert_eq!(pg.rows().await, ["kept"]);
    pg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_runs_the_body_again_after_the_failed_attempt_rolled_back() {
    let Some(pg) = start().await else { return };
    let run = retried::start(&pg.worker.client(), pg.table.clone())
        .await
        .unwrap();
    assert_eq!(run.wait().await.unwrap(), 2);
    assert_eq!(pg.rows().await, ["attempt-2"]);
    let history = pg.store.read_history(run.id()).await.unwrap();
    let failed = history
        .iter()
        .filter(|e| e.event.kind() == "TaskFailed")
        .count();
    assert_eq!(failed, 1);
    pg.stop().await;
}
