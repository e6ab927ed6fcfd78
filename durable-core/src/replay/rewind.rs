//! Rewinding a failed execution: which recorded events replay skips, and what must run again.
//!
//! History stays append-only. A rewind appends an [`Event::ExecutionRewound`] marker; replay
//! then skips the marker, the failed `ExecutionCompleted` before it and the failures of the
//! actions the marker lists, so the code resumes at the point of failure with those actions
//! pending. The worker re-drives everything the failed execution left unfinished
//! ([`plan`]): activities run again, timers are re-armed, failed sub-orchestrations are
//! rewound in turn and finished ones report their result again.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::context::Timeouts;
use crate::history::{Event, HistoryEvent, Payload, RuntimeStatus};
use crate::ids::{InstanceId, Timestamp};

/// Positions in `history` that replay skips because a later `ExecutionRewound` undid them
/// (the markers themselves included).
pub(crate) fn skipped_positions(history: &[HistoryEvent]) -> HashSet<usize> {
    let mut skipped = HashSet::new();
    if !history
        .iter()
        .any(|e| matches!(e.event, Event::ExecutionRewound { .. }))
    {
        return skipped;
    }
    let mut last_completion = None;
    let mut last_failure: HashMap<u64, usize> = HashMap::new();
    for (pos, e) in history.iter().enumerate() {
        match &e.event {
            Event::ExecutionCompleted { .. } => last_completion = Some(pos),
            Event::TaskFailed { seq, .. } | Event::SubOrchestrationFailed { seq, .. } => {
                last_failure.insert(*seq, pos);
            }
            Event::ExecutionRewound { seqs, .. } => {
                skipped.insert(pos);
                if let Some(c) = last_completion.take() {
                    skipped.insert(c);
                }
                for s in seqs {
                    if let Some(f) = last_failure.remove(s) {
                        skipped.insert(f);
                    }
                }
            }
            _ => {}
        }
    }
    skipped
}

/// Work a rewind re-drives.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RewindPlan {
    /// Actions whose failures the rewind undoes (recorded in the marker).
    pub seqs: Vec<u64>,
    /// Activities to run again.
    pub activities: Vec<Rerun>,
    /// Timers to re-arm: (seq, due time).
    pub timers: Vec<(u64, Timestamp)>,
    /// Sub-orchestrations with no result (failed, or whose result reached the failed parent
    /// and was dropped): (seq, child id).
    pub children: Vec<(u64, InstanceId)>,
}

/// An activity a rewind runs again, as it was scheduled.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Rerun {
    pub seq: u64,
    pub name: String,
    pub input: Payload,
    pub timeouts: Timeouts,
    /// The last heartbeat details of the failure the rewind undoes, to resume from.
    pub heartbeat: Option<Payload>,
}

impl Rerun {
    /// The rerun of the activity `scheduled` records, resuming from `heartbeat`.
    fn of(seq: u64, scheduled: &Event, heartbeat: Option<&Payload>) -> Option<Self> {
        let Event::TaskScheduled {
            name,
            input,
            timeout,
            heartbeat_timeout,
            ..
        } = scheduled
        else {
            return None;
        };
        Some(Self {
            seq,
            name: name.clone(),
            input: input.clone(),
            timeouts: Timeouts {
                timeout: *timeout,
                heartbeat_timeout: *heartbeat_timeout,
            },
            heartbeat: heartbeat.cloned(),
        })
    }
}

/// Why an execution that failed inside a critical section cannot be rewound.
const IN_SECTION: &str = "it failed inside a critical section (its entity locks were \
    released when it failed, so the section cannot resume where it stopped); restart it instead";

