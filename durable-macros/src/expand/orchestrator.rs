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
    let version = args.version.as_ref().map_or_else(
        || quote!(::core::option::Option::None),
        |v| quote!(::core::option::Option::Some(#v)),
    );
    let input_ty = input_type(f);
    let output = &f.output;
    let error = &f.error;
    let body = &f.item.block;
    let sig_output = &f.item.sig.output;
    let params: Vec<_> = f.context.iter().chain(f.input.iter()).collect();
    let ctx_arg = format_ident!("__durable_ctx", span = proc_macro2::Span::mixed_site());
    let input_arg = format_ident!("__durable_input", span = proc_macro2::Span::mixed_site());
    let call_input = f.input.as_ref().map(|_| quote!(, #input_arg));
    let ignore_input = f.input.is_none().then(|| quote!(let _ = #input_arg;));
    let marker = marker_attrs();
    let checks = type_checks(&krate, error, &input_ty, output);
    let start_doc = format!(
        " Starts a new `{}` instance with a random id and returns its typed handle.",
        name.value()
    );
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

            #[doc = #start_doc]
            #vis async fn start(
                client: &#krate::Client,
                input: #input_ty,
            ) -> ::core::result::Result<#krate::InstanceHandle<#output>, #krate::ClientError> {
                client.start(#ident, input).await
            }

            /// Starts a new instance with options: instance id, scheduled start, id-reuse
            /// policy, version.
            #vis async fn start_with(
                client: &#krate::Client,
                input: #input_ty,
                options: #krate::StartOptions,
            ) -> ::core::result::Result<#krate::InstanceHandle<#output>, #krate::ClientError> {
                client.start_with(#ident, input, options).await
            }

            /// A typed handle to an existing instance of this orchestrator.
            #vis fn handle(client: &#krate::Client, instance_id: #krate::InstanceId) -> #krate::InstanceHandle<#output> {
                client.handle(instance_id)
            }
        }

        const _: () = {
            #checks

            impl #krate::Orchestrator for #ident {
                const NAME: &'static str = #name;
                const VERSION: ::core::option::Option<&'static str> = #version;
                type Input = #input_ty;
                type Output = #output;
                type Error = #error;

                fn run(
                    #ctx_arg: #krate::OrchestrationContext,
                    #input_arg: Self::Input,
                ) -> impl ::core::future::Future<Output = ::core::result::Result<Self::Output, Self::Error>>
                       + ::core::marker::Send + 'static {
                    #ignore_input
                    #ident::run(#ctx_arg #call_input)
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
