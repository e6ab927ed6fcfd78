//! Instance leases kept by eager commits: an episode whose commit leases one of its new
//! activity tasks to this worker ([`activity::Eager`](super::activity::Eager)) also keeps
//! its instance leased ([`EpisodeCommit::keep_lease`], where the store
//! [keeps leases](crate::storage::Store::keeps_lease_for_eager)), and the episode that takes
//! the task's result runs under that lease — without leasing the instance again, a round
//! trip per step of a chain on a store that leases over the network (`PostgresStore`).
//!
//! A kept lease holds the instance's other messages back (an event raised meanwhile waits
//! for it), so it is kept only briefly:
//! - the store keeps none while the instance has messages due, so a message that arrives
//!   during a chain of quick steps waits for one step at most;
//! - it is given back ([`Store::release_kept_lease`], not a durable write) once the task
//!   has run for a tenth of a second without a result ([`hold_until`]), and when the
//!   result is not handed to an episode on the task that ran it (written to the store
//!   instead, queued behind other results, or the worker stopping);
//! - it is not asked for a transactional activity, whose result is written to the store,
//!   nor while results wait for the dispatcher (a saturated worker: its results wait for
//!   episode slots, and a kept lease would hold the instance's messages back as long).
//!
//! Should every episode slot be taken all the same when the result arrives, the dispatcher
//! runs the episode under the kept lease when a slot frees, or gives it back if it waited
//! half a lease ([`take`]). (Giving it back at once cost a write per step of a saturated
//! worker: W2 on `PostgresStore` ran 4–11% slower so.)
//!
//! A worker that crashes leaves it to run out, as it leaves the lease of an episode it was
//! running.
//!
//! [`Store::release_kept_lease`]: crate::storage::Store::release_kept_lease

use std::collections::HashMap;
use std::time::Duration;

use super::Inner;
use crate::error::StoreError;
use crate::ids::{InstanceId, Timestamp};
use crate::storage::{EpisodeCommit, InstanceRecord, OrchestrationWorkItem};

/// The longest a kept lease waits for its eager task's result before it is given back.
const HOLD: Duration = Duration::from_millis(100);

/// The instances whose leases this worker's commits kept.
#[derive(Default)]
pub(crate) struct KeptLeases {
    items: HashMap<InstanceId, Kept>,
    /// Numbers the leases kept, so that a hold that runs out gives back its own lease and
    /// not one a later commit kept.
    next_ticket: u64,
    /// The dispatcher stopped: a lease kept from now on is given back at once.
    closed: bool,
}

/// A kept lease: the work item the instance's next episode starts from, when the lease
/// began, and its ticket.
struct Kept {
    item: OrchestrationWorkItem,
    leased_at: Timestamp,
    ticket: u64,
}

impl KeptLeases {
    /// `true` if the lease of `id` is kept.
    pub(crate) fn contains(&self, id: &InstanceId) -> bool {
        self.items.contains_key(id)
    }
}

/// The work item the next episode of `instance` starts from under a lease its commit kept:
/// the record as `commit` leaves it, the history with its events, and no messages (the
/// store keeps the lease only when none are due; those that arrive meanwhile wait for the
/// episode after, which the release of the lease makes due). `history_len` is the length
/// before `commit`.
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

/// Records the lease kept on `item`'s instance from `leased_at` and answers its ticket;
/// when the dispatcher has stopped, gives it back instead and answers `None`.
pub(crate) async fn keep(
    inner: &Inner,
    item: OrchestrationWorkItem,
    leased_at: Timestamp,
) -> Option<u64> {
    let refused = {
        let mut kept = inner.kept();
        if kept.closed {
            Some(item)
        } else {
            kept.next_ticket += 1;
            let ticket = kept.next_ticket;
            let id = item.instance.instance_id.clone();
            kept.items.insert(
                id,
                Kept {
                    item,
                    leased_at,
                    ticket,
                },
            );
            return Some(ticket);
        }
    };
    if let Some(item) = refused {
        give_back(inner, &item).await;
    }
    None
}

/// Takes the lease kept on `id`, if any, for an episode to run under: its work item and
/// when the lease began. One kept for half a lease or more (its episode waited that long
/// for a slot) is given back instead, as [`start_created`] gives back a created one: the
/// episode leases the instance afresh.
///
/// [`start_created`]: super::episode
pub(crate) async fn take(
    inner: &Inner,
    id: &InstanceId,
) -> Option<(OrchestrationWorkItem, Timestamp)> {
    let kept = inner.kept().items.remove(id)?;
    if inner.clock.now() >= kept.leased_at + inner.orchestration_lease / 2 {
        give_back(inner, &kept.item).await;
        return None;
    }
    Some((kept.item, kept.leased_at))
}

/// How long a lease kept from `leased_at` waits for its eager task's result.
pub(crate) fn hold_until(inner: &Inner, leased_at: Timestamp) -> Timestamp {
    leased_at + HOLD.min(inner.orchestration_lease / 4)
}

/// Gives back the lease kept under `ticket` on `id`, if it still is: any worker may take
/// the instance at once.
pub(crate) async fn release(inner: &Inner, id: &InstanceId, ticket: u64) {
    let taken = {
        let mut kept = inner.kept();
        match kept.items.get(id) {
            Some(k) if k.ticket == ticket => kept.items.remove(id),
            _ => None,
        }
    };
    if let Some(k) = taken {
        tracing::debug!(instance = %id, "kept lease given back");
        give_back(inner, &k.item).await;
    }
}

/// Gives back every kept lease and refuses new ones: the dispatcher stopped.
pub(crate) async fn release_all(inner: &Inner) {
    let items: Vec<_> = {
        let mut kept = inner.kept();
        kept.closed = true;
        kept.items.drain().map(|(_, k)| k.item).collect()
    };
    for item in items {
        give_back(inner, &item).await;
    }
}

/// Ends a kept lease without an episode ([`Store::release_kept_lease`]); an aborted worker
/// leaves it to run out.
///
/// [`Store::release_kept_lease`]: crate::storage::Store::release_kept_lease
async fn give_back(inner: &Inner, item: &OrchestrationWorkItem) {
    if inner.aborted.load(std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    let id = &item.instance.instance_id;
    match inner.store.release_kept_lease(id, item.lock).await {
        Ok(()) | Err(StoreError::LockLost(_)) => {}
        Err(e) => {
            tracing::warn!(instance = %id, error = %e, "giving back a kept lease failed; the instance is taken once the lease runs out");
        }
    }
}