/// What rewinding a failed execution with this history undoes and re-drives, or why it
/// cannot be rewound.
///
/// The failures undone are those delivered after the code's last action (the failures it did
/// not recover from; failures it handled, by a retry or a fallback, stay). Everything else the execution
/// left unfinished runs again, since results that arrived after the failure were dropped.
/// An execution with an unanswered entity call or an open critical section is refused: its
/// locks were released when it failed, and entity operations are not re-run.
pub(crate) fn plan(history: &[HistoryEvent]) -> Result<RewindPlan, String> {
    let skipped = skipped_positions(history);
    let view: Vec<&HistoryEvent> = history
        .iter()
        .enumerate()
        .filter(|(pos, _)| !skipped.contains(pos))
        .map(|(_, e)| e)
        .collect();
    let Some(end) = view.iter().rposition(|e| {
        matches!(
            e.event,
            Event::ExecutionCompleted {
                status: RuntimeStatus::Failed,
                ..
            }
        )
    }) else {
        return Err(
            "its history records no failure (a failure outside the orchestration code, \
                    such as a version mismatch, cannot be rewound; restart it instead)"
                .to_owned(),
        );
    };
    // Failures delivered after the code's last action: a failure before an action may have
    // been handled by it (a fallback, a retry), and undoing it would leave that action
    // recorded with nothing in the code to match it. A failure after it may have arrived in
    // an earlier episode (the code went on waiting for the rest of a `when_all`, say).
    let last_action = view[..end]
        .iter()
        .rposition(|e| e.event.action_seq().is_some())
        .unwrap_or(0);
    // A section released as the code's last action, in the step that failed, was left
    // because of the failure: a guard dropped by `?`, or released on the way out. Its
    // locks are gone, so the section cannot be resumed where it failed.
    let failing_step = view[..end]
        .iter()
        .rposition(|e| matches!(e.event, Event::OrchestratorStarted))
        .unwrap_or(0);
    if last_action > failing_step
        && matches!(view[last_action].event, Event::EntityUnlockSent { .. })
    {
        return Err(IN_SECTION.to_owned());
    }
    let undone: Vec<u64> = view[last_action..end]
        .iter()
        .filter_map(|e| match e.event {
            Event::TaskFailed { seq, .. } | Event::SubOrchestrationFailed { seq, .. } => Some(seq),
            _ => None,
        })
        .collect();

    // Actions without a result, once the undone failures no longer count.
    let mut open: BTreeMap<u64, &Event> = BTreeMap::new();
    let mut heartbeats: HashMap<u64, &Payload> = HashMap::new();
    let mut locked = 0usize;
    for e in &view[..end] {
        match &e.event {
            Event::TaskScheduled { seq, .. }
            | Event::TimerCreated { seq, .. }
            | Event::SubOrchestrationCreated { seq, .. }
            | Event::EntityCalled { seq, .. } => {
                open.insert(*seq, &e.event);
            }
            Event::EntityLockRequested { .. } => locked += 1,
            Event::EntityUnlockSent { .. } => locked = locked.saturating_sub(1),
            result => {
                if let Some(seq) = result.result_seq() {
                    let undone_failure = matches!(
                        result,
                        Event::TaskFailed { .. } | Event::SubOrchestrationFailed { .. }
                    ) && undone.contains(&seq);
                    if !undone_failure {
                        open.remove(&seq);
                    } else if let Event::TaskFailed {
                        heartbeat: Some(h), ..
                    } = result
                    {
                        heartbeats.insert(seq, h);
                    }
                }
            }
        }
    }
    if locked > 0 {
        return Err(IN_SECTION.to_owned());
    }
    let mut plan = RewindPlan {
        seqs: undone,
        ..RewindPlan::default()
    };
    for (seq, event) in open {
        match event {
            Event::TaskScheduled { .. } => {
                plan.activities
                    .extend(Rerun::of(seq, event, heartbeats.get(&seq).copied()));
            }
            Event::TimerCreated { fire_at, .. } => plan.timers.push((seq, *fire_at)),
            Event::SubOrchestrationCreated { instance_id, .. } => {
                plan.children.push((seq, instance_id.clone()));
            }
            Event::EntityCalled { entity, .. } => {
                return Err(format!(
                    "it was waiting for entity `{entity}` to answer a call, and entity \
                     operations are not re-run; restart it instead"
                ));
            }
            _ => {}
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::FailureDetails;

    fn h(events: Vec<Event>) -> Vec<HistoryEvent> {
        events
            .into_iter()
            .enumerate()
            .map(|(i, event)| HistoryEvent {
                index: i as u64,
                timestamp: Timestamp::EPOCH,
                event,
            })
            .collect()
    }

    fn scheduled(seq: u64) -> Event {
        Event::TaskScheduled {
            seq,
            name: format!("a{seq}"),
            input: "null".into(),
            location: None,
            timeout: None,
            heartbeat_timeout: None,
        }
    }

    fn failed(seq: u64) -> Event {
        Event::TaskFailed {
            seq,
            failure: FailureDetails::new("E", "boom"),
            heartbeat: None,
        }
    }

    fn completion() -> Event {
        Event::ExecutionCompleted {
            status: RuntimeStatus::Failed,
            output: None,
            failure: Some(FailureDetails::new("E", "boom")),
        }
    }

    fn started() -> Event {
        Event::ExecutionStarted {
            name: "o".into(),
            version: None,
            input: "null".into(),
            parent: None,
            scheduled_start: None,
            carried: Vec::new(),
            trace_context: None,
        }
    }

    #[test]
    fn undoes_the_final_failure_and_reruns_unfinished_siblings() {
        // 0 and 1 fail: 0 was handled in an earlier episode (a retry, say), 1 failed the run;
        // 2 was still running and its result was dropped; 3 completed.
        let history = h(vec![
            started(),
            Event::OrchestratorStarted,
            scheduled(0),
            scheduled(2),
            scheduled(3),
            Event::OrchestratorStarted,
            failed(0),
            Event::TaskCompleted {
                seq: 3,
                result: "1".into(),
            },
            scheduled(1),
            Event::OrchestratorStarted,
            failed(1),
            completion(),
        ]);
        let p = plan(&history).unwrap();
        assert_eq!(p.seqs, vec![1]);
        let rerun: Vec<u64> = p.activities.iter().map(|a| a.seq).collect();
        assert_eq!(rerun, vec![1, 2]);
        assert!(p.timers.is_empty() && p.children.is_empty());
    }

    #[test]
    fn a_rerun_keeps_its_timeouts_and_resumes_from_the_undone_failures_heartbeat() {
        let mut timed = scheduled(0);
        if let Event::TaskScheduled {
            timeout,
            heartbeat_timeout,
            ..
        } = &mut timed
        {
            *timeout = Some(std::time::Duration::from_secs(30));
            *heartbeat_timeout = Some(std::time::Duration::from_secs(5));
        }
        let mut beat = failed(0);
        if let Event::TaskFailed { heartbeat, .. } = &mut beat {
            *heartbeat = Some("17".into());
        }
        let history = h(vec![
            started(),
            Event::OrchestratorStarted,
            timed,
            Event::OrchestratorStarted,
            beat,
            completion(),
        ]);
        let p = plan(&history).unwrap();
        assert_eq!(
            p.activities,
            [Rerun {
                seq: 0,
                name: "a0".into(),
                input: "null".into(),
                timeouts: Timeouts {
                    timeout: Some(std::time::Duration::from_secs(30)),
                    heartbeat_timeout: Some(std::time::Duration::from_secs(5)),
                },
                heartbeat: Some("17".into()),
            }]
        );
    }

    #[test]
    fn a_rewound_history_skips_the_undone_events_and_can_fail_and_rewind_again() {
        let mut events = vec![
            started(),
            Event::OrchestratorStarted,
            scheduled(0),
            Event::OrchestratorStarted,
            failed(0),
            completion(),
            Event::ExecutionRewound {
                reason: "r".into(),
                seqs: vec![0],
            },
        ];
        let skipped = skipped_positions(&h(events.clone()));
        assert_eq!(skipped, HashSet::from([4, 5, 6]));
        // It fails again the same way, and is rewound again.
        events.extend([Event::OrchestratorStarted, failed(0), completion()]);
        let p = plan(&h(events.clone())).unwrap();
        assert_eq!(p.seqs, vec![0]);
        events.push(Event::ExecutionRewound {
            reason: "r".into(),
            seqs: vec![0],
        });
        let skipped = skipped_positions(&h(events));
        assert_eq!(skipped, HashSet::from([4, 5, 6, 8, 9, 10]));
    }

    #[test]
    fn a_failure_handled_in_the_failing_episode_stays() {
        // In one episode: 0 fails and the code falls back to 2; then 1 fails the run.
        let history = h(vec![
            started(),
            Event::OrchestratorStarted,
            scheduled(0),
            scheduled(1),
            Event::OrchestratorStarted,
            failed(0),
            scheduled(2),
            failed(1),
            completion(),
        ]);
        let p = plan(&history).unwrap();
        assert_eq!(p.seqs, vec![1]);
        let rerun: Vec<u64> = p.activities.iter().map(|a| a.seq).collect();
        assert_eq!(rerun, vec![1, 2]);
    }

    #[test]
    fn a_failure_delivered_before_the_failing_episode_is_undone() {
        // 0 fails in one episode while the code waits on 1; 1 completes in the next one, and
        // the code then reports 0's failure.
        let history = h(vec![
            started(),
            Event::OrchestratorStarted,
            scheduled(0),
            scheduled(1),
            Event::OrchestratorStarted,
            failed(0),
            Event::OrchestratorStarted,
            Event::TaskCompleted {
                seq: 1,
                result: "1".into(),
            },
            completion(),
        ]);
        let p = plan(&history).unwrap();
        assert_eq!(p.seqs, vec![0]);
        let rerun: Vec<u64> = p.activities.iter().map(|a| a.seq).collect();
        assert_eq!(rerun, vec![0]);
    }

    #[test]
    fn refuses_what_it_cannot_redo() {
        let running = h(vec![started(), Event::OrchestratorStarted, scheduled(0)]);
        assert!(plan(&running).unwrap_err().contains("no failure"));
        let in_section = h(vec![
            started(),
            Event::OrchestratorStarted,
            Event::EntityLockRequested {
                seq: 0,
                entities: vec![],
                location: None,
            },
            Event::OrchestratorStarted,
            completion(),
        ]);
        assert!(plan(&in_section).unwrap_err().contains("critical section"));
    }

    fn lock_requested(seq: u64) -> Event {
        Event::EntityLockRequested {
            seq,
            entities: vec![],
            location: None,
        }
    }

    fn unlocked(seq: u64) -> Event {
        Event::EntityUnlockSent {
            seq,
            entities: vec![],
            location: None,
        }
    }

    #[test]
    fn refuses_a_failure_that_ended_a_critical_section() {
        // Issue 12: the section's guard is dropped by `?` when the activity fails, so the
        // release is recorded after the failure, in the failing step.
        let history = h(vec![
            started(),
            Event::OrchestratorStarted,
            lock_requested(0),
            Event::OrchestratorStarted,
            Event::EntityLockGranted {
                seq: 0,
                entities: vec![],
            },
            scheduled(1),
            Event::OrchestratorStarted,
            failed(1),
            unlocked(2),
            completion(),
        ]);
        assert!(plan(&history).unwrap_err().contains("critical section"));
    }

    #[test]
    fn a_section_left_before_the_failing_step_does_not_block_a_rewind() {
        // The section ends, the code waits for an event, and fails in a later step.
        let history = h(vec![
            started(),
            Event::OrchestratorStarted,
            lock_requested(0),
            Event::OrchestratorStarted,
            Event::EntityLockGranted {
                seq: 0,
                entities: vec![],
            },
            unlocked(1),
            Event::OrchestratorStarted,
            Event::EventRaised {
                name: "go".into(),
                input: "1".into(),
            },
            completion(),
        ]);
        let p = plan(&history).unwrap();
        assert!(p.seqs.is_empty() && p.activities.is_empty());
    }
    /// A failure the code saw and acted on (a notification sent on the way out) is not
    /// undone: the action is recorded after it, and code that replays past an undone
    /// failure would have to take that action again at the same place. The rewind replays
    /// the code as it is: unchanged code fails the same way again (recorded after the
    /// `ExecutionRewound` marker); code fixed since can go on.
    #[test]
    fn a_failure_the_code_acted_on_is_not_undone() {
        let history = h(vec![
            started(),
            Event::OrchestratorStarted,
            scheduled(0),
            Event::OrchestratorStarted,
            failed(0),
            Event::EventSent {
                seq: 1,
                instance_id: InstanceId::new("ops").unwrap(),
                name: "failed".into(),
                input: "null".into(),
                location: None,
            },
            completion(),
        ]);
        let p = plan(&history).expect("rewindable");
        assert!(p.seqs.is_empty() && p.activities.is_empty(), "{p:?}");
    }
}
