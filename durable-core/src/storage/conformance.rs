//! The store conformance suite (feature `conformance`): every [`Store`] implementation must
//! pass it. Enable the feature in the dev-dependencies of the crate that implements a store.
//!
//! Each case is a `pub async fn` taking a fresh, empty store and panicking with a message
//! that names what went wrong. Run them one test per case (the way `tests/store.rs` does, so
//! a failure names its case), or all at once with [`run_all`].
//!
//! Time is never read: every case passes `now` explicitly, so lease expiry and delayed
//! messages are tested by passing a later `now`.

use std::sync::Arc;
use std::time::Duration;

use super::{
    ActivityTask, CreateResult, EpisodeCommit, IdReusePolicy, InstanceQuery, LockToken, Message,
    NewInstance, NextExecution, OrchestrationWorkItem, QueueDepths, Store, WorkKind,
};
use crate::error::{FailureDetails, StoreError};
use crate::history::{Event, HistoryEvent, ParentRef, RuntimeStatus};
use crate::ids::{InstanceId, Timestamp};
use crate::trace_context::TraceContext;

/// Runs every case, each against a fresh store from `make`, printing the case name first.
pub async fn run_all(make: impl Fn() -> Arc<dyn Store>) {
    macro_rules! run {
        ($($case:ident),* $(,)?) => {$(
            eprintln!("store conformance: {}", stringify!($case));
            $case(make()).await;
        )*};
    }
    run!(
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
}

// ---------------------------------------------------------------------------------------
// Helpers

/// The suite's epoch.
const T0: Timestamp = Timestamp::from_unix_millis(1_700_000_000_000);
/// A lease long enough not to expire within a case.
const LONG: Duration = Duration::from_secs(24 * 3600);

fn at(ms: u64) -> Timestamp {
    T0 + Duration::from_millis(ms)
}

fn id(s: &str) -> InstanceId {
    InstanceId::new(s).expect("valid instance id")
}

fn new_instance(instance: &str, name: &str, input: &str, created_at: Timestamp) -> NewInstance {
    NewInstance::new(id(instance), name, input.to_owned(), created_at)
}

fn raised(name: &str, visible_at: Timestamp) -> Message {
    Message::new(
        Event::EventRaised {
            name: name.to_owned(),
            input: "null".to_owned(),
        },
        None,
        visible_at,
    )
}

fn ev(index: u64, timestamp: Timestamp, event: Event) -> HistoryEvent {
    HistoryEvent {
        index,
        timestamp,
        event,
    }
}

fn task(instance: &str, seq: u64, name: &str, input: &str) -> ActivityTask {
    ActivityTask::new(id(instance), 1, seq, name, input.to_owned())
}

/// A short label per message: the event name for raised events, else the event kind.
fn labels(messages: &[Message]) -> Vec<String> {
    messages
        .iter()
        .map(|m| match &m.event {
            Event::EventRaised { name, .. } => name.clone(),
            other => other.kind().to_owned(),
        })
        .collect()
}

async fn create(store: &Arc<dyn Store>, new: NewInstance) {
    let what = new.instance_id.to_string();
    let r = store.create_instance(new).await;
    assert!(
        matches!(r, Ok(CreateResult::Created(_))),
        "create_instance(`{what}`) should create it, got {r:?}"
    );
}

async fn fetch(store: &Arc<dyn Store>, now: Timestamp) -> Option<OrchestrationWorkItem> {
    store
        .fetch_orchestration_work(now, LONG)
        .await
        .expect("fetch_orchestration_work")
}

/// Fetches work that must exist, for instance `want`.
async fn fetch_one(store: &Arc<dyn Store>, want: &str, now: Timestamp) -> OrchestrationWorkItem {
    let item = fetch(store, now)
        .await
        .unwrap_or_else(|| panic!("expected work for `{want}` at {now}, found none"));
    assert_eq!(
        item.instance.instance_id.as_str(),
        want,
        "fetched the wrong instance"
    );
    item
}

/// The instance ids of fetched work items, in order.
fn ids_of(items: &[OrchestrationWorkItem]) -> Vec<&str> {
    items
        .iter()
        .map(|i| i.instance.instance_id.as_str())
        .collect()
}

/// Fetches every instance with work at `now` (leasing them all), sorted by id.
async fn fetch_all(store: &Arc<dyn Store>, now: Timestamp) -> Vec<OrchestrationWorkItem> {
    let mut out = Vec::new();
    while let Some(item) = fetch(store, now).await {
        assert!(
            out.iter().all(
                |o: &OrchestrationWorkItem| o.instance.instance_id != item.instance.instance_id
            ),
            "instance `{}` was fetched twice while locked",
            item.instance.instance_id
        );
        out.push(item);
        assert!(
            out.len() < 1000,
            "fetch_orchestration_work never returns None"
        );
    }
    out.sort_by(|a, b| a.instance.instance_id.cmp(&b.instance.instance_id));
    out
}

/// A commit consuming every message of `item`.
fn commit_for(
    item: &OrchestrationWorkItem,
    status: RuntimeStatus,
    now: Timestamp,
) -> EpisodeCommit {
    let mut c = EpisodeCommit::new(item.instance.instance_id.clone(), item.lock, status, now);
    c.consumed = item.messages.iter().map(|m| m.id).collect();
    c
}

async fn commit(store: &Arc<dyn Store>, commit: EpisodeCommit) {
    let what = commit.instance_id.to_string();
    store
        .commit_episode(commit)
        .await
        .unwrap_or_else(|e| panic!("commit_episode(`{what}`) failed: {e}"));
}

/// Runs one episode of the only ready instance `instance` at `now`, consuming its messages
/// and recording `OrchestratorStarted`, then lets `edit` shape the commit.
async fn episode(
    store: &Arc<dyn Store>,
    instance: &str,
    now: Timestamp,
    status: RuntimeStatus,
    edit: impl FnOnce(&mut EpisodeCommit),
) {
    let item = fetch_one(store, instance, now).await;
    let mut c = commit_for(&item, status, now);
    c.new_events
        .push(ev(item.history_len, now, Event::OrchestratorStarted));
    edit(&mut c);
    commit(store, c).await;
}

/// Runs a finishing episode: the instance ends with `status`.
async fn finish(store: &Arc<dyn Store>, instance: &str, now: Timestamp, status: RuntimeStatus) {
    episode(store, instance, now, status, |c| {
        let (output, failure) = if status == RuntimeStatus::Failed {
            (None, Some(FailureDetails::new("Boom", "it failed")))
        } else {
            (Some("\"done\"".to_owned()), None)
        };
        let next = c.new_events.last().map_or(0, |e| e.index + 1);
        c.new_events.push(ev(
            next,
            now,
            Event::ExecutionCompleted {
                status,
                output: output.clone(),
                failure: failure.clone(),
            },
        ));
        c.output = output;
        c.failure = failure;
    })
    .await;
}

async fn record(store: &Arc<dyn Store>, instance: &str) -> super::InstanceRecord {
    store
        .read_instance(&id(instance))
        .await
        .expect("read_instance")
        .unwrap_or_else(|| panic!("instance `{instance}` should exist"))
}

async fn history(store: &Arc<dyn Store>, instance: &str) -> Vec<HistoryEvent> {
    store
        .read_history(&id(instance))
        .await
        .expect("read_history")
}

async fn query_ids(store: &Arc<dyn Store>, query: &InstanceQuery) -> (Vec<String>, Option<String>) {
    let page = store.query_instances(query).await.expect("query_instances");
    (
        page.instances
            .iter()
            .map(|r| r.instance_id.as_str().to_owned())
            .collect(),
        page.continuation,
    )
}

// ---------------------------------------------------------------------------------------
// Cases

/// A created instance reads back as Pending, execution 1, with `ExecutionStarted` in its inbox.
pub async fn create_and_fetch(store: Arc<dyn Store>) {
    let mut new = new_instance("a", "Greet", "\"hi\"", T0);
    new.version = Some("v1".to_owned());
    create(&store, new).await;

    let r = record(&store, "a").await;
    assert_eq!(r.instance_id.as_str(), "a");
    assert_eq!(r.name, "Greet");
    assert_eq!(r.version.as_deref(), Some("v1"));
    assert_eq!(r.execution, 1, "a new instance is execution 1");
    assert_eq!(
        r.status,
        RuntimeStatus::Pending,
        "a new instance is Pending"
    );
    assert_eq!(r.input, "\"hi\"");
    assert_eq!(r.output, None);
    assert_eq!(r.failure, None);
    assert_eq!(r.custom_status, None);
    assert_eq!(r.created_at, T0);
    assert_eq!(r.last_updated_at, T0);
    assert_eq!(r.parent, None);
    assert_eq!(r.last_error, None);
    assert!(
        history(&store, "a").await.is_empty(),
        "a new instance has no history"
    );
    assert_eq!(
        store
            .read_instance(&id("nope"))
            .await
            .expect("read_instance"),
        None
    );
    assert!(history(&store, "nope").await.is_empty());

    let item = fetch_one(&store, "a", T0).await;
    assert_eq!(
        item.instance, r,
        "the work item carries the instance record"
    );
    assert_eq!(item.history_len, 0);
    assert_eq!(
        item.messages.len(),
        1,
        "exactly the start message: {:?}",
        item.messages
    );
    let m = &item.messages[0];
    assert_eq!(m.id.visible_at, T0);
    match &m.event {
        Event::ExecutionStarted {
            name,
            input,
            version,
            ..
        } => {
            assert_eq!(name, "Greet");
            assert_eq!(input, "\"hi\"");
            assert_eq!(version.as_deref(), Some("v1"));
        }
        other => panic!("expected ExecutionStarted, got {other:?}"),
    }
    assert!(
        fetch(&store, T0).await.is_none(),
        "a locked instance is not fetched again"
    );
}

/// A scheduled start is invisible until its time.
pub async fn scheduled_start(store: Arc<dyn Store>) {
    let mut new = new_instance("later", "Greet", "null", T0);
    new.scheduled_start = Some(at(60_000));
    create(&store, new).await;
    assert_eq!(
        record(&store, "later").await.scheduled_start,
        Some(at(60_000))
    );
    assert!(
        fetch(&store, at(59_999)).await.is_none(),
        "not visible before its scheduled start"
    );
    let item = fetch_one(&store, "later", at(60_000)).await;
    assert_eq!(labels(&item.messages), ["ExecutionStarted"]);
    assert_eq!(item.messages[0].id.visible_at, at(60_000));
}

/// `ReplaceFinished` replaces a finished instance (execution + 1) and rejects a running one.
pub async fn id_reuse_replace_finished(store: Arc<dyn Store>) {
    create(&store, new_instance("a", "Job", "1", T0)).await;
    let again = store
        .create_instance(new_instance("a", "Job", "2", T0))
        .await;
    assert_eq!(
        again,
        Err(StoreError::InstanceAlreadyExists("a".into())),
        "a pending instance is running: not replaced"
    );
    finish(&store, "a", at(10), RuntimeStatus::Completed).await;
    assert_eq!(history(&store, "a").await.len(), 2);

    create(&store, new_instance("a", "Job", "2", at(1000))).await;
    let r = record(&store, "a").await;
    assert_eq!(r.execution, 2, "replacing bumps the execution");
    assert_eq!(r.status, RuntimeStatus::Pending);
    assert_eq!(r.input, "2");
    assert_eq!(r.output, None);
    assert_eq!(r.created_at, at(1000));
    assert!(
        history(&store, "a").await.is_empty(),
        "the old history is gone"
    );

    let item = fetch_one(&store, "a", at(1000)).await;
    assert_eq!(
        labels(&item.messages),
        ["ExecutionStarted"],
        "only the new start message"
    );
    match &item.messages[0].event {
        Event::ExecutionStarted { input, .. } => assert_eq!(input, "2"),
        other => panic!("expected ExecutionStarted, got {other:?}"),
    }
    commit(&store, commit_for(&item, RuntimeStatus::Running, at(1001))).await;
    let running = store
        .create_instance(new_instance("a", "Job", "3", at(2000)))
        .await;
    assert_eq!(running, Err(StoreError::InstanceAlreadyExists("a".into())));
    let r = record(&store, "a").await;
    assert_eq!(
        (r.execution, r.status, r.input.as_str()),
        (2, RuntimeStatus::Running, "2")
    );

    // Created answers with the record it wrote. A replacement created at the very time of
    // the run it replaces (a clock that did not move) still gets a later creation time:
    // the creation time tells the runs of one id apart.
    create(&store, new_instance("b", "Job", "1", at(3000))).await;
    finish(&store, "b", at(3000), RuntimeStatus::Completed).await;
    let same_tick = store
        .create_instance(new_instance("b", "Job", "2", at(3000)))
        .await;
    let Ok(CreateResult::Created(created)) = same_tick else {
        panic!("a finished instance is replaced, got {same_tick:?}");
    };
    let r = record(&store, "b").await;
    assert_eq!(
        created, r,
        "the record Created answers with is the one stored"
    );
    assert_eq!(r.execution, 2);
    assert!(
        r.created_at > at(3000),
        "the replacement's creation time is later than the replaced run's: {}",
        r.created_at
    );
}

/// `RejectExisting` rejects whenever the id exists.
pub async fn id_reuse_reject_existing(store: Arc<dyn Store>) {
    create(&store, new_instance("a", "Job", "1", T0)).await;
    let mut dup = new_instance("a", "Job", "2", T0);
    dup.reuse = IdReusePolicy::RejectExisting;
    assert_eq!(
        store.create_instance(dup.clone()).await,
        Err(StoreError::InstanceAlreadyExists("a".into()))
    );
    finish(&store, "a", at(10), RuntimeStatus::Completed).await;
    assert_eq!(
        store.create_instance(dup).await,
        Err(StoreError::InstanceAlreadyExists("a".into())),
        "RejectExisting also rejects a finished instance"
    );
    let r = record(&store, "a").await;
    assert_eq!((r.execution, r.status), (1, RuntimeStatus::Completed));
}

/// `DedupeRunning` returns the running instance, and replaces a finished one.
pub async fn id_reuse_dedupe_running(store: Arc<dyn Store>) {
    create(&store, new_instance("a", "Job", "1", T0)).await;
    let mut dup = new_instance("a", "Job", "2", at(5));
    dup.reuse = IdReusePolicy::DedupeRunning;
    match store.create_instance(dup.clone()).await {
        Ok(CreateResult::Existing(r)) => {
            assert_eq!(r.instance_id.as_str(), "a");
            assert_eq!((r.execution, r.input.as_str()), (1, "1"));
        }
        other => panic!("expected Existing, got {other:?}"),
    }
    let item = fetch_one(&store, "a", T0).await;
    assert_eq!(
        labels(&item.messages),
        ["ExecutionStarted"],
        "dedupe enqueued nothing"
    );
    store
        .abandon_episode(&id("a"), item.lock, T0, None)
        .await
        .expect("abandon_episode");

    finish(&store, "a", at(10), RuntimeStatus::Failed).await;
    assert_eq!(record(&store, "a").await.status, RuntimeStatus::Failed);
    assert!(matches!(
        store.create_instance(dup).await,
        Ok(CreateResult::Created(_))
    ));
    let r = record(&store, "a").await;
    assert_eq!(
        (r.execution, r.status, r.input.as_str()),
        (2, RuntimeStatus::Pending, "2")
    );
    assert_eq!(r.failure, None);
}

fn sub_created(index: u64, now: Timestamp, seq: u64, child: &str) -> HistoryEvent {
    ev(
        index,
        now,
        Event::SubOrchestrationCreated {
            seq,
            name: "Child".into(),
            instance_id: id(child),
            input: "null".into(),
            version: None,
            location: None,
        },
    )
}

/// A commit of `item` that records it started `children` (seq, id), creating them.
fn starting_children(
    item: &OrchestrationWorkItem,
    now: Timestamp,
    children: &[(u64, &str)],
) -> EpisodeCommit {
    let mut c = commit_for(item, RuntimeStatus::Running, now);
    let parent = item.instance.instance_id.as_str();
    let mut next = item.history_len;
    c.new_events.push(ev(next, now, Event::OrchestratorStarted));
    for (seq, child) in children {
        next += 1;
        c.new_events.push(sub_created(next, now, *seq, child));
        let mut new = new_instance(child, "Child", "null", now);
        new.parent = Some(ParentRef {
            instance_id: id(parent),
            execution: item.instance.execution,
            seq: *seq,
        });
        c.new_instances.push((*seq, new));
    }
    c
}

/// `TerminateRunning` replaces a running instance in one step: the replaced execution's
/// tree is terminated (running children, and running descendants under finished ones), its
/// entity locks are released, its parent is told, and the new execution starts clean.
#[allow(clippy::too_many_lines, reason = "one scenario, asserted step by step")]
pub async fn id_reuse_terminate_running(store: Arc<dyn Store>) {
    create(&store, new_instance("gp", "Grandparent", "null", T0)).await;
    create(&store, new_instance("ent", "Entity", "null", T0)).await;
    create(&store, new_instance("other", "Other", "null", T0)).await;
    let mut parent = new_instance("p", "Parent", "1", T0);
    parent.parent = Some(ParentRef {
        instance_id: id("gp"),
        execution: 1,
        seq: 5,
    });
    create(&store, parent).await;
    for i in fetch_all(&store, T0).await {
        let status = RuntimeStatus::Running;
        if i.instance.instance_id == id("p") {
            // p starts two children, holds a lock on `ent`, and claims `other` (an
            // instance it did not create) as a child.
            let mut c = starting_children(&i, at(1), &[(0, "p:0"), (1, "p:1")]);
            let mut next = c.new_events.last().map_or(0, |e| e.index + 1);
            c.new_events.push(sub_created(next, at(1), 2, "other"));
            next += 1;
            c.new_events.push(ev(
                next,
                at(1),
                Event::EntityLockGranted {
                    seq: 3,
                    entities: vec![id("ent")],
                },
            ));
            commit(&store, c).await;
        } else {
            commit(&store, commit_for(&i, status, at(1))).await;
        }
    }
    // p:0 starts a grandchild and completes; p:1 stays pending; the grandchild runs, leased
    // by a worker in the middle of an episode.
    let c0 = fetch_one(&store, "p:0", at(2)).await;
    let mut done = starting_children(&c0, at(2), &[(0, "p:0:0")]);
    done.status = RuntimeStatus::Completed;
    done.output = Some("\"done\"".into());
    commit(&store, done).await;
    let leased = fetch_all(&store, at(3)).await;
    let leased_ids = ids_of(&leased);
    assert_eq!(leased_ids, ["p:0:0", "p:1"]);
    store
        .send_message(&id("p"), raised("old", at(3)))
        .await
        .expect("send to p");

    let mut finished = store.signals().finished.subscribe();
    finished.borrow_and_update();
    let mut again = new_instance("p", "Parent", "2", at(10));
    again.reuse = IdReusePolicy::TerminateRunning;
    let created = store.create_instance(again).await;
    assert!(
        matches!(created, Ok(CreateResult::Created(_))),
        "TerminateRunning replaces a running instance, got {created:?}"
    );
    assert!(
        finished.has_changed().unwrap_or(false),
        "instances were terminated: `finished` must wake whoever waits for them"
    );
    let p = record(&store, "p").await;
    assert_eq!(
        (p.execution, p.status, p.input.as_str(), p.parent.as_ref()),
        (2, RuntimeStatus::Pending, "2", None),
        "the new execution"
    );
    assert!(history(&store, "p").await.is_empty(), "a fresh history");

    for gone in ["p:1", "p:0:0"] {
        let r = record(&store, gone).await;
        assert_eq!(r.status, RuntimeStatus::Terminated, "`{gone}` terminated");
        let h = history(&store, gone).await;
        let n = h.len();
        assert!(
            n >= 2
                && matches!(h[n - 2].event, Event::ExecutionTerminated { .. })
                && matches!(
                    h[n - 1].event,
                    Event::ExecutionCompleted {
                        status: RuntimeStatus::Terminated,
                        ..
                    }
                ),
            "`{gone}` history records the termination: {h:?}"
        );
        assert_eq!(h[n - 1].index, n as u64 - 1);
    }
    assert_eq!(
        record(&store, "p:0").await.status,
        RuntimeStatus::Completed,
        "a finished child keeps its outcome"
    );
    assert_eq!(
        record(&store, "other").await.status,
        RuntimeStatus::Running,
        "an instance that is not p's child is left alone"
    );
    for item in &leased {
        let lost = store
            .commit_episode(commit_for(item, RuntimeStatus::Running, at(11)))
            .await;
        assert_eq!(
            lost,
            Err(StoreError::LockLost(item.instance.instance_id.to_string())),
            "the lease on a terminated descendant is gone"
        );
    }

    let items = fetch_all(&store, at(20)).await;
    let got: Vec<(String, Vec<String>)> = items
        .iter()
        .map(|i| (i.instance.instance_id.to_string(), labels(&i.messages)))
        .collect();
    let want = |id: &str, l: &[&str]| {
        (
            id.to_owned(),
            l.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
        )
    };
    assert_eq!(
        got,
        [
            want("ent", &["EntityUnlock"]),
            want("gp", &["SubOrchestrationFailed"]),
            want("p", &["ExecutionStarted"]),
        ],
        "the lock is released, the parent told, and the new inbox holds only the start"
    );
    match &items[1].messages[0] {
        Message {
            event: Event::SubOrchestrationFailed { seq: 5, failure },
            execution: Some(1),
            ..
        } => assert_eq!(failure.error_type, "Terminated"),
        other => panic!("expected the parent's SubOrchestrationFailed, got {other:?}"),
    }
    match &items[0].messages[0].event {
        Event::EntityUnlock { owner, .. } => assert_eq!(owner, &id("p")),
        other => panic!("expected EntityUnlock, got {other:?}"),
    }

    // A finished instance is replaced as with the default policy.
    for i in &items {
        let status = if i.instance.instance_id == id("p") {
            RuntimeStatus::Completed
        } else {
            RuntimeStatus::Running
        };
        commit(&store, commit_for(i, status, at(21))).await;
    }
    let mut third = new_instance("p", "Parent", "3", at(30));
    third.reuse = IdReusePolicy::TerminateRunning;
    create(&store, third).await;
    let p = record(&store, "p").await;
    assert_eq!((p.execution, p.status), (3, RuntimeStatus::Pending));
}

/// Suspend and resume are checked against the state with the requests already queued:
/// no second suspend, no resume of an instance that is not suspended; a refused request
/// enqueues nothing.
pub async fn suspend_and_resume_follow_the_state(store: Arc<dyn Store>) {
    let suspend = || {
        Message::new(
            Event::ExecutionSuspended {
                reason: String::new(),
            },
            None,
            T0,
        )
    };
    let resume = || {
        Message::new(
            Event::ExecutionResumed {
                reason: String::new(),
            },
            None,
            T0,
        )
    };
    let invalid = |status, operation| {
        Err(StoreError::InvalidState {
            instance: "a".into(),
            status,
            operation,
        })
    };
    create(&store, new_instance("a", "Job", "null", T0)).await;
    let a = id("a");
    assert_eq!(
        store.send_message(&a, resume()).await,
        invalid(RuntimeStatus::Pending, "resume")
    );
    store.send_message(&a, suspend()).await.expect("suspend");
    assert_eq!(
        store.send_message(&a, suspend()).await,
        invalid(RuntimeStatus::Suspended, "suspend"),
        "a suspend is queued"
    );
    store.send_message(&a, resume()).await.expect("resume");
    assert_eq!(
        store.send_message(&a, resume()).await,
        invalid(RuntimeStatus::Pending, "resume"),
        "a resume is queued"
    );
    store
        .send_message(&a, suspend())
        .await
        .expect("suspend again");
    let item = fetch_one(&store, "a", T0).await;
    assert_eq!(
        labels(&item.messages),
        [
            "ExecutionStarted",
            "ExecutionSuspended",
            "ExecutionResumed",
            "ExecutionSuspended"
        ],
        "only the accepted requests were queued"
    );
    commit(&store, commit_for(&item, RuntimeStatus::Suspended, at(1))).await;
    assert_eq!(
        store.send_message(&a, suspend()).await,
        invalid(RuntimeStatus::Suspended, "suspend")
    );
    store.send_message(&a, resume()).await.expect("resume");
    assert_eq!(
        store.send_message(&a, resume()).await,
        invalid(RuntimeStatus::Running, "resume")
    );
    let item = fetch_one(&store, "a", at(2)).await;
    commit(&store, commit_for(&item, RuntimeStatus::Running, at(2))).await;
    assert_eq!(
        store.send_message(&a, resume()).await,
        invalid(RuntimeStatus::Running, "resume")
    );
    store
        .send_message(&a, raised("x", at(3)))
        .await
        .expect("send");
    finish(&store, "a", at(3), RuntimeStatus::Completed).await;
    assert_eq!(
        store.send_message(&a, suspend()).await,
        Err(StoreError::InstanceNotRunning("a".into())),
        "a finished instance is not running, whatever the request"
    );
}

/// A commit's `last_error` is shown in the record; the next commit without one clears it.
pub async fn commit_records_last_error(store: Arc<dyn Store>) {
    create(&store, new_instance("a", "Job", "null", T0)).await;
    let item = fetch_one(&store, "a", T0).await;
    let mut c = commit_for(&item, RuntimeStatus::Running, at(1));
    c.last_error = Some("declined: because".into());
    commit(&store, c).await;
    assert_eq!(
        record(&store, "a").await.last_error.as_deref(),
        Some("declined: because")
    );
    store
        .send_message(&id("a"), raised("x", at(1)))
        .await
        .expect("send");
    let item = fetch_one(&store, "a", at(1)).await;
    commit(&store, commit_for(&item, RuntimeStatus::Running, at(2))).await;
    assert_eq!(record(&store, "a").await.last_error, None);
}

/// One commit appends history, consumes messages, enqueues activities, timers and messages,
/// and creates sub-orchestrations.
#[allow(clippy::too_many_lines, reason = "one scenario, asserted step by step")]
pub async fn commit_applies_everything(store: Arc<dyn Store>) {
    create(&store, new_instance("p", "Parent", "1", T0)).await;
    let item = fetch_one(&store, "p", T0).await;
    create(&store, new_instance("o", "Other", "null", T0)).await;

    let now = at(1000);
    let fire_at = at(10_000);
    let mut c = commit_for(&item, RuntimeStatus::Running, now);
    c.new_events = first_steps(now, item.messages[0].event.clone(), fire_at);
    c.new_events.extend([
        ev(
            4,
            now,
            Event::SubOrchestrationCreated {
                seq: 2,
                name: "Child".into(),
                instance_id: id("c"),
                input: "7".into(),
                version: None,
                location: None,
            },
        ),
        ev(
            5,
            now,
            Event::EventSent {
                seq: 3,
                instance_id: id("o"),
                name: "ping".into(),
                input: "null".into(),
                location: None,
            },
        ),
    ]);
    c.custom_status = Some("\"busy\"".into());
    c.activities = vec![task("p", 0, "charge", "5")];
    c.messages = vec![
        (
            id("p"),
            Message::new(Event::TimerFired { seq: 1, fire_at }, Some(1), fire_at),
        ),
        (id("o"), raised("ping", now)),
        (id("ghost"), raised("lost", now)),
    ];
    let mut child = new_instance("c", "Child", "7", now);
    child.parent = Some(ParentRef {
        instance_id: id("p"),
        execution: 1,
        seq: 2,
    });
    c.new_instances = vec![(2, child)];
    let events = c.new_events.clone();
    commit(&store, c).await;

    assert_eq!(
        history(&store, "p").await,
        events,
        "history is the appended events"
    );
    let p = record(&store, "p").await;
    assert_eq!(p.status, RuntimeStatus::Running);
    assert_eq!(p.custom_status.as_deref(), Some("\"busy\""));
    assert_eq!(p.last_updated_at, now);
    assert_eq!(p.execution, 1);
    let child = record(&store, "c").await;
    assert_eq!(
        (child.status, child.execution, child.input.as_str()),
        (RuntimeStatus::Pending, 1, "7")
    );
    assert_eq!(
        child.parent,
        Some(ParentRef {
            instance_id: id("p"),
            execution: 1,
            seq: 2
        })
    );
    assert_eq!(
        store
            .read_instance(&id("ghost"))
            .await
            .expect("read_instance"),
        None,
        "a message to an unknown instance creates nothing"
    );

    let items = fetch_all(&store, now).await;
    let ids = ids_of(&items);
    assert_eq!(
        ids,
        ["c", "o"],
        "p's start was consumed and its timer is not visible yet"
    );
    assert_eq!(labels(&items[0].messages), ["ExecutionStarted"]);
    match &items[0].messages[0].event {
        Event::ExecutionStarted { parent, .. } => {
            assert_eq!(parent.as_ref().map(|p| p.instance_id.as_str()), Some("p"));
        }
        other => panic!("expected ExecutionStarted, got {other:?}"),
    }
    assert_eq!(labels(&items[1].messages), ["ExecutionStarted", "ping"]);
    assert!(
        fetch(&store, at(9_999)).await.is_none(),
        "the timer is invisible before its time"
    );

    let tasks = store
        .fetch_activity_work(now, LONG, 10)
        .await
        .expect("fetch_activity_work");
    assert_eq!(tasks.len(), 1, "one activity was enqueued");
    assert_eq!(tasks[0].task, task("p", 0, "charge", "5"));

    let timer = fetch_one(&store, "p", fire_at).await;
    assert_eq!(timer.history_len, 6);
    assert_eq!(labels(&timer.messages), ["TimerFired"]);
    assert_eq!(timer.messages[0].execution, Some(1));
    assert_eq!(timer.messages[0].id.visible_at, fire_at);
}

/// A child id taken by a running instance is refused: the parent gets `SubOrchestrationFailed`.
pub async fn sub_orchestration_refused_when_child_running(store: Arc<dyn Store>) {
    create(&store, new_instance("p", "Parent", "1", T0)).await;
    let item = fetch_one(&store, "p", T0).await;
    create(&store, new_instance("c", "Child", "\"orig\"", T0)).await;

    let mut c = commit_for(&item, RuntimeStatus::Running, at(5));
    let mut child = new_instance("c", "Child", "\"new\"", at(5));
    child.parent = Some(ParentRef {
        instance_id: id("p"),
        execution: 1,
        seq: 7,
    });
    c.new_instances = vec![(7, child)];
    commit(&store, c).await;

    let items = fetch_all(&store, at(5)).await;
    let ids = ids_of(&items);
    assert_eq!(ids, ["c", "p"]);
    assert_eq!(
        labels(&items[0].messages),
        ["ExecutionStarted"],
        "the running child is untouched"
    );
    let refusal = &items[1].messages;
    assert_eq!(labels(refusal), ["SubOrchestrationFailed"]);
    assert_eq!(refusal[0].execution, Some(1));
    match &refusal[0].event {
        Event::SubOrchestrationFailed { seq, failure } => {
            assert_eq!(*seq, 7);
            assert!(
                failure.message.contains("`c`"),
                "failure names the child: {failure}"
            );
        }
        other => panic!("expected SubOrchestrationFailed, got {other:?}"),
    }
    let child = record(&store, "c").await;
    assert_eq!((child.execution, child.input.as_str()), (1, "\"orig\""));
    assert_eq!(child.parent, None);
}

/// A sub-orchestration may not take its parent's id, even when the parent is finished and
/// `ReplaceFinished` would otherwise replace it: the parent gets `SubOrchestrationFailed`.
pub async fn sub_orchestration_with_parents_id_is_refused(store: Arc<dyn Store>) {
    create(&store, new_instance("p", "Parent", "1", T0)).await;
    finish(&store, "p", T0, RuntimeStatus::Completed).await;
    // Messages from other instances' commits reach a finished instance, so it is fetched.
    create(&store, new_instance("o", "Other", "null", T0)).await;
    episode(&store, "o", T0, RuntimeStatus::Running, |c| {
        c.messages = vec![(id("p"), raised("late", T0))];
    })
    .await;
    let item = fetch_one(&store, "p", T0).await;
    assert_eq!(labels(&item.messages), ["late"]);
    let mut c = commit_for(&item, RuntimeStatus::Completed, at(1));
    c.output = Some("\"done\"".into());
    c.new_instances = vec![(4, new_instance("p", "Parent", "2", at(1)))];
    commit(&store, c).await;
    let r = record(&store, "p").await;
    assert_eq!(
        (r.execution, r.input.as_str()),
        (1, "1"),
        "the parent was not replaced"
    );
    let item = fetch_one(&store, "p", at(1)).await;
    assert_eq!(labels(&item.messages), ["SubOrchestrationFailed"]);
}

/// Continue-as-new resets history, bumps the execution and enqueues the new start messages.
pub async fn continue_as_new(store: Arc<dyn Store>) {
    create(&store, new_instance("a", "Loop", "1", T0)).await;
    let item = fetch_one(&store, "a", T0).await;
    let now = at(100);
    let mut c = commit_for(&item, RuntimeStatus::Running, now);
    c.new_events = vec![
        ev(0, now, Event::OrchestratorStarted),
        ev(
            1,
            now,
            Event::ContinuedAsNew {
                input: "2".into(),
                version: Some("v2".into()),
            },
        ),
    ];
    c.output = Some("\"ignored\"".into());
    let start = Message::new(
        Event::ExecutionStarted {
            name: "Loop".into(),
            version: Some("v2".into()),
            input: "2".into(),
            parent: None,
            scheduled_start: None,
            carried: Vec::new(),
            trace_context: None,
        },
        None,
        now,
    );
    c.next_execution = Some(NextExecution {
        input: "2".into(),
        version: Some("v2".into()),
        messages: vec![start, raised("carried", now)],
    });
    commit(&store, c).await;

    assert!(
        history(&store, "a").await.is_empty(),
        "continue-as-new resets history"
    );
    let r = record(&store, "a").await;
    assert_eq!(r.execution, 2, "continue-as-new bumps the execution");
    assert_eq!(r.status, RuntimeStatus::ContinuedAsNew);
    assert_eq!(r.input, "2");
    assert_eq!(r.version.as_deref(), Some("v2"));
    assert_eq!(r.output, None);

    let next = fetch_one(&store, "a", now).await;
    assert_eq!(next.history_len, 0);
    assert_eq!(labels(&next.messages), ["ExecutionStarted", "carried"]);
    let mut c = commit_for(&next, RuntimeStatus::Running, at(200));
    c.new_events = vec![ev(0, at(200), Event::OrchestratorStarted)];
    commit(&store, c).await;
    let h = history(&store, "a").await;
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].event, Event::OrchestratorStarted);
}

