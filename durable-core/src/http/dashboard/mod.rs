//! The dashboard: server-rendered HTML pages under `/dashboard` for instances, histories
//! and entities, with the management API's actions behind a confirmation step.
//!
//! Built on the [`Client`](crate::Client) only; the actions run through the same code path
//! as the management API's handlers ([`super::handlers::perform`]). Every response carries a
//! strict `Content-Security-Policy` (no inline script or style) and `nosniff`; every user
//! string is escaped by maud. Authentication is the API's bearer token: `?code=<token>` once
//! sets an `HttpOnly`, `SameSite=Strict` cookie; POSTs must also be same-origin.

mod pages;
mod timeline;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::AppState;
use super::handlers::{Action, Done, known_entity_id, perform};
use super::util::{
    ApiError, Query, addressed_to_this_machine, bearer, constant_time_eq, decode_token,
    encode_path_segment, encode_token, json_body, push_query, read_body,
};
use crate::history::RuntimeStatus;
use crate::ids::{InstanceId, Timestamp};
use crate::storage::InstanceQuery;

/// Where the dashboard is mounted.
pub(crate) const MOUNT: &str = "/dashboard";

/// The `Content-Security-Policy` of every dashboard response.
pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const COOKIE: &str = "durable_token";
const APP_JS: &str = include_str!("app.js");
const APP_CSS: &str = include_str!("app.css");
/// Instances per list page.
const PAGE_SIZE: usize = 50;

/// The dashboard's routes, with their auth, origin and header layers.
pub(super) fn routes(state: AppState) -> Router {
    let m = MOUNT;
    Router::new()
        .route(m, get(redirect_to_list))
        .route(&format!("{m}/"), get(list))
        .route(&format!("{m}/app.js"), get(app_js))
        .route(&format!("{m}/app.css"), get(app_css))
        .route(&format!("{m}/instances/{{id}}"), get(instance))
        .route(
            &format!("{m}/instances/{{id}}/actions/{{action}}"),
            post(instance_action),
        )
        .route(&format!("{m}/entities"), get(entities))
        .route(&format!("{m}/entities/{{name}}/{{key}}"), get(entity))
        .route(
            &format!("{m}/entities/{{name}}/{{key}}/actions/signal"),
            post(signal),
        )
        .route(&format!("{m}/{{*rest}}"), get(not_found).post(not_found))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .layer(middleware::map_response(security_headers))
        .with_state(state)
}

/// A failure shown as an HTML page (never a bare 500 for user input).
struct PageError(StatusCode, String);

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        Self(e.status(), e.message().to_owned())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let title = self.0.canonical_reason().unwrap_or("Error");
        html(self.0, &pages::error_page(title, &self.1))
    }
}

type PageResult = Result<Response, PageError>;

