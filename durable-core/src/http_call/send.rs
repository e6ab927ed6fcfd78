//! The built-in activity `BuiltIn::HttpActivity`: sends one request and records the
//! response. Secrets are fetched here, at send time, and never leave this module.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};

use super::{DurableHttpResponse, HTTP_ACTIVITY_NAME, HttpCallConfig, SendSpec};
use crate::error::{FailureDetails, ToFailure};
use crate::function::{Activity, ActivityContext};

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
pub(super) fn too_large(what: &str, limit: u64) -> SendFailure {
    non_retriable(
        "HttpResponseTooLarge",
        format!(
            "{what}: the response body exceeds the limit of {limit} bytes \
             (`DurableHttpRequest::max_response_bytes`)"
        ),
    )
}

/// The failure of an attempt answered with a status its retry policy retries.
pub(super) fn retriable_status(what: &str, status: u16, body: &[u8]) -> SendFailure {
    let status = reqwest::StatusCode::from_u16(status)
        .map_or_else(|_| status.to_string(), |s| s.to_string());
    let excerpt: String = String::from_utf8_lossy(body).chars().take(200).collect();
    retriable(
        "HttpRetriableStatus",
        format!("{what} answered {status}: {excerpt}"),
    )
}

fn retriable(error_type: &str, message: String) -> SendFailure {
    SendFailure(FailureDetails::new(error_type, message))
}

fn non_retriable(error_type: &str, message: String) -> SendFailure {
    SendFailure(FailureDetails::new(error_type, message).non_retriable())
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

    async fn send(&self, spec: SendSpec, what: &str) -> Result<DurableHttpResponse, SendFailure> {
        let client = self.client()?;
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
        if let Some(source) = &spec.token_source {
            let token = self.secret(source, what).await?;
            let value = secret_value(&format!("Bearer {token}"), "authorization", source, what)?;
            headers.insert(AUTHORIZATION, value);
        }
        for (header, source) in &spec.secret_headers {
            let name = HeaderName::from_bytes(header.as_bytes())
                .map_err(|_| invalid(format!("`{header}` is not a header name")))?;
            let secret = self.secret(source, what).await?;
            headers.insert(name, secret_value(&secret, header, source, what)?);
        }
        // A HEAD response declares the length of a body it does not carry.
        let bodiless = method == reqwest::Method::HEAD;
        let mut response = client
            .request(method, url)
            .headers(headers)
            .body(spec.body)
            .send()
            .await
            .map_err(|e| transport(&e, what))?;
        let status = response.status();
        let limit = spec.max_response_bytes;
        let too_large = || too_large(what, limit);
        if !bodiless && response.content_length().is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        let mut recorded: BTreeMap<String, String> = BTreeMap::new();
        for (name, value) in response.headers() {
            let value = String::from_utf8_lossy(value.as_bytes());
            recorded
                .entry(name.as_str().to_owned())
                .and_modify(|v| {
                    v.push_str(", ");
                    v.push_str(&value);
                })
                .or_insert_with(|| value.into_owned());
        }
        let mut body = Vec::new();
        // Chunk by chunk, so a body past the limit is never held whole.
        while let Some(chunk) = response.chunk().await.map_err(|e| transport(&e, what))? {
            if (body.len() + chunk.len()) as u64 > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        if spec.fail_on_status.contains(&status.as_u16()) {
            return Err(retriable_status(what, status.as_u16(), &body));
        }
        Ok(DurableHttpResponse {
            status: status.as_u16(),
            headers: recorded,
            body,
        })
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
            r = tokio::time::timeout(timeout, self.send(spec, &what)) => r.unwrap_or_else(|_| {
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

/// HTTP/1, rustls with the `ring` provider (set here, so no process-wide provider is needed
/// or disturbed), trusting the platform's roots, or the Mozilla roots of `webpki-roots` when
/// the platform has none.
pub(super) fn client_builder() -> Result<reqwest::ClientBuilder, rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "while loading the platform's trusted certificates");
    }
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if added == 0 {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    // rustls deprecates `ring` for its lack of post-quantum key exchange; aws-lc-rs has it
    // but needs a heavier C build. Ring negotiates X25519 and the NIST curves.
    #[allow(deprecated, reason = "ring: no C toolchain beyond a C compiler")]
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .user_agent(concat!("durable/", env!("CARGO_PKG_VERSION"))))
}
