// A worker that is started and not kept stops at once: `Worker` is `#[must_use]`.
#![deny(unused_must_use)]

use durable_core::prelude::*;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    Worker::builder().store(MemoryStore::new()).start()?;
    Ok(())
}
