use durable_core::prelude::*;

#[derive(Clone)]
struct Config;

#[activity]
fn transfer(
    ctx: ActivityContext,
    State(_config): State<Config>,
    _tx: &RedbTransaction<'_>,
    n: u64,
) -> Result<u64, ActivityError> {
    let _ = ctx;
    Ok(n)
}

fn main() {}
