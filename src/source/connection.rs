//! The replication connection: a `replication=database` session spoken directly over
//! tokio + rustls with `postgres-protocol` message builders (released tokio-postgres cannot
//! enter CopyBoth mode).
//!
//! Subtle points:
//! - **TLS** is negotiated before anything else, in [`super::tls`] (SSLRequest, then libpq's
//!   certificate policy).
//! - **Session settings** are fixed in the startup packet (ISO dates, UTC, hex bytea, UTF-8,
//!   `extra_float_digits=1`) so pgoutput's text values mean one thing.
//! - **SCRAM over TLS** uses `SCRAM-SHA-256-PLUS` when the server offers it and the certificate's
//!   hash is known; otherwise the client says `n` ("no binding support"): saying `y` over TLS
//!   would make the server suspect a downgrade and refuse.
//! - **Framing** ([`super::frame`]) lives in one [`BytesMut`]: [`ReplicationReader::recv`] only awaits
//!   `read_buf`, which is cancel-safe, and frames from what is buffered, so it can sit in a
//!   `tokio::select!` without losing bytes. CopyData payloads are zero-copy slices.
//! - **Errors** are classified once, in [`ConnectError::is_transient`]: retry a lost network
//!   or a restarting server, stop on bad credentials, missing privileges or configuration.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{self, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::conninfo::{ChannelBinding, ConnInfo, ConnInfoError, SslMode};
use super::frame::{
    Body, Frame, MAX_MESSAGE_LEN, log_notice, read_frame, server_error, unexpected,
};
use super::tls::{Stream, negotiate_tls};

/// Anything that can go wrong opening or using a Postgres connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The connection string is invalid.
    #[error(transparent)]
    Config(#[from] ConnInfoError),
    /// No address of the host accepted a TCP connection.
    #[error("could not connect to {host}:{port}: {source}")]
    Connect {
        /// Host as configured.
        host: String,
        /// Port as configured.
        port: u16,
        /// The last address's error.
        source: io::Error,
    },
    /// The Unix-domain socket could not be connected to (no server there, or no access).
    #[error("could not connect to the Unix-domain socket {path}: {source}")]
    ConnectSocket {
        /// The socket file.
        path: std::path::PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Connecting, the TLS handshake and authentication together took too long.
    #[error("connecting to the server timed out after {0:?}")]
    Timeout(Duration),
    /// Reading or writing the socket failed.
    #[error("connection to the server failed: {0}")]
    Io(#[from] io::Error),
    /// The server closed the connection unexpectedly.
    #[error("the server closed the connection unexpectedly")]
    Closed,
    /// The server refused TLS but the sslmode demands it.
    #[error("the server does not support TLS, but sslmode={0} requires it")]
    TlsUnsupported(SslMode),
    /// TLS set-up or handshake failed (certificate problems land here).
    #[error("TLS: {0}")]
    Tls(String),
    /// The `sslrootcert` file could not be used.
    #[error("cannot use sslrootcert {path}: {reason}")]
    RootCert {
        /// The configured file.
        path: std::path::PathBuf,
        /// Why not.
        reason: String,
    },
    /// The server wants a password and none was configured.
    #[error(
        "the server requires a password for user \"{0}\", but none was given (add it to the URL or set PGPASSWORD)"
    )]
    PasswordRequired(String),
    /// The server wants an authentication method walhook does not implement.
    #[error("the server requested unsupported authentication method {0}")]
    UnsupportedAuth(String),
    /// Channel binding was required but could not be used.
    #[error("channel_binding=require, but the server did not offer SCRAM-SHA-256-PLUS over TLS")]
    ChannelBindingUnavailable,
    /// The SCRAM exchange failed on our side (e.g. the server's proof is wrong).
    #[error("SCRAM authentication failed: {0}")]
    Scram(String),
    /// The server reported an error.
    #[error(
        "{severity} {code}: {message}{}{}",
        opt_part(". DETAIL: ", detail),
        opt_part(". HINT: ", hint)
    )]
    Server {
        /// `FATAL`, `ERROR`, ...
        severity: String,
        /// SQLSTATE.
        code: String,
        /// Primary message.
        message: String,
        /// Optional detail.
        detail: Option<String>,
        /// Optional hint.
        hint: Option<String>,
    },
    /// The server sent something the protocol does not allow here.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// An ordinary SQL connection (tokio-postgres) failed.
    #[error("{}", describe_sql_error(.0))]
    Sql(tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for ConnectError {
    fn from(e: tokio_postgres::Error) -> ConnectError {
        ConnectError::Sql(e)
    }
}

/// One line that names the cause of a tokio-postgres error: the server's message (with
/// severity, SQLSTATE, detail and hint, as [`ConnectError::Server`] shows it) or the chain of
/// causes down to the OS error. tokio-postgres's own `Display` says only "db error" or
/// "error connecting to server" and leaves the cause to `source()`, which a single `{}` drops.
pub fn describe_sql_error(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!(
            "{} {}: {}{}{}",
            db.severity(),
            db.code().code(),
            db.message(),
            opt_part(". DETAIL: ", &db.detail().map(str::to_owned)),
            opt_part(". HINT: ", &db.hint().map(str::to_owned))
        );
    }
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn opt_part(prefix: &str, value: &Option<String>) -> String {
    match value {
        // One line: detail and hint may contain newlines.
        Some(v) => format!("{prefix}{}", v.replace('\n', " ")),
        None => String::new(),
    }
}

impl ConnectError {
    /// True when retrying later may succeed (network, server restarting, slot busy); false
    /// when a person has to change something (credentials, privileges, configuration).
    pub fn is_transient(&self) -> bool {
        match self {
            ConnectError::Connect { .. }
            | ConnectError::ConnectSocket { .. }
            | ConnectError::Timeout(_)
            | ConnectError::Io(_)
            | ConnectError::Closed => true,
            ConnectError::Server { code, .. } => sqlstate_is_transient(code),
            ConnectError::Sql(e) => sql_error_is_transient(e),
            ConnectError::Config(_)
            | ConnectError::TlsUnsupported(_)
            | ConnectError::Tls(_)
            | ConnectError::RootCert { .. }
            | ConnectError::PasswordRequired(_)
            | ConnectError::UnsupportedAuth(_)
            | ConnectError::ChannelBindingUnavailable
            | ConnectError::Scram(_)
            | ConnectError::Protocol(_) => false,
        }
    }

    /// The SQLSTATE, when the server reported the error.
    pub fn code(&self) -> Option<&str> {
        match self {
            ConnectError::Server { code, .. } => Some(code),
            ConnectError::Sql(e) => e.code().map(|c| c.code()),
            _ => None,
        }
    }
}

/// Whether an error of an ordinary (tokio-postgres) connection may go away by retrying:
/// the one classification every catalog and set-up query uses.
pub fn sql_error_is_transient(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        Some(code) => sqlstate_is_transient(code.code()),
        None => e.is_closed() || source_is_io(e),
    }
}

