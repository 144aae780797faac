//! `walhook check` says yes exactly when `walhook run` starts: for each setup that used to pass
//! one and fail the other, both are run against a real Postgres and must agree, with the same
//! messages.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use support::pg::{Cluster, MD5_USER};
use support::receiver::Receiver;

const BIN: &str = env!("CARGO_BIN_EXE_walhook");

/// Runs a walhook subcommand to completion: (status, stdout, stderr). `run` is stopped with
/// SIGTERM once it logs that it streams (it started), so both outcomes return.
fn walhook(args: &[&str]) -> (ExitStatus, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .env("WALHOOK_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn walhook");
    let stderr = child.stderr.take().unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = lines.clone();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let mut s = sink.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut signalled = false;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "walhook {args:?} did not finish within 30s:\n{}",
                lines.lock().unwrap()
            );
        }
        if !signalled && lines.lock().unwrap().contains("streaming slot=") {
            Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .unwrap();
            signalled = true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    reader.join().unwrap();
    let stderr = lines.lock().unwrap().clone();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    )
}

fn write_config(dir: &Path, url: &str, trigger_extra: &str, rx: &Receiver) -> PathBuf {
    let path = dir.join("walhook.toml");
    let text = format!(
        "[source]\nurl = \"{url}\"\n\n[server]\nlisten = \"\"\n\n\
         [[trigger]]\nname = \"orders\"\ntable = \"orders\"\nurl = \"{}\"\n{trigger_extra}\n",
        rx.url("/orders")
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// `check`'s error lines (without the `error: ` label).
fn check_errors(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("error: "))
        .map(str::to_owned)
        .collect()
}

/// Runs `check` and `run` on `config`; asserts they agree. Returns check's errors.
fn agree(config: &Path) -> Vec<String> {
    let config = config.to_str().unwrap();
    let (check, stdout, check_err) = walhook(&["check", "--config", config]);
    let (run, _, run_log) = walhook(&["run", "--config", config]);
    let errors = check_errors(&stdout);
    if check.success() {
        assert!(errors.is_empty(), "{stdout}");
        assert!(
            run_log.contains("streaming slot="),
            "check passed, but run did not start:\n{stdout}\n--- run:\n{run_log}"
        );
        assert!(run.success(), "run after SIGTERM: {run:?}\n{run_log}");
    } else {
        assert_eq!(check.code(), Some(1), "{stdout}{check_err}");
        assert!(
            !errors.is_empty(),
            "check failed without an error line:\n{stdout}"
        );
        assert_eq!(
            run.code(),
            Some(1),
            "check refused, but run did not:\n{stdout}\n--- run:\n{run_log}"
        );
        for e in &errors {
            assert!(
                run_log.contains(e.as_str()),
                "run does not say what check says: {e:?}\n--- run:\n{run_log}"
            );
        }
    }
    errors
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("walhook-preflight-")
        .tempdir()
        .unwrap()
}

const ORDERS: &str = "CREATE TABLE orders (id int PRIMARY KEY, status text, amount numeric)";

#[test]
fn a_secret_without_padding_is_accepted_by_check_and_run_alike() {
    let (pg, db) = Cluster::with_app_db(ORDERS);
    let (rx, dir) = (Receiver::start(), tempdir());
    // "ab" is YWI= in base64; the padding is optional everywhere.
    let config = write_config(dir.path(), &pg.url(&db), "secret = \"whsec_YWI\"", &rx);
    assert!(agree(&config).is_empty());
    // listen takes the same secret: it is still serving after a second.
    let mut listen = Command::new(BIN)
        .args(["listen", "--port", "0", "--secret", "whsec_YWI"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let running = listen.try_wait().unwrap().is_none();
    let _ = listen.kill();
    let out = listen.wait_with_output().unwrap();
    assert!(
        running,
        "listen exited: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn misspelt_columns_are_refused_with_a_suggestion() {
    let (pg, db) = Cluster::with_app_db(ORDERS);
    let (rx, dir) = (Receiver::start(), tempdir());
    let config = write_config(
        dir.path(),
        &pg.url(&db),
        "changed = [\"statuss\"]\ncolumns = [\"idd\", \"status\"]\n\
         when = \"record.statuss == 'paid' || old_record['amount'] > 1 || record.zzz == 1\"",
        &rx,
    );
    let errors = agree(&config);
    let has = |needle: &str| errors.iter().any(|e| e.contains(needle));
    assert!(
        has(
            "trigger \"orders\": changed names column \"statuss\", but public.orders has no such column (did you mean \"status\"?)"
        ),
        "{errors:#?}"
    );
    assert!(
        has(
            "columns names column \"idd\", but public.orders has no such column (did you mean \"id\"?)"
        ),
        "{errors:#?}"
    );
    assert!(has("when reads record.statuss"), "{errors:#?}");
    assert!(
        has(
            "when reads record.zzz, but public.orders has no such column; its columns are id, status, amount"
        ),
        "{errors:#?}"
    );
    // old_record['amount'] exists: not reported.
    assert!(!has("amount,"), "{errors:#?}");
    assert_eq!(errors.len(), 4, "{errors:#?}");
    // Nothing was created.
    assert_eq!(
        pg.psql(&db, "SELECT count(*) FROM pg_replication_slots"),
        "0"
    );
    assert_eq!(pg.psql(&db, "SELECT count(*) FROM pg_publication"), "0");
}

#[test]
fn a_slot_of_another_database_is_refused() {
    let (pg, db) = Cluster::with_app_db(ORDERS);
    let other = pg.create_db("other");
    pg.psql(
        &other,
        "SELECT pg_create_logical_replication_slot('walhook', 'pgoutput')",
    );
    let (rx, dir) = (Receiver::start(), tempdir());
    let config = write_config(dir.path(), &pg.url(&db), "", &rx);
    let errors = agree(&config);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].contains(
            "replication slot \"walhook\" exists but belongs to database \"other\", not \"app\""
        ),
        "{errors:#?}"
    );
}

#[test]
fn a_replication_role_without_create_is_refused_until_the_owner_creates_the_publication() {
    let (pg, db) = Cluster::with_app_db(ORDERS);
    pg.psql(
        &db,
        "CREATE ROLE cdc LOGIN REPLICATION; REVOKE CREATE ON DATABASE app FROM PUBLIC; \
         GRANT SELECT ON orders TO cdc",
    );
    let url = pg.url(&db).replace("postgres@", "cdc@");
    let (rx, dir) = (Receiver::start(), tempdir());
    let config = write_config(dir.path(), &url, "", &rx);
    let errors = agree(&config);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].starts_with(
            "publication \"walhook\" does not exist, and role \"cdc\" may not create it \
             (that needs CREATE on database \"app\" and ownership of public.orders); \
             have the tables' owner run: CREATE PUBLICATION \"walhook\" FOR TABLE \"public\".\"orders\""
        ),
        "{errors:#?}"
    );
    // The fix the message gives, run by the owner: now both pass and run streams.
    pg.psql(
        &db,
        "CREATE PUBLICATION \"walhook\" FOR TABLE \"public\".\"orders\"",
    );
    assert!(agree(&config).is_empty());

    // A publication with other tables, which the role may not change: refused again.
    pg.psql(
        &db,
        "CREATE TABLE extra (id int PRIMARY KEY); ALTER PUBLICATION walhook ADD TABLE extra",
    );
    let errors = agree(&config);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].contains("does not publish exactly the triggers' tables, and role \"cdc\" may not change it (that needs ownership of publication \"walhook\"); have its owner run: ALTER PUBLICATION \"walhook\" SET TABLE \"public\".\"orders\""),
        "{errors:#?}"
    );
}

