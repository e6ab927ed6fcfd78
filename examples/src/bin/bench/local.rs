//! W1-local and W2-local: `HelloSequence5` with local steps (`ctx.call_local`), the five
//! steps riding on one episode commit.
//!
//! | workload | what is measured |
//! | --- | --- |
//! | W1-local | one `HelloSequence5Local`, 50 times in sequence: start → observed completion |
//! | W2-local | 1,000 `HelloSequence5Local` started at once: orchestrations/s until all complete |

use std::time::{Duration, Instant};

use durable_core::Registry;
use examples::workloads::hello_sequence5_local;

use super::{Args, BoxError, Env, Row, Sizes, Table, Target, ms, progress, wanted};

/// Registers the workloads' code.
pub(crate) fn register(r: &mut Registry) {
    r.register(hello_sequence5_local);
}

/// Runs W1-local and W2-local when wanted (`--only W1-local,W2-local`, any case), adding their rows.
pub(crate) async fn run(args: &Args, sizes: Sizes, table: &mut Table) -> Result<(), BoxError> {
    if wanted(args, "W1-LOCAL") {
        progress(&format!(
            "W1-local: {} sequential HelloSequence5Local",
            sizes.w1_samples
        ));
        let samples = w1(sizes.w1_samples).await?;
        table.push(
            Row::times("W1-local", "HelloSequence5Local latency", "ms", &samples)
                .target(Target::AtMost(0.6))
                .note("2 commits: start, one episode"),
        );
    }
    if wanted(args, "W2-LOCAL") {
        let n = sizes.w2_instances;
        let mut orch = Vec::new();
        for i in 0..sizes.w2_runs {
            let took = w2_run(n).await?;
            progress(&format!(
                "W2-local run {}/{}: {n} orchestrations in {:.3} s",
                i + 1,
                sizes.w2_runs,
                took.as_secs_f64()
            ));
            orch.push(n as f64 / took.as_secs_f64());
        }
        table.push(
            Row::rates(
                "W2-local",
                &format!("{n} HelloSequence5Local at once"),
                "orch/s",
                &orch,
            )
            .target(Target::AtLeast(15_000.0))
            .note("2 commits per orchestration"),
        );
    }
    Ok(())
}

async fn w1(samples: usize) -> Result<Vec<f64>, BoxError> {
    let env = Env::new()?;
    for _ in 0..5 {
        hello_sequence5_local::start(&env.client, "warm-up".into())
            .await?
            .wait()
            .await?;
    }
    let mut out = Vec::with_capacity(samples);
    for i in 0..samples {
        let t = Instant::now();
        let text = hello_sequence5_local::start(&env.client, format!("world-{i}"))
            .await?
            .wait()
            .await?;
        out.push(ms(t.elapsed()));
        debug_assert_eq!(text, format!("world-{i}"));
    }
    env.close().await;
    Ok(out)
}

/// Starts `n` at once and waits for all; returns the wall time.
async fn w2_run(n: usize) -> Result<Duration, BoxError> {
    let env = Env::new()?;
    let t = Instant::now();
    let mut starts = tokio::task::JoinSet::new();
    for i in 0..n {
        let client = env.client.clone();
        starts.spawn(async move { hello_sequence5_local::start(&client, format!("w2-{i}")).await });
    }
    let mut handles = Vec::with_capacity(n);
    while let Some(h) = starts.join_next().await {
        handles.push(h??);
    }
    for h in &handles {
        h.wait().await?;
    }
    let took = t.elapsed();
    env.close().await;
    Ok(took)
}
