//! The status payload (`StatusResponsePayload`) and the Durable Functions shaping of
//! history events.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::FailureDetails;
use crate::history::{Event, HistoryEvent, RuntimeStatus};
use crate::ids::Timestamp;
use crate::storage::InstanceRecord;

/// What a status answer includes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Show {
    pub(super) input: bool,
    pub(super) history_output: bool,
}

/// One instance's status, with Durable Functions' field names and order.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct StatusPayload {
    name: String,
    instance_id: String,
    runtime_status: &'static str,
    input: Value,
    custom_status: Value,
    output: Value,
    created_time: String,
    last_updated_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    history_events: Option<Vec<HistoryItem>>,
    /// Not in Durable Functions: why a running instance is stuck.
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
}

impl StatusPayload {
    /// The payload of `record`; `history` is shown unless the instance is pending.
    pub(super) fn new(
        record: &InstanceRecord,
        history: Option<&[HistoryEvent]>,
        show: Show,
    ) -> Self {
        let output = match record.status {
            RuntimeStatus::Completed | RuntimeStatus::Terminated => {
                record.output.as_deref().map_or(Value::Null, json_or_string)
            }
            RuntimeStatus::Failed => match &record.failure {
                Some(f) => failure_camel(f),
                None => record.output.as_deref().map_or(Value::Null, json_or_string),
            },
            _ => Value::Null,
        };
        let history_events = history
            .filter(|_| record.status != RuntimeStatus::Pending)
            .map(|h| shape_history(h, show));
        Self {
            name: record.name.clone(),
            instance_id: record.instance_id.to_string(),
            runtime_status: record.status.as_str(),
            input: if show.input {
                json_or_string(&record.input)
            } else {
                Value::Null
            },
            custom_status: record
                .custom_status
                .as_deref()
                .map_or(Value::Null, json_or_string),
            output,
            created_time: seconds_precision(record.created_at),
            last_updated_time: seconds_precision(record.last_updated_at),
            history_events,
            last_error: record.last_error.clone(),
        }
    }
}

/// Durable Functions' `"s"` format plus `Z`: `2024-01-01T00:00:00Z`.
fn seconds_precision(t: Timestamp) -> String {
    let full = t.to_rfc3339();
    match full.split_once('.') {
        Some((whole, _)) => format!("{whole}Z"),
        None => full,
    }
}

/// A stored JSON payload as a JSON value; text that is not JSON stays a string (as
/// Durable Functions' `ParseToJToken`).
pub(super) fn json_or_string(payload: &str) -> Value {
    let trimmed = payload.trim();
    if trimmed.is_empty() {
        return Value::String(String::new());
    }
    serde_json::from_str(trimmed).unwrap_or_else(|_| Value::String(payload.to_owned()))
}

fn failure_camel(f: &FailureDetails) -> Value {
    let mut m = Map::new();
    m.insert("errorType".into(), Value::String(f.error_type.clone()));
    m.insert("errorMessage".into(), Value::String(f.message.clone()));
    if !f.causes.is_empty() {
        m.insert("causes".into(), f.causes.clone().into());
    }
    m.insert("isNonRetriable".into(), Value::Bool(f.non_retriable));
    Value::Object(m)
}

fn failure_pascal(f: &FailureDetails) -> Value {
    let mut m = Map::new();
    m.insert("ErrorType".into(), Value::String(f.error_type.clone()));
    m.insert("ErrorMessage".into(), Value::String(f.message.clone()));
    if !f.causes.is_empty() {
        m.insert("Causes".into(), f.causes.clone().into());
    }
    m.insert("IsNonRetriable".into(), Value::Bool(f.non_retriable));
    Value::Object(m)
}

/// One entry of `historyEvents`, in the Durable Task Framework's `PascalCase` vocabulary.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct HistoryItem {
    event_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    function_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    instance_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    orchestration_status: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    input: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failure_details: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fire_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scheduled_start_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scheduled_time: Option<String>,
    timestamp: String,
    #[serde(flatten)]
    other: Map<String, Value>,
}

/// What a completion takes over from its scheduling event.
struct Scheduled {
    slot: usize,
    name: String,
    input: String,
    at: Timestamp,
    instance_id: Option<String>,
}

