use durable_core::prelude::*;
use serde::{Deserialize, Serialize};

#[entity]
#[derive(Default, Serialize, Deserialize)]
struct Counter {
    value: i64,
}

#[entity]
impl Counter {
    fn add(&mut self, a: i64, b: i64) {
        self.value += a + b;
    }
}

fn main() {}
