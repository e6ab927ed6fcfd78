//! Transactional runs on the redb store, driven directly: commit together, roll back on
//! failure or panic, nothing written by a fenced-out worker.

use std::sync::Arc;
use std::time::Duration;

use redb::{ReadableTable, TableDefinition};

use super::RedbStore;
use crate::error::{FailureDetails, StoreError};
use crate::history::{Event, Payload, RuntimeStatus};
use crate::ids::{InstanceId, Timestamp};
use crate::storage::app::{Body, RedbTransaction, TransactionalRun};
use crate::storage::{ActivityTask, ActivityWorkItem, EpisodeCommit, Message, NewInstance, Store};

const ROWS: TableDefinition<'_, &str, u64> = TableDefinition::new("rows");
const LEASE: Duration = Duration::from_secs(10);

fn at(ms: u64) -> Timestamp {
    Timestamp::from_unix_millis(ms)
}

/// A store with instance `a` waiting for the result of activity task 0, `act`, leased once.
async fn leased_task() -> (RedbStore, ActivityWorkItem) {
    let store = RedbStore::in_memory().unwrap();
    let task = crate::storage::lease_one_activity_task(&store, at(0), LEASE).await;
    (store, task)
}

/// A run that inserts `key` and then ends as `outcome` says.
fn run(key: &'static str, outcome: fn() -> Result<Payload, FailureDetails>) -> TransactionalRun {
    TransactionalRun {
        activity: Arc::from("act"),
        body: Body::Redb(Box::new(move |tx: &RedbTransaction<'_>| {
            tx.open_table(ROWS)
                .unwrap()
                .insert(key, 1)
                .map_err(|e| FailureDetails::from_error(&e))?;
            outcome()
        })),
        finish: Box::new(|result| {
            let event = match result {
                Ok(result) => Event::TaskCompleted { seq: 0, result },
                Err(failure) => Event::TaskFailed {
                    seq: 0,
                    failure,
                    heartbeat: None,
                },
            };
            Message::new(event, Some(1), at(0))
        }),
    }
}

