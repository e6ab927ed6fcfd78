//! The status payload (`StatusResponsePayload`) and the Durable Functions shaping of
//! history events.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::FailureDetails;
use crate::history::{Event, HistoryEvent, RuntimeStatus};
use crate::ids::{InstanceId, Timestamp};
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
                Some(f) => failure_json(f, &CAMEL_CASE),
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

/// Durable Functions' `"s"` format plus `Z`: `2024-01-01T00:00:00Z` (status times).
fn seconds_precision(t: Timestamp) -> String {
    let full = t.to_rfc3339();
    match full.split_once('.') {
        Some((whole, _)) => format!("{whole}Z"),
        None => full,
    }
}

/// .NET's round-trip format, seven fractional digits: `2024-01-01T00:00:00.1230000Z`
/// (history and entity times; this engine records milliseconds).
pub(super) fn dtf_timestamp(t: Timestamp) -> String {
    let full = t.to_rfc3339();
    match full.strip_suffix('Z') {
        Some(millis) => format!("{millis}0000Z"),
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

/// The key names of a rendered [`FailureDetails`]: camelCase in a status's `output`,
/// `PascalCase` (Durable Task's `FailureDetails`) inside history events.
struct FailureKeys {
    error_type: &'static str,
    error_message: &'static str,
    causes: &'static str,
    is_non_retriable: &'static str,
    inner_failure: &'static str,
}

const CAMEL_CASE: FailureKeys = FailureKeys {
    error_type: "errorType",
    error_message: "errorMessage",
    causes: "causes",
    is_non_retriable: "isNonRetriable",
    inner_failure: "innerFailure",
};

const PASCAL_CASE: FailureKeys = FailureKeys {
    error_type: "ErrorType",
    error_message: "ErrorMessage",
    causes: "Causes",
    is_non_retriable: "IsNonRetriable",
    inner_failure: "InnerFailure",
};

/// A failure as a JSON object with `keys`; nested failures use the same keys.
fn failure_json(f: &FailureDetails, keys: &FailureKeys) -> Value {
    let mut m = Map::new();
    m.insert(keys.error_type.into(), Value::String(f.error_type.clone()));
    m.insert(keys.error_message.into(), Value::String(f.message.clone()));
    if !f.causes.is_empty() {
        m.insert(keys.causes.into(), f.causes.clone().into());
    }
    m.insert(keys.is_non_retriable.into(), Value::Bool(f.non_retriable));
    if let Some(inner) = &f.inner {
        m.insert(keys.inner_failure.into(), failure_json(inner, keys));
    }
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

/// The `Name` of the entity messages that take or release a critical section's locks.
const LOCK: &str = "lock";
const RELEASE: &str = "release";

/// Shapes a history as Durable Functions' `historyEvents` (`DurableClient.ConvertFrom`):
///
/// - episode markers and custom-status changes are dropped;
/// - each `TaskScheduled` / `SubOrchestrationInstanceCreated` is merged into its
///   completion or failure (`FunctionName`, `ScheduledTime`, `Input`);
/// - entity traffic appears as Durable Functions records it: requests the orchestration
///   sends (operation calls and signals, lock requests, lock releases) as `EventSent`, and
///   what comes back (operation results, lock grants) as `EventRaised`, each with the
///   entity's instance id (`@name@key`) in `InstanceId` and the operation (or `lock` /
///   `release`) in `Name`;
/// - `Input` only with `showInput`, `Result` only with `showHistoryOutput`, both as JSON
///   values; failures as `FailureDetails` with `PascalCase` keys; times with seven
///   fractional digits.
pub(super) fn shape_history(history: &[HistoryEvent], show: Show) -> Vec<HistoryItem> {
    let mut shaper = Shaper {
        show,
        items: Vec::with_capacity(history.len()),
        scheduled: HashMap::new(),
        entity_requests: HashMap::new(),
    };
    for e in history {
        shaper.add(e);
    }
    shaper.items.into_iter().flatten().collect()
}

/// What a completion takes over from its scheduling event.
struct Scheduled {
    slot: usize,
    name: String,
    input: String,
    at: Timestamp,
    instance_id: Option<String>,
}

struct Shaper {
    show: Show,
    /// The output; a scheduling event's slot is emptied when its completion takes it over.
    items: Vec<Option<HistoryItem>>,
    /// Open `TaskScheduled` (`false`) and `SubOrchestrationCreated` (`true`) by sequence.
    scheduled: HashMap<(bool, u64), Scheduled>,
    /// Open entity calls and lock requests by sequence: the entity that answers, and the
    /// `Name` of the answer.
    entity_requests: HashMap<u64, (String, String)>,
}

impl Shaper {
    fn input(&self, payload: &str) -> Option<Value> {
        self.show.input.then(|| json_or_string(payload))
    }

    fn result(&self, payload: &str) -> Option<Value> {
        self.show.history_output.then(|| json_or_string(payload))
    }

    /// Takes over the scheduling event of a completion, removing it from the output.
    fn merge(&mut self, item: &mut HistoryItem, sub: bool, seq: u64) {
        if let Some(s) = self.scheduled.remove(&(sub, seq)) {
            self.items[s.slot] = None;
            item.function_name = Some(s.name);
            item.scheduled_time = Some(dtf_timestamp(s.at));
            item.input = self.input(&s.input);
            item.instance_id = s.instance_id;
        }
    }

    #[allow(
        unreachable_patterns,
        reason = "Event may grow variants; they render generically"
    )]
    #[allow(clippy::too_many_lines, reason = "one arm per event kind reads best")]
    fn add(&mut self, e: &HistoryEvent) {
        let new = |event_type: &'static str| HistoryItem {
            event_type,
            timestamp: dtf_timestamp(e.timestamp),
            ..HistoryItem::default()
        };
        // An entity message: `EventSent` to or `EventRaised` from `entity`.
        let entity_message = |event_type, entity: String, name: String| HistoryItem {
            name: Some(name),
            instance_id: Some(entity),
            ..new(event_type)
        };
        let mut item = new(dtf_kind(&e.event));
        match &e.event {
            Event::OrchestratorStarted | Event::CustomStatusSet { .. } => return,
            Event::ExecutionStarted {
                name,
                input,
                scheduled_start,
                ..
            } => {
                item.function_name = Some(name.clone());
                item.input = self.input(input);
                item.scheduled_start_time = scheduled_start.map(dtf_timestamp);
            }
            Event::TaskScheduled {
                seq, name, input, ..
            } => {
                self.scheduled.insert(
                    (false, *seq),
                    Scheduled {
                        slot: self.items.len(),
                        name: name.clone(),
                        input: input.clone(),
                        at: e.timestamp,
                        instance_id: None,
                    },
                );
                item.name = Some(name.clone());
                item.input = self.input(input);
            }
            Event::SubOrchestrationCreated {
                seq,
                name,
                instance_id,
                input,
                ..
            } => {
                self.scheduled.insert(
                    (true, *seq),
                    Scheduled {
                        slot: self.items.len(),
                        name: name.clone(),
                        input: input.clone(),
                        at: e.timestamp,
                        instance_id: Some(instance_id.to_string()),
                    },
                );
                item.name = Some(name.clone());
                item.instance_id = Some(instance_id.to_string());
                item.input = self.input(input);
            }
            Event::TaskCompleted { seq, result } => {
                self.merge(&mut item, false, *seq);
                item.result = self.result(result);
            }
            Event::SubOrchestrationCompleted { seq, result } => {
                self.merge(&mut item, true, *seq);
                item.result = self.result(result);
            }
            Event::TaskFailed { seq, failure, .. } => {
                self.merge(&mut item, false, *seq);
                set_failure(&mut item, failure);
            }
            Event::SubOrchestrationFailed { seq, failure } => {
                self.merge(&mut item, true, *seq);
                set_failure(&mut item, failure);
            }
            Event::TimerCreated { fire_at, .. } | Event::TimerFired { fire_at, .. } => {
                item.fire_at = Some(dtf_timestamp(*fire_at));
            }
            Event::EventRaised { name, input } => {
                item.name = Some(name.clone());
                item.input = self.input(input);
            }
            Event::EventSent {
                instance_id,
                name,
                input,
                ..
            } => {
                item.name = Some(name.clone());
                item.instance_id = Some(instance_id.to_string());
                item.input = self.input(input);
            }
            Event::ContinuedAsNew { input, .. } => {
                item.orchestration_status = Some(RuntimeStatus::ContinuedAsNew.as_str());
                item.result = self.result(input);
            }
            Event::ExecutionTerminated { reason, .. } => {
                item.input = self.show.input.then(|| Value::String(reason.clone()));
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
                if self.show.history_output {
                    item.result = match (output, failure) {
                        (Some(o), _) => Some(json_or_string(o)),
                        (None, Some(f)) => Some(Value::String(f.message.clone())),
                        (None, None) => Some(Value::Null),
                    };
                }
                item.failure_details = failure.as_ref().map(|f| failure_json(f, &PASCAL_CASE));
            }
            // Entity traffic of an orchestration.
            Event::EntityCalled {
                seq,
                entity,
                operation,
                input,
                ..
            } => {
                self.entity_requests
                    .insert(*seq, (entity.to_string(), operation.clone()));
                item = entity_message("EventSent", entity.to_string(), operation.clone());
                item.input = self.input(input);
            }
            Event::EntitySignaled {
                entity,
                operation,
                input,
                ..
            } => {
                item = entity_message("EventSent", entity.to_string(), operation.clone());
                item.input = self.input(input);
            }
            Event::EntityLockRequested { seq, entities, .. } => {
                // The request travels through the entities in lock order; the last grants.
                let (Some(first), Some(last)) = (entities.first(), entities.last()) else {
                    return;
                };
                self.entity_requests
                    .insert(*seq, (last.to_string(), LOCK.to_owned()));
                item = entity_message("EventSent", first.to_string(), LOCK.to_owned());
                item.input = self.show.input.then(|| instance_ids(entities));
            }
            Event::EntityUnlockSent { entities, .. } => {
                for entity in entities {
                    let release = entity_message("EventSent", entity.to_string(), RELEASE.into());
                    self.items.push(Some(release));
                }
                return;
            }
            Event::EntityResponded {
                seq,
                result,
                failure,
            } => {
                let (entity, name) = self.entity_requests.remove(seq).unzip();
                item = new("EventRaised");
                item.name = name;
                item.instance_id = entity;
                item.input = result.as_deref().and_then(|r| self.input(r));
                item.failure_details = failure.as_ref().map(|f| failure_json(f, &PASCAL_CASE));
            }
            Event::EntityLockGranted { seq, entities } => {
                let entity = self
                    .entity_requests
                    .remove(seq)
                    .map(|(entity, _)| entity)
                    .or_else(|| entities.last().map(InstanceId::to_string));
                item = new("EventRaised");
                item.name = Some(LOCK.to_owned());
                item.instance_id = entity;
            }
            // An entity's own inbox (not kept in history today; shaped for completeness).
            Event::EntityOperation {
                operation,
                input,
                sender,
                reply_to,
                ..
            } => {
                item = new("EventRaised");
                item.name = Some(operation.clone());
                item.instance_id = sender
                    .as_ref()
                    .or(reply_to.as_ref().map(|r| &r.instance_id))
                    .map(InstanceId::to_string);
                item.input = self.input(input);
            }
            Event::EntityLockRequest { owner, .. } => {
                item = entity_message("EventRaised", owner.instance_id.to_string(), LOCK.into());
            }
            Event::EntityUnlock { owner, .. } => {
                item = entity_message("EventRaised", owner.to_string(), RELEASE.into());
            }
            other => item.other = generic_fields(other, self.show),
        }
        self.items.push(Some(item));
    }
}

