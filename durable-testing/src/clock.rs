//! A clock that only moves when told to.

use std::sync::Arc;
use std::time::Duration;

use durable_core::registry::BoxFuture;
use durable_core::{Clock, Timestamp};
use tokio::sync::watch;

/// A manual, virtual clock. Timers sleeping on it wake when [`advance`](Self::advance) or
/// [`set`](Self::set) moves time past their deadline.
///
/// Clones share the same time.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use durable_core::{Clock, Timestamp};
/// use durable_testing::ManualClock;
///
/// let clock = ManualClock::new(Timestamp::from_unix_millis(1_000));
/// clock.advance(Duration::from_secs(72 * 3600));
/// assert_eq!(clock.now().as_unix_millis(), 1_000 + 72 * 3_600_000);
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<watch::Sender<Timestamp>>,
}

impl Default for ManualClock {
    fn default() -> Self {
        // 2024-01-01T00:00:00Z: a fixed, readable starting point.
        Self::new(Timestamp::from_unix_millis(1_704_067_200_000))
    }
}

impl ManualClock {
    /// A clock standing at `start` (the default clock stands at 2024-01-01T00:00:00Z).
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::{Clock, Timestamp};
    /// use durable_testing::ManualClock;
    ///
    /// assert_eq!(ManualClock::new(Timestamp::EPOCH).now(), Timestamp::EPOCH);
    /// assert_eq!(ManualClock::default().now().to_rfc3339(), "2024-01-01T00:00:00.000Z");
    /// ```
    pub fn new(start: Timestamp) -> Self {
        Self {
            now: Arc::new(watch::channel(start).0),
        }
    }

    /// Moves time forward by `d`, waking every sleeper whose deadline has passed. It does
    /// not wait for the engine; in a [`TestEnv`](crate::TestEnv) prefer
    /// [`TestEnv::advance`](crate::TestEnv::advance), which fires timers in order and
    /// returns once the engine is idle.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use durable_core::{Clock, Timestamp};
    /// use durable_testing::ManualClock;
    ///
    /// let clock = ManualClock::new(Timestamp::EPOCH);
    /// clock.advance(Duration::from_millis(1_500));
    /// assert_eq!(clock.now().as_unix_millis(), 1_500);
    /// ```
    pub fn advance(&self, d: Duration) {
        self.now.send_modify(|t| *t = *t + d);
    }

    /// Sets the time (never backwards; earlier values are ignored).
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::{Clock, Timestamp};
    /// use durable_testing::ManualClock;
    ///
    /// let clock = ManualClock::new(Timestamp::from_unix_millis(10));
    /// clock.set(Timestamp::from_unix_millis(50));
    /// clock.set(Timestamp::from_unix_millis(20));
    /// assert_eq!(clock.now().as_unix_millis(), 50);
    /// ```
    pub fn set(&self, t: Timestamp) {
        self.now.send_if_modified(|now| {
            if t > *now {
                *now = t;
                true
            } else {
                false
            }
        });
    }

    /// This clock as a shareable [`Clock`], for `Worker::builder().clock(..)`.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::{MemoryStore, Worker};
    /// use durable_testing::ManualClock;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let clock = ManualClock::default();
    /// let worker = Worker::builder().store(MemoryStore::new()).clock(clock.as_clock()).start().unwrap();
    /// # drop(worker);
    /// # }
    /// ```
    pub fn as_clock(&self) -> Arc<dyn Clock> {
        Arc::new(self.clone())
    }

    /// A receiver that sees every change of time.
    pub(crate) fn watch(&self) -> watch::Receiver<Timestamp> {
        self.now.subscribe()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.now.borrow()
    }

    fn sleep_until(&self, deadline: Timestamp) -> BoxFuture<'static, ()> {
        let mut rx = self.now.subscribe();
        Box::pin(async move {
            loop {
                if *rx.borrow_and_update() >= deadline {
                    return;
                }
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        })
    }
}
