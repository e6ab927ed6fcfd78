use durable_core::prelude::*;

#[activity(retires = 3)]
async fn greet(name: String) -> Result<String, ActivityError> {
    Ok(name)
}

fn main() {}
