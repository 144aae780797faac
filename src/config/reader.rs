//! Typed values out of a parsed `toml_edit` document: each read checks the type, replaces
//! `${VAR}`s and records what is wrong as a [`Problem`] with its line, so reading goes on.

use std::ops::Range;
use std::time::Duration;

use toml_edit::{Item, TableLike, Value};

use super::Problem;
use super::interpolate::interpolate;

/// A value found in the file, with the span to point problems at.
pub(super) struct Found<'t> {
    pub(super) item: &'t Item,
    pub(super) span: Option<Range<usize>>,
}

/// Walks the parsed document, collecting problems.
pub(super) struct Reader<'e> {
    /// Byte offset of the start of every line.
    line_starts: Vec<usize>,
    env: &'e dyn Fn(&str) -> Option<String>,
    pub(super) problems: Vec<Problem>,
}

impl<'e> Reader<'e> {
    /// A reader for `text`, looking `${VAR}`s up with `env`.
    pub(super) fn new(text: &str, env: &'e dyn Fn(&str) -> Option<String>) -> Reader<'e> {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Reader {
            line_starts,
            env,
            problems: Vec::new(),
        }
    }

    /// The 1-based line a span starts on.
    pub(super) fn line(&self, span: Option<Range<usize>>) -> Option<usize> {
        let offset = span?.start;
        Some(self.line_starts.partition_point(|&s| s <= offset))
    }

    /// Records one problem at `span`.
    pub(super) fn problem(
        &mut self,
        span: Option<Range<usize>>,
        key: &str,
        message: impl Into<String>,
    ) {
        let line = self.line(span);
        self.problems.push(Problem {
            line,
            key: key.to_owned(),
            message: message.into(),
        });
    }

    /// The value of `key` in `table`, pointing at the value (or the key of a dotted table).
    pub(super) fn get<'t>(&self, table: &'t dyn TableLike, key: &str) -> Option<Found<'t>> {
        let (k, item) = table.get_key_value(key)?;
        if item.is_none() {
            return None;
        }
        Some(Found {
            item,
            span: item.span().or_else(|| k.span()),
        })
    }

    /// Reports every key of `table` not in `allowed`.
    pub(super) fn unknown_keys(&mut self, table: &dyn TableLike, allowed: &[&str], prefix: &str) {
        let unknown: Vec<(String, Option<Range<usize>>)> = table
            .iter()
            .filter(|(k, _)| !allowed.contains(k))
            .map(|(k, item)| {
                let span = table.key(k).and_then(|k| k.span()).or_else(|| item.span());
                (k.to_owned(), span)
            })
            .collect();
        for (k, span) in unknown {
            let mut message = format!("unknown key `{k}`");
            if let Some(near) = closest(allowed, &k) {
                message.push_str(&format!(" (did you mean `{near}`?)"));
            }
            self.problem(span, &join(prefix, &k), message);
        }
    }

    fn wrong_type(&mut self, found: &Found<'_>, key: &str, expected: &str) {
        let message = format!("expected {expected}, found {}", type_name(found.item));
        self.problem(found.span.clone(), key, message);
    }

    /// A string value with `${VAR}`s replaced.
    pub(super) fn string(&mut self, found: &Found<'_>, key: &str) -> Option<String> {
        match found.item.as_str() {
            Some(s) => self.interpolate(s, found.span.clone(), key),
            None => {
                self.wrong_type(found, key, "a string");
                None
            }
        }
    }

    fn interpolate(&mut self, s: &str, span: Option<Range<usize>>, key: &str) -> Option<String> {
        match interpolate(s, self.env) {
            Ok(v) => Some(v),
            Err(message) => {
                self.problem(span, key, message);
                None
            }
        }
    }

    /// A table (`[x]` or inline `{ … }`).
    pub(super) fn table<'t>(&mut self, found: &Found<'t>, key: &str) -> Option<&'t dyn TableLike> {
        let t = found.item.as_table_like();
        if t.is_none() {
            self.wrong_type(found, key, "a table");
        }
        t
    }

    /// The entries of a table (`[x]` or inline `{ … }`), each with its own span (the table's
    /// when it has none).
    pub(super) fn entries<'t>(
        &mut self,
        found: &Found<'t>,
        key: &str,
    ) -> Option<Vec<(&'t str, Found<'t>)>> {
        let table = self.table(found, key)?;
        Some(
            table
                .iter()
                .map(|(name, item)| {
                    let f = Found {
                        item,
                        span: item.span().or_else(|| found.span.clone()),
                    };
                    (name, f)
                })
                .collect(),
        )
    }

    /// A non-empty array of non-empty, distinct strings.
    pub(super) fn string_list(&mut self, found: &Found<'_>, key: &str) -> Option<Vec<String>> {
        let Some(array) = found.item.as_array() else {
            self.wrong_type(found, key, "an array of strings");
            return None;
        };
        if array.is_empty() {
            self.problem(
                found.span.clone(),
                key,
                "must not be empty (leave it out instead)",
            );
            return None;
        }
        let mut out = Vec::with_capacity(array.len());
        let mut ok = true;
        for (i, v) in array.iter().enumerate() {
            let span = v.span().or_else(|| found.span.clone());
            let item_key = format!("{key}[{}]", i + 1);
            let Some(s) = v.as_str() else {
                let message = format!("expected a string, found {}", value_type_name(v));
                self.problem(span, &item_key, message);
                ok = false;
                continue;
            };
            match self.interpolate(s, span.clone(), &item_key) {
                Some(s) if s.is_empty() => {
                    self.problem(span, &item_key, "must not be empty");
                    ok = false;
                }
                Some(s) if out.contains(&s) => {
                    self.problem(span, &item_key, format!("`{s}` is listed twice"));
                    ok = false;
                }
                Some(s) => out.push(s),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// A positive duration like "10s" or "3d".
    pub(super) fn duration(&mut self, found: &Found<'_>, key: &str) -> Option<Duration> {
        match self.duration_or_zero(found, key)? {
            d if d.is_zero() => {
                self.problem(found.span.clone(), key, "must be longer than 0s");
                None
            }
            d => Some(d),
        }
    }

    /// A duration like "5ms", "0s" included.
    pub(super) fn duration_or_zero(&mut self, found: &Found<'_>, key: &str) -> Option<Duration> {
        let s = self.string(found, key)?;
        match humantime::parse_duration(&s) {
            Ok(d) => Some(d),
            Err(e) => {
                let message =
                    format!("`{s}` is not a duration like \"10s\", \"2m\" or \"3d\" ({e})");
                self.problem(found.span.clone(), key, message);
                None
            }
        }
    }

    /// An integer from 1 to `max`.
    pub(super) fn count(
        &mut self,
        found: &Found<'_>,
        key: &str,
        max: i64,
    ) -> Option<std::num::NonZeroUsize> {
        let Some(n) = found.item.as_integer() else {
            self.wrong_type(found, key, "an integer");
            return None;
        };
        if !(1..=max).contains(&n) {
            let message = format!("must be between 1 and {max}, not {n}");
            self.problem(found.span.clone(), key, message);
            return None;
        }
        usize::try_from(n)
            .ok()
            .and_then(std::num::NonZeroUsize::new)
    }

    /// One of `choices` (matched without regard to case).
    pub(super) fn choice<T: Copy>(
        &mut self,
        found: &Found<'_>,
        key: &str,
        choices: &[(&str, T)],
    ) -> Option<T> {
        let s = self.string(found, key)?;
        if let Some((_, v)) = choices.iter().find(|(n, _)| n.eq_ignore_ascii_case(&s)) {
            return Some(*v);
        }
        let names: Vec<String> = choices.iter().map(|(n, _)| format!("\"{n}\"")).collect();
        let message = format!("`{s}` is not one of {}", names.join(", "));
        self.problem(found.span.clone(), key, message);
        None
    }
}

/// `prefix.key`, or `key` at the top level.
pub(super) fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// The kind of `item`, as "expected …, found …" names it.
pub(super) fn type_name(item: &Item) -> &'static str {
    match item {
        Item::None => "nothing",
        Item::Value(v) => value_type_name(v),
        Item::Table(_) => "a table",
        Item::ArrayOfTables(_) => "an array of tables",
    }
}

fn value_type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::InlineTable(_) => "a table",
    }
}

/// The first of `candidates` within two edits of `word`: the "did you mean" of messages.
pub(crate) fn closest<'c, S: AsRef<str>>(candidates: &'c [S], word: &str) -> Option<&'c str> {
    candidates
        .iter()
        .map(AsRef::as_ref)
        .find(|c| edit_distance(c, word) <= 2)
}

/// Levenshtein distance, for "did you mean" hints on short names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}