#[test]
fn connection_failures_name_their_cause_once() {
    let (pg, db) = Cluster::with_app_db(ORDERS);
    let (rx, dir) = (Receiver::start(), tempdir());
    let url = pg.url(&db);
    let cases = [
        (
            url.replace("postgres@", &format!("{MD5_USER}:wrong@")),
            format!("password authentication failed for user \"{MD5_USER}\""),
        ),
        (
            url.replace("/app?", "/nope?"),
            "database \"nope\" does not exist".to_string(),
        ),
    ];
    for (bad, cause) in cases {
        let config = write_config(dir.path(), &bad, "", &rx);
        let config = config.to_str().unwrap();
        let (status, stdout, _) = walhook(&["check", "--config", config]);
        assert_eq!(status.code(), Some(1), "{stdout}");
        assert!(stdout.contains(&cause), "check: {stdout}");
        let (status, _, stderr) = walhook(&["run", "--config", config]);
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(&cause), "run: {stderr}");
        assert!(!stderr.contains("db error: db error"), "run: {stderr}");
        assert!(!stderr.contains("wrong"), "the password leaked: {stderr}");
    }

    // A port nothing listens on: run keeps retrying and says why, though it never connected.
    let port = support::pg::free_port();
    let refused = url.replace(&format!(":{}/", pg.port), &format!(":{port}/"));
    let config = write_config(dir.path(), &refused, "", &rx);
    let mut child = Command::new(BIN)
        .args(["run", "--config", config.to_str().unwrap()])
        .env("WALHOOK_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    let line = log
        .lines()
        .find(|l| l.contains("not connected yet"))
        .unwrap_or_else(|| panic!("no retry line:\n{log}"));
    assert!(line.contains("Connection refused"), "{line}");
    assert!(!log.contains("database connection lost"), "{log}");
}

