//! The event-sourcing vocabulary: every instance has an append-only history of
//! [`HistoryEvent`]s from which its state is rebuilt by replay.
//!
//! History is plain serde data; [`to_json`] and [`from_json`] export and import it (for
//! instance to replay a production history against new code in a test).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::FailureDetails;
use crate::ids::{InstanceId, Timestamp};
use crate::trace_context::TraceContext;

// How the persistent stores read stored history rows back.
#[cfg(any(feature = "redb", feature = "postgres"))]
mod stored;
#[cfg(any(feature = "redb", feature = "postgres"))]
pub(crate) use stored::from_slice as from_stored_json;

/// A JSON-encoded payload (input, output or event data) as stored in history.
pub type Payload = String;

/// Where in the user's source a durable action was created (from `#[track_caller]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceLocation {
    /// Source file.
    pub file: String,
    /// Line, 1-based.
    pub line: u32,
    /// Column, 1-based.
    pub column: u32,
}

impl SourceLocation {
    pub(crate) fn from_caller(loc: &'static std::panic::Location<'static>) -> Self {
        Self {
            file: loc.file().to_owned(),
            line: loc.line(),
            column: loc.column(),
        }
    }
}

impl std::fmt::Display for SourceLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// The parent of a sub-orchestration: where its result must be delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentRef {
    /// The parent instance.
    pub instance_id: InstanceId,
    /// The parent's execution number when the child was created.
    pub execution: u32,
    /// The sequence number of the `SubOrchestrationCreated` action in the parent.
    pub seq: u64,
}

/// An external event carried from one execution to the next by continue-as-new.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarriedEvent {
    /// Event name, as raised.
    pub name: String,
    /// JSON data.
    pub input: Payload,
}

/// The lifecycle status of an orchestration instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RuntimeStatus {
    /// Created, not yet started by a worker (or scheduled for later).
    Pending,
    /// Started and not finished.
    Running,
    /// Suspended: messages are kept but not delivered until resumed.
    Suspended,
    /// Finished with an output.
    Completed,
    /// Finished with a failure.
    Failed,
    /// Ended from outside.
    Terminated,
    /// Transient status between an execution and the next one started by continue-as-new.
    ContinuedAsNew,
}

impl RuntimeStatus {
    /// `true` for statuses that end an instance: completed, failed, terminated.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RuntimeStatus::Completed | RuntimeStatus::Failed | RuntimeStatus::Terminated
        )
    }

    /// The Durable Functions name of the status (`"Running"`, `"Completed"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeStatus::Pending => "Pending",
            RuntimeStatus::Running => "Running",
            RuntimeStatus::Suspended => "Suspended",
            RuntimeStatus::Completed => "Completed",
            RuntimeStatus::Failed => "Failed",
            RuntimeStatus::Terminated => "Terminated",
            RuntimeStatus::ContinuedAsNew => "ContinuedAsNew",
        }
    }

    /// Every status, in lifecycle order.
    ///
    /// ```
    /// use durable_core::RuntimeStatus;
    /// assert_eq!(RuntimeStatus::ALL.len(), 7);
    /// assert_eq!(RuntimeStatus::ALL[0], RuntimeStatus::Pending);
    /// ```
    pub const ALL: [RuntimeStatus; 7] = [
        RuntimeStatus::Pending,
        RuntimeStatus::Running,
        RuntimeStatus::Suspended,
        RuntimeStatus::Completed,
        RuntimeStatus::Failed,
        RuntimeStatus::Terminated,
        RuntimeStatus::ContinuedAsNew,
    ];

    /// Parses a Durable Functions status name, case-insensitively.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str().eq_ignore_ascii_case(text))
    }
}

/// One entry of an instance's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEvent {
    /// Position in the history of the current execution, from 0.
    pub index: u64,
    /// When the event was recorded (for actions: the episode's time).
    pub timestamp: Timestamp,
    /// What happened.
    #[serde(flatten)]
    pub event: Event,
}

