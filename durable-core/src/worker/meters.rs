//! Worker metrics through the [`metrics`](https://docs.rs/metrics) facade (feature
//! `metrics`): instances, episodes, activities, retries, entity operations and stuck
//! instances, all named `durable_*`. Without the feature every function here is empty and
//! inlined away; with it and no recorder installed, each call costs a key built and handed to
//! the no-op recorder.
//!
//! Label values are user names: a [`Label`] holds them without copying where the worker
//! already has a `'static` or shared copy.

use std::sync::Arc;
use std::time::Duration;

/// A label value: an orchestrator, activity or entity name.
#[derive(Debug, Clone)]
#[cfg_attr(
    not(feature = "metrics"),
    allow(dead_code, reason = "labels are only read by the metrics")
)]
pub(crate) enum Label {
    /// A registered type's `NAME`.
    Static(&'static str),
    /// A name the registry holds.
    Shared(Arc<str>),
    /// Any other name (rare paths: an orchestrator this worker does not know).
    Owned(String),
}

#[cfg(feature = "metrics")]
impl From<&Label> for metrics::SharedString {
    fn from(label: &Label) -> Self {
        match label {
            Label::Static(s) => metrics::SharedString::const_str(s),
            Label::Shared(s) => metrics::SharedString::from(Arc::clone(s)),
            Label::Owned(s) => metrics::SharedString::from(s.clone()),
        }
    }
}

#[cfg(feature = "metrics")]
impl From<Label> for metrics::SharedString {
    fn from(label: Label) -> Self {
        match label {
            Label::Static(s) => metrics::SharedString::const_str(s),
            Label::Shared(s) => metrics::SharedString::from(s),
            Label::Owned(s) => metrics::SharedString::from(s),
        }
    }
}

/// Measures real elapsed time for a duration histogram (nothing without the feature).
#[derive(Debug)]
pub(crate) struct Stopwatch {
    #[cfg(feature = "metrics")]
    start: std::time::Instant,
}

impl Stopwatch {
    /// Starts measuring.
    #[inline]
    pub(crate) fn start() -> Self {
        Self {
            // Real time on purpose: how long the work took, not the worker's (possibly
            // virtual) clock.
            #[cfg(feature = "metrics")]
            #[allow(
                clippy::disallowed_methods,
                reason = "a duration metric measures real time, not orchestration time"
            )]
            start: std::time::Instant::now(),
        }
    }

    #[cfg(feature = "metrics")]
    fn seconds(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
}

/// Describes the metrics to the installed recorder (units and help texts).
pub(crate) fn describe() {
    #[cfg(feature = "metrics")]
    {
        use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
        describe_counter!(
            "durable_instances_started_total",
            "Orchestration executions started (continue-as-new starts a new one)"
        );
        describe_counter!(
            "durable_instances_finished_total",
            "Orchestration executions finished, by status"
        );
        describe_histogram!(
            "durable_instance_duration_seconds",
            Unit::Seconds,
            "Time from an execution's start to its end"
        );
        describe_counter!("durable_episodes_total", "Orchestration episodes committed");
        describe_histogram!(
            "durable_episode_duration_seconds",
            Unit::Seconds,
            "Time an orchestration episode took, lease to commit"
        );
        describe_counter!(
            "durable_activities_total",
            "Activity runs in this worker, by outcome"
        );
        describe_histogram!(
            "durable_activity_duration_seconds",
            Unit::Seconds,
            "Time an activity run took, by outcome"
        );
        describe_counter!(
            "durable_activity_retries_total",
            "Activity retries scheduled by retry policies"
        );
        describe_counter!(
            "durable_entity_operations_total",
            "Entity operations run, by outcome"
        );
        describe_gauge!(
            "durable_stuck_instances",
            "Instances this worker currently holds as stuck"
        );
        describe_counter!(
            "durable_stuck_episodes_total",
            "Episodes that could not run (non-determinism, unknown name, ...)"
        );
        describe_counter!(
            "durable_cache_hits_total",
            "Episodes that found their orchestration in the replay cache"
        );
        describe_counter!(
            "durable_cache_misses_total",
            "Episodes that read and replayed the history"
        );
        crate::storage::metrics::describe();
        super::queue_depth::describe();
    }
}

