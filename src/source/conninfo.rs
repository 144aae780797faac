//! Connection settings: a libpq-style connection string, the TLS policy it implies, and an
//! ordinary (non-replication) tokio-postgres client built from the same settings.
//!
//! Both libpq forms are accepted: a URL (`postgres://user:pw@host:5432/db?sslmode=require`,
//! percent-decoded, IPv6 hosts in brackets) and key/value pairs (`host=db user='a b'`, single
//! quotes with `\'` and `\\` escapes). Anything the string leaves out falls back to the
//! `PG*` environment variables, then to libpq's defaults. The environment is passed in as a
//! function so parsing stays pure and testable.
//!
//! TLS follows libpq's `sslmode` table: `prefer` and `require` encrypt without checking the
//! certificate (but `require` with an `sslrootcert` checks the chain, as libpq does),
//! `verify-ca` checks the chain, `verify-full` the chain and the host name. A certificate that
//! is byte-for-byte one of the `sslrootcert` certificates is trusted as is: self-signed server
//! certificates are usually CA certificates, which webpki refuses as end-entity certificates.
//!
//! The password is never shown by `Display` or `Debug`.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::connection::ConnectError;

/// How hard to insist on TLS, with libpq's meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Plain TCP only.
    Disable,
    /// TLS if the server offers it, any certificate; plain otherwise.
    #[default]
    Prefer,
    /// TLS, any certificate (unless `sslrootcert` is set: then as `VerifyCa`).
    Require,
    /// TLS, certificate chain checked against `sslrootcert` (or the webpki roots).
    VerifyCa,
    /// TLS, chain and host name checked.
    VerifyFull,
}

impl SslMode {
    /// The libpq spelling (`verify-full`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SslMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "disable" => Ok(SslMode::Disable),
            // libpq's `allow` means "plain first, TLS if the server insists"; prefer is the
            // closest behaviour that never silently loses encryption the server offers.
            "allow" | "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            _ => Err("expected disable, prefer, require, verify-ca or verify-full".into()),
        }
    }
}

/// Whether SCRAM binds the login to the TLS channel (`SCRAM-SHA-256-PLUS`), as libpq's
/// `channel_binding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChannelBinding {
    /// Never use channel binding.
    Disable,
    /// Use it when TLS is on and the server offers it.
    #[default]
    Prefer,
    /// Fail unless the login is channel-bound.
    Require,
}

impl FromStr for ChannelBinding {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "disable" => Ok(ChannelBinding::Disable),
            "prefer" => Ok(ChannelBinding::Prefer),
            "require" => Ok(ChannelBinding::Require),
            _ => Err("expected disable, prefer or require".into()),
        }
    }
}

/// A connection string that could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnInfoError {
    /// A key libpq-style strings may have, but walhook does not know.
    #[error("unknown connection parameter `{0}`")]
    UnknownKey(String),
    /// A known key with a value it cannot take.
    #[error("invalid {key} `{value}`: {reason}")]
    InvalidValue {
        /// The parameter (or environment variable) name.
        key: String,
        /// The offending value.
        value: String,
        /// What was expected.
        reason: String,
    },
    /// Several comma-separated hosts or ports.
    #[error("several hosts or ports (`{0}`) are not supported: give exactly one host")]
    MultipleHosts(String),
    /// A host that names a Unix-domain socket directory.
    #[error("host `{0}` is a Unix-domain socket directory; walhook connects over TCP only")]
    UnixSocket(String),
    /// The string is not well-formed.
    #[error("malformed connection string: {0}")]
    Syntax(String),
}

/// Everything needed to open a connection to one Postgres server.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Role to log in as.
    pub user: String,
    /// Password, if the server asks for one.
    pub password: Option<String>,
    /// Database name.
    pub dbname: String,
    /// TLS policy.
    pub sslmode: SslMode,
    /// PEM file of trusted certificates (`system` = the webpki roots).
    pub sslrootcert: Option<PathBuf>,
    /// Reported in `pg_stat_activity` / `pg_stat_replication`.
    pub application_name: Option<String>,
    /// Limit on TCP connect + TLS + authentication; `None` waits forever.
    pub connect_timeout: Option<Duration>,
    /// SCRAM channel binding policy.
    pub channel_binding: ChannelBinding,
}

