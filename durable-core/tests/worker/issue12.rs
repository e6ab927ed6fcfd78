//! Issue 12: event order across continue-as-new, combinators over nothing, event-name
//! matching, and failures that name the failed task.

use std::sync::Arc;
use std::time::Duration;

use durable_core::prelude::*;
use durable_core::{RedbStore, Store, SubOrchestrationOptions, TaskFuture};
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------- event order across generations

/// Counts `false` events, one per generation, until a `true` arrives.
#[orchestrator]
async fn count_falses(ctx: OrchestrationContext, seen: u32) -> Result<u32, OrchestrationError> {
    let flag: bool = ctx.wait_for_event("flag").await?;
    if flag {
        return Ok(seen);
    }
    ctx.continue_as_new(seen + 1).await
}

/// Raises ten `false` then one `true` while generations run (yielding between raises so the
/// worker runs episodes meanwhile), and checks every `false` was seen before the `true`.
async fn ten_falses_then_true(worker: &Worker, round: usize, spread: bool) {
    let client = worker.client();
    let id = InstanceId::new(format!("order-{round}")).unwrap();
    let run = client
        .start_with(count_falses, 0, StartOptions::new().instance_id(id))
        .await
        .unwrap();
    for i in 0..11 {
        run.raise("flag", &(i == 10)).await.unwrap();
        if spread && i % 3 == round % 3 {
            tokio::task::yield_now().await;
        }
    }
    let seen = tokio::time::timeout(Duration::from_secs(30), run.wait())
        .await
        .expect("the orchestration finishes")
        .unwrap();
    assert_eq!(seen, 10, "round {round}: the `true` overtook a `false`");
}

async fn order_holds_on(store: Arc<dyn Store>, cache: usize) {
    order_holds_for(store, cache, 40).await;
}

