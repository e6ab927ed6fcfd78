//! The orchestration dispatcher: lease an instance, run one episode, commit it.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tracing::Instrument;

use super::activity::Eager;
use super::cascade::is_meant_for;
use super::handoff::HandedOff;
use super::lifecycle;
use super::meters::{self, Label, Stopwatch};
use super::rewind::ChildAction;
use super::{Inner, VersionMatch, VersionMismatchAction};
use crate::error::{FailureDetails, StoreError};
use crate::history::{Event, ParentRef, RuntimeStatus};
use crate::ids::{InstanceId, Timestamp};
use crate::replay::rewind::RewindPlan;
use crate::replay::{Command, EpisodeResult, Outcome, ReplayError, Replayer};
use crate::storage::{
    EpisodeCommit, IdReusePolicy, Message, NewInstance, NextExecution, OrchestrationWorkItem,
    WorkKind,
};

/// Runs until shutdown: fetch work, spawn episodes, sleep until the next due time.
///
/// Work comes from the store (inbox messages) and from activities that completed in this
/// worker ([`handoff`](super::handoff)); the two take turns going first so neither starves
/// the other. Every free slot is filled with one fetch.
pub(crate) async fn dispatch(inner: Arc<Inner>) {
    let mut running = JoinSet::new();
    let mut shutdown = inner.shutdown.clone();
    let mut store_first = false;
    loop {
        while running.try_join_next().is_some() {}
        if inner.is_shutting_down() {
            break;
        }
        // A shutdown ends the wait for a slot (see `release_created`).
        let first = tokio::select! {
            biased;
            permit = Arc::clone(&inner.orch_slots).acquire_owned() => permit,
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break;
                }
                continue;
            }
        };
        let Ok(first) = first else {
            break;
        };
        let mut permits = vec![first];
        while let Ok(p) = Arc::clone(&inner.orch_slots).try_acquire_owned() {
            permits.push(p);
        }
        let signals = inner.store.signals();
        let notified = signals.orchestration.notified();
        let handed_off = inner.handoff_ready.notified();
        store_first = !store_first;
        let fetched_at = inner.clock.now();
        // Instances created leased go first: their leases are running.
        let mut started = start_created(&inner, &mut running, &mut permits);
        if !store_first {
            started += start_handed_off(&inner, &mut running, &mut permits).await;
        }
        let fetched = if permits.is_empty() {
            Ok(0)
        } else {
            fetch_from_store(&inner, &mut running, &mut permits).await
        };
        if store_first {
            started += start_handed_off(&inner, &mut running, &mut permits).await;
        }
        // A slot left over: both sources gave less than asked for, so wait for new work
        // rather than fetch again at once (and the episodes just spawned start first).
        let drained = !permits.is_empty();
        drop(permits);
        match fetched {
            Ok(n) if n + started > 0 && !drained => {}
            Ok(_) => {
                let woken = async {
                    tokio::select! {
                        () = notified => {}
                        () = handed_off => {}
                    }
                };
                super::idle(
                    &inner,
                    WorkKind::Orchestration,
                    fetched_at,
                    woken,
                    &mut shutdown,
                )
                .await;
            }
            Err(e) => {
                tracing::error!(error = %e, "fetching orchestration work failed");
                if started == 0 {
                    let retry = inner.clock.now() + Duration::from_millis(500);
                    tokio::select! {
                        () = inner.clock.sleep_until(retry) => {}
                        _ = shutdown.changed() => {}
                    }
                }
            }
        }
    }
    release_created(&inner).await;
    super::kept::release_all(&inner).await;
    while running.join_next().await.is_some() {}
}

/// Gives back the leases of instances this worker created leased whose episodes it never
/// started (it is stopping), so that another worker takes them now rather than once the
/// leases run out; any queued after this are given back by whoever queues them.
async fn release_created(inner: &Inner) {
    let items: Vec<_> = {
        let mut created = lock_cache(&inner.created);
        created.closed = true;
        created.items.drain(..).collect()
    };
    for (item, _) in items {
        give_back(inner, &item).await;
    }
}

