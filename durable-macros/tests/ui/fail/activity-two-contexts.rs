use durable_core::prelude::*;

#[activity]
async fn charge(a: ActivityContext, cents: u64, b: ActivityContext) -> Result<u64, ActivityError> {
    let _ = (a, b);
    Ok(cents)
}

fn main() {}
