//! The typed model of an annotated function, built and checked from the user's item.
//! Original nodes are kept so errors point at the user's tokens.

use syn::spanned::Spanned;
use syn::{Attribute, FnArg, GenericArgument, ItemFn, PatType, PathArguments, ReturnType, Type};

use crate::args::Kind;
use crate::errors::Errors;

/// An `async fn` accepted by `#[activity]` or `#[orchestrator]`.
pub(crate) struct Function {
    pub(crate) item: ItemFn,
    pub(crate) docs: Vec<Attribute>,
    /// Every parameter, in declaration order.
    pub(crate) params: Vec<Param>,
    pub(crate) context: Option<PatType>,
    pub(crate) input: Option<PatType>,
    pub(crate) returns: Returns,
    /// A transactional activity (`#[activity(transactional)]` or a transaction parameter):
    /// a function run in its store's transaction.
    pub(crate) transactional: bool,
    /// A transactional activity on `PostgreSQL` (`tx: &PgTransaction<'_>`): `async`.
    pub(crate) postgres: bool,
}

/// What one parameter of the function is.
pub(crate) enum Param {
    /// `ctx: ActivityContext` / `ctx: OrchestrationContext`.
    Context,
    /// `State(pool): State<PgPool>` (activities only): the state type, `PgPool`, and the
    /// whole parameter type, `State<PgPool>`, as written.
    State {
        inner: Box<Type>,
        written: Box<Type>,
    },
    /// The one deserialized input.
    Input,
    /// `tx: &RedbTransaction<'_>` (transactional activities only).
    Transaction,
}

/// `true` for a parameter that asks for the store's transaction: `&RedbTransaction<..>` or
/// `&PgTransaction<..>`.
fn is_transaction(pt: &PatType) -> bool {
    is_pg_transaction(pt)
        || matches!(&*pt.ty, Type::Reference(r) if last_segment_is(&r.elem, "RedbTransaction"))
}

/// `true` for `&PgTransaction<..>`: a `PostgreSQL` transactional activity, which is `async`.
fn is_pg_transaction(pt: &PatType) -> bool {
    matches!(&*pt.ty, Type::Reference(r) if last_segment_is(&r.elem, "PgTransaction"))
}

/// The function's return type.
pub(crate) enum Returns {
    /// Written `Result<T, E>`.
    Result { output: Box<Type>, error: Box<Type> },
    /// Anything else that may be a `Result` (an alias such as `R<T>` or `io::Result<T>`):
    /// the output and error types are left to the type system (`__private::IntoResult`).
    Alias(Box<Type>),
}

fn last_segment_is(ty: &Type, name: &str) -> bool {
    match ty {
        Type::Path(p) => p.path.segments.last().is_some_and(|s| s.ident == name),
        Type::Reference(r) => last_segment_is(&r.elem, name),
        _ => false,
    }
}

/// How a parameter relates to `State`.
enum StateUse {
    /// `State<T>`.
    Typed(Box<Type>),
    /// `State(x): State` (no type given).
    Untyped,
    /// `State<A, B>`, `State<'a>`, ….
    Malformed,
    /// `&State<T>`.
    Reference,
}

fn state_use(pt: &PatType) -> Option<StateUse> {
    let named_state_pattern = match &*pt.pat {
        syn::Pat::TupleStruct(t) => t.path.segments.last().is_some_and(|s| s.ident == "State"),
        _ => false,
    };
    let ty = match &*pt.ty {
        Type::Reference(r) if last_segment_is(&r.elem, "State") => {
            return state_use_of(&r.elem, named_state_pattern).map(|_| StateUse::Reference);
        }
        ty => ty,
    };
    state_use_of(ty, named_state_pattern)
}

