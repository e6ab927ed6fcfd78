//! Id reuse: what [`Store::create_instance`](super::Store::create_instance) does when the
//! id is taken, and the teardown of a running execution that
//! [`IdReusePolicy::TerminateRunning`] replaces.
//!
//! The teardown is the same for every store and touches no storage: a store reads the
//! instances of the replaced execution's tree one at a time, hands them to [`Teardown`],
//! and writes back what it answers, all in the transaction that creates the new instance.
//! The tree ends as a terminate would end it, without running any code: every running
//! descendant — under running and finished children alike — is marked `Terminated` in
//! place, the entity locks the terminated executions hold or are being granted are
//! released, and the replaced instance's own parent, if it has one, learns that its child
//! was terminated. Running descendants are terminated in the same step rather than by a
//! message, so the new execution can start sub-orchestrations under the same derived ids
//! at once.

use std::collections::HashSet;

use super::{IdReusePolicy, InstanceRecord, Message};
use crate::error::FailureDetails;
use crate::history::{Event, HistoryEvent, ParentRef, RuntimeStatus};
use crate::ids::{InstanceId, Timestamp};

/// What to do with a taken id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reuse {
    /// Create nothing; answer with the existing instance.
    Existing,
    /// Refuse: `InstanceAlreadyExists`.
    Reject,
    /// Replace the finished instance.
    Replace,
    /// Tear the running execution's tree down ([`Teardown`]), then replace it.
    TerminateAndReplace,
}

/// The decision every store makes when `policy` meets an instance that is `finished` or not.
pub(crate) fn decide(policy: IdReusePolicy, finished: bool) -> Reuse {
    match (policy, finished) {
        (IdReusePolicy::RejectExisting, _) | (IdReusePolicy::ReplaceFinished, false) => {
            Reuse::Reject
        }
        (IdReusePolicy::DedupeRunning, false) => Reuse::Existing,
        (IdReusePolicy::TerminateRunning, false) => Reuse::TerminateAndReplace,
        (_, true) => Reuse::Replace,
    }
}

/// Most instances one teardown visits (it runs inside one store transaction).
const MAX_TEARDOWN: usize = 10_000;

/// The reason recorded for executions that a start under the same id replaced.
pub(crate) const REPLACED: &str =
    "replaced by a new start under the same instance id (id-reuse policy TerminateRunning)";

/// The sub-orchestrations a history started: `(seq, instance id)`, in action order.
pub(crate) fn sub_orchestrations(history: &[HistoryEvent]) -> Vec<(u64, InstanceId)> {
    history
        .iter()
        .filter_map(|e| match &e.event {
            Event::SubOrchestrationCreated {
                seq, instance_id, ..
            } => Some((*seq, instance_id.clone())),
            _ => None,
        })
        .collect()
}

/// Entities whose locks this history holds: granted and not released since.
pub(crate) fn held_locks(history: &[HistoryEvent]) -> Vec<InstanceId> {
    let mut held: Vec<InstanceId> = Vec::new();
    for e in history {
        match &e.event {
            Event::EntityLockGranted { entities, .. } => held.extend(entities.iter().cloned()),
            Event::EntityUnlockSent { entities, .. } => held.retain(|h| !entities.contains(h)),
            _ => {}
        }
    }
    held
}

/// Walks the tree of a running execution being replaced; see the module docs.
///
/// ```text
/// let mut t = Teardown::new(&old_record, &old_history, old_inbox_events, now);
/// while let Some((id, parent)) = t.next() {
///     let record = read(id);
///     if record.is_some_and(|r| r.is_child_of(&parent)) {
///         if let Some((terminated, events)) = t.visit(record, &history(id), inbox_events(id)) {
///             write the record, append the events, clear the inbox, drop the lease
///         }
///     }
/// }
/// enqueue t.messages (to instances that exist; finished ones too)
/// ```
#[derive(Debug)]
pub(crate) struct Teardown {
    now: Timestamp,
    /// Unlocks for entities and the replaced instance's parent's notification.
    pub(crate) messages: Vec<(InstanceId, Message)>,
    pending: Vec<(InstanceId, ParentRef)>,
    seen: HashSet<InstanceId>,
}

