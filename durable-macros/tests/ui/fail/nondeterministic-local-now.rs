use durable_core::prelude::*;

mod chrono {
    pub struct Local;
    impl Local {
        pub fn now() -> u64 {
            0
        }
    }
}

#[orchestrator]
async fn flow(_ctx: OrchestrationContext, input: u32) -> Result<u32, OrchestrationError> {
    let _now = chrono::Local::now();
    Ok(input)
}

fn main() {}
