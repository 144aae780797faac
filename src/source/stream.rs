//! One replication session: START_REPLICATION on a slot, decoded into [`SourceEvent`]s.
//!
//! The session has two halves. The reader (this struct's [`ReplicationStream::next`]) is
//! driven by the consumer and may stall for a long time under back-pressure. The writer is a
//! task of its own that sends standby status updates every [`STATUS_INTERVAL`] and at once
//! when the server asks (keepalive with the reply flag), so a stalled consumer never makes
//! the walsender time out. The flushed position it reports is whatever the consumer
//! [`confirm`](ReplicationStream::confirm)ed — forward-only, and never more than that.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::event::{Change, Message};
use crate::lsn::Lsn;
use crate::source::changes::{self, ChangeError, TxnContext};
use crate::source::connection::{ConnectError, ReplicationReader, ReplicationWriter};
use crate::source::pgoutput::PgTimestamp;
use crate::source::pgoutput::{self, Commit, DecodeError, PgOutput};
use crate::source::protocol::{self, ProtocolError, ReplicationMessage};
use crate::source::relations::{RelationCache, RelationError};

/// How often a status update is sent even when nothing changed (well inside the default
/// 60 s `wal_sender_timeout`).
pub const STATUS_INTERVAL: Duration = Duration::from_secs(5);

/// What the stream yields, in WAL order.
// Changes dominate the stream: boxing them would cost an allocation per row to save a
// copy of a few hundred bytes.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum SourceEvent {
    /// A transaction starts; its changes follow.
    Begin {
        /// Transaction id.
        xid: u32,
        /// LSN of its commit record.
        commit_lsn: Lsn,
        /// When it committed, and when the server sent its Begin (both by the server's
        /// clock): how far behind the stream runs, free of clock skew.
        committed_at: PgTimestamp,
        /// See `committed_at`.
        sent_at: PgTimestamp,
    },
    /// A row change inside the current transaction.
    Change(Change),
    /// A logical decoding message: inside the current transaction when `standalone` is
    /// false; otherwise (non-transactional) on its own, confirmable at its LSN once delivered.
    Message {
        /// The message.
        message: Message,
        /// Not part of a transaction.
        standalone: bool,
    },
    /// The current transaction ended; `end_lsn` may be confirmed once it is delivered.
    Commit(Commit),
    /// The server has sent everything up to `wal_end`; confirmable when nothing is in flight.
    Idle {
        /// Server's WAL end.
        wal_end: Lsn,
    },
}

/// Why the stream stopped.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The connection failed or the server reported an error.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// A replication message was malformed.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// A pgoutput message was malformed.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A precondition failed or the slot/publication could not be set up.
    #[error(transparent)]
    Setup(#[from] crate::source::setup::SetupError),
    /// A catalog look-up failed.
    #[error(transparent)]
    Relation(#[from] RelationError),
    /// The slot is gone, or its recorded state could not be read.
    #[error(transparent)]
    Slot(#[from] crate::store::slot::SlotError),
    /// The preflight found something `run` must not start with.
    #[error(transparent)]
    Refused(#[from] crate::preflight::Refused),
    /// A row could not be converted. walhook stops rather than skip the change; restarting
    /// meets it again, so the message names where it is.
    #[error(
        "cannot convert a change of the transaction committed at {commit_lsn} (xid {xid}): {source}; \
         walhook stops here rather than skip it"
    )]
    Change {
        /// Commit LSN of the transaction.
        commit_lsn: Lsn,
        /// Transaction id.
        xid: u32,
        /// What was wrong.
        source: ChangeError,
    },
    /// A change named a relation the server never described.
    #[error("change for relation {0} arrived before its Relation message")]
    UnknownRelation(u32),
    /// A change arrived outside a transaction.
    #[error("{0} message outside a transaction")]
    OutsideTransaction(&'static str),
    /// Another session streams from the slot (a second instance, or our previous connection
    /// not yet gone).
    #[error("the replication slot is in use by walsender pid {0}")]
    SlotActive(i32),
    /// The process was paused too long to trust that it still owns the slot.
    #[error(
        "walhook was paused longer than half of wal_sender_timeout: its stream may have ended \
         and a standby may own the slot, so it stopped sending and reconnects"
    )]
    Fenced,
    /// The server ended the replication stream.
    #[error("the server ended the replication stream")]
    Ended,
    /// The park table could not be read.
    #[error(transparent)]
    Park(#[from] crate::store::park::ParkError),
    /// The database is shutting down: it ended walhook's park-table session or refuses new
    /// ones. Events that can be neither delivered nor parked must not hold up its shutdown
    /// (Postgres waits for the walsender until everything sent is confirmed), so the session
    /// ends without confirming them; they are sent again after the restart.
    #[error(
        "the database is shutting down; ending the replication session so its shutdown is not \
         held up by events that cannot be delivered or parked now (they are sent again after \
         it restarts)"
    )]
    DatabaseShuttingDown,
}

