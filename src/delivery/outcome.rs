//! What one HTTP attempt means for delivery: the single place where statuses and transport
//! errors are classified as delivered, retryable, rejected or gone (the README's "Delivery"
//! section is the contract: 2xx delivered; 3xx, 408, 429, 5xx and transport errors retried;
//! 410 pauses the trigger).

use super::connection::HttpError;

/// The classification of one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: the receiver accepted the request.
    Delivered,
    /// Transient: try again by the backoff schedule.
    Retry(Reason),
    /// A 4xx that is the receiver's final word (subject to the target's `on_4xx`).
    Rejected,
    /// 410 Gone: the endpoint was removed; the target is paused and probed slowly.
    Gone,
}

/// Why an attempt failed transiently; also the `outcome` label of `walhook_deliveries_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// 3xx: redirects are not followed (the URL in the config is the contract).
    Redirect,
    /// 408, or no complete answer within the target's timeout.
    Timeout,
    /// 429 Too Many Requests.
    RateLimited,
    /// 5xx.
    ServerError,
    /// The TCP/TLS connection could not be made.
    Connect,
    /// Any other transport failure (reset, protocol error, …) or an unexpected status.
    Transport,
}

impl Verdict {
    /// The `outcome` label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Delivered => "delivered",
            Verdict::Rejected => "rejected",
            Verdict::Gone => "gone",
            Verdict::Retry(reason) => reason.label(),
        }
    }

    /// Every verdict, in the order of [`Verdict::index`] (for pre-registered metric handles).
    pub const ALL: [Verdict; 9] = [
        Verdict::Delivered,
        Verdict::Rejected,
        Verdict::Gone,
        Verdict::Retry(Reason::Redirect),
        Verdict::Retry(Reason::Timeout),
        Verdict::Retry(Reason::RateLimited),
        Verdict::Retry(Reason::ServerError),
        Verdict::Retry(Reason::Connect),
        Verdict::Retry(Reason::Transport),
    ];

    /// Position of this verdict in [`Verdict::ALL`].
    pub fn index(self) -> usize {
        match self {
            Verdict::Delivered => 0,
            Verdict::Rejected => 1,
            Verdict::Gone => 2,
            Verdict::Retry(Reason::Redirect) => 3,
            Verdict::Retry(Reason::Timeout) => 4,
            Verdict::Retry(Reason::RateLimited) => 5,
            Verdict::Retry(Reason::ServerError) => 6,
            Verdict::Retry(Reason::Connect) => 7,
            Verdict::Retry(Reason::Transport) => 8,
        }
    }
}

impl Reason {
    /// The `outcome` label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Reason::Redirect => "redirect",
            Reason::Timeout => "timeout",
            Reason::RateLimited => "rate_limited",
            Reason::ServerError => "server_error",
            Reason::Connect => "connect_error",
            Reason::Transport => "transport_error",
        }
    }
}

/// Classifies an HTTP status.
pub fn classify_status(status: u16) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        300..=399 => Verdict::Retry(Reason::Redirect),
        408 => Verdict::Retry(Reason::Timeout),
        410 => Verdict::Gone,
        429 => Verdict::Retry(Reason::RateLimited),
        400..=499 => Verdict::Rejected,
        500..=599 => Verdict::Retry(Reason::ServerError),
        // 1xx as a final answer, or nonsense: not delivered, so retry.
        _ => Verdict::Retry(Reason::Transport),
    }
}

/// Classifies a transport error (no status received).
pub fn classify_error(err: &HttpError) -> Verdict {
    match err {
        HttpError::Timeout(_) => Verdict::Retry(Reason::Timeout),
        // A certificate the receiver's operator must fix still heals on retry once fixed.
        HttpError::Connect { .. } | HttpError::Tls { .. } => Verdict::Retry(Reason::Connect),
        HttpError::Http(_) | HttpError::Request(_) => Verdict::Retry(Reason::Transport),
        HttpError::Unsendable(_) => Verdict::Rejected,
        HttpError::Publish { reason, .. } => Verdict::Retry(*reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_contract() {
        assert_eq!(classify_status(200), Verdict::Delivered);
        assert_eq!(classify_status(204), Verdict::Delivered);
        assert_eq!(classify_status(299), Verdict::Delivered);
        for s in [301, 302, 307, 308] {
            assert_eq!(classify_status(s), Verdict::Retry(Reason::Redirect));
        }
        assert_eq!(classify_status(408), Verdict::Retry(Reason::Timeout));
        assert_eq!(classify_status(429), Verdict::Retry(Reason::RateLimited));
        assert_eq!(classify_status(410), Verdict::Gone);
        for s in [400, 401, 403, 404, 409, 422, 499] {
            assert_eq!(classify_status(s), Verdict::Rejected, "{s}");
        }
        for s in [500, 502, 503, 504, 599] {
            assert_eq!(classify_status(s), Verdict::Retry(Reason::ServerError));
        }
        assert_eq!(classify_status(100), Verdict::Retry(Reason::Transport));
        assert_eq!(classify_status(600), Verdict::Retry(Reason::Transport));
    }

    #[test]
    fn transport_errors_are_retried() {
        let io = || std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let refused = HttpError::Connect {
            addr: "127.0.0.1:9".into(),
            source: io(),
        };
        assert_eq!(classify_error(&refused), Verdict::Retry(Reason::Connect));
        let tls = HttpError::Tls {
            addr: "example.com:443".into(),
            source: io(),
        };
        assert_eq!(classify_error(&tls), Verdict::Retry(Reason::Connect));
        let timeout = HttpError::Timeout(std::time::Duration::from_secs(1));
        assert_eq!(classify_error(&timeout), Verdict::Retry(Reason::Timeout));
    }

    #[test]
    fn index_matches_all() {
        for (i, v) in Verdict::ALL.iter().enumerate() {
            assert_eq!(v.index(), i);
        }
    }
}
