//! Durable HTTP calls in the harness (feature `http-calls`): answers in place of the
//! network ([`MockHttp`], [`HttpScript`]) and the log of the requests sent ([`HttpCall`]).
//!
//! Every `BuiltIn::HttpActivity` execution goes through the harness's switchboard, so it
//! is recorded; with [`TestEnvBuilder::mock_http`](crate::TestEnvBuilder::mock_http) or
//! [`TestEnvBuilder::http_script`](crate::TestEnvBuilder::http_script) the mock answers it,
//! otherwise (or when the mock says [`MockHttp::pass_through`]) the worker's built-in
//! activity sends it for real.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, Weak};

use durable_core::history::Payload;
use durable_core::http_call::{DurableHttpResponse, HttpRequestRecord};
use durable_core::registry::ActivityHandler;
use durable_core::{ActivityContext, FailureDetails, InstanceId, ToFailure};

use crate::mock::ActivityCall;
use crate::store::{Shared, lock};

/// How a mock answers one durable HTTP request: with a response, with a failure of the
/// attempt, or by letting the request go to the network.
///
/// A response goes through the same checks the built-in activity makes
/// ([`HttpRequestRecord::outcome`]): a status the call's retry policy retries fails the
/// attempt, a body past its `max_response_bytes` fails the call.
///
/// # Examples
///
/// ```
/// use durable_core::http_call::DurableHttpResponse;
/// use durable_testing::MockHttp;
///
/// let ok: MockHttp = DurableHttpResponse::new(200).with_body("done").into();
/// let pending = MockHttp::accepted("/jobs/1");
/// let refused = MockHttp::transport_error("connection refused");
/// # let _ = (ok, pending, refused, MockHttp::pass_through());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MockHttp {
    /// Answer with this response.
    Respond(DurableHttpResponse),
    /// Fail the attempt with these details (retried under the call's retry policy unless
    /// non-retriable).
    Fail(FailureDetails),
    /// Send the request for real, as the worker's built-in activity does.
    PassThrough,
}

impl MockHttp {
    /// Answer with `response`.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::http_call::DurableHttpResponse;
    /// use durable_testing::MockHttp;
    ///
    /// let answer = MockHttp::respond(DurableHttpResponse::new(201).with_header("Location", "/items/9"));
    /// # let _ = answer;
    /// ```
    pub fn respond(response: DurableHttpResponse) -> Self {
        Self::Respond(response)
    }

    /// Answer with `status`, no headers and an empty body.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_testing::MockHttp;
    ///
    /// let unavailable = MockHttp::status(503);
    /// # let _ = unavailable;
    /// ```
    pub fn status(status: u16) -> Self {
        Self::Respond(DurableHttpResponse::new(status))
    }

    /// Answer `202 Accepted` with `Location: location` (absolute, or relative to the URI
    /// requested): the call polls it after its poll interval.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_testing::MockHttp;
    ///
    /// let pending = MockHttp::accepted("/jobs/7/status");
    /// # let _ = pending;
    /// ```
    pub fn accepted(location: impl Into<String>) -> Self {
        Self::Respond(DurableHttpResponse::new(202).with_header("location", location))
    }

    /// Fail the attempt with `error` (an [`ActivityError`](durable_core::ActivityError),
    /// [`FailureDetails`] or any `std::error::Error`).
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_testing::MockHttp;
    ///
    /// let denied = MockHttp::fail(ActivityError::non_retriable("certificate rejected"));
    /// # let _ = denied;
    /// ```
    pub fn fail(error: impl ToFailure) -> Self {
        Self::Fail(error.to_failure())
    }

    /// Fail the attempt as a refused connection or a reset does: error type
    /// `HttpTransportError`, retriable.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_testing::MockHttp;
    ///
    /// let down = MockHttp::transport_error("connection refused");
    /// # let _ = down;
    /// ```
    pub fn transport_error(message: impl Into<String>) -> Self {
        Self::Fail(FailureDetails::new("HttpTransportError", message))
    }

    /// Send the request for real.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_testing::MockHttp;
    ///
    /// let real = MockHttp::pass_through();
    /// # let _ = real;
    /// ```
    pub fn pass_through() -> Self {
        Self::PassThrough
    }
}

impl From<DurableHttpResponse> for MockHttp {
    fn from(response: DurableHttpResponse) -> Self {
        Self::Respond(response)
    }
}

