//! The walhook.toml schema: which tables and keys exist, their defaults and limits, and how
//! each `[[trigger]]` is checked and resolved against `[defaults]`.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use toml_edit::{Item, TableLike, Value};

use super::reader::{Found, Reader, join, type_name};
use super::table_name::{MAX_IDENT, parse_table};
use super::template::{self, Template};
use super::when::{compile_when, foreign_variable};
use super::{
    Config, DeliverySpec, EventType, HttpMethod, MessagePattern, Methods, NatsSpec, On4xx,
    Ordering, ParkConfig, RetrySettings, Route, ServerConfig, SourceConfig, TableName, Trigger,
    TriggerId, Watch, When,
};
use crate::delivery::sign::Signer;
use crate::event::ChangeKind;

const MAX_CONCURRENCY: i64 = 10_000;
const MAX_BATCH: i64 = 10_000;
const MAX_BATCH_LINGER: Duration = Duration::from_secs(1);

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

const TOP_KEYS: &[&str] = &["source", "server", "park", "defaults", "trigger"];
const PARK_KEYS: &[&str] = &["url"];
const SOURCE_KEYS: &[&str] = &["url", "slot", "publication"];
const SERVER_KEYS: &[&str] = &["listen"];
const SETTING_KEYS: &[&str] = &[
    "timeout",
    "retry",
    "concurrency",
    "ordering",
    "batch",
    "batch_linger",
    "on_4xx",
];
const RETRY_KEYS: &[&str] = &["initial", "max", "park_after", "give_up_after"];
const TRIGGER_KEYS: &[&str] = &[
    "name", "table", "message", "events", "url", "method", "headers", "secret", "when", "body",
    "changed", "columns", "subject", "creds", "nkey", "token", "tls_ca",
];
/// Keys only a JetStream trigger (`url = "nats://…"`) has.
const NATS_KEYS: &[&str] = &["subject", "creds", "nkey", "token", "tls_ca"];

/// The settings `[defaults]` gives and each trigger may override.
#[derive(Debug, Clone, Copy)]
struct Settings {
    timeout: Duration,
    retry: RetrySettings,
    concurrency: NonZeroUsize,
    ordering: Ordering,
    batch: NonZeroUsize,
    batch_linger: Duration,
    on_4xx: On4xx,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            timeout: super::DEFAULT_TIMEOUT,
            retry: RetrySettings::default(),
            concurrency: super::DEFAULT_CONCURRENCY,
            ordering: Ordering::Row,
            batch: NonZeroUsize::MIN,
            batch_linger: super::DEFAULT_BATCH_LINGER,
            on_4xx: On4xx::Retry,
        }
    }
}

