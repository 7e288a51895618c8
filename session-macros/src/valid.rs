//! Rules that span several attributes.

use syn::ext::IdentExt as _;
use syn::spanned::Spanned;

use crate::ast::{Body, Input};
use crate::errors::Errors;

pub(crate) fn validate(input: &Input<'_>, errors: &mut Errors) {
    let attrs = &input.attrs;
    let generics = &input.original.generics;
    if !generics.params.is_empty() {
        errors.spanned(
            generics.span(),
            "`Session` cannot be derived for a generic type: its storage key and codec are \
             fixed per type; derive it on a concrete type that holds the generic one",
        );
    }
    if let (Some(key_fn), Some(_)) = (&attrs.key_fn, &attrs.scope) {
        errors.spanned(
            key_fn.span(),
            "`key_fn` and `scope` cannot be used together: a `key_fn` builds the whole key; \
             remove one of them",
        );
    }
    match &input.body {
        Body::Struct { fields, defaults } => {
            let with_default: Vec<String> = fields
                .iter()
                .zip(defaults)
                .enumerate()
                .filter(|(_, (_, default))| default.is_some())
                .map(|(index, (field, _))| match &field.ident {
                    Some(ident) => format!("`{}`", ident.unraw()),
                    None => format!("field {index}"),
                })
                .collect();
            if let (Some(initial), false) = (&attrs.initial, with_default.is_empty()) {
                errors.spanned(
                    initial.span(),
                    format_args!(
                        "`initial` builds the whole value, so fields cannot have \
                         `#[session(default = ...)]` too ({} has one); remove one of them",
                        with_default.join(", ")
                    ),
                );
            }
        }
        Body::Enum { variants } => {
            let mut seen = None;
            for variant in variants {
                let Some(span) = variant.default else {
                    continue;
                };
                if !matches!(variant.original.fields, syn::Fields::Unit) {
                    errors.spanned(
                        span,
                        "only a unit variant can be `#[session(default)]`; use \
                         `#[session(initial = path::to::fn)]` on the enum for a variant with fields",
                    );
                } else if seen.is_some() {
                    errors.spanned(span, "only one variant can be `#[session(default)]`");
                } else if attrs.initial.is_some() {
                    errors.spanned(
                        span,
                        "`#[session(default)]` on a variant cannot be combined with `initial` on \
                         the enum; remove one of them",
                    );
                }
                seen = seen.or(Some(span));
            }
        }
    }
}
