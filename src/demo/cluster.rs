//! A throwaway PostgreSQL cluster: `initdb` into a new directory under `$TMPDIR`,
//! `wal_level = logical`, a free port on 127.0.0.1, trust authentication; stopped and deleted
//! with everything in it by [`Cluster::stop`] (or, less gracefully, on drop).
//!
//! - **Binaries**: `$WALHOOK_PG_BIN`, else the newest versioned install (`/usr/lib/postgresql/N`
//!   on Debian and Ubuntu, `/usr/pgsql-N` from the PGDG RPMs, Homebrew's `postgresql@N`), else
//!   the first `$PATH` directory that has both `initdb` and `postgres`.
//! - **Root**: Postgres refuses to run as root, so then `initdb`, `postgres` and `pg_ctl` run as
//!   the `postgres` user (`runuser`), which must be able to reach the directory.
//! - **Signals**: the server runs in its own process group, so the Ctrl-C that the terminal
//!   sends to walhook's group does not stop Postgres under the running pipeline; walhook stops
//!   it last, after the pipeline has finished.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// The programs a cluster needs from its bin directory.
const PROGRAMS: [&str; 3] = ["initdb", "postgres", "pg_ctl"];

/// How long the server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the cluster could not be made, started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No Postgres server binaries were found.
    #[error(
        "walhook demo needs the PostgreSQL server programs (initdb, postgres, pg_ctl): install them \
         (Debian/Ubuntu: apt-get install postgresql; Fedora/RHEL: dnf install postgresql-server; \
         macOS: brew install postgresql@17) or set WALHOOK_PG_BIN to their directory"
    )]
    NotInstalled,
    /// `WALHOOK_PG_BIN` names a directory without one of the programs.
    #[error("WALHOOK_PG_BIN={dir}: there is no {program} in that directory")]
    BadBinDir {
        /// The directory.
        dir: PathBuf,
        /// The missing program.
        program: &'static str,
    },
    /// Running as root, but there is no `postgres` user to run the server as.
    #[error(
        "running as root, and Postgres refuses to run as root; the demo runs it as the `postgres` \
         user, which does not exist (create it with `useradd --system postgres`, or run as a normal user)"
    )]
    NoPostgresUser,
    /// A file system operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A program could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A program ran and failed.
    #[error("{program} failed: {output}{hint}")]
    Failed {
        /// The program.
        program: &'static str,
        /// The end of what it printed.
        output: String,
        /// What may be wrong, or empty.
        hint: String,
    },
    /// The server did not come up.
    #[error("postgres did not start within {}s; the end of its log:\n{log}", START_TIMEOUT.as_secs())]
    NotStarted {
        /// The end of the server log.
        log: String,
    },
}

/// Finds the directory with `initdb`, `postgres` and `pg_ctl` (see the module docs).
pub fn find_bin(env: &dyn Fn(&str) -> Option<String>) -> Result<PathBuf, ClusterError> {
    let complete = |dir: &Path| PROGRAMS.iter().all(|p| dir.join(p).is_file());
    if let Some(dir) = env("WALHOOK_PG_BIN").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        return match PROGRAMS.iter().find(|p| !dir.join(p).is_file()) {
            Some(program) => Err(ClusterError::BadBinDir { dir, program }),
            None => Ok(dir),
        };
    }
    let mut versioned: Vec<(u32, PathBuf)> = Vec::new();
    for (parent, prefix, suffix) in [
        ("/usr/lib/postgresql", "", "bin"),
        ("/usr", "pgsql-", "bin"),
        ("/opt/homebrew/opt", "postgresql@", "bin"),
        ("/usr/local/opt", "postgresql@", "bin"),
    ] {
        let Ok(entries) = std::fs::read_dir(parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(major) = name
                .to_str()
                .and_then(|n| n.strip_prefix(prefix))
                .and_then(|v| v.split('.').next())
                .and_then(|v| v.parse::<u32>().ok())
            else {
                continue;
            };
            let bin = entry.path().join(suffix);
            if complete(&bin) {
                versioned.push((major, bin));
            }
        }
    }
    versioned.sort();
    if let Some((_, bin)) = versioned.pop() {
        return Ok(bin);
    }
    env("PATH")
        .iter()
        .flat_map(|p| std::env::split_paths(p).collect::<Vec<_>>())
        .find(|dir| complete(dir))
        .ok_or(ClusterError::NotInstalled)
}

