//! Errors: failure details recorded in history, the errors user code returns, and the errors
//! the client and the store report.

use std::fmt;
use std::sync::Arc;

use crate::history::RuntimeStatus;
use serde::{Deserialize, Serialize};

/// What is recorded in history when an activity, sub-orchestration or orchestration fails:
/// the error's type, its message, its cause chain, whether retrying could help, and the
/// failure it wraps, if any.
///
/// A failure caused by a failed task — an orchestration that returned a failed activity's
/// error with `?` — names the task in its message and keeps the task's own failure as its
/// [`inner`](Self::inner) failure (Durable Functions' `InnerFailure`), so nothing of the
/// original error is lost however deep the nesting.
///
/// # Examples
///
/// ```
/// use durable_core::FailureDetails;
///
/// let io = std::io::Error::other("disk full");
/// let details = FailureDetails::from_error(&io);
/// assert_eq!(details.message, "disk full");
/// assert!(details.error_type.contains("io::error::Error"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct FailureDetails {
    /// The Rust type name of the error (or a kind such as `panic`).
    pub error_type: String,
    /// The error's `Display` text.
    pub message: String,
    /// The `source()` chain, outermost first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<String>,
    /// `true` when the failure must not be retried by a retry policy.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub non_retriable: bool,
    /// The failure this one wraps: for a failed task, the task's own failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inner: Option<Box<FailureDetails>>,
}

impl FailureDetails {
    /// Details with the given type and message.
    pub fn new(error_type: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error_type: error_type.into(),
            message: message.into(),
            causes: Vec::new(),
            non_retriable: false,
            inner: None,
        }
    }

    /// Captures an error's type name, message and `source()` chain. A failed task in the
    /// chain (a user error that wraps a [`TaskError`]), or recorded failure details (an
    /// [`ActivityError`] boxed on its way), becomes the [`inner`](Self::inner) failure, so
    /// the task's own failure stays reachable with its structure; the chain's text stops
    /// there, since the inner failure holds the rest.
    ///
    /// Errors passed by value through `?` or [`ToFailure`] are recognised themselves too:
    /// a [`TaskError`] gives its task's failure, a `FailureDetails` is kept as it is.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::FailureDetails;
    ///
    /// #[derive(Debug, thiserror::Error)]
    /// #[error("could not ship the order")]
    /// struct ShipError(#[source] std::io::Error);
    ///
    /// let err = ShipError(std::io::Error::other("carrier offline"));
    /// let details = FailureDetails::from_error(&err);
    /// assert_eq!(details.message, "could not ship the order");
    /// assert_eq!(details.causes, ["carrier offline"]);
    /// ```
    pub fn from_error<E: std::error::Error + ?Sized>(err: &E) -> Self {
        let mut causes = Vec::new();
        let mut inner = None;
        let mut source = err.source();
        while let Some(s) = source {
            causes.push(s.to_string());
            if let Some(recorded) = Self::recorded(s) {
                inner = Some(Box::new(recorded));
                break;
            }
            source = s.source();
        }
        Self {
            error_type: std::any::type_name::<E>().to_owned(),
            message: err.to_string(),
            causes,
            non_retriable: false,
            inner,
        }
    }

    /// [`from_error`](Self::from_error) for an error known by its type, which can be
    /// recognised: a task's failure or failure details keep their structure.
    ///
    /// A `PostgreSQL` error reports the database's own message and SQLSTATE code (its
    /// `Display` is only "db error").
    fn from_typed_error<E: std::error::Error + 'static>(err: &E) -> Self {
        let details = Self::recorded(err).unwrap_or_else(|| Self::from_error(err));
        #[cfg(feature = "postgres")]
        let details = details.with_db_error(err);
        details
    }

    /// Adds a `PostgreSQL` error's database message and SQLSTATE code to the message.
    #[cfg(feature = "postgres")]
    fn with_db_error(mut self, err: &(dyn std::error::Error + 'static)) -> Self {
        if let Some(db) = err
            .downcast_ref::<tokio_postgres::Error>()
            .and_then(tokio_postgres::Error::as_db_error)
        {
            self.message = format!(
                "{}: {} (SQLSTATE {})",
                self.message,
                db.message(),
                db.code().code()
            );
        }
        self
    }

    /// The failure an error already stands for: a failed task's (naming the task and
    /// wrapping its own failure), or failure details themselves.
    fn recorded(err: &(dyn std::error::Error + 'static)) -> Option<Self> {
        if let Some(t) = err.downcast_ref::<TaskError>() {
            return Some(TaskError::to_failure(t));
        }
        if let Some(t) = err.downcast_ref::<TaskFailure>() {
            return Some(TaskFailure::to_failure(t));
        }
        err.downcast_ref::<FailureDetails>().cloned()
    }

    /// Marks the failure as not retriable.
    pub fn non_retriable(mut self) -> Self {
        self.non_retriable = true;
        self
    }

    /// Wraps `inner`: this failure was caused by it.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::FailureDetails;
    ///
    /// let cause = FailureDetails::new("CardDeclined", "card declined");
    /// let f = FailureDetails::new("PaymentFailed", "payment failed").with_inner(cause.clone());
    /// assert_eq!(f.inner.as_deref(), Some(&cause));
    /// assert_eq!(f.innermost(), &cause);
    /// ```
    pub fn with_inner(mut self, inner: FailureDetails) -> Self {
        self.inner = Some(Box::new(inner));
        self
    }

    /// The deepest failure in the [`inner`](Self::inner) chain (this one if it wraps none):
    /// the error that started it all.
    pub fn innermost(&self) -> &FailureDetails {
        let mut f = self;
        while let Some(i) = f.inner.as_deref() {
            f = i;
        }
        f
    }

    pub(crate) fn from_panic(payload: &(dyn std::any::Any + Send)) -> Self {
        let message = if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_owned()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "panic with a non-string payload".to_owned()
        };
        Self::new("panic", message)
    }
}

