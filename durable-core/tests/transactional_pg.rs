//! `PostgreSQL` transactional activities through the worker (issue 18): the statements commit
//! with the result, roll back with a failure or a panic, and a retry runs the body again; a
//! body that swallowed an SQL error fails once, not forever; SQL errors keep the database's
//! message; a body that never returns is stopped by its timeout and by the worker's shutdown.
//! Runs when `DURABLE_TEST_POSTGRES_URL` names a database (each test on a fresh task hub).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use durable_core::prelude::*;
use durable_core::{PgTransaction, PostgresOptions, PostgresStore, Store};
use durable_testing::ManualClock;
use tokio::sync::Notify;
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

static SWALLOW_RUNS: AtomicU32 = AtomicU32::new(0);

/// Ignores an SQL error (which aborts the transaction) and returns `Ok` all the same.
#[activity(transactional)]
async fn swallow(tx: &PgTransaction<'_>, table: String) -> Result<u32, ActivityError> {
    SWALLOW_RUNS.fetch_add(1, Ordering::SeqCst);
    tx.execute(
        &format!("INSERT INTO {table} (k) VALUES ('swallowed')"),
        &[],
    )
    .await?;
    let _ = tx.execute("SELECT * FROM no_such_table_at_all", &[]).await;
    Ok(1)
}

/// Signalled when `hang` has written its row and starts waiting forever (one for the test
/// with a timeout, one for the test without).
static HANGING: [Notify; 2] = [Notify::const_new(), Notify::const_new()];

/// Inserts a row, then never returns.
#[activity(transactional)]
async fn hang(
    tx: &PgTransaction<'_>,
    (table, timeout): (String, bool),
) -> Result<(), ActivityError> {
    tx.execute(&format!("INSERT INTO {table} (k) VALUES ('hung')"), &[])
        .await?;
    HANGING[usize::from(timeout)].notify_one();
    std::future::pending::<()>().await;
    Ok(())
}

/// The error type and message of a failed call, or its output.
fn outcome<T>(r: Result<T, TaskError>) -> Result<T, (String, String, bool)> {
    r.map_err(|e| match e {
        TaskError::Failed(f) => (
            f.details.error_type,
            f.details.message,
            f.details.non_retriable,
        ),
        other => (String::new(), other.to_string(), false),
    })
}

#[orchestrator]
async fn call_swallow(
    ctx: OrchestrationContext,
    table: String,
) -> Result<Result<u32, (String, String, bool)>, OrchestrationError> {
    // Retried: a retriable failure would run the body again.
    let options = CallOptions::new().retry(RetryPolicy::new(3, Duration::ZERO));
    Ok(outcome(ctx.call_with(swallow, table, options).await))
}

#[orchestrator]
async fn call_hang(
    ctx: OrchestrationContext,
    (table, timeout): (String, bool),
) -> Result<Result<(), (String, String, bool)>, OrchestrationError> {
    let options = if timeout {
        CallOptions::new().timeout(Duration::from_secs(1))
    } else {
        CallOptions::new()
    };
    Ok(outcome(
        ctx.call_with(hang, (table, timeout), options).await,
    ))
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
    clock: ManualClock,
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
    let clock = ManualClock::default();
    let worker = Worker::builder()
        .store(store.clone())
        .clock(clock.as_clock())
        .register(insert)
        .register(flaky)
        .register(swallow)
        .register(hang)
        .register(call_swallow)
        .register(call_hang)
        .register(call_insert)
        .register(retried)
        .start()
        .unwrap();
    Some(Pg {
        worker,
        clock,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_left_its_transaction_aborted_fails_once_not_retriably() {
    let Some(pg) = start().await else { return };
    let run = call_swallow::start(&pg.worker.client(), pg.table.clone())
        .await
        .unwrap();
    let (error_type, message, non_retriable) = run.wait().await.unwrap().unwrap_err();
    assert_eq!(error_type, "TransactionAborted");
    assert!(
        message
            .starts_with("the body left its transaction aborted: current transaction is aborted"),
        "{message}"
    );
    assert!(non_retriable);
    assert_eq!(SWALLOW_RUNS.load(Ordering::SeqCst), 1, "the body ran once");
    assert!(pg.rows().await.is_empty(), "its insert was rolled back");
    pg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sql_error_is_recorded_with_the_database_message() {
    let Some(pg) = start().await else { return };
    assert_eq!(pg.insert("twice", "ok").await, Ok(1));
    let duplicate = pg.insert("twice", "ok").await.unwrap_err();
    assert!(
        duplicate.contains("duplicate key value violates unique constraint")
            && duplicate.contains("SQLSTATE 23505"),
        "{duplicate}"
    );
    assert_eq!(pg.rows().await, ["twice"]);
    pg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_returns_times_out_and_is_rolled_back() {
    let Some(pg) = start().await else { return };
    let client = pg.worker.client();
    let run = call_hang::start(&client, (pg.table.clone(), true))
        .await
        .unwrap();
    HANGING[1].notified().await;
    pg.clock.advance(Duration::from_secs(2));
    let (error_type, message, _) = run.wait().await.unwrap().unwrap_err();
    assert_eq!(error_type, CallOptions::TIMEOUT);
    assert!(
        message.contains("start-to-close timeout of 1s"),
        "{message}"
    );
    assert!(pg.rows().await.is_empty(), "its insert was rolled back");
    // The task's row is no longer locked: the purge goes through.
    assert_eq!(client.purge(run.id()).await.unwrap().deleted, 1);
    pg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_stops_a_body_that_never_returns_and_records_nothing() {
    let Some(pg) = start().await else { return };
    let run = call_hang::start(&pg.worker.client(), (pg.table.clone(), false))
        .await
        .unwrap();
    HANGING[0].notified().await;
    // Bounded only so that a regression fails rather than hangs.
    tokio::time::timeout(Duration::from_secs(60), pg.worker.shutdown())
        .await
        .expect("the shutdown did not wait for the body forever");
    let Pg {
        clock,
        store,
        client,
        table,
        ..
    } = pg;
    let history = store.read_history(run.id()).await.unwrap();
    assert!(
        !history
            .iter()
            .any(|e| matches!(e.event.kind(), "TaskCompleted" | "TaskFailed")),
        "nothing recorded: {history:?}"
    );
    let rows: Vec<String> = client
        .query(&format!("SELECT k FROM {table}"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(rows.is_empty(), "its insert was rolled back: {rows:?}");
    drop(clock);
    client
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
    store.drop_task_hub().await.unwrap();
}
