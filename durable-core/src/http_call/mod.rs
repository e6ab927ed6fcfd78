//! Durable HTTP calls: [`OrchestrationContext::call_http`] and its request and response
//! types (feature `http-calls`).
//!
//! An orchestration cannot do IO itself (its code is replayed), so the request runs in an
//! activity the engine owns and registers on every worker, named `BuiltIn::HttpActivity` as
//! in Durable Functions. The request goes into history as that task's input and the
//! response as its output; replay returns the recorded response without sending anything.
//!
//! The first request is sent **at least once**: a worker that crashes after sending it and
//! before recording the response sends it again when the task is retried.
//!
//! **Long-running operations.** A `202 Accepted` with a `Location` header is followed
//! automatically (unless [`DurableHttpRequest::async_polling`] turns it off): the
//! orchestration waits on a durable timer — the response's `Retry-After` (seconds or an
//! HTTP date), else [`DurableHttpRequest::poll_interval`], held between
//! [`MIN_POLL_INTERVAL`] (1 s) and [`MAX_POLL_INTERVAL`] (1 h) — then schedules a `GET` of
//! the `Location` (absolute, or relative to the URI that answered, after any redirects),
//! until a response other than 202 arrives. A poll answering 202 without a `Location`
//! is polled again at the same URI. Every poll and every wait is in the instance's own
//! history (about four events per poll, the `Location` URLs included), so a worker that
//! crashes mid-poll resumes polling where it was after a restart. Set a
//! [`total_timeout`](DurableHttpRequest::total_timeout) for operations that may never
//! end; a few hundred polls need no continue-as-new.
//!
//! **Statuses are answers, not failures.** Any status, 4xx and 5xx included, comes back as a
//! [`DurableHttpResponse`]. Only a [`retry`](DurableHttpRequest::retry) policy changes that:
//! under a policy, a status in the retry list (by default 408, 429, 500, 502, 503 and 504;
//! see [`retry_on_status`](DurableHttpRequest::retry_on_status)) fails the attempt, the
//! policy retries it on durable timers, and once the policy gives up the call fails with a
//! task failure naming the last status. Transport errors (refused connection, DNS, reset)
//! and per-request timeouts always fail the attempt, and are retried under a policy.
//!
//! **Secrets never enter history.** Headers set with [`header`](DurableHttpRequest::header)
//! are recorded. A [`token_source`](DurableHttpRequest::token_source) or
//! [`secret_header`](DurableHttpRequest::secret_header) records only the *name* of an
//! [`HttpTokenSource`] registered on the worker
//! ([`WorkerBuilder::http_token_source`](crate::WorkerBuilder::http_token_source)); the
//! worker asks it for the value when it sends the request.
//!
//! **Secrets stay on the request's origin.** Redirects (301, 302, 303, 307, 308; at most
//! 10) are followed by the built-in activity, not by the HTTP client: 303, and 301/302 of a
//! `POST`, become a `GET` without the body; 307 and 308 keep the method and body. Once a
//! redirect leaves the origin (scheme, host and port) of the request, the token and secret
//! headers are no longer sent. A 202 poll gets them only when its `Location` is on the
//! origin of the first request, unless
//! [`secrets_to_other_origins`](DurableHttpRequest::secrets_to_other_origins) allows other
//! origins; never over `http` when the request was `https`. A client given to
//! [`WorkerBuilder::http_client`](crate::WorkerBuilder::http_client) must not follow
//! redirects itself, or durable cannot keep secrets from other hosts.
//!
//! **Hostile endpoints.** Response bodies are read as a stream and the call fails
//! (non-retriable) as soon as one passes [`max_response_bytes`](DurableHttpRequest::max_response_bytes)
//! (or the worker's payload limit, since the response is recorded);
//! the per-request [`timeout`](DurableHttpRequest::timeout) bounds the whole exchange,
//! a body that never ends included.
//!
//! **Coming from Durable Functions.**
//!
//! | Durable Functions | durable |
//! |---|---|
//! | `CallHttpAsync(DurableHttpRequest)` | [`OrchestrationContext::call_http`] |
//! | `DurableHttpRequest.Timeout` | [`total_timeout`](DurableHttpRequest::total_timeout) (and [`timeout`](DurableHttpRequest::timeout) per request) |
//! | `AsynchronousPatternEnabled` (`asynchronousPatternEnabled`) | [`async_polling`](DurableHttpRequest::async_polling) |
//! | `HttpRetryOptions` | [`retry`](DurableHttpRequest::retry) + [`retry_on_status`](DurableHttpRequest::retry_on_status) |
//! | `TokenSource` (`ManagedIdentityTokenSource`) | [`token_source`](DurableHttpRequest::token_source), a name of an [`HttpTokenSource`] on the worker |
//! | `DurableHttpResponse` | [`DurableHttpResponse`] |
//! | `BuiltIn::HttpActivity` | [`HTTP_ACTIVITY_NAME`] (the same name) |
//!
//! # Examples
//!
//! An endpoint that accepts a job, then reports it pending once before it is done; the
//! orchestration sees only the final answer. [`durable_testing`]'s `TestEnv` runs the
//! request for real and the poll wait on its virtual clock. (It can also answer requests
//! without a server — `TestEnvBuilder::mock_http`, `HttpScript` — and lists every request
//! sent, each an [`HttpRequestRecord`].)
//!
//! ```
//! use std::time::Duration;
//! use axum::http::{StatusCode, header};
//! use axum::routing::{get, post};
//! use durable_core::prelude::*;
//! use durable_testing::TestEnv;
//!
//! #[orchestrator]
//! async fn report(ctx: OrchestrationContext, base: String) -> Result<String, OrchestrationError> {
//!     let request = DurableHttpRequest::post(format!("{base}/reports"))
//!         .json(&serde_json::json!({ "month": "2024-05" }))
//!         .poll_interval(Duration::from_secs(60));
//!     let response = ctx.call_http(request).await?;
//!     Ok(format!("{} {}", response.status, response.text()))
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let polls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
//! let app = axum::Router::new()
//!     .route("/reports", post(|| async { (StatusCode::ACCEPTED, [(header::LOCATION, "/reports/1")]) }))
//!     .route("/reports/1", get(move || async move {
//!         match polls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
//!             0 => (
//!                 StatusCode::ACCEPTED,
//!                 [(header::LOCATION, "/reports/1"), (header::RETRY_AFTER, "30")],
//!                 String::new(),
//!             ),
//!             _ => (
//!                 StatusCode::OK,
//!                 [(header::CONTENT_TYPE, "text/csv"), (header::CACHE_CONTROL, "no-store")],
//!                 "total,42".to_owned(),
//!             ),
//!         }
//!     }));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let base = format!("http://{}", listener.local_addr()?);
//! tokio::spawn(async move { axum::serve(listener, app).await });
//!
//! let env = TestEnv::builder().register(report).start()?;
//! let run = env.start(report, base).await?;
//! assert_eq!(env.wait(&run).await?, "200 total,42");
//! // Two waits: the 60 s poll interval, then the `Retry-After: 30` of the first poll.
//! assert_eq!(env.history(run.id()).await.timers().len(), 2);
//! # Ok(()) }
//! ```
//!
//! [`OrchestrationContext::call_http`]: crate::OrchestrationContext::call_http
//! [`durable_testing`]: https://docs.rs/durable-testing

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::ActivityError;
use crate::function::BoxFuture;
use crate::retry::RetryPolicy;

