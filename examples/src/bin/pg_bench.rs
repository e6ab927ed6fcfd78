//! Postgres benchmarks on the `PostgresStore`, durable side by side with DBOS (feature
//! `dbos`), then W2 with 1, 2 and 4 worker processes.
//!
//! - W1: one `HelloSequence5` (5 chained no-op activities, string in and out) at a time, 50
//!   times (after 5 to warm up), start → observed completion; p50. One worker in this process,
//!   started through its own client (the first episode is written with the creation).
//!   Its samples alternate with DBOS's and with a bare commit (one small `INSERT`, the
//!   floor), so all see the same disk and the same competition for the cores.
//! - W2: 1,000 `HelloSequence5` started at once (16 starters) with one worker in this process,
//!   first start → last completion; orchestrations/s.
//! - W2 with N worker processes: all instances are created first, then the worker processes
//!   (this binary run again with `--worker`) run them; the clock runs from the workers' start
//!   to the last completion. Prints orchestrations/s, activities/s and the scaling over the
//!   first worker count.
//!
//! ```text
//! cargo run --release -p examples --features postgres --bin pg_bench -- \
//!     [--url postgres://postgres@127.0.0.1:5432/test] [--instances 1000] [--samples 50] \
//!     [--workers 1,2,4|none] [--runs 1] [--no-dbos]
//! ```
//!
//! With `--features dbos`, W1 and W2 also run on DBOS's Rust SDK on the same database (its own
//! schema), and the table shows both. The URL defaults to `DURABLE_TEST_POSTGRES_URL`, then to
//! the local test database. Each run uses a fresh task hub, dropped afterwards. No `tracing`
//! subscriber unless `RUST_LOG` is set (then as the demo: stderr, `ReplaySafe`).
#![allow(
    clippy::disallowed_methods,
    reason = "a benchmark measures wall time and polls for completion"
)]

#[cfg(feature = "dbos")]
#[path = "pg_bench/dbos.rs"]
mod dbos;

use std::io::{BufRead, BufReader, Write as _};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use durable_core::prelude::*;
use durable_core::{InstanceQuery, PostgresOptions, PostgresStore, Store};
use examples::workloads::{hello_sequence5, hello_sequence5_local, hello_step};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Args {
    url: String,
    instances: usize,
    samples: usize,
    workers: Vec<usize>,
    runs: usize,
    dbos: bool,
}

const USAGE: &str = "\
usage: pg_bench [--url URL] [--instances N] [--samples N] [--workers 1,2,4|none] [--runs N] [--no-dbos]

Runs W1, W1-local, W2 and W2-local on PostgreSQL (beside DBOS with feature `dbos`), then W2
with worker processes.
  --url URL         the database (default: $DURABLE_TEST_POSTGRES_URL or postgres://postgres@127.0.0.1:5432/test)
  --instances N     orchestrations per W2 run (default 1000)
  --samples N       W1 samples (default 50)
  --workers LIST    worker-process counts for the multi-process W2 (default 1,2,4; none to skip)
  --runs N          runs per multi-process W2 (default 1)
  --no-dbos         leave DBOS out even when built with it
  -h, --help        print this help";

/// Parses `value` as a positive count for `flag`.
fn count(flag: &str, value: &str) -> Result<usize, String> {
    value
        .parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("`{flag} {value}`: not a positive count"))
}

