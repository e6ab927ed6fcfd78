//! The Durable Functions-compatible HTTP management API (feature `http`, on axum).
//!
//! [`router`] mounts the webhook API of Azure Durable Functions under
//! `/runtime/webhooks/durabletask/`, with the same paths, query parameters, status codes,
//! headers and JSON field names, so existing Durable Functions clients, Logic Apps-style
//! 202 polling and curl recipes work unchanged:
//!
//! | Method & path (after the prefix) | Success | Errors |
//! |---|---|---|
//! | `POST /orchestrators/{name}[/{instanceId}]` (body: JSON input; `version`, `timeout` + `pollingInterval` in seconds) | 202 + check-status payload, or 200 with the output when it finished within `timeout` | 400, 409 (id of a running instance), 413 |
//! | `GET /instances/{id}` (`showHistory`, `showHistoryOutput`, `showInput`, `returnInternalServerErrorOnFailure`) | 202 + `Location` + `Retry-After` while pending/running/suspended, 200 when finished (500 for Failed on request) | 400, 404 |
//! | `GET /instances` (`createdTimeFrom`, `createdTimeTo`, `runtimeStatus`, `instanceIdPrefix`, `showInput`, `top`; `x-ms-continuation-token` header both ways) | 200 JSON array | 400 |
//! | `DELETE /instances/{id}` | 200 `{"instancesDeleted": n}` | 404, 412 (still running) |
//! | `DELETE /instances` (`createdTimeFrom` required, `createdTimeTo`, `runtimeStatus`) | 200 `{"instancesDeleted": n}` | 400, 404 (nothing matched) |
//! | `POST /instances/{id}/raiseEvent/{event}` (body: JSON data; `raiseEvent` in any casing; event names match case-insensitively) | 202 | 400 (empty event name), 404, 410 (finished) |
//! | `POST /instances/{id}/terminate`, `/suspend`, `/resume` (`reason`) | 202 | 400 (suspend of a suspended instance, resume of one that is not suspended), 404, 410 |
//! | `POST /instances/{id}/restart` (`restartWithNewInstanceId`, default true) | 202 + check-status payload of the new run | 400 (unknown id), 409 |
//! | `POST /instances/{id}/rewind` (`reason`) | 202; the failed instance resumes at its point of failure ([`crate::Client::rewind`]) | 400 (not failed, or not rewindable), 404, 410 (completed or terminated) |
//! | `POST /entities/{name}/{key}?op=..` (body: JSON input; `DELETE` sends `delete`) | 202 | 400, 404 (unknown entity name) |
//! | `GET /entities/{name}/{key}` | 200 with the state | 404 |
//! | `GET /entities[/{name}]` (`fetchState`, `lastOperationTimeFrom`, `lastOperationTimeTo`, `top`; continuation header) | 200 JSON array | 400 |
//!
//! Choices where Durable Functions is ambiguous or has no equivalent:
//! - A Failed instance answers 200 with `runtimeStatus: "Failed"` and the failure details
//!   (`errorType`, `errorMessage`, `causes`, `isNonRetriable`) in `output`; 500 only with
//!   `returnInternalServerErrorOnFailure=true`.
//! - `showInput` defaults to true, as in Durable Functions. The check-status payload does
//!   not carry `rewindPostUri` (Durable Functions does not emit it either).
//! - Every error answers with a JSON body `{"error": "<Code>", "message": "<text>",
//!   "Message": "<text>", "ExceptionMessage": "<text>"}`: the last two are the keys of
//!   ASP.NET's error bodies that Durable Functions clients read (the Python client's
//!   `start_new` raises `ExceptionMessage` on a 400). Malformed input (bad JSON, bad
//!   instance ids, unparsable query values, an unknown orchestrator name) is a 400, never
//!   a 500; bodies over the payload limit are a 413. With [`serve`], requests hyper
//!   refuses before routing carry the same body: 400 `MalformedRequest` (a malformed
//!   request line or header), 414 `UriTooLong` (a URI over 65,534 bytes), 431
//!   `RequestHeadersTooLarge` (over 100 header fields, or a request head over hyper's
//!   read buffer). A header-read timeout closes the connection without an answer.
//! - Inputs, event data and entity operation inputs may come double-encoded, as Durable
//!   Functions clients send them: the body is a JSON string holding the JSON of the value
//!   (`"[\"Tokyo\"]"`, `"5"`). A body that is a JSON string holding a JSON string
//!   (`"\"World\""`) is taken as that inner string here. Everything else is stored as
//!   sent and decoded when its type is known — at start (orchestration input, checked
//!   against the registry), when the orchestration receives an event, when the entity
//!   runs the operation — by one rule: the payload is decoded as the expected type; only
//!   if that fails and it is a JSON string whose content decodes as that type, the
//!   content is used. A payload that decodes as it is is never reinterpreted, so typed
//!   callers are unaffected; statuses and histories show payloads as they were sent.
//! - Query parameter names are matched case-insensitively and booleans accept any casing
//!   (`True`, `true`, `TRUE`); so are the operation segments (`raiseEvent`, `terminate`,
//!   `suspend`, `resume`, `rewind`, `restart`), while `orchestrators`, `instances` and
//!   `entities` must be written as shown. The `taskHub`, `connection` and `code`
//!   parameters real clients send are accepted (`code` doubles as the bearer token, see
//!   below).
//! - `raiseEvent` accepts any `Content-Type` as long as the body is JSON (curl's default
//!   form content type included); an empty body raises the event with `null`.
//! - A terminate, suspend or resume reason comes from the `reason` query parameter or,
//!   failing that, from the body (a JSON string such as `"\"reason\""` or plain text).
//! - Status timestamps (`createdTime`, `lastUpdatedTime`) have second precision
//!   (`2024-01-01T00:00:00Z`); history and entity times have .NET's seven fractional
//!   digits (`2024-01-01T00:00:00.1230000Z`; this engine records milliseconds).
//! - `historyEvents` follows Durable Functions' shaping: episode markers dropped, each
//!   scheduling event merged into its completion (`FunctionName`, `ScheduledTime`),
//!   `Input` only with `showInput` and `Result` only with `showHistoryOutput` (both as
//!   JSON values), failures as `FailureDetails` with `PascalCase` keys. Entity traffic
//!   appears as Durable Functions records it: `EventSent` for an operation call or signal
//!   (`Name` = operation), a lock request (`lock`) and a lock release (`release`);
//!   `EventRaised` for an operation's answer and a lock grant; `InstanceId` is the
//!   entity's (`@name@key`).
//! - The `x-ms-continuation-token` response header is always present; it is empty on the
//!   last page. Tokens are opaque (hex) and must be sent back unchanged.
//! - Non-Durable-Functions extra: `lastError` in a status shows why a running instance is
//!   stuck (non-determinism, unknown orchestrator on this worker), when it is.
//!
//! # Dashboard
//!
//! [`router`] also serves a web dashboard under `/dashboard/` ([`DASHBOARD`]): the instances
//! newest first with filters (status, orchestrator name, id prefix, created-time range),
//! per-status counts, paging and auto-refresh; one instance with its fields, failure or
//! stuck reason, parent and children, its history as an SVG timeline (activities, timers,
//! sub-orchestrations, entity calls with durations and retry attempts; events as points)
//! and as raw JSON; the actions raise event, terminate, suspend, resume, rewind, restart
//! and purge, each behind a confirmation page and through the same code path and rules
//! as the endpoints above; entities with their state and a signal form. Pages are
//! server-rendered (maud) with one small script and stylesheet embedded in the binary, so
//! it works offline. Every response carries `Content-Security-Policy: default-src 'none';
//! script-src 'self'; style-src 'self'; img-src 'self'; form-action 'self';
//! frame-ancestors 'none'; base-uri 'none'` and `X-Content-Type-Options: nosniff`. With a
//! bearer token, open `/dashboard/?code=<token>` once: the token is kept in an `HttpOnly`,
//! `SameSite=Strict` cookie (path `/dashboard`) and dropped from the URL; without it the
//! pages answer 401 with a sign-in form. Every POST must be same-origin (`Origin` matching
//! `Host`, or `Sec-Fetch-Site: same-origin`). The links are absolute (`/dashboard/…`), so
//! mount the router at the root.
//!
//! When [`HttpOptions::bearer_token`] is set, every request needs `Authorization: Bearer
//! <token>` (or `?code=<token>`, which Durable Functions clients send); otherwise the
//! answer is 401. [`HttpOptions::code_in_links`] (off by default) also puts `code=<token>`
//! into the management links and `Location` headers, as Durable Functions does, so
//! clients that only follow links (Logic Apps) work — at the price of the token showing
//! up in URLs and logs. [`serve`] binds loopback addresses freely and refuses any other
//! address without a token.
//!
//! # Examples
//!
//! Serve the API next to a worker:
//!
//! ```no_run
//! use durable_core::http::{self, HttpOptions};
//! use durable_core::prelude::*;
//!
//! #[orchestrator]
//! async fn hello(_ctx: OrchestrationContext, name: String) -> Result<String, OrchestrationError> {
//!     Ok(format!("Hello {name}!"))
//! }
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let worker = Worker::builder().store(MemoryStore::new()).register(hello).start()?;
//! let server = http::serve(worker.client(), http::DEFAULT_ADDR, HttpOptions::new()).await?;
//! println!("curl -X POST {}/runtime/webhooks/durabletask/orchestrators/hello -d '\"Ada\"'", server.url());
//! server.wait().await?;
//! # Ok(()) }
//! ```
//!
//! Or mount [`router`] into an application of your own, and answer a start from your own
//! handler with [`check_status_response`]:
//!
//! ```no_run
//! use axum::http::HeaderMap;
//! use axum::response::{IntoResponse, Response};
//! use axum::routing::post;
//! use durable_core::http::{self, HttpOptions};
//! use durable_core::prelude::*;
//!
//! #[orchestrator]
//! async fn hello(_ctx: OrchestrationContext, name: String) -> Result<String, OrchestrationError> {
//!     Ok(format!("Hello {name}!"))
//! }
//!
//! async fn greet(client: Client, headers: HeaderMap) -> Response {
//!     match hello::start(&client, "Ada".into()).await {
//!         Ok(run) => http::check_status_response(run.id(), &http::base_url_from_headers(&headers)),
//!         Err(e) => (axum::http::StatusCode::BAD_REQUEST, e.to_string()).into_response(),
//!     }
//! }
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let worker = Worker::builder().store(MemoryStore::new()).register(hello).start()?;
//! let client = worker.client();
//! let app = axum::Router::new()
//!     .route("/api/greet", post({
//!         let client = client.clone();
//!         move |headers: HeaderMap| greet(client, headers)
//!     }))
//!     .merge(http::router(client, HttpOptions::new()));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:7071").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```

