//! Store metrics (feature `metrics`): the latency and size of durable commits.
//!
//! | metric | kind | labels |
//! | --- | --- | --- |
//! | `durable_store_commit_seconds` | histogram | `store` |
//! | `durable_store_commit_batch_size` | histogram | `store` |
//!
//! Without the feature `CommitTimer` is a unit struct and recording is a no-op, so call
//! sites need no `cfg`.

/// Describes the store metrics to the installed recorder.
#[cfg(feature = "metrics")]
pub(crate) fn describe() {
    metrics::describe_histogram!(
        "durable_store_commit_seconds",
        metrics::Unit::Seconds,
        "Latency of each durable store commit"
    );
    metrics::describe_histogram!(
        "durable_store_commit_batch_size",
        metrics::Unit::Count,
        "Operations per group commit"
    );
}

/// Times one durable commit, from its start until [`record`](Self::record).
#[cfg(any(feature = "redb", feature = "postgres"))]
#[derive(Debug)]
pub(crate) struct CommitTimer {
    started: std::time::Instant,
}

#[cfg(any(feature = "redb", feature = "postgres"))]
impl CommitTimer {
    /// Starts timing.
    #[allow(
        clippy::disallowed_methods,
        reason = "commit latency is a wall-clock measurement: reported, and used by the redb \
                  store to choose the thread that commits, never to decide what is written"
    )]
    pub(crate) fn start() -> Self {
        Self {
            started: std::time::Instant::now(),
        }
    }

    /// How long since the timer started.
    #[cfg(feature = "redb")]
    pub(crate) fn elapsed(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Records a commit of `store` that applied `items` operations (its group commit's
    /// batch size) and is durable now; returns how long it took.
    pub(crate) fn record(self, store: &'static str, items: usize) -> std::time::Duration {
        let took = self.started.elapsed();
        #[cfg(feature = "metrics")]
        {
            metrics::histogram!("durable_store_commit_seconds", "store" => store).record(took);
            metrics::histogram!("durable_store_commit_batch_size", "store" => store)
                .record(items as f64);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (store, items);
        took
    }

    /// Records a commit of `store` that is not a group commit (one operation).
    #[cfg(feature = "postgres")]
    pub(crate) fn record_single(self, store: &'static str) {
        #[cfg(feature = "metrics")]
        metrics::histogram!("durable_store_commit_seconds", "store" => store)
            .record(self.started.elapsed());
        #[cfg(not(feature = "metrics"))]
        let _ = (self, store);
    }
}
