//! Durable HTTP calls answered by the harness instead of the network (feature
//! `http-calls`): scripted 202 polling on the virtual clock, statuses under a retry policy,
//! failing mocks, pass-through to a real server, and the request log.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use durable_core::http_call::{DurableHttpRequest, DurableHttpResponse};
use durable_core::prelude::*;
use durable_testing::{HttpScript, MockHttp, TestEnv, TestEnvBuilder};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECOND: Duration = Duration::from_secs(1);
const API: &str = "https://api.example.com";

/// What the test orchestration sends.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Plan {
    method: String,
    uri: String,
    body: Option<String>,
    retry_attempts: Option<u32>,
    max_response_bytes: Option<u64>,
}

impl Plan {
    fn new(method: &str, uri: impl Into<String>) -> Self {
        Self {
            method: method.to_owned(),
            uri: uri.into(),
            ..Self::default()
        }
    }

    fn request(&self) -> DurableHttpRequest {
        let mut r = DurableHttpRequest::new(&self.method, self.uri.clone())
            .header("x-request-id", "r-1")
            .token_source("api")
            .secret_header("x-api-key", "partner")
            .poll_interval(SECOND * 10);
        if let Some(body) = &self.body {
            r = r.json(&body);
        }
        if let Some(n) = self.retry_attempts {
            r = r.retry(RetryPolicy::new(n, SECOND * 5).backoff_coefficient(2.0));
        }
        if let Some(limit) = self.max_response_bytes {
            r = r.max_response_bytes(limit);
        }
        r
    }
}

/// What the orchestration saw: status and body, or the failure's type and message; and the
/// virtual time the call took.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Outcome {
    answer: Result<(u16, String), (String, String)>,
    elapsed: Duration,
}

/// The token sources the plans name (`api`, `partner`).
fn with_tokens(builder: TestEnvBuilder) -> TestEnvBuilder {
    builder
        .http_token_source("api", || async {
            Ok::<_, ActivityError>("t0ken".to_owned())
        })
        .http_token_source("partner", || async {
            Ok::<_, ActivityError>("k3y".to_owned())
        })
}

/// Runs `plan` through `http_flow` on `env` to its end.
async fn outcome(env: &TestEnv, plan: Plan) -> Outcome {
    let run = env.start(http_flow, plan).await.unwrap();
    env.wait(&run).await.unwrap()
}