impl fmt::Display for FailureDetails {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.error_type, self.message)?;
        for c in &self.causes {
            write!(f, ": {c}")?;
        }
        Ok(())
    }
}

/// The [`inner`](FailureDetails::inner) failure is the error's
/// [`source`](std::error::Error::source), so error-chain reporters (`anyhow`'s `{:#}`, a
/// `Box<dyn Error>` walked with `source()`) show the task's own failure under the one that
/// wraps it.
impl std::error::Error for FailureDetails {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .as_deref()
            .map(|i| i as &(dyn std::error::Error + 'static))
    }
}

/// Converts an error returned by user code into [`FailureDetails`].
///
/// Implemented for every `std::error::Error`, for [`ActivityError`] and for
/// [`OrchestrationError`].
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be recorded as a durable failure",
    note = "return `ActivityError` / `OrchestrationError`, or any type implementing `std::error::Error`"
)]
pub trait ToFailure {
    /// The details recorded in history.
    fn to_failure(&self) -> FailureDetails;
}

impl<E: std::error::Error + 'static> ToFailure for E {
    fn to_failure(&self) -> FailureDetails {
        FailureDetails::from_typed_error(self)
    }
}

macro_rules! user_error {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name(FailureDetails);

        impl $name {
            /// An error with just a message.
            pub fn new(message: impl Into<String>) -> Self {
                Self(FailureDetails::new(stringify!($name), message))
            }

            /// An error that retry policies must not retry.
            pub fn non_retriable(message: impl Into<String>) -> Self {
                Self(FailureDetails::new(stringify!($name), message).non_retriable())
            }

            /// The details that will be recorded.
            pub fn details(&self) -> &FailureDetails {
                &self.0
            }

            /// Consumes the error, returning its details.
            pub fn into_details(self) -> FailureDetails {
                self.0
            }
        }

        impl<E: std::error::Error + 'static> From<E> for $name {
            fn from(err: E) -> Self {
                Self(FailureDetails::from_typed_error(&err))
            }
        }

        impl ToFailure for $name {
            fn to_failure(&self) -> FailureDetails {
                self.0.clone()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        /// `?` into `Box<dyn Error + Send + Sync>`: the box holds the [`FailureDetails`]
        /// (same text; its inner failure is its `source()`).
        impl From<$name> for Box<dyn std::error::Error + Send + Sync> {
            fn from(err: $name) -> Self {
                Box::new(err.0)
            }
        }

        /// `?` into `Box<dyn Error>`: the box holds the [`FailureDetails`].
        impl From<$name> for Box<dyn std::error::Error> {
            fn from(err: $name) -> Self {
                Box::new(err.0)
            }
        }

        /// `?` into `anyhow::Error` (feature `anyhow`): the error holds the
        /// [`FailureDetails`], and its inner failures form the chain.
        #[cfg(feature = "anyhow")]
        #[cfg_attr(docsrs, doc(cfg(feature = "anyhow")))]
        impl From<$name> for anyhow::Error {
            fn from(err: $name) -> Self {
                anyhow::Error::new(err.0)
            }
        }

        impl From<$name> for FailureDetails {
            fn from(err: $name) -> Self {
                err.0
            }
        }
    };
}

