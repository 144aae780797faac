//! Database-side preconditions and objects: wal_level, REPLICATION privilege, the
//! publication and the slot. Ordinary SQL over tokio-postgres.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio_postgres::Client;

use crate::config::TableName;
use crate::lsn::Lsn;
use crate::source::connection::describe_sql_error;

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
    /// The server returned a value walhook cannot read.
    #[error("the server returned {what} {value:?}, which is not a WAL position")]
    BadLsn {
        /// Which value.
        what: &'static str,
        /// What it was.
        value: String,
    },
    /// A query failed.
    #[error("{context}: {}", describe_sql_error(.error))]
    Sql {
        /// What was being done.
        context: String,
        /// The database error.
        error: tokio_postgres::Error,
    },
}

impl SetupError {
    /// Whether retrying may help (the connection dropped) rather than needing a fix.
    pub fn is_transient(&self) -> bool {
        match self {
            SetupError::Sql { error, .. } => {
                crate::source::connection::sql_error_is_transient(error)
            }
            _ => false,
        }
    }
}

fn sql(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> SetupError {
    let context = context.into();
    move |error| SetupError::Sql { context, error }
}

/// `"name"` with inner quotes doubled: a safe SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` with inner quotes doubled: a safe SQL string literal.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn parse_lsn(text: &str, what: &'static str) -> Result<Lsn, SetupError> {
    text.parse().map_err(|_| SetupError::BadLsn {
        what,
        value: text.to_owned(),
    })
}

/// Fails unless `wal_level = logical`.
pub async fn check_wal_level(client: &Client) -> Result<(), SetupError> {
    let row = client
        .query_one("SELECT current_setting('wal_level')", &[])
        .await
        .map_err(sql("reading wal_level"))?;
    let level: String = row.try_get(0).map_err(sql("reading wal_level"))?;
    if level == "logical" {
        Ok(())
    } else {
        Err(SetupError::WalLevel(level))
    }
}

/// Fails unless the current role may open a replication connection: the REPLICATION
/// attribute, a superuser, or (RDS and Aurora, where neither can be granted) membership in
/// `rds_replication`.
pub async fn check_replication_role(client: &Client) -> Result<(), SetupError> {
    let row = client
        .query_one(
            "SELECT current_user::text, rolreplication OR rolsuper OR EXISTS (
                 SELECT FROM pg_roles r WHERE r.rolname = 'rds_replication'
                 AND pg_has_role(current_user, r.oid, 'MEMBER'))
             FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map_err(sql("reading the role's attributes"))?;
    let get = |e| sql("reading the role's attributes")(e);
    let (user, ok): (String, bool) = (row.try_get(0).map_err(get)?, row.try_get(1).map_err(get)?);
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
    /// The table as named.
    pub table: TableName,
    /// `relkind`: 'r' table, 'p' partitioned table; `None` if no such table exists.
    pub kind: Option<char>,
    /// `relreplident`: 'd' default, 'n' nothing, 'f' full, 'i' index.
    pub identity: char,
    /// Whether it has a primary key.
    pub has_primary_key: bool,
    /// Its columns, in order.
    pub columns: Vec<String>,
    /// The columns of an event's `key`: the replica identity's (the primary key under
    /// DEFAULT and FULL, the index's under USING INDEX, none under NOTHING).
    pub key_columns: Vec<String>,
    /// Whether the current role owns it (or is a superuser): needed to publish it.
    pub owned: bool,
}

impl TableFacts {
    /// `schema.table`.
    pub fn name(&self) -> String {
        self.table.to_string()
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
             add a primary key or run ALTER TABLE {} REPLICA IDENTITY FULL",
            self.name(),
            self.table.quoted()
        ))
    }
}

