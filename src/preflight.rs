//! The one preflight: everything about the database that would make `walhook run` refuse to
//! start, checked without changing anything. `walhook check` prints it, `run` and `setup`
//! refuse on its errors with the same messages, so `check` says yes exactly when `run` starts.
//!
//! What is checked, in order:
//!
//! 1. `wal_level = logical`, and the role may open replication connections.
//! 2. Every table a trigger names exists and has a replica identity Postgres can publish
//!    (publishing a table without one makes Postgres reject the application's UPDATEs).
//! 3. Every column named by `changed`, `columns` and `when` (`record.x`, `old_record.x`)
//!    exists in its table: a misspelt column would make a trigger silently never fire, drop
//!    a field, or make every `when` evaluation an error.
//! 4. The slot, when it exists, is a pgoutput slot of this database.
//! 5. The role may do what `run` will do to the publication: create it (CREATE on the
//!    database and ownership of every table) or change its table list (ownership of the
//!    publication and the tables). A publication an owner created with exactly the triggers'
//!    tables needs neither.
//!
//! Warnings do not stop `run`: a trigger that reads old values of a table whose updates do
//! not carry them.

use std::collections::BTreeSet;
use std::fmt;

use tokio_postgres::Client;

use crate::config::{self, Config, TableName, Trigger};
use crate::source::setup::{self, SetupError, TableFacts};
use crate::triggers::Router;

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// `walhook run` would refuse to start.
    Error,
    /// It would start, but something will not work as the config suggests.
    Warning,
    /// For information.
    Ok,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// How serious.
    pub severity: Severity,
    /// What was found, as one sentence (with the fix, for errors).
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Ok => "ok",
        };
        write!(f, "{label}: {}", self.message)
    }
}

/// Every finding, in the order checked.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// The findings.
    pub findings: Vec<Finding>,
}

impl Report {
    /// Adds a finding.
    pub fn push(&mut self, severity: Severity, message: impl Into<String>) {
        self.findings.push(Finding {
            severity,
            message: message.into(),
        });
    }

    /// Whether `walhook run` would start.
    pub fn passed(&self) -> bool {
        self.findings.iter().all(|f| f.severity != Severity::Error)
    }

    /// The messages of the errors: why `run` refuses.
    pub fn errors(&self) -> Vec<String> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .map(|f| f.message.clone())
            .collect()
    }
}

/// Why `run` or `setup` refuses to start: every preflight error, one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct Refused(pub Vec<String>);

/// Runs the preflight on `client`'s database. An `Err` is a query that failed (the
/// connection dropped, say), not a finding.
pub async fn database(
    client: &Client,
    config: &Config,
    router: &Router,
) -> Result<Report, SetupError> {
    let mut report = Report::default();
    for result in [
        setup::check_wal_level(client).await,
        setup::check_replication_role(client).await,
    ] {
        match result {
            Ok(()) => {}
            Err(e @ (SetupError::WalLevel(_) | SetupError::NoReplication(_))) => {
                report.push(Severity::Error, e.to_string());
            }
            Err(e) => return Err(e),
        }
    }
    let tables = router.tables();
    let facts = setup::table_facts(client, &tables).await?;
    for t in &facts {
        if t.kind.is_none() {
            let named_by = triggers_of(&config.triggers, &t.table);
            report.push(
                Severity::Error,
                format!("table {} does not exist (named by {named_by})", t.name()),
            );
        } else if let Some(problem) = t.identity_problem() {
            report.push(Severity::Error, problem);
        }
    }
    messages_and_truncates(client, config, &mut report).await?;
    for trigger in &config.triggers {
        shape_warnings(trigger, &mut report);
    }
    for trigger in &config.triggers {
        let Some(t) = facts
            .iter()
            .find(|f| Some(&f.table) == trigger.table() && f.kind.is_some())
        else {
            continue;
        };
        columns(trigger, t, &mut report);
        if router.needs_old_values(trigger.id) && t.identity != 'f' {
            report.push(
                Severity::Warning,
                format!(
                    "trigger {:?} reads old values (`changed` or old_record in `when`), but \
                     {} has REPLICA IDENTITY {}: updates carry no old row, so `changed` \
                     fires on every update and old_record is null \
                     (fix: ALTER TABLE {} REPLICA IDENTITY FULL)",
                    trigger.name,
                    t.name(),
                    identity_name(t.identity),
                    t.table.quoted(),
                ),
            );
        }
    }
    slot(client, &config.source.slot, &mut report).await?;
    publication(client, &config.source.publication, &facts, &mut report).await?;
    Ok(report)
}