mod conn;
mod dashboard;
mod handlers;
mod payload;
mod util;

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Router, middleware};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower_http::trace::TraceLayer;

use crate::client::Client;
use crate::ids::InstanceId;

/// The path prefix every management endpoint lives under (Functions v2+).
pub const PREFIX: &str = "/runtime/webhooks/durabletask";

/// The path of the dashboard's start page ([`router`] serves the dashboard under
/// `/dashboard`): open `http://<host>:<port>/dashboard/` in a browser.
///
/// # Examples
///
/// ```
/// assert_eq!(durable_core::http::DASHBOARD, "/dashboard/");
/// ```
pub const DASHBOARD: &str = "/dashboard/";

/// `127.0.0.1:7071`, the address the Azure Functions host uses locally.
pub const DEFAULT_ADDR: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7071));

/// `Retry-After` (seconds) of the check-status response, as in Durable Functions.
const CHECK_STATUS_RETRY_AFTER: &str = "10";

/// Options of the HTTP management API.
///
/// # Examples
///
/// ```
/// use durable_core::http::HttpOptions;
///
/// let options = HttpOptions::new()
///     .base_url("https://jobs.example.com")
///     .bearer_token("s3cret")
///     .max_body_bytes(64 * 1024);
/// assert_eq!(options.base_url.as_deref(), Some("https://jobs.example.com"));
/// assert!(!options.code_in_links);
/// // The token never shows in logs:
/// assert!(!format!("{options:?}").contains("s3cret"));
/// ```
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct HttpOptions {
    /// Scheme, host and port (plus any path the router is mounted under) used for the
    /// absolute URLs of check-status payloads and `Location` headers, e.g.
    /// `https://jobs.example.com`. Default: `http://` + the request's `Host` header.
    pub base_url: Option<String>,
    /// When set, every request must carry `Authorization: Bearer <token>` (or the
    /// `code=<token>` query parameter); others get 401. An empty token rejects every
    /// request.
    pub bearer_token: Option<String>,
    /// Largest request body accepted, in bytes; larger ones get 413. Default: the client's
    /// payload limit ([`crate::Limits::max_payload_bytes`]).
    pub max_body_bytes: Option<usize>,
    /// With a [`bearer_token`](Self::bearer_token), put `code=<token>` into the management
    /// links this API hands out — the check-status URLs (`statusQueryGetUri`,
    /// `sendEventPostUri`, …) and the `Location` headers — as Durable Functions does with
    /// its system key, so a client that only follows links (Logic Apps polling `Location`,
    /// a browser) is authorized without setting a header. Default: off.
    ///
    /// The trade-off: the token then travels in URLs, and URLs are written to places
    /// headers are not — access logs of this server and of every proxy on the way, browser
    /// history, `Referer` headers, monitoring tools, copied links. Anyone who sees a link
    /// holds the full credential of this API, for every instance. Turn it on only when
    /// link-following clients need it, and prefer a token used for nothing else.
    pub code_in_links: bool,
}

