//! Instance leases kept by eager commits: an episode whose commit leases one of its new
//! activity tasks to this worker ([`activity::Eager`](super::activity::Eager)) also keeps
//! its instance leased ([`EpisodeCommit::keep_lease`], where the store
//! [keeps leases](crate::storage::Store::keeps_lease_for_eager)), and the episode that takes
//! the task's result runs under that lease — without leasing the instance again, a round
//! trip per step of a chain on a store that leases over the network (`PostgresStore`).
//!
//! A kept lease holds the instance's other messages back (an event raised meanwhile waits
//! for the lease), so it is kept only briefly: given back once the task has run for
//! [`hold_for`] without a result, and whenever its result is not handed to an episode
//! here (written to the store instead, or the worker stopping). A worker that crashes
//! leaves it to run out, as it leaves the lease of an episode it was running.

use std::collections::HashMap;
use std::time::Duration;

use super::Inner;
use crate::ids::{InstanceId, Timestamp};
use crate::storage::{EpisodeCommit, InstanceRecord, OrchestrationWorkItem};

/// The longest a kept lease waits for its eager task's result before it is given back.
const HOLD: Duration = Duration::from_millis(100);

/// The instances whose leases this worker's commits kept, each with the work item its next
/// episode starts from and the time the lease began.
#[derive(Default)]
pub(crate) struct KeptLeases {
    items: HashMap<InstanceId, (OrchestrationWorkItem, Timestamp)>,
    /// The dispatcher stopped: a lease kept from now on is given back at once.
    closed: bool,
}

impl KeptLeases {
    /// The kept lease of `id`, for an episode to run under; `None` if none is kept.
    pub(crate) fn take(&mut self, id: &InstanceId) -> Option<(OrchestrationWorkItem, Timestamp)> {
        self.items.remove(id)
    }

    /// `true` if the lease of `id` is kept.
    pub(crate) fn contains(&self, id: &InstanceId) -> bool {
        self.items.contains_key(id)
    }
}

/// The work item the next episode of `instance` starts from under a lease its commit kept:
/// the record as `commit` leaves it, the history with its events, and no messages (those
/// that arrive meanwhile wait in the store for the episode after, which the commit's
/// release of the lease makes due). `history_len` is the length before `commit`.
pub(crate) fn item_after(
    instance: &InstanceRecord,
    history_len: u64,
    commit: &EpisodeCommit,
) -> OrchestrationWorkItem {
    let mut record = instance.clone();
    record.apply_episode(commit);
    OrchestrationWorkItem {
        instance: record,
        history_len: history_len + commit.new_events.len() as u64,
        messages: Vec::new(),
        lock: commit.lock,
    }
}

/// Records the lease kept on `item`'s instance from `leased_at`; when the dispatcher has
/// stopped, gives it back instead and answers `false`.
pub(crate) async fn keep(inner: &Inner, item: OrchestrationWorkItem, leased_at: Timestamp) -> bool {
    let refused = {
        let mut kept = inner.kept();
        if kept.closed {
            Some(item)
        } else {
            kept.items
                .insert(item.instance.instance_id.clone(), (item, leased_at));
            None
        }
    };
    match refused {
        None => true,
        Some(item) => {
            super::episode::give_back(inner, &item).await;
            false
        }
    }
}

/// How long a lease kept from `leased_at` waits for its eager task's result.
pub(crate) fn hold_until(inner: &Inner, leased_at: Timestamp) -> Timestamp {
    leased_at + hold_for(inner)
}

/// [`HOLD`], or a quarter of the orchestration lease when that is shorter.
pub(crate) fn hold_for(inner: &Inner) -> Duration {
    HOLD.min(inner.orchestration_lease / 4)
}

/// Gives back the lease kept on `id`, if one is: any worker may take the instance at once.
pub(crate) async fn release(inner: &Inner, id: &InstanceId) {
    let taken = inner.kept().take(id);
    if let Some((item, _)) = taken {
        tracing::debug!(instance = %id, "kept lease given back");
        super::episode::give_back(inner, &item).await;
    }
}

/// Gives back every kept lease and refuses new ones: the dispatcher stopped.
pub(crate) async fn release_all(inner: &Inner) {
    let items: Vec<_> = {
        let mut kept = inner.kept();
        kept.closed = true;
        kept.items.drain().map(|(_, (item, _))| item).collect()
    };
    for item in items {
        super::episode::give_back(inner, &item).await;
    }
}