#[test]
fn key_reads_are_checked_against_the_replica_identity_key() {
    let (pg, db) = Cluster::with_app_db(ORDERS);
    let (rx, dir) = (Receiver::start(), tempdir());
    let config = write_config(
        dir.path(),
        &pg.url(&db),
        "body = \"{'id': key.id, 's': key['status']}\"",
        &rx,
    );
    assert_eq!(
        agree(&config),
        [
            "trigger \"orders\": body reads key.status, but public.orders has key columns id; read record.status instead"
        ]
    );
    // The key of REPLICA IDENTITY USING INDEX is the index's columns.
    pg.psql(
        &db,
        "ALTER TABLE orders ALTER status SET NOT NULL; \
         CREATE UNIQUE INDEX orders_status ON orders (status); \
         ALTER TABLE orders REPLICA IDENTITY USING INDEX orders_status",
    );
    assert_eq!(
        agree(&config),
        [
            "trigger \"orders\": body reads key.id, but public.orders has key columns status; read record.id instead"
        ]
    );
    // FULL without a primary key: `key` is null for every event.
    pg.psql(
        &db,
        "ALTER TABLE orders DROP CONSTRAINT orders_pkey; ALTER TABLE orders REPLICA IDENTITY FULL",
    );
    let errors = agree(&config);
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(
        errors[0].contains(
            "reads key.id, but public.orders has no replica identity key, so `key` is null"
        ),
        "{errors:#?}"
    );
}

#[test]
fn check_warns_when_a_truncate_trigger_filters_on_row_values() {
    let (pg, db) = Cluster::with_app_db(ORDERS);
    pg.psql(&db, "CREATE PUBLICATION walhook FOR TABLE orders");
    let (rx, dir) = (Receiver::start(), tempdir());
    let config = write_config(
        dir.path(),
        &pg.url(&db),
        "events = [\"create\", \"truncate\"]\nwhen = \"record.status == 'paid'\"",
        &rx,
    );
    let (status, stdout, _) = walhook(&["check", "--config", config.to_str().unwrap()]);
    assert!(status.success(), "{stdout}");
    assert!(
        stdout.contains(
            "warning: trigger \"orders\" fires on truncate, but its `when` reads record.status: a truncate has no row"
        ),
        "{stdout}"
    );
    // A `when` that keeps truncates says so, and is not warned about.
    let config = write_config(
        dir.path(),
        &pg.url(&db),
        "events = [\"create\", \"truncate\"]\nwhen = \"type == 'truncate' || record.status == 'paid'\"",
        &rx,
    );
    let (status, stdout, _) = walhook(&["check", "--config", config.to_str().unwrap()]);
    assert!(status.success(), "{stdout}");
    assert!(!stdout.contains("fires on truncate"), "{stdout}");
}

#[test]
fn check_warns_about_templates_that_cannot_render_for_some_events() {
    let (pg, db) = Cluster::with_app_db(ORDERS);
    pg.psql(&db, "CREATE PUBLICATION walhook FOR TABLE orders");
    let (rx, dir) = (Receiver::start(), tempdir());
    let path = dir.path().join("walhook.toml");
    std::fs::write(
        &path,
        format!(
            "[source]\nurl = \"{}\"\n\n[server]\nlisten = \"\"\n\n\
             [[trigger]]\nname = \"orders\"\ntable = \"orders\"\n\
             events = [\"create\", \"delete\", \"truncate\"]\nbatch = 10\n\
             url = \"{}/{{record.status}}\"\nheaders = {{ X-Id = \"{{id}}\" }}\n",
            pg.url(&db),
            rx.url("/orders")
        ),
    )
    .unwrap();
    let (status, stdout, _) = walhook(&["check", "--config", path.to_str().unwrap()]);
    assert!(status.success(), "warnings only: {stdout}");
    for want in [
        "warning: trigger \"orders\" fires on truncate, but its `url` reads record.status: a truncate has no row",
        "warning: trigger \"orders\" fires on delete, but its `url` reads record.status: record is null for a delete",
        "warning: trigger \"orders\" has batch = 10, but a request holds events of one rendered URL and header values only",
    ] {
        assert!(stdout.contains(want), "{want}\n---\n{stdout}");
    }
}
