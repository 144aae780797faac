//! HTTP delivery: per target, ordered lanes that send, sign and retry webhooks.
//!
//! ```text
//! submit(target, job) ──▶ lane[order_key % concurrency] (bounded queue) ──▶ one request at a time
//!                                                                      └─▶ 2xx: acks ← job.txn
//! ```
//!
//! - Order: a lane sends its jobs strictly in submit order and retries the head until it is
//!   delivered, so jobs with the same `order_key` arrive in order while lanes run in parallel.
//! - At-least-once: `acks` gets the job's [`Ack`] once per job, only after a 2xx for the request that
//!   carried it, or once the job is stored in `walhook.parked` ([`Dispatcher::start_parking`]:
//!   see `park`). Without a park store a failing target holds its jobs and retries forever.
//! - Back-pressure: each lane queue holds at most `max(256, 4 × batch)` jobs and each target at
//!   most [`queue_budget`] bytes of bodies; `submit` waits while either is full.
//! - Batches (`batch > 1`): a lane takes what is queued, up to `batch`; a short batch may
//!   wait up to `batch_linger` for more (while catching up with a backlog, or while another
//!   short request of the target is on the wire: see `lane`), and a request carries
//!   `{"events":[…]}` built from the raw bodies; `webhook-id` is
//!   `{first id}-{count}-{16 hex of SHA-256 over the ids}` (stable for the same members).
//! - HTTP ([`connection`], [`client`]): each lane keeps one HTTP/1.1 connection (hyper, no
//!   pool), made on first use and replaced after errors, timeouts and closes; the target's
//!   `timeout` covers connect, answer and draining the body; redirects are never followed. The
//!   request target, `host` and fixed headers are built once per target. HTTP/2 is not
//!   offered (ALPN `http/1.1` only).
//! - Outcomes ([`outcome`]): 2xx delivered; 3xx (never followed), 408, 429, 5xx and transport
//!   errors retried with full-jitter backoff ([`retry`]) honouring `Retry-After`; other 4xx
//!   retried the same way, or stored dead under `on_4xx = "dead"` (without a park store: an
//!   error once per request, and retried). 410 Gone pauses the target: fresh requests wait up
//!   to `retry.max` (`park_after` with parking), failing ones retry every `retry.max`, until a
//!   2xx resumes it.
//! - Metrics (register the recorder before [`Dispatcher::start`]; handles are made there):
//!   `walhook_deliveries_total{trigger,outcome}` counts events per attempt outcome,
//!   `walhook_delivery_seconds{trigger}` times each request, `walhook_queue_depth{trigger}`
//!   counts jobs submitted and not yet delivered or abandoned.

pub mod outcome;
pub mod retry;
pub mod sign;

mod batch;
mod client;
mod connection;
#[cfg(test)]
mod connection_tests;
mod lane;
mod nats;
mod park;
mod transport;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::config::{Trigger, TriggerId};
use crate::source::conninfo::ConnInfo;
use crate::store::park::{ParkError, ParkStore};
use lane::{Queued, Shared, TargetMetrics, Throttle};

pub use nats::check_subject as check_nats_subject;
pub use sign::verify;

/// Why a trigger's request for an event could not be built.
pub fn unsendable(error: String) -> Option<Box<Shape>> {
    Some(Box::new(Shape {
        unsendable: Some(error),
        ..Shape::default()
    }))
}

/// Bytes of queued bodies (with [`JOB_OVERHEAD`] each) one target may hold before `submit`
/// waits: room for every lane to have a full batch on the wire, at
/// [`QUEUE_BYTES_PER_EVENT`] each, within 1 to 16 MiB. The queue is what a drain's memory
/// grows with, and a batch = 1 trigger has at most `concurrency` events on the wire, so it
/// needs little; a batching one to a slow receiver needs room for full batches in flight.
pub fn queue_budget(concurrency: usize, batch: usize) -> usize {
    concurrency
        .saturating_mul(batch)
        .saturating_mul(QUEUE_BYTES_PER_EVENT)
        .clamp(1024 * 1024, 16 * 1024 * 1024)
}

/// The budget per event on the wire: a typical row event with its bookkeeping.
const QUEUE_BYTES_PER_EVENT: usize = 512;
/// Bookkeeping charged per job on top of its body, so tiny jobs are bounded too.
const JOB_OVERHEAD: usize = 128;

/// One event to deliver.
#[derive(Debug, Clone)]
pub struct Job {
    /// Event id: the `webhook-id` when sent alone.
    pub id: String,
    /// The event's JSON, sent byte for byte.
    pub body: Bytes,
    /// Chooses the lane (`order_key % concurrency`): same key, same order.
    pub order_key: u64,
    /// Transaction the event came from; sent on `acks` once delivered.
    pub txn: Ack,
    /// How its request differs from the trigger's fixed one (`None`: not at all).
    pub shape: Option<Box<Shape>>,
}