impl Teardown {
    /// Starts with the replaced execution: `root` with its history and the events in its
    /// inbox (the store drops the inbox with the instance).
    pub(crate) fn new<'a>(
        root: &InstanceRecord,
        history: &[HistoryEvent],
        inbox: impl IntoIterator<Item = &'a Event>,
        now: Timestamp,
    ) -> Self {
        let mut t = Self {
            now,
            messages: Vec::new(),
            pending: Vec::new(),
            seen: HashSet::from([root.instance_id.clone()]),
        };
        t.release(root, history, inbox);
        if let Some(parent) = &root.parent {
            // As a terminated execution tells its parent (see the replay core).
            let failure = FailureDetails::new("Terminated", format!("terminated: {REPLACED}"));
            t.messages.push(Message::child_failed(parent, failure, now));
        }
        t.push_children(root, history);
        t
    }

    /// The next instance to read: its id and the parent reference it must carry.
    pub(crate) fn next(&mut self) -> Option<(InstanceId, ParentRef)> {
        while let Some((id, parent)) = self.pending.pop() {
            if self.seen.len() >= MAX_TEARDOWN {
                // The walk runs inside the store's write transaction: a huge tree must not
                // stall every other writer. What is left keeps running; its results reach
                // an execution that no longer exists and are dropped.
                tracing::warn!(root = %parent.instance_id, left = self.pending.len() + 1,
                    "replacing an instance: teardown stopped after {MAX_TEARDOWN} instances");
                self.pending.clear();
                return None;
            }
            if self.seen.insert(id.clone()) {
                return Some((id, parent));
            }
        }
        None
    }

    /// Visits a descendant that [`next`](Self::next) gave and that still is the child it was
    /// created as ([`InstanceRecord::is_child_of`]): its children are visited next.
    /// A running one is terminated: the answer is its new record and the events to append
    /// to its history; the store also clears its inbox (entity locks granted in it are
    /// released here) and drops any lease on it, so a worker in the middle of an episode
    /// loses the commit.
    pub(crate) fn visit<'a>(
        &mut self,
        record: InstanceRecord,
        history: &[HistoryEvent],
        inbox: impl IntoIterator<Item = &'a Event>,
    ) -> Option<(InstanceRecord, Vec<HistoryEvent>)> {
        self.push_children(&record, history);
        if record.status.is_terminal() {
            return None;
        }
        self.release(&record, history, inbox);
        let now = self.now;
        let output = serde_json::Value::String(REPLACED.to_owned()).to_string();
        let next = history.last().map_or(0, |e| e.index + 1);
        let events = vec![
            HistoryEvent {
                index: next,
                timestamp: now,
                event: Event::ExecutionTerminated {
                    reason: REPLACED.to_owned(),
                    child_of: None,
                },
            },
            HistoryEvent {
                index: next + 1,
                timestamp: now,
                event: Event::ExecutionCompleted {
                    status: RuntimeStatus::Terminated,
                    output: Some(output.clone()),
                    failure: None,
                },
            },
        ];
        let mut r = record;
        r.status = RuntimeStatus::Terminated;
        r.output = Some(output);
        r.failure = None;
        r.last_updated_at = now;
        r.last_error = None;
        Some((r, events))
    }

    fn push_children(&mut self, parent: &InstanceRecord, history: &[HistoryEvent]) {
        for (seq, id) in sub_orchestrations(history) {
            self.pending.push((id, parent.child_ref(seq)));
        }
    }

    /// Releases the locks a terminated execution holds and those granted to it in its inbox.
    fn release<'a>(
        &mut self,
        owner: &InstanceRecord,
        history: &[HistoryEvent],
        inbox: impl IntoIterator<Item = &'a Event>,
    ) {
        let granted = inbox.into_iter().flat_map(|e| match e {
            Event::EntityLockGranted { entities, .. } => entities.clone(),
            _ => Vec::new(),
        });
        let mut entities: Vec<InstanceId> =
            held_locks(history).into_iter().chain(granted).collect();
        entities.sort();
        entities.dedup();
        for entity in entities {
            // Whichever execution of the replaced instance holds it: none of them runs on,
            // and the new execution asks for no lock before this release is delivered.
            let unlock = Event::EntityUnlock {
                owner: owner.instance_id.clone(),
                execution: None,
            };
            self.messages
                .push((entity, Message::new(unlock, None, self.now)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policies_decide_per_state() {
        use IdReusePolicy::*;
        let cases = [
            (ReplaceFinished, [Reuse::Reject, Reuse::Replace]),
            (RejectExisting, [Reuse::Reject, Reuse::Reject]),
            (DedupeRunning, [Reuse::Existing, Reuse::Replace]),
            (
                TerminateRunning,
                [Reuse::TerminateAndReplace, Reuse::Replace],
            ),
        ];
        for (policy, [running, finished]) in cases {
            assert_eq!(decide(policy, false), running, "{policy:?} running");
            assert_eq!(decide(policy, true), finished, "{policy:?} finished");
        }
    }
}
