//! The store the harness runs workers on: the in-memory store, observed.
//!
//! [`HarnessStore`] forwards every call to a [`MemoryStore`] and keeps books on the side:
//! which leases the live worker holds (so the harness knows when the engine is idle without
//! sleeping), how many commits happened (so a crash can be injected after any of them), and —
//! under simulation — activity results held back and released in a seeded order.
//!
//! Each worker the harness starts gets its own handle, tagged with an *epoch*. A simulated
//! crash ends the current epoch: from then on every worker-side call of the old handle
//! (fetch, commit, complete, abandon, wake-time) blocks forever, exactly as if the process
//! had died, while client-side calls (create, send, read, query, purge) keep working.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use durable_core::history::HistoryEvent;
use durable_core::registry::ActivityHandler;
use durable_core::storage::{
    ActivityWorkItem, CreateResult, EpisodeCommit, InstancePage, LockToken, Message, NewInstance,
    OrchestrationWorkItem, QueueDepths, StoreSignals, WorkKind,
};
use durable_core::transaction::TransactionalRun;
use durable_core::{
    ActivityContext, Clock, InstanceId, InstanceQuery, InstanceRecord, MemoryStore, RuntimeStatus,
    Store, StoreError, Timestamp,
};
use tokio::sync::{Notify, watch};

use crate::clock::ManualClock;
use crate::mock::ActivityCall;
use crate::sim::{SimConfig, SimStats};

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Blocks forever: what a call of a crashed worker does.
async fn halt<T>() -> T {
    std::future::pending().await
}

/// Sees every change of the harness's books and of the virtual clock.
pub(crate) struct Changes {
    version: watch::Receiver<u64>,
    time: watch::Receiver<Timestamp>,
}

impl Changes {
    /// Forgets the changes seen so far.
    pub(crate) fn mark_seen(&mut self) {
        self.version.borrow_and_update();
        self.time.borrow_and_update();
    }

    /// Waits for a change not yet seen.
    pub(crate) async fn next(&mut self) {
        tokio::select! {
            r = self.version.changed() => if r.is_err() { std::future::pending::<()>().await },
            r = self.time.changed() => if r.is_err() { std::future::pending::<()>().await },
        }
    }
}

/// Identifies one activity call: (instance, action sequence number).
pub(crate) type TaskKey = (String, u64);

/// When the harness simulates a crash.
#[derive(Debug, Clone, Default)]
pub(crate) enum CrashPlan {
    /// Never.
    #[default]
    Never,
    /// After each of these commits (1-based, counted over the whole run).
    After(BTreeSet<u64>),
    /// After every commit.
    Every,
}

impl CrashPlan {
    fn crashes_after(&self, commit: u64) -> bool {
        match self {
            CrashPlan::Never => false,
            CrashPlan::After(set) => set.contains(&commit),
            CrashPlan::Every => true,
        }
    }
}

#[derive(Debug)]
struct ActivityLease {
    until: Timestamp,
    key: TaskKey,
    instance: InstanceId,
    attempt: u32,
}

#[derive(Debug)]
enum HeldKind {
    /// A completion the worker believes is committed; applied on release.
    Completion { id: u64, lock: LockToken },
    /// A second delivery of a result that was already applied.
    Duplicate,
}

/// An activity result held back by the simulation.
#[derive(Debug)]
pub(crate) struct Held {
    kind: HeldKind,
    instance: InstanceId,
    key: TaskKey,
    attempt: u32,
    message: Message,
    release_at: Timestamp,
    rank: u64,
    order: u64,
}

#[derive(Debug, Default)]
struct State {
    /// The live worker's epoch; handles of earlier epochs belong to crashed workers.
    epoch: u64,
    crash_pending: bool,
    /// After a crash: the time at which every lease of the crashed worker has expired.
    resume_at: Option<Timestamp>,
    fetching: usize,
    orch_leases: HashMap<u64, Timestamp>,
    activity_leases: HashMap<u64, ActivityLease>,
    /// Activity calls whose result is lost (scripted hangs): the store never hears back,
    /// and the task is delivered again when its lease expires.
    lost: HashSet<TaskKey>,
    held: Vec<Held>,
    held_seq: u64,
    /// Held results taken for release and not yet applied.
    releasing: usize,
    deliveries: HashMap<TaskKey, u32>,
    commits: u64,
    crash_plan: CrashPlan,
    crashes: usize,
    sim: SimStats,
}

