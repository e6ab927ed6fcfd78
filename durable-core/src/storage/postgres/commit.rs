//! Episode commits: the rows a commit locks and the writes it makes, and group commit (the
//! episodes committed meanwhile share one transaction).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use deadpool_postgres::{GenericClient, Object, Transaction};
use tokio::sync::oneshot;
use tokio_postgres::types::ToSql;

use super::PostgresStore;
use super::notify::Wake;
use super::util::{Error, MAX_ATTEMPTS, R, decode, lock, pause, retryable, to_i64, to_u64, ts};
use super::write::Enqueue;
use crate::error::{FailureDetails, StoreError};
use crate::history::Event;
use crate::storage::metrics::CommitTimer;
use crate::storage::{ActivityWorkItem, EpisodeCommit, InstanceRecord, LockToken, Message};

impl PostgresStore {
    /// Applies an episode with sub-orchestrations to create inside `tx`; returns whom to
    /// wake. (Episodes without go through [`commit_batch_tx`].)
    ///
    /// [`commit_batch_tx`]: Self::commit_batch_tx
    pub(super) async fn commit_tx(&self, tx: &Transaction<'_>, c: &EpisodeCommit) -> R<Wake> {
        let sql = &self.inner.sql;
        let key = c.instance_id.as_str();
        // Lock every row this commit touches, in id order, so concurrent commits never
        // deadlock; then check the lease under that lock.
        let ids: Vec<&str> = commit_ids(c).into_iter().collect();
        let lock_rows = tx.prepare_cached(&sql.lock_rows).await?;
        let rows = tx.query(&lock_rows, &[&ids, &vec![key]]).await?;
        let mut locked = Locked::read(&rows)?;
        let record = locked.lease(c)?;
        let execution = record.execution;

        // Sub-orchestrations first: a refused child becomes a failure message to us.
        let mut writes = Writes::default();
        let mut refusals = Vec::new();
        for (seq, child) in &c.new_instances {
            let child_id = &child.instance_id;
            let refused = if *child_id == c.instance_id {
                Some("a sub-orchestration cannot take its parent's id".to_owned())
            } else {
                match self.create_in(tx, child, &mut writes.batch).await? {
                    Ok(_) => {
                        locked.existing.insert(child_id.as_str().to_owned());
                        None
                    }
                    Err(e) => Some(e.to_string()),
                }
            };
            if let Some(reason) = refused {
                refusals.push(Message::new(
                    Event::SubOrchestrationFailed {
                        seq: *seq,
                        failure: FailureDetails::new(
                            "SubOrchestrationNotCreated",
                            format!("could not create sub-orchestration `{child_id}`: {reason}"),
                        ),
                    },
                    Some(execution),
                    c.now,
                ));
            }
        }
        writes.add(c, None, record, &refusals, &locked.existing)?;
        let (mut wake, _) = writes.run(self, tx, false).await?;
        // A child may replace (and terminate) an instance.
        wake.finished = true;
        self.notify(tx, wake).await?;
        Ok(wake)
    }

    /// Inserts `record`, a brand-new instance, leased under `first`'s token, for `first` to
    /// be committed in the same transaction ([`Store::create_started`]); `false`, with
    /// nothing written, when the id is taken.
    ///
    /// [`Store::create_started`]: crate::storage::Store::create_started
    async fn insert_started<C: GenericClient>(
        &self,
        tx: &C,
        record: &InstanceRecord,
        first: &EpisodeCommit,
    ) -> R<bool> {
        let st = tx.prepare_cached(&self.inner.sql.insert_started).await?;
        let json = serde_json::to_string(record)?;
        let status = record.status.as_str();
        let params: [&(dyn ToSql + Sync); 7] = [
            &record.instance_id.as_str(),
            &record.name,
            &status,
            &ts(record.created_at),
            &json,
            &to_i64(first.lock.0),
            &ts(first.now),
        ];
        Ok(tx.execute(&st, &params).await? > 0)
    }

    /// [`Store::create_started`] in one transaction of any shape (sub-orchestrations,
    /// [`PostgresOptions::notify_in_transaction`]): `None` when the id is taken.
    ///
    /// [`Store::create_started`]: crate::storage::Store::create_started
    /// [`PostgresOptions::notify_in_transaction`]: super::PostgresOptions::notify_in_transaction
    pub(super) async fn create_started_tx(
        &self,
        tx: &Transaction<'_>,
        record: &InstanceRecord,
        first: &EpisodeCommit,
    ) -> R<Option<Wake>> {
        if !self.insert_started(tx, record, first).await? {
            return Ok(None);
        }
        self.commit_tx(tx, first).await.map(Some)
    }

