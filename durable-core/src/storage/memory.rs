//! An in-memory [`Store`] with the same semantics as the durable stores (no durability).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use super::replace::{self, Reuse, Teardown};
use super::{
    ActivityTask, ActivityWorkItem, CreateResult, EpisodeCommit, IdReusePolicy, InstancePage,
    InstanceQuery, InstanceRecord, LockToken, Message, MessageId, NewInstance,
    OrchestrationWorkItem, QueueDepths, Store, StoreSignals, WorkKind,
};
use crate::error::{FailureDetails, StoreError};
use crate::history::{Event, HistoryEvent, Payload, RuntimeStatus};
use crate::ids::{InstanceId, Timestamp};

#[cfg(feature = "redb")]
#[path = "memory_app.rs"]
mod app;

/// An in-memory store: for tests, the test harness and trying things out.
///
/// Clones share the same data, so a "crashed" worker can be replaced by a new one on the
/// same store.
///
/// # Examples
///
/// ```
/// use durable_core::MemoryStore;
/// let store = MemoryStore::new();
/// let same = store.clone();
/// # let _ = same;
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    data: Mutex<Data>,
    signals: StoreSignals,
    /// The application's tables, for transactional activities (feature `redb`).
    #[cfg(feature = "redb")]
    app: app::AppDb,
}

#[derive(Debug, Default)]
struct Data {
    instances: BTreeMap<String, Inst>,
    /// Unlocked instances with messages, keyed by when they may be taken: their earliest
    /// visibility, or the end of their hold if later.
    ready: BTreeSet<(Timestamp, String)>,
    /// Locked instances by lease expiry.
    orch_leases: BTreeSet<(Timestamp, String)>,
    activities: BTreeMap<(Timestamp, u64), ActivityTask>,
    activity_leases: HashMap<u64, (ActivityTask, Timestamp, u64)>,
    activity_lease_expiry: BTreeSet<(Timestamp, u64)>,
    next_id: u64,
}

#[derive(Debug)]
struct Inst {
    record: InstanceRecord,
    history: Vec<HistoryEvent>,
    inbox: BTreeMap<MessageId, Message>,
    lock: Option<(u64, Timestamp)>,
    ready_key: Option<Timestamp>,
    /// Set by [`Store::abandon_episode`]: not taken before this (its messages keep their
    /// own times, so they keep their order). Cleared by the next commit, or a terminate
    /// ([`super::ends_hold`]).
    not_before: Option<Timestamp>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn data(&self) -> MutexGuard<'_, Data> {
        self.inner
            .data
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Commits an episode, leasing one of its tasks to the committer with `eager` (the
    /// task's index, the lease's start and length).
    fn commit_with(
        &self,
        commit: EpisodeCommit,
        eager: Option<(usize, Timestamp, Duration)>,
    ) -> Result<Option<ActivityWorkItem>, StoreError> {
        let finished = commit.status.is_terminal();
        let (activity_work, leased) = {
            let mut d = self.data();
            d.check_lock(&commit.instance_id, commit.lock)?;
            d.commit(commit, eager)
        };
        if activity_work {
            self.inner.signals.activity_work();
        }
        self.inner.signals.orchestration_work();
        if finished {
            self.inner.signals.instance_finished();
        }
        Ok(leased)
    }
}

impl Data {
    /// Extends the lease `lock` holds on activity task `id` to `until`; the leased task.
    fn extend_activity_lease(
        &mut self,
        id: u64,
        lock: LockToken,
        until: Timestamp,
    ) -> Result<&mut ActivityTask, StoreError> {
        let Some(lease) = self.activity_leases.get_mut(&id).filter(|l| l.2 == lock.0) else {
            return Err(StoreError::LockLost(format!("activity task {id}")));
        };
        let old = std::mem::replace(&mut lease.1, until);
        self.activity_lease_expiry.remove(&(old, id));
        self.activity_lease_expiry.insert((until, id));
        Ok(&mut lease.0)
    }

