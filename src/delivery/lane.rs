//! One lane: takes its jobs in submit order, one request at a time, and retries the head
//! until it is delivered (or the dispatcher stops). Acks only after a 2xx.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram};
use tokio::sync::{Notify, Semaphore, mpsc, watch};

use super::Job;
use super::batch;
use super::client::{Attempt, Client};
use super::connection::Connection;
use super::outcome::Verdict;
use super::retry::{self, Hint};
use crate::config::{On4xx, RetrySettings};

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
    pub client: Client,
    pub retry: RetrySettings,
    pub batch: usize,
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
}

/// A target's failing episode: from the first failed attempt after a success (or the
/// start) to the next 2xx, over all its lanes.
#[derive(Default)]
pub(super) struct Failing {
    active: AtomicBool,
    attempts: AtomicU64,
    since: std::sync::Mutex<Option<Instant>>,
}

impl Failing {
    /// Counts a failed attempt; logs once when the episode starts.
    fn failed(&self, target: &str, what: &dyn std::fmt::Display) {
        self.attempts.fetch_add(1, AtomicOrdering::Relaxed);
        if self.active.swap(true, AtomicOrdering::AcqRel) {
            return;
        }
        if let Ok(mut since) = self.since.lock() {
            *since = Some(Instant::now());
        }
        tracing::warn!(
            trigger = %target,
            "target is failing ({what}); retrying with backoff, and saying so when it recovers"
        );
    }

    /// Ends the episode on a 2xx; logs how long it lasted and how many attempts failed.
    fn delivered(&self, target: &str) {
        if !self.active.swap(false, AtomicOrdering::AcqRel) {
            return;
        }
        let attempts = self.attempts.swap(0, AtomicOrdering::AcqRel);
        let lasted = self
            .since
            .lock()
            .ok()
            .and_then(|mut s| s.take())
            .map(|t| t.elapsed());
        tracing::info!(
            trigger = %target,
            failed_attempts = attempts,
            "target recovered after {} and {attempts} failed attempt(s)",
            lasted.map_or_else(|| "a while".to_owned(), |d| humantime::format_duration(
                Duration::from_millis(d.as_millis() as u64)
            ).to_string())
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
    fn allow(&self) -> Option<u64> {
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

/// How often a lane looks at a closed fence again.
const FENCE_POLL: Duration = Duration::from_millis(50);

/// The lane loop; returns when stopped or when its queue is closed and empty.
pub(super) async fn run(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Queued>,
    mut stop: watch::Receiver<bool>,
) {
    let mut queued = Vec::with_capacity(shared.batch);
    // The lane's own keep-alive connection: one request at a time needs no pool.
    let mut conn = Connection::new();
    loop {
        // recv_many takes whatever is ready (up to `batch`) without waiting for more.
        let n = tokio::select! {
            biased;
            () = stopped(&mut stop) => return,
            n = rx.recv_many(&mut queued, shared.batch) => n,
            // recv_many is cancel safe: nothing is lost when the server closes meanwhile.
            () = conn.closed() => continue,
        };
        if n == 0 {
            return;
        }
        shared.drop_discarded(&mut queued);
        if queued.is_empty() {
            continue;
        }
        // Every job left has the current epoch, so the batch is discarded as a whole or not.
        let outcome = deliver(&shared, &mut conn, &queued, &mut stop).await;
        // Gauge and budget first, once per request: whoever sees an ack sees them updated.
        shared.release(&queued);
        if outcome == Outcome::Delivered {
            for q in &queued {
                // A closed ack channel means the daemon is going down; nothing to tell.
                let _ = shared.acks.send(q.job.txn);
            }
        }
        queued.clear();
        if outcome == Outcome::Stopped {
            return; // the rest is abandoned, unacked
        }
    }
}

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// 2xx: ack its jobs.
    Delivered,
    /// The dispatcher stops: abandon everything, unacked.
    Stopped,
    /// Its jobs were discarded (a new session sends them again): drop them, unacked.
    Discarded,
}

impl Shared {
    /// Whether any of these jobs was submitted before the last `discard_queued`.
    fn is_discarded(&self, queued: &[Queued]) -> bool {
        let current = self.epoch.load(AtomicOrdering::Acquire);
        queued.iter().any(|q| q.epoch < current)
    }

    /// Removes (unacked) the jobs submitted before the last `discard_queued`.
    fn drop_discarded(&self, queued: &mut Vec<Queued>) {
        let current = self.epoch.load(AtomicOrdering::Acquire);
        if queued.iter().all(|q| q.epoch >= current) {
            return;
        }
        let (old, keep): (Vec<Queued>, Vec<Queued>) =
            queued.drain(..).partition(|q| q.epoch < current);
        self.release(&old);
        *queued = keep;
    }

    /// Gives the jobs' byte budget back and takes them off the queue-depth gauge.
    fn release(&self, jobs: &[Queued]) {
        let weight: usize = jobs.iter().map(|q| q.weight as usize).sum();
        self.budget.add_permits(weight);
        self.metrics.depth.decrement(jobs.len() as f64);
    }
}

/// Retries one request until a 2xx, until the dispatcher stops, or until its jobs are
/// discarded.
async fn deliver(
    shared: &Shared,
    conn: &mut Connection,
    queued: &[Queued],
    stop: &mut watch::Receiver<bool>,
) -> Outcome {
    let (id, body) = batch::request(queued.iter().map(|q| &q.job), shared.batch);
    let events = queued.len() as u64;
    if shared.gone.load(AtomicOrdering::Acquire) && !paused(shared, stop).await {
        return Outcome::Stopped;
    }
    let mut attempt: u32 = 0;
    let mut told_no_dead_letter = false;
    loop {
        if is_stopped(stop) {
            return Outcome::Stopped;
        }
        if shared.is_discarded(queued) {
            return Outcome::Discarded;
        }
        if !shared.fence.may_send() {
            tokio::time::sleep(FENCE_POLL).await;
            continue;
        }
        attempt = attempt.saturating_add(1);
        let started = Instant::now();
        let result = shared.client.send(conn, &id, body.clone()).await;
        shared.metrics.seconds.record(started.elapsed());
        shared.metrics.outcomes[result.verdict.index()].increment(events);
        crate::server::ACTIVITY.request(result.verdict == Verdict::Delivered, events);
        match (result.verdict, result.status, &result.error) {
            (Verdict::Delivered, _, _) => shared.failing.delivered(&shared.name),
            (_, Some(status), _) => shared
                .failing
                .failed(&shared.name, &format!("HTTP {status}")),
            (_, None, Some(e)) => shared.failing.failed(&shared.name, e),
            (_, None, None) => shared.failing.failed(&shared.name, &"no answer"),
        }
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
                if shared.on_4xx == On4xx::Dead && !told_no_dead_letter {
                    told_no_dead_letter = true;
                    tracing::error!(
                        trigger = %shared.name,
                        webhook_id = %id,
                        status = result.status,
                        "on_4xx = \"dead\" but dead-lettering is not available yet; retrying instead"
                    );
                }
                result.retry_after.map_or(Hint::None, Hint::RetryAfter)
            }
            Verdict::Retry(_) => result.retry_after.map_or(Hint::None, Hint::RetryAfter),
        };
        let wait = retry::delay(
            shared.retry.initial,
            shared.retry.max,
            attempt,
            hint,
            fastrand::f64(),
        );
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
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
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
        () = tokio::time::sleep(shared.retry.max) => true,
    }
}

fn is_stopped(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow() || stop.has_changed().is_err()
}

/// Resolves once the dispatcher stops (or is dropped).
async fn stopped(stop: &mut watch::Receiver<bool>) {
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
