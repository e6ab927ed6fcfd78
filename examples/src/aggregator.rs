//! Pattern 6, aggregator: a durable entity that collects values from many sources.

use durable_core::prelude::*;
use serde::{Deserialize, Serialize};

/// Running statistics of a stream of readings.
#[entity]
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Readings seen.
    pub count: u64,
    /// Their sum.
    pub sum: i64,
    /// The largest reading.
    pub max: Option<i64>,
}

#[entity]
impl Stats {
    /// Records one reading.
    pub fn record(&mut self, value: i64) {
        self.count += 1;
        self.sum += value;
        self.max = Some(self.max.map_or(value, |m| m.max(value)));
    }

    /// The average so far.
    pub fn average(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum as f64 / self.count as f64)
    }

    /// Starts over.
    pub fn reset(&mut self) {
        *self = Stats::default();
    }
}

/// Sends readings to a `Stats` entity from an orchestration and reads the result back.
#[orchestrator]
pub async fn report_readings(
    ctx: OrchestrationContext,
    readings: Vec<i64>,
) -> Result<Option<f64>, OrchestrationError> {
    let stats = ctx.signal_entity::<Stats>("sensor-1");
    for r in readings {
        stats.record(r);
    }
    Ok(ctx.entity::<Stats>("sensor-1").average().await?)
}
