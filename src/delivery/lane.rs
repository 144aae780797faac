//! One lane: takes its jobs in submit order, one request at a time, and retries the head
//! until it is delivered, parked or dead (or the dispatcher stops). Acks only after a 2xx
//! or once the jobs are stored in `walhook.parked`.
//!
//! With a park store, a head that has failed for `retry.park_after` (or that fails while the
//! whole target has been failing that long) is parked with every queued job of the same
//! ordering keys, and later jobs of those keys are parked behind them until the unparker
//! ([`super::park`]) has delivered them all; other keys keep flowing live. A head answered a
//! final 4xx under `on_4xx = "dead"`, or failing past `give_up_after`, is stored dead.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram};
use tokio::sync::{Notify, Semaphore, mpsc, watch};

use super::Job;
use super::client::Attempt;
use super::connection::Connection;
use super::outcome::Verdict;
use super::park::{self, Parked, Stored};
use super::retry::{self, Hint};
use super::transport::{Group, Transport};
use crate::config::{On4xx, RetrySettings};
use crate::store::park::{Failure, ParkStore, State};

/// A job in a lane's queue with the byte-budget permits it holds.
pub(super) struct Queued {
    pub job: Job,
    pub weight: u32,
    /// The dispatcher's epoch at submit; older than the current one means discarded.
    pub epoch: u64,
}

/// What the lanes of one target share.
pub(super) struct Shared {
    pub name: String,
    /// How many lanes the target has (its `concurrency`).
    pub lanes: usize,
    pub transport: Transport,
    pub retry: RetrySettings,
    pub batch: usize,
    /// `batch_linger`: how long a short group waits for more while the target is busy.
    pub linger: Duration,
    /// Whether a short request of the target holds the short turn ([`ShortTurn`]).
    pub short_busy: AtomicBool,
    /// Wakes the lanes waiting for the short turn.
    pub short_done: Notify,
    /// Whether the source is catching up with a backlog: short groups then wait up to
    /// `batch_linger` to fill.
    pub behind: Arc<AtomicBool>,
    pub on_4xx: On4xx,
    /// Bytes that may sit queued for this target; `submit` waits for permits.
    pub budget: Semaphore,
    pub acks: mpsc::UnboundedSender<super::Ack>,
    /// The dispatcher's current epoch (see `Dispatcher::discard_queued`).
    pub epoch: Arc<AtomicU64>,
    pub metrics: TargetMetrics,
    /// Set by a 410 Gone, cleared by the next 2xx.
    pub gone: AtomicBool,
    pub resumed: Notify,
    pub warn_throttle: Throttle,
    /// Closed while this instance may not own the slot any more (see [`crate::fence`]).
    pub fence: Arc<crate::fence::Fence>,
    /// Whether the target is failing: one log line when it starts, one when it recovers.
    pub failing: Failing,
    /// Where parked and dead events go; `None`: the target holds its events until delivered.
    pub park: Option<Arc<ParkStore>>,
    /// Set once `walhook.parked` is known to exist (shared by every target).
    pub park_ready: Arc<AtomicBool>,
    /// The ordering keys with pending parked events.
    pub parked: Parked,
    /// Wakes the target's unparker (events were parked).
    pub unpark: Notify,
    /// Told when the database refuses the park table because it is shutting down.
    pub db_down: Arc<Notify>,
    /// Counters of parked, unparked and dead events.
    pub park_metrics: park::Metrics,
}

/// A target's failing episode: from the first failed attempt after a success (or the
/// start) to the next 2xx, over all its lanes.
#[derive(Default)]
pub(super) struct Failing {
    /// Whether an episode is open: read without the lock on every 2xx (the common case).
    active: AtomicBool,
    /// The episode: when it began, and its failed attempts. `active` changes only under it.
    episode: std::sync::Mutex<Option<(Instant, u64)>>,
    last_error: std::sync::Mutex<String>,
    /// Set when the episode first parks events (for the one "parking" log line).
    pub parking: AtomicBool,
}

impl Failing {
    /// How long the target has been failing (no 2xx on any lane), if it is.
    pub fn failing_for(&self) -> Option<Duration> {
        if !self.active.load(AtomicOrdering::Acquire) {
            return None;
        }
        self.episode
            .lock()
            .ok()
            .and_then(|e| e.map(|(since, _)| since.elapsed()))
    }

    /// The last failed attempt's cause.
    pub fn last_error(&self) -> String {
        self.last_error
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default()
    }

