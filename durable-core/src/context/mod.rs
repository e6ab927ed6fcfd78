//! The orchestration context: the durable operations orchestration code may await.
//!
//! Every method that creates a durable action is `#[track_caller]`; the caller's source
//! location is recorded in history so a non-determinism error can point at both the recorded
//! and the current line.
//!
//! This module imports neither `registry` nor `entity`, which both build on it: the
//! [`Orchestrator`] trait lives here (`orchestrator`), since it and the context name each
//! other; activities come from the `function` module below; entities are addressed by their
//! [`EntityId`], and the typed entity proxies (`ctx.entity::<E>(key)`,
//! `ctx.signal_entity::<E>(key)`) are methods defined in `crate::entity`, with the
//! [`Entity`](crate::Entity) trait they need.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::Location;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{
    FailureDetails, OrchestrationError, PayloadDecodeError, TaskError, TaskFailure, TaskKind,
    decode, encode,
};
use crate::function::{Activity, BoxFuture};
use crate::history::{CarriedEvent, Payload, SourceLocation};
use crate::ids::{EntityId, InstanceId, Timestamp};
use crate::retry::RetryPolicy;

mod combinators;
#[cfg(feature = "http-calls")]
mod http_call;
pub(crate) mod options;
pub(crate) mod orchestrator;

pub use combinators::{Either, Select, WhenAll, WhenAny, select, when_all, when_any};
#[cfg(feature = "http-calls")]
#[cfg_attr(docsrs, doc(cfg(feature = "http-calls")))]
pub use http_call::CallHttpFuture;
use options::StartOptions;
pub use options::{CallOptions, SubOrchestrationOptions};
use orchestrator::Orchestrator;

/// Limits enforced on orchestrations, with clear errors when exceeded.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Limits {
    /// Largest JSON payload (input, output, event data) in bytes. Default 1 MiB.
    pub max_payload_bytes: usize,
    /// Most actions one execution may schedule (runaway-loop guard). Default 100,000.
    pub max_actions: u64,
    /// Largest custom status in bytes. Default 16 KiB.
    pub max_custom_status_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload_bytes: 1 << 20,
            max_actions: 100_000,
            max_custom_status_bytes: 16 << 10,
        }
    }
}

/// The kind of a durable action, used to match code against history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ActionKind {
    Activity { name: String },
    Timer,
    SubOrchestration { name: String },
    StartOrchestration { name: String },
    SendEvent { name: String },
    EntityCall { operation: String },
    EntitySignal { operation: String },
    EntityLock,
    EntityUnlock,
}

impl fmt::Display for ActionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActionKind::Activity { name } => write!(f, "activity `{name}`"),
            ActionKind::Timer => f.write_str("a timer"),
            ActionKind::SubOrchestration { name } => write!(f, "sub-orchestration `{name}`"),
            ActionKind::StartOrchestration { name } => {
                write!(f, "starting orchestration `{name}`")
            }
            ActionKind::SendEvent { name } => write!(f, "sending event `{name}`"),
            ActionKind::EntityCall { operation } => write!(f, "entity call `{operation}`"),
            ActionKind::EntitySignal { operation } => write!(f, "entity signal `{operation}`"),
            ActionKind::EntityLock => f.write_str("an entity lock"),
            ActionKind::EntityUnlock => f.write_str("an entity unlock"),
        }
    }
}

/// An action the code emitted, waiting to be matched against history or recorded.
#[derive(Debug, Clone)]
pub(crate) struct Action {
    pub(crate) seq: u64,
    pub(crate) location: SourceLocation,
    pub(crate) detail: ActionDetail,
}

#[derive(Debug, Clone)]
pub(crate) enum ActionDetail {
    Activity {
        name: String,
        input: Payload,
        /// 1-based attempt under a retry policy.
        attempt: u32,
        /// Timeouts the worker enforces on each run.
        timeouts: Timeouts,
        /// Heartbeat details carried from the previous attempt's failure.
        heartbeat: Option<Payload>,
        /// Run inside the worker during the episode (a local activity).
        local: bool,
    },
    Timer {
        fire_at: Timestamp,
    },
    SubOrchestration {
        name: String,
        instance_id: InstanceId,
        input: Payload,
        version: Option<String>,
    },
    StartOrchestration {
        name: String,
        instance_id: InstanceId,
        input: Payload,
        version: Option<String>,
        scheduled_start: Option<Timestamp>,
        reuse: crate::storage::IdReusePolicy,
    },
    SendEvent {
        instance_id: InstanceId,
        name: String,
        input: Payload,
    },
    EntityCall {
        entity: InstanceId,
        operation: String,
        input: Payload,
    },
    EntitySignal {
        entity: InstanceId,
        operation: String,
        input: Payload,
    },
    EntityLock {
        entities: Vec<InstanceId>,
    },
    EntityUnlock {
        entities: Vec<InstanceId>,
    },
}

impl ActionDetail {
    pub(crate) fn kind(&self) -> ActionKind {
        match self {
            ActionDetail::Activity { name, .. } => ActionKind::Activity { name: name.clone() },
            ActionDetail::Timer { .. } => ActionKind::Timer,
            ActionDetail::SubOrchestration { name, .. } => {
                ActionKind::SubOrchestration { name: name.clone() }
            }
            ActionDetail::StartOrchestration { name, .. } => {
                ActionKind::StartOrchestration { name: name.clone() }
            }
            ActionDetail::SendEvent { name, .. } => ActionKind::SendEvent { name: name.clone() },
            ActionDetail::EntityCall { operation, .. } => ActionKind::EntityCall {
                operation: operation.clone(),
            },
            ActionDetail::EntitySignal { operation, .. } => ActionKind::EntitySignal {
                operation: operation.clone(),
            },
            ActionDetail::EntityLock { .. } => ActionKind::EntityLock,
            ActionDetail::EntityUnlock { .. } => ActionKind::EntityUnlock,
        }
    }
}

/// The timeouts a worker enforces on each run of an activity task (see [`CallOptions`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Timeouts {
    pub(crate) timeout: Option<Duration>,
    pub(crate) heartbeat_timeout: Option<Duration>,
}

/// The result delivered to a slot.
#[derive(Debug, Clone)]
pub(crate) enum SlotResult {
    Ok(Payload),
    /// A failure, with the failed activity's last heartbeat details.
    Err(FailureDetails, Option<Payload>),
    Fired,
}

#[derive(Debug, Default)]
struct Slot {
    result: Option<SlotResult>,
    waker: Option<Waker>,
    /// The future was dropped before its result arrived.
    abandoned: bool,
}

/// An external event on its way to the code: buffered, or handed to a waiter.
#[derive(Debug)]
struct Delivered {
    /// Arrival number: the order events reached the instance.
    arrival: u64,
    /// The name as raised (kept for continue-as-new, which carries events over).
    name: String,
    data: Payload,
}

#[derive(Debug)]
struct Waiter {
    /// The event name as matched ([`event_key`]).
    key: String,
    /// The delivered event.
    result: Option<Delivered>,
    waker: Option<Waker>,
}

/// The form in which event names are matched: case-insensitively, as Durable Functions and
/// the Durable Task SDKs do. Each character is lowercased by Unicode's own mapping, which is
/// the same on every machine (no locale is consulted).
pub(crate) fn event_key(name: &str) -> String {
    if name.is_ascii() {
        name.to_ascii_lowercase()
    } else {
        name.chars().flat_map(char::to_lowercase).collect()
    }
}

/// Something the code did while running the new part of an episode (never while replaying
/// history) that the worker reports once the episode is committed. Plain data: the worker
/// turns notices into log events and metrics; the context and the replayer only collect them.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub(crate) enum Notice {
    /// An activity's failure was recorded (`TaskFailed`) for the action `seq`.
    ActivityFailed {
        /// Sequence number of the `TaskScheduled`.
        seq: u64,
        /// Activity name.
        name: String,
        /// What went wrong.
        failure: FailureDetails,
    },
    /// A retry policy looked at the failure of the task `seq`: `delay` is the back-off
    /// before the next attempt, or `None` when the policy gave up (attempts exhausted,
    /// non-retriable failure, total timeout).
    Retry {
        /// Sequence number of the failed attempt's action.
        seq: u64,
        /// The kind of task (activity or sub-orchestration).
        kind: TaskKind,
        /// Activity or orchestrator name.
        name: String,
        /// 1-based number of the attempt that failed.
        attempt: u32,
        /// Back-off before the next attempt; `None` if there is none.
        delay: Option<Duration>,
    },
}

/// Mutable state shared by the context, its futures and the replay executor.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) instance_id: InstanceId,
    pub(crate) name: String,
    pub(crate) version: Option<String>,
    pub(crate) now: Timestamp,
    pub(crate) replaying: bool,
    pub(crate) next_seq: u64,
    pub(crate) emitted: Vec<Action>,
    slots: HashMap<u64, Slot>,
    /// Buffered events by [`event_key`], in arrival order.
    buffered: HashMap<String, VecDeque<Delivered>>,
    arrivals: u64,
    waiters: HashMap<String, VecDeque<u64>>,
    waiter_slots: HashMap<u64, Waiter>,
    next_waiter: u64,
    guid_counter: u64,
    pub(crate) custom_status: Option<Payload>,
    pub(crate) continue_as_new: Option<(Payload, Option<String>)>,
    pub(crate) failure: Option<FailureDetails>,
    pub(crate) limits: Limits,
    pub(crate) slot_polls: u64,
    /// Entities locked by the current critical section.
    pub(crate) critical_section: Option<Vec<InstanceId>>,
    /// The execution number (grows with continue-as-new), for derived child ids.
    pub(crate) execution: u32,
    /// Notices for the worker, collected only while not replaying (see [`Notice`]).
    pub(crate) notices: Vec<Notice>,
}

