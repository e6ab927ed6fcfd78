//! Transactional activities on the worker's side: the body, bound to its input, goes to the
//! store, which runs it in the transaction that completes the task (see
//! [`crate::transaction`]). Such a task never takes the in-memory hand-off path: its result
//! is committed with its writes.

#[cfg(feature = "redb")]
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use super::Inner;
use super::activity::result_event;
use super::lease::LeaseGuard;
use super::meters::{self, Stopwatch};
use crate::error::{FailureDetails, StoreError};
use crate::history::Payload;
#[cfg(feature = "postgres")]
use crate::storage::app::PgActivityFn;
#[cfg(feature = "redb")]
use crate::storage::app::RedbActivityFn;
use crate::storage::app::{Body, TransactionalRun, panic_failure};
use crate::storage::{ActivityWorkItem, Message};

const COMPLETED: u8 = 1;
const FAILED: u8 = 2;
const PANICKED: u8 = 3;
const TIMED_OUT: u8 = 4;

/// A registered transactional activity, by the kind of transaction it runs in.
pub(super) enum Registered {
    #[cfg(feature = "redb")]
    Redb(Arc<RedbActivityFn>),
    #[cfg(feature = "postgres")]
    Postgres(Arc<PgActivityFn>),
}

/// Sorts a body's run into its result, recording the outcome for the metrics.
fn settle(
    ran: Result<Result<Payload, FailureDetails>, Box<dyn std::any::Any + Send>>,
    name: &str,
    limit: usize,
    outcome: &AtomicU8,
) -> Result<Payload, FailureDetails> {
    let (result, kind) = match ran {
        Ok(Ok(out)) if out.len() > limit => (Err(too_large(out.len(), limit)), FAILED),
        Ok(Ok(out)) => (Ok(out), COMPLETED),
        Ok(Err(failure)) => (Err(failure), FAILED),
        Err(panic) => (Err(panic_failure(name, panic.as_ref())), PANICKED),
    };
    outcome.store(kind, Ordering::Relaxed);
    result
}

/// The failure a body that outran its start-to-close timeout `t` records: the one an
/// ordinary activity records.
#[cfg(feature = "postgres")]
fn timed_out(name: &str, t: std::time::Duration) -> FailureDetails {
    FailureDetails::new(
        crate::CallOptions::TIMEOUT,
        format!(
            "activity `{name}` timed out: its run exceeded the start-to-close timeout of {t:?}"
        ),
    )
}

/// The body the store runs: `f` bound to the task's input, its outcome sorted into
/// `outcome` for the metrics (and recorded on the run's span).
fn body(
    inner: &Inner,
    task: &crate::storage::ActivityTask,
    name: Arc<str>,
    f: Registered,
    outcome: Arc<AtomicU8>,
) -> Body {
    let limit = inner.options.limits.max_payload_bytes;
    let input = task.input.clone();
    #[cfg(feature = "opentelemetry")]
    let span = tracing::Span::current();
    match f {
        #[cfg(feature = "redb")]
        Registered::Redb(f) => Body::Redb(Box::new(
            move |tx: &crate::storage::app::RedbTransaction<'_>| {
                let ran = catch_unwind(AssertUnwindSafe(|| f(tx, input)));
                let result = settle(ran, &name, limit, &outcome);
                #[cfg(feature = "opentelemetry")]
                crate::otel::record_failure(&span, result.as_ref().err());
                result
            },
        )),
        #[cfg(feature = "postgres")]
        Registered::Postgres(f) => {
            // The body runs under the task's start-to-close timeout, counted from here.
            let clock = Arc::clone(&inner.clock);
            let deadline = task
                .timeout
                .filter(|t| !t.is_zero())
                .map(|t| (clock.now() + t, t));
            Body::Postgres(Box::new(
                move |tx: &crate::storage::app::PgTransaction<'_>| {
                    Box::pin(async move {
                        let work = crate::storage::app::CatchPanic(f(tx, input));
                        let expired = async {
                            match deadline {
                                Some((at, _)) => clock.sleep_until(at).await,
                                None => std::future::pending().await,
                            }
                        };
                        let result = tokio::select! {
                            ran = work => settle(ran, &name, limit, &outcome),
                            // The body's future is dropped; the store rolls its
                            // statements back to the savepoint.
                            () = expired => {
                                outcome.store(TIMED_OUT, Ordering::Relaxed);
                                Err(timed_out(&name, deadline.unwrap_or_default().1))
                            }
                        };
                        #[cfg(feature = "opentelemetry")]
                        crate::otel::record_failure(&span, result.as_ref().err());
                        result
                    })
                },
            ))
        }
    }
}

/// Runs a leased task of the transactional activity `f` through the store.
pub(super) async fn run(
    inner: &Inner,
    item: ActivityWorkItem,
    lease: LeaseGuard,
    name: Arc<str>,
    f: Registered,
) {
    let task = &item.task;
    let timing = Stopwatch::start();
    let limit = inner.options.limits.max_payload_bytes;
    let outcome = Arc::new(AtomicU8::new(0));
    let body = body(inner, task, Arc::clone(&name), f, Arc::clone(&outcome));
    let (seq, execution) = (task.seq, task.execution);
    let now = inner.clock.now();
    let run = TransactionalRun {
        activity: Arc::clone(&name),
        body,
        finish: Box::new(move |result: Result<Payload, FailureDetails>| {
            Message::new(result_event(seq, result, None, limit), Some(execution), now)
        }),
    };
    // Released first, as for an ordinary result: the write ends the lease.
    drop(lease);
    let ran = |outcome| meters::activity_ran(&name, outcome, &timing);
    let stoppable = run.kind() == crate::storage::app::TransactionKind::Postgres;
    let mut shutdown = inner.shutdown.clone();
    let completed = tokio::select! {
        done = inner.store.complete_activity_in_transaction(item.id, item.lock, run) => done,
        // A PostgreSQL body is raced against the worker's shutdown: dropping the run drops
        // its transaction, which rolls back (the body's statements and the row lock with
        // it). Nothing is completed: the task runs again once its lease expires. (A redb or
        // memory-store body runs synchronously and is not interrupted.)
        _ = shutdown.wait_for(|stopping| *stopping), if stoppable => {
            ran("cancelled");
            return;
        }
    };
    match completed {
        Ok(()) => ran(match outcome.load(Ordering::Relaxed) {
            PANICKED => "panicked",
            FAILED => "failed",
            TIMED_OUT => "timed_out",
            _ => "completed",
        }),
        Err(StoreError::LockLost(_)) => {
            ran("lease_lost");
            super::lifecycle::lease_lost("activity", &task.instance_id, Some(task.seq));
        }
        Err(StoreError::Unsupported(reason)) => {
            // Not retriable: the same store answers the same on every attempt.
            let failure = FailureDetails::new(
                "UnsupportedTransaction",
                format!("activity `{name}` cannot run: {reason}"),
            )
            .non_retriable();
            ran("failed");
            let message = Message::new(
                result_event(seq, Err(failure), None, limit),
                Some(execution),
                inner.clock.now(),
            );
            if let Err(e) = inner
                .store
                .complete_activity(item.id, item.lock, message)
                .await
            {
                tracing::warn!(error = %e, "activity result not recorded; the task will run again");
            }
        }
        Err(e) => {
            ran("not_committed");
            tracing::warn!(error = %e, "transactional activity not committed; the task will run again");
        }
    }
}

fn too_large(len: usize, limit: usize) -> FailureDetails {
    FailureDetails::new(
        "PayloadTooLarge",
        format!("activity output of {len} bytes exceeds the limit of {limit} bytes"),
    )
    .non_retriable()
}