/// How one event's request differs from its trigger's fixed method, URL and headers: what
/// `method` maps, `url` templates and header templates made of it. Jobs are batched only
/// with jobs of an equal shape, and the shape is stored with a parked event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Shape {
    /// The method, when the trigger's differs by event type.
    pub method: Option<crate::config::HttpMethod>,
    /// The request target (`/path?query`), when the URL is a template.
    pub target: Option<String>,
    /// Headers from templates, rendered: (lower-case name, value).
    pub headers: Vec<(String, String)>,
    /// Why no request can be made (a template or `body` failed for this event): it is never
    /// sent, and fails like a request answered 4xx.
    pub unsendable: Option<String>,
}

/// What a delivered job reports back: which transaction of which replication session it
/// belongs to. The session tells acks of an earlier session (whose progress is gone after a
/// reconnect) from the current one's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// Replication session number.
    pub session: u64,
    /// Transaction within the session.
    pub txn: u64,
}

/// Why delivery could not start.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// `start` was called outside a tokio runtime.
    #[error("delivery must be started inside a tokio runtime")]
    NoRuntime,
    /// The URL cannot be used as a request target.
    #[error("trigger {target:?}: {what}")]
    BadUrl {
        /// Trigger name.
        target: String,
        /// What is wrong.
        what: &'static str,
    },
    /// The HTTP client could not be built (TLS set-up).
    #[error("trigger {target:?}: cannot build the HTTP client")]
    Client {
        /// Trigger name.
        target: String,
        /// The underlying error.
        source: rustls::Error,
    },
}

struct TargetHandle {
    lanes: Vec<mpsc::Sender<Queued>>,
    shared: Arc<Shared>,
    budget_bytes: usize,
}

/// Delivers jobs to targets; acks each delivered job's txn.
pub struct Dispatcher {
    targets: Vec<TargetHandle>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    /// Bumped by [`Dispatcher::discard_queued`]; jobs submitted before are dropped.
    epoch: Arc<AtomicU64>,
    /// Whether the source is catching up with a backlog ([`Dispatcher::set_behind`]).
    behind: Arc<AtomicBool>,
    /// Lanes send only while it is open.
    fence: Arc<crate::fence::Fence>,
    /// Where lanes park (`None`: no parking; failing targets hold their events).
    park: Option<Arc<ParkStore>>,
    /// Told when the park table's database refuses walhook because it is shutting down.
    db_down: Arc<Notify>,
    /// Whether "parking is off" was said already (once per process).
    told_parking_off: AtomicBool,
    /// Whether `walhook.parked` exists, so lanes may park.
    park_ready: Arc<AtomicBool>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("targets", &self.targets.len())
            .finish_non_exhaustive()
    }
}

impl Dispatcher {
    /// Starts the lanes of every trigger (must run inside a tokio runtime). Targets are
    /// addressed by [`TriggerId`], i.e. by their place in `triggers`.
    ///
    /// Without a park store a failing target holds its events (and the slot) until it
    /// answers; see [`Dispatcher::start_parking`].
    pub fn start(
        triggers: &[Trigger],
        acks: mpsc::UnboundedSender<Ack>,
    ) -> Result<Dispatcher, DeliveryError> {
        Self::start_with(triggers, acks, None)
    }

    /// Like [`Dispatcher::start`], parking what failing targets cannot take in
    /// `walhook.parked` of the database `park` names (its schema must be migrated), and
    /// delivering it from there. Call [`Dispatcher::load_parked`] before submitting.
    pub fn start_parking(
        triggers: &[Trigger],
        acks: mpsc::UnboundedSender<Ack>,
        park: &ConnInfo,
    ) -> Result<Dispatcher, DeliveryError> {
        Self::start_with(triggers, acks, Some(park))
    }