/// Ends the lease of an instance created leased without running its episode: any worker
/// may take it at once.
async fn give_back(inner: &Inner, item: &OrchestrationWorkItem) {
    if inner.aborted.load(std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    let id = &item.instance.instance_id;
    let now = inner.clock.now();
    match inner.store.abandon_episode(id, item.lock, now, None).await {
        Ok(()) | Err(StoreError::LockLost(_)) => {}
        Err(e) => {
            tracing::warn!(instance = %id, error = %e, "giving back the lease of a new instance failed; it is taken once the lease runs out");
        }
    }
}

type Permit = tokio::sync::OwnedSemaphorePermit;

/// Fetches up to one item per permit from the store and spawns their episodes.
async fn fetch_from_store(
    inner: &Arc<Inner>,
    running: &mut JoinSet<()>,
    permits: &mut Vec<Permit>,
) -> Result<usize, StoreError> {
    let now = inner.clock.now();
    let items = inner
        .store
        .fetch_orchestration_batch(now, inner.options.orchestration_lock, permits.len())
        .await?;
    let n = items.len();
    for item in items {
        let Some(permit) = permits.pop() else {
            break;
        };
        spawn_episode(inner, running, item, permit, now);
    }
    Ok(n)
}

/// Leases instances that have handed-off results and spawns their episodes; the results of
/// instances the store will not lease (someone else holds them) are written to the store
/// instead. Returns how many episodes started.
async fn start_handed_off(
    inner: &Arc<Inner>,
    running: &mut JoinSet<()>,
    permits: &mut Vec<Permit>,
) -> usize {
    let mut ids = inner.handoffs().next_ready(permits.len());
    if ids.is_empty() {
        return 0;
    }
    // Those whose leases their commits kept run under them; the others are leased now.
    let mut items: Vec<(OrchestrationWorkItem, Timestamp)> = Vec::new();
    let mut to_lease = Vec::new();
    for id in &ids {
        match super::kept::take(inner, id).await {
            Some(kept) => items.push(kept),
            None => to_lease.push(id.clone()),
        }
    }
    let now = inner.clock.now();
    if !to_lease.is_empty() {
        match inner
            .store
            .fetch_instances_work(&to_lease, now, inner.options.orchestration_lock)
            .await
        {
            Ok(fetched) => items.extend(fetched.into_iter().map(|item| (item, now))),
            Err(e) => tracing::warn!(error = %e, "leasing instances failed"),
        }
    }
    let leased: std::collections::HashSet<InstanceId> = items
        .iter()
        .map(|(i, _)| i.instance.instance_id.clone())
        .collect();
    ids.retain(|id| !leased.contains(id));
    let n = items.len();
    for (item, leased_at) in items {
        let Some(permit) = permits.pop() else {
            break;
        };
        spawn_episode(inner, running, item, permit, leased_at);
    }
    let unleased: Vec<_> = {
        let mut h = inner.handoffs();
        ids.iter().flat_map(|id| h.take(id)).collect()
    };
    if !unleased.is_empty() {
        let inner = Arc::clone(inner);
        running.spawn(async move { super::handoff::write_through(&inner, unleased).await });
    }
    n
}

/// Spawns the episode of a leased instance, with the results handed off for it.
fn spawn_episode(
    inner: &Arc<Inner>,
    running: &mut JoinSet<()>,
    item: OrchestrationWorkItem,
    permit: tokio::sync::OwnedSemaphorePermit,
    leased_at: Timestamp,
) {
    let handed = inner
        .handoffs()
        .begin(&item.instance.instance_id, item.lock);
    let inner = Arc::clone(inner);
    let id = item.instance.instance_id.clone();
    let span = episode_span(&item);
    // Boxed: the episode's state machine is kilobytes, and a task moves its future several
    // times (into the task cell, out of it when done); a box moves once.
    let episode = Box::pin(run_episode(
        Arc::clone(&inner),
        item,
        handed,
        permit,
        leased_at,
    ));
    running.spawn(async move {
        let (again, eager) = episode.instrument(span).await;
        if again || eager.is_some() {
            // Boxed: what follows the episode is rare enough, and the task's future is
            // moved as it is spawned.
            Box::pin(async move {
                if let Some(next) = next_here(&inner, id, again, eager).await {
                    run_ready_here(&inner, next).await;
                }
            })
            .await;
        }
    });
}

/// What the task that ran an episode of `id` does next: runs the activity task the
/// episode's commit leased to it, if any, and answers the instance to run an episode of
/// here — `id` when its results were queued meanwhile (`again`), the eager activity's
/// orchestration when its result queued it. With both, the dispatcher is woken for `id`
/// rather than have its results wait for the activity.
async fn next_here(
    inner: &Arc<Inner>,
    id: InstanceId,
    again: bool,
    eager: Option<Eager>,
) -> Option<InstanceId> {
    let Some(eager) = eager else {
        return again.then_some(id);
    };
    if again {
        inner.handoff_ready.notify_one();
    }
    // Boxed, as episodes and runs are: the callers' futures (every activity task's among
    // them, through `run_ready_here`) stay small to move.
    Box::pin(super::activity::run_eager(inner, eager)).await
}

fn episode_span(item: &OrchestrationWorkItem) -> tracing::Span {
    tracing::info_span!("episode", instance = %item.instance.instance_id, name = %item.instance.name)
}

/// Runs the next episodes of `id` on the calling task while results wait for it — it was
/// just queued by its previous episode's end or by an activity that handed its result off
/// here — as long as its lease is at hand (the store leases in process, or the commit that
/// leased its activity here kept it: [`kept`](super::kept)), an orchestration slot is free
/// and no other instance waits for the dispatcher; otherwise the dispatcher is woken to
/// start it (with the others, in one lease). A chain of steps (one activity result after
/// another) so skips a hop through the dispatcher per step.
pub(crate) async fn run_ready_here(inner: &Arc<Inner>, mut id: InstanceId) {
    let in_process = inner.store.leases_in_process();
    loop {
        if inner.is_shutting_down() || inner.aborted.load(std::sync::atomic::Ordering::SeqCst) {
            // A shutdown writes queued results through (and gives kept leases back); an
            // aborted worker starts nothing.
            return;
        }
        if !in_process && !inner.kept().contains(&id) {
            // A lease per instance would cost a round trip each (PostgreSQL): the
            // dispatcher leases the waiting instances together.
            inner.handoff_ready.notify_one();
            return;
        }
        let Ok(permit) = Arc::clone(&inner.orch_slots).try_acquire_owned() else {
            // Every slot is taken: the dispatcher runs the episode when one frees, under
            // the kept lease if there is one (giving it back instead if it waited half a
            // lease: `kept::take`). Giving it back now would cost a write per step when
            // the worker is saturated, while the result waits for this worker's slot
            // all the same.
            inner.handoff_ready.notify_one();
            return;
        };
        if !inner.handoffs().claim(&id) {
            // Another task has it, or the dispatcher takes it with the others waiting.
            inner.handoff_ready.notify_one();
            return;
        }
        // Until the episode begins or the claim is given up: a task dropped meanwhile (an
        // aborted worker, a panicking store) leaves the results queued for the dispatcher.
        let claim = Claim {
            inner,
            id: Some(&id),
        };
        let kept = super::kept::take(inner, &id).await;
        let (leased, now) = match kept {
            Some((item, leased_at)) => (Some(item), leased_at),
            // Given back meanwhile (its hold ran out, or it waited too long): the claim,
            // dropped, queues it for the dispatcher, which leases it.
            None if !in_process => return,
            None => {
                let now = inner.clock.now();
                let leased = match inner
                    .store
                    .fetch_instances_work(
                        std::slice::from_ref(&id),
                        now,
                        inner.options.orchestration_lock,
                    )
                    .await
                {
                    Ok(items) => items.into_iter().next(),
                    Err(e) => {
                        tracing::warn!(instance = %id, error = %e, "leasing an instance failed");
                        None
                    }
                };
                (leased, now)
            }
        };
        claim.settled();
        let Some(item) = leased else {
            let unleased = inner.handoffs().unclaim(&id);
            super::handoff::write_through(inner, unleased).await;
            return;
        };
        let handed = inner
            .handoffs()
            .begin(&item.instance.instance_id, item.lock);
        let span = episode_span(&item);
        id = item.instance.instance_id.clone();
        let (again, eager) = Box::pin(run_episode(Arc::clone(inner), item, handed, permit, now))
            .instrument(span)
            .await;
        match next_here(inner, id, again, eager).await {
            Some(next) => id = next,
            None => return,
        }
    }
}

/// A claim of [`run_ready_here`] while it leases the instance; dropped unsettled, it puts
/// the instance back in the dispatcher's queue.
struct Claim<'a> {
    inner: &'a Inner,
    id: Option<&'a InstanceId>,
}

impl Claim<'_> {
    /// The lease was answered: the caller begins the episode or gives the claim up.
    fn settled(mut self) {
        self.id = None;
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id
            && self.inner.handoffs().requeue_claimed(id)
        {
            self.inner.handoff_ready.notify_one();
        }
    }
}

fn lock_cache<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Why an episode could not run; the instance is left as it is and retried later.
pub(crate) enum Stuck {
    Error(String),
    /// The code does not replay its history (non-determinism) or awaits something that is
    /// not durable.
    Replay(ReplayError),
    Store(StoreError),
}

