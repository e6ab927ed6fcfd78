//! Activity mocks and the call log: typed closures, scripted sequences, and the switchboard
//! that routes every activity execution to its mock or its real code.

use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use durable_core::history::Payload;
use durable_core::registry::ActivityHandler;
use durable_core::{Activity, ActivityContext, FailureDetails, InstanceId, ToFailure};

use crate::store::{Shared, lock};

/// One execution of an activity, real or mocked, as recorded by the harness.
///
/// # Examples
///
/// ```
/// use durable_core::prelude::*;
/// use durable_testing::TestEnv;
///
/// #[activity]
/// async fn ping(n: u32) -> Result<u32, ActivityError> { Ok(n) }
///
/// #[orchestrator]
/// async fn pinger(ctx: OrchestrationContext, n: u32) -> Result<u32, OrchestrationError> {
///     Ok(ctx.call(ping, n).await?)
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let env = TestEnv::builder().register(ping).register(pinger).start().unwrap();
/// let run = env.start(pinger, 7).await.unwrap();
/// env.wait(&run).await.unwrap();
/// let call = &env.all_calls()[0];
/// assert_eq!((call.name.as_str(), call.input.as_str(), call.mocked), ("ping", "7", false));
/// assert_eq!(&call.instance_id, run.id());
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ActivityCall {
    /// The activity's durable name.
    pub name: String,
    /// The orchestration that scheduled it.
    pub instance_id: InstanceId,
    /// The action's sequence number in that orchestration.
    pub seq: u64,
    /// The JSON input.
    pub input: Payload,
    /// `true` when a mock ran instead of the real code.
    pub mocked: bool,
}

#[derive(Debug, Clone)]
enum Step {
    Ok(Payload),
    Fail(FailureDetails),
    Hang,
}

/// A scripted sequence of results for one activity: each execution takes the next step,
/// and the last step repeats forever.
///
/// Steps are consumed per activity across all instances, in execution order. A
/// [`hang`](Self::hang) step never completes: its result never reaches the store — as if the
/// worker running it were cut off — so the activity's lease stays held until it expires
/// (the worker's `activity_lock`, 5 minutes by default), after which the engine, being
/// at-least-once, runs the activity again and takes the next step.
///
/// # Examples
///
/// ```
/// use durable_core::prelude::*;
/// use durable_testing::{Script, TestEnv};
///
/// #[activity]
/// async fn charge(_cents: u64) -> Result<String, ActivityError> {
///     unimplemented!("talks to the payment provider")
/// }
///
/// #[orchestrator]
/// async fn checkout(ctx: OrchestrationContext, cents: u64) -> Result<String, OrchestrationError> {
///     let policy = RetryPolicy::new(3, std::time::Duration::from_secs(10));
///     Ok(ctx.call_with_retry(charge, cents, policy).await?)
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let env = TestEnv::builder()
///     .register(checkout)
///     .script(charge, Script::of(charge).fail_times(2, ActivityError::new("gateway timeout")).ok("rcpt-1".into()))
///     .start()
///     .unwrap();
/// let run = env.start(checkout, 500).await.unwrap();
/// assert_eq!(env.wait(&run).await.unwrap(), "rcpt-1");
/// assert_eq!(env.calls(charge), [500, 500, 500]);
/// # }
/// ```
pub struct Script<A> {
    steps: Vec<Step>,
    _a: PhantomData<fn() -> A>,
}

impl<A> fmt::Debug for Script<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Script")
            .field("steps", &self.steps)
            .finish()
    }
}

impl<A> Clone for Script<A> {
    fn clone(&self) -> Self {
        Self {
            steps: self.steps.clone(),
            _a: PhantomData,
        }
    }
}

impl<A: Activity> Default for Script<A> {
    fn default() -> Self {
        Self::new()
    }
}

impl<A: Activity> Script<A> {
    /// An empty script (an execution with no step to take fails with `EmptyScript`).
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_testing::Script;
    ///
    /// #[activity]
    /// async fn lookup(_key: String) -> Result<u32, ActivityError> { Ok(0) }
    ///
    /// let script: Script<lookup> = Script::new().ok(1).ok(2);
    /// # let _ = script;
    /// ```
    pub fn new() -> Self {
        Self {
            steps: Vec::new(),
            _a: PhantomData,
        }
    }

    /// An empty script for `activity` (names the type, so no annotation is needed).
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_testing::Script;
    ///
    /// #[activity]
    /// async fn lookup(_key: String) -> Result<u32, ActivityError> { Ok(0) }
    ///
    /// let script = Script::of(lookup).ok(1);
    /// # let _ = script;
    /// ```
    pub fn of(activity: A) -> Self {
        let _ = activity;
        Self::new()
    }

    /// Then succeed once with `output`.
    ///
    /// # Panics
    ///
    /// If `output` does not serialize to JSON.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_testing::Script;
    ///
    /// #[activity]
    /// async fn lookup(_key: String) -> Result<u32, ActivityError> { Ok(0) }
    ///
    /// let always_seven = Script::of(lookup).ok(7);
    /// # let _ = always_seven;
    /// ```
    pub fn ok(mut self, output: A::Output) -> Self {
        let payload = serde_json::to_string(&output).unwrap_or_else(|e| {
            panic!(
                "the scripted output of `{}` does not serialize: {e}",
                A::NAME
            )
        });
        self.steps.push(Step::Ok(payload));
        self
    }

