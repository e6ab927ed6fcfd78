//! Distributed tracing (feature `opentelemetry`): the spans a flow exports to OpenTelemetry's
//! in-memory exporter, as one tree — also across a crash and restart, and for an HTTP start
//! with a `traceparent` header.
//!
//! Each test has its own tracer provider and exporter, handed to its workers
//! (`WorkerBuilder::tracer_provider`) and to a `tracing-opentelemetry` layer installed as the
//! thread's default subscriber; the tests run on current-thread runtimes, so nothing global
//! is shared between tests running in parallel.
#![cfg(all(feature = "opentelemetry", feature = "http"))]

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use durable_core::otel::{ExportFilter, IdGenerator};
use durable_core::prelude::*;
use durable_core::{
    InstanceRecord, RedbStore, Store, VersionMatch, VersionMismatchAction, WorkerBuilder,
};
use opentelemetry::trace::{SpanId, Status, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde::{Deserialize, Serialize};
use tracing::Instrument as _;
use tracing_subscriber::prelude::*;

/// Longest a test waits for the engine before failing (a guard against hangs, not timing).
const GUARD: Duration = Duration::from_secs(20);

// ------------------------------------------------------------------------------ the flow

/// One step of work; opens a span of its own, which must nest under the activity's span.
#[activity]
async fn step(x: i64) -> Result<i64, ActivityError> {
    let _lookup = tracing::info_span!("lookup").entered();
    Ok(x + 1)
}

#[entity]
#[derive(Default, Serialize, Deserialize)]
struct Tally {
    total: i64,
}

#[entity]
impl Tally {
    fn add(&mut self, n: i64) -> i64 {
        self.total += n;
        self.total
    }
}

#[derive(Serialize, Deserialize)]
struct Plan {
    x: i64,
    /// Wait for the `go` event after the chain (the crash test stops its first worker there).
    pause: bool,
}

/// A chain of two steps, a fan-out of three, a sub-orchestration and an entity call.
#[orchestrator]
async fn trip(ctx: OrchestrationContext, plan: Plan) -> Result<i64, OrchestrationError> {
    let a = ctx.call(step, plan.x).await?;
    let b = ctx.call(step, a).await?;
    if plan.pause {
        ctx.wait_for_event::<()>("go").await?;
    }
    let mut sum = 0;
    for r in ctx.when_all((0..3).map(|i| ctx.call(step, b + i))).await {
        sum += r?;
    }
    let c = ctx.call_sub_orchestrator(leg, (sum, true)).await?;
    Ok(ctx.entity::<Tally>("t").add(c).await?)
}

/// One step, then (the first time) continue as new: two executions, one step each.
#[orchestrator]
async fn leg(ctx: OrchestrationContext, input: (i64, bool)) -> Result<i64, OrchestrationError> {
    let (x, again) = input;
    let y = ctx.call(step, x).await?;
    if again {
        return ctx.continue_as_new((y, false)).await;
    }
    Ok(y)
}

fn register(b: WorkerBuilder) -> WorkerBuilder {
    b.register(step)
        .register(trip)
        .register(leg)
        .register(Tally::entity())
}

/// The span tree the flow exports, under the client's `request` span. Execution spans show
/// their execution number and status.
const FLOW_TREE: &str = "\
request
  entity:tally:add
  orchestration:trip [execution=1 status=Completed]
    activity:step
      lookup
    activity:step
      lookup
    activity:step
      lookup
    activity:step
      lookup
    activity:step
      lookup
    entity:tally:add
    orchestration:leg [execution=1 status=ContinuedAsNew]
      activity:step
        lookup
      orchestration:leg [execution=2 status=Completed]
        activity:step
          lookup
";

// ------------------------------------------------------------------------------ harness

/// A tracer provider with an in-memory exporter, installed (with a `tracing-opentelemetry`
/// layer) as this thread's default subscriber while the value lives.
struct Traces {
    exporter: InMemorySpanExporter,
    provider: SdkTracerProvider,
    _guard: tracing::subscriber::DefaultGuard,
}

impl Traces {
    fn install() -> Self {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_id_generator(IdGenerator::default())
            .with_simple_exporter(exporter.clone())
            .build();
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("observability-test"))
            .with_filter(ExportFilter);
        let guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(layer));
        Self {
            exporter,
            provider,
            _guard: guard,
        }
    }

    fn spans(&self) -> Vec<SpanData> {
        self.exporter.get_finished_spans().expect("exported spans")
    }
}

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

