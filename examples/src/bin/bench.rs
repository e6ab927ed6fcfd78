//! The benchmark: W1–W4, cold replay (R) and memory (M) on the redb store with durable
//! (fsync) commits, in a temporary directory; optionally side by side with duroxide.
//!
//! ```text
//! cargo run --release -p examples --bin bench -- [--quick] [--only W1,W2,...] [--out FILE]
//! cargo run --release -p examples --features duroxide --bin bench -- [--quick]   # + duroxide
//! ```
//!
//! Prints one line per workload (median and p99 over the repeated runs or samples, the
//! target and whether it is met) and writes the same table to `bench-results.md` (or `--out`).
//! `--quick` is the CI smoke mode (seconds, smaller counts); the default is the full mode.
//! Progress goes to stderr.
//!
//! | workload | what is measured |
//! | --- | --- |
//! | W1 | one `HelloSequence5` (5 chained no-op activities, string in/out), 50 times in sequence: start → observed completion |
//! | W2 | 1,000 `HelloSequence5` started at once: orchestrations/s and activities/s until all complete |
//! | W1-local, W2-local | W1 and W2 with local steps (`ctx.call_local`; see `bench/local.rs`) |
//! | W3 | one orchestration fanning out 10,000 (and 1,000) no-op activities and summing them: wall time |
//! | W4 | 100 orchestrations each on a 1 s durable timer, started 10 ms apart: completion overshoot (also all at once) |
//! | R | cold replay of a 10,000-event history (replay alone, and read from the store + replay): events/s |
//! | M | peak RSS (`VmHWM`) of a fresh process holding 100,000 instances waiting on an external event |
//! | M1M | the same with 1,000,000 instances, and their start rate (full mode or `--only M1M`; minutes) |
//! | floor | a bare redb commit of one small record; W1–W4 also print their durable commits per orchestration and latency ÷ (commits × floor) |
//!
//! Figures, never asserts: a missed target is reported, not failed. Runs with no `tracing`
//! subscriber unless `RUST_LOG` is set (then as the demo: stderr, `ReplaySafe`).
#![allow(
    clippy::disallowed_methods,
    reason = "a benchmark measures wall time and waits on the wall clock"
)]

#[cfg(feature = "duroxide")]
#[path = "bench/duroxide.rs"]
mod duroxide;
#[path = "bench/floor.rs"]
mod floor;
#[path = "bench/local.rs"]
mod local;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use durable_core::prelude::*;
use durable_core::storage::RedbDurability;
use durable_core::{InstanceQuery, RedbStore, Registry};
use examples::workloads::{hello_sequence5, hello_step};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `--relaxed`: commits without fsync.
static RELAXED: AtomicBool = AtomicBool::new(false);

// ---------------------------------------------------------------------------------------
// The workloads' code.
// ---------------------------------------------------------------------------------------

/// A no-op activity on numbers.
#[activity]
async fn noop(i: u64) -> Result<u64, ActivityError> {
    Ok(i)
}

/// Fans out `n` no-op activities at once and sums their results.
#[orchestrator]
async fn fan_out_sum(ctx: OrchestrationContext, n: u64) -> Result<u64, OrchestrationError> {
    let results = ctx.when_all((0..n).map(|i| ctx.call(noop, i))).await;
    let mut sum = 0;
    for r in results {
        sum += r?;
    }
    Ok(sum)
}

/// `n` no-op activities one after the other (builds the history that R replays).
#[orchestrator]
async fn chain(ctx: OrchestrationContext, n: u64) -> Result<u64, OrchestrationError> {
    let mut sum = 0;
    for i in 0..n {
        sum += ctx.call(noop, i).await?;
    }
    Ok(sum)
}

/// Sleeps one second on a durable timer; returns the timer's due time (Unix ms).
#[orchestrator]
async fn sleeper(ctx: OrchestrationContext, millis: u64) -> Result<u64, OrchestrationError> {
    let due = ctx.now() + Duration::from_millis(millis);
    ctx.timer_at(due).await;
    Ok(due.as_unix_millis())
}

/// Waits for the external event `go`.
#[orchestrator]
async fn waiter(ctx: OrchestrationContext, _unit: ()) -> Result<(), OrchestrationError> {
    ctx.wait_for_event::<()>("go").await?;
    Ok(())
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(hello_step);
    r.register(hello_sequence5);
    r.register(noop);
    r.register(fan_out_sum);
    r.register(chain);
    r.register(sleeper);
    r.register(waiter);
    local::register(&mut r);
    r
}