/// Messages come by visibility time, then arrival; instances by their earliest message.
pub async fn message_order(store: Arc<dyn Store>) {
    create(&store, new_instance("a", "Job", "null", T0)).await;
    let a = id("a");
    for (name, ms) in [("m1", 5), ("m2", 1), ("m3", 1), ("m4", 100)] {
        store
            .send_message(&a, raised(name, at(ms)))
            .await
            .expect("send_message");
    }
    let item = fetch_one(&store, "a", at(10)).await;
    assert_eq!(
        labels(&item.messages),
        ["ExecutionStarted", "m2", "m3", "m1"],
        "ordered by visible_at then arrival; m4 is not visible yet"
    );
    assert!(
        item.messages.windows(2).all(|w| w[0].id < w[1].id),
        "message ids increase in delivery order"
    );

    let mut x = new_instance("x", "Job", "null", T0);
    x.scheduled_start = Some(at(5));
    let mut y = new_instance("y", "Job", "null", T0);
    y.scheduled_start = Some(at(3));
    create(&store, x).await;
    create(&store, y).await;
    fetch_one(&store, "y", at(10)).await;
    fetch_one(&store, "x", at(10)).await;
}

/// Episodes of several instances committed at once (a store may commit them in one
/// transaction): each is applied, except the one whose lease was taken over, which fails
/// with `LockLost` and changes nothing.
pub async fn concurrent_commits_keep_their_own_outcomes(store: Arc<dyn Store>) {
    let lease = Duration::from_secs(30);
    create(&store, new_instance("b", "Job", "null", T0)).await;
    let stale = store
        .fetch_orchestration_work(T0, lease)
        .await
        .expect("fetch")
        .expect("work for b");
    create(&store, new_instance("a", "Job", "null", T0)).await;
    create(&store, new_instance("c", "Job", "null", T0)).await;
    let now = at(30_000);
    let mut leased = std::collections::HashMap::new();
    for _ in 0..3 {
        let item = store
            .fetch_orchestration_work(now, lease)
            .await
            .expect("fetch")
            .expect("three instances due");
        leased.insert(item.instance.instance_id.to_string(), item);
    }
    let done = |item: &OrchestrationWorkItem, output: &str| {
        let mut c = commit_for(item, RuntimeStatus::Completed, at(30_001));
        c.new_events = vec![ev(0, at(30_001), Event::OrchestratorStarted)];
        c.output = Some(output.into());
        c
    };
    let (ra, rb, rc) = tokio::join!(
        store.commit_episode(done(&leased["a"], "\"a\"")),
        store.commit_episode(done(&stale, "\"stale\"")),
        store.commit_episode(done(&leased["c"], "\"c\"")),
    );
    assert!(ra.is_ok() && rc.is_ok(), "a: {ra:?}, c: {rc:?}");
    assert!(
        matches!(rb, Err(StoreError::LockLost(_))),
        "the stale commit must fail, got {rb:?}"
    );
    for (instance, output) in [("a", "\"a\""), ("c", "\"c\"")] {
        let rec = record(&store, instance).await;
        assert_eq!(
            (rec.status, rec.output.as_deref()),
            (RuntimeStatus::Completed, Some(output))
        );
        assert_eq!(history(&store, instance).await.len(), 1);
    }
    assert!(
        history(&store, "b").await.is_empty(),
        "the stale commit changed nothing"
    );
    assert_eq!(record(&store, "b").await.status, RuntimeStatus::Pending);
    // The new lease on b still commits.
    commit(&store, done(&leased["b"], "\"b\"")).await;
    assert_eq!(record(&store, "b").await.output.as_deref(), Some("\"b\""));
}

