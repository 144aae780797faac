//! Database-side preconditions and objects: wal_level, REPLICATION privilege, the
//! publication and the slot. Ordinary SQL over tokio-postgres.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio_postgres::Client;

use crate::lsn::Lsn;

/// A precondition failed or a set-up statement was refused.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// `wal_level` is not `logical`.
    #[error(
        "wal_level is {0}, logical replication needs wal_level = logical (set it in postgresql.conf, or rds.logical_replication = 1 on RDS, and restart Postgres)"
    )]
    WalLevel(String),
    /// The role may not replicate.
    #[error(
        "role {0} lacks the REPLICATION attribute (run: ALTER ROLE {0} REPLICATION; or connect as a role that has it)"
    )]
    NoReplication(String),
    /// The publication does not exist.
    #[error("publication {0:?} does not exist in this database")]
    NoPublication(String),
    /// The replication slot does not exist.
    #[error("replication slot {0:?} does not exist in this database")]
    NoSlot(String),
    /// Publishing the table would break the application's writes.
    #[error("{0}")]
    Identity(String),
    /// A table a trigger names does not exist.
    #[error("table {0} does not exist")]
    NoTable(String),
    /// The slot exists but was made for another plugin or database.
    #[error("replication slot {slot:?} exists but {problem}")]
    SlotMismatch {
        /// Slot name.
        slot: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A query failed.
    #[error("{context}: {source}")]
    Sql {
        /// What was being done.
        context: String,
        /// The database error.
        source: tokio_postgres::Error,
    },
}

impl SetupError {
    /// Whether retrying may help (the connection dropped) rather than needing a fix.
    pub fn is_transient(&self) -> bool {
        match self {
            SetupError::Sql { source, .. } => {
                crate::source::connection::sql_error_is_transient(source)
            }
            _ => false,
        }
    }
}

