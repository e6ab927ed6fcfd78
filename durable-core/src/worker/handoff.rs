//! In-process activity results: an activity that completes in this worker hands its result to
//! the orchestration dispatcher in memory, and the episode that consumes it removes the
//! activity task in its own commit ([`EpisodeCommit::completed_activities`]). One durable
//! write per step instead of two.
//!
//! Safety: until that commit the task stays queued and leased in the store, so a crash before
//! it runs the activity again (activities are at-least-once) and nothing acknowledged is lost.
//! Each [`HandedOff`] carries the task's lease, which the worker renews ([`lease`]) for as
//! long as the result is held — waiting for an episode slot, or inside an episode waiting
//! for its commit — so a result that waits longer than a lease is not taken over and run
//! again by another worker. Results that cannot be delivered this way — the
//! instance is locked by someone else, its episode failed, the worker is shutting down — are
//! written with [`Store::complete_activity`](crate::storage::Store::complete_activity) as
//! before.
//!
//! [`EpisodeCommit::completed_activities`]: crate::storage::EpisodeCommit::completed_activities
//! [`lease`]: super::lease

use std::collections::{HashMap, HashSet, VecDeque};

use super::Inner;
use super::lease::LeaseGuard;
use crate::ids::InstanceId;
use crate::storage::{LockToken, Message};

/// The lease token a first episode run by the starting client's worker holds in
/// [`Handoffs`]: the instance is not stored yet, so no store lease exists; stores never
/// hand out this token.
pub(crate) const FIRST_EPISODE: LockToken = LockToken(u64::MAX);

/// One activity result held in memory.
#[derive(Debug)]
pub(crate) struct HandedOff {
    /// The store's id of the activity task.
    pub(crate) task: u64,
    /// The activity lease.
    pub(crate) lock: LockToken,
    /// The `TaskCompleted` / `TaskFailed` message.
    pub(crate) message: Message,
    /// The activity lease, renewed for as long as the result is held: dropping the result
    /// (committed, written through or discarded) releases it.
    pub(crate) lease: LeaseGuard,
}

/// Results waiting for their orchestrations, and which instances run an episode here.
#[derive(Debug, Default)]
pub(crate) struct Handoffs {
    pending: HashMap<InstanceId, Vec<HandedOff>>,
    /// Instances with an episode running in this worker, with its lease token.
    running: HashMap<InstanceId, u64>,
    /// Instances with results and no running episode, oldest first (no duplicates).
    ready: VecDeque<InstanceId>,
    queued: HashSet<InstanceId>,
}

impl Handoffs {
    /// Queues a result; `true` if the dispatcher should be woken.
    pub(crate) fn push(&mut self, instance: InstanceId, result: HandedOff) -> bool {
        self.pending
            .entry(instance.clone())
            .or_default()
            .push(result);
        self.enqueue(instance)
    }

    fn enqueue(&mut self, instance: InstanceId) -> bool {
        if self.running.contains_key(&instance) || self.queued.contains(&instance) {
            return false;
        }
        self.queued.insert(instance.clone());
        self.ready.push_back(instance);
        true
    }

    /// Up to `max` instances with results to deliver and no running episode.
    pub(crate) fn next_ready(&mut self, max: usize) -> Vec<InstanceId> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(id) = self.ready.pop_front() else {
                break;
            };
            self.queued.remove(&id);
            if !self.running.contains_key(&id) && self.pending.contains_key(&id) {
                out.push(id);
            }
        }
        out
    }

    /// An episode starts on `id` under `lock`: it takes the results waiting for it.
    pub(crate) fn begin(&mut self, id: &InstanceId, lock: LockToken) -> Vec<HandedOff> {
        self.running.insert(id.clone(), lock.0);
        self.pending.remove(id).unwrap_or_default()
    }

    /// A first episode ([`FIRST_EPISODE`]) starts on the new instance `id`, so that results
    /// for it wait until that episode ends; `false` when an episode runs on `id` already
    /// (the id is taken: no first episode runs).
    pub(crate) fn begin_first(&mut self, id: &InstanceId) -> bool {
        if self.running.contains_key(id) {
            return false;
        }
        self.running.insert(id.clone(), FIRST_EPISODE.0);
        true
    }

    /// The episode on `id` under `lock` ended. When it succeeded, results that arrived
    /// meanwhile are queued (`true`: wake the dispatcher); when it failed they are returned,
    /// to be written to the store instead (so a stuck instance keeps its retry back-off).
    pub(crate) fn end(
        &mut self,
        id: &InstanceId,
        lock: LockToken,
        succeeded: bool,
    ) -> (bool, Vec<HandedOff>) {
        if self.running.get(id) != Some(&lock.0) {
            return (false, Vec::new());
        }
        self.running.remove(id);
        if !succeeded {
            return (false, self.take(id));
        }
        let wake = self.pending.contains_key(id) && self.enqueue(id.clone());
        (wake, Vec::new())
    }

    /// How many results wait for an episode.
    pub(crate) fn waiting(&self) -> usize {
        self.pending.values().map(Vec::len).sum()
    }

    /// Takes the result of activity task `task` back if it is still waiting for an episode
    /// of `id` (not if an episode has it).
    pub(crate) fn withdraw(&mut self, id: &InstanceId, task: u64) -> Option<HandedOff> {
        let waiting = self.pending.get_mut(id)?;
        let at = waiting.iter().position(|h| h.task == task)?;
        let result = waiting.remove(at);
        if waiting.is_empty() {
            self.pending.remove(id);
        }
        Some(result)
    }

    /// Takes the results waiting for `id`.
    pub(crate) fn take(&mut self, id: &InstanceId) -> Vec<HandedOff> {
        self.pending.remove(id).unwrap_or_default()
    }

    /// Takes every waiting result.
    pub(crate) fn take_all(&mut self) -> Vec<HandedOff> {
        self.ready.clear();
        self.queued.clear();
        self.pending.drain().flat_map(|(_, v)| v).collect()
    }
}

/// Writes results that cannot be delivered in memory to the store, as if there were no
/// hand-off.
pub(crate) async fn write_through(inner: &Inner, results: Vec<HandedOff>) {
    for r in results {
        // The lease stays renewed while the result waits its turn, and is released before
        // the write that ends it.
        let HandedOff {
            task,
            lock,
            message,
            lease,
        } = r;
        drop(lease);
        if let Err(e) = inner.store.complete_activity(task, lock, message).await {
            tracing::warn!(error = %e, "activity result not recorded; the task will run again");
        }
    }
}
