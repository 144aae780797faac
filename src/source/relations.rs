//! The relation and type cache: what each replicated table looks like, and how each of
//! its column types converts to JSON.
//!
//! pgoutput describes a table in a Relation message (before its first change in a
//! session, and again after DDL) but names column types only by OID. This cache resolves
//! each OID to a [`PgType`] from `pg_type` over a normal (non-replication) connection:
//! domains to their base type (as `to_jsonb` does), arrays to their element type and
//! delimiter, composites to their live attributes. Built-in OIDs never change, so the
//! common ones are mapped without a query and every resolved built-in stays cached.
//! User-defined types can change (`ALTER TYPE ... ADD ATTRIBUTE`), so they are read again
//! on each Relation message.
//!
//! Limits: the catalog is read *now*, not as of the change being decoded; and a user base
//! type with a cast to `json` is emitted by its output string, whereas `to_jsonb` would
//! use the cast.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::source::connection::ConnectError;
use crate::source::conninfo::{self, ConnInfo};
use crate::source::pgoutput;
use crate::source::values::{Composite, PgType};

/// OIDs below this are built in (`FirstNormalObjectId`) and immutable.
const FIRST_NORMAL_OID: u32 = 16384;

/// How long the catalog connection stays open unused. An idle session holds off a smart
/// shutdown of Postgres (`pg_ctl stop -m smart` waits for every client session to end), so
/// the connection is closed between bursts of Relation messages and opened again on demand.
pub const CATALOG_IDLE: Duration = Duration::from_secs(2);

/// Domains, arrays and composites nested deeper than this are refused.
const MAX_TYPE_DEPTH: usize = 16;

const TYPE_QUERY: &str = "SELECT t.typtype::text, t.typbasetype, t.typelem, t.typrelid, t.typlen, \
     to_jsonb(t) ->> 'typsubscript', e.typdelim::text \
     FROM pg_catalog.pg_type t LEFT JOIN pg_catalog.pg_type e ON e.oid = t.typelem \
     WHERE t.oid = $1";

const ATTRIBUTE_QUERY: &str = "SELECT a.attname::text, a.atttypid FROM pg_catalog.pg_attribute a \
     WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum";

/// A catalog look-up failed.
#[derive(Debug, thiserror::Error)]
pub enum RelationError {
    /// The catalog connection could not be opened again.
    #[error("connecting for a catalog look-up failed: {0}")]
    Connect(#[source] ConnectError),
    /// The query itself failed (see [`RelationError::is_transient`]).
    #[error("reading type {oid} from the catalog failed: {}", crate::source::connection::describe_sql_error(.error))]
    Catalog {
        /// The type being resolved.
        oid: u32,
        /// The driver's error.
        error: tokio_postgres::Error,
    },
    /// `pg_type` has no such OID.
    #[error("type {oid} is not in pg_type; it was probably dropped after the change was written")]
    UnknownType {
        /// The missing type.
        oid: u32,
    },
    /// The type nests too deeply (or refers to itself).
    #[error("type {oid} nests more than {MAX_TYPE_DEPTH} levels of domains, arrays and composites")]
    TooDeep {
        /// The outermost type.
        oid: u32,
    },
    /// A catalog row had a value this code does not understand.
    #[error("type {oid} has an unexpected catalog entry: {problem}")]
    Unexpected {
        /// The type.
        oid: u32,
        /// What was unexpected.
        problem: String,
    },
    /// Resolving one column of a relation failed.
    #[error("column {column:?} of {schema}.{table}: {source}")]
    Column {
        /// Schema of the table.
        schema: String,
        /// Table name.
        table: String,
        /// Column name.
        column: String,
        /// Why.
        #[source]
        source: Box<RelationError>,
    },
}

impl RelationError {
    /// Whether retrying (after reconnecting) may succeed: the connection was lost, the
    /// server is shutting down or short of resources.
    pub fn is_transient(&self) -> bool {
        match self {
            RelationError::Catalog { error: source, .. } => {
                crate::source::connection::sql_error_is_transient(source)
            }
            RelationError::Column { source, .. } => source.is_transient(),
            RelationError::Connect(e) => e.is_transient(),
            RelationError::UnknownType { .. }
            | RelationError::TooDeep { .. }
            | RelationError::Unexpected { .. } => false,
        }
    }
}

/// A table as the last Relation message described it, with each column's JSON conversion.
#[derive(Debug, Clone)]
pub struct CachedRelation {
    /// The Relation message.
    pub relation: pgoutput::Relation,
    /// One type per column, in column order.
    pub types: Vec<Arc<PgType>>,
    /// Schema name, shared with every change of the table.
    pub schema: Arc<str>,
    /// Table name, shared with every change of the table.
    pub table: Arc<str>,
    /// Columns that identify a row, for keeping one row's events in order: the replica
    /// identity key, or under REPLICA IDENTITY FULL (where every column is flagged) the
    /// primary key. Empty when the table has neither.
    pub key_columns: Vec<usize>,
    /// The names of `key_columns`, shared with every change of the table.
    pub key_names: Arc<[String]>,
}

/// Relations by OID and types by OID, for one replication session.
pub struct RelationCache {
    client: Option<tokio_postgres::Client>,
    /// Where to open the catalog connection again; `None`: keep `client` open.
    conninfo: Option<ConnInfo>,
    last_used: Instant,
    types: HashMap<u32, Arc<PgType>>,
    relations: HashMap<u32, CachedRelation>,
}

impl RelationCache {
    /// A cache that reads the catalog over `client` (already connected) for as long as it
    /// lives.
    pub fn new(client: tokio_postgres::Client) -> Self {
        RelationCache {
            client: Some(client),
            conninfo: None,
            last_used: Instant::now(),
            types: HashMap::new(),
            relations: HashMap::new(),
        }
    }

