//! The SQL statements of a task hub.

use crate::history::RuntimeStatus;

/// Every statement, with the schema filled in (prepared and cached per connection).
pub(super) struct Sql {
    pub(super) fetch_orchestrations: String,
    pub(super) fetch_instances: String,
    pub(super) release_kept: String,
    pub(super) complete_handed_off: String,
    pub(super) fetch_activities: String,
    pub(super) lock_rows: String,
    pub(super) select_for_update: String,
    pub(super) select_status: String,
    pub(super) insert_instance: String,
    pub(super) insert_started: String,
    pub(super) insert_leased: String,
    pub(super) replace_instance: String,
    pub(super) update_record: String,
    pub(super) update_records: String,
    pub(super) delete_instance: String,
    pub(super) delete_history: String,
    pub(super) delete_histories: String,
    pub(super) delete_inbox: String,
    pub(super) delete_activities: String,
    pub(super) append_history: String,
    pub(super) consume: String,
    pub(super) enqueue: String,
    pub(super) refresh_ready: String,
    pub(super) hold_record: String,
    pub(super) release_holds: String,
    pub(super) enqueue_activities: String,
    pub(super) complete_activity: String,
    /// Locks a leased activity task's row if `lock` still holds it (transactional runs).
    pub(super) lock_activity: String,
    pub(super) release_activity: String,
    pub(super) renew_activity: String,
    pub(super) record_heartbeat: String,
    pub(super) renew_activities: String,
    pub(super) next_wake: String,
    pub(super) queue_depths: String,
    pub(super) read_record: String,
    pub(super) read_history: String,
    pub(super) read_inbox: String,
    pub(super) existing_ids: String,
    pub(super) query: String,
    pub(super) count: String,
    pub(super) query_newest: String,
}

