//! The row change decoded from the slot, and the webhook envelope built from it.

use std::fmt::Write as _;
use std::sync::Arc;

use serde::Serialize;

use crate::lsn::Lsn;
use crate::source::pgoutput::PgTimestamp;

/// A row as JSON: column name → value, in table column order.
pub type Row = serde_json::Map<String, serde_json::Value>;

/// What happened to the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// INSERT.
    Create,
    /// UPDATE.
    Update,
    /// DELETE.
    Delete,
    /// TRUNCATE (one event per truncated table; only for triggers that ask for it).
    Truncate,
}

impl ChangeKind {
    /// The name used in config files and events.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Create => "create",
            ChangeKind::Update => "update",
            ChangeKind::Delete => "delete",
            ChangeKind::Truncate => "truncate",
        }
    }
}

/// One committed row change, with its values already converted to JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Insert, update or delete.
    pub kind: ChangeKind,
    /// The table's OID (from its Relation message): what triggers are bound to, so a
    /// renamed table keeps firing them.
    pub relation: u32,
    /// Schema of the table (its current name).
    pub schema: Arc<str>,
    /// Table name (its current name).
    pub table: Arc<str>,
    /// The new row; `None` for deletes.
    pub record: Option<Row>,
    /// The old row (FULL), the old key (deletes, key-changing updates), or `None`.
    pub old_record: Option<Row>,
    /// Columns whose value changed, for updates whose old row is known.
    pub changed: Option<Vec<String>>,
    /// Columns whose unchanged TOASTed value Postgres did not send.
    pub unchanged_toast: Vec<String>,
    /// LSN of the transaction's commit record.
    pub commit_lsn: Lsn,
    /// Transaction id.
    pub xid: u32,
    /// Commit time.
    pub committed_at: PgTimestamp,
    /// Position of this change among its transaction's changes, from 0.
    pub seq: u64,
    /// The row's identity (its replica identity key values as JSON text), used to keep one
    /// row's events in order; `None` when the table has no key.
    pub key: Option<String>,
    /// The names of the columns that make up `key` (the `key` variable of templates).
    pub key_columns: Arc<[String]>,
    /// For a truncate: its options.
    pub truncate: Option<TruncateOptions>,
}

/// TRUNCATE's options, as the event's `cascade` and `restart_identity` fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct TruncateOptions {
    /// TRUNCATE … CASCADE.
    pub cascade: bool,
    /// TRUNCATE … RESTART IDENTITY.
    pub restart_identity: bool,
}

/// A logical decoding message (`pg_logical_emit_message(transactional, prefix, content)`).
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Emitted inside a transaction: delivered only if it commits, in commit order.
    pub transactional: bool,
    /// The prefix the emitter gave.
    pub prefix: String,
    /// The content, parsed when it is JSON, else the text (invalid UTF-8 replaced).
    pub content: serde_json::Value,
    /// The commit LSN of its transaction; for a non-transactional message, its own LSN.
    pub commit_lsn: Lsn,
    /// Its transaction (transactional messages only).
    pub xid: Option<u32>,
    /// Its transaction's commit time (transactional messages only).
    pub committed_at: Option<PgTimestamp>,
    /// Position among its transaction's changes and messages, from 0.
    pub seq: u64,
}

impl Message {
    /// The message as its content bytes arrived.
    pub fn new(
        transactional: bool,
        prefix: String,
        content: &[u8],
        commit_lsn: Lsn,
        txn: Option<(u32, PgTimestamp)>,
        seq: u64,
    ) -> Message {
        let content = serde_json::from_slice(content).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(content).into_owned())
        });
        Message {
            transactional,
            prefix,
            content,
            commit_lsn,
            xid: txn.map(|t| t.0),
            committed_at: txn.map(|t| t.1),
            seq,
        }
    }

    /// The event id (as [`Change::event_id`]: stable, free of '.'). A message outside any
    /// transaction is `{lsn}-n-{trigger}`: its LSN is where its record ends, where the next
    /// transaction's commit record may start.
    pub fn event_id(&self, trigger: Option<&str>) -> String {
        let mut id = match self.xid {
            Some(_) => format!("{:016x}-{:x}", self.commit_lsn.0, self.seq),
            None => format!("{:016x}-n", self.commit_lsn.0),
        };
        if let Some(t) = trigger {
            let _ = write!(id, "-{t}");
        }
        id
    }

    /// The webhook body (the README's "Events" section describes each field).
    pub fn to_json(&self, id: &str, trigger: Option<&str>) -> Vec<u8> {
        #[derive(Serialize)]
        struct Body<'a> {
            id: &'a str,
            #[serde(rename = "type")]
            kind: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            trigger: Option<&'a str>,
            prefix: &'a str,
            content: &'a serde_json::Value,
            transactional: bool,
            commit_lsn: Lsn,
            xid: Option<u32>,
            committed_at: Option<String>,
        }
        serde_json::to_vec(&Body {
            id,
            kind: "message",
            trigger,
            prefix: &self.prefix,
            content: &self.content,
            transactional: self.transactional,
            commit_lsn: self.commit_lsn,
            xid: self.xid,
            committed_at: self.committed_at.map(rfc3339),
        })
        .unwrap_or_default()
    }
}

