//! Status, typed output, custom status, typed history and readable dumps.

use std::time::Duration;

use durable_core::prelude::*;
use durable_testing::TestEnv;
use serde::{Deserialize, Serialize};

const HOUR: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Progress {
    stage: String,
    done: u32,
}

#[activity]
async fn work(n: u32) -> Result<u32, ActivityError> {
    if n == 13 {
        return Err(ActivityError::non_retriable("unlucky"));
    }
    Ok(n * 2)
}

#[orchestrator]
async fn staged(
    ctx: OrchestrationContext,
    items: Vec<u32>,
) -> Result<Vec<u32>, OrchestrationError> {
    let mut out = Vec::new();
    for (i, n) in items.iter().enumerate() {
        ctx.set_custom_status(&Progress {
            stage: "working".into(),
            done: i as u32,
        })?;
        match ctx.call(work, *n).await {
            Ok(v) => out.push(v),
            Err(_) => out.push(0),
        }
    }
    ctx.set_custom_status(&Progress {
        stage: "waiting for review".into(),
        done: items.len() as u32,
    })?;
    let reviewer: String = ctx.wait_for_event("reviewed").await?;
    ctx.sleep(HOUR).await;
    ctx.set_custom_status(&Progress {
        stage: format!("reviewed by {reviewer}"),
        done: items.len() as u32,
    })?;
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_custom_status_and_typed_history() {
    let env = TestEnv::builder()
        .register(work)
        .register(staged)
        .start()
        .unwrap();
    let t0 = env.now();
    let run = env.start(staged, vec![1, 13, 5]).await.unwrap();
    assert_eq!(run.id().as_str(), "staged-1");
    env.run_until_idle().await;

    let record = env.status(run.id()).await.unwrap();
    assert_eq!(record.status, RuntimeStatus::Running);
    let progress: Progress = env.custom_status(run.id()).await.unwrap().unwrap();
    assert_eq!(progress.stage, "waiting for review");
    assert!(env.output(&run).await.is_err(), "no output while running");

    env.raise(run.id(), "reviewed", "ann").await.unwrap();
    assert_eq!(env.wait(&run).await.unwrap(), [2, 0, 10]);

    let h = env.history(run.id()).await;
    assert_eq!(h.scheduled(work), [1, 13, 5], "{h}");
    assert_eq!(h.completed(work), [2, 10]);
    assert_eq!(h.failed(work)[0].message, "unlucky");
    assert_eq!(h.events_raised::<String>("reviewed"), ["ann"]);
    assert_eq!(h.timers(), [env.now()]);
    assert_eq!(h.timers_fired(), [t0 + HOUR]);
    let stages: Vec<String> = h
        .custom_statuses::<Progress>()
        .into_iter()
        .map(|p| p.unwrap().stage)
        .collect();
    assert_eq!(
        stages,
        [
            "working",
            "working",
            "working",
            "waiting for review",
            "reviewed by ann"
        ]
    );
    assert_eq!(h.kinds()[0], "OrchestratorStarted");
    assert_eq!(h.count("TaskScheduled"), 3);
    assert_eq!(h.to_string(), h.pretty());
}

#[tokio::test(flavor = "current_thread")]
async fn assertion_failures_show_the_readable_history() {
    let env = TestEnv::builder()
        .register(work)
        .register(staged)
        .start()
        .unwrap();
    let run = env.start(staged, vec![4]).await.unwrap();
    env.run_until_idle().await;
    let id = run.id().clone();
    let message = crate::panic_message(async move {
        env.assert_status(&id, RuntimeStatus::Completed).await;
    })
    .await
    .expect("the assertion fails");
    assert!(
        message.starts_with("expected instance `staged-1` to be Completed, found Running"),
        "{message}"
    );
    assert!(
        message.contains("custom status {\"stage\":\"waiting for review\",\"done\":1}"),
        "{message}"
    );
    assert!(message.contains("TaskScheduled"), "{message}");
    assert!(message.contains("#0 work(4)"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dump_describes_every_instance() {
    let env = TestEnv::builder()
        .register(work)
        .register(staged)
        .start()
        .unwrap();
    let a = env.start(staged, vec![1]).await.unwrap();
    let b = env.start(staged, vec![2, 3]).await.unwrap();
    env.run_until_idle().await;
    let dump = env.dump().await;
    assert!(
        dump.contains("instance `staged-1` (staged): Running"),
        "{dump}"
    );
    assert!(
        dump.contains("instance `staged-2` (staged): Running"),
        "{dump}"
    );
    assert!(dump.contains("3 activity calls"), "{dump}");
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_ids_are_deterministic_and_explicit_ones_are_kept() {
    let env = TestEnv::builder()
        .register(work)
        .register(staged)
        .start()
        .unwrap();
    let a = env.start(staged, vec![]).await.unwrap();
    let b = env.start(staged, vec![]).await.unwrap();
    let c = env
        .start_with(
            staged,
            vec![],
            StartOptions::new().instance_id(InstanceId::new("review-42").unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(
        [a.id().as_str(), b.id().as_str(), c.id().as_str()],
        ["staged-1", "staged-2", "review-42"]
    );
}
