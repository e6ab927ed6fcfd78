//! The client: start, inspect, signal and manage orchestration instances.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::clock::{Clock, SystemClock};
use crate::context::Limits;
pub use crate::context::options::StartOptions;
use crate::context::orchestrator::Orchestrator;
use crate::entity::{ClientTarget, Entity, EntityId};
use crate::error::{ClientError, decode, encode};
use crate::history::{Event, HistoryEvent, RuntimeStatus};
use crate::ids::{InstanceId, Timestamp};
use crate::registry::Registry;
use crate::storage::{
    CreateResult, InstancePage, InstanceQuery, InstanceRecord, Message, NewInstance, Store,
};
use crate::trace_context::TraceContext;

/// The trace context of the caller's current span, for work a client starts or signals:
/// with the `opentelemetry` feature, that of the current `tracing` span (or, failing that,
/// the current OpenTelemetry context); without it, none.
fn current_trace_context() -> Option<TraceContext> {
    #[cfg(feature = "opentelemetry")]
    {
        crate::otel::current()
    }
    #[cfg(not(feature = "opentelemetry"))]
    {
        None
    }
}

fn entity_record(r: &InstanceRecord) -> Option<crate::entity::EntityRecord> {
    r.output.as_deref().and_then(|o| decode(o).ok())
}

/// Filters for [`Client::list_entities`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct EntityQuery {
    /// Only entities of this type name.
    pub name: Option<String>,
    /// Only keys with this prefix (needs `name`).
    pub key_prefix: Option<String>,
    /// Last operation at or after.
    pub last_operation_from: Option<Timestamp>,
    /// Last operation at or before.
    pub last_operation_to: Option<Timestamp>,
    /// Return the state of each entity.
    pub include_state: bool,
    /// Also list entities whose state was deleted.
    pub include_deleted: bool,
    /// Page size (0: default 100).
    pub page_size: usize,
    /// Continuation token from the previous page.
    pub continuation: Option<String>,
}

impl EntityQuery {
    /// All entities, without state.
    pub fn new() -> Self {
        Self::default()
    }
    /// Only entities of type `name`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
    /// Include states.
    pub fn with_state(mut self) -> Self {
        self.include_state = true;
        self
    }
    /// Page size.
    pub fn page_size(mut self, n: usize) -> Self {
        self.page_size = n;
        self
    }
    /// Continue after a previous page.
    pub fn continuation(mut self, token: Option<String>) -> Self {
        self.continuation = token;
        self
    }
}

/// One listed entity.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct EntityMetadata {
    /// Its id.
    pub id: EntityId,
    /// When its last operation batch ran.
    pub last_operation_at: Timestamp,
    /// The orchestration holding its lock, if any.
    pub locked_by: Option<InstanceId>,
    /// Its JSON state, when asked for.
    pub state: Option<String>,
}

/// One page of [`Client::list_entities`].
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct EntityPage {
    /// The entities, ordered by id.
    pub entities: Vec<EntityMetadata>,
    /// Token for the next page.
    pub continuation: Option<String>,
}

/// What a purge removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PurgeResult {
    /// Instances deleted (including sub-orchestrations).
    pub deleted: usize,
}

/// Starts and manages orchestration instances.
///
/// A client obtained from [`crate::Worker::client`] knows the worker's registrations and
/// rejects unknown orchestrator names and undeserializable inputs at start.
#[derive(Clone)]
pub struct Client {
    store: Arc<dyn Store>,
    registry: Option<Arc<Registry>>,
    clock: Arc<dyn Clock>,
    limits: Limits,
    version: Option<String>,
    /// The worker this client came from ([`Worker::client`](crate::Worker::client)), which
    /// runs the first episode of the instances it starts (see [`FirstEpisode`]).
    first_episode: Option<std::sync::Weak<dyn FirstEpisode>>,
}

