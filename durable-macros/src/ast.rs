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
    pub(crate) context: Option<PatType>,
    pub(crate) input: Option<PatType>,
    pub(crate) output: Type,
    pub(crate) error: Type,
}

fn last_segment_is(ty: &Type, name: &str) -> bool {
    match ty {
        Type::Path(p) => p.path.segments.last().is_some_and(|s| s.ident == name),
        Type::Reference(r) => last_segment_is(&r.elem, name),
        _ => false,
    }
}

/// Builds the model, reporting every problem with the signature.
pub(crate) fn function(kind: Kind, item: ItemFn, errors: &mut Errors) -> Option<Function> {
    let attr = kind.attr();
    let sig = &item.sig;
    let mut ok = true;
    if sig.asyncness.is_none() {
        errors.push(
            sig.fn_token,
            format!(
                "{attr} functions must be `async`; write `async fn {}(..)`",
                sig.ident
            ),
        );
        ok = false;
    }
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

    let (context, mut inputs) = classify_params(kind, sig, errors, &mut ok);
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
        for extra in &inputs[1..] {
            errors.push(
                extra,
                format!("{attr} functions take at most one input; bundle several values into a struct or a tuple"),
            );
        }
        ok = false;
    }

    let result = match &sig.output {
        ReturnType::Type(_, ty) => result_parts(ty),
        ReturnType::Default => None,
    };
    let Some((output, error)) = result else {
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
        return None;
    };
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
        context,
        input: inputs.pop(),
        output,
        error,
        docs,
        item,
    })
}

/// Splits the parameters into the optional leading context and the inputs.
fn classify_params(
    kind: Kind,
    sig: &syn::Signature,
    errors: &mut Errors,
    ok: &mut bool,
) -> (Option<PatType>, Vec<PatType>) {
    let attr = kind.attr();
    let (ctx_name, ctx_example) = match kind {
        Kind::Activity => ("ActivityContext", "ctx: ActivityContext"),
        Kind::Orchestrator | Kind::Entity => ("OrchestrationContext", "ctx: OrchestrationContext"),
    };
    let mut context = None;
    let mut inputs: Vec<PatType> = Vec::new();
    for (i, arg) in sig.inputs.iter().enumerate() {
        match arg {
            FnArg::Receiver(r) => {
                errors.push(
                    r,
                    format!("{attr} must be on a free function, not a method taking `self`"),
                );
                *ok = false;
            }
            FnArg::Typed(pt) => {
                if last_segment_is(&pt.ty, ctx_name) {
                    if i == 0 {
                        context = Some(pt.clone());
                    } else {
                        errors.push(
                            pt,
                            format!("the `{ctx_name}` parameter must come first: `async fn {}({ctx_example}, ..)`", sig.ident),
                        );
                        *ok = false;
                    }
                } else if let Type::Reference(_) = *pt.ty {
                    errors.push(
                        &pt.ty,
                        format!("{attr} inputs are deserialized values and cannot be references; take the input by value"),
                    );
                    *ok = false;
                } else {
                    inputs.push(pt.clone());
                }
            }
        }
    }
    (context, inputs)
}

/// Splits `Result<T, E>` (any path ending in `Result` with two type arguments).
fn result_parts(ty: &Type) -> Option<(Type, Type)> {
    let Type::Path(p) = ty else { return None };
    let seg = p.path.segments.last()?;
    if seg.ident != "Result" {
        return None;
    }
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
