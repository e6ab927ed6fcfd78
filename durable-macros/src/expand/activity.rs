//! `#[activity]` codegen.
//
// Input:
//     /// Charges a card.
//     #[activity]
//     pub async fn charge(State(pool): State<PgPool>, order: Order) -> Result<Receipt, PayError> { .. }
//
// Output:
//     /// Charges a card.
//     pub struct charge;                       // the typed marker: `ctx.call(charge, order)`
//     impl charge {
//         // the body, callable in tests with the state passed by hand: `charge::run(State(pool), order)`
//         pub async fn run(State(pool): State<PgPool>, order: Order) -> Result<Receipt, PayError> { .. }
//     }
//     const _: () = {
//         // checks at the user's spans: payload types, error type
//         impl ::durable_core::Activity for charge {
//             NAME = "charge", STATES = [PgPool], LOCAL = true (with `#[activity(local)]`), Input = Order, Output = Receipt, Error = PayError,
//             fn run(&self, ctx, input) { charge::run(__private::state::<PgPool>(&ctx, ..), input) }
//         }
//         impl ::durable_core::Registration for charge { .. }
//     };
//
// With `-> R<T>` (an alias), `Output` and `Error` are `<R<T> as IntoResult>::Output` / `::Error`.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;

use super::{
    body_attrs, durable_name, input_type, into_result, krate, marker_attrs, result_items,
    result_span, result_types, type_checks,
};
use crate::args::Args;
use crate::ast::{Function, Param};

