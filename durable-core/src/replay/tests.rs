//! Unit tests of the pure replay executor.
//!
//! No tokio runtime and no store: histories are built by hand and [`Replayer`] is driven
//! directly. [`Sim`] runs every episode twice — on a cached replayer that lives across
//! episodes, and on a cold replayer rebuilt from the history so far — and requires both to
//! produce the same events, commands and outcome.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use super::{Command, EpisodeResult, Outcome, ReplayError, Replayer};
use crate::context::{Either, Limits, OrchestrationContext, select};
use crate::error::{ActivityError, FailureDetails, OrchestrationError, TaskError};
use crate::history::{self, CarriedEvent, Event, HistoryEvent, ParentRef, RuntimeStatus};
use crate::ids::{InstanceId, Timestamp};
use crate::registry::{Activity, ActivityContext, Orchestrator, OrchestratorFn, Registry};

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

const INSTANCE: &str = "inst-1";

/// `secs` seconds after a fixed, arbitrary start time.
fn at(secs: u64) -> Timestamp {
    Timestamp::from_unix_millis(1_700_000_000_000 + secs * 1_000)
}

fn instance() -> InstanceId {
    InstanceId::new(INSTANCE).expect("valid instance id")
}

/// The type-erased code the worker would hand to the replayer for `O`.
fn code<O: Orchestrator>() -> Arc<OrchestratorFn> {
    let mut registry = Registry::new();
    registry.add_orchestrator::<O>();
    let entry = registry.orchestrator(O::NAME).expect("just registered");
    Arc::clone(&entry.run)
}

fn replayer<O: Orchestrator>(limits: Limits) -> Replayer {
    Replayer::new(instance(), 1, O::NAME, code::<O>(), limits)
}

/// Runs one episode: `begin_episode`, every message, `finish_episode`. Returns what each
/// `handle_message` answered and the episode's result.
fn run_episode(
    r: &mut Replayer,
    now: Timestamp,
    messages: &[Event],
) -> (Vec<bool>, Result<EpisodeResult, ReplayError>) {
    r.begin_episode(now);
    let accepted = messages
        .iter()
        .map(|m| r.handle_message(m.clone()))
        .collect();
    (accepted, r.finish_episode())
}

/// One instance driven episode by episode, through a cached replayer and, for every episode,
/// a cold replayer that first replays the history recorded so far.
struct Sim {
    fresh: fn(Limits) -> Replayer,
    limits: Limits,
    cached: Replayer,
    history: Vec<HistoryEvent>,
}

impl Sim {
    fn new<O: Orchestrator>() -> Self {
        Self::with_limits::<O>(Limits::default())
    }

    fn with_limits<O: Orchestrator>(limits: Limits) -> Self {
        Self {
            fresh: replayer::<O>,
            cached: replayer::<O>(limits.clone()),
            limits,
            history: Vec::new(),
        }
    }

    /// Runs an episode on both replayers, asserts they agree, and appends the new events to
    /// the history.
    fn episode(
        &mut self,
        now: Timestamp,
        messages: &[Event],
    ) -> (Vec<bool>, Result<EpisodeResult, ReplayError>) {
        let (accepted, result) = run_episode(&mut self.cached, now, messages);

        let mut cold = (self.fresh)(self.limits.clone());
        if let Err(e) = cold.handle_history(&self.history) {
            panic!(
                "cold replay of the recorded history failed: {e}\n{}",
                history::pretty(&self.history)
            );
        }
        let (cold_accepted, cold_result) = run_episode(&mut cold, now, messages);
        assert_eq!(
            cold_accepted, accepted,
            "cold replay accepted other messages than the cached run"
        );
        assert_eq!(
            cold_result,
            result,
            "cold replay differs from the cached run; history so far:\n{}",
            history::pretty(&self.history)
        );

        if let Ok(r) = &result {
            for (i, e) in r.new_events.iter().enumerate() {
                assert_eq!(
                    e.index,
                    (self.history.len() + i) as u64,
                    "history indexes must be contiguous"
                );
            }
            self.history.extend(r.new_events.iter().cloned());
        }
        (accepted, result)
    }

    /// An episode expected to succeed with every message accepted.
    fn step(&mut self, now: Timestamp, messages: &[Event]) -> EpisodeResult {
        let (accepted, result) = self.episode(now, messages);
        assert!(
            accepted.iter().all(|a| *a),
            "a message was ignored: {accepted:?}"
        );
        result.unwrap_or_else(|e| panic!("episode failed: {e}"))
    }
}

fn start(input: &str) -> Event {
    start_with(input, None, None)
}

fn start_with(input: &str, version: Option<&str>, parent: Option<ParentRef>) -> Event {
    Event::ExecutionStarted {
        name: "ignored by the replayer".to_owned(),
        version: version.map(str::to_owned),
        input: input.to_owned(),
        parent,
        scheduled_start: None,
        carried: Vec::new(),
        trace_context: None,
    }
}

fn done(seq: u64, result: &str) -> Event {
    Event::TaskCompleted {
        seq,
        result: result.to_owned(),
    }
}

fn fired(seq: u64, fire_at: Timestamp) -> Event {
    Event::TimerFired { seq, fire_at }
}

fn raised(name: &str, input: &str) -> Event {
    Event::EventRaised {
        name: name.to_owned(),
        input: input.to_owned(),
    }
}

fn kinds(events: &[HistoryEvent]) -> Vec<&'static str> {
    events.iter().map(|e| e.event.kind()).collect()
}

fn completed(output: &str) -> Outcome {
    Outcome::Completed(output.to_owned())
}

fn schedule(seq: u64, name: &str, input: &str) -> Command {
    Command::ScheduleActivity {
        seq,
        name: name.to_owned(),
        input: input.to_owned(),
        attempt: 1,
        timeout: None,
        heartbeat_timeout: None,
        heartbeat: None,
        local: false,
    }
}

/// The source location recorded for action `seq` in `events`, as the error messages print it.
fn location_of(events: &[HistoryEvent], seq: u64) -> String {
    events
        .iter()
        .find_map(|e| match &e.event {
            Event::TaskScheduled {
                seq: s, location, ..
            }
            | Event::TimerCreated {
                seq: s, location, ..
            }
            | Event::SubOrchestrationCreated {
                seq: s, location, ..
            }
            | Event::EventSent {
                seq: s, location, ..
            } if *s == seq => location.as_ref().map(ToString::to_string),
            _ => None,
        })
        .unwrap_or_else(|| {
            panic!(
                "no action #{seq} with a location in\n{}",
                history::pretty(events)
            )
        })
}

/// History of the first episode of `O` started with `input`.
fn first_episode<O: Orchestrator>(input: &str) -> Vec<HistoryEvent> {
    let mut r = replayer::<O>(Limits::default());
    let (_, result) = run_episode(&mut r, at(0), &[start(input)]);
    result.expect("first episode").new_events
}

/// Replays `history` against `O` on a fresh replayer.
fn replay<O: Orchestrator>(history: &[HistoryEvent]) -> (Replayer, Result<(), ReplayError>) {
    let mut r = replayer::<O>(Limits::default());
    let result = r.handle_history(history);
    (r, result)
}

// ---------------------------------------------------------------------------------------------
// Activities: only their names and types matter; the replayer never runs them.
// ---------------------------------------------------------------------------------------------

macro_rules! activity {
    ($ty:ident, $name:literal, $input:ty => $output:ty) => {
        struct $ty;

        impl Activity for $ty {
            const NAME: &'static str = $name;
            type Input = $input;
            type Output = $output;
            type Error = ActivityError;

            fn run(
                &self,
                _ctx: ActivityContext,
                _input: $input,
            ) -> impl Future<Output = Result<$output, ActivityError>> + Send {
                std::future::ready(Err(ActivityError::new(
                    "activities never run in replay tests",
                )))
            }
        }
    };
}

activity!(AddOne, "add_one", i64 => i64);
activity!(Double, "double", i64 => i64);
activity!(Work, "work", u64 => u64);
activity!(Reserve, "reserve", i64 => i64);
activity!(Charge, "charge", i64 => i64);

// ---------------------------------------------------------------------------------------------
// 1, 2. Chaining; cold replay equals the cached run
// ---------------------------------------------------------------------------------------------

struct Chain;

impl Orchestrator for Chain {
    const NAME: &'static str = "chain";
    type Input = i64;
    type Output = i64;
    type Error = OrchestrationError;

    async fn run(ctx: OrchestrationContext, x: i64) -> Result<i64, OrchestrationError> {
        let a = ctx.call(AddOne, x).await?;
        let b = ctx.call(Double, a).await?;
        Ok(b)
    }
}

