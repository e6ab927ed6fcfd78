//! Replaying a recorded history against the current code outside any worker: the
//! versioning safety net (did a code change alter the path existing instances took?).

use std::sync::Arc;

use super::{ReplayError, Replayer};
use crate::context::Limits;
use crate::history::HistoryEvent;
use crate::ids::{InstanceId, Timestamp};
use crate::registry::Registry;

/// Replays a recorded `history` against the orchestrator registered as `name` and reports
/// the first step where the current code diverges from it.
///
/// The code is run exactly as a worker would run it on a cache miss — activities, timers and
/// sub-orchestrations are not executed, their recorded results are fed back — but nothing is
/// stored, and the history may come from anywhere: a production store exported with
/// [`history::to_json`](crate::history::to_json), a file checked into the repository, or a
/// previous version of the code. `instance_id` should be the instance the history belongs to
/// (sub-orchestration ids and `ctx.new_guid()` derive from it).
///
/// # Errors
///
/// - [`ReplayError::UnknownOrchestrator`] when `registry` has no orchestrator `name`;
/// - [`ReplayError::Nondeterminism`] at the first divergence, naming the recorded step and
///   what the code does now, each with its source location;
/// - [`ReplayError::ForeignAwait`] when, after the history, the code is blocked on something
///   that no durable event can complete.
///
/// # Examples
///
/// ```
/// use durable_core::prelude::*;
/// use durable_core::replay::{ReplayError, replay_history};
/// use durable_core::{Registry, history};
///
/// #[activity]
/// async fn fetch(url: String) -> Result<String, ActivityError> {
///     Ok(url)
/// }
///
/// // Version 2 calls `fetch`; version 1 called `download` at src/crawl.rs:7:5.
/// #[orchestrator]
/// async fn crawl(ctx: OrchestrationContext, url: String) -> Result<String, OrchestrationError> {
///     Ok(ctx.call(fetch, url).await?)
/// }
///
/// # fn main() {
/// let exported = r#"[
///   {"index": 0, "timestamp": 0, "eventType": "OrchestratorStarted"},
///   {"index": 1, "timestamp": 0, "eventType": "ExecutionStarted", "name": "crawl", "input": "\"a\""},
///   {"index": 2, "timestamp": 0, "eventType": "TaskScheduled", "seq": 0, "name": "download",
///    "input": "\"a\"", "location": {"file": "src/crawl.rs", "line": 7, "column": 5}}
/// ]"#;
/// let mut registry = Registry::new();
/// registry.register(fetch);
/// registry.register(crawl);
/// let id = InstanceId::new("crawl-1").unwrap();
///
/// let recorded = history::from_json(exported).unwrap();
/// let err = replay_history(&registry, "crawl", &id, &recorded).unwrap_err();
/// let ReplayError::Nondeterminism { detail, .. } = &err else { panic!("{err}") };
/// assert!(detail.starts_with("history step 2 recorded activity `download` (scheduled at src/crawl.rs:7:5); \
///                             the code now schedules activity `fetch` at "), "{detail}");
///
/// // A history in which the code called `fetch` replays cleanly.
/// let recorded = history::from_json(&exported.replace("download", "fetch")).unwrap();
/// assert_eq!(replay_history(&registry, "crawl", &id, &recorded), Ok(()));
/// # }
/// ```
pub fn replay_history(
    registry: &Registry,
    name: &str,
    instance_id: &InstanceId,
    history: &[HistoryEvent],
) -> Result<(), ReplayError> {
    let Some(entry) = registry.orchestrator(name) else {
        return Err(ReplayError::UnknownOrchestrator {
            name: name.to_owned(),
        });
    };
    let mut replayer = Replayer::new(
        instance_id.clone(),
        1,
        name,
        Arc::clone(&entry.run),
        Limits::default(),
    );
    replayer.handle_history(history)?;
    if !replayer.is_finished() {
        // An episode boundary checks that the code waits on something durable.
        let at = history.last().map_or(Timestamp::EPOCH, |e| e.timestamp);
        replayer.begin_episode(at);
        replayer.finish_episode()?;
    }
    Ok(())
}
