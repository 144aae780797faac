//! Connection settings: a libpq-style connection string, and an ordinary (non-replication)
//! tokio-postgres client built from the same settings.
//!
//! Both libpq forms are accepted: a URL (`postgres://user:pw@host:5432/db?sslmode=require`,
//! percent-decoded, IPv6 hosts in brackets) and key/value pairs (`host=db user='a b'`, single
//! quotes with `\'` and `\\` escapes). As in libpq, a value comes from the string, else from
//! the service file's section (`service=…` / `PGSERVICE`), else from the `PG*` environment
//! variables, else libpq's default; a missing password is looked up in the password file
//! (see [`super::libpq_files`]). The environment and the files are passed in, so parsing
//! stays testable.
//!
//! A host that starts with `/` is the directory of a Unix-domain socket
//! (`host=/var/run/postgresql`, `postgres:///app?host=/var/run/postgresql`, or the host
//! percent-encoded in the URL); the socket is `<dir>/.s.PGSQL.<port>` and TLS is never used
//! on it, whatever the sslmode (as in libpq). Without any host, the socket of a default
//! directory is used when one exists for the port, else `localhost` over TCP.
//!
//! The TLS policy that `sslmode` and `sslrootcert` imply lives in [`super::tls`].
//!
//! The password is never shown by `Display` or `Debug`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use super::connection::ConnectError;
use super::frame::log_server_notice;
use super::libpq_files::{
    DEFAULT_SOCKET_DIRS, Files, NoFiles, PassKey, SystemFiles, passfile_password, passfile_path,
    service_files, service_section,
};
use super::tls::{MakeRustls, server_name, tls_config};

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
    /// A Linux abstract-namespace socket (`@name`).
    #[error(
        "host `{0}` is an abstract Unix-domain socket, which walhook does not support; give the socket's directory"
    )]
    AbstractSocket(String),
    /// The named service is in no service file.
    #[error("service `{name}` is not defined in {}", files_list(searched))]
    ServiceNotFound {
        /// The service name.
        name: String,
        /// The files looked at.
        searched: Vec<PathBuf>,
    },
    /// A service file has a line walhook cannot use.
    #[error("service file {}, line {line}: {message}", file.display())]
    ServiceFile {
        /// The file.
        file: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A service or password file exists but cannot be read.
    #[error("cannot read {}: {reason}", file.display())]
    Unreadable {
        /// The file.
        file: PathBuf,
        /// Why.
        reason: String,
    },
    /// The string is not well-formed.
    #[error("malformed connection string: {0}")]
    Syntax(String),
}

fn files_list(files: &[PathBuf]) -> String {
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    names.join(", ")
}

/// Everything needed to open a connection to one Postgres server.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// Host name or IP address, or (starting with `/`) the directory of a Unix-domain socket.
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
    service: Option<String>,
    passfile: Option<String>,
    /// The keys whose value came from this service (for messages).
    from_service: Option<(String, Vec<&'static str>)>,
}

impl Given {
    /// Fills what the string left out from a service definition.
    fn fill_from_service(&mut self, name: &str, svc: Given) {
        let mut used = Vec::new();
        macro_rules! fill {
            ($($field:ident),*) => {$(
                if self.$field.is_none() && svc.$field.is_some() {
                    self.$field = svc.$field;
                    used.push(stringify!($field));
                }
            )*};
        }
        fill!(
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
            passfile
        );
        self.from_service = Some((name.to_owned(), used));
    }

    /// How to name `key` in a message: `port`, or `port (service "x")` when the service gave it.
    fn label(&self, key: &str) -> String {
        match &self.from_service {
            Some((name, keys)) if keys.contains(&key) => format!("{key} (service {name:?})"),
            _ => key.to_owned(),
        }
    }

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
            "service" => &mut self.service,
            "passfile" => &mut self.passfile,
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
    /// Parses a connection string, falling back to the service file, the process's `PG*`
    /// environment and the password file.
    pub fn parse(s: &str) -> Result<ConnInfo, ConnInfoError> {
        ConnInfo::parse_with(s, &|name| std::env::var(name).ok(), &SystemFiles)
    }