/// Renders the spans as indented trees (roots: spans whose parent was not exported),
/// siblings in a canonical order, so two exports compare as text.
fn render(spans: &[SpanData]) -> String {
    fn line(span: &SpanData) -> String {
        let mut s = span.name.to_string();
        if let Some(execution) = attr(span, "durable.execution")
            && span.name.starts_with("orchestration:")
        {
            let status = attr(span, "durable.status").unwrap_or_default();
            s = format!("{s} [execution={execution} status={status}]");
        }
        if let Status::Error { description } = &span.status {
            s = format!("{s} !{description}");
        }
        s
    }
    fn subtree(
        span: &SpanData,
        children: &HashMap<SpanId, Vec<&SpanData>>,
        depth: usize,
    ) -> String {
        let mut kids: Vec<String> = children
            .get(&span.span_context.span_id())
            .into_iter()
            .flatten()
            .map(|c| subtree(c, children, depth + 1))
            .collect();
        kids.sort();
        format!("{}{}\n{}", "  ".repeat(depth), line(span), kids.concat())
    }
    let ids: std::collections::HashSet<SpanId> =
        spans.iter().map(|s| s.span_context.span_id()).collect();
    let mut children: HashMap<SpanId, Vec<&SpanData>> = HashMap::new();
    for s in spans {
        children.entry(s.parent_span_id).or_default().push(s);
    }
    let mut roots: Vec<String> = spans
        .iter()
        .filter(|s| !ids.contains(&s.parent_span_id))
        .map(|s| subtree(s, &children, 0))
        .collect();
    roots.sort();
    roots.concat()
}

/// Every span is in `trace`, and no span id is exported twice.
fn assert_one_trace(spans: &[SpanData], trace: TraceId) {
    for s in spans {
        assert_eq!(
            s.span_context.trace_id(),
            trace,
            "{} is in another trace",
            s.name
        );
    }
    let mut ids: Vec<SpanId> = spans.iter().map(|s| s.span_context.span_id()).collect();
    ids.sort_unstable_by_key(|id| id.to_bytes());
    let before = ids.len();
    ids.dedup();
    assert_eq!(
        ids.len(),
        before,
        "a span id was exported twice:\n{}",
        render(spans)
    );
}

/// The span named `name` (exactly one).
fn only<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    let found: Vec<&SpanData> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "spans named {name}:\n{}", render(spans));
    found[0]
}

async fn wait_done(client: &Client, id: &InstanceId) -> InstanceRecord {
    tokio::time::timeout(GUARD, client.wait_for_completion(id))
        .await
        .expect("the instance finishes in time")
        .expect("wait_for_completion")
}

// --------------------------------------------------------------------------------- tests

/// Chain, fan-out, sub-orchestration (continued as new once) and entity call, started and
/// signalled inside a client span: one trace, one span per execution, one per activity run
/// and per entity operation, each under the span that caused it.
#[tokio::test]
async fn a_flow_is_one_trace_under_the_client_span() {
    let traces = Traces::install();
    let worker = register(Worker::builder().store(MemoryStore::new()))
        .tracer_provider(traces.provider.clone())
        .start()
        .unwrap();
    let client = worker.client();
    let request = tracing::info_span!("request");
    let run = async {
        client.entity::<Tally>("t").add(100).await.unwrap();
        trip::start(&client, Plan { x: 1, pause: false })
            .await
            .unwrap()
    }
    .instrument(request.clone())
    .await;
    let record = wait_done(&client, run.id()).await;
    assert_eq!(record.status, RuntimeStatus::Completed);
    worker.shutdown().await;
    drop(request);

    let spans = traces.spans();
    assert_eq!(render(&spans), FLOW_TREE);
    assert_one_trace(&spans, only(&spans, "request").span_context.trace_id());

    // Execution spans: from the execution's start to its end, with its attributes.
    let trip_span = only(&spans, "orchestration:trip");
    assert!(trip_span.start_time <= trip_span.end_time);
    assert_eq!(
        attr(trip_span, "durable.instance_id").as_deref(),
        Some(run.id().as_str())
    );
    assert_eq!(
        attr(trip_span, "durable.orchestrator").as_deref(),
        Some("trip")
    );
    for activity in spans.iter().filter(|s| s.name == "activity:step") {
        assert!(activity.start_time <= activity.end_time);
        assert_eq!(attr(activity, "durable.activity").as_deref(), Some("step"));
        assert_eq!(attr(activity, "durable.attempt").as_deref(), Some("1"));
    }
}

