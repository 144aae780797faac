//! pgoutput text values → JSON, identical to what Postgres's `to_jsonb()` returns.
//!
//! pgoutput sends each column in its type's text output format, produced under the
//! replication session's settings (`DateStyle=ISO`, `TimeZone=UTC`, `IntervalStyle=postgres`,
//! `extra_float_digits=1`, `bytea_output=hex`). `to_jsonb()` (jsonb.c `datum_to_jsonb`)
//! sorts every type into a few categories, and so does [`PgType`]:
//!
//! - numbers (int2/4/8, float4/8, numeric): a JSON number, unless the output contains an
//!   `N`/`n` (`NaN`, `Infinity`, `-Infinity`), then a string. The number goes through
//!   `numeric_in`, so a float's `1e-05` becomes `0.00001` and `-0` becomes `0`.
//! - json: parsed into jsonb, so duplicate keys keep the last value, object keys are in
//!   jsonb order (shorter first, then bytewise) and numbers are normalised as above.
//! - date, timestamp, timestamptz: XSD form (`JsonEncodeDateTime`): a `T` between date and
//!   time, a `+HH:MM` offset, `infinity`/`-infinity` and a trailing ` BC` as in the text.
//! - arrays: nested JSON arrays by dimension; bounds (`[0:1]=`) are dropped.
//! - composites: an object in jsonb key order, one key per live attribute.
//! - everything else: its output string.
//!
//! Conversion is pure and never panics: text that does not parse is a [`ValueError`].
//!
//! Known differences from `to_jsonb`: json/jsonb nested deeper than 127 levels is an
//! error (serde_json's recursion limit); where `to_jsonb` itself fails (a json number
//! beyond numeric's range, `\u0000` in a json string) the value is kept instead; and a
//! user type with a cast to json (e.g. hstore) is its output string, not the cast's result.

use std::borrow::Cow;
use std::str::FromStr;
use std::sync::Arc;

use serde_json::{Map, Number, Value};

use crate::source::pgoutput::TupleValue;

/// Array nesting Postgres allows (`MAXDIM`); deeper input is rejected before recursing.
const MAX_ARRAY_DIMS: usize = 6;

/// What `to_jsonb()` does with a column's type; built from the catalog in `relations`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgType {
    /// `bool`: `t`/`f` → `true`/`false`.
    Bool,
    /// int2, int4, int8, float4, float8, numeric: a JSON number (NaN/±Infinity as strings).
    Number,
    /// `json`: embedded with jsonb semantics (last duplicate key wins, keys in jsonb order).
    Json,
    /// `jsonb`: embedded as is.
    Jsonb,
    /// `date`: the ISO text, which is already what `to_jsonb` prints.
    Date,
    /// `timestamp`: `YYYY-MM-DDTHH:MM:SS[.ffffff]`.
    Timestamp,
    /// `timestamptz`: `YYYY-MM-DDTHH:MM:SS[.ffffff]+HH:MM`.
    Timestamptz,
    /// Every other type: its output string (text, uuid, bytea, interval, enums, ranges, ...).
    Text,
    /// A true array type (`typsubscript = array_subscript_handler`), in `{...}` literal form.
    Array {
        /// The element type.
        element: Arc<PgType>,
        /// The element type's `typdelim` (`;` for box, `,` for everything else built in).
        delimiter: u8,
    },
    /// `int2vector` / `oidvector`: arrays whose output is space-separated (`1 2 3`).
    Vector {
        /// The element type.
        element: Arc<PgType>,
    },
    /// A composite (row) type.
    Composite(Composite),
}

/// The live attributes of a composite type, and the order `to_jsonb` prints them in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Composite {
    fields: Vec<(String, Arc<PgType>)>,
    /// Indexes into `fields`, in jsonb key order.
    key_order: Vec<usize>,
}

impl Composite {
    /// A composite with these attributes, in `attnum` order (dropped ones left out).
    pub fn new(fields: Vec<(String, Arc<PgType>)>) -> Composite {
        let mut key_order: Vec<usize> = (0..fields.len()).collect();
        key_order.sort_by(|&a, &b| jsonb_key_cmp(&fields[a].0, &fields[b].0));
        Composite { fields, key_order }
    }

    /// The attributes, in `attnum` order.
    pub fn fields(&self) -> &[(String, Arc<PgType>)] {
        &self.fields
    }
}

