//! Parking, dead events and replay: a failing target never holds the database's WAL. A
//! real Postgres, real receivers, the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use support::daemon::*;
use support::pg::Cluster;
use support::receiver::{Receiver, Request};

/// Short retries; a head is parked after 2 s of failing.
const PARK: &str =
    "timeout = \"2s\"\nretry = { initial = \"50ms\", max = \"500ms\", park_after = \"2s\" }";

fn parked_rows(pg: &Cluster, db: &str, trigger: &str, state: &str) -> usize {
    pg.psql(
        db,
        &format!(
            "SELECT count(*) FROM walhook.parked WHERE trigger = '{trigger}' AND state = '{state}'"
        ),
    )
    .parse()
    .unwrap()
}

/// A database with table `t` made by `schema`, a receiver answering 503, and a config of
/// one trigger `t` on it with `defaults` and the `extra` trigger lines.
fn target_down(
    schema: &str,
    defaults: &str,
    extra: &[&str],
) -> (
    Cluster,
    String,
    Receiver,
    tempfile::TempDir,
    std::path::PathBuf,
) {
    let (pg, db) = Cluster::with_app_db(schema);
    let rx = Receiver::start();
    let dir = tempdir();
    rx.set_status(503);
    let triggers = trigger_toml("t", "t", &rx.url("/t"), extra);
    let config = write_config(dir.path(), &pg.url(&db), defaults, &triggers);
    (pg, db, rx, dir, config)
}

/// Waits until `trigger` has `n` rows in `state`.
fn wait_parked(pg: &Cluster, db: &str, trigger: &str, state: &str, n: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let found = parked_rows(pg, db, trigger, state);
        if found == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{found} {state} rows of {trigger}, not {n}, after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn status_json(config: &std::path::Path) -> serde_json::Value {
    let (_, stdout, stderr) = walhook(&["status", "--json", "--config", config.to_str().unwrap()]);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("status --json: {e}: {stdout}{stderr}"))
}

/// Accepted requests per row id: (event type, webhook-id), in the order answered.
fn by_row(reqs: &[Request]) -> HashMap<i64, Vec<(String, String)>> {
    let mut out: HashMap<i64, Vec<(String, String)>> = HashMap::new();
    for r in reqs.iter().filter(|r| r.ok()) {
        let j = r.json();
        let id = j["record"]["id"].as_i64().unwrap();
        out.entry(id).or_default().push((
            j["type"].as_str().unwrap().to_owned(),
            r.header("webhook-id").to_owned(),
        ));
    }
    out
}

fn accepted_ids(reqs: &[Request]) -> HashSet<String> {
    reqs.iter()
        .filter(|r| r.ok())
        .map(|r| r.header("webhook-id").to_owned())
        .collect()
}

