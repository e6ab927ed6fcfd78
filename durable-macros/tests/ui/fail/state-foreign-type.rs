// A type of the user's own called `State<..>` is taken for the worker's state and reported at
// the parameter (twice, at the same type).
use durable_core::prelude::*;

mod mine {
    #[derive(Clone, serde::Serialize, serde::Deserialize)]
    pub struct State<T>(pub T);
}

#[activity]
async fn charge(s: mine::State<u64>) -> Result<u64, ActivityError> {
    Ok(s.0)
}

fn main() {}