impl Sql {
    #[allow(clippy::too_many_lines, reason = "one SQL text per statement")]
    pub(super) fn new(schema: &str) -> Self {
        let s = |text: &str| text.replace("{s}", schema);
        // The leased instance `picked` with its history length and its messages visible
        // at $1.
        let work_item = "SELECT p.record, p.lock_token,
                   (SELECT COALESCE(MAX(h.idx) + 1, 0) FROM {s}.history h
                    WHERE h.instance_id = p.id),
                   m.visible_at, m.seq, m.message, p.id
            FROM picked p
            LEFT JOIN {s}.inbox m ON m.instance_id = p.id AND m.visible_at <= $1
            ORDER BY p.id, m.visible_at, m.seq";
        let terminal = RuntimeStatus::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .map(|s| format!("'{}'", s.as_str()))
            .collect::<Vec<_>>()
            .join(", ");
        Self {
            // Lease the first $4 due instances and read them with their visible messages,
            // in one statement.
            fetch_orchestrations: s(&format!(
                "WITH picked AS (
                    UPDATE {{s}}.instances SET lock_token = $3, locked_until = $2
                    WHERE id IN (SELECT id FROM {{s}}.instances WHERE due_at <= $1
                                 ORDER BY due_at, id LIMIT $4 FOR UPDATE SKIP LOCKED)
                    RETURNING id, record, lock_token)
                {work_item}"
            )),
            // Leases the instances in $1 that no one else holds, whatever their messages
            // (rows locked in id order, as commits lock them).
            fetch_instances: s(&format!(
                "WITH picked AS (
                    UPDATE {{s}}.instances SET lock_token = $4, locked_until = $3
                    WHERE id IN (SELECT id FROM {{s}}.instances
                                 WHERE id = ANY($1)
                                   AND (lock_token IS NULL OR locked_until <= $2)
                                 ORDER BY id FOR UPDATE)
                    RETURNING id, record, lock_token)
                {}",
                work_item.replace("$1", "$2")
            )),
            // Ends the lease $2 holds on $1 (kept by an eager commit), changing nothing else;
            // answers whether the instance has messages.
            release_kept: s(
                "UPDATE {s}.instances SET lock_token = NULL, locked_until = NULL
                WHERE id = $1 AND lock_token = $2 RETURNING ready_at IS NOT NULL",
            ),
            // Lease up to $3 due tasks: while leased, a task is due again at its expiry (no
            // later than its heartbeat timeout after $1).
            fetch_activities: s("WITH cand AS (
                    SELECT id, visible_at FROM {s}.activities WHERE visible_at <= $1
                    ORDER BY visible_at, id LIMIT $3 FOR UPDATE SKIP LOCKED),
                leased AS (
                    UPDATE {s}.activities a
                    SET lock_token = $4,
                        visible_at = LEAST($2, $1 + COALESCE(a.heartbeat_timeout, $2 - $1))
                    FROM cand WHERE a.id = cand.id
                    RETURNING a.id, a.task, a.lock_token, a.heartbeat, cand.visible_at AS was)
                SELECT id, task, lock_token, heartbeat FROM leased ORDER BY was, id"),
            // Locks the rows in $1 in id order; answers the records of those in $2.
            lock_rows: s(
                "SELECT id, lock_token, CASE WHEN id = ANY($2) THEN record END
                FROM {s}.instances WHERE id = ANY($1) ORDER BY id FOR UPDATE",
            ),
            select_for_update: s("SELECT record FROM {s}.instances WHERE id = $1 FOR UPDATE"),
            select_status: s("SELECT status FROM {s}.instances WHERE id = $1 FOR UPDATE"),
            insert_instance: s(
                "INSERT INTO {s}.instances (id, name, status, created_at, record)
                VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
            ),
            // A brand-new instance leased (token $6, until $7) for its first episode's commit
            // in the same transaction; nothing when the id is taken.
            insert_started: s("INSERT INTO {s}.instances
                    (id, name, status, created_at, record, lock_token, locked_until)
                VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING"),
            // A brand-new instance leased (token $6, until $7) with its start message ($9,
            // visible at $8) in the inbox, in one statement; answers the message's seq, or
            // nothing when the id is taken.
            insert_leased: s("WITH created AS (
                    INSERT INTO {s}.instances
                        (id, name, status, created_at, record, lock_token, locked_until, ready_at)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING
                    RETURNING id)
                INSERT INTO {s}.inbox (instance_id, seq, visible_at, message)
                SELECT id, nextval('{s}.ids'), $8, $9 FROM created
                RETURNING seq"),
            replace_instance: s("UPDATE {s}.instances
                SET name = $2, status = $3, created_at = $4, record = $5,
                    ready_at = NULL, lock_token = NULL, locked_until = NULL, not_before = NULL
                WHERE id = $1"),
            // Ends the lease and the hold; run after the inbox changes, whose first time it
            // records.
            update_record: s("UPDATE {s}.instances
                SET status = $2, record = $3, lock_token = NULL, locked_until = NULL,
                    not_before = NULL,
                    ready_at = (SELECT MIN(m.visible_at) FROM {s}.inbox m
                                WHERE m.instance_id = $1)
                WHERE id = $1"),
            // Applies episodes: records, statuses, ends of leases and holds; run after the
            // inbox changes, whose first times they record, and after the tasks are queued:
            // an episode whose eager task (token $4) was leased to its committer keeps its
            // lease until $5 when $5 is set. Answers, per episode, whether the instance is
            // due (it has messages and no lease).
            update_records: s("UPDATE {s}.instances i
                SET status = t.status, record = t.record,
                    lock_token = CASE WHEN k.kept THEN i.lock_token END,
                    locked_until = CASE WHEN k.kept THEN t.keep_until END,
                    not_before = NULL,
                    ready_at = (SELECT MIN(m.visible_at) FROM {s}.inbox m
                                WHERE m.instance_id = i.id)
                FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[])
                        AS t(id, status, record, eager_token, keep_until)
                     CROSS JOIN LATERAL (SELECT t.keep_until IS NOT NULL AND EXISTS (
                        SELECT 1 FROM {s}.activities a
                        WHERE a.instance_id = t.id AND a.lock_token = t.eager_token)) AS k(kept)
                WHERE i.id = t.id
                RETURNING i.ready_at IS NOT NULL AND NOT k.kept"),
            // Ends the lease and holds the instance until $4 (its inbox is unchanged).
            hold_record: s("UPDATE {s}.instances
                SET status = $2, record = $3, lock_token = NULL, locked_until = NULL,
                    not_before = $4
                WHERE id = $1"),
            // Ends the holds of the instances in $1 (a terminate arrived: `ends_hold`).
            release_holds: s("UPDATE {s}.instances SET not_before = NULL
                WHERE id = ANY($1) AND not_before IS NOT NULL"),
            delete_instance: s("DELETE FROM {s}.instances WHERE id = $1"),
            delete_history: s("DELETE FROM {s}.history WHERE instance_id = $1"),
            delete_histories: s("DELETE FROM {s}.history WHERE instance_id = ANY($1)"),
            delete_inbox: s("DELETE FROM {s}.inbox WHERE instance_id = $1"),
            delete_activities: s("DELETE FROM {s}.activities WHERE instance_id = $1"),
            // Appends events ($2) to the histories of instances ($1), in array order.
            append_history: s("INSERT INTO {s}.history (instance_id, idx, event)
                SELECT t.id,
                       COALESCE((SELECT MAX(h.idx) + 1 FROM {s}.history h
                                 WHERE h.instance_id = t.id), 0)
                         + row_number() OVER (PARTITION BY t.id ORDER BY t.ord) - 1,
                       t.event
                FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS t(id, event, ord)"),
            consume: s("DELETE FROM {s}.inbox m
                USING unnest($1::text[], $2::bigint[]) AS t(id, seq)
                WHERE m.instance_id = t.id AND m.seq = t.seq"),
            // Seqs follow the order of the arrays (nextval runs after the sort).
            enqueue: s(
                "INSERT INTO {s}.inbox (instance_id, seq, visible_at, message)
                SELECT t.instance_id, nextval('{s}.ids'), t.visible_at, t.message
                FROM unnest($1::text[], $2::bigint[], $3::text[])
                     WITH ORDINALITY AS t(instance_id, visible_at, message, ord)
                ORDER BY t.ord",
            ),
            refresh_ready: s("UPDATE {s}.instances i SET ready_at = x.first
                FROM (SELECT u.id, (SELECT MIN(m.visible_at) FROM {s}.inbox m
                                    WHERE m.instance_id = u.id) AS first
                      FROM unnest($1::text[]) AS u(id)) x
                WHERE i.id = x.id AND i.ready_at IS DISTINCT FROM x.first"),
            // Tasks with a token in $5 are inserted leased to their committer until $6 —
            // unless a task queued earlier is due at $7 (a row visible by then, leased by
            // nobody or no longer, or a task another episode of this batch queued before
            // it): an eager task must not overtake it; nor when its instance is to stay
            // leased ($8) and has messages due at $7, which the kept lease would hold back.
            // Answers the (id, token) of those leased.
            enqueue_activities: s("WITH t AS (
                    SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[],
                                         $5::bigint[], $6::bigint[], $8::bool[])
                        WITH ORDINALITY AS t(instance_id, visible_at, task, heartbeat_timeout,
                                             lock_token, leased_until, keep, ord)),
                ins AS (
                    INSERT INTO {s}.activities
                        (id, instance_id, visible_at, task, heartbeat_timeout, lock_token)
                    SELECT nextval('{s}.ids'), t.instance_id,
                        CASE WHEN e.leased THEN t.leased_until ELSE t.visible_at END,
                        t.task, t.heartbeat_timeout,
                        CASE WHEN e.leased THEN t.lock_token END
                    FROM t CROSS JOIN LATERAL (SELECT t.lock_token IS NOT NULL
                        AND NOT EXISTS (SELECT 1 FROM t q
                                        WHERE q.ord < t.ord AND q.lock_token IS NULL
                                          AND q.instance_id <> t.instance_id)
                        AND NOT EXISTS (SELECT 1 FROM {s}.activities a
                                        WHERE a.visible_at <= $7::bigint)
                        AND NOT (t.keep AND EXISTS (SELECT 1 FROM {s}.inbox m
                                        WHERE m.instance_id = t.instance_id
                                          AND m.visible_at <= $7::bigint))) AS e(leased)
                    ORDER BY t.ord
                    RETURNING id, lock_token)
                SELECT id, lock_token FROM ins WHERE lock_token IS NOT NULL"),
            // Removes tasks whose results an episode consumed from memory, if still leased;
            // the rows are locked in id order, as lease renewals lock them.
            complete_handed_off: s("WITH held AS (
                    SELECT a.id FROM {s}.activities a
                    JOIN unnest($1::bigint[], $2::bigint[]) AS t(id, token)
                      ON a.id = t.id AND a.lock_token = t.token
                    ORDER BY a.id FOR UPDATE OF a)
                DELETE FROM {s}.activities a USING held WHERE a.id = held.id"),
            // Removes the leased task and, if its instance is still running, enqueues the
            // result: one statement. Answers (tasks removed, results enqueued).
            complete_activity: s(&format!(
                "WITH done AS (
                    DELETE FROM {{s}}.activities WHERE id = $1 AND lock_token = $2
                    RETURNING instance_id),
                live AS (
                    UPDATE {{s}}.instances i SET ready_at = LEAST(COALESCE(i.ready_at, $3), $3)
                    FROM done WHERE i.id = done.instance_id AND i.status NOT IN ({terminal})
                    RETURNING i.id),
                queued AS (
                    INSERT INTO {{s}}.inbox (instance_id, seq, visible_at, message)
                    SELECT id, nextval('{{s}}.ids'), $3, $4 FROM live
                    RETURNING 1)
                SELECT (SELECT count(*) FROM done), (SELECT count(*) FROM queued)"
            )),
            lock_activity: s(
                "SELECT 1 FROM {s}.activities WHERE id = $1 AND lock_token = $2 FOR UPDATE",
            ),
            release_activity: s(
                "UPDATE {s}.activities SET visible_at = $3, lock_token = NULL
                WHERE id = $1 AND lock_token = $2 RETURNING 1",
            ),
            renew_activity: s("UPDATE {s}.activities SET visible_at = $3
                WHERE id = $1 AND lock_token = $2 RETURNING 1"),
            record_heartbeat: s("UPDATE {s}.activities SET visible_at = $3, heartbeat = $4
                WHERE id = $1 AND lock_token = $2 RETURNING 1"),
            // Answers the ids whose lease was held (and is now extended).
            renew_activities: s("WITH held AS (
                    SELECT a.id FROM {s}.activities a
                    JOIN unnest($1::bigint[], $2::bigint[]) AS t(id, token)
                      ON a.id = t.id AND a.lock_token = t.token
                    ORDER BY a.id FOR UPDATE OF a)
                UPDATE {s}.activities a SET visible_at = $3
                FROM held WHERE a.id = held.id RETURNING a.id"),
            next_wake: s("SELECT (SELECT MIN(due_at) FROM {s}.instances),
                                 (SELECT MIN(visible_at) FROM {s}.activities)"),
            // Over the indexes: due instances (`instances_due`), their visible messages
            // (`inbox_visible`), visible tasks (`activities_visible`); a leased instance or
            // task is due again only at its lease's expiry.
            queue_depths: s("SELECT
                (SELECT count(*) FROM {s}.instances WHERE due_at <= $1),
                (SELECT count(*) FROM {s}.activities WHERE visible_at <= $1),
                (SELECT count(*) FROM {s}.instances i
                 JOIN {s}.inbox m ON m.instance_id = i.id AND m.visible_at <= $1
                 WHERE i.due_at <= $1
                   AND m.message::json -> 'event' ->> 'eventType' = 'TimerFired')"),
            read_record: s("SELECT record FROM {s}.instances WHERE id = $1"),
            read_history: s("SELECT event FROM {s}.history WHERE instance_id = $1 ORDER BY idx"),
            read_inbox: s("SELECT message FROM {s}.inbox WHERE instance_id = $1
                ORDER BY visible_at, seq"),
            existing_ids: s("SELECT id FROM {s}.instances WHERE id = ANY($1)"),
            query: s("SELECT record, id FROM {s}.instances
                WHERE ($1::text IS NULL OR id > $1)
                  AND ($2::text IS NULL OR (id >= $2 AND starts_with(id, $2)))
                  AND (cardinality($3::text[]) = 0 OR status = ANY($3))
                  AND ($4::text IS NULL OR name = $4)
                  AND ($5::bigint IS NULL OR created_at >= $5)
                  AND ($6::bigint IS NULL OR created_at <= $6)
                  AND ($7 OR left(id, 1) <> '@')
                ORDER BY id LIMIT $8"),
            query_newest: s("SELECT record, id FROM {s}.instances
                WHERE ($1::bigint IS NULL OR (created_at, id) < ($1, $2::text))
                  AND ($3::text IS NULL OR (id >= $3 AND starts_with(id, $3)))
                  AND (cardinality($4::text[]) = 0 OR status = ANY($4))
                  AND ($5::text IS NULL OR name = $5)
                  AND ($6::bigint IS NULL OR created_at >= $6)
                  AND ($7::bigint IS NULL OR created_at <= $7)
                  AND ($8 OR left(id, 1) <> '@')
                ORDER BY created_at DESC, id DESC LIMIT $9"),
            count: s("SELECT status, count(*) FROM {s}.instances
                WHERE ($1::text IS NULL OR (id >= $1 AND starts_with(id, $1)))
                  AND (cardinality($2::text[]) = 0 OR status = ANY($2))
                  AND ($3::text IS NULL OR name = $3)
                  AND ($4::bigint IS NULL OR created_at >= $4)
                  AND ($5::bigint IS NULL OR created_at <= $5)
                  AND ($6 OR left(id, 1) <> '@')
                GROUP BY status"),
        }
    }
}