    /// [`Store::create_started`] for a first episode without sub-orchestrations, in two
    /// round trips as [`commit_batch_pipelined`](Self::commit_batch_pipelined): `BEGIN`,
    /// the insert and the lock statement pipelined, then the writes with `COMMIT` (or a
    /// `ROLLBACK` when the id is taken: `None`). Not with
    /// [`PostgresOptions::notify_in_transaction`].
    ///
    /// [`Store::create_started`]: crate::storage::Store::create_started
    /// [`PostgresOptions::notify_in_transaction`]: super::PostgresOptions::notify_in_transaction
    pub(super) async fn create_started_pipelined(
        &self,
        record: &InstanceRecord,
        first: &EpisodeCommit,
    ) -> R<Option<Wake>> {
        let sql = &self.inner.sql;
        let ids: Vec<&str> = commit_ids(first).into_iter().collect();
        let owners = vec![first.instance_id.as_str()];
        let json = serde_json::to_string(record)?;
        let status = record.status.as_str();
        let key = record.instance_id.as_str();
        let (created, token, until) = (ts(record.created_at), to_i64(first.lock.0), ts(first.now));
        let conn = self.conn().await?;
        let (insert, lock_rows) = tokio::try_join!(
            conn.prepare_cached(&sql.insert_started),
            conn.prepare_cached(&sql.lock_rows),
        )?;
        let open = OpenTx(Some(conn));
        let conn = open.conn()?;
        let insert_params: [&(dyn ToSql + Sync); 7] =
            [&key, &record.name, &status, &created, &json, &token, &until];
        let lock_params: [&(dyn ToSql + Sync); 2] = [&ids, &owners];
        let result = async {
            let ((), inserted, rows) = tokio::try_join!(
                conn.batch_execute("BEGIN"),
                conn.execute(&insert, &insert_params),
                conn.query(&lock_rows, &lock_params),
            )?;
            if inserted == 0 {
                conn.batch_execute("ROLLBACK").await?;
                return Ok(None);
            }
            let mut locked = Locked::read(&rows)?;
            let own = locked.lease(first)?;
            let mut writes = Writes::default();
            writes.add(first, None, own, &[], &locked.existing)?;
            let (wake, _) = writes.run(self, conn, true).await?;
            Ok(Some(wake))
        }
        .await;
        if result.is_err() {
            // Awaited, so the row locks are gone before the caller goes on.
            let _ = conn.batch_execute("ROLLBACK").await;
        }
        open.close();
        result
    }

    /// Applies episodes without sub-orchestrations (each instance at most once) inside one
    /// transaction: one statement locks every row they touch (in id order), then one
    /// statement per kind of write covers them all, pipelined. Answers each episode's
    /// outcome (whether it enqueued activity tasks, or `LockLost`: that episode changes
    /// nothing, the others commit).
    async fn commit_batch_tx(
        &self,
        tx: &Transaction<'_>,
        commits: &[EpisodeCommit],
        asks: &[Option<EagerAsk>],
    ) -> R<Batched> {
        let sql = &self.inner.sql;
        let (ids, owners) = lock_params(commits);
        let lock_rows = tx.prepare_cached(&sql.lock_rows).await?;
        let rows = tx.query(&lock_rows, &[&ids, &owners]).await?;
        let (out, writes) = plan_batch(commits, asks, &rows)?;
        if writes.record_ids.is_empty() {
            return Ok((out, Wake::default(), Vec::new()));
        }
        let (wake, leased) = writes.run(self, tx, false).await?;
        self.notify(tx, wake).await?;
        Ok((out, wake, leased))
    }

