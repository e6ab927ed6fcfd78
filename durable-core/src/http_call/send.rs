//! The built-in activity `BuiltIn::HttpActivity`: sends one request and records the
//! response. Secrets are fetched here, at send time, and never leave this module.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use reqwest::header::{
    AUTHORIZATION, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderName,
    HeaderValue, LOCATION,
};

use super::{DurableHttpResponse, HTTP_ACTIVITY_NAME, HttpCallConfig, SendSpec};
use crate::error::{FailureDetails, ToFailure};
use crate::function::{Activity, ActivityContext};

/// The most redirects one request follows (as browsers and reqwest's default do).
const MAX_REDIRECTS: u32 = 10;

/// The error type of the inner failure of an `HttpRetriableStatus` that carries the
/// response's `Retry-After` (as its message).
pub(crate) const RETRY_AFTER_FAILURE: &str = "HttpRetryAfter";

/// The failure of one attempt, recorded as it is.
#[derive(Debug)]
pub(crate) struct SendFailure(FailureDetails);

impl ToFailure for SendFailure {
    fn to_failure(&self) -> FailureDetails {
        self.0.clone()
    }
}

impl SendFailure {
    pub(super) fn into_details(self) -> FailureDetails {
        self.0
    }
}

/// The failure of an attempt whose body passed `limit` bytes.
pub(super) fn too_large(what: &str, limit: u64, payload_limit: Option<u64>) -> SendFailure {
    let message = match payload_limit {
        Some(payload_limit) => format!(
            "{what}: the response body exceeds the limit of {} bytes \
             (`DurableHttpRequest::max_response_bytes` is {limit}, the worker's \
             `Limits::max_payload_bytes` is {payload_limit})",
            limit.min(payload_limit)
        ),
        None => format!(
            "{what}: the response body exceeds the limit of {limit} bytes \
             (`DurableHttpRequest::max_response_bytes`)"
        ),
    };
    non_retriable("HttpResponseTooLarge", message)
}

/// The failure of an attempt answered with a status its retry policy retries.
pub(super) fn retriable_status(
    what: &str,
    status: u16,
    body: &[u8],
    retry_after: Option<&str>,
) -> SendFailure {
    let code = status;
    let status = reqwest::StatusCode::from_u16(status)
        .map_or_else(|_| status.to_string(), |s| s.to_string());
    let excerpt: String = String::from_utf8_lossy(body).chars().take(200).collect();
    let mut failure = FailureDetails::new(
        "HttpRetriableStatus",
        format!("{what} answered {status}: {excerpt}"),
    );
    // The wait a 429 or 503 asks for, a floor for the retry's back-off.
    if let (429 | 503, Some(after)) = (code, retry_after) {
        failure = failure.with_inner(FailureDetails::new(RETRY_AFTER_FAILURE, after));
    }
    SendFailure(failure)
}

fn retriable(error_type: &str, message: String) -> SendFailure {
    SendFailure(FailureDetails::new(error_type, message))
}

fn non_retriable(error_type: &str, message: String) -> SendFailure {
    SendFailure(FailureDetails::new(error_type, message).non_retriable())
}

/// A request ready to send: its secrets apart, sent only on its origin.
struct Outgoing {
    method: reqwest::Method,
    url: reqwest::Url,
    headers: HeaderMap,
    body: Vec<u8>,
    secrets: Vec<(HeaderName, HeaderValue)>,
}

/// The built-in activity: the worker's token sources and HTTP client.
pub(crate) struct HttpActivity {
    config: HttpCallConfig,
    /// The client built on first use when the worker was given none.
    default_client: OnceLock<Result<reqwest::Client, String>>,
}

impl HttpActivity {
    pub(crate) fn new(config: HttpCallConfig) -> Self {
        Self {
            config,
            default_client: OnceLock::new(),
        }
    }

    fn client(&self) -> Result<&reqwest::Client, SendFailure> {
        if let Some(client) = &self.config.client {
            return Ok(client);
        }
        match self.default_client.get_or_init(default_client) {
            Ok(client) => Ok(client),
            Err(message) => Err(non_retriable("HttpClientUnavailable", message.clone())),
        }
    }

    /// The secret of `source`; `what` names the request in errors (never the value).
    async fn secret(&self, source: &str, what: &str) -> Result<String, SendFailure> {
        let Some(s) = self.config.sources.get(source) else {
            return Err(non_retriable(
                "HttpUnknownTokenSource",
                format!(
                    "{what}: no HTTP token source named `{source}` is registered on this worker \
                     (register one with `WorkerBuilder::http_token_source`)"
                ),
            ));
        };
        s.token().await.map_err(|e| {
            let inner = e.into_details();
            let mut details = FailureDetails::new(
                "HttpTokenSourceFailed",
                format!("{what}: token source `{source}` failed: {}", inner.message),
            );
            details.non_retriable = inner.non_retriable;
            SendFailure(details.with_inner(inner))
        })
    }

