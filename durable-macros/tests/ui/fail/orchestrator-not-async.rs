use durable_core::prelude::*;

#[orchestrator]
fn flow(ctx: OrchestrationContext, input: u32) -> Result<u32, OrchestrationError> {
    let _ = ctx;
    Ok(input)
}

fn main() {}
