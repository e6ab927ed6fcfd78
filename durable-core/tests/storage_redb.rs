//! Crash safety of the redb store under the real engine (issue 4), plus what only a second
//! process can check.
//!
//! `crash_safety_under_repeated_sigkill`: the test binary re-runs itself as a child process
//! (`DURABLE_CRASH_CHILD=<dir>`) that opens a redb file, starts a worker with the real
//! `SystemClock` and drives a mixed workload — activity chains with short (20–200 ms) durable
//! timers, fan-outs of 20–50 activities, instances waiting for external events raised by the
//! driver, instances that continue-as-new once per event (events raised ahead are carried
//! over), and sub-orchestrations. The parent kills the child with SIGKILL after a seeded
//! random delay, restarts it, and repeats; each restart re-opens the file and continues: the
//! child of round `r` starts the instances of waves `0..=r` with explicit ids and
//! `IdReusePolicy::RejectExisting` (a start is applied once; existing ones are left alone).
//! A last child runs the workload to completion; then the parent opens the file itself and
//! checks every instance's output and history.
//!
//! Everything the children did is in one append-only log file (`O_APPEND`, one `write` per
//! line, so lines from activities and the driver are totally ordered):
//!
//! - `start <instance> <seq> <activity>` / `run <instance> <seq> <activity> <result>`: an
//!   activity execution began / finished (re-runs are allowed, at-least-once, and counted);
//! - `seen <instance> <seq> <result>`: the driver read a `TaskCompleted` from the store (a
//!   committed, durable fact): no later `run` of that task may exist and the final history
//!   must hold the same result;
//! - `prefix <instance> <execution> <len> <hash>`: the driver read a history of `len` events
//!   of that execution: the final history must start with exactly those events if it is the
//!   same execution, and the final execution must not be an earlier one (nothing acknowledged
//!   is rolled back or rewritten);
//! - `raise <instance> <j>` / `ack <instance> <j>`: the driver is about to raise event `e<j>`
//!   / the store acknowledged it. Each event is raised once, and once more only when a kill
//!   fell between the raise and its `ack` line (the orchestrations wait for each name once,
//!   so a duplicate is harmless); every acknowledged event must be in the output, and the
//!   history of an events instance must hold each event exactly once when it was raised once.
//!
//! Histories must show each step once: every `TaskScheduled` / `TimerCreated` /
//! `SubOrchestrationCreated` seq once, each completion once and after its schedule, one
//! `ExecutionStarted`, one `ExecutionCompleted`; a continue-as-new instance ends in execution
//! `k + 1`. The checks of logged durable facts run first, so that a hung final run (a lost
//! event or result) still fails with what was lost.
//!
//! Knobs: `DURABLE_CRASH_SEED=<seed>` reproduces the plan and the kill delays (the seed is
//! printed); `DURABLE_SOAK=1` soaks with 60 kills (`DURABLE_SOAK=<kills>` for another count);
//! `DURABLE_CRASH_KEEP=1` keeps the working directory; `DURABLE_CRASH_RELAXED=1` is a negative
//! control — the children use relaxed durability, which loses acknowledged commits on a kill,
//! and the test must fail.
//!
//! What is covered elsewhere and not repeated here: an unknown format version, a foreign
//! redb file and the version record of a fresh file (unit tests in `src/storage/redb.rs`);
//! re-opening keeps data, a garbage file, a missing directory, a second open in the same
//! process (`tests/store.rs`); damaged and truncated small files never panic (unit test
//! `damaged_files_never_panic`). Here: a file held open by another *process* is refused;
//! the crash test's own (larger, multi-level) file, truncated at seeded points, gives an
//! error or a working store — never a panic; and (`mod issue12`) `open` creates a store only
//! where there is no file, refuses an empty file, a non-redb file and an empty redb database
//! untouched, and discards what a crashed creation left under `<name>.creating`.

#[path = "support/kill.rs"]
mod kill;

use kill::{Rng, RoundEnd, spawn_self, tail, wait_or_kill};
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use durable_core::history::{Event, HistoryEvent};
use durable_core::prelude::*;
use durable_core::storage::RedbDurability;
use durable_core::{InstanceQuery, RedbStore, Store, StoreError};
use serde::{Deserialize, Serialize};

const CRASH_TEST: &str = "crash_safety_under_repeated_sigkill";
const HOLD_TEST: &str = "file_held_by_another_process_is_refused";
/// Set in a crash child: the working directory (store file and log).
const ENV_CHILD: &str = "DURABLE_CRASH_CHILD";
/// Set in a crash child: its round number, or `final`.
const ENV_ROUND: &str = "DURABLE_CRASH_ROUND";
/// The seed (set by the parent for its children; set by hand to reproduce a run).
const ENV_SEED: &str = "DURABLE_CRASH_SEED";
/// Set in a crash child: how many waves the workload has.
const ENV_WAVES: &str = "DURABLE_CRASH_WAVES";
/// `1` for a 60-kill soak, or a number of kills.
const ENV_SOAK: &str = "DURABLE_SOAK";
/// Keep the working directory (its path is printed).
const ENV_KEEP: &str = "DURABLE_CRASH_KEEP";
/// Negative control: the children open the store with relaxed durability, which loses
/// acknowledged commits on a kill; the checks must then fail.
const ENV_RELAXED: &str = "DURABLE_CRASH_RELAXED";
/// Set in a hold child: the store file to open and hold until stdin closes.
const ENV_HOLD: &str = "DURABLE_HOLD_CHILD";

/// Kills in a normal run, and in a soak.
const KILLS: u32 = 12;
const SOAK_KILLS: u32 = 60;
/// A child is killed this long after it was spawned (uniform, seeded).
const KILL_AFTER_MS: (u64, u64) = (40, 1500);
/// Guard against a hung final run (not a timing assertion: it only turns a hang into a
/// failure with the child's log).
const FINAL_GUARD: Duration = Duration::from_secs(120);

// ------------------------------------------------------------------ deterministic helpers

/// The activity `step` computes this; the parent computes expected outputs with it.
fn mix(x: u64) -> u64 {
    let mut z = x
        .wrapping_mul(0x2545_F491_4F6C_DD1D)
        .wrapping_add(0x9E37_79B9);
    z ^= z >> 29;
    z % 1_000_000_007
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01B3)
    })
}

