//! Durable HTTP calls (`ctx.call_http`, issue 18) against local servers: 202 polling on the
//! virtual clock, `Retry-After`, a crash mid-poll on the redb store, failing and hostile
//! endpoints, retries, and secrets that never reach history or the store.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::routing::{get, post};
use durable_core::http_call::{DurableHttpRequest, DurableHttpResponse, HTTP_ACTIVITY_NAME};
use durable_core::prelude::*;
use durable_core::{HistoryEvent, RedbStore, Store};
use durable_testing::{ManualClock, TestEnv};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the test orchestration sends.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Plan {
    method: String,
    uri: String,
    body: Option<String>,
    poll_secs: Option<u64>,
    no_polling: bool,
    retry_attempts: Option<u32>,
    retry_statuses: Option<Vec<u16>>,
    timeout_ms: Option<u64>,
    total_secs: Option<u64>,
    token_source: Option<String>,
    secret_header: Option<(String, String)>,
    max_response_bytes: Option<u64>,
    secrets_to_other_origins: bool,
}

impl Plan {
    fn new(method: &str, uri: String) -> Self {
        Self {
            method: method.to_owned(),
            uri,
            ..Self::default()
        }
    }

    fn request(&self) -> DurableHttpRequest {
        let mut r = DurableHttpRequest::new(&self.method, self.uri.clone());
        if let Some(body) = &self.body {
            r = r.body(body.clone()).header("content-type", "text/plain");
        }
        if let Some(s) = self.poll_secs {
            r = r.poll_interval(Duration::from_secs(s));
        }
        if self.no_polling {
            r = r.async_polling(false);
        }
        if let Some(n) = self.retry_attempts {
            r = r.retry(RetryPolicy::new(n, Duration::from_secs(5)));
        }
        if let Some(statuses) = &self.retry_statuses {
            r = r.retry_on_status(statuses.iter().copied());
        }
        if let Some(ms) = self.timeout_ms {
            r = r.timeout(Duration::from_millis(ms));
        }
        if let Some(s) = self.total_secs {
            r = r.total_timeout(Duration::from_secs(s));
        }
        if let Some(name) = &self.token_source {
            r = r.token_source(name.clone());
        }
        if let Some((header, source)) = &self.secret_header {
            r = r.secret_header(header, source.clone());
        }
        if let Some(n) = self.max_response_bytes {
            r = r.max_response_bytes(n);
        }
        if self.secrets_to_other_origins {
            r = r.secrets_to_other_origins(true);
        }
        r
    }
}

/// What the orchestration saw: the response or the failure, and the virtual time it took.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Outcome {
    response: Option<DurableHttpResponse>,
    /// (task name, error type, message, non-retriable)
    failure: Option<(String, String, String, bool)>,
    elapsed_ms: u64,
}

#[orchestrator]
async fn http_flow(ctx: OrchestrationContext, plan: Plan) -> Result<Outcome, OrchestrationError> {
    let started = ctx.now();
    let result = ctx.call_http(plan.request()).await;
    let elapsed_ms = ctx.now().as_unix_millis() - started.as_unix_millis();
    Ok(match result {
        Ok(response) => Outcome {
            response: Some(response),
            failure: None,
            elapsed_ms,
        },
        Err(TaskError::Failed(f)) => Outcome {
            response: None,
            failure: Some((
                f.name.clone(),
                f.details.error_type.clone(),
                f.details.message.clone(),
                f.details.non_retriable,
            )),
            elapsed_ms,
        },
        Err(other) => return Err(OrchestrationError::new(other.to_string())),
    })
}

/// Serves `app` on a loopback port for the rest of the test; returns its base URI.
async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

/// Requests a server saw: method, path and headers.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(Method, String, HeaderMap)>>>);

impl Seen {
    fn record(&self, method: &Method, path: &str, headers: &HeaderMap) -> usize {
        let mut all = self.0.lock().unwrap();
        all.push((method.clone(), path.to_owned(), headers.clone()));
        all.len()
    }

    fn methods(&self) -> Vec<String> {
        let all = self.0.lock().unwrap();
        all.iter().map(|(m, p, _)| format!("{m} {p}")).collect()
    }

