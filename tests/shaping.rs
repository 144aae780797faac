//! Requests shaped per trigger (method per event type, URL and header templates, a CEL
//! body), message triggers and truncate events. A real Postgres, a real receiver, the real
//! binary.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::time::Duration;

use support::daemon::*;
use support::pg::Cluster;
use support::receiver::{Receiver, Request};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// Short retries; a head is parked after 2 s of failing.
const FAST: &str =
    "timeout = \"2s\"\nretry = { initial = \"50ms\", max = \"500ms\", park_after = \"2s\" }";

fn signed(r: &Request) -> bool {
    r.signed_by(SECRET)
}

fn rest_trigger(url: &str) -> String {
    format!(
        r#"[[trigger]]
name = "items"
table = "items"
url = "{url}/items/{{key.id}}"
method = {{ create = "POST", update = "PUT", delete = "DELETE" }}
headers = {{ "Idempotency-Key" = "{{id}}" }}
body = "record == null ? {{'id': key.id}} : {{'id': key.id, 'name': record.name}}"
secret = "{SECRET}"
"#
    )
}

/// (method, path, body) of each accepted request, in arrival order.
fn calls(reqs: &[Request]) -> Vec<(String, String, serde_json::Value)> {
    reqs.iter()
        .filter(|r| r.ok())
        .map(|r| {
            let body = if r.body.is_empty() {
                serde_json::Value::Null
            } else {
                r.json()
            };
            (r.method.clone(), r.path.clone(), body)
        })
        .collect()
}

#[test]
fn a_rest_trigger_sends_each_change_with_its_method_path_and_body() {
    let (pg, db) = Cluster::with_app_db("CREATE TABLE items (id text PRIMARY KEY, name text)");
    let rx = Receiver::start();
    let dir = tempdir();
    let config = write_config(dir.path(), &pg.url(&db), "", &rest_trigger(&rx.url("")));
    let _daemon = Walhook::streaming(&config);
    pg.psql(&db, "INSERT INTO items VALUES ('a b/c', 'first')");
    pg.psql(&db, "UPDATE items SET name = 'second' WHERE id = 'a b/c'");
    pg.psql(&db, "DELETE FROM items WHERE id = 'a b/c'");
    let reqs = rx.wait_until(Duration::from_secs(30), "three requests", |r| {
        r.iter().filter(|r| r.ok()).count() >= 3
    });
    let path = "/items/a%20b%2Fc";
    assert_eq!(
        calls(&reqs),
        vec![
            (
                "POST".into(),
                path.into(),
                serde_json::json!({"id": "a b/c", "name": "first"})
            ),
            (
                "PUT".into(),
                path.into(),
                serde_json::json!({"id": "a b/c", "name": "second"})
            ),
            (
                "DELETE".into(),
                path.into(),
                serde_json::json!({"id": "a b/c"})
            ),
        ]
    );
    for r in &reqs {
        assert!(signed(r), "the signature covers the bytes sent: {r:?}");
        assert_eq!(r.header("idempotency-key"), r.header("webhook-id"));
        assert_eq!(r.header("content-type"), "application/json");
    }
}