/// The payload of event `e<j>` of an instance.
fn event_value(instance: &str, j: u32) -> u64 {
    mix(fnv(instance.as_bytes()) ^ u64::from(j))
}

/// Hash of a history prefix, to compare what a child saw with the final history.
fn history_hash(events: &[HistoryEvent]) -> u64 {
    events.iter().fold(0, |h, e| {
        let json = serde_json::to_string(e).expect("history events serialize");
        fnv(&[h.to_le_bytes().as_slice(), json.as_bytes()].concat())
    })
}

// ------------------------------------------------------------------ the log

static LOG: OnceLock<File> = OnceLock::new();

fn open_log(dir: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("log"))
        .expect("open the log")
}

/// Ends every complete line: a line a kill cut short lacks it and is not believed.
const END: &str = " ;";

/// Appends one line with one `write` (`O_APPEND`: lines of all writers are ordered).
fn log_line(line: &str) {
    if let Some(mut f) = LOG.get() {
        f.write_all(format!("{line}{END}\n").as_bytes())
            .expect("append to the log");
    }
}

/// Everything the children logged, in order.
#[derive(Debug, Default)]
struct LogView {
    /// (instance, seq) -> (line number, result) of every execution.
    runs: HashMap<(String, u64), Vec<(usize, String)>>,
    /// Activity executions started.
    starts: usize,
    /// (instance, seq) -> (line number, result) when first seen completed.
    seen: HashMap<(String, u64), (usize, String)>,
    /// (instance, execution, len, hash) of observed histories.
    prefixes: Vec<(String, u32, usize, u64)>,
    /// (instance, j) -> raise attempts.
    raises: HashMap<(String, u32), u32>,
    /// Acknowledged raises.
    acks: HashSet<(String, u32)>,
    /// One entry per child start, in order.
    segments: Vec<Segment>,
    /// Lines cut by a kill in the middle of a write.
    torn: usize,
}

impl LogView {
    fn read(dir: &Path) -> Self {
        let mut view = Self::default();
        let Ok(file) = File::open(dir.join("log")) else {
            return view;
        };
        for (no, line) in BufReader::new(file).lines().enumerate() {
            let line = line.expect("read the log");
            if !line.is_empty() && !view.parse(no, &line) {
                view.torn += 1;
            }
        }
        view
    }

    fn parse(&mut self, no: usize, line: &str) -> bool {
        let Some(line) = line.strip_suffix(END) else {
            return false;
        };
        let f: Vec<&str> = line.split(' ').collect();
        let num = |s: &str| s.parse::<u64>().ok();
        match f.as_slice() {
            ["up", round, _pid] => self.segments.push(Segment {
                round: (*round).to_owned(),
                ..Segment::default()
            }),
            ["opened", ms] => {
                let Some(ms) = num(ms) else { return false };
                self.segment().open_ms = Some(ms);
            }
            ["start", _id, seq, _name] => {
                if num(seq).is_none() {
                    return false;
                }
                self.starts += 1;
                self.segment().starts += 1;
            }
            ["run", id, seq, _name, result] => {
                let Some(seq) = num(seq) else { return false };
                self.segment().runs += 1;
                self.runs
                    .entry(((*id).to_owned(), seq))
                    .or_default()
                    .push((no, (*result).to_owned()));
            }
            ["seen", id, seq, result] => {
                let Some(seq) = num(seq) else { return false };
                self.segment().seen += 1;
                self.seen
                    .entry(((*id).to_owned(), seq))
                    .or_insert((no, (*result).to_owned()));
            }
            ["prefix", id, exec, len, hash] => {
                let (Some(exec), Some(len), Some(hash)) = (num(exec), num(len), num(hash)) else {
                    return false;
                };
                self.prefixes
                    .push(((*id).to_owned(), exec as u32, len as usize, hash));
            }
            ["raise", id, j] => {
                let Some(j) = num(j) else { return false };
                *self.raises.entry(((*id).to_owned(), j as u32)).or_default() += 1;
            }
            ["ack", id, j] => {
                let Some(j) = num(j) else { return false };
                self.segment().acks += 1;
                self.acks.insert(((*id).to_owned(), j as u32));
            }
            ["done"] => self.segment().done = true,
            _ => return false,
        }
        true
    }

    fn segment(&mut self) -> &mut Segment {
        if self.segments.is_empty() {
            self.segments.push(Segment::default());
        }
        self.segments.last_mut().expect("a segment")
    }
}

/// What one child did before it was killed (or finished).
#[derive(Debug, Default)]
struct Segment {
    round: String,
    /// Time to open the store (including redb's repair after a kill).
    open_ms: Option<u64>,
    starts: usize,
    runs: usize,
    seen: usize,
    acks: usize,
    done: bool,
}

impl std::fmt::Display for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let open = self.open_ms.map_or_else(
            || "killed before the store was open".to_owned(),
            |ms| format!("open {ms} ms"),
        );
        write!(
            f,
            "round {:>5}: {open}, {} activities started, {} finished, {} completions seen, {} events acked{}",
            self.round,
            self.starts,
            self.runs,
            self.seen,
            self.acks,
            if self.done { ", finished" } else { "" }
        )
    }
}

