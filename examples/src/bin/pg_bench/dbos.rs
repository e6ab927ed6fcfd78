//! W1 and W2 on DBOS's Rust SDK (`dbos`), on the same Postgres as ours, in its own schema
//! (`dbos_pg_bench`, dropped before and after). Built only with `--features dbos`.
//!
//! The workflow is ours: five sequential no-op steps, the string going through each. The
//! workflows run in this process (DBOS runs a started workflow as a task of the starting
//! process), so W1 is `run` (start, then await the local task) and W2 starts every workflow
//! at once and awaits the handles. DBOS checkpoints each step's output with a durable commit
//! (`synchronous_commit` as the server has it, on by default), as we commit each episode.

use std::time::{Duration, Instant};

use dbos::{Config, DBOS, WorkflowRef};

use super::BoxError;

/// The schema DBOS works in: never a task hub's (ours are `bench_…`).
const SCHEMA: &str = "dbos_pg_bench";

/// A launched DBOS with the workflow registered.
pub(crate) struct Env {
    dbos: DBOS,
    workflow: WorkflowRef<String, String>,
    url: String,
}

/// The workflow: five sequential no-op steps, string in and out.
async fn hello_sequence5(name: String) -> dbos::Result<String> {
    let mut text = name;
    for _ in 0..5 {
        let input = text;
        text = dbos::step("hello_step", move || {
            let input = input.clone();
            async move { dbos::Result::Ok(input) }
        })
        .await?;
    }
    Ok(text)
}

impl Env {
    /// Drops what an earlier run left, then launches DBOS on `url` in its own schema.
    pub(crate) async fn new(url: &str) -> Result<Self, BoxError> {
        drop_schema(url).await?;
        let dbos = DBOS::new(Config {
            app_version: Some("pg_bench".to_owned()),
            schema: SCHEMA.to_owned(),
            // As many connections as our store opens (16 pooled, 4 for leases, 1 listening).
            max_connections: 21,
            ..Config::new("pg_bench", url)
        });
        let workflow = dbos.register_workflow("hello_sequence5", hello_sequence5)?;
        dbos.launch().await?;
        Ok(Self {
            dbos,
            workflow,
            url: url.to_owned(),
        })
    }

    /// One W1 sample: one workflow from start to its result, in ms.
    pub(crate) async fn w1_once(&self, input: &str) -> Result<f64, BoxError> {
        let t = Instant::now();
        let result = self.workflow.run(input.to_owned()).await?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        if result != input {
            return Err(format!("DBOS W1: wrong result {result:?}").into());
        }
        Ok(ms)
    }

    /// W2: `n` workflows started at once (16 starters), then every result awaited; the time
    /// from the first start to the last result.
    pub(crate) async fn w2(&self, n: usize) -> Result<Duration, BoxError> {
        let t = Instant::now();
        let mut starts = tokio::task::JoinSet::new();
        let per = n.div_ceil(16);
        for chunk in 0..16 {
            let workflow = self.workflow.clone();
            starts.spawn(async move {
                let mut handles = Vec::with_capacity(per);
                for i in chunk * per..((chunk + 1) * per).min(n) {
                    handles.push((i, workflow.start(format!("w2-{i}")).await?));
                }
                for (i, h) in handles {
                    let result = h.result().await?;
                    if result != format!("w2-{i}") {
                        return Err(format!("DBOS W2: wrong result {result:?}").into());
                    }
                }
                Ok::<(), BoxError>(())
            });
        }
        while let Some(r) = starts.join_next().await {
            r??;
        }
        Ok(t.elapsed())
    }

    /// Shuts DBOS down and drops its schema.
    pub(crate) async fn close(self) -> Result<(), BoxError> {
        self.dbos.shutdown().await;
        drop_schema(&self.url).await
    }
}

async fn drop_schema(url: &str) -> Result<(), BoxError> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let task = tokio::spawn(connection);
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        .await?;
    drop(client);
    let _ = task.await;
    Ok(())
}
