//! Seeded simulation: permuted completion order, duplicate deliveries and injected failures,
//! reproducible from the seed.

use std::time::Duration;

use durable_core::history::Event;
use durable_core::prelude::*;
use durable_testing::{History, SimConfig, Simulation, TestEnv};

#[activity]
async fn square(x: u64) -> Result<u64, ActivityError> {
    Ok(x * x)
}

#[orchestrator]
async fn sum_squares(ctx: OrchestrationContext, n: u64) -> Result<u64, OrchestrationError> {
    let all = ctx.when_all((1..=n).map(|i| ctx.call(square, i))).await;
    let mut sum = 0;
    for r in all {
        sum += r?;
    }
    Ok(sum)
}

/// Which activity finished first: an order-dependent result, on purpose.
#[orchestrator]
async fn first_done(ctx: OrchestrationContext, n: u64) -> Result<u64, OrchestrationError> {
    let (_, first) = ctx.when_any((1..=n).map(|i| ctx.call(square, i))).await?;
    Ok(first?)
}

#[orchestrator]
async fn sum_with_retries(ctx: OrchestrationContext, n: u64) -> Result<u64, OrchestrationError> {
    let policy = RetryPolicy::new(30, Duration::from_secs(1));
    let all = ctx
        .when_all((1..=n).map(|i| ctx.call_with_retry(square, i, policy.clone())))
        .await;
    let mut sum = 0;
    for r in all {
        sum += r?;
    }
    Ok(sum)
}

#[orchestrator]
async fn race_timer(ctx: OrchestrationContext, _x: ()) -> Result<String, OrchestrationError> {
    match select(ctx.call(square, 3), ctx.sleep(Duration::from_secs(30))).await {
        Either::Left(r) => {
            r?;
            Ok("activity".into())
        }
        Either::Right(()) => Ok("timer".into()),
    }
}

fn builder() -> durable_testing::TestEnvBuilder {
    TestEnv::builder()
        .register(square)
        .register(sum_squares)
        .register(first_done)
        .register(sum_with_retries)
        .register(race_timer)
}

/// The order in which activity results reached the orchestration.
fn completion_order(h: &History) -> Vec<u64> {
    h.events()
        .iter()
        .filter_map(|e| match &e.event {
            Event::TaskCompleted { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicates_are_ignored_and_completion_orders_vary_with_the_seed() {
    let orders = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    let seen = std::sync::Arc::clone(&orders);
    let report = Simulation::new(builder)
        .duplicate_rate(1.0)
        .seeds(0..12)
        .run(move |env| {
            let seen = std::sync::Arc::clone(&seen);
            async move {
                let run = env.start(sum_squares, 8).await.unwrap();
                assert_eq!(env.wait(&run).await.unwrap(), 204);
                let h = env.history(run.id()).await;
                // Every duplicate delivery was ignored: one completion per activity.
                assert_eq!(h.count("TaskCompleted"), 8, "{h}");
                seen.lock().unwrap().insert(completion_order(&h));
            }
        })
        .await;
    let totals = report.totals();
    assert_eq!(totals.held, 12 * 8);
    // Duplicates of the last result arrive after the instance finished and are refused.
    assert!(totals.duplicates_sent >= 12, "{report}");
    assert!(
        orders.lock().unwrap().len() >= 6,
        "seeds permute the completion order"
    );
}

async fn history_under(seed: u64) -> History {
    let env = builder().simulate(SimConfig::new(seed)).start().unwrap();
    let run = env.start(sum_squares, 6).await.unwrap();
    env.wait(&run).await.unwrap();
    env.history(run.id()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_seed_makes_the_same_choices_every_time() {
    for seed in [1, 7, 42] {
        let first = history_under(seed).await;
        for _ in 0..3 {
            assert_eq!(
                history_under(seed).await,
                first,
                "seed {seed} replays identically"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn injected_failures_are_retried_by_retry_policies() {
    let report = Simulation::new(builder)
        .failure_rate(0.3)
        .seeds(0..10)
        .run(|env| async move {
            let run = env.start(sum_with_retries, 6).await.unwrap();
            assert_eq!(env.wait(&run).await.unwrap(), 91);
        })
        .await;
    assert!(report.totals().failures_injected > 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_seed_is_named_and_fails_again_when_replayed() {
    let scenario = |env: TestEnv| async move {
        let run = env.start(first_done, 5).await.unwrap();
        // Wrong on purpose: assumes the first activity always finishes first.
        assert_eq!(
            env.wait(&run).await.unwrap(),
            1,
            "first activity finished first"
        );
    };
    let message = crate::panic_message(async move {
        Simulation::new(builder).seeds(0..50).run(scenario).await;
    })
    .await
    .expect("some seed reorders the completions");
    assert!(
        message.starts_with("simulation failed with seed "),
        "{message}"
    );
    assert!(
        message.contains("first activity finished first"),
        "{message}"
    );
    let seed: u64 = message["simulation failed with seed ".len()..]
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        message.contains(&format!("DURABLE_SEED={seed}")),
        "{message}"
    );

    for _ in 0..3 {
        let again = crate::panic_message(async move {
            Simulation::new(builder).seeds([seed]).run(scenario).await;
        })
        .await;
        assert!(again.is_some(), "seed {seed} fails every time");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delays_in_virtual_time_let_timers_win_some_races() {
    let outcomes = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    let seen = std::sync::Arc::clone(&outcomes);
    Simulation::new(builder)
        .max_delay(Duration::from_secs(60))
        .seeds(0..20)
        .run(move |env| {
            let seen = std::sync::Arc::clone(&seen);
            async move {
                let run = env.start(race_timer, ()).await.unwrap();
                let winner = env.wait(&run).await.unwrap();
                seen.lock().unwrap().insert(winner);
            }
        })
        .await;
    assert_eq!(
        *outcomes.lock().unwrap(),
        ["activity".to_owned(), "timer".to_owned()]
            .into_iter()
            .collect()
    );
}
