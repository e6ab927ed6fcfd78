//! Time for the worker: the [`Clock`] trait and the real [`SystemClock`].
//!
//! This module and `worker/` are the only places that read real time. The test harness
//! substitutes a manual clock so timers fire when the test says so.

use std::fmt::Debug;

use crate::ids::Timestamp;
use crate::registry::BoxFuture;

/// A source of time that the worker sleeps on.
pub trait Clock: Send + Sync + Debug + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;

    /// A future that completes once [`now`](Clock::now) reaches `deadline`.
    fn sleep_until(&self, deadline: Timestamp) -> BoxFuture<'static, ()>;
}

/// Wall-clock time, slept on with tokio timers.
///
/// # Examples
///
/// ```
/// use durable_core::{Clock, SystemClock};
/// assert!(SystemClock.now().as_unix_millis() > 1_600_000_000_000);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)]
    fn now(&self) -> Timestamp {
        Timestamp::from_system_time(std::time::SystemTime::now())
    }

    #[allow(clippy::disallowed_methods)]
    fn sleep_until(&self, deadline: Timestamp) -> BoxFuture<'static, ()> {
        // From the precise current time: `now()` is truncated to the millisecond, which
        // would oversleep by up to a millisecond.
        let wait = deadline
            .to_system_time()
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        Box::pin(tokio::time::sleep(wait))
    }
}
