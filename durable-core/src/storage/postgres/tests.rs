use tokio_postgres::NoTls;

use super::schema::{MAX_HUB_LEN, validate_hub};
use super::*;
use crate::history::Event;
use crate::storage::ActivityTask;

/// The test database, if `DURABLE_TEST_POSTGRES_URL` names one.
fn test_url() -> Option<String> {
    std::env::var("DURABLE_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
}

const T0: Timestamp = Timestamp::from_unix_millis(1_700_000_000_000);

fn first_commit(item: &OrchestrationWorkItem) -> EpisodeCommit {
    let mut c = EpisodeCommit::new(
        item.instance.instance_id.clone(),
        item.lock,
        RuntimeStatus::Running,
        T0,
    );
    c.consumed = item.messages.iter().map(|m| m.id).collect();
    c.new_events.push(HistoryEvent {
        index: 0,
        timestamp: T0,
        event: Event::OrchestratorStarted,
    });
    c
}

/// A fresh hub on `url` with an instance per name, all leased: the store and the work
/// items, by id.
async fn hub_with(url: &str, names: &[&str]) -> (PostgresStore, Vec<OrchestrationWorkItem>) {
    let hub = format!("durable_test_{}", &InstanceId::random().as_str()[..16]);
    let store = PostgresStore::connect(url, PostgresOptions::new(&hub))
        .await
        .expect("connect");
    for name in names {
        let id = InstanceId::new(*name).expect("id");
        store
            .create_instance(NewInstance::new(id, "X", "null".into(), T0))
            .await
            .expect("create");
    }
    let mut items = store
        .fetch_orchestration_batch(T0, Duration::from_secs(3600), names.len())
        .await
        .expect("fetch");
    items.sort_by(|x, y| x.instance.instance_id.cmp(&y.instance.instance_id));
    (store, items)
}

/// A batch's leader whose caller goes away mid-batch (its worker aborted) does not
/// cancel the batch: the other episodes in it are committed and answered. A queued
/// commit whose caller is gone before its batch starts is not written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_leader_does_not_cancel_its_batch() {
    let Some(url) = test_url() else { return };
    let (store, items) = hub_with(&url, &["a", "b", "c", "d"]).await;
    let hub = store.inner.hub.clone();
    let [a, b, c, d] = &items[..] else {
        panic!("four instances leased: {items:?}")
    };
    // Another connection holds a's row, so the batch waits in its lock statement.
    let (holder, connection) = tokio_postgres::connect(&url, NoTls).await.expect("connect");
    let driver = tokio::spawn(connection);
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM \"{hub}\".instances WHERE id = 'a' FOR UPDATE"
        ))
        .await
        .expect("lock a");
    // b's commit is queued, as by another episode while a's caller took the lead.
    let (reply, b_answer) = oneshot::channel();
    lock(&store.inner.commits).queue.push_back(PendingCommit {
        commit: first_commit(b),
        eager: None,
        reply,
    });
    let leader = tokio::spawn({
        let store = store.clone();
        let commit = first_commit(a);
        async move { store.commit_episode(commit).await }
    });
    // Until the batch (b and a) waits for a's row.
    let waiting = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
         AND query LIKE '%\"{hub}\".instances%'"
    );
    let mut polls = 0;
    loop {
        // Inside the holder's transaction the activity view is a snapshot: drop it.
        holder
            .batch_execute("SELECT pg_stat_clear_snapshot()")
            .await
            .expect("clear the stats snapshot");
        let row = holder
            .query_one(&waiting, &[])
            .await
            .expect("pg_stat_activity");
        if row.get::<_, i64>(0) > 0 {
            break;
        }
        polls += 1;
        assert!(polls < 2000, "the batch never reached the database");
        pause(Duration::from_millis(5)).await;
    }
    leader.abort();
    assert!(leader.await.expect_err("aborted").is_cancelled());
    holder.batch_execute("ROLLBACK").await.expect("release a");
    assert!(
        matches!(b_answer.await.expect("b is answered"), Ok(None)),
        "b's commit went through"
    );
    for id in ["a", "b"] {
        let history = store
            .read_history(&InstanceId::new(id).expect("id"))
            .await
            .expect("history");
        assert_eq!(history.len(), 1, "{id}'s episode was committed");
    }

    // c's caller is gone before its batch: nothing of it is written.
    let (reply, gone) = oneshot::channel();
    drop(gone);
    lock(&store.inner.commits).queue.push_back(PendingCommit {
        commit: first_commit(c),
        eager: None,
        reply,
    });
    store
        .commit_episode(first_commit(d))
        .await
        .expect("commit d");
    let c_history = store
        .read_history(&InstanceId::new("c").expect("id"))
        .await
        .expect("history");
    assert!(c_history.is_empty(), "c was not written: {c_history:?}");
    assert!(
        lock(&store.inner.commits).queue.is_empty(),
        "c is no longer queued"
    );
    drop(holder);
    let _ = driver.await;
    store.drop_task_hub().await.expect("drop the hub");
}

