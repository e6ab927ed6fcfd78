//! Procedural macros for `durable`: `#[orchestrator]`, `#[activity]` and `#[entity]`.
//!
//! The macros land in a later milestone; this crate already exists so the workspace layout
//! is fixed and `durable-core` can re-export it.