    fn next(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Recomputes whether `id` belongs in the ready set.
    fn refresh_ready(&mut self, id: &str) {
        let Some(inst) = self.instances.get_mut(id) else {
            return;
        };
        if let Some(old) = inst.ready_key.take() {
            self.ready.remove(&(old, id.to_owned()));
        }
        if inst.lock.is_none()
            && let Some((first, _)) = inst.inbox.first_key_value()
        {
            let at = inst
                .not_before
                .map_or(first.visible_at, |t| t.max(first.visible_at));
            inst.ready_key = Some(at);
            self.ready.insert((at, id.to_owned()));
        }
    }

    /// The leased activity task `id`, if `lock` still holds it: the task and its lease's end.
    pub(super) fn held_activity(
        &self,
        id: u64,
        lock: LockToken,
    ) -> Result<(ActivityTask, Timestamp), StoreError> {
        match self.activity_leases.get(&id) {
            Some((task, until, token)) if *token == lock.0 => Ok((task.clone(), *until)),
            _ => Err(StoreError::LockLost(format!("activity task {id}"))),
        }
    }

    /// Removes the leased task `id` (its lease ending at `until`) and enqueues its result to
    /// its instance, unless that has finished.
    pub(super) fn complete_held_activity(
        &mut self,
        id: u64,
        until: Timestamp,
        task: &ActivityTask,
        result: Message,
    ) {
        self.activity_leases.remove(&id);
        self.activity_lease_expiry.remove(&(until, id));
        let key = task.instance_id.as_str();
        let running = self
            .instances
            .get(key)
            .is_some_and(|i| !i.record.status.is_terminal());
        if running {
            self.enqueue(key, result);
        }
    }

    fn enqueue(&mut self, id: &str, mut message: Message) -> bool {
        message.id.seq = self.next();
        let Some(inst) = self.instances.get_mut(id) else {
            return false;
        };
        if super::ends_hold(&message.event) {
            inst.not_before = None;
        }
        inst.inbox.insert(message.id, message);
        self.refresh_ready(id);
        true
    }

    fn release_expired(&mut self, now: Timestamp) {
        while let Some((t, id)) = self.orch_leases.first().cloned() {
            if t > now {
                break;
            }
            self.orch_leases.pop_first();
            if let Some(inst) = self.instances.get_mut(&id)
                && inst.lock.is_some_and(|(_, until)| until <= now)
            {
                inst.lock = None;
                self.refresh_ready(&id);
            }
        }
        self.release_expired_activities(now);
    }

    /// The activity half of [`release_expired`](Self::release_expired).
    fn release_expired_activities(&mut self, now: Timestamp) {
        while let Some((t, id)) = self.activity_lease_expiry.first().copied() {
            if t > now {
                break;
            }
            self.activity_lease_expiry.pop_first();
            if let Some((task, until, _)) = self.activity_leases.get(&id)
                && *until <= now
            {
                let task = task.clone();
                self.activity_leases.remove(&id);
                self.activities.insert((now, id), task);
            }
        }
    }

    fn create(&mut self, new: NewInstance) -> Result<CreateResult, StoreError> {
        let key = new.instance_id.as_str().to_owned();
        let mut teardown = None;
        let mut previous = None;
        if let Some(existing) = self.instances.get(&key) {
            match replace::decide(new.reuse, existing.record.status.is_terminal()) {
                Reuse::Existing => return Ok(CreateResult::Existing(existing.record.clone())),
                Reuse::Reject => return Err(StoreError::InstanceAlreadyExists(key)),
                Reuse::Replace => {}
                Reuse::TerminateAndReplace => {
                    let inbox = existing.inbox.values().map(|m| &m.event);
                    let t =
                        Teardown::new(&existing.record, &existing.history, inbox, new.created_at);
                    teardown = Some(t);
                }
            }
            previous = Some(existing.record.clone());
            self.remove_instance(&key);
        }
        let start = new.start_message();
        let record = new.record(previous.as_ref());
        let created = record.clone();
        self.instances.insert(
            key.clone(),
            Inst {
                record,
                history: Vec::new(),
                inbox: BTreeMap::new(),
                lock: None,
                ready_key: None,
                not_before: None,
            },
        );
        self.enqueue(&key, start);
        let messages = teardown.map(|t| self.tear_down(t)).unwrap_or_default();
        for (target, m) in messages {
            self.enqueue(target.as_str(), m);
        }
        Ok(CreateResult::Created(created))
    }

    /// Terminates the running descendants of an execution being replaced; returns the
    /// messages to send once the new instance exists.
    fn tear_down(&mut self, mut t: Teardown) -> Vec<(InstanceId, Message)> {
        while let Some((id, parent)) = t.next() {
            let Some(inst) = self.instances.get(id.as_str()) else {
                continue;
            };
            if !inst.record.is_child_of(&parent) {
                continue;
            }
            let inbox = inst.inbox.values().map(|m| &m.event);
            let Some((record, events)) = t.visit(inst.record.clone(), &inst.history, inbox) else {
                continue;
            };
            let key = id.as_str().to_owned();
            let inst = self
                .instances
                .get_mut(&key)
                .expect("read in this same step");
            inst.record = record;
            inst.history.extend(events);
            inst.inbox.clear();
            if let Some((_, until)) = inst.lock.take() {
                self.orch_leases.remove(&(until, key.clone()));
            }
            self.refresh_ready(&key);
        }
        t.messages
    }

    fn remove_instance(&mut self, key: &str) -> bool {
        let Some(inst) = self.instances.remove(key) else {
            return false;
        };
        if let Some(t) = inst.ready_key {
            self.ready.remove(&(t, key.to_owned()));
        }
        if let Some((_, until)) = inst.lock {
            self.orch_leases.remove(&(until, key.to_owned()));
        }
        self.activities.retain(|_, t| t.instance_id.as_str() != key);
        let expiry = &mut self.activity_lease_expiry;
        self.activity_leases.retain(|id, (t, until, _)| {
            let keep = t.instance_id.as_str() != key;
            if !keep {
                expiry.remove(&(*until, *id));
            }
            keep
        });
        true
    }

    /// Locks an unlocked instance and returns it with its visible messages.
    fn lease(
        &mut self,
        key: &str,
        now: Timestamp,
        lock_for: Duration,
    ) -> Option<OrchestrationWorkItem> {
        let ready_key = match self.instances.get(key) {
            Some(inst) if inst.lock.is_none() => inst.ready_key,
            _ => return None,
        };
        if let Some(t) = ready_key {
            self.ready.remove(&(t, key.to_owned()));
        }
        let token = self.next();
        let until = now + lock_for;
        self.orch_leases.insert((until, key.to_owned()));
        let inst = self.instances.get_mut(key)?;
        inst.ready_key = None;
        inst.lock = Some((token, until));
        let upper = MessageId {
            visible_at: now,
            seq: u64::MAX,
        };
        let messages: Vec<Message> = inst.inbox.range(..=upper).map(|(_, m)| m.clone()).collect();
        Some(OrchestrationWorkItem {
            instance: inst.record.clone(),
            history_len: inst.history.len() as u64,
            messages,
            lock: LockToken(token),
        })
    }

    /// Counts the work waiting at `now` ([`QueueDepths`]).
    fn queue_depths(&self, now: Timestamp) -> QueueDepths {
        let upper = MessageId {
            visible_at: now,
            seq: u64::MAX,
        };
        // Unlocked instances with messages are in `ready`; a locked one whose lease expired
        // waits again too (it is released at the next fetch).
        let unlocked = self.ready.iter().take_while(|(t, _)| *t <= now);
        let expired = self
            .orch_leases
            .iter()
            .take_while(|(t, _)| *t <= now)
            .filter(|(t, id)| {
                self.instances
                    .get(id)
                    .is_some_and(|i| i.lock.is_some_and(|(_, until)| until == *t))
            });
        let mut depths = QueueDepths::default();
        for (_, id) in unlocked.chain(expired) {
            let Some(inst) = self.instances.get(id) else {
                continue;
            };
            let mut visible = inst.inbox.range(..=upper).peekable();
            if visible.peek().is_none() {
                continue;
            }
            depths.ready_orchestrations += 1;
            depths.timers_due += visible
                .filter(|(_, m)| matches!(m.event, Event::TimerFired { .. }))
                .count() as u64;
        }
        let queued = self.activities.range(..=(now, u64::MAX)).count();
        let expired = self
            .activity_lease_expiry
            .range(..=(now, u64::MAX))
            .filter(|(t, id)| {
                self.activity_leases
                    .get(id)
                    .is_some_and(|(_, until, _)| until == t)
            })
            .count();
        depths.ready_activities = (queued + expired) as u64;
        depths
    }

    /// Applies an episode whose lease was checked; `true` when it enqueued activity work
    /// that is not leased. With `eager` (a task's index, the lease's start and length) that
    /// task is leased to the committer instead of queued, unless tasks queued earlier are
    /// due ([`Store::commit_episode_eager`]).
    fn commit(
        &mut self,
        mut commit: EpisodeCommit,
        eager: Option<(usize, Timestamp, Duration)>,
    ) -> (bool, Option<ActivityWorkItem>) {
        let key = commit.instance_id.as_str().to_owned();
        for &(task, lock) in &commit.completed_activities {
            if self
                .activity_leases
                .get(&task)
                .is_some_and(|(_, _, token)| *token == lock.0)
                && let Some((_, until, _)) = self.activity_leases.remove(&task)
            {
                self.activity_lease_expiry.remove(&(until, task));
            }
        }
        // Sub-orchestrations first: a refused child becomes a failure message to us.
        let mut refusals = Vec::new();
        let execution = self.instances[&key].record.execution;
        for (seq, child) in std::mem::take(&mut commit.new_instances) {
            let child_id = child.instance_id.clone();
            // Replacing the parent itself would drop the lock held by this commit.
            let refused = if child_id == commit.instance_id {
                Some("a sub-orchestration cannot take its parent's id".to_owned())
            } else {
                self.create(child).err().map(|e| e.to_string())
            };
            if let Some(reason) = refused {
                refusals.push(Message::new(
                    Event::SubOrchestrationFailed {
                        seq,
                        failure: FailureDetails::new(
                            "SubOrchestrationNotCreated",
                            format!("could not create sub-orchestration `{child_id}`: {reason}"),
                        ),
                    },
                    Some(execution),
                    commit.now,
                ));
            }
        }
        let inst = self
            .instances
            .get_mut(&key)
            .expect("lock check proved the instance exists");
        for id in &commit.consumed {
            inst.inbox.remove(id);
        }
        inst.record.apply_episode(&commit);
        inst.history.extend(commit.new_events);
        if commit.next_execution.is_some() {
            inst.history.clear();
        }
        let (_, until) = inst.lock.take().expect("lock checked above");
        inst.not_before = None;
        self.orch_leases.remove(&(until, key.clone()));
        if let Some(next) = commit.next_execution {
            for m in next.messages {
                self.enqueue(&key, m);
            }
        }
        for m in refusals {
            self.enqueue(&key, m);
        }
        // A lease kept while messages are due would hold them back: no task is leased then.
        let eager = eager.filter(|&(_, leased_at, _)| {
            commit.keep_lease.is_none()
                || self.instances[&key]
                    .inbox
                    .first_key_value()
                    .is_none_or(|(id, _)| id.visible_at > leased_at)
        });
        let (activity_work, leased) = self.enqueue_tasks(commit.activities, commit.now, eager);
        if let (Some(_), Some(keep), Some((_, leased_at, _))) = (&leased, commit.keep_lease, eager)
        {
            // Kept for the episode that takes the task's result.
            let until = leased_at + keep;
            self.orch_leases.insert((until, key.clone()));
            if let Some(inst) = self.instances.get_mut(&key) {
                inst.lock = Some((commit.lock.0, until));
            }
        }
        for (target, m) in commit.messages {
            if !self.enqueue(target.as_str(), m) {
                tracing::debug!(target = %target, "message to unknown instance dropped");
            }
        }
        self.refresh_ready(&key);
        (activity_work, leased)
    }

    /// Queues an episode's new activity `tasks` at `now`, except the one `eager` names,
    /// leased to the committer unless tasks queued earlier are due; whether any task was
    /// queued, and the leased one.
    fn enqueue_tasks(
        &mut self,
        tasks: Vec<ActivityTask>,
        now: Timestamp,
        eager: Option<(usize, Timestamp, Duration)>,
    ) -> (bool, Option<ActivityWorkItem>) {
        if let Some((_, leased_at, _)) = eager {
            // Leases run out by then are put back first: their tasks are due too.
            self.release_expired_activities(leased_at);
        }
        let eager = eager.filter(|&(task, leased_at, _)| {
            task < tasks.len()
                && self
                    .activities
                    .first_key_value()
                    .is_none_or(|((visible_at, _), _)| *visible_at > leased_at)
        });
        let (mut queued, mut leased) = (false, None);
        for (i, task) in tasks.into_iter().enumerate() {
            let id = self.next();
            match eager {
                Some((at, leased_at, lock_for)) if at == i => {
                    let token = self.next();
                    let until = leased_at + task.lease_for(lock_for);
                    self.activity_leases
                        .insert(id, (task.clone(), until, token));
                    self.activity_lease_expiry.insert((until, id));
                    leased = Some(ActivityWorkItem {
                        id,
                        task,
                        lock: LockToken(token),
                    });
                }
                _ => {
                    self.activities.insert((now, id), task);
                    queued = true;
                }
            }
        }
        (queued, leased)
    }

    /// Ends the lease on `key`, which the caller checked is held; the instance, whose
    /// ready set entry the caller refreshes.
    fn end_lease(&mut self, key: &str) -> &mut Inst {
        let inst = self
            .instances
            .get_mut(key)
            .expect("lock check proved the instance exists");
        let (_, until) = inst.lock.take().expect("lock checked above");
        self.orch_leases.remove(&(until, key.to_owned()));
        inst
    }

    fn check_lock(&self, id: &InstanceId, lock: LockToken) -> Result<(), StoreError> {
        match self.instances.get(id.as_str()) {
            Some(inst) if inst.lock.is_some_and(|(t, _)| t == lock.0) => Ok(()),
            _ => Err(StoreError::LockLost(id.to_string())),
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn create_instance(&self, new: NewInstance) -> Result<CreateResult, StoreError> {
        // Replacing a running instance terminates it (and its tree) in place: whoever waits
        // for those to finish must wake.
        let replaces = new.reuse == IdReusePolicy::TerminateRunning;
        let r = self.data().create(new)?;
        self.inner.signals.orchestration_work();
        if replaces {
            self.inner.signals.instance_finished();
        }
        Ok(r)
    }

    async fn send_message(
        &self,
        instance_id: &InstanceId,
        message: Message,
    ) -> Result<(), StoreError> {
        {
            let mut d = self.data();
            let Some(inst) = d.instances.get(instance_id.as_str()) else {
                return Err(StoreError::InstanceNotFound(instance_id.to_string()));
            };
            if !super::accepts_message(inst.record.status, &message.event) {
                return Err(StoreError::InstanceNotRunning(instance_id.to_string()));
            }
            let queued = inst.inbox.values().map(|m| &m.event);
            super::check_control(instance_id, inst.record.status, queued, &message.event)?;
            d.enqueue(instance_id.as_str(), message);
        }
        self.inner.signals.orchestration_work();
        Ok(())
    }

    async fn fetch_orchestration_work(
        &self,
        now: Timestamp,
        lock_for: Duration,
    ) -> Result<Option<OrchestrationWorkItem>, StoreError> {
        let mut d = self.data();
        d.release_expired(now);
        let Some((t, id)) = d.ready.first().cloned() else {
            return Ok(None);
        };
        if t > now {
            return Ok(None);
        }
        d.ready.remove(&(t, id.clone()));
        let token = d.next();
        let until = now + lock_for;
        d.orch_leases.insert((until, id.clone()));
        let inst = d
            .instances
            .get_mut(&id)
            .expect("ready set only names live instances");
        inst.ready_key = None;
        inst.lock = Some((token, until));
        let upper = MessageId {
            visible_at: now,
            seq: u64::MAX,
        };
        let messages: Vec<Message> = inst.inbox.range(..=upper).map(|(_, m)| m.clone()).collect();
        Ok(Some(OrchestrationWorkItem {
            instance: inst.record.clone(),
            history_len: inst.history.len() as u64,
            messages,
            lock: LockToken(token),
        }))
    }

    async fn commit_episode(&self, commit: EpisodeCommit) -> Result<(), StoreError> {
        self.commit_with(commit, None).map(|_| ())
    }

    fn supports_eager_dispatch(&self) -> bool {
        true
    }

    fn keeps_lease_for_eager(&self) -> bool {
        true
    }

    async fn commit_episode_eager(
        &self,
        commit: EpisodeCommit,
        task: usize,
        now: Timestamp,
        lock_for: Duration,
    ) -> Result<Option<ActivityWorkItem>, StoreError> {
        self.commit_with(commit, Some((task, now, lock_for)))
    }

    async fn create_started(
        &self,
        new: NewInstance,
        mut first: EpisodeCommit,
    ) -> Result<Option<InstanceRecord>, StoreError> {
        let finished = first.status.is_terminal();
        let (record, activity_work) = {
            let mut d = self.data();
            if d.instances.contains_key(new.instance_id.as_str()) {
                return Ok(None);
            }
            let CreateResult::Created(record) = d.create(new)? else {
                return Ok(None);
            };
            let key = record.instance_id.as_str().to_owned();
            let inst = d
                .instances
                .get_mut(&key)
                .expect("the instance was just created");
            first.consumed = inst.inbox.keys().copied().collect();
            // Leased for the commit below, which releases it: never visible unleased.
            inst.lock = Some((0, first.now));
            d.orch_leases.insert((first.now, key));
            (record, d.commit(first, None).0)
        };
        if activity_work {
            self.inner.signals.activity_work();
        }
        self.inner.signals.orchestration_work();
        self.inner
            .signals
            .changed
            .send_modify(|v| *v = v.wrapping_add(1));
        if finished {
            self.inner.signals.instance_finished();
        }
        Ok(Some(record))
    }

    async fn create_leased(
        &self,
        new: NewInstance,
        now: Timestamp,
        lock_for: Duration,
    ) -> Result<Option<OrchestrationWorkItem>, StoreError> {
        let item = {
            let mut d = self.data();
            if d.instances.contains_key(new.instance_id.as_str()) {
                return Ok(None);
            }
            let CreateResult::Created(record) = d.create(new)? else {
                return Ok(None);
            };
            let key = record.instance_id.as_str();
            // With its start whatever `now` (a fetch would show only what is visible).
            let start: Vec<Message> = d.instances[key].inbox.values().cloned().collect();
            d.lease(key, now, lock_for).map(|mut item| {
                item.messages = start;
                item
            })
        };
        self.inner
            .signals
            .changed
            .send_modify(|v| *v = v.wrapping_add(1));
        Ok(item)
    }

    fn supports_activity_handoff(&self) -> bool {
        true
    }

    fn leases_in_process(&self) -> bool {
        true
    }

    fn supports_create_started(&self) -> bool {
        true
    }

    async fn fetch_instances_work(
        &self,
        instance_ids: &[InstanceId],
        now: Timestamp,
        lock_for: Duration,
    ) -> Result<Vec<OrchestrationWorkItem>, StoreError> {
        let mut d = self.data();
        d.release_expired(now);
        Ok(instance_ids
            .iter()
            .filter_map(|id| d.lease(id.as_str(), now, lock_for))
            .collect())
    }

    async fn release_kept_lease(
        &self,
        instance_id: &InstanceId,
        lock: LockToken,
    ) -> Result<(), StoreError> {
        {
            let mut d = self.data();
            if d.check_lock(instance_id, lock).is_err() {
                return Ok(());
            }
            d.end_lease(instance_id.as_str());
            d.refresh_ready(instance_id.as_str());
        }
        self.inner.signals.orchestration_work();
        Ok(())
    }

    async fn abandon_episode(
        &self,
        instance_id: &InstanceId,
        lock: LockToken,
        retry_at: Timestamp,
        error: Option<String>,
    ) -> Result<(), StoreError> {
        {
            let mut d = self.data();
            d.check_lock(instance_id, lock)?;
            let key = instance_id.as_str();
            let inst = d.end_lease(key);
            inst.record.last_error = error;
            // Hold the instance, not its messages: they keep their times and their order.
            inst.not_before = Some(retry_at);
            d.refresh_ready(key);
        }
        self.inner.signals.orchestration_work();
        Ok(())
    }

    async fn fetch_activity_work(
        &self,
        now: Timestamp,
        lock_for: Duration,
        max: usize,
    ) -> Result<Vec<ActivityWorkItem>, StoreError> {
        let mut d = self.data();
        d.release_expired(now);
        let mut out = Vec::new();
        while out.len() < max {
            let Some(entry) = d.activities.first_entry() else {
                break;
            };
            if entry.key().0 > now {
                break;
            }
            let ((_, id), task) = entry.remove_entry();
            let token = d.next();
            let until = now + task.lease_for(lock_for);
            d.activity_leases.insert(id, (task.clone(), until, token));
            d.activity_lease_expiry.insert((until, id));
            out.push(ActivityWorkItem {
                id,
                task,
                lock: LockToken(token),
            });
        }
        Ok(out)
    }

    #[cfg(feature = "redb")]
    async fn complete_activity_in_transaction(
        &self,
        id: u64,
        lock: LockToken,
        run: crate::storage::app::TransactionalRun,
    ) -> Result<(), StoreError> {
        self.complete_in_transaction(id, lock, run)?;
        self.inner.signals.orchestration_work();
        Ok(())
    }

    async fn complete_activity(
        &self,
        id: u64,
        lock: LockToken,
        result: Message,
    ) -> Result<(), StoreError> {
        {
            let mut d = self.data();
            let (task, until) = d.held_activity(id, lock)?;
            d.complete_held_activity(id, until, &task, result);
        }
        self.inner.signals.orchestration_work();
        Ok(())
    }

    async fn renew_activity_lock(
        &self,
        id: u64,
        lock: LockToken,
        until: Timestamp,
    ) -> Result<(), StoreError> {
        self.data().extend_activity_lease(id, lock, until).map(drop)
    }

    async fn record_activity_heartbeat(
        &self,
        id: u64,
        lock: LockToken,
        details: Payload,
        until: Timestamp,
    ) -> Result<(), StoreError> {
        let mut d = self.data();
        d.extend_activity_lease(id, lock, until)?.heartbeat = Some(details);
        Ok(())
    }

    async fn abandon_activity(
        &self,
        id: u64,
        lock: LockToken,
        retry_at: Timestamp,
    ) -> Result<(), StoreError> {
        {
            let mut d = self.data();
            let Some((task, until, token)) = d.activity_leases.get(&id).cloned() else {
                return Err(StoreError::LockLost(format!("activity task {id}")));
            };
            if token != lock.0 {
                return Err(StoreError::LockLost(format!("activity task {id}")));
            }
            d.activity_leases.remove(&id);
            d.activity_lease_expiry.remove(&(until, id));
            d.activities.insert((retry_at, id), task);
        }
        self.inner.signals.activity_work();
        Ok(())
    }

    async fn next_wake_time(&self) -> Result<Option<Timestamp>, StoreError> {
        let a = self.next_wake_time_for(WorkKind::Orchestration).await?;
        let b = self.next_wake_time_for(WorkKind::Activity).await?;
        Ok(a.into_iter().chain(b).min())
    }

    async fn next_wake_time_for(&self, kind: WorkKind) -> Result<Option<Timestamp>, StoreError> {
        let d = self.data();
        let candidates = match kind {
            WorkKind::Orchestration => [
                d.ready.first().map(|(t, _)| *t),
                d.orch_leases.first().map(|(t, _)| *t),
            ],
            WorkKind::Activity => [
                d.activities.first_key_value().map(|((t, _), _)| *t),
                d.activity_lease_expiry.first().map(|(t, _)| *t),
            ],
        };
        Ok(candidates.into_iter().flatten().min())
    }

    async fn queue_depths(&self, now: Timestamp) -> Result<Option<QueueDepths>, StoreError> {
        Ok(Some(self.data().queue_depths(now)))
    }

    async fn read_instance(
        &self,
        instance_id: &InstanceId,
    ) -> Result<Option<InstanceRecord>, StoreError> {
        Ok(self
            .data()
            .instances
            .get(instance_id.as_str())
            .map(|i| i.record.clone()))
    }

    async fn read_history(
        &self,
        instance_id: &InstanceId,
    ) -> Result<Vec<HistoryEvent>, StoreError> {
        Ok(self
            .data()
            .instances
            .get(instance_id.as_str())
            .map(|i| i.history.clone())
            .unwrap_or_default())
    }

    async fn count_instances(
        &self,
        query: &InstanceQuery,
    ) -> Result<Vec<(RuntimeStatus, u64)>, StoreError> {
        let d = self.data();
        let start = query
            .id_prefix
            .as_ref()
            .map_or(Bound::Unbounded, |p| Bound::Included(p.clone()));
        let mut counts = super::StatusCounts::default();
        for (key, inst) in d.instances.range((start, Bound::Unbounded)) {
            if query
                .id_prefix
                .as_ref()
                .is_some_and(|p| !key.starts_with(p.as_str()))
            {
                break;
            }
            if query.matches(&inst.record) {
                counts.add(inst.record.status, 1);
            }
        }
        Ok(counts.into_vec())
    }

    async fn query_instances(&self, query: &InstanceQuery) -> Result<InstancePage, StoreError> {
        let d = self.data();
        if query.newest_first {
            let start = query
                .id_prefix
                .as_ref()
                .map_or(Bound::Unbounded, |p| Bound::Included(p.clone()));
            let candidates: Vec<&InstanceRecord> = d
                .instances
                .range((start, Bound::Unbounded))
                .take_while(|(key, _)| {
                    query
                        .id_prefix
                        .as_ref()
                        .is_none_or(|p| key.starts_with(p.as_str()))
                })
                .map(|(_, inst)| &inst.record)
                .filter(|r| query.matches(r))
                .collect();
            let (page, continuation) = super::newest_first_page(query, candidates, |r| r);
            return Ok(InstancePage {
                instances: page.into_iter().cloned().collect(),
                continuation,
            });
        }
        let page = query.effective_page_size();
        let start = match (&query.continuation, &query.id_prefix) {
            (Some(c), _) => Bound::Excluded(c.clone()),
            (None, Some(p)) => Bound::Included(p.clone()),
            (None, None) => Bound::Unbounded,
        };
        let mut instances = Vec::new();
        let mut last = None;
        let mut more = false;
        for (key, inst) in d.instances.range((start, Bound::Unbounded)) {
            if let Some(p) = &query.id_prefix
                && !key.starts_with(p.as_str())
            {
                break;
            }
            if !query.matches(&inst.record) {
                continue;
            }
            if instances.len() == page {
                more = true;
                break;
            }
            instances.push(inst.record.clone());
            last = Some(key.clone());
        }
        Ok(InstancePage {
            instances,
            continuation: if more { last } else { None },
        })
    }

    async fn purge_finished_instance(
        &self,
        instance_id: &InstanceId,
        finished_by: Timestamp,
    ) -> Result<bool, StoreError> {
        let removed = {
            let mut d = self.data();
            let qualifies = d.instances.get(instance_id.as_str()).is_some_and(|i| {
                i.record.status.is_terminal() && i.record.last_updated_at <= finished_by
            });
            qualifies && d.remove_instance(instance_id.as_str())
        };
        if removed {
            self.inner.signals.instance_finished();
        }
        Ok(removed)
    }

    async fn purge_instance(&self, instance_id: &InstanceId) -> Result<bool, StoreError> {
        let removed = self.data().remove_instance(instance_id.as_str());
        if removed {
            self.inner.signals.instance_finished();
        }
        Ok(removed)
    }

    fn signals(&self) -> &StoreSignals {
        &self.inner.signals
    }
}