impl PgType {
    /// A short name for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            PgType::Bool => "bool",
            PgType::Number => "number",
            PgType::Json => "json",
            PgType::Jsonb => "jsonb",
            PgType::Date => "date",
            PgType::Timestamp => "timestamp",
            PgType::Timestamptz => "timestamptz",
            PgType::Text => "text",
            PgType::Array { .. } => "array",
            PgType::Vector { .. } => "vector",
            PgType::Composite(_) => "composite",
        }
    }
}

/// A text value that is not valid output of its type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {ty} value: {problem}")]
pub struct ValueError {
    /// The kind of type being converted ([`PgType::kind`]).
    pub ty: &'static str,
    /// What is wrong (never the value itself, which may be sensitive).
    pub problem: Cow<'static, str>,
}

fn err(ty: &PgType, problem: impl Into<Cow<'static, str>>) -> ValueError {
    ValueError {
        ty: ty.kind(),
        problem: problem.into(),
    }
}

fn array_err(problem: &str, pos: usize) -> ValueError {
    ValueError {
        ty: "array",
        problem: format!("{problem} at byte {pos}").into(),
    }
}

/// Converts one pgoutput column value; `None` for an unchanged TOASTed value (not sent).
pub fn tuple_value_to_json(ty: &PgType, value: &TupleValue) -> Result<Option<Value>, ValueError> {
    match value {
        TupleValue::Null => Ok(Some(Value::Null)),
        TupleValue::UnchangedToast => Ok(None),
        TupleValue::Text(bytes) => bytes_to_json(ty, bytes).map(Some),
        TupleValue::Binary(_) => Err(err(
            ty,
            "value arrived in binary format; walhook needs the pgoutput `binary` option off",
        )),
    }
}

/// Converts a text value given as bytes (checked to be UTF-8, as `client_encoding` promises).
pub fn bytes_to_json(ty: &PgType, bytes: &[u8]) -> Result<Value, ValueError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| err(ty, format!("not UTF-8 at byte {}", e.valid_up_to())))?;
    text_to_json(ty, text)
}

/// Converts a type's text output to the JSON `to_jsonb()` gives for the same value.
pub fn text_to_json(ty: &PgType, text: &str) -> Result<Value, ValueError> {
    match ty {
        PgType::Bool => match text {
            "t" => Ok(Value::Bool(true)),
            "f" => Ok(Value::Bool(false)),
            _ => Err(err(ty, "expected `t` or `f`")),
        },
        PgType::Number => number(text).map_err(|p| err(ty, p)),
        PgType::Json => {
            let value = serde_json::from_str(text).map_err(|e| err(ty, e.to_string()))?;
            jsonb_normalize(value).map_err(|p| err(ty, p))
        }
        PgType::Jsonb => serde_json::from_str(text).map_err(|e| err(ty, e.to_string())),
        PgType::Date => Ok(Value::String(text.to_owned())),
        PgType::Timestamp => timestamp(text, false).map_err(|p| err(ty, p)),
        PgType::Timestamptz => timestamp(text, true).map_err(|p| err(ty, p)),
        PgType::Text => Ok(Value::String(text.to_owned())),
        PgType::Array { element, delimiter } => array(element, *delimiter, text),
        PgType::Vector { element } => text
            .split_ascii_whitespace()
            .map(|item| text_to_json(element, item))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        PgType::Composite(composite) => record(ty, composite, text),
    }
}

/// jsonb's object key order (`lengthCompareJsonbString`): shorter keys first, then bytewise.
pub fn jsonb_key_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    a.len()
        .cmp(&b.len())
        .then_with(|| a.as_bytes().cmp(b.as_bytes()))
}

/// Number output → JSON, as jsonb.c does: anything with an `N`/`n` is a string, the rest
/// goes through `numeric_in`, whose output never has an exponent or a negative zero.
fn number(text: &str) -> Result<Value, Cow<'static, str>> {
    if text.bytes().any(|b| b == b'N' || b == b'n') {
        return Ok(Value::String(text.to_owned()));
    }
    match canonical_numeric(text) {
        Ok(canonical) => numeric_json(&canonical),
        Err(NumericError::Syntax(problem)) => Err(problem),
        Err(NumericError::OutOfRange) => Err("value overflows numeric format".into()),
    }
}

fn numeric_json(canonical: &str) -> Result<Value, Cow<'static, str>> {
    Number::from_str(canonical)
        .map(Value::Number)
        .map_err(|_| Cow::Borrowed("not a number"))
}