/// A locked instance is not fetched again until its lease expires; a stale token's commit
/// fails with `LockLost` and changes nothing.
pub async fn lease_excludes_and_expires(store: Arc<dyn Store>) {
    let lease = Duration::from_secs(30);
    create(&store, new_instance("a", "Job", "null", T0)).await;
    let first = store
        .fetch_orchestration_work(T0, lease)
        .await
        .expect("fetch")
        .expect("work for a");
    assert!(fetch(&store, T0).await.is_none(), "locked");
    store
        .send_message(&id("a"), raised("late", T0))
        .await
        .expect("send_message");
    assert!(fetch(&store, at(29_999)).await.is_none(), "still locked");
    let second = fetch_one(&store, "a", at(30_000)).await;
    assert_ne!(second.lock, first.lock, "a new lease has a new token");
    assert_eq!(labels(&second.messages), ["ExecutionStarted", "late"]);

    let mut stale = commit_for(&first, RuntimeStatus::Completed, at(30_001));
    stale.new_events = vec![ev(0, at(30_001), Event::OrchestratorStarted)];
    stale.output = Some("\"stale\"".into());
    stale.activities = vec![task("a", 0, "x", "null")];
    stale.messages = vec![(id("a"), raised("from-stale", at(30_001)))];
    let r = store.commit_episode(stale).await;
    assert!(
        matches!(r, Err(StoreError::LockLost(_))),
        "stale commit must fail, got {r:?}"
    );
    let r = store
        .abandon_episode(&id("a"), first.lock, at(40_000), Some("stale".into()))
        .await;
    assert!(
        matches!(r, Err(StoreError::LockLost(_))),
        "stale abandon must fail, got {r:?}"
    );

    assert!(
        history(&store, "a").await.is_empty(),
        "the stale commit changed nothing"
    );
    let rec = record(&store, "a").await;
    assert_eq!(
        (rec.status, rec.output.as_deref(), rec.last_error.as_deref()),
        (RuntimeStatus::Pending, None, None)
    );
    assert!(
        store
            .fetch_activity_work(at(30_001), LONG, 10)
            .await
            .expect("fetch_activity_work")
            .is_empty(),
        "the stale commit enqueued nothing"
    );

    let mut c = EpisodeCommit::new(id("a"), second.lock, RuntimeStatus::Running, at(30_002));
    c.consumed = vec![second.messages[0].id];
    commit(&store, c).await;
    let rest = fetch_one(&store, "a", at(30_002)).await;
    assert_eq!(
        labels(&rest.messages),
        ["late"],
        "only consumed messages are removed"
    );
}

/// An activity lease that expires puts the task back in the queue.
pub async fn activity_lease_expiry_requeues(store: Arc<dyn Store>) {
    create(&store, new_instance("a", "Job", "null", T0)).await;
    episode(&store, "a", T0, RuntimeStatus::Running, |c| {
        c.activities = vec![task("a", 0, "one", "1"), task("a", 1, "two", "2")];
    })
    .await;
    let lease = Duration::from_secs(10);
    let first = store
        .fetch_activity_work(T0, lease, 1)
        .await
        .expect("fetch");
    assert_eq!(first.len(), 1, "at most `max` tasks");
    assert_eq!(first[0].task.name, "one", "tasks come in enqueue order");
    let second = store
        .fetch_activity_work(T0, lease, 10)
        .await
        .expect("fetch");
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].task.name, "two");
    assert!(
        store
            .fetch_activity_work(at(9_999), lease, 10)
            .await
            .expect("fetch")
            .is_empty(),
        "leased tasks are not fetched again"
    );
    let again = store
        .fetch_activity_work(at(10_000), lease, 10)
        .await
        .expect("fetch");
    let mut names: Vec<&str> = again.iter().map(|w| w.task.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["one", "two"], "expired leases put the tasks back");
    let one = again
        .iter()
        .find(|w| w.task.name == "one")
        .expect("task one");
    assert_eq!(one.id, first[0].id, "the same task comes back");
    assert_ne!(one.lock, first[0].lock, "under a new lease");

    let result = Message::new(
        Event::TaskCompleted {
            seq: 0,
            result: "1".into(),
        },
        Some(1),
        at(10_000),
    );
    let r = store
        .complete_activity(first[0].id, first[0].lock, result.clone())
        .await;
    assert!(
        matches!(r, Err(StoreError::LockLost(_))),
        "stale completion must fail, got {r:?}"
    );
    let r = store
        .abandon_activity(first[0].id, first[0].lock, at(10_000))
        .await;
    assert!(
        matches!(r, Err(StoreError::LockLost(_))),
        "stale abandon must fail, got {r:?}"
    );
    assert!(
        fetch(&store, at(10_000)).await.is_none(),
        "the stale completion enqueued nothing"
    );
    store
        .complete_activity(one.id, one.lock, result)
        .await
        .expect("complete_activity");
    let item = fetch_one(&store, "a", at(10_000)).await;
    assert_eq!(labels(&item.messages), ["TaskCompleted"]);
}

/// Completing a task removes it and enqueues its result, atomically; a finished instance
/// drops the result.
pub async fn complete_activity_enqueues_result(store: Arc<dyn Store>) {
    create(&store, new_instance("a", "Job", "null", T0)).await;
    episode(&store, "a", T0, RuntimeStatus::Running, |c| {
        c.activities = vec![task("a", 0, "one", "1"), task("a", 1, "two", "2")];
    })
    .await;
    let work = store
        .fetch_activity_work(T0, LONG, 10)
        .await
        .expect("fetch");
    assert_eq!(work.len(), 2);
    assert_eq!(work[0].task, task("a", 0, "one", "1"));
    assert_ne!(work[0].id, work[1].id, "task ids are unique");

    let result = Message::new(
        Event::TaskCompleted {
            seq: 0,
            result: "42".into(),
        },
        Some(1),
        at(100),
    );
    store
        .complete_activity(work[0].id, work[0].lock, result.clone())
        .await
        .expect("complete_activity");
    let r = store
        .complete_activity(work[0].id, work[0].lock, result)
        .await;
    assert!(
        matches!(r, Err(StoreError::LockLost(_))),
        "a task completes once, got {r:?}"
    );

    let item = fetch_one(&store, "a", at(100)).await;
    assert_eq!(labels(&item.messages), ["TaskCompleted"]);
    assert_eq!(item.messages[0].execution, Some(1));
    assert_eq!(
        item.messages[0].event,
        Event::TaskCompleted {
            seq: 0,
            result: "42".into()
        }
    );
    // Finish the instance: the second task's result is then dropped.
    let mut c = commit_for(&item, RuntimeStatus::Completed, at(101));
    c.output = Some("\"done\"".into());
    commit(&store, c).await;
    store
        .complete_activity(
            work[1].id,
            work[1].lock,
            Message::new(
                Event::TaskCompleted {
                    seq: 1,
                    result: "2".into(),
                },
                Some(1),
                at(102),
            ),
        )
        .await
        .expect("complete_activity");
    assert!(
        fetch(&store, at(102)).await.is_none(),
        "a finished instance gets no result"
    );
    let far = at(365 * 24 * 3600 * 1000);
    assert!(
        store
            .fetch_activity_work(far, LONG, 10)
            .await
            .expect("fetch")
            .is_empty(),
        "completed tasks are gone from the queue"
    );
}

/// An abandoned task is visible again at `retry_at`, not before.
/// Renewing an activity lease keeps the task from being taken over at the old expiry; only
/// the lease holder can renew.
pub async fn renew_activity_lock_extends_the_lease(store: Arc<dyn Store>) {
    create(&store, new_instance("a", "Job", "null", T0)).await;
    episode(&store, "a", T0, RuntimeStatus::Running, |c| {
        c.activities = vec![task("a", 0, "one", "1")];
    })
    .await;
    let lease = Duration::from_secs(10);
    let work = store
        .fetch_activity_work(T0, lease, 10)
        .await
        .expect("fetch");
    assert_eq!(work.len(), 1);
    let (task_id, lock) = (work[0].id, work[0].lock);
    let wrong = LockToken(lock.0.wrapping_add(1));
    assert!(matches!(
        store.renew_activity_lock(task_id, wrong, at(30_000)).await,
        Err(StoreError::LockLost(_))
    ));
    store
        .renew_activity_lock(task_id, lock, at(30_000))
        .await
        .expect("renew");
    assert_eq!(
        store
            .next_wake_time_for(WorkKind::Activity)
            .await
            .expect("wake time"),
        Some(at(30_000)),
        "the renewed lease's expiry is the next activity wake-up, not the old one"
    );
    assert!(
        store
            .fetch_activity_work(at(20_000), lease, 10)
            .await
            .expect("fetch")
            .is_empty(),
        "renewed: not taken over at the old expiry"
    );
    let taken = store
        .fetch_activity_work(at(30_000), lease, 10)
        .await
        .expect("fetch");
    assert_eq!(taken.len(), 1, "taken over once the renewed lease expired");
    assert!(matches!(
        store.renew_activity_lock(task_id, lock, at(60_000)).await,
        Err(StoreError::LockLost(_))
    ));
    store
        .complete_activity(taken[0].id, taken[0].lock, raised("x", at(30_000)))
        .await
        .expect("the new holder completes");
}