impl State {
    pub(crate) fn new(instance_id: InstanceId, name: String, limits: Limits) -> Self {
        Self {
            instance_id,
            name,
            version: None,
            now: Timestamp::EPOCH,
            replaying: true,
            next_seq: 0,
            emitted: Vec::new(),
            slots: HashMap::new(),
            buffered: HashMap::new(),
            arrivals: 0,
            waiters: HashMap::new(),
            waiter_slots: HashMap::new(),
            next_waiter: 0,
            guid_counter: 0,
            custom_status: None,
            continue_as_new: None,
            failure: None,
            limits,
            slot_polls: 0,
            critical_section: None,
            execution: 1,
            notices: Vec::new(),
        }
    }

    /// Delivers a completion to the slot of `seq`; `false` if nobody holds that slot (its
    /// future was dropped, or it never existed).
    pub(crate) fn complete(&mut self, seq: u64, result: SlotResult) -> bool {
        match self.slots.get_mut(&seq) {
            Some(slot) if slot.abandoned => {
                self.slots.remove(&seq);
                false
            }
            Some(slot) => {
                slot.result = Some(result);
                if let Some(w) = slot.waker.take() {
                    w.wake();
                }
                true
            }
            None => false,
        }
    }

    /// Delivers an external event: to the oldest waiter of that name, else to the buffer.
    pub(crate) fn raise(&mut self, name: &str, data: Payload) {
        self.arrivals += 1;
        let delivered = Delivered {
            arrival: self.arrivals,
            name: name.to_owned(),
            data,
        };
        let key = event_key(name);
        if let Some(queue) = self.waiters.get_mut(&key)
            && let Some(id) = queue.pop_front()
        {
            if queue.is_empty() {
                self.waiters.remove(&key);
            }
            if let Some(w) = self.waiter_slots.get_mut(&id) {
                w.result = Some(delivered);
                if let Some(wk) = w.waker.take() {
                    wk.wake();
                }
                return;
            }
        }
        self.buffered.entry(key).or_default().push_back(delivered);
    }

    /// Buffered (never consumed) events in arrival order, for continue-as-new.
    pub(crate) fn take_unconsumed_events(&mut self) -> Vec<CarriedEvent> {
        let mut all: Vec<Delivered> = self.buffered.drain().flat_map(|(_, q)| q).collect();
        all.extend(
            self.waiter_slots
                .values_mut()
                .filter_map(|w| w.result.take()),
        );
        all.sort_by_key(|d| d.arrival);
        all.into_iter()
            .map(|d| CarriedEvent {
                name: d.name,
                input: d.data,
            })
            .collect()
    }

    /// `true` if the code is awaiting at least one durable future. Stops at the first one
    /// found: it runs once per episode, and counting every open slot would make a fan-out
    /// delivered one completion per episode quadratic.
    pub(crate) fn has_live_waits(&self) -> bool {
        self.slots.values().any(|s| s.waker.is_some())
            || self.waiter_slots.values().any(|w| w.waker.is_some())
    }

    fn next_action_seq(&mut self) -> Result<u64, FailureDetails> {
        if self.next_seq >= self.limits.max_actions {
            let f = FailureDetails::new(
                "ActionLimitExceeded",
                format!(
                    "the orchestration scheduled more than the maximum of {} actions; \
                     use continue-as-new for long-running loops",
                    self.limits.max_actions
                ),
            )
            .non_retriable();
            self.failure.get_or_insert_with(|| f.clone());
            return Err(f);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        Ok(seq)
    }

    fn check_payload(&self, what: &str, payload: &str) -> Result<(), FailureDetails> {
        if payload.len() > self.limits.max_payload_bytes {
            return Err(FailureDetails::new(
                "PayloadTooLarge",
                format!(
                    "{what} payload of {} bytes exceeds the limit of {} bytes",
                    payload.len(),
                    self.limits.max_payload_bytes
                ),
            )
            .non_retriable());
        }
        Ok(())
    }
}

pub(crate) type Shared = Arc<Mutex<State>>;

pub(crate) fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    // A poisoned lock only means user code panicked while we held it; the state is still
    // consistent because every mutation is a single step.
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The handle orchestration code uses to schedule durable work.
///
/// Cheap to clone. Every `await` in an orchestrator must be on a future from this context
/// (or a combinator of them): activities, sub-orchestrations, timers and external events.
/// Other futures — tokio timers, channels, IO — are detected and reported.
#[derive(Clone)]
pub struct OrchestrationContext {
    pub(crate) shared: Shared,
}

impl fmt::Debug for OrchestrationContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = lock(&self.shared);
        f.debug_struct("OrchestrationContext")
            .field("instance_id", &s.instance_id)
            .field("name", &s.name)
            .finish_non_exhaustive()
    }
}

impl OrchestrationContext {
    /// The id of the running instance.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_testing::TestEnv;
    ///
    /// #[orchestrator]
    /// async fn report(ctx: OrchestrationContext, _input: ()) -> Result<String, OrchestrationError> {
    ///     Ok(format!("report {}", ctx.instance_id()))
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let env = TestEnv::builder().register(report).start()?;
    /// let id = InstanceId::new("nightly-2024-01-01")?;
    /// let run = env.start_with(report, (), StartOptions::new().instance_id(id)).await?;
    /// assert_eq!(env.wait(&run).await?, "report nightly-2024-01-01");
    /// # Ok(()) }
    /// ```
    pub fn instance_id(&self) -> InstanceId {
        lock(&self.shared).instance_id.clone()
    }

    /// The orchestrator's durable name.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_testing::TestEnv;
    ///
    /// #[orchestrator(name = "checkout_v2")]
    /// async fn checkout(ctx: OrchestrationContext, _input: ()) -> Result<String, OrchestrationError> {
    ///     Ok(ctx.name())
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let env = TestEnv::builder().register(checkout).start()?;
    /// let run = env.start(checkout, ()).await?;
    /// assert_eq!(env.wait(&run).await?, "checkout_v2"); // the durable name, not the fn name
    /// # Ok(()) }
    /// ```
    pub fn name(&self) -> String {
        lock(&self.shared).name.clone()
    }

    /// The version stamped on this instance at start (or at continue-as-new).
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_testing::TestEnv;
    ///
    /// #[orchestrator(version = "2")]
    /// async fn checkout(ctx: OrchestrationContext, _input: ()) -> Result<String, OrchestrationError> {
    ///     match ctx.version().as_deref() {
    ///         Some("1") | None => Ok("old flow".into()),
    ///         Some(_) => Ok("new flow".into()),
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let env = TestEnv::builder().register(checkout).start()?;
    /// let new = env.start(checkout, ()).await?; // stamped with the orchestrator's version
    /// let old = env.start_with(checkout, (), StartOptions::new().version("1")).await?;
    /// assert_eq!(env.wait(&new).await?, "new flow");
    /// assert_eq!(env.wait(&old).await?, "old flow");
    /// # Ok(()) }
    /// ```
    pub fn version(&self) -> Option<String> {
        lock(&self.shared).version.clone()
    }

    /// The current time, deterministically: the recorded timestamp of the current episode.
    ///
    /// # Determinism
    /// Reads the time recorded in history; replays see the same value.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use durable_core::prelude::*;
    /// use durable_testing::TestEnv;
    ///
    /// #[orchestrator]
    /// async fn deadline(ctx: OrchestrationContext, days: u64) -> Result<Timestamp, OrchestrationError> {
    ///     Ok(ctx.now() + Duration::from_secs(days * 86_400))
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let env = TestEnv::builder().register(deadline).start()?;
    /// let started = env.now();
    /// let run = env.start(deadline, 2).await?;
    /// assert_eq!(env.wait(&run).await?, started + Duration::from_secs(2 * 86_400));
    /// # Ok(()) }
    /// ```
    pub fn now(&self) -> Timestamp {
        lock(&self.shared).now
    }

    /// `true` while the code is re-executing steps already recorded in history.
    ///
    /// # Determinism
    /// Use it only to skip side effects such as logging; never to change what the code
    /// schedules.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::time::Duration;
    /// use durable_core::prelude::*;
    /// use durable_core::WorkerOptions;
    /// use durable_testing::TestEnv;
    ///
    /// static STARTS_LOGGED: AtomicUsize = AtomicUsize::new(0);
    ///
    /// #[orchestrator]
    /// async fn nightly(ctx: OrchestrationContext, _input: ()) -> Result<(), OrchestrationError> {
    ///     if !ctx.is_replaying() {
    ///         STARTS_LOGGED.fetch_add(1, Ordering::SeqCst); // stands for a log line
    ///     }
    ///     ctx.sleep(Duration::from_secs(3600)).await;
    ///     Ok(())
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut options = WorkerOptions::default();
    /// options.cache_capacity = 0; // every episode replays the code from the start
    /// let env = TestEnv::builder().options(options).register(nightly).start()?;
    /// let run = env.start(nightly, ()).await?;
    /// env.wait(&run).await?; // two episodes: the start, then the timer
    /// assert_eq!(STARTS_LOGGED.load(Ordering::SeqCst), 1);
    /// # Ok(()) }
    /// ```
    pub fn is_replaying(&self) -> bool {
        lock(&self.shared).replaying
    }

