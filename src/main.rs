//! The `walhook` command line: parse, set up logging, dispatch.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use walhook::source::conninfo::ConnInfo;
use walhook::tail::{self, TailOptions};

#[derive(Parser)]
#[command(
    name = "walhook",
    version,
    about = "PostgreSQL row changes as webhooks"
)]
struct Cli {
    /// Log format: text or json.
    #[arg(
        long,
        global = true,
        env = "WALHOOK_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print decoded row changes as JSON lines, from a temporary slot (leaves nothing behind).
    Tail {
        /// Database URL or key/value conninfo.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
        /// Publication to decode.
        #[arg(long)]
        publication: String,
        /// Only this table (schema.table; schema defaults to public). Repeatable.
        #[arg(long = "table", value_name = "SCHEMA.TABLE")]
        tables: Vec<String>,
    },
}

fn init_tracing(format: &str) {
    let filter = EnvFilter::try_from_env("WALHOOK_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// `schema.table` or `table` (public).
fn parse_table(s: &str) -> (String, String) {
    match s.split_once('.') {
        Some((schema, table)) => (schema.to_string(), table.to_string()),
        None => ("public".to_string(), s.to_string()),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Tail {
            database_url,
            publication,
            tables,
        } => {
            let conninfo = ConnInfo::parse(&database_url)?;
            let opts = TailOptions {
                conninfo,
                publication,
                tables: tables.iter().map(|t| parse_table(t)).collect(),
            };
            tail::tail(opts, std::io::stdout().lock(), shutdown_signal()).await?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("walhook: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("walhook: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
