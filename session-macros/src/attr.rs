//! Parses `#[session(...)]` on the type, its fields and its variants.

use proc_macro2::Span;
use syn::ext::IdentExt as _;
use syn::meta::ParseNestedMeta;
use syn::parse::Parse;
use syn::spanned::Spanned as _;
use syn::{Attribute, Expr, Ident, LitStr, Path};

use crate::errors::Errors;

const CONTAINER_KEYS: &str =
    "`key`, `lazy`, `scope`, `key_fn`, `initial`, `ttl`, `on_decode_error`, `codec`, `crate`";
pub(crate) const SCOPES: [&str; 5] = ["user", "chat", "user_in_chat", "chat_thread", "global"];

/// The type-level `#[session(...)]` attributes.
#[derive(Default)]
pub(crate) struct Container {
    pub(crate) key: Option<Ident>,
    pub(crate) lazy: Option<Span>,
    pub(crate) scope: Option<String>,
    pub(crate) key_fn: Option<Path>,
    pub(crate) initial: Option<Path>,
    pub(crate) ttl_secs: Option<u64>,
    pub(crate) reset_on_decode_error: Option<bool>,
    pub(crate) codec: Option<Path>,
    pub(crate) krate: Option<Path>,
}

fn session_attrs(attrs: &[Attribute]) -> impl Iterator<Item = &Attribute> {
    attrs.iter().filter(|attr| attr.path().is_ident("session"))
}

fn set_once<T>(
    slot: &mut Option<T>,
    value: T,
    meta: &ParseNestedMeta<'_>,
    name: &str,
) -> syn::Result<()> {
    if slot.is_some() {
        return Err(meta.error(format_args!("duplicate session attribute `{name}`")));
    }
    *slot = Some(value);
    Ok(())
}

fn lit_str(meta: &ParseNestedMeta<'_>, name: &str, example: &str) -> syn::Result<LitStr> {
    let value = meta.value()?;
    value.parse::<LitStr>().map_err(|error| {
        syn::Error::new(
            error.span(),
            format_args!("`{name}` takes a string: `{name} = {example}`"),
        )
    })
}

/// A path written bare (`initial = make`) or, serde-style, in a string.
fn path(meta: &ParseNestedMeta<'_>, name: &str) -> syn::Result<Path> {
    let value = meta.value()?;
    if value.peek(LitStr) {
        let lit: LitStr = value.parse()?;
        return lit.parse::<Path>().map_err(|_| {
            syn::Error::new(
                lit.span(),
                format_args!("`{name}` must name a path, like `{name} = my_mod::item`"),
            )
        });
    }
    Path::parse(value).map_err(|error| {
        syn::Error::new(
            error.span(),
            format_args!("`{name}` must name a path, like `{name} = my_mod::item`"),
        )
    })
}

pub(crate) fn container(attrs: &[Attribute], errors: &mut Errors) -> Container {
    let mut out = Container::default();
    for attr in session_attrs(attrs) {
        let parsed = attr.parse_nested_meta(|meta| {
            let Some(name) = meta.path.get_ident().map(Ident::to_string) else {
                return Err(meta.error(format_args!("unknown session attribute; expected one of {CONTAINER_KEYS}")));
            };
            match name.as_str() {
                "key" => {
                    let lit = lit_str(&meta, "key", "\"counter\"")?;
                    let ident = accessor_name(&lit)?;
                    set_once(&mut out.key, ident, &meta, "key")
                }
                "lazy" => {
                    if !meta.input.is_empty() && !meta.input.peek(syn::Token![,]) {
                        return Err(meta.error("`lazy` takes no value: write `#[session(lazy)]`"));
                    }
                    set_once(&mut out.lazy, meta.path.span(), &meta, "lazy")
                }
                "scope" => {
                    let lit = lit_str(&meta, "scope", "\"chat\"")?;
                    let scope = lit.value();
                    if !SCOPES.contains(&scope.as_str()) {
                        return Err(syn::Error::new(
                            lit.span(),
                            format_args!(
                                "unknown scope `{scope}`; expected one of `user`, `chat`, \
                                 `user_in_chat`, `chat_thread`, `global`"
                            ),
                        ));
                    }
                    set_once(&mut out.scope, scope, &meta, "scope")
                }
                "key_fn" => {
                    let path = path(&meta, "key_fn")?;
                    set_once(&mut out.key_fn, path, &meta, "key_fn")
                }
                "initial" => {
                    let path = path(&meta, "initial")?;
                    set_once(&mut out.initial, path, &meta, "initial")
                }
                "ttl" => {
                    let lit = lit_str(&meta, "ttl", "\"30d\"")?;
                    let secs = parse_ttl(&lit.value()).map_err(|why| {
                        syn::Error::new(
                            lit.span(),
                            format_args!(
                                "malformed ttl `{}`: {why}; expected numbers with units `s`, `m`, \
                                 `h` or `d`, like \"30d\" or \"1h30m\"",
                                lit.value()
                            ),
                        )
                    })?;
                    set_once(&mut out.ttl_secs, secs, &meta, "ttl")
                }
                "on_decode_error" => {
                    let lit = lit_str(&meta, "on_decode_error", "\"reset\"")?;
                    let reset = match lit.value().as_str() {
                        "error" => false,
                        "reset" => true,
                        other => {
                            return Err(syn::Error::new(
                                lit.span(),
                                format_args!("unknown on_decode_error `{other}`; expected `error` or `reset`"),
                            ));
                        }
                    };
                    set_once(&mut out.reset_on_decode_error, reset, &meta, "on_decode_error")
                }
                "codec" => {
                    let path = path(&meta, "codec")?;
                    set_once(&mut out.codec, path, &meta, "codec")
                }
                "crate" => {
                    let path = path(&meta, "crate")?;
                    set_once(&mut out.krate, path, &meta, "crate")
                }
                "default" => Err(meta.error(
                    "`default` goes on a field (`#[session(default = expr)]`) or on an enum's unit \
                     variant (`#[session(default)]`); for the whole type use `initial = path::to::fn`",
                )),
                other => Err(meta.error(format_args!(
                    "unknown session attribute `{other}`; expected one of {CONTAINER_KEYS}"
                ))),
            }
        });
        if let Err(error) = parsed {
            errors.push(error);
        }
    }
    out
}