async fn order_holds_for(store: Arc<dyn Store>, cache: usize, rounds: usize) {
    let worker = Worker::builder()
        .store_arc(store)
        .register(count_falses)
        .cache_capacity(cache)
        .start()
        .unwrap();
    for round in 0..rounds {
        ten_falses_then_true(&worker, round, round % 2 == 1).await;
    }
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn continue_as_new_keeps_arrival_order_on_redb() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path().join("order.redb")).unwrap();
    order_holds_on(Arc::new(store), 10_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn continue_as_new_keeps_arrival_order_in_memory_with_the_cache() {
    order_holds_on(Arc::new(MemoryStore::new()), 10_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn continue_as_new_keeps_arrival_order_in_memory_without_the_cache() {
    order_holds_on(Arc::new(MemoryStore::new()), 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn continue_as_new_keeps_arrival_order_on_postgres() {
    let Ok(url) = std::env::var("DURABLE_TEST_POSTGRES_URL") else {
        eprintln!("skipped: DURABLE_TEST_POSTGRES_URL is not set (.ci/run sets it)");
        return;
    };
    let hub = format!("durable_test_{}", &InstanceId::random().as_str()[..16]);
    let store = durable_core::PostgresStore::connect(&url, durable_core::PostgresOptions::new(hub))
        .await
        .expect("connect to PostgreSQL");
    order_holds_for(Arc::new(store.clone()), 10_000, 10).await;
    store.drop_task_hub().await.unwrap();
}

// ---------------------------------------------------------------- combinators: empty, single, duplicates

#[activity]
async fn double(n: u64) -> Result<u64, ActivityError> {
    Ok(n * 2)
}

/// Catches `when_any` over nothing and reports it.
#[orchestrator]
async fn any_of_nothing(
    ctx: OrchestrationContext,
    catch: bool,
) -> Result<String, OrchestrationError> {
    let none: Vec<TaskFuture<u64>> = Vec::new();
    match ctx.when_any(none).await {
        Ok((i, _)) => Ok(format!("won by {i}")),
        Err(e @ TaskError::EmptySet) if catch => Ok(format!("caught: {e}")),
        Err(e) => Err(e.into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_any_over_nothing_fails_at_once_and_can_be_caught() {
    let env = super::support::start(|b| b.register(any_of_nothing));
    let caught = env.client.start(any_of_nothing, true).await.unwrap();
    assert_eq!(
        caught.wait().await.unwrap(),
        "caught: when_any was given no tasks: there is nothing to wait for"
    );
    let failed = env.client.start(any_of_nothing, false).await.unwrap();
    let err = failed.wait().await.unwrap_err();
    let ClientError::Failed(f) = err else {
        panic!("expected a failure, got {err:?}");
    };
    assert!(
        f.message.contains("when_any was given no tasks"),
        "failure says the set is empty: {f}"
    );
    assert_eq!(
        failed.status().await.unwrap().status,
        RuntimeStatus::Failed,
        "failed, not left pending"
    );
}

/// Every combinator over nothing, one, and duplicates of one operation.
#[orchestrator]
async fn combinator_shapes(
    ctx: OrchestrationContext,
    _input: (),
) -> Result<Vec<String>, OrchestrationError> {
    let mut out = Vec::new();
    let none: Vec<TaskFuture<u64>> = Vec::new();
    out.push(format!("all of none: {:?}", ctx.when_all(none).await));
    let (i, v) = ctx.when_any([ctx.call(double, 1)]).await?;
    out.push(format!("any of one: {i} {}", v?));
    let all: Vec<u64> = ctx
        .when_all([ctx.call(double, 2)])
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    out.push(format!("all of one: {all:?}"));
    // The same activity with the same input twice: two tasks, two results.
    let all: Vec<u64> = ctx
        .when_all([ctx.call(double, 3), ctx.call(double, 3)])
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    out.push(format!("all of the same twice: {all:?}"));
    // Two waits for one event name: the first waiter gets the first event.
    let (i, v) = ctx
        .when_any([
            ctx.wait_for_event::<String>("x"),
            ctx.wait_for_event::<String>("x"),
        ])
        .await?;
    out.push(format!("any of the same event twice: {i} {}", v?));
    let both: Vec<String> = ctx
        .when_all([
            ctx.wait_for_event::<String>("y"),
            ctx.wait_for_event::<String>("y"),
        ])
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    out.push(format!("all of the same event twice: {both:?}"));
    let picked = match select(
        ctx.wait_for_event::<String>("z"),
        ctx.wait_for_event::<String>("z"),
    )
    .await
    {
        Either::Left(v) => format!("left {}", v?),
        Either::Right(v) => format!("right {}", v?),
    };
    out.push(format!("select of the same event twice: {picked}"));
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn combinators_over_none_one_and_duplicates() {
    let env = super::support::start(|b| b.register(combinator_shapes).register(double));
    let run = env.client.start(combinator_shapes, ()).await.unwrap();
    for (name, data) in [
        ("x", "x1"),
        ("x", "x2"),
        ("y", "y1"),
        ("y", "y2"),
        ("z", "z1"),
    ] {
        run.raise(name, &data).await.unwrap();
    }
    assert_eq!(
        run.wait().await.unwrap(),
        [
            "all of none: []",
            "any of one: 0 2",
            "all of one: [4]",
            "all of the same twice: [6, 6]",
            "any of the same event twice: 0 x1",
            r#"all of the same event twice: ["y1", "y2"]"#,
            "select of the same event twice: left z1",
        ]
    );
    let h = run.history().await.unwrap();
    assert_eq!(super::support::count(&h, "TaskScheduled"), 4);
}

// ---------------------------------------------------------------- event names

/// Waits under one spelling for events raised under others: live, buffered, carried over by
/// continue-as-new, and with a timeout.
#[orchestrator]
async fn spelled(
    ctx: OrchestrationContext,
    mut got: Vec<String>,
) -> Result<Vec<String>, OrchestrationError> {
    if got.is_empty() {
        // "CARRIED" is raised before these waits and not consumed in this generation:
        // continue-as-new carries it over to the next.
        got.push(ctx.wait_for_event("Approval").await?);
        got.push(ctx.wait_for_event("Ärger").await?);
        return ctx.continue_as_new(got).await;
    }
    got.push(ctx.wait_for_event("carried").await?);
    got.push(
        ctx.wait_for_event_timeout("Ping", Duration::from_secs(3600))
            .await?,
    );
    got.push(ctx.wait_for_event("title").await?);
    Ok(got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_names_match_case_insensitively() {
    let env = super::support::start(|b| b.register(spelled));
    let run = env.client.start(spelled, Vec::new()).await.unwrap();
    run.raise("CARRIED", "carried over").await.unwrap();
    run.raise("äRGER", "buffered").await.unwrap();
    super::support::wait_for_events(&env.store, run.id(), "EventRaised", 2).await;
    run.raise("APPROVAL", "live").await.unwrap();
    run.raise("pInG", "before the timeout").await.unwrap();
    // Not locale-dependent: "TITLE" lowercases to "title" everywhere (no Turkish dotless i).
    run.raise("TITLE", "title").await.unwrap();
    assert_eq!(
        run.wait().await.unwrap(),
        [
            "live",
            "buffered",
            "carried over",
            "before the timeout",
            "title"
        ]
    );
    let h = run.history().await.unwrap();
    let names: Vec<&str> = h
        .iter()
        .filter_map(|e| match &e.event {
            durable_core::Event::EventRaised { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        names,
        ["CARRIED", "pInG", "TITLE"],
        "history keeps names as raised"
    );
}

/// Waits for an event with no name.
#[orchestrator]
async fn waits_for_nameless(
    ctx: OrchestrationContext,
    _input: (),
) -> Result<String, OrchestrationError> {
    Ok(ctx.wait_for_event::<String>("").await?)
}

/// Sends an event with no name to another instance.
#[orchestrator]
async fn sends_nameless(
    ctx: OrchestrationContext,
    to: InstanceId,
) -> Result<String, OrchestrationError> {
    match ctx.raise_event(&to, "", &1) {
        Ok(()) => Ok("sent".to_owned()),
        Err(e) => Ok(format!("refused: {e}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_event_names_are_refused() {
    let env = super::support::start(|b| b.register(waits_for_nameless).register(sends_nameless));
    let run = env.client.start(waits_for_nameless, ()).await.unwrap();
    let err = run.raise("", "x").await.unwrap_err();
    assert!(
        matches!(err, ClientError::InvalidEventName { .. }),
        "typed error at raise: {err:?}"
    );
    assert!(err.to_string().contains("needs a name"), "{err}");
    let ClientError::Failed(f) = run.wait().await.unwrap_err() else {
        panic!("the orchestration waiting for an empty name fails");
    };
    assert_eq!(f.error_type, "InvalidEventName");
    assert!(f.message.contains("empty event name"), "{f}");
    let sent = env
        .client
        .start(sends_nameless, run.id().clone())
        .await
        .unwrap();
    let out = sent.wait().await.unwrap();
    assert!(
        out.starts_with("refused: ") && out.contains("empty event name"),
        "{out}"
    );
    let h = sent.history().await.unwrap();
    assert_eq!(super::support::count(&h, "EventSent"), 0);
}

// ---------------------------------------------------------------- failures name the failed task

#[derive(Debug, thiserror::Error)]
#[error("card declined")]
struct CardDeclined {
    #[source]
    cause: std::io::Error,
}

#[activity]
async fn charge(_cents: u64) -> Result<String, CardDeclined> {
    Err(CardDeclined {
        cause: std::io::Error::other("issuer said no"),
    })
}

#[activity]
async fn refuse(_cents: u64) -> Result<String, ActivityError> {
    Err(ActivityError::non_retriable("fraud suspected"))
}

/// Propagates a failed activity with `?`.
#[orchestrator]
async fn pay(ctx: OrchestrationContext, cents: u64) -> Result<String, OrchestrationError> {
    ctx.call(echo_cents, cents).await?;
    if cents > 100 {
        return Ok(ctx.call(refuse, cents).await?);
    }
    Ok(ctx.call(charge, cents).await?)
}

#[activity]
async fn echo_cents(cents: u64) -> Result<u64, ActivityError> {
    Ok(cents)
}

/// Catches the failure and reports what it learnt about the task.
#[orchestrator]
async fn pay_and_catch(
    ctx: OrchestrationContext,
    cents: u64,
) -> Result<String, OrchestrationError> {
    match ctx.call(charge, cents).await {
        Ok(r) => Ok(r),
        Err(TaskError::Failed(t)) => Ok(format!(
            "{:?} {} #{:?}: {} [{}] causes={:?}",
            t.kind, t.name, t.task, t.details.message, t.details.error_type, t.details.causes
        )),
        Err(e) => Err(e.into()),
    }
}

/// A parent whose child fails through its activity.
#[orchestrator]
async fn checkout(ctx: OrchestrationContext, cents: u64) -> Result<String, OrchestrationError> {
    let opts = SubOrchestrationOptions::new().instance_id(InstanceId::new("pay-child").unwrap());
    Ok(ctx.call_sub_orchestrator_with(pay, cents, opts).await?)
}

/// A user error that wraps a failed task.
#[derive(Debug, thiserror::Error)]
enum OrderError {
    #[error("payment step failed")]
    Payment(#[from] TaskError),
}

#[orchestrator]
async fn order(ctx: OrchestrationContext, cents: u64) -> Result<String, OrderError> {
    Ok(ctx.call(charge, cents).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_name_the_failed_task_and_keep_its_own_failure() {
    let env = super::support::start(|b| {
        b.register(pay)
            .register(pay_and_catch)
            .register(checkout)
            .register(order)
            .register(charge)
            .register(refuse)
            .register(echo_cents)
    });
    let c = &env.client;

    // Propagated with `?`: the instance's failure names the task, the activity's own failure
    // (its type, message and causes) is the inner failure.
    let run = c.start(pay, 5).await.unwrap();
    let ClientError::Failed(f) = run.wait().await.unwrap_err() else {
        panic!("pay fails");
    };
    assert_eq!(f.error_type, "TaskFailed");
    assert_eq!(
        f.message,
        "activity 'charge' (task 1) failed: card declined"
    );
    let inner = f.inner.as_deref().expect("the activity's own failure");
    assert!(
        inner.error_type.ends_with("CardDeclined"),
        "{}",
        inner.error_type
    );
    assert_eq!(inner.message, "card declined");
    assert_eq!(inner.causes, ["issuer said no"]);
    assert!(!f.non_retriable);
    // The record the status shows is the same.
    let record = run.status().await.unwrap();
    assert_eq!(record.failure.as_ref(), Some(&f));

    // The non-retriable flag is kept on both levels.
    let run = c.start(pay, 500).await.unwrap();
    let ClientError::Failed(f) = run.wait().await.unwrap_err() else {
        panic!("pay fails");
    };
    assert_eq!(
        f.message,
        "activity 'refuse' (task 1) failed: fraud suspected"
    );
    assert!(f.non_retriable);
    assert!(f.inner.as_ref().is_some_and(|i| i.non_retriable));

    // Caught in the orchestration: which task, and its own failure.
    let run = c.start(pay_and_catch, 5).await.unwrap();
    let out = run.wait().await.unwrap();
    assert!(
        out.starts_with("Activity charge #Some(0): card declined [")
            && out.ends_with("CardDeclined] causes=[\"issuer said no\"]"),
        "{out}"
    );

    // Through a sub-orchestration: each level names its task, down to the activity's error.
    let run = c.start(checkout, 5).await.unwrap();
    let ClientError::Failed(f) = run.wait().await.unwrap_err() else {
        panic!("checkout fails");
    };
    assert_eq!(
        f.message,
        "sub-orchestration 'pay' (instance 'pay-child', task 0) failed: \
         activity 'charge' (task 1) failed: card declined"
    );
    let child = f.inner.as_deref().expect("the child's failure");
    assert_eq!(
        child.message,
        "activity 'charge' (task 1) failed: card declined"
    );
    assert_eq!(f.innermost().message, "card declined");
    assert_eq!(f.innermost().causes, ["issuer said no"]);

    // A user error that wraps the task's error keeps it reachable as the inner failure.
    let run = c.start(order, 5).await.unwrap();
    let ClientError::Failed(f) = run.wait().await.unwrap_err() else {
        panic!("order fails");
    };
    assert!(f.error_type.ends_with("OrderError"), "{}", f.error_type);
    assert_eq!(f.message, "payment step failed");
    assert_eq!(
        f.causes[0],
        "activity 'charge' (task 0) failed: card declined"
    );
    let task = f.inner.as_deref().expect("the task's failure");
    assert_eq!(task.error_type, "TaskFailed");
    assert_eq!(f.innermost().message, "card declined");
}

// ---------------------------------------------------------------- replay of a failure inside a section

#[entity]
#[derive(Default, Serialize, Deserialize)]
struct Till {
    cents: u64,
}

#[entity]
impl Till {
    fn add(&mut self, cents: u64) {
        self.cents += cents;
    }
}

/// Fails with `?` while its critical section is held: the guard is dropped as the code
/// returns, so the release is recorded in the same step as the failure.
#[orchestrator]
async fn fail_in_section(
    ctx: OrchestrationContext,
    cents: u64,
) -> Result<String, OrchestrationError> {
    let _section = ctx.lock(&[EntityId::of::<Till>("main")?]).await?;
    ctx.entity::<Till>("main").add(cents).await?;
    Ok(ctx.call(charge, cents).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_that_releases_a_section_replays_cleanly() {
    let env = super::support::start(|b| {
        b.register(fail_in_section)
            .register(charge)
            .register(Till::entity())
    });
    let run = env.client.start(fail_in_section, 5).await.unwrap();
    assert!(matches!(run.wait().await, Err(ClientError::Failed(_))));
    let history = run.history().await.unwrap();
    assert_eq!(super::support::count(&history, "EntityUnlockSent"), 1);
    let mut registry = durable_core::Registry::new();
    registry.register(fail_in_section);
    registry.register(charge);
    durable_core::replay::replay_history(&registry, "fail_in_section", run.id(), &history)
        .unwrap_or_else(|e| {
            panic!(
                "the recorded history replays: {e}\n{}",
                durable_core::history::pretty(&history)
            )
        });
}
