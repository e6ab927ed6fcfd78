//! Options for durable calls from an orchestration: [`CallOptions`] for activities,
//! [`SubOrchestrationOptions`] for sub-orchestrations; and [`StartOptions`], for starting an
//! instance, which the client and `ctx.start_orchestration` share (public as
//! `durable_core::client::StartOptions`).

use std::time::Duration;

use super::Timeouts;
use crate::ids::{InstanceId, Timestamp};
use crate::retry::RetryPolicy;
use crate::storage::IdReusePolicy;
use crate::trace_context::TraceContext;

/// Options of an activity call, for [`OrchestrationContext::call_with`](super::OrchestrationContext::call_with): a durable retry
/// policy and the timeouts the worker running the activity enforces on each run.
///
/// - [`timeout`](Self::timeout) (start-to-close): how long one run may take, measured by
///   the worker running it from the moment it starts the activity. At the deadline the
///   activity's [`Cancellation`](crate::registry::Cancellation) fires, its future is dropped,
///   and the attempt fails with error type [`TIMEOUT`](Self::TIMEOUT) (retriable: the retry
///   policy applies). It is not a durable timer: time spent waiting in the queue does not
///   count, and nothing is recorded in history unless the run times out. A run cut short by
///   a crash is not an attempt that failed: the task is leased again once the crashed
///   worker's lease lapses and runs again — same attempt number, a full timeout of its own.
/// - [`heartbeat_timeout`](Self::heartbeat_timeout): how long a run may go without calling
///   [`ActivityContext::heartbeat`](crate::ActivityContext::heartbeat) (counted from its
///   start, then from each heartbeat). A run that goes silent for longer is stuck: the worker
///   cancels it and the attempt fails with error type
///   [`HEARTBEAT_TIMEOUT`](Self::HEARTBEAT_TIMEOUT) (retriable). The task's lease is also
///   held for no longer than the heartbeat timeout, renewed only while the run heartbeats:
///   a task whose worker died — or whose run blocks its thread, so it cannot time itself
///   out — is taken over by another worker after a heartbeat timeout or a little more,
///   rather than after the worker's full activity lease. Timeouts are checked when the run
///   yields; a run that never yields is dealt with by that takeover.
///
/// For a transactional activity (`#[activity(transactional)]`, see [`crate::transaction`]):
/// a `PostgreSQL` body runs under the start-to-close timeout — at the deadline its future is
/// dropped, its statements are rolled back and the attempt fails with error type
/// [`TIMEOUT`](Self::TIMEOUT) — but gets no heartbeats (it has no `ActivityContext`), so a
/// heartbeat timeout does not apply to it. A redb body runs synchronously on the store's
/// writer thread: neither timeout applies to it.
///
/// Zero durations mean no timeout. The retry policy's attempts each get the same timeouts,
/// and each attempt can read the last heartbeat details of the one before
/// ([`ActivityContext::last_heartbeat`](crate::ActivityContext::last_heartbeat)).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use durable_core::prelude::*;
///
/// let options = CallOptions::new()
///     .retry(RetryPolicy::new(5, Duration::from_secs(10)))
///     .timeout(Duration::from_secs(600))
///     .heartbeat_timeout(Duration::from_secs(30));
/// assert_eq!(options.timeout, Some(Duration::from_secs(600)));
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct CallOptions {
    /// Durable retry policy for failed attempts (default: no retries).
    pub retry: Option<RetryPolicy>,
    /// Start-to-close timeout of each run (default: none).
    pub timeout: Option<Duration>,
    /// Longest a run may go without a heartbeat (default: none).
    pub heartbeat_timeout: Option<Duration>,
}

impl CallOptions {
    /// The `error_type` of the failure recorded when a run exceeds its
    /// [`timeout`](Self::timeout).
    pub const TIMEOUT: &'static str = "Timeout";
    /// The `error_type` of the failure recorded when a run exceeds its
    /// [`heartbeat_timeout`](Self::heartbeat_timeout) without a heartbeat.
    pub const HEARTBEAT_TIMEOUT: &'static str = "HeartbeatTimeout";

    /// No retries, no timeouts: what [`OrchestrationContext::call`](super::OrchestrationContext::call) does.
    pub fn new() -> Self {
        Self::default()
    }

