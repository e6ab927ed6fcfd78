use durable_core::prelude::*;

mod rand {
    pub fn thread_rng() {}
}

#[orchestrator]
async fn flow(_ctx: OrchestrationContext, input: u32) -> Result<u32, OrchestrationError> {
    rand::thread_rng();
    Ok(input)
}

fn main() {}