impl fmt::Debug for HttpOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpOptions")
            .field("base_url", &self.base_url)
            .field(
                "bearer_token",
                &self.bearer_token.as_ref().map(|_| "<redacted>"),
            )
            .field("max_body_bytes", &self.max_body_bytes)
            .field("code_in_links", &self.code_in_links)
            .finish()
    }
}

impl HttpOptions {
    /// Defaults: URLs from the `Host` header, no token, the client's payload limit.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the base URL of generated absolute URLs (trailing `/` ignored).
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = Some(url.into());
        self
    }

    /// Requires this bearer token on every request.
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.bearer_token = Some(token.into());
        self
    }

    /// Sets the largest accepted request body.
    pub fn max_body_bytes(mut self, n: usize) -> Self {
        self.max_body_bytes = Some(n);
        self
    }

    /// Puts `code=<token>` into the management links (see
    /// [`code_in_links`](Self::code_in_links) for the trade-off).
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::http::HttpOptions;
    ///
    /// // Logic Apps polls the `Location` of a 202 without adding headers.
    /// let options = HttpOptions::new().bearer_token("s3cret").code_in_links(true);
    /// assert!(options.code_in_links);
    /// ```
    pub fn code_in_links(mut self, on: bool) -> Self {
        self.code_in_links = on;
        self
    }
}