fn html(status: StatusCode, markup: &maud::Markup) -> Response {
    let mut r = (status, markup.0.clone()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

fn see_other(location: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

// ------------------------------------------------------------------------------- auth

/// Token check (cookie, bearer header or `?code=`, which sets the cookie) and, for POSTs,
/// the same-origin check.
async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if path == format!("{MOUNT}/app.css") || path == format!("{MOUNT}/app.js") {
        // Static and public: the sign-in page needs its stylesheet.
        return next.run(request).await;
    }
    if let Some(token) = state.options.bearer_token.as_deref() {
        let query = Query::parse(request.uri().query()).unwrap_or_default();
        if let Some(code) = query.get("code") {
            if token.is_empty() || !constant_time_eq(code.as_bytes(), token.as_bytes()) {
                return unauthorized("the token is not valid");
            }
            // Drop `code` from the URL, keep the rest, and remember the token.
            let mut url = request.uri().path().to_owned();
            for (name, value) in query.pairs() {
                if !name.eq_ignore_ascii_case("code") {
                    push_query(&mut url, name, value);
                }
            }
            let mut r = see_other(&url);
            let cookie = format!(
                "{COOKIE}={}; Path={MOUNT}; HttpOnly; SameSite=Strict",
                encode_token(token)
            );
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            return r;
        }
        if !authorized(request.headers(), token) {
            return unauthorized("this dashboard requires the API's bearer token");
        }
    } else if !addressed_to_this_machine(request.headers(), state.options.base_url.as_deref()) {
        // Without a token only the loopback names reach the dashboard, so a page elsewhere
        // cannot read or drive it by pointing a name of its own at 127.0.0.1 (DNS
        // rebinding).
        return PageError(
            StatusCode::FORBIDDEN,
            "without a bearer token the dashboard answers only requests addressed to this machine \
             (localhost, 127.0.0.1 or [::1], or the host of HttpOptions::base_url); set \
             HttpOptions::bearer_token to serve it under another name"
                .into(),
        )
        .into_response();
    }
    if request.method() == Method::POST && !same_origin(request.headers()) {
        return PageError(
            StatusCode::FORBIDDEN,
            "cross-site request refused: POSTs must come from the dashboard's own pages".into(),
        )
        .into_response();
    }
    next.run(request).await
}

fn authorized(headers: &HeaderMap, token: &str) -> bool {
    if token.is_empty() {
        return false;
    }
    let bearer = bearer(headers).is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes()));
    let cookie = || {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .filter(|(name, _)| *name == COOKIE)
            .filter_map(|(_, value)| decode_token(value))
            .any(|t| constant_time_eq(t.as_bytes(), token.as_bytes()))
    };
    bearer || cookie()
}

fn unauthorized(why: &str) -> Response {
    let mut r = html(StatusCode::UNAUTHORIZED, &pages::login_page(why));
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// `Sec-Fetch-Site: same-origin`, or an `Origin` whose host and port are the `Host`.
fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    if text(header::HeaderName::from_static("sec-fetch-site"))
        .is_some_and(|s| s.eq_ignore_ascii_case("same-origin"))
    {
        return true;
    }
    let (Some(origin), Some(host)) = (text(header::ORIGIN), text(header::HOST)) else {
        return false;
    };
    origin
        .split_once("://")
        .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host.trim()))
}

// ------------------------------------------------------------------------------ pages

async fn redirect_to_list(RawQuery(raw): RawQuery) -> Response {
    let mut url = format!("{MOUNT}/");
    if let Some(q) = raw.filter(|q| !q.is_empty()) {
        url.push('?');
        url.push_str(&q);
    }
    see_other(&url)
}

async fn app_js() -> Response {
    asset(APP_JS, "text/javascript; charset=utf-8")
}

async fn app_css() -> Response {
    asset(APP_CSS, "text/css; charset=utf-8")
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=300"),
    );
    r
}

async fn not_found() -> PageError {
    PageError(
        StatusCode::NOT_FOUND,
        "there is no such dashboard page".into(),
    )
}

/// The list page's filters, as parsed from its query string.
#[derive(Debug, Default)]
struct Filters {
    statuses: Vec<RuntimeStatus>,
    name: String,
    prefix: String,
    from: String,
    to: String,
    refresh: bool,
}

impl Filters {
    fn parse(query: &Query) -> Result<Self, PageError> {
        let mut statuses = Vec::new();
        for s in query.all("status").filter(|s| !s.is_empty()) {
            let status = RuntimeStatus::parse(s).ok_or_else(|| {
                PageError(
                    StatusCode::BAD_REQUEST,
                    format!("unknown runtime status {s:?}"),
                )
            })?;
            if !statuses.contains(&status) {
                statuses.push(status);
            }
        }
        let text = |n| query.get(n).unwrap_or("").trim().to_owned();
        Ok(Self {
            statuses,
            name: text("name"),
            prefix: text("prefix"),
            from: text("from"),
            to: text("to"),
            refresh: query.get("refresh") == Some("1"),
        })
    }

