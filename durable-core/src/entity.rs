//! Durable entities: addressable state with operations that run one at a time.
//!
//! An entity is identified by an [`EntityId`] (name, key) and stored as a system instance
//! `@name@key`. Operations arrive as messages in its inbox; a batch of them runs in one
//! episode and commits atomically with the state, the replies and the signals it sends.
//! Critical sections lock several entities in one global order (sorted ids), so they cannot
//! deadlock.
//!
//! The batch logic here (`EntityRecord::handle`) is pure apart from awaiting the user's
//! operation futures; the worker feeds it messages and commits what it returns. The
//! orchestration side — `ctx.entity::<E>(key)`, `ctx.signal_entity::<E>(key)` and the
//! [`CallTarget`] they wrap — is in the `orchestration` submodule.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::context::orchestrator::Orchestrator;
use crate::error::{FailureDetails, InvalidInstanceId, decode, encode};
use crate::function::BoxFuture;
use crate::history::{Event, ParentRef, Payload};
pub use crate::ids::EntityId;
use crate::ids::{InstanceId, Timestamp};
use crate::storage::{IdReusePolicy, Message, NewInstance};

mod orchestration;

pub use orchestration::CallTarget;

// `EntityId` itself is in `ids`; naming one by its entity type needs the `Entity` trait.
impl EntityId {
    /// The id of entity type `E` with `key`.
    pub fn of<E: Entity>(key: &str) -> Result<Self, InvalidInstanceId> {
        Self::new(E::NAME, key)
    }
}

/// A side effect of an entity operation, applied only if the operation succeeds.
#[derive(Debug, Clone)]
pub(crate) enum Effect {
    Signal {
        target: EntityId,
        operation: String,
        input: Payload,
    },
    StartOrchestration {
        name: String,
        instance_id: InstanceId,
        input: Payload,
    },
}

/// What an entity operation can do besides changing state: learn its id, signal other
/// entities, start orchestrations and delete its own state.
#[derive(Clone)]
pub struct EntityContext {
    id: EntityId,
    effects: Arc<Mutex<Vec<Effect>>>,
    deleted: Arc<AtomicBool>,
}

