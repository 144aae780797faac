//! Routing: which triggers a change fires, and the body each one sends.
//!
//! Pure: a [`Router`] is built once from the config and then maps a [`Change`] to the
//! [`Routed`] events it produces, with no I/O besides a log line and a counter for filters that
//! fail. It runs for every decoded change, so the hot path is shaped for that:
//!
//! - Triggers are indexed by (schema, table); a change on a table no trigger names costs one
//!   hash lookup and no allocation.
//! - `when` is compiled once. A change is converted to CEL values only when a trigger with a
//!   `when` has passed the cheaper `events` and `changed` checks, at most once per change, and
//!   only the row variables some `when` of that table refers to are converted. The values
//!   borrow the change's strings instead of copying them.
//!
//! Semantics, in order of evaluation:
//!
//! 1. Table: exact schema and table name.
//! 2. `events`: the change kind must be listed.
//! 3. `changed` (updates only; creates and deletes pass): fires when one of the listed columns
//!    is in `change.changed`. When old values are unknown (`change.changed` is `None`, e.g. an
//!    update under REPLICA IDENTITY DEFAULT that kept its key), the trigger **fires**: walhook
//!    promises never to lose a matching change, and a receiver can drop an extra event but can
//!    never recover a missing one. Each such decision is counted as
//!    `walhook_changed_unknown_total{trigger}` and logged once per trigger; `walhook check`
//!    warns ahead of time via [`Router::needs_old_values`].
//! 4. `when`: a CEL expression over `record` and `old_record` (maps, or null when absent),
//!    `changed` (list of column names, empty when unknown), `type` ("create", "update",
//!    "delete"), `schema` and `table`. Row numbers are CEL ints when they fit i64 (uint when
//!    they fit u64) and doubles otherwise, so `record.amount > 100` works for `numeric` 150.50.
//!    An evaluation error (say `old_record.status` when `old_record` is null) or a non-bool
//!    result counts as false, is logged once per trigger and counted as
//!    `walhook_filter_errors_total{trigger}`.
//!
//! The body is the [`Event`] JSON with `columns` applied to `record` and `old_record`: only
//! those columns, in the listed order; a listed column absent from the row (an old key that
//! lacks it, an unchanged TOASTed value) is left out rather than sent as null.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};

use cel::common::types::{CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull};
use cel::common::types::{CelString, CelUInt};
use cel::common::value::Val;

use crate::config::template::Template;
use crate::config::{
    EventType, MessagePattern, Methods, Ordering, TableName, Trigger, TriggerId, Watch,
};
use crate::delivery::Shape;
use crate::event::{Change, ChangeKind, Event, Message, Row};

/// One event a change produced for one trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    /// The trigger (its place in `Router::new`'s slice, i.e. in the config).
    pub trigger: TriggerId,
    /// The event id (stable across redeliveries).
    pub id: String,
    /// The event JSON, with the trigger's column projection applied.
    pub body: Vec<u8>,
    /// Chooses the delivery lane: events with equal keys keep their order (see
    /// [`Ordering`]).
    pub order_key: u64,
    /// How its request differs from the trigger's fixed one.
    pub shape: Option<Box<Shape>>,
}

/// The triggers of a config, indexed for routing changes.
pub struct Router {
    triggers: Vec<Compiled>,
    /// schema → table → what fires there.
    by_table: HashMap<String, HashMap<String, TableRoutes>>,
    /// Distinct tables in config order.
    tables: Vec<TableName>,
    /// Message triggers, in config order.
    messages: Vec<(MessagePattern, TriggerId)>,
    env: Arc<cel::Env>,
    /// For `ordering = "none"`: spreads events over the lanes.
    unordered: AtomicU64,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("triggers", &self.triggers.len())
            .field("tables", &self.tables)
            .finish()
    }
}

/// The triggers of one table and the CEL variables their expressions read.
#[derive(Default)]
struct TableRoutes {
    triggers: Vec<TriggerId>,
    uses_record: bool,
    uses_old_record: bool,
    uses_key: bool,
}

/// What a trigger renders per event: `url` and header templates, a `method` map, `body`.
#[derive(Default)]
struct Shaping {
    url: Option<Template>,
    /// A JetStream trigger's `subject` template.
    subject: Option<Template>,
    methods: Option<Methods>,
    headers: Vec<(String, Template)>,
    body: Option<Arc<cel::Program>>,
}

impl Shaping {
    fn of(t: &Trigger) -> Shaping {
        let d = &t.delivery;
        Shaping {
            url: d.url_template.clone(),
            subject: d.nats.as_ref().and_then(|n| n.subject_template.clone()),
            methods: (!d.method.is_uniform()).then_some(d.method),
            headers: d
                .header_templates
                .iter()
                .map(|(name, t)| (name.as_str().to_owned(), t.clone()))
                .collect(),
            body: d.body.as_ref().map(|b| Arc::clone(&b.program)),
        }
    }

    /// Whether anything needs the CEL variables.
    fn evaluates(&self) -> bool {
        self.url.is_some()
            || self.subject.is_some()
            || !self.headers.is_empty()
            || self.body.is_some()
    }

    fn programs(&self) -> impl Iterator<Item = &cel::Program> {
        self.url
            .iter()
            .chain(&self.subject)
            .flat_map(|t| t.programs())
            .chain(self.headers.iter().flat_map(|(_, t)| t.programs()))
            .chain(self.body.as_deref())
    }
}