    /// The store query, statuses aside.
    fn query(&self) -> Result<InstanceQuery, PageError> {
        let mut q = InstanceQuery::new()
            .created_between(local_time("from", &self.from)?, local_time("to", &self.to)?);
        if !self.name.is_empty() {
            q = q.name(self.name.clone());
        }
        if !self.prefix.is_empty() {
            q = q.id_prefix(self.prefix.clone());
        }
        Ok(q)
    }

    /// The filters as a query string (for links), without paging.
    fn to_query(&self) -> String {
        let mut url = String::new();
        for s in &self.statuses {
            push_query(&mut url, "status", s.as_str());
        }
        for (n, v) in [
            ("name", &self.name),
            ("prefix", &self.prefix),
            ("from", &self.from),
            ("to", &self.to),
        ] {
            if !v.is_empty() {
                push_query(&mut url, n, v);
            }
        }
        if self.refresh {
            push_query(&mut url, "refresh", "1");
        }
        url
    }
}

/// A `datetime-local` value (`2024-01-01T10:00`, seconds optional), taken as UTC; full
/// RFC 3339 times are accepted too.
fn local_time(field: &str, text: &str) -> Result<Option<Timestamp>, PageError> {
    if text.is_empty() {
        return Ok(None);
    }
    let candidates = [
        text.to_owned(),
        format!("{text}Z"),
        format!("{text}:00Z"),
        format!("{text}T00:00:00Z"),
    ];
    candidates
        .iter()
        .find_map(|c| Timestamp::parse_rfc3339(c))
        .map(Some)
        .ok_or_else(|| {
            PageError(
                StatusCode::BAD_REQUEST,
                format!("`{field}` is not a date-time: {text:?} (expected e.g. 2024-01-31T09:30)"),
            )
        })
}

/// `GET /dashboard/`: the instances list.
async fn list(State(state): State<AppState>, RawQuery(raw): RawQuery) -> PageResult {
    let query = Query::parse(raw.as_deref())?;
    let filters = Filters::parse(&query)?;
    let base = filters.query()?;
    let token = page_token(&query)?;
    let counts = count_by_status(&state.client, &base).await?;
    let page = state
        .client
        .query(
            &base
                .clone()
                .statuses(filters.statuses.iter().copied())
                .newest_first()
                .page_size(PAGE_SIZE)
                .continuation(token),
        )
        .await
        .map_err(ApiError::from)?;
    let next = page.continuation.as_deref().map(|c| {
        let mut url = format!("{MOUNT}/{}", filters.to_query());
        push_query(&mut url, "page", &encode_token(c));
        url
    });
    let flash = flash(&query);
    Ok(html(
        StatusCode::OK,
        &pages::list_page(&pages::ListView {
            statuses: &filters.statuses,
            name: &filters.name,
            prefix: &filters.prefix,
            from: &filters.from,
            to: &filters.to,
            refresh: filters.refresh,
            counts: &counts,
            instances: &page.instances,
            next: next.as_deref(),
            flash: flash.as_ref(),
        }),
    ))
}

/// The number of instances per status among those `base` matches (statuses ignored), every
/// status listed.
async fn count_by_status(
    client: &crate::Client,
    base: &InstanceQuery,
) -> Result<Vec<(RuntimeStatus, u64)>, PageError> {
    let found = client.count_instances(base).await.map_err(ApiError::from)?;
    Ok(pages::STATUSES
        .iter()
        .map(|s| {
            let n = found.iter().find(|(f, _)| f == s).map_or(0, |(_, n)| *n);
            (*s, n)
        })
        .collect())
}

/// A result message carried in the URL after an action (`flash=ok|error`, `msg`).
fn flash(query: &Query) -> Option<(bool, String)> {
    let kind = query.get("flash")?;
    Some((kind == "ok", query.get("msg").unwrap_or("").to_owned()))
}

fn instance_url(id: &str) -> String {
    format!("{MOUNT}/instances/{}", encode_path_segment(id))
}

fn with_flash(mut url: String, ok: bool, msg: &str) -> String {
    push_query(&mut url, "flash", if ok { "ok" } else { "error" });
    push_query(&mut url, "msg", msg);
    url
}

