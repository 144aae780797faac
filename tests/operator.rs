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

#[test]
fn the_summary_line_tells_of_parking_and_quiet_turns_it_off() {
    let (pg, db) = Cluster::with_app_db("CREATE TABLE t (id int PRIMARY KEY)");
    let (rx, dir) = (Receiver::start(), tempdir());
    rx.set_status(503);
    let defaults =
        "timeout = \"2s\"\nretry = { initial = \"50ms\", max = \"500ms\", park_after = \"1s\" }";
    let triggers = trigger_toml("t", "t", &rx.url("/t"), &[]);
    let config = write_config(dir.path(), &pg.url(&db), defaults, &triggers);
    let walhook = Walhook::streaming(&config);
    pg.psql(&db, "INSERT INTO t SELECT g FROM generate_series(1, 40) g");
    // Parking may span two intervals: the lines add up to every row.
    let parked_in_summaries = |log: &str| -> u64 {
        log.lines()
            .filter(|l| l.contains("walhook::summary: last 10s: "))
            .filter_map(|l| {
                l.split(" parked")
                    .next()?
                    .rsplit(' ')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while parked_in_summaries(&walhook.log_text()) < 40 {
        assert!(
            std::time::Instant::now() < deadline,
            "no summary told of 40 parked events:\n{}",
            walhook.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(parked_in_summaries(&walhook.log_text()), 40);
    walhook.kill9();

    // --quiet: deliveries, and no summary line in more than one interval.
    rx.set_status(200);
    let quiet = Walhook::start_with(&config, &["--quiet"]);
    quiet.wait_log("streaming slot=", 1, Duration::from_secs(30));
    let deadline = std::time::Instant::now() + Duration::from_secs(12);
    let mut n = 100;
    while std::time::Instant::now() < deadline {
        pg.psql(&db, &format!("INSERT INTO t VALUES ({n})"));
        n += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    rx.wait_until(
        Duration::from_secs(20),
        "the parked rows and the new ones",
        |r| delivered_rows(r).len() == 40 + (n - 100) as usize,
    );
    assert_eq!(
        quiet.log_count("walhook::summary"),
        0,
        "{}",
        quiet.log_text()
    );
}