    /// A cache that closes `client` after [`CATALOG_IDLE`] unused and connects to
    /// `conninfo` again when a look-up needs it.
    pub fn reconnecting(client: tokio_postgres::Client, conninfo: ConnInfo) -> Self {
        RelationCache {
            conninfo: Some(conninfo),
            ..RelationCache::new(client)
        }
    }

    /// When the open catalog connection should be closed, if it may be.
    pub fn idle_deadline(&self) -> Option<Instant> {
        (self.client.is_some() && self.conninfo.is_some()).then(|| self.last_used + CATALOG_IDLE)
    }

    /// Closes the catalog connection if it has been idle for [`CATALOG_IDLE`].
    pub fn close_if_idle(&mut self) {
        if self
            .idle_deadline()
            .is_some_and(|deadline| deadline <= Instant::now())
        {
            tracing::debug!("closing the idle catalog connection");
            self.client = None;
        }
    }

    /// The catalog connection, opened again if it was closed.
    async fn client(&mut self) -> Result<&tokio_postgres::Client, RelationError> {
        self.last_used = Instant::now();
        if self.client.is_none() {
            if let Some(info) = &self.conninfo {
                let client = conninfo::connect_sql(info)
                    .await
                    .map_err(RelationError::Connect)?;
                self.client = Some(client);
            }
        }
        self.client
            .as_ref()
            .ok_or(RelationError::Connect(ConnectError::Closed))
    }

    /// Records a Relation message, resolving every column type.
    pub async fn on_relation(&mut self, rel: pgoutput::Relation) -> Result<(), RelationError> {
        // A Relation message follows DDL; user types may have changed with it.
        self.types.retain(|&oid, _| oid < FIRST_NORMAL_OID);
        let mut types = Vec::with_capacity(rel.columns.len());
        for column in &rel.columns {
            let ty = match self.resolve_type(column.type_oid).await {
                Ok(ty) => ty,
                // The change was written while the type existed; the catalog is read now.
                // Its text is what pgoutput sent: deliver that rather than stop for good
                // (recreating a type never brings its OID back).
                Err(RelationError::UnknownType { oid }) => {
                    tracing::warn!(
                        table = %format!("{}.{}", rel.namespace, rel.name),
                        column = %column.name,
                        type_oid = oid,
                        "the column's type no longer exists (dropped after the change was \
                         written); its values are delivered as their text"
                    );
                    metrics::counter!("walhook_dropped_type_columns_total").increment(1);
                    Arc::new(PgType::Text)
                }
                Err(e) => {
                    return Err(RelationError::Column {
                        schema: rel.namespace.clone(),
                        table: rel.name.clone(),
                        column: column.name.clone(),
                        source: Box::new(e),
                    });
                }
            };
            types.push(ty);
        }
        let key_columns = if rel.replica_identity == pgoutput::ReplicaIdentity::Full {
            self.primary_key(&rel).await?
        } else {
            (0..rel.columns.len())
                .filter(|&i| rel.columns[i].is_key)
                .collect()
        };
        let key_names: Arc<[String]> = key_columns
            .iter()
            .map(|&i| rel.columns[i].name.clone())
            .collect();
        let cached = CachedRelation {
            key_names,
            schema: Arc::from(rel.namespace.as_str()),
            table: Arc::from(rel.name.as_str()),
            types,
            key_columns,
            relation: rel,
        };
        self.relations.insert(cached.relation.id, cached);
        Ok(())
    }

