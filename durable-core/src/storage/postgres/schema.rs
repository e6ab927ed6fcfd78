//! The task hub's schema: its versions and migrations, and task hub names.

use deadpool_postgres::{Pool, PoolError};
use tokio_postgres::error::SqlState;

use super::util::describe;
use crate::error::StoreError;

/// The schema version this build creates and understands.
const SCHEMA_VERSION: i32 = 3;
/// First key of the advisory lock that serialises migrations (the second is the hub's hash).
pub(super) const MIGRATION_LOCK: i32 = 0x6475_7261; // "dura"

/// The longest task hub name (it is also part of the notification channel's name, which
/// Postgres limits to 63 bytes).
pub(super) const MAX_HUB_LEN: usize = 48;

/// Appended to "permission denied" errors.
const PRIVILEGES_HINT: &str = " (to create a task hub, the database user needs the CREATE \
    privilege on the database; or an administrator creates the schema, owned by that user, \
    and the store creates its tables in it)";

/// The migrations, in order: entry `n` brings the schema from version `n` to `n + 1`.
/// `{s}` is the quoted schema (the task hub).
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE {s}.schema_version (
    version INT NOT NULL PRIMARY KEY,
    installed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- Message seqs, activity task ids and lease tokens.
CREATE SEQUENCE {s}.ids;
CREATE TABLE {s}.instances (
    id TEXT COLLATE "C" PRIMARY KEY,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    -- The InstanceRecord as JSON.
    record TEXT NOT NULL,
    -- Earliest visible_at in the inbox; NULL when the inbox is empty.
    ready_at BIGINT,
    -- The lease: token and expiry (ms since the Unix epoch); NULL when not leased.
    lock_token BIGINT,
    locked_until BIGINT,
    -- When a worker may take the instance: its first message, or its lease expiry.
    due_at BIGINT GENERATED ALWAYS AS (
        CASE WHEN lock_token IS NULL THEN ready_at
             WHEN ready_at IS NULL THEN NULL
             ELSE GREATEST(locked_until, ready_at) END
    ) STORED
);
CREATE INDEX instances_due ON {s}.instances (due_at, id);
CREATE TABLE {s}.history (
    instance_id TEXT COLLATE "C" NOT NULL,
    idx BIGINT NOT NULL,
    event TEXT NOT NULL,
    PRIMARY KEY (instance_id, idx)
);
CREATE TABLE {s}.inbox (
    instance_id TEXT COLLATE "C" NOT NULL,
    seq BIGINT NOT NULL,
    visible_at BIGINT NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (instance_id, seq)
);
CREATE INDEX inbox_visible ON {s}.inbox (instance_id, visible_at, seq);
CREATE TABLE {s}.activities (
    id BIGINT PRIMARY KEY,
    instance_id TEXT COLLATE "C" NOT NULL,
    -- When the task may be taken: enqueue or retry time, or, while leased, the lease expiry.
    visible_at BIGINT NOT NULL,
    lock_token BIGINT,
    task TEXT NOT NULL
);
CREATE INDEX activities_visible ON {s}.activities (visible_at, id);
CREATE INDEX activities_instance ON {s}.activities (instance_id);
"#,
    r"
-- The latest heartbeat details a run recorded (JSON), replacing those in `task`.
ALTER TABLE {s}.activities ADD COLUMN heartbeat TEXT;
-- The task's heartbeat timeout (ms): it is leased for no longer than this.
ALTER TABLE {s}.activities ADD COLUMN heartbeat_timeout BIGINT;
",
    r"
-- The hold an abandoned episode left (ms; NULL: none), cleared by the next commit or a
-- terminate: the instance is not taken before it, while its messages keep their own times
-- (and order).
ALTER TABLE {s}.instances ADD COLUMN not_before BIGINT;
-- `due_at` honours the hold (a generated column's expression cannot be altered before
-- PostgreSQL 17: it is dropped, with its index, and added again).
ALTER TABLE {s}.instances DROP COLUMN due_at;
ALTER TABLE {s}.instances ADD COLUMN due_at BIGINT GENERATED ALWAYS AS (
    CASE WHEN ready_at IS NULL THEN NULL
         WHEN lock_token IS NULL THEN GREATEST(ready_at, not_before)
         ELSE GREATEST(locked_until, ready_at, not_before) END
) STORED;
CREATE INDEX instances_due ON {s}.instances (due_at, id);
-- Newest first (the dashboard's list): one page read backwards from the index.
CREATE INDEX instances_created ON {s}.instances (created_at, id);
",
];

/// Checks or creates the task hub's schema, under an advisory lock so concurrent starts
/// do not race.
pub(super) async fn migrate(pool: &Pool, hub: &str, schema: &str) -> Result<(), StoreError> {
    let fail = |what: &str, e: tokio_postgres::Error| {
        let mut msg = format!("task hub `{hub}`: {what}: {}", describe(&e));
        if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
            msg.push_str(PRIVILEGES_HINT);
        }
        StoreError::backend_with(msg, e)
    };
    let mut conn = pool.get().await.map_err(|e| match e {
        PoolError::Backend(e) => fail("cannot connect to PostgreSQL", e),
        other => StoreError::backend_with(
            format!("task hub `{hub}`: cannot connect to PostgreSQL: {other}"),
            other,
        ),
    })?;
    let tx = conn
        .transaction()
        .await
        .map_err(|e| fail("cannot begin a transaction", e))?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        &[&MIGRATION_LOCK, &hub],
    )
    .await
    .map_err(|e| fail("cannot take the migration lock", e))?;
    let exists: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
            &[&hub],
        )
        .await
        .and_then(|r| r.try_get(0))
        .map_err(|e| fail("cannot look for the schema", e))?;
    if !exists {
        tx.batch_execute(&format!("CREATE SCHEMA {schema}"))
            .await
            .map_err(|e| fail("cannot create the schema", e))?;
    }
    let versioned: bool = tx
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&format!("{schema}.schema_version")],
        )
        .await
        .and_then(|r| r.try_get(0))
        .map_err(|e| fail("cannot read the schema version", e))?;
    let current: i32 = if versioned {
        tx.query_one(
            &format!("SELECT COALESCE(MAX(version), 0) FROM {schema}.schema_version"),
            &[],
        )
        .await
        .and_then(|r| r.try_get(0))
        .map_err(|e| fail("cannot read the schema version", e))?
    } else {
        let relations: i64 = tx
            .query_one(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1",
                &[&hub],
            )
            .await
            .and_then(|r| r.try_get(0))
            .map_err(|e| fail("cannot inspect the schema", e))?;
        if relations > 0 {
            return Err(StoreError::backend(format!(
                "task hub `{hub}`: the schema `{hub}` exists but is not a durable task hub (it has \
                 no schema_version table); choose another task hub name"
            )));
        }
        0
    };
    if current > SCHEMA_VERSION {
        return Err(StoreError::backend(format!(
            "task hub `{hub}` has schema version {current}, but this build of durable knows \
             versions up to {SCHEMA_VERSION}: upgrade durable, or use another task hub"
        )));
    }
    for version in current + 1..=SCHEMA_VERSION {
        let ddl =
            MIGRATIONS[usize::try_from(version - 1).unwrap_or_default()].replace("{s}", schema);
        tx.batch_execute(&ddl)
            .await
            .map_err(|e| fail(&format!("cannot migrate to schema version {version}"), e))?;
        tx.execute(
            &format!("INSERT INTO {schema}.schema_version (version) VALUES ($1)"),
            &[&version],
        )
        .await
        .map_err(|e| fail("cannot record the schema version", e))?;
    }
    tx.commit()
        .await
        .map_err(|e| fail("cannot commit the schema", e))
}

pub(super) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

pub(super) fn validate_hub(hub: &str) -> Result<(), StoreError> {
    let valid = !hub.is_empty()
        && hub.len() <= MAX_HUB_LEN
        && hub.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !hub.starts_with(|c: char| c.is_ascii_digit())
        && !hub.to_ascii_lowercase().starts_with("pg_");
    if valid {
        Ok(())
    } else {
        Err(StoreError::backend(format!(
            "invalid task hub name `{hub}`: use 1 to {MAX_HUB_LEN} ASCII letters, digits and `_`, \
             not starting with a digit or `pg_`"
        )))
    }
}
