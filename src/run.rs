//! `walhook run`: the daemon loop. Source → triggers → delivery, with acks → progress →
//! the slot's confirmed position.
//!
//! Every job handed to delivery carries an [`Ack`] naming its replication session. After a
//! reconnect the new session restarts from the slot's confirmed position and sends again
//! everything not yet confirmed, so what the old session still had queued is discarded; a
//! request of the old session already on the wire may finish, but its ack cannot move the
//! new session's progress.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

// tokio's mutex cannot be poisoned: progress is never skipped because some other holder
// panicked (a std mutex would leave only a guess: skip the update, or use a state a panic
// left half-changed).
use tokio::sync::{Mutex, mpsc};

use crate::config::Config;
use crate::delivery::{Ack, DeliveryError, Dispatcher, Job};
use crate::drift::{self, Binding};
use crate::fence::{self, Fence};
use crate::preflight::{self, Refused};
use crate::progress::{Progress, TxnId};
use crate::server::Health;
use crate::source::conninfo::{self, ConnInfo, ConnInfoError};
use crate::source::session::{self, SessionOptions, Slot};
use crate::source::setup;
use crate::source::stream::{Confirmer, ReplicationStream, SourceError, SourceEvent};
use crate::store::slot;
use crate::triggers::Router;

/// How long in-flight requests may finish after SIGINT/SIGTERM.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How often the delivered position is written to `walhook.slot_state` (when it moved).
pub const SLOT_RECORD_INTERVAL: Duration = Duration::from_secs(5);

/// How often a standby instance tries to take the slot over.
pub const STANDBY_POLL: Duration = Duration::from_secs(2);

/// Why the daemon stopped (other than being asked to).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// `source.url` is not a valid connection string.
    #[error("source.url: {0}")]
    ConnInfo(#[from] ConnInfoError),
    /// `park.url` is not a valid connection string.
    #[error("park.url: {0}")]
    ParkConnInfo(ConnInfoError),
    /// Delivery could not start.
    #[error(transparent)]
    Delivery(#[from] DeliveryError),
    /// Decoding met changes written while the publication did not exist (it was dropped and
    /// created again): pgoutput fails on them for ever.
    #[error(
        "publication {publication:?} did not exist when changes after {since} were written (it \
         was dropped and created again while walhook streamed): pgoutput cannot decode past \
         them, and they were never published. To accept that gap, stop walhook and run \
         `walhook setup --skip-unpublished`: it finds the first position from which decoding \
         works, moves the slot there and prints the range of commit positions skipped (deliver \
         the rows changed in it from the tables themselves)"
    )]
    Unpublished {
        /// The publication.
        publication: String,
        /// The slot's confirmed position (the gap starts after it).
        since: crate::lsn::Lsn,
    },
    /// The source failed for a reason that retrying does not fix.
    #[error(transparent)]
    Source(#[from] SourceError),
}

/// The progress of the current session, shared with the ack task.
struct Current {
    session: u64,
    progress: Progress,
    confirmer: Option<Confirmer>,
}

impl Current {
    /// Hands the confirmed position to the status writer and updates the in-flight gauge.
    fn publish(&self, in_flight: &metrics::Gauge) {
        if let Some(c) = &self.confirmer {
            c.confirm(self.progress.confirmed());
        }
        in_flight.set(self.progress.in_flight() as f64);
    }
}

