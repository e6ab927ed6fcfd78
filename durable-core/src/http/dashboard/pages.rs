//! The dashboard's pages as maud templates (every interpolated string is escaped).

use maud::{DOCTYPE, Markup, html};

use super::timeline::{self, Bar};
use super::{MOUNT, encode_path_segment, instance_url};
use crate::client::EntityMetadata;
use crate::entity::EntityId;
use crate::history::{Event, HistoryEvent, RuntimeStatus};
use crate::ids::Timestamp;
use crate::storage::InstanceRecord;

/// Every runtime status, in the order the counts show them.
pub(super) const STATUSES: [RuntimeStatus; 7] = RuntimeStatus::ALL;

fn layout(title: &str, flash: Option<&(bool, String)>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " — durable" }
                link rel="stylesheet" href={ (MOUNT) "/app.css" };
                script src={ (MOUNT) "/app.js" } defer {}
            }
            body {
                nav {
                    span.brand { "durable" }
                    a #nav-instances href={ (MOUNT) "/" } { "Instances" }
                    a #nav-entities href={ (MOUNT) "/entities" } { "Entities" }
                }
                main {
                    @if let Some((ok, msg)) = flash {
                        p #flash class=(if *ok { "ok" } else { "error" }) role="status" { (msg) }
                    }
                    (body)
                }
            }
        }
    }
}

fn time(t: Timestamp) -> String {
    t.to_rfc3339()
}

/// A JSON payload pretty-printed when it parses, else as stored.
fn pretty(payload: &str) -> String {
    serde_json::from_str::<serde_json::Value>(payload)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| payload.to_owned())
}

/// The data the list page shows.
pub(super) struct ListView<'a> {
    pub(super) statuses: &'a [RuntimeStatus],
    pub(super) name: &'a str,
    pub(super) prefix: &'a str,
    pub(super) from: &'a str,
    pub(super) to: &'a str,
    pub(super) refresh: bool,
    pub(super) counts: &'a [(RuntimeStatus, u64)],
    pub(super) instances: &'a [InstanceRecord],
    pub(super) next: Option<&'a str>,
    pub(super) flash: Option<&'a (bool, String)>,
}

/// The list with the same filters, narrowed to one status (a count's link).
fn status_link(v: &ListView<'_>, status: RuntimeStatus) -> String {
    let mut url = format!("{MOUNT}/?status={}", status.as_str());
    for (name, value) in [
        ("name", v.name),
        ("prefix", v.prefix),
        ("from", v.from),
        ("to", v.to),
    ] {
        if !value.is_empty() {
            crate::http::util::push_query(&mut url, name, value);
        }
    }
    if v.refresh {
        url.push_str("&refresh=1");
    }
    url
}

pub(super) fn list_page(v: &ListView<'_>) -> Markup {
    let body = html! {
        h1 { "Instances" }
        form #filters method="get" action={ (MOUNT) "/" } {
            label { "Status "
                select name="status" multiple size="4" {
                    @for s in STATUSES {
                        option value=(s.as_str()) selected[v.statuses.contains(&s)] { (s.as_str()) }
                    }
                }
            }
            label { "Orchestrator " input name="name" value=(v.name); }
            label { "Id prefix " input name="prefix" value=(v.prefix); }
            label { "Created from " input type="datetime-local" step="1" name="from" value=(v.from); }
            label { "to " input type="datetime-local" step="1" name="to" value=(v.to); }
            @if v.refresh { input type="hidden" name="refresh" value="1"; }
            button #apply type="submit" { "Apply" }
            label.refresh { input #auto-refresh type="checkbox" checked[v.refresh]; " auto-refresh (5 s)" }
        }
        ul #counts {
            @for (s, n) in v.counts {
                li data-status=(s.as_str()) {
                    a href=(status_link(v, *s)) title="show only these" {
                        span.label { (s.as_str()) } " " span.count { (n) }
                    }
                }
            }
        }
        table #instances {
            thead { tr { th { "Instance" } th { "Status" } th { "Orchestrator" } th { "Created" } th { "Updated" } th { "Problem" } } }
            tbody {
                @for r in v.instances {
                    tr data-instance-id=(r.instance_id.as_str()) class=[r.last_error.as_ref().map(|_| "stuck")] {
                        td { a.instance-link href=(instance_url(r.instance_id.as_str())) { (r.instance_id.as_str()) } }
                        td.status { (r.status.as_str()) }
                        td.name { (r.name) }
                        td.created { (time(r.created_at)) }
                        td.updated { (time(r.last_updated_at)) }
                        td { @if let Some(e) = &r.last_error { span.stuck-reason { (e) } } }
                    }
                }
            }
        }
        @if v.instances.is_empty() { p.empty { "No instance matches these filters." } }
        @if let Some(next) = v.next { p { a #next-page href=(next) { "Next page →" } } }
    };
    layout("Instances", v.flash, body)
}

