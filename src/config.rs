//! walhook.toml: schema, `${VAR}` interpolation, validation with precise messages.
//!
//! (The loader is still to be written; the shared setting types below are final.)

use std::time::Duration;

/// Which events of a target must keep commit order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    /// Events of the same row (same replica identity key) arrive in commit order.
    #[default]
    Row,
    /// Events of the same table arrive in commit order.
    Table,
    /// No ordering: every event may go in parallel.
    None,
}

/// What a 4xx answer other than 408/410/429 does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum On4xx {
    /// Retried by the same schedule as 5xx.
    #[default]
    Retry,
    /// Marked dead at once (kept for `walhook replay`).
    Dead,
}

/// HTTP method of a trigger's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    /// POST (the default).
    #[default]
    Post,
    /// PUT.
    Put,
    /// PATCH.
    Patch,
}

/// The retry schedule of a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetrySettings {
    /// First backoff interval.
    pub initial: Duration,
    /// Longest backoff interval.
    pub max: Duration,
    /// How long a target may keep failing before its events are parked.
    pub park_after: Duration,
    /// How long a parked event is retried before it is marked dead.
    pub give_up_after: Duration,
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(600),
            park_after: Duration::from_secs(120),
            give_up_after: Duration::from_secs(3 * 86_400),
        }
    }
}