/// A running cluster.
#[derive(Debug)]
pub struct Cluster {
    /// The directory that holds everything (removed by `stop`).
    dir: PathBuf,
    data: PathBuf,
    bin: PathBuf,
    /// TCP port on 127.0.0.1.
    port: u16,
    /// `Some` when running as root: the server runs as the `postgres` user.
    as_user: Option<String>,
    child: Option<Child>,
}

impl Cluster {
    /// Creates a directory under `parent`, runs `initdb` there and starts the server.
    pub async fn start(bin: &Path, parent: &Path) -> Result<Cluster, ClusterError> {
        let dir = make_private_dir(parent)?;
        let mut cluster = Cluster {
            data: dir.join("data"),
            dir,
            bin: bin.to_owned(),
            port: 0,
            as_user: None,
            child: None,
        };
        // On any error from here on, dropping `cluster` removes the directory.
        cluster.as_user = run_as(&cluster.dir).await?;
        cluster.initdb().await?;
        cluster.boot().await?;
        Ok(cluster)
    }

    /// The TCP port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the cluster and its log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A URL for database `db` as the superuser `postgres` (trust authentication, no TLS).
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut c = match &self.as_user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(path);
                c
            }
            None => Command::new(path),
        };
        // The caller's working directory may be closed to the postgres user.
        c.current_dir(&self.dir)
            .stdin(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        c
    }

    async fn initdb(&self) -> Result<(), ClusterError> {
        let out = self
            .command("initdb")
            .args(["--no-sync", "-A", "trust", "-U", "postgres", "-E", "UTF8"])
            .args(["--locale", "C", "-D"])
            .arg(&self.data)
            .output()
            .await
            .map_err(|source| ClusterError::Spawn {
                program: self.bin.join("initdb"),
                source,
            })?;
        if out.status.success() {
            return Ok(());
        }
        let output = tail_lines(&String::from_utf8_lossy(&out.stderr), 10);
        let hint = match &self.as_user {
            Some(user) if output.contains("ermission denied") => format!(
                "\n(initdb runs as the `{user}` user: every directory above {} must be open to it, \
                 e.g. chmod o+x; or set TMPDIR to a directory it can reach)",
                self.dir.display()
            ),
            _ => String::new(),
        };
        Err(ClusterError::Failed {
            program: "initdb",
            output,
            hint,
        })
    }

    /// Starts the server on a free port; tries a new port if another process took it first.
    async fn boot(&mut self) -> Result<(), ClusterError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            self.port = free_port().map_err(|source| ClusterError::Io {
                what: "cannot find a free port on",
                path: PathBuf::from("127.0.0.1"),
                source,
            })?;
            let conf = [
                "wal_level = logical",
                "max_wal_senders = 10",
                "max_replication_slots = 10",
                "listen_addresses = '127.0.0.1'",
                &format!("port = {}", self.port),
                // No socket in /var/run/postgresql, which may not be ours to write.
                "unix_socket_directories = ''",
                // A throwaway cluster: durability is not wanted, speed is.
                "fsync = off",
                "synchronous_commit = off",
                "full_page_writes = off",
                "log_min_messages = warning",
            ]
            .join("\n");
            let auto_conf = self.data.join("postgresql.auto.conf");
            write_as_owner(&auto_conf, &(conf + "\n"))?;
            let log_path = self.dir.join("server.log");
            let log = std::fs::File::create(&log_path).map_err(|source| ClusterError::Io {
                what: "cannot create",
                path: log_path.clone(),
                source,
            })?;
            let log_err = log.try_clone().map_err(|source| ClusterError::Io {
                what: "cannot open",
                path: log_path.clone(),
                source,
            })?;
            let child = self
                .command("postgres")
                .arg("-D")
                .arg(&self.data)
                .stdout(log)
                .stderr(log_err)
                .spawn()
                .map_err(|source| ClusterError::Spawn {
                    program: self.bin.join("postgres"),
                    source,
                })?;
            self.child = Some(child);
            if self.wait_ready(deadline).await {
                return Ok(());
            }
            self.kill().await;
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            // Another process bound the port between our probe and the server's bind: retry.
            if log.contains("could not bind") && Instant::now() < deadline {
                continue;
            }
            return Err(ClusterError::NotStarted {
                log: tail_lines(&log, 15),
            });
        }
    }

    /// Polls with a real connection until the server answers, exits or time runs out.
    async fn wait_ready(&mut self, deadline: Instant) -> bool {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(self.port)
            .user("postgres")
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(2));
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    return false;
                }
            }
            if config.connect(tokio_postgres::NoTls).await.is_ok() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Stops the server (`pg_ctl stop -m fast`, which disconnects every session) and removes
    /// the directory with everything in it.
    pub async fn stop(mut self) -> Result<(), ClusterError> {
        if let Some(mut child) = self.child.take() {
            let stopped = self
                .command("pg_ctl")
                .args(["stop", "-m", "fast", "-w", "-t", "10", "-D"])
                .arg(&self.data)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await
                .is_ok_and(|s| s.success());
            let exited = stopped
                && tokio::time::timeout(Duration::from_secs(5), child.wait())
                    .await
                    .is_ok();
            if !exited {
                let _ = child.kill().await;
            }
        }
        let dir = std::mem::take(&mut self.dir);
        std::fs::remove_dir_all(&dir).map_err(|source| ClusterError::Io {
            what: "cannot remove",
            path: dir,
            source,
        })
    }
}

