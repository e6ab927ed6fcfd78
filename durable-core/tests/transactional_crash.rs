//! Transactional activities survive SIGKILL at random points (issue 18): a bank.
//!
//! The test binary re-runs itself as a child process (`DURABLE_TXN_CRASH_CHILD=<dir>`) that
//! opens `bank.redb` in `<dir>`, seeds `ACCOUNTS` accounts once (in one `write_app`
//! transaction), starts a worker with the real clock and starts `TRANSFERS` orchestrations
//! with explicit ids (`IdReusePolicy::RejectExisting`, so a restart leaves existing ones
//! alone). Each orchestration calls the transactional activity `move_money` — which debits,
//! refuses an overdraft (a failure that rolls the debit back), credits and bumps the
//! transfer's row in `APPLIED`, all in the transaction that completes its task — and then an
//! ordinary activity. The parent kills the child with SIGKILL after a seeded random delay,
//! restarts it, repeats, lets a last child finish, then opens the file and checks:
//!
//! - every orchestration completed and saw its transfer's outcome;
//! - a transfer the orchestration saw applied has its `APPLIED` row at exactly 1, a refused
//!   one has none (applied exactly once, or not at all);
//! - each account's balance is its opening balance plus what the applied transfers moved
//!   in and out (so totals are conserved), and none is negative;
//! - each history holds one result of `move_money`.
//!
//! The same workload runs on `PostgreSQL` (`pg_transfers_apply_exactly_once_under_repeated_sigkill`,
//! when `DURABLE_TEST_POSTGRES_URL` names a database): the activity's statements run in the
//! `PgTransaction` it receives, on tables of a fresh task hub's name.
//!
//! `DURABLE_TXN_CRASH_SEED=<seed>` reproduces the plan and the kill delays.
//! `DURABLE_TXN_CRASH_NEGATIVE=1` is a negative control: the same writes go through an
//! ordinary activity (`write_app`, then the result), which runs at least once — a kill
//! between its commit and its result's applies a transfer twice, and the checks fail
//! (when a kill lands in that window).

#[path = "support/kill.rs"]
mod kill;

use kill::{Rng, RoundEnd, spawn_self, tail, wait_or_kill};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use durable_core::history::Event;
use durable_core::prelude::*;
use durable_core::redb::{ReadableTable, ReadableTableMetadata, TableDefinition};
use durable_core::{
    ClientError, PgTransaction, PostgresOptions, PostgresStore, RedbStore, Store, WorkerOptions,
};
use serde::{Deserialize, Serialize};

const CRASH_TEST: &str = "transfers_apply_exactly_once_under_repeated_sigkill";
const PG_CRASH_TEST: &str = "pg_transfers_apply_exactly_once_under_repeated_sigkill";
const ENV_PG_HUB: &str = "DURABLE_TXN_CRASH_PG_HUB";
const ENV_PG_URL: &str = "DURABLE_TEST_POSTGRES_URL";
const ENV_CHILD: &str = "DURABLE_TXN_CRASH_CHILD";
const ENV_SEED: &str = "DURABLE_TXN_CRASH_SEED";
const ENV_NEGATIVE: &str = "DURABLE_TXN_CRASH_NEGATIVE";

const ACCOUNTS: TableDefinition<'_, u32, i64> = TableDefinition::new("accounts");
/// Transfer id → how many times its transaction committed (must be 1 when applied).
const APPLIED: TableDefinition<'_, u64, u32> = TableDefinition::new("applied");

