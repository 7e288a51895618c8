//! Parses `#[session(...)]` on the type, its fields and its variants.

use proc_macro2::Span;
use proc_macro2::{TokenStream, TokenTree};
use quote::{ToTokens, quote};
use syn::ext::IdentExt as _;
use syn::meta::ParseNestedMeta;
use syn::parse::discouraged::Speculative as _;
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned as _;
use syn::{Attribute, Expr, Ident, LitInt, LitStr, Path, Token, Type};

use crate::errors::Errors;

const CONTAINER_KEYS: &str = "`key`, `lazy`, `scope`, `key_fn`, `initial`, `ttl`, \
                              `on_decode_error`, `codec`, `version`, `migrate`, `crate`";
const MIGRATE_KEYS: &str = "`from`, `version`, `with`";

/// `scope = "..."`: which ids of the update make the storage key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ScopeAttr {
    User,
    Chat,
    UserInChat,
    ChatThread,
    Global,
}

impl ScopeAttr {
    const ALL: [(&'static str, Self); 5] = [
        ("user", Self::User),
        ("chat", Self::Chat),
        ("user_in_chat", Self::UserInChat),
        ("chat_thread", Self::ChatThread),
        ("global", Self::Global),
    ];

    fn from_lit(lit: &LitStr) -> syn::Result<Self> {
        let text = lit.value();
        match Self::ALL.iter().find(|(name, _)| *name == text) {
            Some((_, scope)) => Ok(*scope),
            None => Err(syn::Error::new(
                lit.span(),
                format_args!(
                    "unknown scope `{text}`; expected one of {}",
                    choices(Self::ALL.iter().map(|(name, _)| *name))
                ),
            )),
        }
    }
}

/// The variant of the runtime's `Scope`, relative to the hidden module:
/// `#p::#scope` names it.
impl ToTokens for ScopeAttr {
    fn to_tokens(&self, tokens: &mut TokenStream) {
        tokens.extend(match self {
            Self::User => quote!(Scope::User),
            Self::Chat => quote!(Scope::Chat),
            Self::UserInChat => quote!(Scope::UserInChat),
            Self::ChatThread => quote!(Scope::ChatThread),
            Self::Global => quote!(Scope::Global),
        });
    }
}

/// `on_decode_error = "..."`: what a load does with bytes that do not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) enum DecodeErrorPolicy {
    #[default]
    Error,
    Reset,
}

