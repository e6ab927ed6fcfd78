//! Plumbing of the HTTP API: JSON responses and errors, query parsing, body reading,
//! token checks, URL and token encodings.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::error::ClientError;
use crate::history::RuntimeStatus;
use crate::ids::Timestamp;

/// A JSON response with `Content-Type: application/json; charset=utf-8`.
pub(super) fn json_response<T: Serialize + ?Sized>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => {
            let mut response = (status, bytes).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json; charset=utf-8"),
            );
            response
        }
        Err(e) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "SerializationFailed",
            format!("could not serialize the response: {e}"),
        )
        .into_response(),
    }
}

/// An error answer: a status code and a JSON body (see [`error_body`]).
#[derive(Debug)]
pub(super) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// The HTTP status of the answer.
    pub(super) fn status(&self) -> StatusCode {
        self.status
    }

    /// The human-readable message.
    pub(super) fn message(&self) -> &str {
        &self.message
    }

    pub(super) fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub(super) fn invalid_query(name: &str, value: &str, expected: &str) -> Self {
        Self::bad_request(
            "InvalidQueryParameter",
            format!(
                "query parameter `{name}` has the invalid value {value:?}: expected {expected}"
            ),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, error_body(self.code, &self.message)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        response
    }
}

/// The JSON body of every error answer: `{"error": code, "message": text, "Message": text,
/// "ExceptionMessage": text}`. `Message` and `ExceptionMessage` are the keys of ASP.NET's
/// error bodies, which Durable Functions clients read (the Python client's `start_new`
/// raises `body["ExceptionMessage"]` on a 400).
pub(super) fn error_body(code: &str, message: &str) -> Vec<u8> {
    #[derive(Serialize)]
    struct Body<'a> {
        error: &'a str,
        message: &'a str,
        #[serde(rename = "Message")]
        message_pascal: &'a str,
        #[serde(rename = "ExceptionMessage")]
        exception_message: &'a str,
    }
    let body = Body {
        error: code,
        message,
        message_pascal: message,
        exception_message: message,
    };
    // A struct of strings always serializes.
    serde_json::to_vec(&body).unwrap_or_default()
}

impl From<ClientError> for ApiError {
    #[allow(
        unreachable_patterns,
        reason = "ClientError may grow variants (entities)"
    )]
    fn from(e: ClientError) -> Self {
        let message = e.to_string();
        let (status, code) = match e {
            ClientError::InstanceNotFound(_) => (StatusCode::NOT_FOUND, "InstanceNotFound"),
            ClientError::InstanceNotRunning(_) => (StatusCode::GONE, "InstanceNotRunning"),
            ClientError::Replaced(_) => (StatusCode::GONE, "InstanceReplaced"),
            ClientError::InstanceAlreadyExists(_) => {
                (StatusCode::CONFLICT, "InstanceAlreadyExists")
            }
            ClientError::InstanceStillRunning(_) => {
                (StatusCode::PRECONDITION_FAILED, "InstanceStillRunning")
            }
            ClientError::UnknownOrchestrator(_) => (StatusCode::BAD_REQUEST, "UnknownOrchestrator"),
            ClientError::InvalidInstanceId(_) => (StatusCode::BAD_REQUEST, "InvalidInstanceId"),
            ClientError::PayloadDecode(_) => (StatusCode::BAD_REQUEST, "InvalidPayload"),
            ClientError::InvalidEventName { .. } => (StatusCode::BAD_REQUEST, "InvalidEventName"),
            ClientError::PayloadTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge")
            }
            ClientError::Failed(_) => (StatusCode::INTERNAL_SERVER_ERROR, "OrchestrationFailed"),
            ClientError::Terminated { .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, "OrchestrationTerminated")
            }
            ClientError::CannotRewind { .. } => (StatusCode::BAD_REQUEST, "CannotRewind"),
            ClientError::InvalidState { .. } => (StatusCode::BAD_REQUEST, "InvalidState"),
            ClientError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "StoreError"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "ClientError"),
        };
        Self::new(status, code, message)
    }
}

impl From<crate::error::InvalidInstanceId> for ApiError {
    fn from(e: crate::error::InvalidInstanceId) -> Self {
        Self::bad_request("InvalidInstanceId", e.to_string())
    }
}

/// Parsed query parameters; names are matched case-insensitively, as ASP.NET does.
#[derive(Debug, Default)]
pub(super) struct Query(Vec<(String, String)>);

