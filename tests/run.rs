//! `walhook run` end to end: a real Postgres, a real HTTP receiver, the real binary as a
//! subprocess (killed, stopped, restarted), and the slot's confirmed position read over SQL.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use support::daemon::*;
use support::pg::Cluster;
use support::receiver::{Receiver, Request};
use walhook::lsn::Lsn;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// What most tests start from: database `app` made by a schema, a receiver, a directory.
struct Scenario {
    pg: Cluster,
    db: String,
    rx: Receiver,
    dir: tempfile::TempDir,
}

impl Scenario {
    fn start(schema: &str) -> Scenario {
        Scenario::start_with(&[], schema)
    }

    /// With extra `postgresql.conf` lines.
    fn start_with(extra_conf: &[&str], schema: &str) -> Scenario {
        let (pg, db) = Cluster::with_conf_and_app_db(extra_conf, schema);
        let rx = Receiver::start();
        let dir = tempdir();
        Scenario { pg, db, rx, dir }
    }
}

// ---------------------------------------------------------------- events

fn bodies(reqs: &[Request]) -> Vec<Value> {
    reqs.iter().map(Request::json).collect()
}

fn commit_lsn(event: &Value) -> Lsn {
    lsn(event["commit_lsn"].as_str().expect("commit_lsn"))
}

/// Same id ⇒ same bytes: a redelivery must be indistinguishable from the first attempt.
fn assert_stable_ids(reqs: &[Request]) -> usize {
    let mut first: HashMap<String, &[u8]> = HashMap::new();
    let mut redelivered = 0;
    for r in reqs {
        let id = r.json()["id"].as_str().expect("id").to_owned();
        assert_eq!(r.header("webhook-id"), id, "webhook-id header vs body id");
        match first.get(&id) {
            Some(body) => {
                redelivered += 1;
                assert_eq!(
                    *body,
                    &r.body[..],
                    "event {id} was redelivered with a different body"
                );
            }
            None => {
                first.insert(id, &r.body[..]);
            }
        }
    }
    redelivered
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

// ================================================================ 1. end to end

#[test]
fn events_headers_and_signatures_end_to_end() {
    let Scenario { pg, db, rx, dir } = Scenario::start(
        "CREATE TABLE orders (id int PRIMARY KEY, status text NOT NULL, amount int NOT NULL, note text);
         ALTER TABLE orders REPLICA IDENTITY FULL;
         CREATE TABLE customers (id int PRIMARY KEY, name text, email text);
         ALTER TABLE customers REPLICA IDENTITY FULL;",
    );
    let triggers = format!(
        r#"
[[trigger]]
name = "order-created"
table = "orders"
events = ["create"]
url = "{created}"

[[trigger]]
name = "order-paid"
table = "public.orders"
url = "{paid}"
when = "record.status == 'paid' && old_record.status != 'paid'"

[[trigger]]
name = "customer-email"
table = "customers"
events = ["update"]
changed = ["email"]
columns = ["id", "email"]
method = "PUT"
url = "{email}"

[[trigger]]
name = "customer-signed"
table = "customers"
url = "{signed}"
secret = "{SECRET}"
headers = {{ Authorization = "Bearer t0ken", X-Tenant = "acme" }}
"#,
        created = rx.url("/created"),
        paid = rx.url("/paid"),
        email = rx.url("/email"),
        signed = rx.url("/signed"),
    );
    let config = write_config(dir.path(), &pg.url(&db), FAST, &triggers);
    let _walhook = Walhook::streaming(&config);

    let started = unix_now();
    for sql in [
        "INSERT INTO orders VALUES (1, 'new', 10, NULL), (2, 'paid', 20, 'x')",
        "UPDATE orders SET status = 'paid' WHERE id = 1",
        "UPDATE orders SET amount = 30 WHERE id = 2",
        "DELETE FROM orders WHERE id = 2",
        "INSERT INTO customers VALUES (1, 'Ann', 'ann@example.com')",
        "UPDATE customers SET name = 'Anna' WHERE id = 1",
        "UPDATE customers SET email = 'anna@example.com' WHERE id = 1",
        "DELETE FROM customers WHERE id = 1",
    ] {
        pg.psql(&db, sql);
    }
    let end = current_lsn(&pg, &db);
    let expected = [("/created", 2), ("/paid", 1), ("/email", 1), ("/signed", 4)];
    rx.wait_until(Duration::from_secs(30), "all expected events", |reqs| {
        expected
            .iter()
            .all(|(path, n)| reqs.iter().filter(|r| r.path == *path).count() >= *n)
    });
    // Confirmed past the last commit ⇒ every event walhook made was delivered (and logged).
    wait_confirmed(&pg, &db, end, Duration::from_secs(30));
    let reqs = rx.requests();
    let by_path =
        |p: &str| -> Vec<Request> { reqs.iter().filter(|r| r.path == p).cloned().collect() };
    for (path, n) in expected {
        assert_eq!(
            by_path(path).len(),
            n,
            "{path}: {:#?}",
            bodies(&by_path(path))
        );
    }
    assert_eq!(reqs.len(), 8, "no other requests");

    // Headers on every request.
    let mut ids = HashSet::new();
    for r in &reqs {
        assert!(r.ok());
        let body = r.json();
        assert_eq!(r.header("content-type"), "application/json");
        assert!(
            r.header("user-agent").starts_with("walhook/"),
            "user-agent {:?}",
            r.header("user-agent")
        );
        assert_eq!(r.header("webhook-id"), body["id"].as_str().unwrap());
        assert!(!r.header("webhook-id").contains('.'));
        let ts: i64 = r.header("webhook-timestamp").parse().expect("timestamp");
        assert!(
            (started - 5..=unix_now() + 5).contains(&ts),
            "webhook-timestamp {ts}"
        );
        assert!(ids.insert(r.header("webhook-id").to_owned()), "ids unique");
        assert_eq!(body["schema"], "public");
        assert!(body["xid"].as_u64().is_some());
        assert!(body["committed_at"].as_str().unwrap().ends_with('Z'));
        commit_lsn(&body);
        let signed = r.path == "/signed";
        assert_eq!(r.method, if r.path == "/email" { "PUT" } else { "POST" });
        if signed {
            assert!(r.signed_by(SECRET), "bad signature on {body}");
            assert!(!walhook::delivery::verify(
                "whsec_AAAAAAAAAAAAAAAAAAAAAAAA",
                r.header("webhook-id"),
                r.header("webhook-timestamp"),
                &r.body,
                r.header("webhook-signature"),
            ));
            assert_eq!(r.header("authorization"), "Bearer t0ken");
            assert_eq!(r.header("x-tenant"), "acme");
        } else {
            assert!(!r.headers.contains_key("webhook-signature"), "{}", r.path);
            assert!(!r.headers.contains_key("x-tenant"));
        }
    }

    // order-created: both inserts, nothing else.
    let created = bodies(&by_path("/created"));
    let mut created_ids: Vec<i64> = created
        .iter()
        .map(|e| e["record"]["id"].as_i64().unwrap())
        .collect();
    created_ids.sort();
    assert_eq!(created_ids, [1, 2]);
    for e in &created {
        assert_eq!(e["type"], "create");
        assert_eq!(e["trigger"], "order-created");
        assert_eq!(e["table"], "orders");
        assert!(e["old_record"].is_null());
        assert!(e.get("changed").is_none());
    }
    let two = created.iter().find(|e| e["record"]["id"] == 2).unwrap();
    assert_eq!(
        two["record"],
        json!({"id": 2, "status": "paid", "amount": 20, "note": "x"})
    );

    // order-paid: only the update that made order 1 paid (not the insert of a paid order,
    // not the amount change of an already paid one, not the delete).
    let paid = &bodies(&by_path("/paid"))[0];
    assert_eq!(paid["type"], "update");
    assert_eq!(paid["trigger"], "order-paid");
    assert_eq!(
        paid["record"],
        json!({"id": 1, "status": "paid", "amount": 10, "note": null})
    );
    assert_eq!(
        paid["old_record"],
        json!({"id": 1, "status": "new", "amount": 10, "note": null})
    );
    assert_eq!(paid["changed"], json!(["status"]));

    // customer-email: only the update that changed email, projected to (id, email).
    let email = &bodies(&by_path("/email"))[0];
    assert_eq!(email["type"], "update");
    assert_eq!(email["trigger"], "customer-email");
    assert_eq!(email["table"], "customers");
    assert_eq!(
        email["record"],
        json!({"id": 1, "email": "anna@example.com"})
    );
    let keys: Vec<&String> = email["record"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["id", "email"], "projection keeps the listed order");
    assert_eq!(
        email["old_record"],
        json!({"id": 1, "email": "ann@example.com"})
    );
    assert_eq!(email["changed"], json!(["email"]));

    // customer-signed: every change of the row, in commit order.
    let signed = bodies(&by_path("/signed"));
    let types: Vec<&str> = signed.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["create", "update", "update", "delete"]);
    assert!(signed.iter().all(|e| e["trigger"] == "customer-signed"));
    assert_eq!(
        signed[0]["record"],
        json!({"id": 1, "name": "Ann", "email": "ann@example.com"})
    );
    assert!(signed[0]["old_record"].is_null());
    assert_eq!(signed[1]["changed"], json!(["name"]));
    assert_eq!(
        signed[1]["old_record"],
        json!({"id": 1, "name": "Ann", "email": "ann@example.com"})
    );
    assert_eq!(signed[2]["changed"], json!(["email"]));
    assert!(signed[3]["record"].is_null());
    assert_eq!(
        signed[3]["old_record"],
        json!({"id": 1, "name": "Anna", "email": "anna@example.com"})
    );
    let lsns: Vec<Lsn> = signed.iter().map(commit_lsn).collect();
    assert!(lsns.windows(2).all(|w| w[0] < w[1]), "{lsns:?}");
}

