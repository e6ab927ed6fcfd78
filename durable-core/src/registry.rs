//! The registry that maps durable names to code, and the traits the macros implement
//! ([`Activity`], [`Orchestrator`], with [`Entity`](crate::entity::Entity) in `entity`).
//!
//! The registry sits above the function kinds it stores, and none of them imports it:
//! [`Activity`] and its [`ActivityContext`] are defined in a module below the context,
//! [`Orchestrator`] in `context` (the trait and the
//! [`OrchestrationContext`](crate::OrchestrationContext) name each other), entities in
//! `entity`. The activity and orchestrator items are re-exported here, their public home.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

pub use crate::context::orchestrator::Orchestrator;
pub(crate) use crate::context::orchestrator::OrchestratorFn;
use crate::error::{BuildError, FailureDetails, PayloadDecodeError, ToFailure, decode, encode};
pub use crate::function::{Activity, ActivityContext, BoxFuture, Cancellation};
use crate::history::Payload;
use crate::state::{StateType, States};

/// Something that can be registered on a worker: an activity or orchestrator marker.
///
/// The macros implement it; for hand-written types use [`ActivityRegistration`] /
/// [`OrchestratorRegistration`] or the builder's `activity` / `orchestrator` methods.
pub trait Registration {
    /// Adds itself to the registry.
    fn register_into(self, registry: &mut Registry);
}

/// Registers an [`Activity`] value.
#[derive(Debug)]
pub struct ActivityRegistration<A>(pub A);

impl<A: Activity> Registration for ActivityRegistration<A> {
    fn register_into(self, registry: &mut Registry) {
        registry.add_activity(self.0);
    }
}

/// Registers an [`Entity`](crate::entity::Entity) type.
pub struct EntityRegistration<E>(std::marker::PhantomData<fn() -> E>);

impl<E> EntityRegistration<E> {
    /// A registration of `E`.
    pub fn new() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<E> Default for EntityRegistration<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E> fmt::Debug for EntityRegistration<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EntityRegistration")
    }
}

impl<E: crate::entity::Entity> Registration for EntityRegistration<E> {
    fn register_into(self, registry: &mut Registry) {
        registry.add_entity::<E>();
    }
}

/// Registers an [`Orchestrator`] type.
#[derive(Debug)]
pub struct OrchestratorRegistration<O>(pub O);

impl<O: Orchestrator> Registration for OrchestratorRegistration<O> {
    fn register_into(self, registry: &mut Registry) {
        registry.add_orchestrator::<O>();
    }
}

pub(crate) type ActivityFn = dyn Fn(ActivityContext, Payload) -> BoxFuture<'static, Result<Payload, FailureDetails>>
    + Send
    + Sync;

/// A registered activity with its types erased: JSON input in, JSON output or failure out
/// (see [`Registry::activity_handler`]).
pub type ActivityHandler = Arc<
    dyn Fn(ActivityContext, Payload) -> BoxFuture<'static, Result<Payload, FailureDetails>>
        + Send
        + Sync,
>;
type InputCheckFn = dyn Fn(&str) -> Result<(), PayloadDecodeError> + Send + Sync;

