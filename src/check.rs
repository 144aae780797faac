//! `walhook check`: the config file, then the [`preflight`](crate::preflight) that `run`
//! refuses on, printed in full without changing anything.

use std::path::Path;

use crate::config;
use crate::preflight::{self, Report, Severity};
use crate::source::conninfo::{self, ConnInfo};
use crate::triggers::Router;

/// What `check` found.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Every finding, in the order checked.
    pub report: Report,
    /// The config file itself is invalid (the database was not checked).
    pub invalid_config: bool,
}

/// Checks the config file and, if it is valid, the database it points at.
pub async fn check(path: &Path) -> Outcome {
    let mut out = Outcome::default();
    let report = &mut out.report;
    let config = match config::load(path) {
        Ok(c) => c,
        Err(e) => {
            for line in e.to_string().lines() {
                report.push(Severity::Error, line);
            }
            out.invalid_config = true;
            return out;
        }
    };
    let router = Router::new(&config.triggers);
    let on_messages = config
        .triggers
        .iter()
        .filter(|t| t.table().is_none())
        .count();
    let messages = match on_messages {
        0 => String::new(),
        n => format!(" and {n} on messages"),
    };
    report.push(
        Severity::Ok,
        format!(
            "{}: {} trigger(s) on {} table(s){messages}",
            path.display(),
            config.triggers.len() - on_messages,
            router.tables().len()
        ),
    );
    let conninfo = match ConnInfo::parse(&config.source.url) {
        Ok(c) => c,
        Err(e) => {
            report.push(Severity::Error, format!("source.url: {e}"));
            return out;
        }
    };
    let client = match conninfo::connect_sql(&conninfo).await {
        Ok(c) => c,
        Err(e) => {
            report.push(
                Severity::Error,
                format!("cannot connect to {conninfo}: {e}"),
            );
            return out;
        }
    };
    report.push(Severity::Ok, format!("connected to {conninfo}"));
    match preflight::database(&client, &config, &router).await {
        Ok(db) => report.findings.extend(db.findings),
        Err(e) => report.push(Severity::Error, e.to_string()),
    }
    if let Some(park) = &config.park {
        park_database(&park.url, report).await;
    }
    for t in &config.triggers {
        if let Some(nats) = &t.delivery.nats {
            jetstream(t, nats, report).await;
        }
    }
    out
}

/// A JetStream trigger: a stream captures each of its subjects (those that do not depend on
/// the row are worked out for every event type it fires), and its duplicate window covers
/// `retry.max`. Run starts without them (events are retried and parked until a stream
/// exists), so these are warnings.
async fn jetstream(
    t: &crate::config::Trigger,
    nats: &crate::config::NatsSpec,
    report: &mut Report,
) {
    let subjects: Vec<String> = match &nats.subject_template {
        None => vec![nats.subject.clone()],
        Some(template) => {
            let types: Vec<&str> = match t.table() {
                Some(_) => t.route.events.iter().map(|k| k.as_str()).collect(),
                None => vec!["message"],
            };
            let mut out = Vec::new();
            for ty in types {
                let mut ctx = cel::Context::default();
                for v in crate::config::WHEN_VARIABLES {
                    ctx.add_variable_from_value(*v, cel::Value::Null);
                }
                ctx.add_variable_from_value("type", ty);
                ctx.add_variable_from_value("trigger", t.name.as_str());
                if let Some(table) = t.table() {
                    ctx.add_variable_from_value("schema", table.schema.as_str());
                    ctx.add_variable_from_value("table", table.name.as_str());
                }
                match template.render(&ctx) {
                    Ok(s) if !out.contains(&s) => out.push(s),
                    Ok(_) => {}
                    Err(_) => {
                        report.push(
                            Severity::Ok,
                            format!(
                                "trigger {:?}: its subject depends on each event, so which \
                                 stream captures it is not checked",
                                t.name
                            ),
                        );
                        return;
                    }
                }
            }
            out
        }
    };
    let timeout = t.delivery.timeout.min(std::time::Duration::from_secs(5));
    for subject in subjects {
        match crate::delivery::check_nats_subject(&t.name, nats, &subject, timeout).await {
            Ok((stream, window)) if window < t.delivery.retry.max => report.push(
                Severity::Warning,
                format!(
                    "trigger {:?}: stream {stream:?} captures {subject:?}, but its duplicate \
                     window ({}) is shorter than retry.max ({}): an event sent again after the \
                     window would be stored twice (raise the stream's duplicate_window)",
                    t.name,
                    humantime::format_duration(window),
                    humantime::format_duration(t.delivery.retry.max)
                ),
            ),
            Ok((stream, _)) => report.push(
                Severity::Ok,
                format!(
                    "trigger {:?}: stream {stream:?} captures {subject:?}",
                    t.name
                ),
            ),
            Err(e) => report.push(
                Severity::Warning,
                format!(
                    "trigger {:?}: {e}; run retries (and parks) its events until a stream \
                     captures the subject",
                    t.name
                ),
            ),
        }
    }
}

/// `[park] url`: reachable, and its walhook schema present or creatable.
async fn park_database(url: &str, report: &mut Report) {
    let conninfo = match ConnInfo::parse(url) {
        Ok(c) => c,
        Err(e) => return report.push(Severity::Error, format!("park.url: {e}")),
    };
    let client = match conninfo::connect_sql(&conninfo).await {
        Ok(c) => c,
        Err(e) => {
            return report.push(
                Severity::Error,
                format!("cannot connect to the park database {conninfo}: {e}"),
            );
        }
    };
    let found = client
        .query_one(
            "SELECT to_regclass('walhook.parked') IS NOT NULL, \
                    has_database_privilege(current_database(), 'CREATE') \
                    OR (to_regnamespace('walhook') IS NOT NULL \
                        AND has_schema_privilege('walhook', 'CREATE'))",
            &[],
        )
        .await;
    let found = found.and_then(|row| Ok((row.try_get::<_, bool>(0)?, row.try_get::<_, bool>(1)?)));
    match found {
        Ok((true, _)) => report.push(
            Severity::Ok,
            format!("parked events go to walhook.parked in {conninfo}"),
        ),
        Ok((false, true)) => report.push(
            Severity::Ok,
            format!("park database {conninfo}: run creates the walhook schema there"),
        ),
        Ok((false, false)) => report.push(
            Severity::Warning,
            format!(
                "park database {conninfo}: walhook.parked does not exist and this role may not \
                 create it, so parking is off (a failing target holds the slot); {}",
                crate::store::SCHEMA_ADVICE
            ),
        ),
        Err(e) => report.push(
            Severity::Error,
            format!(
                "park database {conninfo}: {}",
                crate::source::connection::describe_sql_error(&e)
            ),
        ),
    }
}
