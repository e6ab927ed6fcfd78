use durable_core::prelude::*;
use serde::{Deserialize, Serialize};

/// A cart.
#[entity(name = "ShoppingCart")]
#[derive(Serialize, Deserialize)]
pub struct Cart {
    items: Vec<String>,
}

#[entity]
impl Cart {
    fn initial() -> Self {
        Cart { items: Vec::new() }
    }

    /// Adds an item.
    pub async fn add(&mut self, item: String) -> Result<usize, ActivityError> {
        self.items.push(item);
        Ok(self.items.len())
    }

    pub fn clear(&mut self, ctx: &EntityContext) {
        self.items.clear();
        ctx.delete_state();
    }

    pub fn count(&self) -> usize {
        self.items.len()
    }
}

fn main() {
    assert_eq!(<Cart as durable_core::Entity>::NAME, "ShoppingCart");
    let _ = Cart::entity();
}
