//! The patterns tested with the time-travel harness (`durable-testing`): the real engine on a
//! virtual clock, with mocks, crash injection and seeded simulation.

use std::collections::HashMap;
use std::time::Duration;

use durable_core::prelude::*;
use durable_testing::{CrashTest, Simulation, TestEnv, TestEnvBuilder};
use examples::approval::{APPROVAL_EVENT, ApprovalRequest, Decision, approval_flow, notify};
use examples::chaining::{greet, hello_sequence};
use examples::fan_out::{count_words, word_count};
use examples::monitor::{Check, MonitorInput, check_job, job_monitor};
use examples::status::{AuditRequest, StatusQuery, audit, fetch_status};

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

fn patterns() -> TestEnvBuilder {
    TestEnv::builder()
        .register(greet)
        .register(hello_sequence)
        .register(count_words)
        .register(word_count)
        .register(check_job)
        .register(job_monitor)
        .register(notify)
        .register(approval_flow)
}

fn cities() -> Vec<String> {
    ["Tokyo", "Seattle", "London"].map(String::from).to_vec()
}

// ---------------------------------------------------------------- 1. chaining

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaining_calls_each_step_in_order_with_the_previous_output() {
    let env = patterns().start().unwrap();
    let run = env.start(hello_sequence, cities()).await.unwrap();
    assert_eq!(
        env.wait(&run).await.unwrap(),
        ["Hello Tokyo!", "Hello Seattle!", "Hello London!"]
    );
    assert_eq!(env.calls(greet), cities());
    let h = env.history(run.id()).await;
    assert_eq!(h.scheduled(greet), cities(), "{h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaining_with_a_mocked_step() {
    let env = patterns()
        .mock(greet, |city: String| Ok(format!("Bonjour {city}")))
        .start()
        .unwrap();
    let run = env.start(hello_sequence, cities()).await.unwrap();
    assert_eq!(
        env.wait(&run).await.unwrap(),
        ["Bonjour Tokyo", "Bonjour Seattle", "Bonjour London"]
    );
    assert!(env.all_calls().iter().all(|c| c.mocked));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaining_survives_a_crash_after_any_commit() {
    let report = CrashTest::new(patterns)
        .run(|env| async move {
            let run = env.start(hello_sequence, cities()).await.unwrap();
            env.wait(&run).await.unwrap()
        })
        .await;
    assert_eq!(report.runs.len() as u64, report.commits);
    assert!(report.runs.iter().all(|r| r.crashes == 1), "{report}");
}

// ---------------------------------------------------------------- 2. fan-out/fan-in

fn docs(n: usize) -> Vec<String> {
    (1..=n).map(|i| "word ".repeat(i)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fan_out_runs_every_document_and_sums() {
    let env = patterns().start().unwrap();
    let run = env.start(word_count, docs(50)).await.unwrap();
    env.run_until_idle().await;
    assert_eq!(env.output(&run).await.unwrap(), (1..=50).sum::<usize>());
    assert_eq!(env.call_count(count_words), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fan_out_crash_midway_reruns_none_of_the_completed_activities() {
    let report = CrashTest::new(patterns)
        .run(|env| async move {
            let run = env.start(word_count, docs(10)).await.unwrap();
            let total = env.wait(&run).await.unwrap();
            let h = env.history(run.id()).await;
            let completed: Vec<usize> = h.completed(count_words);
            assert_eq!(completed.len(), 10, "{h}");
            // At-least-once: an activity runs again only if its result was not committed.
            let mut runs: HashMap<String, usize> = HashMap::new();
            for doc in env.calls(count_words) {
                *runs.entry(doc).or_default() += 1;
            }
            assert!(runs.values().all(|n| *n <= 2), "{runs:?}");
            total
        })
        .await;
    assert_eq!(report.runs.len() as u64, report.commits);
    println!("{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fan_out_under_permuted_completions_duplicates_and_failures() {
    let report = Simulation::new(patterns)
        .duplicate_rate(0.5)
        .seeds(0..16)
        .run(|env| async move {
            let run = env.start(word_count, docs(12)).await.unwrap();
            assert_eq!(env.wait(&run).await.unwrap(), (1..=12).sum::<usize>());
            let h = env.history(run.id()).await;
            assert_eq!(h.count("TaskCompleted"), 12, "duplicates are ignored: {h}");
        })
        .await;
    assert!(report.totals().duplicates_sent > 0, "{report}");

    // With injected failures the orchestration fails cleanly (it has no retry policy).
    Simulation::new(patterns)
        .failure_rate(0.2)
        .seeds(0..8)
        .run(|env| async move {
            let run = env.start(word_count, docs(6)).await.unwrap();
            match env.wait(&run).await {
                Ok(total) => assert_eq!(total, 21),
                Err(ClientError::Failed(f)) => {
                    assert!(
                        f.message
                            .contains("simulated failure of activity `count_words`"),
                        "{f}"
                    );
                }
                Err(e) => panic!("unexpected {e}"),
            }
        })
        .await;
}

// ---------------------------------------------------------------- 4. monitor

fn monitor(done_on: u32) -> MonitorInput {
    MonitorInput {
        done_on,
        interval_ms: 60_000,
        deadline_ms: 600_000,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_backs_off_then_gives_up_at_the_deadline() {
    let env = patterns().start().unwrap();
    let t0 = env.now();
    let run = env.start(job_monitor, monitor(100)).await.unwrap();
    env.run_until_idle().await;
    assert_eq!(
        env.custom_status::<String>(run.id())
            .await
            .unwrap()
            .as_deref(),
        Some("check 1")
    );
    env.advance(MINUTE).await;
    assert_eq!(
        env.custom_status::<String>(run.id())
            .await
            .unwrap()
            .as_deref(),
        Some("check 2")
    );
    assert_eq!(env.wait(&run).await.unwrap(), "gave up after 4 checks");
    let h = env.history(run.id()).await;
    // Intervals 1, 2, 4 minutes; the next check would pass the 10-minute deadline.
    assert_eq!(
        h.timers(),
        [t0 + MINUTE, t0 + MINUTE * 3, t0 + MINUTE * 7],
        "{h}"
    );
    assert_eq!(env.call_count(check_job), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_stops_when_the_job_is_done_and_can_be_terminated() {
    let env = patterns().start().unwrap();
    let run = env.start(job_monitor, monitor(3)).await.unwrap();
    assert_eq!(env.wait(&run).await.unwrap(), "done after 3 checks");

    // A mock job that never finishes, stopped from outside.
    env.mock(check_job, |_c: Check| Ok(false));
    let run = env
        .start(
            job_monitor,
            MonitorInput {
                done_on: 1,
                interval_ms: 60_000,
                deadline_ms: 3_600_000,
            },
        )
        .await
        .unwrap();
    env.advance(MINUTE * 10).await;
    run.terminate("operator stopped it").await.unwrap();
    env.run_until_idle().await;
    let err = env.output(&run).await.unwrap_err();
    assert!(
        matches!(err, ClientError::Terminated { ref reason } if reason == "operator stopped it"),
        "{err}"
    );
}

// ---------------------------------------------------------------- 5. human interaction

fn request() -> ApprovalRequest {
    ApprovalRequest {
        item: "po-1".into(),
        timeout_hours: 72,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_escalates_after_72_virtual_hours_in_milliseconds() {
    let env = patterns().start().unwrap();
    let t0 = env.now();
    let run = env.start(approval_flow, request()).await.unwrap();
    env.advance(HOUR * 71).await;
    env.assert_status(run.id(), RuntimeStatus::Running).await;
    assert_eq!(env.calls(notify), ["please approve po-1"]);
    env.advance(HOUR).await;
    assert_eq!(env.output(&run).await.unwrap(), "po-1 escalated after 72h");
    assert_eq!(
        env.calls(notify),
        ["please approve po-1", "escalating po-1"]
    );
    let h = env.history(run.id()).await;
    assert_eq!(h.timers_fired(), [t0 + HOUR * 72], "{h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_answered_in_time_does_not_escalate() {
    let env = patterns().start().unwrap();
    let run = env.start(approval_flow, request()).await.unwrap();
    env.advance(HOUR * 5).await;
    let decision = Decision {
        approved: true,
        by: "ana".into(),
    };
    env.raise(run.id(), APPROVAL_EVENT, &decision)
        .await
        .unwrap();
    assert_eq!(env.wait(&run).await.unwrap(), "po-1 approved by ana");
    assert_eq!(env.call_count(notify), 1);

    // Raised before the orchestration even waits: buffered, not lost.
    let run = env.start(approval_flow, request()).await.unwrap();
    let decision = Decision {
        approved: false,
        by: "bo".into(),
    };
    env.raise(run.id(), APPROVAL_EVENT, &decision)
        .await
        .unwrap();
    assert_eq!(env.wait(&run).await.unwrap(), "po-1 rejected by bo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_outcomes_survive_crashes() {
    for answer in [Some(true), None] {
        CrashTest::new(patterns)
            .run(move |env| async move {
                let run = env.start(approval_flow, request()).await.unwrap();
                env.run_until_idle().await;
                if let Some(approved) = answer {
                    let d = Decision {
                        approved,
                        by: "cy".into(),
                    };
                    env.raise(run.id(), APPROVAL_EVENT, &d).await.unwrap();
                }
                env.wait(&run).await.unwrap()
            })
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_histories_replay_against_the_current_code() {
    let env = patterns().start().unwrap();
    let run = env.start(approval_flow, request()).await.unwrap();
    env.run_until_idle().await;
    let json = env.export_history(run.id()).await.unwrap();
    env.replay_check(run.id(), &json).unwrap();
}

// ---------------------------------------------------------------- 6. aggregator (entities)

fn entity_patterns() -> TestEnvBuilder {
    use examples::aggregator::{Stats, report_readings};
    use examples::bank::{Account, transfer};
    patterns()
        .register(Stats::entity())
        .register(report_readings)
        .register(Account::entity())
        .register(transfer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregator_counts_each_signal_exactly_once_across_crashes() {
    use examples::aggregator::{Stats, report_readings};
    let report = CrashTest::new(entity_patterns)
        .run(|env| async move {
            let stats = env.client().entity::<Stats>("sensor-1");
            for v in [3, 9] {
                stats.record(v).await.unwrap();
            }
            let run = env.start(report_readings, vec![10, 2]).await.unwrap();
            let average = env.wait(&run).await.unwrap();
            env.run_until_idle().await;
            let s = stats.state().await.unwrap().unwrap();
            (average, s.count, s.sum, s.max)
        })
        .await;
    // The client's signals and the orchestration's reach the entity concurrently, so how
    // they batch into commits varies: the last crash point may lie past a run's last commit.
    assert!(crashed_wherever_reached(&report), "{report}");
    assert!(
        report.runs.iter().filter(|r| r.crashes == 1).count() * 5 >= report.runs.len() * 4,
        "{report}"
    );
}

/// Every run crashed, unless its crash point lay past the commits it made.
fn crashed_wherever_reached(report: &durable_testing::CrashReport) -> bool {
    report
        .runs
        .iter()
        .all(|r| r.crashes == 1 || r.crash_after.is_some_and(|n| n > r.commits))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_conserve_money_across_crashes() {
    use examples::bank::{Account, Transfer, transfer};
    let report = CrashTest::new(entity_patterns)
        .run(|env| async move {
            let mut runs = Vec::new();
            for (from, to, amount) in [("a", "b", 30), ("b", "a", 50), ("a", "c", 70)] {
                let t = Transfer {
                    from: from.into(),
                    to: to.into(),
                    amount,
                };
                runs.push(env.start(transfer, t).await.unwrap());
            }
            let mut done = Vec::new();
            for r in &runs {
                done.push(env.wait(r).await.unwrap());
            }
            let mut total = 0;
            for k in ["a", "b", "c"] {
                total += env
                    .client()
                    .read_entity::<Account>(k)
                    .await
                    .unwrap()
                    .map_or(100, |a| a.balance);
            }
            (done, total)
        })
        .await;
    // Three transfers run concurrently, so how work batches into commits varies between runs:
    // a crash point near the end of the crash-free run may lie past a crashed run's last commit.
    assert!(crashed_wherever_reached(&report), "{report}");
    assert!(
        report.runs.iter().filter(|r| r.crashes == 1).count() * 10 >= report.runs.len() * 9,
        "{report}"
    );
}

// ---------------------------------------------------------------- shared state (issue 13)

/// The stateful HTTP activity, mocked by its typed input: no HTTP client, no server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_with_the_stateful_activity_mocked() {
    let env = TestEnv::builder()
        .register(audit)
        .mock(fetch_status, |q: StatusQuery| {
            Ok((q.instance_id != "gone").then(|| format!("Completed via {}", q.api)))
        })
        .start()
        .unwrap();
    let req = AuditRequest {
        api: "http://api".into(),
        instance_ids: vec!["a".into(), "gone".into()],
    };
    let run = env.start(audit, req).await.unwrap();
    assert_eq!(
        env.wait(&run).await.unwrap(),
        [
            ("a".to_owned(), Some("Completed via http://api".to_owned())),
            ("gone".to_owned(), None),
        ]
    );
    assert_eq!(env.calls(fetch_status).len(), 2);
}