#[derive(Clone)]
struct AppState {
    client: Client,
    options: Arc<HttpOptions>,
}

impl AppState {
    fn body_limit(&self) -> usize {
        self.options
            .max_body_bytes
            .unwrap_or(self.client.limits().max_payload_bytes)
    }

    fn base_url(&self, headers: &HeaderMap) -> String {
        match &self.options.base_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => base_url_from_headers(headers),
        }
    }

    /// The `code` to put into management links, when [`HttpOptions::code_in_links`] asks.
    fn link_code(&self) -> Option<&str> {
        self.options
            .bearer_token
            .as_deref()
            .filter(|t| self.options.code_in_links && !t.is_empty())
    }
}

/// The management API as an axum [`Router`], every route under [`PREFIX`].
///
/// Merge it into an application (`app.merge(router(..))`; the application may have routes,
/// layers and a fallback of its own), or serve it alone with [`serve`] or [`serve_with`].
/// Unmatched paths under [`PREFIX`] answer 404 and unsupported methods 405, both with a
/// JSON error body; other paths are the application's (under [`serve`], a JSON 404).
/// Requests that hyper refuses before routing (malformed, URI or headers too large) get
/// the JSON error body only under [`serve`] and [`serve_with`], which wrap each connection
/// for that; another server answers those as it does.
///
/// Nested under a path (`app.nest("/ops", router(..))`), set [`HttpOptions::base_url`] to
/// the public URL including that path, so the management links in responses point into
/// the nest; the dashboard expects to be at the root (`/dashboard/`), so merge rather than
/// nest when it is wanted.
///
/// Layers go on the returned router like on any other: `router(..).layer(..)` with tower or
/// tower-http layers (CORS, timeouts, compression, request ids) wraps the API and the
/// dashboard, or put them on the application after merging to wrap everything.
///
/// The [dashboard](self#dashboard) is served under `/dashboard/` with its own
/// authentication (the same token, also accepted from a cookie) and security headers.
///
/// Every request is traced (tower-http's `TraceLayer`): a DEBUG span `http_request`
/// (target `durable_core::http`) with `method` and `path` (not the query, which may hold
/// the `code` key), then `status` and `latency_ms`, and a DEBUG event `request answered`.
///
/// # Examples
///
/// ```no_run
/// use durable_core::http::{self, HttpOptions};
/// use durable_core::prelude::*;
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let worker = Worker::builder().store(MemoryStore::new()).start()?;
/// let app = http::router(worker.client(), HttpOptions::new().bearer_token("s3cret"));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:7071").await?;
/// axum::serve(listener, app).await?;
/// # Ok(()) }
/// ```
///
/// Merged into an application with routes, a fallback and a layer of its own:
///
/// ```
/// use axum::{Router, http::StatusCode, middleware, routing::get};
/// use durable_core::http::{self, HttpOptions};
/// use durable_core::prelude::*;
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let worker = Worker::builder().store(MemoryStore::new()).start()?;
/// let app: Router = Router::new()
///     .route("/health", get(|| async { "ok" }))
///     .fallback(|| async { (StatusCode::NOT_FOUND, "no such page") })
///     .merge(http::router(worker.client(), HttpOptions::new()))
///     // A layer on the whole application (any tower layer fits here).
///     .layer(middleware::from_fn(
///         |request: axum::extract::Request, next: middleware::Next| async move {
///             let mut response = next.run(request).await;
///             response.headers_mut().insert("x-served-by", "my-app".parse().unwrap());
///             response
///         },
///     ));
/// # drop(app);
/// # Ok(()) }
/// ```
pub fn router(client: Client, options: HttpOptions) -> Router {
    let token = options.bearer_token.clone();
    let state_base_url = options.base_url.as_deref().map(Arc::<str>::from);
    let state = AppState {
        client,
        options: Arc::new(options),
    };
    let dashboard = dashboard::routes(state.clone());
    let p = PREFIX;
    let app = Router::new()
        .route(
            &format!("{p}/orchestrators/{{function_name}}"),
            post(handlers::start),
        )
        .route(
            &format!("{p}/orchestrators/{{function_name}}/{{instance_id}}"),
            post(handlers::start_with_id),
        )
        .route(
            &format!("{p}/instances"),
            get(handlers::list).delete(handlers::purge_by_filter),
        )
        .route(
            &format!("{p}/instances/"),
            get(handlers::list).delete(handlers::purge_by_filter),
        )
        .route(
            &format!("{p}/instances/{{instance_id}}"),
            get(handlers::status).delete(handlers::purge),
        )
        // raiseEvent (matched case-insensitively).
        .route(
            &format!("{p}/instances/{{instance_id}}/{{operation}}/{{event_name}}"),
            post(handlers::raise_event),
        )
        // raiseEvent with an empty event name: refused with 400, not an unknown path.
        .route(
            &format!("{p}/instances/{{instance_id}}/{{operation}}/"),
            post(handlers::raise_unnamed_event),
        )
        // terminate, suspend, resume, rewind, restart (matched case-insensitively).
        .route(
            &format!("{p}/instances/{{instance_id}}/{{operation}}"),
            post(handlers::operation),
        )
        // Entities: signal (POST; DELETE sends `delete`), read, list.
        .route(&format!("{p}/entities"), get(handlers::list_entities))
        .route(&format!("{p}/entities/"), get(handlers::list_entities))
        .route(
            &format!("{p}/entities/{{entity_name}}"),
            get(handlers::list_entities_named),
        )
        .route(
            &format!("{p}/entities/{{entity_name}}/{{entity_key}}"),
            get(handlers::read_entity)
                .post(handlers::signal_entity)
                .delete(handlers::delete_entity),
        )
        // Unknown paths under the prefix: a route, not the router's fallback, so the
        // router merges into an application that has a fallback of its own.
        .route(p, any(handlers::not_found))
        .route(&format!("{p}/"), any(handlers::not_found))
        .route(&format!("{p}/{{*rest}}"), any(handlers::not_found))
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .with_state(state);
    let app = match token {
        Some(token) => app.layer(middleware::from_fn_with_state(
            Arc::<str>::from(token),
            util::require_token,
        )),
        None => app.layer(middleware::from_fn_with_state(
            state_base_url,
            util::require_local_host,
        )),
    };
    // The dashboard has its own auth (cookie, login page), so it joins after the API's.
    let app = app.merge(dashboard);
    // Outermost, so refused requests are traced too.
    app.layer(
        TraceLayer::new_for_http()
            .make_span_with(request_span)
            .on_request(())
            .on_response(record_response)
            .on_body_chunk(())
            .on_eos(())
            .on_failure(()),
    )
}