    /// A new UUID, deterministic across replays (name-based v5 over the instance id, the
    /// episode time and a counter).
    ///
    /// # Determinism
    /// Records nothing; derives the value from replay-stable inputs.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use durable_core::prelude::*;
    /// use durable_testing::TestEnv;
    ///
    /// #[orchestrator]
    /// async fn order_keys(ctx: OrchestrationContext, _input: ()) -> Result<Vec<String>, OrchestrationError> {
    ///     let first = ctx.new_guid().to_string();
    ///     ctx.sleep(Duration::from_secs(60)).await; // a replay derives `first` again, unchanged
    ///     let second = ctx.new_guid().to_string();
    ///     Ok(vec![first, second])
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let env = TestEnv::builder().register(order_keys).start()?;
    /// let run = env.start(order_keys, ()).await?;
    /// let keys = env.wait(&run).await?;
    /// assert_ne!(keys[0], keys[1]);
    /// assert_eq!(keys[0].len(), 36); // a hyphenated UUID
    /// # Ok(()) }
    /// ```
    pub fn new_guid(&self) -> uuid::Uuid {
        let mut s = lock(&self.shared);
        s.guid_counter += 1;
        let name = format!(
            "{}_{}_{}",
            s.instance_id,
            s.now.as_unix_millis(),
            s.guid_counter
        );
        uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, name.as_bytes())
    }

    /// Sets the custom status visible to clients (serialized as JSON; limit 16 KiB by
    /// default). [`clear_custom_status`](Self::clear_custom_status) removes it (setting
    /// `&()` would store the JSON value `null`).
    ///
    /// # Determinism
    /// Records `CustomStatusSet` in history when the value changes.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_testing::TestEnv;
    ///
    /// #[orchestrator]
    /// async fn approval(ctx: OrchestrationContext, _input: ()) -> Result<bool, OrchestrationError> {
    ///     ctx.set_custom_status("waiting for a manager")?;
    ///     Ok(ctx.wait_for_event("approved").await?)
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let env = TestEnv::builder().register(approval).start()?;
    /// let run = env.start(approval, ()).await?;
    /// env.run_until_idle().await;
    /// let status = run.status().await?.custom_status::<String>()?;
    /// assert_eq!(status.as_deref(), Some("waiting for a manager"));
    /// # Ok(()) }
    /// ```
    pub fn set_custom_status<T: Serialize + ?Sized>(
        &self,
        status: &T,
    ) -> Result<(), OrchestrationError> {
        let payload = encode(status).map_err(OrchestrationError::from)?;
        let mut s = lock(&self.shared);
        if payload.len() > s.limits.max_custom_status_bytes {
            return Err(OrchestrationError::non_retriable(format!(
                "custom status of {} bytes exceeds the limit of {} bytes",
                payload.len(),
                s.limits.max_custom_status_bytes
            )));
        }
        s.custom_status = Some(payload);
        Ok(())
    }

    /// Removes the custom status: clients see none (`custom_status` is `None`; the HTTP
    /// status shows `customStatus: null`).
    ///
    /// # Determinism
    /// Records `CustomStatusSet { status: None }` in history when a status was set.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    ///
    /// #[orchestrator]
    /// async fn import(ctx: OrchestrationContext, files: u32) -> Result<u32, OrchestrationError> {
    ///     for i in 0..files {
    ///         ctx.set_custom_status(&format!("file {i} of {files}"))?;
    ///     }
    ///     ctx.clear_custom_status(); // done: no progress to show
    ///     Ok(files)
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let env = durable_testing::TestEnv::builder().register(import).start()?;
    /// let run = env.start(import, 3).await?;
    /// assert_eq!(env.wait(&run).await?, 3);
    /// assert_eq!(env.custom_status::<String>(run.id()).await?, None);
    /// # Ok(()) }
    /// ```
    pub fn clear_custom_status(&self) {
        lock(&self.shared).custom_status = None;
    }

    /// Schedules an activity and returns a future for its typed output.
    ///
    /// # Determinism
    /// Records `TaskScheduled` (with this call's source location) when created — whether or
    /// not the future is ever awaited — and `TaskCompleted` / `TaskFailed` when the result
    /// arrives. On replay the recorded result is returned without running the activity again.
    ///
    /// An activity marked `#[activity(local)]` runs as [`call_local`](Self::call_local)
    /// describes.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_testing::TestEnv;
    ///
    /// #[activity]
    /// async fn charge(cents: u64) -> Result<String, ActivityError> {
    ///     Ok(format!("receipt for {cents} cents"))
    /// }
    ///
    /// #[orchestrator]
    /// async fn checkout(ctx: OrchestrationContext, cents: u64) -> Result<String, OrchestrationError> {
    ///     let receipt = ctx.call(charge, cents).await?;
    ///     Ok(receipt)
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let env = TestEnv::builder().register(charge).register(checkout).start()?;
    /// let run = env.start(checkout, 250).await?;
    /// assert_eq!(env.wait(&run).await?, "receipt for 250 cents");
    /// assert_eq!(env.calls(charge), [250]);
    /// # Ok(()) }
    /// ```
    #[track_caller]
    pub fn call<A: Activity>(&self, activity: A, input: A::Input) -> TaskFuture<A::Output> {
        let _ = activity;
        self.call_activity::<A>(input, CallOptions::new(), A::LOCAL, Location::caller())
    }

    /// Runs an activity *locally*: the worker runs it inside this orchestration's episode,
    /// as soon as the code awaits nothing else, and records its result with the episode's
    /// own commit. A chain of local steps therefore costs one durable commit instead of one
    /// (or two) per step. Typed like [`call`](Self::call); the activity must be registered
    /// on the worker that runs the episode — where it is not, or once the episode has spent
    /// [`WorkerOptions::local_activity_budget`](crate::WorkerOptions::local_activity_budget)
    /// on local steps, the call becomes an ordinary activity task in the store.
    ///
    /// Use it for short steps (validation, a lookup, a quick API call); long work belongs
    /// in ordinary activities, which free the orchestration while they run.
    ///
    /// **At-least-once window:** the result is durable only when the episode commits. A
    /// crash (or a lost lease) before that runs the step again in the next episode, along
    /// with every other local step of the lost episode. Make local steps idempotent, as
    /// every activity should be.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    ///
    /// #[activity]
    /// async fn add_one(n: u64) -> Result<u64, ActivityError> {
    ///     Ok(n + 1)
    /// }
    ///
    /// #[orchestrator]
    /// async fn count(ctx: OrchestrationContext, n: u64) -> Result<u64, OrchestrationError> {
    ///     // Three steps, one durable commit.
    ///     let mut n = n;
    ///     for _ in 0..3 {
    ///         n = ctx.call_local(add_one, n).await?;
    ///     }
    ///     Ok(n)
    /// }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let env = durable_testing::TestEnv::builder().register(add_one).register(count).start()?;
    /// let run = env.start(count, 1).await?;
    /// assert_eq!(env.wait(&run).await?, 4);
    /// # Ok(()) }
    /// ```
    ///
    /// # Determinism
    /// As [`call`](Self::call): `TaskScheduled` when created, `TaskCompleted` /
    /// `TaskFailed` when the result arrives — here within the same episode. History does
    /// not record that the run was local, so replay returns the recorded result without
    /// running the activity again, and a call site may switch between local and not.
    #[track_caller]
    pub fn call_local<A: Activity>(&self, activity: A, input: A::Input) -> TaskFuture<A::Output> {
        let _ = activity;
        self.call_activity::<A>(input, CallOptions::new(), true, Location::caller())
    }

    /// [`call_local`](Self::call_local) with [`CallOptions`]. A retry policy retries
    /// locally too: each back-off is a durable timer (as for
    /// [`call_with`](Self::call_with)) and the next attempt runs inside the episode the
    /// timer wakes (within the same episode when the back-off is already due). A timeout
    /// cancels the local run like an ordinary one.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use durable_core::prelude::*;
    ///
    /// #[activity]
    /// async fn lookup(key: String) -> Result<String, ActivityError> {
    ///     Ok(key.to_uppercase())
    /// }
    ///
    /// #[orchestrator]
    /// async fn flow(ctx: OrchestrationContext, key: String) -> Result<String, OrchestrationError> {
    ///     let options = CallOptions::new()
    ///         .timeout(Duration::from_secs(2))
    ///         .retry(RetryPolicy::new(3, Duration::from_millis(100)));
    ///     Ok(ctx.call_local_with(lookup, key, options).await?)
    /// }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let env = durable_testing::TestEnv::builder().register(lookup).register(flow).start()?;
    /// let run = env.start(flow, "sku-7".to_owned()).await?;
    /// assert_eq!(env.wait(&run).await?, "SKU-7");
    /// # Ok(()) }
    /// ```
    ///
    /// # Determinism
    /// As [`call_with`](Self::call_with).
    #[track_caller]
    pub fn call_local_with<A: Activity>(
        &self,
        activity: A,
        input: A::Input,
        options: CallOptions,
    ) -> TaskFuture<A::Output> {
        let _ = activity;
        self.call_activity::<A>(input, options, true, Location::caller())
    }

    /// Schedules an activity with [`CallOptions`]: a durable retry policy, a start-to-close
    /// timeout per run and a heartbeat timeout. Returns the same typed future as
    /// [`call`](Self::call).
    ///
    /// A run that outlives its timeout (or stops heartbeating for longer than its heartbeat
    /// timeout) is cancelled by the worker running it and fails with error type
    /// [`TIMEOUT`](CallOptions::TIMEOUT) (or
    /// [`HEARTBEAT_TIMEOUT`](CallOptions::HEARTBEAT_TIMEOUT)); that failure is retriable, so
    /// the retry policy applies to it like to any other.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use durable_core::prelude::*;
    ///
    /// #[activity]
    /// async fn charge(order: u64) -> Result<String, ActivityError> {
    ///     Ok(format!("receipt-{order}"))
    /// }
    ///
    /// #[orchestrator]
    /// async fn checkout(ctx: OrchestrationContext, order: u64) -> Result<String, OrchestrationError> {
    ///     let options = CallOptions::new()
    ///         .timeout(Duration::from_secs(30))
    ///         .retry(RetryPolicy::new(3, Duration::from_secs(5)));
    ///     Ok(ctx.call_with(charge, order, options).await?)
    /// }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let env = durable_testing::TestEnv::builder().register(charge).register(checkout).start()?;
    /// let run = env.start(checkout, 7).await?;
    /// assert_eq!(env.wait(&run).await?, "receipt-7");
    /// # Ok(()) }
    /// ```
    ///
    /// # Determinism
    /// Records the first attempt's `TaskScheduled` (with its timeouts) when created, whether
    /// or not the future is awaited. Under a retry policy each further attempt records a
    /// `TimerCreated` for its back-off and a `TaskScheduled`, as the awaited future runs: a
    /// future dropped after its first attempt makes no more.
    #[track_caller]
    pub fn call_with<A: Activity>(
        &self,
        activity: A,
        input: A::Input,
        options: CallOptions,
    ) -> TaskFuture<A::Output> {
        let _ = activity;
        self.call_activity::<A>(input, options, A::LOCAL, Location::caller())
    }

    /// Schedules the first attempt of an activity call and, under a retry policy, wraps it
    /// in the durable retry loop; `local` marks every attempt to run inside the episode.
    fn call_activity<A: Activity>(
        &self,
        input: A::Input,
        options: CallOptions,
        local: bool,
        location: &'static Location<'static>,
    ) -> TaskFuture<A::Output> {
        let payload = match encode(&input) {
            Ok(p) => p,
            Err(e) => return TaskFuture::failed(TaskError::Decode(e)),
        };
        let timeouts = options.timeouts();
        let Some(policy) = options.retry else {
            return self.schedule_activity_raw(
                A::NAME,
                payload,
                1,
                timeouts,
                None,
                local,
                location,
            );
        };
        let first = self.schedule_activity_raw(
            A::NAME,
            payload.clone(),
            1,
            timeouts,
            None,
            local,
            location,
        );
        self.retrying(first, policy, location, move |ctx, attempt, beat| {
            ctx.schedule_activity_raw(
                A::NAME,
                payload.clone(),
                attempt,
                timeouts,
                beat,
                local,
                location,
            )
        })
    }

    /// Schedules an activity with a durable retry policy: each retry is a durable timer
    /// followed by a new schedule, so retries survive restarts. Shorthand for
    /// [`call_with`](Self::call_with) and `CallOptions::new().retry(policy)`.
    ///
    /// # Determinism
    /// Records the first `TaskScheduled` when created, whether or not the future is awaited;
    /// then one `TimerCreated` per back-off and one `TaskScheduled` per further attempt.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use std::time::Duration;
    /// use durable_core::prelude::*;
    /// use durable_testing::TestEnv;
    ///
    /// static ATTEMPTS: AtomicU32 = AtomicU32::new(0);
    ///
    /// #[activity]
    /// async fn fetch_rate(currency: String) -> Result<f64, ActivityError> {
    ///     if ATTEMPTS.fetch_add(1, Ordering::SeqCst) < 2 {
    ///         return Err(ActivityError::new("rate service busy")); // fails twice
    ///     }
    ///     Ok(if currency == "EUR" { 1.1 } else { 1.0 })
    /// }
    ///
    /// #[orchestrator]
    /// async fn convert(ctx: OrchestrationContext, currency: String) -> Result<f64, OrchestrationError> {
    ///     let policy = RetryPolicy::new(5, Duration::from_secs(10));
    ///     Ok(ctx.call_with_retry(fetch_rate, currency, policy).await?)
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let env = TestEnv::builder().register(fetch_rate).register(convert).start()?;
    /// let run = env.start(convert, "EUR".to_owned()).await?;
    /// assert_eq!(env.wait(&run).await?, 1.1); // the back-off timers ran on virtual time
    /// assert_eq!(env.call_count(fetch_rate), 3);
    /// # Ok(()) }
    /// ```
    #[track_caller]
    pub fn call_with_retry<A: Activity>(
        &self,
        activity: A,
        input: A::Input,
        policy: RetryPolicy,
    ) -> TaskFuture<A::Output> {
        self.call_with(activity, input, CallOptions::new().retry(policy))
    }

    /// Starts a sub-orchestration (instance id derived from this instance's id) and returns
    /// a future for its typed output.
    ///
    /// # Determinism
    /// Records `SubOrchestrationCreated` when created (whether or not the future is
    /// awaited), then `SubOrchestrationCompleted` / `Failed`.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_testing::TestEnv;
    ///
    /// #[orchestrator]
    /// async fn pack(_ctx: OrchestrationContext, items: Vec<String>) -> Result<usize, OrchestrationError> {
    ///     Ok(items.len())
    /// }
    ///
    /// #[orchestrator]
    /// async fn fulfil(ctx: OrchestrationContext, items: Vec<String>) -> Result<String, OrchestrationError> {
    ///     let boxes = ctx.call_sub_orchestrator(pack, items).await?;
    ///     Ok(format!("{boxes} boxes shipped"))
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let env = TestEnv::builder().register(pack).register(fulfil).start()?;
    /// let run = env.start(fulfil, vec!["book".into(), "lamp".into()]).await?;
    /// assert_eq!(env.wait(&run).await?, "2 boxes shipped");
    /// # Ok(()) }
    /// ```
    #[track_caller]
    pub fn call_sub_orchestrator<O: Orchestrator>(
        &self,
        orchestrator: O,
        input: O::Input,
    ) -> TaskFuture<O::Output> {
        let _ = orchestrator;
        let location = Location::caller();
        match encode(&input) {
            Ok(payload) => self.schedule_sub_raw(O::NAME, payload, None, None, location),
            Err(e) => TaskFuture::failed(TaskError::Decode(e)),
        }
    }

    /// Starts a sub-orchestration with options: explicit instance id, version, retry policy.
    ///
    /// The child is created with this episode whether or not the future is awaited, so a
    /// child with an explicit id can be started and left to run (its result is then
    /// ignored); it is still this instance's child, terminated with it. To start an
    /// instance that is no child at all, use [`start_orchestration`](Self::start_orchestration).
    ///
    /// # Determinism
    /// As [`call_sub_orchestrator`](Self::call_sub_orchestrator) for the first attempt;
    /// under a retry policy each further attempt records a `TimerCreated` for its back-off
    /// and a `SubOrchestrationCreated`, as the awaited future runs.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_core::SubOrchestrationOptions;
    /// use durable_testing::TestEnv;
    ///
    /// #[orchestrator]
    /// async fn invoice(_ctx: OrchestrationContext, order: u64) -> Result<String, OrchestrationError> {
    ///     Ok(format!("INV-{order}"))
    /// }
    ///
    /// #[orchestrator]
    /// async fn checkout(ctx: OrchestrationContext, order: u64) -> Result<String, OrchestrationError> {
    ///     let id = InstanceId::new(format!("invoice-{order}"))?;
    ///     let options = SubOrchestrationOptions::new().instance_id(id);
    ///     Ok(ctx.call_sub_orchestrator_with(invoice, order, options).await?)
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let env = TestEnv::builder().register(invoice).register(checkout).start()?;
    /// let run = env.start(checkout, 7).await?;
    /// assert_eq!(env.wait(&run).await?, "INV-7");
    /// let child = env.status(&InstanceId::new("invoice-7")?).await?;
    /// assert_eq!(child.status, RuntimeStatus::Completed);
    /// # Ok(()) }
    /// ```
    #[track_caller]
    pub fn call_sub_orchestrator_with<O: Orchestrator>(
        &self,
        orchestrator: O,
        input: O::Input,
        options: SubOrchestrationOptions,
    ) -> TaskFuture<O::Output> {
        let _ = orchestrator;
        let location = Location::caller();
        let payload = match encode(&input) {
            Ok(p) => p,
            Err(e) => return TaskFuture::failed(TaskError::Decode(e)),
        };
        let SubOrchestrationOptions {
            instance_id,
            version,
            retry,
        } = options;
        let first = self.schedule_sub_raw(
            O::NAME,
            payload.clone(),
            instance_id.clone(),
            version.clone(),
            location,
        );
        match retry {
            None => first,
            Some(policy) => self.retrying(first, policy, location, move |ctx, _attempt, _| {
                ctx.schedule_sub_raw(
                    O::NAME,
                    payload.clone(),
                    instance_id.clone(),
                    version.clone(),
                    location,
                )
            }),
        }
    }

    /// Starts an independent orchestration instance and returns its id: not a child, so
    /// this instance neither waits for it nor hears of its end, and terminating or purging
    /// this instance leaves it alone. Use it to hand work off (start a long-running
    /// monitor, say) or to start a singleton under an explicit id.
    ///
    /// `options` are the client's [`StartOptions`]: the instance id (default: a UUID derived
    /// from this instance's id and the action's position, the same on every replay), a
    /// scheduled start, the id-reuse policy and the version (default: `O::VERSION`, else this
    /// instance's version). The instance is created atomically with this episode's commit,
    /// exactly once however often the code replays. A start refused by the id-reuse policy
    /// (the id belongs to a running instance under the default policy) is recorded in this
    /// instance's history as a `SubOrchestrationFailed` for the action and otherwise
    /// ignored; use [`IdReusePolicy::DedupeRunning`](crate::IdReusePolicy::DedupeRunning)
    /// to make "start unless running" a no-op.
    ///
    /// # Errors
    /// A non-retriable [`OrchestrationError`] when the input does not serialize or is too
    /// large, when the id is this instance's own, when the options ask for
    /// [`IdReusePolicy::TerminateRunning`](crate::IdReusePolicy::TerminateRunning) (the
    /// replaced tree could hold this very orchestration), or when the action limit is
    /// reached.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    ///
    /// #[orchestrator]
    /// async fn audit(_ctx: OrchestrationContext, order: u64) -> Result<u64, OrchestrationError> {
    ///     Ok(order)
    /// }
    ///
    /// #[orchestrator]
    /// async fn checkout(ctx: OrchestrationContext, order: u64) -> Result<String, OrchestrationError> {
    ///     let id = InstanceId::new(format!("audit-{order}"))?;
    ///     let started = ctx.start_orchestration(audit, order, StartOptions::new().instance_id(id))?;
    ///     Ok(format!("audit runs as {started}"))
    /// }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let env = durable_testing::TestEnv::builder().register(audit).register(checkout).start()?;
    /// let run = env.start(checkout, 7).await?;
    /// assert_eq!(env.wait(&run).await?, "audit runs as audit-7");
    /// let audit_run = env.client().handle::<u64>(InstanceId::new("audit-7")?);
    /// assert_eq!(env.wait(&audit_run).await?, 7); // on its own, not a child
    /// # Ok(()) }
    /// ```
    ///
    /// # Determinism
    /// Records `OrchestrationCreated` (with the instance id) when called.
    #[track_caller]
    pub fn start_orchestration<O: Orchestrator>(
        &self,
        orchestrator: O,
        input: O::Input,
        options: StartOptions,
    ) -> Result<InstanceId, OrchestrationError> {
        let _ = orchestrator;
        let location = Location::caller();
        let payload = encode(&input).map_err(OrchestrationError::from)?;
        let mut s = lock(&self.shared);
        s.check_payload("orchestration input", &payload)
            .map_err(|f| OrchestrationError::non_retriable(f.message))?;
        if options.reuse == crate::storage::IdReusePolicy::TerminateRunning {
            // Replacing a running instance tears its whole tree down in the same commit as
            // this episode, and that tree may hold this very orchestration (an ancestor's
            // id): a replacement is a client's (or an activity's) to ask for.
            return Err(OrchestrationError::non_retriable(
                "start_orchestration cannot use IdReusePolicy::TerminateRunning: replacing a \
                 running instance could tear down this orchestration's own ancestors; start \
                 it from a client (or an activity that holds one), or use DedupeRunning",
            ));
        }
        if options.instance_id.as_ref() == Some(&s.instance_id) {
            return Err(OrchestrationError::non_retriable(format!(
                "an orchestration cannot start another instance under its own id `{}`",
                s.instance_id
            )));
        }
        let seq = s
            .next_action_seq()
            .map_err(|f| OrchestrationError::non_retriable(f.message))?;
        let instance_id = options.instance_id.unwrap_or_else(|| {
            let name = format!("{}:{}:{seq}", s.instance_id, s.execution);
            InstanceId::from_trusted(
                uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, name.as_bytes())
                    .simple()
                    .to_string(),
            )
        });
        let version = options
            .version
            .or_else(|| O::VERSION.map(str::to_owned))
            .or_else(|| s.version.clone());
        s.emitted.push(Action {
            seq,
            location: SourceLocation::from_caller(location),
            detail: ActionDetail::StartOrchestration {
                name: O::NAME.to_owned(),
                instance_id: instance_id.clone(),
                input: payload,
                version,
                scheduled_start: options.scheduled_start,
                reuse: options.reuse,
            },
        });
        Ok(instance_id)
    }

    /// Wraps the future of a first attempt in the durable retry loop of `policy`: each
    /// failure the policy retries waits on a durable timer, then `next` schedules the next
    /// attempt (given its number and the failed attempt's last heartbeat details).
    fn retrying<T>(
        &self,
        first: TaskFuture<T>,
        policy: RetryPolicy,
        location: &'static Location<'static>,
        mut next: impl FnMut(&OrchestrationContext, u32, Option<Payload>) -> TaskFuture<()>
        + Send
        + 'static,
    ) -> TaskFuture<T> {
        if matches!(first.inner, TaskInner::Failed(_)) {
            // Not even scheduled (too large, action limit): nothing to retry.
            return first;
        }
        let ctx = self.clone();
        // Measured from the first attempt's scheduling, which happens now.
        let started = self.now();
        let mut task = first.into_raw();
        let retry = async move {
            let mut attempt = 1u32;
            loop {
                match (&mut task).await {
                    Ok(v) => return Ok(v),
                    Err(TaskError::Failed(f)) => {
                        let delay = policy.next_delay(attempt, &f.details).filter(|delay| {
                            policy.total_timeout.is_none_or(|total| {
                                ctx.now().saturating_duration_since(started) + *delay <= total
                            })
                        });
                        ctx.notice_retry(&f, attempt, delay);
                        let Some(delay) = delay else {
                            return Err(TaskError::Failed(f));
                        };
                        let heartbeat = task.take_heartbeat();
                        ctx.timer_at_located(ctx.now() + delay, location).await;
                        attempt += 1;
                        task = next(&ctx, attempt, heartbeat).into_raw();
                    }
                    Err(other) => return Err(other),
                }
            }
        };
        TaskFuture {
            inner: TaskInner::Retrying(Retrying(Box::pin(retry))),
            _t: PhantomData,
        }
    }

    /// Tells the worker what the retry loop decided about a failed attempt (only when the
    /// failure is new, not while replaying it).
    fn notice_retry(&self, f: &TaskFailure, attempt: u32, delay: Option<Duration>) {
        let mut s = lock(&self.shared);
        if s.replaying {
            return;
        }
        s.notices.push(Notice::Retry {
            seq: f.task.unwrap_or(u64::MAX),
            kind: f.kind,
            name: f.name.clone(),
            attempt,
            delay,
        });
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "one per field of the scheduled action"
    )]
    pub(crate) fn schedule_activity_raw<T>(
        &self,
        name: &str,
        payload: Payload,
        attempt: u32,
        timeouts: Timeouts,
        heartbeat: Option<Payload>,
        local: bool,
        location: &'static Location<'static>,
    ) -> TaskFuture<T> {
        self.emit_slot(location, TaskKind::Activity, name, |s| {
            s.check_payload("activity input", &payload)?;
            Ok(ActionDetail::Activity {
                name: name.to_owned(),
                input: payload,
                attempt,
                timeouts,
                heartbeat,
                local,
            })
        })
    }

    fn schedule_sub_raw<T>(
        &self,
        name: &str,
        payload: Payload,
        instance_id: Option<InstanceId>,
        version: Option<String>,
        location: &'static Location<'static>,
    ) -> TaskFuture<T> {
        self.emit_slot(location, TaskKind::SubOrchestration, name, |s| {
            s.check_payload("sub-orchestration input", &payload)?;
            if s.critical_section.is_some() {
                return Err(lock_violation(
                    "sub-orchestrations cannot start inside a critical section".to_owned(),
                ));
            }
            let instance_id = instance_id.unwrap_or_else(|| {
                // Later executions get their own ids, so a child of an earlier execution that
                // is still running does not block this one's.
                let candidate = if s.execution > 1 {
                    format!("{}:{}:{}", s.instance_id, s.execution, s.next_seq)
                } else {
                    format!("{}:{}", s.instance_id, s.next_seq)
                };
                InstanceId::new(candidate)
                    .unwrap_or_else(|_| InstanceId::random_from_seed(&s.instance_id, s.next_seq))
            });
            Ok(ActionDetail::SubOrchestration {
                name: name.to_owned(),
                instance_id,
                input: payload,
                version: version.or_else(|| s.version.clone()),
            })
        })
    }

    /// Records the action `make` describes and returns the future of its result; `kind`
    /// and `name` say which task it is in a failure.
    fn emit_slot<T>(
        &self,
        location: &'static Location<'static>,
        kind: TaskKind,
        name: &str,
        make: impl FnOnce(&State) -> Result<ActionDetail, FailureDetails>,
    ) -> TaskFuture<T> {
        let unscheduled = |details| {
            TaskFuture::failed(TaskError::Failed(Box::new(TaskFailure {
                kind,
                name: name.to_owned(),
                task: None,
                instance_id: None,
                details,
            })))
        };
        let mut s = lock(&self.shared);
        let detail = match make(&s) {
            Ok(d) => d,
            Err(f) => {
                drop(s);
                return unscheduled(f);
            }
        };
        let seq = match s.next_action_seq() {
            Ok(seq) => seq,
            Err(f) => {
                drop(s);
                return unscheduled(f);
            }
        };
        let task = TaskIdent {
            kind,
            name: name.to_owned(),
            instance_id: match &detail {
                ActionDetail::SubOrchestration { instance_id, .. } => Some(instance_id.clone()),
                ActionDetail::EntityCall { entity, .. } => Some(entity.clone()),
                _ => None,
            },
        };
        s.slots.insert(seq, Slot::default());
        s.emitted.push(Action {
            seq,
            location: SourceLocation::from_caller(location),
            detail,
        });
        drop(s);
        TaskFuture {
            inner: TaskInner::Slot(
                SlotFuture {
                    shared: Arc::clone(&self.shared),
                    seq,
                    done: false,
                },
                task,
                None,
            ),
            _t: PhantomData,
        }
    }

    /// A durable timer that fires after `duration` (measured from [`now`](Self::now)).
    ///
    /// # Determinism
    /// Records `TimerCreated` with the absolute fire time, then `TimerFired`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use durable_core::prelude::*;
    /// use durable_testing::TestEnv;
    ///
    /// #[orchestrator]
    /// async fn reminder(ctx: OrchestrationContext, minutes: u64) -> Result<String, OrchestrationError> {
    ///     ctx.sleep(Duration::from_secs(minutes * 60)).await;
    ///     Ok("time to stretch".into())
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let env = TestEnv::builder().register(reminder).start()?;
    /// let run = env.start(reminder, 30).await?;
    /// env.advance(Duration::from_secs(29 * 60)).await;
    /// env.assert_status(run.id(), RuntimeStatus::Running).await;
    /// env.advance(Duration::from_secs(60)).await;
    /// assert_eq!(env.output(&run).await?, "time to stretch");
    /// # Ok(()) }
    /// ```
    #[track_caller]
    pub fn sleep(&self, duration: Duration) -> TimerFuture {
        let at = self.now() + duration;
        self.timer_at_located(at, Location::caller())
    }

    /// A durable timer that fires at `fire_at`.
    ///
    /// # Determinism
    /// Records `TimerCreated`, then `TimerFired`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use durable_core::prelude::*;
    /// use durable_testing::TestEnv;
    ///
    /// #[orchestrator]
    /// async fn launch(ctx: OrchestrationContext, at: Timestamp) -> Result<Timestamp, OrchestrationError> {
    ///     ctx.timer_at(at).await;
    ///     Ok(ctx.now())
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let env = TestEnv::builder().register(launch).start()?;
    /// let noon = env.now() + Duration::from_secs(12 * 3600);
    /// let run = env.start(launch, noon).await?;
    /// assert_eq!(env.wait(&run).await?, noon);
    /// # Ok(()) }
    /// ```
    #[track_caller]
    pub fn timer_at(&self, fire_at: Timestamp) -> TimerFuture {
        self.timer_at_located(fire_at, Location::caller())
    }

    fn timer_at_located(
        &self,
        fire_at: Timestamp,
        location: &'static Location<'static>,
    ) -> TimerFuture {
        TimerFuture {
            inner: self.emit_slot(location, TaskKind::Timer, "", |_| {
                Ok(ActionDetail::Timer { fire_at })
            }),
        }
    }

    /// Waits for the external event `name` and decodes its data as `T`.
    ///
    /// Events raised before anyone waits are buffered; several waiters of one name are
    /// served oldest first; a waiter dropped before its event arrives releases its claim.
    ///
    /// # Determinism
    /// Records nothing when created; the delivered `EventRaised` is in history.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_testing::TestEnv;
    ///
    /// #[orchestrator]
    /// async fn approval(ctx: OrchestrationContext, amount: u64) -> Result<String, OrchestrationError> {
    ///     let approver: String = ctx.wait_for_event("approved").await?;
    ///     Ok(format!("{amount} approved by {approver}"))
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let env = TestEnv::builder().register(approval).start()?;
    /// let run = env.start(approval, 900).await?;
    /// env.raise(run.id(), "approved", "Grace").await?;
    /// assert_eq!(env.wait(&run).await?, "900 approved by Grace");
    /// # Ok(()) }
    /// ```
    pub fn wait_for_event<T: DeserializeOwned>(&self, name: &str) -> EventFuture<T> {
        let mut s = lock(&self.shared);
        s.next_waiter += 1;
        let id = s.next_waiter;
        if name.is_empty() {
            // Nothing can ever be raised under an empty name: fail now rather than wait
            // forever. The future never completes; the failure ends the execution.
            s.failure.get_or_insert_with(|| {
                FailureDetails::new(
                    "InvalidEventName",
                    "wait_for_event was given an empty event name; no event can be raised \
                     under it, so the wait could never end",
                )
                .non_retriable()
            });
            drop(s);
            return EventFuture {
                shared: Arc::clone(&self.shared),
                id,
                done: true,
                _t: PhantomData,
            };
        }
        let key = event_key(name);
        let buffered = s.buffered.get_mut(&key).and_then(VecDeque::pop_front);
        if s.buffered.get(&key).is_some_and(VecDeque::is_empty) {
            s.buffered.remove(&key);
        }
        let mut waiter = Waiter {
            key,
            result: None,
            waker: None,
        };
        match buffered {
            Some(delivered) => waiter.result = Some(delivered),
            None => s
                .waiters
                .entry(waiter.key.clone())
                .or_default()
                .push_back(id),
        }
        s.waiter_slots.insert(id, waiter);
        drop(s);
        EventFuture {
            shared: Arc::clone(&self.shared),
            id,
            done: false,
            _t: PhantomData,
        }
    }

    /// Waits for the external event `name` at most `timeout`; on timeout returns
    /// [`TaskError::Timeout`] and releases the claim on the event.
    ///
    /// # Determinism
    /// Records a `TimerCreated` for the timeout.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use durable_core::prelude::*;
    /// use durable_testing::TestEnv;
    ///
    /// #[orchestrator]
    /// async fn approval(ctx: OrchestrationContext, _input: ()) -> Result<String, OrchestrationError> {
    ///     let day = Duration::from_secs(86_400);
    ///     match ctx.wait_for_event_timeout::<String>("approved", day).await {
    ///         Ok(approver) => Ok(format!("approved by {approver}")),
    ///         Err(TaskError::Timeout) => Ok("escalated".into()),
    ///         Err(e) => Err(e.into()),
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let env = TestEnv::builder().register(approval).start()?;
    /// let run = env.start(approval, ()).await?;
    /// env.advance(Duration::from_secs(86_400)).await; // nobody answered
    /// assert_eq!(env.output(&run).await?, "escalated");
    /// # Ok(()) }
    /// ```
    #[track_caller]
    pub fn wait_for_event_timeout<T: DeserializeOwned + Send + 'static>(
        &self,
        name: &str,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<T, TaskError>> {
        let event = self.wait_for_event::<T>(name);
        let timer = self.sleep(timeout);
        Box::pin(async move {
            match select(event, timer).await {
                Either::Left(v) => v,
                Either::Right(()) => Err(TaskError::Timeout),
            }
        })
    }

    /// Sends an event to another instance (fire and forget).
    ///
    /// # Determinism
    /// Records `EventSent`.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_testing::TestEnv;
    ///
    /// #[orchestrator]
    /// async fn shipment(ctx: OrchestrationContext, _input: ()) -> Result<String, OrchestrationError> {
    ///     Ok(ctx.wait_for_event("paid").await?)
    /// }
    ///
    /// #[orchestrator]
    /// async fn payment(ctx: OrchestrationContext, target: InstanceId) -> Result<(), OrchestrationError> {
    ///     ctx.raise_event(&target, "paid", "receipt-17")?;
    ///     Ok(())
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let env = TestEnv::builder().register(shipment).register(payment).start()?;
    /// let waiting = env.start(shipment, ()).await?;
    /// let paying = env.start(payment, waiting.id().clone()).await?;
    /// env.wait(&paying).await?;
    /// assert_eq!(env.wait(&waiting).await?, "receipt-17");
    /// # Ok(()) }
    /// ```
    #[track_caller]
    pub fn raise_event<T: Serialize + ?Sized>(
        &self,
        instance_id: &InstanceId,
        name: &str,
        data: &T,
    ) -> Result<(), OrchestrationError> {
        let location = Location::caller();
        if name.is_empty() {
            return Err(OrchestrationError::non_retriable(
                "raise_event was given an empty event name; name the event",
            ));
        }
        let payload = encode(data).map_err(OrchestrationError::from)?;
        let mut s = lock(&self.shared);
        s.check_payload("event", &payload)
            .map_err(|f| OrchestrationError::non_retriable(f.message))?;
        let seq = s
            .next_action_seq()
            .map_err(|f| OrchestrationError::non_retriable(f.message))?;
        s.emitted.push(Action {
            seq,
            location: SourceLocation::from_caller(location),
            detail: ActionDetail::SendEvent {
                instance_id: instance_id.clone(),
                name: name.to_owned(),
                input: payload,
            },
        });
        Ok(())
    }

    /// Ends this execution and starts a new one of the same orchestrator with `input`,
    /// with a fresh history. Unprocessed external events are carried over.
    ///
    /// The returned future never completes; write `return ctx.continue_as_new(x).await;`.
    ///
    /// # Determinism
    /// Records `ContinuedAsNew`.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_testing::TestEnv;
    ///
    /// #[orchestrator]
    /// async fn countdown(ctx: OrchestrationContext, n: u32) -> Result<String, OrchestrationError> {
    ///     if n == 0 {
    ///         return Ok("liftoff".into());
    ///     }
    ///     // A fresh history per step: an eternal loop's history stays small.
    ///     ctx.continue_as_new(n - 1).await
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let env = TestEnv::builder().register(countdown).start()?;
    /// let run = env.start(countdown, 3).await?;
    /// assert_eq!(env.wait(&run).await?, "liftoff");
    /// assert_eq!(run.status().await?.execution, 4); // the first run and three continuations
    /// # Ok(()) }
    /// ```
    pub fn continue_as_new<T, I: Serialize>(&self, input: I) -> ContinueAsNew<T> {
        self.continue_as_new_versioned(input, None)
    }

    /// [`continue_as_new`](Self::continue_as_new) with a new version for the next execution.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_testing::TestEnv;
    ///
    /// #[orchestrator]
    /// async fn monitor(ctx: OrchestrationContext, checks: u32) -> Result<String, OrchestrationError> {
    ///     if ctx.version().as_deref() == Some("2") {
    ///         return Ok(format!("v2 after {checks} checks"));
    ///     }
    ///     // Upgrade the eternal loop at its next iteration.
    ///     ctx.continue_as_new_versioned(checks + 1, Some("2".into())).await
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let env = TestEnv::builder().register(monitor).start()?;
    /// let run = env.start_with(monitor, 0, StartOptions::new().version("1")).await?;
    /// assert_eq!(env.wait(&run).await?, "v2 after 1 checks");
    /// assert_eq!(run.status().await?.version.as_deref(), Some("2"));
    /// # Ok(()) }
    /// ```
    pub fn continue_as_new_versioned<T, I: Serialize>(
        &self,
        input: I,
        version: Option<String>,
    ) -> ContinueAsNew<T> {
        let mut s = lock(&self.shared);
        match encode(&input) {
            Ok(p) => {
                let version = version.or_else(|| s.version.clone());
                s.continue_as_new = Some((p, version));
            }
            Err(e) => {
                s.failure
                    .get_or_insert_with(|| FailureDetails::from_error(&e).non_retriable());
            }
        }
        ContinueAsNew { _t: PhantomData }
    }

    // `entity` and `signal_entity`, the typed entity proxies, are defined in `crate::entity`
    // (module `orchestration`): they need the `Entity` trait, and `entity` builds on this
    // module, never the reverse.

    /// Calls an entity operation, serializing `input` (used by the generated proxies).
    ///
    /// # Determinism
    /// Records `EntityCalled`, then `EntityResponded`.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_testing::TestEnv;
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[entity]
    /// #[derive(Default, Serialize, Deserialize)]
    /// struct Counter { value: i64 }
    ///
    /// #[entity]
    /// impl Counter {
    ///     fn add(&mut self, amount: i64) -> i64 { self.value += amount; self.value }
    /// }
    ///
    /// #[orchestrator]
    /// async fn bump(ctx: OrchestrationContext, key: String) -> Result<i64, OrchestrationError> {
    ///     // What `ctx.entity::<Counter>(&key).add(10)` does, by name.
    ///     let counter = EntityId::new("counter", &key)?;
    ///     Ok(ctx.call_entity::<i64, _>(&counter, "add", &10).await?)
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let env = TestEnv::builder().register(Counter::entity()).register(bump).start()?;
    /// let run = env.start(bump, "visits".to_owned()).await?;
    /// assert_eq!(env.wait(&run).await?, 10);
    /// # Ok(()) }
    /// ```
    #[track_caller]
    pub fn call_entity<T, I: Serialize + ?Sized>(
        &self,
        entity: &EntityId,
        operation: &str,
        input: &I,
    ) -> TaskFuture<T> {
        match encode(input) {
            Ok(p) => self.call_entity_raw(entity, operation, p),
            Err(e) => TaskFuture::failed(TaskError::Decode(e)),
        }
    }

    /// Calls an entity operation with a JSON input (used by the generated proxies).
    ///
    /// Inside a critical section only the locked entities may be called.
    ///
    /// # Determinism
    /// Records `EntityCalled`, then `EntityResponded`.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_testing::TestEnv;
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[entity]
    /// #[derive(Default, Serialize, Deserialize)]
    /// struct Counter { value: i64 }
    ///
    /// #[entity]
    /// impl Counter {
    ///     fn add(&mut self, amount: i64) -> i64 { self.value += amount; self.value }
    /// }
    ///
    /// #[orchestrator]
    /// async fn bump(ctx: OrchestrationContext, key: String) -> Result<i64, OrchestrationError> {
    ///     let counter = EntityId::new("counter", &key)?;
    ///     let input = "5".to_owned(); // already JSON
    ///     Ok(ctx.call_entity_raw::<i64>(&counter, "add", input).await?)
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let env = TestEnv::builder().register(Counter::entity()).register(bump).start()?;
    /// let run = env.start(bump, "visits".to_owned()).await?;
    /// assert_eq!(env.wait(&run).await?, 5);
    /// # Ok(()) }
    /// ```
    #[track_caller]
    pub fn call_entity_raw<T>(
        &self,
        entity: &EntityId,
        operation: &str,
        input: Payload,
    ) -> TaskFuture<T> {
        let location = Location::caller();
        let target = entity.instance_id();
        self.emit_slot(location, TaskKind::EntityOperation, operation, |s| {
            s.check_payload("entity operation input", &input)?;
            if let Some(locked) = &s.critical_section
                && !locked.contains(&target) {
                    return Err(lock_violation(format!(
                        "entity `{target}` is not locked by the current critical section; lock it too or call it outside the section"
                    )));
                }
            Ok(ActionDetail::EntityCall {
                entity: target,
                operation: operation.to_owned(),
                input,
            })
        })
    }

    /// Locks entities for a critical section: completes once all are held. Locks are taken
    /// in one global order, so sections never deadlock. Inside the section only the locked
    /// entities may be called and no sub-orchestration may start; the section ends when the
    /// returned guard is dropped (or released), or when the orchestration ends.
    ///
    /// # Determinism
    /// Records `EntityLockRequested`, then `EntityLockGranted`; the release records
    /// `EntityUnlockSent`.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_testing::TestEnv;
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[entity]
    /// #[derive(Default, Serialize, Deserialize)]
    /// struct Account { balance: i64 }
    ///
    /// #[entity]
    /// impl Account {
    ///     fn deposit(&mut self, amount: i64) { self.balance += amount; }
    /// }
    ///
    /// #[orchestrator]
    /// async fn transfer(ctx: OrchestrationContext, amount: i64) -> Result<(), OrchestrationError> {
    ///     let (from, to) = (EntityId::of::<Account>("alice")?, EntityId::of::<Account>("bob")?);
    ///     let section = ctx.lock(&[from, to]).await?; // nobody else touches either meanwhile
    ///     ctx.entity::<Account>("alice").deposit(-amount).await?;
    ///     ctx.entity::<Account>("bob").deposit(amount).await?;
    ///     section.release();
    ///     Ok(())
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let env = TestEnv::builder().register(Account::entity()).register(transfer).start()?;
    /// let run = env.start(transfer, 30).await?;
    /// env.wait(&run).await?;
    /// let bob = env.client().read_entity::<Account>("bob").await?;
    /// assert_eq!(bob.map(|a| a.balance), Some(30));
    /// # Ok(()) }
    /// ```
    #[track_caller]
    pub fn lock(&self, entities: &[EntityId]) -> LockFuture {
        let location = Location::caller();
        let mut ids: Vec<InstanceId> = entities.iter().map(EntityId::instance_id).collect();
        ids.sort();
        ids.dedup();
        let requested = ids.clone();
        let names: Vec<&str> = requested.iter().map(InstanceId::as_str).collect();
        let names = names.join(", ");
        let inner = self.emit_slot(location, TaskKind::EntityLock, &names, move |s| {
            if s.critical_section.is_some() {
                return Err(lock_violation(
                    "critical sections cannot be nested".to_owned(),
                ));
            }
            if ids.is_empty() {
                return Err(lock_violation(
                    "a critical section needs at least one entity".to_owned(),
                ));
            }
            Ok(ActionDetail::EntityLock { entities: ids })
        });
        LockFuture {
            inner,
            entities: requested,
            ctx: self.clone(),
        }
    }

    /// Awaits all futures, in any completion order; outputs come back in input order.
    /// Each completion costs O(1), so fan-outs of many thousands stay linear.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_testing::TestEnv;
    ///
    /// #[activity]
    /// async fn word_count(text: String) -> Result<usize, ActivityError> {
    ///     Ok(text.split_whitespace().count())
    /// }
    ///
    /// #[orchestrator]
    /// async fn total_words(ctx: OrchestrationContext, pages: Vec<String>) -> Result<usize, OrchestrationError> {
    ///     let counts = pages.into_iter().map(|p| ctx.call(word_count, p)); // all scheduled at once
    ///     let mut total = 0;
    ///     for count in ctx.when_all(counts).await {
    ///         total += count?;
    ///     }
    ///     Ok(total)
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let env = TestEnv::builder().register(word_count).register(total_words).start()?;
    /// let run = env.start(total_words, vec!["a b c".into(), "d e".into()]).await?;
    /// assert_eq!(env.wait(&run).await?, 5);
    /// # Ok(()) }
    /// ```
    pub fn when_all<F: Future>(&self, futures: impl IntoIterator<Item = F>) -> WhenAll<F> {
        when_all(futures)
    }

    /// Awaits the first of several futures; returns its index and output. The others are
    /// dropped (their timers stay in history; event waiters release their claims).
    ///
    /// When several are ready in the same step, the first in history order wins (each
    /// message is delivered on its own), so the choice is the same on every replay.
    ///
    /// # Errors
    /// [`TaskError::EmptySet`] at once when `futures` is empty: with nothing to wait for,
    /// there is no first. The error can be caught like any other.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    ///
    /// #[orchestrator]
    /// async fn first_reply(ctx: OrchestrationContext, names: Vec<String>) -> Result<String, OrchestrationError> {
    ///     let waits = names.iter().map(|n| ctx.wait_for_event::<String>(n));
    ///     match ctx.when_any(waits).await {
    ///         Ok((i, reply)) => Ok(format!("{} said {}", names[i], reply?)),
    ///         Err(TaskError::EmptySet) => Ok("nobody to ask".to_owned()),
    ///         Err(e) => Err(e.into()),
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let env = durable_testing::TestEnv::builder().register(first_reply).start()?;
    /// let run = env.start(first_reply, vec!["ada".into(), "grace".into()]).await?;
    /// env.raise(run.id(), "grace", "yes").await?;
    /// assert_eq!(env.wait(&run).await?, "grace said yes");
    /// let nobody = env.start(first_reply, vec![]).await?;
    /// assert_eq!(env.wait(&nobody).await?, "nobody to ask");
    /// # Ok(()) }
    /// ```
    ///
    /// # Determinism
    /// Records nothing itself; the futures record what they schedule.
    pub fn when_any<F: Future>(&self, futures: impl IntoIterator<Item = F>) -> WhenAny<F> {
        when_any(futures)
    }
}