#[orchestrator]
async fn http_flow(ctx: OrchestrationContext, plan: Plan) -> Result<Outcome, OrchestrationError> {
    let started = ctx.now();
    let answer = match ctx.call_http(plan.request()).await {
        Ok(r) => Ok((r.status, r.text().into_owned())),
        Err(TaskError::Failed(f)) => Err((f.details.error_type.clone(), f.details.message.clone())),
        Err(other) => return Err(OrchestrationError::new(other.to_string())),
    };
    Ok(Outcome {
        answer,
        elapsed: ctx.now().saturating_duration_since(started),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_202_three_times_then_200_is_polled_on_the_virtual_clock() {
    let status = format!("{API}/jobs/7/status");
    let script = HttpScript::new()
        // Relative, resolved against the URI that answered.
        .on(
            "POST",
            format!("{API}/jobs"),
            MockHttp::accepted("jobs/7/status"),
        )
        .on(
            "GET",
            &status,
            DurableHttpResponse::new(202)
                .with_header("Location", &status)
                .with_header("Retry-After", "45"),
        )
        .on("GET", &status, MockHttp::accepted(&status))
        .on(
            "GET",
            &status,
            DurableHttpResponse::new(200).with_body("report ready"),
        );
    let env = TestEnv::builder()
        .register(http_flow)
        .http_script(script)
        .start()
        .unwrap();
    let t0 = env.now();
    let mut plan = Plan::new("post", format!("{API}/jobs"));
    plan.body = Some("make the report".into());
    let run = env.start(http_flow, plan).await.unwrap();
    let out = env.wait(&run).await.unwrap();

    assert_eq!(out.answer, Ok((200, "report ready".to_owned())));
    // Poll interval 10 s, then the Retry-After of 45 s, then 10 s again.
    assert_eq!(out.elapsed, SECOND * 65);
    assert_eq!(env.now(), t0 + SECOND * 65);
    assert_eq!(env.history(run.id()).await.timers().len(), 3);

    let sent = env.http_requests();
    let seen: Vec<(&str, &str)> = sent
        .iter()
        .map(|c| (c.request.method(), c.request.uri()))
        .collect();
    assert_eq!(
        seen,
        [
            ("POST", format!("{API}/jobs").as_str()),
            ("GET", status.as_str()),
            ("GET", status.as_str()),
            ("GET", status.as_str()),
        ]
    );
    assert!(sent.iter().all(|c| c.mocked && &c.instance_id == run.id()));
    let first = &sent[0].request;
    assert_eq!(first.text(), "\"make the report\"");
    assert_eq!(first.header("content-type"), Some("application/json"));
    assert_eq!(first.header("x-request-id"), Some("r-1"));
    // Secrets by source name only; no token source is registered, none is asked.
    assert_eq!(first.token_source(), Some("api"));
    assert_eq!(first.secret_headers()["x-api-key"], "partner");
    assert!(first.header("authorization").is_none());
    for poll in &sent[1..] {
        assert!(poll.request.body().is_empty());
        assert_eq!(poll.request.header("content-type"), None);
        assert_eq!(poll.request.header("x-request-id"), Some("r-1"));
        assert_eq!(poll.request.token_source(), Some("api"));
    }
    let seqs: Vec<u64> = sent.iter().map(|c| c.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mocked_503_is_retried_under_the_policy_on_durable_timers() {
    let answered = Arc::new(AtomicU32::new(0));
    let count = Arc::clone(&answered);
    let env = TestEnv::builder()
        .register(http_flow)
        .mock_http(move |_| match count.fetch_add(1, Ordering::SeqCst) {
            0 | 1 => DurableHttpResponse::new(503).with_body("busy").into(),
            _ => DurableHttpResponse::new(200).with_body("rates").into(),
        })
        .start()
        .unwrap();
    let mut plan = Plan::new("GET", format!("{API}/rates"));
    plan.retry_attempts = Some(4);
    let run = env.start(http_flow, plan).await.unwrap();
    let out = env.wait(&run).await.unwrap();
    assert_eq!(out.answer, Ok((200, "rates".to_owned())));
    // Back-offs of 5 s and 10 s (coefficient 2).
    assert_eq!(out.elapsed, SECOND * 15);
    assert_eq!(env.http_requests().len(), 3);
    let history = env.history(run.id()).await;
    assert_eq!(history.count("TaskFailed"), 2);
    assert_eq!(history.count("TaskCompleted"), 1);

    // Without a policy a 503 is an answer; with one that gives up, the call fails.
    let busy = TestEnv::builder()
        .register(http_flow)
        .mock_http(|_| MockHttp::status(503))
        .start()
        .unwrap();
    assert_eq!(
        outcome(&busy, Plan::new("GET", format!("{API}/rates")))
            .await
            .answer,
        Ok((503, String::new()))
    );
    assert_eq!(busy.http_requests().len(), 1);
    let mut plan = Plan::new("GET", format!("{API}/rates"));
    plan.retry_attempts = Some(3);
    let run = busy.start(http_flow, plan).await.unwrap();
    let out = busy.wait(&run).await.unwrap();
    let (error_type, message) = out.answer.unwrap_err();
    assert_eq!(error_type, "HttpRetriableStatus");
    assert!(message.contains("503 Service Unavailable"), "{message}");
    assert_eq!(out.elapsed, SECOND * 15);
    assert_eq!(busy.http_requests().len(), 1 + 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_mock_fails_the_call_and_retriable_failures_are_retried() {
    let env = TestEnv::builder()
        .register(http_flow)
        .mock_http(|request| {
            if request.uri().ends_with("/denied") {
                MockHttp::fail(ActivityError::non_retriable("certificate rejected"))
            } else {
                MockHttp::transport_error("connection refused")
            }
        })
        .start()
        .unwrap();
    let mut plan = Plan::new("GET", format!("{API}/denied"));
    plan.retry_attempts = Some(5);
    let run = env.start(http_flow, plan).await.unwrap();
    let out = env.wait(&run).await.unwrap();
    let (_, message) = out.answer.unwrap_err();
    assert!(message.contains("certificate rejected"), "{message}");
    assert_eq!(out.elapsed, Duration::ZERO, "non-retriable: no back-off");
    assert_eq!(env.http_requests().len(), 1);

    let mut plan = Plan::new("GET", format!("{API}/down"));
    plan.retry_attempts = Some(2);
    let run = env.start(http_flow, plan).await.unwrap();
    let out = env.wait(&run).await.unwrap();
    assert_eq!(
        out.answer,
        Err((
            "HttpTransportError".to_owned(),
            "connection refused".to_owned()
        ))
    );
    assert_eq!(out.elapsed, SECOND * 5);
    assert_eq!(env.http_requests().len(), 1 + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_fail_unscripted_requests_and_mocks_keep_the_response_limit() {
    let env = TestEnv::builder()
        .register(http_flow)
        .http_script(HttpScript::new().on(
            "GET",
            format!("{API}/big"),
            DurableHttpResponse::new(200).with_body("0123456789"),
        ))
        .start()
        .unwrap();
    let run = env
        .start(http_flow, Plan::new("GET", format!("{API}/elsewhere")))
        .await
        .unwrap();
    let (error_type, message) = env.wait(&run).await.unwrap().answer.unwrap_err();
    assert_eq!(error_type, "UnmockedHttpRequest");
    assert!(
        message.contains("GET https://api.example.com/elsewhere"),
        "{message}"
    );

    let mut plan = Plan::new("GET", format!("{API}/big"));
    plan.max_response_bytes = Some(8);
    plan.retry_attempts = Some(3);
    let run = env.start(http_flow, plan).await.unwrap();
    let (error_type, _) = env.wait(&run).await.unwrap().answer.unwrap_err();
    assert_eq!(error_type, "HttpResponseTooLarge");
    assert_eq!(env.http_requests().len(), 2, "too large is not retried");
}

/// Serves one fixed HTTP/1.1 answer on a loopback port, to every connection; returns its
/// base URI.
async fn tiny_server(body: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0_u8; 4096];
                let mut read = 0;
                while !buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf[read..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => read += n,
                    }
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    base
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_pass_through_to_the_network_and_real_ones_are_listed_too() {
    let base = tiny_server("from the network").await;
    let script = HttpScript::new()
        .on("GET", format!("{API}/mocked"), MockHttp::status(204))
        .otherwise(MockHttp::pass_through());
    let env = with_tokens(TestEnv::builder())
        .register(http_flow)
        .http_script(script)
        .start()
        .unwrap();
    assert_eq!(
        outcome(&env, Plan::new("GET", format!("{base}/real")))
            .await
            .answer,
        Ok((200, "from the network".to_owned()))
    );
    assert_eq!(
        outcome(&env, Plan::new("GET", format!("{API}/mocked")))
            .await
            .answer,
        Ok((204, String::new()))
    );

    // No mock: the built-in activity sends it, and the harness still lists it.
    let plain = with_tokens(TestEnv::builder())
        .register(http_flow)
        .start()
        .unwrap();
    assert_eq!(
        outcome(&plain, Plan::new("GET", format!("{base}/real")))
            .await
            .answer,
        Ok((200, "from the network".to_owned()))
    );
    let sent = plain.http_requests();
    assert_eq!(sent.len(), 1);
    assert!(!sent[0].mocked);
    assert_eq!(sent[0].request.uri(), format!("{base}/real"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mocks_and_pass_through_survive_worker_crashes() {
    let base = tiny_server("done").await;
    let poll = format!("{base}/jobs/1");
    let location = poll.clone();
    // Stateless: a re-run after a crash gets the same answer.
    let env = with_tokens(TestEnv::builder())
        .register(http_flow)
        .mock_http(move |request| match request.method() {
            "POST" => MockHttp::accepted(&location),
            _ => MockHttp::pass_through(),
        })
        .crash_after_commits([2, 4])
        .start()
        .unwrap();
    let out = outcome(&env, Plan::new("POST", format!("{API}/jobs"))).await;
    assert_eq!(out.answer, Ok((200, "done".to_owned())));
    assert_eq!(env.crashes(), 2);
    let sent = env.http_requests();
    assert_eq!(sent.last().map(|c| c.request.uri()), Some(poll.as_str()));
    assert!(sent.len() >= 2, "{sent:?}");
}
