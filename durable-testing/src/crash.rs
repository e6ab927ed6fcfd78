//! Crash injection: run a scenario once without crashes, then again with a crash after every
//! store commit, and check that the outcome never changes.

use std::fmt;
use std::future::Future;

use crate::env::{TestEnv, TestEnvBuilder, run_caught};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// One run per commit of the crash-free run.
    Each,
    /// One run, crashing after this commit.
    After(u64),
    /// One run, crashing after every commit.
    Every,
}

/// Runs a scenario crash-free, then under simulated crashes, and asserts that the outcome
/// is the same every time.
///
/// A crash happens right after a store commit (an episode commit or an activity
/// completion): the worker stops dead, a new one starts on the same in-memory store, and the
/// clock moves past the crashed worker's leases. By default there is one run per commit of
/// the crash-free run, crashing after commit 1, then after commit 2, and so on.
/// Activities may run again after a crash (they are at-least-once); the report counts the
/// re-runs.
///
/// The scenario builds its outcome — anything `PartialEq + Debug`, typically the output —
/// from a fresh env each run. Drive it with the env ([`TestEnv::wait`],
/// [`TestEnv::run_until_idle`], …) and keep outcomes independent of virtual time (a crash
/// moves the clock past the lost leases: 5 minutes with the default `activity_lock`).
///
/// # Examples
///
/// ```
/// use durable_core::prelude::*;
/// use durable_testing::{CrashTest, TestEnv};
///
/// #[activity]
/// async fn add(pair: (u64, u64)) -> Result<u64, ActivityError> { Ok(pair.0 + pair.1) }
///
/// #[orchestrator]
/// async fn fib(ctx: OrchestrationContext, n: u32) -> Result<u64, OrchestrationError> {
///     let (mut a, mut b) = (0, 1);
///     for _ in 0..n {
///         (a, b) = (b, ctx.call(add, (a, b)).await?);
///     }
///     Ok(a)
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let report = CrashTest::new(|| TestEnv::builder().register(add).register(fib))
///     .run(|env| async move {
///         let run = env.start(fib, 10).await.unwrap();
///         env.wait(&run).await.unwrap()
///     })
///     .await;
/// assert_eq!(report.runs.len() as u64, report.commits);
/// println!("{report}");
/// # }
/// ```
pub struct CrashTest<F> {
    factory: F,
    plan: Plan,
}

impl<F> fmt::Debug for CrashTest<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CrashTest")
            .field("plan", &self.plan)
            .finish_non_exhaustive()
    }
}

/// One crashed run in a [`CrashReport`].
///
/// # Examples
///
/// See [`CrashReport`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CrashRun {
    /// The commit after which the worker crashed (`None`: after every commit).
    pub crash_after: Option<u64>,
    /// Crashes that happened (0 if the run had fewer commits).
    pub crashes: usize,
    /// Store commits the crashed run made (across its restarts). Scenarios that start
    /// instances concurrently may batch work differently from run to run, so this can differ
    /// from the crash-free run's count.
    pub commits: u64,
    /// Activity executions, real and mocked.
    pub executions: usize,
    /// Executions beyond the crash-free run's: activities re-run after the crash.
    pub reruns: usize,
}

/// What a [`CrashTest`] did; every run's outcome equalled the crash-free one.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use durable_testing::{CrashTest, TestEnv};
/// let report = CrashTest::new(TestEnv::builder).run(|_env| async { 42 }).await;
/// assert_eq!(report.commits, 0);
/// assert!(report.runs.is_empty());
/// assert_eq!(report.total_reruns(), 0);
/// # }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CrashReport {
    /// Store commits in the crash-free run.
    pub commits: u64,
    /// Activity executions in the crash-free run.
    pub baseline_executions: usize,
    /// The crashed runs.
    pub runs: Vec<CrashRun>,
}

impl CrashReport {
    /// Activity re-runs over all crashed runs.
    ///
    /// # Examples
    ///
    /// See [`CrashReport`].
    pub fn total_reruns(&self) -> usize {
        self.runs.iter().map(|r| r.reruns).sum()
    }
}