impl fmt::Debug for EntityContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntityContext")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl EntityContext {
    pub(crate) fn new(id: EntityId) -> Self {
        Self {
            id,
            effects: Arc::new(Mutex::new(Vec::new())),
            deleted: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A context for calling entity methods directly in unit tests.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[entity]
    /// #[derive(Default, Serialize, Deserialize)]
    /// struct Inbox { unread: u32 }
    ///
    /// #[entity]
    /// impl Inbox {
    ///     fn read_all(&mut self, ctx: &EntityContext) -> String {
    ///         self.unread = 0;
    ///         format!("{} is empty", ctx.id().key)
    ///     }
    /// }
    ///
    /// // The operation is a plain method: test it without a worker.
    /// let ctx = EntityContext::for_test("inbox", "ada");
    /// let mut inbox = Inbox { unread: 3 };
    /// assert_eq!(inbox.read_all(&ctx), "ada is empty");
    /// assert_eq!(inbox.unread, 0);
    /// ```
    pub fn for_test(name: &str, key: &str) -> Self {
        Self::new(EntityId {
            name: name.to_lowercase(),
            key: key.to_owned(),
        })
    }

    /// This entity's id.
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
    /// struct Greeter { greeted: Vec<String> }
    ///
    /// #[entity]
    /// impl Greeter {
    ///     fn greet(&mut self, ctx: &EntityContext, name: String) {
    ///         // The key tells entities of one type apart: here, the language.
    ///         let hello = if ctx.id().key == "fr" { "Bonjour" } else { "Hello" };
    ///         self.greeted.push(format!("{hello} {name}"));
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let env = TestEnv::builder().register(Greeter::entity()).start()?;
    /// env.client().entity::<Greeter>("fr").greet("Ada".into()).await?;
    /// env.run_until_idle().await;
    /// let fr = env.client().read_entity::<Greeter>("fr").await?;
    /// assert_eq!(fr.map(|g| g.greeted), Some(vec!["Bonjour Ada".to_owned()]));
    /// # Ok(()) }
    /// ```
    pub fn id(&self) -> &EntityId {
        &self.id
    }

    /// Typed one-way signals to another entity, sent if this operation succeeds.
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
    /// #[entity]
    /// #[derive(Default, Serialize, Deserialize)]
    /// struct Cart { items: u32 }
    ///
    /// #[entity]
    /// impl Cart {
    ///     fn add_item(&mut self, ctx: &EntityContext) {
    ///         self.items += 1;
    ///         ctx.signal_entity::<Counter>("items-sold").add(1); // sent once this succeeds
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let env = TestEnv::builder().register(Counter::entity()).register(Cart::entity()).start()?;
    /// env.client().entity::<Cart>("ada").add_item().await?;
    /// env.client().entity::<Cart>("grace").add_item().await?;
    /// env.run_until_idle().await;
    /// let sold = env.client().read_entity::<Counter>("items-sold").await?;
    /// assert_eq!(sold.map(|c| c.value), Some(2));
    /// # Ok(()) }
    /// ```
    pub fn signal_entity<E: Entity>(&self, key: &str) -> E::SignalProxy {
        let target = EntityId {
            name: E::NAME.to_lowercase(),
            key: key.to_owned(),
        };
        E::SignalProxy::from(SignalTarget {
            sink: Arc::new(self.clone()),
            entity: target,
        })
    }

    /// Starts an orchestration (with a fresh id) if this operation succeeds; returns its id.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_testing::TestEnv;
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[orchestrator]
    /// async fn restock(_ctx: OrchestrationContext, sku: String) -> Result<String, OrchestrationError> {
    ///     Ok(format!("ordered more {sku}"))
    /// }
    ///
    /// #[entity]
    /// #[derive(Serialize, Deserialize)]
    /// struct Stock { count: u32, restock_run: Option<InstanceId> }
    ///
    /// #[entity]
    /// impl Stock {
    ///     fn initial() -> Self { Stock { count: 1, restock_run: None } }
    ///     fn take(&mut self, ctx: &EntityContext) -> Result<(), FailureDetails> {
    ///         self.count = self.count.saturating_sub(1);
    ///         if self.count == 0 {
    ///             let sku = ctx.id().key.clone();
    ///             self.restock_run = Some(ctx.start_orchestration::<restock>(&sku)?);
    ///         }
    ///         Ok(())
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let env = TestEnv::builder().register(restock).register(Stock::entity()).start()?;
    /// env.client().entity::<Stock>("lamp").take().await?;
    /// env.run_until_idle().await;
    /// let stock = env.client().read_entity::<Stock>("lamp").await?.expect("the entity has state");
    /// let run = env.client().handle::<String>(stock.restock_run.expect("a restock started"));
    /// assert_eq!(env.wait(&run).await?, "ordered more lamp");
    /// # Ok(()) }
    /// ```
    pub fn start_orchestration<O: Orchestrator>(
        &self,
        input: &O::Input,
    ) -> Result<InstanceId, FailureDetails> {
        let input = encode(input).map_err(|e| FailureDetails::from_error(&e))?;
        let instance_id = InstanceId::random();
        self.push(Effect::StartOrchestration {
            name: O::NAME.to_owned(),
            instance_id: instance_id.clone(),
            input,
        });
        Ok(instance_id)
    }

    /// Deletes this entity's state when the operation completes.
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
    /// struct Session { pages: u32 }
    ///
    /// #[entity]
    /// impl Session {
    ///     fn visit(&mut self) { self.pages += 1; }
    ///     fn log_out(&mut self, ctx: &EntityContext) {
    ///         ctx.delete_state(); // once this operation completes
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let env = TestEnv::builder().register(Session::entity()).start()?;
    /// let session = env.client().entity::<Session>("ada");
    /// session.visit().await?;
    /// env.run_until_idle().await;
    /// assert_eq!(session.state().await?.map(|s| s.pages), Some(1));
    /// session.log_out().await?;
    /// env.run_until_idle().await;
    /// assert!(session.state().await?.is_none());
    /// # Ok(()) }
    /// ```
    pub fn delete_state(&self) {
        self.deleted.store(true, Ordering::SeqCst);
    }

    fn push(&self, e: Effect) {
        self.effects
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(e);
    }

    fn take_effects(&self) -> Vec<Effect> {
        std::mem::take(
            &mut *self
                .effects
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

/// Where typed signal proxies send their signals: an orchestration (recorded as an action)
/// or an entity operation (an effect). Implemented by the runtime.
pub trait SignalSink: Send + Sync {
    /// Sends `operation(input)` to `entity`.
    #[track_caller]
    fn send_signal(&self, entity: &EntityId, operation: &str, input: Payload);
}

impl SignalSink for EntityContext {
    fn send_signal(&self, entity: &EntityId, operation: &str, input: Payload) {
        self.push(Effect::Signal {
            target: entity.clone(),
            operation: operation.to_owned(),
            input,
        });
    }
}

/// The target of a generated signal proxy.
#[derive(Clone)]
pub struct SignalTarget {
    /// Where signals go.
    pub sink: Arc<dyn SignalSink>,
    /// The entity signalled.
    pub entity: EntityId,
}

impl fmt::Debug for SignalTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignalTarget")
            .field("entity", &self.entity)
            .finish_non_exhaustive()
    }
}

impl SignalTarget {
    /// Serializes `input` and sends the signal. A value that cannot be serialized is
    /// dropped with an error log (the typed proxies only pass serializable inputs).
    #[track_caller]
    pub fn send<T: Serialize + ?Sized>(&self, operation: &str, input: &T) {
        match encode(input) {
            Ok(p) => self.sink.send_signal(&self.entity, operation, p),
            Err(e) => {
                tracing::error!(entity = %self.entity, operation, error = %e, "signal input does not serialize");
            }
        }
    }
}

/// The target of a generated client proxy.
#[derive(Debug, Clone)]
pub struct ClientTarget {
    /// The client.
    pub client: crate::client::Client,
    /// The entity.
    pub entity: EntityId,
    /// Deliver signals no earlier than this.
    pub scheduled: Option<Timestamp>,
}

/// A typed entity: serde state plus operations. `#[entity]` implements this for a struct
/// and its `impl` block; see [`macro@crate::entity`].
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an entity",
    note = "put `#[entity]` on the struct and on its `impl` block"
)]
pub trait Entity: Serialize + DeserializeOwned + Send + 'static {
    /// The entity type name (case-insensitive).
    const NAME: &'static str;
    /// Typed one-way signals from clients (async, acknowledged once durable) plus state reads.
    type ClientProxy: From<ClientTarget>;
    /// Typed request/response calls from orchestrations.
    type CallProxy: From<CallTarget>;
    /// Typed one-way signals from orchestrations and entities.
    type SignalProxy: From<SignalTarget>;

    /// The state of an entity that has none yet.
    fn initial() -> Self;

    /// Runs operation `operation` with JSON `input` on `self`.
    fn dispatch<'a>(
        &'a mut self,
        ctx: &'a EntityContext,
        operation: &'a str,
        input: &'a str,
    ) -> BoxFuture<'a, Result<Payload, FailureDetails>>;
}