    /// Parses a connection string, with `env` standing in for the environment and no files.
    pub fn parse_with_env(
        s: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ConnInfo, ConnInfoError> {
        ConnInfo::parse_with(s, env, &NoFiles)
    }

    /// Parses a connection string, with `env` and `files` standing in for the process's.
    pub fn parse_with(
        s: &str,
        env: &dyn Fn(&str) -> Option<String>,
        files: &dyn Files,
    ) -> Result<ConnInfo, ConnInfoError> {
        let s = s.trim();
        let mut given = if let Some(rest) = s
            .strip_prefix("postgresql://")
            .or_else(|| s.strip_prefix("postgres://"))
        {
            parse_url(rest)?
        } else {
            parse_key_values(s)?
        };
        let service = given
            .service
            .clone()
            .filter(|v| !v.is_empty())
            .or_else(|| env("PGSERVICE").filter(|v| !v.is_empty()));
        if let Some(name) = service {
            let svc = read_service(&name, env, files)?;
            given.fill_from_service(&name, svc);
        }
        let passfile = passfile_path(given.passfile.as_deref(), env);
        let mut info = ConnInfo::resolve(given, env, files)?;
        if info.password.is_none() {
            if let Some(path) = passfile {
                info.password = read_passfile(&path, &info, files)?;
            }
        }
        Ok(info)
    }

    /// The socket file when `host` is a Unix-domain socket directory.
    pub fn socket_path(&self) -> Option<PathBuf> {
        self.host
            .starts_with('/')
            .then(|| Path::new(&self.host).join(format!(".s.PGSQL.{}", self.port)))
    }

    fn resolve(
        g: Given,
        env: &dyn Fn(&str) -> Option<String>,
        files: &dyn Files,
    ) -> Result<ConnInfo, ConnInfoError> {
        // Each value: the string's, else the environment's (named, for error messages).
        let pick = |given: Option<String>, key: &str, var: &str| -> Option<(String, String)> {
            // An empty value means "not set", as in libpq (`host=''` is the default host).
            let given = given.filter(|v| !v.is_empty() || key == "password");
            given.map(|v| (g.label(key), v)).or_else(|| {
                env(var)
                    .filter(|v| !v.is_empty())
                    .map(|v| (var.to_string(), v))
            })
        };
        let port = match pick(g.port.clone(), "port", "PGPORT") {
            Some((key, p)) => parse_port(&key, &p)?,
            None => 5432,
        };
        let host = match pick(g.host.clone(), "host", "PGHOST") {
            Some((_, h)) => check_host(h)?,
            None => DEFAULT_SOCKET_DIRS
                .iter()
                .find(|dir| files.exists(&Path::new(dir).join(format!(".s.PGSQL.{port}"))))
                .map_or_else(|| "localhost".to_string(), |dir| dir.to_string()),
        };
        let user = pick(g.user.clone(), "user", "PGUSER")
            .map(|(_, u)| u)
            .or_else(|| env("USER").filter(|u| !u.is_empty()))
            .unwrap_or_else(|| "postgres".to_string());
        let password = pick(g.password.clone(), "password", "PGPASSWORD").map(|(_, p)| p);
        let dbname = pick(g.dbname.clone(), "dbname", "PGDATABASE")
            .map(|(_, d)| d)
            .unwrap_or_else(|| user.clone());
        let sslmode = match pick(g.sslmode.clone(), "sslmode", "PGSSLMODE") {
            Some((key, v)) => v.parse().map_err(|reason| invalid(&key, &v, reason))?,
            None => SslMode::Prefer,
        };
        let sslrootcert = pick(g.sslrootcert.clone(), "sslrootcert", "PGSSLROOTCERT")
            .map(|(_, p)| PathBuf::from(p));
        let application_name = pick(g.application_name.clone(), "application_name", "PGAPPNAME")
            .map(|(_, a)| a)
            .filter(|a| !a.is_empty());
        let connect_timeout = match pick(
            g.connect_timeout.clone(),
            "connect_timeout",
            "PGCONNECT_TIMEOUT",
        ) {
            Some((key, v)) => parse_timeout(&key, &v)?,
            None => None,
        };
        let channel_binding = match pick(
            g.channel_binding.clone(),
            "channel_binding",
            "PGCHANNELBINDING",
        ) {
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
                // libpq never uses TLS on a Unix-domain socket.
                _ if self.socket_path().is_some() => tokio_postgres::config::SslMode::Disable,
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
    } else if host.starts_with('@') {
        Err(ConnInfoError::AbstractSocket(host))
    } else {
        Ok(host)
    }
}

/// The section `[name]` of the first service file that defines it, as given values.
fn read_service(
    name: &str,
    env: &dyn Fn(&str) -> Option<String>,
    files: &dyn Files,
) -> Result<Given, ConnInfoError> {
    let searched = service_files(env);
    for file in &searched {
        let text = files.read(file).map_err(|e| ConnInfoError::Unreadable {
            file: file.clone(),
            reason: e.to_string(),
        })?;
        let Some(text) = text else { continue };
        let bad = |line, message| ConnInfoError::ServiceFile {
            file: file.clone(),
            line,
            message,
        };
        let Some(entries) = service_section(&text, name).map_err(|(l, m)| bad(l, m))? else {
            continue;
        };
        let mut svc = Given::default();
        for e in entries {
            svc.set(&e.key, e.value)
                .map_err(|err| bad(e.line, err.to_string()))?;
        }
        return Ok(svc);
    }
    Err(ConnInfoError::ServiceNotFound {
        name: name.to_owned(),
        searched,
    })
}

/// The password for `info` from the password file, if it has one.
fn read_passfile(
    path: &Path,
    info: &ConnInfo,
    files: &dyn Files,
) -> Result<Option<String>, ConnInfoError> {
    let text = files.read(path).map_err(|e| ConnInfoError::Unreadable {
        file: path.to_owned(),
        reason: e.to_string(),
    })?;
    let Some(text) = text else { return Ok(None) };
    if files.is_shared(path) {
        tracing::warn!(
            "password file {} has group or world access and is ignored; permissions should be u=rw (0600) or less",
            path.display()
        );
        return Ok(None);
    }
    let key = PassKey {
        host: &info.host,
        port: info.port,
        dbname: &info.dbname,
        user: &info.user,
    };
    Ok(passfile_password(&text, key))
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
            let make = MakeRustls::new(tls, server_name(info)?);
            let (client, conn) = config.connect(make).await?;
            spawn_connection(conn, info);
            client
        }
    };
    Ok(client)
}

