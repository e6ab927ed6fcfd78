//! The replay executor: a pure state machine that runs orchestration code against history.
//!
//! Public here: [`replay_history`] (replay a recorded history against the current code, in
//! a test), [`ReplayError`], [`ReplayStats`] and [`is_replaying_on_this_thread`]. The
//! executor itself (`Replayer`, its commands and episode results) is internal to the worker.
//!
//! **Owns:** the orchestration future and its own waker, the shared context state, matching
//! of the actions the code emits against the actions recorded in history, suspension and
//! termination, and the list of commands an episode produces.
//!
//! **Never does:** IO, tokio, storage, reading the clock or randomness. Time comes in through
//! `Replayer::begin_episode`; history and messages come in through `handle_*`; the worker
//! turns the returned `EpisodeResult` into one atomic store commit.
//!
//! # Protocol
//! ```text
//! let mut r = Replayer::new(instance, execution, name, code, limits);
//! r.handle_history(&history)?;          // re-runs the code, matching every action
//! r.begin_episode(now);                 // records OrchestratorStarted(now)
//! for m in messages { r.handle_message(m); }   // one at a time, polling after each
//! let result = r.finish_episode()?;     // new events + commands + outcome
//! ```
//! The same `Replayer` can be kept (cached) and fed the next episode without replaying.
//!
//! Each message is delivered and then the future is polled until it can make no further
//! progress, so completion order inside an episode is the order of history — which makes
//! `when_any`, `select` and `join!` deterministic.

mod check;
mod mismatch;
pub(crate) mod rewind;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

pub(crate) use crate::context::Notice;
use crate::context::orchestrator::OrchestratorFn;
use crate::context::{
    Action, ActionDetail, ActionKind, Limits, OrchestrationContext, SlotResult, State, lock,
};
use crate::error::FailureDetails;
use crate::function::BoxFuture;
use crate::history::{CarriedEvent, Event, HistoryEvent, ParentRef, Payload, RuntimeStatus};
use crate::ids::{InstanceId, Timestamp};
use crate::trace_context::TraceContext;

pub use check::replay_history;
pub use mismatch::ReplayError;

thread_local! {
    static REPLAYING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// `true` while the current thread is polling orchestration code that is replaying history.
/// Used by [`crate::logging::ReplaySafe`] to drop duplicate log lines.
pub fn is_replaying_on_this_thread() -> bool {
    REPLAYING.with(std::cell::Cell::get)
}

/// What the worker must do as a result of an episode.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub(crate) enum Command {
    /// Enqueue an activity task.
    ScheduleActivity {
        /// Action sequence number.
        seq: u64,
        /// Activity name.
        name: String,
        /// JSON input.
        input: Payload,
        /// 1-based attempt under the caller's retry policy.
        attempt: u32,
        /// Start-to-close timeout of each run.
        timeout: Option<std::time::Duration>,
        /// Longest a run may go without a heartbeat.
        heartbeat_timeout: Option<std::time::Duration>,
        /// Heartbeat details of the previous attempt, for the activity to resume from.
        heartbeat: Option<Payload>,
        /// A local activity: the worker may run it inside the episode and deliver its
        /// result before the episode ends (see `Replayer::take_local_activities`); a
        /// command still here when the episode ends is an ordinary activity task.
        local: bool,
    },
    /// Enqueue a `TimerFired` message for this instance, visible at `fire_at`.
    CreateTimer {
        /// Action sequence number.
        seq: u64,
        /// Due time.
        fire_at: Timestamp,
    },
    /// Create a child instance.
    StartSubOrchestration {
        /// Action sequence number.
        seq: u64,
        /// Orchestrator name.
        name: String,
        /// Child id.
        instance_id: InstanceId,
        /// JSON input.
        input: Payload,
        /// Child version.
        version: Option<String>,
    },
    /// Create an independent instance (no parent).
    StartOrchestration {
        /// Action sequence number (a refusal is reported back under it).
        seq: u64,
        /// Orchestrator name.
        name: String,
        /// The new instance's id.
        instance_id: InstanceId,
        /// JSON input.
        input: Payload,
        /// Its version.
        version: Option<String>,
        /// Start no earlier than this.
        scheduled_start: Option<Timestamp>,
        /// What to do if the id is taken.
        reuse: crate::storage::IdReusePolicy,
    },
    /// Deliver an `EventRaised` to another instance.
    SendEvent {
        /// Target instance.
        instance_id: InstanceId,
        /// Event name.
        name: String,
        /// JSON data.
        input: Payload,
    },
    /// Tell the parent that this sub-orchestration finished.
    NotifyParent {
        /// The parent.
        parent: ParentRef,
        /// `SubOrchestrationCompleted` or `SubOrchestrationFailed`.
        event: Event,
    },
    /// Deliver a message to an entity, creating the entity if it does not exist.
    SendEntityMessage {
        /// The entity.
        entity: crate::ids::EntityId,
        /// `EntityOperation`, `EntityLockRequest` or `EntityUnlock`.
        event: Event,
    },
    /// Terminate a running child (terminate cascades).
    TerminateChild {
        /// The child.
        instance_id: InstanceId,
        /// The child's parent reference (this execution and the action that started it):
        /// an instance that took the id over since is not terminated.
        child_of: ParentRef,
        /// Why.
        reason: String,
    },
}

