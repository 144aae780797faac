//! pgoutput Insert/Update/Delete + the cached relation → a [`Change`] with JSON rows.
//!
//! What the old row looks like depends on REPLICA IDENTITY (pgoutput's TupleData, as
//! observed on Postgres 13–18):
//! FULL sends the whole old row ('O'); DEFAULT/INDEX send the key ('K', nulls elsewhere)
//! for deletes and for updates that changed the key, and nothing for other updates.
//! Unchanged TOASTed values arrive as 'u' and are filled from a FULL old row when present.

use std::fmt::Write as _;

use serde_json::Value;

use crate::event::{Change, ChangeKind, Row};
use crate::lsn::Lsn;
use crate::source::pgoutput::{OldTuple, PgTimestamp, Tuple, TupleValue};
use crate::source::relations::CachedRelation;
use crate::source::values::{self, ValueError};

/// The transaction a change belongs to.
#[derive(Debug, Clone, Copy)]
pub struct TxnContext {
    /// Commit record LSN (Begin's final_lsn).
    pub commit_lsn: Lsn,
    /// Transaction id.
    pub xid: u32,
    /// Commit time.
    pub committed_at: PgTimestamp,
}

/// A row change could not be turned into JSON.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The tuple has a different number of columns than its Relation message.
    #[error("{table}: row has {got} columns but the relation has {expected}")]
    ColumnCount {
        /// schema.table
        table: String,
        /// Columns in the tuple.
        got: usize,
        /// Columns in the relation.
        expected: usize,
    },
    /// A column value could not be converted.
    #[error("{table}.{column}: {source}")]
    Value {
        /// schema.table
        table: String,
        /// Column name.
        column: String,
        /// What was wrong.
        source: ValueError,
    },
    /// Binary-format values are never requested; receiving one is a protocol mismatch.
    #[error("{table}.{column}: value arrived in binary format, which walhook does not request")]
    Binary {
        /// schema.table
        table: String,
        /// Column name.
        column: String,
    },
}

/// Decoded columns of one tuple: `None` where Postgres sent no value (unchanged TOAST).
struct Decoded(Vec<Option<Value>>);

fn decode_tuple(rel: &CachedRelation, tuple: &Tuple) -> Result<Decoded, ChangeError> {
    let cols = &rel.relation.columns;
    let table = || format!("{}.{}", rel.schema, rel.table);
    if tuple.0.len() != cols.len() || rel.types.len() != cols.len() {
        return Err(ChangeError::ColumnCount {
            table: table(),
            got: tuple.0.len(),
            expected: cols.len(),
        });
    }
    let mut out = Vec::with_capacity(cols.len());
    for ((value, col), ty) in tuple.0.iter().zip(cols).zip(&rel.types) {
        out.push(match value {
            TupleValue::Null => Some(Value::Null),
            TupleValue::UnchangedToast => None,
            TupleValue::Text(bytes) => Some(values::bytes_to_json(ty, bytes).map_err(
                |source| ChangeError::Value {
                    table: table(),
                    column: col.name.clone(),
                    source,
                },
            )?),
            TupleValue::Binary(_) => {
                return Err(ChangeError::Binary {
                    table: table(),
                    column: col.name.clone(),
                });
            }
        });
    }
    Ok(Decoded(out))
}

impl Decoded {
    /// The whole row; unsent TOAST values are left out. Moves the values (no copies).
    fn into_row(self, rel: &CachedRelation) -> Row {
        let mut row = Row::with_capacity(self.0.len());
        for (v, col) in self.0.into_iter().zip(&rel.relation.columns) {
            if let Some(v) = v {
                row.insert(col.name.clone(), v);
            }
        }
        row
    }

    /// Only the replica identity key columns (a 'K' tuple has nulls elsewhere).
    fn into_key_row(self, rel: &CachedRelation) -> Row {
        let mut row = Row::new();
        for (v, col) in self.0.into_iter().zip(&rel.relation.columns) {
            if let (true, Some(v)) = (col.is_key, v) {
                row.insert(col.name.clone(), v);
            }
        }
        row
    }

    /// The row's identity for ordering: its ordering-key column values as JSON text.
    fn identity(&self, rel: &CachedRelation) -> Option<String> {
        if rel.key_columns.is_empty() {
            return None;
        }
        let mut key = String::new();
        for &i in &rel.key_columns {
            match self.0.get(i) {
                Some(Some(v)) => {
                    let _ = write!(key, "{v},");
                }
                // A key value that was not sent (cannot happen for real keys) gives no identity.
                _ => return None,
            }
        }
        Some(key)
    }
}