/// What happened: the history vocabulary.
///
/// Events are either *messages* delivered to the orchestration (started, completions, timer
/// fired, event raised, suspend/resume/terminate), *actions* the code took (scheduled,
/// created, sent) — matched by sequence number on replay — or *markers*.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "eventType")]
#[non_exhaustive]
pub enum Event {
    /// The execution started with this input.
    ExecutionStarted {
        /// Orchestrator name.
        name: String,
        /// Version stamped at start.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<String>,
        /// JSON input.
        input: Payload,
        /// Set for sub-orchestrations.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parent: Option<ParentRef>,
        /// Set when the start was scheduled for later.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scheduled_start: Option<Timestamp>,
        /// External events that continue-as-new carried over from the previous execution,
        /// in arrival order. Only the start *message* holds them: they are delivered right
        /// after the start, ahead of anything still in the inbox, and history records them
        /// as `EventRaised` events (never here).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        carried: Vec<CarriedEvent>,
        /// The trace this execution belongs to: the W3C context of the span that started it
        /// (a client's request, the parent orchestration's execution, the previous
        /// execution for continue-as-new). Durable Task's `ParentTraceContext`.
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "TraceContext::lenient"
        )]
        trace_context: Option<TraceContext>,
    },
    /// An episode began; its timestamp is `ctx.now()` for the code run in it.
    OrchestratorStarted,
    /// An activity was scheduled.
    TaskScheduled {
        /// Action sequence number.
        seq: u64,
        /// Activity name.
        name: String,
        /// JSON input.
        input: Payload,
        /// Where the code scheduled it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        location: Option<SourceLocation>,
        /// Start-to-close timeout of each run (`CallOptions::timeout`), in milliseconds.
        #[serde(default, skip_serializing_if = "Option::is_none", with = "millis")]
        timeout: Option<Duration>,
        /// Heartbeat timeout (`CallOptions::heartbeat_timeout`), in milliseconds.
        #[serde(default, skip_serializing_if = "Option::is_none", with = "millis")]
        heartbeat_timeout: Option<Duration>,
    },
    /// An activity returned a value.
    TaskCompleted {
        /// Sequence number of the `TaskScheduled`.
        seq: u64,
        /// JSON output.
        result: Payload,
    },
    /// An activity failed.
    TaskFailed {
        /// Sequence number of the `TaskScheduled`.
        seq: u64,
        /// What went wrong.
        failure: FailureDetails,
        /// The last heartbeat details the failed run recorded (JSON), handed to the next
        /// attempt of a retry policy (`ActivityContext::last_heartbeat`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        heartbeat: Option<Payload>,
    },
    /// A durable timer was created.
    TimerCreated {
        /// Action sequence number.
        seq: u64,
        /// When it fires.
        fire_at: Timestamp,
        /// Where the code created it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        location: Option<SourceLocation>,
    },
    /// A durable timer fired.
    TimerFired {
        /// Sequence number of the `TimerCreated`.
        seq: u64,
        /// When it was due.
        fire_at: Timestamp,
    },
    /// A sub-orchestration was created.
    SubOrchestrationCreated {
        /// Action sequence number.
        seq: u64,
        /// Orchestrator name.
        name: String,
        /// The child's instance id.
        instance_id: InstanceId,
        /// JSON input.
        input: Payload,
        /// Version given to the child.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<String>,
        /// Where the code created it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        location: Option<SourceLocation>,
    },
    /// The code started an independent orchestration instance
    /// (`OrchestrationContext::start_orchestration`): not a child, nothing waits for it, and
    /// it outlives its starter. A refused start (the id is taken) comes back as a
    /// `SubOrchestrationFailed` with this sequence number, recorded and otherwise ignored.
    OrchestrationCreated {
        /// Action sequence number.
        seq: u64,
        /// Orchestrator name.
        name: String,
        /// The new instance's id.
        instance_id: InstanceId,
        /// JSON input.
        input: Payload,
        /// Version given to the new instance.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<String>,
        /// Set when the start was scheduled for later.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scheduled_start: Option<Timestamp>,
        /// Where the code started it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        location: Option<SourceLocation>,
    },
    /// A sub-orchestration completed.
    SubOrchestrationCompleted {
        /// Sequence number of the `SubOrchestrationCreated`.
        seq: u64,
        /// JSON output.
        result: Payload,
    },
    /// A sub-orchestration failed (or could not be created).
    SubOrchestrationFailed {
        /// Sequence number of the `SubOrchestrationCreated`.
        seq: u64,
        /// What went wrong.
        failure: FailureDetails,
    },
    /// An external event arrived.
    EventRaised {
        /// Event name.
        name: String,
        /// JSON data.
        input: Payload,
    },
    /// The code sent an event to another instance.
    EventSent {
        /// Action sequence number.
        seq: u64,
        /// Target instance.
        instance_id: InstanceId,
        /// Event name.
        name: String,
        /// JSON data.
        input: Payload,
        /// Where the code sent it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        location: Option<SourceLocation>,
    },
    /// The execution ended and a new one starts with this input.
    ContinuedAsNew {
        /// Input of the next execution.
        input: Payload,
        /// Version of the next execution.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<String>,
    },
    /// The instance was terminated from outside.
    ExecutionTerminated {
        /// Why.
        #[serde(default)]
        reason: String,
        /// Set when a parent's terminate cascades to its sub-orchestration: the child it
        /// means. An instance that is not that child (it took the id over since) ignores
        /// the message.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        child_of: Option<ParentRef>,
    },
    /// The instance was suspended.
    ExecutionSuspended {
        /// Why.
        #[serde(default)]
        reason: String,
    },
    /// The instance was resumed.
    ExecutionResumed {
        /// Why.
        #[serde(default)]
        reason: String,
    },
    /// A failed execution was rewound (also the message that asks for it): its failure and
    /// the failures of the actions in `seqs` no longer count on replay, and the work that
    /// was left unfinished runs again. See [`crate::Client::rewind`].
    ExecutionRewound {
        /// Why.
        #[serde(default)]
        reason: String,
        /// Actions whose recorded failures are undone (empty in the request message).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        seqs: Vec<u64>,
    },
    /// The code set its custom status.
    CustomStatusSet {
        /// JSON status, or `None` when cleared.
        status: Option<Payload>,
    },
    /// The code called an entity operation (request/response).
    EntityCalled {
        /// Action sequence number.
        seq: u64,
        /// The entity's instance id (`@name@key`).
        entity: InstanceId,
        /// Operation name.
        operation: String,
        /// JSON input.
        input: Payload,
        /// Where the code called it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        location: Option<SourceLocation>,
    },
    /// The code signalled an entity (one-way).
    EntitySignaled {
        /// Action sequence number.
        seq: u64,
        /// The entity's instance id.
        entity: InstanceId,
        /// Operation name.
        operation: String,
        /// JSON input.
        input: Payload,
        /// Where the code signalled it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        location: Option<SourceLocation>,
    },
    /// The code asked to lock entities for a critical section.
    EntityLockRequested {
        /// Action sequence number.
        seq: u64,
        /// The entities, in lock order.
        entities: Vec<InstanceId>,
        /// Where the code asked.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        location: Option<SourceLocation>,
    },
    /// The code left its critical section and released the locks.
    EntityUnlockSent {
        /// Action sequence number.
        seq: u64,
        /// The entities released.
        entities: Vec<InstanceId>,
        /// Where the section ended.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        location: Option<SourceLocation>,
    },
    /// An entity answered a call.
    EntityResponded {
        /// Sequence number of the `EntityCalled`.
        seq: u64,
        /// JSON result, on success.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<Payload>,
        /// Failure details, when the operation failed (its state change was rolled back).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        failure: Option<FailureDetails>,
    },
    /// Every lock of a critical section is held.
    EntityLockGranted {
        /// Sequence number of the `EntityLockRequested`.
        seq: u64,
        /// The locked entities (so a receiver that no longer wants them can release them).
        #[serde(default)]
        entities: Vec<InstanceId>,
    },
    /// (Entity inbox) an operation to run.
    EntityOperation {
        /// Operation name.
        operation: String,
        /// JSON input.
        input: Payload,
        /// The sending orchestration, if any (for critical sections).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sender: Option<InstanceId>,
        /// Where to send the result, for calls.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<ParentRef>,
        /// The W3C context of the span that sent it (the calling execution, the signalling
        /// client or entity operation): the parent of the operation's span.
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "TraceContext::lenient"
        )]
        trace_context: Option<TraceContext>,
    },
    /// (Entity inbox) a lock request travelling through the entities in lock order.
    EntityLockRequest {
        /// The orchestration asking, and the action to complete once all locks are held.
        owner: ParentRef,
        /// All entities of the critical section, in lock order.
        entities: Vec<InstanceId>,
        /// Index of the entity this request is for.
        position: u32,
    },
    /// (Entity inbox) the lock held by `owner` is released.
    EntityUnlock {
        /// The orchestration that held the lock.
        owner: InstanceId,
        /// The owner's execution that held it; `None` releases the lock whichever execution
        /// of `owner` holds it (an instance torn down as a whole).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        execution: Option<u32>,
    },
    /// The execution finished.
    ExecutionCompleted {
        /// Completed, failed or terminated.
        status: RuntimeStatus,
        /// JSON output, on success.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output: Option<Payload>,
        /// Failure details, on failure.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        failure: Option<FailureDetails>,
    },
}