user_error! {
    /// The error an activity returns. Any `std::error::Error` converts into it with `?`.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::ActivityError;
    ///
    /// fn parse(text: &str) -> Result<u32, ActivityError> {
    ///     Ok(text.parse::<u32>()?)
    /// }
    /// let err = parse("x").unwrap_err();
    /// assert!(err.details().error_type.contains("ParseIntError"));
    /// assert!(ActivityError::non_retriable("bad card").details().non_retriable);
    /// ```
    ActivityError
}

user_error! {
    /// The error an orchestration returns. Any `std::error::Error` — including a failed
    /// activity's [`TaskError`] — converts into it with `?`.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::OrchestrationError;
    ///
    /// let err = OrchestrationError::new("out of stock");
    /// assert_eq!(err.details().message, "out of stock");
    /// ```
    OrchestrationError
}

/// Why a durable task awaited in an orchestration did not produce a value.
///
/// Returned from an orchestration with `?`, it becomes the instance's failure: for a
/// failed task, one that names the task (`activity 'charge' (task 3) failed: card
/// declined`) and keeps the task's own failure as its inner failure.
///
/// # Examples
///
/// ```
/// use durable_core::prelude::*;
///
/// #[activity]
/// async fn charge(cents: u64) -> Result<String, ActivityError> {
///     Err(ActivityError::non_retriable(format!("card declined for {cents}")))
/// }
///
/// #[orchestrator]
/// async fn checkout(ctx: OrchestrationContext, cents: u64) -> Result<String, OrchestrationError> {
///     match ctx.call(charge, cents).await {
///         Ok(receipt) => Ok(receipt),
///         // The activity's own failure, and which task it was.
///         Err(TaskError::Failed(t)) if t.details.non_retriable => {
///             Ok(format!("{} failed: {}", t.name, t.details.message))
///         }
///         Err(e) => Err(e.into()),
///     }
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// The activity, sub-orchestration or entity operation failed; its failure was
    /// recorded in history. The error's [`source`](std::error::Error::source) is the
    /// task's own [`FailureDetails`].
    #[error(transparent)]
    Failed(Box<TaskFailure>),
    /// A wait with a timeout (such as `wait_for_event_timeout`) timed out.
    #[error("timed out")]
    Timeout,
    /// The result did not deserialize into the type the code expects.
    #[error("{0}")]
    Decode(PayloadDecodeError),
    /// `when_any` was given no futures: with nothing to wait for there is no first to
    /// finish, so it fails at once instead of waiting forever.
    #[error("when_any was given no tasks: there is nothing to wait for")]
    EmptySet,
}

