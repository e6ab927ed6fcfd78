//! Pattern 1, function chaining: each step's output is the next step's input.

use durable_core::prelude::*;

/// Greets one name.
#[activity]
pub async fn greet(name: String) -> Result<String, ActivityError> {
    Ok(format!("Hello {name}!"))
}

/// Greets each city in turn and collects the greetings.
#[orchestrator]
pub async fn hello_sequence(
    ctx: OrchestrationContext,
    cities: Vec<String>,
) -> Result<Vec<String>, OrchestrationError> {
    let mut out = Vec::with_capacity(cities.len());
    for city in cities {
        out.push(ctx.call(greet, city).await?);
    }
    Ok(out)
}