mod body;
mod record;
pub(crate) mod send;

pub use record::HttpRequestRecord;

/// The durable name of the built-in activity that sends durable HTTP requests (the name
/// Durable Functions gives it, so tools reading history see the familiar name).
///
/// # Examples
///
/// ```
/// use durable_core::{Event, HistoryEvent};
/// use durable_core::http_call::HTTP_ACTIVITY_NAME;
///
/// /// The HTTP requests an instance made, as its history records them.
/// fn http_requests(history: &[HistoryEvent]) -> usize {
///     history
///         .iter()
///         .filter(|e| matches!(&e.event, Event::TaskScheduled { name, .. } if name == HTTP_ACTIVITY_NAME))
///         .count()
/// }
/// assert_eq!(http_requests(&[]), 0);
/// ```
pub const HTTP_ACTIVITY_NAME: &str = "BuiltIn::HttpActivity";

/// The default per-request [`timeout`](DurableHttpRequest::timeout): 100 seconds.
///
/// # Examples
///
/// ```
/// use durable_core::http_call::{DEFAULT_REQUEST_TIMEOUT, DurableHttpRequest};
///
/// // A slow endpoint: three times the default.
/// let request = DurableHttpRequest::get("http://localhost/slow").timeout(DEFAULT_REQUEST_TIMEOUT * 3);
/// # let _ = request;
/// ```
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(100);

