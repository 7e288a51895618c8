//! Rules that span several attributes.

use syn::ext::IdentExt as _;
use syn::spanned::Spanned;

use quote::ToTokens as _;

use crate::ast::{Body, Input};
use crate::attr::Container;
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
    migrations(attrs, errors);
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

/// The version chain: a current version above every previous shape's, each
/// previous shape once, listed oldest first.
fn migrations(attrs: &Container, errors: &mut Errors) {
    let Some(version) = attrs.version else {
        if let (Some(first), false) = (attrs.migrations.first(), attrs.version_invalid) {
            errors.spanned(
                first.span,
                "`migrate(...)` needs the type's current schema version: add `version = N` \
                 to `#[session(...)]`, greater than every `migrate(version = ...)`",
            );
        }
        return;
    };
    for migration in &attrs.migrations {
        if migration.version.value >= version.value {
            errors.spanned(
                migration.version.span,
                format_args!(
                    "a previous shape's version must be lower than the type's \
                     `version = {}`, but this one is {}; raise the type's `version`",
                    version.value, migration.version.value
                ),
            );
        }
    }
    for pair in attrs.migrations.windows(2) {
        let [earlier, later] = pair else { continue };
        if later.version.value == earlier.version.value {
            errors.spanned(
                later.version.span,
                format_args!(
                    "duplicate migrate version {}: each previous shape has a version of its own",
                    later.version.value
                ),
            );
        } else if later.version.value < earlier.version.value {
            errors.spanned(
                later.version.span,
                format_args!(
                    "migrate versions must increase in the order they are written, but \
                     version {} comes after version {}; list the oldest shape first (each \
                     shape converts into the one after it)",
                    later.version.value, earlier.version.value
                ),
            );
        }
    }
    let mut seen: Vec<(String, u32)> = Vec::new();
    for migration in &attrs.migrations {
        let name = migration.from.to_token_stream().to_string();
        if let Some((_, version)) = seen.iter().find(|(seen, _)| *seen == name) {
            errors.spanned(
                migration.from.span(),
                format_args!(
                    "`{name}` is already the shape of version {version}: each previous type \
                     appears in one `migrate(...)`"
                ),
            );
        } else {
            seen.push((name, migration.version.value));
        }
    }
}
