//! Parking: the events a failing target cannot take go to `walhook.parked` (see
//! [`crate::store::park`]) so the slot moves on, and a task per target delivers them from
//! there.
//!
//! - [`Parked`] counts, per ordering key, the pending rows this process parked (or found at
//!   start). While a key's count is above zero its later events are parked behind them, so a
//!   row's events keep their commit order; when the unparker has delivered (or given up on)
//!   the last one, the key goes back to live delivery. Lanes claim a key (count + 1) in the
//!   same step as they decide to park an event, so the unparker cannot see a key empty while
//!   one of its events is about to be parked.
//! - [`store`] writes the jobs in one transaction and is retried until it succeeds: a park
//!   table that cannot be written leaves the events pending, unacked (the slot waits). If the
//!   database is shutting down it says so, so the session can end instead of holding up the
//!   shutdown (Postgres waits for its walsenders to have everything confirmed).
//! - [`unpark`] walks the trigger's pending rows by id, sends each key's rows in order (the
//!   same id, body and signature scheme as live delivery, on the retry schedule), deletes what
//!   was answered 2xx, and marks rows dead past `give_up_after` or on a final 4xx under
//!   `on_4xx = "dead"`. It only runs while this instance streams (the fence is open), so a
//!   standby never delivers the active instance's parked events.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::connection::Connection;
use super::lane::{self, Queued, Shared};
use super::outcome::{Reason, Verdict};
use super::retry::{self, Hint};
use super::{Ack, Job};
use crate::config::On4xx;
use crate::store::park::{Failure, NewRow, ParkError, ParkStore, ParkedRow, Retry, State};

/// Jobs parked per insert (and taken off a lane's queue at once while parking).
pub(super) const CHUNK: usize = 512;
/// Rows the unparker reads per query.
const PAGE: i64 = 1000;
/// Requests the unparker of one target sends at once.
const MAX_WORKERS: usize = 16;
/// How often the park counts are read for the gauges (and to notice `walhook replay`).
pub(super) const REFRESH: Duration = Duration::from_secs(5);
/// A park connection unused this long is closed (see [`crate::store::park`]).
pub(super) const IDLE_CLOSE: Duration = Duration::from_secs(2);

/// The ordering keys of one target with pending parked events.
#[derive(Default)]
pub(super) struct Parked {
    keys: Mutex<HashMap<u64, u64>>,
    /// Keys in the map, readable without the lock (the common case is zero).
    len: AtomicUsize,
}

impl Parked {
    /// No key is parked.
    pub fn is_empty(&self) -> bool {
        self.len.load(AtomicOrdering::Acquire) == 0
    }

    /// Takes out of `pending`, in order and up to `limit`, the jobs whose key is parked or
    /// for which `also(key)` holds, claiming each one's key.
    pub fn take(
        &self,
        pending: &mut VecDeque<Queued>,
        limit: usize,
        also: impl Fn(u64) -> bool,
    ) -> Vec<(Queued, bool)> {
        let Ok(mut keys) = self.keys.lock() else {
            return Vec::new();
        };
        let mut taken = Vec::new();
        let mut keep = VecDeque::with_capacity(pending.len());
        for q in pending.drain(..) {
            let key = q.job.order_key;
            if taken.len() < limit && (keys.contains_key(&key) || also(key)) {
                *keys.entry(key).or_insert(0) += 1;
                taken.push((q, true));
            } else {
                keep.push_back(q);
            }
        }
        *pending = keep;
        self.len.store(keys.len(), AtomicOrdering::Release);
        taken
    }

    /// One pending row of `key` is gone (delivered, dead, or never stored).
    pub fn release(&self, key: u64) {
        let Ok(mut keys) = self.keys.lock() else {
            return;
        };
        if let Some(n) = keys.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                keys.remove(&key);
            }
        }
        self.len.store(keys.len(), AtomicOrdering::Release);
    }

    /// Replaces the counts with what the table holds.
    pub fn load(&self, counts: HashMap<u64, u64>) {
        if let Ok(mut keys) = self.keys.lock() {
            *keys = counts;
            keys.retain(|_, n| *n > 0);
            self.len.store(keys.len(), AtomicOrdering::Release);
        }
    }
}

/// Park metrics of one target.
pub(super) struct Metrics {
    parked_total: Counter,
    unparked_total: Counter,
    dead_total: Counter,
    /// Pending parked events (refreshed from the table).
    pub parked: Gauge,
    /// Dead events (refreshed from the table).
    pub dead: Gauge,
}

