//! `walhook.parked`: events a failing target could not take, kept in the database so the
//! slot can move on, and delivered from there once the target answers again.
//!
//! A row is one event for one trigger: its exact body, its ordering key, and how its
//! delivery went (attempts, first failure, last error, when it is next due). Rows of one
//! key are delivered by increasing `id` (insertion order); a row is deleted once answered
//! 2xx. `pending` rows are retried by the running daemon; `dead` ones are kept and only
//! `walhook replay` sends them again. Inserts are idempotent by `(trigger, event_id)`: an
//! event parked again after a crash between the insert and the slot's confirmation is not
//! stored twice.
//!
//! [`ParkStore`] holds one connection, opened on first use and closed again when idle
//! (see [`ParkStore::close_idle`]): an idle session would keep a smart shutdown of the
//! database waiting for ever.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::{Mutex, MutexGuard};
use tokio_postgres::Client;

use crate::config::HttpMethod;
use crate::delivery::Shape;
use crate::source::connection::ConnectError;
use crate::source::conninfo::{self, ConnInfo};
use crate::store::{StoreError, sql};

/// Whether a parked row is still retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Retried by the running daemon.
    Pending,
    /// Given up on: kept, not retried, until `walhook replay`.
    Dead,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Dead => "dead",
        }
    }
}

/// An event to park.
#[derive(Debug, Clone, Copy)]
pub struct NewRow<'a> {
    /// The event id.
    pub event_id: &'a str,
    /// Its ordering key.
    pub order_key: u64,
    /// The exact body.
    pub body: &'a [u8],
    /// How its request differs from the trigger's fixed one.
    pub shape: Option<&'a Shape>,
}

/// How the delivery of the events being parked went so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Attempts already made.
    pub attempts: u32,
    /// How long ago the first of them failed.
    pub failing_for: Duration,
    /// The last error, as logged.
    pub error: String,
}

/// A pending row, as the unparker reads it.
#[derive(Debug, Clone)]
pub struct ParkedRow {
    /// Row id (insertion order).
    pub id: i64,
    /// The event id.
    pub event_id: String,
    /// Its ordering key.
    pub order_key: u64,
    /// The exact body.
    pub body: Bytes,
    /// Attempts made so far.
    pub attempts: u32,
    /// Time since its first failure.
    pub failing_for: Duration,
    /// How long until its retry is due (`None`: due now).
    pub due_in: Option<Duration>,
    /// How its request differs from the trigger's fixed one.
    pub shape: Option<Box<Shape>>,
}

/// What became of a row sent from the table and not answered 2xx.
#[derive(Debug, Clone)]
pub struct Retry {
    /// Row id.
    pub id: i64,
    /// The error, as logged.
    pub error: String,
    /// When to try it again.
    pub wait: Duration,
    /// Given up on: it becomes dead.
    pub dead: bool,
}

/// Why the park table could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ParkError {
    /// No connection to the database that holds the walhook schema.
    #[error("cannot connect to the database of walhook.parked: {0}")]
    Connect(#[from] ConnectError),
    /// A query failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ParkError {
    /// Whether retrying may help (the connection dropped) rather than needing a fix.
    pub fn is_transient(&self) -> bool {
        match self {
            ParkError::Connect(e) => e.is_transient(),
            ParkError::Store(e) => e.is_transient(),
        }
    }

    /// Whether the database is shutting down (or starting up): it terminated the session
    /// or refuses new ones (SQLSTATE 57P01, 57P02, 57P03).
    pub fn server_shutting_down(&self) -> bool {
        let code = match self {
            ParkError::Connect(e) => e.code(),
            ParkError::Store(
                StoreError::Sql { error, .. } | StoreError::Privilege { error, .. },
            ) => error.code().map(|c| c.code()),
            ParkError::Store(StoreError::TooNew { .. }) => None,
        };
        matches!(code, Some("57P01" | "57P02" | "57P03"))
    }
}

