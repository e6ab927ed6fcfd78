//! The durable patterns, written against `durable_core`, used by the demo binary and tested
//! in `tests/`.
//!
//! Each module holds one pattern: [`chaining`], [`fan_out`], [`monitor`],
//! [`approval`] (human interaction) and [`aggregator`] (entities), plus [`bank`]
//! (critical sections) and [`status`] (an activity with shared state: an HTTP client).
//! [`workloads`] holds the benchmarks' shared code; [`observe`] the binaries' logging and
//! metrics set-up.

pub mod aggregator;
pub mod approval;
pub mod bank;
pub mod chaining;
pub mod cli;
pub mod fan_out;
pub mod monitor;
pub mod observe;
pub mod status;
pub mod workloads;

use durable_core::WorkerBuilder;

/// Registers every pattern's orchestrators and activities. The worker must also be given
/// the state [`status::fetch_status`] takes (see [`shared_state`]).
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
        .register(status::fetch_status)
        .register(status::audit)
}

/// Gives the worker the state its activities take: an HTTP client and a `User-Agent`.
pub fn shared_state(builder: WorkerBuilder, user_agent: &str) -> WorkerBuilder {
    builder
        .state(status::http_client())
        .state(status::UserAgent(user_agent.to_owned()))
}
