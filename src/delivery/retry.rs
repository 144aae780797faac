//! The retry schedule: attempt number (and what the server said) → how long to wait.
//!
//! Pure: the caller passes the jitter and the clock, so every case is a unit test.
//! Backoff is "full jitter" (a uniform draw in `[0, min(max, initial·2ⁿ⁻¹)]`), which spreads
//! the retries of many lanes hitting one recovering target instead of synchronising them.

use std::time::{Duration, SystemTime};

/// What the failed attempt tells the schedule beyond "it failed".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hint {
    /// Nothing: use exponential backoff.
    None,
    /// The server sent `Retry-After`; wait at least that long (and at least the backoff, so
    /// `Retry-After: 0` cannot make lanes spin), capped at `max`.
    RetryAfter(Duration),
    /// The target answered 410 Gone: it is paused and probed every `max`.
    Gone,
}

/// The delay before attempt `attempt + 1`, after `attempt` (≥ 1) failed attempts.
///
/// `jitter` is a uniform draw from `[0, 1)`; values outside are clamped.
pub fn delay(initial: Duration, max: Duration, attempt: u32, hint: Hint, jitter: f64) -> Duration {
    let backoff = ceiling(initial, max, attempt).mul_f64(jitter.clamp(0.0, 1.0));
    match hint {
        Hint::RetryAfter(wait) => wait.max(backoff).min(max),
        Hint::Gone => max,
        Hint::None => backoff,
    }
}

/// The backoff ceiling of attempt `attempt`: `initial` doubled `attempt - 1` times, at most `max`.
pub fn ceiling(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(63);
    // checked_mul fails long before 2^63 for any non-zero initial: that is "past max".
    initial
        .checked_mul(1u32.checked_shl(doublings).unwrap_or(u32::MAX))
        .map_or(max, |d| d.min(max))
}

/// Parses a `Retry-After` value (RFC 9110 §10.2.3): delay-seconds or an HTTP-date.
///
/// A date in the past means "now" (zero); anything unparsable is `None` (use backoff).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn retry_after_zero_still_backs_off() {
        let (initial, max) = (100 * MS, 10_000 * MS);
        assert_eq!(
            delay(initial, max, 4, Hint::RetryAfter(Duration::ZERO), 0.5),
            400 * MS
        );
        // A longer Retry-After wins over the backoff, up to max.
        assert_eq!(
            delay(initial, max, 1, Hint::RetryAfter(2_000 * MS), 0.5),
            2_000 * MS
        );
        assert_eq!(
            delay(initial, max, 1, Hint::RetryAfter(60_000 * MS), 0.5),
            max
        );
    }

    #[test]
    fn ceiling_doubles_from_initial_up_to_max() {
        let got: Vec<_> = (1..=8).map(|n| ceiling(100 * MS, 1000 * MS, n)).collect();
        let want = [100, 200, 400, 800, 1000, 1000, 1000, 1000].map(|m| m * MS);
        assert_eq!(got, want);
    }

    #[test]
    fn ceiling_never_overflows() {
        let max = Duration::from_secs(600);
        assert_eq!(ceiling(Duration::from_secs(1), max, u32::MAX), max);
        assert_eq!(ceiling(Duration::from_secs(1), max, 40), max);
        assert_eq!(ceiling(Duration::MAX, max, 1), max);
    }

    #[test]
    fn attempt_zero_is_treated_as_the_first() {
        assert_eq!(ceiling(100 * MS, 1000 * MS, 0), 100 * MS);
    }

    #[test]
    fn full_jitter_spans_zero_to_the_ceiling() {
        let d = |j| delay(100 * MS, 1000 * MS, 3, Hint::None, j);
        assert_eq!(d(0.0), Duration::ZERO);
        assert_eq!(d(0.5), 200 * MS);
        assert_eq!(d(1.0), 400 * MS);
        assert_eq!(d(7.0), 400 * MS, "clamped");
        assert_eq!(d(-1.0), Duration::ZERO, "clamped");
    }

    #[test]
    fn retry_after_is_honoured_but_capped_at_max() {
        let d = |h| delay(100 * MS, 1000 * MS, 1, h, 0.0);
        assert_eq!(d(Hint::RetryAfter(300 * MS)), 300 * MS);
        assert_eq!(d(Hint::RetryAfter(Duration::from_secs(3600))), 1000 * MS);
    }

    #[test]
    fn gone_waits_max() {
        assert_eq!(delay(100 * MS, 1000 * MS, 1, Hint::Gone, 0.0), 1000 * MS);
    }

    #[test]
    fn retry_after_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past means retry now"
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("", now), None);
    }
}