    /// Counts a failed attempt; logs once when the episode starts.
    pub fn failed(&self, target: &str, what: &dyn std::fmt::Display) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = what.to_string();
        }
        let Ok(mut episode) = self.episode.lock() else {
            return;
        };
        if let Some((_, attempts)) = episode.as_mut() {
            *attempts += 1;
            return;
        }
        *episode = Some((Instant::now(), 1));
        self.active.store(true, AtomicOrdering::Release);
        drop(episode);
        tracing::warn!(
            trigger = %target,
            "target is failing ({what}); retrying with backoff, and saying so when it recovers"
        );
    }

    /// Ends the episode on a 2xx; logs how long it lasted and how many attempts failed.
    pub fn delivered(&self, target: &str) {
        if !self.active.load(AtomicOrdering::Acquire) {
            return;
        }
        let Some((since, attempts)) = self.episode.lock().ok().and_then(|mut e| {
            self.active.store(false, AtomicOrdering::Release);
            e.take()
        }) else {
            return;
        };
        self.parking.store(false, AtomicOrdering::Release);
        tracing::info!(
            trigger = %target,
            failed_attempts = attempts,
            "target recovered after {} and {attempts} failed attempt(s)",
            humantime::format_duration(Duration::from_millis(since.elapsed().as_millis() as u64))
        );
    }
}

/// Pre-registered metric handles of one target (looked up once, not per event).
pub(super) struct TargetMetrics {
    outcomes: [Counter; Verdict::ALL.len()],
    seconds: Histogram,
    pub depth: Gauge,
}

impl TargetMetrics {
    pub fn new(name: &str) -> TargetMetrics {
        TargetMetrics {
            outcomes: Verdict::ALL.map(|v| {
                metrics::counter!("walhook_deliveries_total", "trigger" => name.to_owned(), "outcome" => v.label())
            }),
            seconds: metrics::histogram!("walhook_delivery_seconds", "trigger" => name.to_owned()),
            depth: metrics::gauge!("walhook_queue_depth", "trigger" => name.to_owned()),
        }
    }
}

