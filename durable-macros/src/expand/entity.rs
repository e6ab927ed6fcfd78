//! `#[entity]` codegen, for the struct and for its `impl` block.
//
// Input:
//     #[entity] #[derive(Default, Serialize, Deserialize)] pub struct Counter { value: i64 }
//     #[entity] impl Counter { fn add(&mut self, amount: i64) { .. } fn get(&self) -> i64 { .. } }
//
// Output (struct): the struct unchanged, `impl EntityName for Counter` and the three proxy
// types `CounterClientProxy`, `CounterCallProxy`, `CounterSignalProxy` (same visibility).
// Output (impl): the impl unchanged, `impl Entity for Counter` (dispatch by operation name)
// and one typed method per operation on each proxy:
//     client.entity::<Counter>("k").add(5).await?          // signal, acknowledged once durable
//     ctx.entity::<Counter>("k").get().await?               // call from an orchestration
//     ctx.signal_entity::<Counter>("k").add(5);             // signal from an orchestration/entity

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::{FnArg, ImplItem, ItemImpl, ItemStruct, LitStr, PatType, ReturnType, Type};

use super::krate;
use crate::args::Args;
use crate::errors::Errors;

fn proxy_idents(ident: &syn::Ident) -> (syn::Ident, syn::Ident, syn::Ident) {
    (
        format_ident!("{}ClientProxy", ident),
        format_ident!("{}CallProxy", ident),
        format_ident!("{}SignalProxy", ident),
    )
}

pub(crate) fn expand_struct(args: &Args, item: &ItemStruct) -> TokenStream {
    let krate = krate(args);
    let ident = &item.ident;
    let vis = &item.vis;
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| LitStr::new(&ident.to_string().to_lowercase(), ident.span()));
    let (client, call, signal) = proxy_idents(ident);
    let state_check = quote_spanned! {ident.span()=>
        const _: fn() = || {
            fn __durable_assert_state<T: #krate::__private::EntityState>() {}
            __durable_assert_state::<#ident>();
        };
    };
    let client_doc = format!(" Typed client proxy of entity [`{ident}`]: signals and state reads.");
    let call_doc =
        format!(" Typed orchestration proxy of entity [`{ident}`]: request/response calls.");
    let signal_doc =
        format!(" Typed one-way signals to entity [`{ident}`] from orchestrations and entities.");
    quote! {
        #item

        #[doc = #client_doc]
        #[derive(::core::fmt::Debug, ::core::clone::Clone)]
        #vis struct #client {
            target: #krate::__private::ClientTarget,
        }

        #[doc = #call_doc]
        #[derive(::core::fmt::Debug, ::core::clone::Clone)]
        #vis struct #call {
            target: #krate::__private::CallTarget,
        }

        #[doc = #signal_doc]
        #[derive(::core::fmt::Debug, ::core::clone::Clone)]
        #vis struct #signal {
            target: #krate::__private::SignalTarget,
        }

        const _: () = {
            #state_check

            impl #krate::__private::EntityName for #ident {
                const NAME: &'static str = #name;
            }
            impl ::core::convert::From<#krate::__private::ClientTarget> for #client {
                fn from(target: #krate::__private::ClientTarget) -> Self { Self { target } }
            }
            impl ::core::convert::From<#krate::__private::CallTarget> for #call {
                fn from(target: #krate::__private::CallTarget) -> Self { Self { target } }
            }
            impl ::core::convert::From<#krate::__private::SignalTarget> for #signal {
                fn from(target: #krate::__private::SignalTarget) -> Self { Self { target } }
            }
        };
    }
}

/// One operation found in the impl block.
struct Operation {
    ident: syn::Ident,
    docs: Vec<syn::Attribute>,
    mutates: bool,
    is_async: bool,
    context: bool,
    input: Option<PatType>,
    /// `Some((T, E))` for `Result<T, E>`, else the plain return type.
    result: Option<(Type, Type)>,
    plain: Type,
}

