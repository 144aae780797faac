//! walhook.toml: schema, `${VAR}` interpolation, validation with precise messages.
//!
//! The file is parsed with `toml_edit` so that every key and value keeps its byte span; the
//! schema is then walked by hand rather than through serde, because serde stops at the first
//! error and `walhook check` must report every problem at once, each with its line.
//!
//! Rules worth knowing (they are the user-facing contract, see DESIGN.md "Config"):
//!
//! - `${VAR}` and `${VAR:-default}` are replaced inside string values after TOML parsing, so
//!   line numbers stay right and a `$` anywhere else is literal. `:-` uses the default when the
//!   variable is unset *or empty*, as in the shell. `$${` writes a literal `${`. An unset
//!   variable without a default is an error naming the variable and the key.
//! - `table = "orders"` means `public.orders`. Identifiers follow SQL: `"My Schema"."Orders"`
//!   is taken exactly (`""` is a quote). An unquoted name with upper-case letters is rejected
//!   rather than silently folded, since either reading would surprise someone.
//! - Trigger keys in messages are `trigger "name".key`, or `trigger[n].key` (n from 1, in file
//!   order) when the trigger has no usable name.
//! - `[server] listen` defaults to `0.0.0.0:9187`: health probes and Prometheus scrapes come
//!   from outside the process's network namespace (kubelet, sidecar scrapers), and the
//!   endpoints expose no row data. `listen = ""` disables the server.
//! - Messages never contain the value of `source.url`, `secret`, a header value or a trigger
//!   URL (webhook URLs often carry tokens in their path).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use toml_edit::{Item, TableLike, Value};

use crate::event::ChangeKind;

/// Which events of a target must keep commit order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    /// Events of the same row (same replica identity key) arrive in commit order.
    #[default]
    Row,
    /// Events of the same table arrive in commit order.
    Table,
    /// No ordering: every event may go in parallel.
    None,
}

/// What a 4xx answer other than 408/410/429 does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum On4xx {
    /// Retried by the same schedule as 5xx.
    #[default]
    Retry,
    /// Marked dead at once (kept for `walhook replay`).
    Dead,
}

/// HTTP method of a trigger's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    /// POST (the default).
    #[default]
    Post,
    /// PUT.
    Put,
    /// PATCH.
    Patch,
}

/// The retry schedule of a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetrySettings {
    /// First backoff interval.
    pub initial: Duration,
    /// Longest backoff interval.
    pub max: Duration,
    /// How long a target may keep failing before its events are parked.
    pub park_after: Duration,
    /// How long a parked event is retried before it is marked dead.
    pub give_up_after: Duration,
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(600),
            park_after: Duration::from_secs(120),
            give_up_after: Duration::from_secs(3 * 86_400),
        }
    }
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from (for messages).
    pub path: PathBuf,
    /// Where the changes come from.
    pub source: SourceConfig,
    /// The health and metrics endpoint.
    pub server: ServerConfig,
    /// The triggers, in file order.
    pub triggers: Vec<Trigger>,
}

/// `[source]`: the database, slot and publication.
#[derive(Clone, PartialEq, Eq)]
pub struct SourceConfig {
    /// libpq-style URL (`postgres://…`); contains the password, never log it.
    pub url: String,
    /// Replication slot name.
    pub slot: String,
    /// Publication name.
    pub publication: String,
}

impl fmt::Debug for SourceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceConfig")
            .field("url", &"<redacted>")
            .field("slot", &self.slot)
            .field("publication", &self.publication)
            .finish()
    }
}

/// `[server]`: where /healthz, /readyz and /metrics listen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerConfig {
    /// The listen address; `None` when disabled with `listen = ""`.
    pub listen: Option<SocketAddr>,
}

/// The listen address used when `[server] listen` is not given.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:9187";

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: DEFAULT_LISTEN.parse().ok(),
        }
    }
}

/// One `[[trigger]]`, with every `[defaults]` value resolved.
#[derive(Clone, PartialEq)]
pub struct Trigger {
    /// Unique name, `[A-Za-z0-9_-]+` (it is part of event ids).
    pub name: String,
    /// Schema of the table, exact (already unquoted).
    pub schema: String,
    /// Table name, exact (already unquoted).
    pub table: String,
    /// The change kinds that fire, without duplicates.
    pub events: Vec<ChangeKind>,
    /// Target URL (http or https).
    pub url: reqwest::Url,
    /// HTTP method.
    pub method: HttpMethod,
    /// Extra request headers, valid HTTP names and values, in file order.
    pub headers: Vec<(String, String)>,
    /// Standard Webhooks secret, `whsec_<base64>`.
    pub secret: Option<String>,
    /// CEL filter source (compiled by [`crate::triggers::Router`]).
    pub when: Option<String>,
    /// Updates fire only if one of these columns changed; empty means no such filter.
    pub changed: Vec<String>,
    /// Payload projection: only these columns, in this order.
    pub columns: Option<Vec<String>>,
    /// Request timeout.
    pub timeout: Duration,
    /// Retry schedule.
    pub retry: RetrySettings,
    /// In-flight requests to this target.
    pub concurrency: usize,
    /// Which events keep commit order.
    pub ordering: Ordering,
    /// Events per request (1: one event per body).
    pub batch: usize,
    /// What a plain 4xx does.
    pub on_4xx: On4xx,
}

impl Trigger {
    /// The decoded HMAC key of `secret` (the bytes after `whsec_`).
    pub fn secret_key(&self) -> Option<Vec<u8>> {
        self.secret
            .as_deref()
            .and_then(|s| s.strip_prefix(SECRET_PREFIX))
            .and_then(|b64| BASE64.decode(b64).ok())
    }
}

impl fmt::Debug for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Trigger")
            .field("name", &self.name)
            .field("schema", &self.schema)
            .field("table", &self.table)
            .field("events", &self.events)
            .field("url", &"<redacted>")
            .field("method", &self.method)
            .field("headers", &headers)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("when", &self.when)
            .field("changed", &self.changed)
            .field("columns", &self.columns)
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .field("concurrency", &self.concurrency)
            .field("ordering", &self.ordering)
            .field("batch", &self.batch)
            .field("on_4xx", &self.on_4xx)
            .finish()
    }
}

/// One thing wrong with the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line, when the problem has a place in the file.
    pub line: Option<usize>,
    /// The key, e.g. `trigger "order-paid".url`; empty for file-level problems.
    pub key: String,
    /// What is wrong, as a sentence fragment.
    pub message: String,
}