#[test]
fn a_get_trigger_sends_no_body_and_a_failing_template_fails_only_its_event() {
    let (pg, db) = Cluster::with_app_db("CREATE TABLE people (id int PRIMARY KEY, name text)");
    let rx = Receiver::start();
    let dir = tempdir();
    let triggers = format!(
        r#"[[trigger]]
name = "lookup"
table = "people"
events = ["create"]
url = "{}/find people/{{record.name}}?name={{record.name}}&id={{record.id}}"
method = "GET"
headers = {{ X-Event = "{{type}}:{{table}}" }}
secret = "{SECRET}"
on_4xx = "dead"
"#,
        rx.url("")
    );
    let config = write_config(dir.path(), &pg.url(&db), FAST, &triggers);
    let daemon = Walhook::streaming(&config);
    // A null name cannot go into the URL, an empty one would leave `/find%20people/`: those
    // events fail, the next ones go through. The literal space is encoded once, at load.
    pg.psql(&db, "INSERT INTO people VALUES (1, NULL)");
    pg.psql(&db, "INSERT INTO people VALUES (2, 'Ann & Bob')");
    pg.psql(&db, "INSERT INTO people VALUES (3, 'x/y?z')");
    pg.psql(&db, "INSERT INTO people VALUES (4, '')");
    let reqs = rx.wait_until(Duration::from_secs(30), "two requests", |r| {
        r.iter().filter(|r| r.ok()).count() >= 2
    });
    // Other rows, other lanes: no order between them.
    let mut got = calls(&reqs);
    got.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        got,
        vec![
            (
                "GET".into(),
                "/find%20people/Ann%20%26%20Bob?name=Ann%20%26%20Bob&id=2".into(),
                serde_json::Value::Null
            ),
            (
                "GET".into(),
                "/find%20people/x%2Fy%3Fz?name=x%2Fy%3Fz&id=3".into(),
                serde_json::Value::Null
            ),
        ]
    );
    for r in &reqs {
        assert!(r.body.is_empty());
        assert_eq!(r.header("content-type"), "", "a GET has no content-type");
        assert_eq!(r.header("x-event"), "create:people");
        assert!(signed(r), "signed over the empty body");
    }
    // The failed events are dead in walhook.parked at once (on_4xx = "dead"), with their
    // envelope and why they could not be sent; nothing was sent for them.
    let dead = wait_rows(&pg, &db, "state = 'dead'", 2);
    let rows = pg.psql(
        &db,
        "SELECT string_agg(unsendable || '|' || (convert_from(body, 'UTF8')::jsonb->'record'->>'id'), \
         E'\\n' ORDER BY convert_from(body, 'UTF8')::jsonb->'record'->>'id') FROM walhook.parked",
    );
    assert_eq!(dead, 2);
    let rows: Vec<&str> = rows.lines().collect();
    assert!(
        rows[0].starts_with("url: `{record.name}` is null") && rows[0].ends_with("|1"),
        "{rows:?}"
    );
    assert!(
        rows[1].starts_with("url: `{record.name}` is empty: it would leave an empty path segment")
            && rows[1].ends_with("|4"),
        "{rows:?}"
    );
    assert_eq!(rx.requests().len(), 2, "no request for the failed events");
    daemon.wait_log("a template or `body` failed", 1, Duration::from_secs(5));
}

/// Polls `SELECT count(*) FROM walhook.parked WHERE filter` until `done` holds it (or 30 s
/// pass); returns the last count.
fn wait_count(pg: &Cluster, db: &str, filter: &str, done: impl Fn(usize) -> bool) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let found: usize = pg
            .psql(
                db,
                &format!("SELECT count(*) FROM walhook.parked WHERE {filter}"),
            )
            .parse()
            .unwrap_or(0);
        if done(found) || std::time::Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_rows(pg: &Cluster, db: &str, filter: &str, n: usize) -> usize {
    wait_count(pg, db, filter, |found| found >= n)
}

