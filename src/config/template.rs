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
    /// For a URL: its request target (origin form, `/path?query`) only; the scheme, host and
    /// port are literal and kept by the caller.
    parts: Vec<Part>,
    /// Whether this is a URL's request target (path segments are checked as they are made).
    url: bool,
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

    /// Whether the source of one of its holes contains `word`.
    pub fn mentions(&self, word: &str) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, Part::Hole { source, .. } if source.contains(word)))
    }

    /// The compiled programs of its holes (for the variables they refer to).
    pub fn programs(&self) -> impl Iterator<Item = &cel::Program> {
        self.parts.iter().filter_map(|p| match p {
            Part::Hole { program, .. } => Some(&**program),
            Part::Literal(_) => None,
        })
    }

    /// The text with every hole's value written in (for a URL, its request target); the
    /// error names the hole that failed.
    ///
    /// A path segment that a hole made empty, `.` or `..` is an error: the first sends
    /// `/items/` for `/items/{id}`, the others walk the path (servers resolve them).
    pub fn render(&self, ctx: &cel::Context<'_, '_>) -> Result<String, String> {
        let mut out = String::new();
        // The path segment being written: where it starts, and the hole that wrote into it.
        let mut segment = 0;
        let mut hole_in_segment: Option<&str> = None;
        let mut in_query = false;
        let close = |out: &str, from: usize, hole: Option<&str>| {
            let Some(source) = hole else { return Ok(()) };
            // `%2e` is a dot to servers that resolve dot segments, so it is compared as one.
            let segment = out[from..].replace("%2e", ".").replace("%2E", ".");
            match segment.as_str() {
                "" => Err(format!(
                    "`{{{source}}}` is empty: it would leave an empty path segment"
                )),
                "." | ".." => Err(format!(
                    "`{{{source}}}` makes the path segment `{segment}`, which would change the path"
                )),
                _ => Ok(()),
            }
        };
        for part in &self.parts {
            match part {
                Part::Literal(s) => {
                    for c in s.chars() {
                        if !in_query && matches!(c, '/' | '?') && self.url {
                            close(&out, segment, hole_in_segment)?;
                            in_query = c == '?';
                            segment = out.len() + 1;
                            hole_in_segment = None;
                        }
                        out.push(c);
                    }
                }
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
                        Encoding::PathSegment => {
                            hole_in_segment = Some(source);
                            percent_encode(&text, &mut out);
                        }
                        Encoding::QueryValue => percent_encode(&text, &mut out),
                    }
                }
            }
        }
        if !in_query {
            close(&out, segment, hole_in_segment)?;
        }
        Ok(out)
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

/// Compiles the holes of `pieces` (from [`split`]) and collects the row columns they read.
fn compile_holes(pieces: &[(bool, String)]) -> Result<(Vec<Part>, Vec<RowColumn>), String> {
    let mut holes = Vec::new();
    let mut columns: Vec<RowColumn> = Vec::new();
    for (_, text) in pieces.iter().filter(|(hole, _)| *hole) {
        let program = check_cel(text).map_err(|e| format!("`{{{text}}}`: {e}"))?;
        for c in row_columns(program.expression()) {
            if !columns.contains(&c) {
                columns.push(c);
            }
        }
        holes.push(Part::Hole {
            encoding: Encoding::Verbatim,
            source: text.clone(),
            program: Arc::new(program),
        });
    }
    Ok((holes, columns))
}

