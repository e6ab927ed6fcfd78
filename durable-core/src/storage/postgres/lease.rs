//! Taking leases: fetching orchestration and activity work, and the next wake times read
//! with it.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;

use deadpool_postgres::Object;
use tokio_postgres::types::ToSql;

use super::PostgresStore;
use super::util::{Error, R, decode, from_ts, get, lock, new_token, to_i64, to_u64, ts};
use crate::ids::{InstanceId, Timestamp};
use crate::storage::{
    ActivityTask, ActivityWorkItem, LockToken, Message, MessageId, OrchestrationWorkItem, WorkKind,
};

/// A next wake time (ms, `None`: nothing to wake for) read with a fetch, and the store's
/// write count then.
#[derive(Clone, Copy)]
pub(super) struct WakeHint {
    writes: u64,
    next: Option<i64>,
}

impl PostgresStore {
    /// A connection for taking and renewing leases: one of the lease pool's (whose sessions
    /// commit asynchronously), or, on a user's pool, one of its own (see
    /// [`leasing`](Self::leasing)).
    pub(super) async fn lease_conn(&self) -> R<Object> {
        get(&self.inner.lease_pool).await
    }

    /// Runs `work`, statements on `conn` (a [`lease_conn`](Self::lease_conn)) that are all
    /// sent on its first poll, so they commit asynchronously: on a lease pool's connection
    /// the session already does; on a user's pool (`lease_local`) they run in one
    /// transaction that sets `synchronous_commit` off for itself alone (`SET LOCAL`), its
    /// `BEGIN` and `COMMIT` pipelined with the statements in the same round trip. The
    /// `COMMIT` is queued before `work` can fail or be dropped, so the connection goes back
    /// to the pool outside any transaction (a failed statement's transaction is rolled
    /// back by it).
    pub(super) async fn leasing<T>(&self, conn: &Object, work: impl Future<Output = R<T>>) -> R<T> {
        if !self.inner.lease_local {
            return work.await;
        }
        let ((), out, ()) = tokio::try_join!(
            async {
                conn.batch_execute("BEGIN; SET LOCAL synchronous_commit TO OFF")
                    .await
                    .map_err(Error::from)
            },
            work,
            async { conn.batch_execute("COMMIT").await.map_err(Error::from) },
        )?;
        Ok(out)
    }

    /// Runs the lease statement `text` with `params` on a lease connection and returns its
    /// rows, reading the next wake time in the same round trip (after the lease is taken: its
    /// own implicit transaction, run in order); that time is kept as the hint of kind `slot`
    /// (0: orchestrations, 1: activities).
    async fn lease_rows(
        &self,
        text: &str,
        params: &[&(dyn ToSql + Sync)],
        slot: usize,
    ) -> R<Vec<tokio_postgres::Row>> {
        let conn = self.lease_conn().await?;
        let (st, wake) = tokio::try_join!(
            conn.prepare_cached(text),
            conn.prepare_cached(&self.inner.sql.next_wake),
        )?;
        let writes = self.inner.writes.load(Ordering::Acquire);
        let (rows, next) = self
            .leasing(&conn, async {
                Ok(tokio::try_join!(
                    conn.query(&st, params),
                    conn.query_one(&wake, &[])
                )?)
            })
            .await?;
        self.hint(slot, writes, next.try_get(slot)?);
        Ok(rows)
    }

