//! Transactional activities (issue 18) through the worker: `#[activity(transactional)]`
//! called with `ctx.call`, its writes committed with its result on the redb store, rolled
//! back with its failure (and re-run by a retry policy), refused clearly where the store
//! cannot run it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use durable_core::history::{Event, HistoryEvent};
use durable_core::prelude::*;
use durable_core::redb::{ReadableTable, TableDefinition};
use durable_core::{RedbStore, Store};
use durable_testing::ManualClock;
use serde::{Deserialize, Serialize};

const ACCOUNTS: TableDefinition<'_, &str, i64> = TableDefinition::new("accounts");
const ROWS: TableDefinition<'_, &str, u32> = TableDefinition::new("rows");

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Move {
    from: String,
    to: String,
    cents: i64,
}

/// Moves money; refuses to overdraw (a failure that rolls back the debit already written).
#[activity(transactional)]
fn transfer(tx: &RedbTransaction<'_>, m: Move) -> Result<i64, ActivityError> {
    let mut accounts = tx.open_table(ACCOUNTS)?;
    let from = accounts.get(m.from.as_str())?.map_or(0, |v| v.value()) - m.cents;
    accounts.insert(m.from.as_str(), from)?;
    if from < 0 {
        return Err(ActivityError::non_retriable(format!(
            "{} cannot pay {}",
            m.from, m.cents
        )));
    }
    let to = accounts.get(m.to.as_str())?.map_or(0, |v| v.value()) + m.cents;
    accounts.insert(m.to.as_str(), to)?;
    Ok(from)
}

#[orchestrator]
async fn pay(
    ctx: OrchestrationContext,
    m: Move,
) -> Result<Result<i64, String>, OrchestrationError> {
    Ok(ctx.call(transfer, m).await.map_err(|e| e.to_string()))
}

static FLAKY_RUNS: AtomicU32 = AtomicU32::new(0);

/// Writes a row named after its attempt; the first attempt then fails.
#[activity(transactional)]
fn flaky(tx: &RedbTransaction<'_>) -> Result<u32, ActivityError> {
    let attempt = FLAKY_RUNS.fetch_add(1, Ordering::SeqCst) + 1;
    tx.open_table(ROWS)?
        .insert(format!("attempt-{attempt}").as_str(), attempt)?;
    if attempt == 1 {
        return Err(ActivityError::new("the first attempt fails"));
    }
    Ok(attempt)
}

#[orchestrator]
async fn retried(ctx: OrchestrationContext) -> Result<u32, OrchestrationError> {
    let options = CallOptions::new().retry(RetryPolicy::new(3, Duration::ZERO));
    Ok(ctx.call_with(flaky, (), options).await?)
}

/// Writes a row, then panics.
#[activity(transactional)]
fn explode(tx: &RedbTransaction<'_>) -> Result<(), ActivityError> {
    tx.open_table(ROWS)?.insert("exploded", 1)?;
    panic!("the body blew up");
}

#[orchestrator]
async fn blow_up(ctx: OrchestrationContext) -> Result<String, OrchestrationError> {
    match ctx.call(explode, ()).await {
        Ok(()) => Ok("no panic".to_owned()),
        Err(e) => Ok(e.to_string()),
    }
}

#[orchestrator]
async fn pay_locally(ctx: OrchestrationContext, m: Move) -> Result<String, OrchestrationError> {
    match ctx.call_local(transfer, m).await {
        Ok(_) => Ok("ran".to_owned()),
        Err(e) => Ok(e.to_string()),
    }
}

fn worker_on(store: &RedbStore) -> Worker {
    Worker::builder()
        .store(store.clone())
        .clock(ManualClock::default().as_clock())
        .register(transfer)
        .register(pay)
        .register(flaky)
        .register(retried)
        .register(explode)
        .register(blow_up)
        .register(pay_locally)
        .start()
        .unwrap()
}