    /// [`commit_batch_tx`](Self::commit_batch_tx) in two round trips: `BEGIN` pipelined
    /// with the lock statement, the writes pipelined with `COMMIT` (a failed statement
    /// aborts the transaction, and `COMMIT` then rolls it back). Not with
    /// [`PostgresOptions::notify_in_transaction`].
    ///
    /// [`PostgresOptions::notify_in_transaction`]: super::PostgresOptions::notify_in_transaction
    async fn commit_batch_pipelined(
        &self,
        commits: &[EpisodeCommit],
        asks: &[Option<EagerAsk>],
    ) -> R<Batched> {
        let sql = &self.inner.sql;
        let (ids, owners) = lock_params(commits);
        let conn = self.conn().await?;
        let lock_rows = conn.prepare_cached(&sql.lock_rows).await?;
        let open = OpenTx(Some(conn));
        let conn = open.conn()?;
        let lock_params: [&(dyn ToSql + Sync); 2] = [&ids, &owners];
        let result = async {
            let ((), rows) = tokio::try_join!(
                conn.batch_execute("BEGIN"),
                conn.query(&lock_rows, &lock_params),
            )?;
            let (out, writes) = plan_batch(commits, asks, &rows)?;
            if writes.record_ids.is_empty() {
                conn.batch_execute("COMMIT").await?;
                return Ok((out, Wake::default(), Vec::new()));
            }
            let (wake, leased) = writes.run(self, conn, true).await?;
            Ok((out, wake, leased))
        }
        .await;
        if result.is_err() {
            // Awaited, so the row locks are gone before the caller goes on. (After a
            // pipelined `COMMIT` there is no transaction left: a warning, no harm.)
            let _ = conn.batch_execute("ROLLBACK").await;
        }
        open.close();
        result
    }

    /// Commits `commits` (episodes without sub-orchestrations) in one transaction, retried
    /// when Postgres aborts it; if it fails otherwise, each episode is committed on its
    /// own, so one episode's failure is not the others'. Answers each episode's outcome —
    /// with the task leased to it when `asks` asked for one ([`EagerAsk`]) — and whom to
    /// wake.
    async fn commit_batch(
        &self,
        commits: &[EpisodeCommit],
        asks: &[Option<EagerAsk>],
    ) -> (Vec<Result<Option<ActivityWorkItem>, StoreError>>, Wake) {
        let timer = CommitTimer::start();
        let batch = if self.inner.options.notify_in_transaction {
            retry_tx!(self, "committing episodes", tx => self.commit_batch_tx(&tx, commits, asks))
        } else {
            let mut attempt = 0u32;
            loop {
                attempt += 1;
                match self.commit_batch_pipelined(commits, asks).await {
                    Err(Error::Db(e)) if attempt < MAX_ATTEMPTS && retryable(&e) => {
                        tracing::debug!(error = %e, attempt, "transaction aborted by PostgreSQL; retrying");
                        pause(Duration::from_millis(u64::from(attempt) * 5)).await;
                    }
                    other => break other.map_err(|e| self.err("committing episodes", e)),
                }
            }
        };
        match batch {
            Ok((out, wake, leased)) => {
                timer.record("postgres", commits.len());
                (leased_items(commits, asks, out, &leased), wake)
            }
            Err(e) if commits.len() == 1 => (vec![Err(e)], Wake::default()),
            Err(e) => {
                tracing::debug!(error = %e, n = commits.len(), "a batch of episode commits failed; committing them one by one");
                let mut out = Vec::with_capacity(commits.len());
                let mut wake = Wake::default();
                for (c, ask) in commits.iter().zip(asks) {
                    let (c, ask) = (std::slice::from_ref(c), std::slice::from_ref(ask));
                    let one = retry_tx!(self, "committing an episode", tx => {
                        self.commit_batch_tx(&tx, c, ask)
                    });
                    out.push(match one {
                        Ok((r, w, leased)) => {
                            wake = wake.or(w);
                            leased_items(c, ask, r, &leased).pop().unwrap_or(Ok(None))
                        }
                        Err(e) => Err(e),
                    });
                }
                (out, wake)
            }
        }
    }

    /// The next batch of queued episode commits (each instance at most once: a later
    /// commit to the same instance, after a lease it lost, say, waits for the next batch);
    /// `None` if none are queued.
    pub(super) fn next_batch(&self) -> Option<Vec<PendingCommit>> {
        let mut q = lock(&self.inner.commits);
        if q.queue.is_empty() {
            return None;
        }
        let mut seen = HashSet::new();
        let mut batch = Vec::new();
        let mut rest = std::collections::VecDeque::new();
        while let Some(p) = q.queue.pop_front() {
            if p.reply.is_closed() {
                // Its caller is gone (an aborted worker's episode, say): not written. Writing
                // it would be safe too (the commit checks the lease in its transaction, so
                // it applies only if no one took the instance over), but a worker that was
                // stopped writes nothing more; the lease expires and the episode runs again.
                continue;
            }
            if batch.len() < MAX_BATCH && seen.insert(p.commit.instance_id.clone()) {
                batch.push(p);
            } else {
                rest.push_back(p);
            }
        }
        q.queue = rest;
        (!batch.is_empty()).then_some(batch)
    }

