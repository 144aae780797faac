//! One target's HTTP side: a pooled client with the fixed headers, and one signed attempt.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER, USER_AGENT};

use super::DeliveryError;
use super::outcome::{self, Verdict};
use super::retry;
use super::sign::Signer;
use crate::config::HttpMethod;

const USER_AGENT_VALUE: &str = concat!("walhook/", env!("CARGO_PKG_VERSION"));
/// A response body larger than this is not drained; the connection is dropped instead.
const DRAIN_LIMIT: usize = 64 * 1024;

/// The result of one attempt.
#[derive(Debug)]
pub struct Attempt {
    /// What it means for delivery.
    pub verdict: Verdict,
    /// The HTTP status, if an answer arrived.
    pub status: Option<u16>,
    /// The server's `Retry-After`, if it sent a valid one.
    pub retry_after: Option<Duration>,
    /// The transport error, if no answer arrived (URL stripped: it may hold credentials).
    pub error: Option<reqwest::Error>,
}

/// A target's HTTP client: connection pool, fixed headers, signer.
#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    url: reqwest::Url,
    method: reqwest::Method,
    signer: Option<Signer>,
}

impl Client {
    /// Builds the client of one target; fails on a bad secret or header.
    pub fn new(
        target: &str,
        url: reqwest::Url,
        method: HttpMethod,
        headers: &[(String, String)],
        secret: Option<&str>,
        timeout: Duration,
    ) -> Result<Client, DeliveryError> {
        let signer = secret
            .map(Signer::new)
            .transpose()
            .map_err(|_| DeliveryError::BadSecret {
                target: target.into(),
            })?;
        let mut fixed = HeaderMap::new();
        fixed.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        fixed.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
        for (name, value) in headers {
            let bad = || DeliveryError::BadHeader {
                target: target.into(),
                name: name.clone(),
            };
            let name_h = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?;
            let mut value_h = HeaderValue::from_str(value).map_err(|_| bad())?;
            // Custom headers usually carry tokens: keep them out of any debug output.
            value_h.set_sensitive(true);
            // A user header replaces a default one of the same name (e.g. content-type).
            fixed.insert(name_h, value_h);
        }
        let http = reqwest::Client::builder()
            .default_headers(fixed)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| DeliveryError::Client {
                target: target.into(),
                source: e,
            })?;
        let method = match method {
            HttpMethod::Post => reqwest::Method::POST,
            HttpMethod::Put => reqwest::Method::PUT,
            HttpMethod::Patch => reqwest::Method::PATCH,
        };
        Ok(Client {
            http,
            url,
            method,
            signer,
        })
    }

    /// Sends one request, signed at send time, and classifies the answer.
    pub async fn send(&self, id: &str, body: Bytes) -> Attempt {
        let now = SystemTime::now();
        let timestamp = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .to_string();
        let id = header_safe(id);
        let mut request = self.http.request(self.method.clone(), self.url.clone());
        if let Some(signer) = &self.signer {
            request = request.header("webhook-signature", signer.sign(&id, &timestamp, &body));
        }
        let request = request
            .header("webhook-id", id.into_owned())
            .header("webhook-timestamp", timestamp);
        match request.body(body).send().await {
            Err(e) => Attempt {
                verdict: outcome::classify_error(&e),
                status: None,
                retry_after: None,
                error: Some(e.without_url()),
            },
            Ok(mut response) => {
                let status = response.status().as_u16();
                let verdict = outcome::classify_status(status);
                let retry_after = match verdict {
                    Verdict::Delivered => None,
                    _ => response
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| retry::parse_retry_after(v, now)),
                };
                // Read the (small) body so the connection goes back to the pool. An error
                // here does not change the verdict: the status was already received.
                let mut read = 0;
                while read <= DRAIN_LIMIT {
                    match response.chunk().await {
                        Ok(Some(chunk)) => read += chunk.len(),
                        _ => break,
                    }
                }
                Attempt {
                    verdict,
                    status: Some(status),
                    retry_after,
                    error: None,
                }
            }
        }
    }
}

/// Header values must be visible ASCII; event ids are, but never let one stall a lane.
fn header_safe(id: &str) -> std::borrow::Cow<'_, str> {
    if id.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        std::borrow::Cow::Borrowed(id)
    } else {
        std::borrow::Cow::Owned(
            id.chars()
                .map(|c| if c.is_ascii_graphic() { c } else { '_' })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_made_header_safe() {
        assert_eq!(header_safe("0/16B3748-3"), "0/16B3748-3");
        assert_eq!(header_safe("a b\né"), "a_b__");
    }

    #[test]
    fn user_agent_names_the_version() {
        assert_eq!(
            USER_AGENT_VALUE,
            format!("walhook/{}", env!("CARGO_PKG_VERSION"))
        );
    }
}