/// What the string said, before environment fallbacks and defaults.
#[derive(Default)]
struct Given {
    host: Option<String>,
    port: Option<String>,
    user: Option<String>,
    password: Option<String>,
    dbname: Option<String>,
    sslmode: Option<String>,
    sslrootcert: Option<String>,
    application_name: Option<String>,
    connect_timeout: Option<String>,
    channel_binding: Option<String>,
}

impl Given {
    fn set(&mut self, key: &str, value: String) -> Result<(), ConnInfoError> {
        let slot = match key {
            "host" => &mut self.host,
            "port" => &mut self.port,
            "user" => &mut self.user,
            "password" => &mut self.password,
            "dbname" => &mut self.dbname,
            "sslmode" => &mut self.sslmode,
            "sslrootcert" => &mut self.sslrootcert,
            "application_name" => &mut self.application_name,
            "connect_timeout" => &mut self.connect_timeout,
            "channel_binding" => &mut self.channel_binding,
            // JDBC-style `ssl=true`, which libpq also accepts in URLs.
            "ssl" if value == "true" => {
                self.sslmode.get_or_insert_with(|| "require".into());
                return Ok(());
            }
            _ => return Err(ConnInfoError::UnknownKey(key.to_string())),
        };
        *slot = Some(value);
        Ok(())
    }
}

impl ConnInfo {
    /// Parses a connection string, falling back to the process's `PG*` environment.
    pub fn parse(s: &str) -> Result<ConnInfo, ConnInfoError> {
        ConnInfo::parse_with_env(s, &|name| std::env::var(name).ok())
    }

    /// Parses a connection string, with `env` standing in for the environment.
    pub fn parse_with_env(
        s: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ConnInfo, ConnInfoError> {
        let s = s.trim();
        let given = if let Some(rest) = s
            .strip_prefix("postgresql://")
            .or_else(|| s.strip_prefix("postgres://"))
        {
            parse_url(rest)?
        } else {
            parse_key_values(s)?
        };
        ConnInfo::resolve(given, env)
    }

    fn resolve(g: Given, env: &dyn Fn(&str) -> Option<String>) -> Result<ConnInfo, ConnInfoError> {
        // Each value: the string's, else the environment's (named, for error messages).
        let pick = |given: Option<String>, key: &str, var: &str| -> Option<(String, String)> {
            // An empty value means "not set", as in libpq (`host=''` is the default host).
            let given = given.filter(|v| !v.is_empty() || key == "password");
            given.map(|v| (key.to_string(), v)).or_else(|| {
                env(var)
                    .filter(|v| !v.is_empty())
                    .map(|v| (var.to_string(), v))
            })
        };
        let host = match pick(g.host, "host", "PGHOST") {
            Some((_, h)) => check_host(h)?,
            None => "localhost".to_string(),
        };
        let port = match pick(g.port, "port", "PGPORT") {
            Some((key, p)) => parse_port(&key, &p)?,
            None => 5432,
        };
        let user = pick(g.user, "user", "PGUSER")
            .map(|(_, u)| u)
            .or_else(|| env("USER").filter(|u| !u.is_empty()))
            .unwrap_or_else(|| "postgres".to_string());
        let password = pick(g.password, "password", "PGPASSWORD").map(|(_, p)| p);
        let dbname = pick(g.dbname, "dbname", "PGDATABASE")
            .map(|(_, d)| d)
            .unwrap_or_else(|| user.clone());
        let sslmode = match pick(g.sslmode, "sslmode", "PGSSLMODE") {
            Some((key, v)) => v.parse().map_err(|reason| invalid(&key, &v, reason))?,
            None => SslMode::Prefer,
        };
        let sslrootcert =
            pick(g.sslrootcert, "sslrootcert", "PGSSLROOTCERT").map(|(_, p)| PathBuf::from(p));
        let application_name = pick(g.application_name, "application_name", "PGAPPNAME")
            .map(|(_, a)| a)
            .filter(|a| !a.is_empty());
        let connect_timeout = match pick(g.connect_timeout, "connect_timeout", "PGCONNECT_TIMEOUT")
        {
            Some((key, v)) => parse_timeout(&key, &v)?,
            None => None,
        };
        let channel_binding = match pick(g.channel_binding, "channel_binding", "PGCHANNELBINDING") {
            Some((key, v)) => v.parse().map_err(|reason| invalid(&key, &v, reason))?,
            None => ChannelBinding::Prefer,
        };
        Ok(ConnInfo {
            host,
            port,
            user,
            password,
            dbname,
            sslmode,
            sslrootcert,
            application_name,
            connect_timeout,
            channel_binding,
        })
    }

    /// The same settings as a tokio-postgres config (TLS is supplied separately).
    pub fn tokio_postgres_config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name(self.application_name.as_deref().unwrap_or("walhook"))
            .ssl_mode(match self.sslmode {
                SslMode::Disable => tokio_postgres::config::SslMode::Disable,
                SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
                // The certificate checks themselves live in our rustls verifier.
                SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                    tokio_postgres::config::SslMode::Require
                }
            })
            .channel_binding(match self.channel_binding {
                ChannelBinding::Disable => tokio_postgres::config::ChannelBinding::Disable,
                ChannelBinding::Prefer => tokio_postgres::config::ChannelBinding::Prefer,
                ChannelBinding::Require => tokio_postgres::config::ChannelBinding::Require,
            });
        if let Some(pw) = &self.password {
            c.password(pw);
        }
        if let Some(t) = self.connect_timeout {
            c.connect_timeout(t);
        }
        c
    }
}