/// The default [`poll_interval`](DurableHttpRequest::poll_interval) of a 202 without
/// `Retry-After`: 30 seconds.
///
/// # Examples
///
/// ```
/// use durable_core::http_call::{DEFAULT_POLL_INTERVAL, DurableHttpRequest};
///
/// let request = DurableHttpRequest::post("http://localhost/jobs").poll_interval(DEFAULT_POLL_INTERVAL / 3);
/// # let _ = request;
/// ```
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(30);

/// The default [`max_response_bytes`](DurableHttpRequest::max_response_bytes): 512 KiB.
///
/// Half the worker's default payload limit ([`Limits`](crate::Limits), 1 MiB), because the
/// response is recorded as JSON: a text body grows with JSON escaping (a `"` or `\` takes 2
/// bytes, a control character 6) and a binary body is recorded as base64 (4 bytes for 3).
/// Whatever this limit says, a response whose recorded form passes the worker's
/// `max_payload_bytes` fails with `HttpResponseTooLarge`.
///
/// # Examples
///
/// ```
/// use durable_core::http_call::{DEFAULT_MAX_RESPONSE_BYTES, DurableHttpRequest};
///
/// let request = DurableHttpRequest::get("http://localhost/export")
///     .max_response_bytes(4 * DEFAULT_MAX_RESPONSE_BYTES);
/// # let _ = request;
/// ```
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 512 << 10;

/// The shortest wait between polls of a `202 Accepted`: 1 second. A shorter `Retry-After`
/// (`0` included) or [`poll_interval`](DurableHttpRequest::poll_interval) waits this long.
///
/// # Examples
///
/// ```
/// use durable_core::http_call::{MAX_POLL_INTERVAL, MIN_POLL_INTERVAL};
///
/// assert!(MIN_POLL_INTERVAL < MAX_POLL_INTERVAL);
/// ```
pub const MIN_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The longest wait between polls of a `202 Accepted`: 1 hour. A longer `Retry-After` (a
/// date years away, say) or [`poll_interval`](DurableHttpRequest::poll_interval) waits
/// this long, so a hostile or broken endpoint cannot park an instance for good.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use durable_core::http_call::MAX_POLL_INTERVAL;
///
/// assert_eq!(MAX_POLL_INTERVAL, Duration::from_secs(3600));
/// ```
pub const MAX_POLL_INTERVAL: Duration = Duration::from_secs(3600);

/// A [`reqwest::ClientBuilder`] set up as the worker's default HTTP client is: TLS through
/// rustls with the `ring` provider, trusting the platform's roots (or the Mozilla roots of
/// `webpki-roots` when the platform has none), HTTP/1, redirects not followed. Refine it
/// and hand the client to [`WorkerBuilder::http_client`](crate::WorkerBuilder::http_client).
///
/// Leave redirects off (do not call `.redirect(..)` with a following policy): the
/// built-in activity follows them itself and drops the token and secret headers when a
/// redirect leaves the request's origin. A client that follows redirects sends secret
/// headers such as `x-api-key` to any host a redirect names.
///
/// durable builds reqwest without a TLS provider of its own (no aws-lc C build), so a
/// plain `reqwest::Client::builder().build()` panics unless the application installs a
/// rustls `CryptoProvider` or enables reqwest's `rustls` feature itself; start from this
/// builder instead.
///
/// # Errors
/// When the TLS configuration cannot be built (no usable protocol version).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
///
/// let client = durable_core::http_call::client_builder()?
///     .connect_timeout(Duration::from_secs(3))
///     .pool_max_idle_per_host(4)
///     .build()?;
/// # let _ = client;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn client_builder() -> Result<reqwest::ClientBuilder, rustls::Error> {
    send::client_builder()
}

/// The statuses a [`retry`](DurableHttpRequest::retry) policy retries unless
/// [`retry_on_status`](DurableHttpRequest::retry_on_status) says otherwise.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use durable_core::prelude::*;
/// use durable_core::http_call::{DEFAULT_RETRY_STATUSES, DurableHttpRequest};
///
/// // The defaults, and 409 Conflict too.
/// let request = DurableHttpRequest::new("PUT", "http://localhost/items/7")
///     .retry(RetryPolicy::new(3, Duration::from_secs(1)))
///     .retry_on_status(DEFAULT_RETRY_STATUSES.into_iter().chain([409]));
/// # let _ = request;
/// ```
pub const DEFAULT_RETRY_STATUSES: [u16; 6] = [408, 429, 500, 502, 503, 504];