impl Query {
    /// Parses an `application/x-www-form-urlencoded` query string.
    pub(super) fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        let mut pairs = Vec::new();
        for part in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            let name = percent_decode(name).ok_or_else(|| {
                ApiError::bad_request("InvalidQueryString", "the query string is not valid UTF-8")
            })?;
            let value = percent_decode(value).ok_or_else(|| {
                ApiError::bad_request(
                    "InvalidQueryString",
                    format!("the value of query parameter `{name}` is not valid UTF-8"),
                )
            })?;
            pairs.push((name, value));
        }
        Ok(Self(pairs))
    }

    /// The first value of `name`.
    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.all(name).next()
    }

    /// Every pair, in order.
    pub(super) fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Every value of `name`.
    pub(super) fn all<'a, 'n>(
        &'a self,
        name: &'n str,
    ) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
        self.0
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A boolean (`true`/`false` in any casing); absent or empty gives `default`.
    pub(super) fn bool(&self, name: &str, default: bool) -> Result<bool, ApiError> {
        match self.get(name).map(str::trim) {
            None | Some("") => Ok(default),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
            Some(v) => Err(ApiError::invalid_query(name, v, "`true` or `false`")),
        }
    }

    /// An ISO 8601 time (`2024-01-01T00:00:00Z`, with or without fraction and offset, or a
    /// bare date meaning midnight UTC).
    pub(super) fn timestamp(&self, name: &str) -> Result<Option<Timestamp>, ApiError> {
        match self.get(name).map(str::trim) {
            None | Some("") => Ok(None),
            Some(v) => parse_time(v).map(Some).ok_or_else(|| {
                ApiError::invalid_query(
                    name,
                    v,
                    "an ISO 8601 date-time such as 2024-01-01T00:00:00Z",
                )
            }),
        }
    }

    /// A non-negative number of seconds (fractions allowed), as Durable Functions parses
    /// `timeout` and `pollingInterval`.
    pub(super) fn seconds(&self, name: &str) -> Result<Option<Duration>, ApiError> {
        match self.get(name).map(str::trim) {
            None | Some("") => Ok(None),
            Some(v) => v
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
                .map(Some)
                .ok_or_else(|| {
                    ApiError::invalid_query(name, v, "a non-negative number of seconds")
                }),
        }
    }

    /// A non-negative integer.
    pub(super) fn count(&self, name: &str) -> Result<Option<usize>, ApiError> {
        match self.get(name).map(str::trim) {
            None | Some("") => Ok(None),
            Some(v) => v
                .parse::<usize>()
                .map(Some)
                .map_err(|_| ApiError::invalid_query(name, v, "a non-negative integer")),
        }
    }

    /// A runtime-status list (`runtimeStatus=Running,Pending` and/or repeated). `None` when
    /// absent. `Canceled`, a Durable Functions status this engine never produces, is
    /// accepted and matches nothing.
    pub(super) fn statuses(&self, name: &str) -> Result<Option<Vec<RuntimeStatus>>, ApiError> {
        let mut any = false;
        let mut out = Vec::new();
        for value in self.all(name) {
            for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                any = true;
                if item.eq_ignore_ascii_case("Canceled") {
                    continue;
                }
                let status = RuntimeStatus::parse(item).ok_or_else(|| {
                    ApiError::invalid_query(
                        name,
                        item,
                        "a comma-separated list of Pending, Running, Suspended, Completed, Failed, \
                         Terminated, ContinuedAsNew",
                    )
                })?;
                if !out.contains(&status) {
                    out.push(status);
                }
            }
        }
        Ok(any.then_some(out))
    }
}

fn parse_time(text: &str) -> Option<Timestamp> {
    if let Some(t) = Timestamp::parse_rfc3339(text) {
        return Some(t);
    }
    // A `+hh:mm` offset sent unencoded arrives as a space.
    if let Some(pos) = text.rfind(' ') {
        let fixed = format!("{}+{}", &text[..pos], &text[pos + 1..]);
        if let Some(t) = Timestamp::parse_rfc3339(&fixed) {
            return Some(t);
        }
    }
    // A bare date.
    if text.len() == 10 && !text.contains(['T', 't', ' ']) {
        return Timestamp::parse_rfc3339(&format!("{text}T00:00:00Z"));
    }
    None
}

