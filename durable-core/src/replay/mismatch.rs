//! Non-determinism diagnostics: what history recorded versus what the code does now, each
//! with its source location.

use crate::context::{Action, ActionKind};
use crate::history::{Event, HistoryEvent, RuntimeStatus};

use super::{Outcome, Replayer, recorded_kind};

/// Why replaying an orchestration could not proceed. The instance is left as it is (not
/// failed) and retried with back-off, so deploying fixed code rescues it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// The code took a different path than the one recorded in history.
    #[error("non-determinism in orchestration `{name}` (instance `{instance}`): {detail}")]
    Nondeterminism {
        /// Instance id.
        instance: String,
        /// Orchestrator name.
        name: String,
        /// Which step differs: recorded versus now, with source locations.
        detail: String,
    },
    /// The code awaits something that no durable event can complete.
    #[error(
        "orchestration `{name}` (instance `{instance}`) is awaiting something that is not a durable \
         operation{}; orchestrations may only await ctx operations — use ctx.sleep(..) instead of \
         tokio timers, ctx.wait_for_event(..) instead of channels, and an activity for IO",
        if *woken_from_outside { " (it was woken from outside the orchestration)" } else { "" }
    )]
    ForeignAwait {
        /// Instance id.
        instance: String,
        /// Orchestrator name.
        name: String,
        /// `true` if a foreign waker fired.
        woken_from_outside: bool,
    },
    /// [`replay_history`](super::replay_history) was asked to replay an orchestrator that the
    /// registry does not know.
    #[error("no orchestrator named `{name}` is registered, so its history cannot be replayed")]
    UnknownOrchestrator {
        /// The orchestrator name.
        name: String,
    },
}

fn loc_text(event: &Event) -> String {
    let loc = match event {
        Event::TaskScheduled { location, .. }
        | Event::TimerCreated { location, .. }
        | Event::SubOrchestrationCreated { location, .. }
        | Event::OrchestrationCreated { location, .. }
        | Event::EventSent { location, .. } => location.as_ref(),
        _ => None,
    };
    loc.map_or_else(|| "an unknown location".to_owned(), ToString::to_string)
}

fn recorded_text(event: &Event) -> String {
    match event {
        e if e.action_seq().is_some() => recorded_kind(e).to_string(),
        other => format!("`{}`", other.kind()),
    }
}

fn status_text(status: RuntimeStatus) -> &'static str {
    match status {
        RuntimeStatus::ContinuedAsNew => "continued as new",
        RuntimeStatus::Completed => "completed",
        RuntimeStatus::Failed => "failed",
        RuntimeStatus::Terminated => "terminated",
        _ => "running",
    }
}

impl Replayer {
    fn nondeterminism(&self, detail: String) -> ReplayError {
        ReplayError::Nondeterminism {
            instance: self.instance_id.to_string(),
            name: self.name.clone(),
            detail,
        }
    }

    /// Every action the code emitted before this point must have been matched.
    pub(super) fn check_no_extra(
        &mut self,
        index: u64,
        next: Option<&Event>,
    ) -> Result<(), ReplayError> {
        let Some(extra) = self.pending_match.front() else {
            return Ok(());
        };
        let there = match next {
            Some(e) => format!("history step {index} is `{}`", e.kind()),
            None => format!("history ends after step {}", index.saturating_sub(1)),
        };
        Err(self.nondeterminism(format!(
            "the code now schedules {} at {}, which history does not record ({there})",
            extra.detail.kind(),
            extra.location
        )))
    }

    pub(super) fn mismatch_missing(&self, ev: &HistoryEvent) -> ReplayError {
        self.nondeterminism(format!(
            "history step {} recorded {} (scheduled at {}); the code now schedules nothing there",
            ev.index,
            recorded_text(&ev.event),
            loc_text(&ev.event)
        ))
    }

    pub(super) fn mismatch_different(&self, ev: &HistoryEvent, action: &Action) -> ReplayError {
        let now_kind: ActionKind = action.detail.kind();
        self.nondeterminism(format!(
            "history step {} recorded {} (scheduled at {}); the code now schedules {} at {}",
            ev.index,
            recorded_text(&ev.event),
            loc_text(&ev.event),
            now_kind,
            action.location
        ))
    }

    pub(super) fn mismatch_finished_early(&self, ev: &HistoryEvent) -> ReplayError {
        let status = self
            .outcome
            .as_ref()
            .map_or(RuntimeStatus::Running, Outcome::status);
        self.nondeterminism(format!(
            "the code now finishes ({}) but history continues at step {} with {}",
            status_text(status),
            ev.index,
            recorded_text(&ev.event)
        ))
    }

    pub(super) fn mismatch_finished_at_end(&self) -> ReplayError {
        let status = self
            .outcome
            .as_ref()
            .map_or(RuntimeStatus::Running, Outcome::status);
        self.nondeterminism(format!(
            "the code now finishes ({}) where history, ending at step {}, shows it still running",
            status_text(status),
            self.history_len.saturating_sub(1)
        ))
    }

    pub(super) fn check_completion(&self, ev: &HistoryEvent) -> Result<(), ReplayError> {
        let recorded = match &ev.event {
            Event::ExecutionCompleted { status, .. } => *status,
            _ => RuntimeStatus::ContinuedAsNew,
        };
        let now = self.outcome.as_ref().map(Outcome::status);
        if now == Some(recorded) {
            return Ok(());
        }
        Err(self.nondeterminism(format!(
            "history step {} records that the execution {}; the code now {}",
            ev.index,
            status_text(recorded),
            match now {
                Some(s) => format!("ends as {}", status_text(s)),
                None => "has not finished there".to_owned(),
            }
        )))
    }
}
