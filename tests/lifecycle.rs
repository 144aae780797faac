//! walhook through the database's lifecycle: Postgres restarts of every mode, a slot dropped
//! or invalidated under it, signals, a paused instance and its standby, renames and
//! publication drift. A real Postgres, a real receiver, the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::time::Duration;

use support::daemon::*;
use support::pg::Cluster;
use support::receiver::Receiver;

/// Database `app` made by `schema` (with extra `postgresql.conf` lines), a receiver, a
/// directory for the config.
fn scenario(conf: &[&str], schema: &str) -> (Cluster, String, Receiver, tempfile::TempDir) {
    let (pg, db) = Cluster::with_conf_and_app_db(conf, schema);
    (pg, db, Receiver::start(), tempdir())
}

// ================================================================ 1. Postgres restarts

#[test]
fn postgres_restarts_of_every_mode_during_a_backlog_lose_nothing() {
    let (mut pg, db, rx, dir) = scenario(
        &["wal_sender_timeout = 10s"],
        "CREATE TABLE t (id int PRIMARY KEY)",
    );
    let triggers = trigger_toml("t", "t", &rx.url("/t"), &["concurrency = 4"]);
    let config = write_config(dir.path(), &pg.url(&db), FAST, &triggers);
    let mut walhook = Walhook::streaming(&config);
    rx.set_delay(Duration::from_millis(3), true);
    let mut expected = 0usize;
    for (round, mode) in ["fast", "smart", "immediate"].into_iter().enumerate() {
        let base = 10_000 * (round as i64 + 1);
        for b in 0..10 {
            pg.psql(
                &db,
                &format!(
                    "INSERT INTO t SELECT g FROM generate_series({}, {}) g",
                    base + b * 100,
                    base + b * 100 + 99
                ),
            );
        }
        expected += 1000;
        rx.wait_until(Duration::from_secs(30), "part of the backlog", |r| {
            delivered_rows(r).len() > expected - 900
        });
        let port = pg.port;
        pg.stop_with(mode);
        std::thread::sleep(Duration::from_millis(300));
        pg.boot();
        assert_eq!(pg.port, port, "postgres came back on another port");
        let rows: std::collections::HashSet<i64> = pg
            .psql(&db, "SELECT id FROM t")
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        // With the test clusters' asynchronous commit, `-m immediate` may lose the last
        // commits: every row that exists must arrive.
        assert!(rows.len() <= expected && rows.len() + 1000 >= expected);
        expected = rows.len();
        rx.wait_until(
            Duration::from_secs(60),
            &format!("every row after a {mode} restart"),
            |r| delivered_rows(r).is_superset(&rows),
        );
        assert!(
            walhook.is_running(),
            "walhook stopped after a {mode} restart"
        );
    }
    wait_confirmed(&pg, &db, current_lsn(&pg, &db), Duration::from_secs(30));
    assert!(walhook.is_running());
    assert_eq!(walhook.log_count("protocol violation"), 0);
}

// ================================================================ 2. a dropped slot

/// Terminates the slot's walsender and drops the slot (retrying while it is still active).
fn drop_slot_under_walhook(pg: &Cluster, db: &str) {
    pg.psql(
        db,
        &format!(
            "DO $$ BEGIN
               PERFORM pg_terminate_backend(active_pid) FROM pg_replication_slots
                 WHERE slot_name = '{SLOT}' AND active_pid IS NOT NULL;
               FOR i IN 1..200 LOOP
                 BEGIN
                   PERFORM pg_drop_replication_slot('{SLOT}');
                   RETURN;
                 EXCEPTION WHEN object_in_use THEN
                   PERFORM pg_sleep(0.02);
                 END;
               END LOOP;
               RAISE 'slot still active';
             END $$"
        ),
    );
}

fn slot_exists(pg: &Cluster, db: &str) -> bool {
    pg.psql(
        db,
        &format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{SLOT}'"),
    ) == "1"
}

