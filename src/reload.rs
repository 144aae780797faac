//! SIGHUP reloads the config. A new config that is valid (the file, and the database side
//! as `walhook check` sees it) restarts the pipeline in-process: the running one stops as
//! on SIGTERM (in-flight requests finish, a final status update confirms what was
//! delivered), then the new plan starts from the slot's confirmed position. A config that
//! is not valid is logged, every problem, and the running one keeps going.

use std::future::Future;
use std::path::{Path, PathBuf};

use crate::config::{self, Config};
use crate::preflight;
use crate::run::{self, RunError};
use crate::server::Health;
use crate::source::conninfo::{self, ConnInfo};
use crate::triggers::Router;

/// Runs the daemon until `shutdown()` resolves, restarting it with the new config on each
/// SIGHUP that brings a valid one.
pub async fn run_reloading<F, S>(
    path: PathBuf,
    mut config: Config,
    health: &Health,
    shutdown: S,
) -> Result<(), RunError>
where
    S: Fn() -> F,
    F: Future<Output = ()>,
{
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    #[cfg(not(unix))]
    let mut hangup: Option<()> = None;
    loop {
        let mut next = None;
        let stop = async {
            tokio::select! {
                _ = shutdown() => {}
                c = reloaded(&path, &mut hangup) => next = Some(c),
            }
        };
        run::run(config, health, stop).await?;
        match next {
            Some(c) => {
                tracing::info!(path = %path.display(), "config reloaded; starting the new plan");
                config = c;
            }
            None => return Ok(()),
        }
    }
}

/// Resolves with the next valid config after a SIGHUP (never, without signal support).
#[cfg(unix)]
async fn reloaded(path: &Path, hangup: &mut Option<tokio::signal::unix::Signal>) -> Config {
    let Some(signal) = hangup.as_mut() else {
        return std::future::pending().await;
    };
    loop {
        if signal.recv().await.is_none() {
            return std::future::pending().await;
        }
        tracing::info!(path = %path.display(), "SIGHUP: reading the config again");
        match validate(path).await {
            Ok(config) => {
                tracing::info!("the new config is valid; stopping the running pipeline");
                return config;
            }
            Err(problems) => {
                tracing::error!(
                    "the new config is not valid; the running one stays:\n{}",
                    problems.join("\n")
                );
            }
        }
    }
}

#[cfg(not(unix))]
async fn reloaded(_path: &Path, _hangup: &mut Option<()>) -> Config {
    std::future::pending().await
}

/// The config at `path` if the file is valid and the database side passes the preflight;
/// else every problem.
async fn validate(path: &Path) -> Result<Config, Vec<String>> {
    let config = config::load(path).map_err(|e| vec![e.to_string()])?;
    let info = ConnInfo::parse(&config.source.url).map_err(|e| vec![format!("source.url: {e}")])?;
    let client = conninfo::connect_sql(&info)
        .await
        .map_err(|e| vec![format!("cannot connect to {info}: {e}")])?;
    let router = Router::new(&config.triggers);
    let report = preflight::database(&client, &config, &router)
        .await
        .map_err(|e| vec![e.to_string()])?;
    if !report.passed() {
        return Err(report.errors());
    }
    Ok(config)
}