impl Metrics {
    pub fn new(name: &str) -> Metrics {
        let t = || ("trigger", name.to_owned());
        Metrics {
            parked_total: metrics::counter!("walhook_parked_total", &[t()]),
            unparked_total: metrics::counter!("walhook_unparked_total", &[t()]),
            dead_total: metrics::counter!("walhook_dead_total", &[t()]),
            parked: metrics::gauge!("walhook_parked", &[t()]),
            dead: metrics::gauge!("walhook_dead", &[t()]),
        }
    }
}

/// How a [`store`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stored {
    /// Committed: the jobs may be acked.
    Yes,
    /// The jobs were discarded by a new session meanwhile (it sends them again).
    Discarded,
    /// The dispatcher stops.
    Stopped,
}

/// Writes `jobs` to the park table in one transaction, retrying until it succeeds. On
/// success a job's claim is kept only if its row is pending and counted by it: an event id
/// already in the table (sent again by a new session, or dead) gives its claim back, since the
/// row there has its own count, or none.
pub(super) async fn store(
    shared: &Shared,
    jobs: &mut [(Queued, bool)],
    state: State,
    failure: &Failure,
    stop: &mut watch::Receiver<bool>,
) -> Stored {
    let Some(park) = &shared.park else {
        return Stored::Stopped; // lanes only park with a store
    };
    let rows: Vec<NewRow<'_>> = jobs
        .iter()
        .map(|(q, _)| NewRow {
            event_id: &q.job.id,
            order_key: q.job.order_key,
            body: &q.job.body,
            shape: q.job.shape.as_deref(),
        })
        .collect();
    let mut attempt = 0u32;
    // An attempt that failed may still have committed (the answer was lost).
    let mut maybe_committed = false;
    let inserted = loop {
        if lane::is_stopped(stop) {
            return Stored::Stopped;
        }
        if shared.is_discarded(jobs.iter().map(|(q, _)| q)) {
            return Stored::Discarded;
        }
        let result = match park.park(&shared.name, &rows, state, failure).await {
            Ok(mut inserted) if maybe_committed && state == State::Pending => {
                // Rows of ours from the attempt whose answer was lost count as inserted.
                let missing: Vec<&str> = rows
                    .iter()
                    .map(|r| r.event_id)
                    .filter(|id| !inserted.contains(*id))
                    .collect();
                match park.pending_among(&shared.name, &missing).await {
                    Ok(ours) => {
                        inserted.extend(ours);
                        Ok(inserted)
                    }
                    Err(e) => Err(e),
                }
            }
            other => other,
        };
        match result {
            Ok(inserted) => break inserted,
            Err(e) => {
                attempt = attempt.saturating_add(1);
                maybe_committed = true;
                report(shared, &e);
                let wait = store_retry(attempt);
                if shared.warn_throttle.allow().is_some() {
                    tracing::error!(
                        trigger = %shared.name,
                        events = rows.len(),
                        "cannot write to walhook.parked: {e}; the events stay pending (the slot \
                         waits for them) and writing is retried"
                    );
                }
                tokio::select! {
                    biased;
                    () = lane::stopped(stop) => return Stored::Stopped,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    };
    drop(rows);
    for (q, claimed) in jobs.iter_mut() {
        if *claimed && !inserted.contains(&q.job.id) {
            shared.parked.release(q.job.order_key);
            *claimed = false;
        }
    }
    let rows = jobs;
    let n = rows.len() as u64;
    crate::server::ACTIVITY.parked(n, state == State::Dead);
    let first_id = rows.first().map_or("", |(q, _)| q.job.id.as_str());
    match state {
        State::Pending => shared.park_metrics.parked_total.increment(n),
        State::Dead => {
            shared.park_metrics.dead_total.increment(n);
            tracing::warn!(
                trigger = %shared.name,
                events = n,
                first_id,
                error = %failure.error,
                "event(s) went dead: kept in walhook.parked and no longer retried; \
                 `walhook replay --trigger {}` sends them again",
                shared.name
            );
        }
    }
    Stored::Yes
}

/// The wait before writing to the park table again after `attempt` failures: short, since
/// the slot waits meanwhile, up to 10 s.
fn store_retry(attempt: u32) -> Duration {
    retry::delay(
        Duration::from_millis(200),
        Duration::from_secs(10),
        attempt,
        Hint::None,
        fastrand::f64(),
    )
}

/// Passes on that the database is shutting down.
fn report(shared: &Shared, e: &ParkError) {
    if e.server_shutting_down() {
        shared.db_down.notify_one();
    }
}

/// What one unparker worker did with its rows.
struct WorkerResult {
    slot: usize,
    conn: Connection,
    delivered: Vec<(i64, u64)>,
    failed: Vec<(ParkedRow, Verdict, String, Option<Duration>)>,
    /// A failure that says the target as a whole is down: end the round.
    down: bool,
}

/// Delivers the target's parked events until the dispatcher stops.
pub(super) async fn unpark(
    shared: Arc<Shared>,
    store: Arc<ParkStore>,
    mut stop: watch::Receiver<bool>,
) {
    let workers = shared.lanes.clamp(1, MAX_WORKERS);
    let mut conns: Vec<Option<Connection>> =
        (0..workers).map(|_| Some(Connection::new())).collect();
    let mut failed_rounds = 0u32;
    let mut had_rows = false;
    loop {
        if lane::is_stopped(&stop) {
            return;
        }
        if !shared.fence.may_send() || !shared.can_park() {
            // Not streaming (a standby, or between sessions): the active instance unparks.
            tokio::select! {
                () = lane::stopped(&mut stop) => return,
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            continue;
        }
        let round = round(&shared, &store, workers, &mut conns, &mut stop).await;
        let wait = match round {
            Round::Stopped => return,
            Round::Down => {
                failed_rounds = failed_rounds.saturating_add(1);
                retry::delay(
                    shared.retry.initial,
                    shared.retry.max,
                    failed_rounds,
                    Hint::None,
                    fastrand::f64(),
                )
                .max(Duration::from_millis(100))
            }
            Round::Progress => {
                failed_rounds = 0;
                had_rows = true;
                continue;
            }
            Round::Idle { rows, next_due } => {
                failed_rounds = 0;
                if rows == 0 && had_rows && shared.parked.is_empty() {
                    had_rows = false;
                    tracing::info!(
                        trigger = %shared.name,
                        "every parked event is delivered or dead; back to live delivery"
                    );
                }
                had_rows |= rows > 0;
                match next_due {
                    Some(d) => d.clamp(Duration::from_millis(100), REFRESH),
                    None if rows > 0 => Duration::from_secs(1),
                    None => REFRESH * 2,
                }
            }
        };
        tokio::select! {
            () = lane::stopped(&mut stop) => return,
            () = shared.unpark.notified() => {
                // Let a burst of parking settle before walking the table again.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            () = tokio::time::sleep(wait) => {}
        }
    }
}

enum Round {
    Stopped,
    /// The target failed as a whole: back off.
    Down,
    /// Something was delivered or settled: go again at once.
    Progress,
    /// Nothing could be sent: `rows` pending, the earliest retry due in `next_due`.
    Idle {
        rows: usize,
        next_due: Option<Duration>,
    },
}

/// One walk over the target's pending rows.
async fn round(
    shared: &Arc<Shared>,
    store: &ParkStore,
    workers: usize,
    conns: &mut [Option<Connection>],
    stop: &mut watch::Receiver<bool>,
) -> Round {
    let mut cursor = 0i64;
    // Keys whose head is not due, or failed in this round: their later rows wait.
    let mut blocked: HashSet<u64> = HashSet::new();
    let mut progress = false;
    let mut rows_seen = 0usize;
    let mut next_due: Option<Duration> = None;
    loop {
        if lane::is_stopped(stop) {
            return Round::Stopped;
        }
        let rows = match store.page(&shared.name, cursor, PAGE).await {
            Ok(rows) => rows,
            Err(e) => {
                report(shared, &e);
                if shared.warn_throttle.allow().is_some() {
                    tracing::error!(trigger = %shared.name, "cannot read walhook.parked: {e}; retrying");
                }
                return Round::Down;
            }
        };
        let full = rows.len() as i64 == PAGE;
        rows_seen += rows.len();
        let Some(last) = rows.last().map(|r| r.id) else {
            break;
        };
        cursor = last;
        let mut lists: Vec<Vec<ParkedRow>> = (0..workers).map(|_| Vec::new()).collect();
        for row in rows {
            let key = row.order_key;
            if blocked.contains(&key) {
                continue;
            }
            if let Some(wait) = row.due_in {
                blocked.insert(key);
                next_due = Some(next_due.map_or(wait, |d| d.min(wait)));
                continue;
            }
            // usize → u64 is lossless on every supported platform.
            lists[(key % workers as u64) as usize].push(row);
        }
        let mut set = JoinSet::new();
        for (slot, list) in lists.into_iter().enumerate() {
            if list.is_empty() {
                continue;
            }
            let conn = conns[slot].take().unwrap_or_default();
            set.spawn(worker(shared.clone(), slot, conn, list));
        }
        let mut delivered = Vec::new();
        let mut failed = Vec::new();
        let mut down = false;
        while let Some(done) = set.join_next().await {
            let Ok(r) = done else {
                // A worker that died leaves its keys unsettled: no later page may overtake them.
                down = true;
                continue;
            };
            conns[r.slot] = Some(r.conn);
            delivered.extend(r.delivered);
            failed.extend(r.failed);
            down |= r.down;
        }
        if !delivered.is_empty() {
            progress = true;
            let ids: Vec<i64> = delivered.iter().map(|(id, _)| *id).collect();
            if let Err(e) = settle(|| store.delete(&ids), shared, stop).await {
                return e;
            }
            shared
                .park_metrics
                .unparked_total
                .increment(delivered.len() as u64);
            for (_, key) in &delivered {
                shared.parked.release(*key);
            }
        }
        if !failed.is_empty() {
            let retries: Vec<Retry> = failed
                .iter()
                .map(|(row, verdict, error, retry_after)| {
                    retry_of(shared, row, *verdict, error, *retry_after)
                })
                .collect();
            if let Err(e) = settle(|| store.retry(&retries), shared, stop).await {
                return e;
            }
            let dead: Vec<&Retry> = retries.iter().filter(|r| r.dead).collect();
            if !dead.is_empty() {
                progress = true;
                shared.park_metrics.dead_total.increment(dead.len() as u64);
                crate::server::ACTIVITY.parked(dead.len() as u64, true);
                tracing::warn!(
                    trigger = %shared.name,
                    events = dead.len(),
                    error = %dead[0].error,
                    "parked event(s) went dead: kept in walhook.parked and no longer retried; \
                     `walhook replay --trigger {}` sends them again",
                    shared.name
                );
            }
            for ((row, ..), r) in failed.iter().zip(&retries) {
                blocked.insert(row.order_key);
                if r.dead {
                    shared.parked.release(row.order_key);
                } else {
                    next_due = Some(next_due.map_or(r.wait, |d| d.min(r.wait)));
                }
            }
        }
        if down {
            return Round::Down;
        }
        if !full {
            break;
        }
    }
    if progress {
        Round::Progress
    } else {
        Round::Idle {
            rows: rows_seen,
            next_due,
        }
    }
}

/// Runs a bookkeeping write until it succeeds or the dispatcher stops. A delete that never
/// lands would only send those rows again (at-least-once); still, it is retried rather than
/// skipped, so rows are not delivered twice needlessly.
async fn settle<F, Fut>(
    op: F,
    shared: &Shared,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), Round>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), ParkError>>,
{
    let mut attempt = 0u32;
    loop {
        match op().await {
            Ok(()) => return Ok(()),
            Err(e) => {
                report(shared, &e);
                attempt = attempt.saturating_add(1);
                if shared.warn_throttle.allow().is_some() {
                    tracing::error!(trigger = %shared.name, "cannot update walhook.parked: {e}; retrying");
                }
                let wait = store_retry(attempt);
                tokio::select! {
                    biased;
                    () = lane::stopped(stop) => return Err(Round::Stopped),
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// The next retry of a row that failed, or that it is dead.
fn retry_of(
    shared: &Shared,
    row: &ParkedRow,
    verdict: Verdict,
    error: &str,
    retry_after: Option<Duration>,
) -> Retry {
    let attempts = row.attempts.saturating_add(1);
    let hint = match (verdict, retry_after) {
        (Verdict::Gone, _) => Hint::Gone,
        (_, Some(d)) => Hint::RetryAfter(d),
        _ => Hint::None,
    };
    let dead = (verdict == Verdict::Rejected && shared.on_4xx == On4xx::Dead)
        || row.failing_for >= shared.retry.give_up_after;
    Retry {
        id: row.id,
        error: error.to_owned(),
        wait: retry::delay(
            shared.retry.initial,
            shared.retry.max,
            attempts,
            hint,
            fastrand::f64(),
        ),
        dead,
    }
}

/// Sends one worker's rows in order (in requests of up to `batch`), skipping the later rows
/// of a key whose earlier row failed.
async fn worker(
    shared: Arc<Shared>,
    slot: usize,
    mut conn: Connection,
    rows: Vec<ParkedRow>,
) -> WorkerResult {
    let mut out = WorkerResult {
        slot,
        conn: Connection::new(),
        delivered: Vec::new(),
        failed: Vec::new(),
        down: false,
    };
    let mut blocked: HashSet<u64> = HashSet::new();
    let mut rows = rows.into_iter().peekable();
    loop {
        if !shared.fence.may_send() {
            // The rest of these rows' keys must not be sent out of order by a later page:
            // end the round.
            out.down = true;
            break;
        }
        // Rows not blocked, as the transport groups them (one shape per HTTP request, one
        // row per key in a JetStream group).
        let mut group: Vec<ParkedRow> = Vec::with_capacity(shared.batch);
        let mut jobs: Vec<Job> = Vec::with_capacity(shared.batch);
        while group.len() < shared.batch {
            match rows.peek() {
                None => break,
                Some(r) if blocked.contains(&r.order_key) => {
                    rows.next();
                }
                Some(r) => {
                    let job = job_of(r);
                    let members: Vec<&Job> = jobs.iter().collect();
                    if !shared.transport.fits(&members, &job, shared.batch) {
                        break;
                    }
                    jobs.push(job);
                    group.extend(rows.next());
                }
            }
        }
        if group.is_empty() {
            break;
        }
        let prepared = shared.transport.prepare(jobs.iter(), shared.batch);
        let started = Instant::now();
        let result = shared.transport.send(&mut conn, &prepared).await;
        shared.record_attempt(&result, group.len() as u64, started.elapsed(), false);
        if result.verdict == Verdict::Delivered {
            out.delivered
                .extend(group.iter().map(|r| (r.id, r.order_key)));
            continue;
        }
        let error = lane::describe(&result);
        out.down = target_down(result.verdict);
        for row in group {
            blocked.insert(row.order_key);
            out.failed
                .push((row, result.verdict, error.clone(), result.retry_after));
        }
        if out.down {
            break;
        }
    }
    out.conn = conn;
    out
}

/// A parked row as the job a lane would have sent.
fn job_of(r: &ParkedRow) -> Job {
    Job {
        id: r.event_id.clone(),
        body: r.body.clone(),
        order_key: r.order_key,
        txn: Ack { session: 0, txn: 0 },
        shape: r.shape.clone(),
    }
}

/// Whether a failure says the target as a whole is unavailable (rather than one event
/// being refused).
fn target_down(verdict: Verdict) -> bool {
    match verdict {
        Verdict::Delivered | Verdict::Rejected => false,
        Verdict::Gone => true,
        Verdict::Retry(reason) => !matches!(reason, Reason::Redirect),
    }
}

/// Every few seconds: the parked and dead counts for the gauges, and a wake-up for each
/// unparker whose trigger has pending rows this process does not know of (`walhook replay`,
/// or rows left by an earlier process).
pub(super) async fn refresh(
    targets: Vec<Arc<Shared>>,
    store: Arc<ParkStore>,
    stores: Vec<Arc<ParkStore>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut last_refresh: Option<Instant> = None;
    // A table of millions of rows makes the count slow: then it is read less often, so it
    // never takes more than a tenth of the database's time.
    let mut interval = REFRESH;
    loop {
        tokio::select! {
            () = lane::stopped(&mut stop) => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        for s in &stores {
            s.close_idle(IDLE_CLOSE).await;
        }
        if last_refresh.is_some_and(|t| t.elapsed() < interval)
            || !targets.first().is_some_and(|t| t.can_park())
        {
            continue;
        }
        let started = Instant::now();
        last_refresh = Some(started);
        let counts = store.counts().await;
        interval = REFRESH.max(started.elapsed() * 10);
        match counts {
            Ok(counts) => {
                for t in &targets {
                    let c = counts.get(&t.name).cloned().unwrap_or_default();
                    t.park_metrics.parked.set(c.parked as f64);
                    t.park_metrics.dead.set(c.dead as f64);
                    if c.parked > 0 {
                        t.unpark.notify_one();
                    }
                }
            }
            Err(e) => {
                if let Some(t) = targets.first() {
                    report(t, &e);
                }
                tracing::debug!("cannot read the walhook.parked counts: {e}");
            }
        }
    }
}
