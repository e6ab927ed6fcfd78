//! Replay-safe logging: orchestration code keeps using `tracing`; the [`ReplaySafe`] filter
//! drops the events it emits while replaying history, so each line is logged once.

use tracing::Metadata;
use tracing_subscriber::layer::{Context, Filter};

use crate::replay::is_replaying_on_this_thread;

/// A per-layer `tracing` filter that drops events emitted by orchestration code while it
/// replays already-recorded history.
///
/// # Examples
///
/// ```
/// use durable_core::logging::ReplaySafe;
/// use tracing_subscriber::prelude::*;
///
/// let subscriber = tracing_subscriber::registry()
///     .with(tracing_subscriber::fmt::layer().with_filter(ReplaySafe));
/// let _guard = tracing::subscriber::set_default(subscriber);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct ReplaySafe;

impl<S> Filter<S> for ReplaySafe {
    fn enabled(&self, meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        !(meta.is_event() && is_replaying_on_this_thread())
    }

    fn callsite_enabled(&self, _meta: &'static Metadata<'static>) -> tracing::subscriber::Interest {
        tracing::subscriber::Interest::sometimes()
    }
}
