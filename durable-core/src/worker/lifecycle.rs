//! Lifecycle events: one `tracing` event per real occurrence, at target
//! [`TARGET`] (`durable::lifecycle`), with stable field names (`instance_id`, `orchestrator`,
//! `execution`, `duration_ms`, …), plus the worker metrics of the same occurrences.
//!
//! An orchestration's events are derived from what its episode *committed* — the new history
//! events, and the [`Notice`]s the replayer collected while running the new part of the
//! episode — and emitted only after the commit succeeded: replay never emits them again, a
//! failed commit emits nothing (the episode runs again and commits them then), and a crash
//! between commit and emit can lose an event but never repeat one.
//!
//! Cheap without a subscriber: [`Episode::observe`] walks the new events once and copies
//! nothing unless the level of the event it would copy for is enabled.

use std::time::Duration;

use tracing::Level;

use super::meters::{self, Label};
use crate::entity::RanOperation;
use crate::error::{FailureDetails, TaskKind};
use crate::history::{Event, RuntimeStatus};
use crate::ids::{InstanceId, Timestamp};
use crate::replay::{EpisodeResult, Notice};
use crate::storage::InstanceRecord;

/// The `tracing` target of every lifecycle event: filter with
/// `RUST_LOG=durable::lifecycle=info`.
pub(crate) const TARGET: &str = "durable::lifecycle";

/// Milliseconds, as the `*_ms` fields carry them.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// An event about an orchestration instance, with the fields every such event carries.
macro_rules! instance_event {
    ($level:expr, $instance:expr, $($rest:tt)+) => {
        tracing::event!(
            target: TARGET,
            $level,
            instance_id = $instance.instance_id.as_str(),
            orchestrator = $instance.name.as_str(),
            execution = $instance.execution,
            $($rest)+
        )
    };
}

/// What a committed orchestration episode did, kept from its [`EpisodeResult`] for after
/// the commit.
#[derive(Debug, Default)]
pub(crate) struct Episode {
    /// An execution started in this episode.
    started: bool,
    /// When the execution started.
    started_at: Option<Timestamp>,
    /// How the execution ended in this episode.
    ended: Option<RuntimeStatus>,
    /// The details of the events to emit, in order (only those whose level is enabled).
    items: Vec<Item>,
    notices: Vec<Notice>,
}

#[derive(Debug)]
enum Item {
    Started,
    Suspended {
        reason: String,
    },
    Resumed {
        reason: String,
    },
    TimerCreated {
        seq: u64,
        fire_at: Timestamp,
    },
    TimerFired {
        seq: u64,
    },
    EventDelivered {
        name: String,
    },
    EventSent {
        target: InstanceId,
        name: String,
    },
    Completed,
    Failed {
        failure: Option<FailureDetails>,
    },
    Terminated {
        reason: String,
    },
    ContinuedAsNew,
    Rewound {
        reason: String,
        undone: usize,
        activities: usize,
        timers: usize,
        children: usize,
    },
}

impl Episode {
    /// Takes what is reported from `result` (its notices; copies of event details only for
    /// enabled levels), before the result becomes the commit.
    pub(crate) fn observe(result: &mut EpisodeResult) -> Self {
        let info = tracing::enabled!(target: TARGET, Level::INFO);
        let debug = tracing::enabled!(target: TARGET, Level::DEBUG);
        let mut ep = Episode {
            started_at: result.started_at,
            notices: std::mem::take(&mut result.notices),
            ..Episode::default()
        };
        let mut terminated = None;
        for e in &result.new_events {
            // Each arm copies details only when its event's level is enabled.
            let item = match &e.event {
                Event::ExecutionStarted { .. } => {
                    ep.started = true;
                    info.then_some(Item::Started)
                }
                Event::ExecutionCompleted {
                    status, failure, ..
                } => {
                    ep.ended = Some(*status);
                    info.then(|| match status {
                        RuntimeStatus::Failed => Item::Failed {
                            failure: failure.clone(),
                        },
                        RuntimeStatus::Terminated => Item::Terminated {
                            reason: terminated.take().unwrap_or_default(),
                        },
                        _ => Item::Completed,
                    })
                }
                Event::ContinuedAsNew { .. } => {
                    ep.ended = Some(RuntimeStatus::ContinuedAsNew);
                    info.then_some(Item::ContinuedAsNew)
                }
                Event::ExecutionTerminated { reason, .. } if info => {
                    terminated = Some(reason.clone());
                    None
                }
                Event::ExecutionSuspended { reason } if info => Some(Item::Suspended {
                    reason: reason.clone(),
                }),
                Event::ExecutionResumed { reason } if info => Some(Item::Resumed {
                    reason: reason.clone(),
                }),
                Event::TimerCreated { seq, fire_at, .. } if debug => Some(Item::TimerCreated {
                    seq: *seq,
                    fire_at: *fire_at,
                }),
                Event::TimerFired { seq, .. } if debug => Some(Item::TimerFired { seq: *seq }),
                Event::EventRaised { name, .. } if debug => {
                    Some(Item::EventDelivered { name: name.clone() })
                }
                Event::EventSent {
                    instance_id, name, ..
                } if debug => Some(Item::EventSent {
                    target: instance_id.clone(),
                    name: name.clone(),
                }),
                _ => None,
            };
            ep.items.extend(item);
        }
        ep
    }

