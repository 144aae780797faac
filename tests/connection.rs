//! The replication connection against a real Postgres: every auth method, TLS modes,
//! error classification, and a full CopyBoth round trip with a confirmed flush position.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests fail by panicking

mod support;

use std::time::{Duration, SystemTime};

use support::pg::{Cluster, MD5_USER, NOREPL_USER, PASSWORD_USER, SCRAM_USER, TLS_USER};
use walhook::lsn::Lsn;
use walhook::source::connection::{ConnectError, ReplicationConnection};
use walhook::source::conninfo::{ConnInfo, SslMode, connect_sql};
use walhook::source::protocol::{self, ReplicationMessage};

fn info(url: &str) -> ConnInfo {
    ConnInfo::parse_with_env(url, &|_| None).expect("test URL parses")
}

async fn connect(url: &str) -> Result<ReplicationConnection, ConnectError> {
    ReplicationConnection::connect(&info(url)).await
}

/// IDENTIFY_SYSTEM works and reports the database we asked for.
async fn identify(conn: &mut ReplicationConnection) {
    let rows = conn
        .simple_query("IDENTIFY_SYSTEM")
        .await
        .expect("IDENTIFY_SYSTEM");
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(
        row.columns(),
        ["systemid", "timeline", "xlogpos", "dbname"].map(String::from)
    );
    assert!(
        row.get_named("systemid")
            .is_some_and(|s| s.parse::<u64>().is_ok())
    );
    assert!(
        row.get_named("xlogpos")
            .is_some_and(|s| s.parse::<Lsn>().is_ok())
    );
    assert_eq!(row.get_named("dbname"), Some("postgres"));
}

#[tokio::test]
async fn trust_login_sets_unambiguous_session_settings() {
    let cluster = Cluster::start();
    let mut conn = connect(&cluster.url("postgres")).await.expect("connect");
    assert!(!conn.is_tls());
    assert!(conn.backend_pid() > 0);
    identify(&mut conn).await;
    assert_eq!(
        conn.server_version_num().map(|v| v / 10_000),
        Some(cluster.major())
    );
    for (setting, expected) in [
        ("TimeZone", "UTC"),
        ("DateStyle", "ISO, MDY"),
        ("IntervalStyle", "postgres"),
        ("bytea_output", "hex"),
        ("extra_float_digits", "1"),
        ("client_encoding", "UTF8"),
        ("application_name", "walhook"),
    ] {
        let rows = conn
            .simple_query(&format!("SHOW {setting}"))
            .await
            .expect("SHOW");
        assert_eq!(rows[0].get(0), Some(expected), "{setting}");
    }
    conn.close().await.expect("close");
}

#[tokio::test]
async fn md5_scram_and_cleartext_logins() {
    let cluster = Cluster::start();
    for user in [MD5_USER, SCRAM_USER, PASSWORD_USER] {
        let mut conn = connect(&cluster.url_as(user, "postgres", "disable"))
            .await
            .unwrap_or_else(|e| panic!("{user}: {e}"));
        identify(&mut conn).await;
    }
}

#[tokio::test]
async fn wrong_or_missing_password_is_a_clear_permanent_error() {
    let cluster = Cluster::start();
    for user in [MD5_USER, SCRAM_USER, PASSWORD_USER] {
        let url = format!(
            "postgres://{user}:wrong@127.0.0.1:{}/postgres?sslmode=disable",
            cluster.port
        );
        let err = connect(&url).await.expect_err("wrong password");
        assert_eq!(err.code(), Some("28P01"), "{user}: {err}");
        assert!(!err.is_transient());
        let text = err.to_string();
        assert!(
            text.contains("password authentication failed") && !text.contains('\n'),
            "{text}"
        );

        let url = format!(
            "postgres://{user}@127.0.0.1:{}/postgres?sslmode=disable",
            cluster.port
        );
        let err = connect(&url).await.expect_err("no password");
        assert!(
            matches!(err, ConnectError::PasswordRequired(ref u) if u == user),
            "{err}"
        );
        assert!(!err.is_transient());
    }
}

#[tokio::test]
async fn role_without_replication_is_refused_permanently() {
    let cluster = Cluster::start();
    let err = connect(&cluster.url_as(NOREPL_USER, "postgres", "disable"))
        .await
        .expect_err("no REPLICATION attribute");
    assert_eq!(err.code(), Some("42501"), "{err}");
    assert!(!err.is_transient());
}

