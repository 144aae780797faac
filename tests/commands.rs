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

/// psql: from the server's bin directory, else any installed one (clients work across majors).
fn psql(pg: &Cluster) -> std::path::PathBuf {
    let own = pg.bin.join("psql");
    if own.exists() {
        return own;
    }
    std::fs::read_dir("/usr/lib/postgresql")
        .unwrap()
        .flatten()
        .map(|e| e.path().join("bin/psql"))
        .find(|p| p.exists())
        .expect("psql")
}

/// A walhook.toml in a new directory: `credentials` = `user:password`, one trigger on orders.
fn dir_config(
    pg: &Cluster,
    db: &str,
    credentials: &str,
    url: &str,
) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("walhook.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\nurl = \"postgres://{credentials}@127.0.0.1:{}/{db}?sslmode=disable\"\n\n\
             [server]\nlisten = \"\"\n\n\
             [[trigger]]\nname = \"orders\"\ntable = \"public.orders\"\nurl = \"{url}\"\n",
            pg.port
        ),
    )
    .unwrap();
    (dir, config)
}

fn prepare(pg: &Cluster, db: &str, vars: &[&str]) -> Output {
    let mut c = Command::new(psql(pg));
    c.args(["-X", "-q", "-A", "-t", "-h", "127.0.0.1", "-U", "postgres"])
        .args(["-p", &pg.port.to_string(), "-d", db]);
    for v in vars {
        c.args(["-v", v]);
    }
    c.arg("-f")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sql/prepare.sql"))
        .output()
        .unwrap()
}

#[test]
fn prepare_sql_gives_a_plain_role_what_walhook_needs() {
    let (pg, db) = Cluster::with_app_db(
        "CREATE TABLE orders (id bigserial PRIMARY KEY, status text NOT NULL DEFAULT 'new');",
    );
    let out = prepare(&pg, &db, &["tables=public.orders"]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("needs -v password="), "{stderr}");

    let out = prepare(&pg, &db, &["password=s3cret", "tables=public.orders"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.ends_with("walhook|walhook|public.orders"),
        "{stdout}"
    );
    // Again: idempotent.
    let out = prepare(&pg, &db, &["password=s3cret", "tables=public.orders"]);
    assert!(out.status.success(), "{:?}", text(&out));
    assert_eq!(
        pg.psql(
            &db,
            "SELECT rolsuper, rolreplication, rolcanlogin FROM pg_roles WHERE rolname = 'walhook'"
        ),
        "f|t|t"
    );

    // RDS / Aurora style: membership in rds_replication instead of the attribute, which
    // `check` accepts (the replication itself is RDS's own patch, so not tried here).
    pg.psql(&db, "CREATE ROLE rds_replication NOLOGIN");
    let out = prepare(
        &pg,
        &db,
        &[
            "password=pw",
            "tables=public.orders",
            "role=rdsuser",
            "grant=rds_replication",
        ],
    );
    assert!(out.status.success(), "{:?}", text(&out));
    assert_eq!(
        pg.psql(
            &db,
            "SELECT rolreplication, pg_has_role('rdsuser', 'rds_replication', 'MEMBER') \
             FROM pg_roles WHERE rolname = 'rdsuser'"
        ),
        "f|t"
    );
    let rds = dir_config(&pg, &db, "rdsuser:pw", "http://127.0.0.1:9/");
    let out = walhook(&["check"], Some(&rds.1));
    let (stdout, _) = text(&out);
    assert!(!stdout.contains("REPLICATION"), "{stdout}");

    // The role runs walhook: check passes, run delivers.
    let rx = support::receiver::Receiver::start();
    let (_dir, config) = dir_config(&pg, &db, "walhook:s3cret", &rx.url("/orders"));
    let out = walhook(&["check"], Some(&config));
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(!stdout.contains("error:"), "{stdout}");

    let mut run = Command::new(BIN)
        .arg("run")
        .env("WALHOOK_CONFIG", &config)
        .env("WALHOOK_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = run.stderr.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut log = Vec::new();
    while !log.iter().any(|l: &String| l.contains("streaming slot=")) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => log.push(line),
            Err(_) => {
                let _ = run.kill();
                panic!("walhook run did not stream:\n{}", log.join("\n"));
            }
        }
    }
    pg.psql(&db, "INSERT INTO orders DEFAULT VALUES");
    let reqs = rx.wait_until(std::time::Duration::from_secs(20), "a delivery", |r| {
        r.iter().any(|r| r.ok())
    });
    assert_eq!(reqs[0].json()["record"]["status"], "new");
    // The role owns schema walhook, so walhook migrated it itself: parking is on.
    assert_eq!(
        pg.psql(
            &db,
            "SELECT nspowner::regrole::text, to_regclass('walhook.parked') IS NOT NULL \
             FROM pg_namespace WHERE nspname = 'walhook'"
        ),
        "walhook|t"
    );
    assert!(!log.iter().any(|l| l.contains("parking is off")), "{log:?}");
    assert!(
        !log.iter()
            .any(|l| l.contains("publication") && l.contains("Altered")),
        "walhook found the publication as prepared: {log:?}"
    );
    assert!(
        Command::new("kill")
            .args(["-INT", &run.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    assert!(run.wait().unwrap().success());
}

/// Files under `dir` that the crate compiles in (`include_str!` / `include_bytes!`), as paths
/// relative to the repository.
fn compiled_in(root: &std::path::Path, dir: &std::path::Path, found: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            compiled_in(root, &path, found);
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for mac in ["include_str!(\"", "include_bytes!(\""] {
            for (at, _) in text.match_indices(mac) {
                let rel = text[at + mac.len()..].split('"').next().unwrap();
                let file = path.parent().unwrap().join(rel);
                let file = std::fs::canonicalize(&file).unwrap_or_else(|e| panic!("{file:?}: {e}"));
                found.push(file.strip_prefix(root).unwrap().to_owned());
            }
        }
    }
}

#[test]
fn the_image_build_copies_everything_the_crate_compiles_in() {
    let root = std::fs::canonicalize(env!("CARGO_MANIFEST_DIR")).unwrap();
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let ignored = std::fs::read_to_string(root.join(".dockerignore")).unwrap();
    // `COPY <src> <dest>` of the build stage (not `COPY --from=…`).
    let copied: Vec<&str> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("COPY "))
        .filter(|l| !l.starts_with("--"))
        .flat_map(|l| {
            let parts: Vec<&str> = l.split_whitespace().collect();
            parts[..parts.len() - 1].to_vec()
        })
        .collect();
    let mut needed = vec![std::path::PathBuf::from("src/main.rs")];
    compiled_in(&root, &root.join("src"), &mut needed);
    assert!(needed.len() > 1, "{needed:?}");
    for file in &needed {
        let top = file
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_str()
            .unwrap();
        assert!(
            copied.contains(&top),
            "the Dockerfile does not copy {top}/ (needed for {})",
            file.display()
        );
        assert!(
            !ignored.lines().any(|l| l.trim() == top),
            ".dockerignore leaves out {top}/"
        );
    }
}