/// One trigger, ready to evaluate.
struct Compiled {
    name: String,
    /// Bit per [`ChangeKind`], see [`kind_bit`].
    events: u8,
    changed: Vec<String>,
    columns: Option<Vec<String>>,
    when: Option<Arc<cel::Program>>,
    shaping: Shaping,
    ordering: Ordering,
    needs_old_values: bool,
    /// Set once the first template or `body` error has been logged.
    warned_render: AtomicBool,
    /// `walhook_render_errors_total` for this trigger.
    render_errors: metrics::Counter,
    /// Set once the first filter error has been logged.
    warned_filter: AtomicBool,
    /// Set once the first "old values unknown" decision has been logged.
    warned_changed: AtomicBool,
    /// `walhook_filter_errors_total` for this trigger (registered once, not per event).
    filter_errors: metrics::Counter,
    /// `walhook_changed_unknown_total` for this trigger.
    changed_unknown: metrics::Counter,
}

fn kind_bit(kind: ChangeKind) -> u8 {
    match kind {
        ChangeKind::Create => 1,
        ChangeKind::Update => 2,
        ChangeKind::Delete => 4,
        ChangeKind::Truncate => 8,
    }
}

impl Router {
    /// Indexes the triggers by table; [`Routed::trigger`] is a trigger's place in `triggers`.
    pub fn new(triggers: &[Trigger]) -> Router {
        let mut compiled = Vec::with_capacity(triggers.len());
        let mut by_table: HashMap<String, HashMap<String, TableRoutes>> = HashMap::new();
        let mut tables = Vec::new();
        let mut messages = Vec::new();
        for (i, t) in triggers.iter().enumerate() {
            let when = t.route.when.as_ref().map(|w| Arc::clone(&w.program));
            let shaping = Shaping::of(t);
            let refers = |var: &str| {
                when.iter()
                    .map(|p| &**p)
                    .chain(shaping.programs())
                    .any(|p| p.references().has_variable(var))
            };
            match &t.watch {
                Watch::Table(table) => {
                    let routes = by_table
                        .entry(table.schema.clone())
                        .or_default()
                        .entry(table.name.clone())
                        .or_insert_with(|| {
                            tables.push(table.clone());
                            TableRoutes::default()
                        });
                    routes.triggers.push(TriggerId::new(i));
                    routes.uses_record |= refers("record");
                    routes.uses_old_record |= refers("old_record");
                    routes.uses_key |= refers("key");
                }
                Watch::Message(pattern) => messages.push((pattern.clone(), TriggerId::new(i))),
            }
            compiled.push(Compiled {
                name: t.name.clone(),
                events: t.route.events.iter().fold(0, |bits, k| bits | kind_bit(*k)),
                changed: t.route.changed.clone(),
                columns: t.route.columns.clone(),
                ordering: t.route.ordering,
                needs_old_values: !t.route.changed.is_empty()
                    || refers("old_record")
                    || refers("changed"),
                when,
                shaping,
                warned_filter: AtomicBool::new(false),
                warned_changed: AtomicBool::new(false),
                warned_render: AtomicBool::new(false),
                filter_errors: metrics::counter!("walhook_filter_errors_total", "trigger" => t.name.clone()),
                changed_unknown: metrics::counter!("walhook_changed_unknown_total", "trigger" => t.name.clone()),
                render_errors: metrics::counter!("walhook_render_errors_total", "trigger" => t.name.clone()),
            });
        }
        Router {
            triggers: compiled,
            by_table,
            tables,
            messages,
            env: Arc::new(cel::Env::stdlib()),
            // A random start: keys of `ordering = "none"` events parked by an earlier process
            // should not make this one's new events queue behind them.
            unordered: AtomicU64::new(fastrand::u64(..)),
        }
    }

    /// Whether some trigger fires on messages.
    pub fn has_message_triggers(&self) -> bool {
        !self.messages.is_empty()
    }

    /// The distinct tables the triggers name, in config order.
    pub fn tables(&self) -> Vec<TableName> {
        self.tables.clone()
    }

    /// Whether a trigger's `changed` or `when` depends on old values (REPLICA IDENTITY FULL).
    pub fn needs_old_values(&self, trigger: TriggerId) -> bool {
        self.triggers
            .get(trigger.index())
            .is_some_and(|t| t.needs_old_values)
    }

    /// Every trigger `change` fires, in config order, with its event id and body.
    pub fn route(&self, change: &Change) -> Vec<Routed> {
        self.route_as(&change.schema, &change.table, change)
    }

    /// Routes `change` to the triggers of the table the config calls `schema.table` (a
    /// renamed table's changes still go to the triggers bound to it). The events carry the
    /// change's own, current name.
    pub fn route_as(&self, schema: &str, table: &str, change: &Change) -> Vec<Routed> {
        let Some(routes) = self
            .by_table
            .get(schema)
            .and_then(|tables| tables.get(table))
        else {
            return Vec::new();
        };
        let bit = kind_bit(change.kind);
        // Built on first use: most changes never reach an expression.
        let mut ctx: Option<cel::Context<'_, '_>> = None;
        let mut out = Vec::new();
        for &i in &routes.triggers {
            let Some(t) = self.triggers.get(i.index()) else {
                continue;
            };
            if t.events & bit == 0 || !self.changed_matches(t, change) {
                continue;
            }
            let id = change.event_id(Some(&t.name));
            if t.when.is_some() || t.shaping.evaluates() {
                let ctx = ctx.get_or_insert_with(|| self.context(change, routes));
                set_event(ctx, &id, &t.name);
                if let Some(program) = &t.when {
                    if !self.filter(t, program, ctx) {
                        continue;
                    }
                }
            }
            let order_key = self.order_key(t.ordering, schema, table, change);
            let envelope = || match &t.columns {
                None => Event::of(change, Some(&t.name)).to_json(),
                Some(columns) => {
                    let record = change.record.as_ref().map(|r| project(r, columns));
                    let old = change.old_record.as_ref().map(|r| project(r, columns));
                    Event::new(change, Some(&t.name), record.as_ref(), old.as_ref()).to_json()
                }
            };
            let (body, shape) =
                self.shaped(t, ctx.as_ref(), EventType::Change(change.kind), envelope);
            out.push(Routed {
                trigger: i,
                id,
                body,
                order_key,
                shape,
            });
        }
        out
    }

