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
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(clippy::disallowed_methods)]

#[doc(hidden)]
pub mod __private;
pub mod client;
pub mod clock;
pub mod context;
pub mod entity;
pub mod error;
mod function;
mod heartbeat;
pub mod history;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http;
#[cfg(feature = "http-calls")]
#[cfg_attr(docsrs, doc(cfg(feature = "http-calls")))]
pub mod http_call;
pub mod ids;
pub mod logging;
#[cfg(feature = "opentelemetry")]
#[cfg_attr(docsrs, doc(cfg(feature = "opentelemetry")))]
pub mod otel;
mod payload;
pub mod registry;
pub mod replay;
pub mod retry;
pub mod state;
pub mod storage;
#[cfg(any(feature = "postgres-rustls", feature = "http-calls"))]
mod tls;
pub mod trace_context;
pub mod transaction;
pub mod worker;

/// Defines an activity from an `async fn`: a unit of real work (IO, side effects), run at
/// least once, whose result is recorded in history.
///
/// `#[activity] async fn name(input: I) -> Result<O, E>` generates a typed marker `name`
/// (a unit struct implementing [`Activity`]) that orchestrations call with
/// `ctx.call(name, input)` and workers register with `.register(name)`. The body stays
/// callable directly: `name::run(input).await`. `E` is any `std::error::Error` or
/// [`ActivityError`]; its type, message and cause chain are recorded. The return type may
/// also be an alias of `Result` (`type R<T> = Result<T, ActivityError>;` … `-> R<Receipt>`).
/// `#[activity(name = "charge_v2")]` sets the durable name.
///
/// `#[activity(local)]` makes it a *local* activity: wherever it is called with
/// `ctx.call` / `ctx.call_with`, the worker runs it during the orchestration's episode and
/// records its result with that episode's commit, so a chain of local steps costs one
/// durable commit instead of one per step (see
/// [`OrchestrationContext::call_local`]). The at-least-once window grows to the episode: a
/// crash before the episode commits runs the local steps again, so keep them short and
/// idempotent.
///
/// Besides its one input, the function may take an [`ActivityContext`] and any number of
/// [`State<T>`] parameters of different types — the worker's shared values (a connection
/// pool, an HTTP client, configuration) given with
/// [`WorkerBuilder::state`](WorkerBuilder::state) — in any order. The worker checks at
/// start that it holds every state type its activities take. Orchestrations never see
/// state: they call the marker with the input only. The direct call takes the state values
/// by hand, in declaration order: `charge::run(State(pool), order)`.
///
/// # Examples
///
/// ```
/// use durable_core::prelude::*;
///
/// #[derive(Clone)]
/// struct Greeting(&'static str);
///
/// /// Greets someone, in the worker's configured words.
/// #[activity]
/// async fn welcome(State(greeting): State<Greeting>, name: String) -> Result<String, ActivityError> {
///     Ok(format!("{} {name}!", greeting.0))
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// assert_eq!(welcome::run(State(Greeting("Hej")), "Ada".into()).await.unwrap(), "Hej Ada!");
/// # }
/// ```
///
/// ```
/// use durable_core::prelude::*;
///
/// /// Greets someone.
/// #[activity]
/// async fn greet(name: String) -> Result<String, ActivityError> {
///     Ok(format!("Hello {name}!"))
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // The body is plain Rust, testable without the runtime; `?` works in tests returning
/// // `Box<dyn Error>` (or `anyhow::Result` with the `anyhow` feature):
/// assert_eq!(greet::run("Ada".into()).await?, "Hello Ada!");
/// assert_eq!(<greet as Activity>::NAME, "greet");
/// # Ok(()) }
/// ```
///
/// A local activity:
///
/// ```
/// use durable_core::prelude::*;
///
/// /// Validates an address: quick and idempotent, so it runs inside the episode.
/// #[activity(local)]
/// async fn validate(address: String) -> Result<String, ActivityError> {
///     Ok(address.trim().to_owned())
/// }
///
/// #[orchestrator]
/// async fn ship(ctx: OrchestrationContext, address: String) -> Result<String, OrchestrationError> {
///     // Runs in the worker during this episode; recorded as TaskScheduled/TaskCompleted.
///     Ok(ctx.call(validate, address).await?)
/// }
/// # let _ = ship;
/// assert!(<validate as Activity>::LOCAL);
/// ```
pub use durable_macros::activity;

