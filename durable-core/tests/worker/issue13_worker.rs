//! Issue 13: a worker that can't be misused (no runtime, dead dispatchers, option setters),
//! typed record accessors, `clear_custom_status` and `wait_until`.

use std::time::Duration;

use async_trait::async_trait;
use durable_core::history::{Event, HistoryEvent};
use durable_core::prelude::*;
use durable_core::storage::{
    ActivityWorkItem, CreateResult, EpisodeCommit, InstancePage, LockToken, Message, NewInstance,
    OrchestrationWorkItem, StoreSignals, WorkKind,
};
use durable_core::{
    BuildError, InstanceQuery, InstanceRecord, Limits, Store, StoreError, VersionMatch,
    VersionMismatchAction, WorkerError, WorkerOptions,
};
use serde::{Deserialize, Serialize};

use super::support::*;

/// Longest a test waits for the engine (a guard against hangs, not a timing assertion).
const GUARD: Duration = Duration::from_secs(20);

#[test]
fn start_outside_a_tokio_runtime_is_a_typed_error() {
    let err = Worker::builder()
        .store(MemoryStore::new())
        .start()
        .expect_err("no runtime to run on");
    assert_eq!(err, BuildError::NoRuntime);
    assert!(err.to_string().contains("Tokio runtime"), "{err}");
}

// ------------------------------------------------------------------- dead dispatchers

/// Where [`Faulty`] panics.
#[derive(Debug, Clone, Copy, PartialEq)]
enum PanicIn {
    OrchestrationFetch,
    ActivityFetch,
}

/// The in-memory store, except that one kind of fetch panics.
#[derive(Debug)]
struct Faulty {
    inner: MemoryStore,
    panic_in: PanicIn,
}