impl Operation {
    /// The proxy method's input parameter and the expression that passes it on.
    fn param_and_value(&self) -> (TokenStream, TokenStream) {
        match &self.input {
            Some(p) => {
                let ty = &p.ty;
                (quote!(input: #ty), quote!(&input))
            }
            None => (quote!(), quote!(&())),
        }
    }
}

fn is_context(ty: &Type) -> bool {
    match ty {
        Type::Reference(r) => is_context(&r.elem),
        Type::Path(p) => p
            .path
            .segments
            .last()
            .is_some_and(|s| s.ident == "EntityContext"),
        _ => false,
    }
}

fn result_parts(ty: &Type) -> Option<(Type, Type)> {
    let Type::Path(p) = ty else { return None };
    let seg = p.path.segments.last()?;
    if seg.ident != "Result" {
        return None;
    }
    let syn::PathArguments::AngleBracketed(a) = &seg.arguments else {
        return None;
    };
    let mut it = a.args.iter().filter_map(|g| match g {
        syn::GenericArgument::Type(t) => Some(t.clone()),
        _ => None,
    });
    let t = it.next()?;
    let e = it.next()?;
    Some((t, e))
}

fn operations(item: &ItemImpl, errors: &mut Errors) -> (Vec<Operation>, bool) {
    let mut ops = Vec::new();
    let mut has_initial = false;
    for it in &item.items {
        let ImplItem::Fn(f) = it else { continue };
        let sig = &f.sig;
        let Some(receiver) = sig.receiver() else {
            if sig.ident == "initial" && sig.inputs.is_empty() {
                has_initial = true;
            }
            continue;
        };
        let syn::ReceiverKind::Reference(_, _, mutability) = &receiver.kind else {
            errors.push(
                receiver,
                "#[entity] operations take `&self` (reads) or `&mut self` (updates), not `self` by value",
            );
            continue;
        };
        let mutates = mutability.is_some();
        if !sig.generics.params.is_empty() {
            errors.push(&sig.generics, "#[entity] operations cannot be generic");
            continue;
        }
        let mut context = false;
        let mut inputs: Vec<PatType> = Vec::new();
        for (i, arg) in sig.inputs.iter().skip(1).enumerate() {
            let FnArg::Typed(pt) = arg else { continue };
            if is_context(&pt.ty) {
                if i == 0 {
                    context = true;
                } else {
                    errors.push(
                        pt,
                        "the `EntityContext` parameter must come right after `self`",
                    );
                }
            } else {
                inputs.push(pt.clone());
            }
        }
        if inputs.len() > 1 {
            for extra in &inputs[1..] {
                errors.push(
                    extra,
                    "#[entity] operations take at most one input; bundle several values into a struct or a tuple",
                );
            }
            continue;
        }
        let plain: Type = match &sig.output {
            ReturnType::Default => syn::parse_quote!(()),
            ReturnType::Type(_, t) => (**t).clone(),
        };
        ops.push(Operation {
            ident: sig.ident.clone(),
            docs: f
                .attrs
                .iter()
                .filter(|a| a.path().is_ident("doc"))
                .cloned()
                .collect(),
            mutates,
            is_async: sig.asyncness.is_some(),
            context,
            input: inputs.pop(),
            result: result_parts(&plain),
            plain,
        });
    }
    (ops, has_initial)
}

#[allow(
    clippy::too_many_lines,
    reason = "one quote! block per generated item reads best in one place"
)]
pub(crate) fn expand_impl(
    args: &Args,
    item: &ItemImpl,
    errors: &mut Errors,
) -> Option<TokenStream> {
    let krate = krate(args);
    if let Some((path, _)) = &item.trait_ {
        errors.push(
            path,
            "#[entity] goes on the inherent `impl Type { .. }` block, not a trait impl",
        );
        return None;
    }
    if !item.generics.params.is_empty() {
        errors.push(&item.generics, "#[entity] types cannot be generic");
        return None;
    }
    let Type::Path(self_path) = &*item.self_ty else {
        errors.push(&item.self_ty, "#[entity] goes on `impl TypeName { .. }`");
        return None;
    };
    let Some(ident) = self_path.path.segments.last().map(|s| s.ident.clone()) else {
        errors.push(&item.self_ty, "#[entity] goes on `impl TypeName { .. }`");
        return None;
    };
    let (ops, has_initial) = operations(item, errors);
    let (client, call, signal) = proxy_idents(&ident);
    let names: Vec<String> = ops.iter().map(|o| o.ident.to_string()).collect();
    let initial = if has_initial {
        quote!(#ident::initial())
    } else {
        quote_spanned!(ident.span()=> <#ident as ::core::default::Default>::default())
    };

    let arms = ops.iter().map(|op| {
        let m = &op.ident;
        let name = m.to_string();
        let decode = op.input.as_ref().map(|p| {
            let ty = &p.ty;
            quote!(let __durable_arg: #ty = #krate::__private::decode_input(#name, input)?;)
        });
        let mut call_args = Vec::new();
        if op.context {
            call_args.push(quote!(ctx));
        }
        if op.input.is_some() {
            call_args.push(quote!(__durable_arg));
        }
        let awaited = if op.is_async {
            quote!(.await)
        } else {
            quote!()
        };
        let conv = if op.result.is_some() {
            quote!(#krate::__private::result_output(__durable_out))
        } else {
            quote!(#krate::__private::encode_output(&__durable_out))
        };
        quote! {
            #name => {
                #decode
                let __durable_out = self.#m(#(#call_args),*)#awaited;
                #conv
            }
        }
    });

    let client_methods = ops.iter().filter(|o| o.mutates).map(|op| {
        let m = &op.ident;
        let name = m.to_string();
        let docs = &op.docs;
        let (param, value) = op.param_and_value();
        quote! {
            #(#docs)*
            ///
            /// Signals this operation (one-way); returns once the signal is durably queued.
            pub async fn #m(&self, #param) -> ::core::result::Result<(), #krate::ClientError> {
                let input = #krate::__private::encode_client(#value)?;
                self.target.client.signal_entity_raw(&self.target.entity, #name, input, self.target.scheduled).await
            }
        }
    });
    let call_methods = ops.iter().map(|op| {
        let m = &op.ident;
        let name = m.to_string();
        let docs = &op.docs;
        let out = op.result.as_ref().map_or(&op.plain, |(t, _)| t);
        let (param, value) = op.param_and_value();
        quote! {
            #(#docs)*
            ///
            /// Calls this operation and returns a future of its result.
            #[track_caller]
            pub fn #m(&self, #param) -> #krate::context::TaskFuture<#out> {
                self.target.ctx.call_entity(&self.target.entity, #name, #value)
            }
        }
    });
    let signal_methods = ops.iter().filter(|o| o.mutates).map(|op| {
        let m = &op.ident;
        let name = m.to_string();
        let docs = &op.docs;
        let (param, value) = op.param_and_value();
        quote! {
            #(#docs)*
            ///
            /// Signals this operation (one-way).
            #[track_caller]
            pub fn #m(&self, #param) {
                self.target.send(#name, #value);
            }
        }
    });
    let entity_name = quote!(<#ident as #krate::__private::EntityName>::NAME);
    Some(quote! {
        #item

        const _: () = {
            impl #krate::Entity for #ident {
                const NAME: &'static str = #entity_name;
                type ClientProxy = #client;
                type CallProxy = #call;
                type SignalProxy = #signal;

                fn initial() -> Self {
                    #initial
                }

                #[allow(unused_variables, clippy::unit_arg, clippy::let_unit_value)]
                fn dispatch<'a>(
                    &'a mut self,
                    ctx: &'a #krate::EntityContext,
                    operation: &'a str,
                    input: &'a str,
                ) -> #krate::__private::BoxFuture<'a, ::core::result::Result<::std::string::String, #krate::FailureDetails>> {
                    ::std::boxed::Box::pin(async move {
                        match operation {
                            #(#arms)*
                            other => ::core::result::Result::Err(#krate::__private::unknown_operation(
                                #entity_name, other, &[#(#names),*])),
                        }
                    })
                }
            }

            impl #ident {
                /// The registration of this entity type: `.register(Type::entity())`.
                pub fn entity() -> #krate::EntityRegistration<Self> {
                    #krate::EntityRegistration::new()
                }
            }

            impl #client {
                /// The entity's id.
                pub fn id(&self) -> &#krate::EntityId {
                    &self.target.entity
                }

                /// Delivers the following signals no earlier than `at`.
                pub fn at(mut self, at: #krate::Timestamp) -> Self {
                    self.target.scheduled = ::core::option::Option::Some(at);
                    self
                }

                /// Reads the entity's current state (`None` if it has none).
                pub async fn state(&self) -> ::core::result::Result<::core::option::Option<#ident>, #krate::ClientError> {
                    self.target.client.read_entity::<#ident>(&self.target.entity.key).await
                }

                /// Deletes the entity's state (signals the built-in `delete` operation).
                pub async fn delete(&self) -> ::core::result::Result<(), #krate::ClientError> {
                    self.target.client.signal_entity_raw(&self.target.entity, "delete", "null".to_owned(), self.target.scheduled).await
                }

                #(#client_methods)*
            }

            impl #call {
                /// The entity's id.
                pub fn id(&self) -> &#krate::EntityId {
                    &self.target.entity
                }

                #(#call_methods)*
            }

            impl #signal {
                /// The entity's id.
                pub fn id(&self) -> &#krate::EntityId {
                    &self.target.entity
                }

                #(#signal_methods)*
            }
        };
    })
}