impl InstanceId {
    fn random_from_seed(parent: &InstanceId, seq: u64) -> InstanceId {
        let name = format!("{parent}:{seq}");
        InstanceId::from_trusted(
            uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, name.as_bytes())
                .simple()
                .to_string(),
        )
    }
}

fn lock_violation(message: String) -> FailureDetails {
    FailureDetails::new("LockViolation", message).non_retriable()
}

// What `impl SignalSink for OrchestrationContext` (in `crate::entity`) records.
impl OrchestrationContext {
    /// Records a one-way signal of `operation(input)` to `entity` (`EntitySignaled`): what
    /// the typed signal proxies send through [`SignalSink`](crate::entity::SignalSink).
    #[track_caller]
    pub(crate) fn send_entity_signal(&self, entity: &EntityId, operation: &str, input: Payload) {
        let location = Location::caller();
        let mut s = lock(&self.shared);
        if let Err(f) = s.check_payload("entity signal input", &input) {
            s.failure.get_or_insert(f);
            return;
        }
        let Ok(seq) = s.next_action_seq() else { return };
        s.emitted.push(Action {
            seq,
            location: SourceLocation::from_caller(location),
            detail: ActionDetail::EntitySignal {
                entity: entity.instance_id(),
                operation: operation.to_owned(),
                input,
            },
        });
    }
}

