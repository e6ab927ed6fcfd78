//! Deterministic testing for `durable` orchestrations.
//!
//! The harness runs the real engine (replay executor, worker, in-memory store) on a
//! [`ManualClock`], so durable timers fire when the test advances time, not when the wall
//! clock says so: a 72-hour approval timeout is tested in milliseconds.

mod clock;

pub use clock::ManualClock;