    /// Retries failed attempts under `policy`.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// Fails a run that takes longer than `timeout` (start-to-close, per run).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Fails a run that goes longer than `timeout` without a heartbeat, and lets another
    /// worker take the task over that soon when its worker dies. At least one second (a
    /// shorter one is raised to it: the task's lease is this long, renewed at half of it).
    pub fn heartbeat_timeout(mut self, timeout: Duration) -> Self {
        self.heartbeat_timeout = Some(if timeout.is_zero() {
            timeout
        } else {
            timeout.max(Self::MIN_HEARTBEAT_TIMEOUT)
        });
        self
    }

    /// The shortest heartbeat timeout (see [`heartbeat_timeout`](Self::heartbeat_timeout)).
    pub const MIN_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(1);

    pub(crate) fn timeouts(&self) -> Timeouts {
        Timeouts {
            timeout: self.timeout.filter(|d| !d.is_zero()),
            heartbeat_timeout: self.heartbeat_timeout.filter(|d| !d.is_zero()),
        }
    }
}

/// Options for [`OrchestrationContext::call_sub_orchestrator_with`](super::OrchestrationContext::call_sub_orchestrator_with).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct SubOrchestrationOptions {
    /// Explicit child instance id (default: `{parent}:{seq}`).
    pub instance_id: Option<InstanceId>,
    /// Version for the child (default: the parent's).
    pub version: Option<String>,
    /// Retry policy for failed children.
    pub retry: Option<RetryPolicy>,
}

impl SubOrchestrationOptions {
    /// Default options.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the child's instance id.
    pub fn instance_id(mut self, id: InstanceId) -> Self {
        self.instance_id = Some(id);
        self
    }
    /// Sets the child's version.
    pub fn version(mut self, v: impl Into<String>) -> Self {
        self.version = Some(v.into());
        self
    }
    /// Sets a retry policy.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }
}

/// Options for starting an instance.
///
/// # Examples
///
/// ```
/// use durable_core::{IdReusePolicy, InstanceId, StartOptions};
///
/// let opts = StartOptions::new()
///     .instance_id(InstanceId::new("nightly-report").unwrap())
///     .reuse(IdReusePolicy::DedupeRunning);
/// # let _ = opts;
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct StartOptions {
    /// Explicit instance id (default: a random one).
    pub instance_id: Option<InstanceId>,
    /// Do not start before this time.
    pub scheduled_start: Option<Timestamp>,
    /// What to do if the id is taken.
    pub reuse: IdReusePolicy,
    /// Version to stamp (default: the worker's version).
    pub version: Option<String>,
    /// The trace the instance joins (see [`trace_context`](Self::trace_context)).
    pub trace_context: Option<TraceContext>,
}

impl StartOptions {
    /// Defaults: random id, start now, replace finished instances.
    pub fn new() -> Self {
        Self::default()
    }
    /// Uses this instance id.
    pub fn instance_id(mut self, id: InstanceId) -> Self {
        self.instance_id = Some(id);
        self
    }
    /// Starts no earlier than `at`.
    pub fn scheduled_start(mut self, at: Timestamp) -> Self {
        self.scheduled_start = Some(at);
        self
    }
    /// Sets the id-reuse policy.
    pub fn reuse(mut self, policy: IdReusePolicy) -> Self {
        self.reuse = policy;
        self
    }
    /// Stamps this version.
    pub fn version(mut self, v: impl Into<String>) -> Self {
        self.version = Some(v.into());
        self
    }
    /// Makes the instance part of this distributed trace: its execution span (with the
    /// `opentelemetry` feature, on whichever worker runs it) becomes a child of the span
    /// `context` names. Without this option a start joins the trace of the current `tracing`
    /// span when the `opentelemetry` feature is on and that span has an OpenTelemetry
    /// context (a `tracing-opentelemetry` layer is installed); the HTTP API sets it from the
    /// request's `traceparent` and `tracestate` headers.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::{StartOptions, TraceContext};
    ///
    /// // From an incoming message's headers, say:
    /// let parent = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None);
    /// let mut opts = StartOptions::new();
    /// if let Some(parent) = parent {
    ///     opts = opts.trace_context(parent);
    /// }
    /// # assert!(opts.trace_context.is_some());
    /// ```
    pub fn trace_context(mut self, context: TraceContext) -> Self {
        self.trace_context = Some(context);
        self
    }
}