// ================================================================ 2. crash safety

/// The workload: big and small transactions of inserts and updates, all autocommitted
/// statements (one transaction each). Every row starts at v = 0 and each update adds 1.
fn crash_workload() -> String {
    let mut sql = String::new();
    let mut next = 1;
    let big_insert = |sql: &mut String, n: i32, next: &mut i32| {
        sql.push_str(&format!(
            "INSERT INTO items SELECT g, 0, repeat('x', g % 50) FROM generate_series({}, {}) g;\n",
            *next,
            *next + n - 1
        ));
        *next += n;
    };
    let small_inserts = |sql: &mut String, txns: i32, rows: i32, next: &mut i32| {
        for _ in 0..txns {
            sql.push_str(&format!(
                "INSERT INTO items SELECT g, 0, 'small' FROM generate_series({}, {}) g;\n",
                *next,
                *next + rows - 1
            ));
            *next += rows;
        }
    };
    let small_updates = |sql: &mut String, txns: i32, upto: i32| {
        for k in 0..txns {
            sql.push_str(&format!(
                "UPDATE items SET v = v + 1 WHERE id % {txns} = {k} AND id < {upto};\n"
            ));
        }
    };
    big_insert(&mut sql, 5000, &mut next);
    small_inserts(&mut sql, 100, 10, &mut next);
    small_updates(&mut sql, 20, next);
    big_insert(&mut sql, 5000, &mut next);
    sql.push_str("UPDATE items SET v = v + 1 WHERE id <= 3000;\n");
    small_inserts(&mut sql, 100, 10, &mut next);
    small_updates(&mut sql, 25, next);
    big_insert(&mut sql, 4000, &mut next);
    sql
}

fn spawn_psql_file(pg: &Cluster, db: &str, file: &Path) -> Child {
    Command::new(support::pg::client_tool(&pg.bin, "psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
            "-U",
            "postgres",
        ])
        .args(["-d", db, "-f"])
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn psql")
}

