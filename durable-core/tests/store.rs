//! The store conformance suite (`durable_core::storage::conformance`) against every store:
//! `MemoryStore`, `RedbStore` on a file and `RedbStore` in memory, and `PostgresStore` when
//! `DURABLE_TEST_POSTGRES_URL` names a database (each case on a fresh task hub); plus what
//! only a file store has (re-open, locking, corrupt files) and what only Postgres has
//! (schema versions, concurrent starts, permissions, fencing and wake-ups across stores).

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
/// `conformance_tests!(async make)` takes an async fixture maker returning `Option`
/// (`None`: skipped) with an async `cleanup`.
macro_rules! conformance_tests {
    (async $make:path) => {
        conformance_tests!(@list async_cases $make);
    };
    ($make:path) => {
        conformance_tests!(@list cases $make);
    };
    (@list $arm:ident $make:path) => {
        conformance_tests!($arm $make;
            create_and_fetch,
            scheduled_start,
            id_reuse_replace_finished,
            id_reuse_reject_existing,
            id_reuse_dedupe_running,
            id_reuse_terminate_running,
            suspend_and_resume_follow_the_state,
            commit_records_last_error,
            commit_applies_everything,
            sub_orchestration_refused_when_child_running,
            sub_orchestration_with_parents_id_is_refused,
            continue_as_new,
            message_order,
            lease_excludes_and_expires,
            concurrent_commits_keep_their_own_outcomes,
            activity_lease_expiry_requeues,
            complete_activity_enqueues_result,
            abandon_activity_delays_task,
            renew_activity_lock_extends_the_lease,
            renew_activity_locks_extends_those_held,
            activity_task_fields_round_trip,
            trace_contexts_round_trip,
            heartbeat_timeout_caps_the_lease,
            heartbeat_details_survive_the_lease,
            abandon_episode_delays_messages,
            abandon_episode_keeps_arrival_order,
            a_terminate_ends_the_hold,
            next_wake_time,
            queue_depths,
            send_message_errors,
            query_filters,
            query_paging,
            query_newest_first,
            count_instances,
            purge_removes_everything,
            purge_finished_only_purges_what_has_finished,
            signals,
            concurrent_writes,
            create_started_applies_the_first_episode,
            create_started_declines_a_taken_id,
            create_started_with_children,
            create_leased_leases_the_new_instance,
            commit_episode_eager_leases_one_new_task,
            commit_episode_eager_keeps_the_instance_leased,
            a_step_that_only_appends_events_is_the_last_update,
            next_wake_time_for_after_fetch,
            a_step_does_not_bump_finished,
        );
    };
    (cases $make:path; $($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let fixture = $make();
            durable_core::storage::conformance::$case(Arc::clone(&fixture.store)).await;
        }
    )*};
    (async_cases $make:path; $($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let Some(fixture) = $make().await else {
                return;
            };
            durable_core::storage::conformance::$case(Arc::clone(&fixture.store)).await;
            fixture.cleanup().await;
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

/// The fan-out the engine tests run on real stores.
mod workload {
    use durable_core::prelude::*;

    #[activity]
    pub(crate) async fn square(i: u64) -> Result<u64, ActivityError> {
        Ok(i * i)
    }

    #[orchestrator]
    pub(crate) async fn sum_squares(
        ctx: OrchestrationContext,
        n: u64,
    ) -> Result<u64, OrchestrationError> {
        let results = ctx.when_all((0..n).map(|i| ctx.call(square, i))).await;
        let mut sum = 0;
        for r in results {
            sum += r?;
        }
        Ok(sum)
    }
}

/// The real engine on a file-backed `RedbStore`: a fan-out, then a re-open.
mod engine_on_redb {
    use durable_core::prelude::*;

    use super::workload::{square, sum_squares};
    use super::*;

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

/// Issue 12, item 13: a finished activity whose result waits in the worker's memory for its
/// orchestration's next episode keeps its lease until the result is committed, so it is never
/// taken over and run again while the worker is healthy — on every store that supports the
/// hand-off. Deterministic: a manual clock, and a store wrapper that holds the hand-off
/// (the lease of the instance, or the commit of the episode) while the clock moves past
/// several activity leases.
mod handoff_lease {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use async_trait::async_trait;
    use durable_core::history::HistoryEvent;
    use durable_core::prelude::*;
    use durable_core::storage::{
        ActivityWorkItem, CreateResult, EpisodeCommit, InstancePage, LockToken, Message,
        NewInstance, OrchestrationWorkItem, StoreSignals, WorkKind,
    };
    use durable_core::worker::WorkerOptions;
    use durable_core::{Clock as _, Event, InstanceQuery, InstanceRecord, StoreError};
    use durable_testing::ManualClock;
    use tokio::sync::watch;

    use super::*;

    /// Executions per (instance, action seq), over every test in this binary.
    pub(crate) static RUNS: Mutex<BTreeMap<(String, u64), usize>> = Mutex::new(BTreeMap::new());

    pub(crate) fn runs_of(instance: &InstanceId) -> Vec<usize> {
        RUNS.lock()
            .unwrap()
            .iter()
            .filter(|((i, _), _)| i == instance.as_str())
            .map(|(_, n)| *n)
            .collect()
    }

    #[activity]
    pub(crate) async fn counted(ctx: ActivityContext, i: u64) -> Result<u64, ActivityError> {
        *RUNS
            .lock()
            .unwrap()
            .entry((ctx.instance_id.as_str().to_owned(), ctx.seq))
            .or_default() += 1;
        Ok(i * 10)
    }

    #[orchestrator]
    pub(crate) async fn fan(ctx: OrchestrationContext, n: u64) -> Result<u64, OrchestrationError> {
        let results = ctx.when_all((0..n).map(|i| ctx.call(counted, i))).await;
        let mut sum = 0;
        for r in results {
            sum += r?;
        }
        Ok(sum)
    }

    /// Where the wrapper holds a result on its way to being committed.
    #[derive(Debug, Clone, Copy)]
    pub(crate) enum Hold {
        /// Leasing the instance for the episode that would take the results: they wait in
        /// memory, not yet taken by any episode.
        Lease,
        /// Committing an episode that consumed results from memory.
        Commit,
    }

    /// A store that holds the hand-off at `hold` until opened, and counts refused renewals.
    #[derive(Debug)]
    struct Gated {
        inner: Arc<dyn Store>,
        hold: Hold,
        open: watch::Sender<bool>,
        /// Calls waiting at the gate.
        waiting: watch::Sender<usize>,
        /// Lease renewals answered `LockLost`.
        lost: watch::Sender<usize>,
    }

    impl Gated {
        fn new(inner: Arc<dyn Store>, hold: Hold) -> Self {
            Self {
                inner,
                hold,
                open: watch::channel(false).0,
                waiting: watch::channel(0).0,
                lost: watch::channel(0).0,
            }
        }

        async fn pass(&self) {
            let mut open = self.open.subscribe();
            if *open.borrow_and_update() {
                return;
            }
            self.waiting.send_modify(|n| *n += 1);
            let _ = open.wait_for(|o| *o).await;
            self.waiting.send_modify(|n| *n -= 1);
        }
    }

    #[async_trait]
    impl Store for Gated {
        async fn create_instance(&self, new: NewInstance) -> Result<CreateResult, StoreError> {
            self.inner.create_instance(new).await
        }
        async fn send_message(&self, id: &InstanceId, m: Message) -> Result<(), StoreError> {
            self.inner.send_message(id, m).await
        }
        async fn fetch_orchestration_work(
            &self,
            now: Timestamp,
            lock_for: Duration,
        ) -> Result<Option<OrchestrationWorkItem>, StoreError> {
            self.inner.fetch_orchestration_work(now, lock_for).await
        }
        async fn fetch_orchestration_batch(
            &self,
            now: Timestamp,
            lock_for: Duration,
            max: usize,
        ) -> Result<Vec<OrchestrationWorkItem>, StoreError> {
            self.inner
                .fetch_orchestration_batch(now, lock_for, max)
                .await
        }
        async fn commit_episode(&self, commit: EpisodeCommit) -> Result<(), StoreError> {
            if matches!(self.hold, Hold::Commit) && !commit.completed_activities.is_empty() {
                self.pass().await;
            }
            self.inner.commit_episode(commit).await
        }
        fn supports_activity_handoff(&self) -> bool {
            self.inner.supports_activity_handoff()
        }
        async fn fetch_instances_work(
            &self,
            ids: &[InstanceId],
            now: Timestamp,
            lock_for: Duration,
        ) -> Result<Vec<OrchestrationWorkItem>, StoreError> {
            if matches!(self.hold, Hold::Lease) {
                self.pass().await;
            }
            self.inner.fetch_instances_work(ids, now, lock_for).await
        }
        async fn abandon_episode(
            &self,
            id: &InstanceId,
            lock: LockToken,
            retry_at: Timestamp,
            error: Option<String>,
        ) -> Result<(), StoreError> {
            self.inner.abandon_episode(id, lock, retry_at, error).await
        }
        fn activity_lease(&self, requested: Duration) -> Duration {
            self.inner.activity_lease(requested)
        }
        fn orchestration_lease(&self, requested: Duration) -> Duration {
            self.inner.orchestration_lease(requested)
        }
        async fn fetch_activity_work(
            &self,
            now: Timestamp,
            lock_for: Duration,
            max: usize,
        ) -> Result<Vec<ActivityWorkItem>, StoreError> {
            self.inner.fetch_activity_work(now, lock_for, max).await
        }
        async fn complete_activity(
            &self,
            id: u64,
            lock: LockToken,
            result: Message,
        ) -> Result<(), StoreError> {
            self.inner.complete_activity(id, lock, result).await
        }
        async fn abandon_activity(
            &self,
            id: u64,
            lock: LockToken,
            retry_at: Timestamp,
        ) -> Result<(), StoreError> {
            self.inner.abandon_activity(id, lock, retry_at).await
        }
        async fn renew_activity_lock(
            &self,
            id: u64,
            lock: LockToken,
            until: Timestamp,
        ) -> Result<(), StoreError> {
            let r = self.inner.renew_activity_lock(id, lock, until).await;
            if matches!(r, Err(StoreError::LockLost(_))) {
                self.lost.send_modify(|n| *n += 1);
            }
            r
        }
        async fn renew_activity_locks(
            &self,
            leases: &[(u64, LockToken)],
            until: Timestamp,
        ) -> Result<Vec<u64>, StoreError> {
            let lost = self.inner.renew_activity_locks(leases, until).await?;
            self.lost.send_modify(|n| *n += lost.len());
            Ok(lost)
        }
        async fn next_wake_time(&self) -> Result<Option<Timestamp>, StoreError> {
            self.inner.next_wake_time().await
        }
        async fn next_wake_time_for(
            &self,
            kind: WorkKind,
        ) -> Result<Option<Timestamp>, StoreError> {
            self.inner.next_wake_time_for(kind).await
        }
        async fn read_instance(
            &self,
            id: &InstanceId,
        ) -> Result<Option<InstanceRecord>, StoreError> {
            self.inner.read_instance(id).await
        }
        async fn read_history(&self, id: &InstanceId) -> Result<Vec<HistoryEvent>, StoreError> {
            self.inner.read_history(id).await
        }
        async fn query_instances(&self, q: &InstanceQuery) -> Result<InstancePage, StoreError> {
            self.inner.query_instances(q).await
        }
        async fn purge_instance(&self, id: &InstanceId) -> Result<bool, StoreError> {
            self.inner.purge_instance(id).await
        }
        async fn purge_finished_instance(
            &self,
            id: &InstanceId,
            finished_by: Timestamp,
        ) -> Result<bool, StoreError> {
            self.inner.purge_finished_instance(id, finished_by).await
        }
        fn signals(&self) -> &StoreSignals {
            self.inner.signals()
        }
    }

    /// Fan-out width.
    pub(crate) const N: u64 = 6;
    /// The activity lease.
    pub(crate) const LEASE: Duration = Duration::from_secs(10);

    /// Waits (yielding; bounded by a guard against hangs, not a timing assertion) until
    /// `done` holds.
    async fn eventually<F: Future<Output = bool>>(what: &str, mut done: impl FnMut() -> F) {
        let check = async {
            while !done().await {
                tokio::task::yield_now().await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(30), check)
            .await
            .is_err()
        {
            panic!("gave up waiting for {what}");
        }
    }

    /// A worker on `store` behind a gate, on a manual clock; `lease_from_worker` says whether
    /// the lease is the worker's `activity_lock` (otherwise the store grants its own).
    fn start(
        store: &Arc<dyn Store>,
        hold: Hold,
        clock: &ManualClock,
        lease_from_worker: bool,
    ) -> (Worker, Arc<Gated>) {
        let gated = Arc::new(Gated::new(Arc::clone(store), hold));
        let mut options = WorkerOptions::default();
        if lease_from_worker {
            options.activity_lock = LEASE;
        }
        options.orchestration_lock = Duration::from_secs(24 * 3600);
        let worker = Worker::builder()
            .options(options)
            .store_arc(Arc::clone(&gated) as Arc<dyn Store>)
            .clock(clock.as_clock())
            .register(counted)
            .register(fan)
            .start()
            .unwrap();
        (worker, gated)
    }

    /// Moves the clock on by half a lease and waits until every leased task's lease reaches
    /// past the next such step: the renewals the worker owes have happened.
    async fn step(store: &Arc<dyn Store>, clock: &ManualClock) {
        clock.advance(LEASE / 2);
        let floor = clock.now() + LEASE / 2;
        eventually(
            "the held results' leases to be renewed (a result waiting in memory must keep \
             its task leased)",
            || async {
                store
                    .next_wake_time_for(WorkKind::Activity)
                    .await
                    .unwrap()
                    .is_some_and(|t| t > floor)
            },
        )
        .await;
    }

    /// Starts a fan-out and waits until every activity ran and the hand-off is held.
    async fn fan_out_held(worker: &Worker, gated: &Gated) -> InstanceHandle<u64> {
        let run = fan::start(&worker.client(), N).await.unwrap();
        let id = run.id().clone();
        eventually("every activity to run and the hand-off to be held", || {
            let runs = runs_of(&id);
            let waiting = *gated.waiting.borrow();
            async move { runs.len() == N as usize && waiting > 0 }
        })
        .await;
        run
    }

    /// The results wait (at `hold`) for four half-leases — two full leases — and no activity
    /// runs again: each ran once, and the output and history are those of one run each.
    pub(crate) async fn held_results_keep_their_leases(
        store: Arc<dyn Store>,
        hold: Hold,
        lease_from_worker: bool,
    ) {
        let clock = ManualClock::default();
        let (worker, gated) = start(&store, hold, &clock, lease_from_worker);
        let run = fan_out_held(&worker, &gated).await;
        for _ in 0..4 {
            step(&store, &clock).await;
        }
        assert_eq!(
            runs_of(run.id()),
            vec![1; N as usize],
            "nothing ran again yet"
        );
        gated.open.send_replace(true);
        let sum = tokio::time::timeout(Duration::from_secs(30), run.wait())
            .await
            .expect("the fan-out finishes")
            .unwrap();
        assert_eq!(sum, (0..N).map(|i| i * 10).sum::<u64>());
        assert_eq!(
            runs_of(run.id()),
            vec![1; N as usize],
            "every activity ran exactly once"
        );
        let history = run.history().await.unwrap();
        let completed = history
            .iter()
            .filter(|e| e.event.kind() == "TaskCompleted")
            .count();
        assert_eq!(completed, N as usize);
        worker.shutdown().await;
    }

    /// A lease that is lost anyway while the result waits (as if the worker had been cut
    /// off from the store for longer than a lease): the waiting result is withdrawn and the
    /// new owner's result is the one that counts, as for a running activity.
    pub(crate) async fn a_lost_lease_lets_the_new_owner_s_result_count(store: Arc<dyn Store>) {
        let clock = ManualClock::default();
        let (worker, gated) = start(&store, Hold::Lease, &clock, true);
        let run = fan_out_held(&worker, &gated).await;
        // Every result reaches the hand-off (an activity counts its run before it returns).
        eventually("every result to wait for its episode", || {
            let waiting = worker.waiting_activity_results();
            async move { waiting == N as usize }
        })
        .await;
        step(&store, &clock).await;
        assert_eq!(worker.waiting_activity_results(), N as usize);
        // "Another worker" takes every task over, at a time when the leases look expired.
        let later = clock.now() + LEASE * 3;
        let stolen = store
            .fetch_activity_work(later, LEASE * 1000, 100)
            .await
            .unwrap();
        assert_eq!(stolen.len(), N as usize);
        clock.advance(LEASE / 2);
        eventually("the renewals to be refused", || {
            let lost = *gated.lost.borrow();
            async move { lost >= N as usize }
        })
        .await;
        eventually("the waiting results to be withdrawn", || async {
            worker.waiting_activity_results() == 0
        })
        .await;
        gated.open.send_replace(true);
        let now = clock.now();
        for w in &stolen {
            let done = Event::TaskCompleted {
                seq: w.task.seq,
                result: (1000 + w.task.seq).to_string(),
            };
            store
                .complete_activity(
                    w.id,
                    w.lock,
                    Message::new(done, Some(w.task.execution), now),
                )
                .await
                .unwrap();
        }
        let sum = tokio::time::timeout(Duration::from_secs(30), run.wait())
            .await
            .expect("the fan-out finishes")
            .unwrap();
        let seqs = stolen.iter().map(|w| w.task.seq);
        assert_eq!(
            sum,
            seqs.map(|s| 1000 + s).sum::<u64>(),
            "the new owner's results"
        );
        assert_eq!(runs_of(run.id()), vec![1; N as usize]);
        worker.shutdown().await;
    }

    /// One `#[tokio::test]` per case for a store maker (`async` when it may skip).
    macro_rules! cases {
        ($make:expr) => {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn results_held_for_an_episode_keep_their_leases() {
                let fixture = $make;
                super::held_results_keep_their_leases(
                    Arc::clone(&fixture.store),
                    super::Hold::Lease,
                    true,
                )
                .await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn results_held_in_a_slow_commit_keep_their_leases() {
                let fixture = $make;
                super::held_results_keep_their_leases(
                    Arc::clone(&fixture.store),
                    super::Hold::Commit,
                    true,
                )
                .await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_lost_lease_lets_the_new_owner_s_result_count() {
                let fixture = $make;
                super::a_lost_lease_lets_the_new_owner_s_result_count(Arc::clone(&fixture.store))
                    .await;
            }
        };
    }

    mod memory {
        use super::super::*;
        cases!(memory());
    }

    mod redb_in_memory {
        use super::super::*;
        cases!(redb_in_memory());
    }

    mod redb_file {
        use super::super::*;
        cases!(redb_file());
    }
}

/// `PostgresStore`: the conformance suite (each case on a fresh task hub) and what only it
/// has. Skipped, with one line on stderr saying why, when `DURABLE_TEST_POSTGRES_URL` is
/// not set.
mod postgres {
    use std::io::Write as _;
    use std::sync::Once;

    use durable_core::storage::{EpisodeCommit, Message, NewInstance};
    use durable_core::{Event, PostgresOptions, PostgresStore, RuntimeStatus, StoreError};

    use super::*;

    const T0: Timestamp = Timestamp::from_unix_millis(1_700_000_000_000);

    /// The test database, or `None` (after saying so once) when there is none.
    fn url() -> Option<String> {
        static SKIPPED: Once = Once::new();
        match std::env::var("DURABLE_TEST_POSTGRES_URL") {
            Ok(url) if !url.is_empty() => Some(url),
            _ => {
                SKIPPED.call_once(|| {
                    // Straight to stderr, past the test harness's capture.
                    let _ = writeln!(
                        std::io::stderr(),
                        "PostgreSQL store tests skipped: DURABLE_TEST_POSTGRES_URL is not set \
                         (.ci/run sets it when PostgreSQL is installed)"
                    );
                });
                None
            }
        }
    }

    /// A task hub name no other test uses.
    fn fresh_hub() -> String {
        let id = InstanceId::random();
        format!("durable_test_{}", &id.as_str()[..16])
    }

    async fn connect(url: &str, hub: &str) -> PostgresStore {
        connect_with(url, PostgresOptions::new(hub)).await
    }

    async fn connect_with(url: &str, options: PostgresOptions) -> PostgresStore {
        PostgresStore::connect(url, options.pool_size(8))
            .await
            .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
    }

    pub(super) struct PgFixture {
        pub(super) store: Arc<dyn Store>,
        pg: PostgresStore,
    }

    impl PgFixture {
        pub(super) async fn cleanup(self) {
            self.pg.drop_task_hub().await.expect("drop the task hub");
        }
    }

    pub(super) async fn fixture() -> Option<PgFixture> {
        let url = url()?;
        let pg = connect(&url, &fresh_hub()).await;
        Some(PgFixture {
            store: Arc::new(pg.clone()),
            pg,
        })
    }

    /// Like [`fixture`], with each write's `NOTIFY` inside its transaction.
    pub(super) async fn fixture_notify_in_transaction() -> Option<PgFixture> {
        let url = url()?;
        let pg = connect_with(
            &url,
            PostgresOptions::new(fresh_hub()).notify_in_transaction(true),
        )
        .await;
        Some(PgFixture {
            store: Arc::new(pg.clone()),
            pg,
        })
    }

    /// A pool built by the user, as `PostgresStore::from_pool` takes it.
    fn user_pool(url: &str, size: usize) -> durable_core::deadpool_postgres::Pool {
        use durable_core::deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
        let config: tokio_postgres::Config = url.parse().expect("the test URL");
        let manager = Manager::from_config(
            config,
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        Pool::builder(manager)
            .max_size(size)
            .build()
            .expect("a pool")
    }

    /// Like [`fixture`], on a pool of the user's (`from_pool`): leases are taken on its
    /// connections in transactions of their own, and nothing listens for notifications.
    pub(super) async fn fixture_from_pool() -> Option<PgFixture> {
        let url = url()?;
        let pg = PostgresStore::from_pool(user_pool(&url, 8), PostgresOptions::new(fresh_hub()))
            .await
            .unwrap_or_else(|e| panic!("from_pool on {url}: {e}"));
        Some(PgFixture {
            store: Arc::new(pg.clone()),
            pg,
        })
    }

    mod conformance_cases {
        use super::*;
        conformance_tests!(async fixture);
    }

    mod conformance_cases_from_pool {
        use super::*;
        conformance_tests!(async fixture_from_pool);
    }

    mod conformance_cases_notify_in_transaction {
        use super::*;
        conformance_tests!(async fixture_notify_in_transaction);
    }

    async fn sql(url: &str, statements: &str) {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        let driver = tokio::spawn(connection);
        client.batch_execute(statements).await.unwrap();
        drop(client);
        let _ = driver.await;
    }

    async fn drop_hub(url: &str, hub: &str) {
        sql(url, &format!("DROP SCHEMA IF EXISTS \"{hub}\" CASCADE")).await;
    }

    /// A start through a worker's own client is one transaction in `PostgresStore`: it
    /// takes first episodes, and one that cannot be applied (here: its lease is not the
    /// instance's) leaves nothing behind, not even the instance.
    #[tokio::test]
    async fn create_started_is_all_or_nothing() {
        let Some(url) = url() else { return };
        let hub = fresh_hub();
        let pg = connect(&url, &hub).await;
        assert!(pg.supports_create_started());
        for notify_in_transaction in [false, true] {
            let pg = if notify_in_transaction {
                connect_with(&url, PostgresOptions::new(&hub).notify_in_transaction(true)).await
            } else {
                pg.clone()
            };
            let new = NewInstance::new(InstanceId::new("x").unwrap(), "X", "null".into(), T0);
            // A commit for another instance: its lease check fails inside the transaction.
            let mut first = EpisodeCommit::new(
                InstanceId::new("y").unwrap(),
                durable_core::storage::LockToken(1),
                RuntimeStatus::Running,
                T0,
            );
            first.messages.push((
                InstanceId::new("x").unwrap(),
                Message::new(
                    Event::EventRaised {
                        name: "e".into(),
                        input: "null".into(),
                    },
                    None,
                    T0,
                ),
            ));
            let err = pg.create_started(new, first).await.unwrap_err();
            assert!(matches!(err, StoreError::LockLost(_)), "{err:?}");
            assert_eq!(
                pg.read_instance(&InstanceId::new("x").unwrap())
                    .await
                    .unwrap(),
                None,
                "nothing of a failed create_started is written"
            );
        }
        pg.drop_task_hub().await.unwrap();
    }

    /// A hub written by a newer build (a higher schema version) is refused, clearly.
    #[tokio::test]
    async fn newer_schema_version_is_refused() {
        let Some(url) = url() else { return };
        let hub = fresh_hub();
        drop(connect(&url, &hub).await);
        sql(
            &url,
            &format!("INSERT INTO \"{hub}\".schema_version (version) VALUES (99)"),
        )
        .await;
        let err = PostgresStore::connect(&url, PostgresOptions::new(&hub))
            .await
            .unwrap_err();
        drop_hub(&url, &hub).await;
        assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
        let msg = err.to_string();
        eprintln!("{msg}");
        assert!(
            msg.contains("schema version 99") && msg.contains("up to 3"),
            "{msg}"
        );
    }

    /// Takes a hub back to schema version 2: no instance holds, `due_at` as version 2
    /// computed it, no creation-time index.
    async fn to_version_2(url: &str, hub: &str) {
        sql(
            url,
            &format!(
                "DROP INDEX \"{hub}\".instances_created;
                 ALTER TABLE \"{hub}\".instances DROP COLUMN due_at, DROP COLUMN not_before;
                 ALTER TABLE \"{hub}\".instances ADD COLUMN due_at BIGINT GENERATED ALWAYS AS (
                     CASE WHEN lock_token IS NULL THEN ready_at
                          WHEN ready_at IS NULL THEN NULL
                          ELSE GREATEST(locked_until, ready_at) END) STORED;
                 CREATE INDEX instances_due ON \"{hub}\".instances (due_at, id);
                 DELETE FROM \"{hub}\".schema_version WHERE version = 3;"
            ),
        )
        .await;
    }

    /// A hub of schema version 2 (before instance holds) is migrated in place on connect:
    /// an instance waiting under version 2 is still due, and an abandoned episode then holds
    /// it back without moving its messages.
    #[tokio::test]
    async fn a_version_2_hub_is_migrated_with_its_waiting_instances() {
        let Some(url) = url() else { return };
        let hub = fresh_hub();
        let a = InstanceId::new("a").unwrap();
        {
            let store = connect(&url, &hub).await;
            let new = NewInstance::new(a.clone(), "Job", "null".into(), T0);
            store.create_instance(new).await.unwrap();
        }
        to_version_2(&url, &hub).await;
        let store = connect(&url, &hub).await;
        // The migration made the newest-first index (an error here if it is missing).
        sql(
            &url,
            &format!("SELECT '\"{hub}\".instances_created'::regclass"),
        )
        .await;
        let item = store
            .fetch_orchestration_work(T0, Duration::from_secs(60))
            .await
            .unwrap()
            .expect("the instance created under version 2 is due");
        let retry_at = T0 + Duration::from_secs(5);
        store
            .abandon_episode(&a, item.lock, retry_at, None)
            .await
            .unwrap();
        let held = T0 + Duration::from_millis(4_999);
        assert!(
            store
                .fetch_orchestration_work(held, Duration::from_secs(60))
                .await
                .unwrap()
                .is_none(),
            "held until retry_at"
        );
        assert_eq!(store.next_wake_time().await.unwrap(), Some(retry_at));
        let again = store
            .fetch_orchestration_work(retry_at, Duration::from_secs(60))
            .await
            .unwrap()
            .expect("due at retry_at");
        assert_eq!(again.messages, item.messages, "the messages did not move");
        store.drop_task_hub().await.unwrap();
    }

    /// A hub of schema version 1 (before heartbeats) is migrated in place on connect: a task
    /// queued under version 1 is fetched as it was and can record heartbeat details.
    #[tokio::test]
    async fn a_version_1_hub_is_migrated_with_its_queued_tasks() {
        let Some(url) = url() else { return };
        let hub = fresh_hub();
        drop(connect(&url, &hub).await);
        // Back to version 1, with a task queued by a version-1 build.
        to_version_2(&url, &hub).await;
        sql(
            &url,
            &format!(
                "ALTER TABLE \"{hub}\".activities DROP COLUMN heartbeat, DROP COLUMN heartbeat_timeout;
                 DELETE FROM \"{hub}\".schema_version WHERE version = 2;
                 INSERT INTO \"{hub}\".activities (id, instance_id, visible_at, task)
                 VALUES (1, 'a', 0, '{{\"instance_id\":\"a\",\"execution\":1,\"seq\":0,\"name\":\"old\",\"input\":\"7\"}}')"
            ),
        )
        .await;
        let store = connect(&url, &hub).await;
        let work = store
            .fetch_activity_work(T0, Duration::from_secs(60), 10)
            .await
            .unwrap();
        assert_eq!(work.len(), 1);
        let task = &work[0].task;
        assert_eq!((task.name.as_str(), task.input.as_str()), ("old", "7"));
        assert_eq!(
            (task.attempt, task.heartbeat_timeout, &task.heartbeat),
            (1, None, &None)
        );
        store
            .record_activity_heartbeat(
                work[0].id,
                work[0].lock,
                "3".into(),
                T0 + Duration::from_secs(1),
            )
            .await
            .unwrap();
        let again = store
            .fetch_activity_work(T0 + Duration::from_secs(1), Duration::from_secs(60), 10)
            .await
            .unwrap();
        assert_eq!(again[0].task.heartbeat.as_deref(), Some("3"));
        store.drop_task_hub().await.unwrap();
    }

    /// A schema that exists but is not a task hub is not touched.
    #[tokio::test]
    async fn foreign_schema_is_refused() {
        let Some(url) = url() else { return };
        let hub = fresh_hub();
        sql(
            &url,
            &format!("CREATE SCHEMA \"{hub}\"; CREATE TABLE \"{hub}\".mine (x int)"),
        )
        .await;
        let err = PostgresStore::connect(&url, PostgresOptions::new(&hub))
            .await
            .unwrap_err();
        drop_hub(&url, &hub).await;
        eprintln!("{err}");
        assert!(err.to_string().contains("not a durable task hub"), "{err}");
    }

    /// Many processes starting at once on a new hub: one creates it, all succeed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_starts_migrate_once() {
        let Some(url) = url() else { return };
        let hub = fresh_hub();
        let mut starts = tokio::task::JoinSet::new();
        for _ in 0..6 {
            let (url, hub) = (url.clone(), hub.clone());
            starts.spawn(async move {
                PostgresStore::connect(&url, PostgresOptions::new(hub).pool_size(2)).await
            });
        }
        let mut stores = Vec::new();
        while let Some(r) = starts.join_next().await {
            stores.push(r.unwrap().expect("every concurrent start succeeds"));
        }
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let rows = client
            .query(
                &format!("SELECT version FROM \"{hub}\".schema_version"),
                &[],
            )
            .await
            .unwrap();
        let versions: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
        assert_eq!(versions, [1, 2, 3], "each migration recorded once");
        stores[0].drop_task_hub().await.unwrap();
    }

    /// A user without the right to create the schema gets a message that says so.
    #[tokio::test]
    async fn missing_privileges_are_explained() {
        let Some(url) = url() else { return };
        sql(
            &url,
            "DO $$ BEGIN
                 IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'durable_test_noperm') THEN
                     CREATE ROLE durable_test_noperm LOGIN;
                 END IF;
             END $$",
        )
        .await;
        let config: tokio_postgres::Config = url.parse().unwrap();
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => "127.0.0.1".to_owned(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let db = config.get_dbname().unwrap_or("postgres");
        let as_noperm = format!("host={host} port={port} dbname={db} user=durable_test_noperm");
        let err = PostgresStore::connect(&as_noperm, PostgresOptions::new(fresh_hub()))
            .await
            .unwrap_err();
        let msg = err.to_string();
        eprintln!("{msg}");
        assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
        // Trust authentication (the CI database) reaches the privilege check; a server that
        // wants a password stops at the login, which must be just as clear.
        assert!(
            (msg.contains("permission denied") && msg.contains("CREATE privilege"))
                || msg.contains("password"),
            "{msg}"
        );
    }

    fn started(name: &str) -> Message {
        Message::new(
            Event::EventRaised {
                name: name.to_owned(),
                input: "null".to_owned(),
            },
            None,
            T0,
        )
    }

    /// Two stores on one hub, as two processes: a lease taken over after expiry fences the
    /// first holder off, and writes in one wake the other through NOTIFY.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fencing_and_wakeups_across_stores() {
        fencing_and_wakeups(false).await;
    }

    /// `from_pool`: leases are taken and renewed on the user's connections, whose session
    /// state stays as it was (`synchronous_commit` is set for the lease transactions alone),
    /// and every connection goes back to the pool outside a transaction, after a failed
    /// lease statement too. `from_pool_with_listener` hears another store's writes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn from_pool_leaves_sessions_alone_and_listens_when_asked() {
        let Some(url) = url() else { return };
        let hub = fresh_hub();
        // One connection: every statement runs on it.
        let pool = user_pool(&url, 1);
        let a = PostgresStore::from_pool(pool.clone(), PostgresOptions::new(&hub))
            .await
            .unwrap();
        let id = InstanceId::new("job").unwrap();
        a.create_instance(NewInstance::new(id.clone(), "Job", "1".into(), T0))
            .await
            .unwrap();
        let lease = Duration::from_secs(30);
        let item = a
            .fetch_orchestration_work(T0, lease)
            .await
            .unwrap()
            .expect("the instance is leased");
        assert!(
            a.fetch_orchestration_work(T0, lease)
                .await
                .unwrap()
                .is_none(),
            "the lease holds"
        );
        let mut commit = EpisodeCommit::new(id.clone(), item.lock, RuntimeStatus::Completed, T0);
        commit.consumed = item.messages.iter().map(|m| m.id).collect();
        commit.output = Some("\"done\"".into());
        a.commit_episode(commit).await.unwrap();
        assert_eq!(
            a.read_instance(&id)
                .await
                .unwrap()
                .unwrap()
                .output
                .as_deref(),
            Some("\"done\"")
        );
        // The session as the user made it: no `synchronous_commit` of its own, and outside
        // any transaction (one begun earlier would have `now()` before this statement, a
        // simple query: its own implicit transaction; an aborted one would fail it).
        let check = || async {
            let conn = pool.get().await.unwrap();
            let rows = conn
                .simple_query(
                    "SELECT current_setting('synchronous_commit'), \
                     now() = statement_timestamp()",
                )
                .await
                .unwrap();
            let row = rows
                .iter()
                .find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(row) => Some(row),
                    _ => None,
                })
                .expect("a row");
            (row.get(0).map(str::to_owned), row.get(1).map(str::to_owned))
        };
        let untouched = (Some("on".to_owned()), Some("t".to_owned()));
        assert_eq!(check().await, untouched);
        // A lease statement (prepared on that connection) that fails inside its transaction:
        // its table is gone.
        assert!(
            a.fetch_activity_work(T0, lease, 1)
                .await
                .unwrap()
                .is_empty()
        );
        sql(&url, &format!("DROP TABLE \"{hub}\".activities")).await;
        // (The error reported is the failed statement's, or that of the next one in the
        // aborted transaction.)
        let err = a.fetch_activity_work(T0, lease, 1).await.unwrap_err();
        assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
        assert_eq!(check().await, untouched);
        sql(&url, &format!("DROP SCHEMA \"{hub}\" CASCADE")).await;

        // With a listener: another store's write wakes this one.
        let hub = fresh_hub();
        let config: tokio_postgres::Config = url.parse().unwrap();
        let b = PostgresStore::from_pool_with_listener(
            user_pool(&url, 8),
            config,
            tokio_postgres::NoTls,
            PostgresOptions::new(&hub).fallback_poll(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
        let other = connect(&url, &hub).await;
        let woken = b.signals().orchestration.notified();
        other
            .create_instance(NewInstance::new(id.clone(), "Job", "1".into(), T0))
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), woken)
            .await
            .expect("a create in another store wakes the listening one");
        b.drop_task_hub().await.unwrap();
    }

    /// The same with each `NOTIFY` sent inside its write's transaction.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fencing_and_wakeups_notify_in_transaction() {
        fencing_and_wakeups(true).await;
    }

    async fn fencing_and_wakeups(notify_in_transaction: bool) {
        let Some(url) = url() else { return };
        let hub = fresh_hub();
        let options = PostgresOptions::new(&hub).notify_in_transaction(notify_in_transaction);
        let a = connect_with(&url, options.clone()).await;
        let b = connect_with(&url, options).await;
        let id = InstanceId::new("job").unwrap();

        let woken = a.signals().orchestration.notified();
        let mut changed = a.signals().changed.subscribe();
        b.create_instance(NewInstance::new(id.clone(), "Job", "1".into(), T0))
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), woken)
            .await
            .expect("a create in one store wakes the other's dispatcher");
        tokio::time::timeout(Duration::from_secs(10), changed.changed())
            .await
            .expect("and bumps its change counter")
            .unwrap();

        let lease = Duration::from_secs(30);
        let first = a
            .fetch_orchestration_work(T0, lease)
            .await
            .unwrap()
            .unwrap();
        assert!(
            b.fetch_orchestration_work(T0, lease)
                .await
                .unwrap()
                .is_none(),
            "leased by the other store"
        );
        b.send_message(&id, started("late")).await.unwrap();
        let expired = T0 + lease;
        let second = b
            .fetch_orchestration_work(expired, lease)
            .await
            .unwrap()
            .expect("the expired lease is taken over");
        assert_ne!(first.lock, second.lock);
        assert_eq!(second.messages.len(), 2);

        let mut stale = EpisodeCommit::new(id.clone(), first.lock, RuntimeStatus::Completed, T0);
        stale.consumed = first.messages.iter().map(|m| m.id).collect();
        stale.output = Some("\"stale\"".into());
        let r = a.commit_episode(stale).await;
        assert!(matches!(r, Err(StoreError::LockLost(_))), "{r:?}");
        assert_eq!(
            b.read_instance(&id).await.unwrap().unwrap().status,
            RuntimeStatus::Pending,
            "the fenced commit changed nothing"
        );

        let woken = a.signals().orchestration.notified();
        let mut good =
            EpisodeCommit::new(id.clone(), second.lock, RuntimeStatus::Completed, expired);
        good.consumed = second.messages.iter().map(|m| m.id).collect();
        good.output = Some("\"done\"".into());
        b.commit_episode(good).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), woken)
            .await
            .expect("a commit in one store wakes the other");
        let r = a.read_instance(&id).await.unwrap().unwrap();
        assert_eq!(
            (r.status, r.output.as_deref()),
            (RuntimeStatus::Completed, Some("\"done\""))
        );
        a.drop_task_hub().await.unwrap();
    }

    /// Lost connections (a restarted server, a network cut) give errors, never panics; the
    /// pool reconnects, and so does the notification listener.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[allow(
        clippy::disallowed_methods,
        reason = "waits in real time for the server to close the killed connections"
    )]
    async fn reconnects_after_connections_are_killed() {
        let Some(url) = url() else { return };
        let hub = fresh_hub();
        let app = format!("durable_test_kill_{}", &InstanceId::random().as_str()[..8]);
        let sep = if url.contains('?') { '&' } else { '?' };
        let killable = format!("{url}{sep}application_name={app}");
        let options = PostgresOptions::new(&hub).fallback_poll(Duration::from_secs(3600));
        let a = connect_with(&killable, options).await;
        let b = connect(&url, &hub).await;
        let id = InstanceId::new("job").unwrap();
        assert_eq!(a.read_instance(&id).await.unwrap(), None);

        let reconnected = a.signals().orchestration.notified();
        sql(
            &url,
            &format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = '{app}'"
            ),
        )
        .await;
        // Calls on dead connections fail cleanly; fresh connections take over.
        let mut answered = false;
        for _ in 0..50 {
            match a.read_instance(&id).await {
                Ok(r) => {
                    assert_eq!(r, None);
                    answered = true;
                    break;
                }
                Err(e) => assert!(matches!(e, StoreError::Backend(_)), "{e:?}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(answered, "the store reconnects");
        tokio::time::timeout(Duration::from_secs(30), reconnected)
            .await
            .expect("the listener reconnects (and wakes the dispatchers)");

        // Notifications flow again.
        let woken = a.signals().orchestration.notified();
        b.create_instance(NewInstance::new(id.clone(), "Job", "1".into(), T0))
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), woken)
            .await
            .expect("a write in the other store wakes this one after the reconnect");
        b.drop_task_hub().await.unwrap();
    }

    /// Issue 12, item 13: the deterministic hand-off cases of `handoff_lease` on Postgres,
    /// with the lease granted by the worker (`WorkerOptions::activity_lock`) or by the store
    /// (`PostgresOptions::activity_lease`, the worker keeping its default of 5 minutes: it
    /// must renew at half the store's lease, not its own).
    mod handoff_lease {
        use super::super::handoff_lease::{self as cases, Hold, LEASE};
        use super::*;

        async fn store(lease_from_store: bool) -> Option<PostgresStore> {
            let url = url()?;
            let mut options = PostgresOptions::new(fresh_hub());
            if lease_from_store {
                options = options.activity_lease(LEASE);
            }
            Some(connect_with(&url, options).await)
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn results_held_for_an_episode_keep_the_store_s_lease() {
            let Some(pg) = store(true).await else { return };
            cases::held_results_keep_their_leases(Arc::new(pg.clone()), Hold::Lease, false).await;
            pg.drop_task_hub().await.unwrap();
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn results_held_in_a_slow_commit_keep_their_leases() {
            let Some(pg) = store(false).await else { return };
            cases::held_results_keep_their_leases(Arc::new(pg.clone()), Hold::Commit, true).await;
            pg.drop_task_hub().await.unwrap();
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_lost_lease_lets_the_new_owner_s_result_count() {
            let Some(pg) = store(false).await else { return };
            cases::a_lost_lease_lets_the_new_owner_s_result_count(Arc::new(pg.clone())).await;
            pg.drop_task_hub().await.unwrap();
        }
    }

    /// The real engine: two workers on two stores of one hub run a fan-out together.
    mod engine {
        use durable_core::prelude::*;

        use durable_core::worker::WorkerOptions;

        use super::super::handoff_lease::{counted, fan, runs_of};
        use super::super::workload::{square, sum_squares};
        use super::*;

        /// Issue 12, item 13, the way it was found: three workers on one hub, a short (1 s)
        /// activity lease and a loaded fan-out — 20 instances of 200 activities each, on
        /// workers that run one episode at a time without a cache — so results wait in memory
        /// for their orchestrations' next episodes, often longer than a lease. Each activity
        /// runs exactly once (before the fix about a quarter ran again on other, healthy
        /// workers; with per-result renewals instead of batched ones, a few still did).
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_loaded_fan_out_on_three_workers_runs_each_activity_once() {
            const WORKERS: usize = 3;
            const INSTANCES: usize = 20;
            const WIDTH: u64 = 200;
            let Some(url) = url() else { return };
            let hub = fresh_hub();
            let mut workers = Vec::new();
            for _ in 0..WORKERS {
                let store = connect(&url, &hub).await;
                let mut options = WorkerOptions::default();
                options.activity_lock = Duration::from_secs(1);
                workers.push(
                    Worker::builder()
                        .options(options)
                        // One episode at a time, each replaying its whole history: results
                        // queue up in memory for their episodes.
                        .concurrency(1, 64)
                        .cache_capacity(0)
                        .register(counted)
                        .register(fan)
                        .store(store)
                        .start()
                        .unwrap(),
                );
            }
            let client = workers[0].client();
            let mut runs = Vec::new();
            for _ in 0..INSTANCES {
                runs.push(fan::start(&client, WIDTH).await.unwrap());
            }
            let want = (0..WIDTH).map(|i| i * 10).sum::<u64>();
            for run in &runs {
                let sum = tokio::time::timeout(Duration::from_secs(300), run.wait())
                    .await
                    .expect("the fan-out finishes")
                    .unwrap();
                assert_eq!(sum, want);
            }
            let mut again = 0;
            for run in &runs {
                again += runs_of(run.id()).iter().filter(|n| **n > 1).count();
                assert_eq!(runs_of(run.id()).len(), WIDTH as usize);
            }
            assert_eq!(
                again,
                0,
                "{again} of {} finished activities ran again",
                INSTANCES * WIDTH as usize
            );
            for w in workers {
                w.shutdown().await;
            }
            let store = connect(&url, &hub).await;
            store.drop_task_hub().await.unwrap();
        }

        static RESUMED: std::sync::Mutex<Vec<Option<u32>>> = std::sync::Mutex::new(Vec::new());
        static BEAT: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(0);
        static BEATEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

        /// The first run heartbeats 5 (once allowed to) and hangs; a later run answers with
        /// what it resumed from.
        #[activity]
        async fn resumable(ctx: ActivityContext, _x: ()) -> Result<u32, ActivityError> {
            let last = ctx.last_heartbeat::<u32>();
            RESUMED.lock().unwrap().push(last);
            if let Some(done) = last {
                return Ok(done);
            }
            BEAT.acquire().await.unwrap().forget();
            ctx.heartbeat(5u32);
            BEATEN.store(true, std::sync::atomic::Ordering::SeqCst);
            std::future::pending().await
        }

        #[orchestrator]
        async fn resume_job(ctx: OrchestrationContext, _x: ()) -> Result<u32, OrchestrationError> {
            let options = CallOptions::new().heartbeat_timeout(Duration::from_secs(60));
            Ok(ctx.call_with(resumable, (), options).await?)
        }

        /// A worker dies in the middle of an activity that heartbeated: another worker on the
        /// hub takes the task over a heartbeat timeout after the written heartbeat (its
        /// lease), not after the 5-minute activity lease, and resumes from the details.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_dead_workers_task_is_taken_over_after_its_heartbeat_timeout_with_its_details() {
            use durable_core::Clock as _;
            use durable_core::storage::WorkKind;
            let Some(url) = url() else { return };
            let hub = fresh_hub();
            let clock = durable_testing::ManualClock::default();
            let t0 = clock.now();
            let worker = |store: PostgresStore| {
                Worker::builder()
                    .register(resumable)
                    .register(resume_job)
                    .store(store)
                    .clock(clock.as_clock())
                    .start()
                    .unwrap()
            };
            let store = connect(&url, &hub).await;
            let first = worker(store.clone());
            let run = resume_job::start(&first.client(), ()).await.unwrap();
            let guard = async {
                while RESUMED.lock().unwrap().is_empty() {
                    tokio::task::yield_now().await;
                }
                clock.advance(Duration::from_secs(1));
                BEAT.add_permits(1);
                while !BEATEN.load(std::sync::atomic::Ordering::SeqCst) {
                    tokio::task::yield_now().await;
                }
                // Written half a lease after the run started (the throttle): the lease
                // moves with it, to a heartbeat timeout after the write.
                clock.set(t0 + Duration::from_secs(30));
                let written = t0 + Duration::from_secs(90);
                while store.next_wake_time_for(WorkKind::Activity).await.unwrap() != Some(written) {
                    tokio::task::yield_now().await;
                }
                // The lease renewal at t0 + 30 s moves the lease to the same instant, so the
                // wake time alone does not show the details were written: wait for them
                // (the write is asynchronous; a worker killed before it loses them).
                let (sql, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                let driver = tokio::spawn(connection);
                let beats = format!(
                    "SELECT count(*) FROM \"{hub}\".activities WHERE heartbeat IS NOT NULL"
                );
                while sql.query_one(&beats, &[]).await.unwrap().get::<_, i64>(0) == 0 {
                    tokio::task::yield_now().await;
                }
                drop(sql);
                let _ = driver.await;
            };
            tokio::time::timeout(Duration::from_secs(60), guard)
                .await
                .expect("the heartbeat is written");
            first.abort();
            let second = worker(connect(&url, &hub).await);
            clock.set(t0 + Duration::from_secs(90));
            let out = tokio::time::timeout(Duration::from_secs(60), run.wait())
                .await
                .expect("taken over")
                .unwrap();
            assert_eq!(out, 5);
            assert_eq!(*RESUMED.lock().unwrap(), [None, Some(5)]);
            let history = run.history().await.unwrap();
            assert!(history.iter().all(|e| e.event.kind() != "TaskFailed"));
            second.shutdown().await;
            store.drop_task_hub().await.unwrap();
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn two_workers_share_a_fan_out() {
            let Some(url) = url() else { return };
            let hub = fresh_hub();
            let mut workers = Vec::new();
            for _ in 0..2 {
                let store = connect(&url, &hub).await;
                workers.push(
                    Worker::builder()
                        .register(square)
                        .register(sum_squares)
                        .store(store)
                        .start()
                        .unwrap(),
                );
            }
            let client = workers[0].client();
            let run = sum_squares::start(&client, 100).await.unwrap();
            let sum = tokio::time::timeout(Duration::from_secs(60), run.wait())
                .await
                .expect("the fan-out finishes")
                .unwrap();
            assert_eq!(sum, (0..100u64).map(|i| i * i).sum::<u64>());
            let history = run.history().await.unwrap();
            let completed = history
                .iter()
                .filter(|e| e.event.kind() == "TaskCompleted")
                .count();
            assert_eq!(completed, 100);
            for w in workers {
                w.shutdown().await;
            }
            let store = connect(&url, &hub).await;
            store.drop_task_hub().await.unwrap();
        }
    }
}