const ACCOUNT_COUNT: u32 = 8;
const OPENING: i64 = 1_000;
const TRANSFERS: u64 = 240;
const KILLS: u32 = 10;
/// A child is killed this long after it was spawned (uniform, seeded).
const KILL_AFTER_MS: (u64, u64) = (20, 400);
/// The `PostgreSQL` children's leases (they outlive a kill there, unlike redb's).
const PG_LEASE: Duration = Duration::from_secs(1);
/// A `PostgreSQL` child is killed this long after it was spawned (it connects first).
const PG_KILL_AFTER_MS: (u64, u64) = (100, 600);
/// Turns a hung final run into a failure with the child's output (not a timing assertion).
const FINAL_GUARD: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Transfer {
    id: u64,
    from: u32,
    to: u32,
    amount: i64,
    /// The negative control: through an ordinary activity.
    at_least_once: bool,
    /// On `PostgreSQL`: the prefix of the application's tables (`<prefix>_accounts`, ...).
    pg: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Outcome {
    transfer: u64,
    /// The payer's balance after the transfer, or why it was refused.
    result: Result<i64, String>,
    note: String,
}

#[activity(transactional)]
fn move_money(tx: &RedbTransaction<'_>, t: Transfer) -> Result<i64, ActivityError> {
    apply(tx, &t)
}

/// The negative control's activity: the same writes, committed apart from the result.
#[activity]
async fn move_money_at_least_once(
    State(store): State<RedbStore>,
    t: Transfer,
) -> Result<i64, ActivityError> {
    store.write_app(move |tx| apply(tx, &t)).await
}

/// The `PostgreSQL` twin of `move_money`.
#[activity(transactional)]
async fn move_money_pg(tx: &PgTransaction<'_>, t: Transfer) -> Result<i64, ActivityError> {
    let p = t.pg.as_deref().unwrap_or_default();
    let (from, to) = (i32::try_from(t.from)?, i32::try_from(t.to)?);
    // Both rows locked in id order: concurrent transfers never deadlock.
    tx.execute(
        &format!("SELECT 1 FROM {p}_accounts WHERE id IN ($1, $2) ORDER BY id FOR UPDATE"),
        &[&from, &to],
    )
    .await?;
    let left: i64 = tx
        .query_one(
            &format!(
                "UPDATE {p}_accounts SET balance = balance - $2 WHERE id = $1 RETURNING balance"
            ),
            &[&from, &t.amount],
        )
        .await?
        .get(0);
    if left < 0 {
        return Err(ActivityError::non_retriable(format!(
            "account {} cannot pay {}",
            t.from, t.amount
        )));
    }
    tx.execute(
        &format!("UPDATE {p}_accounts SET balance = balance + $2 WHERE id = $1"),
        &[&to, &t.amount],
    )
    .await?;
    tx.execute(
        &format!(
            "INSERT INTO {p}_applied (id, times) VALUES ($1, 1)
             ON CONFLICT (id) DO UPDATE SET times = {p}_applied.times + 1"
        ),
        &[&t.id.cast_signed()],
    )
    .await?;
    Ok(left)
}

fn apply(tx: &RedbTransaction<'_>, t: &Transfer) -> Result<i64, ActivityError> {
    let mut accounts = tx.open_table(ACCOUNTS)?;
    let from = accounts.get(t.from)?.map_or(0, |v| v.value()) - t.amount;
    // Written before the check: a refusal must roll it back.
    accounts.insert(t.from, from)?;
    if from < 0 {
        return Err(ActivityError::non_retriable(format!(
            "account {} cannot pay {}",
            t.from, t.amount
        )));
    }
    let to = accounts.get(t.to)?.map_or(0, |v| v.value()) + t.amount;
    accounts.insert(t.to, to)?;
    let mut applied = tx.open_table(APPLIED)?;
    let times = applied.get(t.id)?.map_or(0, |v| v.value()) + 1;
    applied.insert(t.id, times)?;
    Ok(from)
}

#[activity]
async fn notify(id: u64) -> Result<String, ActivityError> {
    Ok(format!("notified {id}"))
}

#[orchestrator]
async fn transfer_flow(
    ctx: OrchestrationContext,
    t: Transfer,
) -> Result<Outcome, OrchestrationError> {
    let result = if t.pg.is_some() {
        ctx.call(move_money_pg, t.clone()).await
    } else if t.at_least_once {
        ctx.call(move_money_at_least_once, t.clone()).await
    } else {
        ctx.call(move_money, t.clone()).await
    };
    let result = result.map_err(|e| e.to_string());
    let note = ctx.call(notify, t.id).await?;
    Ok(Outcome {
        transfer: t.id,
        result,
        note,
    })
}

/// The transfers, from the seed: amounts up to 400 against balances of 1000, so some are
/// refused as balances drift.
fn plan(seed: u64, pg: Option<&str>) -> Vec<Transfer> {
    let at_least_once = std::env::var_os(ENV_NEGATIVE).is_some();
    let mut rng = Rng::new(seed ^ 0x5EED);
    (0..TRANSFERS)
        .map(|id| {
            let from = rng.range(0, u64::from(ACCOUNT_COUNT) - 1) as u32;
            let to = (from + 1 + rng.range(0, u64::from(ACCOUNT_COUNT) - 2) as u32) % ACCOUNT_COUNT;
            Transfer {
                id,
                from,
                to,
                amount: rng.range(1, 400).cast_signed(),
                at_least_once,
                pg: pg.map(str::to_owned),
            }
        })
        .collect()
}

fn instance(id: u64) -> InstanceId {
    InstanceId::new(format!("transfer-{id}")).unwrap()
}

/// Runs the workload until killed, or to the end.
fn child_main(dir: &Path, seed: u64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store =
            RedbStore::open(dir.join("bank.redb")).expect("the store re-opens after a kill");
        store
            .write_app(|tx| -> Result<(), ActivityError> {
                let mut accounts = tx.open_table(ACCOUNTS)?;
                if accounts.len()? == 0 {
                    for a in 0..ACCOUNT_COUNT {
                        accounts.insert(a, OPENING)?;
                    }
                }
                Ok(())
            })
            .await
            .expect("seed the accounts");
        let applied = store
            .read_app(|tx| -> Result<u64, ActivityError> {
                Ok(match tx.open_table(APPLIED)? {
                    Some(t) => t.len()?,
                    None => 0,
                })
            })
            .unwrap();
        println!("applied at open: {applied}");
        let worker = Worker::builder()
            .store(store.clone())
            .state(store.clone())
            .register(move_money_at_least_once)
            .register(move_money)
            .register(notify)
            .register(transfer_flow)
            .start()
            .unwrap();
        start_and_wait(&worker, plan(seed, None)).await;
        worker.shutdown().await;
    });
}