#[async_trait]
impl Store for Faulty {
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
        assert!(self.panic_in != PanicIn::OrchestrationFetch, "store bug");
        self.inner.fetch_orchestration_work(now, lock_for).await
    }
    async fn fetch_orchestration_batch(
        &self,
        now: Timestamp,
        lock_for: Duration,
        max: usize,
    ) -> Result<Vec<OrchestrationWorkItem>, StoreError> {
        assert!(
            self.panic_in != PanicIn::OrchestrationFetch,
            "store bug in fetch_orchestration_batch"
        );
        self.inner
            .fetch_orchestration_batch(now, lock_for, max)
            .await
    }
    async fn commit_episode(&self, commit: EpisodeCommit) -> Result<(), StoreError> {
        self.inner.commit_episode(commit).await
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
    async fn fetch_activity_work(
        &self,
        now: Timestamp,
        lock_for: Duration,
        max: usize,
    ) -> Result<Vec<ActivityWorkItem>, StoreError> {
        assert!(
            self.panic_in != PanicIn::ActivityFetch,
            "store bug in fetch_activity_work"
        );
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
        self.inner.renew_activity_lock(id, lock, until).await
    }
    async fn next_wake_time(&self) -> Result<Option<Timestamp>, StoreError> {
        self.inner.next_wake_time().await
    }
    async fn next_wake_time_for(&self, kind: WorkKind) -> Result<Option<Timestamp>, StoreError> {
        self.inner.next_wake_time_for(kind).await
    }
    async fn read_instance(&self, id: &InstanceId) -> Result<Option<InstanceRecord>, StoreError> {
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

fn faulty_worker(panic_in: PanicIn) -> Worker {
    Worker::builder()
        .store(Faulty {
            inner: MemoryStore::new(),
            panic_in,
        })
        .start()
        .expect("worker starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_reports_an_orchestration_dispatcher_that_panicked() {
    let worker = faulty_worker(PanicIn::OrchestrationFetch);
    let died = tokio::time::timeout(GUARD, worker.closed())
        .await
        .expect("the dead dispatcher is reported");
    assert_eq!(died.dispatcher(), "orchestration dispatcher");
    let WorkerError::DispatcherPanicked { message, .. } = &died else {
        panic!("{died:?}")
    };
    assert_eq!(message, "store bug in fetch_orchestration_batch");
    // Asked again, it says the same.
    assert_eq!(worker.closed().await, died);
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_until_returns_the_activity_dispatcher_that_panicked() {
    let worker = faulty_worker(PanicIn::ActivityFetch);
    let outcome = tokio::time::timeout(GUARD, worker.run_until(std::future::pending::<()>()))
        .await
        .expect("run_until returns once a dispatcher died");
    let err = outcome.expect_err("a dead dispatcher is an error");
    assert_eq!(err.dispatcher(), "activity dispatcher");
    assert_eq!(
        err.to_string(),
        "the worker's activity dispatcher panicked: store bug in fetch_activity_work"
    );
}

#[orchestrator]
async fn twice(_ctx: OrchestrationContext, x: i64) -> Result<i64, OrchestrationError> {
    Ok(x * 2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_until_shuts_down_cleanly_when_its_future_completes() {
    let env = start(|b| b.register(twice));
    let run = twice::start(&env.client, 21).await.unwrap();
    assert_eq!(run.wait().await.unwrap(), 42);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    stop.send(()).unwrap();
    env.worker
        .run_until(stopped)
        .await
        .expect("no dispatcher died");
}

// --------------------------------------------------------------------- option setters

#[tokio::test]
async fn setters_win_over_options_whatever_the_order() {
    let mut base = WorkerOptions::default();
    base.cache_capacity = 5;
    base.max_concurrent_activities = 8;
    base.max_stuck_backoff = Duration::from_secs(9);
    let worker = Worker::builder()
        .store(MemoryStore::new())
        .cache_capacity(0)
        .options(base)
        .max_concurrent_orchestrations(3)
        .start()
        .unwrap();
    let o = worker.options();
    assert_eq!(o.cache_capacity, 0, "set before options(..), kept");
    assert_eq!(o.max_concurrent_orchestrations, 3, "set after options(..)");
    assert_eq!(o.max_concurrent_activities, 8, "from options(..)");
    assert_eq!(
        o.max_stuck_backoff,
        Duration::from_secs(9),
        "from options(..)"
    );
    worker.shutdown().await;
}

#[tokio::test]
async fn every_option_has_a_setter() {
    let mut limits = Limits::default();
    limits.max_payload_bytes = 1234;
    let worker = Worker::builder()
        .store(MemoryStore::new())
        .max_concurrent_orchestrations(2)
        .max_concurrent_activities(0) // at least 1
        .cache_capacity(7)
        .orchestration_lock(Duration::from_secs(11))
        .activity_lock(Duration::from_secs(12))
        .limits(limits)
        .version("2.0", VersionMatch::Strict, VersionMismatchAction::Fail)
        .version_match(VersionMatch::CurrentOrOlder)
        .max_stuck_backoff(Duration::from_secs(13))
        .retention(Duration::from_secs(14 * 3600))
        .start()
        .unwrap();
    let o = worker.options();
    assert_eq!(o.max_concurrent_orchestrations, 2);
    assert_eq!(o.max_concurrent_activities, 1);
    assert_eq!(o.cache_capacity, 7);
    assert_eq!(o.orchestration_lock, Duration::from_secs(11));
    assert_eq!(o.activity_lock, Duration::from_secs(12));
    assert_eq!(o.limits.max_payload_bytes, 1234);
    assert_eq!(o.version.as_deref(), Some("2.0"));
    assert_eq!(
        o.version_match,
        VersionMatch::CurrentOrOlder,
        "the later setter wins"
    );
    assert_eq!(o.on_version_mismatch, VersionMismatchAction::Fail);
    assert_eq!(o.max_stuck_backoff, Duration::from_secs(13));
    assert_eq!(o.retention, Some(Duration::from_secs(14 * 3600)));
    worker.shutdown().await;
}

// ------------------------------------------------ typed accessors, custom status, waits

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Progress {
    done: u32,
    of: u32,
}

#[orchestrator]
async fn import(ctx: OrchestrationContext, files: Vec<String>) -> Result<u32, OrchestrationError> {
    let of = files.len() as u32;
    ctx.set_custom_status(&Progress { done: 0, of })?;
    let _: () = ctx.wait_for_event("go").await?;
    ctx.clear_custom_status();
    let _: () = ctx.wait_for_event("finish").await?;
    Ok(of)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_accessors_wait_until_and_clear_custom_status() {
    let env = start(|b| b.register(import));
    let files = vec!["a.csv".to_owned(), "b.csv".to_owned()];
    let run = import::start(&env.client, files.clone()).await.unwrap();

    // Woken by the store, returns the record that satisfied the predicate.
    let r = run
        .wait_until(|r| r.custom_status.is_some(), GUARD)
        .await
        .unwrap();
    assert_eq!(r.input::<Vec<String>>().unwrap(), files);
    assert_eq!(
        r.custom_status::<Progress>().unwrap(),
        Some(Progress { done: 0, of: 2 })
    );
    assert_eq!(r.output::<u32>().unwrap(), None, "still running");
    let wrong = r.custom_status::<Vec<u8>>().unwrap_err();
    assert!(wrong.expected.contains("Vec<u8>"), "{wrong}");

    // Cleared: no custom status at all, not the JSON text `null`.
    run.raise("go", &()).await.unwrap();
    let r = env
        .client
        .wait_until(run.id(), |r| r.custom_status.is_none(), GUARD)
        .await
        .unwrap();
    assert_eq!(r.custom_status::<Progress>().unwrap(), None);
    let statuses: Vec<_> = run
        .history()
        .await
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.event {
            Event::CustomStatusSet { status } => Some(status),
            _ => None,
        })
        .collect();
    assert_eq!(
        statuses,
        [Some(r#"{"done":0,"of":2}"#.to_owned()), None],
        "recorded as CustomStatusSet {{ status: None }}"
    );

    // A condition that does not come true in time is a typed timeout.
    let err = run
        .wait_until(
            |r| r.status == RuntimeStatus::Terminated,
            Duration::from_millis(1),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Timeout { instance, .. } if instance == run.id().as_str()),
        "{err:?}"
    );

    run.raise("finish", &()).await.unwrap();
    let done = run
        .wait_until(|r| r.status.is_terminal(), GUARD)
        .await
        .unwrap();
    assert_eq!(done.status, RuntimeStatus::Completed);
    assert_eq!(done.output::<u32>().unwrap(), Some(2));

    // Unknown ids are refused at once.
    let unknown = InstanceId::new("nobody").unwrap();
    assert!(matches!(
        env.client.wait_until(&unknown, |_| true, GUARD).await,
        Err(ClientError::InstanceNotFound(_))
    ));
}

#[orchestrator]
async fn stop_here(ctx: OrchestrationContext, _input: ()) -> Result<(), OrchestrationError> {
    let _: () = ctx.wait_for_event("never").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_is_none_for_terminated_and_failed_instances() {
    let env = start(|b| b.register(stop_here));
    let run = stop_here::start(&env.client, ()).await.unwrap();
    run.terminate("enough").await.unwrap();
    let r = run
        .wait_until(|r| r.status.is_terminal(), GUARD)
        .await
        .unwrap();
    assert_eq!(r.status, RuntimeStatus::Terminated);
    // The reason is in the `output` field, but it is not an output.
    assert!(r.output.is_some());
    assert_eq!(r.output::<String>().unwrap(), None);
}
