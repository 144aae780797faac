//! `walhook tail` against a real Postgres: events, identity semantics, every type vs to_jsonb.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStderr, ChildStdout, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::pg::{Cluster, NOREPL_USER};

/// A running `walhook tail`, its stdout read line by line on a thread.
struct Tail {
    child: Child,
    lines: mpsc::Receiver<String>,
}

/// `walhook tail --database-url URL`, its other arguments still to add.
fn tail_command(url: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_walhook"));
    command.args(["tail", "--database-url", url]);
    command
}

/// Runs `walhook tail --database-url URL ARGS` to completion.
fn run_tail(url: &str, args: &[&str]) -> Output {
    tail_command(url)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run walhook tail")
}

fn spawn_tail(url: &str, publication: &str, extra: &[&str]) -> Child {
    tail_command(url)
        .args(["--publication", publication])
        .args(extra)
        .env("WALHOOK_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn walhook tail")
}

fn read_lines<R: std::io::Read + Send + 'static>(r: R) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl Tail {
    /// Starts tail and waits until it streams (changes after this are captured).
    fn start(url: &str, publication: &str, extra: &[&str]) -> Tail {
        let mut child = spawn_tail(url, publication, extra);
        let stdout: ChildStdout = child.stdout.take().expect("stdout");
        let stderr: ChildStderr = child.stderr.take().expect("stderr");
        let errs = read_lines(stderr);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match errs.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains("streaming") => break,
                Ok(_) => {}
                Err(_) => panic!("walhook tail did not start: {:?}", child.try_wait()),
            }
        }
        // Keep draining stderr so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in errs.iter() {});
        Tail {
            child,
            lines: read_lines(stdout),
        }
    }

    /// The next `n` events.
    fn events(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        (0..n)
            .map(|i| {
                let line = self
                    .lines
                    .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                    .unwrap_or_else(|_| panic!("only {i} of {n} events arrived"));
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad JSON {line}: {e}"))
            })
            .collect()
    }

    fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-INT", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(Instant::now() < deadline, "tail did not stop on SIGINT");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for_no_slots(pg: &Cluster, db: &str) {
    // The walsender drops a temporary slot asynchronously after the connection closes.
    let deadline = Instant::now() + Duration::from_secs(20);
    while pg.psql(db, "SELECT count(*) FROM pg_replication_slots") != "0" {
        assert!(
            Instant::now() < deadline,
            "tail left a replication slot behind"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn tail_prints_creates_updates_deletes_and_leaves_nothing_behind() {
    let (pg, db) = Cluster::with_app_db(
        "CREATE TABLE orders (id int PRIMARY KEY, status text, amount numeric(10,2));
         CREATE TABLE audit (id int PRIMARY KEY, body text);
         ALTER TABLE audit REPLICA IDENTITY FULL;
         CREATE TABLE other (id int PRIMARY KEY);
         CREATE PUBLICATION pub FOR TABLE orders, audit, other;",
    );
    let tail = Tail::start(
        &pg.url(&db),
        "pub",
        &["--table", "orders", "--table", "public.audit"],
    );
    pg.psql(
        &db,
        "BEGIN;
         INSERT INTO orders VALUES (1, 'new', 10.50);
         INSERT INTO other VALUES (1);
         UPDATE orders SET status = 'paid' WHERE id = 1;
         COMMIT;
         UPDATE orders SET id = 2 WHERE id = 1;
         DELETE FROM orders WHERE id = 2;
         INSERT INTO audit VALUES (1, 'a');
         UPDATE audit SET body = 'b' WHERE id = 1;
         DELETE FROM audit WHERE id = 1;",
    );
    let ev = tail.events(7);
    let types: Vec<&str> = ev
        .iter()
        .map(|e| e["type"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        types,
        [
            "create", "update", "update", "delete", "create", "update", "delete"
        ]
    );
    // The events of the first transaction share commit LSN and xid, in order.
    let first = &ev[0];
    assert_eq!(first["table"], "orders");
    assert_eq!(first["schema"], "public");
    assert_eq!(
        first["record"],
        serde_json::json!({"id": 1, "status": "new", "amount": serde_json::from_str::<Value>("10.50").unwrap_or_default()})
    );
    assert!(first["old_record"].is_null());
    assert_eq!(ev[1]["commit_lsn"], first["commit_lsn"]);
    assert_eq!(ev[1]["xid"], first["xid"]);
    assert_ne!(ev[1]["id"], first["id"]);
    assert!(first["committed_at"].as_str().unwrap_or("").ends_with('Z'));
    // REPLICA IDENTITY DEFAULT: an update that keeps the key has no old row...
    assert_eq!(ev[1]["type"], "update");
    assert_eq!(ev[1]["record"]["status"], "paid");
    assert!(ev[1]["old_record"].is_null());
    // ...one that changes the key carries the old key only.
    assert_eq!(ev[2]["type"], "update");
    assert_eq!(ev[2]["old_record"], serde_json::json!({"id": 1}));
    assert_eq!(ev[2]["record"]["id"], 2);
    // A delete carries the key only, and no record.
    assert_eq!(ev[3]["type"], "delete");
    assert!(ev[3]["record"].is_null());
    assert_eq!(ev[3]["old_record"], serde_json::json!({"id": 2}));
    // REPLICA IDENTITY FULL: updates and deletes carry the whole old row and what changed.
    assert_eq!(ev[4]["table"], "audit");
    assert_eq!(
        ev[5]["old_record"],
        serde_json::json!({"id": 1, "body": "a"})
    );
    assert_eq!(ev[5]["changed"], serde_json::json!(["body"]));
    assert_eq!(ev[6]["type"], "delete");
    assert_eq!(
        ev[6]["old_record"],
        serde_json::json!({"id": 1, "body": "b"})
    );
    // `other` is not among the --table filters.
    assert!(ev.iter().all(|e| e["table"] != "other"));
    let status = tail.stop();
    assert!(status.success(), "tail exited with {status}");
    wait_for_no_slots(&pg, &db);
}

/// Runs tail expecting it to fail at start-up; returns its stderr.
fn tail_error(url: &str, publication: &str) -> String {
    tail_error_with(url, &["--publication", publication])
}

#[test]
fn tail_start_up_errors_are_one_clear_line() {
    let (pg, db) = Cluster::with_app_db(
        "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION pub FOR TABLE t;",
    );

    let err = tail_error(&pg.url(&db), "nope");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("publication \"nope\" does not exist"), "{err}");

    let err = tail_error(&pg.url_as(NOREPL_USER, &db, "disable"), "pub");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("REPLICATION"), "{err}");

    let bad = format!(
        "postgres://{}:wrong@127.0.0.1:{}/{db}?sslmode=disable",
        support::pg::SCRAM_USER,
        pg.port
    );
    let err = tail_error(&bad, "pub");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("password authentication failed"), "{err}");
    assert!(!err.contains("wrong"), "the password leaked into: {err}");

    let err = tail_error(
        &format!(
            "postgres://postgres@127.0.0.1:{}/{db}",
            support::pg::free_port()
        ),
        "pub",
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn tail_refuses_a_table_the_publication_does_not_publish() {
    let (pg, db) = Cluster::with_app_db(
        "CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE other (id int PRIMARY KEY); \
         CREATE PUBLICATION pub FOR TABLE t;",
    );
    let err = tail_error_with(
        &pg.url(&db),
        &["--publication", "pub", "--table", "t", "--table", "other"],
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("--table public.other: not in publication \"pub\", which publishes public.t"),
        "{err}"
    );
    // A missing publication is still reported as such, not as a missing table.
    let err = tail_error_with(&pg.url(&db), &["--publication", "nope", "--table", "t"]);
    assert!(err.contains("publication \"nope\" does not exist"), "{err}");
}

#[test]
fn tail_refuses_a_server_without_logical_wal() {
    let pg = Cluster::start_with(&["wal_level = replica"]);
    let err = tail_error(&pg.url("postgres"), "pub");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("wal_level is replica"), "{err}");
}

#[test]
fn unchanged_toast_columns_are_named_not_faked() {
    let (pg, db) = Cluster::with_app_db(
        "CREATE TABLE docs (id int PRIMARY KEY, title text, body text);
         ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
         CREATE TABLE docs_full (id int PRIMARY KEY, title text, body text);
         ALTER TABLE docs_full ALTER COLUMN body SET STORAGE EXTERNAL;
         ALTER TABLE docs_full REPLICA IDENTITY FULL;
         CREATE PUBLICATION pub FOR TABLE docs, docs_full;
         INSERT INTO docs VALUES (1, 'a', repeat('x', 100000));
         INSERT INTO docs_full VALUES (1, 'a', repeat('y', 100000));",
    );
    let tail = Tail::start(&pg.url(&db), "pub", &[]);
    pg.psql(
        &db,
        "UPDATE docs SET title = 'b' WHERE id = 1; UPDATE docs_full SET title = 'b' WHERE id = 1;",
    );
    let ev = tail.events(2);
    // DEFAULT identity: the body was not sent, so it is named and left out of the record.
    assert_eq!(ev[0]["unchanged_toast"], serde_json::json!(["body"]));
    assert_eq!(ev[0]["record"], serde_json::json!({"id": 1, "title": "b"}));
    // FULL identity: the old row has the body, so the record is complete.
    assert!(ev[1].get("unchanged_toast").is_none(), "{}", ev[1]);
    assert_eq!(
        ev[1]["record"]["body"].as_str().map(str::len),
        Some(100_000)
    );
    assert_eq!(ev[1]["changed"], serde_json::json!(["title"]));
}

/// Column definitions and sample values covering the built-in types.
const WIDE_COLUMNS: &[(&str, &[&str])] = &[
    ("c_bool", &["bool", "true", "false"]),
    ("c_int2", &["int2", "-32768", "32767"]),
    ("c_int4", &["int4", "-2147483648", "42"]),
    ("c_int8", &["int8", "9223372036854775807", "-1"]),
    ("c_float4", &["float4", "'NaN'", "1.5e-10"]),
    ("c_float8", &["float8", "'-Infinity'", "0.1"]),
    (
        "c_numeric",
        &[
            "numeric",
            "'NaN'",
            "123456789012345678901234567890.000000001",
        ],
    ),
    ("c_numeric_s", &["numeric(10,2)", "10.5", "-0.01"]),
    (
        "c_text",
        &[
            "text",
            "E'tab\\there \"quoted\" \\\\ backslash'",
            "'é ü 日本'",
        ],
    ),
    ("c_varchar", &["varchar(20)", "'v'", "''"]),
    ("c_char", &["char(3)", "'a'", "'abc'"]),
    ("c_name", &["name", "'nm'", "'pg_class'"]),
    ("c_bytea", &["bytea", "'\\xdeadbeef'", "''"]),
    (
        "c_uuid",
        &[
            "uuid",
            "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
            "'00000000-0000-0000-0000-000000000000'",
        ],
    ),
    (
        "c_json",
        &["json", "'{\"b\": 1, \"a\": [1, 2.50, null]}'", "'\"s\"'"],
    ),
    (
        "c_jsonb",
        &["jsonb", "'{\"b\": {\"c\": true}, \"a\": 1.10}'", "'[]'"],
    ),
    ("c_date", &["date", "'2026-11-30'", "'infinity'"]),
    ("c_date_bc", &["date", "'0044-03-15 BC'", "'-infinity'"]),
    (
        "c_ts",
        &["timestamp", "'2026-11-30 09:55:19.123456'", "'infinity'"],
    ),
    (
        "c_tstz",
        &[
            "timestamptz",
            "'2026-11-30 09:55:19.5+02'",
            "'2000-01-01 00:00:00+00'",
        ],
    ),
    ("c_time", &["time", "'23:59:59.999999'", "'00:00'"]),
    ("c_timetz", &["timetz", "'12:00+05:30'", "'00:00:00-08'"]),
    (
        "c_interval",
        &["interval", "'1 year 2 mons 3 days 04:05:06.7'", "'-1 day'"],
    ),
    ("c_money", &["money", "12.34", "-1"]),
    ("c_inet", &["inet", "'192.168.0.1/24'", "'::1'"]),
    ("c_cidr", &["cidr", "'10.0.0.0/8'", "'2001:db8::/32'"]),
    (
        "c_macaddr",
        &["macaddr", "'08:00:2b:01:02:03'", "'ff:ff:ff:ff:ff:ff'"],
    ),
    (
        "c_macaddr8",
        &[
            "macaddr8",
            "'08:00:2b:01:02:03:04:05'",
            "'00:00:00:00:00:00:00:00'",
        ],
    ),
    ("c_bit", &["bit(4)", "B'1010'", "B'0000'"]),
    ("c_varbit", &["varbit", "B'1'", "B''"]),
    ("c_point", &["point", "'(1,2)'", "'(-1.5,0)'"]),
    ("c_box", &["box", "'(1,1),(0,0)'", "'(2,2),(1,1)'"]),
    ("c_circle", &["circle", "'<(0,0),1>'", "'<(1,1),2.5>'"]),
    ("c_tsvector", &["tsvector", "'a fat cat'", "''"]),
    ("c_tsquery", &["tsquery", "'fat & cat'", "'a'"]),
    ("c_xml", &["xml", "'<a>b</a>'", "'<x/>'"]),
    ("c_pg_lsn", &["pg_lsn", "'16/B374D848'", "'0/0'"]),
    ("c_oid", &["oid", "1259", "0"]),
    ("c_int4range", &["int4range", "'[1,10)'", "'empty'"]),
    (
        "c_tstzrange",
        &["tstzrange", "'[2026-01-01 00:00+00,)'", "'(,)'"],
    ),
    ("c_mood", &["mood", "'happy'", "'sad'"]),
    ("c_posint", &["posint", "7", "1"]),
    ("c_email", &["email", "'a@b.c'", "'x@y.z'"]),
    ("c_int_arr", &["int[]", "'{1,NULL,3}'", "'{}'"]),
    (
        "c_int_arr2",
        &["int[][]", "'{{1,2},{3,4}}'", "'{{NULL,-1}}'"],
    ),
    (
        "c_text_arr",
        &[
            "text[]",
            "ARRAY['a,b', 'q\"uote', 'back\\slash', NULL, 'NULL', '']",
            "'{\" spaced \"}'",
        ],
    ),
    (
        "c_jsonb_arr",
        &["jsonb[]", "ARRAY['{\"a\":1}'::jsonb, '[2]']", "'{}'"],
    ),
    ("c_numeric_arr", &["numeric[]", "'{1.50,NaN}'", "'{-0}'"]),
    ("c_bool_arr", &["bool[]", "'{t,f}'", "'{NULL}'"]),
    (
        "c_ts_arr",
        &[
            "timestamptz[]",
            "ARRAY['2026-11-30 09:55:19+00'::timestamptz]",
            "'{}'",
        ],
    ),
    (
        "c_box_arr",
        &["box[]", "ARRAY['(1,1),(0,0)'::box, '(3,3),(2,2)']", "'{}'"],
    ),
    ("c_date_arr", &["date[]", "'{2026-01-01,infinity}'", "'{}'"]),
    (
        "c_comp",
        &[
            "pair",
            "ROW(1, 'x y', ARRAY[1.5, 2], ROW('2026-01-01', true))::pair",
            "ROW(NULL, NULL, NULL, NULL)::pair",
        ],
    ),
    (
        "c_comp_arr",
        &["pair[]", "ARRAY[ROW(2, 'a\"b', '{}', NULL)::pair]", "'{}'"],
    ),
];

#[test]
fn every_type_matches_to_jsonb() {
    let columns: Vec<String> = WIDE_COLUMNS
        .iter()
        .map(|(name, spec)| format!("{name} {}", spec[0]))
        .collect();
    let (pg, db) = Cluster::with_app_db(&format!(
        "CREATE TYPE mood AS ENUM ('sad', 'happy');
             CREATE DOMAIN posint AS int CHECK (VALUE > 0);
             CREATE DOMAIN email AS text;
             CREATE TYPE inner_t AS (d date, b bool);
             CREATE TYPE pair AS (n int, s text, xs numeric[], i inner_t);
             CREATE TABLE wide (id int PRIMARY KEY, {});
             ALTER TABLE wide REPLICA IDENTITY FULL;
             CREATE PUBLICATION pub FOR TABLE wide;",
        columns.join(", ")
    ));
    let tail = Tail::start(&pg.url(&db), "pub", &[]);
    let names: Vec<&str> = WIDE_COLUMNS.iter().map(|(n, _)| *n).collect();
    for (row, sample) in [1usize, 2].iter().enumerate() {
        let values: Vec<&str> = WIDE_COLUMNS.iter().map(|(_, spec)| spec[*sample]).collect();
        pg.psql(
            &db,
            &format!(
                "INSERT INTO wide (id, {}) VALUES ({row}, {})",
                names.join(", "),
                values.join(", ")
            ),
        );
    }
    // An all-NULL row, an update and a delete go through the same conversion.
    pg.psql(&db, "INSERT INTO wide (id) VALUES (2)");
    let snapshot = || -> Vec<Value> {
        pg.psql(
            &db,
            "SET TimeZone = 'UTC'; SELECT to_jsonb(w) FROM wide w ORDER BY id",
        )
        .lines()
        .map(|l| serde_json::from_str(l).expect("to_jsonb row"))
        .collect()
    };
    let inserted = snapshot();
    pg.psql(&db, "UPDATE wide SET c_int4 = c_int4 + 1 WHERE id = 0");
    let updated = snapshot();
    pg.psql(&db, "DELETE FROM wide WHERE id = 1");
    let ev = tail.events(5);
    let row = |rows: &[Value], id: i64| rows.iter().find(|r| r["id"] == id).cloned();
    let mut checked = 0;
    for (event, want) in [
        (&ev[0]["record"], row(&inserted, 0)),
        (&ev[1]["record"], row(&inserted, 1)),
        (&ev[2]["record"], row(&inserted, 2)),
        (&ev[3]["record"], row(&updated, 0)),
        (&ev[4]["old_record"], row(&updated, 1)),
    ] {
        let want = want.expect("row in to_jsonb output");
        for name in names.iter().copied().chain(["id"]) {
            assert_eq!(
                numbers_as_text(&event[name]),
                numbers_as_text(&want[name]),
                "column {name}: walhook vs to_jsonb"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 5 * (names.len() + 1));
}

/// The decimal value of a JSON number as (negative, significant digits, exponent), so that
/// `1.5e-10`, `0.00000000015` and `1.50e-10` compare equal (jsonb prints floats as numeric).
fn canonical_number(text: &str) -> String {
    let (neg, rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text),
    };
    let (mantissa, exp) = match rest.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i64>().unwrap_or(0)),
        None => (rest, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{int}{frac}");
    let exp = exp - frac.len() as i64;
    let trimmed_end = digits.trim_end_matches('0');
    let exp = exp + (digits.len() - trimmed_end.len()) as i64;
    let significant = trimmed_end.trim_start_matches('0');
    if significant.is_empty() {
        return "0".to_string();
    }
    format!("{}{significant}e{exp}", if neg { "-" } else { "" })
}

/// JSON with numbers replaced by their canonical decimal value, for comparison.
fn numbers_as_text(v: &Value) -> Value {
    match v {
        Value::Array(a) => Value::Array(a.iter().map(numbers_as_text).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), numbers_as_text(v)))
                .collect(),
        ),
        Value::Number(n) => Value::String(format!("#{}", canonical_number(&n.to_string()))),
        other => other.clone(),
    }
}

