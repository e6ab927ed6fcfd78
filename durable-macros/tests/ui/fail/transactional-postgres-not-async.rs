use durable_core::prelude::*;

#[activity(transactional)]
fn record(_tx: &PgTransaction<'_>, id: i64) -> Result<i64, ActivityError> {
    Ok(id)
}

fn main() {}
