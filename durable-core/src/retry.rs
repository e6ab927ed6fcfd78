//! Durable retry policies for activities and sub-orchestrations.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::FailureDetails;

type RetryPredicate = Arc<dyn Fn(&FailureDetails) -> bool + Send + Sync>;

/// How a failed activity or sub-orchestration is retried. Each retry waits on a durable
/// timer, so back-offs survive restarts and run on the test harness's virtual clock.
///
/// The delay before attempt `n + 1` is `first_interval * backoff_coefficient^(n - 1)`,
/// capped at `max_interval`. Failures marked non-retriable are never retried.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use durable_core::RetryPolicy;
///
/// let policy = RetryPolicy::new(4, Duration::from_secs(1))
///     .backoff_coefficient(2.0)
///     .max_interval(Duration::from_secs(3))
///     .handle(|failure| !failure.message.contains("invalid"));
/// assert_eq!(policy.max_attempts, 4);
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Total attempts, including the first (at least 1).
    pub max_attempts: u32,
    /// Delay before the first retry.
    pub first_interval: Duration,
    /// Multiplier applied to the delay after each retry (at least 1.0).
    pub backoff_coefficient: f64,
    /// Upper bound of a single delay.
    pub max_interval: Duration,
    /// Give up once this much time has passed since the first attempt.
    pub total_timeout: Option<Duration>,
    predicate: Option<RetryPredicate>,
}

impl fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("max_attempts", &self.max_attempts)
            .field("first_interval", &self.first_interval)
            .field("backoff_coefficient", &self.backoff_coefficient)
            .field("max_interval", &self.max_interval)
            .field("total_timeout", &self.total_timeout)
            .field("has_predicate", &self.predicate.is_some())
            .finish()
    }
}

impl RetryPolicy {
    /// Up to `max_attempts` attempts, `first_interval` apart, with no back-off growth.
    pub fn new(max_attempts: u32, first_interval: Duration) -> Self {
        Self {
            max_attempts: max_attempts.max(1),
            first_interval,
            backoff_coefficient: 1.0,
            max_interval: Duration::from_secs(6 * 24 * 3600),
            total_timeout: None,
            predicate: None,
        }
    }

    /// Sets the back-off coefficient (values below 1.0 are treated as 1.0).
    pub fn backoff_coefficient(mut self, c: f64) -> Self {
        self.backoff_coefficient = if c.is_finite() && c >= 1.0 { c } else { 1.0 };
        self
    }

    /// Caps a single delay.
    pub fn max_interval(mut self, d: Duration) -> Self {
        self.max_interval = d;
        self
    }

    /// Stops retrying once `d` has elapsed since the first attempt.
    pub fn total_timeout(mut self, d: Duration) -> Self {
        self.total_timeout = Some(d);
        self
    }

    /// Retries only failures for which `f` returns `true`.
    pub fn handle(mut self, f: impl Fn(&FailureDetails) -> bool + Send + Sync + 'static) -> Self {
        self.predicate = Some(Arc::new(f));
        self
    }

    /// The delay before the next attempt after attempt `attempt` (1-based) failed with
    /// `failure`, or `None` if no retry should happen.
    pub fn next_delay(&self, attempt: u32, failure: &FailureDetails) -> Option<Duration> {
        if attempt >= self.max_attempts || failure.non_retriable {
            return None;
        }
        if let Some(p) = &self.predicate
            && !p(failure)
        {
            return None;
        }
        let factor = self
            .backoff_coefficient
            .powi(i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX));
        let secs = self.first_interval.as_secs_f64() * factor;
        let delay = if secs.is_finite() && secs < self.max_interval.as_secs_f64() {
            Duration::from_secs_f64(secs)
        } else {
            self.max_interval
        };
        Some(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let p = RetryPolicy::new(5, Duration::from_secs(1))
            .backoff_coefficient(2.0)
            .max_interval(Duration::from_secs(3));
        let f = FailureDetails::new("E", "x");
        let delays: Vec<_> = (1..=5).map(|a| p.next_delay(a, &f)).collect();
        assert_eq!(
            delays,
            vec![
                Some(Duration::from_secs(1)),
                Some(Duration::from_secs(2)),
                Some(Duration::from_secs(3)),
                Some(Duration::from_secs(3)),
                None
            ]
        );
        assert_eq!(p.next_delay(1, &f.clone().non_retriable()), None);
    }
}
