//! `walhook status`: how the slot is doing (position, lag, `wal_status`, retained WAL) and
//! each trigger's state, as text or as one JSON object; unhealthy means a non-zero exit.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use tokio_postgres::Client;

use crate::config::Config;
use crate::lsn::Lsn;
use crate::source::setup::{self, SetupError};
use crate::store::StoreError;
use crate::store::park::{self, Counts};
use crate::store::slot::{self, SlotRecord};

/// Default for `--max-lag`: a slot this far behind the server's WAL is reported unhealthy.
pub const DEFAULT_MAX_LAG: u64 = 1 << 30;

/// Why the status could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// A catalog query failed.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// Reading the walhook schema failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The slot, as `status` reports it (the `"slot"` object of `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct SlotReport {
    /// Its name.
    pub name: String,
    /// Whether it exists.
    pub exists: bool,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
    /// Its confirmed position.
    pub confirmed_lsn: Option<String>,
    /// The server's current WAL position.
    pub current_lsn: String,
    /// Bytes of WAL between the confirmed position and the server's current one.
    pub lag_bytes: Option<i64>,
    /// WAL the slot keeps on the server's disk.
    pub retained_bytes: Option<i64>,
    /// WAL that may still be written before the slot risks invalidation (null: no limit).
    pub safe_wal_bytes: Option<i64>,
    /// The server's `max_slot_wal_keep_size` (`-1`: unlimited).
    pub max_slot_wal_keep_size: String,
    /// The walsender streaming from it, if any.
    pub active_pid: Option<i32>,
    /// The position walhook last recorded in `walhook.slot_state`, if it streamed from it.
    pub recorded_lsn: Option<String>,
    /// What is wrong with it (errors make `status` exit non-zero).
    pub findings: Vec<Finding>,
}

/// One trigger (an entry of the `"triggers"` object of `--json`): each configured one, and
/// any other that still has events in `walhook.parked`.
#[derive(Debug, Clone, Serialize)]
pub struct TriggerReport {
    /// The table it names, `schema.table` (null for a message trigger, or a trigger no
    /// longer configured).
    pub table: Option<String>,
    /// The message prefix it fires on (`orders.*`), for a message trigger.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Whether the config names it.
    pub configured: bool,
    /// Its events in `walhook.parked`: pending (`parked`) and `dead`, the oldest pending
    /// one's age, the last error.
    #[serde(flatten)]
    pub park: Counts,
}

/// Everything `status` reports.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// The slot.
    pub slot: SlotReport,
    /// Each configured trigger by name.
    pub triggers: BTreeMap<String, TriggerReport>,
}

/// How serious a status finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Unhealthy: `status` exits non-zero.
    Error,
    /// Worth attention; `status` still exits 0.
    Warning,
}

/// A finding about the slot's health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// How serious.
    pub level: Level,
    /// One sentence.
    pub message: String,
}

/// What is wrong with a slot: shared by `status` and `check`. `recorded` is walhook's
/// record of it; `lag` the bytes it is behind; findings past `max_lag` are errors.
pub fn slot_findings(
    name: &str,
    state: Option<&setup::SlotState>,
    recorded: Option<&SlotRecord>,
    lag: Option<i64>,
    max_lag: Option<u64>,
) -> Vec<Finding> {
    let error = |message: String| Finding {
        level: Level::Error,
        message,
    };
    let mut out = Vec::new();
    let lost = |loss, since| {
        error(
            slot::SlotError::Lost {
                slot: name.to_string(),
                loss,
                since,
            }
            .to_string(),
        )
    };
    match (state, recorded) {
        (None, Some(r)) => out.push(lost(slot::Loss::Dropped, r.confirmed)),
        (None, None) => {}
        (Some(s), r) if s.is_lost() => out.push(lost(
            slot::Loss::Invalidated,
            r.map_or(s.confirmed_flush, |r| r.confirmed.max(s.confirmed_flush)),
        )),
        (Some(s), _) => {
            if s.wal_status.as_deref() == Some("unreserved") {
                out.push(Finding {
                    level: Level::Warning,
                    message: format!(
                        "slot {name:?} has wal_status = unreserved: it is past \
                         max_slot_wal_keep_size and Postgres will invalidate it at the next \
                         checkpoint unless it catches up"
                    ),
                });
            }
            if let (Some(lag), Some(max)) = (lag, max_lag) {
                if u64::try_from(lag).is_ok_and(|l| l > max) {
                    out.push(error(format!(
                        "slot {name:?} is {lag} bytes behind the server's WAL (more than {max})"
                    )));
                }
            }
        }
    }
    out
}

