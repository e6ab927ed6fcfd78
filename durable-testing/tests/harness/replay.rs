//! The versioning safety net: histories recorded by one version of the code, replayed
//! against the next.

use std::time::Duration;

use durable_core::prelude::*;
use durable_core::replay::ReplayError;
use durable_core::{RedbStore, Registry};
use durable_testing::{ReplayCheckError, TestEnv, export_history, replay_check};

#[activity]
async fn reserve(item: String) -> Result<u32, ActivityError> {
    Ok(item.len() as u32)
}

#[activity]
async fn ship(slot: u32) -> Result<String, ActivityError> {
    Ok(format!("shipped from slot {slot}"))
}

/// Version 1: reserve, wait for payment, ship.
mod v1 {
    use super::*;

    #[orchestrator(name = "order")]
    pub(super) async fn order(
        ctx: OrchestrationContext,
        item: String,
    ) -> Result<String, OrchestrationError> {
        let slot = ctx.call(reserve, item).await?;
        ctx.wait_for_event::<()>("paid").await?;
        Ok(ctx.call(ship, slot).await?)
    }
}

/// Version 2 (incompatible): a cooling-off timer before reserving.
mod v2 {
    use super::*;

    #[orchestrator(name = "order")]
    pub(super) async fn order(
        ctx: OrchestrationContext,
        item: String,
    ) -> Result<String, OrchestrationError> {
        ctx.sleep(Duration::from_secs(60)).await;
        let slot = ctx.call(reserve, item).await?;
        ctx.wait_for_event::<()>("paid").await?;
        Ok(ctx.call(ship, slot).await?)
    }
}

/// Version 3 (compatible): the same steps in the same order, a different output format.
mod v3 {
    use super::*;

    #[orchestrator(name = "order")]
    pub(super) async fn order(
        ctx: OrchestrationContext,
        item: String,
    ) -> Result<String, OrchestrationError> {
        let slot = ctx.call(reserve, item.clone()).await?;
        ctx.wait_for_event::<()>("paid").await?;
        let shipped = ctx.call(ship, slot).await?;
        Ok(format!("{item}: {shipped}"))
    }
}

async fn recorded_by_v1() -> (InstanceId, String, TestEnv) {
    let env = TestEnv::builder()
        .register(reserve)
        .register(ship)
        .register(v1::order)
        .start()
        .unwrap();
    let run = env.start(v1::order, "lamp".into()).await.unwrap();
    env.run_until_idle().await;
    let json = env.export_history(run.id()).await.unwrap();
    (run.id().clone(), json, env)
}