// ------------------------------------------------------------------ the workload

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ChainIn {
    start: u64,
    /// One step per entry; after a step, a durable timer of this many ms (0: none).
    delays_ms: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct FanIn {
    base: u64,
    n: u64,
    delay_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct EventsIn {
    k: u32,
    delay_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct GenIn {
    /// Generations (executions) before the result; generation `g` consumes event `e<g>`.
    k: u32,
    generation: u32,
    acc: u64,
    delay_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct NestedIn {
    chains: Vec<ChainIn>,
}

/// Logs the start of an execution, pauses (so kills land mid-activity), logs its end.
#[allow(
    clippy::disallowed_methods,
    reason = "an activity is ordinary async code; the pause widens the window in which a kill lands mid-activity"
)]
async fn logged(ctx: &ActivityContext, pause_ms: u64, out: u64) -> u64 {
    let name = &ctx.name;
    log_line(&format!("start {} {} {name}", ctx.instance_id, ctx.seq));
    tokio::time::sleep(Duration::from_millis(pause_ms)).await;
    log_line(&format!("run {} {} {name} {out}", ctx.instance_id, ctx.seq));
    out
}

#[activity]
async fn step(ctx: ActivityContext, x: u64) -> Result<u64, ActivityError> {
    Ok(logged(&ctx, 3 + x % 23, mix(x)).await)
}

#[activity]
async fn square(ctx: ActivityContext, x: u64) -> Result<u64, ActivityError> {
    Ok(logged(&ctx, 2 + x % 29, x.wrapping_mul(x) % 1_000_000_007).await)
}

#[orchestrator]
async fn chain(ctx: OrchestrationContext, input: ChainIn) -> Result<u64, OrchestrationError> {
    let mut x = input.start;
    for d in input.delays_ms {
        x = ctx.call(step, x).await?;
        if d > 0 {
            ctx.sleep(Duration::from_millis(d)).await;
        }
    }
    Ok(x)
}

#[orchestrator]
async fn fan(ctx: OrchestrationContext, input: FanIn) -> Result<u64, OrchestrationError> {
    let results = ctx
        .when_all((0..input.n).map(|i| ctx.call(square, input.base + i)))
        .await;
    let mut sum = 0u64;
    for r in results {
        sum = sum.wrapping_add(r?);
    }
    ctx.sleep(Duration::from_millis(input.delay_ms)).await;
    Ok(ctx.call(step, sum).await?)
}

#[orchestrator]
async fn await_events(
    ctx: OrchestrationContext,
    input: EventsIn,
) -> Result<Vec<u64>, OrchestrationError> {
    let mut out = Vec::new();
    for j in 0..input.k {
        let v: u64 = ctx.wait_for_event(&format!("e{j}")).await?;
        out.push(ctx.call(step, v).await?);
        if j == 1 {
            ctx.sleep(Duration::from_millis(input.delay_ms)).await;
        }
    }
    Ok(out)
}

/// One execution per event, by continue-as-new: events raised ahead of their generation are
/// carried over to the next execution.
#[orchestrator]
async fn generations(ctx: OrchestrationContext, input: GenIn) -> Result<u64, OrchestrationError> {
    if input.generation == input.k {
        return Ok(input.acc);
    }
    let v: u64 = ctx
        .wait_for_event(&format!("e{}", input.generation))
        .await?;
    ctx.sleep(Duration::from_millis(input.delay_ms)).await;
    ctx.continue_as_new(GenIn {
        generation: input.generation + 1,
        acc: mix(input.acc ^ v),
        ..input
    })
    .await
}

#[orchestrator]
async fn nested(ctx: OrchestrationContext, input: NestedIn) -> Result<u64, OrchestrationError> {
    let children = input
        .chains
        .into_iter()
        .map(|c| ctx.call_sub_orchestrator(chain, c));
    let mut sum = 0u64;
    for r in ctx.when_all(children).await {
        sum = sum.wrapping_add(r?);
    }
    Ok(sum)
}

#[derive(Debug, Clone)]
enum Kind {
    Chain(ChainIn),
    Fan(FanIn),
    Events(EventsIn),
    Generations(GenIn),
    Nested(NestedIn),
}

#[derive(Debug, Clone)]
struct Planned {
    id: String,
    wave: u32,
    kind: Kind,
}

fn chain_expected(c: &ChainIn) -> u64 {
    c.delays_ms.iter().fold(c.start, |x, _| mix(x))
}

impl Planned {
    fn expected(&self) -> serde_json::Value {
        match &self.kind {
            Kind::Chain(c) => chain_expected(c).into(),
            Kind::Fan(f) => {
                let sum = (0..f.n)
                    .map(|i| (f.base + i).wrapping_mul(f.base + i) % 1_000_000_007)
                    .fold(0u64, u64::wrapping_add);
                mix(sum).into()
            }
            Kind::Events(e) => (0..e.k)
                .map(|j| mix(event_value(&self.id, j)))
                .collect::<Vec<_>>()
                .into(),
            Kind::Generations(g) => (g.generation..g.k)
                .fold(g.acc, |acc, j| mix(acc ^ event_value(&self.id, j)))
                .into(),
            Kind::Nested(n) => n
                .chains
                .iter()
                .map(chain_expected)
                .fold(0u64, u64::wrapping_add)
                .into(),
        }
    }
}

fn random_chain(rng: &mut Rng, steps: (u64, u64)) -> ChainIn {
    let n = rng.range(steps.0, steps.1);
    ChainIn {
        start: rng.range(1, 1 << 40),
        delays_ms: (0..n)
            .map(|_| {
                if rng.range(0, 3) == 0 {
                    0
                } else {
                    rng.range(20, 200)
                }
            })
            .collect(),
    }
}

/// The whole workload: `waves` waves; wave `w` is started by the child of round `w` (or the
/// first later child that gets that far).
fn plan(seed: u64, waves: u32) -> Vec<Planned> {
    let mut rng = Rng::new(seed ^ 0x5EED_0FC4_A5A5);
    let mut out = Vec::new();
    for w in 0..waves {
        let mut add = |name: &str, kind| {
            out.push(Planned {
                id: format!("w{w:02}-{name}"),
                wave: w,
                kind,
            });
        };
        add("chain", Kind::Chain(random_chain(&mut rng, (4, 8))));
        add(
            "fan",
            Kind::Fan(FanIn {
                base: rng.range(1, 1 << 30),
                n: rng.range(20, 50),
                delay_ms: rng.range(20, 200),
            }),
        );
        add(
            "events",
            Kind::Events(EventsIn {
                k: rng.range(3, 6) as u32,
                delay_ms: rng.range(20, 200),
            }),
        );
        if w % 2 == 0 {
            add(
                "generations",
                Kind::Generations(GenIn {
                    k: rng.range(3, 5) as u32,
                    generation: 0,
                    acc: rng.range(1, 1 << 40),
                    delay_ms: rng.range(20, 100),
                }),
            );
        }
        if w % 3 == 1 {
            let chains = (0..rng.range(2, 3))
                .map(|_| random_chain(&mut rng, (2, 4)))
                .collect();
            add("nested", Kind::Nested(NestedIn { chains }));
        }
    }
    out
}

// ------------------------------------------------------------------ the child

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[allow(
    clippy::disallowed_methods,
    reason = "the child reports how long the re-open took"
)]
/// Runs the workload on `dir/store.redb` until the parent kills it, or (round `final`, or
/// a round that reaches the last wave) until every instance has completed.
fn child_main(dir: &Path) {
    let round = std::env::var(ENV_ROUND).expect("round set by the parent");
    let seed = env_u64(ENV_SEED).expect("seed set by the parent");
    let waves = env_u64(ENV_WAVES).expect("waves set by the parent") as u32;
    let last_wave = if round == "final" {
        waves
    } else {
        round.parse::<u32>().expect("numeric round") + 1
    };
    let view = LogView::read(dir);
    let log = LOG.get_or_init(|| open_log(dir));
    // A leading newline ends a line a kill may have cut short.
    let mut l = log;
    l.write_all(format!("\nup {round} {}{END}\n", std::process::id()).as_bytes())
        .expect("append to the log");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let opening = Instant::now();
        let store = if std::env::var_os(ENV_RELAXED).is_some() {
            RedbStore::builder()
                .durability(RedbDurability::Relaxed)
                .open(dir.join("store.redb"))
        } else {
            RedbStore::open(dir.join("store.redb"))
        }
        .expect("the store re-opens after a kill");
        log_line(&format!("opened {}", opening.elapsed().as_millis()));
        let worker = Worker::builder()
            .store(store.clone())
            .register(step)
            .register(square)
            .register(chain)
            .register(fan)
            .register(await_events)
            .register(generations)
            .register(nested)
            .start()
            .expect("worker starts");
        let mut driver = Driver::new(worker.client(), store, view, seed, round == "final");
        let plan = plan(seed, waves);
        driver.run(&plan, last_wave).await;
        log_line("done");
        worker.shutdown().await;
    });
}