/// Message triggers need Postgres 14 (pgoutput's `messages` option); truncate events need
/// a publication that publishes truncates.
async fn messages_and_truncates(
    client: &Client,
    config: &Config,
    report: &mut Report,
) -> Result<(), SetupError> {
    let message_triggers: Vec<String> = config
        .triggers
        .iter()
        .filter(|t| matches!(t.watch, config::Watch::Message(_)))
        .map(|t| format!("{:?}", t.name))
        .collect();
    if !message_triggers.is_empty() {
        let version = setup::server_version_num(client).await?;
        if let Some(problem) = messages_unsupported(version, &message_triggers) {
            report.push(Severity::Error, problem);
        }
    }
    let truncating: Vec<String> = config
        .triggers
        .iter()
        .filter(|t| t.route.events.contains(&crate::event::ChangeKind::Truncate))
        .map(|t| format!("{:?}", t.name))
        .collect();
    if !truncating.is_empty()
        && setup::publishes_truncate(client, &config.source.publication).await? == Some(false)
    {
        report.push(
            Severity::Error,
            format!(
                "triggers {} ask for truncate events, but publication {:?} does not publish \
                 truncates (fix: ALTER PUBLICATION {} SET (publish = 'insert, update, delete, truncate'))",
                truncating.join(", "),
                config.source.publication,
                setup::quote_ident(&config.source.publication)
            ),
        );
    }
    Ok(())
}

/// Why message triggers cannot run on a server of `server_version_num` `version`, if they
/// cannot: pgoutput sends logical decoding messages from PostgreSQL 14 on.
fn messages_unsupported(version: u32, triggers: &[String]) -> Option<String> {
    (version < 140_000).then(|| {
        format!(
            "message triggers ({}) need PostgreSQL 14 or later: this server is {}.{}, whose \
             pgoutput cannot send logical decoding messages",
            triggers.join(", "),
            version / 10_000,
            version % 10_000
        )
    })
}

