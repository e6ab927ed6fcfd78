//! [`OrchestrationContext::call_http`]: the orchestration side of a durable HTTP call — one
//! `BuiltIn::HttpActivity` task per request, retries and 202 polls on durable timers.

use std::fmt;
use std::future::Future;
use std::panic::Location;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use super::{OrchestrationContext, RawTask, Timeouts};
use crate::error::{FailureDetails, TaskError, TaskFailure, TaskKind, decode, encode};
use crate::function::BoxFuture;
use crate::http_call::{
    DurableHttpRequest, DurableHttpResponse, HTTP_ACTIVITY_NAME, MAX_POLL_INTERVAL,
    MIN_POLL_INTERVAL, SendSpec, duration_ms, send,
};
use crate::ids::Timestamp;

/// The future of [`OrchestrationContext::call_http`]: the final response, or the failure
/// of the call.
///
/// The first request is scheduled when the future is created; awaiting it drives the
/// retries and polls. Dropping it stops them (a request already scheduled still runs).
///
/// # Examples
///
/// ```
/// use durable_core::prelude::*;
/// use durable_core::CallHttpFuture;
///
/// #[orchestrator]
/// async fn ping(ctx: OrchestrationContext, uri: String) -> Result<u16, OrchestrationError> {
///     let call: CallHttpFuture = ctx.call_http(DurableHttpRequest::get(uri));
///     Ok(call.await?.status)
/// }
/// # let _ = ping;
/// ```
#[must_use = "futures do nothing unless awaited; the first request is scheduled either way"]
pub struct CallHttpFuture(BoxFuture<'static, Result<DurableHttpResponse, TaskError>>);

impl fmt::Debug for CallHttpFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CallHttpFuture")
    }
}

impl Future for CallHttpFuture {
    type Output = Result<DurableHttpResponse, TaskError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }
}

