//! Storage: the [`Store`] trait every backend implements, the in-memory store, the redb
//! store (feature `redb`, on by default) and the `PostgreSQL` store (feature `postgres`).
//!
//! A store keeps, per instance, a record (status, input, output, custom status), an
//! append-only history and an inbox of messages; plus a queue of activity tasks. The
//! operations are few, atomic and batch-friendly: an episode's whole effect is one
//! [`Store::commit_episode`]. Stores know nothing about replay.

pub(crate) mod app;
#[cfg(feature = "conformance")]
#[cfg_attr(docsrs, doc(cfg(feature = "conformance")))]
pub mod conformance;
mod memory;
pub(crate) mod metrics;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redb")]
mod redb;
pub(crate) mod replace;

use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use self::app::TransactionalRun;
use crate::error::{FailureDetails, PayloadDecodeError, StoreError};
use crate::history::{Event, HistoryEvent, ParentRef, Payload, RuntimeStatus};
use crate::ids::{InstanceId, Timestamp};
use crate::trace_context::TraceContext;

#[cfg(feature = "redb")]
#[cfg_attr(docsrs, doc(cfg(feature = "redb")))]
pub use self::redb::{RedbDurability, RedbStore, RedbStoreBuilder};
pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use postgres::{PostgresOptions, PostgresStore};

/// What a store knows about one instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct InstanceRecord {
    /// Instance id.
    pub instance_id: InstanceId,
    /// Orchestrator name.
    pub name: String,
    /// Version stamped at start.
    pub version: Option<String>,
    /// Execution number; grows with continue-as-new and id reuse.
    pub execution: u32,
    /// Current status.
    pub status: RuntimeStatus,
    /// JSON input of the current execution.
    pub input: Payload,
    /// JSON output, once completed (or the reason, once terminated).
    pub output: Option<Payload>,
    /// Failure details, once failed.
    pub failure: Option<FailureDetails>,
    /// JSON custom status.
    pub custom_status: Option<Payload>,
    /// When the instance was created.
    pub created_at: Timestamp,
    /// Last change.
    pub last_updated_at: Timestamp,
    /// Scheduled start time, if any.
    pub scheduled_start: Option<Timestamp>,
    /// Parent, for sub-orchestrations.
    pub parent: Option<ParentRef>,
    /// Why the instance is stuck (non-determinism, unknown orchestrator, version mismatch).
    pub last_error: Option<String>,
}

impl InstanceRecord {
    /// The record as the episode `c` leaves it: its status, output, failure, custom status,
    /// last error and time — and, for a continue-as-new, the next execution's number, input
    /// and version.
    pub(crate) fn apply_episode(&mut self, c: &EpisodeCommit) {
        self.status = c.status;
        self.output.clone_from(&c.output);
        self.failure.clone_from(&c.failure);
        self.custom_status.clone_from(&c.custom_status);
        self.last_updated_at = c.now;
        self.last_error.clone_from(&c.last_error);
        if let Some(next) = &c.next_execution {
            self.continue_as(next);
        }
    }

    /// The record as a continue-as-new leaves it: the next execution's number, input and
    /// version, and no outcome yet.
    pub(crate) fn continue_as(&mut self, next: &NextExecution) {
        self.execution += 1;
        self.input.clone_from(&next.input);
        self.version.clone_from(&next.version);
        self.status = RuntimeStatus::ContinuedAsNew;
        self.output = None;
        self.failure = None;
    }

    /// `true` if this instance is the sub-orchestration `parent` names (and not an instance
    /// that took the id over since, nor a top-level one).
    pub fn is_child_of(&self, parent: &ParentRef) -> bool {
        self.parent.as_ref() == Some(parent)
    }

    /// How a sub-orchestration that action `seq` of this instance's current execution
    /// started names its parent.
    pub(crate) fn child_ref(&self, seq: u64) -> ParentRef {
        ParentRef {
            instance_id: self.instance_id.clone(),
            execution: self.execution,
            seq,
        }
    }

    /// The input of the current execution, decoded as `T` (with the rule orchestrations
    /// decode inputs by: a JSON string holding a `T`, as Durable Functions clients send,
    /// is accepted too).
    ///
    /// # Errors
    /// [`PayloadDecodeError`] when the input is not a `T`.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    ///
    /// #[orchestrator]
    /// async fn double(_ctx: OrchestrationContext, x: i64) -> Result<i64, OrchestrationError> {
    ///     Ok(x * 2)
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = Worker::builder().store(MemoryStore::new()).register(double).start()?;
    /// let run = double::start(&worker.client(), 21).await?;
    /// run.wait().await?;
    /// let record = run.status().await?;
    /// assert_eq!(record.input::<i64>()?, 21);
    /// assert_eq!(record.output::<i64>()?, Some(42));
    /// assert_eq!(record.custom_status::<String>()?, None);
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn input<T: DeserializeOwned>(&self) -> Result<T, PayloadDecodeError> {
        crate::payload::decode_external(&self.input)
    }

    /// The output decoded as `T`: `Some` once the instance completed, `None` before and
    /// when it failed or was terminated (a terminated instance's `output` field holds the
    /// reason; a failed one's [`failure`](Self::failure) field the failure).
    ///
    /// # Errors
    /// [`PayloadDecodeError`] when the output is not a `T`.
    pub fn output<T: DeserializeOwned>(&self) -> Result<Option<T>, PayloadDecodeError> {
        match (&self.output, self.status) {
            (Some(out), RuntimeStatus::Completed) => crate::error::decode(out).map(Some),
            _ => Ok(None),
        }
    }

    /// The custom status decoded as `T`; `None` when none is set (never set, or cleared
    /// with `OrchestrationContext::clear_custom_status`).
    ///
    /// # Errors
    /// [`PayloadDecodeError`] when the custom status is not a `T`.
    pub fn custom_status<T: DeserializeOwned>(&self) -> Result<Option<T>, PayloadDecodeError> {
        self.custom_status
            .as_deref()
            .map(crate::error::decode)
            .transpose()
    }
}

/// What to do when an instance id is already taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub enum IdReusePolicy {
    /// Replace a finished instance; reject if it is still running (Durable Functions' default).
    #[default]
    ReplaceFinished,
    /// Reject whenever the id exists.
    RejectExisting,
    /// Replace a finished instance; return the existing one if it is still running
    /// (deduplicated start).
    DedupeRunning,
    /// Replace a finished instance; terminate a running one and start the new one in its
    /// place, in one atomic step (Durable Task's `TERMINATE` policy).
    ///
    /// The replaced execution ends as a terminate ends it, without running its code: it and
    /// every running descendant (also under finished sub-orchestrations) are `Terminated`,
    /// the entity locks they hold are released, and a parent waiting for the replaced
    /// instance gets a `Terminated` failure. The new instance starts with the next execution
    /// number, an empty history and an empty inbox; results that were still on their way
    /// to the old execution carry its execution number and are dropped.
    TerminateRunning,
}