/// The DEBUG span `http_request` of one API request: its method and path (never the query,
/// which may hold the `code` key); its status and latency are recorded once it is answered.
fn request_span(request: &axum::extract::Request) -> tracing::Span {
    let span = tracing::debug_span!(
        "http_request",
        method = %request.method(),
        path = request.uri().path(),
        status = tracing::field::Empty,
        latency_ms = tracing::field::Empty,
    );
    #[cfg(feature = "opentelemetry")]
    if let Some(caller) = handlers::trace_context(request.headers()) {
        crate::otel::adopt_request(&span, &caller);
    }
    span
}

/// Records the answer in the request's span, with a DEBUG event `request answered`.
fn record_response(response: &Response, latency: std::time::Duration, span: &tracing::Span) {
    let status = response.status().as_u16();
    // Milliseconds to the microsecond.
    let latency_ms = (latency.as_secs_f64() * 1e6).round() / 1e3;
    span.record("status", status);
    span.record("latency_ms", latency_ms);
    tracing::debug!(parent: span, status, latency_ms, "request answered");
}

/// `http://` + the request's `Host` header (`http://localhost` without one): the base URL
/// to pass to [`check_status_response`] from a handler that knows no better.
///
/// # Examples
///
/// ```
/// use axum::http::{HeaderMap, HeaderValue, header};
/// use durable_core::http::base_url_from_headers;
///
/// let mut headers = HeaderMap::new();
/// headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:7071"));
/// assert_eq!(base_url_from_headers(&headers), "http://127.0.0.1:7071");
/// ```
pub fn base_url_from_headers(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::trim)
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~:[]%".contains(&b))
        })
        .unwrap_or("localhost");
    format!("http://{host}")
}