impl OrchestrationContext {
    /// Makes an HTTP request durably and returns the recorded response.
    ///
    /// The request runs in the built-in activity `BuiltIn::HttpActivity`, which every
    /// worker built with feature `http-calls` registers; the request (secrets by source
    /// name only) and the response are recorded, and replay returns the recorded response.
    /// A `202 Accepted` with `Location` is polled on durable timers until another status
    /// comes back (see [`DurableHttpRequest::async_polling`]). Any status is a response.
    ///
    /// The first request is sent at least once: a worker that crashes after sending it but
    /// before recording the response sends it again, so make it idempotent (or
    /// deduplicated by the endpoint) when that matters. Polls are `GET`s.
    ///
    /// # Errors
    /// [`TaskError::Failed`] naming `BuiltIn::HttpActivity`, with error type:
    /// - `HttpTransportError` (refused connection, DNS, reset; retriable) and
    ///   `HttpTimeout` (the per-request [`timeout`](DurableHttpRequest::timeout),
    ///   retriable; or the [`total_timeout`](DurableHttpRequest::total_timeout),
    ///   non-retriable);
    /// - `HttpRetriableStatus`: a status the [`retry`](DurableHttpRequest::retry) policy
    ///   retried until it gave up;
    /// - `HttpResponseTooLarge` (non-retriable): a body past
    ///   [`max_response_bytes`](DurableHttpRequest::max_response_bytes), or a response
    ///   whose recorded form passes the worker's
    ///   [`Limits::max_payload_bytes`](crate::Limits::max_payload_bytes);
    /// - `HttpInvalidRequest` (non-retriable): a method, URI, header or JSON body that
    ///   cannot be sent, or a secret not valid in its header;
    /// - `HttpUnknownTokenSource` (non-retriable) and `HttpTokenSourceFailed` (retriable
    ///   unless the source's error is non-retriable): a
    ///   [`token_source`](DurableHttpRequest::token_source) or
    ///   [`secret_header`](DurableHttpRequest::secret_header) source that is not registered
    ///   or failed;
    /// - `HttpTooManyRedirects` (non-retriable): more than 10 redirects;
    /// - `HttpClientUnavailable` (non-retriable): the default HTTP client cannot be built;
    /// - `HttpCancelled` (retriable): the worker shut down mid-request.
    ///
    /// Without a retry policy, a retriable failure fails the call as well. Other
    /// [`TaskError`]s are those of any activity (see [`crate::http_call`]).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use durable_core::prelude::*;
    /// use durable_core::http_call::DurableHttpRequest;
    ///
    /// #[orchestrator]
    /// async fn export(ctx: OrchestrationContext, account: String) -> Result<String, OrchestrationError> {
    ///     // 202 + Location answers are polled until the export is ready.
    ///     let request = DurableHttpRequest::post(format!("https://reports.example.com/{account}/export"))
    ///         .token_source("reports")
    ///         .total_timeout(Duration::from_secs(3600));
    ///     let response = ctx.call_http(request).await?;
    ///     if !response.is_success() {
    ///         return Err(OrchestrationError::new(format!("export failed: {}", response.status)));
    ///     }
    ///     Ok(response.text().into_owned())
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = Worker::builder()
    ///     .store(MemoryStore::new())
    ///     .http_token_source("reports", || async { Ok::<_, ActivityError>("token".to_owned()) })
    ///     .register(export)
    ///     .start()?;
    /// let run = export::start(&worker.client(), "acme".to_owned()).await?;
    /// println!("{}", run.wait().await?);
    /// # Ok(()) }
    /// ```
    ///
    /// # Determinism
    /// Records one `TaskScheduled` of `BuiltIn::HttpActivity` per request (the first when
    /// the future is created) and its `TaskCompleted` / `TaskFailed`; one `TimerCreated` /
    /// `TimerFired` per poll wait and per retry back-off: about four events per poll. The
    /// `Location` URLs polled are recorded (as the polls' URIs), like the request's.
    #[track_caller]
    pub fn call_http(&self, request: DurableHttpRequest) -> CallHttpFuture {
        let location = Location::caller();
        if let Some(why) = &request.invalid_body {
            let failure = unsent(
                &request,
                FailureDetails::new("HttpInvalidRequest", why.clone()).non_retriable(),
            );
            return CallHttpFuture(Box::pin(std::future::ready(Err(failure))));
        }
        let ctx = self.clone();
        let started = self.now();
        let deadline = request.total_timeout.map(|t| started + t);
        let mut spec = request.send.clone();
        if request.retry.is_some() {
            spec.fail_on_status.clone_from(&request.retry_statuses);
        }
        let mut task = ctx.schedule_http(&spec, 1, deadline, location);
        CallHttpFuture(Box::pin(async move {
            let mut attempt = 1u32;
            // Whether `spec` is a poll (rather than the first request).
            let mut polling = false;
            loop {
                match (&mut task).await {
                    Ok(payload) => {
                        let response: DurableHttpResponse =
                            decode(&payload).map_err(TaskError::Decode)?;
                        if response.status != 202 || !request.async_polling {
                            return Ok(response);
                        }
                        // Relative to where redirects led, when they did.
                        let answered = response.uri.as_deref().unwrap_or(&spec.uri);
                        let next = match response.header("location") {
                            Some(l) => resolve(answered, l),
                            // A poll answering 202 alone: the operation is still running
                            // at the `Location` being polled.
                            None if polling => Some(spec.uri.clone()),
                            None => None,
                        };
                        let Some(next) = next else {
                            // Nothing (usable) to poll: the 202 is the answer.
                            return Ok(response);
                        };
                        let now = ctx.now();
                        let wait = retry_after(&response, now)
                            .unwrap_or(request.poll_interval)
                            .clamp(MIN_POLL_INTERVAL, MAX_POLL_INTERVAL);
                        let at = match deadline {
                            Some(d) if now + wait >= d => {
                                ctx.timer_at_located(d, location).await;
                                return Err(total_timeout(&request, &spec.uri));
                            }
                            _ => now + wait,
                        };
                        ctx.timer_at_located(at, location).await;
                        spec = poll_spec(&spec, &request, next);
                        polling = true;
                        attempt = 1;
                        task = ctx.schedule_http(&spec, attempt, deadline, location);
                    }
                    Err(TaskError::Failed(f)) => {
                        let Some(policy) = &request.retry else {
                            return Err(TaskError::Failed(f));
                        };
                        let now = ctx.now();
                        let floor = retry_after_floor(&f.details, now);
                        let delay = policy.next_delay(attempt, &f.details);
                        let delay = delay.map(|d| d.max(floor)).filter(|delay| {
                            let within_policy = policy.total_timeout.is_none_or(|total| {
                                now.saturating_duration_since(started) + *delay <= total
                            });
                            within_policy && deadline.is_none_or(|d| now + *delay < d)
                        });
                        ctx.notice_retry(&f, attempt, delay);
                        let Some(delay) = delay else {
                            return Err(TaskError::Failed(f));
                        };
                        ctx.timer_at_located(now + delay, location).await;
                        attempt += 1;
                        task = ctx.schedule_http(&spec, attempt, deadline, location);
                    }
                    Err(other) => return Err(other),
                }
            }
        }))
    }

