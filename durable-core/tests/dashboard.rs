//! The dashboard over real HTTP (no browser): status codes, escaping, security headers,
//! auth, the confirm flow performing actions, filters and paging.
#![cfg(feature = "http")]

use std::future::Future;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use durable_core::http::{self, HttpOptions, HttpServer};
use durable_core::prelude::*;
use durable_core::{InstanceId, RuntimeStatus, StartOptions, Store};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

/// Longest a test waits for the engine before failing (a guard against hangs, not timing).
const GUARD: Duration = Duration::from_secs(20);
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

#[activity]
async fn greet(name: String) -> Result<String, ActivityError> {
    Ok(format!("Hello {name}!"))
}

#[orchestrator]
async fn hello(ctx: OrchestrationContext, name: String) -> Result<String, OrchestrationError> {
    Ok(ctx.call(greet, name).await?)
}

#[orchestrator]
async fn approval(ctx: OrchestrationContext, _input: String) -> Result<String, OrchestrationError> {
    ctx.set_custom_status(&"<b>waiting</b> \"for\" 'approve' ✓")?;
    let answer: String = ctx.wait_for_event("approve").await?;
    Ok(answer)
}

#[activity]
async fn decline(_order: u32) -> Result<(), ActivityError> {
    Err(ActivityError::new("card <declined>"))
}

#[orchestrator]
async fn pay(ctx: OrchestrationContext, order: u32) -> Result<(), OrchestrationError> {
    Ok(ctx.call(decline, order).await?)
}

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
}

struct Dash {
    worker: Worker,
    store: MemoryStore,
    _server: HttpServer,
    base: String,
    host: String,
    http: HttpClient<HttpConnector, Full<Bytes>>,
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }
}

async fn start(options: HttpOptions) -> Dash {
    let store = MemoryStore::new();
    let worker = Worker::builder()
        .store(store.clone())
        .register(greet)
        .register(hello)
        .register(approval)
        .register(decline)
        .register(pay)
        .register(Counter::entity())
        .start()
        .expect("worker starts");
    let server = http::serve(worker.client(), ([127, 0, 0, 1], 0).into(), options)
        .await
        .expect("serves on loopback");
    Dash {
        base: server.url(),
        host: server.local_addr().to_string(),
        worker,
        store,
        _server: server,
        http: HttpClient::builder(TokioExecutor::new()).build_http(),
    }
}

/// `application/x-www-form-urlencoded`, every byte but ASCII alphanumerics escaped.
fn form(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(n, v)| format!("{}={}", enc(n), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn enc(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

impl Dash {
    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Reply {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = self
            .http
            .request(
                request
                    .body(Full::new(Bytes::from(body.to_owned())))
                    .unwrap(),
            )
            .await
            .expect("HTTP request");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers,
            text: String::from_utf8(bytes.to_vec()).unwrap(),
        }
    }

    async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, &[], "").await
    }

    /// A same-origin form POST, as the dashboard's own pages send it.
    async fn post_form(&self, path: &str, fields: &[(&str, &str)]) -> Reply {
        let origin = format!("http://{}", self.host);
        self.send(
            Method::POST,
            path,
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("origin", &origin),
            ],
            &form(fields),
        )
        .await
    }

    /// Submits an action form, checks the confirmation page, confirms, and returns the
    /// redirect.
    async fn confirm(&self, path: &str, fields: &[(&str, &str)]) -> Reply {
        let page = self.post_form(path, fields).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
        assert!(page.text.contains("id=\"confirm\""), "{}", page.text);
        assert!(page.text.contains("id=\"confirm-yes\""));
        assert!(page.text.contains("id=\"confirm-no\""));
        let mut confirmed = fields.to_vec();
        confirmed.push(("confirm", "yes"));
        let r = self.post_form(path, &confirmed).await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
        r
    }

    async fn status(&self, id: &str) -> Option<RuntimeStatus> {
        let id = InstanceId::new(id).ok()?;
        self.worker
            .client()
            .status(&id)
            .await
            .ok()
            .map(|r| r.status)
    }

    /// Waits (woken by store changes) until `check` holds.
    async fn until<F, Fut>(&self, what: &str, check: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = bool>,
    {
        let mut changes = self.store.signals().changed.subscribe();
        let wait = async {
            loop {
                changes.borrow_and_update();
                if check().await {
                    return;
                }
                changes.changed().await.expect("store alive");
            }
        };
        tokio::time::timeout(GUARD, wait)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
    }

    async fn start_named(&self, name: &str, id: &str, input: &str) {
        self.worker
            .client()
            .start_raw(
                name,
                input,
                StartOptions::new().instance_id(InstanceId::new(id).unwrap()),
            )
            .await
            .expect("starts");
    }
}