impl fmt::Display for CrashReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let crashes: usize = self.runs.iter().map(|r| r.crashes).sum();
        write!(
            f,
            "{} crashed runs ({crashes} crashes over {} commits) ended as the crash-free run did; \
             {} activity executions re-run (at-least-once), crash-free run: {} executions",
            self.runs.len(),
            self.commits,
            self.total_reruns(),
            self.baseline_executions
        )?;
        for r in self.runs.iter().filter(|r| r.crashes == 0) {
            if let Some(n) = r.crash_after {
                write!(
                    f,
                    "\n  crash after commit {n}: not reached (that run made {} commits)",
                    r.commits
                )?;
            }
        }
        for r in self.runs.iter().filter(|r| r.reruns > 0) {
            match r.crash_after {
                Some(n) => write!(f, "\n  crash after commit {n}: {} re-run", r.reruns)?,
                None => write!(f, "\n  crash after every commit: {} re-run", r.reruns)?,
            }
        }
        Ok(())
    }
}

impl<F: FnMut() -> TestEnvBuilder> CrashTest<F> {
    /// A crash test of envs built by `factory`, crashing after each commit in turn.
    ///
    /// # Examples
    ///
    /// See [`CrashTest`].
    pub fn new(factory: F) -> Self {
        Self {
            factory,
            plan: Plan::Each,
        }
    }

    /// Only one crashed run, crashing after commit `n` (1-based).
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_testing::{CrashTest, TestEnv};
    /// let test = CrashTest::new(TestEnv::builder).after_commit(3);
    /// # let _ = test;
    /// ```
    pub fn after_commit(mut self, n: u64) -> Self {
        self.plan = Plan::After(n);
        self
    }

    /// One crashed run that crashes after every commit.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_testing::{CrashTest, TestEnv};
    /// let test = CrashTest::new(TestEnv::builder).every_commit();
    /// # let _ = test;
    /// ```
    pub fn every_commit(mut self) -> Self {
        self.plan = Plan::Every;
        self
    }

    /// Runs the scenario crash-free, then once per crash point, comparing outcomes.
    ///
    /// # Panics
    ///
    /// When a crashed run's outcome differs from the crash-free one, or the scenario
    /// panics: the message names the crash point and dumps every instance.
    pub async fn run<S, Fut, T>(mut self, mut scenario: S) -> CrashReport
    where
        S: FnMut(TestEnv) -> Fut,
        Fut: Future<Output = T> + Send + 'static,
        T: PartialEq + fmt::Debug + Send + 'static,
    {
        let env = (self.factory)().start().expect("the test env starts");
        let expected = match run_caught(scenario(env.clone())).await {
            Ok(v) => v,
            Err(message) => {
                let dump = env.dump().await;
                panic!("the crash-free run of the scenario failed: {message}\n\n{dump}");
            }
        };
        let mut report = CrashReport {
            commits: env.commits(),
            baseline_executions: env.all_calls().len(),
            runs: Vec::new(),
        };
        drop(env);
        let points: Vec<Option<u64>> = match self.plan {
            Plan::Each => (1..=report.commits).map(Some).collect(),
            Plan::After(n) => vec![Some(n)],
            Plan::Every => vec![None],
        };
        for point in points {
            let builder = (self.factory)();
            let builder = match point {
                Some(n) => builder.crash_after_commits([n]),
                None => builder.crash_after_every_commit(),
            };
            let env = builder.start().expect("the test env starts");
            let what = match point {
                Some(n) => format!("the run crashing after commit {n} of {}", report.commits),
                None => "the run crashing after every commit".to_owned(),
            };
            let outcome = match run_caught(scenario(env.clone())).await {
                Ok(v) => v,
                Err(message) => {
                    let dump = env.dump().await;
                    panic!("the scenario failed in {what}: {message}\n\n{dump}");
                }
            };
            if outcome != expected {
                let dump = env.dump().await;
                panic!(
                    "a crash changed the outcome in {what}\n  crash-free: {expected:?}\n  crashed:    {outcome:?}\n\n{dump}"
                );
            }
            let executions = env.all_calls().len();
            report.runs.push(CrashRun {
                crash_after: point,
                crashes: env.crashes(),
                commits: env.commits(),
                executions,
                reruns: executions.saturating_sub(report.baseline_executions),
            });
        }
        report
    }
}
