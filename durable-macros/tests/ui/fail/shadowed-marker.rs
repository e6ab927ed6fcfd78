// A `let` cannot shadow a marker (a unit struct): rustc says the pattern is the unit struct and
// suggests another name. `marker-not-in-scope.rs` is the case our note on `Activity` covers.
use durable_core::prelude::*;

#[activity]
async fn greet(name: String) -> Result<String, ActivityError> {
    Ok(format!("Hello {name}!"))
}

#[orchestrator]
async fn flow(ctx: OrchestrationContext, name: String) -> Result<String, OrchestrationError> {
    let greet = ctx.call(greet, name.clone()).await?;
    Ok(ctx.call(greet, name).await?)
}

fn main() {}
