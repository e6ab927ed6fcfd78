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
//! `DURABLE_TXN_CRASH_SEED=<seed>` reproduces the plan and the kill delays.
//! `DURABLE_TXN_CRASH_NEGATIVE=1` is a negative control: the same writes go through an
//! ordinary activity (`write_app`, then the result), which runs at least once — a kill
//! between its commit and its result's applies a transfer twice, and the checks fail
//! (when a kill lands in that window).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use durable_core::history::Event;
use durable_core::prelude::*;
use durable_core::redb::{ReadableTable, ReadableTableMetadata, TableDefinition};
use durable_core::{ClientError, RedbStore, Store};
use serde::{Deserialize, Serialize};

const CRASH_TEST: &str = "transfers_apply_exactly_once_under_repeated_sigkill";
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
    let result = if t.at_least_once {
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

/// `SplitMix64`: small and seeded.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// The transfers, from the seed: amounts up to 400 against balances of 1000, so some are
/// refused as balances drift.
fn plan(seed: u64) -> Vec<Transfer> {
    let at_least_once = std::env::var_os(ENV_NEGATIVE).is_some();
    let mut rng = Rng(seed ^ 0x5EED);
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
        let client = worker.client();
        for t in plan(seed) {
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
        worker.shutdown().await;
    });
}

#[derive(Debug)]
enum RoundEnd {
    Killed,
    Exited(ExitStatus),
}

fn spawn_self(dir: &Path, seed: u64, log: &Path) -> Child {
    let out = File::create(log).expect("child log file");
    let err = out.try_clone().expect("child log file");
    Command::new(std::env::current_exe().expect("current exe"))
        .args(["--exact", CRASH_TEST, "--nocapture", "--test-threads=1"])
        .env(ENV_CHILD, dir)
        .env(ENV_SEED, seed.to_string())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawn the child")
}

/// Waits up to `limit` for the child to exit; kills it (SIGKILL) if it has not.
#[allow(
    clippy::disallowed_methods,
    reason = "the parent times its kills in real time"
)]
fn wait_or_kill(child: &mut Child, limit: Duration) -> RoundEnd {
    let until = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("poll the child") {
            return RoundEnd::Exited(status);
        }
        let now = Instant::now();
        if now >= until {
            child.kill().expect("SIGKILL the child");
            child.wait().expect("reap the child");
            return RoundEnd::Killed;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(2)));
    }
}

#[allow(
    clippy::disallowed_methods,
    reason = "a seed from the clock when none is given"
)]
fn seed() -> u64 {
    std::env::var(ENV_SEED)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}

#[test]
#[allow(clippy::disallowed_methods, reason = "the parent reports wall time")]
fn transfers_apply_exactly_once_under_repeated_sigkill() {
    let seed = seed();
    if let Some(dir) = std::env::var_os(ENV_CHILD) {
        child_main(Path::new(&dir), seed);
        return;
    }
    println!("transactional crash test: seed {seed} ({ENV_SEED}={seed} reproduces it)");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut rng = Rng(seed);
    let t0 = Instant::now();
    let mut delays = Vec::new();
    for round in 0..KILLS {
        let delay = Duration::from_millis(rng.range(KILL_AFTER_MS.0, KILL_AFTER_MS.1));
        let log = dir.path().join(format!("child-{round:02}.out"));
        let mut child = spawn_self(dir.path(), seed, &log);
        match wait_or_kill(&mut child, delay) {
            RoundEnd::Killed => delays.push(delay.as_millis()),
            RoundEnd::Exited(s) if s.success() => {
                println!("round {round}: the workload finished before the kill");
                break;
            }
            RoundEnd::Exited(s) => panic!(
                "child of round {round} failed ({s}):\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ),
        }
    }
    let log = dir.path().join("child-final.out");
    let mut child = spawn_self(dir.path(), seed, &log);
    match wait_or_kill(&mut child, FINAL_GUARD) {
        RoundEnd::Exited(s) if s.success() => {}
        other => panic!(
            "final child did not finish ({other:?}):\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        ),
    }
    let progress: Vec<String> = (0..KILLS)
        .filter_map(|round| {
            let text =
                std::fs::read_to_string(dir.path().join(format!("child-{round:02}.out"))).ok()?;
            let (_, after) = text.split_once("applied at open: ")?;
            Some(after.lines().next()?.to_owned())
        })
        .collect();
    println!(
        "killed {} times after {delays:?} ms; transfers applied when each child opened the store: {progress:?}; total {:.2?}",
        delays.len(),
        t0.elapsed()
    );
    verify(dir.path(), &plan(seed));
}

fn verify(dir: &Path, plan: &[Transfer]) {
    let store = RedbStore::open(dir.join("bank.redb")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
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
    let mut expected: BTreeMap<u32, i64> = (0..ACCOUNT_COUNT).map(|a| (a, OPENING)).collect();
    let mut refused = 0;
    for t in plan {
        let id = instance(t.id);
        let record = rt
            .block_on(store.read_instance(&id))
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
        let history = rt.block_on(store.read_history(&id)).unwrap();
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
    assert_eq!(balances, expected, "balances follow the applied transfers");
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