    /// Positions of the primary key columns in the relation (empty without a primary key).
    async fn primary_key(&mut self, rel: &pgoutput::Relation) -> Result<Vec<usize>, RelationError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT a.attname::text FROM pg_index i \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) \
                 WHERE i.indrelid = $1 AND i.indisprimary",
                &[&rel.id],
            )
            .await
            .map_err(|error| RelationError::Catalog { oid: rel.id, error })?;
        let names: Vec<String> = rows.iter().filter_map(|r| r.try_get(0).ok()).collect();
        Ok((0..rel.columns.len())
            .filter(|&i| names.contains(&rel.columns[i].name))
            .collect())
    }

    /// The table last described under this relation OID.
    pub fn get(&self, id: u32) -> Option<&CachedRelation> {
        self.relations.get(&id)
    }

    /// Resolves a type OID (cached; common built-ins without a query).
    pub async fn resolve_type(&mut self, oid: u32) -> Result<Arc<PgType>, RelationError> {
        match self.known(oid) {
            Some(ty) => Ok(ty),
            None => self.resolve(oid, oid, 0).await,
        }
    }

    /// The type from the cache or the built-in table, without a query.
    fn known(&mut self, oid: u32) -> Option<Arc<PgType>> {
        if let Some(ty) = self.types.get(&oid) {
            return Some(ty.clone());
        }
        let ty = Arc::new(builtin_type(oid)?);
        self.types.insert(oid, ty.clone());
        Some(ty)
    }

    /// Resolves a type OID from the catalog, ignoring the built-in table for `oid` itself
    /// (its parts may still come from the cache); for checking [`builtin_type`].
    pub async fn resolve_type_from_catalog(
        &mut self,
        oid: u32,
    ) -> Result<Arc<PgType>, RelationError> {
        self.resolve(oid, oid, 0).await
    }

    fn resolve<'a>(
        &'a mut self,
        oid: u32,
        outer: u32,
        depth: usize,
    ) -> Pin<Box<dyn Future<Output = Result<Arc<PgType>, RelationError>> + Send + 'a>> {
        Box::pin(async move {
            if depth > MAX_TYPE_DEPTH {
                return Err(RelationError::TooDeep { oid: outer });
            }
            let ty = self.query_type(oid, outer, depth).await?;
            self.types.insert(oid, ty.clone());
            Ok(ty)
        })
    }

    async fn child(
        &mut self,
        oid: u32,
        outer: u32,
        depth: usize,
    ) -> Result<Arc<PgType>, RelationError> {
        match self.known(oid) {
            Some(ty) => Ok(ty),
            None => self.resolve(oid, outer, depth + 1).await,
        }
    }

    async fn query_type(
        &mut self,
        oid: u32,
        outer: u32,
        depth: usize,
    ) -> Result<Arc<PgType>, RelationError> {
        let catalog = |error| RelationError::Catalog { oid, error };
        let row = self
            .client()
            .await?
            .query_opt(TYPE_QUERY, &[&oid])
            .await
            .map_err(catalog)?
            .ok_or(RelationError::UnknownType { oid })?;
        let typtype: String = row.try_get(0).map_err(catalog)?;
        let base: u32 = row.try_get(1).map_err(catalog)?;
        let elem: u32 = row.try_get(2).map_err(catalog)?;
        let relid: u32 = row.try_get(3).map_err(catalog)?;
        let typlen: i16 = row.try_get(4).map_err(catalog)?;
        let subscript: Option<String> = row.try_get(5).map_err(catalog)?;
        let elem_delim: Option<String> = row.try_get(6).map_err(catalog)?;
        match typtype.as_str() {
            "d" => self.child(base, outer, depth).await,
            "c" => {
                let rows = self
                    .client()
                    .await?
                    .query(ATTRIBUTE_QUERY, &[&relid])
                    .await
                    .map_err(catalog)?;
                let mut fields = Vec::with_capacity(rows.len());
                for row in rows {
                    let name: String = row.try_get(0).map_err(catalog)?;
                    let attr_type: u32 = row.try_get(1).map_err(catalog)?;
                    fields.push((name, self.child(attr_type, outer, depth).await?));
                }
                Ok(Arc::new(PgType::Composite(Composite::new(fields))))
            }
            "b" => {
                // get_element_type()/IsTrueArrayType: PG 14+ asks typsubscript, older
                // versions a variable-length type with an element type.
                let is_array = elem != 0
                    && match subscript.as_deref() {
                        Some(handler) => handler == "array_subscript_handler",
                        None => typlen == -1,
                    };
                if !is_array {
                    // json_categorize_type() picks bool, numbers, json, jsonb and the
                    // date/time types by OID; every other base type is its output string.
                    return Ok(Arc::new(scalar_category(oid)));
                }
                let element = self.child(elem, outer, depth).await?;
                if matches!(oid, INT2VECTOR | OIDVECTOR) {
                    return Ok(Arc::new(PgType::Vector { element }));
                }
                let delimiter = match elem_delim.as_deref().map(str::as_bytes) {
                    Some([d]) => *d,
                    other => {
                        return Err(RelationError::Unexpected {
                            oid,
                            problem: format!("element typdelim {other:?} is not one byte"),
                        });
                    }
                };
                Ok(Arc::new(PgType::Array { element, delimiter }))
            }
            // Enums, ranges, multiranges, pseudo-types: to_jsonb prints the output string.
            "e" | "r" | "m" | "p" => Ok(Arc::new(PgType::Text)),
            other => Err(RelationError::Unexpected {
                oid,
                problem: format!("typtype {other:?}"),
            }),
        }
    }
}

