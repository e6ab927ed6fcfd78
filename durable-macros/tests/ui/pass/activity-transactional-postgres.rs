use durable_core::prelude::*;
use durable_core::transaction::PostgresActivity;

/// Declared by the parameter; `async`, as PostgreSQL is.
#[activity]
async fn record(tx: &PgTransaction<'_>, id: i64) -> Result<u64, ActivityError> {
    Ok(tx
        .execute("INSERT INTO orders (id) VALUES ($1)", &[&id])
        .await?)
}

#[activity(transactional)]
async fn noop(_tx: &durable_core::PgTransaction<'_>) -> Result<(), ActivityError> {
    Ok(())
}

#[orchestrator]
async fn flow(ctx: OrchestrationContext, id: i64) -> Result<u64, OrchestrationError> {
    ctx.call(noop, ()).await?;
    Ok(ctx.call(record, id).await?)
}

fn is_postgres_activity<A: PostgresActivity>(_: A) {}

fn main() {
    is_postgres_activity(record);
    is_postgres_activity(noop);
    let _ = Worker::builder().register(record).register(noop).register(flow);
}