/// What the built-in activity sends: the part of a [`DurableHttpRequest`] recorded in
/// history as the task's input. Secrets appear by source name only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SendSpec {
    pub(crate) method: String,
    pub(crate) uri: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) headers: BTreeMap<String, String>,
    #[serde(default, with = "body", skip_serializing_if = "Vec::is_empty")]
    pub(crate) body: Vec<u8>,
    /// `Authorization: Bearer <token>` from this source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) token_source: Option<String>,
    /// Header name → the source of its value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) secret_headers: BTreeMap<String, String>,
    /// Bounds the whole exchange (token, connect, headers and body), in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub(crate) timeout_ms: u64,
    #[serde(default = "default_max_response_bytes")]
    pub(crate) max_response_bytes: u64,
    /// Statuses that fail the attempt (set only under a retry policy).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) fail_on_status: Vec<u16>,
}

fn default_timeout_ms() -> u64 {
    duration_ms(DEFAULT_REQUEST_TIMEOUT)
}

fn default_max_response_bytes() -> u64 {
    DEFAULT_MAX_RESPONSE_BYTES
}

/// An HTTP request made durably by
/// [`OrchestrationContext::call_http`](crate::OrchestrationContext::call_http): built with
/// [`get`](Self::get), [`post`](Self::post) or [`new`](Self::new) and refined with the
/// builder methods.
///
/// See the [module documentation](self) for what is recorded and how 202 polling, retries
/// and secrets work.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use durable_core::http_call::DurableHttpRequest;
///
/// let request = DurableHttpRequest::post("https://api.example.com/orders")
///     .header("x-request-id", "order-7")
///     .json(&serde_json::json!({ "sku": "A-1", "quantity": 2 }))
///     .token_source("orders-api")
///     .timeout(Duration::from_secs(10))
///     .total_timeout(Duration::from_secs(3600));
/// assert_eq!(request.method(), "POST");
/// assert_eq!(request.header_value("content-type"), Some("application/json"));
/// ```
#[derive(Clone)]
pub struct DurableHttpRequest {
    pub(crate) send: SendSpec,
    pub(crate) total_timeout: Option<Duration>,
    pub(crate) poll_interval: Duration,
    pub(crate) async_polling: bool,
    /// Whether polls on another origin get the secrets (never over http after https).
    pub(crate) secrets_to_other_origins: bool,
    pub(crate) retry: Option<RetryPolicy>,
    pub(crate) retry_statuses: Vec<u16>,
    /// Why [`json`](Self::json) could not serialize its value: the call fails with it.
    pub(crate) invalid_body: Option<String>,
}

impl fmt::Debug for DurableHttpRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DurableHttpRequest")
            .field("method", &self.send.method)
            .field("uri", &self.send.uri)
            .field("headers", &self.send.headers)
            .field("body_len", &self.send.body.len())
            .field("token_source", &self.send.token_source)
            .field("secret_headers", &self.send.secret_headers)
            .field("timeout_ms", &self.send.timeout_ms)
            .field("total_timeout", &self.total_timeout)
            .field("poll_interval", &self.poll_interval)
            .field("async_polling", &self.async_polling)
            .field("secrets_to_other_origins", &self.secrets_to_other_origins)
            .field("retry", &self.retry)
            .field("retry_statuses", &self.retry_statuses)
            .field("max_response_bytes", &self.send.max_response_bytes)
            .field("invalid_body", &self.invalid_body)
            .finish()
    }
}

impl DurableHttpRequest {
    /// A request with `method` (any token: `GET`, `PATCH`, …; upper-cased) to `uri`.
    ///
    /// The URI and method are checked when the request is sent: an invalid one fails the
    /// call (non-retriable).
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::http_call::DurableHttpRequest;
    ///
    /// let request = DurableHttpRequest::new("delete", "https://api.example.com/carts/9");
    /// assert_eq!(request.method(), "DELETE");
    /// assert_eq!(request.uri(), "https://api.example.com/carts/9");
    /// ```
    pub fn new(method: impl AsRef<str>, uri: impl Into<String>) -> Self {
        Self {
            send: SendSpec {
                method: method.as_ref().to_ascii_uppercase(),
                uri: uri.into(),
                headers: BTreeMap::new(),
                body: Vec::new(),
                token_source: None,
                secret_headers: BTreeMap::new(),
                timeout_ms: duration_ms(DEFAULT_REQUEST_TIMEOUT),
                max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
                fail_on_status: Vec::new(),
            },
            total_timeout: None,
            poll_interval: DEFAULT_POLL_INTERVAL,
            async_polling: true,
            secrets_to_other_origins: false,
            retry: None,
            retry_statuses: DEFAULT_RETRY_STATUSES.to_vec(),
            invalid_body: None,
        }
    }