/// Expressions that will not do what they seem to: a `when` or request template that reads
/// row values on events that have none, and per-event request shapes that keep `batch` from
/// filling requests.
fn shape_warnings(trigger: &Trigger, report: &mut Report) {
    use crate::event::ChangeKind;
    let (route, spec) = (&trigger.route, &trigger.delivery);
    let mut warn = |message: String| {
        report.push(
            Severity::Warning,
            format!("trigger {:?} {message}", trigger.name),
        );
    };
    // (key, the columns it reads, whether its source names truncate, delete)
    let mut exprs: Vec<(&str, &[config::RowColumn], bool, bool)> = Vec::new();
    fn of<'a>(
        key: &'a str,
        t: &'a config::template::Template,
    ) -> (&'a str, &'a [config::RowColumn], bool, bool) {
        (
            key,
            &t.columns,
            t.mentions("truncate"),
            t.mentions("delete"),
        )
    }
    if let Some(url) = &spec.url_template {
        exprs.push(of("url", url));
    }
    for (_, t) in &spec.header_templates {
        exprs.push(of("headers", t));
    }
    if let Some(t) = spec.nats.as_ref().and_then(|n| n.subject_template.as_ref()) {
        exprs.push(of("subject", t));
    }
    if let Some(body) = &spec.body {
        let mentions = |w| body.source.contains(w);
        exprs.push((
            "body",
            &body.columns,
            mentions("truncate"),
            mentions("delete"),
        ));
    }
    let fires = |k: ChangeKind| route.events.contains(&k);
    if let Some(when) = route.when.as_ref().filter(|w| {
        fires(ChangeKind::Truncate) && !w.columns.is_empty() && !w.source.contains("truncate")
    }) {
        let c = &when.columns[0];
        warn(format!(
            "fires on truncate, but its `when` reads {}.{}: a truncate has no row, so `when` is \
             false for it (write `type == \"truncate\" || …` to keep them)",
            c.variable, c.column
        ));
    }
    for (key, columns, names_truncate, names_delete) in &exprs {
        if let Some(c) = columns
            .first()
            .filter(|_| fires(ChangeKind::Truncate) && !names_truncate)
        {
            warn(format!(
                "fires on truncate, but its `{key}` reads {}.{}: a truncate has no row, so its \
                 truncate events cannot be sent (they fail as unsendable)",
                c.variable, c.column
            ));
        }
        let on_record = columns.iter().find(|c| c.variable == "record");
        if let Some(c) = on_record.filter(|_| fires(ChangeKind::Delete) && !names_delete) {
            warn(format!(
                "fires on delete, but its `{key}` reads record.{}: record is null for a delete, \
                 so its delete events cannot be sent (read key.{0} or old_record.{0})",
                c.column
            ));
        }
    }
    if spec.batch.get() > 1 && (spec.url_template.is_some() || !spec.header_templates.is_empty()) {
        warn(format!(
            "has batch = {}, but a request holds events of one rendered URL and header values \
             only: with `url` or `headers` templates that differ per event, requests carry \
             fewer events (one each when every event renders its own)",
            spec.batch
        ));
    }
}

/// `trigger "a"` or `triggers "a", "b"`.
fn triggers_of(triggers: &[Trigger], table: &TableName) -> String {
    let names: Vec<String> = triggers
        .iter()
        .filter(|t| t.table() == Some(table))
        .map(|t| format!("{:?}", t.name))
        .collect();
    match names.len() {
        1 => format!("trigger {}", names[0]),
        _ => format!("triggers {}", names.join(", ")),
    }
}

/// Columns named by `changed`, `columns`, `when`, `body` and the templates that the table
/// does not have, and `key.x` reads of a column that is not in the table's key.
fn columns<'a>(trigger: &'a Trigger, table: &TableFacts, report: &mut Report) {
    let route = &trigger.route;
    let mut named: Vec<(&str, &str)> = Vec::new();
    named.extend(route.changed.iter().map(|c| ("changed", c.as_str())));
    named.extend(
        route
            .columns
            .iter()
            .flatten()
            .map(|c| ("columns", c.as_str())),
    );
    // Expressions: (the key that holds it, the variable, the column).
    let spec = &trigger.delivery;
    let mut read: Vec<(&str, &str, &str)> = Vec::new();
    let mut reads = |key: &'static str, columns: &'a [config::RowColumn]| {
        read.extend(columns.iter().map(|c| (key, c.variable, c.column.as_str())));
    };
    if let Some(when) = &route.when {
        reads("when", &when.columns);
    }
    if let Some(body) = &spec.body {
        reads("body", &body.columns);
    }
    if let Some(url) = &spec.url_template {
        reads("url", &url.columns);
    }
    for (_, t) in &spec.header_templates {
        reads("headers", &t.columns);
    }
    if let Some(subject) = spec.nats.as_ref().and_then(|n| n.subject_template.as_ref()) {
        reads("subject", &subject.columns);
    }
    named.extend(read.iter().map(|(_, v, c)| (*v, *c)));
    let fail = |report: &mut Report, message: String| {
        report.push(
            Severity::Error,
            format!("trigger {:?}: {message}", trigger.name),
        );
    };
    for (key, column) in named {
        let holder = || {
            read.iter()
                .find(|(_, v, c)| *v == key && *c == column)
                .map_or("when", |(k, ..)| *k)
        };
        if key == "key" {
            if table.key_columns.iter().any(|c| c == column) {
                continue;
            }
            let why = if table.key_columns.is_empty() {
                "has no replica identity key, so `key` is null".to_owned()
            } else {
                format!("has key columns {}", table.key_columns.join(", "))
            };
            fail(
                report,
                format!(
                    "{} reads key.{column}, but {} {why}; read record.{column} instead",
                    holder(),
                    table.name()
                ),
            );
            continue;
        }
        if table.columns.iter().any(|c| c == column) {
            continue;
        }
        let place = match key {
            "record" | "old_record" => format!("{} reads {key}.{column}", holder()),
            _ => format!("{key} names column {column:?}"),
        };
        let hint = config::closest(&table.columns, column)
            .map(|near| format!(" (did you mean {near:?}?)"))
            .unwrap_or_default();
        fail(
            report,
            format!(
                "{place}, but {} has no such column{hint}; its columns are {}",
                table.name(),
                table.columns.join(", ")
            ),
        );
    }
}