fn state_use_of(ty: &Type, named_state_pattern: bool) -> Option<StateUse> {
    let Type::Path(p) = ty else { return None };
    let seg = p.path.segments.last()?;
    if seg.ident != "State" {
        return None;
    }
    match &seg.arguments {
        PathArguments::AngleBracketed(args) => {
            let mut types = args.args.iter();
            match (types.next(), types.next()) {
                (Some(GenericArgument::Type(t)), None) => {
                    Some(StateUse::Typed(Box::new(t.clone())))
                }
                _ => Some(StateUse::Malformed),
            }
        }
        // A type of the user's own named `State`, unless the pattern says otherwise.
        PathArguments::None if named_state_pattern => Some(StateUse::Untyped),
        PathArguments::None | PathArguments::Parenthesized(_) => None,
    }
}

/// Checks `async`: required, except on a transactional activity (declared by
/// `transactional_kw` or by a transaction parameter), which must be synchronous. Returns
/// whether the function is a transactional activity.
fn check_async(
    kind: Kind,
    sig: &syn::Signature,
    transactional_kw: Option<&syn::Ident>,
    errors: &mut Errors,
    ok: &mut bool,
) -> bool {
    let attr = kind.attr();
    let tx_param = kind == Kind::Activity
        && sig
            .inputs
            .iter()
            .any(|a| matches!(a, FnArg::Typed(pt) if is_transaction(pt)));
    let transactional = transactional_kw.is_some() || tx_param;
    let postgres = kind == Kind::Activity
        && sig
            .inputs
            .iter()
            .any(|a| matches!(a, FnArg::Typed(pt) if is_pg_transaction(pt)));
    if let (Some(kw), false) = (transactional_kw, tx_param) {
        errors.push(
            kw,
            format!(
                "`#[activity(transactional)]` functions take the store's transaction: add a \
                 `tx: &RedbTransaction<'_>` parameter, `fn {0}(tx: &RedbTransaction<'_>, input: T)` \
                 (or, on PostgreSQL, `async fn {0}(tx: &PgTransaction<'_>, input: T)`)",
                sig.ident
            ),
        );
        *ok = false;
    }
    if postgres {
        if sig.asyncness.is_none() {
            errors.push(
                sig.fn_token,
                format!(
                    "PostgreSQL transactional activities are `async`: write `async fn {}(tx: &PgTransaction<'_>, ..)`",
                    sig.ident
                ),
            );
            *ok = false;
        }
    } else if transactional {
        if let Some(a) = &sig.asyncness {
            errors.push(
                a,
                "transactional activities are synchronous: they run inside the store's write \
                 transaction, where nothing may be awaited; remove `async`",
            );
            *ok = false;
        }
    } else if sig.asyncness.is_none() {
        errors.push(
            sig.fn_token,
            format!(
                "{attr} functions must be `async`; write `async fn {}(..)`",
                sig.ident
            ),
        );
        *ok = false;
    }
    transactional
}

/// Builds the model, reporting every problem with the signature.
pub(crate) fn function(
    kind: Kind,
    item: ItemFn,
    transactional_kw: Option<&syn::Ident>,
    errors: &mut Errors,
) -> Option<Function> {
    let attr = kind.attr();
    let sig = &item.sig;
    let mut ok = true;
    let transactional = check_async(kind, sig, transactional_kw, errors, &mut ok);
    let postgres = transactional
        && sig
            .inputs
            .iter()
            .any(|a| matches!(a, FnArg::Typed(pt) if is_pg_transaction(pt)));
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.push(
            &sig.generics,
            format!("{attr} functions cannot be generic; durable names map to one concrete input and output type"),
        );
        ok = false;
    }
    if let Some(c) = &sig.constness {
        errors.push(c, format!("{attr} functions cannot be `const`"));
        ok = false;
    }
    if let syn::Safety::Unsafe(u) = &sig.safety {
        errors.push(u, format!("{attr} functions cannot be `unsafe`"));
        ok = false;
    }
    if let Some(v) = &sig.variadic {
        errors.push(v, format!("{attr} functions cannot be variadic"));
        ok = false;
    }

    let (params, context, mut inputs) = classify_params(kind, sig, transactional, errors, &mut ok);
    if kind == Kind::Orchestrator && context.is_none() && ok {
        let target = sig
            .inputs
            .first()
            .map_or_else(|| sig.ident.span(), Spanned::span);
        errors.push_error(syn::Error::new(
            target,
            format!(
                "{attr} functions take the context first: `async fn {}(ctx: OrchestrationContext, input: T)`",
                sig.ident
            ),
        ));
        ok = false;
    }
    if inputs.len() > 1 {
        let hint = match kind {
            Kind::Activity => {
                "; bundle several values into a struct or a tuple, or take shared resources as `State<T>` parameters"
            }
            Kind::Orchestrator | Kind::Entity => "; bundle several values into a struct or a tuple",
        };
        for extra in &inputs[1..] {
            errors.push(
                extra,
                format!("{attr} functions take at most one input{hint}"),
            );
        }
        ok = false;
    }

    let returns = return_type(kind, sig, errors)?;
    if !ok {
        return None;
    }
    let docs = item
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .cloned()
        .collect();
    Some(Function {
        params,
        context,
        input: inputs.pop(),
        returns,
        docs,
        item,
        transactional,
        postgres,
    })
}

