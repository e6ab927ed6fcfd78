//! The HTTP management API over real HTTP on a loopback socket: a worker on the in-memory
//! store and a manual clock, `durable_core::http::serve` on 127.0.0.1:0, and hyper's client.
#![cfg(feature = "http")]

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use durable_core::http::{self, HttpOptions, HttpServer, ServeError};
use durable_core::prelude::*;
use durable_core::{Limits, Store, WorkerBuilder};
use durable_testing::ManualClock;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

const PREFIX: &str = "/runtime/webhooks/durabletask";
/// Longest a test waits for the engine before failing (a guard against hangs, not timing).
const GUARD: Duration = Duration::from_secs(20);
const HOUR: Duration = Duration::from_secs(3600);

// ------------------------------------------------------------------------ orchestrations

#[activity]
async fn greet(name: String) -> Result<String, ActivityError> {
    Ok(format!("Hello {name}!"))
}

#[orchestrator]
async fn hello(ctx: OrchestrationContext, name: String) -> Result<String, OrchestrationError> {
    ctx.set_custom_status(&json!({"step": "greeting"}))?;
    Ok(ctx.call(greet, name).await?)
}

#[orchestrator]
async fn approval(ctx: OrchestrationContext, _input: ()) -> Result<String, OrchestrationError> {
    let answer: String = ctx.wait_for_event("approve").await?;
    Ok(answer)
}

#[orchestrator]
async fn nap(ctx: OrchestrationContext, hours: u32) -> Result<u32, OrchestrationError> {
    ctx.sleep(HOUR * hours).await;
    Ok(hours)
}

#[orchestrator]
async fn doomed(_ctx: OrchestrationContext, _input: ()) -> Result<(), OrchestrationError> {
    Err(OrchestrationError::new("the sky fell"))
}

// ------------------------------------------------------------------------------ harness

struct Api {
    worker: Option<Worker>,
    store: MemoryStore,
    clock: ManualClock,
    server: Option<HttpServer>,
    base: String,
    http: HttpClient<HttpConnector, Full<Bytes>>,
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
    /// Error answers carry `{"error": code, "message": text}`, plus the message as
    /// `Message` and `ExceptionMessage` (what Durable Functions clients read).
    fn assert_error(&self, status: StatusCode, code: &str) {
        assert_eq!(self.status, status, "body: {}", self.text);
        assert!(
            self.header("content-type")
                .unwrap()
                .starts_with("application/json"),
            "{:?}",
            self.headers
        );
        let body = self.json();
        assert_eq!(body["error"], code, "{body}");
        assert!(!body["message"].as_str().unwrap().is_empty());
        assert_eq!(body["Message"], body["message"], "{body}");
        assert_eq!(body["ExceptionMessage"], body["message"], "{body}");
    }
}

async fn start_api(options: HttpOptions) -> Api {
    start_api_with(options, |b| b).await
}

async fn start_api_with(
    options: HttpOptions,
    configure: impl FnOnce(WorkerBuilder) -> WorkerBuilder,
) -> Api {
    let store = MemoryStore::new();
    let clock = ManualClock::default();
    let builder = Worker::builder()
        .store(store.clone())
        .clock(clock.as_clock())
        .register(greet)
        .register(hello)
        .register(approval)
        .register(nap)
        .register(doomed)
        .register(Counter::entity());
    let worker = configure(builder).start().expect("worker starts");
    let server = http::serve(worker.client(), ([127, 0, 0, 1], 0).into(), options)
        .await
        .expect("serves on loopback");
    let base = server.url();
    Api {
        worker: Some(worker),
        store,
        clock,
        server: Some(server),
        base,
        http: HttpClient::builder(TokioExecutor::new()).build_http(),
    }
}

impl Api {
    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Reply {
        let uri = if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{PREFIX}{path}", self.base)
        };
        send_with(&self.http, method, &uri, headers, body).await
    }

    async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, &[], None).await
    }

    async fn post(&self, path: &str, body: &str) -> Reply {
        let headers: &[(&str, &str)] = if body.is_empty() {
            &[]
        } else {
            &[("content-type", "application/json")]
        };
        self.send(Method::POST, path, headers, Some(body)).await
    }

    async fn delete(&self, path: &str) -> Reply {
        self.send(Method::DELETE, path, &[], None).await
    }

    /// Starts `name` over HTTP and returns the new instance id.
    async fn start(&self, path: &str, input: &str) -> String {
        let r = self.post(&format!("/orchestrators/{path}"), input).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
        r.json()["id"].as_str().unwrap().to_owned()
    }

    /// Polls the status endpoint until `done` holds, woken by store changes between polls.
    async fn poll(&self, path: &str, what: &str, done: impl Fn(&Reply) -> bool) -> Reply {
        let mut changes = self.store.signals().changed.subscribe();
        let check = async {
            loop {
                changes.borrow_and_update();
                let r = self.get(path).await;
                if done(&r) {
                    return r;
                }
                changes.changed().await.unwrap();
            }
        };
        if let Ok(r) = tokio::time::timeout(GUARD, check).await {
            return r;
        }
        panic!(
            "gave up waiting for {what}; last: {}",
            self.get(path).await.text
        )
    }

    async fn wait_status(&self, id: &str, status: &str) -> Reply {
        self.poll(&format!("/instances/{id}"), status, |r| {
            r.json()["runtimeStatus"] == status
        })
        .await
    }

    async fn shutdown(mut self) {
        self.server.take().unwrap().shutdown().await.unwrap();
        self.worker.take().unwrap().shutdown().await;
    }
}

