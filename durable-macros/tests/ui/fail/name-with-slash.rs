use durable_core::prelude::*;

#[activity(name = "billing/charge")]
async fn charge(amount: u32) -> Result<u32, ActivityError> {
    Ok(amount)
}

fn main() {}
