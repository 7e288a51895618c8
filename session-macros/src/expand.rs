//! Code generation: the `Session` impl and the accessor extension trait.

use proc_macro2::{Group, Span, TokenStream, TokenTree};
use quote::{ToTokens as _, format_ident, quote, quote_spanned};
use syn::spanned::Spanned as _;
use syn::{DeriveInput, Fields, Ident};

use crate::ast::{Body, Input};
use crate::attr::ScopeAttr;
use crate::errors::Errors;
use crate::valid;

/// A derive that did not expand: its compile errors, and what was parsed
/// (for the fallback that keeps the type's uses compiling).
pub(crate) struct Failed<'a> {
    pub(crate) errors: TokenStream,
    pub(crate) parsed: Option<Box<Input<'a>>>,
}

/// The `Session` impl and the accessor trait, or every error found.
pub(crate) fn derive(input: &DeriveInput) -> Result<TokenStream, Failed<'_>> {
    let mut errors = Errors::default();
    let parsed = Input::from_syn(input, &mut errors);
    if let Some(parsed) = &parsed {
        valid::validate(parsed, &mut errors);
    }
    match (parsed, errors.finish()) {
        (Some(parsed), Ok(())) => Ok(impl_session(&parsed)),
        (parsed, result) => Err(Failed {
            errors: result
                .err()
                .map(|e| e.to_compile_error())
                .unwrap_or_default(),
            parsed: parsed.map(Box::new),
        }),
    }
}

