use durable_core::prelude::*;

struct Opaque;

#[entity]
#[derive(Default)]
struct Counter {
    value: i64,
}

#[entity]
impl Counter {
    fn add(&mut self, amount: i64) {
        self.value += amount;
    }
}

fn main() {
    let _ = Opaque;
}