fn source_is_io(e: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// The one place SQLSTATEs are sorted into "retry" and "stop".
fn sqlstate_is_transient(code: &str) -> bool {
    matches!(
        code,
        // admin_shutdown, crash_shutdown, cannot_connect_now (starting up / recovery)
        "57P01" | "57P02" | "57P03"
        // idle_session_timeout and query_canceled (e.g. by a failover tool)
        | "57P05" | "57014"
        // serialization failure, deadlock
        | "40001" | "40P01"
        // object_in_use: the slot is active for another PID (a second instance, or the old
        // walsender of our previous connection not gone yet)
        | "55006"
    ) || code.starts_with("08") // connection exceptions
        || code.starts_with("53") // insufficient resources: too many connections, out of memory, disk full
        || code.starts_with("58") // system errors (I/O)
}

/// One result row of a simple query: text values by column index or name.
#[derive(Debug, Clone)]
pub struct SimpleRow {
    columns: Arc<[String]>,
    values: Vec<Option<String>>,
}

impl SimpleRow {
    /// The value of column `idx` (`None` for SQL NULL or no such column).
    pub fn get(&self, idx: usize) -> Option<&str> {
        self.values.get(idx).and_then(|v| v.as_deref())
    }

    /// The value of the column called `name` (`None` for SQL NULL or no such column).
    pub fn get_named(&self, name: &str) -> Option<&str> {
        let idx = self.columns.iter().position(|c| c == name)?;
        self.get(idx)
    }

    /// The column names, in order.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The number of columns.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True if the row has no columns.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// Parses `server_version` ("15.18 (Debian 15.18-1)", "17beta1", "9.6.24") into the
/// `server_version_num` form (150018, 170000, 90624).
pub fn parse_server_version(version: &str) -> Option<u32> {
    let numeric: &str = version
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()?;
    let mut parts = numeric.split('.').map(|p| p.parse::<u32>().ok());
    let major = parts.next()??;
    let minor = parts.next().flatten().unwrap_or(0);
    if major >= 10 {
        major.checked_mul(10_000)?.checked_add(minor)
    } else {
        let patch = parts.next().flatten().unwrap_or(0);
        (major * 10_000)
            .checked_add(minor.checked_mul(100)?)?
            .checked_add(patch)
    }
}

/// A logged-in `replication=database` session, ready for replication commands.
pub struct ReplicationConnection {
    stream: Stream,
    read_buf: BytesMut,
    write_buf: BytesMut,
    parameters: HashMap<String, String>,
    backend_pid: i32,
    secret_key: i32,
}

impl std::fmt::Debug for ReplicationConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationConnection")
            .field("tls", &self.is_tls())
            .field("backend_pid", &self.backend_pid)
            .finish_non_exhaustive()
    }
}