/// Starts the transfers not started yet and waits for them all.
async fn start_and_wait(worker: &Worker, plan: Vec<Transfer>) {
    let client = worker.client();
    for t in plan {
        let options = StartOptions::new()
            .instance_id(instance(t.id))
            .reuse(IdReusePolicy::RejectExisting);
        match client.start_with(transfer_flow, t, options).await {
            Ok(_) | Err(ClientError::InstanceAlreadyExists(_)) => {}
            Err(e) => panic!("start failed: {e}"),
        }
    }
    for id in 0..TRANSFERS {
        client
            .handle::<Outcome>(instance(id))
            .wait()
            .await
            .expect("the orchestration completes");
    }
}

/// Creates the application's tables `<hub>_*` and seeds the accounts (idempotent).
async fn pg_tables(client: &tokio_postgres::Client, hub: &str) {
    client
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {hub}_accounts (id int PRIMARY KEY, balance bigint NOT NULL);
             CREATE TABLE IF NOT EXISTS {hub}_applied (id bigint PRIMARY KEY, times int NOT NULL);
             INSERT INTO {hub}_accounts SELECT g, {OPENING} FROM generate_series(0, {}) g
             ON CONFLICT DO NOTHING;",
            ACCOUNT_COUNT - 1
        ))
        .await
        .expect("seed the accounts");
}

/// The `PostgreSQL` child: the same workload on task hub `hub`, tables `<hub>_*`.
fn pg_child_main(url: &str, hub: &str, seed: u64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = PostgresStore::connect(url, PostgresOptions::new(hub))
            .await
            .expect("connect");
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        // The parent made the tables before the first child; idempotent all the same.
        pg_tables(&client, hub).await;
        let applied: i64 = client
            .query_one(&format!("SELECT count(*) FROM {hub}_applied"), &[])
            .await
            .unwrap()
            .get(0);
        println!("applied at open: {applied}");
        // Short leases: what a killed child leased is taken over soon.
        let mut options = WorkerOptions::default();
        options.orchestration_lock = PG_LEASE;
        options.activity_lock = PG_LEASE;
        let worker = Worker::builder()
            .store(store)
            .options(options)
            .register(move_money_pg)
            .register(notify)
            .register(transfer_flow)
            .start()
            .unwrap();
        start_and_wait(&worker, plan(seed, Some(hub))).await;
        worker.shutdown().await;
    });
}