#[allow(
    clippy::disallowed_methods,
    reason = "the driver paces itself in real time"
)]
async fn pause(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// The parent process id, to notice that the test process is gone.
#[cfg(unix)]
fn parent_pid() -> u32 {
    std::os::unix::process::parent_id()
}

/// Elsewhere: a constant (the check is Unix only).
#[cfg(not(unix))]
fn parent_pid() -> u32 {
    0
}

/// What the driver knows about one instance it watches.
#[derive(Debug, Default)]
struct Watched {
    /// (execution, history length) last logged.
    logged: (u32, usize),
    done: bool,
}

struct Driver {
    client: Client,
    store: RedbStore,
    view: LogView,
    rng: Rng,
    watched: BTreeMap<String, Watched>,
    /// Events instances not known to be finished: id -> (k, next event to raise).
    raising: BTreeMap<String, (u32, u32)>,
}

impl Driver {
    fn new(client: Client, store: RedbStore, view: LogView, seed: u64, final_run: bool) -> Self {
        let salt = u64::from(std::process::id()) ^ u64::from(final_run);
        Self {
            client,
            store,
            view,
            rng: Rng::new(seed ^ salt.rotate_left(32)),
            watched: BTreeMap::new(),
            raising: BTreeMap::new(),
        }
    }

    async fn run(&mut self, plan: &[Planned], last_wave: u32) {
        for p in plan.iter().filter(|p| p.wave < last_wave) {
            self.start(p).await;
        }
        let all_started = plan.iter().all(|p| p.wave < last_wave);
        let parent = parent_pid();
        loop {
            if parent_pid() != parent {
                // The test process is gone: do not outlive it.
                std::process::exit(3);
            }
            self.raise_some().await;
            self.observe().await;
            if all_started && self.watched.values().all(|w| w.done) {
                return;
            }
            pause(self.rng.range(10, 40)).await;
        }
    }

    /// Starts an instance unless it exists (`RejectExisting`: a start is applied once).
    async fn start(&mut self, p: &Planned) {
        let opts = StartOptions::new()
            .instance_id(InstanceId::new(p.id.clone()).expect("valid id"))
            .reuse(IdReusePolicy::RejectExisting);
        let started = match &p.kind {
            Kind::Chain(c) => chain::start_with(&self.client, c.clone(), opts)
                .await
                .map(drop),
            Kind::Fan(f) => fan::start_with(&self.client, f.clone(), opts)
                .await
                .map(drop),
            Kind::Events(e) => await_events::start_with(&self.client, e.clone(), opts)
                .await
                .map(drop),
            Kind::Generations(g) => generations::start_with(&self.client, g.clone(), opts)
                .await
                .map(drop),
            Kind::Nested(n) => nested::start_with(&self.client, n.clone(), opts)
                .await
                .map(drop),
        };
        match started {
            Ok(()) | Err(ClientError::InstanceAlreadyExists(_)) => {}
            Err(e) => panic!("starting {}: {e}", p.id),
        }
        self.watched.entry(p.id.clone()).or_default();
        let k = match &p.kind {
            Kind::Events(e) => e.k,
            Kind::Generations(g) => g.k,
            _ => return,
        };
        let next = (0..k)
            .find(|j| !self.view.acks.contains(&(p.id.clone(), *j)))
            .unwrap_or(k);
        self.raising.insert(p.id.clone(), (k, next));
    }

    /// Raises the next event of some events instances; logs each attempt and each ack.
    async fn raise_some(&mut self) {
        let ids: Vec<String> = self.raising.keys().cloned().collect();
        for id in ids {
            let (k, j) = self.raising[&id];
            if j >= k {
                self.raising.remove(&id);
                continue;
            }
            if self.rng.range(0, 2) != 0 {
                continue;
            }
            log_line(&format!("raise {id} {j}"));
            let instance = InstanceId::new(id.clone()).expect("valid id");
            match self
                .client
                .raise_event(&instance, &format!("e{j}"), &event_value(&id, j))
                .await
            {
                Ok(()) => {
                    // A client that records the acknowledgement a little later: a kill in
                    // between makes the next child raise the event again.
                    pause(self.rng.range(0, 15)).await;
                    log_line(&format!("ack {id} {j}"));
                    self.raising.insert(id, (k, j + 1));
                }
                // Finished: it had every event already (a re-raise after a kill).
                Err(ClientError::InstanceNotRunning(_)) => {
                    self.raising.remove(&id);
                }
                Err(e) => panic!("raising e{j} on {id}: {e}"),
            }
        }
    }

    /// Reads every unfinished watched instance and logs what is now durable.
    async fn observe(&mut self) {
        let ids: Vec<String> = self
            .watched
            .iter()
            .filter(|(_, w)| !w.done)
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            let instance = InstanceId::new(id.clone()).expect("valid id");
            // The record first: its execution is then at most the history's, so a prefix
            // line never claims a later execution than the events it hashes.
            let Some(record) = self.store.read_instance(&instance).await.expect("read") else {
                continue;
            };
            let history = self.store.read_history(&instance).await.expect("read");
            for e in &history {
                match &e.event {
                    Event::TaskCompleted { seq, result } => {
                        if let Entry::Vacant(v) = self.view.seen.entry((id.clone(), *seq)) {
                            log_line(&format!("seen {id} {seq} {result}"));
                            v.insert((0, result.clone()));
                        }
                    }
                    Event::SubOrchestrationCreated { instance_id, .. } => {
                        self.watched
                            .entry(instance_id.as_str().to_owned())
                            .or_default();
                    }
                    _ => {}
                }
            }
            let w = self.watched.get_mut(&id).expect("watched");
            let now = (record.execution, history.len());
            if now != w.logged {
                w.logged = now;
                log_line(&format!(
                    "prefix {id} {} {} {}",
                    record.execution,
                    history.len(),
                    history_hash(&history)
                ));
            }
            match record.status {
                RuntimeStatus::Completed => w.done = true,
                s if s.is_terminal() => panic!(
                    "{id} ended {s:?}: {:?} {:?}\n{}",
                    record.output,
                    record.failure,
                    durable_core::history::pretty(&history)
                ),
                _ => {}
            }
        }
    }
}

