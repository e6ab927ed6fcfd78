use durable_core::prelude::*;

#[activity]
async fn add(a: u32, b: u32, c: u32) -> Result<u32, ActivityError> {
    Ok(a + b + c)
}

fn main() {}
