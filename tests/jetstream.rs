//! JetStream targets: every change exactly once in the stream, each row's events in commit
//! order, through kill -9 of walhook and a restart of NATS. A real Postgres, a real
//! `nats-server -js`, the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use support::daemon::*;
use support::nats::{NatsServer, StoredMessage};
use support::pg::Cluster;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn jetstream_trigger(nats: &NatsServer, extra: &str) -> String {
    format!(
        "[[trigger]]\nname = \"cdc\"\ntable = \"t\"\nurl = \"{}\"\n\
         subject = \"cdc.{{table}}.{{type}}\"\nsecret = \"{SECRET}\"\n{extra}\n",
        nats.url()
    )
}

/// Waits until stream `name` holds `n` messages (or panics after `timeout`).
fn wait_stored(nats: &NatsServer, name: &str, n: usize, timeout: Duration) -> Vec<StoredMessage> {
    let deadline = Instant::now() + timeout;
    loop {
        let msgs = nats.messages(name);
        if msgs.len() >= n {
            return msgs;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} messages stored after {timeout:?}",
            msgs.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn every_change_is_stored_once_in_row_order_through_kill_9_and_a_nats_restart() {
    let (pg, db) = Cluster::with_app_db("CREATE TABLE t (id int PRIMARY KEY, n int)");
    let mut nats = NatsServer::start();
    nats.create_stream("CDC", &["cdc.>"], Duration::from_secs(600));
    let dir = tempdir();
    let triggers = jetstream_trigger(&nats, "concurrency = 8\nbatch = 50");
    let config = write_config(
        dir.path(),
        &pg.url(&db),
        "timeout = \"2s\"\nretry = { initial = \"50ms\", max = \"500ms\" }",
        &triggers,
    );
    let daemon = Walhook::streaming(&config);
    let insert = |from: i32, to: i32| {
        pg.psql(
            &db,
            &format!("INSERT INTO t SELECT g, 0 FROM generate_series({from}, {to}) g"),
        );
    };
    // 2,000 creates, then walhook is killed mid-stream and started again.
    for b in 0..4 {
        insert(b * 500 + 1, b * 500 + 500);
    }
    pg.psql(&db, "UPDATE t SET n = 1 WHERE id <= 1000");
    std::thread::sleep(Duration::from_millis(150));
    daemon.kill9();
    pg.psql(&db, "UPDATE t SET n = 1 WHERE id > 1000");
    let daemon = Walhook::streaming(&config);
    wait_stored(&nats, "CDC", 4_000, Duration::from_secs(60));
    // NATS goes down: new changes are not confirmed past while their publishes fail.
    nats.stop();
    // The insert position just before the commit: the commit record starts at or after it,
    // and confirming past its start would skip the transaction.
    let unacked = lsn(&pg.psql(
        &db,
        "BEGIN; DELETE FROM t WHERE id <= 500; SELECT pg_current_wal_insert_lsn(); COMMIT;",
    ));
    std::thread::sleep(Duration::from_secs(2));
    let confirmed = slot_confirmed(&pg, &db).unwrap();
    assert!(
        confirmed <= unacked,
        "slot confirmed {confirmed} while events up to {unacked} were not acknowledged"
    );
    nats.boot();
    pg.psql(&db, "UPDATE t SET n = 2 WHERE id > 1900");
    let msgs = wait_stored(&nats, "CDC", 4_600, Duration::from_secs(60));
    wait_confirmed(&pg, &db, current_lsn(&pg, &db), Duration::from_secs(30));
    drop(daemon);

    // Exactly once: 2,000 creates, 2,000 + 100 updates, 500 deletes; no id stored twice.
    let ids: Vec<&str> = msgs.iter().map(|m| m.header("nats-msg-id")).collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "a Nats-Msg-Id stored twice");
    assert_eq!(msgs.len(), 4_600);
    // Each row's events in commit order, by stream sequence.
    let mut by_row: HashMap<i64, Vec<(u64, String)>> = HashMap::new();
    for m in &msgs {
        let j = m.json();
        let row = if j["type"] == "delete" {
            &j["old_record"]
        } else {
            &j["record"]
        };
        assert_eq!(m.subject, format!("cdc.t.{}", j["type"].as_str().unwrap()));
        assert_eq!(m.header("webhook-id"), j["id"].as_str().unwrap());
        assert!(
            walhook::delivery::verify(
                SECRET,
                m.header("webhook-id"),
                m.header("webhook-timestamp"),
                &m.body,
                m.header("webhook-signature")
            ),
            "signed like a webhook"
        );
        by_row
            .entry(row["id"].as_i64().unwrap())
            .or_default()
            .push((m.sequence, j["type"].as_str().unwrap().to_owned()));
    }
    assert_eq!(by_row.len(), 2_000);
    for (id, events) in &by_row {
        let mut sorted = events.clone();
        sorted.sort();
        let types: Vec<&str> = sorted.iter().map(|(_, t)| t.as_str()).collect();
        let want: &[&str] = match id {
            1..=500 => &["create", "update", "delete"],
            1901.. => &["create", "update", "update"],
            _ => &["create", "update"],
        };
        assert_eq!(types, want, "row {id}");
    }
}

#[test]
fn a_missing_stream_is_a_clear_error_then_delivery_once_it_exists() {
    let (pg, db) = Cluster::with_app_db("CREATE TABLE t (id int PRIMARY KEY, n int)");
    let nats = NatsServer::start();
    let dir = tempdir();
    let triggers = jetstream_trigger(&nats, "");
    let config = write_config(
        dir.path(),
        &pg.url(&db),
        "timeout = \"2s\"\nretry = { initial = \"50ms\", max = \"500ms\" }",
        &triggers,
    );
    let (status, out, err) = walhook(&["check", "--config", config.to_str().unwrap()]);
    assert!(
        status.success(),
        "a missing stream is a warning: {out}{err}"
    );
    assert!(
        out.contains("no JetStream stream captures subject \"cdc.t.create\""),
        "{out}{err}"
    );
    let daemon = Walhook::streaming(&config);
    pg.psql(&db, "INSERT INTO t VALUES (1, 0), (2, 0)");
    daemon.wait_log(
        "no JetStream stream captures the subject",
        1,
        Duration::from_secs(20),
    );
    let before = slot_confirmed(&pg, &db).unwrap();
    assert!(
        before < current_lsn(&pg, &db),
        "nothing confirmed while no stream stores it"
    );
    // A stream whose duplicate window is short: check says so.
    nats.create_stream("CDC", &["cdc.>"], Duration::from_millis(100));
    let msgs = wait_stored(&nats, "CDC", 2, Duration::from_secs(30));
    assert_eq!(msgs.len(), 2);
    wait_confirmed(&pg, &db, current_lsn(&pg, &db), Duration::from_secs(30));
    let (status, out, err) = walhook(&["check", "--config", config.to_str().unwrap()]);
    assert!(status.success(), "{out}{err}");
    assert!(
        out.contains("duplicate window (100ms) is shorter than retry.max (500ms)"),
        "{out}{err}"
    );
}

#[test]
fn jetstream_keys_are_checked() {
    let dir = tempdir();
    for (trigger, want) in [
        (
            "url = \"nats://127.0.0.1:4222\"\nmethod = \"PUT\"",
            "has no HTTP method",
        ),
        (
            "url = \"https://example.com/\"\nsubject = \"x\"",
            "only a JetStream trigger",
        ),
        (
            "url = \"nats://127.0.0.1:4222\"\nsubject = \"a..b\"",
            "empty tokens",
        ),
        (
            "url = \"nats://127.0.0.1:4222\"\nsubject = \"cdc.>\"",
            "no wildcards",
        ),
        (
            "url = \"nats://127.0.0.1:4222,http://x\"",
            "server 2 must be nats:// or tls://",
        ),
        (
            "url = \"nats://127.0.0.1:4222\"\nsubject = \"cdc.{recrod.id}\"",
            "unknown variable `recrod`",
        ),
        (
            "url = \"nats://127.0.0.1:4222\"\ntoken = \"a\"\nnkey = \"b\"",
            "one of creds, nkey and token",
        ),
    ] {
        let text = format!("[[trigger]]\nname = \"j\"\ntable = \"t\"\n{trigger}\n");
        let config = write_config(dir.path(), "postgres://127.0.0.1:1/x", "", &text);
        let (status, out, err) = walhook(&["check", "--config", config.to_str().unwrap()]);
        assert!(!status.success());
        assert!(
            format!("{out}{err}").contains(want),
            "{trigger}: {out}{err}"
        );
    }
}