fn rows(page: &str) -> usize {
    page.matches("data-instance-id=").count()
}

/// The number inside `[data-status="<status>"] .count`.
fn count(page: &str, status: &str) -> usize {
    let at = page
        .find(&format!("data-status=\"{status}\""))
        .expect("count shown");
    let rest = &page[at..];
    let start = rest.find("class=\"count\">").unwrap() + "class=\"count\">".len();
    rest[start..start + rest[start..].find('<').unwrap()]
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_counts_and_pages() {
    let d = start(HttpOptions::new()).await;
    for i in 0..3 {
        d.start_named("hello", &format!("done-{i}"), "\"Ada\"")
            .await;
    }
    for i in 0..2 {
        d.start_named("approval", &format!("wait-{i}"), "\"x\"")
            .await;
    }
    d.until("hellos done and approvals running", || async {
        let mut ok = true;
        for i in 0..3 {
            ok &= d.status(&format!("done-{i}")).await == Some(RuntimeStatus::Completed);
        }
        for i in 0..2 {
            ok &= d.status(&format!("wait-{i}")).await == Some(RuntimeStatus::Running);
        }
        ok
    })
    .await;

    let all = d.get("/dashboard/").await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.text);
    assert_eq!(all.header("content-security-policy"), CSP);
    assert_eq!(all.header("x-content-type-options"), "nosniff");
    assert_eq!(rows(&all.text), 5);
    assert_eq!(count(&all.text, "Completed"), 3);
    assert_eq!(count(&all.text, "Running"), 2);
    assert_eq!(count(&all.text, "Failed"), 0);
    assert!(all.text.contains("id=\"filters\""));
    assert!(all.text.contains("id=\"auto-refresh\""));
    assert!(!all.text.contains("id=\"next-page\""));
    // No inline script or style anywhere (the CSP would block them).
    assert!(!all.text.contains("style="));
    assert!(!all.text.contains("<script>"));

    let running = d.get("/dashboard/?status=Running").await;
    assert_eq!(rows(&running.text), 2, "{}", running.text);
    assert!(running.text.contains("data-instance-id=\"wait-0\""));
    // Counts cover the other filters, not the status selection.
    assert_eq!(count(&running.text, "Completed"), 3);
    let two = d.get("/dashboard/?status=Running&status=Completed").await;
    assert_eq!(rows(&two.text), 5);
    assert_eq!(rows(&d.get("/dashboard/?name=hello").await.text), 3);
    let prefixed = d.get("/dashboard/?prefix=done-1").await;
    assert_eq!(rows(&prefixed.text), 1);
    assert_eq!(count(&prefixed.text, "Completed"), 1);
    // Each count links to the list narrowed to its status, keeping the other filters.
    assert!(all.text.contains("href=\"/dashboard/?status=Running\""));
    assert!(
        prefixed
            .text
            .contains("href=\"/dashboard/?status=Completed&amp;prefix=done-1\""),
        "{}",
        prefixed.text
    );
    assert_eq!(
        rows(&d.get("/dashboard/?from=2999-01-01T00:00").await.text),
        0
    );
    assert_eq!(
        rows(&d.get("/dashboard/?to=2999-01-01T00:00").await.text),
        5
    );

    // Bad input is a 400 page, not a 500.
    for bad in [
        "?status=Sleeping",
        "?from=yesterday",
        "?from=99999999999999-01-01T00:00",
        "?page=zz",
    ] {
        let r = d.get(&format!("/dashboard/{bad}")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.text);
        assert!(r.header("content-type").starts_with("text/html"));
        assert_eq!(r.header("content-security-policy"), CSP);
    }

    // Paging: 50 a page; the link carries the filters and the token.
    for i in 0..60 {
        d.start_named("approval", &format!("page-{i:02}"), "\"x\"")
            .await;
    }
    let first = d.get("/dashboard/?prefix=page-").await;
    assert_eq!(rows(&first.text), 50);
    let marker = "id=\"next-page\" href=\"";
    let at = first.text.find(marker).expect("next link") + marker.len();
    let next = first.text[at..at + first.text[at..].find('"').unwrap()].replace("&amp;", "&");
    assert!(next.contains("prefix=page-"), "{next}");
    let second = d.get(&next).await;
    assert_eq!(rows(&second.text), 10, "{}", second.text);
    // Newest first: the last started lead, the first started close the second page.
    let pos = |text: &str, id: &str| text.find(&format!("data-instance-id=\"{id}\"")).unwrap();
    assert!(pos(&first.text, "page-59") < pos(&first.text, "page-10"));
    assert!(second.text.contains("data-instance-id=\"page-00\""));
    assert!(!second.text.contains("id=\"next-page\""));
}

