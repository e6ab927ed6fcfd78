use durable_core::prelude::*;

#[activity]
async fn greet(name: &'static str) -> Result<String, ActivityError> {
    Ok(name.to_owned())
}

fn main() {}
