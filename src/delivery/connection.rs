//! One lane's HTTP/1.1 connection to its target: TCP with `TCP_NODELAY`, TLS for `https`,
//! kept alive across requests.
//!
//! - No pool: a lane sends one request at a time, so its connection is never shared. Each
//!   lane owns one [`Connection`], made on first use and replaced after it breaks.
//! - No connection task: hyper's connection future is polled by the lane itself, only while a
//!   request is in flight ([`drive`]). One task per request instead of two, no cross-task
//!   wake-ups, and dropping the lane closes its socket.
//! - A server may close an idle keep-alive connection at any time (RFC 9112 §9.3). The lane
//!   polls its idle connection while it waits for work ([`Connection::closed`]), and polls it
//!   once more before a request, so a close that already arrived is noticed and the
//!   connection replaced before anything is written. A close racing the request fails it as
//!   a transport error, which the lane retries like any other.
//! - The connection is dropped (and made again for the next request) after any error, a
//!   timeout, a `connection: close` answer, or a body over the drain limit.

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Body as _, Incoming};
use hyper::client::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Why a request got no (complete) answer. The messages name the host, never the URL: its
/// user info may hold credentials.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The TCP connection could not be made (refused, unreachable, name not resolved).
    #[error("cannot connect to {addr}")]
    Connect {
        /// `host:port`.
        addr: String,
        /// The socket error.
        source: io::Error,
    },
    /// The TLS handshake failed (certificate not trusted, wrong name, no common protocol).
    #[error("TLS handshake with {addr} failed")]
    Tls {
        /// `host:port`.
        addr: String,
        /// The handshake error.
        source: io::Error,
    },
    /// No complete answer within the target's timeout.
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The exchange failed once connected (reset, closed early, malformed answer).
    #[error("HTTP exchange failed")]
    Http(#[from] hyper::Error),
    /// The request could not be built (a header value that HTTP cannot carry). Nothing was
    /// sent: a request is never sent unsigned or with a header left out.
    #[error("cannot build the request: {0}")]
    Request(&'static str),
    /// A template or `body` failed for this event: no request can be made for it. It fails
    /// like a 4xx (the event, not the target, is at fault).
    #[error("cannot build the request: {0}")]
    Unsendable(String),
    /// A JetStream publish failed (no stream, no acknowledgement in time, refused).
    #[error("{message}")]
    Publish {
        /// How it counts (the `outcome` label).
        reason: super::outcome::Reason,
        /// What happened.
        message: String,
    },
}

/// Where a target's connections go: resolved once from its URL.
#[derive(Debug)]
pub struct Endpoint {
    host: Host,
    port: u16,
    /// `host:port` for error messages.
    addr: String,
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
}

#[derive(Debug)]
enum Host {
    Ip(IpAddr),
    Name(String),
}

/// Why a URL cannot be an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// `http` or `https` URL without a host.
    #[error("url must have a host")]
    NoHost,
    /// An `https` host rustls cannot check a certificate against.
    #[error("url host cannot be checked against a TLS certificate")]
    BadServerName,
}

impl EndpointError {
    /// The message, as a static string for [`super::DeliveryError::BadSetting`].
    pub fn message(self) -> &'static str {
        match self {
            EndpointError::NoHost => "url must have a host",
            EndpointError::BadServerName => "url host cannot be checked against a TLS certificate",
        }
    }
}

impl Endpoint {
    /// The endpoint of `url` (`http` or `https`); `tls` is used for `https` only.
    pub fn new(url: &url::Url, tls: &Arc<ClientConfig>) -> Result<Endpoint, EndpointError> {
        let port = url.port_or_known_default().ok_or(EndpointError::NoHost)?;
        let host_str = url.host_str().filter(|h| !h.is_empty());
        let host_str = host_str.ok_or(EndpointError::NoHost)?;
        // IPv6 literals come bracketed ("[::1]"); the URL parser has validated them.
        let bare = host_str.trim_start_matches('[').trim_end_matches(']');
        let host = match bare.parse::<IpAddr>() {
            Ok(ip) => Host::Ip(ip),
            Err(_) => Host::Name(bare.to_owned()),
        };
        let addr = format!("{host_str}:{port}");
        let tls = if url.scheme() == "https" {
            let server_name =
                ServerName::try_from(bare.to_owned()).map_err(|_| EndpointError::BadServerName)?;
            Some((tls.clone(), server_name))
        } else {
            None
        };
        Ok(Endpoint {
            host,
            port,
            addr,
            tls,
        })
    }
}

