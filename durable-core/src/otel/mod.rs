//! Distributed tracing through OpenTelemetry (feature `opentelemetry`).
//!
//! An orchestration started inside a traced request continues that request's trace, across
//! workers, processes and restarts:
//!
//! - **Start.** [`Client`](crate::Client) starts store the W3C context of the current
//!   `tracing` span (with a `tracing-opentelemetry` layer installed), or the one given with
//!   [`StartOptions::trace_context`](crate::StartOptions::trace_context); the HTTP API takes
//!   the `traceparent` and `tracestate` request headers. Entity signals do the same.
//! - **Execution spans.** One span per orchestration *execution*, `orchestration:<name>`,
//!   emitted once by the worker that commits the episode ending the execution (completed,
//!   failed, terminated or continued as new) — never per episode or replay, never twice
//!   after a crash. It starts at the execution's `ExecutionStarted` time and ends at that
//!   commit; its parent is the stored context (a continued-as-new execution's is the
//!   previous execution's span). Attributes: `durable.instance_id`, `durable.orchestrator`,
//!   `durable.execution`, `durable.version`, `durable.status`; a failure sets the error
//!   status with its message. Its span id is derived from the instance (id, creation
//!   time, execution), so the work it starts earlier can already name it as parent; an
//!   execution started without a trace gets a trace id derived the same way. A rewound
//!   execution that ends again has a second span, a child of the first.
//! - **Activity spans.** The worker's `activity` `tracing` span around every run of an
//!   activity (each attempt) is parented to its execution span, as `activity:<name>`; spans
//!   the activity creates nest under it. A failed run sets the error status.
//! - **Sub-orchestrations and `ctx.start_orchestration`** store the starting execution's
//!   span as their parent; **entity operations** run in an `entity_operation` span
//!   (`entity:<entity>:<operation>`) parented to the calling execution's span (or the
//!   signalling client's or entity operation's).
//!
//! # Set-up
//!
//! Execution spans are built with the tracer provider given to
//! [`WorkerBuilder::tracer_provider`](crate::WorkerBuilder::tracer_provider), else with
//! OpenTelemetry's global provider (a no-op until one is installed). Activity and entity
//! operation spans are `tracing` spans: they reach OpenTelemetry through the
//! `tracing-opentelemetry` layer, which should use a tracer of the same provider. That
//! provider needs the [`IdGenerator`] of this module (OpenTelemetry's API no longer takes
//! explicit span ids, and an execution span's id must be the one its children were given);
//! the layer should take the [`ExportFilter`].
//!
//! ```
//! use durable_core::otel::{ExportFilter, IdGenerator};
//! use durable_core::prelude::*;
//! use opentelemetry::trace::TracerProvider as _;
//! use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
//! use tracing_subscriber::prelude::*;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let exporter = InMemorySpanExporter::default(); // an OTLP exporter in production
//! let provider = SdkTracerProvider::builder()
//!     .with_id_generator(IdGenerator::default())
//!     .with_simple_exporter(exporter.clone())
//!     .build();
//! let subscriber = tracing_subscriber::registry().with(
//!     tracing_opentelemetry::layer()
//!         .with_tracer(provider.tracer("my-service"))
//!         .with_filter(ExportFilter),
//! );
//! let _guard = tracing::subscriber::set_default(subscriber); // or `.init()` for the process
//! let worker = Worker::builder()
//!     .store(MemoryStore::new())
//!     .tracer_provider(provider.clone())
//!     .start()?;
//! # worker.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Spans are at most once: an execution span is lost if its worker dies between the commit
//! and the export, and an activity or entity operation that ran in a worker that died
//! before its result was committed runs (and has a span) again.
//!
//! Without a provider or layer, tracing costs one name-based hash per episode that starts
//! work and a trace context stored with each task, start and entity operation; without the
//! feature none of this is compiled (contexts given with `StartOptions` are still stored).

mod execution;

use std::cell::Cell;

use opentelemetry::Context;
use opentelemetry::trace::{
    SpanContext, SpanId, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
};
use tracing::Metadata;
use tracing_opentelemetry::{OpenTelemetrySpanExt, SetParentError};
use tracing_subscriber::layer::{self, Filter};

