use durable_core::prelude::*;

#[activity]
async fn charge(State(pool): State, cents: u64) -> Result<u64, ActivityError> {
    let _ = pool;
    Ok(cents)
}

fn main() {}