/// The management URLs of one instance: Durable Functions' check-status payload
/// (`HttpManagementPayload`), returned with 202 by the start and restart endpoints and
/// by [`check_status_response`].
///
/// # Examples
///
/// ```
/// use durable_core::InstanceId;
/// use durable_core::http::CheckStatus;
///
/// let id = InstanceId::new("order 42").unwrap();
/// let urls = CheckStatus::new(&id, "http://localhost:7071/");
/// assert_eq!(urls.id, "order 42");
/// assert_eq!(
///     urls.status_query_get_uri,
///     "http://localhost:7071/runtime/webhooks/durabletask/instances/order%2042"
/// );
/// let json = serde_json::to_value(&urls).unwrap();
/// assert!(json["sendEventPostUri"].as_str().unwrap().ends_with("/raiseEvent/{eventName}"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct CheckStatus {
    /// The instance id.
    pub id: String,
    /// `GET`: the instance's status.
    pub status_query_get_uri: String,
    /// `POST`: raise an event (replace `{eventName}`).
    pub send_event_post_uri: String,
    /// `POST`: terminate (replace `{text}` with a reason).
    pub terminate_post_uri: String,
    /// `DELETE`: purge the instance's history.
    pub purge_history_delete_uri: String,
    /// `POST`: start the orchestration again with the same input.
    pub restart_post_uri: String,
    /// `POST`: suspend (replace `{text}` with a reason).
    pub suspend_post_uri: String,
    /// `POST`: resume (replace `{text}` with a reason).
    pub resume_post_uri: String,
}

impl CheckStatus {
    /// The URLs of `instance_id` on a server reachable at `base_url` (scheme, host, port
    /// and any mount path; a trailing `/` is ignored). The id is percent-encoded.
    pub fn new(instance_id: &InstanceId, base_url: &str) -> Self {
        let instance = format!(
            "{}{PREFIX}/instances/{}",
            base_url.trim_end_matches('/'),
            util::encode_path_segment(instance_id.as_str())
        );
        Self {
            id: instance_id.to_string(),
            status_query_get_uri: instance.clone(),
            send_event_post_uri: format!("{instance}/raiseEvent/{{eventName}}"),
            terminate_post_uri: format!("{instance}/terminate?reason={{text}}"),
            purge_history_delete_uri: instance.clone(),
            restart_post_uri: format!("{instance}/restart"),
            suspend_post_uri: format!("{instance}/suspend?reason={{text}}"),
            resume_post_uri: format!("{instance}/resume?reason={{text}}"),
        }
    }

    /// Appends `returnInternalServerErrorOnFailure=true` to the status URL, so polling
    /// clients get a 500 when the instance fails.
    pub fn return_internal_server_error_on_failure(mut self) -> Self {
        util::push_query(
            &mut self.status_query_get_uri,
            "returnInternalServerErrorOnFailure",
            "true",
        );
        self
    }