/// How an execution ended.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub(crate) enum Outcome {
    /// Returned `Ok`.
    Completed(Payload),
    /// Returned `Err`, panicked or broke a limit.
    Failed(FailureDetails),
    /// Terminated from outside.
    Terminated(String),
    /// Continued as new.
    ContinuedAsNew {
        /// Input of the next execution.
        input: Payload,
        /// Version of the next execution.
        version: Option<String>,
        /// Unprocessed external events carried into the next execution, in arrival order.
        carried: Vec<CarriedEvent>,
    },
}

impl Outcome {
    /// The runtime status this outcome leaves the instance in.
    pub(crate) fn status(&self) -> RuntimeStatus {
        match self {
            Outcome::Completed(_) => RuntimeStatus::Completed,
            Outcome::Failed(_) => RuntimeStatus::Failed,
            Outcome::Terminated(_) => RuntimeStatus::Terminated,
            Outcome::ContinuedAsNew { .. } => RuntimeStatus::ContinuedAsNew,
        }
    }
}

/// The result of one episode.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub(crate) struct EpisodeResult {
    /// Events to append to history, in order.
    pub(crate) new_events: Vec<HistoryEvent>,
    /// Work to enqueue.
    pub(crate) commands: Vec<Command>,
    /// `Some` when the execution ended.
    pub(crate) outcome: Option<Outcome>,
    /// The current custom status.
    pub(crate) custom_status: Option<Payload>,
    /// `true` while the instance is suspended.
    pub(crate) suspended: bool,
    /// When the current execution started (its `ExecutionStarted` event), if it has.
    pub(crate) started_at: Option<Timestamp>,
    /// What the code did in this episode that is reported once committed, in order.
    pub(crate) notices: Vec<Notice>,
}

/// Counters of the executor's work, for tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplayStats {
    /// Polls of the orchestration future.
    pub polls: u64,
    /// Polls of individual durable futures (activities, timers, events, sub-orchestrations).
    pub task_polls: u64,
    /// History events processed by replay.
    pub events_replayed: u64,
    /// Messages handled as new.
    pub messages: u64,
}

#[derive(Debug, Clone)]
enum Open {
    /// An activity, by name (reported when it fails).
    Activity(String),
    Timer,
    Sub(InstanceId),
    /// An independent instance started: only a refusal of the start answers it.
    Started,
    EntityCall,
    EntityLock(Vec<InstanceId>),
}

/// The top-level waker: records that the future asked to be polled, and whether that came
/// from something other than our own durable primitives.
#[derive(Debug, Default)]
struct TopWaker {
    woken: AtomicBool,
    in_executor: AtomicBool,
    foreign: AtomicBool,
}

impl Wake for TopWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        if !self.in_executor.load(Ordering::SeqCst) {
            self.foreign.store(true, Ordering::SeqCst);
        }
    }
}

/// Most consecutive self-wakes (e.g. `yield_now`) tolerated within one delivery.
const MAX_SPINS: u32 = 10_000;

/// Runs one orchestration execution; see the [module docs](self).
pub(crate) struct Replayer {
    shared: Arc<Mutex<State>>,
    top: Arc<TopWaker>,
    waker: Waker,
    future: Option<BoxFuture<'static, Result<Payload, FailureDetails>>>,
    run: Arc<OrchestratorFn>,
    instance_id: InstanceId,
    name: String,
    execution: u32,
    parent: Option<ParentRef>,
    history_len: u64,
    now: Timestamp,
    replaying: bool,
    new_events: Vec<HistoryEvent>,
    commands: Vec<Command>,
    pending_match: VecDeque<Action>,
    /// History ended past a rewind with actions in `pending_match` that are new.
    rewound_tail: bool,
    open: HashMap<u64, Open>,
    suspended: bool,
    deferred: VecDeque<Event>,
    outcome: Option<Outcome>,
    outcome_reported: bool,
    recorded_custom_status: Option<Payload>,
    error: Option<ReplayError>,
    stats: ReplayStats,
    started: bool,
    /// When the execution started and the trace context it started with (data from its
    /// `ExecutionStarted`, for the worker's events and spans).
    start: Option<(Timestamp, Option<TraceContext>)>,
    /// Rewinds recorded in this execution's history.
    rewinds: u32,
    /// Notices of this episode (the code's own, from the context, join them at the end).
    notices: Vec<Notice>,
}

impl fmt::Debug for Replayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replayer")
            .field("instance_id", &self.instance_id)
            .field("name", &self.name)
            .field("execution", &self.execution)
            .field("history_len", &self.history_len)
            .field("outcome", &self.outcome)
            .finish_non_exhaustive()
    }
}

