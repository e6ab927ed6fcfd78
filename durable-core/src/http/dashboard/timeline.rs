//! The instance timeline: bars computed from a history (pure), drawn as SVG.
//!
//! A bar opens at a scheduling event and closes at its completion: `TaskScheduled` →
//! `TaskCompleted`/`TaskFailed` (activities), `TimerCreated` → `TimerFired`,
//! `SubOrchestrationCreated` → `SubOrchestrationCompleted`/`Failed`, `EntityCalled` →
//! `EntityResponded`; `EventRaised` is a point. A retried call shows as one bar per attempt,
//! numbered from 1 (an attempt follows a failure of the same kind and name scheduled from the
//! same place in the code); an action a rewind re-runs gets a new attempt bar from the rewind.

use std::collections::HashMap;
use std::fmt::Write as _;

use maud::{Markup, html};

use crate::history::{Event, HistoryEvent};
use crate::ids::Timestamp;

/// How a bar ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Completed (or fired, or answered).
    Completed,
    /// Failed, with the failure message.
    Failed(String),
    /// Still open.
    Pending,
}

/// One bar (or point, for events) of the timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Bar {
    /// `activity`, `timer`, `suborchestration`, `event` or `entity`.
    pub(super) kind: &'static str,
    /// Activity, timer, orchestrator, event or `entity.operation` name.
    pub(super) name: String,
    /// The action's sequence number (the history index for events).
    pub(super) seq: u64,
    /// Attempt number, from 1.
    pub(super) attempt: u32,
    /// Opened at (Unix ms).
    pub(super) start: u64,
    /// Closed at (Unix ms); `None` while pending.
    pub(super) end: Option<u64>,
    /// How it ended.
    pub(super) outcome: Outcome,
}

/// The bars of `history`, in the order they opened.
pub(super) fn bars(history: &[HistoryEvent]) -> Vec<Bar> {
    let mut bars: Vec<Bar> = Vec::new();
    let mut open: HashMap<(&'static str, u64), usize> = HashMap::new();
    let mut failures: HashMap<AttemptKey, u32> = HashMap::new();
    // Each bar's attempt key, for the rewind that re-runs it.
    let mut keys: Vec<AttemptKey> = Vec::new();
    for e in history {
        let at = e.timestamp.as_unix_millis();
        if let Event::ExecutionRewound { seqs, .. } = &e.event {
            reopen_rewound(seqs, at, &mut bars, &mut keys, &mut open);
            continue;
        }
        let location =
            |l: &Option<crate::history::SourceLocation>| l.as_ref().map(ToString::to_string);
        let mut start = |kind: &'static str, seq: u64, name: String, place: Option<String>| {
            let key = (kind, name.clone(), place);
            let attempt = failures.get(&key).copied().unwrap_or(0) + 1;
            keys.push(key);
            open.insert((kind, seq), bars.len());
            bars.push(Bar {
                kind,
                name,
                seq,
                attempt,
                start: at,
                end: None,
                outcome: Outcome::Pending,
            });
        };
        let close = match &e.event {
            Event::TaskScheduled {
                seq,
                name,
                location: place,
                ..
            } => {
                start("activity", *seq, name.clone(), location(place));
                None
            }
            Event::TimerCreated { seq, fire_at, .. } => {
                let wait = fire_at.as_unix_millis().saturating_sub(at);
                start(
                    "timer",
                    *seq,
                    format!("timer {}", duration_text(wait)),
                    None,
                );
                None
            }
            Event::SubOrchestrationCreated {
                seq,
                name,
                location: place,
                ..
            } => {
                start("suborchestration", *seq, name.clone(), location(place));
                None
            }
            Event::EntityCalled {
                seq,
                entity,
                operation,
                ..
            } => {
                start("entity", *seq, format!("{entity}.{operation}"), None);
                None
            }
            Event::EventRaised { name, .. } => {
                keys.push(("event", name.clone(), None));
                bars.push(Bar {
                    kind: "event",
                    name: name.clone(),
                    seq: e.index,
                    attempt: 1,
                    start: at,
                    end: Some(at),
                    outcome: Outcome::Completed,
                });
                None
            }
            other => completion(other),
        };
        if let Some((kind, seq, outcome)) = close
            && let Some(i) = open.remove(&(kind, seq))
        {
            let bar = &mut bars[i];
            bar.end = Some(at);
            let key = keys[i].clone();
            if matches!(outcome, Outcome::Failed(_)) {
                *failures.entry(key).or_insert(0) += 1;
            } else {
                failures.remove(&key);
            }
            bar.outcome = outcome;
        }
    }
    bars
}

