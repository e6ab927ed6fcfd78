//! Heartbeats: how a long activity tells its worker it is alive and how far it got.
//!
//! The activity calls [`ActivityContext::heartbeat`] with its progress. The call never
//! blocks and never writes to the store itself: it marks the run alive (which resets its
//! heartbeat timeout, see [`CallOptions::heartbeat_timeout`](crate::CallOptions)) and keeps
//! the details in memory. The worker running the activity writes the latest details with the
//! task at most once per flush interval (half the task's lease, at most 30 s), when the run
//! fails (the failure carries them to the next attempt) and before a shutdown puts the task
//! back. The next run of the task — after a crash, a shutdown or a failed attempt — reads
//! them with [`ActivityContext::last_heartbeat`] and resumes where the last one stopped.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::clock::Clock;
use crate::function::ActivityContext;
use crate::history::Payload;
use crate::ids::Timestamp;

/// The activity's side of its heartbeats (inside [`ActivityContext`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct Heartbeat {
    /// The details this run started with: recorded by an earlier run of the task, or carried
    /// from the previous attempt's failure.
    previous: Option<Payload>,
    /// Shared with the worker's monitor; `None` outside a worker (unit tests).
    shared: Option<Arc<Shared>>,
}

#[derive(Debug)]
struct Shared {
    beats: Mutex<Beats>,
    /// The worker's clock: a heartbeat is timed when the activity calls it.
    clock: Arc<dyn Clock>,
    /// Bumped on every heartbeat, so the worker's monitor wakes.
    signal: watch::Sender<u64>,
    /// Largest details accepted (the worker's payload limit).
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct Beats {
    /// When the activity last called `heartbeat`.
    last_at: Option<Timestamp>,
    /// The latest details not yet written to the store.
    pending: Option<Payload>,
    /// The latest details of this run, written or not.
    latest: Option<Payload>,
}

/// Whether a run with a heartbeat timeout still heartbeats, as the lease keeper sees it: a
/// run that blocks its thread cannot time itself out, so the keeper stops renewing its
/// lease and another worker takes the task over.
#[derive(Debug, Clone)]
pub(crate) struct Liveness {
    shared: Arc<Shared>,
    started: Timestamp,
    timeout: Duration,
}

impl Liveness {
    /// When the run counts as gone: its heartbeat timeout after its last heartbeat (or its
    /// start), plus a quarter of it, so a run that can still time itself out does so first.
    pub(crate) fn stale_at(&self) -> Timestamp {
        let last = self.shared.beats().last_at.unwrap_or(self.started);
        last.max(self.started) + self.timeout + self.timeout / 4
    }
}

/// The worker's side: sees heartbeats and takes the details to write.
#[derive(Debug)]
pub(crate) struct HeartbeatMonitor {
    shared: Arc<Shared>,
    signal: watch::Receiver<u64>,
    previous: Option<Payload>,
}

impl Heartbeat {
    /// A heartbeat handle for a run that starts with `previous` details, and the monitor
    /// the worker watches it with.
    pub(crate) fn new(
        previous: Option<Payload>,
        max_bytes: usize,
        clock: Arc<dyn Clock>,
    ) -> (Self, HeartbeatMonitor) {
        let (signal, rx) = watch::channel(0);
        let shared = Arc::new(Shared {
            beats: Mutex::new(Beats::default()),
            clock,
            signal,
            max_bytes,
        });
        let monitor = HeartbeatMonitor {
            shared: Arc::clone(&shared),
            signal: rx,
            previous: previous.clone(),
        };
        (
            Self {
                previous,
                shared: Some(shared),
            },
            monitor,
        )
    }
}

impl Shared {
    fn beats(&self) -> MutexGuard<'_, Beats> {
        self.beats.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl HeartbeatMonitor {
    /// Completes at the next heartbeat (never, once the activity's context is gone).
    pub(crate) async fn beat(&mut self) {
        if self.signal.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// The run's liveness for the lease keeper: it started at `started` and must heartbeat
    /// at least every `timeout`.
    pub(crate) fn liveness(&self, started: Timestamp, timeout: Duration) -> Liveness {
        Liveness {
            shared: Arc::clone(&self.shared),
            started,
            timeout,
        }
    }

    /// When the activity last called `heartbeat` (`None` before its first heartbeat).
    pub(crate) fn last_beat(&self) -> Option<Timestamp> {
        self.shared.beats().last_at
    }

    /// `true` when details wait to be written.
    pub(crate) fn has_pending(&self) -> bool {
        self.shared.beats().pending.is_some()
    }

    /// Takes the details waiting to be written.
    pub(crate) fn take_pending(&self) -> Option<Payload> {
        self.shared.beats().pending.take()
    }

    /// Puts back details whose write failed, unless newer ones arrived meanwhile.
    pub(crate) fn restore_pending(&self, details: Payload) {
        self.shared.beats().pending.get_or_insert(details);
    }

    /// The last details known for the task: this run's latest, else those it started with.
    /// A failure carries them to the next attempt.
    pub(crate) fn last_details(&self) -> Option<Payload> {
        self.shared
            .beats()
            .latest
            .clone()
            .or_else(|| self.previous.clone())
    }
}

impl ActivityContext {
    /// Records progress: tells the worker that this run is alive and how far it got.
    ///
    /// Call it regularly from a long activity, with whatever it needs to resume (a cursor,
    /// the last item done): the next run of the same task — after a crash, a shutdown or a
    /// failed or timed-out attempt under a retry policy — reads it with
    /// [`last_heartbeat`](Self::last_heartbeat). Each call resets the run's heartbeat
    /// timeout ([`CallOptions::heartbeat_timeout`](crate::CallOptions::heartbeat_timeout)).
    ///
    /// Cheap: nothing is written per call. The worker writes the latest details with the
    /// task at most once per half heartbeat timeout (once per 30 s without one, or sooner
    /// when the task's lease is shorter) — the first such interval after the run starts, so
    /// a short run that heartbeats costs no write — when the run fails, and before a
    /// shutdown puts the task back; details of a run that crashes are as recent as the last
    /// of those writes.
    /// Details that do not serialize, or exceed the worker's payload limit, are dropped with
    /// a warning (the call still counts as a heartbeat).
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    ///
    /// #[activity]
    /// async fn import(ctx: ActivityContext, rows: u64) -> Result<u64, ActivityError> {
    ///     // Resume after the last row a previous run reported.
    ///     let start = ctx.last_heartbeat::<u64>().map_or(0, |done| done + 1);
    ///     for row in start..rows {
    ///         // ... import the row ...
    ///         ctx.heartbeat(row);
    ///     }
    ///     Ok(rows)
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let resumed = ActivityContext::for_test("job-1").with_last_heartbeat(&6u64);
    /// assert_eq!(resumed.last_heartbeat::<u64>(), Some(6));
    /// assert_eq!(import::run(resumed, 10).await.unwrap(), 10);
    /// # }
    /// ```
    pub fn heartbeat(&self, details: impl Serialize) {
        let Some(shared) = &self.heartbeat.shared else {
            return;
        };
        let details = match serde_json::to_string(&details) {
            Ok(d) if d.len() <= shared.max_bytes => Some(d),
            Ok(d) => {
                tracing::warn!(
                    activity = %self.name,
                    bytes = d.len(),
                    limit = shared.max_bytes,
                    "heartbeat details exceed the payload limit; they are not recorded"
                );
                None
            }
            Err(e) => {
                tracing::warn!(activity = %self.name, error = %e, "heartbeat details do not serialize; they are not recorded");
                None
            }
        };
        let now = shared.clock.now();
        {
            let mut beats = shared.beats();
            beats.last_at = Some(now);
            if let Some(d) = details {
                beats.latest = Some(d.clone());
                beats.pending = Some(d);
            }
        }
        shared.signal.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The heartbeat details the previous run of this task recorded last, decoded as `T`:
    /// from a run that crashed or was shut down, or from the failed attempt before this one
    /// under a retry policy (also one that timed out). `None` on a first run, when no earlier
    /// run heartbeated, or when the details do not decode as `T` (with a warning).
    ///
    /// It does not change with this run's own heartbeats.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::ActivityContext;
    ///
    /// let first = ActivityContext::for_test("job-1");
    /// assert_eq!(first.last_heartbeat::<u32>(), None);
    /// let resumed = first.with_last_heartbeat(&("page", 3));
    /// assert_eq!(resumed.last_heartbeat::<(String, u32)>(), Some(("page".to_owned(), 3)));
    /// ```
    pub fn last_heartbeat<T: DeserializeOwned>(&self) -> Option<T> {
        let details = self.heartbeat.previous.as_deref()?;
        match serde_json::from_str(details) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(activity = %self.name, error = %e, "the last heartbeat details do not decode as the type asked for");
                None
            }
        }
    }

    /// This context with `details` as the previous run's last heartbeat, for unit tests of
    /// an activity's resume logic (see [`last_heartbeat`](Self::last_heartbeat)).
    ///
    /// # Panics
    /// When `details` does not serialize as JSON.
    pub fn with_last_heartbeat<T: Serialize + ?Sized>(mut self, details: &T) -> Self {
        self.heartbeat.previous =
            Some(serde_json::to_string(details).expect("heartbeat details serialize as JSON"));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;

    #[tokio::test]
    async fn heartbeats_wake_the_monitor_and_keep_the_latest_details() {
        let (hb, mut monitor) = Heartbeat::new(Some("1".into()), 100, Arc::new(SystemClock));
        let mut ctx = ActivityContext::for_test("i");
        ctx.heartbeat = hb;
        assert_eq!(ctx.last_heartbeat::<u32>(), Some(1));
        assert_eq!(monitor.last_details().as_deref(), Some("1"));
        ctx.heartbeat(2);
        ctx.heartbeat(3);
        monitor.beat().await;
        assert_eq!(monitor.take_pending().as_deref(), Some("3"));
        assert!(!monitor.has_pending());
        assert_eq!(monitor.last_details().as_deref(), Some("3"));
        // The previous run's details do not change with this run's heartbeats.
        assert_eq!(ctx.last_heartbeat::<u32>(), Some(1));
        // Too large: liveness only.
        ctx.heartbeat("x".repeat(200));
        monitor.beat().await;
        assert!(!monitor.has_pending());
        monitor.restore_pending("4".into());
        assert_eq!(monitor.take_pending().as_deref(), Some("4"));
    }
}