/// Every field of an activity task comes back at fetch as it was enqueued: attempt,
/// timeouts, heartbeat details carried from a previous attempt.
pub async fn activity_task_fields_round_trip(store: Arc<dyn Store>) {
    create(&store, new_instance("a", "Job", "null", T0)).await;
    let mut full = task("a", 3, "export", "{\"rows\":10}");
    full.attempt = 4;
    full.timeout = Some(Duration::from_millis(90_500));
    full.heartbeat_timeout = Some(Duration::from_secs(3_600));
    full.heartbeat = Some("{\"done\":7}".into());
    full.trace_context = Some(trace_context(
        "0af7651916cd43dd8448eb211c80319c",
        Some("k=v"),
    ));
    let plain = task("a", 4, "plain", "null");
    let sent = vec![full, plain];
    let enqueued = sent.clone();
    episode(&store, "a", T0, RuntimeStatus::Running, |c| {
        c.activities = enqueued;
    })
    .await;
    let mut got: Vec<ActivityTask> = store
        .fetch_activity_work(T0, LONG, 10)
        .await
        .expect("fetch")
        .into_iter()
        .map(|w| w.task)
        .collect();
    got.sort_by_key(|t| t.seq);
    assert_eq!(got, sent, "tasks come back with every field");
}

fn trace_context(trace_id: &str, tracestate: Option<&str>) -> TraceContext {
    TraceContext::parse(&format!("00-{trace_id}-b7ad6b7169203331-01"), tracestate)
        .expect("a well-formed traceparent")
}

/// The W3C trace contexts the engine stores come back unchanged: on a created instance's
/// start message and in its history, on the start of a sub-orchestration, on an entity
/// operation sent in a commit, on the next execution after continue-as-new.
pub async fn trace_contexts_round_trip(store: Arc<dyn Store>) {
    let client = trace_context(
        "4bf92f3577b34da6a3ce929d0e0e4736",
        Some("congo=t61rcWkgMzE"),
    );
    let mut new = new_instance("a", "Parent", "null", T0);
    new.trace_context = Some(client.clone());
    create(&store, new).await;
    let item = fetch_one(&store, "a", T0).await;
    assert_eq!(
        started_trace(&item.messages[0]),
        Some(client.clone()),
        "start message"
    );

    let execution = trace_context("11111111111111111111111111111111", None);
    let mut c = commit_for(&item, RuntimeStatus::Running, T0);
    c.new_events = vec![
        ev(0, T0, Event::OrchestratorStarted),
        ev(1, T0, item.messages[0].event.clone()),
    ];
    let mut child = new_instance("a-child", "Child", "null", T0);
    child.trace_context = Some(execution.clone());
    child.parent = Some(ParentRef {
        instance_id: id("a"),
        execution: 1,
        seq: 0,
    });
    c.new_instances.push((0, child));
    let op = Event::EntityOperation {
        operation: "add".into(),
        input: "1".into(),
        sender: Some(id("a")),
        reply_to: None,
        trace_context: Some(execution.clone()),
    };
    let entity = InstanceId::new_system("@counter@k").expect("entity id");
    c.new_instances.push((
        u64::MAX,
        NewInstance::new(entity.clone(), "counter", "null".into(), T0),
    ));
    c.messages
        .push((entity.clone(), Message::new(op, None, T0)));
    commit(&store, c).await;
    match &history(&store, "a").await[1].event {
        Event::ExecutionStarted { trace_context, .. } => {
            assert_eq!(trace_context.as_ref(), Some(&client), "history");
        }
        other => panic!("expected ExecutionStarted in history, got {}", other.kind()),
    }
    let mut seen = std::collections::HashMap::new();
    for item in fetch_all(&store, T0).await {
        for m in &item.messages {
            let tc = match &m.event {
                Event::ExecutionStarted { trace_context, .. }
                | Event::EntityOperation { trace_context, .. } => trace_context.clone(),
                _ => continue,
            };
            seen.insert((item.instance.instance_id.to_string(), m.event.kind()), tc);
        }
        commit(&store, commit_for(&item, item.instance.status, T0)).await;
    }
    let want = |instance: &str, kind: &'static str| {
        seen.get(&(instance.to_owned(), kind)).cloned().flatten()
    };
    assert_eq!(
        want("a-child", "ExecutionStarted"),
        Some(execution.clone()),
        "sub-orchestration start"
    );
    assert_eq!(
        want("@counter@k", "EntityOperation"),
        Some(execution.clone()),
        "entity operation"
    );
    assert_eq!(
        continue_with_trace(&store, "a", &execution).await,
        Some(execution),
        "continue-as-new start"
    );
}

/// The trace context of an `ExecutionStarted` message.
fn started_trace(m: &Message) -> Option<TraceContext> {
    match &m.event {
        Event::ExecutionStarted { trace_context, .. } => trace_context.clone(),
        other => panic!("expected ExecutionStarted, got {}", other.kind()),
    }
}

/// Continues running instance `instance` as new with `trace` on the next execution's
/// start, and returns the trace context that start comes back with.
async fn continue_with_trace(
    store: &Arc<dyn Store>,
    instance: &str,
    trace: &TraceContext,
) -> Option<TraceContext> {
    store
        .send_message(&id(instance), raised("again", T0))
        .await
        .expect("send_message");
    let item = fetch_one(store, instance, T0).await;
    let mut c = commit_for(&item, RuntimeStatus::Running, T0);
    c.new_events = vec![
        ev(item.history_len, T0, Event::OrchestratorStarted),
        ev(
            item.history_len + 1,
            T0,
            Event::ContinuedAsNew {
                input: "2".into(),
                version: None,
            },
        ),
    ];
    let mut next = NewInstance::new(id(instance), "Loop", "2".into(), T0);
    next.trace_context = Some(trace.clone());
    c.next_execution = Some(NextExecution {
        input: "2".into(),
        version: None,
        messages: vec![next.start_message()],
    });
    commit(store, c).await;
    started_trace(&fetch_one(store, instance, T0).await.messages[0])
}

/// A task with a heartbeat timeout shorter than the lease asked for is leased only that
/// long ([`ActivityTask::lease_for`]), so another worker takes it over that soon after its
/// worker stops renewing.
pub async fn heartbeat_timeout_caps_the_lease(store: Arc<dyn Store>) {
    create(&store, new_instance("a", "Job", "null", T0)).await;
    let mut beating = task("a", 0, "beating", "null");
    beating.heartbeat_timeout = Some(Duration::from_secs(30));
    let mut patient = task("a", 1, "patient", "null");
    patient.heartbeat_timeout = Some(Duration::from_secs(3_600));
    episode(&store, "a", T0, RuntimeStatus::Running, |c| {
        c.activities = vec![beating, patient];
    })
    .await;
    let lease = Duration::from_secs(300);
    let work = store
        .fetch_activity_work(T0, lease, 10)
        .await
        .expect("fetch");
    assert_eq!(work.len(), 2);
    assert_eq!(
        store
            .next_wake_time_for(WorkKind::Activity)
            .await
            .expect("wake time"),
        Some(at(30_000)),
        "the lease of the task with a 30 s heartbeat timeout ends after 30 s"
    );
    assert!(
        store
            .fetch_activity_work(at(29_999), lease, 10)
            .await
            .expect("fetch")
            .is_empty(),
        "held until then"
    );
    let taken = store
        .fetch_activity_work(at(30_000), lease, 10)
        .await
        .expect("fetch");
    let names: Vec<&str> = taken.iter().map(|w| w.task.name.as_str()).collect();
    assert_eq!(
        names,
        ["beating"],
        "taken over after its heartbeat timeout; the other keeps the store's lease (shorter than its heartbeat timeout)"
    );
    assert!(
        store
            .fetch_activity_work(at(299_999), lease, 10)
            .await
            .expect("fetch")
            .iter()
            .all(|w| w.task.name != "patient"),
        "the other is held for the store's lease"
    );
    let patient = store
        .fetch_activity_work(at(300_000), lease, 10)
        .await
        .expect("fetch");
    assert_eq!(patient.len(), 1);
    assert_eq!(patient[0].task.name, "patient");
}

/// [`Store::record_activity_heartbeat`] keeps a task's latest heartbeat details with the
/// task and extends its lease: the run that takes the task over next (after the lease
/// lapsed, or after an abandon) finds them. A stale lease records nothing.
pub async fn heartbeat_details_survive_the_lease(store: Arc<dyn Store>) {
    create(&store, new_instance("a", "Job", "null", T0)).await;
    let mut carried = task("a", 0, "export", "null");
    carried.heartbeat = Some("\"from the last attempt\"".into());
    episode(&store, "a", T0, RuntimeStatus::Running, |c| {
        c.activities = vec![carried, task("a", 1, "other", "null")];
    })
    .await;
    let lease = Duration::from_secs(10);
    let work = store
        .fetch_activity_work(T0, lease, 1)
        .await
        .expect("fetch");
    let first = &work[0];
    assert_eq!(
        first.task.heartbeat.as_deref(),
        Some("\"from the last attempt\"")
    );
    let wrong = LockToken(first.lock.0.wrapping_add(1));
    assert!(matches!(
        store
            .record_activity_heartbeat(first.id, wrong, "0".into(), at(20_000))
            .await,
        Err(StoreError::LockLost(_))
    ));
    store
        .record_activity_heartbeat(first.id, first.lock, "1".into(), at(5_000))
        .await
        .expect("record");
    store
        .record_activity_heartbeat(first.id, first.lock, "{\"row\":2}".into(), at(20_000))
        .await
        .expect("record again");
    let meanwhile = store
        .fetch_activity_work(at(15_000), lease, 10)
        .await
        .expect("fetch");
    assert!(
        meanwhile.iter().all(|w| w.id != first.id),
        "the heartbeat extended the lease past its old expiry"
    );
    let other = meanwhile
        .iter()
        .find(|w| w.task.name == "other")
        .expect("the other task");
    assert_eq!(other.task.heartbeat, None);
    let taken = store
        .fetch_activity_work(at(20_000), lease, 10)
        .await
        .expect("fetch");
    let again = taken
        .iter()
        .find(|w| w.id == first.id)
        .expect("taken over once the extended lease lapsed");
    assert_eq!(
        again.task.heartbeat.as_deref(),
        Some("{\"row\":2}"),
        "the latest details come with the task"
    );
    assert!(matches!(
        store
            .record_activity_heartbeat(first.id, first.lock, "3".into(), at(25_000))
            .await,
        Err(StoreError::LockLost(_))
    ));
    // Details recorded before an abandon come back with the task too.
    store
        .record_activity_heartbeat(other.id, other.lock, "\"half\"".into(), at(30_000))
        .await
        .expect("record");
    store
        .abandon_activity(other.id, other.lock, at(21_000))
        .await
        .expect("abandon");
    let back = store
        .fetch_activity_work(at(21_000), lease, 10)
        .await
        .expect("fetch");
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].task.heartbeat.as_deref(), Some("\"half\""));
    assert_eq!(back[0].task.name, "other");
}

/// [`Store::renew_activity_locks`] extends the leases still held, in one call, and reports
/// the others: taken over by another worker, gone with their result, or never held.
pub async fn renew_activity_locks_extends_those_held(store: Arc<dyn Store>) {
    create(&store, new_instance("a", "Job", "null", T0)).await;
    episode(&store, "a", T0, RuntimeStatus::Running, |c| {
        c.activities = (0..4).map(|i| task("a", i, "work", "1")).collect();
    })
    .await;
    let lease = Duration::from_secs(10);
    let work = store
        .fetch_activity_work(T0, lease, 10)
        .await
        .expect("fetch");
    assert_eq!(work.len(), 4);
    let held = |i: usize| (work[i].id, work[i].lock);
    let lost = store
        .renew_activity_locks(&[held(0), held(2)], at(20_000))
        .await
        .expect("renew");
    assert!(lost.is_empty(), "held leases are renewed: {lost:?}");
    // Task 1 is done (its result written); task 3 has lapsed and another worker took it;
    // task 2 is renewed with a wrong token below.
    store
        .complete_activity(work[1].id, work[1].lock, raised("x", T0))
        .await
        .expect("complete");
    let taken = store
        .fetch_activity_work(at(10_000), lease, 10)
        .await
        .expect("fetch");
    let taken: Vec<_> = taken.into_iter().filter(|w| w.id == work[3].id).collect();
    assert_eq!(taken.len(), 1, "task 3 is taken over once its lease lapsed");
    assert!(
        store
            .fetch_activity_work(at(10_000), lease, 10)
            .await
            .expect("fetch")
            .is_empty(),
        "tasks 0 and 2 were renewed: not taken at their first expiry"
    );
    let wrong = (work[2].id, LockToken(work[2].lock.0.wrapping_add(1)));
    let mut lost = store
        .renew_activity_locks(&[held(0), held(1), wrong, held(3)], at(40_000))
        .await
        .expect("renew");
    lost.sort_unstable();
    let mut want = vec![work[1].id, work[2].id, work[3].id];
    want.sort_unstable();
    assert_eq!(
        lost, want,
        "the leases not held are reported, the held one is not"
    );
    assert!(
        store
            .renew_activity_locks(&[], at(40_000))
            .await
            .expect("renew nothing")
            .is_empty()
    );
    let later = store
        .fetch_activity_work(at(30_000), lease, 10)
        .await
        .expect("fetch");
    assert!(
        later.iter().all(|w| w.id != work[0].id),
        "task 0's lease was extended to 40 s: not taken at 30 s"
    );
    let expired = store
        .fetch_activity_work(at(40_000), lease, 10)
        .await
        .expect("fetch");
    assert!(
        expired.iter().any(|w| w.id == work[0].id),
        "taken once the extended lease lapsed"
    );
}

/// Abandoning an activity task holds it back until `retry_at`, which becomes the store's
/// next wake time; then the same task is fetched again.
pub async fn abandon_activity_delays_task(store: Arc<dyn Store>) {
    create(&store, new_instance("a", "Job", "null", T0)).await;
    episode(&store, "a", T0, RuntimeStatus::Running, |c| {
        c.activities = vec![task("a", 0, "one", "1")];
    })
    .await;
    let work = store
        .fetch_activity_work(T0, LONG, 10)
        .await
        .expect("fetch");
    assert_eq!(work.len(), 1);
    store
        .abandon_activity(work[0].id, work[0].lock, at(5_000))
        .await
        .expect("abandon_activity");
    assert!(
        store
            .fetch_activity_work(at(4_999), LONG, 10)
            .await
            .expect("fetch")
            .is_empty()
    );
    assert_eq!(
        store.next_wake_time().await.expect("next_wake_time"),
        Some(at(5_000))
    );
    let again = store
        .fetch_activity_work(at(5_000), LONG, 10)
        .await
        .expect("fetch");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, work[0].id);
    assert_eq!(again[0].task, task("a", 0, "one", "1"));
}