/// Runs one episode and settles its results; `true` when results for the instance are
/// queued again (for [`run_ready_here`]), and the activity task its commit leased to this
/// worker ([`next_here`] runs both).
async fn run_episode(
    inner: Arc<Inner>,
    item: OrchestrationWorkItem,
    mut handed: Vec<HandedOff>,
    permit: Permit,
    leased_at: Timestamp,
) -> (bool, Option<Eager>) {
    let inner = &*inner;
    let id = item.instance.instance_id.clone();
    let lock = item.lock;
    // The diagnostic the instance was last held back with (`None` unless it is stuck).
    let reported = item.instance.last_error.clone();
    let mut permit = Some(permit);
    let mut eager = None;
    let result = try_episode(
        inner,
        item,
        leased_at,
        &mut handed,
        &mut permit,
        None,
        &mut eager,
    )
    .await;
    drop(permit);
    // Results the episode did not commit (it failed, or took a path that does not deliver
    // them) are written to the store; so are those that arrived meanwhile if it failed
    // (a stuck instance keeps its back-off), otherwise they are queued for the next episode.
    let (queued, late) = inner.handoffs().end(&id, lock, result.is_ok());
    handed.extend(late);
    super::handoff::write_through(inner, handed).await;
    match result {
        Ok(()) => {
            let mut stuck = lock_cache(&inner.stuck);
            if stuck.remove(&id).is_some() {
                meters::unstuck(stuck.len());
            }
        }
        Err(Stuck::Store(StoreError::LockLost(_))) => {
            lifecycle::lease_lost("episode", &id, None);
            evict(inner, &id);
            // Another worker owns the instance now: it is no longer this worker's to hold.
            let mut stuck = lock_cache(&inner.stuck);
            if stuck.remove(&id).is_some() {
                meters::unstuck(stuck.len());
            }
        }
        Err(Stuck::Store(e)) => {
            tracing::error!(instance = %id, error = %e, "episode commit failed");
            evict(inner, &id);
            let retry_at = inner.clock.now() + Duration::from_millis(500);
            let _ = inner
                .store
                .abandon_episode(&id, lock, retry_at, Some(e.to_string()))
                .await;
        }
        Err(Stuck::Error(msg)) => hold_stuck(inner, &id, lock, msg, false, reported).await,
        Err(Stuck::Replay(e)) => {
            let nondeterminism = matches!(e, ReplayError::Nondeterminism { .. });
            hold_stuck(inner, &id, lock, e.to_string(), nondeterminism, reported).await;
        }
    }
    (queued, eager)
}

/// Leaves a stuck instance as it is, to be retried after a back-off that grows with each
/// attempt. Reported as an error when it becomes stuck or its diagnostic changes (the
/// diagnostic is kept as the instance's `last_error`, so a restart does not report it
/// again), at debug level on every retry after that.
async fn hold_stuck(
    inner: &Inner,
    id: &InstanceId,
    lock: crate::storage::LockToken,
    msg: String,
    nondeterminism: bool,
    reported: Option<String>,
) {
    evict(inner, id);
    let (attempts, held) = {
        let mut stuck = lock_cache(&inner.stuck);
        let n = stuck.entry(id.clone()).or_insert(0);
        *n += 1;
        (*n, stuck.len())
    };
    let backoff = Duration::from_millis(250u64.saturating_mul(1u64 << attempts.min(16)))
        .min(inner.options.max_stuck_backoff);
    meters::stuck_episode(held);
    let first = reported.as_deref() != Some(msg.as_str());
    lifecycle::stuck(id, nondeterminism, &msg, attempts, backoff, first);
    let retry_at = inner.clock.now() + backoff;
    if let Err(e) = inner
        .store
        .abandon_episode(id, lock, retry_at, Some(msg))
        .await
    {
        tracing::warn!(instance = %id, error = %e, "could not abandon episode");
    }
}

fn evict(inner: &Inner, id: &InstanceId) {
    if let Some(c) = lock_cache(&inner.cache).as_mut() {
        c.pop(id);
    }
}

fn version_allowed(inner: &Inner, version: Option<&str>) -> bool {
    let mine = inner.options.version.as_deref();
    match inner.options.version_match {
        VersionMatch::Any => true,
        VersionMatch::Strict => version == mine,
        VersionMatch::CurrentOrOlder => match (version, mine) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(v), Some(m)) => compare_versions(v, m) != std::cmp::Ordering::Greater,
        },
    }
}

/// Compares dotted versions numerically where both parts are numbers (`1.10 > 1.9`).
pub(crate) fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    let mut pa = a.split('.');
    let mut pb = b.split('.');
    loop {
        match (pa.next(), pb.next()) {
            (None, None) => return std::cmp::Ordering::Equal,
            (Some(_), None) => return std::cmp::Ordering::Greater,
            (None, Some(_)) => return std::cmp::Ordering::Less,
            (Some(x), Some(y)) => {
                let ord = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(x), Ok(y)) => x.cmp(&y),
                    _ => x.cmp(y),
                };
                if ord != std::cmp::Ordering::Equal {
                    return ord;
                }
            }
        }
    }
}

/// One episode: the instance's messages (and the results handed off for it in memory) go
/// to its code, which runs from its cached or replayed state; what the code schedules as
/// local activities runs here; the outcome is committed in one write (with the instance's
/// creation, for a first episode). An instance that cannot run here and now is set aside
/// instead: late messages to a finished instance dropped, a scheduled start waited for, a
/// version it does not run failed or left pending.
async fn try_episode(
    inner: &Inner,
    item: OrchestrationWorkItem,
    leased_at: Timestamp,
    handed: &mut Vec<HandedOff>,
    permit: &mut Option<Permit>,
    mut first: Option<&mut First>,
    eager: &mut Option<Eager>,
) -> Result<(), Stuck> {
    let OrchestrationWorkItem {
        instance,
        history_len,
        mut messages,
        lock,
    } = item;
    let id = instance.instance_id.clone();
    let now = inner.clock.now();
    let watch = Stopwatch::start();

    // The start of an execution is always delivered first.
    messages.sort_by_key(|m| !matches!(m.event, Event::ExecutionStarted { .. }));

    let rewind = match take_rewind(inner, &instance, &mut messages).await? {
        Ok(rewind) => rewind,
        Err(declined) => {
            return drop_late_messages(inner, &instance, lock, &messages, Some(declined), handed)
                .await;
        }
    };
    if instance.status.is_terminal() && rewind.is_none() {
        // Late messages to a finished instance are consumed and dropped.
        return drop_late_messages(inner, &instance, lock, &messages, None, handed).await;
    }
    if id.as_str().starts_with('@') {
        return super::entity::run_batch(inner, instance, messages, lock, now).await;
    }
    if waits_for_its_start(&instance, history_len, &messages) {
        return hold_until_start(inner, &instance, lock, now).await;
    }
    if !version_allowed(inner, instance.version.as_deref()) {
        return fail_version_mismatch(inner, &instance, lock, &messages, handed, now).await;
    }
    let Some(entry) = inner.registry.orchestrator(&instance.name) else {
        return Err(Stuck::Error(format!(
            "no orchestrator named `{}` is registered on this worker; the instance stays pending until a worker that knows it picks it up",
            instance.name
        )));
    };

    let fresh = first.is_some();
    let mut replayer =
        match load_replayer(inner, &instance, history_len, entry, rewind.as_ref(), fresh).await? {
            Ok(r) => r,
            Err(e) => {
                let Some((_, request)) = rewind else {
                    return Err(Stuck::Replay(e));
                };
                // The code does not replay the rewound history (it changed since the
                // failure, say): the instance stays as it failed.
                let why = format!("its code no longer replays the failed history: {e}");
                return drop_late_messages(
                    inner,
                    &instance,
                    lock,
                    &messages,
                    Some((request, why)),
                    handed,
                )
                .await;
            }
        };

    replayer.begin_episode(now);
    let delivered = deliver(&mut replayer, &instance, messages, handed, rewind.as_ref());
    if let Some(first) = first
        .as_deref_mut()
        .filter(|_| replayer.has_local_activities())
    {
        // Local steps run in the worker, not in the starting client's call: `start`
        // returns once the instance is stored, and runs no user code. Nothing is written
        // here: the instance is created leased to this worker, which runs the episode
        // again at once (`run_first`), or the ordinary way.
        first.locals = true;
        return Ok(());
    }
    super::local::run(inner, &mut replayer, &instance, leased_at).await;
    let mut result = replayer.finish_episode().map_err(Stuck::Replay)?;
    let finished = result.outcome.is_some();
    let cascade =
        terminate_cascade(inner, &instance, &result, delivered.late_terminate, now).await?;
    let mut report = lifecycle::Episode::observe(&mut result);
    let mut commit = build_commit(&instance, lock, now, delivered.consumed, result);
    commit.messages.extend(cascade);
    if let Some((r, _)) = rewind {
        report_rewind(&mut report, &r);
        apply_rewind(&mut commit, &instance, r, now);
    }
    release_unwanted_locks(&id, &delivered.stale, &mut commit, now);
    commit.completed_activities = handed.iter().map(|h| (h.task, h.lock)).collect();
    #[cfg(feature = "opentelemetry")]
    let trace = crate::otel::ExecutionTrace::stamp_episode(&instance, &replayer, &mut commit);
    // The slot bounds episodes computing at once; waiting for the group commit is not
    // computing, and letting the next episode start fills the next batch. The instance
    // stays leased until the commit is done, so nothing else runs it meanwhile.
    drop(permit.take());
    if !write(inner, commit, first, eager, (&instance, history_len)).await? {
        return Ok(());
    }
    handed.clear();
    let orchestrator = Label::Static(entry.name);
    report.emit(&instance, &orchestrator, now);
    meters::episode(&orchestrator, &watch);
    // Emitted once the end is durable: a crash before this commit re-runs the episode.
    #[cfg(feature = "opentelemetry")]
    if let Some(trace) = trace {
        trace.finish(&inner.tracer, inner.clock.now());
    }
    if !finished && let Some(c) = lock_cache(&inner.cache).as_mut() {
        c.put(id, replayer);
    }
    Ok(())
}