impl SourceError {
    /// Whether reconnecting may help (network, server restart) rather than needing a fix.
    pub fn is_transient(&self) -> bool {
        match self {
            SourceError::Connect(e) => e.is_transient(),
            SourceError::Relation(e) => e.is_transient(),
            SourceError::Setup(e) => e.is_transient(),
            SourceError::Slot(e) => e.is_transient(),
            SourceError::Park(e) => e.is_transient(),
            SourceError::Ended
            | SourceError::SlotActive(_)
            | SourceError::Fenced
            | SourceError::DatabaseShuttingDown => true,
            _ => false,
        }
    }
}

/// Positions shared between the reader, the consumer and the status writer.
#[derive(Debug, Default)]
struct Status {
    /// Highest WAL position received.
    received: AtomicU64,
    /// Highest position the consumer confirmed.
    confirmed: AtomicU64,
    wake: Notify,
}

impl TxnContext {
    /// Wraps a conversion error with where it happened.
    fn err(&self) -> impl FnOnce(ChangeError) -> SourceError + use<> {
        let (commit_lsn, xid) = (self.commit_lsn, self.xid);
        move |source| SourceError::Change {
            commit_lsn,
            xid,
            source,
        }
    }
}

/// Confirms positions of one session from any task (forward-only).
#[derive(Debug, Clone)]
pub struct Confirmer(Arc<Status>);

impl Confirmer {
    /// Marks everything up to `lsn` as delivered; the status writer reports it soon.
    pub fn confirm(&self, lsn: Lsn) {
        let old = self.0.confirmed.fetch_max(lsn.0, Ordering::AcqRel);
        if lsn.0 > old {
            self.0.wake.notify_one();
        }
    }

    /// The position last confirmed.
    pub fn confirmed(&self) -> Lsn {
        Lsn(self.0.confirmed.load(Ordering::Acquire))
    }

    /// The highest position received from the server.
    pub fn received(&self) -> Lsn {
        Lsn(self.0.received.load(Ordering::Acquire))
    }
}

/// A running replication session.
pub struct ReplicationStream {
    reader: ReplicationReader,
    relations: RelationCache,
    status: Arc<Status>,
    writer: JoinHandle<Result<ReplicationWriter, ConnectError>>,
    stop_writer: Arc<Notify>,
    txn: Option<TxnContext>,
    seq: u64,
    /// The server's clock when it sent the last XLogData.
    sent_at: PgTimestamp,
    /// Events decoded from one message and not yet returned (a Truncate of several tables).
    backlog: std::collections::VecDeque<SourceEvent>,
}

impl ReplicationStream {
    /// Wraps a session that START_REPLICATION put in CopyBoth mode; `start` is the slot's
    /// confirmed position, reported until the consumer confirms more.
    pub fn new(
        reader: ReplicationReader,
        writer: ReplicationWriter,
        relations: RelationCache,
        start: Lsn,
    ) -> ReplicationStream {
        let status = Arc::new(Status::default());
        status.confirmed.store(start.0, Ordering::Relaxed);
        status.received.store(start.0, Ordering::Relaxed);
        let stop_writer = Arc::new(Notify::new());
        let writer = tokio::spawn(status_writer(writer, status.clone(), stop_writer.clone()));
        ReplicationStream {
            reader,
            relations,
            status,
            writer,
            stop_writer,
            txn: None,
            seq: 0,
            sent_at: PgTimestamp::default(),
            backlog: std::collections::VecDeque::new(),
        }
    }

