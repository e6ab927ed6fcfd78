//! # durable
//!
//! Durable, replay-safe workflows for Rust, in the programming model of Azure Durable
//! Functions: orchestrations coordinate activities, timers, external events and
//! sub-orchestrations; every step is recorded in an append-only history, and an
//! orchestration's state is rebuilt by deterministically replaying its code against it.
//!
//! ```
//! use durable_core::prelude::*;
//!
//! #[derive(Clone, Copy)]
//! struct SayHello;
//! impl Activity for SayHello {
//!     const NAME: &'static str = "say_hello";
//!     type Input = String;
//!     type Output = String;
//!     type Error = ActivityError;
//!     async fn run(&self, _ctx: ActivityContext, name: String) -> Result<String, ActivityError> {
//!         Ok(format!("Hello {name}!"))
//!     }
//! }
//!
//! #[derive(Clone, Copy)]
//! struct HelloCities;
//! impl Orchestrator for HelloCities {
//!     const NAME: &'static str = "hello_cities";
//!     type Input = Vec<String>;
//!     type Output = Vec<String>;
//!     type Error = OrchestrationError;
//!     async fn run(ctx: OrchestrationContext, cities: Vec<String>) -> Result<Vec<String>, OrchestrationError> {
//!         let mut out = Vec::new();
//!         for city in cities {
//!             out.push(ctx.call(SayHello, city).await?);
//!         }
//!         Ok(out)
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let worker = Worker::builder()
//!     .store(MemoryStore::new())
//!     .activity(SayHello)
//!     .orchestrator(HelloCities)
//!     .start()?;
//! let run = worker.client().start(HelloCities, vec!["Tokyo".into(), "Lima".into()]).await?;
//! assert_eq!(run.wait().await?, ["Hello Tokyo!", "Hello Lima!"]);
//! worker.shutdown().await;
//! # Ok(()) }
//! ```
#![doc(test(attr(deny(warnings))))]
#![deny(clippy::disallowed_methods)]

pub mod client;
pub mod clock;
pub mod context;
pub mod error;
pub mod history;
pub mod ids;
pub mod logging;
pub mod registry;
pub mod replay;
pub mod retry;
pub mod storage;
pub mod worker;

pub use client::{Client, InstanceHandle, PurgeResult, StartOptions};
pub use clock::{Clock, SystemClock};
pub use context::{Either, Limits, OrchestrationContext, SubOrchestrationOptions, select, when_all, when_any};
pub use error::{
    ActivityError, BuildError, ClientError, FailureDetails, InvalidInstanceId, OrchestrationError,
    PayloadDecodeError, StoreError, TaskError, ToFailure,
};
pub use history::{Event, HistoryEvent, RuntimeStatus};
pub use ids::{InstanceId, Timestamp};
pub use registry::{Activity, ActivityContext, Orchestrator, Registration, Registry};
pub use retry::RetryPolicy;
pub use storage::{IdReusePolicy, InstanceQuery, InstanceRecord, MemoryStore, Store};
pub use worker::{VersionMatch, VersionMismatchAction, Worker, WorkerBuilder, WorkerOptions};

/// Everything orchestration, activity and worker code usually needs.
pub mod prelude {
    pub use crate::{
        Activity, ActivityContext, ActivityError, Client, ClientError, Either, FailureDetails,
        IdReusePolicy, InstanceHandle, InstanceId, MemoryStore, OrchestrationContext,
        OrchestrationError, Orchestrator, RetryPolicy, RuntimeStatus, StartOptions, TaskError,
        Timestamp, Worker, select, when_all, when_any,
    };
    pub use serde::{Deserialize, Serialize};
}
