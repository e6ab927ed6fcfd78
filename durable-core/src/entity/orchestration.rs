//! The orchestration side of entities: `ctx.entity::<E>(key)` and
//! `ctx.signal_entity::<E>(key)`, the typed proxies they hand out, and the [`CallTarget`] a
//! call proxy wraps.
//!
//! These two are methods of [`OrchestrationContext`] defined here, with the [`Entity`] trait
//! they are generic over, so that `context` needs nothing from `entity`: `entity` builds on
//! `context`, never the reverse. What takes only an [`EntityId`] (`call_entity`, `lock`)
//! stays in `context`.

use std::sync::Arc;

use super::{Entity, EntityId, SignalSink, SignalTarget};
use crate::context::OrchestrationContext;
use crate::history::Payload;

/// The target of a generated orchestration call proxy.
#[derive(Debug, Clone)]
pub struct CallTarget {
    /// The calling orchestration.
    pub ctx: OrchestrationContext,
    /// The entity called.
    pub entity: EntityId,
}

impl OrchestrationContext {
    /// A typed proxy for calling operations of entity `E` with `key` (request/response).
    ///
    /// # Determinism
    /// Each call records `EntityCalled`, then `EntityResponded`.
    ///
    /// # Examples
    /// ```
    /// use durable_core::prelude::*;
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[entity]
    /// #[derive(Default, Serialize, Deserialize)]
    /// struct Counter { value: i64 }
    ///
    /// #[entity]
    /// impl Counter {
    ///     fn add(&mut self, amount: i64) { self.value += amount; }
    ///     fn get(&self) -> i64 { self.value }
    /// }
    ///
    /// #[orchestrator]
    /// async fn bump(ctx: OrchestrationContext, key: String) -> Result<i64, OrchestrationError> {
    ///     let counter = ctx.entity::<Counter>(&key);
    ///     counter.add(1).await?;
    ///     Ok(counter.get().await?)
    /// }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let env = durable_testing::TestEnv::builder().register(Counter::entity()).register(bump).start()?;
    /// let run = env.start(bump, "page-views".to_owned()).await?;
    /// assert_eq!(env.wait(&run).await?, 1);
    /// # Ok(()) }
    /// ```
    pub fn entity<E: Entity>(&self, key: &str) -> E::CallProxy {
        E::CallProxy::from(CallTarget {
            ctx: self.clone(),
            entity: EntityId {
                name: E::NAME.to_lowercase(),
                key: key.to_owned(),
            },
        })
    }

    /// A typed proxy for signalling entity `E` with `key` (one-way, no result).
    ///
    /// # Determinism
    /// Each signal records `EntitySignaled`.
    ///
    /// # Examples
    ///
    /// ```
    /// use durable_core::prelude::*;
    /// use durable_testing::TestEnv;
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[entity]
    /// #[derive(Default, Serialize, Deserialize)]
    /// struct Counter { value: i64 }
    ///
    /// #[entity]
    /// impl Counter {
    ///     fn add(&mut self, amount: i64) { self.value += amount; }
    /// }
    ///
    /// #[orchestrator]
    /// async fn track(ctx: OrchestrationContext, page: String) -> Result<(), OrchestrationError> {
    ///     ctx.signal_entity::<Counter>(&page).add(1); // fire and forget
    ///     Ok(())
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let env = TestEnv::builder().register(Counter::entity()).register(track).start()?;
    /// for _ in 0..3 {
    ///     env.start(track, "home".to_owned()).await?;
    /// }
    /// env.run_until_idle().await;
    /// let views = env.client().read_entity::<Counter>("home").await?;
    /// assert_eq!(views.map(|c| c.value), Some(3));
    /// # Ok(()) }
    /// ```
    pub fn signal_entity<E: Entity>(&self, key: &str) -> E::SignalProxy {
        E::SignalProxy::from(SignalTarget {
            sink: Arc::new(self.clone()),
            entity: EntityId {
                name: E::NAME.to_lowercase(),
                key: key.to_owned(),
            },
        })
    }
}

impl SignalSink for OrchestrationContext {
    #[track_caller]
    fn send_signal(&self, entity: &EntityId, operation: &str, input: Payload) {
        self.send_entity_signal(entity, operation, input);
    }
}
