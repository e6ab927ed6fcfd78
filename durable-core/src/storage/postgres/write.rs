//! Writes other than episode commits: creating (and replacing) instances, sending
//! messages, abandoning episodes, purging, single-statement writes; and the messages a
//! transaction enqueues.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use deadpool_postgres::Transaction;
use tokio_postgres::types::ToSql;

use super::PostgresStore;
use super::notify::Wake;
use super::util::{
    Error, MAX_ATTEMPTS, R, decode, decode_event, new_token, pause, retryable, to_i64, to_u64, ts,
};
use crate::error::StoreError;
use crate::history::{Event, HistoryEvent, RuntimeStatus};
use crate::ids::{InstanceId, Timestamp};
use crate::storage::replace::{self, Reuse, Teardown};
use crate::storage::{
    CreateResult, InstanceRecord, LockToken, Message, NewInstance, OrchestrationWorkItem,
};

impl PostgresStore {
    /// Creates (or replaces) an instance inside `tx`; its start message goes to `batch`.
    pub(super) async fn create_in(
        &self,
        tx: &Transaction<'_>,
        new: &NewInstance,
        batch: &mut Enqueue,
    ) -> R<Result<CreateResult, StoreError>> {
        let sql = &self.inner.sql;
        let key = new.instance_id.as_str();
        for _ in 0..MAX_ATTEMPTS {
            let select = tx.prepare_cached(&sql.select_for_update).await?;
            let existing = match tx.query_opt(&select, &[&key]).await? {
                Some(row) => Some(decode::<InstanceRecord>(row.try_get(0)?)?),
                None => None,
            };
            let mut teardown = None;
            if let Some(existing) = &existing {
                match replace::decide(new.reuse, existing.status.is_terminal()) {
                    Reuse::Existing => return Ok(Ok(CreateResult::Existing(existing.clone()))),
                    Reuse::Reject => {
                        return Ok(Err(StoreError::InstanceAlreadyExists(key.to_owned())));
                    }
                    Reuse::Replace => {}
                    Reuse::TerminateAndReplace => {
                        let history = self.history_in(tx, key).await?;
                        let inbox = self.inbox_in(tx, key).await?;
                        teardown = Some(Teardown::new(existing, &history, &inbox, new.created_at));
                    }
                }
            }
            let record = new.record(existing.as_ref());
            let json = serde_json::to_string(&record)?;
            let status = record.status.as_str();
            let created = ts(record.created_at);
            let params: [&(dyn ToSql + Sync); 5] = [&key, &record.name, &status, &created, &json];
            if existing.is_some() {
                let (del_history, del_inbox, del_tasks, replace) = tokio::try_join!(
                    tx.prepare_cached(&sql.delete_history),
                    tx.prepare_cached(&sql.delete_inbox),
                    tx.prepare_cached(&sql.delete_activities),
                    tx.prepare_cached(&sql.replace_instance),
                )?;
                tokio::try_join!(
                    async { tx.execute(&del_history, &[&key]).await },
                    async { tx.execute(&del_inbox, &[&key]).await },
                    async { tx.execute(&del_tasks, &[&key]).await },
                    tx.execute(&replace, &params),
                )?;
            } else {
                let insert = tx.prepare_cached(&sql.insert_instance).await?;
                if tx.execute(&insert, &params).await? == 0 {
                    // Created by a concurrent transaction since we looked: look again.
                    continue;
                }
            }
            batch.push(key, &new.start_message())?;
            batch.touch(key);
            if let Some(t) = teardown {
                self.tear_down(tx, t, batch).await?;
            }
            return Ok(Ok(CreateResult::Created(record)));
        }
        Err(Error::Other(
            format!("instance `{key}` kept appearing and disappearing while being created"),
            None,
        ))
    }