    /// Schedules one request: attempt `attempt`, its timeout capped by what is left before
    /// `deadline`.
    fn schedule_http(
        &self,
        spec: &SendSpec,
        attempt: u32,
        deadline: Option<Timestamp>,
        location: &'static Location<'static>,
    ) -> RawTask {
        let mut spec = spec.clone();
        if let Some(d) = deadline {
            let left = duration_ms(d.saturating_duration_since(self.now())).max(1);
            spec.timeout_ms = spec.timeout_ms.min(left);
        }
        let payload = match encode(&spec) {
            Ok(p) => p,
            Err(e) => return super::TaskFuture::<()>::failed(TaskError::Decode(e)).into_raw(),
        };
        self.schedule_activity_raw::<()>(
            HTTP_ACTIVITY_NAME,
            payload,
            attempt,
            Timeouts::default(),
            None,
            false,
            location,
        )
        .into_raw()
    }
}

/// The `GET` that polls `next`: the original headers (less those describing a body), no
/// body, and the secrets when `next` is on the original request's origin (or the request
/// allows other origins, and `next` is not `http` after an `https` request).
fn poll_spec(spec: &SendSpec, request: &DurableHttpRequest, next: String) -> SendSpec {
    let mut poll = spec.clone();
    if !secrets_may_go_to(request, &next) {
        poll.token_source = None;
        poll.secret_headers.clear();
    }
    "GET".clone_into(&mut poll.method);
    poll.uri = next;
    poll.body = Vec::new();
    poll.headers.retain(|name, _| {
        !matches!(
            name.as_str(),
            "content-type" | "content-length" | "content-encoding"
        )
    });
    poll
}

/// Whether the secrets of `request` may be sent to `uri`.
fn secrets_may_go_to(request: &DurableHttpRequest, uri: &str) -> bool {
    let (Ok(original), Ok(target)) = (
        reqwest::Url::parse(&request.send.uri),
        reqwest::Url::parse(uri),
    ) else {
        return false;
    };
    if original.origin() == target.origin() {
        return true;
    }
    let downgrade = original.scheme() == "https" && target.scheme() != "https";
    request.secrets_to_other_origins && !downgrade
}

fn total_timeout(request: &DurableHttpRequest, uri: &str) -> TaskError {
    let total = request.total_timeout.unwrap_or_default();
    unsent(
        request,
        FailureDetails::new(
            "HttpTimeout",
            format!(
                "still 202 Accepted (polling {uri}) when the total timeout of {total:?} ran out"
            ),
        )
        .non_retriable(),
    )
}

/// A failure of the call itself (no request of its own to blame), naming the request.
fn unsent(request: &DurableHttpRequest, mut details: FailureDetails) -> TaskError {
    details.message = format!(
        "{} {}: {}",
        request.send.method, request.send.uri, details.message
    );
    TaskError::Failed(Box::new(TaskFailure {
        kind: TaskKind::Activity,
        name: HTTP_ACTIVITY_NAME.to_owned(),
        task: None,
        instance_id: None,
        details,
    }))
}

/// `location` resolved against the URI that answered with it.
fn resolve(base: &str, location: &str) -> Option<String> {
    let base = reqwest::Url::parse(base).ok()?;
    let next = base.join(location.trim()).ok()?;
    matches!(next.scheme(), "http" | "https").then(|| next.into())
}

/// The wait a `Retry-After` asks for: delay-seconds, or an HTTP date relative to `now` (a
/// date in the past asks for none).
fn retry_after(response: &DurableHttpResponse, now: Timestamp) -> Option<Duration> {
    let value = response.header("retry-after")?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = parse_http_date(value)?;
    Some(at.saturating_duration_since(now))
}

/// The `Retry-After` of a 429 or 503 that failed an attempt (see
/// [`send::RETRY_AFTER_FAILURE`]), at most [`MAX_POLL_INTERVAL`]; zero without one.
fn retry_after_floor(failure: &FailureDetails, now: Timestamp) -> Duration {
    let Some(inner) = failure.inner.as_deref().filter(|i| {
        failure.error_type == "HttpRetriableStatus" && i.error_type == send::RETRY_AFTER_FAILURE
    }) else {
        return Duration::ZERO;
    };
    let response = DurableHttpResponse::new(503).with_header("retry-after", inner.message.clone());
    retry_after(&response, now)
        .unwrap_or_default()
        .min(MAX_POLL_INTERVAL)
}

