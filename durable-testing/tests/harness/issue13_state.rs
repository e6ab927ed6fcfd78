//! Issue 13: activities with shared state on the harness — the same `state(..)` as the
//! worker, typed mocks that need no state, the same build errors.

use std::any::type_name;
use std::sync::{Arc, Mutex};

use durable_core::BuildError;
use durable_core::prelude::*;
use durable_testing::{Script, TestEnv, TestEnvBuilder};

use super::panic_message;

/// A payment provider's client; in tests, a double that records the charges.
#[derive(Clone, Default)]
struct Payments(Arc<Mutex<Vec<u64>>>);

#[derive(Clone)]
struct Currency(&'static str);

#[activity]
async fn charge(
    State(payments): State<Payments>,
    State(currency): State<Currency>,
    cents: u64,
) -> Result<String, ActivityError> {
    payments.0.lock().unwrap().push(cents);
    Ok(format!("{cents} {}", currency.0))
}

#[orchestrator]
async fn checkout(
    ctx: OrchestrationContext,
    carts: Vec<u64>,
) -> Result<Vec<String>, OrchestrationError> {
    let mut receipts = Vec::new();
    for cents in carts {
        receipts.push(ctx.call(charge, cents).await?);
    }
    Ok(receipts)
}

fn with_state(payments: &Payments) -> TestEnvBuilder {
    TestEnv::builder()
        .state(payments.clone())
        .state(Currency("EUR"))
        .register(charge)
        .register(checkout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_harness_hands_its_state_to_real_activities() {
    let payments = Payments::default();
    let env = with_state(&payments).start().unwrap();
    let run = env.start(checkout, vec![100, 250]).await.unwrap();
    assert_eq!(env.wait(&run).await.unwrap(), ["100 EUR", "250 EUR"]);
    assert_eq!(*payments.0.lock().unwrap(), [100, 250]);
    assert_eq!(env.calls(charge), [100, 250]);
    assert!(env.all_calls().iter().all(|c| !c.mocked));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_doubled_state_is_the_workers_build_error() {
    let err = TestEnv::builder()
        .state(Payments::default())
        .register(charge)
        .register(checkout)
        .start()
        .unwrap_err();
    assert_eq!(
        err,
        BuildError::MissingState {
            activity: "charge".into(),
            type_name: type_name::<Currency>(),
        }
    );
    let err = with_state(&Payments::default())
        .state(Currency("USD"))
        .start()
        .unwrap_err();
    assert_eq!(
        err,
        BuildError::DuplicateState {
            type_name: type_name::<Currency>()
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typed_mock_of_a_stateful_activity_needs_no_state() {
    // Not registered, only mocked.
    let env = TestEnv::builder()
        .register(checkout)
        .mock(charge, |cents: u64| Ok(format!("mock {cents}")))
        .start()
        .unwrap();
    let run = env.start(checkout, vec![5]).await.unwrap();
    assert_eq!(env.wait(&run).await.unwrap(), ["mock 5"]);

    // Registered and mocked: the mock replaces it, so its state is not required either.
    let env = TestEnv::builder()
        .register(charge)
        .register(checkout)
        .script(charge, Script::of(charge).ok("scripted".into()))
        .start()
        .unwrap();
    let run = env.start(checkout, vec![6, 7]).await.unwrap();
    assert_eq!(env.wait(&run).await.unwrap(), ["scripted", "scripted"]);
    assert_eq!(env.calls(charge), [6, 7]);
    assert!(env.all_calls().iter().all(|c| c.mocked));

    // Unmocking it would run the real activity, which has no state here: refused at once.
    let env = Arc::new(env);
    let message = panic_message({
        let env = Arc::clone(&env);
        async move { env.unmock(charge) }
    })
    .await
    .expect("unmock refuses");
    assert!(
        message.contains("activity `charge` takes `State<") && message.contains("Payments"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mocks_switch_on_and_off_around_the_real_stateful_activity() {
    let payments = Payments::default();
    let env = with_state(&payments).start().unwrap();
    env.mock(charge, |cents: u64| Ok(format!("free {cents}")));
    let run = env.start(checkout, vec![1]).await.unwrap();
    assert_eq!(env.wait(&run).await.unwrap(), ["free 1"]);
    assert!(payments.0.lock().unwrap().is_empty());

    env.unmock(charge);
    let run = env.start(checkout, vec![2]).await.unwrap();
    assert_eq!(env.wait(&run).await.unwrap(), ["2 EUR"]);
    assert_eq!(*payments.0.lock().unwrap(), [2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_restarted_after_a_crash_gets_the_same_state() {
    let payments = Payments::default();
    let env = with_state(&payments)
        .crash_after_commits([1, 2, 3])
        .start()
        .unwrap();
    let run = env.start(checkout, vec![10, 20, 30]).await.unwrap();
    assert_eq!(
        env.wait(&run).await.unwrap(),
        ["10 EUR", "20 EUR", "30 EUR"]
    );
    assert!(env.crashes() >= 1, "crashed {} times", env.crashes());
    // At least once: each charge ran, some perhaps twice, all with the shared double.
    let charged = payments.0.lock().unwrap().clone();
    for cents in [10, 20, 30] {
        assert!(charged.contains(&cents), "{charged:?}");
    }
    assert_eq!(charged.len(), env.calls(charge).len());
}
