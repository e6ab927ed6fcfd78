//! W1–W3 on duroxide (its `SQLite` provider, file-backed, in a temp dir), printed next to ours
//! with the ratio ours/theirs. Built only with `--features duroxide`.
//!
//! duroxide polls: its dispatchers sleep `dispatcher_min_poll_interval` when idle (set to
//! 1 ms here, its fastest useful setting), and its client's wait polls with back-off, so
//! completion is observed here by polling the status every millisecond instead. Concurrency
//! stays at its default (2 orchestration and 2 activity slots): with 8 and 8 its `SQLite`
//! provider spends its time in "database is locked" retries and is several times slower.
//!
//! Its `SQLite` provider runs in WAL mode with `synchronous = NORMAL` (no sync per commit), so an acknowledged
//! commit can be lost on power failure: a weaker guarantee than the redb store's fsync per
//! group commit, which favours duroxide in this comparison.

use std::sync::Arc;
use std::time::{Duration, Instant};

use duroxide::providers::sqlite::SqliteProvider;
use duroxide::runtime::registry::ActivityRegistry;
use duroxide::runtime::{self, OrchestrationStatus, RuntimeOptions};
use duroxide::{ActivityContext, Client, OrchestrationContext, OrchestrationRegistry};

use super::{Args, BoxError, Ours, Row, Table, ms, progress};

/// The longest a duroxide W3 run may take before it is reported as unfinished.
const W3_CAP: Duration = Duration::from_secs(120);

struct Env {
    rt: Arc<runtime::Runtime>,
    client: Client,
    _dir: tempfile::TempDir,
}

impl Env {
    async fn new() -> Result<Self, BoxError> {
        let dir = tempfile::Builder::new()
            .prefix("duroxide-bench")
            .tempdir()?;
        let path = dir.path().join("bench.db");
        std::fs::File::create(&path)?;
        let url = format!("sqlite:{}", path.display());
        let store = Arc::new(SqliteProvider::new(&url, None).await?);
        let activities = ActivityRegistry::builder()
            .register(
                "Step",
                |_ctx: ActivityContext, s: String| async move { Ok(s) },
            )
            .build();
        let orchestrations = OrchestrationRegistry::builder()
            .register(
                "HelloSequence5",
                |ctx: OrchestrationContext, name: String| async move {
                    let mut text = name;
                    for _ in 0..5 {
                        text = ctx.schedule_activity("Step", text).await?;
                    }
                    Ok(text)
                },
            )
            .register(
                "FanOut",
                |ctx: OrchestrationContext, n: String| async move {
                    let n: u64 = n.parse().map_err(|e| format!("{e}"))?;
                    let futures = (0..n)
                        .map(|i| ctx.schedule_activity("Step", i.to_string()))
                        .collect();
                    let mut sum = 0u64;
                    for r in ctx.join(futures).await {
                        sum += r?.parse::<u64>().map_err(|e| format!("{e}"))?;
                    }
                    Ok(sum.to_string())
                },
            )
            .build();
        let options = RuntimeOptions {
            dispatcher_min_poll_interval: Duration::from_millis(1),
            ..RuntimeOptions::default()
        };
        let rt = runtime::Runtime::start_with_options(
            store.clone(),
            activities,
            orchestrations,
            options,
        )
        .await;
        Ok(Self {
            rt,
            client: Client::new(store),
            _dir: dir,
        })
    }

