//! Pattern 4, monitor: poll on a durable timer with back-off until done or a deadline.

use std::time::Duration;

use durable_core::prelude::*;
use serde::{Deserialize, Serialize};

/// Input of [`check_job`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    /// Which check this is (1-based).
    pub attempt: u32,
    /// The check on which the job reports done.
    pub done_on: u32,
}

/// Reports whether a (simulated) job has finished: it finishes on the given check number.
#[activity]
pub async fn check_job(c: Check) -> Result<bool, ActivityError> {
    Ok(c.attempt >= c.done_on)
}

/// What the monitor watches.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MonitorInput {
    /// Check number on which the simulated job is done.
    pub done_on: u32,
    /// First polling interval in milliseconds; doubles each time, up to 4× the first.
    pub interval_ms: u64,
    /// Give up after this many milliseconds.
    pub deadline_ms: u64,
}

/// Polls [`check_job`] with growing intervals until it reports done or the deadline passes.
#[orchestrator]
pub async fn job_monitor(
    ctx: OrchestrationContext,
    input: MonitorInput,
) -> Result<String, OrchestrationError> {
    let deadline = ctx.now() + Duration::from_millis(input.deadline_ms);
    let mut interval = Duration::from_millis(input.interval_ms);
    let mut attempt = 1;
    loop {
        ctx.set_custom_status(&format!("check {attempt}"))?;
        let check = Check {
            attempt,
            done_on: input.done_on,
        };
        if ctx.call(check_job, check).await? {
            return Ok(format!("done after {attempt} checks"));
        }
        if ctx.now() + interval > deadline {
            return Ok(format!("gave up after {attempt} checks"));
        }
        ctx.sleep(interval).await;
        interval = (interval * 2).min(Duration::from_millis(input.interval_ms * 4));
        attempt += 1;
    }
}
