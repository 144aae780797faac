//! walhook.toml: schema, `${VAR}` interpolation, validation with precise messages.
//!
//! The file is parsed with `toml_edit` so that every key and value keeps its byte span; the
//! schema is then walked by hand rather than through serde, because serde stops at the first
//! error and `walhook check` must report every problem at once, each with its line.
//!
//! Rules worth knowing (they are the user-facing contract; the README's configuration
//! reference says the same):
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
//! - `[server] listen` defaults to `0.0.0.0:8187`: health probes and Prometheus scrapes come
//!   from outside the process's network namespace (kubelet, sidecar scrapers), and the
//!   endpoints expose no row data. Not 9187, postgres_exporter's port, which often runs on
//!   the same host. `listen = ""` disables the server.
//! - Messages never contain the value of `source.url`, `secret`, a header value or a trigger
//!   URL (webhook URLs often carry tokens in their path).
//!
//! The work is split by idea: `reader` reads typed values out of the document and records
//! problems with their lines, `schema` says which tables and keys walhook.toml has,
//! `interpolate` replaces `${VAR}`s, `table_name` reads SQL table identifiers, `when`
//! compiles `when` expressions (secrets are parsed by [`crate::delivery::sign::Signer::new`],
//! the one parser `run` and `listen` use too).

mod interpolate;
mod reader;
mod schema;
mod table_name;
pub use table_name::parse_table;
pub mod template;
#[cfg(test)]
mod tests;
mod when;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::event::ChangeKind;

use reader::Reader;
pub(crate) use reader::closest;
#[cfg(test)]
pub(crate) use when::compile_when;
pub use when::{MESSAGE_VARIABLES, ROW_VARIABLES, WHEN_VARIABLES};

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
    /// GET: the request carries no body and no content-type.
    Get,
    /// DELETE.
    Delete,
}

impl HttpMethod {
    /// The method's name, as HTTP writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Post => "POST",
            HttpMethod::Put => "PUT",
            HttpMethod::Patch => "PATCH",
            HttpMethod::Get => "GET",
            HttpMethod::Delete => "DELETE",
        }
    }

    /// The method named `s` (upper case, as configs and the park table write it).
    pub fn parse(s: &str) -> Option<HttpMethod> {
        [
            HttpMethod::Post,
            HttpMethod::Put,
            HttpMethod::Patch,
            HttpMethod::Get,
            HttpMethod::Delete,
        ]
        .into_iter()
        .find(|m| m.as_str() == s)
    }
}

/// The method of each event type: `method = "PUT"` (all the same) or
/// `method = { create = "POST", update = "PUT", delete = "DELETE" }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Methods {
    /// By [`EventType::index`].
    by_type: [HttpMethod; 5],
}

impl Methods {
    /// The same method for every event.
    pub fn all(method: HttpMethod) -> Methods {
        Methods {
            by_type: [method; 5],
        }
    }

    /// The method of `event`'s requests.
    pub fn of(&self, event: EventType) -> HttpMethod {
        self.by_type[event.index()]
    }

    /// Sets the method of `event`.
    pub fn set(&mut self, event: EventType, method: HttpMethod) {
        self.by_type[event.index()] = method;
    }

    /// Whether the trigger sends every event with one method.
    pub fn is_uniform(&self) -> bool {
        self.by_type.iter().all(|m| *m == self.by_type[0])
    }

    /// Whether any event is sent with GET (which has no body, so cannot be batched).
    pub fn uses_get(&self, events: &[EventType]) -> bool {
        events.iter().any(|e| self.of(*e) == HttpMethod::Get)
    }
}

/// The `type` of an event: a row change's kind, or a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// A row change of this kind.
    Change(ChangeKind),
    /// A logical decoding message (`pg_logical_emit_message`).
    Message,
}

impl EventType {
    /// Every type, in the order configs list them.
    pub const ALL: [EventType; 5] = [
        EventType::Change(ChangeKind::Create),
        EventType::Change(ChangeKind::Update),
        EventType::Change(ChangeKind::Delete),
        EventType::Change(ChangeKind::Truncate),
        EventType::Message,
    ];

    /// The name used in config files and events.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Change(kind) => kind.as_str(),
            EventType::Message => "message",
        }
    }

    fn index(self) -> usize {
        match self {
            EventType::Change(ChangeKind::Create) => 0,
            EventType::Change(ChangeKind::Update) => 1,
            EventType::Change(ChangeKind::Delete) => 2,
            EventType::Change(ChangeKind::Truncate) => 3,
            EventType::Message => 4,
        }
    }
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
    /// `[park] url`: another database for the walhook schema's parked events (`None`: the
    /// source database).
    pub park: Option<ParkConfig>,
    /// The triggers, in file order.
    pub triggers: Vec<Trigger>,
}

impl Config {
    /// The URL of the database that holds `walhook.parked`.
    pub fn park_url(&self) -> &str {
        self.park.as_ref().map_or(&self.source.url, |p| &p.url)
    }
}