    /// The request `spec` describes, its secrets fetched.
    async fn prepare(&self, spec: SendSpec, what: &str) -> Result<Outgoing, SendFailure> {
        let invalid = |m: String| non_retriable("HttpInvalidRequest", format!("{what}: {m}"));
        let method = reqwest::Method::from_bytes(spec.method.as_bytes())
            .map_err(|_| invalid(format!("`{}` is not an HTTP method", spec.method)))?;
        let url = reqwest::Url::parse(&spec.uri)
            .map_err(|e| invalid(format!("`{}` is not an absolute URI: {e}", spec.uri)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid(format!(
                "scheme `{}` is not supported (http or https)",
                url.scheme()
            )));
        }
        let mut headers = HeaderMap::new();
        for (name, value) in &spec.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| invalid(format!("`{name}` is not a header name")))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| invalid(format!("the value of header `{name}` is not valid")))?;
            headers.insert(name, value);
        }
        let mut secrets: Vec<(HeaderName, HeaderValue)> = Vec::new();
        if let Some(source) = &spec.token_source {
            let token = self.secret(source, what).await?;
            let value = secret_value(&format!("Bearer {token}"), "authorization", source, what)?;
            secrets.push((AUTHORIZATION, value));
        }
        for (header, source) in &spec.secret_headers {
            let name = HeaderName::from_bytes(header.as_bytes())
                .map_err(|_| invalid(format!("`{header}` is not a header name")))?;
            let secret = self.secret(source, what).await?;
            let value = secret_value(&secret, header, source, what)?;
            secrets.push((name, value));
        }
        Ok(Outgoing {
            method,
            url,
            headers,
            body: spec.body,
            secrets,
        })
    }

    /// Sends `out`, following redirects; the final response, with the URL and method that
    /// got it.
    async fn exchange(
        client: &reqwest::Client,
        out: Outgoing,
        what: &str,
    ) -> Result<(reqwest::Response, reqwest::Url, reqwest::Method), SendFailure> {
        let Outgoing {
            mut method,
            mut url,
            mut headers,
            mut body,
            secrets,
        } = out;
        let origin = url.origin();
        // The secrets go only while the request stays on its origin. Once a redirect leaves
        // it, they stay off for the rest of the chain (a redirect back must not let another
        // host pick the path they are sent to).
        let mut same_origin = true;
        let mut redirects = 0;
        loop {
            let mut sent = headers.clone();
            same_origin &= url.origin() == origin;
            if same_origin {
                for (name, value) in &secrets {
                    sent.insert(name.clone(), value.clone());
                }
            }
            let response = client
                .request(method.clone(), url.clone())
                .headers(sent)
                .body(body.clone())
                .send()
                .await
                .map_err(|e| transport(&e, what))?;
            let status = response.status().as_u16();
            let next = match status {
                301 | 302 | 303 | 307 | 308 => response
                    .headers()
                    .get(LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .and_then(|l| url.join(l.trim()).ok())
                    .filter(|next| matches!(next.scheme(), "http" | "https")),
                _ => None,
            };
            let Some(next) = next else {
                return Ok((response, url, method));
            };
            if redirects == MAX_REDIRECTS {
                return Err(non_retriable(
                    "HttpTooManyRedirects",
                    format!("{what}: more than {MAX_REDIRECTS} redirects (the last to {next})"),
                ));
            }
            redirects += 1;
            // 303 always, and 301/302 of a POST (as browsers do), become a GET without the
            // body; 307 and 308 keep both.
            let to_get = (status == 303 && method != reqwest::Method::HEAD)
                || (matches!(status, 301 | 302) && method == reqwest::Method::POST);
            if to_get {
                method = reqwest::Method::GET;
                body = Vec::new();
                for name in [CONTENT_TYPE, CONTENT_LENGTH, CONTENT_ENCODING] {
                    headers.remove(name);
                }
            }
            url = next;
        }
    }

    async fn send(
        &self,
        spec: SendSpec,
        what: &str,
        max_payload_bytes: usize,
    ) -> Result<DurableHttpResponse, SendFailure> {
        let client = self.client()?;
        let limit = spec.max_response_bytes;
        let fail_on_status = spec.fail_on_status.clone();
        let out = self.prepare(spec, what).await?;
        let (mut response, url, method) = Self::exchange(client, out, what).await?;
        // A HEAD response declares the length of a body it does not carry.
        let bodiless = method == reqwest::Method::HEAD;
        let status = response.status();
        let payload_limit = max_payload_bytes as u64;
        // Recorded bodies are never smaller than the bytes read (JSON escaping and base64
        // only grow them), so reading stops at the smaller of the two limits.
        let read_limit = limit.min(payload_limit);
        let too_large = || too_large(what, limit, Some(payload_limit));
        if !bodiless && response.content_length().is_some_and(|n| n > read_limit) {
            return Err(too_large());
        }
        let mut recorded: BTreeMap<String, String> = BTreeMap::new();
        for (name, value) in response.headers() {
            let value = String::from_utf8_lossy(value.as_bytes());
            // Repeated lines join as one list (RFC 9110, 5.3), except `set-cookie`, whose
            // values hold commas (`Expires=Wed, 21 Oct …`): its lines join with a newline,
            // which no header value holds.
            let separator = if name == reqwest::header::SET_COOKIE {
                "\n"
            } else {
                ", "
            };
            recorded
                .entry(name.as_str().to_owned())
                .and_modify(|v| {
                    v.push_str(separator);
                    v.push_str(&value);
                })
                .or_insert_with(|| value.into_owned());
        }
        let mut body = Vec::new();
        // Chunk by chunk, so a body past the limit is never held whole.
        while let Some(chunk) = response.chunk().await.map_err(|e| transport(&e, what))? {
            if (body.len() + chunk.len()) as u64 > read_limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        if fail_on_status.contains(&status.as_u16()) {
            let retry_after = recorded.get("retry-after").map(String::as_str);
            return Err(retriable_status(what, status.as_u16(), &body, retry_after));
        }
        let response = DurableHttpResponse {
            status: status.as_u16(),
            headers: recorded,
            body,
            uri: Some(url.into()),
        };
        // The response is recorded as the task's output: check its recorded size here, so
        // the failure names both limits instead of the worker's bare `PayloadTooLarge`.
        let recorded_len = crate::error::encode(&response).map_or(0, |p| p.len());
        if recorded_len > max_payload_bytes {
            return Err(non_retriable(
                "HttpResponseTooLarge",
                format!(
                    "{what}: the response (a body of {} bytes) takes {recorded_len} bytes once \
                     recorded (JSON escaping, base64 for binary bodies), over the worker's \
                     `Limits::max_payload_bytes` of {payload_limit} \
                     (`DurableHttpRequest::max_response_bytes` is {limit})",
                    response.body.len()
                ),
            ));
        }
        Ok(response)
    }
}

impl Activity for HttpActivity {
    const NAME: &'static str = HTTP_ACTIVITY_NAME;
    type Input = SendSpec;
    type Output = DurableHttpResponse;
    type Error = SendFailure;

    async fn run(
        &self,
        ctx: ActivityContext,
        spec: SendSpec,
    ) -> Result<DurableHttpResponse, SendFailure> {
        let timeout = Duration::from_millis(spec.timeout_ms);
        let what = format!("{} {}", spec.method, spec.uri);
        tokio::select! {
            r = tokio::time::timeout(timeout, self.send(spec, &what, ctx.max_payload_bytes)) => r.unwrap_or_else(|_| {
                Err(retriable(
                    "HttpTimeout",
                    format!("{what}: no complete response within the request timeout of {timeout:?}"),
                ))
            }),
            () = ctx.cancellation.cancelled() => Err(retriable(
                "HttpCancelled",
                format!("{what}: the worker cancelled the request"),
            )),
        }
    }
}

/// A header value holding a secret, marked sensitive; an invalid one is reported without it.
fn secret_value(
    value: &str,
    header: &str,
    source: &str,
    what: &str,
) -> Result<HeaderValue, SendFailure> {
    let mut value = HeaderValue::from_str(value).map_err(|_| {
        non_retriable(
            "HttpInvalidRequest",
            format!("{what}: token source `{source}` gave a value not valid in header `{header}`"),
        )
    })?;
    value.set_sensitive(true);
    Ok(value)
}

fn transport(e: &reqwest::Error, what: &str) -> SendFailure {
    let mut details = FailureDetails::new("HttpTransportError", format!("{what}: {e}"));
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        details.causes.push(s.to_string());
        source = s.source();
    }
    SendFailure(details)
}

/// The client used when the worker was given none (see [`super::client_builder`]).
fn default_client() -> Result<reqwest::Client, String> {
    client_builder()
        .map_err(|e| format!("cannot set up TLS for durable HTTP calls: {e}"))?
        .build()
        .map_err(|e| format!("cannot build the HTTP client for durable HTTP calls: {e}"))
}

/// HTTP/1 over the shared rustls configuration (`crate::tls`: the `ring` provider, set
/// here so no process-wide provider is needed or disturbed; the platform's roots, or the
/// Mozilla roots of `webpki-roots` when the platform has none).
pub(super) fn client_builder() -> Result<reqwest::ClientBuilder, rustls::Error> {
    let mut tls = crate::tls::client_config()?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Redirects are followed by the activity itself, which drops secrets when the origin
    // changes; reqwest would carry custom secret headers to any host.
    Ok(reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .tls_backend_preconfigured(tls)
        .user_agent(concat!("durable/", env!("CARGO_PKG_VERSION"))))
}
