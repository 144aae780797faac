//! walhook: PostgreSQL row changes as webhooks.
//!
//! Data flows one way, with one feedback edge:
//!
//! ```text
//! source (replication connection → pgoutput → relation cache → values)
//!   → triggers (table, events, CEL `when`, `changed`, projection)
//!   → delivery (per target: ordered lanes, HTTP, retry, signing)
//!   → progress (acks → the highest LSN safe to confirm) → standby status to Postgres
//! ```
//!
//! - [`lsn`]: WAL positions.
//! - [`source`]: everything that speaks to Postgres.
//! - [`event`]: the row change and the webhook envelope built from it.
//! - [`config`]: walhook.toml, interpolation and validation, into the runtime form of each
//!   trigger (its route and its delivery spec).
//! - [`preflight`]: what `run` needs of the database, checked at once (`check` prints it).
//! - [`triggers`]: which trigger a change fires, and the payload it gets.
//! - [`drift`]: triggers bound to table OIDs; renames followed, publication drift reported.
//! - [`delivery`]: HTTP delivery per target, signing, retry, parking (`walhook.parked`).
//! - [`progress`]: in-flight transactions and the LSN that is safe to confirm.
//! - [`fence`]: an instance delivers only while its stream has been heard from recently.
//! - [`reload`]: SIGHUP: a valid new config restarts the pipeline, an invalid one is refused.
//! - [`store`]: the `walhook` schema (state that outlives a process) and its migrations.
//! - [`status`]: `walhook status`: the slot's health and each trigger's state.
//! - [`run`]: the daemon loop that joins them; [`server`] and [`summary`]: what an operator
//!   sees of it; [`probe`]: `walhook health`.
//! - [`check`], [`tail`], [`listen`], [`demo`]: the other commands.

pub mod check;
pub mod config;
pub mod delivery;
pub mod demo;
pub mod drift;
pub mod event;
pub mod fence;
pub mod listen;
pub mod lsn;
pub mod preflight;
pub mod probe;
pub mod progress;
pub mod reload;
pub mod run;
pub mod server;
pub mod source;
pub mod status;
pub mod store;
pub mod summary;
pub mod tail;
pub mod triggers;
