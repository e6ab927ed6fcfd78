use durable_core::prelude::*;

#[orchestrator(local)]
async fn flow(_ctx: OrchestrationContext, n: u32) -> Result<u32, OrchestrationError> {
    Ok(n)
}

fn main() {}