    /// Every trigger a message fires, in config order.
    pub fn route_message(&self, message: &Message) -> Vec<Routed> {
        let mut ctx: Option<cel::Context<'_, '_>> = None;
        let mut out = Vec::new();
        for (pattern, i) in &self.messages {
            let Some(t) = self.triggers.get(i.index()) else {
                continue;
            };
            if !pattern.matches(&message.prefix) {
                continue;
            }
            let id = message.event_id(Some(&t.name));
            if t.when.is_some() || t.shaping.evaluates() {
                let ctx = ctx.get_or_insert_with(|| self.message_context(message));
                set_event(ctx, &id, &t.name);
                if let Some(program) = &t.when {
                    if !self.filter(t, program, ctx) {
                        continue;
                    }
                }
            }
            let order_key = match t.ordering {
                Ordering::None => self.unordered.fetch_add(1, AtomicOrdering::Relaxed),
                // Messages have no row: those of one prefix keep their order.
                Ordering::Row | Ordering::Table => {
                    stable_hash(&[b"\0message", message.prefix.as_bytes()])
                }
            };
            let envelope = || message.to_json(&id, Some(&t.name));
            let (body, shape) = self.shaped(t, ctx.as_ref(), EventType::Message, envelope);
            out.push(Routed {
                trigger: *i,
                id,
                body,
                order_key,
                shape,
            });
        }
        out
    }

    /// The body and the request shape of one event. A template or `body` that fails makes
    /// the event unsendable (its body is then the envelope, so a parked copy shows what it
    /// was), logged once per trigger and counted.
    fn shaped(
        &self,
        t: &Compiled,
        ctx: Option<&cel::Context<'_, '_>>,
        event: EventType,
        envelope: impl FnOnce() -> Vec<u8>,
    ) -> (Vec<u8>, Option<Box<Shape>>) {
        let s = &t.shaping;
        let method = s.methods.map(|m| m.of(event));
        let Some(ctx) = ctx.filter(|_| s.evaluates()) else {
            let shape = method.map(|m| {
                Box::new(Shape {
                    method: Some(m),
                    ..Shape::default()
                })
            });
            return (envelope(), shape);
        };
        let rendered = (|| -> Result<(Option<Vec<u8>>, Shape), String> {
            let target = s
                .url
                .as_ref()
                .map(|u| u.render(ctx).map_err(|e| format!("url: {e}")))
                .transpose()?;
            let target = match &s.subject {
                Some(t) => {
                    let subject = t.render(ctx).map_err(|e| format!("subject: {e}"))?;
                    crate::config::template::check_subject(&subject)
                        .map_err(|e| format!("subject: {e}"))?;
                    Some(subject)
                }
                None => target,
            };
            let mut headers = Vec::with_capacity(s.headers.len());
            for (name, template) in &s.headers {
                let value = template
                    .render(ctx)
                    .map_err(|e| format!("header {name}: {e}"))?;
                if http::HeaderValue::from_str(&value).is_err() {
                    return Err(format!(
                        "header {name}: the value is not one HTTP can carry (header values are \
                         visible ASCII: no line break, control character or non-ASCII text)"
                    ));
                }
                headers.push((name.clone(), value));
            }
            let body = s
                .body
                .as_ref()
                .map(|program| {
                    let value = program.execute(ctx).map_err(|e| format!("body: {e}"))?;
                    let json = cel_json(&value).map_err(|e| format!("body: {e}"))?;
                    Ok::<_, String>(serde_json::to_vec(&json).unwrap_or_default())
                })
                .transpose()?;
            Ok((
                body,
                Shape {
                    method,
                    target,
                    headers,
                    unsendable: None,
                },
            ))
        })();
        match rendered {
            Ok((body, shape)) => {
                let shape = (shape != Shape::default()).then(|| Box::new(shape));
                (body.unwrap_or_else(envelope), shape)
            }
            Err(error) => {
                t.render_errors.increment(1);
                if !t.warned_render.swap(true, AtomicOrdering::Relaxed) {
                    tracing::warn!(
                        trigger = %t.name,
                        error = %error,
                        "a template or `body` failed for an event: it is not sent, and fails like \
                         a request answered 4xx (logged once per trigger, counted in \
                         walhook_render_errors_total)"
                    );
                }
                (envelope(), crate::delivery::unsendable(error))
            }
        }
    }

    fn changed_matches(&self, t: &Compiled, change: &Change) -> bool {
        if t.changed.is_empty() || change.kind != ChangeKind::Update {
            return true;
        }
        match &change.changed {
            Some(changed) => t.changed.iter().any(|c| changed.contains(c)),
            None => {
                // Old values unknown: fire (see the module doc), but say so.
                t.changed_unknown.increment(1);
                if !t.warned_changed.swap(true, AtomicOrdering::Relaxed) {
                    tracing::warn!(
                        trigger = %t.name,
                        table = %format_args!("{}.{}", change.schema, change.table),
                        "update without old values: cannot tell whether `changed` columns changed, \
                         delivering it anyway (set REPLICA IDENTITY FULL to filter exactly)"
                    );
                }
                true
            }
        }
    }

