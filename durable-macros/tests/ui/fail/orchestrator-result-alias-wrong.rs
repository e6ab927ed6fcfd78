// An alias that is not a `Result`: reported at the return type only (cargo shows identical
// diagnostics once; trybuild keeps the copies).
use durable_core::prelude::*;

type Outcome<T> = Vec<T>;

#[orchestrator]
async fn flow(ctx: OrchestrationContext, n: u32) -> Outcome<u32> {
    let _ = ctx;
    vec![n]
}

fn main() {}
