//! Seeded simulation: the real engine under a seed that permutes activity completion order,
//! delivers results twice and injects activity failures.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use crate::env::{TestEnv, TestEnvBuilder};
use crate::store::TaskKey;

/// The settings of one seeded simulation (see [`TestEnvBuilder::simulate`] and
/// [`Simulation`]).
///
/// Under simulation every activity result is held back by the harness's store and applied
/// later, in an order drawn from the seed — so activities scheduled together complete in a
/// seeded permutation. With [`max_delay`](Self::max_delay) a result also waits a seeded
/// amount of virtual time. After a result is applied it may be delivered a second time
/// ([`duplicate_rate`](Self::duplicate_rate)), which the engine must ignore; and an
/// activity execution may fail instead of running ([`failure_rate`](Self::failure_rate)),
/// with an `InjectedFailure` that retry policies retry.
///
/// Every decision is a hash of the seed and the call's identity (instance id, sequence
/// number, attempt), not of thread timing, so one seed replays the same choices: start
/// instances through [`TestEnv::start`], whose ids are deterministic.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use durable_testing::SimConfig;
///
/// let config = SimConfig::new(7)
///     .duplicate_rate(0.5)
///     .failure_rate(0.1)
///     .max_delay(Duration::from_secs(30));
/// assert_eq!(config.seed, 7);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SimConfig {
    /// The seed every decision derives from.
    pub seed: u64,
    /// Chance that an applied activity result is delivered once more (default 0.25).
    pub duplicate_rate: f64,
    /// Chance that an activity execution fails with an injected failure instead of running
    /// (default 0).
    pub failure_rate: f64,
    /// Longest virtual time an activity result is held before it is applied (default 0:
    /// results are only reordered, time does not move).
    pub max_delay: Duration,
}

impl SimConfig {
    /// A simulation under `seed`: reordered completions and 25% duplicate deliveries, no
    /// injected failures, no delays.
    ///
    /// # Examples
    ///
    /// ```
    /// let config = durable_testing::SimConfig::new(42);
    /// assert_eq!(config.failure_rate, 0.0);
    /// ```
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            duplicate_rate: 0.25,
            failure_rate: 0.0,
            max_delay: Duration::ZERO,
        }
    }

    /// Sets the chance (0 to 1) that an applied result is delivered a second time.
    ///
    /// # Examples
    ///
    /// ```
    /// let config = durable_testing::SimConfig::new(1).duplicate_rate(1.0);
    /// assert_eq!(config.duplicate_rate, 1.0);
    /// ```
    pub fn duplicate_rate(mut self, p: f64) -> Self {
        self.duplicate_rate = p.clamp(0.0, 1.0);
        self
    }

    /// Sets the chance (0 to 1) that an activity execution fails instead of running.
    ///
    /// # Examples
    ///
    /// ```
    /// let config = durable_testing::SimConfig::new(1).failure_rate(0.2);
    /// assert_eq!(config.failure_rate, 0.2);
    /// ```
    pub fn failure_rate(mut self, p: f64) -> Self {
        self.failure_rate = p.clamp(0.0, 1.0);
        self
    }

    /// Sets the longest virtual time a result is held. Keep it below the worker's
    /// `activity_lock` (5 minutes by default), or held tasks are leased again and re-run.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let config = durable_testing::SimConfig::new(1).max_delay(Duration::from_secs(10));
    /// assert_eq!(config.max_delay, Duration::from_secs(10));
    /// ```
    pub fn max_delay(mut self, d: Duration) -> Self {
        self.max_delay = d;
        self
    }

    /// A 64-bit value drawn from the seed and one call's identity.
    pub(crate) fn hash(&self, salt: &str, key: &TaskKey, attempt: u32) -> u64 {
        // FNV-1a over the parts, then the splitmix64 finalizer for avalanche.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for b in bytes {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
            h ^= 0xff;
            h = h.wrapping_mul(0x0100_0000_01b3);
        };
        eat(&self.seed.to_le_bytes());
        eat(salt.as_bytes());
        eat(key.0.as_bytes());
        eat(&key.1.to_le_bytes());
        eat(&attempt.to_le_bytes());
        splitmix64(h)
    }

    /// `true` with probability `p`.
    pub(crate) fn chance(&self, p: f64, salt: &str, key: &TaskKey, attempt: u32) -> bool {
        p > 0.0 && unit(self.hash(salt, key, attempt)) < p
    }

    /// A delay in `[0, max_delay]`, in whole milliseconds.
    pub(crate) fn delay(&self, salt: &str, key: &TaskKey, attempt: u32) -> Duration {
        let max = u64::try_from(self.max_delay.as_millis()).unwrap_or(u64::MAX);
        if max == 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(self.hash(salt, key, attempt) % (max + 1))
    }
}

