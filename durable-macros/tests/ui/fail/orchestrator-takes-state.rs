use durable_core::prelude::*;

#[derive(Clone)]
struct Pool;

#[orchestrator]
async fn flow(ctx: OrchestrationContext, State(pool): State<Pool>, n: u32) -> Result<u32, OrchestrationError> {
    let _ = (ctx, pool);
    Ok(n)
}

fn main() {}
