//! Time for the worker: the [`Clock`] trait and the real [`SystemClock`].
//!
//! This module and `worker/` are the only places that read real time. The test harness
//! substitutes a manual clock so timers fire when the test says so.

use std::fmt::Debug;

use crate::function::BoxFuture;
use crate::ids::Timestamp;

/// A source of time that the worker sleeps on.
pub trait Clock: Send + Sync + Debug + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;

    /// A future that completes once [`now`](Clock::now) reaches `deadline`.
    fn sleep_until(&self, deadline: Timestamp) -> BoxFuture<'static, ()>;
}

/// Wall-clock time, slept on with tokio timers and, for the last few milliseconds before
/// a deadline, one shared precise timer thread: a sleep ends a fraction of a millisecond
/// after its deadline (tokio's 1 ms timer wheel alone ends it up to ~2 ms late), never
/// before it.
///
/// It reads and waits for the real time, so it does not follow tokio's paused time
/// (`start_paused` tests): give such tests a virtual clock (`durable_testing::ManualClock`).
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
        // Measured from the precise current time: `now()` is truncated to the millisecond,
        // which would oversleep by up to a millisecond. tokio's timer ends a sleep up to
        // about 2 ms late (1 ms wheel ticks, park timeouts rounded up to whole ms), so it
        // only brings the wait to within `precise::MARGIN` of the deadline; the precise
        // timer thread waits out the rest.
        let target = deadline.to_system_time();
        Box::pin(async move {
            loop {
                let remaining = target
                    .duration_since(std::time::SystemTime::now())
                    .unwrap_or_default();
                if remaining.is_zero() {
                    return;
                }
                if remaining > precise::MARGIN {
                    tokio::time::sleep(remaining.saturating_sub(precise::MARGIN)).await;
                } else {
                    match precise::sleep(std::time::Instant::now() + remaining) {
                        Some(sleep) => sleep.await,
                        None => tokio::time::sleep(remaining).await,
                    }
                }
            }
        })
    }
}

/// The last stretch of a [`SystemClock`] sleep: one shared thread that sleeps (never spins)
/// until the earliest registered instant, then wakes every task whose instant has passed.
///
/// Only waits shorter than [`MARGIN`] are registered, so the table holds at most the
/// sleeps ending within the next few milliseconds however many timers are pending, and a
/// dropped sleep leaves it at once.
#[allow(clippy::disallowed_methods)]
mod precise {
    use std::collections::BTreeMap;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
    use std::task::{Context, Poll, Waker};
    use std::time::{Duration, Instant};

    /// How long before its deadline a sleep leaves tokio's timer for the precise one.
    pub(super) const MARGIN: Duration = Duration::from_millis(3);

    /// The registered sleeps, by (instant, registration number).
    struct Table {
        sleeps: BTreeMap<(Instant, u64), Waker>,
        next: u64,
    }

    static TABLE: Mutex<Table> = Mutex::new(Table {
        sleeps: BTreeMap::new(),
        next: 0,
    });
    /// Signalled when a sleep becomes the earliest one.
    static EARLIER: Condvar = Condvar::new();

    fn table() -> MutexGuard<'static, Table> {
        TABLE.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts the timer thread once; `false` if it could not be started.
    fn running() -> bool {
        static STARTED: OnceLock<bool> = OnceLock::new();
        *STARTED.get_or_init(|| {
            std::thread::Builder::new()
                .name("durable-precise-timer".into())
                .spawn(run)
                .is_ok()
        })
    }