impl TaskError {
    /// The task's own failure details, if the task failed.
    pub fn failure(&self) -> Option<&FailureDetails> {
        match self {
            TaskError::Failed(t) => Some(&t.details),
            _ => None,
        }
    }

    /// The failure recorded when an orchestration ends with this error: a failed task's
    /// failure names the task and wraps the task's own failure.
    pub fn to_failure(&self) -> FailureDetails {
        match self {
            TaskError::Failed(t) => TaskFailure::to_failure(t),
            TaskError::Timeout => FailureDetails::new("Timeout", self.to_string()),
            TaskError::Decode(e) => FailureDetails::new("PayloadDecodeError", e.to_string()),
            TaskError::EmptySet => {
                FailureDetails::new("EmptySet", self.to_string()).non_retriable()
            }
        }
    }

    /// `true` for [`TaskError::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, TaskError::Timeout)
    }
}

/// What kind of durable task failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TaskKind {
    /// An activity.
    Activity,
    /// A sub-orchestration.
    SubOrchestration,
    /// An entity operation called from an orchestration.
    EntityOperation,
    /// A durable timer (fails only when it cannot be scheduled).
    Timer,
    /// A critical section's lock request.
    EntityLock,
}

impl TaskKind {
    /// How the kind reads in a message: `"activity"`, `"sub-orchestration"`, …
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Activity => "activity",
            TaskKind::SubOrchestration => "sub-orchestration",
            TaskKind::EntityOperation => "entity operation",
            TaskKind::Timer => "timer",
            TaskKind::EntityLock => "entity lock",
        }
    }
}

/// A durable task that failed: which task it was, and its own failure.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TaskFailure {
    /// What kind of task.
    pub kind: TaskKind,
    /// The activity, orchestrator or operation name.
    pub name: String,
    /// The task's sequence number in the orchestration (`None` when it failed before it
    /// could be scheduled: an oversized input, say).
    pub task: Option<u64>,
    /// The sub-orchestration's instance id, or the called entity's.
    pub instance_id: Option<crate::ids::InstanceId>,
    /// The task's own failure, as recorded in history.
    pub details: FailureDetails,
}

impl TaskFailure {
    /// The failure recorded when an orchestration ends with this one: type `TaskFailed`, a
    /// message that names the task, the task's own failure as the inner failure, and its
    /// non-retriable flag.
    pub fn to_failure(&self) -> FailureDetails {
        FailureDetails {
            error_type: "TaskFailed".to_owned(),
            message: self.to_string(),
            causes: Vec::new(),
            non_retriable: self.details.non_retriable,
            inner: Some(Box::new(self.details.clone())),
        }
    }
}

/// The task's own failure ([`details`](TaskFailure::details)) is the error's
/// [`source`](std::error::Error::source).
impl std::error::Error for TaskFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.details)
    }
}

impl fmt::Display for TaskFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.as_str())?;
        if !self.name.is_empty() {
            write!(f, " '{}'", self.name)?;
        }
        let mut about = Vec::new();
        match (&self.instance_id, self.kind) {
            (Some(id), TaskKind::EntityOperation) => write!(f, " on '{id}'")?,
            (Some(id), _) => about.push(format!("instance '{id}'")),
            (None, _) => {}
        }
        if let Some(seq) = self.task {
            about.push(format!("task {seq}"));
        }
        if !about.is_empty() {
            write!(f, " ({})", about.join(", "))?;
        }
        let verb = if self.task.is_some() {
            "failed"
        } else {
            "could not be scheduled"
        };
        write!(f, " {verb}: {}", self.details.message)
    }
}

/// A payload that did not deserialize into the type the code expects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("payload does not deserialize as `{expected}`: {message}")]
#[non_exhaustive]
pub struct PayloadDecodeError {
    /// The Rust type the payload was decoded as.
    pub expected: &'static str,
    /// serde's message.
    pub message: String,
}

