//! Rules that span several attributes.

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
        Body::Struct { defaults, .. } => {
            if attrs.initial.is_some() {
                for default in defaults.iter().flatten() {
                    errors.spanned(
                        default.span(),
                        "field defaults cannot be combined with `initial` on the type: \
                         `initial` builds the whole value; remove one of them",
                    );
                }
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