/// Defines an orchestrator from an `async fn` taking the [`OrchestrationContext`] first.
///
/// `#[orchestrator] async fn name(ctx: OrchestrationContext, input: I) -> Result<O, E>`
/// generates a typed marker `name` implementing [`Orchestrator`] and a typed client proxy:
/// `name::start(&client, input)`, `name::start_with(&client, input, options)` and
/// `name::handle(&client, id)`, all returning [`InstanceHandle<O>`].
///
/// Arguments: `name = ".."` (durable name), `version = ".."` (stamped on new instances),
/// `allow_nondeterminism` (turns off the determinism lint), `crate = path`.
///
/// The body is checked for well-known non-deterministic calls — `SystemTime::now`,
/// `Instant::now`, `Utc::now`, `Uuid::new_v4`, `rand`, `tokio::spawn`, `tokio::time::sleep`,
/// `std::thread::sleep`, `std::env::var`, file and network IO, `unsafe` blocks — each a compile
/// error naming the replay-safe replacement (`ctx.now()`, `ctx.new_guid()`, `ctx.sleep(..)`,
/// an activity).
///
/// # Examples
///
/// ```
/// use durable_core::prelude::*;
///
/// #[activity]
/// async fn greet(name: String) -> Result<String, ActivityError> {
///     Ok(format!("Hello {name}!"))
/// }
///
/// #[orchestrator]
/// async fn hello_cities(ctx: OrchestrationContext, cities: Vec<String>) -> Result<Vec<String>, OrchestrationError> {
///     let mut out = Vec::new();
///     for city in cities {
///         out.push(ctx.call(greet, city).await?);
///     }
///     Ok(out)
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let worker = Worker::builder()
///     .store(MemoryStore::new())
///     .register(greet)
///     .register(hello_cities)
///     .start()?;
/// let run = hello_cities::start(&worker.client(), vec!["Oslo".into()]).await?;
/// assert_eq!(run.wait().await?, ["Hello Oslo!"]);
/// # worker.shutdown().await;
/// # Ok(()) }
/// ```
pub use durable_macros::orchestrator;

/// Defines a durable entity — addressable state with operations that run one at a time,
/// exactly once, in the order each sender sent them.
///
/// Put `#[entity]` on a struct (the state: `Serialize + Deserialize`, plus `Default` or an
/// associated `fn initial() -> Self` in the impl block) and on its `impl` block. Methods
/// taking `&mut self` are operations that update the state; `&self` methods are reads.
/// Operations may be `async`, may take an [`EntityContext`] right after `self` (to signal
/// other entities, start orchestrations or delete the state) and at most one input, and
/// return `T` or `Result<T, E>`. A failing operation (an `Err` or a panic) rolls its state
/// change back and reports the failure to its caller. The name is the lower-cased struct
/// name unless `#[entity(name = "..")]` on the struct says otherwise.
///
/// Generated proxies give one typed method per operation:
/// - `client.entity::<Counter>(key)`: signals (acknowledged once durable, optionally
///   delayed with `.at(time)`), `state()`, `delete()`;
/// - `ctx.entity::<Counter>(key)`: request/response calls from an orchestration;
/// - `ctx.signal_entity::<Counter>(key)` / `entity_ctx.signal_entity::<..>(key)`: one-way
///   signals from orchestrations and entities.
///
/// # Examples
///
/// ```
/// use durable_core::prelude::*;
/// use serde::{Deserialize, Serialize};
///
/// #[entity]
/// #[derive(Default, Serialize, Deserialize)]
/// struct Counter {
///     value: i64,
/// }
///
/// #[entity]
/// impl Counter {
///     fn add(&mut self, amount: i64) {
///         self.value += amount;
///     }
///     fn get(&self) -> i64 {
///         self.value
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let worker = Worker::builder().store(MemoryStore::new()).register(Counter::entity()).start()?;
/// let client = worker.client();
/// client.entity::<Counter>("page-views").add(5).await?;
/// # let mut changes = client.store().signals().changed.subscribe();
/// # while client.entity::<Counter>("page-views").state().await?.map(|c| c.value) != Some(5) {
/// #     changes.changed().await?;
/// # }
/// let state = client.entity::<Counter>("page-views").state().await?;
/// assert_eq!(state.map(|c| c.value), Some(5));
/// # worker.shutdown().await;
/// # Ok(()) }
/// ```
pub use durable_macros::entity;

