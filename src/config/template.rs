//! Templates: `{…}` holes in a trigger's `url` and header values, each a CEL expression over
//! the event (the variables of `when`), compiled and checked when the config is loaded.
//!
//! - `{{` and `}}` are a literal brace. A hole ends at the `}` that closes it: braces inside
//!   the expression (a map literal) and inside its quoted strings are counted.
//! - In a URL, holes may only stand in the path and the query, never in the scheme, the host
//!   or the port: the connection a trigger makes is fixed by its config. A value in the path is
//!   percent-encoded as one path segment (a `/` in it is `%2F`), a value in the query as one
//!   query value (`&`, `=`, `+` and `#` are encoded too); every byte outside
//!   `A-Z a-z 0-9 - . _ ~` is encoded. URL templates have no fragment.
//! - A header value is inserted as it is; a value HTTP cannot carry (a line break) is an error
//!   for that event.
//! - A hole's value must be a string, a number or a bool. Null, a list or a map is an error
//!   for that event, never an empty segment: a request to a wrong URL cannot be taken back.

use std::fmt::Write as _;
use std::sync::Arc;

use super::when::{RowColumn, check_cel, row_columns};

/// How a hole's value is written into its place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// One path segment, percent-encoded.
    PathSegment,
    /// One query value, percent-encoded.
    QueryValue,
    /// A header value, as it is.
    Verbatim,
}

#[derive(Clone)]
enum Part {
    Literal(String),
    Hole {
        source: String,
        program: Arc<cel::Program>,
        encoding: Encoding,
    },
}

/// A compiled template.
#[derive(Clone)]
pub struct Template {
    parts: Vec<Part>,
    /// For a URL: the length of its literal `scheme://authority`, which every rendering
    /// starts with (0 for a header).
    authority: usize,
    /// The row columns its holes read (checked against the table at start-up).
    pub columns: Vec<RowColumn>,
}

impl std::fmt::Debug for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Template(")?;
        for p in &self.parts {
            match p {
                Part::Literal(_) => f.write_str("…")?,
                Part::Hole { source, .. } => write!(f, "{{{source}}}")?,
            }
        }
        f.write_str(")")
    }
}

impl Template {
    /// Whether it has at least one hole.
    pub fn has_holes(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Hole { .. }))
    }

    /// The compiled programs of its holes (for the variables they refer to).
    pub fn programs(&self) -> impl Iterator<Item = &cel::Program> {
        self.parts.iter().filter_map(|p| match p {
            Part::Hole { program, .. } => Some(&**program),
            Part::Literal(_) => None,
        })
    }

    /// The text with every hole's value written in; the error names the hole that failed.
    pub fn render(&self, ctx: &cel::Context<'_, '_>) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Hole {
                    source,
                    program,
                    encoding,
                } => {
                    let value = program
                        .execute(ctx)
                        .map_err(|e| format!("`{{{source}}}`: {e}"))?;
                    let text = scalar_text(&value).map_err(|what| {
                        format!("`{{{source}}}` is {what}, not a string, number or bool")
                    })?;
                    match encoding {
                        Encoding::Verbatim => out.push_str(&text),
                        // `.` and `..` would walk the path (servers resolve them).
                        Encoding::PathSegment if text == "." || text == ".." => {
                            return Err(format!(
                                "`{{{source}}}` is `{text}`, which would change the path"
                            ));
                        }
                        Encoding::PathSegment | Encoding::QueryValue => {
                            percent_encode(&text, &mut out);
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// A URL template's request target (origin form, `/path?query`) for one event.
    pub fn render_target(&self, ctx: &cel::Context<'_, '_>) -> Result<String, String> {
        let url = self.render(ctx)?;
        let rest = url.get(self.authority..).unwrap_or("");
        Ok(if rest.starts_with('/') {
            rest.to_owned()
        } else {
            format!("/{rest}")
        })
    }

    /// The text with every hole replaced by `x`: what the config check parses to see that
    /// the literal parts make a valid URL or header value.
    fn sample(&self) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Literal(s) => s.as_str(),
                Part::Hole { .. } => "x",
            })
            .collect()
    }
}

