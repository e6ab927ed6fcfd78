use durable_core::prelude::*;

#[activity]
async fn echo<T>(value: T) -> Result<T, ActivityError> {
    Ok(value)
}

fn main() {}
