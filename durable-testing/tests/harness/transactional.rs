//! Transactional activities under the harness: on the in-memory store's redb database, with
//! a crash after every commit, and mocked.

use durable_core::prelude::*;
use durable_core::redb::{ReadableTable, TableDefinition};
use durable_testing::TestEnv;

const ACCOUNTS: TableDefinition<'_, u32, i64> = TableDefinition::new("accounts");
/// Transfer id → how many times its transaction committed.
const APPLIED: TableDefinition<'_, u32, u32> = TableDefinition::new("applied");

#[activity(transactional)]
fn move_money(tx: &RedbTransaction<'_>, t: (u32, u32, u32, i64)) -> Result<i64, ActivityError> {
    let (id, from, to, amount) = t;
    let mut accounts = tx.open_table(ACCOUNTS)?;
    let left = accounts.get(from)?.map_or(0, |v| v.value()) - amount;
    accounts.insert(from, left)?;
    let credited = accounts.get(to)?.map_or(0, |v| v.value()) + amount;
    accounts.insert(to, credited)?;
    let mut applied = tx.open_table(APPLIED)?;
    let times = applied.get(id)?.map_or(0, |v| v.value()) + 1;
    applied.insert(id, times)?;
    Ok(left)
}

#[activity]
async fn notify(id: u32) -> Result<u32, ActivityError> {
    Ok(id)
}

#[orchestrator]
async fn transfers(ctx: OrchestrationContext, count: u32) -> Result<Vec<i64>, OrchestrationError> {
    let mut left = Vec::new();
    for id in 0..count {
        left.push(ctx.call(move_money, (id, id % 3, (id + 1) % 3, 10)).await?);
        ctx.call(notify, id).await?;
    }
    Ok(left)
}

fn table(env: &TestEnv, def: TableDefinition<'_, u32, i64>) -> Vec<(u32, i64)> {
    env.store()
        .read_app(|tx| -> Result<_, ActivityError> {
            let Some(t) = tx.open_table(def)? else {
                return Ok(Vec::new());
            };
            let mut out = Vec::new();
            for row in t.iter()? {
                let (k, v) = row?;
                out.push((k.value(), v.value()));
            }
            Ok(out)
        })
        .unwrap()
}

fn applied(env: &TestEnv) -> Vec<(u32, u32)> {
    env.store()
        .read_app(|tx| -> Result<_, ActivityError> {
            let Some(t) = tx.open_table(APPLIED)? else {
                return Ok(Vec::new());
            };
            let mut out = Vec::new();
            for row in t.iter()? {
                let (k, v) = row?;
                out.push((k.value(), v.value()));
            }
            Ok(out)
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_every_commit_applies_each_transfer_once() {
    let env = TestEnv::builder()
        .register(move_money)
        .register(notify)
        .register(transfers)
        .crash_after_every_commit()
        .start()
        .unwrap();
    env.store()
        .write_app(|tx| -> Result<(), ActivityError> {
            let mut accounts = tx.open_table(ACCOUNTS)?;
            for a in 0..3 {
                accounts.insert(a, 100)?;
            }
            Ok(())
        })
        .await
        .unwrap();
    let run = env.start(transfers, 6).await.unwrap();
    let left = env.wait(&run).await.unwrap();
    assert!(env.crashes() >= 12, "crashed {} times", env.crashes());
    // 0 pays 1, 1 pays 2, 2 pays 0, twice: each payer had 100 (or 110 once credited).
    assert_eq!(left, [90, 100, 100, 90, 100, 100]);
    assert_eq!(applied(&env), (0..6).map(|id| (id, 1)).collect::<Vec<_>>());
    assert_eq!(table(&env, ACCOUNTS), [(0, 100), (1, 100), (2, 100)]);
    let h = env.history(run.id()).await;
    assert_eq!(h.count("TaskCompleted"), 12, "{}", h.pretty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mocked_transactional_activity_runs_the_mock_and_writes_nothing() {
    let env = TestEnv::builder()
        .register(move_money)
        .register(notify)
        .register(transfers)
        .mock(move_money, |(id, ..)| Ok(-i64::from(id)))
        .start()
        .unwrap();
    let run = env.start(transfers, 2).await.unwrap();
    assert_eq!(env.wait(&run).await.unwrap(), [0, -1]);
    assert_eq!(env.call_count(move_money), 2);
    assert!(applied(&env).is_empty());
}
