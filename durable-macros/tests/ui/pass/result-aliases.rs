use durable_core::prelude::*;

type R<T> = Result<T, ActivityError>;
type Flow<T> = core::result::Result<T, OrchestrationError>;
type Unit = Result<(), ActivityError>;

#[activity]
async fn double(n: u32) -> R<u32> {
    Ok(n * 2)
}

#[activity]
async fn nothing() -> Unit {
    Ok(())
}

#[orchestrator]
async fn flow(ctx: OrchestrationContext, n: u32) -> Flow<u32> {
    ctx.call(nothing, ()).await?;
    Ok(ctx.call(double, n).await?)
}

async fn typed(client: &Client) -> Result<u32, Box<dyn std::error::Error>> {
    let handle: InstanceHandle<u32> = flow::start(client, 2).await?;
    Ok(handle.wait().await?)
}

fn main() {
    let _ = typed;
    let _: fn() -> u32 = || {
        let _: <double as Activity>::Output = 0_u32;
        0
    };
}
