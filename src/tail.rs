//! `walhook tail`: decoded events from a temporary slot as JSON lines on stdout.

use std::io::Write;

use crate::event::Event;
use crate::source::conninfo::ConnInfo;
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
}

/// Why tailing stopped.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// The source failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// stdout is gone (e.g. the reader of a pipe exited).
    #[error("writing to stdout: {0}")]
    Stdout(#[from] std::io::Error),
}

/// Streams until `stop` resolves, writing one event per line to `out`, flushed per line.
///
/// The temporary slot is dropped by the server when the connection closes, so nothing is
/// left behind; positions are confirmed as lines are written so WAL is not retained.
pub async fn tail(
    opts: TailOptions,
    mut out: impl Write,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), TailError> {
    let slot = format!("walhook_tail_{}", std::process::id());
    let mut stream = session::open(&SessionOptions {
        conninfo: opts.conninfo,
        slot: Slot::Temporary(slot),
        publication: opts.publication,
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
            Ok(SourceEvent::Commit(c)) => stream.confirm(c.end_lsn),
            Ok(SourceEvent::Idle { wal_end }) => stream.confirm(wal_end),
            Ok(SourceEvent::Begin { .. }) => {}
            Err(e) => break Err(e.into()),
        }
    };
    stream.close().await;
    result
}