    /// Evaluates a `when`; errors and non-bool results are false, logged once and counted.
    fn filter(&self, t: &Compiled, program: &cel::Program, ctx: &cel::Context<'_, '_>) -> bool {
        let problem = match program.execute(ctx) {
            Ok(cel::Value::Bool(b)) => return b,
            Ok(other) => format!("evaluated to {:?}, not a bool", other.type_of()),
            Err(e) => e.to_string(),
        };
        t.filter_errors.increment(1);
        if !t.warned_filter.swap(true, AtomicOrdering::Relaxed) {
            tracing::warn!(
                trigger = %t.name,
                error = %problem,
                "`when` could not be evaluated; such events are skipped (logged once per trigger, \
                 counted in walhook_filter_errors_total)"
            );
        }
        false
    }

    /// The CEL variables for one change, borrowing its values.
    fn context<'c>(&self, change: &'c Change, routes: &TableRoutes) -> cel::Context<'c, 'c> {
        let row = |row: &'c Option<Row>, used: bool| -> Box<dyn Val + 'c> {
            match row {
                Some(r) if used => Box::new(map_val(r)),
                _ => Box::new(CelNull),
            }
        };
        let changed: Vec<Box<dyn Val + 'c>> = change
            .changed
            .iter()
            .flatten()
            .map(|c| Box::new(CelString::from(c.as_str())) as Box<dyn Val + 'c>)
            .collect();
        let mut ctx = cel::Context::with_env(Arc::clone(&self.env));
        ctx.add_variable_as_val("record", row(&change.record, routes.uses_record));
        ctx.add_variable_as_val(
            "old_record",
            row(&change.old_record, routes.uses_old_record),
        );
        ctx.add_variable_as_val("changed", Box::new(CelList::from(changed)));
        ctx.add_variable_as_val("type", Box::new(CelString::from(change.kind.as_str())));
        ctx.add_variable_as_val("schema", Box::new(CelString::from(&*change.schema)));
        ctx.add_variable_as_val("table", Box::new(CelString::from(&*change.table)));
        let key: Box<dyn Val + 'c> = match (routes.uses_key, change.kind) {
            (false, _) | (_, ChangeKind::Truncate) => Box::new(CelNull),
            (true, ChangeKind::Delete) => key_val(change.old_record.as_ref(), &change.key_columns),
            (true, _) => key_val(change.record.as_ref(), &change.key_columns),
        };
        ctx.add_variable_as_val("key", key);
        for name in crate::config::MESSAGE_VARIABLES {
            ctx.add_variable_as_val(*name, Box::new(CelNull));
        }
        ctx
    }

    /// The CEL variables for one message.
    fn message_context<'c>(&self, message: &'c Message) -> cel::Context<'c, 'c> {
        let mut ctx = cel::Context::with_env(Arc::clone(&self.env));
        for name in crate::config::ROW_VARIABLES {
            ctx.add_variable_as_val(*name, Box::new(CelNull));
        }
        ctx.add_variable_as_val(
            "changed",
            Box::new(CelList::from(Vec::<Box<dyn Val>>::new())),
        );
        ctx.add_variable_as_val("type", Box::new(CelString::from("message")));
        ctx.add_variable_as_val("prefix", Box::new(CelString::from(message.prefix.as_str())));
        ctx.add_variable_as_val("content", json_val(&message.content));
        ctx.add_variable_as_val(
            "transactional",
            Box::new(CelBool::from(message.transactional)),
        );
        ctx
    }

    /// Which lane of its target an event goes to: equal keys keep their order. The value is
    /// also the ordering key stored with parked events (`walhook.parked.order_key`), so it is
    /// a hash fixed by this code, not std's `DefaultHasher` (which may change between Rust
    /// releases and would then split a row's parked events from its live ones).
    /// `schema.table` is the configured name (the same before and after a rename, so a
    /// renamed row's events stay behind its earlier ones).
    fn order_key(&self, ordering: Ordering, schema: &str, table: &str, change: &Change) -> u64 {
        match (ordering, &change.key) {
            (Ordering::None, _) => self.unordered.fetch_add(1, AtomicOrdering::Relaxed),
            (Ordering::Row, Some(key)) => {
                stable_hash(&[schema.as_bytes(), table.as_bytes(), key.as_bytes()])
            }
            // A table without a key has no row identity: keep the table's order.
            (Ordering::Row, None) | (Ordering::Table, _) => {
                stable_hash(&[schema.as_bytes(), table.as_bytes()])
            }
        }
    }
}

/// The per-trigger variables: the event id and the trigger's name.
fn set_event(ctx: &mut cel::Context<'_, '_>, id: &str, trigger: &str) {
    ctx.add_variable_as_val("id", Box::new(CelString::from(id.to_owned())));
    ctx.add_variable_as_val("trigger", Box::new(CelString::from(trigger.to_owned())));
}

/// The key columns of `row` as a map (null without a row or a key).
fn key_val<'c>(row: Option<&'c Row>, columns: &[String]) -> Box<dyn Val + 'c> {
    match row {
        Some(row) if !columns.is_empty() => {
            let entries: HashMap<CelMapKey<'_>, Box<dyn Val + '_>> = columns
                .iter()
                .filter_map(|c| row.get_key_value(c))
                .map(|(k, v)| (CelMapKey::from(k.as_str()), json_val(v)))
                .collect();
            Box::new(CelMap::from(entries))
        }
        _ => Box::new(CelNull),
    }
}

