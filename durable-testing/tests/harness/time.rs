//! Virtual time: timers fire when the test moves the clock, in order, and every driving call
//! returns once the engine is idle.

use std::time::Duration;

use durable_core::prelude::*;
use durable_testing::{Script, TestEnv};

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

#[activity]
async fn stamp(label: String) -> Result<String, ActivityError> {
    Ok(label)
}

/// Sleeps each number of hours in turn, recording where and when it woke.
#[orchestrator]
async fn sleeper(
    ctx: OrchestrationContext,
    hours: Vec<u32>,
) -> Result<Vec<Timestamp>, OrchestrationError> {
    let mut woke = Vec::new();
    for h in hours {
        ctx.sleep(HOUR * h).await;
        woke.push(ctx.now());
        ctx.call(stamp, format!("{} at {}", ctx.instance_id(), ctx.now()))
            .await?;
    }
    Ok(woke)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advance_fires_every_due_timer_in_order_each_at_its_own_time() {
    let env = TestEnv::builder()
        .register(stamp)
        .register(sleeper)
        .start()
        .unwrap();
    let t0 = env.now();
    let a = env.start(sleeper, vec![1, 2]).await.unwrap(); // wakes at 1h and 3h
    let b = env.start(sleeper, vec![2]).await.unwrap(); // wakes at 2h
    env.advance(HOUR * 5).await;
    assert_eq!(env.now(), t0 + HOUR * 5);
    assert_eq!(env.output(&a).await.unwrap(), [t0 + HOUR, t0 + HOUR * 3]);
    assert_eq!(env.output(&b).await.unwrap(), [t0 + HOUR * 2]);
    assert_eq!(
        env.calls(stamp),
        [
            format!("sleeper-1 at {}", t0 + HOUR),
            format!("sleeper-2 at {}", t0 + HOUR * 2),
            format!("sleeper-1 at {}", t0 + HOUR * 3),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_does_not_fire_a_millisecond_early() {
    let env = TestEnv::builder()
        .register(stamp)
        .register(sleeper)
        .start()
        .unwrap();
    let run = env.start(sleeper, vec![72]).await.unwrap();
    env.advance(Duration::from_millis(72 * 3_600_000 - 1)).await;
    env.assert_status(run.id(), RuntimeStatus::Running).await;
    assert_eq!(env.call_count(stamp), 0);
    env.advance(Duration::from_millis(1)).await;
    env.assert_status(run.id(), RuntimeStatus::Completed).await;
}

#[tokio::test(flavor = "current_thread")]
async fn advance_to_next_timer_steps_from_timer_to_timer() {
    let env = TestEnv::builder()
        .register(stamp)
        .register(sleeper)
        .start()
        .unwrap();
    let t0 = env.now();
    let run = env.start(sleeper, vec![3, 1, 2]).await.unwrap();
    let mut stops = Vec::new();
    while let Some(t) = env.advance_to_next_timer().await {
        stops.push(t);
    }
    assert_eq!(stops, [t0 + HOUR * 3, t0 + HOUR * 4, t0 + HOUR * 6]);
    assert_eq!(env.output(&run).await.unwrap(), stops);
    assert_eq!(env.next_timer().await, None);
}

#[activity]
async fn add_one(x: u64) -> Result<u64, ActivityError> {
    Ok(x + 1)
}

#[orchestrator]
async fn counter(ctx: OrchestrationContext, n: u64) -> Result<u64, OrchestrationError> {
    let mut x = 0;
    for _ in 0..n {
        x = ctx.call(add_one, x).await?;
    }
    Ok(x)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_until_idle_finishes_all_work_due_now_without_moving_time() {
    let env = TestEnv::builder()
        .register(add_one)
        .register(counter)
        .start()
        .unwrap();
    let t0 = env.now();
    let runs = [
        env.start(counter, 25).await.unwrap(),
        env.start(counter, 10).await.unwrap(),
        env.start(counter, 40).await.unwrap(),
    ];
    env.run_until_idle().await;
    assert_eq!(env.now(), t0);
    for (run, n) in runs.iter().zip([25, 10, 40]) {
        assert_eq!(env.output(run).await.unwrap(), n);
    }
    assert_eq!(env.call_count(add_one), 75);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_advance_lets_a_client_wait_through_a_month_of_timers() {
    let env = TestEnv::builder()
        .register(stamp)
        .register(sleeper)
        .auto_advance(true)
        .start()
        .unwrap();
    let t0 = env.now();
    let run = sleeper::start(env.client(), vec![24; 30]).await.unwrap();
    let woke = run.wait().await.unwrap();
    assert_eq!(woke.len(), 30);
    assert_eq!(*woke.last().unwrap(), t0 + HOUR * 24 * 30);
}

#[orchestrator]
async fn waits_forever(ctx: OrchestrationContext, _x: ()) -> Result<(), OrchestrationError> {
    ctx.wait_for_event::<()>("never").await?;
    Ok(())
}

#[tokio::test(flavor = "current_thread")]
async fn wait_reports_an_instance_that_can_never_finish() {
    let env = TestEnv::builder().register(waits_forever).start().unwrap();
    let run = env.start(waits_forever, ()).await.unwrap();
    let message = crate::panic_message(async move { env.wait(&run).await })
        .await
        .expect("wait panics");
    assert!(
        message.contains("instance `waits_forever-1` can never finish"),
        "{message}"
    );
    assert!(
        message.contains("ExecutionStarted"),
        "the history is shown: {message}"
    );
}

#[activity]
async fn flaky(_x: ()) -> Result<u32, ActivityError> {
    unimplemented!("scripted in the test")
}

#[orchestrator]
async fn with_retries(ctx: OrchestrationContext, _x: ()) -> Result<u32, OrchestrationError> {
    let policy = RetryPolicy::new(5, MINUTE * 10).backoff_coefficient(2.0);
    Ok(ctx.call_with_retry(flaky, (), policy).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_back_off_on_durable_timers_in_virtual_time() {
    let env = TestEnv::builder()
        .register(with_retries)
        .script(
            flaky,
            Script::of(flaky)
                .fail_times(2, ActivityError::new("busy"))
                .ok(7),
        )
        .start()
        .unwrap();
    let t0 = env.now();
    let run = env.start(with_retries, ()).await.unwrap();
    env.run_until_idle().await;
    assert_eq!(env.call_count(flaky), 1);
    env.advance(MINUTE * 10).await;
    assert_eq!(env.call_count(flaky), 2);
    env.advance(MINUTE * 20).await;
    assert_eq!(env.output(&run).await.unwrap(), 7);
    let h = env.history(run.id()).await;
    assert_eq!(h.timers(), [t0 + MINUTE * 10, t0 + MINUTE * 30], "{h}");
    assert_eq!(h.failed(flaky).len(), 2);
}

#[orchestrator]
async fn race_slow_call(ctx: OrchestrationContext, _x: ()) -> Result<String, OrchestrationError> {
    let call = ctx.call(flaky, ());
    let timeout = ctx.sleep(HOUR);
    match select(call, timeout).await {
        Either::Left(r) => Ok(format!("answered {}", r?)),
        Either::Right(()) => Ok("timed out".to_owned()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_activity_keeps_nothing_busy_and_is_delivered_again_when_its_lease_expires() {
    // Lost once, answered on redelivery after the 5-minute activity lease.
    let env = TestEnv::builder()
        .register(race_slow_call)
        .script(flaky, Script::of(flaky).hang().ok(3))
        .start()
        .unwrap();
    let t0 = env.now();
    let run = env.start(race_slow_call, ()).await.unwrap();
    env.run_until_idle().await;
    env.assert_status(run.id(), RuntimeStatus::Running).await;
    assert_eq!(env.call_count(flaky), 1);
    assert_eq!(env.wait(&run).await.unwrap(), "answered 3");
    assert_eq!(env.call_count(flaky), 2);
    assert_eq!(env.now(), t0 + MINUTE * 5);

    // Never answers: the durable timeout wins.
    let env = TestEnv::builder()
        .register(race_slow_call)
        .script(flaky, Script::of(flaky).hang())
        .start()
        .unwrap();
    let run = env.start(race_slow_call, ()).await.unwrap();
    env.advance(HOUR).await;
    assert_eq!(env.output(&run).await.unwrap(), "timed out");
    assert!(env.call_count(flaky) >= 12, "redelivered every 5 minutes");
}