#[test]
fn parked_shaped_events_are_sent_later_with_their_own_method_path_and_headers() {
    let (pg, db) = Cluster::with_app_db("CREATE TABLE items (id text PRIMARY KEY, name text)");
    let rx = Receiver::start();
    rx.set_status(503);
    let dir = tempdir();
    let config = write_config(dir.path(), &pg.url(&db), FAST, &rest_trigger(&rx.url("")));
    let _daemon = Walhook::streaming(&config);
    pg.psql(&db, "INSERT INTO items VALUES ('k1', 'one')");
    pg.psql(&db, "UPDATE items SET name = 'two' WHERE id = 'k1'");
    pg.psql(&db, "INSERT INTO items VALUES ('k2', 'three')");
    assert_eq!(wait_rows(&pg, &db, "state = 'pending'", 3), 3);
    let stored = pg.psql(
        &db,
        "SELECT string_agg(method || ' ' || target || ' ' || (headers ? 'idempotency-key')::text, ',' ORDER BY target, id) \
         FROM walhook.parked",
    );
    assert_eq!(
        stored,
        "POST /items/k1 true,PUT /items/k1 true,POST /items/k2 true"
    );
    rx.set_status(200);
    let reqs = rx.wait_until(Duration::from_secs(30), "the parked events", |r| {
        r.iter().filter(|r| r.ok()).count() >= 3
    });
    let ok: Vec<&Request> = reqs.iter().filter(|r| r.ok()).collect();
    let k1: Vec<(String, String)> = ok
        .iter()
        .filter(|r| r.path == "/items/k1")
        .map(|r| {
            (
                r.method.clone(),
                r.json()["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        k1,
        vec![("POST".into(), "one".into()), ("PUT".into(), "two".into())],
        "one row's events in order"
    );
    for r in &ok {
        assert!(signed(r));
        assert_eq!(r.header("idempotency-key"), r.header("webhook-id"));
    }
    let left = wait_count(&pg, &db, "true", |n| n == 0);
    assert_eq!(left, 0, "delivered rows are deleted");
}

#[test]
fn message_triggers_fire_on_committed_and_non_transactional_messages_by_prefix() {
    let (pg, db) = Cluster::with_app_db("CREATE TABLE orders (id int PRIMARY KEY)");
    let rx = Receiver::start();
    let dir = tempdir();
    let triggers = format!(
        r#"[[trigger]]
name = "shipped"
message = "orders.shipped"
url = "{0}/shipped"

[[trigger]]
name = "orders"
message = "orders.*"
url = "{0}/orders/{{prefix}}"
when = "transactional"

[[trigger]]
name = "rows"
table = "orders"
url = "{0}/rows"
"#,
        rx.url("")
    );
    let config = write_config(dir.path(), &pg.url(&db), "", &triggers);
    if pg.major() < 14 {
        let (status, out, err) = walhook(&["check", "--config", config.to_str().unwrap()]);
        assert!(!status.success(), "{out}{err}");
        assert!(
            format!("{out}{err}")
                .contains("message triggers (\"shipped\", \"orders\") need PostgreSQL 14"),
            "{out}{err}"
        );
        return;
    }
    let (status, out, err) = walhook(&["check", "--config", config.to_str().unwrap()]);
    assert!(status.success(), "{out}{err}");
    let _daemon = Walhook::streaming(&config);
    pg.psql(
        &db,
        "BEGIN; INSERT INTO orders VALUES (1); \
         SELECT pg_logical_emit_message(true, 'orders.shipped', '{\"order\": 1}'); COMMIT;",
    );
    pg.psql(
        &db,
        "BEGIN; SELECT pg_logical_emit_message(true, 'orders.shipped', '{\"order\": 2}'); ROLLBACK;",
    );
    pg.psql(
        &db,
        "SELECT pg_logical_emit_message(false, 'orders.shipped', 'plain text')",
    );
    pg.psql(
        &db,
        "SELECT pg_logical_emit_message(true, 'orders.paid', '{\"order\": 3}')",
    );
    pg.psql(&db, "SELECT pg_logical_emit_message(true, 'other', '{}')");
    // A last row change: once it is delivered, every message before it was decoded.
    pg.psql(&db, "INSERT INTO orders VALUES (99)");
    let reqs = rx.wait_until(Duration::from_secs(30), "the last row", |r| {
        r.iter()
            .any(|r| r.path == "/rows" && r.json()["record"]["id"] == 99)
    });
    std::thread::sleep(Duration::from_millis(300));
    let reqs = if reqs.len() < rx.requests().len() {
        rx.requests()
    } else {
        reqs
    };
    let shipped: Vec<serde_json::Value> = reqs
        .iter()
        .filter(|r| r.path == "/shipped")
        .map(Request::json)
        .collect();
    assert_eq!(
        shipped.len(),
        2,
        "committed and non-transactional; never the rolled back one"
    );
    assert_eq!(shipped[0]["type"], "message");
    assert_eq!(shipped[0]["content"], serde_json::json!({"order": 1}));
    assert_eq!(shipped[0]["transactional"], true);
    assert!(shipped[0]["xid"].is_u64());
    assert!(shipped[0]["committed_at"].is_string());
    assert_eq!(shipped[1]["content"], "plain text");
    assert_eq!(shipped[1]["transactional"], false);
    assert!(shipped[1]["xid"].is_null());
    let prefixed: Vec<&str> = reqs
        .iter()
        .filter(|r| r.path.starts_with("/orders/"))
        .map(|r| r.path.as_str())
        .collect();
    // Other prefixes, other lanes: no order between them.
    let mut prefixed = prefixed;
    prefixed.sort_unstable();
    assert_eq!(prefixed, ["/orders/orders.paid", "/orders/orders.shipped"]);
    // The message's transaction and its row change share the commit position.
    let row1 = reqs
        .iter()
        .find(|r| r.path == "/rows" && r.json()["record"]["id"] == 1)
        .unwrap()
        .json();
    assert_eq!(row1["commit_lsn"], shipped[0]["commit_lsn"]);
    assert_eq!(row1["xid"], shipped[0]["xid"]);
    // Everything is confirmed, the non-transactional message too.
    wait_confirmed(&pg, &db, current_lsn(&pg, &db), Duration::from_secs(30));
}

#[test]
fn truncate_events_go_only_to_triggers_that_ask_for_them() {
    let (pg, db) = Cluster::with_app_db(
        "CREATE TABLE a (id serial PRIMARY KEY); \
         CREATE TABLE b (id int PRIMARY KEY, a int REFERENCES a);",
    );
    let rx = Receiver::start();
    let dir = tempdir();
    let triggers = [
        trigger_toml(
            "a-all",
            "a",
            &rx.url("/a-all"),
            // A truncate keeps its place among the table's events under "table" ordering.
            &[
                "events = [\"create\", \"truncate\"]",
                "ordering = \"table\"",
            ],
        ),
        trigger_toml(
            "b-all",
            "b",
            &rx.url("/b-all"),
            &["events = [\"truncate\", \"create\"]"],
        ),
        trigger_toml("a-rows", "a", &rx.url("/a-rows"), &[]),
    ]
    .join("\n");
    let config = write_config(dir.path(), &pg.url(&db), "", &triggers);
    let _daemon = Walhook::streaming(&config);
    pg.psql(&db, "INSERT INTO a DEFAULT VALUES");
    pg.psql(&db, "TRUNCATE a CASCADE");
    pg.psql(&db, "TRUNCATE b RESTART IDENTITY");
    pg.psql(&db, "INSERT INTO a DEFAULT VALUES");
    let reqs = rx.wait_until(Duration::from_secs(30), "the last inserts", |r| {
        r.iter().filter(|r| r.json()["type"] == "create").count() >= 4
    });
    let seen = |path: &str| -> Vec<serde_json::Value> {
        reqs.iter()
            .filter(|r| r.path == path)
            .map(Request::json)
            .collect()
    };
    let a_all = seen("/a-all");
    let types: Vec<&str> = a_all.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["create", "truncate", "create"]);
    let t = &a_all[1];
    assert_eq!(t["table"], "a");
    assert_eq!(t["cascade"], true);
    assert_eq!(t["restart_identity"], false);
    assert!(t["record"].is_null() && t["old_record"].is_null());
    // TRUNCATE a CASCADE truncates b too: one event per table.
    let b_all = seen("/b-all");
    let b: Vec<(bool, bool)> = b_all
        .iter()
        .map(|e| {
            assert_eq!(e["type"], "truncate");
            (
                e["cascade"].as_bool().unwrap(),
                e["restart_identity"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(b, [(true, false), (false, true)]);
    let a_rows: Vec<String> = seen("/a-rows")
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(a_rows, ["create", "create"], "no truncate unless asked for");
}

#[test]
fn check_refuses_truncate_triggers_when_the_publication_leaves_truncates_out() {
    let (pg, db) = Cluster::with_app_db(
        "CREATE TABLE a (id int PRIMARY KEY); \
         CREATE PUBLICATION walhook FOR TABLE a WITH (publish = 'insert, update, delete');",
    );
    let rx = Receiver::start();
    let dir = tempdir();
    let triggers = trigger_toml("a", "a", &rx.url("/a"), &["events = [\"truncate\"]"]);
    let config = write_config(dir.path(), &pg.url(&db), "", &triggers);
    let (status, out, err) = walhook(&["check", "--config", config.to_str().unwrap()]);
    assert!(!status.success(), "{out}{err}");
    assert!(
        format!("{out}{err}").contains("does not publish truncates"),
        "{out}{err}"
    );
    pg.psql(
        &db,
        "ALTER PUBLICATION walhook SET (publish = 'insert, update, delete, truncate')",
    );
    let (status, out, err) = walhook(&["check", "--config", config.to_str().unwrap()]);
    assert!(status.success(), "{out}{err}");
}

#[test]
fn a_config_of_message_triggers_only_runs_and_confirms() {
    let (pg, db) = Cluster::with_app_db("CREATE TABLE unrelated (id int PRIMARY KEY)");
    if pg.major() < 14 {
        return; // refused there: see the test above
    }
    let rx = Receiver::start();
    let dir = tempdir();
    let triggers = format!(
        "[[trigger]]\nname = \"all\"\nmessage = \"*\"\nurl = \"{}\"\nmethod = \"PUT\"\n",
        rx.url("/m")
    );
    let config = write_config(dir.path(), &pg.url(&db), "", &triggers);
    let _daemon = Walhook::streaming(&config);
    pg.psql(&db, "INSERT INTO unrelated VALUES (1)");
    pg.psql(&db, "SELECT pg_logical_emit_message(false, 'a', '1')");
    pg.psql(&db, "SELECT pg_logical_emit_message(true, 'b', '[2]')");
    let reqs = rx.wait_until(Duration::from_secs(30), "two messages", |r| r.len() >= 2);
    // Other prefixes, other lanes: no order between them.
    let mut got: Vec<(String, String, serde_json::Value)> = reqs
        .iter()
        .map(|r| {
            let j = r.json();
            (
                r.method.clone(),
                j["prefix"].to_string(),
                j["content"].clone(),
            )
        })
        .collect();
    got.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        got,
        [
            ("PUT".to_owned(), "\"a\"".to_owned(), serde_json::json!(1)),
            ("PUT".to_owned(), "\"b\"".to_owned(), serde_json::json!([2]))
        ]
    );
    wait_confirmed(&pg, &db, current_lsn(&pg, &db), Duration::from_secs(30));
}