    fn start_with(
        triggers: &[Trigger],
        acks: mpsc::UnboundedSender<Ack>,
        park: Option<&ConnInfo>,
    ) -> Result<Dispatcher, DeliveryError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(DeliveryError::NoRuntime);
        }
        describe_metrics();
        // Park sessions name themselves, so an operator (or a test) can tell them from the
        // catalog connection in pg_stat_activity.
        let park = park.map(|c| {
            let mut c = c.clone();
            let base = c.application_name.as_deref().unwrap_or("walhook");
            c.application_name = Some(format!("{base} park"));
            c
        });
        let park = park.as_ref();
        let lane_store = park.map(|c| Arc::new(ParkStore::new(c.clone())));
        let mut stores: Vec<Arc<ParkStore>> = lane_store.iter().cloned().collect();
        let db_down = Arc::new(Notify::new());
        let park_ready = Arc::new(AtomicBool::new(false));
        let (stop, stop_rx) = watch::channel(false);
        let epoch = Arc::new(AtomicU64::new(0));
        let behind = Arc::new(AtomicBool::new(false));
        let fence = Arc::new(crate::fence::Fence::default());
        let mut tasks = JoinSet::new();
        let mut handles = Vec::with_capacity(triggers.len());
        // One TLS configuration for every target: the roots are parsed once.
        let mut tls = None;
        for t in triggers {
            let spec = &t.delivery;
            let tls = match &tls {
                Some(config) => Arc::clone(config),
                None => {
                    let config =
                        connection::tls_config().map_err(|source| DeliveryError::Client {
                            target: t.name.clone(),
                            source,
                        })?;
                    tls.insert(config).clone()
                }
            };
            let transport = match &spec.nats {
                Some(n) => transport::Transport::Nats(nats::Publisher::new(&t.name, spec, n)),
                None => transport::Transport::Http(client::Client::new(&t.name, spec, &tls)?),
            };
            let budget = queue_budget(spec.concurrency.get(), spec.batch.get());
            let shared = Arc::new(Shared {
                metrics: TargetMetrics::new(&t.name),
                name: t.name.clone(),
                transport,
                retry: spec.retry,
                batch: spec.batch.get(),
                linger: spec.batch_linger,
                short_busy: AtomicBool::new(false),
                short_done: Notify::new(),
                behind: behind.clone(),
                on_4xx: spec.on_4xx,
                budget: Semaphore::new(budget),
                acks: acks.clone(),
                epoch: epoch.clone(),
                gone: AtomicBool::new(false),
                resumed: Notify::new(),
                warn_throttle: Throttle::new(),
                fence: fence.clone(),
                failing: lane::Failing::default(),
                lanes: spec.concurrency.get(),
                park: lane_store.clone(),
                park_ready: park_ready.clone(),
                parked: park::Parked::default(),
                unpark: Notify::new(),
                db_down: db_down.clone(),
                park_metrics: park::Metrics::new(&t.name),
            });
            if let Some(conninfo) = park {
                // Its own connection: walking the table must not hold up the lanes' inserts.
                let store = Arc::new(ParkStore::new(conninfo.clone()));
                stores.push(store.clone());
                tasks.spawn(park::unpark(shared.clone(), store, stop_rx.clone()));
            }
            let capacity = (4 * spec.batch.get()).max(256);
            let mut lanes = Vec::with_capacity(spec.concurrency.get());
            for _ in 0..spec.concurrency.get() {
                let (tx, rx) = mpsc::channel(capacity);
                tasks.spawn(lane::run(shared.clone(), rx, stop_rx.clone()));
                lanes.push(tx);
            }
            handles.push(TargetHandle {
                lanes,
                shared,
                budget_bytes: budget,
            });
        }
        if let Some(conninfo) = park {
            let store = Arc::new(ParkStore::new(conninfo.clone()));
            stores.push(store.clone());
            let shared = handles.iter().map(|h| h.shared.clone()).collect();
            tasks.spawn(park::refresh(shared, store, stores, stop_rx.clone()));
        }
        Ok(Dispatcher {
            targets: handles,
            stop,
            tasks,
            epoch,
            behind,
            fence,
            park: lane_store,
            db_down,
            told_parking_off: AtomicBool::new(false),
            park_ready,
        })
    }

    /// Reads which ordering keys have pending parked events, so their new events are parked
    /// behind them. Called at the start of every session, before its first job is submitted
    /// (while the fence is closed, so no lane claims a key meanwhile): the table is the truth,
    /// and another instance may have parked or delivered rows while this one was a standby.
    ///
    /// `migrate`: the park table is in a database of its own (`[park] url`), whose schema is
    /// brought up to date here; the source database's was, with the slot.
    pub async fn load_parked(&self, migrate: bool) -> Result<(), ParkError> {
        let Some(store) = &self.park else {
            return Ok(());
        };
        if migrate {
            match store.migrate().await {
                Ok(()) | Err(ParkError::Store(crate::store::StoreError::Privilege { .. })) => {}
                Err(e) => return Err(e),
            }
        }
        if !store.table_exists().await? {
            if !self.told_parking_off.swap(true, AtomicOrdering::AcqRel) {
                tracing::warn!(
                    "walhook.parked does not exist and this role may not create it, so parking \
                     is off: a target that keeps failing holds its events and the slot (the \
                     server keeps WAL) until it answers; {}",
                    crate::store::SCHEMA_ADVICE
                );
            }
            self.park_ready.store(false, AtomicOrdering::Release);
            return Ok(());
        }
        let mut pending = store.pending_keys().await?;
        for t in &self.targets {
            let keys = pending.remove(&t.shared.name).unwrap_or_default();
            if !keys.is_empty() {
                let events: u64 = keys.values().sum();
                tracing::info!(
                    trigger = %t.shared.name,
                    events,
                    "walhook.parked holds pending events; their rows' new events queue behind them"
                );
                t.shared.unpark.notify_one();
            }
            t.shared.parked.load(keys);
        }
        self.park_ready.store(true, AtomicOrdering::Release);
        Ok(())
    }

    /// Notified when the database of the park table is shutting down (it terminated
    /// walhook's session or refuses new ones): the replication session should end so the
    /// shutdown is not held up by events that can be neither delivered nor parked.
    pub fn database_shutting_down(&self) -> Arc<Notify> {
        self.db_down.clone()
    }

    /// Queues a job for trigger `target`, waiting while the target's queue is full. A job
    /// that cannot be queued (unknown target, dispatcher stopping) is logged and never
    /// acked, so its WAL position is never confirmed.
    pub async fn submit(&self, target: TriggerId, job: Job) {
        let Some(t) = self.targets.get(target.index()) else {
            tracing::error!(target_index = target.index(), job = %job.id, "submit to an unknown target; the job will not be delivered or acked");
            return;
        };
        // A job weighs at most a lane's share of the budget, so every lane can have a request
        // on the wire however large the rows are (memory then grows with the rows, never the
        // stream stalling behind one large body).
        let weight = (job.body.len() + JOB_OVERHEAD).min(t.budget_bytes / t.lanes.len().max(1));
        let weight_u32 = u32::try_from(weight).unwrap_or(u32::MAX);
        let Ok(permits) = t.shared.budget.acquire_many(weight_u32).await else {
            return; // the semaphore is never closed; unreachable in practice
        };
        permits.forget(); // given back by the lane once the job is done
        // usize → u64 is lossless on every supported platform.
        let lane = &t.lanes[(job.order_key % t.lanes.len() as u64) as usize];
        t.shared.metrics.depth.increment(1.0);
        if let Err(mpsc::error::SendError(q)) = lane
            .send(Queued {
                job,
                weight: weight_u32,
                epoch: self.epoch.load(AtomicOrdering::Acquire),
            })
            .await
        {
            t.shared.budget.add_permits(q.weight as usize);
            t.shared.metrics.depth.decrement(1.0);
            tracing::error!(trigger = %t.shared.name, job = %q.job.id, "lane has stopped; the job will not be delivered or acked");
        }
    }

    /// The fence every lane checks before each request; the run side opens and closes it.
    pub fn fence(&self) -> Arc<crate::fence::Fence> {
        self.fence.clone()
    }

    /// Says whether the source is catching up with a backlog (its transactions arrive well
    /// after they committed). Triggers with `batch > 1` then let short requests wait up to
    /// `batch_linger` to fill, so a backlog goes out in full requests; while live, a short
    /// request goes at once when no other one of its trigger is on the wire.
    pub fn set_behind(&self, behind: bool) {
        self.behind.store(behind, AtomicOrdering::Relaxed);
    }

    /// Drops every job submitted so far that is not on the wire, without acking it: after a
    /// reconnect the new session sends them all again, so delivering the old copies too would
    /// only add duplicates and send a row's events out of order (old e1, e2, then new e1, e2).
    /// A request already in flight finishes; a batch waiting for a retry is dropped.
    pub fn discard_queued(&self) {
        self.epoch.fetch_add(1, AtomicOrdering::AcqRel);
    }

    /// Stops taking jobs, lets in-flight requests finish within `grace`, then abandons the
    /// rest without acking it. No ack is sent after this returns.
    ///
    /// Queued jobs and jobs waiting for a retry are abandoned at once; a request already on
    /// the wire may still succeed (and be acked) until `grace` runs out. Dropping the
    /// dispatcher instead abandons everything at once, in-flight requests included.
    pub async fn shutdown(mut self, grace: Duration) {
        let _ = self.stop.send(true);
        self.targets.clear(); // closes the lane queues
        let drained = tokio::time::timeout(grace, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                lanes = self.tasks.len(),
                "shutdown grace ran out; abandoning in-flight requests (they will be redelivered)"
            );
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
    }
}

fn describe_metrics() {
    metrics::describe_counter!(
        "walhook_deliveries_total",
        "Events per delivery attempt, by trigger and outcome (delivered, server_error, …)"
    );
    metrics::describe_histogram!(
        "walhook_delivery_seconds",
        metrics::Unit::Seconds,
        "Duration of one webhook request, by trigger"
    );
    metrics::describe_gauge!(
        "walhook_queue_depth",
        "Events submitted and not yet delivered, by trigger"
    );
}