pub use client::{
    Client, EntityMetadata, EntityPage, EntityQuery, InstanceHandle, PurgeResult, StartOptions,
};
pub use clock::{Clock, SystemClock};
#[cfg(feature = "http-calls")]
#[cfg_attr(docsrs, doc(cfg(feature = "http-calls")))]
pub use context::CallHttpFuture;
pub use context::{
    CallOptions, ContinueAsNew, CriticalSection, Either, EventFuture, Limits, LockFuture,
    OrchestrationContext, Select, SubOrchestrationOptions, TaskFuture, TimerFuture, WhenAll,
    WhenAny, select, when_all, when_any,
};
/// `deadpool-postgres` (0.14), whose [`Pool`](deadpool_postgres::Pool)
/// [`PostgresStore::from_pool`] takes (feature `postgres`).
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use deadpool_postgres;
pub use entity::{Entity, EntityContext, EntityId};
pub use error::{
    ActivityError, BackendError, BuildError, ClientError, FailureDetails, InvalidInstanceId,
    OrchestrationError, PayloadDecodeError, StoreError, TaskError, ToFailure, WorkerError,
};
pub use history::{Event, HistoryEvent, RuntimeStatus};
pub use ids::{InstanceId, Timestamp};
/// `redb` (4), whose [`TableDefinition`](redb::TableDefinition)s name the application's
/// tables in a [`RedbTransaction`] (feature `redb`).
#[cfg(feature = "redb")]
#[cfg_attr(docsrs, doc(cfg(feature = "redb")))]
pub use redb;
pub use registry::{
    Activity, ActivityContext, Cancellation, EntityRegistration, Orchestrator, Registration,
    Registry,
};
/// `reqwest` (0.13), whose [`Client`](reqwest::Client)
/// [`WorkerBuilder::http_client`] takes (feature `http-calls`).
#[cfg(feature = "http-calls")]
#[cfg_attr(docsrs, doc(cfg(feature = "http-calls")))]
pub use reqwest;
pub use retry::RetryPolicy;
/// `rustls` (0.23, with its `ring` provider), to build the TLS configuration of a
/// [`tokio_postgres_rustls::MakeRustlsConnect`] (feature `postgres-rustls`).
#[cfg(feature = "postgres-rustls")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres-rustls")))]
pub use rustls;
pub use state::{State, StateType, States};
#[cfg(feature = "redb")]
#[cfg_attr(docsrs, doc(cfg(feature = "redb")))]
pub use storage::RedbStore;
pub use storage::{IdReusePolicy, InstanceQuery, InstanceRecord, MemoryStore, Store};
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use storage::{PostgresOptions, PostgresStore};
/// `tokio-postgres` (0.7), whose [`Config`](tokio_postgres::Config) and TLS connectors
/// [`PostgresStore::from_config`] takes (feature `postgres`).
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use tokio_postgres;
/// `tokio-postgres-rustls` (0.14): a rustls connector for [`PostgresStore::from_config`]
/// (feature `postgres-rustls`).
#[cfg(feature = "postgres-rustls")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres-rustls")))]
pub use tokio_postgres_rustls;
pub use trace_context::TraceContext;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use transaction::PgTransaction;
#[cfg(feature = "redb")]
#[cfg_attr(docsrs, doc(cfg(feature = "redb")))]
pub use transaction::{RedbReadTransaction, RedbTransaction};
pub use worker::{VersionMatch, VersionMismatchAction, Worker, WorkerBuilder, WorkerOptions};

/// Everything orchestration, activity and worker code usually needs.
///
/// Inputs, outputs and entity states are serde types: derive them with serde's own
/// macros (`serde = { version = "1", features = ["derive"] }` in your `Cargo.toml`,
/// `use serde::{Deserialize, Serialize};`). The prelude does not re-export them, since
/// serde's derives only work from a crate that depends on serde directly.
pub mod prelude {
    #[cfg(feature = "postgres")]
    pub use crate::PgTransaction;
    #[cfg(feature = "redb")]
    pub use crate::RedbTransaction;
    #[cfg(feature = "http-calls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "http-calls")))]
    pub use crate::http_call::{DurableHttpRequest, DurableHttpResponse};
    pub use crate::{
        Activity, ActivityContext, ActivityError, CallOptions, Client, ClientError, Either,
        EntityContext, EntityId, FailureDetails, IdReusePolicy, InstanceHandle, InstanceId,
        MemoryStore, OrchestrationContext, OrchestrationError, Orchestrator, RetryPolicy,
        RuntimeStatus, StartOptions, State, TaskError, Timestamp, Worker, activity, entity,
        orchestrator, select, when_all, when_any,
    };
}

/// The README's Rust examples, compiled and run as doctests of this crate.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