/// Every problem found in a config file; displays one per line as `file:line: key: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// The problems, in file order (problems without a line last).
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.path.display())?;
            if let Some(line) = p.line {
                write!(f, ":{line}")?;
            }
            if !p.key.is_empty() {
                write!(f, ": {}", p.key)?;
            }
            write!(f, ": {}", p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Reads, interpolates (from the process environment) and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.to_owned(),
        problems: vec![Problem {
            line: None,
            key: String::new(),
            message: format!("cannot read the config file: {e}"),
        }],
    })?;
    parse(&text, path, &|name| std::env::var(name).ok())
}

/// The config file to use: `$WALHOOK_CONFIG`, else `./walhook.toml`.
pub fn default_path() -> PathBuf {
    match std::env::var_os("WALHOOK_CONFIG") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from("walhook.toml"),
    }
}

/// Parses and validates config `text` (read from `path`), looking `${VAR}`s up with `env`.
pub fn parse(
    text: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let mut r = Reader::new(text, env);
    let config = match toml_edit::ImDocument::parse(text) {
        Ok(doc) => r.config(doc.as_table(), path),
        Err(e) => {
            let message = e.message().trim().replace('\n', "; ");
            r.problem(e.span(), "", format!("TOML syntax error: {message}"));
            None
        }
    };
    match config {
        Some(c) if r.problems.is_empty() => Ok(c),
        _ => {
            let mut problems = r.problems;
            problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
            Err(ConfigError {
                path: path.to_owned(),
                problems,
            })
        }
    }
}

const SECRET_PREFIX: &str = "whsec_";
const MAX_CONCURRENCY: i64 = 10_000;
const MAX_BATCH: i64 = 10_000;
/// Postgres truncates identifiers to NAMEDATALEN - 1 bytes.
const MAX_IDENT: usize = 63;

/// Standard base64, padding optional (secrets are pasted by hand).
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// Headers walhook sets itself; a trigger may not override them.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
    "connection",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

const TOP_KEYS: &[&str] = &["source", "server", "defaults", "trigger"];
const SOURCE_KEYS: &[&str] = &["url", "slot", "publication"];
const SERVER_KEYS: &[&str] = &["listen"];
const SETTING_KEYS: &[&str] = &[
    "timeout",
    "retry",
    "concurrency",
    "ordering",
    "batch",
    "on_4xx",
];
const RETRY_KEYS: &[&str] = &["initial", "max", "park_after", "give_up_after"];
const TRIGGER_KEYS: &[&str] = &[
    "name", "table", "events", "url", "method", "headers", "secret", "when", "changed", "columns",
];

/// The settings `[defaults]` gives and each trigger may override.
#[derive(Debug, Clone, Copy)]
struct Settings {
    timeout: Duration,
    retry: RetrySettings,
    concurrency: usize,
    ordering: Ordering,
    batch: usize,
    on_4xx: On4xx,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            timeout: Duration::from_secs(10),
            retry: RetrySettings::default(),
            concurrency: 64,
            ordering: Ordering::Row,
            batch: 1,
            on_4xx: On4xx::Retry,
        }
    }
}

/// A value found in the file, with the span to point problems at.
struct Found<'t> {
    item: &'t Item,
    span: Option<Range<usize>>,
}

/// Walks the parsed document, collecting problems.
struct Reader<'e> {
    /// Byte offset of the start of every line.
    line_starts: Vec<usize>,
    env: &'e dyn Fn(&str) -> Option<String>,
    problems: Vec<Problem>,
}