// --------------------------------------------------------------------- start and status

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_answers_202_with_location_and_management_urls_then_status_reaches_completed() {
    let api = start_api(HttpOptions::new()).await;
    let r = api.post("/orchestrators/hello", "\"Tokyo\"").await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(r.header("retry-after"), Some("10"));
    let body = r.json();
    let id = body["id"].as_str().unwrap();
    let instance = format!("{}{PREFIX}/instances/{id}", api.base);
    assert_eq!(r.header("location"), Some(instance.as_str()));
    assert_eq!(body["statusQueryGetUri"], instance);
    assert_eq!(
        body["sendEventPostUri"],
        format!("{instance}/raiseEvent/{{eventName}}")
    );
    assert_eq!(
        body["terminatePostUri"],
        format!("{instance}/terminate?reason={{text}}")
    );
    assert_eq!(body["purgeHistoryDeleteUri"], instance);
    assert_eq!(body["restartPostUri"], format!("{instance}/restart"));
    assert_eq!(
        body["suspendPostUri"],
        format!("{instance}/suspend?reason={{text}}")
    );
    assert_eq!(
        body["resumePostUri"],
        format!("{instance}/resume?reason={{text}}")
    );
    assert!(body.get("rewindPostUri").is_none());

    // The Location URL is what a polling client follows.
    let done = api
        .poll(r.header("location").unwrap(), "Completed", |r| {
            r.status == StatusCode::OK
        })
        .await;
    let status = done.json();
    assert_eq!(status["name"], "hello");
    assert_eq!(status["instanceId"], id);
    assert_eq!(status["runtimeStatus"], "Completed");
    assert_eq!(status["input"], "Tokyo");
    assert_eq!(status["output"], "Hello Tokyo!");
    assert_eq!(status["customStatus"], json!({"step": "greeting"}));
    // The manual clock starts at 2024-01-01T00:00:00Z; second precision, as Durable Functions.
    assert_eq!(status["createdTime"], "2024-01-01T00:00:00Z");
    assert_eq!(status["lastUpdatedTime"], "2024-01-01T00:00:00Z");
    assert!(status.get("historyEvents").is_none());
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_202_with_location_and_retry_after_while_running_and_200_after_a_timer_fires() {
    let api = start_api(HttpOptions::new()).await;
    let id = api.start("nap/sleeper", "2").await;
    assert_eq!(id, "sleeper");
    let running = api.wait_status(&id, "Running").await;
    assert_eq!(running.status, StatusCode::ACCEPTED);
    assert_eq!(running.header("retry-after"), Some("5"));
    assert_eq!(
        running.header("location"),
        Some(format!("{}{PREFIX}/instances/sleeper", api.base).as_str())
    );
    assert_eq!(running.json()["output"], Value::Null);

    // Query parameters are kept in the Location of a 202.
    let r = api.get("/instances/sleeper?showInput=false").await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert!(
        r.header("location")
            .unwrap()
            .ends_with("/instances/sleeper?showInput=false")
    );
    assert_eq!(r.json()["input"], Value::Null);

    api.clock.advance(HOUR * 2);
    let done = api
        .poll("/instances/sleeper", "Completed", |r| {
            r.status == StatusCode::OK
        })
        .await;
    assert_eq!(done.json()["runtimeStatus"], "Completed");
    assert_eq!(done.json()["output"], 2);
    assert!(done.header("location").is_none());
    assert_eq!(done.json()["lastUpdatedTime"], "2024-01-01T02:00:00Z");
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_history_shapes_events_like_durable_functions() {
    let api = start_api(HttpOptions::new()).await;
    let id = api.start("hello", "\"Lima\"").await;
    api.wait_status(&id, "Completed").await;

    let r = api
        .get(&format!(
            "/instances/{id}?showHistory=True&showHistoryOutput=true"
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let events = r.json()["historyEvents"].as_array().unwrap().clone();
    let kinds: Vec<_> = events
        .iter()
        .map(|e| e["EventType"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["ExecutionStarted", "TaskCompleted", "ExecutionCompleted"],
        "{events:#?}"
    );
    assert_eq!(events[0]["FunctionName"], "hello");
    assert_eq!(events[0]["Input"], "Lima");
    assert!(
        events[0]["Timestamp"]
            .as_str()
            .unwrap()
            .starts_with("2024-01-01T00:00:00")
    );
    assert_eq!(events[1]["FunctionName"], "greet");
    assert_eq!(events[1]["Input"], "Lima");
    assert_eq!(events[1]["Result"], "Hello Lima!");
    assert!(events[1]["ScheduledTime"].is_string());
    assert_eq!(events[2]["OrchestrationStatus"], "Completed");
    assert_eq!(events[2]["Result"], "Hello Lima!");
    for e in &events {
        assert!(
            e.get("EventId").is_none() && e.get("IsPlayed").is_none(),
            "{e}"
        );
    }

    // Without showHistoryOutput, no results; with showInput=FALSE, no inputs.
    let r = api
        .get(&format!("/instances/{id}?showHistory=TRUE&showInput=FALSE"))
        .await;
    let body = r.json();
    assert_eq!(body["input"], Value::Null);
    for e in body["historyEvents"].as_array().unwrap() {
        assert!(e.get("Result").is_none() && e.get("Input").is_none(), "{e}");
    }
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_instances_answer_200_with_failure_details_or_500_when_asked() {
    let api = start_api(HttpOptions::new()).await;
    let id = api.start("doomed", "").await;
    let r = api.wait_status(&id, "Failed").await;
    assert_eq!(r.status, StatusCode::OK);
    let output = &r.json()["output"];
    assert_eq!(output["errorMessage"], "the sky fell", "{output}");
    assert!(output["errorType"].is_string());

    let r = api
        .get(&format!(
            "/instances/{id}?returnInternalServerErrorOnFailure=true"
        ))
        .await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(r.json()["runtimeStatus"], "Failed");
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_can_wait_for_completion() {
    let api = start_api(HttpOptions::new()).await;
    // Finished within the timeout: 200 with the raw output.
    let r = api
        .post(
            "/orchestrators/hello?timeout=20&pollingInterval=1",
            "\"Oslo\"",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json(), "Hello Oslo!");

    // Failed within the timeout: the status answer.
    let r = api
        .post("/orchestrators/doomed?timeout=20&pollingInterval=1", "")
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json()["runtimeStatus"], "Failed");

    // Not finished in time (the timer never fires on the manual clock): 202 + payload.
    let r = api
        .post("/orchestrators/nap?timeout=0.05&pollingInterval=0.01", "1")
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert!(r.json()["statusQueryGetUri"].is_string());

    // A polling interval longer than the timeout is a bad request.
    let r = api
        .post("/orchestrators/hello?timeout=1&pollingInterval=5", "\"x\"")
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "InvalidQueryParameter");
    api.shutdown().await;
}

// ---------------------------------------------------------------------- events and control

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_an_event_completes_a_waiting_orchestration() {
    let api = start_api(HttpOptions::new()).await;
    let id = api.start("approval/order-1", "").await;
    api.wait_status(&id, "Running").await;

    let r = api
        .post("/instances/order-1/raiseEvent/approve", "\"yes\"")
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert!(r.text.is_empty());
    let done = api.wait_status(&id, "Completed").await;
    assert_eq!(done.json()["output"], "yes");

    // Finished: 410 Gone.
    api.post("/instances/order-1/raiseEvent/approve", "\"again\"")
        .await
        .assert_error(StatusCode::GONE, "InstanceNotRunning");
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raise_event_accepts_what_curl_sends() {
    let api = start_api(HttpOptions::new()).await;
    let id = api.start("approval", "").await;
    // curl -d '"ok"' sends a form content type; the body is JSON all the same.
    let r = api
        .send(
            Method::POST,
            &format!("/instances/{id}/raiseEvent/approve"),
            &[("content-type", "application/x-www-form-urlencoded")],
            Some("\"ok\""),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(
        api.wait_status(&id, "Completed").await.json()["output"],
        "ok"
    );
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_ends_a_running_instance_and_a_second_terminate_is_gone() {
    let api = start_api(HttpOptions::new()).await;
    let id = api.start("nap", "5").await;
    api.wait_status(&id, "Running").await;
    let r = api
        .post(
            &format!("/instances/{id}/terminate?reason=no+longer+needed"),
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let done = api.wait_status(&id, "Terminated").await;
    assert_eq!(done.status, StatusCode::OK);
    assert_eq!(done.json()["output"], "no longer needed");

    api.post(&format!("/instances/{id}/terminate"), "")
        .await
        .assert_error(StatusCode::GONE, "InstanceNotRunning");

    // A JSON-encoded string body is a reason too; operation names match in any casing.
    let id = api.start("nap", "5").await;
    let r = api
        .post(&format!("/instances/{id}/Terminate"), "\"reason text\"")
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(
        api.wait_status(&id, "Terminated").await.json()["output"],
        "reason text"
    );
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_and_resume() {
    let api = start_api(HttpOptions::new()).await;
    let id = api.start("approval", "").await;
    api.wait_status(&id, "Running").await;

    let r = api
        .post(&format!("/instances/{id}/suspend?reason=hold"), "")
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let suspended = api.wait_status(&id, "Suspended").await;
    assert_eq!(suspended.status, StatusCode::ACCEPTED);

    // An event raised while suspended waits for the resume.
    api.post(&format!("/instances/{id}/raiseEvent/approve"), "\"later\"")
        .await;
    let r = api
        .post(&format!("/instances/{id}/resume?reason=go"), "")
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(
        api.wait_status(&id, "Completed").await.json()["output"],
        "later"
    );

    api.post(&format!("/instances/{id}/suspend"), "")
        .await
        .assert_error(StatusCode::GONE, "InstanceNotRunning");
    api.post(&format!("/instances/{id}/resume"), "")
        .await
        .assert_error(StatusCode::GONE, "InstanceNotRunning");
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_starts_the_same_input_again_and_rewind_resumes_a_failed_one() {
    let api = start_api(HttpOptions::new()).await;
    let id = api.start("hello/first", "\"Rome\"").await;
    api.wait_status(&id, "Completed").await;

    // A new id by default.
    let r = api.post("/instances/first/restart", "").await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let new_id = r.json()["id"].as_str().unwrap().to_owned();
    assert_ne!(new_id, "first");
    assert_eq!(
        api.wait_status(&new_id, "Completed").await.json()["output"],
        "Hello Rome!"
    );

    // The same id when asked.
    let r = api
        .post(
            "/instances/first/restart?restartWithNewInstanceId=false",
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(r.json()["id"], "first");

    // Unknown ids are a bad request (Durable Functions' answer); a running one under its
    // own id is a conflict.
    api.post("/instances/nobody/restart", "")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "InstanceNotFound");
    let sleeper = api.start("nap", "1").await;
    api.post(
        &format!("/instances/{sleeper}/restart?restartWithNewInstanceId=false"),
        "",
    )
    .await
    .assert_error(StatusCode::CONFLICT, "InstanceAlreadyExists");

    // Rewind: only a Failed instance; it runs again from the point of failure (here the
    // code fails the same way again, so it ends Failed once more, with the rewind recorded).
    api.post(&format!("/instances/{sleeper}/rewind"), "")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "InstanceNotFailed");
    let failed = api.start("doomed", "").await;
    api.wait_status(&failed, "Failed").await;
    let r = api
        .post(&format!("/instances/{failed}/rewind?reason=retry"), "")
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let history = api
        .poll(
            &format!("/instances/{failed}?showHistory=true"),
            "a rewound and failed-again history",
            |r| {
                let j = r.json();
                j["runtimeStatus"] == "Failed"
                    && j["historyEvents"]
                        .as_array()
                        .is_some_and(|h| h.iter().any(|e| e["EventType"] == "ExecutionRewound"))
            },
        )
        .await;
    let events = history.json()["historyEvents"].as_array().unwrap().clone();
    let rewound = events
        .iter()
        .find(|e| e["EventType"] == "ExecutionRewound")
        .unwrap();
    assert_eq!(rewound["Reason"], "retry");
    api.post(&format!("/instances/{new_id}/rewind"), "")
        .await
        .assert_error(StatusCode::GONE, "InstanceNotRunning");
    api.post("/instances/nobody/rewind", "")
        .await
        .assert_error(StatusCode::NOT_FOUND, "InstanceNotFound");
    api.shutdown().await;
}

// ---------------------------------------------------------------------------- bad input

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_instances_are_404() {
    let api = start_api(HttpOptions::new()).await;
    api.get("/instances/nobody")
        .await
        .assert_error(StatusCode::NOT_FOUND, "InstanceNotFound");
    api.post("/instances/nobody/raiseEvent/x", "1")
        .await
        .assert_error(StatusCode::NOT_FOUND, "InstanceNotFound");
    for op in ["terminate", "suspend", "resume"] {
        api.post(&format!("/instances/nobody/{op}"), "")
            .await
            .assert_error(StatusCode::NOT_FOUND, "InstanceNotFound");
    }
    api.delete("/instances/nobody")
        .await
        .assert_error(StatusCode::NOT_FOUND, "InstanceNotFound");
    // Unknown endpoints and methods.
    api.get("/nothing-here")
        .await
        .assert_error(StatusCode::NOT_FOUND, "NotFound");
    api.post("/instances/nobody/explode", "")
        .await
        .assert_error(StatusCode::NOT_FOUND, "NotFound");
    api.send(Method::PUT, "/instances/nobody", &[], None)
        .await
        .assert_error(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed");
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_is_400_with_a_json_body_never_500() {
    let api = start_api(HttpOptions::new()).await;
    api.post("/orchestrators/hello", "{not json")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "InvalidJson");
    api.post("/orchestrators/hello", "42")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "InvalidPayload");
    api.post("/orchestrators/no_such_thing", "1")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "UnknownOrchestrator");
    let long = "x".repeat(101);
    api.post(&format!("/orchestrators/hello/{long}"), "\"a\"")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "InvalidInstanceId");
    api.post("/orchestrators/hello/%40entity", "\"a\"")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "InvalidInstanceId");
    api.get("/instances/a%2Fb")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "InvalidInstanceId");
    api.get("/instances/a%FFb")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "InvalidPath");
    api.get("/instances/x?showHistory=maybe")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "InvalidQueryParameter");
    api.get("/instances?createdTimeFrom=yesterday")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "InvalidQueryParameter");
    // A year the arithmetic cannot hold (it overflowed, a panic in debug builds).
    api.get("/instances?createdTimeFrom=99999999999999-01-01T00:00:00Z")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "InvalidQueryParameter");
    api.get("/instances?runtimeStatus=Sleeping")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "InvalidQueryParameter");
    api.get("/instances?top=-1")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "InvalidQueryParameter");
    api.send(
        Method::GET,
        "/instances",
        &[("x-ms-continuation-token", "not-a-token")],
        None,
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "InvalidContinuationToken");
    api.post("/orchestrators/hello?timeout=soon", "\"a\"")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "InvalidQueryParameter");

    let id = api.start("approval", "").await;
    api.post(
        &format!("/instances/{id}/raiseEvent/approve"),
        "{\"unterminated\": ",
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "InvalidJson");
    // The id of a running instance is taken.
    api.post(&format!("/orchestrators/approval/{id}"), "")
        .await
        .assert_error(StatusCode::CONFLICT, "InstanceAlreadyExists");
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_413() {
    let api = start_api(HttpOptions::new().max_body_bytes(64)).await;
    let big = format!("\"{}\"", "x".repeat(100));
    api.post("/orchestrators/hello", &big)
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge");
    let id = api.start("approval", "").await;
    api.post(&format!("/instances/{id}/raiseEvent/approve"), &big)
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge");
    api.shutdown().await;

    // The worker's payload limit is the default body limit.
    let api = start_api_with(HttpOptions::new(), |b| {
        let mut limits = Limits::default();
        limits.max_payload_bytes = 32;
        b.limits(limits)
    })
    .await;
    api.post("/orchestrators/hello", &big)
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge");
    api.shutdown().await;
}

