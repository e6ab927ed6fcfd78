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

/// The token [`Handoffs`] holds for an instance claimed to run its next episode on the
/// claiming task ([`Handoffs::claim`]) while its lease is being taken; stores never hand out
/// this token either.
const CLAIMED: u64 = u64::MAX - 1;

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

    /// `true` if no instance waits for the dispatcher to run its episode.
    pub(crate) fn none_waiting(&self) -> bool {
        self.queued.is_empty()
    }

    /// Up to `max` instances with results to deliver and no running episode.
    pub(crate) fn next_ready(&mut self, max: usize) -> Vec<InstanceId> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(id) = self.ready.pop_front() else {
                break;
            };
            // Not queued any more: claimed by a task that runs its episode itself.
            if !self.queued.remove(&id) {
                continue;
            }
            if !self.running.contains_key(&id) && self.pending.contains_key(&id) {
                out.push(id);
            }
        }
        out
    }

    /// Claims `id`, queued with results to deliver, for the calling task to lease and run its
    /// episode itself instead of the dispatcher; `false` if it is not queued (the dispatcher
    /// took it, or another task claimed it). Results for it wait as for a running episode
    /// until [`begin`](Self::begin) takes them or [`unclaim`](Self::unclaim) gives them up.
    /// Refused too while other instances wait: the dispatcher leases those together with
    /// `id` in one store call (a round trip each, on a database), which a chain of
    /// single-instance leases would undo under load.
    pub(crate) fn claim(&mut self, id: &InstanceId) -> bool {
        if self.queued.len() > 1 || !self.queued.remove(id) {
            return false;
        }
        if self.running.contains_key(id) || !self.pending.contains_key(id) {
            // As `next_ready` does: an episode runs on it (its end queues the results that
            // arrive meanwhile), or nothing is left to deliver.
            return false;
        }
        // Its entry in `ready` stays behind and is skipped (`next_ready`).
        self.running.insert(id.clone(), CLAIMED);
        true
    }

    /// The claimed `id` could not be leased: its results are returned, to be written to the
    /// store instead (someone else holds the instance).
    pub(crate) fn unclaim(&mut self, id: &InstanceId) -> Vec<HandedOff> {
        if self.running.get(id) == Some(&CLAIMED) {
            self.running.remove(id);
            return self.take(id);
        }
        Vec::new()
    }

    /// A claim of `id` was abandoned before its episode began (the claiming task was
    /// dropped): its results are queued for the dispatcher again (`true`: wake it).
    pub(crate) fn requeue_claimed(&mut self, id: &InstanceId) -> bool {
        if self.running.get(id) != Some(&CLAIMED) {
            return false;
        }
        self.running.remove(id);
        self.pending.contains_key(id) && self.enqueue(id.clone())
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
    /// meanwhile are queued (`true`: run it or wake the dispatcher); when it failed they are returned,
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::history::Event;
    use crate::ids::Timestamp;
    use crate::storage::{ActivityTask, ActivityWorkItem};
    use crate::worker::lease::ActivityLeases;

    fn result(leases: &Arc<ActivityLeases>, instance: &InstanceId, task: u64) -> HandedOff {
        let item = ActivityWorkItem {
            id: task,
            task: ActivityTask::new(instance.clone(), 1, task, "a", "null".into()),
            lock: LockToken(task),
        };
        let t0 = Timestamp::from_unix_millis(1_000_000);
        HandedOff {
            task,
            lock: item.lock,
            message: Message::new(
                Event::TaskCompleted {
                    seq: task,
                    result: "null".into(),
                },
                Some(1),
                t0,
            ),
            lease: leases.hold(&item, t0, Duration::from_secs(30)),
        }
    }

    /// Leases to hold results with, instance `a`, and no hand-offs yet.
    fn fresh() -> (Arc<ActivityLeases>, InstanceId, Handoffs) {
        let leases = Arc::new(ActivityLeases::default());
        (leases, InstanceId::new("a").unwrap(), Handoffs::default())
    }

    /// [`fresh`], with `a` claimed by the task that handed result 1 off and result 2
    /// arrived since (it does not queue `a` again).
    fn claimed_with_two_results() -> (Arc<ActivityLeases>, InstanceId, Handoffs) {
        let (leases, a, mut h) = fresh();
        assert!(h.push(a.clone(), result(&leases, &a, 1)));
        assert!(h.claim(&a));
        assert!(!h.push(a.clone(), result(&leases, &a, 2)));
        (leases, a, h)
    }

    #[test]
    fn a_claimed_instance_is_skipped_by_the_dispatcher_and_keeps_its_results() {
        let leases = Arc::new(ActivityLeases::default());
        let (a, b) = (InstanceId::new("a").unwrap(), InstanceId::new("b").unwrap());
        let mut h = Handoffs::default();
        assert!(h.push(a.clone(), result(&leases, &a, 1)));
        assert!(h.push(b.clone(), result(&leases, &b, 2)));
        // Two wait: the dispatcher leases them together, so neither is claimed.
        assert!(!h.claim(&a));
        assert_eq!(h.next_ready(1), vec![a.clone()]);
        let taken: Vec<u64> = h.begin(&a, LockToken(6)).iter().map(|r| r.task).collect();
        assert_eq!(taken, vec![1]);
        assert!(!h.end(&a, LockToken(6), true).0);
        assert_eq!(h.next_ready(10), vec![b.clone()]);
        // Alone in the queue, a is claimed (once only), and the dispatcher no longer sees it.
        assert!(h.push(a.clone(), result(&leases, &a, 3)));
        assert!(h.claim(&a));
        assert!(!h.claim(&a));
        assert!(h.next_ready(10).is_empty());
        // A result arriving while the claimer leases the instance waits for its episode.
        assert!(!h.push(a.clone(), result(&leases, &a, 4)));
        let taken: Vec<u64> = h.begin(&a, LockToken(7)).iter().map(|r| r.task).collect();
        assert_eq!(taken, vec![3, 4]);
        // Only b's result is left waiting (for the dispatcher's episode).
        assert_eq!(h.waiting(), 1);
        // The episode ends with a new result queued: claimable again.
        assert!(!h.push(a.clone(), result(&leases, &a, 5)));
        let (queued, late) = h.end(&a, LockToken(7), true);
        assert!(queued && late.is_empty());
        assert!(h.claim(&a));
        assert!(h.next_ready(10).is_empty());
        // Queued again after a claimed episode: the dispatcher gets it once, not once per
        // entry the claims left behind.
        h.begin(&a, LockToken(8));
        assert!(!h.push(a.clone(), result(&leases, &a, 6)));
        assert!(h.end(&a, LockToken(8), true).0);
        assert_eq!(h.next_ready(10), vec![a]);
    }

    #[test]
    fn an_abandoned_claim_queues_the_instance_for_the_dispatcher_again() {
        let (_leases, a, mut h) = claimed_with_two_results();
        assert!(h.next_ready(10).is_empty());
        // The claiming task was dropped while it leased the instance.
        assert!(h.requeue_claimed(&a));
        assert_eq!(h.next_ready(10), vec![a.clone()]);
        let taken: Vec<u64> = h.begin(&a, LockToken(9)).iter().map(|r| r.task).collect();
        assert_eq!(taken, vec![1, 2]);
        // Only a claim is given back: a running episode is left alone.
        assert!(!h.requeue_claimed(&a));
    }

    #[test]
    fn an_unclaimed_instance_gives_its_results_back() {
        let (leases, a, mut h) = claimed_with_two_results();
        let back: Vec<u64> = h.unclaim(&a).iter().map(|r| r.task).collect();
        assert_eq!(back, vec![1, 2]);
        assert_eq!(h.waiting(), 0);
        // Not claimed any more: a new result queues it for the dispatcher again.
        assert!(h.unclaim(&a).is_empty());
        assert!(h.push(a.clone(), result(&leases, &a, 5)));
        assert_eq!(h.next_ready(10), vec![a]);
    }

    /// A claim refused because an episode already runs on the instance (the
    /// dispatcher leased it from the store between the push and the claim) must not leave
    /// the instance marked queued: the running episode's end must queue the results that
    /// arrived meanwhile (and so get them run or the dispatcher woken).
    #[test]
    fn a_claim_refused_for_a_running_instance_lets_its_end_queue_it() {
        let (leases, a, mut h) = fresh();
        // An activity hands its result off: queued, its task will claim it.
        assert!(h.push(a.clone(), result(&leases, &a, 1)));
        // The dispatcher leases `a` from the store first (it had inbox messages).
        assert_eq!(h.begin(&a, LockToken(7)).len(), 1);
        // The activity's task tries to chain: refused, an episode runs.
        assert!(!h.claim(&a));
        // A second result arrives during that episode.
        assert!(!h.push(a.clone(), result(&leases, &a, 2)));
        // The episode ends: the second result must be queued (run or dispatcher woken).
        let (queued, late) = h.end(&a, LockToken(7), true);
        assert!(late.is_empty());
        assert!(queued, "result 2 waits with nobody told to run it");
    }

    /// The same with a first episode run by a starting client's worker.
    #[test]
    fn a_claim_refused_during_a_first_episode_lets_its_end_queue_it() {
        let (leases, a, mut h) = fresh();
        assert!(h.push(a.clone(), result(&leases, &a, 1)));
        assert!(h.begin_first(&a));
        assert!(!h.claim(&a));
        let (queued, _) = h.end(&a, FIRST_EPISODE, true);
        assert!(queued, "result 1 waits with nobody told to run it");
    }
}
