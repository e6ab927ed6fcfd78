//! The durable patterns, written against `durable_core`, used by the demo binary and tested
//! in `tests/`.
//!
//! Each module holds one pattern: [`chaining`], [`fan_out`], [`monitor`],
//! [`approval`] (human interaction) and [`aggregator`] (entities), plus [`bank`]
//! (critical sections). [`workloads`] holds the benchmarks' shared code.

pub mod aggregator;
pub mod approval;
pub mod bank;
pub mod chaining;
pub mod fan_out;
pub mod monitor;
pub mod workloads;

use durable_core::WorkerBuilder;

/// Registers every pattern's orchestrators and activities.
pub fn register_all(builder: WorkerBuilder) -> WorkerBuilder {
    builder
        .register(chaining::greet)
        .register(chaining::hello_sequence)
        .register(fan_out::count_words)
        .register(fan_out::word_count)
        .register(monitor::check_job)
        .register(monitor::job_monitor)
        .register(approval::notify)
        .register(approval::approval_flow)
        .register(aggregator::Stats::entity())
        .register(aggregator::report_readings)
        .register(bank::Account::entity())
        .register(bank::transfer)
}