async fn slot(client: &Client, slot: &str, report: &mut Report) -> Result<(), SetupError> {
    let database = setup::current_database(client).await?;
    let state = setup::slot_state(client, slot).await?;
    let recorded = match crate::status::recorded(client, slot).await {
        Ok(r) => r,
        Err(e) => {
            report.push(Severity::Error, e.to_string());
            None
        }
    };
    if recorded.is_none() && !store_writable(client).await? {
        report.push(
            Severity::Warning,
            format!(
                "schema walhook does not exist and this role may not create it (CREATE on the \
                 database): run cannot record its slot, so a slot dropped under it would not be \
                 noticed, and cannot park events, so a target that keeps failing holds the slot \
                 (the server keeps WAL until it answers); {}",
                crate::store::SCHEMA_ADVICE
            ),
        );
    }
    let findings =
        crate::status::slot_findings(slot, state.as_ref(), recorded.as_ref(), None, None);
    let slot_ok = findings.is_empty();
    for f in findings {
        let severity = match f.level {
            crate::status::Level::Error => Severity::Error,
            crate::status::Level::Warning => Severity::Warning,
        };
        report.push(severity, f.message);
    }
    let keep = setup::max_slot_wal_keep_size(client).await?;
    match state {
        None if !slot_ok => {}
        Some(state) if state.is_lost() => {}
        None => report.push(
            Severity::Ok,
            format!("slot {slot:?} does not exist yet; run creates it"),
        ),
        Some(state) => match setup::slot_mismatch(slot, &state, &database) {
            Some(e) => report.push(Severity::Error, e.to_string()),
            None => report.push(
                Severity::Ok,
                format!(
                    "slot {slot:?} confirmed up to {}, wal_status {}{} \
                     (max_slot_wal_keep_size {keep}){}",
                    state.confirmed_flush,
                    state.wal_status.as_deref().unwrap_or("unknown"),
                    state
                        .retained_bytes
                        .map(|b| format!(", retaining {b} bytes of WAL"))
                        .unwrap_or_default(),
                    state
                        .active_pid
                        .map(|p| format!(
                            ", in use by pid {p} (this instance would wait as a standby)"
                        ))
                        .unwrap_or_default()
                ),
            ),
        },
    }
    Ok(())
}

/// Whether `run` can keep its state: the walhook schema exists, or the role may create it.
async fn store_writable(client: &Client) -> Result<bool, SetupError> {
    let row = client
        .query_one(
            "SELECT to_regnamespace('walhook') IS NOT NULL \
                    OR has_database_privilege(current_database(), 'CREATE')",
            &[],
        )
        .await
        .map_err(|e| SetupError::Sql {
            context: "looking up schema walhook".into(),
            error: e,
        })?;
    row.try_get(0).map_err(|e| SetupError::Sql {
        context: "looking up schema walhook".into(),
        error: e,
    })
}