// ------------------------------------------------------------------ the parent

fn kills() -> u32 {
    match std::env::var(ENV_SOAK).ok().as_deref() {
        None | Some("" | "0") => KILLS,
        Some("1") => SOAK_KILLS,
        Some(n) => n.parse().unwrap_or(SOAK_KILLS),
    }
}

#[test]
#[allow(clippy::disallowed_methods, reason = "the parent reports wall time")]
fn crash_safety_under_repeated_sigkill() {
    if let Some(dir) = std::env::var_os(ENV_CHILD) {
        child_main(Path::new(&dir));
        return;
    }
    let seed = kill::seed(ENV_SEED);
    let kills = kills();
    let waves = kills;
    println!(
        "crash test: seed {seed} ({ENV_SEED}={seed} reproduces the plan and the kill delays), {kills} kills"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    if std::env::var_os(ENV_KEEP).is_some() {
        println!("keeping {}", dir.path().display());
    }
    let envs = |round: String| {
        vec![
            (ENV_CHILD, dir.path().display().to_string()),
            (ENV_ROUND, round),
            (ENV_SEED, seed.to_string()),
            (ENV_WAVES, waves.to_string()),
        ]
    };
    let mut rng = Rng::new(seed);
    let t0 = Instant::now();
    let mut killed = 0;
    let mut delays = Vec::new();
    for round in 0..kills {
        let delay = Duration::from_millis(rng.range(KILL_AFTER_MS.0, KILL_AFTER_MS.1));
        let log = dir.path().join(format!("child-{round:02}.out"));
        let mut child = spawn_self(CRASH_TEST, &envs(round.to_string()), &log);
        match wait_or_kill(&mut child, delay) {
            RoundEnd::Killed => {
                killed += 1;
                delays.push(delay.as_millis());
            }
            RoundEnd::Exited(s) if s.success() => {
                println!("round {round}: the workload finished before the kill");
                break;
            }
            RoundEnd::Exited(s) => panic!("child of round {round} failed ({s}):\n{}", tail(&log)),
        }
    }
    let kill_phase = t0.elapsed();
    let t1 = Instant::now();
    let log = dir.path().join("child-final.out");
    let mut child = spawn_self(CRASH_TEST, &envs("final".into()), &log);
    let finished = match wait_or_kill(&mut child, FINAL_GUARD) {
        RoundEnd::Exited(s) if s.success() => Ok(()),
        other => Err(format!(
            "final child did not finish ({other:?}):\n{}",
            tail(&log)
        )),
    };
    let final_phase = t1.elapsed();
    println!(
        "killed {killed} times after {delays:?} ms; kill phase {kill_phase:.2?}, final run {final_phase:.2?}"
    );

    let view = LogView::read(dir.path());
    let plan = plan(seed, waves);
    for segment in &view.segments {
        println!("  {segment}");
    }
    let mut opens: Vec<u64> = view.segments.iter().filter_map(|s| s.open_ms).collect();
    opens.sort_unstable();
    if let (Some(min), Some(max)) = (opens.first(), opens.last()) {
        println!(
            "store open after a kill (redb repair included): {} opens, {min}..{max} ms, median {} ms",
            opens.len(),
            opens[opens.len() / 2]
        );
    }
    let report = verify(dir.path(), &plan, &view, finished);
    println!("{report}");
    println!("total {:.2?}", t0.elapsed());
    truncated_copies_never_panic(dir.path(), seed);
    if std::env::var_os(ENV_KEEP).is_some() {
        let _ = dir.keep();
    }
}

// ------------------------------------------------------------------ verification

#[derive(Debug, Default)]
struct Report {
    instances: usize,
    children: usize,
    tasks: usize,
    started: usize,
    executions: usize,
    rerun_tasks: usize,
    max_runs: usize,
    seen_checked: usize,
    prefixes_checked: usize,
    events_acked: usize,
    events_reraised: usize,
    events_delivered_twice: usize,
    executions_by_continue_as_new: usize,
    timers: usize,
    ups: usize,
    torn: usize,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = self;
        writeln!(
            f,
            "verified {} instances (+{} sub-orchestrations), {} timers fired, {} executions of \
             continue-as-new instances; {} child starts, {} torn log lines",
            r.instances, r.children, r.timers, r.executions_by_continue_as_new, r.ups, r.torn
        )?;
        writeln!(
            f,
            "activities: {} tasks; {} executions started, {} of them cut short by a kill; {} \
             finished, {} of them re-runs after a kill before the result was durable ({} tasks, \
             at most {} finished runs of one)",
            r.tasks,
            r.started,
            r.started.saturating_sub(r.executions),
            r.executions,
            r.executions - r.tasks,
            r.rerun_tasks,
            r.max_runs
        )?;
        writeln!(
            f,
            "durable facts re-checked: {} completions seen by a child, {} history prefixes",
            r.seen_checked, r.prefixes_checked
        )?;
        write!(
            f,
            "events: {} acknowledged, {} re-raised after a kill between raise and ack, {} of \
             those delivered twice",
            r.events_acked, r.events_reraised, r.events_delivered_twice
        )
    }
}

