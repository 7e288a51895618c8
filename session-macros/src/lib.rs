//! `#[derive(Session)]` for [tg-session](https://docs.rs/tg-session).
//!
//! Use it through the `tg-session` crate: the generated code refers to that
//! crate's hidden API, so this crate's version is pinned by it.

mod ast;
mod attr;
mod errors;
mod expand;
mod fallback;
mod valid;

use proc_macro::TokenStream;

/// Derives `tg_session::Session` and a typed accessor on every session context.
///
/// See the `tg-session` crate documentation for the attributes.
#[proc_macro_derive(Session, attributes(session))]
pub fn derive_session(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    expand::derive(&input)
        .unwrap_or_else(|failed| fallback::failed(&input, failed))
        .into()
}