impl Event {
    /// The event's type name, as it appears in exported JSON (`"TaskScheduled"`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            Event::ExecutionStarted { .. } => "ExecutionStarted",
            Event::OrchestratorStarted => "OrchestratorStarted",
            Event::TaskScheduled { .. } => "TaskScheduled",
            Event::TaskCompleted { .. } => "TaskCompleted",
            Event::TaskFailed { .. } => "TaskFailed",
            Event::TimerCreated { .. } => "TimerCreated",
            Event::TimerFired { .. } => "TimerFired",
            Event::SubOrchestrationCreated { .. } => "SubOrchestrationCreated",
            Event::OrchestrationCreated { .. } => "OrchestrationCreated",
            Event::SubOrchestrationCompleted { .. } => "SubOrchestrationCompleted",
            Event::SubOrchestrationFailed { .. } => "SubOrchestrationFailed",
            Event::EventRaised { .. } => "EventRaised",
            Event::EventSent { .. } => "EventSent",
            Event::ContinuedAsNew { .. } => "ContinuedAsNew",
            Event::ExecutionTerminated { .. } => "ExecutionTerminated",
            Event::ExecutionSuspended { .. } => "ExecutionSuspended",
            Event::ExecutionResumed { .. } => "ExecutionResumed",
            Event::ExecutionRewound { .. } => "ExecutionRewound",
            Event::CustomStatusSet { .. } => "CustomStatusSet",
            Event::EntityCalled { .. } => "EntityCalled",
            Event::EntitySignaled { .. } => "EntitySignaled",
            Event::EntityLockRequested { .. } => "EntityLockRequested",
            Event::EntityUnlockSent { .. } => "EntityUnlockSent",
            Event::EntityResponded { .. } => "EntityResponded",
            Event::EntityLockGranted { .. } => "EntityLockGranted",
            Event::EntityOperation { .. } => "EntityOperation",
            Event::EntityLockRequest { .. } => "EntityLockRequest",
            Event::EntityUnlock { .. } => "EntityUnlock",
            Event::ExecutionCompleted { .. } => "ExecutionCompleted",
        }
    }

    /// The action sequence number for scheduling events (actions the code took).
    pub fn action_seq(&self) -> Option<u64> {
        match self {
            Event::TaskScheduled { seq, .. }
            | Event::TimerCreated { seq, .. }
            | Event::SubOrchestrationCreated { seq, .. }
            | Event::OrchestrationCreated { seq, .. }
            | Event::EventSent { seq, .. }
            | Event::EntityCalled { seq, .. }
            | Event::EntitySignaled { seq, .. }
            | Event::EntityLockRequested { seq, .. }
            | Event::EntityUnlockSent { seq, .. } => Some(*seq),
            _ => None,
        }
    }

    /// For results delivered to the orchestration — an activity's or sub-orchestration's
    /// completion or failure, a timer firing, an entity's answer or lock grant — the sequence
    /// number of the action they answer.
    pub fn result_seq(&self) -> Option<u64> {
        match self {
            Event::TaskCompleted { seq, .. }
            | Event::TaskFailed { seq, .. }
            | Event::TimerFired { seq, .. }
            | Event::SubOrchestrationCompleted { seq, .. }
            | Event::SubOrchestrationFailed { seq, .. }
            | Event::EntityResponded { seq, .. }
            | Event::EntityLockGranted { seq, .. } => Some(*seq),
            _ => None,
        }
    }

    /// `true` for events delivered to the orchestration as messages.
    pub fn is_message(&self) -> bool {
        matches!(
            self,
            Event::ExecutionStarted { .. }
                | Event::TaskCompleted { .. }
                | Event::TaskFailed { .. }
                | Event::TimerFired { .. }
                | Event::SubOrchestrationCompleted { .. }
                | Event::SubOrchestrationFailed { .. }
                | Event::EventRaised { .. }
                | Event::ExecutionTerminated { .. }
                | Event::ExecutionSuspended { .. }
                | Event::ExecutionResumed { .. }
                | Event::EntityResponded { .. }
                | Event::EntityLockGranted { .. }
        )
    }
}

