//! `walhook demo` end to end, as a new user runs it: the real binary with `TMPDIR` pointing
//! at a fresh directory, deliveries read from its stdout, then Ctrl-C (SIGINT); afterwards
//! nothing may be left in that directory and no Postgres process from it may run. Also the
//! operator files in `deploy/` against the metrics walhook exports.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::{BTreeSet, HashSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_walhook");

/// Collects a pipe's lines in a background thread.
fn collect(pipe: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Pids of running processes whose command line mentions `path`.
fn processes_under(path: &Path) -> Vec<(u32, String)> {
    let needle = path.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(&needle).then_some((pid, cmdline))
        })
        .collect()
}

fn health(addr: SocketAddr) -> std::process::Output {
    Command::new(BIN)
        .args(["health", "--ready", "--addr", &addr.to_string()])
        .output()
        .unwrap()
}

/// Kills the demo if the test fails half-way, so it does not outlive the test.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn demo_prints_verified_deliveries_and_leaves_nothing_behind_on_ctrl_c() {
    let tmp = tempfile::Builder::new()
        .prefix("walhook-demo-test-")
        .tempdir()
        .unwrap();
    // Run as root, the demo's Postgres runs as `postgres`, which must reach the directory
    // (as it reaches /tmp itself).
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut command = Command::new(BIN);
    // The Postgres build the other tests use, when one is chosen.
    if let Ok(bin) = std::env::var("WALHOOK_TEST_PG_BIN") {
        command.env("WALHOOK_PG_BIN", bin);
    }
    let mut child = command
        .arg("demo")
        .env("TMPDIR", tmp.path())
        .env("WALHOOK_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = collect(child.stdout.take().unwrap());
    let stderr = collect(child.stderr.take().unwrap());
    let mut demo = Demo(child);
    let log = || stderr.lock().unwrap().join("\n");

    // Deliveries of all three kinds, through both triggers, every one verified.
    let deliveries: Vec<Value> = wait_for("deliveries", Duration::from_secs(120), || {
        if let Ok(Some(status)) = demo.0.try_wait() {
            panic!("walhook demo exited early ({status}):\n{}", log());
        }
        let lines = stdout.lock().unwrap().clone();
        let parsed: Vec<Value> = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        let kinds: HashSet<(&str, &str)> = parsed
            .iter()
            .filter_map(|d| Some((d["body"]["trigger"].as_str()?, d["body"]["type"].as_str()?)))
            .collect();
        let all = [
            ("orders", "create"),
            ("orders", "update"),
            ("orders", "delete"),
            ("order-paid", "update"),
        ];
        (parsed.len() >= 8 && all.iter().all(|k| kinds.contains(k))).then_some(parsed)
    });
    for d in &deliveries {
        assert_eq!(d["verified"], Value::Bool(true), "{d}");
        assert_eq!(d["method"], "POST");
        assert_eq!(d["webhook_id"], d["body"]["id"]);
        assert_eq!(
            d["path"],
            format!("/hooks/{}", d["body"]["trigger"].as_str().unwrap())
        );
        assert_eq!(
            (d["body"]["schema"].as_str(), d["body"]["table"].as_str()),
            (Some("public"), Some("orders"))
        );
    }
    let paid: Vec<&Value> = deliveries
        .iter()
        .filter(|d| d["body"]["trigger"] == "order-paid")
        .collect();
    for d in paid {
        assert_eq!(
            d["body"]["record"].as_object().unwrap().len(),
            3,
            "projected: {d}"
        );
    }

    // The printed config is the one it runs: valid, and pointing at the receiver we saw.
    let text = log();
    let config: String = text
        .lines()
        .skip_while(|l| !l.starts_with("# The config this demo runs"))
        .skip(1)
        .take_while(|l| !l.starts_with("walhook demo:") && !l.starts_with("20"))
        .map(|l| format!("{l}\n"))
        .collect();
    let parsed = walhook::config::parse(&config, Path::new("printed"), &|_| None)
        .unwrap_or_else(|e| panic!("{e}\n{config}"));
    assert_eq!(parsed.triggers.len(), 2);
    assert!(
        parsed.triggers[0]
            .delivery
            .url
            .as_str()
            .ends_with("/hooks/orders")
    );

    // The log says where the status server listens; it is ready, and every metric has help.
    let addr: SocketAddr = text
        .lines()
        .find_map(|l| l.split("status server on http://").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no status server line:\n{text}"))
        .parse()
        .unwrap();
    let out = health(addr);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metrics = walhook_metrics(addr);
    let typed: BTreeSet<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let helped: BTreeSet<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    assert!(typed.len() >= 9, "{metrics}");
    assert_eq!(typed, helped, "every metric has # HELP:\n{metrics}");

    // While it delivers, a summary line every 10 s says so.
    let summary = wait_for("a summary line", Duration::from_secs(20), || {
        stderr
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains("walhook::summary: last 10s: "))
            .cloned()
    });
    let delivered: u64 = summary
        .split("last 10s: ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{summary}"));
    assert!(delivered > 0, "{summary}");

    // Ctrl-C: exit 0 within seconds, nothing left.
    let pid = demo.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let started = Instant::now();
    let status = wait_for("exit", Duration::from_secs(20), || {
        demo.0.try_wait().unwrap()
    });
    assert!(status.success(), "exit {status}:\n{}", log());
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    let running = processes_under(tmp.path());
    assert!(running.is_empty(), "still running: {running:?}");
    assert!(!health(addr).status.success(), "the status server is gone");
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        log().ends_with("walhook demo: stopped; the cluster and its files are removed"),
        "{}",
        log()
    );
}