/// Runs the first episode of a new instance in the starting process, so that its creation
/// and that episode make one durable write ([`Store::create_started`]).
pub(crate) trait FirstEpisode: Send + Sync {
    /// Creates `new` with its first episode; `Ok(None)` when it did not (the worker is busy
    /// or cannot run it, the store declined): the caller creates it the ordinary way.
    fn create_started<'a>(
        &'a self,
        new: &'a NewInstance,
    ) -> crate::function::BoxFuture<'a, Result<Option<InstanceRecord>, crate::StoreError>>;
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client on a store, without a registry (names are not checked at start).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use durable_core::prelude::*;
    ///
    /// #[orchestrator]
    /// async fn greet(_ctx: OrchestrationContext, name: String) -> Result<String, OrchestrationError> {
    ///     Ok(format!("Hello {name}"))
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = MemoryStore::new(); // in production, a store that other processes share
    /// let worker = Worker::builder().store(store.clone()).register(greet).start()?;
    /// // A process that only starts work (a web front end, say) needs just the store:
    /// let client = Client::new(Arc::new(store));
    /// let run = client.start(greet, "Ada".into()).await?;
    /// assert_eq!(run.wait().await?, "Hello Ada");
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self::from_parts(store, None, Arc::new(SystemClock), Limits::default(), None)
    }

    pub(crate) fn from_parts(
        store: Arc<dyn Store>,
        registry: Option<Arc<Registry>>,
        clock: Arc<dyn Clock>,
        limits: Limits,
        version: Option<String>,
    ) -> Self {
        Self {
            store,
            registry,
            clock,
            limits,
            version,
            first_episode: None,
        }
    }

    /// This client, with `worker` running the first episode of the instances it starts.
    pub(crate) fn with_first_episode(mut self, worker: std::sync::Weak<dyn FirstEpisode>) -> Self {
        self.first_episode = Some(worker);
        self
    }

    /// The store this client talks to.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    ///
    /// #[orchestrator]
    /// async fn greet(_ctx: OrchestrationContext, name: String) -> Result<String, OrchestrationError> {
    ///     Ok(format!("Hello {name}"))
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = Worker::builder().store(MemoryStore::new()).register(greet).start()?;
    /// let client = worker.client();
    /// let run = client.start(greet, "Ada".into()).await?;
    /// run.wait().await?;
    /// let record = client.store().read_instance(run.id()).await?.expect("the instance exists");
    /// assert_eq!(record.name, "greet");
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The clock this client stamps requests with.
    #[cfg(feature = "http")]
    pub(crate) fn clock(&self) -> Arc<dyn Clock> {
        Arc::clone(&self.clock)
    }

    /// The payload limits this client enforces (those of its worker).
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_core::Limits;
    ///
    /// #[orchestrator]
    /// async fn upload(_ctx: OrchestrationContext, data: String) -> Result<usize, OrchestrationError> {
    ///     Ok(data.len())
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut limits = Limits::default();
    /// limits.max_payload_bytes = 1024;
    /// let worker = Worker::builder().store(MemoryStore::new()).register(upload).limits(limits).start()?;
    /// let client = worker.client();
    /// assert_eq!(client.limits().max_payload_bytes, 1024);
    /// let too_big = client.start(upload, "x".repeat(2000)).await;
    /// assert!(matches!(too_big, Err(ClientError::PayloadTooLarge { limit: 1024, .. })));
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Starts an orchestration with a random instance id.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    ///
    /// #[activity]
    /// async fn greet(name: String) -> Result<String, ActivityError> {
    ///     Ok(format!("Hello {name}"))
    /// }
    ///
    /// #[orchestrator]
    /// async fn welcome(ctx: OrchestrationContext, name: String) -> Result<String, OrchestrationError> {
    ///     Ok(ctx.call(greet, name).await?)
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = Worker::builder().store(MemoryStore::new()).register(greet).register(welcome).start()?;
    /// let run = worker.client().start(welcome, "Ada".into()).await?;
    /// assert_eq!(run.wait().await?, "Hello Ada");
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub async fn start<O: Orchestrator>(
        &self,
        orchestrator: O,
        input: O::Input,
    ) -> Result<InstanceHandle<O::Output>, ClientError> {
        self.start_with(orchestrator, input, StartOptions::default())
            .await
    }

    /// Starts an orchestration with options.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    ///
    /// #[orchestrator]
    /// async fn report(_ctx: OrchestrationContext, day: String) -> Result<String, OrchestrationError> {
    ///     Ok(format!("report for {day}"))
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = Worker::builder().store(MemoryStore::new()).register(report).start()?;
    /// let id = InstanceId::new("report-2024-01-01")?; // one instance per day
    /// let options = StartOptions::new().instance_id(id.clone());
    /// let run = worker.client().start_with(report, "2024-01-01".into(), options).await?;
    /// assert_eq!(run.id(), &id);
    /// assert_eq!(run.wait().await?, "report for 2024-01-01");
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub async fn start_with<O: Orchestrator>(
        &self,
        orchestrator: O,
        input: O::Input,
        options: StartOptions,
    ) -> Result<InstanceHandle<O::Output>, ClientError> {
        let _ = orchestrator;
        let payload = encode(&input)?;
        let mut options = options;
        if options.version.is_none() {
            options.version = O::VERSION.map(str::to_owned);
        }
        let run = self.create(O::NAME, &payload, options).await?;
        Ok(InstanceHandle {
            client: self.clone(),
            instance_id: run.instance_id,
            run: Some(run.created_at),
            _o: PhantomData,
        })
    }

    /// Starts an orchestration by name with a JSON input (for HTTP and other untyped
    /// callers). Returns the instance id (the existing one when a start was deduplicated).
    ///
    /// # Errors
    /// `UnknownOrchestrator` or `PayloadDecode` when this client knows the registry;
    /// `InstanceAlreadyExists` per the reuse policy; `PayloadTooLarge`.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    ///
    /// #[orchestrator]
    /// async fn greet(_ctx: OrchestrationContext, name: String) -> Result<String, OrchestrationError> {
    ///     Ok(format!("Hello {name}"))
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = Worker::builder().store(MemoryStore::new()).register(greet).start()?;
    /// let client = worker.client();
    /// let id = client.start_raw("greet", r#""Ada""#, StartOptions::new()).await?;
    /// let record = client.wait_for_completion(&id).await?;
    /// assert_eq!(record.output::<String>()?.as_deref(), Some("Hello Ada"));
    /// // This client knows the worker's registry: unknown names fail at start.
    /// let unknown = client.start_raw("nope", "null", StartOptions::new()).await;
    /// assert!(matches!(unknown, Err(ClientError::UnknownOrchestrator(_))));
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub async fn start_raw(
        &self,
        name: &str,
        input: &str,
        options: StartOptions,
    ) -> Result<InstanceId, ClientError> {
        Ok(self.create(name, input, options).await?.instance_id)
    }

    /// Creates the instance [`start_raw`](Self::start_raw) describes; returns the record
    /// of the run it started (or, deduplicated, of the running one).
    async fn create(
        &self,
        name: &str,
        input: &str,
        options: StartOptions,
    ) -> Result<InstanceRecord, ClientError> {
        self.check_size(input)?;
        if let Some(reg) = &self.registry {
            if !reg.check_orchestrator_input(name, input)? {
                return Err(ClientError::UnknownOrchestrator(name.to_owned()));
            }
        } else if serde_json::from_str::<serde::de::IgnoredAny>(input).is_err() {
            return Err(decode::<serde_json::Value>(input).unwrap_err().into());
        }
        let id = options.instance_id.unwrap_or_else(InstanceId::random);
        let mut new = NewInstance::new(id.clone(), name, input.to_owned(), self.clock.now());
        new.scheduled_start = options.scheduled_start;
        new.reuse = options.reuse;
        new.version = options.version.or_else(|| self.version.clone());
        new.trace_context = options.trace_context.or_else(current_trace_context);
        if let Some(worker) = self
            .first_episode
            .as_ref()
            .and_then(std::sync::Weak::upgrade)
            && let Some(record) = worker.create_started(&new).await?
        {
            return Ok(record);
        }
        match self.store.create_instance(new).await? {
            CreateResult::Created(r) | CreateResult::Existing(r) => Ok(r),
        }
    }

    /// Starts the orchestration of an existing instance again, with the same name, input and
    /// version (Durable Functions' `RestartAsync`). With `new_instance_id` the new run gets a
    /// fresh random id and the old instance is left as it is; without it the run replaces
    /// the instance under the same id, which must then be finished.
    ///
    /// # Errors
    /// `InstanceNotFound`; `InstanceAlreadyExists` when restarting a running instance under
    /// its own id; the errors of [`start_raw`](Self::start_raw).
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    ///
    /// #[orchestrator]
    /// async fn greet(_ctx: OrchestrationContext, name: String) -> Result<String, OrchestrationError> {
    ///     Ok(format!("Hello {name}"))
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = Worker::builder().store(MemoryStore::new()).register(greet).start()?;
    /// let client = worker.client();
    /// let first = client.start(greet, "Ada".into()).await?;
    /// first.wait().await?;
    /// let again = client.restart(first.id(), true).await?; // same input, a new id
    /// assert_ne!(&again, first.id());
    /// assert_eq!(client.handle::<String>(again).wait().await?, "Hello Ada");
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub async fn restart(
        &self,
        instance_id: &InstanceId,
        new_instance_id: bool,
    ) -> Result<InstanceId, ClientError> {
        let record = self.status(instance_id).await?;
        let id = if new_instance_id {
            InstanceId::random()
        } else {
            record.instance_id.clone()
        };
        let mut options = StartOptions::new().instance_id(id);
        options.version = record.version.clone();
        self.start_raw(&record.name, &record.input, options).await
    }

    /// A typed handle to an existing instance.
    ///
    /// The handle follows whatever runs under the id; one returned by a start follows the
    /// run it started (see [`InstanceHandle::wait`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    ///
    /// #[orchestrator]
    /// async fn approval(ctx: OrchestrationContext, _input: ()) -> Result<bool, OrchestrationError> {
    ///     Ok(ctx.wait_for_event("approved").await?)
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = Worker::builder().store(MemoryStore::new()).register(approval).start()?;
    /// let client = worker.client();
    /// let id = InstanceId::new("approval-17")?;
    /// client.start_with(approval, (), StartOptions::new().instance_id(id)).await?;
    ///
    /// // Later, knowing only the id (from a URL, say):
    /// let run = client.handle::<bool>(InstanceId::new("approval-17")?);
    /// run.raise("approved", &true).await?;
    /// assert!(run.wait().await?);
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn handle<O>(&self, instance_id: InstanceId) -> InstanceHandle<O> {
        InstanceHandle {
            client: self.clone(),
            instance_id,
            run: None,
            _o: PhantomData,
        }
    }

    /// The instance's status record.
    ///
    /// # Errors
    /// `InstanceNotFound` for an unknown id.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    ///
    /// #[orchestrator]
    /// async fn greet(_ctx: OrchestrationContext, name: String) -> Result<String, OrchestrationError> {
    ///     Ok(format!("Hello {name}"))
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = Worker::builder().store(MemoryStore::new()).register(greet).start()?;
    /// let client = worker.client();
    /// let run = client.start(greet, "Ada".into()).await?;
    /// run.wait().await?;
    /// let record = client.status(run.id()).await?;
    /// assert_eq!(record.status, RuntimeStatus::Completed);
    /// assert_eq!(record.input::<String>()?, "Ada");
    /// let unknown = client.status(&InstanceId::new("nobody")?).await;
    /// assert!(matches!(unknown, Err(ClientError::InstanceNotFound(_))));
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub async fn status(&self, instance_id: &InstanceId) -> Result<InstanceRecord, ClientError> {
        self.store
            .read_instance(instance_id)
            .await?
            .ok_or_else(|| ClientError::InstanceNotFound(instance_id.to_string()))
    }

    /// The instance's status and the history of its current execution.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    ///
    /// #[activity]
    /// async fn greet(name: String) -> Result<String, ActivityError> {
    ///     Ok(format!("Hello {name}"))
    /// }
    ///
    /// #[orchestrator]
    /// async fn welcome(ctx: OrchestrationContext, name: String) -> Result<String, OrchestrationError> {
    ///     Ok(ctx.call(greet, name).await?)
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = Worker::builder().store(MemoryStore::new()).register(greet).register(welcome).start()?;
    /// let client = worker.client();
    /// let run = client.start(welcome, "Ada".into()).await?;
    /// run.wait().await?;
    /// let (record, history) = client.status_with_history(run.id()).await?;
    /// assert_eq!(record.status, RuntimeStatus::Completed);
    /// let kinds: Vec<&str> = history.iter().map(|e| e.event.kind()).collect();
    /// assert!(kinds.contains(&"TaskScheduled") && kinds.contains(&"TaskCompleted"));
    /// assert_eq!(kinds.last(), Some(&"ExecutionCompleted"));
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub async fn status_with_history(
        &self,
        instance_id: &InstanceId,
    ) -> Result<(InstanceRecord, Vec<HistoryEvent>), ClientError> {
        let record = self.status(instance_id).await?;
        let history = self.store.read_history(instance_id).await?;
        Ok((record, history))
    }

    /// Waits until the instance is completed, failed or terminated, and returns its record.
    /// Woken by the store on every change; no polling.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    ///
    /// #[orchestrator]
    /// async fn reserve(_ctx: OrchestrationContext, seats: u32) -> Result<u32, OrchestrationError> {
    ///     if seats > 4 {
    ///         return Err(OrchestrationError::new("at most 4 seats per booking"));
    ///     }
    ///     Ok(seats)
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = Worker::builder().store(MemoryStore::new()).register(reserve).start()?;
    /// let client = worker.client();
    /// let run = client.start(reserve, 9).await?;
    /// let record = client.wait_for_completion(run.id()).await?; // the record, failed or not
    /// assert_eq!(record.status, RuntimeStatus::Failed);
    /// assert_eq!(record.failure.map(|f| f.message).as_deref(), Some("at most 4 seats per booking"));
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub async fn wait_for_completion(
        &self,
        instance_id: &InstanceId,
    ) -> Result<InstanceRecord, ClientError> {
        self.wait_for_run(instance_id, None).await
    }

    /// [`wait_for_completion`](Self::wait_for_completion) of the run created at `run` (its
    /// record's `created_at`; continue-as-new keeps it): `Replaced` once another start
    /// has taken the id over.
    async fn wait_for_run(
        &self,
        instance_id: &InstanceId,
        run: Option<Timestamp>,
    ) -> Result<InstanceRecord, ClientError> {
        let mut changes = self.store.signals().finished.subscribe();
        loop {
            let r = self.status(instance_id).await?;
            if run.is_some_and(|t| t != r.created_at) {
                return Err(ClientError::Replaced(instance_id.to_string()));
            }
            if r.status.is_terminal() {
                return Ok(r);
            }
            if changes.changed().await.is_err() {
                return Err(ClientError::Store(crate::error::StoreError::backend(
                    "store closed",
                )));
            }
        }
    }

    /// Waits until `predicate` holds for the instance's status record, and returns that
    /// record; for tools and tests that wait for a custom status, a step or a state.
    ///
    /// The predicate is checked at once and then after every change the store signals
    /// (every commit and control message), never by polling; `timeout` is wall-clock time.
    /// A predicate that holds for a record is not guaranteed to be shown every
    /// intermediate record: changes may be coalesced between two checks.
    ///
    /// # Errors
    /// [`ClientError::Timeout`] when the predicate did not hold within `timeout`;
    /// `InstanceNotFound` for an unknown id (or one purged while waiting); store errors.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use durable_core::prelude::*;
    ///
    /// #[orchestrator]
    /// async fn approval(ctx: OrchestrationContext, _input: ()) -> Result<bool, OrchestrationError> {
    ///     ctx.set_custom_status("waiting for approval")?;
    ///     Ok(ctx.wait_for_event("approved").await?)
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = Worker::builder().store(MemoryStore::new()).register(approval).start()?;
    /// let client = worker.client();
    /// let run = approval::start(&client, ()).await?;
    /// let record = client
    ///     .wait_until(run.id(), |r| r.custom_status.is_some(), Duration::from_secs(30))
    ///     .await?;
    /// assert_eq!(record.custom_status::<String>()?.as_deref(), Some("waiting for approval"));
    /// run.raise("approved", &true).await?;
    /// let done = run.wait_until(|r| r.status.is_terminal(), Duration::from_secs(30)).await?;
    /// assert_eq!(done.output::<bool>()?, Some(true));
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub async fn wait_until(
        &self,
        instance_id: &InstanceId,
        predicate: impl FnMut(&InstanceRecord) -> bool,
        timeout: Duration,
    ) -> Result<InstanceRecord, ClientError> {
        self.wait_until_in_run(instance_id, None, predicate, timeout)
            .await
    }

    /// [`wait_until`](Self::wait_until) for the run created at `run` (`Replaced` once
    /// another start has taken the id over).
    async fn wait_until_in_run(
        &self,
        instance_id: &InstanceId,
        run: Option<Timestamp>,
        mut predicate: impl FnMut(&InstanceRecord) -> bool,
        timeout: Duration,
    ) -> Result<InstanceRecord, ClientError> {
        let wait = async {
            let mut changes = self.store.signals().changed.subscribe();
            loop {
                let r = self.status(instance_id).await?;
                if run.is_some_and(|t| t != r.created_at) {
                    return Err(ClientError::Replaced(instance_id.to_string()));
                }
                if predicate(&r) {
                    return Ok(r);
                }
                if changes.changed().await.is_err() {
                    return Err(ClientError::Store(crate::error::StoreError::backend(
                        "store closed",
                    )));
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout {
                instance: instance_id.to_string(),
                after: timeout,
            }),
        }
    }

    /// Raises an external event on an instance (buffered if nobody waits yet).
    ///
    /// Event names match case-insensitively: an orchestration waiting for `"Approval"`
    /// receives an event raised as `"approval"`.
    ///
    /// # Errors
    /// `InvalidEventName` (empty), `InstanceNotFound`, `InstanceNotRunning` (finished),
    /// `PayloadTooLarge`.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    ///
    /// #[orchestrator]
    /// async fn approval(ctx: OrchestrationContext, _input: ()) -> Result<String, OrchestrationError> {
    ///     let approver: String = ctx.wait_for_event("Approved").await?;
    ///     Ok(format!("approved by {approver}"))
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = Worker::builder().store(MemoryStore::new()).register(approval).start()?;
    /// let client = worker.client();
    /// let run = client.start(approval, ()).await?;
    /// client.raise_event(run.id(), "approved", "Grace").await?; // names match case-insensitively
    /// assert_eq!(run.wait().await?, "approved by Grace");
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub async fn raise_event<T: Serialize + ?Sized>(
        &self,
        instance_id: &InstanceId,
        name: &str,
        data: &T,
    ) -> Result<(), ClientError> {
        let payload = encode(data)?;
        self.raise_event_raw(instance_id, name, payload).await
    }

    /// Raises an event with a JSON payload.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    ///
    /// #[orchestrator]
    /// async fn approval(ctx: OrchestrationContext, _input: ()) -> Result<u32, OrchestrationError> {
    ///     Ok(ctx.wait_for_event("amount").await?)
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = Worker::builder().store(MemoryStore::new()).register(approval).start()?;
    /// let client = worker.client();
    /// let run = client.start(approval, ()).await?;
    /// // The data is JSON already, as an HTTP handler would receive it.
    /// client.raise_event_raw(run.id(), "amount", "250".to_owned()).await?;
    /// assert_eq!(run.wait().await?, 250);
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub async fn raise_event_raw(
        &self,
        instance_id: &InstanceId,
        name: &str,
        data: String,
    ) -> Result<(), ClientError> {
        if name.is_empty() {
            return Err(ClientError::InvalidEventName {
                name: String::new(),
                reason: "an event needs a name; no orchestration can wait for an empty one",
            });
        }
        self.check_size(&data)?;
        self.send(
            instance_id,
            Event::EventRaised {
                name: name.to_owned(),
                input: data,
            },
        )
        .await?;
        crate::worker::lifecycle::event_raised(instance_id, name);
        Ok(())
    }

    /// Terminates a running instance and every running descendant: its running
    /// sub-orchestrations and, recursively, theirs, also under sub-orchestrations that
    /// finished while their own children still run. A terminate that is accepted while the
    /// instance runs and arrives after it finished still reaches its running descendants.
    ///
    /// # Errors
    /// `InstanceNotFound`; `InstanceNotRunning` (finished).
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    ///
    /// #[orchestrator]
    /// async fn approval(ctx: OrchestrationContext, _input: ()) -> Result<bool, OrchestrationError> {
    ///     Ok(ctx.wait_for_event("approved").await?)
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = Worker::builder().store(MemoryStore::new()).register(approval).start()?;
    /// let client = worker.client();
    /// let run = client.start(approval, ()).await?;
    /// client.terminate(run.id(), "request withdrawn").await?;
    /// assert!(matches!(run.wait().await, Err(ClientError::Terminated { reason }) if reason == "request withdrawn"));
    /// assert_eq!(client.status(run.id()).await?.status, RuntimeStatus::Terminated);
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub async fn terminate(
        &self,
        instance_id: &InstanceId,
        reason: &str,
    ) -> Result<(), ClientError> {
        self.send(
            instance_id,
            Event::ExecutionTerminated {
                reason: reason.to_owned(),
                child_of: None,
            },
        )
        .await
    }

    /// Suspends a running (or pending) instance: messages are kept but not delivered until
    /// it is resumed.
    ///
    /// The request is checked against the instance's state with the requests already
    /// accepted for it, in the same atomic step as it is queued: a second suspend is
    /// refused even before a worker applied the first.
    ///
    /// # Errors
    /// `InstanceNotFound`; `InstanceNotRunning` (finished); `InvalidState` when it is
    /// suspended already (HTTP 400).
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    ///
    /// #[orchestrator]
    /// async fn approval(ctx: OrchestrationContext, _input: ()) -> Result<bool, OrchestrationError> {
    ///     Ok(ctx.wait_for_event("approved").await?)
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = Worker::builder().store(MemoryStore::new()).register(approval).start()?;
    /// let run = approval::start(&worker.client(), ()).await?;
    /// run.suspend("maintenance").await?;
    /// assert!(matches!(
    ///     run.suspend("again").await,
    ///     Err(ClientError::InvalidState { operation: "suspend", .. })
    /// ));
    /// run.resume("done").await?;
    /// assert!(matches!(
    ///     run.resume("again").await,
    ///     Err(ClientError::InvalidState { operation: "resume", .. })
    /// ));
    /// # Ok(()) }
    /// ```
    pub async fn suspend(&self, instance_id: &InstanceId, reason: &str) -> Result<(), ClientError> {
        self.send(
            instance_id,
            Event::ExecutionSuspended {
                reason: reason.to_owned(),
            },
        )
        .await
    }

    /// Resumes a suspended instance (one that a suspend already accepted for it will have
    /// suspended counts; see [`suspend`](Self::suspend)).
    ///
    /// # Errors
    /// `InstanceNotFound`; `InstanceNotRunning` (finished); `InvalidState` when it is not
    /// suspended (HTTP 400: "cannot resume instance `…` in the Running state").
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_testing::TestEnv;
    ///
    /// #[orchestrator]
    /// async fn approval(ctx: OrchestrationContext, _input: ()) -> Result<bool, OrchestrationError> {
    ///     Ok(ctx.wait_for_event("approved").await?)
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let env = TestEnv::builder().register(approval).start()?;
    /// let client = env.client();
    /// let run = env.start(approval, ()).await?;
    /// client.suspend(run.id(), "audit").await?;
    /// client.raise_event(run.id(), "approved", &true).await?; // kept, not delivered
    /// env.run_until_idle().await;
    /// env.assert_status(run.id(), RuntimeStatus::Suspended).await;
    ///
    /// client.resume(run.id(), "audit done").await?;
    /// assert!(env.wait(&run).await?); // the kept event arrives
    /// # Ok(()) }
    /// ```
    pub async fn resume(&self, instance_id: &InstanceId, reason: &str) -> Result<(), ClientError> {
        self.send(
            instance_id,
            Event::ExecutionResumed {
                reason: reason.to_owned(),
            },
        )
        .await
    }

    /// Rewinds a failed instance: it resumes at the point of failure, re-running what
    /// failed, instead of starting over like a restart.
    ///
    /// The failures delivered after the code's last action (those it did not recover from)
    /// are undone, and everything the execution left unfinished runs again: failed and in-flight activities
    /// are re-run, timers are re-armed, failed sub-orchestrations are rewound in turn and
    /// sub-orchestrations that finished after the failure report their result again. Work
    /// that completed stays completed, and failures the code handled earlier stay as they
    /// were. History stays append-only: an `ExecutionRewound` event records the rewind, and
    /// replay skips the events it undid. Fix the cause first (deploy the fixed activity or
    /// orchestrator code), then rewind.
    ///
    /// The request is durable when this returns; a worker applies it shortly after, and
    /// the instance then leaves `Failed`. An instance can be rewound again if it fails again.
    ///
    /// # Errors
    /// `InstanceNotFound`; `CannotRewind` when the instance has not failed, or failed outside
    /// its code (version mismatch), inside a critical section, while waiting for an entity
    /// call (entity operations are not re-run), or because of a sub-orchestration that cannot
    /// be rewound itself — restart those instead. A worker may still decline a request that
    /// passed these checks (its code no longer replays the failed history, or its version
    /// does not match the instance's and it fails mismatches); the instance then stays
    /// Failed, with a warning in the worker's log.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use durable_core::prelude::*;
    ///
    /// static SERVICE_UP: AtomicBool = AtomicBool::new(false);
    ///
    /// #[activity]
    /// async fn charge(amount: u32) -> Result<u32, ActivityError> {
    ///     if !SERVICE_UP.load(Ordering::SeqCst) {
    ///         return Err(ActivityError::new("payment service down"));
    ///     }
    ///     Ok(amount)
    /// }
    ///
    /// #[orchestrator]
    /// async fn checkout(ctx: OrchestrationContext, amount: u32) -> Result<u32, OrchestrationError> {
    ///     Ok(ctx.call(charge, amount).await?)
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = Worker::builder()
    ///     .store(MemoryStore::new())
    ///     .register(charge)
    ///     .register(checkout)
    ///     .start()?;
    /// let run = checkout::start(&worker.client(), 42).await?;
    /// assert!(run.wait().await.is_err()); // the service was down
    ///
    /// SERVICE_UP.store(true, Ordering::SeqCst);
    /// run.rewind("the payment service is back").await?;
    /// while run.status().await?.status == RuntimeStatus::Failed {
    ///     tokio::task::yield_now().await; // until a worker has applied the rewind
    /// }
    /// assert_eq!(run.wait().await?, 42);
    /// # Ok(()) }
    /// ```
    pub async fn rewind(&self, instance_id: &InstanceId, reason: &str) -> Result<(), ClientError> {
        let (record, history) = self.status_with_history(instance_id).await?;
        if let Err(reason) = crate::worker::rewind::prepare(&*self.store, &record, &history).await?
        {
            return Err(ClientError::CannotRewind {
                instance: instance_id.to_string(),
                reason,
            });
        }
        self.send(
            instance_id,
            Event::ExecutionRewound {
                reason: reason.to_owned(),
                seqs: Vec::new(),
            },
        )
        .await
    }

    /// Sends an orchestration request (raise, terminate, suspend, resume, rewind). An
    /// entity's instance would take it and ignore it, so it is refused here.
    async fn send(&self, instance_id: &InstanceId, event: Event) -> Result<(), ClientError> {
        if instance_id.as_str().starts_with('@') {
            return Err(crate::error::InvalidInstanceId {
                id: instance_id.to_string(),
                reason: "`@` ids name entities, which take entity operations \
                         (`Client::entity`, `signal_entity_raw`), not orchestration requests",
            }
            .into());
        }
        let msg = Message::new(event, None, self.clock.now());
        self.store.send_message(instance_id, msg).await?;
        Ok(())
    }

    /// Deletes a finished instance with its history, and its finished sub-orchestrations
    /// recursively. A running descendant is left alone, and so is everything under it (a
    /// running orchestration may still need its finished children, to rewind say); so is
    /// an instance that took a child's id over since.
    ///
    /// # Errors
    /// `InstanceNotFound`; `InstanceStillRunning` if it has not finished.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    ///
    /// #[orchestrator]
    /// async fn greet(_ctx: OrchestrationContext, name: String) -> Result<String, OrchestrationError> {
    ///     Ok(format!("Hello {name}"))
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = Worker::builder().store(MemoryStore::new()).register(greet).start()?;
    /// let client = worker.client();
    /// let run = client.start(greet, "Ada".into()).await?;
    /// run.wait().await?;
    /// assert_eq!(client.purge(run.id()).await?.deleted, 1);
    /// assert!(matches!(client.status(run.id()).await, Err(ClientError::InstanceNotFound(_))));
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub async fn purge(&self, instance_id: &InstanceId) -> Result<PurgeResult, ClientError> {
        let root = self.status(instance_id).await?;
        if !root.status.is_terminal() {
            return Err(ClientError::InstanceStillRunning(instance_id.to_string()));
        }
        let mut deleted = 0;
        let mut finished = vec![root];
        while let Some(r) = finished.pop() {
            let history = self.store.read_history(&r.instance_id).await?;
            let children = crate::worker::cascade::children(&*self.store, &r, &history).await?;
            finished.extend(children.into_iter().filter(|c| c.status.is_terminal()));
            // Only if still finished: it may have been started again under the same id.
            let any_time = Timestamp::from_unix_millis(u64::MAX);
            if self
                .store
                .purge_finished_instance(&r.instance_id, any_time)
                .await?
            {
                deleted += 1;
            }
        }
        Ok(PurgeResult { deleted })
    }

    /// Deletes every finished instance matching the query (paging through all of them).
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_core::InstanceQuery;
    ///
    /// #[orchestrator]
    /// async fn greet(_ctx: OrchestrationContext, name: String) -> Result<String, OrchestrationError> {
    ///     Ok(format!("Hello {name}"))
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = Worker::builder().store(MemoryStore::new()).register(greet).start()?;
    /// let client = worker.client();
    /// for name in ["Ada", "Grace", "Linus"] {
    ///     client.start(greet, name.into()).await?.wait().await?;
    /// }
    /// let purged = client.purge_by_filter(InstanceQuery::new().name("greet")).await?;
    /// assert_eq!(purged.deleted, 3);
    /// assert!(client.query(&InstanceQuery::new()).await?.instances.is_empty());
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub async fn purge_by_filter(&self, query: InstanceQuery) -> Result<PurgeResult, ClientError> {
        let mut query = query;
        if query.statuses.is_empty() {
            query.statuses = vec![
                RuntimeStatus::Completed,
                RuntimeStatus::Failed,
                RuntimeStatus::Terminated,
            ];
        }
        query.statuses.retain(|s| s.is_terminal());
        let mut ids = Vec::new();
        loop {
            let page = self.store.query_instances(&query).await?;
            ids.extend(page.instances.into_iter().map(|r| r.instance_id));
            match page.continuation {
                Some(c) => query.continuation = Some(c),
                None => break,
            }
        }
        let mut total = PurgeResult::default();
        for id in ids {
            match self.purge(&id).await {
                Ok(r) => total.deleted += r.deleted,
                Err(ClientError::InstanceNotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(total)
    }

    /// How many instances match `query` (paging ignored), per status: one entry per status
    /// with at least one instance, in [`RuntimeStatus`] declaration order.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_core::{InstanceQuery, RuntimeStatus};
    ///
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = Client::new(std::sync::Arc::new(MemoryStore::new()));
    /// client.start_raw("nightly", "null", Default::default()).await?;
    /// let counts = client.count_instances(&InstanceQuery::new().name("nightly")).await?;
    /// assert_eq!(counts, vec![(RuntimeStatus::Pending, 1)]);
    /// # Ok(()) }
    /// ```
    pub async fn count_instances(
        &self,
        query: &InstanceQuery,
    ) -> Result<Vec<(RuntimeStatus, u64)>, ClientError> {
        Ok(self.store.count_instances(query).await?)
    }

    /// Lists instances, one page at a time.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_core::InstanceQuery;
    ///
    /// #[orchestrator]
    /// async fn greet(_ctx: OrchestrationContext, name: String) -> Result<String, OrchestrationError> {
    ///     Ok(format!("Hello {name}"))
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = Worker::builder().store(MemoryStore::new()).register(greet).start()?;
    /// let client = worker.client();
    /// for name in ["Ada", "Grace", "Linus"] {
    ///     client.start(greet, name.into()).await?.wait().await?;
    /// }
    /// let query = InstanceQuery::new().statuses([RuntimeStatus::Completed]).page_size(2);
    /// let first = client.query(&query).await?;
    /// assert_eq!(first.instances.len(), 2);
    /// let rest = client.query(&query.continuation(first.continuation)).await?;
    /// assert_eq!(rest.instances.len(), 1);
    /// assert_eq!(rest.continuation, None);
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub async fn query(&self, query: &InstanceQuery) -> Result<InstancePage, ClientError> {
        Ok(self.store.query_instances(query).await?)
    }

    /// A typed proxy for entity `E` with `key`: one async method per operation that signals
    /// it (acknowledged once durable), plus `state()` and `delete()`.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_testing::TestEnv;
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[entity]
    /// #[derive(Default, Serialize, Deserialize)]
    /// struct Cart { items: Vec<String> }
    ///
    /// #[entity]
    /// impl Cart {
    ///     fn add(&mut self, item: String) { self.items.push(item); }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let env = TestEnv::builder().register(Cart::entity()).start()?;
    /// let cart = env.client().entity::<Cart>("user-7");
    /// cart.add("book".into()).await?; // durably queued: the entity applies it in order
    /// cart.add("lamp".into()).await?;
    /// env.run_until_idle().await;
    /// assert_eq!(cart.state().await?.map(|c| c.items), Some(vec!["book".into(), "lamp".into()]));
    /// # Ok(()) }
    /// ```
    pub fn entity<E: Entity>(&self, key: &str) -> E::ClientProxy {
        E::ClientProxy::from(ClientTarget {
            client: self.clone(),
            entity: EntityId {
                name: E::NAME.to_lowercase(),
                key: key.to_owned(),
            },
            scheduled: None,
        })
    }

    /// Signals an entity operation with a JSON input, creating the entity on demand;
    /// delivered no earlier than `scheduled` when given.
    ///
    /// # Errors
    /// `InvalidInstanceId` for a bad key, `PayloadTooLarge`, store errors.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_testing::TestEnv;
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[entity]
    /// #[derive(Default, Serialize, Deserialize)]
    /// struct Counter { value: i64 }
    ///
    /// #[entity]
    /// impl Counter {
    ///     fn add(&mut self, amount: i64) { self.value += amount; }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let env = TestEnv::builder().register(Counter::entity()).start()?;
    /// let client = env.client();
    /// let id = EntityId::new("counter", "page-views")?;
    /// client.signal_entity_raw(&id, "add", "5".to_owned(), None).await?;
    /// env.run_until_idle().await;
    /// assert_eq!(client.read_entity::<Counter>("page-views").await?.map(|c| c.value), Some(5));
    /// # Ok(()) }
    /// ```
    pub async fn signal_entity_raw(
        &self,
        entity: &EntityId,
        operation: &str,
        input: String,
        scheduled: Option<Timestamp>,
    ) -> Result<(), ClientError> {
        self.check_size(&input)?;
        let checked = EntityId::new(&entity.name, &entity.key)?;
        let now = self.clock.now();
        self.store
            .create_instance(crate::entity::entity_instance(&checked, now))
            .await?;
        let msg = Message::new(
            Event::EntityOperation {
                operation: operation.to_owned(),
                input,
                sender: None,
                reply_to: None,
                trace_context: current_trace_context(),
            },
            None,
            scheduled.unwrap_or(now).max(now),
        );
        self.store.send_message(&checked.instance_id(), msg).await?;
        Ok(())
    }

    /// Whether this client's registry knows entity type `name`; `None` when the client has
    /// no registry (it was not obtained from a worker).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use durable_core::prelude::*;
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[entity]
    /// #[derive(Default, Serialize, Deserialize)]
    /// struct Counter { value: i64 }
    ///
    /// #[entity]
    /// impl Counter {
    ///     fn add(&mut self, amount: i64) { self.value += amount; }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = MemoryStore::new();
    /// let worker = Worker::builder().store(store.clone()).register(Counter::entity()).start()?;
    /// assert_eq!(worker.client().knows_entity("counter"), Some(true));
    /// assert_eq!(worker.client().knows_entity("cart"), Some(false));
    /// assert_eq!(Client::new(Arc::new(store)).knows_entity("counter"), None); // no registry
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn knows_entity(&self, name: &str) -> Option<bool> {
        self.registry.as_ref().map(|r| r.has_entity(name))
    }

    /// Reads an entity's state as JSON; `None` if it has none (never created or deleted).
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_testing::TestEnv;
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[entity]
    /// #[derive(Default, Serialize, Deserialize)]
    /// struct Counter { value: i64 }
    ///
    /// #[entity]
    /// impl Counter {
    ///     fn add(&mut self, amount: i64) { self.value += amount; }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let env = TestEnv::builder().register(Counter::entity()).start()?;
    /// let client = env.client();
    /// client.entity::<Counter>("page-views").add(5).await?;
    /// env.run_until_idle().await;
    /// let id = EntityId::new("counter", "page-views")?;
    /// assert_eq!(client.read_entity_raw(&id).await?.as_deref(), Some(r#"{"value":5}"#));
    /// assert_eq!(client.read_entity_raw(&EntityId::new("counter", "never")?).await?, None);
    /// # Ok(()) }
    /// ```
    pub async fn read_entity_raw(&self, entity: &EntityId) -> Result<Option<String>, ClientError> {
        let Some(r) = self.store.read_instance(&entity.instance_id()).await? else {
            return Ok(None);
        };
        Ok(entity_record(&r).and_then(|e| e.state))
    }

    /// Reads and decodes an entity's state (a snapshot, not linearized with in-flight
    /// operations).
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_testing::TestEnv;
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[entity]
    /// #[derive(Default, Serialize, Deserialize)]
    /// struct Counter { value: i64 }
    ///
    /// #[entity]
    /// impl Counter {
    ///     fn add(&mut self, amount: i64) { self.value += amount; }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let env = TestEnv::builder().register(Counter::entity()).start()?;
    /// let client = env.client();
    /// client.entity::<Counter>("page-views").add(5).await?;
    /// env.run_until_idle().await;
    /// let counter: Option<Counter> = client.read_entity("page-views").await?;
    /// assert_eq!(counter.map(|c| c.value), Some(5));
    /// assert!(client.read_entity::<Counter>("never-used").await?.is_none());
    /// # Ok(()) }
    /// ```
    pub async fn read_entity<E: Entity>(&self, key: &str) -> Result<Option<E>, ClientError> {
        let id = EntityId::of::<E>(key)?;
        match self.read_entity_raw(&id).await? {
            Some(json) => Ok(Some(decode(&json)?)),
            None => Ok(None),
        }
    }

    /// Lists entities, one page at a time.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_core::EntityQuery;
    /// use durable_testing::TestEnv;
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[entity]
    /// #[derive(Default, Serialize, Deserialize)]
    /// struct Counter { value: i64 }
    ///
    /// #[entity]
    /// impl Counter {
    ///     fn add(&mut self, amount: i64) { self.value += amount; }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let env = TestEnv::builder().register(Counter::entity()).start()?;
    /// let client = env.client();
    /// for page in ["home", "about"] {
    ///     client.entity::<Counter>(page).add(1).await?;
    /// }
    /// env.run_until_idle().await;
    /// let listed = client.list_entities(&EntityQuery::new().name("counter").with_state()).await?;
    /// let mut keys: Vec<&str> = listed.entities.iter().map(|e| e.id.key.as_str()).collect();
    /// keys.sort();
    /// assert_eq!(keys, ["about", "home"]);
    /// assert_eq!(listed.entities[0].state.as_deref(), Some(r#"{"value":1}"#));
    /// # Ok(()) }
    /// ```
    pub async fn list_entities(&self, query: &EntityQuery) -> Result<EntityPage, ClientError> {
        let prefix = match &query.name {
            Some(n) => format!(
                "@{}@{}",
                n.to_lowercase(),
                query.key_prefix.as_deref().unwrap_or("")
            ),
            None => "@".to_owned(),
        };
        let wanted = if query.page_size == 0 {
            InstanceQuery::new().effective_page_size()
        } else {
            query.page_size
        };
        let mut entities = Vec::new();
        let mut continuation = query.continuation.clone();
        // Deleted entities and time filters can leave a store page empty: read on until the
        // page is full or the store runs out (a bounded number of reads per call).
        for _ in 0..64 {
            let mut q = InstanceQuery::new()
                .id_prefix(prefix.clone())
                .page_size(wanted - entities.len());
            q.include_entities = true;
            q.continuation = continuation.take();
            let page = self.store.query_instances(&q).await?;
            entities.extend(page.instances.iter().filter_map(|r| {
                let id = EntityId::from_instance_id(&r.instance_id)?;
                let rec = entity_record(r).unwrap_or_default();
                if rec.state.is_none() && !query.include_deleted {
                    return None;
                }
                if query
                    .last_operation_from
                    .is_some_and(|t| r.last_updated_at < t)
                    || query
                        .last_operation_to
                        .is_some_and(|t| r.last_updated_at > t)
                {
                    return None;
                }
                Some(EntityMetadata {
                    id,
                    last_operation_at: r.last_updated_at,
                    locked_by: rec.lock.map(|l| l.instance_id),
                    state: if query.include_state { rec.state } else { None },
                })
            }));
            continuation = page.continuation;
            if entities.len() >= wanted || continuation.is_none() {
                break;
            }
        }
        Ok(EntityPage {
            entities,
            continuation,
        })
    }

    fn check_size(&self, payload: &str) -> Result<(), ClientError> {
        if payload.len() > self.limits.max_payload_bytes {
            return Err(ClientError::PayloadTooLarge {
                size: payload.len(),
                limit: self.limits.max_payload_bytes,
            });
        }
        Ok(())
    }
}

/// A typed handle to one instance whose output is `O`.
pub struct InstanceHandle<O> {
    client: Client,
    instance_id: InstanceId,
    /// The creation time of the run this handle follows (`None`: whatever runs).
    run: Option<Timestamp>,
    _o: PhantomData<fn() -> O>,
}

impl<O> Clone for InstanceHandle<O> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
            instance_id: self.instance_id.clone(),
            run: self.run,
            _o: PhantomData,
        }
    }
}