    async fn history_in(&self, tx: &Transaction<'_>, key: &str) -> R<Vec<HistoryEvent>> {
        let st = tx.prepare_cached(&self.inner.sql.read_history).await?;
        let mut out = Vec::new();
        for row in tx.query(&st, &[&key]).await? {
            out.push(decode_event(row.try_get(0)?)?);
        }
        Ok(out)
    }

    async fn inbox_in(&self, tx: &Transaction<'_>, key: &str) -> R<Vec<Event>> {
        let st = tx.prepare_cached(&self.inner.sql.read_inbox).await?;
        let mut out = Vec::new();
        for row in tx.query(&st, &[&key]).await? {
            out.push(decode::<Message>(row.try_get(0)?)?.event);
        }
        Ok(out)
    }

    /// Terminates the running descendants of an execution being replaced inside `tx`, and
    /// queues the teardown's messages to `batch` (to instances that exist).
    async fn tear_down(&self, tx: &Transaction<'_>, mut t: Teardown, batch: &mut Enqueue) -> R<()> {
        let sql = &self.inner.sql;
        while let Some((id, parent)) = t.next() {
            let key = id.as_str();
            let select = tx.prepare_cached(&sql.select_for_update).await?;
            let record = match tx.query_opt(&select, &[&key]).await? {
                Some(row) => Some(decode::<InstanceRecord>(row.try_get(0)?)?),
                None => None,
            };
            if !record.as_ref().is_some_and(|r| r.is_child_of(&parent)) {
                continue;
            }
            let Some(record) = record else { continue };
            let history = self.history_in(tx, key).await?;
            let inbox = self.inbox_in(tx, key).await?;
            let Some((record, events)) = t.visit(record, &history, &inbox) else {
                continue;
            };
            let events = events
                .iter()
                .map(serde_json::to_string)
                .collect::<Result<Vec<_>, _>>()?;
            let json = serde_json::to_string(&record)?;
            let status = record.status.as_str();
            let (append, del_inbox, update) = tokio::try_join!(
                tx.prepare_cached(&sql.append_history),
                tx.prepare_cached(&sql.delete_inbox),
                tx.prepare_cached(&sql.update_record),
            )?;
            let owners = vec![key; events.len()];
            tx.execute(&append, &[&owners, &events]).await?;
            tx.execute(&del_inbox, &[&key]).await?;
            // Clears the lease (a worker mid-episode loses its commit) and `ready_at`.
            tx.execute(&update, &[&key, &status, &json]).await?;
        }
        let targets: Vec<&str> = t.messages.iter().map(|(id, _)| id.as_str()).collect();
        let st = tx.prepare_cached(&sql.existing_ids).await?;
        let existing: HashSet<String> = tx
            .query(&st, &[&targets])
            .await?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?;
        for (target, m) in &t.messages {
            if existing.contains(target.as_str()) {
                batch.push(target.as_str(), m)?;
            }
        }
        Ok(())
    }

    /// [`Store::create_leased`]: one statement ([`write_one`](Self::write_one): retried,
    /// and with its `NOTIFY` under `notify_in_transaction`), so one round trip and one WAL
    /// flush.
    ///
    /// [`Store::create_leased`]: crate::storage::Store::create_leased
    pub(super) async fn create_leased_row(
        &self,
        new: &NewInstance,
        now: Timestamp,
        lock_for: Duration,
        wake: Wake,
    ) -> Result<Option<OrchestrationWorkItem>, StoreError> {
        let what = "creating a leased instance";
        let record = new.record(None);
        let mut start = new.start_message();
        let encode = |e: serde_json::Error| self.err(what, e.into());
        let json = serde_json::to_string(&record).map_err(encode)?;
        let message = serde_json::to_string(&start).map_err(encode)?;
        let status = record.status.as_str();
        let token = new_token();
        let (created, until, visible) = (
            ts(record.created_at),
            ts(now + lock_for),
            ts(start.id.visible_at),
        );
        let params: [&(dyn ToSql + Sync); 9] = [
            &new.instance_id.as_str(),
            &record.name,
            &status,
            &created,
            &json,
            &token,
            &until,
            &visible,
            &message,
        ];
        let rows = self
            .write_one(what, &self.inner.sql.insert_leased, &params, wake)
            .await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        start.id.seq = to_u64(row.try_get(0).map_err(|e| self.err(what, e.into()))?);
        Ok(Some(OrchestrationWorkItem {
            instance: record,
            history_len: 0,
            messages: vec![start],
            lock: LockToken(to_u64(token)),
        }))
    }

