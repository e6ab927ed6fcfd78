//! Shared state: an activity that does real IO with resources the worker holds — an HTTP
//! client (its connection pool shared by every run) and a configured `User-Agent` — handed
//! in as `State<T>` parameters. It reads instance statuses from a Durable Functions
//! management API (the demo's own server) and [`audit`] fans it out.
//!
//! The worker is given the state once:
//!
//! ```no_run
//! # use durable_core::prelude::*;
//! # use examples::status::{UserAgent, http_client};
//! # fn f(worker: durable_core::WorkerBuilder) -> durable_core::WorkerBuilder {
//! worker
//!     .state(http_client())
//!     .state(UserAgent("durable-demo/1".into()))
//!     .register(examples::status::fetch_status)
//!     .register(examples::status::audit)
//! # }
//! ```
//!
//! The orchestration never sees the client: it calls the activity with a [`StatusQuery`].

use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use durable_core::prelude::*;
use serde::{Deserialize, Serialize};

/// The HTTP client activities share (hyper's pooled client).
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A new HTTP client, to give the worker once.
pub fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// The `User-Agent` the activities send (configuration as state).
#[derive(Debug, Clone)]
pub struct UserAgent(pub String);

/// Which instance to look up, on which management API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusQuery {
    /// The API's base URL, e.g. `http://127.0.0.1:7071/runtime/webhooks/durabletask`.
    pub api: String,
    /// The instance to look up.
    pub instance_id: String,
}

/// Reads an instance's `runtimeStatus` over HTTP; `None` when the API does not know it.
///
/// # Errors
///
/// A transport error or a 5xx answer is retriable; another unexpected answer is not.
#[activity]
pub async fn fetch_status(
    State(http): State<HttpClient>,
    State(agent): State<UserAgent>,
    query: StatusQuery,
) -> Result<Option<String>, ActivityError> {
    let url = format!(
        "{}/instances/{}",
        query.api,
        path_segment(&query.instance_id)
    );
    let request = axum::http::Request::get(&url)
        .header("user-agent", agent.0)
        .body(Full::default())
        .map_err(|e| ActivityError::non_retriable(format!("bad request for {url}: {e}")))?;
    let response = http
        .request(request)
        .await
        .map_err(|e| ActivityError::new(format!("GET {url}: {e}")))?;
    let status = response.status();
    if status == axum::http::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| ActivityError::new(format!("GET {url}: reading the body: {e}")))?
        .to_bytes();
    if status.is_server_error() {
        return Err(ActivityError::new(format!("GET {url}: {status}")));
    }
    if !status.is_success() {
        return Err(ActivityError::non_retriable(format!("GET {url}: {status}")));
    }
    let json: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ActivityError::non_retriable(format!("GET {url}: not JSON: {e}")))?;
    Ok(json["runtimeStatus"].as_str().map(str::to_owned))
}

/// Percent-encodes everything but unreserved characters.
fn path_segment(s: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// What [`audit`] looks up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRequest {
    /// The management API's base URL.
    pub api: String,
    /// The instances to look up.
    pub instance_ids: Vec<String>,
}

/// Looks up several instances' statuses in parallel: `(id, status)` in request order,
/// `None` for an unknown instance.
#[orchestrator]
pub async fn audit(
    ctx: OrchestrationContext,
    req: AuditRequest,
) -> Result<Vec<(String, Option<String>)>, OrchestrationError> {
    let lookups = req.instance_ids.iter().map(|id| {
        let query = StatusQuery {
            api: req.api.clone(),
            instance_id: id.clone(),
        };
        ctx.call(fetch_status, query)
    });
    let statuses = ctx.when_all(lookups).await;
    let mut out = Vec::new();
    for (id, status) in req.instance_ids.into_iter().zip(statuses) {
        out.push((id, status?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::path_segment;

    #[test]
    fn ids_are_percent_encoded_in_the_path() {
        assert_eq!(path_segment("order-7"), "order-7");
        assert_eq!(path_segment("a b/ü"), "a%20b%2F%C3%BC");
    }
}
