//! Code generation. Codegen never validates: it runs on a checked [`Function`] model.

pub(crate) mod activity;
pub(crate) mod entity;
pub(crate) mod orchestrator;

use proc_macro2::TokenStream;
use quote::quote;
use syn::{LitStr, Type};

use crate::args::{self, Args, Kind};
use crate::ast::{self, Function, Returns};
use crate::errors::Errors;

/// The path generated code uses for `durable_core` (overridable with `crate = ..`).
pub(crate) fn krate(args: &Args) -> TokenStream {
    args.krate
        .as_ref()
        .map_or_else(|| quote!(::durable_core), |p| quote!(#p))
}

pub(crate) fn input_type(f: &Function) -> Type {
    f.input
        .as_ref()
        .map_or_else(|| syn::parse_quote!(()), |p| (*p.ty).clone())
}

/// Where problems with the return type are reported: at an alias's first token (every
/// generated use of the alias carries this one span, so that a non-`Result` is reported
/// once), at the call site otherwise.
pub(crate) fn result_span(f: &Function) -> proc_macro2::Span {
    use syn::spanned::Spanned;
    match &f.returns {
        Returns::Result { .. } => proc_macro2::Span::call_site(),
        Returns::Alias(ty) => ty.span(),
    }
}

/// `tokens`, all carrying `span` (so that rustc can join them with the user's tokens).
pub(crate) fn respanned(tokens: &impl quote::ToTokens, span: proc_macro2::Span) -> TokenStream {
    fn walk(tokens: TokenStream, span: proc_macro2::Span) -> TokenStream {
        tokens
            .into_iter()
            .map(|mut t| {
                if let proc_macro2::TokenTree::Group(g) = &t {
                    let mut group = proc_macro2::Group::new(g.delimiter(), walk(g.stream(), span));
                    group.set_span(span);
                    t = proc_macro2::TokenTree::Group(group);
                } else {
                    t.set_span(span);
                }
                t
            })
            .collect()
    }
    walk(tokens.to_token_stream(), span)
}

/// The output and error types: as written in `Result<T, E>`, or projected from an alias
/// through `IntoResult` so the type system resolves them.
pub(crate) fn result_types(krate: &TokenStream, f: &Function) -> (TokenStream, TokenStream) {
    use quote::quote_spanned;
    match &f.returns {
        Returns::Result { output, error } => (quote!(#output), quote!(#error)),
        Returns::Alias(ty) => {
            let span = result_span(f);
            let ty = respanned(ty, span);
            (
                quote_spanned!(span=> <#ty as #krate::__private::IntoResult>::Output),
                quote_spanned!(span=> <#ty as #krate::__private::IntoResult>::Error),
            )
        }
    }
}

/// `type Output = ..; type Error = ..;`, spanned at the return type when it is an alias, so
/// that a non-`Result` is reported there.
pub(crate) fn result_items(f: &Function, output: &TokenStream, error: &TokenStream) -> TokenStream {
    quote::quote_spanned! {result_span(f)=>
        type Output = #output;
        type Error = #error;
    }
}

pub(crate) fn durable_name(args: &Args, f: &Function) -> LitStr {
    args.name
        .clone()
        .unwrap_or_else(|| LitStr::new(&f.item.sig.ident.to_string(), f.item.sig.ident.span()))
}

/// Parses arguments and item, checks them, and expands; on any error returns the user's
/// item unchanged followed by every error, so IDEs keep working and no follow-on errors drown
/// the real one.
pub(crate) fn run(kind: Kind, attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::new();
    let args = args::parse(kind, attr, &mut errors);
    let Ok(parsed) = syn::parse2::<syn::ItemFn>(item.clone()) else {
        errors.push_error(syn::Error::new(
            args::call_site(),
            format!("{} goes on an `async fn`", kind.attr()),
        ));
        let err = errors.finish().unwrap_err().into_compile_error();
        return quote!(#item #err);
    };
    let function = ast::function(kind, parsed, args.transactional.as_ref(), &mut errors);
    if let (Some(f), Kind::Orchestrator) = (&function, kind)
        && !args.allow_nondeterminism
    {
        crate::lint::check(&f.item.block, &mut errors);
    }
    if let Err(e) = errors.finish() {
        let err = e.into_compile_error();
        return quote!(#item #err);
    }
    let function = function.expect("no errors means the model was built");
    let out = match kind {
        Kind::Activity => activity::expand(&args, &function),
        Kind::Orchestrator | Kind::Entity => orchestrator::expand(&args, &function),
    };
    if std::env::var_os("DURABLE_MACROS_DEBUG").is_some() {
        eprintln!("{out}");
    }
    out
}

/// `#[entity]` on a struct or on its impl block.
pub(crate) fn run_entity(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::new();
    let args = args::parse(Kind::Entity, attr, &mut errors);
    let out = if let Ok(s) = syn::parse2::<syn::ItemStruct>(item.clone()) {
        if s.generics.params.is_empty() {
            Some(entity::expand_struct(&args, &s))
        } else {
            errors.push(&s.generics, "#[entity] types cannot be generic");
            None
        }
    } else if let Ok(i) = syn::parse2::<syn::ItemImpl>(item.clone()) {
        if args.name.is_some() {
            errors.push_error(syn::Error::new(
                args::call_site(),
                "put `name = ..` on the struct's #[entity], not on the impl block",
            ));
        }
        entity::expand_impl(&args, &i, &mut errors)
    } else {
        errors.push_error(syn::Error::new(
            args::call_site(),
            "#[entity] goes on a struct and on its `impl` block",
        ));
        None
    };
    match (errors.finish(), out) {
        (Ok(()), Some(out)) => {
            if std::env::var_os("DURABLE_MACROS_DEBUG").is_some() {
                eprintln!("{out}");
            }
            out
        }
        (Err(e), _) => {
            let err = e.into_compile_error();
            quote!(#item #err)
        }
        (Ok(()), None) => item,
    }
}

/// Compile-time checks, reported at the user's types: the error converts into failure
/// details, input and output are JSON payloads. (A `Result` alias is checked by the
/// `IntoResult` projections themselves, at the return type.)
pub(crate) fn type_checks(krate: &TokenStream, f: &Function, input: &Type) -> TokenStream {
    use quote::quote_spanned;
    use syn::spanned::Spanned;
    let payload = |span: proc_macro2::Span, ty: &TokenStream| {
        quote_spanned! {span=>
            const _: fn() = || {
                fn __durable_assert_payload<T: #krate::__private::Payload>() {}
                __durable_assert_payload::<#ty>();
            };
        }
    };
    let input_check = payload(input.span(), &quote!(#input));
    let (output, error) = result_types(krate, f);
    let (output_span, error_span) = match &f.returns {
        Returns::Result { output, error } => (output.span(), error.span()),
        Returns::Alias(_) => (result_span(f), result_span(f)),
    };
    let output_check = payload(output_span, &output);
    let error_check = quote_spanned! {error_span=>
        const _: fn() = || {
            fn __durable_assert_failure<E: #krate::ToFailure>() {}
            __durable_assert_failure::<#error>();
        };
    };
    quote! {
        #error_check
        #input_check
        #output_check
    }
}

/// The body's result as the trait's `Result<Output, Error>`: itself when written `Result`,
/// converted through `IntoResult` when an alias (which reports a non-`Result` at the return
/// type, once).
pub(crate) fn into_result(krate: &TokenStream, f: &Function, call: TokenStream) -> TokenStream {
    use quote::quote_spanned;
    match &f.returns {
        Returns::Result { .. } => call,
        Returns::Alias(ty) => {
            let span = result_span(f);
            let ty = respanned(ty, span);
            quote_spanned!(span=> async move { <#ty as #krate::__private::IntoResult>::into_result(#call.await) })
        }
    }
}

/// `#[allow]`s every generated marker carries.
pub(crate) fn marker_attrs() -> TokenStream {
    quote! {
        #[allow(non_camel_case_types, missing_docs, unreachable_pub)]
        #[derive(::core::fmt::Debug, ::core::clone::Clone, ::core::marker::Copy, ::core::default::Default, ::core::cmp::PartialEq, ::core::cmp::Eq, ::core::hash::Hash)]
    }
}

/// The user's non-doc attributes (they go on the body function).
pub(crate) fn body_attrs(f: &Function) -> Vec<syn::Attribute> {
    f.item
        .attrs
        .iter()
        .filter(|a| !a.path().is_ident("doc"))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use quote::quote;

    use super::run;
    use crate::args::Kind;

    fn expand(
        kind: Kind,
        attr: proc_macro2::TokenStream,
        item: proc_macro2::TokenStream,
    ) -> String {
        run(kind, attr, item).to_string()
    }

    #[test]
    fn activity_expands_to_marker_trait_impl_and_registration() {
        let out = expand(
            Kind::Activity,
            quote!(),
            quote!(
                pub async fn greet(name: String) -> Result<String, ActivityError> {
                    Ok(name)
                }
            ),
        );
        assert!(out.contains("pub struct greet ;"), "{out}");
        assert!(
            out.contains("impl :: durable_core :: Activity for greet"),
            "{out}"
        );
        assert!(
            out.contains("const NAME : & 'static str = \"greet\""),
            "{out}"
        );
        assert!(
            out.contains("impl :: durable_core :: Registration for greet"),
            "{out}"
        );
        assert!(!out.contains("compile_error"), "{out}");
    }

    #[test]
    fn local_activity_sets_the_local_constant() {
        let local = expand(
            Kind::Activity,
            quote!(local),
            quote!(
                async fn step(n: u32) -> Result<u32, ActivityError> {
                    Ok(n)
                }
            ),
        );
        assert!(local.contains("const LOCAL : bool = true ;"), "{local}");
        assert!(!local.contains("compile_error"), "{local}");
        let plain = expand(
            Kind::Activity,
            quote!(),
            quote!(
                async fn step(n: u32) -> Result<u32, ActivityError> {
                    Ok(n)
                }
            ),
        );
        assert!(!plain.contains("LOCAL"), "{plain}");
        let valued = expand(
            Kind::Activity,
            quote!(local = true),
            quote!(
                async fn step(n: u32) -> Result<u32, ActivityError> {
                    Ok(n)
                }
            ),
        );
        assert!(valued.contains("`local` takes no value"), "{valued}");
    }

    #[test]
    fn orchestrator_expands_proxies_and_honours_name_version_and_crate() {
        let out = expand(
            Kind::Orchestrator,
            quote!(name = "flow.v2", version = "2", crate = my_durable),
            quote!(
                async fn flow(
                    ctx: OrchestrationContext,
                    n: u32,
                ) -> Result<u32, OrchestrationError> {
                    Ok(n)
                }
            ),
        );
        assert!(
            out.contains("impl my_durable :: Orchestrator for flow"),
            "{out}"
        );
        assert!(out.contains("\"flow.v2\""), "{out}");
        assert!(out.contains("Some (\"2\")"), "{out}");
        for proxy in ["async fn start", "async fn start_with", "fn handle"] {
            assert!(out.contains(proxy), "missing {proxy}: {out}");
        }
    }

    #[test]
    fn errors_accumulate_and_the_item_is_still_emitted() {
        let out = expand(
            Kind::Orchestrator,
            quote!(retries = 3),
            quote!(
                fn flow(a: u32, b: u32) -> u32 {
                    a + b
                }
            ),
        );
        assert!(out.contains("fn flow"), "user item kept: {out}");
        assert!(
            out.contains("unknown #[orchestrator] argument `retries`"),
            "{out}"
        );
        assert!(out.contains("must be `async`"), "{out}");
        assert!(out.contains("must return `Result<T, E>`"), "{out}");
    }

    #[test]
    fn lint_flags_nondeterminism_but_not_nested_items_or_ctx_methods() {
        let body = quote!(
            async fn flow(ctx: OrchestrationContext, n: u32) -> Result<u32, OrchestrationError> {
                let _t = ctx.now();
                fn helper() -> std::time::SystemTime {
                    std::time::SystemTime::now()
                }
                let _id = uuid::Uuid::new_v4();
                Ok(n)
            }
        );
        let out = expand(Kind::Orchestrator, quote!(), body.clone());
        assert_eq!(out.matches("compile_error").count(), 1, "{out}");
        assert!(out.contains("uuid::Uuid::new_v4"), "{out}");
        assert!(out.contains("ctx.new_guid()"), "{out}");
        let allowed = expand(Kind::Orchestrator, quote!(allow_nondeterminism), body);
        assert!(!allowed.contains("compile_error"), "{allowed}");
    }

    #[test]
    fn state_parameters_are_listed_and_the_body_keeps_them_in_order() {
        let out = expand(
            Kind::Activity,
            quote!(),
            quote!(
                async fn charge(
                    State(pool): State<Pool>,
                    ctx: ActivityContext,
                    n: u32,
                    cfg: State<Config>,
                ) -> Result<u32, ActivityError> {
                    Ok(n)
                }
            ),
        );
        assert!(!out.contains("compile_error"), "{out}");
        assert!(
            out.contains(
                "const STATES : & 'static [:: durable_core :: StateType] = & [:: durable_core :: StateType :: of :: < Pool > () , :: durable_core :: StateType :: of :: < Config > ()]"
            ),
            "{out}"
        );
        assert!(
            out.contains(
                "async fn run (State (pool) : State < Pool > , ctx : ActivityContext , n : u32 , cfg : State < Config > ,)"
            ),
            "{out}"
        );
        assert!(out.contains("type Input = u32"), "{out}");
    }

    #[test]
    fn orchestrators_refuse_state_and_keep_the_item() {
        let out = expand(
            Kind::Orchestrator,
            quote!(),
            quote!(
                async fn flow(
                    ctx: OrchestrationContext,
                    State(pool): State<Pool>,
                ) -> Result<u32, OrchestrationError> {
                    Ok(1)
                }
            ),
        );
        assert_eq!(out.matches("compile_error").count(), 1, "{out}");
        assert!(out.contains("orchestrations cannot take state"), "{out}");
        assert!(out.contains("async fn flow"), "{out}");
    }

    #[test]
    fn a_result_alias_is_resolved_by_the_type_system() {
        let out = expand(
            Kind::Activity,
            quote!(),
            quote!(
                async fn double(n: u32) -> R<u32> {
                    Ok(n * 2)
                }
            ),
        );
        assert!(!out.contains("compile_error"), "{out}");
        assert!(
            out.contains(
                "type Output = < R < u32 > as :: durable_core :: __private :: IntoResult > :: Output"
            ),
            "{out}"
        );
        // Well-known non-`Result` types are still refused by name.
        let out = expand(
            Kind::Activity,
            quote!(),
            quote!(
                async fn double(n: u32) -> Vec<u32> {
                    vec![n]
                }
            ),
        );
        assert!(out.contains("must return `Result<T, E>`"), "{out}");
    }
}