/// Scripted answers to durable HTTP requests, by method and URI: each request to a
/// method and URI takes the next answer given for them, and the last one repeats.
///
/// A request the script has no answer for fails (error type `UnmockedHttpRequest`,
/// non-retriable) unless [`otherwise`](Self::otherwise) says what to do with it. Give it to
/// [`TestEnvBuilder::http_script`](crate::TestEnvBuilder::http_script).
///
/// # Examples
///
/// A job that is accepted, reported pending three times, then done:
///
/// ```
/// use std::time::Duration;
/// use durable_core::prelude::*;
/// use durable_core::http_call::DurableHttpResponse;
/// use durable_testing::{HttpScript, MockHttp, TestEnv};
///
/// #[orchestrator]
/// async fn export(ctx: OrchestrationContext, _x: ()) -> Result<String, OrchestrationError> {
///     let request = DurableHttpRequest::post("https://api.example.com/exports")
///         .poll_interval(Duration::from_secs(60));
///     Ok(ctx.call_http(request).await?.text().into_owned())
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let status = "https://api.example.com/exports/1";
/// let script = HttpScript::new()
///     .on("POST", "https://api.example.com/exports", MockHttp::accepted(status))
///     .on_times(2, "GET", status, MockHttp::accepted(status))
///     .on("GET", status, DurableHttpResponse::new(200).with_body("export.csv"));
/// let env = TestEnv::builder().register(export).http_script(script).start().unwrap();
/// let t0 = env.now();
/// let run = env.start(export, ()).await.unwrap();
/// assert_eq!(env.wait(&run).await.unwrap(), "export.csv");
/// assert_eq!(env.http_requests().len(), 4);
/// assert_eq!(env.now(), t0 + Duration::from_secs(3 * 60), "three poll waits, virtual");
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct HttpScript {
    /// Answers by (upper-case method, URI), in order of use.
    routes: HashMap<(String, String), Vec<MockHttp>>,
    otherwise: Option<MockHttp>,
}

impl Default for HttpScript {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpScript {
    /// A script with no answers.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_testing::{HttpScript, MockHttp};
    ///
    /// let script = HttpScript::new().on("GET", "https://api.example.com/ping", MockHttp::status(204));
    /// # let _ = script;
    /// ```
    pub fn new() -> Self {
        Self {
            routes: HashMap::new(),
            otherwise: None,
        }
    }

    /// Then answer the next request with `method` (any case) to `uri` (exactly) with
    /// `answer`.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_testing::{HttpScript, MockHttp};
    ///
    /// // Unavailable once, then fine.
    /// let script = HttpScript::new()
    ///     .on("GET", "https://api.example.com/rates", MockHttp::status(503))
    ///     .on("GET", "https://api.example.com/rates", MockHttp::status(200));
    /// # let _ = script;
    /// ```
    pub fn on(self, method: &str, uri: impl Into<String>, answer: impl Into<MockHttp>) -> Self {
        self.on_times(1, method, uri, answer)
    }

    /// Then answer the next `n` requests with `method` to `uri` with `answer`.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_testing::{HttpScript, MockHttp};
    ///
    /// let uri = "https://api.example.com/jobs/1";
    /// let script = HttpScript::new()
    ///     .on_times(3, "GET", uri, MockHttp::accepted(uri))
    ///     .on("GET", uri, MockHttp::status(200));
    /// # let _ = script;
    /// ```
    pub fn on_times(
        mut self,
        n: usize,
        method: &str,
        uri: impl Into<String>,
        answer: impl Into<MockHttp>,
    ) -> Self {
        let answer = answer.into();
        self.routes
            .entry((method.to_ascii_uppercase(), uri.into()))
            .or_default()
            .extend(std::iter::repeat_n(answer, n));
        self
    }

    /// The answer to a request the script has none for (by default a non-retriable
    /// failure, `UnmockedHttpRequest`): [`MockHttp::pass_through`] lets it go to the
    /// network.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_testing::{HttpScript, MockHttp};
    ///
    /// let script = HttpScript::new()
    ///     .on("POST", "https://payments.example.com/charges", MockHttp::status(201))
    ///     .otherwise(MockHttp::status(404));
    /// # let _ = script;
    /// ```
    #[must_use]
    pub fn otherwise(mut self, answer: impl Into<MockHttp>) -> Self {
        self.otherwise = Some(answer.into());
        self
    }

    /// The script as a mock function.
    pub(crate) fn into_fn(self) -> impl FnMut(&HttpRequestRecord) -> MockHttp + Send + 'static {
        let mut used: HashMap<(String, String), usize> = HashMap::new();
        move |request: &HttpRequestRecord| {
            let key = (request.method().to_owned(), request.uri().to_owned());
            if let Some(answers) = self.routes.get(&key) {
                let i = used.entry(key).or_insert(0);
                let answer = answers.get(*i).or(answers.last());
                *i += 1;
                if let Some(answer) = answer {
                    return answer.clone();
                }
            }
            self.otherwise.clone().unwrap_or_else(|| {
                MockHttp::Fail(
                    FailureDetails::new(
                        "UnmockedHttpRequest",
                        format!(
                            "the HTTP script has no answer for {} {}",
                            request.method(),
                            request.uri()
                        ),
                    )
                    .non_retriable(),
                )
            })
        }
    }
}