/// The activity call log.
#[derive(Debug, Default)]
struct Calls {
    log: Vec<ActivityCall>,
    /// Executions per call (instance, sequence number).
    runs: HashMap<TaskKey, u32>,
}

/// What the harness shares between its store handles, its activity switchboard and the env.
pub(crate) struct Shared {
    pub(crate) store: MemoryStore,
    pub(crate) clock: ManualClock,
    pub(crate) sim: Option<SimConfig>,
    pub(crate) mocks: Mutex<HashMap<String, ActivityHandler>>,
    /// The running worker's built-in HTTP activity, for requests not mocked.
    #[cfg(feature = "http-calls")]
    pub(crate) http_builtin: crate::http::BuiltIn,
    calls: Mutex<Calls>,
    state: Mutex<State>,
    version: watch::Sender<u64>,
    pub(crate) crash_signal: Notify,
    closed: AtomicBool,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("clock", &self.clock)
            .field("sim", &self.sim)
            .field("state", &*lock(&self.state))
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn new(
        store: MemoryStore,
        clock: ManualClock,
        sim: Option<SimConfig>,
        crash_plan: CrashPlan,
    ) -> Self {
        Self {
            store,
            clock,
            sim,
            mocks: Mutex::new(HashMap::new()),
            #[cfg(feature = "http-calls")]
            http_builtin: crate::http::BuiltIn::default(),
            calls: Mutex::new(Calls::default()),
            state: Mutex::new(State {
                crash_plan,
                ..State::default()
            }),
            version: watch::channel(0).0,
            crash_signal: Notify::new(),
            closed: AtomicBool::new(false),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Records that something the idle check looks at changed.
    pub(crate) fn bump(&self) {
        self.version.send_modify(|v| *v = v.wrapping_add(1));
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.bump();
        self.crash_signal.notify_one();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.state().epoch
    }

    // ------------------------------------------------------------------ activity calls

    /// Records an activity execution; returns how many times this call ran before.
    pub(crate) fn record_call(&self, ctx: &ActivityContext, input: &str, mocked: bool) -> u32 {
        let mut calls = lock(&self.calls);
        let runs = calls
            .runs
            .entry((ctx.instance_id.as_str().to_owned(), ctx.seq))
            .or_insert(0);
        let attempt = *runs;
        *runs += 1;
        calls.log.push(ActivityCall {
            name: ctx.name.clone(),
            instance_id: ctx.instance_id.clone(),
            seq: ctx.seq,
            input: input.to_owned(),
            mocked,
        });
        drop(calls);
        self.bump();
        attempt
    }

    pub(crate) fn calls(&self) -> Vec<ActivityCall> {
        lock(&self.calls).log.clone()
    }

    pub(crate) fn mock(&self, name: &str) -> Option<ActivityHandler> {
        lock(&self.mocks).get(name).cloned()
    }

    /// Marks an activity call as never completing: whatever the worker reports for it is
    /// dropped, so its lease stays held in the store until it expires.
    pub(crate) fn lose(&self, ctx: &ActivityContext) {
        self.state()
            .lost
            .insert((ctx.instance_id.as_str().to_owned(), ctx.seq));
        self.bump();
    }

    pub(crate) fn count_injected_failure(&self) {
        self.state().sim.failures_injected += 1;
    }

    // ------------------------------------------------------------------ counters

    pub(crate) fn commits(&self) -> u64 {
        self.state().commits
    }

    pub(crate) fn crashes(&self) -> usize {
        self.state().crashes
    }

    pub(crate) fn sim_stats(&self) -> SimStats {
        self.state().sim.clone()
    }

    // ------------------------------------------------------------------ crashes

    /// Counts a commit; if the plan says so, crashes the live worker. Returns `true` on a crash.
    fn after_commit(&self, st: &mut State) -> bool {
        st.commits += 1;
        if st.crash_plan.crashes_after(st.commits) {
            Self::crash_locked(st);
            self.crash_signal.notify_one();
            return true;
        }
        false
    }

    /// Ends the live epoch: its leases are forgotten (they expire in the store), its calls
    /// block from now on, and the env restarts a worker.
    fn crash_locked(st: &mut State) {
        let leases = st
            .orch_leases
            .values()
            .copied()
            .chain(st.activity_leases.values().map(|l| l.until));
        st.resume_at = leases.max().max(st.resume_at);
        st.orch_leases.clear();
        st.activity_leases.clear();
        st.fetching = 0;
        st.epoch += 1;
        st.crash_pending = true;
        st.crashes += 1;
    }

    /// Crashes the live worker now (if it has not crashed already).
    pub(crate) fn crash_now(&self) {
        {
            let mut st = self.state();
            if !st.crash_pending {
                Self::crash_locked(&mut st);
            }
        }
        self.bump();
        self.crash_signal.notify_one();
    }

    /// If a crash is pending: its epoch (for the new worker) and the time to move to.
    pub(crate) fn pending_crash(&self) -> Option<(u64, Option<Timestamp>)> {
        let st = self.state();
        st.crash_pending.then_some((st.epoch, st.resume_at))
    }

    /// The worker of `epoch` runs; unless it crashed meanwhile, the crash is handled.
    pub(crate) fn crash_handled(&self, epoch: u64) {
        {
            let mut st = self.state();
            if st.epoch == epoch {
                st.crash_pending = false;
                st.resume_at = None;
            }
        }
        self.bump();
    }

    // ------------------------------------------------------------------ idleness

    /// One consistent look: nothing leased by the live worker (apart from calls that never
    /// complete), no crash being handled, no held result being applied, no work visible at
    /// the current time — and, with `held_too`, no held result due.
    pub(crate) async fn quiet(&self, held_too: bool) -> bool {
        if self.is_closed() {
            return true;
        }
        let version = *self.version.borrow();
        let now = self.clock.now();
        {
            let st = self.state();
            if st.crash_pending || st.fetching > 0 || st.releasing > 0 || !st.orch_leases.is_empty()
            {
                return false;
            }
            let running = !st.activity_leases.is_empty();
            if running || (held_too && st.held.iter().any(|h| h.release_at <= now)) {
                return false;
            }
        }
        match self.store.next_wake_time().await {
            Ok(Some(t)) if t <= now => return false,
            Err(_) => return false,
            _ => {}
        }
        *self.version.borrow() == version && self.clock.now() == now
    }

    /// A watcher of the books and the clock.
    pub(crate) fn changes(&self) -> Changes {
        Changes {
            version: self.version.subscribe(),
            time: self.clock.watch(),
        }
    }

    /// Waits until [`quiet`](Self::quiet) holds. Woken by the books and the clock; never
    /// sleeps.
    pub(crate) async fn settle(&self, held_too: bool) {
        let mut changes = self.changes();
        loop {
            changes.mark_seen();
            if self.quiet(held_too).await {
                return;
            }
            changes.next().await;
        }
    }

    /// Waits until everything due at the current time has been processed: the engine is
    /// quiet and no held result is due (the releaser applies them one by one).
    pub(crate) async fn idle(&self) {
        self.settle(true).await;
    }

    /// The next future time at which something happens: a timer fires, a delayed message or
    /// retry becomes visible, a lease expires, or a held result is due.
    pub(crate) async fn next_event_time(&self) -> Option<Timestamp> {
        let now = self.clock.now();
        let store = self.store.next_wake_time().await.ok().flatten();
        let held = self.state().held.iter().map(|h| h.release_at).min();
        store.into_iter().chain(held).filter(|t| *t > now).min()
    }

    /// A short account of what keeps the engine busy, for hang reports.
    pub(crate) fn busy_report(&self) -> String {
        use std::fmt::Write;
        let st = self.state();
        let now = self.clock.now();
        let mut out = format!("virtual time {now}; live worker epoch {}", st.epoch);
        if st.crash_pending {
            out.push_str("; restarting after a simulated crash");
        }
        if st.fetching > 0 {
            let _ = write!(out, "; {} fetches in flight", st.fetching);
        }
        if !st.orch_leases.is_empty() {
            let _ = write!(
                out,
                "; {} orchestration episodes in flight",
                st.orch_leases.len()
            );
        }
        let running: Vec<String> = st
            .activity_leases
            .values()
            .map(|l| format!("{}#{}", l.key.0, l.key.1))
            .collect();
        if !running.is_empty() {
            let _ = write!(
                out,
                "; activities still running (instance#seq): {} — an activity that awaits something \
                 outside the harness never finishes; mock it, or script it with `.hang()`",
                running.join(", ")
            );
        }
        out
    }

    // ------------------------------------------------------------------ simulation

    /// Takes the held result to release next: due now, lowest seeded rank first.
    pub(crate) fn take_due_held(&self) -> Option<Held> {
        let now = self.clock.now();
        let mut st = self.state();
        let i = st
            .held
            .iter()
            .enumerate()
            .filter(|(_, h)| h.release_at <= now)
            .min_by_key(|(_, h)| (h.rank, h.order))
            .map(|(i, _)| i)?;
        st.releasing += 1;
        let held = st.held.swap_remove(i);
        drop(st);
        self.bump();
        Some(held)
    }

    /// Applies a held result to the store (and maybe schedules a duplicate of it).
    pub(crate) async fn release(&self, held: Held) {
        let Held {
            kind,
            instance,
            key,
            attempt,
            message,
            ..
        } = held;
        match kind {
            HeldKind::Completion { id, lock } => {
                let applied = self
                    .store
                    .complete_activity(id, lock, message.clone())
                    .await
                    .is_ok();
                let mut st = self.state();
                st.sim.released += 1;
                if applied {
                    self.after_commit(&mut st);
                    let sim = self
                        .sim
                        .as_ref()
                        .expect("results are held only under simulation");
                    if sim.chance(sim.duplicate_rate, "duplicate", &key, attempt) {
                        let rank = sim.hash("duplicate-rank", &key, attempt);
                        let order = st.held_seq;
                        st.held_seq += 1;
                        let release_at = self.clock.now();
                        st.held.push(Held {
                            kind: HeldKind::Duplicate,
                            instance,
                            key,
                            attempt,
                            message,
                            release_at,
                            rank,
                            order,
                        });
                    }
                } else {
                    // The lease expired while held: the task runs again (at least once).
                    st.sim.lost += 1;
                }
            }
            HeldKind::Duplicate => {
                // The store gives the copy its own arrival number.
                let sent = self.store.send_message(&instance, message).await.is_ok();
                if sent {
                    self.state().sim.duplicates_sent += 1;
                }
            }
        }
        self.state().releasing -= 1;
        self.bump();
    }
}

/// A handle on the harness store for one worker epoch.
#[derive(Debug, Clone)]
pub(crate) struct HarnessStore {
    shared: Arc<Shared>,
    epoch: u64,
}

impl HarnessStore {
    pub(crate) fn new(shared: Arc<Shared>, epoch: u64) -> Self {
        Self { shared, epoch }
    }

    fn inner(&self) -> &MemoryStore {
        &self.shared.store
    }

    /// Locks the books, unless this handle's worker has crashed.
    /// Whether the completion of activity task `id` is lost by the simulation: it never
    /// reaches the store (for a transactional activity, the body's writes neither), the
    /// lease expires and the task runs again. A halted harness (a crash) never answers.
    async fn result_lost(&self, id: u64) -> bool {
        {
            let Some(mut st) = self.live() else {
                return halt().await;
            };
            let lost = st
                .activity_leases
                .get(&id)
                .is_some_and(|l| st.lost.contains(&l.key));
            if !lost {
                return false;
            }
            st.activity_leases.remove(&id);
        }
        self.shared.bump();
        true
    }

    fn live(&self) -> Option<MutexGuard<'_, State>> {
        let st = self.shared.state();
        (st.epoch == self.epoch).then_some(st)
    }
}

#[async_trait]
impl Store for HarnessStore {
    async fn create_instance(&self, new: NewInstance) -> Result<CreateResult, StoreError> {
        self.inner().create_instance(new).await
    }