/// Shapes a history as Durable Functions' `historyEvents` (`DurableClient.ConvertFrom`):
/// episode markers dropped; each `TaskScheduled` / `SubOrchestrationInstanceCreated`
/// merged into its completion or failure (`FunctionName`, `ScheduledTime`, `Input`);
/// `Result` only with `showHistoryOutput`; `Input` only with `showInput`.
#[allow(
    unreachable_patterns,
    reason = "Event may grow variants (entities); they render generically"
)]
#[allow(clippy::too_many_lines, reason = "one arm per event kind reads best")]
pub(super) fn shape_history(history: &[HistoryEvent], show: Show) -> Vec<HistoryItem> {
    let mut slots: Vec<Option<HistoryItem>> = Vec::with_capacity(history.len());
    let mut scheduled: HashMap<(bool, u64), Scheduled> = HashMap::new();
    let input = |payload: &str| show.input.then(|| json_or_string(payload));
    let result = |payload: &str| show.history_output.then(|| json_or_string(payload));
    for e in history {
        let mut item = HistoryItem {
            event_type: dtf_kind(&e.event),
            timestamp: e.timestamp.to_rfc3339(),
            ..HistoryItem::default()
        };
        let next_slot = slots.len();
        // Takes over the scheduling event of a completion, removing it from the output.
        let mut merge = |item: &mut HistoryItem, sub: bool, seq: u64| {
            if let Some(s) = scheduled.remove(&(sub, seq)) {
                slots[s.slot] = None;
                item.function_name = Some(s.name);
                item.scheduled_time = Some(s.at.to_rfc3339());
                item.input = input(&s.input);
                item.instance_id = s.instance_id;
            }
        };
        match &e.event {
            Event::OrchestratorStarted | Event::CustomStatusSet { .. } => continue,
            Event::ExecutionStarted {
                name,
                input: i,
                scheduled_start,
                ..
            } => {
                item.function_name = Some(name.clone());
                item.input = input(i);
                item.scheduled_start_time = scheduled_start.map(Timestamp::to_rfc3339);
            }
            Event::TaskScheduled {
                seq,
                name,
                input: i,
                ..
            } => {
                scheduled.insert(
                    (false, *seq),
                    Scheduled {
                        slot: next_slot,
                        name: name.clone(),
                        input: i.clone(),
                        at: e.timestamp,
                        instance_id: None,
                    },
                );
                item.name = Some(name.clone());
                item.input = input(i);
            }
            Event::SubOrchestrationCreated {
                seq,
                name,
                instance_id,
                input: i,
                ..
            } => {
                scheduled.insert(
                    (true, *seq),
                    Scheduled {
                        slot: next_slot,
                        name: name.clone(),
                        input: i.clone(),
                        at: e.timestamp,
                        instance_id: Some(instance_id.to_string()),
                    },
                );
                item.name = Some(name.clone());
                item.instance_id = Some(instance_id.to_string());
                item.input = input(i);
            }
            Event::TaskCompleted { seq, result: r } => {
                merge(&mut item, false, *seq);
                item.result = result(r);
            }
            Event::SubOrchestrationCompleted { seq, result: r } => {
                merge(&mut item, true, *seq);
                item.result = result(r);
            }
            Event::TaskFailed { seq, failure } => {
                merge(&mut item, false, *seq);
                set_failure(&mut item, failure);
            }
            Event::SubOrchestrationFailed { seq, failure } => {
                merge(&mut item, true, *seq);
                set_failure(&mut item, failure);
            }
            Event::TimerCreated { fire_at, .. } | Event::TimerFired { fire_at, .. } => {
                item.fire_at = Some(fire_at.to_rfc3339());
            }
            Event::EventRaised { name, input: i } => {
                item.name = Some(name.clone());
                item.input = input(i);
            }
            Event::EventSent {
                instance_id,
                name,
                input: i,
                ..
            } => {
                item.name = Some(name.clone());
                item.instance_id = Some(instance_id.to_string());
                item.input = input(i);
            }
            Event::ContinuedAsNew { input: i, .. } => {
                item.orchestration_status = Some(RuntimeStatus::ContinuedAsNew.as_str());
                item.result = result(i);
            }
            Event::ExecutionTerminated { reason } => {
                item.input = show.input.then(|| Value::String(reason.clone()));
            }
            Event::ExecutionSuspended { reason }
            | Event::ExecutionResumed { reason }
            | Event::ExecutionRewound { reason, .. } => {
                item.reason = Some(reason.clone());
            }
            Event::ExecutionCompleted {
                status,
                output,
                failure,
            } => {
                item.orchestration_status = Some(status.as_str());
                if show.history_output {
                    item.result = match (output, failure) {
                        (Some(o), _) => Some(json_or_string(o)),
                        (None, Some(f)) => Some(Value::String(f.message.clone())),
                        (None, None) => Some(Value::Null),
                    };
                }
                item.failure_details = failure.as_ref().map(failure_pascal);
            }
            other => item.other = generic_fields(other, show),
        }
        slots.push(Some(item));
    }
    slots.into_iter().flatten().collect()
}

fn set_failure(item: &mut HistoryItem, failure: &FailureDetails) {
    item.reason = Some(failure.message.clone());
    item.details = Some(failure.to_string());
    item.failure_details = Some(failure_pascal(failure));
}

/// The Durable Task Framework's `EventType` names, where they differ from ours.
fn dtf_kind(event: &Event) -> &'static str {
    match event {
        Event::SubOrchestrationCreated { .. } => "SubOrchestrationInstanceCreated",
        Event::SubOrchestrationCompleted { .. } => "SubOrchestrationInstanceCompleted",
        Event::SubOrchestrationFailed { .. } => "SubOrchestrationInstanceFailed",
        Event::ContinuedAsNew { .. } => "ContinueAsNew",
        other => other.kind(),
    }
}

