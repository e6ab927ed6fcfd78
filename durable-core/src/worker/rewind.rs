//! Rewinding a failed instance: the store-facing half (the pure half, which events replay
//! skips and what must run again, is [`crate::replay::rewind`]).
//!
//! Used by the worker, which applies a rewind request, and by [`crate::Client::rewind`],
//! which refuses up front what the worker could not do.

use crate::error::{FailureDetails, StoreError};
use crate::history::{Event, HistoryEvent, RuntimeStatus};
use crate::ids::InstanceId;
use crate::replay::rewind::{self, RewindPlan};
use crate::storage::{InstanceRecord, Store};

/// A rewind the stored state allows: what to undo and re-drive, and what to do about each
/// sub-orchestration the failed execution has no result for.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) plan: RewindPlan,
    pub(crate) children: Vec<(u64, InstanceId, ChildAction)>,
}

/// Decides whether `record` (with its current `history`) can be rewound, and how.
///
/// The one decision behind both [`crate::Client::rewind`], which refuses up front what
/// cannot be done, and the worker, which decides again as it applies the request (the
/// state may have changed in between). `Ok(Err(why))` when it cannot be rewound.
pub(crate) async fn prepare(
    store: &dyn Store,
    record: &InstanceRecord,
    history: &[HistoryEvent],
) -> Result<Result<Prepared, String>, StoreError> {
    if record.status != RuntimeStatus::Failed {
        return Ok(Err(format!(
            "it is {}; only a Failed instance can be rewound",
            record.status.as_str()
        )));
    }
    let plan = match rewind::plan(history) {
        Ok(p) => p,
        Err(why) => return Ok(Err(why)),
    };
    let mut children = Vec::with_capacity(plan.children.len());
    for (seq, child) in &plan.children {
        let undone = plan.seqs.contains(seq);
        match child_action(store, record, *seq, child, undone).await? {
            ChildAction::KeepFailure(why) => return Ok(Err(why)),
            action => children.push((*seq, child.clone(), action)),
        }
    }
    Ok(Ok(Prepared { plan, children }))
}

/// What a rewind does about one sub-orchestration the failed execution started and has no
/// result for.
#[derive(Debug)]
pub(crate) enum ChildAction {
    /// The child failed and can be rewound: send it a rewind request; its result follows.
    Rewind,
    /// Deliver this result to the parent (the child finished after the parent failed, or
    /// cannot be waited for).
    Report(Event),
    /// The child is still running: its result will reach the parent.
    Wait,
    /// The child's failure cannot be undone (why): it stays in the parent's history.
    KeepFailure(String),
}

/// Decides what to do about child `child` of `parent` (created by action `seq` of
/// execution `execution`). `undone`: the rewind undoes the child's recorded failure.
async fn child_action(
    store: &dyn Store,
    parent: &InstanceRecord,
    seq: u64,
    child: &InstanceId,
    undone: bool,
) -> Result<ChildAction, StoreError> {
    let failed = |error_type: &str, message: String| {
        ChildAction::Report(Event::SubOrchestrationFailed {
            seq,
            failure: FailureDetails::new(error_type, message).non_retriable(),
        })
    };
    let record = store.read_instance(child).await?;
    let ours = record
        .as_ref()
        .is_some_and(|r| r.is_child_of(&parent.child_ref(seq)));
    let record = match record {
        Some(r) if ours => r,
        Some(_) => {
            let why = format!("instance `{child}` is not this orchestration's sub-orchestration");
            return Ok(if undone {
                ChildAction::KeepFailure(why)
            } else {
                failed("SubOrchestrationNotFound", why)
            });
        }
        None => {
            let why = format!("sub-orchestration `{child}` no longer exists (purged?)");
            return Ok(if undone {
                ChildAction::KeepFailure(why)
            } else {
                failed("SubOrchestrationNotFound", why)
            });
        }
    };
    Ok(match record.status {
        RuntimeStatus::Failed => {
            let history = store.read_history(child).await?;
            match rewind::plan(&history) {
                Ok(_) => ChildAction::Rewind,
                Err(why) if undone => {
                    ChildAction::KeepFailure(format!("sub-orchestration `{child}`: {why}"))
                }
                Err(_) => ChildAction::Report(Event::SubOrchestrationFailed {
                    seq,
                    failure: record.failure.unwrap_or_else(|| {
                        FailureDetails::new(
                            "SubOrchestrationFailed",
                            "the sub-orchestration failed",
                        )
                    }),
                }),
            }
        }
        RuntimeStatus::Completed => ChildAction::Report(Event::SubOrchestrationCompleted {
            seq,
            result: record.output.unwrap_or_else(|| "null".to_owned()),
        }),
        RuntimeStatus::Terminated if undone => {
            ChildAction::KeepFailure(format!("sub-orchestration `{child}` was terminated"))
        }
        RuntimeStatus::Terminated => failed(
            "Terminated",
            format!("sub-orchestration `{child}` was terminated"),
        ),
        _ => ChildAction::Wait,
    })
}
