//! The store's own floor, measured in the same run: a bare redb commit of one small record
//! (a redb `Database` opened directly in a temp dir, durable commits), and per workload the
//! durable commits it makes ([`durable_core::RedbStore::commits`]) and how its latency
//! compares to commits × floor.

use std::fmt::Write as _;
use std::time::Instant;

use redb::TableDefinition;

use super::{BoxError, Row, ms};

const FLOOR: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("floor");

/// Commits measured for the floor (after a few unmeasured ones).
pub(crate) const FLOOR_SAMPLES: usize = 200;

/// Times `FLOOR_SAMPLES` durable commits of a one-row insert (a 100-byte record) into a fresh
/// redb file; returns each commit's latency in ms.
pub(crate) fn measure() -> Result<Vec<f64>, BoxError> {
    let dir = tempfile::Builder::new().prefix("durable-floor").tempdir()?;
    let db = redb::Database::create(dir.path().join("floor.redb"))?;
    let record = [b'x'; 100];
    let warm_up = 10;
    let mut out = Vec::with_capacity(FLOOR_SAMPLES);
    for i in 0..(warm_up + FLOOR_SAMPLES) as u64 {
        let t = Instant::now();
        let txn = db.begin_write()?;
        txn.open_table(FLOOR)?.insert(i, record.as_slice())?;
        txn.commit()?;
        if i >= warm_up as u64 {
            out.push(ms(t.elapsed()));
        }
    }
    Ok(out)
}

/// The row of the floor.
pub(crate) fn row(samples: &[f64]) -> Row {
    Row::times(
        "floor",
        "bare redb commit of one small record",
        "ms",
        samples,
    )
    .note("redb Database in the bench's temp dir, durable commit of a one-row insert")
}

/// A workload's commit row: `commits` durable commits for `orchestrations` orchestrations
/// (per orchestration in the median column), and, when `latency_ms` is given, the ratio of
/// that latency to `commits_in_latency` × `floor_ms`.
pub(crate) fn commits_row(
    workload: &str,
    what: &str,
    commits: u64,
    orchestrations: usize,
    latency: Option<(f64, f64)>,
    floor_ms: Option<f64>,
) -> Row {
    let per = commits as f64 / orchestrations.max(1) as f64;
    let mut note = format!("{commits} commits for {orchestrations} orchestration(s)");
    if let (Some((latency_ms, commits_in_latency)), Some(floor)) = (latency, floor_ms) {
        let floor_total = commits_in_latency * floor;
        if floor_total > 0.0 {
            let _ = write!(
                note,
                "; {what} {latency_ms:.2} ms = {:.1} × ({commits_in_latency:.1} commits × floor {floor:.3} ms)",
                latency_ms / floor_total
            );
        }
    }
    Row::times(
        workload,
        "durable commits / orchestration",
        "commits",
        &[per],
    )
    .note(note)
}