/// Why a decimal is not a numeric.
enum NumericError {
    /// Not a decimal at all.
    Syntax(Cow<'static, str>),
    /// More digits than numeric stores (`make_result`'s overflow check).
    OutOfRange,
}

/// Integer digits numeric can store: an int16 weight of base-10000 digits.
const NUMERIC_MAX_INT_DIGITS: i64 = 4 * 32768;
/// Fraction digits numeric can store (`NUMERIC_DSCALE_MAX`).
const NUMERIC_MAX_SCALE: i64 = 0x3FFF;

/// The text `numeric_out(numeric_in(text))` prints, for a plain decimal with an optional
/// exponent. The scale is the fraction's digits minus the exponent, at least 0.
fn canonical_numeric(text: &str) -> Result<Cow<'_, str>, NumericError> {
    let syntax = |p: &'static str| NumericError::Syntax(Cow::Borrowed(p));
    let b = text.as_bytes();
    let mut i = 0;
    let negative = match b.first() {
        Some(b'-') => {
            i = 1;
            true
        }
        Some(b'+') => {
            i = 1;
            false
        }
        _ => false,
    };
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let int_digits = &text[int_start..i];
    let has_point = b.get(i) == Some(&b'.');
    let mut frac_digits = "";
    if has_point {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        frac_digits = &text[start..i];
    }
    if int_digits.is_empty() && frac_digits.is_empty() {
        return Err(syntax("expected digits"));
    }
    let mut exponent: i64 = 0;
    let has_exponent = matches!(b.get(i), Some(b'e') | Some(b'E'));
    if has_exponent {
        i += 1;
        let exp_negative = match b.get(i) {
            Some(b'-') => {
                i += 1;
                true
            }
            Some(b'+') => {
                i += 1;
                false
            }
            _ => false,
        };
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            // Saturate: far past any exponent the range checks below accept.
            exponent = (exponent * 10 + i64::from(b[i] - b'0')).min(1 << 40);
            i += 1;
        }
        if start == i {
            return Err(syntax("exponent has no digits"));
        }
        if exp_negative {
            exponent = -exponent;
        }
    }
    if i != b.len() {
        return Err(NumericError::Syntax(
            format!("unexpected character at byte {i}").into(),
        ));
    }
    let first_nonzero = int_digits
        .bytes()
        .chain(frac_digits.bytes())
        .position(|d| d != b'0');
    // Where the decimal point goes among int_digits ++ frac_digits (may be outside them).
    let point = int_digits.len() as i64 + exponent;
    let scale = (frac_digits.len() as i64 - exponent).max(0);
    let int_len = first_nonzero.map_or(0, |f| (point - f as i64).max(0));
    if int_len > NUMERIC_MAX_INT_DIGITS || scale > NUMERIC_MAX_SCALE {
        return Err(NumericError::OutOfRange);
    }
    let canonical = !has_exponent
        && b.first() != Some(&b'+')
        && !(negative && first_nonzero.is_none())
        && (int_digits == "0" || (!int_digits.is_empty() && !int_digits.starts_with('0')))
        && !(has_point && frac_digits.is_empty());
    if canonical {
        return Ok(Cow::Borrowed(text));
    }
    // The slow path: write the digits with the point moved `exponent` places right.
    let digits: Vec<u8> = int_digits.bytes().chain(frac_digits.bytes()).collect();
    let len = digits.len() as i64;
    let mut out = String::with_capacity((int_len + scale) as usize + 3);
    if negative && first_nonzero.is_some() {
        out.push('-');
    }
    if int_len == 0 {
        out.push('0');
    } else {
        for k in (point - int_len)..point {
            // k >= 0 here: int_len > 0 means the first nonzero digit is left of the point.
            out.push(if k < len {
                digits[k as usize] as char
            } else {
                '0'
            });
        }
    }
    if scale > 0 {
        out.push('.');
        for k in point..point + scale {
            out.push(if (0..len).contains(&k) {
                digits[k as usize] as char
            } else {
                '0'
            });
        }
    }
    Ok(Cow::Owned(out))
}

/// Rewrites parsed `json` the way converting it to jsonb does: numbers through
/// `numeric_in`, duplicate keys resolved (serde_json already kept the last value), keys in
/// jsonb order. A number beyond numeric's range, on which `to_jsonb` would fail, is kept
/// as written rather than failing the whole row.
fn jsonb_normalize(value: Value) -> Result<Value, Cow<'static, str>> {
    Ok(match value {
        Value::Number(n) => match canonical_numeric(n.as_str()) {
            Ok(Cow::Owned(s)) => numeric_json(&s)?,
            Ok(Cow::Borrowed(_)) | Err(NumericError::OutOfRange) => Value::Number(n),
            Err(NumericError::Syntax(problem)) => return Err(problem),
        },
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(jsonb_normalize)
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| jsonb_key_cmp(&a.0, &b.0));
            let mut out = Map::with_capacity(entries.len());
            for (k, v) in entries {
                out.insert(k, jsonb_normalize(v)?);
            }
            Value::Object(out)
        }
        other => other,
    })
}