impl<O> std::fmt::Debug for InstanceHandle<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceHandle")
            .field("instance_id", &self.instance_id)
            .finish_non_exhaustive()
    }
}

impl<O: DeserializeOwned> InstanceHandle<O> {
    /// The instance id.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    ///
    /// #[orchestrator]
    /// async fn report(_ctx: OrchestrationContext, _input: ()) -> Result<(), OrchestrationError> {
    ///     Ok(())
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = Worker::builder().store(MemoryStore::new()).register(report).start()?;
    /// let client = worker.client();
    /// let run = client.start(report, ()).await?; // a random id
    /// let same = client.handle::<()>(run.id().clone()); // keep the id to find it again
    /// same.wait().await?;
    /// assert_eq!(client.status(run.id()).await?.status, RuntimeStatus::Completed);
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn id(&self) -> &InstanceId {
        &self.instance_id
    }

    /// Waits for the instance to finish and returns its typed output.
    ///
    /// A handle returned by a start follows the run it started, through continue-as-new;
    /// if another start takes the id over first (an id-reuse policy that replaces), the
    /// run's result is gone and `wait` answers [`ClientError::Replaced`] rather than the
    /// new run's result.
    ///
    /// # Errors
    /// [`ClientError::Failed`] with the failure details, [`ClientError::Terminated`],
    /// [`ClientError::Replaced`], or [`ClientError::PayloadDecode`] if the output is not an
    /// `O`.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    ///
    /// #[orchestrator]
    /// async fn divide(_ctx: OrchestrationContext, (a, b): (u32, u32)) -> Result<u32, OrchestrationError> {
    ///     a.checked_div(b).ok_or_else(|| OrchestrationError::new("division by zero"))
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = Worker::builder().store(MemoryStore::new()).register(divide).start()?;
    /// let client = worker.client();
    /// assert_eq!(client.start(divide, (84, 2)).await?.wait().await?, 42);
    /// let failed = client.start(divide, (1, 0)).await?.wait().await;
    /// assert!(matches!(failed, Err(ClientError::Failed(details)) if details.message == "division by zero"));
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub async fn wait(&self) -> Result<O, ClientError> {
        let r = self
            .client
            .wait_for_run(&self.instance_id, self.run)
            .await?;
        output_of(r)
    }

