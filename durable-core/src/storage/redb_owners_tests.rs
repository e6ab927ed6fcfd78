//! The in-memory index of each instance's queued activity tasks ([`ActivityOwners`]): purge
//! and replace find every task through it, within one group commit, after a failed batch,
//! after a restart, and in a file migrated from format version 1.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, TableHandle};
use tokio::sync::oneshot;

use super::{
    ACTIVITIES, FORMAT_VERSION, FORMAT_VERSION_KEY, META, Outcome, RedbStore, Request,
    V1_ACTIVITY_OWNERS, WriteOp, commit_batch, decode, ts,
};
use crate::error::StoreError;
use crate::history::{Event, RuntimeStatus};
use crate::ids::{InstanceId, Timestamp};
use crate::storage::{ActivityTask, EpisodeCommit, IdReusePolicy, Message, NewInstance, Store};

const T0: Timestamp = Timestamp::from_unix_millis(1_000_000);
const LEASE: Duration = Duration::from_secs(60);

/// Creates `name` and leases it at `T0`: its id and work item.
async fn created_and_leased(
    store: &RedbStore,
    name: &str,
) -> (InstanceId, crate::storage::OrchestrationWorkItem) {
    let id = InstanceId::new(name).unwrap();
    store
        .create_instance(NewInstance::new(id.clone(), "Job", "null".into(), T0))
        .await
        .unwrap();
    let item = store
        .fetch_instances_work(std::slice::from_ref(&id), T0, LEASE)
        .await
        .unwrap()
        .pop()
        .unwrap();
    (id, item)
}

/// Starts `name` and commits its first episode, which schedules `tasks` activities at `T0`.
async fn start_with_tasks(store: &RedbStore, name: &str, tasks: u64) -> InstanceId {
    let (id, item) = created_and_leased(store, name).await;
    store
        .commit_episode(scheduling(&id, item.lock, &item.messages, tasks))
        .await
        .unwrap();
    id
}

/// An episode of `id` that consumes `messages` and schedules `tasks` activities at `T0`.
fn scheduling(
    id: &InstanceId,
    lock: crate::storage::LockToken,
    messages: &[Message],
    tasks: u64,
) -> EpisodeCommit {
    let mut c = EpisodeCommit::new(id.clone(), lock, RuntimeStatus::Running, T0);
    c.consumed = messages.iter().map(|m| m.id).collect();
    for seq in 0..tasks {
        c.activities
            .push(ActivityTask::new(id.clone(), 1, seq, "work", "null".into()));
    }
    c
}

/// The file's activity queue, leased tasks included, as the index keys it:
/// (instance id, task id) → visible at.
fn queue_in_file(store: &RedbStore) -> BTreeMap<(String, u64), u64> {
    let txn = store.inner.core.db.begin_read().unwrap();
    let table = txn.open_table(ACTIVITIES).unwrap();
    table
        .iter()
        .unwrap()
        .map(|e| {
            let (k, v) = e.unwrap();
            let (visible_at, task) = k.value();
            let owner = decode::<ActivityTask>(v.value()).unwrap().instance_id;
            ((owner.to_string(), task), visible_at)
        })
        .collect()
}

/// The owner of each task in the file's queue, sorted; checks the index agrees.
fn queued_owners(store: &RedbStore) -> Vec<String> {
    let queue = queue_in_file(store);
    let index = store
        .inline(|core| Ok(core.leases().owners.tasks.clone()))
        .unwrap();
    assert_eq!(index, queue, "the index is the file's queue");
    queue.into_keys().map(|(owner, _)| owner).collect()
}

/// Applies `ops` in one group commit; returns each caller's answer.
fn one_batch(store: &RedbStore, ops: Vec<WriteOp>) -> Vec<Result<Outcome, StoreError>> {
    let (batch, answers): (Vec<_>, Vec<_>) = ops
        .into_iter()
        .map(|op| {
            let (reply, rx) = oneshot::channel();
            (Request { op, reply }, rx)
        })
        .unzip();
    let turn = store.inner.core.committing.lock().unwrap();
    assert!(commit_batch(&store.inner.core, turn, batch));
    answers
        .into_iter()
        .map(|mut rx| rx.try_recv().expect("every caller is answered"))
        .collect()
}