    pub(super) async fn create_tx(
        &self,
        tx: &Transaction<'_>,
        new: &NewInstance,
    ) -> R<CreateResult> {
        let mut batch = Enqueue::default();
        let created = self
            .create_in(tx, new, &mut batch)
            .await?
            .map_err(Error::Op)?;
        batch.flush(self, tx).await?;
        self.notify(tx, Wake::CREATED).await?;
        Ok(created)
    }

    pub(super) async fn send_tx(
        &self,
        tx: &Transaction<'_>,
        id: &InstanceId,
        message: &Message,
    ) -> R<()> {
        let key = id.as_str();
        let select = tx.prepare_cached(&self.inner.sql.select_status).await?;
        let Some(row) = tx.query_opt(&select, &[&key]).await? else {
            return Err(Error::Op(StoreError::InstanceNotFound(key.to_owned())));
        };
        let status = RuntimeStatus::parse(row.try_get(0)?);
        let accepted = status.is_none_or(|s| crate::storage::accepts_message(s, &message.event));
        if !accepted {
            return Err(Error::Op(StoreError::InstanceNotRunning(key.to_owned())));
        }
        if let (Some(status), true) = (status, crate::storage::is_control_request(&message.event)) {
            // Under the row lock taken above, as every commit to this instance takes it.
            let read = tx.prepare_cached(&self.inner.sql.read_inbox).await?;
            let mut queued = Vec::new();
            for row in tx.query(&read, &[&key]).await? {
                queued.push(decode::<Message>(row.try_get(0)?)?.event);
            }
            crate::storage::check_control(id, status, &queued, &message.event)
                .map_err(Error::Op)?;
        }
        let mut batch = Enqueue::default();
        batch.push(key, message)?;
        batch.flush(self, tx).await?;
        self.notify(tx, Wake::ORCHESTRATION).await
    }

    pub(super) async fn abandon_tx(
        &self,
        tx: &Transaction<'_>,
        id: &InstanceId,
        lock: LockToken,
        retry_at: Timestamp,
        error: Option<&str>,
    ) -> R<()> {
        let sql = &self.inner.sql;
        let key = id.as_str();
        let lock_rows = tx.prepare_cached(&sql.lock_rows).await?;
        let rows = tx.query(&lock_rows, &[&vec![key], &vec![key]]).await?;
        let record = match rows.first() {
            Some(row) if row.try_get::<_, Option<i64>>(1)? == Some(to_i64(lock.0)) => {
                row.try_get::<_, Option<String>>(2)?
            }
            _ => None,
        };
        let Some(record) = record else {
            return Err(Error::Op(StoreError::LockLost(key.to_owned())));
        };
        let mut record: InstanceRecord = decode(&record)?;
        record.last_error = error.map(str::to_owned);
        let json = serde_json::to_string(&record)?;
        let status = record.status.as_str();
        // Hold the instance, not its messages: they keep their times and their order.
        let hold = tx.prepare_cached(&sql.hold_record).await?;
        tx.execute(&hold, &[&key, &status, &json, &ts(retry_at)])
            .await?;
        self.notify(tx, Wake::ORCHESTRATION).await
    }