impl ReplicationConnection {
    /// Connects, negotiates TLS, authenticates and waits until the server is ready.
    pub async fn connect(info: &ConnInfo) -> Result<ReplicationConnection, ConnectError> {
        match info.connect_timeout {
            Some(limit) => tokio::time::timeout(limit, Self::connect_inner(info))
                .await
                .map_err(|_| ConnectError::Timeout(limit))?,
            None => Self::connect_inner(info).await,
        }
    }

    async fn connect_inner(info: &ConnInfo) -> Result<ReplicationConnection, ConnectError> {
        let socket = connect_socket(info).await?;
        let (stream, end_point) = negotiate_tls(socket, info).await?;
        let mut conn = ReplicationConnection {
            stream,
            read_buf: BytesMut::with_capacity(8192),
            write_buf: BytesMut::with_capacity(1024),
            parameters: HashMap::new(),
            backend_pid: 0,
            secret_key: 0,
        };
        conn.startup(info, end_point).await?;
        tracing::debug!(
            target_db = %info,
            tls = conn.is_tls(),
            server_version = conn.parameter("server_version").unwrap_or("?"),
            pid = conn.backend_pid,
            "replication connection ready"
        );
        Ok(conn)
    }

    async fn startup(
        &mut self,
        info: &ConnInfo,
        end_point: Option<Vec<u8>>,
    ) -> Result<(), ConnectError> {
        let app = info.application_name.as_deref().unwrap_or("walhook");
        let params = [
            ("user", info.user.as_str()),
            ("database", info.dbname.as_str()),
            ("replication", "database"),
            ("application_name", app),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO, MDY"),
            ("TimeZone", "UTC"),
            ("IntervalStyle", "postgres"),
            ("extra_float_digits", "1"),
            ("bytea_output", "hex"),
        ];
        self.write_buf.clear();
        frontend::startup_message(params, &mut self.write_buf)?;
        self.flush_write_buf().await?;
        self.authenticate(info, end_point).await?;
        loop {
            let frame = self.next_frame().await?;
            let mut b = Body(&frame.body);
            match frame.tag {
                b'S' => self.parameter_status(&frame.body)?,
                b'K' => {
                    self.backend_pid = b.i32()?;
                    self.secret_key = b.i32()?;
                }
                b'N' => log_notice(&frame.body),
                b'E' => return Err(server_error(&frame.body)),
                b'Z' => return Ok(()),
                tag => return Err(unexpected(tag, "during start-up")),
            }
        }
    }

