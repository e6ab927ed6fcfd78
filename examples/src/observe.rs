//! Watching the examples run: log output through `tracing-subscriber` and metrics for
//! Prometheus.
//!
//! - [`init_tracing`] writes `tracing` events to stderr, filtered by `RUST_LOG` (quiet by
//!   default: errors only) and by durable's [`ReplaySafe`] filter, so a line logged in an
//!   orchestration is printed once, not again on every replay. `RUST_LOG=info` shows the
//!   engine's lifecycle events (target `durable::lifecycle`); `RUST_LOG=durable_core::http=debug`
//!   one span per management API request.
//! - [`install_prometheus`] installs the `metrics` recorder that renders the engine's
//!   metrics (`durable_…`, feature `metrics` of `durable-core`) in Prometheus' text format;
//!   [`metrics_routes`] serves them at `/metrics` on an axum server.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use durable_core::logging::ReplaySafe;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::prelude::*;

/// The environment variable that turns metrics on (`DURABLE_METRICS=1`), as the demo's
/// `--metrics` flag does.
pub const METRICS_ENV: &str = "DURABLE_METRICS";

/// Installs the process's `tracing` subscriber: a formatter writing to stderr (stdout stays
/// the program's own output), filtered by `RUST_LOG` (default: errors only; malformed
/// directives are reported and skipped) and by [`ReplaySafe`]. Does nothing if a subscriber
/// is already installed.
///
/// # Examples
///
/// ```
/// // At the start of `main`; with `RUST_LOG=info` the engine's lifecycle events show.
/// examples::observe::init_tracing();
/// ```
pub fn init_tracing() {
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::ERROR.into())
        .from_env_lossy();
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(ReplaySafe),
        )
        .try_init();
}

/// `true` if metrics are asked for: `flag` (the `--metrics` argument) or [`METRICS_ENV`]
/// set to anything but empty or `0`.
pub fn metrics_requested(flag: bool) -> bool {
    flag || std::env::var(METRICS_ENV).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Bucket bounds of the `…_seconds` histograms: 100 µs to 10 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Bucket bounds of the group commits' batch sizes: powers of two up to the largest batch.
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Installs the Prometheus recorder as the process's `metrics` recorder and returns the
/// handle that renders what it recorded (see [`metrics_routes`]). Durations (`…_seconds`)
/// and batch sizes are Prometheus histograms, so they add up across processes.
///
/// # Errors
///
/// [`BuildError`] when a recorder is already installed.
pub fn install_prometheus() -> Result<PrometheusHandle, BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("_batch_size".into()), BATCH_BUCKETS)?
        .install_recorder()
}

/// The recorded metrics in Prometheus' text format.
///
/// # Examples
///
/// ```
/// let handle = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder().handle();
/// assert_eq!(examples::observe::render(&handle), "");
/// ```
pub fn render(handle: &PrometheusHandle) -> String {
    // Folds the samples recorded since the last rendering into the summaries.
    handle.run_upkeep();
    handle.render()
}

/// `GET /metrics`: [`render`] for Prometheus to scrape. Merge it into the application's
/// router.
///
/// # Examples
///
/// ```
/// let handle = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder().handle();
/// let app: axum::Router = axum::Router::new().merge(examples::observe::metrics_routes(handle));
/// # drop(app);
/// ```
pub fn metrics_routes(handle: PrometheusHandle) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let body = render(&handle);
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    body,
                )
                    .into_response()
            }
        }),
    )
}
