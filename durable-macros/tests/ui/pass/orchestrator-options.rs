use durable_core::prelude::*;

#[activity(name = "greet_v2")]
async fn greet(name: String) -> Result<String, ActivityError> {
    Ok(name)
}

/// Uses every option.
#[orchestrator(name = "hello.v2", version = "2.1", crate = durable_core)]
pub async fn hello(ctx: OrchestrationContext, who: String) -> Result<String, OrchestrationError> {
    Ok(ctx.call(greet, who).await?)
}

#[orchestrator(allow_nondeterminism)]
async fn clocky(ctx: OrchestrationContext) -> Result<u64, OrchestrationError> {
    let _ = ctx;
    Ok(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0))
}

fn main() {
    assert_eq!(<hello as Orchestrator>::NAME, "hello.v2");
    assert_eq!(<hello as Orchestrator>::VERSION, Some("2.1"));
    assert_eq!(<greet as Activity>::NAME, "greet_v2");
    let _ = clocky;
}
