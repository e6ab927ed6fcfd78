use durable_core::prelude::*;

#[orchestrator]
async fn flow(input: u32, ctx: OrchestrationContext) -> Result<u32, OrchestrationError> {
    let _ = ctx;
    Ok(input)
}

fn main() {}