/// A failed activity attempt and its retry are two spans, the first with the error status;
/// a failed execution has the error status and message. Started outside any span, the
/// execution is the root of a trace of its own.
#[tokio::test]
async fn failures_set_the_error_status_and_an_untraced_start_gets_its_own_trace() {
    #[derive(Clone, Default)]
    struct Calls(Arc<AtomicU32>);

    #[activity]
    async fn flaky(State(calls): State<Calls>, x: i64) -> Result<i64, ActivityError> {
        if calls.0.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(ActivityError::new("flaked"));
        }
        Ok(x)
    }

    #[orchestrator]
    async fn fragile(ctx: OrchestrationContext, x: i64) -> Result<i64, OrchestrationError> {
        let policy = RetryPolicy::new(2, Duration::ZERO);
        ctx.call_with_retry(flaky, x, policy).await?;
        Err(OrchestrationError::new("gave up"))
    }

    let traces = Traces::install();
    let worker = Worker::builder()
        .store(MemoryStore::new())
        .state(Calls::default())
        .register(flaky)
        .register(fragile)
        .tracer_provider(traces.provider.clone())
        .start()
        .unwrap();
    let client = worker.client();
    let run = fragile::start(&client, 7).await.unwrap();
    assert_eq!(
        wait_done(&client, run.id()).await.status,
        RuntimeStatus::Failed
    );
    worker.shutdown().await;

    let spans = traces.spans();
    let tree = render(&spans);
    assert!(
        tree.starts_with("orchestration:fragile [execution=1 status=Failed] !"),
        "{tree}"
    );
    assert!(tree.contains("gave up"), "{tree}");
    assert_eq!(
        tree.lines().skip(1).collect::<Vec<_>>(),
        [
            "  activity:flaky",
            "  activity:flaky !ActivityError: flaked"
        ],
        "{tree}"
    );
    let root = only(&spans, "orchestration:fragile");
    assert_eq!(root.parent_span_id, SpanId::INVALID);
    assert_one_trace(&spans, root.span_context.trace_id());
    let attempts: Vec<Option<String>> = spans
        .iter()
        .filter(|s| s.name == "activity:flaky")
        .map(|s| attr(s, "durable.attempt"))
        .collect();
    assert!(attempts.contains(&Some("1".into())) && attempts.contains(&Some("2".into())));
}