impl Replayer {
    /// A replayer for one execution of `name` on `instance_id`, running `run`.
    pub(crate) fn new(
        instance_id: InstanceId,
        execution: u32,
        name: &str,
        run: Arc<OrchestratorFn>,
        limits: Limits,
    ) -> Self {
        let top = Arc::new(TopWaker::default());
        let waker = Waker::from(Arc::clone(&top));
        let mut state = State::new(instance_id.clone(), name.to_owned(), limits);
        state.execution = execution;
        Self {
            shared: Arc::new(Mutex::new(state)),
            top,
            waker,
            future: None,
            run,
            instance_id,
            name: name.to_owned(),
            execution,
            parent: None,
            history_len: 0,
            now: Timestamp::EPOCH,
            replaying: true,
            new_events: Vec::new(),
            commands: Vec::new(),
            pending_match: VecDeque::new(),
            rewound_tail: false,
            open: HashMap::new(),
            suspended: false,
            deferred: VecDeque::new(),
            outcome: None,
            outcome_reported: false,
            recorded_custom_status: None,
            error: None,
            stats: ReplayStats::default(),
            started: false,
            start: None,
            rewinds: 0,
            notices: Vec::new(),
        }
    }

    /// Number of history events this replayer has seen (replayed plus new).
    pub(crate) fn history_len(&self) -> u64 {
        self.history_len
    }

    /// The execution number this replayer runs.
    pub(crate) fn execution(&self) -> u32 {
        self.execution
    }

    /// Work counters.
    pub(crate) fn stats(&self) -> ReplayStats {
        let mut s = self.stats;
        s.task_polls = lock(&self.shared).slot_polls;
        s
    }

    /// `true` once the execution has ended.
    pub(crate) fn is_finished(&self) -> bool {
        self.outcome.is_some()
    }

    /// When the execution started (its `ExecutionStarted` was delivered) and the trace
    /// context stored with it; `None` before.
    #[cfg_attr(not(feature = "opentelemetry"), allow(dead_code))]
    pub(crate) fn start(&self) -> Option<(Timestamp, Option<&TraceContext>)> {
        self.start.as_ref().map(|(at, tc)| (*at, tc.as_ref()))
    }

    /// How many times this execution was rewound (`ExecutionRewound` markers seen).
    #[cfg_attr(not(feature = "opentelemetry"), allow(dead_code))]
    pub(crate) fn rewinds(&self) -> u32 {
        self.rewinds
    }

    /// Replays recorded history, re-running the code and matching every action it emits
    /// against the recorded ones.
    ///
    /// # Errors
    /// [`ReplayError::Nondeterminism`] when code and history disagree. The error is sticky.
    pub(crate) fn handle_history(&mut self, history: &[HistoryEvent]) -> Result<(), ReplayError> {
        self.check_error()?;
        self.top.in_executor.store(true, Ordering::SeqCst);
        self.set_replaying(true);
        let result = self.replay_events(history);
        self.set_replaying(false);
        self.top.in_executor.store(false, Ordering::SeqCst);
        if let Err(e) = &result {
            self.error = Some(e.clone());
        }
        result
    }

    fn replay_events(&mut self, history: &[HistoryEvent]) -> Result<(), ReplayError> {
        let rewound = rewind::skipped_positions(history);
        // Set between a rewind and the next recorded end: code that finishes again during
        // that stretch (it failed by itself, with nothing to re-run) records its outcome anew.
        let mut after_rewind = false;
        for (pos, ev) in history.iter().enumerate() {
            self.history_len += 1;
            self.stats.events_replayed += 1;
            if matches!(ev.event, Event::ExecutionRewound { .. }) {
                self.rewinds += 1;
            }
            if rewound.contains(&pos) {
                // Undone by a later rewind: the code runs on as if it never happened.
                after_rewind |= matches!(ev.event, Event::ExecutionRewound { .. });
                continue;
            }
            // The final poll's custom status is recorded after the outcome is known.
            let is_end = matches!(
                ev.event,
                Event::ExecutionCompleted { .. }
                    | Event::ContinuedAsNew { .. }
                    | Event::CustomStatusSet { .. }
            );
            let episode_after_rewind =
                after_rewind && matches!(ev.event, Event::OrchestratorStarted);
            // The poll that finished the code can still have acted (a critical section's
            // guard dropped as the code returned records its release): those actions
            // follow the last message in history and are matched as usual.
            let final_action = ev.event.action_seq().is_some() && !self.pending_match.is_empty();
            if self.outcome.is_some() && !is_end && !episode_after_rewind && !final_action {
                return Err(self.mismatch_finished_early(ev));
            }
            if matches!(
                ev.event,
                Event::ExecutionCompleted { .. } | Event::ContinuedAsNew { .. }
            ) {
                after_rewind = false;
            }
            match &ev.event {
                Event::OrchestratorStarted => {
                    if after_rewind {
                        // The rewind's own episode: the code ran past the point of failure
                        // during replay, and what it did is recorded after this event. From
                        // here on every check applies again.
                        after_rewind = false;
                    } else {
                        self.check_no_extra(ev.index, Some(&ev.event))?;
                    }
                    self.now = self.now.max(ev.timestamp);
                    lock(&self.shared).now = self.now;
                }
                e if e.action_seq().is_some() => self.match_action(ev)?,
                Event::CustomStatusSet { status } => {
                    self.recorded_custom_status.clone_from(status);
                }
                Event::ExecutionCompleted { .. } | Event::ContinuedAsNew { .. } => {
                    self.check_no_extra(ev.index, Some(&ev.event))?;
                    self.check_completion(ev)?;
                    self.outcome_reported = true;
                }
                e => {
                    self.check_no_extra(ev.index, Some(e))?;
                    if self.accept(e) {
                        self.deliver(e.clone());
                    }
                }
            }
        }
        if after_rewind {
            // Actions the code takes once it runs past the point of a rewind are new: they
            // are recorded in the next episode.
            self.rewound_tail = true;
        } else {
            self.check_no_extra(self.history_len, None)?;
        }
        if self.outcome.is_some() && !self.outcome_reported && !after_rewind {
            return Err(self.mismatch_finished_at_end());
        }
        Ok(())
    }

