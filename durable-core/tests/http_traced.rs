//! The management API's request spans, in a test binary of their own: the subscriber is set
//! for this thread only (`set_default`), and tracing caches per call site whether anyone is
//! interested, so tests running beside it in the same process (with no subscriber) could
//! make it miss spans.
#![cfg(feature = "http")]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::Request;
use durable_core::http::{self, HttpOptions};
use durable_core::prelude::*;
use http_body_util::Full;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// The status of a GET.
async fn get(uri: &str) -> u16 {
    let http: HttpClient<_, Full<Bytes>> = HttpClient::builder(TokioExecutor::new()).build_http();
    let request = Request::get(uri).body(Full::new(Bytes::new())).unwrap();
    http.request(request)
        .await
        .expect("HTTP request")
        .status()
        .as_u16()
}

/// The fields of one `http_request` span, and whether its `request answered` event came.
#[derive(Debug, Default, Clone)]
struct Seen {
    fields: BTreeMap<String, String>,
    answered: bool,
}

impl Visit for Seen {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.fields
            .insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.fields
            .insert(field.name().to_owned(), value.to_owned());
    }
}

/// Records every `http_request` span as it is created and recorded into. The position
/// of its entry in the list is kept in the span's extensions.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Seen>>>);

struct Slot(usize);

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, cx: Context<'_, S>) {
        if attrs.metadata().name() != "http_request" {
            return;
        }
        let mut seen = Seen::default();
        attrs.record(&mut seen);
        let mut all = self.0.lock().unwrap();
        all.push(seen);
        let span = cx.span(id).expect("a new span is known");
        span.extensions_mut().insert(Slot(all.len() - 1));
    }
    fn on_record(&self, id: &Id, values: &Record<'_>, cx: Context<'_, S>) {
        let Some(span) = cx.span(id) else { return };
        if let Some(Slot(i)) = span.extensions().get::<Slot>() {
            values.record(&mut self.0.lock().unwrap()[*i]);
        }
    }
    fn on_event(&self, event: &tracing::Event<'_>, cx: Context<'_, S>) {
        let mut message = Seen::default();
        event.record(&mut message);
        if message.fields.get("message").map(String::as_str) != Some("request answered") {
            return;
        }
        let Some(span) = cx.event_span(event) else {
            return;
        };
        if let Some(Slot(i)) = span.extensions().get::<Slot>() {
            self.0.lock().unwrap()[*i].answered = true;
        }
    }
}

/// Each API request gets a DEBUG span with its method, path (without the query, where
/// the `code` key goes), status and latency, and a `request answered` event in it;
/// a request the token check refuses too.
// One thread: the subscriber set with `set_default` is the server's too.
#[tokio::test(flavor = "current_thread")]
async fn requests_are_traced_with_method_path_status_and_latency() {
    let capture = Capture::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));
    let worker = Worker::builder().store(MemoryStore::new()).start().unwrap();
    let server = http::serve(
        worker.client(),
        ([127, 0, 0, 1], 0).into(),
        HttpOptions::new().bearer_token("s3cret"),
    )
    .await
    .unwrap();
    let base = format!("{}/runtime/webhooks/durabletask", server.url());
    assert_eq!(
        get(&format!("{base}/instances/nope?code=s3cret")).await,
        404
    );
    assert_eq!(get(&format!("{base}/instances")).await, 401);
    server.shutdown().await.unwrap();
    worker.shutdown().await;

    let seen = capture.0.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "one span per request: {seen:?}");
    let summary: Vec<(&str, &str, &str, bool)> = seen
        .iter()
        .map(|s| {
            let field = |name: &str| s.fields.get(name).map_or("", String::as_str);
            (field("method"), field("path"), field("status"), s.answered)
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                "GET",
                "/runtime/webhooks/durabletask/instances/nope",
                "404",
                true
            ),
            (
                "GET",
                "/runtime/webhooks/durabletask/instances",
                "401",
                true
            ),
        ]
    );
    for s in &seen {
        let latency: f64 = s.fields["latency_ms"].parse().expect("latency in ms");
        assert!(latency >= 0.0, "{s:?}");
        assert!(
            s.fields.values().all(|v| !v.contains("s3cret")),
            "the query's key is never recorded: {s:?}"
        );
    }
}
