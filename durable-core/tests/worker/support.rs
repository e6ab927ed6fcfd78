//! Shared helpers: a worker on the in-memory store with a manual clock, and waits that are
//! woken by store changes (bounded by a generous guard, never by sleeping).

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use durable_core::history::{self, Event, HistoryEvent};
use durable_core::prelude::*;
use durable_core::{InstanceRecord, Store, WorkerBuilder};
use durable_testing::ManualClock;

pub struct Env {
    pub worker: Worker,
    pub client: Client,
    pub clock: ManualClock,
    pub store: MemoryStore,
}

pub fn start(configure: impl FnOnce(WorkerBuilder) -> WorkerBuilder) -> Env {
    let store = MemoryStore::new();
    let clock = ManualClock::default();
    start_on(store, clock, configure)
}

pub fn start_on(
    store: MemoryStore,
    clock: ManualClock,
    configure: impl FnOnce(WorkerBuilder) -> WorkerBuilder,
) -> Env {
    let worker = configure(
        Worker::builder()
            .store(store.clone())
            .clock(clock.as_clock()),
    )
    .start()
    .expect("worker starts");
    let client = worker.client();
    Env {
        worker,
        client,
        clock,
        store,
    }
}

/// Longest a test waits for the engine before failing (a guard against hangs, not timing).
const GUARD: Duration = Duration::from_secs(20);

/// Waits until `pred` holds for the instance's record and history.
pub async fn wait_until(
    store: &MemoryStore,
    id: &InstanceId,
    what: &str,
    pred: impl Fn(&InstanceRecord, &[HistoryEvent]) -> bool,
) -> (InstanceRecord, Vec<HistoryEvent>) {
    let mut changes = store.signals().changed.subscribe();
    let check = async {
        loop {
            if let Some(r) = store.read_instance(id).await.unwrap() {
                let h = store.read_history(id).await.unwrap();
                if pred(&r, &h) {
                    return (r, h);
                }
            }
            changes.changed().await.unwrap();
        }
    };
    if let Ok(v) = tokio::time::timeout(GUARD, check).await {
        return v;
    }
    let r = store.read_instance(id).await.unwrap();
    let h = store.read_history(id).await.unwrap();
    panic!(
        "gave up waiting for {what}\nrecord: {r:#?}\nhistory:\n{}",
        history::pretty(&h)
    );
}

/// Waits until the instance's history has at least `n` events of kind `kind`.
pub async fn wait_for_events(
    store: &MemoryStore,
    id: &InstanceId,
    kind: &str,
    n: usize,
) -> Vec<HistoryEvent> {
    wait_until(store, id, &format!("{n} x {kind}"), |_, h| {
        count(h, kind) >= n
    })
    .await
    .1
}

pub fn count(history: &[HistoryEvent], kind: &str) -> usize {
    history.iter().filter(|e| e.event.kind() == kind).count()
}

pub async fn wait_done(store: &MemoryStore, id: &InstanceId) -> InstanceRecord {
    wait_until(store, id, "a terminal status", |r, _| {
        r.status.is_terminal()
    })
    .await
    .0
}

pub async fn wait_status(
    store: &MemoryStore,
    id: &InstanceId,
    status: RuntimeStatus,
) -> InstanceRecord {
    wait_until(store, id, status.as_str(), |r, _| r.status == status)
        .await
        .0
}

pub async fn wait_error(store: &MemoryStore, id: &InstanceId) -> String {
    wait_until(store, id, "a stuck error", |r, _| r.last_error.is_some())
        .await
        .0
        .last_error
        .unwrap()
}

pub fn timers(history: &[HistoryEvent]) -> Vec<Timestamp> {
    history
        .iter()
        .filter_map(|e| match &e.event {
            Event::TimerCreated { fire_at, .. } => Some(*fire_at),
            _ => None,
        })
        .collect()
}

pub fn store_arc(store: &MemoryStore) -> Arc<dyn Store> {
    Arc::new(store.clone())
}

/// The instance id of the first sub-orchestration a history started.
pub fn first_child(history: &[HistoryEvent]) -> InstanceId {
    history
        .iter()
        .find_map(|e| match &e.event {
            Event::SubOrchestrationCreated { instance_id, .. } => Some(instance_id.clone()),
            _ => None,
        })
        .expect("a SubOrchestrationCreated in history")
}