/// Abandoning an episode holds the instance back until `retry_at` and records the error.
pub async fn abandon_episode_delays_messages(store: Arc<dyn Store>) {
    create(&store, new_instance("a", "Job", "null", T0)).await;
    store
        .send_message(&id("a"), raised("later", at(9_000)))
        .await
        .expect("send_message");
    let item = fetch_one(&store, "a", T0).await;
    assert_eq!(labels(&item.messages), ["ExecutionStarted"]);
    store
        .abandon_episode(&id("a"), item.lock, at(5_000), Some("boom".into()))
        .await
        .expect("abandon_episode");
    let r = record(&store, "a").await;
    assert_eq!(
        r.last_error.as_deref(),
        Some("boom"),
        "the error shows in the status"
    );
    assert_eq!(r.status, RuntimeStatus::Pending);
    assert!(
        fetch(&store, at(4_999)).await.is_none(),
        "messages are delayed to retry_at"
    );
    assert_eq!(
        store.next_wake_time().await.expect("next_wake_time"),
        Some(at(5_000))
    );

    let again = fetch_one(&store, "a", at(5_000)).await;
    assert_eq!(labels(&again.messages), ["ExecutionStarted"]);
    assert_eq!(
        again.messages[0].id, item.messages[0].id,
        "the message keeps its own id (visibility and arrival)"
    );
    commit(
        &store,
        commit_for(&again, RuntimeStatus::Running, at(5_001)),
    )
    .await;
    assert_eq!(
        record(&store, "a").await.last_error,
        None,
        "a commit clears the error"
    );
    let later = fetch_one(&store, "a", at(9_000)).await;
    assert_eq!(
        labels(&later.messages),
        ["later"],
        "later messages keep their own time"
    );
}

/// Abandoning an episode holds the *instance* back, not its messages: a message that
/// arrives during the hold (visible at once) waits for `retry_at` too and is delivered after
/// the ones that arrived before it, and timers keep their own times. A commit ends the hold.
pub async fn abandon_episode_keeps_arrival_order(store: Arc<dyn Store>) {
    /// Raised events by name, timers by their seq.
    fn names(messages: &[Message]) -> Vec<String> {
        messages
            .iter()
            .map(|m| match &m.event {
                Event::TimerFired { seq, .. } => format!("timer{seq}"),
                _ => labels(std::slice::from_ref(m)).remove(0),
            })
            .collect()
    }
    create(&store, new_instance("a", "Job", "null", T0)).await;
    let a = id("a");
    let send = |m: Message| {
        let store = Arc::clone(&store);
        let a = a.clone();
        async move { store.send_message(&a, m).await.expect("send_message") }
    };
    send(raised("x1", T0)).await;
    // Timers due during the hold (3 s) and after it (9 s).
    send(timer(1, at(3_000))).await;
    send(timer(2, at(9_000))).await;
    let item = fetch_one(&store, "a", T0).await;
    assert_eq!(names(&item.messages), ["ExecutionStarted", "x1"]);
    store
        .abandon_episode(&a, item.lock, at(5_000), Some("held".into()))
        .await
        .expect("abandon_episode");
    // Arrives during the hold, visible at once.
    send(raised("x2", at(1_000))).await;

    assert!(
        fetch(&store, at(1_000)).await.is_none(),
        "a message that arrives during the hold does not end it"
    );
    assert!(
        fetch(&store, at(4_999)).await.is_none(),
        "the instance is held until retry_at, with its due timer"
    );
    assert_eq!(
        depths(&store, at(4_999)).await,
        (0, 0, 0),
        "a held instance is not ready, nor are its due timers"
    );
    assert_eq!(depths(&store, at(5_000)).await, (1, 0, 1));
    for kind in [None, Some(WorkKind::Orchestration)] {
        let wake = match kind {
            None => store.next_wake_time().await,
            Some(k) => store.next_wake_time_for(k).await,
        };
        assert_eq!(
            wake.expect("next_wake_time"),
            Some(at(5_000)),
            "a held instance wakes its dispatcher at retry_at ({kind:?})"
        );
    }

    let again = fetch_one(&store, "a", at(5_000)).await;
    assert_eq!(
        names(&again.messages),
        ["ExecutionStarted", "x1", "x2", "timer1"],
        "arrival order is kept across the hold; the later timer is not due"
    );
    assert_eq!(
        &again.messages[..2],
        &item.messages[..],
        "messages keep their ids (visibility and arrival)"
    );
    assert_eq!(again.messages[2].id.visible_at, at(1_000));
    assert_eq!(again.messages[3].id.visible_at, at(3_000));
    commit(
        &store,
        commit_for(&again, RuntimeStatus::Running, at(5_000)),
    )
    .await;

    // The commit ended the hold: new work is taken when it is visible.
    send(raised("x3", at(6_000))).await;
    assert!(fetch(&store, at(5_999)).await.is_none());
    let after = fetch_one(&store, "a", at(6_000)).await;
    assert_eq!(names(&after.messages), ["x3"]);
    commit(
        &store,
        commit_for(&after, RuntimeStatus::Running, at(6_000)),
    )
    .await;
    assert_eq!(
        store.next_wake_time().await.expect("next_wake_time"),
        Some(at(9_000))
    );
    let last = fetch_one(&store, "a", at(9_000)).await;
    assert_eq!(
        names(&last.messages),
        ["timer2"],
        "the later timer keeps its time"
    );
}

/// A terminate ends an instance's hold ([`super::ends_hold`]): sent by a client or by
/// another instance's commit (a parent's), it is taken at once, after the messages that
/// arrived before it.
pub async fn a_terminate_ends_the_hold(store: Arc<dyn Store>) {
    fn terminate(reason: &str, now: Timestamp) -> Message {
        let reason = reason.to_owned();
        let event = Event::ExecutionTerminated {
            reason,
            child_of: None,
        };
        Message::new(event, None, now)
    }
    for name in ["a", "b", "parent"] {
        create(&store, new_instance(name, "Job", "null", T0)).await;
    }
    for name in ["a", "b"] {
        store
            .send_message(&id(name), raised("x1", T0))
            .await
            .expect("send_message");
    }
    let mut items = fetch_all(&store, T0).await;
    let parent = items.pop().expect("`parent` is fetched last (by id)");
    for item in &items {
        store
            .abandon_episode(&item.instance.instance_id, item.lock, at(60_000), None)
            .await
            .expect("abandon_episode");
    }
    assert!(
        fetch(&store, at(1_000)).await.is_none(),
        "`a` and `b` are held"
    );

    store
        .send_message(&id("a"), terminate("client", at(1_000)))
        .await
        .expect("send_message");
    let a = fetch_one(&store, "a", at(1_000)).await;
    assert_eq!(
        labels(&a.messages),
        ["ExecutionStarted", "x1", "ExecutionTerminated"],
        "a client's terminate ends the hold"
    );

    let mut c = commit_for(&parent, RuntimeStatus::Running, at(2_000));
    c.messages = vec![(id("b"), terminate("parent", at(2_000)))];
    commit(&store, c).await;
    let b = fetch_one(&store, "b", at(2_000)).await;
    assert_eq!(
        labels(&b.messages),
        ["ExecutionStarted", "x1", "ExecutionTerminated"],
        "a terminate from a commit ends the hold"
    );
}

/// `next_wake_time` is the earliest time work becomes visible (or a lease expires).
pub async fn next_wake_time(store: Arc<dyn Store>) {
    assert_eq!(
        store.next_wake_time().await.expect("next_wake_time"),
        None,
        "an empty store never wakes"
    );
    let mut later = new_instance("later", "Job", "null", T0);
    later.scheduled_start = Some(at(60_000));
    create(&store, later).await;
    assert_eq!(
        store.next_wake_time().await.expect("next_wake_time"),
        Some(at(60_000))
    );

    create(&store, new_instance("now", "Job", "null", T0)).await;
    assert_eq!(
        store.next_wake_time().await.expect("next_wake_time"),
        Some(T0)
    );
    let item = store
        .fetch_orchestration_work(T0, Duration::from_secs(300))
        .await
        .expect("fetch")
        .expect("work for `now`");
    assert_eq!(item.instance.instance_id.as_str(), "now");
    assert_eq!(
        store.next_wake_time().await.expect("next_wake_time"),
        Some(at(60_000)),
        "a locked instance's messages do not count, its lease expiry (300s) is later"
    );
    let mut c = commit_for(&item, RuntimeStatus::Running, T0);
    c.messages = vec![(
        id("now"),
        Message::new(
            Event::TimerFired {
                seq: 0,
                fire_at: at(30_000),
            },
            Some(1),
            at(30_000),
        ),
    )];
    commit(&store, c).await;
    assert_eq!(
        store.next_wake_time().await.expect("next_wake_time"),
        Some(at(30_000)),
        "the timer"
    );
}

fn timer(seq: u64, fire_at: Timestamp) -> Message {
    Message::new(Event::TimerFired { seq, fire_at }, Some(1), fire_at)
}

/// The depths at `now`, as (ready orchestrations, ready activities, timers due).
async fn depths(store: &Arc<dyn Store>, now: Timestamp) -> (u64, u64, u64) {
    let QueueDepths {
        ready_orchestrations,
        ready_activities,
        timers_due,
    } = store
        .queue_depths(now)
        .await
        .expect("queue_depths")
        .expect("the store reports queue depths (`Store::queue_depths` answered `None`)");
    (ready_orchestrations, ready_activities, timers_due)
}

/// `queue_depths` counts what waits at the time asked about: instances with visible messages
/// and no lease, activity tasks visible and not leased, and the due timers in the inboxes of
/// those instances. Leased work is not counted until its lease expires; consumed messages
/// are gone.
pub async fn queue_depths(store: Arc<dyn Store>) {
    assert_eq!(depths(&store, T0).await, (0, 0, 0), "an empty store");
    for name in ["a", "b", "c"] {
        create(&store, new_instance(name, "Job", "null", T0)).await;
    }
    let mut later = new_instance("later", "Job", "null", T0);
    later.scheduled_start = Some(at(60_000));
    create(&store, later).await;
    assert_eq!(
        depths(&store, T0).await,
        (3, 0, 0),
        "three started instances; the scheduled one is not visible yet"
    );
    assert_eq!(depths(&store, at(60_000)).await, (4, 0, 0));

    // `a` runs an episode: three activities, a timer of its own firing at 1 s, and a due
    // timer sent to `b`.
    episode(&store, "a", T0, RuntimeStatus::Running, |c| {
        c.activities = vec![
            task("a", 0, "one", "1"),
            task("a", 1, "two", "2"),
            task("a", 2, "three", "3"),
        ];
        c.messages = vec![(id("a"), timer(3, at(1_000))), (id("b"), timer(0, T0))];
    })
    .await;
    assert_eq!(
        depths(&store, T0).await,
        (2, 3, 1),
        "`b` and `c` wait, `b` with its due timer; `a`'s timer is not due"
    );
    assert_eq!(
        depths(&store, at(1_000)).await,
        (3, 3, 2),
        "`a`'s timer is due at 1 s"
    );

    // A leased task does not wait, until its lease expires.
    let leased = store
        .fetch_activity_work(T0, Duration::from_secs(10), 1)
        .await
        .expect("fetch_activity_work");
    assert_eq!(leased.len(), 1);
    assert_eq!(depths(&store, T0).await, (2, 2, 1), "one task leased");
    assert_eq!(
        depths(&store, at(10_000)).await,
        (3, 3, 2),
        "the task's lease expired at 10 s"
    );

    // A leased instance does not wait (nor do its timers), until its lease expires.
    let b = store
        .fetch_orchestration_work(T0, Duration::from_secs(5))
        .await
        .expect("fetch_orchestration_work")
        .expect("work at T0");
    assert_eq!(
        b.instance.instance_id.as_str(),
        "b",
        "`b` and `c` are ready, `b` first"
    );
    assert_eq!(
        labels(&b.messages),
        ["ExecutionStarted", "TimerFired"],
        "the due timer is delivered with the lease"
    );
    assert_eq!(depths(&store, T0).await, (1, 2, 0), "only `c` waits");
    assert_eq!(depths(&store, at(4_999)).await, (2, 2, 1), "`c` and `a`");
    assert_eq!(
        depths(&store, at(20_000)).await,
        (3, 3, 2),
        "`b`'s lease expired at 5 s, the task's at 10 s"
    );

    // Episodes that consume every message leave nothing waiting.
    let items = fetch_all(&store, at(20_000)).await;
    assert_eq!(items.len(), 3, "`a`, `b` and `c`");
    assert_eq!(
        depths(&store, at(20_000)).await,
        (0, 3, 0),
        "every instance is leased"
    );
    for item in &items {
        commit(&store, commit_for(item, RuntimeStatus::Running, at(20_000))).await;
    }
    assert_eq!(
        depths(&store, at(20_000)).await,
        (0, 3, 0),
        "the timers were consumed; the inboxes are empty"
    );
    assert_eq!(
        depths(&store, at(60_000)).await,
        (1, 3, 0),
        "`later` starts at 60 s"
    );
}

/// Sending to an unknown instance or a finished one fails with a typed error.
pub async fn send_message_errors(store: Arc<dyn Store>) {
    let r = store.send_message(&id("nope"), raised("x", T0)).await;
    assert_eq!(r, Err(StoreError::InstanceNotFound("nope".into())));
    create(&store, new_instance("a", "Job", "null", T0)).await;
    store
        .send_message(&id("a"), raised("x", T0))
        .await
        .expect("send to a running instance");
    finish(&store, "a", T0, RuntimeStatus::Completed).await;
    let r = store.send_message(&id("a"), raised("y", T0)).await;
    assert_eq!(r, Err(StoreError::InstanceNotRunning("a".into())));
    assert!(
        fetch(&store, at(1)).await.is_none(),
        "the refused message was not enqueued"
    );

    // A finished instance takes only a rewind request, and only when it failed.
    let rewind = || {
        Message::new(
            Event::ExecutionRewound {
                reason: "fix".into(),
                seqs: Vec::new(),
            },
            None,
            T0,
        )
    };
    let r = store.send_message(&id("a"), rewind()).await;
    assert_eq!(r, Err(StoreError::InstanceNotRunning("a".into())));
    create(&store, new_instance("f", "Job", "null", T0)).await;
    finish(&store, "f", T0, RuntimeStatus::Failed).await;
    store
        .send_message(&id("f"), rewind())
        .await
        .expect("a failed instance takes a rewind request");
    let item = fetch(&store, at(1))
        .await
        .expect("the failed instance has work");
    assert_eq!(item.instance.instance_id, id("f"));
    assert!(matches!(
        item.messages[0].event,
        Event::ExecutionRewound { .. }
    ));
    // The rewind's episode makes it Running again, its failure cleared.
    let mut c = commit_for(&item, RuntimeStatus::Running, at(1));
    c.consumed = vec![item.messages[0].id];
    commit(&store, c).await;
    let r = record(&store, "f").await;
    assert_eq!(r.status, RuntimeStatus::Running);
    assert_eq!(r.failure, None);
    let failed = store
        .query_instances(&InstanceQuery::new().statuses([RuntimeStatus::Failed]))
        .await
        .expect("query");
    assert!(failed.instances.is_empty(), "the status index moved on");
}

