//! Durable entities end to end: signals, calls, state, deletion, listing and critical
//! sections, on the real worker with the in-memory store.

use std::time::Duration;

use durable_core::prelude::*;
use durable_core::{EntityQuery, Store};
use serde::{Deserialize, Serialize};

#[entity]
#[derive(Default, Serialize, Deserialize, Debug, PartialEq)]
struct Counter {
    value: i64,
}

#[entity]
impl Counter {
    /// Adds to the counter.
    fn add(&mut self, amount: i64) {
        self.value += amount;
    }

    /// Fails, after changing the state (the change must be rolled back).
    fn add_then_fail(&mut self, amount: i64) -> Result<(), ActivityError> {
        self.value += amount;
        Err(ActivityError::new("refused"))
    }

    fn get(&self) -> i64 {
        self.value
    }

    fn reset(&mut self) {
        self.value = 0;
    }
}

#[entity]
#[derive(Default, Serialize, Deserialize, Debug)]
struct Log {
    items: Vec<u32>,
}

// `append` is async and `forward`/`erase` ignore the state on purpose: they exercise async
// operations and context-only operations.
#[allow(clippy::unused_async, clippy::unused_self)]
#[entity]
impl Log {
    async fn append(&mut self, item: u32) {
        self.items.push(item);
    }

    /// Forwards the item to a counter and deletes itself when asked.
    fn forward(&mut self, ctx: &EntityContext, amount: i64) {
        ctx.signal_entity::<Counter>(&ctx.id().key).add(amount);
    }

    fn erase(&mut self, ctx: &EntityContext) {
        ctx.delete_state();
    }
}

#[entity]
#[derive(Serialize, Deserialize, Debug)]
struct Account {
    balance: i64,
}

#[entity]
impl Account {
    fn initial() -> Self {
        Account { balance: 100 }
    }

    fn deposit(&mut self, amount: i64) {
        self.balance += amount;
    }

    fn withdraw(&mut self, amount: i64) -> Result<i64, ActivityError> {
        if amount > self.balance {
            return Err(ActivityError::non_retriable("insufficient funds"));
        }
        self.balance -= amount;
        Ok(self.balance)
    }

    fn balance(&self) -> i64 {
        self.balance
    }
}

fn worker() -> (Worker, Client, MemoryStore) {
    let store = MemoryStore::new();
    let worker = Worker::builder()
        .store(store.clone())
        .register(Counter::entity())
        .register(Log::entity())
        .register(Account::entity())
        .register(counting)
        .register(transfer)
        .register(bad_section)
        .register(dies_in_section)
        .register(echo)
        .start()
        .unwrap();
    let client = worker.client();
    (worker, client, store)
}

/// Waits (woken by store changes) until `f` returns `Some`.
async fn eventually<T, F, Fut>(store: &MemoryStore, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let mut changes = store.signals().changed.subscribe();
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Some(v) = f().await {
                return v;
            }
            changes.changed().await.unwrap();
        }
    })
    .await
    .expect("the engine made progress")
}

async fn counter_value(client: &Client, key: &str) -> Option<i64> {
    client
        .entity::<Counter>(key)
        .state()
        .await
        .unwrap()
        .map(|c| c.value)
}