/// Runs until `stop` resolves or a permanent error happens. Transient failures of the
/// database connection are retried with backoff, forever.
pub async fn run(
    config: Config,
    health: &Health,
    stop: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let conninfo = ConnInfo::parse(&config.source.url)?;
    let router = Router::new(&config.triggers);
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    // Parked events live in the walhook schema of the source database, or of `[park] url`.
    let park = match &config.park {
        Some(p) => ConnInfo::parse(&p.url).map_err(RunError::ParkConnInfo)?,
        None => conninfo.clone(),
    };
    let dispatcher = Dispatcher::start_parking(&config.triggers, ack_tx, &park)?;
    let current = Arc::new(Mutex::new(Current {
        session: 0,
        progress: Progress::new(crate::lsn::Lsn::ZERO),
        confirmer: None,
    }));
    let acks = tokio::spawn(apply_acks(ack_rx, current.clone()));
    let fence = dispatcher.fence();
    let fenced = Arc::new(tokio::sync::Notify::new());
    let watchdog = tokio::spawn(watchdog(fence.clone(), fenced.clone()));
    let recorder = tokio::spawn(record_position(
        conninfo.clone(),
        config.source.slot.clone(),
        current.clone(),
    ));

    tokio::pin!(stop);
    let mut backoff = Duration::from_millis(500);
    // Counts sessions that streamed, so standby polls and failed attempts do not use up the
    // session bits of the ack tags.
    let mut session = 1u64;
    let mut standby = false;
    let mut ever_streamed = false;
    let (result, open_stream) = loop {
        let ctx = Ctx {
            config: &config,
            conninfo: &conninfo,
            router: &router,
            dispatcher: &dispatcher,
            current: &current,
            health,
            session,
            in_flight: metrics::gauge!("walhook_transactions_in_flight"),
            fenced: &fenced,
        };
        let attempt = stream_once(ctx, stop.as_mut()).await;
        if attempt.is_err() {
            // The stream ended: what is still queued waits for the next session (which
            // discards it and sends it again), so nothing goes out behind a standby's back.
            fence.close();
        }
        if health.is_streaming() {
            // The session had been streaming: this is a fresh failure, retry soon.
            backoff = Duration::from_millis(500);
            session += 1;
            standby = false;
            ever_streamed = true;
        }
        health.set_streaming(false);
        match attempt {
            Ok(stream) => break (Ok(()), stream),
            Err(e) if slot_in_use(&e) => {
                // One active instance per slot: wait as a hot standby, and take over soon
                // after the active one goes away.
                if !standby {
                    tracing::info!("{e}; waiting as a standby");
                    standby = true;
                } else {
                    tracing::debug!("{e}; still a standby");
                }
                tokio::select! {
                    _ = tokio::time::sleep(STANDBY_POLL) => {}
                    _ = &mut stop => break (Ok(()), None),
                }
            }
            Err(e) if e.is_transient() => {
                if ever_streamed {
                    tracing::warn!("database connection lost: {e}; reconnecting in {backoff:?}");
                } else {
                    tracing::warn!(
                        "cannot start streaming (not connected yet): {e}; retrying in {backoff:?}"
                    );
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = &mut stop => break (Ok(()), None),
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Err(e) if unpublished(&e) => {
                let since = current.lock().await.progress.confirmed();
                break (
                    Err(RunError::Unpublished {
                        publication: config.source.publication.clone(),
                        since,
                    }),
                    None,
                );
            }
            Err(e) => break (Err(e.into()), None),
        }
    };

    tracing::info!("shutting down: finishing in-flight deliveries (up to {SHUTDOWN_GRACE:?})");
    dispatcher.shutdown(SHUTDOWN_GRACE).await;
    // The dispatcher is gone, so the ack channel closes once every ack is applied.
    let _ = acks.await;
    recorder.abort();
    watchdog.abort();
    if let Some(stream) = open_stream {
        let lsn = current.lock().await.progress.confirmed();
        stream.confirm(lsn);
        // Sends a last status update with that position, then ends the copy.
        stream.close().await;
        if let Err(e) = slot::advance_at(&conninfo, &config.source.slot, lsn).await {
            tracing::debug!("could not record the final position in walhook.slot_state: {e}");
        }
        tracing::info!(confirmed = %lsn, "stopped");
    }
    result
}

/// Ticks the fence; a late tick (the process was paused) ends the session.
async fn watchdog(fence: Arc<Fence>, fenced: Arc<tokio::sync::Notify>) {
    loop {
        tokio::time::sleep(fence::TICK).await;
        if let Some(gap) = fence.tick() {
            tracing::warn!(
                paused = ?gap,
                "walhook was paused longer than half of wal_sender_timeout; not sending until \
                 a new session proves it still owns the slot"
            );
            fenced.notify_one();
        }
    }
}

/// Keeps `walhook.slot_state` a few seconds behind the delivered position, so if the slot
/// is ever lost the error can say from where changes are at risk.
async fn record_position(conninfo: ConnInfo, slot_name: String, current: Arc<Mutex<Current>>) {
    let mut recorded = crate::lsn::Lsn::ZERO;
    loop {
        tokio::time::sleep(SLOT_RECORD_INTERVAL).await;
        let lsn = {
            let cur = current.lock().await;
            if cur.confirmer.is_none() {
                continue;
            }
            cur.progress.confirmed()
        };
        if lsn <= recorded {
            continue;
        }
        match slot::advance_at(&conninfo, &slot_name, lsn).await {
            Ok(()) => recorded = lsn,
            // The next round tries again; until then the record only trails further.
            Err(e) => tracing::debug!("could not record the position in walhook.slot_state: {e}"),
        }
    }
}

async fn apply_acks(mut acks: mpsc::UnboundedReceiver<Ack>, current: Arc<Mutex<Current>>) {
    let in_flight = metrics::gauge!("walhook_transactions_in_flight");
    while let Some(ack) = acks.recv().await {
        let mut cur = current.lock().await;
        if ack.session != cur.session {
            continue; // an ack from a previous session: its progress is gone
        }
        if let Err(e) = cur.progress.ack(ack.txn) {
            tracing::error!("progress: {e}");
            continue;
        }
        cur.publish(&in_flight);
    }
}

/// The server says the publication does not exist, as of a change being decoded.
fn unpublished(e: &SourceError) -> bool {
    matches!(e, SourceError::Connect(c) if c.code() == Some("42704"))
        && e.to_string().contains("publication")
}

/// The slot is streaming to another session (55006 object_in_use): wait as a standby.
fn slot_in_use(e: &SourceError) -> bool {
    match e {
        SourceError::SlotActive(_) => true,
        SourceError::Connect(c) => c.code() == Some("55006"),
        _ => false,
    }
}

/// What one streaming attempt needs.
struct Ctx<'a> {
    config: &'a Config,
    conninfo: &'a ConnInfo,
    router: &'a Router,
    dispatcher: &'a Dispatcher,
    current: &'a Mutex<Current>,
    health: &'a Health,
    session: u64,
    /// Transactions read and not yet delivered (entries of the progress queue).
    in_flight: metrics::Gauge,
    /// Notified when the fence closes because the process was paused.
    fenced: &'a tokio::sync::Notify,
}

impl Ctx<'_> {
    /// Applies `f` to the session's progress and passes the confirmed position on.
    async fn progress(&self, f: impl FnOnce(&mut Progress)) {
        let mut cur = self.current.lock().await;
        f(&mut cur.progress);
        cur.publish(&self.in_flight);
    }
}

