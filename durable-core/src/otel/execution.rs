//! Execution spans: the trace context an execution hands to the work it starts, and its
//! span, emitted once after the commit of the episode that ends it.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::global::{BoxedSpan, BoxedTracer};
use opentelemetry::trace::{
    Span as _, SpanBuilder, SpanId, Status, TraceId, Tracer, TracerProvider,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use uuid::Uuid;

use crate::history::{Event, HistoryEvent, RuntimeStatus};
use crate::ids::{InstanceId, Timestamp};
use crate::replay::Replayer;
use crate::storage::{EpisodeCommit, InstanceRecord, Message};
use crate::trace_context::TraceContext;

/// The tracer a worker builds execution spans with: from the provider it was given, else
/// from OpenTelemetry's global provider at the time of each span.
#[derive(Debug, Default)]
pub(crate) struct WorkerTracer(Option<BoxedTracer>);

impl WorkerTracer {
    /// A tracer of `provider`, under durable's instrumentation scope.
    pub(crate) fn from_provider<P>(provider: &P) -> Self
    where
        P: TracerProvider,
        P::Tracer: Send + Sync + 'static,
        <P::Tracer as Tracer>::Span: Send + Sync + 'static,
    {
        Self(Some(BoxedTracer::new(Box::new(
            provider.tracer_with_scope(scope()),
        ))))
    }

    fn build(&self, builder: SpanBuilder, parent: &Context) -> BoxedSpan {
        match &self.0 {
            Some(tracer) => tracer.build_with_context(builder, parent),
            None => opentelemetry::global::tracer_with_scope(scope())
                .build_with_context(builder, parent),
        }
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("durable")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

/// Namespace of the name-based UUIDs that execution span and trace ids are taken from.
const ID_NAMESPACE: Uuid = Uuid::from_u128(0x8f3c_2a71_5d0e_4b6a_9c1f_7e24_d5b0_a913);

/// Set once the worker has warned that the provider ignores planned span ids.
static WARNED_IDS: AtomicBool = AtomicBool::new(false);

/// What the span of an execution that ended needs.
#[derive(Debug)]
struct Ended {
    /// The parent of the execution span: the stored context, or for a rewound execution
    /// the span of its run before the rewind.
    parent: Option<TraceContext>,
    trace_id: TraceId,
    span_id: SpanId,
    started_at: Timestamp,
    instance_id: InstanceId,
    name: String,
    execution: u32,
    version: Option<String>,
    rewinds: u32,
    status: RuntimeStatus,
    /// The failure, for a failed execution.
    failure: Option<String>,
}

/// How an execution ended.
#[derive(Debug)]
struct Ending {
    status: RuntimeStatus,
    failure: Option<String>,
}

/// One execution's place in its trace: the context its children are given (its span, by
/// id) and, when the episode at hand ends it, what its span needs.
#[derive(Debug)]
pub(crate) struct ExecutionTrace {
    /// The execution span, as the work it starts names its parent.
    own: TraceContext,
    ended: Option<Ended>,
}

/// The name-based id of run `rewinds` of the execution `key` names: its span id is the
/// second half; run 0's is also the trace id of an execution started without a trace.
fn run_hash(key: &mut String, rewinds: u32) -> [u8; 16] {
    use std::fmt::Write;
    let len = key.len();
    let _ = write!(key, "{rewinds}");
    let id = *Uuid::new_v5(&ID_NAMESPACE, key.as_bytes()).as_bytes();
    key.truncate(len);
    id
}

fn span_id_of(hash: [u8; 16]) -> SpanId {
    let mut bytes = [0; 8];
    bytes.copy_from_slice(&hash[8..]);
    SpanId::from_bytes(bytes)
}

impl ExecutionTrace {
    /// Gives the work `commit` (an episode of the execution `replayer` runs) starts this
    /// execution's span as parent (see [`stamp`](Self::stamp)); returns the trace when the
    /// commit ends the execution, for [`finish`](Self::finish) once it is durable. An
    /// episode that starts nothing and ends nothing costs nothing.
    pub(crate) fn stamp_episode(
        instance: &InstanceRecord,
        replayer: &Replayer,
        commit: &mut EpisodeCommit,
    ) -> Option<Self> {
        let ends = commit.status.is_terminal() || commit.status == RuntimeStatus::ContinuedAsNew;
        let starts_work = !commit.activities.is_empty()
            || !commit.new_instances.is_empty()
            || commit
                .messages
                .iter()
                .any(|(_, m)| matches!(m.event, Event::EntityOperation { .. }));
        if !ends && !starts_work {
            return None;
        }
        let (started_at, stored) = replayer.start().unwrap_or((instance.created_at, None));
        let ending = ends.then(|| Ending {
            status: commit.status,
            failure: commit.failure.as_ref().map(ToString::to_string),
        });
        let trace = Self::derive(instance, started_at, stored, replayer.rewinds(), ending)?;
        trace.stamp(commit);
        trace.ended.is_some().then_some(trace)
    }

    /// The context the execution's span gives the work it starts: the parent of the local
    /// activities an episode runs, as [`stamp`](Self::stamp) is for the tasks it enqueues.
    pub(crate) fn work_context(
        instance: &InstanceRecord,
        replayer: &Replayer,
    ) -> Option<TraceContext> {
        let (started_at, stored) = replayer.start().unwrap_or((instance.created_at, None));
        Self::derive(instance, started_at, stored, replayer.rewinds(), None).map(|t| t.own)
    }

    /// The trace of an execution the worker fails without running its code (its version
    /// may not run here): its start is read from its `history`, or from the start message
    /// among `messages` when it never ran.
    pub(crate) fn failed_unrun(
        instance: &InstanceRecord,
        history: &[HistoryEvent],
        messages: &[Message],
        failure: &crate::error::FailureDetails,
    ) -> Option<Self> {
        let from_history = history.iter().find_map(|e| match &e.event {
            Event::ExecutionStarted { trace_context, .. } => {
                Some((e.timestamp, trace_context.as_ref()))
            }
            _ => None,
        });
        let from_inbox = || {
            messages.iter().find_map(|m| match &m.event {
                Event::ExecutionStarted { trace_context, .. } => {
                    Some((instance.created_at, trace_context.as_ref()))
                }
                _ => None,
            })
        };
        let (started_at, stored) = from_history
            .or_else(from_inbox)
            .unwrap_or((instance.created_at, None));
        let rewinds = history
            .iter()
            .filter(|e| matches!(e.event, Event::ExecutionRewound { .. }))
            .count() as u32;
        let ending = Ending {
            status: RuntimeStatus::Failed,
            failure: Some(failure.to_string()),
        };
        Self::derive(instance, started_at, stored, rewinds, Some(ending))
    }

    fn derive(
        instance: &InstanceRecord,
        started_at: Timestamp,
        stored: Option<&TraceContext>,
        rewinds: u32,
        ending: Option<Ending>,
    ) -> Option<Self> {
        use std::fmt::Write;
        // One run of an id is told from another by its creation time (purge and recreate
        // restarts execution numbers).
        let mut key = String::with_capacity(64);
        let _ = write!(
            key,
            "{}\n{}\n{}\n",
            instance.instance_id,
            instance.created_at.as_unix_millis(),
            instance.execution
        );
        let hash = run_hash(&mut key, rewinds);
        let trace_id = match stored {
            Some(tc) => TraceId::from_hex(tc.trace_id()).ok()?,
            None if rewinds == 0 => TraceId::from_bytes(hash),
            None => TraceId::from_bytes(run_hash(&mut key, 0)),
        };
        let span_id = span_id_of(hash);
        let sampled = stored.is_none_or(TraceContext::is_sampled);
        let tracestate = || stored.and_then(TraceContext::tracestate).map(str::to_owned);
        let own = TraceContext::from_ids(
            trace_id.to_bytes(),
            span_id.to_bytes(),
            sampled,
            tracestate(),
        )?;
        let ended = ending.map(|ending| Ended {
            parent: match rewinds.checked_sub(1) {
                None => stored.cloned(),
                Some(before) => TraceContext::from_ids(
                    trace_id.to_bytes(),
                    span_id_of(run_hash(&mut key, before)).to_bytes(),
                    sampled,
                    tracestate(),
                ),
            },
            trace_id,
            span_id,
            started_at,
            instance_id: instance.instance_id.clone(),
            name: instance.name.clone(),
            execution: instance.execution,
            version: instance.version.clone(),
            rewinds,
            status: ending.status,
            failure: ending.failure,
        });
        Some(Self { own, ended })
    }

    /// Gives the work `commit` starts this execution's span as parent: activity tasks,
    /// sub-orchestrations and started orchestrations, entity operations, and the next
    /// execution after continue-as-new. Contexts already set are kept.
    pub(crate) fn stamp(&self, commit: &mut EpisodeCommit) {
        let own = || Some(self.own.clone());
        for task in &mut commit.activities {
            if task.trace_context.is_none() {
                task.trace_context = own();
            }
        }
        for (_, new) in &mut commit.new_instances {
            // Entities are created on demand; their operations carry their own context.
            if new.trace_context.is_none() && !new.instance_id.as_str().starts_with('@') {
                new.trace_context = own();
            }
        }
        let next = commit
            .next_execution
            .iter_mut()
            .flat_map(|n| &mut n.messages);
        let sent = commit.messages.iter_mut().map(|(_, m)| m);
        for m in next.chain(sent) {
            if let Event::ExecutionStarted { trace_context, .. }
            | Event::EntityOperation { trace_context, .. } = &mut m.event
                && trace_context.is_none()
            {
                *trace_context = own();
            }
        }
    }

    /// Emits the execution span if the committed episode ended the execution, ending at
    /// `end`.
    pub(crate) fn finish(self, tracer: &WorkerTracer, end: Timestamp) {
        let Some(ended) = self.ended else {
            return;
        };
        let mut attributes = vec![
            KeyValue::new("durable.instance_id", ended.instance_id.to_string()),
            KeyValue::new("durable.orchestrator", ended.name.clone()),
            KeyValue::new("durable.execution", i64::from(ended.execution)),
            KeyValue::new("durable.status", ended.status.as_str()),
        ];
        if let Some(v) = ended.version {
            attributes.push(KeyValue::new("durable.version", v));
        }
        if ended.rewinds > 0 {
            attributes.push(KeyValue::new("durable.rewinds", i64::from(ended.rewinds)));
        }
        let builder = SpanBuilder::from_name(format!("orchestration:{}", ended.name))
            .with_start_time(ended.started_at.to_system_time())
            .with_attributes(attributes);
        let parent = ended
            .parent
            .as_ref()
            .map_or_else(Context::new, super::parent_context);
        let mut span = super::with_planned_ids(ended.trace_id, ended.span_id, || {
            tracer.build(builder, &parent)
        });
        if span.is_recording()
            && span.span_context().span_id() != ended.span_id
            && !WARNED_IDS.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                "the tracer provider ignores durable's execution span ids: activity and sub-orchestration spans will not nest under their execution; build it with `.with_id_generator(durable_core::otel::IdGenerator::default())`"
            );
        }
        if let Some(message) = ended.failure {
            span.set_status(Status::error(message));
        }
        span.end_with_timestamp(end.max(ended.started_at).to_system_time());
    }
}

#[cfg(test)]
mod tests {
    use super::ExecutionTrace;
    use crate::history::{Event, RuntimeStatus};
    use crate::ids::{InstanceId, Timestamp};
    use crate::storage::{ActivityTask, EpisodeCommit, LockToken, Message, NewInstance};
    use crate::trace_context::TraceContext;

    fn record(id: &str, created: u64, execution: u32) -> crate::storage::InstanceRecord {
        let mut new = NewInstance::new(
            InstanceId::new(id).unwrap(),
            "o",
            "null".into(),
            Timestamp::from_unix_millis(created),
        );
        new.reuse = crate::IdReusePolicy::ReplaceFinished;
        let mut r = new.record(None);
        r.execution = execution;
        r
    }

    /// The trace of an execution that ends (so its span's parent is known).
    fn derive(
        id: &str,
        created: u64,
        execution: u32,
        stored: Option<&TraceContext>,
        rewinds: u32,
    ) -> ExecutionTrace {
        let ending = super::Ending {
            status: RuntimeStatus::Completed,
            failure: None,
        };
        ExecutionTrace::derive(
            &record(id, created, execution),
            Timestamp::EPOCH,
            stored,
            rewinds,
            Some(ending),
        )
        .unwrap()
    }

    fn parent(trace: &ExecutionTrace) -> Option<&TraceContext> {
        trace.ended.as_ref().and_then(|e| e.parent.as_ref())
    }

    #[test]
    fn ids_are_derived_from_the_run_and_the_stored_parent() {
        let a = derive("a", 5, 1, None, 0);
        assert_eq!(a.own, derive("a", 5, 1, None, 0).own, "deterministic");
        assert!(parent(&a).is_none());
        assert!(a.own.is_sampled());
        for other in [
            derive("b", 5, 1, None, 0),
            derive("a", 6, 1, None, 0),
            derive("a", 5, 2, None, 0),
        ] {
            assert_ne!(other.own.trace_id(), a.own.trace_id());
            assert_ne!(other.own.span_id(), a.own.span_id());
        }
        let caller = TraceContext::parse(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            Some("k=v"),
        )
        .unwrap();
        let child = derive("a", 5, 1, Some(&caller), 0);
        assert_eq!(child.own.trace_id(), caller.trace_id());
        assert_eq!(child.own.span_id(), a.own.span_id());
        assert!(
            !child.own.is_sampled(),
            "the caller's sampling decision is kept"
        );
        assert_eq!(child.own.tracestate(), Some("k=v"));
        assert_eq!(parent(&child), Some(&caller));
    }

    #[test]
    fn a_rewound_run_is_a_child_of_the_run_before() {
        let first = derive("a", 5, 1, None, 0);
        let second = derive("a", 5, 1, None, 1);
        assert_eq!(second.own.trace_id(), first.own.trace_id());
        assert_ne!(second.own.span_id(), first.own.span_id());
        assert_eq!(parent(&second), Some(&first.own));
    }

    #[test]
    fn stamps_the_work_an_episode_starts() {
        let trace = derive("a", 5, 1, None, 0);
        let id = InstanceId::new("a").unwrap();
        let now = Timestamp::EPOCH;
        let mut commit = EpisodeCommit::new(id.clone(), LockToken(1), RuntimeStatus::Running, now);
        commit
            .activities
            .push(ActivityTask::new(id.clone(), 1, 0, "act", "null".into()));
        let child = NewInstance::new(InstanceId::new("child").unwrap(), "c", "null".into(), now);
        commit.new_instances.push((1, child));
        let entity = crate::EntityId::new("counter", "k").unwrap();
        commit
            .new_instances
            .push((u64::MAX, crate::entity::entity_instance(&entity, now)));
        let op = Event::EntityOperation {
            operation: "add".into(),
            input: "1".into(),
            sender: None,
            reply_to: None,
            trace_context: None,
        };
        commit
            .messages
            .push((entity.instance_id(), Message::new(op, None, now)));
        let raised = Event::EventRaised {
            name: "e".into(),
            input: "1".into(),
        };
        commit.messages.push((id, Message::new(raised, None, now)));
        trace.stamp(&mut commit);
        assert_eq!(
            commit.activities[0].trace_context.as_ref(),
            Some(&trace.own)
        );
        assert_eq!(
            commit.new_instances[0].1.trace_context.as_ref(),
            Some(&trace.own)
        );
        assert_eq!(
            commit.new_instances[1].1.trace_context, None,
            "entity instance"
        );
        assert!(matches!(&commit.messages[0].1.event,
            Event::EntityOperation { trace_context: Some(tc), .. } if *tc == trace.own));
    }
}