fn rows(store: &RedbStore) -> Vec<String> {
    store
        .read_app(|tx| -> Result<Vec<String>, crate::ActivityError> {
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

/// The kinds of the messages waiting for instance `a`.
async fn inbox(store: &RedbStore) -> Vec<String> {
    match store
        .fetch_orchestration_work(at(60_000), LEASE)
        .await
        .unwrap()
    {
        Some(item) => item
            .messages
            .iter()
            .map(|m| m.event.kind().to_owned())
            .collect(),
        None => Vec::new(),
    }
}

#[tokio::test]
async fn the_body_and_the_completion_commit_together() {
    let (store, task) = leased_task().await;
    let before = store.commits();
    store
        .complete_activity_in_transaction(task.id, task.lock, run("ok", || Ok("8".into())))
        .await
        .unwrap();
    assert_eq!(store.commits() - before, 1, "one transaction");
    assert_eq!(rows(&store), ["ok"]);
    assert_eq!(inbox(&store).await, ["TaskCompleted"]);
    assert!(
        store
            .fetch_activity_work(at(60_000), LEASE, 10)
            .await
            .unwrap()
            .is_empty(),
        "the task is gone"
    );
}

#[tokio::test]
async fn a_failing_body_is_rolled_back_and_its_failure_recorded() {
    let (store, task) = leased_task().await;
    store
        .complete_activity_in_transaction(
            task.id,
            task.lock,
            run("failed", || {
                Err(FailureDetails::new("Nope", "insufficient funds"))
            }),
        )
        .await
        .unwrap();
    assert!(rows(&store).is_empty(), "the body's write was rolled back");
    let item = store
        .fetch_orchestration_work(at(60_000), LEASE)
        .await
        .unwrap()
        .unwrap();
    let [message] = item.messages.as_slice() else {
        panic!("one result expected, got {:?}", item.messages);
    };
    let Event::TaskFailed { failure, .. } = &message.event else {
        panic!("a failure expected, got {:?}", message.event);
    };
    assert_eq!(failure.message, "insufficient funds");
}

#[tokio::test]
async fn a_panicking_body_is_rolled_back_and_recorded_as_a_failure() {
    let (store, task) = leased_task().await;
    store
        .complete_activity_in_transaction(task.id, task.lock, run("panicked", || panic!("boom")))
        .await
        .unwrap();
    assert!(rows(&store).is_empty(), "the body's write was rolled back");
    let item = store
        .fetch_orchestration_work(at(60_000), LEASE)
        .await
        .unwrap()
        .unwrap();
    let Event::TaskFailed { failure, .. } = &item.messages[0].event else {
        panic!("a failure expected, got {:?}", item.messages[0].event);
    };
    assert!(
        failure.message.contains("activity `act` panicked: boom"),
        "{failure:?}"
    );
    // The store keeps working after the panic.
    store
        .write_app(|tx| -> Result<(), StoreError> {
            tx.open_table(ROWS)
                .map_err(|e| StoreError::backend(e.to_string()))?
                .insert("after", 1)
                .map_err(|e| StoreError::backend(e.to_string()))?;
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(rows(&store), ["after"]);
}

#[tokio::test]
async fn a_worker_whose_lease_was_taken_over_writes_nothing() {
    let (store, stale) = leased_task().await;
    // The lease expires and another worker takes the task.
    let mut again = store
        .fetch_activity_work(at(10_000), LEASE, 1)
        .await
        .unwrap();
    let fresh = again.remove(0);
    assert_eq!(fresh.id, stale.id);
    let r = store
        .complete_activity_in_transaction(stale.id, stale.lock, run("stale", || Ok("1".into())))
        .await;
    assert!(matches!(r, Err(StoreError::LockLost(_))), "{r:?}");
    assert!(rows(&store).is_empty(), "the fenced-out body wrote nothing");
    // The new owner's run commits; its result is the only one enqueued.
    store
        .complete_activity_in_transaction(fresh.id, fresh.lock, run("fresh", || Ok("2".into())))
        .await
        .unwrap();
    assert_eq!(rows(&store), ["fresh"]);
    assert_eq!(inbox(&store).await, ["TaskCompleted"]);
}

#[tokio::test]
async fn runs_in_one_batch_keep_their_own_outcomes() {
    // Several runs and ordinary writes queued together: each run gets a transaction of its
    // own, the failed one's write is rolled back, the others commit.
    let store = RedbStore::in_memory().unwrap();
    let mut tasks = Vec::new();
    for n in 0..3u64 {
        let id = InstanceId::new(format!("i{n}")).unwrap();
        store
            .create_instance(NewInstance::new(id.clone(), "Job", "null".into(), at(0)))
            .await
            .unwrap();
        let item = store
            .fetch_orchestration_work(at(0), LEASE)
            .await
            .unwrap()
            .unwrap();
        let mut c = EpisodeCommit::new(id.clone(), item.lock, RuntimeStatus::Running, at(0));
        c.consumed = item.messages.iter().map(|m| m.id).collect();
        c.activities = vec![ActivityTask::new(id, 1, 0, "act", "7".to_owned())];
        store.commit_episode(c).await.unwrap();
    }
    tasks.extend(store.fetch_activity_work(at(0), LEASE, 3).await.unwrap());
    assert_eq!(tasks.len(), 3);
    let outcomes: [fn() -> Result<Payload, FailureDetails>; 3] = [
        || Ok("1".into()),
        || Err(FailureDetails::new("Nope", "no")),
        || Ok("3".into()),
    ];
    let keys = ["k0", "k1", "k2"];
    let seed = store.write_app(|tx| -> Result<(), StoreError> {
        tx.open_table(ROWS)
            .map_err(|e| StoreError::backend(e.to_string()))?
            .insert("seed", 1)
            .map_err(|e| StoreError::backend(e.to_string()))?;
        Ok(())
    });
    let [a, b, c] = [0, 1, 2].map(|i| {
        store.complete_activity_in_transaction(
            tasks[i].id,
            tasks[i].lock,
            run(keys[i], outcomes[i]),
        )
    });
    let (seeded, a, b, c) = tokio::join!(seed, a, b, c);
    seeded.unwrap();
    assert!(a.is_ok() && b.is_ok() && c.is_ok(), "{a:?} {b:?} {c:?}");
    let mut got = rows(&store);
    got.sort();
    assert_eq!(got, ["k0", "k2", "seed"]);
}
