use durable_core::prelude::*;

/// Runs inside the worker during the episode.
#[activity(local)]
async fn step(n: u32) -> Result<u32, ActivityError> {
    Ok(n + 1)
}

#[activity(name = "remote-step")]
async fn remote(n: u32) -> Result<u32, ActivityError> {
    Ok(n)
}

fn main() {
    const { assert!(<step as Activity>::LOCAL) };
    const { assert!(!<remote as Activity>::LOCAL) };
}