async fn seed(store: &RedbStore, accounts: &[(&'static str, i64)]) {
    let accounts = accounts.to_vec();
    store
        .write_app(move |tx| -> Result<(), ActivityError> {
            let mut t = tx.open_table(ACCOUNTS)?;
            for (name, cents) in accounts {
                t.insert(name, cents)?;
            }
            Ok(())
        })
        .await
        .unwrap();
}

fn balances(store: &RedbStore) -> Vec<(String, i64)> {
    store
        .read_app(|tx| -> Result<_, ActivityError> {
            let Some(t) = tx.open_table(ACCOUNTS)? else {
                return Ok(Vec::new());
            };
            let mut out = Vec::new();
            for row in t.iter()? {
                let (k, v) = row?;
                out.push((k.value().to_owned(), v.value()));
            }
            Ok(out)
        })
        .unwrap()
}

fn rows(store: &RedbStore) -> Vec<String> {
    store
        .read_app(|tx| -> Result<_, ActivityError> {
            let Some(t) = tx.open_table(ROWS)? else {
                return Ok(Vec::new());
            };
            let mut out = Vec::new();
            for row in t.iter()? {
                out.push(row?.0.value().to_owned());
            }
            Ok(out)
        })
        .unwrap()
}

fn kinds(history: &[HistoryEvent]) -> Vec<&'static str> {
    history.iter().map(|e| e.event.kind()).collect()
}

fn count(history: &[HistoryEvent], kind: &str) -> usize {
    kinds(history).iter().filter(|k| **k == kind).count()
}

fn alice_pays_bob(cents: i64) -> Move {
    Move {
        from: "alice".into(),
        to: "bob".into(),
        cents,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writes_commit_with_the_result_the_orchestration_sees() {
    let store = RedbStore::in_memory().unwrap();
    seed(&store, &[("alice", 100), ("bob", 0)]).await;
    let worker = worker_on(&store);
    let run = pay::start(&worker.client(), alice_pays_bob(30))
        .await
        .unwrap();
    assert_eq!(run.wait().await.unwrap(), Ok(70));
    assert_eq!(
        balances(&store),
        [("alice".to_owned(), 70), ("bob".to_owned(), 30)]
    );
    let history = store.read_history(run.id()).await.unwrap();
    assert_eq!(count(&history, "TaskScheduled"), 1);
    assert_eq!(count(&history, "TaskCompleted"), 1);
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_body_rolls_back_its_writes_and_reports_the_failure() {
    let store = RedbStore::in_memory().unwrap();
    seed(&store, &[("alice", 10), ("bob", 0)]).await;
    let worker = worker_on(&store);
    let run = pay::start(&worker.client(), alice_pays_bob(30))
        .await
        .unwrap();
    let out = run.wait().await.unwrap();
    let message = out.unwrap_err();
    assert!(message.contains("alice cannot pay 30"), "{message}");
    // The debit the body wrote before failing is gone.
    assert_eq!(
        balances(&store),
        [("alice".to_owned(), 10), ("bob".to_owned(), 0)]
    );
    let history = store.read_history(run.id()).await.unwrap();
    assert_eq!(count(&history, "TaskFailed"), 1);
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_runs_the_body_again_on_what_the_failed_attempt_left_untouched() {
    let store = RedbStore::in_memory().unwrap();
    let worker = worker_on(&store);
    let run = retried::start(&worker.client(), ()).await.unwrap();
    assert_eq!(run.wait().await.unwrap(), 2);
    assert_eq!(FLAKY_RUNS.load(Ordering::SeqCst), 2, "two attempts");
    assert_eq!(
        rows(&store),
        ["attempt-2"],
        "the failed attempt's row rolled back"
    );
    let history = store.read_history(run.id()).await.unwrap();
    let failures: Vec<String> = history
        .iter()
        .filter_map(|e| match &e.event {
            Event::TaskFailed { failure, .. } => Some(failure.message.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(failures.len(), 1, "{:?}", kinds(&history));
    assert!(
        failures[0].contains("the first attempt fails"),
        "{failures:?}"
    );
    assert_eq!(count(&history, "TaskCompleted"), 1);
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_body_fails_the_task_with_details_and_writes_nothing() {
    let store = RedbStore::in_memory().unwrap();
    let worker = worker_on(&store);
    let run = blow_up::start(&worker.client(), ()).await.unwrap();
    let out = run.wait().await.unwrap();
    assert!(
        out.contains("activity `explode` panicked: the body blew up"),
        "{out}"
    );
    assert!(rows(&store).is_empty(), "{:?}", rows(&store));
    // The store's writer survived: the next transactional activity commits.
    seed(&store, &[("alice", 5)]).await;
    let run = pay::start(&worker.client(), alice_pays_bob(5))
        .await
        .unwrap();
    assert_eq!(run.wait().await.unwrap(), Ok(0));
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_call_is_refused_with_a_clear_failure() {
    let store = RedbStore::in_memory().unwrap();
    seed(&store, &[("alice", 100)]).await;
    let worker = worker_on(&store);
    let run = pay_locally::start(&worker.client(), alice_pays_bob(1))
        .await
        .unwrap();
    let out = run.wait().await.unwrap();
    assert!(
        out.contains("activity `transfer` is transactional"),
        "{out}"
    );
    assert_eq!(balances(&store), [("alice".to_owned(), 100)]);
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_store_runs_them_on_an_in_memory_database() {
    let store = MemoryStore::new();
    store
        .write_app(|tx| -> Result<(), ActivityError> {
            tx.open_table(ACCOUNTS)?.insert("alice", 100)?;
            Ok(())
        })
        .await
        .unwrap();
    let worker = Worker::builder()
        .store(store.clone())
        .clock(ManualClock::default().as_clock())
        .register(transfer)
        .register(pay)
        .start()
        .unwrap();
    let ok = pay::start(&worker.client(), alice_pays_bob(60))
        .await
        .unwrap();
    assert_eq!(ok.wait().await.unwrap(), Ok(40));
    let refused = pay::start(&worker.client(), alice_pays_bob(60))
        .await
        .unwrap();
    assert!(refused.wait().await.unwrap().is_err());
    let balances = store
        .read_app(|tx| -> Result<Vec<i64>, ActivityError> {
            let t = tx.open_table(ACCOUNTS)?.expect("the table exists");
            Ok(vec![
                t.get("alice")?.map_or(0, |v| v.value()),
                t.get("bob")?.map_or(0, |v| v.value()),
            ])
        })
        .unwrap();
    assert_eq!(
        balances,
        [40, 60],
        "the refused transfer's debit rolled back"
    );
    worker.shutdown().await;
}

#[test]
fn the_body_is_callable_directly_in_unit_tests() {
    // `transfer::run` takes the transaction the store would give: here `write_app`'s.
    let store = RedbStore::in_memory().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let out = rt.block_on(store.write_app(|tx| -> Result<i64, ActivityError> {
        tx.open_table(ACCOUNTS)?.insert("alice", 50)?;
        transfer::run(tx, alice_pays_bob(20))
    }));
    assert_eq!(out.unwrap(), 30);
    assert_eq!(
        balances(&store),
        [("alice".to_owned(), 30), ("bob".to_owned(), 20)]
    );
}