/// The recorded state of `slot`, or `None` when walhook never recorded it (or the walhook
/// schema does not exist yet). Reads only.
pub async fn recorded(client: &Client, slot_name: &str) -> Result<Option<SlotRecord>, StoreError> {
    if crate::store::current_version(client).await?.is_none()
        || !client
            .query_one("SELECT to_regclass('walhook.slot_state') IS NOT NULL", &[])
            .await
            .map_err(crate::store::sql("looking up walhook.slot_state"))?
            .try_get::<_, bool>(0)
            .map_err(crate::store::sql("looking up walhook.slot_state"))?
    {
        return Ok(None);
    }
    slot::load(client, slot_name).await
}

impl StatusReport {
    /// Reads the slot's state from `client` (the source database) and the triggers' parked
    /// events from `park_db` (the same client unless `[park] url` names another database);
    /// a slot more than `max_lag` bytes behind is unhealthy.
    pub async fn gather(
        client: &Client,
        park_db: &Client,
        config: &Config,
        max_lag: u64,
    ) -> Result<StatusReport, StatusError> {
        let name = &config.source.slot;
        let state = setup::slot_state(client, name).await?;
        let recorded = recorded(client, name).await?;
        let current: String = client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .map_err(crate::store::sql("reading the current WAL position"))?
            .try_get(0)
            .map_err(crate::store::sql("reading the current WAL position"))?;
        let current_lsn: Lsn = current.parse().unwrap_or_default();
        let slot = SlotReport {
            name: name.clone(),
            exists: state.is_some(),
            wal_status: state.as_ref().and_then(|s| s.wal_status.clone()),
            confirmed_lsn: state.as_ref().map(|s| s.confirmed_flush.to_string()),
            current_lsn: current_lsn.to_string(),
            findings: Vec::new(),
            lag_bytes: state.as_ref().map(|s| {
                i64::try_from(current_lsn.0.saturating_sub(s.confirmed_flush.0)).unwrap_or(i64::MAX)
            }),
            retained_bytes: state.as_ref().and_then(|s| s.retained_bytes),
            safe_wal_bytes: state.as_ref().and_then(|s| s.safe_wal_bytes),
            max_slot_wal_keep_size: setup::max_slot_wal_keep_size(client).await?,
            active_pid: state.as_ref().and_then(|s| s.active_pid),
            recorded_lsn: recorded.as_ref().map(|r| r.confirmed.to_string()),
        };
        let mut slot = slot;
        slot.findings = slot_findings(
            name,
            state.as_ref(),
            recorded.as_ref(),
            slot.lag_bytes,
            Some(max_lag),
        );
        if !slot.exists && recorded.is_none() {
            slot.findings.push(Finding {
                level: Level::Error,
                message: format!("slot {name:?} does not exist (walhook run or setup creates it)"),
            });
        }
        let mut counts = park::counts(park_db).await?;
        let mut triggers: BTreeMap<String, TriggerReport> = config
            .triggers
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    TriggerReport {
                        table: t.table().map(ToString::to_string),
                        message: match &t.watch {
                            crate::config::Watch::Message(m) => Some(m.to_string()),
                            crate::config::Watch::Table(_) => None,
                        },
                        configured: true,
                        park: counts.remove(&t.name).unwrap_or_default(),
                    },
                )
            })
            .collect();
        for (name, park) in counts {
            triggers.insert(
                name,
                TriggerReport {
                    table: None,
                    message: None,
                    configured: false,
                    park,
                },
            );
        }
        // Drift: a trigger's table gone, or out of the publication.
        let tables = config
            .triggers
            .iter()
            .filter_map(|t| t.table().cloned())
            .collect::<Vec<_>>();
        let names: Vec<String> = tables.iter().map(|t| t.quoted()).collect();
        let missing_tables = client
            .query(
                "SELECT n FROM unnest($1::text[]) AS n WHERE to_regclass(n) IS NULL",
                &[&names],
            )
            .await
            .map_err(crate::store::sql("looking up the triggers' tables"))?;
        for row in missing_tables {
            let table: String = row
                .try_get(0)
                .map_err(crate::store::sql("looking up the triggers' tables"))?;
            slot.findings.push(Finding {
                level: Level::Error,
                message: format!(
                    "table {table}, which a trigger names, does not exist (renamed or dropped?): \
                     walhook run refuses to start until the config names it as it is now"
                ),
            });
        }
        let publication = &config.source.publication;
        for table in setup::missing_from_publication(client, publication, &tables).await? {
            slot.findings.push(Finding {
                level: Level::Error,
                message: format!(
                    "table {table}, which a trigger names, is not in publication \
                     {publication:?}: its changes are not captured (a running walhook adds it \
                     back within seconds where it may, and says which changes were missed)"
                ),
            });
        }
        for (name, t) in &triggers {
            if t.park.dead > 0 {
                slot.findings.push(Finding {
                    level: Level::Warning,
                    message: format!(
                        "trigger {name:?} has {} dead event(s) in walhook.parked (no longer \
                         retried; `walhook replay --trigger {name}` sends them again)",
                        t.park.dead
                    ),
                });
            }
            if !t.configured && t.park.parked > 0 {
                slot.findings.push(Finding {
                    level: Level::Warning,
                    message: format!(
                        "walhook.parked holds {} pending event(s) of trigger {name:?}, which the \
                         config no longer names: nothing delivers them",
                        t.park.parked
                    ),
                });
            }
        }
        Ok(StatusReport { slot, triggers })
    }

    /// Whether nothing is wrong enough for a non-zero exit.
    pub fn healthy(&self) -> bool {
        self.slot.findings.iter().all(|f| f.level != Level::Error)
    }

    /// The report as text, one fact per line.
    pub fn text(&self) -> String {
        let s = &self.slot;
        let mut out = String::new();
        if !s.exists {
            let _ = writeln!(out, "slot {:?}: does not exist", s.name);
        } else {
            let _ = writeln!(
                out,
                "slot {:?}: {}",
                s.name,
                match s.active_pid {
                    Some(pid) => format!("streaming (walsender pid {pid})"),
                    None => "not streaming".to_string(),
                }
            );
            let _ = writeln!(
                out,
                "  confirmed {}, {} bytes behind the server's WAL at {}",
                s.confirmed_lsn.as_deref().unwrap_or("?"),
                s.lag_bytes.unwrap_or(0),
                s.current_lsn
            );
            let _ = writeln!(
                out,
                "  wal_status {}, retaining {} bytes of WAL, max_slot_wal_keep_size {}{}",
                s.wal_status.as_deref().unwrap_or("unknown"),
                s.retained_bytes.unwrap_or(0),
                s.max_slot_wal_keep_size,
                match s.safe_wal_bytes {
                    Some(b) => format!(" ({b} bytes until it is at risk)"),
                    None => " (unlimited)".to_string(),
                }
            );
        }
        for (name, t) in &self.triggers {
            let _ = write!(
                out,
                "trigger {name:?} on {}: {} parked, {} dead",
                match (&t.table, &t.message) {
                    (Some(table), _) => table.clone(),
                    (None, Some(m)) => format!("messages {m:?}"),
                    (None, None) => "(not in the config)".to_owned(),
                },
                t.park.parked,
                t.park.dead
            );
            if let Some(age) = t.park.oldest_parked_seconds {
                let age = std::time::Duration::from_secs(age.max(0.0) as u64);
                let _ = write!(
                    out,
                    ", oldest parked {} ago",
                    humantime::format_duration(age)
                );
            }
            if let Some(e) = &t.park.last_error {
                let _ = write!(out, ", last error: {e}");
            }
            let _ = writeln!(out);
        }
        for f in &self.slot.findings {
            let label = match f.level {
                Level::Error => "error",
                Level::Warning => "warning",
            };
            let _ = writeln!(out, "{label}: {}", f.message);
        }
        out
    }
}
