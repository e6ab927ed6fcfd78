use durable_core::prelude::*;

mod activities {
    use durable_core::prelude::*;

    #[activity]
    pub async fn greet(name: String) -> Result<String, ActivityError> {
        Ok(format!("Hello {name}!"))
    }
}

#[orchestrator]
async fn flow(ctx: OrchestrationContext, name: String) -> Result<String, OrchestrationError> {
    let greet = name.clone();
    Ok(ctx.call(greet, name).await?)
}

fn main() {}
