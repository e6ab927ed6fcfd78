use durable_core::prelude::*;

#[activity(name = "a", name = "b")]
async fn greet(name: String) -> Result<String, ActivityError> {
    Ok(name)
}

fn main() {}