/// Purging one instance and replacing another remove their queued and leased tasks, and
/// only theirs; also when the index was rebuilt from the file at open.
#[tokio::test]
async fn purge_and_replace_remove_queued_and_leased_tasks() {
    for reopen in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let mut store = RedbStore::open(&path).unwrap();
        let purged = start_with_tasks(&store, "p", 2).await;
        let replaced = start_with_tasks(&store, "r", 2).await;
        start_with_tasks(&store, "k", 2).await;
        if reopen {
            drop(store);
            store = RedbStore::open(&path).unwrap();
        }
        assert_eq!(queued_owners(&store), ["k", "k", "p", "p", "r", "r"]);

        // Lease every task, then give one of p's and one of r's back: each has one task
        // leased and one queued.
        let tasks = store.fetch_activity_work(T0, LEASE, 10).await.unwrap();
        assert_eq!(tasks.len(), 6);
        for id in [&purged, &replaced] {
            let t = tasks.iter().find(|t| &t.task.instance_id == id).unwrap();
            store.abandon_activity(t.id, t.lock, T0).await.unwrap();
        }

        assert!(store.purge_instance(&purged).await.unwrap());
        let mut again = NewInstance::new(replaced.clone(), "Job", "null".into(), T0);
        again.reuse = IdReusePolicy::TerminateRunning;
        store.create_instance(again).await.unwrap();
        assert_eq!(queued_owners(&store), ["k", "k"], "reopen: {reopen}");

        // The leases went with the tasks: a late result is refused.
        for t in tasks.iter().filter(|t| t.task.instance_id.as_str() != "k") {
            let result = Message::new(Event::OrchestratorStarted, Some(1), T0);
            assert!(
                matches!(
                    store.complete_activity(t.id, t.lock, result).await,
                    Err(StoreError::LockLost(_))
                ),
                "reopen: {reopen}"
            );
        }
        let later = store
            .fetch_activity_work(T0 + LEASE * 2, LEASE, 10)
            .await
            .unwrap();
        assert_eq!(later.len(), 2, "only k's tasks are left, reopen: {reopen}");
        assert!(later.iter().all(|t| t.task.instance_id.as_str() == "k"));
    }
}

