//! The store conformance suite (`durable_core::storage::conformance`) against every store:
//! `MemoryStore`, `RedbStore` on a file and `RedbStore` in memory; plus what only a file
//! store has (re-open, locking, corrupt files).

use std::sync::Arc;
use std::time::Duration;

use durable_core::storage::{RedbDurability, conformance};
use durable_core::{InstanceId, MemoryStore, RedbStore, Store, Timestamp};
use tempfile::TempDir;

/// A store plus whatever must outlive it (the temp dir of a file store).
struct Fixture {
    store: Arc<dyn Store>,
    _dir: Option<TempDir>,
}

fn memory() -> Fixture {
    Fixture {
        store: Arc::new(MemoryStore::new()),
        _dir: None,
    }
}

fn redb_in_memory() -> Fixture {
    Fixture {
        store: Arc::new(RedbStore::in_memory().expect("in-memory redb store")),
        _dir: None,
    }
}

fn redb_file() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = RedbStore::open(dir.path().join("store.redb")).expect("file redb store");
    Fixture {
        store: Arc::new(store),
        _dir: Some(dir),
    }
}

fn redb_relaxed() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = RedbStore::builder()
        .durability(RedbDurability::Relaxed)
        .open(dir.path().join("store.redb"))
        .expect("relaxed redb store");
    Fixture {
        store: Arc::new(store),
        _dir: Some(dir),
    }
}

/// One `#[tokio::test]` per conformance case, so a failure names its case and store.
macro_rules! conformance_tests {
    ($make:path) => {
        conformance_tests!(@cases $make;
            create_and_fetch,
            scheduled_start,
            id_reuse_replace_finished,
            id_reuse_reject_existing,
            id_reuse_dedupe_running,
            commit_applies_everything,
            sub_orchestration_refused_when_child_running,
            sub_orchestration_with_parents_id_is_refused,
            continue_as_new,
            message_order,
            lease_excludes_and_expires,
            activity_lease_expiry_requeues,
            complete_activity_enqueues_result,
            abandon_activity_delays_task,
            abandon_episode_delays_messages,
            next_wake_time,
            send_message_errors,
            query_filters,
            query_paging,
            purge_removes_everything,
            signals,
            concurrent_writes,
        );
    };
    (@cases $make:path; $($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let fixture = $make();
            durable_core::storage::conformance::$case(Arc::clone(&fixture.store)).await;
        }
    )*};
}

mod memory_store {
    use super::*;
    conformance_tests!(memory);
}

mod redb_file_store {
    use super::*;
    conformance_tests!(redb_file);
}

mod redb_in_memory_store {
    use super::*;
    conformance_tests!(redb_in_memory);
}

mod redb_relaxed_store {
    use super::*;
    conformance_tests!(redb_relaxed);
}

/// `run_all` runs every case (the entry point for stores outside this crate).
#[tokio::test]
async fn run_all_against_memory() {
    conformance::run_all(|| Arc::new(MemoryStore::new())).await;
}

mod redb_file {
    use durable_core::storage::{EpisodeCommit, Message, NewInstance};
    use durable_core::{Event, RuntimeStatus};

    use super::*;

    const T0: Timestamp = Timestamp::from_unix_millis(1_700_000_000_000);
    const LOCK: Duration = Duration::from_secs(3600);

    fn id(s: &str) -> InstanceId {
        InstanceId::new(s).unwrap()
    }

    /// Everything committed survives a re-open; leases do not.
    #[tokio::test]
    async fn reopen_keeps_data_and_releases_leases() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let (seq_before, history_before) = {
            let store = RedbStore::open(&path).unwrap();
            store
                .create_instance(NewInstance::new(id("a"), "Job", "1".into(), T0))
                .await
                .unwrap();
            store
                .create_instance(NewInstance::new(id("b"), "Job", "2".into(), T0))
                .await
                .unwrap();
            let item = store
                .fetch_orchestration_work(T0, LOCK)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(item.instance.instance_id.as_str(), "a");
            let mut c = EpisodeCommit::new(id("a"), item.lock, RuntimeStatus::Running, T0);
            c.consumed = item.messages.iter().map(|m| m.id).collect();
            c.new_events = vec![durable_core::HistoryEvent {
                index: 0,
                timestamp: T0,
                event: Event::OrchestratorStarted,
            }];
            store.commit_episode(c).await.unwrap();
            store
                .send_message(
                    &id("a"),
                    Message::new(
                        Event::EventRaised {
                            name: "x".into(),
                            input: "null".into(),
                        },
                        None,
                        T0,
                    ),
                )
                .await
                .unwrap();
            // Lock both; the leases must not survive the re-open.
            let a = store
                .fetch_orchestration_work(T0, LOCK)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(a.instance.instance_id.as_str(), "a");
            let b = store
                .fetch_orchestration_work(T0, LOCK)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(b.instance.instance_id.as_str(), "b");
            (
                a.messages[0].id.seq,
                store.read_history(&id("a")).await.unwrap(),
            )
        };