/// Per trigger: what `status` and the gauges show.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Counts {
    /// Pending parked events.
    pub parked: u64,
    /// Dead events.
    pub dead: u64,
    /// Seconds since the oldest pending event was parked.
    pub oldest_parked_seconds: Option<f64>,
    /// The error of the most recent failed attempt from the table (or of the live attempt
    /// that parked it).
    pub last_error: Option<String>,
}

/// Which rows `walhook replay` makes due.
#[derive(Debug, Clone, Default)]
pub struct ReplayFilter {
    /// Only this trigger's.
    pub trigger: Option<String>,
    /// Only these event ids (none: any).
    pub ids: Vec<String>,
    /// Only events parked at or after this time.
    pub since: Option<SystemTime>,
    /// Pending rows (made due now) instead of dead ones (made pending again).
    pub pending: bool,
}

/// A parked row's request shape from its columns (`None`: the trigger's fixed request).
fn parked_shape(
    method: Option<String>,
    target: Option<String>,
    unsendable: Option<String>,
    headers: Option<String>,
) -> Option<Box<Shape>> {
    let headers: Vec<(String, String)> = headers
        .and_then(|h| serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&h).ok())
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| v.as_str().map(|v| (k, v.to_owned())))
        .collect();
    let method = match method.as_deref().map(|m| (m, HttpMethod::parse(m))) {
        None => None,
        Some((_, Some(m))) => Some(m),
        // Never sent with a method walhook did not mean.
        Some((m, None)) => {
            let unsendable = Some(format!("unknown method `{m}` in walhook.parked"));
            return Some(Box::new(Shape {
                unsendable,
                ..Shape::default()
            }));
        }
    };
    let shape = Shape {
        method,
        target,
        headers,
        unsendable,
    };
    (shape != Shape::default()).then(|| Box::new(shape))
}

struct Conn {
    client: Client,
    used: Instant,
}

/// The park table over one on-demand connection.
pub struct ParkStore {
    conninfo: ConnInfo,
    conn: Mutex<Option<Conn>>,
}

impl std::fmt::Debug for ParkStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParkStore").finish_non_exhaustive()
    }
}

/// The guard of a connected [`ParkStore`].
struct Session<'a>(MutexGuard<'a, Option<Conn>>);

impl Session<'_> {
    /// The connection, marked as used now.
    fn client(&mut self) -> &mut Client {
        // `ParkStore::session` only hands out a connected guard.
        let Some(conn) = self.0.as_mut() else {
            unreachable!("a session is always connected")
        };
        conn.used = Instant::now();
        &mut conn.client
    }

    /// Drops the connection after an error, so the next use connects again.
    fn failed<T, E: Into<ParkError>>(&mut self, r: Result<T, E>) -> Result<T, ParkError> {
        r.map_err(|e| {
            *self.0 = None;
            e.into()
        })
    }
}

impl ParkStore {
    /// A store that connects to `conninfo` when first used.
    pub fn new(conninfo: ConnInfo) -> ParkStore {
        ParkStore {
            conninfo,
            conn: Mutex::new(None),
        }
    }

