//! The endpoint handlers.

use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::payload::{Show, StatusPayload, dtf_timestamp};
use super::util::{
    ApiError, Query, decode_token, encode_path_segment, encode_token, json_body, json_response,
    push_query, read_body,
};
use super::{AppState, CheckStatus, PREFIX};
use crate::client::StartOptions;
use crate::history::RuntimeStatus;
use crate::ids::InstanceId;
use crate::storage::{InstanceQuery, InstanceRecord};
use crate::trace_context::TraceContext;

type ApiResult = Result<Response, ApiError>;

/// `Retry-After` (seconds) of a 202 status answer, as in Durable Functions.
const STATUS_RETRY_AFTER: &str = "5";
/// The paging header, in both directions.
const CONTINUATION: &str = "x-ms-continuation-token";

fn path<T>(p: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    p.map(|Path(v)| v)
        .map_err(|e| ApiError::bad_request("InvalidPath", e.body_text()))
}

/// An id for operations that change an instance (the `@` prefix is reserved for entities).
fn instance_id(id: String) -> Result<InstanceId, ApiError> {
    Ok(InstanceId::new(id)?)
}

/// An id for reads and purges, which may name system instances (`@entity@key`).
fn any_instance_id(id: String) -> Result<InstanceId, ApiError> {
    Ok(InstanceId::new_system(id)?)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Purged {
    instances_deleted: usize,
}

// ------------------------------------------------------------------------------ start

/// `POST /orchestrators/{functionName}`.
pub(super) async fn start(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let name = path(name)?;
    start_impl(&state, name, None, query.as_deref(), &headers, body).await
}

/// `POST /orchestrators/{functionName}/{instanceId}`.
pub(super) async fn start_with_id(
    State(state): State<AppState>,
    params: Result<Path<(String, String)>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let (name, id) = path(params)?;
    start_impl(&state, name, Some(id), query.as_deref(), &headers, body).await
}

async fn start_impl(
    state: &AppState,
    name: String,
    id: Option<String>,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult {
    let query = Query::parse(query)?;
    let id = id.map(instance_id).transpose()?;
    let wait = wait_options(&query)?;
    let bytes = read_body(body, state.body_limit()).await?;
    let input = json_body(&bytes)?;
    let mut options = StartOptions::new();
    if let Some(id) = id {
        options = options.instance_id(id);
    }
    if let Some(version) = query.get("version").filter(|v| !v.is_empty()) {
        options = options.version(version);
    }
    if let Some(caller) = trace_context(headers) {
        // With OpenTelemetry in place the request's span is the caller's child, and the
        // start stores that span; otherwise the caller's context is stored as it came.
        #[cfg(feature = "opentelemetry")]
        let joined = crate::otel::current().is_some_and(|c| c.trace_id() == caller.trace_id());
        #[cfg(not(feature = "opentelemetry"))]
        let joined = false;
        if !joined {
            options = options.trace_context(caller);
        }
    }
    let id = state.client.start_raw(&name, &input, options).await?;
    after_start(state, &id, &query, headers, wait).await
}

/// The W3C trace context of a request (`traceparent`, and `tracestate` with its values
/// joined as the spec allows); `None` without a well-formed `traceparent`.
pub(crate) fn trace_context(headers: &HeaderMap) -> Option<TraceContext> {
    let parent = headers.get("traceparent")?.to_str().ok()?;
    let states: Vec<&str> = headers
        .get_all("tracestate")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let state = (!states.is_empty()).then(|| states.join(","));
    TraceContext::parse(parent, state.as_deref())
}

/// `timeout` and `pollingInterval` (seconds): wait-for-completion mode when `timeout` is
/// given. Durable Functions polls every `pollingInterval`; this engine is woken by the
/// store, so only the check `pollingInterval <= timeout` remains.
fn wait_options(query: &Query) -> Result<Option<Duration>, ApiError> {
    let timeout = query.seconds("timeout")?;
    let interval = query.seconds("pollingInterval")?;
    if let (Some(t), Some(i)) = (timeout, interval)
        && i > t
    {
        return Err(ApiError::bad_request(
            "InvalidQueryParameter",
            format!(
                "Total timeout {} should be bigger than retry timeout {}",
                t.as_secs_f64(),
                i.as_secs_f64()
            ),
        ));
    }
    Ok(timeout)
}

/// The answer to a start or restart: the check-status payload, or with a timeout, the
/// output once finished in time.
async fn after_start(
    state: &AppState,
    id: &InstanceId,
    query: &Query,
    headers: &HeaderMap,
    wait: Option<Duration>,
) -> ApiResult {
    let fail_500 = query.bool("returnInternalServerErrorOnFailure", false)?;
    let base = state.base_url(headers);
    let check_status = || {
        let mut c = CheckStatus::new(id, &base);
        if fail_500 {
            c = c.return_internal_server_error_on_failure();
        }
        if let Some(code) = state.link_code() {
            c = c.with_code(code);
        }
        c
    };
    let Some(timeout) = wait else {
        return Ok(check_status().into_response());
    };
    let record = match tokio::time::timeout(timeout, state.client.wait_for_completion(id)).await {
        Ok(record) => record?,
        Err(_) => return Ok(check_status().into_response()),
    };
    if record.status == RuntimeStatus::Completed {
        let output = record.output.as_deref().unwrap_or("null");
        let mut response = (StatusCode::OK, output.to_owned()).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        return Ok(response);
    }
    let show = Show {
        input: true,
        history_output: false,
    };
    Ok(status_response(&record, None, show, fail_500, None))
}

// ----------------------------------------------------------------------------- status

/// `GET /instances/{instanceId}`.
pub(super) async fn status(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> ApiResult {
    let id = any_instance_id(path(id)?)?;
    let query = Query::parse(raw.as_deref())?;
    let show_history = query.bool("showHistory", false)?;
    let show = Show {
        input: query.bool("showInput", true)?,
        history_output: query.bool("showHistoryOutput", false)?,
    };
    let fail_500 = query.bool("returnInternalServerErrorOnFailure", false)?;
    let (record, history) = if show_history {
        let (r, h) = state.client.status_with_history(&id).await?;
        (r, Some(h))
    } else {
        (state.client.status(&id).await?, None)
    };
    let mut location = format!(
        "{}{PREFIX}/instances/{}",
        state.base_url(&headers),
        encode_path_segment(id.as_str())
    );
    if let Some(raw) = raw.filter(|r| !r.is_empty()) {
        location.push('?');
        location.push_str(&raw);
    }
    if let Some(code) = state.link_code().filter(|_| query.get("code").is_none()) {
        push_query(&mut location, "code", code);
    }
    Ok(status_response(
        &record,
        history.as_deref(),
        show,
        fail_500,
        Some(&location),
    ))
}

/// 202 + `Location` + `Retry-After` while the instance runs, 200 when it has finished
/// (500 for Failed when asked).
fn status_response(
    record: &InstanceRecord,
    history: Option<&[crate::history::HistoryEvent]>,
    show: Show,
    fail_500: bool,
    location: Option<&str>,
) -> Response {
    let code = match record.status {
        RuntimeStatus::Failed if fail_500 => StatusCode::INTERNAL_SERVER_ERROR,
        RuntimeStatus::Completed | RuntimeStatus::Terminated | RuntimeStatus::Failed => {
            StatusCode::OK
        }
        _ => StatusCode::ACCEPTED,
    };
    let mut response = json_response(code, &StatusPayload::new(record, history, show));
    if code == StatusCode::ACCEPTED {
        let headers = response.headers_mut();
        if let Some(location) = location.and_then(|l| HeaderValue::from_str(l).ok()) {
            headers.insert(header::LOCATION, location);
        }
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from_static(STATUS_RETRY_AFTER),
        );
    }
    response
}

// ------------------------------------------------------------------------------- list

/// The filters shared by list and purge-by-filter; `None` when a status filter can match
/// nothing (only `Canceled`).
fn filters(query: &Query) -> Result<Option<InstanceQuery>, ApiError> {
    let mut q = InstanceQuery::new().created_between(
        query.timestamp("createdTimeFrom")?,
        query.timestamp("createdTimeTo")?,
    );
    if let Some(statuses) = query.statuses("runtimeStatus")? {
        if statuses.is_empty() {
            return Ok(None);
        }
        q = q.statuses(statuses);
    }
    Ok(Some(q))
}

/// `GET /instances`.
pub(super) async fn list(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> ApiResult {
    let query = Query::parse(raw.as_deref())?;
    let show = Show {
        input: query.bool("showInput", true)?,
        history_output: false,
    };
    let top = query.count("top")?;
    let continuation = continuation_header(&headers)?;
    let Some(mut q) = filters(&query)? else {
        return Ok(list_response(&[], show, None));
    };
    if let Some(prefix) = query.get("instanceIdPrefix").filter(|p| !p.is_empty()) {
        q = q.id_prefix(prefix);
    }
    q = q.page_size(top.unwrap_or(0)).continuation(continuation);
    let page = state.client.query(&q).await?;
    Ok(list_response(
        &page.instances,
        show,
        page.continuation.as_deref(),
    ))
}

/// The `x-ms-continuation-token` request header, decoded; absent or empty means none.
fn continuation_header(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get(CONTINUATION) else {
        return Ok(None);
    };
    let text = v.to_str().unwrap_or("\u{0}").trim();
    if text.is_empty() {
        return Ok(None);
    }
    decode_token(text).map(Some).ok_or_else(|| {
        ApiError::bad_request(
            "InvalidContinuationToken",
            format!("the `{CONTINUATION}` header is not a token this API returned"),
        )
    })
}

/// Adds the `x-ms-continuation-token` response header (empty on the last page).
fn with_continuation(mut response: Response, next: Option<&str>) -> Response {
    let token = next.map(encode_token).unwrap_or_default();
    if let Ok(value) = HeaderValue::from_str(&token) {
        response.headers_mut().insert(CONTINUATION, value);
    }
    response
}

fn list_response(records: &[InstanceRecord], show: Show, next: Option<&str>) -> Response {
    let items: Vec<_> = records
        .iter()
        .map(|r| StatusPayload::new(r, None, show))
        .collect();
    with_continuation(json_response(StatusCode::OK, &items), next)
}

// ------------------------------------------------------------------------------ purge

/// `DELETE /instances/{instanceId}`.
pub(super) async fn purge(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let id = any_instance_id(path(id)?)?;
    let deleted = purge_one(&state.client, &id).await?;
    Ok(json_response(
        StatusCode::OK,
        &Purged {
            instances_deleted: deleted,
        },
    ))
}

/// `DELETE /instances` with filters.
pub(super) async fn purge_by_filter(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    let query = Query::parse(raw.as_deref())?;
    if query.timestamp("createdTimeFrom")?.is_none() {
        return Err(ApiError::bad_request(
            "MissingQueryParameter",
            "Please provide value for 'createdTimeFrom' parameter.",
        ));
    }
    let deleted = match filters(&query)? {
        Some(q) => state.client.purge_by_filter(q).await?.deleted,
        None => 0,
    };
    if deleted == 0 {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NothingPurged",
            "no finished instance matched the filter",
        ));
    }
    Ok(json_response(
        StatusCode::OK,
        &Purged {
            instances_deleted: deleted,
        },
    ))
}

// ------------------------------------------------------------------------ raise event

/// `POST /instances/{instanceId}/raiseEvent/{eventName}` (`raiseEvent` in any casing,
/// like the other operation names).
pub(super) async fn raise_event(
    State(state): State<AppState>,
    params: Result<Path<(String, String, String)>, PathRejection>,
    body: Body,
) -> ApiResult {
    let (id, operation, name) = path(params)?;
    if !operation.eq_ignore_ascii_case("raiseEvent") {
        return Err(not_found_error());
    }
    let id = instance_id(id)?;
    let bytes = read_body(body, state.body_limit()).await?;
    let data = json_body(&bytes)?;
    perform(&state.client, &id, Action::RaiseEvent { name, data }).await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

/// `POST /instances/{instanceId}/raiseEvent/`: an event without a name, which the client
/// refuses (`InvalidEventName`, 400).
pub(super) async fn raise_unnamed_event(
    State(state): State<AppState>,
    params: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult {
    let (id, operation) = path(params)?;
    if !operation.eq_ignore_ascii_case("raiseEvent") {
        return Err(not_found_error());
    }
    let id = instance_id(id)?;
    state
        .client
        .raise_event_raw(&id, "", "null".to_owned())
        .await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

// ------------------------------------------------------------------------- operations

/// `POST /instances/{instanceId}/{operation}`: terminate, suspend, resume, rewind, restart.
pub(super) async fn operation(
    State(state): State<AppState>,
    params: Result<Path<(String, String)>, PathRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let (id, op) = path(params)?;
    let op = op.to_ascii_lowercase();
    if !matches!(
        op.as_str(),
        "terminate" | "suspend" | "resume" | "rewind" | "restart"
    ) {
        return Err(not_found_error());
    }
    let id = instance_id(id)?;
    let query = Query::parse(raw.as_deref())?;
    let bytes = read_body(body, state.body_limit()).await?;
    let action = match op.as_str() {
        "terminate" => Action::Terminate(reason(&query, &bytes)),
        "suspend" => Action::Suspend(reason(&query, &bytes)),
        "resume" => Action::Resume(reason(&query, &bytes)),
        "rewind" => Action::Rewind(reason(&query, &bytes)),
        _ => {
            let new_id = query.bool("restartWithNewInstanceId", true)?;
            let wait = wait_options(&query)?;
            let started = restart(&state.client, &id, new_id).await?;
            return after_start(&state, &started, &query, &headers, wait).await;
        }
    };
    perform(&state.client, &id, action).await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

/// The `reason` query parameter, else the body: a JSON string, other JSON as text, or
/// plain text.
fn reason(query: &Query, body: &[u8]) -> String {
    if let Some(r) = query.get("reason") {
        return r.to_owned();
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(serde_json::Value::Null) => String::new(),
        Ok(other) => other.to_string(),
        Err(_) => text.to_owned(),
    }
}

/// An operation on one instance, as the management API and the dashboard perform it.
#[derive(Debug, Clone)]
pub(super) enum Action {
    /// Raise the event `name` with JSON `data`.
    RaiseEvent { name: String, data: String },
    /// Terminate with a reason.
    Terminate(String),
    /// Suspend with a reason.
    Suspend(String),
    /// Resume with a reason.
    Resume(String),
    /// Rewind a failed instance, with a reason.
    Rewind(String),
    /// Start the orchestration again with the same input (under a new id when asked).
    Restart { new_id: bool },
    /// Delete a finished instance and its history.
    Purge,
}

/// What [`perform`] did.
#[derive(Debug, Clone)]
pub(super) enum Done {
    /// The request is durable (raise, terminate, suspend, resume, rewind).
    Accepted,
    /// A restart started this instance.
    Started(InstanceId),
    /// This many instances were deleted.
    Purged(usize),
}

/// Performs `action` on instance `id` through the [`Client`](crate::Client), with the
/// management API's rules and error mapping: the one code path of the API's handlers and
/// the dashboard's confirmed actions.
///
/// Rewind answers 404 for an unknown instance, 410 for a completed or terminated one, 400
/// for one that has not failed or cannot be rewound (as Durable Functions answers a
/// non-rewindable instance). Restart answers 400 for an unknown id and 409 when the id is
/// taken by a running instance. Purge answers 404 when nothing was deleted.
pub(super) async fn perform(
    client: &crate::Client,
    id: &InstanceId,
    action: Action,
) -> Result<Done, ApiError> {
    match action {
        Action::RaiseEvent { name, data } => client.raise_event_raw(id, &name, data).await?,
        Action::Terminate(reason) => client.terminate(id, &reason).await?,
        Action::Suspend(reason) => client.suspend(id, &reason).await?,
        Action::Resume(reason) => client.resume(id, &reason).await?,
        Action::Rewind(reason) => rewind(client, id, &reason).await?,
        Action::Restart { new_id } => return restart(client, id, new_id).await.map(Done::Started),
        Action::Purge => return purge_one(client, id).await.map(Done::Purged),
    }
    Ok(Done::Accepted)
}

/// Purges one finished instance; 404 when nothing was deleted.
async fn purge_one(client: &crate::Client, id: &InstanceId) -> Result<usize, ApiError> {
    let result = client.purge(id).await?;
    if result.deleted == 0 {
        // Purged by someone else between the check and the delete.
        return Err(crate::error::ClientError::InstanceNotFound(id.to_string()).into());
    }
    Ok(result.deleted)
}

async fn rewind(client: &crate::Client, id: &InstanceId, reason: &str) -> Result<(), ApiError> {
    let record = client.status(id).await?;
    match record.status {
        RuntimeStatus::Failed => Ok(client.rewind(id, reason).await?),
        RuntimeStatus::Completed | RuntimeStatus::Terminated => Err(ApiError::new(
            StatusCode::GONE,
            "InstanceNotRunning",
            format!(
                "instance `{id}` has status {}; only Failed instances can be rewound",
                record.status.as_str()
            ),
        )),
        other => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "InstanceNotFailed",
            format!(
                "instance `{id}` has status {}; only Failed instances can be rewound",
                other.as_str()
            ),
        )),
    }
}

async fn restart(
    client: &crate::Client,
    id: &InstanceId,
    new_id: bool,
) -> Result<InstanceId, ApiError> {
    match client.restart(id, new_id).await {
        Ok(id) => Ok(id),
        Err(crate::error::ClientError::InstanceNotFound(_)) => Err(ApiError::bad_request(
            "InstanceNotFound",
            "InstanceId does not match a valid orchestration instance.",
        )),
        Err(crate::error::ClientError::InstanceAlreadyExists(_)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "InstanceAlreadyExists",
            "A non-terminal instance with this instance ID already exists.",
        )),
        Err(e) => Err(e.into()),
    }
}

// -------------------------------------------------------------------------- fallbacks

fn not_found_error() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("no such endpoint; the management API lives under {PREFIX}/"),
    )
}

