//! Transactional activities: the body's statements and the task's completion in one
//! transaction, under a row lock on the task taken with the lease check.

use super::PostgresStore;
use super::notify::Wake;
use super::util::{R, to_i64, ts};
use crate::error::{FailureDetails, StoreError};
use crate::storage::LockToken;
use crate::storage::app::{Body, CatchPanic, TransactionalRun, panic_failure};
use crate::storage::metrics::CommitTimer;

/// Where a failed body's statements are rolled back to.
const SAVEPOINT: &str = "durable_activity_body";

/// The type of the failure recorded for a body that returned `Ok` but left its transaction
/// aborted (it ignored an SQL error): nothing it wrote can commit.
pub(crate) const ABORTED: &str = "TransactionAborted";

impl PostgresStore {
    /// Runs `run`'s body in a transaction that first locks the task's row under `lock` (a
    /// worker that lost the lease stops there: nothing is written, nothing runs), then
    /// completes the task with the body's result — or, when the body failed, rolls its
    /// statements back to a savepoint and completes the task with the failure.
    ///
    /// Not retried on a serialization failure as other writes are: the body runs once per
    /// call. The error goes back to the worker; the task runs again once its lease expires.
    pub(super) async fn complete_in_transaction(
        &self,
        id: u64,
        lock: LockToken,
        run: TransactionalRun,
    ) -> Result<(), StoreError> {
        let what = "running a transactional activity";
        let TransactionalRun {
            activity,
            body,
            finish,
        } = run;
        #[allow(irrefutable_let_patterns, reason = "refutable with the redb feature")]
        let Body::Postgres(body) = body else {
            return Err(StoreError::Unsupported(format!(
                "PostgresStore cannot run this kind of transaction for activity `{activity}`"
            )));
        };
        let timer = CommitTimer::start();
        let done: R<Result<(), StoreError>> = async {
            let sql = &self.inner.sql;
            let mut conn = self.conn().await?;
            let tx = conn.transaction().await?;
            let held = tx
                .query_opt(&sql.lock_activity, &[&to_i64(id), &to_i64(lock.0)])
                .await?;
            if held.is_none() {
                tx.rollback().await?;
                return Ok(Err(StoreError::LockLost(format!("activity task {id}"))));
            }
            tx.batch_execute(&format!("SAVEPOINT {SAVEPOINT}")).await?;
            let ran = CatchPanic(body(&tx))
                .await
                .unwrap_or_else(|panic| Err(panic_failure(&activity, panic.as_ref())));
            let message = match ran {
                // A body that swallowed an SQL error leaves its transaction aborted: the
                // release fails, and the task completes with a failure rather than failing
                // to commit (and running again) forever.
                Ok(out) => match tx
                    .batch_execute(&format!("RELEASE SAVEPOINT {SAVEPOINT}"))
                    .await
                {
                    Ok(()) => finish(Ok(out)),
                    Err(e) => {
                        tx.batch_execute(&format!("ROLLBACK TO SAVEPOINT {SAVEPOINT}"))
                            .await?;
                        finish(Err(left_aborted(&e)))
                    }
                },
                Err(failure) => {
                    tx.batch_execute(&format!("ROLLBACK TO SAVEPOINT {SAVEPOINT}"))
                        .await?;
                    finish(Err(failure))
                }
            };
            let text = serde_json::to_string(&message)?;
            let st = tx.prepare_cached(&sql.complete_activity).await?;
            tx.query(
                &st,
                &[
                    &to_i64(id),
                    &to_i64(lock.0),
                    &ts(message.id.visible_at),
                    &text,
                ],
            )
            .await?;
            self.notify(&tx, Wake::ORCHESTRATION).await?;
            tx.commit().await?;
            Ok(Ok(()))
        }
        .await;
        match done {
            Ok(Ok(())) => {
                timer.record_single("postgres");
                self.signal(Wake::ORCHESTRATION);
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(e) => Err(self.err(what, e)),
        }
    }
}

/// The failure of a body that returned `Ok` from an aborted transaction.
fn left_aborted(e: &tokio_postgres::Error) -> FailureDetails {
    let cause = e
        .as_db_error()
        .map_or_else(|| e.to_string(), |db| db.message().to_owned());
    FailureDetails::new(
        ABORTED,
        format!("the body left its transaction aborted: {cause}"),
    )
    .non_retriable()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio_postgres::NoTls;

    use super::super::{PostgresOptions, PostgresStore};
    use crate::error::{FailureDetails, StoreError};
    use crate::history::{Event, Payload};
    use crate::ids::{InstanceId, Timestamp};
    use crate::storage::app::{Body, TransactionalRun};
    use crate::storage::{ActivityWorkItem, Message, Store};

    const LEASE: Duration = Duration::from_secs(10);

    fn at(ms: u64) -> Timestamp {
        Timestamp::from_unix_millis(1_700_000_000_000 + ms)
    }

    /// A store on a fresh hub, its application table `<hub>_rows`, and a leased task.
    async fn leased_task() -> Option<(PostgresStore, String, String, ActivityWorkItem)> {
        let url = std::env::var("DURABLE_TEST_POSTGRES_URL")
            .ok()
            .filter(|u| !u.is_empty())?;
        let hub = format!("durable_txn_{}", &InstanceId::random().as_str()[..12]);
        let store = PostgresStore::connect(&url, PostgresOptions::new(&hub))
            .await
            .expect("connect");
        let table = format!("{hub}_rows");
        let (client, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
        tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE TABLE {table} (k text PRIMARY KEY)"))
            .await
            .unwrap();
        let task = crate::storage::lease_one_activity_task(&store, at(0), LEASE).await;
        Some((store, url, table, task))
    }

    /// A run that inserts `key` into `table`, then ends as `fail` says.
    fn run(table: &str, key: &'static str, fail: bool) -> TransactionalRun {
        let insert = format!("INSERT INTO {table} (k) VALUES ($1)");
        TransactionalRun {
            activity: Arc::from("act"),
            body: Body::Postgres(Box::new(move |tx| {
                Box::pin(async move {
                    tx.execute(&insert, &[&key])
                        .await
                        .map_err(|e| FailureDetails::from_error(&e))?;
                    if fail {
                        return Err(FailureDetails::new("Nope", "insufficient funds"));
                    }
                    Ok::<Payload, _>("8".into())
                })
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

    async fn rows(url: &str, table: &str) -> Vec<String> {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
        tokio::spawn(connection);
        client
            .query(&format!("SELECT k FROM {table} ORDER BY k"), &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// Drops the test's table and task hub.
    async fn clean_up(store: PostgresStore, url: &str, table: &str) {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
        tokio::spawn(connection);
        client
            .batch_execute(&format!("DROP TABLE {table}"))
            .await
            .unwrap();
        store.drop_task_hub().await.unwrap();
    }

    async fn results(store: &PostgresStore, now: Timestamp) -> Vec<Event> {
        match store.fetch_orchestration_work(now, LEASE).await.unwrap() {
            Some(item) => item.messages.into_iter().map(|m| m.event).collect(),
            None => Vec::new(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_body_and_the_completion_commit_together() {
        let Some((store, url, table, task)) = leased_task().await else {
            return;
        };
        store
            .complete_activity_in_transaction(task.id, task.lock, run(&table, "ok", false))
            .await
            .unwrap();
        assert_eq!(rows(&url, &table).await, ["ok"]);
        let events = results(&store, at(1)).await;
        assert!(
            matches!(events.as_slice(), [Event::TaskCompleted { .. }]),
            "{events:?}"
        );
        clean_up(store, &url, &table).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_body_is_rolled_back_and_its_failure_recorded() {
        let Some((store, url, table, task)) = leased_task().await else {
            return;
        };
        store
            .complete_activity_in_transaction(task.id, task.lock, run(&table, "failed", true))
            .await
            .unwrap();
        assert!(rows(&url, &table).await.is_empty());
        let events = results(&store, at(1)).await;
        let [Event::TaskFailed { failure, .. }] = events.as_slice() else {
            panic!("one failure expected: {events:?}");
        };
        assert_eq!(failure.message, "insufficient funds");
        clean_up(store, &url, &table).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_worker_whose_lease_was_taken_over_writes_nothing() {
        let Some((store, url, table, stale)) = leased_task().await else {
            return;
        };
        let mut again = store
            .fetch_activity_work(at(10_000), LEASE, 1)
            .await
            .unwrap();
        let fresh = again.remove(0);
        assert_eq!(fresh.id, stale.id);
        let r = store
            .complete_activity_in_transaction(stale.id, stale.lock, run(&table, "stale", false))
            .await;
        assert!(matches!(r, Err(StoreError::LockLost(_))), "{r:?}");
        assert!(
            rows(&url, &table).await.is_empty(),
            "the fenced-out body wrote nothing"
        );
        store
            .complete_activity_in_transaction(fresh.id, fresh.lock, run(&table, "fresh", false))
            .await
            .unwrap();
        assert_eq!(rows(&url, &table).await, ["fresh"]);
        let events = results(&store, at(10_001)).await;
        assert_eq!(events.len(), 1, "one result: {events:?}");
        clean_up(store, &url, &table).await;
    }
}