    async fn session(&self) -> Result<Session<'_>, ParkError> {
        let mut guard = self.conn.lock().await;
        if guard.as_ref().is_some_and(|c| c.client.is_closed()) {
            *guard = None;
        }
        if guard.is_none() {
            let client = conninfo::connect_sql(&self.conninfo).await?;
            *guard = Some(Conn {
                client,
                used: Instant::now(),
            });
        }
        Ok(Session(guard))
    }

    /// Closes the connection if it has not been used for `idle`.
    pub async fn close_idle(&self, idle: Duration) {
        let mut guard = self.conn.lock().await;
        if guard.as_ref().is_some_and(|c| c.used.elapsed() >= idle) {
            *guard = None;
        }
    }

    /// Parks `rows` (in this order) for `trigger` in one transaction; returns the event ids
    /// that were new (an event id already parked for the trigger is left as it is).
    pub async fn park(
        &self,
        trigger: &str,
        rows: &[NewRow<'_>],
        state: State,
        failure: &Failure,
    ) -> Result<HashSet<String>, ParkError> {
        let ids: Vec<&str> = rows.iter().map(|r| r.event_id).collect();
        // The key is a u64 hash; bigint holds its bits.
        let keys: Vec<i64> = rows.iter().map(|r| r.order_key as i64).collect();
        let bodies: Vec<&[u8]> = rows.iter().map(|r| r.body).collect();
        let methods: Vec<Option<&str>> = rows
            .iter()
            .map(|r| r.shape.and_then(|s| s.method).map(HttpMethod::as_str))
            .collect();
        let targets: Vec<Option<&str>> = rows
            .iter()
            .map(|r| r.shape.and_then(|s| s.target.as_deref()))
            .collect();
        let unsendable: Vec<Option<&str>> = rows
            .iter()
            .map(|r| r.shape.and_then(|s| s.unsendable.as_deref()))
            .collect();
        let headers: Vec<String> = rows
            .iter()
            .map(|r| {
                let h: serde_json::Map<String, serde_json::Value> = r
                    .shape
                    .iter()
                    .flat_map(|s| &s.headers)
                    .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                    .collect();
                serde_json::Value::Object(h).to_string()
            })
            .collect();
        let attempts = i32::try_from(failure.attempts).unwrap_or(i32::MAX);
        let failing = failure.failing_for.as_secs_f64();
        let mut s = self.session().await?;
        let r = s
            .client()
            .query(
                "INSERT INTO walhook.parked \
                   (trigger, event_id, order_key, body, headers, state, attempts, first_failure, last_error, \
                    method, target, unsendable) \
                 SELECT $1, e, k, b, h::jsonb || jsonb_build_object('webhook-id', e), $5, \
                        CASE WHEN n = 1 THEN $6 ELSE 0 END, now() - make_interval(secs => $7), $8, \
                        m, t, x \
                 FROM unnest($2::text[], $3::bigint[], $4::bytea[], $9::text[], $10::text[], $11::text[], $12::text[]) \
                      WITH ORDINALITY AS u(e, k, b, h, m, t, x, n) \
                 ORDER BY n \
                 ON CONFLICT (trigger, event_id) DO NOTHING \
                 RETURNING event_id",
                &[
                    &trigger,
                    &ids,
                    &keys,
                    &bodies,
                    &state.as_str(),
                    &attempts,
                    &failing,
                    &failure.error,
                    &headers,
                    &methods,
                    &targets,
                    &unsendable,
                ],
            )
            .await
            .map_err(sql("writing to walhook.parked"));
        event_ids(&s.failed(r)?, "writing to walhook.parked")
    }

    /// Which of `ids` have a pending row of `trigger`.
    pub async fn pending_among(
        &self,
        trigger: &str,
        ids: &[&str],
    ) -> Result<HashSet<String>, ParkError> {
        let mut s = self.session().await?;
        let r = s
            .client()
            .query(
                "SELECT event_id FROM walhook.parked \
                 WHERE trigger = $1 AND event_id = ANY($2) AND state = 'pending'",
                &[&trigger, &ids],
            )
            .await
            .map_err(sql("reading walhook.parked"));
        event_ids(&s.failed(r)?, "reading walhook.parked")
    }

    /// Up to `limit` pending rows of `trigger` with an id above `after`, by id.
    pub async fn page(
        &self,
        trigger: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<ParkedRow>, ParkError> {
        let mut s = self.session().await?;
        let r = s
            .client()
            .query(
                "SELECT id, event_id, order_key, body, attempts, \
                        extract(epoch FROM now() - first_failure)::float8, \
                        CASE WHEN next_attempt_at > now() THEN extract(epoch FROM next_attempt_at - now())::float8 END, \
                        method, target, unsendable, (headers - 'webhook-id')::text \
                 FROM walhook.parked \
                 WHERE trigger = $1 AND state = 'pending' AND id > $2 \
                 ORDER BY id LIMIT $3",
                &[&trigger, &after, &limit],
            )
            .await
            .map_err(sql("reading walhook.parked"));
        let rows = s.failed(r)?;
        let context = || sql("reading walhook.parked");
        rows.iter()
            .map(|row| {
                let body: Vec<u8> = row.try_get(3).map_err(context())?;
                let attempts: i32 = row.try_get(4).map_err(context())?;
                let failing: f64 = row.try_get(5).map_err(context())?;
                let key: i64 = row.try_get(2).map_err(context())?;
                Ok(ParkedRow {
                    id: row.try_get(0).map_err(context())?,
                    event_id: row.try_get(1).map_err(context())?,
                    order_key: key as u64,
                    body: Bytes::from(body),
                    attempts: u32::try_from(attempts).unwrap_or(0),
                    failing_for: Duration::try_from_secs_f64(failing).unwrap_or_default(),
                    due_in: row
                        .try_get::<_, Option<f64>>(6)
                        .map_err(context())?
                        .map(|s| Duration::try_from_secs_f64(s).unwrap_or_default()),
                    shape: parked_shape(
                        row.try_get(7).map_err(context())?,
                        row.try_get(8).map_err(context())?,
                        row.try_get(9).map_err(context())?,
                        row.try_get(10).map_err(context())?,
                    ),
                })
            })
            .collect()
    }

    /// Deletes delivered rows.
    pub async fn delete(&self, ids: &[i64]) -> Result<(), ParkError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut s = self.session().await?;
        let r = s
            .client()
            .execute("DELETE FROM walhook.parked WHERE id = ANY($1)", &[&ids])
            .await
            .map_err(sql("deleting delivered rows of walhook.parked"));
        s.failed(r).map(|_| ())
    }

    /// Records failed attempts: each row's next retry, or that it is dead.
    pub async fn retry(&self, rows: &[Retry]) -> Result<(), ParkError> {
        if rows.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let errors: Vec<&str> = rows.iter().map(|r| r.error.as_str()).collect();
        let waits: Vec<f64> = rows.iter().map(|r| r.wait.as_secs_f64()).collect();
        let dead: Vec<bool> = rows.iter().map(|r| r.dead).collect();
        let mut s = self.session().await?;
        let r = s
            .client()
            .execute(
                "UPDATE walhook.parked p SET attempts = p.attempts + 1, last_error = u.err, \
                    last_attempt_at = now(), next_attempt_at = now() + make_interval(secs => u.wait), \
                    state = CASE WHEN u.dead THEN 'dead' ELSE 'pending' END \
                 FROM unnest($1::bigint[], $2::text[], $3::float8[], $4::bool[]) AS u(id, err, wait, dead) \
                 WHERE p.id = u.id",
                &[&ids, &errors, &waits, &dead],
            )
            .await
            .map_err(sql("recording failed attempts in walhook.parked"));
        s.failed(r).map(|_| ())
    }

    /// Brings the walhook schema of this database up to date ([`crate::store::migrate`]).
    pub async fn migrate(&self) -> Result<(), ParkError> {
        let mut s = self.session().await?;
        let r = crate::store::migrate(s.client()).await.map(|_| ());
        s.failed(r)
    }

    /// Whether `walhook.parked` exists (a role that may not create the schema needs
    /// `sql/walhook.sql` run for it).
    pub async fn table_exists(&self) -> Result<bool, ParkError> {
        let mut s = self.session().await?;
        let r = table_exists(s.client()).await;
        s.failed(r)
    }

    /// Per trigger, how many pending rows each of its ordering keys has.
    pub async fn pending_keys(&self) -> Result<HashMap<String, HashMap<u64, u64>>, ParkError> {
        let mut s = self.session().await?;
        let r = s
            .client()
            .query(
                "SELECT trigger, order_key, count(*) FROM walhook.parked \
                 WHERE state = 'pending' GROUP BY trigger, order_key",
                &[],
            )
            .await
            .map_err(sql("reading walhook.parked"));
        let rows = s.failed(r)?;
        let mut out: HashMap<String, HashMap<u64, u64>> = HashMap::new();
        for row in rows {
            let context = || sql("reading walhook.parked");
            let trigger: String = row.try_get(0).map_err(context())?;
            let key: i64 = row.try_get(1).map_err(context())?;
            let n: i64 = row.try_get(2).map_err(context())?;
            out.entry(trigger)
                .or_default()
                .insert(key as u64, u64::try_from(n).unwrap_or(0));
        }
        Ok(out)
    }

    /// [`counts`] over this store's connection.
    pub async fn counts(&self) -> Result<BTreeMap<String, Counts>, ParkError> {
        let mut s = self.session().await?;
        let r = counts(s.client()).await;
        s.failed(r)
    }
}