/// Parses the arguments (after the program name); `Ok(None)` for `--help`. Nothing is
/// connected to before this returns.
fn parse_args(args: &[String]) -> Result<Option<Args>, String> {
    let mut out = Args {
        url: std::env::var("DURABLE_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned()),
        instances: 1000,
        samples: 50,
        workers: vec![1, 2, 4],
        runs: 1,
        dbos: cfg!(feature = "dbos"),
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("`{flag}` needs a value"));
        match flag.as_str() {
            "--url" => out.url.clone_from(value()?),
            "--instances" => out.instances = count(flag, value()?)?,
            "--runs" => out.runs = count(flag, value()?)?,
            "--samples" => out.samples = count(flag, value()?)?,
            "--no-dbos" => out.dbos = false,
            "--workers" => {
                let list = value()?;
                out.workers = if list == "none" {
                    Vec::new()
                } else {
                    list.split(',')
                        .map(|n| count(flag, n))
                        .collect::<Result<_, _>>()?
                };
            }
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(Some(out))
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `--worker HUB URL`: a worker process started by the multi-process W2.
    let parsed = if args.first().map(String::as_str) == Some("--worker") {
        Ok(None)
    } else {
        parse_args(&args)
    };
    let parsed = match parsed {
        Ok(None) if args.first().map(String::as_str) != Some("--worker") => {
            println!("{USAGE}");
            return std::process::ExitCode::SUCCESS;
        }
        Ok(parsed) => parsed,
        Err(e) => return examples::cli::usage_error("pg_bench", USAGE, &e),
    };
    examples::cli::run("pg_bench", main_async(args, parsed))
}

#[allow(clippy::too_many_lines, reason = "the report, workload by workload")]
async fn main_async(raw: Vec<String>, parsed: Option<Args>) -> Result<(), BoxError> {
    // Figures are taken with no subscriber unless logs are asked for.
    if std::env::var_os("RUST_LOG").is_some() {
        examples::observe::init_tracing();
    }
    let Some(args) = parsed else {
        let hub = raw.get(1).ok_or("--worker needs a task hub")?;
        let url = raw.get(2).ok_or("--worker needs a URL")?;
        return worker(hub, url).await;
    };
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    // Other work on the machine competes with the database and the workers: say how much.
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned());
    println!(
        "PostgreSQL, {cores} cores, load average {load} before the run; HelloSequence5 \
         (5 chained no-op steps, string in and out)"
    );
    // W1 samples alternate between durable, DBOS and a bare commit, so all three see the
    // same disk and the same competition for the cores.
    let mut w1 = W1::new(&args).await?;
    let (ours_w1, ours_w1_local, theirs_w1, floor) = w1.run(args.samples).await?;
    w1.close().await?;
    let w2 = args.instances as f64
        / in_process_w2(&args.url, args.instances, false)
            .await?
            .as_secs_f64();
    let w2_local = args.instances as f64
        / in_process_w2(&args.url, args.instances, true)
            .await?
            .as_secs_f64();
    let theirs_w2 = dbos_w2(&args).await?;
    println!(
        "commit floor (p50 of one INSERT of a small row, autocommit, synchronous_commit on): \
         {floor:.2} ms; W1 is 6 durable commits (the start with the first episode, 5 more \
         episodes) = {:.2} ms",
        6.0 * floor
    );
    println!(
        "{:<44} | {:>9} | {:>9} | {:>12}",
        "workload (1 worker, in process)", "durable", "DBOS", "durable/DBOS"
    );
    let row = |name: &str, ours: f64, theirs: Option<f64>, better: fn(f64, f64) -> f64| {
        let (t, ratio) = match theirs {
            Some(t) => (format!("{t:.2}"), format!("{:.2}×", better(ours, t))),
            None => ("–".to_owned(), "–".to_owned()),
        };
        println!("{name:<44} | {ours:>9.2} | {t:>9} | {ratio:>12}");
    };
    row(
        &format!("W1 p50 ms ({} sequential)", args.samples),
        ours_w1,
        theirs_w1,
        |ours, theirs| theirs / ours,
    );
    row(
        &format!("W1-local p50 ms ({} sequential)", args.samples),
        ours_w1_local,
        theirs_w1,
        |ours, theirs| theirs / ours,
    );
    row(
        &format!("W2 orch/s ({} at once)", args.instances),
        w2,
        theirs_w2,
        |ours, theirs| ours / theirs,
    );
    row(
        &format!("W2-local orch/s ({} at once)", args.instances),
        w2_local,
        theirs_w2,
        |ours, theirs| ours / theirs,
    );
    println!(
        "(-local: the five steps are local activities, run in the episode like DBOS's steps run \
         in its workflow; DBOS runs the same workflow in both rows)"
    );
    if args.workers.is_empty() {
        return Ok(());
    }
    println!(
        "W2 with worker processes: {} instances created first, then the workers run them",
        args.instances
    );
    println!(
        "{:>7} | {:>9} | {:>9} | {:>10} | {:>7}",
        "workers", "seconds", "orch/s", "activity/s", "scaling"
    );
    let mut base = None;
    for &w in &args.workers {
        let mut rates = Vec::new();
        for _ in 0..args.runs {
            rates.push(run(&args.url, args.instances, w).await?);
        }
        rates.sort_by(f64::total_cmp);
        let rate = rates[rates.len() / 2];
        let base = *base.get_or_insert(rate);
        println!(
            "{w:>7} | {:>9.2} | {rate:>9.0} | {:>10.0} | {:>6.2}×",
            args.instances as f64 / rate,
            rate * 5.0,
            rate / base
        );
    }
    Ok(())
}

/// The `q` quantile of `samples` (sorted in place).
fn percentile(samples: &mut [f64], q: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
    samples.get(i).copied().unwrap_or(f64::NAN)
}

/// A fresh task hub with one worker and a client in this process.
struct InProcess {
    store: PostgresStore,
    worker: Worker,
    client: Client,
}

impl InProcess {
    async fn new(url: &str) -> Result<Self, BoxError> {
        let hub = format!("bench_{}", &InstanceId::random().as_str()[..12]);
        let store = PostgresStore::connect(url, PostgresOptions::new(&hub)).await?;
        let worker = Worker::builder()
            .store(store.clone())
            .register(hello_step)
            .register(hello_sequence5)
            .register(hello_sequence5_local)
            .start()?;
        // The worker's own client: a start runs the first episode here and writes it with
        // the creation (one transaction).
        let client = worker.client();
        Ok(Self {
            store,
            worker,
            client,
        })
    }

    async fn close(self) -> Result<(), BoxError> {
        self.worker.shutdown().await;
        self.store.drop_task_hub().await?;
        Ok(())
    }
}

/// W1 with one worker in this process, DBOS (when built with it) and the commit floor.
struct W1 {
    ours: InProcess,
    #[cfg(feature = "dbos")]
    theirs: Option<dbos::Env>,
    floor: tokio_postgres::Client,
    floor_connection: tokio::task::JoinHandle<()>,
}

impl W1 {
    async fn new(args: &Args) -> Result<Self, BoxError> {
        let ours = InProcess::new(&args.url).await?;
        #[cfg(feature = "dbos")]
        let theirs = if args.dbos {
            Some(dbos::Env::new(&args.url).await?)
        } else {
            None
        };
        let (floor, connection) = tokio_postgres::connect(&args.url, tokio_postgres::NoTls).await?;
        let floor_connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        let hub = ours.store.task_hub();
        floor
            .batch_execute(&format!(
                "CREATE TABLE \"{hub}\".floor (id BIGSERIAL PRIMARY KEY, note TEXT NOT NULL)"
            ))
            .await?;
        Ok(Self {
            ours,
            #[cfg(feature = "dbos")]
            theirs,
            floor,
            floor_connection,
        })
    }

    /// p50s in ms: durable's W1, durable's W1-local, DBOS's W1 (if built with it), the
    /// commit floor. Five warm-up rounds first.
    async fn run(&mut self, samples: usize) -> Result<(f64, f64, Option<f64>, f64), BoxError> {
        let insert = self
            .floor
            .prepare(&format!(
                "INSERT INTO \"{}\".floor (note) VALUES ($1)",
                self.ours.store.task_hub()
            ))
            .await?;
        let (mut ours, mut ours_local, mut theirs, mut floor) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in 0..samples + 5 {
            let t = Instant::now();
            let result = hello_sequence5::start(&self.ours.client, format!("world-{i}"))
                .await?
                .wait()
                .await?;
            ours.push(t.elapsed().as_secs_f64() * 1000.0);
            if result != format!("world-{i}") {
                return Err(format!("W1: wrong result {result:?}").into());
            }
            let t = Instant::now();
            let result = hello_sequence5_local::start(&self.ours.client, format!("local-{i}"))
                .await?
                .wait()
                .await?;
            ours_local.push(t.elapsed().as_secs_f64() * 1000.0);
            if result != format!("local-{i}") {
                return Err(format!("W1-local: wrong result {result:?}").into());
            }
            #[cfg(feature = "dbos")]
            if let Some(env) = &self.theirs {
                theirs.push(env.w1_once(&format!("world-{i}")).await?);
            }
            let t = Instant::now();
            self.floor.execute(&insert, &[&format!("row-{i}")]).await?;
            floor.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let p50 = |v: &mut Vec<f64>| percentile(&mut v[5..], 0.5);
        let theirs = (theirs.len() > 5).then(|| p50(&mut theirs));
        Ok((
            p50(&mut ours),
            p50(&mut ours_local),
            theirs,
            p50(&mut floor),
        ))
    }

    async fn close(self) -> Result<(), BoxError> {
        #[cfg(feature = "dbos")]
        if let Some(env) = self.theirs {
            env.close().await?;
        }
        drop(self.floor);
        let _ = self.floor_connection.await;
        self.ours.close().await
    }
}

/// W2 with one worker in this process: `n` started at once (16 starters), first start to
/// last completion; with `local`, W2-local (the steps are local activities).
async fn in_process_w2(url: &str, n: usize, local: bool) -> Result<Duration, BoxError> {
    let env = InProcess::new(url).await?;
    let t = Instant::now();
    let mut starts = tokio::task::JoinSet::new();
    let per = n.div_ceil(16);
    for chunk in 0..16 {
        let client = env.client.clone();
        starts.spawn(async move {
            let mut handles = Vec::with_capacity(per);
            for i in chunk * per..((chunk + 1) * per).min(n) {
                let input = format!("w2-{i}");
                let handle = if local {
                    hello_sequence5_local::start(&client, input).await?
                } else {
                    hello_sequence5::start(&client, input).await?
                };
                handles.push((i, handle));
            }
            for (i, h) in handles {
                let result = h.wait().await?;
                if result != format!("w2-{i}") {
                    return Err(format!("W2: wrong result {result:?}").into());
                }
            }
            Ok::<(), BoxError>(())
        });
    }
    while let Some(r) = starts.join_next().await {
        r??;
    }
    let took = t.elapsed();
    env.close().await?;
    Ok(took)
}

/// DBOS's W2 (workflows/s), or `None` when built without DBOS or told not to run it.
#[cfg(feature = "dbos")]
async fn dbos_w2(args: &Args) -> Result<Option<f64>, BoxError> {
    if !args.dbos {
        return Ok(None);
    }
    let env = dbos::Env::new(&args.url).await?;
    let w2 = args.instances as f64 / env.w2(args.instances).await?.as_secs_f64();
    env.close().await?;
    Ok(Some(w2))
}

#[cfg(not(feature = "dbos"))]
#[allow(clippy::unused_async, reason = "the same signature as with DBOS")]
async fn dbos_w2(_: &Args) -> Result<Option<f64>, BoxError> {
    Ok(None)
}

/// One measurement: `workers` processes run `instances` orchestrations; returns orch/s.
async fn run(url: &str, instances: usize, workers: usize) -> Result<f64, BoxError> {
    let hub = format!("bench_{}", &InstanceId::random().as_str()[..12]);
    let store = PostgresStore::connect(url, PostgresOptions::new(&hub)).await?;
    let client = Client::new(Arc::new(store.clone()));
    let mut procs = Vec::new();
    for _ in 0..workers {
        procs.push(WorkerProcess::spawn(&hub, url)?);
    }
    for p in &mut procs {
        p.wait_ready()?;
    }
    // Start every instance before the workers run (16 clients at once).
    let created = Instant::now();
    let mut starts = tokio::task::JoinSet::new();
    let per = instances.div_ceil(16);
    for chunk in 0..16 {
        let client = client.clone();
        starts.spawn(async move {
            for i in chunk * per..((chunk + 1) * per).min(instances) {
                hello_sequence5::start(&client, format!("n{i}")).await?;
            }
            Ok::<(), ClientError>(())
        });
    }
    while let Some(r) = starts.join_next().await {
        r??;
    }
    eprintln!(
        "  {workers} worker(s): {instances} instances created in {:.2?}",
        created.elapsed()
    );

    let started = Instant::now();
    for p in &mut procs {
        p.go()?;
    }
    let pending = InstanceQuery::new()
        .statuses([RuntimeStatus::Pending, RuntimeStatus::Running])
        .page_size(1);
    let mut last_report = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if store.query_instances(&pending).await?.instances.is_empty() {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            let done = store
                .query_instances(
                    &InstanceQuery::new()
                        .statuses([RuntimeStatus::Completed])
                        .page_size(10_000),
                )
                .await?
                .instances
                .len();
            eprintln!(
                "  … {done}/{instances} done after {:.1?}",
                started.elapsed()
            );
            last_report = Instant::now();
        }
        if started.elapsed() > Duration::from_secs(600) {
            return Err("the run did not finish in 10 minutes".into());
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let failed = store
        .query_instances(
            &InstanceQuery::new()
                .statuses([RuntimeStatus::Failed, RuntimeStatus::Terminated])
                .page_size(1),
        )
        .await?;
    if !failed.instances.is_empty() {
        return Err(format!("instances failed: {:?}", failed.instances[0]).into());
    }
    drop(procs);
    store.drop_task_hub().await?;
    Ok(instances as f64 / elapsed)
}

/// A worker process: connects, says READY, starts working on GO, exits when stdin closes.
async fn worker(hub: &str, url: &str) -> Result<(), BoxError> {
    // 8 + 4 + 1 connections per worker: four workers stay well under the default
    // max_connections (100).
    let store = PostgresStore::connect(url, PostgresOptions::new(hub).pool_size(8)).await?;
    let mut lines = BufReader::new(std::io::stdin()).lines();
    println!("READY");
    std::io::stdout().flush()?;
    match lines.next() {
        Some(Ok(line)) if line == "GO" => {}
        _ => return Ok(()),
    }
    let worker = Worker::builder()
        .store(store)
        .register(hello_step)
        .register(hello_sequence5)
        .start()?;
    // Wait for stdin to close (on a blocking thread), then stop.
    tokio::task::spawn_blocking(move || for _ in lines {}).await?;
    worker.abort();
    Ok(())
}

struct WorkerProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<std::process::ChildStdout>,
}

impl WorkerProcess {
    fn spawn(hub: &str, url: &str) -> Result<Self, BoxError> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["--worker", hub, url])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        Ok(Self {
            child,
            stdin,
            stdout,
        })
    }

    fn wait_ready(&mut self) -> Result<(), BoxError> {
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        if line.trim() == "READY" {
            Ok(())
        } else {
            Err(format!("a worker did not start: {line:?}").into())
        }
    }

    fn go(&mut self) -> Result<(), BoxError> {
        let stdin = self.stdin.as_mut().ok_or("worker stdin closed")?;
        writeln!(stdin, "GO")?;
        stdin.flush()?;
        Ok(())
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}
