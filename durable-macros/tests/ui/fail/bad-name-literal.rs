use durable_core::prelude::*;

#[orchestrator(name = 42)]
async fn flow(ctx: OrchestrationContext, input: u32) -> Result<u32, OrchestrationError> {
    let _ = ctx;
    Ok(input)
}

fn main() {}
