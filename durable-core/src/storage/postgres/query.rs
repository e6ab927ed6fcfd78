//! Reads: instances, histories, queries, counts and queue depths.

use super::PostgresStore;
use super::util::{R, decode, decode_event, to_u64, ts};
use crate::history::{HistoryEvent, RuntimeStatus};
use crate::ids::{InstanceId, Timestamp};
use crate::storage::{InstancePage, InstanceQuery, InstanceRecord, QueueDepths, StatusCounts};

impl PostgresStore {
    pub(super) async fn count_queues(&self, now: Timestamp) -> R<QueueDepths> {
        let conn = self.conn().await?;
        let st = conn.prepare_cached(&self.inner.sql.queue_depths).await?;
        let row = conn.query_one(&st, &[&ts(now)]).await?;
        let count = |i: usize| row.try_get::<_, i64>(i).map(to_u64);
        Ok(QueueDepths::new(count(0)?, count(1)?, count(2)?))
    }

    pub(super) async fn read_record(&self, id: &InstanceId) -> R<Option<InstanceRecord>> {
        let conn = self.conn().await?;
        let st = conn.prepare_cached(&self.inner.sql.read_record).await?;
        match conn.query_opt(&st, &[&id.as_str()]).await? {
            Some(row) => Ok(Some(decode(row.try_get(0)?)?)),
            None => Ok(None),
        }
    }

    pub(super) async fn read_events(&self, id: &InstanceId) -> R<Vec<HistoryEvent>> {
        let conn = self.conn().await?;
        let st = conn.prepare_cached(&self.inner.sql.read_history).await?;
        let rows = conn.query(&st, &[&id.as_str()]).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push(decode_event(row.try_get(0)?)?);
        }
        Ok(out)
    }

    async fn query_newest(&self, query: &InstanceQuery) -> R<InstancePage> {
        let conn = self.conn().await?;
        let st = conn.prepare_cached(&self.inner.sql.query_newest).await?;
        let page = query.effective_page_size();
        let after = query
            .continuation
            .as_deref()
            .and_then(crate::storage::parse_newest_first_token);
        let after_at = after.map(|(t, _)| ts(t));
        let after_id = after.map(|(_, id)| id.to_owned());
        let (statuses, from, to) = filter_params(query);
        let limit = i64::try_from(page + 1).unwrap_or(i64::MAX);
        let rows = conn
            .query(
                &st,
                &[
                    &after_at,
                    &after_id,
                    &query.id_prefix,
                    &statuses,
                    &query.name,
                    &from,
                    &to,
                    &query.include_entities,
                    &limit,
                ],
            )
            .await?;
        let more = rows.len() > page;
        let mut instances = Vec::with_capacity(rows.len().min(page));
        for row in rows.iter().take(page) {
            instances.push(decode::<InstanceRecord>(row.try_get(0)?)?);
        }
        let continuation = if more {
            instances.last().map(crate::storage::newest_first_token)
        } else {
            None
        };
        Ok(InstancePage {
            instances,
            continuation,
        })
    }

    pub(super) async fn query(&self, query: &InstanceQuery) -> R<InstancePage> {
        if query.newest_first {
            return self.query_newest(query).await;
        }
        let conn = self.conn().await?;
        let st = conn.prepare_cached(&self.inner.sql.query).await?;
        let page = query.effective_page_size();
        let (statuses, from, to) = filter_params(query);
        let limit = i64::try_from(page + 1).unwrap_or(i64::MAX);
        let rows = conn
            .query(
                &st,
                &[
                    &query.continuation,
                    &query.id_prefix,
                    &statuses,
                    &query.name,
                    &from,
                    &to,
                    &query.include_entities,
                    &limit,
                ],
            )
            .await?;
        let more = rows.len() > page;
        let mut instances = Vec::with_capacity(rows.len().min(page));
        for row in rows.iter().take(page) {
            let record: InstanceRecord = decode(row.try_get(0)?)?;
            if query.matches(&record) {
                instances.push(record);
            }
        }
        let continuation = if more {
            rows.get(page - 1)
                .map(|row| row.try_get::<_, String>(1))
                .transpose()?
        } else {
            None
        };
        Ok(InstancePage {
            instances,
            continuation,
        })
    }

    pub(super) async fn count(&self, query: &InstanceQuery) -> R<Vec<(RuntimeStatus, u64)>> {
        let conn = self.conn().await?;
        let st = conn.prepare_cached(&self.inner.sql.count).await?;
        let (statuses, from, to) = filter_params(query);
        let rows = conn
            .query(
                &st,
                &[
                    &query.id_prefix,
                    &statuses,
                    &query.name,
                    &from,
                    &to,
                    &query.include_entities,
                ],
            )
            .await?;
        let mut counts = StatusCounts::default();
        for row in &rows {
            let status: String = row.try_get(0)?;
            let n: i64 = row.try_get(1)?;
            if let Some(status) = RuntimeStatus::parse(&status) {
                counts.add(status, u64::try_from(n).unwrap_or(0));
            }
        }
        Ok(counts.into_vec())
    }
}

/// The values every instance query binds for its filters: the statuses (as the `status`
/// column holds them) and the created-time bounds (ms).
fn filter_params(query: &InstanceQuery) -> (Vec<&'static str>, Option<i64>, Option<i64>) {
    let statuses = query.statuses.iter().map(|s| s.as_str()).collect();
    (
        statuses,
        query.created_from.map(ts),
        query.created_to.map(ts),
    )
}