/// A new instance to create.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct NewInstance {
    /// Instance id.
    pub instance_id: InstanceId,
    /// Orchestrator name.
    pub name: String,
    /// Version to stamp.
    pub version: Option<String>,
    /// JSON input.
    pub input: Payload,
    /// Start no earlier than this.
    pub scheduled_start: Option<Timestamp>,
    /// Parent, for sub-orchestrations.
    pub parent: Option<ParentRef>,
    /// Creation time.
    pub created_at: Timestamp,
    /// What to do if the id exists.
    pub reuse: IdReusePolicy,
    /// The trace the instance belongs to (stored on its `ExecutionStarted`).
    pub trace_context: Option<TraceContext>,
}

impl NewInstance {
    /// A new instance with default options.
    pub fn new(
        instance_id: InstanceId,
        name: impl Into<String>,
        input: Payload,
        created_at: Timestamp,
    ) -> Self {
        Self {
            instance_id,
            name: name.into(),
            version: None,
            input,
            scheduled_start: None,
            parent: None,
            created_at,
            reuse: IdReusePolicy::default(),
            trace_context: None,
        }
    }

    /// The record of the new instance, replacing `previous` (the instance that had the id)
    /// if any: its execution number follows the previous one's, and its creation time is
    /// later than the previous one's even if the clock says otherwise, so the creation time
    /// tells one run of an id from the next (continue-as-new keeps it).
    pub(crate) fn record(&self, previous: Option<&InstanceRecord>) -> InstanceRecord {
        let created_at = match previous {
            Some(p) if p.created_at >= self.created_at => p.created_at + Duration::from_millis(1),
            _ => self.created_at,
        };
        InstanceRecord {
            instance_id: self.instance_id.clone(),
            name: self.name.clone(),
            version: self.version.clone(),
            execution: previous.map_or(1, |p| p.execution + 1),
            status: RuntimeStatus::Pending,
            input: self.input.clone(),
            output: None,
            failure: None,
            custom_status: None,
            created_at,
            last_updated_at: created_at,
            scheduled_start: self.scheduled_start,
            parent: self.parent.clone(),
            last_error: None,
        }
    }

    /// The `ExecutionStarted` message that begins this instance.
    pub fn start_message(&self) -> Message {
        Message::new(
            Event::ExecutionStarted {
                name: self.name.clone(),
                version: self.version.clone(),
                input: self.input.clone(),
                parent: self.parent.clone(),
                scheduled_start: self.scheduled_start,
                carried: Vec::new(),
                trace_context: self.trace_context.clone(),
            },
            None,
            self.scheduled_start.unwrap_or(self.created_at),
        )
    }
}

/// What [`Store::create_instance`] did.
#[derive(Debug, Clone, PartialEq)]
#[allow(
    clippy::large_enum_variant,
    reason = "returned once per start; boxing buys nothing"
)]
#[non_exhaustive]
pub enum CreateResult {
    /// A new instance (or a replacement of a finished one) was created: its record.
    Created(InstanceRecord),
    /// The id belongs to a running instance and the policy deduplicates: nothing changed.
    Existing(InstanceRecord),
}

/// Orders messages in an inbox: by visibility time, then arrival.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct MessageId {
    /// When the message becomes visible.
    pub visible_at: Timestamp,
    /// Store-assigned arrival number.
    pub seq: u64,
}

/// A message in an instance's inbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Message {
    /// Assigned by the store on enqueue.
    pub id: MessageId,
    /// The event to deliver.
    pub event: Event,
    /// For completions: the execution they belong to (stale ones are dropped).
    pub execution: Option<u32>,
}

impl Message {
    /// A message visible from `visible_at`.
    pub fn new(event: Event, execution: Option<u32>, visible_at: Timestamp) -> Self {
        Self {
            id: MessageId { visible_at, seq: 0 },
            event,
            execution,
        }
    }

    /// The `SubOrchestrationFailed` that tells `parent` its child failed with `failure`,
    /// addressed to the parent's execution, with the instance to send it to.
    pub(crate) fn child_failed(
        parent: &ParentRef,
        failure: FailureDetails,
        now: Timestamp,
    ) -> (InstanceId, Message) {
        (
            parent.instance_id.clone(),
            Message::new(
                Event::SubOrchestrationFailed {
                    seq: parent.seq,
                    failure,
                },
                Some(parent.execution),
                now,
            ),
        )
    }
}

/// Whether an instance in `status` takes `event` as a message: a running one takes any; a
/// finished one only a rewind request, and only if it failed. Every store's
/// [`Store::send_message`] follows this.
///
/// # Examples
///
/// ```
/// use durable_core::history::{Event, RuntimeStatus};
/// use durable_core::storage::accepts_message;
///
/// let rewind = Event::ExecutionRewound { reason: String::new(), seqs: vec![] };
/// assert!(accepts_message(RuntimeStatus::Failed, &rewind));
/// assert!(!accepts_message(RuntimeStatus::Completed, &rewind));
/// let resume = Event::ExecutionResumed { reason: String::new() };
/// assert!(!accepts_message(RuntimeStatus::Failed, &resume));
/// assert!(accepts_message(RuntimeStatus::Running, &resume));
/// ```
pub fn accepts_message(status: RuntimeStatus, event: &Event) -> bool {
    !status.is_terminal()
        || (status == RuntimeStatus::Failed && matches!(event, Event::ExecutionRewound { .. }))
}

/// `true` for the messages that end an instance's hold ([`Store::abandon_episode`]) when
/// they arrive: a terminate, which applies at once even to an instance waiting for its
/// scheduled start or held back after a failed episode. Every other message waits for the
/// hold to end. Every store's enqueue (sent, or from a commit) follows this.
///
/// # Examples
///
/// ```
/// use durable_core::history::Event;
/// use durable_core::storage::ends_hold;
///
/// let terminate = Event::ExecutionTerminated { reason: "stop".into(), child_of: None };
/// assert!(ends_hold(&terminate));
/// let raised = Event::EventRaised { name: "x".into(), input: "1".into() };
/// assert!(!ends_hold(&raised));
/// ```
pub fn ends_hold(event: &Event) -> bool {
    matches!(event, Event::ExecutionTerminated { .. })
}

/// `true` for the requests whose acceptance depends on the instance's suspended state
/// (suspend and resume); a store checks them with [`check_control`].
pub fn is_control_request(event: &Event) -> bool {
    matches!(
        event,
        Event::ExecutionSuspended { .. } | Event::ExecutionResumed { .. }
    )
}

