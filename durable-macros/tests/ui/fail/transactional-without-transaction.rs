use durable_core::prelude::*;

#[activity(transactional)]
fn transfer(n: u64) -> Result<u64, ActivityError> {
    Ok(n)
}

fn main() {}