/// Whether the role may create or alter the publication as `run` will.
async fn publication(
    client: &Client,
    publication: &str,
    facts: &[TableFacts],
    report: &mut Report,
) -> Result<(), SetupError> {
    let access = setup::publication_access(client, publication).await?;
    let wanted: BTreeSet<TableName> = facts.iter().map(|t| t.table.clone()).collect();
    let list = facts
        .iter()
        .map(|t| t.table.quoted())
        .collect::<Vec<_>>()
        .join(", ");
    let quoted = setup::quote_ident(publication);
    let role = &access.role;
    let not_owned: Vec<String> = facts
        .iter()
        .filter(|t| t.kind.is_some() && !t.owned)
        .map(TableFacts::name)
        .collect();
    let Some(existing) = &access.existing else {
        let mut missing = Vec::new();
        if !access.superuser && !access.may_create {
            missing.push(format!("CREATE on database {:?}", access.database));
        }
        if !access.superuser && !not_owned.is_empty() {
            missing.push(format!("ownership of {}", not_owned.join(", ")));
        }
        if missing.is_empty() {
            report.push(
                Severity::Ok,
                format!("publication {publication:?} does not exist yet; run creates it"),
            );
        } else {
            report.push(
                Severity::Error,
                format!(
                    "publication {publication:?} does not exist, and role {role:?} may not \
                     create it (that needs {}); have the tables' owner run: \
                     CREATE PUBLICATION {quoted} FOR TABLE {list}",
                    missing.join(" and ")
                ),
            );
        }
        return Ok(());
    };
    let via_root = facts.iter().any(|t| t.kind == Some('p'));
    let tables_differ = !existing.all_tables && existing.tables != wanted;
    let needs_root = via_root && !existing.via_root;
    if !tables_differ && !needs_root {
        report.push(
            Severity::Ok,
            format!("publication {publication:?} publishes the triggers' tables"),
        );
        return Ok(());
    }
    let mut missing = Vec::new();
    if !access.superuser && !existing.owned {
        missing.push(format!("ownership of publication {publication:?}"));
    }
    let added: Vec<String> = facts
        .iter()
        .filter(|t| t.kind.is_some() && !t.owned && !existing.tables.contains(&t.table))
        .map(TableFacts::name)
        .collect();
    if !access.superuser && tables_differ && !added.is_empty() {
        missing.push(format!("ownership of {}", added.join(", ")));
    }
    let fix = if needs_root && !tables_differ {
        format!("ALTER PUBLICATION {quoted} SET (publish_via_partition_root = true)")
    } else {
        format!("ALTER PUBLICATION {quoted} SET TABLE {list}")
    };
    if missing.is_empty() {
        report.push(
            Severity::Ok,
            format!(
                "publication {publication:?} exists; run sets its tables to the triggers' tables"
            ),
        );
    } else {
        report.push(
            Severity::Error,
            format!(
                "publication {publication:?} does not publish exactly the triggers' tables, and \
                 role {role:?} may not change it (that needs {}); have its owner run: {fix}",
                missing.join(" and ")
            ),
        );
    }
    Ok(())
}

fn identity_name(identity: char) -> &'static str {
    match identity {
        'd' => "DEFAULT",
        'n' => "NOTHING",
        'i' => "USING INDEX",
        'f' => "FULL",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_triggers_need_postgres_14() {
        let names = ["\"shipped\"".to_owned()];
        assert_eq!(
            messages_unsupported(130_018, &names).as_deref(),
            Some(
                "message triggers (\"shipped\") need PostgreSQL 14 or later: this server is 13.18, \
                 whose pgoutput cannot send logical decoding messages"
            )
        );
        assert_eq!(messages_unsupported(140_000, &names), None);
        assert_eq!(messages_unsupported(180_001, &names), None);
    }
}
