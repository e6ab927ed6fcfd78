//! Issue 13: shared state for activities (`State<T>` parameters, `WorkerBuilder::state`), and
//! `Result` aliases in the macros' return types.

use std::any::type_name;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use durable_core::prelude::*;
use durable_core::{BuildError, Registry, StateType, States};

use super::support::*;

/// Stands in for a connection pool: cheap to clone, one shared counter behind it.
#[derive(Clone, Default)]
struct Pool {
    queries: Arc<AtomicU64>,
}

#[derive(Clone)]
struct Currency(&'static str);

type R<T> = Result<T, ActivityError>;

/// Two states of different types, the context between them, the input last; an alias for
/// the return type.
#[activity]
async fn charge(
    State(pool): State<Pool>,
    ctx: ActivityContext,
    currency: State<Currency>,
    cents: u64,
) -> R<String> {
    let n = pool.queries.fetch_add(1, Ordering::SeqCst) + 1;
    Ok(format!(
        "{cents} {} (query {n}, attempt {})",
        currency.0.0, ctx.attempt
    ))
}

#[activity]
async fn queries(State(pool): State<Pool>) -> Result<u64, ActivityError> {
    Ok(pool.queries.load(Ordering::SeqCst))
}

type Flow<T> = Result<T, OrchestrationError>;

#[orchestrator]
async fn checkout(ctx: OrchestrationContext, carts: Vec<u64>) -> Flow<(Vec<String>, u64)> {
    let mut receipts = Vec::new();
    for cents in carts {
        receipts.push(ctx.call(charge, cents).await?);
    }
    Ok((receipts, ctx.call(queries, ()).await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activities_receive_the_workers_state_shared_between_runs() {
    let pool = Pool::default();
    let env = start(|b| {
        b.state(pool.clone())
            .state(Currency("EUR"))
            .register(charge)
            .register(queries)
            .register(checkout)
    });
    let run = checkout::start(&env.client, vec![100, 250]).await.unwrap();
    let (receipts, seen) = run.wait().await.unwrap();
    assert_eq!(
        receipts,
        [
            "100 EUR (query 1, attempt 1)",
            "250 EUR (query 2, attempt 1)"
        ]
    );
    // Every run used the one pool the test holds: clones share it.
    assert_eq!(seen, 2);
    assert_eq!(pool.queries.load(Ordering::SeqCst), 2);
    // State never enters history: the inputs are the orchestration's own values.
    let h = run.history().await.unwrap();
    assert_eq!(count(&h, "TaskScheduled"), 3);
    env.worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_body_takes_state_by_hand_in_declaration_order() {
    let pool = Pool::default();
    let out = charge::run(
        State(pool.clone()),
        ActivityContext::for_test("unit"),
        State(Currency("NOK")),
        5,
    )
    .await
    .unwrap();
    assert_eq!(out, "5 NOK (query 1, attempt 1)");
    assert_eq!(queries::run(State(pool)).await.unwrap(), 1);
    // The trait path takes the state from the context.
    let ctx = ActivityContext::for_test("unit")
        .with_state(Pool::default())
        .with_state(Currency("SEK"));
    assert_eq!(
        charge.run(ctx, 7).await.unwrap(),
        "7 SEK (query 1, attempt 1)"
    );
    assert_eq!(
        <charge as Activity>::STATES,
        [StateType::of::<Pool>(), StateType::of::<Currency>()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_state_fails_start_naming_the_activity_and_the_type() {
    let err = Worker::builder()
        .store(MemoryStore::new())
        .state(Pool::default())
        .register(charge)
        .register(queries)
        .start()
        .unwrap_err();
    assert_eq!(
        err,
        BuildError::MissingState {
            activity: "charge".into(),
            type_name: type_name::<Currency>(),
        }
    );
    assert!(
        err.to_string().contains("activity `charge` takes `State<")
            && err.to_string().contains("Currency"),
        "{err}"
    );

    // The same check when the registry was built apart from the builder.
    let mut registry = Registry::new();
    registry.register(queries);
    let err = Worker::builder()
        .store(MemoryStore::new())
        .registry(registry)
        .start()
        .unwrap_err();
    assert_eq!(
        err,
        BuildError::MissingState {
            activity: "queries".into(),
            type_name: type_name::<Pool>(),
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_value_per_type_a_second_one_fails_start() {
    let err = Worker::builder()
        .store(MemoryStore::new())
        .state(Currency("EUR"))
        .state(Currency("USD"))
        .start()
        .unwrap_err();
    assert_eq!(
        err,
        BuildError::DuplicateState {
            type_name: type_name::<Currency>()
        }
    );
    // Given once through a `States` set and once by hand: the same.
    let mut set = States::new();
    set.insert(Currency("EUR"));
    let err = Worker::builder()
        .store(MemoryStore::new())
        .states(set.clone())
        .state(Currency("USD"))
        .start()
        .unwrap_err();
    assert!(matches!(err, BuildError::DuplicateState { .. }), "{err}");

    // A set shared by several builders.
    set.insert(Pool::default());
    let env = start(|b| {
        b.states(set)
            .register(queries)
            .orchestrator(CallOnce::<queries>::default())
    });
    let out = env
        .client
        .start(CallOnce::<queries>::default(), ())
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(out, 0);
    env.worker.shutdown().await;
}

/// Calls the activity `A` once with `()` (an orchestrator written by hand, for the test
/// above).
struct CallOnce<A>(std::marker::PhantomData<fn() -> A>);

impl<A> Default for CallOnce<A> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<A: Activity<Input = ()> + Default> Orchestrator for CallOnce<A> {
    const NAME: &'static str = "call_once";
    type Input = ();
    type Output = A::Output;
    type Error = OrchestrationError;
    async fn run(ctx: OrchestrationContext, _input: ()) -> Result<A::Output, OrchestrationError> {
        Ok(ctx.call(A::default(), ()).await?)
    }
}

#[orchestrator]
async fn call_queries(ctx: OrchestrationContext, _input: ()) -> Result<String, OrchestrationError> {
    match ctx.call(queries, ()).await {
        Ok(n) => Ok(format!("ran: {n}")),
        Err(TaskError::Failed(f)) => Ok(format!(
            "{}|{}|{}",
            f.details.error_type, f.details.non_retriable, f.details.message
        )),
        Err(e) => Err(e.into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_changed_behind_starts_back_fails_the_task_not_the_worker() {
    // Middleware wraps the real handler and (wrongly) declares that it needs no state: the
    // worker starts, and the real activity reports the missing state as a failure.
    let mut registry = Registry::new();
    registry.register(queries);
    registry.register(call_queries);
    let real = registry.activity_handler("queries").unwrap();
    registry.replace_activity_raw("queries", move |ctx, input| real(ctx, input));
    assert_eq!(
        registry.activity_states("queries"),
        [StateType::of::<Pool>()],
        "a replacement keeps the state types"
    );
    registry.set_activity_states("queries", []);
    let env = start(|b| b.registry(registry));
    let out = call_queries::start(&env.client, ())
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(
        out,
        format!(
            "MissingState|true|activity `queries` takes `State<{}>`, which this worker was not given",
            type_name::<Pool>()
        )
    );
    env.worker.shutdown().await;
}

/// An activity written by hand that lists the state it reads.
#[derive(Clone, Copy, Default)]
struct Price;

impl Activity for Price {
    const NAME: &'static str = "price";
    const STATES: &'static [StateType] = &[StateType::of::<Currency>()];
    type Input = ();
    type Output = String;
    type Error = ActivityError;
    async fn run(&self, ctx: ActivityContext, _input: ()) -> Result<String, ActivityError> {
        let currency = ctx
            .state::<Currency>()
            .ok_or_else(|| ActivityError::new("no currency"))?;
        Ok(format!("9.99 {}", currency.0))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_written_activities_declare_and_read_state() {
    let err = Worker::builder()
        .store(MemoryStore::new())
        .activity(Price)
        .start()
        .unwrap_err();
    assert_eq!(
        err,
        BuildError::MissingState {
            activity: "price".into(),
            type_name: type_name::<Currency>(),
        }
    );
    let env = start(|b| {
        b.state(Currency("CHF"))
            .activity(Price)
            .orchestrator(CallOnce::<Price>::default())
    });
    let out = env
        .client
        .start(CallOnce::<Price>::default(), ())
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(out, "9.99 CHF");
    env.worker.shutdown().await;
}
