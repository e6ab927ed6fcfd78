//! The activity leases this worker holds, renewed together by one keeper task.
//!
//! A lease is held from the fetch of its task (or from the commit that leased the new task to
//! this worker: eager dispatch, [`activity::Eager`](super::activity::Eager)) until the
//! task's result is settled: while the
//! activity runs, and — when the result is handed to its orchestration in memory
//! ([`handoff`](super::handoff)) — until the episode that consumes it commits, or the result
//! is written through. However long a result waits for an episode slot or a slow commit, its
//! task is not taken over and run again by another worker.
//!
//! Each lease has its own period: the store's activity lease, or the task's heartbeat timeout
//! when that is shorter ([`ActivityTask::lease_for`](crate::storage::ActivityTask::lease_for)).
//! Each round renews every lease due within the next quarter of its period, in one
//! [`Store::renew_activity_locks`](crate::storage::Store::renew_activity_locks) call per
//! period (nearly always one), so the cost is one store call per round however many results
//! wait, not one per result. A lease
//! the store reports lost (this worker was cut off for longer than a lease and another worker
//! took the task over) is dropped: its running activity is cancelled and its result dropped,
//! and a result still waiting for an episode is withdrawn; the new owner's result counts. A
//! result that an episode has already taken is committed by it, and the new owner's is then
//! ignored as a duplicate: either way one result is recorded.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use super::Inner;
use crate::heartbeat::Liveness;
use crate::ids::{InstanceId, Timestamp};
use crate::storage::{ActivityWorkItem, LockToken};

/// The activity leases held by one worker.
#[derive(Debug, Default)]
pub(crate) struct ActivityLeases {
    state: Mutex<State>,
    /// Woken when a lease is added that is due before the keeper's next round.
    added: Notify,
}

#[derive(Debug, Default)]
struct State {
    held: HashMap<u64, Held>,
    /// (renewal due, task id) of every held lease.
    due: BTreeSet<(Timestamp, u64)>,
}

#[derive(Debug)]
struct Held {
    lock: LockToken,
    instance: InstanceId,
    due: Timestamp,
    /// The lease period: each renewal extends the lease this far.
    period: Duration,
    /// Set when the store reports the lease lost.
    lost: watch::Sender<bool>,
    /// For a run with a heartbeat timeout: whether it still heartbeats. A silent run's
    /// lease is no longer renewed.
    liveness: Option<Liveness>,
}

/// A lease held for as long as this guard lives; dropping it stops the renewals.
#[derive(Debug)]
pub(crate) struct LeaseGuard {
    leases: Arc<ActivityLeases>,
    id: u64,
    lock: LockToken,
    lost: watch::Receiver<bool>,
}

impl LeaseGuard {
    /// `true` once the store has reported the lease lost.
    pub(crate) fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Completes when the store reports the lease lost (never, while it is renewed).
    pub(crate) async fn lost(&mut self) {
        if self.lost.wait_for(|lost| *lost).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Renews the lease only while the run heartbeats within its timeout: a run that goes
    /// silent — even one blocking its thread, which cannot time itself out — loses its lease,
    /// and another worker takes the task over.
    pub(crate) fn watch(&self, liveness: Liveness) {
        let mut state = self.leases.state();
        if let Some(h) = state.held.get_mut(&self.id).filter(|h| h.lock == self.lock) {
            h.liveness = Some(liveness);
        }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        let mut state = self.leases.state();
        if let Some(due) = state
            .held
            .get(&self.id)
            .filter(|h| h.lock == self.lock)
            .map(|h| h.due)
        {
            state.held.remove(&self.id);
            state.due.remove(&(due, self.id));
        }
    }
}

impl ActivityLeases {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Holds the lease on `item`, granted at `leased_at` for `period`: the first renewal is
    /// due half a period after the grant (not after the activity started: the fetch and the
    /// wait for a slot may have taken a while).
    pub(crate) fn hold(
        self: &Arc<Self>,
        item: &ActivityWorkItem,
        leased_at: Timestamp,
        period: Duration,
    ) -> LeaseGuard {
        let due = leased_at + half(period);
        let (lost, lost_rx) = watch::channel(false);
        let earliest = {
            let mut state = self.state();
            state.due.insert((due, item.id));
            let old = state.held.insert(
                item.id,
                Held {
                    lock: item.lock,
                    instance: item.task.instance_id.clone(),
                    due,
                    period,
                    lost,
                    liveness: None,
                },
            );
            if let Some(old) = old {
                // The same task leased again (its old lease lapsed): the new lease replaces it.
                if old.due != due {
                    state.due.remove(&(old.due, item.id));
                }
                old.lost.send_replace(true);
            }
            state.due.first() == Some(&(due, item.id))
        };
        // The keeper sleeps until the earliest renewal due (or for the first lease): only a
        // lease due before that needs to wake it.
        if earliest {
            self.added.notify_one();
        }
        LeaseGuard {
            leases: Arc::clone(self),
            id: item.id,
            lock: item.lock,
            lost: lost_rx,
        }
    }