/// The rustls client configuration of `https` targets: the webpki roots, ALPN `http/1.1`.
pub fn tls_config() -> Result<Arc<ClientConfig>, rustls::Error> {
    tls_config_with(rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    })
}

/// [`tls_config`] with other roots (tests: a local CA).
pub(super) fn tls_config_with(
    roots: rustls::RootCertStore,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Only HTTP/1.1 is spoken; without ALPN some servers would pick h2 by other means.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Plain TCP or TLS over TCP, behind one type.
trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

type Io = TokioIo<Box<dyn Stream>>;
type Driver = Pin<Box<http1::Connection<Io, Full<Bytes>>>>;

/// One lane's connection; empty until the first request.
#[derive(Default)]
pub struct Connection {
    live: Option<Live>,
}

struct Live {
    sender: http1::SendRequest<Full<Bytes>>,
    /// `None` once hyper's connection future has finished.
    driver: Option<Driver>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("open", &self.live.is_some())
            .finish()
    }
}

impl Connection {
    /// No connection yet.
    pub fn new() -> Connection {
        Connection::default()
    }

    /// Whether a connection is open.
    #[cfg(test)]
    pub fn is_open(&self) -> bool {
        self.live.is_some()
    }

    /// Drops the connection; the next request makes a new one.
    pub fn close(&mut self) {
        self.live = None;
    }

    /// Resolves when an idle connection ends (the server closed it, or sent something
    /// unexpected), and drops it; never resolves without one. Polling it while the lane waits
    /// for work closes our side of the socket at once instead of at the next request.
    pub async fn closed(&mut self) {
        let Some(live) = &mut self.live else {
            return std::future::pending().await;
        };
        if let Some(driver) = &mut live.driver {
            let _ = driver.as_mut().await;
        }
        self.live = None;
    }

    /// Sends the request `make` builds (connecting first if needed) and returns the answer's
    /// head; the caller drains the body with [`Connection::drain`]. On error the connection
    /// is closed. Dropping the future mid-way leaves the connection unusable: call `close`.
    ///
    /// A reused keep-alive connection that the server closed as the request went out (its
    /// idle timeout raced the request) is not an answer from the receiver: the request is
    /// built again and sent once more at once on a fresh connection, rather than failing into
    /// the retry backoff (up to `retry.initial` of delay for nothing). If the first copy did
    /// reach the server, the receiver sees the same `webhook-id` twice, as with any redelivery.
    pub async fn send(
        &mut self,
        endpoint: &Endpoint,
        make: impl Fn() -> Result<Request<Full<Bytes>>, HttpError>,
    ) -> Result<Response<Incoming>, HttpError> {
        // A request that cannot be built says nothing about the connection: keep it.
        let request = make()?;
        let result = self.try_send(endpoint, request, make).await;
        if result.is_err() {
            self.live = None;
        }
        result
    }

