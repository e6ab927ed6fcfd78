use durable_core::prelude::*;

#[orchestrator]
async fn flow(_ctx: OrchestrationContext, input: u32) -> Result<u32, OrchestrationError> {
    let _a = std::time::SystemTime::now();
    let _b = std::env::var("HOME");
    std::thread::sleep(std::time::Duration::from_millis(1));
    Ok(input)
}

fn main() {}