    /// Commits a batch and answers each of its episodes.
    pub(super) async fn run_batch(&self, batch: Vec<PendingCommit>) {
        let mut commits = Vec::with_capacity(batch.len());
        let mut asks = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for p in batch {
            commits.push(p.commit);
            asks.push(p.eager);
            replies.push(p.reply);
        }
        let (results, wake) = self.commit_batch(&commits, &asks).await;
        // Signalled first: a caller that sees its commit done finds its signals sent.
        self.signal(wake);
        for (result, reply) in results.into_iter().zip(replies) {
            let _ = reply.send(result);
        }
    }

    /// Runs batches until none are queued, holding `leader`'s slot.
    async fn lead_commits(self, leader: Leader) {
        while let Some(batch) = self.next_batch() {
            self.run_batch(batch).await;
        }
        drop(leader);
    }
}

/// Every instance row an episode commit touches: its own, its messages' targets and its
/// new sub-orchestrations.
/// The lock statement's parameters for a batch: every instance its commits touch, in id
/// order (rows are locked in that order), and the commits' own instances.
fn lock_params(commits: &[EpisodeCommit]) -> (Vec<&str>, Vec<&str>) {
    let mut ids = BTreeSet::new();
    for c in commits {
        ids.extend(commit_ids(c));
    }
    let owners = commits.iter().map(|c| c.instance_id.as_str()).collect();
    (ids.into_iter().collect(), owners)
}

/// Takes each commit's lease from the locked `rows` and adds its writes: each commit's
/// outcome (`LockLost`: that episode changes nothing, the others commit), and the writes.
fn plan_batch(
    commits: &[EpisodeCommit],
    asks: &[Option<EagerAsk>],
    rows: &[tokio_postgres::Row],
) -> R<(Vec<Result<(), StoreError>>, Writes)> {
    let mut locked = Locked::read(rows)?;
    let mut writes = Writes::default();
    let mut out = Vec::with_capacity(commits.len());
    for (c, ask) in commits.iter().zip(asks) {
        match locked.lease(c) {
            Ok(record) => {
                writes.add(c, ask.as_ref(), record, &[], &locked.existing)?;
                out.push(Ok(()));
            }
            Err(Error::Op(e)) => out.push(Err(e)),
            Err(e) => return Err(e),
        }
    }
    Ok((out, writes))
}

/// What a batch answers: each episode's outcome, whom to wake, and the (id, token) of
/// each task leased to its committer.
type Batched = (Vec<Result<(), StoreError>>, Wake, Vec<(i64, i64)>);

/// Each episode's outcome with the task its commit leased to it, found by the token its
/// [`EagerAsk`] chose among the `leased` (id, token) rows.
fn leased_items(
    commits: &[EpisodeCommit],
    asks: &[Option<EagerAsk>],
    out: Vec<Result<(), StoreError>>,
    leased: &[(i64, i64)],
) -> Vec<Result<Option<ActivityWorkItem>, StoreError>> {
    out.into_iter()
        .zip(commits.iter().zip(asks))
        .map(|(r, (c, ask))| {
            r.map(|()| {
                let ask = ask.as_ref()?;
                let &(id, token) = leased.iter().find(|(_, token)| *token == ask.token)?;
                Some(ActivityWorkItem {
                    id: to_u64(id),
                    task: c.activities.get(ask.task)?.clone(),
                    lock: LockToken(to_u64(token)),
                })
            })
        })
        .collect()
}

fn commit_ids(c: &EpisodeCommit) -> BTreeSet<&str> {
    let mut ids = BTreeSet::new();
    ids.insert(c.instance_id.as_str());
    ids.extend(c.messages.iter().map(|(t, _)| t.as_str()));
    ids.extend(c.new_instances.iter().map(|(_, n)| n.instance_id.as_str()));
    ids
}

