//! Replay-safe logging: log lines emitted by orchestration code while it replays are dropped.

use std::sync::Mutex;

use durable_core::logging::ReplaySafe;
use durable_core::prelude::*;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Records the `message` of events whose target is this test.
struct Capture;

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _cx: Context<'_, S>) {
        struct Msg(String);
        impl tracing::field::Visit for Msg {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        if event.metadata().target() == "logtest" {
            let mut m = Msg(String::new());
            event.record(&mut m);
            LINES.lock().unwrap().push(m.0);
        }
    }
}

#[derive(Clone, Copy)]
struct Step;
impl Activity for Step {
    const NAME: &'static str = "step";
    type Input = u32;
    type Output = u32;
    type Error = ActivityError;
    async fn run(&self, _ctx: ActivityContext, i: u32) -> Result<u32, ActivityError> {
        Ok(i + 1)
    }
}

#[derive(Clone, Copy)]
struct Logged;
impl Orchestrator for Logged {
    const NAME: &'static str = "logged";
    type Input = ();
    type Output = u32;
    type Error = OrchestrationError;
    async fn run(ctx: OrchestrationContext, (): ()) -> Result<u32, OrchestrationError> {
        tracing::info!(target: "logtest", "starting");
        let a = ctx.call(Step, 0).await?;
        tracing::info!(target: "logtest", "after first step");
        let b = ctx.call(Step, a).await?;
        tracing::info!(target: "logtest", "done");
        Ok(b)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_logged_during_replay_are_dropped() {
    let subscriber = tracing_subscriber::registry().with(Capture.with_filter(ReplaySafe));
    tracing::subscriber::set_global_default(subscriber).unwrap();
    // No cache: every episode replays the earlier ones, re-running the log statements.
    let worker = Worker::builder()
        .store(MemoryStore::new())
        .cache_capacity(0)
        .activity(Step)
        .orchestrator(Logged)
        .start()
        .unwrap();
    let run = worker.client().start(Logged, ()).await.unwrap();
    assert_eq!(run.wait().await.unwrap(), 2);
    worker.shutdown().await;
    let lines = LINES.lock().unwrap().clone();
    assert_eq!(lines, ["starting", "after first step", "done"]);
}
