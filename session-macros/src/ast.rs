//! A typed view of the derive input that keeps the syn nodes for spans.

use proc_macro2::Span;
use syn::{Data, DeriveInput, Fields};

use crate::attr::{self, Container, FieldDefault};
use crate::errors::Errors;

pub(crate) struct Input<'a> {
    pub(crate) original: &'a DeriveInput,
    pub(crate) attrs: Container,
    pub(crate) body: Body<'a>,
}

pub(crate) enum Body<'a> {
    Struct {
        fields: &'a Fields,
        defaults: Vec<Option<FieldDefault>>,
    },
    Enum {
        variants: Vec<Variant<'a>>,
    },
}

pub(crate) struct Variant<'a> {
    pub(crate) original: &'a syn::Variant,
    pub(crate) default: Option<Span>,
}

impl<'a> Input<'a> {
    pub(crate) fn from_syn(input: &'a DeriveInput, errors: &mut Errors) -> Option<Self> {
        let attrs = attr::container(&input.attrs, errors);
        let body = match &input.data {
            Data::Struct(data) => Body::Struct {
                fields: &data.fields,
                defaults: data
                    .fields
                    .iter()
                    .map(|field| attr::field_default(&field.attrs, errors))
                    .collect(),
            },
            Data::Enum(data) => Body::Enum {
                variants: data
                    .variants
                    .iter()
                    .map(|variant| {
                        for field in &variant.fields {
                            if let Some(default) = attr::field_default(&field.attrs, errors) {
                                errors.spanned(
                                    default.span,
                                    "field defaults are for structs; give the enum a \
                                     `#[session(default)]` unit variant or `initial = path::to::fn`",
                                );
                            }
                        }
                        Variant {
                            original: variant,
                            default: attr::variant_default(&variant.attrs, errors),
                        }
                    })
                    .collect(),
            },
            Data::Union(data) => {
                errors.spanned(
                    data.union_token.span,
                    "`Session` cannot be derived for a union; use a struct or an enum",
                );
                return None;
            }
        };
        Some(Self {
            original: input,
            attrs,
            body,
        })
    }
}
