use durable_core::prelude::*;

#[orchestrator]
async fn flow(_ctx: OrchestrationContext, input: u32) -> Result<u32, OrchestrationError> {
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    Ok(input)
}

fn main() {}