/// Future of [`OrchestrationContext::lock`]: the critical section once all locks are held.
#[must_use = "futures do nothing unless awaited"]
#[derive(Debug)]
pub struct LockFuture {
    inner: TaskFuture<()>,
    entities: Vec<InstanceId>,
    ctx: OrchestrationContext,
}

impl Future for LockFuture {
    type Output = Result<CriticalSection, TaskError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.inner.poll_raw(cx) {
            Poll::Ready(Ok(_)) => {
                let entities = std::mem::take(&mut self.entities);
                lock(&self.ctx.shared).critical_section = Some(entities.clone());
                Poll::Ready(Ok(CriticalSection {
                    ctx: self.ctx.clone(),
                    entities,
                    released: false,
                }))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A held critical section; dropping it releases the locks.
#[derive(Debug)]
pub struct CriticalSection {
    ctx: OrchestrationContext,
    entities: Vec<InstanceId>,
    released: bool,
}

impl CriticalSection {
    /// The locked entities' instance ids, in lock order.
    pub fn entities(&self) -> &[InstanceId] {
        &self.entities
    }

    /// Releases the locks now.
    #[track_caller]
    pub fn release(mut self) {
        self.release_at(Location::caller());
    }

    fn release_at(&mut self, location: &'static Location<'static>) {
        if self.released {
            return;
        }
        self.released = true;
        let mut s = lock(&self.ctx.shared);
        s.critical_section = None;
        let Ok(seq) = s.next_action_seq() else { return };
        s.emitted.push(Action {
            seq,
            location: SourceLocation::from_caller(location),
            detail: ActionDetail::EntityUnlock {
                entities: self.entities.clone(),
            },
        });
    }
}

impl Drop for CriticalSection {
    #[track_caller]
    fn drop(&mut self) {
        self.release_at(Location::caller());
    }
}

#[derive(Debug)]
struct SlotFuture {
    shared: Shared,
    seq: u64,
    done: bool,
}

impl Future for SlotFuture {
    type Output = SlotResult;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<SlotResult> {
        if self.done {
            return Poll::Pending;
        }
        let mut s = lock(&self.shared);
        s.slot_polls += 1;
        let seq = self.seq;
        let Some(slot) = s.slots.get_mut(&seq) else {
            return Poll::Pending;
        };
        if let Some(result) = slot.result.take() {
            s.slots.remove(&seq);
            drop(s);
            self.done = true;
            return Poll::Ready(result);
        }
        match &slot.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => slot.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for SlotFuture {
    fn drop(&mut self) {
        if !self.done {
            let mut s = lock(&self.shared);
            if let Some(slot) = s.slots.get_mut(&self.seq) {
                slot.waker = None;
                if slot.result.is_some() {
                    s.slots.remove(&self.seq);
                } else {
                    slot.abandoned = true;
                }
            }
        }
    }
}

/// Which task a slot's future waits for, to name it in a failure (built into a
/// [`TaskFailure`] only when it fails).
#[derive(Debug)]
struct TaskIdent {
    kind: TaskKind,
    name: String,
    instance_id: Option<InstanceId>,
}

#[derive(Debug)]
enum TaskInner {
    /// Waiting for the result; the task named in a failure; the heartbeat details of a
    /// failed activity, once it failed.
    Slot(SlotFuture, TaskIdent, Option<Payload>),
    Failed(Option<TaskError>),
    /// A retry loop over attempts (its first attempt scheduled when it was created).
    Retrying(Retrying),
}

/// The retry loop of [`OrchestrationContext::call_with`] and friends.
struct Retrying(BoxFuture<'static, Result<Payload, TaskError>>);

impl fmt::Debug for Retrying {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Retrying")
    }
}

/// The future of an activity or sub-orchestration result, decoded as `T`.
///
/// The action is scheduled when the future is created: awaiting it only waits for the
/// result. Dropping it without awaiting leaves the activity or child running; its result is
/// then ignored (and a retry policy makes no further attempts).
#[must_use = "futures do nothing unless awaited; the action is scheduled either way"]
#[derive(Debug)]
pub struct TaskFuture<T> {
    inner: TaskInner,
    _t: PhantomData<fn() -> T>,
}

impl<T> TaskFuture<T> {
    fn failed(err: TaskError) -> Self {
        Self {
            inner: TaskInner::Failed(Some(err)),
            _t: PhantomData,
        }
    }

    fn into_raw(self) -> RawTask {
        RawTask(TaskFuture {
            inner: self.inner,
            _t: PhantomData,
        })
    }

    fn poll_raw(&mut self, cx: &mut Context<'_>) -> Poll<Result<Payload, TaskError>> {
        match &mut self.inner {
            TaskInner::Failed(e) => match e.take() {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
            TaskInner::Slot(f, task, heartbeat) => match Pin::new(&mut *f).poll(cx) {
                Poll::Ready(SlotResult::Ok(p)) => Poll::Ready(Ok(p)),
                Poll::Ready(SlotResult::Err(details, beat)) => {
                    *heartbeat = beat;
                    Poll::Ready(Err(TaskError::Failed(Box::new(TaskFailure {
                        kind: task.kind,
                        name: std::mem::take(&mut task.name),
                        task: Some(f.seq),
                        instance_id: task.instance_id.take(),
                        details,
                    }))))
                }
                Poll::Ready(SlotResult::Fired) => Poll::Ready(Ok("null".to_owned())),
                Poll::Pending => Poll::Pending,
            },
            TaskInner::Retrying(r) => r.0.as_mut().poll(cx),
        }
    }
}

impl<T: DeserializeOwned> Future for TaskFuture<T> {
    type Output = Result<T, TaskError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.poll_raw(cx)
            .map(|r| r.and_then(|p| decode_typed::<T>(&p).map_err(TaskError::Decode)))
    }
}

/// A task future yielding the undecoded JSON payload.
#[derive(Debug)]
pub(crate) struct RawTask(TaskFuture<()>);

impl RawTask {
    /// The last heartbeat details of the failed activity this future answered with.
    fn take_heartbeat(&mut self) -> Option<Payload> {
        match &mut self.0.inner {
            TaskInner::Slot(_, _, heartbeat) => heartbeat.take(),
            _ => None,
        }
    }
}

impl Future for RawTask {
    type Output = Result<Payload, TaskError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.poll_raw(cx)
    }
}

fn decode_typed<T: DeserializeOwned>(p: &str) -> Result<T, PayloadDecodeError> {
    decode(p)
}

/// A durable timer; completes with `()` when it fires.
#[must_use = "futures do nothing unless awaited; the timer is created either way"]
#[derive(Debug)]
pub struct TimerFuture {
    inner: TaskFuture<()>,
}

impl Future for TimerFuture {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // A timer can only fail to be created when the action limit is hit; the failure is
        // recorded on the orchestration, so the timer just never fires.
        match self.inner.poll_raw(cx) {
            Poll::Ready(Ok(_)) => Poll::Ready(()),
            _ => Poll::Pending,
        }
    }
}

/// Waits for an external event; completes with its data decoded as `T`.
#[must_use = "futures do nothing unless awaited"]
#[derive(Debug)]
pub struct EventFuture<T> {
    shared: Shared,
    id: u64,
    done: bool,
    _t: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> Future for EventFuture<T> {
    type Output = Result<T, TaskError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.done {
            return Poll::Pending;
        }
        let mut s = lock(&self.shared);
        s.slot_polls += 1;
        let id = self.id;
        let Some(w) = s.waiter_slots.get_mut(&id) else {
            return Poll::Pending;
        };
        if let Some(delivered) = w.result.take() {
            s.waiter_slots.remove(&id);
            drop(s);
            self.done = true;
            return Poll::Ready(
                crate::payload::decode_external::<T>(&delivered.data).map_err(TaskError::Decode),
            );
        }
        w.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl<T> Drop for EventFuture<T> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut s = lock(&self.shared);
        if let Some(w) = s.waiter_slots.remove(&self.id) {
            match w.result {
                // Delivered but never consumed: hand it to the next waiter or the buffer,
                // ahead of anything that arrived later.
                Some(delivered) => {
                    let key = w.key;
                    if let Some(next) = s.waiters.get_mut(&key).and_then(VecDeque::pop_front) {
                        if let Some(nw) = s.waiter_slots.get_mut(&next) {
                            nw.result = Some(delivered);
                            if let Some(wk) = nw.waker.take() {
                                wk.wake();
                            }
                        }
                    } else {
                        s.buffered.entry(key).or_default().push_front(delivered);
                    }
                }
                None => {
                    if let Some(q) = s.waiters.get_mut(&w.key) {
                        q.retain(|x| *x != self.id);
                        if q.is_empty() {
                            s.waiters.remove(&w.key);
                        }
                    }
                }
            }
        }
    }
}

/// The future returned by [`OrchestrationContext::continue_as_new`]; it never completes.
#[must_use = "await it: `return ctx.continue_as_new(input).await;`"]
#[derive(Debug)]
pub struct ContinueAsNew<T> {
    _t: PhantomData<fn() -> T>,
}

impl<T> Future for ContinueAsNew<T> {
    type Output = T;
    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<T> {
        Poll::Pending
    }
}