/// Spawns, kills and restarts children of `test`, then lets a last one finish.
#[allow(clippy::disallowed_methods, reason = "the parent reports wall time")]
fn kill_rounds(
    test: &str,
    envs: &[(&str, String)],
    dir: &Path,
    seed: u64,
    kill_after_ms: (u64, u64),
) {
    let mut rng = Rng::new(seed);
    let t0 = Instant::now();
    let mut delays = Vec::new();
    for round in 0..KILLS {
        let delay = Duration::from_millis(rng.range(kill_after_ms.0, kill_after_ms.1));
        let log = dir.join(format!("child-{round:02}.out"));
        let mut child = spawn_self(test, envs, &log);
        match wait_or_kill(&mut child, delay) {
            RoundEnd::Killed => delays.push(delay.as_millis()),
            RoundEnd::Exited(s) if s.success() => {
                println!("round {round}: the workload finished before the kill");
                break;
            }
            RoundEnd::Exited(s) => panic!("child of round {round} failed ({s}):\n{}", tail(&log)),
        }
    }
    let log = dir.join("child-final.out");
    let mut child = spawn_self(test, envs, &log);
    match wait_or_kill(&mut child, FINAL_GUARD) {
        RoundEnd::Exited(s) if s.success() => {}
        other => panic!("final child did not finish ({other:?}):\n{}", tail(&log)),
    }
    let progress: Vec<String> = (0..KILLS)
        .filter_map(|round| {
            let out = std::fs::read_to_string(dir.join(format!("child-{round:02}.out"))).ok()?;
            let (_, after) = out.split_once("applied at open: ")?;
            Some(after.lines().next()?.to_owned())
        })
        .collect();
    println!(
        "killed {} times after {delays:?} ms; transfers applied when each child opened the store: {progress:?}; total {:.2?}",
        delays.len(),
        t0.elapsed()
    );
}

#[test]
fn transfers_apply_exactly_once_under_repeated_sigkill() {
    let seed = kill::seed(ENV_SEED);
    if let Some(dir) = std::env::var_os(ENV_CHILD) {
        child_main(Path::new(&dir), seed);
        return;
    }
    println!("transactional crash test: seed {seed} ({ENV_SEED}={seed} reproduces it)");
    let dir = tempfile::tempdir().expect("temp dir");
    let envs = [
        (ENV_CHILD, dir.path().display().to_string()),
        (ENV_SEED, seed.to_string()),
    ];
    kill_rounds(CRASH_TEST, &envs, dir.path(), seed, KILL_AFTER_MS);
    let store = RedbStore::open(dir.path().join("bank.redb")).unwrap();
    let (balances, applied) = store
        .read_app(|tx| -> Result<_, ActivityError> {
            let mut balances = BTreeMap::new();
            for row in tx.open_table(ACCOUNTS)?.expect("accounts").iter()? {
                let (k, v) = row?;
                balances.insert(k.value(), v.value());
            }
            let mut applied = BTreeMap::new();
            if let Some(t) = tx.open_table(APPLIED)? {
                for row in t.iter()? {
                    let (k, v) = row?;
                    applied.insert(k.value(), v.value());
                }
            }
            Ok((balances, applied))
        })
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(verify(&store, &plan(seed, None), &balances, &applied));
}

