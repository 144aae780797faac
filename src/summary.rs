//! The periodic summary: one log line every [`INTERVAL`] while something happens (events
//! delivered, attempts failing, the slot position moving), so an operator tailing the log
//! sees that walhook works without scraping /metrics. Silent while idle; `--quiet` turns it
//! off.

use std::time::Duration;

use crate::server::{ACTIVITY, ActivitySnapshot};

/// How often the summary is considered.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// Logs a summary line every `interval` in which something happened; runs forever.
pub async fn report(interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut prev = ACTIVITY.snapshot();
    loop {
        tick.tick().await;
        let now = ACTIVITY.snapshot();
        if let Some(text) = line(prev, now, interval) {
            tracing::info!(target: "walhook::summary", "{text}");
        }
        prev = now;
    }
}

/// The summary of what changed from `prev` to `now`, or `None` when nothing did.
pub fn line(prev: ActivitySnapshot, now: ActivitySnapshot, interval: Duration) -> Option<String> {
    let delivered = now.delivered.saturating_sub(prev.delivered);
    let failed = now.failed.saturating_sub(prev.failed);
    let parked = now.parked.saturating_sub(prev.parked);
    let dead = now.dead.saturating_sub(prev.dead);
    if delivered == 0
        && failed == 0
        && parked == 0
        && dead == 0
        && now.unconfirmed == prev.unconfirmed
    {
        return None;
    }
    // Parked and dead only when there were some: most intervals have none.
    let mut parking = String::new();
    if parked > 0 {
        parking.push_str(&format!(", {parked} parked"));
    }
    if dead > 0 {
        parking.push_str(&format!(", {dead} dead"));
    }
    Some(format!(
        "last {}s: {delivered} delivered, {failed} failed {}{parking}, {} unconfirmed; {} delivered since start",
        interval.as_secs(),
        if failed == 1 { "attempt" } else { "attempts" },
        bytes(now.unconfirmed),
        now.delivered,
    ))
}

/// `512 B`, `4.2 KiB`, `17.0 MiB`, `3.1 GiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn snap(delivered: u64, failed: u64, unconfirmed: u64) -> ActivitySnapshot {
        ActivitySnapshot {
            delivered,
            failed,
            unconfirmed,
            ..ActivitySnapshot::default()
        }
    }

    #[test]
    fn silent_while_idle() {
        let s = snap(10, 2, 0);
        assert_eq!(line(s, s, INTERVAL), None);
        let held = snap(10, 2, 4096);
        assert_eq!(line(held, held, INTERVAL), None);
    }

    #[test]
    fn says_what_happened_in_the_interval() {
        assert_eq!(
            line(snap(10, 0, 0), snap(42, 1, 4300), INTERVAL).unwrap(),
            "last 10s: 32 delivered, 1 failed attempt, 4.2 KiB unconfirmed; 42 delivered since start"
        );
        assert_eq!(
            line(snap(5, 3, 100), snap(5, 9, 100), Duration::from_secs(30)).unwrap(),
            "last 30s: 0 delivered, 6 failed attempts, 100 B unconfirmed; 5 delivered since start"
        );
        // The slot moved with nothing delivered (changes no trigger wanted).
        assert!(line(snap(5, 0, 800), snap(5, 0, 0), INTERVAL).is_some());
        // A target down: its events parked, some gone dead.
        let before = snap(5, 0, 0);
        let after = ActivitySnapshot {
            failed: 4,
            parked: 300,
            dead: 2,
            ..before
        };
        assert_eq!(
            line(before, after, INTERVAL).unwrap(),
            "last 10s: 0 delivered, 4 failed attempts, 300 parked, 2 dead, 0 B unconfirmed; 5 delivered since start"
        );
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1024), "1.0 KiB");
        assert_eq!(bytes(17 * 1024 * 1024), "17.0 MiB");
        assert_eq!(bytes(u64::MAX), "16777216.0 TiB");
    }
}
