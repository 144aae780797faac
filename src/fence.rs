//! Fencing: an instance delivers only while it can trust that it still owns the slot.
//!
//! A standby takes the slot over once the active instance's walsender is gone, which takes
//! at least `wal_sender_timeout` of silence from the active one. An instance that was
//! paused (SIGSTOP, a frozen VM, a long GC-like stall) for about that long may wake up with
//! requests queued and a stream that ended while it slept; without a fence its lanes send
//! them before the reader notices, behind the standby's back. So a watchdog ticks every
//! [`TICK`]; a gap between ticks longer than the bound (half `wal_sender_timeout`) closes
//! the fence, and lanes also refuse to send when the last tick is older than the bound
//! (they may run before the watchdog after a pause). A closed fence ends the session; only
//! a new session (the stream proved alive) opens it again, and that session discards what
//! the old one had queued.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often the watchdog ticks.
pub const TICK: Duration = Duration::from_secs(1);

/// The fence shared by the watchdog (run side) and the lanes (delivery side).
#[derive(Debug)]
pub struct Fence {
    epoch: Instant,
    last_tick_ms: AtomicU64,
    /// 0: no bound (`wal_sender_timeout = 0`), only an explicit close fences.
    bound_ms: AtomicU64,
    closed: AtomicBool,
}

impl Default for Fence {
    fn default() -> Self {
        Fence {
            epoch: Instant::now(),
            last_tick_ms: AtomicU64::new(0),
            bound_ms: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        }
    }
}

impl Fence {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether a lane may send a request now.
    pub fn may_send(&self) -> bool {
        // Read `closed` before the tick: `tick` closes before it records a late tick.
        if self.closed.load(Ordering::SeqCst) {
            return false;
        }
        let bound = self.bound_ms.load(Ordering::SeqCst);
        bound == 0
            || self
                .now_ms()
                .saturating_sub(self.last_tick_ms.load(Ordering::SeqCst))
                <= bound
    }

    /// Records a watchdog tick; returns the gap if it was longer than the bound (the
    /// process was paused), having closed the fence.
    pub fn tick(&self) -> Option<Duration> {
        let now = self.now_ms();
        let gap = now.saturating_sub(self.last_tick_ms.load(Ordering::SeqCst));
        let bound = self.bound_ms.load(Ordering::SeqCst);
        let late = bound > 0 && gap > bound && !self.closed.load(Ordering::SeqCst);
        if late {
            self.closed.store(true, Ordering::SeqCst);
        }
        self.last_tick_ms.store(now, Ordering::SeqCst);
        late.then(|| Duration::from_millis(gap))
    }

    /// A session streams (the stream is alive): open, with the bound for this server.
    pub fn open(&self, bound: Duration) {
        self.bound_ms.store(
            u64::try_from(bound.as_millis()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
        self.last_tick_ms.store(self.now_ms(), Ordering::SeqCst);
        self.closed.store(false, Ordering::SeqCst);
    }

    /// The session ended: nothing is sent until the next one opens the fence.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// The bound for a server's `wal_sender_timeout` (milliseconds; 0 disables it).
    pub fn bound_for(wal_sender_timeout_ms: i64) -> Duration {
        Duration::from_millis(u64::try_from(wal_sender_timeout_ms / 2).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_tick_closes_until_opened() {
        let f = Fence::default();
        assert!(f.may_send(), "no bound yet");
        f.open(Duration::from_millis(50));
        assert!(f.may_send());
        assert_eq!(f.tick(), None);
        std::thread::sleep(Duration::from_millis(80));
        // Before the watchdog notices, the lane sees the stale tick itself.
        assert!(!f.may_send());
        assert!(f.tick().is_some());
        assert!(!f.may_send(), "a late tick keeps it closed");
        assert_eq!(f.tick(), None);
        assert!(!f.may_send());
        f.open(Duration::from_millis(50));
        assert!(f.may_send());
        f.close();
        assert!(!f.may_send());
    }

    #[test]
    fn the_bound_is_half_the_wal_sender_timeout() {
        assert_eq!(Fence::bound_for(60_000), Duration::from_secs(30));
        assert_eq!(Fence::bound_for(0), Duration::ZERO);
    }
}
