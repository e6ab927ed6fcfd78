//! The demo: runs the durable patterns end to end on an embedded redb file
//! (`durable-demo.redb` in the working directory) and prints what happens.
//!
//! ```text
//! cargo run -p examples --bin demo
//! ```
//!
//! Instances have fixed ids and are started with [`IdReusePolicy::DedupeRunning`]: kill the
//! demo midway and run it again, and it picks the unfinished instances up where they were.

use std::time::Duration;

use durable_core::RedbStore;
use durable_core::prelude::*;
use examples::aggregator::{Stats, report_readings};
use examples::approval::{APPROVAL_EVENT, ApprovalRequest, Decision, approval_flow};
use examples::bank::{Account, Transfer, transfer};
use examples::chaining::hello_sequence;
use examples::fan_out::word_count;
use examples::monitor::{MonitorInput, job_monitor};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = "durable-demo.redb";
    let store = RedbStore::open(path)?;
    println!("store: {path} (redb, fsync on every commit)");
    let worker = examples::register_all(Worker::builder().store(store)).start()?;
    let client = worker.client();
    let opts = |id: &str| {
        StartOptions::new()
            .instance_id(InstanceId::new(id).expect("valid id"))
            .reuse(IdReusePolicy::DedupeRunning)
    };

    println!("== 1. chaining");
    let run = hello_sequence::start_with(
        &client,
        vec!["Tokyo".into(), "Seattle".into(), "London".into()],
        opts("demo-chaining"),
    )
    .await?;
    println!("   started {}", run.id());
    println!("   -> {:?}", run.wait().await?);

    println!("== 2. fan-out/fan-in");
    let docs: Vec<String> = (1..=100).map(|i| "lorem ipsum ".repeat(i)).collect();
    let run = word_count::start_with(&client, docs, opts("demo-fan-out")).await?;
    println!("   started {} over 100 documents in parallel", run.id());
    println!("   -> {} words", run.wait().await?);

    println!("== 4. monitor");
    let input = MonitorInput {
        done_on: 3,
        interval_ms: 200,
        deadline_ms: 10_000,
    };
    let run = job_monitor::start_with(&client, input, opts("demo-monitor")).await?;
    println!("   started {} (polls on a durable timer)", run.id());
    println!("   -> {}", run.wait().await?);

    println!("== 5. human interaction");
    let req = ApprovalRequest {
        item: "purchase order 42".into(),
        timeout_hours: 72,
    };
    let run = approval_flow::start_with(&client, req, opts("demo-approval")).await?;
    println!(
        "   started {}; waiting up to 72h for `{APPROVAL_EVENT}`",
        run.id()
    );
    tokio::time::timeout(Duration::from_secs(5), async {
        while run.status().await.map(|s| s.status) != Ok(RuntimeStatus::Running) {
            tokio::task::yield_now().await;
        }
    })
    .await?;
    run.raise(
        APPROVAL_EVENT,
        &Decision {
            approved: true,
            by: "ada".into(),
        },
    )
    .await?;
    println!("   raised `{APPROVAL_EVENT}`");
    println!("   -> {}", run.wait().await?);

    println!("== 6. aggregator (entity)");
    let stats = client.entity::<Stats>("sensor-1");
    stats.reset().await?;
    for v in [3, 9, 4] {
        stats.record(v).await?;
    }
    println!("   signalled 3 readings to {}", stats.id());
    let run = report_readings::start_with(&client, vec![10, 2], opts("demo-aggregator")).await?;
    println!(
        "   orchestration {} signalled 2 more and called `average`",
        run.id()
    );
    println!("   -> average {:?}", run.wait().await?);
    println!("   state: {:?}", stats.state().await?);

    println!("== critical section: transfers between accounts");
    let mut runs = Vec::new();
    for (i, (from, to)) in [
        ("alice", "bob"),
        ("bob", "alice"),
        ("alice", "carol"),
        ("carol", "bob"),
    ]
    .into_iter()
    .enumerate()
    {
        let t = Transfer {
            from: from.into(),
            to: to.into(),
            amount: 30,
        };
        runs.push(transfer::start_with(&client, t, opts(&format!("demo-transfer-{i}"))).await?);
    }
    for r in &runs {
        r.wait().await?;
    }
    let mut total = 0;
    for who in ["alice", "bob", "carol"] {
        let b = client
            .read_entity::<Account>(who)
            .await?
            .map_or(0, |a| a.balance);
        println!("   {who}: {b}");
        total += b;
    }
    println!("   total {total} (money is conserved)");

    worker.shutdown().await;
    println!("all patterns completed");
    Ok(())
}