    /// Marks everything up to `lsn` as delivered; the writer reports it soon.
    pub fn confirm(&self, lsn: Lsn) {
        self.confirmer().confirm(lsn);
    }

    /// The position last confirmed.
    pub fn confirmed(&self) -> Lsn {
        self.confirmer().confirmed()
    }

    /// A handle that confirms positions from another task.
    pub fn confirmer(&self) -> Confirmer {
        Confirmer(self.status.clone())
    }

    /// The catalog connection, for look-ups by the consumer.
    pub fn relations(&self) -> &RelationCache {
        &self.relations
    }

    /// The next event. Cancel-safe only between events (it may be awaiting a catalog query).
    pub async fn next(&mut self) -> Result<SourceEvent, SourceError> {
        if let Some(event) = self.backlog.pop_front() {
            return Ok(event);
        }
        loop {
            let received = match self.relations.idle_deadline() {
                // reader.recv is cancel-safe: nothing is lost when the timer wins.
                Some(deadline) => tokio::select! {
                    r = self.reader.recv() => r?,
                    _ = tokio::time::sleep_until(deadline) => {
                        self.relations.close_if_idle();
                        continue;
                    }
                },
                None => self.reader.recv().await?,
            };
            let Some(payload) = received else {
                return Err(SourceError::Ended);
            };
            match protocol::parse(payload)? {
                ReplicationMessage::Keepalive {
                    wal_end,
                    reply_requested,
                    ..
                } => {
                    self.status.received.fetch_max(wal_end.0, Ordering::AcqRel);
                    if reply_requested {
                        self.status.wake.notify_one();
                    }
                    if self.txn.is_none() {
                        return Ok(SourceEvent::Idle { wal_end });
                    }
                }
                ReplicationMessage::XLogData {
                    wal_end,
                    data,
                    server_time,
                    ..
                } => {
                    self.status.received.fetch_max(wal_end.0, Ordering::AcqRel);
                    self.sent_at = PgTimestamp(server_time);
                    if let Some(event) = self.on_message(pgoutput::decode(data)?).await? {
                        return Ok(event);
                    }
                }
            }
        }
    }

    async fn on_message(&mut self, msg: PgOutput) -> Result<Option<SourceEvent>, SourceError> {
        let event = match msg {
            PgOutput::Begin(b) => {
                self.txn = Some(TxnContext {
                    commit_lsn: b.final_lsn,
                    xid: b.xid,
                    committed_at: b.commit_time,
                });
                self.seq = 0;
                SourceEvent::Begin {
                    xid: b.xid,
                    commit_lsn: b.final_lsn,
                    committed_at: b.commit_time,
                    sent_at: self.sent_at,
                }
            }
            PgOutput::Commit(c) => {
                self.txn = None;
                SourceEvent::Commit(c)
            }
            PgOutput::Relation(r) => {
                self.relations.on_relation(r).await?;
                return Ok(None);
            }
            PgOutput::Insert { relation, new } => {
                let (rel, txn, seq) = self.change_context(relation, "Insert")?;
                SourceEvent::Change(changes::insert(rel, &txn, seq, &new).map_err(txn.err())?)
            }
            PgOutput::Update { relation, old, new } => {
                let (rel, txn, seq) = self.change_context(relation, "Update")?;
                SourceEvent::Change(
                    changes::update(rel, &txn, seq, old.as_ref(), &new).map_err(txn.err())?,
                )
            }
            PgOutput::Delete { relation, old } => {
                let (rel, txn, seq) = self.change_context(relation, "Delete")?;
                SourceEvent::Change(changes::delete(rel, &txn, seq, &old).map_err(txn.err())?)
            }
            PgOutput::Truncate { options, relations } => {
                // One event per table, in the order Postgres lists them.
                for relation in relations {
                    let (rel, txn, seq) = self.change_context(relation, "Truncate")?;
                    let change = changes::truncate(rel, &txn, seq, options);
                    self.backlog.push_back(SourceEvent::Change(change));
                }
                return Ok(self.backlog.pop_front());
            }
            PgOutput::Message {
                transactional,
                lsn,
                prefix,
                content,
            } => match self.txn {
                // A non-transactional message emitted inside a transaction still arrives on
                // its own; one that arrives inside a transaction is delivered with it.
                Some(txn) => {
                    let seq = self.seq;
                    self.seq += 1;
                    let txn_info = Some((txn.xid, txn.committed_at));
                    SourceEvent::Message {
                        message: Message::new(
                            transactional,
                            prefix,
                            &content,
                            txn.commit_lsn,
                            txn_info,
                            seq,
                        ),
                        standalone: false,
                    }
                }
                None => SourceEvent::Message {
                    message: Message::new(transactional, prefix, &content, lsn, None, 0),
                    standalone: true,
                },
            },
            // Type and Origin carry nothing walhook routes.
            PgOutput::Type { .. } | PgOutput::Origin { .. } => return Ok(None),
        };
        Ok(Some(event))
    }