/// A CEL value as JSON: map keys sorted (so the same event gives the same bytes every time
/// it is rendered), numbers as CEL computed them; a value JSON cannot hold is an error.
fn cel_json(v: &cel::Value) -> Result<serde_json::Value, String> {
    use cel::Value as V;
    use serde_json::Value as J;
    Ok(match v {
        V::Null => J::Null,
        V::Bool(b) => J::Bool(*b),
        V::Int(i) => J::from(*i),
        V::UInt(u) => J::from(*u),
        V::Float(f) => serde_json::Number::from_f64(*f)
            .map(J::Number)
            .ok_or_else(|| format!("{f} is not a number JSON can hold"))?,
        V::String(s) => J::String(s.to_string()),
        V::Bytes(b) => {
            use base64::Engine as _;
            J::String(base64::engine::general_purpose::STANDARD.encode(b.as_slice()))
        }
        V::List(items) => J::Array(items.iter().map(cel_json).collect::<Result<_, _>>()?),
        V::Map(map) => {
            let mut entries: Vec<(String, &cel::Value)> =
                map.map.iter().map(|(k, v)| (k.to_string(), v)).collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            let mut out = serde_json::Map::with_capacity(entries.len());
            for (k, v) in entries {
                out.insert(k, cel_json(v)?);
            }
            J::Object(out)
        }
        other => {
            return Err(format!(
                "a {:?} value cannot be sent as JSON",
                other.type_of()
            ));
        }
    })
}

/// `row` with only `columns`, in that order.
fn project(row: &Row, columns: &[String]) -> Row {
    columns
        .iter()
        .filter_map(|c| row.get(c).map(|v| (c.clone(), v.clone())))
        .collect()
}

fn map_val(row: &Row) -> CelMap<'_> {
    let entries: HashMap<CelMapKey<'_>, Box<dyn Val + '_>> = row
        .iter()
        .map(|(k, v)| (CelMapKey::from(k.as_str()), json_val(v)))
        .collect();
    CelMap::from(entries)
}

/// A JSON value as a CEL value. Numbers are parsed from their exact text (serde_json's
/// arbitrary_precision keeps them as strings): int if it fits i64, uint if it fits u64,
/// otherwise double, unless a double cannot hold it (more than 15 significant digits, or
/// out of range): then it is a string of its exact text, so that a template or `body`
/// never writes a different number (a `numeric(30)` key in a URL, say).
fn json_val(v: &serde_json::Value) -> Box<dyn Val + '_> {
    use serde_json::Value as J;
    match v {
        J::Null => Box::new(CelNull),
        J::Bool(b) => Box::new(CelBool::from(*b)),
        J::Number(n) => {
            if let Some(i) = n.as_i64() {
                Box::new(CelInt::from(i))
            } else if let Some(u) = n.as_u64() {
                Box::new(CelUInt::from(u))
            } else if let Some(f) = n
                .as_f64()
                .filter(|_| significant_digits(&n.to_string()) <= 15)
            {
                Box::new(CelDouble::from(f))
            } else {
                Box::new(CelString::from(n.to_string()))
            }
        }
        J::String(s) => Box::new(CelString::from(s.as_str())),
        J::Array(items) => Box::new(CelList::from(
            items.iter().map(json_val).collect::<Vec<_>>(),
        )),
        J::Object(map) => Box::new(map_val(map)),
    }
}

/// The significant digits of a JSON number's text (`-0.00120e5` has 2).
fn significant_digits(text: &str) -> usize {
    let mantissa = text.split(['e', 'E']).next().unwrap_or_default();
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let digits = digits.trim_start_matches('0');
    // Trailing zeros count only before a decimal point (`1200` vs `12.00`).
    let digits = if mantissa.contains('.') {
        digits.trim_end_matches('0')
    } else {
        digits
    };
    digits.len()
}

