//! What an operator sees in the log while a target fails and recovers. A real Postgres, a
//! real receiver, the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::time::Duration;

use support::daemon::*;
use support::pg::Cluster;
use support::receiver::Receiver;

#[test]
fn a_failing_target_is_logged_once_when_it_starts_and_once_when_it_recovers() {
    let (pg, db) = Cluster::with_app_db("CREATE TABLE t (id int PRIMARY KEY)");
    let (rx, dir) = (Receiver::start(), tempdir());
    rx.set_status(503);
    let triggers = trigger_toml("t", "t", &rx.url("/t"), &["concurrency = 4"]);
    let config = write_config(dir.path(), &pg.url(&db), FAST, &triggers);
    let walhook = Walhook::streaming(&config);
    for i in 1..=5 {
        pg.psql(&db, &format!("INSERT INTO t VALUES ({i})"));
    }
    walhook.wait_log("target is failing (HTTP 503)", 1, Duration::from_secs(20));
    // Several failed attempts on several lanes, still one line.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while rx.requests().len() < 10 {
        assert!(std::time::Instant::now() < deadline, "too few attempts");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        walhook.log_count("target is failing"),
        1,
        "{}",
        walhook.log_text()
    );
    assert_eq!(walhook.log_count("target recovered"), 0);
    rx.set_status(200);
    walhook.wait_log("target recovered after", 1, Duration::from_secs(20));
    let line = walhook
        .log_text()
        .lines()
        .find(|l| l.contains("target recovered after"))
        .unwrap()
        .to_owned();
    assert!(
        line.contains("failed attempt(s)") && line.contains("trigger=t"),
        "{line}"
    );
    rx.wait_until(Duration::from_secs(20), "rows 1-5", |r| {
        delivered_rows(r).len() == 5
    });
    // Healthy again: no more lines of either kind.
    pg.psql(&db, "INSERT INTO t VALUES (6)");
    rx.wait_until(Duration::from_secs(20), "row 6", |r| {
        delivered_rows(r).len() == 6
    });
    assert_eq!(walhook.log_count("target is failing"), 1);
    assert_eq!(walhook.log_count("target recovered"), 1);
}
