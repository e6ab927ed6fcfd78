//! The versioning safety net: replay a recorded history against the current code and report
//! the first divergence, with the source locations of both sides.

use std::error::Error;
use std::fmt;

use durable_core::history::{Event, HistoryEvent, to_json};
use durable_core::replay::{ReplayError, replay_history};
use durable_core::{InstanceId, Registry, Store, StoreError};

use crate::history::History;

/// Why a recorded history does not replay against the current code.
///
/// Its `Display` states the divergence — "history step 3 recorded activity `reserve`
/// (scheduled at src/order.rs:42:9); the code now schedules timer at src/order.rs:45:9" —
/// followed by the recorded history, one event per line.
///
/// # Examples
///
/// ```
/// use durable_core::{InstanceId, Registry};
/// use durable_testing::{ReplayCheckError, replay_check};
///
/// let id = InstanceId::new("any").unwrap();
/// let err = replay_check(&Registry::new(), &id, "not json").unwrap_err();
/// assert!(matches!(err, ReplayCheckError::Json(_)));
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum ReplayCheckError {
    /// The text is not an exported history.
    Json(serde_json::Error),
    /// The history has no `ExecutionStarted` event, so it names no orchestrator.
    NoExecutionStarted,
    /// The current code diverges from the history (or its orchestrator is not registered).
    Diverged {
        /// The replay error, naming both sides of the first divergence.
        error: ReplayError,
        /// The history that was replayed.
        history: History,
    },
}

impl fmt::Display for ReplayCheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplayCheckError::Json(e) => write!(f, "not an exported history: {e}"),
            ReplayCheckError::NoExecutionStarted => f.write_str(
                "the history has no `ExecutionStarted` event, so it names no orchestrator to replay",
            ),
            ReplayCheckError::Diverged { error, history } => {
                write!(f, "{error}\n\nrecorded history:\n{history}")
            }
        }
    }
}

impl Error for ReplayCheckError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            ReplayCheckError::Json(e) => Some(e),
            ReplayCheckError::Diverged { error, .. } => Some(error),
            ReplayCheckError::NoExecutionStarted => None,
        }
    }
}

/// Replays an exported history (JSON from [`export_history`] or
/// [`durable_core::history::to_json`]) against the orchestrator of the same name in
/// `registry`, and reports the first divergence.
///
/// Keep histories of long-lived instances next to the tests and run this on every change:
/// an orchestrator edit that would break in-flight instances fails here, naming the recorded
/// step and the code's new step with both source locations, instead of leaving production
/// instances stuck. `instance_id` is the id the history belongs to (sub-orchestration ids and
/// `ctx.new_guid()` derive from it).
///
/// # Errors
///
/// See [`ReplayCheckError`].
///
/// # Examples
///
/// ```
/// use durable_core::prelude::*;
/// use durable_core::{InstanceId, Registry};
/// use durable_testing::replay_check;
///
/// #[orchestrator]
/// async fn nap(ctx: OrchestrationContext, _x: ()) -> Result<(), OrchestrationError> {
///     ctx.sleep(std::time::Duration::from_secs(60)).await;
///     Ok(())
/// }
///
/// let exported = r#"[
///   {"index": 0, "timestamp": 0, "eventType": "OrchestratorStarted"},
///   {"index": 1, "timestamp": 0, "eventType": "ExecutionStarted", "name": "nap", "input": "null"},
///   {"index": 2, "timestamp": 0, "eventType": "TimerCreated", "seq": 0, "fire_at": 60000}
/// ]"#;
/// let mut registry = Registry::new();
/// registry.register(nap);
/// replay_check(&registry, &InstanceId::new("nap-1").unwrap(), exported).unwrap();
/// ```
pub fn replay_check(
    registry: &Registry,
    instance_id: &InstanceId,
    json: &str,
) -> Result<(), ReplayCheckError> {
    let history = History::from_json(json).map_err(ReplayCheckError::Json)?;
    replay_check_history(registry, instance_id, history.events())
}

/// [`replay_check`] on history events already in memory.
///
/// # Errors
///
/// See [`ReplayCheckError`].
///
/// # Examples
///
/// ```
/// use durable_core::{InstanceId, Registry};
/// use durable_testing::{ReplayCheckError, replay_check_history};
///
/// let err = replay_check_history(&Registry::new(), &InstanceId::new("x").unwrap(), &[]).unwrap_err();
/// assert!(matches!(err, ReplayCheckError::NoExecutionStarted));
/// ```
pub fn replay_check_history(
    registry: &Registry,
    instance_id: &InstanceId,
    history: &[HistoryEvent],
) -> Result<(), ReplayCheckError> {
    let name = history
        .iter()
        .find_map(|e| match &e.event {
            Event::ExecutionStarted { name, .. } => Some(name.clone()),
            _ => None,
        })
        .ok_or(ReplayCheckError::NoExecutionStarted)?;
    replay_history(registry, &name, instance_id, history).map_err(|error| {
        ReplayCheckError::Diverged {
            error,
            history: History::new(history.to_vec()),
        }
    })
}

/// Exports the history of an instance's current execution from any store as JSON, ready for
/// [`replay_check`]: point it at a production store (redb, Postgres, …) to capture the
/// instances a code change must keep running.
///
/// # Errors
///
/// When the store fails, or [`StoreError::InstanceNotFound`] for an unknown instance.
///
/// # Examples
///
/// ```
/// use durable_core::{InstanceId, MemoryStore, StoreError};
/// use durable_testing::export_history;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let store = MemoryStore::new();
/// let err = export_history(&store, &InstanceId::new("missing").unwrap()).await.unwrap_err();
/// assert!(matches!(err, StoreError::InstanceNotFound(_)));
/// # }
/// ```
pub async fn export_history<S: Store + ?Sized>(
    store: &S,
    instance_id: &InstanceId,
) -> Result<String, StoreError> {
    if store.read_instance(instance_id).await?.is_none() {
        return Err(StoreError::InstanceNotFound(instance_id.to_string()));
    }
    Ok(to_json(&store.read_history(instance_id).await?))
}