fn invalid(key: &str, value: &str, reason: impl Into<String>) -> ConnInfoError {
    ConnInfoError::InvalidValue {
        key: key.to_string(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

fn check_host(host: String) -> Result<String, ConnInfoError> {
    if host.contains(',') {
        Err(ConnInfoError::MultipleHosts(host))
    } else if host.starts_with('/') || host.starts_with('@') {
        Err(ConnInfoError::UnixSocket(host))
    } else {
        Ok(host)
    }
}

fn parse_port(key: &str, value: &str) -> Result<u16, ConnInfoError> {
    if value.contains(',') {
        return Err(ConnInfoError::MultipleHosts(value.to_string()));
    }
    match value.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(invalid(key, value, "expected a TCP port number (1-65535)")),
    }
}

fn parse_timeout(key: &str, value: &str) -> Result<Option<Duration>, ConnInfoError> {
    match value.trim().parse::<u64>() {
        Ok(0) => Ok(None),
        // libpq treats 1 second as 2: the granularity of its timer would make 1 flaky.
        Ok(n) => Ok(Some(Duration::from_secs(n.max(2)))),
        Err(_) => Err(invalid(key, value, "expected whole seconds")),
    }
}

/// `user:pw@host:port/db?k=v` (the part after the scheme).
fn parse_url(rest: &str) -> Result<Given, ConnInfoError> {
    let mut g = Given::default();
    let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = main.split_once('/').unwrap_or((main, ""));
    let hostport = match authority.rsplit_once('@') {
        Some((userinfo, hostport)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                g.user = Some(percent_decode(user)?);
            }
            if let Some(p) = password {
                g.password = Some(percent_decode(p)?);
            }
            hostport
        }
        None => authority,
    };
    if hostport.contains(',') {
        return Err(ConnInfoError::MultipleHosts(hostport.to_string()));
    }
    let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| ConnInfoError::Syntax("IPv6 host is missing its closing `]`".into()))?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| {
                ConnInfoError::Syntax(format!("unexpected `{p}` after the IPv6 host"))
            })?),
        };
        (host, port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if !host.is_empty() {
        g.host = Some(percent_decode(host)?);
    }
    if let Some(p) = port.filter(|p| !p.is_empty()) {
        g.port = Some(percent_decode(p)?);
    }
    if !path.is_empty() {
        g.dbname = Some(percent_decode(path)?);
    }
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| ConnInfoError::Syntax(format!("query parameter `{pair}` has no `=`")))?;
        g.set(&percent_decode(k)?, percent_decode(v)?)?;
    }
    Ok(g)
}