fn registry_with(r: impl durable_core::Registration) -> Registry {
    let mut registry = Registry::new();
    registry.register(reserve);
    registry.register(ship);
    registry.register(r);
    registry
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incompatible_change_is_reported_with_both_source_locations() {
    let (id, json, _env) = recorded_by_v1().await;
    let err = replay_check(&registry_with(v2::order), &id, &json).unwrap_err();
    let ReplayCheckError::Diverged {
        error: ReplayError::Nondeterminism { detail, name, .. },
        history,
    } = &err
    else {
        panic!("expected a divergence, got {err}");
    };
    assert_eq!(name, "order");
    // history step 2 is the first action of the execution
    assert!(
        detail.starts_with("history step 2 recorded activity `reserve` (scheduled at "),
        "{detail}"
    );
    assert!(
        detail.contains("the code now schedules a timer at "),
        "{detail}"
    );
    let locations: Vec<&str> = detail.matches("tests/harness/replay.rs:").collect();
    assert_eq!(locations.len(), 2, "both sides carry a location: {detail}");
    assert!(history.count("TaskScheduled") == 1);
    let shown = err.to_string();
    assert!(shown.contains("recorded history:"), "{shown}");
    assert!(shown.contains("#0 reserve(\"lamp\")"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compatible_change_replays_cleanly_and_the_instance_finishes_on_the_new_code() {
    let (id, json, v1_env) = recorded_by_v1().await;
    replay_check(&registry_with(v3::order), &id, &json).unwrap();

    // Deploy v3 on the same store: the in-flight instance continues on the new code.
    let (store, clock) = (v1_env.store().clone(), v1_env.clock().clone());
    drop(v1_env);
    let v3_env = TestEnv::builder()
        .register(reserve)
        .register(ship)
        .register(v3::order)
        .store(store)
        .clock(clock)
        .start()
        .unwrap();
    v3_env.raise(&id, "paid", &()).await.unwrap();
    let record = v3_env.wait_for_completion(&id).await.unwrap();
    assert_eq!(
        record.output.as_deref(),
        Some("\"lamp: shipped from slot 4\"")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploying_incompatible_code_leaves_the_instance_stuck_until_fixed_code_runs_it() {
    let (id, json, v1_env) = recorded_by_v1().await;
    assert!(replay_check(&registry_with(v2::order), &id, &json).is_err());

    let (store, clock) = (v1_env.store().clone(), v1_env.clock().clone());
    drop(v1_env);
    let v2_env = TestEnv::builder()
        .register(reserve)
        .register(ship)
        .register(v2::order)
        .store(store.clone())
        .clock(clock.clone())
        .start()
        .unwrap();
    v2_env.raise(&id, "paid", &()).await.unwrap();
    v2_env.advance(Duration::from_secs(300)).await;
    let record = v2_env.status(&id).await.unwrap();
    assert_eq!(record.status, RuntimeStatus::Running);
    let stuck = record.last_error.expect("the status shows why it is stuck");
    assert!(stuck.contains("non-determinism"), "{stuck}");
    drop(v2_env);

    let fixed = TestEnv::builder()
        .register(reserve)
        .register(ship)
        .register(v1::order)
        .store(store)
        .clock(clock)
        .start()
        .unwrap();
    let record = fixed.wait_for_completion(&id).await.unwrap();
    assert_eq!(record.output.as_deref(), Some("\"shipped from slot 4\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_of_finished_instances_replay_and_the_env_checks_its_own_code() {
    let env = TestEnv::builder()
        .register(reserve)
        .register(ship)
        .register(v1::order)
        .start()
        .unwrap();
    let run = env.start(v1::order, "desk".into()).await.unwrap();
    env.raise(run.id(), "paid", &()).await.unwrap();
    env.wait(&run).await.unwrap();
    let json = env.export_history(run.id()).await.unwrap();
    env.replay_check(run.id(), &json).unwrap();
    let err = replay_check(&registry_with(v2::order), run.id(), &json).unwrap_err();
    assert!(
        err.to_string().contains("recorded activity `reserve`"),
        "{err}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn unknown_orchestrators_and_malformed_exports_are_clear_errors() {
    let (id, json, _env) = recorded_by_v1().await;
    let err = replay_check(&Registry::new(), &id, &json).unwrap_err();
    assert!(
        matches!(
            &err,
            ReplayCheckError::Diverged {
                error: ReplayError::UnknownOrchestrator { name },
                ..
            } if name == "order"
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .starts_with("no orchestrator named `order` is registered"),
        "{err}"
    );

    let err = replay_check(&Registry::new(), &id, "{\"not\": \"a history\"}").unwrap_err();
    assert!(
        err.to_string().starts_with("not an exported history"),
        "{err}"
    );
    let err = replay_check(&Registry::new(), &id, "[]").unwrap_err();
    assert!(matches!(err, ReplayCheckError::NoExecutionStarted));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_export_from_any_store() {
    // A production-like worker on redb, on the system clock; no timers involved.
    let store = RedbStore::in_memory().unwrap();
    let worker = Worker::builder()
        .store(store.clone())
        .register(reserve)
        .register(ship)
        .register(v1::order)
        .start()
        .unwrap();
    let run = v1::order::start(&worker.client(), "chair".into())
        .await
        .unwrap();
    run.raise("paid", &()).await.unwrap();
    assert_eq!(run.wait().await.unwrap(), "shipped from slot 5");
    worker.shutdown().await;

    let json = export_history(&store, run.id()).await.unwrap();
    replay_check(&registry_with(v1::order), run.id(), &json).unwrap();
    assert!(replay_check(&registry_with(v2::order), run.id(), &json).is_err());
}