/// Name → code for activities and orchestrators.
#[derive(Default, Clone)]
pub struct Registry {
    activities: HashMap<Arc<str>, Arc<ActivityFn>>,
    orchestrators: HashMap<String, OrchestratorEntry>,
    entities: HashMap<String, Arc<crate::entity::EntityFn>>,
    /// The state types each activity takes (activities taking none are absent).
    states: BTreeMap<String, Vec<StateType>>,
    duplicates: Vec<(&'static str, String)>,
}

#[derive(Clone)]
pub(crate) struct OrchestratorEntry {
    /// The orchestrator's `NAME` (a metrics label without copying).
    pub(crate) name: &'static str,
    pub(crate) run: Arc<OrchestratorFn>,
    pub(crate) check_input: Arc<InputCheckFn>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("activities", &self.activities.keys().collect::<Vec<_>>())
            .field(
                "orchestrators",
                &self.orchestrators.keys().collect::<Vec<_>>(),
            )
            .field("entities", &self.entities.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The type-erased handler running `activity`: decodes the input, checks the states it
/// takes, runs it and encodes its output or failure.
pub(crate) fn handler_of<A: Activity>(activity: A) -> ActivityHandler {
    let activity = Arc::new(activity);
    Arc::new(move |ctx: ActivityContext, input: Payload| {
        let activity = Arc::clone(&activity);
        Box::pin(async move {
            if let Some(missing) = ctx.missing_state::<A>() {
                // `start()` checks this; only a registry changed behind its back gets here.
                return Err(FailureDetails::new(
                    "MissingState",
                    format!(
                        "activity `{}` takes `State<{}>`, which this worker was not given",
                        A::NAME,
                        missing.type_name()
                    ),
                )
                .non_retriable());
            }
            let input: A::Input =
                decode(&input).map_err(|e| FailureDetails::from_error(&e).non_retriable())?;
            match activity.run(ctx, input).await {
                Ok(out) => encode(&out).map_err(|e| FailureDetails::from_error(&e)),
                Err(e) => Err(e.to_failure()),
            }
        })
    })
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers an activity under `A::NAME`, with the state types it takes
    /// ([`Activity::STATES`]).
    pub fn add_activity<A: Activity>(&mut self, activity: A) {
        self.insert_activity(A::NAME, handler_of(activity));
        self.set_activity_states(A::NAME, A::STATES.iter().copied());
    }

    /// Registers an activity from a closure over raw JSON payloads (used by mocks). It takes
    /// no state unless [`set_activity_states`](Self::set_activity_states) says otherwise.
    pub fn add_activity_raw(
        &mut self,
        name: &str,
        f: impl Fn(ActivityContext, Payload) -> BoxFuture<'static, Result<Payload, FailureDetails>>
        + Send
        + Sync
        + 'static,
    ) {
        self.insert_activity(name, Arc::new(f));
        self.states.remove(name);
    }

    /// Replaces (or adds) the activity registered under `name`. The state types recorded for
    /// `name` stay (the replacement usually wraps the handler it replaces, see
    /// [`activity_handler`](Self::activity_handler)); a replacement that needs none, such as
    /// a mock, says so with [`set_activity_states`](Self::set_activity_states).
    pub fn replace_activity_raw(
        &mut self,
        name: &str,
        f: impl Fn(ActivityContext, Payload) -> BoxFuture<'static, Result<Payload, FailureDetails>>
        + Send
        + Sync
        + 'static,
    ) {
        self.activities.insert(Arc::from(name), Arc::new(f));
    }

    /// The names of the registered activities, sorted.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::Registry;
    ///
    /// let mut registry = Registry::new();
    /// registry.add_activity_raw("b", |_, input| Box::pin(async move { Ok(input) }));
    /// registry.add_activity_raw("a", |_, input| Box::pin(async move { Ok(input) }));
    /// assert_eq!(registry.activity_names(), ["a", "b"]);
    /// ```
    pub fn activity_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.activities.keys().map(ToString::to_string).collect();
        names.sort_unstable();
        names
    }

    /// The type-erased handler registered under `name` (JSON input in, JSON output or
    /// failure out), so that a test harness or middleware can wrap it and put the wrapper
    /// back with [`replace_activity_raw`](Self::replace_activity_raw).
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::{ActivityContext, Registry};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let mut registry = Registry::new();
    /// registry.add_activity_raw("echo", |_, input| Box::pin(async move { Ok(input) }));
    /// let real = registry.activity_handler("echo").unwrap();
    /// registry.replace_activity_raw("echo", move |ctx, input| {
    ///     let real = real.clone();
    ///     Box::pin(async move { real(ctx, format!("[{input}]")).await })
    /// });
    /// let wrapped = registry.activity_handler("echo").unwrap();
    /// assert_eq!(wrapped(ActivityContext::for_test("i"), "1".into()).await.unwrap(), "[1]");
    /// assert!(registry.activity_handler("missing").is_none());
    /// # }
    /// ```
    pub fn activity_handler(&self, name: &str) -> Option<ActivityHandler> {
        self.activities.get(name).cloned()
    }

    /// The types of the [`State`](crate::State) values the activity registered under `name`
    /// takes (empty for an unknown name).
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_core::{Registry, StateType};
    ///
    /// #[derive(Clone)]
    /// struct Config;
    ///
    /// #[activity]
    /// async fn configured(State(_cfg): State<Config>, _x: ()) -> Result<(), ActivityError> { Ok(()) }
    ///
    /// let mut registry = Registry::new();
    /// registry.register(configured);
    /// assert_eq!(registry.activity_states("configured"), [StateType::of::<Config>()]);
    /// // A replacement that needs no state (a stub) says so:
    /// registry.replace_activity_raw("configured", |_, input| Box::pin(async move { Ok(input) }));
    /// registry.set_activity_states("configured", []);
    /// assert!(registry.activity_states("configured").is_empty());
    /// ```
    pub fn activity_states(&self, name: &str) -> &[StateType] {
        self.states.get(name).map_or(&[], Vec::as_slice)
    }

    /// Sets the state types the activity registered under `name` takes; the worker checks
    /// at start that it holds a value of each.
    pub fn set_activity_states(&mut self, name: &str, states: impl IntoIterator<Item = StateType>) {
        let states: Vec<StateType> = states.into_iter().collect();
        if states.is_empty() {
            self.states.remove(name);
        } else {
            self.states.insert(name.to_owned(), states);
        }
    }

    /// The first registered activity (by name) taking a state type `states` lacks.
    pub(crate) fn missing_state(&self, states: &States) -> Option<(String, StateType)> {
        self.states.iter().find_map(|(name, types)| {
            types
                .iter()
                .find(|t| !states.contains(t))
                .map(|t| (name.clone(), *t))
        })
    }

    fn insert_activity(&mut self, name: &str, f: Arc<ActivityFn>) {
        if self.activities.insert(Arc::from(name), f).is_some() {
            self.duplicates.push(("activity", name.to_owned()));
        }
    }

    /// Registers an orchestrator under `O::NAME`.
    pub fn add_orchestrator<O: Orchestrator>(&mut self) {
        let run: Arc<OrchestratorFn> = Arc::new(|ctx, input: Payload| {
            Box::pin(async move {
                let input: O::Input = crate::payload::decode_external(&input)
                    .map_err(|e| FailureDetails::from_error(&e).non_retriable())?;
                match O::run(ctx, input).await {
                    Ok(out) => encode(&out).map_err(|e| FailureDetails::from_error(&e)),
                    Err(e) => Err(e.to_failure()),
                }
            })
        });
        let check_input: Arc<InputCheckFn> =
            Arc::new(|text| crate::payload::decode_external::<O::Input>(text).map(drop));
        let entry = OrchestratorEntry {
            name: O::NAME,
            run,
            check_input,
        };
        if self
            .orchestrators
            .insert(O::NAME.to_owned(), entry)
            .is_some()
        {
            self.duplicates.push(("orchestrator", O::NAME.to_owned()));
        }
    }

    /// Registers an entity type under `E::NAME` (case-insensitive).
    pub fn add_entity<E: crate::entity::Entity>(&mut self) {
        let name = E::NAME.to_lowercase();
        if self
            .entities
            .insert(name.clone(), crate::entity::runner::<E>())
            .is_some()
        {
            self.duplicates.push(("entity", name));
        }
    }

    pub(crate) fn entity(&self, name: &str) -> Option<Arc<crate::entity::EntityFn>> {
        self.entities.get(name).cloned()
    }

    /// `true` if an entity of this name is registered.
    pub fn has_entity(&self, name: &str) -> bool {
        self.entities.contains_key(&name.to_lowercase())
    }

    /// Adds anything implementing [`Registration`].
    pub fn register(&mut self, r: impl Registration) {
        r.register_into(self);
    }

    /// `true` if an orchestrator of this name is registered.
    pub fn has_orchestrator(&self, name: &str) -> bool {
        self.orchestrators.contains_key(name)
    }

    /// `true` if an activity of this name is registered.
    pub fn has_activity(&self, name: &str) -> bool {
        self.activities.contains_key(name)
    }

    /// Checks that `input` deserializes as the named orchestrator's input type, as the
    /// orchestration will decode it: directly, or — when that fails and `input` is a JSON
    /// string — from the string's content (the double encoding Durable Functions clients
    /// send). `Ok(false)` means the name is unknown.
    pub fn check_orchestrator_input(
        &self,
        name: &str,
        input: &str,
    ) -> Result<bool, PayloadDecodeError> {
        match self.orchestrators.get(name) {
            Some(e) => (e.check_input)(input).map(|()| true),
            None => Ok(false),
        }
    }

    pub(crate) fn orchestrator(&self, name: &str) -> Option<&OrchestratorEntry> {
        self.orchestrators.get(name)
    }

    /// The activity registered under `name`, with the registry's copy of the name.
    pub(crate) fn activity(&self, name: &str) -> Option<(&Arc<str>, &Arc<ActivityFn>)> {
        self.activities.get_key_value(name)
    }

    pub(crate) fn validate(&self) -> Result<(), BuildError> {
        match self.duplicates.first() {
            Some((kind, name)) => Err(BuildError::DuplicateName {
                kind,
                name: name.clone(),
            }),
            None => Ok(()),
        }
    }
}