/// Checks the final state. The durable facts the children logged are checked first, so that
/// if the final run hung (`finished` is an error), the failure says what was lost.
fn verify(dir: &Path, plan: &[Planned], view: &LogView, finished: Result<(), String>) -> Report {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let store = RedbStore::open(dir.join("store.redb")).expect("the parent opens the file");
        let mut report = Report {
            ups: view.segments.len(),
            started: view.starts,
            events_acked: view.acks.len(),
            torn: view.torn,
            ..Report::default()
        };
        let all = store
            .query_instances(&InstanceQuery::new().page_size(10_000))
            .await
            .expect("query");
        let mut finals = HashMap::new();
        let mut unfinished = Vec::new();
        for r in &all.instances {
            let h = store.read_history(&r.instance_id).await.expect("read");
            if r.status != RuntimeStatus::Completed {
                let shown = durable_core::history::pretty(&h);
                unfinished.push(format!("{} {:?}\n{shown}", r.instance_id, r.status));
            }
            finals.insert(r.instance_id.as_str().to_owned(), (r.execution, h));
        }
        check_log_against(&finals, view, &mut report);
        if let Err(e) = finished {
            let mut acks: Vec<_> = view.acks.iter().collect();
            acks.sort();
            panic!(
                "{e}\nacknowledged events: {acks:?}\nunfinished instances:\n{}",
                unfinished.join("\n")
            );
        }
        let mut checked = 0;
        for p in plan {
            let (execution, h, children) = check_instance(&store, &p.id, &p.expected()).await;
            checked += 1;
            report.instances += 1;
            if let Kind::Nested(n) = &p.kind {
                assert_eq!(
                    children.len(),
                    n.chains.len(),
                    "{}: one child per chain",
                    p.id
                );
                for (child, c) in children.iter().zip(&n.chains) {
                    check_instance(&store, child, &chain_expected(c).into()).await;
                    checked += 1;
                    report.children += 1;
                }
            }
            if let Kind::Events(e) = &p.kind {
                check_events(&p.id, e, &h, view, &mut report);
            }
            if let Kind::Generations(g) = &p.kind {
                assert_eq!(
                    execution,
                    g.k + 1,
                    "{}: one execution per continue-as-new",
                    p.id
                );
                report.executions_by_continue_as_new += execution as usize;
            }
        }
        assert_eq!(
            all.instances.len(),
            checked,
            "no instance besides the planned ones and their children"
        );
        for (id, (_, h)) in &finals {
            check_history(id, h, view, &mut report);
        }
        report
    })
}

/// Checks record and output; returns the execution number, the history and the
/// sub-orchestration ids in order.
async fn check_instance(
    store: &RedbStore,
    id: &str,
    expected: &serde_json::Value,
) -> (u32, Vec<HistoryEvent>, Vec<String>) {
    let instance = InstanceId::new(id).expect("valid id");
    let record = store
        .read_instance(&instance)
        .await
        .expect("read")
        .unwrap_or_else(|| panic!("{id} was lost"));
    let history = store.read_history(&instance).await.expect("read");
    assert_eq!(
        record.status,
        RuntimeStatus::Completed,
        "{id}: {record:?}\n{}",
        durable_core::history::pretty(&history)
    );
    let output: serde_json::Value =
        serde_json::from_str(record.output.as_deref().expect("an output")).expect("JSON output");
    assert_eq!(&output, expected, "{id}: output");
    let children = history
        .iter()
        .filter_map(|e| match &e.event {
            Event::SubOrchestrationCreated { instance_id, .. } => {
                Some(instance_id.as_str().to_owned())
            }
            _ => None,
        })
        .collect();
    (record.execution, history, children)
}

/// Each step once: every scheduling seq once, every completion once and after its schedule,
/// one start and one end.
fn check_history(id: &str, h: &[HistoryEvent], view: &LogView, report: &mut Report) {
    let pretty = || durable_core::history::pretty(h);
    for (i, e) in h.iter().enumerate() {
        assert_eq!(
            e.index,
            i as u64,
            "{id}: history indices are contiguous\n{}",
            pretty()
        );
    }
    let kinds = |k: &str| h.iter().filter(|e| e.event.kind() == k).count();
    let started_at = h.iter().position(|e| e.event.kind() == "ExecutionStarted");
    let first_action = h.iter().position(|e| {
        !matches!(
            e.event,
            Event::OrchestratorStarted | Event::ExecutionStarted { .. }
        )
    });
    assert!(
        started_at < first_action,
        "{id}: starts before it acts\n{}",
        pretty()
    );
    assert_eq!(kinds("ExecutionStarted"), 1, "{id}\n{}", pretty());
    assert_eq!(kinds("ExecutionCompleted"), 1, "{id}\n{}", pretty());
    assert_eq!(
        h.last().map(|e| e.event.kind()),
        Some("ExecutionCompleted"),
        "{id}\n{}",
        pretty()
    );
    assert_eq!(
        kinds("TaskFailed") + kinds("SubOrchestrationFailed"),
        0,
        "{id}\n{}",
        pretty()
    );

    let mut opened = BTreeSet::new();
    let mut done = BTreeSet::new();
    for e in h {
        let (seq, opens) = match &e.event {
            Event::TaskScheduled { seq, .. }
            | Event::TimerCreated { seq, .. }
            | Event::SubOrchestrationCreated { seq, .. } => (*seq, true),
            Event::TaskCompleted { seq, .. }
            | Event::TimerFired { seq, .. }
            | Event::SubOrchestrationCompleted { seq, .. } => (*seq, false),
            _ => continue,
        };
        if opens {
            assert!(
                opened.insert(seq),
                "{id}: action {seq} scheduled twice\n{}",
                pretty()
            );
        } else {
            assert!(
                opened.contains(&seq),
                "{id}: completion of unscheduled {seq}\n{}",
                pretty()
            );
            assert!(
                done.insert(seq),
                "{id}: action {seq} completed twice\n{}",
                pretty()
            );
        }
        if let Event::TaskCompleted { seq, result } = &e.event {
            let runs = view
                .runs
                .get(&(id.to_owned(), *seq))
                .map_or(&[][..], Vec::as_slice);
            assert!(
                runs.iter().any(|(_, r)| r == result),
                "{id}: the result of task {seq} ({result}) comes from no logged execution: {runs:?}"
            );
            report.tasks += 1;
            report.executions += runs.len();
            report.max_runs = report.max_runs.max(runs.len());
            if runs.len() > 1 {
                report.rerun_tasks += 1;
            }
        }
    }
    assert_eq!(opened, done, "{id}: every action completed\n{}", pretty());
    report.timers += kinds("TimerFired");
}