/// The first column of `rows`, event ids.
fn event_ids(rows: &[tokio_postgres::Row], context: &str) -> Result<HashSet<String>, ParkError> {
    rows.iter()
        .map(|r| r.try_get(0).map_err(|e| ParkError::from(sql(context)(e))))
        .collect()
}

/// Per trigger: pending and dead rows, the oldest pending one's age, the last error (empty
/// when `walhook.parked` does not exist).
pub async fn counts(client: &Client) -> Result<BTreeMap<String, Counts>, StoreError> {
    if !table_exists(client).await? {
        return Ok(BTreeMap::new());
    }
    let rows = client
        .query(
            "SELECT trigger, \
                    count(*) FILTER (WHERE state = 'pending'), \
                    count(*) FILTER (WHERE state = 'dead'), \
                    extract(epoch FROM now() - min(parked_at) FILTER (WHERE state = 'pending'))::float8, \
                    (array_agg(last_error ORDER BY coalesce(last_attempt_at, parked_at) DESC, id DESC) \
                        FILTER (WHERE last_error IS NOT NULL))[1] \
             FROM walhook.parked GROUP BY trigger",
            &[],
        )
        .await
        .map_err(sql("reading walhook.parked"))?;
    let context = || sql("reading walhook.parked");
    let mut out = BTreeMap::new();
    for row in rows {
        let parked: i64 = row.try_get(1).map_err(context())?;
        let dead: i64 = row.try_get(2).map_err(context())?;
        out.insert(
            row.try_get::<_, String>(0).map_err(context())?,
            Counts {
                parked: u64::try_from(parked).unwrap_or(0),
                dead: u64::try_from(dead).unwrap_or(0),
                oldest_parked_seconds: row.try_get(3).map_err(context())?,
                last_error: row.try_get(4).map_err(context())?,
            },
        );
    }
    Ok(out)
}

