use durable_core::prelude::*;

mod uuid {
    pub struct Uuid;
    impl Uuid {
        pub fn new_v4() -> u128 {
            0
        }
    }
}

#[orchestrator]
async fn flow(_ctx: OrchestrationContext, input: u32) -> Result<u32, OrchestrationError> {
    let _id = uuid::Uuid::new_v4();
    Ok(input)
}

fn main() {}