    async fn authenticate(
        &mut self,
        info: &ConnInfo,
        end_point: Option<Vec<u8>>,
    ) -> Result<(), ConnectError> {
        let password = || {
            info.password
                .as_deref()
                .ok_or_else(|| ConnectError::PasswordRequired(info.user.clone()))
        };
        let mut scram: Option<ScramSha256> = None;
        // A server that skips SASL final never proved it knows the password (no mutual auth).
        let mut scram_verified = false;
        let mut bound = false;
        loop {
            let frame = self.next_frame().await?;
            match frame.tag {
                b'R' => {}
                b'E' => return Err(server_error(&frame.body)),
                b'N' => {
                    log_notice(&frame.body);
                    continue;
                }
                tag => return Err(unexpected(tag, "during authentication")),
            }
            let mut b = Body(&frame.body);
            self.write_buf.clear();
            match b.i32()? {
                0 => {
                    if scram.is_some() && !scram_verified {
                        return Err(ConnectError::Protocol(
                            "the server ended SCRAM authentication without its proof".into(),
                        ));
                    }
                    if info.channel_binding == ChannelBinding::Require && !bound {
                        return Err(ConnectError::ChannelBindingUnavailable);
                    }
                    return Ok(());
                }
                3 => frontend::password_message(password()?.as_bytes(), &mut self.write_buf)?,
                5 => {
                    let salt = b.bytes(4)?;
                    let hash = postgres_protocol::authentication::md5_hash(
                        info.user.as_bytes(),
                        password()?.as_bytes(),
                        [salt[0], salt[1], salt[2], salt[3]],
                    );
                    frontend::password_message(hash.as_bytes(), &mut self.write_buf)?;
                }
                10 => {
                    let mut mechanisms = Vec::new();
                    loop {
                        match b.cstr()? {
                            "" => break,
                            m => mechanisms.push(m),
                        }
                    }
                    let plus = mechanisms.contains(&"SCRAM-SHA-256-PLUS");
                    let (mechanism, binding) = match (&end_point, info.channel_binding) {
                        (Some(hash), ChannelBinding::Prefer | ChannelBinding::Require) if plus => (
                            "SCRAM-SHA-256-PLUS",
                            sasl::ChannelBinding::tls_server_end_point(hash.clone()),
                        ),
                        (_, ChannelBinding::Require) => {
                            return Err(ConnectError::ChannelBindingUnavailable);
                        }
                        _ if mechanisms.contains(&"SCRAM-SHA-256") => (
                            "SCRAM-SHA-256",
                            // Over TLS without binding say "n", never "y" (see module docs).
                            if self.is_tls() {
                                sasl::ChannelBinding::unsupported()
                            } else {
                                sasl::ChannelBinding::unrequested()
                            },
                        ),
                        _ => {
                            return Err(ConnectError::UnsupportedAuth(format!(
                                "SASL {}",
                                mechanisms.join(", ")
                            )));
                        }
                    };
                    bound = mechanism == "SCRAM-SHA-256-PLUS";
                    let client = ScramSha256::new(password()?.as_bytes(), binding);
                    frontend::sasl_initial_response(
                        mechanism,
                        client.message(),
                        &mut self.write_buf,
                    )?;
                    scram = Some(client);
                }
                11 => {
                    let client = scram.as_mut().ok_or_else(|| {
                        ConnectError::Protocol("SASL continue before SASL start".into())
                    })?;
                    client
                        .update(b.rest())
                        .map_err(|e| ConnectError::Scram(e.to_string()))?;
                    frontend::sasl_response(client.message(), &mut self.write_buf)?;
                }
                12 => {
                    let client = scram.as_mut().ok_or_else(|| {
                        ConnectError::Protocol("SASL final before SASL start".into())
                    })?;
                    client
                        .finish(b.rest())
                        .map_err(|e| ConnectError::Scram(e.to_string()))?;
                    scram_verified = true;
                    continue;
                }
                2 => return Err(ConnectError::UnsupportedAuth("Kerberos V5".into())),
                6 => return Err(ConnectError::UnsupportedAuth("SCM credentials".into())),
                7 | 8 => return Err(ConnectError::UnsupportedAuth("GSSAPI".into())),
                9 => return Err(ConnectError::UnsupportedAuth("SSPI".into())),
                other => return Err(ConnectError::UnsupportedAuth(format!("code {other}"))),
            }
            self.flush_write_buf().await?;
        }
    }

    fn parameter_status(&mut self, body: &[u8]) -> Result<(), ConnectError> {
        let mut b = Body(body);
        let name = b.cstr()?.to_string();
        let value = b.cstr()?.to_string();
        tracing::trace!(%name, %value, "parameter status");
        self.parameters.insert(name, value);
        Ok(())
    }

    async fn next_frame(&mut self) -> Result<Frame, ConnectError> {
        read_frame(&mut self.stream, &mut self.read_buf)
            .await?
            .ok_or(ConnectError::Closed)
    }

    async fn flush_write_buf(&mut self) -> Result<(), ConnectError> {
        self.stream.write_all(&self.write_buf).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// A run-time parameter the server reported (`server_version`, `integer_datetimes`, ...).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters.get(name).map(String::as_str)
    }

