//! Helpers of every part of the store: the internal error, retries, value conversions,
//! connections from a pool.

use std::error::Error as _;
use std::time::Duration;

use deadpool_postgres::{Object, Pool, PoolError};
use tokio_postgres::error::SqlState;

use crate::error::StoreError;
use crate::history::HistoryEvent;
use crate::ids::Timestamp;

/// How often a transaction that Postgres aborted (deadlock, serialisation) is retried.
pub(super) const MAX_ATTEMPTS: u32 = 8;

/// An internal failure: the operation's own error (the transaction is rolled back), a
/// database error, or anything else.
pub(super) enum Error {
    Op(StoreError),
    Db(tokio_postgres::Error),
    /// What failed, and the error behind it when there is one.
    Other(String, Option<Source>),
}

/// The cause kept in a [`StoreError::Backend`].
type Source = Box<dyn std::error::Error + Send + Sync>;

pub(super) type R<T> = Result<T, Error>;

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        Error::Db(e)
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Other(
            format!("a stored value does not encode or decode: {e}"),
            Some(Box::new(e)),
        )
    }
}

pub(super) fn retryable(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    })
}

/// A database error with its cause, SQLSTATE, detail and hint.
pub(super) fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut msg = format!("{} ({})", db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            msg.push_str("; ");
            msg.push_str(detail);
        }
        if let Some(hint) = db.hint() {
            msg.push_str("; hint: ");
            msg.push_str(hint);
        }
        return msg;
    }
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}

/// Waits before retrying a database operation. Network back-off, not engine time: it does
/// not go through the worker's `Clock`.
#[allow(
    clippy::disallowed_methods,
    reason = "a retry back-off against the database, not orchestration or timer time"
)]
pub(super) async fn pause(d: Duration) {
    tokio::time::sleep(d).await;
}

pub(super) fn decode<T: serde::de::DeserializeOwned>(json: &str) -> R<T> {
    Ok(serde_json::from_str(json)?)
}

/// Decodes a history row (TEXT, as `serde_json` wrote it, so its tag comes first) in one
/// pass: see [`crate::history::from_stored_json`].
pub(super) fn decode_event(json: &str) -> R<HistoryEvent> {
    Ok(crate::history::from_stored_json(json.as_bytes())?)
}

/// A fresh lease token: 63 random bits. Not from a sequence, because leases are written with
/// asynchronous commit: after a database crash a sequence could hand out a token again, a
/// random one (practically) never.
pub(super) fn new_token() -> i64 {
    i64::try_from(uuid::Uuid::new_v4().as_u128() >> 65).unwrap_or(1)
}

pub(super) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(super) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(super) fn ts(t: Timestamp) -> i64 {
    to_i64(t.as_unix_millis())
}

pub(super) fn from_ts(v: i64) -> Timestamp {
    Timestamp::from_unix_millis(to_u64(v))
}

pub(super) async fn get(pool: &Pool) -> R<Object> {
    pool.get().await.map_err(|e| match e {
        PoolError::Backend(e) => Error::Db(e),
        PoolError::Timeout(_) => Error::Other(
            format!(
                "no database connection became free in time (pool of {}): {e}",
                pool.status().max_size
            ),
            Some(Box::new(e)),
        ),
        other => Error::Other(
            format!("cannot get a database connection: {other}"),
            Some(Box::new(other)),
        ),
    })
}

pub(super) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
