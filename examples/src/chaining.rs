//! Pattern 1, function chaining: each step's output is the next step's input.

use durable_core::prelude::*;

/// Greets one name.
#[derive(Debug, Clone, Copy)]
pub struct Greet;

impl Activity for Greet {
    const NAME: &'static str = "greet";
    type Input = String;
    type Output = String;
    type Error = ActivityError;
    async fn run(&self, _ctx: ActivityContext, name: String) -> Result<String, ActivityError> {
        Ok(format!("Hello {name}!"))
    }
}

/// Greets each city in turn and collects the greetings.
#[derive(Debug, Clone, Copy)]
pub struct HelloSequence;

impl Orchestrator for HelloSequence {
    const NAME: &'static str = "hello_sequence";
    type Input = Vec<String>;
    type Output = Vec<String>;
    type Error = OrchestrationError;
    async fn run(ctx: OrchestrationContext, cities: Vec<String>) -> Result<Vec<String>, OrchestrationError> {
        let mut out = Vec::with_capacity(cities.len());
        for city in cities {
            out.push(ctx.call(Greet, city).await?);
        }
        Ok(out)
    }
}