/// Builds the change for an Insert.
pub fn insert(
    rel: &CachedRelation,
    txn: &TxnContext,
    seq: u64,
    new: &Tuple,
) -> Result<Change, ChangeError> {
    let new = decode_tuple(rel, new)?;
    let unchanged_toast = unsent(rel, &new);
    let identity = new.identity(rel);
    Ok(change(
        rel,
        txn,
        seq,
        ChangeKind::Create,
        Some(new.into_row(rel)),
        None,
        None,
        unchanged_toast,
        identity,
    ))
}

/// Builds the change for an Update.
pub fn update(
    rel: &CachedRelation,
    txn: &TxnContext,
    seq: u64,
    old: Option<&OldTuple>,
    new: &Tuple,
) -> Result<Change, ChangeError> {
    let mut new = decode_tuple(rel, new)?;
    // Ordered with the row's earlier events: under its old key when Postgres sent one
    // (a 'K' tuple means the key changed; a FULL old row carries the old primary key).
    let mut identity = None;
    let (old_record, changed) = match old {
        Some(OldTuple::Full(t)) => {
            let old = decode_tuple(rel, t)?;
            identity = old.identity(rel);
            // An unchanged TOAST value is in the full old row: fill it in.
            for (n, o) in new.0.iter_mut().zip(&old.0) {
                if n.is_none() {
                    n.clone_from(o);
                }
            }
            let changed = rel
                .relation
                .columns
                .iter()
                .zip(new.0.iter().zip(&old.0))
                .filter(|(_, (n, o))| n.is_some() && o.is_some() && n != o)
                .map(|(c, _)| c.name.clone())
                .collect();
            (Some(old.into_row(rel)), Some(changed))
        }
        Some(OldTuple::Key(t)) => {
            let old = decode_tuple(rel, t)?;
            identity = old.identity(rel);
            (Some(old.into_key_row(rel)), None)
        }
        None => (None, None),
    };
    let unchanged_toast = unsent(rel, &new);
    let identity = identity.or_else(|| new.identity(rel));
    Ok(change(
        rel,
        txn,
        seq,
        ChangeKind::Update,
        Some(new.into_row(rel)),
        old_record,
        changed,
        unchanged_toast,
        identity,
    ))
}

/// Builds the change for a Delete.
pub fn delete(
    rel: &CachedRelation,
    txn: &TxnContext,
    seq: u64,
    old: &OldTuple,
) -> Result<Change, ChangeError> {
    let decoded = decode_tuple(rel, old.tuple())?;
    let identity = decoded.identity(rel);
    let old_record = match old {
        OldTuple::Full(_) => decoded.into_row(rel),
        OldTuple::Key(_) => decoded.into_key_row(rel),
    };
    Ok(change(
        rel,
        txn,
        seq,
        ChangeKind::Delete,
        None,
        Some(old_record),
        None,
        Vec::new(),
        identity,
    ))
}

fn unsent(rel: &CachedRelation, row: &Decoded) -> Vec<String> {
    row.0
        .iter()
        .zip(&rel.relation.columns)
        .filter(|(v, _)| v.is_none())
        .map(|(_, c)| c.name.clone())
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn change(
    rel: &CachedRelation,
    txn: &TxnContext,
    seq: u64,
    kind: ChangeKind,
    record: Option<Row>,
    old_record: Option<Row>,
    changed: Option<Vec<String>>,
    unchanged_toast: Vec<String>,
    key: Option<String>,
) -> Change {
    Change {
        kind,
        relation: rel.relation.id,
        schema: rel.schema.clone(),
        table: rel.table.clone(),
        record,
        old_record,
        changed,
        unchanged_toast,
        commit_lsn: txn.commit_lsn,
        xid: txn.xid,
        committed_at: txn.committed_at,
        seq,
        key,
        key_columns: rel.key_names.clone(),
        truncate: None,
    }
}

/// The event of one table of a Truncate (the options are pgoutput's bits: 1 CASCADE, 2
/// RESTART IDENTITY).
pub fn truncate(rel: &CachedRelation, txn: &TxnContext, seq: u64, options: u8) -> Change {
    let mut c = change(
        rel,
        txn,
        seq,
        ChangeKind::Truncate,
        None,
        None,
        None,
        Vec::new(),
        None,
    );
    c.truncate = Some(crate::event::TruncateOptions {
        cascade: options & 1 != 0,
        restart_identity: options & 2 != 0,
    });
    c
}