impl DecodeErrorPolicy {
    const ALL: [(&'static str, Self); 2] = [("error", Self::Error), ("reset", Self::Reset)];

    fn from_lit(lit: &LitStr) -> syn::Result<Self> {
        let text = lit.value();
        match Self::ALL.iter().find(|(name, _)| *name == text) {
            Some((_, policy)) => Ok(*policy),
            None => Err(syn::Error::new(
                lit.span(),
                format_args!("unknown on_decode_error `{text}`; expected `error` or `reset`"),
            )),
        }
    }
}

/// The variant of the runtime's `OnDecodeError`, relative to the hidden module.
impl ToTokens for DecodeErrorPolicy {
    fn to_tokens(&self, tokens: &mut TokenStream) {
        tokens.extend(match self {
            Self::Error => quote!(OnDecodeError::Error),
            Self::Reset => quote!(OnDecodeError::Reset),
        });
    }
}

/// "`a`, `b`, `c`" for an error message.
fn choices<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names
        .map(|name| format!("`{name}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The type-level `#[session(...)]` attributes.
#[derive(Default)]
pub(crate) struct Container {
    pub(crate) key: Option<Ident>,
    pub(crate) lazy: Option<Span>,
    pub(crate) scope: Option<ScopeAttr>,
    pub(crate) key_fn: Option<Path>,
    pub(crate) initial: Option<Path>,
    pub(crate) ttl_secs: Option<u64>,
    pub(crate) on_decode_error: Option<DecodeErrorPolicy>,
    pub(crate) codec: Option<Path>,
    /// `version = N`: the schema version the type writes.
    pub(crate) version: Option<SchemaVersion>,
    /// `version = ...` was written but is not a valid version (already
    /// reported), so rules that need the version stay quiet.
    pub(crate) version_invalid: bool,
    /// The `migrate(...)` entries, in the order written.
    pub(crate) migrations: Vec<Migration>,
    pub(crate) krate: Option<Path>,
}

/// A schema version as written, with its span.
#[derive(Clone, Copy)]
pub(crate) struct SchemaVersion {
    pub(crate) value: u32,
    pub(crate) span: Span,
}

/// `migrate(from = Old, version = N, with = path::to::fn)`: a previous shape
/// of the type and how it becomes the next one.
pub(crate) struct Migration {
    /// The `migrate` keyword.
    pub(crate) span: Span,
    pub(crate) from: Type,
    pub(crate) version: SchemaVersion,
    pub(crate) with: Option<Path>,
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
            // One bad attribute must not hide the others: the accessor's name
            // and laziness still shape the stub emitted beside the error.
            if let Err(error) = container_item(&mut out, &meta) {
                errors.push(error);
                skip_rest(meta.input);
            }
            Ok(())
        });
        if let Err(error) = parsed {
            errors.push(error);
        }
    }
    out
}

fn container_item(out: &mut Container, meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
    let Some(name) = meta.path.get_ident().map(Ident::to_string) else {
        return Err(meta.error(format_args!(
            "unknown session attribute; expected one of {CONTAINER_KEYS}"
        )));
    };
    match name.as_str() {
        "key" => {
            let lit = lit_str(meta, "key", "\"counter\"")?;
            let ident = accessor_name(&lit)?;
            set_once(&mut out.key, ident, meta, "key")
        }
        "lazy" => {
            let duplicate = set_once(&mut out.lazy, meta.path.span(), meta, "lazy");
            if !meta.input.is_empty() && !meta.input.peek(Token![,]) {
                // `out.lazy` stays set: the user meant a lazy session, so the
                // stub's accessor is the async one their code awaits.
                return Err(meta.error("`lazy` takes no value: write `#[session(lazy)]`"));
            }
            duplicate
        }
        "scope" => {
            let lit = lit_str(meta, "scope", "\"chat\"")?;
            let scope = ScopeAttr::from_lit(&lit)?;
            set_once(&mut out.scope, scope, meta, "scope")
        }
        "key_fn" => {
            let path = path(meta, "key_fn")?;
            set_once(&mut out.key_fn, path, meta, "key_fn")
        }
        "initial" => {
            let path = path(meta, "initial")?;
            set_once(&mut out.initial, path, meta, "initial")
        }
        "ttl" => {
            let lit = lit_str(meta, "ttl", "\"30d\"")?;
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
            set_once(&mut out.ttl_secs, secs, meta, "ttl")
        }
        "on_decode_error" => {
            let lit = lit_str(meta, "on_decode_error", "\"reset\"")?;
            let policy = DecodeErrorPolicy::from_lit(&lit)?;
            set_once(&mut out.on_decode_error, policy, meta, "on_decode_error")
        }
        "codec" => {
            let path = path(meta, "codec")?;
            set_once(&mut out.codec, path, meta, "codec")
        }
        "version" => {
            let version = schema_version(meta, "version", "version = 2").inspect_err(|_| {
                out.version_invalid = true;
            })?;
            set_once(&mut out.version, version, meta, "version")
        }
        "migrate" => {
            let migration = migration(meta)?;
            out.migrations.push(migration);
            Ok(())
        }
        "crate" => {
            let path = path(meta, "crate")?;
            set_once(&mut out.krate, path, meta, "crate")
        }
        "default" => Err(meta.error(
            "`default` goes on a field (`#[session(default = expr)]`) or on an enum's unit \
             variant (`#[session(default)]`); for the whole type use `initial = path::to::fn`",
        )),
        other => Err(meta.error(format_args!(
            "unknown session attribute `{other}`; expected one of {CONTAINER_KEYS}"
        ))),
    }
}

/// `version = N`, a whole number from 1.
fn schema_version(
    meta: &ParseNestedMeta<'_>,
    name: &str,
    example: &str,
) -> syn::Result<SchemaVersion> {
    let value = meta.value()?;
    let lit = value.parse::<LitInt>().map_err(|error| {
        syn::Error::new(
            error.span(),
            format_args!("`{name}` takes a whole number: `{example}`"),
        )
    })?;
    let number = lit.base10_parse::<u32>().map_err(|_| {
        syn::Error::new(
            lit.span(),
            format_args!("`{name}` takes a whole number from 1 to {}", u32::MAX),
        )
    })?;
    if number == 0 {
        return Err(syn::Error::new(
            lit.span(),
            format_args!(
                "schema versions start at 1: `{name} = 0` is not one; the records written \
                 before the type had a version are read as its oldest `migrate(...)` shape"
            ),
        ));
    }
    Ok(SchemaVersion {
        value: number,
        span: lit.span(),
    })
}

/// A type written bare (`from = CounterV1`) or in a string.
fn type_value(meta: &ParseNestedMeta<'_>, name: &str) -> syn::Result<Type> {
    let value = meta.value()?;
    let parsed = match value.peek(LitStr) {
        true => value.parse::<LitStr>()?.parse::<Type>(),
        false => value.parse::<Type>(),
    };
    parsed.map_err(|error| {
        syn::Error::new(
            error.span(),
            format_args!("`{name}` must name a type, like `{name} = CounterV1`"),
        )
    })
}

/// `migrate(from = Old, version = N, with = path)`.
fn migration(meta: &ParseNestedMeta<'_>) -> syn::Result<Migration> {
    let usage = "`migrate` takes the previous shape and its version: \
                 `migrate(from = CounterV1, version = 1)`";
    if !meta.input.peek(syn::token::Paren) {
        return Err(meta.error(usage));
    }
    let mut from = None;
    let mut version = None;
    let mut with = None;
    let mut errors = Errors::default();
    meta.parse_nested_meta(|inner| {
        if let Err(error) = migration_item(&inner, &mut from, &mut version, &mut with) {
            errors.push(error);
            skip_rest(inner.input);
        }
        Ok(())
    })?;
    errors.finish()?;
    match (from, version) {
        (Some(from), Some(version)) => Ok(Migration {
            span: meta.path.span(),
            from,
            version,
            with,
        }),
        (None, _) => Err(meta.error(format_args!(
            "`migrate(...)` needs `from = OldType`, the previous shape; {usage}"
        ))),
        (Some(_), None) => Err(meta.error(format_args!(
            "`migrate(...)` needs `version = N`, the version records of that shape were \
             written with; {usage}"
        ))),
    }
}

fn migration_item(
    inner: &ParseNestedMeta<'_>,
    from: &mut Option<Type>,
    version: &mut Option<SchemaVersion>,
    with: &mut Option<Path>,
) -> syn::Result<()> {
    let Some(name) = inner.path.get_ident().map(Ident::to_string) else {
        return Err(inner.error(format_args!(
            "unknown key in `migrate(...)`; expected one of {MIGRATE_KEYS}"
        )));
    };
    match name.as_str() {
        "from" => {
            let ty = type_value(inner, "from")?;
            set_once(from, ty, inner, "migrate(from)")
        }
        "version" => {
            let number =
                schema_version(inner, "version", "migrate(from = CounterV1, version = 1)")?;
            set_once(version, number, inner, "migrate(version)")
        }
        "with" => {
            let path = path(inner, "with")?;
            set_once(with, path, inner, "migrate(with)")
        }
        other => Err(inner.error(format_args!(
            "unknown key `{other}` in `migrate(...)`; expected one of {MIGRATE_KEYS}"
        ))),
    }
}

/// Skips what is left of a malformed `name = value` up to the next top-level
/// comma, so parsing resumes at the next attribute.
fn skip_rest(input: ParseStream<'_>) {
    // The closure cannot fail; a failed step would only end parsing early.
    let _ = input.step(|cursor| {
        let mut rest = *cursor;
        while let Some((tree, next)) = rest.token_tree() {
            if matches!(&tree, TokenTree::Punct(punct) if punct.as_char() == ',') {
                break;
            }
            rest = next;
        }
        Ok(((), rest))
    });
}

/// The accessor name from `key = "..."`: any identifier, not a keyword.
fn accessor_name(lit: &LitStr) -> syn::Result<Ident> {
    let text = lit.value();
    if !text.starts_with("r#") && syn::parse_str::<Ident>(&text).is_ok() {
        return Ok(Ident::new(&text, lit.span()));
    }
    let is_keyword =
        !text.starts_with("r#") && syn::parse::Parser::parse_str(Ident::parse_any, &text).is_ok();
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
pub(crate) struct FieldDefault {
    /// The `default` keyword, where errors about the attribute point.
    pub(crate) span: Span,
    pub(crate) expr: Expr,
}

pub(crate) fn field_default(attrs: &[Attribute], errors: &mut Errors) -> Option<FieldDefault> {
    let mut out = None;
    for attr in session_attrs(attrs) {
        let parsed = attr.parse_nested_meta(|meta| {
            let item =
                if meta.path.is_ident("default") {
                    match meta.input.peek(Token![=]) {
                    true => meta.value().and_then(default_expr).and_then(|expr| {
                        let default = FieldDefault { span: meta.path.span(), expr };
                        set_once(&mut out, default, &meta, "default")
                    }),
                    false => Err(meta.error(
                        "`default` on a field takes a value: write `#[session(default = expr)]`",
                    )),
                }
                } else {
                    Err(meta
                        .error("unknown session attribute on a field; expected `default = expr`"))
                };
            if let Err(error) = item {
                errors.push(error);
                skip_rest(meta.input);
            }
            Ok(())
        });
        if let Err(error) = parsed {
            errors.push(error);
        }
    }
    out
}

/// The expression after `default =`, up to the next top-level comma.
///
/// syn without its `full` feature parses literals, paths, calls, macros,
/// operators and casts, which covers most defaults; anything else (a block
/// with statements, an array, `if`, a range) is kept as verbatim tokens for
/// rustc to check. Parsing first keeps a turbofish's comma
/// (`HashMap::<K, V>::new()`) inside the expression.
fn default_expr(input: ParseStream<'_>) -> syn::Result<Expr> {
    let fork = input.fork();
    if let Ok(expr) = fork.parse::<Expr>()
        && (fork.is_empty() || fork.peek(Token![,]))
    {
        input.advance_to(&fork);
        return Ok(expr);
    }
    let tokens = input.step(|cursor| {
        let mut tokens = TokenStream::new();
        let mut rest = *cursor;
        while let Some((tree, next)) = rest.token_tree() {
            if matches!(&tree, TokenTree::Punct(punct) if punct.as_char() == ',') {
                break;
            }
            tokens.extend([tree]);
            rest = next;
        }
        Ok((tokens, rest))
    })?;
    if tokens.is_empty() {
        return Err(input.error("expected an expression: `#[session(default = expr)]`"));
    }
    Ok(Expr::Verbatim(tokens))
}

/// `#[session(default)]` on an enum variant.
pub(crate) fn variant_default(attrs: &[Attribute], errors: &mut Errors) -> Option<Span> {
    let mut out = None;
    for attr in session_attrs(attrs) {
        let parsed = attr.parse_nested_meta(|meta| {
            let item = if meta.path.is_ident("default") {
                let duplicate = set_once(&mut out, meta.path.span(), &meta, "default");
                match meta.input.is_empty() || meta.input.peek(Token![,]) {
                    true => duplicate,
                    false => Err(meta.error(
                        "`default` on a variant takes no value: write `#[session(default)]`",
                    )),
                }
            } else {
                Err(meta.error("unknown session attribute on a variant; expected `default`"))
            };
            if let Err(error) = item {
                errors.push(error);
                skip_rest(meta.input);
            }
            Ok(())
        });
        if let Err(error) = parsed {
            errors.push(error);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use quote::ToTokens as _;
    use syn::{Attribute, LitStr, parse_quote};

    use super::{
        DecodeErrorPolicy, ScopeAttr, accessor_name, container, field_default, parse_ttl,
        variant_default,
    };
    use crate::errors::Errors;

    fn messages(errors: Errors) -> Vec<String> {
        errors.finish().err().map_or_else(Vec::new, |error| {
            error.into_iter().map(|e| e.to_string()).collect()
        })
    }

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

    #[test]
    fn accessor_names_are_identifiers_but_not_keywords() {
        let name = |text: &str| accessor_name(&LitStr::new(text, proc_macro2::Span::call_site()));
        assert_eq!(
            name("counter").map(|i| i.to_string()).ok().as_deref(),
            Some("counter")
        );
        assert_eq!(
            name("sessionKey").map(|i| i.to_string()).ok().as_deref(),
            Some("sessionKey")
        );
        for keyword in ["type", "fn", "self", "async"] {
            let error = name(keyword)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(error.contains("is a Rust keyword"), "{keyword}: {error}");
        }
        for bad in ["", "my-key", "1st", "r#type", "two words"] {
            let error = name(bad).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(
                error.contains("is not a Rust identifier"),
                "{bad:?}: {error}"
            );
        }
    }

    #[test]
    fn a_bad_attribute_does_not_hide_the_others() {
        let attrs: Vec<Attribute> = vec![
            parse_quote!(#[session(lazzy = 1, lazy = true, scope = "group", key = "counter")]),
            parse_quote!(#[session(ttl = "1 h", ttl = "1h", crate = "renamed")]),
        ];
        let mut errors = Errors::default();
        let parsed = container(&attrs, &mut errors);
        assert_eq!(
            parsed.key.map(|key| key.to_string()).as_deref(),
            Some("counter")
        );
        assert!(parsed.lazy.is_some(), "`lazy = true` still means lazy");
        assert_eq!(parsed.ttl_secs, Some(3_600));
        assert_eq!(
            parsed
                .krate
                .map(|p| p.to_token_stream().to_string())
                .as_deref(),
            Some("renamed")
        );
        let messages = messages(errors);
        assert_eq!(messages.len(), 4, "{messages:#?}");
        assert!(
            messages[0].starts_with("unknown session attribute `lazzy`; expected one of `key`")
        );
        assert!(messages[1].starts_with("`lazy` takes no value"));
        assert!(messages[2].starts_with("unknown scope `group`"));
        assert!(messages[3].starts_with("malformed ttl `1 h`"));
    }

    #[test]
    fn scopes_and_policies_parse_once_into_their_runtime_variants() {
        let attrs: Vec<Attribute> = vec![parse_quote!(
            #[session(scope = "user_in_chat", on_decode_error = "reset")]
        )];
        let mut errors = Errors::default();
        let parsed = container(&attrs, &mut errors);
        assert!(messages(errors).is_empty());
        assert_eq!(parsed.scope, Some(ScopeAttr::UserInChat));
        assert_eq!(parsed.on_decode_error, Some(DecodeErrorPolicy::Reset));
        let expanded: Vec<String> = ScopeAttr::ALL
            .iter()
            .map(|(_, scope)| scope.to_token_stream().to_string())
            .collect();
        assert_eq!(
            expanded,
            [
                "Scope :: User",
                "Scope :: Chat",
                "Scope :: UserInChat",
                "Scope :: ChatThread",
                "Scope :: Global"
            ]
        );
        assert_eq!(
            DecodeErrorPolicy::default().to_token_stream().to_string(),
            "OnDecodeError :: Error"
        );
    }

    #[test]
    fn duplicates_are_reported_once_each() {
        let attrs: Vec<Attribute> = vec![
            parse_quote!(#[session(key = "a", lazy)]),
            parse_quote!(#[session(key = "b", lazy)]),
        ];
        let mut errors = Errors::default();
        let parsed = container(&attrs, &mut errors);
        assert_eq!(parsed.key.map(|key| key.to_string()).as_deref(), Some("a"));
        assert_eq!(
            messages(errors),
            [
                "duplicate session attribute `key`",
                "duplicate session attribute `lazy`"
            ]
        );
    }

    /// Each of these must reach rustc as written, with syn's default features.
    #[test]
    fn field_defaults_take_common_expressions() {
        let cases: Vec<(Attribute, &str)> = vec![
            (parse_quote!(#[session(default = 1)]), "1"),
            (parse_quote!(#[session(default = -1)]), "- 1"),
            (
                parse_quote!(#[session(default = vec![1, 2])]),
                "vec ! [1 , 2]",
            ),
            (
                parse_quote!(#[session(default = String::from("x"))]),
                "String :: from (\"x\")",
            ),
            (parse_quote!(#[session(default = Some(3))]), "Some (3)"),
            (
                parse_quote!(#[session(default = "y".to_owned())]),
                "\"y\" . to_owned ()",
            ),
            (
                parse_quote!(#[session(default = { let n = 2; n * 2 })]),
                "{ let n = 2 ; n * 2 }",
            ),
            (parse_quote!(#[session(default = [0u8; 4])]), "[0u8 ; 4]"),
            (parse_quote!(#[session(default = 1..=3)]), "1 ..= 3"),
            (
                parse_quote!(#[session(default = if A { 1 } else { 2 })]),
                "if A { 1 } else { 2 }",
            ),
            (
                parse_quote!(#[session(default = HashMap::<u8, u8>::new())]),
                "HashMap :: < u8 , u8 > :: new ()",
            ),
        ];
        for (attr, expected) in cases {
            let mut errors = Errors::default();
            let default = field_default(std::slice::from_ref(&attr), &mut errors);
            assert_eq!(messages(errors), Vec::<String>::new(), "{expected}");
            let expr = default.map(|default| default.expr.to_token_stream().to_string());
            assert_eq!(expr.as_deref(), Some(expected));
        }
    }

    #[test]
    fn field_default_mistakes() {
        let cases: Vec<(Attribute, &str)> = vec![
            (
                parse_quote!(#[session(default)]),
                "`default` on a field takes a value",
            ),
            (
                parse_quote!(#[session(default = )]),
                "expected an expression",
            ),
            (
                parse_quote!(#[session(initial = 1)]),
                "unknown session attribute on a field",
            ),
            (
                parse_quote!(#[session(default = 1, default = 2)]),
                "duplicate session attribute `default`",
            ),
        ];
        for (attr, expected) in cases {
            let mut errors = Errors::default();
            field_default(std::slice::from_ref(&attr), &mut errors);
            let messages = messages(errors);
            assert_eq!(messages.len(), 1, "{messages:?}");
            assert!(messages[0].contains(expected), "{messages:?}");
        }
    }

    #[test]
    fn variant_default_takes_no_value() {
        let mut errors = Errors::default();
        let ok: Attribute = parse_quote!(#[session(default)]);
        assert!(variant_default(&[ok], &mut errors).is_some());
        let with_value: Attribute = parse_quote!(#[session(default = true)]);
        assert!(variant_default(&[with_value], &mut errors).is_some());
        let messages = messages(errors);
        assert_eq!(messages.len(), 1);
        assert!(messages[0].starts_with("`default` on a variant takes no value"));
    }
}
