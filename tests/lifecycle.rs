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
        assert_eq!(rows.len(), expected);
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