/// The rows `lock_rows` locked: which exist, and the committing instances' leases and
/// records.
struct Locked {
    own: HashMap<String, (Option<i64>, String)>,
    existing: HashSet<String>,
}

impl Locked {
    fn read(rows: &[tokio_postgres::Row]) -> R<Self> {
        let mut own = HashMap::new();
        let mut existing = HashSet::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get(0)?;
            if let Some(record) = row.try_get::<_, Option<String>>(2)? {
                own.insert(id.clone(), (row.try_get(1)?, record));
            }
            existing.insert(id);
        }
        Ok(Self { own, existing })
    }

    /// `c`'s instance record, if `c` still holds its lease; `LockLost` if not.
    fn lease(&mut self, c: &EpisodeCommit) -> R<InstanceRecord> {
        let key = c.instance_id.as_str();
        match self.own.remove(key) {
            Some((Some(token), record)) if token == to_i64(c.lock.0) => decode(&record),
            _ => Err(Error::Op(StoreError::LockLost(key.to_owned()))),
        }
    }
}

/// The writes of one or more episode commits, as one statement per kind.
#[derive(Default)]
struct Writes {
    handed_ids: Vec<i64>,
    handed_tokens: Vec<i64>,
    consumed_ids: Vec<String>,
    consumed_seqs: Vec<i64>,
    history_ids: Vec<String>,
    history_events: Vec<String>,
    /// Instances continuing as new: their history is removed.
    reset_history: Vec<String>,
    task_owners: Vec<String>,
    task_visible_at: Vec<i64>,
    tasks: Vec<String>,
    heartbeat_timeouts: Vec<Option<i64>>,
    /// The lease token of a task to lease to its committer ([`EagerAsk`]), and until when.
    task_tokens: Vec<Option<i64>>,
    task_leased_until: Vec<Option<i64>>,
    /// Whether that task's instance is to stay leased with it ([`EagerAsk::keep_until`]).
    task_keeps: Vec<bool>,
    /// The latest start of those leases: tasks due by then are queued earlier.
    leased_at: Option<i64>,
    record_ids: Vec<String>,
    record_statuses: Vec<&'static str>,
    records: Vec<String>,
    /// Per record: the token of its eager task and the end of the instance lease kept if
    /// that task is leased ([`EagerAsk::keep_until`]), or NULL.
    record_eager_tokens: Vec<Option<i64>>,
    record_keep_until: Vec<Option<i64>>,
    /// Messages, and the instances whose `ready_at` and holds they change.
    batch: Enqueue,
    /// An episode ends its instance.
    finished: bool,
}

impl Writes {
    /// Adds episode `c`, applied to its instance's `record` (read under the lease), with
    /// `refusals` (messages to itself) and the messages to instances in `existing`.
    fn add(
        &mut self,
        c: &EpisodeCommit,
        eager: Option<&EagerAsk>,
        mut record: InstanceRecord,
        refusals: &[Message],
        existing: &HashSet<String>,
    ) -> R<()> {
        let key = c.instance_id.as_str();
        self.finished |= c.status.is_terminal();
        record.apply_episode(c);
        if let Some(next) = &c.next_execution {
            for m in &next.messages {
                self.batch.push(key, m)?;
            }
            self.reset_history.push(key.to_owned());
        } else {
            for e in &c.new_events {
                self.history_ids.push(key.to_owned());
                self.history_events.push(serde_json::to_string(e)?);
            }
        }
        for m in refusals {
            self.batch.push(key, m)?;
        }
        for (target, m) in &c.messages {
            if existing.contains(target.as_str()) {
                self.batch.push(target.as_str(), m)?;
            } else {
                tracing::debug!(target = %target, "message to unknown instance dropped");
            }
        }
        for m in &c.consumed {
            self.consumed_ids.push(key.to_owned());
            self.consumed_seqs.push(to_i64(m.seq));
        }
        for (i, t) in c.activities.iter().enumerate() {
            let ask = eager.filter(|a| a.task == i);
            if let Some(a) = ask {
                self.leased_at = self.leased_at.max(Some(a.now));
            }
            self.task_tokens.push(ask.map(|a| a.token));
            self.task_leased_until.push(ask.map(|a| a.until));
            self.task_keeps
                .push(ask.is_some_and(|a| a.keep_until.is_some()));
            self.task_owners.push(t.instance_id.as_str().to_owned());
            self.task_visible_at.push(ts(c.now));
            self.tasks.push(serde_json::to_string(t)?);
            self.heartbeat_timeouts.push(
                t.heartbeat_timeout
                    .filter(|d| !d.is_zero())
                    .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            );
        }
        for (id, lock) in &c.completed_activities {
            self.handed_ids.push(to_i64(*id));
            self.handed_tokens.push(to_i64(lock.0));
        }
        self.records.push(serde_json::to_string(&record)?);
        self.record_statuses.push(record.status.as_str());
        self.record_ids.push(key.to_owned());
        let keep = eager.filter(|a| a.keep_until.is_some());
        self.record_eager_tokens.push(keep.map(|a| a.token));
        self.record_keep_until.push(keep.and_then(|a| a.keep_until));
        Ok(())
    }