    /// Records that this episode rewound the failed execution.
    pub(crate) fn rewound(
        &mut self,
        reason: &str,
        undone: usize,
        activities: usize,
        timers: usize,
        children: usize,
    ) {
        if tracing::enabled!(target: TARGET, Level::INFO) {
            // Ahead of what the re-run did in the same episode (it may end again).
            self.items.insert(
                0,
                Item::Rewound {
                    reason: reason.to_owned(),
                    undone,
                    activities,
                    timers,
                    children,
                },
            );
        }
    }

    /// Emits the events and metrics of the committed episode of `instance` (at `now`).
    pub(crate) fn emit(self, instance: &InstanceRecord, orchestrator: &Label, now: Timestamp) {
        let duration = self.started_at.map(|t| now.saturating_duration_since(t));
        if self.started {
            meters::instance_started(orchestrator);
        }
        if let Some(status) = self.ended {
            meters::instance_finished(orchestrator, status_label(status), duration);
        }
        let duration_ms = duration.map(millis);
        for item in self.items {
            emit_item(instance, item, duration_ms);
        }
        emit_notices(instance, self.notices);
    }
}

fn status_label(status: RuntimeStatus) -> &'static str {
    match status {
        RuntimeStatus::Completed => "completed",
        RuntimeStatus::Failed => "failed",
        RuntimeStatus::Terminated => "terminated",
        RuntimeStatus::ContinuedAsNew => "continued_as_new",
        _ => "running",
    }
}

fn emit_item(instance: &InstanceRecord, item: Item, duration_ms: Option<u64>) {
    match item {
        Item::Started => instance_event!(
            Level::INFO,
            instance,
            version = instance.version.as_deref(),
            parent_id = instance.parent.as_ref().map(|p| p.instance_id.as_str()),
            "instance started"
        ),
        Item::Completed => {
            instance_event!(Level::INFO, instance, duration_ms, "instance completed");
        }
        Item::Failed { failure } => instance_event!(
            Level::INFO,
            instance,
            duration_ms,
            failure = failure.as_ref().map(|f| f.message.as_str()),
            failure_type = failure.as_ref().map(|f| f.error_type.as_str()),
            "instance failed"
        ),
        Item::Terminated { reason } => instance_event!(
            Level::INFO,
            instance,
            duration_ms,
            reason = reason.as_str(),
            "instance terminated"
        ),
        Item::ContinuedAsNew => {
            instance_event!(
                Level::INFO,
                instance,
                duration_ms,
                "instance continued as new"
            );
        }
        Item::Suspended { reason } => instance_event!(
            Level::INFO,
            instance,
            reason = reason.as_str(),
            "instance suspended"
        ),
        Item::Resumed { reason } => instance_event!(
            Level::INFO,
            instance,
            reason = reason.as_str(),
            "instance resumed"
        ),
        Item::Rewound {
            reason,
            undone,
            activities,
            timers,
            children,
        } => instance_event!(
            Level::INFO,
            instance,
            reason = reason.as_str(),
            undone,
            activities,
            timers,
            children,
            "instance rewound"
        ),
        Item::TimerCreated { seq, fire_at } => instance_event!(
            Level::DEBUG,
            instance,
            seq,
            fire_at = %fire_at,
            "timer created"
        ),
        Item::TimerFired { seq } => instance_event!(Level::DEBUG, instance, seq, "timer fired"),
        Item::EventDelivered { name } => instance_event!(
            Level::DEBUG,
            instance,
            event = name.as_str(),
            "event delivered"
        ),
        Item::EventSent { target, name } => tracing::debug!(
            target: TARGET,
            instance_id = target.as_str(),
            event = name.as_str(),
            sender = instance.instance_id.as_str(),
            "event raised"
        ),
    }
}