    /// The server version as a number, e.g. 150018 for 15.18.
    pub fn server_version_num(&self) -> Option<u32> {
        self.parameter("server_version")
            .and_then(parse_server_version)
    }

    /// The walsender's process ID (for `pg_terminate_backend` and logs).
    pub fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    /// A handle that can cancel this session's running command from elsewhere (e.g. a
    /// `CREATE_REPLICATION_SLOT` waiting for old transactions), like libpq's `PQcancel`.
    pub fn cancel_handle(&self, info: &ConnInfo) -> CancelHandle {
        CancelHandle {
            info: info.clone(),
            process_id: self.backend_pid,
            secret_key: self.secret_key,
        }
    }

    /// True if the session is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::Tls(_))
    }

    /// Runs one simple-protocol query (e.g. `IDENTIFY_SYSTEM`, `CREATE_REPLICATION_SLOT`,
    /// `SHOW`) and returns the rows of all its result sets.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<SimpleRow>, ConnectError> {
        self.write_buf.clear();
        frontend::query(sql, &mut self.write_buf)?;
        self.flush_write_buf().await?;
        let mut rows = Vec::new();
        let mut columns: Arc<[String]> = Arc::from(Vec::new());
        let mut error = None;
        loop {
            let frame = self.next_frame().await?;
            match frame.tag {
                b'T' => columns = row_description(&frame.body)?,
                b'D' => rows.push(data_row(&frame.body, &columns)?),
                b'C' | b'I' => {}
                b'E' => error = Some(server_error(&frame.body)),
                b'N' => log_notice(&frame.body),
                b'S' => self.parameter_status(&frame.body)?,
                b'Z' => {
                    return match error {
                        Some(e) => Err(e),
                        None => Ok(rows),
                    };
                }
                b'W' | b'H' | b'G' => {
                    return Err(ConnectError::Protocol(
                        "the query started a COPY; use start_replication for START_REPLICATION"
                            .into(),
                    ));
                }
                tag => return Err(unexpected(tag, "in a query result")),
            }
        }
    }

    /// Sends `START_REPLICATION ...`, waits for CopyBoth mode and splits the session into a
    /// reader of CopyData payloads and a writer for status updates.
    pub async fn start_replication(
        mut self,
        sql: &str,
    ) -> Result<(ReplicationReader, ReplicationWriter), ConnectError> {
        self.write_buf.clear();
        frontend::query(sql, &mut self.write_buf)?;
        self.flush_write_buf().await?;
        loop {
            let frame = self.next_frame().await?;
            match frame.tag {
                b'W' => break,
                b'E' => return Err(server_error(&frame.body)),
                b'N' => log_notice(&frame.body),
                b'S' => self.parameter_status(&frame.body)?,
                // A command that returned rows instead (e.g. not a START_REPLICATION at all).
                b'T' | b'D' | b'C' | b'I' | b'Z' => {
                    return Err(ConnectError::Protocol(format!(
                        "`{sql}` did not start streaming (no CopyBothResponse)"
                    )));
                }
                tag => return Err(unexpected(tag, "while starting replication")),
            }
        }
        let (rd, wr) = tokio::io::split(self.stream);
        Ok((
            ReplicationReader {
                rd,
                buf: self.read_buf,
                done: false,
            },
            ReplicationWriter {
                wr,
                buf: self.write_buf,
            },
        ))
    }

    /// Ends the session politely (Terminate), so the walsender exits at once.
    pub async fn close(mut self) -> Result<(), ConnectError> {
        self.write_buf.clear();
        frontend::terminate(&mut self.write_buf);
        self.flush_write_buf().await?;
        self.stream.shutdown().await?;
        Ok(())
    }
}

/// Cancels the command a [`ReplicationConnection`] is running (a CancelRequest on a new
/// connection, negotiated with the same sslmode).
#[derive(Clone)]
pub struct CancelHandle {
    info: ConnInfo,
    process_id: i32,
    secret_key: i32,
}

impl std::fmt::Debug for CancelHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelHandle")
            .field("process_id", &self.process_id)
            .finish_non_exhaustive()
    }
}

