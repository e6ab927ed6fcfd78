//! Issue 13: errors keep their chains — a store's backend error keeps the driver's or the
//! OS's error as its source, a task failure keeps the activity's failure as its source, and
//! the user error types convert with `?` into `Box<dyn Error>` and `anyhow::Error`.

use std::error::Error as StdError;

use durable_core::prelude::*;
use durable_core::{FailureDetails, RedbStore, StoreError};

use super::support::*;

/// The `Display` text of an error and of every `source()` under it, outermost first.
fn chain(err: &(dyn StdError + 'static)) -> Vec<String> {
    let mut out = vec![err.to_string()];
    let mut next = err.source();
    while let Some(e) = next {
        out.push(e.to_string());
        next = e.source();
    }
    out
}

#[test]
fn a_store_io_failure_keeps_the_os_error_as_its_source() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-dir").join("app.redb");
    let err = RedbStore::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    let io = err
        .source()
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .unwrap_or_else(|| panic!("the io::Error is the source: {err:?}"));
    assert_eq!(io.kind(), std::io::ErrorKind::NotFound);

    // Clones share the cause and compare equal (backend errors are equal by message).
    let clone = err.clone();
    assert_eq!(clone, err);
    assert!(clone.source().unwrap().is::<std::io::Error>());
    assert_ne!(err, StoreError::backend("another failure"));

    // A client error carries it on.
    let client = ClientError::from(err);
    assert!(matches!(client, ClientError::Store(StoreError::Backend(_))));
    assert!(
        client.source().unwrap().is::<std::io::Error>(),
        "{client:?}"
    );
}

#[activity]
async fn decline(cents: u64) -> Result<u64, ActivityError> {
    Err(ActivityError::non_retriable(format!(
        "card declined for {cents}"
    )))
}

#[activity]
async fn welcome(name: String) -> Result<String, ActivityError> {
    Ok(format!("Hello {name}!"))
}