/// Reads the return type, reporting one that cannot be a `Result`.
fn return_type(kind: Kind, sig: &syn::Signature, errors: &mut Errors) -> Option<Returns> {
    let attr = kind.attr();
    let returns = match &sig.output {
        ReturnType::Type(_, ty) => returns(ty),
        ReturnType::Default => None,
    };
    if returns.is_none() {
        let msg = match kind {
            Kind::Activity => format!(
                "{attr} functions must return `Result<T, E>`, e.g. `Result<Receipt, ActivityError>`"
            ),
            Kind::Orchestrator | Kind::Entity => {
                format!(
                    "{attr} functions must return `Result<T, E>`, e.g. `Result<Receipt, OrchestrationError>`"
                )
            }
        };
        match &sig.output {
            ReturnType::Type(_, ty) => errors.push(ty, msg),
            ReturnType::Default => {
                errors.push_error(syn::Error::new(sig.paren_token.span.close(), msg));
            }
        }
    }
    returns
}

/// Takes a parameter that only a transactional activity has, or that it must not have (its
/// body runs in the store's transaction: no context, no state). `true` when handled.
fn transaction_param(
    pt: &PatType,
    transactional: bool,
    params: &mut Vec<Param>,
    errors: &mut Errors,
    ok: &mut bool,
) -> bool {
    if is_transaction(pt) {
        if params.iter().any(|p| matches!(p, Param::Transaction)) {
            errors.push(pt, "#[activity] functions take at most one transaction");
            *ok = false;
        } else {
            params.push(Param::Transaction);
        }
        return true;
    }
    if !transactional {
        return false;
    }
    if last_segment_is(&pt.ty, "ActivityContext") {
        errors.push(
            pt,
            "transactional activities take no `ActivityContext`: their body runs inside the \
             store's write transaction, without timeouts, heartbeats or cancellation; remove it",
        );
    } else if state_use(pt).is_some() {
        errors.push(
            pt,
            "transactional activities cannot take `State<T>`: their body runs on the store's \
             writer thread and reads what it needs from the transaction; remove it",
        );
    } else {
        return false;
    }
    *ok = false;
    true
}