#[test]
fn chaining_schedules_each_step_with_the_previous_output() {
    let mut sim = Sim::new::<Chain>();

    let ep1 = sim.step(at(0), &[start("5")]);
    assert_eq!(
        kinds(&ep1.new_events),
        ["OrchestratorStarted", "ExecutionStarted", "TaskScheduled"]
    );
    assert_eq!(ep1.new_events[0].timestamp, at(0));
    match &ep1.new_events[2].event {
        Event::TaskScheduled {
            seq: 0,
            name,
            input,
            location: Some(loc),
            ..
        } => {
            assert_eq!((name.as_str(), input.as_str()), ("add_one", "5"));
            assert_eq!(loc.file, file!());
        }
        other => panic!("expected TaskScheduled #0, got {other:?}"),
    }
    assert_eq!(ep1.commands, [schedule(0, "add_one", "5")]);
    assert_eq!(ep1.outcome, None);
    assert!(!ep1.suspended);

    let ep2 = sim.step(at(1), &[done(0, "6")]);
    assert_eq!(
        kinds(&ep2.new_events),
        ["OrchestratorStarted", "TaskCompleted", "TaskScheduled"]
    );
    assert_eq!(ep2.commands, [schedule(1, "double", "6")]);
    assert_eq!(ep2.outcome, None);

    let ep3 = sim.step(at(2), &[done(1, "12")]);
    assert_eq!(
        kinds(&ep3.new_events),
        ["OrchestratorStarted", "TaskCompleted", "ExecutionCompleted"]
    );
    assert_eq!(
        ep3.new_events[2].event,
        Event::ExecutionCompleted {
            status: RuntimeStatus::Completed,
            output: Some("12".to_owned()),
            failure: None,
        }
    );
    assert!(ep3.commands.is_empty());
    assert_eq!(ep3.outcome, Some(completed("12")));

    assert_eq!(sim.history.len(), 9);
    assert_eq!(sim.cached.history_len(), 9);
    assert!(sim.cached.is_finished());
}

#[test]
fn failed_activity_surfaces_as_task_error_and_fails_the_orchestration() {
    let mut sim = Sim::new::<Chain>();
    sim.step(at(0), &[start("5")]);
    let failure = FailureDetails::new("Timeout", "upstream timed out");
    let ep = sim.step(
        at(1),
        &[Event::TaskFailed {
            seq: 0,
            failure: failure.clone(),
            heartbeat: None,
        }],
    );
    let Some(Outcome::Failed(f)) = ep.outcome else {
        panic!("expected a failure, got {:?}", ep.outcome);
    };
    // The failure names the task and keeps the activity's own failure inside.
    assert_eq!(f.error_type, "TaskFailed");
    assert_eq!(
        f.message,
        "activity 'add_one' (task 0) failed: upstream timed out"
    );
    assert_eq!(f.inner.as_deref(), Some(&failure));
    assert_eq!(
        ep.new_events.last().map(|e| &e.event),
        Some(&Event::ExecutionCompleted {
            status: RuntimeStatus::Failed,
            output: None,
            failure: Some(f.clone()),
        })
    );
}

/// Exercises activities, a timer, external events and custom status in one run.
struct Mixed;

impl Orchestrator for Mixed {
    const NAME: &'static str = "mixed";
    type Input = i64;
    type Output = (i64, String, Timestamp);
    type Error = OrchestrationError;

    async fn run(ctx: OrchestrationContext, x: i64) -> Result<Self::Output, OrchestrationError> {
        ctx.set_custom_status("starting")?;
        let a = ctx.call(AddOne, x).await?;
        ctx.sleep(Duration::from_secs(60)).await;
        ctx.set_custom_status(&format!("slept, a = {a}"))?;
        let name: String = ctx.wait_for_event("name").await?;
        let b = ctx.call(Double, a).await?;
        Ok((b, name, ctx.now()))
    }
}

#[test]
fn cold_replay_equals_cached_run_at_every_point() {
    // `Sim` compares cached and cold at every episode; this test walks a history that has
    // every kind of step, then checks a full cold replay.
    let mut sim = Sim::new::<Mixed>();
    let ep1 = sim.step(at(0), &[start("1")]);
    assert_eq!(ep1.commands, [schedule(0, "add_one", "1")]);
    let ep2 = sim.step(at(5), &[done(0, "2"), raised("noise", "0")]);
    assert_eq!(
        ep2.commands,
        [Command::CreateTimer {
            seq: 1,
            fire_at: at(65)
        }]
    );
    let ep3 = sim.step(at(70), &[fired(1, at(65))]);
    assert!(ep3.commands.is_empty());
    assert_eq!(ep3.custom_status.as_deref(), Some("\"slept, a = 2\""));
    let ep4 = sim.step(at(80), &[raised("name", "\"ada\"")]);
    assert_eq!(ep4.commands, [schedule(2, "double", "2")]);
    let ep5 = sim.step(at(90), &[done(2, "4")]);
    let expected = format!("[4,\"ada\",{}]", at(90).as_unix_millis());
    assert_eq!(ep5.outcome, Some(completed(&expected)));

    // Replaying the whole history rebuilds the finished state without new events.
    let (mut cold, replayed) = replay::<Mixed>(&sim.history);
    replayed.expect("full history replays");
    assert!(cold.is_finished());
    assert_eq!(cold.history_len(), sim.history.len() as u64);
    assert_eq!(cold.stats().events_replayed, sim.history.len() as u64);
    let (_, result) = run_episode(&mut cold, at(100), &[]);
    let result = result.expect("finished replayer");
    assert!(result.new_events.is_empty());
    assert!(result.commands.is_empty());
    assert_eq!(result.outcome, Some(completed(&expected)));
    assert_eq!(result.custom_status.as_deref(), Some("\"slept, a = 2\""));
}

#[test]
fn history_round_trips_through_json_and_still_replays() {
    let mut sim = Sim::new::<Chain>();
    sim.step(at(0), &[start("1")]);
    sim.step(at(1), &[done(0, "2")]);
    let json = history::to_json(&sim.history);
    let imported = history::from_json(&json).expect("valid JSON");
    assert_eq!(imported, sim.history);
    let (mut cold, replayed) = replay::<Chain>(&imported);
    replayed.expect("imported history replays");
    let (_, result) = run_episode(&mut cold, at(2), &[done(1, "4")]);
    assert_eq!(result.expect("episode").outcome, Some(completed("4")));
}

// ---------------------------------------------------------------------------------------------
// 3. Fan-out of 10,000 activities is linear
// ---------------------------------------------------------------------------------------------

struct FanOut;

impl Orchestrator for FanOut {
    const NAME: &'static str = "fan_out";
    type Input = u64;
    type Output = u64;
    type Error = OrchestrationError;

    async fn run(ctx: OrchestrationContext, n: u64) -> Result<u64, OrchestrationError> {
        let tasks: Vec<_> = (0..n).map(|i| ctx.call(Work, i)).collect();
        let mut sum = 0;
        for r in ctx.when_all(tasks).await {
            sum += r?;
        }
        Ok(sum)
    }
}