// ---------------------------------------------------------------------------------------
// Arguments and sizes.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Args {
    quick: bool,
    only: Option<Vec<String>>,
    out: PathBuf,
    /// Commits without fsync (to see the CPU-bound ceiling); not the benchmark's figures.
    relaxed: bool,
    /// Internal: run M's child process with this many instances.
    memory_child: Option<usize>,
}

/// The workloads `--only` may name.
const WORKLOADS: [&str; 11] = [
    "FLOOR", "W1", "W1-LOCAL", "W2", "W2-LOCAL", "W3", "W4", "R", "M", "M1M", "DUROXIDE",
];

const USAGE: &str = "\
usage: bench [--quick] [--only FLOOR,W1,W1-local,W2,W2-local,W3,W4,R,M,M1M,DUROXIDE] [--out FILE] [--relaxed]

Runs the durable benchmarks on the redb store (fsync commits) in a temp dir and writes the
table to stdout and FILE (default bench-results.md).
  --quick      smoke mode: seconds, smaller counts
  --only LIST  only these workloads (comma-separated, any case)
  --out FILE   where the table goes
  --relaxed    commits without fsync, to show the CPU-bound ceiling (not durable)
  -h, --help   print this help";

/// Parses the arguments (after the program name); `Ok(None)` for `--help`. Nothing is opened
/// or started before this returns.
fn parse_args(args: &[String]) -> Result<Option<Args>, String> {
    let mut out = Args {
        quick: false,
        only: None,
        out: PathBuf::from("bench-results.md"),
        relaxed: false,
        memory_child: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("`{flag}` needs a value"));
        match flag.as_str() {
            "--quick" => out.quick = true,
            "--full" => out.quick = false,
            "--only" => {
                let list = value()?;
                let names: Vec<String> = list
                    .split(',')
                    .map(|s| s.trim().to_ascii_uppercase())
                    .collect();
                if let Some(bad) = names.iter().find(|n| !WORKLOADS.contains(&n.as_str())) {
                    return Err(format!(
                        "`--only {list}`: no workload `{bad}` (one of {})",
                        WORKLOADS.join(", ")
                    ));
                }
                out.only = Some(names);
            }
            "--out" => out.out = PathBuf::from(value()?),
            "--relaxed" => out.relaxed = true,
            "--memory-child" => {
                let n = value()?;
                out.memory_child = Some(
                    n.parse()
                        .map_err(|_| format!("`--memory-child {n}`: not a count"))?,
                );
            }
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(Some(out))
}

/// Counts per mode.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    w1_samples: usize,
    w2_instances: usize,
    w2_runs: usize,
    w3_big: u64,
    w3_big_runs: usize,
    w3_small_runs: usize,
    w4_instances: usize,
    w4_spacing: Duration,
    r_steps: u64,
    r_runs: usize,
    m_instances: usize,
    /// M1M's instances; run in full mode or when asked for by name.
    m1m_instances: usize,
}