use crate::error::FailureDetails;
use crate::ids::EntityId;
use crate::storage::ActivityTask;
use crate::trace_context::TraceContext;

pub(crate) use execution::{ExecutionTrace, WorkerTracer};

thread_local! {
    /// The ids the next span built on this thread must get (set around one
    /// `build_with_context` call); read by [`IdGenerator`].
    static PLANNED_SPAN: Cell<Option<SpanId>> = const { Cell::new(None) };
    static PLANNED_TRACE: Cell<Option<TraceId>> = const { Cell::new(None) };
}

/// The span and trace id generator a tracer provider needs for durable's execution spans:
/// random ids (OpenTelemetry's [`RandomIdGenerator`](opentelemetry_sdk::trace::RandomIdGenerator))
/// for every span but those, which get the ids derived from their instance.
///
/// An execution span is built when the execution ends, long after its activities and
/// sub-orchestrations named it as their parent; OpenTelemetry's API no longer accepts an
/// explicit span id, so the worker tells this generator which one to hand out. A provider
/// without it still records execution spans, with random ids that their children do not
/// point to (the worker logs a warning once).
///
/// # Examples
///
/// ```
/// use opentelemetry_sdk::trace::SdkTracerProvider;
///
/// let provider = SdkTracerProvider::builder()
///     .with_id_generator(durable_core::otel::IdGenerator::default())
///     .build();
/// # let _ = provider;
/// ```
#[derive(Debug, Clone, Default)]
pub struct IdGenerator {
    random: opentelemetry_sdk::trace::RandomIdGenerator,
}