/// ISO timestamp text → `to_jsonb`'s XSD form: `T` instead of the first space, and for
/// timestamptz an offset with minutes (`+00` → `+00:00`; `+05:30`, `+00:53:28` kept).
fn timestamp(text: &str, with_zone: bool) -> Result<Value, Cow<'static, str>> {
    if text == "infinity" || text == "-infinity" {
        return Ok(Value::String(text.to_owned()));
    }
    let (date, rest) = text
        .split_once(' ')
        .ok_or(Cow::Borrowed("expected a space between date and time"))?;
    let (time, bc) = match rest.strip_suffix(" BC") {
        Some(time) => (time, true),
        None => (rest, false),
    };
    if !time.starts_with(|c: char| c.is_ascii_digit()) {
        return Err("expected a time after the date".into());
    }
    let mut out = String::with_capacity(text.len() + 4);
    out.push_str(date);
    out.push('T');
    if with_zone {
        let sign = time
            .rfind(['+', '-'])
            .ok_or(Cow::Borrowed("expected a UTC offset"))?;
        let offset = &time[sign + 1..];
        let valid = offset
            .split(':')
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_digit()))
            && (1..=3).contains(&offset.split(':').count());
        if !valid {
            return Err("malformed UTC offset".into());
        }
        out.push_str(time);
        if offset.len() == 2 {
            out.push_str(":00");
        }
    } else {
        out.push_str(time);
    }
    if bc {
        out.push_str(" BC");
    }
    Ok(Value::String(out))
}

/// Whitespace as `array_in` sees it (`array_isspace`).
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c')
}

/// A parser over one array literal (`array_out` format; `array_in` rules for escapes).
struct ArrayParser<'a> {
    text: &'a str,
    pos: usize,
    delimiter: u8,
}

fn array(element: &PgType, delimiter: u8, text: &str) -> Result<Value, ValueError> {
    let mut p = ArrayParser {
        text,
        pos: 0,
        delimiter,
    };
    p.skip_space();
    if p.peek() == Some(b'[') {
        // Explicit bounds, e.g. `[0:1]={1,2}`: to_jsonb ignores them.
        match text[p.pos..].find('=') {
            Some(eq) => p.pos += eq + 1,
            None => return Err(p.error("bounds decoration without `=`")),
        }
        p.skip_space();
    }
    if p.peek() != Some(b'{') {
        return Err(p.error("expected `{`"));
    }
    let value = p.level(element, 1)?;
    p.skip_space();
    if p.pos != text.len() {
        return Err(p.error("unexpected text after the closing `}`"));
    }
    Ok(value)
}

