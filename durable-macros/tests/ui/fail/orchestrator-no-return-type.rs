use durable_core::prelude::*;

#[orchestrator]
async fn flow(ctx: OrchestrationContext, input: u32) {
    let _ = (ctx, input);
}

fn main() {}
