//! Parsing of macro arguments: `#[activity(name = "..")]`,
//! `#[activity(name = "..", local)]`, `#[activity(transactional)]`,
//! `#[orchestrator(name = "..", version = "..", allow_nondeterminism)]`.

use proc_macro2::Span;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Ident, LitStr, Path, Token};

/// Which macro the arguments belong to; decides the valid keys.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Activity,
    Orchestrator,
    Entity,
}

impl Kind {
    pub(crate) fn attr(self) -> &'static str {
        match self {
            Kind::Activity => "#[activity]",
            Kind::Orchestrator => "#[orchestrator]",
            Kind::Entity => "#[entity]",
        }
    }

    fn valid(self) -> &'static [&'static str] {
        match self {
            Kind::Activity => &["name", "local", "transactional", "crate"],
            Kind::Entity => &["name", "crate"],
            Kind::Orchestrator => &["name", "version", "allow_nondeterminism", "crate"],
        }
    }
}

/// One `key`, `key = value` item, kept with its spans for error reporting.
pub(crate) struct Arg {
    pub(crate) key: Ident,
    pub(crate) value: Option<syn::Expr>,
}

impl Parse for Arg {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let key = if input.peek(Token![crate]) {
            let t: Token![crate] = input.parse()?;
            Ident::new("crate", t.span)
        } else {
            input.parse::<Ident>()?
        };
        let value = if input.peek(Token![=]) {
            input.parse::<Token![=]>()?;
            Some(input.parse::<syn::Expr>()?)
        } else {
            None
        };
        Ok(Arg { key, value })
    }
}

/// The validated arguments.
#[derive(Default)]
pub(crate) struct Args {
    pub(crate) name: Option<LitStr>,
    pub(crate) version: Option<LitStr>,
    pub(crate) allow_nondeterminism: bool,
    /// `#[activity(local)]`: the activity runs inside the worker during the episode.
    pub(crate) local: bool,
    /// `#[activity(transactional)]`, kept for its span: the activity runs in its store's
    /// transaction.
    pub(crate) transactional: Option<Ident>,
    pub(crate) krate: Option<Path>,
}

/// Parses and validates attribute arguments, accumulating every problem.
pub(crate) fn parse(
    kind: Kind,
    tokens: proc_macro2::TokenStream,
    errors: &mut crate::errors::Errors,
) -> Args {
    let mut args = Args::default();
    if tokens.is_empty() {
        return args;
    }
    let list =
        match syn::parse::Parser::parse2(Punctuated::<Arg, Token![,]>::parse_terminated, tokens) {
            Ok(l) => l,
            Err(e) => {
                errors.push_error(syn::Error::new(
                    e.span(),
                    format!(
                        "malformed {} arguments; expected a comma-separated list of: {}",
                        kind.attr(),
                        kind.valid().join(", ")
                    ),
                ));
                return args;
            }
        };
    let mut seen: Vec<String> = Vec::new();
    for arg in list {
        let key = arg.key.to_string();
        if !kind.valid().contains(&key.as_str()) {
            errors.push(
                &arg.key,
                format!(
                    "unknown {} argument `{key}`; expected one of: {}",
                    kind.attr(),
                    kind.valid().join(", ")
                ),
            );
            continue;
        }
        if seen.contains(&key) {
            errors.push(
                &arg.key,
                format!("duplicate {} argument `{key}`", kind.attr()),
            );
            continue;
        }
        seen.push(key.clone());
        match key.as_str() {
            "name" | "version" => match string_value(&arg) {
                Ok(text) => {
                    if key == "name" {
                        if let Err(msg) = check_name(&text.value()) {
                            errors.push(&text, msg);
                        }
                        args.name = Some(text);
                    } else {
                        if text.value().trim().is_empty() {
                            errors.push(&text, "`version` must be a non-empty string literal, e.g. `version = \"2\"`");
                        }
                        args.version = Some(text);
                    }
                }
                Err(e) => errors.push_error(e),
            },
            "allow_nondeterminism" => {
                if let Some(v) = &arg.value {
                    errors.push(v, "`allow_nondeterminism` takes no value; write `#[orchestrator(allow_nondeterminism)]`");
                }
                args.allow_nondeterminism = true;
            }
            "local" => {
                if let Some(v) = &arg.value {
                    errors.push(v, "`local` takes no value; write `#[activity(local)]`");
                }
                args.local = true;
            }
            "transactional" => {
                if let Some(v) = &arg.value {
                    errors.push(
                        v,
                        "`transactional` takes no value; write `#[activity(transactional)]`",
                    );
                }
                args.transactional = Some(arg.key.clone());
            }
            "crate" => {
                if let Some(path) = crate_path(&arg, errors) {
                    args.krate = Some(path);
                }
            }
            _ => unreachable!("checked against the valid list"),
        }
    }
    if let (true, Some(kw)) = (args.local, &args.transactional) {
        errors.push(
            kw,
            "an activity cannot be both `local` and `transactional`: a transactional activity runs \
             in its store's transaction, committed with its task; remove one of them",
        );
    }
    args
}

/// The path of `crate = path` (or `crate = "path"`), reporting anything else.
fn crate_path(arg: &Arg, errors: &mut crate::errors::Errors) -> Option<Path> {
    const EXPECTED: &str = "`crate` must name a path, e.g. `crate = durable_core`";
    match &arg.value {
        Some(syn::Expr::Path(p)) => Some(p.path.clone()),
        Some(syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(s),
            ..
        })) => {
            let parsed = s.parse::<Path>().ok();
            if parsed.is_none() {
                errors.push(s, EXPECTED);
            }
            parsed
        }
        Some(other) => {
            errors.push(other, EXPECTED);
            None
        }
        None => {
            errors.push(
                &arg.key,
                "`crate` needs a value, e.g. `crate = durable_core`",
            );
            None
        }
    }
}

fn string_value(arg: &Arg) -> syn::Result<LitStr> {
    let key = &arg.key;
    match &arg.value {
        Some(syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(s),
            ..
        })) => Ok(s.clone()),
        Some(other) => Err(syn::Error::new_spanned(
            other,
            format!("`{key}` must be a string literal, e.g. `{key} = \"charge_card\"`"),
        )),
        None => Err(syn::Error::new(
            key.span(),
            format!("`{key}` needs a value, e.g. `{key} = \"charge_card\"`"),
        )),
    }
}

/// Durable names: 1–100 characters, no whitespace, `/`, `\`, `#`, `?` or `@`.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("`name` must not be empty".to_owned());
    }
    if name.chars().count() > 100 {
        return Err("`name` must be at most 100 characters".to_owned());
    }
    if let Some(c) = name
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '\\' | '#' | '?' | '@'))
    {
        return Err(format!(
            "`name` must not contain {c:?}; use letters, digits, `_`, `-`, `.` or `:`"
        ));
    }
    Ok(())
}

pub(crate) fn call_site() -> Span {
    Span::call_site()
}