    /// How many leases are held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.state().held.len()
    }

    /// The earliest renewal due.
    fn next_due(&self) -> Option<Timestamp> {
        self.state().due.first().map(|(t, _)| *t)
    }

    /// The leases to renew at `now`, by period: each due within a quarter of its period
    /// (`longest` is the longest period any lease has).
    ///
    /// Leases of runs that stopped heartbeating are not renewed: they are given up (their
    /// holders told, as for a lost lease) and returned with their instances.
    #[allow(clippy::type_complexity, reason = "a private step of the keeper")]
    fn due_at(
        &self,
        now: Timestamp,
        longest: Duration,
    ) -> (
        Vec<(Duration, Vec<(u64, LockToken)>)>,
        Vec<(u64, InstanceId)>,
    ) {
        let mut state = self.state();
        let mut by_period: Vec<(Duration, Vec<(u64, LockToken)>)> = Vec::new();
        let mut silent = Vec::new();
        let horizon = now + quarter(longest);
        for (t, id) in state.due.iter().take_while(|(t, _)| *t <= horizon) {
            let Some(h) = state.held.get(id) else {
                continue;
            };
            if *t > now + quarter(h.period) {
                continue;
            }
            if h.liveness.as_ref().is_some_and(|l| l.stale_at() <= now) {
                silent.push((*t, *id));
                continue;
            }
            match by_period.iter_mut().find(|(p, _)| *p == h.period) {
                Some((_, batch)) => batch.push((*id, h.lock)),
                None => by_period.push((h.period, vec![(*id, h.lock)])),
            }
        }
        let mut given_up = Vec::new();
        for (t, id) in silent {
            state.due.remove(&(t, id));
            if let Some(h) = state.held.remove(&id) {
                h.lost.send_replace(true);
                given_up.push((id, h.instance));
            }
        }
        (by_period, given_up)
    }

    /// Records a round: `lost` leases are dropped (their holders told) and returned with
    /// their instances; the other leases of `batch` still held are next due at `next`.
    fn renewed(
        &self,
        batch: &[(u64, LockToken)],
        lost: &[u64],
        next: Timestamp,
    ) -> Vec<(u64, InstanceId)> {
        let lost: HashSet<u64> = lost.iter().copied().collect();
        let mut state = self.state();
        let mut dropped = Vec::new();
        for &(id, lock) in batch {
            let Some(h) = state.held.get_mut(&id).filter(|h| h.lock == lock) else {
                continue;
            };
            let old = h.due;
            if lost.contains(&id) {
                h.lost.send_replace(true);
                let instance = h.instance.clone();
                state.held.remove(&id);
                state.due.remove(&(old, id));
                dropped.push((id, instance));
            } else {
                h.due = next;
                state.due.remove(&(old, id));
                state.due.insert((next, id));
            }
        }
        dropped
    }
}