/// An instance id that breaks the id rules (see [`crate::InstanceId`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid instance id {id:?}: {reason}")]
#[non_exhaustive]
pub struct InvalidInstanceId {
    /// The rejected id (truncated if very long).
    pub id: String,
    /// Which rule it broke.
    pub reason: &'static str,
}

/// An error from a [`crate::storage::Store`] implementation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The instance does not exist.
    #[error("instance `{0}` not found")]
    InstanceNotFound(String),
    /// The instance exists but is finished.
    #[error("instance `{0}` is not running")]
    InstanceNotRunning(String),
    /// The instance exists and its id may not be reused.
    #[error("instance `{0}` already exists")]
    InstanceAlreadyExists(String),
    /// The request does not apply to the instance's state: suspend of a suspended
    /// instance, resume of one that is not suspended (see
    /// [`crate::storage::check_control`]).
    #[error("cannot {operation} instance `{instance}` in the {} state", status.as_str())]
    InvalidState {
        /// The instance.
        instance: String,
        /// Its state, with the requests already accepted for it applied.
        status: RuntimeStatus,
        /// `suspend` or `resume`.
        operation: &'static str,
    },
    /// A lease expired and another worker took the work over; this commit was discarded.
    #[error("lost the lock on `{0}`; the episode was discarded")]
    LockLost(String),
    /// The store could not do its work (IO, corruption, connection). The [`BackendError`]
    /// says what failed and keeps the driver's or the OS's error as its
    /// [`source`](std::error::Error::source), so it can be inspected.
    #[error(transparent)]
    Backend(BackendError),
    /// The store does not support the operation asked for (a transactional activity's kind
    /// of transaction, see [`crate::transaction`]); the message names the store and the
    /// operation.
    #[error("{0}")]
    Unsupported(String),
}

impl StoreError {
    /// A [`StoreError::Backend`] with a message and no underlying error.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::StoreError;
    ///
    /// let err = StoreError::backend("the store is closed");
    /// assert_eq!(err.to_string(), "storage failure: the store is closed");
    /// ```
    pub fn backend(message: impl Into<String>) -> Self {
        StoreError::Backend(BackendError::new(message))
    }

    /// A [`StoreError::Backend`] caused by `source` (an IO or database driver error), which
    /// stays reachable through [`std::error::Error::source`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::error::Error as _;
    /// use durable_core::StoreError;
    ///
    /// let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied");
    /// let err = StoreError::backend_with("cannot open app.redb: denied", io);
    /// let source = err.source().and_then(|s| s.downcast_ref::<std::io::Error>());
    /// assert_eq!(source.map(std::io::Error::kind), Some(std::io::ErrorKind::PermissionDenied));
    /// ```
    pub fn backend_with(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StoreError::Backend(BackendError::new(message).with_source(source))
    }
}

/// The store's own failure behind a [`StoreError::Backend`]: what failed, in words, and the
/// error that caused it (a `tokio_postgres::Error`, a `redb` error, a `std::io::Error`), when
/// there is one.
///
/// The message is complete on its own (it includes the cause's text), so printing the error
/// is enough to see what happened; [`source`](std::error::Error::source) hands out the cause
/// itself for code that inspects it (`downcast_ref::<std::io::Error>()`, a database error
/// code).
///
/// Clones share the cause. Two backend errors are equal when their messages are: causes
/// from drivers and the OS have no equality of their own.
///
/// # Examples
///
/// ```
/// use std::error::Error as _;
/// use durable_core::error::BackendError;
///
/// let err = BackendError::new("cannot create the pool: refused")
///     .with_source(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
/// assert_eq!(err.message(), "cannot create the pool: refused");
/// assert!(err.source().unwrap().is::<std::io::Error>());
/// ```
#[derive(Clone)]
pub struct BackendError {
    message: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl BackendError {
    /// An error with a message and no cause.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
        }
    }

    /// Attaches the error that caused this one.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// Attaches a shared cause (one that several errors report, such as a failed batch
    /// commit).
    pub fn with_shared_source(mut self, source: Arc<dyn std::error::Error + Send + Sync>) -> Self {
        self.source = Some(source);
        self
    }

    /// What failed.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Debug for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("BackendError");
        d.field("message", &self.message);
        if let Some(s) = &self.source {
            d.field("source", s);
        }
        d.finish()
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "storage failure: {}", self.message)
    }
}

