use durable_core::prelude::*;

#[activity]
fn greet(name: String) -> Result<String, ActivityError> {
    Ok(name)
}

fn main() {}