    /// The timer thread.
    fn run() {
        let mut table = table();
        loop {
            let now = Instant::now();
            let mut due = Vec::new();
            while let Some(first) = table.sleeps.first_entry() {
                if first.key().0 > now {
                    break;
                }
                due.push(first.remove());
            }
            if !due.is_empty() {
                drop(table);
                for waker in due {
                    // A waker that panics (none of tokio's do) must not end the thread
                    // every other sleep relies on.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| waker.wake()));
                }
                table = self::table();
                continue;
            }
            table = match table.sleeps.first_key_value().map(|(k, _)| k.0) {
                Some(at) => {
                    EARLIER
                        .wait_timeout(table, at.saturating_duration_since(now))
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                None => EARLIER.wait(table).unwrap_or_else(PoisonError::into_inner),
            };
        }
    }

    /// A future that completes once `Instant::now()` has reached `at`, never earlier;
    /// `None` when the timer thread cannot be started.
    pub(super) fn sleep(at: Instant) -> Option<Sleep> {
        running().then_some(Sleep { at, key: None })
    }

    /// See [`sleep`].
    #[derive(Debug)]
    pub(super) struct Sleep {
        at: Instant,
        /// Its entry in the table, once registered.
        key: Option<(Instant, u64)>,
    }

    impl Future for Sleep {
        type Output = ();

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let this = self.get_mut();
            if Instant::now() >= this.at {
                this.deregister();
                return Poll::Ready(());
            }
            let mut table = table();
            if let Some(waker) = this.key.and_then(|k| table.sleeps.get_mut(&k)) {
                if waker.will_wake(cx.waker()) {
                    return Poll::Pending;
                }
                // The old waker is dropped after the lock is released: dropping one may run
                // foreign code.
                let old = std::mem::replace(waker, cx.waker().clone());
                drop(table);
                drop(old);
                return Poll::Pending;
            }
            // Not registered yet (or woken by something else after its entry fired).
            let key = (this.at, table.next);
            table.next = table.next.wrapping_add(1);
            let earliest = table.sleeps.first_key_value().is_none_or(|(k, _)| key < *k);
            table.sleeps.insert(key, cx.waker().clone());
            this.key = Some(key);
            drop(table);
            if earliest {
                EARLIER.notify_one();
            }
            Poll::Pending
        }
    }

    impl Sleep {
        fn deregister(&mut self) {
            if let Some(key) = self.key.take() {
                // Dropped after the lock is released (a waker's drop may run foreign code).
                let waker = table().sleeps.remove(&key);
                drop(waker);
            }
        }
    }

    impl Drop for Sleep {
        fn drop(&mut self) {
            self.deregister();
        }
    }

    /// Sleeps registered for instant `at` (for tests).
    #[cfg(test)]
    pub(super) fn registered_at(at: Instant) -> usize {
        table().sleeps.keys().filter(|k| k.0 == at).count()
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use std::time::{Duration, Instant, SystemTime};

    use super::{Clock, SystemClock, precise};
    use crate::ids::Timestamp;

    /// The precise wall-clock time in microseconds since the Unix epoch.
    fn micros_now() -> u128 {
        SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros()
    }

    /// A system-clock sleep never ends before its deadline, whether the deadline is past,
    /// within the precise margin or beyond it, on either runtime flavour.
    #[test]
    fn system_sleep_never_ends_before_its_deadline() {
        let current = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let multi = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        for rt in [&current, &multi] {
            rt.block_on(async {
                for ahead in [0u64, 1, 2, 3, 4, 7] {
                    let deadline = SystemClock.now() + Duration::from_millis(ahead);
                    SystemClock.sleep_until(deadline).await;
                    assert!(SystemClock.now() >= deadline, "{ahead} ms ahead");
                    assert!(
                        micros_now() >= u128::from(deadline.as_unix_millis()) * 1000,
                        "{ahead} ms ahead"
                    );
                }
                // Already past: returns at once rather than hanging.
                SystemClock
                    .sleep_until(Timestamp::from_unix_millis(0))
                    .await;
            });
        }
    }

    /// Many precise sleeps at once (more than one per instant, out of order) all end, each
    /// no earlier than its instant, and leave nothing registered.
    #[test]
    fn precise_sleeps_all_end_no_earlier_than_their_instant() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let start = Instant::now();
            let mut set = tokio::task::JoinSet::new();
            for i in 0..64u64 {
                let at = start + Duration::from_micros((i * 37) % 2500);
                let sleep = precise::sleep(at).expect("timer thread");
                set.spawn(async move {
                    sleep.await;
                    Instant::now() >= at
                });
            }
            let mut ended = 0;
            while let Some(on_time) = set.join_next().await {
                assert!(on_time.unwrap(), "a precise sleep ended early");
                ended += 1;
            }
            assert_eq!(ended, 64);
        });
    }

    /// A precise sleep dropped before its instant leaves the table, so abandoned waits
    /// (a dispatcher woken by new work first) do not accumulate.
    #[test]
    fn dropped_precise_sleep_leaves_the_table() {
        let at = Instant::now() + Duration::from_secs(3600);
        let mut sleep = Box::pin(precise::sleep(at).expect("timer thread"));
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        assert!(sleep.as_mut().poll(&mut cx).is_pending());
        // Polled again: still one entry, not a second one.
        assert!(sleep.as_mut().poll(&mut cx).is_pending());
        assert_eq!(precise::registered_at(at), 1);
        drop(sleep);
        assert_eq!(precise::registered_at(at), 0);
    }
}