/// The accessor name from `key = "..."`: any identifier, not a keyword.
fn accessor_name(lit: &LitStr) -> syn::Result<Ident> {
    let text = lit.value();
    if !text.starts_with("r#") && syn::parse_str::<Ident>(&text).is_ok() {
        return Ok(Ident::new(&text, lit.span()));
    }
    let is_keyword = syn::parse::Parser::parse_str(Ident::parse_any, &text).is_ok();
    let message = match is_keyword {
        true => format!(
            "session key `{text}` is a Rust keyword and cannot name the accessor; choose another name"
        ),
        false => format!(
            "session key `{text}` is not a Rust identifier; it names the accessor \
             (`ctx.{text}()`): use letters, digits and `_`, like \"counter\" or \"sessionKey\""
        ),
    };
    Err(syn::Error::new(lit.span(), message))
}

/// Parses "30d", "1h30m", "90s" into seconds.
pub(crate) fn parse_ttl(text: &str) -> Result<u64, &'static str> {
    if text.is_empty() {
        return Err("it is empty");
    }
    let mut total: u64 = 0;
    let mut number: Option<u64> = None;
    for ch in text.chars() {
        if let Some(digit) = ch.to_digit(10) {
            let n = number.unwrap_or(0);
            number = Some(
                n.checked_mul(10)
                    .and_then(|n| n.checked_add(u64::from(digit)))
                    .ok_or("it is too large")?,
            );
            continue;
        }
        let unit = match ch {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            _ => return Err("it has a character that is neither a digit nor a unit"),
        };
        let n = number.take().ok_or("a unit has no number before it")?;
        total = n
            .checked_mul(unit)
            .and_then(|s| total.checked_add(s))
            .ok_or("it is too large")?;
    }
    if number.is_some() {
        return Err("the last number has no unit");
    }
    if total == 0 {
        return Err("it is zero");
    }
    Ok(total)
}

/// `#[session(default = expr)]` on a field.
pub(crate) fn field_default(attrs: &[Attribute], errors: &mut Errors) -> Option<Expr> {
    let mut out = None;
    for attr in session_attrs(attrs) {
        let parsed = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("default") {
                let expr: Expr = meta.value()?.parse()?;
                return set_once(&mut out, expr, &meta, "default");
            }
            Err(meta.error("unknown session attribute on a field; expected `default = expr`"))
        });
        if let Err(error) = parsed {
            errors.push(error);
        }
    }
    out
}

/// `#[session(default)]` on an enum variant.
pub(crate) fn variant_default(attrs: &[Attribute], errors: &mut Errors) -> Option<Span> {
    let mut out = None;
    for attr in session_attrs(attrs) {
        let parsed = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("default") {
                if !meta.input.is_empty() && !meta.input.peek(syn::Token![,]) {
                    return Err(meta.error(
                        "`default` on a variant takes no value: write `#[session(default)]`",
                    ));
                }
                return set_once(&mut out, meta.path.span(), &meta, "default");
            }
            Err(meta.error("unknown session attribute on a variant; expected `default`"))
        });
        if let Err(error) = parsed {
            errors.push(error);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::parse_ttl;

    #[test]
    fn ttl_units_add_up() {
        assert_eq!(parse_ttl("30d"), Ok(30 * 86_400));
        assert_eq!(parse_ttl("1h30m"), Ok(5_400));
        assert_eq!(parse_ttl("45s"), Ok(45));
        assert!(parse_ttl("30").is_err());
        assert!(parse_ttl("d").is_err());
        assert!(parse_ttl("3w").is_err());
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("99999999999999999999d").is_err());
    }
}
