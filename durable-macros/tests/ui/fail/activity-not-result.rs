use durable_core::prelude::*;

#[activity]
async fn greet(name: String) -> String {
    name
}

fn main() {}