pub(crate) fn expand(args: &Args, f: &Function) -> TokenStream {
    if f.transactional {
        return expand_transactional(args, f);
    }
    let krate = krate(args);
    let vis = &f.item.vis;
    let ident = &f.item.sig.ident;
    let docs = &f.docs;
    let attrs = body_attrs(f);
    let name = durable_name(args, f);
    let input_ty = input_type(f);
    let (output, error) = result_types(&krate, f);
    let body = &f.item.block;
    let sig_output = &f.item.sig.output;
    let params = &f.item.sig.inputs;
    let mixed = proc_macro2::Span::mixed_site();
    let ctx_arg = format_ident!("__durable_ctx", span = mixed);
    let input_arg = format_ident!("__durable_input", span = mixed);
    let mut take_states = Vec::new();
    let mut state_types = Vec::new();
    let call_args: Vec<TokenStream> = f
        .params
        .iter()
        .map(|p| match p {
            Param::Context => quote!(#ctx_arg),
            Param::Input | Param::Transaction => quote!(#input_arg),
            Param::State { inner, written } => {
                let arg = format_ident!("__durable_state_{}", take_states.len(), span = mixed);
                // Spanned at the parameter's type: a `State` that is not ours, or a value
                // that cannot be shared, is reported there.
                let krate = super::respanned(&krate, written.span());
                take_states.push(quote_spanned! {written.span()=>
                    let #arg = <#written as #krate::__private::StateParam>::from_state(
                        #krate::__private::state::<#inner>(&#ctx_arg, <Self as #krate::Activity>::NAME),
                    );
                });
                state_types.push(quote!(#krate::StateType::of::<#inner>()));
                quote!(#arg)
            }
        })
        .collect();
    let states = (!state_types.is_empty())
        .then(|| quote!(const STATES: &'static [#krate::StateType] = &[#(#state_types),*];));
    let local = args.local.then(|| {
        quote!(
            const LOCAL: bool = true;
        )
    });
    let ignore_ctx = f.context.is_none().then(|| quote!(let _ = &#ctx_arg;));
    let ignore_input = f.input.is_none().then(|| quote!(let _ = #input_arg;));
    let call = into_result(&krate, f, quote!(#ident::run(#(#call_args),*)));
    let result_items = result_items(f, &output, &error);
    let returns = quote::quote_spanned! {result_span(f)=>
        impl ::core::future::Future<Output = ::core::result::Result<Self::Output, Self::Error>> + ::core::marker::Send
    };
    let marker = marker_attrs();
    let checks = type_checks(&krate, f, &input_ty);
    let run_doc = if state_types.is_empty() {
        quote!(#[doc = " Runs the activity body directly, without the durable runtime (for unit tests)."])
    } else {
        quote! {
            #[doc = " Runs the activity body directly, without the durable runtime (for unit tests): pass"]
            #[doc = " each `State<T>` value by hand, in declaration order."]
        }
    };
    quote! {
        #(#docs)*
        #marker
        #vis struct #ident;

        impl #ident {
            #(#docs)*
            ///
            #run_doc
            #(#attrs)*
            #[allow(clippy::unused_async)]
            #vis async fn run(#params) #sig_output #body
        }

        #[allow(clippy::type_complexity)]
        const _: () = {
            #checks

            impl #krate::Activity for #ident {
                const NAME: &'static str = #name;
                #states
                #local
                type Input = #input_ty;
                #result_items

                fn run(
                    &self,
                    #ctx_arg: #krate::ActivityContext,
                    #input_arg: Self::Input,
                ) -> #returns {
                    #(#take_states)*
                    #ignore_ctx
                    #ignore_input
                    #call
                }
            }

            impl #krate::Registration for #ident {
                fn register_into(self, registry: &mut #krate::Registry) {
                    registry.add_activity(self);
                }
            }
        };
    }
}

// Input:
//     #[activity(transactional)]
//     pub fn transfer(tx: &RedbTransaction<'_>, t: Transfer) -> Result<Receipt, BankError> { .. }
//
// Output:
//     pub struct transfer;
//     impl transfer {
//         pub fn run(tx: &RedbTransaction<'_>, t: Transfer) -> Result<Receipt, BankError> { .. }
//     }
//     const _: () = {
//         impl ::durable_core::Activity for transfer {
//             NAME = "transfer", Input = Transfer, Output = Receipt, Error = ActivityError,
//             // only reached outside a store transaction: a clear non-retriable failure
//             fn run(&self, ctx, input) { ready(Err(__private::transactional_outside_store("transfer"))) }
//         }
//         impl ::durable_core::transaction::RedbActivity for transfer {
//             fn run_in(&self, tx, input) { transfer::run(tx, input).map_err(to_failure) }
//         }
//         impl ::durable_core::Registration for transfer { .. registry.add_redb_activity(self) }
//     };
//
// With `tx: &PgTransaction<'_>` the function is `async`, `run` stays `async`, and the store
// half is `PostgresActivity` (`run_in` returns a boxed future) with `add_postgres_activity`.
fn expand_transactional(args: &Args, f: &Function) -> TokenStream {
    let krate = krate(args);
    let vis = &f.item.vis;
    let ident = &f.item.sig.ident;
    let docs = &f.docs;
    let attrs = body_attrs(f);
    let name = durable_name(args, f);
    let input_ty = input_type(f);
    let (output, _) = result_types(&krate, f);
    let body = &f.item.block;
    let sig_output = &f.item.sig.output;
    let params = &f.item.sig.inputs;
    let mixed = proc_macro2::Span::mixed_site();
    let tx_arg = format_ident!("__durable_tx", span = mixed);
    let input_arg = format_ident!("__durable_input", span = mixed);
    let call_args: Vec<TokenStream> = f
        .params
        .iter()
        .map(|p| match p {
            Param::Transaction => quote!(#tx_arg),
            Param::Input | Param::Context | Param::State { .. } => quote!(#input_arg),
        })
        .collect();
    let ignore_input = f.input.is_none().then(|| quote!(let _ = #input_arg;));
    let call = if f.postgres {
        quote!(#ident::run(#(#call_args),*).await)
    } else {
        quote!(#ident::run(#(#call_args),*))
    };
    let call = match &f.returns {
        crate::ast::Returns::Result { .. } => call,
        crate::ast::Returns::Alias(ty) => {
            let span = result_span(f);
            let ty = super::respanned(ty, span);
            quote_spanned!(span=> <#ty as #krate::__private::IntoResult>::into_result(#call))
        }
    };
    let settle = quote! {
        match #call {
            ::core::result::Result::Ok(v) => ::core::result::Result::Ok(v),
            ::core::result::Result::Err(e) => ::core::result::Result::Err(#krate::__private::to_failure(&e)),
        }
    };
    let store_impl = store_impl(
        &krate,
        f,
        &quote!(#tx_arg),
        &quote!(#input_arg),
        &quote!(#ignore_input #settle),
    );
    let asyncness = &f.item.sig.asyncness;
    let marker = marker_attrs();
    let checks = type_checks(&krate, f, &input_ty);
    let output_item = quote_spanned! {result_span(f)=> type Output = #output; };
    quote! {
        #(#docs)*
        #marker
        #vis struct #ident;

        impl #ident {
            #(#docs)*
            ///
            #[doc = " Runs the activity body directly, without the durable runtime (for unit tests)."]
            // The `Result` is the activity's contract, even for a body that never fails.
            #[allow(clippy::unnecessary_wraps)]
            #(#attrs)*
            #vis #asyncness fn run(#params) #sig_output #body
        }

        #[allow(clippy::type_complexity)]
        const _: () = {
            #checks

            impl #krate::Activity for #ident {
                const NAME: &'static str = #name;
                type Input = #input_ty;
                #output_item
                type Error = #krate::ActivityError;

                fn run(
                    &self,
                    _: #krate::ActivityContext,
                    _: Self::Input,
                ) -> impl ::core::future::Future<Output = ::core::result::Result<Self::Output, Self::Error>> + ::core::marker::Send {
                    ::core::future::ready(::core::result::Result::Err(
                        #krate::__private::transactional_outside_store(#name),
                    ))
                }
            }

            #store_impl
        };
    }
}

/// The store-specific half of a transactional activity: `RedbActivity` (synchronous) or
/// `PostgresActivity` (`async`), and the registration that puts it in the registry.
fn store_impl(
    krate: &TokenStream,
    f: &Function,
    tx_arg: &TokenStream,
    input_arg: &TokenStream,
    body: &TokenStream,
) -> TokenStream {
    let ident = &f.item.sig.ident;
    if f.postgres {
        quote! {
            impl #krate::transaction::PostgresActivity for #ident {
                fn run_in<'__durable_t>(
                    &'__durable_t self,
                    #tx_arg: &'__durable_t #krate::PgTransaction<'__durable_t>,
                    #input_arg: Self::Input,
                ) -> #krate::__private::BoxFuture<'__durable_t, ::core::result::Result<Self::Output, #krate::FailureDetails>> {
                    ::std::boxed::Box::pin(async move {
                        #body
                    })
                }
            }

            impl #krate::Registration for #ident {
                fn register_into(self, registry: &mut #krate::Registry) {
                    registry.add_postgres_activity(self);
                }
            }
        }
    } else {
        quote! {
            impl #krate::transaction::RedbActivity for #ident {
                fn run_in(
                    &self,
                    #tx_arg: &#krate::RedbTransaction<'_>,
                    #input_arg: Self::Input,
                ) -> ::core::result::Result<Self::Output, #krate::FailureDetails> {
                    #body
                }
            }

            impl #krate::Registration for #ident {
                fn register_into(self, registry: &mut #krate::Registry) {
                    registry.add_redb_activity(self);
                }
            }
        }
    }
}
