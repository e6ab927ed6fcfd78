// An alias is accepted when it names a `Result`; here it does not, reported once at the return
// type (cargo shows identical diagnostics once; trybuild keeps the copies).
use durable_core::prelude::*;

type R<T> = Option<T>;

#[activity]
async fn greet(name: String) -> R<String> {
    Some(name)
}

fn main() {}