/// The bar a completion closes (kind and sequence number), and how it ended.
fn completion(event: &Event) -> Option<(&'static str, u64, Outcome)> {
    match event {
        Event::TaskCompleted { seq, .. } => Some(("activity", *seq, Outcome::Completed)),
        Event::TaskFailed { seq, failure, .. } => {
            Some(("activity", *seq, Outcome::Failed(failure.message.clone())))
        }
        Event::TimerFired { seq, .. } => Some(("timer", *seq, Outcome::Completed)),
        Event::SubOrchestrationCompleted { seq, .. } => {
            Some(("suborchestration", *seq, Outcome::Completed))
        }
        Event::SubOrchestrationFailed { seq, failure } => Some((
            "suborchestration",
            *seq,
            Outcome::Failed(failure.message.clone()),
        )),
        Event::EntityResponded { seq, failure, .. } => Some((
            "entity",
            *seq,
            failure
                .as_ref()
                .map_or(Outcome::Completed, |f| Outcome::Failed(f.message.clone())),
        )),
        _ => None,
    }
}

/// The actions a rewind re-runs run again under their numbers, with no new scheduling event:
/// each gets a new attempt bar from the rewind (`at`) on.
fn reopen_rewound(
    seqs: &[u64],
    at: u64,
    bars: &mut Vec<Bar>,
    keys: &mut Vec<AttemptKey>,
    open: &mut HashMap<(&'static str, u64), usize>,
) {
    for seq in seqs {
        let Some(i) = bars
            .iter()
            .rposition(|b| b.seq == *seq && matches!(b.kind, "activity" | "suborchestration"))
        else {
            continue;
        };
        let previous = bars[i].clone();
        open.insert((previous.kind, *seq), bars.len());
        keys.push(keys[i].clone());
        bars.push(Bar {
            attempt: previous.attempt + 1,
            start: at,
            end: None,
            outcome: Outcome::Pending,
            ..previous
        });
    }
}

/// Failures in a row of one call: kind, name and the call's place in the code (a retry
/// policy schedules every attempt from the same place).
type AttemptKey = (&'static str, String, Option<String>);

/// `1.234 s`, `120 ms`, `2 min 3 s`.
pub(super) fn duration_text(ms: u64) -> String {
    if ms < 1_000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.3} s", ms as f64 / 1_000.0)
    } else if ms < 3_600_000 {
        format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1_000)
    } else {
        format!("{} h {} min", ms / 3_600_000, (ms % 3_600_000) / 60_000)
    }
}

const WIDTH: u64 = 1160;
const LABEL: u64 = 260;
const ROW: u64 = 22;

/// The timeline as SVG: one row per bar, geometry in attributes (the page's CSP forbids
/// inline styles); pending bars reach `now`.
pub(super) fn svg(bars: &[Bar], now: Timestamp) -> Markup {
    let now = now.as_unix_millis();
    let t0 = bars.iter().map(|b| b.start).min().unwrap_or(now);
    let t1 = bars
        .iter()
        .map(|b| b.end.unwrap_or(now))
        .max()
        .unwrap_or(now)
        .max(t0 + 1);
    let span = (t1 - t0) as f64;
    let plot = (WIDTH - LABEL - 10) as f64;
    let x = |t: u64| LABEL as f64 + (t.saturating_sub(t0) as f64 / span) * plot;
    let height = ROW * (bars.len() as u64).max(1) + 24;
    html! {
        svg xmlns="http://www.w3.org/2000/svg" width=(WIDTH) height=(height)
            viewBox={ "0 0 " (WIDTH) " " (height) } role="img" aria-label="timeline" {
            text class="axis" x=(LABEL) y=(height - 6) { "0" }
            text class="axis" x=(WIDTH - 10) y=(height - 6) text-anchor="end" {
                (duration_text(t1 - t0))
            }
            @if bars.is_empty() {
                text class="empty" x="10" y="16" { "no activities, timers, sub-orchestrations, events or entity calls yet" }
            }
            @for (row, bar) in bars.iter().enumerate() {
                @let y = row as u64 * ROW + 4;
                @let x0 = x(bar.start);
                @let x1 = x(bar.end.unwrap_or(now)).max(x0 + 4.0);
                @let outcome = match &bar.outcome {
                    Outcome::Completed => "completed",
                    Outcome::Failed(_) => "failed",
                    Outcome::Pending => "pending",
                };
                g class={ "bar " (bar.kind) " " (outcome) } data-kind=(bar.kind) data-name=(bar.name)
                    data-seq=(bar.seq) data-attempt=(bar.attempt) {
                    title { (title(bar, now)) }
                    text class="label" x="4" y=(y + 13) {
                        (label(bar))
                    }
                    @if bar.kind == "event" {
                        circle cx=(format!("{x0:.1}")) cy=(y + 9) r="5" {}
                    } @else {
                        rect x=(format!("{x0:.1}")) y=(y + 2) width=(format!("{:.1}", x1 - x0)) height="14" rx="2" {}
                    }
                }
            }
        }
    }
}

