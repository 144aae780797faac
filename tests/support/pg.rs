//! A throwaway PostgreSQL cluster for one test: `wal_level=logical`, a free port on
//! 127.0.0.1, TLS with a self-signed certificate, and roles for every auth method.
//!
//! `initdb` runs once per Postgres build and the result is copied for each test, so a
//! cluster costs one `postgres` start. Binaries come from `WALHOOK_TEST_PG_BIN`, else the
//! newest `/usr/lib/postgresql/*/bin`. Run as root, the server runs as the `postgres` user.

#![allow(dead_code)]

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Roles the cluster has, one per authentication method (password = role name).
pub const MD5_USER: &str = "walhook_md5";
/// Authenticates with SCRAM-SHA-256.
pub const SCRAM_USER: &str = "walhook_scram";
/// Authenticates with a cleartext password.
pub const PASSWORD_USER: &str = "walhook_password";
/// May only connect over TLS (SCRAM inside it).
pub const TLS_USER: &str = "walhook_tls";
/// Has no REPLICATION attribute.
pub const NOREPL_USER: &str = "walhook_norepl";

/// Bump when the template (initdb options, pg_hba.conf, certificates) changes.
const TEMPLATE_VERSION: &str = "-v1";

/// A running cluster; stopped (immediately) and deleted on drop.
pub struct Cluster {
    /// Data directory (inside `_dir`).
    pub data: PathBuf,
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// The bin directory the server came from.
    pub bin: PathBuf,
    child: Option<Child>,
    extra_conf: Vec<String>,
    _dir: tempfile::TempDir,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The Postgres bin directory the tests use.
pub fn pg_bin() -> PathBuf {
    if let Ok(dir) = std::env::var("WALHOOK_TEST_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((major, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, p)| p)
        .expect("no PostgreSQL found: install postgresql or set WALHOOK_TEST_PG_BIN")
}

/// A client program: from the server's bin dir, else from an installed Postgres (the npm
/// server-only builds of other majors ship no psql; clients work across majors).
pub fn client_tool(bin: &Path, name: &str) -> PathBuf {
    let own = bin.join(name);
    if own.exists() {
        return own;
    }
    fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin").join(name))
        .find(|p| p.exists())
        .unwrap_or(own)
}

/// Runs a command as the `postgres` user when we are root.
fn as_pg(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn chown_pg(path: &Path) {
    if is_root() {
        let ok = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(path)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "chown {} failed", path.display());
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

/// The template data directory for this bin dir: initdb once, shared by every test.
fn template(bin: &Path) -> PathBuf {
    // The key names the build and this file's version of the template, so a template made by
    // an older harness (kept in /tmp between runs) is never reused.
    let mut key: String = bin
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    key.push_str(TEMPLATE_VERSION);
    let root = std::env::temp_dir().join(format!("walhook-pg-template-{key}"));
    let ready = root.join("ready");
    if ready.exists() {
        return root.join("data");
    }
    // Several test processes may get here at once: the first to create the lock builds.
    fs::create_dir_all(std::env::temp_dir()).ok();
    let lock = std::env::temp_dir().join(format!("walhook-pg-template-{key}.lock"));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if ready.exists() {
            return root.join("data");
        }
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock)
        {
            Ok(_) => break,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Err(_) => {
                // A builder died; take over.
                let _ = fs::remove_file(&lock);
            }
        }
    }
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(&root).expect("template dir");
    chown_pg(&root);
    let data = root.join("data");
    run(as_pg(&bin.join("initdb"))
        .args(["--no-sync", "-A", "trust", "-U", "postgres", "-E", "UTF8"])
        .args(["--locale", "C", "-D"])
        .arg(&data));
    make_tls_files(&data);
    fs::write(
        data.join("pg_hba.conf"),
        format!(
            "local all all trust\n\
             hostnossl all {TLS_USER} 127.0.0.1/32 reject\n\
             hostnossl replication {TLS_USER} 127.0.0.1/32 reject\n\
             hostssl all {TLS_USER} 127.0.0.1/32 scram-sha-256\n\
             hostssl replication {TLS_USER} 127.0.0.1/32 scram-sha-256\n\
             host all {MD5_USER} 127.0.0.1/32 md5\n\
             host replication {MD5_USER} 127.0.0.1/32 md5\n\
             host all {SCRAM_USER} 127.0.0.1/32 scram-sha-256\n\
             host replication {SCRAM_USER} 127.0.0.1/32 scram-sha-256\n\
             host all {PASSWORD_USER} 127.0.0.1/32 password\n\
             host replication {PASSWORD_USER} 127.0.0.1/32 password\n\
             host all all 127.0.0.1/32 trust\n\
             host replication all 127.0.0.1/32 trust\n"
        ),
    )
    .expect("pg_hba.conf");
    chown_pg(&root);
    fs::write(&ready, "").expect("ready marker");
    let _ = fs::remove_file(&lock);
    data
}

fn make_tls_files(data: &Path) {
    run(Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(data.join("server.key"))
        .arg("-out")
        .arg(data.join("server.crt")));
    chown_pg(data);
    if is_root() {
        run(Command::new("chmod")
            .arg("600")
            .arg(data.join("server.key")));
    }
}

impl Cluster {
    /// Starts a new cluster with the default settings.
    pub fn start() -> Cluster {
        Cluster::start_with(&[])
    }

    /// Starts a new cluster with extra `postgresql.conf` lines.
    pub fn start_with(extra_conf: &[&str]) -> Cluster {
        let bin = pg_bin();
        let template = template(&bin);
        let dir = tempfile::Builder::new()
            .prefix("walhook-pg-")
            .tempdir()
            .expect("tempdir");
        let data = dir.path().join("data");
        run(Command::new("cp").arg("-a").arg(&template).arg(&data));
        chown_pg(dir.path());
        let mut cluster = Cluster {
            data,
            port: 0,
            bin,
            child: None,
            extra_conf: extra_conf.iter().map(|s| s.to_string()).collect(),
            _dir: dir,
        };
        cluster.boot();
        cluster.create_roles();
        cluster
    }

    /// Starts the server process (after `start` or `stop`), on a new port if the old one is taken.
    pub fn boot(&mut self) {
        let conf = self.data.join("postgresql.auto.conf");
        let mut lines = vec![
            "wal_level = logical".to_string(),
            "max_replication_slots = 20".to_string(),
            "max_wal_senders = 20".to_string(),
            "listen_addresses = '127.0.0.1'".to_string(),
            "unix_socket_directories = ''".to_string(),
            "ssl = on".to_string(),
            "fsync = off".to_string(),
            "synchronous_commit = off".to_string(),
            "full_page_writes = off".to_string(),
            "log_min_messages = warning".to_string(),
            "wal_sender_timeout = 60s".to_string(),
        ];
        lines.extend(self.extra_conf.iter().cloned());
        fs::write(&conf, lines.join("\n") + "\n").expect("auto.conf");
        chown_pg(&conf);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.port == 0 || std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                self.port = free_port();
            }
            let log = fs::File::create(self.data.join("../server.log")).expect("log file");
            chown_pg(&self.data.join("../server.log"));
            let child = as_pg(&self.bin.join("postgres"))
                .arg("-D")
                .arg(&self.data)
                .args(["-p", &self.port.to_string()])
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("start postgres");
            self.child = Some(child);
            if self.wait_ready(deadline) {
                return;
            }
            self.kill();
            assert!(
                Instant::now() < deadline,
                "postgres did not start:\n{}",
                self.log()
            );
            self.port = 0;
        }
    }