/// Streams until `stop` (returns the open stream, to be closed after delivery drains) or
/// an error.
async fn stream_once(
    ctx: Ctx<'_>,
    mut stop: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<Option<ReplicationStream>, SourceError> {
    let options = SessionOptions {
        conninfo: ctx.conninfo.clone(),
        slot: Slot::Permanent(ctx.config.source.slot.clone()),
        publication: ctx.config.source.publication.clone(),
        publish: Some(ctx.router.tables()),
    };
    let setup = async {
        let client = conninfo::connect_sql(ctx.conninfo).await?;
        let report = preflight::database(&client, ctx.config, ctx.router).await?;
        if !report.passed() {
            return Err(Refused(report.errors()).into());
        }
        let timeout = setup::wal_sender_timeout_ms(&client).await?;
        // Triggers follow their tables' OIDs for the session (see crate::drift).
        let binding = Binding::resolve(&client, &ctx.router.tables()).await?;
        Ok::<_, SourceError>((session::open_on(client, &options).await?, timeout, binding))
    };
    let (mut stream, wal_sender_timeout, mut binding) = tokio::select! {
        s = setup => s?,
        _ = &mut stop => return Ok(None),
    };
    // The new session sends again everything queued from an earlier one.
    ctx.dispatcher.discard_queued();
    // What walhook.parked holds now (parked by an earlier process, or by another instance
    // while this one was a standby) keeps those keys' new events behind it.
    ctx.dispatcher
        .load_parked(ctx.config.park.is_some())
        .await?;
    // Only a shutdown of the source database is waiting for this session to confirm.
    let db_down = match ctx.config.park {
        None => ctx.dispatcher.database_shutting_down(),
        Some(_) => Arc::new(tokio::sync::Notify::new()),
    };
    // A notice left over from before this session (the database has restarted since).
    let _ = tokio::time::timeout(Duration::ZERO, db_down.notified()).await;
    ctx.dispatcher
        .fence()
        .open(Fence::bound_for(wal_sender_timeout));
    ctx.health.set_streaming(true);
    let _drift_checks = AbortOnDrop(tokio::spawn(check_drift(
        ctx.conninfo.clone(),
        ctx.config.source.publication.clone(),
        binding.tables().map(|(oid, t)| (oid, t.clone())).collect(),
        ctx.health.drift.clone(),
    )));
    *ctx.current.lock().await = Current {
        session: ctx.session,
        progress: Progress::new(stream.confirmed()),
        confirmer: Some(stream.confirmer()),
    };
    let mut txn: TxnId = 0;
    loop {
        let event = tokio::select! {
            e = stream.next() => e?,
            _ = &mut stop => return Ok(Some(stream)),
            () = ctx.fenced.notified() => return Err(SourceError::Fenced),
            () = db_down.notified() => return Err(SourceError::DatabaseShuttingDown),
        };
        match event {
            SourceEvent::Begin {
                committed_at,
                sent_at,
                ..
            } => {
                ctx.dispatcher.set_behind(behind(committed_at, sent_at));
                ctx.progress(|p| txn = p.begin()).await;
            }
            SourceEvent::Change(change) => {
                let routed = binding.route(ctx.router, &change, &ctx.health.drift);
                if !submit(&ctx, txn, routed, &mut stop, &db_down).await? {
                    return Ok(Some(stream));
                }
            }
            SourceEvent::Message {
                message,
                standalone,
            } => {
                let routed = ctx.router.route_message(&message);
                if routed.is_empty() {
                    continue;
                }
                // A message outside any transaction is a transaction of its own, confirmed at
                // its LSN once delivered.
                if standalone {
                    ctx.progress(|p| txn = p.begin()).await;
                }
                if !submit(&ctx, txn, routed, &mut stop, &db_down).await? {
                    return Ok(Some(stream));
                }
                if standalone {
                    ctx.progress(|p| p.commit(txn, message.commit_lsn)).await;
                }
            }
            SourceEvent::Commit(c) => ctx.progress(|p| p.commit(txn, c.end_lsn)).await,
            SourceEvent::Idle { wal_end } => {
                ctx.dispatcher.set_behind(false);
                ctx.progress(|p| p.keepalive(wal_end)).await;
            }
        }
    }
}

/// How long after its commit the server must send a transaction for the stream to count as
/// catching up with a backlog (see [`crate::delivery::Dispatcher::set_behind`]). Above the
/// 600 ms by which `synchronous_commit = off` may hold back a commit's WAL.
const BEHIND_AFTER_MICROS: i64 = 1_000_000;

/// Whether a transaction the server sent at `sent_at` and committed at `committed_at` (both by
/// the server's clock, so the host's clock does not matter) means a backlog.
fn behind(
    committed_at: crate::source::pgoutput::PgTimestamp,
    sent_at: crate::source::pgoutput::PgTimestamp,
) -> bool {
    sent_at.0.saturating_sub(committed_at.0) > BEHIND_AFTER_MICROS
}

/// Hands a change's or message's events to delivery, counted in transaction `txn` first;
/// `Ok(false)` when the run is to stop (nothing handed over since is confirmed).
async fn submit(
    ctx: &Ctx<'_>,
    txn: TxnId,
    routed: Vec<crate::triggers::Routed>,
    stop: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    db_down: &tokio::sync::Notify,
) -> Result<bool, SourceError> {
    if routed.is_empty() {
        return Ok(true);
    }
    let n = routed.len() as u64;
    // Count the events before handing any over, so no ack can come first.
    ctx.progress(|p| p.add(txn, n)).await;
    for r in routed {
        let job = Job {
            id: r.id,
            body: r.body.into(),
            order_key: r.order_key,
            txn: Ack {
                session: ctx.session,
                txn,
            },
            shape: r.shape,
        };
        tokio::select! {
            _ = ctx.dispatcher.submit(r.trigger, job) => {}
            // Not delivered, not confirmed: the next run sends it again.
            () = stop.as_mut() => return Ok(false),
            () = ctx.fenced.notified() => return Err(SourceError::Fenced),
            () = db_down.notified() => return Err(SourceError::DatabaseShuttingDown),
        }
    }
    Ok(true)
}

/// Aborts the task when dropped (the drift checks end with their session).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Compares the session's binding with the catalog every [`drift::CHECK_INTERVAL`].
async fn check_drift(
    conninfo: ConnInfo,
    publication: String,
    binding: Vec<(u32, crate::config::TableName)>,
    drift: Arc<drift::Drift>,
) {
    let mut checker = drift::Checker::default();
    loop {
        tokio::time::sleep(drift::CHECK_INTERVAL).await;
        if let Err(e) = drift::check(&conninfo, &publication, &binding, &mut checker, &drift).await
        {
            tracing::debug!(
                "drift check failed (tried again in {:?}): {e}",
                drift::CHECK_INTERVAL
            );
        }
    }
}
