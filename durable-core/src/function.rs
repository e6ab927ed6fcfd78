//! The activity side of the function kinds: the [`Activity`] trait the `#[activity]` macro
//! implements, what one run gets ([`ActivityContext`], [`Cancellation`]), and [`BoxFuture`].
//!
//! It sits below the context, the entities and the registry, and imports none of them: the
//! orchestration side ([`Orchestrator`]) lives with the context its code takes
//! (`context::orchestrator`), and the registry, which maps names to both kinds, builds on the
//! two. Everything here is public as `durable_core::registry::*` (and at the crate root).
//!
//! [`Orchestrator`]: crate::Orchestrator

use std::future::Future;
use std::pin::Pin;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::ToFailure;
use crate::ids::InstanceId;
use crate::state::{StateType, States};

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A typed activity: a unit of real work (IO, side effects) run at least once.
///
/// `#[activity]` implements this on a marker type named after the function; it can also be
/// implemented by hand.
///
/// # Examples
///
/// ```
/// use durable_core::prelude::*;
///
/// #[derive(Clone, Copy)]
/// struct SayHello;
///
/// impl Activity for SayHello {
///     const NAME: &'static str = "say_hello";
///     type Input = String;
///     type Output = String;
///     type Error = ActivityError;
///     async fn run(&self, _ctx: ActivityContext, name: String) -> Result<String, ActivityError> {
///         Ok(format!("Hello {name}!"))
///     }
/// }
/// # let _ = SayHello;
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an activity",
    note = "put `#[activity]` on an `async fn` to define one",
    note = "an activity is named by its marker, the function's name (`ctx.call(charge, order)`); \
            if a local variable has that name, or the marker is not in scope, the call gets the variable \
            (here a `{Self}`): rename the variable or import the activity"
)]
pub trait Activity: Send + Sync + 'static {
    /// The durable name recorded in history.
    const NAME: &'static str;
    /// The types of the [`State`](crate::State) values the activity takes from its worker.
    /// [`WorkerBuilder::start`](crate::WorkerBuilder::start) fails with
    /// [`BuildError::MissingState`](crate::BuildError::MissingState) when one was not given. `#[activity]` fills it from the
    /// function's `State<T>` parameters; an activity written by hand lists what it reads
    /// with [`ActivityContext::state`]. Default: none.
    const STATES: &'static [StateType] = &[];
    /// `true` for a local activity (`#[activity(local)]`): wherever it is called with
    /// [`call`](crate::OrchestrationContext::call) or
    /// [`call_with`](crate::OrchestrationContext::call_with), it runs inside the worker
    /// during the orchestration's episode and its result is committed with that episode, as
    /// with [`call_local`](crate::OrchestrationContext::call_local). Default: `false`.
    ///
    /// A crash before the episode's commit runs the activity again in the next episode
    /// (at-least-once, as for every activity), so keep local activities short and
    /// idempotent.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    ///
    /// #[activity(local)]
    /// async fn normalize(email: String) -> Result<String, ActivityError> {
    ///     Ok(email.trim().to_lowercase())
    /// }
    ///
    /// assert!(<normalize as Activity>::LOCAL);
    /// ```
    const LOCAL: bool = false;
    /// Input type (serialized as JSON).
    type Input: Serialize + DeserializeOwned + Send + 'static;
    /// Output type (serialized as JSON).
    type Output: Serialize + DeserializeOwned + Send + 'static;
    /// Error type; recorded as [`FailureDetails`](crate::FailureDetails).
    type Error: ToFailure + Send + 'static;

    /// Runs the activity.
    fn run(
        &self,
        ctx: ActivityContext,
        input: Self::Input,
    ) -> impl Future<Output = Result<Self::Output, Self::Error>> + Send;
}

/// What an activity can learn about the call it serves.
///
/// Take it as a parameter of an `#[activity]` function (usually the first) to read the
/// calling instance, the attempt number under the caller's retry policy, and whether the activity
/// should stop early.
///
/// # Examples
///
/// ```
/// use durable_core::prelude::*;
///
/// #[activity]
/// async fn transcode(ctx: ActivityContext, file: String) -> Result<String, ActivityError> {
///     for chunk in 0..100 {
///         if ctx.is_cancelled() {
///             // The worker is shutting down: stop; the task runs again elsewhere.
///             return Err(ActivityError::new(format!("cancelled at chunk {chunk}")));
///         }
///         // ... work on the chunk ...
///     }
///     Ok(format!("{file} (attempt {})", ctx.attempt))
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let out = transcode::run(ActivityContext::for_test("order-7"), "a.mov".into()).await;
/// assert_eq!(out.unwrap(), "a.mov (attempt 1)");
/// # }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ActivityContext {
    /// The orchestration instance that scheduled the activity.
    pub instance_id: InstanceId,
    /// The activity's durable name.
    pub name: String,
    /// The action sequence number in the orchestration.
    pub seq: u64,
    /// 1 for the first call; 2, 3, … for the retries of a `call_with_retry`. A task that
    /// runs again after a crash keeps its number (activities are at least once); one run
    /// again by a rewind counts as 1.
    pub attempt: u32,
    /// Fires when the activity should stop early.
    pub cancellation: Cancellation,
    /// The worker's state values (see [`ActivityContext::state`]).
    pub(crate) states: States,
    /// Heartbeats of this run and the last details of the previous one.
    pub(crate) heartbeat: crate::heartbeat::Heartbeat,
    /// The worker's payload limit (`Limits::max_payload_bytes`): the largest output it
    /// records. Unbounded outside a worker.
    pub(crate) max_payload_bytes: usize,
}

