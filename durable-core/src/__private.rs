//! Items used only by code the macros generate. Not public API: may change at any time.

pub use crate::entity::{CallTarget, ClientTarget, SignalTarget};
pub use crate::registry::BoxFuture;

use crate::error::{FailureDetails, ToFailure};
use crate::history::Payload as Json;

/// Implemented for every type that can cross history as JSON.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a durable payload",
    note = "inputs and outputs of activities and orchestrators are stored as JSON: derive `Serialize` and `Deserialize` for `{Self}`"
)]
pub trait Payload: serde::Serialize + serde::de::DeserializeOwned + Send + 'static {}

impl<T: serde::Serialize + serde::de::DeserializeOwned + Send + 'static> Payload for T {}

/// The durable name of an `#[entity]` struct (the struct attribute implements it).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is missing `#[entity]` on its struct",
    note = "put `#[entity]` on the struct definition as well as on its `impl` block"
)]
pub trait EntityName {
    /// The entity type name.
    const NAME: &'static str;
}

/// Entity state must be serde and have an initial value.
#[diagnostic::on_unimplemented(
    message = "entity state `{Self}` must implement `Default` (or its impl block must define `fn initial() -> Self`) and serde",
    note = "derive `Default, Serialize, Deserialize` on the entity struct"
)]
pub trait EntityState: serde::Serialize + serde::de::DeserializeOwned + Send + 'static {}

impl<T: serde::Serialize + serde::de::DeserializeOwned + Send + 'static> EntityState for T {}

/// Decodes an entity operation's input (accepting the double-encoded form Durable
/// Functions clients send, see `crate::payload`).
pub fn decode_input<T: serde::de::DeserializeOwned>(
    operation: &str,
    input: &str,
) -> Result<T, FailureDetails> {
    crate::payload::decode_external(input).map_err(|e| {
        let mut f = FailureDetails::from_error(&e).non_retriable();
        f.message = format!("input of operation `{operation}`: {}", f.message);
        f
    })
}

/// Encodes an entity operation's output.
pub fn encode_output<T: serde::Serialize>(value: &T) -> Result<Json, FailureDetails> {
    crate::error::encode(value).map_err(|e| FailureDetails::from_error(&e))
}

/// Converts an operation's `Result` into the recorded form.
pub fn result_output<T: serde::Serialize, E: ToFailure>(
    r: Result<T, E>,
) -> Result<Json, FailureDetails> {
    match r {
        Ok(v) => encode_output(&v),
        Err(e) => Err(e.to_failure()),
    }
}

/// Encodes a client-side signal input.
pub fn encode_client<T: serde::Serialize + ?Sized>(value: &T) -> Result<Json, crate::ClientError> {
    Ok(crate::error::encode(value)?)
}

/// The failure for an operation name the entity does not have.
pub fn unknown_operation(entity: &str, operation: &str, known: &[&str]) -> FailureDetails {
    FailureDetails::new(
        "UnknownOperation",
        format!(
            "entity `{entity}` has no operation `{operation}`; it has: {}",
            known.join(", ")
        ),
    )
    .non_retriable()
}

/// The return type of an `#[activity]` or `#[orchestrator]` function, written as
/// `Result<T, E>` or through an alias (`type R<T> = Result<T, ActivityError>`): the macros
/// read the output and error types from here rather than from the tokens.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a `Result`",
    label = "expected `Result<T, E>` or an alias of it",
    note = "`#[activity]` and `#[orchestrator]` functions return `Result<T, E>`, e.g. `Result<Receipt, ActivityError>`, or an alias such as `type R<T> = Result<T, ActivityError>`"
)]
pub trait IntoResult {
    /// `T`.
    type Output;
    /// `E`.
    type Error;
    /// The value as a `Result`.
    fn into_result(self) -> Result<Self::Output, Self::Error>;
}

impl<T, E> IntoResult for Result<T, E> {
    type Output = T;
    type Error = E;
    fn into_result(self) -> Self {
        self
    }
}

/// An activity parameter of type `durable_core::State<T>`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not `durable_core::State<T>`",
    note = "`#[activity]` parameters of a type named `State<..>` receive the worker's shared state: use `durable_core::State<T>` (in the prelude), or rename your own type"
)]
pub trait StateParam {
    /// `T`.
    type Value;
    /// The parameter from the worker's value.
    fn from_state(state: crate::State<Self::Value>) -> Self;
}

impl<T> StateParam for crate::State<T> {
    type Value = T;
    fn from_state(state: Self) -> Self {
        state
    }
}

/// What a state value must be: shared across the worker's tasks and cloned for each run.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be shared state",
    label = "a state value must be `Clone + Send + Sync + 'static`",
    note = "each activity run gets a clone of the worker's value: wrap it in an `Arc` (and a `Mutex` if it needs `&mut`)"
)]
pub trait StateValue: Clone + Send + Sync + 'static {}

impl<T: Clone + Send + Sync + 'static> StateValue for T {}

/// The worker's value of type `T`, for a `State<T>` parameter of `activity`.
///
/// # Panics
///
/// When the context holds no `T`: the registry checks every state type before it runs an
/// activity (and the worker at start), so this is reached only by calling `Activity::run`
/// by hand with a context that lacks it.
pub fn state<T: StateValue>(ctx: &crate::ActivityContext, activity: &str) -> crate::State<T> {
    match ctx.state::<T>() {
        Some(value) => crate::State(value.clone()),
        None => panic!(
            "activity `{activity}` takes `State<{}>`, which its context lacks: give it with \
             `Worker::builder().state(..)`, or `ActivityContext::with_state(..)` in a test",
            std::any::type_name::<T>()
        ),
    }
}

/// The error of a transactional activity's `Activity::run`: it runs only in its store's
/// transaction (see `crate::transaction`).
pub fn transactional_outside_store(activity: &str) -> crate::ActivityError {
    crate::ActivityError::non_retriable(crate::transaction::outside_store(activity).message)
}

/// Records a transactional body's error as the failure it is.
pub fn to_failure<E: ToFailure>(e: &E) -> FailureDetails {
    e.to_failure()
}
