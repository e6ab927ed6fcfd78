//! Benchmark workloads shared by the `bench` and `pg_bench` binaries.

use durable_core::prelude::*;

/// A no-op step: the string goes through unchanged.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// assert_eq!(examples::workloads::hello_step::run("hi".into()).await.unwrap(), "hi");
/// # }
/// ```
#[activity]
pub async fn hello_step(text: String) -> Result<String, ActivityError> {
    Ok(text)
}

/// `HelloSequence5`: five chained [`hello_step`]s, each taking the previous output (the
/// W1/W2 workload of the benchmarks).
#[orchestrator]
pub async fn hello_sequence5(
    ctx: OrchestrationContext,
    name: String,
) -> Result<String, OrchestrationError> {
    let mut text = name;
    for _ in 0..5 {
        text = ctx.call(hello_step, text).await?;
    }
    Ok(text)
}

/// `HelloSequence5` with local steps: the five [`hello_step`]s run inside the episode
/// ([`OrchestrationContext::call_local`]), so the whole sequence commits once (the
/// W1-local/W2-local workload of the benchmarks).
#[orchestrator]
pub async fn hello_sequence5_local(
    ctx: OrchestrationContext,
    name: String,
) -> Result<String, OrchestrationError> {
    let mut text = name;
    for _ in 0..5 {
        text = ctx.call_local(hello_step, text).await?;
    }
    Ok(text)
}