    async fn send_message(
        &self,
        instance_id: &InstanceId,
        message: Message,
    ) -> Result<(), StoreError> {
        self.inner().send_message(instance_id, message).await
    }

    async fn fetch_orchestration_work(
        &self,
        now: Timestamp,
        lock_for: Duration,
    ) -> Result<Option<OrchestrationWorkItem>, StoreError> {
        {
            let Some(mut st) = self.live() else {
                return halt().await;
            };
            st.fetching += 1;
        }
        self.shared.bump();
        let r = self.inner().fetch_orchestration_work(now, lock_for).await;
        {
            let Some(mut st) = self.live() else {
                return halt().await;
            };
            st.fetching -= 1;
            if let Ok(Some(item)) = &r {
                st.orch_leases.insert(item.lock.0, now + lock_for);
            }
        }
        self.shared.bump();
        r
    }

    async fn commit_episode(&self, commit: EpisodeCommit) -> Result<(), StoreError> {
        if self.live().is_none() {
            return halt().await;
        }
        let token = commit.lock.0;
        let r = self.inner().commit_episode(commit).await;
        let crashed = {
            let Some(mut st) = self.live() else {
                return halt().await;
            };
            st.orch_leases.remove(&token);
            r.is_ok() && self.shared.after_commit(&mut st)
        };
        self.shared.bump();
        if crashed {
            return halt().await;
        }
        r
    }

