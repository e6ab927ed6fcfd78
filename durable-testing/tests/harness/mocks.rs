//! Typed mocks, scripts and the call log.

use std::fmt;

use durable_core::prelude::*;
use durable_testing::{Script, TestEnv};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u32,
    cents: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Receipt {
    order: u32,
    charged: u64,
}

#[derive(Debug)]
enum PayError {
    Declined { reason: String },
}

impl fmt::Display for PayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PayError::Declined { reason } => write!(f, "card declined: {reason}"),
        }
    }
}

impl std::error::Error for PayError {}

#[activity]
async fn charge(order: Order) -> Result<Receipt, PayError> {
    unimplemented!("would call the payment provider for order {}", order.id)
}

#[activity]
async fn reserve(order: Order) -> Result<u32, ActivityError> {
    Ok(order.id * 10)
}

#[orchestrator]
async fn checkout(ctx: OrchestrationContext, order: Order) -> Result<String, OrchestrationError> {
    let slot = ctx.call(reserve, order.clone()).await?;
    match ctx.call(charge, order).await {
        Ok(r) => Ok(format!("slot {slot}, charged {}", r.charged)),
        Err(e) => Ok(format!(
            "slot {slot}, not charged: {}",
            e.failure()
                .map_or_else(String::new, |f| format!("{} ({})", f.message, f.error_type))
        )),
    }
}

fn order(id: u32, cents: u64) -> Order {
    Order { id, cents }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typed_mock_replaces_one_activity_and_every_call_is_recorded() {
    let env = TestEnv::builder()
        .register(reserve)
        .register(checkout)
        .mock(charge, |o: Order| {
            Ok(Receipt {
                order: o.id,
                charged: o.cents,
            })
        })
        .start()
        .unwrap();
    let a = env.start(checkout, order(1, 500)).await.unwrap();
    let b = env.start(checkout, order(2, 700)).await.unwrap();
    assert_eq!(env.wait(&a).await.unwrap(), "slot 10, charged 500");
    assert_eq!(env.wait(&b).await.unwrap(), "slot 20, charged 700");

    let mut charged = env.calls(charge);
    charged.sort_by_key(|o| o.id);
    assert_eq!(charged, [order(1, 500), order(2, 700)]);
    assert_eq!(env.call_count(reserve), 2);
    let calls = env.all_calls();
    assert!(
        calls
            .iter()
            .filter(|c| c.name == "charge")
            .all(|c| c.mocked)
    );
    assert!(
        calls
            .iter()
            .filter(|c| c.name == "reserve")
            .all(|c| !c.mocked)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mock_fails_with_the_activitys_own_error_type() {
    let env = TestEnv::builder()
        .register(reserve)
        .register(checkout)
        .mock(charge, |o: Order| {
            if o.cents > 1_000 {
                Err(PayError::Declined {
                    reason: "limit".into(),
                })
            } else {
                Ok(Receipt {
                    order: o.id,
                    charged: o.cents,
                })
            }
        })
        .start()
        .unwrap();
    let run = env.start(checkout, order(3, 5_000)).await.unwrap();
    let out = env.wait(&run).await.unwrap();
    assert!(
        out.starts_with("slot 30, not charged: card declined: limit ("),
        "{out}"
    );
    assert!(
        out.contains("PayError"),
        "the error type is recorded: {out}"
    );
    let h = env.history(run.id()).await;
    assert_eq!(h.failed(charge)[0].message, "card declined: limit", "{h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mocks_can_change_while_the_env_runs() {
    let env = TestEnv::builder()
        .register(reserve)
        .register(checkout)
        .mock(charge, |o: Order| {
            Ok(Receipt {
                order: o.id,
                charged: 1,
            })
        })
        .start()
        .unwrap();
    let run = env.start(checkout, order(1, 9)).await.unwrap();
    assert_eq!(env.wait(&run).await.unwrap(), "slot 10, charged 1");

    env.mock(charge, |o: Order| {
        Ok(Receipt {
            order: o.id,
            charged: o.cents * 2,
        })
    });
    env.mock(reserve, |_o: Order| Ok(0));
    let run = env.start(checkout, order(2, 9)).await.unwrap();
    assert_eq!(env.wait(&run).await.unwrap(), "slot 0, charged 18");

    env.unmock(reserve);
    env.script(
        charge,
        Script::of(charge).fail(PayError::Declined {
            reason: "stolen".into(),
        }),
    );
    let run = env.start(checkout, order(3, 9)).await.unwrap();
    let out = env.wait(&run).await.unwrap();
    assert!(
        out.starts_with("slot 30, not charged: card declined: stolen"),
        "{out}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn mocking_an_activity_the_worker_cannot_route_is_a_clear_error() {
    let env = TestEnv::builder().register(checkout).start().unwrap();
    let message = crate::panic_message(async move {
        env.mock(reserve, |_o: Order| Ok(1));
    })
    .await
    .expect("mock panics");
    assert!(
        message.contains("activity `reserve` is neither registered nor mocked in this env"),
        "{message}"
    );
    assert!(
        message.contains("TestEnv::builder().mock(reserve, ..)"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmocked_activity_that_was_never_registered_fails_the_call() {
    let env = TestEnv::builder()
        .register(checkout)
        .mock(reserve, |_o: Order| Ok(1))
        .start()
        .unwrap();
    env.unmock(reserve);
    let run = env.start(checkout, order(1, 1)).await.unwrap();
    let err = env.wait(&run).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("activity `reserve` is neither registered nor mocked"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_mock_fails_the_activity_not_the_worker() {
    let env = TestEnv::builder()
        .register(reserve)
        .register(checkout)
        .mock(charge, |_o: Order| -> Result<Receipt, PayError> {
            panic!("mock exploded")
        })
        .start()
        .unwrap();
    let run = env.start(checkout, order(4, 1)).await.unwrap();
    let out = env.wait(&run).await.unwrap();
    assert!(out.contains("mock exploded"), "{out}");
    // The worker lives on.
    env.mock(charge, |o: Order| {
        Ok(Receipt {
            order: o.id,
            charged: 5,
        })
    });
    let run = env.start(checkout, order(5, 1)).await.unwrap();
    assert_eq!(env.wait(&run).await.unwrap(), "slot 50, charged 5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_script_fails_with_a_message() {
    let env = TestEnv::builder()
        .register(reserve)
        .register(checkout)
        .script(charge, Script::new())
        .start()
        .unwrap();
    let run = env.start(checkout, order(6, 1)).await.unwrap();
    let out = env.wait(&run).await.unwrap();
    assert!(
        out.contains("the script mocking activity `charge` has no steps"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_steps_are_taken_in_execution_order_and_the_last_repeats() {
    let env = TestEnv::builder()
        .register(checkout)
        .mock(reserve, |o: Order| Ok(o.id))
        .script(
            charge,
            Script::of(charge)
                .ok(Receipt {
                    order: 0,
                    charged: 1,
                })
                .fail(PayError::Declined {
                    reason: "once".into(),
                })
                .ok(Receipt {
                    order: 0,
                    charged: 3,
                }),
        )
        .start()
        .unwrap();
    let mut outs = Vec::new();
    for id in 1..=4 {
        let run = env.start(checkout, order(id, 0)).await.unwrap();
        outs.push(env.wait(&run).await.unwrap());
    }
    assert_eq!(outs[0], "slot 1, charged 1");
    assert!(
        outs[1].starts_with("slot 2, not charged: card declined: once"),
        "{}",
        outs[1]
    );
    assert_eq!(outs[2], "slot 3, charged 3");
    assert_eq!(outs[3], "slot 4, charged 3");
}
