//! Shared state for activities: values the worker holds (a connection pool, an HTTP client,
//! configuration) and hands to every activity that asks for them with a [`State<T>`]
//! parameter.
//!
//! The worker keeps one value per type ([`WorkerBuilder::state`](crate::WorkerBuilder::state));
//! `#[activity]` records the types an activity takes ([`Activity::STATES`]), and
//! [`WorkerBuilder::start`](crate::WorkerBuilder::start) refuses to start when one is missing
//! ([`crate::BuildError::MissingState`]). At run time each `State<T>`
//! parameter receives a clone of the worker's `T` — keep `T` cheap to clone (`Arc` inside, as
//! pools and clients are).
//!
//! Orchestrations never see state: their code is replayed from history, and a value from
//! outside history would make the replay differ. An orchestration calls an activity through
//! its zero-sized marker (`ctx.call(charge, order)`), typed by the activity's input and
//! output only; the worker running the activity supplies the state.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use crate::error::BuildError;
use crate::function::{Activity, ActivityContext};

/// A value shared by the worker with its activities: take it as a parameter of an
/// `#[activity]` function, usually destructured (`State(pool): State<PgPool>`).
///
/// The worker holds one value of each type, given with
/// [`WorkerBuilder::state`](crate::WorkerBuilder::state) (or
/// `TestEnv::builder().state(..)`); each run of the activity gets a clone. An activity may
/// take several `State` parameters of different types, in any position, next to its input
/// and its optional [`ActivityContext`]. Calling the body directly (`charge::run(..)`, in unit
/// tests) passes the state values as ordinary arguments, in declaration order.
///
/// Orchestrations cannot take state (their code is replayed from history); they call the
/// activity through its marker, and the worker supplies the state.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use durable_core::prelude::*;
///
/// /// Stands in for a connection pool: cheap to clone, shared by every activity run.
/// #[derive(Clone, Default)]
/// struct Ledger(Arc<std::sync::Mutex<Vec<u64>>>);
///
/// #[derive(Clone)]
/// struct Currency(&'static str);
///
/// #[activity]
/// async fn charge(
///     State(ledger): State<Ledger>,
///     State(currency): State<Currency>,
///     cents: u64,
/// ) -> Result<String, ActivityError> {
///     ledger.0.lock().unwrap().push(cents);
///     Ok(format!("{cents} {}", currency.0))
/// }
///
/// #[orchestrator]
/// async fn checkout(ctx: OrchestrationContext, cents: u64) -> Result<String, OrchestrationError> {
///     Ok(ctx.call(charge, cents).await?) // no state here: the marker is all it takes
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let ledger = Ledger::default();
/// let worker = Worker::builder()
///     .store(MemoryStore::new())
///     .state(ledger.clone())
///     .state(Currency("EUR"))
///     .register(charge)
///     .register(checkout)
///     .start()?;
/// let run = checkout::start(&worker.client(), 250).await?;
/// assert_eq!(run.wait().await?, "250 EUR");
/// assert_eq!(*ledger.0.lock().unwrap(), [250]);
///
/// // In a unit test, the body takes the state as ordinary arguments:
/// let receipt = charge::run(State(Ledger::default()), State(Currency("USD")), 5).await.unwrap();
/// assert_eq!(receipt, "5 USD");
/// # worker.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct State<T>(pub T);

impl<T> State<T> {
    /// The value.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> Deref for State<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> DerefMut for State<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

/// The type of a state value an activity takes: what [`Activity::STATES`] lists and
/// [`BuildError::MissingState`] names.
///
/// # Examples
///
/// ```
/// use durable_core::StateType;
///
/// let t = StateType::of::<String>();
/// assert!(t.type_name().ends_with("String"));
/// assert_eq!(t, StateType::of::<String>());
/// assert_ne!(t, StateType::of::<u32>());
/// ```
#[derive(Clone, Copy)]
pub struct StateType {
    id: fn() -> TypeId,
    name: fn() -> &'static str,
}

impl StateType {
    /// The state type `T`.
    pub const fn of<T: ?Sized + 'static>() -> Self {
        Self {
            id: TypeId::of::<T>,
            name: std::any::type_name::<T>,
        }
    }