#[orchestrator]
async fn counting(
    ctx: OrchestrationContext,
    key: String,
) -> Result<(i64, String), OrchestrationError> {
    let counter = ctx.entity::<Counter>(&key);
    counter.add(10).await?;
    ctx.signal_entity::<Counter>(&key).add(5);
    let failed = match counter.add_then_fail(1000).await {
        Err(TaskError::Failed(f)) => f.details.message,
        other => format!("unexpected {other:?}"),
    };
    let unknown = ctx
        .call_entity::<(), _>(counter.id(), "no_such_op", &())
        .await
        .unwrap_err();
    let value = counter.get().await?;
    Ok((
        value,
        format!(
            "{failed} | {}",
            unknown.failure().map_or("", |f| f.error_type.as_str())
        ),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregator_counts_signals_from_many_sources() {
    let (_w, client, store) = worker();
    assert_eq!(
        counter_value(&client, "hits").await,
        None,
        "no state before the first operation"
    );
    let mut tasks = Vec::new();
    for i in 1..=20 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            c.entity::<Counter>("hits").add(i).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    // Orchestrations signal and call the same entity.
    let run = counting::start(&client, "hits".into()).await.unwrap();
    let (seen, errors) = run.wait().await.unwrap();
    assert_eq!(errors, "refused | UnknownOperation");
    assert!(seen >= 210 + 10, "the call saw the earlier signals: {seen}");
    let total = eventually(&store, || async {
        counter_value(&client, "hits")
            .await
            .filter(|v| *v == 210 + 15)
    })
    .await;
    assert_eq!(total, 225, "the failed operation was rolled back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_from_one_sender_run_in_order_and_effects_apply() {
    let (_w, client, store) = worker();
    for i in 0..30 {
        client.entity::<Log>("l1").append(i).await.unwrap();
    }
    let items = eventually(&store, || async {
        client
            .entity::<Log>("l1")
            .state()
            .await
            .unwrap()
            .map(|l| l.items)
            .filter(|i| i.len() == 30)
    })
    .await;
    assert_eq!(items, (0..30).collect::<Vec<_>>());

    // An operation signals another entity through its context.
    client.entity::<Log>("shared").forward(7).await.unwrap();
    let v = eventually(&store, || async { counter_value(&client, "shared").await }).await;
    assert_eq!(v, 7);

    // Deletion through the context and through the built-in operation.
    client.entity::<Log>("l1").erase().await.unwrap();
    eventually(&store, || async {
        client
            .entity::<Log>("l1")
            .state()
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    client.entity::<Counter>("shared").delete().await.unwrap();
    eventually(&store, || async {
        counter_value(&client, "shared")
            .await
            .is_none()
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entities_are_listed_with_paging() {
    let (_w, client, store) = worker();
    for i in 0..12 {
        client
            .entity::<Counter>(&format!("c{i:02}"))
            .add(i)
            .await
            .unwrap();
    }
    client.entity::<Log>("x").append(1).await.unwrap();
    eventually(&store, || async {
        counter_value(&client, "c11").await.filter(|v| *v == 11)
    })
    .await;
    eventually(&store, || async {
        let page = client
            .list_entities(&EntityQuery::new().name("counter").page_size(100))
            .await
            .unwrap();
        (page.entities.len() == 12).then_some(())
    })
    .await;
    let mut q = EntityQuery::new().name("Counter").with_state().page_size(5);
    let mut seen = Vec::new();
    loop {
        let page = client.list_entities(&q).await.unwrap();
        seen.extend(page.entities.into_iter().map(|e| (e.id.key, e.state)));
        match page.continuation {
            Some(c) => q = q.continuation(Some(c)),
            None => break,
        }
    }
    assert_eq!(seen.len(), 12);
    assert_eq!(
        seen[3],
        ("c03".to_owned(), Some("{\"value\":3}".to_owned()))
    );
    // Deleted entities do not leave empty pages: the first page of one skips them.
    for i in 0..4 {
        client
            .entity::<Counter>(&format!("c{i:02}"))
            .delete()
            .await
            .unwrap();
    }
    eventually(&store, || async {
        let page = client
            .list_entities(&EntityQuery::new().name("counter").page_size(100))
            .await
            .unwrap();
        (page.entities.len() == 8).then_some(())
    })
    .await;
    let first = client
        .list_entities(&EntityQuery::new().name("counter").page_size(1))
        .await
        .unwrap();
    assert_eq!(first.entities.len(), 1);
    assert_eq!(first.entities[0].id.key, "c04");
    assert!(first.continuation.is_some());
    // Orchestration queries do not list entities.
    let orchestrations = client
        .query(&durable_core::InstanceQuery::new())
        .await
        .unwrap();
    assert!(
        orchestrations
            .instances
            .iter()
            .all(|r| !r.instance_id.as_str().starts_with('@'))
    );
    // A bad key is a clear error.
    assert!(matches!(
        client.entity::<Counter>("bad/key").add(1).await,
        Err(ClientError::InvalidInstanceId(_))
    ));
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Transfer {
    from: String,
    to: String,
    amount: i64,
}

#[orchestrator]
async fn transfer(ctx: OrchestrationContext, t: Transfer) -> Result<bool, OrchestrationError> {
    let from = EntityId::of::<Account>(&t.from)?;
    let to = EntityId::of::<Account>(&t.to)?;
    let section = ctx.lock(&[from, to]).await?;
    let source = ctx.entity::<Account>(&t.from);
    let available = source.balance().await?;
    if available < t.amount {
        section.release();
        return Ok(false);
    }
    source.withdraw(t.amount).await?;
    ctx.entity::<Account>(&t.to).deposit(t.amount).await?;
    drop(section);
    Ok(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transfers_conserve_money_and_never_deadlock() {
    let (_w, client, store) = worker();
    let accounts = ["a", "b", "c", "d"];
    let mut runs = Vec::new();
    for i in 0..40usize {
        // Overlapping pairs in both directions: a->b and b->a compete for the same locks.
        let from = accounts[i % 4];
        let to = accounts[(i + 1 + i / 4) % 4];
        let to = if to == from {
            accounts[(i + 2) % 4]
        } else {
            to
        };
        let t = Transfer {
            from: from.into(),
            to: to.into(),
            amount: 7 + i64::try_from(i % 5).unwrap() * 11,
        };
        runs.push(transfer::start(&client, t).await.unwrap());
    }
    for r in &runs {
        r.wait().await.unwrap();
    }
    let mut total = 0;
    for a in accounts {
        let acct = eventually(&store, || async {
            client.read_entity::<Account>(a).await.unwrap()
        })
        .await;
        assert!(acct.balance >= 0);
        total += acct.balance;
    }
    assert_eq!(total, 400, "money is conserved");
    // No lock is left behind once the final unlock messages are processed.
    eventually(&store, || async {
        let page = client
            .list_entities(&EntityQuery::new().name("account"))
            .await
            .unwrap();
        page.entities
            .iter()
            .all(|e| e.locked_by.is_none())
            .then_some(())
    })
    .await;
}

#[orchestrator]
async fn echo(_ctx: OrchestrationContext, v: u32) -> Result<u32, OrchestrationError> {
    Ok(v)
}

#[orchestrator]
async fn bad_section(
    ctx: OrchestrationContext,
    _input: (),
) -> Result<Vec<String>, OrchestrationError> {
    let a = EntityId::of::<Account>("p")?;
    let section = ctx.lock(std::slice::from_ref(&a)).await?;
    let mut errors = Vec::new();
    match ctx.entity::<Account>("q").balance().await {
        Err(TaskError::Failed(f)) => errors.push(f.details.error_type),
        other => errors.push(format!("{other:?}")),
    }
    match ctx.lock(&[a]).await {
        Err(TaskError::Failed(f)) => errors.push(f.details.message),
        other => errors.push(format!("{other:?}")),
    }
    match ctx.call_sub_orchestrator(echo, 1).await {
        Err(TaskError::Failed(f)) => errors.push(f.details.message),
        other => errors.push(format!("{other:?}")),
    }
    drop(section);
    // After the section, any entity may be called again.
    ctx.entity::<Account>("q").balance().await?;
    Ok(errors)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn critical_section_rules_are_typed_errors() {
    let (_w, client, _store) = worker();
    let errors = bad_section::start(&client, ())
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(errors[0], "LockViolation");
    assert_eq!(errors[1], "critical sections cannot be nested");
    assert_eq!(
        errors[2],
        "sub-orchestrations cannot start inside a critical section"
    );
}

#[orchestrator]
async fn dies_in_section(ctx: OrchestrationContext, key: String) -> Result<(), OrchestrationError> {
    let _section = ctx.lock(&[EntityId::of::<Account>(&key)?]).await?;
    ctx.entity::<Account>(&key).withdraw(1_000_000).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_are_released_when_the_orchestration_fails() {
    let (_w, client, store) = worker();
    let run = dies_in_section::start(&client, "z".into()).await.unwrap();
    match run.wait().await {
        Err(ClientError::Failed(f)) => assert!(f.message.contains("insufficient funds"), "{f}"),
        other => panic!("{other:?}"),
    }
    // The lock was released: a signal from a client is processed.
    client.entity::<Account>("z").deposit(5).await.unwrap();
    let balance = eventually(&store, || async {
        client
            .read_entity::<Account>("z")
            .await
            .unwrap()
            .map(|a| a.balance)
            .filter(|b| *b == 105)
    })
    .await;
    assert_eq!(balance, 105);
}

#[orchestrator]
async fn hold_lock(ctx: OrchestrationContext, key: String) -> Result<(), OrchestrationError> {
    let _section = ctx.lock(&[EntityId::of::<Account>(&key)?]).await?;
    let () = ctx.wait_for_event("release").await?;
    Ok(())
}

async fn locked_by(client: &Client, key: &str) -> Option<InstanceId> {
    // Include entities without state: a lock can be held on an entity never operated on.
    let mut q = EntityQuery::new().name("account");
    q.include_deleted = true;
    let page = client.list_entities(&q).await.unwrap();
    page.entities
        .into_iter()
        .find(|e| e.id.key == key)
        .and_then(|e| e.locked_by)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_granted_to_a_terminated_orchestration_is_released() {
    let store = MemoryStore::new();
    let worker = Worker::builder()
        .store(store.clone())
        .register(Account::entity())
        .register(hold_lock)
        .start()
        .unwrap();
    let client = worker.client();
    let a = hold_lock::start(&client, "t".into()).await.unwrap();
    let holder = eventually(&store, || async { locked_by(&client, "t").await }).await;
    assert_eq!(&holder, a.id());
    // B queues for the same lock, then is terminated while waiting.
    let b = hold_lock::start(&client, "t".into()).await.unwrap();
    eventually(&store, || async {
        let h = client.status_with_history(b.id()).await.ok()?.1;
        h.iter()
            .any(|e| e.event.kind() == "EntityLockRequested")
            .then_some(())
    })
    .await;
    b.terminate("not needed").await.unwrap();
    assert!(matches!(
        b.wait().await,
        Err(ClientError::Terminated { .. })
    ));
    a.raise("release", &()).await.unwrap();
    a.wait().await.unwrap();
    // The entity passed the lock to B, which is gone: B's worker hands it straight back.
    client.entity::<Account>("t").deposit(5).await.unwrap();
    let balance = eventually(&store, || async {
        client
            .read_entity::<Account>("t")
            .await
            .unwrap()
            .map(|x| x.balance)
            .filter(|b| *b == 105)
    })
    .await;
    assert_eq!(balance, 105);
    eventually(&store, || async {
        locked_by(&client, "t").await.is_none().then_some(())
    })
    .await;
}

#[orchestrator]
async fn gives_up_on_lock(
    ctx: OrchestrationContext,
    key: String,
) -> Result<String, OrchestrationError> {
    let lock = ctx.lock(&[EntityId::of::<Account>(&key)?]);
    let outcome = match select(lock, ctx.sleep(Duration::from_millis(30))).await {
        Either::Left(_) => "locked",
        Either::Right(()) => "timed out",
    };
    // Keep running after losing the race: the late grant must be handed back.
    let () = ctx.wait_for_event("finish").await?;
    Ok(outcome.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_that_lost_a_race_is_released_when_granted_later() {
    let store = MemoryStore::new();
    let worker = Worker::builder()
        .store(store.clone())
        .register(Account::entity())
        .register(hold_lock)
        .register(gives_up_on_lock)
        .start()
        .unwrap();
    let client = worker.client();
    let holder = hold_lock::start(&client, "r".into()).await.unwrap();
    eventually(&store, || async { locked_by(&client, "r").await }).await;
    let quitter = gives_up_on_lock::start(&client, "r".into()).await.unwrap();
    eventually(&store, || async {
        let h = client.status_with_history(quitter.id()).await.ok()?.1;
        h.iter()
            .any(|e| e.event.kind() == "TimerFired")
            .then_some(())
    })
    .await;
    holder.raise("release", &()).await.unwrap();
    holder.wait().await.unwrap();
    // The grant reached the quitter, which no longer wants it: the entity is free again
    // while the quitter is still running.
    eventually(&store, || async {
        locked_by(&client, "r").await.is_none().then_some(())
    })
    .await;
    assert_eq!(
        quitter.status().await.unwrap().status,
        RuntimeStatus::Running
    );
    quitter.raise("finish", &()).await.unwrap();
    assert_eq!(quitter.wait().await.unwrap(), "timed out");
}

/// Issue 12: a lock request still travelling when its execution is replaced. The entity
/// tells executions of one instance apart: the stale grant to the replaced execution is
/// handed back without releasing the lock the new execution holds, so a third
/// orchestration waits until the new execution leaves its section.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_execution_never_breaks_mutual_exclusion() {
    use durable_core::{IdReusePolicy, StartOptions};
    let env = durable_testing::TestEnv::builder()
        .register(Account::entity())
        .register(hold_lock)
        .start()
        .unwrap();
    let client = env.client().clone();
    let granted =
        |h: &[durable_core::HistoryEvent]| h.iter().any(|e| e.event.kind() == "EntityLockGranted");
    // H holds `x`; O (execution 1) queues behind it; O is replaced and execution 2 queues.
    let h = env.start(hold_lock, "x".to_owned()).await.unwrap();
    env.run_until_idle().await;
    let o_id = InstanceId::new("o").unwrap();
    let opts = || StartOptions::new().instance_id(o_id.clone());
    env.start_with(hold_lock, "x".to_owned(), opts())
        .await
        .unwrap();
    env.run_until_idle().await;
    let o = env
        .start_with(
            hold_lock,
            "x".to_owned(),
            opts().reuse(IdReusePolicy::TerminateRunning),
        )
        .await
        .unwrap();
    env.run_until_idle().await;
    assert_eq!(client.status(&o_id).await.unwrap().execution, 2);
    // H leaves: the lock goes to O's execution 1 (gone), which hands it back, then to
    // execution 2, which stays inside its section.
    env.raise(h.id(), "release", &()).await.unwrap();
    env.run_until_idle().await;
    let (r, o_history) = client.status_with_history(&o_id).await.unwrap();
    assert_eq!(r.status, RuntimeStatus::Running);
    assert!(granted(&o_history), "execution 2 holds the lock");
    assert_eq!(locked_by(&client, "x").await.as_ref(), Some(&o_id));
    // A third orchestration waits while O is inside.
    let t = env.start(hold_lock, "x".to_owned()).await.unwrap();
    env.run_until_idle().await;
    let t_history = client.status_with_history(t.id()).await.unwrap().1;
    assert!(
        !granted(&t_history),
        "`{}` was granted `x` while `o` (execution 2) is inside its critical section",
        t.id()
    );
    assert_eq!(locked_by(&client, "x").await.as_ref(), Some(&o_id));
    // O leaves; T gets the lock.
    env.raise(o.id(), "release", &()).await.unwrap();
    env.run_until_idle().await;
    assert!(granted(
        &client.status_with_history(t.id()).await.unwrap().1
    ));
    assert_eq!(locked_by(&client, "x").await.as_ref(), Some(t.id()));
}