fn half(period: Duration) -> Duration {
    (period / 2).max(Duration::from_millis(1))
}

fn quarter(period: Duration) -> Duration {
    period / 4
}

/// Renews the worker's activity leases until it is stopped (after the worker's last results
/// are written at shutdown) or aborted.
pub(crate) async fn keep(inner: Arc<Inner>) {
    let leases = Arc::clone(&inner.activity_leases);
    let longest = inner.activity_lease;
    loop {
        if inner.aborted.load(Ordering::SeqCst) {
            // A crashed worker renews nothing: its leases expire and others take over.
            return;
        }
        let added = leases.added.notified();
        let now = inner.clock.now();
        match leases.next_due() {
            None => {
                added.await;
                continue;
            }
            Some(t) if t > now => {
                tokio::select! {
                    () = inner.clock.sleep_until(t) => {}
                    () = added => {}
                }
                continue;
            }
            Some(_) => {}
        }
        let (due, silent) = leases.due_at(now, longest);
        for (id, instance) in silent {
            tracing::warn!(%instance, task = id, "activity stopped heartbeating (it may block its thread); its lease is given up so another worker can take the task over");
        }
        for (period, batch) in due {
            renew(&inner, &batch, now, period).await;
        }
    }
}

/// Renews one batch of leases of one period.
async fn renew(inner: &Inner, batch: &[(u64, LockToken)], now: Timestamp, period: Duration) {
    let leases = &inner.activity_leases;
    let every = half(period);
    let until = now + period;
    match inner.store.renew_activity_locks(batch, until).await {
        Ok(lost) => {
            for (id, instance) in leases.renewed(batch, &lost, now + every) {
                let withdrawn = inner.handoffs().withdraw(&instance, id);
                if withdrawn.is_some() {
                    tracing::warn!(%instance, task = id, "activity lease lost while its result waited for its orchestration; the result is dropped, the new owner's counts");
                } else {
                    // A running activity is cancelled (and says so). Otherwise an episode
                    // has the result: mostly one that committed it just now (the task is
                    // gone); if not, another worker runs the activity again and its result
                    // is ignored as a duplicate of this one, which that episode commits.
                    tracing::debug!(%instance, task = id, "activity lease lost while the activity ran or an episode had its result");
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, leases = batch.len(), "activity leases not renewed; retrying");
            // Retried soon: each lease still has at least a quarter period to run.
            let retry = inner.clock.now() + (every / 4).max(Duration::from_millis(1));
            inner.clock.sleep_until(retry).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::ActivityTask;

    fn item(id: u64, lock: u64) -> ActivityWorkItem {
        ActivityWorkItem {
            id,
            task: ActivityTask::new(InstanceId::new("i").unwrap(), 1, id, "a", "null".into()),
            lock: LockToken(lock),
        }
    }

    #[tokio::test]
    async fn rounds_renew_what_is_due_and_drop_what_is_lost() {
        let leases = Arc::new(ActivityLeases::default());
        let t0 = Timestamp::from_unix_millis(1_000_000);
        let period = Duration::from_secs(10);
        let a = leases.hold(&item(1, 11), t0, period);
        let mut b = leases.hold(&item(2, 22), t0 + Duration::from_secs(2), period);
        let c = leases.hold(&item(3, 33), t0 + Duration::from_secs(4), period);
        assert_eq!(leases.next_due(), Some(t0 + Duration::from_secs(5)));
        // Due within a quarter period of t0 + 5 s: the first two, not the third (due at 9 s).
        let due = leases.due_at(t0 + Duration::from_secs(5), period).0;
        assert_eq!(due.len(), 1);
        let batch = due[0].1.clone();
        assert_eq!(batch, vec![(1, LockToken(11)), (2, LockToken(22))]);
        let next = t0 + Duration::from_secs(10);
        let lost = leases.renewed(&batch, &[2], next);
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].0, 2);
        b.lost().await;
        assert!(b.is_lost() && !a.is_lost());
        assert_eq!(leases.len(), 2);
        assert_eq!(leases.next_due(), Some(t0 + Duration::from_secs(9)));
        drop(c);
        assert_eq!(leases.next_due(), Some(next));
        drop((a, b));
        assert_eq!(leases.len(), 0);
        assert_eq!(leases.next_due(), None);
    }

    #[test]
    fn each_lease_is_renewed_on_its_own_period() {
        let leases = Arc::new(ActivityLeases::default());
        let t0 = Timestamp::from_unix_millis(1_000_000);
        let long = Duration::from_secs(300);
        let short = Duration::from_secs(20);
        let _a = leases.hold(&item(1, 11), t0, long);
        let _b = leases.hold(&item(2, 22), t0, short);
        // The short lease is due first (10 s), within a quarter of its period (5 s) at 5 s.
        assert_eq!(leases.next_due(), Some(t0 + Duration::from_secs(10)));
        assert!(
            leases
                .due_at(t0 + Duration::from_secs(4), long)
                .0
                .is_empty()
        );
        assert_eq!(
            leases.due_at(t0 + Duration::from_secs(5), long).0,
            [(short, vec![(2, LockToken(22))])]
        );
        let lost = leases.renewed(&[(2, LockToken(22))], &[], t0 + Duration::from_secs(15));
        assert!(lost.is_empty());
        // At 150 s both are due, each in the batch of its period.
        let due = leases.due_at(t0 + Duration::from_secs(150), long).0;
        assert_eq!(
            due,
            [
                (short, vec![(2, LockToken(22))]),
                (long, vec![(1, LockToken(11))])
            ]
        );
    }

    #[test]
    fn a_task_leased_again_replaces_its_old_lease() {
        let leases = Arc::new(ActivityLeases::default());
        let t0 = Timestamp::from_unix_millis(1_000_000);
        let period = Duration::from_secs(10);
        let old = leases.hold(&item(1, 11), t0, period);
        let new = leases.hold(&item(1, 12), t0 + period, period);
        assert!(old.is_lost());
        drop(old);
        assert_eq!(leases.len(), 1, "the old guard leaves the new lease alone");
        assert_eq!(
            leases.due_at(t0 + period * 2, period).0,
            vec![(period, vec![(1, LockToken(12))])]
        );
        drop(new);
        assert_eq!(leases.len(), 0);
    }

    /// A run with a heartbeat timeout that stops heartbeating (it may block its thread, so
    /// it cannot time itself out) loses its lease: the keeper stops renewing it and tells
    /// its holder, so another worker can take the task over.
    #[test]
    fn a_silent_run_with_a_heartbeat_timeout_gives_its_lease_up() {
        let leases = Arc::new(ActivityLeases::default());
        let t0 = Timestamp::from_unix_millis(1_000_000);
        let h = Duration::from_secs(8);
        let guard = leases.hold(&item(1, 11), t0, h);
        let (_beats, monitor) =
            crate::heartbeat::Heartbeat::new(None, 1 << 20, Arc::new(crate::clock::SystemClock));
        guard.watch(monitor.liveness(t0, h));
        // Due at 4 s and still within its heartbeat timeout: renewed.
        let (due, silent) = leases.due_at(t0 + Duration::from_secs(4), h);
        assert_eq!(due, [(h, vec![(1, LockToken(11))])]);
        assert!(silent.is_empty());
        leases.renewed(&[(1, LockToken(11))], &[], t0 + Duration::from_secs(8));
        // No heartbeat for 8 s + a quarter: given up, not renewed.
        let (due, silent) = leases.due_at(t0 + Duration::from_secs(10), h);
        assert!(due.is_empty());
        assert_eq!(silent.len(), 1);
        assert!(guard.is_lost());
        assert_eq!(leases.len(), 0);
        assert_eq!(leases.next_due(), None);
    }
}