#[tokio::test]
async fn refused_connection_is_transient() {
    let port = support::pg::free_port();
    let err = connect(&format!(
        "postgres://u:p@127.0.0.1:{port}/d?sslmode=disable"
    ))
    .await
    .expect_err("nobody listens");
    assert!(matches!(err, ConnectError::Connect { .. }), "{err}");
    assert!(err.is_transient());
}

#[tokio::test]
async fn tls_only_role_needs_tls() {
    let cluster = Cluster::start();
    let mut conn = connect(&cluster.url_as(TLS_USER, "postgres", "require"))
        .await
        .expect("TLS login");
    assert!(conn.is_tls());
    identify(&mut conn).await;

    // Plain SCRAM inside TLS, and SCRAM-SHA-256-PLUS bound to the certificate.
    for binding in ["disable", "require"] {
        let url = format!(
            "{}&channel_binding={binding}",
            cluster.url_as(TLS_USER, "postgres", "require")
        );
        let mut conn = connect(&url)
            .await
            .unwrap_or_else(|e| panic!("channel_binding={binding}: {e}"));
        identify(&mut conn).await;
    }

    let err = connect(&cluster.url_as(TLS_USER, "postgres", "disable"))
        .await
        .expect_err("pg_hba rejects plain TCP");
    assert_eq!(err.code(), Some("28000"), "{err}");
    assert!(!err.is_transient());

    // prefer upgrades to TLS when the server offers it.
    let conn = connect(&cluster.url_as(TLS_USER, "postgres", "prefer"))
        .await
        .expect("prefer");
    assert!(conn.is_tls());
}

#[tokio::test]
async fn verify_full_checks_the_certificate() {
    let cluster = Cluster::start();
    for host in ["127.0.0.1", "localhost"] {
        for mode in [SslMode::VerifyFull, SslMode::VerifyCa] {
            let mut i = info(&cluster.url_as(TLS_USER, "postgres", "require"));
            i.host = host.into();
            i.sslmode = mode;
            i.sslrootcert = Some(cluster.server_cert());
            let mut conn = ReplicationConnection::connect(&i)
                .await
                .unwrap_or_else(|e| panic!("{mode} {host}: {e}"));
            identify(&mut conn).await;
        }
    }

    let url = format!(
        "postgres://{TLS_USER}:{TLS_USER}@localhost:{}/postgres?sslmode=verify-full",
        cluster.port
    );
    let err = connect(&url)
        .await
        .expect_err("self-signed, not in webpki roots");
    assert!(matches!(err, ConnectError::Tls(_)), "{err}");
    assert!(err.to_string().contains("certificate"), "{err}");
    assert!(!err.is_transient());

    let mut i = info(&url);
    i.sslrootcert = Some("/nonexistent/root.crt".into());
    let err = ReplicationConnection::connect(&i)
        .await
        .expect_err("no file");
    assert!(matches!(err, ConnectError::RootCert { .. }), "{err}");
}

#[tokio::test]
async fn connect_sql_with_tls() {
    let cluster = Cluster::start();
    let client = connect_sql(&info(&cluster.url_as(TLS_USER, "postgres", "require")))
        .await
        .expect("connect_sql");
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("query");
    assert!(row.get::<_, bool>(0));

    let mut i = info(&cluster.url_as(TLS_USER, "postgres", "require"));
    i.sslmode = SslMode::VerifyFull;
    i.sslrootcert = Some(cluster.server_cert());
    let client = connect_sql(&i).await.expect("verify-full");
    client.simple_query("SELECT 1").await.expect("query");

    let client = connect_sql(&info(&cluster.url("postgres")))
        .await
        .expect("plain");
    client.simple_query("SELECT 1").await.expect("query");
}