    async fn try_send(
        &mut self,
        endpoint: &Endpoint,
        mut request: Request<Full<Bytes>>,
        make: impl Fn() -> Result<Request<Full<Bytes>>, HttpError>,
    ) -> Result<Response<Incoming>, HttpError> {
        let mut reused = self.live.is_some();
        loop {
            let live = match &mut self.live {
                Some(live) => live,
                None => self.live.insert(connect(endpoint).await?),
            };
            // Polls the connection first: an idle close that already arrived shows up here.
            match drive(&mut live.driver, live.sender.ready()).await {
                Ok(()) => {}
                // Nothing was written yet: a fresh connection is safe, once.
                Err(_) if reused => {
                    self.live = None;
                    reused = false;
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            match drive(&mut live.driver, live.sender.try_send_request(request)).await {
                Ok(response) => return Ok(response),
                Err(e) if reused && closed_under_us(e.error()) => {
                    tracing::debug!(
                        error = %e.error(),
                        "keep-alive connection closed by the server as a request went out; \
                         sending it again on a new connection"
                    );
                    let mut e = e;
                    request = match e.take_message() {
                        Some(r) => r,
                        None => make()?,
                    };
                    self.live = None;
                    reused = false;
                }
                Err(e) => return Err(e.into_error().into()),
            }
        }
    }

    /// Reads and discards `body`, at most `limit` bytes. Returns whether the connection can
    /// be reused; if not (too large, broken), it is closed.
    pub async fn drain(&mut self, mut body: Incoming, limit: usize) -> bool {
        let reusable = match &mut self.live {
            // A declared length over the limit is not worth reading.
            Some(_) if body.size_hint().lower() > limit as u64 => false,
            Some(live) => {
                let mut read = 0usize;
                loop {
                    match drive(&mut live.driver, body.frame()).await {
                        None => break true,
                        Some(Ok(frame)) => {
                            read = read.saturating_add(frame.data_ref().map_or(0, Bytes::len));
                            if read > limit {
                                break false;
                            }
                        }
                        Some(Err(_)) => break false,
                    }
                }
            }
            None => false,
        };
        if !reusable {
            self.live = None;
        }
        reusable
    }
}

/// Whether `e` says the connection ended under the request (closed, reset, the answer cut
/// off before its first byte) rather than the server answering.
fn closed_under_us(e: &hyper::Error) -> bool {
    e.is_incomplete_message() || e.is_canceled() || e.is_closed() || {
        // A reset while writing or reading: the io error under hyper's.
        let mut source = std::error::Error::source(e);
        let mut reset = false;
        while let Some(s) = source {
            if let Some(io) = s.downcast_ref::<io::Error>() {
                reset = matches!(
                    io.kind(),
                    io::ErrorKind::ConnectionReset
                        | io::ErrorKind::BrokenPipe
                        | io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::UnexpectedEof
                );
                break;
            }
            source = s.source();
        }
        reset
    }
}

/// TCP (+ TLS) and the HTTP/1.1 handshake.
async fn connect(endpoint: &Endpoint) -> Result<Live, HttpError> {
    let connect_error = |source| HttpError::Connect {
        addr: endpoint.addr.clone(),
        source,
    };
    let tcp = match &endpoint.host {
        Host::Ip(ip) => TcpStream::connect((*ip, endpoint.port)).await,
        Host::Name(name) => TcpStream::connect((name.as_str(), endpoint.port)).await,
    }
    .map_err(connect_error)?;
    // Each request is written in one go and waits for its answer: Nagle would only delay it.
    tcp.set_nodelay(true).map_err(connect_error)?;
    let io: Box<dyn Stream> = match &endpoint.tls {
        None => Box::new(tcp),
        Some((config, name)) => Box::new(
            tokio_rustls::TlsConnector::from(config.clone())
                .connect(name.clone(), tcp)
                .await
                .map_err(|source| HttpError::Tls {
                    addr: endpoint.addr.clone(),
                    source,
                })?,
        ),
    };
    let (sender, driver) = http1::Builder::new().handshake(TokioIo::new(io)).await?;
    Ok(Live {
        sender,
        driver: Some(Box::pin(driver)),
    })
}

/// Runs `work` (a request, its body) while polling the connection that serves it, connection
/// first so that one pass both moves the bytes and picks up the result. A finished connection
/// is dropped, which fails whatever still waits on it, so `work` always completes.
async fn drive<F: Future>(driver: &mut Option<Driver>, work: F) -> F::Output {
    let mut work = std::pin::pin!(work);
    std::future::poll_fn(|cx| {
        if let Some(d) = driver {
            if d.as_mut().poll(cx).is_ready() {
                *driver = None;
            }
        }
        work.as_mut().poll(cx)
    })
    .await
}
