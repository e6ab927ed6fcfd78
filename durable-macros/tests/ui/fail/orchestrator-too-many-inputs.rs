use durable_core::prelude::*;

#[orchestrator]
async fn flow(ctx: OrchestrationContext, a: u32, b: u32) -> Result<u32, OrchestrationError> {
    let _ = ctx;
    Ok(a + b)
}

fn main() {}