/// Drives the connection; server notices go to walhook's log (tokio-postgres would print
/// them as raw `NOTICE: …` lines).
fn spawn_connection<S, T>(mut conn: tokio_postgres::Connection<S, T>, info: &ConnInfo)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let target = info.to_string();
    tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notice(n)) => log_server_notice(
                    n.severity(),
                    n.code().code(),
                    n.message(),
                    n.detail().unwrap_or(""),
                ),
                Ok(_) => {}
                Err(e) => {
                    let why = crate::source::connection::describe_sql_error(&e);
                    // The server ending the session (shutdown, pg_terminate_backend) is
                    // routine; whoever uses the connection next reconnects and says so.
                    match e.code().map(|c| c.code()) {
                        Some("57P01" | "57P02" | "57P03") => {
                            tracing::info!(target_db = %target, "the server ended a SQL session: {why}")
                        }
                        _ => tracing::error!(target_db = %target, "SQL connection failed: {why}"),
                    }
                    return;
                }
            }
        }
    });
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
            parse("host=@abstract"),
            Err(ConnInfoError::AbstractSocket(_))
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

    /// Files in memory: path → (text, shared with group/others).
    struct MemFiles(HashMap<PathBuf, (String, bool)>);

    impl MemFiles {
        fn of(files: &[(&str, &str, bool)]) -> MemFiles {
            MemFiles(
                files
                    .iter()
                    .map(|(p, t, shared)| (PathBuf::from(p), (t.to_string(), *shared)))
                    .collect(),
            )
        }
    }

    impl Files for MemFiles {
        fn read(&self, path: &Path) -> std::io::Result<Option<String>> {
            Ok(self.0.get(path).map(|(t, _)| t.clone()))
        }
        fn is_shared(&self, path: &Path) -> bool {
            self.0.get(path).is_some_and(|(_, shared)| *shared)
        }
        fn exists(&self, path: &Path) -> bool {
            self.0.contains_key(path)
        }
    }

    #[test]
    fn unix_socket_hosts_in_every_spelling() {
        for s in [
            "host=/var/run/postgresql dbname=app",
            "postgres:///app?host=/var/run/postgresql",
            "postgresql://%2Fvar%2Frun%2Fpostgresql/app",
        ] {
            let c = parse(s).expect(s);
            assert_eq!(
                (c.host.as_str(), c.dbname.as_str()),
                ("/var/run/postgresql", "app"),
                "{s}"
            );
            assert_eq!(
                c.socket_path(),
                Some(PathBuf::from("/var/run/postgresql/.s.PGSQL.5432"))
            );
            let back = parse(&c.to_string()).expect("Display parses back");
            assert_eq!(back.host, c.host);
        }
        let c = parse("host=/tmp port=6000 sslmode=require").unwrap();
        assert_eq!(c.socket_path(), Some(PathBuf::from("/tmp/.s.PGSQL.6000")));
        assert!(parse("host=db").unwrap().socket_path().is_none());
        // TLS is never attempted on a socket, as in libpq.
        assert!(
            super::super::tls::tls_config(&c).unwrap().is_none(),
            "sslmode=require on a socket"
        );
    }

    #[test]
    fn without_a_host_the_default_socket_is_used_when_it_exists() {
        let env = env_of(&[]);
        let files = MemFiles::of(&[("/var/run/postgresql/.s.PGSQL.5432", "", false)]);
        let c = ConnInfo::parse_with("dbname=app", &env, &files).unwrap();
        assert_eq!(c.host, "/var/run/postgresql");
        let c = ConnInfo::parse_with("port=5433", &env, &files).unwrap();
        assert_eq!(c.host, "localhost", "no socket for that port");
        let c = ConnInfo::parse_with("host=localhost", &env, &files).unwrap();
        assert_eq!(c.host, "localhost");
    }

    #[test]
    fn service_file_values_sit_between_the_string_and_the_environment() {
        let env = env_of(&[
            ("HOME", "/home/u"),
            ("PGPORT", "7000"),
            ("PGUSER", "envuser"),
            ("PGAPPNAME", "envapp"),
        ]);
        let files = MemFiles::of(&[(
            "/home/u/.pg_service.conf",
            "[orders]\nhost=db.internal\nport=6432\ndbname=orders\nsslmode=require\n",
            false,
        )]);
        let c = ConnInfo::parse_with("service=orders dbname=override", &env, &files).unwrap();
        assert_eq!(c.host, "db.internal");
        assert_eq!(c.port, 6432, "the service beats PGPORT");
        assert_eq!(c.dbname, "override", "the string beats the service");
        assert_eq!(c.user, "envuser", "the environment fills the rest");
        assert_eq!(c.sslmode, SslMode::Require);
        let env_service = env_of(&[("HOME", "/home/u"), ("PGSERVICE", "orders")]);
        let c = ConnInfo::parse_with("", &env_service, &files).unwrap();
        assert_eq!(c.host, "db.internal");
        let c = ConnInfo::parse_with("postgres:///x?service=orders", &env, &files).unwrap();
        assert_eq!((c.host.as_str(), c.dbname.as_str()), ("db.internal", "x"));
    }

    #[test]
    fn service_file_errors_name_the_file_the_line_and_the_key() {
        let env = env_of(&[("PGSERVICEFILE", "/etc/svc.conf")]);
        let files = MemFiles::of(&[(
            "/etc/svc.conf",
            "[a]\nhost=h\ncolour=blue\n[b]\nport=many\n",
            false,
        )]);
        let e = ConnInfo::parse_with("service=a", &env, &files).unwrap_err();
        assert_eq!(
            e.to_string(),
            "service file /etc/svc.conf, line 3: unknown connection parameter `colour`"
        );
        let e = ConnInfo::parse_with("service=b", &env, &files).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("invalid port (service \"b\") `many`"),
            "{e}"
        );
        let e = ConnInfo::parse_with("service=c", &env, &files).unwrap_err();
        assert_eq!(
            e.to_string(),
            "service `c` is not defined in /etc/svc.conf, /etc/postgresql-common/pg_service.conf"
        );
    }

    #[test]
    fn a_missing_password_comes_from_the_password_file() {
        let env = env_of(&[("HOME", "/home/u")]);
        let pgpass = "db:5432:app:walhook:from-file\nlocalhost:*:*:walhook:local\n";
        let files = MemFiles::of(&[("/home/u/.pgpass", pgpass, false)]);
        let parse = |s: &str| ConnInfo::parse_with(s, &env, &files).unwrap();
        assert_eq!(
            parse("postgres://walhook@db/app").password.as_deref(),
            Some("from-file")
        );
        assert_eq!(
            parse("postgres://walhook:given@db/app").password.as_deref(),
            Some("given"),
            "the string wins"
        );
        assert_eq!(parse("postgres://other@db/app").password, None);
        assert_eq!(
            parse("host=/var/run/postgresql user=walhook dbname=x")
                .password
                .as_deref(),
            Some("local"),
            "a default socket directory is localhost"
        );
        let env = env_of(&[("HOME", "/home/u"), ("PGPASSFILE", "/etc/walhook.pgpass")]);
        let files = MemFiles::of(&[("/etc/walhook.pgpass", "*:*:*:*:any\n", false)]);
        let c = ConnInfo::parse_with("host=db user=u", &env, &files).unwrap();
        assert_eq!(c.password.as_deref(), Some("any"));
        let files = MemFiles::of(&[("/p", "*:*:*:*:x\n", false)]);
        let c = ConnInfo::parse_with("host=db passfile=/p", &env, &files).unwrap();
        assert_eq!(c.password.as_deref(), Some("x"), "passfile= in the string");
        // Readable by others: ignored, as libpq does.
        let files = MemFiles::of(&[("/home/u/.pgpass", pgpass, true)]);
        let env = env_of(&[("HOME", "/home/u")]);
        let c = ConnInfo::parse_with("postgres://walhook@db/app", &env, &files).unwrap();
        assert_eq!(c.password, None);
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