impl Sizes {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                w1_samples: 10,
                w2_instances: 200,
                w2_runs: 1,
                w3_big: 10_000,
                w3_big_runs: 1,
                w3_small_runs: 2,
                w4_instances: 20,
                w4_spacing: Duration::from_millis(10),
                r_steps: 333,
                r_runs: 5,
                m_instances: 10_000,
                m1m_instances: 1_000_000,
            }
        } else {
            Self {
                w1_samples: 50,
                w2_instances: 1000,
                w2_runs: 5,
                w3_big: 10_000,
                w3_big_runs: 5,
                w3_small_runs: 10,
                w4_instances: 100,
                w4_spacing: Duration::from_millis(10),
                r_steps: 3333,
                r_runs: 20,
                m_instances: 100_000,
                m1m_instances: 1_000_000,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Statistics and the result table.
// ---------------------------------------------------------------------------------------

/// Nearest-rank percentile of `samples` (sorted here), `p` in 0..=100.
fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

#[derive(Debug, Clone, Copy)]
enum Target {
    AtMost(f64),
    AtLeast(f64),
}

/// One line of the table. For times `p99` is the slow tail; for rates it is the rate at the
/// slow tail (the 1st percentile of the rates).
#[derive(Debug, Clone)]
struct Row {
    system: &'static str,
    workload: String,
    metric: String,
    unit: &'static str,
    median: f64,
    p99: f64,
    n: usize,
    target: Option<Target>,
    note: String,
}

impl Row {
    fn times(workload: &str, metric: &str, unit: &'static str, samples: &[f64]) -> Self {
        Self {
            system: "durable",
            workload: workload.to_owned(),
            metric: metric.to_owned(),
            unit,
            median: percentile(samples, 50.0),
            p99: percentile(samples, 99.0),
            n: samples.len(),
            target: None,
            note: String::new(),
        }
    }

    fn rates(workload: &str, metric: &str, unit: &'static str, samples: &[f64]) -> Self {
        Self {
            p99: percentile(samples, 1.0),
            ..Self::times(workload, metric, unit, samples)
        }
    }

    fn target(mut self, t: Target) -> Self {
        self.target = Some(t);
        self
    }

    fn note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }

    #[cfg_attr(not(feature = "duroxide"), allow(dead_code))]
    fn system(mut self, s: &'static str) -> Self {
        self.system = s;
        self
    }

    fn verdict(&self) -> &'static str {
        match self.target {
            None => "",
            Some(Target::AtMost(t)) if self.median <= t => "met",
            Some(Target::AtLeast(t)) if self.median >= t => "met",
            Some(_) => "MISSED",
        }
    }

    fn target_text(&self) -> String {
        match self.target {
            None => String::new(),
            Some(Target::AtMost(t)) => format!("≤ {} {}", fmt_num(t), self.unit),
            Some(Target::AtLeast(t)) => format!("≥ {} {}", fmt_num(t), self.unit),
        }
    }
}

fn fmt_num(x: f64) -> String {
    if !x.is_finite() {
        return "—".to_owned();
    }
    let a = x.abs();
    if a >= 10_000.0 {
        let s = format!("{x:.0}");
        // Thousands separators.
        let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        format!("{sign}{out}")
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

const HEADER: &str = "| system | workload | metric | median | p99 | n | target | | note |\n\
                      | --- | --- | --- | ---: | ---: | ---: | --- | --- | --- |";

fn row_line(r: &Row) -> String {
    format!(
        "| {} | {} | {} | {} {} | {} {} | {} | {} | {} | {} |",
        r.system,
        r.workload,
        r.metric,
        fmt_num(r.median),
        r.unit,
        fmt_num(r.p99),
        r.unit,
        r.n,
        r.target_text(),
        r.verdict(),
        r.note
    )
}

/// Collects rows, printing each as it comes.
#[derive(Debug, Default)]
struct Table {
    rows: Vec<Row>,
}

impl Table {
    fn push(&mut self, row: Row) {
        if self.rows.is_empty() {
            println!("{HEADER}");
        }
        println!("{}", row_line(&row));
        self.rows.push(row);
    }

    fn markdown(&self, args: &Args) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# durable benchmark ({} mode)\n\n\
             redb store, {} commits, temp dir; {} CPU(s); unix time {}.\n\
             For times p99 is the slow tail; for rates it is the rate at the slow tail.\n",
            if args.quick { "quick" } else { "full" },
            if args.relaxed {
                "RELAXED (no fsync, not durable)"
            } else {
                "durable (fsync)"
            },
            std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        );
        let _ = writeln!(s, "{HEADER}");
        for r in &self.rows {
            let _ = writeln!(s, "{}", row_line(r));
        }
        s
    }
}

