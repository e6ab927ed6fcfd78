//! [`HttpRequestRecord`]: a read-only view of one request of a durable HTTP call, as history
//! records it (the input of one `BuiltIn::HttpActivity` task).

use std::collections::BTreeMap;
use std::time::Duration;

use super::{DurableHttpResponse, SendSpec};
use crate::error::FailureDetails;

/// One request of a durable HTTP call as history records it: the input of one
/// `BuiltIn::HttpActivity` task ([`HTTP_ACTIVITY_NAME`](super::HTTP_ACTIVITY_NAME)) — the
/// first request, a `GET` poll of a `202`'s `Location`, or a retry.
///
/// Secrets appear by the name of their [`HttpTokenSource`](super::HttpTokenSource) only.
/// Read one from a `TaskScheduled` event's input with [`parse`](Self::parse); test doubles
/// answering in place of the network get one per request, and answer as the real activity
/// would with [`outcome`](Self::outcome).
///
/// # Examples
///
/// ```
/// use durable_core::{Event, HistoryEvent};
/// use durable_core::http_call::{HTTP_ACTIVITY_NAME, HttpRequestRecord};
///
/// /// The URIs an instance's history shows it requested, in order.
/// fn requested(history: &[HistoryEvent]) -> Vec<String> {
///     history
///         .iter()
///         .filter_map(|e| match &e.event {
///             Event::TaskScheduled { name, input, .. } if name == HTTP_ACTIVITY_NAME => {
///                 HttpRequestRecord::parse(input).ok().map(|r| r.uri().to_owned())
///             }
///             _ => None,
///         })
///         .collect()
/// }
/// assert!(requested(&[]).is_empty());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequestRecord(SendSpec);

impl HttpRequestRecord {
    /// Reads a request from the recorded input of a `BuiltIn::HttpActivity` task (JSON).
    ///
    /// # Errors
    /// When `input` is not a recorded HTTP request.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::http_call::HttpRequestRecord;
    ///
    /// let input = r#"{"method":"GET","uri":"https://api.example.com/","timeoutMs":5000,"maxResponseBytes":1024}"#;
    /// let request = HttpRequestRecord::parse(input)?;
    /// assert_eq!((request.method(), request.uri()), ("GET", "https://api.example.com/"));
    /// assert!(HttpRequestRecord::parse("42").is_err());
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn parse(input: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(input).map(Self)
    }

    /// The method, upper-cased (`GET` for a poll).
    ///
    /// # Examples
    ///
    /// ```
    /// # use durable_core::http_call::HttpRequestRecord;
    /// let r = HttpRequestRecord::parse(r#"{"method":"PUT","uri":"http://h/","timeoutMs":1,"maxResponseBytes":1}"#)?;
    /// assert_eq!(r.method(), "PUT");
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn method(&self) -> &str {
        &self.0.method
    }

    /// The absolute URI requested (for a poll, the `Location` resolved against the URI
    /// that answered `202`).
    ///
    /// # Examples
    ///
    /// ```
    /// # use durable_core::http_call::HttpRequestRecord;
    /// let r = HttpRequestRecord::parse(r#"{"method":"GET","uri":"http://h/a","timeoutMs":1,"maxResponseBytes":1}"#)?;
    /// assert_eq!(r.uri(), "http://h/a");
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn uri(&self) -> &str {
        &self.0.uri
    }

    /// The recorded headers by lower-case name (secret ones are in
    /// [`secret_headers`](Self::secret_headers)).
    ///
    /// # Examples
    ///
    /// ```
    /// # use durable_core::http_call::HttpRequestRecord;
    /// let r = HttpRequestRecord::parse(
    ///     r#"{"method":"GET","uri":"http://h/","headers":{"accept":"text/csv"},"timeoutMs":1,"maxResponseBytes":1}"#,
    /// )?;
    /// assert_eq!(r.headers().len(), 1);
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn headers(&self) -> &BTreeMap<String, String> {
        &self.0.headers
    }