#[test]
fn pg_transfers_apply_exactly_once_under_repeated_sigkill() {
    let seed = kill::seed(ENV_SEED);
    let Some(url) = std::env::var(ENV_PG_URL).ok().filter(|u| !u.is_empty()) else {
        println!("skipped: {ENV_PG_URL} is not set");
        return;
    };
    if let Ok(hub) = std::env::var(ENV_PG_HUB) {
        pg_child_main(&url, &hub, seed);
        return;
    }
    // The process id keeps two runs of one seed apart.
    let hub = format!(
        "durable_txn_crash_{}_{}",
        seed % 1_000_000_007,
        std::process::id()
    );
    println!(
        "PostgreSQL transactional crash test: seed {seed} ({ENV_SEED}={seed} reproduces it), hub {hub}"
    );
    // The task hub and the tables exist before the first child: a killed child's session
    // may still be running its statements when the next child starts, and two concurrent
    // `CREATE TABLE IF NOT EXISTS` of one table can fail on the type's unique index.
    let setup = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    setup.block_on(async {
        PostgresStore::connect(&url, PostgresOptions::new(&hub))
            .await
            .expect("create the task hub");
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        let driver = tokio::spawn(connection);
        pg_tables(&client, &hub).await;
        drop(client);
        let _ = driver.await;
    });
    drop(setup);
    let dir = tempfile::tempdir().expect("temp dir");
    let envs = [
        (ENV_PG_HUB, hub.clone()),
        (ENV_SEED, seed.to_string()),
        (ENV_PG_URL, url.clone()),
    ];
    kill_rounds(PG_CRASH_TEST, &envs, dir.path(), seed, PG_KILL_AFTER_MS);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = PostgresStore::connect(&url, PostgresOptions::new(&hub))
            .await
            .expect("connect");
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        let mut balances = BTreeMap::new();
        for row in client
            .query(&format!("SELECT id, balance FROM {hub}_accounts"), &[])
            .await
            .unwrap()
        {
            let (id, balance): (i32, i64) = (row.get(0), row.get(1));
            balances.insert(id.cast_unsigned(), balance);
        }
        let mut applied = BTreeMap::new();
        for row in client
            .query(&format!("SELECT id, times FROM {hub}_applied"), &[])
            .await
            .unwrap()
        {
            let (id, times): (i64, i32) = (row.get(0), row.get(1));
            applied.insert(id.cast_unsigned(), times.cast_unsigned());
        }
        let plan = plan(seed, Some(&hub));
        verify(&store, &plan, &balances, &applied).await;
        client
            .batch_execute(&format!(
                "DROP TABLE {hub}_accounts; DROP TABLE {hub}_applied;"
            ))
            .await
            .unwrap();
        store.drop_task_hub().await.unwrap();
    });
}

/// Checks the outcomes the orchestrations saw against the application's tables.
async fn verify(
    store: &dyn Store,
    plan: &[Transfer],
    balances: &BTreeMap<u32, i64>,
    applied: &BTreeMap<u64, u32>,
) {
    let mut expected: BTreeMap<u32, i64> = (0..ACCOUNT_COUNT).map(|a| (a, OPENING)).collect();
    let mut refused = 0;
    for t in plan {
        let id = instance(t.id);
        let record = store
            .read_instance(&id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{id} missing"));
        assert_eq!(record.status, RuntimeStatus::Completed, "{id}: {record:?}");
        let outcome: Outcome = record.output().unwrap().expect("an output");
        assert_eq!(outcome.transfer, t.id);
        assert_eq!(outcome.note, format!("notified {}", t.id));
        match &outcome.result {
            Ok(_) => {
                assert_eq!(
                    applied.get(&t.id),
                    Some(&1),
                    "transfer {} applied exactly once",
                    t.id
                );
                *expected.get_mut(&t.from).unwrap() -= t.amount;
                *expected.get_mut(&t.to).unwrap() += t.amount;
            }
            Err(why) => {
                assert!(why.contains("cannot pay"), "{id}: {why}");
                assert_eq!(
                    applied.get(&t.id),
                    None,
                    "refused transfer {} applied",
                    t.id
                );
                refused += 1;
            }
        }
        let history = store.read_history(&id).await.unwrap();
        let results = history
            .iter()
            .filter(|e| {
                matches!(
                    &e.event,
                    Event::TaskCompleted { seq: 0, .. } | Event::TaskFailed { seq: 0, .. }
                )
            })
            .count();
        assert_eq!(results, 1, "{id}: one result of move_money");
    }
    assert_eq!(
        applied.len() + refused,
        plan.len(),
        "no APPLIED row without an orchestration that saw it"
    );
    assert_eq!(balances, &expected, "balances follow the applied transfers");
    assert_eq!(
        balances.values().sum::<i64>(),
        OPENING * i64::from(ACCOUNT_COUNT),
        "totals conserved"
    );
    assert!(balances.values().all(|b| *b >= 0), "{balances:?}");
    println!(
        "verified {} transfers: {} applied once each, {refused} refused and rolled back",
        plan.len(),
        applied.len()
    );
}
