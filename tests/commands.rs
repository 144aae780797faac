//! The small commands as a user types them: `setup` / `teardown`, `listen`'s argument and
//! start-up errors, `health` against nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::process::{Command, Output, Stdio};

use support::pg::Cluster;

const BIN: &str = env!("CARGO_BIN_EXE_walhook");

fn walhook(args: &[&str], config: Option<&std::path::Path>) -> Output {
    let mut c = Command::new(BIN);
    c.args(args)
        .env("WALHOOK_LOG", "info")
        .env_remove("WALHOOK_CONFIG")
        .stdin(Stdio::null());
    if let Some(path) = config {
        c.env("WALHOOK_CONFIG", path);
    }
    c.output().expect("run walhook")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    )
}

#[test]
fn teardown_says_what_it_dropped_and_server_notices_stay_out_of_the_log() {
    // An audit event trigger, as some databases have: DDL raises a NOTICE.
    let (pg, db) = Cluster::with_app_db(
        "CREATE TABLE orders (id int PRIMARY KEY);
         CREATE FUNCTION audit() RETURNS event_trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE NOTICE 'audit: %', tg_tag; END $$;
         CREATE EVENT TRIGGER audit ON ddl_command_end EXECUTE FUNCTION audit();",
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("walhook.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\nurl = \"{}\"\n\n[[trigger]]\nname = \"orders\"\ntable = \"orders\"\nurl = \"http://127.0.0.1:9/\"\n",
            pg.url(&db)
        ),
    )
    .unwrap();

    let out = walhook(&["setup"], Some(&config));
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("NOTICE"), "a raw notice line: {stderr}");
    // In walhook's own log, at debug level.
    let out = walhook(&["teardown"], Some(&config));
    assert!(out.status.success());
    let mut debug = Command::new(BIN);
    debug
        .arg("setup")
        .env("WALHOOK_CONFIG", &config)
        .env("WALHOOK_LOG", "walhook=debug");
    let (_, stderr) = text(&debug.output().unwrap());
    assert!(
        stderr.contains("postgres: audit: CREATE PUBLICATION"),
        "{stderr}"
    );
    let out = walhook(&["teardown"], Some(&config));
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stdout,
        "slot \"walhook\": dropped; publication \"walhook\": dropped"
    );

    // Nothing left: both say so, and the server's "does not exist, skipping" notice is not
    // printed as a raw log line.
    let out = walhook(&["teardown"], Some(&config));
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stdout,
        "slot \"walhook\": did not exist; publication \"walhook\": did not exist"
    );
    assert!(!stderr.contains("NOTICE"), "{stderr}");
    let left = pg.psql(
        &db,
        "SELECT (SELECT count(*) FROM pg_publication) + (SELECT count(*) FROM pg_replication_slots)",
    );
    assert_eq!(left, "0");
}

#[test]
fn listen_refuses_a_secret_that_is_not_a_standard_webhooks_secret() {
    let out = walhook(&["listen", "--port", "0", "--secret", "nope"], None);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--secret"), "{stderr}");
    assert!(stderr.contains("must start with `whsec_`"), "{stderr}");
}

#[test]
fn listen_on_a_busy_port_names_the_address() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let out = walhook(&["listen", "--port", &port], None);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port}: ")),
        "{stderr}"
    );
}

#[test]
fn health_fails_when_nothing_answers() {
    let free = support::pg::free_port().to_string();
    let out = walhook(&["health", "--addr", &format!("127.0.0.1:{free}")], None);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("http://127.0.0.1:{free}/healthz")),
        "{stderr}"
    );
}

#[test]
fn the_compose_try_out_config_is_valid_with_the_compose_environment() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let compose = std::fs::read_to_string(root.join("docker-compose.yml")).unwrap();
    // The values docker-compose.yml gives the walhook service.
    let value = |key: &str| {
        compose
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{key}: ")))
            .map(str::to_owned)
    };
    let text = std::fs::read_to_string(root.join("examples/walhook.toml")).unwrap();
    let config =
        walhook::config::parse(&text, std::path::Path::new("examples/walhook.toml"), &value)
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.triggers.len(), 2);
    assert_eq!(
        config.server.listen,
        "0.0.0.0:8187".parse().ok(),
        "the port compose publishes"
    );
    assert!(compose.contains("\"8187:8187\""));
}
