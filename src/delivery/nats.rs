//! A JetStream target: each event is published as one message and counts as delivered only
//! once the stream acknowledges it (PubAck).
//!
//! - Exactly once into the stream: `Nats-Msg-Id` is the event id, so JetStream drops a
//!   redelivery (after a crash or a reconnect) that falls inside the stream's duplicate
//!   window.
//! - Order: a lane publishes a group of events pipelined (one round trip for the group),
//!   but never two events of one ordering key in the same group: a row's next event is
//!   published only after its previous one was acknowledged, so no failure or reconnect can
//!   store them out of order. Lanes run in parallel over one connection.
//! - Headers: `Nats-Msg-Id`, `content-type`, the `webhook-*` headers (signed like a webhook
//!   when the trigger has a secret) and the trigger's configured headers.
//! - The connection is made on first use and kept (async-nats reconnects by itself); a
//!   publish that fails (no stream captures the subject, server down, storage full, no
//!   answer within `timeout`) is an attempt that failed, retried, parked or dead by the
//!   trigger's rules.

use std::future::IntoFuture as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishErrorKind};
use bytes::Bytes;
use tokio::sync::OnceCell;

use super::Shape;
use super::client::Attempt;
use super::connection::HttpError;
use super::outcome::{Reason, Verdict};
use super::sign::Signer;
use crate::config::{DeliverySpec, NatsSpec};

/// One trigger's JetStream publisher, shared by its lanes.
pub struct Publisher {
    target: String,
    spec: NatsSpec,
    /// `content-type` and the configured headers.
    fixed: Vec<(String, String)>,
    signer: Option<Signer>,
    timeout: Duration,
    context: OnceCell<jetstream::Context>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// The publisher of trigger `target` (no connection yet).
    pub fn new(target: &str, spec: &DeliverySpec, nats: &NatsSpec) -> Publisher {
        let mut fixed = vec![("content-type".to_owned(), "application/json".to_owned())];
        for (name, value) in &spec.headers {
            if let Ok(v) = value.to_str() {
                fixed.retain(|(n, _)| n != name.as_str());
                fixed.push((name.as_str().to_owned(), v.to_owned()));
            }
        }
        Publisher {
            target: target.to_owned(),
            spec: nats.clone(),
            fixed,
            signer: spec.signer.clone(),
            timeout: spec.timeout,
            context: OnceCell::new(),
        }
    }

    /// The JetStream context, connecting on first use. async-nats keeps reconnecting
    /// after that; publishes fail meanwhile.
    async fn context(&self) -> Result<&jetstream::Context, HttpError> {
        self.context
            .get_or_try_init(|| async {
                let client = connect(&self.target, &self.spec, self.timeout)
                    .await
                    .map_err(|e| HttpError::Publish {
                        reason: Reason::Connect,
                        message: e,
                    })?;
                let mut context = jetstream::new(client);
                context.set_timeout(self.timeout);
                Ok(context)
            })
            .await
    }

    /// Why no message can be published for a job of this shape, if none can: its template
    /// failed, or it is a parked row this trigger's config cannot place (a URL path parked
    /// while the trigger sent HTTP, or no subject stored while `subject` is a template).
    fn unsendable(&self, shape: Option<&Shape>) -> Option<String> {
        if let Some(error) = shape.and_then(|s| s.unsendable.as_ref()) {
            return Some(error.clone());
        }
        match shape.and_then(|s| s.target.as_deref()) {
            Some(path) if path.starts_with('/') => Some(format!(
                "`{path}` is a URL path, not a subject: it was parked when this trigger sent HTTP"
            )),
            None if self.spec.subject_template.is_some() => Some(
                "no subject was stored for it (it was parked before `subject` was a template)"
                    .to_owned(),
            ),
            _ => None,
        }
    }

    /// Publishes `jobs` pipelined and waits for every acknowledgement: delivered only when
    /// all were stored (a redelivered one counts: the stream already holds it).
    pub async fn publish(&self, jobs: &[(&str, &Bytes, Option<&Shape>)]) -> Attempt {
        if let Some(error) = jobs.iter().find_map(|(_, _, s)| self.unsendable(*s)) {
            return failed(HttpError::Unsendable(error));
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        let context = match tokio::time::timeout_at(deadline, self.context()).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return failed(e),
            Err(_) => return failed(HttpError::Timeout(self.timeout)),
        };
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .to_string();
        let mut acks = Vec::with_capacity(jobs.len());
        for (id, body, shape) in jobs {
            let subject = shape
                .and_then(|s| s.target.clone())
                .unwrap_or_else(|| self.spec.subject.clone());
            let headers = self.headers(id, &timestamp, body, *shape);
            let sent = tokio::time::timeout_at(
                deadline,
                context.publish_with_headers(subject, headers, (*body).clone()),
            )
            .await;
            match sent {
                Ok(Ok(ack)) => acks.push(ack),
                Ok(Err(e)) => return failed(publish_error(e.kind(), &e.to_string())),
                Err(_) => return failed(HttpError::Timeout(self.timeout)),
            }
        }
        // Every publish is on the wire; the acknowledgements come back in any order.
        for ack in acks {
            match tokio::time::timeout_at(deadline, ack.into_future()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return failed(publish_error(e.kind(), &e.to_string())),
                Err(_) => return failed(HttpError::Timeout(self.timeout)),
            }
        }
        Attempt {
            verdict: Verdict::Delivered,
            status: None,
            retry_after: None,
            error: None,
        }
    }