/// Without a `tracing` span, a start joins the OpenTelemetry context current while it runs
/// (code instrumented with OpenTelemetry's API directly); `StartOptions::trace_context`
/// wins over both.
#[tokio::test]
async fn a_start_joins_the_current_opentelemetry_context_unless_told_otherwise() {
    use opentelemetry::context::FutureExt as _;
    use opentelemetry::trace::{SpanContext, TraceContextExt as _, TraceFlags, TraceState};

    let traces = Traces::install();
    let worker = register(Worker::builder().store(MemoryStore::new()))
        .tracer_provider(traces.provider.clone())
        .start()
        .unwrap();
    let client = worker.client();
    let current = SpanContext::new(
        TraceId::from_hex("5b8efff798038103d269b633813fc60c").unwrap(),
        SpanId::from_hex("eee19b7ec3c1b174").unwrap(),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    let cx = opentelemetry::Context::new().with_remote_span_context(current.clone());
    let joined = leg::start(&client, (1, false))
        .with_context(cx.clone())
        .await
        .unwrap();
    let explicit = durable_core::TraceContext::parse(
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        None,
    )
    .unwrap();
    let options = StartOptions::new().trace_context(explicit.clone());
    let told = leg::start_with(&client, (2, false), options)
        .with_context(cx)
        .await
        .unwrap();
    for run in [&joined, &told] {
        wait_done(&client, run.id()).await;
    }
    worker.shutdown().await;

    let spans = traces.spans();
    let execution = |id: &InstanceId| {
        spans
            .iter()
            .find(|s| {
                s.name.starts_with("orchestration:")
                    && attr(s, "durable.instance_id").as_deref() == Some(id.as_str())
            })
            .unwrap_or_else(|| panic!("no span of {id}:\n{}", render(&spans)))
    };
    let joined = execution(joined.id());
    assert_eq!(joined.span_context.trace_id(), current.trace_id());
    assert_eq!(joined.parent_span_id, current.span_id());
    let told = execution(told.id());
    assert_eq!(
        told.span_context.trace_id().to_string(),
        explicit.trace_id()
    );
    assert_eq!(told.parent_span_id.to_string(), explicit.span_id());
}

/// A rewound execution ends twice: its second span is a child of the first (the failed
/// run), and the work the rewind re-runs nests under the second.
#[tokio::test]
async fn a_rewound_execution_continues_under_its_failed_run() {
    #[derive(Clone, Default)]
    struct Calls(Arc<AtomicU32>);

    #[activity]
    async fn charge(State(calls): State<Calls>, x: i64) -> Result<i64, ActivityError> {
        if calls.0.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(ActivityError::new("service down"));
        }
        Ok(x)
    }

    #[orchestrator]
    async fn checkout(ctx: OrchestrationContext, x: i64) -> Result<i64, OrchestrationError> {
        Ok(ctx.call(charge, x).await?)
    }

    let traces = Traces::install();
    let worker = Worker::builder()
        .store(MemoryStore::new())
        .state(Calls::default())
        .register(charge)
        .register(checkout)
        .tracer_provider(traces.provider.clone())
        .start()
        .unwrap();
    let client = worker.client();
    let run = checkout::start(&client, 3).await.unwrap();
    assert_eq!(
        wait_done(&client, run.id()).await.status,
        RuntimeStatus::Failed
    );
    run.rewind("the service is back").await.unwrap();
    client
        .wait_until(run.id(), |r| r.status == RuntimeStatus::Completed, GUARD)
        .await
        .unwrap();
    worker.shutdown().await;

    let spans = traces.spans();
    let tree = render(&spans);
    let lines: Vec<&str> = tree.lines().collect();
    assert_eq!(lines.len(), 4, "{tree}");
    assert!(
        lines[0].starts_with("orchestration:checkout [execution=1 status=Failed] !"),
        "{tree}"
    );
    assert_eq!(
        lines[1..],
        [
            "  activity:charge !ActivityError: service down",
            "  orchestration:checkout [execution=1 status=Completed]",
            "    activity:charge",
        ],
        "{tree}"
    );
    let rewound = spans
        .iter()
        .find(|s| attr(s, "durable.status").as_deref() == Some("Completed"))
        .unwrap();
    assert_eq!(attr(rewound, "durable.rewinds").as_deref(), Some("1"));
    assert_one_trace(&spans, rewound.span_context.trace_id());
}

/// An execution the worker fails without running it (its version may not run here) has a
/// failed span too.
#[tokio::test]
async fn an_execution_failed_for_its_version_has_a_span() {
    #[orchestrator]
    async fn pinned(_ctx: OrchestrationContext, x: i64) -> Result<i64, OrchestrationError> {
        Ok(x)
    }

    let traces = Traces::install();
    let worker = Worker::builder()
        .store(MemoryStore::new())
        .register(pinned)
        .version("2", VersionMatch::Strict, VersionMismatchAction::Fail)
        .tracer_provider(traces.provider.clone())
        .start()
        .unwrap();
    let client = worker.client();
    let request = tracing::info_span!("request");
    let run = pinned::start_with(&client, 1, StartOptions::new().version("1"))
        .instrument(request.clone())
        .await
        .unwrap();
    assert_eq!(
        wait_done(&client, run.id()).await.status,
        RuntimeStatus::Failed
    );
    worker.shutdown().await;
    drop(request);

    let spans = traces.spans();
    let tree = render(&spans);
    assert!(
        tree.starts_with(
            "request\n  orchestration:pinned [execution=1 status=Failed] !VersionMismatch"
        ),
        "{tree}"
    );
    assert_eq!(tree.lines().count(), 2, "{tree}");
}