fn walhook_metrics(addr: SocketAddr) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let answer = rt.block_on(walhook::probe::get(addr, "/metrics")).unwrap();
    assert_eq!(answer.status, 200);
    answer.body
}

/// The metric names a deploy file uses (histogram/summary series reduced to their metric).
fn names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("walhook_") {
        let start = i + at;
        let end = start
            + text[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(text.len() - start);
        // Not a part of a longer word (e.g. a dashboard uid).
        if start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_') {
            let name = &text[start..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            names.insert(base.to_owned());
        }
        i = end;
    }
    names
}

#[test]
fn deploy_files_use_only_metrics_walhook_exports() {
    let known: BTreeSet<&str> = walhook::server::METRICS.iter().map(|m| m.0).collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let dashboard = std::fs::read_to_string(root.join("grafana-dashboard.json")).unwrap();
    let json: Value = serde_json::from_str(&dashboard).unwrap();
    assert!(json["panels"].as_array().unwrap().len() >= 8);
    let alerts = std::fs::read_to_string(root.join("prometheus-alerts.yml")).unwrap();
    for (file, text) in [
        ("grafana-dashboard.json", &dashboard),
        ("prometheus-alerts.yml", &alerts),
    ] {
        let used = names_in(text);
        assert!(used.len() >= 4, "{file}: {used:?}");
        let unknown: Vec<&String> = used
            .iter()
            .filter(|n| !known.contains(n.as_str()))
            .collect();
        assert!(
            unknown.is_empty(),
            "{file} uses metrics walhook does not export: {unknown:?}"
        );
    }
}

#[test]
fn the_names_in_a_query_are_found() {
    let names = names_in(
        r#"rate(walhook_deliveries_total{x="y"}[5m]) walhook_delivery_seconds_count "uid":"walhook""#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["walhook_deliveries_total", "walhook_delivery_seconds"]
    );
}

/// The metric names the code records (`counter!("walhook_…"`, `gauge!(…`, `histogram!(…`).
fn recorded_metrics(dir: &Path, found: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            recorded_metrics(&path, found);
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for mac in ["counter!(", "gauge!(", "histogram!("] {
            for (at, _) in text.match_indices(mac) {
                let rest = text[at + mac.len()..].trim_start();
                if let Some(name) = rest
                    .strip_prefix('"')
                    .and_then(|r| r.split('"').next())
                    .filter(|n| n.starts_with("walhook_"))
                {
                    found.insert(name.to_owned());
                }
            }
        }
    }
}

#[test]
fn every_metric_the_code_records_has_help_text() {
    let mut recorded = BTreeSet::new();
    recorded_metrics(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut recorded,
    );
    assert!(recorded.len() >= 10, "{recorded:?}");
    let described: BTreeSet<String> = walhook::server::METRICS
        .iter()
        .map(|m| m.0.to_owned())
        .collect();
    let missing: Vec<&String> = recorded.difference(&described).collect();
    assert!(
        missing.is_empty(),
        "no entry in server::METRICS (# HELP): {missing:?}"
    );
    let stale: Vec<&String> = described.difference(&recorded).collect();
    assert!(stale.is_empty(), "described but never recorded: {stale:?}");
}