/// A trigger's `url`: holes only in the path or the query. Returns the template of its
/// request target and the URL with every hole as `x` (its scheme, host and port are the
/// connection's).
///
/// Where a hole stands is read from the parsed URL, not from the text: each hole is put in
/// as a marker, the URL is parsed as a client would parse it, and every marker must come
/// back in the path or the query. This way `http:/{h}/p`, `https:{h}.example.com` or a
/// hole in the user info are refused however they are spelled, and the literal text is
/// normalised once (a space or `é` in the path is percent-encoded at load, `..` resolved).
pub fn url_template(s: &str) -> Result<(Template, url::Url), String> {
    const ONLY: &str = "a template may only stand in the URL's path or query, not in its scheme, user info, host or port";
    let pieces = split(s)?;
    let (holes, columns) = compile_holes(&pieces)?;
    // The marker starts with `_` and ends with `~`, each once, so no prefix of it is also a
    // suffix: it cannot overlap itself, and with its core absent from the text, every
    // occurrence after parsing is a hole.
    let lower = s.to_ascii_lowercase();
    let marker = (0u32..)
        .find(|n| !lower.contains(&format!("hole{n}")))
        .map(|n| format!("_hole{n}~"))
        .unwrap_or_default();
    let marked: String = pieces
        .iter()
        .map(|(hole, text)| if *hole { marker.as_str() } else { text })
        .collect();
    let parsed = url::Url::parse(&marked).map_err(|e| {
        if holes.is_empty() {
            format!("not a valid URL ({e})")
        } else {
            format!("not a valid URL ({e}); {ONLY}")
        }
    })?;
    let in_connection = [
        parsed.scheme(),
        parsed.username(),
        parsed.password().unwrap_or_default(),
        parsed.host_str().unwrap_or_default(),
    ];
    if !holes.is_empty() && in_connection.iter().any(|p| p.contains(&marker)) {
        return Err(ONLY.to_owned());
    }
    if !holes.is_empty() && parsed.fragment().is_some() {
        return Err("a URL template cannot have a fragment (`#…` is never sent)".to_owned());
    }
    let path = parsed.path();
    let mut parts = Vec::new();
    let mut holes = holes.into_iter();
    let mut literal = String::new();
    for (piece, in_query) in [(path, false), (parsed.query().unwrap_or_default(), true)] {
        if in_query {
            if parsed.query().is_none() {
                break;
            }
            literal.push('?');
        }
        let mut rest = piece;
        loop {
            let (text, after) = match rest.find(&marker) {
                Some(i) => (&rest[..i], Some(&rest[i + marker.len()..])),
                None => (rest, None),
            };
            encode_request_target(text, &mut literal);
            let Some(after) = after else { break };
            let Some(Part::Hole {
                source, program, ..
            }) = holes.next()
            else {
                return Err(ONLY.to_owned());
            };
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(Part::Hole {
                source,
                program,
                encoding: if in_query {
                    Encoding::QueryValue
                } else {
                    Encoding::PathSegment
                },
            });
            rest = after;
        }
    }
    if !literal.is_empty() {
        parts.push(Part::Literal(literal));
    }
    // A hole dropped by the parser (in `a/{x}/../b`, `{x}` is resolved away) is refused.
    if holes.next().is_some() {
        return Err(
            "a hole is lost when the URL is normalised (a `..` segment after it)".to_owned(),
        );
    }
    let template = Template {
        parts,
        url: true,
        columns,
    };
    let sample = marked.replace(&marker, "x");
    let url = url::Url::parse(&sample).map_err(|e| format!("not a valid URL ({e})"))?;
    let target: String = template
        .parts
        .iter()
        .map(|p| match p {
            Part::Literal(s) => s.as_str(),
            Part::Hole { .. } => "x",
        })
        .collect();
    if target.parse::<http::Uri>().is_err() {
        return Err("the URL's path or query is not a valid request target".to_owned());
    }
    Ok((template, url))
}