    /// Runs one statement that is a whole write: in autocommit, or, with
    /// [`PostgresOptions::notify_in_transaction`], in a transaction with its `NOTIFY`.
    ///
    /// [`PostgresOptions::notify_in_transaction`]: super::PostgresOptions::notify_in_transaction
    pub(super) async fn write_one(
        &self,
        what: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        wake: Wake,
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        if self.inner.options.notify_in_transaction {
            return retry_tx!(self, what, tx => async {
                let st = tx.prepare_cached(sql).await?;
                let rows = tx.query(&st, params).await?;
                self.notify(&tx, wake).await?;
                Ok::<_, Error>(rows)
            });
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result: R<Vec<tokio_postgres::Row>> = async {
                let conn = self.conn().await?;
                let st = conn.prepare_cached(sql).await?;
                Ok(conn.query(&st, params).await?)
            }
            .await;
            match result {
                Err(Error::Db(e)) if attempt < MAX_ATTEMPTS && retryable(&e) => {
                    pause(Duration::from_millis(u64::from(attempt) * 5)).await;
                }
                other => return other.map_err(|e| self.err(what, e)),
            }
        }
    }

    pub(super) async fn purge_tx(&self, tx: &Transaction<'_>, id: &InstanceId) -> R<bool> {
        let sql = &self.inner.sql;
        let key = id.as_str();
        let (del_tasks, del_inbox, del_history, del_instance) = tokio::try_join!(
            tx.prepare_cached(&sql.delete_activities),
            tx.prepare_cached(&sql.delete_inbox),
            tx.prepare_cached(&sql.delete_history),
            tx.prepare_cached(&sql.delete_instance),
        )?;
        // Tasks before the instance: the order `complete_activity` locks them in.
        let (_, _, _, n) = tokio::try_join!(
            async { tx.execute(&del_tasks, &[&key]).await },
            async { tx.execute(&del_inbox, &[&key]).await },
            async { tx.execute(&del_history, &[&key]).await },
            async { tx.execute(&del_instance, &[&key]).await },
        )?;
        if n > 0 {
            self.notify(tx, Wake::PURGED).await?;
        }
        Ok(n > 0)
    }
}

/// Messages to enqueue in one statement at the end of a transaction, plus the instances
/// whose `ready_at` must be recomputed and those whose hold a terminate ends.
#[derive(Default)]
pub(super) struct Enqueue {
    pub(super) ids: Vec<String>,
    pub(super) visible_at: Vec<i64>,
    pub(super) messages: Vec<String>,
    pub(super) touched: BTreeSet<String>,
    pub(super) released: Vec<String>,
}

impl Enqueue {
    pub(super) fn push(&mut self, id: &str, message: &Message) -> R<()> {
        self.ids.push(id.to_owned());
        self.visible_at.push(ts(message.id.visible_at));
        self.messages.push(serde_json::to_string(message)?);
        self.touch(id);
        if crate::storage::ends_hold(&message.event) {
            self.released.push(id.to_owned());
        }
        Ok(())
    }

    fn touch(&mut self, id: &str) {
        self.touched.insert(id.to_owned());
    }

    async fn flush(self, store: &PostgresStore, tx: &Transaction<'_>) -> R<()> {
        let sql = &store.inner.sql;
        let (enqueue, ready, release) = tokio::try_join!(
            tx.prepare_cached(&sql.enqueue),
            tx.prepare_cached(&sql.refresh_ready),
            tx.prepare_cached(&sql.release_holds),
        )?;
        let touched: Vec<String> = self.touched.into_iter().collect();
        tokio::try_join!(
            async {
                if self.released.is_empty() {
                    Ok(0)
                } else {
                    tx.execute(&release, &[&self.released]).await
                }
            },
            async {
                if self.ids.is_empty() {
                    Ok(0)
                } else {
                    tx.execute(&enqueue, &[&self.ids, &self.visible_at, &self.messages])
                        .await
                }
            },
            async {
                if touched.is_empty() {
                    Ok(0)
                } else {
                    tx.execute(&ready, &[&touched]).await
                }
            },
        )?;
        Ok(())
    }
}
