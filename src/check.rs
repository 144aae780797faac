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
        if t.delivery.on_4xx == config::On4xx::Dead {
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
    out
}