    /// A `GET` of `uri`.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::http_call::DurableHttpRequest;
    ///
    /// assert_eq!(DurableHttpRequest::get("http://localhost/health").method(), "GET");
    /// ```
    pub fn get(uri: impl Into<String>) -> Self {
        Self::new("GET", uri)
    }

    /// A `POST` to `uri`.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::http_call::DurableHttpRequest;
    ///
    /// let request = DurableHttpRequest::post("http://localhost/jobs").body("start");
    /// assert_eq!(request.body_bytes(), b"start");
    /// ```
    pub fn post(uri: impl Into<String>) -> Self {
        Self::new("POST", uri)
    }

    /// Adds a header (the name is lower-cased; a second value for the same name replaces
    /// the first). **Recorded in history**: put credentials in a
    /// [`token_source`](Self::token_source) or [`secret_header`](Self::secret_header).
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::http_call::DurableHttpRequest;
    ///
    /// let request = DurableHttpRequest::get("http://localhost/").header("Accept", "text/csv");
    /// assert_eq!(request.header_value("accept"), Some("text/csv"));
    /// ```
    pub fn header(mut self, name: impl AsRef<str>, value: impl Into<String>) -> Self {
        self.send
            .headers
            .insert(name.as_ref().to_ascii_lowercase(), value.into());
        self
    }