impl Change {
    /// The event id: the same for the same change every time it is decoded, and free of '.'
    /// (Standard Webhooks signs `id.timestamp.body`). A trigger name makes it unique per
    /// trigger when one change fires several.
    pub fn event_id(&self, trigger: Option<&str>) -> String {
        let mut id = format!("{:016x}-{:x}", self.commit_lsn.0, self.seq);
        if let Some(t) = trigger {
            let _ = write!(id, "-{t}");
        }
        id
    }
}

/// The webhook body for one change (the README's "Events" section describes each field).
#[derive(Debug, Clone, Serialize)]
pub struct Event<'a> {
    /// Stable event id.
    pub id: String,
    /// create | update | delete.
    #[serde(rename = "type")]
    pub kind: ChangeKind,
    /// The trigger that fired; absent for `walhook tail`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trigger: Option<&'a str>,
    /// Schema of the table.
    pub schema: &'a str,
    /// Table name.
    pub table: &'a str,
    /// New row, null for deletes.
    pub record: Option<&'a Row>,
    /// Old row or key, or null.
    pub old_record: Option<&'a Row>,
    /// Changed columns (updates, when known).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed: Option<&'a [String]>,
    /// Columns whose unchanged TOASTed value was not sent.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub unchanged_toast: &'a [String],
    /// Commit LSN, as `16/B374D848`.
    pub commit_lsn: Lsn,
    /// Transaction id.
    pub xid: u32,
    /// Commit time, RFC 3339 UTC with microseconds.
    pub committed_at: String,
    /// A truncate's options (`cascade`, `restart_identity`), flattened into the event.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub truncate: Option<TruncateOptions>,
}

impl<'a> Event<'a> {
    /// The event for `change`, with rows as given (a trigger may pass projected rows).
    pub fn new(
        change: &'a Change,
        trigger: Option<&'a str>,
        record: Option<&'a Row>,
        old_record: Option<&'a Row>,
    ) -> Event<'a> {
        Event {
            id: change.event_id(trigger),
            kind: change.kind,
            trigger,
            schema: &change.schema,
            table: &change.table,
            record,
            old_record,
            changed: change.changed.as_deref(),
            unchanged_toast: &change.unchanged_toast,
            commit_lsn: change.commit_lsn,
            xid: change.xid,
            committed_at: rfc3339(change.committed_at),
            truncate: change.truncate,
        }
    }

    /// The event for `change` with its full rows.
    pub fn of(change: &'a Change, trigger: Option<&'a str>) -> Event<'a> {
        Event::new(
            change,
            trigger,
            change.record.as_ref(),
            change.old_record.as_ref(),
        )
    }

    /// The JSON body.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising maps of JSON values and plain fields cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Microseconds between 1970-01-01 and 2000-01-01, Postgres's epoch.
pub const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

impl PgTimestamp {
    /// Microseconds since the Unix epoch.
    pub fn unix_micros(self) -> i64 {
        self.0.saturating_add(PG_EPOCH_OFFSET_MICROS)
    }
}

/// `2026-11-30T09:55:19.123456Z` for a Postgres timestamp.
pub fn rfc3339(ts: PgTimestamp) -> String {
    let micros = ts.unix_micros();
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:06}Z",
        tod / 3600,
        tod % 3600 / 60,
        tod % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc_with_micros() {
        assert_eq!(rfc3339(PgTimestamp(0)), "2000-01-01T00:00:00.000000Z");
        // 2026-11-30 09:55:19.123456 UTC
        let unix = 1_796_032_519_123_456_i64;
        assert_eq!(
            rfc3339(PgTimestamp(unix - PG_EPOCH_OFFSET_MICROS)),
            "2026-11-30T09:55:19.123456Z"
        );
        assert_eq!(rfc3339(PgTimestamp(-1)), "1999-12-31T23:59:59.999999Z");
        assert_eq!(
            rfc3339(PgTimestamp(-PG_EPOCH_OFFSET_MICROS)),
            "1970-01-01T00:00:00.000000Z"
        );
    }

    #[test]
    fn event_ids_are_stable_and_have_no_dot() {
        let change = Change {
            kind: ChangeKind::Create,
            relation: 16_384,
            schema: "public".into(),
            table: "t".into(),
            record: Some(Row::new()),
            old_record: None,
            changed: None,
            unchanged_toast: vec![],
            commit_lsn: Lsn(0x16B3748),
            xid: 7,
            committed_at: PgTimestamp(0),
            seq: 10,
            key: None,
            key_columns: Arc::from(Vec::new()),
            truncate: None,
        };
        assert_eq!(change.event_id(None), "00000000016b3748-a");
        assert_eq!(change.event_id(Some("orders")), "00000000016b3748-a-orders");
        let body: serde_json::Value =
            serde_json::from_slice(&Event::of(&change, None).to_json()).unwrap_or_default();
        assert_eq!(body["commit_lsn"], "0/16B3748");
        assert_eq!(body["type"], "create");
        assert!(body["old_record"].is_null());
        assert!(body.get("trigger").is_none());
    }
}
