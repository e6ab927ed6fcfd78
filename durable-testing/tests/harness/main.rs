//! The harness on the real engine: virtual time, mocks and the call log, inspection, replay
//! checks, crash injection and seeded simulation.

mod calls;
mod crash;
#[cfg(feature = "http-calls")]
mod http_mock;
mod inspect;
mod issue12_control;
mod issue13_state;
mod local;
mod mocks;
mod replay;
mod sim;
mod time;

/// Runs `fut` on its own task and returns its panic message (`None` if it did not panic).
pub async fn panic_message<F>(fut: F) -> Option<String>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    match tokio::spawn(fut).await {
        Ok(_) => None,
        Err(e) => {
            let payload = e.into_panic();
            Some(
                payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default(),
            )
        }
    }
}