fn progress(msg: &str) {
    eprintln!("[bench] {msg}");
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------------------------------
// Setup.
// ---------------------------------------------------------------------------------------

/// A fresh redb file in a temp dir, a worker with every workload registered, its client.
struct Env {
    worker: Worker,
    client: Client,
    /// The worker's store, for its commit counter.
    store: RedbStore,
    _dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Result<Self, BoxError> {
        let dir = tempfile::Builder::new().prefix("durable-bench").tempdir()?;
        let durability = if RELAXED.load(Ordering::Relaxed) {
            RedbDurability::Relaxed
        } else {
            RedbDurability::Immediate
        };
        let store = RedbStore::builder()
            .durability(durability)
            .open(dir.path().join("bench.redb"))?;
        let worker = Worker::builder()
            .store(store.clone())
            .registry(registry())
            .start()?;
        let client = worker.client();
        Ok(Self {
            worker,
            client,
            store,
            _dir: dir,
        })
    }

    async fn close(self) {
        self.worker.shutdown().await;
    }
}

// ---------------------------------------------------------------------------------------
// The workloads.
// ---------------------------------------------------------------------------------------

/// W1's latencies (ms) and the commits the measured runs made.
async fn w1(sizes: Sizes) -> Result<(Vec<f64>, u64), BoxError> {
    let env = Env::new()?;
    for _ in 0..5 {
        hello_sequence5::start(&env.client, "warm-up".into())
            .await?
            .wait()
            .await?;
    }
    let mut samples = Vec::with_capacity(sizes.w1_samples);
    let commits = env.store.commits();
    for i in 0..sizes.w1_samples {
        let t = Instant::now();
        let out = hello_sequence5::start(&env.client, format!("world-{i}"))
            .await?
            .wait()
            .await?;
        samples.push(ms(t.elapsed()));
        debug_assert_eq!(out, format!("world-{i}"));
    }
    let commits = env.store.commits() - commits;
    env.close().await;
    Ok((samples, commits))
}

/// Starts `n` `HelloSequence5` at once and waits for all; returns the wall time and the
/// commits made.
async fn w2_run(n: usize) -> Result<(Duration, u64), BoxError> {
    let env = Env::new()?;
    let commits = env.store.commits();
    let t = Instant::now();
    let mut starts = tokio::task::JoinSet::new();
    for i in 0..n {
        let client = env.client.clone();
        starts.spawn(async move { hello_sequence5::start(&client, format!("w2-{i}")).await });
    }
    let mut handles = Vec::with_capacity(n);
    while let Some(h) = starts.join_next().await {
        handles.push(h??);
    }
    for h in &handles {
        h.wait().await?;
    }
    let took = t.elapsed();
    let commits = env.store.commits() - commits;
    env.close().await;
    Ok((took, commits))
}

/// One fan-out of `n`: wall time and commits made.
async fn w3_run(n: u64) -> Result<(Duration, u64), BoxError> {
    let env = Env::new()?;
    let commits = env.store.commits();
    let t = Instant::now();
    let sum = fan_out_sum::start(&env.client, n).await?.wait().await?;
    let took = t.elapsed();
    let commits = env.store.commits() - commits;
    if sum != n * (n.saturating_sub(1)) / 2 {
        return Err(format!("W3: wrong sum {sum}").into());
    }
    env.close().await;
    Ok((took, commits))
}

/// Starts `n` one-second sleepers `spacing` apart; returns each completion's overshoot
/// (observed completion − timer due time) in ms, and the commits made.
async fn w4_run(n: usize, spacing: Duration) -> Result<(Vec<f64>, u64), BoxError> {
    let env = Env::new()?;
    let commits = env.store.commits();
    let mut waits = tokio::task::JoinSet::new();
    for _ in 0..n {
        let handle = sleeper::start(&env.client, 1000).await?;
        let started = Instant::now();
        waits.spawn(async move {
            // Start waiting shortly before the timer is due, so idle waiters do not
            // compete with the dispatchers.
            tokio::time::sleep_until((started + Duration::from_millis(950)).into()).await;
            let due: u64 = handle.wait().await?;
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
            Ok::<f64, ClientError>(now_ms - due as f64)
        });
        if !spacing.is_zero() {
            tokio::time::sleep(spacing).await;
        }
    }
    let mut out = Vec::with_capacity(n);
    while let Some(r) = waits.join_next().await {
        out.push(r??);
    }
    let commits = env.store.commits() - commits;
    env.close().await;
    Ok((out, commits))
}

/// Builds a history by running `chain` with `steps` steps; returns (instance, history).
async fn r_history(
    env: &Env,
    steps: u64,
) -> Result<(InstanceId, Vec<durable_core::HistoryEvent>), BoxError> {
    let h = chain::start(&env.client, steps).await?;
    h.wait().await?;
    let history = env.client.store().read_history(h.id()).await?;
    Ok((h.id().clone(), history))
}

async fn r(sizes: Sizes, table: &mut Table) -> Result<(), BoxError> {
    progress(&format!(
        "R: building a history of {} chained steps",
        sizes.r_steps
    ));
    let env = Env::new()?;
    let t = Instant::now();
    let (id, history) = r_history(&env, sizes.r_steps).await?;
    progress(&format!(
        "R: {} events recorded in {:.1} s; replaying",
        history.len(),
        t.elapsed().as_secs_f64()
    ));
    let registry = registry();
    let name = <chain as Orchestrator>::NAME;
    let events = history.len() as f64;
    let mut rates = Vec::new();
    for _ in 0..sizes.r_runs {
        let t = Instant::now();
        durable_core::replay::replay_history(&registry, name, &id, &history)?;
        rates.push(events / t.elapsed().as_secs_f64());
    }
    table.push(
        Row::rates(
            "R",
            &format!("cold replay, {} events", history.len()),
            "events/s",
            &rates,
        )
        .target(Target::AtLeast(1_000_000.0))
        .note("replay_history: the executor alone"),
    );
    let store = Arc::clone(env.client.store());
    let mut rates = Vec::new();
    for _ in 0..sizes.r_runs {
        let t = Instant::now();
        let h = store.read_history(&id).await?;
        durable_core::replay::replay_history(&registry, name, &id, &h)?;
        rates.push(events / t.elapsed().as_secs_f64());
    }
    table.push(
        Row::rates(
            "R",
            &format!("read + replay, {} events", history.len()),
            "events/s",
            &rates,
        )
        .target(Target::AtLeast(1_500_000.0))
        .note("history read from redb, then replayed"),
    );
    env.close().await;
    Ok(())
}

fn rss_kb(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// M's child: `n` instances waiting on an event; prints
/// `M <waiting> <peak kB> <secs until all wait> <secs of the start calls>`.
async fn memory_child(n: usize) -> Result<(), BoxError> {
    let env = Env::new()?;
    let t = Instant::now();
    let chunk = 1000;
    let report_every = (n / 10).max(chunk);
    let mut started = 0;
    while started < n {
        let mut set = tokio::task::JoinSet::new();
        for _ in started..(started + chunk).min(n) {
            let client = env.client.clone();
            set.spawn(async move { waiter::start(&client, ()).await.map(drop) });
        }
        while let Some(r) = set.join_next().await {
            r??;
        }
        started = (started + chunk).min(n);
        if started % report_every == 0 || started == n {
            progress(&format!(
                "M: {started}/{n} started after {:.1} s; RSS {} MB",
                t.elapsed().as_secs_f64(),
                rss_kb("VmRSS:").unwrap_or(0) / 1024
            ));
        }
    }
    let start_calls = t.elapsed().as_secs_f64();
    // Wait until every instance has run its first episode (none is Pending). Counting reads
    // each record's head only; no list of instances is held.
    let pending = InstanceQuery::new().statuses([RuntimeStatus::Pending]);
    while count(&env.client, &pending).await? > 0 {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let secs = t.elapsed().as_secs_f64();
    let running = count(
        &env.client,
        &InstanceQuery::new().statuses([RuntimeStatus::Running]),
    )
    .await?;
    let hwm = rss_kb("VmHWM:").unwrap_or(0);
    progress(&format!(
        "M: {running} instances waiting after {secs:.1} s; peak RSS {} MB",
        hwm / 1024
    ));
    println!("M {running} {hwm} {secs} {start_calls}");
    // Exit without an orderly shutdown: the figure is taken.
    std::process::exit(0);
}

/// How many instances `query` matches.
async fn count(client: &Client, query: &InstanceQuery) -> Result<u64, BoxError> {
    let counts = client.count_instances(query).await?;
    Ok(counts.iter().map(|(_, n)| n).sum())
}

/// Runs M's child with `instances` waiters and pushes its rows under `workload`.
fn m(workload: &str, instances: usize, target_mb: f64, table: &mut Table) -> Result<(), BoxError> {
    progress(&format!(
        "{workload}: {instances} waiting instances in a child process"
    ));
    let out = std::process::Command::new(std::env::current_exe()?)
        .args(["--memory-child", &instances.to_string()])
        .args(RELAXED.load(Ordering::Relaxed).then_some("--relaxed"))
        .stderr(std::process::Stdio::inherit())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let Some(line) = stdout.lines().find(|l| l.starts_with("M ")) else {
        return Err(format!("{workload}: the child failed ({}): {stdout}", out.status).into());
    };
    let parts: Vec<&str> = line.split_whitespace().collect();
    let (Some(running), Some(kb), Some(secs), Some(start_calls)) =
        (parts.get(1), parts.get(2), parts.get(3), parts.get(4))
    else {
        return Err(format!("{workload}: unexpected child output `{line}`").into());
    };
    let mb = kb.parse::<f64>()? / 1024.0;
    let secs: f64 = secs.parse()?;
    let start_calls: f64 = start_calls.parse()?;
    table.push(
        Row::times(
            workload,
            &format!("peak RSS, {running} instances waiting"),
            "MB",
            &[mb],
        )
        .target(Target::AtMost(target_mb))
        .note(format!(
            "VmHWM of a fresh process; all waiting after {secs:.1} s"
        )),
    );
    table.push(
        Row::rates(
            workload,
            &format!("start rate, {instances} instances"),
            "inst/s",
            &[instances as f64 / secs],
        )
        .note(format!(
            "started and waiting (first episode committed); the start calls alone: {:.0} inst/s",
            instances as f64 / start_calls
        )),
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Main.
// ---------------------------------------------------------------------------------------

fn wanted(args: &Args, name: &str) -> bool {
    args.only.is_none() || named(args, name)
}

/// `true` if `--only` names `name`.
fn named(args: &Args, name: &str) -> bool {
    args.only
        .as_ref()
        .is_some_and(|o| o.iter().any(|x| x == name))
}

#[allow(clippy::too_many_lines, reason = "the workloads in order")]
async fn run(args: Args) -> Result<(), BoxError> {
    if let Some(n) = args.memory_child {
        // The child runs with the same durability as its parent.
        return memory_child(n).await;
    }
    let sizes = Sizes::new(args.quick);
    let mut table = Table::default();
    let mut ours = Ours::default();
    let started = Instant::now();
    progress(&format!(
        "{} mode; redb with fsync commits in a temp dir",
        if args.quick { "quick" } else { "full" }
    ));

    // The store's floor, in the same run, for the commit rows of W1–W4.
    let mut floor_ms = None;
    if ["W1", "W2", "W3", "W4", "FLOOR"]
        .iter()
        .any(|w| wanted(&args, w))
    {
        progress(&format!(
            "floor: {} bare redb commits",
            floor::FLOOR_SAMPLES
        ));
        let samples = floor::measure()?;
        let row = floor::row(&samples);
        floor_ms = Some(row.median);
        table.push(row);
    }

    if wanted(&args, "W1") {
        progress(&format!(
            "W1: {} sequential HelloSequence5",
            sizes.w1_samples
        ));
        let (samples, commits) = w1(sizes).await?;
        let row =
            Row::times("W1", "HelloSequence5 latency", "ms", &samples).target(Target::AtMost(1.5));
        ours.w1 = Some(row.median);
        let per = commits as f64 / samples.len() as f64;
        let latency = Some((row.median, per));
        table.push(row);
        table.push(floor::commits_row(
            "W1",
            "p50",
            commits,
            samples.len(),
            latency,
            floor_ms,
        ));
    }

    if wanted(&args, "W2") {
        let n = sizes.w2_instances;
        let mut orch = Vec::new();
        let mut acts = Vec::new();
        let mut runs = Vec::new();
        for i in 0..sizes.w2_runs {
            let (took, commits) = w2_run(n).await?;
            runs.push((ms(took), commits));
            progress(&format!(
                "W2 run {}/{}: {n} orchestrations in {:.3} s",
                i + 1,
                sizes.w2_runs,
                took.as_secs_f64()
            ));
            orch.push(n as f64 / took.as_secs_f64());
            acts.push(5.0 * n as f64 / took.as_secs_f64());
        }
        let row = Row::rates(
            "W2",
            &format!("{n} HelloSequence5 at once"),
            "orch/s",
            &orch,
        )
        .target(Target::AtLeast(6000.0));
        ours.w2 = Some(row.median);
        table.push(row);
        table.push(Row::rates(
            "W2",
            &format!("{n} HelloSequence5 at once"),
            "act/s",
            &acts,
        ));
        table.push(median_commits_row("W2", &runs, n, floor_ms));
    }

    local::run(&args, sizes, &mut table).await?;

    if wanted(&args, "W3") {
        for (n, runs, target) in [
            (1000, sizes.w3_small_runs, 50.0),
            (sizes.w3_big, sizes.w3_big_runs, 400.0),
        ] {
            let mut times = Vec::new();
            let mut commit_runs = Vec::new();
            for i in 0..runs {
                let (took, commits) = w3_run(n).await?;
                commit_runs.push((ms(took), commits));
                progress(&format!(
                    "W3 run {}/{runs}: fan-out of {n} in {:.3} s",
                    i + 1,
                    took.as_secs_f64()
                ));
                times.push(ms(took));
            }
            let row = Row::times("W3", &format!("fan-out/in of {n}"), "ms", &times)
                .target(Target::AtMost(target));
            ours.w3.push((n, row.median));
            table.push(row);
            table.push(median_commits_row("W3", &commit_runs, 1, floor_ms));
        }
    }

    if wanted(&args, "W4") {
        let n = sizes.w4_instances;
        progress(&format!(
            "W4: {n} one-second timers, {} ms apart",
            sizes.w4_spacing.as_millis()
        ));
        let (over, commits) = w4_run(n, sizes.w4_spacing).await?;
        table.push(
            Row::times(
                "W4",
                &format!(
                    "timer overshoot, {n} started {} ms apart",
                    sizes.w4_spacing.as_millis()
                ),
                "ms",
                &over,
            )
            .target(Target::AtMost(1.0)),
        );
        table.push(floor::commits_row("W4", "", commits, n, None, floor_ms));
        progress(&format!("W4: {n} one-second timers, all at once"));
        let (over, _) = w4_run(n, Duration::ZERO).await?;
        table.push(
            Row::times(
                "W4",
                &format!("timer overshoot, {n} started at once"),
                "ms",
                &over,
            )
            .note("all due in the same millisecond: measures a burst of episodes"),
        );
    }

    if wanted(&args, "R") {
        r(sizes, &mut table).await?;
    }

    if wanted(&args, "M") {
        m("M", sizes.m_instances, 300.0, &mut table)?;
    }

    // Minutes long: in full mode, or when asked for by name.
    if (!args.quick && wanted(&args, "M1M")) || named(&args, "M1M") {
        m("M1M", sizes.m1m_instances, 500.0, &mut table)?;
    }

    #[cfg(feature = "duroxide")]
    if wanted(&args, "DUROXIDE")
        && let Err(e) = duroxide::compare(&args, &ours, &mut table).await
    {
        // The peer's failure (its SQLite store reports "database is locked" under load,
        // say) is a figure missing from the comparison, not a failed benchmark.
        progress(&format!("duroxide: stopped: {e}"));
        table.push(
            Row::times("DUROXIDE", "comparison", "ms", &[f64::NAN])
                .system("duroxide")
                .note(format!("stopped: {e}")),
        );
    }
    #[cfg(not(feature = "duroxide"))]
    {
        let _ = &ours;
        if args
            .only
            .as_ref()
            .is_some_and(|o| o.iter().any(|x| x == "DUROXIDE"))
        {
            progress("duroxide: not built; add `--features duroxide`");
        }
    }

    let md = table.markdown(&args);
    std::fs::write(&args.out, &md)?;
    progress(&format!(
        "done in {:.1} s; table written to {}",
        started.elapsed().as_secs_f64(),
        display(&args.out)
    ));
    Ok(())
}

/// The commit row of a workload run several times: the run with the median wall time, its
/// commits and its wall time ÷ (commits × floor).
fn median_commits_row(
    workload: &str,
    runs: &[(f64, u64)],
    orchestrations: usize,
    floor_ms: Option<f64>,
) -> Row {
    let mut sorted = runs.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (wall, commits) = sorted
        .get(sorted.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or((f64::NAN, 0));
    floor::commits_row(
        workload,
        "wall time",
        commits,
        orchestrations,
        Some((wall, commits as f64)),
        floor_ms,
    )
}

fn display(p: &Path) -> String {
    p.display().to_string()
}

/// Our medians, for the side-by-side ratios.
#[derive(Debug, Default)]
#[cfg_attr(not(feature = "duroxide"), allow(dead_code))]
struct Ours {
    /// W1 median latency, ms.
    w1: Option<f64>,
    /// W2 median orchestrations/s.
    w2: Option<f64>,
    /// W3 median wall time per fan-out size, ms.
    w3: Vec<(u64, f64)>,
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&args) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return std::process::ExitCode::SUCCESS;
        }
        Err(e) => return examples::cli::usage_error("bench", USAGE, &e),
    };
    // Figures are taken with no subscriber unless logs are asked for.
    if std::env::var_os("RUST_LOG").is_some() {
        examples::observe::init_tracing();
    }
    RELAXED.store(args.relaxed, Ordering::Relaxed);
    examples::cli::run("bench", run(args))
}