    /// Starts a new episode at `now` (never earlier than the previous episode's time).
    pub(crate) fn begin_episode(&mut self, now: Timestamp) {
        self.now = self.now.max(now);
        lock(&self.shared).now = self.now;
        self.set_replaying(false);
        if self.outcome.is_none() {
            self.append(Event::OrchestratorStarted);
        }
        if std::mem::take(&mut self.rewound_tail) {
            for action in std::mem::take(&mut self.pending_match) {
                self.record_action(action);
            }
        }
    }

    /// `true` when this execution continued as new and `event` must be kept for the next
    /// execution rather than consumed: terminate, suspend and resume apply to the instance,
    /// not to one execution.
    pub(crate) fn defers_to_next_execution(&self, event: &Event) -> bool {
        matches!(self.outcome, Some(Outcome::ContinuedAsNew { .. }))
            && matches!(
                event,
                Event::ExecutionTerminated { .. }
                    | Event::ExecutionSuspended { .. }
                    | Event::ExecutionResumed { .. }
            )
    }

    /// Handles one new message (appended to history unless it is a duplicate or stale).
    /// Returns `false` if the message was ignored.
    pub(crate) fn handle_message(&mut self, mut event: Event) -> bool {
        if self.error.is_some() {
            return false;
        }
        self.stats.messages += 1;
        if let Some(Outcome::ContinuedAsNew { carried, .. }) = &mut self.outcome {
            if let Event::EventRaised { name, input } = event {
                carried.push(CarriedEvent { name, input });
            }
            return false;
        }
        // Events carried over by continue-as-new arrived before anything still in the
        // inbox: they are delivered right after the start, and recorded as raised events.
        let carried = match &mut event {
            Event::ExecutionStarted { carried, .. } => std::mem::take(carried),
            _ => Vec::new(),
        };
        let handled = self.handle_one(event);
        for CarriedEvent { name, input } in carried {
            self.handle_message(Event::EventRaised { name, input });
        }
        handled
    }

    fn handle_one(&mut self, event: Event) -> bool {
        if self.outcome.is_some() {
            tracing::debug!(instance = %self.instance_id, kind = event.kind(), "message after completion ignored");
            return false;
        }
        // A failed activity is reported by name, which only its open action knows.
        let failed = match &event {
            Event::TaskFailed { seq, failure, .. } => match self.open.get(seq) {
                Some(Open::Activity(name)) => Some(Notice::ActivityFailed {
                    seq: *seq,
                    name: name.clone(),
                    failure: failure.clone(),
                }),
                _ => None,
            },
            _ => None,
        };
        if !self.accept(&event) {
            tracing::debug!(instance = %self.instance_id, kind = event.kind(), "duplicate or unknown completion ignored");
            return false;
        }
        self.notices.extend(failed);
        self.top.in_executor.store(true, Ordering::SeqCst);
        self.append(event.clone());
        self.deliver(event);
        self.top.in_executor.store(false, Ordering::SeqCst);
        true
    }

    /// `true` if the episode scheduled local activities it has not run yet.
    pub(crate) fn has_local_activities(&self) -> bool {
        self.commands
            .iter()
            .any(|c| matches!(c, Command::ScheduleActivity { local: true, .. }))
    }

    /// Takes the local activities scheduled so far in this episode out of its commands, in
    /// the order they were scheduled. The worker runs them and delivers each result with
    /// [`handle_message`](Self::handle_message) before [`finish_episode`](Self::finish_episode);
    /// one it does not run it puts back with [`schedule_as_task`](Self::schedule_as_task).
    /// Their `TaskScheduled` events stay recorded.
    pub(crate) fn take_local_activities(&mut self) -> Vec<Command> {
        if !self.has_local_activities() {
            return Vec::new();
        }
        let (local, rest) = std::mem::take(&mut self.commands)
            .into_iter()
            .partition(|c| matches!(c, Command::ScheduleActivity { local: true, .. }));
        self.commands = rest;
        local
    }

    /// Puts back a command taken by [`take_local_activities`](Self::take_local_activities)
    /// as an ordinary activity task, enqueued with the episode's commit.
    pub(crate) fn schedule_as_task(&mut self, mut command: Command) {
        if let Command::ScheduleActivity { local, .. } = &mut command {
            *local = false;
        }
        self.commands.push(command);
    }

    /// Takes the timers of this episode already due at the episode's time out of its
    /// commands, so the worker can fire them within the episode (with `TimerFired`
    /// messages) instead of committing them: a local activity's retry whose back-off is
    /// zero goes on at once.
    pub(crate) fn take_due_timers(&mut self) -> Vec<(u64, Timestamp)> {
        let now = self.now;
        let mut due = Vec::new();
        self.commands.retain(|c| match c {
            Command::CreateTimer { seq, fire_at } if *fire_at <= now => {
                due.push((*seq, *fire_at));
                false
            }
            _ => true,
        });
        due
    }