fn instance_ids(ids: &[InstanceId]) -> Value {
    Value::Array(ids.iter().map(|id| Value::String(id.to_string())).collect())
}

fn set_failure(item: &mut HistoryItem, failure: &FailureDetails) {
    item.reason = Some(failure.message.clone());
    item.details = Some(failure.to_string());
    item.failure_details = Some(failure_json(failure, &PASCAL_CASE));
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

/// Fields of an event without a dedicated shape: its serde fields with `PascalCase` keys
/// at every depth, payloads as JSON values (`input` as `Input` with `showInput`, `result`
/// and `output` as `Result` with `showHistoryOutput`), a `failure` as `FailureDetails`.
fn generic_fields(event: &Event, show: Show) -> Map<String, Value> {
    let Ok(Value::Object(fields)) = serde_json::to_value(event) else {
        return Map::new();
    };
    let payload = |v: Value| match v {
        Value::String(s) => json_or_string(&s),
        other => other,
    };
    let mut out = Map::new();
    for (k, v) in fields {
        match k.as_str() {
            // The kind is `EventType`; sequence numbers are Durable Task's `EventId`, which
            // Durable Functions removes; payloads are shown only when asked for.
            "eventType" | "location" | "seq" | "input" | "result" | "output" => {
                let key = match k.as_str() {
                    "input" if show.input => "Input",
                    "result" | "output" if show.history_output => "Result",
                    _ => continue,
                };
                out.insert(key.into(), payload(v));
            }
            "failure" => {
                let rendered = match serde_json::from_value::<FailureDetails>(v.clone()) {
                    Ok(f) => failure_json(&f, &PASCAL_CASE),
                    Err(_) => pascal_keys(v),
                };
                out.insert("FailureDetails".into(), rendered);
            }
            _ => {
                out.insert(pascal_case(&k), pascal_keys(v));
            }
        }
    }
    out
}

/// `v` with every object key in `PascalCase`.
fn pascal_keys(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| (pascal_case(&k), pascal_keys(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(pascal_keys).collect()),
        other => other,
    }
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
    use crate::history::ParentRef;

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
                    trace_context: None,
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
                    timeout: None,
                    heartbeat_timeout: None,
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
                    timeout: None,
                    heartbeat_timeout: None,
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
        assert_eq!(v[1]["ScheduledTime"], "1970-01-01T00:00:01.0000000Z");
        assert_eq!(v[1]["Timestamp"], "1970-01-01T00:00:02.0000000Z");
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
        let mut history = sample();
        history.extend(entity_sample());
        let v = serde_json::to_value(shape_history(&history, show)).unwrap();
        for e in v.as_array().unwrap() {
            assert!(e.get("Result").is_none(), "{e}");
            assert!(e.get("Input").is_none(), "{e}");
            assert!(e.get("EventId").is_none() && e.get("IsPlayed").is_none());
        }
    }

    fn entity(name: &str, key: &str) -> InstanceId {
        crate::entity::EntityId::new(name, key)
            .unwrap()
            .instance_id()
    }

    /// An orchestration that calls, signals and locks entities.
    fn entity_sample() -> Vec<HistoryEvent> {
        let counter = entity("counter", "k1");
        let (a, b) = (entity("account", "a"), entity("account", "b"));
        let mut failure = FailureDetails::new("InsufficientFunds", "balance too low");
        failure.causes = vec!["account `a` has 3".into()];
        let failure = failure.non_retriable();
        vec![
            at(
                10_001,
                Event::EntityCalled {
                    seq: 0,
                    entity: counter.clone(),
                    operation: "add".into(),
                    input: "5".into(),
                    location: None,
                },
            ),
            at(
                10_002,
                Event::EntitySignaled {
                    seq: 1,
                    entity: counter.clone(),
                    operation: "reset".into(),
                    input: "null".into(),
                    location: None,
                },
            ),
            at(
                10_003,
                Event::EntityResponded {
                    seq: 0,
                    result: Some("{\"value\":5}".into()),
                    failure: None,
                },
            ),
            at(
                10_004,
                Event::EntityLockRequested {
                    seq: 2,
                    entities: vec![a.clone(), b.clone()],
                    location: None,
                },
            ),
            at(
                10_005,
                Event::EntityLockGranted {
                    seq: 2,
                    entities: vec![a.clone(), b.clone()],
                },
            ),
            at(
                10_006,
                Event::EntityCalled {
                    seq: 3,
                    entity: a.clone(),
                    operation: "withdraw".into(),
                    input: "30".into(),
                    location: None,
                },
            ),
            at(
                10_007,
                Event::EntityResponded {
                    seq: 3,
                    result: None,
                    failure: Some(failure),
                },
            ),
            at(
                10_008,
                Event::EntityUnlockSent {
                    seq: 4,
                    entities: vec![a, b],
                    location: None,
                },
            ),
        ]
    }

    /// Every object key at every depth, with the path to it.
    fn keys(v: &Value, path: &str, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    out.push(format!("{path}/{k}"));
                    // Payloads are user data: their keys are not ours to shape.
                    if k != "Input" && k != "Result" {
                        keys(v, &format!("{path}/{k}"), out);
                    }
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    keys(v, &format!("{path}/{i}"), out);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn entity_traffic_is_event_sent_and_event_raised_with_the_entity_id() {
        let show = Show {
            input: true,
            history_output: true,
        };
        let v = serde_json::to_value(shape_history(&entity_sample(), show)).unwrap();
        let summary: Vec<(String, String, String)> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let text = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
                (text("EventType"), text("Name"), text("InstanceId"))
            })
            .collect();
        let row = |t: &str, n: &str, i: &str| (t.to_owned(), n.to_owned(), i.to_owned());
        assert_eq!(
            summary,
            [
                row("EventSent", "add", "@counter@k1"),
                row("EventSent", "reset", "@counter@k1"),
                row("EventRaised", "add", "@counter@k1"),
                row("EventSent", "lock", "@account@a"),
                row("EventRaised", "lock", "@account@b"),
                row("EventSent", "withdraw", "@account@a"),
                row("EventRaised", "withdraw", "@account@a"),
                row("EventSent", "release", "@account@a"),
                row("EventSent", "release", "@account@b"),
            ]
        );
        // Payloads are JSON values, not JSON text.
        assert_eq!(v[0]["Input"], 5);
        assert_eq!(v[1]["Input"], Value::Null);
        assert_eq!(v[2]["Input"], serde_json::json!({"value": 5}));
        assert_eq!(
            v[3]["Input"],
            serde_json::json!(["@account@a", "@account@b"])
        );
        // A failed operation: Durable Task's FailureDetails, PascalCase all the way down.
        assert_eq!(
            v[6]["FailureDetails"],
            serde_json::json!({
                "ErrorType": "InsufficientFunds",
                "ErrorMessage": "balance too low",
                "Causes": ["account `a` has 3"],
                "IsNonRetriable": true,
            })
        );
        assert_eq!(v[6].get("Input"), None);
        let mut all = Vec::new();
        keys(&v, "", &mut all);
        for k in &all {
            let last = k.rsplit('/').next().unwrap();
            let numeric = last.chars().all(|c| c.is_ascii_digit());
            assert!(
                numeric
                    || (last.starts_with(|c: char| c.is_ascii_uppercase()) && !last.contains('_')),
                "key {k} is not PascalCase"
            );
        }
        assert_eq!(v[0]["Timestamp"], "1970-01-01T00:00:10.0010000Z");
    }

    #[test]
    fn an_entity_inbox_renders_as_events_raised_from_the_senders() {
        let owner = ParentRef {
            instance_id: InstanceId::new("orch-1").unwrap(),
            execution: 0,
            seq: 2,
        };
        let history = [
            at(
                1,
                Event::EntityOperation {
                    operation: "add".into(),
                    input: "\"7\"".into(),
                    sender: Some(owner.instance_id.clone()),
                    reply_to: Some(owner.clone()),
                    trace_context: None,
                },
            ),
            at(
                2,
                Event::EntityLockRequest {
                    owner: owner.clone(),
                    entities: vec![entity("account", "a")],
                    position: 0,
                },
            ),
            at(
                3,
                Event::EntityUnlock {
                    owner: owner.instance_id.clone(),
                    execution: Some(owner.execution),
                },
            ),
        ];
        let show = Show {
            input: true,
            history_output: false,
        };
        let v = serde_json::to_value(shape_history(&history, show)).unwrap();
        for (e, name) in v.as_array().unwrap().iter().zip(["add", "lock", "release"]) {
            assert_eq!(e["EventType"], "EventRaised", "{e}");
            assert_eq!(e["Name"], name, "{e}");
            assert_eq!(e["InstanceId"], "orch-1", "{e}");
        }
        assert_eq!(v[0]["Input"], "7");
    }

    #[test]
    fn events_without_a_dedicated_shape_get_pascal_case_keys_and_json_payloads() {
        let mut failure = FailureDetails::new("Boom", "it broke");
        failure.causes = vec!["deeper".into()];
        let event = Event::EntityResponded {
            seq: 7,
            result: Some("[1,2]".into()),
            failure: Some(failure),
        };
        let all = Show {
            input: true,
            history_output: true,
        };
        let fields = generic_fields(&event, all);
        assert_eq!(fields.get("Seq"), None);
        assert_eq!(fields["Result"], serde_json::json!([1, 2]));
        assert_eq!(fields["FailureDetails"]["ErrorType"], "Boom");
        assert_eq!(fields["FailureDetails"]["Causes"][0], "deeper");
        let none = Show {
            input: false,
            history_output: false,
        };
        assert_eq!(generic_fields(&event, none).get("Result"), None);
        assert_eq!(
            pascal_keys(serde_json::json!({"a_b": [{"c_d": 1}]})),
            serde_json::json!({"AB": [{"CD": 1}]})
        );
    }

    #[test]
    fn payloads_that_are_not_json_stay_strings() {
        assert_eq!(json_or_string("{\"a\":1}"), serde_json::json!({"a": 1}));
        assert_eq!(json_or_string("stop now"), Value::String("stop now".into()));
        assert_eq!(
            seconds_precision(Timestamp::from_unix_millis(1_234)),
            "1970-01-01T00:00:01Z"
        );
        assert_eq!(
            dtf_timestamp(Timestamp::from_unix_millis(1_234)),
            "1970-01-01T00:00:01.2340000Z"
        );
        assert_eq!(pascal_case("fire_at"), "FireAt");
    }
}
