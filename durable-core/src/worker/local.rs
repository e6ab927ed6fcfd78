//! Local activities: run inside the episode that schedules them, their results delivered
//! to the replayer before the episode commits, so a chain of local steps costs one commit.
//!
//! The replay core sees an ordinary scheduled task whose result arrived in the same
//! episode: history records `TaskScheduled` and `TaskCompleted` / `TaskFailed` as for any
//! activity, and replay never runs the step again. What is not run here — past the
//! episode's budget, not registered on this worker, stopped by a shutdown, or scheduled
//! after the orchestration finished — is enqueued as an ordinary activity task.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use tracing::Instrument;

use super::Inner;
use super::activity::{Holder, execute, result_event};
use crate::history::Event;
use crate::ids::Timestamp;
use crate::replay::{Command, Replayer};
use crate::storage::{ActivityTask, InstanceRecord};

/// Runs the local activities the episode schedules — concurrently when several are
/// pending — and delivers their results, until the code schedules no more. Timers already
/// due right after a round of local runs (zero back-offs of local retries) fire within the
/// episode too, so the next attempt runs at once; only then, so code that loops on
/// zero-length sleeps still ends its episode. Leaves what it does not run as ordinary
/// activity tasks of the episode.
///
/// `leased_at` is when the episode's lease began: local runs end half a lease after it
/// whatever the budget, so a long replay or a short lease granted by the store (see
/// [`Store::orchestration_lease`](crate::storage::Store::orchestration_lease)) cannot let the
/// lease lapse while steps run, and another worker run them again meanwhile.
pub(crate) async fn run(
    inner: &Inner,
    replayer: &mut Replayer,
    instance: &InstanceRecord,
    leased_at: Timestamp,
) {
    let deadline = (inner.clock.now() + inner.local_activity_budget())
        .min(leased_at + inner.orchestration_lease / 2);
    // Computed once, when the first step runs: the execution's span is their parent.
    #[cfg(feature = "opentelemetry")]
    let mut trace = None;
    // Whether the last round ran local activities.
    let mut ran = false;
    loop {
        let commands = replayer.take_local_activities();
        if commands.is_empty() {
            let due = if std::mem::take(&mut ran) {
                replayer.take_due_timers()
            } else {
                Vec::new()
            };
            if due.is_empty() {
                return;
            }
            for (seq, fire_at) in due {
                replayer.handle_message(Event::TimerFired { seq, fire_at });
            }
            continue;
        }
        if replayer.is_finished() || inner.is_shutting_down() || inner.clock.now() >= deadline {
            for c in commands {
                replayer.schedule_as_task(c);
            }
            return;
        }
        #[allow(unused_mut, reason = "stamped with feature \"opentelemetry\"")]
        let mut tasks: Vec<Option<ActivityTask>> = commands
            .iter()
            .map(|c| to_task(inner, instance, c))
            .collect();
        #[cfg(feature = "opentelemetry")]
        {
            let context = trace.get_or_insert_with(|| {
                crate::otel::ExecutionTrace::work_context(instance, replayer)
            });
            for task in tasks.iter_mut().flatten() {
                task.trace_context.clone_from(context);
            }
        }
        ran = tasks.iter().any(Option::is_some);
        let results = run_all(inner, &tasks, deadline).await;
        for (command, result) in commands.into_iter().zip(results) {
            match result {
                Some(event) => {
                    replayer.handle_message(event);
                }
                None => replayer.schedule_as_task(command),
            }
        }
    }
}

/// The task a local command runs as, or `None` when this worker cannot run it (the
/// activity is not registered here: another worker may know it).
fn to_task(inner: &Inner, instance: &InstanceRecord, c: &Command) -> Option<ActivityTask> {
    let Command::ScheduleActivity {
        seq,
        name,
        input,
        attempt,
        timeout,
        heartbeat_timeout,
        heartbeat,
        ..
    } = c
    else {
        return None;
    };
    inner.registry.activity(name)?;
    let mut task = ActivityTask::new(
        instance.instance_id.clone(),
        instance.execution,
        *seq,
        name.clone(),
        input.clone(),
    );
    task.attempt = *attempt;
    task.timeout = *timeout;
    task.heartbeat_timeout = *heartbeat_timeout;
    task.heartbeat.clone_from(heartbeat);
    Some(task)
}

type Run<'a> = Pin<Box<dyn Future<Output = Option<Event>> + Send + 'a>>;

/// Runs `tasks` at once on this task (as `join!` would), each result in its place; a run
/// not finished at `deadline` is dropped (cancelled) and reported as `None`, like a task
/// that did not run.
async fn run_all(
    inner: &Inner,
    tasks: &[Option<ActivityTask>],
    deadline: Timestamp,
) -> Vec<Option<Event>> {
    let mut runs: Vec<Option<Run<'_>>> = tasks
        .iter()
        .map(|t| t.as_ref().map(|t| Box::pin(run_one(inner, t)) as Run<'_>))
        .collect();
    let mut results: Vec<Option<Event>> = vec![None; tasks.len()];
    let all = std::future::poll_fn(|cx| {
        for (run, result) in runs.iter_mut().zip(results.iter_mut()) {
            if let Some(f) = run
                && let Poll::Ready(r) = f.as_mut().poll(cx)
            {
                *result = r;
                *run = None;
            }
        }
        if runs.iter().all(Option::is_none) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    });
    tokio::select! {
        // A run that finished as the budget ran out counts.
        biased;
        () = all => {}
        () = inner.clock.sleep_until(deadline) => {
            tracing::debug!("local activities past the episode's budget become activity tasks");
        }
    }
    results
}

/// Runs one local activity; `None` when it stopped without a result (a shutdown).
async fn run_one(inner: &Inner, task: &ActivityTask) -> Option<Event> {
    let (name, f) = inner.registry.activity(&task.name)?;
    let span = tracing::info_span!("activity", name = %task.name, instance = %task.instance_id, seq = task.seq, local = true, otel.name = tracing::field::Empty);
    #[cfg(feature = "opentelemetry")]
    crate::otel::adopt_activity(&span, task);
    let (result, heartbeat) = execute(inner, task, name, &**f, Holder::Local)
        .instrument(span.clone())
        .await?;
    #[cfg(feature = "opentelemetry")]
    crate::otel::record_failure(&span, result.as_ref().err());
    Some(result_event(
        task.seq,
        result,
        heartbeat,
        inner.options.limits.max_payload_bytes,
    ))
}