    /// Sets the body (bytes or text). Recorded in history: as text when it is UTF-8, as
    /// base64 otherwise.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::http_call::DurableHttpRequest;
    ///
    /// let request = DurableHttpRequest::post("http://localhost/upload").body(vec![0_u8, 159, 146]);
    /// assert_eq!(request.body_bytes(), [0, 159, 146]);
    /// ```
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.send.body = body.into();
        self.invalid_body = None;
        self
    }

    /// Sets a JSON body and `content-type: application/json`.
    ///
    /// A value that cannot be serialized (a map with non-string keys, say) makes the call
    /// fail before anything is sent (error type `HttpInvalidRequest`, non-retriable).
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::http_call::DurableHttpRequest;
    ///
    /// let request = DurableHttpRequest::post("http://localhost/orders").json(&vec![1, 2, 3]);
    /// assert_eq!(request.body_bytes(), b"[1,2,3]");
    /// ```
    pub fn json<T: Serialize + ?Sized>(mut self, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => {
                self.send.body = body;
                self.invalid_body = None;
            }
            Err(e) => {
                self.send.body = Vec::new();
                self.invalid_body = Some(format!("the JSON body cannot be serialized: {e}"));
            }
        }
        self.header("content-type", "application/json")
    }

    /// Bounds each request (the first and every poll or retry): connecting, the token
    /// lookup, the headers and the whole body. A request that takes longer fails the
    /// attempt (error type `HttpTimeout`, retriable). Default
    /// [`DEFAULT_REQUEST_TIMEOUT`] (100 s); capped by what is left of the
    /// [`total_timeout`](Self::total_timeout).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use durable_core::http_call::DurableHttpRequest;
    ///
    /// let request = DurableHttpRequest::get("http://localhost/").timeout(Duration::from_secs(5));
    /// # let _ = request;
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.send.timeout_ms = duration_ms(timeout).max(1);
        self
    }

    /// Bounds the whole call on the orchestration's clock: every request, poll, poll wait
    /// and retry back-off. When it runs out the call fails (error type `HttpTimeout`,
    /// non-retriable). Default: none.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use durable_core::http_call::DurableHttpRequest;
    ///
    /// let request = DurableHttpRequest::post("http://localhost/reports")
    ///     .total_timeout(Duration::from_secs(24 * 3600));
    /// # let _ = request;
    /// ```
    pub fn total_timeout(mut self, timeout: Duration) -> Self {
        self.total_timeout = Some(timeout);
        self
    }

    /// How long to wait between polls of a 202 that has no (readable) `Retry-After`.
    /// Default [`DEFAULT_POLL_INTERVAL`] (30 s). This wait and `Retry-After` are both held
    /// between [`MIN_POLL_INTERVAL`] (1 s) and [`MAX_POLL_INTERVAL`] (1 h).
    ///
    /// Each poll adds about four events to the instance's history (its timer's
    /// `TimerCreated` and `TimerFired`, the request's `TaskScheduled` and `TaskCompleted`),
    /// so an operation polled for days keeps growing it: set a
    /// [`total_timeout`](Self::total_timeout) for operations that may never finish. A few
    /// hundred polls need no continue-as-new.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use durable_core::http_call::DurableHttpRequest;
    ///
    /// let request = DurableHttpRequest::post("http://localhost/exports")
    ///     .poll_interval(Duration::from_secs(5));
    /// # let _ = request;
    /// ```
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// `false` returns a `202 Accepted` as it is instead of polling its `Location`.
    /// Default `true`.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::http_call::DurableHttpRequest;
    ///
    /// let request = DurableHttpRequest::post("http://localhost/jobs").async_polling(false);
    /// # let _ = request;
    /// ```
    pub fn async_polling(mut self, on: bool) -> Self {
        self.async_polling = on;
        self
    }

    /// `true` sends the [`token_source`](Self::token_source) and
    /// [`secret_header`](Self::secret_header)s with polls of a `Location` on another
    /// origin (scheme, host and port) than this request's, for APIs whose operations
    /// report their status elsewhere. Default `false`: such a poll goes without them.
    /// Either way, secrets are never sent over `http` when this request is `https`, and
    /// never follow a redirect to another origin.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::http_call::DurableHttpRequest;
    ///
    /// // The API answers 202 with a Location on https://status.example.com.
    /// let request = DurableHttpRequest::post("https://api.example.com/exports")
    ///     .token_source("example")
    ///     .secrets_to_other_origins(true);
    /// # let _ = request;
    /// ```
    pub fn secrets_to_other_origins(mut self, on: bool) -> Self {
        self.secrets_to_other_origins = on;
        self
    }

    /// Retries failed attempts under `policy`, each back-off a durable timer: transport
    /// errors, per-request timeouts, token-source errors and the statuses of
    /// [`retry_on_status`](Self::retry_on_status) (default [`DEFAULT_RETRY_STATUSES`]).
    /// A 429 or 503 with a `Retry-After` waits at least that long (at most
    /// [`MAX_POLL_INTERVAL`]) before the next attempt, whatever the policy's back-off.
    /// When the policy gives up, the call fails with the last attempt's failure. Without a
    /// policy every status is returned as a response and a transport error fails the call
    /// at once.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use durable_core::prelude::*;
    /// use durable_core::http_call::DurableHttpRequest;
    ///
    /// let request = DurableHttpRequest::get("http://localhost/rates")
    ///     .retry(RetryPolicy::new(5, Duration::from_secs(2)).backoff_coefficient(2.0));
    /// # let _ = request;
    /// ```
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// The statuses a [`retry`](Self::retry) policy retries (replacing
    /// [`DEFAULT_RETRY_STATUSES`]); empty retries transport errors and timeouts only.
    /// Without a policy it has no effect.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use durable_core::prelude::*;
    /// use durable_core::http_call::DurableHttpRequest;
    ///
    /// let request = DurableHttpRequest::get("http://localhost/rates")
    ///     .retry(RetryPolicy::new(3, Duration::from_secs(1)))
    ///     .retry_on_status([503, 429]);
    /// # let _ = request;
    /// ```
    pub fn retry_on_status(mut self, statuses: impl IntoIterator<Item = u16>) -> Self {
        self.retry_statuses = statuses.into_iter().collect();
        self
    }

    /// The largest response body accepted, in bytes. A larger one fails the call
    /// (error type `HttpResponseTooLarge`, non-retriable) as soon as the limit is passed,
    /// without reading the rest. Default [`DEFAULT_MAX_RESPONSE_BYTES`] (512 KiB).
    ///
    /// The response is recorded, so it must also fit the worker's payload limit
    /// ([`Limits::max_payload_bytes`](crate::Limits::max_payload_bytes), 1 MiB by default)
    /// once encoded: JSON escaping grows a text body (up to 6 bytes for a control
    /// character) and base64 a binary one (by a third), and the headers count too. A
    /// response past it fails the same way (`HttpResponseTooLarge`, naming both limits).
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::http_call::DurableHttpRequest;
    ///
    /// let request = DurableHttpRequest::get("http://localhost/small").max_response_bytes(64 << 10);
    /// # let _ = request;
    /// ```
    pub fn max_response_bytes(mut self, limit: u64) -> Self {
        self.send.max_response_bytes = limit;
        self
    }

    /// Sends `Authorization: Bearer <token>`, the token asked of the [`HttpTokenSource`]
    /// registered on the worker under `name` when the request is sent. History records
    /// the name only. An unknown name fails the call (error type
    /// `HttpUnknownTokenSource`, non-retriable).
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::http_call::DurableHttpRequest;
    ///
    /// let request = DurableHttpRequest::get("https://graph.example.com/me").token_source("graph");
    /// # let _ = request;
    /// ```
    pub fn token_source(mut self, name: impl Into<String>) -> Self {
        self.send.token_source = Some(name.into());
        self
    }

    /// Sends header `header` with the value the [`HttpTokenSource`] registered under
    /// `source` gives when the request is sent (as it is, with no `Bearer` prefix).
    /// History records the header and source names only.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::http_call::DurableHttpRequest;
    ///
    /// let request = DurableHttpRequest::get("https://api.example.com/")
    ///     .secret_header("x-api-key", "partner-key");
    /// # let _ = request;
    /// ```
    pub fn secret_header(mut self, header: impl AsRef<str>, source: impl Into<String>) -> Self {
        self.send
            .secret_headers
            .insert(header.as_ref().to_ascii_lowercase(), source.into());
        self
    }

    /// The method, upper-cased.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::http_call::DurableHttpRequest;
    ///
    /// assert_eq!(DurableHttpRequest::new("put", "http://localhost/").method(), "PUT");
    /// ```
    pub fn method(&self) -> &str {
        &self.send.method
    }

    /// The URI.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::http_call::DurableHttpRequest;
    ///
    /// assert_eq!(DurableHttpRequest::get("http://localhost/a").uri(), "http://localhost/a");
    /// ```
    pub fn uri(&self) -> &str {
        &self.send.uri
    }

    /// The value of the (recorded) header `name`, matched case-insensitively.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::http_call::DurableHttpRequest;
    ///
    /// let request = DurableHttpRequest::get("http://localhost/").header("X-Tag", "a");
    /// assert_eq!(request.header_value("x-tag"), Some("a"));
    /// assert_eq!(request.header_value("X-TAG"), Some("a"));
    /// ```
    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.send
            .headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// The body.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::http_call::DurableHttpRequest;
    ///
    /// assert!(DurableHttpRequest::get("http://localhost/").body_bytes().is_empty());
    /// ```
    pub fn body_bytes(&self) -> &[u8] {
        &self.send.body
    }
}