fn percent_decode(s: &str) -> Result<String, ConnInfoError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| ConnInfoError::Syntax("invalid percent-encoding in URL".into()))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| ConnInfoError::Syntax("percent-encoding decodes to invalid UTF-8".into()))
}

/// Encodes everything but unreserved URL characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `key=value key2 = 'quoted \' value'`.
fn parse_key_values(s: &str) -> Result<Given, ConnInfoError> {
    let mut g = Given::default();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(g);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(ConnInfoError::Syntax(format!(
                "missing `=` after `{key}` (expected key=value pairs or a postgres:// URL)"
            )));
        }
        if key.is_empty() {
            return Err(ConnInfoError::Syntax("`=` without a key".into()));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => break,
                    },
                    Some(c) => value.push(c),
                    None => {
                        return Err(ConnInfoError::Syntax(format!(
                            "unterminated quoted value for `{key}`"
                        )));
                    }
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    if let Some(escaped) = chars.next() {
                        value.push(escaped);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        g.set(&key, value)?;
    }
}

impl fmt::Display for ConnInfo {
    /// A URL without the password, for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            percent_encode(&self.host)
        };
        write!(
            f,
            "postgres://{}@{host}:{}/{}?sslmode={}",
            percent_encode(&self.user),
            self.port,
            percent_encode(&self.dbname),
            self.sslmode
        )
    }
}

impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnInfo")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "********"))
            .field("dbname", &self.dbname)
            .field("sslmode", &self.sslmode)
            .field("sslrootcert", &self.sslrootcert)
            .field("application_name", &self.application_name)
            .field("connect_timeout", &self.connect_timeout)
            .field("channel_binding", &self.channel_binding)
            .finish()
    }
}

// ---------------------------------------------------------------------------------------
// TLS policy

/// The rustls configuration `info.sslmode` asks for; `None` for `disable`.
pub(crate) fn tls_config(info: &ConnInfo) -> Result<Option<Arc<ClientConfig>>, ConnectError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (roots, check_name) = match (info.sslmode, &info.sslrootcert) {
        (SslMode::Disable, _) => return Ok(None),
        (SslMode::Prefer, _) | (SslMode::Require, None) => (None, false),
        (SslMode::Require | SslMode::VerifyCa, Some(path)) => (Some(load_roots(path)?), false),
        (SslMode::VerifyCa, None) => (Some(webpki_roots()), false),
        (SslMode::VerifyFull, Some(path)) => (Some(load_roots(path)?), true),
        (SslMode::VerifyFull, None) => (Some(webpki_roots()), true),
    };
    let verifier = PgVerifier {
        roots,
        check_name,
        provider: provider.clone(),
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectError::Tls(format!("TLS set-up: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    // PG 17+ checks ALPN when the client sends it; older servers ignore it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(Some(Arc::new(config)))
}

/// The server name rustls gets: checked under verify-full, only SNI otherwise.
pub(crate) fn server_name(info: &ConnInfo) -> Result<ServerName<'static>, ConnectError> {
    match ServerName::try_from(info.host.clone()) {
        Ok(name) => Ok(name),
        Err(_) if info.sslmode != SslMode::VerifyFull => Ok(ServerName::DnsName(
            rustls::pki_types::DnsName::try_from("localhost")
                .map_err(|e| ConnectError::Tls(format!("TLS server name: {e}")))?,
        )),
        Err(e) => Err(ConnectError::Tls(format!(
            "host `{}` cannot be checked against a certificate: {e}",
            info.host
        ))),
    }
}

struct Roots {
    store: RootCertStore,
    /// The trusted certificates themselves, for self-signed servers.
    pinned: Vec<CertificateDer<'static>>,
}

fn webpki_roots() -> Roots {
    Roots {
        store: RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
        pinned: Vec::new(),
    }
}

fn load_roots(path: &std::path::Path) -> Result<Roots, ConnectError> {
    if path.as_os_str() == "system" {
        return Ok(webpki_roots());
    }
    let fail = |reason: String| ConnectError::RootCert {
        path: path.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(fail("contains no PEM certificates".into()));
    }
    let mut store = RootCertStore::empty();
    for cert in &certs {
        store
            .add(cert.clone())
            .map_err(|e| fail(format!("unusable certificate: {e}")))?;
    }
    Ok(Roots {
        store,
        pinned: certs,
    })
}

/// libpq's certificate policy on top of webpki.
struct PgVerifier {
    /// `None`: accept any certificate (prefer / require): encryption without authentication.
    roots: Option<Roots>,
    check_name: bool,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for PgVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgVerifier")
            .field("verify_chain", &self.roots.is_some())
            .field("check_name", &self.check_name)
            .finish()
    }
}