/// A path's parameters; a malformed path (bad percent-encoding) is a 400 page.
fn path<T>(p: Result<Path<T>, PathRejection>) -> Result<T, PageError> {
    p.map(|Path(v)| v)
        .map_err(|e| PageError(StatusCode::BAD_REQUEST, e.body_text()))
}

fn read_id(id: &str) -> Result<InstanceId, PageError> {
    InstanceId::new_system(id.to_owned())
        .map_err(|e| PageError(StatusCode::NOT_FOUND, e.to_string()))
}

/// `GET /dashboard/instances/{id}`.
async fn instance(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> PageResult {
    let query = Query::parse(raw.as_deref())?;
    let id = read_id(&path(id)?)?;
    let (record, history) = state
        .client
        .status_with_history(&id)
        .await
        .map_err(ApiError::from)?;
    let bars = timeline::bars(&history);
    let now = state.client.clock().now();
    let flash = flash(&query);
    Ok(html(
        StatusCode::OK,
        &pages::instance_page(&record, &history, &bars, now, flash.as_ref()),
    ))
}

/// The action a form names, with its fields; `None` for an unknown action.
fn action_of(name: &str, form: &Query) -> Result<Option<Action>, PageError> {
    let reason = || form.get("reason").unwrap_or("").to_owned();
    Ok(Some(match name {
        "raise-event" => {
            let data = form.get("data").unwrap_or("").trim();
            Action::RaiseEvent {
                name: form.get("event").unwrap_or("").trim().to_owned(),
                data: if data.is_empty() {
                    "null".to_owned()
                } else {
                    json_body(data.as_bytes())?
                },
            }
        }
        "terminate" => Action::Terminate(reason()),
        "suspend" => Action::Suspend(reason()),
        "resume" => Action::Resume(reason()),
        "rewind" => Action::Rewind(reason()),
        "restart" => Action::Restart { new_id: true },
        "purge" => Action::Purge,
        _ => return Ok(None),
    }))
}

/// `POST /dashboard/instances/{id}/actions/{action}`: without `confirm=yes` the
/// confirmation page; with it, the action, then 303 back with the result.
async fn instance_action(
    State(state): State<AppState>,
    params: Result<Path<(String, String)>, PathRejection>,
    body: Body,
) -> PageResult {
    let (id, name) = path(params)?;
    let bytes = read_body(body, state.body_limit()).await?;
    let form = Query::parse(Some(&String::from_utf8_lossy(&bytes)))?;
    let back = instance_url(&id);
    let action = match action_of(&name, &form) {
        Ok(Some(a)) => a,
        Ok(None) => {
            return Err(PageError(
                StatusCode::NOT_FOUND,
                format!("unknown action {name:?}"),
            ));
        }
        // Bad input (e.g. event data that is not JSON): say so where the user came from.
        Err(PageError(_, why)) => return Ok(see_other(&with_flash(back, false, &why))),
    };
    if form.get("confirm") != Some("yes") {
        let fields: Vec<(&str, &str)> = form.pairs().filter(|(n, _)| *n != "confirm").collect();
        return Ok(html(
            StatusCode::OK,
            &pages::confirm_page(&name, &format!("instance {id}"), &back, &fields),
        ));
    }
    // As in the API: changes need an orchestration id; purges may name an entity's.
    let target = match &action {
        Action::Purge => InstanceId::new_system(id.clone()),
        _ => InstanceId::new(id.clone()),
    };
    let target = match target {
        Ok(t) => t,
        Err(e) => return Ok(see_other(&with_flash(back, false, &e.to_string()))),
    };
    Ok(match perform(&state.client, &target, action).await {
        Ok(Done::Accepted) => see_other(&with_flash(
            back,
            true,
            &format!("{name}: done for instance {id}"),
        )),
        Ok(Done::Started(new)) => see_other(&with_flash(
            instance_url(new.as_str()),
            true,
            &format!("restarted instance {id} as {new}"),
        )),
        Ok(Done::Purged(n)) => see_other(&with_flash(
            format!("{MOUNT}/"),
            true,
            &format!("purged instance {id} ({n} deleted)"),
        )),
        Err(e) => see_other(&with_flash(
            back,
            false,
            &format!("{name} refused: {}", e.message()),
        )),
    })
}

/// The `page` query parameter: a continuation token from a "next page" link.
fn page_token(query: &Query) -> Result<Option<String>, PageError> {
    query
        .get("page")
        .filter(|t| !t.is_empty())
        .map(|t| {
            decode_token(t).ok_or_else(|| {
                PageError(
                    StatusCode::BAD_REQUEST,
                    "the page token is not valid".into(),
                )
            })
        })
        .transpose()
}

/// `GET /dashboard/entities`.
async fn entities(State(state): State<AppState>, RawQuery(raw): RawQuery) -> PageResult {
    let query = Query::parse(raw.as_deref())?;
    let name = query.get("name").unwrap_or("").trim().to_owned();
    let token = page_token(&query)?;
    let mut q = crate::client::EntityQuery::new()
        .page_size(PAGE_SIZE)
        .continuation(token);
    if !name.is_empty() {
        q = q.name(name.clone());
    }
    let page = state
        .client
        .list_entities(&q)
        .await
        .map_err(ApiError::from)?;
    let next = page.continuation.as_deref().map(|c| {
        let mut url = format!("{MOUNT}/entities");
        if !name.is_empty() {
            push_query(&mut url, "name", &name);
        }
        push_query(&mut url, "page", &encode_token(c));
        url
    });
    Ok(html(
        StatusCode::OK,
        &pages::entities_page(&name, &page.entities, next.as_deref()),
    ))
}

/// `GET /dashboard/entities/{name}/{key}`.
async fn entity(
    State(state): State<AppState>,
    params: Result<Path<(String, String)>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> PageResult {
    let (name, key) = path(params)?;
    let query = Query::parse(raw.as_deref())?;
    let id = known_entity_id(&state.client, &name, &key)?;
    let state_json = state
        .client
        .read_entity_raw(&id)
        .await
        .map_err(ApiError::from)?;
    let flash = flash(&query);
    Ok(html(
        StatusCode::OK,
        &pages::entity_page(&id, state_json.as_deref(), flash.as_ref()),
    ))
}

/// `POST /dashboard/entities/{name}/{key}/actions/signal`: confirmation, then the signal.
async fn signal(
    State(state): State<AppState>,
    params: Result<Path<(String, String)>, PathRejection>,
    body: Body,
) -> PageResult {
    let (name, key) = path(params)?;
    let bytes = read_body(body, state.body_limit()).await?;
    let form = Query::parse(Some(&String::from_utf8_lossy(&bytes)))?;
    let id = known_entity_id(&state.client, &name, &key)?;
    let back = pages::entity_url(&id);
    if form.get("confirm") != Some("yes") {
        let fields: Vec<(&str, &str)> = form.pairs().filter(|(n, _)| *n != "confirm").collect();
        return Ok(html(
            StatusCode::OK,
            &pages::confirm_page("signal", &format!("entity {id}"), &back, &fields),
        ));
    }
    let operation = form.get("operation").unwrap_or("").trim().to_owned();
    let input = form.get("input").unwrap_or("").trim();
    let input = if input.is_empty() {
        Ok("null".to_owned())
    } else {
        json_body(input.as_bytes())
    };
    let result = match input {
        Ok(input) => state
            .client
            .signal_entity_raw(&id, &operation, input, None)
            .await
            .map_err(ApiError::from),
        Err(e) => Err(e),
    };
    Ok(see_other(&match result {
        Ok(()) => with_flash(
            back,
            true,
            &format!("signalled {operation:?} to entity {id}"),
        ),
        Err(e) => with_flash(back, false, &format!("signal refused: {}", e.message())),
    }))
}