pub(crate) fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A response recorded by
/// [`OrchestrationContext::call_http`](crate::OrchestrationContext::call_http): the status,
/// the headers (names lower-case; repeated headers joined with `", "`) and the body
/// (recorded as text when it is UTF-8, as base64 otherwise).
///
/// # Examples
///
/// ```
/// use durable_core::http_call::DurableHttpResponse;
///
/// let response = DurableHttpResponse::new(200)
///     .with_header("Content-Type", "application/json")
///     .with_body(r#"{"total": 42}"#);
/// assert!(response.is_success());
/// assert_eq!(response.header("content-type"), Some("application/json"));
/// let parsed: serde_json::Value = response.json()?;
/// assert_eq!(parsed["total"], 42);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DurableHttpResponse {
    /// The status code.
    pub status: u16,
    /// The headers by lower-case name. A field sent on several lines is recorded as one
    /// value, its lines joined with `", "` (a list, RFC 9110 §5.3), except `set-cookie`,
    /// whose lines are joined with `"\n"` (a cookie's `Expires` holds a comma):
    /// `headers["set-cookie"].lines()` gives the cookies.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The body.
    #[serde(default, with = "body", skip_serializing_if = "Vec::is_empty")]
    pub body: Vec<u8>,
    /// The URI that gave this response: the request's, or where its redirects led. A
    /// relative `Location` is resolved against it. `None` in responses built by hand (and
    /// recorded before durable recorded it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
}