/// A value as the text a hole writes.
fn scalar_text(v: &cel::Value) -> Result<String, &'static str> {
    use cel::Value as V;
    match v {
        V::String(s) => Ok(s.to_string()),
        V::Int(i) => Ok(i.to_string()),
        V::UInt(u) => Ok(u.to_string()),
        V::Float(f) if f.is_finite() => Ok(f.to_string()),
        V::Float(_) => Err("not a finite number"),
        V::Bool(b) => Ok(b.to_string()),
        V::Null => Err("null"),
        V::List(_) => Err("a list"),
        V::Map(_) => Err("a map"),
        V::Bytes(_) => Err("bytes"),
        _ => Err("not a plain value"),
    }
}

/// Appends `s` with every byte outside the unreserved set (`A-Z a-z 0-9 - . _ ~`)
/// percent-encoded: safe as a path segment and as a query value.
pub fn percent_encode(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// Splits `s` into literal text and `{…}` holes (source text of each hole).
fn split(s: &str) -> Result<Vec<(bool, String)>, String> {
    let mut out: Vec<(bool, String)> = Vec::new();
    let mut lit = String::new();
    let mut chars = s.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match c {
            '{' if chars.peek().map(|(_, c)| *c) == Some('{') => {
                chars.next();
                lit.push('{');
            }
            '}' if chars.peek().map(|(_, c)| *c) == Some('}') => {
                chars.next();
                lit.push('}');
            }
            '}' => {
                return Err(format!(
                    "unmatched `}}` at byte {at} (write `}}}}` for a literal brace)"
                ));
            }
            '{' => {
                let mut depth = 1usize;
                let mut quote: Option<char> = None;
                let mut expr = String::new();
                loop {
                    let Some((_, c)) = chars.next() else {
                        return Err(format!(
                            "`{{` at byte {at} is never closed (write `{{{{` for a literal brace)"
                        ));
                    };
                    match (quote, c) {
                        (Some(q), c) if c == q => quote = None,
                        (Some(_), '\\') => {
                            expr.push(c);
                            if let Some((_, next)) = chars.next() {
                                expr.push(next);
                            }
                            continue;
                        }
                        (Some(_), _) => {}
                        (None, '\'' | '"') => quote = Some(c),
                        (None, '{') => depth += 1,
                        (None, '}') => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        (None, _) => {}
                    }
                    expr.push(c);
                }
                if !lit.is_empty() {
                    out.push((false, std::mem::take(&mut lit)));
                }
                out.push((true, expr));
            }
            c => lit.push(c),
        }
    }
    if !lit.is_empty() {
        out.push((false, lit));
    }
    Ok(out)
}

fn compile(
    s: &str,
    authority: usize,
    encoding_at: impl Fn(&str) -> Encoding,
) -> Result<Template, String> {
    let mut parts = Vec::new();
    let mut columns: Vec<RowColumn> = Vec::new();
    let mut before = String::new();
    for (hole, text) in split(s)? {
        if !hole {
            before.push_str(&text);
            parts.push(Part::Literal(text));
            continue;
        }
        let program = check_cel(&text).map_err(|e| format!("`{{{text}}}`: {e}"))?;
        for c in row_columns(program.expression()) {
            if !columns.contains(&c) {
                columns.push(c);
            }
        }
        parts.push(Part::Hole {
            encoding: encoding_at(&before),
            source: text,
            program: Arc::new(program),
        });
        before.push('x');
    }
    Ok(Template {
        parts,
        authority,
        columns,
    })
}

/// A trigger's `url`: holes only after the host, in the path or the query.
pub fn url_template(s: &str) -> Result<(Template, url::Url), String> {
    let authority_end = s
        .find("://")
        .map(|i| i + 3)
        .and_then(|start| {
            s[start..]
                .find(['/', '?', '#'])
                .map(|j| start + j)
                .or(Some(s.len()))
        })
        .unwrap_or(0);
    // The scheme, host and port must be literal; `{{` in them is odd but harmless.
    if s[..authority_end].contains('{') && !s[..authority_end].contains("{{") {
        return Err(
            "a template may only stand in the URL's path or query, not in its scheme, host or port"
                .to_owned(),
        );
    }
    let template = compile(s, authority_end, |before| {
        if before.contains('?') {
            Encoding::QueryValue
        } else {
            Encoding::PathSegment
        }
    })?;
    let sample = template.sample();
    let url = url::Url::parse(&sample).map_err(|e| format!("not a valid URL ({e})"))?;
    if template.has_holes() && url.fragment().is_some() {
        return Err("a URL template cannot have a fragment (`#…` is never sent)".to_owned());
    }
    Ok((template, url))
}

