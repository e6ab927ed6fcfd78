//! Deterministic testing for `durable` orchestrations: the time-travel harness.
//!
//! [`TestEnv`] runs the real engine — the worker, the replay executor and the in-memory
//! store of `durable_core` — on a [`ManualClock`]. Nothing is re-implemented, so what passes
//! here behaves the same in production; but time moves only when the test says so, and
//! every driving call returns once the engine is idle, so a 72-hour approval timeout is
//! tested in milliseconds without a single wall-clock sleep.
//!
//! - **Mocks**: replace an activity by a closure on its typed input
//!   ([`TestEnv::mock`]) or a [`Script`] (fail N times then succeed, never complete); every
//!   execution, real or mocked, is recorded ([`TestEnv::calls`]). Durable HTTP calls
//!   (feature `http-calls`) are answered by a closure or an [`HttpScript`] instead of the
//!   network ([`TestEnvBuilder::mock_http`]), and listed by [`TestEnv::http_requests`].
//! - **Virtual time**: [`TestEnv::advance`], [`TestEnv::advance_to_next_timer`],
//!   [`TestEnv::run_until_idle`], [`TestEnv::wait`], and tokio-style
//!   [auto-advance](TestEnvBuilder::auto_advance).
//! - **Inspection**: status, typed output, custom status, typed [`History`], and readable
//!   dumps for assertion messages ([`TestEnv::describe`]).
//! - **Versioning safety net**: [`replay_check`] replays an exported history
//!   ([`export_history`], from any store) against the current code and names the first
//!   divergence with both source locations.
//! - **Crash injection**: [`CrashTest`] crashes the worker after every store commit in turn
//!   and checks that the outcome never changes, counting activity re-runs.
//! - **Seeded simulation**: [`Simulation`] permutes activity completion order, delivers
//!   results twice and injects failures under a seed; a failing seed is printed and
//!   replayable.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use durable_core::prelude::*;
//! use serde::{Deserialize, Serialize};
//! use durable_testing::TestEnv;
//!
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
//! pub struct Order { id: u32, cents: u64 }
//!
//! #[activity]
//! async fn charge(order: Order) -> Result<String, ActivityError> {
//!     unimplemented!("calls the payment provider for order {}", order.id)
//! }
//!
//! #[orchestrator]
//! async fn checkout(ctx: OrchestrationContext, order: Order) -> Result<String, OrchestrationError> {
//!     let confirmed: bool = ctx.wait_for_event_timeout("confirmed", Duration::from_secs(72 * 3600))
//!         .await
//!         .unwrap_or(false);
//!     if !confirmed {
//!         return Ok("cancelled".into());
//!     }
//!     Ok(ctx.call(charge, order).await?)
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let env = TestEnv::builder()
//!     .register(checkout)
//!     .mock(charge, |order: Order| Ok(format!("receipt-{}", order.id)))
//!     .start()
//!     .unwrap();
//!
//! // Confirmed: charged once.
//! let paid = env.start(checkout, Order { id: 1, cents: 500 }).await.unwrap();
//! env.raise(paid.id(), "confirmed", &true).await.unwrap();
//! assert_eq!(env.wait(&paid).await.unwrap(), "receipt-1");
//! assert_eq!(env.calls(charge), [Order { id: 1, cents: 500 }]);
//!
//! // Never confirmed: cancelled after 72 virtual hours, in milliseconds.
//! let abandoned = env.start(checkout, Order { id: 2, cents: 900 }).await.unwrap();
//! env.advance(Duration::from_secs(72 * 3600)).await;
//! assert_eq!(env.output(&abandoned).await.unwrap(), "cancelled", "{}", env.describe(abandoned.id()).await);
//! assert_eq!(env.call_count(charge), 1);
//! # }
//! ```
#![doc(test(attr(deny(warnings))))]

mod clock;
mod crash;
mod env;
mod history;
#[cfg(feature = "http-calls")]
mod http;
mod mock;
mod replay_check;
mod sim;
mod store;

pub use clock::ManualClock;
pub use crash::{CrashReport, CrashRun, CrashTest};
pub use env::{TestEnv, TestEnvBuilder};
pub use history::History;
#[cfg(feature = "http-calls")]
pub use http::{HttpCall, HttpScript, MockHttp};
pub use mock::{ActivityCall, Script};
pub use replay_check::{ReplayCheckError, export_history, replay_check, replay_check_history};
pub use sim::{SimConfig, SimReport, SimRun, SimStats, Simulation};
