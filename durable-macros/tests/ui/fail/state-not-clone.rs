use durable_core::prelude::*;

struct Connection;

#[activity]
async fn charge(State(conn): State<Connection>, cents: u64) -> Result<u64, ActivityError> {
    let _ = conn;
    Ok(cents)
}

fn main() {}
