use durable_core::prelude::*;

static mut COUNTER: u32 = 0;

#[orchestrator]
async fn flow(_ctx: OrchestrationContext, input: u32) -> Result<u32, OrchestrationError> {
    let _n = unsafe { COUNTER };
    Ok(input)
}

fn main() {}
