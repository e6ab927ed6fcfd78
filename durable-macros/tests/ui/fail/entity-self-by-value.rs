use durable_core::prelude::*;
use serde::{Deserialize, Serialize};

#[entity]
#[derive(Default, Serialize, Deserialize)]
struct Counter {
    value: i64,
}

#[entity]
impl Counter {
    fn take(self) -> i64 {
        self.value
    }
}

fn main() {}
