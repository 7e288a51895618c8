//! What to emit beside a compile error: just enough that the type's uses
//! compile, so the user sees the one real error and no cascade.

use proc_macro2::TokenStream;
use quote::quote;
use syn::DeriveInput;

use crate::ast::Input;
use crate::expand;

/// A failed derive's whole output: its errors, and the stub beside them.
pub(crate) fn failed(input: &DeriveInput, failed: expand::Failed<'_>) -> TokenStream {
    let stub = expand(input, failed.parsed.as_deref());
    let errors = failed.errors;
    quote! { #errors #stub }
}

fn expand(input: &DeriveInput, parsed: Option<&Input<'_>>) -> TokenStream {
    if !matches!(input.data, syn::Data::Struct(_) | syn::Data::Enum(_))
        || !input.generics.params.is_empty()
    {
        return TokenStream::new();
    }
    let p = expand::private(parsed);
    let ty = &input.ident;
    let name = parsed.map_or_else(
        || "session".to_owned(),
        |parsed| expand::accessor(parsed).to_string(),
    );
    let ext = parsed.map(|parsed| expand::ext_trait(parsed, &p));
    quote! {
        #[automatically_derived]
        impl #p::Session for #ty {
            const NAME: &'static str = #name;
            type Codec = #p::Json;

            fn initial() -> Self {
                ::core::unimplemented!("`#[derive(Session)]` failed to expand")
            }
        }

        #ext
    }
}