    /// Polls the status every millisecond until the instance is finished.
    async fn wait(&self, id: &str, cap: Duration) -> Result<Option<String>, BoxError> {
        let deadline = Instant::now() + cap;
        loop {
            match self.client.get_orchestration_status(id).await? {
                OrchestrationStatus::Completed { output, .. } => return Ok(Some(output)),
                OrchestrationStatus::Failed { details, .. } => {
                    return Err(format!("duroxide instance {id} failed: {details:?}").into());
                }
                _ if Instant::now() >= deadline => return Ok(None),
                _ => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    }

    async fn close(self) {
        self.rt.shutdown(Some(1000)).await;
    }
}

async fn w1(samples: usize) -> Result<Vec<f64>, BoxError> {
    let env = Env::new().await?;
    let mut out = Vec::with_capacity(samples);
    for i in 0..samples + 3 {
        let id = format!("w1-{i}");
        let t = Instant::now();
        env.client
            .start_orchestration(&id, "HelloSequence5", "world")
            .await?;
        env.wait(&id, Duration::from_secs(60))
            .await?
            .ok_or("duroxide W1 did not finish in 60 s")?;
        if i >= 3 {
            out.push(ms(t.elapsed()));
        }
    }
    env.close().await;
    Ok(out)
}

async fn w2(n: usize) -> Result<Duration, BoxError> {
    let env = Arc::new(Env::new().await?);
    let t = Instant::now();
    let mut starts = tokio::task::JoinSet::new();
    for i in 0..n {
        let env = Arc::clone(&env);
        starts.spawn(async move {
            env.client
                .start_orchestration(format!("w2-{i}"), "HelloSequence5", "world")
                .await
        });
    }
    while let Some(r) = starts.join_next().await {
        r??;
    }
    for i in 0..n {
        env.wait(&format!("w2-{i}"), Duration::from_secs(600))
            .await?
            .ok_or("duroxide W2 did not finish in 600 s")?;
    }
    let took = t.elapsed();
    if let Ok(env) = Arc::try_unwrap(env) {
        env.close().await;
    }
    Ok(took)
}

async fn w3(n: u64) -> Result<Option<Duration>, BoxError> {
    let env = Env::new().await?;
    let t = Instant::now();
    env.client
        .start_orchestration("w3", "FanOut", n.to_string())
        .await?;
    let done = env.wait("w3", W3_CAP).await?;
    let took = t.elapsed();
    env.close().await;
    Ok(done.map(|_| took))
}

fn ratio_note(ours: Option<f64>, theirs: f64, lower_is_better: bool) -> String {
    match ours {
        Some(o) if o > 0.0 && theirs > 0.0 => {
            let ratio = o / theirs;
            let faster = if lower_is_better { 1.0 / ratio } else { ratio };
            format!("ours/theirs {ratio:.3} (durable {faster:.1}× faster)")
        }
        _ => "ours not measured in this run".to_owned(),
    }
}

pub(crate) async fn compare(args: &Args, ours: &Ours, table: &mut Table) -> Result<(), BoxError> {
    // duroxide installs a logger printing its warnings unless one is already installed.
    let _ = tracing::subscriber::set_global_default(tracing::subscriber::NoSubscriber::default());
    let sizes = super::Sizes::new(args.quick);
    let (w1_samples, w2_n) = (sizes.w1_samples, sizes.w2_instances);
    let w3_sizes: &[u64] = if args.quick { &[1000] } else { &[1000, 10_000] };

    progress(&format!(
        "duroxide W1: {w1_samples} sequential HelloSequence5"
    ));
    let samples = w1(w1_samples).await?;
    let row = Row::times("W1", "HelloSequence5 latency", "ms", &samples).system("duroxide");
    let note = ratio_note(ours.w1, row.median, true);
    table.push(row.note(note));

    progress(&format!("duroxide W2: {w2_n} HelloSequence5 at once"));
    let took = w2(w2_n).await?;
    let rate = w2_n as f64 / took.as_secs_f64();
    let row = Row::rates(
        "W2",
        &format!("{w2_n} HelloSequence5 at once"),
        "orch/s",
        &[rate],
    )
    .system("duroxide");
    let note = ratio_note(ours.w2, rate, false);
    table.push(row.note(note));

    for &n in w3_sizes {
        progress(&format!(
            "duroxide W3: fan-out of {n} (cap {} s)",
            W3_CAP.as_secs()
        ));
        if let Some(took) = w3(n).await? {
            let t = ms(took);
            let row =
                Row::times("W3", &format!("fan-out/in of {n}"), "ms", &[t]).system("duroxide");
            let mine = ours.w3.iter().find(|(k, _)| *k == n).map(|(_, v)| *v);
            let note = ratio_note(mine, t, true);
            table.push(row.note(note));
        } else {
            let row = Row::times("W3", &format!("fan-out/in of {n}"), "ms", &[f64::NAN])
                .system("duroxide")
                .note(format!("did not finish in {} s", W3_CAP.as_secs()));
            table.push(row);
        }
    }
    Ok(())
}