    /// Appends `code=<code>` to every URL, as Durable Functions does with its system key,
    /// so that clients which only follow links are authorized (see
    /// [`HttpOptions::code_in_links`] for what that costs).
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::InstanceId;
    /// use durable_core::http::CheckStatus;
    ///
    /// let id = InstanceId::new("abc").unwrap();
    /// let urls = CheckStatus::new(&id, "http://localhost:7071").with_code("k+1");
    /// assert!(urls.status_query_get_uri.ends_with("/instances/abc?code=k%2B1"));
    /// assert!(urls.terminate_post_uri.ends_with("/terminate?reason={text}&code=k%2B1"));
    /// ```
    pub fn with_code(mut self, code: &str) -> Self {
        for url in [
            &mut self.status_query_get_uri,
            &mut self.send_event_post_uri,
            &mut self.terminate_post_uri,
            &mut self.purge_history_delete_uri,
            &mut self.restart_post_uri,
            &mut self.suspend_post_uri,
            &mut self.resume_post_uri,
        ] {
            util::push_query(url, "code", code);
        }
        self
    }
}

impl IntoResponse for CheckStatus {
    /// 202 Accepted, `Location` = the status URL, `Retry-After: 10`, the payload as JSON.
    fn into_response(self) -> Response {
        let location = HeaderValue::from_str(&self.status_query_get_uri).ok();
        let mut response = util::json_response(StatusCode::ACCEPTED, &self);
        let headers = response.headers_mut();
        if let Some(location) = location {
            headers.insert(header::LOCATION, location);
        }
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from_static(CHECK_STATUS_RETRY_AFTER),
        );
        response
    }
}

/// Durable Functions' `CreateCheckStatusResponse`: the 202 Accepted a user's own HTTP
/// handler returns after starting an orchestration, with `Location` and `Retry-After`
/// headers and the [`CheckStatus`] management URLs as body.
///
/// # Examples
///
/// ```
/// use axum::http::StatusCode;
/// use durable_core::InstanceId;
/// use durable_core::http::check_status_response;
///
/// let id = InstanceId::new("abc123").unwrap();
/// let response = check_status_response(&id, "http://localhost:7071");
/// assert_eq!(response.status(), StatusCode::ACCEPTED);
/// assert_eq!(
///     response.headers()["location"],
///     "http://localhost:7071/runtime/webhooks/durabletask/instances/abc123"
/// );
/// assert_eq!(response.headers()["retry-after"], "10");
/// ```
pub fn check_status_response(instance_id: &InstanceId, base_url: &str) -> Response {
    CheckStatus::new(instance_id, base_url).into_response()
}

/// Why [`serve`] or [`serve_with`] did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// A non-loopback address was asked for without a bearer token.
    #[error(
        "refusing to serve the management API on non-loopback address {0} without a bearer \
         token: set `HttpOptions::bearer_token`, or bind 127.0.0.1 / ::1"
    )]
    InsecureBind(SocketAddr),
    /// The address could not be bound.
    #[error("cannot bind the management API to {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A running management API server started by [`serve`]. Dropping it shuts the server
/// down gracefully, so a server that is started and not kept is a warning (`#[must_use]`):
///
/// ```compile_fail
/// # #![deny(unused_must_use)]
/// # use durable_core::{http::{self, HttpOptions}, prelude::*};
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let worker = Worker::builder().store(MemoryStore::new()).start()?;
/// http::serve(worker.client(), http::DEFAULT_ADDR, HttpOptions::new()).await?; // warning: unused `HttpServer`
/// # Ok(()) }
/// ```
///
/// ```no_run
/// # #![deny(unused_must_use)]
/// # use durable_core::{http::{self, HttpOptions}, prelude::*};
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let worker = Worker::builder().store(MemoryStore::new()).start()?;
/// let server = http::serve(worker.client(), http::DEFAULT_ADDR, HttpOptions::new()).await?;
/// server.wait().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "the server shuts down when dropped: keep it, and end it with `shutdown()` or `wait()`"]
pub struct HttpServer {
    local_addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl HttpServer {
    /// The bound address (with the real port when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `http://{local_addr}`.
    pub fn url(&self) -> String {
        format!("http://{}", self.local_addr)
    }

    /// Stops accepting connections, lets in-flight requests finish, and returns.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        (&mut self.task).await.map_err(std::io::Error::other)?
    }