impl ActivityContext {
    pub(crate) fn new(
        instance_id: InstanceId,
        name: String,
        seq: u64,
        attempt: u32,
        cancellation: Cancellation,
        heartbeat: crate::heartbeat::Heartbeat,
    ) -> Self {
        Self {
            instance_id,
            name,
            seq,
            attempt,
            cancellation,
            states: States::default(),
            heartbeat,
            max_payload_bytes: usize::MAX,
        }
    }

    /// A context for calling an activity directly (in unit tests): attempt 1, never
    /// cancelled.
    pub fn for_test(instance_id: &str) -> Self {
        Self {
            instance_id: InstanceId::from_trusted(instance_id.to_owned()),
            name: String::new(),
            seq: 0,
            attempt: 1,
            cancellation: Cancellation::never(),
            states: States::default(),
            heartbeat: crate::heartbeat::Heartbeat::default(),
            max_payload_bytes: usize::MAX,
        }
    }

    /// `true` once the activity should stop early (see [`Cancellation`]).
    pub fn is_cancelled(&self) -> bool {
        self.cancellation.is_cancelled()
    }
}

/// Tells a running activity to stop early: the worker is shutting down, the run exceeded
/// its timeout or heartbeat timeout ([`CallOptions`](crate::CallOptions)), or the activity's
/// lease was lost (another worker took the task over after this one was cut off from the
/// store). A failure returned after a shutdown's cancellation is not recorded: the task is
/// put back and runs again; a result returned anyway is recorded as usual. At a timeout the
/// worker does not wait: it records the timeout and drops the activity's future, so only
/// work the activity handed elsewhere (a spawned task, a blocking thread) sees the
/// cancellation there.
///
/// It is a tokio-util [`CancellationToken`](tokio_util::sync::CancellationToken) underneath:
/// [`token`](Self::token) hands one to libraries that take it, and a token converts into a
/// `Cancellation` (to cancel an activity in a unit test, say).
///
/// # Examples
///
/// ```
/// use durable_core::registry::Cancellation;
/// use tokio_util::sync::CancellationToken;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let c = Cancellation::never();
/// assert!(!c.is_cancelled());
///
/// // Cancelling from a test: build the activity's cancellation from a token you hold.
/// let stop = CancellationToken::new();
/// let c = Cancellation::from(stop.clone());
/// let spawned = c.token(); // e.g. for a task the activity spawns
/// stop.cancel();
/// assert!(c.is_cancelled() && spawned.is_cancelled());
/// c.cancelled().await;
/// // In an activity: `tokio::select! { r = work() => r, () = ctx.cancellation.cancelled() => ... }`
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Cancellation(tokio_util::sync::CancellationToken);

impl Cancellation {
    /// A cancellation that never fires.
    pub fn never() -> Self {
        Self(tokio_util::sync::CancellationToken::new())
    }

    /// The worker's handle (to fire it) and the activity's.
    pub(crate) fn new() -> (tokio_util::sync::CancellationToken, Self) {
        let token = tokio_util::sync::CancellationToken::new();
        (token.clone(), Self(token))
    }

    /// `true` once cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Completes when cancelled (never, if it never is).
    pub async fn cancelled(&self) {
        self.0.cancelled().await;
    }

    /// A [`CancellationToken`](tokio_util::sync::CancellationToken) cancelled with this
    /// cancellation, for code that takes one (a spawned task, a client library). It is a
    /// child token: cancelling it stops only what holds it, never the activity's own
    /// cancellation.
    pub fn token(&self) -> tokio_util::sync::CancellationToken {
        self.0.child_token()
    }
}

impl From<tokio_util::sync::CancellationToken> for Cancellation {
    /// A cancellation that fires when `token` is cancelled.
    fn from(token: tokio_util::sync::CancellationToken) -> Self {
        Self(token)
    }
}