/// Every acknowledged event is in the history; an event raised once is delivered once.
fn check_events(id: &str, e: &EventsIn, h: &[HistoryEvent], view: &LogView, report: &mut Report) {
    for j in 0..e.k {
        let name = format!("e{j}");
        let delivered: Vec<&str> = h
            .iter()
            .filter_map(|ev| match &ev.event {
                Event::EventRaised { name: n, input } if *n == name => Some(input.as_str()),
                _ => None,
            })
            .collect();
        let key = (id.to_owned(), j);
        let attempts = view.raises.get(&key).copied().unwrap_or(0) as usize;
        assert!(
            !delivered.is_empty(),
            "{id}: event {name} lost (acked: {})",
            view.acks.contains(&key)
        );
        assert!(attempts >= 1, "{id}: {name} delivered but never raised");
        assert!(
            delivered.len() <= attempts,
            "{id}: {name} raised {attempts} times, delivered {} times",
            delivered.len()
        );
        let value = event_value(id, j).to_string();
        assert!(
            delivered.iter().all(|d| *d == value),
            "{id}: {name} payload {delivered:?}"
        );
        if attempts > 1 {
            report.events_reraised += 1;
            if delivered.len() > 1 {
                report.events_delivered_twice += 1;
            }
        }
    }
}

/// What a child saw as durable is in the final state, and no completed task ran again.
fn check_log_against(
    finals: &HashMap<String, (u32, Vec<HistoryEvent>)>,
    view: &LogView,
    report: &mut Report,
) {
    for ((id, seq), (line, result)) in &view.seen {
        let (_, h) = finals
            .get(id)
            .unwrap_or_else(|| panic!("{id} seen by a child, now gone"));
        let kept = h.iter().any(|e| {
            matches!(&e.event, Event::TaskCompleted { seq: s, result: r } if s == seq && r == result)
        });
        assert!(
            kept,
            "{id}: completion of task {seq} ({result}), seen durable, was lost"
        );
        let runs = view
            .runs
            .get(&(id.clone(), *seq))
            .map_or(&[][..], Vec::as_slice);
        let late: Vec<usize> = runs
            .iter()
            .filter(|(l, _)| l > line)
            .map(|(l, _)| *l)
            .collect();
        assert!(
            late.is_empty(),
            "{id}: task {seq} ran {} more times after its completion was durable (log line {line}), \
             first at lines {:?}",
            late.len(),
            &late[..late.len().min(5)]
        );
        report.seen_checked += 1;
    }
    for (id, execution, len, hash) in &view.prefixes {
        let (last, h) = finals
            .get(id)
            .unwrap_or_else(|| panic!("{id} seen by a child, now gone"));
        assert!(
            execution <= last,
            "{id}: execution {execution} was seen, the file now holds execution {last}"
        );
        if execution < last {
            // An earlier execution, replaced by continue-as-new.
            continue;
        }
        assert!(
            h.len() >= *len,
            "{id}: history shrank from {len} to {}",
            h.len()
        );
        assert_eq!(
            history_hash(&h[..*len]),
            *hash,
            "{id}: the first {len} events changed"
        );
        report.prefixes_checked += 1;
    }
    for (id, j) in &view.acks {
        assert!(
            finals.contains_key(id),
            "{id}: acked event e{j} on a lost instance"
        );
    }
}

/// Truncated copies of the crash test's file: an error or a working store, never a panic.
fn truncated_copies_never_panic(dir: &Path, seed: u64) {
    let bytes = std::fs::read(dir.join("store.redb")).expect("read the store file");
    let mut rng = Rng::new(seed ^ 0x7A11);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut outcomes = Vec::new();
    for i in 0..6 {
        let cut = if i == 0 {
            0
        } else {
            rng.range(1, bytes.len() as u64 - 1) as usize
        };
        let path: PathBuf = dir.join(format!("truncated-{i}.redb"));
        std::fs::write(&path, &bytes[..cut]).expect("write a truncated copy");
        let outcome = match RedbStore::open(&path) {
            Err(StoreError::Backend(e)) => {
                assert!(!e.message().is_empty());
                "error"
            }
            Err(other) => panic!("truncated at {cut}: unexpected error {other:?}"),
            Ok(store) => {
                runtime.block_on(async {
                    let _ = store.query_instances(&InstanceQuery::new()).await;
                    let _ = store
                        .read_history(&InstanceId::new("w00-fan").expect("id"))
                        .await;
                });
                "opened"
            }
        };
        outcomes.push((cut, outcome));
    }
    println!("truncated copies of {} bytes: {outcomes:?}", bytes.len());
}

// ------------------------------------------------------------------ a file held by another process

/// In a hold child: opens the store, says so on stdout, holds it until stdin closes.
fn hold_main(path: &Path) {
    let store = RedbStore::open(path).expect("the hold child opens the store");
    println!("HOLDING");
    std::io::stdout().flush().expect("flush");
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(store);
}