/// Checks a suspend or resume request against the instance's state: its stored `status`,
/// then the suspend and resume requests already `queued` for it (accepted, not yet applied
/// by a worker), in inbox order. A suspended instance cannot be suspended again, and only
/// a suspended one can be resumed; a pending instance can be suspended (it starts
/// suspended). Other events pass. Every store's [`Store::send_message`] makes this check
/// in the same atomic step as the enqueue, after [`accepts_message`], so two clients racing
/// to suspend get one success and one error.
///
/// # Errors
/// [`StoreError::InvalidState`] naming the state the request met.
///
/// # Examples
///
/// ```
/// use durable_core::history::{Event, RuntimeStatus};
/// use durable_core::storage::check_control;
/// use durable_core::{InstanceId, StoreError};
///
/// let id = InstanceId::new("a").unwrap();
/// let suspend = Event::ExecutionSuspended { reason: String::new() };
/// let resume = Event::ExecutionResumed { reason: String::new() };
/// assert!(check_control(&id, RuntimeStatus::Running, [], &suspend).is_ok());
/// // A suspend is already queued: a resume applies, a second suspend does not.
/// assert!(check_control(&id, RuntimeStatus::Running, [&suspend], &resume).is_ok());
/// let err = check_control(&id, RuntimeStatus::Running, [&suspend], &suspend).unwrap_err();
/// assert_eq!(err.to_string(), "cannot suspend instance `a` in the Suspended state");
/// assert!(matches!(
///     check_control(&id, RuntimeStatus::Running, [], &resume),
///     Err(StoreError::InvalidState { status: RuntimeStatus::Running, .. })
/// ));
/// ```
pub fn check_control<'a>(
    instance: &InstanceId,
    status: RuntimeStatus,
    queued: impl IntoIterator<Item = &'a Event>,
    event: &Event,
) -> Result<(), StoreError> {
    let operation = match event {
        Event::ExecutionSuspended { .. } => "suspend",
        Event::ExecutionResumed { .. } => "resume",
        _ => return Ok(()),
    };
    let mut suspended = status == RuntimeStatus::Suspended;
    for e in queued {
        match e {
            Event::ExecutionSuspended { .. } => suspended = true,
            Event::ExecutionResumed { .. } => suspended = false,
            _ => {}
        }
    }
    if suspended == (operation == "resume") {
        return Ok(());
    }
    let status = match (suspended, status) {
        (true, _) => RuntimeStatus::Suspended,
        (false, RuntimeStatus::Suspended) => RuntimeStatus::Running,
        (false, other) => other,
    };
    Err(StoreError::InvalidState {
        instance: instance.to_string(),
        status,
        operation,
    })
}

/// A lease on a work item; commits with a stale token are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LockToken(pub u64);

/// An instance with visible messages, locked for one episode.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct OrchestrationWorkItem {
    /// The instance.
    pub instance: InstanceRecord,
    /// Length of its current history (the worker's cache uses it to detect staleness).
    pub history_len: u64,
    /// Visible messages, in order.
    pub messages: Vec<Message>,
    /// The lease.
    pub lock: LockToken,
}

/// An activity task to enqueue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ActivityTask {
    /// The orchestration that scheduled it.
    pub instance_id: InstanceId,
    /// Its execution.
    pub execution: u32,
    /// Action sequence number.
    pub seq: u64,
    /// Activity name.
    pub name: String,
    /// JSON input.
    pub input: Payload,
    /// 1-based attempt under the caller's retry policy (1 in tasks written before it was
    /// recorded).
    #[serde(default = "first_attempt", skip_serializing_if = "is_first_attempt")]
    pub attempt: u32,
    /// Start-to-close timeout of each run, enforced by the worker running it
    /// (`CallOptions::timeout`; milliseconds in JSON).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::history::millis"
    )]
    pub timeout: Option<Duration>,
    /// Longest a run may go without a heartbeat (`CallOptions::heartbeat_timeout`;
    /// milliseconds in JSON). A store leases the task for no longer than this
    /// ([`lease_for`](Self::lease_for)).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::history::millis"
    )]
    pub heartbeat_timeout: Option<Duration>,
    /// The last heartbeat details (JSON): carried from the previous attempt's failure when
    /// the task is scheduled, replaced by those a run records
    /// ([`Store::record_activity_heartbeat`]). A fetched task carries the latest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<Payload>,
    /// The W3C context of the execution that scheduled it: the parent of each run's span.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "TraceContext::lenient"
    )]
    pub trace_context: Option<TraceContext>,
}

impl ActivityTask {
    /// A first attempt of activity `name` with `input`, scheduled by action `seq` of
    /// `instance_id`'s execution `execution`, without timeouts or heartbeat details.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use durable_core::InstanceId;
    /// use durable_core::storage::ActivityTask;
    ///
    /// let mut task = ActivityTask::new(InstanceId::new("order-7").unwrap(), 1, 0, "charge", "42".into());
    /// task.heartbeat_timeout = Some(Duration::from_secs(30));
    /// assert_eq!(task.lease_for(Duration::from_secs(300)), Duration::from_secs(30));
    /// ```
    pub fn new(
        instance_id: InstanceId,
        execution: u32,
        seq: u64,
        name: impl Into<String>,
        input: Payload,
    ) -> Self {
        Self {
            instance_id,
            execution,
            seq,
            name: name.into(),
            input,
            attempt: 1,
            timeout: None,
            heartbeat_timeout: None,
            heartbeat: None,
            trace_context: None,
        }
    }

    /// The lease on this task when `granted` is the store's activity lease: no longer than
    /// its heartbeat timeout, so a task whose worker died (and stopped renewing) is taken
    /// over a heartbeat timeout later. Every store leases tasks for this long, and the
    /// worker renews them at half of it.
    pub fn lease_for(&self, granted: Duration) -> Duration {
        match self.heartbeat_timeout {
            Some(h) if !h.is_zero() => granted.min(h),
            _ => granted,
        }
    }
}

fn first_attempt() -> u32 {
    1
}

#[allow(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if passes a reference"
)]
fn is_first_attempt(attempt: &u32) -> bool {
    *attempt == 1
}

/// A leased activity task.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ActivityWorkItem {
    /// Store id of the task.
    pub id: u64,
    /// The task.
    pub task: ActivityTask,
    /// The lease.
    pub lock: LockToken,
}

/// Starting the next execution after continue-as-new.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct NextExecution {
    /// Input of the next execution.
    pub input: Payload,
    /// Version of the next execution.
    pub version: Option<String>,
    /// Messages the new execution starts with: `ExecutionStarted`, then carried events.
    pub messages: Vec<Message>,
}

