//! Queue gauges (feature `metrics`): how much work waits in the store, read with
//! [`Store::queue_depths`](crate::Store::queue_depths) every
//! [`WorkerOptions::queue_depth_interval`](super::WorkerOptions::queue_depth_interval) on
//! the worker's clock.
//!
//! | gauge | what |
//! | --- | --- |
//! | `durable_queue_ready_orchestrations` | instances ready for an episode, not leased |
//! | `durable_queue_ready_activities` | activity tasks ready to run, not leased |
//! | `durable_queue_timers_due` | due timers not yet delivered to their instance |

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Inner;
use crate::storage::QueueDepths;

/// The shortest period between two readings.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// Reads the depths now, then every `every` (at least 100 ms), until shutdown. A store
/// that cannot count (answers `None`) is not asked again.
pub(crate) async fn run(inner: Arc<Inner>, every: Duration) {
    let every = every.max(MIN_INTERVAL);
    let mut shutdown = inner.shutdown.clone();
    loop {
        if inner.is_shutting_down() || inner.aborted.load(Ordering::SeqCst) {
            return;
        }
        match inner.store.queue_depths(inner.clock.now()).await {
            Ok(Some(depths)) => record(depths),
            Ok(None) => {
                tracing::debug!("the store does not count its queues: no queue gauges");
                // Returning early would count as a dispatcher that stopped on its own.
                let _ = shutdown.wait_for(|stop| *stop).await;
                return;
            }
            Err(e) => tracing::warn!(error = %e, "reading the queue depths failed; retrying later"),
        }
        let next = inner.clock.now() + every;
        tokio::select! {
            () = inner.clock.sleep_until(next) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Describes the queue gauges to the installed recorder.
pub(crate) fn describe() {
    metrics::describe_gauge!(
        "durable_queue_ready_orchestrations",
        "Instances ready for an episode and not leased"
    );
    metrics::describe_gauge!(
        "durable_queue_ready_activities",
        "Activity tasks ready to run and not leased"
    );
    metrics::describe_gauge!(
        "durable_queue_timers_due",
        "Due timers not yet delivered to their instance"
    );
}

/// Zeroes the queue gauges (the worker that read them stopped).
pub(crate) fn reset() {
    record(QueueDepths::default());
}

/// Sets the queue gauges.
fn record(depths: QueueDepths) {
    metrics::gauge!("durable_queue_ready_orchestrations").set(depths.ready_orchestrations as f64);
    metrics::gauge!("durable_queue_ready_activities").set(depths.ready_activities as f64);
    metrics::gauge!("durable_queue_timers_due").set(depths.timers_due as f64);
}