/// Adds the rewind's lifecycle event to the episode's report.
fn report_rewind(report: &mut lifecycle::Episode, r: &Rewind) {
    if let Event::ExecutionRewound { reason, seqs } = &r.marker.event {
        report.rewound(
            reason,
            seqs.len(),
            r.plan.activities.len(),
            r.plan.timers.len(),
            r.plan.children.len(),
        );
    }
}

/// A rewind request to apply, and the id of the message that carried it.
type RewindRequest = (Rewind, crate::storage::MessageId);

/// Takes a rewind request out of a failed instance's messages: `Ok(Some(..))` to apply,
/// `Ok(None)` when there is none, `Err((request, why))` when this worker declines it. The
/// request is consumed once applied or declined (a worker of the wrong version that leaves
/// work pending leaves it in the inbox); the messages around it are delivered (rewound) or
/// dropped (declined) like any others.
async fn take_rewind(
    inner: &Inner,
    instance: &crate::storage::InstanceRecord,
    messages: &mut Vec<Message>,
) -> Result<Result<Option<RewindRequest>, (crate::storage::MessageId, String)>, Stuck> {
    if instance.status != RuntimeStatus::Failed {
        return Ok(Ok(None));
    }
    let Some(pos) = messages
        .iter()
        .position(|m| matches!(m.event, Event::ExecutionRewound { .. }))
    else {
        return Ok(Ok(None));
    };
    let request = messages.remove(pos);
    Ok(match prepare_rewind(inner, instance, &request).await? {
        Ok(r) => Ok(Some((r, request.id))),
        Err(why) => Err((request.id, why)),
    })
}

/// Whether the instance has not started and none of `messages` starts (or terminates) it:
/// messages that arrive before a scheduled start wait for it (a terminate does not).
fn waits_for_its_start(
    instance: &crate::storage::InstanceRecord,
    history_len: u64,
    messages: &[Message],
) -> bool {
    history_len == 0
        && !messages.iter().any(|m| {
            matches!(
                m.event,
                Event::ExecutionStarted { .. } | Event::ExecutionTerminated { .. }
            ) && is_meant_for(&m.event, instance)
        })
}

/// Sets a not yet started instance aside until its scheduled start or, when the start
/// itself is held back (by a version mismatch, say), for a second, keeping the reason
/// visible.
async fn hold_until_start(
    inner: &Inner,
    instance: &crate::storage::InstanceRecord,
    lock: crate::storage::LockToken,
    now: Timestamp,
) -> Result<(), Stuck> {
    let start = instance
        .scheduled_start
        .unwrap_or(now + Duration::from_secs(1))
        .max(now + Duration::from_millis(1));
    inner
        .store
        .abandon_episode(
            &instance.instance_id,
            lock,
            start,
            instance.last_error.clone(),
        )
        .await
        .map_err(Stuck::Store)
}

/// An instance of a version this worker does not run: left pending for a worker that does
/// (`VersionMismatchAction::LeavePending`), or failed without running any code — which
/// then does by hand what a failing execution does: tell the parent, and release the
/// entity locks it holds or is being granted.
async fn fail_version_mismatch(
    inner: &Inner,
    instance: &crate::storage::InstanceRecord,
    lock: crate::storage::LockToken,
    messages: &[Message],
    handed: &mut Vec<HandedOff>,
    now: Timestamp,
) -> Result<(), Stuck> {
    let id = &instance.instance_id;
    let msg = format!(
        "instance version {:?} does not match this worker's version {:?} ({:?})",
        instance.version, inner.options.version, inner.options.version_match
    );
    if inner.options.on_version_mismatch == VersionMismatchAction::LeavePending {
        return Err(Stuck::Error(msg));
    }
    let failure = FailureDetails::new("VersionMismatch", msg).non_retriable();
    let mut commit = EpisodeCommit::new(id.clone(), lock, RuntimeStatus::Failed, now);
    commit.consumed = messages.iter().map(|m| m.id).collect();
    commit.failure = Some(failure.clone());
    if let Some(parent) = &instance.parent {
        commit
            .messages
            .push(Message::child_failed(parent, failure.clone(), now));
    }
    let history = inner.store.read_history(id).await.map_err(Stuck::Store)?;
    for entity in crate::storage::replace::held_locks(&history) {
        let unlock = Event::EntityUnlock {
            owner: id.clone(),
            execution: Some(instance.execution),
        };
        commit
            .messages
            .push((entity, Message::new(unlock, None, now)));
    }
    release_unwanted_locks(id, messages, &mut commit, now);
    commit.completed_activities = handed.iter().map(|h| (h.task, h.lock)).collect();
    #[cfg(feature = "opentelemetry")]
    let trace = commit
        .failure
        .as_ref()
        .and_then(|f| crate::otel::ExecutionTrace::failed_unrun(instance, &history, messages, f));
    inner
        .store
        .commit_episode(commit)
        .await
        .map_err(Stuck::Store)?;
    handed.clear();
    // A name no worker registered stays out of the labels (any client can stamp one).
    let orchestrator = inner
        .registry
        .orchestrator(&instance.name)
        .map_or(Label::Static("unknown"), |e| Label::Static(e.name));
    lifecycle::failed_unrun(instance, &orchestrator, &failure);
    #[cfg(feature = "opentelemetry")]
    if let Some(trace) = trace {
        trace.finish(&inner.tracer, inner.clock.now());
    }
    Ok(())
}