/// The built-in operation that deletes an entity's state.
pub const DELETE_OPERATION: &str = "delete";

/// The result of one operation.
pub(crate) struct OpOutcome {
    pub(crate) result: Result<Payload, FailureDetails>,
    pub(crate) state: Option<Payload>,
    pub(crate) effects: Vec<Effect>,
}

pub(crate) type EntityFn = dyn Fn(EntityContext, Option<Payload>, String, Payload) -> BoxFuture<'static, OpOutcome>
    + Send
    + Sync;

/// Builds the type-erased runner for entity type `E`.
pub(crate) fn runner<E: Entity>() -> Arc<EntityFn> {
    Arc::new(
        |ctx: EntityContext, state: Option<Payload>, operation: String, input: Payload| {
            Box::pin(async move {
                let unchanged = |result| OpOutcome {
                    result,
                    state: state.clone(),
                    effects: Vec::new(),
                };
                if operation == DELETE_OPERATION {
                    return OpOutcome {
                        result: Ok("null".to_owned()),
                        state: None,
                        effects: Vec::new(),
                    };
                }
                let mut value: E = match &state {
                    Some(s) => match decode(s) {
                        Ok(v) => v,
                        Err(e) => return unchanged(Err(FailureDetails::from_error(&e))),
                    },
                    None => E::initial(),
                };
                let fut = value.dispatch(&ctx, &operation, &input);
                let result = CatchUnwind(fut).await;
                let result = match result {
                    Ok(r) => r,
                    Err(panic) => {
                        let mut f = FailureDetails::from_panic(panic.as_ref());
                        f.message =
                            format!("entity operation `{operation}` panicked: {}", f.message);
                        Err(f)
                    }
                };
                match result {
                    Err(f) => unchanged(Err(f)),
                    Ok(out) => {
                        let new_state = if ctx.deleted.load(Ordering::SeqCst) {
                            None
                        } else {
                            match encode(&value) {
                                Ok(s) => Some(s),
                                Err(e) => return unchanged(Err(FailureDetails::from_error(&e))),
                            }
                        };
                        OpOutcome {
                            result: Ok(out),
                            state: new_state,
                            effects: ctx.take_effects(),
                        }
                    }
                }
            })
        },
    )
}

