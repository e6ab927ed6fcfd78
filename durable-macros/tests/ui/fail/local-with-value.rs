use durable_core::prelude::*;

#[activity(local = true)]
async fn step(n: u32) -> Result<u32, ActivityError> {
    Ok(n)
}

fn main() {}