/// Everything one episode changes, applied atomically by [`Store::commit_episode`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EpisodeCommit {
    /// The instance.
    pub instance_id: InstanceId,
    /// The lease from the work item.
    pub lock: LockToken,
    /// Messages handled in this episode (removed from the inbox).
    pub consumed: Vec<MessageId>,
    /// Events appended to history.
    pub new_events: Vec<HistoryEvent>,
    /// New status.
    pub status: RuntimeStatus,
    /// Output (completed / terminated).
    pub output: Option<Payload>,
    /// Failure (failed).
    pub failure: Option<FailureDetails>,
    /// Custom status.
    pub custom_status: Option<Payload>,
    /// Commit time.
    pub now: Timestamp,
    /// Activities to enqueue.
    pub activities: Vec<ActivityTask>,
    /// Messages to enqueue: to this instance (timers) or others.
    pub messages: Vec<(InstanceId, Message)>,
    /// Sub-orchestrations to create. If a child id is taken by a running instance, the
    /// store delivers `SubOrchestrationFailed` to this instance instead.
    pub new_instances: Vec<(u64, NewInstance)>,
    /// Set for continue-as-new: history is reset and the next execution begins.
    pub next_execution: Option<NextExecution>,
    /// Leased activity tasks (id, lease) whose results this episode consumed straight from
    /// the worker's memory (see [`Store::supports_activity_handoff`]): removed from the queue
    /// in the same transaction. A task whose lease is no longer held is left alone (whoever
    /// holds it reports the result, which the orchestration then ignores as a duplicate).
    pub completed_activities: Vec<(u64, LockToken)>,
    /// Shown in the instance's status as [`InstanceRecord::last_error`] (`None` clears it):
    /// why a request to the instance was declined.
    pub last_error: Option<String>,
    /// Eager dispatch only ([`Store::commit_episode_eager`]): when the commit leases its new
    /// task to the committer, the instance stays leased to the committer under `lock`, for
    /// this long from the write (as [`fetch_instances_work`](Store::fetch_instances_work)
    /// would lease it), instead of being released — the episode that takes the task's
    /// result then runs without leasing the instance again. The kept lease ends with the
    /// next commit under `lock` (which may keep it again),
    /// [`release_kept_lease`](Store::release_kept_lease), or its expiry; meanwhile no
    /// fetch hands the instance out, so its new messages wait. A store that keeps leases
    /// ([`Store::keeps_lease_for_eager`]) keeps it if and only if it leases the task, and
    /// leases no task when the instance has messages due at the write (they would wait
    /// behind the kept lease); any other store, and a commit that leases no task, releases
    /// the instance as usual. `None` (the default): released.
    ///
    /// ```
    /// # use durable_core::storage::{ActivityTask, EpisodeCommit, MemoryStore, NewInstance, Store};
    /// # use durable_core::history::{Payload, RuntimeStatus};
    /// # use durable_core::ids::{InstanceId, Timestamp};
    /// # use std::time::Duration;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = MemoryStore::new();
    /// let id = InstanceId::new("order-1")?;
    /// let now = Timestamp::from_unix_millis(1_000);
    /// store.create_instance(NewInstance::new(id.clone(), "Order", Payload::from("null"), now)).await?;
    /// let item = store.fetch_orchestration_work(now, Duration::from_secs(30)).await?.unwrap();
    /// let mut commit = EpisodeCommit::new(id.clone(), item.lock, RuntimeStatus::Running, now);
    /// commit.consumed = item.messages.iter().map(|m| m.id.clone()).collect();
    /// commit.activities.push(ActivityTask::new(id.clone(), 1, 0, "Charge", "null".into()));
    /// commit.keep_lease = Some(Duration::from_secs(30));
    /// let task = store.commit_episode_eager(commit, 0, now, Duration::from_secs(30)).await?;
    /// assert!(task.is_some());
    /// // Still leased to the committer: nobody else can lease it by name.
    /// assert!(store.fetch_instances_work(&[id.clone()], now, Duration::from_secs(30)).await?.is_empty());
    /// store.release_kept_lease(&id, item.lock).await?;
    /// assert_eq!(store.fetch_instances_work(&[id], now, Duration::from_secs(30)).await?.len(), 1);
    /// # Ok(()) }
    /// ```
    pub keep_lease: Option<Duration>,
}

impl EpisodeCommit {
    /// An empty commit for `instance_id` under `lock`.
    pub fn new(
        instance_id: InstanceId,
        lock: LockToken,
        status: RuntimeStatus,
        now: Timestamp,
    ) -> Self {
        Self {
            instance_id,
            lock,
            consumed: Vec::new(),
            new_events: Vec::new(),
            status,
            output: None,
            failure: None,
            custom_status: None,
            now,
            activities: Vec::new(),
            messages: Vec::new(),
            new_instances: Vec::new(),
            next_execution: None,
            completed_activities: Vec::new(),
            last_error: None,
            keep_lease: None,
        }
    }
}

/// How much work waits in a store at one moment: what [`Store::queue_depths`] answers and
/// what the worker's queue gauges show (feature `metrics`).
///
/// Work that a worker holds a lease on is not waiting and is not counted; work whose lease
/// expired is waiting again and is.
///
/// # Examples
///
/// ```
/// use durable_core::{MemoryStore, Store, Timestamp};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = MemoryStore::new();
/// let now = Timestamp::from_unix_millis(1_700_000_000_000);
/// let depths = store.queue_depths(now).await?.expect("the memory store counts its queues");
/// assert_eq!(depths.ready_orchestrations, 0);
/// assert_eq!(depths.ready_activities, 0);
/// assert_eq!(depths.timers_due, 0);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct QueueDepths {
    /// Instances a worker could lease for an episode: with at least one message visible at
    /// the time asked about, and no lease held on them.
    pub ready_orchestrations: u64,
    /// Activity tasks a worker could lease: visible at the time asked about and not leased.
    pub ready_activities: u64,
    /// Durable timers that are due (their `TimerFired` message is visible) and wait in the
    /// inbox of an instance counted in [`ready_orchestrations`](Self::ready_orchestrations):
    /// fired, not yet delivered. Near 0 in a worker that keeps up.
    pub timers_due: u64,
}

impl QueueDepths {
    /// Counts, as [`Store::queue_depths`] answers them.
    pub fn new(ready_orchestrations: u64, ready_activities: u64, timers_due: u64) -> Self {
        Self {
            ready_orchestrations,
            ready_activities,
            timers_due,
        }
    }
}

/// Filters for [`Store::query_instances`].
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct InstanceQuery {
    /// Only these statuses (empty: all).
    pub statuses: Vec<RuntimeStatus>,
    /// Only this orchestrator name.
    pub name: Option<String>,
    /// Created at or after.
    pub created_from: Option<Timestamp>,
    /// Created at or before.
    pub created_to: Option<Timestamp>,
    /// Instance ids starting with this prefix.
    pub id_prefix: Option<String>,
    /// Page size (0: default 100).
    pub page_size: usize,
    /// Continuation token from the previous page.
    pub continuation: Option<String>,
    /// Include entity instances (`@name@key`); off by default so orchestration queries
    /// list only orchestrations.
    pub include_entities: bool,
    /// Order pages by creation time, newest first (ties by id, descending) instead of by
    /// id. The continuation tokens of the two orders differ; send back the one this order
    /// returned.
    pub newest_first: bool,
}

impl InstanceQuery {
    /// All instances, 100 per page.
    pub fn new() -> Self {
        Self::default()
    }
    /// Only these statuses.
    pub fn statuses(mut self, statuses: impl IntoIterator<Item = RuntimeStatus>) -> Self {
        self.statuses = statuses.into_iter().collect();
        self
    }
    /// Only this orchestrator name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
    /// Created in `[from, to]`.
    pub fn created_between(mut self, from: Option<Timestamp>, to: Option<Timestamp>) -> Self {
        self.created_from = from;
        self.created_to = to;
        self
    }
    /// Ids with this prefix.
    pub fn id_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.id_prefix = Some(prefix.into());
        self
    }
    /// Page size.
    pub fn page_size(mut self, n: usize) -> Self {
        self.page_size = n;
        self
    }
    /// Continue after a previous page.
    pub fn continuation(mut self, token: Option<String>) -> Self {
        self.continuation = token;
        self
    }
    /// Newest first (by creation time) instead of by id.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::InstanceQuery;
    ///
    /// let q = InstanceQuery::new().newest_first().page_size(50);
    /// assert!(q.newest_first);
    /// ```
    pub fn newest_first(mut self) -> Self {
        self.newest_first = true;
        self
    }

    /// `true` if `r` passes the filters (paging aside).
    pub fn matches(&self, r: &InstanceRecord) -> bool {
        (self.include_entities || !r.instance_id.as_str().starts_with('@'))
            && (self.statuses.is_empty() || self.statuses.contains(&r.status))
            && self.name.as_ref().is_none_or(|n| *n == r.name)
            && self.created_from.is_none_or(|t| r.created_at >= t)
            && self.created_to.is_none_or(|t| r.created_at <= t)
            && self
                .id_prefix
                .as_ref()
                .is_none_or(|p| r.instance_id.as_str().starts_with(p.as_str()))
    }

    /// The effective page size.
    pub fn effective_page_size(&self) -> usize {
        if self.page_size == 0 {
            100
        } else {
            self.page_size.min(10_000)
        }
    }
}