impl CancelHandle {
    /// Asks the server to cancel the running command; it may already have finished.
    pub async fn cancel(&self) -> Result<(), ConnectError> {
        let socket = connect_socket(&self.info).await?;
        let (mut stream, _) = negotiate_tls(socket, &self.info).await?;
        let mut buf = BytesMut::with_capacity(16);
        frontend::cancel_request(self.process_id, self.secret_key, &mut buf);
        stream.write_all(&buf).await?;
        stream.flush().await?;
        // The server answers nothing and closes; waiting for that makes the cancel visible
        // before we return.
        let mut sink = [0u8; 64];
        while stream.read(&mut sink).await? > 0 {}
        Ok(())
    }
}

fn row_description(body: &[u8]) -> Result<Arc<[String]>, ConnectError> {
    let mut b = Body(body);
    let n = b.i16()?;
    let mut names = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    for _ in 0..n {
        names.push(b.cstr()?.to_string());
        // table oid, column number, type oid, type size, type modifier, format
        b.bytes(4 + 2 + 4 + 2 + 4 + 2)?;
    }
    Ok(names.into())
}

fn data_row(body: &[u8], columns: &Arc<[String]>) -> Result<SimpleRow, ConnectError> {
    let mut b = Body(body);
    let n = b.i16()?;
    let mut values = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    for _ in 0..n {
        let len = b.i32()?;
        values.push(match usize::try_from(len) {
            Err(_) => None, // -1 is NULL
            Ok(len) => Some(
                std::str::from_utf8(b.bytes(len)?)
                    .map_err(|_| ConnectError::Protocol("column value is not UTF-8".into()))?
                    .to_string(),
            ),
        });
    }
    Ok(SimpleRow {
        columns: columns.clone(),
        values,
    })
}

/// A connected socket, before TLS.
pub(super) enum Socket {
    /// TCP to a host and port.
    Tcp(TcpStream),
    /// A Unix-domain socket (`host` is a directory).
    Unix(tokio::net::UnixStream),
}

/// The Unix-domain socket when `host` is a directory, else TCP.
async fn connect_socket(info: &ConnInfo) -> Result<Socket, ConnectError> {
    match info.socket_path() {
        Some(path) => tokio::net::UnixStream::connect(&path)
            .await
            .map(Socket::Unix)
            .map_err(|source| ConnectError::ConnectSocket { path, source }),
        None => tcp_connect(&info.host, info.port).await.map(Socket::Tcp),
    }
}

/// Connects to every address of `host` in turn; TCP_NODELAY and keepalives on.
async fn tcp_connect(host: &str, port: u16) -> Result<TcpStream, ConnectError> {
    let fail = |source| ConnectError::Connect {
        host: host.to_string(),
        port,
        source,
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(fail)?
        .collect();
    let mut last = io::Error::new(io::ErrorKind::NotFound, "host name resolved to no address");
    for addr in addrs {
        let attempt = async {
            let socket = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            socket.set_keepalive(true)?;
            let stream = socket.connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok::<_, io::Error>(stream)
        };
        match attempt.await {
            Ok(stream) => return Ok(stream),
            Err(e) => {
                tracing::debug!(%addr, error = %e, "connect failed");
                last = e;
            }
        }
    }
    Err(fail(last))
}

/// The receiving half of a streaming session: CopyData payloads from the walsender.
pub struct ReplicationReader {
    rd: tokio::io::ReadHalf<Stream>,
    buf: BytesMut,
    done: bool,
}

impl std::fmt::Debug for ReplicationReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationReader")
            .field("buffered", &self.buf.len())
            .field("done", &self.done)
            .finish()
    }
}

impl ReplicationReader {
    /// The next CopyData payload (see [`super::protocol::parse`]); `None` once the server
    /// has ended the copy or closed the connection. Cancel-safe.
    pub async fn recv(&mut self) -> Result<Option<Bytes>, ConnectError> {
        loop {
            if self.done {
                return Ok(None);
            }
            let Some(frame) = read_frame(&mut self.rd, &mut self.buf).await? else {
                self.done = true;
                return Ok(None);
            };
            match frame.tag {
                b'd' => return Ok(Some(frame.body)),
                // CopyDone; or CommandComplete without one: a walsender that shuts down
                // (pg_ctl stop -m fast or smart) ends the stream that way once walhook has
                // confirmed what it sent. Both are a clean end of the stream.
                b'c' | b'C' => {
                    self.done = true;
                    return Ok(None);
                }
                b'N' => log_notice(&frame.body),
                b'S' => tracing::debug!("parameter status during replication"),
                b'E' => {
                    self.done = true;
                    return Err(server_error(&frame.body));
                }
                tag => return Err(unexpected(tag, "during replication")),
            }
        }
    }
}