/// `0..n` in a deterministic pseudo-random order (xorshift + Fisher–Yates).
fn shuffled(n: u64, mut seed: u64) -> Vec<u64> {
    let mut v: Vec<u64> = (0..n).collect();
    for i in (1..v.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let j = (seed % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}

#[test]
fn fan_out_of_ten_thousand_is_linear_cached_and_replayed() {
    const N: u64 = 10_000;
    let mut cached = replayer::<FanOut>(Limits::default());
    let mut recorded = Vec::new();

    let (_, first) = run_episode(&mut cached, at(0), &[start(&N.to_string())]);
    let first = first.expect("first episode");
    assert_eq!(
        first.commands.len(),
        N as usize,
        "all activities are scheduled in one episode"
    );
    for (i, c) in first.commands.iter().enumerate() {
        let i = i as u64;
        assert_eq!(*c, schedule(i, "work", &i.to_string()));
    }
    assert_eq!(first.new_events.len(), N as usize + 2);
    recorded.extend(first.new_events);

    // Completions arrive in a shuffled order: most one at a time in their own episode, the
    // rest in a few large batches.
    let order = shuffled(N, 0x9E37_79B9_7F4A_7C15);
    let (singles, batched) = order.split_at(200);
    let mut episodes: Vec<&[u64]> = singles.chunks(1).collect();
    episodes.extend(batched.chunks(2_450));
    let mut outcome = None;
    for (t, seqs) in (1..).zip(&episodes) {
        let messages: Vec<Event> = seqs
            .iter()
            .map(|&s| done(s, &(2 * s).to_string()))
            .collect();
        let (accepted, result) = run_episode(&mut cached, at(t), &messages);
        assert!(accepted.iter().all(|a| *a));
        let result = result.expect("completion episode");
        assert!(result.commands.is_empty());
        outcome = result.outcome;
        recorded.extend(result.new_events);
    }
    let sum = N * (N - 1);
    assert_eq!(outcome, Some(completed(&sum.to_string())));

    let stats = cached.stats();
    assert!(
        stats.task_polls <= 3 * N,
        "cached run is not linear: {stats:?}"
    );
    assert!(
        stats.polls <= 2 * N + 10,
        "cached run is not linear: {stats:?}"
    );
    assert_eq!(stats.messages, N + 1);

    // 2 + N scheduled, one OrchestratorStarted per episode, N completions, the end.
    assert_eq!(recorded.len() as u64, 2 + N + episodes.len() as u64 + N + 1);
    let (cold, replayed) = replay::<FanOut>(&recorded);
    replayed.expect("the 20k-event history replays");
    assert!(cold.is_finished());
    let stats = cold.stats();
    assert_eq!(stats.events_replayed, recorded.len() as u64);
    assert!(stats.task_polls <= 3 * N, "replay is not linear: {stats:?}");
    assert!(stats.polls <= 2 * N + 10, "replay is not linear: {stats:?}");
}

// ---------------------------------------------------------------------------------------------
// 4. Timers and time
// ---------------------------------------------------------------------------------------------

struct Nap;

impl Orchestrator for Nap {
    const NAME: &'static str = "nap";
    type Input = u64;
    type Output = (Timestamp, Timestamp);
    type Error = OrchestrationError;

    async fn run(ctx: OrchestrationContext, secs: u64) -> Result<Self::Output, OrchestrationError> {
        let before = ctx.now();
        ctx.sleep(Duration::from_secs(secs)).await;
        Ok((before, ctx.now()))
    }
}

#[test]
fn sleep_creates_a_timer_from_episode_time_and_now_is_the_episode_time() {
    let mut sim = Sim::new::<Nap>();
    let ep1 = sim.step(at(10), &[start("60")]);
    assert_eq!(
        ep1.commands,
        [Command::CreateTimer {
            seq: 0,
            fire_at: at(70)
        }]
    );
    assert!(matches!(
        &ep1.new_events[2].event,
        Event::TimerCreated { seq: 0, fire_at, location: Some(loc) } if *fire_at == at(70) && loc.file == file!()
    ));

    // Delivered late: `now` after the await is the time of the episode that delivered it.
    let ep2 = sim.step(at(75), &[fired(0, at(70))]);
    assert_eq!(
        kinds(&ep2.new_events),
        ["OrchestratorStarted", "TimerFired", "ExecutionCompleted"]
    );
    assert_eq!(ep2.new_events[0].timestamp, at(75));
    let expected = format!("[{},{}]", at(10).as_unix_millis(), at(75).as_unix_millis());
    assert_eq!(ep2.outcome, Some(completed(&expected)));
}

#[test]
fn episode_time_never_goes_backwards() {
    let mut sim = Sim::new::<Nap>();
    sim.step(at(100), &[start("1")]);
    // The worker's clock stepped back; the episode keeps the later time.
    let ep2 = sim.step(at(50), &[fired(0, at(101))]);
    assert_eq!(ep2.new_events[0].timestamp, at(100));
    let expected = format!(
        "[{},{}]",
        at(100).as_unix_millis(),
        at(100).as_unix_millis()
    );
    assert_eq!(ep2.outcome, Some(completed(&expected)));
}

// ---------------------------------------------------------------------------------------------
// 5. External events
// ---------------------------------------------------------------------------------------------

struct WorkThenWait;

impl Orchestrator for WorkThenWait {
    const NAME: &'static str = "work_then_wait";
    type Input = i64;
    type Output = i64;
    type Error = OrchestrationError;

    async fn run(ctx: OrchestrationContext, x: i64) -> Result<i64, OrchestrationError> {
        let a = ctx.call(AddOne, x).await?;
        let approval: i64 = ctx.wait_for_event("approve").await?;
        Ok(a + approval)
    }
}

#[test]
fn event_raised_before_the_wait_is_buffered() {
    let mut sim = Sim::new::<WorkThenWait>();
    sim.step(at(0), &[start("1")]);
    // The event arrives while the code still waits for the activity.
    let ep2 = sim.step(at(1), &[raised("approve", "10")]);
    assert_eq!(
        kinds(&ep2.new_events),
        ["OrchestratorStarted", "EventRaised"]
    );
    assert_eq!(ep2.outcome, None);
    let ep3 = sim.step(at(2), &[done(0, "2")]);
    assert_eq!(ep3.outcome, Some(completed("12")));
}

#[test]
fn event_raised_after_the_wait_completes_it() {
    let mut sim = Sim::new::<WorkThenWait>();
    sim.step(at(0), &[start("1")]);
    let ep2 = sim.step(at(1), &[done(0, "2")]);
    assert_eq!(ep2.outcome, None);
    assert!(ep2.commands.is_empty());
    let ep3 = sim.step(at(2), &[raised("approve", "10")]);
    assert_eq!(ep3.outcome, Some(completed("12")));
}

struct TwoWaiters;

impl Orchestrator for TwoWaiters {
    const NAME: &'static str = "two_waiters";
    type Input = ();
    type Output = (i64, i64);
    type Error = OrchestrationError;

    async fn run(ctx: OrchestrationContext, (): ()) -> Result<(i64, i64), OrchestrationError> {
        let older = ctx.wait_for_event::<i64>("x");
        let newer = ctx.wait_for_event::<i64>("x");
        // Awaited newest first: the oldest waiter is still served first.
        let b = newer.await?;
        let a = older.await?;
        Ok((a, b))
    }
}

#[test]
fn two_waiters_on_one_name_are_served_oldest_first() {
    let mut sim = Sim::new::<TwoWaiters>();
    sim.step(at(0), &[start("null")]);
    let ep2 = sim.step(at(1), &[raised("x", "1")]);
    assert_eq!(
        ep2.outcome, None,
        "the first event goes to the older waiter"
    );
    let ep3 = sim.step(at(2), &[raised("x", "2")]);
    assert_eq!(ep3.outcome, Some(completed("[1,2]")));
}

struct ThreeInOrder;

impl Orchestrator for ThreeInOrder {
    const NAME: &'static str = "three_in_order";
    type Input = ();
    type Output = Vec<i64>;
    type Error = OrchestrationError;

    async fn run(ctx: OrchestrationContext, (): ()) -> Result<Vec<i64>, OrchestrationError> {
        ctx.call(AddOne, 0).await?;
        let mut out = Vec::new();
        for _ in 0..3 {
            out.push(ctx.wait_for_event::<i64>("x").await?);
        }
        Ok(out)
    }
}

#[test]
fn events_of_one_name_are_consumed_in_arrival_order() {
    let mut sim = Sim::new::<ThreeInOrder>();
    sim.step(at(0), &[start("null")]);
    let ep2 = sim.step(
        at(1),
        &[
            raised("x", "1"),
            raised("y", "99"),
            raised("x", "2"),
            raised("x", "3"),
            done(0, "1"),
        ],
    );
    assert_eq!(ep2.outcome, Some(completed("[1,2,3]")));
}

/// Drops a waiter that already received its event without consuming it.
struct DropsClaim;

impl Orchestrator for DropsClaim {
    const NAME: &'static str = "drops_claim";
    type Input = ();
    type Output = (i64, i64);
    type Error = OrchestrationError;

    async fn run(ctx: OrchestrationContext, (): ()) -> Result<(i64, i64), OrchestrationError> {
        let held = ctx.wait_for_event::<i64>("x");
        ctx.call(AddOne, 0).await?;
        drop(held);
        let a: i64 = ctx.wait_for_event("x").await?;
        let b: i64 = ctx.wait_for_event("x").await?;
        Ok((a, b))
    }
}

#[test]
fn event_released_by_a_dropped_waiter_stays_ahead_of_later_ones() {
    let mut sim = Sim::new::<DropsClaim>();
    sim.step(at(0), &[start("null")]);
    let ep2 = sim.step(at(1), &[raised("x", "1"), raised("x", "2"), done(0, "1")]);
    assert_eq!(ep2.outcome, Some(completed("[1,2]")));
}

/// `wait_for_event_timeout`, then an activity, then a plain wait on the same name.
struct Patience;

impl Orchestrator for Patience {
    const NAME: &'static str = "patience";
    type Input = ();
    type Output = (i64, i64, i64);
    type Error = OrchestrationError;

    async fn run(ctx: OrchestrationContext, (): ()) -> Result<Self::Output, OrchestrationError> {
        let first = match ctx
            .wait_for_event_timeout::<i64>("x", Duration::from_secs(30))
            .await
        {
            Ok(v) => v,
            Err(TaskError::Timeout) => -1,
            Err(e) => return Err(e.into()),
        };
        let a = ctx.call(AddOne, first).await?;
        let second: i64 = ctx.wait_for_event("x").await?;
        Ok((first, a, second))
    }
}

#[test]
fn timer_wins_the_race_and_the_loser_releases_its_claim() {
    let mut sim = Sim::new::<Patience>();
    let ep1 = sim.step(at(0), &[start("null")]);
    assert_eq!(
        ep1.commands,
        [Command::CreateTimer {
            seq: 0,
            fire_at: at(30)
        }]
    );
    let ep2 = sim.step(at(30), &[fired(0, at(30))]);
    assert_eq!(ep2.commands, [schedule(1, "add_one", "-1")], "timed out");
    // Raised after the timeout, before the next wait: buffered, not swallowed by the loser.
    let ep3 = sim.step(at(31), &[raised("x", "5")]);
    assert_eq!(ep3.outcome, None);
    let ep4 = sim.step(at(32), &[done(1, "0")]);
    assert_eq!(ep4.outcome, Some(completed("[-1,0,5]")));
}

#[test]
fn event_wins_the_race_and_the_late_timer_is_harmless() {
    let mut sim = Sim::new::<Patience>();
    sim.step(at(0), &[start("null")]);
    let ep2 = sim.step(at(10), &[raised("x", "7")]);
    assert_eq!(ep2.commands, [schedule(1, "add_one", "7")]);
    // The losing timer still fires; it is recorded and changes nothing.
    let ep3 = sim.step(at(30), &[fired(0, at(30)), done(1, "8")]);
    assert_eq!(
        kinds(&ep3.new_events),
        ["OrchestratorStarted", "TimerFired", "TaskCompleted"]
    );
    assert!(ep3.commands.is_empty());
    let ep4 = sim.step(at(31), &[raised("x", "9")]);
    assert_eq!(ep4.outcome, Some(completed("[7,8,9]")));
}

/// `select(timer, event)` then a plain wait: either way, the next event reaches the next
/// waiter.
struct SelectRace;

impl Orchestrator for SelectRace {
    const NAME: &'static str = "select_race";
    type Input = ();
    type Output = (String, i64);
    type Error = OrchestrationError;

    async fn run(ctx: OrchestrationContext, (): ()) -> Result<Self::Output, OrchestrationError> {
        let first = match select(
            ctx.sleep(Duration::from_secs(10)),
            ctx.wait_for_event::<i64>("x"),
        )
        .await
        {
            Either::Left(()) => "timer".to_owned(),
            Either::Right(v) => format!("event {}", v?),
        };
        let next: i64 = ctx.wait_for_event("x").await?;
        Ok((first, next))
    }
}

#[test]
fn select_timer_wins_then_next_event_goes_to_next_waiter() {
    let mut sim = Sim::new::<SelectRace>();
    sim.step(at(0), &[start("null")]);
    let ep2 = sim.step(at(10), &[fired(0, at(10)), raised("x", "3")]);
    assert_eq!(ep2.outcome, Some(completed("[\"timer\",3]")));
}

#[test]
fn select_event_wins_then_next_event_goes_to_next_waiter() {
    let mut sim = Sim::new::<SelectRace>();
    sim.step(at(0), &[start("null")]);
    let ep2 = sim.step(at(1), &[raised("x", "3")]);
    assert_eq!(ep2.outcome, None);
    let ep3 = sim.step(at(10), &[fired(0, at(10)), raised("x", "4")]);
    assert_eq!(ep3.outcome, Some(completed("[\"event 3\",4]")));
}

// ---------------------------------------------------------------------------------------------
// 6. Non-determinism
// ---------------------------------------------------------------------------------------------

/// Version 1 of `order`: reserve, then finish.
struct OrderV1;

impl Orchestrator for OrderV1 {
    const NAME: &'static str = "order";
    type Input = i64;
    type Output = i64;
    type Error = OrchestrationError;

    async fn run(ctx: OrchestrationContext, x: i64) -> Result<i64, OrchestrationError> {
        Ok(ctx.call(Reserve, x).await?)
    }
}

/// `order` now charges where it used to reserve.
struct OrderRenamed;

impl Orchestrator for OrderRenamed {
    const NAME: &'static str = "order";
    type Input = i64;
    type Output = i64;
    type Error = OrchestrationError;

    async fn run(ctx: OrchestrationContext, x: i64) -> Result<i64, OrchestrationError> {
        Ok(ctx.call(Charge, x).await?)
    }
}

/// `order` now sleeps where it used to reserve.
struct OrderTimer;

impl Orchestrator for OrderTimer {
    const NAME: &'static str = "order";
    type Input = i64;
    type Output = i64;
    type Error = OrchestrationError;

    async fn run(ctx: OrchestrationContext, x: i64) -> Result<i64, OrchestrationError> {
        ctx.sleep(Duration::from_secs(1)).await;
        Ok(x)
    }
}

/// `order` now reserves and charges in parallel.
struct OrderTwoSteps;

impl Orchestrator for OrderTwoSteps {
    const NAME: &'static str = "order";
    type Input = i64;
    type Output = i64;
    type Error = OrchestrationError;

    async fn run(ctx: OrchestrationContext, x: i64) -> Result<i64, OrchestrationError> {
        let reserve = ctx.call(Reserve, x);
        let charge = ctx.call(Charge, x);
        Ok(reserve.await? + charge.await?)
    }
}

/// `order` now finishes without doing anything.
struct OrderNoop;

impl Orchestrator for OrderNoop {
    const NAME: &'static str = "order";
    type Input = i64;
    type Output = i64;
    type Error = OrchestrationError;

    async fn run(_ctx: OrchestrationContext, x: i64) -> Result<i64, OrchestrationError> {
        Ok(x)
    }
}

/// Asserts `err` is a non-determinism error of instance `inst-1`, orchestration `order`, with
/// exactly `detail`, and that it prints as such.
fn assert_nondeterminism(err: &ReplayError, detail: &str) {
    assert_eq!(
        *err,
        ReplayError::Nondeterminism {
            instance: INSTANCE.to_owned(),
            name: "order".to_owned(),
            detail: detail.to_owned(),
        }
    );
    assert_eq!(
        err.to_string(),
        format!("non-determinism in orchestration `order` (instance `{INSTANCE}`): {detail}")
    );
}

/// The error sticks: every later call reports it again and nothing is recorded.
fn assert_sticky(r: &mut Replayer, err: &ReplayError) {
    assert_eq!(r.finish_episode().as_ref(), Err(err));
    r.begin_episode(at(100));
    assert!(!r.handle_message(done(0, "1")));
    assert_eq!(r.finish_episode().as_ref(), Err(err));
    assert_eq!(r.handle_history(&[]).as_ref(), Err(err));
}

#[test]
fn nondeterminism_different_activity_names_both_sides() {
    let recorded = first_episode::<OrderV1>("1");
    let now = first_episode::<OrderRenamed>("1");
    let (mut r, result) = replay::<OrderRenamed>(&recorded);
    let err = result.expect_err("activity renamed");
    let detail = format!(
        "history step 2 recorded activity `reserve` (scheduled at {}); the code now schedules activity `charge` at {}",
        location_of(&recorded, 0),
        location_of(&now, 0)
    );
    assert_ne!(location_of(&recorded, 0), location_of(&now, 0));
    assert_nondeterminism(&err, &detail);
    assert_sticky(&mut r, &err);
}

#[test]
fn nondeterminism_different_action_kind() {
    let recorded = first_episode::<OrderV1>("1");
    let now = first_episode::<OrderTimer>("1");
    let (mut r, result) = replay::<OrderTimer>(&recorded);
    let err = result.expect_err("activity became a timer");
    let detail = format!(
        "history step 2 recorded activity `reserve` (scheduled at {}); the code now schedules a timer at {}",
        location_of(&recorded, 0),
        location_of(&now, 0)
    );
    assert_nondeterminism(&err, &detail);
    assert_sticky(&mut r, &err);
}

#[test]
fn nondeterminism_extra_action() {
    let recorded = first_episode::<OrderV1>("1");
    assert_eq!(
        kinds(&recorded),
        ["OrchestratorStarted", "ExecutionStarted", "TaskScheduled"]
    );
    let now = first_episode::<OrderTwoSteps>("1");
    let (mut r, result) = replay::<OrderTwoSteps>(&recorded);
    let err = result.expect_err("one action too many");
    let detail = format!(
        "the code now schedules activity `charge` at {}, which history does not record (history ends after step 2)",
        location_of(&now, 1)
    );
    assert_nondeterminism(&err, &detail);
    assert_sticky(&mut r, &err);

    // The same against a longer history: the next recorded event is named.
    let mut sim = Sim::new::<OrderV1>();
    sim.step(at(0), &[start("1")]);
    sim.step(at(1), &[done(0, "1")]);
    let (_, result) = replay::<OrderTwoSteps>(&sim.history);
    let detail = format!(
        "the code now schedules activity `charge` at {}, which history does not record (history step 3 is `OrchestratorStarted`)",
        location_of(&now, 1)
    );
    assert_nondeterminism(&result.expect_err("one action too many"), &detail);
}

#[test]
fn nondeterminism_missing_action() {
    let recorded = first_episode::<OrderTwoSteps>("1");
    let (mut r, result) = replay::<OrderV1>(&recorded);
    let err = result.expect_err("one action missing");
    let detail = format!(
        "history step 3 recorded activity `charge` (scheduled at {}); the code now schedules nothing there",
        location_of(&recorded, 1)
    );
    assert_nondeterminism(&err, &detail);
    assert_sticky(&mut r, &err);
}

#[test]
fn nondeterminism_code_finishes_early() {
    let recorded = first_episode::<OrderV1>("1");
    let (_, result) = replay::<OrderNoop>(&recorded);
    assert_nondeterminism(
        &result.expect_err("finishes before the recorded step"),
        "the code now finishes (completed) but history continues at step 2 with activity `reserve`",
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Foreign awaits
// ---------------------------------------------------------------------------------------------

/// A non-durable future: stores its waker and never completes by itself.
struct Parked(&'static Mutex<Option<Waker>>);

impl Future for Parked {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        *self.0.lock().expect("waker slot") = Some(cx.waker().clone());
        Poll::Pending
    }
}

struct AwaitsPending;

impl Orchestrator for AwaitsPending {
    const NAME: &'static str = "awaits_pending";
    type Input = ();
    type Output = ();
    type Error = OrchestrationError;

    async fn run(ctx: OrchestrationContext, (): ()) -> Result<(), OrchestrationError> {
        ctx.call(AddOne, 1).await?;
        std::future::pending::<()>().await;
        Ok(())
    }
}

#[test]
fn awaiting_a_foreign_future_is_reported() {
    let mut sim = Sim::new::<AwaitsPending>();
    sim.step(at(0), &[start("null")]);
    let (accepted, result) = sim.episode(at(1), &[done(0, "2")]);
    assert_eq!(accepted, [true]);
    let err = result.expect_err("blocked on std::future::pending");
    assert_eq!(
        err,
        ReplayError::ForeignAwait {
            instance: INSTANCE.to_owned(),
            name: "awaits_pending".to_owned(),
            woken_from_outside: false,
        }
    );
    let text = err.to_string();
    assert!(
        text.contains("is awaiting something that is not a durable operation;"),
        "{text}"
    );
    assert!(
        text.contains("use ctx.sleep(..) instead of tokio timers"),
        "{text}"
    );
    assert!(!text.contains("woken from outside"), "{text}");
    // Sticky.
    assert_eq!(sim.cached.finish_episode(), Err(err));
}

static FOREIGN_WAKER: Mutex<Option<Waker>> = Mutex::new(None);

struct AwaitsForeign;

impl Orchestrator for AwaitsForeign {
    const NAME: &'static str = "awaits_foreign";
    type Input = ();
    type Output = ();
    type Error = OrchestrationError;

    async fn run(_ctx: OrchestrationContext, (): ()) -> Result<(), OrchestrationError> {
        Parked(&FOREIGN_WAKER).await;
        Ok(())
    }
}

#[test]
fn foreign_wake_is_reported_as_such() {
    let mut r = replayer::<AwaitsForeign>(Limits::default());
    r.begin_episode(at(0));
    assert!(r.handle_message(start("null")));
    // Something outside the executor (a tokio timer, a channel) wakes the orchestration.
    let waker = FOREIGN_WAKER
        .lock()
        .expect("waker slot")
        .take()
        .expect("parked");
    waker.wake();
    let err = r.finish_episode().expect_err("foreign await");
    assert_eq!(
        err,
        ReplayError::ForeignAwait {
            instance: INSTANCE.to_owned(),
            name: "awaits_foreign".to_owned(),
            woken_from_outside: true,
        }
    );
    let text = err.to_string();
    assert!(
        text.contains("(it was woken from outside the orchestration)"),
        "{text}"
    );
    assert!(text.contains("ctx.sleep"), "{text}");
}

static RACED_WAKER: Mutex<Option<Waker>> = Mutex::new(None);

struct ForeignBesideTimer;

impl Orchestrator for ForeignBesideTimer {
    const NAME: &'static str = "foreign_beside_timer";
    type Input = ();
    type Output = String;
    type Error = OrchestrationError;

    async fn run(ctx: OrchestrationContext, (): ()) -> Result<String, OrchestrationError> {
        Ok(
            match select(ctx.sleep(Duration::from_secs(5)), Parked(&RACED_WAKER)).await {
                Either::Left(()) => "timer".to_owned(),
                Either::Right(()) => "foreign".to_owned(),
            },
        )
    }
}

#[test]
fn foreign_wake_beside_a_durable_wait_is_not_an_error() {
    let mut r = replayer::<ForeignBesideTimer>(Limits::default());
    let (_, result) = run_episode(&mut r, at(0), &[start("null")]);
    result.expect("waiting on a durable timer");
    RACED_WAKER
        .lock()
        .expect("waker slot")
        .take()
        .expect("parked")
        .wake();
    let (accepted, result) = run_episode(&mut r, at(5), &[fired(0, at(5))]);
    assert_eq!(accepted, [true]);
    assert_eq!(
        result.expect("timer fired").outcome,
        Some(completed("\"timer\""))
    );
}

// ---------------------------------------------------------------------------------------------
// 8. Duplicate and unknown completions
// ---------------------------------------------------------------------------------------------

#[test]
fn duplicate_and_unknown_completions_are_ignored() {
    let mut sim = Sim::new::<Chain>();
    sim.step(at(0), &[start("5")]);
    let (accepted, result) = sim.episode(
        at(1),
        &[
            done(0, "6"),
            done(0, "6"),
            done(42, "0"),
            fired(1, at(1)),
            Event::TaskFailed {
                seq: 0,
                failure: FailureDetails::new("Late", "redelivered failure"),
                heartbeat: None,
            },
            start("7"),
        ],
    );
    assert_eq!(accepted, [true, false, false, false, false, false]);
    let ep = result.expect("episode");
    assert_eq!(
        kinds(&ep.new_events),
        ["OrchestratorStarted", "TaskCompleted", "TaskScheduled"]
    );
    assert_eq!(ep.commands, [schedule(1, "double", "6")]);

    let ep3 = sim.step(at(2), &[done(1, "12")]);
    assert_eq!(ep3.outcome, Some(completed("12")));
    // After completion every message is ignored and nothing is recorded.
    let (accepted, result) = sim.episode(at(3), &[done(1, "12"), raised("x", "1")]);
    assert_eq!(accepted, [false, false]);
    let ep4 = result.expect("finished");
    assert!(ep4.new_events.is_empty());
    assert_eq!(ep4.outcome, Some(completed("12")));
}

// ---------------------------------------------------------------------------------------------
// 9. Continue-as-new
// ---------------------------------------------------------------------------------------------

struct Counter;

impl Orchestrator for Counter {
    const NAME: &'static str = "counter";
    type Input = i64;
    type Output = i64;
    type Error = OrchestrationError;

    async fn run(ctx: OrchestrationContext, n: i64) -> Result<i64, OrchestrationError> {
        let step: i64 = ctx.wait_for_event("inc").await?;
        if step > 0 {
            return ctx.continue_as_new(n + step).await;
        }
        Ok(n)
    }
}

#[test]
fn continue_as_new_carries_unprocessed_events_in_arrival_order() {
    let mut sim = Sim::new::<Counter>();
    sim.step(at(0), &[start("5")]);
    let (accepted, result) = sim.episode(
        at(1),
        &[
            raised("other", "\"a\""),
            raised("inc", "2"),
            raised("inc", "3"),
            raised("other", "\"b\""),
        ],
    );
    // Messages after the execution ended are carried, not recorded.
    assert_eq!(accepted, [true, true, false, false]);
    let ep = result.expect("episode");
    assert_eq!(
        kinds(&ep.new_events),
        [
            "OrchestratorStarted",
            "EventRaised",
            "EventRaised",
            "ContinuedAsNew"
        ]
    );
    assert_eq!(
        ep.new_events[3].event,
        Event::ContinuedAsNew {
            input: "7".to_owned(),
            version: None
        }
    );
    assert!(ep.commands.is_empty());
    assert_eq!(
        ep.outcome,
        Some(Outcome::ContinuedAsNew {
            input: "7".to_owned(),
            version: None,
            carried: vec![
                carried("other", "\"a\""),
                carried("inc", "3"),
                carried("other", "\"b\""),
            ],
        })
    );
    assert_eq!(
        ep.outcome.as_ref().map(Outcome::status),
        Some(RuntimeStatus::ContinuedAsNew)
    );

    // The next execution starts from the carried input and events.
    let mut next = Sim::new::<Counter>();
    let ep = next.step(
        at(2),
        &[start("7"), raised("other", "\"a\""), raised("inc", "3")],
    );
    assert!(matches!(ep.outcome, Some(Outcome::ContinuedAsNew { ref input, .. }) if input == "10"));
}

/// Holds a claimed event it never awaits while continuing as new.
struct CounterHolding;

impl Orchestrator for CounterHolding {
    const NAME: &'static str = "counter_holding";
    type Input = i64;
    type Output = i64;
    type Error = OrchestrationError;

    async fn run(ctx: OrchestrationContext, n: i64) -> Result<i64, OrchestrationError> {
        let _cancel = ctx.wait_for_event::<String>("cancel");
        let step: i64 = ctx.wait_for_event("inc").await?;
        ctx.continue_as_new(n + step).await
    }
}

#[test]
fn continue_as_new_carries_claimed_but_unconsumed_events_in_arrival_order() {
    let mut sim = Sim::new::<CounterHolding>();
    sim.step(at(0), &[start("0")]);
    let ep = sim.step(
        at(1),
        &[
            raised("cancel", "\"c\""),
            raised("other", "1"),
            raised("inc", "1"),
        ],
    );
    let Some(Outcome::ContinuedAsNew {
        input,
        carried: next,
        ..
    }) = ep.outcome
    else {
        panic!("expected continue-as-new, got {:?}", ep.outcome);
    };
    assert_eq!(input, "1");
    assert_eq!(next, [carried("cancel", "\"c\""), carried("other", "1")]);
}

fn carried(name: &str, input: &str) -> CarriedEvent {
    CarriedEvent {
        name: name.to_owned(),
        input: input.to_owned(),
    }
}

/// The next execution's start message holds the carried events: they are delivered right
/// after the start, ahead of events that were already waiting in the inbox, and history
/// records them as raised events.
#[test]
fn carried_events_come_before_events_waiting_in_the_inbox() {
    let mut sim = Sim::new::<Counter>();
    let Event::ExecutionStarted { name, input, .. } = start("5") else {
        unreachable!()
    };
    let start = Event::ExecutionStarted {
        name,
        version: None,
        input,
        parent: None,
        scheduled_start: None,
        carried: vec![carried("inc", "1"), carried("inc", "2")],
        trace_context: None,
    };
    // "inc 3" arrived while the previous execution was continuing: it is in the inbox.
    let (accepted, ep) = sim.episode(at(0), &[start, raised("inc", "3")]);
    assert_eq!(
        accepted,
        [true, false],
        "inc 3 is carried again, not recorded"
    );
    let ep = ep.expect("episode");
    let Some(Outcome::ContinuedAsNew {
        input,
        carried: next,
        ..
    }) = ep.outcome
    else {
        panic!("expected continue-as-new, got {:?}", ep.outcome);
    };
    assert_eq!(input, "6", "the first carried event is consumed first");
    assert_eq!(next, [carried("inc", "2"), carried("inc", "3")]);
    assert_eq!(
        kinds(&ep.new_events),
        [
            "OrchestratorStarted",
            "ExecutionStarted",
            "EventRaised",
            "ContinuedAsNew"
        ]
    );
    assert!(
        matches!(&ep.new_events[1].event, Event::ExecutionStarted { carried, .. } if carried.is_empty()),
        "history records the carried events as raised events only"
    );
}

// ---------------------------------------------------------------------------------------------
// 10. Suspend and resume
// ---------------------------------------------------------------------------------------------

#[test]
fn suspended_instance_records_but_does_not_deliver_until_resumed() {
    let mut sim = Sim::new::<Chain>();
    sim.step(at(0), &[start("5")]);

    let ep2 = sim.step(
        at(1),
        &[
            Event::ExecutionSuspended {
                reason: "maintenance".to_owned(),
            },
            done(0, "6"),
        ],
    );
    assert_eq!(
        kinds(&ep2.new_events),
        ["OrchestratorStarted", "ExecutionSuspended", "TaskCompleted"]
    );
    assert!(
        ep2.commands.is_empty(),
        "the completion is not delivered while suspended"
    );
    assert!(ep2.suspended);
    assert_eq!(ep2.outcome, None);

    let ep3 = sim.step(at(2), &[]);
    assert!(ep3.suspended);
    assert!(ep3.commands.is_empty());

    let ep4 = sim.step(
        at(3),
        &[Event::ExecutionResumed {
            reason: "done".to_owned(),
        }],
    );
    assert_eq!(
        kinds(&ep4.new_events),
        ["OrchestratorStarted", "ExecutionResumed", "TaskScheduled"]
    );
    assert_eq!(ep4.commands, [schedule(1, "double", "6")]);
    assert!(!ep4.suspended);

    let ep5 = sim.step(at(4), &[done(1, "12")]);
    assert_eq!(ep5.outcome, Some(completed("12")));
}

// ---------------------------------------------------------------------------------------------
// 11, 12. Terminate, sub-orchestrations
// ---------------------------------------------------------------------------------------------

struct Child;

impl Orchestrator for Child {
    const NAME: &'static str = "child";
    type Input = i64;
    type Output = i64;
    type Error = OrchestrationError;

    async fn run(_ctx: OrchestrationContext, x: i64) -> Result<i64, OrchestrationError> {
        Ok(x * 2)
    }
}

struct FailingChild;

impl Orchestrator for FailingChild {
    const NAME: &'static str = "failing_child";
    type Input = i64;
    type Output = i64;
    type Error = OrchestrationError;

    async fn run(_ctx: OrchestrationContext, _x: i64) -> Result<i64, OrchestrationError> {
        Err(OrchestrationError::new("out of stock"))
    }
}

/// One child, then two children and an activity in parallel.
struct Family;

impl Orchestrator for Family {
    const NAME: &'static str = "family";
    type Input = ();
    type Output = i64;
    type Error = OrchestrationError;

    async fn run(ctx: OrchestrationContext, (): ()) -> Result<i64, OrchestrationError> {
        let first = ctx.call_sub_orchestrator(Child, 1).await?;
        let second = ctx.call_sub_orchestrator(Child, 2);
        let work = ctx.call(AddOne, first);
        let third = ctx.call_sub_orchestrator(Child, 3);
        Ok(second.await? + work.await? + third.await?)
    }
}

fn start_child(seq: u64, input: &str) -> Command {
    Command::StartSubOrchestration {
        seq,
        name: "child".to_owned(),
        instance_id: InstanceId::new(format!("{INSTANCE}:{seq}")).expect("valid child id"),
        input: input.to_owned(),
        version: None,
    }
}

#[test]
fn terminate_ends_the_execution_and_cascades_to_open_children() {
    let mut sim = Sim::new::<Family>();
    let ep1 = sim.step(at(0), &[start("null")]);
    assert_eq!(ep1.commands, [start_child(0, "1")]);
    let ep2 = sim.step(
        at(1),
        &[Event::SubOrchestrationCompleted {
            seq: 0,
            result: "2".to_owned(),
        }],
    );
    assert_eq!(
        ep2.commands,
        [
            start_child(1, "2"),
            schedule(2, "add_one", "2"),
            start_child(3, "3")
        ]
    );

    let ep3 = sim.step(
        at(2),
        &[Event::ExecutionTerminated {
            reason: "stop".to_owned(),
            child_of: None,
        }],
    );
    assert_eq!(ep3.outcome, Some(Outcome::Terminated("stop".to_owned())));
    assert_eq!(
        kinds(&ep3.new_events),
        [
            "OrchestratorStarted",
            "ExecutionTerminated",
            "ExecutionCompleted"
        ]
    );
    assert_eq!(
        ep3.new_events[2].event,
        Event::ExecutionCompleted {
            status: RuntimeStatus::Terminated,
            output: Some("\"stop\"".to_owned()),
            failure: None,
        }
    );
    // Only the children still running are terminated (the finished one is not), in order.
    let terminate = |seq: u64| Command::TerminateChild {
        instance_id: InstanceId::new(format!("{INSTANCE}:{seq}")).expect("valid child id"),
        child_of: ParentRef {
            instance_id: InstanceId::new(INSTANCE).unwrap(),
            execution: 1,
            seq,
        },
        reason: "stop".to_owned(),
    };
    assert_eq!(ep3.commands, [terminate(1), terminate(3)]);

    let (accepted, result) = sim.episode(at(3), &[done(2, "3")]);
    assert_eq!(accepted, [false]);
    assert!(result.expect("finished").new_events.is_empty());
}

struct ParentOfFailing;

impl Orchestrator for ParentOfFailing {
    const NAME: &'static str = "parent_of_failing";
    type Input = i64;
    type Output = String;
    type Error = OrchestrationError;

    async fn run(ctx: OrchestrationContext, x: i64) -> Result<String, OrchestrationError> {
        match ctx.call_sub_orchestrator(FailingChild, x).await {
            Ok(v) => Ok(format!("ok {v}")),
            Err(TaskError::Failed(f)) => Ok(format!("child failed: {f}")),
            Err(e) => Err(e.into()),
        }
    }
}

#[test]
fn sub_orchestration_gets_a_derived_id_and_its_failure_propagates() {
    let mut sim = Sim::new::<ParentOfFailing>();
    let ep1 = sim.step(at(0), &[start_with("5", Some("1.2"), None)]);
    assert_eq!(
        ep1.commands,
        [Command::StartSubOrchestration {
            seq: 0,
            name: "failing_child".to_owned(),
            instance_id: InstanceId::new("inst-1:0").expect("valid child id"),
            input: "5".to_owned(),
            version: Some("1.2".to_owned()),
        }]
    );
    assert_eq!(kinds(&ep1.new_events)[2], "SubOrchestrationCreated");

    let ep2 = sim.step(
        at(1),
        &[Event::SubOrchestrationFailed {
            seq: 0,
            failure: FailureDetails::new("OrchestrationError", "out of stock"),
        }],
    );
    assert_eq!(
        ep2.outcome,
        Some(completed(
            "\"child failed: sub-orchestration 'failing_child' (instance 'inst-1:0', task 0) failed: out of stock\""
        ))
    );
}

fn parent_ref() -> ParentRef {
    ParentRef {
        instance_id: InstanceId::new("parent").expect("valid id"),
        execution: 2,
        seq: 3,
    }
}

#[test]
fn sub_orchestration_notifies_its_parent_on_completion() {
    let mut sim = Sim::new::<Child>();
    let ep = sim.step(at(0), &[start_with("21", None, Some(parent_ref()))]);
    assert_eq!(ep.outcome, Some(completed("42")));
    assert_eq!(
        ep.commands,
        [Command::NotifyParent {
            parent: parent_ref(),
            event: Event::SubOrchestrationCompleted {
                seq: 3,
                result: "42".to_owned(),
            },
        }]
    );
}

#[test]
fn failed_sub_orchestration_notifies_its_parent_with_the_failure() {
    let mut sim = Sim::new::<FailingChild>();
    let ep = sim.step(at(0), &[start_with("1", None, Some(parent_ref()))]);
    let failure = FailureDetails::new("OrchestrationError", "out of stock");
    assert_eq!(ep.outcome, Some(Outcome::Failed(failure.clone())));
    assert_eq!(
        ep.commands,
        [Command::NotifyParent {
            parent: parent_ref(),
            event: Event::SubOrchestrationFailed { seq: 3, failure },
        }]
    );
}

#[test]
fn terminated_sub_orchestration_notifies_its_parent() {
    let mut sim = Sim::new::<Chain>();
    sim.step(at(0), &[start_with("1", None, Some(parent_ref()))]);
    let ep = sim.step(
        at(1),
        &[Event::ExecutionTerminated {
            reason: "operator".to_owned(),
            child_of: None,
        }],
    );
    assert_eq!(
        ep.commands,
        [Command::NotifyParent {
            parent: parent_ref(),
            event: Event::SubOrchestrationFailed {
                seq: 3,
                failure: FailureDetails::new("Terminated", "terminated: operator"),
            },
        }]
    );
}

// ---------------------------------------------------------------------------------------------
// 13. Panics and limits
// ---------------------------------------------------------------------------------------------

struct Panicky;

impl Orchestrator for Panicky {
    const NAME: &'static str = "panicky";
    type Input = i64;
    type Output = i64;
    type Error = OrchestrationError;

    async fn run(ctx: OrchestrationContext, x: i64) -> Result<i64, OrchestrationError> {
        let a = ctx.call(AddOne, x).await?;
        assert!(a < 0, "boom at step {a}");
        Ok(a)
    }
}

#[test]
fn panicking_orchestrator_fails_with_the_panic_message() {
    let mut sim = Sim::new::<Panicky>();
    sim.step(at(0), &[start("1")]);
    let ep = sim.step(at(1), &[done(0, "2")]);
    let failure = FailureDetails::new("panic", "orchestrator panicked: boom at step 2");
    assert_eq!(ep.outcome, Some(Outcome::Failed(failure.clone())));
    assert_eq!(
        ep.new_events.last().map(|e| &e.event),
        Some(&Event::ExecutionCompleted {
            status: RuntimeStatus::Failed,
            output: None,
            failure: Some(failure),
        })
    );
}

struct Runaway;

impl Orchestrator for Runaway {
    const NAME: &'static str = "runaway";
    type Input = ();
    type Output = i64;
    type Error = OrchestrationError;

    async fn run(ctx: OrchestrationContext, (): ()) -> Result<i64, OrchestrationError> {
        let tasks: Vec<_> = (0..10).map(|i| ctx.call(AddOne, i)).collect();
        let mut sum = 0;
        for r in ctx.when_all(tasks).await {
            sum += r?;
        }
        Ok(sum)
    }
}

#[test]
fn exceeding_the_action_limit_fails_the_orchestration() {
    let limits = Limits {
        max_actions: 5,
        ..Limits::default()
    };
    let mut sim = Sim::with_limits::<Runaway>(limits);
    let ep = sim.step(at(0), &[start("null")]);
    let Some(Outcome::Failed(f)) = ep.outcome else {
        panic!("expected a failure, got {:?}", ep.outcome);
    };
    assert_eq!(f.error_type, "ActionLimitExceeded");
    assert!(f.non_retriable);
    assert!(
        f.message.contains("more than the maximum of 5 actions"),
        "{}",
        f.message
    );
    assert!(f.message.contains("continue-as-new"), "{}", f.message);
}

// ---------------------------------------------------------------------------------------------
// 14, 15, 16. Custom status, new_guid, undecodable input
// ---------------------------------------------------------------------------------------------

struct Status;

impl Orchestrator for Status {
    const NAME: &'static str = "status";
    type Input = i64;
    type Output = i64;
    type Error = OrchestrationError;

    async fn run(ctx: OrchestrationContext, x: i64) -> Result<i64, OrchestrationError> {
        ctx.set_custom_status("working")?;
        let a = ctx.call(AddOne, x).await?;
        ctx.set_custom_status("working")?;
        let b = ctx.call(AddOne, a).await?;
        ctx.set_custom_status(&format!("done {b}"))?;
        Ok(b)
    }
}

fn status_set(events: &[HistoryEvent]) -> Vec<Option<String>> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            Event::CustomStatusSet { status } => Some(status.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn custom_status_is_recorded_only_when_it_changes() {
    let mut sim = Sim::new::<Status>();
    let ep1 = sim.step(at(0), &[start("1")]);
    assert_eq!(
        kinds(&ep1.new_events),
        [
            "OrchestratorStarted",
            "ExecutionStarted",
            "TaskScheduled",
            "CustomStatusSet"
        ]
    );
    assert_eq!(
        status_set(&ep1.new_events),
        [Some("\"working\"".to_owned())]
    );
    assert_eq!(ep1.custom_status.as_deref(), Some("\"working\""));

    let ep2 = sim.step(at(1), &[done(0, "2")]);
    assert!(
        status_set(&ep2.new_events).is_empty(),
        "unchanged status is not recorded again"
    );
    assert_eq!(ep2.custom_status.as_deref(), Some("\"working\""));

    let ep3 = sim.step(at(2), &[done(1, "3")]);
    assert_eq!(status_set(&ep3.new_events), [Some("\"done 3\"".to_owned())]);
    assert_eq!(ep3.custom_status.as_deref(), Some("\"done 3\""));
    assert_eq!(status_set(&sim.history).len(), 2);
}

struct Guids;

impl Orchestrator for Guids {
    const NAME: &'static str = "guids";
    type Input = ();
    type Output = Vec<uuid::Uuid>;
    type Error = OrchestrationError;

    async fn run(ctx: OrchestrationContext, (): ()) -> Result<Vec<uuid::Uuid>, OrchestrationError> {
        let a = ctx.new_guid();
        let b = ctx.new_guid();
        ctx.call(AddOne, 0).await?;
        let c = ctx.new_guid();
        Ok(vec![a, b, c])
    }
}

#[test]
fn new_guid_is_stable_across_replay_and_unique_per_call() {
    let mut sim = Sim::new::<Guids>();
    sim.step(at(0), &[start("null")]);
    // `Sim` checks that the cold replay, which re-creates the first two, returns the same.
    let ep = sim.step(at(1), &[done(0, "1")]);
    let Some(Outcome::Completed(out)) = ep.outcome else {
        panic!("expected completion, got {:?}", ep.outcome);
    };
    let guids: Vec<uuid::Uuid> = serde_json::from_str(&out).expect("uuids");
    assert_eq!(guids.len(), 3);
    assert_ne!(guids[0], guids[1]);
    assert_ne!(guids[1], guids[2]);
    assert_ne!(guids[0], guids[2]);

    // Another instance gets other values.
    let mut other = Replayer::new(
        InstanceId::new("inst-2").expect("valid id"),
        1,
        Guids::NAME,
        code::<Guids>(),
        Limits::default(),
    );
    run_episode(&mut other, at(0), &[start("null")])
        .1
        .expect("episode");
    let (_, result) = run_episode(&mut other, at(1), &[done(0, "1")]);
    assert_ne!(
        result.expect("episode").outcome,
        Some(Outcome::Completed(out))
    );
}

#[test]
fn undecodable_input_fails_naming_the_expected_type() {
    let mut sim = Sim::new::<Chain>();
    let ep = sim.step(at(0), &[start("\"not a number\"")]);
    let Some(Outcome::Failed(f)) = ep.outcome else {
        panic!("expected a failure, got {:?}", ep.outcome);
    };
    assert!(
        f.message
            .starts_with("payload does not deserialize as `i64`: "),
        "{}",
        f.message
    );
    assert!(
        f.error_type.ends_with("PayloadDecodeError"),
        "{}",
        f.error_type
    );
    assert!(f.non_retriable);
    assert!(ep.commands.is_empty());
    assert_eq!(
        kinds(&ep.new_events),
        [
            "OrchestratorStarted",
            "ExecutionStarted",
            "ExecutionCompleted"
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Notices: what the code did in the new part of an episode, never again on replay
// ---------------------------------------------------------------------------------------------

struct Persistent;

impl Orchestrator for Persistent {
    const NAME: &'static str = "persistent";
    type Input = i64;
    type Output = i64;
    type Error = OrchestrationError;

    async fn run(ctx: OrchestrationContext, x: i64) -> Result<i64, OrchestrationError> {
        let policy = crate::retry::RetryPolicy::new(2, Duration::from_secs(3));
        Ok(ctx.call_with_retry(Charge, x, policy).await?)
    }
}

fn task_failed(seq: u64, message: &str) -> Event {
    Event::TaskFailed {
        seq,
        failure: FailureDetails::new("ActivityError", message),
        heartbeat: None,
    }
}

#[test]
fn notices_report_failures_and_retry_decisions_once() {
    use super::Notice;
    use crate::error::TaskKind;

    // Sim checks every episode against a cold replayer: replaying the history that holds
    // the earlier failures adds no notices of its own.
    let mut sim = Sim::new::<Persistent>();
    let ep1 = sim.step(at(0), &[start("5")]);
    assert_eq!(ep1.notices, []);
    assert_eq!(ep1.started_at, Some(at(0)));

    let ep2 = sim.step(at(1), &[task_failed(0, "declined")]);
    assert_eq!(
        ep2.notices,
        [
            Notice::ActivityFailed {
                seq: 0,
                name: "charge".to_owned(),
                failure: FailureDetails::new("ActivityError", "declined"),
            },
            Notice::Retry {
                seq: 0,
                kind: TaskKind::Activity,
                name: "charge".to_owned(),
                attempt: 1,
                delay: Some(Duration::from_secs(3)),
            },
        ]
    );
    assert_eq!(ep2.started_at, Some(at(0)));

    let ep3 = sim.step(at(4), &[fired(1, at(4))]);
    assert_eq!(ep3.notices, []);

    let ep4 = sim.step(at(5), &[task_failed(2, "declined again")]);
    assert_eq!(
        ep4.notices,
        [
            Notice::ActivityFailed {
                seq: 2,
                name: "charge".to_owned(),
                failure: FailureDetails::new("ActivityError", "declined again"),
            },
            Notice::Retry {
                seq: 2,
                kind: TaskKind::Activity,
                name: "charge".to_owned(),
                attempt: 2,
                delay: None,
            },
        ]
    );
    assert!(matches!(ep4.outcome, Some(Outcome::Failed(_))));

    // The whole history replayed, with no new message: nothing to report.
    let (mut cold, replayed) = replay::<Persistent>(&sim.history);
    replayed.expect("the history replays");
    let (_, result) = run_episode(&mut cold, at(6), &[]);
    let result = result.expect("an episode after the end");
    assert_eq!(result.notices, []);
    assert_eq!(result.started_at, Some(at(0)));
}

#[test]
fn a_failure_without_a_retry_policy_is_noticed_without_a_retry_decision() {
    use super::Notice;

    let mut sim = Sim::new::<Chain>();
    sim.step(at(0), &[start("5")]);
    let ep2 = sim.step(at(1), &[task_failed(0, "broken")]);
    assert_eq!(
        ep2.notices,
        [Notice::ActivityFailed {
            seq: 0,
            name: "add_one".to_owned(),
            failure: FailureDetails::new("ActivityError", "broken"),
        }]
    );
    // A duplicate of the failure (delivered twice) is not a second failure.
    let (accepted, result) = sim.episode(at(2), &[task_failed(0, "broken")]);
    assert_eq!(accepted, [false]);
    assert_eq!(result.expect("the episode runs").notices, []);
}

// ---------------------------------------------------------------------------------------------
// Local activities: results delivered within the episode that schedules them
// ---------------------------------------------------------------------------------------------

struct LocalChain;

impl Orchestrator for LocalChain {
    const NAME: &'static str = "local_chain";
    type Input = i64;
    type Output = i64;
    type Error = OrchestrationError;

    async fn run(ctx: OrchestrationContext, x: i64) -> Result<i64, OrchestrationError> {
        let a = ctx.call_local(AddOne, x).await?;
        // Both scheduled now (a task is scheduled when created), awaited one after the other.
        let b = ctx.call_local(Double, a);
        let c = ctx.call(AddOne, a);
        Ok(b.await? + c.await?)
    }
}

#[test]
fn local_results_arrive_in_the_episode_and_replay_like_any_result() {
    let mut r = replayer::<LocalChain>(Limits::default());
    r.begin_episode(at(0));
    r.handle_message(start("5"));
    let first = r.take_local_activities();
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(matches!(
        &first[0],
        Command::ScheduleActivity {
            seq: 0,
            local: true,
            ..
        }
    ));
    assert!(r.take_local_activities().is_empty(), "taken once");
    assert!(r.handle_message(done(0, "6")));
    // Both run at once: the local one is taken, the ordinary one stays a command.
    let second = r.take_local_activities();
    assert!(
        matches!(&second[..], [Command::ScheduleActivity { seq: 1, name, local: true, .. }] if name == "double")
    );
    assert!(r.handle_message(done(1, "12")));
    assert!(r.take_local_activities().is_empty());
    let ep = r.finish_episode().expect("episode");
    assert!(
        matches!(
            &ep.commands[..],
            [Command::ScheduleActivity {
                seq: 2,
                local: false,
                ..
            }]
        ),
        "{:?}",
        ep.commands
    );
    assert_eq!(
        kinds(&ep.new_events),
        [
            "OrchestratorStarted",
            "ExecutionStarted",
            "TaskScheduled",
            "TaskCompleted",
            "TaskScheduled",
            "TaskScheduled",
            "TaskCompleted",
        ]
    );
    // A cold replay of that history runs nothing: it waits for the ordinary activity.
    let (mut cold, replayed) = replay::<LocalChain>(&ep.new_events);
    replayed.expect("replays");
    let (_, next) = run_episode(&mut cold, at(1), &[done(2, "7")]);
    assert_eq!(next.expect("episode").outcome, Some(completed("19")));
}

#[test]
fn a_local_command_put_back_becomes_an_ordinary_task() {
    let mut r = replayer::<LocalChain>(Limits::default());
    r.begin_episode(at(0));
    r.handle_message(start("5"));
    for c in r.take_local_activities() {
        r.schedule_as_task(c);
    }
    let ep = r.finish_episode().expect("episode");
    assert!(
        matches!(
            &ep.commands[..],
            [Command::ScheduleActivity {
                seq: 0,
                local: false,
                ..
            }]
        ),
        "{:?}",
        ep.commands
    );
}