/// Decodes `+` and `%XX`; malformed escapes are kept literally. `None` if not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match (hex_value(bytes[i + 1]), hex_value(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push(h << 4 | l);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters, for one path segment.
pub(super) fn encode_path_segment(text: &str) -> String {
    // `.` and `..` as a whole segment would be collapsed by clients ("dot segments"), so
    // their dots are encoded; elsewhere a dot stays as it is.
    let dot_segment = text == "." || text == "..";
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        let keep = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~');
        if keep || (b == b'.' && !dot_segment) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    out
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Appends `name=value` (the value percent-encoded) to a URL's query string.
pub(super) fn push_query(url: &mut String, name: &str, value: &str) {
    url.push(if url.contains('?') { '&' } else { '?' });
    url.push_str(&encode_path_segment(name));
    url.push('=');
    url.push_str(&encode_path_segment(value));
}

/// Encodes a store continuation token (which may hold any characters of an instance id)
/// as a header-safe hex string.
pub(super) fn encode_token(token: &str) -> String {
    let mut out = String::with_capacity(token.len() * 2);
    for b in token.bytes() {
        out.push(char::from(HEX[usize::from(b >> 4)].to_ascii_lowercase()));
        out.push(char::from(HEX[usize::from(b & 0xf)].to_ascii_lowercase()));
    }
    out
}

/// Decodes [`encode_token`]'s output.
pub(super) fn decode_token(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 2);
    for pair in bytes.chunks_exact(2) {
        out.push(hex_value(pair[0])? << 4 | hex_value(pair[1])?);
    }
    String::from_utf8(out).ok()
}

/// Reads a whole request body, refusing (413) bodies larger than `limit` bytes without
/// buffering them.
pub(super) async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PayloadTooLarge",
            format!("the request body exceeds the limit of {limit} bytes"),
        )
    };
    let mut body = body;
    if body.size_hint().lower() > limit as u64 {
        return Err(too_large());
    }
    let mut buf = Vec::new();
    while let Some(frame) =
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
    {
        let frame = frame.map_err(|e| {
            ApiError::bad_request(
                "UnreadableBody",
                format!("could not read the request body: {e}"),
            )
        })?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(too_large());
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(buf))
}

/// The body as JSON text: empty (or whitespace) is `null`; anything else must be valid
/// JSON, else 400.
///
/// A body that is a JSON string holding another JSON string — how Durable Functions
/// clients send a string, `"\"World\""` for `"World"` — is taken as the inner string.
/// Other double-encoded bodies (`"[1, 2]"`, `"5"`) are kept as they are and decoded when
/// their type is known (`crate::payload::decode_external`).
pub(super) fn json_body(bytes: &[u8]) -> Result<String, ApiError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| {
            ApiError::bad_request(
                "InvalidJson",
                "Invalid JSON content: the body is not valid UTF-8",
            )
        })?
        .trim();
    if text.is_empty() {
        return Ok("null".to_owned());
    }
    serde_json::from_str::<serde::de::IgnoredAny>(text)
        .map_err(|e| ApiError::bad_request("InvalidJson", format!("Invalid JSON content: {e}")))?;
    if text.starts_with('"')
        && let Ok(inner) = serde_json::from_str::<String>(text)
    {
        let inner = inner.trim();
        if inner.starts_with('"') && serde_json::from_str::<String>(inner).is_ok() {
            return Ok(inner.to_owned());
        }
    }
    Ok(text.to_owned())
}