    /// Ends the episode: checks that the code is waiting on something durable and returns
    /// what to commit. The replayer can be kept for the next episode.
    ///
    /// # Errors
    /// The sticky replay error, or [`ReplayError::ForeignAwait`] when the code is blocked
    /// on a future that no durable event can complete.
    pub(crate) fn finish_episode(&mut self) -> Result<EpisodeResult, ReplayError> {
        self.check_error()?;
        if self.outcome.is_none() && self.future.is_some() {
            let foreign = self.top.foreign.swap(false, Ordering::SeqCst);
            if !lock(&self.shared).has_live_waits() && self.deferred.is_empty() {
                let e = ReplayError::ForeignAwait {
                    instance: self.instance_id.to_string(),
                    name: self.name.clone(),
                    woken_from_outside: foreign,
                };
                self.error = Some(e.clone());
                return Err(e);
            }
            if foreign {
                tracing::warn!(
                    instance = %self.instance_id,
                    "orchestration was woken by something other than a durable operation \
                     (a tokio timer, channel or IO?); use ctx.sleep, ctx.wait_for_event or an activity"
                );
            }
        }
        if let (Some(outcome), false) = (&self.outcome, self.outcome_reported) {
            self.outcome_reported = true;
            let outcome = outcome.clone();
            self.record_outcome(&outcome);
        }
        let mut notices = std::mem::take(&mut self.notices);
        notices.append(&mut lock(&self.shared).notices);
        Ok(EpisodeResult {
            new_events: std::mem::take(&mut self.new_events),
            commands: std::mem::take(&mut self.commands),
            outcome: self.outcome.clone(),
            custom_status: self.recorded_custom_status.clone(),
            suspended: self.suspended,
            started_at: self.start.as_ref().map(|(at, _)| *at),
            notices,
        })
    }