fn wait_child(child: &mut Child, what: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            assert!(status.success(), "{what} failed: {err}");
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigkill_loses_nothing_and_redelivers_with_the_same_ids() {
    let t0 = Instant::now();
    let Scenario { pg, db, rx, dir } =
        Scenario::start("CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL, pad text)");
    let triggers = trigger_toml("items", "items", &rx.url("/items"), &["concurrency = 32"]);
    let config = write_config(dir.path(), &pg.url(&db), FAST, &triggers);
    let mut walhook = Walhook::streaming(&config);

    let script = dir.path().join("workload.sql");
    std::fs::write(&script, crash_workload()).unwrap();
    let mut psql = spawn_psql_file(&pg, &db, &script);

    // Kill at random-ish points: after a random number of further deliveries, and once
    // shortly after a restart (before or while it connects).
    let mut kills = 0;
    let mut early_kill_done = false;
    for _ in 0..4 {
        let target = rx.arrived() + 2000 + fastrand::usize(0..3000);
        let deadline = Instant::now() + Duration::from_secs(30);
        while rx.arrived() < target && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        walhook.kill9();
        kills += 1;
        walhook = Walhook::start(&config);
        if !early_kill_done {
            early_kill_done = true;
            std::thread::sleep(Duration::from_millis(fastrand::u64(0..400)));
            walhook.kill9();
            kills += 1;
            walhook = Walhook::start(&config);
        }
    }
    wait_child(&mut psql, "the workload", Duration::from_secs(60));
    let end = current_lsn(&pg, &db);
    let written = Instant::now();

    // Expected: every row's insert (v = 0) and one update per value it went through.
    let mut expected: HashSet<(i64, String, i64)> = HashSet::new();
    for line in pg.psql(&db, "SELECT id, v FROM items").lines() {
        let (id, v) = line.split_once('|').unwrap();
        let (id, v): (i64, i64) = (id.parse().unwrap(), v.parse().unwrap());
        expected.insert((id, "create".into(), 0));
        for k in 1..=v {
            expected.insert((id, "update".into(), k));
        }
    }
    assert!(expected.len() > 20_000, "{} changes", expected.len());
    let seen_of = |reqs: &[Request]| -> HashSet<(i64, String, i64)> {
        reqs.iter()
            .filter(|r| r.ok())
            .map(|r| {
                let e = r.json();
                (
                    e["record"]["id"].as_i64().unwrap(),
                    e["type"].as_str().unwrap().to_owned(),
                    e["record"]["v"].as_i64().unwrap(),
                )
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let seen = seen_of(&rx.requests());
        let missing = expected.difference(&seen).count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} committed changes were never delivered",
            expected.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let confirmed = wait_confirmed(&pg, &db, end, Duration::from_secs(30));
    assert!(walhook.is_running());
    let reqs = rx.requests();
    let seen = seen_of(&reqs);
    let extra: Vec<_> = seen.difference(&expected).take(5).collect();
    assert!(extra.is_empty(), "events for changes never made: {extra:?}");
    let redelivered = assert_stable_ids(&reqs);
    eprintln!(
        "crash test: {} changes, {} requests ({redelivered} redeliveries), {kills} kills, \
         workload done at {:?}, caught up {:?} later, confirmed {confirmed} ≥ {end}, total {:?}",
        expected.len(),
        reqs.len(),
        written - t0,
        written.elapsed(),
        t0.elapsed()
    );
    assert!(
        redelivered > 0,
        "kill -9 mid-stream should cause redeliveries"
    );
}

// ================================================================ 3. target outage

#[test]
fn an_outage_holds_the_slot_back_and_loses_nothing() {
    let Scenario { pg, db, rx, dir } =
        Scenario::start("CREATE TABLE t (id int PRIMARY KEY, v text)");
    let triggers = trigger_toml("t", "t", &rx.url("/t"), &["concurrency = 4"]);
    // retry.max above Retry-After, so the server's 1 s is honoured rather than capped.
    let defaults = "timeout = \"5s\"\nretry = { initial = \"50ms\", max = \"2s\" }";
    let config = write_config(dir.path(), &pg.url(&db), defaults, &triggers);
    let _walhook = Walhook::streaming(&config);

    // A delivered baseline, so the slot has a known confirmed position.
    pg.psql(&db, "INSERT INTO t VALUES (0, 'before')");
    rx.wait_until(Duration::from_secs(20), "the baseline event", |r| {
        delivered_rows(r).contains(&0)
    });
    wait_confirmed(&pg, &db, current_lsn(&pg, &db), Duration::from_secs(20));

    rx.set_status(503);
    let before = current_lsn(&pg, &db);
    for i in 1..=10 {
        pg.psql(&db, &format!("INSERT INTO t VALUES ({i}, 'during')"));
    }
    let after_writes = current_lsn(&pg, &db);
    let mut during = Vec::new();
    let watch = |until: Instant, during: &mut Vec<Lsn>| {
        while Instant::now() < until {
            during.push(slot_confirmed(&pg, &db).unwrap());
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    watch(Instant::now() + Duration::from_secs(2), &mut during);
    let n503 = rx.requests().iter().filter(|r| r.status == 503).count();
    assert!(n503 >= 10, "only {n503} attempts during the 503 phase");

    rx.set_retry_after(429, "1");
    let phase429 = Instant::now();
    watch(Instant::now() + Duration::from_secs(3), &mut during);
    let n429 = rx.requests().iter().filter(|r| r.status == 429).count();
    assert!(n429 >= 4, "only {n429} attempts during the 429 phase");
    assert!(
        delivered_rows(&rx.requests()).len() == 1,
        "nothing delivered yet"
    );

    rx.set_status(200);
    let reqs = rx.wait_until(Duration::from_secs(20), "every row after the outage", |r| {
        delivered_rows(r).len() == 11
    });
    wait_confirmed(&pg, &db, after_writes, Duration::from_secs(20));

    // During the outage the slot never passed the first undelivered commit.
    let first_commit = reqs
        .iter()
        .filter(|r| r.json()["record"]["id"].as_i64() != Some(0))
        .map(|r| commit_lsn(&r.json()))
        .min()
        .unwrap();
    assert!(before < first_commit);
    let max_during = *during.iter().max().unwrap();
    assert!(
        max_during < first_commit,
        "slot confirmed {max_during} during the outage, past the commit {first_commit} of an undelivered transaction"
    );
    assert!(max_during <= before, "confirmed {max_during} > {before}");

    // Retry-After: 1 was honoured: after each 429, that event waited about a second.
    let mut last_429: HashMap<&str, Instant> = HashMap::new();
    let mut checked = 0;
    for r in &reqs {
        let id = r.header("webhook-id");
        if let Some(t) = last_429.get(id) {
            let gap = r.arrived.duration_since(*t);
            assert!(
                gap >= Duration::from_millis(900),
                "retried {gap:?} after a 429 with Retry-After: 1"
            );
            checked += 1;
        }
        if r.status == 429 {
            last_429.insert(id, r.answered);
        } else {
            last_429.remove(id);
        }
    }
    assert!(checked >= 4, "only {checked} retries after a 429");
    assert!(
        reqs.iter()
            .all(|r| r.status != 429 || r.arrived >= phase429)
    );
    assert_stable_ids(&reqs);
}

// ================================================================ 4. ordering

#[test]
fn row_ordering_keeps_commit_order_under_concurrent_updates() {
    let Scenario { pg, db, rx, dir } = Scenario::start(
        "CREATE TABLE counters (id int PRIMARY KEY, n int NOT NULL);
         INSERT INTO counters SELECT g, 0 FROM generate_series(1, 20) g;",
    );
    // Random answer times, so lanes overtake each other all the time.
    rx.set_delay(Duration::from_millis(6), true);
    let triggers = trigger_toml(
        "counters",
        "counters",
        &rx.url("/c"),
        &[
            "events = [\"update\"]",
            "concurrency = 16",
            "ordering = \"row\"",
        ],
    );
    let config = write_config(dir.path(), &pg.url(&db), FAST, &triggers);
    let _walhook = Walhook::streaming(&config);

    // 4 sessions × 250 single-row updates: every row gets exactly 50, from every session.
    let mut sessions = Vec::new();
    for s in 0..4 {
        let script = dir.path().join(format!("session{s}.sql"));
        let sql: String = (0..250)
            .map(|j| {
                format!(
                    "UPDATE counters SET n = n + 1 WHERE id = {};\n",
                    (j + 5 * s) % 20 + 1
                )
            })
            .collect();
        std::fs::write(&script, sql).unwrap();
        sessions.push(spawn_psql_file(&pg, &db, &script));
    }
    for (s, child) in sessions.iter_mut().enumerate() {
        wait_child(child, &format!("session {s}"), Duration::from_secs(60));
    }
    assert_eq!(
        pg.psql(&db, "SELECT count(*) FROM counters WHERE n = 50"),
        "20"
    );
    let reqs = rx.wait_until(Duration::from_secs(60), "1000 updates", |r| {
        r.iter().filter(|r| r.ok()).count() >= 1000
    });
    let mut per_row: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for r in reqs.iter().filter(|r| r.ok()) {
        let e = r.json();
        per_row
            .entry(e["record"]["id"].as_i64().unwrap())
            .or_default()
            .push(e["record"]["n"].as_i64().unwrap());
    }
    assert_eq!(per_row.len(), 20);
    for (id, ns) in &per_row {
        assert_eq!(
            ns,
            &(1..=50).collect::<Vec<i64>>(),
            "row {id}: values arrived out of commit order"
        );
    }
}

// ================================================================ 5. idle

#[test]
fn idle_and_unmatched_traffic_still_advance_the_slot() {
    let Scenario { pg, db, rx, dir } = Scenario::start_with(
        &["wal_sender_timeout = 4s"],
        "CREATE TABLE watched (id int PRIMARY KEY);
         CREATE TABLE other (id int PRIMARY KEY, pad text);",
    );
    let triggers = trigger_toml("watched", "watched", &rx.url("/w"), &[]);
    let config = write_config(dir.path(), &pg.url(&db), FAST, &triggers);
    let _walhook = Walhook::streaming(&config);
    assert_eq!(
        pg.psql(
            &db,
            "SELECT string_agg(tablename, ',') FROM pg_publication_tables WHERE pubname = 'walhook'"
        ),
        "watched",
        "the publication covers only the trigger tables"
    );
    let start = slot_confirmed(&pg, &db).unwrap();

    // Unmatched traffic: many transactions on a table no trigger names.
    for i in 0..20 {
        pg.psql(
            &db,
            &format!(
                "INSERT INTO other SELECT g, repeat('x', 100) FROM generate_series({}, {}) g",
                i * 500,
                i * 500 + 499
            ),
        );
    }
    let target = current_lsn(&pg, &db);
    assert!(target > start);
    let t = Instant::now();
    let c1 = wait_confirmed(&pg, &db, target, Duration::from_secs(15));
    let unmatched_wait = t.elapsed();

    // Idle, apart from WAL nobody routes: a logical message and a segment switch.
    pg.psql(&db, "SELECT pg_logical_emit_message(false, 'x', 'y')");
    pg.psql(&db, "SELECT pg_switch_wal()");
    pg.psql(&db, "SELECT pg_logical_emit_message(true, 'x', 'y')");
    let target2 = current_lsn(&pg, &db);
    let t = Instant::now();
    let c2 = wait_confirmed(&pg, &db, target2, Duration::from_secs(15));
    eprintln!(
        "idle: confirmed {start} → {c1} (≥ {target}) in {unmatched_wait:?}, → {c2} (≥ {target2}) in {:?}",
        t.elapsed()
    );
    assert!(rx.requests().is_empty(), "no trigger matched anything");
}

/// The events a batch request carries.
fn events_in(r: &Request) -> usize {
    r.json()["events"].as_array().map_or(0, Vec::len)
}

#[test]
fn a_backlog_goes_out_in_full_batches_and_live_events_at_once() {
    let Scenario { pg, db, rx, dir } = Scenario::start("CREATE TABLE items (id int PRIMARY KEY)");
    let triggers = trigger_toml(
        "items",
        "items",
        &rx.url("/i"),
        &["batch = 50", "concurrency = 4"],
    );
    let config = write_config(dir.path(), &pg.url(&db), FAST, &triggers);
    // The first run makes the slot; the backlog piles up while walhook is down.
    let mut first = Walhook::streaming(&config);
    first.signal("-TERM");
    first.wait_exit(Duration::from_secs(10));
    pg.psql(
        &db,
        "DO $$ BEGIN FOR i IN 1..400 LOOP INSERT INTO items VALUES (i); COMMIT; END LOOP; END $$",
    );
    // Sent over a second after their commit: walhook counts itself as catching up.
    std::thread::sleep(Duration::from_millis(1500));
    let _walhook = Walhook::streaming(&config);
    let total = |r: &[Request]| r.iter().map(events_in).sum::<usize>();
    let reqs = rx.wait_until(Duration::from_secs(30), "400 events", |r| total(r) >= 400);
    assert_eq!(total(&reqs), 400);
    // 400 one-row transactions over 4 lanes: 8 full requests, give or take a short one each.
    assert!(
        reqs.len() <= 12,
        "{} requests for a backlog of 400 events with batch = 50",
        reqs.len()
    );
    // Live, one row at a time: each goes out at once, alone.
    for i in 1001..=1010 {
        pg.psql(&db, &format!("INSERT INTO items VALUES ({i})"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let reqs = rx.wait_until(Duration::from_secs(30), "410 events", |r| total(r) >= 410);
    let mut live: Vec<usize> = Vec::new();
    for r in reqs.iter().rev() {
        if live.iter().sum::<usize>() >= 10 {
            break;
        }
        live.push(events_in(r));
    }
    // Mostly one each: two rows may share a request when a busy machine delivers their
    // transactions together, never ten waiting for a batch of 50.
    assert!(live.len() >= 7, "live events went out as {live:?}");
}

// ================================================================ 6. bad config

const BASE_CONFIG: [&str; 13] = [
    "[source]",
    "url = \"postgres://postgres@127.0.0.1:1/app\"",
    "",
    "[server]",
    "listen = \"\"",
    "",
    "[defaults]",
    "timeout = \"5s\"",
    "",
    "[[trigger]]",
    "name = \"orders\"",
    "table = \"orders\"",
    "url = \"http://127.0.0.1:9/hook\"",
];

/// The base config with lines replaced (1-based) and lines appended.
fn config_text(replace: &[(usize, &str)], append: &[&str]) -> String {
    let mut lines: Vec<&str> = BASE_CONFIG.to_vec();
    for (n, line) in replace {
        lines[n - 1] = line;
    }
    lines.extend_from_slice(append);
    lines.join("\n") + "\n"
}

#[test]
fn bad_config_is_refused_with_file_line_key_and_problem() {
    let dir = tempdir();
    let cases: Vec<(&str, String, usize, &str, &str)> = vec![
        (
            "unknown key",
            config_text(&[(3, "slott = \"x\"")], &[]),
            3,
            "source.slott",
            "unknown key `slott` (did you mean `slot`?)",
        ),
        (
            "wrong type",
            config_text(&[(9, "concurrency = \"many\"")], &[]),
            9,
            "defaults.concurrency",
            "expected an integer, found a string",
        ),
        (
            "bad url",
            config_text(&[(13, "url = \"not a url\"")], &[]),
            13,
            "trigger \"orders\".url",
            "not a valid URL",
        ),
        (
            "bad duration",
            config_text(&[(8, "timeout = \"5 parsecs\"")], &[]),
            8,
            "defaults.timeout",
            "`5 parsecs` is not a duration",
        ),
        (
            "bad CEL",
            config_text(&[], &["when = \"record.status ==\""]),
            14,
            "trigger \"orders\".when",
            "not a valid CEL expression: Syntax error",
        ),
        (
            "unknown event",
            config_text(&[], &["events = [\"create\", \"upsert\"]"]),
            14,
            "trigger \"orders\".events",
            "unknown event `upsert`",
        ),
        (
            "duplicate trigger",
            config_text(
                &[],
                &[
                    "",
                    "[[trigger]]",
                    "name = \"orders\"",
                    "table = \"orders\"",
                    "url = \"http://127.0.0.1:9/other\"",
                ],
            ),
            16,
            "trigger \"orders\".name",
            "duplicate trigger name `orders` (first at line 11)",
        ),
    ];
    for (what, text, line, key, message) in &cases {
        let path = dir.path().join(format!("{}.toml", what.replace(' ', "-")));
        std::fs::write(&path, text).unwrap();
        let p = path.to_str().unwrap();
        let prefix = format!("{p}:{line}: {key}: {message}");

        let (status, _, stderr) = walhook(&["run", "--config", p]);
        assert_eq!(status.code(), Some(2), "{what}: run exit code; {stderr}");
        assert!(
            stderr.contains("invalid config") && stderr.contains(&prefix),
            "{what}: run should say {prefix:?}, said:\n{stderr}"
        );

        let (status, stdout, stderr) = walhook(&["check", "--config", p]);
        assert!(!status.success(), "{what}: check passed:\n{stdout}{stderr}");
        assert!(
            stdout.contains(&format!("error: {prefix}")),
            "{what}: check should say {prefix:?}, said:\n{stdout}{stderr}"
        );
    }

    // check reports every problem at once.
    let path = dir.path().join("many.toml");
    std::fs::write(
        &path,
        config_text(
            &[(3, "slott = \"x\""), (8, "timeout = \"soon\"")],
            &["events = [\"upsert\"]"],
        ),
    )
    .unwrap();
    let p = path.to_str().unwrap();
    let (status, stdout, _) = walhook(&["check", "--config", p]);
    assert_eq!(status.code(), Some(2), "an invalid config file exits 2");
    for needle in [
        format!("{p}:3: source.slott"),
        format!("{p}:8: defaults.timeout"),
        format!("{p}:14: trigger \"orders\".events"),
    ] {
        assert!(stdout.contains(&needle), "missing {needle:?} in:\n{stdout}");
    }

    // A missing file.
    let missing = dir.path().join("nope.toml");
    let m = missing.to_str().unwrap();
    let (status, _, stderr) = walhook(&["run", "--config", m]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(m) && stderr.contains("cannot read the config file"),
        "{stderr}"
    );
    let (status, stdout, stderr) = walhook(&["check", "--config", m]);
    assert!(!status.success());
    assert!(
        stdout.contains(m) && stdout.contains("cannot read the config file"),
        "{stdout}{stderr}"
    );
}

#[test]
fn check_against_the_database_warns_and_fails() {
    let (pg, db) = Cluster::with_app_db("CREATE TABLE orders (id int PRIMARY KEY, status text)");
    let dir = tempdir();
    let triggers = trigger_toml(
        "paid",
        "orders",
        "http://127.0.0.1:9/hook",
        &["changed = [\"status\"]"],
    );
    let ok = write_config(dir.path(), &pg.url(&db), FAST, &triggers);
    let (status, stdout, stderr) = walhook(&["check", "--config", ok.to_str().unwrap()]);
    assert!(status.success(), "check failed:\n{stdout}{stderr}");
    let warning = stdout
        .lines()
        .find(|l| l.starts_with("warning:"))
        .unwrap_or_else(|| panic!("no warning in:\n{stdout}"));
    assert!(
        warning.contains("\"paid\"")
            && warning.contains("public.orders")
            && warning.contains("REPLICA IDENTITY DEFAULT"),
        "{warning}"
    );
    assert!(!stdout.contains("error:"), "{stdout}");
    // check changes nothing.
    assert_eq!(
        pg.psql(&db, "SELECT count(*) FROM pg_replication_slots"),
        "0"
    );

    // With FULL the warning goes away.
    pg.psql(&db, "ALTER TABLE orders REPLICA IDENTITY FULL");
    let (status, stdout, _) = walhook(&["check", "--config", ok.to_str().unwrap()]);
    assert!(status.success());
    assert!(!stdout.contains("warning:"), "{stdout}");

    let sub = dir.path().join("missing");
    std::fs::create_dir(&sub).unwrap();
    let triggers = trigger_toml("gone", "missing", "http://127.0.0.1:9/hook", &[]);
    let bad = write_config(&sub, &pg.url(&db), FAST, &triggers);
    let (status, stdout, stderr) = walhook(&["check", "--config", bad.to_str().unwrap()]);
    assert_eq!(status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains("error: table public.missing does not exist"),
        "{stdout}"
    );
}

// ================================================================ 7. shutdown

#[test]
fn sigterm_finishes_in_flight_requests_and_a_restart_resends_the_rest() {
    let Scenario { pg, db, rx, dir } = Scenario::start("CREATE TABLE t (id int PRIMARY KEY)");
    rx.set_delay(Duration::from_millis(1500), false);
    let triggers = trigger_toml("t", "t", &rx.url("/t"), &["concurrency = 4"]);
    let config = write_config(dir.path(), &pg.url(&db), FAST, &triggers);
    let mut walhook = Walhook::streaming(&config);
    let start = slot_confirmed(&pg, &db).unwrap();

    for i in 1..=12 {
        pg.psql(&db, &format!("INSERT INTO t VALUES ({i})"));
    }
    let end = current_lsn(&pg, &db);
    let deadline = Instant::now() + Duration::from_secs(20);
    while rx.in_flight() < 4 {
        assert!(Instant::now() < deadline, "requests never went in flight");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(rx.requests().is_empty(), "nothing answered yet");
    let t = Instant::now();
    walhook.signal("-TERM");
    let status = walhook.wait_exit(walhook::run::SHUTDOWN_GRACE + Duration::from_secs(5));
    let took = t.elapsed();
    assert!(
        status.success(),
        "exit status {status:?}:\n{}",
        walhook.log_text()
    );
    assert!(
        took < walhook::run::SHUTDOWN_GRACE,
        "shutdown took {took:?}"
    );
    // The requests in flight were allowed to finish...
    let first_run = rx.requests();
    assert!(
        first_run.len() >= 4,
        "{} requests finished",
        first_run.len()
    );
    assert!(first_run.iter().all(Request::ok));
    // ...and what they completed was confirmed on the way out.
    let confirmed = slot_confirmed(&pg, &db).unwrap();
    let first_commit = bodies(&first_run)
        .iter()
        .filter(|e| e["record"]["id"] == 1)
        .map(commit_lsn)
        .next()
        .expect("the first transaction's event was in flight");
    assert!(
        confirmed > first_commit && confirmed > start,
        "confirmed {confirmed} after shutdown, first commit at {first_commit}"
    );
    assert!(confirmed < end, "not everything can have been delivered");
    drop(walhook);

    rx.set_delay(Duration::ZERO, false);
    let _walhook = Walhook::streaming(&config);
    let all = rx.wait_until(Duration::from_secs(30), "all 12 rows", |r| {
        delivered_rows(r).len() == 12
    });
    wait_confirmed(&pg, &db, end, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(300));
    let all_now = rx.requests();
    assert_eq!(all.len(), all_now.len(), "nothing more after catching up");
    let second_run = bodies(&all_now[first_run.len()..]);
    // Nothing confirmed is sent again; everything unconfirmed is, delivered before or not.
    // (A transaction whose commit record starts exactly at the confirmed position is not
    // confirmed: a keepalive's position can be that start, and Postgres sends it again.)
    for e in &second_run {
        assert!(
            commit_lsn(e) >= confirmed,
            "event {} was confirmed ({confirmed}) and still redelivered",
            e["id"]
        );
    }
    let resent: HashSet<i64> = second_run
        .iter()
        .map(|e| e["record"]["id"].as_i64().unwrap())
        .collect();
    let mut unconfirmed = 0;
    for i in 1..=12 {
        let e = bodies(&all_now)
            .into_iter()
            .find(|e| e["record"]["id"] == i)
            .unwrap();
        if commit_lsn(&e) >= confirmed {
            unconfirmed += 1;
            assert!(
                resent.contains(&i),
                "unconfirmed row {i} was not sent again"
            );
        }
    }
    assert_eq!(resent.len(), unconfirmed);
    assert_stable_ids(&all_now);
}

// ================================================================ 8. Postgres restart

#[test]
fn walhook_reconnects_after_postgres_crashes() {
    // Once a backlog is delivered, the slot reaches the WAL end at the next keepalive that
    // asks for a reply (every wal_sender_timeout / 2): keep that wait short.
    let Scenario {
        mut pg,
        db,
        rx,
        dir,
    } = Scenario::start_with(
        &["wal_sender_timeout = 10s"],
        "CREATE TABLE t (id int PRIMARY KEY)",
    );
    let triggers = trigger_toml("t", "t", &rx.url("/t"), &[]);
    let config = write_config(dir.path(), &pg.url(&db), FAST, &triggers);
    let mut walhook = Walhook::streaming(&config);
    pg.psql(&db, "INSERT INTO t VALUES (1)");
    rx.wait_until(Duration::from_secs(20), "row 1", |r| {
        delivered_rows(r).contains(&1)
    });
    wait_confirmed(&pg, &db, current_lsn(&pg, &db), Duration::from_secs(20));

    for round in 0..2 {
        let port = pg.port;
        pg.kill();
        walhook.wait_log(
            "database connection lost",
            round + 1,
            Duration::from_secs(20),
        );
        std::thread::sleep(Duration::from_millis(700));
        pg.boot();
        assert_eq!(pg.port, port, "postgres came back on another port");
        walhook.wait_log("streaming slot=", round + 2, Duration::from_secs(30));
        let base = 10 * (round as i64 + 1);
        for i in base..base + 5 {
            pg.psql(&db, &format!("INSERT INTO t VALUES ({i})"));
        }
        rx.wait_until(
            Duration::from_secs(20),
            "rows written after the restart",
            |r| {
                let rows = delivered_rows(r);
                (base..base + 5).all(|i| rows.contains(&i))
            },
        );
        wait_confirmed(&pg, &db, current_lsn(&pg, &db), Duration::from_secs(20));
        assert!(walhook.is_running());
    }

    // A crash in the middle of delivering a backlog: every row Postgres still has after
    // recovery is delivered.
    rx.set_delay(Duration::from_millis(4), true);
    for b in 0..30 {
        pg.psql(
            &db,
            &format!(
                "INSERT INTO t SELECT g FROM generate_series({}, {}) g",
                1000 + b * 100,
                1000 + b * 100 + 99
            ),
        );
    }
    rx.wait_until(Duration::from_secs(20), "part of the backlog", |r| {
        delivered_rows(r).len() > 600
    });
    pg.kill();
    std::thread::sleep(Duration::from_millis(300));
    pg.boot();
    let rows: HashSet<i64> = pg
        .psql(&db, "SELECT id FROM t")
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert!(rows.len() > 1000, "{} rows survived", rows.len());
    rx.wait_until(Duration::from_secs(60), "every surviving row", |r| {
        delivered_rows(r).is_superset(&rows)
    });
    wait_confirmed(&pg, &db, current_lsn(&pg, &db), Duration::from_secs(30));
    assert_stable_ids(&rx.requests());
}

#[test]
fn sigterm_with_a_hung_target_exits_after_the_grace_and_confirms_nothing_undelivered() {
    let Scenario { pg, db, rx, dir } = Scenario::start("CREATE TABLE t (id int PRIMARY KEY)");
    // Longer than the grace and than the request timeout below: nothing ever gets a 2xx.
    rx.set_delay(Duration::from_secs(60), false);
    let triggers = trigger_toml("t", "t", &rx.url("/t"), &["concurrency = 2"]);
    let defaults = "timeout = \"30s\"\nretry = { initial = \"50ms\", max = \"500ms\" }";
    let config = write_config(dir.path(), &pg.url(&db), defaults, &triggers);
    let mut walhook = Walhook::streaming(&config);
    // The WAL position before the undelivered inserts. (walhook's own write to
    // walhook.slot_state at start-up is a transaction with no published change: the slot may
    // rightly be confirmed past it, so the slot's position at start is not the bound.)
    // The insert position: with synchronous_commit = off the write position can lag behind it.
    let start = lsn(&pg.psql(&db, "SELECT pg_current_wal_insert_lsn()"));
    for i in 1..=3 {
        pg.psql(&db, &format!("INSERT INTO t VALUES ({i})"));
    }
    let end = current_lsn(&pg, &db);
    let deadline = Instant::now() + Duration::from_secs(20);
    while rx.in_flight() < 2 {
        assert!(Instant::now() < deadline, "requests never went in flight");
        std::thread::sleep(Duration::from_millis(10));
    }
    let t = Instant::now();
    walhook.signal("-TERM");
    let status = walhook.wait_exit(walhook::run::SHUTDOWN_GRACE + Duration::from_secs(5));
    let took = t.elapsed();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        took >= walhook::run::SHUTDOWN_GRACE - Duration::from_millis(500),
        "gave up on in-flight requests after only {took:?}"
    );
    let confirmed = slot_confirmed(&pg, &db).unwrap();
    assert!(
        confirmed <= start,
        "confirmed {confirmed} (was {start}) with nothing delivered"
    );
    drop(walhook);

    let rx2 = Receiver::start();
    let config = write_config(
        dir.path(),
        &pg.url(&db),
        FAST,
        &triggers.replace(&rx.url("/t"), &rx2.url("/t")),
    );
    let _walhook = Walhook::streaming(&config);
    rx2.wait_until(Duration::from_secs(20), "every row after restart", |r| {
        delivered_rows(r).len() == 3
    });
    wait_confirmed(&pg, &db, end, Duration::from_secs(20));
}

// ================================================================ standby

#[test]
fn a_second_instance_waits_as_a_standby_and_takes_over() {
    let Scenario { pg, db, rx, dir } = Scenario::start("CREATE TABLE t (id int PRIMARY KEY)");
    let triggers = trigger_toml("t", "t", &rx.url("/t"), &[]);
    let config = write_config(dir.path(), &pg.url(&db), FAST, &triggers);
    let active = Walhook::streaming(&config);
    let standby = Walhook::start(&config);
    standby.wait_log("waiting as a standby", 1, Duration::from_secs(20));
    pg.psql(&db, "INSERT INTO t VALUES (1)");
    rx.wait_until(Duration::from_secs(20), "row 1", |r| {
        delivered_rows(r).contains(&1)
    });
    wait_confirmed(&pg, &db, current_lsn(&pg, &db), Duration::from_secs(20));
    active.kill9();
    standby.wait_log("streaming slot=", 1, Duration::from_secs(20));
    pg.psql(&db, "INSERT INTO t VALUES (2)");
    let reqs = rx.wait_until(Duration::from_secs(20), "row 2", |r| {
        delivered_rows(r).contains(&2)
    });
    assert_eq!(
        reqs.iter().filter(|r| r.ok()).count(),
        2,
        "each row once: the standby resumed at the confirmed position"
    );
}

// ================================================================ lost catalog connection

#[test]
fn losing_the_catalog_connection_reconnects_and_delivers() {
    // FULL: the first change of the table makes walhook look its key up in the catalog.
    let Scenario { pg, db, rx, dir } = Scenario::start(
        "CREATE TABLE t (id int PRIMARY KEY, v text); ALTER TABLE t REPLICA IDENTITY FULL;",
    );
    let triggers = trigger_toml("t", "t", &rx.url("/t"), &[]);
    let config = write_config(dir.path(), &pg.url(&db), FAST, &triggers);
    let walhook = Walhook::streaming(&config);
    // walhook's only plain (non-replication) connection now, other than the park table's
    // (named "walhook park"), is its catalog connection.
    let killed = pg.psql(
        &db,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE backend_type = 'client backend' AND datname = 'app' AND pid <> pg_backend_pid() \
           AND application_name = 'walhook'",
    );
    assert_eq!(killed, "1");
    pg.psql(&db, "INSERT INTO t VALUES (1, 'a')");
    walhook.wait_log("database connection lost", 1, Duration::from_secs(20));
    rx.wait_until(Duration::from_secs(30), "row 1 after reconnecting", |r| {
        delivered_rows(r).contains(&1)
    });
    wait_confirmed(&pg, &db, current_lsn(&pg, &db), Duration::from_secs(20));
}

// ================================================================ publication safety

#[test]
fn a_partitioned_table_is_delivered_under_its_own_name() {
    let Scenario { pg, db, rx, dir } = Scenario::start(
        "CREATE TABLE events (id int, at date, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
         CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
         CREATE TABLE events_2027 PARTITION OF events FOR VALUES FROM ('2027-01-01') TO ('2028-01-01');",
    );
    let triggers = trigger_toml("events", "events", &rx.url("/events"), &[]);
    let config = write_config(dir.path(), &pg.url(&db), FAST, &triggers);
    let _walhook = Walhook::streaming(&config);
    pg.psql(
        &db,
        "INSERT INTO events VALUES (1, '2026-05-01'), (2, '2027-05-01');
         UPDATE events SET at = '2027-06-01' WHERE id = 1;",
    );
    let reqs = rx.wait_until(Duration::from_secs(20), "partition events", |r| {
        r.iter().filter(|q| q.ok()).count() >= 3
    });
    let events = bodies(&reqs);
    // Rows of every partition arrive as the partitioned table the trigger names.
    assert!(events.iter().all(|e| e["table"] == "events"), "{events:?}");
    let ids: Vec<i64> = events
        .iter()
        .filter(|e| e["type"] == "create")
        .map(|e| e["record"]["id"].as_i64().unwrap_or(0))
        .collect();
    assert!(ids.contains(&1) && ids.contains(&2), "{events:?}");
}

#[test]
fn a_table_without_replica_identity_is_refused_before_it_breaks_the_app() {
    let (pg, db) = Cluster::with_app_db("CREATE TABLE nokey (v int); INSERT INTO nokey VALUES (1)");
    let dir = tempdir();
    let triggers = trigger_toml("nokey", "nokey", "http://127.0.0.1:9/hook", &[]);
    let config = write_config(dir.path(), &pg.url(&db), FAST, &triggers);
    let path = config.to_str().unwrap();
    let (status, stdout, _) = walhook(&["check", "--config", path]);
    assert_eq!(status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("error: table public.nokey has no primary key")
            && stdout.contains("REPLICA IDENTITY FULL"),
        "{stdout}"
    );
    let (status, _, stderr) = walhook(&["run", "--config", path]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("has no primary key"), "{stderr}");
    // The publication was not touched, so the application can still update the table.
    pg.psql(&db, "UPDATE nokey SET v = 2");
    assert_eq!(
        pg.psql(
            &db,
            "SELECT count(*) FROM pg_publication_tables WHERE tablename = 'nokey'"
        ),
        "0"
    );
}
