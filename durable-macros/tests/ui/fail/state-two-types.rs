use durable_core::prelude::*;

#[derive(Clone)]
struct Pool;
#[derive(Clone)]
struct Config;

#[activity]
async fn charge(state: State<Pool, Config>, cents: u64) -> Result<u64, ActivityError> {
    let _ = state;
    Ok(cents)
}

fn main() {}
