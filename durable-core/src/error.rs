//! Errors: failure details recorded in history, the errors user code returns, and the errors
//! the client and the store report.

use std::fmt;

use crate::history::RuntimeStatus;
use serde::{Deserialize, Serialize};

/// What is recorded in history when an activity, sub-orchestration or orchestration fails:
/// the error's type, its message, its cause chain and whether retrying could help.
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
}

impl FailureDetails {
    /// Details with the given type and message.
    pub fn new(error_type: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error_type: error_type.into(),
            message: message.into(),
            causes: Vec::new(),
            non_retriable: false,
        }
    }

    /// Captures an error's type name, message and `source()` chain.
    pub fn from_error<E: std::error::Error + ?Sized>(err: &E) -> Self {
        let mut causes = Vec::new();
        let mut source = err.source();
        while let Some(s) = source {
            causes.push(s.to_string());
            source = s.source();
        }
        Self {
            error_type: std::any::type_name::<E>().to_owned(),
            message: err.to_string(),
            causes,
            non_retriable: false,
        }
    }

    /// Marks the failure as not retriable.
    pub fn non_retriable(mut self) -> Self {
        self.non_retriable = true;
        self
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

impl std::error::Error for FailureDetails {}

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

impl<E: std::error::Error> ToFailure for E {
    fn to_failure(&self) -> FailureDetails {
        FailureDetails::from_error(self)
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

        impl<E: std::error::Error> From<E> for $name {
            fn from(err: E) -> Self {
                Self(FailureDetails::from_error(&err))
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
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// The activity or sub-orchestration failed; its details were recorded in history.
    #[error("task failed: {0}")]
    Failed(FailureDetails),
    /// A wait with a timeout (such as `wait_for_event_timeout`) timed out.
    #[error("timed out")]
    Timeout,
    /// The result did not deserialize into the type the code expects.
    #[error("{0}")]
    Decode(PayloadDecodeError),
}

impl TaskError {
    /// The failure details, if the task failed.
    pub fn failure(&self) -> Option<&FailureDetails> {
        match self {
            TaskError::Failed(f) => Some(f),
            _ => None,
        }
    }

    /// `true` for [`TaskError::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, TaskError::Timeout)
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
    /// The store could not do its work (IO, corruption, connection).
    #[error("storage failure: {0}")]
    Backend(String),
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
    /// The operation needs a finished instance (purge) and this one is still running.
    #[error("instance `{0}` is still running")]
    InstanceStillRunning(String),
    /// No orchestrator of this name is registered.
    #[error("no orchestrator named `{0}` is registered")]
    UnknownOrchestrator(String),
    /// The instance id breaks the id rules.
    #[error(transparent)]
    InvalidInstanceId(#[from] InvalidInstanceId),
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
    /// The orchestration failed; these are its failure details.
    #[error("orchestration failed: {0}")]
    Failed(FailureDetails),
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
