//! The tree of sub-orchestrations, read from stored histories: terminate reaches every
//! running descendant, through finished ones.
//!
//! The replay core terminates the sub-orchestrations a terminated execution still waits
//! for; a child that finished can still have running descendants of its own (it did not
//! await them, or a `select` branch won). Those are found here, from the histories of the
//! finished children, which stay readable until purged. Used by the worker and the client.

use std::collections::HashSet;

use crate::error::StoreError;
use crate::history::{Event, HistoryEvent};
use crate::ids::InstanceId;
use crate::storage::replace::sub_orchestrations;
use crate::storage::{InstanceRecord, Store};

/// Upper bound on the instances one walk reads, so a corrupt or cyclic tree cannot keep a
/// worker busy forever.
const MAX_WALK: usize = 100_000;

/// `true` unless `event` is a parent's terminate meant for another instance than `record`
/// (a child whose id `record` took over since): such a terminate is dropped.
pub(crate) fn is_meant_for(event: &Event, record: &InstanceRecord) -> bool {
    match event {
        Event::ExecutionTerminated {
            child_of: Some(p), ..
        } => record.is_child_of(p),
        _ => true,
    }
}

/// The children of `parent` (whose current history is `history`) that still exist and are
/// still its children, with their records.
pub(crate) async fn children(
    store: &dyn Store,
    parent: &InstanceRecord,
    history: &[HistoryEvent],
) -> Result<Vec<InstanceRecord>, StoreError> {
    let mut out = Vec::new();
    for (seq, id) in sub_orchestrations(history) {
        if let Some(r) = store.read_instance(&id).await?
            && r.is_child_of(&parent.child_ref(seq))
        {
            out.push(r);
        }
    }
    Ok(out)
}

/// The running descendants of `root` that a terminate of `root` must reach itself: its
/// running children, and the running descendants of its finished children, recursively.
/// A running descendant is not walked into: terminating it cascades in turn. `history` is
/// `root`'s current history.
pub(crate) async fn running_descendants(
    store: &dyn Store,
    root: &InstanceRecord,
    history: &[HistoryEvent],
) -> Result<Vec<InstanceRecord>, StoreError> {
    let mut running = Vec::new();
    let mut seen: HashSet<InstanceId> = HashSet::from([root.instance_id.clone()]);
    let mut finished = vec![(root.clone(), history.to_vec())];
    while let Some((parent, history)) = finished.pop() {
        for child in children(store, &parent, &history).await? {
            if seen.len() >= MAX_WALK {
                tracing::warn!(root = %root.instance_id, "terminate cascade stopped after {MAX_WALK} instances");
                return Ok(running);
            }
            if !seen.insert(child.instance_id.clone()) {
                continue;
            }
            if child.status.is_terminal() {
                let h = store.read_history(&child.instance_id).await?;
                finished.push((child, h));
            } else {
                running.push(child);
            }
        }
    }
    Ok(running)
}