// ------------------------------------------------------------------------ list and purge

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_and_pages_through_the_continuation_header() {
    let api = start_api(HttpOptions::new()).await;
    for i in 1..=5 {
        let id = api
            .start(&format!("hello/page-{i}"), &format!("\"{i}\""))
            .await;
        api.wait_status(&id, "Completed").await;
    }
    api.start("nap/other", "1").await;
    api.wait_status("other", "Running").await;

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let headers: Vec<(&str, &str)> = if token.is_empty() {
            vec![]
        } else {
            vec![("x-ms-continuation-token", token.as_str())]
        };
        let r = api
            .send(
                Method::GET,
                "/instances?instanceIdPrefix=page-&top=2",
                &headers,
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        pages += 1;
        let items = r.json();
        assert!(items.as_array().unwrap().len() <= 2);
        for item in items.as_array().unwrap() {
            assert_eq!(item["runtimeStatus"], "Completed");
            assert!(item.get("historyEvents").is_none());
            seen.push(item["instanceId"].as_str().unwrap().to_owned());
        }
        // Always present; empty on the last page.
        token = r
            .header("x-ms-continuation-token")
            .expect("token header")
            .to_owned();
        if token.is_empty() {
            break;
        }
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(seen, ["page-1", "page-2", "page-3", "page-4", "page-5"]);
    assert_eq!(pages, 3);

    // Status and creation-time filters.
    let r = api.get("/instances?runtimeStatus=Running,Pending").await;
    let ids: Vec<_> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["instanceId"].clone())
        .collect();
    assert_eq!(ids, [json!("other")]);
    let r = api.get("/instances?runtimeStatus=Canceled").await;
    assert_eq!(r.json(), json!([]));
    let r = api
        .get("/instances?createdTimeFrom=2024-01-02T00:00:00Z")
        .await;
    assert_eq!(r.json(), json!([]));
    let r = api
        .get("/instances?createdTimeFrom=2023-12-31T00:00:00Z&createdTimeTo=2024-01-01T00:00:00Z&showInput=false")
        .await;
    let all = r.json();
    assert_eq!(all.as_array().unwrap().len(), 6);
    assert!(all.as_array().unwrap().iter().all(|i| i["input"].is_null()));
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_one_and_by_filter() {
    let api = start_api(HttpOptions::new()).await;
    let done = api.start("hello/done", "\"a\"").await;
    api.wait_status(&done, "Completed").await;
    let r = api.delete("/instances/done").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json(), json!({"instancesDeleted": 1}));
    api.get("/instances/done")
        .await
        .assert_error(StatusCode::NOT_FOUND, "InstanceNotFound");
    api.delete("/instances/done")
        .await
        .assert_error(StatusCode::NOT_FOUND, "InstanceNotFound");

    // A running instance cannot be purged.
    let running = api.start("nap", "1").await;
    api.delete(&format!("/instances/{running}"))
        .await
        .assert_error(StatusCode::PRECONDITION_FAILED, "InstanceStillRunning");

    for i in 0..3 {
        let id = api.start(&format!("hello/old-{i}"), "\"b\"").await;
        api.wait_status(&id, "Completed").await;
    }
    api.delete("/instances")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "MissingQueryParameter");
    let r = api
        .delete("/instances?createdTimeFrom=2023-01-01T00:00:00Z&runtimeStatus=Completed,Failed,Terminated")
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json(), json!({"instancesDeleted": 3}));
    // Nothing left to purge: 404.
    api.delete("/instances?createdTimeFrom=2023-01-01")
        .await
        .assert_error(StatusCode::NOT_FOUND, "NothingPurged");
    // The running instance survived.
    assert_eq!(
        api.get(&format!("/instances/{running}")).await.status,
        StatusCode::ACCEPTED
    );
    api.shutdown().await;
}