    fn headers(&self, id: &str, timestamp: &str, body: &[u8], shape: Option<&Shape>) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in &self.fixed {
            h.insert(name.as_str(), value.as_str());
        }
        for (name, value) in shape.map(|s| s.headers.as_slice()).unwrap_or_default() {
            h.insert(name.as_str(), value.as_str());
        }
        h.insert("Nats-Msg-Id", id);
        h.insert("webhook-id", id);
        h.insert("webhook-timestamp", timestamp);
        if let Some(signer) = &self.signer {
            h.insert(
                "webhook-signature",
                signer.sign(id, timestamp, body).as_str(),
            );
        }
        h
    }
}

/// Connects to the trigger's servers with its credentials.
pub async fn connect(
    name: &str,
    spec: &NatsSpec,
    timeout: Duration,
) -> Result<async_nats::Client, String> {
    let mut options = match &spec.creds {
        Some(path) => async_nats::ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|e| format!("cannot read the credentials file {}: {e}", path.display()))?,
        None => async_nats::ConnectOptions::new(),
    };
    if let Some(seed) = &spec.nkey {
        options = options.nkey(seed.clone());
    }
    if let Some(token) = &spec.token {
        options = options.token(token.clone());
    }
    if let Some(ca) = &spec.tls_ca {
        options = options.add_root_certificates(ca.clone());
    }
    if spec.servers.iter().any(|s| s.starts_with("tls://")) {
        options = options.require_tls(true);
    }
    let servers: Vec<async_nats::ServerAddr> = spec
        .servers
        .iter()
        .map(|s| s.parse())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not a NATS server address: {e}"))?;
    options
        .name(format!("walhook {name}"))
        .connection_timeout(timeout)
        // Connect in the background when the servers are down now: publishes fail (and are
        // retried) until it is up, rather than the trigger failing for good.
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connect(servers)
        .await
        .map_err(|e| format!("cannot connect to NATS: {e}"))
}

/// A failed publish as an attempt's error.
fn publish_error(kind: PublishErrorKind, text: &str) -> HttpError {
    let (reason, message) = match kind {
        PublishErrorKind::StreamNotFound => (
            Reason::ServerError,
            "no JetStream stream captures the subject (no responders); create one".to_owned(),
        ),
        PublishErrorKind::TimedOut => (Reason::Timeout, "no PubAck in time".to_owned()),
        PublishErrorKind::BrokenPipe => (
            Reason::Transport,
            "the NATS connection dropped before the PubAck".to_owned(),
        ),
        _ => (Reason::ServerError, format!("JetStream refused it: {text}")),
    };
    HttpError::Publish { reason, message }
}

fn failed(error: HttpError) -> Attempt {
    Attempt {
        verdict: super::outcome::classify_error(&error),
        status: None,
        retry_after: None,
        error: Some(error),
    }
}

/// What `check` says of a JetStream trigger's subject: the stream that captures it, and
/// whether its duplicate window covers `retry_max` (a redelivery later than the window is
/// stored twice). `Err` when no stream captures it or NATS cannot be reached.
pub async fn check_subject(
    name: &str,
    spec: &NatsSpec,
    subject: &str,
    timeout: Duration,
) -> Result<(String, Duration), String> {
    let client = tokio::time::timeout(timeout, connect(name, spec, timeout))
        .await
        .map_err(|_| "cannot connect to NATS in time".to_owned())??;
    // retry_on_initial_connect returns before the connection is up: wait for it.
    let deadline = tokio::time::Instant::now() + timeout;
    while client.connection_state() != async_nats::connection::State::Connected {
        if tokio::time::Instant::now() > deadline {
            return Err("cannot connect to NATS in time".to_owned());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let context = jetstream::new(client);
    let stream = context
        .stream_by_subject(subject)
        .await
        .map_err(|e| format!("no JetStream stream captures subject {subject:?} ({e})"))?;
    let mut info = context
        .get_stream(&stream)
        .await
        .map_err(|e| format!("cannot read stream {stream:?}: {e}"))?;
    let info = info
        .info()
        .await
        .map_err(|e| format!("cannot read stream {stream:?}: {e}"))?;
    Ok((stream, info.config.duplicate_window))
}