fn children(history: &[HistoryEvent]) -> Vec<(String, String)> {
    history
        .iter()
        .filter_map(|e| match &e.event {
            Event::SubOrchestrationCreated {
                name, instance_id, ..
            } => Some((instance_id.to_string(), name.clone())),
            _ => None,
        })
        .collect()
}

fn action_form(action: &str, label: &str, id: &str, fields: Markup) -> Markup {
    html! {
        form.action method="post" data-action=(action)
            action={ (instance_url(id)) "/actions/" (action) } {
            (fields)
            button type="submit" { (label) }
        }
    }
}

fn reason_field() -> Markup {
    html! { input name="reason" placeholder="reason"; }
}

pub(super) fn instance_page(
    r: &InstanceRecord,
    history: &[HistoryEvent],
    bars: &[Bar],
    now: Timestamp,
    flash: Option<&(bool, String)>,
) -> Markup {
    let id = r.instance_id.as_str();
    let history_json = serde_json::to_string_pretty(history).unwrap_or_default();
    let body = html! {
        h1 { "Instance " code { (id) } }
        dl.fields {
            dt { "Status" } dd #status class={ "status " (r.status.as_str()) } { (r.status.as_str()) }
            dt { "Orchestrator" } dd #name { (r.name) }
            dt { "Version" } dd #version { (r.version.as_deref().unwrap_or("—")) }
            dt { "Execution" } dd #execution { (r.execution) }
            dt { "Created" } dd #created { (time(r.created_at)) }
            dt { "Updated" } dd #updated { (time(r.last_updated_at)) }
            @if let Some(at) = r.scheduled_start { dt { "Scheduled start" } dd #scheduled { (time(at)) } }
            dt { "Parent" }
            dd #parent {
                @if let Some(p) = &r.parent {
                    a href=(instance_url(p.instance_id.as_str())) { (p.instance_id.as_str()) }
                } @else { "—" }
            }
            dt { "Children" }
            dd #children {
                @let kids = children(history);
                @if kids.is_empty() { "—" }
                @for (child, name) in kids {
                    a href=(instance_url(&child)) title=(name) { (child) } " "
                }
            }
        }
        @if r.failure.is_some() || r.last_error.is_some() {
            section #failure {
                h2 { "Problem" }
                @if let Some(f) = &r.failure {
                    p { strong { (f.error_type) } ": " (f.message) }
                    @for c in &f.causes { p.cause { "caused by: " (c) } }
                    // The failed task's own failure, down the chain.
                    @for i in std::iter::successors(f.inner.as_deref(), |i| i.inner.as_deref()) {
                        p.cause { "inner: " strong { (i.error_type) } ": " (i.message) }
                        @for c in &i.causes { p.cause { "caused by: " (c) } }
                    }
                }
                @if let Some(e) = &r.last_error {
                    p.stuck-reason { "Stuck: " }
                    pre.last-error { (e) }
                }
            }
        }
        h2 { "Input" } pre #input { (pretty(&r.input)) }
        h2 { "Output" } pre #output { (r.output.as_deref().map(pretty).unwrap_or_default()) }
        h2 { "Custom status" } pre #custom-status { (r.custom_status.as_deref().map(pretty).unwrap_or_default()) }
        h2 { "Timeline" }
        div #timeline { (timeline::svg(bars, now)) }
        h2 { "Actions" }
        // The actions the instance's status allows (the server checks again on confirm).
        @let running = !r.status.is_terminal();
        div.actions {
            @if running {
                (action_form("raise-event", "Raise event", id, html! {
                    input name="event" placeholder="event name" required;
                    textarea name="data" placeholder="JSON data (empty: null)" {}
                }))
                (action_form("terminate", "Terminate", id, reason_field()))
            }
            @if matches!(r.status, RuntimeStatus::Pending | RuntimeStatus::Running) {
                (action_form("suspend", "Suspend", id, reason_field()))
            }
            @if r.status == RuntimeStatus::Suspended {
                (action_form("resume", "Resume", id, reason_field()))
            }
            @if r.status == RuntimeStatus::Failed {
                (action_form("rewind", "Rewind", id, reason_field()))
            }
            @if !running {
                (action_form("restart", "Restart", id, html! {}))
                (action_form("purge", "Purge", id, html! {}))
            }
        }
        h2 { "History" }
        details open { summary { (history.len()) " events (JSON)" } pre #history-json { (history_json) } }
    };
    layout(&format!("Instance {id}"), flash, body)
}