/// Fields of an event without a dedicated shape: its serde fields in `PascalCase`.
fn generic_fields(event: &Event, show: Show) -> Map<String, Value> {
    let Ok(Value::Object(fields)) = serde_json::to_value(event) else {
        return Map::new();
    };
    fields
        .into_iter()
        .filter(|(k, _)| k != "eventType" && k != "location" && (show.input || k != "input"))
        .map(|(k, v)| (pascal_case(&k), v))
        .collect()
}

fn pascal_case(snake: &str) -> String {
    snake
        .split('_')
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map_or_else(String::new, |c| {
                c.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::InstanceId;

    fn at(ms: u64, event: Event) -> HistoryEvent {
        HistoryEvent {
            index: 0,
            timestamp: Timestamp::from_unix_millis(ms),
            event,
        }
    }

    fn sample() -> Vec<HistoryEvent> {
        vec![
            at(
                1_000,
                Event::ExecutionStarted {
                    name: "hello".into(),
                    version: None,
                    input: "\"Tokyo\"".into(),
                    parent: None,
                    scheduled_start: None,
                    carried: Vec::new(),
                },
            ),
            at(1_000, Event::OrchestratorStarted),
            at(
                1_000,
                Event::TaskScheduled {
                    seq: 0,
                    name: "greet".into(),
                    input: "\"Tokyo\"".into(),
                    location: None,
                },
            ),
            at(
                2_000,
                Event::TaskCompleted {
                    seq: 0,
                    result: "\"Hello Tokyo!\"".into(),
                },
            ),
            at(2_000, Event::OrchestratorStarted),
            at(
                2_000,
                Event::SubOrchestrationCreated {
                    seq: 1,
                    name: "child".into(),
                    instance_id: InstanceId::new("kid").unwrap(),
                    input: "1".into(),
                    version: None,
                    location: None,
                },
            ),
            at(
                2_000,
                Event::TaskScheduled {
                    seq: 2,
                    name: "pending".into(),
                    input: "null".into(),
                    location: None,
                },
            ),
            at(
                3_000,
                Event::SubOrchestrationFailed {
                    seq: 1,
                    failure: FailureDetails::new("boom", "it broke"),
                },
            ),
            at(
                3_000,
                Event::ExecutionCompleted {
                    status: RuntimeStatus::Completed,
                    output: Some("[1]".into()),
                    failure: None,
                },
            ),
        ]
    }

    #[test]
    fn history_is_shaped_like_durable_functions() {
        let show = Show {
            input: true,
            history_output: true,
        };
        let v = serde_json::to_value(shape_history(&sample(), show)).unwrap();
        let kinds: Vec<_> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["EventType"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            [
                "ExecutionStarted",
                "TaskCompleted",
                "TaskScheduled",
                "SubOrchestrationInstanceFailed",
                "ExecutionCompleted"
            ]
        );
        assert_eq!(v[0]["FunctionName"], "hello");
        assert_eq!(v[0]["Input"], "Tokyo");
        assert_eq!(v[1]["FunctionName"], "greet");
        assert_eq!(v[1]["Result"], "Hello Tokyo!");
        assert_eq!(v[1]["Input"], "Tokyo");
        assert_eq!(v[1]["ScheduledTime"], "1970-01-01T00:00:01.000Z");
        assert_eq!(v[1]["Timestamp"], "1970-01-01T00:00:02.000Z");
        assert_eq!(v[2]["Name"], "pending");
        assert_eq!(v[3]["FunctionName"], "child");
        assert_eq!(v[3]["InstanceId"], "kid");
        assert_eq!(v[3]["Reason"], "it broke");
        assert_eq!(v[3]["FailureDetails"]["ErrorType"], "boom");
        assert_eq!(v[4]["OrchestrationStatus"], "Completed");
        assert_eq!(v[4]["Result"], serde_json::json!([1]));
    }

    #[test]
    fn results_and_inputs_are_hidden_unless_asked_for() {
        let show = Show {
            input: false,
            history_output: false,
        };
        let v = serde_json::to_value(shape_history(&sample(), show)).unwrap();
        for e in v.as_array().unwrap() {
            assert!(e.get("Result").is_none(), "{e}");
            assert!(e.get("Input").is_none(), "{e}");
            assert!(e.get("EventId").is_none() && e.get("IsPlayed").is_none());
        }
    }

    #[test]
    fn payloads_that_are_not_json_stay_strings() {
        assert_eq!(json_or_string("{\"a\":1}"), serde_json::json!({"a": 1}));
        assert_eq!(json_or_string("stop now"), Value::String("stop now".into()));
        assert_eq!(
            seconds_precision(Timestamp::from_unix_millis(1_234)),
            "1970-01-01T00:00:01Z"
        );
        assert_eq!(pascal_case("fire_at"), "FireAt");
    }
}