/// Looks up each table, in order.
pub async fn table_facts(
    client: &Client,
    tables: &[TableName],
) -> Result<Vec<TableFacts>, SetupError> {
    let mut facts = Vec::with_capacity(tables.len());
    for table in tables {
        let rows = client
            .query(
                "SELECT c.relkind::text, c.relreplident::text, \
                        EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary), \
                        ARRAY(SELECT a.attname::text FROM pg_attribute a \
                              WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
                              ORDER BY a.attnum), \
                        pg_has_role(current_user, c.relowner, 'USAGE'), \
                        ARRAY(SELECT a.attname::text FROM pg_index i \
                              JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) \
                              WHERE i.indrelid = c.oid AND CASE c.relreplident \
                                    WHEN 'i' THEN i.indisreplident WHEN 'n' THEN false \
                                    ELSE i.indisprimary END \
                              ORDER BY a.attnum) \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
                &[&table.schema, &table.name],
            )
            .await
            .map_err(sql("looking up tables"))?;
        let Some(row) = rows.first() else {
            facts.push(TableFacts {
                table: table.clone(),
                kind: None,
                identity: 'd',
                has_primary_key: false,
                columns: Vec::new(),
                key_columns: Vec::new(),
                owned: false,
            });
            continue;
        };
        let get = |e| sql("reading the table catalog")(e);
        let kind: String = row.try_get(0).map_err(get)?;
        let identity: String = row.try_get(1).map_err(get)?;
        facts.push(TableFacts {
            table: table.clone(),
            kind: kind.chars().next(),
            identity: identity.chars().next().unwrap_or('d'),
            has_primary_key: row.try_get(2).map_err(get)?,
            columns: row.try_get(3).map_err(get)?,
            owned: row.try_get(4).map_err(get)?,
            key_columns: row.try_get(5).map_err(get)?,
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

/// The tables of `tables` that an existing publication `publication` does not publish (none
/// when it does not exist, or publishes all tables).
pub async fn missing_from_publication(
    client: &Client,
    publication: &str,
    tables: &[TableName],
) -> Result<Vec<TableName>, SetupError> {
    let names: Vec<String> = tables.iter().map(TableName::quoted).collect();
    let rows = client
        .query(
            "SELECT i::int4 FROM unnest($2::text[]) WITH ORDINALITY AS u(n, i) \
             JOIN pg_publication p ON p.pubname = $1 \
             WHERE to_regclass(n) IS NOT NULL AND NOT EXISTS ( \
               SELECT 1 FROM pg_publication_tables t WHERE t.pubname = $1 \
                 AND format('%I.%I', t.schemaname, t.tablename)::regclass = to_regclass(n))",
            &[&publication, &names],
        )
        .await
        .map_err(sql("looking up the publication's tables"))?;
    let mut out = Vec::new();
    for row in rows {
        let i: i32 = row
            .try_get(0)
            .map_err(sql("looking up the publication's tables"))?;
        if let Some(t) = usize::try_from(i - 1).ok().and_then(|i| tables.get(i)) {
            out.push(t.clone());
        }
    }
    Ok(out)
}

/// Creates the publication FOR TABLE `tables`, or makes its table list exactly `tables`.
pub async fn sync_publication(
    client: &Client,
    publication: &str,
    tables: &[TableName],
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
        .map(TableName::quoted)
        .collect::<Vec<_>>()
        .join(", ");
    let existing = client
        .query(
            "SELECT puballtables, pubviaroot FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(sql("looking up the publication"))?;
    // Only message triggers: a publication of no table (messages need none).
    let for_tables = if tables.is_empty() {
        String::new()
    } else {
        format!(" FOR TABLE {list}")
    };
    let Some(row) = existing.first() else {
        client
            .batch_execute(&format!(
                "CREATE PUBLICATION {}{for_tables}{with}",
                quote_ident(publication)
            ))
            .await
            .map_err(sql(format!("creating publication {publication:?}")))?;
        return Ok(PublicationChange::Created);
    };
    let get = |e| sql("looking up the publication")(e);
    let all_tables = row.try_get::<_, bool>(0).map_err(get)?;
    let published_via_root = row.try_get::<_, bool>(1).map_err(get)?;
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
    let current = publication_tables(client, publication).await?;
    let wanted: BTreeSet<TableName> = tables.iter().cloned().collect();
    if current == wanted {
        return Ok(change);
    }
    let alter = if tables.is_empty() {
        let current = current
            .iter()
            .map(TableName::quoted)
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "ALTER PUBLICATION {} DROP TABLE {current}",
            quote_ident(publication)
        )
    } else {
        format!(
            "ALTER PUBLICATION {} SET TABLE {list}",
            quote_ident(publication)
        )
    };
    client
        .batch_execute(&alter)
        .await
        .map_err(sql(format!("updating publication {publication:?}")))?;
    Ok(PublicationChange::Altered)
}

/// The tables a publication lists (empty when it does not exist).
pub async fn publication_tables(
    client: &Client,
    publication: &str,
) -> Result<BTreeSet<TableName>, SetupError> {
    let rows = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(sql("reading the publication's tables"))?;
    let mut out = BTreeSet::new();
    for r in &rows {
        let get = |e| sql("reading the publication's tables")(e);
        out.insert(TableName::new(
            r.try_get::<_, String>(0).map_err(get)?,
            r.try_get::<_, String>(1).map_err(get)?,
        ));
    }
    Ok(out)
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
    let get = |e| sql("reading the replication slot")(e);
    let flush: Option<String> = row.try_get(2).map_err(get)?;
    Ok(Some(SlotState {
        plugin: row
            .try_get::<_, Option<String>>(0)
            .map_err(get)?
            .unwrap_or_default(),
        database: row
            .try_get::<_, Option<String>>(1)
            .map_err(get)?
            .unwrap_or_default(),
        // A logical slot has a confirmed position once created; none means it is still
        // being created, and 0/0 makes the server start at the slot's own position.
        confirmed_flush: match flush {
            Some(f) => parse_lsn(&f, "confirmed_flush_lsn")?,
            None => Lsn::ZERO,
        },
        active_pid: row.try_get(3).map_err(get)?,
        retained_bytes: row.try_get(4).map_err(get)?,
        wal_status: row.try_get(5).map_err(get)?,
        safe_wal_bytes: row.try_get(6).map_err(get)?,
    }))
}

/// `wal_sender_timeout` in milliseconds (0: disabled).
pub async fn wal_sender_timeout_ms(client: &Client) -> Result<i64, SetupError> {
    let row = client
        .query_one(
            "SELECT setting::int8 FROM pg_settings WHERE name = 'wal_sender_timeout'",
            &[],
        )
        .await
        .map_err(sql("reading wal_sender_timeout"))?;
    row.try_get(0).map_err(sql("reading wal_sender_timeout"))
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
    let database = current_database(client).await?;
    if let Some(state) = slot_state(client, slot).await? {
        return match slot_mismatch(slot, &state, &database) {
            Some(e) => Err(e),
            None => Ok(state),
        };
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
    let lsn: String = row
        .try_get(0)
        .map_err(sql(format!("creating replication slot {slot:?}")))?;
    Ok(SlotState {
        plugin: "pgoutput".into(),
        database,
        confirmed_flush: parse_lsn(&lsn, "the new slot's position")?,
        active_pid: None,
        retained_bytes: None,
        wal_status: None,
        safe_wal_bytes: None,
    })
}

/// The name of the database `client` is connected to.
pub async fn current_database(client: &Client) -> Result<String, SetupError> {
    client
        .query_one("SELECT current_database()::text", &[])
        .await
        .map_err(sql("reading the database name"))?
        .try_get(0)
        .map_err(sql("reading the database name"))
}

/// The server's `server_version_num` (150018 for 15.18).
pub async fn server_version_num(client: &Client) -> Result<u32, SetupError> {
    let v: String = client
        .query_one("SELECT current_setting('server_version_num')", &[])
        .await
        .map_err(sql("reading the server version"))?
        .try_get(0)
        .map_err(sql("reading the server version"))?;
    Ok(v.trim().parse().unwrap_or(0))
}

/// Whether publication `publication` publishes truncates (`None`: it does not exist; run
/// creates it with the default, which does).
pub async fn publishes_truncate(
    client: &Client,
    publication: &str,
) -> Result<Option<bool>, SetupError> {
    let row = client
        .query_opt(
            "SELECT pubtruncate FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(sql("reading the publication"))?;
    row.map(|r| r.try_get(0).map_err(sql("reading the publication")))
        .transpose()
}

/// Why an existing slot cannot be used by walhook in `database`, if it cannot.
pub fn slot_mismatch(slot: &str, state: &SlotState, database: &str) -> Option<SetupError> {
    let problem = if state.plugin != "pgoutput" {
        format!(
            "uses plugin {:?}, walhook needs pgoutput (pick another source.slot, or drop it)",
            state.plugin
        )
    } else if state.database != database {
        format!(
            "belongs to database {:?}, not {database:?} (a logical slot decodes one database: \
             pick another source.slot)",
            state.database
        )
    } else {
        return None;
    };
    Some(SetupError::SlotMismatch {
        slot: slot.to_string(),
        problem,
    })
}

/// What the current role may do to the publication.
#[derive(Debug, Clone)]
pub struct PublicationAccess {
    /// The current role.
    pub role: String,
    /// The current database.
    pub database: String,
    /// Superusers may do everything.
    pub superuser: bool,
    /// CREATE on the database (needed to create a publication).
    pub may_create: bool,
    /// The publication, when it exists.
    pub existing: Option<ExistingPublication>,
}

/// A publication that exists.
#[derive(Debug, Clone)]
pub struct ExistingPublication {
    /// FOR ALL TABLES.
    pub all_tables: bool,
    /// publish_via_partition_root.
    pub via_root: bool,
    /// Whether the current role owns it.
    pub owned: bool,
    /// The tables it lists.
    pub tables: BTreeSet<TableName>,
}

/// Looks up the role's rights over the publication (and whether it exists).
pub async fn publication_access(
    client: &Client,
    publication: &str,
) -> Result<PublicationAccess, SetupError> {
    let context = "reading the role's privileges";
    let row = client
        .query_one(
            "SELECT current_user::text, current_database()::text, \
                    (SELECT rolsuper FROM pg_roles WHERE rolname = current_user), \
                    has_database_privilege(current_database(), 'CREATE')",
            &[],
        )
        .await
        .map_err(sql(context))?;
    let get = |e| sql(context)(e);
    let role: String = row.try_get(0).map_err(get)?;
    let database: String = row.try_get(1).map_err(get)?;
    let superuser: Option<bool> = row.try_get(2).map_err(get)?;
    let may_create: bool = row.try_get(3).map_err(get)?;
    let rows = client
        .query(
            "SELECT puballtables, pubviaroot, pg_has_role(current_user, pubowner, 'USAGE') \
             FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(sql("looking up the publication"))?;
    let existing = match rows.first() {
        None => None,
        Some(r) => {
            let get = |e| sql("looking up the publication")(e);
            Some(ExistingPublication {
                all_tables: r.try_get(0).map_err(get)?,
                via_root: r.try_get(1).map_err(get)?,
                owned: r.try_get(2).map_err(get)?,
                tables: publication_tables(client, publication).await?,
            })
        }
    };
    Ok(PublicationAccess {
        role,
        database,
        superuser: superuser.unwrap_or(false),
        may_create,
        existing,
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

/// Drops the publication if it exists; whether it did.
pub async fn drop_publication(client: &Client, publication: &str) -> Result<bool, SetupError> {
    let what = || format!("dropping publication {publication:?}");
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(sql(what()))?
        .is_some();
    if exists {
        client
            .batch_execute(&format!(
                "DROP PUBLICATION IF EXISTS {}",
                quote_ident(publication)
            ))
            .await
            .map_err(sql(what()))?;
    }
    Ok(exists)
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