    pub(super) async fn fetch_orchestrations(
        &self,
        now: Timestamp,
        lock_for: Duration,
        max: usize,
    ) -> R<Vec<OrchestrationWorkItem>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let until = ts(now + lock_for);
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let params: [&(dyn ToSql + Sync); 4] = [&ts(now), &until, &new_token(), &limit];
        let rows = self
            .lease_rows(&self.inner.sql.fetch_orchestrations, &params, 0)
            .await?;
        work_items(&rows)
    }

    pub(super) async fn fetch_instances(
        &self,
        ids: &[InstanceId],
        now: Timestamp,
        lock_for: Duration,
    ) -> R<Vec<OrchestrationWorkItem>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let until = ts(now + lock_for);
        let ids: Vec<&str> = ids.iter().map(InstanceId::as_str).collect();
        let params: [&(dyn ToSql + Sync); 4] = [&ids, &ts(now), &until, &new_token()];
        let rows = self
            .lease_rows(&self.inner.sql.fetch_instances, &params, 0)
            .await?;
        work_items(&rows)
    }

    /// Ends the lease `lock` holds on `id` (kept by an eager commit) on a lease connection,
    /// committed asynchronously as leases are taken — or, with
    /// [`PostgresOptions::notify_in_transaction`], in a transaction with its `NOTIFY` —
    /// and wakes the dispatchers when the instance has messages.
    ///
    /// [`PostgresOptions::notify_in_transaction`]: super::PostgresOptions::notify_in_transaction
    pub(super) async fn release_kept(
        &self,
        id: &InstanceId,
        lock: LockToken,
    ) -> Result<(), crate::error::StoreError> {
        let sql = &self.inner.sql.release_kept;
        let key = id.as_str();
        let token = to_i64(lock.0);
        let wake = super::notify::Wake::ORCHESTRATION;
        let what = "giving back a kept lease";
        let rows = if self.inner.options.notify_in_transaction {
            self.write_one(what, sql, &[&key, &token], wake).await?
        } else {
            async {
                let conn = self.lease_conn().await?;
                let st = conn.prepare_cached(sql).await?;
                self.leasing(&conn, async { Ok(conn.query(&st, &[&key, &token]).await?) })
                    .await
            }
            .await
            .map_err(|e| self.err(what, e))?
        };
        if rows.iter().any(|r| r.try_get::<_, bool>(0).unwrap_or(true)) {
            self.signal(wake);
        }
        Ok(())
    }

    pub(super) async fn fetch_activities(
        &self,
        now: Timestamp,
        lock_for: Duration,
        max: usize,
    ) -> R<Vec<ActivityWorkItem>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let params: [&(dyn ToSql + Sync); 4] =
            [&ts(now), &ts(now + lock_for), &limit, &new_token()];
        let rows = self
            .lease_rows(&self.inner.sql.fetch_activities, &params, 1)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let mut task: ActivityTask = decode(row.try_get(1)?)?;
            if let Some(heartbeat) = row.try_get::<_, Option<String>>(3)? {
                task.heartbeat = Some(heartbeat);
            }
            out.push(ActivityWorkItem {
                id: to_u64(row.try_get(0)?),
                task,
                lock: LockToken(to_u64(row.try_get(2)?)),
            });
        }
        Ok(out)
    }

    /// Lease expiries moved (renewals): wake times read before are stale.
    pub(super) fn moved_leases(&self) {
        self.inner.writes.fetch_add(1, Ordering::AcqRel);
    }

    /// Keeps `next` (read when `writes` writes had been made) as the next wake time of kind
    /// `slot` (0: orchestrations, 1: activities).
    fn hint(&self, slot: usize, writes: u64, next: Option<i64>) {
        lock(&self.inner.wake_hints)[slot] = Some(WakeHint { writes, next });
    }

    /// The wake time of `kind` read with the last fetch, if no write was made since.
    fn take_hint(&self, kind: WorkKind) -> Option<WakeHint> {
        let slot = match kind {
            WorkKind::Orchestration => 0,
            WorkKind::Activity => 1,
        };
        let hint = lock(&self.inner.wake_hints)[slot].take()?;
        (hint.writes == self.inner.writes.load(Ordering::Acquire)).then_some(hint)
    }

    pub(super) async fn wake_time(&self, kind: Option<WorkKind>) -> R<Option<Timestamp>> {
        if let Some(hint) = kind.and_then(|k| self.take_hint(k)) {
            return Ok(hint.next.map(from_ts));
        }
        let conn = self.lease_conn().await?;
        let st = conn.prepare_cached(&self.inner.sql.next_wake).await?;
        let row = conn.query_one(&st, &[]).await?;
        let orch: Option<i64> = row.try_get(0)?;
        let act: Option<i64> = row.try_get(1)?;
        let candidates = match kind {
            Some(WorkKind::Orchestration) => [orch, None],
            Some(WorkKind::Activity) => [None, act],
            None => [orch, act],
        };
        Ok(candidates.into_iter().flatten().min().map(from_ts))
    }
}

/// Work items from the rows of `fetch_orchestration` / `fetch_instances`: per leased instance
/// (ordered by id), one row per visible message, or one row of NULL message columns.
fn work_items(rows: &[tokio_postgres::Row]) -> R<Vec<OrchestrationWorkItem>> {
    let mut out: Vec<OrchestrationWorkItem> = Vec::new();
    let mut current: Option<String> = None;
    for row in rows {
        let id: String = row.try_get(6)?;
        if current.as_deref() != Some(id.as_str()) {
            out.push(OrchestrationWorkItem {
                instance: decode(row.try_get(0)?)?,
                history_len: to_u64(row.try_get(2)?),
                messages: Vec::new(),
                lock: LockToken(to_u64(row.try_get(1)?)),
            });
            current = Some(id);
        }
        let Some(visible_at) = row.try_get::<_, Option<i64>>(3)? else {
            continue;
        };
        let seq: i64 = row.try_get(4)?;
        let mut m: Message = decode(row.try_get(5)?)?;
        m.id = MessageId {
            visible_at: from_ts(visible_at),
            seq: to_u64(seq),
        };
        if let Some(item) = out.last_mut() {
            item.messages.push(m);
        }
    }
    Ok(out)
}
