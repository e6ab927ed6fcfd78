//! The determinism lint: well-known non-deterministic calls in an orchestrator body are
//! compile errors that name the replay-safe replacement.

use syn::visit::Visit;
use syn::{Expr, ExprCall, ExprPath};

use crate::errors::Errors;

/// What a forbidden path is replaced by.
fn replacement(segments: &[String]) -> Option<&'static str> {
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    let ends = |suffix: &[&str]| s.len() >= suffix.len() && s[s.len() - suffix.len()..] == *suffix;
    let first = s.first().copied().unwrap_or_default();
    if ends(&["SystemTime", "now"])
        || ends(&["Instant", "now"])
        || ends(&["Utc", "now"])
        || ends(&["Local", "now"])
    {
        return Some("reads the wall clock, which differs on replay; use `ctx.now()`");
    }
    if ends(&["Uuid", "new_v4"]) || ends(&["Uuid", "now_v7"]) {
        return Some("is random, which differs on replay; use `ctx.new_guid()`");
    }
    if ends(&["thread_rng"]) || (s.contains(&"rand") && (ends(&["random"]) || ends(&["rng"]))) {
        return Some(
            "is random, which differs on replay; use `ctx.new_guid()` or draw the value in an activity",
        );
    }
    if ends(&["tokio", "spawn"])
        || ends(&["thread", "spawn"])
        || ends(&["task", "spawn"])
        || ends(&["spawn_blocking"])
    {
        return Some(
            "runs work outside the replay; await durable tasks with `ctx.when_all(..)` or move the work into an activity",
        );
    }
    if ends(&["time", "sleep"]) || ends(&["thread", "sleep"]) || ends(&["time", "sleep_until"]) {
        return Some("is not durable; use `ctx.sleep(..)` or `ctx.timer_at(..)`");
    }
    if ends(&["env", "var"]) || ends(&["env", "vars"]) || ends(&["env", "var_os"]) {
        return Some(
            "reads the environment, which may differ on replay; pass it in the input or read it in an activity",
        );
    }
    if s.contains(&"fs") || ends(&["File", "open"]) || ends(&["File", "create"]) {
        return Some("does file IO; move this into an activity");
    }
    if matches!(first, "reqwest" | "hyper" | "ureq" | "surf") || ends(&["TcpStream", "connect"]) {
        return Some("does network IO; move this into an activity");
    }
    None
}

struct Lint<'a> {
    errors: &'a mut Errors,
}

impl<'ast> Visit<'ast> for Lint<'_> {
    fn visit_expr_call(&mut self, call: &'ast ExprCall) {
        if let Expr::Path(ExprPath { path, .. }) = &*call.func {
            let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
            if let Some(why) = replacement(&segments) {
                self.errors.push(
                    call,
                    format!(
                        "`{}` {why} (non-deterministic calls are not allowed in orchestrators; \
                         opt out with `#[orchestrator(allow_nondeterminism)]` only if replay cannot observe it)",
                        segments.join("::")
                    ),
                );
            }
        }
        syn::visit::visit_expr_call(self, call);
    }

    fn visit_expr_unsafe(&mut self, u: &'ast syn::ExprUnsafe) {
        self.errors.push(
            u.unsafe_token,
            "`unsafe` blocks (such as `static mut` access) are not allowed in orchestrators: shared mutable state \
             differs on replay; pass state through the input, an entity or an activity",
        );
        syn::visit::visit_expr_unsafe(self, u);
    }

    fn visit_item(&mut self, _item: &'ast syn::Item) {
        // Nested items (helper fns, impls) are not orchestrator code.
    }
}

/// Reports every non-deterministic call in `body`.
pub(crate) fn check(body: &syn::Block, errors: &mut Errors) {
    Lint { errors }.visit_block(body);
}
