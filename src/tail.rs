//! `walhook tail`: decoded events from a temporary slot as JSON lines on stdout.

use std::io::Write;

use crate::event::Event;
use crate::lsn::Lsn;
use crate::source::conninfo::{self, ConnInfo};
use crate::source::session::{self, SessionOptions, Slot};
use crate::source::stream::{SourceError, SourceEvent};

/// What to tail.
#[derive(Debug, Clone)]
pub struct TailOptions {
    /// Where to connect.
    pub conninfo: ConnInfo,
    /// Publication to decode.
    pub publication: String,
    /// Only these tables (schema, table); all of the publication's when empty.
    pub tables: Vec<(String, String)>,
    /// Read this existing slot instead of a temporary one, without moving it.
    pub slot: Option<String>,
    /// Stop after the transaction that ends at or past this position.
    pub endpos: Option<Lsn>,
}

/// Why tailing stopped.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// The source failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A `--table` that the publication does not publish: it would print nothing, ever.
    #[error(
        "--table {tables}: not in publication {publication:?}, which publishes {published}; \
         add it (ALTER PUBLICATION … ADD TABLE …) or leave that --table out"
    )]
    NotPublished {
        /// The tables asked for and not published, `schema.table`, comma-separated.
        tables: String,
        /// The publication.
        publication: String,
        /// What it does publish.
        published: String,
    },
    /// Looking the publication's tables up failed.
    #[error("reading the tables of publication {publication:?}: {source}")]
    Catalog {
        /// The publication.
        publication: String,
        /// Why.
        source: tokio_postgres::Error,
    },
    /// stdout is gone (e.g. the reader of a pipe exited).
    #[error("writing to stdout: {0}")]
    Stdout(#[from] std::io::Error),
}

/// Streams until `stop` resolves (or `endpos` is reached), writing one event per line to
/// `out`, flushed per line.
///
/// The temporary slot is dropped by the server when the connection closes, so nothing is
/// left behind; its positions are confirmed as lines are written so WAL is not retained.
/// An existing slot (`--slot`) is only read: its confirmed position does not move.
pub async fn tail(
    opts: TailOptions,
    mut out: impl Write,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), TailError> {
    check_tables(&opts).await?;
    let (slot, confirm) = match opts.slot {
        Some(name) => (Slot::Existing(name), false),
        None => (
            Slot::Temporary(format!("walhook_tail_{}", std::process::id())),
            true,
        ),
    };
    let mut stream = session::open(&SessionOptions {
        conninfo: opts.conninfo,
        slot,
        publication: opts.publication,
        publish: None,
    })
    .await?;
    tokio::pin!(stop);
    let result = loop {
        let event = tokio::select! {
            e = stream.next() => e,
            _ = &mut stop => break Ok(()),
        };
        match event {
            Ok(SourceEvent::Change(change)) => {
                let wanted = opts.tables.is_empty()
                    || opts
                        .tables
                        .iter()
                        .any(|(s, t)| **s == *change.schema && **t == *change.table);
                if wanted {
                    let mut line = Event::of(&change, None).to_json();
                    line.push(b'\n');
                    if let Err(e) = out.write_all(&line).and_then(|()| out.flush()) {
                        break Err(e.into());
                    }
                }
            }
            Ok(SourceEvent::Message {
                message,
                standalone,
            }) => {
                // Messages have no table: shown when no --table narrows the output.
                if opts.tables.is_empty() {
                    let mut line = message.to_json(&message.event_id(None), None);
                    line.push(b'\n');
                    if let Err(e) = out.write_all(&line).and_then(|()| out.flush()) {
                        break Err(e.into());
                    }
                }
                if standalone && confirm {
                    stream.confirm(message.commit_lsn);
                }
            }
            Ok(SourceEvent::Commit(c)) => {
                if confirm {
                    stream.confirm(c.end_lsn);
                }
                if opts.endpos.is_some_and(|end| c.end_lsn >= end) {
                    break Ok(());
                }
            }
            Ok(SourceEvent::Idle { wal_end }) => {
                if confirm {
                    stream.confirm(wal_end);
                }
                if opts.endpos.is_some_and(|end| wal_end >= end) {
                    break Ok(());
                }
            }
            Ok(SourceEvent::Begin { .. }) => {}
            Err(e) => break Err(e.into()),
        }
    };
    stream.close().await;
    result
}

/// Refuses `--table`s the publication does not publish. A missing publication is left to
/// [`session::open`], which reports it.
async fn check_tables(opts: &TailOptions) -> Result<(), TailError> {
    if opts.tables.is_empty() {
        return Ok(());
    }
    let client = conninfo::connect_sql(&opts.conninfo)
        .await
        .map_err(SourceError::from)?;
    let catalog = |source| TailError::Catalog {
        publication: opts.publication.clone(),
        source,
    };
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&opts.publication],
        )
        .await
        .map_err(catalog)?;
    if exists.is_none() {
        return Ok(());
    }
    let published: Vec<(String, String)> = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables \
             WHERE pubname = $1 ORDER BY 1, 2",
            &[&opts.publication],
        )
        .await
        .map_err(catalog)?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let missing: Vec<String> = opts
        .tables
        .iter()
        .filter(|t| !published.contains(t))
        .map(|(s, t)| format!("{s}.{t}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = published.iter().map(|(s, t)| format!("{s}.{t}")).collect();
    Err(TailError::NotPublished {
        tables: missing.join(", "),
        publication: opts.publication.clone(),
        published: if names.is_empty() {
            "no tables".to_owned()
        } else {
            names.join(", ")
        },
    })
}