    fn wait_ready(&mut self, deadline: Instant) -> bool {
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    return false;
                }
            }
            let ok = Command::new(client_tool(&self.bin, "pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.data.join("../server.log")).unwrap_or_default()
    }

    /// Stops the server as a crash would (SIGKILL of the postmaster and its children).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // runuser forwards signals; pg_ctl immediate handles the children.
            let _ = as_pg(&self.bin.join("pg_ctl"))
                .args(["stop", "-m", "immediate", "-w", "-D"])
                .arg(&self.data)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server cleanly (`pg_ctl stop -m fast`).
    pub fn stop(&mut self) {
        self.stop_with("fast");
    }

    /// Stops the server with `pg_ctl stop -m <mode>` (smart, fast or immediate) and waits.
    /// Panics (after stopping it immediately) if the server does not stop within 60 s.
    pub fn stop_with(&mut self, mode: &str) {
        if let Some(mut child) = self.child.take() {
            let stopped = as_pg(&self.bin.join("pg_ctl"))
                .args(["stop", "-m", mode, "-w", "-t", "60", "-D"])
                .arg(&self.data)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !stopped {
                self.child = Some(child);
                self.kill();
                panic!("pg_ctl stop -m {mode} did not stop the server within 60 s");
            }
            let _ = child.wait();
        }
    }

    /// `postgres://postgres@127.0.0.1:PORT/DB`, superuser, no TLS.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// A URL for `user` (password = user name).
    pub fn url_as(&self, user: &str, db: &str, sslmode: &str) -> String {
        format!(
            "postgres://{user}:{user}@127.0.0.1:{}/{db}?sslmode={sslmode}",
            self.port
        )
    }

    /// The server's self-signed certificate (PEM), to use as `sslrootcert`.
    pub fn server_cert(&self) -> PathBuf {
        self.data.join("server.crt")
    }

    /// Runs SQL with psql as the superuser and returns stdout (unaligned, tuples only).
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(client_tool(&self.bin, "psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-d", db, "-c", sql])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql failed: {sql}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim_end().to_string()
    }

    /// Creates a database and returns its name.
    pub fn create_db(&self, name: &str) -> String {
        // template0 takes no connections, so a concurrent one (a readiness probe) cannot
        // make CREATE DATABASE fail with "template1 is being accessed by other users".
        self.psql(
            "postgres",
            &format!("CREATE DATABASE {name} TEMPLATE template0"),
        );
        name.to_string()
    }

    /// Starts a cluster holding database `app` made by `schema`; returns both.
    pub fn with_app_db(schema: &str) -> (Cluster, String) {
        Cluster::with_conf_and_app_db(&[], schema)
    }

    /// `with_app_db` with extra `postgresql.conf` lines.
    pub fn with_conf_and_app_db(extra_conf: &[&str], schema: &str) -> (Cluster, String) {
        let pg = Cluster::start_with(extra_conf);
        let db = pg.create_db("app");
        pg.psql(&db, schema);
        (pg, db)
    }

    /// The server's major version.
    pub fn major(&self) -> u32 {
        self.psql("postgres", "SHOW server_version_num")
            .parse::<u32>()
            .map(|v| v / 10000)
            .unwrap_or(0)
    }

    fn create_roles(&self) {
        let mut sql = String::from("SET password_encryption = 'md5';");
        sql += &format!("CREATE ROLE {MD5_USER} LOGIN REPLICATION PASSWORD '{MD5_USER}';");
        sql += "SET password_encryption = 'scram-sha-256';";
        for user in [SCRAM_USER, PASSWORD_USER, TLS_USER] {
            sql += &format!("CREATE ROLE {user} LOGIN REPLICATION PASSWORD '{user}';");
        }
        sql += &format!("CREATE ROLE {NOREPL_USER} LOGIN PASSWORD '{NOREPL_USER}';");
        if self.major() >= 14 {
            for user in [MD5_USER, SCRAM_USER, PASSWORD_USER, TLS_USER, NOREPL_USER] {
                sql += &format!("GRANT pg_read_all_data TO {user};");
            }
        }
        self.psql("postgres", &sql);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill();
    }
}
