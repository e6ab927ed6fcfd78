//! A typed view of one instance's history, for assertions.

use std::collections::HashSet;
use std::fmt;

use durable_core::history::{self, Event, HistoryEvent};
use durable_core::{Activity, FailureDetails, Timestamp};
use serde::de::DeserializeOwned;

/// The history of an instance's current execution, with typed queries.
///
/// Its `Display` is the readable one-event-per-line form of
/// [`durable_core::history::pretty`], meant for assertion messages.
///
/// # Examples
///
/// ```
/// use durable_core::prelude::*;
/// use durable_testing::TestEnv;
///
/// #[activity]
/// async fn double(x: i64) -> Result<i64, ActivityError> { Ok(2 * x) }
///
/// #[orchestrator]
/// async fn twice(ctx: OrchestrationContext, x: i64) -> Result<i64, OrchestrationError> {
///     let y = ctx.call(double, x).await?;
///     Ok(ctx.call(double, y).await?)
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let env = TestEnv::builder().register(double).register(twice).start().unwrap();
/// let run = env.start(twice, 3).await.unwrap();
/// assert_eq!(env.wait(&run).await.unwrap(), 12);
/// let h = env.history(run.id()).await;
/// assert_eq!(h.scheduled(double), [3, 6], "{h}");
/// assert_eq!(h.completed(double), [6, 12]);
/// assert_eq!(h.count("TaskScheduled"), 2);
/// # }
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    events: Vec<HistoryEvent>,
}

impl From<Vec<HistoryEvent>> for History {
    fn from(events: Vec<HistoryEvent>) -> Self {
        Self { events }
    }
}

fn decode<T: DeserializeOwned>(what: &str, payload: &str) -> T {
    serde_json::from_str(payload).unwrap_or_else(|e| {
        panic!(
            "{what} `{payload}` does not deserialize as `{}`: {e}",
            std::any::type_name::<T>()
        )
    })
}

impl History {
    /// Wraps recorded events.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::history::{Event, HistoryEvent};
    /// use durable_core::Timestamp;
    /// use durable_testing::History;
    ///
    /// let h = History::new(vec![HistoryEvent { index: 0, timestamp: Timestamp::EPOCH, event: Event::OrchestratorStarted }]);
    /// assert_eq!(h.kinds(), ["OrchestratorStarted"]);
    /// ```
    pub fn new(events: Vec<HistoryEvent>) -> Self {
        Self { events }
    }