impl<'a> ArrayParser<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(is_space) {
            self.pos += 1;
        }
    }

    /// Takes the backslash escape at `pos` into `owned`, after the plain text since `run`;
    /// returns where the next plain run starts.
    fn escape(&mut self, owned: &mut Option<String>, run: usize) -> Result<usize, ValueError> {
        let s = owned.get_or_insert_with(String::new);
        s.push_str(&self.text[run..self.pos]);
        self.pos += 1;
        let c = self.text[self.pos..]
            .chars()
            .next()
            .ok_or_else(|| self.error("backslash at end of input"))?;
        s.push(c);
        self.pos += c.len_utf8();
        Ok(self.pos)
    }

    fn error(&self, problem: &str) -> ValueError {
        array_err(problem, self.pos)
    }

    /// Parses `{...}` starting at the `{`.
    fn level(&mut self, element: &PgType, depth: usize) -> Result<Value, ValueError> {
        if depth > MAX_ARRAY_DIMS {
            return Err(self.error("more than 6 dimensions"));
        }
        self.pos += 1; // the `{`
        let mut items = Vec::new();
        self.skip_space();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Value::Array(items));
        }
        loop {
            self.skip_space();
            let item = match self.peek() {
                Some(b'{') => self.level(element, depth + 1)?,
                Some(_) => match self.element()? {
                    None => Value::Null,
                    Some(text) => text_to_json(element, &text)?,
                },
                None => return Err(self.error("unterminated array")),
            };
            items.push(item);
            self.skip_space();
            match self.peek() {
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                Some(d) if d == self.delimiter => self.pos += 1,
                Some(_) => return Err(self.error("expected a delimiter or `}`")),
                None => return Err(self.error("unterminated array")),
            }
        }
    }

    /// One element, unescaped; `None` for an unquoted `NULL`.
    fn element(&mut self) -> Result<Option<Cow<'a, str>>, ValueError> {
        let bytes = self.text.as_bytes();
        if self.peek() == Some(b'"') {
            self.pos += 1;
            let start = self.pos;
            let mut owned: Option<String> = None;
            let mut run = start;
            loop {
                match bytes.get(self.pos) {
                    None => return Err(self.error("unterminated quoted element")),
                    Some(b'"') => {
                        let tail = &self.text[run..self.pos];
                        self.pos += 1;
                        return Ok(Some(match owned {
                            None => Cow::Borrowed(tail),
                            Some(mut s) => {
                                s.push_str(tail);
                                Cow::Owned(s)
                            }
                        }));
                    }
                    Some(b'\\') => run = self.escape(&mut owned, run)?,
                    Some(_) => self.pos += 1,
                }
            }
        }
        // Unquoted: up to the delimiter or `}`, backslash escapes allowed, trailing
        // unescaped whitespace dropped.
        let start = self.pos;
        let mut owned: Option<String> = None;
        let mut run = start;
        let mut end_of_content = start; // after the last non-space or escaped char
        let mut owned_len = 0; // owned.len() at end_of_content
        loop {
            match bytes.get(self.pos) {
                None => return Err(self.error("unterminated array")),
                Some(&b) if b == self.delimiter || b == b'}' => break,
                Some(b'{') | Some(b'"') => {
                    return Err(self.error("unexpected `{` or `\"` in an unquoted element"));
                }
                Some(b'\\') => {
                    run = self.escape(&mut owned, run)?;
                    end_of_content = self.pos;
                    owned_len = owned.as_ref().map_or(0, String::len);
                }
                Some(&b) => {
                    self.pos += 1;
                    if !is_space(b) {
                        end_of_content = self.pos;
                        owned_len = owned.as_ref().map_or(0, String::len) + (self.pos - run);
                    }
                }
            }
        }
        match owned {
            None => {
                let item = &self.text[start..end_of_content];
                if item.eq_ignore_ascii_case("NULL") {
                    Ok(None)
                } else {
                    Ok(Some(Cow::Borrowed(item)))
                }
            }
            Some(mut s) => {
                s.push_str(&self.text[run..self.pos]);
                s.truncate(owned_len);
                Ok(Some(Cow::Owned(s)))
            }
        }
    }
}