/// One step of splitmix64 (Steele, Lea, Flood 2014): a tiny, well-mixed PRNG step.
pub(crate) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Maps 64 random bits to `[0, 1)`.
fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// What a simulation did to one run.
///
/// # Examples
///
/// ```
/// let stats = durable_testing::SimStats::default();
/// assert_eq!(stats.duplicates_sent, 0);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SimStats {
    /// Activity results held back to be applied in seeded order.
    pub held: u64,
    /// Held results released.
    pub released: u64,
    /// Results delivered a second time (and, the engine being correct, ignored).
    pub duplicates_sent: u64,
    /// Activity executions failed on purpose.
    pub failures_injected: u64,
    /// Held results whose lease expired before release (the activity ran again).
    pub lost: u64,
}

/// One seed's run in a [`SimReport`].
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use durable_testing::{Simulation, TestEnv};
/// let report = Simulation::new(TestEnv::builder).seeds([3]).run(|_env| async {}).await;
/// assert_eq!(report.runs[0].seed, 3);
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SimRun {
    /// The seed.
    pub seed: u64,
    /// What the simulation did.
    pub stats: SimStats,
    /// Activity executions (real and mocked).
    pub activity_calls: usize,
}

/// The result of a [`Simulation`]: one entry per seed, all of which passed.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use durable_testing::{Simulation, TestEnv};
/// let report = Simulation::new(TestEnv::builder).seeds(0..4).run(|_env| async {}).await;
/// assert_eq!(report.runs.len(), 4);
/// println!("{report}");
/// # }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SimReport {
    /// The runs, in seed order.
    pub runs: Vec<SimRun>,
}

impl SimReport {
    /// Totals over all runs.
    ///
    /// # Examples
    ///
    /// ```
    /// let report = durable_testing::SimReport::default();
    /// assert_eq!(report.totals().held, 0);
    /// ```
    pub fn totals(&self) -> SimStats {
        let mut t = SimStats::default();
        for r in &self.runs {
            t.held += r.stats.held;
            t.released += r.stats.released;
            t.duplicates_sent += r.stats.duplicates_sent;
            t.failures_injected += r.stats.failures_injected;
            t.lost += r.stats.lost;
        }
        t
    }
}

impl fmt::Display for SimReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.totals();
        write!(
            f,
            "{} seeds passed: {} results reordered, {} duplicate deliveries ignored, {} failures injected",
            self.runs.len(),
            t.released,
            t.duplicates_sent,
            t.failures_injected
        )
    }
}

/// Runs one scenario under many seeds, each on a fresh [`TestEnv`] with
/// [`TestEnvBuilder::simulate`]. A failing seed is named in the panic, and setting the
/// `DURABLE_SEED` environment variable runs just that seed again.
///
/// The scenario gets the env and returns when it is satisfied; it asserts with ordinary
/// `assert!`s. Results are applied one at a time whenever the engine is otherwise idle, so
/// a handle's `wait()` works; but delayed results and timers need virtual time to move, so
/// prefer driving with [`TestEnv::wait`], [`TestEnv::run_until_idle`] and
/// [`TestEnv::advance`].
///
/// # Examples
///
/// ```
/// use durable_core::prelude::*;
/// use durable_testing::{Simulation, TestEnv};
///
/// #[activity]
/// async fn square(x: u64) -> Result<u64, ActivityError> {
///     Ok(x * x)
/// }
///
/// #[orchestrator]
/// async fn sum_squares(ctx: OrchestrationContext, n: u64) -> Result<u64, OrchestrationError> {
///     let all = ctx.when_all((1..=n).map(|i| ctx.call(square, i))).await;
///     all.into_iter().map(|r| Ok(r?)).sum()
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let report = Simulation::new(|| TestEnv::builder().register(square).register(sum_squares))
///     .duplicate_rate(0.5)
///     .seeds(0..10)
///     .run(|env| async move {
///         let run = env.start(sum_squares, 5).await.unwrap();
///         assert_eq!(env.wait(&run).await.unwrap(), 55);
///     })
///     .await;
/// assert!(report.totals().duplicates_sent > 0);
/// # }
/// ```
pub struct Simulation<F> {
    factory: F,
    config: SimConfig,
    seeds: Vec<u64>,
}

impl<F> fmt::Debug for Simulation<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Simulation")
            .field("config", &self.config)
            .field("seeds", &self.seeds)
            .finish_non_exhaustive()
    }
}

impl<F: FnMut() -> TestEnvBuilder> Simulation<F> {
    /// A simulation of envs built by `factory`, over seeds 0 to 31 with
    /// [`SimConfig::new`]'s settings.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_testing::{Simulation, TestEnv};
    /// let sim = Simulation::new(TestEnv::builder);
    /// # let _ = sim;
    /// ```
    pub fn new(factory: F) -> Self {
        Self {
            factory,
            config: SimConfig::new(0),
            seeds: (0..32).collect(),
        }
    }

