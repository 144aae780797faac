//! `walhook demo`: the whole pipeline in one process, against a Postgres of its own.
//!
//! 1. a throwaway cluster ([`cluster`]) with database `demo` and table `public.orders`;
//! 2. a config with two triggers on that table, printed (stderr) so it can be copied;
//! 3. a receiver ([`crate::listen`]) on a free port of 127.0.0.1 that prints every delivery
//!    on stdout as one JSON line with its signature checked;
//! 4. [`crate::run::run`] with that config, exactly as `walhook run` would;
//! 5. sample writes ([`writer`]) once the slot streams.
//!
//! On the stop signal the writes stop, the pipeline finishes what is in flight, the receiver
//! goes, and the cluster is stopped and its directory removed: nothing is left behind.

pub mod cluster;
mod writer;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::config::{self, ConfigError};
use crate::run::{self, RunError};
use crate::server::{self, Health, ServerError};
use cluster::{Cluster, ClusterError};

/// The database the demo creates.
const DATABASE: &str = "demo";

/// How long the pipeline may take to start streaming.
const STREAM_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the demo stopped early.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The cluster could not be made, started or removed.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// Setting up the sample database failed, or the sample writes did.
    #[error("demo database: {0}")]
    Sql(#[from] tokio_postgres::Error),
    /// The generated config did not validate (a bug).
    #[error("the demo's config is invalid:\n{0}")]
    Config(#[from] ConfigError),
    /// The receiver could not listen or stopped.
    #[error("the demo's receiver: {0}")]
    Receiver(std::io::Error),
    /// The status server could not start.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The pipeline stopped.
    #[error(transparent)]
    Run(#[from] RunError),
    /// The pipeline stopped without an error before it was asked to.
    #[error("the pipeline stopped unexpectedly")]
    RunEnded,
    /// The pipeline did not start streaming.
    #[error("the pipeline did not start streaming within {}s", STREAM_TIMEOUT.as_secs())]
    NotStreaming,
}

/// Runs the demo until `stop` resolves (exit 0) or something fails; cleans up either way.
pub async fn demo(stop: impl Future<Output = ()>) -> Result<(), DemoError> {
    let bin = cluster::find_bin(&|name| std::env::var(name).ok())?;
    tokio::pin!(stop);
    let parent = std::env::temp_dir();
    let cluster = tokio::select! {
        c = Cluster::start(&bin, &parent) => c?,
        // Dropping the half-made cluster removes it.
        () = &mut stop => return Ok(()),
    };
    let result = with_cluster(&bin, &cluster, stop).await;
    let removed = cluster.stop().await;
    result?;
    removed?;
    eprintln!("walhook demo: stopped; the cluster and its files are removed");
    Ok(())
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        // Ends when the client is dropped; an error here is the server going away, which
        // the client's next statement reports.
        let _ = conn.await;
    });
    Ok(client)
}