/// An execution started.
#[inline]
pub(crate) fn instance_started(orchestrator: &Label) {
    #[cfg(feature = "metrics")]
    metrics::counter!("durable_instances_started_total", "orchestrator" => orchestrator)
        .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = orchestrator;
}

/// An execution ended with `status` after `duration` (when its start is known).
#[inline]
pub(crate) fn instance_finished(
    orchestrator: &Label,
    status: &'static str,
    duration: Option<Duration>,
) {
    #[cfg(feature = "metrics")]
    {
        metrics::counter!("durable_instances_finished_total", "orchestrator" => orchestrator, "status" => status)
            .increment(1);
        if let Some(d) = duration {
            metrics::histogram!("durable_instance_duration_seconds", "orchestrator" => orchestrator, "status" => status)
                .record(d.as_secs_f64());
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (orchestrator, status, duration);
}

/// An orchestration episode was committed.
#[inline]
pub(crate) fn episode(orchestrator: &Label, watch: &Stopwatch) {
    #[cfg(feature = "metrics")]
    {
        metrics::counter!("durable_episodes_total", "orchestrator" => orchestrator).increment(1);
        metrics::histogram!("durable_episode_duration_seconds", "orchestrator" => orchestrator)
            .record(watch.seconds());
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (orchestrator, watch);
}

/// An activity run in this worker ended with `outcome` (its name as the registry holds it).
#[inline]
pub(crate) fn activity_ran(activity: &Arc<str>, outcome: &'static str, watch: &Stopwatch) {
    #[cfg(feature = "metrics")]
    {
        let activity = Label::Shared(Arc::clone(activity));
        metrics::counter!("durable_activities_total", "activity" => &activity, "outcome" => outcome)
            .increment(1);
        metrics::histogram!("durable_activity_duration_seconds", "activity" => activity, "outcome" => outcome)
            .record(watch.seconds());
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (activity, outcome, watch);
}

/// A retry policy scheduled another attempt of an activity.
#[inline]
pub(crate) fn activity_retry(activity: Label) {
    #[cfg(feature = "metrics")]
    metrics::counter!("durable_activity_retries_total", "activity" => activity).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = activity;
}

/// An entity operation ran with `outcome`.
#[inline]
pub(crate) fn entity_operation(entity: &Label, outcome: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("durable_entity_operations_total", "entity" => entity, "outcome" => outcome)
        .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = (entity, outcome);
}

/// An episode could not run; `held` instances are now stuck in this worker.
#[inline]
pub(crate) fn stuck_episode(held: usize) {
    #[cfg(feature = "metrics")]
    {
        metrics::counter!("durable_stuck_episodes_total").increment(1);
        metrics::gauge!("durable_stuck_instances").set(held as f64);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = held;
}

/// A stuck instance ran again; `held` instances are still stuck in this worker.
#[inline]
pub(crate) fn unstuck(held: usize) {
    #[cfg(feature = "metrics")]
    metrics::gauge!("durable_stuck_instances").set(held as f64);
    #[cfg(not(feature = "metrics"))]
    let _ = held;
}

/// An episode looked its orchestration up in the replay cache (a miss reads and replays the
/// history).
#[inline]
pub(crate) fn cache_lookup(hit: bool) {
    #[cfg(feature = "metrics")]
    metrics::counter!(if hit {
        "durable_cache_hits_total"
    } else {
        "durable_cache_misses_total"
    })
    .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = hit;
}

/// The worker stopped: the gauges it set no longer describe anything it holds or reads.
pub(crate) fn worker_stopped() {
    #[cfg(feature = "metrics")]
    {
        metrics::gauge!("durable_stuck_instances").set(0.0);
        super::queue_depth::reset();
    }
}
