use std::sync::Arc;

use durable_core::prelude::*;

#[derive(Clone, Default)]
struct Pool(Arc<Vec<u64>>);

#[derive(Clone)]
struct Config {
    currency: &'static str,
}

type R<T> = Result<T, ActivityError>;

/// State in any position, next to the context and the input.
#[activity]
pub async fn charge(
    State(config): State<Config>,
    ctx: ActivityContext,
    cents: u64,
    pool: State<Pool>,
) -> R<String> {
    Ok(format!("{cents} {} ({} rows, attempt {})", config.currency, pool.0.0.len(), ctx.attempt))
}

/// Only state, no input: the input type is `()`.
#[activity]
async fn rows(State(pool): State<Pool>) -> std::io::Result<usize> {
    Ok(pool.0.len())
}

/// A user type that happens to be called `State` is an ordinary input.
mod own {
    use durable_core::prelude::*;

    #[derive(serde::Serialize, serde::Deserialize)]
    pub struct State {
        pub n: u32,
    }

    #[activity]
    pub async fn bump(state: State) -> Result<u32, ActivityError> {
        Ok(state.n + 1)
    }
}

#[orchestrator]
async fn flow(ctx: OrchestrationContext, cents: u64) -> R<String> {
    let n = ctx.call(rows, ()).await?;
    let bumped = ctx.call(own::bump, own::State { n: 1 }).await?;
    Ok(format!("{} / {n} / {bumped}", ctx.call(charge, cents).await?))
}

fn main() {
    assert_eq!(
        <charge as Activity>::STATES,
        [durable_core::StateType::of::<Config>(), durable_core::StateType::of::<Pool>()]
    );
    assert!(<own::bump as Activity>::STATES.is_empty());
    let _ = flow;
    // The body takes the state by hand, in declaration order.
    let _ = charge::run(
        State(Config { currency: "EUR" }),
        ActivityContext::for_test("i"),
        5,
        State(Pool::default()),
    );
    let _ = rows::run(State(Pool::default()));
}