#[tokio::test]
async fn replication_round_trip_confirms_the_commit() {
    let cluster = Cluster::start();
    cluster.psql(
        "postgres",
        "CREATE TABLE t (id int PRIMARY KEY, v text); CREATE PUBLICATION p FOR TABLE t",
    );
    let mut conn = connect(&cluster.url_as(SCRAM_USER, "postgres", "require"))
        .await
        .expect("connect");
    let slot = conn
        .simple_query("CREATE_REPLICATION_SLOT s TEMPORARY LOGICAL pgoutput")
        .await
        .expect("create slot");
    assert_eq!(slot[0].get_named("slot_name"), Some("s"));

    let err = conn
        .simple_query(
            "START_REPLICATION SLOT s LOGICAL 0/0 (proto_version '1', publication_names 'p')",
        )
        .await
        .expect_err("simple_query cannot stream");
    assert!(matches!(err, ConnectError::Protocol(_)), "{err}");
    // That connection's state is now undefined; start over with a fresh one.
    drop(conn);

    let conn = connect(&cluster.url_as(SCRAM_USER, "postgres", "require"))
        .await
        .expect("connect");
    let err = conn
        .start_replication(
            "START_REPLICATION SLOT missing LOGICAL 0/0 (proto_version '1', publication_names 'p')",
        )
        .await
        .expect_err("no such slot");
    assert_eq!(err.code(), Some("42704"), "{err}");
    assert!(!err.is_transient());

    let mut conn = connect(&cluster.url_as(SCRAM_USER, "postgres", "require"))
        .await
        .expect("connect");
    conn.simple_query("CREATE_REPLICATION_SLOT s2 TEMPORARY LOGICAL pgoutput")
        .await
        .expect("create slot");
    cluster.psql(
        "postgres",
        "BEGIN; INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c'); COMMIT;",
    );
    let (mut reader, mut writer) = conn
        .start_replication(
            "START_REPLICATION SLOT s2 LOGICAL 0/0 (proto_version '1', publication_names 'p')",
        )
        .await
        .expect("start replication");

    // Receive inside select! next to a fast timer: cancelled recv calls must lose nothing.
    let mut tags = Vec::new();
    let mut commit_end = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while commit_end.is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no commit; got {tags:?}"
        );
        let payload = tokio::select! {
            p = reader.recv() => p.expect("recv").expect("stream open"),
            _ = tokio::time::sleep(Duration::from_micros(50)) => continue,
        };
        match protocol::parse(payload).expect("valid replication message") {
            ReplicationMessage::XLogData { data, .. } => {
                let tag = *data.first().expect("pgoutput message has a tag");
                tags.push(char::from(tag));
                if tag == b'C' {
                    // Commit: flags(1) commit_lsn(8) end_lsn(8) timestamp(8)
                    let end = u64::from_be_bytes(data[10..18].try_into().expect("8 bytes"));
                    commit_end = Some(Lsn(end));
                }
            }
            ReplicationMessage::Keepalive { .. } => {}
        }
    }
    assert_eq!(tags, ['B', 'R', 'I', 'I', 'I', 'C']);
    let end = commit_end.expect("commit seen");

    let status = protocol::standby_status_update(end, end, end, SystemTime::now(), true);
    writer.send_copy_data(&status).await.expect("status update");
    // We asked for a reply: the next message is a keepalive at or past the commit.
    let reply = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let payload = reader.recv().await.expect("recv").expect("open");
            if let ReplicationMessage::Keepalive { wal_end, .. } =
                protocol::parse(payload).expect("valid")
            {
                return wal_end;
            }
        }
    })
    .await
    .expect("keepalive reply");
    assert!(reply >= end);

    let confirmed = wait_for(Duration::from_secs(10), || {
        let lsn = cluster.psql(
            "postgres",
            "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 's2'",
        );
        (lsn.parse::<Lsn>().ok() == Some(end)).then_some(lsn)
    });
    assert_eq!(confirmed.as_deref(), Some(end.to_string().as_str()));

    // Ending the copy from our side: the server answers CopyDone, recv reports the end.
    writer.send_copy_done().await.expect("copy done");
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(payload) = reader.recv().await.expect("recv") {
            protocol::parse(payload).expect("valid");
        }
    })
    .await;
    assert!(ended.is_ok(), "recv did not report the end of the copy");
}

fn wait_for<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn connect_timeout_covers_a_silent_server() {
    // Accepts TCP connections but never answers the SSLRequest/startup.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let _accepting = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    let url = format!("postgres://u:p@127.0.0.1:{port}/d?sslmode=prefer&connect_timeout=2");
    let started = std::time::Instant::now();
    let err = connect(&url).await.expect_err("silent server");
    assert!(matches!(err, ConnectError::Timeout(_)), "{err}");
    assert!(err.is_transient());
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn terminated_walsender_is_a_transient_error_during_copy() {
    let cluster = Cluster::start();
    cluster.psql(
        "postgres",
        "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION p FOR TABLE t",
    );
    let url = format!("{}&application_name=walhook-term", cluster.url("postgres"));
    let mut conn = connect(&url).await.expect("connect");
    conn.simple_query("CREATE_REPLICATION_SLOT s TEMPORARY LOGICAL pgoutput")
        .await
        .expect("slot");
    let (mut reader, _writer) = conn
        .start_replication(
            "START_REPLICATION SLOT s LOGICAL 0/0 (proto_version '1', publication_names 'p')",
        )
        .await
        .expect("start");
    let killed = wait_for(Duration::from_secs(10), || {
        let n = cluster.psql(
            "postgres",
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_replication \
             WHERE application_name = 'walhook-term'",
        );
        (n == "1").then_some(())
    });
    assert!(killed.is_some(), "walsender not found");
    let err = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match reader.recv().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("stream ended without an error"),
                Err(e) => return e,
            }
        }
    })
    .await
    .expect("error arrives");
    assert_eq!(err.code(), Some("57P01"), "{err}");
    assert!(err.is_transient());
    assert!(reader.recv().await.expect("after the error").is_none());
}