impl Drop for Cluster {
    /// The error path: the server is killed (its process group, so a `runuser` parent and the
    /// postmaster go together) and the directory removed.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                // The postmaster ends its own children when it dies; SIGQUIT is its
                // "immediate shutdown".
                let _ = std::process::Command::new("kill")
                    .args(["-QUIT", "--", &format!("-{pid}")])
                    .stderr(Stdio::null())
                    .status();
                std::thread::sleep(Duration::from_millis(500));
            }
            let _ = child.start_kill();
        }
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// `walhook-demo-<pid>-<random>` under `parent`, mode 0700, created new (never reused).
fn make_private_dir(parent: &Path) -> Result<PathBuf, ClusterError> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = parent.join(format!(
        "walhook-demo-{}-{:08x}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|source| ClusterError::Io {
            what: "cannot create",
            path: dir.clone(),
            source,
        })?;
    Ok(dir)
}

/// When the directory we just made belongs to root, Postgres must run as `postgres`: the
/// directory is handed to that user. Returns the user to run as.
async fn run_as(dir: &Path) -> Result<Option<String>, ClusterError> {
    use std::os::unix::fs::MetadataExt;
    let io = |what| {
        move |source| ClusterError::Io {
            what,
            path: dir.to_owned(),
            source,
        }
    };
    if std::fs::metadata(dir).map_err(io("cannot read"))?.uid() != 0 {
        return Ok(None);
    }
    let id = |flag: &'static str| async move {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .stderr(Stdio::null())
            .output()
            .await
            .ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u32>()
            .ok()
    };
    let (Some(uid), Some(gid)) = (id("-u").await, id("-g").await) else {
        return Err(ClusterError::NoPostgresUser);
    };
    std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(io("cannot hand over"))?;
    Ok(Some("postgres".to_owned()))
}

/// Overwrites a file inside the data directory, keeping its owner (the server's user).
fn write_as_owner(path: &Path, text: &str) -> Result<(), ClusterError> {
    // Truncating an existing file keeps its owner and mode.
    std::fs::write(path, text).map_err(|source| ClusterError::Io {
        what: "cannot write",
        path: path.to_owned(),
        source,
    })
}

fn free_port() -> std::io::Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
}

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_bin_dir_from_the_environment_must_be_complete() {
        let dir = std::env::temp_dir().join(format!("walhook-bin-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("initdb"), "").unwrap();
        std::fs::write(dir.join("postgres"), "").unwrap();
        let env = |k: &str| (k == "WALHOOK_PG_BIN").then(|| dir.to_string_lossy().into_owned());
        let e = find_bin(&env).unwrap_err();
        assert!(e.to_string().contains("there is no pg_ctl"), "{e}");
        std::fs::write(dir.join("pg_ctl"), "").unwrap();
        assert_eq!(find_bin(&env).unwrap(), dir);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail_lines("a", 5), "a");
        assert_eq!(tail_lines("", 5), "");
    }
}