/// The path of the facade's hidden module: `::tg_session::__private` or the
/// `crate = "..."` override.
pub(crate) fn private(input: Option<&Input<'_>>) -> TokenStream {
    match input.and_then(|input| input.attrs.krate.as_ref()) {
        Some(krate) => quote!(#krate::__private),
        None => quote!(::tg_session::__private),
    }
}

/// The accessor's name: `key = "..."`, else `session`.
pub(crate) fn accessor(input: &Input<'_>) -> Ident {
    match &input.attrs.key {
        Some(key) => key.clone(),
        None => format_ident!("session"),
    }
}

fn impl_session(input: &Input<'_>) -> TokenStream {
    let p = private(Some(input));
    let ty = &input.original.ident;
    let attrs = &input.attrs;
    let accessor = accessor(input);
    let name = accessor.to_string();
    let lazy = attrs.lazy.is_some();
    let key = match (&attrs.key_fn, attrs.scope) {
        (Some(key_fn), _) => quote!(#p::KeyStrategy::Custom(#key_fn)),
        (None, scope) => {
            let scope = scope.unwrap_or(ScopeAttr::User);
            quote!(#p::KeyStrategy::Scope(#p::#scope))
        }
    };
    let ttl = match &attrs.ttl_secs {
        Some(secs) => {
            quote!(::core::option::Option::Some(::core::time::Duration::from_secs(#secs)))
        }
        None => quote!(::core::option::Option::None),
    };
    let on_decode_error = attrs.on_decode_error.unwrap_or_default();
    let codec = match &attrs.codec {
        Some(codec) => quote!(#codec),
        None => quote!(#p::Json),
    };
    let initial = initial(input);
    let versions = versions(input, &p);
    let ext = ext_trait(input, &p);
    // The supertrait bounds are checked at the type's name, so a type that is
    // not `Serialize + DeserializeOwned` gets its error there.
    let impl_for = quote_spanned!(ty.span()=> impl #p::Session for #ty);
    quote! {
        #[automatically_derived]
        #impl_for {
            const NAME: &'static str = #name;
            const LAZY: bool = #lazy;
            const KEY: #p::KeyStrategy = #key;
            const TTL: ::core::option::Option<::core::time::Duration> = #ttl;
            const ON_DECODE_ERROR: #p::OnDecodeError = #p::#on_decode_error;
            type Codec = #codec;

            fn initial() -> Self {
                #initial
            }

            fn copy_value(&self) -> ::core::option::Option<Self> {
                #[allow(unused_imports)]
                use #p::{CopyByClone as _, CopyUnavailable as _};
                (&&#p::ValueProbe(self)).copy_value()
            }

            fn same_value(&self, other: &Self) -> ::core::option::Option<bool> {
                #[allow(unused_imports)]
                use #p::{SameByEq as _, SameUnavailable as _};
                (&&#p::ValueProbe(self)).same_value(other)
            }

            #versions
        }

        #ext
    }
}

/// `SCHEMA_VERSION` and `migrate` for a type with `version = N`: one match
/// arm per stored version, decoding that version's shape and converting it
/// step by step up to `Self`. Each step's call is spanned on the `from` type
/// (or the `with` path), so a missing `Deserialize` or `From` is reported
/// there.
fn versions(input: &Input<'_>, p: &TokenStream) -> TokenStream {
    let Some(current) = input.attrs.version else {
        return TokenStream::new();
    };
    let current = current.value;
    let migrations = &input.attrs.migrations;
    let some = quote!(::core::option::Option::Some);
    let none = quote!(::core::option::Option::None);
    let arms =
        migrations.iter().enumerate().map(|(index, migration)| {
            let version = migration.version.value;
            let shape = &migration.from;
            let decode = quote_spanned! {shape.span()=>
                #p::decode_shape::<<Self as #p::Session>::Codec, #shape>(#version, __payload)?
            };
            let steps = migrations[index..].iter().enumerate().map(|(offset, step)| {
            let from = &step.from;
            let into = match migrations.get(index + offset + 1) {
                Some(next) => next.from.to_token_stream(),
                None => quote!(Self),
            };
            let step_version = step.version.value;
            match &step.with {
                Some(with) => quote_spanned! {with.span()=>
                    let __value = #p::step_with::<#from, #into>(#step_version, #with(__value))?;
                },
                None => {
                    // Every token of the call on the `from` type, so a missing
                    // `From` is reported there and not on the derive.
                    let call = respan(quote!(#p::step_from::<#from, #into>), from.span());
                    quote_spanned! {from.span()=>
                        let __value = #call(__value)?;
                    }
                }
            }
        });
            // Records written before the type had a version are the oldest shape.
            let pattern = match index {
                0 => quote!(#none | #some(#version)),
                _ => quote!(#some(#version)),
            };
            quote! {
                #pattern => {
                    let __value = #decode;
                    #(#steps)*
                    ::core::result::Result::Ok(__value)
                }
            }
        });
    let current_pattern = match migrations.is_empty() {
        true => quote!(#none | #some(#current)),
        false => quote!(#some(#current)),
    };
    let declared = migrations
        .iter()
        .map(|migration| migration.version.value)
        .chain([current])
        .map(|version| version.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    quote! {
        const SCHEMA_VERSION: ::core::option::Option<::core::primitive::u32> = #some(#current);

        fn migrate(
            __stored: ::core::option::Option<::core::primitive::u32>,
            __payload: &[::core::primitive::u8],
        ) -> ::core::result::Result<Self, #p::MigrationError> {
            match __stored {
                #(#arms)*
                #current_pattern => #p::decode_shape::<<Self as #p::Session>::Codec, Self>(#current, __payload),
                #some(__version) => ::core::result::Result::Err(
                    #p::unknown_version::<Self>(__version, #declared),
                ),
            }
        }
    }
}

/// `tokens` with every span set to `span`.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut tree| {
            if let TokenTree::Group(group) = &tree {
                let mut inner = Group::new(group.delimiter(), respan(group.stream(), span));
                inner.set_span(span);
                tree = TokenTree::Group(inner);
            }
            tree.set_span(span);
            tree
        })
        .collect()
}

fn initial(input: &Input<'_>) -> TokenStream {
    if let Some(initial) = &input.attrs.initial {
        return quote!(#initial());
    }
    // Spanned on the field's type or the type's name, so a missing `Default`
    // is reported there rather than on `#[derive(Session)]`.
    match &input.body {
        Body::Struct { fields, defaults } => {
            let values = fields
                .iter()
                .zip(defaults)
                .map(|(field, default)| match default {
                    Some(default) => default.expr.to_token_stream(),
                    None => quote_spanned!(field.ty.span()=> ::core::default::Default::default()),
                });
            match fields {
                Fields::Named(named) => {
                    let names = named.named.iter().map(|f| &f.ident);
                    quote!(Self { #(#names: #values,)* })
                }
                Fields::Unnamed(_) => quote!(Self ( #(#values,)* )),
                Fields::Unit => quote!(Self),
            }
        }
        Body::Enum { variants } => match variants.iter().find(|v| v.default.is_some()) {
            Some(variant) => {
                let ident = &variant.original.ident;
                quote!(Self::#ident)
            }
            None => {
                let ty = &input.original.ident;
                quote_spanned!(ty.span()=> <Self as ::core::default::Default>::default())
            }
        },
    }
}

/// The extension trait whose method, named by `key`, is the accessor.
pub(crate) fn ext_trait(input: &Input<'_>, p: &TokenStream) -> TokenStream {
    let vis = &input.original.vis;
    let ty = &input.original.ident;
    let accessor = accessor(input);
    let trait_name = format_ident!("{}SessionExt", ty);
    let trait_doc = format!(
        "The accessor of the [`{ty}`] session: `ctx.{accessor}()` on every session context."
    );
    let lazy = input.attrs.lazy.is_some();
    let (signature, body, method_doc) = if lazy {
        (
            quote! {
                fn #accessor(&self) -> impl ::core::future::Future<
                    Output = ::core::result::Result<#p::SessionRef<'_, #ty>, #p::Error>,
                > + ::core::marker::Send + '_
            },
            quote!(#p::SessionContext::sessions(self).load::<#ty>()),
            format!("Loads the `{accessor}` session on first use in this update (lazy)."),
        )
    } else {
        (
            quote! {
                fn #accessor(&self) -> ::core::result::Result<#p::SessionRef<'_, #ty>, #p::Error>
            },
            quote!(#p::SessionContext::sessions(self).get::<#ty>()),
            format!("The `{accessor}` session, loaded before the handler (eager)."),
        )
    };
    quote! {
        #[doc = #trait_doc]
        #vis trait #trait_name {
            #[doc = #method_doc]
            #[allow(non_snake_case)]
            #signature;
        }

        #[automatically_derived]
        impl<__C: #p::SessionContext + ?::core::marker::Sized> #trait_name for __C {
            #[allow(non_snake_case)]
            #signature {
                #body
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use syn::{DeriveInput, parse_quote};

    use super::derive;

    fn expand(input: &DeriveInput) -> String {
        derive(input)
            .unwrap_or_else(|failed| crate::fallback::failed(input, failed))
            .to_string()
    }

    #[test]
    fn the_accessor_trait_is_documented() {
        let output = expand(&parse_quote! {
            #[session(key = "sessionKey", lazy)]
            pub struct Profile { name: String }
        });
        assert!(output.contains("pub trait ProfileSessionExt"), "{output}");
        assert!(
            output.contains(r#"doc = "The accessor of the [`Profile`] session: `ctx.sessionKey()` on every session context.""#),
            "{output}"
        );
        assert!(
            output.contains(
                r#"doc = "Loads the `sessionKey` session on first use in this update (lazy).""#
            ),
            "{output}"
        );
        // The camelCase accessor must not warn in the user's crate.
        assert_eq!(
            output.matches("allow (non_snake_case)").count(),
            2,
            "{output}"
        );
    }

    #[test]
    fn an_error_comes_with_a_stub_and_the_accessor() {
        let output = expand(&parse_quote! {
            #[session(lazzy, key = "counter")]
            struct Counter { apple: u32 }
        });
        assert_eq!(output.matches("compile_error").count(), 1, "{output}");
        assert!(
            output.contains("impl :: tg_session :: __private :: Session for Counter"),
            "{output}"
        );
        assert!(output.contains("fn counter"), "{output}");
    }

    #[test]
    fn a_union_gets_the_error_alone() {
        let output = expand(&parse_quote! {
            union Bits { int: u32, float: f32 }
        });
        assert_eq!(output.matches("compile_error").count(), 1, "{output}");
        assert!(!output.contains("impl"), "{output}");
    }
}