impl Reader<'_> {
    /// The whole file: `[source]`, `[server]`, `[defaults]` and every `[[trigger]]`.
    pub(super) fn config(&mut self, root: &dyn TableLike, path: &Path) -> Option<Config> {
        self.unknown_keys(root, TOP_KEYS, "");
        let source = self.source(root);
        let server = self.server(root);
        let park = self.park(root);
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
            park: park?,
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
        let url = self.libpq_url(table, found.span.clone(), "source.url");
        let slot = self.name_setting(table, "slot", "source.slot", true);
        let publication = self.name_setting(table, "publication", "source.publication", false);
        Some(SourceConfig {
            url: url?,
            slot: slot?,
            publication: publication?,
        })
    }

    /// `[park]`: `Some(None)` when absent, `None` when invalid (reported).
    fn park(&mut self, root: &dyn TableLike) -> Option<Option<ParkConfig>> {
        let Some(found) = self.get(root, "park") else {
            return Some(None);
        };
        let table = self.table(&found, "park")?;
        self.unknown_keys(table, PARK_KEYS, "park");
        let url = self.libpq_url(table, found.span.clone(), "park.url")?;
        Some(Some(ParkConfig { url }))
    }

    /// The `url` of `table` (required), a libpq URL; `key` names it in messages.
    fn libpq_url(
        &mut self,
        table: &dyn TableLike,
        table_span: Option<std::ops::Range<usize>>,
        key: &str,
    ) -> Option<String> {
        match self.get(table, "url") {
            Some(f) => self.string(&f, key).and_then(|url| {
                // Never echo the URL: it usually carries the password.
                let scheme_ok = url.starts_with("postgres://") || url.starts_with("postgresql://");
                if !scheme_ok {
                    let message =
                        "not a libpq URL (it must start with postgres:// or postgresql://)";
                    self.problem(f.span.clone(), key, message);
                }
                scheme_ok.then_some(url)
            }),
            None => {
                self.problem(table_span, key, "missing");
                None
            }
        }
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
                    "`{listen}` is not an address like \"127.0.0.1:8187\" or \"[::]:8187\" (use \"\" to disable)"
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
        if let Some(f) = self.get(table, "batch_linger") {
            let key = join(prefix, "batch_linger");
            if let Some(d) = self.duration_or_zero(&f, &key) {
                if d > MAX_BATCH_LINGER {
                    let message = format!(
                        "at most {} (it delays requests while the target is busy)",
                        humantime::format_duration(MAX_BATCH_LINGER)
                    );
                    self.problem(f.span.clone(), &key, message);
                } else {
                    s.batch_linger = d;
                }
            }
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
        let watch = self.watch(table, span.clone(), &prefix);
        let is_message = matches!(watch, Some(Watch::Message(_)));
        let events = match self.get(table, "events") {
            Some(f) if is_message => {
                let message = "a message trigger fires on every matching message; `events` is for table triggers";
                self.problem(f.span.clone(), &key("events"), message);
                None
            }
            Some(f) => self.events(&f, &key("events")),
            None => Some(vec![
                ChangeKind::Create,
                ChangeKind::Update,
                ChangeKind::Delete,
            ]),
        };
        let url_text = self
            .get(table, "url")
            .and_then(|f| f.item.as_str().map(str::to_owned));
        let is_nats = url_text.as_deref().is_some_and(is_nats_url);
        let nats = if is_nats {
            self.nats(table, &prefix, name.as_deref().unwrap_or("trigger"))
        } else {
            for k in NATS_KEYS {
                if let Some(f) = self.get(table, k) {
                    let message = "only a JetStream trigger (url = \"nats://…\") has this key";
                    self.problem(f.span.clone(), &key(k), message);
                }
            }
            None
        };
        let url = match self.get(table, "url") {
            Some(f) if is_nats => {
                self.string(&f, &key("url"))
                    .and_then(|u| match nats_servers(&u) {
                        Ok(url) => Some((url, None)),
                        Err(message) => {
                            self.problem(f.span.clone(), &key("url"), message);
                            None
                        }
                    })
            }
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
        let types: Vec<EventType> = match (is_message, &events) {
            (true, _) => vec![EventType::Message],
            (false, Some(events)) => events.iter().map(|k| EventType::Change(*k)).collect(),
            (false, None) => Vec::new(),
        };
        let method = match self.get(table, "method") {
            Some(f) if is_nats => {
                let message = "a JetStream trigger publishes messages; it has no HTTP method";
                self.problem(f.span.clone(), &key("method"), message);
                None
            }
            Some(f) => self.methods(&f, &key("method"), &types),
            None => Some(Methods::all(HttpMethod::Post)),
        };
        let headers = match self.get(table, "headers") {
            Some(f) => self.headers(&f, &key("headers")),
            None => Some((http::HeaderMap::new(), Vec::new())),
        };
        let signer = self.get(table, "secret").map(|f| {
            let s = self.string(&f, &key("secret"))?;
            match Signer::new(&s) {
                Ok(signer) => Some(signer),
                Err(e) => {
                    self.problem(f.span.clone(), &key("secret"), e.to_string());
                    None
                }
            }
        });
        let when = self
            .get(table, "when")
            .map(|f| self.expression(&f, &key("when"), is_message));
        let body = self
            .get(table, "body")
            .map(|f| self.expression(&f, &key("body"), is_message));
        let changed = match self.get(table, "changed") {
            Some(f) if is_message => {
                self.problem(
                    f.span.clone(),
                    &key("changed"),
                    "a message trigger has no columns",
                );
                None
            }
            Some(f) => self.string_list(&f, &key("changed")),
            None => Some(Vec::new()),
        };
        let columns = match self.get(table, "columns") {
            Some(f) if is_message => {
                self.problem(
                    f.span.clone(),
                    &key("columns"),
                    "a message trigger has no columns",
                );
                Some(None)
            }
            // `columns` trims the envelope; a `body` builds its own, so the two together
            // would leave one of them doing nothing.
            Some(f) if body.is_some() => {
                self.problem(
                    f.span.clone(),
                    &key("columns"),
                    "`columns` trims the default envelope and does nothing with `body`; pick the columns in `body` instead",
                );
                Some(None)
            }
            Some(f) => Some(self.string_list(&f, &key("columns"))),
            None => Some(None),
        };
        // Templates read the variables of their trigger's kind only.
        let url = url.and_then(|(u, t)| {
            let found = t
                .as_ref()
                .and_then(|t| t.programs().find_map(|p| foreign_variable(p, is_message)));
            match found {
                Some(v) => {
                    let f = self.get(table, "url");
                    self.problem(
                        f.and_then(|f| f.span),
                        &key("url"),
                        foreign_message(&v, is_message),
                    );
                    None
                }
                None => Some((u, t)),
            }
        });
        if let Some(subject) = nats.as_ref().and_then(|n| n.subject_template.as_ref()) {
            if let Some(v) = subject
                .programs()
                .find_map(|p| foreign_variable(p, is_message))
            {
                let f = self.get(table, "subject");
                let message = foreign_message(&v, is_message);
                self.problem(f.and_then(|f| f.span), &key("subject"), message);
            }
        }
        if let Some((_, templates)) = &headers {
            for (name, t) in templates {
                if let Some(v) = t.programs().find_map(|p| foreign_variable(p, is_message)) {
                    let message = foreign_message(&v, is_message);
                    self.problem(span.clone(), &format!("{}.{name}", key("headers")), message);
                }
            }
        }
        let settings = self.settings(table, *defaults, &prefix);

        if is_nats && nats.is_none() {
            return None;
        }
        if let (Some(m), Some(Some(_))) = (&method, &body) {
            if !types.is_empty() && types.iter().all(|t| m.of(*t) == HttpMethod::Get) {
                let message = "a GET carries no body, and every event of this trigger is sent with GET; remove `body`";
                if let Some(f) = self.get(table, "body") {
                    self.problem(f.span.clone(), &key("body"), message);
                }
            }
        }
        if let (Some(m), Some(_)) = (&method, &events) {
            if settings.batch.get() > 1 && m.uses_get(&types) {
                let message = "batch > 1 cannot be used with GET requests (a GET carries no body to put the events in)";
                self.problem(span.clone(), &key("batch"), message);
            }
        }
        if self.problems.len() > before {
            return None;
        }
        let (url, url_template) = url?;
        let (headers, header_templates) = headers?;
        Some(Trigger {
            id: TriggerId::new(index),
            name: name?,
            watch: watch?,
            route: Route {
                events: if is_message { Vec::new() } else { events? },
                changed: changed?,
                columns: columns.flatten(),
                when: when.flatten(),
                ordering: settings.ordering,
            },
            delivery: DeliverySpec {
                url,
                url_template,
                method: method?,
                headers,
                header_templates,
                body: body.flatten(),
                nats: nats.map(|mut n| {
                    n.servers = url_text
                        .iter()
                        .flat_map(|u| u.split(','))
                        .map(|s| s.trim().to_owned())
                        .collect();
                    n
                }),
                signer: signer.flatten(),
                timeout: settings.timeout,
                retry: settings.retry,
                concurrency: settings.concurrency,
                batch: settings.batch,
                batch_linger: settings.batch_linger,
                on_4xx: settings.on_4xx,
            },
        })
    }

    /// The JetStream keys of a trigger whose `url` is `nats://…`.
    fn nats(&mut self, table: &dyn TableLike, prefix: &str, trigger: &str) -> Option<NatsSpec> {
        let key = |k: &str| join(prefix, k);
        let before = self.problems.len();
        let (subject, subject_template) = match self.get(table, "subject") {
            None => (format!("walhook.{trigger}"), None),
            Some(f) => {
                let s = self.string(&f, &key("subject"))?;
                match template::header_template(&s) {
                    Ok(t) if t.has_holes() => (String::new(), Some(t)),
                    Ok(t) => {
                        let fixed = t.render(&cel::Context::default()).unwrap_or(s);
                        if let Err(message) = template::check_subject(&fixed) {
                            self.problem(f.span.clone(), &key("subject"), message);
                        }
                        (fixed, None)
                    }
                    Err(message) => {
                        self.problem(f.span.clone(), &key("subject"), message);
                        (String::new(), None)
                    }
                }
            }
        };
        let path = |r: &mut Self, k: &str| {
            r.get(table, k)
                .and_then(|f| r.string(&f, &key(k)))
                .map(std::path::PathBuf::from)
        };
        let creds = path(self, "creds");
        let tls_ca = path(self, "tls_ca");
        let nkey = self
            .get(table, "nkey")
            .and_then(|f| self.string(&f, &key("nkey")));
        let token = self
            .get(table, "token")
            .and_then(|f| self.string(&f, &key("token")));
        let given = [creds.is_some(), nkey.is_some(), token.is_some()];
        if given.iter().filter(|g| **g).count() > 1 {
            let f = self.get(table, "token").or_else(|| self.get(table, "nkey"));
            let message = "give one of creds, nkey and token";
            self.problem(f.and_then(|f| f.span), &key("creds"), message);
        }
        if self.problems.len() > before {
            return None;
        }
        Some(NatsSpec {
            servers: Vec::new(),
            subject,
            subject_template,
            creds,
            nkey,
            token,
            tls_ca,
        })
    }

    /// `table = …` or `message = …`: exactly one of them.
    fn watch(
        &mut self,
        table: &dyn TableLike,
        span: Option<Range<usize>>,
        prefix: &str,
    ) -> Option<Watch> {
        let key = |k: &str| join(prefix, k);
        match (self.get(table, "table"), self.get(table, "message")) {
            (Some(t), Some(m)) => {
                let message = "a trigger fires on a table or on messages, not both: give `table` or `message`";
                self.problem(m.span.clone().or(t.span.clone()), &key("message"), message);
                None
            }
            (Some(f), None) => {
                let t = self.string(&f, &key("table"))?;
                match parse_table(&t) {
                    Ok((schema, name)) => Some(Watch::Table(TableName::new(schema, name))),
                    Err(message) => {
                        self.problem(f.span.clone(), &key("table"), message);
                        None
                    }
                }
            }
            (None, Some(f)) => {
                let m = self.string(&f, &key("message"))?;
                let (text, wildcard) = match m.strip_suffix('*') {
                    Some(p) => (p, true),
                    None => (m.as_str(), false),
                };
                let bad = if text.contains('*') {
                    Some("`*` may only end the prefix (\"orders.*\")")
                } else if text.is_empty() && !wildcard {
                    Some("empty (use \"*\" for every message)")
                } else {
                    None
                };
                if let Some(message) = bad {
                    self.problem(f.span.clone(), &key("message"), message);
                    return None;
                }
                Some(Watch::Message(MessagePattern {
                    prefix: text.to_owned(),
                    wildcard,
                }))
            }
            (None, None) => {
                let message =
                    "missing (e.g. table = \"public.orders\", or message = \"orders.shipped\")";
                self.problem(span, &key("table"), message);
                None
            }
        }
    }

    /// A `when` or `body` expression, compiled, reading only its trigger kind's variables.
    fn expression(&mut self, found: &Found<'_>, key: &str, message_trigger: bool) -> Option<When> {
        let s = self.string(found, key)?;
        let compiled =
            compile_when(&s).and_then(|w| match foreign_variable(&w.program, message_trigger) {
                Some(v) => Err(foreign_message(&v, message_trigger)),
                None => Ok(w),
            });
        match compiled {
            Ok(w) => Some(w),
            Err(message) => {
                self.problem(found.span.clone(), key, message);
                None
            }
        }
    }

    /// `method = "PUT"`, or a table of event type → method covering every type it fires.
    fn methods(&mut self, found: &Found<'_>, key: &str, types: &[EventType]) -> Option<Methods> {
        let choices = [
            ("POST", HttpMethod::Post),
            ("PUT", HttpMethod::Put),
            ("PATCH", HttpMethod::Patch),
            ("GET", HttpMethod::Get),
            ("DELETE", HttpMethod::Delete),
        ];
        if found.item.is_str() {
            return self.choice(found, key, &choices).map(Methods::all);
        }
        let mut methods = Methods::all(HttpMethod::Post);
        let mut given = Vec::new();
        let mut ok = true;
        for (name, f) in self.entries(found, key)? {
            let entry_key = format!("{key}.{name}");
            let Some(event) = EventType::ALL.into_iter().find(|e| e.as_str() == name) else {
                let names: Vec<&str> = EventType::ALL.iter().map(|e| e.as_str()).collect();
                let message = format!(
                    "unknown event type `{name}`; the types are {}",
                    names.join(", ")
                );
                self.problem(f.span.clone(), &entry_key, message);
                ok = false;
                continue;
            };
            if !types.is_empty() && !types.contains(&event) {
                let fired: Vec<&str> = types.iter().map(|t| t.as_str()).collect();
                let message = format!(
                    "the trigger does not fire on {name} (it fires on {}); remove the entry or add it to `events`",
                    fired.join(", ")
                );
                self.problem(f.span.clone(), &entry_key, message);
                ok = false;
                continue;
            }
            match self.choice(&f, &entry_key, &choices) {
                Some(m) => {
                    methods.set(event, m);
                    given.push(event);
                }
                None => ok = false,
            }
        }
        if !ok {
            return None;
        }
        let missing: Vec<&str> = types
            .iter()
            .filter(|t| !given.contains(t))
            .map(|t| t.as_str())
            .collect();
        if !missing.is_empty() {
            let message = format!(
                "no method for {} (the trigger fires on it); give one for every event type",
                missing.join(", ")
            );
            self.problem(found.span.clone(), key, message);
            return None;
        }
        // Types the trigger never fires take the method of one it does, so a map that gives
        // every fired type the same method is as uniform as a plain `method = "…"`.
        if let Some(first) = types.first() {
            let m = methods.of(*first);
            for t in EventType::ALL.iter().filter(|t| !types.contains(t)) {
                methods.set(*t, m);
            }
        }
        Some(methods)
    }

    fn events(&mut self, found: &Found<'_>, key: &str) -> Option<Vec<ChangeKind>> {
        let names = self.string_list(found, key)?;
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            match name.as_str() {
                "create" => out.push(ChangeKind::Create),
                "update" => out.push(ChangeKind::Update),
                "delete" => out.push(ChangeKind::Delete),
                "truncate" => out.push(ChangeKind::Truncate),
                other => {
                    let hint = match other.to_ascii_lowercase().as_str() {
                        "insert" | "inserted" | "created" => " (did you mean \"create\"?)",
                        "updated" => " (did you mean \"update\"?)",
                        "deleted" => " (did you mean \"delete\"?)",
                        _ => "",
                    };
                    let message = format!(
                        "unknown event `{other}`{hint}; events are \"create\", \"update\", \"delete\", \"truncate\""
                    );
                    self.problem(found.span.clone(), key, message);
                    return None;
                }
            }
        }
        Some(out)
    }

    /// The fixed headers, and those whose value is a template.
    fn headers(&mut self, found: &Found<'_>, key: &str) -> Option<Headers> {
        let mut out = http::HeaderMap::new();
        let mut templates = Vec::new();
        let mut seen = HashSet::new();
        let mut ok = true;
        for (name, f) in self.entries(found, key)? {
            let header_key = format!("{key}.{name}");
            let lower = name.to_ascii_lowercase();
            let Ok(header_name) = http::HeaderName::from_bytes(name.as_bytes()) else {
                self.problem(f.span.clone(), &header_key, "not a valid HTTP header name");
                ok = false;
                continue;
            };
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
            let value = match template::header_template(&value) {
                Ok(t) if t.has_holes() => {
                    templates.push((header_name, t));
                    continue;
                }
                // No holes: the text with `{{`/`}}` unescaped.
                Ok(t) => t.render(&cel::Context::default()).unwrap_or(value),
                Err(message) => {
                    self.problem(f.span.clone(), &header_key, message);
                    ok = false;
                    continue;
                }
            };
            // The value is not echoed: headers usually carry credentials.
            let Ok(mut header_value) = http::HeaderValue::from_str(&value) else {
                let message =
                    "not a valid HTTP header value (control characters or non-ASCII text)";
                self.problem(f.span.clone(), &header_key, message);
                ok = false;
                continue;
            };
            // Custom headers usually carry tokens: keep them out of any debug output.
            header_value.set_sensitive(true);
            out.insert(header_name, header_value);
        }
        ok.then_some((out, templates))
    }
}