pub(super) fn confirm_page(
    action: &str,
    target: &str,
    back: &str,
    fields: &[(&str, &str)],
) -> Markup {
    let body = html! {
        h1 { "Confirm " (action) }
        p.restated { "Really " strong { (action) } " " (target) "?" }
        @if !fields.is_empty() {
            dl.fields { @for (n, v) in fields { dt { (n) } dd { code { (v) } } } }
        }
        form #confirm method="post" {
            @for (n, v) in fields { input type="hidden" name=(n) value=(v); }
            input type="hidden" name="confirm" value="yes";
            button #confirm-yes type="submit" { "Yes, " (action) }
            " "
            a #confirm-no href=(back) { "No, go back" }
        }
    };
    layout(&format!("Confirm {action}"), None, body)
}

pub(super) fn entity_url(id: &EntityId) -> String {
    let key = if id.key.is_empty() {
        "$"
    } else {
        id.key.as_str()
    };
    format!(
        "{MOUNT}/entities/{}/{}",
        encode_path_segment(&id.name),
        encode_path_segment(key)
    )
}

pub(super) fn entities_page(name: &str, entities: &[EntityMetadata], next: Option<&str>) -> Markup {
    let body = html! {
        h1 { "Entities" }
        form #entity-filters method="get" action={ (MOUNT) "/entities" } {
            label { "Entity name " input name="name" value=(name); }
            button type="submit" { "Apply" }
        }
        table #entities {
            thead { tr { th { "Entity" } th { "Name" } th { "Key" } th { "Last operation" } th { "Locked by" } } }
            tbody {
                @for e in entities {
                    tr data-entity-id=(e.id.to_string()) {
                        td { a.entity-link href=(entity_url(&e.id)) { (e.id.to_string()) } }
                        td { (e.id.name) }
                        td { (e.id.key) }
                        td { (time(e.last_operation_at)) }
                        td { @if let Some(l) = &e.locked_by { a href=(instance_url(l.as_str())) { (l.as_str()) } } }
                    }
                }
            }
        }
        @if entities.is_empty() { p.empty { "No entity matches." } }
        @if let Some(next) = next { p { a #next-page href=(next) { "Next page →" } } }
    };
    layout("Entities", None, body)
}

pub(super) fn entity_page(
    id: &EntityId,
    state: Option<&str>,
    flash: Option<&(bool, String)>,
) -> Markup {
    let body = html! {
        h1 { "Entity " code { (id.to_string()) } }
        h2 { "State" }
        pre #state { (state.map_or_else(|| "(no state)".to_owned(), pretty)) }
        h2 { "Signal an operation" }
        form.action method="post" data-action="signal" action={ (entity_url(id)) "/actions/signal" } {
            input name="operation" placeholder="operation" required;
            textarea name="input" placeholder="JSON input (empty: null)" {}
            button type="submit" { "Signal" }
        }
        p { a href=(instance_url(&id.to_string())) { "Instance view of this entity" } }
    };
    layout(&format!("Entity {id}"), flash, body)
}

pub(super) fn error_page(title: &str, message: &str) -> Markup {
    layout(
        title,
        None,
        html! {
            h1 { (title) }
            p #error-message { (message) }
            p { a href={ (MOUNT) "/" } { "Back to the instances" } }
        },
    )
}

pub(super) fn login_page(why: &str) -> Markup {
    layout(
        "Sign in",
        None,
        html! {
            h1 { "Sign in" }
            p #error-message { (why) }
            form #login method="get" {
                label { "Token " input name="code" type="password" autocomplete="current-password" required; }
                button type="submit" { "Sign in" }
            }
        },
    )
}