/// The instance's replayer at the end of its history: from the cache when it holds this
/// execution at this length (never for a rewind), else replayed from the stored history
/// (none for a `fresh` first episode) with the rewind's marker appended. `Ok(Err(..))`
/// when the code does not replay that history.
async fn load_replayer(
    inner: &Inner,
    instance: &crate::storage::InstanceRecord,
    history_len: u64,
    entry: &crate::registry::OrchestratorEntry,
    rewind: Option<&RewindRequest>,
    fresh: bool,
) -> Result<Result<Replayer, ReplayError>, Stuck> {
    let id = &instance.instance_id;
    let cached = lock_cache(&inner.cache)
        .as_mut()
        .and_then(|c| c.pop(id))
        .filter(|r| r.execution() == instance.execution && r.history_len() == history_len)
        .filter(|_| rewind.is_none());
    super::meters::cache_lookup(cached.is_some());
    if let Some(r) = cached {
        return Ok(Ok(r));
    }
    let mut history = if fresh {
        Vec::new()
    } else {
        inner.store.read_history(id).await.map_err(Stuck::Store)?
    };
    if let Some((r, _)) = rewind {
        history.push(r.marker.clone());
    }
    let mut r = Replayer::new(
        id.clone(),
        instance.execution,
        &instance.name,
        Arc::clone(&entry.run),
        inner.options.limits.clone(),
    );
    Ok(r.handle_history(&history).map(|()| r))
}

/// What [`deliver`] consumed and set aside.
struct Delivered {
    /// The messages the commit removes from the inbox.
    consumed: Vec<crate::storage::MessageId>,
    /// Results for an earlier execution or the failed run of a rewind: their entity locks
    /// are released.
    stale: Vec<Message>,
    /// A terminate that arrived after the execution finished in this episode: it still
    /// reaches the descendants left running.
    late_terminate: Option<String>,
}

/// Delivers the inbox, then the results handed off in memory (they completed after the
/// inbox was read), to the replayer; messages for the next execution stay in the inbox.
fn deliver(
    replayer: &mut Replayer,
    instance: &crate::storage::InstanceRecord,
    messages: Vec<Message>,
    handed: &[HandedOff],
    rewind: Option<&RewindRequest>,
) -> Delivered {
    let id = &instance.instance_id;
    let mut out = Delivered {
        consumed: Vec::with_capacity(messages.len() + 1),
        stale: Vec::new(),
        late_terminate: None,
    };
    if let Some((_, request)) = rewind {
        out.consumed.push(*request);
    }
    for m in messages {
        if rewind.is_some() && m.event.result_seq().is_some() {
            // A result queued for the failed run: the rewind re-drives that work, and its
            // fresh result is the one that counts.
            out.consumed.push(m.id);
            out.stale.push(m);
            continue;
        }
        if matches!(m.event, Event::ExecutionRewound { .. }) {
            // Only a failed execution can be rewound; this one is not failed.
            tracing::debug!(instance = %id, "rewind request for an instance that has not failed dropped");
            out.consumed.push(m.id);
            continue;
        }
        if replayer.defers_to_next_execution(&m.event) {
            // Left in the inbox: it applies to the execution that starts next.
            continue;
        }
        out.consumed.push(m.id);
        if m.execution.is_some_and(|e| e != instance.execution) {
            tracing::debug!(instance = %id, kind = m.event.kind(), "message for an earlier execution dropped");
            out.stale.push(m);
            continue;
        }
        if !is_meant_for(&m.event, instance) {
            tracing::debug!(instance = %id, "a parent's terminate for an earlier instance under this id dropped");
            continue;
        }
        let terminate = match &m.event {
            Event::ExecutionTerminated { reason, .. } => Some(reason.clone()),
            _ => None,
        };
        if !replayer.handle_message(m.event) && terminate.is_some() {
            out.late_terminate = out.late_terminate.take().or(terminate);
        }
    }
    if rewind.is_some() {
        // Results of the failed run, like those in the inbox above.
        return out;
    }
    for h in handed {
        if h.message.execution.is_some_and(|e| e != instance.execution) {
            tracing::debug!(instance = %id, "result for an earlier execution dropped");
            continue;
        }
        replayer.handle_message(h.message.event.clone());
    }
    out
}

/// Writes the episode's commit — with the instance's creation for a first episode.
/// `Ok(false)` when nothing was written: a first episode of a stopped worker, or one the
/// store declined (the id is taken); the instance is then created the ordinary way.
///
/// An ordinary commit leases one of its new activity tasks to this worker when it can
/// run it now ([`pick_eager`](super::activity::pick_eager)): set in `eager`. A first
/// episode does not (the starting client's call must not run an activity). Where the
/// store can, such a commit also keeps the instance leased for the episode that takes the
/// task's result ([`kept`](super::kept)); `before` is the instance's record and history
/// length the episode ran from.
async fn write(
    inner: &Inner,
    mut commit: EpisodeCommit,
    first: Option<&mut First>,
    eager: &mut Option<Eager>,
    before: (&crate::storage::InstanceRecord, u64),
) -> Result<bool, Stuck> {
    let Some(first) = first else {
        let Some((task, promise)) = super::activity::pick_eager(inner, &commit) else {
            inner
                .store
                .commit_episode(commit)
                .await
                .map_err(Stuck::Store)?;
            return Ok(true);
        };
        // Not for a transactional activity: its result is written to the store, not
        // handed to an episode here. Nor while results wait for the dispatcher: a
        // saturated worker's results wait for slots, and a kept lease would hold the
        // instance's messages back as long.
        let keep = inner.store.keeps_lease_for_eager()
            && inner
                .registry
                .activity(&commit.activities[task].name)
                .is_some()
            && inner.handoffs().none_waiting();
        let after = keep.then(|| {
            commit.keep_lease = Some(inner.options.orchestration_lock);
            super::kept::item_after(before.0, before.1, &commit)
        });
        // The lease starts now, not when the episode did (its steps may have taken long).
        let now = inner.clock.now();
        let leased = inner
            .store
            .commit_episode_eager(commit, task, now, inner.activity_lease)
            .await
            .map_err(Stuck::Store)?;
        let Some(item) = leased else {
            return Ok(true);
        };
        // The store kept the instance's lease with the task's (it keeps both or neither).
        let kept = match after {
            Some(after) => super::kept::keep(inner, after, now)
                .await
                .map(|ticket| (ticket, super::kept::hold_until(inner, now))),
            None => None,
        };
        *eager = Some(Eager::new(inner, item, now, promise, kept));
        return Ok(true);
    };
    let Some(new) = first.new.take() else {
        return Err(Stuck::Error(
            "internal error: a first episode ran twice".to_owned(),
        ));
    };
    if inner.is_shutting_down() || inner.aborted.load(std::sync::atomic::Ordering::SeqCst) {
        return Ok(false);
    }
    first.attempted = true;
    first.created = inner
        .store
        .create_started(new, commit)
        .await
        .map_err(Stuck::Store)?;
    Ok(first.created.is_some())
}