// ---------------------------------------------------------------------------- security

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_token_is_required_when_set() {
    let api = start_api(HttpOptions::new().bearer_token("s3cret")).await;
    let r = api.get("/instances").await;
    r.assert_error(StatusCode::UNAUTHORIZED, "Unauthorized");
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    api.send(
        Method::GET,
        "/instances",
        &[("authorization", "Bearer wrong")],
        None,
    )
    .await
    .assert_error(StatusCode::UNAUTHORIZED, "Unauthorized");
    api.send(
        Method::POST,
        "/orchestrators/hello",
        &[("authorization", "Basic czNjcmV0")],
        Some("\"a\""),
    )
    .await
    .assert_error(StatusCode::UNAUTHORIZED, "Unauthorized");

    let r = api
        .send(
            Method::GET,
            "/instances",
            &[("authorization", "Bearer s3cret")],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = api
        .send(
            Method::POST,
            "/orchestrators/hello",
            &[("authorization", "bearer s3cret")],
            Some("\"a\""),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    // Durable Functions clients pass the key as `code`.
    let r = api.get("/instances?code=s3cret").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_non_loopback_addresses_without_a_token() {
    let worker = Worker::builder().store(MemoryStore::new()).start().unwrap();
    let err = http::serve(
        worker.client(),
        ([0, 0, 0, 0], 0).into(),
        HttpOptions::new(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ServeError::InsecureBind(_)), "{err}");
    assert!(err.to_string().contains("bearer token"), "{err}");
    let err = http::serve(
        worker.client(),
        ([0, 0, 0, 0], 0).into(),
        HttpOptions::new().bearer_token(""),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ServeError::InsecureBind(_)), "{err}");
    // IPv6 loopback is fine without a token (where the host has it).
    if let Ok(server) = http::serve(
        worker.client(),
        "[::1]:0".parse().unwrap(),
        HttpOptions::new(),
    )
    .await
    {
        assert!(server.local_addr().ip().is_loopback());
        server.shutdown().await.unwrap();
    }
    worker.shutdown().await;
}

#[test]
fn check_status_response_builds_the_management_payload() {
    let id = InstanceId::new("order 7").unwrap();
    let response = http::check_status_response(&id, "https://jobs.example.com/");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(
        response.headers()["location"],
        "https://jobs.example.com/runtime/webhooks/durabletask/instances/order%207"
    );
    assert_eq!(response.headers()["retry-after"], "10");
    let payload = http::CheckStatus::new(&id, "http://h").return_internal_server_error_on_failure();
    assert_eq!(
        payload.status_query_get_uri,
        "http://h/runtime/webhooks/durabletask/instances/order%207?returnInternalServerErrorOnFailure=true"
    );
}

// ----------------------------------------------------------------------------- entities

#[entity]
#[derive(Default, Serialize, Deserialize)]
struct Counter {
    value: i64,
}

#[entity]
impl Counter {
    fn add(&mut self, amount: i64) {
        self.value += amount;
    }

    fn get(&self) -> i64 {
        self.value
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entities_are_signalled_read_listed_and_deleted() {
    let api = start_api(HttpOptions::new()).await;
    assert_eq!(
        api.get("/entities/counter/cats").await.status,
        StatusCode::NOT_FOUND
    );
    for n in [5, 4] {
        let r = api
            .post("/entities/Counter/cats?op=add", &n.to_string())
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    }
    // What `curl -d 1` sends: a form content type with a JSON body.
    let r = api
        .send(
            Method::POST,
            "/entities/counter/dogs?op=add",
            &[("content-type", "application/x-www-form-urlencoded")],
            Some("1"),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let state = api
        .poll("/entities/counter/cats", "state 9", |r| {
            r.status == StatusCode::OK && r.json()["value"] == 9
        })
        .await;
    assert_eq!(state.json(), serde_json::json!({ "value": 9 }));
    api.poll("/entities/counter/dogs", "dogs", |r| {
        r.status == StatusCode::OK
    })
    .await;

    let list = api.get("/entities/counter?top=1&fetchState=true").await;
    assert_eq!(list.status, StatusCode::OK);
    let items = list.json();
    assert_eq!(items.as_array().unwrap().len(), 1);
    assert_eq!(
        items[0]["entityId"],
        serde_json::json!({ "key": "cats", "name": "counter" })
    );
    assert_eq!(items[0]["state"]["value"], 9);
    assert!(
        items[0]["lastOperationTime"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    let token = list.header("x-ms-continuation-token").unwrap().to_owned();
    assert!(!token.is_empty());
    let next = api
        .send(
            Method::GET,
            "/entities/counter?top=1",
            &[("x-ms-continuation-token", &token)],
            None,
        )
        .await;
    assert_eq!(next.json()[0]["entityId"]["key"], "dogs");
    assert!(
        next.json()[0].get("state").is_none(),
        "no state without fetchState"
    );

    // Unknown entity names, bad operations and bad bodies.
    api.post("/entities/nosuch/k?op=add", "1")
        .await
        .assert_error(StatusCode::NOT_FOUND, "UnknownEntity");
    api.post("/entities/counter/k?op=add", "{not json")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "InvalidJson");

    let r = api.delete("/entities/counter/cats").await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    api.poll("/entities/counter/cats", "deleted", |r| {
        r.status == StatusCode::NOT_FOUND
    })
    .await;
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_instance_ids_get_urls_clients_do_not_collapse() {
    let api = start_api(HttpOptions::new()).await;
    let r = api.post("/orchestrators/hello/%2E", "\"Rome\"").await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let location = r.header("location").unwrap().to_owned();
    assert!(location.ends_with("/instances/%2E"), "{location}");
    let done = api
        .poll(&location, "the instance `.` to complete", |r| {
            r.status == StatusCode::OK
        })
        .await;
    assert_eq!(done.json()["instanceId"], ".");
    assert_eq!(done.json()["output"], "Hello Rome!");
    // Purged once: a second purge finds nothing.
    let r = api.delete("/instances/%2E").await;
    assert_eq!(r.json()["instancesDeleted"], 1, "{}", r.text);
    api.delete("/instances/%2E")
        .await
        .assert_error(StatusCode::NOT_FOUND, "InstanceNotFound");
    api.shutdown().await;
}

// ------------------------------------------------------------------------------ issue 12

/// The unmodified Durable Functions clients, DF-shaped history, links with `code=`, and
/// errors raised before routing.
mod issue12 {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[orchestrator]
    async fn total(
        _ctx: OrchestrationContext,
        numbers: Vec<i64>,
    ) -> Result<i64, OrchestrationError> {
        Ok(numbers.iter().sum())
    }

    #[derive(Serialize, Deserialize)]
    struct Verdict {
        approved: bool,
        by: String,
    }

    #[orchestrator]
    async fn review(ctx: OrchestrationContext, _input: ()) -> Result<String, OrchestrationError> {
        let v: Verdict = ctx.wait_for_event("verdict").await?;
        Ok(format!("approved={} by {}", v.approved, v.by))
    }

    /// Locks, calls and signals `Counter` entities.
    #[orchestrator]
    async fn tally(ctx: OrchestrationContext, amount: i64) -> Result<i64, OrchestrationError> {
        let section = ctx.lock(&[EntityId::of::<Counter>("tally")?]).await?;
        ctx.entity::<Counter>("tally").add(amount).await?;
        let value = ctx.entity::<Counter>("tally").get().await?;
        section.release();
        ctx.signal_entity::<Counter>("other").add(1);
        Ok(value)
    }

    async fn start(options: HttpOptions) -> Api {
        start_api_with(options, |b| {
            b.register(total).register(review).register(tally)
        })
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn error_bodies_carry_message_and_exception_message() {
        let api = start(HttpOptions::new()).await;
        // The Python client's start_new raises body["ExceptionMessage"] on a 400.
        let r = api
            .post("/orchestrators/no_such_orchestrator", "\"1\"")
            .await;
        r.assert_error(StatusCode::BAD_REQUEST, "UnknownOrchestrator");
        assert!(
            r.json()["ExceptionMessage"]
                .as_str()
                .unwrap()
                .contains("no_such_orchestrator")
        );
        api.get("/nowhere")
            .await
            .assert_error(StatusCode::NOT_FOUND, "NotFound");
        api.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn double_encoded_starts_events_and_signals_decode_as_the_typed_input() {
        let api = start(HttpOptions::new()).await;
        // What the Python client sends for start_new("total", None, [1, 2, 3]).
        let id = api.start("total", r#""[1, 2, 3]""#).await;
        assert_eq!(api.wait_status(&id, "Completed").await.json()["output"], 6);
        // ... for the string "World": the string, not "\"World\"".
        let id = api.start("hello", r#""\"World\"""#).await;
        assert_eq!(
            api.wait_status(&id, "Completed").await.json()["output"],
            "Hello World!"
        );
        // Still refused when neither the body nor its content is the input type.
        api.post("/orchestrators/total", r#""[\"a\"]""#)
            .await
            .assert_error(StatusCode::BAD_REQUEST, "InvalidPayload");
        api.post("/orchestrators/total", r#""{\"a\": 1}""#)
            .await
            .assert_error(StatusCode::BAD_REQUEST, "InvalidPayload");

        // Events: decoded when the orchestration receives them.
        let id = api.start("review", "").await;
        let r = api
            .post(
                &format!("/instances/{id}/raiseEvent/verdict"),
                r#""{\"approved\": true, \"by\": \"ada\"}""#,
            )
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
        assert_eq!(
            api.wait_status(&id, "Completed").await.json()["output"],
            "approved=true by ada"
        );
        let id = api.start("approval", "").await;
        api.post(
            &format!("/instances/{id}/raiseEvent/approve"),
            r#""\"yes\"""#,
        )
        .await;
        assert_eq!(
            api.wait_status(&id, "Completed").await.json()["output"],
            "yes"
        );

        // Entity signals with inputs: "5", then a string holding the string "2".
        for body in [r#""5""#, r#""\"2\"""#] {
            let r = api.post("/entities/Counter/py?op=add", body).await;
            assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
        }
        let state = api
            .poll("/entities/counter/py", "state 7", |r| {
                r.status == StatusCode::OK && r.json()["value"] == 7
            })
            .await;
        assert_eq!(state.json(), json!({ "value": 7 }));
        api.shutdown().await;
    }

    /// `2024-01-01T00:00:00.1230000Z`: .NET's round-trip format.
    fn has_seven_fraction_digits(time: &str) -> bool {
        let Some((_, fraction)) = time.split_once('.') else {
            return false;
        };
        fraction.len() == 8
            && fraction.ends_with('Z')
            && fraction[..7].bytes().all(|b| b.is_ascii_digit())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn history_shows_entity_traffic_as_durable_functions_event_types() {
        let api = start(HttpOptions::new()).await;
        let id = api.start("tally", "5").await;
        let done = api.wait_status(&id, "Completed").await;
        assert_eq!(done.json()["output"], 5);
        let created = done.json()["createdTime"].as_str().unwrap().to_owned();
        assert!(
            !created.contains('.'),
            "status times have second precision: {created}"
        );

        let r = api
            .get(&format!(
                "/instances/{id}?showHistory=true&showHistoryOutput=true"
            ))
            .await;
        let events = r.json()["historyEvents"].as_array().unwrap().clone();
        let summary: Vec<String> = events
            .iter()
            .map(|e| {
                format!(
                    "{} {} {}",
                    e["EventType"].as_str().unwrap(),
                    e["Name"].as_str().unwrap_or("-"),
                    e["InstanceId"].as_str().unwrap_or("-")
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                "ExecutionStarted - -",
                "EventSent lock @counter@tally",
                "EventRaised lock @counter@tally",
                "EventSent add @counter@tally",
                "EventRaised add @counter@tally",
                "EventSent get @counter@tally",
                "EventRaised get @counter@tally",
                "EventSent release @counter@tally",
                "EventSent add @counter@other",
                "ExecutionCompleted - -",
            ],
            "{events:#?}"
        );
        // Payloads as JSON values: the call's input and the entity's answer.
        assert_eq!(events[3]["Input"], 5);
        assert_eq!(events[6]["Input"], 5);
        assert_eq!(events[9]["Result"], 5);
        for e in &events {
            let t = e["Timestamp"].as_str().unwrap();
            assert!(has_seven_fraction_digits(t), "{t}");
        }
        // Without showInput / showHistoryOutput: no payloads at all.
        let r = api
            .get(&format!("/instances/{id}?showHistory=true&showInput=false"))
            .await;
        for e in r.json()["historyEvents"].as_array().unwrap() {
            assert!(e.get("Input").is_none() && e.get("Result").is_none(), "{e}");
        }
        api.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn raise_event_is_matched_case_insensitively() {
        let api = start(HttpOptions::new()).await;
        let first = api.start("approval", "").await;
        let second = api.start("approval", "").await;
        for (id, op) in [(&first, "RaiseEvent"), (&second, "raiseevent")] {
            let r = api
                .post(
                    &format!("/instances/{id}/{op}/approve"),
                    &format!("\"{op}\""),
                )
                .await;
            assert_eq!(r.status, StatusCode::ACCEPTED, "{op}: {}", r.text);
            assert_eq!(api.wait_status(id, "Completed").await.json()["output"], op);
        }
        api.post(&format!("/instances/{first}/raiseEvents/approve"), "1")
            .await
            .assert_error(StatusCode::NOT_FOUND, "NotFound");
        api.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn management_links_carry_the_code_only_when_asked() {
        const TOKEN: &str = "s3 cr+t";
        const CODE: &str = "code=s3%20cr%2Bt";
        let auth = [("authorization", "Bearer s3 cr+t")];
        let api = start(HttpOptions::new().bearer_token(TOKEN).code_in_links(true)).await;
        let r = api
            .send(Method::POST, "/orchestrators/nap", &auth, Some("1"))
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
        let body = r.json();
        for key in [
            "statusQueryGetUri",
            "sendEventPostUri",
            "terminatePostUri",
            "purgeHistoryDeleteUri",
            "restartPostUri",
            "suspendPostUri",
            "resumePostUri",
        ] {
            let url = body[key].as_str().unwrap();
            assert_eq!(url.matches(CODE).count(), 1, "{key}: {url}");
        }
        let location = r.header("location").unwrap().to_owned();
        assert_eq!(location, body["statusQueryGetUri"]);

        // Logic Apps-style polling: follow Location with no header at all.
        let r = api.get(&location).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
        assert_eq!(r.header("location"), Some(location.as_str()));
        // A status read with the header gets a Location that works without it.
        let id = body["id"].as_str().unwrap();
        let r = api
            .send(Method::GET, &format!("/instances/{id}"), &auth, None)
            .await;
        assert!(r.header("location").unwrap().ends_with(&format!("?{CODE}")));
        let terminate = body["terminatePostUri"]
            .as_str()
            .unwrap()
            .replace("{text}", "enough");
        let r = api.send(Method::POST, &terminate, &[], None).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
        api.shutdown().await;

        // Off by default: the token never shows in a link.
        let api = start(HttpOptions::new().bearer_token(TOKEN)).await;
        let r = api
            .send(Method::POST, "/orchestrators/nap", &auth, Some("1"))
            .await;
        assert!(!r.text.contains("code="), "{}", r.text);
        assert!(!r.header("location").unwrap().contains("code="));
        api.shutdown().await;
    }

    /// Sends raw bytes on a fresh connection and reads until the server closes it.
    async fn raw(api: &Api, request: &[u8]) -> String {
        let addr = api.base.trim_start_matches("http://");
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(GUARD, stream.read_to_end(&mut out))
            .await
            .expect("the server closes the connection")
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    /// The status code and JSON body of the last answer in `text`.
    fn last_answer(text: &str) -> (u16, Value) {
        let start = text.rfind("HTTP/1.1 ").expect("an answer");
        let answer = &text[start..];
        let status = answer[9..12].parse().unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains("content-type: application/json"),
            "no JSON body: {head}"
        );
        (status, serde_json::from_str(body).expect("JSON body"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn errors_raised_before_routing_carry_the_json_error_body() {
        let api = start(HttpOptions::new()).await;
        let long_uri = format!(
            "GET /{} HTTP/1.1\r\nhost: localhost\r\n\r\n",
            "a".repeat(70_000)
        );
        let mut many_headers = "GET / HTTP/1.1\r\nhost: localhost\r\n".to_owned();
        for i in 0..150 {
            many_headers.push_str("x-h");
            many_headers.push_str(&i.to_string());
            many_headers.push_str(": 1\r\n");
        }
        many_headers.push_str("\r\n");
        for (request, status, code) in [
            (
                "NOT HTTP AT ALL\r\n\r\n".to_owned(),
                400,
                "MalformedRequest",
            ),
            (
                "GET / HTTP/1.1\r\nhost: localhost\r\nno colon here\r\n\r\n".to_owned(),
                400,
                "MalformedRequest",
            ),
            (long_uri, 414, "UriTooLong"),
            (many_headers, 431, "RequestHeadersTooLarge"),
        ] {
            let text = raw(&api, request.as_bytes()).await;
            let (got, body) = last_answer(&text);
            assert_eq!(got, status, "{text}");
            assert_eq!(body["error"], code, "{body}");
            assert_eq!(body["ExceptionMessage"], body["message"], "{body}");
        }
        // A good request, then garbage on the same connection: two JSON answers.
        let text = raw(
            &api,
            format!(
                "GET {PREFIX}/instances/nope HTTP/1.1\r\nhost: localhost\r\n\r\nGARBAGE\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(text.matches("HTTP/1.1 ").count(), 2, "{text}");
        assert!(text.starts_with("HTTP/1.1 404"), "{text}");
        let (status, body) = last_answer(&text);
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("MalformedRequest"))
        );
        api.shutdown().await;
    }

    #[activity]
    async fn decline(_cents: u64) -> Result<(), ActivityError> {
        Err(ActivityError::non_retriable("card declined"))
    }

    #[orchestrator]
    async fn charge_card(ctx: OrchestrationContext, cents: u64) -> Result<(), OrchestrationError> {
        Ok(ctx.call(decline, cents).await?)
    }

    /// A failure caused by a failed task names it; the task's own failure is the nested
    /// `innerFailure` in the status output and `InnerFailure` in history.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failure_details_name_the_task_and_nest_its_own_failure() {
        let api = start_api_with(HttpOptions::new(), |b| {
            b.register(decline).register(charge_card)
        })
        .await;
        let id = api.start("charge_card", "5").await;
        api.wait_status(&id, "Failed").await;
        let r = api.get(&format!("/instances/{id}?showHistory=true")).await;
        let body = r.json();
        let output = &body["output"];
        assert_eq!(output["errorType"], "TaskFailed", "{output}");
        assert_eq!(
            output["errorMessage"],
            "activity 'decline' (task 0) failed: card declined"
        );
        assert_eq!(output["isNonRetriable"], true);
        assert_eq!(
            output["innerFailure"]["errorType"], "ActivityError",
            "{output}"
        );
        assert_eq!(output["innerFailure"]["errorMessage"], "card declined");
        let events = body["historyEvents"].as_array().unwrap();
        let completed = events
            .iter()
            .find(|e| e["EventType"] == "ExecutionCompleted")
            .expect("ExecutionCompleted in history");
        assert_eq!(
            completed["FailureDetails"]["InnerFailure"]["ErrorMessage"], "card declined",
            "{completed}"
        );
        api.shutdown().await;
    }

    /// An empty event name is refused with 400; names match in any casing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn event_names_are_case_insensitive_and_never_empty() {
        let api = start(HttpOptions::new()).await;
        let id = api.start("approval", "").await;
        api.wait_status(&id, "Running").await;
        let r = api
            .post(&format!("/instances/{id}/raiseEvent/"), "\"x\"")
            .await;
        r.assert_error(StatusCode::BAD_REQUEST, "InvalidEventName");
        let r = api
            .post(&format!("/instances/{id}/raiseEvent/APPROVE"), "\"yes\"")
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
        assert_eq!(
            api.wait_status(&id, "Completed").await.json()["output"],
            "yes"
        );
        api.shutdown().await;
    }
}

#[activity]
async fn declined(_amount: u32) -> Result<u32, ActivityError> {
    Err(ActivityError::new("card declined"))
}

#[orchestrator]
async fn pay_in_section(ctx: OrchestrationContext, _input: ()) -> Result<u32, OrchestrationError> {
    let _section = ctx.lock(&[EntityId::of::<Counter>("till")?]).await?;
    Ok(ctx.call(declined, 5).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue12_requests_that_cannot_apply_are_400_not_202() {
    let api = start_api_with(HttpOptions::new(), |b| {
        b.register(declined).register(pay_in_section)
    })
    .await;
    let id = api.start("approval", "").await;
    api.wait_status(&id, "Running").await;
    let r = api.post(&format!("/instances/{id}/resume"), "").await;
    r.assert_error(StatusCode::BAD_REQUEST, "InvalidState");
    assert_eq!(
        r.json()["message"],
        format!("cannot resume instance `{id}` in the Running state")
    );
    let r = api.post(&format!("/instances/{id}/suspend"), "").await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    api.post(&format!("/instances/{id}/suspend"), "")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "InvalidState");

    // A failure inside a critical section cannot be rewound: refused, not accepted and
    // then dropped.
    let id = api.start("pay_in_section", "").await;
    api.wait_status(&id, "Failed").await;
    let r = api.post(&format!("/instances/{id}/rewind"), "").await;
    r.assert_error(StatusCode::BAD_REQUEST, "CannotRewind");
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("critical section"),
        "{}",
        r.text
    );
    api.shutdown().await;
}

// ------------------------------------------------------------------ issue 13: custom status

#[orchestrator]
async fn progress(ctx: OrchestrationContext, _input: ()) -> Result<(), OrchestrationError> {
    ctx.set_custom_status(&json!({"step": 1}))?;
    let _: () = ctx.wait_for_event("next").await?;
    ctx.clear_custom_status();
    let _: () = ctx.wait_for_event("next").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cleared_custom_status_is_null_in_the_status() {
    let api = start_api_with(HttpOptions::new(), |b| b.register(progress)).await;
    let id = api.start("progress", "").await;
    let path = format!("/instances/{id}");
    let r = api
        .poll(&path, "a custom status", |r| {
            !r.json()["customStatus"].is_null()
        })
        .await;
    assert_eq!(r.json()["customStatus"], json!({"step": 1}));
    let r = api
        .post(&format!("/instances/{id}/raiseEvent/next"), "")
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let r = api
        .poll(&path, "the status cleared", |r| {
            r.json()["customStatus"].is_null()
        })
        .await;
    assert_eq!(r.json()["runtimeStatus"], "Running");
    let record = api
        .worker
        .as_ref()
        .unwrap()
        .client()
        .status(&InstanceId::new(&id).unwrap())
        .await
        .unwrap();
    assert_eq!(
        record.custom_status, None,
        "no status, not the JSON text `null`"
    );
    api.shutdown().await;
}

// ------------------------------------------------------------------------------ tracing

/// With no OpenTelemetry layer in place, a start's `traceparent` and `tracestate` headers are
/// stored with the instance as they came; a malformed `traceparent` is ignored, not refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_stores_the_callers_trace_context() {
    use durable_core::history::Event;
    let api = start_api(HttpOptions::new()).await;
    let started_with = |id: String| {
        let store = api.store.clone();
        async move {
            let history = store
                .read_history(&InstanceId::new(id).unwrap())
                .await
                .unwrap();
            history
                .into_iter()
                .find_map(|e| match e.event {
                    Event::ExecutionStarted { trace_context, .. } => Some(trace_context),
                    _ => None,
                })
                .expect("an ExecutionStarted")
        }
    };
    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let traced = api
        .send(
            Method::POST,
            "/orchestrators/hello/traced",
            &[
                ("content-type", "application/json"),
                ("traceparent", parent),
                ("tracestate", "vendor=opaque"),
            ],
            Some("\"Ada\""),
        )
        .await;
    assert_eq!(traced.status, StatusCode::ACCEPTED, "{}", traced.text);
    let malformed = api
        .send(
            Method::POST,
            "/orchestrators/hello/untraced",
            &[
                ("content-type", "application/json"),
                ("traceparent", "00-not-a-trace-01<script>"),
            ],
            Some("\"Ada\""),
        )
        .await;
    assert_eq!(malformed.status, StatusCode::ACCEPTED, "{}", malformed.text);
    api.wait_status("traced", "Completed").await;
    api.wait_status("untraced", "Completed").await;

    let stored = started_with("traced".into())
        .await
        .expect("a stored context");
    assert_eq!(stored.traceparent(), parent);
    assert_eq!(stored.tracestate(), Some("vendor=opaque"));
    assert_eq!(started_with("untraced".into()).await, None);
    api.shutdown().await;
}

/// Without a token the API answers only requests addressed to this machine (DNS rebinding:
/// a page elsewhere pointing a name of its own at 127.0.0.1 can neither read nor act); with
/// a token, any name (behind a proxy, say) is answered once the token is shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_only_requests_to_this_machine_are_answered() {
    let api = start_api(HttpOptions::new()).await;
    let id = api.start("hello", "\"Ada\"").await;
    for host in ["evil.example:7071", "127.0.0.1.evil.example", "10.0.0.7"] {
        api.send(
            Method::GET,
            &format!("/instances/{id}"),
            &[("host", host)],
            None,
        )
        .await
        .assert_error(StatusCode::FORBIDDEN, "HostNotAllowed");
        api.send(
            Method::POST,
            &format!("/instances/{id}/terminate"),
            &[("host", host)],
            None,
        )
        .await
        .assert_error(StatusCode::FORBIDDEN, "HostNotAllowed");
    }
    for host in ["localhost:7071", "127.0.0.1", "[::1]:7071"] {
        let r = api
            .send(
                Method::GET,
                &format!("/instances/{id}"),
                &[("host", host)],
                None,
            )
            .await;
        assert!(r.status.is_success(), "{host}: {}", r.text);
    }
    api.shutdown().await;

    let api = start_api(HttpOptions::new().bearer_token("s3cret")).await;
    let r = api
        .send(
            Method::GET,
            "/instances",
            &[
                ("host", "jobs.example.com"),
                ("authorization", "Bearer s3cret"),
            ],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    api.shutdown().await;
}

// ------------------------------------------------------------ inside an application

/// One request to a full URL with hyper's client.
async fn send_with(
    http: &HttpClient<HttpConnector, Full<Bytes>>,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Reply {
    let mut request = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let body = Full::new(Bytes::from(body.unwrap_or("").to_owned()));
    let response = http
        .request(request.body(body).unwrap())
        .await
        .expect("HTTP request");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("HTTP body")
        .to_bytes();
    Reply {
        status,
        headers,
        text: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

/// One request to a full URL, with a JSON body when there is one.
async fn request(method: Method, uri: &str, body: Option<&str>) -> Reply {
    let http = HttpClient::builder(TokioExecutor::new()).build_http();
    let headers: &[(&str, &str)] = if body.is_some() {
        &[("content-type", "application/json")]
    } else {
        &[]
    };
    send_with(&http, method, uri, headers, body).await
}

/// Serves `app` with axum on `listener` until the returned sender is used.
fn serve_on(
    listener: tokio::net::TcpListener,
    app: axum::Router,
) -> tokio::sync::oneshot::Sender<()> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    stop
}

/// Serves `app` with axum on a loopback port until the returned sender is used.
async fn serve_app(app: axum::Router) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    (base, serve_on(listener, app))
}

fn api_worker() -> Worker {
    Worker::builder()
        .store(MemoryStore::new())
        .register(greet)
        .register(hello)
        .start()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_merges_into_an_application_with_its_own_fallback_and_layers() {
    use axum::routing::get;
    let worker = api_worker();
    let app = axum::Router::new()
        .route("/health", get(|| async { "ok" }))
        .fallback(|| async { (StatusCode::IM_A_TEAPOT, "the application's own fallback") })
        // Merged into a router that has a fallback already (axum panics when both do).
        .merge(http::router(worker.client(), HttpOptions::new()))
        .layer(axum::middleware::from_fn(
            |request: axum::extract::Request, next: axum::middleware::Next| async move {
                let mut response = next.run(request).await;
                response
                    .headers_mut()
                    .insert("x-app", axum::http::HeaderValue::from_static("yes"));
                response
            },
        ));
    let (base, stop) = serve_app(app).await;

    let r = request(Method::GET, &format!("{base}/health"), None).await;
    assert_eq!((r.status, r.text.as_str()), (StatusCode::OK, "ok"));
    assert_eq!(r.header("x-app"), Some("yes"));
    // Outside the API's prefix, the application's fallback answers.
    let r = request(Method::GET, &format!("{base}/no/such/page"), None).await;
    assert_eq!(r.status, StatusCode::IM_A_TEAPOT);
    assert_eq!(r.text, "the application's own fallback");
    // The API works, under the application's layer.
    let r = request(
        Method::POST,
        &format!("{base}{PREFIX}/orchestrators/hello?timeout=20"),
        Some("\"app\""),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json(), "Hello app!");
    assert_eq!(r.header("x-app"), Some("yes"));
    // Unknown paths and methods under the prefix are still the API's JSON errors.
    request(Method::GET, &format!("{base}{PREFIX}/nothing/here"), None)
        .await
        .assert_error(StatusCode::NOT_FOUND, "NotFound");
    for bare in [PREFIX.to_owned(), format!("{PREFIX}/")] {
        request(Method::GET, &format!("{base}{bare}"), None)
            .await
            .assert_error(StatusCode::NOT_FOUND, "NotFound");
    }
    request(Method::PUT, &format!("{base}{PREFIX}/instances/x"), None)
        .await
        .assert_error(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed");
    // The dashboard comes along.
    let r = request(Method::GET, &format!("{base}/dashboard/"), None).await;
    assert_eq!(r.status, StatusCode::OK);
    stop.send(()).unwrap();
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_under_a_path_the_links_point_into_the_nest() {
    let worker = api_worker();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let options = HttpOptions::new().base_url(format!("{base}/ops"));
    let app = axum::Router::new().nest("/ops", http::router(worker.client(), options));
    let stop = serve_on(listener, app);
    let r = request(
        Method::POST,
        &format!("{base}/ops{PREFIX}/orchestrators/hello"),
        Some("\"nest\""),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let location = r.header("location").unwrap().to_owned();
    assert!(
        location.starts_with(&format!("{base}/ops{PREFIX}/instances/")),
        "{location}"
    );
    let status = r.json()["statusQueryGetUri"].as_str().unwrap().to_owned();
    assert_eq!(status.split('?').next(), Some(location.as_str()));
    // The link answers.
    let r = request(Method::GET, &location, None).await;
    assert!(
        r.status == StatusCode::OK || r.status == StatusCode::ACCEPTED,
        "{}",
        r.text
    );
    stop.send(()).unwrap();
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_uses_a_bound_listener_and_stops_when_told() {
    let worker = api_worker();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(http::serve_with(
        worker.client(),
        listener,
        HttpOptions::new(),
        async move {
            let _ = stopped.await;
        },
    ));
    let r = request(
        Method::POST,
        &format!("{base}{PREFIX}/orchestrators/hello?timeout=20"),
        Some("\"listener\""),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json(), "Hello listener!");
    // Served alone, every unknown path is a JSON 404.
    request(Method::GET, &format!("{base}/elsewhere"), None)
        .await
        .assert_error(StatusCode::NOT_FOUND, "NotFound");
    stop.send(()).unwrap();
    tokio::time::timeout(GUARD, server)
        .await
        .expect("stops when told")
        .unwrap()
        .expect("ends cleanly");
    // Stopped: the port no longer answers.
    let http: HttpClient<HttpConnector, Full<Bytes>> =
        HttpClient::builder(TokioExecutor::new()).build_http();
    let gone = http
        .request(
            Request::builder()
                .uri(format!("{base}/elsewhere"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert!(gone.is_err(), "still answering after shutdown");

    // A listener on every interface needs a token, as with `serve`.
    let open = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let err = http::serve_with(worker.client(), open, HttpOptions::new(), async {})
        .await
        .unwrap_err();
    assert!(matches!(err, ServeError::InsecureBind(_)), "{err}");
    worker.shutdown().await;
}