/// Activity failures (with the retry decision taken in the same episode) and retries.
fn emit_notices(instance: &InstanceRecord, notices: Vec<Notice>) {
    if notices.is_empty() {
        return;
    }
    let retry_of = |seq: u64| {
        notices.iter().find_map(|n| match n {
            Notice::Retry {
                seq: s,
                attempt,
                delay,
                ..
            } if *s == seq => Some((*attempt, *delay)),
            _ => None,
        })
    };
    for n in &notices {
        match n {
            Notice::ActivityFailed { seq, name, failure } => {
                let retry = retry_of(*seq);
                let delay = retry.and_then(|(_, d)| d);
                instance_event!(
                    Level::WARN,
                    instance,
                    activity = name.as_str(),
                    seq,
                    attempt = retry.map(|(a, _)| a),
                    retrying = delay.is_some(),
                    retry_in_ms = delay.map(millis),
                    failure = failure.message.as_str(),
                    failure_type = failure.error_type.as_str(),
                    "activity failed"
                );
            }
            Notice::Retry {
                seq,
                kind,
                name,
                attempt,
                delay: Some(delay),
            } => {
                let answered = notices
                    .iter()
                    .any(|n| matches!(n, Notice::ActivityFailed { seq: s, .. } if s == seq));
                if !answered {
                    // The failure was recorded in an earlier episode (the instance was
                    // suspended when it came), or it is a sub-orchestration's.
                    instance_event!(
                        Level::WARN,
                        instance,
                        task_kind = kind.as_str(),
                        task = name.as_str(),
                        seq,
                        attempt,
                        retry_in_ms = millis(*delay),
                        "retry scheduled"
                    );
                }
            }
            _ => {}
        }
    }
    for n in notices {
        if let Notice::Retry {
            kind: TaskKind::Activity,
            name,
            delay: Some(_),
            ..
        } = n
        {
            meters::activity_retry(Label::Owned(name));
        }
    }
}

/// An instance failed without running (its version may not run here and the worker fails
/// such instances).
pub(crate) fn failed_unrun(
    instance: &InstanceRecord,
    orchestrator: &Label,
    failure: &FailureDetails,
) {
    meters::instance_finished(orchestrator, "failed", None);
    instance_event!(
        Level::INFO,
        instance,
        failure = failure.message.as_str(),
        failure_type = failure.error_type.as_str(),
        "instance failed"
    );
}

/// An episode could not run. `first` is `false` while the instance stays stuck for the
/// same reason it was already reported for (each back-off retry).
pub(crate) fn stuck(
    id: &InstanceId,
    nondeterminism: bool,
    diagnostic: &str,
    attempts: u32,
    retry_in: Duration,
    first: bool,
) {
    let retry_in_ms = millis(retry_in);
    match (first, nondeterminism) {
        (true, true) => tracing::error!(
            target: TARGET,
            instance_id = id.as_str(),
            attempts,
            retry_in_ms,
            diagnostic,
            "non-determinism detected; instance stuck"
        ),
        (true, false) => tracing::error!(
            target: TARGET,
            instance_id = id.as_str(),
            attempts,
            retry_in_ms,
            diagnostic,
            "instance stuck"
        ),
        (false, _) => tracing::debug!(
            target: TARGET,
            instance_id = id.as_str(),
            attempts,
            retry_in_ms,
            diagnostic,
            "instance still stuck"
        ),
    }
}

/// This worker lost the lease on work it held: the work is discarded, and another worker
/// takes it over (or has already).
pub(crate) fn lease_lost(work: &'static str, id: &InstanceId, seq: Option<u64>) {
    tracing::debug!(
        target: TARGET,
        instance_id = id.as_str(),
        work,
        seq,
        "lease lost; another worker takes the work over"
    );
}

/// Whether an entity batch keeps the operations it runs, for [`entity_operations`].
pub(crate) fn entity_operations_wanted() -> bool {
    cfg!(feature = "metrics") || tracing::enabled!(target: TARGET, Level::DEBUG)
}

/// The operations an entity batch ran, once the batch is committed.
pub(crate) fn entity_operations(entity: &InstanceId, name: &str, ran: Vec<RanOperation>) {
    if ran.is_empty() {
        return;
    }
    let label = Label::Owned(name.to_owned());
    for op in ran {
        let outcome = if op.failed { "failed" } else { "completed" };
        meters::entity_operation(&label, outcome);
        tracing::debug!(
            target: TARGET,
            instance_id = entity.as_str(),
            entity = name,
            operation = op.operation.as_str(),
            outcome,
            signal = op.signal,
            "entity operation"
        );
    }
}

/// A client raised an event to an instance.
pub(crate) fn event_raised(id: &InstanceId, name: &str) {
    tracing::debug!(
        target: TARGET,
        instance_id = id.as_str(),
        event = name,
        "event raised"
    );
}