/// A first episode run by the starting client's worker ([`FirstEpisode`]): the instance to
/// create with it, and what the store did.
struct First {
    new: Option<NewInstance>,
    /// The episode runs local activities: it was not written.
    locals: bool,
    /// The store was asked (its error is then the start's error).
    attempted: bool,
    created: Option<crate::storage::InstanceRecord>,
}

impl crate::client::FirstEpisode for Inner {
    fn create_started<'a>(
        &'a self,
        new: &'a NewInstance,
    ) -> crate::registry::BoxFuture<'a, Result<Option<crate::storage::InstanceRecord>, StoreError>>
    {
        Box::pin(run_first(self, new))
    }
}

/// Runs the first episode of `new` here and creates the instance with it in one write, when
/// this worker can run it now: a store that can, an orchestrator it knows, of a version it
/// runs, to start at once. `Ok(None)` otherwise, when the episode would run local
/// activities, or when the store declines (the id is taken): the client then creates the
/// instance the ordinary way (reuse policies apply there), and the episode runs again when
/// a worker takes it.
async fn run_first(
    inner: &Inner,
    new: &NewInstance,
) -> Result<Option<crate::storage::InstanceRecord>, StoreError> {
    if !inner.store.supports_create_started()
        || new.scheduled_start.is_some()
        || new.parent.is_some()
        || new.instance_id.as_str().starts_with('@')
        || inner.is_shutting_down()
        || inner.registry.orchestrator(&new.name).is_none()
        || !version_allowed(inner, new.version.as_deref())
    {
        return Ok(None);
    }
    // A free episode slot if there is one; without one it runs all the same (in the
    // caller's task: the dispatcher takes every free slot while it fetches, and the start
    // should not depend on that moment).
    let mut permit = Arc::clone(&inner.orch_slots).try_acquire_owned().ok();
    let id = &new.instance_id;
    // A taken id is left to the store, which declines it in the same write (no read first:
    // the episode runs only orchestration code, never an activity, so running it for a
    // start that is then deduplicated or refused has no effect beyond its log lines).
    // Results for the instance wait for this episode's end, as for any episode; the guard
    // ends it however this call ends (a caller that drops `start` mid-write included: the
    // write may land, and its results must not wait for an end that never comes).
    if !inner.handoffs().begin_first(id) {
        return Ok(None);
    }
    let end = EndFirst { inner, id };
    let item = OrchestrationWorkItem {
        instance: new.record(None),
        history_len: 0,
        messages: vec![new.start_message()],
        lock: super::handoff::FIRST_EPISODE,
    };
    let mut first = First {
        new: Some(new.clone()),
        locals: false,
        attempted: false,
        created: None,
    };
    let span = tracing::info_span!("episode", instance = %new.instance_id, name = %new.name);
    let now = inner.clock.now();
    let ran = try_episode(
        inner,
        item,
        now,
        &mut Vec::new(),
        &mut permit,
        Some(&mut first),
        &mut None,
    )
    .instrument(span)
    .await;
    drop(end);
    match ran {
        // Where leasing is in process, the dispatcher's fetch costs next to nothing (and
        // leases many instances at once).
        Ok(()) if first.locals && !inner.store.leases_in_process() => {
            start_leased(inner, new).await
        }
        Ok(()) => Ok(first.created),
        Err(Stuck::Store(e)) if first.attempted => Err(e),
        // The code could not run here (it does not replay, say): the ordinary path holds
        // the instance back and reports why.
        Err(_) => Ok(None),
    }
}

/// Creates `new` leased to this worker ([`Store::create_leased`]) and queues its first
/// episode, which runs local activities, for the dispatcher: the start returns once the
/// instance is stored, and the episode starts without a fetch (whose lease and wake-up are
/// round trips to a store that does not lease in process). `Ok(None)` when the store
/// declines (the id is taken, or it does not support it): the instance is then created the
/// ordinary way.
async fn start_leased(
    inner: &Inner,
    new: &NewInstance,
) -> Result<Option<crate::storage::InstanceRecord>, StoreError> {
    if inner.is_shutting_down() || inner.aborted.load(std::sync::atomic::Ordering::SeqCst) {
        return Ok(None);
    }
    let leased_at = inner.clock.now();
    let Some(item) = inner
        .store
        .create_leased(new.clone(), leased_at, inner.options.orchestration_lock)
        .await?
    else {
        return Ok(None);
    };
    let record = item.instance.clone();
    let refused = {
        let mut created = lock_cache(&inner.created);
        if created.closed {
            Some(item)
        } else {
            created.items.push_back((item, leased_at));
            None
        }
    };
    match refused {
        None => inner.handoff_ready.notify_one(),
        // The dispatcher stopped meanwhile.
        Some(item) => give_back(inner, &item).await,
    }
    Ok(Some(record))
}

/// Spawns the episodes of the instances this worker created leased ([`start_leased`]), one
/// per permit, oldest first; returns how many started. One that waited half its lease for
/// a slot is given back instead (its lease could end while its local steps run), for any
/// worker to take.
fn start_created(
    inner: &Arc<Inner>,
    running: &mut JoinSet<()>,
    permits: &mut Vec<Permit>,
) -> usize {
    let mut started = 0;
    while !permits.is_empty() {
        let Some((item, leased_at)) = lock_cache(&inner.created).items.pop_front() else {
            break;
        };
        if inner.clock.now() >= leased_at + inner.orchestration_lease / 2 {
            let inner = Arc::clone(inner);
            running.spawn(async move { give_back(&inner, &item).await });
            continue;
        }
        let permit = permits.pop().expect("checked above");
        spawn_episode(inner, running, item, permit, leased_at);
        started += 1;
    }
    started
}

/// Ends a first episode in [`Handoffs`](super::handoff::Handoffs) when dropped: results
/// that arrived meanwhile (for the new instance, or for one that held the id) are queued
/// for the next episode.
struct EndFirst<'a> {
    inner: &'a Inner,
    id: &'a InstanceId,
}

impl Drop for EndFirst<'_> {
    fn drop(&mut self) {
        let (wake, _) = self
            .inner
            .handoffs()
            .end(self.id, super::handoff::FIRST_EPISODE, true);
        if wake {
            self.inner.handoff_ready.notify_one();
        }
    }
}

/// A rewind ready to apply: the marker to append and what to re-drive.
struct Rewind {
    marker: crate::history::HistoryEvent,
    plan: RewindPlan,
    /// Rewind requests to failed children and results reported again to this instance.
    child_messages: Vec<(InstanceId, Message)>,
}