impl ServerCertVerifier for PgVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(roots) = &self.roots else {
            return Ok(ServerCertVerified::assertion());
        };
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        if !roots
            .pinned
            .iter()
            .any(|p| p.as_ref() == end_entity.as_ref())
        {
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                &roots.store,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
        }
        if self.check_name {
            rustls::client::verify_server_name(&cert, server_name)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The `tls-server-end-point` channel binding data (RFC 5929): a hash of the server
/// certificate with its signature's hash, SHA-256 for MD5/SHA-1. `None` if the algorithm is
/// one we cannot map (the login then falls back to plain SCRAM).
pub(crate) fn tls_server_end_point(cert_der: &[u8]) -> Option<Vec<u8>> {
    use sha2::Digest;
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signature }
    let (_, cert, _) = der_tlv(cert_der, 0x30)?;
    let (_, _tbs, rest) = der_tlv(cert, 0x30)?;
    let (_, alg, _) = der_tlv(rest, 0x30)?;
    let (_, oid, _) = der_tlv(alg, 0x06)?;
    const RSA: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01];
    const ECDSA_SHA2: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03];
    const ECDSA_SHA1: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x01];
    let bits = match oid {
        [p @ .., 4 | 5 | 11] if p == RSA => 256,
        [p @ .., 12] if p == RSA => 384,
        [p @ .., 13] if p == RSA => 512,
        o if o == ECDSA_SHA1 => 256,
        [p @ .., 2] if p == ECDSA_SHA2 => 256,
        [p @ .., 3] if p == ECDSA_SHA2 => 384,
        [p @ .., 4] if p == ECDSA_SHA2 => 512,
        _ => return None,
    };
    Some(match bits {
        256 => sha2::Sha256::digest(cert_der).to_vec(),
        384 => sha2::Sha384::digest(cert_der).to_vec(),
        _ => sha2::Sha512::digest(cert_der).to_vec(),
    })
}

/// One DER element with the expected tag: (tag, contents, the bytes after it).
fn der_tlv(buf: &[u8], tag: u8) -> Option<(u8, &[u8], &[u8])> {
    let (&t, rest) = buf.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((t, &rest[..len], &rest[len..]))
}

// ---------------------------------------------------------------------------------------
// Ordinary SQL connections

/// Opens an ordinary tokio-postgres connection with the same settings and TLS policy, and
/// spawns its connection task (errors are logged).
pub async fn connect_sql(info: &ConnInfo) -> Result<tokio_postgres::Client, ConnectError> {
    let config = info.tokio_postgres_config();
    let client = match tls_config(info)? {
        None => {
            let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
            spawn_connection(conn, info);
            client
        }
        Some(tls) => {
            let make = MakeRustls {
                config: tls,
                server_name: server_name(info)?,
            };
            let (client, conn) = config.connect(make).await?;
            spawn_connection(conn, info);
            client
        }
    };
    Ok(client)
}

fn spawn_connection<F>(conn: F, info: &ConnInfo)
where
    F: Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
{
    let target = info.to_string();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::error!(target_db = %target, error = %e, "SQL connection failed");
        }
    });
}

/// tokio-postgres's TLS hook, backed by our rustls configuration.
#[derive(Clone)]
struct MakeRustls {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

impl<S> tokio_postgres::tls::MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = MakeRustls;
    type Error = io::Error;

    fn make_tls_connect(&mut self, _domain: &str) -> Result<MakeRustls, io::Error> {
        Ok(self.clone())
    }
}