/// An HTTP date in any of the three forms HTTP allows (RFC 9110, 5.6.7): the IMF-fixdate
/// senders must use (`Sun, 06 Nov 1994 08:49:37 GMT`) and the obsolete RFC 850
/// (`Sunday, 06-Nov-94 08:49:37 GMT`) and asctime (`Sun Nov  6 08:49:37 1994`) forms that
/// recipients should still read.
fn parse_http_date(text: &str) -> Option<Timestamp> {
    let at = httpdate::parse_http_date(text).ok()?;
    let millis = at.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis();
    Some(Timestamp::from_unix_millis(u64::try_from(millis).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_parse_to_their_instant() {
        let t = parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(t.as_unix_millis(), 784_111_777_000);
        let t = parse_http_date("Thu, 29 Feb 2024 00:00:00 GMT").unwrap();
        assert_eq!(t.to_rfc3339(), "2024-02-29T00:00:00.000Z");
        assert_eq!(
            parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"),
            Some(Timestamp::EPOCH)
        );
        // The obsolete forms recipients still read.
        for obsolete in ["Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994"] {
            let t = parse_http_date(obsolete).unwrap();
            assert_eq!(t.as_unix_millis(), 784_111_777_000, "{obsolete}");
        }
        for bad in [
            "Sun, 06 Nov 1994 08:49:37 PST",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49 GMT",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        let now = parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        let r = DurableHttpResponse::new(202).with_header("Retry-After", "120");
        assert_eq!(retry_after(&r, now), Some(Duration::from_secs(120)));
        let r = DurableHttpResponse::new(202)
            .with_header("Retry-After", "Sun, 06 Nov 1994 08:50:07 GMT");
        assert_eq!(retry_after(&r, now), Some(Duration::from_secs(30)));
        let r = DurableHttpResponse::new(202)
            .with_header("Retry-After", "Sun, 06 Nov 1994 08:00:00 GMT");
        assert_eq!(retry_after(&r, now), Some(Duration::ZERO));
        let r = DurableHttpResponse::new(202).with_header("Retry-After", "soon");
        assert_eq!(retry_after(&r, now), None);
        assert_eq!(retry_after(&DurableHttpResponse::new(202), now), None);
    }

    #[test]
    fn locations_resolve_against_the_answering_uri() {
        let base = "http://127.0.0.1:8080/api/jobs?x=1";
        assert_eq!(
            resolve(base, "/status/7").as_deref(),
            Some("http://127.0.0.1:8080/status/7")
        );
        assert_eq!(
            resolve(base, "7/status").as_deref(),
            Some("http://127.0.0.1:8080/api/7/status")
        );
        assert_eq!(
            resolve(base, "https://other.example/op/1").as_deref(),
            Some("https://other.example/op/1")
        );
        assert_eq!(resolve(base, "ftp://other.example/op/1"), None);
        assert_eq!(resolve("not a uri", "/x"), None);
    }

    #[test]
    fn polls_are_gets_without_the_body() {
        let request = DurableHttpRequest::post("http://h/jobs")
            .json(&[1])
            .header("x-tag", "t")
            .secret_header("x-key", "k");
        let spec = request.send.clone();
        let poll = poll_spec(&spec, &request, "http://h/jobs/1".to_owned());
        assert_eq!(
            (poll.method.as_str(), poll.uri.as_str()),
            ("GET", "http://h/jobs/1")
        );
        assert!(poll.body.is_empty());
        assert_eq!(poll.headers.keys().collect::<Vec<_>>(), ["x-tag"]);
        assert_eq!(poll.secret_headers, spec.secret_headers);
    }

    #[test]
    fn secrets_go_to_other_origins_only_when_allowed_and_never_downgraded() {
        let request = DurableHttpRequest::post("https://api.example/jobs").token_source("t");
        assert!(secrets_may_go_to(
            &request,
            "https://api.example:443/jobs/1"
        ));
        assert!(!secrets_may_go_to(
            &request,
            "https://status.example/jobs/1"
        ));
        assert!(!secrets_may_go_to(&request, "http://api.example/jobs/1"));
        assert!(!secrets_may_go_to(
            &request,
            "https://api.example:8443/jobs/1"
        ));
        let open = request.secrets_to_other_origins(true);
        assert!(secrets_may_go_to(&open, "https://status.example/jobs/1"));
        assert!(!secrets_may_go_to(&open, "http://status.example/jobs/1"));
        assert!(!secrets_may_go_to(&open, "http://api.example/jobs/1"));

        let spec = open.send.clone();
        let poll = poll_spec(&spec, &open, "http://status.example/1".to_owned());
        assert_eq!(poll.token_source, None);
        let poll = poll_spec(&spec, &open, "https://status.example/1".to_owned());
        assert_eq!(poll.token_source.as_deref(), Some("t"));
    }
}