/// Catches a panic raised while polling the inner future.
pub(crate) struct CatchUnwind<F>(pub(crate) F);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn std::any::Any + Send>>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.0;
        match std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(&mut *inner).poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(p) => Poll::Ready(Err(p)),
        }
    }
}

/// What an entity instance stores: its state, its lock and operations deferred while
/// another orchestration holds the lock.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct EntityRecord {
    #[serde(default)]
    pub(crate) state: Option<Payload>,
    #[serde(default)]
    pub(crate) lock: Option<ParentRef>,
    #[serde(default)]
    pub(crate) queue: VecDeque<Event>,
}

/// An operation to run, from an `EntityOperation` message.
struct Operation {
    name: String,
    input: Payload,
    /// Where to send the result, for calls.
    reply_to: Option<ParentRef>,
    /// The parent of the operation's span.
    trace_context: Option<crate::trace_context::TraceContext>,
}

/// The effects of a batch, for the store commit.
#[derive(Debug, Default)]
pub(crate) struct BatchOutput {
    pub(crate) messages: Vec<(InstanceId, Message)>,
    pub(crate) new_instances: Vec<(u64, NewInstance)>,
    pub(crate) operations: u64,
    /// Whether to keep each operation run in `ran` (for the worker's events and metrics).
    pub(crate) record: bool,
    /// The operations run, when `record` is set.
    pub(crate) ran: Vec<RanOperation>,
}

/// One entity operation run in a batch, as the worker reports it.
#[derive(Debug)]
pub(crate) struct RanOperation {
    pub(crate) operation: String,
    /// It failed (its state change was rolled back).
    pub(crate) failed: bool,
    /// A one-way signal (no reply).
    pub(crate) signal: bool,
}

impl BatchOutput {
    /// Sends `event` to an entity, creating it on demand.
    pub(crate) fn send_to_entity(&mut self, target: &EntityId, event: Event, now: Timestamp) {
        let id = target.instance_id();
        self.new_instances
            .push((u64::MAX, entity_instance(target, now)));
        self.messages.push((id, Message::new(event, None, now)));
    }
}

/// The system instance backing an entity, created on first use.
pub(crate) fn entity_instance(target: &EntityId, now: Timestamp) -> NewInstance {
    let mut n = NewInstance::new(
        target.instance_id(),
        target.name.clone(),
        "null".to_owned(),
        now,
    );
    n.reuse = IdReusePolicy::DedupeRunning;
    n
}

impl EntityRecord {
    /// Handles one inbox message: runs operations, grants and releases locks, and defers
    /// what must wait for the current lock holder.
    pub(crate) async fn handle(
        &mut self,
        id: &EntityId,
        run: &EntityFn,
        event: Event,
        now: Timestamp,
        out: &mut BatchOutput,
    ) {
        match event {
            Event::EntityUnlock { owner, execution }
                if self.lock.as_ref().is_some_and(|l| {
                    l.instance_id == owner && execution.is_none_or(|e| e == l.execution)
                }) =>
            {
                self.lock = None;
                // Deferred messages run now, in arrival order, until a new lock holds.
                let deferred: Vec<Event> = self.queue.drain(..).collect();
                for e in deferred {
                    Box::pin(self.handle(id, run, e, now, out)).await;
                }
            }
            ref e if self.must_wait(e) => self.queue.push_back(event),
            Event::EntityLockRequest {
                owner,
                entities,
                position,
            } => {
                self.lock = Some(owner.clone());
                let next = position as usize + 1;
                if let Some(next_entity) = entities.get(next).and_then(EntityId::from_instance_id) {
                    out.send_to_entity(
                        &next_entity,
                        Event::EntityLockRequest {
                            owner,
                            entities,
                            position: next as u32,
                        },
                        now,
                    );
                } else {
                    let execution = Some(owner.execution);
                    out.messages.push((
                        owner.instance_id,
                        Message::new(
                            Event::EntityLockGranted {
                                seq: owner.seq,
                                entities,
                            },
                            execution,
                            now,
                        ),
                    ));
                }
            }
            Event::EntityOperation {
                operation,
                input,
                reply_to,
                trace_context,
                ..
            } => {
                let op = Operation {
                    name: operation,
                    input,
                    reply_to,
                    trace_context,
                };
                self.run_operation(id, run, op, now, out).await;
            }
            _ => {}
        }
    }