/// Why `s` cannot be a NATS subject to publish to, if it cannot: tokens separated by `.`,
/// none empty, no whitespace, no wildcard (`*`, `>`).
pub fn check_subject(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("the subject is empty".to_owned());
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("a subject cannot contain whitespace".to_owned());
    }
    if s.split('.').any(str::is_empty) {
        return Err("a subject has no empty tokens (`a..b`, a leading or trailing `.`)".to_owned());
    }
    if s.split('.').any(|t| t == "*" || t == ">") {
        return Err("a subject to publish to has no wildcards (`*`, `>`)".to_owned());
    }
    Ok(())
}

/// A header value template.
pub fn header_template(s: &str) -> Result<Template, String> {
    compile(s, 0, |_| Encoding::Verbatim)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn render(t: &Template, vars: &[(&str, cel::Value)]) -> Result<String, String> {
        let mut ctx = cel::Context::default();
        for (k, v) in vars {
            ctx.add_variable_from_value(*k, v.clone());
        }
        t.render(&ctx)
    }

    #[test]
    fn holes_in_the_path_and_query_are_encoded_by_place() {
        let (t, url) =
            url_template("https://api.example.com/items/{id}?name={type}&x={{y}}").unwrap();
        assert_eq!(url.host_str(), Some("api.example.com"));
        let out = render(
            &t,
            &[
                ("id", cel::Value::String(Arc::new("a b/c".into()))),
                ("type", cel::Value::String(Arc::new("x&y=z+é".into()))),
            ],
        )
        .unwrap();
        assert_eq!(
            out,
            "https://api.example.com/items/a%20b%2Fc?name=x%26y%3Dz%2B%C3%A9&x={y}"
        );
        let n = render(&t, &[("id", 42.into()), ("type", true.into())]).unwrap();
        assert!(n.contains("/items/42?name=true"), "{n}");
        let mut ctx = cel::Context::default();
        ctx.add_variable_from_value("id", 7);
        ctx.add_variable_from_value("type", "a");
        assert_eq!(t.render_target(&ctx).unwrap(), "/items/7?name=a&x={y}");
        let (q, _) = url_template("http://h:8080?id={id}").unwrap();
        assert_eq!(q.render_target(&ctx).unwrap(), "/?id=7");
        ctx.add_variable_from_value("id", "..");
        let e = t.render_target(&ctx).unwrap_err();
        assert!(e.contains("change the path"), "{e}");
    }

    #[test]
    fn a_null_or_a_map_is_an_error_not_an_empty_segment() {
        let (t, _) = url_template("http://h/items/{id}").unwrap();
        let e = render(&t, &[("id", cel::Value::Null)]).unwrap_err();
        assert!(e.contains("is null"), "{e}");
        let e = render(&t, &[]).unwrap_err();
        assert!(e.contains("{id}"), "{e}");
    }

    #[test]
    fn bad_templates_are_refused_at_load() {
        for (s, want) in [
            ("http://{id}.example.com/", "scheme, host or port"),
            ("http://h/{id", "never closed"),
            ("http://h/a}", "unmatched"),
            ("http://h/{nope}", "unknown variable `nope`"),
            ("http://h/{record.}", "not a valid CEL"),
            ("http://h/{id}#frag", "fragment"),
        ] {
            let e = url_template(s).unwrap_err();
            assert!(e.contains(want), "{s}: {e}");
        }
    }

    #[test]
    fn braces_inside_an_expression_are_counted() {
        let (t, _) = url_template("http://h/{ {'a': 'x}'}['a'] }").unwrap();
        assert_eq!(render(&t, &[]).unwrap(), "http://h/x%7D");
        let t = header_template("{id}-{{literal}}").unwrap();
        assert_eq!(render(&t, &[("id", "e1".into())]).unwrap(), "e1-{literal}");
        let (t, _) = url_template("http://h/{record.id}").unwrap();
        assert_eq!(t.columns[0].column, "id");
    }
}