/// Middleware: requires `Authorization: Bearer <token>` or `?code=<token>`.
pub(super) async fn require_token(
    State(token): State<Arc<str>>,
    request: Request,
    next: Next,
) -> Response {
    let from_header = bearer(request.headers()).map(str::to_owned);
    let from_query = || {
        Query::parse(request.uri().query())
            .ok()
            .and_then(|q| q.get("code").map(str::to_owned))
    };
    let presented = from_header.or_else(from_query);
    let ok = !token.is_empty()
        && presented.is_some_and(|p| constant_time_eq(p.as_bytes(), token.as_bytes()));
    if ok {
        return next.run(request).await;
    }
    let mut response = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "Unauthorized",
        "this API requires `Authorization: Bearer <token>`",
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// The token of an `Authorization: Bearer <token>` header.
pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let (scheme, token) = headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim()
        .split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Without a bearer token, the API and the dashboard answer only requests addressed to this
/// machine (a loopback name, or the host of `HttpOptions::base_url`): a web page elsewhere
/// cannot reach them by pointing a name of its own at 127.0.0.1 (DNS rebinding).
pub(super) async fn require_local_host(
    State(base_url): State<Option<Arc<str>>>,
    request: Request,
    next: Next,
) -> Response {
    if addressed_to_this_machine(request.headers(), base_url.as_deref()) {
        return next.run(request).await;
    }
    ApiError::new(
        StatusCode::FORBIDDEN,
        "HostNotAllowed",
        "without a bearer token only requests addressed to this machine are answered \
         (localhost, 127.0.0.1 or [::1], or the host of HttpOptions::base_url); set \
         HttpOptions::bearer_token to serve under another name",
    )
    .into_response()
}

/// Whether the request's `Host` names this machine by a loopback name or address, or is the
/// host of `base_url` (a request without `Host` is HTTP/1.0 from a local tool).
pub(super) fn addressed_to_this_machine(headers: &HeaderMap, base_url: Option<&str>) -> bool {
    let Some(host) = headers.get(header::HOST) else {
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    let name = host_name(host.trim()).to_ascii_lowercase();
    let loopback = name == "localhost"
        || name == "::1"
        || name
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback());
    loopback
        || base_url
            .and_then(|b| b.split_once("://"))
            .map(|(_, rest)| rest.split(['/', '?', '#']).next().unwrap_or(""))
            .is_some_and(|authority| host_name(authority).eq_ignore_ascii_case(&name))
}

/// The host of a `host[:port]` authority, without the brackets of an IPv6 literal.
fn host_name(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    authority.split(':').next().unwrap_or(authority)
}

/// Compares without an early exit, so timing tells nothing about a token.
pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_encoded_so_clients_do_not_collapse_them() {
        assert_eq!(encode_path_segment("."), "%2E");
        assert_eq!(encode_path_segment(".."), "%2E%2E");
        assert_eq!(encode_path_segment("a.b"), "a.b");
        assert_eq!(encode_path_segment("..."), "...");
        assert_eq!(encode_path_segment("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn query_values_are_decoded_and_matched_case_insensitively() {
        let q = Query::parse(Some("ShowHistory=TRUE&reason=a+b%20c&runtimeStatus=Running,pending&runtimeStatus=Failed&x=%zz")).unwrap();
        assert!(q.bool("showHistory", false).unwrap());
        assert!(!q.bool("showInput", false).unwrap());
        assert_eq!(q.get("REASON"), Some("a b c"));
        assert_eq!(q.get("x"), Some("%zz"));
        assert_eq!(
            q.statuses("runtimeStatus").unwrap().unwrap(),
            vec![
                RuntimeStatus::Running,
                RuntimeStatus::Pending,
                RuntimeStatus::Failed
            ]
        );
        assert!(
            Query::parse(Some("showHistory=yes"))
                .unwrap()
                .bool("showHistory", false)
                .is_err()
        );
        assert!(Query::parse(Some("a=%FF")).is_err());
        assert_eq!(
            Query::parse(Some("runtimeStatus=Canceled"))
                .unwrap()
                .statuses("runtimeStatus")
                .unwrap(),
            Some(vec![])
        );
        assert!(
            Query::parse(Some("runtimeStatus=Bogus"))
                .unwrap()
                .statuses("runtimeStatus")
                .is_err()
        );
    }

    #[test]
    fn times_accept_what_clients_send() {
        let q = Query::parse(Some(
            "a=2024-01-01T00:00:00Z&b=2024-01-01T02:00:00+02:00&c=2024-01-01&d=yesterday",
        ))
        .unwrap();
        let midnight = Timestamp::parse_rfc3339("2024-01-01T00:00:00Z");
        assert_eq!(q.timestamp("a").unwrap(), midnight);
        assert_eq!(q.timestamp("b").unwrap(), midnight);
        assert_eq!(q.timestamp("c").unwrap(), midnight);
        assert!(q.timestamp("d").is_err());
        assert_eq!(q.timestamp("e").unwrap(), None);
    }

    #[test]
    fn seconds_and_counts() {
        let q = Query::parse(Some("t=1.5&n=-1&c=3")).unwrap();
        assert_eq!(q.seconds("t").unwrap(), Some(Duration::from_millis(1500)));
        assert!(q.seconds("n").is_err());
        assert!(q.count("n").is_err());
        assert_eq!(q.count("c").unwrap(), Some(3));
    }

    #[test]
    fn encodings_round_trip() {
        assert_eq!(encode_path_segment("a b/ü"), "a%20b%2F%C3%BC");
        for t in ["", "order-42", "ü@x y"] {
            assert_eq!(decode_token(&encode_token(t)).as_deref(), Some(t));
        }
        assert_eq!(decode_token("zz"), None);
        assert_eq!(decode_token("abc"), None);
    }

    #[test]
    fn json_bodies() {
        assert_eq!(json_body(b"  ").unwrap(), "null");
        assert_eq!(json_body(b" \"x\" ").unwrap(), "\"x\"");
        // What Durable Functions clients send for the string "World", and for [1, 2].
        assert_eq!(json_body(br#""\"World\"""#).unwrap(), r#""World""#);
        assert_eq!(json_body(br#""[1, 2]""#).unwrap(), r#""[1, 2]""#);
        assert_eq!(
            json_body(br#""\"a\" and \"b\"""#).unwrap(),
            r#""\"a\" and \"b\"""#
        );
        assert!(json_body(b"{oops").is_err());
        assert!(json_body(&[0xff]).is_err());
    }
}