/// Opens the redb file, waiting (by yielding, never sleeping) for an aborted worker's
/// tasks to let go of it.
async fn reopen(path: &Path) -> RedbStore {
    for _ in 0..10_000 {
        match RedbStore::open(path) {
            Ok(store) => return store,
            Err(_) => tokio::task::yield_now().await,
        }
    }
    RedbStore::open(path).expect("the store re-opens once the crashed worker is gone")
}

/// The same flow on a redb file, with the first worker crashing (aborted, no shutdown)
/// after the chain's activities completed and a second worker finishing it: the exported
/// tree is the same as without the crash — one span per execution and per activity run,
/// the first worker's activities under the execution span the second worker emits.
#[tokio::test]
async fn a_crash_and_restart_in_the_middle_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let traces = Traces::install();
    let request = tracing::info_span!("request");

    let store = RedbStore::open(&path).unwrap();
    let first = register(Worker::builder().store(store.clone()))
        .tracer_provider(traces.provider.clone())
        .start()
        .unwrap();
    let id = async {
        let client = first.client();
        client.entity::<Tally>("t").add(100).await.unwrap();
        let run = trip::start(&client, Plan { x: 1, pause: true })
            .await
            .unwrap();
        run.id().clone()
    }
    .instrument(request.clone())
    .await;
    // The chain's two results are committed; the execution waits for `go`.
    let mut changes = store.signals().changed.subscribe();
    tokio::time::timeout(GUARD, async {
        loop {
            let history = store.read_history(&id).await.unwrap();
            if history
                .iter()
                .filter(|e| e.event.kind() == "TaskCompleted")
                .count()
                == 2
            {
                break;
            }
            changes.changed().await.unwrap();
        }
    })
    .await
    .expect("the chain completes in time");
    let before = traces.spans();
    assert_eq!(
        before.iter().filter(|s| s.name == "activity:step").count(),
        2,
        "{}",
        render(&before)
    );
    assert!(!before.iter().any(|s| s.name.starts_with("orchestration:")));
    first.abort();
    drop((store, changes));

    let store = reopen(&path).await;
    let second = register(Worker::builder().store(store))
        .tracer_provider(traces.provider.clone())
        .start()
        .unwrap();
    let client = second.client();
    client.raise_event(&id, "go", &()).await.unwrap();
    assert_eq!(
        wait_done(&client, &id).await.status,
        RuntimeStatus::Completed
    );
    second.shutdown().await;
    drop(request);

    let spans = traces.spans();
    assert_eq!(render(&spans), FLOW_TREE);
    assert_one_trace(&spans, only(&spans, "request").span_context.trace_id());
}