#[test]
fn an_outage_parks_everything_the_slot_keeps_up_and_recovery_delivers_in_order() {
    let (pg, db) = Cluster::with_app_db("CREATE TABLE t (id int PRIMARY KEY, n int)");
    let (down, live) = (Receiver::start(), Receiver::start());
    let dir = tempdir();
    down.set_status(503);
    let triggers = [
        trigger_toml("down", "t", &down.url("/down"), &["concurrency = 4"]),
        trigger_toml("live", "t", &live.url("/live"), &[]),
    ]
    .join("\n");
    let config = write_config(dir.path(), &pg.url(&db), PARK, &triggers);
    let daemon = Walhook::streaming(&config);
    // 10,000 changes: each of 5,000 rows is created, then updated.
    for b in 0..5 {
        pg.psql(
            &db,
            &format!(
                "INSERT INTO t SELECT g, 0 FROM generate_series({}, {}) g",
                b * 1000 + 1,
                b * 1000 + 1000
            ),
        );
    }
    for b in 0..5 {
        pg.psql(
            &db,
            &format!(
                "UPDATE t SET n = 1 WHERE id BETWEEN {} AND {}",
                b * 1000 + 1,
                b * 1000 + 1000
            ),
        );
    }
    // During the outage everything is parked and the slot's confirmed position reaches the
    // WAL end.
    let started = Instant::now();
    wait_parked(&pg, &db, "down", "pending", 10_000, Duration::from_secs(60));
    wait_confirmed(&pg, &db, current_lsn(&pg, &db), Duration::from_secs(30));
    eprintln!(
        "slot caught up with the WAL {:?} into the outage",
        started.elapsed()
    );
    assert!(down.delivered().is_empty());
    daemon.wait_log("parking:", 1, Duration::from_secs(5));
    // The other trigger on the same table got everything live.
    let live_reqs = live.wait_until(Duration::from_secs(30), "every live event", |r| {
        accepted_ids(r).len() == 10_000
    });
    let status = status_json(&config);
    assert_eq!(status["triggers"]["down"]["parked"], 10_000, "{status}");
    assert_eq!(status["triggers"]["down"]["dead"], 0, "{status}");
    assert!(
        status["triggers"]["down"]["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("503"),
        "{status}"
    );
    assert_eq!(status["triggers"]["live"]["parked"], 0, "{status}");

    // kill -9 while parked, then again while unparking: nothing is lost.
    daemon.kill9();
    down.set_status(200);
    down.set_delay(Duration::from_millis(3), true);
    let daemon = Walhook::streaming(&config);
    daemon.wait_log(
        "walhook.parked holds pending events",
        1,
        Duration::from_secs(10),
    );
    down.wait_until(Duration::from_secs(60), "part of the parked events", |r| {
        accepted_ids(r).len() > 1500
    });
    daemon.kill9();
    down.set_delay(Duration::ZERO, false);
    let daemon = Walhook::streaming(&config);
    let reqs = down.wait_until(Duration::from_secs(120), "every parked event", |r| {
        accepted_ids(r).len() == 10_000
    });
    daemon.wait_log("back to live delivery", 1, Duration::from_secs(30));
    assert_eq!(parked_rows(&pg, &db, "down", "pending"), 0);

    // The same ids and the same bodies as live delivery (up to the trigger's name)...
    // (event ids end in the trigger's name).
    let as_down = |id: &str| id.replace("-live", "-down");
    let live_ids: HashSet<String> = accepted_ids(&live_reqs)
        .iter()
        .map(|i| as_down(i))
        .collect();
    let down_ids = accepted_ids(&reqs);
    assert!(
        down_ids == live_ids,
        "{} ids only parked, {} only live",
        down_ids.difference(&live_ids).count(),
        live_ids.difference(&down_ids).count()
    );
    let live_bodies: HashMap<String, &[u8]> = live_reqs
        .iter()
        .map(|r| (as_down(r.header("webhook-id")), &r.body[..]))
        .collect();
    for r in reqs.iter().filter(|r| r.ok()) {
        let expected = String::from_utf8_lossy(live_bodies[r.header("webhook-id")])
            .replace("\"trigger\":\"live\"", "\"trigger\":\"down\"")
            .replace("-live\"", "-down\"");
        assert_eq!(String::from_utf8_lossy(&r.body), expected);
    }
    // ...and each row's events in commit order (a redelivery after kill -9 repeats them in
    // order too).
    for (row, events) in by_row(&reqs) {
        let first = |ty: &str| events.iter().position(|(t, _)| t == ty).unwrap();
        let last = |ty: &str| events.iter().rposition(|(t, _)| t == ty).unwrap();
        assert!(
            first("create") < first("update") && last("create") < last("update"),
            "row {row}: {events:?}"
        );
    }
    // Live again: a new change goes straight to the target.
    pg.psql(&db, "INSERT INTO t VALUES (100001, 0)");
    down.wait_until(
        Duration::from_secs(10),
        "a live event after recovery",
        |r| by_row(r).contains_key(&100_001),
    );
    wait_confirmed(&pg, &db, current_lsn(&pg, &db), Duration::from_secs(30));
    drop(daemon);
}

#[test]
fn a_poison_row_goes_dead_the_rest_flows_and_replay_sends_it_again() {
    let (pg, db) = Cluster::with_app_db("CREATE TABLE t (id int PRIMARY KEY, tag text)");
    let rx = Receiver::start();
    let dir = tempdir();
    rx.set_status_for("poison", 400);
    let triggers = trigger_toml(
        "t",
        "t",
        &rx.url("/t"),
        &["on_4xx = \"dead\"", "concurrency = 2"],
    );
    let config = write_config(dir.path(), &pg.url(&db), FAST, &triggers);
    let daemon = Walhook::streaming(&config);
    pg.psql(
        &db,
        "INSERT INTO t SELECT g, CASE WHEN g = 13 THEN 'poison' ELSE 'ok' END \
         FROM generate_series(1, 50) g",
    );
    pg.psql(&db, "UPDATE t SET tag = 'fixed' WHERE id = 13");
    pg.psql(
        &db,
        "INSERT INTO t SELECT g, 'ok' FROM generate_series(51, 60) g",
    );
    // Every other row, and the poison row's later update, arrive.
    let reqs = rx.wait_until(Duration::from_secs(30), "everything but the poison", |r| {
        delivered_rows(r).len() == 60 && by_row(r)[&13].iter().any(|(t, _)| t == "update")
    });
    let rejected: Vec<&Request> = reqs.iter().filter(|r| r.status == 400).collect();
    assert_eq!(rejected.len(), 1, "a dead event is not retried");
    let poison_id = rejected[0].header("webhook-id").to_owned();
    assert!(by_row(&reqs)[&13].iter().all(|(t, _)| t == "update"));
    wait_confirmed(&pg, &db, current_lsn(&pg, &db), Duration::from_secs(30));
    daemon.wait_log("went dead", 1, Duration::from_secs(5));
    assert_eq!(parked_rows(&pg, &db, "t", "dead"), 1);
    let status = status_json(&config);
    assert_eq!(status["triggers"]["t"]["dead"], 1, "{status}");
    assert_eq!(
        status["triggers"]["t"]["last_error"], "HTTP 400",
        "{status}"
    );
    let (code, text, _) = walhook(&["status", "--config", config.to_str().unwrap()]);
    assert!(
        code.success(),
        "dead events are a warning, not unhealthy: {text}"
    );
    assert!(text.contains("0 parked, 1 dead"), "{text}");

    // Replay sends it again, with the same id and body.
    rx.set_status_for("", 0);
    let (code, out, err) = walhook(&[
        "replay",
        "--trigger",
        "t",
        "--since",
        "1h",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(code.success(), "{out}{err}");
    assert!(out.contains("1 dead event(s)"), "{out}");
    let reqs = rx.wait_until(Duration::from_secs(30), "the replayed event", |r| {
        r.iter()
            .any(|r| r.ok() && r.header("webhook-id") == poison_id)
    });
    let replayed = reqs
        .iter()
        .find(|r| r.ok() && r.header("webhook-id") == poison_id)
        .unwrap();
    assert_eq!(replayed.body, rejected[0].body);
    let deadline = Instant::now() + Duration::from_secs(10);
    while parked_rows(&pg, &db, "t", "dead") + parked_rows(&pg, &db, "t", "pending") > 0 {
        assert!(
            Instant::now() < deadline,
            "the replayed row was not deleted"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Nothing left to replay.
    let (_, out, _) = walhook(&["replay", "--config", config.to_str().unwrap()]);
    assert!(out.contains("no dead events matched"), "{out}");
    drop(daemon);
}

#[test]
fn past_give_up_after_parked_events_go_dead_and_replay_brings_them_back() {
    let defaults = "timeout = \"2s\"\nretry = { initial = \"50ms\", max = \"300ms\", park_after = \"1s\", give_up_after = \"3s\" }";
    let (pg, db, rx, _dir, config) =
        target_down("CREATE TABLE t (id int PRIMARY KEY)", defaults, &[]);
    let daemon = Walhook::streaming(&config);
    pg.psql(&db, "INSERT INTO t SELECT g FROM generate_series(1, 20) g");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status_json(&config);
        if s["triggers"]["t"]["dead"] == 20 {
            assert_eq!(s["triggers"]["t"]["parked"], 0, "{s}");
            break;
        }
        assert!(Instant::now() < deadline, "not dead in time: {s}");
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_confirmed(&pg, &db, current_lsn(&pg, &db), Duration::from_secs(10));
    // Dead events are not retried any more.
    std::thread::sleep(Duration::from_secs(1));
    let attempts = rx.requests().len();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(rx.requests().len(), attempts, "dead events were retried");
    rx.set_status(200);
    let (code, out, err) = walhook(&["replay", "--dead", "--config", config.to_str().unwrap()]);
    assert!(code.success(), "{out}{err}");
    assert!(out.contains("20 dead event(s)"), "{out}");
    rx.wait_until(Duration::from_secs(30), "every replayed row", |r| {
        delivered_rows(r).len() == 20
    });
    drop(daemon);
}

#[test]
fn a_park_table_that_cannot_be_written_keeps_the_events_pending() {
    let (pg, db, rx, _dir, config) = target_down("CREATE TABLE t (id int PRIMARY KEY)", PARK, &[]);
    let daemon = Walhook::streaming(&config);
    pg.psql(
        &db,
        "ALTER TABLE walhook.parked ADD CONSTRAINT test_read_only CHECK (false) NOT VALID",
    );
    let before = current_lsn(&pg, &db);
    pg.psql(&db, "INSERT INTO t SELECT g FROM generate_series(1, 10) g");
    // The insert position: the write position may still be short of the commit.
    let after = lsn(&pg.psql(&db, "SELECT pg_current_wal_insert_lsn()"));
    daemon.wait_log("cannot write to walhook.parked", 1, Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(2));
    let confirmed = slot_confirmed(&pg, &db).unwrap();
    assert!(
        confirmed < after,
        "the slot moved past events that were neither delivered nor parked ({confirmed} ≥ {after}; before {before})"
    );
    // Writable again: they are parked and the slot moves on; then delivered.
    pg.psql(
        &db,
        "ALTER TABLE walhook.parked DROP CONSTRAINT test_read_only",
    );
    wait_confirmed(&pg, &db, after, Duration::from_secs(30));
    assert_eq!(parked_rows(&pg, &db, "t", "pending"), 10);
    rx.set_status(200);
    rx.wait_until(Duration::from_secs(30), "every row", |r| {
        delivered_rows(r).len() == 10
    });
    drop(daemon);
}

#[test]
fn a_fast_or_smart_shutdown_of_postgres_while_the_target_is_down_is_not_held_up() {
    let defaults =
        "timeout = \"2s\"\nretry = { initial = \"50ms\", max = \"500ms\", park_after = \"3s\" }";
    let (mut pg, db, rx, _dir, config) =
        target_down("CREATE TABLE t (id int PRIMARY KEY)", defaults, &[]);
    let mut daemon = Walhook::streaming(&config);
    for (round, mode) in ["fast", "smart"].into_iter().enumerate() {
        let base = round as i64 * 100;
        pg.psql(
            &db,
            &format!(
                "INSERT INTO t SELECT g FROM generate_series({}, {}) g",
                base + 1,
                base + 100
            ),
        );
        let attempts = rx.requests().len();
        rx.wait_until(Duration::from_secs(10), "attempts of the new rows", |r| {
            r.len() > attempts
        });
        let started = Instant::now();
        pg.stop_with(mode);
        let took = started.elapsed();
        eprintln!("pg_ctl stop -m {mode} took {took:?} with park_after = 3s");
        assert!(
            took < Duration::from_secs(3 + 8),
            "pg_ctl stop -m {mode} took {took:?} (park_after is 3 s)"
        );
        pg.boot();
        daemon.wait_log("streaming slot=", round + 2, Duration::from_secs(60));
    }
    rx.set_status(200);
    rx.wait_until(
        Duration::from_secs(60),
        "every row after the restarts",
        |r| delivered_rows(r).len() == 200,
    );
    assert!(daemon.is_running());
}

#[test]
fn batches_are_parked_and_unparked_as_batches() {
    let (pg, db, rx, _dir, config) = target_down(
        "CREATE TABLE t (id int PRIMARY KEY, n int)",
        PARK,
        &["batch = 10", "concurrency = 2"],
    );
    let daemon = Walhook::streaming(&config);
    pg.psql(
        &db,
        "INSERT INTO t SELECT g, 0 FROM generate_series(1, 200) g",
    );
    pg.psql(&db, "UPDATE t SET n = 1");
    wait_parked(&pg, &db, "t", "pending", 400, Duration::from_secs(30));
    rx.set_status(200);
    let reqs = rx.wait_until(Duration::from_secs(30), "every event", |r| {
        r.iter()
            .filter(|r| r.ok())
            .map(|r| r.json()["events"].as_array().map_or(0, Vec::len))
            .sum::<usize>()
            >= 400
    });
    // Batches of up to 10, each row's create before its update.
    let mut seen: HashMap<i64, Vec<String>> = HashMap::new();
    for r in reqs.iter().filter(|r| r.ok()) {
        let events = r.json()["events"].as_array().unwrap().clone();
        assert!(!events.is_empty() && events.len() <= 10, "{}", events.len());
        for e in events {
            seen.entry(e["record"]["id"].as_i64().unwrap())
                .or_default()
                .push(e["type"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(seen.len(), 200);
    for (row, types) in &seen {
        assert_eq!(
            types.first().map(String::as_str),
            Some("create"),
            "row {row}: {types:?}"
        );
        assert_eq!(
            types.last().map(String::as_str),
            Some("update"),
            "row {row}: {types:?}"
        );
    }
    drop(daemon);
}

#[test]
fn park_url_keeps_parked_events_in_another_database() {
    let (pg, db) = Cluster::with_app_db("CREATE TABLE t (id int PRIMARY KEY)");
    let park_db = pg.create_db("parkdb");
    let rx = Receiver::start();
    let dir = tempdir();
    rx.set_status(503);
    let triggers = format!(
        "[park]\nurl = \"{}\"\n\n{}",
        pg.url(&park_db),
        trigger_toml("t", "t", &rx.url("/t"), &[])
    );
    let config = write_config(dir.path(), &pg.url(&db), PARK, &triggers);
    let (code, out, _) = walhook(&["check", "--config", config.to_str().unwrap()]);
    assert!(code.success(), "{out}");
    assert!(
        out.contains("run creates the walhook schema there"),
        "{out}"
    );
    let daemon = Walhook::streaming(&config);
    pg.psql(&db, "INSERT INTO t SELECT g FROM generate_series(1, 50) g");
    wait_parked(&pg, &park_db, "t", "pending", 50, Duration::from_secs(30));
    wait_confirmed(&pg, &db, current_lsn(&pg, &db), Duration::from_secs(30));
    assert_eq!(
        pg.psql(&db, "SELECT count(*) FROM walhook.parked"),
        "0",
        "nothing parked in the source database"
    );
    let status = status_json(&config);
    assert_eq!(status["triggers"]["t"]["parked"], 50, "{status}");
    rx.set_status(200);
    rx.wait_until(Duration::from_secs(30), "every parked row", |r| {
        delivered_rows(r).len() == 50
    });
    drop(daemon);
}

#[test]
fn a_standby_does_not_unpark_and_takes_the_parked_events_over() {
    let (pg, db, rx, _dir, config) = target_down("CREATE TABLE t (id int PRIMARY KEY)", PARK, &[]);
    let active = Walhook::streaming(&config);
    let standby = Walhook::start(&config);
    standby.wait_log("waiting as a standby", 1, Duration::from_secs(20));
    pg.psql(&db, "INSERT INTO t SELECT g FROM generate_series(1, 30) g");
    wait_parked(&pg, &db, "t", "pending", 30, Duration::from_secs(30));
    // The standby sends nothing: every request so far is the active one's (each parked row
    // was attempted by it, or by its unparker); stopping it, no more arrive until takeover.
    active.kill9();
    let before = rx.requests().len();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(rx.requests().len(), before, "a standby sent requests");
    rx.set_status(200);
    standby.wait_log("streaming slot=", 1, Duration::from_secs(30));
    standby.wait_log(
        "walhook.parked holds pending events",
        1,
        Duration::from_secs(10),
    );
    rx.wait_until(Duration::from_secs(30), "every parked row", |r| {
        delivered_rows(r).len() == 30
    });
    wait_parked(&pg, &db, "t", "pending", 0, Duration::from_secs(10));
}
