//! The files libpq consults besides the connection string, read the way libpq reads them:
//!
//! - **Connection service file** (`service=name` or `PGSERVICE`): `PGSERVICEFILE`, else
//!   `~/.pg_service.conf`, then `$PGSYSCONFDIR/pg_service.conf` (Debian's
//!   `/etc/postgresql-common/pg_service.conf` when unset). INI style: `[name]` then
//!   `key=value` lines with the same keys as a conninfo string; `#` starts a comment.
//! - **Password file** (`passfile=…`, `PGPASSFILE`, else `~/.pgpass`): lines
//!   `host:port:database:user:password`, `*` matching anything, `\:` and `\\` escapes; the
//!   first matching line wins. A Unix-socket host in a default socket directory matches
//!   `localhost`. A file that group or others can read is ignored with a warning, as libpq does.
//!
//! The parsers are pure; [`Files`] is the file system, so they are testable without one.

use std::path::{Path, PathBuf};

/// Where Postgres servers put their Unix-domain socket by default (Debian and most
/// packages, systemd's alias, upstream's default).
pub const DEFAULT_SOCKET_DIRS: [&str; 3] = ["/var/run/postgresql", "/run/postgresql", "/tmp"];

/// Debian's `PGSYSCONFDIR`, where libpq looks for the system-wide service file.
pub const DEFAULT_SYSCONFDIR: &str = "/etc/postgresql-common";

/// The file system as connection parsing needs it.
pub trait Files {
    /// The file's text; `Ok(None)` when it does not exist.
    fn read(&self, path: &Path) -> std::io::Result<Option<String>>;
    /// Whether group or others may read the file.
    fn is_shared(&self, path: &Path) -> bool;
    /// Whether something (a socket) exists at `path`.
    fn exists(&self, path: &Path) -> bool;
}

/// The real file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemFiles;

impl Files for SystemFiles {
    fn read(&self, path: &Path) -> std::io::Result<Option<String>> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn is_shared(&self, path: &Path) -> bool {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0)
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
}

/// No files at all: only the string and the environment count.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoFiles;

impl Files for NoFiles {
    fn read(&self, _: &Path) -> std::io::Result<Option<String>> {
        Ok(None)
    }

    fn is_shared(&self, _: &Path) -> bool {
        false
    }

    fn exists(&self, _: &Path) -> bool {
        false
    }
}

/// One `key=value` of a service definition, with its line (from 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEntry {
    /// 1-based line in the file.
    pub line: usize,
    /// The parameter name.
    pub key: String,
    /// Its value, as written (no quoting in service files).
    pub value: String,
}

/// The entries of section `[name]` of a service file, `None` when it has no such section.
/// Errors carry the line and what is wrong.
pub fn service_section(
    text: &str,
    name: &str,
) -> Result<Option<Vec<ServiceEntry>>, (usize, String)> {
    let mut found: Option<Vec<ServiceEntry>> = None;
    let mut inside = false;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let Some(section) = rest.strip_suffix(']') else {
                return Err((i + 1, format!("`{line}` is missing its closing `]`")));
            };
            if found.is_some() {
                // The first definition wins, as in libpq.
                break;
            }
            inside = section.trim() == name;
            if inside {
                found = Some(Vec::new());
            }
            continue;
        }
        if !inside {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err((i + 1, format!("expected key=value, found `{line}`")));
        };
        let key = key.trim();
        if key == "service" {
            return Err((i + 1, "a service cannot name another service".to_owned()));
        }
        if let Some(entries) = found.as_mut() {
            entries.push(ServiceEntry {
                line: i + 1,
                key: key.to_owned(),
                value: value.trim().to_owned(),
            });
        }
    }
    Ok(found)
}

/// The service files to search, in order.
pub fn service_files(env: &dyn Fn(&str) -> Option<String>) -> Vec<PathBuf> {
    let mut files = Vec::new();
    match env("PGSERVICEFILE").filter(|f| !f.is_empty()) {
        Some(f) => files.push(PathBuf::from(f)),
        None => {
            if let Some(home) = env("HOME").filter(|h| !h.is_empty()) {
                files.push(Path::new(&home).join(".pg_service.conf"));
            }
        }
    }
    let sysconf = env("PGSYSCONFDIR")
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| DEFAULT_SYSCONFDIR.to_owned());
    files.push(Path::new(&sysconf).join("pg_service.conf"));
    files
}

/// The password file to read: `passfile` from the string, `PGPASSFILE`, else `~/.pgpass`.
pub fn passfile_path(given: Option<&str>, env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    given
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            env("PGPASSFILE")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
        })
        .or_else(|| {
            env("HOME")
                .filter(|h| !h.is_empty())
                .map(|h| Path::new(&h).join(".pgpass"))
        })
}

/// What a password-file line is matched against.
#[derive(Debug, Clone, Copy)]
pub struct PassKey<'a> {
    /// Host name, or socket directory.
    pub host: &'a str,
    /// Port.
    pub port: u16,
    /// Database.
    pub dbname: &'a str,
    /// Role.
    pub user: &'a str,
}