/// Unmatched paths.
pub(super) async fn not_found() -> ApiError {
    not_found_error()
}

/// Matched paths with an unsupported method.
pub(super) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        "this endpoint does not support this HTTP method",
    )
}

// --------------------------------------------------------------------------- entities

/// The entity id of a path; `$` stands for the empty key.
fn entity_id(state: &AppState, name: &str, key: &str) -> Result<crate::entity::EntityId, ApiError> {
    known_entity_id(&state.client, name, key)
}

/// The entity id `@name@key` (`$` stands for the empty key); 404 when the name is not
/// registered (where the client can tell).
pub(super) fn known_entity_id(
    client: &crate::Client,
    name: &str,
    key: &str,
) -> Result<crate::entity::EntityId, ApiError> {
    let key = if key == "$" { "" } else { key };
    let id = crate::entity::EntityId::new(name, key)?;
    if client.knows_entity(&id.name) == Some(false) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "UnknownEntity",
            format!("no entity named `{}` is registered", id.name),
        ));
    }
    Ok(id)
}

/// `POST /entities/{entityName}/{entityKey}?op=..`: signal an operation (202).
pub(super) async fn signal_entity(
    State(state): State<AppState>,
    params: Result<Path<(String, String)>, PathRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let (name, key) = path(params)?;
    let id = entity_id(&state, &name, &key)?;
    let query = Query::parse(raw.as_deref())?;
    let op = query.get("op").unwrap_or_default().to_owned();
    let bytes = read_body(body, state.body_limit()).await?;
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|ct| ct.contains("json"));
    let input = if bytes.iter().all(u8::is_ascii_whitespace) {
        "null".to_owned()
    } else if is_json {
        json_body(&bytes)?
    } else {
        // curl's default form content type: a body that is valid JSON is taken as JSON;
        // anything else is passed on as a JSON string, as Durable Functions does.
        json_body(&bytes).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned()).to_string()
        })
    };
    state
        .client
        .signal_entity_raw(&id, &op, input, None)
        .await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