impl<'e> Reader<'e> {
    fn new(text: &str, env: &'e dyn Fn(&str) -> Option<String>) -> Reader<'e> {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Reader {
            line_starts,
            env,
            problems: Vec::new(),
        }
    }

    fn line(&self, span: Option<Range<usize>>) -> Option<usize> {
        let offset = span?.start;
        Some(self.line_starts.partition_point(|&s| s <= offset))
    }

    fn problem(&mut self, span: Option<Range<usize>>, key: &str, message: impl Into<String>) {
        let line = self.line(span);
        self.problems.push(Problem {
            line,
            key: key.to_owned(),
            message: message.into(),
        });
    }

    /// The value of `key` in `table`, pointing at the value (or the key of a dotted table).
    fn get<'t>(&self, table: &'t dyn TableLike, key: &str) -> Option<Found<'t>> {
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
    fn unknown_keys(&mut self, table: &dyn TableLike, allowed: &[&str], prefix: &str) {
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
            if let Some(near) = allowed.iter().find(|a| edit_distance(a, &k) <= 2) {
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
    fn string(&mut self, found: &Found<'_>, key: &str) -> Option<String> {
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
    fn table<'t>(&mut self, found: &Found<'t>, key: &str) -> Option<&'t dyn TableLike> {
        let t = found.item.as_table_like();
        if t.is_none() {
            self.wrong_type(found, key, "a table");
        }
        t
    }

    /// A non-empty array of non-empty, distinct strings.
    fn string_list(&mut self, found: &Found<'_>, key: &str) -> Option<Vec<String>> {
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

    fn duration(&mut self, found: &Found<'_>, key: &str) -> Option<Duration> {
        let s = self.string(found, key)?;
        match humantime::parse_duration(&s) {
            Ok(d) if d.is_zero() => {
                self.problem(found.span.clone(), key, "must be longer than 0s");
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                let message =
                    format!("`{s}` is not a duration like \"10s\", \"2m\" or \"3d\" ({e})");
                self.problem(found.span.clone(), key, message);
                None
            }
        }
    }

    fn count(&mut self, found: &Found<'_>, key: &str, max: i64) -> Option<usize> {
        let Some(n) = found.item.as_integer() else {
            self.wrong_type(found, key, "an integer");
            return None;
        };
        if !(1..=max).contains(&n) {
            let message = format!("must be between 1 and {max}, not {n}");
            self.problem(found.span.clone(), key, message);
            return None;
        }
        usize::try_from(n).ok()
    }

    /// One of `choices` (matched without regard to case).
    fn choice<T: Copy>(
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

    fn config(&mut self, root: &dyn TableLike, path: &Path) -> Option<Config> {
        self.unknown_keys(root, TOP_KEYS, "");
        let source = self.source(root);
        let server = self.server(root);
        let defaults = match self.get(root, "defaults") {
            Some(found) => match self.table(&found, "defaults") {
                Some(t) => {
                    self.unknown_keys(t, SETTING_KEYS, "defaults");
                    self.settings(t, Settings::default(), "defaults")
                }
                None => Settings::default(),
            },
            None => Settings::default(),
        };
        let triggers = self.triggers(root, &defaults);
        Some(Config {
            path: path.to_owned(),
            source: source?,
            server: server?,
            triggers: triggers?,
        })
    }

    fn source(&mut self, root: &dyn TableLike) -> Option<SourceConfig> {
        let Some(found) = self.get(root, "source") else {
            self.problem(None, "source", "missing: add a [source] table with `url`");
            return None;
        };
        let table = self.table(&found, "source")?;
        self.unknown_keys(table, SOURCE_KEYS, "source");
        let url = match self.get(table, "url") {
            Some(f) => self.string(&f, "source.url").and_then(|url| {
                // Never echo the URL: it usually carries the password.
                let scheme_ok = url.starts_with("postgres://") || url.starts_with("postgresql://");
                if !scheme_ok {
                    let message =
                        "not a libpq URL (it must start with postgres:// or postgresql://)";
                    self.problem(f.span.clone(), "source.url", message);
                }
                scheme_ok.then_some(url)
            }),
            None => {
                self.problem(found.span.clone(), "source.url", "missing");
                None
            }
        };
        let slot = self.name_setting(table, "slot", "source.slot", true);
        let publication = self.name_setting(table, "publication", "source.publication", false);
        Some(SourceConfig {
            url: url?,
            slot: slot?,
            publication: publication?,
        })
    }

    /// A slot or publication name, default "walhook".
    fn name_setting(
        &mut self,
        table: &dyn TableLike,
        key: &str,
        full_key: &str,
        slot: bool,
    ) -> Option<String> {
        let Some(found) = self.get(table, key) else {
            return Some("walhook".to_owned());
        };
        let name = self.string(&found, full_key)?;
        // Postgres: slot names are lower-case letters, digits and underscores.
        let bad = if name.is_empty() || name.len() > MAX_IDENT {
            Some(format!("must be 1 to {MAX_IDENT} bytes long"))
        } else if slot
            && !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            Some(format!(
                "`{name}` is not a valid slot name (lower-case letters, digits and _ only)"
            ))
        } else {
            None
        };
        match bad {
            Some(message) => {
                self.problem(found.span, full_key, message);
                None
            }
            None => Some(name),
        }
    }

    fn server(&mut self, root: &dyn TableLike) -> Option<ServerConfig> {
        let Some(found) = self.get(root, "server") else {
            return Some(ServerConfig::default());
        };
        let table = self.table(&found, "server")?;
        self.unknown_keys(table, SERVER_KEYS, "server");
        let Some(found) = self.get(table, "listen") else {
            return Some(ServerConfig::default());
        };
        let listen = self.string(&found, "server.listen")?;
        if listen.is_empty() {
            return Some(ServerConfig { listen: None });
        }
        match listen.parse::<SocketAddr>() {
            Ok(addr) => Some(ServerConfig { listen: Some(addr) }),
            Err(_) => {
                let message = format!(
                    "`{listen}` is not an address like \"127.0.0.1:9187\" or \"[::]:9187\" (use \"\" to disable)"
                );
                self.problem(found.span, "server.listen", message);
                None
            }
        }
    }

    /// The settings keys of `table` over `base`; bad values keep the base value (and are reported).
    fn settings(&mut self, table: &dyn TableLike, base: Settings, prefix: &str) -> Settings {
        let mut s = base;
        if let Some(f) = self.get(table, "timeout") {
            s.timeout = self
                .duration(&f, &join(prefix, "timeout"))
                .unwrap_or(s.timeout);
        }
        if let Some(f) = self.get(table, "retry") {
            let key = join(prefix, "retry");
            if let Some(t) = self.table(&f, &key) {
                self.unknown_keys(t, RETRY_KEYS, &key);
                let r = &mut s.retry;
                for (name, slot) in [
                    ("initial", &mut r.initial),
                    ("max", &mut r.max),
                    ("park_after", &mut r.park_after),
                    ("give_up_after", &mut r.give_up_after),
                ] {
                    if let Some(f) = self.get(t, name) {
                        *slot = self.duration(&f, &join(&key, name)).unwrap_or(*slot);
                    }
                }
                if r.initial > r.max {
                    let message = format!(
                        "retry.initial ({}) is longer than retry.max ({})",
                        humantime::format_duration(r.initial),
                        humantime::format_duration(r.max)
                    );
                    self.problem(f.span.clone(), &key, message);
                }
            }
        }
        if let Some(f) = self.get(table, "concurrency") {
            let key = join(prefix, "concurrency");
            s.concurrency = self
                .count(&f, &key, MAX_CONCURRENCY)
                .unwrap_or(s.concurrency);
        }
        if let Some(f) = self.get(table, "batch") {
            s.batch = self
                .count(&f, &join(prefix, "batch"), MAX_BATCH)
                .unwrap_or(s.batch);
        }
        if let Some(f) = self.get(table, "ordering") {
            let choices = [
                ("row", Ordering::Row),
                ("table", Ordering::Table),
                ("none", Ordering::None),
            ];
            let key = join(prefix, "ordering");
            s.ordering = self.choice(&f, &key, &choices).unwrap_or(s.ordering);
        }
        if let Some(f) = self.get(table, "on_4xx") {
            let choices = [("retry", On4xx::Retry), ("dead", On4xx::Dead)];
            s.on_4xx = self
                .choice(&f, &join(prefix, "on_4xx"), &choices)
                .unwrap_or(s.on_4xx);
        }
        s
    }

    fn triggers(&mut self, root: &dyn TableLike, defaults: &Settings) -> Option<Vec<Trigger>> {
        let Some(found) = self.get(root, "trigger") else {
            let message = "no triggers: add at least one [[trigger]] table";
            self.problem(None, "trigger", message);
            return None;
        };
        let tables: Vec<(&dyn TableLike, Option<Range<usize>>)> = match found.item {
            Item::ArrayOfTables(a) => a.iter().map(|t| (t as &dyn TableLike, t.span())).collect(),
            Item::Value(Value::Array(a)) if a.iter().all(|v| v.as_inline_table().is_some()) => a
                .iter()
                .filter_map(|v| v.as_inline_table().map(|t| (t as &dyn TableLike, t.span())))
                .collect(),
            _ => {
                let message = format!(
                    "expected [[trigger]] tables (note the double brackets), found {}",
                    type_name(found.item)
                );
                self.problem(found.span, "trigger", message);
                return None;
            }
        };
        if tables.is_empty() {
            self.problem(
                found.span,
                "trigger",
                "no triggers: add at least one [[trigger]] table",
            );
            return None;
        }
        let mut names: HashMap<String, Option<usize>> = HashMap::new();
        let mut out = Vec::with_capacity(tables.len());
        let mut ok = true;
        for (i, (table, span)) in tables.into_iter().enumerate() {
            match self.trigger(i, table, span, defaults, &mut names) {
                Some(t) => out.push(t),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn trigger(
        &mut self,
        index: usize,
        table: &dyn TableLike,
        span: Option<Range<usize>>,
        defaults: &Settings,
        names: &mut HashMap<String, Option<usize>>,
    ) -> Option<Trigger> {
        let before = self.problems.len();
        let mut prefix = format!("trigger[{}]", index + 1);

        // The name first: it names the trigger in every other message.
        let name = match self.get(table, "name") {
            Some(f) => self.string(&f, &join(&prefix, "name")).and_then(|name| {
                if valid_trigger_name(&name) {
                    prefix = format!("trigger \"{name}\"");
                    let line = self.line(f.span.clone());
                    if let Some(first) = names.insert(name.clone(), line) {
                        let at = first.map(|l| format!(" (first at line {l})")).unwrap_or_default();
                        let message = format!("duplicate trigger name `{name}`{at}");
                        self.problem(f.span.clone(), &join(&prefix, "name"), message);
                    }
                    Some(name)
                } else {
                    let message = format!(
                        "`{name}` is not a valid trigger name (letters, digits, _ and - only; it is part of event ids)"
                    );
                    self.problem(f.span.clone(), &join(&prefix, "name"), message);
                    None
                }
            }),
            None => {
                self.problem(span.clone(), &join(&prefix, "name"), "missing");
                None
            }
        };

        let mut allowed: Vec<&str> = TRIGGER_KEYS.to_vec();
        allowed.extend_from_slice(SETTING_KEYS);
        self.unknown_keys(table, &allowed, &prefix);

        let key = |k: &str| join(&prefix, k);
        let relation = match self.get(table, "table") {
            Some(f) => self
                .string(&f, &key("table"))
                .and_then(|t| match parse_table(&t) {
                    Ok(r) => Some(r),
                    Err(message) => {
                        self.problem(f.span.clone(), &key("table"), message);
                        None
                    }
                }),
            None => {
                let message = "missing (e.g. table = \"public.orders\")";
                self.problem(span.clone(), &key("table"), message);
                None
            }
        };
        let events = match self.get(table, "events") {
            Some(f) => self.events(&f, &key("events")),
            None => Some(vec![
                ChangeKind::Create,
                ChangeKind::Update,
                ChangeKind::Delete,
            ]),
        };
        let url = match self.get(table, "url") {
            Some(f) => self.string(&f, &key("url")).and_then(|u| {
                let r = target_url(&u);
                if let Err(message) = &r {
                    self.problem(f.span.clone(), &key("url"), message.clone());
                }
                r.ok()
            }),
            None => {
                self.problem(span.clone(), &key("url"), "missing");
                None
            }
        };
        let method = match self.get(table, "method") {
            Some(f) => {
                let choices = [
                    ("POST", HttpMethod::Post),
                    ("PUT", HttpMethod::Put),
                    ("PATCH", HttpMethod::Patch),
                ];
                self.choice(&f, &key("method"), &choices)
            }
            None => Some(HttpMethod::Post),
        };
        let headers = match self.get(table, "headers") {
            Some(f) => self.headers(&f, &key("headers")),
            None => Some(Vec::new()),
        };
        let secret = self.get(table, "secret").map(|f| {
            let s = self.string(&f, &key("secret"))?;
            if let Err(message) = check_secret(&s) {
                self.problem(f.span.clone(), &key("secret"), message);
                return None;
            }
            Some(s)
        });
        let when = self.get(table, "when").map(|f| {
            let s = self.string(&f, &key("when"))?;
            if let Err(message) = check_cel(&s).map(drop) {
                self.problem(f.span.clone(), &key("when"), message);
                return None;
            }
            Some(s)
        });
        let changed = match self.get(table, "changed") {
            Some(f) => self.string_list(&f, &key("changed")),
            None => Some(Vec::new()),
        };
        let columns = self
            .get(table, "columns")
            .map(|f| self.string_list(&f, &key("columns")));
        let settings = self.settings(table, *defaults, &prefix);

        if self.problems.len() > before {
            return None;
        }
        let (schema, table) = relation?;
        Some(Trigger {
            name: name?,
            schema,
            table,
            events: events?,
            url: url?,
            method: method?,
            headers: headers?,
            secret: secret.flatten(),
            when: when.flatten(),
            changed: changed?,
            columns: columns.flatten(),
            timeout: settings.timeout,
            retry: settings.retry,
            concurrency: settings.concurrency,
            ordering: settings.ordering,
            batch: settings.batch,
            on_4xx: settings.on_4xx,
        })
    }

    fn events(&mut self, found: &Found<'_>, key: &str) -> Option<Vec<ChangeKind>> {
        let names = self.string_list(found, key)?;
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            match name.as_str() {
                "create" => out.push(ChangeKind::Create),
                "update" => out.push(ChangeKind::Update),
                "delete" => out.push(ChangeKind::Delete),
                other => {
                    let hint = match other.to_ascii_lowercase().as_str() {
                        "insert" | "inserted" | "created" => " (did you mean \"create\"?)",
                        "updated" => " (did you mean \"update\"?)",
                        "deleted" => " (did you mean \"delete\"?)",
                        _ => "",
                    };
                    let message = format!(
                        "unknown event `{other}`{hint}; events are \"create\", \"update\", \"delete\""
                    );
                    self.problem(found.span.clone(), key, message);
                    return None;
                }
            }
        }
        Some(out)
    }

    fn headers(&mut self, found: &Found<'_>, key: &str) -> Option<Vec<(String, String)>> {
        let table = self.table(found, key)?;
        let mut out: Vec<(String, String)> = Vec::new();
        let mut seen = HashSet::new();
        let mut ok = true;
        let entries: Vec<(&str, &Item)> = table.iter().collect();
        for (name, item) in entries {
            let f = Found {
                item,
                span: item.span().or_else(|| found.span.clone()),
            };
            let header_key = format!("{key}.{name}");
            let lower = name.to_ascii_lowercase();
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                self.problem(f.span.clone(), &header_key, "not a valid HTTP header name");
                ok = false;
                continue;
            }
            if RESERVED_HEADERS.contains(&lower.as_str()) {
                let message = format!("`{name}` is set by walhook and cannot be overridden");
                self.problem(f.span.clone(), &header_key, message);
                ok = false;
                continue;
            }
            if !seen.insert(lower) {
                let message = "given twice (header names are case-insensitive)";
                self.problem(f.span.clone(), &header_key, message);
                ok = false;
                continue;
            }
            let Some(value) = self.string(&f, &header_key) else {
                ok = false;
                continue;
            };
            // The value is not echoed: headers usually carry credentials.
            if reqwest::header::HeaderValue::from_str(&value).is_err() {
                let message =
                    "not a valid HTTP header value (control characters or non-ASCII text)";
                self.problem(f.span.clone(), &header_key, message);
                ok = false;
                continue;
            }
            out.push((name.to_owned(), value));
        }
        ok.then_some(out)
    }
}

/// `prefix.key`, or `key` at the top level.
fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

fn type_name(item: &Item) -> &'static str {
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

/// Replaces `${VAR}` and `${VAR:-default}`; `$${` is a literal `${`.
fn interpolate(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    if !s.contains('$') {
        return Ok(s.to_owned());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(escaped) = after.strip_prefix("${") {
            out.push_str("${");
            rest = escaped;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(end) = body.find('}') else {
                return Err("unclosed `${` (write `$${` for a literal `${`)".to_owned());
            };
            let (name, default) = match body[..end].split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (&body[..end], None),
            };
            if !valid_env_name(name) {
                return Err(format!(
                    "`${{{name}}}` is not a variable reference (names are letters, digits and _)"
                ));
            }
            match (env(name), default) {
                (Some(v), Some(d)) if v.is_empty() => out.push_str(d),
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set (write ${{{name}:-default}} for a fallback)"
                    ));
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn valid_trigger_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `schema.table`, `table` (schema public) or `"My Schema"."Orders"` → (schema, table).
fn parse_table(s: &str) -> Result<(String, String), String> {
    let mut parts = Vec::new();
    let mut rest = s.trim();
    loop {
        let (ident, after) = parse_ident(rest)?;
        parts.push(ident);
        match after.strip_prefix('.') {
            Some(next) => rest = next,
            None if after.is_empty() => break,
            None => return Err(format!("`{s}` is not a table name like \"schema.table\"")),
        }
    }
    match <[String; 2]>::try_from(parts) {
        Ok([schema, table]) => Ok((schema, table)),
        Err(parts) if parts.len() == 1 => {
            let table = parts.into_iter().next().unwrap_or_default();
            Ok(("public".to_owned(), table))
        }
        Err(_) => Err(format!(
            "`{s}` has too many parts: write \"schema.table\" (the database comes from source.url)"
        )),
    }
}

/// One SQL identifier at the start of `s`, and what follows it.
fn parse_ident(s: &str) -> Result<(String, &str), String> {
    let ident_err = |what: &str| Err(format!("{what} in table name `{s}`"));
    if let Some(quoted) = s.strip_prefix('"') {
        let mut ident = String::new();
        let mut chars = quoted.char_indices();
        while let Some((i, c)) = chars.next() {
            if c != '"' {
                ident.push(c);
                continue;
            }
            if quoted[i + 1..].starts_with('"') {
                ident.push('"');
                chars.next();
                continue;
            }
            if ident.is_empty() {
                return ident_err("empty quoted identifier");
            }
            if ident.len() > MAX_IDENT {
                return ident_err("identifier longer than 63 bytes");
            }
            return Ok((ident, &quoted[i + 1..]));
        }
        return ident_err("unclosed quote");
    }
    let end = s.find(['.', '"']).unwrap_or(s.len());
    let ident = &s[..end];
    let mut chars = ident.chars();
    let valid = matches!(chars.next(), Some(c) if c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || c == '_' || c == '$');
    if !valid {
        return Err(format!(
            "`{s}` is not a table name like \"schema.table\" (quote unusual names: \"\\\"My Schema\\\".\\\"Orders\\\"\")"
        ));
    }
    if ident.len() > MAX_IDENT {
        return ident_err("identifier longer than 63 bytes");
    }
    if ident.chars().any(char::is_uppercase) {
        let lower = ident.to_lowercase();
        return Err(format!(
            "`{ident}` has upper-case letters, which Postgres folds unless quoted: write `{lower}`, or `\"{ident}\"` for a table created with a quoted name"
        ));
    }
    Ok((ident.to_owned(), &s[end..]))
}

/// An http(s) URL with a host; the error never contains the URL.
fn target_url(s: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(s).map_err(|e| format!("not a valid URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        let scheme = url.scheme();
        return Err(format!(
            "the URL scheme must be http or https, not `{scheme}`"
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host".to_owned());
    }
    Ok(url)
}

/// `whsec_` + base64 of a non-empty key; the error never contains the secret.
fn check_secret(s: &str) -> Result<(), String> {
    let Some(b64) = s.strip_prefix(SECRET_PREFIX) else {
        return Err("must start with `whsec_` (Standard Webhooks secret format)".to_owned());
    };
    match BASE64.decode(b64) {
        Ok(key) if key.is_empty() => Err("the key after `whsec_` is empty".to_owned()),
        Ok(_) => Ok(()),
        Err(_) => Err("the part after `whsec_` is not valid base64".to_owned()),
    }
}

/// The variables a `when` expression can use (see [`crate::triggers`]).
pub const WHEN_VARIABLES: &[&str] = &["record", "old_record", "changed", "type", "schema", "table"];

/// CEL's type names, which are identifiers too (`type(x) == string`).
const CEL_TYPE_NAMES: &[&str] = &[
    "bool",
    "bytes",
    "double",
    "dyn",
    "int",
    "list",
    "map",
    "null_type",
    "string",
    "type",
    "uint",
];

/// Compiles a `when` expression, so syntax errors and misspelt variables surface now rather
/// than as a filter that is silently false for every event.
pub(crate) fn check_cel(s: &str) -> Result<cel::Program, String> {
    if s.trim().is_empty() {
        return Err("empty expression (leave `when` out instead)".to_owned());
    }
    // A panic in the CEL parser on odd input must not take down config loading.
    let program = match std::panic::catch_unwind(|| cel::Program::compile(s)) {
        Ok(Ok(p)) => p,
        Ok(Err(errors)) => {
            let detail = errors
                .errors
                .first()
                .map(|e| format!("{} at {}:{}", e.msg, e.pos.0, e.pos.1))
                .unwrap_or_else(|| errors.to_string());
            return Err(format!("not a valid CEL expression: {detail}"));
        }
        Err(_) => return Err("not a valid CEL expression".to_owned()),
    };
    let mut unknown: Vec<String> = free_variables(program.expression())
        .into_iter()
        .filter(|v| !WHEN_VARIABLES.contains(&v.as_str()) && !CEL_TYPE_NAMES.contains(&v.as_str()))
        .collect();
    unknown.sort();
    if let Some(first) = unknown.first() {
        return Err(format!(
            "unknown variable `{first}` (the variables are {})",
            WHEN_VARIABLES.join(", ")
        ));
    }
    Ok(program)
}

/// The identifiers `expr` reads that no comprehension (`exists(x, …)`, `map`, …) binds.
pub(crate) fn free_variables(expr: &cel::IdedExpr) -> HashSet<String> {
    fn walk(e: &cel::IdedExpr, bound: &mut Vec<String>, out: &mut HashSet<String>) {
        use cel::common::ast::{EntryExpr, Expr};
        match &e.expr {
            Expr::Ident(name) => {
                if !name.starts_with('@') && !bound.contains(name) {
                    out.insert(name.clone());
                }
            }
            Expr::Call(call) => {
                if let Some(target) = &call.target {
                    walk(target, bound, out);
                }
                call.args.iter().for_each(|a| walk(a, bound, out));
            }
            Expr::Select(select) => walk(&select.operand, bound, out),
            Expr::List(list) => list.elements.iter().for_each(|x| walk(x, bound, out)),
            Expr::Map(map) => {
                for entry in &map.entries {
                    match &entry.expr {
                        EntryExpr::MapEntry(m) => {
                            walk(&m.key, bound, out);
                            walk(&m.value, bound, out);
                        }
                        EntryExpr::StructField(f) => walk(&f.value, bound, out),
                    }
                }
            }
            Expr::Struct(st) => {
                for entry in &st.entries {
                    if let EntryExpr::StructField(f) = &entry.expr {
                        walk(&f.value, bound, out);
                    }
                }
            }
            Expr::Comprehension(c) => {
                walk(&c.iter_range, bound, out);
                walk(&c.accu_init, bound, out);
                let depth = bound.len();
                bound.push(c.iter_var.clone());
                bound.extend(c.iter_var2.iter().cloned());
                bound.push(c.accu_var.clone());
                walk(&c.loop_cond, bound, out);
                walk(&c.loop_step, bound, out);
                walk(&c.result, bound, out);
                bound.truncate(depth);
            }
            Expr::Literal(_) | Expr::Unspecified => {}
        }
    }
    let mut out = HashSet::new();
    walk(expr, &mut Vec::new(), &mut out);
    out
}

/// Levenshtein distance, for "did you mean" hints on short key names.
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn env(name: &str) -> Option<String> {
        match name {
            "DATABASE_URL" => Some("postgres://walhook:hunter2@db/app".into()),
            "ORDERS_TOKEN" => Some("tok-123".into()),
            "ORDERS_WEBHOOK_SECRET" => Some(SECRET.into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn ok(text: &str) -> Config {
        match parse(text, Path::new("walhook.toml"), &env) {
            Ok(c) => c,
            Err(e) => panic!("unexpected config error:\n{e}"),
        }
    }

    fn err(text: &str) -> ConfigError {
        parse(text, Path::new("walhook.toml"), &env).expect_err("config should be rejected")
    }

    /// The config with `extra` appended to a valid one-trigger file.
    fn with_trigger(extra: &str) -> String {
        format!(
            "[source]\nurl = \"${{DATABASE_URL}}\"\n\n[[trigger]]\nname = \"t\"\ntable = \"orders\"\nurl = \"https://example.com/hook\"\n{extra}"
        )
    }

    const DESIGN_EXAMPLE: &str = r#"
[source]
url = "${DATABASE_URL}"        # libpq-style URL
slot = "walhook"
publication = "walhook"

[defaults]
timeout = "10s"
retry = { initial = "1s", max = "10m", park_after = "2m", give_up_after = "3d" }
concurrency = 64
ordering = "row"
batch = 1

[[trigger]]
name = "order-paid"
table = "public.orders"
events = ["create", "update"]
url = "https://api.example.com/hooks/orders"
method = "POST"
headers = { Authorization = "Bearer ${ORDERS_TOKEN}" }
secret = "${ORDERS_WEBHOOK_SECRET}"
when = "record.status == 'paid' && old_record.status != 'paid'"
changed = ["status"]
columns = ["id", "status", "amount"]
"#;

    #[test]
    fn the_design_example_loads() {
        let c = ok(DESIGN_EXAMPLE);
        assert_eq!(c.source.url, "postgres://walhook:hunter2@db/app");
        assert_eq!(c.source.slot, "walhook");
        assert_eq!(c.server.listen, Some("0.0.0.0:9187".parse().unwrap()));
        let t = &c.triggers[0];
        assert_eq!(t.name, "order-paid");
        assert_eq!((t.schema.as_str(), t.table.as_str()), ("public", "orders"));
        assert_eq!(t.events, vec![ChangeKind::Create, ChangeKind::Update]);
        assert_eq!(t.url.as_str(), "https://api.example.com/hooks/orders");
        assert_eq!(
            t.headers,
            vec![("Authorization".into(), "Bearer tok-123".into())]
        );
        assert_eq!(t.secret.as_deref(), Some(SECRET));
        assert!(t.secret_key().is_some_and(|k| !k.is_empty()));
        assert_eq!(t.changed, vec!["status"]);
        assert_eq!(
            t.columns.as_deref(),
            Some(&["id".into(), "status".into(), "amount".into()][..])
        );
        assert_eq!(t.retry, RetrySettings::default());
        assert_eq!(t.timeout, Duration::from_secs(10));
    }

    #[test]
    fn defaults_fill_in_everything_left_out() {
        let c = ok(&with_trigger(""));
        assert_eq!(c.source.slot, "walhook");
        assert_eq!(c.source.publication, "walhook");
        let t = &c.triggers[0];
        assert_eq!(t.events.len(), 3);
        assert_eq!(t.method, HttpMethod::Post);
        assert_eq!((t.concurrency, t.batch), (64, 1));
        assert_eq!((t.ordering, t.on_4xx), (Ordering::Row, On4xx::Retry));
        assert!(t.secret.is_none() && t.when.is_none() && t.columns.is_none());
        assert!(t.changed.is_empty() && t.headers.is_empty());
    }

    #[test]
    fn triggers_override_defaults_field_by_field() {
        let text = r#"
[source]
url = "postgres://db/app"
[defaults]
retry = { initial = "2s", max = "1m" }
concurrency = 8
[[trigger]]
name = "a"
table = "orders"
url = "http://localhost:8080/a"
[[trigger]]
name = "b"
table = "orders"
url = "http://localhost:8080/b"
retry.max = "5m"
concurrency = 1
ordering = "none"
batch = 100
on_4xx = "dead"
timeout = "500ms"
method = "patch"
"#;
        let c = ok(text);
        let (a, b) = (&c.triggers[0], &c.triggers[1]);
        assert_eq!(a.retry.initial, Duration::from_secs(2));
        assert_eq!(a.retry.max, Duration::from_secs(60));
        assert_eq!(a.retry.park_after, Duration::from_secs(120));
        assert_eq!(a.concurrency, 8);
        assert_eq!(b.retry.initial, Duration::from_secs(2));
        assert_eq!(b.retry.max, Duration::from_secs(300));
        assert_eq!((b.concurrency, b.batch), (1, 100));
        assert_eq!((b.ordering, b.on_4xx), (Ordering::None, On4xx::Dead));
        assert_eq!(b.timeout, Duration::from_millis(500));
        assert_eq!(b.method, HttpMethod::Patch);
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_line() {
        let text = r#"[source]
url = "${DATABASE_URL}"

[[trigger]]
name = "order-paid"
table = "orders"
url = "/hooks/orders"
concurrency = 0
colums = ["id"]

[[trigger]]
name = "order-paid"
table = "orders"
url = "https://example.com"
events = ["insert"]
timeout = "soon"
"#;
        let e = err(text);
        let shown = e.to_string();
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(
            lines,
            vec![
                "walhook.toml:7: trigger \"order-paid\".url: not a valid URL (relative URL without a base)",
                "walhook.toml:8: trigger \"order-paid\".concurrency: must be between 1 and 10000, not 0",
                "walhook.toml:9: trigger \"order-paid\".colums: unknown key `colums` (did you mean `columns`?)",
                "walhook.toml:12: trigger \"order-paid\".name: duplicate trigger name `order-paid` (first at line 5)",
                "walhook.toml:15: trigger \"order-paid\".events: unknown event `insert` (did you mean \"create\"?); events are \"create\", \"update\", \"delete\"",
                "walhook.toml:16: trigger \"order-paid\".timeout: `soon` is not a duration like \"10s\", \"2m\" or \"3d\" (expected number at 0)",
            ],
            "{shown}"
        );
    }

    #[test]
    fn toml_syntax_errors_have_a_line() {
        let e = err("[source]\nurl = \"postgres://db\"\nslot = \n");
        assert_eq!(e.problems.len(), 1);
        assert_eq!(e.problems[0].line, Some(3));
        assert!(
            e.to_string()
                .starts_with("walhook.toml:3: TOML syntax error: "),
            "{e}"
        );
    }

    #[test]
    fn wrong_types_say_what_was_expected() {
        let e = err(&with_trigger(
            "batch = \"10\"\nevents = \"create\"\nheaders = 3\n",
        ));
        let shown = e.to_string();
        assert!(
            shown.contains(
                "walhook.toml:8: trigger \"t\".batch: expected an integer, found a string"
            ),
            "{shown}"
        );
        assert!(
            shown.contains(
                "walhook.toml:9: trigger \"t\".events: expected an array of strings, found a string"
            ),
            "{shown}"
        );
        assert!(
            shown.contains(
                "walhook.toml:10: trigger \"t\".headers: expected a table, found an integer"
            ),
            "{shown}"
        );
    }

    #[test]
    fn trigger_without_a_valid_name_is_named_by_position() {
        let e = err(&with_trigger("").replace("name = \"t\"", "name = \"order paid\""));
        let shown = e.to_string();
        assert!(
            shown.contains("trigger[1].name: `order paid` is not a valid trigger name"),
            "{shown}"
        );
        let e = err(&with_trigger("").replace("name = \"t\"\n", ""));
        assert!(
            e.to_string()
                .contains("walhook.toml:4: trigger[1].name: missing"),
            "{e}"
        );
    }

    #[test]
    fn urls_must_be_http_or_https_and_are_never_echoed() {
        let e = err(&with_trigger("").replace(
            "https://example.com/hook",
            "ftp://secret-token@example.com/",
        ));
        let shown = e.to_string();
        assert!(
            shown.contains("the URL scheme must be http or https, not `ftp`"),
            "{shown}"
        );
        assert!(!shown.contains("secret-token"), "{shown}");
    }

    #[test]
    fn source_url_and_secrets_never_appear_in_errors() {
        let text = with_trigger(
            "secret = \"whsec_not base64!!\"\nheaders = { X-Token = \"abc\\u0001def\" }\n",
        )
        .replace("${DATABASE_URL}", "mysql://root:hunter2@db");
        let shown = err(&text).to_string();
        assert!(shown.contains("source.url: not a libpq URL"), "{shown}");
        assert!(
            shown.contains("trigger \"t\".secret: the part after `whsec_` is not valid base64"),
            "{shown}"
        );
        assert!(
            shown.contains("trigger \"t\".headers.X-Token: not a valid HTTP header value"),
            "{shown}"
        );
        for leaked in ["hunter2", "not base64", "abc"] {
            assert!(!shown.contains(leaked), "{leaked} leaked in:\n{shown}");
        }
        let shown = err(&with_trigger("secret = \"sk_live_123\"\n")).to_string();
        assert!(
            shown.contains("must start with `whsec_`") && !shown.contains("sk_live"),
            "{shown}"
        );
    }

    #[test]
    fn debug_output_redacts_credentials() {
        let c = ok(DESIGN_EXAMPLE);
        let shown = format!("{c:?}");
        for leaked in ["hunter2", "tok-123", SECRET] {
            assert!(!shown.contains(leaked), "{leaked} leaked in {shown}");
        }
    }

    #[test]
    fn interpolation() {
        let subst = |s: &str| interpolate(s, &env);
        assert_eq!(subst("Bearer ${ORDERS_TOKEN}").unwrap(), "Bearer tok-123");
        assert_eq!(subst("${NOPE:-fallback}").unwrap(), "fallback");
        assert_eq!(subst("${EMPTY:-fallback}").unwrap(), "fallback");
        assert_eq!(subst("${ORDERS_TOKEN:-x}").unwrap(), "tok-123");
        assert_eq!(subst("${NOPE:-}").unwrap(), "");
        assert_eq!(subst("cost: $5, $HOME, $").unwrap(), "cost: $5, $HOME, $");
        assert_eq!(subst("$${ORDERS_TOKEN}").unwrap(), "${ORDERS_TOKEN}");
        assert!(subst("${ORDERS_TOKEN").unwrap_err().contains("unclosed"));
        assert!(subst("${}").is_err());
        assert!(subst("${A B}").is_err());
        let e = err(&with_trigger("secret = \"${ORDERS_SECRET}\"\n"));
        assert_eq!(
            e.to_string(),
            "walhook.toml:8: trigger \"t\".secret: environment variable ORDERS_SECRET is not set (write ${ORDERS_SECRET:-default} for a fallback)"
        );
    }

    #[test]
    fn table_names() {
        let p = |s: &str| parse_table(s);
        assert_eq!(p("orders").unwrap(), ("public".into(), "orders".into()));
        assert_eq!(
            p("sales.orders").unwrap(),
            ("sales".into(), "orders".into())
        );
        assert_eq!(
            p("\"My Schema\".\"Orders\"").unwrap(),
            ("My Schema".into(), "Orders".into())
        );
        assert_eq!(p("\"a.b\"").unwrap(), ("public".into(), "a.b".into()));
        assert_eq!(
            p("\"say \"\"hi\"\"\".t").unwrap(),
            ("say \"hi\"".into(), "t".into())
        );
        assert_eq!(
            p("app.\"Orders\"").unwrap(),
            ("app".into(), "Orders".into())
        );
        assert!(
            p("Orders")
                .unwrap_err()
                .contains("write `orders`, or `\"Orders\"`")
        );
        assert!(p("db.sales.orders").unwrap_err().contains("too many parts"));
        assert!(p("").is_err());
        assert!(p("sales.").is_err());
        assert!(p("\"unclosed").is_err());
        assert!(p("\"\".t").is_err());
        assert!(p("my table").is_err());
        assert!(p("\"a\"x").is_err());
    }

    #[test]
    fn no_triggers_is_an_error() {
        let e = err("[source]\nurl = \"postgres://db/app\"\n");
        assert_eq!(
            e.to_string(),
            "walhook.toml: trigger: no triggers: add at least one [[trigger]] table"
        );
        let e = err("[trigger]\nname = \"x\"\n");
        let shown = e.to_string();
        assert!(shown.contains("note the double brackets"), "{shown}");
        assert!(shown.contains("walhook.toml: source: missing"), "{shown}");
    }

    #[test]
    fn server_listen() {
        let c = ok(&format!(
            "[server]\nlisten = \"127.0.0.1:9000\"\n{}",
            with_trigger("")
        ));
        assert_eq!(c.server.listen, Some("127.0.0.1:9000".parse().unwrap()));
        let c = ok(&format!("[server]\nlisten = \"\"\n{}", with_trigger("")));
        assert_eq!(c.server.listen, None);
        let e = err(&format!(
            "[server]\nlisten = \"localhost\"\n{}",
            with_trigger("")
        ));
        assert!(
            e.to_string()
                .starts_with("walhook.toml:2: server.listen: `localhost` is not an address"),
            "{e}"
        );
    }

    #[test]
    fn numeric_and_duration_limits() {
        let shown = err(&with_trigger(
            "batch = 10001\nconcurrency = -1\nretry = { initial = \"5m\", max = \"1m\" }\ntimeout = \"0s\"\n",
        ))
        .to_string();
        assert!(
            shown.contains(":8: trigger \"t\".batch: must be between 1 and 10000, not 10001"),
            "{shown}"
        );
        assert!(
            shown.contains(":9: trigger \"t\".concurrency: must be between 1 and 10000, not -1"),
            "{shown}"
        );
        assert!(
            shown.contains(
                ":10: trigger \"t\".retry: retry.initial (5m) is longer than retry.max (1m)"
            ),
            "{shown}"
        );
        assert!(
            shown.contains(":11: trigger \"t\".timeout: must be longer than 0s"),
            "{shown}"
        );
        let shown = err(&format!(
            "[defaults]\nretry = {{ max = \"1s\", initial = \"2s\" }}\n{}",
            with_trigger("")
        ))
        .to_string();
        assert!(
            shown.contains(
                "walhook.toml:2: defaults.retry: retry.initial (2s) is longer than retry.max (1s)"
            ),
            "{shown}"
        );
    }

    #[test]
    fn lists_must_not_be_empty() {
        let shown = err(&with_trigger(
            "changed = []\ncolumns = [\"id\", \"id\"]\nevents = []\n",
        ))
        .to_string();
        assert!(
            shown.contains(":8: trigger \"t\".changed: must not be empty"),
            "{shown}"
        );
        assert!(
            shown.contains(":9: trigger \"t\".columns[2]: `id` is listed twice"),
            "{shown}"
        );
        assert!(
            shown.contains(":10: trigger \"t\".events: must not be empty"),
            "{shown}"
        );
    }

    #[test]
    fn bad_cel_is_reported() {
        let shown = err(&with_trigger("when = \"record.status == \"\n")).to_string();
        assert!(
            shown.starts_with("walhook.toml:8: trigger \"t\".when: not a valid CEL expression: "),
            "{shown}"
        );
        assert!(
            err(&with_trigger("when = \"  \"\n"))
                .to_string()
                .contains("empty expression")
        );
        let shown = err(&with_trigger("when = \"recrod.status == 'paid'\"\n")).to_string();
        assert!(shown.ends_with("when: unknown variable `recrod` (the variables are record, old_record, changed, type, schema, table)"), "{shown}");
        let text = with_trigger(
            "when = \"record.tags.exists(t, t == 'vip') && type(record.id) == int && [1].map(x, x) == [1]\"\n",
        );
        assert!(ok(&text).triggers[0].when.is_some());
        let shown = err(&with_trigger("when = \"record.status == \"\n")).to_string();
        assert!(shown.contains(" at 1:"), "{shown}");
    }

    #[test]
    fn header_names_are_checked() {
        let shown = err(&with_trigger(
            "headers = { \"Bad Name\" = \"x\", Webhook-Signature = \"y\", X-A = \"1\", x-a = \"2\" }\n",
        ))
        .to_string();
        assert!(
            shown.contains("headers.Bad Name: not a valid HTTP header name"),
            "{shown}"
        );
        assert!(
            shown.contains("headers.Webhook-Signature: `Webhook-Signature` is set by walhook"),
            "{shown}"
        );
        assert!(shown.contains("headers.x-a: given twice"), "{shown}");
    }

    #[test]
    fn unknown_top_level_and_nested_keys() {
        let text = format!(
            "[sourse]\nx = 1\n[defaults]\nretry = {{ intial = \"1s\" }}\n{}",
            with_trigger("").replace("[source]\n", "[source]\nslot = \"Bad-Slot\"\n")
        );
        let shown = err(&text).to_string();
        assert!(
            shown.contains("walhook.toml:1: sourse: unknown key `sourse` (did you mean `source`?)"),
            "{shown}"
        );
        assert!(
            shown.contains("walhook.toml:6: source.slot: `Bad-Slot` is not a valid slot name"),
            "{shown}"
        );
        assert!(shown.contains("walhook.toml:4: defaults.retry.intial: unknown key `intial` (did you mean `initial`?)"), "{shown}");
    }

    #[test]
    fn load_reads_the_file_and_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("walhook.toml");
        let e = load(&path).unwrap_err();
        assert!(e.to_string().contains("cannot read the config file"), "{e}");
        std::fs::write(&path, "[source]\nurl = 1\n").unwrap();
        let e = load(&path).unwrap_err();
        assert!(
            e.to_string().starts_with(&format!(
                "{}:2: source.url: expected a string",
                path.display()
            )),
            "{e}"
        );
    }
}