    fn header(&self, i: usize, name: &str) -> Option<String> {
        let all = self.0.lock().unwrap();
        all[i].2.get(name).map(|v| v.to_str().unwrap().to_owned())
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// A long-running operation: `POST /jobs` answers 202 pointing (relatively) at
/// `/jobs/7/status`, which answers 202 `pending_polls` times, then 200 `report ready`.
/// Every 202 carries `retry_after` when given.
fn job_server(
    seen: &Seen,
    pending_polls: usize,
    retry_after: Option<&'static str>,
) -> axum::Router {
    let accepted = move |location: &str| {
        let mut headers = HeaderMap::new();
        headers.insert(header::LOCATION, location.parse().unwrap());
        if let Some(r) = retry_after {
            headers.insert(header::RETRY_AFTER, r.parse().unwrap());
        }
        (StatusCode::ACCEPTED, headers, String::new())
    };
    let (s1, s2) = (seen.clone(), seen.clone());
    let polls = Arc::new(AtomicUsize::new(0));
    axum::Router::new()
        .route(
            "/jobs",
            post(move |method: Method, headers: HeaderMap, body: String| {
                let seen = s1.clone();
                async move {
                    seen.record(&method, "/jobs", &headers);
                    assert_eq!(body, "make the report");
                    accepted("jobs/7/status")
                }
            }),
        )
        .route(
            "/jobs/7/status",
            get(move |method: Method, headers: HeaderMap| {
                let (seen, polls) = (s2.clone(), Arc::clone(&polls));
                async move {
                    seen.record(&method, "/jobs/7/status", &headers);
                    if polls.fetch_add(1, Ordering::SeqCst) < pending_polls {
                        accepted("/jobs/7/status")
                    } else {
                        (StatusCode::OK, HeaderMap::new(), "report ready".to_owned())
                    }
                }
            }),
        )
}

fn http_tasks(history: &[HistoryEvent]) -> usize {
    history
        .iter()
        .filter(|e| matches!(&e.event, durable_core::Event::TaskScheduled { name, .. } if name == HTTP_ACTIVITY_NAME))
        .count()
}

fn count(history: &[HistoryEvent], kind: &str) -> usize {
    history.iter().filter(|e| e.event.kind() == kind).count()
}

fn env() -> TestEnv {
    TestEnv::builder()
        .register(http_flow)
        .http_token_source("api", || async {
            Ok::<_, ActivityError>("t0ken".to_owned())
        })
        .start()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_202_is_polled_on_durable_timers_until_the_final_status() {
    let seen = Seen::default();
    let base = serve(job_server(&seen, 2, None)).await;
    let env = env();
    let mut plan = Plan::new("post", format!("{base}/jobs"));
    plan.body = Some("make the report".into());
    plan.poll_secs = Some(10);
    plan.token_source = Some("api".into());
    let run = env.start(http_flow, plan).await.unwrap();
    let out = env.wait(&run).await.unwrap();

    let response = out.response.expect("a response");
    assert_eq!(
        (response.status, response.text().as_ref()),
        (200, "report ready")
    );
    // 202 three times (the POST and two polls), then 200: N = 3.
    assert_eq!(
        seen.methods(),
        [
            "POST /jobs",
            "GET /jobs/7/status",
            "GET /jobs/7/status",
            "GET /jobs/7/status"
        ]
    );
    for i in 0..4 {
        assert_eq!(
            seen.header(i, "authorization").as_deref(),
            Some("Bearer t0ken"),
            "request {i}"
        );
    }
    assert_eq!(
        seen.header(1, "content-type"),
        None,
        "polls carry no body headers"
    );
    assert_eq!(
        out.elapsed_ms, 30_000,
        "three poll waits of 10 s on the virtual clock"
    );
    let history = env.store().read_history(run.id()).await.unwrap();
    assert_eq!(http_tasks(&history), 4);
    assert_eq!(count(&history, "TaskCompleted"), 4);
    assert_eq!(count(&history, "TimerCreated"), 3);
    assert_eq!(count(&history, "TimerFired"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_sets_the_poll_wait() {
    let seen = Seen::default();
    let base = serve(job_server(&seen, 1, Some("120"))).await;
    let env = env();
    let mut plan = Plan::new("POST", format!("{base}/jobs"));
    plan.body = Some("make the report".into());
    plan.poll_secs = Some(10);
    let run = env.start(http_flow, plan).await.unwrap();
    let out = env.wait(&run).await.unwrap();
    assert_eq!(out.response.unwrap().status, 200);
    assert_eq!(seen.len(), 3);
    assert_eq!(
        out.elapsed_ms, 240_000,
        "two waits of Retry-After: 120, not the 10 s interval"
    );
    let history = env.store().read_history(run.id()).await.unwrap();
    let started = history[0].timestamp;
    let timers: Vec<u64> = history
        .iter()
        .filter_map(|e| match &e.event {
            durable_core::Event::TimerCreated { fire_at, .. } => {
                Some((fire_at.as_unix_millis() - started.as_unix_millis()) / 1000)
            }
            _ => None,
        })
        .collect();
    assert_eq!(timers, [120, 240]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_can_be_turned_off_and_the_202_comes_back() {
    let seen = Seen::default();
    let base = serve(job_server(&seen, 5, Some("1"))).await;
    let env = env();
    let mut plan = Plan::new("POST", format!("{base}/jobs"));
    plan.body = Some("make the report".into());
    plan.no_polling = true;
    let run = env.start(http_flow, plan).await.unwrap();
    let out = env.wait(&run).await.unwrap();
    let response = out.response.unwrap();
    assert_eq!(response.status, 202);
    assert_eq!(response.header("location"), Some("jobs/7/status"));
    assert_eq!(seen.len(), 1);
    let history = env.store().read_history(run.id()).await.unwrap();
    assert_eq!(
        (http_tasks(&history), count(&history, "TimerCreated")),
        (1, 0)
    );
}

/// `GET /` answers 503 with a body, counting the requests.
fn unavailable(hits: &Arc<AtomicUsize>) -> axum::Router {
    let hits = Arc::clone(hits);
    axum::Router::new().route(
        "/",
        get(move || {
            hits.fetch_add(1, Ordering::SeqCst);
            async {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded, come back later",
                )
            }
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_retry_policy_an_error_status_is_a_response() {
    let hits = Arc::new(AtomicUsize::new(0));
    let base = serve(unavailable(&hits)).await;
    let env = env();
    let run = env
        .start(http_flow, Plan::new("GET", format!("{base}/")))
        .await
        .unwrap();
    let out = env.wait(&run).await.unwrap();
    let response = out.response.unwrap();
    assert_eq!(response.status, 503);
    assert!(!response.is_success());
    assert_eq!(response.text(), "overloaded, come back later");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_503s_fail_the_call_once_the_policy_gives_up() {
    let hits = Arc::new(AtomicUsize::new(0));
    let base = serve(unavailable(&hits)).await;
    let env = env();
    let mut plan = Plan::new("GET", format!("{base}/"));
    plan.retry_attempts = Some(3);
    let run = env.start(http_flow, plan).await.unwrap();
    let out = env.wait(&run).await.unwrap();
    let (task, error_type, message, non_retriable) = out.failure.expect("a failure");
    assert_eq!(
        (task.as_str(), error_type.as_str()),
        (HTTP_ACTIVITY_NAME, "HttpRetriableStatus")
    );
    assert!(
        message.contains("503 Service Unavailable") && message.contains("overloaded"),
        "{message}"
    );
    assert!(!non_retriable);
    assert_eq!(hits.load(Ordering::SeqCst), 3, "three attempts");
    assert_eq!(out.elapsed_ms, 10_000, "two back-offs of 5 s");
    let history = env.store().read_history(run.id()).await.unwrap();
    assert_eq!(
        (
            http_tasks(&history),
            count(&history, "TaskFailed"),
            count(&history, "TimerCreated")
        ),
        (3, 3, 2)
    );

    // A retry list without 503 returns the 503 as a response.
    hits.store(0, Ordering::SeqCst);
    let mut plan = Plan::new("GET", format!("{base}/"));
    plan.retry_attempts = Some(3);
    plan.retry_statuses = Some(vec![429]);
    let run = env.start(http_flow, plan).await.unwrap();
    let out = env.wait(&run).await.unwrap();
    assert_eq!(out.response.unwrap().status, 503);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_retried_then_fails_with_details() {
    // A port nobody listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let uri = format!("http://{}/", listener.local_addr().unwrap());
    drop(listener);
    let env = env();
    let mut plan = Plan::new("GET", uri.clone());
    plan.retry_attempts = Some(3);
    let run = env.start(http_flow, plan).await.unwrap();
    let out = env.wait(&run).await.unwrap();
    let (task, error_type, message, non_retriable) = out.failure.expect("a failure");
    assert_eq!(
        (task.as_str(), error_type.as_str()),
        (HTTP_ACTIVITY_NAME, "HttpTransportError")
    );
    assert!(message.starts_with(&format!("GET {uri}")), "{message}");
    assert!(!non_retriable);
    let history = env.store().read_history(run.id()).await.unwrap();
    assert_eq!(
        (http_tasks(&history), count(&history, "TaskFailed")),
        (3, 3)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_token_source_fails_at_once_naming_it() {
    let hits = Arc::new(AtomicUsize::new(0));
    let base = serve(unavailable(&hits)).await;
    let env = env();
    let mut plan = Plan::new("GET", format!("{base}/"));
    plan.retry_attempts = Some(5);
    plan.token_source = Some("graph".into());
    let run = env.start(http_flow, plan).await.unwrap();
    let out = env.wait(&run).await.unwrap();
    let (_, error_type, message, non_retriable) = out.failure.expect("a failure");
    assert_eq!(error_type, "HttpUnknownTokenSource");
    assert!(
        message.contains("no HTTP token source named `graph`"),
        "{message}"
    );
    assert!(non_retriable);
    assert_eq!(hits.load(Ordering::SeqCst), 0, "nothing sent");
    let history = env.store().read_history(run.id()).await.unwrap();
    assert_eq!(http_tasks(&history), 1, "not retried");
}

/// A raw HTTP/1.1 server for one connection: writes `head`, then calls `body` with the
/// socket. Returns the URI.
async fn raw_server<F, Fut>(body: F) -> String
where
    F: FnOnce(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uri = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        // The request head (a GET: no body).
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            if socket.read(&mut byte).await.unwrap() == 0 {
                return;
            }
            buf.push(byte[0]);
        }
        body(socket).await;
    });
    uri
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_huge_body_fails_at_the_size_limit_without_reading_it_all() {
    let written = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&written);
    let uri = raw_server(move |mut socket| async move {
        socket
            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        let chunk = vec![b'x'; 64 << 10];
        let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
        framed.extend_from_slice(&chunk);
        framed.extend_from_slice(b"\r\n");
        // Never ends: only the client hanging up stops it.
        while socket.write_all(&framed).await.is_ok() {
            counter.fetch_add(chunk.len(), Ordering::SeqCst);
        }
    })
    .await;
    let env = env();
    let run = env.start(http_flow, Plan::new("GET", uri)).await.unwrap();
    let out = env.wait(&run).await.unwrap();
    let (_, error_type, message, non_retriable) = out.failure.expect("a failure");
    assert_eq!(error_type, "HttpResponseTooLarge");
    assert!(message.contains("limit of 524288 bytes"), "{message}");
    assert!(non_retriable);
    // The client stopped reading at the limit: what was written is the limit plus what
    // socket buffers hold, far from endless.
    assert!(
        written.load(Ordering::SeqCst) < 64 << 20,
        "{} bytes",
        written.load(Ordering::SeqCst)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_ends_fails_at_the_request_timeout() {
    let uri = raw_server(|mut socket| async move {
        socket
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nten bytes.")
            .await
            .unwrap();
        // Holds the connection open and never sends the rest.
        let mut sink = [0u8; 16];
        let _ = socket.read(&mut sink).await;
    })
    .await;
    let env = env();
    let mut plan = Plan::new("GET", uri.clone());
    plan.timeout_ms = Some(300);
    let run = env.start(http_flow, plan).await.unwrap();
    let out = env.wait(&run).await.unwrap();
    let (_, error_type, message, non_retriable) = out.failure.expect("a failure");
    assert_eq!(error_type, "HttpTimeout");
    assert_eq!(
        message,
        format!("GET {uri}: no complete response within the request timeout of 300ms")
    );
    assert!(!non_retriable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_bodies_round_trip_and_are_recorded_as_base64() {
    let base =
        serve(axum::Router::new().route("/bin", get(|| async { vec![0xff_u8, 0x00, 0x9f] }))).await;
    let env = env();
    let run = env
        .start(http_flow, Plan::new("GET", format!("{base}/bin")))
        .await
        .unwrap();
    let out = env.wait(&run).await.unwrap();
    assert_eq!(out.response.unwrap().body, [0xff, 0x00, 0x9f]);
    let json = env.export_history(run.id()).await.unwrap();
    assert!(json.contains(r#"\"base64\":\"/wCf\""#), "{json}");
}

/// A field the server sends on several lines is recorded as one list joined with ", ",
/// but Set-Cookie lines, whose values hold commas, are joined with a newline, so each
/// cookie comes back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_headers_are_joined_and_cookies_stay_whole() {
    let cookies = [
        "session=abc; Expires=Wed, 21 Oct 2026 07:28:00 GMT; HttpOnly",
        "theme=dark; Path=/",
    ];
    let app = axum::Router::new().route(
        "/cookies",
        get(move || async move {
            let mut headers = axum::http::HeaderMap::new();
            for c in cookies {
                headers.append("set-cookie", c.parse().unwrap());
            }
            headers.append("x-tag", "a".parse().unwrap());
            headers.append("x-tag", "b".parse().unwrap());
            (headers, "ok")
        }),
    );
    let base = serve(app).await;
    let env = env();
    let run = env
        .start(http_flow, Plan::new("GET", format!("{base}/cookies")))
        .await
        .unwrap();
    let response = env.wait(&run).await.unwrap().response.unwrap();
    let recorded: Vec<&str> = response.headers["set-cookie"].lines().collect();
    assert_eq!(recorded, cookies);
    assert_eq!(response.header("x-tag"), Some("a, b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_reach_the_server_but_never_history_or_the_store_file() {
    const TOKEN: &str = "tok-SECRET-5b1f";
    const KEY: &str = "key-SECRET-99ae";
    let seen = Seen::default();
    let s = seen.clone();
    let base = serve(axum::Router::new().route(
        "/me",
        get(move |method: Method, headers: HeaderMap| {
            let seen = s.clone();
            async move {
                seen.record(&method, "/me", &headers);
                "hello"
            }
        }),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secrets.redb");
    let worker = Worker::builder()
        .store(RedbStore::open(&path).unwrap())
        .register(http_flow)
        .http_token_source("graph", || async {
            Ok::<_, ActivityError>(TOKEN.to_owned())
        })
        .http_token_source("partner-key", || async {
            Ok::<_, ActivityError>(KEY.to_owned())
        })
        .start()
        .unwrap();
    let client = worker.client();
    let mut plan = Plan::new("GET", format!("{base}/me"));
    plan.token_source = Some("graph".into());
    plan.secret_header = Some(("X-Api-Key".into(), "partner-key".into()));
    let run = http_flow::start(&client, plan).await.unwrap();
    let out = tokio::time::timeout(Duration::from_secs(30), run.wait())
        .await
        .expect("finishes")
        .unwrap();
    assert_eq!(out.response.unwrap().text(), "hello");
    assert_eq!(
        seen.header(0, "authorization"),
        Some(format!("Bearer {TOKEN}"))
    );
    assert_eq!(seen.header(0, "x-api-key").as_deref(), Some(KEY));

    let (_, history) = client.status_with_history(run.id()).await.unwrap();
    let json = serde_json::to_string(&history).unwrap();
    assert!(
        json.contains("partner-key") && json.contains("graph"),
        "names are recorded: {json}"
    );
    assert!(!json.contains("SECRET"), "{json}");
    let input = history
        .iter()
        .find_map(|e| match &e.event {
            durable_core::Event::TaskScheduled { input, .. } => Some(input.clone()),
            _ => None,
        })
        .unwrap();
    let input: BTreeMap<String, serde_json::Value> = serde_json::from_str(&input).unwrap();
    assert_eq!(input["tokenSource"], "graph");
    assert_eq!(input["secretHeaders"]["x-api-key"], "partner-key");
    drop((run, client));
    worker.shutdown().await;
    // Every byte the store ever wrote (the activity queue included): names, no secrets.
    let bytes = std::fs::read(&path).unwrap();
    let contains = |needle: &str| bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(contains("partner-key"), "the scan finds what was stored");
    assert!(!contains(TOKEN) && !contains(KEY));
}

/// Waits (woken by nothing but yields; bounded by a guard) until the instance's history
/// holds `n` events of `kind`.
async fn wait_for(client: &Client, id: &InstanceId, kind: &str, n: usize) {
    let check = async {
        loop {
            if let Ok((_, h)) = client.status_with_history(id).await
                && count(&h, kind) >= n
            {
                return;
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), check)
        .await
        .unwrap_or_else(|_| panic!("gave up waiting for {n} {kind}"));
}

/// The job the restart tests poll: a POST answered 202, polled every 10 s.
fn poll_plan(base: &str) -> Plan {
    let mut plan = Plan::new("POST", format!("{base}/jobs"));
    plan.body = Some("make the report".into());
    plan.poll_secs = Some(10);
    plan
}

/// A worker of the restart tests on `store`, on the shared virtual `clock`.
fn poll_worker(store: impl durable_core::storage::Store, clock: &ManualClock) -> Worker {
    Worker::builder()
        .store(store)
        .clock(clock.as_clock())
        .register(http_flow)
        .start()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_poll_resumes_polling_after_a_restart_on_the_redb_file() {
    let seen = Seen::default();
    let base = serve(job_server(&seen, 2, None)).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("poll.redb");
    let clock = ManualClock::default();
    let start_worker = |store: RedbStore| poll_worker(store, &clock);
    let plan = poll_plan(&base);

    // The first worker runs on a runtime of its own, so that it can die with it.
    let doomed = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let first = {
        let _in = doomed.enter();
        start_worker(RedbStore::open(&path).unwrap())
    };
    let client = first.client();
    let id = http_flow::start(&client, plan).await.unwrap().id().clone();
    // The POST, then two polls, each after a 10 s wait.
    wait_for(&client, &id, "TimerCreated", 1).await;
    clock.advance(Duration::from_secs(10));
    wait_for(&client, &id, "TimerCreated", 2).await;
    clock.advance(Duration::from_secs(10));
    wait_for(&client, &id, "TimerCreated", 3).await;
    assert_eq!(seen.len(), 3, "the POST and two polls");

    // Crash: no shutdown, the runtime and everything on it gone.
    drop(client);
    first.abort();
    tokio::task::spawn_blocking(move || doomed.shutdown_timeout(Duration::from_secs(10)))
        .await
        .unwrap();
    let reopened = async {
        loop {
            match RedbStore::open(&path) {
                Ok(store) => return store,
                // The dead worker's last handle may take a moment to go.
                Err(_) => tokio::task::yield_now().await,
            }
        }
    };
    let store = tokio::time::timeout(Duration::from_secs(30), reopened)
        .await
        .expect("the file is released");
    let second = start_worker(store);
    let client = second.client();
    clock.advance(Duration::from_secs(10));
    let Ok(record) =
        tokio::time::timeout(Duration::from_secs(10), client.wait_for_completion(&id)).await
    else {
        let (r, h) = client.status_with_history(&id).await.unwrap();
        panic!("{r:#?}\n{}", durable_core::history::pretty(&h));
    };
    let record = record.unwrap();
    let out: Outcome = record.output().unwrap().unwrap();
    assert_eq!(out.response.unwrap().text(), "report ready");
    assert_eq!(out.elapsed_ms, 30_000);
    assert_eq!(
        seen.methods(),
        [
            "POST /jobs",
            "GET /jobs/7/status",
            "GET /jobs/7/status",
            "GET /jobs/7/status"
        ],
        "polling went on where it was: no second POST, no poll repeated"
    );
    let (_, history) = client.status_with_history(&id).await.unwrap();
    assert_eq!(
        (http_tasks(&history), count(&history, "TimerCreated")),
        (4, 3)
    );
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_total_timeout_ends_a_poll_that_never_finishes() {
    let seen = Seen::default();
    let base = serve(job_server(&seen, usize::MAX, None)).await;
    let env = env();
    let mut plan = Plan::new("POST", format!("{base}/jobs"));
    plan.body = Some("make the report".into());
    plan.poll_secs = Some(25);
    plan.total_secs = Some(60);
    let run = env.start(http_flow, plan).await.unwrap();
    let out = env.wait(&run).await.unwrap();
    let (task, error_type, message, non_retriable) = out.failure.expect("a failure");
    assert_eq!(
        (task.as_str(), error_type.as_str()),
        (HTTP_ACTIVITY_NAME, "HttpTimeout")
    );
    assert!(message.contains("total timeout of 60s"), "{message}");
    assert!(non_retriable);
    // Polls at 25 s and 50 s; the next would be at 75 s, past the deadline: the call
    // waits until the deadline and fails there.
    assert_eq!(seen.len(), 3);
    assert_eq!(out.elapsed_ms, 60_000);
    let history = env.store().read_history(run.id()).await.unwrap();
    assert_eq!(
        (http_tasks(&history), count(&history, "TimerCreated")),
        (3, 3)
    );
    // Each request's timeout was capped by what was left of the total.
    let timeouts: Vec<u64> = history
        .iter()
        .filter_map(|e| match &e.event {
            durable_core::Event::TaskScheduled { input, .. } => {
                let v: serde_json::Value = serde_json::from_str(input).unwrap();
                v["timeoutMs"].as_u64()
            }
            _ => None,
        })
        .collect();
    assert_eq!(timeouts, [60_000, 35_000, 10_000]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_request_fails_without_retries() {
    let env = env();
    for (method, uri, expected) in [
        ("GET", "not a uri", "is not an absolute URI"),
        (
            "GET",
            "ftp://127.0.0.1/file",
            "scheme `ftp` is not supported",
        ),
        ("BAD METHOD", "http://127.0.0.1/", "is not an HTTP method"),
    ] {
        let mut plan = Plan::new(method, uri.to_owned());
        plan.retry_attempts = Some(4);
        let run = env.start(http_flow, plan).await.unwrap();
        let out = env.wait(&run).await.unwrap();
        let (_, error_type, message, non_retriable) = out.failure.expect("a failure");
        assert_eq!(error_type, "HttpInvalidRequest");
        assert!(message.contains(expected), "{message}");
        assert!(non_retriable);
        let history = env.store().read_history(run.id()).await.unwrap();
        assert_eq!(http_tasks(&history), 1, "{uri}: not retried");
    }
}

/// The `PostgresStore` runs the same polls (and a restart between them) when
/// `DURABLE_TEST_POSTGRES_URL` names a database; skipped otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_survive_a_worker_restart_on_postgres() {
    use durable_core::{PostgresOptions, PostgresStore};
    let Some(url) = std::env::var("DURABLE_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        eprintln!("skipped: DURABLE_TEST_POSTGRES_URL is not set");
        return;
    };
    let hub = format!("durable_http_{}", &InstanceId::random().as_str()[..12]);
    let connect = || async {
        PostgresStore::connect(&url, PostgresOptions::new(hub.clone()))
            .await
            .unwrap()
    };
    let seen = Seen::default();
    let base = serve(job_server(&seen, 2, None)).await;
    let clock = ManualClock::default();
    let start_worker = |store: PostgresStore| poll_worker(store, &clock);
    let plan = poll_plan(&base);
    let first = start_worker(connect().await);
    let client = first.client();
    let id = http_flow::start(&client, plan).await.unwrap().id().clone();
    wait_for(&client, &id, "TimerCreated", 1).await;
    clock.advance(Duration::from_secs(10));
    wait_for(&client, &id, "TimerCreated", 2).await;
    drop(client);
    first.abort();

    let store = connect().await;
    let second = start_worker(store.clone());
    let client = second.client();
    clock.advance(Duration::from_secs(10));
    wait_for(&client, &id, "TimerCreated", 3).await;
    clock.advance(Duration::from_secs(10));
    let record = tokio::time::timeout(Duration::from_secs(30), client.wait_for_completion(&id))
        .await
        .expect("finishes")
        .unwrap();
    let out: Outcome = record.output().unwrap().unwrap();
    assert_eq!(out.response.unwrap().text(), "report ready");
    assert_eq!(seen.len(), 4, "the POST and three polls, none repeated");
    second.shutdown().await;
    store.drop_task_hub().await.unwrap();
}

#[orchestrator]
async fn unserializable_body(
    ctx: OrchestrationContext,
    uri: String,
) -> Result<(String, bool), OrchestrationError> {
    // JSON object keys must be strings: this map cannot be serialized.
    let body: BTreeMap<(u8, u8), &str> = [((1, 2), "x")].into();
    match ctx
        .call_http(DurableHttpRequest::post(uri).json(&body))
        .await
    {
        Ok(r) => Ok((format!("sent, {}", r.status), false)),
        Err(TaskError::Failed(f)) => Ok((f.details.message.clone(), f.details.non_retriable)),
        Err(e) => Err(OrchestrationError::new(e.to_string())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_body_that_cannot_be_serialized_fails_before_sending() {
    let env = TestEnv::builder()
        .register(unserializable_body)
        .start()
        .unwrap();
    let run = env
        .start(unserializable_body, "http://127.0.0.1:9/".to_owned())
        .await
        .unwrap();
    let (message, non_retriable) = env.wait(&run).await.unwrap();
    assert!(
        message.starts_with("POST http://127.0.0.1:9/: the JSON body cannot be serialized"),
        "{message}"
    );
    assert!(non_retriable);
    let history = env.store().read_history(run.id()).await.unwrap();
    assert_eq!(http_tasks(&history), 0, "nothing scheduled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_length_past_the_limit_fails_at_once_but_not_for_head() {
    let big = || async { vec![b'x'; 3 << 20] };
    let base = serve(axum::Router::new().route("/big", get(big).head(big))).await;
    let env = env();
    let run = env
        .start(http_flow, Plan::new("GET", format!("{base}/big")))
        .await
        .unwrap();
    let out = env.wait(&run).await.unwrap();
    assert_eq!(out.failure.expect("a failure").1, "HttpResponseTooLarge");
    let run = env
        .start(http_flow, Plan::new("HEAD", format!("{base}/big")))
        .await
        .unwrap();
    let response = env.wait(&run).await.unwrap().response.expect("a response");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-length"), Some("3145728"));
    assert!(response.body.is_empty());
}

/// A server at "localhost" (another origin than 127.0.0.1) that records what reaches it and
/// answers 200 "other host".
async fn other_host(seen: &Seen) -> String {
    let s = seen.clone();
    let app = axum::Router::new().fallback(
        move |method: Method, uri: axum::http::Uri, headers: HeaderMap| {
            let s = s.clone();
            async move {
                s.record(&method, uri.path(), &headers);
                "other host"
            }
        },
    );
    serve(app).await.replace("127.0.0.1", "localhost")
}

fn with_secrets(mut plan: Plan) -> Plan {
    plan.token_source = Some("api".into());
    plan.secret_header = Some(("x-api-key".into(), "api".into()));
    plan
}

/// Answers `status` with `Location: target`.
fn redirect_to(status: StatusCode, target: String) -> axum::routing::MethodRouter {
    axum::routing::any(move || {
        let target = target.clone();
        async move { (status, [(header::LOCATION, target)]) }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_to_another_origin_carry_no_secrets_but_same_origin_ones_do() {
    let seen = Seen::default();
    let other = other_host(&seen).await;
    let here = Seen::default();
    let h = here.clone();
    let base = serve(
        axum::Router::new()
            .route(
                "/away",
                redirect_to(StatusCode::FOUND, format!("{other}/landing")),
            )
            .route(
                "/stay",
                redirect_to(StatusCode::MOVED_PERMANENTLY, "/landing".into()),
            )
            .route(
                "/landing",
                get(move |method: Method, headers: HeaderMap| {
                    let h = h.clone();
                    async move {
                        h.record(&method, "/landing", &headers);
                        "landed"
                    }
                }),
            ),
    )
    .await;
    let env = env();
    let run = env
        .start(
            http_flow,
            with_secrets(Plan::new("GET", format!("{base}/away"))),
        )
        .await
        .unwrap();
    let response = env.wait(&run).await.unwrap().response.expect("a response");
    assert_eq!(
        (response.status, response.text().as_ref()),
        (200, "other host")
    );
    assert_eq!(
        response.uri,
        Some(format!("{other}/landing")),
        "the final URI is recorded"
    );
    assert_eq!(seen.methods(), ["GET /landing"]);
    assert_eq!(
        seen.header(0, "x-api-key"),
        None,
        "secret header left the origin"
    );
    assert_eq!(
        seen.header(0, "authorization"),
        None,
        "token left the origin"
    );

    let run = env
        .start(
            http_flow,
            with_secrets(Plan::new("GET", format!("{base}/stay"))),
        )
        .await
        .unwrap();
    let response = env.wait(&run).await.unwrap().response.expect("a response");
    assert_eq!(response.text(), "landed");
    assert_eq!(here.header(0, "x-api-key").as_deref(), Some("t0ken"));
    assert_eq!(
        here.header(0, "authorization").as_deref(),
        Some("Bearer t0ken")
    );
    // One task each: redirects are followed inside the activity.
    let history = env.store().read_history(run.id()).await.unwrap();
    assert_eq!(http_tasks(&history), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_keep_or_drop_the_method_and_body_by_status_and_are_bounded() {
    let echo =
        axum::routing::any(
            |method: Method, body: String| async move { format!("{method} [{body}]") },
        );
    let base = serve(
        axum::Router::new()
            .route(
                "/307",
                redirect_to(StatusCode::TEMPORARY_REDIRECT, "/echo".into()),
            )
            .route(
                "/308",
                redirect_to(StatusCode::PERMANENT_REDIRECT, "echo".into()),
            )
            .route("/303", redirect_to(StatusCode::SEE_OTHER, "/echo".into()))
            .route("/302", redirect_to(StatusCode::FOUND, "/echo".into()))
            .route("/loop", redirect_to(StatusCode::FOUND, "/loop".into()))
            .route("/echo", echo),
    )
    .await;
    let env = env();
    for (method, path, expected) in [
        ("POST", "/307", "POST [make the report]"),
        ("PUT", "/308", "PUT [make the report]"),
        ("PUT", "/303", "GET []"),
        ("POST", "/302", "GET []"),
        ("PUT", "/302", "PUT [make the report]"),
    ] {
        let mut plan = Plan::new(method, format!("{base}{path}"));
        plan.body = Some("make the report".into());
        let run = env.start(http_flow, plan).await.unwrap();
        let response = env.wait(&run).await.unwrap().response.expect("a response");
        assert_eq!(response.text(), expected, "{method} {path}");
        assert_eq!(response.uri, Some(format!("{base}/echo")));
    }
    let run = env
        .start(http_flow, Plan::new("GET", format!("{base}/loop")))
        .await
        .unwrap();
    let (_, error_type, message, non_retriable) =
        env.wait(&run).await.unwrap().failure.expect("a failure");
    assert_eq!(error_type, "HttpTooManyRedirects");
    assert!(message.contains("more than 10 redirects"), "{message}");
    assert!(non_retriable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_202_location_on_another_origin_is_polled_without_secrets_unless_allowed() {
    let seen = Seen::default();
    let other = other_host(&seen).await;
    let target = format!("{other}/status");
    let base = serve(axum::Router::new().route(
        "/jobs",
        post(move || {
            let t = target.clone();
            async move { (StatusCode::ACCEPTED, [(header::LOCATION, t)]) }
        }),
    ))
    .await;
    let env = env();
    let mut plan = with_secrets(Plan::new("POST", format!("{base}/jobs")));
    plan.poll_secs = Some(1);
    let run = env.start(http_flow, plan.clone()).await.unwrap();
    let response = env.wait(&run).await.unwrap().response.expect("a response");
    assert_eq!(response.text(), "other host");
    assert_eq!(seen.header(0, "authorization"), None);
    assert_eq!(seen.header(0, "x-api-key"), None);
    // The poll's recorded spec names no secret either.
    let history = env.store().read_history(run.id()).await.unwrap();
    let polls: Vec<serde_json::Value> = history
        .iter()
        .filter_map(|e| match &e.event {
            durable_core::Event::TaskScheduled { input, .. } => serde_json::from_str(input).ok(),
            _ => None,
        })
        .collect();
    assert_eq!(polls.len(), 2);
    assert_eq!(polls[0]["tokenSource"], "api");
    assert_eq!(polls[1]["uri"], format!("{other}/status"));
    assert!(polls[1].get("tokenSource").is_none(), "{}", polls[1]);
    assert!(polls[1].get("secretHeaders").is_none(), "{}", polls[1]);

    plan.secrets_to_other_origins = true;
    let run = env.start(http_flow, plan).await.unwrap();
    env.wait(&run).await.unwrap().response.expect("a response");
    assert_eq!(
        seen.header(1, "authorization").as_deref(),
        Some("Bearer t0ken")
    );
    assert_eq!(seen.header(1, "x-api-key").as_deref(), Some("t0ken"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_whose_recorded_form_passes_the_payload_limit_fails_naming_both_limits() {
    let base = serve(
        axum::Router::new()
            .route("/bin", get(|| async { vec![0xff_u8; 900_000] }))
            .route("/quotes", get(|| async { "\"".repeat(600_000) }))
            .route("/small-bin", get(|| async { vec![0xff_u8; 600_000] })),
    )
    .await;
    let env = env();
    for path in ["/bin", "/quotes"] {
        let mut plan = Plan::new("GET", format!("{base}{path}"));
        plan.max_response_bytes = Some(1 << 20);
        let run = env.start(http_flow, plan).await.unwrap();
        let (task, error_type, message, non_retriable) =
            env.wait(&run).await.unwrap().failure.expect("a failure");
        assert_eq!(
            (task.as_str(), error_type.as_str()),
            (HTTP_ACTIVITY_NAME, "HttpResponseTooLarge"),
            "{path}: {message}"
        );
        assert!(
            message.contains("`Limits::max_payload_bytes` of 1048576"),
            "{message}"
        );
        assert!(
            message.contains("`DurableHttpRequest::max_response_bytes` is 1048576"),
            "{message}"
        );
        assert!(non_retriable);
    }
    // 600 000 bytes of binary: over the 512 KiB default limit, within the payload limit
    // (800 000 bytes of base64) once the request allows it.
    let run = env
        .start(http_flow, Plan::new("GET", format!("{base}/small-bin")))
        .await
        .unwrap();
    let (_, error_type, message, _) = env.wait(&run).await.unwrap().failure.expect("a failure");
    assert_eq!(error_type, "HttpResponseTooLarge");
    assert!(message.contains("limit of 524288 bytes"), "{message}");
    let mut plan = Plan::new("GET", format!("{base}/small-bin"));
    plan.max_response_bytes = Some(1 << 20);
    let run = env.start(http_flow, plan).await.unwrap();
    let response = env.wait(&run).await.unwrap().response.expect("a response");
    assert_eq!(response.body.len(), 600_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_smaller_worker_payload_limit_bounds_the_body_read() {
    let base =
        serve(axum::Router::new().route("/text", get(|| async { "x".repeat(100_000) }))).await;
    let mut options = durable_core::WorkerOptions::default();
    options.limits.max_payload_bytes = 64 << 10;
    let env = TestEnv::builder()
        .register(http_flow)
        .options(options)
        .start()
        .unwrap();
    let run = env
        .start(http_flow, Plan::new("GET", format!("{base}/text")))
        .await
        .unwrap();
    let (_, error_type, message, _) = env.wait(&run).await.unwrap().failure.expect("a failure");
    assert_eq!(error_type, "HttpResponseTooLarge");
    assert!(message.contains("limit of 65536 bytes"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relative_location_after_a_redirect_resolves_against_the_final_uri() {
    let app = axum::Router::new()
        .route("/start", redirect_to(StatusCode::FOUND, "/v2/start".into()))
        .route(
            "/v2/start",
            get(|| async { (StatusCode::ACCEPTED, [(header::LOCATION, "status")]) }),
        )
        .route("/v2/status", get(|| async { "right" }))
        .route("/status", get(|| async { "wrong" }));
    let base = serve(app).await;
    let env = env();
    let mut plan = Plan::new("GET", format!("{base}/start"));
    plan.poll_secs = Some(1);
    let run = env.start(http_flow, plan).await.unwrap();
    let response = env.wait(&run).await.unwrap().response.expect("a response");
    assert_eq!(response.text(), "right");
    assert_eq!(response.uri, Some(format!("{base}/v2/status")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_waits_are_held_between_one_second_and_one_hour() {
    // Retry-After: 0 on every 202: the polls still wait a second each.
    let seen = Seen::default();
    let base = serve(job_server(&seen, 3, Some("0"))).await;
    let env = env();
    let mut plan = Plan::new("POST", format!("{base}/jobs"));
    plan.body = Some("make the report".into());
    let run = env.start(http_flow, plan.clone()).await.unwrap();
    let out = env.wait(&run).await.unwrap();
    assert_eq!(out.response.unwrap().status, 200);
    assert_eq!(seen.len(), 5);
    assert_eq!(out.elapsed_ms, 4_000, "four waits of MIN_POLL_INTERVAL");

    // A Retry-After three thousand years away: the poll comes an hour later.
    let seen = Seen::default();
    let base = serve(job_server(&seen, 1, Some("99999999999"))).await;
    plan.uri = format!("{base}/jobs");
    let run = env.start(http_flow, plan).await.unwrap();
    let out = env.wait(&run).await.unwrap();
    assert_eq!(out.response.unwrap().status, 200);
    assert_eq!(seen.len(), 3);
    assert_eq!(
        out.elapsed_ms,
        2 * 3_600_000,
        "two waits of MAX_POLL_INTERVAL"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_answering_202_without_location_is_polled_again() {
    let seen = Seen::default();
    let s = seen.clone();
    let polls = Arc::new(AtomicUsize::new(0));
    let base = serve(
        axum::Router::new()
            .route(
                "/jobs",
                post(|| async { (StatusCode::ACCEPTED, [(header::LOCATION, "/jobs/1")]) }),
            )
            .route(
                "/jobs/1",
                get(move |method: Method, headers: HeaderMap| {
                    let (s, polls) = (s.clone(), Arc::clone(&polls));
                    async move {
                        s.record(&method, "/jobs/1", &headers);
                        if polls.fetch_add(1, Ordering::SeqCst) < 2 {
                            (StatusCode::ACCEPTED, "pending")
                        } else {
                            (StatusCode::OK, "done")
                        }
                    }
                }),
            ),
    )
    .await;
    let env = env();
    let mut plan = Plan::new("POST", format!("{base}/jobs"));
    plan.poll_secs = Some(5);
    let run = env.start(http_flow, plan).await.unwrap();
    let out = env.wait(&run).await.unwrap();
    let response = out.response.expect("a response");
    assert_eq!((response.status, response.text().as_ref()), (200, "done"));
    assert_eq!(
        seen.methods(),
        ["GET /jobs/1", "GET /jobs/1", "GET /jobs/1"]
    );
    assert_eq!(out.elapsed_ms, 15_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_on_429_or_503_is_a_floor_for_the_retry_back_off() {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = Arc::clone(&hits);
    let base = serve(axum::Router::new().route(
        "/",
        get(move || {
            let n = h.fetch_add(1, Ordering::SeqCst);
            async move {
                match n {
                    0 => (
                        StatusCode::TOO_MANY_REQUESTS,
                        [(header::RETRY_AFTER, "120")],
                        "slow down",
                    ),
                    // Shorter than the policy's 5 s: the policy's back-off wins.
                    1 => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        [(header::RETRY_AFTER, "1")],
                        "busy",
                    ),
                    _ => (StatusCode::OK, [(header::RETRY_AFTER, "0")], "served"),
                }
            }
        }),
    ))
    .await;
    let env = env();
    let mut plan = Plan::new("GET", format!("{base}/"));
    plan.retry_attempts = Some(5);
    let run = env.start(http_flow, plan).await.unwrap();
    let out = env.wait(&run).await.unwrap();
    assert_eq!(out.response.expect("a response").text(), "served");
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    assert_eq!(
        out.elapsed_ms, 125_000,
        "Retry-After 120 s, then the policy's 5 s"
    );
}
