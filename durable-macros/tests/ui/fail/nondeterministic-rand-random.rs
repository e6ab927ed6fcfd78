use durable_core::prelude::*;

mod rand {
    pub fn random() -> u8 {
        4
    }
}

#[orchestrator]
async fn flow(_ctx: OrchestrationContext, input: u32) -> Result<u32, OrchestrationError> {
    let _x: u8 = rand::random();
    Ok(input)
}

fn main() {}
