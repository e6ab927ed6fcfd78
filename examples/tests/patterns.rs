//! Each pattern, run on the real engine with a manual clock.

use std::time::Duration;

use durable_core::prelude::*;
use durable_core::{Clock, Store};
use durable_testing::ManualClock;
use examples::approval::{APPROVAL_EVENT, ApprovalRequest, Decision, approval_flow};
use examples::chaining::hello_sequence;
use examples::fan_out::word_count;
use examples::monitor::{MonitorInput, job_monitor};
use examples::status::{AuditRequest, audit};

fn env() -> (Worker, Client, ManualClock, MemoryStore) {
    let clock = ManualClock::default();
    let store = MemoryStore::new();
    let builder = examples::register_all(
        Worker::builder()
            .store(store.clone())
            .clock(clock.as_clock()),
    );
    let worker = examples::shared_state(builder, "patterns-test")
        .start()
        .unwrap();
    let client = worker.client();
    (worker, client, clock, store)
}

/// Waits (woken by store changes) until the instance's history holds `n` events of `kind`.
async fn wait_for(store: &MemoryStore, id: &InstanceId, kind: &str, n: usize) {
    let mut changes = store.signals().changed.subscribe();
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let h = store.read_history(id).await.unwrap();
            if h.iter().filter(|e| e.event.kind() == kind).count() >= n {
                return;
            }
            changes.changed().await.unwrap();
        }
    })
    .await
    .expect("engine made progress");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaining_greets_in_order() {
    let (_w, client, _c, _s) = env();
    let run = hello_sequence::start(&client, vec!["A".into(), "B".into()])
        .await
        .unwrap();
    assert_eq!(run.wait().await.unwrap(), ["Hello A!", "Hello B!"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_sums_every_document() {
    let (_w, client, _c, _s) = env();
    let docs: Vec<String> = (1..=50).map(|i| "w ".repeat(i)).collect();
    let run = word_count::start(&client, docs).await.unwrap();
    assert_eq!(run.wait().await.unwrap(), (1..=50).sum::<usize>());
    let h = run.history().await.unwrap();
    assert_eq!(
        h.iter()
            .filter(|e| e.event.kind() == "TaskScheduled")
            .count(),
        50
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_backs_off_and_gives_up_at_the_deadline() {
    let (_w, client, clock, store) = env();
    let input = MonitorInput {
        done_on: 100,
        interval_ms: 60_000,
        deadline_ms: 600_000,
    };
    let run = job_monitor::start(&client, input).await.unwrap();
    // Intervals 1, 2, 4, 4, 4 minutes... until the 10-minute deadline.
    for (i, minutes) in [1u64, 2, 4].into_iter().enumerate() {
        wait_for(&store, run.id(), "TimerCreated", i + 1).await;
        clock.advance(Duration::from_secs(minutes * 60));
    }
    assert_eq!(run.wait().await.unwrap(), "gave up after 4 checks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_is_answered_or_escalates_after_72_hours() {
    let (_w, client, clock, store) = env();
    let req = || ApprovalRequest {
        item: "po-1".into(),
        timeout_hours: 72,
    };
    let run = approval_flow::start(&client, req()).await.unwrap();
    wait_for(&store, run.id(), "TimerCreated", 1).await;
    let decision = Decision {
        approved: false,
        by: "bob".into(),
    };
    run.raise(APPROVAL_EVENT, &decision).await.unwrap();
    assert_eq!(run.wait().await.unwrap(), "po-1 rejected by bob");

    let t0 = clock.now();
    let run = approval_flow::start(&client, req()).await.unwrap();
    wait_for(&store, run.id(), "TimerCreated", 1).await;
    clock.advance(Duration::from_secs(72 * 3600));
    assert_eq!(run.wait().await.unwrap(), "po-1 escalated after 72h");
    let h = run.history().await.unwrap();
    let notified = h
        .iter()
        .filter(|e| e.event.kind() == "TaskCompleted")
        .count();
    assert_eq!(notified, 2, "request and escalation were both sent");
    assert!(clock.now() >= t0 + Duration::from_secs(72 * 3600));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregator_collects_signals_and_answers_calls() {
    use examples::aggregator::{Stats, report_readings};
    let (_w, client, _c, _s) = env();
    let stats = client.entity::<Stats>("sensor-1");
    for v in [1, 5] {
        stats.record(v).await.unwrap();
    }
    let avg = report_readings::start(&client, vec![6])
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(avg, Some(4.0));
    let s = stats.state().await.unwrap().unwrap();
    assert_eq!((s.count, s.sum, s.max), (3, 12, Some(6)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_conserve_money() {
    use examples::bank::{Account, Transfer, transfer};
    let (_w, client, _c, _s) = env();
    let pairs = [
        ("a", "b"),
        ("b", "a"),
        ("a", "c"),
        ("c", "b"),
        ("b", "c"),
        ("c", "a"),
    ];
    let mut runs = Vec::new();
    for (i, (from, to)) in pairs.iter().cycle().take(18).enumerate() {
        let t = Transfer {
            from: (*from).into(),
            to: (*to).into(),
            amount: 10 + i64::try_from(i).unwrap(),
        };
        runs.push(transfer::start(&client, t).await.unwrap());
    }
    let mut done = 0;
    for r in &runs {
        if r.wait().await.unwrap() {
            done += 1;
        }
    }
    assert!(done > 0);
    let mut total = 0;
    for k in ["a", "b", "c"] {
        total += client
            .read_entity::<Account>(k)
            .await
            .unwrap()
            .unwrap()
            .balance;
    }
    assert_eq!(total, 300);
}

/// Issue 13: an activity with shared state (the worker's HTTP client and `User-Agent`) calls
/// the management API served on the same store, over real HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_reads_statuses_over_http_with_the_workers_client() {
    use durable_core::http::{self, HttpOptions};

    let (worker, client, _c, _s) = env();
    let server = http::serve(
        client.clone(),
        ([127, 0, 0, 1], 0).into(),
        HttpOptions::new(),
    )
    .await
    .unwrap();
    let done = hello_sequence::start(&client, vec!["A".into()])
        .await
        .unwrap();
    done.wait().await.unwrap();
    let req = AuditRequest {
        api: format!("{}{}", server.url(), http::PREFIX),
        instance_ids: vec![done.id().to_string(), "no-such-instance".into()],
    };
    let run = audit::start(&client, req).await.unwrap();
    assert_eq!(
        run.wait().await.unwrap(),
        [
            (done.id().to_string(), Some("Completed".to_owned())),
            ("no-such-instance".to_owned(), None),
        ]
    );
    let h = run.history().await.unwrap();
    assert_eq!(
        h.iter()
            .filter(|e| e.event.kind() == "TaskCompleted")
            .count(),
        2
    );
    server.shutdown().await.unwrap();
    worker.shutdown().await;
}

/// Without the HTTP client, the worker does not start: the error names the activity and
/// the type.
#[tokio::test]
async fn the_worker_refuses_to_start_without_the_activities_state() {
    let err = examples::register_all(Worker::builder().store(MemoryStore::new()))
        .start()
        .unwrap_err();
    match err {
        durable_core::BuildError::MissingState {
            activity,
            type_name,
        } => {
            assert_eq!(activity, "fetch_status");
            assert!(type_name.contains("hyper_util"), "{type_name}");
        }
        other => panic!("{other:?}"),
    }
}
