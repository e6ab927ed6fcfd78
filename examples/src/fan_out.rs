//! Pattern 2, fan-out/fan-in: run many activities in parallel and aggregate.

use durable_core::prelude::*;

/// Counts the words of one document.
#[derive(Debug, Clone, Copy)]
pub struct CountWords;

impl Activity for CountWords {
    const NAME: &'static str = "count_words";
    type Input = String;
    type Output = usize;
    type Error = ActivityError;
    async fn run(&self, _ctx: ActivityContext, text: String) -> Result<usize, ActivityError> {
        Ok(text.split_whitespace().count())
    }
}

/// Counts the words of every document in parallel and sums them.
#[derive(Debug, Clone, Copy)]
pub struct WordCount;

impl Orchestrator for WordCount {
    const NAME: &'static str = "word_count";
    type Input = Vec<String>;
    type Output = usize;
    type Error = OrchestrationError;
    async fn run(ctx: OrchestrationContext, docs: Vec<String>) -> Result<usize, OrchestrationError> {
        let counts = ctx.when_all(docs.into_iter().map(|d| ctx.call(CountWords, d))).await;
        let mut total = 0;
        for c in counts {
            total += c?;
        }
        Ok(total)
    }
}