/// A trigger's fixed headers and its templated ones.
type Headers = (http::HeaderMap, Vec<(http::HeaderName, Template)>);

/// Why an expression may not read `variable` in this kind of trigger.
fn foreign_message(variable: &str, message_trigger: bool) -> String {
    if message_trigger {
        format!(
            "`{variable}` is a row change's variable; a message trigger has prefix, content, transactional, type, id and trigger"
        )
    } else {
        format!("`{variable}` is a message's variable; use it in a trigger with `message = …`")
    }
}

fn valid_trigger_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Whether a trigger URL names NATS servers rather than an HTTP endpoint.
fn is_nats_url(s: &str) -> bool {
    s.starts_with("nats://") || s.starts_with("tls://")
}

/// `nats://a:4222,nats://b:4222` (or `tls://…`): the first server's URL; every server must
/// parse, with a host. The error never contains the URL (it may carry credentials).
fn nats_servers(s: &str) -> Result<url::Url, String> {
    let mut first = None;
    for (i, server) in s.split(',').map(str::trim).enumerate() {
        let url = url::Url::parse(server)
            .map_err(|e| format!("server {} is not a valid URL ({e})", i + 1))?;
        if !matches!(url.scheme(), "nats" | "tls") {
            return Err(format!(
                "server {} must be nats:// or tls://, not `{}`",
                i + 1,
                url.scheme()
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("server {} has no host", i + 1));
        }
        if server.contains('{') {
            return Err("a JetStream URL cannot be a template (use `subject`)".to_owned());
        }
        first.get_or_insert(url);
    }
    first.ok_or_else(|| "no server".to_owned())
}

/// An http(s) URL with a host, and its template when it has `{…}` holes; the error never
/// contains the URL.
fn target_url(s: &str) -> Result<(url::Url, Option<Template>), String> {
    let (template, url) = template::url_template(s)?;
    let template = template.has_holes().then_some(template);
    if !matches!(url.scheme(), "http" | "https") {
        let scheme = url.scheme();
        return Err(format!(
            "the URL scheme must be http or https, not `{scheme}`"
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host".to_owned());
    }
    Ok((url, template))
}