    async fn run_operation(
        &mut self,
        id: &EntityId,
        run: &EntityFn,
        op: Operation,
        now: Timestamp,
        out: &mut BatchOutput,
    ) {
        let Operation {
            name: operation,
            input,
            reply_to,
            trace_context,
        } = op;
        out.operations += 1;
        let span = tracing::info_span!(
            "entity_operation",
            entity = %id,
            operation = %operation,
            otel.name = tracing::field::Empty,
        );
        // The parent of what the operation sends: its own span with the `opentelemetry`
        // feature, else nothing.
        #[cfg(feature = "opentelemetry")]
        let sent_trace =
            crate::otel::adopt_entity_operation(&span, id, &operation, trace_context.as_ref());
        #[cfg(not(feature = "opentelemetry"))]
        let sent_trace: Option<crate::trace_context::TraceContext> = {
            let _ = trace_context;
            None
        };
        let outcome = tracing::Instrument::instrument(
            run(
                EntityContext::new(id.clone()),
                self.state.clone(),
                operation.clone(),
                input,
            ),
            span.clone(),
        )
        .await;
        #[cfg(feature = "opentelemetry")]
        crate::otel::record_failure(&span, outcome.result.as_ref().err());
        drop(span);
        if let Err(f) = &outcome.result
            && reply_to.is_none()
        {
            tracing::warn!(entity = %id, operation, failure = %f, "signalled entity operation failed; its state change was rolled back");
        }
        self.state = outcome.state;
        for effect in outcome.effects {
            match effect {
                Effect::Signal {
                    target,
                    operation,
                    input,
                } => out.send_to_entity(
                    &target,
                    Event::EntityOperation {
                        operation,
                        input,
                        sender: Some(id.instance_id()),
                        reply_to: None,
                        trace_context: sent_trace.clone(),
                    },
                    now,
                ),
                Effect::StartOrchestration {
                    name,
                    instance_id,
                    input,
                } => {
                    let mut new = NewInstance::new(instance_id, name, input, now);
                    new.trace_context.clone_from(&sent_trace);
                    out.new_instances.push((u64::MAX, new));
                }
            }
        }
        if out.record {
            out.ran.push(RanOperation {
                operation,
                failed: outcome.result.is_err(),
                signal: reply_to.is_none(),
            });
        }
        if let Some(reply) = reply_to {
            let (result, failure) = match outcome.result {
                Ok(r) => (Some(r), None),
                Err(f) => (None, Some(f)),
            };
            out.messages.push((
                reply.instance_id,
                Message::new(
                    Event::EntityResponded {
                        seq: reply.seq,
                        result,
                        failure,
                    },
                    Some(reply.execution),
                    now,
                ),
            ));
        }
    }

    /// Operations and lock requests from anyone but the lock holder — the orchestration
    /// *execution* that holds it — wait.
    fn must_wait(&self, event: &Event) -> bool {
        let Some(lock) = &self.lock else {
            return false;
        };
        let holder = |id: &InstanceId, execution: u32| {
            *id == lock.instance_id && execution == lock.execution
        };
        match event {
            // A call names its execution; a signal only its instance.
            Event::EntityOperation {
                reply_to: Some(r), ..
            } => !holder(&r.instance_id, r.execution),
            Event::EntityOperation { sender, .. } => sender.as_ref() != Some(&lock.instance_id),
            Event::EntityLockRequest { owner, .. } => !holder(&owner.instance_id, owner.execution),
            _ => false,
        }
    }
}
