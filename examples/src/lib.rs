//! The durable patterns, written against `durable_core`, used by the demo binary and tested
//! in `tests/`.
//!
//! Each module holds one pattern: [`chaining`], [`fan_out`], [`monitor`] and
//! [`approval`] (human interaction).

pub mod approval;
pub mod chaining;
pub mod fan_out;
pub mod monitor;

use durable_core::WorkerBuilder;

/// Registers every pattern's orchestrators and activities.
pub fn register_all(builder: WorkerBuilder) -> WorkerBuilder {
    builder
        .activity(chaining::Greet)
        .orchestrator(chaining::HelloSequence)
        .activity(fan_out::CountWords)
        .orchestrator(fan_out::WordCount)
        .activity(monitor::CheckJob)
        .orchestrator(monitor::JobMonitor)
        .activity(approval::Notify)
        .orchestrator(approval::ApprovalFlow)
}