/// `[park]`: where parked and dead events are kept, when not in the source database.
#[derive(Clone, PartialEq, Eq)]
pub struct ParkConfig {
    /// libpq-style URL; contains the password, never log it.
    pub url: String,
}

impl fmt::Debug for ParkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParkConfig")
            .field("url", &"<redacted>")
            .finish()
    }
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
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8187";

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: DEFAULT_LISTEN.parse().ok(),
        }
    }
}

/// A trigger's place in the config (0-based, file order): the id every stage of the
/// pipeline uses for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TriggerId(u32);

impl TriggerId {
    /// The first trigger's id.
    pub const FIRST: TriggerId = TriggerId(0);

    /// The id of the trigger at `index` in [`Config::triggers`].
    pub fn new(index: usize) -> TriggerId {
        // The config caps nothing here, but no file holds 4 billion triggers.
        TriggerId(u32::try_from(index).unwrap_or(u32::MAX))
    }

    /// The index in [`Config::triggers`].
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A table as Postgres names it: exact (already unquoted) schema and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    /// Schema.
    pub schema: String,
    /// Table.
    pub name: String,
}

impl TableName {
    /// `schema.name`, exact.
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> TableName {
        TableName {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// `"schema"."name"`: safe to put in SQL.
    pub fn quoted(&self) -> String {
        format!(
            "\"{}\".\"{}\"",
            self.schema.replace('"', "\"\""),
            self.name.replace('"', "\"\"")
        )
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// A compiled CEL expression: a `when` filter, or a `body`.
#[derive(Clone)]
pub struct When {
    /// The expression as written.
    pub source: String,
    /// Compiled once at load time.
    pub program: std::sync::Arc<cel::Program>,
    /// Columns it reads as `record.x` / `old_record.x` (checked against the table).
    pub columns: Vec<RowColumn>,
}

impl PartialEq for When {
    fn eq(&self, other: &When) -> bool {
        self.source == other.source
    }
}

impl fmt::Debug for When {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

pub use when::RowColumn;

/// Which changes a trigger takes and what it sends of them.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// The change kinds that fire, without duplicates (empty for a message trigger).
    pub events: Vec<ChangeKind>,
    /// Updates fire only if one of these columns changed; empty means no such filter.
    pub changed: Vec<String>,
    /// Payload projection: only these columns, in this order.
    pub columns: Option<Vec<String>>,
    /// CEL filter.
    pub when: Option<When>,
    /// Which events keep commit order.
    pub ordering: Ordering,
}

/// Where and how a trigger's events are sent.
#[derive(Clone)]
pub struct DeliverySpec {
    /// Target URL (http or https, with a host). With a template, the URL with every hole
    /// written as `x`: its scheme, host and port are the template's own.
    pub url: url::Url,
    /// `url` with `{…}` holes in its path or query, rendered per event.
    pub url_template: Option<template::Template>,
    /// HTTP method per event type.
    pub method: Methods,
    /// Extra request headers (values marked sensitive); they replace defaults of the same name.
    pub headers: http::HeaderMap,
    /// Headers whose value is a template, rendered per event.
    pub header_templates: Vec<(http::HeaderName, template::Template)>,
    /// `body`: a CEL expression whose value is the request body (default: the event).
    pub body: Option<When>,
    /// A `nats://` (or `tls://`) URL: the events are published to JetStream instead
    /// (`url` is then the first server's URL).
    pub nats: Option<NatsSpec>,
    /// Standard Webhooks signer, when the trigger has a secret.
    pub signer: Option<crate::delivery::sign::Signer>,
    /// Request timeout (more than zero).
    pub timeout: Duration,
    /// Retry schedule.
    pub retry: RetrySettings,
    /// In-flight requests to this target (lanes).
    pub concurrency: std::num::NonZeroUsize,
    /// Events per request (1: one event per body).
    pub batch: std::num::NonZeroUsize,
    /// With `batch > 1`: how long a lane holding fewer than `batch` events waits for more
    /// while other requests of the target are in flight (a backlog); never when the target
    /// is idle.
    pub batch_linger: Duration,
    /// What a plain 4xx does.
    pub on_4xx: On4xx,
}

/// A JetStream target: where to connect and the subject of each event.
#[derive(Clone)]
pub struct NatsSpec {
    /// The servers, as written (`nats://host:4222`, `tls://host:4222`).
    pub servers: Vec<String>,
    /// `subject` (default `walhook.<trigger>`), when it has no holes.
    pub subject: String,
    /// `subject` when it is a template.
    pub subject_template: Option<template::Template>,
    /// `creds`: a NATS credentials file (JWT and nkey seed).
    pub creds: Option<std::path::PathBuf>,
    /// `nkey`: an nkey seed (`SU…`).
    pub nkey: Option<String>,
    /// `token`: an authentication token.
    pub token: Option<String>,
    /// `tls_ca`: a PEM file of the CA certificates to trust for `tls://` servers.
    pub tls_ca: Option<std::path::PathBuf>,
}

impl fmt::Debug for NatsSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsSpec")
            .field("servers", &self.servers.len())
            .field("subject", &self.subject)
            .field("subject_template", &self.subject_template.is_some())
            .field("creds", &self.creds.is_some())
            .field("nkey", &self.nkey.as_ref().map(|_| "<redacted>"))
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("tls_ca", &self.tls_ca)
            .finish()
    }
}

impl DeliverySpec {
    /// Whether some events' requests differ from the trigger's fixed method, URL and headers.
    pub fn shapes_requests(&self) -> bool {
        self.url_template.is_some()
            || !self.header_templates.is_empty()
            || !self.method.is_uniform()
    }
}

/// `[defaults] timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// `[defaults] batch_linger`.
pub const DEFAULT_BATCH_LINGER: Duration = Duration::from_millis(50);
/// `[defaults] concurrency`.
pub const DEFAULT_CONCURRENCY: std::num::NonZeroUsize = match std::num::NonZeroUsize::new(64) {
    Some(n) => n,
    None => std::num::NonZeroUsize::MIN,
};

impl DeliverySpec {
    /// Delivery to `url` with every setting at its `[defaults]` value.
    pub fn new(url: url::Url) -> DeliverySpec {
        DeliverySpec {
            url,
            url_template: None,
            method: Methods::all(HttpMethod::Post),
            headers: http::HeaderMap::new(),
            header_templates: Vec::new(),
            body: None,
            nats: None,
            signer: None,
            timeout: DEFAULT_TIMEOUT,
            retry: RetrySettings::default(),
            concurrency: DEFAULT_CONCURRENCY,
            batch: std::num::NonZeroUsize::MIN,
            batch_linger: DEFAULT_BATCH_LINGER,
            on_4xx: On4xx::Retry,
        }
    }
}

impl Route {
    /// Every create, update and delete, unfiltered, ordered by row.
    pub fn all() -> Route {
        Route {
            events: vec![ChangeKind::Create, ChangeKind::Update, ChangeKind::Delete],
            changed: Vec::new(),
            columns: None,
            when: None,
            ordering: Ordering::Row,
        }
    }
}

impl Trigger {
    /// A trigger at `index` with [`Route::all`] and [`DeliverySpec::new`]: for code that
    /// builds triggers without a file (tests, benchmarks).
    pub fn new(index: usize, name: &str, table: TableName, url: url::Url) -> Trigger {
        Trigger {
            id: TriggerId::new(index),
            name: name.to_owned(),
            watch: Watch::Table(table),
            route: Route::all(),
            delivery: DeliverySpec::new(url),
        }
    }
}

impl fmt::Debug for DeliverySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<&str> = self.headers.keys().map(|n| n.as_str()).collect();
        f.debug_struct("DeliverySpec")
            .field("url", &"<redacted>")
            .field("url_template", &self.url_template.is_some())
            .field("method", &self.method)
            .field("headers", &headers)
            .field("header_templates", &self.header_templates.len())
            .field("body", &self.body)
            .field("nats", &self.nats)
            .field("signer", &self.signer.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .field("concurrency", &self.concurrency)
            .field("batch", &self.batch)
            .field("batch_linger", &self.batch_linger)
            .field("on_4xx", &self.on_4xx)
            .finish()
    }
}

/// One `[[trigger]]` in its runtime form, with every `[defaults]` value resolved: what the
/// router and the dispatcher run, built once when the config is loaded.
#[derive(Debug, Clone)]
pub struct Trigger {
    /// Its place in the config.
    pub id: TriggerId,
    /// Unique name, `[A-Za-z0-9_-]+` (it is part of event ids).
    pub name: String,
    /// The table, or the messages, it fires on.
    pub watch: Watch,
    /// What it takes and sends.
    pub route: Route,
    /// Where it sends.
    pub delivery: DeliverySpec,
}

impl Trigger {
    /// The table it watches (`None` for a message trigger).
    pub fn table(&self) -> Option<&TableName> {
        match &self.watch {
            Watch::Table(t) => Some(t),
            Watch::Message(_) => None,
        }
    }
}

/// What a trigger fires on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Watch {
    /// Row changes of a table (`table = …`).
    Table(TableName),
    /// Logical decoding messages (`message = …`).
    Message(MessagePattern),
}

/// `message = "orders.shipped"` (that prefix exactly) or `"orders.*"` (every prefix that
/// starts with `orders.`; `"*"` is every message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessagePattern {
    /// The prefix, without the `*`.
    pub prefix: String,
    /// Whether it ended with `*`.
    pub wildcard: bool,
}

impl MessagePattern {
    /// Whether a message with `prefix` fires it.
    pub fn matches(&self, prefix: &str) -> bool {
        if self.wildcard {
            prefix.starts_with(&self.prefix)
        } else {
            prefix == self.prefix
        }
    }
}

impl fmt::Display for MessagePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.prefix, if self.wildcard { "*" } else { "" })
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
