//! Pattern 2, fan-out/fan-in: run many activities in parallel and aggregate.

use durable_core::prelude::*;

/// Counts the words of one document.
#[activity]
pub async fn count_words(text: String) -> Result<usize, ActivityError> {
    Ok(text.split_whitespace().count())
}

/// Counts the words of every document in parallel and sums them.
#[orchestrator]
pub async fn word_count(
    ctx: OrchestrationContext,
    docs: Vec<String>,
) -> Result<usize, OrchestrationError> {
    let counts = ctx
        .when_all(docs.into_iter().map(|d| ctx.call(count_words, d)))
        .await;
    let mut total = 0;
    for c in counts {
        total += c?;
    }
    Ok(total)
}