    async fn abandon_episode(
        &self,
        instance_id: &InstanceId,
        lock: LockToken,
        retry_at: Timestamp,
        error: Option<String>,
    ) -> Result<(), StoreError> {
        if self.live().is_none() {
            return halt().await;
        }
        let r = self
            .inner()
            .abandon_episode(instance_id, lock, retry_at, error)
            .await;
        {
            let Some(mut st) = self.live() else {
                return halt().await;
            };
            st.orch_leases.remove(&lock.0);
        }
        self.shared.bump();
        r
    }

    fn activity_lease(&self, requested: Duration) -> Duration {
        self.inner().activity_lease(requested)
    }
    fn orchestration_lease(&self, requested: Duration) -> Duration {
        self.inner().orchestration_lease(requested)
    }

    // Eager dispatch (`commit_episode_eager`) is left at the trait's default (a plain
    // commit): the harness books every activity lease here, at its fetch, to know when the
    // simulation is idle, so its workers fetch every task.
    async fn fetch_activity_work(
        &self,
        now: Timestamp,
        lock_for: Duration,
        max: usize,
    ) -> Result<Vec<ActivityWorkItem>, StoreError> {
        {
            let Some(mut st) = self.live() else {
                return halt().await;
            };
            st.fetching += 1;
        }
        self.shared.bump();
        let r = self.inner().fetch_activity_work(now, lock_for, max).await;
        {
            let Some(mut st) = self.live() else {
                return halt().await;
            };
            st.fetching -= 1;
            for item in r.iter().flatten() {
                let key = (item.task.instance_id.as_str().to_owned(), item.task.seq);
                // A new delivery runs the activity again: lost only if it says so again.
                st.lost.remove(&key);
                let n = st.deliveries.entry(key.clone()).or_insert(0);
                let attempt = *n;
                *n += 1;
                st.activity_leases.insert(
                    item.id,
                    ActivityLease {
                        until: now + item.task.lease_for(lock_for),
                        key,
                        instance: item.task.instance_id.clone(),
                        attempt,
                    },
                );
            }
        }
        self.shared.bump();
        r
    }