/// Returns the chain of the `TaskError` of a failed call, as an error reporter sees it.
#[orchestrator]
async fn task_error_chain(
    ctx: OrchestrationContext,
    cents: u64,
) -> Result<Vec<String>, OrchestrationError> {
    match ctx.call(decline, cents).await {
        Ok(_) => Err(OrchestrationError::new("the call should fail")),
        Err(e) => {
            let inner = e
                .source()
                .and_then(|s| s.downcast_ref::<FailureDetails>())
                .ok_or_else(|| OrchestrationError::new("the source is the task's failure"))?;
            let mut out = chain(&e);
            out.push(format!("non_retriable={}", inner.non_retriable));
            Ok(out)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_error_has_the_activity_failure_as_its_source() {
    let env = start(|b| b.register(decline).register(task_error_chain));
    let run = task_error_chain::start(&env.client, 5).await.unwrap();
    let out = run.wait().await.unwrap();
    assert_eq!(out.len(), 3, "{out:?}");
    assert!(
        out[0].starts_with("activity 'decline' (task ") && out[0].ends_with("card declined for 5"),
        "{out:?}"
    );
    assert_eq!(out[1], "ActivityError: card declined for 5");
    assert_eq!(out[2], "non_retriable=true");
}

#[orchestrator]
async fn pay(ctx: OrchestrationContext, cents: u64) -> Result<u64, OrchestrationError> {
    Ok(ctx.call(decline, cents).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_reports_the_task_and_the_activity_failure_as_a_chain() {
    let env = start(|b| b.register(decline).register(pay));
    let run = pay::start(&env.client, 7).await.unwrap();
    let err = run.wait().await.unwrap_err();
    let ClientError::Failed(failure) = &err else {
        panic!("{err:?}")
    };
    let links = chain(&err);
    assert_eq!(links.len(), 3, "{links:?}");
    assert!(links[0].starts_with("orchestration failed: TaskFailed: activity 'decline'"));
    assert_eq!(links[1], failure.to_string());
    assert_eq!(links[2], "ActivityError: card declined for 7");
    let source = err
        .source()
        .and_then(|s| s.downcast_ref::<FailureDetails>())
        .expect("the failure details are the source");
    assert_eq!(source.innermost().error_type, "ActivityError");

    // anyhow shows the same chain.
    let any = anyhow::Error::from(err);
    let shown = format!("{any:#}");
    assert!(
        shown.ends_with(": ActivityError: card declined for 7"),
        "{shown}"
    );
}

/// A user error that wraps the failed task.
#[derive(Debug, thiserror::Error)]
#[error("checkout of {0} cents failed")]
struct CheckoutError(u64, #[source] TaskError);

#[orchestrator]
async fn checkout(ctx: OrchestrationContext, cents: u64) -> Result<u64, CheckoutError> {
    ctx.call(decline, cents)
        .await
        .map_err(|e| CheckoutError(cents, e))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_error_wrapping_a_task_keeps_it_as_the_inner_failure_once() {
    let env = start(|b| b.register(decline).register(checkout));
    let run = checkout::start(&env.client, 9).await.unwrap();
    let ClientError::Failed(f) = run.wait().await.unwrap_err() else {
        panic!("fails")
    };
    assert!(f.error_type.ends_with("CheckoutError"), "{f:?}");
    assert_eq!(f.message, "checkout of 9 cents failed");
    // The task's text once; the rest of the chain is the inner failure, with its structure.
    assert_eq!(f.causes.len(), 1, "{f:?}");
    assert!(
        f.causes[0].starts_with("activity 'decline' (task "),
        "{f:?}"
    );
    let task = f.inner.as_deref().expect("the task's failure is kept");
    assert_eq!(task.error_type, "TaskFailed");
    let activity = task
        .inner
        .as_deref()
        .expect("the activity's failure is kept");
    assert_eq!(activity.error_type, "ActivityError");
    assert_eq!(activity.message, "card declined for 9");
    assert!(activity.non_retriable);
    assert_eq!(
        chain(&f).last().map(String::as_str),
        Some("ActivityError: card declined for 9")
    );
}

async fn charge_twice() -> Result<u64, Box<dyn StdError + Send + Sync>> {
    Ok(decline::run(1).await? + decline::run(2).await?)
}

fn plan() -> Result<(), OrchestrationError> {
    Err(OrchestrationError::new("no route"))
}

fn plan_boxed() -> Result<(), Box<dyn StdError>> {
    plan()?;
    Ok(())
}

async fn charge() -> anyhow::Result<u64> {
    Ok(decline::run(3).await?)
}

async fn charge_explicitly() -> anyhow::Result<u64> {
    Ok(decline::run(4).await.map_err(FailureDetails::from)?)
}

// The README tests activity bodies directly; `?` works in tests returning `Box<dyn Error>`.
#[tokio::test]
async fn activity_bodies_use_question_mark_in_tests_returning_box_dyn_error()
-> Result<(), Box<dyn StdError>> {
    assert_eq!(welcome::run("Ada".into()).await?, "Hello Ada!");

    let err = charge_twice().await.unwrap_err();
    assert_eq!(err.to_string(), "ActivityError: card declined for 1");
    let details = err
        .downcast_ref::<FailureDetails>()
        .expect("the box holds the failure details");
    assert!(details.non_retriable);

    assert_eq!(
        plan_boxed().unwrap_err().to_string(),
        "OrchestrationError: no route"
    );
    Ok(())
}

#[tokio::test]
async fn activity_bodies_use_question_mark_into_anyhow() -> anyhow::Result<()> {
    assert_eq!(welcome::run("Ada".into()).await?, "Hello Ada!");

    let err = charge().await.unwrap_err();
    let details = err
        .downcast_ref::<FailureDetails>()
        .expect("anyhow holds the failure details");
    assert_eq!(details.message, "card declined for 3");

    // Without the `anyhow` feature, the details are the error to convert through.
    assert_eq!(
        charge_explicitly().await.unwrap_err().to_string(),
        "ActivityError: card declined for 4"
    );
    Ok(())
}