/// A start through the HTTP API with a `traceparent` header joins that trace: its
/// execution span is a child of the caller's span.
#[tokio::test]
async fn an_http_start_joins_the_traceparent_of_the_request() {
    use axum::body::Bytes;
    use axum::http::{Method, Request, StatusCode};
    use http_body_util::Full;
    use hyper_util::client::legacy::Client as HttpClient;
    use hyper_util::rt::TokioExecutor;

    let traces = Traces::install();
    let worker = register(Worker::builder().store(MemoryStore::new()))
        .tracer_provider(traces.provider.clone())
        .start()
        .unwrap();
    let server = durable_core::http::serve(
        worker.client(),
        ([127, 0, 0, 1], 0).into(),
        durable_core::http::HttpOptions::new(),
    )
    .await
    .unwrap();
    let http: HttpClient<_, Full<Bytes>> = HttpClient::builder(TokioExecutor::new()).build_http();
    let caller_trace = "0af7651916cd43dd8448eb211c80319c";
    let caller_span = "b7ad6b7169203331";
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!(
            "{}/runtime/webhooks/durabletask/orchestrators/leg/from-http",
            server.url()
        ))
        .header("content-type", "application/json")
        .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
        .header("tracestate", "vendor=opaque")
        .body(Full::new(Bytes::from("[5, false]")))
        .unwrap();
    let response = tokio::time::timeout(GUARD, http.request(request))
        .await
        .expect("answers in time")
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let client = worker.client();
    let id = InstanceId::new("from-http").unwrap();
    assert_eq!(
        wait_done(&client, &id).await.status,
        RuntimeStatus::Completed
    );
    server.shutdown().await.unwrap();
    worker.shutdown().await;

    let spans = traces.spans();
    // The request's span is the server span of the caller's call; the instance it started
    // is its child.
    assert_eq!(
        render(&spans),
        "http_request\n  orchestration:leg [execution=1 status=Completed]\n    activity:step\n      lookup\n"
    );
    let request = only(&spans, "http_request");
    assert_eq!(
        request.parent_span_id,
        SpanId::from_hex(caller_span).unwrap()
    );
    assert!(request.parent_span_is_remote);
    let execution = only(&spans, "orchestration:leg");
    assert_eq!(execution.parent_span_id, request.span_context.span_id());
    assert_one_trace(&spans, TraceId::from_hex(caller_trace).unwrap());
    assert_eq!(
        execution.span_context.trace_state().header(),
        "vendor=opaque",
        "the caller's tracestate is passed along"
    );
}

/// Three steps, each decided inside a span of the orchestration's own code.
#[orchestrator]
async fn decider(ctx: OrchestrationContext, n: i64) -> Result<i64, OrchestrationError> {
    let mut x = 0;
    for i in 0..n {
        tracing::info_span!("decide", i).in_scope(|| ());
        x = ctx.call(step, x + i).await?;
    }
    Ok(x)
}

/// Spans that orchestration code opens are exported once, when the code first runs, not
/// again each time it replays (here every episode replays: no cache).
#[tokio::test]
async fn spans_of_orchestration_code_are_not_exported_again_on_replay() {
    let traces = Traces::install();
    let worker = register(Worker::builder().store(MemoryStore::new()))
        .register(decider)
        .cache_capacity(0)
        .tracer_provider(traces.provider.clone())
        .start()
        .unwrap();
    let client = worker.client();
    let id = client.start(decider, 3).await.unwrap();
    assert_eq!(
        wait_done(&client, id.id()).await.status,
        RuntimeStatus::Completed
    );
    worker.shutdown().await;

    let spans = traces.spans();
    let decided = spans.iter().filter(|s| s.name == "decide").count();
    assert_eq!(decided, 3, "one per step:\n{}", render(&spans));
    assert_eq!(
        spans.iter().filter(|s| s.name == "activity:step").count(),
        3
    );
}

/// Local activities run inside the episode, and their spans still sit under the
/// execution's span, one per run.
#[tokio::test]
async fn local_activity_runs_are_spans_under_their_execution() {
    #[orchestrator]
    async fn locally(ctx: OrchestrationContext, x: i64) -> Result<i64, OrchestrationError> {
        let a = ctx.call_local(step, x).await?;
        Ok(ctx.call_local(step, a).await?)
    }

    let traces = Traces::install();
    let worker = Worker::builder()
        .store(MemoryStore::new())
        .register(step)
        .register(locally)
        .tracer_provider(traces.provider.clone())
        .start()
        .unwrap();
    let client = worker.client();
    let run = locally::start(&client, 1).await.unwrap();
    let record = wait_done(&client, run.id()).await;
    assert_eq!(record.status, RuntimeStatus::Completed);
    worker.shutdown().await;

    let spans = traces.spans();
    assert_eq!(
        render(&spans),
        "orchestration:locally [execution=1 status=Completed]\n  activity:step\n    lookup\n  activity:step\n    lookup\n"
    );
    assert_one_trace(
        &spans,
        only(&spans, "orchestration:locally")
            .span_context
            .trace_id(),
    );
}