/// FNV-1a over the parts (each followed by a 0xff separator, which UTF-8 never contains),
/// then the SplitMix64 finalizer so the low bits that pick a lane are well mixed. Stable
/// across builds and platforms.
fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in part.iter().chain(std::iter::once(&0xff)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {

    use serde_json::json;

    use super::*;
    use crate::config::{TableName, Trigger, TriggerId};
    use crate::lsn::Lsn;
    use crate::source::pgoutput::PgTimestamp;

    fn trigger(name: &str, table: &str) -> Trigger {
        let (schema, table) = table.split_once('.').unwrap_or(("public", table));
        let url = url::Url::parse("http://localhost/hook").unwrap();
        Trigger::new(0, name, TableName::new(schema, table), url)
    }

    fn when(name: &str, table: &str, expr: &str) -> Trigger {
        let mut t = trigger(name, table);
        t.route.when = Some(crate::config::compile_when(expr).unwrap());
        t
    }

    /// `t` with its route changed by `f`.
    fn with(mut t: Trigger, f: impl FnOnce(&mut crate::config::Route)) -> Trigger {
        f(&mut t.route);
        t
    }

    /// A row from JSON text, so numbers go through serde_json's arbitrary_precision path the
    /// way decoded values do.
    fn row(text: &str) -> Row {
        serde_json::from_str(text).unwrap()
    }

    fn change(kind: ChangeKind, table: &str, record: Option<&str>, old: Option<&str>) -> Change {
        let (schema, table) = table.split_once('.').unwrap_or(("public", table));
        Change {
            kind,
            relation: 16_384,
            schema: schema.into(),
            table: table.into(),
            record: record.map(row),
            old_record: old.map(row),
            changed: None,
            unchanged_toast: vec![],
            commit_lsn: Lsn(0x16B3748),
            xid: 7,
            committed_at: PgTimestamp(0),
            seq: 3,
            key: None,
            key_columns: Arc::from(Vec::new()),
            truncate: None,
        }
    }

    fn insert(table: &str, record: &str) -> Change {
        change(ChangeKind::Create, table, Some(record), None)
    }

    fn update(table: &str, record: &str, old: Option<&str>, changed: Option<&[&str]>) -> Change {
        Change {
            changed: changed.map(|c| c.iter().map(|s| s.to_string()).collect()),
            ..change(ChangeKind::Update, table, Some(record), old)
        }
    }

    fn fired(router: &Router, change: &Change) -> Vec<usize> {
        router
            .route(change)
            .iter()
            .map(|r| r.trigger.index())
            .collect()
    }

    fn body(routed: &Routed) -> serde_json::Value {
        serde_json::from_slice(&routed.body).unwrap()
    }

    #[test]
    fn router_is_shareable_across_tasks() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Router>();
    }

    #[test]
    fn only_the_named_table_fires() {
        let router = Router::new(&[
            trigger("a", "orders"),
            trigger("b", "sales.orders"),
            trigger("c", "orders"),
        ]);
        assert_eq!(
            router.tables(),
            vec![
                TableName::new("public", "orders"),
                TableName::new("sales", "orders")
            ]
        );
        assert_eq!(fired(&router, &insert("orders", r#"{"id":1}"#)), vec![0, 2]);
        assert_eq!(
            fired(&router, &insert("sales.orders", r#"{"id":1}"#)),
            vec![1]
        );
        assert!(router.route(&insert("users", r#"{"id":1}"#)).is_empty());
        assert!(
            router
                .route(&insert("other.orders", r#"{"id":1}"#))
                .is_empty()
        );
    }

    #[test]
    fn events_filter_by_kind() {
        let router = Router::new(&[with(trigger("t", "orders"), |r| {
            r.events = vec![ChangeKind::Create, ChangeKind::Delete]
        })]);
        assert_eq!(fired(&router, &insert("orders", r#"{"id":1}"#)).len(), 1);
        let upd = update("orders", r#"{"id":1}"#, None, Some(&["id"]));
        assert!(router.route(&upd).is_empty());
        let del = change(ChangeKind::Delete, "orders", None, Some(r#"{"id":1}"#));
        assert_eq!(fired(&router, &del).len(), 1);
    }

    #[test]
    fn changed_filters_updates_only() {
        let router = Router::new(&[with(trigger("t", "orders"), |r| {
            r.changed = vec!["status".into(), "amount".into()]
        })]);
        let rec = r#"{"id":1,"status":"paid","amount":3}"#;
        assert_eq!(
            fired(
                &router,
                &update("orders", rec, Some(rec), Some(&["amount"]))
            )
            .len(),
            1
        );
        assert!(
            router
                .route(&update("orders", rec, Some(rec), Some(&["note"])))
                .is_empty()
        );
        assert!(
            router
                .route(&update("orders", rec, Some(rec), Some(&[])))
                .is_empty()
        );
        // Creates and deletes are not filtered by `changed`.
        assert_eq!(fired(&router, &insert("orders", rec)).len(), 1);
        // Old values unknown: delivered rather than risk losing it (module doc).
        assert_eq!(fired(&router, &update("orders", rec, None, None)).len(), 1);
        assert!(router.needs_old_values(TriggerId::new(0)));
    }

    #[test]
    fn when_on_old_record_under_replica_identity_default_is_false() {
        let router = Router::new(&[when(
            "paid",
            "orders",
            "record.status == 'paid' && old_record.status != 'paid'",
        )]);
        let rec = r#"{"id":1,"status":"paid"}"#;
        // REPLICA IDENTITY DEFAULT, key unchanged: no old row at all.
        assert!(router.route(&update("orders", rec, None, None)).is_empty());
        assert!(
            router.triggers[0]
                .warned_filter
                .load(AtomicOrdering::Relaxed)
        );
        // A second failure is only counted, not logged again; it still does not fire or panic.
        assert!(router.route(&update("orders", rec, None, None)).is_empty());
        // With the old row (FULL), it works.
        let old = r#"{"id":1,"status":"pending"}"#;
        assert_eq!(
            fired(
                &router,
                &update("orders", rec, Some(old), Some(&["status"]))
            ),
            vec![0]
        );
        assert!(
            router
                .route(&update("orders", rec, Some(rec), Some(&[])))
                .is_empty()
        );
        assert!(router.needs_old_values(TriggerId::new(0)));
    }

    #[test]
    fn numbers_compare_as_numbers() {
        let router = Router::new(&[
            when("gt-int", "orders", "record.amount > 100"),
            when("gt-double", "orders", "record.amount > 100.0"),
            when("eq", "orders", "record.qty == 3"),
            when("big", "orders", "record.big > 1"),
            when("huge", "orders", "record.huge > 1.0"),
            when("lt", "orders", "record.amount < 100"),
        ]);
        let rec = r#"{"amount":150.50,"qty":3,"big":18446744073709551615,"huge":1e300}"#;
        assert_eq!(fired(&router, &insert("orders", rec)), vec![0, 1, 2, 3, 4]);
        assert!(
            fired(
                &router,
                &insert("orders", r#"{"amount":99.99,"qty":4,"big":0,"huge":0}"#)
            )
            .contains(&5)
        );
    }

    #[test]
    fn strings_keys_and_membership() {
        let router = Router::new(&[
            when("eq", "orders", "record.status == 'paid'"),
            when("has", "orders", "has(record.coupon)"),
            when("in", "orders", "'coupon' in record"),
            when("changed", "orders", "'status' in changed"),
            when("nested", "orders", "record.meta.tags.exists(t, t == 'vip')"),
            when(
                "vars",
                "sales.orders",
                "type == 'update' && schema == 'sales' && table == 'orders'",
            ),
        ]);
        let rec = r#"{"status":"paid","meta":{"tags":["vip"]}}"#;
        let upd = update("orders", rec, None, Some(&["status"]));
        assert_eq!(fired(&router, &upd), vec![0, 3, 4]);
        let with_coupon = insert("orders", r#"{"status":"open","coupon":null,"meta":{}}"#);
        assert_eq!(fired(&router, &with_coupon), vec![1, 2]);
        let sales = update("sales.orders", rec, None, None);
        assert_eq!(fired(&router, &sales), vec![5]);
        assert!(router.needs_old_values(TriggerId::new(3)));
        assert!(!router.needs_old_values(TriggerId::new(0)));
        assert!(!router.needs_old_values(TriggerId::new(99)));
    }

    #[test]
    fn non_bool_results_and_missing_keys_are_false() {
        let router = Router::new(&[
            when("str", "orders", "record.status"),
            when("missing", "orders", "record.nope == 1"),
            when("deleted", "orders", "record.id == 1"),
        ]);
        assert!(
            router
                .route(&insert("orders", r#"{"status":"paid"}"#))
                .is_empty()
        );
        // Deletes have a null record.
        let del = change(ChangeKind::Delete, "orders", None, Some(r#"{"id":1}"#));
        assert!(router.route(&del).is_empty());
    }

    #[test]
    fn several_triggers_get_their_own_id_and_body() {
        let router = Router::new(&[
            trigger("all", "orders"),
            with(when("paid", "orders", "record.status == 'paid'"), |r| {
                r.columns = Some(vec!["status".into(), "id".into(), "gone".into()])
            }),
        ]);
        let old = r#"{"id":1,"status":"open","note":"x"}"#;
        let routed = router.route(&update(
            "orders",
            r#"{"id":1,"status":"paid","note":"x"}"#,
            Some(old),
            Some(&["status"]),
        ));
        assert_eq!(routed.len(), 2);
        assert_eq!(routed[0].id, "00000000016b3748-3-all");
        assert_eq!(routed[1].id, "00000000016b3748-3-paid");
        let (all, paid) = (body(&routed[0]), body(&routed[1]));
        assert_eq!(all["trigger"], "all");
        assert_eq!(all["record"], json!({"id":1,"status":"paid","note":"x"}));
        assert_eq!(paid["id"], routed[1].id.as_str());
        assert_eq!(paid["trigger"], "paid");
        assert_eq!(paid["type"], "update");
        assert_eq!(paid["changed"], json!(["status"]));
        // Projection: listed order, absent columns left out, applied to both rows.
        let keys: Vec<&String> = paid["record"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["status", "id"]);
        assert_eq!(paid["old_record"], json!({"status":"open","id":1}));
    }

    #[test]
    fn projected_numbers_keep_their_exact_text() {
        let router = Router::new(&[with(trigger("t", "orders"), |r| {
            r.columns = Some(vec!["amount".into()])
        })]);
        let routed = router.route(&insert("orders", r#"{"id":1,"amount":150.50}"#));
        let text = String::from_utf8(routed[0].body.clone()).unwrap();
        assert!(text.contains(r#""record":{"amount":150.50}"#), "{text}");
    }

    /// The ordering key is stored with parked events, so a new build must compute the
    /// same value for the same row (or a row's new events could overtake its parked ones).
    #[test]
    fn ordering_keys_are_stable_across_builds() {
        let key = stable_hash(&[b"public", b"orders", b"[42]"]);
        assert_eq!(key, 15_434_694_105_093_258_166); // FNV-1a + SplitMix64, computed independently
        assert_ne!(key, stable_hash(&[b"public", b"orders", b"[43]"]));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(stable_hash(&[b"ab", b"c"]), stable_hash(&[b"a", b"bc"]));
    }

    /// The triggers of a config whose `[[trigger]]` tables are `triggers`.
    fn configured(triggers: &str) -> Vec<Trigger> {
        let text = format!("[source]\nurl = \"postgres://h/db\"\n{triggers}");
        match crate::config::parse(&text, std::path::Path::new("walhook.toml"), &|_| None) {
            Ok(c) => c.triggers,
            Err(e) => panic!("{e}"),
        }
    }

    fn keyed(mut c: Change, key: &[&str]) -> Change {
        c.key_columns = key.iter().map(|k| k.to_string()).collect();
        c.key = Some("k".into());
        c
    }

    #[test]
    fn rest_requests_take_method_path_headers_and_body_from_the_event() {
        let router = Router::new(&configured(
            r#"[[trigger]]
name = "items"
table = "items"
url = "http://h/items/{key.id}?name={record.name}"
method = { create = "POST", update = "PUT", delete = "DELETE" }
headers = { "Idempotency-Key" = "{id}", X-Type = "{type}" }
body = "{'name': record.name, 'n': record.n * 2, 'tags': [trigger, table]}"
"#,
        ));
        let ins = keyed(
            insert("items", r#"{"id":"a b/c","name":"x&y","n":21}"#),
            &["id"],
        );
        let r = router.route(&ins).remove(0);
        let shape = r.shape.as_deref().unwrap();
        assert_eq!(shape.method, Some(crate::config::HttpMethod::Post));
        assert_eq!(shape.target.as_deref(), Some("/items/a%20b%2Fc?name=x%26y"));
        assert_eq!(
            shape.headers,
            vec![
                ("idempotency-key".to_owned(), r.id.clone()),
                ("x-type".to_owned(), "create".to_owned())
            ]
        );
        // Map keys sorted: the same event always gives the same bytes.
        assert_eq!(
            String::from_utf8(r.body).unwrap(),
            r#"{"n":42,"name":"x&y","tags":["items","items"]}"#
        );
        // A delete takes its key from the old row.
        let del = keyed(
            change(ChangeKind::Delete, "items", None, Some(r#"{"id":7}"#)),
            &["id"],
        );
        let r = router.route(&del).remove(0);
        let shape = r.shape.as_deref().unwrap();
        // record.name is null for a delete: the event cannot be sent, and says why.
        let why = shape.unsendable.as_deref().unwrap();
        assert!(why.starts_with("url: `{record.name}`: "), "{why}");
        assert_eq!(
            body(&r)["type"],
            "delete",
            "an unsendable event keeps its envelope"
        );
    }

    #[test]
    fn numbers_a_double_cannot_hold_are_written_exactly() {
        let router = Router::new(&configured(
            r#"[[trigger]]
name = "items"
table = "items"
url = "http://h/items/{key.id}/{record.p}"
body = "{'id': key.id, 'p': record.p, 'big': record.p > 10.0}"
"#,
        ));
        let ins = keyed(
            insert("items", r#"{"id":123456789012345678901234,"p":12.50}"#),
            &["id"],
        );
        let r = router.route(&ins).remove(0);
        let shape = r.shape.as_deref().unwrap();
        assert_eq!(
            shape.target.as_deref(),
            Some("/items/123456789012345678901234/12.5")
        );
        assert_eq!(
            String::from_utf8(r.body).unwrap(),
            r#"{"big":true,"id":"123456789012345678901234","p":12.5}"#
        );
        assert_eq!(significant_digits("-0.00120e5"), 2);
        assert_eq!(significant_digits("1200"), 4);
        assert_eq!(significant_digits("12.00"), 2);
        assert_eq!(significant_digits("0.1234567890123456"), 16);
    }

    #[test]
    fn a_plain_trigger_has_no_shape_and_a_method_map_only_a_method() {
        let router = Router::new(&configured(
            "[[trigger]]\nname = \"a\"\ntable = \"t\"\nurl = \"http://h/\"\n\
             [[trigger]]\nname = \"b\"\ntable = \"t\"\nurl = \"http://h/\"\n\
             method = { create = \"PUT\", update = \"PATCH\", delete = \"DELETE\" }\n",
        ));
        let routed = router.route(&insert("t", r#"{"id":1}"#));
        assert!(routed[0].shape.is_none());
        let shape = routed[1].shape.as_deref().unwrap();
        assert_eq!(shape.method, Some(crate::config::HttpMethod::Put));
        assert_eq!(shape.target, None);
        assert_eq!(body(&routed[1])["type"], "create");
    }

    #[test]
    fn truncates_fire_only_triggers_that_ask() {
        let router = Router::new(&configured(
            "[[trigger]]\nname = \"rows\"\ntable = \"t\"\nurl = \"http://h/\"\n\
             [[trigger]]\nname = \"all\"\ntable = \"t\"\nurl = \"http://h/\"\n\
             events = [\"create\", \"truncate\"]\n",
        ));
        let mut t = change(ChangeKind::Truncate, "t", None, None);
        t.truncate = Some(crate::event::TruncateOptions {
            cascade: true,
            restart_identity: false,
        });
        let routed = router.route(&t);
        assert_eq!(routed.len(), 1);
        let b = body(&routed[0]);
        assert_eq!(b["type"], "truncate");
        assert_eq!(b["trigger"], "all");
        assert_eq!(b["cascade"], true);
        assert_eq!(b["restart_identity"], false);
        assert!(b["record"].is_null() && b["old_record"].is_null());
    }

    #[test]
    fn messages_fire_by_prefix() {
        let router = Router::new(&configured(
            "[[trigger]]\nname = \"exact\"\nmessage = \"orders.shipped\"\nurl = \"http://h/\"\n\
             [[trigger]]\nname = \"prefix\"\nmessage = \"orders.*\"\nurl = \"http://h/{prefix}\"\n\
             when = \"content.total > 10\"\n",
        ));
        let msg = |prefix: &str, content: &str| {
            Message::new(
                true,
                prefix.into(),
                content.as_bytes(),
                Lsn(0x10),
                Some((9, PgTimestamp(0))),
                2,
            )
        };
        let routed = router.route_message(&msg("orders.shipped", r#"{"total": 20}"#));
        assert_eq!(routed.len(), 2);
        let b = body(&routed[0]);
        assert_eq!(b["type"], "message");
        assert_eq!(b["prefix"], "orders.shipped");
        assert_eq!(b["content"]["total"], 20);
        assert_eq!(b["transactional"], true);
        assert_eq!(b["xid"], 9);
        assert_eq!(routed[0].id, "0000000000000010-2-exact");
        assert_eq!(
            routed[1].shape.as_deref().unwrap().target.as_deref(),
            Some("/orders.shipped")
        );
        // `when` on content; text content stays text.
        assert!(
            router
                .route_message(&msg("orders.paid", r#"{"total": 5}"#))
                .is_empty()
        );
        let text = router.route_message(&msg("orders.shipped", "not json"));
        assert_eq!(text.len(), 1, "content.total fails on text: filtered out");
        assert_eq!(body(&text[0])["content"], "not json");
        assert!(router.route_message(&msg("order", "{}")).is_empty());
        // A message outside any transaction has its own id form and no xid.
        let loose = Message::new(false, "orders.shipped".into(), b"{}", Lsn(0x20), None, 0);
        let r = router.route_message(&loose);
        assert_eq!(r[0].id, "0000000000000020-n-exact");
        assert!(body(&r[0])["xid"].is_null());
    }
}