/// The password of the first line of a password file that matches `key`.
pub fn passfile_password(text: &str, key: PassKey<'_>) -> Option<String> {
    // A socket in a default directory is "localhost" to the password file.
    let host = if DEFAULT_SOCKET_DIRS.contains(&key.host) {
        "localhost"
    } else {
        key.host
    };
    let port = key.port.to_string();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split_passfile_line(line);
        let [h, p, d, u, password] = fields.as_slice() else {
            continue;
        };
        let matches = |(raw, value): &(String, String), want: &str| raw == "*" || value == want;
        if matches(h, host) && matches(p, &port) && matches(d, key.dbname) && matches(u, key.user) {
            return Some(password.1.clone());
        }
    }
    None
}

/// Splits on unescaped `:` into at most five fields, each as (raw, unescaped); the fifth
/// field is the rest of the line.
fn split_passfile_line(line: &str) -> Vec<(String, String)> {
    let mut fields = Vec::with_capacity(5);
    let (mut raw, mut value) = (String::new(), String::new());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                raw.push(c);
                if let Some(next) = chars.next() {
                    raw.push(next);
                    value.push(next);
                }
            }
            ':' if fields.len() < 4 => {
                fields.push((std::mem::take(&mut raw), std::mem::take(&mut value)));
            }
            c => {
                raw.push(c);
                value.push(c);
            }
        }
    }
    fields.push((raw, value));
    fields
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const KEY: PassKey<'static> = PassKey {
        host: "db.internal",
        port: 5432,
        dbname: "app",
        user: "walhook",
    };

    #[test]
    fn password_file_first_match_wins_with_wildcards_and_escapes() {
        let text = "# comment\n\
                    other:5432:app:walhook:no\n\
                    db.internal:5433:*:walhook:wrong port\n\
                    db.internal:*:app:walhook:s3cr\\:et\\\\x:y\n\
                    *:*:*:*:fallback\n";
        assert_eq!(
            passfile_password(text, KEY).as_deref(),
            Some("s3cr:et\\x:y")
        );
        let key = PassKey {
            user: "someone",
            ..KEY
        };
        assert_eq!(passfile_password(text, key).as_deref(), Some("fallback"));
        assert_eq!(passfile_password("short:line\n", KEY), None);
        // `\*` is a literal star, not a wildcard.
        assert_eq!(passfile_password("\\*:*:*:*:pw\n", KEY), None);
    }

    #[test]
    fn a_default_socket_directory_is_localhost() {
        let text = "localhost:5432:app:walhook:local\n";
        let key = PassKey {
            host: "/var/run/postgresql",
            ..KEY
        };
        assert_eq!(passfile_password(text, key).as_deref(), Some("local"));
        let key = PassKey {
            host: "/srv/pg",
            ..KEY
        };
        assert_eq!(passfile_password(text, key), None);
        assert_eq!(
            passfile_password("/srv/pg:5432:app:walhook:x\n", key).as_deref(),
            Some("x")
        );
    }

    #[test]
    fn service_sections() {
        let text = "# services\n[other]\nhost=a\n\n[orders]\n host = db.internal \nport=6432\n\
                    dbname=app\n[orders]\nhost=second\n";
        let entries = service_section(text, "orders").unwrap().unwrap();
        let pairs: Vec<(usize, &str, &str)> = entries
            .iter()
            .map(|e| (e.line, e.key.as_str(), e.value.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                (6, "host", "db.internal"),
                (7, "port", "6432"),
                (8, "dbname", "app")
            ]
        );
        assert_eq!(service_section(text, "missing").unwrap(), None);
        assert_eq!(service_section("[s]\nservice=t\n", "s").unwrap_err().0, 2);
        assert!(
            service_section("[s\nhost=a\n", "s")
                .unwrap_err()
                .1
                .contains("`]`")
        );
        assert!(
            service_section("[s]\nhost\n", "s")
                .unwrap_err()
                .1
                .contains("key=value")
        );
    }

    #[test]
    fn where_the_files_are() {
        let env = |k: &str| match k {
            "HOME" => Some("/home/u".to_owned()),
            _ => None,
        };
        assert_eq!(
            service_files(&env),
            [
                PathBuf::from("/home/u/.pg_service.conf"),
                PathBuf::from("/etc/postgresql-common/pg_service.conf")
            ]
        );
        assert_eq!(
            passfile_path(None, &env),
            Some(PathBuf::from("/home/u/.pgpass"))
        );
        assert_eq!(passfile_path(Some("/x"), &env), Some(PathBuf::from("/x")));
        let env = |k: &str| match k {
            "PGSERVICEFILE" => Some("/s.conf".to_owned()),
            "PGSYSCONFDIR" => Some("/etc/pg".to_owned()),
            "PGPASSFILE" => Some("/p".to_owned()),
            _ => None,
        };
        assert_eq!(
            service_files(&env),
            [
                PathBuf::from("/s.conf"),
                PathBuf::from("/etc/pg/pg_service.conf")
            ]
        );
        assert_eq!(passfile_path(None, &env), Some(PathBuf::from("/p")));
    }
}