/// Sorts the parameters: the context, state (activities) and inputs, keeping their order.
fn classify_params(
    kind: Kind,
    sig: &syn::Signature,
    transactional: bool,
    errors: &mut Errors,
    ok: &mut bool,
) -> (Vec<Param>, Option<PatType>, Vec<PatType>) {
    let attr = kind.attr();
    let ctx_name = match kind {
        Kind::Activity => "ActivityContext",
        Kind::Orchestrator | Kind::Entity => "OrchestrationContext",
    };
    let mut params = Vec::new();
    let mut context = None;
    let mut inputs: Vec<PatType> = Vec::new();
    for (i, arg) in sig.inputs.iter().enumerate() {
        let pt = match arg {
            FnArg::Receiver(r) => {
                errors.push(
                    r,
                    format!("{attr} must be on a free function, not a method taking `self`"),
                );
                *ok = false;
                continue;
            }
            FnArg::Typed(pt) => pt,
        };
        if kind == Kind::Activity && transaction_param(pt, transactional, &mut params, errors, ok) {
            continue;
        }
        if last_segment_is(&pt.ty, ctx_name) {
            if kind != Kind::Activity && i != 0 {
                errors.push(
                    pt,
                    format!(
                        "the `{ctx_name}` parameter must come first: `async fn {}(ctx: {ctx_name}, ..)`",
                        sig.ident
                    ),
                );
                *ok = false;
            } else if context.is_some() {
                errors.push(
                    pt,
                    format!("{attr} functions take at most one `{ctx_name}`"),
                );
                *ok = false;
            } else {
                context = Some(pt.clone());
                params.push(Param::Context);
            }
            continue;
        }
        if let Some(state) = state_use(pt) {
            *ok &= matches!(state, StateUse::Typed(_)) && kind == Kind::Activity;
            match (state, kind) {
                (_, Kind::Orchestrator | Kind::Entity) => errors.push(
                    pt,
                    "orchestrations cannot take state: their code is replayed from history, so it must not \
                     depend on values from outside it; call an activity that takes `State<T>` instead",
                ),
                (StateUse::Typed(inner), Kind::Activity) => params.push(Param::State {
                    inner,
                    written: pt.ty.clone(),
                }),
                (StateUse::Untyped, Kind::Activity) => errors.push(
                    &pt.ty,
                    "`State` needs the type of the state value: `State(pool): State<PgPool>`",
                ),
                (StateUse::Malformed, Kind::Activity) => errors.push(
                    &pt.ty,
                    "`State` takes exactly one type, the state value's: `State(pool): State<PgPool>`",
                ),
                (StateUse::Reference, Kind::Activity) => errors.push(
                    &pt.ty,
                    "take `State<T>` by value (`State(pool): State<PgPool>`); each run gets its own clone",
                ),
            }
            continue;
        }
        if let Type::Reference(_) = *pt.ty {
            errors.push(
                &pt.ty,
                format!("{attr} inputs are deserialized values and cannot be references; take the input by value"),
            );
            *ok = false;
        } else {
            inputs.push(pt.clone());
            params.push(Param::Input);
        }
    }
    (params, context, inputs)
}

/// Types a return type surely is not a `Result` alias of.
const NOT_RESULTS: &[&str] = &[
    "String", "str", "Vec", "Option", "Box", "bool", "char", "u8", "u16", "u32", "u64", "u128",
    "usize", "i8", "i16", "i32", "i64", "i128", "isize", "f32", "f64", "HashMap", "BTreeMap",
    "HashSet", "BTreeSet",
];

/// Reads the return type: `Result<T, E>` split, or a path that may be an alias of it.
fn returns(ty: &Type) -> Option<Returns> {
    match ty {
        Type::Paren(p) => returns(&p.elem),
        Type::Group(g) => returns(&g.elem),
        Type::Path(p) if p.qself.is_none() => {
            let seg = p.path.segments.last()?;
            if seg.ident == "Result" {
                if let Some((output, error)) = result_parts(seg) {
                    return Some(Returns::Result {
                        output: Box::new(output),
                        error: Box::new(error),
                    });
                }
            } else if NOT_RESULTS.iter().any(|n| seg.ident == n) {
                return None;
            }
            Some(Returns::Alias(Box::new(ty.clone())))
        }
        _ => None,
    }
}

/// Splits `Result<T, E>` (a last path segment with two type arguments).
fn result_parts(seg: &syn::PathSegment) -> Option<(Type, Type)> {
    let PathArguments::AngleBracketed(args) = &seg.arguments else {
        return None;
    };
    let mut types = args.args.iter().filter_map(|a| match a {
        GenericArgument::Type(t) => Some(t.clone()),
        _ => None,
    });
    let t = types.next()?;
    let e = types.next()?;
    if types.next().is_some() {
        return None;
    }
    Some((t, e))
}