impl opentelemetry_sdk::trace::IdGenerator for IdGenerator {
    fn new_trace_id(&self) -> TraceId {
        PLANNED_TRACE
            .take()
            .unwrap_or_else(|| self.random.new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        PLANNED_SPAN
            .take()
            .unwrap_or_else(|| self.random.new_span_id())
    }
}

/// Builds one span with the planned ids: `build` runs with them set on this thread.
fn with_planned_ids<T>(trace: TraceId, span: SpanId, build: impl FnOnce() -> T) -> T {
    PLANNED_TRACE.set(Some(trace));
    PLANNED_SPAN.set(Some(span));
    let result = build();
    PLANNED_TRACE.set(None);
    PLANNED_SPAN.set(None);
    result
}

/// A per-layer filter for the `tracing-opentelemetry` layer: keeps out what does not
/// belong in a trace — the worker's per-episode `episode` span (log context for one turn of
/// an orchestration; its execution has a span of its own) and the events and spans
/// orchestration code emits while it replays history (as
/// [`ReplaySafe`](crate::logging::ReplaySafe) does for logs), so each is exported once.
///
/// # Examples
///
/// ```
/// use durable_core::otel::ExportFilter;
/// use opentelemetry::trace::TracerProvider as _;
/// use tracing_subscriber::prelude::*;
///
/// let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
///     .with_id_generator(durable_core::otel::IdGenerator::default())
///     .build();
/// let layer = tracing_opentelemetry::layer()
///     .with_tracer(provider.tracer("my-service"))
///     .with_filter(ExportFilter);
/// let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(layer));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct ExportFilter;

impl ExportFilter {
    fn is_episode_span(meta: &Metadata<'_>) -> bool {
        meta.is_span() && meta.name() == "episode" && meta.target().starts_with("durable_core::")
    }
}

impl<S> Filter<S> for ExportFilter {
    fn enabled(&self, meta: &Metadata<'_>, _cx: &layer::Context<'_, S>) -> bool {
        // Orchestration code replaying history re-creates the events and spans it made the
        // first time: only the first time is exported.
        if crate::replay::is_replaying_on_this_thread() {
            return false;
        }
        !Self::is_episode_span(meta)
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> tracing::subscriber::Interest {
        if Self::is_episode_span(meta) {
            tracing::subscriber::Interest::never()
        } else {
            tracing::subscriber::Interest::sometimes()
        }
    }
}

/// The trace context of the caller: that of the current `tracing` span, else the current
/// OpenTelemetry context; `None` when neither holds a valid span context.
pub(crate) fn current() -> Option<TraceContext> {
    let from_span = tracing::Span::current().context();
    let span = from_span.span();
    let sc = span.span_context();
    if sc.is_valid() {
        return from_span_context(sc);
    }
    let cx = Context::current();
    from_span_context(cx.span().span_context())
}

/// The stored form of a span context; `None` for an invalid one.
pub(crate) fn from_span_context(sc: &SpanContext) -> Option<TraceContext> {
    if !sc.is_valid() {
        return None;
    }
    let state = sc.trace_state().header();
    TraceContext::from_ids(
        sc.trace_id().to_bytes(),
        sc.span_id().to_bytes(),
        sc.is_sampled(),
        (!state.is_empty()).then_some(state),
    )
}

/// A remote span context from a stored one.
pub(crate) fn span_context(tc: &TraceContext) -> SpanContext {
    let trace_id = TraceId::from_hex(tc.trace_id()).unwrap_or(TraceId::INVALID);
    let span_id = SpanId::from_hex(tc.span_id()).unwrap_or(SpanId::INVALID);
    let state = tc
        .tracestate()
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    SpanContext::new(trace_id, span_id, TraceFlags::new(tc.flags()), true, state)
}

/// An OpenTelemetry context whose (remote) parent span is the stored one.
pub(crate) fn parent_context(tc: &TraceContext) -> Context {
    Context::new().with_remote_span_context(span_context(tc))
}

/// Makes the worker's `activity` span the OpenTelemetry span of this run: named
/// `activity:<name>`, child of the execution that scheduled it. The span must not have been
/// entered yet.
pub(crate) fn adopt_activity(span: &tracing::Span, task: &ActivityTask) {
    if span.is_disabled() || !set_parent(span, task.trace_context.as_ref()) {
        return;
    }
    span.record("otel.name", format!("activity:{}", task.name).as_str());
    span.set_attribute("durable.instance_id", task.instance_id.to_string());
    span.set_attribute("durable.execution", i64::from(task.execution));
    span.set_attribute("durable.activity", task.name.clone());
    span.set_attribute("durable.attempt", i64::from(task.attempt));
}

/// Makes an `entity_operation` span the OpenTelemetry span of the operation, child of
/// `parent` (the sender's span). Returns the context for what the operation sends: its
/// own span's, or `parent` when there is no OpenTelemetry layer.
pub(crate) fn adopt_entity_operation(
    span: &tracing::Span,
    entity: &EntityId,
    operation: &str,
    parent: Option<&TraceContext>,
) -> Option<TraceContext> {
    if span.is_disabled() || !set_parent(span, parent) {
        return parent.cloned();
    }
    span.record(
        "otel.name",
        format!("entity:{}:{operation}", entity.name).as_str(),
    );
    span.set_attribute("durable.entity", entity.to_string());
    span.set_attribute("durable.operation", operation.to_owned());
    let own = span.context();
    from_span_context(own.span().span_context()).or_else(|| parent.cloned())
}

/// Makes `parent` (if any) the OpenTelemetry parent of `span`; `false` when no
/// `tracing-opentelemetry` layer sees the span (nothing more to do for it).
/// Makes the management API's `http_request` span a child of the caller's span (the
/// request's `traceparent`), as an HTTP server span is; a start made while it is current
/// stores it as the new instance's parent.
#[cfg(feature = "http")]
pub(crate) fn adopt_request(span: &tracing::Span, caller: &TraceContext) {
    if !span.is_disabled() {
        set_parent(span, Some(caller));
    }
}

fn set_parent(span: &tracing::Span, parent: Option<&TraceContext>) -> bool {
    let cx = parent.map_or_else(Context::new, parent_context);
    !matches!(
        span.set_parent(cx),
        Err(SetParentError::LayerNotFound | SetParentError::SpanDisabled)
    )
}

/// Sets the error status of a run's span when it failed.
pub(crate) fn record_failure(span: &tracing::Span, failure: Option<&FailureDetails>) {
    if let Some(f) = failure {
        span.set_status(Status::error(f.to_string()));
    }
}