/// Query filters: status, name, created range, id prefix.
pub async fn query_filters(store: Arc<dyn Store>) {
    create(&store, new_instance("order-2", "Order", "null", at(1000))).await;
    finish(&store, "order-2", at(1000), RuntimeStatus::Completed).await;
    create(&store, new_instance("order-1", "Order", "null", T0)).await;
    create(&store, new_instance("ship-1", "Ship", "null", at(2000))).await;
    create(&store, new_instance("order-3", "Order", "null", at(3000))).await;

    let all = query_ids(&store, &InstanceQuery::new()).await;
    assert_eq!(
        all,
        (
            vec![
                "order-1".into(),
                "order-2".into(),
                "order-3".into(),
                "ship-1".into()
            ],
            None
        )
    );
    let ids = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<String>>();
    let cases: Vec<(InstanceQuery, Vec<String>)> = vec![
        (
            InstanceQuery::new().statuses([RuntimeStatus::Completed]),
            ids(&["order-2"]),
        ),
        (
            InstanceQuery::new().statuses([RuntimeStatus::Pending, RuntimeStatus::Running]),
            ids(&["order-1", "order-3", "ship-1"]),
        ),
        (InstanceQuery::new().name("Ship"), ids(&["ship-1"])),
        (
            InstanceQuery::new().created_between(Some(at(1000)), Some(at(2000))),
            ids(&["order-2", "ship-1"]),
        ),
        (
            InstanceQuery::new().created_between(Some(at(2500)), None),
            ids(&["order-3"]),
        ),
        (
            InstanceQuery::new().id_prefix("order-"),
            ids(&["order-1", "order-2", "order-3"]),
        ),
        (
            InstanceQuery::new()
                .id_prefix("order-")
                .name("Order")
                .statuses([RuntimeStatus::Pending]),
            ids(&["order-1", "order-3"]),
        ),
        (InstanceQuery::new().id_prefix("zzz"), vec![]),
    ];
    for (q, want) in cases {
        let (got, cont) = query_ids(&store, &q).await;
        assert_eq!(got, want, "query {q:?}");
        assert_eq!(cont, None, "one page for {q:?}");
    }
}

/// `newest_first`: pages by creation time, newest first (ties by id, descending), with
/// the filters applied and every instance once.
pub async fn query_newest_first(store: Arc<dyn Store>) {
    create(&store, new_instance("b", "Order", "null", at(1000))).await;
    create(&store, new_instance("a", "Order", "null", at(3000))).await;
    create(&store, new_instance("d", "Order", "null", at(2000))).await;
    create(&store, new_instance("c", "Order", "null", at(2000))).await;
    create(&store, new_instance("e", "Ship", "null", at(4000))).await;
    let mut seen = Vec::new();
    let mut q = InstanceQuery::new()
        .name("Order")
        .newest_first()
        .page_size(2);
    for _ in 0..4 {
        let (ids, next) = query_ids(&store, &q).await;
        assert!(ids.len() <= 2, "{ids:?}");
        seen.extend(ids);
        match next {
            Some(token) => q = q.continuation(Some(token)),
            None => break,
        }
    }
    assert_eq!(
        seen,
        vec!["a", "d", "c", "b"],
        "newest first, ties by id descending"
    );
    let (ids, next) = query_ids(&store, &InstanceQuery::new().newest_first()).await;
    assert_eq!(ids, vec!["e", "a", "d", "c", "b"]);
    assert_eq!(next, None);
    let (ids, _) = query_ids(
        &store,
        &InstanceQuery::new()
            .newest_first()
            .created_between(Some(at(2000)), Some(at(3000))),
    )
    .await;
    assert_eq!(ids, vec!["a", "d", "c"]);
}

/// `count_instances` counts per status what the filters match, paging ignored.
pub async fn count_instances(store: Arc<dyn Store>) {
    use RuntimeStatus::{Completed, Failed, Pending};
    create(&store, new_instance("order-2", "Order", "null", at(1000))).await;
    finish(&store, "order-2", at(1000), RuntimeStatus::Completed).await;
    create(&store, new_instance("order-4", "Order", "null", at(1500))).await;
    finish(&store, "order-4", at(1500), RuntimeStatus::Failed).await;
    create(&store, new_instance("order-1", "Order", "null", T0)).await;
    create(&store, new_instance("ship-1", "Ship", "null", at(2000))).await;
    create(&store, new_instance("order-3", "Order", "null", at(3000))).await;
    let count = |q: InstanceQuery| {
        let store = Arc::clone(&store);
        async move { store.count_instances(&q).await.expect("count_instances") }
    };
    assert_eq!(
        count(InstanceQuery::new()).await,
        vec![(Pending, 3), (Completed, 1), (Failed, 1)]
    );
    assert_eq!(
        count(InstanceQuery::new().page_size(1)).await,
        vec![(Pending, 3), (Completed, 1), (Failed, 1)],
        "paging is ignored"
    );
    assert_eq!(
        count(InstanceQuery::new().statuses([Completed, Failed])).await,
        vec![(Completed, 1), (Failed, 1)]
    );
    assert_eq!(
        count(InstanceQuery::new().name("Ship")).await,
        vec![(Pending, 1)]
    );
    assert_eq!(
        count(InstanceQuery::new().id_prefix("order-")).await,
        vec![(Pending, 2), (Completed, 1), (Failed, 1)]
    );
    assert_eq!(
        count(InstanceQuery::new().created_between(Some(at(1000)), Some(at(2000)))).await,
        vec![(Pending, 1), (Completed, 1), (Failed, 1)]
    );
    assert_eq!(count(InstanceQuery::new().id_prefix("zzz")).await, vec![]);
}

/// Paging by continuation token: every instance once, in id order, and `None` at the end.
pub async fn query_paging(store: Arc<dyn Store>) {
    let want: Vec<String> = (0..25).map(|i| format!("inst-{i:02}")).collect();
    for (i, name) in want.iter().enumerate() {
        create(&store, new_instance(name, "Job", "null", at(i as u64))).await;
    }
    let mut got = Vec::new();
    let mut sizes = Vec::new();
    let mut token = None;
    loop {
        let q = InstanceQuery::new()
            .page_size(10)
            .continuation(token.clone());
        let (ids, next) = query_ids(&store, &q).await;
        sizes.push(ids.len());
        got.extend(ids);
        match next {
            Some(t) => token = Some(t),
            None => break,
        }
        assert!(sizes.len() < 10, "paging does not end");
    }
    assert_eq!(sizes, [10, 10, 5]);
    assert_eq!(got, want, "every instance once, in id order");

    // A prefix whose matches fill the pages exactly: the last full page ends the paging.
    let q = InstanceQuery::new().id_prefix("inst-0").page_size(5);
    let (first, token) = query_ids(&store, &q).await;
    assert_eq!(first, want[0..5]);
    assert!(token.is_some());
    let (second, token) = query_ids(&store, &q.clone().continuation(token)).await;
    assert_eq!(second, want[5..10]);
    assert_eq!(token, None, "no empty last page");
}

/// Purge removes record, history, inbox and tasks; the second purge returns `false`.
pub async fn purge_removes_everything(store: Arc<dyn Store>) {
    create(&store, new_instance("a", "Job", "null", T0)).await;
    episode(&store, "a", T0, RuntimeStatus::Running, |c| {
        c.activities = vec![task("a", 0, "leased", "1"), task("a", 1, "queued", "2")];
        c.messages = vec![(
            id("a"),
            Message::new(
                Event::TimerFired {
                    seq: 2,
                    fire_at: at(10_000),
                },
                Some(1),
                at(10_000),
            ),
        )];
    })
    .await;
    store
        .send_message(&id("a"), raised("x", T0))
        .await
        .expect("send_message");
    let leased = store.fetch_activity_work(T0, LONG, 1).await.expect("fetch");
    assert_eq!(leased.len(), 1);
    assert!(!history(&store, "a").await.is_empty());

    assert!(
        store.purge_instance(&id("a")).await.expect("purge"),
        "purge of an existing instance"
    );
    assert_eq!(
        store.next_wake_time().await.expect("next_wake_time"),
        None,
        "nothing left to wake for: no inbox, no tasks, no leases"
    );
    assert_eq!(
        store.read_instance(&id("a")).await.expect("read_instance"),
        None
    );
    assert!(history(&store, "a").await.is_empty(), "history is gone");
    let far = at(365 * 24 * 3600 * 1000);
    assert!(fetch(&store, far).await.is_none(), "the inbox is gone");
    assert!(
        store
            .fetch_activity_work(far, LONG, 10)
            .await
            .expect("fetch")
            .is_empty(),
        "queued and leased tasks are gone"
    );
    let r = store
        .complete_activity(
            leased[0].id,
            leased[0].lock,
            Message::new(
                Event::TaskCompleted {
                    seq: 0,
                    result: "1".into(),
                },
                Some(1),
                T0,
            ),
        )
        .await;
    assert!(
        matches!(r, Err(StoreError::LockLost(_))),
        "a purged task's lease is gone, got {r:?}"
    );
    assert!(query_ids(&store, &InstanceQuery::new()).await.0.is_empty());
    assert!(
        !store.purge_instance(&id("a")).await.expect("purge"),
        "second purge returns false"
    );

    create(&store, new_instance("a", "Job", "\"fresh\"", at(1))).await;
    assert_eq!(
        record(&store, "a").await.execution,
        1,
        "no trace of the purged instance"
    );
    let item = fetch_one(&store, "a", far).await;
    assert_eq!(labels(&item.messages), ["ExecutionStarted"]);

    // Purging a locked instance drops its lease: the old worker's commit fails.
    assert!(store.purge_instance(&id("a")).await.expect("purge"));
    let r = store
        .commit_episode(commit_for(&item, RuntimeStatus::Running, far))
        .await;
    assert!(
        matches!(r, Err(StoreError::LockLost(_))),
        "commit after purge, got {r:?}"
    );
    assert_eq!(
        store.read_instance(&id("a")).await.expect("read_instance"),
        None
    );
}

/// Writes wake the dispatchers and bump the change counter.
pub async fn signals(store: Arc<dyn Store>) {
    let wait = Duration::from_secs(5);
    let sig = store.signals();
    let mut changed = sig.changed.subscribe();
    create(&store, new_instance("a", "Job", "null", T0)).await;
    assert!(
        tokio::time::timeout(wait, sig.orchestration.notified())
            .await
            .is_ok(),
        "create signals orchestration work"
    );
    assert!(
        changed.has_changed().expect("watch open"),
        "create bumps `changed`"
    );
    changed.borrow_and_update();

    episode(&store, "a", T0, RuntimeStatus::Running, |c| {
        c.activities = vec![task("a", 0, "one", "1")];
    })
    .await;
    assert!(
        tokio::time::timeout(wait, sig.activity.notified())
            .await
            .is_ok(),
        "a commit with activities signals activity work"
    );
    assert!(
        changed.has_changed().expect("watch open"),
        "a commit bumps `changed`"
    );
    changed.borrow_and_update();

    assert!(!store.purge_instance(&id("nope")).await.expect("purge"));
    assert!(
        !changed.has_changed().expect("watch open"),
        "purging nothing changes nothing"
    );
    // A commit that finishes an instance bumps `finished` (which completion waiters watch).
    create(&store, new_instance("b", "Job", "null", T0)).await;
    let mut finished = sig.finished.subscribe();
    finish(&store, "b", T0, RuntimeStatus::Completed).await;
    assert!(
        finished.has_changed().expect("watch open"),
        "finishing an instance bumps `finished`"
    );
    finished.borrow_and_update();

    assert!(store.purge_instance(&id("a")).await.expect("purge"));
    assert!(
        changed.has_changed().expect("watch open"),
        "purge bumps `changed`"
    );
    assert!(
        finished.has_changed().expect("watch open"),
        "purge bumps `finished` (a waiter learns the instance is gone)"
    );
}

/// `purge_finished_instance` checks, atomically, that the instance has finished and by when.
pub async fn purge_finished_only_purges_what_has_finished(store: Arc<dyn Store>) {
    create(&store, new_instance("run", "Job", "null", T0)).await;
    assert!(
        !store
            .purge_finished_instance(&id("run"), at(1_000_000))
            .await
            .expect("purge"),
        "a pending instance is not purged"
    );
    assert!(record(&store, "run").await.status == RuntimeStatus::Pending);
    create(&store, new_instance("done", "Job", "null", T0)).await;
    finish(&store, "done", at(5_000), RuntimeStatus::Completed).await;
    assert!(
        !store
            .purge_finished_instance(&id("done"), at(4_999))
            .await
            .expect("purge"),
        "finished after the cutoff: kept"
    );
    assert!(
        store
            .purge_finished_instance(&id("done"), at(5_000))
            .await
            .expect("purge"),
        "finished by the cutoff: purged"
    );
    assert!(
        store
            .read_instance(&id("done"))
            .await
            .expect("read")
            .is_none(),
        "gone"
    );
    assert!(
        !store
            .purge_finished_instance(&id("nope"), at(5_000))
            .await
            .expect("purge")
    );
}

/// Many concurrent writers (group commit in stores that batch) all succeed.
pub async fn concurrent_writes(store: Arc<dyn Store>) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..64u64 {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            let name = format!("c-{i:02}");
            store
                .create_instance(new_instance(&name, "Job", "null", at(i)))
                .await
                .map(|_| ())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("task").expect("concurrent create");
    }
    let page = store
        .query_instances(&InstanceQuery::new().page_size(1000))
        .await
        .expect("query");
    assert_eq!(
        page.instances.len(),
        64,
        "every concurrent create is stored"
    );
    let items = fetch_all(&store, at(100)).await;
    assert_eq!(items.len(), 64, "every instance is fetchable once");
    let mut commits = tokio::task::JoinSet::new();
    for item in items {
        let store = Arc::clone(&store);
        commits.spawn(async move {
            let c = commit_for(&item, RuntimeStatus::Completed, at(200));
            store.commit_episode(c).await
        });
    }
    while let Some(r) = commits.join_next().await {
        r.expect("task").expect("concurrent commit");
    }
    let done = store
        .query_instances(
            &InstanceQuery::new()
                .statuses([RuntimeStatus::Completed])
                .page_size(1000),
        )
        .await
        .expect("query");
    assert_eq!(done.instances.len(), 64);
}

// ---------------------------------------------------------------------------------------
// create_started

/// The first steps of an episode at `now`: it starts (`start`, the `ExecutionStarted`),
/// schedules activity `charge` (seq 0, input `5`) and creates a timer for `fire_at` (seq 1).
fn first_steps(now: Timestamp, start: Event, fire_at: Timestamp) -> Vec<HistoryEvent> {
    vec![
        ev(0, now, Event::OrchestratorStarted),
        ev(1, now, start),
        ev(
            2,
            now,
            Event::TaskScheduled {
                seq: 0,
                name: "charge".into(),
                input: "5".into(),
                location: None,
                timeout: None,
                heartbeat_timeout: None,
            },
        ),
        ev(
            3,
            now,
            Event::TimerCreated {
                seq: 1,
                fire_at,
                location: None,
            },
        ),
    ]
}

/// A first episode of `new` at `now` (as a worker runs it before the instance is stored):
/// it records the start, schedules `charge`, arms a timer for `fire_at` and pings `o`.
fn first_episode(new: &NewInstance, now: Timestamp, fire_at: Timestamp) -> EpisodeCommit {
    let key = new.instance_id.as_str();
    // The lock and the consumed ids are the store's to fill in.
    let mut c = EpisodeCommit::new(
        new.instance_id.clone(),
        LockToken(u64::MAX),
        RuntimeStatus::Running,
        now,
    );
    c.consumed = vec![new.start_message().id];
    c.new_events = first_steps(now, new.start_message().event, fire_at);
    c.custom_status = Some("\"first\"".into());
    c.activities = vec![task(key, 0, "charge", "5")];
    c.messages = vec![
        (
            new.instance_id.clone(),
            Message::new(Event::TimerFired { seq: 1, fire_at }, Some(1), fire_at),
        ),
        (id("o"), raised("ping", now)),
    ];
    c
}

/// A store without `create_started` writes nothing for it and answers `None`.
async fn declines_everything(store: &Arc<dyn Store>) {
    let new = new_instance("s", "Starter", "null", T0);
    let first = first_episode(&new, at(5), at(10_000));
    assert_eq!(store.create_started(new, first).await, Ok(None));
    assert_eq!(
        store.read_instance(&id("s")).await.expect("read_instance"),
        None,
        "a store without create_started creates nothing"
    );
}