#[test]
fn file_held_by_another_process_is_refused() {
    if let Some(path) = std::env::var_os(ENV_HOLD) {
        hold_main(Path::new(&path));
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("store.redb");
    drop(RedbStore::open(&path).expect("create the store"));
    let mut child = Command::new(std::env::current_exe().expect("current exe"))
        .args(["--exact", HOLD_TEST, "--nocapture", "--test-threads=1"])
        .env(ENV_HOLD, &path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the hold child");
    let mut stdout = BufReader::new(child.stdout.take().expect("child stdout"));
    let held = (&mut stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("HOLDING"));
    assert!(held, "the hold child opened the store");

    let err = RedbStore::open(&path).expect_err("a file open in another process is refused");
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    // redb's own error stays reachable under the message.
    let source =
        std::error::Error::source(&err).and_then(|s| s.downcast_ref::<redb::DatabaseError>());
    assert!(
        matches!(source, Some(redb::DatabaseError::DatabaseAlreadyOpen)),
        "{err:?}"
    );
    assert!(
        msg.contains("already open") && msg.contains("store.redb"),
        "{msg}"
    );

    drop(child.stdin.take());
    // Keep reading so the child never writes to a closed pipe.
    std::io::copy(&mut stdout, &mut std::io::sink()).expect("drain the child's stdout");
    assert!(child.wait().expect("reap the hold child").success());
    // Released with the other process: opens again.
    drop(RedbStore::open(&path).expect("opens once the other process has exited"));
}

// ------------------------------------------------------------------ what `open` creates and refuses

/// Issue 12, item 14: `RedbStore::open` creates a store only where there is no file, and
/// refuses, untouched, any file that is not a durable store; a creation that crashed leaves
/// only `<name>.creating`, which the next open discards.
mod issue12 {
    use super::*;

    fn creating(path: &Path) -> PathBuf {
        path.with_file_name(format!(
            "{}.creating",
            path.file_name().unwrap().to_string_lossy()
        ))
    }

    fn start(id: &str) -> durable_core::storage::NewInstance {
        durable_core::storage::NewInstance::new(
            InstanceId::new(id).unwrap(),
            "Job",
            "null".into(),
            durable_core::Timestamp::EPOCH,
        )
    }

    fn instance_count(store: &RedbStore) -> usize {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(store.query_instances(&InstanceQuery::new()))
            .unwrap()
            .instances
            .len()
    }

    fn add_instance(store: &RedbStore, id: &str) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(store.create_instance(start(id))).unwrap();
    }

    /// Refused with a `Backend` error naming the path; the file is left byte for byte.
    fn assert_refused(path: &Path, expect: &str) {
        let before = std::fs::read(path).unwrap();
        assert_refused_keeping(path, expect);
        assert!(
            std::fs::read(path).unwrap() == before,
            "the file is untouched"
        );
    }

    /// Refused with a `Backend` error naming the path, and nothing created beside it.
    fn assert_refused_keeping(path: &Path, expect: &str) {
        let err = RedbStore::open(path).expect_err("refused");
        let msg = err.to_string();
        assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
        assert!(
            msg.contains(&path.display().to_string()),
            "names the file: {msg}"
        );
        assert!(msg.contains(expect), "says why ({expect}): {msg}");
        assert!(!creating(path).exists(), "nothing is created beside it");
    }

    #[test]
    fn an_empty_file_is_refused_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        File::create(&path).unwrap();
        assert_refused(&path, "empty (0 bytes)");
        // Refused again: nothing changed by the first attempt.
        assert_refused(&path, "delete it to create a new store");
    }

    #[test]
    fn a_file_that_is_not_a_redb_database_is_refused_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.txt");
        std::fs::write(&path, "these are my notes, not a database\n".repeat(200)).unwrap();
        assert_refused(&path, "cannot open");
    }

    #[test]
    fn an_empty_redb_database_is_not_taken_for_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.redb");
        drop(redb::Database::create(&path).unwrap());
        // redb marks a database it opens for writing, so the bytes may change; what is in
        // it may not: still a redb database without tables.
        assert_refused_keeping(&path, "empty redb database, not a durable store");
        let db = redb::Database::open(&path).unwrap();
        let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
        assert_eq!(
            txn.list_tables().unwrap().count(),
            0,
            "no table was created"
        );
    }

    #[test]
    fn a_missing_file_is_created_and_then_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let store = RedbStore::open(&path).expect("created");
        assert!(path.exists());
        assert!(!creating(&path).exists(), "the creation name is gone");
        add_instance(&store, "kept");
        drop(store);
        let store = RedbStore::open(&path).expect("re-opened");
        assert_eq!(instance_count(&store), 1, "the data is still there");
    }

    /// Whatever a crashed creation left under the creation name — nothing written yet, a
    /// half-written header, a database not yet initialised, a complete store that was never
    /// moved into place — the next open discards it and creates an empty store at the path.
    #[test]
    fn leftovers_of_a_crashed_creation_are_discarded() {
        type Make = Box<dyn Fn(&Path)>;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let leftover = creating(&path);
        let leftovers: Vec<(&str, Make)> = vec![
            (
                "an empty file",
                Box::new(|p| drop(File::create(p).unwrap())),
            ),
            (
                "a torn header",
                Box::new(|p| std::fs::write(p, [0x72, 0x65, 0x64, 0x62, 0x1A]).unwrap()),
            ),
            (
                "an uninitialised redb database",
                Box::new(|p| drop(redb::Database::create(p).unwrap())),
            ),
            (
                "a complete store with data",
                Box::new(|p| {
                    let full = p.with_file_name("full.redb");
                    let store = RedbStore::open(&full).unwrap();
                    add_instance(&store, "stale");
                    drop(store);
                    std::fs::rename(&full, p).unwrap();
                }),
            ),
        ];
        for (what, make) in leftovers {
            make(&leftover);
            let store = RedbStore::open(&path)
                .unwrap_or_else(|e| panic!("creates the store over {what}: {e}"));
            assert_eq!(instance_count(&store), 0, "{what}: a new, empty store");
            assert!(!leftover.exists(), "{what}: the leftover is gone");
            drop(store);
            std::fs::remove_file(&path).unwrap();
        }
    }

    /// A creation under way in another process (it holds the creation file open) is not
    /// trampled: the open is refused until it is done.
    #[test]
    fn a_creation_under_way_elsewhere_is_not_trampled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let other = redb::Database::create(creating(&path)).unwrap();
        let err = RedbStore::open(&path).expect_err("refused while the other creation runs");
        assert!(err.to_string().contains("creating it right now"), "{err}");
        assert!(!path.exists(), "nothing is put at the path");
        drop(other);
        drop(RedbStore::open(&path).expect("created once the other is gone"));
    }

    /// A crash after the new store was linked into place but before its creation name was
    /// removed leaves two names of one store: opening it keeps the data and drops the
    /// second name.
    #[cfg(unix)]
    #[test]
    fn a_second_name_left_by_a_crash_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let store = RedbStore::open(&path).unwrap();
        add_instance(&store, "kept");
        drop(store);
        std::fs::hard_link(&path, creating(&path)).unwrap();
        let store = RedbStore::open(&path).unwrap();
        assert_eq!(instance_count(&store), 1);
        assert!(!creating(&path).exists());
    }
}