/// The sending half of a streaming session: standby status updates and CopyDone.
pub struct ReplicationWriter {
    wr: tokio::io::WriteHalf<Stream>,
    buf: BytesMut,
}

impl std::fmt::Debug for ReplicationWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationWriter").finish_non_exhaustive()
    }
}

impl ReplicationWriter {
    /// Sends one CopyData message (e.g. [`super::protocol::standby_status_update`]) and
    /// flushes. Not cancel-safe: a cancelled send leaves the stream mid-message.
    pub async fn send_copy_data(&mut self, payload: &[u8]) -> Result<(), ConnectError> {
        let len = u32::try_from(payload.len() + 4)
            .ok()
            .filter(|&l| l as usize <= MAX_MESSAGE_LEN)
            .ok_or_else(|| ConnectError::Protocol("CopyData payload too large".into()))?;
        self.buf.clear();
        self.buf.put_u8(b'd');
        self.buf.put_u32(len);
        self.buf.extend_from_slice(payload);
        self.flush_buf().await
    }

    /// Ends the copy from our side; the server answers with its own CopyDone.
    pub async fn send_copy_done(&mut self) -> Result<(), ConnectError> {
        self.buf.clear();
        frontend::copy_done(&mut self.buf);
        self.flush_buf().await
    }

    async fn flush_buf(&mut self) -> Result<(), ConnectError> {
        self.wr.write_all(&self.buf).await?;
        self.wr.flush().await?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)] // tests may panic on bad fixtures
mod tests {
    use super::*;
    use crate::source::frame::take_frame;

    #[test]
    fn transient_or_permanent() {
        let server = |code: &str| ConnectError::Server {
            severity: "FATAL".into(),
            code: code.into(),
            message: String::new(),
            detail: None,
            hint: None,
        };
        for code in ["57P01", "57P02", "57P03", "08006", "53300", "55006"] {
            assert!(server(code).is_transient(), "{code}");
        }
        for code in ["28P01", "28000", "42704", "55000", "42501", "3D000"] {
            assert!(!server(code).is_transient(), "{code}");
        }
        assert!(ConnectError::Io(io::Error::from(io::ErrorKind::ConnectionReset)).is_transient());
        assert!(!ConnectError::PasswordRequired("u".into()).is_transient());
        assert!(!ConnectError::Tls("bad cert".into()).is_transient());
    }

    #[test]
    fn server_versions() {
        assert_eq!(
            parse_server_version("15.18 (Debian 15.18-1.pgdg120+1)"),
            Some(150018)
        );
        assert_eq!(parse_server_version("17beta1"), Some(170000));
        assert_eq!(parse_server_version("16.0"), Some(160000));
        assert_eq!(parse_server_version("18devel"), Some(180000));
        assert_eq!(parse_server_version("9.6.24"), Some(90624));
        assert_eq!(parse_server_version("13.2"), Some(130002));
        assert_eq!(parse_server_version("garbage"), None);
        assert_eq!(parse_server_version(""), None);
        assert_eq!(
            parse_server_version("9.4294967295.1"),
            None,
            "no overflow panic"
        );
        assert_eq!(parse_server_version("4294967295"), None);
    }

    #[test]
    fn data_rows_with_nulls_and_bad_lengths() {
        let cols: Arc<[String]> = vec!["a".to_string(), "b".to_string()].into();
        let mut body = vec![0, 2];
        body.extend(2i32.to_be_bytes());
        body.extend(b"hi");
        body.extend((-1i32).to_be_bytes());
        let row = data_row(&body, &cols).expect("valid");
        assert_eq!(
            (row.get(0), row.get_named("b"), row.get(5)),
            (Some("hi"), None, None)
        );
        let mut bad = vec![0, 1];
        bad.extend(100i32.to_be_bytes());
        assert!(data_row(&bad, &cols).is_err());
    }

    proptest::proptest! {
        #[test]
        fn server_bytes_never_panic(wire in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let mut buf = BytesMut::from(wire.as_slice());
            while let Ok(Some(frame)) = take_frame(&mut buf) {
                let _ = server_error(&frame.body);
                let _ = row_description(&frame.body);
                let cols: Arc<[String]> = vec!["a".to_string()].into();
                let _ = data_row(&frame.body, &cols);
            }
            let _ = server_error(&wire);
            let _ = row_description(&wire);
        }
    }
}