/// One durable HTTP request sent in the env (one `BuiltIn::HttpActivity` execution),
/// mocked or real, as [`TestEnv::http_requests`](crate::TestEnv::http_requests) lists it.
///
/// # Examples
///
/// ```
/// use durable_core::prelude::*;
/// use durable_testing::{MockHttp, TestEnv};
///
/// #[orchestrator]
/// async fn ping(ctx: OrchestrationContext, _x: ()) -> Result<u16, OrchestrationError> {
///     let request = DurableHttpRequest::get("https://api.example.com/ping").token_source("api");
///     Ok(ctx.call_http(request).await?.status)
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let env = TestEnv::builder().register(ping).mock_http(|_| MockHttp::status(204)).start().unwrap();
/// let run = env.start(ping, ()).await.unwrap();
/// assert_eq!(env.wait(&run).await.unwrap(), 204);
/// let sent = &env.http_requests()[0];
/// assert_eq!(&sent.instance_id, run.id());
/// assert_eq!((sent.request.method(), sent.request.uri()), ("GET", "https://api.example.com/ping"));
/// assert_eq!(sent.request.token_source(), Some("api"), "secrets by source name only");
/// assert!(sent.mocked);
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HttpCall {
    /// The orchestration that made the call.
    pub instance_id: InstanceId,
    /// The sequence number of the request's task in that orchestration.
    pub seq: u64,
    /// The request, as history records it.
    pub request: HttpRequestRecord,
    /// `true` when a mock answered (or passed the request through).
    pub mocked: bool,
}

impl HttpCall {
    /// The request of an activity execution, if it is a durable HTTP request.
    pub(crate) fn from_call(call: &ActivityCall) -> Option<Self> {
        if call.name != durable_core::http_call::HTTP_ACTIVITY_NAME {
            return None;
        }
        Some(Self {
            instance_id: call.instance_id.clone(),
            seq: call.seq,
            request: HttpRequestRecord::parse(&call.input).ok()?,
            mocked: call.mocked,
        })
    }
}

/// The mock function of [`TestEnvBuilder::mock_http`](crate::TestEnvBuilder::mock_http).
pub(crate) type MockFn = dyn FnMut(&HttpRequestRecord) -> MockHttp + Send;

/// The built-in HTTP activity of the worker running now (set at each worker start).
#[derive(Default)]
pub(crate) struct BuiltIn(Mutex<Option<ActivityHandler>>);

impl fmt::Debug for BuiltIn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BuiltIn")
    }
}

impl BuiltIn {
    pub(crate) fn set(&self, handler: ActivityHandler) {
        *lock(&self.0) = Some(handler);
    }

    fn get(&self) -> Option<ActivityHandler> {
        lock(&self.0).clone()
    }
}

/// Runs a request on the worker's built-in activity.
async fn send(
    shared: &Weak<Shared>,
    ctx: ActivityContext,
    input: Payload,
) -> Result<Payload, FailureDetails> {
    let real = shared.upgrade().and_then(|s| s.http_builtin.get());
    match real {
        Some(real) => real(ctx, input).await,
        None => Err(FailureDetails::new(
            "HarnessStopped",
            "the test env stopped before the HTTP request was sent",
        )),
    }
}

/// The handler sending requests for real: the switchboard runs it when no mock is set.
pub(crate) fn real_handler(shared: &Arc<Shared>) -> ActivityHandler {
    let shared = Arc::downgrade(shared);
    Arc::new(move |ctx: ActivityContext, input: Payload| {
        let shared = shared.clone();
        Box::pin(async move { send(&shared, ctx, input).await })
    })
}

/// The handler answering requests with `f`.
pub(crate) fn mock_handler(shared: &Arc<Shared>, f: Box<MockFn>) -> ActivityHandler {
    let shared = Arc::downgrade(shared);
    let f = Arc::new(Mutex::new(f));
    Arc::new(move |ctx: ActivityContext, input: Payload| {
        let (shared, f) = (shared.clone(), Arc::clone(&f));
        Box::pin(async move {
            let request = HttpRequestRecord::parse(&input).map_err(|e| {
                FailureDetails::new(
                    "PayloadDecodeError",
                    format!("the input of `{}` is not an HTTP request: {e}", ctx.name),
                )
                .non_retriable()
            })?;
            let answer = {
                let mut f = lock(&f);
                (*f)(&request)
            };
            match answer {
                MockHttp::Respond(response) => {
                    let response = request.outcome(response)?;
                    serde_json::to_string(&response).map_err(|e| FailureDetails::from_error(&e))
                }
                MockHttp::Fail(details) => Err(details),
                MockHttp::PassThrough => send(&shared, ctx, input).await,
            }
        })
    })
}