const INT2VECTOR: u32 = 22;
const OIDVECTOR: u32 = 30;

/// Built-in scalar types whose `to_jsonb` category is not plain text, by OID, with the
/// OID of their array type.
const SCALARS: &[(u32, u32, PgType)] = &[
    (16, 1000, PgType::Bool),
    (20, 1016, PgType::Number),
    (21, 1005, PgType::Number),
    (23, 1007, PgType::Number),
    (700, 1021, PgType::Number),
    (701, 1022, PgType::Number),
    (1700, 1231, PgType::Number),
    (114, 199, PgType::Json),
    (3802, 3807, PgType::Jsonb),
    (1082, 1182, PgType::Date),
    (1114, 1115, PgType::Timestamp),
    (1184, 1185, PgType::Timestamptz),
];

/// Common built-in types printed as their output string, with their array type OID.
const TEXTS: &[(u32, u32)] = &[
    (25, 1009),   // text
    (1043, 1015), // varchar
    (1042, 1014), // bpchar
    (19, 1003),   // name
    (18, 1002),   // "char"
    (17, 1001),   // bytea
    (2950, 2951), // uuid
    (26, 1028),   // oid
    (1083, 1183), // time
    (1266, 1270), // timetz
    (1186, 1187), // interval
    (790, 791),   // money
    (869, 1041),  // inet
    (650, 651),   // cidr
    (829, 1040),  // macaddr
    (774, 775),   // macaddr8
    (1560, 1561), // bit
    (1562, 1563), // varbit
    (142, 143),   // xml
    (3220, 3221), // pg_lsn
    (3614, 3643), // tsvector
    (3615, 3645), // tsquery
    (600, 1017),  // point
    (601, 1018),  // lseg
    (602, 1019),  // path
    (604, 1027),  // polygon
    (628, 629),   // line
    (718, 719),   // circle
    (3904, 3905), // int4range
    (3926, 3927), // int8range
    (3906, 3907), // numrange
    (3908, 3909), // tsrange
    (3910, 3911), // tstzrange
    (3912, 3913), // daterange
];

const BOX: u32 = 603;
const BOX_ARRAY: u32 = 1020;

/// What `to_jsonb` does with a non-array base type, by OID.
fn scalar_category(oid: u32) -> PgType {
    SCALARS
        .iter()
        .find(|(scalar, _, _)| *scalar == oid)
        .map_or(PgType::Text, |(_, _, ty)| ty.clone())
}

/// The [`PgType`] of a common built-in OID, without asking the catalog.
pub fn builtin_type(oid: u32) -> Option<PgType> {
    let array = |element: PgType, delimiter: u8| PgType::Array {
        element: Arc::new(element),
        delimiter,
    };
    match oid {
        BOX => return Some(PgType::Text),
        BOX_ARRAY => return Some(array(PgType::Text, b';')),
        _ => {}
    }
    for (scalar, array_oid, ty) in SCALARS {
        if oid == *scalar {
            return Some(ty.clone());
        }
        if oid == *array_oid {
            return Some(array(ty.clone(), b','));
        }
    }
    for &(scalar, array_oid) in TEXTS {
        if oid == scalar {
            return Some(PgType::Text);
        }
        if oid == array_oid {
            return Some(array(PgType::Text, b','));
        }
    }
    None
}

/// Every OID [`builtin_type`] knows, for tests that check it against the catalog.
pub fn builtin_oids() -> Vec<u32> {
    let mut oids = vec![BOX, BOX_ARRAY];
    for (scalar, array, _) in SCALARS {
        oids.extend([*scalar, *array]);
    }
    for &(scalar, array) in TEXTS {
        oids.extend([scalar, array]);
    }
    oids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_cover_the_json_categories() {
        assert_eq!(builtin_type(16), Some(PgType::Bool));
        assert_eq!(builtin_type(1700), Some(PgType::Number));
        assert_eq!(
            builtin_type(1020),
            Some(PgType::Array {
                element: Arc::new(PgType::Text),
                delimiter: b';'
            })
        );
        assert_eq!(builtin_type(16385), None);
        let oids = builtin_oids();
        let unique: std::collections::HashSet<_> = oids.iter().collect();
        assert_eq!(unique.len(), oids.len(), "an OID is listed twice");
    }
}
