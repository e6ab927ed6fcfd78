//! W2 on the `PostgresStore` with 1, 2 and 4 worker processes: 1,000 `HelloSequence5`
//! orchestrations (5 chained no-op activities, string in and out) are started at once, then
//! the workers run them; prints orchestrations/s, activities/s and the scaling over the
//! first worker count (one, by default).
//!
//! ```text
//! cargo run --release -p examples --features postgres --bin pg_bench -- \
//!     [--url postgres://postgres@127.0.0.1:5432/test] [--instances 1000] [--workers 1,2,4] [--runs 1]
//! ```
//!
//! The URL defaults to `DURABLE_TEST_POSTGRES_URL`, then to the local test database. Each run
//! uses a fresh task hub, dropped afterwards. The workers are this binary run again with
//! `--worker`; all instances are created before the workers start, and the clock runs from
//! the workers' start to the last completion. No `tracing` subscriber unless `RUST_LOG` is
//! set (then as the demo: stderr, `ReplaySafe`).
#![allow(
    clippy::disallowed_methods,
    reason = "a benchmark measures wall time and polls for completion"
)]

use std::io::{BufRead, BufReader, Write as _};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use durable_core::prelude::*;
use durable_core::{InstanceQuery, PostgresOptions, PostgresStore, Store};
use examples::workloads::{hello_sequence5, hello_step};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Args {
    url: String,
    instances: usize,
    workers: Vec<usize>,
    runs: usize,
}

fn parse_args(args: &[String]) -> Result<Args, BoxError> {
    let mut out = Args {
        url: std::env::var("DURABLE_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned()),
        instances: 1000,
        workers: vec![1, 2, 4],
        runs: 1,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => out.url.clone_from(value()?),
            "--instances" => out.instances = value()?.parse()?,
            "--runs" => out.runs = value()?.parse::<usize>()?.max(1),
            "--workers" => {
                out.workers = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
            }
            other => {
                return Err(format!(
                    "unknown argument `{other}`; usage: pg_bench [--url URL] [--instances N] \
                     [--workers 1,2,4] [--runs N]"
                )
                .into());
            }
        }
    }
    Ok(out)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // Figures are taken with no subscriber unless logs are asked for.
    if std::env::var_os("RUST_LOG").is_some() {
        examples::observe::init_tracing();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--worker") {
        let hub = args.get(1).ok_or("--worker needs a task hub")?;
        let url = args.get(2).ok_or("--worker needs a URL")?;
        return worker(hub, url).await;
    }
    let args = parse_args(&args)?;
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    // Other work on the machine competes with the database and the workers: say how much.
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned());
    println!(
        "W2 on PostgreSQL: {} × HelloSequence5 (5 chained no-op activities), {cores} cores, \
         load average {load} before the run",
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