    /// The seeds to run.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_testing::{Simulation, TestEnv};
    /// let sim = Simulation::new(TestEnv::builder).seeds([17, 99]);
    /// # let _ = sim;
    /// ```
    pub fn seeds(mut self, seeds: impl IntoIterator<Item = u64>) -> Self {
        self.seeds = seeds.into_iter().collect();
        self
    }

    /// Replaces the settings (the seed in `config` is ignored: the seeds come from
    /// [`seeds`](Self::seeds)).
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_testing::{SimConfig, Simulation, TestEnv};
    /// let sim = Simulation::new(TestEnv::builder).config(SimConfig::new(0).failure_rate(0.3));
    /// # let _ = sim;
    /// ```
    pub fn config(mut self, config: SimConfig) -> Self {
        self.config = config;
        self
    }

    /// See [`SimConfig::duplicate_rate`].
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_testing::{Simulation, TestEnv};
    /// let sim = Simulation::new(TestEnv::builder).duplicate_rate(1.0);
    /// # let _ = sim;
    /// ```
    pub fn duplicate_rate(mut self, p: f64) -> Self {
        self.config = self.config.duplicate_rate(p);
        self
    }

    /// See [`SimConfig::failure_rate`].
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_testing::{Simulation, TestEnv};
    /// let sim = Simulation::new(TestEnv::builder).failure_rate(0.2);
    /// # let _ = sim;
    /// ```
    pub fn failure_rate(mut self, p: f64) -> Self {
        self.config = self.config.failure_rate(p);
        self
    }

    /// See [`SimConfig::max_delay`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use durable_testing::{Simulation, TestEnv};
    /// let sim = Simulation::new(TestEnv::builder).max_delay(Duration::from_secs(5));
    /// # let _ = sim;
    /// ```
    pub fn max_delay(mut self, d: Duration) -> Self {
        self.config = self.config.max_delay(d);
        self
    }

    /// Runs the scenario once per seed (only `DURABLE_SEED` if that is set).
    ///
    /// # Panics
    ///
    /// When the scenario panics for some seed: the panic names the seed, how to replay it,
    /// and every instance's status and history.
    pub async fn run<S, Fut>(mut self, mut scenario: S) -> SimReport
    where
        S: FnMut(TestEnv) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let seeds = match std::env::var("DURABLE_SEED")
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            Some(seed) => vec![seed],
            None => std::mem::take(&mut self.seeds),
        };
        let mut report = SimReport::default();
        for seed in seeds {
            let mut config = self.config.clone();
            config.seed = seed;
            let env = (self.factory)()
                .simulate(config)
                .start()
                .expect("the test env starts");
            if let Err(message) = crate::env::run_caught(scenario(env.clone())).await {
                let dump = env.dump().await;
                panic!(
                    "simulation failed with seed {seed}: {message}\n\
                     replay just this seed with DURABLE_SEED={seed} (or `.seeds([{seed}])`)\n\n{dump}"
                );
            }
            report.runs.push(SimRun {
                seed,
                stats: env.sim_stats(),
                activity_calls: env.all_calls().len(),
            });
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::{SimConfig, splitmix64, unit};

    #[test]
    fn decisions_are_pure_functions_of_seed_and_call() {
        let key = ("order-1".to_owned(), 3);
        let a = SimConfig::new(9);
        assert_eq!(a.hash("rank", &key, 0), a.hash("rank", &key, 0));
        assert_ne!(a.hash("rank", &key, 0), a.hash("rank", &key, 1));
        assert_ne!(
            a.hash("rank", &key, 0),
            SimConfig::new(10).hash("rank", &key, 0)
        );
        assert_ne!(a.hash("rank", &key, 0), a.hash("delay", &key, 0));
    }

    #[test]
    fn chances_follow_their_rate() {
        let sim = SimConfig::new(1);
        let hits = (0..10_000u64)
            .filter(|i| sim.chance(0.25, "x", &("i".to_owned(), *i), 0))
            .count();
        assert!((2_200..2_800).contains(&hits), "{hits}");
        assert!(!sim.chance(0.0, "x", &("i".to_owned(), 0), 0));
    }

    #[test]
    fn splitmix_matches_the_reference_sequence() {
        // State 0 advanced by the golden gamma, as in the reference implementation.
        assert_eq!(splitmix64(0), 0xe220_a839_7b1d_cdaf);
        assert!(unit(u64::MAX) < 1.0);
    }

    #[test]
    fn delays_stay_within_the_bound() {
        let sim = SimConfig::new(5).max_delay(std::time::Duration::from_millis(250));
        for i in 0..1000 {
            assert!(sim.delay("d", &("x".to_owned(), i), 0).as_millis() <= 250);
        }
        assert_eq!(
            SimConfig::new(5)
                .delay("d", &("x".to_owned(), 1), 0)
                .as_millis(),
            0
        );
    }
}