/// Parses `record_out` text: `(f1,"f 2",)`; an empty field is NULL, `""` is the empty
/// string, and inside quotes `""` and `\x` stand for `"` and `x` (as `record_in` reads).
fn record(ty: &PgType, composite: &Composite, text: &str) -> Result<Value, ValueError> {
    let bytes = text.as_bytes();
    let at = |problem: &str, pos: usize| err(ty, format!("{problem} at byte {pos}"));
    let mut pos = 0;
    while bytes.get(pos).copied().is_some_and(is_space) {
        pos += 1;
    }
    if bytes.get(pos) != Some(&b'(') {
        return Err(at("expected `(`", pos));
    }
    pos += 1;
    let n = composite.fields.len();
    let mut values: Vec<Value> = Vec::with_capacity(n);
    let mut field = String::new();
    for (i, (_, field_ty)) in composite.fields.iter().enumerate() {
        if matches!(bytes.get(pos), Some(b',') | Some(b')')) {
            values.push(Value::Null);
        } else {
            field.clear();
            let mut in_quotes = false;
            loop {
                let rest = &text[pos..];
                let Some(c) = rest.chars().next() else {
                    return Err(at("unterminated record", pos));
                };
                match c {
                    '"' if in_quotes && rest.as_bytes().get(1) == Some(&b'"') => {
                        field.push('"');
                        pos += 2;
                    }
                    '"' => {
                        in_quotes = !in_quotes;
                        pos += 1;
                    }
                    '\\' => {
                        let escaped = rest[1..]
                            .chars()
                            .next()
                            .ok_or_else(|| at("backslash at end of input", pos))?;
                        field.push(escaped);
                        pos += 1 + escaped.len_utf8();
                    }
                    ',' | ')' if !in_quotes => break,
                    c => {
                        field.push(c);
                        pos += c.len_utf8();
                    }
                }
            }
            values.push(text_to_json(field_ty, &field)?);
        }
        let expected = if i + 1 == n { b')' } else { b',' };
        match bytes.get(pos) {
            Some(&b) if b == expected => pos += 1,
            Some(b',') => {
                return Err(err(
                    ty,
                    format!("more attributes than the {n} the catalog lists (type changed?)"),
                ));
            }
            Some(_) | None => {
                return Err(err(
                    ty,
                    format!("fewer attributes than the {n} the catalog lists (type changed?)"),
                ));
            }
        }
    }
    if n == 0 {
        if bytes.get(pos) != Some(&b')') {
            return Err(at("expected `)`", pos));
        }
        pos += 1;
    }
    while bytes.get(pos).copied().is_some_and(is_space) {
        pos += 1;
    }
    if pos != bytes.len() {
        return Err(at("unexpected text after the closing `)`", pos));
    }
    let mut map = Map::with_capacity(n);
    let mut values: Vec<Option<Value>> = values.into_iter().map(Some).collect();
    for &i in &composite.key_order {
        if let Some(v) = values[i].take() {
            map.insert(composite.fields[i].0.clone(), v);
        }
    }
    Ok(Value::Object(map))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use proptest::prelude::*;

    fn conv(ty: &PgType, text: &str) -> String {
        serde_json::to_string(&text_to_json(ty, text).expect("converts")).expect("serializes")
    }

    fn arr(element: PgType) -> PgType {
        PgType::Array {
            element: Arc::new(element),
            delimiter: b',',
        }
    }

    #[test]
    fn numbers_are_exact_and_specials_are_strings() {
        let n = PgType::Number;
        assert_eq!(conv(&n, "42"), "42");
        assert_eq!(conv(&n, "-7"), "-7");
        assert_eq!(conv(&n, "1.50"), "1.50");
        assert_eq!(
            conv(&n, "123456789012345678901234567890.000000000001"),
            "123456789012345678901234567890.000000000001"
        );
        assert_eq!(conv(&n, "NaN"), "\"NaN\"");
        assert_eq!(conv(&n, "Infinity"), "\"Infinity\"");
        assert_eq!(conv(&n, "-Infinity"), "\"-Infinity\"");
        assert_eq!(conv(&n, "-0"), "0");
        assert_eq!(conv(&n, "0"), "0");
        assert_eq!(conv(&n, "1e-05"), "0.00001");
        assert_eq!(conv(&n, "1.23e-05"), "0.0000123");
        assert_eq!(conv(&n, "1.5e+10"), "15000000000");
        assert_eq!(conv(&n, "1.234e+2"), "123.4");
        assert_eq!(conv(&n, "-1e+15"), "-1000000000000000");
        let tiny = conv(&n, "1e-300");
        assert_eq!(tiny.len(), 302);
        assert!(tiny.starts_with("0.000") && tiny.ends_with("01"));
        assert_eq!(conv(&n, "0.001e5"), "100");
        assert_eq!(conv(&n, "0e99999"), "0");
        assert_eq!(conv(&n, "-0.0e-2"), "0.000");
        assert_eq!(conv(&n, "00012.50"), "12.50");
        assert_eq!(conv(&n, ".5"), "0.5");
        assert_eq!(conv(&n, "5."), "5");
        assert_eq!(conv(&n, "+5"), "5");
        assert_eq!(conv(&n, "12345e-2"), "123.45");
        for bad in [
            "", "-", "1e", "1x", "--1", "1e999999", "1e-99999", "0e-99999", ".",
        ] {
            assert!(text_to_json(&n, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bool_and_text() {
        assert_eq!(conv(&PgType::Bool, "t"), "true");
        assert_eq!(conv(&PgType::Bool, "f"), "false");
        assert!(text_to_json(&PgType::Bool, "true").is_err());
        assert_eq!(conv(&PgType::Text, "\\x0102"), r#""\\x0102""#);
    }

    #[test]
    fn json_gets_jsonb_semantics() {
        assert_eq!(
            conv(
                &PgType::Json,
                r#"{"b": 1, "aa": [1E2, -0, 1.0e0], "b": {"z": 1, "y": 2}}"#
            ),
            r#"{"b":{"y":2,"z":1},"aa":[100,0,1.0]}"#
        );
        assert_eq!(conv(&PgType::Jsonb, r#"{"a": 1.50}"#), r#"{"a":1.50}"#);
        assert!(text_to_json(&PgType::Json, "{").is_err());
        // to_jsonb would fail on a number numeric cannot hold; keep it (as serde_json spells
        // it) rather than fail the row.
        assert_eq!(conv(&PgType::Json, "[1e999999]"), "[1e+999999]");
    }

    #[test]
    fn json_deeper_than_serde_json_allows_is_an_error_not_a_crash() {
        // serde_json stops at 128 levels; jsonb allows more. Known gap, see module docs.
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let e = text_to_json(&PgType::Jsonb, &deep).expect_err("too deep");
        assert!(e.problem.contains("recursion limit"), "{e}");
        let ok = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(text_to_json(&PgType::Json, &ok).is_ok());
    }

    #[test]
    fn dates_and_timestamps() {
        assert_eq!(conv(&PgType::Date, "0044-03-15 BC"), "\"0044-03-15 BC\"");
        assert_eq!(
            conv(&PgType::Timestamp, "2024-01-02 03:04:05.123456"),
            "\"2024-01-02T03:04:05.123456\""
        );
        assert_eq!(
            conv(&PgType::Timestamp, "0044-03-15 12:00:00 BC"),
            "\"0044-03-15T12:00:00 BC\""
        );
        assert_eq!(
            conv(&PgType::Timestamptz, "2024-01-02 03:04:05+00"),
            "\"2024-01-02T03:04:05+00:00\""
        );
        assert_eq!(
            conv(&PgType::Timestamptz, "2024-01-02 03:04:05.5-03:30"),
            "\"2024-01-02T03:04:05.5-03:30\""
        );
        assert_eq!(
            conv(&PgType::Timestamptz, "0044-03-15 12:00:00+00 BC"),
            "\"0044-03-15T12:00:00+00:00 BC\""
        );
        assert_eq!(conv(&PgType::Timestamptz, "-infinity"), "\"-infinity\"");
        for bad in ["", "2024-01-02", "2024-01-02 x", "2024-01-02 03:04:05+0"] {
            assert!(text_to_json(&PgType::Timestamptz, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn arrays() {
        let ints = arr(PgType::Number);
        assert_eq!(conv(&ints, "{}"), "[]");
        assert_eq!(conv(&ints, "{1,NULL,3}"), "[1,null,3]");
        assert_eq!(conv(&ints, "{{1,2},{3,4}}"), "[[1,2],[3,4]]");
        assert_eq!(conv(&ints, "[0:1]={1,2}"), "[1,2]");
        let texts = arr(PgType::Text);
        assert_eq!(
            conv(
                &texts,
                r#"{"a,b","say \"hi\"","back\\slash","NULL",NULL,"",  x y  }"#
            ),
            r#"["a,b","say \"hi\"","back\\slash","NULL",null,"","x y"]"#
        );
        assert_eq!(conv(&texts, r"{a\,b\ ,c}"), r#"["a,b ","c"]"#);
        let boxes = PgType::Array {
            element: Arc::new(PgType::Text),
            delimiter: b';',
        };
        assert_eq!(
            conv(&boxes, "{(1,1),(0,0);(2,2),(1,1)}"),
            r#"["(1,1),(0,0)","(2,2),(1,1)"]"#
        );
        for bad in [
            "",
            "{",
            "{1,",
            "{1 2}x",
            "[1:2]{1}",
            "{{{{{{{1}}}}}}}",
            r#"{"a}"#,
            "{a{b}",
            r"{a\",
        ] {
            assert!(text_to_json(&texts, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn vectors() {
        let v = PgType::Vector {
            element: Arc::new(PgType::Number),
        };
        assert_eq!(conv(&v, "1 2 3"), "[1,2,3]");
        assert_eq!(conv(&v, ""), "[]");
    }

    fn composite(fields: Vec<(&str, PgType)>) -> PgType {
        PgType::Composite(Composite::new(
            fields
                .into_iter()
                .map(|(n, t)| (n.to_string(), Arc::new(t)))
                .collect(),
        ))
    }

    #[test]
    fn composites() {
        let inner = composite(vec![("x", PgType::Number), ("label", PgType::Text)]);
        let outer = composite(vec![
            ("id", PgType::Number),
            ("inner", inner),
            ("tags", arr(PgType::Text)),
            ("n", PgType::Text),
        ]);
        assert_eq!(
            conv(&outer, r#"(1,"(2,""a """"b"""""")","{x,""y z""}",)"#),
            r#"{"n":null,"id":1,"tags":["x","y z"],"inner":{"x":2,"label":"a \"b\""}}"#
        );
        assert_eq!(
            conv(&outer, r#"(1,,"{}","")"#),
            r#"{"n":"","id":1,"tags":[],"inner":null}"#
        );
        for bad in [
            "",
            "(",
            "(1,,)",
            "(1,,,,)",
            "(1,,{},x)y",
            r#"(1,"(2,x",{},)"#,
        ] {
            assert!(text_to_json(&outer, bad).is_err(), "{bad:?}");
        }
        let array_of = arr(composite(vec![("a", PgType::Number), ("b", PgType::Text)]));
        assert_eq!(
            conv(&array_of, r#"{"(1,x)","(2,\"y,z\")",NULL}"#),
            r#"[{"a":1,"b":"x"},{"a":2,"b":"y,z"},null]"#
        );
    }

    /// Quotes an element the way `array_out` does.
    fn array_quote(s: &str) -> String {
        let needs = s.is_empty()
            || s.eq_ignore_ascii_case("NULL")
            || s.bytes()
                .any(|b| matches!(b, b'{' | b'}' | b',' | b'"' | b'\\') || is_space(b));
        if !needs {
            return s.to_string();
        }
        let mut out = String::from("\"");
        for c in s.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
        out
    }

    proptest! {
        #[test]
        fn never_panics(text in ".{0,40}") {
            let nested = composite(vec![("a", arr(PgType::Json)), ("b", PgType::Timestamptz)]);
            for ty in [PgType::Bool, PgType::Number, PgType::Json, PgType::Timestamp,
                       PgType::Timestamptz, arr(PgType::Number), arr(PgType::Text), nested] {
                let _ = text_to_json(&ty, &text);
            }
        }

        #[test]
        fn never_panics_on_structured_noise(text in r#"[{}()\[\]:=,;" \\a0-9eE.+\-NULTBCé]{0,48}"#) {
            let inner = composite(vec![("a", arr(PgType::Number)), ("b", PgType::Text)]);
            let deep = arr(composite(vec![("c", inner), ("d", arr(PgType::Timestamptz))]));
            let boxes = PgType::Array { element: Arc::new(PgType::Text), delimiter: b';' };
            for ty in [PgType::Number, PgType::Json, PgType::Timestamptz, arr(PgType::Text), boxes, deep] {
                let _ = text_to_json(&ty, &text);
            }
        }

        #[test]
        fn records_round_trip(a in proptest::option::of(".{0,8}"), b in proptest::option::of(".{0,8}")) {
            // record_out: NULL is empty; quote when empty or special; double `"` and `\`.
            let quote = |v: &Option<String>| match v {
                None => String::new(),
                Some(s) if !s.is_empty() && !s.chars().any(|c| "\",()\\".contains(c) || c.is_ascii_whitespace()) => s.clone(),
                Some(s) => format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\"\"")),
            };
            let literal = format!("({},{})", quote(&a), quote(&b));
            let ty = composite(vec![("a", PgType::Text), ("b", PgType::Text)]);
            let got = text_to_json(&ty, &literal).unwrap();
            let as_json = |v: &Option<String>| v.clone().map_or(Value::Null, Value::String);
            prop_assert_eq!(&got["a"], &as_json(&a));
            prop_assert_eq!(&got["b"], &as_json(&b));
        }

        #[test]
        fn text_arrays_round_trip(items in proptest::collection::vec(proptest::option::of(".{0,8}"), 0..6)) {
            let literal = format!("{{{}}}", items.iter().map(|i| match i {
                None => "NULL".to_string(),
                Some(s) => array_quote(s),
            }).collect::<Vec<_>>().join(","));
            let expected = Value::Array(items.iter().map(|i| match i {
                None => Value::Null,
                Some(s) => Value::String(s.clone()),
            }).collect());
            prop_assert_eq!(text_to_json(&arr(PgType::Text), &literal).unwrap(), expected);
        }

        #[test]
        fn floats_match_decimal_value(f in proptest::num::f64::NORMAL | proptest::num::f64::SUBNORMAL | proptest::num::f64::ZERO) {
            // Rust's `{:e}` is also a shortest round-trip form; the converted text must
            // denote the same value and have no exponent.
            let text = format!("{f:e}");
            let out = text_to_json(&PgType::Number, &text).unwrap();
            let s = out.as_number().unwrap().as_str().to_string();
            prop_assert!(!s.contains(['e', 'E']));
            prop_assert_eq!(s.parse::<f64>().unwrap(), if f == 0.0 { 0.0 } else { f });
        }
    }
}