/// `create_started` creates the instance and applies its first episode in one step: the
/// record is the created one, the history is the episode's, its start message is consumed,
/// its activity, timer and messages are enqueued, and the instance is not left leased.
/// (Skipped by stores that do not support it.)
pub async fn create_started_applies_the_first_episode(store: Arc<dyn Store>) {
    if !store.supports_create_started() {
        declines_everything(&store).await;
        return;
    }
    create(&store, new_instance("o", "Other", "null", T0)).await;
    let o = fetch_one(&store, "o", T0).await;
    let mut done = commit_for(&o, RuntimeStatus::Running, T0);
    done.new_events = vec![ev(0, T0, Event::OrchestratorStarted)];
    commit(&store, done).await;

    let new = new_instance("s", "Starter", "\"in\"", T0);
    let now = at(5);
    let fire_at = at(10_000);
    let first = first_episode(&new, now, fire_at);
    let events = first.new_events.clone();
    let created = store
        .create_started(new, first)
        .await
        .expect("create_started")
        .expect("a new id is created");
    assert_eq!(created.instance_id.as_str(), "s");
    assert_eq!(
        (created.status, created.execution, created.created_at),
        (RuntimeStatus::Pending, 1, T0),
        "the answer is the created record, as create_instance returns it"
    );

    let r = record(&store, "s").await;
    assert_eq!(r.status, RuntimeStatus::Running);
    assert_eq!(r.custom_status.as_deref(), Some("\"first\""));
    assert_eq!((r.input.as_str(), r.name.as_str()), ("\"in\"", "Starter"));
    assert_eq!((r.created_at, r.last_updated_at), (T0, now));
    assert_eq!(
        history(&store, "s").await,
        events,
        "history is the episode's"
    );

    let items = fetch_all(&store, now).await;
    let ids = ids_of(&items);
    assert_eq!(
        ids,
        ["o"],
        "the start was consumed; the timer is not due yet"
    );
    assert_eq!(labels(&items[0].messages), ["ping"]);

    let tasks = store
        .fetch_activity_work(now, LONG, 10)
        .await
        .expect("fetch_activity_work");
    assert_eq!(tasks.len(), 1, "the first episode's activity was enqueued");
    assert_eq!(tasks[0].task, task("s", 0, "charge", "5"));

    let timer = fetch_one(&store, "s", fire_at).await;
    assert_eq!(timer.history_len, 4);
    assert_eq!(labels(&timer.messages), ["TimerFired"]);
    assert_eq!(timer.instance.status, RuntimeStatus::Running);
}

/// `create_started` writes nothing for an id that is taken, whatever the reuse policy and
/// whether the instance is running, leased or finished.
pub async fn create_started_declines_a_taken_id(store: Arc<dyn Store>) {
    if !store.supports_create_started() {
        return;
    }
    create(&store, new_instance("o", "Other", "null", T0)).await;
    create(&store, new_instance("t", "Taken", "\"orig\"", T0)).await;
    let o = fetch_one(&store, "o", T0).await;
    let mut done = commit_for(&o, RuntimeStatus::Running, T0);
    done.new_events = vec![ev(0, T0, Event::OrchestratorStarted)];
    commit(&store, done).await;

    let attempt = |reuse: IdReusePolicy, now: Timestamp| {
        let mut new = new_instance("t", "Taken", "\"new\"", now);
        new.reuse = reuse;
        let first = first_episode(&new, now, at(10_000));
        (new, first)
    };
    // Pending, not leased.
    for reuse in [
        IdReusePolicy::ReplaceFinished,
        IdReusePolicy::DedupeRunning,
        IdReusePolicy::TerminateRunning,
    ] {
        let (new, first) = attempt(reuse, at(1));
        assert_eq!(
            store.create_started(new, first).await,
            Ok(None),
            "a taken id is declined ({reuse:?})"
        );
    }
    // Leased.
    let item = fetch_one(&store, "t", at(2)).await;
    let (new, first) = attempt(IdReusePolicy::TerminateRunning, at(2));
    assert_eq!(store.create_started(new, first).await, Ok(None));
    assert_eq!(
        labels(&item.messages),
        ["ExecutionStarted"],
        "the original start is still there"
    );
    // The lease still holds: its commit goes through.
    let mut end = commit_for(&item, RuntimeStatus::Completed, at(3));
    end.new_events = vec![
        ev(0, at(3), Event::OrchestratorStarted),
        ev(
            1,
            at(3),
            Event::ExecutionCompleted {
                status: RuntimeStatus::Completed,
                output: Some("\"done\"".into()),
                failure: None,
            },
        ),
    ];
    end.output = Some("\"done\"".into());
    commit(&store, end).await;
    // Finished.
    let (new, first) = attempt(IdReusePolicy::ReplaceFinished, at(4));
    assert_eq!(store.create_started(new, first).await, Ok(None));

    let r = record(&store, "t").await;
    assert_eq!(
        (r.status, r.execution, r.input.as_str()),
        (RuntimeStatus::Completed, 1, "\"orig\""),
        "the taken instance is untouched"
    );
    let kinds: Vec<&str> = history(&store, "t")
        .await
        .iter()
        .map(|e| e.event.kind())
        .collect();
    assert_eq!(kinds, ["OrchestratorStarted", "ExecutionCompleted"]);
    assert!(
        store
            .fetch_activity_work(at(5), LONG, 10)
            .await
            .expect("fetch_activity_work")
            .is_empty(),
        "no declined episode enqueued an activity"
    );
    assert!(
        fetch(&store, at(5)).await.is_none(),
        "no declined episode sent a message"
    );
    assert!(
        fetch(&store, at(10_000)).await.is_none(),
        "no declined episode armed a timer"
    );
}

/// `create_leased` stores a brand-new instance with its start message, leased to the
/// caller: no fetch takes it while the lease holds, the lease's commit consumes the start,
/// a taken id is declined with nothing written whatever the reuse policy, and once a lease
/// runs out (its worker stopped) a fetch takes the instance with its start, and the old
/// lease's commit is refused. (A store that does not support it writes nothing.)
pub async fn create_leased_leases_the_new_instance(store: Arc<dyn Store>) {
    let lease = Duration::from_secs(60);
    let Some(item) = store
        .create_leased(new_instance("l", "Leased", "\"in\"", T0), at(1), lease)
        .await
        .expect("create_leased")
    else {
        assert_eq!(
            store.read_instance(&id("l")).await.expect("read_instance"),
            None,
            "a store without create_leased creates nothing"
        );
        return;
    };
    assert_eq!(item.instance.instance_id.as_str(), "l");
    assert_eq!(
        (
            item.instance.status,
            item.instance.execution,
            item.history_len
        ),
        (RuntimeStatus::Pending, 1, 0)
    );
    assert_eq!(labels(&item.messages), ["ExecutionStarted"]);
    let r = record(&store, "l").await;
    assert_eq!(
        (r.status, r.input.as_str(), r.created_at),
        (RuntimeStatus::Pending, "\"in\"", T0),
        "stored as create_instance stores it"
    );
    assert!(
        fetch(&store, at(2)).await.is_none(),
        "leased: no fetch takes it"
    );
    for reuse in [
        IdReusePolicy::ReplaceFinished,
        IdReusePolicy::DedupeRunning,
        IdReusePolicy::TerminateRunning,
    ] {
        let mut again = new_instance("l", "Leased", "\"other\"", at(2));
        again.reuse = reuse;
        assert_eq!(
            store
                .create_leased(again, at(2), lease)
                .await
                .map(|i| i.is_some()),
            Ok(false),
            "a taken id is declined ({reuse:?})"
        );
    }
    // An event raised meanwhile waits; the lease's commit consumes only the start.
    store
        .send_message(&id("l"), raised("early", at(2)))
        .await
        .expect("send_message");
    assert!(fetch(&store, at(2)).await.is_none(), "still leased");
    let mut first = commit_for(&item, RuntimeStatus::Running, at(3));
    first.new_events = vec![ev(0, at(3), Event::OrchestratorStarted)];
    commit(&store, first).await;
    let next = fetch_one(&store, "l", at(4)).await;
    assert_eq!(labels(&next.messages), ["early"], "the start was consumed");
    commit(&store, commit_for(&next, RuntimeStatus::Running, at(4))).await;
    let r = record(&store, "l").await;
    assert_eq!(
        (r.status, r.input.as_str()),
        (RuntimeStatus::Running, "\"in\"")
    );

    // A lease given back (`abandon_episode`) lets any fetch take the instance at once.
    let back = store
        .create_leased(new_instance("b", "Leased", "null", at(5)), at(5), lease)
        .await
        .expect("create_leased")
        .expect("a new id is created");
    store
        .abandon_episode(&id("b"), back.lock, at(5), None)
        .await
        .expect("abandon_episode");
    let taken = fetch_one(&store, "b", at(5)).await;
    assert_eq!(labels(&taken.messages), ["ExecutionStarted"]);
    commit(&store, commit_for(&taken, RuntimeStatus::Running, at(5))).await;

    // A worker that never runs the episode: the lease runs out, and any fetch takes it.
    let stale = store
        .create_leased(new_instance("x", "Leased", "null", at(10)), at(10), lease)
        .await
        .expect("create_leased")
        .expect("a new id is created");
    let expired = at(10) + lease + Duration::from_millis(1);
    let taken = fetch_one(&store, "x", expired).await;
    assert_eq!(labels(&taken.messages), ["ExecutionStarted"]);
    assert!(
        matches!(
            store
                .commit_episode(commit_for(&stale, RuntimeStatus::Running, expired))
                .await,
            Err(StoreError::LockLost(_))
        ),
        "the lost lease's commit is refused"
    );
    commit(&store, commit_for(&taken, RuntimeStatus::Running, expired)).await;
    assert!(fetch(&store, at(1_000_000)).await.is_none());
}

/// The names of fetched activity tasks, in the order fetched.
/// [`Store::commit_episode_eager`], which must succeed: the task it leased, if any.
async fn eager(
    store: &Arc<dyn Store>,
    c: EpisodeCommit,
    task: usize,
    now: Timestamp,
    lease: Duration,
) -> Option<super::ActivityWorkItem> {
    store
        .commit_episode_eager(c, task, now, lease)
        .await
        .expect("commit_episode_eager")
}

/// Activity `seq`'s result `result`, at `at`, for execution 1.
fn task_done(seq: u64, result: &str, at: Timestamp) -> Message {
    Message::new(
        Event::TaskCompleted {
            seq,
            result: result.into(),
        },
        Some(1),
        at,
    )
}

fn task_names(work: &[super::ActivityWorkItem]) -> Vec<&str> {
    work.iter().map(|w| w.task.name.as_str()).collect()
}

/// An episode's commit that leases one of its new tasks to the committer
/// ([`Store::commit_episode_eager`]): no fetch hands that task out while the lease holds
/// (counted from the write's time, not the episode's), the other tasks are queued as
/// usual, the holder's result is recorded as a fetched task's is, and a lease that runs
/// out puts the task back. No task is leased so while tasks queued earlier are due, nor by
/// a commit whose lease on the instance is gone.
#[allow(clippy::too_many_lines, reason = "one scenario, asserted step by step")]
pub async fn commit_episode_eager_leases_one_new_task(store: Arc<dyn Store>) {
    let lease = Duration::from_secs(60);
    create(&store, new_instance("e", "Eager", "null", T0)).await;
    let item = fetch_one(&store, "e", T0).await;
    let mut c = commit_for(&item, RuntimeStatus::Running, at(1));
    c.new_events = vec![ev(0, at(1), Event::OrchestratorStarted)];
    c.activities = vec![task("e", 0, "A", "1"), task("e", 1, "B", "2")];
    // The episode began at 1 ms; its commit is written at 1 s.
    let written = at(1_000);
    let leased = eager(&store, c, 1, written, lease).await;
    if !store.supports_eager_dispatch() {
        assert!(
            leased.is_none(),
            "leased by a store that does not say it can"
        );
        let work = store
            .fetch_activity_work(at(1), lease, 10)
            .await
            .expect("fetch_activity_work");
        assert_eq!(
            task_names(&work),
            ["A", "B"],
            "a store that leases nothing queues every task"
        );
        return;
    }
    let b = leased.expect("nothing is due: the task is leased");
    assert_eq!(
        (b.task.name.as_str(), b.task.seq, b.task.input.as_str()),
        ("B", 1, "2"),
        "the task asked for is leased"
    );
    let a = store
        .fetch_activity_work(at(1) + lease + Duration::from_millis(1), lease, 10)
        .await
        .expect("fetch_activity_work");
    assert_eq!(
        task_names(&a),
        ["A"],
        "the leased task is not fetched: its lease counts from the write"
    );
    assert_ne!(a[0].id, b.id);
    assert!(
        store
            .renew_activity_lock(b.id, b.lock, written + lease)
            .await
            .is_ok(),
        "the committer holds the lease"
    );
    let done = task_done(1, "\"b\"", at(3));
    store
        .complete_activity(b.id, b.lock, done)
        .await
        .expect("complete_activity");
    let next = fetch_one(&store, "e", at(3)).await;
    assert_eq!(labels(&next.messages), ["TaskCompleted"]);

    // `A` is leased (to whoever fetched it), not due: the next task may be leased eagerly.
    let mut c = commit_for(&next, RuntimeStatus::Running, at(4));
    c.activities = vec![task("e", 2, "C", "3")];
    let c_task = eager(&store, c, 0, at(4), lease)
        .await
        .expect("nothing due is queued: leased");
    assert_eq!(c_task.task.name, "C");
    // `A` given back is due: a task scheduled now must not overtake it.
    store
        .abandon_activity(a[0].id, a[0].lock, at(5))
        .await
        .expect("abandon_activity");
    store
        .send_message(&id("e"), raised("go", at(5)))
        .await
        .expect("send_message");
    let item = fetch_one(&store, "e", at(6)).await;
    let mut c = commit_for(&item, RuntimeStatus::Running, at(6));
    c.activities = vec![task("e", 3, "D", "4")];
    assert!(
        eager(&store, c, 0, at(6), lease).await.is_none(),
        "an earlier task is due: nothing leased"
    );
    let queued = store
        .fetch_activity_work(at(6), lease, 10)
        .await
        .expect("fetch_activity_work");
    assert_eq!(task_names(&queued), ["A", "D"], "queued in order");

    // A commit whose instance lease is gone leases (and writes) nothing.
    store
        .send_message(&id("e"), raised("late", at(7)))
        .await
        .expect("send_message");
    let stale = fetch_one(&store, "e", at(7)).await;
    let expired = at(7) + LONG + Duration::from_millis(1);
    let taken = fetch_one(&store, "e", expired).await;
    let mut c = commit_for(&stale, RuntimeStatus::Running, expired);
    c.activities = vec![task("e", 4, "E", "5")];
    assert!(
        matches!(
            store.commit_episode_eager(c, 0, expired, lease).await,
            Err(StoreError::LockLost(_))
        ),
        "the lost lease's commit is refused"
    );
    // Every lease so far has run out by then, though no fetch has put the tasks back yet:
    // they are due, so the new task is queued, not leased.
    let mut c = commit_for(&taken, RuntimeStatus::Running, expired);
    c.activities = vec![task("e", 5, "F", "6")];
    assert!(
        eager(&store, c, 0, expired, lease).await.is_none(),
        "tasks whose leases ran out are due: nothing leased"
    );
    // C (never completed) comes back; E never existed.
    let back = store
        .fetch_activity_work(expired, lease, 10)
        .await
        .expect("fetch_activity_work");
    let mut names = task_names(&back);
    names.sort_unstable();
    assert_eq!(
        names,
        ["A", "C", "D", "F"],
        "expired leases put the tasks back"
    );
    assert!(
        back.iter()
            .any(|w| w.id == c_task.id && w.lock != c_task.lock),
        "the eagerly leased task comes back under a new lease"
    );
}

