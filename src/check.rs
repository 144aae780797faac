//! `walhook check`: everything `walhook run` needs, checked at once, without changing anything.

use std::fmt;
use std::path::Path;

use tokio_postgres::Client;

use crate::config;
use crate::source::conninfo::{self, ConnInfo};
use crate::source::setup;
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
    /// What was found, as one sentence.
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
#[derive(Debug, Default)]
pub struct Report {
    /// The findings.
    pub findings: Vec<Finding>,
    /// The config file itself is invalid (the database was not checked).
    pub invalid_config: bool,
}

impl Report {
    fn push(&mut self, severity: Severity, message: impl Into<String>) {
        self.findings.push(Finding {
            severity,
            message: message.into(),
        });
    }

    /// Whether `walhook run` would start cleanly.
    pub fn passed(&self) -> bool {
        self.findings.iter().all(|f| f.severity != Severity::Error)
    }
}

/// Checks the config file and, if it is valid, the database it points at.
pub async fn check(path: &Path) -> Report {
    let mut report = Report::default();
    let config = match config::load(path) {
        Ok(c) => c,
        Err(e) => {
            for line in e.to_string().lines() {
                report.push(Severity::Error, line);
            }
            report.invalid_config = true;
            return report;
        }
    };
    let router = match Router::new(&config.triggers) {
        Ok(r) => r,
        Err(e) => {
            report.push(Severity::Error, e.to_string());
            return report;
        }
    };
    report.push(
        Severity::Ok,
        format!(
            "{}: {} trigger(s) on {} table(s)",
            path.display(),
            config.triggers.len(),
            router.tables().len()
        ),
    );
    for t in &config.triggers {
        if t.on_4xx == config::On4xx::Dead {
            report.push(
                Severity::Warning,
                format!(
                    "trigger {:?}: on_4xx = \"dead\" is accepted but dead-lettering is not built \
                     yet; 4xx answers are retried like 5xx",
                    t.name
                ),
            );
        }
    }
    let conninfo = match ConnInfo::parse(&config.source.url) {
        Ok(c) => c,
        Err(e) => {
            report.push(Severity::Error, format!("source.url: {e}"));
            return report;
        }
    };
    let client = match conninfo::connect_sql(&conninfo).await {
        Ok(c) => c,
        Err(e) => {
            report.push(
                Severity::Error,
                format!("cannot connect to {conninfo}: {e}"),
            );
            return report;
        }
    };
    report.push(Severity::Ok, format!("connected to {conninfo}"));
    if let Err(e) = database(&client, &config, &router, &mut report).await {
        report.push(Severity::Error, e.to_string());
    }
    report
}

async fn database(
    client: &Client,
    config: &config::Config,
    router: &Router,
    report: &mut Report,
) -> Result<(), setup::SetupError> {
    for result in [
        setup::check_wal_level(client).await,
        setup::check_replication_role(client).await,
    ] {
        match result {
            Ok(()) => {}
            Err(e @ (setup::SetupError::WalLevel(_) | setup::SetupError::NoReplication(_))) => {
                report.push(Severity::Error, e.to_string());
            }
            Err(e) => return Err(e),
        }
    }
    let facts = setup::table_facts(client, &router.tables()).await?;
    for t in &facts {
        if t.kind.is_none() {
            report.push(
                Severity::Error,
                format!("table {} does not exist (named by a trigger)", t.name()),
            );
        } else if let Some(problem) = t.identity_problem() {
            report.push(Severity::Error, problem);
        }
    }
    for (i, trigger) in config.triggers.iter().enumerate() {
        if !router.needs_old_values(i) {
            continue;
        }
        let Some(t) = facts
            .iter()
            .find(|t| t.schema == trigger.schema && t.table == trigger.table && t.kind.is_some())
        else {
            continue;
        };
        if t.identity != 'f' {
            report.push(
                Severity::Warning,
                format!(
                    "trigger {:?} reads old values (`changed` or old_record in `when`), but \
                     {} has REPLICA IDENTITY {}: updates carry no old row, so `changed` \
                     fires on every update and old_record is null \
                     (fix: ALTER TABLE {}.{} REPLICA IDENTITY FULL)",
                    trigger.name,
                    t.name(),
                    identity_name(t.identity),
                    setup::quote_ident(&trigger.schema),
                    setup::quote_ident(&trigger.table),
                ),
            );
        }
    }
    let state = setup::slot_state(client, &config.source.slot).await?;
    let recorded = match crate::status::recorded(client, &config.source.slot).await {
        Ok(r) => r,
        Err(e) => {
            report.push(Severity::Error, e.to_string());
            None
        }
    };
    let findings = crate::status::slot_findings(
        &config.source.slot,
        state.as_ref(),
        recorded.as_ref(),
        None,
        None,
    );
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
            format!(
                "slot {:?} does not exist yet; run creates it",
                config.source.slot
            ),
        ),
        Some(state) if state.plugin != "pgoutput" => report.push(
            Severity::Error,
            format!(
                "slot {:?} uses plugin {:?}, walhook needs pgoutput",
                config.source.slot, state.plugin
            ),
        ),
        Some(state) => report.push(
            Severity::Ok,
            format!(
                "slot {:?} confirmed up to {}, wal_status {}{} (max_slot_wal_keep_size {keep}){}",
                config.source.slot,
                state.confirmed_flush,
                state.wal_status.as_deref().unwrap_or("unknown"),
                state
                    .retained_bytes
                    .map(|b| format!(", retaining {b} bytes of WAL"))
                    .unwrap_or_default(),
                state
                    .active_pid
                    .map(|p| format!(", in use by pid {p} (this instance would wait as a standby)"))
                    .unwrap_or_default()
            ),
        ),
    }
    let exists = setup::check_publication(client, &config.source.publication)
        .await
        .is_ok();
    report.push(
        Severity::Ok,
        if exists {
            format!(
                "publication {:?} exists; run sets its tables to the triggers' tables",
                config.source.publication
            )
        } else {
            format!(
                "publication {:?} does not exist yet; run creates it",
                config.source.publication
            )
        },
    );
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
