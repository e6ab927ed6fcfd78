//! The dashboard's bench figure: the instances list page rendered server-side over 100,000
//! instances, on the in-memory store and on redb (relaxed durability, to fill it quickly).
//!
//! ```text
//! cargo run --release -p examples --bin dash_bench -- [--count N] [--store memory|redb]
//! DURABLE_BENCH_POSTGRES_URL=postgres://… cargo run --release -p examples --features postgres \
//!     --bin dash_bench -- --store postgres
//! ```
//!
//! Fills the store through the client (instances stay Pending: no worker runs them; 100 of
//! them have the name `rare`), serves the HTTP API and the dashboard on loopback, and prints
//! the median of 3 requests per page. A figure, never an assert.
#![allow(clippy::disallowed_methods, reason = "a benchmark measures wall time")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use durable_core::http::{self, HttpOptions};
use durable_core::storage::RedbDurability;
use durable_core::{Client, InstanceId, MemoryStore, RedbStore, StartOptions, Store};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut count = 100_000usize;
    let mut stores = vec!["memory", "redb", "postgres"];
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--count" => count = it.next().ok_or("--count N")?.parse()?,
            "--store" => {
                let s = it.next().ok_or("--store memory|redb")?;
                stores.retain(|x| x == s);
            }
            other => return Err(format!("unknown argument `{other}`").into()),
        }
    }
    for kind in stores {
        let dir = tempfile::tempdir()?;
        let store: Arc<dyn Store> = match kind {
            "memory" => Arc::new(MemoryStore::new()),
            "postgres" => {
                postgres(count).await?;
                continue;
            }
            _ => Arc::new(
                RedbStore::builder()
                    .durability(RedbDurability::Relaxed)
                    .open(dir.path().join("dash.redb"))?,
            ),
        };
        run(kind, store, count).await?;
    }
    Ok(())
}

/// The figures on a fresh task hub on `DURABLE_BENCH_POSTGRES_URL` (dropped afterwards),
/// when set and built with `postgres`.
#[cfg(feature = "postgres")]
async fn postgres(count: usize) -> Result<(), BoxError> {
    use durable_core::{PostgresOptions, PostgresStore};
    let Ok(url) = std::env::var("DURABLE_BENCH_POSTGRES_URL") else {
        eprintln!("postgres: skipped (DURABLE_BENCH_POSTGRES_URL not set)");
        return Ok(());
    };
    let hub = format!("dash_{}", &InstanceId::random().as_str()[..12]);
    let store = PostgresStore::connect(&url, PostgresOptions::new(&hub)).await?;
    let result = run("postgres", Arc::new(store.clone()), count).await;
    store.drop_task_hub().await?;
    result
}

#[cfg(not(feature = "postgres"))]
#[allow(
    clippy::unused_async,
    reason = "the same signature as with the feature"
)]
async fn postgres(_count: usize) -> Result<(), BoxError> {
    eprintln!("postgres: skipped (build with `--features postgres`)");
    Ok(())
}

async fn run(kind: &str, store: Arc<dyn Store>, count: usize) -> Result<(), BoxError> {
    let client = Client::new(store);
    let fill = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let per_task = count.div_ceil(64);
    for t in 0..64 {
        let client = client.clone();
        tasks.spawn(async move {
            for i in (t * per_task)..((t + 1) * per_task).min(count) {
                let name = if i % (count / 100).max(1) == 0 {
                    "rare"
                } else {
                    "common"
                };
                let id = InstanceId::new(format!("inst-{i:07}"))?;
                client
                    .start_raw(name, "{\"n\":1}", StartOptions::new().instance_id(id))
                    .await?;
            }
            Ok::<_, BoxError>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    eprintln!(
        "{kind}: {count} instances created in {:.1?}",
        fill.elapsed()
    );
    let server = http::serve(client, ([127, 0, 0, 1], 0).into(), HttpOptions::new()).await?;
    let http: HttpClient<_, Full<Bytes>> = HttpClient::builder(TokioExecutor::new()).build_http();
    for (label, path) in [
        ("list, first page + counts", "/dashboard/"),
        ("list, name=rare", "/dashboard/?name=rare"),
        ("list, status=Running (none)", "/dashboard/?status=Running"),
        ("list, prefix=inst-00500", "/dashboard/?prefix=inst-00500"),
        ("instance page", "/dashboard/instances/inst-0000001"),
    ] {
        let mut times = Vec::new();
        let mut size = 0;
        for _ in 0..3 {
            let started = Instant::now();
            let response = http.get(format!("{}{path}", server.url()).parse()?).await?;
            let status = response.status();
            size = response.into_body().collect().await?.to_bytes().len();
            times.push(started.elapsed());
            if !status.is_success() {
                return Err(format!("{path}: {status}").into());
            }
        }
        times.sort();
        println!(
            "DASH {kind:<6} {count} instances  {label:<30} median {:>8.1} ms  ({size} bytes)",
            ms(times[1])
        );
    }
    server.shutdown().await?;
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