/// The continuation token of a newest-first page ending at `r`: `<created ms>:<id>`.
pub fn newest_first_token(r: &InstanceRecord) -> String {
    format!("{}:{}", r.created_at.as_unix_millis(), r.instance_id)
}

/// Parses [`newest_first_token`]'s output.
pub fn parse_newest_first_token(token: &str) -> Option<(Timestamp, &str)> {
    let (ms, id) = token.split_once(':')?;
    Some((Timestamp::from_unix_millis(ms.parse().ok()?), id))
}

/// One newest-first page out of `candidates` (records that already pass
/// [`InstanceQuery::matches`]), for stores that scan: those older than the continuation,
/// newest first, at most one page, and the token of the next page.
pub fn newest_first_page<T>(
    query: &InstanceQuery,
    mut candidates: Vec<T>,
    record: impl Fn(&T) -> &InstanceRecord,
) -> (Vec<T>, Option<String>) {
    if let Some((at, id)) = query
        .continuation
        .as_deref()
        .and_then(parse_newest_first_token)
    {
        candidates.retain(|c| {
            let r = record(c);
            (r.created_at, r.instance_id.as_str()) < (at, id)
        });
    }
    let page = query.effective_page_size();
    let newest = |a: &T, b: &T| {
        let (a, b) = (record(a), record(b));
        (b.created_at, b.instance_id.as_str()).cmp(&(a.created_at, a.instance_id.as_str()))
    };
    let more = candidates.len() > page;
    if more {
        candidates.select_nth_unstable_by(page, newest);
        candidates.truncate(page);
    }
    candidates.sort_unstable_by(newest);
    let next = if more {
        candidates.last().map(|c| newest_first_token(record(c)))
    } else {
        None
    };
    (candidates, next)
}

/// A per-status tally, for [`Store::count_instances`] implementations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusCounts([u64; 7]);

impl StatusCounts {
    const ORDER: [RuntimeStatus; 7] = RuntimeStatus::ALL;

    /// Adds `n` instances of `status`.
    pub fn add(&mut self, status: RuntimeStatus, n: u64) {
        if let Some(i) = Self::ORDER.iter().position(|s| *s == status) {
            self.0[i] += n;
        }
    }

    /// The non-zero counts, in [`RuntimeStatus`] declaration order.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::RuntimeStatus;
    /// use durable_core::storage::StatusCounts;
    ///
    /// let mut counts = StatusCounts::default();
    /// counts.add(RuntimeStatus::Failed, 2);
    /// counts.add(RuntimeStatus::Running, 1);
    /// assert_eq!(
    ///     counts.into_vec(),
    ///     vec![(RuntimeStatus::Running, 1), (RuntimeStatus::Failed, 2)]
    /// );
    /// ```
    pub fn into_vec(self) -> Vec<(RuntimeStatus, u64)> {
        Self::ORDER
            .into_iter()
            .zip(self.0)
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// One page of query results.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct InstancePage {
    /// The instances, ordered by id.
    pub instances: Vec<InstanceRecord>,
    /// Token for the next page; `None` on the last page.
    pub continuation: Option<String>,
}

/// The two kinds of leased work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WorkKind {
    /// Orchestration (and entity) episodes: inbox messages and instance leases.
    Orchestration,
    /// Activity tasks and their leases.
    Activity,
}

/// Wake-ups a store gives to dispatchers and waiting clients, so nothing polls.
#[derive(Debug)]
pub struct StoreSignals {
    /// Orchestration work may be available.
    pub orchestration: Notify,
    /// Activity work may be available.
    pub activity: Notify,
    /// Some instance changed (bumped on every commit and control message).
    pub changed: watch::Sender<u64>,
    /// Some instance may have finished (reached a terminal status) or been purged: bumped
    /// by every commit that finishes an instance (a store that cannot tell, such as one
    /// hearing of other processes' writes, bumps it with `changed`). Waiting for completion
    /// watches this rather than `changed`, so waiters wake when an instance ends, not on
    /// every step of every instance.
    pub finished: watch::Sender<u64>,
}

impl Default for StoreSignals {
    fn default() -> Self {
        Self {
            orchestration: Notify::new(),
            activity: Notify::new(),
            changed: watch::channel(0).0,
            finished: watch::channel(0).0,
        }
    }
}

impl StoreSignals {
    /// Signals that an instance finished or was purged (and that something changed).
    pub fn instance_finished(&self) {
        self.finished.send_modify(|v| *v = v.wrapping_add(1));
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }
    /// Signals new orchestration work and a state change.
    pub fn orchestration_work(&self) {
        self.orchestration.notify_one();
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }
    /// Signals new activity work.
    pub fn activity_work(&self) {
        self.activity.notify_one();
    }
}

