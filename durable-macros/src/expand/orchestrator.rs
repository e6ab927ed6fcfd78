//! `#[orchestrator]` codegen.
//
// Input:
//     #[orchestrator(version = "2")]
//     pub async fn approve(ctx: OrchestrationContext, req: Request) -> Result<Outcome, OrchestrationError> { .. }
//
// Output:
//     pub struct approve;                      // the typed marker
//     impl approve {
//         pub async fn run(ctx: OrchestrationContext, req: Request) -> Result<Outcome, OrchestrationError> { .. }
//         pub async fn start(client: &Client, input: Request) -> Result<InstanceHandle<Outcome>, ClientError>;
//         pub async fn start_with(client: &Client, input: Request, options: StartOptions) -> ..;
//         pub fn handle(client: &Client, id: InstanceId) -> InstanceHandle<Outcome>;
//     }
//     const _: () = { impl Orchestrator for approve { .. } impl Registration for approve { .. } };
//
// With `-> R<T>` (an alias), `Output` and `Error` are `<R<T> as IntoResult>::Output` / `::Error`.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};

use super::{
    body_attrs, durable_name, input_type, into_result, krate, marker_attrs, result_items,
    result_span, result_types, type_checks,
};
use crate::args::Args;
use crate::ast::Function;

pub(crate) fn expand(args: &Args, f: &Function) -> TokenStream {
    let krate = krate(args);
    let vis = &f.item.vis;
    let ident = &f.item.sig.ident;
    let docs = &f.docs;
    let attrs = body_attrs(f);
    let name = durable_name(args, f);
    let version = args.version.as_ref().map_or_else(
        || quote!(::core::option::Option::None),
        |v| quote!(::core::option::Option::Some(#v)),
    );
    let input_ty = input_type(f);
    let (output, error) = result_types(&krate, f);
    let body = &f.item.block;
    let sig_output = &f.item.sig.output;
    let params: Vec<_> = f.context.iter().chain(f.input.iter()).collect();
    let ctx_arg = format_ident!("__durable_ctx", span = proc_macro2::Span::mixed_site());
    let input_arg = format_ident!("__durable_input", span = proc_macro2::Span::mixed_site());
    let call_input = f.input.as_ref().map(|_| quote!(, #input_arg));
    let ignore_input = f.input.is_none().then(|| quote!(let _ = #input_arg;));
    let call = into_result(&krate, f, quote!(#ident::run(#ctx_arg #call_input)));
    let result_items = result_items(f, &output, &error);
    let returns = quote::quote_spanned! {result_span(f)=>
        impl ::core::future::Future<Output = ::core::result::Result<Self::Output, Self::Error>> + ::core::marker::Send + 'static
    };
    let start_doc = format!(
        " Starts a new `{}` instance with a random id and returns its typed handle.",
        name.value()
    );
    // The client proxies. Spanned like the output type (which they name), `crate` path
    // included, so that an alias that is not a `Result` is reported once, at the return type.
    // With user spans the lints see them as the user's code: unused proxies are fine, and
    // the projected output type is not the user's to simplify.
    let pkrate = super::respanned(&krate, result_span(f));
    let proxies = quote::quote_spanned! {result_span(f)=>
        #[doc = #start_doc]
        #[allow(dead_code, clippy::type_complexity)]
        #vis async fn start(
            client: &#pkrate::Client,
            input: #input_ty,
        ) -> ::core::result::Result<#pkrate::InstanceHandle<#output>, #pkrate::ClientError> {
            client.start(#ident, input).await
        }

        /// Starts a new instance with options: instance id, scheduled start, id-reuse
        /// policy, version.
        #[allow(dead_code, clippy::type_complexity)]
        #vis async fn start_with(
            client: &#pkrate::Client,
            input: #input_ty,
            options: #pkrate::StartOptions,
        ) -> ::core::result::Result<#pkrate::InstanceHandle<#output>, #pkrate::ClientError> {
            client.start_with(#ident, input, options).await
        }

        /// A typed handle to an existing instance of this orchestrator.
        #[allow(dead_code, clippy::type_complexity)]
        #vis fn handle(client: &#pkrate::Client, instance_id: #pkrate::InstanceId) -> #pkrate::InstanceHandle<#output> {
            client.handle(instance_id)
        }
    };
    let marker = marker_attrs();
    let checks = type_checks(&krate, f, &input_ty);
    quote! {
        #(#docs)*
        #marker
        #vis struct #ident;

        impl #ident {
            #(#docs)*
            ///
            /// The orchestration body. The runtime calls it; call it directly only from tests.
            #(#attrs)*
            #[allow(clippy::unused_async)]
            #vis async fn run(#(#params),*) #sig_output #body

            #proxies
        }

        #[allow(clippy::type_complexity)]
        const _: () = {
            #checks

            impl #krate::Orchestrator for #ident {
                const NAME: &'static str = #name;
                const VERSION: ::core::option::Option<&'static str> = #version;
                type Input = #input_ty;
                #result_items

                fn run(
                    #ctx_arg: #krate::OrchestrationContext,
                    #input_arg: Self::Input,
                ) -> #returns {
                    #ignore_input
                    #call
                }
            }

            impl #krate::Registration for #ident {
                fn register_into(self, registry: &mut #krate::Registry) {
                    registry.add_orchestrator::<Self>();
                }
            }
        };
    }
}