/// Lets one log line through per interval and counts the rest, so a dead target with 64
/// lanes does not write 64 warnings per backoff round.
pub(super) struct Throttle {
    epoch: Instant,
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl Throttle {
    const INTERVAL_MS: u64 = 1000;

    pub fn new() -> Throttle {
        Throttle {
            epoch: Instant::now(),
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(lines suppressed since the last one)` if this line may be logged.
    pub fn allow(&self) -> Option<u64> {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = self.next_ms.load(AtomicOrdering::Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now + Self::INTERVAL_MS,
                    AtomicOrdering::Relaxed,
                    AtomicOrdering::Relaxed,
                )
                .is_ok()
        {
            Some(self.suppressed.swap(0, AtomicOrdering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, AtomicOrdering::Relaxed);
            None
        }
    }
}

/// How often a lingering lane looks whether the queue budget ran out.
const BUDGET_CHECK: Duration = Duration::from_millis(5);

/// A target's short turn: held by the one short request on the wire while the source is live;
/// when it is answered (or fails once), every lane waiting for it is woken.
pub(super) struct ShortTurn<'a>(&'a Shared);

impl<'a> ShortTurn<'a> {
    /// The turn, if no other short request of the target holds it.
    fn take(shared: &'a Shared) -> Option<ShortTurn<'a>> {
        // `then`, not `then_some`: a turn made and dropped would free the one in use.
        (!shared.short_busy.swap(true, AtomicOrdering::AcqRel)).then(|| ShortTurn(shared))
    }
}

impl Drop for ShortTurn<'_> {
    fn drop(&mut self) {
        self.0.short_busy.store(false, AtomicOrdering::Release);
        self.0.short_done.notify_waiters();
    }
}

/// Takes `group`'s jobs out of `pending`, keeping the rest in order.
fn take_group(pending: &mut VecDeque<Queued>, group: Group) -> Vec<Queued> {
    let picks = match group {
        Group::Front(n) => return pending.drain(..n).collect(),
        Group::At(picks) => picks,
    };
    let mut head = Vec::with_capacity(picks.len());
    let mut rest = VecDeque::with_capacity(pending.len());
    let mut next = picks.iter().copied().peekable();
    for (i, q) in pending.drain(..).enumerate() {
        if next.peek() == Some(&i) {
            next.next();
            head.push(q);
        } else {
            rest.push_back(q);
        }
    }
    *pending = rest;
    head
}

/// How often a lane looks at a closed fence again.
const FENCE_POLL: Duration = Duration::from_millis(50);

/// The lane loop; returns when stopped or when its queue is closed and empty.
pub(super) async fn run(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Queued>,
    mut stop: watch::Receiver<bool>,
) {
    // Jobs taken off the queue and not yet sent, parked or dropped, in submit order.
    let mut pending: VecDeque<Queued> = VecDeque::new();
    let mut buf = Vec::with_capacity(shared.batch);
    // Parking takes what is queued in chunks this large, one insert each.
    let take = shared.batch.max(park::CHUNK);
    // The lane's own keep-alive connection: one request at a time needs no pool.
    let mut conn = Connection::new();
    loop {
        if pending.is_empty() {
            // recv_many takes whatever is ready (up to `batch`) without waiting for more.
            let n = tokio::select! {
                biased;
                () = stopped(&mut stop) => return,
                n = rx.recv_many(&mut buf, shared.batch) => n,
                // recv_many is cancel safe: nothing is lost when the server closes meanwhile.
                () = conn.closed() => continue,
            };
            if n == 0 {
                return;
            }
            pending.extend(buf.drain(..));
        }
        // Short HTTP batches (README, "Batches"). A full group goes at once, and so does a
        // group cut short by a change of request shape (it cannot grow). While the source
        // catches up with a backlog, a short group waits up to `batch_linger` for the group
        // to fill. While it is live, a short group goes at once when no other short request
        // of the target is on the wire (it takes the short turn); otherwise it gathers more
        // until that request is answered, the group fills, or `batch_linger` passes. An idle
        // target therefore sends at once, and a busy one sends fuller requests.
        let mut turn: Option<ShortTurn<'_>> = None;
        if shared.batch > 1
            && pending.len() < shared.batch
            && !shared.linger.is_zero()
            && shared.transport.fills_requests()
            && shared
                .transport
                .next_group(pending.iter().map(|q| &q.job), shared.batch)
                .len()
                == pending.len()
        {
            let behind = shared.behind.load(AtomicOrdering::Relaxed);
            let answered = shared.short_done.notified();
            tokio::pin!(answered);
            answered.as_mut().enable();
            turn = if behind {
                None
            } else {
                ShortTurn::take(&shared)
            };
            if turn.is_none() {
                let linger = tokio::time::sleep(shared.linger);
                tokio::pin!(linger);
                // The queue budget can run out before the group fills: nothing more comes.
                let mut budget_check = tokio::time::interval(BUDGET_CHECK);
                while pending.len() < shared.batch && !shared.budget_exhausted() {
                    let want = shared.batch - pending.len();
                    tokio::select! {
                        biased;
                        () = stopped(&mut stop) => return,
                        () = &mut answered, if !behind => break,
                        () = &mut linger => break,
                        // Cancel safe: nothing is lost when another branch wins.
                        n = rx.recv_many(&mut buf, want) => {
                            if n == 0 {
                                break;
                            }
                            pending.extend(buf.drain(..));
                        }
                        _ = budget_check.tick() => {}
                    }
                }
                if !behind {
                    turn = ShortTurn::take(&shared);
                }
            }
        }
        shared.drop_discarded(&mut pending);
        if pending.is_empty() {
            continue;
        }
        // Jobs of parked keys (every job, while the whole target is parking) go to the table.
        if shared.can_park() && (shared.parking_now() || !shared.parked.is_empty()) {
            top_up(&mut rx, &mut pending, take);
            let force = shared.parking_now();
            let jobs = shared.parked.take(&mut pending, take, |_| force);
            if !jobs.is_empty() {
                let failure = Failure {
                    attempts: 0,
                    failing_for: Duration::ZERO,
                    error: shared.failing.last_error(),
                };
                drop(turn.take());
                if park_and_ack(&shared, jobs, State::Pending, &failure, &mut stop).await {
                    return;
                }
                continue;
            }
        }
        // A JetStream group takes the first job of each key wherever it stands: look at
        // everything that is queued.
        if !shared.transport.fills_requests() {
            top_up(&mut rx, &mut pending, 4 * shared.batch);
        }
        // A request carries jobs of one shape (method, URL, templated headers); a JetStream
        // group one job per ordering key.
        let group = shared
            .transport
            .next_group(pending.iter().map(|q| &q.job), shared.batch);
        let head = take_group(&mut pending, group);
        // Every job left has the current epoch, so the batch is discarded as a whole or not.
        let outcome = deliver(&shared, &mut conn, &head, &mut stop, &mut turn).await;
        match outcome {
            Outcome::Delivered => {
                // Gauge and budget first: whoever sees an ack sees them updated.
                shared.release(&head);
                for q in &head {
                    // A closed ack channel means the daemon is going down; nothing to tell.
                    let _ = shared.acks.send(q.job.txn);
                }
            }
            Outcome::Park(failure) => {
                // The head and every queued job of its keys, in order, in one transaction.
                let keys: Vec<u64> = head.iter().map(|q| q.job.order_key).collect();
                for q in head.into_iter().rev() {
                    pending.push_front(q);
                }
                top_up(&mut rx, &mut pending, take);
                let jobs = shared
                    .parked
                    .take(&mut pending, take, |key| keys.contains(&key));
                shared.started_parking(&failure, jobs.len());
                if park_and_ack(&shared, jobs, State::Pending, &failure, &mut stop).await {
                    return;
                }
            }
            Outcome::Dead(failure) => {
                let jobs = head.into_iter().map(|q| (q, false)).collect();
                if park_and_ack(&shared, jobs, State::Dead, &failure, &mut stop).await {
                    return;
                }
            }
            Outcome::Stopped => {
                shared.release(&head);
                return; // the rest is abandoned, unacked
            }
            Outcome::Discarded => shared.release(&head),
        }
    }
}

/// Moves what is already queued into `pending`, without waiting, up to `take` jobs in all.
fn top_up(rx: &mut mpsc::Receiver<Queued>, pending: &mut VecDeque<Queued>, take: usize) {
    while pending.len() < take {
        match rx.try_recv() {
            Ok(q) => pending.push_back(q),
            Err(_) => break,
        }
    }
}

/// Stores `jobs` (each with whether it holds a claim on its key) and acks them; returns
/// whether the lane must stop. Jobs that could not be stored are never acked.
async fn park_and_ack(
    shared: &Shared,
    mut jobs: Vec<(Queued, bool)>,
    state: State,
    failure: &Failure,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    loop {
        // Jobs of an earlier session are dropped (the new one sends them again); the rest
        // are stored.
        let current = shared.epoch.load(AtomicOrdering::Acquire);
        let (old, rest): (Vec<_>, Vec<_>) = jobs.into_iter().partition(|(q, _)| q.epoch < current);
        jobs = rest;
        let old: Vec<Queued> = old
            .into_iter()
            .map(|(q, claimed)| {
                if claimed {
                    shared.parked.release(q.job.order_key);
                }
                q
            })
            .collect();
        shared.release(&old);
        if jobs.is_empty() {
            return false;
        }
        let stored = park::store(shared, &mut jobs, state, failure, stop).await;
        if stored == Stored::Discarded {
            continue; // some were discarded meanwhile: drop those, store the others
        }
        let queued: Vec<Queued> = jobs
            .into_iter()
            .map(|(q, claimed)| {
                if claimed && stored != Stored::Yes {
                    shared.parked.release(q.job.order_key);
                }
                q
            })
            .collect();
        shared.release(&queued);
        if stored == Stored::Stopped {
            return true;
        }
        for q in &queued {
            let _ = shared.acks.send(q.job.txn);
        }
        if state == State::Pending {
            shared.unpark.notify_one();
        }
        return false;
    }
}

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// 2xx: ack its jobs.
    Delivered,
    /// Failing too long: park its jobs and every later job of their keys.
    Park(Failure),
    /// Given up on: store its jobs as dead.
    Dead(Failure),
    /// The dispatcher stops: abandon everything, unacked.
    Stopped,
    /// Its jobs were discarded (a new session sends them again): drop them, unacked.
    Discarded,
}

impl Shared {
    /// Whether any of these jobs was submitted before the last `discard_queued`.
    pub fn is_discarded<'a>(&self, mut jobs: impl Iterator<Item = &'a Queued>) -> bool {
        let current = self.epoch.load(AtomicOrdering::Acquire);
        jobs.any(|q| q.epoch < current)
    }

    /// Removes (unacked) the jobs submitted before the last `discard_queued`.
    fn drop_discarded(&self, queued: &mut VecDeque<Queued>) {
        let current = self.epoch.load(AtomicOrdering::Acquire);
        if queued.iter().all(|q| q.epoch >= current) {
            return;
        }
        let mut old = Vec::new();
        let keep: VecDeque<Queued> = queued
            .drain(..)
            .filter_map(|q| {
                if q.epoch < current {
                    old.push(q);
                    None
                } else {
                    Some(q)
                }
            })
            .collect();
        self.release(&old);
        *queued = keep;
    }

    /// Whether the queue budget is (nearly) used up, so `submit` is waiting: a lingering lane
    /// would wait for events that cannot come.
    fn budget_exhausted(&self) -> bool {
        self.budget.available_permits() < 2048
    }

    /// Gives the jobs' byte budget back and takes them off the queue-depth gauge.
    fn release(&self, jobs: &[Queued]) {
        let weight: usize = jobs.iter().map(|q| q.weight as usize).sum();
        self.budget.add_permits(weight);
        self.metrics.depth.decrement(jobs.len() as f64);
    }

    /// Whether failing events may be parked: a park store whose table exists, and the fence
    /// open (between sessions, or after a pause, another instance may own these events; the
    /// next session reads the table before lanes claim keys again).
    pub fn can_park(&self) -> bool {
        self.park.is_some()
            && self.park_ready.load(AtomicOrdering::Acquire)
            && self.fence.may_send()
    }

    /// Whether the whole target has failed for `park_after`: every job is parked at once.
    fn parking_now(&self) -> bool {
        self.can_park()
            && self
                .failing
                .failing_for()
                .is_some_and(|d| d >= self.retry.park_after)
    }

    /// Logs the first parking of a failing episode, and each key parked on its own.
    fn started_parking(&self, failure: &Failure, jobs: usize) {
        if !self.failing.parking.swap(true, AtomicOrdering::AcqRel) {
            tracing::warn!(
                trigger = %self.name,
                failing_for = %humantime::format_duration(round_s(failure.failing_for)),
                error = %failure.error,
                "parking: events that keep failing go to walhook.parked so the slot moves on; \
                 they are delivered from there, in order, once the target answers"
            );
        } else if self.warn_throttle.allow().is_some() {
            tracing::info!(trigger = %self.name, events = jobs, "parking the events of more rows");
        }
    }

    /// Counts one attempt of `events` events (metrics, activity, the failing episode). A
    /// final 4xx counts towards the target's failing episode only when `rejected_fails` (an
    /// unparked event's 4xx, or an event no request can be made for, says nothing about the
    /// target as a whole).
    pub fn record_attempt(
        &self,
        result: &Attempt,
        events: u64,
        took: Duration,
        rejected_fails: bool,
    ) {
        self.metrics.seconds.record(took);
        self.metrics.outcomes[result.verdict.index()].increment(events);
        crate::server::ACTIVITY.request(result.verdict == Verdict::Delivered, events);
        match result.verdict {
            Verdict::Delivered => self.failing.delivered(&self.name),
            Verdict::Rejected if !rejected_fails => {}
            _ => self.failing.failed(&self.name, &describe(result)),
        }
    }
}

/// "HTTP 503", or the transport error with its causes.
pub(super) fn describe(result: &Attempt) -> String {
    match (result.status, &result.error) {
        (Some(status), _) => format!("HTTP {status}"),
        (None, Some(e)) => error_chain(e as &dyn std::error::Error),
        (None, None) => "no answer".to_owned(),
    }
}

/// Retries one request until a 2xx, until it is to be parked or is dead, until the
/// dispatcher stops, or until its jobs are discarded.
async fn deliver(
    shared: &Shared,
    conn: &mut Connection,
    queued: &[Queued],
    stop: &mut watch::Receiver<bool>,
    turn: &mut Option<ShortTurn<'_>>,
) -> Outcome {
    let prepared = shared
        .transport
        .prepare(queued.iter().map(|q| &q.job), shared.batch);
    let id = prepared.id().to_owned();
    let events = queued.len() as u64;
    if shared.gone.load(AtomicOrdering::Acquire) {
        // A paused target's wait is no request on the wire.
        drop(turn.take());
        if !paused(shared, stop).await {
            return Outcome::Stopped;
        }
    }
    let mut attempt: u32 = 0;
    let mut first_failure: Option<Instant> = None;
    let mut told_no_dead_letter = false;
    loop {
        if is_stopped(stop) {
            return Outcome::Stopped;
        }
        if shared.is_discarded(queued.iter()) {
            return Outcome::Discarded;
        }
        if !shared.fence.may_send() {
            tokio::time::sleep(FENCE_POLL).await;
            continue;
        }
        attempt = attempt.saturating_add(1);
        let started = Instant::now();
        let result = shared.transport.send(conn, &prepared).await;
        // Retries and their backoff are no request on the wire: the next short group goes.
        drop(turn.take());
        // An event no request can be made for says nothing about the target.
        let fails_target = !Transport::unsendable(&prepared);
        shared.record_attempt(&result, events, started.elapsed(), fails_target);
        let failing_for = first_failure.get_or_insert_with(Instant::now).elapsed();
        let failure = || Failure {
            attempts: attempt,
            failing_for,
            error: describe(&result),
        };
        let hint = match result.verdict {
            Verdict::Delivered => {
                if shared.gone.swap(false, AtomicOrdering::AcqRel) {
                    tracing::info!(trigger = %shared.name, "target answers again after 410 Gone; resuming");
                    shared.resumed.notify_waiters();
                }
                return Outcome::Delivered;
            }
            Verdict::Gone => {
                if !shared.gone.swap(true, AtomicOrdering::AcqRel) {
                    tracing::warn!(
                        trigger = %shared.name,
                        probe_every = %humantime::format_duration(shared.retry.max),
                        "target answered 410 Gone; pausing it and probing at the longest retry interval"
                    );
                }
                Hint::Gone
            }
            Verdict::Rejected => {
                if shared.on_4xx == On4xx::Dead {
                    if shared.can_park() {
                        return Outcome::Dead(failure());
                    }
                    if !told_no_dead_letter {
                        told_no_dead_letter = true;
                        tracing::error!(
                            trigger = %shared.name,
                            webhook_id = %id,
                            status = result.status,
                            "on_4xx = \"dead\" needs the walhook schema, which this dispatcher has \
                             no connection to; retrying instead"
                        );
                    }
                }
                result.retry_after.map_or(Hint::None, Hint::RetryAfter)
            }
            Verdict::Retry(_) => result.retry_after.map_or(Hint::None, Hint::RetryAfter),
        };
        let mut wait = retry::delay(
            shared.retry.initial,
            shared.retry.max,
            attempt,
            hint,
            fastrand::f64(),
        );
        if shared.can_park() {
            if failing_for >= shared.retry.give_up_after {
                return Outcome::Dead(failure());
            }
            let target_failing = shared.failing.failing_for().unwrap_or_default();
            let failing = failing_for.max(target_failing);
            if failing >= shared.retry.park_after {
                return Outcome::Park(failure());
            }
            // Do not sleep past the moment the head is to be parked.
            wait = wait.min(shared.retry.park_after - failing);
        }
        log_failure(shared, &id, attempt, &result, wait);
        tokio::select! {
            biased;
            () = stopped(stop) => return Outcome::Stopped,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

fn log_failure(shared: &Shared, id: &str, attempt: u32, result: &Attempt, wait: Duration) {
    let Some(suppressed) = shared.warn_throttle.allow() else {
        return;
    };
    let error = result
        .error
        .as_ref()
        .map(|e| error_chain(e as &dyn std::error::Error));
    tracing::warn!(
        trigger = %shared.name,
        webhook_id = %id,
        attempt,
        status = result.status,
        error,
        outcome = result.verdict.label(),
        next_in = %humantime::format_duration(round_ms(wait)),
        suppressed,
        "delivery attempt failed"
    );
}

/// "cannot connect to 127.0.0.1:9: Connection refused (os error 111)" rather than only the
/// outermost message.
pub(super) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}

fn round_s(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// While the target is gone, a fresh batch waits for a resume or the probe interval.
async fn paused(shared: &Shared, stop: &mut watch::Receiver<bool>) -> bool {
    let resumed = shared.resumed.notified();
    tokio::pin!(resumed);
    resumed.as_mut().enable();
    if !shared.gone.load(AtomicOrdering::Acquire) {
        return true;
    }
    tokio::select! {
        biased;
        () = stopped(stop) => false,
        () = resumed => true,
        // With a park store, probe again by `park_after` so the paused target's events are
        // parked rather than held.
        () = tokio::time::sleep(if shared.can_park() {
            shared.retry.max.min(shared.retry.park_after)
        } else {
            shared.retry.max
        }) => true,
    }
}

pub(super) fn is_stopped(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow() || stop.has_changed().is_err()
}

/// Resolves once the dispatcher stops (or is dropped).
pub(super) async fn stopped(stop: &mut watch::Receiver<bool>) {
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        if stop.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_lets_one_line_through_per_interval() {
        let t = Throttle::new();
        assert_eq!(t.allow(), Some(0));
        assert_eq!(t.allow(), None);
        assert_eq!(t.allow(), None);
        t.next_ms.store(0, AtomicOrdering::Relaxed); // pretend the interval passed
        assert_eq!(t.allow(), Some(2));
    }
}