    /// Runs the writes in `tx`, pipelined (one round trip), and `COMMIT` after them if
    /// `commit`; returns whom to wake — the dispatchers only if there is new work
    /// (messages, activity tasks not leased to their committers, or messages that arrived
    /// during an episode), and whoever waits for a change to an instance — and the (id,
    /// token) of each task leased to its committer.
    #[allow(
        clippy::too_many_lines,
        reason = "one pipelined statement per kind of write, in order"
    )]
    async fn run<C: GenericClient>(
        mut self,
        store: &PostgresStore,
        tx: &C,
        commit: bool,
    ) -> R<(Wake, Vec<(i64, i64)>)> {
        let sql = &store.inner.sql;
        let (handed, consume, reset, history, update, enqueue_tasks, enqueue, ready, release) = tokio::try_join!(
            tx.prepare_cached(&sql.complete_handed_off),
            tx.prepare_cached(&sql.consume),
            tx.prepare_cached(&sql.delete_histories),
            tx.prepare_cached(&sql.append_history),
            tx.prepare_cached(&sql.update_records),
            tx.prepare_cached(&sql.enqueue_activities),
            tx.prepare_cached(&sql.enqueue),
            tx.prepare_cached(&sql.refresh_ready),
            tx.prepare_cached(&sql.release_holds),
        )?;
        // The committing rows' `ready_at` is set by `update_records`; others' by
        // `refresh_ready`.
        for id in &self.record_ids {
            self.batch.touched.remove(id);
        }
        let touched: Vec<String> = std::mem::take(&mut self.batch.touched)
            .into_iter()
            .collect();
        let activities = !self.tasks.is_empty();
        let messages = !self.batch.ids.is_empty();
        let b = &self.batch;
        // Pipelined, one round trip: a statement is sent on its future's first poll and
        // `try_join!` polls first in this order, so the server runs them in this order
        // (the tasks after the inbox changes, whose messages decide whether an instance
        // may stay leased; the records after both).
        let (_, _, _, _, _, leased, still_ready, _, _, ()) = tokio::try_join!(
            async {
                if self.handed_ids.is_empty() {
                    Ok(0)
                } else {
                    tx.execute(&handed, &[&self.handed_ids, &self.handed_tokens])
                        .await
                }
            },
            async {
                if self.consumed_ids.is_empty() {
                    Ok(0)
                } else {
                    tx.execute(&consume, &[&self.consumed_ids, &self.consumed_seqs])
                        .await
                }
            },
            async {
                if self.reset_history.is_empty() {
                    Ok(0)
                } else {
                    tx.execute(&reset, &[&self.reset_history]).await
                }
            },
            async {
                if self.history_ids.is_empty() {
                    Ok(0)
                } else {
                    tx.execute(&history, &[&self.history_ids, &self.history_events])
                        .await
                }
            },
            async {
                if b.ids.is_empty() {
                    Ok(0)
                } else {
                    tx.execute(&enqueue, &[&b.ids, &b.visible_at, &b.messages])
                        .await
                }
            },
            async {
                if activities {
                    let rows = tx
                        .query(
                            &enqueue_tasks,
                            &[
                                &self.task_owners,
                                &self.task_visible_at,
                                &self.tasks,
                                &self.heartbeat_timeouts,
                                &self.task_tokens,
                                &self.task_leased_until,
                                &self.leased_at,
                                &self.task_keeps,
                            ],
                        )
                        .await?;
                    rows.iter()
                        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                        .collect::<Result<Vec<(i64, i64)>, tokio_postgres::Error>>()
                } else {
                    Ok(Vec::new())
                }
            },
            async {
                let rows = tx
                    .query(
                        &update,
                        &[
                            &self.record_ids,
                            &self.record_statuses,
                            &self.records,
                            &self.record_eager_tokens,
                            &self.record_keep_until,
                        ],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .filter(|r| r.try_get::<_, bool>(0).unwrap_or(true))
                    .count() as u64)
            },
            async {
                if touched.is_empty() {
                    Ok(0)
                } else {
                    tx.execute(&ready, &[&touched]).await
                }
            },
            async {
                if b.released.is_empty() {
                    Ok(0)
                } else {
                    tx.execute(&release, &[&b.released]).await
                }
            },
            async {
                if commit {
                    tx.batch_execute("COMMIT").await
                } else {
                    Ok(())
                }
            },
        )?;
        let wake = Wake {
            orchestration: messages || still_ready > 0,
            activity: self.tasks.len() > leased.len(),
            changed: true,
            finished: self.finished,
        };
        Ok((wake, leased))
    }
}

