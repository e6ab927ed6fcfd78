use durable_core::prelude::*;

#[orchestrator]
async fn flow(_ctx: OrchestrationContext, input: u32) -> Result<u32, OrchestrationError> {
    let _text = tokio::fs::read_to_string("config.toml").await;
    Ok(input)
}

fn main() {}