    /// The type's [`TypeId`].
    pub fn type_id(&self) -> TypeId {
        (self.id)()
    }

    /// The type's name, as [`std::any::type_name`] spells it.
    pub fn type_name(&self) -> &'static str {
        (self.name)()
    }
}

impl PartialEq for StateType {
    fn eq(&self, other: &Self) -> bool {
        self.type_id() == other.type_id()
    }
}

impl Eq for StateType {}

impl fmt::Debug for StateType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StateType({})", self.type_name())
    }
}

#[derive(Clone)]
struct Entry {
    name: &'static str,
    value: Arc<dyn Any + Send + Sync>,
}

/// State values keyed by type, one per type: what a worker hands its activities.
///
/// [`WorkerBuilder::state`](crate::WorkerBuilder::state) fills the worker's set one value at a
/// time; build a `States` to hand the same values to several builders (a worker and a test
/// harness, or a worker restarted in a test) with
/// [`WorkerBuilder::states`](crate::WorkerBuilder::states). Cloning is cheap (the values
/// are shared).
///
/// # Examples
///
/// ```
/// use durable_core::{StateType, States};
///
/// let mut states = States::new();
/// states.insert(String::from("https://api.example"));
/// states.insert(3_u32);
/// assert_eq!(states.get::<u32>(), Some(&3));
/// assert!(states.contains(&StateType::of::<String>()));
/// assert!(states.get::<i64>().is_none());
/// states.insert(4_u32); // replaces the earlier `u32`
/// assert_eq!((states.get::<u32>(), states.len()), (Some(&4), 2));
/// ```
#[derive(Clone, Default)]
pub struct States {
    map: Arc<HashMap<TypeId, Entry>>,
}

impl States {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `value`, replacing a value of the same type.
    pub fn insert<T: Clone + Send + Sync + 'static>(&mut self, value: T) {
        let entry = Entry {
            name: std::any::type_name::<T>(),
            value: Arc::new(value),
        };
        Arc::make_mut(&mut self.map).insert(TypeId::of::<T>(), entry);
    }

    /// The value of type `T`, if there is one.
    pub fn get<T: 'static>(&self) -> Option<&T> {
        self.map
            .get(&TypeId::of::<T>())
            .and_then(|e| e.value.downcast_ref())
    }

    /// `true` if there is a value of type `ty`.
    pub fn contains(&self, ty: &StateType) -> bool {
        self.map.contains_key(&ty.type_id())
    }

    /// The number of values.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// `true` without values.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Adds every value of `other` (replacing values of the same types); returns the names
    /// of the types both held.
    fn merge(&mut self, other: &States) -> Vec<&'static str> {
        let mut both = Vec::new();
        if other.is_empty() {
            return both;
        }
        let map = Arc::make_mut(&mut self.map);
        for (id, entry) in other.map.iter() {
            if map.insert(*id, entry.clone()).is_some() {
                both.push(entry.name);
            }
        }
        both
    }
}

impl fmt::Debug for States {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&str> = self.map.values().map(|e| e.name).collect();
        names.sort_unstable();
        f.debug_set().entries(names).finish()
    }
}

