//! The activity dispatcher: lease activity tasks, run them (a panic becomes a failure), and
//! hand each result to its orchestration.

use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::Inner;
use super::lease::LeaseGuard;
use super::meters::{self, Stopwatch};
use crate::context::CallOptions;
use crate::error::{FailureDetails, StoreError};
use crate::heartbeat::{Heartbeat, HeartbeatMonitor};
use crate::history::Event;
use crate::history::Payload;
use crate::ids::Timestamp;
use crate::registry::{ActivityContext, ActivityFn, Cancellation};
use crate::storage::{ActivityTask, ActivityWorkItem, EpisodeCommit, Message, WorkKind};

pub(crate) async fn dispatch(inner: Arc<Inner>) {
    let mut running = JoinSet::new();
    let mut shutdown = inner.shutdown.clone();
    loop {
        while running.try_join_next().is_some() {}
        if inner.is_shutting_down() {
            break;
        }
        // Wait for at least one free slot, then take as many as are free and not promised
        // to eager tasks.
        let Ok(first) = Arc::clone(&inner.activity_slots).acquire_owned().await else {
            break;
        };
        let promised = inner.eager_reserved.load(Ordering::SeqCst);
        let wanted = 1 + inner
            .activity_slots
            .available_permits()
            .saturating_sub(promised);
        let notified = inner.store.signals().activity.notified();
        let now = inner.clock.now();
        match inner
            .store
            .fetch_activity_work(now, inner.activity_lease, wanted)
            .await
        {
            Ok(items) => {
                // Fewer than asked for: nothing else is due now, so wait for new work
                // rather than fetch again at once (and the runs just spawned start first).
                let drained = items.len() < wanted;
                // Held (and renewed) from here: a task waiting for its slot keeps its lease.
                let leased: Vec<_> = items
                    .into_iter()
                    .map(|item| {
                        let lease = hold(&inner, &item, now);
                        (item, lease)
                    })
                    .collect();
                let mut first = Some(first);
                for (item, lease) in leased {
                    let permit = match first.take() {
                        Some(p) => p,
                        None => match Arc::clone(&inner.activity_slots).try_acquire_owned() {
                            Ok(p) => p,
                            Err(_) => Arc::clone(&inner.activity_slots)
                                .acquire_owned()
                                .await
                                .expect("the semaphore is never closed"),
                        },
                    };
                    let inner = Arc::clone(&inner);
                    let span = activity_span(&item.task);
                    // The run is boxed, as episodes are (see `episode::spawn_episode`).
                    running.spawn(async move {
                        let ready = Box::pin(run_activity(&inner, item, lease))
                            .instrument(span)
                            .await;
                        drop(permit);
                        // The result made its orchestration ready: run its episode here.
                        if let Some(id) = ready {
                            super::episode::run_ready_here(&inner, id).await;
                        }
                    });
                }
                drop(first);
                if drained {
                    super::idle(&inner, WorkKind::Activity, now, notified, &mut shutdown).await;
                }
            }
            Err(e) => {
                drop(first);
                tracing::error!(error = %e, "fetching activity work failed");
                let retry = inner.clock.now() + Duration::from_millis(500);
                tokio::select! {
                    () = inner.clock.sleep_until(retry) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }
    while running.join_next().await.is_some() {}
}

/// Holds (and from then on renews) the lease on `item` taken at `leased_at`, for the task's
/// own period ([`ActivityTask::lease_for`]).
fn hold(inner: &Inner, item: &ActivityWorkItem, leased_at: Timestamp) -> LeaseGuard {
    let period = item.task.lease_for(inner.activity_lease);
    inner.activity_leases.hold(item, leased_at, period)
}

/// The span of one run of `task`.
fn activity_span(task: &ActivityTask) -> tracing::Span {
    let span = tracing::info_span!("activity", name = %task.name, instance = %task.instance_id, seq = task.seq, otel.name = tracing::field::Empty);
    #[cfg(feature = "opentelemetry")]
    crate::otel::adopt_activity(&span, task);
    span
}

/// A new activity task that its episode's commit leased to this worker (eager dispatch,
/// [`Store::commit_episode_eager`]): run by the task that ran the episode, right after it,
/// instead of being fetched by the dispatcher. It holds its lease (renewed from the
/// commit on) and takes an activity slot to run ([`run_eager`]).
///
/// [`Store::commit_episode_eager`]: crate::storage::Store::commit_episode_eager
pub(crate) struct Eager {
    item: ActivityWorkItem,
    lease: LeaseGuard,
    promise: Promise,
    /// When the commit kept the instance's lease ([`kept`](super::kept)): the lease's
    /// ticket, and until when it waits for this task's result.
    kept: Option<(u64, Timestamp)>,
}

/// An activity slot promised to an eager task ([`Inner::eager_reserved`]) until it takes
/// one, or its commit leases nothing.
pub(crate) struct Promise(Arc<AtomicUsize>);

impl Drop for Promise {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The task of `commit` to lease to this worker with the commit ([`Eager`]), with the
/// activity slot promised to it: the first task of an activity registered here, if more
/// slots are free now than are promised. (The slot itself is taken after the commit:
/// holding one through it would keep the dispatcher from fetching while the store may
/// well decline.) None for a worker that stops, and for a commit that ends its execution
/// (whose tasks' results nothing would wait for).
pub(crate) fn pick_eager(inner: &Inner, commit: &EpisodeCommit) -> Option<(usize, Promise)> {
    if commit.activities.is_empty()
        || !inner.store.supports_eager_dispatch()
        || commit.status.is_terminal()
        || commit.next_execution.is_some()
        || inner.is_shutting_down()
        || inner.aborted.load(Ordering::SeqCst)
    {
        return None;
    }
    let task = commit
        .activities
        .iter()
        .position(|t| runs_here(inner, &t.name))?;
    let free = inner.activity_slots.available_permits();
    inner
        .eager_reserved
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |promised| {
            (promised < free).then_some(promised + 1)
        })
        .ok()?;
    Some((task, Promise(Arc::clone(&inner.eager_reserved))))
}

/// `true` if this worker runs activity `name` (a plain or a transactional one).
fn runs_here(inner: &Inner, name: &str) -> bool {
    if inner.registry.activity(name).is_some() {
        return true;
    }
    #[cfg(feature = "redb")]
    if inner.registry.transactional.redb(name).is_some() {
        return true;
    }
    #[cfg(feature = "postgres")]
    if inner.registry.transactional.postgres(name).is_some() {
        return true;
    }
    false
}

impl Eager {
    /// `item`, leased by a commit from `leased_at` (as asked), held from here on with the
    /// slot promised to it; with the ticket of the instance's kept lease and the time until
    /// which it waits for the result, if the commit kept it.
    pub(crate) fn new(
        inner: &Inner,
        item: ActivityWorkItem,
        leased_at: Timestamp,
        promise: Promise,
        kept: Option<(u64, Timestamp)>,
    ) -> Self {
        let lease = hold(inner, &item, leased_at);
        Self {
            item,
            lease,
            promise,
            kept,
        }
    }
}

/// Runs an [`Eager`] task as the dispatcher runs a fetched one, in an activity slot (waited
/// for, under the renewed lease, when the others are taken); returns its orchestration
/// when the hand-off of the result queued it for an episode (the caller runs it). A worker
/// that begins to stop first puts the task back instead, and an aborted one leaves it to
/// its lease.
pub(crate) async fn run_eager(inner: &Inner, eager: Eager) -> Option<crate::ids::InstanceId> {
    let Eager {
        item,
        lease,
        promise,
        kept,
    } = eager;
    let Some((ticket, hold)) = kept else {
        return run_eager_task(inner, item, lease, promise).await;
    };
    // The instance's lease was kept for this result: given back if the run takes longer
    // than its hold (events for the instance would wait meanwhile), or if the result is
    // not handed to an episode here.
    let instance = item.task.instance_id.clone();
    let mut run = std::pin::pin!(run_eager_task(inner, item, lease, promise));
    let ready = tokio::select! {
        biased;
        ready = &mut run => ready,
        () = inner.clock.sleep_until(hold) => {
            let ((), ready) = tokio::join!(super::kept::release(inner, &instance, ticket), run);
            ready
        }
    };
    if ready.is_none() {
        // Not queued by this result (written to the store, or results queued by others
        // before it): whoever runs the next episode leases the instance afresh.
        super::kept::release(inner, &instance, ticket).await;
    }
    ready
}

/// [`run_eager`] without a kept lease to settle.
async fn run_eager_task(
    inner: &Inner,
    item: ActivityWorkItem,
    lease: LeaseGuard,
    promise: Promise,
) -> Option<crate::ids::InstanceId> {
    let mut shutdown = inner.shutdown.clone();
    let permit = tokio::select! {
        biased;
        permit = Arc::clone(&inner.activity_slots).acquire_owned() => permit.ok(),
        _ = shutdown.wait_for(|stop| *stop) => None,
    };
    drop(promise);
    if inner.aborted.load(Ordering::SeqCst) {
        return None;
    }
    let Some(permit) = permit.filter(|_| !inner.is_shutting_down()) else {
        drop(lease);
        let now = inner.clock.now();
        if let Err(e) = inner.store.abandon_activity(item.id, item.lock, now).await {
            tracing::warn!(error = %e, "activity not put back; it runs when its lease expires");
        }
        return None;
    };
    let span = activity_span(&item.task);
    let ready = Box::pin(run_activity(inner, item, lease))
        .instrument(span)
        .await;
    drop(permit);
    ready
}

/// Runs one leased activity and reports its result: handed to its orchestration in memory
/// (the result then carries `lease`, renewed until the result is committed) or written to
/// the store. Returns the orchestration when the hand-off queued it for an episode (the
/// caller runs it, see [`run_ready_here`](super::episode::run_ready_here)).
async fn run_activity(
    inner: &Inner,
    item: ActivityWorkItem,
    mut lease: LeaseGuard,
) -> Option<crate::ids::InstanceId> {
    if inner.aborted.load(Ordering::SeqCst) {
        // Leased just as the worker was aborted: a crashed worker starts nothing.
        return None;
    }
    #[cfg(feature = "redb")]
    if let Some((name, f)) = inner.registry.transactional.redb(&item.task.name) {
        let (name, f) = (Arc::clone(name), Arc::clone(f));
        let f = super::transactional::Registered::Redb(f);
        super::transactional::run(inner, item, lease, name, f).await;
        return None;
    }
    #[cfg(feature = "postgres")]
    if let Some((name, f)) = inner.registry.transactional.postgres(&item.task.name) {
        let (name, f) = (Arc::clone(name), Arc::clone(f));
        let f = super::transactional::Registered::Postgres(f);
        super::transactional::run(inner, item, lease, name, f).await;
        return None;
    }
    let task = &item.task;
    let (result, heartbeat) = match inner.registry.activity(&task.name) {
        None => (
            Err(FailureDetails::new(
                "UnknownActivity",
                format!(
                    "no activity named `{}` is registered on this worker",
                    task.name
                ),
            )),
            // The next attempt (perhaps on a worker that knows the activity) resumes from
            // the details it was carrying.
            task.heartbeat.clone(),
        ),
        Some((name, f)) => match execute(
            inner,
            task,
            name,
            &**f,
            Holder::Leased {
                item: &item,
                lease: &mut lease,
            },
        )
        .await
        {
            Some(ran) => ran,
            None => return None,
        },
    };
    #[cfg(feature = "opentelemetry")]
    crate::otel::record_failure(&tracing::Span::current(), result.as_ref().err());
    let event = result_event(
        task.seq,
        result,
        heartbeat,
        inner.options.limits.max_payload_bytes,
    );
    let message = Message::new(event, Some(task.execution), inner.clock.now());
    if inner.store.supports_activity_handoff() && !inner.is_shutting_down() {
        // Straight to the orchestration; committed with the episode that consumes it. The
        // result carries the lease: renewed for as long as the result waits, whatever the
        // wait for an episode, so no other worker runs the task again meanwhile.
        let result = super::handoff::HandedOff {
            task: item.id,
            lock: item.lock,
            message,
            lease,
        };
        let queued = inner.handoffs().push(task.instance_id.clone(), result);
        return queued.then(|| task.instance_id.clone());
    }
    // Released first: the write ends the lease (renewing it meanwhile would race the write,
    // and could keep a lease the store lost the result of).
    drop(lease);
    if let Err(e) = inner
        .store
        .complete_activity(item.id, item.lock, message)
        .await
    {
        tracing::warn!(error = %e, "activity result not recorded; the task will run again");
    }
    None
}

/// Who holds the task a run executes.
pub(crate) enum Holder<'a> {
    /// A task leased from the store: its lease is renewed while it runs, heartbeat details
    /// are written to it, and a run stopped for a shutdown puts it back in the queue.
    Leased {
        item: &'a ActivityWorkItem,
        lease: &'a mut LeaseGuard,
    },
    /// A local activity run inside its orchestration's episode, under the episode's lease:
    /// heartbeat details stay in memory (a failure carries them to the next attempt).
    Local,
}

/// Runs the registered activity `f` on `task` under its timeouts. Returns its result and,
/// for a failure, the last heartbeat details (for the next attempt) — or `None` when there
/// is nothing to report: the lease was lost (the new owner's result counts), or the run
/// stopped for a shutdown (a leased task went back to the queue).
pub(crate) async fn execute(
    inner: &Inner,
    task: &ActivityTask,
    name: &Arc<str>,
    f: &ActivityFn,
    holder: Holder<'_>,
) -> Option<(Result<Payload, FailureDetails>, Option<Payload>)> {
    let (item, mut lease) = match holder {
        Holder::Leased { item, lease } => (Some(item), Some(lease)),
        Holder::Local => (None, None),
    };
    let timing = Stopwatch::start();
    let ran = |outcome| meters::activity_ran(name, outcome, &timing);
    let (cancel, cancellation) = Cancellation::new();
    let limit = inner.options.limits.max_payload_bytes;
    let (beats, monitor) = Heartbeat::new(task.heartbeat.clone(), limit, Arc::clone(&inner.clock));
    let mut ctx = ActivityContext::new(
        task.instance_id.clone(),
        task.name.clone(),
        task.seq,
        task.attempt,
        cancellation,
        beats,
    )
    .with_states(&inner.states);
    ctx.max_payload_bytes = limit;
    let started = inner.clock.now();
    if let (Some(h), Some(lease)) = (task.heartbeat_timeout, lease.as_deref()) {
        lease.watch(monitor.liveness(started, h));
    }
    let mut watch = Watch {
        inner,
        task,
        item,
        monitor,
        started,
        last_write: None,
    };
    // A panic is caught and reported, not fatal (this already runs on its own task).
    // The lease is renewed while the activity runs, however long it takes.
    let work = CatchPanic(f(ctx, task.input.clone()));
    let outcome = tokio::select! {
        r = work => Ok(r),
        // The activity's future is dropped here: it timed out.
        timed_out = watch.run(lease.as_deref_mut(), &cancel) => Err(timed_out),
    };
    if lease.as_deref().is_some_and(LeaseGuard::is_lost) {
        // Another worker took the task over; its result is the one that counts (this one
        // may be no more than the reaction to the cancellation).
        ran("lease_lost");
        super::lifecycle::lease_lost("activity", &task.instance_id, Some(task.seq));
        return None;
    }
    let panicked = matches!(outcome, Ok(Err(_)));
    let result = match outcome {
        Ok(Ok(r)) => r,
        Ok(Err(panic)) => {
            let mut f = FailureDetails::from_panic(panic.as_ref());
            f.message = format!("activity `{}` panicked: {}", task.name, f.message);
            Err(f)
        }
        Err(timed_out) => {
            ran("timed_out");
            return Some((Err(timed_out), watch.monitor.last_details()));
        }
    };
    if result.is_err() && cancel.is_cancelled() && inner.is_shutting_down() {
        // Stopped for the shutdown: not a failure of the task. It goes back to the queue and
        // runs again (here after a restart, or on another worker), with the details it
        // heartbeated last. (A local run is not recorded: the episode enqueues it as a task.)
        if let Some(item) = item {
            watch.flush().await;
            let now = inner.clock.now();
            if let Err(e) = inner.store.abandon_activity(item.id, item.lock, now).await {
                tracing::warn!(error = %e, "cancelled activity not put back; it runs again when its lease expires");
            }
        }
        ran("cancelled");
        return None;
    }
    ran(match (&result, panicked) {
        (Ok(_), _) => "completed",
        (Err(_), true) => "panicked",
        (Err(_), false) => "failed",
    });
    // A failure carries the details to the next attempt, which resumes from them.
    let heartbeat = if result.is_err() {
        watch.monitor.last_details()
    } else {
        None
    };
    Some((result, heartbeat))
}

/// The message that reports an activity's result to its orchestration.
pub(crate) fn result_event(
    seq: u64,
    result: Result<Payload, FailureDetails>,
    heartbeat: Option<Payload>,
    limit: usize,
) -> Event {
    match result {
        Ok(out) if out.len() > limit => Event::TaskFailed {
            seq,
            failure: FailureDetails::new(
                "PayloadTooLarge",
                format!(
                    "activity output of {} bytes exceeds the limit of {limit} bytes",
                    out.len()
                ),
            )
            .non_retriable(),
            heartbeat: None,
        },
        Ok(out) => Event::TaskCompleted { seq, result: out },
        Err(failure) => Event::TaskFailed {
            seq,
            failure,
            heartbeat,
        },
    }
}

/// Most time between writes of a running activity's heartbeat details.
const MAX_HEARTBEAT_WRITE_INTERVAL: Duration = Duration::from_secs(30);

/// Watches one run of an activity: its timeouts, its heartbeats (writing their details,
/// throttled), the worker's shutdown and the task's lease.
struct Watch<'a> {
    inner: &'a Inner,
    task: &'a ActivityTask,
    /// The leased task heartbeat details are written to; `None` for a local run.
    item: Option<&'a ActivityWorkItem>,
    monitor: HeartbeatMonitor,
    /// When the run started: its start-to-close timeout counts from here.
    started: Timestamp,
    /// When heartbeat details were last written.
    last_write: Option<Timestamp>,
}

impl Watch<'_> {
    /// The task's lease period (the store's activity lease, or its heartbeat timeout).
    fn period(&self) -> Duration {
        self.task.lease_for(self.inner.activity_lease)
    }

    /// Least time between two writes of heartbeat details.
    fn write_interval(&self) -> Duration {
        (self.period() / 2).min(MAX_HEARTBEAT_WRITE_INTERVAL)
    }

    /// Writes the details heartbeated since the last write, if any (extending the lease).
    async fn flush(&mut self) {
        if self.inner.aborted.load(Ordering::SeqCst) {
            // A crashed worker writes nothing.
            return;
        }
        let Some(item) = self.item else {
            // A local run: the details stay in memory.
            return;
        };
        let Some(details) = self.monitor.take_pending() else {
            return;
        };
        let now = self.inner.clock.now();
        self.last_write = Some(now);
        let until = now + self.period();
        match self
            .inner
            .store
            .record_activity_heartbeat(item.id, item.lock, details.clone(), until)
            .await
        {
            Ok(()) => {}
            Err(StoreError::LockLost(_)) => {
                // The lease keeper learns of it too, and cancels the run.
                tracing::debug!("heartbeat details not written: the activity's lease is lost");
            }
            Err(e) => {
                tracing::warn!(error = %e, "heartbeat details not written; retrying with the next write");
                self.monitor.restore_pending(details);
            }
        }
    }

    /// Fires the run's cancellation when the worker starts shutting down or the lease is
    /// lost (the worker was cut off from the store for longer than a lease and another
    /// worker took the task over: the run's result is then dropped, the new owner's counts),
    /// and writes heartbeat details as they come, throttled. Completes — after firing the
    /// cancellation — only when the run exceeds its start-to-close timeout or goes longer
    /// than its heartbeat timeout without a heartbeat, with the failure to record.
    async fn run(
        &mut self,
        mut lease: Option<&mut LeaseGuard>,
        cancel: &CancellationToken,
    ) -> FailureDetails {
        let mut shutdown = self.inner.shutdown.clone();
        let mut told = *shutdown.borrow();
        if told {
            cancel.cancel();
        }
        let task = self.task;
        let writes = self.item.is_some();
        let deadline = task.timeout.map(|t| (self.started + t, t));
        let mut last_beat = self.started;
        let mut write_at: Option<Timestamp> = None;
        let clock = &self.inner.clock;
        let sleep = |at: Option<Timestamp>| async move {
            match at {
                Some(t) => clock.sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let failure = loop {
            let beat_deadline = task.heartbeat_timeout.map(|h| last_beat + h);
            tokio::select! {
                // In this order: a heartbeat that came in before a deadline must count.
                biased;
                () = lost(&mut lease) => {
                    cancel.cancel();
                    std::future::pending::<()>().await;
                }
                changed = shutdown.changed(), if !told => {
                    if changed.is_err() || *shutdown.borrow() {
                        told = true;
                        cancel.cancel();
                    }
                }
                () = self.monitor.beat() => {
                    last_beat = self.monitor.last_beat().unwrap_or(last_beat).max(last_beat);
                    if writes && write_at.is_none() && self.monitor.has_pending() {
                        // Throttled: a run that heartbeats and soon ends costs no write.
                        let earliest = self.last_write.unwrap_or(self.started) + self.write_interval();
                        write_at = Some(earliest.max(last_beat));
                    }
                }
                () = sleep(write_at) => {
                    write_at = None;
                    self.flush().await;
                    if self.monitor.has_pending() {
                        // The write failed: try again a write interval later.
                        write_at = Some(clock.now() + self.write_interval());
                    }
                }
                () = sleep(deadline.map(|(at, _)| at)) => {
                    let (_, t) = deadline.unwrap_or_default();
                    break FailureDetails::new(
                        CallOptions::TIMEOUT,
                        format!("activity `{}` timed out: its run exceeded the start-to-close timeout of {t:?}", task.name),
                    );
                }
                () = sleep(beat_deadline) => {
                    // A heartbeat may have come in while this timer was due.
                    let latest = self.monitor.last_beat().unwrap_or(last_beat).max(last_beat);
                    let h = task.heartbeat_timeout.unwrap_or_default();
                    if latest + h > clock.now() {
                        last_beat = latest;
                        continue;
                    }
                    break FailureDetails::new(
                        CallOptions::HEARTBEAT_TIMEOUT,
                        format!("activity `{}` timed out: no heartbeat for {h:?} (its heartbeat timeout)", task.name),
                    );
                }
            }
        };
        cancel.cancel();
        failure
    }
}

/// Completes when the lease is lost; never without one (a local run).
async fn lost(lease: &mut Option<&mut LeaseGuard>) {
    match lease {
        Some(l) => l.lost().await,
        None => std::future::pending().await,
    }
}

/// Polls a future, turning a panic into an error: what a `tokio::spawn` of it would do,
/// without a second task per activity.
struct CatchPanic<F>(F);

impl<F: Future + Unpin> Future for CatchPanic<F> {
    type Output = Result<F::Output, Box<dyn std::any::Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.0;
        match std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(inner).poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}