    /// Then fail once with `error` (the activity's own error type, [`ActivityError`] or any
    /// `std::error::Error`).
    ///
    /// [`ActivityError`]: durable_core::ActivityError
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_testing::Script;
    ///
    /// #[activity]
    /// async fn lookup(_key: String) -> Result<u32, ActivityError> { Ok(0) }
    ///
    /// let flaky = Script::of(lookup).fail(ActivityError::new("busy")).ok(7);
    /// # let _ = flaky;
    /// ```
    pub fn fail(self, error: impl ToFailure) -> Self {
        self.fail_times(1, error)
    }

    /// Then fail `n` times with `error`.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_testing::Script;
    ///
    /// #[activity]
    /// async fn lookup(_key: String) -> Result<u32, ActivityError> { Ok(0) }
    ///
    /// let recovers = Script::of(lookup).fail_times(3, ActivityError::new("busy")).ok(7);
    /// # let _ = recovers;
    /// ```
    pub fn fail_times(mut self, n: usize, error: impl ToFailure) -> Self {
        let failure = error.to_failure();
        self.steps
            .extend(std::iter::repeat_n(Step::Fail(failure), n));
        self
    }

    /// Then never complete. As the last step: never complete, on every delivery.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_testing::Script;
    ///
    /// #[activity]
    /// async fn lookup(_key: String) -> Result<u32, ActivityError> { Ok(0) }
    ///
    /// // Lost once (its lease expires and the engine runs it again), then answers.
    /// let lost_once = Script::of(lookup).hang().ok(7);
    /// # let _ = lost_once;
    /// ```
    pub fn hang(mut self) -> Self {
        self.steps.push(Step::Hang);
        self
    }

    pub(crate) fn into_handler(self, shared: &Arc<Shared>) -> ActivityHandler {
        let steps = Arc::new(self.steps);
        let next = Arc::new(AtomicUsize::new(0));
        let shared = Arc::clone(shared);
        Arc::new(move |ctx: ActivityContext, _input: Payload| {
            let i = next.fetch_add(1, Ordering::SeqCst);
            let step = steps.get(i).or(steps.last()).cloned();
            let shared = Arc::clone(&shared);
            Box::pin(async move {
                match step {
                    None => Err(FailureDetails::new(
                        "EmptyScript",
                        format!("the script mocking activity `{}` has no steps", ctx.name),
                    )),
                    Some(Step::Ok(out)) => Ok(out),
                    Some(Step::Fail(f)) => Err(f),
                    Some(Step::Hang) => {
                        // Lost on the way back: the worker moves on, the store never hears.
                        shared.lose(&ctx);
                        Err(FailureDetails::new(
                            "Lost",
                            format!("scripted hang of activity `{}`", ctx.name),
                        ))
                    }
                }
            })
        })
    }
}

/// A handler running a typed closure in place of activity `A`.
pub(crate) fn typed_mock<A, F>(f: F) -> ActivityHandler
where
    A: Activity,
    F: FnMut(A::Input) -> Result<A::Output, A::Error> + Send + 'static,
{
    let f = Arc::new(Mutex::new(f));
    Arc::new(move |_ctx: ActivityContext, input: Payload| {
        let f = Arc::clone(&f);
        Box::pin(async move {
            let input: A::Input = serde_json::from_str(&input).map_err(|e| {
                FailureDetails::new(
                    "PayloadDecodeError",
                    format!(
                        "input of mocked activity `{}` does not deserialize: {e}",
                        A::NAME
                    ),
                )
                .non_retriable()
            })?;
            let result = {
                let mut f = lock(&f);
                (*f)(input)
            };
            match result {
                Ok(out) => serde_json::to_string(&out).map_err(|e| {
                    FailureDetails::new(
                        "PayloadDecodeError",
                        format!(
                            "output of mocked activity `{}` does not serialize: {e}",
                            A::NAME
                        ),
                    )
                }),
                Err(e) => Err(e.to_failure()),
            }
        })
    })
}

/// The handler the harness registers under every activity name: records the call, applies
/// the simulation's failure injection, then runs the mock if one is set, else the real code.
pub(crate) fn switchboard(shared: Arc<Shared>, real: Option<ActivityHandler>) -> ActivityHandler {
    Arc::new(move |ctx: ActivityContext, input: Payload| {
        let shared = Arc::clone(&shared);
        let real = real.clone();
        Box::pin(async move {
            let mock = shared.mock(&ctx.name);
            let attempt = shared.record_call(&ctx, &input, mock.is_some());
            if let Some(sim) = &shared.sim {
                let key = (ctx.instance_id.as_str().to_owned(), ctx.seq);
                if sim.chance(sim.failure_rate, "fail", &key, attempt) {
                    shared.count_injected_failure();
                    return Err(FailureDetails::new(
                        "InjectedFailure",
                        format!(
                            "simulated failure of activity `{}` (seed {}, attempt {})",
                            ctx.name,
                            sim.seed,
                            attempt + 1
                        ),
                    ));
                }
            }
            match (mock, real) {
                (Some(mock), _) => mock(ctx, input).await,
                (None, Some(real)) => real(ctx, input).await,
                (None, None) => Err(FailureDetails::new(
                    "UnknownActivity",
                    format!("activity `{}` is neither registered nor mocked", ctx.name),
                )),
            }
        })
    })
}
