use durable_core::prelude::*;

#[activity(transactional)]
async fn transfer(_tx: &RedbTransaction<'_>, n: u64) -> Result<u64, ActivityError> {
    Ok(n)
}

fn main() {}