    async fn complete_activity(
        &self,
        id: u64,
        lock: LockToken,
        result: Message,
    ) -> Result<(), StoreError> {
        if self.result_lost(id).await {
            return Ok(());
        }
        if let Some(sim) = &self.shared.sim {
            let Some(mut st) = self.live() else {
                return halt().await;
            };
            if let Some(lease) = st.activity_leases.remove(&id) {
                // Held back: the worker moves on; the harness applies the result later, in
                // the seeded order, as the store's own commit would land.
                let rank = sim.hash("rank", &lease.key, lease.attempt);
                let delay = sim.delay("delay", &lease.key, lease.attempt);
                let order = st.held_seq;
                st.held_seq += 1;
                st.sim.held += 1;
                st.held.push(Held {
                    kind: HeldKind::Completion { id, lock },
                    instance: lease.instance,
                    key: lease.key,
                    attempt: lease.attempt,
                    message: result,
                    release_at: self.shared.clock.now() + delay,
                    rank,
                    order,
                });
                drop(st);
                self.shared.bump();
                return Ok(());
            }
        }
        if self.live().is_none() {
            return halt().await;
        }
        let r = self.inner().complete_activity(id, lock, result).await;
        let crashed = {
            let Some(mut st) = self.live() else {
                return halt().await;
            };
            st.activity_leases.remove(&id);
            r.is_ok() && self.shared.after_commit(&mut st)
        };
        self.shared.bump();
        if crashed {
            return halt().await;
        }
        r
    }

    async fn complete_activity_in_transaction(
        &self,
        id: u64,
        lock: LockToken,
        run: TransactionalRun,
    ) -> Result<(), StoreError> {
        if self.result_lost(id).await {
            return Ok(());
        }
        // Never held back under simulation: the body's writes commit with the result, so
        // the store applies both at once.
        let r = self
            .inner()
            .complete_activity_in_transaction(id, lock, run)
            .await;
        let crashed = {
            let Some(mut st) = self.live() else {
                return halt().await;
            };
            st.activity_leases.remove(&id);
            r.is_ok() && self.shared.after_commit(&mut st)
        };
        self.shared.bump();
        if crashed {
            return halt().await;
        }
        r
    }