async fn with_cluster(
    bin: &Path,
    cluster: &Cluster,
    mut stop: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<(), DemoError> {
    let admin = connect(&cluster.url("postgres")).await?;
    let version: String = admin.query_one("SHOW server_version", &[]).await?.get(0);
    admin
        .batch_execute(&format!("CREATE DATABASE {DATABASE}"))
        .await?;
    drop(admin);
    let client = connect(&cluster.url(DATABASE)).await?;
    client.batch_execute(writer::SCHEMA).await?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(DemoError::Receiver)?;
    let receiver_port = listener.local_addr().map_err(DemoError::Receiver)?.port();
    let secret = new_secret();
    let text = config_text(&cluster.url(DATABASE), receiver_port, &secret);
    let config = config::parse(&text, Path::new("walhook-demo.toml"), &|_| None)?;
    let version = version.split(' ').next().unwrap_or(&version);
    eprintln!(
        "walhook demo: a throwaway PostgreSQL {version} ({}) in {}; change rows yourself with\n  \
         psql {}\n# The config this demo runs (save it as walhook.toml to start from it):\n{text}",
        bin.display(),
        cluster.dir().display(),
        cluster.url(DATABASE),
    );

    let metrics = server::install_metrics()?;
    let health = Arc::new(Health::default());
    if let Some(addr) = config.server.listen {
        server::start(addr, health.clone(), metrics).await?;
    }
    let mut receiver = tokio::spawn(crate::listen::serve(
        listener,
        Some(secret),
        std::io::stdout(),
    ));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run_health = health.clone();
    let mut pipeline = tokio::spawn(async move {
        run::run(config, &run_health, async {
            let _ = stop_rx.await;
        })
        .await
    });

    let outcome = tokio::select! {
        r = writes_once_streaming(&client, &health) => r,
        r = &mut pipeline => Err(match r {
            Ok(Err(e)) => e.into(),
            _ => DemoError::RunEnded,
        }),
        r = &mut receiver => Err(DemoError::Receiver(match r {
            Ok(Err(e)) => e,
            _ => std::io::Error::other("stopped"),
        })),
        () = &mut stop => Ok(()),
    };
    eprintln!("walhook demo: stopping …");
    drop(client);
    let _ = stop_tx.send(());
    if !pipeline.is_finished() {
        if let Ok(Err(e)) = pipeline.await {
            tracing::error!("{e}");
        }
    }
    receiver.abort();
    outcome
}

/// Waits until the pipeline streams from the slot (changes made before the slot exists are
/// not in it), then writes until an error.
async fn writes_once_streaming(
    client: &tokio_postgres::Client,
    health: &Health,
) -> Result<(), DemoError> {
    let deadline = Instant::now() + STREAM_TIMEOUT;
    while !health.is_streaming() {
        if Instant::now() > deadline {
            return Err(DemoError::NotStreaming);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "walhook demo: streaming; writing a few orders a second. Each delivery is one line below \
         (\"verified\": true = signature checked). Ctrl-C stops."
    );
    writer::write(client).await?;
    Ok(())
}

/// A fresh Standard Webhooks secret: `whsec_` and the base64 of 24 random bytes.
fn new_secret() -> String {
    let key: Vec<u8> = std::iter::repeat_with(|| fastrand::u8(..))
        .take(24)
        .collect();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

/// The demo's walhook.toml.
fn config_text(database_url: &str, receiver_port: u16, secret: &str) -> String {
    format!(
        r#"[source]
url = "{database_url}"   # yours: "${{DATABASE_URL}}"

[server]
listen = "127.0.0.1:8187"   # /healthz /readyz /metrics

[[trigger]]                 # every change of public.orders, signed
name = "orders"
table = "public.orders"
url = "http://127.0.0.1:{receiver_port}/hooks/orders"
secret = "{secret}"

[[trigger]]                 # only the update that marks an order paid, three columns
name = "order-paid"
table = "public.orders"
events = ["update"]
when = "record.status == 'paid' && old_record.status != 'paid'"
columns = ["id", "customer", "amount"]
url = "http://127.0.0.1:{receiver_port}/hooks/order-paid"
secret = "{secret}"
"#
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_printed_config_is_valid_and_says_what_the_demo_does() {
        let secret = new_secret();
        let text = config_text("postgres://postgres@127.0.0.1:5999/demo", 8123, &secret);
        let c = config::parse(&text, Path::new("demo.toml"), &|_| None).unwrap();
        assert_eq!(c.triggers.len(), 2);
        // Every trigger signs with the demo's secret.
        let expected = crate::delivery::sign::Signer::new(&secret)
            .unwrap()
            .sign("id", "1", b"{}");
        assert!(c.triggers.iter().all(|t| {
            t.delivery
                .signer
                .as_ref()
                .is_some_and(|s| s.sign("id", "1", b"{}") == expected)
        }));
        assert_eq!(
            c.triggers[0].delivery.url.as_str(),
            "http://127.0.0.1:8123/hooks/orders"
        );
        assert_eq!(c.triggers[1].route.columns.as_ref().unwrap().len(), 3);
        assert_eq!(c.server.listen, "127.0.0.1:8187".parse().ok());
    }
}
