use durable_core::prelude::*;

#[activity]
async fn greet(name: String) -> Result<String, ActivityError> {
    Ok(name)
}

#[orchestrator]
async fn flow(ctx: OrchestrationContext, input: u32) -> Result<String, OrchestrationError> {
    Ok(ctx.call(greet, input).await?)
}

fn main() {}