/// A durable store of instances, histories, inboxes and activity tasks.
///
/// Every operation is atomic. An implementation must pass the conformance suite in
/// `storage::conformance` (run against every store by `durable-core/tests/store.rs`).
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Creates an instance (record + `ExecutionStarted` in its inbox), following the id-reuse
    /// policy.
    async fn create_instance(&self, new: NewInstance) -> Result<CreateResult, StoreError>;

    /// Enqueues a message for an instance. Fails with `InstanceNotFound`; with
    /// `InstanceNotRunning` when the instance is finished and the message is not one a
    /// finished instance takes ([`accepts_message`]: a rewind request to a failed one); with
    /// `InvalidState` for a suspend or resume that does not apply ([`check_control`],
    /// checked against the requests already queued in the same atomic step).
    async fn send_message(
        &self,
        instance_id: &InstanceId,
        message: Message,
    ) -> Result<(), StoreError>;

    /// Leases the next instance with messages visible at `now`.
    async fn fetch_orchestration_work(
        &self,
        now: Timestamp,
        lock_for: Duration,
    ) -> Result<Option<OrchestrationWorkItem>, StoreError>;

    /// Leases up to `max` instances with messages visible at `now`, as
    /// [`fetch_orchestration_work`](Store::fetch_orchestration_work) does one, so a dispatcher
    /// with several free slots fetches once. Fewer than `max` means no other instance was
    /// ready: the worker then waits for a signal or the next wake time. The default calls
    /// `fetch_orchestration_work` until it has `max` or finds none.
    async fn fetch_orchestration_batch(
        &self,
        now: Timestamp,
        lock_for: Duration,
        max: usize,
    ) -> Result<Vec<OrchestrationWorkItem>, StoreError> {
        let mut items = Vec::new();
        while items.len() < max {
            match self.fetch_orchestration_work(now, lock_for).await? {
                Some(item) => items.push(item),
                None => break,
            }
        }
        Ok(items)
    }

    /// Applies an episode atomically. Fails with `LockLost` if the lease is no longer held.
    async fn commit_episode(&self, commit: EpisodeCommit) -> Result<(), StoreError>;

    /// [`commit_episode`](Store::commit_episode), and in the same write the new activity
    /// task `commit.activities[task]` is leased to the committing worker (from `now`, the
    /// time of the write, for [`ActivityTask::lease_for`]`(lock_for)`, as
    /// [`fetch_activity_work`](Store::fetch_activity_work) would lease it), which runs it at
    /// once instead of fetching it: eager dispatch, a fetch fewer per step of a chain. The
    /// other tasks are queued as usual.
    ///
    /// `Ok(None)` when the commit went through without the lease: the store does not
    /// support it (the default, which just commits; see
    /// [`supports_eager_dispatch`](Store::supports_eager_dispatch)), or tasks queued
    /// earlier are due at `now` (an eager task must not jump that queue), or the commit
    /// asks to keep the instance's lease ([`EpisodeCommit::keep_lease`]) of a store that
    /// keeps leases while the instance has messages due at `now` (`PostgresStore` counts
    /// those due at the latest `now` of the commits it writes together, the messages they
    /// send included), or `task` is out of range, or the store commits this episode
    /// another way (`PostgresStore`: one that creates sub-orchestrations).
    ///
    /// ```
    /// # use durable_core::storage::{EpisodeCommit, MemoryStore, NewInstance, Store};
    /// # use durable_core::history::{Payload, RuntimeStatus};
    /// # use durable_core::ids::{InstanceId, Timestamp};
    /// # use durable_core::storage::ActivityTask;
    /// # use std::time::Duration;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = MemoryStore::new();
    /// let id = InstanceId::new("order-1")?;
    /// let now = Timestamp::from_unix_millis(1_000);
    /// store.create_instance(NewInstance::new(id.clone(), "Order", Payload::from("null"), now)).await?;
    /// let item = store.fetch_orchestration_work(now, Duration::from_secs(30)).await?.unwrap();
    /// let mut commit = EpisodeCommit::new(id.clone(), item.lock, RuntimeStatus::Running, now);
    /// commit.consumed = item.messages.iter().map(|m| m.id.clone()).collect();
    /// commit.activities.push(ActivityTask::new(id, 1, 0, "Charge", "null".into()));
    /// let leased = store.commit_episode_eager(commit, 0, now, Duration::from_secs(30)).await?;
    /// assert_eq!(leased.unwrap().task.name, "Charge");
    /// // Leased to the committer: not handed to anyone who fetches.
    /// assert!(store.fetch_activity_work(now, Duration::from_secs(30), 10).await?.is_empty());
    /// # Ok(()) }
    /// ```
    async fn commit_episode_eager(
        &self,
        commit: EpisodeCommit,
        task: usize,
        now: Timestamp,
        lock_for: Duration,
    ) -> Result<Option<ActivityWorkItem>, StoreError> {
        let _ = (task, now, lock_for);
        self.commit_episode(commit).await.map(|()| None)
    }

    /// `true` if the store implements
    /// [`commit_episode_eager`](Store::commit_episode_eager); a worker only sets a slot
    /// aside for a task its commit may lease when it is. The default is `false`.
    ///
    /// ```
    /// use durable_core::storage::{MemoryStore, Store};
    ///
    /// assert!(MemoryStore::new().supports_eager_dispatch());
    /// ```
    fn supports_eager_dispatch(&self) -> bool {
        false
    }

    /// `true` if [`commit_episode_eager`](Store::commit_episode_eager) honours
    /// [`EpisodeCommit::keep_lease`]: the instance stays leased to the committer if and only
    /// if its task is (the worker relies on both or neither), and
    /// [`release_kept_lease`](Store::release_kept_lease) gives such a lease back. A worker
    /// asks for it only then, and runs the episode that takes the task's result under the
    /// kept lease; the default is `false`.
    ///
    /// ```
    /// use durable_core::storage::{MemoryStore, Store};
    ///
    /// assert!(MemoryStore::new().keeps_lease_for_eager());
    /// ```
    fn keeps_lease_for_eager(&self) -> bool {
        false
    }

    /// Creates a brand-new instance together with its first episode, in one durable write:
    /// as [`create_instance`](Store::create_instance) followed by a lease and a
    /// [`commit_episode`](Store::commit_episode) of `first`, which consumed the instance's
    /// `ExecutionStarted` (the store fills in `first.consumed` and `first.lock`). A worker
    /// that shares the process with the starting client runs the first episode before the
    /// instance is stored, saving a commit per start.
    ///
    /// All or nothing: `Ok(None)` when nothing was written — the id is taken (whatever the
    /// reuse policy), the instance is leased, or the store does not support it (the
    /// default) — and the caller then creates the instance the ordinary way. `Some` holds
    /// the created record, as `create_instance` returns it.
    async fn create_started(
        &self,
        new: NewInstance,
        first: EpisodeCommit,
    ) -> Result<Option<InstanceRecord>, StoreError> {
        let _ = (new, first);
        Ok(None)
    }

    /// Creates a brand-new instance leased to the caller, in one durable write: as
    /// [`create_instance`](Store::create_instance) (its `ExecutionStarted` stored in the
    /// inbox) followed by a lease of it until `now + lock_for`, so that no other worker
    /// takes it meanwhile. Returns the lease's work item, its `ExecutionStarted` the one
    /// message. A worker that shares the process with the starting client uses it for a
    /// start whose first episode runs local activities, on a store that also supports
    /// [`create_started`](Store::create_started) and does not
    /// [lease in process](Store::leases_in_process) (where a fetch is a round trip): the
    /// start returns once the instance is stored, and this worker runs the episode at once,
    /// without a fetch. If it stops first, it gives the lease back
    /// ([`abandon_episode`](Store::abandon_episode)); after a crash the lease runs out, and
    /// any worker takes the instance.
    ///
    /// `Ok(None)` when nothing was written — the id is taken (whatever the reuse policy) or
    /// the store does not support it (the default) — and the caller then creates the
    /// instance the ordinary way.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use durable_core::prelude::*;
    /// use durable_core::storage::{NewInstance, Store};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = MemoryStore::new();
    /// let now = Timestamp::from_unix_millis(1_000);
    /// let new = NewInstance::new(InstanceId::new("order-1")?, "Checkout", "null".into(), now);
    /// let item = store.create_leased(new.clone(), now, Duration::from_secs(30)).await?;
    /// let item = item.expect("a new id");
    /// assert_eq!(item.messages.len(), 1); // its ExecutionStarted
    /// // Leased: no fetch takes it, and the id is taken for a second call.
    /// assert!(store.fetch_orchestration_work(now, Duration::from_secs(30)).await?.is_none());
    /// assert!(store.create_leased(new, now, Duration::from_secs(30)).await?.is_none());
    /// # Ok(()) }
    /// ```
    async fn create_leased(
        &self,
        new: NewInstance,
        now: Timestamp,
        lock_for: Duration,
    ) -> Result<Option<OrchestrationWorkItem>, StoreError> {
        let _ = (new, now, lock_for);
        Ok(None)
    }

    /// `true` if the store implements [`create_started`](Store::create_started); a worker
    /// only runs a first episode at the start (its local activities among it) when it is.
    /// The default is `false`.
    fn supports_create_started(&self) -> bool {
        false
    }

    /// `true` if leasing an instance is an in-process operation (no round trip to a server),
    /// so a worker may lease an instance on its own as soon as an activity result for it
    /// arrives, rather than leave it to the dispatcher, which leases every instance waiting
    /// at that moment in one call. The default is `false`, right for a store behind a
    /// network: one lease per instance would cost a round trip each. Such a store's new
    /// instances are fetched by the dispatcher too, not created leased to the starting
    /// worker ([`create_leased`](Store::create_leased)): its fetch costs next to nothing.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_core::storage::Store;
    ///
    /// assert!(MemoryStore::new().leases_in_process());
    /// ```
    fn leases_in_process(&self) -> bool {
        false
    }

    /// `true` if the store honours [`EpisodeCommit::completed_activities`] and
    /// [`fetch_instances_work`](Store::fetch_instances_work), so a worker may hand an activity
    /// result to its orchestration in memory and have it committed with the episode that
    /// consumes it (one durable write per step instead of two; a crash before that commit
    /// runs the activity again). The worker keeps renewing the task's lease
    /// ([`renew_activity_lock`](Store::renew_activity_lock)) until that commit, so a healthy
    /// worker's finished activity is never taken over and run again. The default is `false`:
    /// results go through [`complete_activity`](Store::complete_activity).
    fn supports_activity_handoff(&self) -> bool {
        false
    }

    /// Leases the given instances for episodes whether or not they have visible messages
    /// (their new messages come from the worker's memory), each with the messages it has.
    /// Instances that are locked or do not exist are left out. Only called when
    /// [`supports_activity_handoff`](Store::supports_activity_handoff) is `true`.
    async fn fetch_instances_work(
        &self,
        instance_ids: &[InstanceId],
        now: Timestamp,
        lock_for: Duration,
    ) -> Result<Vec<OrchestrationWorkItem>, StoreError> {
        let _ = (instance_ids, now, lock_for);
        Ok(Vec::new())
    }

    /// Gives back a lease that [`commit_episode_eager`](Store::commit_episode_eager) kept
    /// ([`EpisodeCommit::keep_lease`]) without an episode: the instance stays as that commit
    /// left it, and its messages are due at once. A lease no longer held is left alone. As
    /// a lease taken by a fetch, this need not be durable: lost in a crash, the lease runs
    /// out. The default gives it back with [`abandon_episode`](Store::abandon_episode)
    /// (which clears the instance's shown error); a store that keeps leases answers it
    /// more cheaply.
    async fn release_kept_lease(
        &self,
        instance_id: &InstanceId,
        lock: LockToken,
    ) -> Result<(), StoreError> {
        match self
            .abandon_episode(instance_id, lock, Timestamp::from_unix_millis(0), None)
            .await
        {
            Err(StoreError::LockLost(_)) => Ok(()),
            other => other,
        }
    }

    /// Releases a lease without changes and holds the instance back until `retry_at`: no
    /// fetch takes it earlier, not even for messages that arrive meanwhile, and
    /// [`next_wake_time`](Store::next_wake_time) and [`queue_depths`](Store::queue_depths)
    /// count it from then. Its messages keep their own visibility, so they are delivered in
    /// the order they always had (a message that arrives during the hold comes after those
    /// that arrived before it). The hold ends with the instance's next commit (a later
    /// abandon replaces it), or when a terminate arrives ([`ends_hold`]). `error` is shown
    /// in the instance's status.
    async fn abandon_episode(
        &self,
        instance_id: &InstanceId,
        lock: LockToken,
        retry_at: Timestamp,
        error: Option<String>,
    ) -> Result<(), StoreError>;

    /// The lease this store grants on an instance when a worker asks for `requested`
    /// ([`fetch_orchestration_batch`](Store::fetch_orchestration_batch)'s and
    /// [`fetch_instances_work`](Store::fetch_instances_work)'s `lock_for`). A store configured
    /// with a lease of its own (such as `PostgresOptions::orchestration_lease`) answers that
    /// one, so an episode that runs local activities stops them well before the lease
    /// lapses. The default grants what is asked.
    fn orchestration_lease(&self, requested: Duration) -> Duration {
        requested
    }

    /// The lease this store grants on an activity task when a worker asks for `requested`
    /// ([`fetch_activity_work`](Store::fetch_activity_work)'s `lock_for`). A store configured
    /// with a lease of its own (such as `PostgresOptions::activity_lease`) answers that one,
    /// so the worker renews before it lapses. The default grants what is asked.
    fn activity_lease(&self, requested: Duration) -> Duration {
        requested
    }

    /// Leases up to `max` activity tasks visible at `now`, each until `now` plus
    /// [`ActivityTask::lease_for`]`(lock_for)` (shorter for a task with a heartbeat timeout).
    /// A task carries its latest heartbeat details ([`ActivityTask::heartbeat`]).
    async fn fetch_activity_work(
        &self,
        now: Timestamp,
        lock_for: Duration,
        max: usize,
    ) -> Result<Vec<ActivityWorkItem>, StoreError>;

    /// Removes a leased activity task and enqueues its result to the instance, atomically.
    async fn complete_activity(
        &self,
        id: u64,
        lock: LockToken,
        result: Message,
    ) -> Result<(), StoreError>;

    /// Runs a transactional activity's body in a transaction on the application's data and
    /// commits its writes together with the task's completion — as
    /// [`complete_activity`](Store::complete_activity) with the result the body returns —
    /// under the same lease check: with `LockLost` nothing is written (and the body need not
    /// run). A body that fails (or panics) has its writes rolled back; the task is then
    /// completed with the failure. See [`crate::transaction`].
    ///
    /// The default answers [`StoreError::Unsupported`] without running the body; the worker
    /// then fails the task with a non-retriable error naming the store and the activity.
    /// [`RedbStore`] and [`MemoryStore`] (on its in-memory redb
    /// database) run the redb kind ([`crate::transaction::TransactionKind::Redb`]);
    /// `PostgresStore` (feature `postgres`) runs the `PostgreSQL` kind
    /// ([`crate::transaction::TransactionKind::Postgres`]).
    ///
    /// A third-party store cannot execute a [`TransactionalRun`]: its body is reachable only
    /// from this crate. A store that wraps another (a decorator) can forward the run to the
    /// store it wraps; any other store keeps the default.
    async fn complete_activity_in_transaction(
        &self,
        id: u64,
        lock: LockToken,
        run: TransactionalRun,
    ) -> Result<(), StoreError> {
        let _ = (id, lock);
        Err(StoreError::Unsupported(format!(
            "store `{}` cannot run {} for activity `{}`",
            std::any::type_name::<Self>(),
            run.kind(),
            run.activity()
        )))
    }

    /// Returns a leased activity task to the queue, visible again at `retry_at`.
    async fn abandon_activity(
        &self,
        id: u64,
        lock: LockToken,
        retry_at: Timestamp,
    ) -> Result<(), StoreError>;

    /// Extends the lease on an activity task to `until`, so it is not taken over (and run
    /// again) while it is still running, nor while its result waits in the worker's memory
    /// to be committed with its orchestration's next episode
    /// ([`supports_activity_handoff`](Store::supports_activity_handoff)). The worker renews
    /// at half the lease period ([`activity_lease`](Store::activity_lease)), in batches
    /// ([`renew_activity_locks`](Store::renew_activity_locks)). `LockLost` when
    /// the lease is no longer held (it expired and another worker took the task, or the task
    /// is gone).
    async fn renew_activity_lock(
        &self,
        id: u64,
        lock: LockToken,
        until: Timestamp,
    ) -> Result<(), StoreError>;

    /// Extends several activity leases to `until` at once, as
    /// [`renew_activity_lock`](Store::renew_activity_lock) does one: the worker renews all
    /// the leases it holds that are due in one call per round, so a worker holding thousands
    /// (results waiting for their episodes under load) costs one call, not thousands.
    /// Returns the ids of the tasks whose lease is no longer held; the others are extended.
    /// The default renews one lease at a time.
    ///
    /// # Errors
    ///
    /// [`StoreError::Backend`] when the store could not do it (nothing is known of which
    /// leases were extended; the worker tries again shortly).
    async fn renew_activity_locks(
        &self,
        leases: &[(u64, LockToken)],
        until: Timestamp,
    ) -> Result<Vec<u64>, StoreError> {
        let mut lost = Vec::new();
        for &(id, lock) in leases {
            match self.renew_activity_lock(id, lock, until).await {
                Ok(()) => {}
                Err(StoreError::LockLost(_)) => lost.push(id),
                Err(e) => return Err(e),
            }
        }
        Ok(lost)
    }

    /// Records the latest heartbeat details (JSON) of a leased activity task, replacing
    /// earlier ones, and extends its lease to `until`, in one atomic step. The details
    /// survive the lease: a run that takes the task over after this one (its worker died, or
    /// shut down and put the task back) finds them in [`ActivityTask::heartbeat`]. `LockLost`
    /// when the lease is no longer held. The worker calls it at most once per half heartbeat
    /// timeout per running activity (details are throttled, not written per heartbeat).
    ///
    /// The default only extends the lease (as [`renew_activity_lock`](Store::renew_activity_lock)
    /// does) and keeps no details; the conformance suite checks that a store keeps them.
    async fn record_activity_heartbeat(
        &self,
        id: u64,
        lock: LockToken,
        details: Payload,
        until: Timestamp,
    ) -> Result<(), StoreError> {
        let _ = details;
        self.renew_activity_lock(id, lock, until).await
    }

    /// The earliest future time at which work becomes visible (a timer, a delayed message,
    /// an expiring lease), for dispatchers to sleep until.
    async fn next_wake_time(&self) -> Result<Option<Timestamp>, StoreError>;

    /// [`next_wake_time`](Store::next_wake_time) for one kind of work only, so a dispatcher
    /// does not wake for work it cannot take. The default answers for all kinds.
    async fn next_wake_time_for(&self, kind: WorkKind) -> Result<Option<Timestamp>, StoreError> {
        let _ = kind;
        self.next_wake_time().await
    }

    /// How much work waits at `now` ([`QueueDepths`]): instances ready for an episode,
    /// activity tasks ready to run, and due timers not yet delivered. `None` when the store
    /// cannot tell (the default; the conformance suite's `queue_depths` case expects counts).
    /// The built-in stores answer from their ready indexes, so the cost grows with the work
    /// waiting, not with the store's size. A worker built with the `metrics` feature asks
    /// periodically for its queue gauges
    /// ([`WorkerOptions::queue_depth_interval`](crate::WorkerOptions)).
    async fn queue_depths(&self, now: Timestamp) -> Result<Option<QueueDepths>, StoreError> {
        let _ = now;
        Ok(None)
    }

    /// Reads an instance record.
    async fn read_instance(
        &self,
        instance_id: &InstanceId,
    ) -> Result<Option<InstanceRecord>, StoreError>;

    /// Reads the history of the instance's current execution.
    async fn read_history(&self, instance_id: &InstanceId)
    -> Result<Vec<HistoryEvent>, StoreError>;

    /// Lists instances matching a query, ordered by id, one page at a time.
    async fn query_instances(&self, query: &InstanceQuery) -> Result<InstancePage, StoreError>;

    /// How many instances match `query` (its paging ignored), per status: one entry per
    /// status with at least one instance, in [`RuntimeStatus`] declaration order.
    ///
    /// The default pages through [`query_instances`](Self::query_instances); stores that can
    /// count without reading every record (an SQL `GROUP BY`, an in-memory map) override it.
    async fn count_instances(
        &self,
        query: &InstanceQuery,
    ) -> Result<Vec<(RuntimeStatus, u64)>, StoreError> {
        let mut q = query.clone().page_size(10_000).continuation(None);
        let mut counts = StatusCounts::default();
        loop {
            let page = self.query_instances(&q).await?;
            for r in &page.instances {
                counts.add(r.status, 1);
            }
            match page.continuation {
                Some(c) => q = q.continuation(Some(c)),
                None => return Ok(counts.into_vec()),
            }
        }
    }

    /// Removes every trace of an instance. Returns `false` if it did not exist.
    async fn purge_instance(&self, instance_id: &InstanceId) -> Result<bool, StoreError>;

    /// Removes every trace of an instance if, at that moment, it has finished (completed,
    /// failed or terminated) and was last updated no later than `finished_by` — checked and
    /// done in one atomic step, so an instance started again under the same id meanwhile is
    /// left alone. Returns `false` if it did not exist or did not qualify.
    async fn purge_finished_instance(
        &self,
        instance_id: &InstanceId,
        finished_by: Timestamp,
    ) -> Result<bool, StoreError>;

    /// The store's wake-up signals.
    fn signals(&self) -> &StoreSignals;
}