impl<S> tokio_postgres::tls::TlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let tls = tokio_rustls::TlsConnector::from(self.config)
                .connect(self.server_name, stream)
                .await?;
            Ok(RustlsStream(tls))
        })
    }
}

/// A rustls stream that reports its channel binding to tokio-postgres.
struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        let cert = self
            .0
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first());
        match cert.and_then(|c| tls_server_end_point(c.as_ref())) {
            Some(hash) => tokio_postgres::tls::ChannelBinding::tls_server_end_point(hash),
            None => tokio_postgres::tls::ChannelBinding::none(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)] // tests may panic on bad fixtures
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn parse(s: &str) -> Result<ConnInfo, ConnInfoError> {
        ConnInfo::parse_with_env(s, &env_of(&[]))
    }

    #[test]
    fn url_with_everything() {
        let c = parse(
            "postgresql://al%40ice:p%3Ass%2Fw@db.example.com:6543/my%20db?sslmode=verify-full\
             &sslrootcert=/etc/ca.pem&application_name=hooks&connect_timeout=7",
        )
        .expect("parses");
        assert_eq!(c.user, "al@ice");
        assert_eq!(c.password.as_deref(), Some("p:ss/w"));
        assert_eq!(c.host, "db.example.com");
        assert_eq!(c.port, 6543);
        assert_eq!(c.dbname, "my db");
        assert_eq!(c.sslmode, SslMode::VerifyFull);
        assert_eq!(c.sslrootcert, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(c.application_name.as_deref(), Some("hooks"));
        assert_eq!(c.connect_timeout, Some(Duration::from_secs(7)));
    }

    #[test]
    fn url_defaults_and_ipv6() {
        let c = parse("postgres://[::1]:5433").expect("parses");
        assert_eq!((c.host.as_str(), c.port), ("::1", 5433));
        assert_eq!(c.user, "postgres");
        assert_eq!(c.dbname, "postgres");
        assert_eq!(c.sslmode, SslMode::Prefer);
        let c = parse("postgres://bob@[2001:db8::1]/app").expect("parses");
        assert_eq!((c.host.as_str(), c.port), ("2001:db8::1", 5432));
        assert_eq!((c.user.as_str(), c.dbname.as_str()), ("bob", "app"));
        assert_eq!(
            c.to_string(),
            "postgres://bob@[2001:db8::1]:5432/app?sslmode=prefer"
        );
        let c = parse("postgres://").expect("parses");
        assert_eq!((c.host.as_str(), c.port), ("localhost", 5432));
    }

    #[test]
    fn key_value_with_quotes_and_escapes() {
        let c = parse(
            r"host=10.0.0.5 port = 5444 user='a b' password='it\'s \\ secret' dbname=x\ y sslmode=require",
        )
        .expect("parses");
        assert_eq!(c.host, "10.0.0.5");
        assert_eq!(c.port, 5444);
        assert_eq!(c.user, "a b");
        assert_eq!(c.password.as_deref(), Some(r"it's \ secret"));
        assert_eq!(c.dbname, "x y");
        assert_eq!(c.sslmode, SslMode::Require);
        let c = parse("  ").expect("empty string is all defaults");
        assert_eq!(c.host, "localhost");
    }

    #[test]
    fn environment_fills_the_gaps_but_never_overrides() {
        let env = env_of(&[
            ("PGHOST", "envhost"),
            ("PGPORT", "7000"),
            ("PGUSER", "envuser"),
            ("PGPASSWORD", "envpw"),
            ("PGSSLMODE", "disable"),
            ("PGSSLROOTCERT", "/env/ca.pem"),
            ("PGAPPNAME", "envapp"),
            ("USER", "osuser"),
        ]);
        let c = ConnInfo::parse_with_env("dbname=d", &env).expect("parses");
        assert_eq!(c.host, "envhost");
        assert_eq!(c.port, 7000);
        assert_eq!(c.user, "envuser");
        assert_eq!(c.password.as_deref(), Some("envpw"));
        assert_eq!(c.dbname, "d");
        assert_eq!(c.sslmode, SslMode::Disable);
        assert_eq!(c.sslrootcert, Some(PathBuf::from("/env/ca.pem")));
        assert_eq!(c.application_name.as_deref(), Some("envapp"));
        let c = ConnInfo::parse_with_env("postgres://u@h:1/?sslmode=require", &env).expect("ok");
        assert_eq!((c.host.as_str(), c.port, c.user.as_str()), ("h", 1, "u"));
        assert_eq!(c.dbname, "u", "dbname defaults to the user");
        assert_eq!(c.sslmode, SslMode::Require);
        let env = env_of(&[("USER", "osuser"), ("PGDATABASE", "envdb")]);
        let c = ConnInfo::parse_with_env("", &env).expect("parses");
        assert_eq!((c.user.as_str(), c.dbname.as_str()), ("osuser", "envdb"));
    }

    #[test]
    fn password_is_never_shown() {
        let c = parse("postgres://u:hunter2@h/d").expect("parses");
        assert!(!c.to_string().contains("hunter2"), "{c}");
        assert!(!format!("{c:?}").contains("hunter2"), "{c:?}");
        assert!(format!("{c:?}").contains("********"));
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(
            parse("host=h colour=blue"),
            Err(ConnInfoError::UnknownKey("colour".into()))
        );
        assert_eq!(
            parse("postgres://h/d?colour=blue"),
            Err(ConnInfoError::UnknownKey("colour".into()))
        );
        for bad in ["port=abc", "port=0", "port=70000", "postgres://h:x/d"] {
            let e = parse(bad).expect_err(bad);
            assert!(
                matches!(&e, ConnInfoError::InvalidValue { key, .. } if key == "port"),
                "{e}"
            );
        }
        let e = ConnInfo::parse_with_env("", &env_of(&[("PGPORT", "nope")])).expect_err("bad");
        assert!(e.to_string().contains("PGPORT"), "{e}");
        assert!(matches!(
            parse("postgres://a,b/d"),
            Err(ConnInfoError::MultipleHosts(_))
        ));
        assert!(matches!(
            parse("host=a,b"),
            Err(ConnInfoError::MultipleHosts(_))
        ));
        assert!(matches!(
            parse("host=/var/run/postgresql"),
            Err(ConnInfoError::UnixSocket(_))
        ));
        assert!(matches!(
            parse("sslmode=maybe"),
            Err(ConnInfoError::InvalidValue { .. })
        ));
        assert!(matches!(parse("host"), Err(ConnInfoError::Syntax(_))));
        assert!(matches!(parse("user='open"), Err(ConnInfoError::Syntax(_))));
        assert!(matches!(
            parse("postgres://[::1/d"),
            Err(ConnInfoError::Syntax(_))
        ));
        assert!(matches!(
            parse("postgres://h/%zz"),
            Err(ConnInfoError::Syntax(_))
        ));
        assert!(matches!(
            parse("connect_timeout=soon"),
            Err(ConnInfoError::InvalidValue { .. })
        ));
    }

    #[test]
    fn channel_binding_hash_follows_the_signature_algorithm() {
        // A minimal DER shape: SEQ { SEQ {} , SEQ { OID sha384WithRSA } , BITSTRING }.
        let cert = [
            0x30, 0x13, 0x30, 0x00, 0x30, 0x0B, 0x06, 0x09, 0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D,
            0x01, 0x01, 0x0C, 0x03, 0x02, 0x00, 0x00,
        ];
        assert_eq!(tls_server_end_point(&cert).map(|h| h.len()), Some(48));
        assert_eq!(tls_server_end_point(&cert[..10]), None);
        assert_eq!(tls_server_end_point(&[]), None);
    }

    #[test]
    fn display_parses_back() {
        for s in [
            "postgres://al%40ice:pw@db.example.com:6543/my%20db?sslmode=verify-full",
            "postgres://bob@[::1]:5433/x",
            "host=h user='a b/c' dbname=d%e",
        ] {
            let c = parse(s).expect("parses");
            let mut back = parse(&c.to_string()).expect("Display output parses");
            back.password = c.password.clone();
            assert_eq!(back, c, "{c}");
        }
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,80}") {
            let _ = parse(&s);
            let _ = parse(&format!("postgres://{s}"));
        }
    }
}