/// `DELETE /entities/{entityName}/{entityKey}`: signal the built-in `delete` operation.
pub(super) async fn delete_entity(
    State(state): State<AppState>,
    params: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult {
    let (name, key) = path(params)?;
    let id = entity_id(&state, &name, &key)?;
    state
        .client
        .signal_entity_raw(
            &id,
            crate::entity::DELETE_OPERATION,
            "null".to_owned(),
            None,
        )
        .await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

/// `GET /entities/{entityName}/{entityKey}`: the state (200) or 404.
pub(super) async fn read_entity(
    State(state): State<AppState>,
    params: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult {
    let (name, key) = path(params)?;
    let id = entity_id(&state, &name, &key)?;
    match state.client.read_entity_raw(&id).await? {
        Some(json) => {
            let mut r = Response::new(Body::from(json));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json; charset=utf-8"),
            );
            Ok(r)
        }
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "EntityNotFound",
            format!("entity `{id}` does not exist"),
        )),
    }
}

/// `GET /entities`.
pub(super) async fn list_entities(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> ApiResult {
    list_entities_impl(&state, None, raw.as_deref(), &headers).await
}

/// `GET /entities/{entityName}`.
pub(super) async fn list_entities_named(
    State(state): State<AppState>,
    name: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> ApiResult {
    let name = path(name)?;
    list_entities_impl(&state, Some(name), raw.as_deref(), &headers).await
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EntityItem {
    entity_id: EntityKeyJson,
    last_operation_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct EntityKeyJson {
    key: String,
    name: String,
}

async fn list_entities_impl(
    state: &AppState,
    name: Option<String>,
    raw: Option<&str>,
    headers: &HeaderMap,
) -> ApiResult {
    let query = Query::parse(raw)?;
    let mut q = crate::client::EntityQuery::new();
    if let Some(n) = name {
        q = q.name(n);
    }
    q.include_state = query.bool("fetchState", false)?;
    q.last_operation_from = query.timestamp("lastOperationTimeFrom")?;
    q.last_operation_to = query.timestamp("lastOperationTimeTo")?;
    q.page_size = query.count("top")?.unwrap_or(100);
    q.continuation = continuation_header(headers)?;
    let page = state.client.list_entities(&q).await?;
    let items: Vec<EntityItem> = page
        .entities
        .into_iter()
        .map(|e| EntityItem {
            entity_id: EntityKeyJson {
                key: e.id.key,
                name: e.id.name,
            },
            last_operation_time: dtf_timestamp(e.last_operation_at),
            state: e.state.and_then(|s| serde_json::from_str(&s).ok()),
        })
        .collect();
    Ok(with_continuation(
        json_response(StatusCode::OK, &items),
        page.continuation.as_deref(),
    ))
}