fn label(bar: &Bar) -> String {
    let mut text: String = bar.name.chars().take(34).collect();
    if bar.attempt > 1 {
        let _ = write!(text, " #{}", bar.attempt);
    }
    text
}

fn title(bar: &Bar, now: u64) -> String {
    let mut t = format!("{} {}", bar.kind, bar.name);
    if bar.attempt > 1 {
        let _ = write!(t, " (attempt {})", bar.attempt);
    }
    if bar.kind != "event" {
        let d = bar.end.unwrap_or(now).saturating_sub(bar.start);
        let _ = write!(t, " — {}", duration_text(d));
    }
    match &bar.outcome {
        Outcome::Completed if bar.kind == "event" => t.push_str(" — raised"),
        Outcome::Completed => t.push_str(" — completed"),
        Outcome::Failed(m) => {
            let _ = write!(t, " — failed: {m}");
        }
        Outcome::Pending => t.push_str(" — pending"),
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::FailureDetails;

    fn at(index: u64, ms: u64, event: Event) -> HistoryEvent {
        HistoryEvent {
            index,
            timestamp: Timestamp::from_unix_millis(ms),
            event,
        }
    }

    fn scheduled(seq: u64, name: &str) -> Event {
        Event::TaskScheduled {
            seq,
            name: name.into(),
            input: "null".into(),
            location: None,
            timeout: None,
            heartbeat_timeout: None,
        }
    }

    fn failed(seq: u64, message: &str) -> Event {
        Event::TaskFailed {
            seq,
            failure: FailureDetails::new("E", message),
            heartbeat: None,
        }
    }

    fn scheduled_at(seq: u64, name: &str, line: u32) -> Event {
        let Event::TaskScheduled {
            seq, name, input, ..
        } = scheduled(seq, name)
        else {
            unreachable!()
        };
        Event::TaskScheduled {
            seq,
            name,
            input,
            location: Some(crate::history::SourceLocation {
                file: "src/flow.rs".into(),
                line,
                column: 9,
            }),
            timeout: None,
            heartbeat_timeout: None,
        }
    }

    #[test]
    fn a_rewound_action_gets_a_new_attempt_that_its_result_closes() {
        let history = vec![
            at(0, 1_000, scheduled(0, "charge")),
            at(1, 1_500, failed(0, "down")),
            at(
                2,
                9_000,
                Event::ExecutionRewound {
                    reason: "fixed".into(),
                    seqs: vec![0],
                },
            ),
            at(
                3,
                9_400,
                Event::TaskCompleted {
                    seq: 0,
                    result: "1".into(),
                },
            ),
        ];
        let b = bars(&history);
        assert_eq!(b.len(), 2, "{b:?}");
        assert_eq!(b[0].outcome, Outcome::Failed("down".into()));
        assert_eq!((b[1].seq, b[1].attempt), (0, 2));
        assert_eq!((b[1].start, b[1].end), (9_000, Some(9_400)));
        assert_eq!(b[1].outcome, Outcome::Completed);
    }

    #[test]
    fn a_failed_call_does_not_make_a_call_from_elsewhere_a_retry() {
        let history = vec![
            at(0, 1_000, scheduled_at(0, "charge", 10)),
            at(1, 1_500, failed(0, "declined")),
            // Another call of the same activity, from another line: a first attempt.
            at(2, 1_600, scheduled_at(1, "charge", 20)),
            // The retry of the first call, from its own line: attempt 2.
            at(3, 1_700, scheduled_at(2, "charge", 10)),
        ];
        let b = bars(&history);
        assert_eq!(
            b.iter().map(|b| b.attempt).collect::<Vec<_>>(),
            vec![1, 1, 2]
        );
    }

    #[test]
    fn retries_are_attempts_and_completions_close_bars() {
        let history = vec![
            at(0, 1_000, scheduled(0, "charge")),
            at(
                1,
                1_500,
                Event::TaskFailed {
                    seq: 0,
                    failure: FailureDetails::new("E", "card declined"),
                    heartbeat: None,
                },
            ),
            at(2, 1_500, scheduled(2, "charge")),
            at(
                3,
                2_000,
                Event::TaskCompleted {
                    seq: 2,
                    result: "1".into(),
                },
            ),
            at(
                4,
                2_100,
                Event::EventRaised {
                    name: "approve".into(),
                    input: "null".into(),
                },
            ),
            at(5, 2_200, scheduled(3, "ship")),
        ];
        let bars = bars(&history);
        assert_eq!(bars.len(), 4);
        assert_eq!((bars[0].attempt, bars[0].end), (1, Some(1_500)));
        assert_eq!(bars[0].outcome, Outcome::Failed("card declined".into()));
        assert_eq!((bars[1].attempt, bars[1].end), (2, Some(2_000)));
        assert_eq!(bars[1].outcome, Outcome::Completed);
        assert_eq!(bars[2].kind, "event");
        assert_eq!((bars[3].name.as_str(), bars[3].end), ("ship", None));
        let svg = svg(&bars, Timestamp::from_unix_millis(3_000)).into_string();
        assert_eq!(svg.matches("data-kind=\"activity\"").count(), 3);
        assert!(svg.contains("data-attempt=\"2\""));
        assert!(svg.contains("activity charge (attempt 2) — 500 ms — completed"));
        assert_eq!(duration_text(2 * 3_600_000 + 60_000), "2 h 1 min");
    }

    #[test]
    fn timers_sub_orchestrations_and_entity_calls_are_bars() {
        let child = crate::ids::InstanceId::new("child-1").unwrap();
        let counter = crate::ids::InstanceId::new_system("@counter@a").unwrap();
        let history = vec![
            at(
                0,
                0,
                Event::TimerCreated {
                    seq: 0,
                    fire_at: Timestamp::from_unix_millis(3_600_000),
                    location: None,
                },
            ),
            at(
                1,
                3_600_000,
                Event::TimerFired {
                    seq: 0,
                    fire_at: Timestamp::from_unix_millis(3_600_000),
                },
            ),
            at(
                2,
                3_600_000,
                Event::SubOrchestrationCreated {
                    seq: 1,
                    name: "child".into(),
                    instance_id: child,
                    input: "null".into(),
                    version: None,
                    location: None,
                },
            ),
            at(
                3,
                3_600_000,
                Event::EntityCalled {
                    seq: 2,
                    entity: counter,
                    operation: "add".into(),
                    input: "1".into(),
                    location: None,
                },
            ),
            at(
                4,
                3_600_100,
                Event::EntityResponded {
                    seq: 2,
                    result: Some("null".into()),
                    failure: None,
                },
            ),
            at(
                5,
                3_601_000,
                Event::SubOrchestrationFailed {
                    seq: 1,
                    failure: FailureDetails::new("E", "child broke"),
                },
            ),
        ];
        let bars = bars(&history);
        let summary: Vec<_> = bars
            .iter()
            .map(|b| (b.kind, b.name.as_str(), b.seq, b.end))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("timer", "timer 1 h 0 min", 0, Some(3_600_000)),
                ("suborchestration", "child", 1, Some(3_601_000)),
                ("entity", "@counter@a.add", 2, Some(3_600_100)),
            ]
        );
        assert_eq!(bars[1].outcome, Outcome::Failed("child broke".into()));
        assert_eq!(bars[2].outcome, Outcome::Completed);
    }
}