/// An eager commit asked to keep its instance's lease ([`EpisodeCommit::keep_lease`]) keeps
/// it if and only if it leases its task, in a store that says it keeps leases
/// ([`Store::keeps_lease_for_eager`]): no fetch hands the instance out meanwhile, until the
/// kept lease ends — with the next commit under the same token, with
/// [`Store::release_kept_lease`], or when it runs out. A commit asked to keep while the
/// instance has messages due leases no task (they would wait behind the lease). Any other
/// store releases the instance.
#[allow(clippy::too_many_lines, reason = "one scenario, asserted step by step")]
pub async fn commit_episode_eager_keeps_the_instance_leased(store: Arc<dyn Store>) {
    let lease = Duration::from_secs(60);
    let keep_ms = 30_000;
    let keep = Duration::from_millis(keep_ms);
    create(&store, new_instance("k", "Keep", "null", T0)).await;
    let item = fetch_one(&store, "k", T0).await;
    let mut c = commit_for(&item, RuntimeStatus::Running, at(1));
    c.new_events = vec![ev(0, at(1), Event::OrchestratorStarted)];
    c.activities = vec![task("k", 0, "A", "1")];
    c.custom_status = Some("\"one\"".into());
    c.keep_lease = Some(keep);
    let a = eager(&store, c, 0, at(2), lease).await;
    store
        .send_message(&id("k"), raised("meanwhile", at(3)))
        .await
        .expect("send_message");
    if !(store.supports_eager_dispatch() && store.keeps_lease_for_eager()) {
        let next = fetch_one(&store, "k", at(3)).await;
        assert_eq!(
            labels(&next.messages),
            ["meanwhile"],
            "a store that keeps no lease releases the instance"
        );
        // `release_kept_lease` (its default) gives a lease back all the same.
        store
            .release_kept_lease(&id("k"), next.lock)
            .await
            .expect("release_kept_lease");
        let again = fetch_one(&store, "k", at(3)).await;
        assert_eq!(labels(&again.messages), ["meanwhile"], "given back");
        return;
    }
    let a = a.expect("nothing is due: the task is leased");
    assert!(
        store
            .fetch_orchestration_work(at(3), lease)
            .await
            .expect("fetch_orchestration_work")
            .is_none(),
        "the kept lease holds the instance back, its event due or not"
    );
    assert!(
        store
            .fetch_instances_work(&[id("k")], at(2 + keep_ms - 1), lease)
            .await
            .expect("fetch_instances_work")
            .is_empty(),
        "nor is it leased by name while the kept lease holds"
    );
    assert_eq!(
        record(&store, "k").await.custom_status.as_deref(),
        Some("\"one\""),
        "the commit that kept the lease is stored all the same"
    );
    // The committer's next episode, under the kept lease: the task's result from memory.
    // It asks to keep the lease again, but the event waits: no task is leased, and the
    // instance is released.
    let mut c = EpisodeCommit::new(id("k"), item.lock, RuntimeStatus::Running, at(4));
    c.new_events = vec![ev(
        1,
        at(4),
        Event::TaskCompleted {
            seq: 0,
            result: "\"a\"".into(),
        },
    )];
    c.completed_activities = vec![(a.id, a.lock)];
    c.activities = vec![task("k", 1, "B", "2")];
    c.keep_lease = Some(keep);
    assert!(
        eager(&store, c, 0, at(4), lease).await.is_none(),
        "an event is due: no task leased, no lease kept"
    );
    let next = fetch_one(&store, "k", at(4)).await;
    assert_eq!(
        labels(&next.messages),
        ["meanwhile"],
        "released by the next commit: the event that waited is due"
    );
    assert_eq!(next.history_len, 2, "both episodes' events are stored");
    let queued = store
        .fetch_activity_work(at(2) + lease + Duration::from_millis(1), lease, 10)
        .await
        .expect("fetch_activity_work");
    assert_eq!(
        task_names(&queued),
        ["B"],
        "A was completed by the second commit; B was queued"
    );
    store
        .complete_activity(queued[0].id, queued[0].lock, task_done(1, "null", at(5)))
        .await
        .expect("complete_activity");

    // Kept again, then given back without an episode: the instance is due at once for
    // the messages that arrived meanwhile; a second give-back changes nothing.
    let mut c = commit_for(&next, RuntimeStatus::Running, at(6));
    c.activities = vec![task("k", 2, "C", "3")];
    c.custom_status = Some("\"three\"".into());
    c.keep_lease = Some(keep);
    assert!(
        eager(&store, c, 0, at(6), lease).await.is_none(),
        "B's result is due: C is queued, the instance released"
    );
    let item = fetch_one(&store, "k", at(7)).await;
    assert_eq!(labels(&item.messages), ["TaskCompleted"]);
    let mut c = commit_for(&item, RuntimeStatus::Running, at(7));
    c.activities = vec![task("k", 3, "D", "4")];
    c.keep_lease = Some(keep);
    assert!(
        eager(&store, c, 0, at(7), lease).await.is_none(),
        "C is due (queued earlier): D is queued too"
    );
    let queued = store
        .fetch_activity_work(at(7), lease, 10)
        .await
        .expect("fetch_activity_work");
    assert_eq!(task_names(&queued), ["C", "D"]);
    for t in &queued {
        store
            .complete_activity(t.id, t.lock, task_done(t.task.seq, "null", at(8)))
            .await
            .expect("complete_activity");
    }
    let item = fetch_one(&store, "k", at(8)).await;
    let mut c = commit_for(&item, RuntimeStatus::Running, at(8));
    c.activities = vec![task("k", 4, "E", "5")];
    c.custom_status = Some("\"eight\"".into());
    c.keep_lease = Some(keep);
    let e = eager(&store, c, 0, at(8), lease)
        .await
        .expect("nothing is due: E is leased");
    assert_eq!(e.task.name, "E");
    store
        .send_message(&id("k"), raised("during", at(9)))
        .await
        .expect("send_message");
    assert!(fetch(&store, at(9)).await.is_none(), "kept");
    store
        .release_kept_lease(&id("k"), item.lock)
        .await
        .expect("release_kept_lease");
    let taken = fetch_one(&store, "k", at(9)).await;
    assert_eq!(
        labels(&taken.messages),
        ["during"],
        "given back: the event is due at once"
    );
    assert_eq!(
        taken.instance.custom_status.as_deref(),
        Some("\"eight\""),
        "the record is as the commit that kept the lease left it"
    );
    store
        .release_kept_lease(&id("k"), item.lock)
        .await
        .expect("a lease no longer held is left alone");
    let c = commit_for(&taken, RuntimeStatus::Running, at(10));
    commit(&store, c).await;

    // A kept lease runs out like any other: the instance is taken, and the committer's
    // commit under it is refused.
    store
        .complete_activity(e.id, e.lock, task_done(4, "null", at(10)))
        .await
        .expect("complete_activity");
    let item = fetch_one(&store, "k", at(10)).await;
    let mut c = commit_for(&item, RuntimeStatus::Running, at(11));
    c.activities = vec![task("k", 5, "F", "6")];
    c.keep_lease = Some(keep);
    let f = eager(&store, c, 0, at(11), lease)
        .await
        .expect("nothing is due: F is leased");
    store
        .complete_activity(f.id, f.lock, task_done(5, "null", at(12)))
        .await
        .expect("complete_activity");
    assert!(
        fetch(&store, at(11 + keep_ms - 1)).await.is_none(),
        "kept: F's result waits"
    );
    let taken = fetch_one(&store, "k", at(11 + keep_ms)).await;
    assert_eq!(
        labels(&taken.messages),
        ["TaskCompleted"],
        "once the kept lease runs out, the instance is taken with its messages"
    );
    let c = EpisodeCommit::new(id("k"), item.lock, RuntimeStatus::Running, at(11 + keep_ms));
    assert!(
        matches!(store.commit_episode(c).await, Err(StoreError::LockLost(_))),
        "the run-out kept lease no longer commits"
    );
}

/// An episode that only appends events (its status and custom status as they were: a step
/// of a sequence) is the instance's last update, for every read — one instance, a page by
/// id, a page newest first, the record a lease hands out — as for any other episode.
pub async fn a_step_that_only_appends_events_is_the_last_update(store: Arc<dyn Store>) {
    create(&store, new_instance("u", "Steps", "null", T0)).await;
    let item = fetch_one(&store, "u", T0).await;
    let mut first = commit_for(&item, RuntimeStatus::Running, at(1));
    first.new_events = vec![ev(0, at(1), Event::OrchestratorStarted)];
    first.custom_status = Some("\"c\"".into());
    commit(&store, first).await;

    store
        .send_message(&id("u"), raised("go", at(2)))
        .await
        .expect("send_message");
    let item = fetch_one(&store, "u", at(2)).await;
    let mut step = commit_for(&item, RuntimeStatus::Running, at(3));
    step.new_events = vec![
        ev(1, at(3), Event::OrchestratorStarted),
        ev(
            2,
            at(3),
            Event::EventRaised {
                name: "go".into(),
                input: "null".into(),
            },
        ),
    ];
    step.custom_status = Some("\"c\"".into());
    commit(&store, step).await;

    let r = record(&store, "u").await;
    assert_eq!(
        (r.status, r.custom_status.as_deref(), r.last_updated_at),
        (RuntimeStatus::Running, Some("\"c\""), at(3))
    );
    for newest_first in [false, true] {
        let mut q = InstanceQuery::new();
        q.newest_first = newest_first;
        let page = store.query_instances(&q).await.expect("query_instances");
        assert_eq!(
            page.instances[0].last_updated_at,
            at(3),
            "newest first: {newest_first}"
        );
    }
    store
        .send_message(&id("u"), raised("again", at(4)))
        .await
        .expect("send_message");
    let item = fetch_one(&store, "u", at(4)).await;
    assert_eq!(
        item.instance.last_updated_at,
        at(3),
        "the leased record agrees"
    );
    commit(&store, commit_for(&item, RuntimeStatus::Running, at(4))).await;
}

/// A first episode may start sub-orchestrations: they are created with it, and a child id
/// taken by a running instance comes back to the new instance as `SubOrchestrationFailed`.
pub async fn create_started_with_children(store: Arc<dyn Store>) {
    if !store.supports_create_started() {
        return;
    }
    create(&store, new_instance("busy", "Child", "\"orig\"", T0)).await;
    let busy = fetch_one(&store, "busy", T0).await;
    let mut done = commit_for(&busy, RuntimeStatus::Running, T0);
    done.new_events = vec![ev(0, T0, Event::OrchestratorStarted)];
    commit(&store, done).await;

    let new = new_instance("p", "Parent", "null", T0);
    let now = at(5);
    let mut first = EpisodeCommit::new(id("p"), LockToken(u64::MAX), RuntimeStatus::Running, now);
    first.new_events = vec![
        ev(0, now, Event::OrchestratorStarted),
        ev(1, now, new.start_message().event),
        sub_created(2, now, 0, "kid"),
        sub_created(3, now, 1, "busy"),
    ];
    for (seq, child) in [(0, "kid"), (1, "busy")] {
        let mut c = new_instance(child, "Child", "null", now);
        c.parent = Some(ParentRef {
            instance_id: id("p"),
            execution: 1,
            seq,
        });
        first.new_instances.push((seq, c));
    }
    let events = first.new_events.clone();
    assert!(
        store
            .create_started(new, first)
            .await
            .expect("create_started")
            .is_some(),
        "a new id is created"
    );
    assert_eq!(history(&store, "p").await, events);
    let kid = record(&store, "kid").await;
    assert_eq!(
        kid.parent.as_ref().map(|p| (p.instance_id.as_str(), p.seq)),
        Some(("p", 0))
    );
    let items = fetch_all(&store, now).await;
    let ids = ids_of(&items);
    assert_eq!(
        ids,
        ["kid", "p"],
        "the child starts; the parent hears of the refusal"
    );
    assert_eq!(labels(&items[0].messages), ["ExecutionStarted"]);
    assert_eq!(labels(&items[1].messages), ["SubOrchestrationFailed"]);
    assert_eq!(items[1].history_len, 4);
    let busy = record(&store, "busy").await;
    assert_eq!((busy.input.as_str(), busy.parent), ("\"orig\"", None));
}

/// `next_wake_time_for` right after a fetch (what an idle dispatcher asks) reflects that
/// fetch's leases and every write made since.
pub async fn next_wake_time_for_after_fetch(store: Arc<dyn Store>) {
    let mut later = new_instance("later", "Job", "null", T0);
    later.scheduled_start = Some(at(60_000));
    create(&store, later).await;
    create(&store, new_instance("now", "Job", "null", T0)).await;
    let item = store
        .fetch_orchestration_work(T0, Duration::from_secs(300))
        .await
        .expect("fetch")
        .expect("work for `now`");
    let orchestrations = |store: Arc<dyn Store>| async move {
        store
            .next_wake_time_for(WorkKind::Orchestration)
            .await
            .expect("next_wake_time_for")
    };
    let activities = |store: Arc<dyn Store>| async move {
        store
            .next_wake_time_for(WorkKind::Activity)
            .await
            .expect("next_wake_time_for")
    };
    assert_eq!(orchestrations(Arc::clone(&store)).await, Some(at(60_000)));
    assert!(
        store
            .fetch_activity_work(T0, LONG, 4)
            .await
            .expect("fetch_activity_work")
            .is_empty()
    );
    assert_eq!(activities(Arc::clone(&store)).await, None);

    // Fetches, then a write: the write's timer and task count.
    assert!(fetch(&store, T0).await.is_none());
    assert!(
        store
            .fetch_activity_work(T0, LONG, 4)
            .await
            .expect("fetch_activity_work")
            .is_empty()
    );
    let mut c = commit_for(&item, RuntimeStatus::Running, T0);
    c.messages = vec![(
        id("now"),
        Message::new(
            Event::TimerFired {
                seq: 0,
                fire_at: at(30_000),
            },
            Some(1),
            at(30_000),
        ),
    )];
    c.activities = vec![task("now", 1, "charge", "5")];
    commit(&store, c).await;
    assert_eq!(
        orchestrations(Arc::clone(&store)).await,
        Some(at(30_000)),
        "the timer committed after the fetch"
    );
    assert_eq!(
        activities(Arc::clone(&store)).await,
        Some(T0),
        "the task committed after the fetch"
    );
    // Asked twice, the same answer.
    assert_eq!(orchestrations(Arc::clone(&store)).await, Some(at(30_000)));
}

/// A step that finishes nothing bumps `changed` but not `finished`: completion waiters do
/// not read their instance again after every step of every instance.
pub async fn a_step_does_not_bump_finished(store: Arc<dyn Store>) {
    create(&store, new_instance("a", "Job", "null", T0)).await;
    let sig = store.signals();
    let mut changed = sig.changed.subscribe();
    let finished = sig.finished.subscribe();
    episode(&store, "a", T0, RuntimeStatus::Running, |c| {
        c.activities = vec![task("a", 0, "one", "1")];
        c.custom_status = Some("\"step\"".into());
    })
    .await;
    assert!(
        changed.has_changed().expect("watch open"),
        "a step bumps `changed`"
    );
    assert!(
        !finished.has_changed().expect("watch open"),
        "a step does not bump `finished`"
    );
    changed.borrow_and_update();
    let work = store
        .fetch_activity_work(T0, LONG, 1)
        .await
        .expect("fetch_activity_work");
    store
        .complete_activity(work[0].id, work[0].lock, raised("done", T0))
        .await
        .expect("complete_activity");
    assert!(
        !finished.has_changed().expect("watch open"),
        "an activity result does not bump `finished`"
    );
    finish(&store, "a", T0, RuntimeStatus::Completed).await;
    assert!(
        finished.has_changed().expect("watch open"),
        "the finishing step bumps `finished`"
    );
}