/// Plans the rewind `request` asks for, reading the history and the state of the children;
/// `Ok(Err(why))` when this worker declines it.
async fn prepare_rewind(
    inner: &Inner,
    instance: &crate::storage::InstanceRecord,
    request: &Message,
) -> Result<Result<Rewind, String>, Stuck> {
    let Event::ExecutionRewound { reason, .. } = &request.event else {
        return Ok(Err("not a rewind request".to_owned()));
    };
    let id = &instance.instance_id;
    if !version_allowed(inner, instance.version.as_deref()) {
        let msg = format!(
            "instance version {:?} does not match this worker's version {:?}",
            instance.version, inner.options.version
        );
        if inner.options.on_version_mismatch == VersionMismatchAction::LeavePending {
            // Left for a worker of the right version.
            return Err(Stuck::Error(msg));
        }
        return Ok(Err(msg));
    }
    if inner.registry.orchestrator(&instance.name).is_none() {
        return Err(Stuck::Error(format!(
            "no orchestrator named `{}` is registered on this worker; the rewind waits for a worker that knows it",
            instance.name
        )));
    }
    let history = inner.store.read_history(id).await.map_err(Stuck::Store)?;
    let super::rewind::Prepared { plan, children } =
        match super::rewind::prepare(&*inner.store, instance, &history)
            .await
            .map_err(Stuck::Store)?
        {
            Ok(p) => p,
            Err(why) => return Ok(Err(why)),
        };
    let now = inner.clock.now();
    let mut child_messages = Vec::new();
    for (_, child, action) in children {
        match action {
            ChildAction::Rewind => child_messages.push((
                child,
                Message::new(
                    Event::ExecutionRewound {
                        reason: reason.clone(),
                        seqs: Vec::new(),
                    },
                    None,
                    now,
                ),
            )),
            ChildAction::Report(event) => child_messages.push((
                id.clone(),
                Message::new(event, Some(instance.execution), now),
            )),
            ChildAction::Wait | ChildAction::KeepFailure(_) => {}
        }
    }
    let marker = crate::history::HistoryEvent {
        index: history.len() as u64,
        timestamp: now,
        event: Event::ExecutionRewound {
            reason: reason.clone(),
            seqs: plan.seqs.clone(),
        },
    };
    Ok(Ok(Rewind {
        marker,
        plan,
        child_messages,
    }))
}

/// Consumes and drops messages to a finished instance (releasing entity locks granted to
/// it), keeping its record as it is. What a client asked for is not dropped without a
/// trace: a terminate still reaches the instance's running descendants (it may have
/// finished without waiting for them), other requests are logged. A rewind request the
/// worker declines (`declined`: the request and why) is consumed too, the reason shown as
/// the instance's `last_error`, and the failure is reported again to a parent, which may
/// be waiting for it after its own rewind (a parent that is not waiting ignores it).
async fn drop_late_messages(
    inner: &Inner,
    instance: &crate::storage::InstanceRecord,
    lock: crate::storage::LockToken,
    messages: &[Message],
    declined: Option<(crate::storage::MessageId, String)>,
    handed: &mut Vec<HandedOff>,
) -> Result<(), Stuck> {
    let id = &instance.instance_id;
    let now = inner.clock.now();
    let mut commit = EpisodeCommit::new(id.clone(), lock, instance.status, now);
    commit.consumed = messages
        .iter()
        .map(|m| m.id)
        .chain(declined.as_ref().map(|(request, _)| *request))
        .collect();
    release_unwanted_locks(id, messages, &mut commit, now);
    let status = instance.status.as_str();
    let mut terminated = false;
    for m in messages {
        match &m.event {
            Event::ExecutionTerminated { reason, .. }
                if !terminated && is_meant_for(&m.event, instance) =>
            {
                terminated = true;
                let history = inner.store.read_history(id).await.map_err(Stuck::Store)?;
                let targets =
                    super::cascade::running_descendants(&*inner.store, instance, &history)
                        .await
                        .map_err(Stuck::Store)?;
                tracing::warn!(instance = %id, status, descendants = targets.len(),
                    "terminate arrived after the instance finished; terminating its running descendants");
                commit
                    .messages
                    .extend(terminate_messages(targets, reason, now));
            }
            Event::EventRaised { name, .. } => {
                tracing::warn!(instance = %id, status, event = %name, "event raised after the instance finished dropped");
            }
            Event::ExecutionTerminated { .. }
            | Event::ExecutionSuspended { .. }
            | Event::ExecutionResumed { .. }
            | Event::ExecutionRewound { .. } => {
                tracing::warn!(instance = %id, status, kind = m.event.kind(), "request that arrived after the instance finished dropped");
            }
            e => {
                tracing::debug!(instance = %id, status, kind = e.kind(), "late message to a finished instance dropped");
            }
        }
    }
    if let Some((_, why)) = &declined {
        tracing::warn!(instance = %id, "rewind request declined: {why}");
        commit.last_error = Some(format!("rewind declined: {why}"));
        if let (Some(parent), Some(failure)) = (&instance.parent, &instance.failure) {
            commit
                .messages
                .push(Message::child_failed(parent, failure.clone(), now));
        }
    } else {
        commit.last_error.clone_from(&instance.last_error);
    }
    commit.output.clone_from(&instance.output);
    commit.failure.clone_from(&instance.failure);
    commit.custom_status.clone_from(&instance.custom_status);
    commit.now = instance.last_updated_at;
    commit.completed_activities = handed.iter().map(|h| (h.task, h.lock)).collect();
    inner
        .store
        .commit_episode(commit)
        .await
        .map_err(Stuck::Store)?;
    handed.clear();
    Ok(())
}

/// Terminates the running descendants a cascade found, each addressed as the child it is.
fn terminate_messages(
    targets: Vec<crate::storage::InstanceRecord>,
    reason: &str,
    now: Timestamp,
) -> impl Iterator<Item = (InstanceId, Message)> + '_ {
    targets.into_iter().map(move |t| {
        let event = Event::ExecutionTerminated {
            reason: reason.to_owned(),
            child_of: t.parent,
        };
        (t.instance_id, Message::new(event, None, now))
    })
}

/// Adds the rewind's marker and re-driven work to the episode's commit.
fn apply_rewind(
    commit: &mut EpisodeCommit,
    instance: &crate::storage::InstanceRecord,
    r: Rewind,
    now: Timestamp,
) {
    let id = &instance.instance_id;
    commit.new_events.insert(0, r.marker);
    if commit.status.is_terminal() {
        // It finished again in the rewind's own episode (failed again by itself, say):
        // nothing is waiting for the unfinished work.
        return;
    }
    for a in r.plan.activities {
        apply_command(
            commit,
            id,
            instance.execution,
            now,
            Command::ScheduleActivity {
                seq: a.seq,
                name: a.name,
                input: a.input,
                attempt: 1,
                timeout: a.timeouts.timeout,
                heartbeat_timeout: a.timeouts.heartbeat_timeout,
                heartbeat: a.heartbeat,
                local: false,
            },
        );
    }
    for (seq, fire_at) in r.plan.timers {
        apply_command(
            commit,
            id,
            instance.execution,
            now,
            Command::CreateTimer { seq, fire_at },
        );
    }
    commit.messages.extend(r.child_messages);
}

