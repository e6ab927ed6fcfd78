use durable_core::prelude::*;

struct Opaque;

#[activity]
async fn take(value: Opaque) -> Result<u32, ActivityError> {
    let _ = value;
    Ok(1)
}

fn main() {}
