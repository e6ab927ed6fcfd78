use durable_core::prelude::*;
use durable_core::redb::{ReadableTableMetadata, TableDefinition};
use durable_core::transaction::RedbActivity;

const ROWS: TableDefinition<'_, u64, u64> = TableDefinition::new("rows");

type R<T> = Result<T, ActivityError>;

/// Declared by the attribute.
#[activity(transactional, name = "record")]
fn record(tx: &RedbTransaction<'_>, n: u64) -> Result<u64, ActivityError> {
    tx.open_table(ROWS)?.insert(n, n)?;
    Ok(n)
}

/// Declared by the parameter alone; no input; a `Result` alias.
#[activity]
fn count(tx: &durable_core::RedbTransaction<'_>) -> R<u64> {
    Ok(tx.open_table(ROWS)?.len()?)
}

#[orchestrator]
async fn flow(ctx: OrchestrationContext, n: u64) -> Result<u64, OrchestrationError> {
    ctx.call(record, n).await?;
    Ok(ctx.call(count, ()).await?)
}

fn is_redb_activity<A: RedbActivity>(_: A) {}

fn main() {
    is_redb_activity(record);
    is_redb_activity(count);
    let _ = Worker::builder().register(record).register(count).register(flow);
}