/// When the episode terminated the execution, or a terminate arrived after it finished in
/// this episode (`late_terminate`): terminate messages to the running descendants the
/// replay core does not reach (it terminates the children a terminated execution still
/// waits for; those under finished children are found from the stored histories).
async fn terminate_cascade(
    inner: &Inner,
    instance: &crate::storage::InstanceRecord,
    result: &EpisodeResult,
    late_terminate: Option<String>,
    now: Timestamp,
) -> Result<Vec<(InstanceId, Message)>, Stuck> {
    let reason = match &result.outcome {
        Some(Outcome::Terminated(reason)) => reason.clone(),
        Some(Outcome::Completed(_) | Outcome::Failed(_)) => match late_terminate {
            Some(reason) => reason,
            None => return Ok(Vec::new()),
        },
        _ => return Ok(Vec::new()),
    };
    let id = &instance.instance_id;
    let mut history = inner.store.read_history(id).await.map_err(Stuck::Store)?;
    history.extend(result.new_events.iter().cloned());
    let reached: std::collections::HashSet<&InstanceId> = result
        .commands
        .iter()
        .filter_map(|c| match c {
            Command::TerminateChild { instance_id, .. } => Some(instance_id),
            _ => None,
        })
        .collect();
    let targets: Vec<crate::storage::InstanceRecord> =
        super::cascade::running_descendants(&*inner.store, instance, &history)
            .await
            .map_err(Stuck::Store)?
            .into_iter()
            .filter(|t| !reached.contains(&t.instance_id))
            .collect();
    if !matches!(result.outcome, Some(Outcome::Terminated(_))) {
        tracing::warn!(instance = %id, descendants = targets.len(),
            "terminate arrived after the instance finished; terminating its running descendants");
    }
    Ok(terminate_messages(targets, &reason, now).collect())
}

/// Locks granted to an execution that has ended (or moved on with continue-as-new) are
/// released at once, so an entity is never left locked by an orchestration that is gone.
fn release_unwanted_locks(
    id: &InstanceId,
    messages: &[Message],
    commit: &mut EpisodeCommit,
    now: Timestamp,
) {
    for m in messages {
        if let Event::EntityLockGranted { entities, .. } = &m.event {
            // Released for the execution it was granted to, never for a later one of the
            // same instance that may hold it by now.
            for e in entities {
                let unlock = Event::EntityUnlock {
                    owner: id.clone(),
                    execution: m.execution,
                };
                commit
                    .messages
                    .push((e.clone(), Message::new(unlock, None, now)));
            }
        }
    }
}

fn build_commit(
    instance: &crate::storage::InstanceRecord,
    lock: crate::storage::LockToken,
    now: Timestamp,
    consumed: Vec<crate::storage::MessageId>,
    result: EpisodeResult,
) -> EpisodeCommit {
    let id = &instance.instance_id;
    let execution = instance.execution;
    let status = match &result.outcome {
        Some(o) => o.status(),
        None if result.suspended => RuntimeStatus::Suspended,
        None => RuntimeStatus::Running,
    };
    let mut commit = EpisodeCommit::new(id.clone(), lock, status, now);
    commit.consumed = consumed;
    commit.new_events = result.new_events;
    commit.custom_status = result.custom_status;
    match result.outcome {
        Some(Outcome::Completed(out)) => commit.output = Some(out),
        Some(Outcome::Failed(f)) => commit.failure = Some(f),
        Some(Outcome::Terminated(reason)) => {
            commit.output = Some(serde_json::Value::String(reason).to_string());
        }
        Some(Outcome::ContinuedAsNew {
            input,
            version,
            carried,
        }) => {
            // One message: the carried events must reach the next execution ahead of
            // events still in the inbox (they arrived earlier), whatever the store's order.
            let messages = vec![Message::new(
                Event::ExecutionStarted {
                    name: instance.name.clone(),
                    version: version.clone(),
                    input: input.clone(),
                    parent: instance.parent.clone(),
                    scheduled_start: None,
                    carried,
                    // Set by the execution's trace (feature "opentelemetry").
                    trace_context: None,
                },
                None,
                now,
            )];
            commit.next_execution = Some(NextExecution {
                input,
                version,
                messages,
            });
        }
        None => {}
    }
    for c in result.commands {
        apply_command(&mut commit, id, execution, now, c);
    }
    commit
}

/// Turns one replay command into part of the store commit.
fn apply_command(
    commit: &mut EpisodeCommit,
    id: &InstanceId,
    execution: u32,
    now: Timestamp,
    c: Command,
) {
    match c {
        Command::ScheduleActivity {
            seq,
            name,
            input,
            attempt,
            timeout,
            heartbeat_timeout,
            heartbeat,
            local: _,
        } => {
            let mut task =
                crate::storage::ActivityTask::new(id.clone(), execution, seq, name, input);
            task.attempt = attempt;
            task.timeout = timeout;
            task.heartbeat_timeout = heartbeat_timeout;
            task.heartbeat = heartbeat;
            commit.activities.push(task);
        }
        Command::CreateTimer { seq, fire_at } => commit.messages.push((
            id.clone(),
            Message::new(Event::TimerFired { seq, fire_at }, Some(execution), fire_at),
        )),
        Command::StartSubOrchestration {
            seq,
            name,
            instance_id,
            input,
            version,
        } => {
            let mut child = NewInstance::new(instance_id, name, input, now);
            child.version = version;
            child.reuse = IdReusePolicy::ReplaceFinished;
            child.parent = Some(ParentRef {
                instance_id: id.clone(),
                execution,
                seq,
            });
            commit.new_instances.push((seq, child));
        }
        Command::StartOrchestration {
            seq,
            name,
            instance_id,
            input,
            version,
            scheduled_start,
            reuse,
        } => {
            // No parent: nothing reports back to this instance, and cascades do not reach it.
            let mut new = NewInstance::new(instance_id, name, input, now);
            new.version = version;
            new.scheduled_start = scheduled_start;
            new.reuse = reuse;
            commit.new_instances.push((seq, new));
        }
        Command::SendEvent {
            instance_id,
            name,
            input,
        } => commit.messages.push((
            instance_id,
            Message::new(Event::EventRaised { name, input }, None, now),
        )),
        Command::NotifyParent { parent, event } => {
            let execution = Some(parent.execution);
            commit
                .messages
                .push((parent.instance_id, Message::new(event, execution, now)));
        }
        Command::SendEntityMessage { entity, event } => {
            commit
                .new_instances
                .push((u64::MAX, crate::entity::entity_instance(&entity, now)));
            commit
                .messages
                .push((entity.instance_id(), Message::new(event, None, now)));
        }
        Command::TerminateChild {
            instance_id,
            child_of,
            reason,
        } => commit.messages.push((
            instance_id,
            Message::new(
                Event::ExecutionTerminated {
                    reason,
                    child_of: Some(child_of),
                },
                None,
                now,
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::compare_versions;
    use std::cmp::Ordering;

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(compare_versions("1.10", "1.9"), Ordering::Greater);
        assert_eq!(compare_versions("2.0", "2.0"), Ordering::Equal);
        assert_eq!(compare_versions("1.0", "1.0.1"), Ordering::Less);
    }
}