/// A failure from a task shows the task's own failure under it (escaped), the failed bar,
/// and rewind among the actions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_instance_shows_its_failure_chain() {
    let d = start(HttpOptions::new()).await;
    d.start_named("pay", "p1", "7").await;
    d.until("p1 fails", || async {
        d.status("p1").await == Some(RuntimeStatus::Failed)
    })
    .await;
    let r = d.get("/dashboard/instances/p1").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    for needle in [
        "id=\"failure\"",
        "TaskFailed",
        "inner: ",
        "card &lt;declined&gt;",
        "data-name=\"decline\"",
        "data-action=\"rewind\"",
    ] {
        assert!(r.text.contains(needle), "{needle} missing: {}", r.text);
    }
    assert!(!r.text.contains("<declined>"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_page_shows_fields_timeline_and_history() {
    let d = start(HttpOptions::new()).await;
    d.start_named("hello", "h1", "\"Ada\"").await;
    d.until("h1 completes", || async {
        d.status("h1").await == Some(RuntimeStatus::Completed)
    })
    .await;
    let r = d.get("/dashboard/instances/h1").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.header("content-security-policy"), CSP);
    for needle in [
        "id=\"status\"",
        ">Completed<",
        "id=\"name\"",
        ">hello<",
        "id=\"history-json\"",
        "TaskScheduled",
        "Hello Ada!",
        "data-kind=\"activity\"",
        "data-name=\"greet\"",
        "data-attempt=\"1\"",
        "data-action=\"restart\"",
        "data-action=\"purge\"",
    ] {
        assert!(r.text.contains(needle), "{needle} missing: {}", r.text);
    }
    // Only the actions a completed instance allows are offered.
    for absent in ["raise-event", "terminate", "suspend", "resume", "rewind"] {
        assert!(
            !r.text.contains(&format!("data-action=\"{absent}\"")),
            "{absent} offered"
        );
    }
    let missing = d.get("/dashboard/instances/nope").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.header("content-type").starts_with("text/html"));
    assert_eq!(
        d.get("/dashboard/no/such/page").await.status,
        StatusCode::NOT_FOUND
    );
    let js = d.get("/dashboard/app.js").await;
    assert_eq!(js.status, StatusCode::OK);
    assert!(js.header("content-type").starts_with("text/javascript"));
    assert_eq!(d.get("/dashboard/app.css").await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_actions_change_the_instance_and_report_the_result() {
    let d = start(HttpOptions::new()).await;
    d.start_named("approval", "a1", "\"x\"").await;
    d.start_named("approval", "a2", "\"x\"").await;
    d.until("both running", || async {
        d.status("a1").await == Some(RuntimeStatus::Running)
            && d.status("a2").await == Some(RuntimeStatus::Running)
    })
    .await;

    // Submitting only asks; nothing happens before the confirmation.
    let ask = d
        .post_form(
            "/dashboard/instances/a1/actions/terminate",
            &[("reason", "r")],
        )
        .await;
    assert_eq!(ask.status, StatusCode::OK);
    assert!(ask.text.contains("instance a1"), "{}", ask.text);
    assert_eq!(d.status("a1").await, Some(RuntimeStatus::Running));

    // Raise the awaited event: the instance completes with the data.
    let r = d
        .confirm(
            "/dashboard/instances/a1/actions/raise-event",
            &[("event", "approve"), ("data", "\"yes\"")],
        )
        .await;
    assert!(
        r.header("location")
            .starts_with("/dashboard/instances/a1?flash=ok"),
        "{:?}",
        r.headers
    );
    d.until("a1 completes", || async {
        d.status("a1").await == Some(RuntimeStatus::Completed)
    })
    .await;
    let page = d.get(r.header("location")).await;
    assert!(
        page.text.contains("id=\"flash\" class=\"ok\""),
        "{}",
        page.text
    );

    // A refused action says why (same rule as the API: resume needs a suspended instance).
    let r = d
        .confirm("/dashboard/instances/a2/actions/resume", &[("reason", "")])
        .await;
    assert!(
        r.header("location").contains("flash=error"),
        "{:?}",
        r.headers
    );
    let page = d.get(r.header("location")).await;
    assert!(page.text.contains("id=\"flash\" class=\"error\""));

    // Event data that is not JSON is refused before anything is sent.
    let r = d
        .post_form(
            "/dashboard/instances/a2/actions/raise-event",
            &[("event", "approve"), ("data", "{not json")],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(r.header("location").contains("flash=error"));

    // Terminate, then purge.
    d.confirm(
        "/dashboard/instances/a2/actions/terminate",
        &[("reason", "enough")],
    )
    .await;
    d.until("a2 terminated", || async {
        d.status("a2").await == Some(RuntimeStatus::Terminated)
    })
    .await;
    let r = d
        .confirm("/dashboard/instances/a2/actions/purge", &[])
        .await;
    assert!(
        r.header("location").starts_with("/dashboard/?flash=ok"),
        "{:?}",
        r.headers
    );
    assert_eq!(d.status("a2").await, None);
    assert_eq!(
        d.get("/dashboard/instances/a2").await.status,
        StatusCode::NOT_FOUND
    );

    // Unknown actions are a 404 page.
    let r = d
        .post_form("/dashboard/instances/a1/actions/explode", &[])
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_posts_are_refused() {
    let d = start(HttpOptions::new()).await;
    d.start_named("approval", "x1", "\"x\"").await;
    let body = form(&[("reason", "r"), ("confirm", "yes")]);
    let path = "/dashboard/instances/x1/actions/terminate";
    let ct = ("content-type", "application/x-www-form-urlencoded");
    for headers in [
        vec![ct],
        vec![ct, ("origin", "http://evil.example")],
        vec![ct, ("sec-fetch-site", "cross-site")],
    ] {
        let r = d.send(Method::POST, path, &headers, &body).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{headers:?}");
        assert_eq!(r.header("content-security-policy"), CSP);
    }
    assert_ne!(d.status("x1").await, Some(RuntimeStatus::Terminated));
    let r = d
        .send(
            Method::POST,
            path,
            &[ct, ("sec-fetch-site", "same-origin")],
            &body,
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
}

/// Without a token only requests addressed to a loopback name are answered: a page that
/// points a name of its own at 127.0.0.1 (DNS rebinding) can neither read nor act, even
/// with a same-origin POST. The stylesheet stays public.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_only_loopback_names_are_answered() {
    let d = start(HttpOptions::new()).await;
    d.start_named("approval", "x1", "\"x\"").await;
    for host in [
        "evil.example:7071",
        "evil.example",
        "10.0.0.7:7071",
        "127.0.0.1.evil.example",
    ] {
        let r = d
            .send(Method::GET, "/dashboard/", &[("host", host)], "")
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{host}");
        assert!(r.text.contains("bearer token"), "{}", r.text);
        let origin = format!("http://{host}");
        let r = d
            .send(
                Method::POST,
                "/dashboard/instances/x1/actions/terminate",
                &[
                    ("host", host),
                    ("origin", origin.as_str()),
                    ("sec-fetch-site", "same-origin"),
                    ("content-type", "application/x-www-form-urlencoded"),
                ],
                &form(&[("reason", "r"), ("confirm", "yes")]),
            )
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{host}");
    }
    assert_ne!(d.status("x1").await, Some(RuntimeStatus::Terminated));
    for host in [
        "localhost:7071",
        "127.0.0.1",
        "127.0.0.2:80",
        "[::1]:7071",
        "LOCALHOST",
    ] {
        let r = d
            .send(Method::GET, "/dashboard/", &[("host", host)], "")
            .await;
        assert_eq!(r.status, StatusCode::OK, "{host}");
    }
    let css = d
        .send(
            Method::GET,
            "/dashboard/app.css",
            &[("host", "evil.example")],
            "",
        )
        .await;
    assert_eq!(css.status, StatusCode::OK);
}

/// The host of `HttpOptions::base_url` is this machine's name too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_base_url_host_is_answered_without_a_token() {
    let d = start(HttpOptions::new().base_url("https://jobs.example.com:8443/")).await;
    let r = d
        .send(
            Method::GET,
            "/dashboard/",
            &[("host", "jobs.example.com")],
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = d
        .send(
            Method::GET,
            "/dashboard/",
            &[("host", "other.example.com")],
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_asked_for_and_kept_in_a_cookie() {
    let d = start(HttpOptions::new().bearer_token("s3cret")).await;
    let r = d.get("/dashboard/?status=Running").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.text.contains("id=\"login\"") && r.text.contains("name=\"code\""));
    assert_eq!(r.header("content-security-policy"), CSP);
    assert_eq!(
        d.get("/dashboard/?code=wrong").await.status,
        StatusCode::UNAUTHORIZED
    );

    let r = d.get("/dashboard/?status=Running&code=s3cret").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.header("location"), "/dashboard/?status=Running");
    let cookie = r.header("set-cookie");
    for part in [
        "durable_token=",
        "HttpOnly",
        "SameSite=Strict",
        "Path=/dashboard",
    ] {
        assert!(cookie.contains(part), "{cookie}");
    }
    assert!(!cookie.contains("s3cret"), "{cookie}");
    let pair = cookie.split(';').next().unwrap();
    let ok = d
        .send(Method::GET, "/dashboard/", &[("cookie", pair)], "")
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    let bad = d
        .send(
            Method::GET,
            "/dashboard/",
            &[("cookie", "durable_token=00")],
            "",
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    let bearer = d
        .send(
            Method::GET,
            "/dashboard/",
            &[("authorization", "Bearer s3cret")],
            "",
        )
        .await;
    assert_eq!(bearer.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_ids_and_payloads_are_escaped() {
    let d = start(HttpOptions::new()).await;
    let id = "<img src=x onerror=alert(1)>\"'&ü✓";
    d.start_named("approval", id, "\"<script>alert('input')</script>\"")
        .await;
    d.until("hostile instance running", || async {
        d.status(id).await == Some(RuntimeStatus::Running)
    })
    .await;
    let list = d.get("/dashboard/").await;
    let page = d.get(&format!("/dashboard/instances/{}", enc(id))).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    let ask = d
        .post_form(
            &format!("/dashboard/instances/{}/actions/terminate", enc(id)),
            &[("reason", "</textarea><script>alert('reason')</script>")],
        )
        .await;
    for text in [&list.text, &page.text, &ask.text] {
        assert!(!text.contains("<img"), "{text}");
        assert!(!text.contains("<script>alert"), "{text}");
        assert!(!text.contains("<b>waiting"), "{text}");
    }
    assert!(
        list.text
            .contains("&lt;img src=x onerror=alert(1)&gt;&quot;'&amp;ü✓"),
        "{}",
        list.text
    );
    assert!(
        page.text
            .contains("&lt;script&gt;alert('input')&lt;/script&gt;")
    );
    assert!(page.text.contains("&lt;b&gt;waiting&lt;/b&gt;"));
    assert!(ask.text.contains("&lt;/textarea&gt;&lt;script&gt;"));
    // The confirmation round-trips the hostile values and performs the action.
    d.confirm(
        &format!("/dashboard/instances/{}/actions/terminate", enc(id)),
        &[("reason", "</textarea><script>alert('reason')</script>")],
    )
    .await;
    d.until("hostile instance terminated", || async {
        d.status(id).await == Some(RuntimeStatus::Terminated)
    })
    .await;
    let done = d.get(&format!("/dashboard/instances/{}", enc(id))).await;
    assert!(!done.text.contains("<script>alert"), "{}", done.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entities_are_listed_shown_and_signalled() {
    let d = start(HttpOptions::new()).await;
    let r = d
        .confirm(
            "/dashboard/entities/counter/cats/actions/signal",
            &[("operation", "add"), ("input", "5")],
        )
        .await;
    assert!(
        r.header("location")
            .starts_with("/dashboard/entities/counter/cats?flash=ok"),
        "{:?}",
        r.headers
    );
    let client = d.worker.client();
    d.until("the counter has 5", || async {
        client
            .read_entity::<Counter>("cats")
            .await
            .ok()
            .flatten()
            .is_some_and(|c| c.value == 5)
    })
    .await;
    let list = d.get("/dashboard/entities?name=counter").await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    assert!(
        list.text.contains("data-entity-id=\"@counter@cats\""),
        "{}",
        list.text
    );
    assert!(list.text.contains("class=\"entity-link\""));
    let page = d.get("/dashboard/entities/counter/cats").await;
    assert!(page.text.contains("id=\"state\""));
    assert!(page.text.contains("&quot;value&quot;: 5"), "{}", page.text);
    assert_eq!(
        d.get("/dashboard/entities/nosuchentity/k").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_instances_are_marked_with_their_reason() {
    let d = start(HttpOptions::new()).await;
    // A client without the worker's registry can start a name the worker does not know.
    let bare = durable_core::Client::new(std::sync::Arc::new(d.store.clone()));
    bare.start_raw(
        "ghost",
        "null",
        StartOptions::new().instance_id(InstanceId::new("stuck-1").unwrap()),
    )
    .await
    .unwrap();
    d.start_named("approval", "fine-1", "\"x\"").await;
    let client = d.worker.client();
    d.until("the ghost is stuck", || async {
        client
            .status(&InstanceId::new("stuck-1").unwrap())
            .await
            .is_ok_and(|r| r.last_error.is_some())
    })
    .await;
    let list = d.get("/dashboard/").await;
    let row = |id: &str| {
        let at = list
            .text
            .find(&format!("data-instance-id=\"{id}\""))
            .unwrap();
        let tag_start = list.text[..at].rfind("<tr").unwrap();
        let end = at + list.text[at..].find("</tr>").unwrap();
        list.text[tag_start..end].to_owned()
    };
    let stuck = row("stuck-1");
    assert!(stuck.contains("class=\"stuck\""), "{stuck}");
    assert!(stuck.contains("class=\"stuck-reason\""), "{stuck}");
    assert!(stuck.contains("ghost"), "{stuck}");
    assert!(!row("fine-1").contains("stuck"));
    let page = d.get("/dashboard/instances/stuck-1").await;
    assert!(page.text.contains("id=\"failure\""), "{}", page.text);
}
