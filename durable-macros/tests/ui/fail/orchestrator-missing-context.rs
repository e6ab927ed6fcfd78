use durable_core::prelude::*;

#[orchestrator]
async fn flow(input: u32) -> Result<u32, OrchestrationError> {
    Ok(input)
}

fn main() {}