    fn change_context(
        &mut self,
        relation: u32,
        what: &'static str,
    ) -> Result<(&crate::source::relations::CachedRelation, TxnContext, u64), SourceError> {
        let txn = self.txn.ok_or(SourceError::OutsideTransaction(what))?;
        let seq = self.seq;
        self.seq += 1;
        let rel = self
            .relations
            .get(relation)
            .ok_or(SourceError::UnknownRelation(relation))?;
        Ok((rel, txn, seq))
    }

    /// Sends a last status update with the confirmed position and ends the copy.
    pub async fn close(mut self) {
        self.stop_writer.notify_one();
        match (&mut self.writer).await {
            Ok(Ok(mut w)) => {
                let _ = w.send_copy_done().await;
            }
            Ok(Err(e)) => tracing::warn!(
                "the connection failed before the final status update ({e}); the slot keeps its last reported position"
            ),
            Err(e) => tracing::debug!("status writer task failed: {e}"),
        }
    }
}

impl Drop for ReplicationStream {
    /// A stream dropped without [`close`](ReplicationStream::close) (after an error) must
    /// close its connection: the status writer holds the socket's write half and would keep
    /// the walsender, and so the slot, busy with status updates forever.
    fn drop(&mut self) {
        self.writer.abort();
    }
}

async fn status_writer(
    mut writer: ReplicationWriter,
    status: Arc<Status>,
    stop: Arc<Notify>,
) -> Result<ReplicationWriter, ConnectError> {
    let mut last_sent = 0u64;
    let mut stopping = false;
    let confirmed_gauge = metrics::gauge!("walhook_confirmed_lsn");
    let received_gauge = metrics::gauge!("walhook_received_lsn");
    let lag_gauge = metrics::gauge!("walhook_unconfirmed_bytes");
    loop {
        let confirmed = status.confirmed.load(Ordering::Acquire);
        let received = status.received.load(Ordering::Acquire).max(confirmed);
        // As f64, exact up to 2^53 bytes of WAL (8 PiB).
        confirmed_gauge.set(confirmed as f64);
        received_gauge.set(received as f64);
        lag_gauge.set((received - confirmed) as f64);
        crate::server::ACTIVITY.positions(received, confirmed);
        let msg = protocol::standby_status_update(
            Lsn(received),
            Lsn(confirmed),
            Lsn(confirmed),
            SystemTime::now(),
            false,
        );
        writer.send_copy_data(&msg).await?;
        if confirmed != last_sent {
            tracing::trace!(flush = %Lsn(confirmed), "confirmed");
            last_sent = confirmed;
        }
        if stopping {
            return Ok(writer);
        }
        tokio::select! {
            _ = tokio::time::sleep(STATUS_INTERVAL) => {}
            _ = status.wake.notified() => {
                // Coalesce bursts of confirmations into one update.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            _ = stop.notified() => stopping = true,
        }
    }
}