impl std::error::Error for BackendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

impl PartialEq for BackendError {
    fn eq(&self, other: &Self) -> bool {
        self.message == other.message
    }
}

impl Eq for BackendError {}

impl From<BackendError> for StoreError {
    fn from(e: BackendError) -> Self {
        StoreError::Backend(e)
    }
}

/// An error from a [`crate::Client`] operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No instance has this id.
    #[error("instance `{0}` not found")]
    InstanceNotFound(String),
    /// The instance has finished; the operation needs a running instance.
    #[error("instance `{0}` is not running")]
    InstanceNotRunning(String),
    /// An instance with this id exists and the id-reuse policy forbids replacing it.
    #[error("instance `{0}` already exists")]
    InstanceAlreadyExists(String),
    /// The request does not apply to the instance's state: suspend of a suspended
    /// instance, resume of one that is not suspended. Requests already accepted count: a
    /// resume right after a suspend is taken even before a worker applied the suspend.
    #[error("cannot {operation} instance `{instance}` in the {} state", status.as_str())]
    InvalidState {
        /// The instance.
        instance: String,
        /// Its state, with the requests already accepted for it applied.
        status: RuntimeStatus,
        /// `suspend` or `resume`.
        operation: &'static str,
    },
    /// The run a handle followed was replaced by another start under the same id before
    /// its result was read (see [`crate::InstanceHandle::wait`]).
    #[error("instance `{0}` was replaced by a new start under the same id")]
    Replaced(String),
    /// The operation needs a finished instance (purge) and this one is still running.
    #[error("instance `{0}` is still running")]
    InstanceStillRunning(String),
    /// No orchestrator of this name is registered.
    #[error("no orchestrator named `{0}` is registered")]
    UnknownOrchestrator(String),
    /// The instance id breaks the id rules.
    #[error(transparent)]
    InvalidInstanceId(#[from] InvalidInstanceId),
    /// An event name that cannot be raised (an empty one: no orchestration could wait for
    /// it).
    #[error("invalid event name {name:?}: {reason}")]
    InvalidEventName {
        /// The rejected name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// A payload did not serialize or deserialize.
    #[error(transparent)]
    PayloadDecode(#[from] PayloadDecodeError),
    /// A payload is larger than the configured limit.
    #[error("payload of {size} bytes exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// Size of the payload in bytes.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The orchestration failed; these are its failure details (also the error's
    /// [`source`](std::error::Error::source), so chain reporters reach the inner failures).
    #[error("orchestration failed: {0}")]
    Failed(#[source] FailureDetails),
    /// The orchestration was terminated.
    #[error("orchestration was terminated: {reason}")]
    Terminated {
        /// The reason given at termination.
        reason: String,
    },
    /// The instance cannot be rewound: it has not failed, or its failed execution cannot be
    /// resumed (see [`crate::Client::rewind`]).
    #[error("instance `{instance}` cannot be rewound: {reason}")]
    CannotRewind {
        /// The instance.
        instance: String,
        /// Why.
        reason: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
    /// A wait with a timeout ([`crate::Client::wait_until`]) ran out of time.
    #[error("instance `{instance}`: the awaited condition did not hold within {after:?}")]
    Timeout {
        /// The instance.
        instance: String,
        /// How long it waited.
        after: std::time::Duration,
    },
}

impl From<StoreError> for ClientError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::InstanceNotFound(id) => ClientError::InstanceNotFound(id),
            StoreError::InstanceNotRunning(id) => ClientError::InstanceNotRunning(id),
            StoreError::InstanceAlreadyExists(id) => ClientError::InstanceAlreadyExists(id),
            StoreError::InvalidState {
                instance,
                status,
                operation,
            } => ClientError::InvalidState {
                instance,
                status,
                operation,
            },
            other => ClientError::Store(other),
        }
    }
}

/// An error starting a [`crate::Worker`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// No store was given to the builder.
    #[error("no store configured: call `.store(..)` on the builder")]
    MissingStore,
    /// Two registrations share one name.
    #[error("duplicate {kind} name `{name}`: each activity and orchestrator needs a unique name")]
    DuplicateName {
        /// `activity` or `orchestrator`.
        kind: &'static str,
        /// The name registered twice.
        name: String,
    },
    /// `start()` was called outside a Tokio runtime: the worker's dispatchers run on the
    /// runtime it is started on.
    #[error(
        "no Tokio runtime: start the worker from async code running on a Tokio runtime \
         (`#[tokio::main]`, `#[tokio::test]`, or inside `Runtime::block_on`)"
    )]
    NoRuntime,
    /// An activity takes a [`State<T>`](crate::State) the builder was not given.
    #[error(
        "activity `{activity}` takes `State<{type_name}>`, but the builder was given no `{type_name}`: \
         add it with `.state(value)`"
    )]
    MissingState {
        /// The activity's durable name.
        activity: String,
        /// The missing type, as [`std::any::type_name`] spells it.
        type_name: &'static str,
    },
    /// The local activity budget is not shorter than the orchestration lease: an episode
    /// running local activities could outlive its lease.
    #[error(
        "local activity budget of {budget:?} is not shorter than the orchestration lease of {lease:?}: \
         lower `local_activity_budget` or raise `orchestration_lock`"
    )]
    LocalActivityBudget {
        /// The configured budget.
        budget: std::time::Duration,
        /// The orchestration lease.
        lease: std::time::Duration,
    },
    /// Two state values of one type were given: a worker holds one value per type.
    #[error(
        "two state values of type `{type_name}` were given; a worker holds one value per type: \
         wrap each in a type of its own (`struct ReportsDb(PgPool);`)"
    )]
    DuplicateState {
        /// The type given twice.
        type_name: &'static str,
    },
}