    async fn renew_activity_lock(
        &self,
        id: u64,
        lock: LockToken,
        until: Timestamp,
    ) -> Result<(), StoreError> {
        if self.live().is_none() {
            return halt().await;
        }
        let r = self.inner().renew_activity_lock(id, lock, until).await;
        if r.is_ok() {
            let Some(mut st) = self.live() else {
                return halt().await;
            };
            if let Some(l) = st.activity_leases.get_mut(&id) {
                l.until = until;
            }
        }
        r
    }

    async fn record_activity_heartbeat(
        &self,
        id: u64,
        lock: LockToken,
        details: String,
        until: Timestamp,
    ) -> Result<(), StoreError> {
        if self.live().is_none() {
            return halt().await;
        }
        let r = self
            .inner()
            .record_activity_heartbeat(id, lock, details, until)
            .await;
        if r.is_ok() {
            let Some(mut st) = self.live() else {
                return halt().await;
            };
            if let Some(l) = st.activity_leases.get_mut(&id) {
                l.until = until;
            }
        }
        r
    }

    async fn abandon_activity(
        &self,
        id: u64,
        lock: LockToken,
        retry_at: Timestamp,
    ) -> Result<(), StoreError> {
        if self.live().is_none() {
            return halt().await;
        }
        let r = self.inner().abandon_activity(id, lock, retry_at).await;
        {
            let Some(mut st) = self.live() else {
                return halt().await;
            };
            st.activity_leases.remove(&id);
        }
        self.shared.bump();
        r
    }

    async fn next_wake_time(&self) -> Result<Option<Timestamp>, StoreError> {
        if self.live().is_none() {
            return halt().await;
        }
        self.inner().next_wake_time().await
    }

    async fn count_instances(
        &self,
        query: &InstanceQuery,
    ) -> Result<Vec<(RuntimeStatus, u64)>, StoreError> {
        if self.live().is_none() {
            return halt().await;
        }
        self.inner().count_instances(query).await
    }

    async fn queue_depths(&self, now: Timestamp) -> Result<Option<QueueDepths>, StoreError> {
        if self.live().is_none() {
            return halt().await;
        }
        self.inner().queue_depths(now).await
    }

    async fn next_wake_time_for(&self, kind: WorkKind) -> Result<Option<Timestamp>, StoreError> {
        if self.live().is_none() {
            return halt().await;
        }
        self.inner().next_wake_time_for(kind).await
    }

    async fn read_instance(
        &self,
        instance_id: &InstanceId,
    ) -> Result<Option<InstanceRecord>, StoreError> {
        self.inner().read_instance(instance_id).await
    }

    async fn read_history(
        &self,
        instance_id: &InstanceId,
    ) -> Result<Vec<HistoryEvent>, StoreError> {
        self.inner().read_history(instance_id).await
    }

    async fn query_instances(&self, query: &InstanceQuery) -> Result<InstancePage, StoreError> {
        self.inner().query_instances(query).await
    }

    async fn purge_instance(&self, instance_id: &InstanceId) -> Result<bool, StoreError> {
        self.inner().purge_instance(instance_id).await
    }

    async fn purge_finished_instance(
        &self,
        instance_id: &InstanceId,
        finished_by: Timestamp,
    ) -> Result<bool, StoreError> {
        self.inner()
            .purge_finished_instance(instance_id, finished_by)
            .await
    }

    fn signals(&self) -> &StoreSignals {
        self.inner().signals()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use durable_core::storage::conformance;
    use durable_core::{MemoryStore, Store};

    use super::{CrashPlan, HarnessStore, Shared};
    use crate::clock::ManualClock;

    /// The harness store is a `Store` like any other: it passes the conformance suite.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn passes_the_store_conformance_suite() {
        conformance::run_all(|| {
            let shared = Shared::new(
                MemoryStore::new(),
                ManualClock::default(),
                None,
                CrashPlan::Never,
            );
            let epoch = shared.epoch();
            Arc::new(HarnessStore::new(Arc::new(shared), epoch)) as Arc<dyn Store>
        })
        .await;
    }
}
