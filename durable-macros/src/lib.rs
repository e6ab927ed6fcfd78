//! Procedural macros for `durable`: `#[activity]` and `#[orchestrator]` turn ordinary
//! `async fn`s into typed durable definitions. Use them through `durable_core`
//! (`use durable_core::prelude::*;`), whose docs carry the examples.

mod args;
mod ast;
mod errors;
mod expand;
mod lint;

use proc_macro::TokenStream;

/// Turns `async fn name(input: I) -> Result<O, E>` (optionally taking an
/// `ActivityContext` and `State<T>` parameters) into a typed activity marker named `name`.
///
/// See `durable_core::activity` for the full documentation.
#[proc_macro_attribute]
pub fn activity(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::run(args::Kind::Activity, attr.into(), item.into()).into()
}

/// Defines a durable entity: put it on a serde struct (its state) and on the struct's
/// `impl` block (its operations).
///
/// See `durable_core::entity` for the full documentation.
#[proc_macro_attribute]
pub fn entity(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::run_entity(attr.into(), item.into()).into()
}

/// Turns `async fn name(ctx: OrchestrationContext, input: I) -> Result<O, E>` into a typed
/// orchestrator marker named `name` with a client proxy (`name::start(&client, input)`),
/// and rejects non-deterministic calls in its body.
///
/// See `durable_core::orchestrator` for the full documentation.
#[proc_macro_attribute]
pub fn orchestrator(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::run(args::Kind::Orchestrator, attr.into(), item.into()).into()
}