/// A purge sees the task an earlier operation of the same group commit scheduled.
#[tokio::test]
async fn a_purge_removes_a_task_scheduled_earlier_in_its_batch() {
    let store = RedbStore::in_memory().unwrap();
    let id = InstanceId::new("i").unwrap();
    store
        .create_instance(NewInstance::new(id.clone(), "Job", "null".into(), T0))
        .await
        .unwrap();
    let item = store
        .fetch_orchestration_work(T0, LEASE)
        .await
        .unwrap()
        .unwrap();
    let commit = scheduling(&id, item.lock, &item.messages, 1);
    let answers = one_batch(
        &store,
        vec![
            WriteOp::Commit {
                commit: Box::new(commit),
                eager: None,
            },
            WriteOp::Purge(id),
        ],
    );
    assert!(matches!(answers[0], Ok(Outcome::Committed(None))));
    assert!(matches!(answers[1], Ok(Outcome::Purged(true))));
    assert_eq!(queued_owners(&store), Vec::<String>::new());
    assert!(
        store
            .fetch_activity_work(T0, LEASE, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Runs `ops` in one batch with a heartbeat on a queued task of instance `spoiled` whose
/// JSON is spoiled meanwhile, so the heartbeat fails to decode it: a storage failure, which
/// fails the whole batch (asserted). The task is restored afterwards.
async fn fail_a_batch(store: &RedbStore, spoiled: &InstanceId, mut ops: Vec<WriteOp>) {
    let tasks = store.fetch_activity_work(T0, LEASE, 10).await.unwrap();
    let task = tasks
        .iter()
        .find(|t| t.task.instance_id == *spoiled)
        .unwrap();
    let key = (ts(T0), task.id);
    let original = write_task(store, key, b"not json");
    ops.push(WriteOp::Heartbeat {
        id: task.id,
        lock: task.lock,
        details: "null".into(),
        until: T0 + LEASE,
    });
    let answers = one_batch(store, ops);
    assert!(
        answers
            .iter()
            .all(|a| matches!(a, Err(StoreError::Backend(_))))
    );
    write_task(store, key, &original);
}

/// A batch that fails leaves the index as it was: a purge in it is undone with the rest,
/// and the instance's task is still found by the next purge.
#[tokio::test]
async fn a_failed_batch_leaves_the_index_as_it_was() {
    let store = RedbStore::in_memory().unwrap();
    let purged = start_with_tasks(&store, "p", 1).await;
    let spoiled = start_with_tasks(&store, "s", 1).await;
    fail_a_batch(&store, &spoiled, vec![WriteOp::Purge(purged.clone())]).await;

    assert_eq!(queued_owners(&store), ["p", "s"], "nothing was purged");
    assert!(store.purge_instance(&purged).await.unwrap());
    assert_eq!(queued_owners(&store), ["s"]);
}

/// A leased create in a batch that fails takes no lease: the id stays free, and a later
/// leased create of it succeeds.
#[tokio::test]
async fn a_failed_batch_drops_the_lease_of_a_leased_create() {
    let store = RedbStore::in_memory().unwrap();
    let spoiled = start_with_tasks(&store, "s", 1).await;
    let new = NewInstance::new(InstanceId::new("n").unwrap(), "N", "null".into(), T0);
    let create = WriteOp::CreateLeased {
        new: new.clone(),
        until: T0 + LEASE,
    };
    fail_a_batch(&store, &spoiled, vec![create]).await;

    assert_eq!(store.read_instance(&new.instance_id).await.unwrap(), None);
    let item = store.create_leased(new, T0, LEASE).await.unwrap();
    assert!(item.is_some(), "no lease was left behind on the id");
}

/// A task leased to its committer (eager dispatch) in a batch that fails leaves no lease
/// behind on an id that was never written; the commit, tried again, leases its task.
#[tokio::test]
async fn a_failed_batch_drops_an_eager_lease() {
    let store = RedbStore::in_memory().unwrap();
    let spoiled = start_with_tasks(&store, "s", 1).await;
    let (id, item) = created_and_leased(&store, "e").await;
    let commit = || scheduling(&id, item.lock, &item.messages, 1);
    let eager = WriteOp::Commit {
        commit: Box::new(commit()),
        eager: Some((0, T0, LEASE)),
    };
    fail_a_batch(&store, &spoiled, vec![eager]).await;

    let owners = |store: &RedbStore| -> Vec<String> {
        let leases = store.inner.core.leases();
        let mut v: Vec<String> = leases
            .activity
            .values()
            .map(|l| l.instance_id.clone())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        owners(&store),
        ["s"],
        "only the spoiled batch's fetch holds a task"
    );
    assert_eq!(queued_owners(&store), ["s"], "nothing was written");
    let leased = store
        .commit_episode_eager(commit(), 0, T0, LEASE)
        .await
        .unwrap()
        .expect("the task is leased");
    assert_eq!(owners(&store), ["e", "s"]);
    assert_eq!(queued_owners(&store), ["e", "s"]);
    assert!(
        store
            .fetch_activity_work(T0, LEASE, 10)
            .await
            .unwrap()
            .is_empty(),
        "the leased task is not handed out"
    );
    store
        .renew_activity_lock(leased.id, leased.lock, T0 + LEASE)
        .await
        .expect("held by the committer");
}

/// A version-1 file, which kept the index in an `activity_owners` table, opens: the table
/// is deleted, the version becomes 2, and its queued tasks still go with their instance.
#[tokio::test]
async fn a_version_1_file_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let purged = {
        let store = RedbStore::open(&path).unwrap();
        start_with_tasks(&store, "k", 1).await;
        start_with_tasks(&store, "p", 2).await
    };
    make_version_1(&path);

    let store = RedbStore::open(&path).unwrap();
    assert_eq!(queued_owners(&store), ["k", "p", "p"]);
    assert!(store.purge_instance(&purged).await.unwrap());
    assert_eq!(queued_owners(&store), ["k"]);
    drop(store);

    let db = Database::open(&path).unwrap();
    let txn = db.begin_read().unwrap();
    let version = txn
        .open_table(META)
        .unwrap()
        .get(FORMAT_VERSION_KEY)
        .unwrap()
        .map(|v| v.value());
    assert_eq!(version, Some(FORMAT_VERSION));
    assert_eq!(FORMAT_VERSION, 2);
    let tables: Vec<String> = txn
        .list_tables()
        .unwrap()
        .map(|t| t.name().to_owned())
        .collect();
    assert!(!tables.iter().any(|t| t == "activity_owners"), "{tables:?}");
}

/// Rewrites the closed store at `path` as format version 1 wrote it: version 1, and an
/// `activity_owners` row for each queued task.
fn make_version_1(path: &Path) {
    let db = Database::open(path).unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(META)
        .unwrap()
        .insert(FORMAT_VERSION_KEY, 1)
        .unwrap();
    {
        let activities = txn.open_table(ACTIVITIES).unwrap();
        let mut owners = txn.open_table(V1_ACTIVITY_OWNERS).unwrap();
        for e in activities.iter().unwrap() {
            let (k, v) = e.unwrap();
            let (visible_at, task) = k.value();
            let owner = decode::<ActivityTask>(v.value()).unwrap().instance_id;
            owners.insert((owner.as_str(), task), visible_at).unwrap();
        }
    }
    txn.commit().unwrap();
}

/// Replaces the stored JSON of the task at `key` in `activities` (to make a batch fail on
/// it, or to restore it); returns what was there.
fn write_task(store: &RedbStore, key: (u64, u64), bytes: &[u8]) -> Vec<u8> {
    let txn = store.inner.core.db.begin_write().unwrap();
    let before = txn
        .open_table(ACTIVITIES)
        .unwrap()
        .insert(key, bytes)
        .unwrap()
        .unwrap()
        .value()
        .to_vec();
    txn.commit().unwrap();
    before
}

/// A batch whose ids pass the bound and that then fails writes no bound; the next
/// committed batch writes one above every id handed out, and a restart starts above them.
#[tokio::test]
async fn a_failed_batch_past_the_bound_never_lets_ids_be_reused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let store = RedbStore::open(&path).unwrap();
    start_with_tasks(&store, "s", 1).await;
    let task = store
        .fetch_activity_work(T0, LEASE, 10)
        .await
        .unwrap()
        .remove(0);
    // The counter just under the bound the file holds: the next ids pass it.
    let bound_before = super::tests::meta_next_id(&store);
    {
        let mut l = store.inner.core.leases();
        assert_eq!(l.id_bound, bound_before);
        l.next_id = bound_before - 1;
    }
    let key = (ts(T0), task.id);
    let original = write_task(&store, key, b"not json");
    let create = WriteOp::Create(NewInstance::new(
        InstanceId::new("n").unwrap(),
        "Job",
        "null".into(),
        T0,
    ));
    let heartbeat = WriteOp::Heartbeat {
        id: task.id,
        lock: task.lock,
        details: "null".into(),
        until: T0 + LEASE,
    };
    let answers = one_batch(&store, vec![create, heartbeat]);
    assert!(
        answers
            .iter()
            .all(|a| matches!(a, Err(StoreError::Backend(_))))
    );
    write_task(&store, key, &original);
    assert_eq!(
        super::tests::meta_next_id(&store),
        bound_before,
        "a failed batch writes no bound"
    );
    let used = store.inner.core.leases().next_id;
    store
        .create_instance(NewInstance::new(
            InstanceId::new("m").unwrap(),
            "Job",
            "null".into(),
            T0,
        ))
        .await
        .unwrap();
    let next = store.inner.core.leases().next_id;
    assert!(next > used);
    let bound = super::tests::meta_next_id(&store);
    assert!(bound >= next, "bound {bound}, counter {next}");
    drop(store);
    let store = RedbStore::open(&path).unwrap();
    assert!(store.inner.core.leases().next_id >= next);
}