/// In one batch of episode commits, a task asked to be leased to its committer is leased
/// when nothing queued before it is due — and not when another episode of the batch
/// queued a task before it; each caller is answered its own task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_leases_eager_tasks_in_order() {
    let Some(url) = test_url() else { return };
    let (store, items) = hub_with(&url, &["a", "b", "c"]).await;
    let lease = Duration::from_secs(60);
    let mut answers = Vec::new();
    let mut batch = Vec::new();
    for (item, eager) in items.iter().zip([true, false, true]) {
        let mut c = first_commit(item);
        let id = item.instance.instance_id.clone();
        c.activities.push(ActivityTask::new(
            id.clone(),
            1,
            0,
            id.as_str(),
            "null".into(),
        ));
        let (reply, answer) = oneshot::channel();
        answers.push(answer);
        batch.push(PendingCommit {
            commit: c,
            eager: eager.then(|| EagerAsk {
                task: 0,
                token: new_token(),
                now: ts(T0),
                until: ts(T0 + lease),
                keep_until: None,
            }),
            reply,
        });
    }
    store.run_batch(batch).await;
    let mut leased = Vec::new();
    for answer in answers {
        leased.push(answer.await.expect("answered").expect("committed"));
    }
    let a = leased[0]
        .as_ref()
        .expect("a's task is leased: nothing was due");
    assert_eq!(a.task.name, "a", "a is answered its own task");
    assert!(leased[1].is_none(), "b asked for nothing");
    assert!(
        leased[2].is_none(),
        "b's task, queued before c's, is due: c's is queued"
    );
    let fetched = store
        .fetch_activity_work(T0, lease, 10)
        .await
        .expect("fetch activities");
    let names: Vec<&str> = fetched.iter().map(|w| w.task.name.as_str()).collect();
    assert_eq!(names, ["b", "c"], "a's leased task is not fetched");
    store
        .renew_activity_lock(a.id, a.lock, T0 + lease)
        .await
        .expect("a holds its task");
    store.drop_task_hub().await.expect("drop the hub");
}

/// An episode that asks to keep its instance leased gets no task (and keeps no lease) when
/// another episode of the same batch sends its instance a message that is due: the kept
/// lease would hold that message back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_from_the_same_batch_keeps_no_lease() {
    let Some(url) = test_url() else { return };
    let (store, items) = hub_with(&url, &["x", "y"]).await;
    let lease = Duration::from_secs(60);
    let y = items[1].instance.instance_id.clone();
    let mut answers = Vec::new();
    let mut batch = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let mut c = first_commit(item);
        let id = item.instance.instance_id.clone();
        let eager = if i == 0 {
            let go = Event::EventRaised {
                name: "go".to_owned(),
                input: "null".to_owned(),
            };
            c.messages.push((y.clone(), Message::new(go, None, T0)));
            None
        } else {
            c.activities
                .push(ActivityTask::new(id, 1, 0, "task", "null".into()));
            Some(EagerAsk {
                task: 0,
                token: new_token(),
                now: ts(T0),
                until: ts(T0 + lease),
                keep_until: Some(ts(T0 + lease)),
            })
        };
        let (reply, answer) = oneshot::channel();
        answers.push(answer);
        batch.push(PendingCommit {
            commit: c,
            eager,
            reply,
        });
    }
    store.run_batch(batch).await;
    for answer in answers {
        assert!(
            answer
                .await
                .expect("answered")
                .expect("committed")
                .is_none(),
            "no task leased"
        );
    }
    let next = store
        .fetch_instances_work(std::slice::from_ref(&y), T0, lease)
        .await
        .expect("fetch y");
    assert_eq!(next.len(), 1, "y was released");
    assert_eq!(next[0].messages.len(), 1, "with x's message");
    store.drop_task_hub().await.expect("drop the hub");
}

#[test]
fn hub_names() {
    for ok in ["durable", "Orders_2", "_x", &"h".repeat(MAX_HUB_LEN)] {
        assert!(validate_hub(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        "1abc",
        "pg_hub",
        "a-b",
        "a b",
        "a\"b",
        &"h".repeat(MAX_HUB_LEN + 1),
    ] {
        let err = validate_hub(bad).unwrap_err();
        assert!(err.to_string().contains("invalid task hub name"), "{err}");
    }
}

#[tokio::test]
async fn bad_url_is_a_clear_error() {
    let err = PostgresStore::connect("postgres://[::1", PostgresOptions::default())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("invalid PostgreSQL connection string"),
        "{err}"
    );
}

#[tokio::test]
async fn unreachable_server_is_a_clear_error() {
    // Port 1 on loopback: nothing listens there.
    let err = PostgresStore::connect(
        "postgres://postgres@127.0.0.1:1/none",
        PostgresOptions::default().connect_timeout(Duration::from_secs(2)),
    )
    .await
    .unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    assert!(msg.contains("cannot connect to PostgreSQL"), "{msg}");
    // The driver's error, and the OS error under it, stay reachable.
    let driver = std::error::Error::source(&err)
        .and_then(|s| s.downcast_ref::<tokio_postgres::Error>())
        .expect("the tokio-postgres error is the source");
    let mut chain = std::error::Error::source(driver);
    let mut refused = false;
    while let Some(e) = chain {
        refused |= e
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused);
        chain = e.source();
    }
    assert!(refused, "the connection refusal is in the chain: {err:?}");
    // A client error carries it on.
    let client = crate::ClientError::from(err);
    assert!(
        std::error::Error::source(&client)
            .unwrap()
            .is::<tokio_postgres::Error>(),
        "{client:?}"
    );
}