/// Whether `walhook.parked` exists.
async fn table_exists(client: &Client) -> Result<bool, StoreError> {
    client
        .query_one("SELECT to_regclass('walhook.parked') IS NOT NULL", &[])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(sql("looking up walhook.parked"))
}

/// `walhook replay`: dead rows matching `filter` become pending again, due now, with their
/// attempts and `give_up_after` clock reset (or, with `filter.pending`, pending rows become
/// due now). Returns how many rows per trigger.
pub async fn replay(
    client: &Client,
    filter: &ReplayFilter,
) -> Result<BTreeMap<String, u64>, StoreError> {
    if !table_exists(client).await? {
        return Ok(BTreeMap::new()); // nothing was ever parked here
    }
    let set = if filter.pending {
        "next_attempt_at = now()"
    } else {
        "state = 'pending', attempts = 0, first_failure = now(), next_attempt_at = now()"
    };
    let from = if filter.pending { "pending" } else { "dead" };
    let query = format!(
        "UPDATE walhook.parked SET {set} \
         WHERE state = '{from}' AND ($1::text IS NULL OR trigger = $1) \
           AND (cardinality($2::text[]) = 0 OR event_id = ANY($2)) \
           AND ($3::timestamptz IS NULL OR parked_at >= $3) \
         RETURNING trigger"
    );
    let rows = client
        .query(&query, &[&filter.trigger, &filter.ids, &filter.since])
        .await
        .map_err(sql("updating walhook.parked"))?;
    let mut out = BTreeMap::new();
    for row in rows {
        let trigger: String = row.try_get(0).map_err(sql("updating walhook.parked"))?;
        *out.entry(trigger).or_insert(0) += 1;
    }
    Ok(out)
}