/// Why a running [`crate::Worker`] stopped working on its own: one of its dispatchers
/// panicked or returned while the worker was not shutting down (see
/// [`crate::Worker::closed`] and [`crate::Worker::run_until`]).
///
/// The worker does not restart a dead dispatcher: whatever killed it would most likely kill
/// it again. Shut the worker down and let the process supervisor restart it; work leased
/// by the dead dispatcher is taken up again when its lease expires.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// A dispatcher panicked.
    #[error("the worker's {dispatcher} panicked: {message}")]
    DispatcherPanicked {
        /// Which dispatcher: `orchestration dispatcher`, `activity dispatcher`, `lease
        /// keeper` or `retention sweeper`.
        dispatcher: &'static str,
        /// The panic's message.
        message: String,
    },
    /// A dispatcher returned although the worker was not shutting down.
    #[error("the worker's {dispatcher} stopped while the worker was running")]
    DispatcherStopped {
        /// Which dispatcher (see [`WorkerError::DispatcherPanicked`]).
        dispatcher: &'static str,
    },
}

impl WorkerError {
    /// The dispatcher that died.
    pub fn dispatcher(&self) -> &'static str {
        match self {
            WorkerError::DispatcherPanicked { dispatcher, .. }
            | WorkerError::DispatcherStopped { dispatcher } => dispatcher,
        }
    }
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, PayloadDecodeError> {
    serde_json::from_str(text).map_err(|e| PayloadDecodeError {
        expected: std::any::type_name::<T>(),
        message: e.to_string(),
    })
}

pub(crate) fn encode<T: serde::Serialize + ?Sized>(
    value: &T,
) -> Result<String, PayloadDecodeError> {
    serde_json::to_string(value).map_err(|e| PayloadDecodeError {
        expected: std::any::type_name::<T>(),
        message: e.to_string(),
    })
}
