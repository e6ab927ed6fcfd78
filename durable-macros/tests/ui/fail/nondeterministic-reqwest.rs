use durable_core::prelude::*;

mod reqwest {
    pub fn get(_url: &str) -> u32 {
        0
    }
}

#[orchestrator]
async fn flow(_ctx: OrchestrationContext, input: u32) -> Result<u32, OrchestrationError> {
    let _body = reqwest::get("https://example.com");
    Ok(input)
}

fn main() {}
