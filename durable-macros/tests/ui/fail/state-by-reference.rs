use durable_core::prelude::*;

#[derive(Clone)]
struct Pool;

#[activity]
async fn charge(pool: &State<Pool>, cents: u64) -> Result<u64, ActivityError> {
    let _ = pool;
    Ok(cents)
}

fn main() {}
