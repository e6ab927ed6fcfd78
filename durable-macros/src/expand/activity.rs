//! `#[activity]` codegen.
//
// Input:
//     /// Charges a card.
//     #[activity]
//     pub async fn charge(order: Order) -> Result<Receipt, PayError> { .. }
//
// Output:
//     /// Charges a card.
//     pub struct charge;                       // the typed marker: `ctx.call(charge, order)`
//     impl charge {
//         pub async fn run(order: Order) -> Result<Receipt, PayError> { .. }   // the body, callable in tests
//     }
//     const _: () = {
//         impl ::durable_core::Activity for charge { NAME = "charge", Input = Order, Output = Receipt, Error = PayError, .. }
//         impl ::durable_core::Registration for charge { .. }
//     };

use proc_macro2::TokenStream;
use quote::{format_ident, quote};

use super::{body_attrs, durable_name, input_type, krate, marker_attrs, type_checks};
use crate::args::Args;
use crate::ast::Function;

pub(crate) fn expand(args: &Args, f: &Function) -> TokenStream {
    let krate = krate(args);
    let vis = &f.item.vis;
    let ident = &f.item.sig.ident;
    let docs = &f.docs;
    let attrs = body_attrs(f);
    let name = durable_name(args, f);
    let input_ty = input_type(f);
    let output = &f.output;
    let error = &f.error;
    let body = &f.item.block;
    let sig_output = &f.item.sig.output;
    let params: Vec<_> = f.context.iter().chain(f.input.iter()).collect();
    let ctx_arg = format_ident!("__durable_ctx", span = proc_macro2::Span::mixed_site());
    let input_arg = format_ident!("__durable_input", span = proc_macro2::Span::mixed_site());
    let call_args: Vec<TokenStream> = f
        .context
        .iter()
        .map(|_| quote!(#ctx_arg))
        .chain(f.input.iter().map(|_| quote!(#input_arg)))
        .collect();
    let ignore_ctx = f.context.is_none().then(|| quote!(let _ = #ctx_arg;));
    let ignore_input = f.input.is_none().then(|| quote!(let _ = #input_arg;));
    let marker = marker_attrs();
    let checks = type_checks(&krate, error, &input_ty, output);
    quote! {
        #(#docs)*
        #marker
        #vis struct #ident;

        impl #ident {
            #(#docs)*
            ///
            /// Runs the activity body directly, without the durable runtime (for unit tests).
            #(#attrs)*
            #[allow(clippy::unused_async)]
            #vis async fn run(#(#params),*) #sig_output #body
        }

        const _: () = {
            #checks

            impl #krate::Activity for #ident {
                const NAME: &'static str = #name;
                type Input = #input_ty;
                type Output = #output;
                type Error = #error;

                fn run(
                    &self,
                    #ctx_arg: #krate::ActivityContext,
                    #input_arg: Self::Input,
                ) -> impl ::core::future::Future<Output = ::core::result::Result<Self::Output, Self::Error>> + ::core::marker::Send {
                    #ignore_ctx
                    #ignore_input
                    #ident::run(#(#call_args),*)
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