#[tokio::test]
async fn slot_creation_waiting_for_a_transaction_can_be_cancelled() {
    let cluster = Cluster::start();
    let url = cluster.url("postgres");
    // An open transaction with an xid: CREATE_REPLICATION_SLOT waits for it to end.
    let blocker = connect_sql(&info(&url)).await.expect("sql");
    blocker
        .batch_execute("BEGIN; CREATE TABLE held (id int)")
        .await
        .expect("open transaction");
    let mut conn = connect(&url).await.expect("connect");
    let cancel = conn.cancel_handle(&info(&url));
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        cancel.cancel().await
    });
    let err = tokio::time::timeout(
        Duration::from_secs(20),
        conn.simple_query("CREATE_REPLICATION_SLOT blocked LOGICAL pgoutput"),
    )
    .await
    .expect("cancel took effect")
    .expect_err("cancelled");
    assert_eq!(err.code(), Some("57014"), "{err}");
    canceller.await.expect("join").expect("cancel request");
    // The session is still usable after a cancelled command.
    identify(&mut conn).await;
}

#[tokio::test]
async fn unix_socket_hosts_connect_for_replication_and_sql() {
    use std::os::unix::fs::PermissionsExt;
    let sockets = tempfile::Builder::new()
        .prefix("walhook-sock-")
        .tempdir()
        .unwrap();
    // The server may run as the postgres user: it must be able to create its socket here.
    std::fs::set_permissions(sockets.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let dir = sockets.path().display().to_string();
    let cluster = Cluster::start_with(&[&format!("unix_socket_directories = '{dir}'")]);
    for url in [
        format!(
            "host={dir} port={} user=postgres dbname=postgres",
            cluster.port
        ),
        format!(
            "postgres://postgres@/postgres?host={dir}&port={}",
            cluster.port
        ),
        // sslmode is ignored on a socket, as in libpq.
        format!(
            "host={dir} port={} user=postgres dbname=postgres sslmode=require",
            cluster.port
        ),
    ] {
        let mut conn = connect(&url).await.expect(&url);
        assert!(!conn.is_tls());
        identify(&mut conn).await;
        conn.close().await.expect("close");
        let client = connect_sql(&info(&url)).await.expect(&url);
        let row = client
            .query_one("SELECT inet_server_addr() IS NULL", &[])
            .await
            .unwrap();
        assert!(
            row.get::<_, bool>(0),
            "a socket connection has no server address"
        );
    }
    let err = connect(&format!("host={dir} port=1 user=postgres"))
        .await
        .expect_err("no socket for that port");
    assert!(err.is_transient(), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("Unix-domain socket {dir}/.s.PGSQL.1")),
        "{err}"
    );
}

#[tokio::test]
async fn the_password_file_supplies_a_missing_password() {
    use std::os::unix::fs::PermissionsExt;
    use walhook::source::libpq_files::SystemFiles;
    let cluster = Cluster::start();
    let dir = tempfile::tempdir().unwrap();
    let pgpass = dir.path().join("pgpass");
    std::fs::write(
        &pgpass,
        format!(
            "# walhook\n127.0.0.1:{}:*:{MD5_USER}:{MD5_USER}\n",
            cluster.port
        ),
    )
    .unwrap();
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let path = pgpass.display().to_string();
    let env = |k: &str| (k == "PGPASSFILE").then(|| path.clone());
    let url = format!(
        "postgres://{MD5_USER}@127.0.0.1:{}/postgres?sslmode=disable",
        cluster.port
    );
    let with_file = ConnInfo::parse_with(&url, &env, &SystemFiles).unwrap();
    let mut conn = ReplicationConnection::connect(&with_file)
        .await
        .expect("password from the file");
    identify(&mut conn).await;
    conn.close().await.expect("close");
    // Readable by others: ignored, so the server's password request cannot be answered.
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o644)).unwrap();
    let ignored = ConnInfo::parse_with(&url, &env, &SystemFiles).unwrap();
    let err = ReplicationConnection::connect(&ignored)
        .await
        .expect_err("no password");
    assert!(matches!(err, ConnectError::PasswordRequired(_)), "{err}");
}