    /// [`wait`](Self::wait) with a wall-clock timeout; `Ok(None)` on timeout.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use durable_core::prelude::*;
    ///
    /// #[orchestrator]
    /// async fn approval(ctx: OrchestrationContext, _input: ()) -> Result<bool, OrchestrationError> {
    ///     Ok(ctx.wait_for_event("approved").await?)
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = Worker::builder().store(MemoryStore::new()).register(approval).start()?;
    /// let run = worker.client().start(approval, ()).await?;
    /// // Nobody approved yet: give up waiting (the instance keeps running).
    /// assert_eq!(run.wait_timeout(Duration::from_millis(10)).await?, None);
    /// run.raise("approved", &true).await?;
    /// assert_eq!(run.wait_timeout(Duration::from_secs(30)).await?, Some(true));
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub async fn wait_timeout(&self, timeout: Duration) -> Result<Option<O>, ClientError> {
        match tokio::time::timeout(timeout, self.wait()).await {
            Ok(r) => r.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// The current status record.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_testing::TestEnv;
    ///
    /// #[orchestrator]
    /// async fn approval(ctx: OrchestrationContext, _amount: u32) -> Result<bool, OrchestrationError> {
    ///     ctx.set_custom_status("waiting for a manager")?;
    ///     Ok(ctx.wait_for_event("approved").await?)
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let env = TestEnv::builder().register(approval).start()?;
    /// let run = env.start(approval, 500).await?;
    /// env.run_until_idle().await;
    /// let record = run.status().await?;
    /// assert_eq!(record.status, RuntimeStatus::Running);
    /// assert_eq!(record.input::<u32>()?, 500);
    /// assert_eq!(record.custom_status::<String>()?.as_deref(), Some("waiting for a manager"));
    /// # Ok(()) }
    /// ```
    pub async fn status(&self) -> Result<InstanceRecord, ClientError> {
        self.client.status(&self.instance_id).await
    }

    /// Waits until `predicate` holds for this instance's status record and returns that
    /// record; see [`Client::wait_until`]. A handle returned by a start follows its run:
    /// [`ClientError::Replaced`] once another start has taken the id over.
    ///
    /// # Errors
    /// [`ClientError::Timeout`] when the predicate did not hold within `timeout` (wall-clock
    /// time); `InstanceNotFound`, `Replaced`, store errors.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use durable_core::prelude::*;
    ///
    /// #[orchestrator]
    /// async fn import(ctx: OrchestrationContext, files: u32) -> Result<u32, OrchestrationError> {
    ///     ctx.set_custom_status(&files)?; // files left
    ///     ctx.wait_for_event::<()>("go").await?;
    ///     Ok(files)
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = Worker::builder().store(MemoryStore::new()).register(import).start()?;
    /// let run = worker.client().start(import, 3).await?;
    /// let ready = run
    ///     .wait_until(|r| r.custom_status.is_some(), Duration::from_secs(30))
    ///     .await?;
    /// assert_eq!(ready.custom_status::<u32>()?, Some(3));
    /// assert_eq!(ready.status, RuntimeStatus::Running);
    /// # run.raise("go", &()).await?;
    /// # run.wait().await?;
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub async fn wait_until(
        &self,
        predicate: impl FnMut(&InstanceRecord) -> bool,
        timeout: Duration,
    ) -> Result<InstanceRecord, ClientError> {
        self.client
            .wait_until_in_run(&self.instance_id, self.run, predicate, timeout)
            .await
    }

    /// Raises an event on this instance.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    ///
    /// #[orchestrator]
    /// async fn approval(ctx: OrchestrationContext, _input: ()) -> Result<String, OrchestrationError> {
    ///     let approver: String = ctx.wait_for_event("approved").await?;
    ///     Ok(format!("approved by {approver}"))
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = Worker::builder().store(MemoryStore::new()).register(approval).start()?;
    /// let run = worker.client().start(approval, ()).await?;
    /// run.raise("approved", "Grace").await?;
    /// assert_eq!(run.wait().await?, "approved by Grace");
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub async fn raise<T: Serialize + ?Sized>(
        &self,
        name: &str,
        data: &T,
    ) -> Result<(), ClientError> {
        self.client.raise_event(&self.instance_id, name, data).await
    }

    /// Terminates this instance and its running descendants; see [`Client::terminate`].
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    ///
    /// #[orchestrator]
    /// async fn approval(ctx: OrchestrationContext, _input: ()) -> Result<bool, OrchestrationError> {
    ///     Ok(ctx.wait_for_event("approved").await?)
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = Worker::builder().store(MemoryStore::new()).register(approval).start()?;
    /// let run = worker.client().start(approval, ()).await?;
    /// run.terminate("request withdrawn").await?;
    /// assert!(matches!(run.wait().await, Err(ClientError::Terminated { reason }) if reason == "request withdrawn"));
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub async fn terminate(&self, reason: &str) -> Result<(), ClientError> {
        self.client.terminate(&self.instance_id, reason).await
    }

    /// Suspends this instance; see [`Client::suspend`] for the errors.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_testing::TestEnv;
    ///
    /// #[orchestrator]
    /// async fn approval(ctx: OrchestrationContext, _input: ()) -> Result<bool, OrchestrationError> {
    ///     Ok(ctx.wait_for_event("approved").await?)
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let env = TestEnv::builder().register(approval).start()?;
    /// let run = env.start(approval, ()).await?;
    /// env.run_until_idle().await;
    /// run.suspend("fraud check").await?;
    /// run.raise("approved", &true).await?; // kept until resumed
    /// env.run_until_idle().await;
    /// assert_eq!(run.status().await?.status, RuntimeStatus::Suspended);
    /// # run.resume("cleared").await?;
    /// # assert!(env.wait(&run).await?);
    /// # Ok(()) }
    /// ```
    pub async fn suspend(&self, reason: &str) -> Result<(), ClientError> {
        self.client.suspend(&self.instance_id, reason).await
    }

    /// Resumes this instance; see [`Client::resume`] for the errors.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_testing::TestEnv;
    ///
    /// #[orchestrator]
    /// async fn approval(ctx: OrchestrationContext, _input: ()) -> Result<bool, OrchestrationError> {
    ///     Ok(ctx.wait_for_event("approved").await?)
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let env = TestEnv::builder().register(approval).start()?;
    /// let run = env.start(approval, ()).await?;
    /// run.suspend("fraud check").await?;
    /// run.raise("approved", &true).await?;
    /// env.run_until_idle().await;
    /// run.resume("cleared").await?;
    /// assert!(env.wait(&run).await?); // the event kept while suspended is delivered
    /// assert!(matches!(run.resume("again").await, Err(ClientError::InstanceNotRunning(_))));
    /// # Ok(()) }
    /// ```
    pub async fn resume(&self, reason: &str) -> Result<(), ClientError> {
        self.client.resume(&self.instance_id, reason).await
    }

    /// Rewinds this instance after a failure; see [`Client::rewind`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use durable_core::prelude::*;
    /// use durable_testing::TestEnv;
    ///
    /// static INVENTORY_UP: AtomicBool = AtomicBool::new(false);
    ///
    /// #[activity]
    /// async fn reserve(sku: String) -> Result<String, ActivityError> {
    ///     if !INVENTORY_UP.load(Ordering::SeqCst) {
    ///         return Err(ActivityError::non_retriable("inventory service down"));
    ///     }
    ///     Ok(format!("reserved {sku}"))
    /// }
    ///
    /// #[orchestrator]
    /// async fn order(ctx: OrchestrationContext, sku: String) -> Result<String, OrchestrationError> {
    ///     Ok(ctx.call(reserve, sku).await?)
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let env = TestEnv::builder().register(reserve).register(order).start()?;
    /// let run = env.start(order, "lamp".to_owned()).await?;
    /// assert!(env.wait(&run).await.is_err());
    ///
    /// INVENTORY_UP.store(true, Ordering::SeqCst); // the cause is fixed
    /// run.rewind("inventory is back").await?;
    /// assert_eq!(env.wait(&run).await?, "reserved lamp"); // re-ran only the failed step
    /// assert_eq!(env.call_count(reserve), 2);
    /// # Ok(()) }
    /// ```
    pub async fn rewind(&self, reason: &str) -> Result<(), ClientError> {
        self.client.rewind(&self.instance_id, reason).await
    }

    /// The history of the current execution.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    ///
    /// #[activity]
    /// async fn greet(name: String) -> Result<String, ActivityError> {
    ///     Ok(format!("Hello {name}"))
    /// }
    ///
    /// #[orchestrator]
    /// async fn welcome(ctx: OrchestrationContext, name: String) -> Result<String, OrchestrationError> {
    ///     Ok(ctx.call(greet, name).await?)
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = Worker::builder().store(MemoryStore::new()).register(greet).register(welcome).start()?;
    /// let run = worker.client().start(welcome, "Ada".into()).await?;
    /// run.wait().await?;
    /// let kinds: Vec<&str> = run.history().await?.iter().map(|e| e.event.kind()).collect();
    /// assert!(kinds.contains(&"ExecutionStarted"));
    /// assert_eq!(kinds.iter().filter(|k| **k == "TaskCompleted").count(), 1);
    /// assert_eq!(kinds.last(), Some(&"ExecutionCompleted"));
    /// # worker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub async fn history(&self) -> Result<Vec<HistoryEvent>, ClientError> {
        Ok(self.client.status_with_history(&self.instance_id).await?.1)
    }
}

/// Decodes the output of a finished instance, or turns its failure into an error.
pub fn output_of<O: DeserializeOwned>(r: InstanceRecord) -> Result<O, ClientError> {
    match r.status {
        RuntimeStatus::Completed => Ok(decode(r.output.as_deref().unwrap_or("null"))?),
        RuntimeStatus::Failed => Err(ClientError::Failed(r.failure.unwrap_or_else(|| {
            crate::error::FailureDetails::new("Unknown", "the orchestration failed")
        }))),
        RuntimeStatus::Terminated => Err(ClientError::Terminated {
            reason: r
                .output
                .and_then(|o| serde_json::from_str::<String>(&o).ok())
                .unwrap_or_default(),
        }),
        _ => Err(ClientError::InstanceNotRunning(r.instance_id.to_string())),
    }
}