#[test]
fn tail_reads_an_existing_slot_up_to_endpos_without_moving_it() {
    let (pg, db) = Cluster::with_app_db(
        "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION pub FOR TABLE t",
    );
    pg.psql(
        &db,
        "SELECT pg_create_logical_replication_slot('backlog', 'pgoutput')",
    );
    let before = backlog_confirmed(&pg, &db);
    pg.psql(&db, "INSERT INTO t SELECT generate_series(1, 500)");
    // The insert position: with asynchronous commit the write position can still be short
    // of the commit just made.
    let end = pg.psql(&db, "SELECT pg_current_wal_insert_lsn()");
    pg.psql(&db, "INSERT INTO t VALUES (1000)");
    let out = run_tail(
        &pg.url(&db),
        &[
            "--publication",
            "pub",
            "--slot",
            "backlog",
            "--endpos",
            &end,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids: Vec<i64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("event")["record"]["id"]
                .as_i64()
                .unwrap_or(-1)
        })
        .collect();
    // Exactly the backlog up to endpos, in order; the later insert is past it.
    assert_eq!(ids, (1..=500).collect::<Vec<_>>());
    let after = backlog_confirmed(&pg, &db);
    assert_eq!(before, after, "tail --slot must not move the slot");
    let err = tail_error_with(&pg.url(&db), &["--publication", "pub", "--slot", "nope"]);
    assert!(
        err.contains("replication slot \"nope\" does not exist"),
        "{err}"
    );
}

/// The `backlog` slot's confirmed_flush_lsn, as psql prints it.
fn backlog_confirmed(pg: &Cluster, db: &str) -> String {
    pg.psql(
        db,
        "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'backlog'",
    )
}

fn tail_error_with(url: &str, args: &[&str]) -> String {
    let out = run_tail(url, args);
    assert!(!out.status.success(), "tail should fail");
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}