    fn check_error(&self) -> Result<(), ReplayError> {
        match &self.error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn set_replaying(&mut self, on: bool) {
        self.replaying = on;
        lock(&self.shared).replaying = on;
    }

    fn append(&mut self, event: Event) {
        self.new_events.push(HistoryEvent {
            index: self.history_len,
            timestamp: self.now,
            event,
        });
        self.history_len += 1;
    }

    /// Decides whether a message is applied: completions must answer an open action of the
    /// right kind (duplicates and stale completions are dropped).
    fn accept(&mut self, event: &Event) -> bool {
        let (seq, ok): (u64, fn(&Open) -> bool) = match event {
            Event::TaskCompleted { seq, .. } | Event::TaskFailed { seq, .. } => {
                (*seq, |o| matches!(o, Open::Activity(_)))
            }
            Event::TimerFired { seq, .. } => (*seq, |o| matches!(o, Open::Timer)),
            Event::SubOrchestrationCompleted { seq, .. } => (*seq, |o| matches!(o, Open::Sub(_))),
            Event::SubOrchestrationFailed { seq, .. } => {
                (*seq, |o| matches!(o, Open::Sub(_) | Open::Started))
            }
            Event::EntityResponded { seq, .. } => (*seq, |o| matches!(o, Open::EntityCall)),
            Event::EntityLockGranted { seq, .. } => (*seq, |o| matches!(o, Open::EntityLock(_))),
            Event::ExecutionStarted { .. } => return !self.started,
            _ => return true,
        };
        match self.open.get(&seq) {
            Some(o) if ok(o) => {
                self.open.remove(&seq);
                true
            }
            _ => false,
        }
    }

    fn deliver(&mut self, event: Event) {
        let control = matches!(
            event,
            Event::ExecutionResumed { .. }
                | Event::ExecutionTerminated { .. }
                | Event::ExecutionSuspended { .. }
        );
        if self.suspended && !control {
            self.deferred.push_back(event);
            return;
        }
        match event {
            Event::ExecutionStarted {
                input,
                parent,
                version,
                trace_context,
                ..
            } => {
                self.started = true;
                self.start = Some((self.now, trace_context));
                self.parent = parent;
                lock(&self.shared).version = version;
                let ctx = OrchestrationContext {
                    shared: Arc::clone(&self.shared),
                };
                self.future = Some((self.run)(ctx, input));
                self.top.woken.store(true, Ordering::SeqCst);
            }
            Event::TaskCompleted { seq, result }
            | Event::SubOrchestrationCompleted { seq, result } => {
                lock(&self.shared).complete(seq, SlotResult::Ok(result));
            }
            Event::TaskFailed {
                seq,
                failure,
                heartbeat,
            } => {
                lock(&self.shared).complete(seq, SlotResult::Err(failure, heartbeat));
            }
            Event::SubOrchestrationFailed { seq, failure } => {
                lock(&self.shared).complete(seq, SlotResult::Err(failure, None));
            }
            Event::TimerFired { seq, .. } => {
                lock(&self.shared).complete(seq, SlotResult::Fired);
            }
            Event::EntityLockGranted { seq, entities } => {
                let held = lock(&self.shared).complete(seq, SlotResult::Fired);
                // The code dropped the lock future before the grant arrived (it lost a
                // race): nobody will enter the section, so release the locks at once. On
                // replay these commands were already issued the first time.
                if !held && !self.replaying {
                    for e in &entities {
                        let c = self.unlock_command(e);
                        self.commands.push(c);
                    }
                }
            }
            Event::EntityResponded {
                seq,
                result,
                failure,
            } => {
                let r = match failure {
                    Some(f) => SlotResult::Err(f, None),
                    None => SlotResult::Ok(result.unwrap_or_else(|| "null".to_owned())),
                };
                lock(&self.shared).complete(seq, r);
            }
            Event::EventRaised { name, input } => lock(&self.shared).raise(&name, input),
            Event::ExecutionSuspended { .. } => self.suspended = true,
            Event::ExecutionResumed { .. } => {
                self.suspended = false;
                while let Some(e) = self.deferred.pop_front() {
                    self.deliver(e);
                    if self.outcome.is_some() {
                        break;
                    }
                }
            }
            Event::ExecutionTerminated { reason, .. } => {
                self.future = None;
                self.set_outcome(Outcome::Terminated(reason));
            }
            _ => {}
        }
        self.poll();
    }

    fn set_outcome(&mut self, outcome: Outcome) {
        if self.outcome.is_none() {
            self.outcome = Some(outcome);
        }
    }

    fn poll(&mut self) {
        let mut spins = 0;
        while self.top.woken.swap(false, Ordering::SeqCst) && self.outcome.is_none() {
            let Some(fut) = self.future.as_mut() else {
                return;
            };
            spins += 1;
            if spins > MAX_SPINS {
                self.set_outcome(Outcome::Failed(FailureDetails::new(
                    "Nondeterminism",
                    "the orchestration keeps waking itself without awaiting a durable operation",
                )));
                break;
            }
            self.stats.polls += 1;
            let mut cx = Context::from_waker(&self.waker);
            REPLAYING.with(|r| r.set(self.replaying));
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(&mut cx)));
            REPLAYING.with(|r| r.set(false));
            self.drain_emitted();
            let mut state = lock(&self.shared);
            if let Some(f) = state.failure.take() {
                drop(state);
                self.set_outcome(Outcome::Failed(f));
                break;
            }
            match result {
                Err(panic) => {
                    drop(state);
                    let mut f = FailureDetails::from_panic(panic.as_ref());
                    f.message = format!("orchestrator panicked: {}", f.message);
                    self.set_outcome(Outcome::Failed(f));
                }
                Ok(Poll::Ready(Ok(output))) => {
                    let limit = state.limits.max_payload_bytes;
                    drop(state);
                    if output.len() > limit {
                        self.set_outcome(Outcome::Failed(
                            FailureDetails::new(
                                "PayloadTooLarge",
                                format!(
                                    "orchestration output of {} bytes exceeds the limit of {limit} bytes",
                                    output.len()
                                ),
                            )
                            .non_retriable(),
                        ));
                    } else {
                        self.set_outcome(Outcome::Completed(output));
                    }
                }
                Ok(Poll::Ready(Err(f))) => {
                    drop(state);
                    self.set_outcome(Outcome::Failed(f));
                }
                Ok(Poll::Pending) => {
                    if let Some((input, version)) = state.continue_as_new.take() {
                        let carried = state.take_unconsumed_events();
                        drop(state);
                        self.set_outcome(Outcome::ContinuedAsNew {
                            input,
                            version,
                            carried,
                        });
                    } else {
                        drop(state);
                    }
                }
            }
            self.sync_custom_status();
        }
        if self.outcome.is_some() {
            self.future = None;
            if let Some(Outcome::ContinuedAsNew { carried, .. }) = &mut self.outcome {
                for e in self.deferred.drain(..) {
                    if let Event::EventRaised { name, input } = e {
                        carried.push(CarriedEvent { name, input });
                    }
                }
            }
        }
    }

    fn sync_custom_status(&mut self) {
        if self.replaying {
            return;
        }
        let current = lock(&self.shared).custom_status.clone();
        if current != self.recorded_custom_status {
            self.recorded_custom_status.clone_from(&current);
            self.append(Event::CustomStatusSet { status: current });
        }
    }

    fn drain_emitted(&mut self) {
        let emitted = std::mem::take(&mut lock(&self.shared).emitted);
        if emitted.is_empty() {
            return;
        }
        if self.replaying {
            self.pending_match.extend(emitted);
            return;
        }
        for action in emitted {
            self.record_action(action);
        }
    }

    #[allow(clippy::too_many_lines, reason = "one arm per action kind")]
    fn record_action(&mut self, action: Action) {
        let Action {
            seq,
            location,
            detail,
        } = action;
        let location = Some(location);
        let (event, command) = match detail {
            ActionDetail::Activity {
                name,
                input,
                attempt,
                timeouts,
                heartbeat,
                local,
            } => {
                self.open.insert(seq, Open::Activity(name.clone()));
                (
                    Event::TaskScheduled {
                        seq,
                        name: name.clone(),
                        input: input.clone(),
                        location,
                        timeout: timeouts.timeout,
                        heartbeat_timeout: timeouts.heartbeat_timeout,
                    },
                    Command::ScheduleActivity {
                        seq,
                        name,
                        input,
                        attempt,
                        timeout: timeouts.timeout,
                        heartbeat_timeout: timeouts.heartbeat_timeout,
                        heartbeat,
                        local,
                    },
                )
            }
            ActionDetail::Timer { fire_at } => {
                self.open.insert(seq, Open::Timer);
                (
                    Event::TimerCreated {
                        seq,
                        fire_at,
                        location,
                    },
                    Command::CreateTimer { seq, fire_at },
                )
            }
            ActionDetail::SubOrchestration {
                name,
                instance_id,
                input,
                version,
            } => {
                self.open.insert(seq, Open::Sub(instance_id.clone()));
                (
                    Event::SubOrchestrationCreated {
                        seq,
                        name: name.clone(),
                        instance_id: instance_id.clone(),
                        input: input.clone(),
                        version: version.clone(),
                        location,
                    },
                    Command::StartSubOrchestration {
                        seq,
                        name,
                        instance_id,
                        input,
                        version,
                    },
                )
            }
            ActionDetail::StartOrchestration {
                name,
                instance_id,
                input,
                version,
                scheduled_start,
                reuse,
            } => {
                self.open.insert(seq, Open::Started);
                (
                    Event::OrchestrationCreated {
                        seq,
                        name: name.clone(),
                        instance_id: instance_id.clone(),
                        input: input.clone(),
                        version: version.clone(),
                        scheduled_start,
                        location,
                    },
                    Command::StartOrchestration {
                        seq,
                        name,
                        instance_id,
                        input,
                        version,
                        scheduled_start,
                        reuse,
                    },
                )
            }
            ActionDetail::SendEvent {
                instance_id,
                name,
                input,
            } => (
                Event::EventSent {
                    seq,
                    instance_id: instance_id.clone(),
                    name: name.clone(),
                    input: input.clone(),
                    location,
                },
                Command::SendEvent {
                    instance_id,
                    name,
                    input,
                },
            ),
            ActionDetail::EntityCall {
                entity,
                operation,
                input,
            } => {
                self.open.insert(seq, Open::EntityCall);
                let command = Self::entity_command(
                    &entity,
                    Event::EntityOperation {
                        operation: operation.clone(),
                        input: input.clone(),
                        sender: Some(self.instance_id.clone()),
                        reply_to: Some(self.reply_to(seq)),
                        trace_context: None,
                    },
                );
                (
                    Event::EntityCalled {
                        seq,
                        entity,
                        operation,
                        input,
                        location,
                    },
                    command,
                )
            }
            ActionDetail::EntitySignal {
                entity,
                operation,
                input,
            } => {
                let command = Self::entity_command(
                    &entity,
                    Event::EntityOperation {
                        operation: operation.clone(),
                        input: input.clone(),
                        sender: Some(self.instance_id.clone()),
                        reply_to: None,
                        trace_context: None,
                    },
                );
                (
                    Event::EntitySignaled {
                        seq,
                        entity,
                        operation,
                        input,
                        location,
                    },
                    command,
                )
            }
            ActionDetail::EntityLock { entities } => {
                self.open.insert(seq, Open::EntityLock(entities.clone()));
                let first = entities
                    .first()
                    .cloned()
                    .unwrap_or_else(|| self.instance_id.clone());
                let command = Self::entity_command(
                    &first,
                    Event::EntityLockRequest {
                        owner: self.reply_to(seq),
                        entities: entities.clone(),
                        position: 0,
                    },
                );
                (
                    Event::EntityLockRequested {
                        seq,
                        entities,
                        location,
                    },
                    command,
                )
            }
            ActionDetail::EntityUnlock { entities } => {
                for e in entities.iter().skip(1) {
                    let c = self.unlock_command(e);
                    self.commands.push(c);
                }
                let command = match entities.first() {
                    Some(e) => self.unlock_command(e),
                    None => return,
                };
                (
                    Event::EntityUnlockSent {
                        seq,
                        entities,
                        location,
                    },
                    command,
                )
            }
        };
        self.append(event);
        self.commands.push(command);
    }

    fn reply_to(&self, seq: u64) -> ParentRef {
        ParentRef {
            instance_id: self.instance_id.clone(),
            execution: self.execution,
            seq,
        }
    }

    fn entity_command(entity: &InstanceId, event: Event) -> Command {
        let entity = crate::ids::EntityId::from_instance_id(entity).unwrap_or_else(|| {
            crate::ids::EntityId {
                name: String::new(),
                key: entity.to_string(),
            }
        });
        Command::SendEntityMessage { entity, event }
    }

    fn unlock_command(&self, entity: &InstanceId) -> Command {
        Self::entity_command(
            entity,
            Event::EntityUnlock {
                owner: self.instance_id.clone(),
                execution: Some(self.execution),
            },
        )
    }

    /// Releases entity locks still held (or still being acquired) when the execution ends.
    fn release_locks_at_end(&mut self) {
        let mut entities: Vec<InstanceId> = Vec::new();
        {
            let mut s = lock(&self.shared);
            if let Some(held) = s.critical_section.take() {
                entities.extend(held);
            }
            // A guard dropped together with the future emitted its unlock too late to be
            // recorded as an action; release those entities here.
            for a in std::mem::take(&mut s.emitted) {
                if let ActionDetail::EntityUnlock { entities: e } = a.detail {
                    entities.extend(e);
                }
            }
        }
        for o in self.open.values() {
            if let Open::EntityLock(e) = o {
                entities.extend(e.iter().cloned());
            }
        }
        entities.sort();
        entities.dedup();
        for e in entities {
            let c = self.unlock_command(&e);
            self.commands.push(c);
        }
    }

    fn record_outcome(&mut self, outcome: &Outcome) {
        self.release_locks_at_end();
        let event = match outcome {
            Outcome::Completed(out) => Event::ExecutionCompleted {
                status: RuntimeStatus::Completed,
                output: Some(out.clone()),
                failure: None,
            },
            Outcome::Failed(f) => Event::ExecutionCompleted {
                status: RuntimeStatus::Failed,
                output: None,
                failure: Some(f.clone()),
            },
            Outcome::Terminated(reason) => Event::ExecutionCompleted {
                status: RuntimeStatus::Terminated,
                output: Some(serde_json::Value::String(reason.clone()).to_string()),
                failure: None,
            },
            Outcome::ContinuedAsNew { input, version, .. } => Event::ContinuedAsNew {
                input: input.clone(),
                version: version.clone(),
            },
        };
        self.append(event);
        if let Outcome::Terminated(reason) = outcome {
            // In action order: `open` is a HashMap, whose iteration order differs between
            // a cached and a replayed executor.
            let mut children: Vec<(u64, InstanceId)> = self
                .open
                .iter()
                .filter_map(|(seq, o)| match o {
                    Open::Sub(id) => Some((*seq, id.clone())),
                    _ => None,
                })
                .collect();
            children.sort_unstable_by_key(|(seq, _)| *seq);
            for (seq, instance_id) in children {
                self.commands.push(Command::TerminateChild {
                    instance_id,
                    child_of: self.reply_to(seq),
                    reason: reason.clone(),
                });
            }
        }
        if let Some(parent) = self.parent.clone() {
            let event = match outcome {
                Outcome::Completed(out) => Some(Event::SubOrchestrationCompleted {
                    seq: parent.seq,
                    result: out.clone(),
                }),
                Outcome::Failed(f) => Some(Event::SubOrchestrationFailed {
                    seq: parent.seq,
                    failure: f.clone(),
                }),
                Outcome::Terminated(reason) => Some(Event::SubOrchestrationFailed {
                    seq: parent.seq,
                    failure: FailureDetails::new("Terminated", format!("terminated: {reason}")),
                }),
                Outcome::ContinuedAsNew { .. } => None,
            };
            if let Some(event) = event {
                self.commands.push(Command::NotifyParent { parent, event });
            }
        }
    }

    fn match_action(&mut self, ev: &HistoryEvent) -> Result<(), ReplayError> {
        let Some(action) = self.pending_match.pop_front() else {
            return Err(self.mismatch_missing(ev));
        };
        let recorded_seq = ev.event.action_seq().unwrap_or(u64::MAX);
        let recorded_kind = recorded_kind(&ev.event);
        let now_kind = action.detail.kind();
        if recorded_seq != action.seq || recorded_kind != now_kind {
            return Err(self.mismatch_different(ev, &action));
        }
        match &ev.event {
            Event::TaskScheduled { seq, .. } => {
                // The kinds match: the name the comparison copied is the recorded one.
                let name = match now_kind {
                    ActionKind::Activity { name } => name,
                    _ => String::new(),
                };
                self.open.insert(*seq, Open::Activity(name));
            }
            Event::TimerCreated { seq, .. } => {
                self.open.insert(*seq, Open::Timer);
            }
            Event::SubOrchestrationCreated {
                seq, instance_id, ..
            } => {
                self.open.insert(*seq, Open::Sub(instance_id.clone()));
            }
            Event::OrchestrationCreated { seq, .. } => {
                self.open.insert(*seq, Open::Started);
            }
            Event::EntityCalled { seq, .. } => {
                self.open.insert(*seq, Open::EntityCall);
            }
            Event::EntityLockRequested { seq, entities, .. } => {
                self.open.insert(*seq, Open::EntityLock(entities.clone()));
            }
            _ => {}
        }
        Ok(())
    }
}

fn recorded_kind(event: &Event) -> ActionKind {
    match event {
        Event::TaskScheduled { name, .. } => ActionKind::Activity { name: name.clone() },
        Event::SubOrchestrationCreated { name, .. } => {
            ActionKind::SubOrchestration { name: name.clone() }
        }
        Event::OrchestrationCreated { name, .. } => {
            ActionKind::StartOrchestration { name: name.clone() }
        }
        Event::EventSent { name, .. } => ActionKind::SendEvent { name: name.clone() },
        Event::EntityCalled { operation, .. } => ActionKind::EntityCall {
            operation: operation.clone(),
        },
        Event::EntitySignaled { operation, .. } => ActionKind::EntitySignal {
            operation: operation.clone(),
        },
        Event::EntityLockRequested { .. } => ActionKind::EntityLock,
        Event::EntityUnlockSent { .. } => ActionKind::EntityUnlock,
        _ => ActionKind::Timer,
    }
}

#[cfg(test)]
mod tests;
