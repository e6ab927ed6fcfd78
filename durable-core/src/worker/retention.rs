//! Retention: purging instances some time after they finished, so history does not grow
//! forever (opt in with [`WorkerBuilder::retention`](super::WorkerBuilder::retention)).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Inner;
use crate::error::StoreError;
use crate::history::RuntimeStatus;
use crate::storage::InstanceQuery;

/// Sweeps now, then every quarter of `keep_for` (between 1 s and 1 h), until shutdown.
pub(crate) async fn run(inner: Arc<Inner>, keep_for: Duration) {
    let every = (keep_for / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600));
    let mut shutdown = inner.shutdown.clone();
    loop {
        if inner.is_shutting_down() || inner.aborted.load(Ordering::SeqCst) {
            break;
        }
        match sweep(&inner, keep_for).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "retention: purged finished instances"),
            Err(e) => tracing::warn!(error = %e, "retention sweep failed; retrying later"),
        }
        let next = inner.clock.now() + every;
        tokio::select! {
            () = inner.clock.sleep_until(next) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Purges every orchestration that finished (completed, failed or terminated) at least
/// `keep_for` ago. Returns how many it purged.
async fn sweep(inner: &Inner, keep_for: Duration) -> Result<usize, StoreError> {
    let now = inner.clock.now();
    let cutoff = now.saturating_sub(keep_for);
    // An instance finishes after it is created, so only those created before the cutoff
    // can qualify; the index narrows the scan to them.
    let mut query = InstanceQuery::new()
        .statuses([
            RuntimeStatus::Completed,
            RuntimeStatus::Failed,
            RuntimeStatus::Terminated,
        ])
        .created_between(None, Some(cutoff))
        .page_size(200);
    let mut purged = 0;
    loop {
        let page = inner.store.query_instances(&query).await?;
        for r in &page.instances {
            // Checked again by the store as it purges: the instance may have been started
            // again under the same id since the query.
            if r.last_updated_at <= cutoff
                && inner
                    .store
                    .purge_finished_instance(&r.instance_id, cutoff)
                    .await?
            {
                purged += 1;
            }
        }
        match page.continuation {
            Some(token) => query = query.continuation(Some(token)),
            None => return Ok(purged),
        }
    }
}