impl DurableHttpResponse {
    /// A response with `status`, no headers and an empty body (for tests and mocks).
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::http_call::DurableHttpResponse;
    ///
    /// assert_eq!(DurableHttpResponse::new(404).status, 404);
    /// ```
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: BTreeMap::new(),
            body: Vec::new(),
            uri: None,
        }
    }

    /// This response with header `name` (lower-cased) set to `value`.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::http_call::DurableHttpResponse;
    ///
    /// let r = DurableHttpResponse::new(202).with_header("Location", "/jobs/1");
    /// assert_eq!(r.header("location"), Some("/jobs/1"));
    /// ```
    pub fn with_header(mut self, name: impl AsRef<str>, value: impl Into<String>) -> Self {
        self.headers
            .insert(name.as_ref().to_ascii_lowercase(), value.into());
        self
    }

    /// This response with `body`.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::http_call::DurableHttpResponse;
    ///
    /// assert_eq!(DurableHttpResponse::new(200).with_body("ok").text(), "ok");
    /// ```
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// `true` for a 2xx status.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::http_call::DurableHttpResponse;
    ///
    /// assert!(DurableHttpResponse::new(204).is_success());
    /// assert!(!DurableHttpResponse::new(503).is_success());
    /// ```
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The value of header `name`, matched case-insensitively.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::http_call::DurableHttpResponse;
    ///
    /// let r = DurableHttpResponse::new(200).with_header("ETag", "\"v2\"");
    /// assert_eq!(r.header("ETAG"), Some("\"v2\""));
    /// ```
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// The body as text (invalid UTF-8 replaced with `U+FFFD`).
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::http_call::DurableHttpResponse;
    ///
    /// assert_eq!(DurableHttpResponse::new(200).with_body("héllo").text(), "héllo");
    /// ```
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }

    /// The body parsed as JSON.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::http_call::DurableHttpResponse;
    ///
    /// let r = DurableHttpResponse::new(200).with_body("[1, 2]");
    /// assert_eq!(r.json::<Vec<u8>>()?, [1, 2]);
    /// assert!(r.json::<String>().is_err());
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// Where the worker gets a secret for a durable HTTP request: a bearer token
/// ([`DurableHttpRequest::token_source`]) or a header value
/// ([`DurableHttpRequest::secret_header`]), asked for each time a request is sent and never
/// recorded.
///
/// Register one per name with
/// [`WorkerBuilder::http_token_source`](crate::WorkerBuilder::http_token_source). Any
/// `Fn() -> impl Future<Output = Result<String, ActivityError>>` closure is a source; a
/// failure fails the attempt (retried under the call's retry policy unless it is
/// [non-retriable](ActivityError::non_retriable)). Cache tokens inside the source: it is
/// called for every request, polls included.
///
/// # Examples
///
/// ```
/// use durable_core::prelude::*;
/// use durable_core::http_call::HttpTokenSource;
///
/// struct FromEnv(&'static str);
///
/// impl HttpTokenSource for FromEnv {
///     fn token(&self) -> durable_core::registry::BoxFuture<'_, Result<String, ActivityError>> {
///         Box::pin(async move {
///             std::env::var(self.0).map_err(|_| ActivityError::non_retriable(format!("{} is not set", self.0)))
///         })
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let worker = Worker::builder()
///     .store(MemoryStore::new())
///     .http_token_source("graph", FromEnv("GRAPH_TOKEN"))
///     .http_token_source("static", || async { Ok::<_, ActivityError>("s3cr3t".to_owned()) })
///     .start()?;
/// # worker.shutdown().await;
/// # Ok(()) }
/// ```
pub trait HttpTokenSource: Send + Sync + 'static {
    /// The secret value to send now.
    fn token(&self) -> BoxFuture<'_, Result<String, ActivityError>>;
}

impl<F, Fut> HttpTokenSource for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String, ActivityError>> + Send + 'static,
{
    fn token(&self) -> BoxFuture<'_, Result<String, ActivityError>> {
        Box::pin(self())
    }
}

/// The HTTP settings a worker gives its built-in HTTP activity: token sources by name and
/// the client options.
#[derive(Clone, Default)]
pub(crate) struct HttpCallConfig {
    pub(crate) sources: BTreeMap<String, Arc<dyn HttpTokenSource>>,
    pub(crate) client: Option<reqwest::Client>,
}

impl fmt::Debug for HttpCallConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names only: a source may hold secrets.
        f.debug_struct("HttpCallConfig")
            .field("token_sources", &self.sources.keys().collect::<Vec<_>>())
            .field("client", &self.client)
            .finish()
    }
}

impl HttpCallConfig {
    /// The built-in HTTP activity, sending with these settings.
    pub(crate) fn into_activity(self) -> send::HttpActivity {
        send::HttpActivity::new(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_specs_without_the_later_fields_read_with_the_defaults() {
        // A task input as recorded by an older version: method and URI only.
        let spec: SendSpec =
            serde_json::from_str(r#"{"method":"GET","uri":"http://h/x"}"#).unwrap();
        assert_eq!(spec, DurableHttpRequest::get("http://h/x").send);
        assert_eq!(spec.timeout_ms, 100_000);
        assert_eq!(spec.max_response_bytes, DEFAULT_MAX_RESPONSE_BYTES);
    }

    #[test]
    fn responses_recorded_without_a_uri_read_as_none() {
        let response: DurableHttpResponse =
            serde_json::from_str(r#"{"status":200,"headers":{},"body":"ok"}"#).unwrap();
        assert_eq!(response, DurableHttpResponse::new(200).with_body("ok"));
        let json = serde_json::to_string(&DurableHttpResponse::new(204)).unwrap();
        assert_eq!(json, r#"{"status":204,"headers":{}}"#);
    }
}