/// Appends the literal part of a request target, with every byte that RFC 3986 does not
/// allow there percent-encoded (the URL parser leaves `{`, `}`, `|`, `^` and `` ` `` in a
/// query, which some servers refuse).
pub fn encode_request_target(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
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
    let pieces = split(s)?;
    let (holes, columns) = compile_holes(&pieces)?;
    let mut holes = holes.into_iter();
    let parts = pieces
        .into_iter()
        .filter_map(|(hole, text)| {
            if hole {
                holes.next()
            } else {
                Some(Part::Literal(text))
            }
        })
        .collect();
    Ok(Template {
        parts,
        url: false,
        columns,
    })
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
        assert_eq!(out, "/items/a%20b%2Fc?name=x%26y%3Dz%2B%C3%A9&x=%7By%7D");
        let n = render(&t, &[("id", 42.into()), ("type", true.into())]).unwrap();
        assert_eq!(n, "/items/42?name=true&x=%7By%7D");
        let (q, _) = url_template("http://h:8080?id={id}").unwrap();
        assert_eq!(render(&q, &[("id", 7.into())]).unwrap(), "/?id=7");
        assert_eq!(render(&q, &[("id", "".into())]).unwrap(), "/?id=");
    }

    #[test]
    fn a_value_that_would_change_the_path_is_an_error() {
        let (t, _) = url_template("http://h/items/{id}").unwrap();
        let e = render(&t, &[("id", cel::Value::Null)]).unwrap_err();
        assert!(e.contains("is null"), "{e}");
        let e = render(&t, &[]).unwrap_err();
        assert!(e.contains("{id}"), "{e}");
        for (value, want) in [
            ("", "empty path segment"),
            (".", "change the path"),
            ("..", "change the path"),
        ] {
            let e = render(&t, &[("id", value.into())]).unwrap_err();
            assert!(e.contains(want), "{value:?}: {e}");
        }
        // Two holes that make `..` together, and a hole followed by more path.
        let (t, _) = url_template("http://h/a/{id}{type}/b").unwrap();
        let e = render(&t, &[("id", ".".into()), ("type", ".".into())]).unwrap_err();
        assert!(e.contains("change the path"), "{e}");
        assert_eq!(
            render(&t, &[("id", ".".into()), ("type", "a".into())]).unwrap(),
            "/a/.a/b"
        );
        // Part of a segment may be empty when the segment is not.
        let (t, _) = url_template("http://h/v-{id}/b").unwrap();
        assert_eq!(render(&t, &[("id", "".into())]).unwrap(), "/v-/b");
    }

    #[test]
    fn an_encoded_dot_next_to_a_hole_counts_as_a_dot() {
        let (t, _) = url_template("http://h/a/{id}%2e/b").unwrap();
        let e = render(&t, &[("id", ".".into())]).unwrap_err();
        assert!(e.contains("change the path"), "{e}");
        let e = render(&t, &[("id", "".into())]).unwrap_err();
        assert!(e.contains("change the path"), "{e}");
        assert_eq!(render(&t, &[("id", "v".into())]).unwrap(), "/a/v%2e/b");
    }

    #[test]
    fn literal_text_like_the_marker_stays_in_place() {
        for s in [
            "http://h/x_hole0{id}",
            "http://h/x_hole0_{id}",
            "http://h/{id}hole0~/y",
        ] {
            let (t, _) = url_template(s).unwrap();
            let want = s.trim_start_matches("http://h").replace("{id}", "V");
            assert_eq!(render(&t, &[("id", "V".into())]).unwrap(), want, "{s}");
        }
    }

    #[test]
    fn the_literal_text_is_normalised_once_at_load() {
        let (t, _) = url_template("http://h/a b/é/{id}?q=a b&r=|").unwrap();
        assert_eq!(
            render(&t, &[("id", 7.into())]).unwrap(),
            "/a%20b/%C3%A9/7?q=a%20b&r=%7C"
        );
        let (t, _) = url_template("http://h/a/./b/{id}").unwrap();
        assert_eq!(render(&t, &[("id", 7.into())]).unwrap(), "/a/b/7");
    }

    #[test]
    fn bad_templates_are_refused_at_load() {
        for (s, want) in [
            (
                "http://{id}.example.com/",
                "scheme, user info, host or port",
            ),
            ("http:/{id}/p", "scheme, user info, host or port"),
            (
                "https:{id}.example.com/p",
                "scheme, user info, host or port",
            ),
            ("http://{id}@h/p", "scheme, user info, host or port"),
            ("http://u:{id}@h/p", "scheme, user info, host or port"),
            ("http://h:{id}/", "scheme, user info, host or port"),
            ("http://{{x}}{id}.h/", "scheme, user info, host or port"),
            ("{type}://h/", "scheme, user info, host or port"),
            ("http://h/a/{id}/../b", "lost"),
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
        assert_eq!(render(&t, &[]).unwrap(), "/x%7D");
        let t = header_template("{id}-{{literal}}").unwrap();
        assert_eq!(render(&t, &[("id", "e1".into())]).unwrap(), "e1-{literal}");
        let (t, _) = url_template("http://h/{record.id}").unwrap();
        assert_eq!(t.columns[0].column, "id");
    }
}
