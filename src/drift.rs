//! Triggers bound to tables, not names, and publication drift reported loudly.
//!
//! At the start of each replication session every trigger's table is resolved to its OID
//! ([`Binding::resolve`]). A change is routed by its relation's OID: a table renamed under a
//! running walhook keeps firing its triggers (the events carry the new name; one WARN says the
//! config names the old one). A change of an unbound table that carries a configured name
//! (say the new table of a swap migration) is routed by that name and reported as drift.
//!
//! Every [`CHECK_INTERVAL`] a short-lived connection compares the binding with the catalog
//! ([`check`]): a bound table missing from the publication (an external
//! `ALTER PUBLICATION … DROP TABLE`), a configured name that now names another table, a bound
//! table that was dropped. Each is an ERROR line, `walhook_drift_total{kind}`, and
//! `/readyz` answering 503 while it lasts. Where walhook may (it owns the publication), a
//! missing table is added back; decoding reads the publication as of each change, so the
//! changes committed while the table was out are not captured, and the line names that range
//! of commit positions.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio_postgres::Client;

use crate::config::TableName;
use crate::event::Change;
use crate::lsn::Lsn;
use crate::source::conninfo::{self, ConnInfo};
use crate::source::setup::{SetupError, quote_ident};
use crate::triggers::{Routed, Router};

/// How often the catalog is compared with the binding.
pub const CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// The tables the triggers are bound to in this session, by OID.
#[derive(Debug, Default)]
pub struct Binding {
    by_oid: HashMap<u32, TableName>,
    /// OIDs whose new name was already reported.
    renamed: HashSet<(u32, String)>,
    /// Unbound OIDs carrying a configured name, already reported.
    strangers: HashSet<u32>,
}

impl Binding {
    /// Resolves `tables` (every table a trigger names) to their OIDs.
    pub async fn resolve(client: &Client, tables: &[TableName]) -> Result<Binding, SetupError> {
        let names: Vec<String> = tables.iter().map(TableName::quoted).collect();
        let rows = client
            .query(
                "SELECT n, to_regclass(n)::oid FROM unnest($1::text[]) AS n",
                &[&names],
            )
            .await
            .map_err(|e| SetupError::Sql {
                context: "resolving the triggers' tables".into(),
                error: e,
            })?;
        let mut by_oid = HashMap::new();
        for (row, table) in rows.iter().zip(tables) {
            let oid: Option<u32> = row.try_get(1).map_err(|e| SetupError::Sql {
                context: "resolving the triggers' tables".into(),
                error: e,
            })?;
            match oid {
                Some(oid) => {
                    by_oid.insert(oid, table.clone());
                }
                None => return Err(SetupError::NoTable(table.to_string())),
            }
        }
        Ok(Binding {
            by_oid,
            ..Binding::default()
        })
    }

    /// The bound tables: OID and the name the config gives it.
    pub fn tables(&self) -> impl Iterator<Item = (u32, &TableName)> {
        self.by_oid.iter().map(|(oid, t)| (*oid, t))
    }

    /// Routes `change` by its table's OID (see the module doc).
    pub fn route(&mut self, router: &Router, change: &Change, drift: &Drift) -> Vec<Routed> {
        match self.by_oid.get(&change.relation) {
            Some(bound) if bound.schema == *change.schema && bound.name == *change.table => {
                router.route(change)
            }
            Some(bound) => {
                let now = format!("{}.{}", change.schema, change.table);
                if self.renamed.insert((change.relation, now.clone())) {
                    tracing::warn!(
                        "table {bound} was renamed to {now}: its triggers keep firing for it \
                         (events carry the new name), but the config still names {bound}; \
                         update it before walhook restarts (a restart binds triggers by name)"
                    );
                }
                router.route_as(&bound.schema, &bound.name, change)
            }
            None => {
                let routed = router.route(change);
                if !routed.is_empty() && self.strangers.insert(change.relation) {
                    drift.report(
                        "name",
                        &format!(
                            "{}.{} is now another table (oid {}) than the one its triggers were \
                             bound to at start; its changes are delivered to them too until \
                             walhook restarts and binds by name",
                            change.schema, change.table, change.relation
                        ),
                    );
                }
                routed
            }
        }
    }
}

/// Drift problems seen and not yet resolved; `/readyz` is not ready while any is.
#[derive(Debug, Default)]
pub struct Drift {
    open: AtomicUsize,
}

impl Drift {
    /// Whether drift is unresolved.
    pub fn is_drifting(&self) -> bool {
        self.open.load(Ordering::Acquire) > 0
    }

    /// Sets how many problems are open now (from the latest check).
    fn set_open(&self, n: usize) {
        self.open.store(n, Ordering::Release);
        metrics::gauge!("walhook_drift").set(n as f64);
    }

    /// Logs one drift finding as an ERROR and counts it.
    fn report(&self, kind: &'static str, message: &str) {
        metrics::counter!("walhook_drift_total", "kind" => kind).increment(1);
        tracing::error!(drift = kind, "drift: {message}");
    }
}