/// Test support for store-level tests of activity completions: creates instance `a`, runs
/// its first episode (scheduling activity task `act`, seq 0) and leases that task once, all
/// at `now`, for `lease`.
#[cfg(all(test, any(feature = "redb", feature = "postgres")))]
pub(crate) async fn lease_one_activity_task(
    store: &dyn Store,
    now: Timestamp,
    lease: Duration,
) -> ActivityWorkItem {
    use crate::history::{Event, HistoryEvent};
    let id = InstanceId::new("a").expect("a valid id");
    store
        .create_instance(NewInstance::new(id.clone(), "Job", "null".into(), now))
        .await
        .expect("create");
    let item = store
        .fetch_orchestration_work(now, lease)
        .await
        .expect("fetch")
        .expect("the new instance");
    let mut c = EpisodeCommit::new(id.clone(), item.lock, RuntimeStatus::Running, now);
    c.consumed = item.messages.iter().map(|m| m.id).collect();
    c.new_events.push(HistoryEvent {
        index: item.history_len,
        timestamp: now,
        event: Event::OrchestratorStarted,
    });
    c.activities = vec![ActivityTask::new(id, 1, 0, "act", "7".to_owned())];
    store.commit_episode(c).await.expect("commit");
    let mut tasks = store
        .fetch_activity_work(now, lease, 1)
        .await
        .expect("fetch the task");
    tasks.remove(0)
}