    /// Imports a history exported as JSON ([`durable_core::history::to_json`]).
    ///
    /// # Errors
    ///
    /// When `json` is not an exported history.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_testing::History;
    ///
    /// let h = History::from_json(r#"[{"index":0,"timestamp":0,"eventType":"OrchestratorStarted"}]"#).unwrap();
    /// assert_eq!(h.len(), 1);
    /// assert_eq!(History::from_json(&h.to_json()).unwrap(), h);
    /// ```
    pub fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        history::from_json(json).map(Self::new)
    }

    /// The events, in order.
    ///
    /// # Examples
    ///
    /// ```
    /// let h = durable_testing::History::default();
    /// assert!(h.events().is_empty());
    /// ```
    pub fn events(&self) -> &[HistoryEvent] {
        &self.events
    }

    /// The events, owned.
    ///
    /// # Examples
    ///
    /// ```
    /// let h = durable_testing::History::default();
    /// assert!(h.into_events().is_empty());
    /// ```
    pub fn into_events(self) -> Vec<HistoryEvent> {
        self.events
    }

    /// Number of events.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(durable_testing::History::default().len(), 0);
    /// ```
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// `true` for an empty history (an instance that has not run yet).
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(durable_testing::History::default().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The event kinds in order (`"ExecutionStarted"`, `"TaskScheduled"`, …).
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(durable_testing::History::default().kinds().is_empty());
    /// ```
    pub fn kinds(&self) -> Vec<&'static str> {
        self.events.iter().map(|e| e.event.kind()).collect()
    }

    /// How many events are of `kind`.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(durable_testing::History::default().count("TimerFired"), 0);
    /// ```
    pub fn count(&self, kind: &str) -> usize {
        self.events
            .iter()
            .filter(|e| e.event.kind() == kind)
            .count()
    }

    fn seqs_of(&self, name: &str) -> HashSet<u64> {
        self.events
            .iter()
            .filter_map(|e| match &e.event {
                Event::TaskScheduled { seq, name: n, .. } if n == name => Some(*seq),
                _ => None,
            })
            .collect()
    }

    /// The inputs with which activity `A` was scheduled, in order.
    ///
    /// # Panics
    ///
    /// If a recorded input is not an `A::Input`.
    ///
    /// # Examples
    ///
    /// See [`History`].
    pub fn scheduled<A: Activity>(&self, activity: A) -> Vec<A::Input> {
        let _ = activity;
        self.events
            .iter()
            .filter_map(|e| match &e.event {
                Event::TaskScheduled { name, input, .. } if name == A::NAME => {
                    Some(decode(&format!("input of `{}`", A::NAME), input))
                }
                _ => None,
            })
            .collect()
    }

    /// The outputs activity `A` returned, in the order they were recorded.
    ///
    /// # Panics
    ///
    /// If a recorded output is not an `A::Output`.
    ///
    /// # Examples
    ///
    /// See [`History`].
    pub fn completed<A: Activity>(&self, activity: A) -> Vec<A::Output> {
        let _ = activity;
        let seqs = self.seqs_of(A::NAME);
        self.events
            .iter()
            .filter_map(|e| match &e.event {
                Event::TaskCompleted { seq, result } if seqs.contains(seq) => {
                    Some(decode(&format!("output of `{}`", A::NAME), result))
                }
                _ => None,
            })
            .collect()
    }

    /// The failures activity `A` returned, in the order they were recorded.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_testing::History;
    ///
    /// #[activity]
    /// async fn ping(_x: ()) -> Result<(), ActivityError> { Ok(()) }
    ///
    /// assert!(History::default().failed(ping).is_empty());
    /// ```
    pub fn failed<A: Activity>(&self, activity: A) -> Vec<FailureDetails> {
        let _ = activity;
        let seqs = self.seqs_of(A::NAME);
        self.events
            .iter()
            .filter_map(|e| match &e.event {
                Event::TaskFailed { seq, failure, .. } if seqs.contains(seq) => {
                    Some(failure.clone())
                }
                _ => None,
            })
            .collect()
    }

    /// When each durable timer was due, in creation order.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(durable_testing::History::default().timers().is_empty());
    /// ```
    pub fn timers(&self) -> Vec<Timestamp> {
        self.events
            .iter()
            .filter_map(|e| match &e.event {
                Event::TimerCreated { fire_at, .. } => Some(*fire_at),
                _ => None,
            })
            .collect()
    }

    /// When each fired timer was due, in firing order.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(durable_testing::History::default().timers_fired().is_empty());
    /// ```
    pub fn timers_fired(&self) -> Vec<Timestamp> {
        self.events
            .iter()
            .filter_map(|e| match &e.event {
                Event::TimerFired { fire_at, .. } => Some(*fire_at),
                _ => None,
            })
            .collect()
    }

    /// The data of the external events named `name` the instance received, in order.
    ///
    /// # Panics
    ///
    /// If recorded data is not a `T`.
    ///
    /// # Examples
    ///
    /// ```
    /// let approvals: Vec<bool> = durable_testing::History::default().events_raised("approval");
    /// assert!(approvals.is_empty());
    /// ```
    pub fn events_raised<T: DeserializeOwned>(&self, name: &str) -> Vec<T> {
        self.events
            .iter()
            .filter_map(|e| match &e.event {
                Event::EventRaised { name: n, input } if n == name => {
                    Some(decode(&format!("data of event `{name}`"), input))
                }
                _ => None,
            })
            .collect()
    }

    /// The custom statuses the code set, in order (`None` where it cleared it).
    ///
    /// # Panics
    ///
    /// If a recorded status is not a `T`.
    ///
    /// # Examples
    ///
    /// ```
    /// let statuses: Vec<Option<String>> = durable_testing::History::default().custom_statuses();
    /// assert!(statuses.is_empty());
    /// ```
    pub fn custom_statuses<T: DeserializeOwned>(&self) -> Vec<Option<T>> {
        self.events
            .iter()
            .filter_map(|e| match &e.event {
                Event::CustomStatusSet { status } => {
                    Some(status.as_deref().map(|s| decode("custom status", s)))
                }
                _ => None,
            })
            .collect()
    }

    /// Exports the history as JSON, for [`TestEnv::replay_check`](crate::TestEnv::replay_check)
    /// or a file kept next to the tests.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(durable_testing::History::default().to_json(), "[]");
    /// ```
    pub fn to_json(&self) -> String {
        history::to_json(&self.events)
    }

    /// The readable form: one event per line with index, time, kind and details.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(durable_testing::History::default().pretty(), "");
    /// ```
    pub fn pretty(&self) -> String {
        history::pretty(&self.events)
    }
}

impl fmt::Display for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pretty())
    }
}
