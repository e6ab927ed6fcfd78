//! The orchestration side of the function kinds: the [`Orchestrator`] trait the
//! `#[orchestrator]` macro implements. It lives with the [`OrchestrationContext`] its code
//! takes (each names the other: `ctx.call_sub_orchestrator::<O>`, `O::run(ctx, ..)`), and is
//! public as `durable_core::registry::Orchestrator` (and at the crate root).

use std::future::Future;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::OrchestrationContext;
use crate::error::{FailureDetails, ToFailure};
use crate::function::BoxFuture;
use crate::history::Payload;

/// A typed orchestrator: deterministic code that coordinates activities, timers, events and
/// sub-orchestrations, rebuilt by replay.
///
/// `#[orchestrator]` implements this on a marker type; it can also be implemented by hand.
///
/// # Examples
///
/// ```
/// use durable_core::prelude::*;
///
/// #[derive(Clone, Copy)]
/// struct Double;
///
/// impl Orchestrator for Double {
///     const NAME: &'static str = "double";
///     type Input = i64;
///     type Output = i64;
///     type Error = OrchestrationError;
///     async fn run(_ctx: OrchestrationContext, x: i64) -> Result<i64, OrchestrationError> {
///         Ok(x * 2)
///     }
/// }
/// # let _ = Double;
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an orchestrator",
    note = "put `#[orchestrator]` on an `async fn` to define one",
    note = "an orchestrator is named by its marker, the function's name; if a local variable has that \
            name, or the marker is not in scope, the call gets the variable (here a `{Self}`): rename the \
            variable or import the orchestrator"
)]
pub trait Orchestrator: Send + Sync + 'static {
    /// The durable name recorded in history.
    const NAME: &'static str;
    /// The version new instances are stamped with when the start does not name one
    /// (`#[orchestrator(version = "..")]`); `None` uses the worker's version.
    const VERSION: Option<&'static str> = None;
    /// Input type (serialized as JSON).
    type Input: Serialize + DeserializeOwned + Send + 'static;
    /// Output type (serialized as JSON).
    type Output: Serialize + DeserializeOwned + Send + 'static;
    /// Error type; recorded as [`FailureDetails`].
    type Error: ToFailure + Send + 'static;

    /// Runs the orchestration. The future must only await durable operations from `ctx`.
    fn run(
        ctx: OrchestrationContext,
        input: Self::Input,
    ) -> impl Future<Output = Result<Self::Output, Self::Error>> + Send + 'static;
}

/// A registered orchestrator with its types erased: the context and JSON input in, JSON
/// output or failure out.
pub(crate) type OrchestratorFn = dyn Fn(OrchestrationContext, Payload) -> BoxFuture<'static, Result<Payload, FailureDetails>>
    + Send
    + Sync;