fn sql(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> SetupError {
    let context = context.into();
    move |source| SetupError::Sql { context, source }
}

/// `"name"` with inner quotes doubled: a safe SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` with inner quotes doubled: a safe SQL string literal.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Fails unless `wal_level = logical`.
pub async fn check_wal_level(client: &Client) -> Result<(), SetupError> {
    let row = client
        .query_one("SELECT current_setting('wal_level')", &[])
        .await
        .map_err(sql("reading wal_level"))?;
    let level: String = row.get(0);
    if level == "logical" {
        Ok(())
    } else {
        Err(SetupError::WalLevel(level))
    }
}

/// Fails unless the current role may open a replication connection.
pub async fn check_replication_role(client: &Client) -> Result<(), SetupError> {
    let row = client
        .query_one(
            "SELECT current_user::text, rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map_err(sql("reading the role's attributes"))?;
    let (user, ok): (String, bool) = (row.get(0), row.get(1));
    if ok {
        Ok(())
    } else {
        Err(SetupError::NoReplication(user))
    }
}

/// Fails unless the publication exists.
pub async fn check_publication(client: &Client, publication: &str) -> Result<(), SetupError> {
    let rows = client
        .query(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(sql("looking up the publication"))?;
    if rows.is_empty() {
        return Err(SetupError::NoPublication(publication.to_string()));
    }
    Ok(())
}

/// What the catalog says about a table a trigger names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableFacts {
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub table: String,
    /// `relkind`: 'r' table, 'p' partitioned table; `None` if no such table exists.
    pub kind: Option<char>,
    /// `relreplident`: 'd' default, 'n' nothing, 'f' full, 'i' index.
    pub identity: char,
    /// Whether it has a primary key.
    pub has_primary_key: bool,
}

impl TableFacts {
    /// `schema.table`.
    pub fn name(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }

    /// Why publishing this table's updates and deletes would make them fail in the
    /// application ("cannot update table … because it does not have a replica identity").
    pub fn identity_problem(&self) -> Option<String> {
        let missing = match self.identity {
            'n' => "has REPLICA IDENTITY NOTHING",
            'd' if !self.has_primary_key => "has no primary key (REPLICA IDENTITY DEFAULT)",
            _ => return None,
        };
        Some(format!(
            "table {} {missing}: once published, Postgres rejects its UPDATEs and DELETEs; \
             add a primary key or run ALTER TABLE {}.{} REPLICA IDENTITY FULL",
            self.name(),
            quote_ident(&self.schema),
            quote_ident(&self.table)
        ))
    }
}

/// Looks up each table (schema, name), in order.
pub async fn table_facts(
    client: &Client,
    tables: &[(String, String)],
) -> Result<Vec<TableFacts>, SetupError> {
    let mut facts = Vec::with_capacity(tables.len());
    for (schema, table) in tables {
        let rows = client
            .query(
                "SELECT c.relkind::text, c.relreplident::text, \
                        EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
                &[schema, table],
            )
            .await
            .map_err(sql("looking up tables"))?;
        let first_char = |i: usize| -> Option<char> {
            rows.first()
                .and_then(|r| r.try_get::<_, String>(i).ok())
                .and_then(|v| v.chars().next())
        };
        facts.push(TableFacts {
            schema: schema.clone(),
            table: table.clone(),
            kind: first_char(0),
            identity: first_char(1).unwrap_or('d'),
            has_primary_key: rows
                .first()
                .and_then(|r| r.try_get::<_, bool>(2).ok())
                .unwrap_or(false),
        });
    }
    Ok(facts)
}

/// What [`sync_publication`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicationChange {
    /// It was created.
    Created,
    /// Its table list was replaced.
    Altered,
    /// It already published exactly these tables (or all tables).
    Unchanged,
}

/// Creates the publication FOR TABLE `tables`, or makes its table list exactly `tables`.
pub async fn sync_publication(
    client: &Client,
    publication: &str,
    tables: &[(String, String)],
) -> Result<PublicationChange, SetupError> {
    let facts = table_facts(client, tables).await?;
    for t in &facts {
        if t.kind.is_none() {
            return Err(SetupError::NoTable(t.name()));
        }
        if let Some(problem) = t.identity_problem() {
            return Err(SetupError::Identity(problem));
        }
    }
    // Changes of a partitioned table come under its partitions' names unless the publication
    // publishes via the root; triggers name the root.
    let via_root = facts.iter().any(|t| t.kind == Some('p'));
    let with = if via_root {
        " WITH (publish_via_partition_root = true)"
    } else {
        ""
    };
    let list = tables
        .iter()
        .map(|(s, t)| format!("{}.{}", quote_ident(s), quote_ident(t)))
        .collect::<Vec<_>>()
        .join(", ");
    let existing = client
        .query(
            "SELECT puballtables, pubviaroot FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(sql("looking up the publication"))?;
    let Some(row) = existing.first() else {
        client
            .batch_execute(&format!(
                "CREATE PUBLICATION {} FOR TABLE {list}{with}",
                quote_ident(publication)
            ))
            .await
            .map_err(sql(format!("creating publication {publication:?}")))?;
        return Ok(PublicationChange::Created);
    };
    let all_tables = row.try_get::<_, bool>(0).unwrap_or(false);
    let published_via_root = row.try_get::<_, bool>(1).unwrap_or(false);
    let mut change = PublicationChange::Unchanged;
    if via_root && !published_via_root {
        client
            .batch_execute(&format!(
                "ALTER PUBLICATION {} SET (publish_via_partition_root = true)",
                quote_ident(publication)
            ))
            .await
            .map_err(sql(format!("updating publication {publication:?}")))?;
        change = PublicationChange::Altered;
    }
    if all_tables {
        return Ok(change);
    }
    let current: BTreeSet<(String, String)> = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(sql("reading the publication's tables"))?
        .iter()
        .filter_map(|r| Some((r.try_get(0).ok()?, r.try_get(1).ok()?)))
        .collect();
    let wanted: BTreeSet<(String, String)> = tables.iter().cloned().collect();
    if current == wanted {
        return Ok(change);
    }
    client
        .batch_execute(&format!(
            "ALTER PUBLICATION {} SET TABLE {list}",
            quote_ident(publication)
        ))
        .await
        .map_err(sql(format!("updating publication {publication:?}")))?;
    Ok(PublicationChange::Altered)
}

/// A slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotState {
    /// Output plugin.
    pub plugin: String,
    /// Database it belongs to.
    pub database: String,
    /// Position the next session starts from.
    pub confirmed_flush: Lsn,
    /// PID of the session streaming from it, if any.
    pub active_pid: Option<i32>,
    /// WAL bytes between the slot's restart point and the current WAL position.
    pub retained_bytes: Option<i64>,
    /// `wal_status`: `reserved`, `extended`, `unreserved` (about to lose WAL it needs) or
    /// `lost` (invalidated: it can no longer stream).
    pub wal_status: Option<String>,
    /// `safe_wal_size`: WAL that may still be written before the slot is at risk of being
    /// invalidated (`None` when `max_slot_wal_keep_size` is unlimited).
    pub safe_wal_bytes: Option<i64>,
}

impl SlotState {
    /// Postgres invalidated the slot: it can no longer stream, and the WAL it needed is gone.
    pub fn is_lost(&self) -> bool {
        self.wal_status.as_deref() == Some("lost")
    }
}

/// The slot's state, or `None` if it does not exist.
pub async fn slot_state(client: &Client, slot: &str) -> Result<Option<SlotState>, SetupError> {
    let rows = client
        .query(
            "SELECT plugin::text, database::text, confirmed_flush_lsn::text, active_pid, \
                    pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8, \
                    wal_status::text, safe_wal_size::int8 \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(sql("looking up the replication slot"))?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    let flush: Option<String> = row.get(2);
    Ok(Some(SlotState {
        plugin: row.get::<_, Option<String>>(0).unwrap_or_default(),
        database: row.get::<_, Option<String>>(1).unwrap_or_default(),
        confirmed_flush: flush.and_then(|f| f.parse().ok()).unwrap_or_default(),
        active_pid: row.get(3),
        retained_bytes: row.get(4),
        wal_status: row.get(5),
        safe_wal_bytes: row.get(6),
    }))
}

/// `max_slot_wal_keep_size` as Postgres shows it (`-1` is unlimited).
pub async fn max_slot_wal_keep_size(client: &Client) -> Result<String, SetupError> {
    let row = client
        .query_one("SELECT current_setting('max_slot_wal_keep_size')", &[])
        .await
        .map_err(sql("reading max_slot_wal_keep_size"))?;
    Ok(row.get(0))
}

/// Makes sure a pgoutput slot named `slot` exists in this database; returns its state.
///
/// Creating a slot waits for every transaction open at that moment to finish, so a
/// long-running transaction blocks start-up: say so while waiting.
pub async fn ensure_slot(client: &Client, slot: &str) -> Result<SlotState, SetupError> {
    let database: String = client
        .query_one("SELECT current_database()::text", &[])
        .await
        .map_err(sql("reading the database name"))?
        .get(0);
    if let Some(state) = slot_state(client, slot).await? {
        if state.plugin != "pgoutput" {
            return Err(SetupError::SlotMismatch {
                slot: slot.to_string(),
                problem: format!("uses plugin {:?}, not pgoutput", state.plugin),
            });
        }
        if state.database != database {
            return Err(SetupError::SlotMismatch {
                slot: slot.to_string(),
                problem: format!("belongs to database {:?}, not {database:?}", state.database),
            });
        }
        return Ok(state);
    }
    tracing::info!(slot, "creating replication slot");
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&slot];
    let create = client.query_one(
        "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
        &params,
    );
    tokio::pin!(create);
    let mut waited = Duration::ZERO;
    let row = loop {
        tokio::select! {
            r = &mut create => break r.map_err(sql(format!("creating replication slot {slot:?}")))?,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {
                waited += Duration::from_secs(5);
                tracing::warn!(
                    slot,
                    waited_secs = waited.as_secs(),
                    "creating the slot waits for transactions open on the server to finish \
                     (see pg_stat_activity where xact_start is old)"
                );
            }
        }
    };
    let lsn: String = row.get(0);
    Ok(SlotState {
        plugin: "pgoutput".into(),
        database,
        confirmed_flush: lsn.parse().unwrap_or_default(),
        active_pid: None,
        retained_bytes: None,
        wal_status: None,
        safe_wal_bytes: None,
    })
}

/// Drops the slot if it exists (and is not in use).
pub async fn drop_slot(client: &Client, slot: &str) -> Result<bool, SetupError> {
    let rows = client
        .query(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(sql(format!("dropping replication slot {slot:?}")))?;
    Ok(!rows.is_empty())
}

/// Drops the publication if it exists.
pub async fn drop_publication(client: &Client, publication: &str) -> Result<(), SetupError> {
    client
        .batch_execute(&format!(
            "DROP PUBLICATION IF EXISTS {}",
            quote_ident(publication)
        ))
        .await
        .map_err(sql(format!("dropping publication {publication:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_is_injection_safe() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