/// Why a drift check could not run (it is tried again next round).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// No connection.
    #[error(transparent)]
    Connect(#[from] crate::source::connection::ConnectError),
    /// A catalog query failed.
    #[error(transparent)]
    Setup(#[from] SetupError),
}

/// What the checker remembers between rounds.
#[derive(Debug, Default)]
pub struct Checker {
    /// Per bound OID: a position at which it was last seen published.
    seen_published: HashMap<u32, Lsn>,
    /// Problems reported and not yet gone, so each is logged once.
    reported: HashSet<String>,
    /// Published tables no trigger names, already reported.
    extra: HashSet<String>,
}

/// Compares `binding` with the catalog once: reports what drifted, repairs the publication
/// where it may. Connects for the check and disconnects after.
pub async fn check(
    conninfo: &ConnInfo,
    publication: &str,
    binding: &[(u32, TableName)],
    checker: &mut Checker,
    drift: &Drift,
) -> Result<(), CheckError> {
    let client = conninfo::connect_sql(conninfo).await?;
    let sql_err = |context: &str| {
        let context = context.to_owned();
        move |error| SetupError::Sql { context, error }
    };
    let lsn: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(sql_err("reading the WAL position"))?;
    let now: Lsn = lsn.parse().unwrap_or_default();
    let oids: Vec<u32> = binding.iter().map(|(oid, _)| *oid).collect();
    let names: Vec<String> = binding.iter().map(|(_, t)| t.quoted()).collect();
    let rows = client
        .query(
            "SELECT b.oid, \
                    (SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
                       JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = b.oid), \
                    EXISTS (SELECT 1 FROM pg_publication_tables t WHERE t.pubname = $3 \
                              AND format('%I.%I', t.schemaname, t.tablename)::regclass = b.oid), \
                    to_regclass(b.name)::oid \
             FROM unnest($1::oid[], $2::text[]) AS b(oid, name)",
            &[&oids, &names, &publication],
        )
        .await
        .map_err(sql_err("comparing the triggers' tables with the catalog"))?;
    let mut open = Vec::new();
    for (row, (oid, configured)) in rows.iter().zip(binding) {
        let current: Option<String> = row.try_get(1).map_err(sql_err("reading the catalog"))?;
        let published: bool = row.try_get(2).map_err(sql_err("reading the catalog"))?;
        let by_name: Option<u32> = row.try_get(3).map_err(sql_err("reading the catalog"))?;
        let Some(current) = current else {
            open.push((
                "dropped",
                format!("table {configured} (oid {oid}), which triggers are bound to, was dropped"),
            ));
            continue;
        };
        if by_name.is_some_and(|o| o != *oid) {
            open.push((
                "name",
                format!(
                    "the config names {configured}, which is now another table than the one \
                     its triggers are bound to (oid {oid}, now {current}); a restart binds \
                     them to the new one"
                ),
            ));
        }
        if published {
            checker.seen_published.insert(*oid, now);
            continue;
        }
        let since = checker
            .seen_published
            .get(oid)
            .map_or_else(|| "the start of this session".to_owned(), |l| l.to_string());
        let added = client
            .batch_execute(&format!(
                "ALTER PUBLICATION {} ADD TABLE {current}",
                quote_ident(publication)
            ))
            .await;
        match added {
            Ok(()) => {
                let after: String = client
                    .query_one("SELECT pg_current_wal_lsn()::text", &[])
                    .await
                    .and_then(|r| r.try_get(0))
                    .map_err(sql_err("reading the WAL position"))?;
                drift.report(
                    "publication",
                    &format!(
                        "table {current} (trigger table {configured}) had been removed from \
                         publication {publication:?}; walhook added it back. Its changes \
                         committed between {since} and {after} were not captured (decoding \
                         reads the publication as of each change): deliver them from the \
                         table itself"
                    ),
                );
                checker.seen_published.insert(*oid, now);
            }
            Err(e) => open.push((
                "publication",
                format!(
                    "table {current} (trigger table {configured}) is not in publication \
                     {publication:?}, so its changes since {since} are not captured, and \
                     walhook cannot add it back ({}): run ALTER PUBLICATION {} ADD TABLE \
                     {current} as the publication's owner",
                    crate::source::connection::describe_sql_error(&e),
                    quote_ident(publication)
                ),
            )),
        }
    }
    // Published tables no trigger names cost decoding work but lose nothing: a warning.
    let extra = client
        .query(
            "SELECT format('%I.%I', t.schemaname, t.tablename) FROM pg_publication_tables t \
             WHERE t.pubname = $1 AND NOT (format('%I.%I', t.schemaname, t.tablename))::regclass::oid \
                   = ANY($2::oid[]) \
               AND NOT EXISTS (SELECT 1 FROM pg_publication p WHERE p.pubname = $1 AND p.puballtables)",
            &[&publication, &oids],
        )
        .await
        .map_err(sql_err("listing the publication's tables"))?;
    for row in extra {
        let table: String = row.try_get(0).map_err(sql_err("reading the catalog"))?;
        if checker.extra.insert(table.clone()) {
            metrics::counter!("walhook_drift_total", "kind" => "extra").increment(1);
            tracing::warn!(
                drift = "extra",
                "drift: publication {publication:?} publishes {table}, which no trigger names \
                 (its changes are decoded and dropped; walhook removes it at its next start \
                 where it owns the publication)"
            );
        }
    }
    let keys: HashSet<String> = open.iter().map(|(_, m)| m.clone()).collect();
    for (kind, message) in &open {
        if !checker.reported.contains(message) {
            drift.report(kind, message);
        }
    }
    checker.reported = keys;
    drift.set_open(open.len());
    Ok(())
}