    /// Serves until the server fails (it never stops by itself).
    pub async fn wait(mut self) -> std::io::Result<()> {
        let _keep_running = self.shutdown.take();
        (&mut self.task).await.map_err(std::io::Error::other)?
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// How long a client may take to send a request's headers before its connection is
/// closed, so idle or trickling connections cannot pile up.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Accepts connections until `stop` fires, serving each as HTTP/1.1 with a header-read
/// timeout; then lets in-flight requests finish.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: Router,
    clock: Arc<dyn crate::clock::Clock>,
    stop: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let mut stop = std::pin::pin!(stop);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment, go on.
                    tracing::warn!(error = %e, "accepting an HTTP connection failed");
                    let retry = clock.now() + std::time::Duration::from_millis(50);
                    tokio::select! {
                        () = clock.sleep_until(retry) => continue,
                        () = &mut stop => break,
                    }
                }
            },
            () = &mut stop => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(conn::JsonErrors::new(stream)), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Binds `addr` and serves [`router`] on it in a background task.
///
/// Loopback addresses (`127.0.0.1`, `::1`; [`DEFAULT_ADDR`] is `127.0.0.1:7071`) are
/// always allowed; any other address is refused with [`ServeError::InsecureBind`] unless
/// [`HttpOptions::bearer_token`] is set. Port 0 picks a free port
/// ([`HttpServer::local_addr`] tells which).
///
/// # Examples
///
/// ```no_run
/// use durable_core::http::{self, HttpOptions};
/// use durable_core::prelude::*;
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let worker = Worker::builder().store(MemoryStore::new()).start()?;
/// // Loopback: no token needed.
/// let local = http::serve(worker.client(), ([127, 0, 0, 1], 0).into(), HttpOptions::new()).await?;
/// println!("management API at {}", local.url());
/// // Every interface: refused without a token.
/// assert!(http::serve(worker.client(), ([0, 0, 0, 0], 8080).into(), HttpOptions::new()).await.is_err());
/// let public = http::serve(worker.client(), ([0, 0, 0, 0], 8080).into(), HttpOptions::new().bearer_token("s3cret")).await?;
/// # drop(public);
/// local.shutdown().await?;
/// # Ok(()) }
/// ```
pub async fn serve(
    client: Client,
    addr: SocketAddr,
    options: HttpOptions,
) -> Result<HttpServer, ServeError> {
    let has_token = options.bearer_token.as_ref().is_some_and(|t| !t.is_empty());
    if !addr.ip().is_loopback() && !has_token {
        return Err(ServeError::InsecureBind(addr));
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| ServeError::Bind { addr, source })?;
    let clock = client.clock();
    let app = standalone(router(client, options));
    let (tx, rx) = oneshot::channel::<()>();
    let stop = async move {
        let _ = rx.await;
    };
    let task = tokio::spawn(accept_loop(listener, app, clock, stop));
    Ok(HttpServer {
        local_addr,
        shutdown: Some(tx),
        task,
    })
}

/// The API served alone: every path it does not know is a JSON 404.
fn standalone(app: Router) -> Router {
    app.fallback(handlers::not_found)
}

/// Serves [`router`] on a listener the caller bound (a port chosen by a test, a socket
/// handed over by systemd, a listener shared with other set-up) until `shutdown` completes,
/// then lets in-flight requests finish and returns: the management API as one task of an
/// application that decides when to stop.
///
/// Like [`serve`], a listener on a non-loopback address is refused with
/// [`ServeError::InsecureBind`] unless [`HttpOptions::bearer_token`] is set, and requests
/// that hyper refuses before routing get a JSON error body.
///
/// # Examples
///
/// ```
/// use durable_core::http::{self, HttpOptions};
/// use durable_core::prelude::*;
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let worker = Worker::builder().store(MemoryStore::new()).start()?;
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
/// let server = tokio::spawn(http::serve_with(
///     worker.client(),
///     listener,
///     HttpOptions::new(),
///     async move {
///         let _ = stopped.await;
///     },
/// ));
/// // … later, e.g. on Ctrl-C (`tokio::signal::ctrl_c()` as the shutdown future):
/// stop.send(()).ok();
/// server.await??;
/// worker.shutdown().await;
/// # Ok(()) }
/// ```
pub async fn serve_with(
    client: Client,
    listener: tokio::net::TcpListener,
    options: HttpOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })?;
    let has_token = options.bearer_token.as_ref().is_some_and(|t| !t.is_empty());
    if !addr.ip().is_loopback() && !has_token {
        return Err(ServeError::InsecureBind(addr));
    }
    let clock = client.clock();
    let app = standalone(router(client, options));
    accept_loop(listener, app, clock, shutdown)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}
