use durable_core::prelude::*;

#[orchestrator]
async fn flow(_ctx: OrchestrationContext, input: u32) -> Result<u32, OrchestrationError> {
    let _text = std::fs::read_to_string("config.toml");
    Ok(input)
}

fn main() {}