/// A pooled connection that may be inside a transaction: unless [`close`](Self::close)d
/// (the transaction ended), dropping it (a cancelled commit) takes the connection out of
/// the pool and closes it, so Postgres rolls the transaction back.
struct OpenTx(Option<Object>);

impl OpenTx {
    fn conn(&self) -> R<&Object> {
        self.0
            .as_ref()
            .ok_or_else(|| Error::Other("the connection is gone".to_owned(), None))
    }

    /// The transaction ended: the connection goes back to the pool.
    fn close(mut self) {
        drop(self.0.take());
    }
}

impl Drop for OpenTx {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            drop(Object::take(conn));
        }
    }
}

/// An episode commit waiting for its batch, and where its outcome goes.
pub(super) struct PendingCommit {
    pub(super) commit: EpisodeCommit,
    /// The new task to lease to the committer ([`Store::commit_episode_eager`]).
    ///
    /// [`Store::commit_episode_eager`]: crate::storage::Store::commit_episode_eager
    pub(super) eager: Option<EagerAsk>,
    pub(super) reply: oneshot::Sender<Result<Option<ActivityWorkItem>, StoreError>>,
}

/// Which new task of an episode its commit leases to the committer: the index of the
/// task, a fresh lease token, and the lease's start and end (ms). The task is inserted
/// leased unless tasks queued earlier are due at the start (the enqueue statement checks);
/// a batch answers the ids of those it leased by their tokens. With `keep_until`
/// ([`EpisodeCommit::keep_lease`]), the instance stays leased under the commit's token
/// until then if the task is leased (the record update checks).
#[derive(Debug, Clone, Copy)]
pub(super) struct EagerAsk {
    pub(super) task: usize,
    pub(super) token: i64,
    pub(super) now: i64,
    pub(super) until: i64,
    pub(super) keep_until: Option<i64>,
}

/// The episode commits waiting for a batch, and how many tasks are committing batches.
#[derive(Default)]
pub(super) struct Commits {
    pub(super) queue: std::collections::VecDeque<PendingCommit>,
    pub(super) leaders: usize,
}

/// One of the [`MAX_BATCHES`] slots for committing batches; dropped, it passes to a new
/// task if commits are still queued (unless it belongs to such a task that never ran: the
/// runtime is shutting down).
pub(super) struct Leader {
    store: PostgresStore,
    pass_on: bool,
}

impl Leader {
    pub(super) fn new(store: &PostgresStore) -> Self {
        Self {
            store: store.clone(),
            pass_on: true,
        }
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        let store = &self.store;
        let mut q = lock(&store.inner.commits);
        if q.queue.is_empty() || !self.pass_on {
            q.leaders -= 1;
            return;
        }
        drop(q);
        let mut next = Leader {
            store: store.clone(),
            pass_on: false,
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                next.pass_on = true;
                let store = next.store.clone();
                store.lead_commits(next).await;
            });
        }
        // Without a runtime (it is shutting down), `next` is dropped here and frees the slot:
        // the queued commits' callers are gone with the runtime.
    }
}

/// The most episodes in one commit transaction.
const MAX_BATCH: usize = 128;
/// The most commit transactions of batched episodes at once (each on its own connection;
/// Postgres flushes the WAL of concurrent commits together).
pub(super) const MAX_BATCHES: usize = 4;
