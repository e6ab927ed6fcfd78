use durable_core::prelude::*;

#[orchestrator]
async fn flow(_ctx: OrchestrationContext, input: u32) -> Result<u32, OrchestrationError> {
    let _handle = std::thread::spawn(|| ());
    Ok(input)
}

fn main() {}
