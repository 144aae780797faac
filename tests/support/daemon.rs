//! The real `walhook` binary as a subprocess: a running daemon whose log is captured, one-shot
//! subcommands, and the config and slot helpers the lifecycle tests share.

#![allow(dead_code)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::pg::Cluster;
use super::receiver::Request;
use walhook::lsn::Lsn;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_walhook");
/// The slot every config here names.
pub const SLOT: &str = "walhook";
/// Short timeouts and retries, for `[defaults]`.
pub const FAST: &str = "timeout = \"5s\"\nretry = { initial = \"50ms\", max = \"500ms\" }";

/// A running `walhook run`; killed on drop (its log is printed when a test fails).
pub struct Walhook {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Walhook {
    /// Starts `walhook run --config <config>`.
    pub fn start(config: &Path) -> Walhook {
        Walhook::start_with(config, &[])
    }

    /// Starts `walhook <global args> run --config <config>`.
    pub fn start_with(config: &Path, global: &[&str]) -> Walhook {
        let mut child = Command::new(BIN)
            .args(global)
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("WALHOOK_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn walhook run");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Walhook { child, log }
    }

    /// Starts walhook and waits until it streams from the slot.
    pub fn streaming(config: &Path) -> Walhook {
        let w = Walhook::start(config);
        w.wait_log("streaming slot=", 1, Duration::from_secs(30));
        w
    }

    /// Everything logged so far.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// How many log lines contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits until `needle` has appeared in `count` log lines.
    pub fn wait_log(&self, needle: &str, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.log_count(needle) < count {
            assert!(
                Instant::now() < deadline,
                "walhook did not log {needle:?} ×{count} within {timeout:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id.
    /// SIGKILL, and reap.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// Sends a signal (`-HUP`, `-STOP`, …).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill {sig} failed");
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Let the stderr thread catch up.
                std::thread::sleep(Duration::from_millis(100));
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "walhook did not exit within {timeout:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether it still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Walhook {
    fn drop(&mut self) {
        // A stopped process (SIGSTOP) must be continued to die of the SIGKILL promptly.
        let _ = Command::new("kill")
            .args(["-CONT", &self.pid()])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let text = self.log_text();
            let tail: Vec<&str> = text.lines().rev().take(80).collect();
            eprintln!("---- walhook log (last lines) ----");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// Runs a walhook subcommand to completion: (status, stdout, stderr).
pub fn walhook(args: &[&str]) -> (ExitStatus, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .env("WALHOOK_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn walhook");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("walhook {args:?} did not finish within 30s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes walhook.toml into `dir` (slot [`SLOT`], publication "walhook", no status server).
pub fn write_config(dir: &Path, url: &str, defaults: &str, triggers: &str) -> PathBuf {
    let path = dir.join("walhook.toml");
    let text = format!(
        "[source]\nurl = \"{url}\"\nslot = \"{SLOT}\"\npublication = \"walhook\"\n\n\
         [server]\nlisten = \"\"\n\n[defaults]\n{defaults}\n\n{triggers}\n"
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// A `[[trigger]]` block: name, table and url, then `extra` lines as they are.
pub fn trigger_toml(name: &str, table: &str, url: &str, extra: &[&str]) -> String {
    let mut text =
        format!("[[trigger]]\nname = \"{name}\"\ntable = \"{table}\"\nurl = \"{url}\"\n");
    for line in extra {
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// A temporary directory for configs.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("walhook-life-")
        .tempdir()
        .expect("tempdir")
}

/// Parses an LSN as psql prints it.
pub fn lsn(text: &str) -> Lsn {
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("bad LSN {text:?}: {e}"))
}

/// The slot's confirmed_flush_lsn (None while the slot does not exist).
pub fn slot_confirmed(pg: &Cluster, db: &str) -> Option<Lsn> {
    let out = pg.psql(
        db,
        &format!("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{SLOT}'"),
    );
    (!out.trim().is_empty()).then(|| lsn(&out))
}

/// The server's current WAL position.
pub fn current_lsn(pg: &Cluster, db: &str) -> Lsn {
    lsn(&pg.psql(db, "SELECT pg_current_wal_lsn()"))
}

/// Waits until the slot's confirmed position reaches `target`; returns it.
pub fn wait_confirmed(pg: &Cluster, db: &str, target: Lsn, timeout: Duration) -> Lsn {
    let deadline = Instant::now() + timeout;
    loop {
        let c = slot_confirmed(pg, db);
        if let Some(c) = c.filter(|c| *c >= target) {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "slot confirmed {c:?} did not reach {target} within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Ids of the rows (`record.id`) in accepted requests.
pub fn delivered_rows(reqs: &[Request]) -> HashSet<i64> {
    reqs.iter()
        .filter(|r| r.ok())
        .filter_map(|r| r.json()["record"]["id"].as_i64())
        .collect()
}