impl ActivityContext {
    /// The worker's state value of type `T` (see [`State`]), for activities implemented by
    /// hand: list `T` in [`Activity::STATES`] so that the worker checks it is there at start.
    /// `#[activity]` functions take a [`State<T>`] parameter instead.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_core::StateType;
    ///
    /// #[derive(Clone)]
    /// struct Greeting(&'static str);
    ///
    /// #[derive(Clone, Copy)]
    /// struct Greet;
    /// impl Activity for Greet {
    ///     const NAME: &'static str = "greet";
    ///     const STATES: &'static [StateType] = &[StateType::of::<Greeting>()];
    ///     type Input = String;
    ///     type Output = String;
    ///     type Error = ActivityError;
    ///     async fn run(&self, ctx: ActivityContext, name: String) -> Result<String, ActivityError> {
    ///         let greeting = ctx.state::<Greeting>().ok_or_else(|| ActivityError::new("no greeting"))?;
    ///         Ok(format!("{} {name}", greeting.0))
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let ctx = ActivityContext::for_test("i-1").with_state(Greeting("Hej"));
    /// assert_eq!(Greet.run(ctx, "Ada".into()).await.unwrap(), "Hej Ada");
    /// # }
    /// ```
    pub fn state<T: 'static>(&self) -> Option<&T> {
        self.states.get()
    }

    /// This context with `value` as its state of type `T`: for calling an activity's
    /// [`Activity::run`] directly in a test.
    ///
    /// # Examples
    ///
    /// See [`state`](Self::state).
    pub fn with_state<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.states.insert(value);
        self
    }

    pub(crate) fn with_states(mut self, states: &States) -> Self {
        self.states = states.clone();
        self
    }

    /// The first of `A`'s state types this context lacks.
    pub(crate) fn missing_state<A: Activity>(&self) -> Option<StateType> {
        A::STATES.iter().find(|t| !self.states.contains(t)).copied()
    }
}

/// The state given to a builder, and the types given twice.
#[derive(Debug, Default)]
pub(crate) struct StateSet {
    states: States,
    twice: Vec<&'static str>,
}

impl StateSet {
    pub(crate) fn insert<T: Clone + Send + Sync + 'static>(&mut self, value: T) {
        if self.states.get::<T>().is_some() {
            self.twice.push(std::any::type_name::<T>());
        }
        self.states.insert(value);
    }

    pub(crate) fn extend(&mut self, states: &States) {
        let twice = self.states.merge(states);
        self.twice.extend(twice);
    }

    /// The state, once checked: no type given twice, and every type a registered activity
    /// takes is there (`missing` names an activity taking a type the given states lack:
    /// [`Registry::missing_state`](crate::Registry)).
    pub(crate) fn finish(
        self,
        missing: impl FnOnce(&States) -> Option<(String, StateType)>,
    ) -> Result<States, BuildError> {
        if let Some(type_name) = self.twice.first() {
            return Err(BuildError::DuplicateState { type_name });
        }
        if let Some((activity, ty)) = missing(&self.states) {
            return Err(BuildError::MissingState {
                activity,
                type_name: ty.type_name(),
            });
        }
        Ok(self.states)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone)]
    struct Pool(u8);

    #[test]
    fn a_set_reports_types_given_twice_and_keeps_the_last_value() {
        let mut set = StateSet::default();
        set.insert(Pool(1));
        set.insert(7_u64);
        assert!(set.twice.is_empty());
        set.insert(Pool(2));
        let mut more = States::new();
        more.insert(8_u64);
        more.insert("cfg");
        set.extend(&more);
        assert_eq!(
            set.twice,
            [std::any::type_name::<Pool>(), std::any::type_name::<u64>()]
        );
        assert_eq!(set.states.get::<Pool>().map(|p| p.0), Some(2));
        assert_eq!(set.states.get::<u64>(), Some(&8));
        assert_eq!(set.states.len(), 3);
        assert_eq!(
            set.finish(|_| None).err(),
            Some(BuildError::DuplicateState {
                type_name: std::any::type_name::<Pool>()
            })
        );
    }

    #[test]
    fn clones_share_values_and_inserting_into_a_clone_leaves_the_original() {
        let mut a = States::new();
        a.insert(Pool(1));
        let mut b = a.clone();
        b.insert(Pool(2));
        assert_eq!(a.get::<Pool>().map(|p| p.0), Some(1));
        assert_eq!(b.get::<Pool>().map(|p| p.0), Some(2));
        assert_eq!(
            format!("{a:?}"),
            format!("{{{:?}}}", std::any::type_name::<Pool>())
        );
    }
}