        let store = RedbStore::open(&path).unwrap();
        let a = store.read_instance(&id("a")).await.unwrap().unwrap();
        assert_eq!((a.status, a.input.as_str()), (RuntimeStatus::Running, "1"));
        assert_eq!(store.read_history(&id("a")).await.unwrap(), history_before);
        let mut fetched = Vec::new();
        while let Some(item) = store.fetch_orchestration_work(T0, LOCK).await.unwrap() {
            fetched.push((item.instance.instance_id.as_str().to_owned(), item.messages));
        }
        fetched.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(fetched.len(), 2, "both leases were released by the restart");
        assert_eq!(fetched[0].1.len(), 1);
        assert_eq!(fetched[0].1[0].id.seq, seq_before);
        // New ids keep counting up after a re-open.
        store
            .send_message(
                &id("a"),
                Message::new(
                    Event::EventRaised {
                        name: "y".into(),
                        input: "null".into(),
                    },
                    None,
                    T0,
                ),
            )
            .await
            .unwrap();
        drop(store);
        let store = RedbStore::open(&path).unwrap();
        let item = store
            .fetch_orchestration_work(T0, LOCK)
            .await
            .unwrap()
            .unwrap();
        let seqs: Vec<u64> = item.messages.iter().map(|m| m.id.seq).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "seqs grow across re-opens: {seqs:?}"
        );
    }

    /// A relaxed store's commits are made durable by a clean close.
    #[tokio::test]
    async fn relaxed_commits_survive_clean_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        {
            let store = RedbStore::builder()
                .durability(RedbDurability::Relaxed)
                .open(&path)
                .unwrap();
            store
                .create_instance(NewInstance::new(id("a"), "Job", "1".into(), T0))
                .await
                .unwrap();
        }
        let store = RedbStore::open(&path).unwrap();
        assert!(store.read_instance(&id("a")).await.unwrap().is_some());
    }

    /// A file that is already open is a clear error, not a panic.
    #[tokio::test]
    async fn second_open_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let _first = RedbStore::open(&path).unwrap();
        let err = RedbStore::open(&path).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("already open"), "{msg}");
    }

    /// A file that is not a redb database is a clear error.
    #[tokio::test]
    async fn garbage_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        std::fs::write(&path, vec![0xAB; 64 * 1024]).unwrap();
        let err = RedbStore::open(&path).unwrap_err();
        assert!(
            matches!(err, durable_core::StoreError::Backend(_)),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("store.redb"),
            "names the file: {err}"
        );
    }

    /// A path that cannot be created is a clear error.
    #[tokio::test]
    async fn missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = RedbStore::open(dir.path().join("no/such/dir/store.redb")).unwrap_err();
        assert!(
            matches!(err, durable_core::StoreError::Backend(_)),
            "{err:?}"
        );
    }
}

/// The real engine on a file-backed `RedbStore`: a fan-out, then a re-open.
mod engine_on_redb {
    use durable_core::prelude::*;

    use super::*;

    #[activity]
    async fn square(i: u64) -> Result<u64, ActivityError> {
        Ok(i * i)
    }

    #[orchestrator]
    async fn sum_squares(ctx: OrchestrationContext, n: u64) -> Result<u64, OrchestrationError> {
        let results = ctx.when_all((0..n).map(|i| ctx.call(square, i))).await;
        let mut sum = 0;
        for r in results {
            sum += r?;
        }
        Ok(sum)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fan_out_completes_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let store = RedbStore::open(&path).unwrap();
        let worker = Worker::builder()
            .register(square)
            .register(sum_squares)
            .store(store.clone())
            .start()
            .unwrap();
        let client = worker.client();
        let run = sum_squares::start(&client, 200).await.unwrap();
        let id = run.id().clone();
        let sum = tokio::time::timeout(Duration::from_secs(60), run.wait())
            .await
            .expect("the fan-out finishes")
            .unwrap();
        assert_eq!(sum, (0..200u64).map(|i| i * i).sum::<u64>());
        worker.shutdown().await;
        // Every clone of the store (the handle holds a client) must go before a re-open.
        drop((run, client, store));

        let store = RedbStore::open(&path).unwrap();
        let r = store.read_instance(&id).await.unwrap().unwrap();
        assert_eq!(r.status, RuntimeStatus::Completed);
        let history = store.read_history(&id).await.unwrap();
        let completed = history
            .iter()
            .filter(|e| e.event.kind() == "TaskCompleted")
            .count();
        assert_eq!(completed, 200);
    }
}