/// Serde for an optional [`Duration`] as whole milliseconds (history and task JSON).
pub(crate) mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[allow(
        clippy::ref_option,
        reason = "serde's `with` passes the field by reference"
    )]
    pub(crate) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        d.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

/// Exports a history as pretty JSON.
///
/// # Examples
///
/// ```
/// use durable_core::history::{self, Event, HistoryEvent};
/// use durable_core::Timestamp;
///
/// let h = vec![HistoryEvent { index: 0, timestamp: Timestamp::EPOCH, event: Event::OrchestratorStarted }];
/// let json = history::to_json(&h);
/// assert_eq!(history::from_json(&json).unwrap(), h);
/// ```
pub fn to_json(history: &[HistoryEvent]) -> String {
    serde_json::to_string_pretty(history).unwrap_or_else(|_| "[]".to_owned())
}

/// Imports a history exported by [`to_json`].
pub fn from_json(json: &str) -> Result<Vec<HistoryEvent>, serde_json::Error> {
    serde_json::from_str(json)
}

/// Renders a history one event per line, for assertion messages and logs.
#[allow(clippy::match_same_arms, reason = "one arm per event kind reads best")]
pub fn pretty(history: &[HistoryEvent]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for e in history {
        let detail = match &e.event {
            Event::ExecutionStarted { name, input, .. } => format!("{name}({input})"),
            Event::TaskScheduled {
                seq, name, input, ..
            } => format!("#{seq} {name}({input})"),
            Event::TaskCompleted { seq, result } => format!("#{seq} -> {result}"),
            Event::TaskFailed { seq, failure, .. } => format!("#{seq} !! {failure}"),
            Event::TimerCreated { seq, fire_at, .. } => format!("#{seq} at {fire_at}"),
            Event::TimerFired { seq, .. } => format!("#{seq}"),
            Event::SubOrchestrationCreated {
                seq,
                name,
                instance_id,
                ..
            }
            | Event::OrchestrationCreated {
                seq,
                name,
                instance_id,
                ..
            } => format!("#{seq} {name} as {instance_id}"),
            Event::SubOrchestrationCompleted { seq, result } => format!("#{seq} -> {result}"),
            Event::SubOrchestrationFailed { seq, failure } => format!("#{seq} !! {failure}"),
            Event::EventRaised { name, input } => format!("{name}({input})"),
            Event::EventSent {
                seq,
                instance_id,
                name,
                ..
            } => format!("#{seq} {name} to {instance_id}"),
            Event::ContinuedAsNew { input, .. } => input.clone(),
            Event::ExecutionTerminated { reason, .. }
            | Event::ExecutionSuspended { reason }
            | Event::ExecutionResumed { reason } => reason.clone(),
            Event::ExecutionRewound { reason, seqs } => format!("{reason} (undone: {seqs:?})"),
            Event::CustomStatusSet { status } => format!("{status:?}"),
            Event::ExecutionCompleted {
                status,
                output,
                failure,
            } => format!(
                "{} {}",
                status.as_str(),
                output
                    .clone()
                    .or_else(|| failure.as_ref().map(ToString::to_string))
                    .unwrap_or_default()
            ),
            Event::EntityCalled {
                seq,
                entity,
                operation,
                input,
                ..
            }
            | Event::EntitySignaled {
                seq,
                entity,
                operation,
                input,
                ..
            } => format!("#{seq} {entity}.{operation}({input})"),
            Event::EntityLockRequested { seq, entities, .. }
            | Event::EntityUnlockSent { seq, entities, .. } => {
                let names: Vec<&str> = entities.iter().map(InstanceId::as_str).collect();
                format!("#{seq} [{}]", names.join(", "))
            }
            Event::EntityResponded {
                seq,
                result,
                failure,
            } => match (result, failure) {
                (_, Some(f)) => format!("#{seq} !! {f}"),
                (r, None) => format!("#{seq} -> {}", r.as_deref().unwrap_or("null")),
            },
            Event::EntityLockGranted { seq, .. } => format!("#{seq}"),
            Event::EntityOperation {
                operation, input, ..
            } => format!("{operation}({input})"),
            Event::EntityLockRequest {
                owner, position, ..
            } => format!("for {} at {position}", owner.instance_id),
            Event::EntityUnlock { owner, .. } => format!("by {owner}"),
            Event::OrchestratorStarted => String::new(),
        };
        let _ = writeln!(
            out,
            "{:>4} {} {:<26} {}",
            e.index,
            e.timestamp,
            e.event.kind(),
            detail
        );
    }
    out
}