    /// The value of recorded header `name`, matched case-insensitively.
    ///
    /// # Examples
    ///
    /// ```
    /// # use durable_core::http_call::HttpRequestRecord;
    /// let r = HttpRequestRecord::parse(
    ///     r#"{"method":"GET","uri":"http://h/","headers":{"accept":"text/csv"},"timeoutMs":1,"maxResponseBytes":1}"#,
    /// )?;
    /// assert_eq!(r.header("Accept"), Some("text/csv"));
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn header(&self, name: &str) -> Option<&str> {
        self.0
            .headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// The body (empty for a poll).
    ///
    /// # Examples
    ///
    /// ```
    /// # use durable_core::http_call::HttpRequestRecord;
    /// let r = HttpRequestRecord::parse(r#"{"method":"POST","uri":"http://h/","body":"hi","timeoutMs":1,"maxResponseBytes":1}"#)?;
    /// assert_eq!(r.body(), b"hi");
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn body(&self) -> &[u8] {
        &self.0.body
    }

    /// The body as text (invalid UTF-8 replaced with `U+FFFD`).
    ///
    /// # Examples
    ///
    /// ```
    /// # use durable_core::http_call::HttpRequestRecord;
    /// let r = HttpRequestRecord::parse(r#"{"method":"POST","uri":"http://h/","body":"hi","timeoutMs":1,"maxResponseBytes":1}"#)?;
    /// assert_eq!(r.text(), "hi");
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.0.body)
    }

    /// The name of the token source giving its `Authorization: Bearer` token, if any.
    ///
    /// # Examples
    ///
    /// ```
    /// # use durable_core::http_call::HttpRequestRecord;
    /// let r = HttpRequestRecord::parse(
    ///     r#"{"method":"GET","uri":"http://h/","tokenSource":"graph","timeoutMs":1,"maxResponseBytes":1}"#,
    /// )?;
    /// assert_eq!(r.token_source(), Some("graph"));
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn token_source(&self) -> Option<&str> {
        self.0.token_source.as_deref()
    }

    /// The secret headers: lower-case header name → the name of the token source giving its
    /// value. The values themselves are never recorded.
    ///
    /// # Examples
    ///
    /// ```
    /// # use durable_core::http_call::HttpRequestRecord;
    /// let r = HttpRequestRecord::parse(
    ///     r#"{"method":"GET","uri":"http://h/","secretHeaders":{"x-api-key":"partner"},"timeoutMs":1,"maxResponseBytes":1}"#,
    /// )?;
    /// assert_eq!(r.secret_headers()["x-api-key"], "partner");
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn secret_headers(&self) -> &BTreeMap<String, String> {
        &self.0.secret_headers
    }

    /// The timeout of this request (the call's [`timeout`](super::DurableHttpRequest::timeout),
    /// capped by what was left of its total timeout).
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use durable_core::http_call::HttpRequestRecord;
    /// let r = HttpRequestRecord::parse(r#"{"method":"GET","uri":"http://h/","timeoutMs":1500,"maxResponseBytes":1}"#)?;
    /// assert_eq!(r.timeout(), Duration::from_millis(1500));
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.0.timeout_ms)
    }

    /// The largest response body accepted, in bytes.
    ///
    /// # Examples
    ///
    /// ```
    /// # use durable_core::http_call::HttpRequestRecord;
    /// let r = HttpRequestRecord::parse(r#"{"method":"GET","uri":"http://h/","timeoutMs":1,"maxResponseBytes":64}"#)?;
    /// assert_eq!(r.max_response_bytes(), 64);
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn max_response_bytes(&self) -> u64 {
        self.0.max_response_bytes
    }

    /// `true` when an answer with `status` fails this attempt: the call has a
    /// [`retry`](super::DurableHttpRequest::retry) policy that retries that status.
    ///
    /// # Examples
    ///
    /// ```
    /// # use durable_core::http_call::HttpRequestRecord;
    /// let r = HttpRequestRecord::parse(
    ///     r#"{"method":"GET","uri":"http://h/","timeoutMs":1,"maxResponseBytes":1,"failOnStatus":[503]}"#,
    /// )?;
    /// assert!(r.fails_on(503));
    /// assert!(!r.fails_on(500));
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn fails_on(&self, status: u16) -> bool {
        self.0.fail_on_status.contains(&status)
    }

    /// What the built-in activity makes of `response` to this request: the response, or
    /// the failure of the attempt — retriable (`HttpRetriableStatus`) when the call's retry
    /// policy [fails on](Self::fails_on) its status, non-retriable (`HttpResponseTooLarge`)
    /// when its body passes [`max_response_bytes`](Self::max_response_bytes). A test
    /// double answering in place of the network returns this, so the orchestration sees
    /// what a real server's answer would give it.
    ///
    /// # Errors
    /// The failure of the attempt, as above.
    ///
    /// # Examples
    ///
    /// ```
    /// # use durable_core::http_call::{DurableHttpResponse, HttpRequestRecord};
    /// let r = HttpRequestRecord::parse(
    ///     r#"{"method":"GET","uri":"http://h/","timeoutMs":1,"maxResponseBytes":8,"failOnStatus":[503]}"#,
    /// )?;
    /// assert_eq!(r.outcome(DurableHttpResponse::new(404)).unwrap().status, 404);
    /// let busy = r.outcome(DurableHttpResponse::new(503)).unwrap_err();
    /// assert_eq!((busy.error_type.as_str(), busy.non_retriable), ("HttpRetriableStatus", false));
    /// let big = r.outcome(DurableHttpResponse::new(200).with_body("0123456789")).unwrap_err();
    /// assert_eq!((big.error_type.as_str(), big.non_retriable), ("HttpResponseTooLarge", true));
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn outcome(
        &self,
        response: DurableHttpResponse,
    ) -> Result<DurableHttpResponse, FailureDetails> {
        let what = format!("{} {}", self.0.method, self.0.uri);
        let limit = self.0.max_response_bytes;
        if response.body.len() as u64 > limit {
            return Err(super::send::too_large(&what, limit, None).into_details());
        }
        if self.fails_on(response.status) {
            return Err(super::send::retriable_status(
                &what,
                response.status,
                &response.body,
                response.header("retry-after"),
            )
            .into_details());
        }
        Ok(response)
    }
}