#[test]
fn a_dropped_slot_stops_walhook_naming_the_gap_and_is_not_recreated() {
    let (pg, db, rx, dir) = scenario(&[], "CREATE TABLE t (id int PRIMARY KEY)");
    let triggers = trigger_toml("t", "t", &rx.url("/t"), &[]);
    let config = write_config(dir.path(), &pg.url(&db), FAST, &triggers);
    let config_arg = config.to_str().unwrap();
    let mut daemon = Walhook::streaming(&config);
    pg.psql(&db, "INSERT INTO t VALUES (1)");
    rx.wait_until(Duration::from_secs(20), "row 1", |r| {
        delivered_rows(r).contains(&1)
    });
    let delivered_up_to = wait_confirmed(&pg, &db, current_lsn(&pg, &db), Duration::from_secs(20));

    // Changes queued behind a failing target when the slot goes.
    rx.set_status(503);
    pg.psql(&db, "INSERT INTO t VALUES (2), (3)");
    std::thread::sleep(Duration::from_millis(300));
    drop_slot_under_walhook(&pg, &db);
    let status = daemon.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{}", daemon.log_text());
    let log = daemon.log_text();
    assert!(
        log.contains("\"walhook\", which walhook streams from, was dropped"),
        "{log}"
    );
    assert!(log.contains("walhook setup --new-slot"), "{log}");
    // The range at risk starts at or before what was delivered and confirmed.
    let since = log
        .split("changes committed after ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(lsn)
        .expect("the error names an LSN");
    assert!(since <= delivered_up_to, "{since} > {delivered_up_to}");
    assert!(
        !slot_exists(&pg, &db),
        "walhook created a new slot by itself"
    );

    // A restart (or `setup`) meets the same error: the gap is remembered, not forgotten.
    let mut again = Walhook::start(&config);
    assert_eq!(again.wait_exit(Duration::from_secs(30)).code(), Some(1));
    assert!(
        again.log_text().contains("was dropped"),
        "{}",
        again.log_text()
    );
    let (status, _, stderr) = walhook(&["setup", "--config", config_arg]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("was dropped"), "{stderr}");
    assert!(!slot_exists(&pg, &db));

    // The explicit command accepts the gap; then walhook streams from the new slot.
    let (status, stdout, stderr) = walhook(&["setup", "--new-slot", "--config", config_arg]);
    assert!(status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("were not captured"), "{stdout}");
    assert!(slot_exists(&pg, &db));
    rx.set_status(200);
    let _walhook = Walhook::streaming(&config);
    pg.psql(&db, "INSERT INTO t VALUES (4)");
    rx.wait_until(Duration::from_secs(20), "row 4 from the new slot", |r| {
        delivered_rows(r).contains(&4)
    });
}

// ================================================================ 6. an invalidated slot

#[test]
fn an_invalidated_slot_is_an_error_for_run_check_and_status() {
    let (pg, db, rx, dir) = scenario(
        &["max_slot_wal_keep_size = '1MB'"],
        "CREATE TABLE t (id int PRIMARY KEY, pad text)",
    );
    let triggers = trigger_toml("t", "t", &rx.url("/t"), &[]);
    let config = write_config(dir.path(), &pg.url(&db), FAST, &triggers);
    let config_arg = config.to_str().unwrap();
    let mut daemon = Walhook::streaming(&config);

    // Healthy: check passes and reports wal_status and the keep size; status exits 0.
    let (status, stdout, _) = walhook(&["check", "--config", config_arg]);
    assert!(status.success(), "{stdout}");
    assert!(
        stdout.contains("wal_status reserved") && stdout.contains("max_slot_wal_keep_size 1MB"),
        "{stdout}"
    );
    let (status, stdout, _) = walhook(&["status", "--json", "--config", config_arg]);
    assert!(status.success(), "{stdout}");
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON object");
    assert_eq!(json["slot"]["name"], SLOT);
    assert_eq!(json["slot"]["wal_status"], "reserved");
    assert_eq!(json["slot"]["max_slot_wal_keep_size"], "1MB");
    assert!(json["slot"]["retained_bytes"].as_i64().is_some());
    assert_eq!(json["triggers"]["t"]["table"], "public.t");

    // A target that fails holds the slot back; past the keep size, a checkpoint
    // invalidates it.
    rx.set_status(503);
    pg.psql(&db, "INSERT INTO t VALUES (1, 'x')");
    // (An asynchronous commit reaches pg_current_wal_lsn within wal_writer_delay.)
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (status, stdout) = loop {
        let (status, stdout, _) = walhook(&["status", "--max-lag", "1", "--config", config_arg]);
        if !status.success() || std::time::Instant::now() > deadline {
            break (status, stdout);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("bytes behind the server's WAL (more than 1)"),
        "{stdout}"
    );
    let mut lost = false;
    for i in 2..40 {
        pg.psql(
            &db,
            &format!(
                "INSERT INTO t SELECT {i} * 1000 + g, repeat('x', 1000) FROM generate_series(1, 300) g;
                 SELECT pg_switch_wal(); CHECKPOINT;"
            ),
        );
        let wal_status = pg.psql(
            &db,
            &format!("SELECT wal_status FROM pg_replication_slots WHERE slot_name = '{SLOT}'"),
        );
        if wal_status == "lost" {
            lost = true;
            break;
        }
    }
    assert!(lost, "the slot was not invalidated");

    let code = daemon.wait_exit(Duration::from_secs(60)).code();
    assert_eq!(code, Some(1), "{}", daemon.log_text());
    assert!(
        daemon.log_text().contains("was invalidated by Postgres"),
        "{}",
        daemon.log_text()
    );
    let (status, stdout, _) = walhook(&["check", "--config", config_arg]);
    assert_eq!(status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("error: replication slot \"walhook\", which walhook streams from, was invalidated by Postgres"),
        "{stdout}"
    );
    let (status, stdout, _) = walhook(&["status", "--config", config_arg]);
    assert_eq!(status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("wal_status lost"), "{stdout}");
    assert!(
        stdout.contains(
            "error: replication slot \"walhook\", which walhook streams from, was invalidated"
        ),
        "{stdout}"
    );

    // Accepting the gap gives a healthy slot again.
    let (status, stdout, stderr) = walhook(&["setup", "--new-slot", "--config", config_arg]);
    assert!(status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("were not captured"), "{stdout}");
    let (status, stdout, _) = walhook(&["status", "--config", config_arg]);
    assert!(status.success(), "{stdout}");
    let (status, stdout, _) = walhook(&["check", "--config", config_arg]);
    assert!(status.success(), "{stdout}");
}

// ================================================================ 5. SIGHUP

#[test]
fn sighup_reloads_a_valid_config_and_keeps_the_old_one_when_invalid() {
    let (pg, db, rx, dir) = scenario(&[], "CREATE TABLE t (id int PRIMARY KEY)");
    let first = trigger_toml("t", "t", &rx.url("/first"), &[]);
    let config = write_config(dir.path(), &pg.url(&db), FAST, &first);
    let mut daemon = Walhook::streaming(&config);
    pg.psql(&db, "INSERT INTO t VALUES (1)");
    rx.wait_until(Duration::from_secs(20), "row 1 at /first", |r| {
        r.iter().any(|r| r.path == "/first" && r.ok())
    });

    // A valid new config: the pipeline restarts with it, in the same process.
    let second = trigger_toml("t", "t", &rx.url("/second"), &[]);
    write_config(dir.path(), &pg.url(&db), FAST, &second);
    daemon.signal("-HUP");
    daemon.wait_log("config reloaded", 1, Duration::from_secs(20));
    daemon.wait_log("streaming slot=", 2, Duration::from_secs(30));
    assert!(
        daemon.log_text().contains("stopped"),
        "no final status update"
    );
    pg.psql(&db, "INSERT INTO t VALUES (2)");
    rx.wait_until(Duration::from_secs(20), "row 2 at /second", |r| {
        r.iter()
            .any(|r| r.path == "/second" && r.json()["record"]["id"] == 2)
    });

    // An invalid one: every problem is logged and the running config stays.
    let broken = format!(
        "{}colour = \"blue\"\n\n{}",
        trigger_toml("t", "t", &rx.url("/third"), &[]),
        trigger_toml("u", "missing_table", &rx.url("/third"), &[])
    );
    write_config(dir.path(), &pg.url(&db), FAST, &broken);
    daemon.signal("-HUP");
    daemon.wait_log("the new config is not valid", 1, Duration::from_secs(20));
    let log = daemon.log_text();
    assert!(log.contains("colour"), "{log}");
    // The file's problem is reported; it is not started.
    assert_eq!(daemon.log_count("config reloaded"), 1);
    pg.psql(&db, "INSERT INTO t VALUES (3)");
    rx.wait_until(Duration::from_secs(20), "row 3 at /second", |r| {
        r.iter()
            .any(|r| r.path == "/second" && r.json()["record"]["id"] == 3)
    });
    assert!(daemon.is_running());
    assert!(rx.requests().iter().all(|r| r.path != "/third"));

    // A valid file whose database side fails the preflight is refused too.
    let missing = trigger_toml("u", "missing_table", &rx.url("/third"), &[]);
    write_config(dir.path(), &pg.url(&db), FAST, &missing);
    daemon.signal("-HUP");
    daemon.wait_log("the new config is not valid", 2, Duration::from_secs(20));
    assert!(
        daemon.log_text().contains("missing_table"),
        "{}",
        daemon.log_text()
    );
    assert!(daemon.is_running());
}

// ================================================================ 7. a paused instance

#[test]
fn a_paused_instance_does_not_deliver_after_its_standby_took_over() {
    // The walsender gives up on a silent client after wal_sender_timeout: keep it short.
    let (pg, db, rx, dir) = scenario(
        &["wal_sender_timeout = 6s"],
        "CREATE TABLE t (id int PRIMARY KEY)",
    );
    let triggers = trigger_toml("t", "t", &rx.url("/t"), &["concurrency = 4"]);
    let config = write_config(dir.path(), &pg.url(&db), FAST, &triggers);
    let active = Walhook::streaming(&config);
    let standby = Walhook::start(&config);
    standby.wait_log("waiting as a standby", 1, Duration::from_secs(30));

    // The active instance holds 200 events it cannot deliver yet, then freezes.
    rx.set_status(503);
    pg.psql(&db, "INSERT INTO t SELECT g FROM generate_series(1, 200) g");
    rx.wait_until(Duration::from_secs(20), "attempts of the active one", |r| {
        r.len() >= 4
    });
    active.signal("-STOP");
    rx.set_status(200);
    standby.wait_log("streaming slot=", 1, Duration::from_secs(60));
    rx.wait_until(Duration::from_secs(30), "the standby delivers all", |r| {
        delivered_rows(r).len() == 200
    });
    wait_confirmed(&pg, &db, current_lsn(&pg, &db), Duration::from_secs(30));
    let before = rx.requests().len();

    // Woken up, the old instance must not send its queue again behind the standby's back.
    active.signal("-CONT");
    active.wait_log(
        "paused longer than half of wal_sender_timeout",
        1,
        Duration::from_secs(10),
    );
    std::thread::sleep(Duration::from_secs(3));
    let after = rx.requests();
    assert_eq!(
        after.len(),
        before,
        "the paused instance sent {} requests after waking",
        after.len() - before
    );
    active.wait_log("waiting as a standby", 1, Duration::from_secs(20));
}

// ================================================================ 4. no permanent stall

#[test]
fn a_value_whose_type_was_dropped_is_delivered_as_its_text() {
    let (pg, db, rx, dir) = scenario(
        &[],
        "CREATE TYPE mood AS ENUM ('ok', 'sad');
         CREATE TABLE t (id int PRIMARY KEY, m mood)",
    );
    let triggers = trigger_toml("t", "t", &rx.url("/t"), &[]);
    let config = write_config(dir.path(), &pg.url(&db), FAST, &triggers);
    let (status, stdout, stderr) = walhook(&["setup", "--config", config.to_str().unwrap()]);
    assert!(status.success(), "{stdout}{stderr}");
    // Written while the type exists, decoded after it is gone.
    pg.psql(&db, "INSERT INTO t VALUES (1, 'sad')");
    pg.psql(
        &db,
        "ALTER TABLE t ALTER m TYPE text; DROP TYPE mood; INSERT INTO t VALUES (2, 'fine')",
    );
    let mut daemon = Walhook::streaming(&config);
    let reqs = rx.wait_until(Duration::from_secs(20), "both rows", |r| {
        delivered_rows(r).len() == 2
    });
    let first = reqs
        .iter()
        .map(|r| r.json())
        .find(|b| b["record"]["id"] == 1)
        .unwrap();
    assert_eq!(first["record"]["m"], "sad");
    assert!(
        daemon
            .log_text()
            .contains("the column's type no longer exists"),
        "{}",
        daemon.log_text()
    );
    wait_confirmed(&pg, &db, current_lsn(&pg, &db), Duration::from_secs(20));
    assert!(daemon.is_running());
}

// ================================================================ 3. renames and drift

fn rows_of_table(
    reqs: &[support::receiver::Request],
    table: &str,
) -> std::collections::HashSet<i64> {
    reqs.iter()
        .filter(|r| r.ok() && r.json()["table"] == table)
        .filter_map(|r| r.json()["record"]["id"].as_i64())
        .collect()
}

#[test]
fn a_renamed_table_keeps_firing_its_trigger() {
    let (pg, db, rx, dir) = scenario(&[], "CREATE TABLE items (id int PRIMARY KEY)");
    let triggers = trigger_toml("items", "items", &rx.url("/items"), &[]);
    let config = write_config(dir.path(), &pg.url(&db), FAST, &triggers);
    let walhook = Walhook::streaming(&config);
    pg.psql(&db, "INSERT INTO items VALUES (1)");
    rx.wait_until(Duration::from_secs(20), "row 1", |r| {
        delivered_rows(r).contains(&1)
    });
    pg.psql(&db, "ALTER TABLE items RENAME TO items2");
    pg.psql(&db, "INSERT INTO items2 VALUES (2)");
    let reqs = rx.wait_until(Duration::from_secs(20), "row 2 of the renamed table", |r| {
        rows_of_table(r, "items2").contains(&2)
    });
    let event = reqs
        .iter()
        .find(|r| r.json()["record"]["id"] == 2)
        .unwrap()
        .json();
    assert_eq!(event["trigger"], "items", "{event}");
    walhook.wait_log("was renamed to public.items2", 1, Duration::from_secs(5));
    wait_confirmed(&pg, &db, current_lsn(&pg, &db), Duration::from_secs(20));
}

#[test]
fn a_table_dropped_from_the_publication_is_reported_added_back_and_the_gap_named() {
    let (pg, db, rx, dir) = scenario(
        &[],
        "CREATE TABLE items (id int PRIMARY KEY); CREATE TABLE other (id int PRIMARY KEY)",
    );
    let triggers = trigger_toml("items", "items", &rx.url("/items"), &[]);
    let config = write_config(dir.path(), &pg.url(&db), FAST, &triggers);
    let walhook = Walhook::streaming(&config);
    pg.psql(&db, "INSERT INTO items VALUES (1)");
    rx.wait_until(Duration::from_secs(20), "row 1", |r| {
        delivered_rows(r).contains(&1)
    });
    pg.psql(&db, "ALTER PUBLICATION walhook DROP TABLE items");
    pg.psql(&db, "ALTER PUBLICATION walhook ADD TABLE other");
    pg.psql(&db, "INSERT INTO items VALUES (2)"); // not captured: the publication lacks it
    walhook.wait_log(
        "had been removed from publication",
        1,
        Duration::from_secs(30),
    );
    let line = walhook
        .log_text()
        .lines()
        .find(|l| l.contains("had been removed from publication"))
        .unwrap()
        .to_owned();
    assert!(
        line.contains("ERROR") && line.contains("were not captured"),
        "{line}"
    );
    assert!(
        line.contains(" between ") && line.contains(" and "),
        "{line}"
    );
    assert_eq!(
        pg.psql(&db, "SELECT count(*) FROM pg_publication_tables WHERE pubname = 'walhook' AND tablename = 'items'"),
        "1",
        "walhook owns the publication and added the table back"
    );
    pg.psql(&db, "INSERT INTO items VALUES (3)");
    rx.wait_until(Duration::from_secs(20), "row 3 after the repair", |r| {
        delivered_rows(r).contains(&3)
    });
    assert!(walhook.log_count("drift:") >= 1);
    walhook.wait_log(
        "publishes public.other, which no trigger names",
        1,
        Duration::from_secs(15),
    );

    // While walhook is stopped: status says so, and the next start says so before adding it.
    drop(walhook);
    pg.psql(&db, "ALTER PUBLICATION walhook DROP TABLE items");
    let (code, text, _) =
        support::daemon::walhook(&["status", "--config", config.to_str().unwrap()]);
    assert_eq!(code.code(), Some(1), "{text}");
    assert!(text.contains("is not in publication \"walhook\""), "{text}");
    let restarted = Walhook::streaming(&config);
    assert_eq!(
        restarted.log_count("lacks public.items, which a trigger names"),
        1,
        "{}",
        restarted.log_text()
    );
}

#[test]
fn a_swap_migration_is_reported_and_a_restart_follows_the_new_table() {
    let (pg, db, rx, dir) = scenario(
        &[],
        "CREATE TABLE items (id int PRIMARY KEY); CREATE TABLE items_new (id int PRIMARY KEY)",
    );
    let triggers = trigger_toml("items", "items", &rx.url("/items"), &[]);
    let config = write_config(dir.path(), &pg.url(&db), FAST, &triggers);
    let walhook = Walhook::streaming(&config);
    pg.psql(
        &db,
        "BEGIN; ALTER TABLE items RENAME TO items_old; ALTER TABLE items_new RENAME TO items; COMMIT",
    );
    walhook.wait_log("which is now another table", 1, Duration::from_secs(30));
    // The bound (old) table keeps firing until the restart.
    pg.psql(&db, "INSERT INTO items_old VALUES (1)");
    rx.wait_until(Duration::from_secs(20), "row 1 of the old table", |r| {
        rows_of_table(r, "items_old").contains(&1)
    });
    drop(walhook);
    let _walhook = Walhook::streaming(&config);
    pg.psql(&db, "INSERT INTO items VALUES (2)");
    rx.wait_until(Duration::from_secs(20), "row 2 of the new table", |r| {
        rows_of_table(r, "items").contains(&2)
    });
}

// ================================================================ 4b. publication recreated

#[test]
fn a_publication_dropped_and_recreated_stops_walhook_with_a_fix_that_works() {
    let (pg, db, rx, dir) = scenario(&[], "CREATE TABLE items (id int PRIMARY KEY)");
    let triggers = trigger_toml("items", "items", &rx.url("/items"), &[]);
    let config = write_config(dir.path(), &pg.url(&db), FAST, &triggers);
    let config_arg = config.to_str().unwrap();
    let mut walhook = Walhook::streaming(&config);
    pg.psql(&db, "INSERT INTO items VALUES (1)");
    rx.wait_until(Duration::from_secs(20), "row 1", |r| {
        delivered_rows(r).contains(&1)
    });
    pg.psql(&db, "DROP PUBLICATION walhook");
    pg.psql(&db, "INSERT INTO items VALUES (2)"); // written while there is no publication
    pg.psql(&db, "CREATE PUBLICATION walhook FOR TABLE items");
    pg.psql(&db, "INSERT INTO items VALUES (3)");
    if pg.major() >= 18 {
        // PostgreSQL 18 decodes past such changes itself, with a warning: walhook keeps
        // going and reports the loss as drift.
        let reqs = rx.wait_until(Duration::from_secs(20), "row 3", |r| {
            delivered_rows(r).contains(&3)
        });
        assert!(!delivered_rows(&reqs).contains(&2));
        walhook.wait_log(
            "drift: postgres: skipped loading publication",
            1,
            Duration::from_secs(5),
        );
        assert!(walhook.is_running());
        return;
    }
    let status = walhook.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1));
    let log = walhook.log_text();
    assert!(log.contains("walhook setup --skip-unpublished"), "{log}");
    assert!(log.contains("did not exist when changes after"), "{log}");

    // The suggested fix works: the slot moves past the unpublished change, and no further.
    let (code, out, err) =
        support::daemon::walhook(&["setup", "--skip-unpublished", "--config", config_arg]);
    assert!(code.success(), "{out}{err}");
    assert!(
        out.contains("moved from") && out.contains("not delivered"),
        "{out}"
    );
    let (_, again, _) =
        support::daemon::walhook(&["setup", "--skip-unpublished", "--config", config_arg]);
    assert!(again.contains("nothing skipped"), "{again}");
    let _walhook = Walhook::streaming(&config);
    pg.psql(&db, "INSERT INTO items VALUES (4)");
    let reqs = rx.wait_until(Duration::from_secs(20), "rows 3 and 4", |r| {
        let rows = delivered_rows(r);
        rows.contains(&3) && rows.contains(&4)
    });
    assert!(
        !delivered_rows(&reqs).contains(&2),
        "row 2 was never published"
    );
    assert_eq!(
        reqs.iter()
            .filter(|r| r.json()["record"]["id"] == 1)
            .count(),
        1
    );
}
