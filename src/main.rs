//! The `walhook` command line: parse, set up logging, dispatch.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use std::path::PathBuf;
use std::sync::Arc;

use walhook::config::{self, Config};
use walhook::server::{self, Health};
use walhook::source::conninfo::{self, ConnInfo};
use walhook::source::setup;
use walhook::tail::{self, TailOptions};
use walhook::{check, demo, listen, preflight, probe, store, summary};

/// Exit code for a config file that is invalid (clap uses 2 for bad arguments too).
const EXIT_CONFIG: u8 = 2;

#[derive(Parser)]
#[command(
    name = "walhook",
    version,
    about = "PostgreSQL row changes as webhooks"
)]
struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        env = "WALHOOK_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    log_format: LogFormat,
    /// No periodic summary line (run, demo).
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

/// How log lines are written to stderr.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(clap::Args)]
struct ConfigArg {
    /// Config file [default: $WALHOOK_CONFIG, else ./walhook.toml].
    #[arg(long, short)]
    config: Option<PathBuf>,
}

impl ConfigArg {
    fn path(&self) -> PathBuf {
        self.config.clone().unwrap_or_else(config::default_path)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: stream the slot and deliver matching changes as webhooks.
    Run(ConfigArg),
    /// Check the config file and the database; exit 0 only if `run` would start cleanly.
    Check(ConfigArg),
    /// Create the publication and the slot now (run does this on start too).
    Setup {
        #[command(flatten)]
        config: ConfigArg,
        /// Accept that the slot walhook streamed from is lost (dropped or invalidated):
        /// start a new slot at the current WAL position. Changes in between are not delivered.
        #[arg(long)]
        new_slot: bool,
        /// Accept that changes were written while the publication did not exist (it was
        /// dropped and created again): move the slot to the first position from which
        /// decoding works, and print the range skipped.
        #[arg(long, conflicts_with = "new_slot")]
        skip_unpublished: bool,
    },
    /// Drop the slot and the publication (stop walhook first: the slot's position is lost).
    Teardown(ConfigArg),
    /// Show the slot's position, lag and wal_status; exit 1 when it is missing, lost or lagging.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// Print one JSON object {"slot": {...}, "triggers": {...}}.
        #[arg(long)]
        json: bool,
        /// Unhealthy when the slot is more than this many bytes behind the server's WAL.
        #[arg(long, value_name = "BYTES", default_value_t = walhook::status::DEFAULT_MAX_LAG)]
        max_lag: u64,
    },
    /// Send dead events again: they become pending, due now, and the running walhook delivers
    /// them (with --parked: make pending parked events due now). Prints how many.
    Replay {
        #[command(flatten)]
        config: ConfigArg,
        /// Only this trigger's events.
        #[arg(long)]
        trigger: Option<String>,
        /// Only the event with this id (repeatable).
        #[arg(long = "id", value_name = "ID")]
        ids: Vec<String>,
        /// Only events parked at or after TIME: an RFC 3339 time (2026-12-07T10:00:00Z) or an
        /// age (90m, 2h, 3d).
        #[arg(long, value_name = "TIME", value_parser = parse_since)]
        since: Option<std::time::SystemTime>,
        /// Dead events (the default).
        #[arg(long, conflicts_with = "parked")]
        dead: bool,
        /// Pending parked events: try them now instead of at their next retry time.
        #[arg(long)]
        parked: bool,
    },
    /// Try walhook in one command: a throwaway Postgres, sample writes, and a receiver that
    /// prints every delivery (needs the PostgreSQL server programs; removes everything on Ctrl-C).
    Demo,
    /// Ask a running walhook's status server whether it is healthy (exit 0) or not (exit 1);
    /// for container health checks.
    Health {
        #[command(flatten)]
        config: ConfigArg,
        /// host:port of the status server [default: the config's `[server] listen`, on loopback].
        #[arg(long)]
        addr: Option<std::net::SocketAddr>,
        /// Check /readyz (streaming from the slot) instead of /healthz (the process serves).
        #[arg(long)]
        ready: bool,
    },
    /// A local receiver: prints each delivery as a JSON line and checks its signature.
    Listen {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        host: std::net::IpAddr,
        /// Port to listen on.
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// The trigger's secret (whsec_…): deliveries without a valid signature get 401.
        #[arg(long, env = "WALHOOK_LISTEN_SECRET", hide_env_values = true, value_parser = parse_secret)]
        secret: Option<String>,
    },
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
        /// Read this existing slot (without moving it) instead of a temporary one.
        #[arg(long)]
        slot: Option<String>,
        /// Exit once the stream reaches this LSN (e.g. 0/16B3748).
        #[arg(long)]
        endpos: Option<walhook::lsn::Lsn>,
    },
}

/// `--since`: an RFC 3339 time, or an age counted back from now.
fn parse_since(s: &str) -> Result<std::time::SystemTime, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t);
    }
    match humantime::parse_duration(s) {
        Ok(age) => std::time::SystemTime::now()
            .checked_sub(age)
            .ok_or_else(|| format!("{s:?} reaches back too far")),
        Err(_) => Err(format!(
            "{s:?} is neither a time (2026-12-07T10:00:00Z) nor an age (90m, 2h, 3d)"
        )),
    }
}

/// `--secret` must be a Standard Webhooks secret, parsed as the config parses it.
fn parse_secret(s: &str) -> Result<String, String> {
    walhook::delivery::sign::Signer::new(s)
        .map(|_| s.to_owned())
        .map_err(|e| e.to_string())
}

fn init_tracing(format: LogFormat) {
    let filter = match std::env::var("WALHOOK_LOG").or_else(|_| std::env::var("RUST_LOG")) {
        Err(_) => EnvFilter::new("info"),
        Ok(directives) => EnvFilter::try_new(&directives).unwrap_or_else(|e| {
            eprintln!("walhook: warning: ignoring the log filter {directives:?} ({e}); using info");
            EnvFilter::new("info")
        }),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if format == LogFormat::Json {
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

/// A failure that has already been reported, with the exit code to use.
#[derive(Debug)]
struct Exit(u8);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}", self.0)
    }
}

impl std::error::Error for Exit {}

/// Loads the config, or prints every problem and fails with [`EXIT_CONFIG`].
fn load_config(arg: &ConfigArg) -> anyhow::Result<Config> {
    config::load(&arg.path()).map_err(|e| {
        eprintln!("walhook: invalid config:\n{e}");
        anyhow::Error::new(Exit(EXIT_CONFIG))
    })
}

async fn sql_client(config: &Config) -> anyhow::Result<tokio_postgres::Client> {
    let info =
        ConnInfo::parse(&config.source.url).map_err(|e| anyhow::anyhow!("source.url: {e}"))?;
    Ok(conninfo::connect_sql(&info).await?)
}

/// A connection to `[park] url`, when the config names a database of its own for parked
/// events (`None`: they are in the source database).
async fn park_client(config: &Config) -> anyhow::Result<Option<tokio_postgres::Client>> {
    let Some(park) = &config.park else {
        return Ok(None);
    };
    let info = ConnInfo::parse(&park.url).map_err(|e| anyhow::anyhow!("park.url: {e}"))?;
    Ok(Some(conninfo::connect_sql(&info).await?))
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    if !cli.quiet && matches!(cli.command, Command::Run(_) | Command::Demo) {
        tokio::spawn(summary::report(summary::INTERVAL));
    }
    match cli.command {
        Command::Run(arg) => {
            let config = load_config(&arg)?;
            let health = Arc::new(Health::default());
            let metrics = server::install_metrics()?;
            if let Some(addr) = config.server.listen {
                server::start(addr, health.clone(), metrics).await?;
            }
            walhook::reload::run_reloading(arg.path(), config, &health, shutdown_signal).await?;
        }
        Command::Check(arg) => {
            let outcome = check::check(&arg.path()).await;
            for finding in &outcome.report.findings {
                println!("{finding}");
            }
            if outcome.invalid_config {
                return Err(Exit(EXIT_CONFIG).into());
            }
            if !outcome.report.passed() {
                return Err(Exit(1).into());
            }
        }
        Command::Setup {
            config: arg,
            new_slot,
            skip_unpublished,
        } => {
            let config = load_config(&arg)?;
            let router = walhook::triggers::Router::new(&config.triggers);
            let mut client = sql_client(&config).await?;
            if skip_unpublished {
                let (slot, publication) = (&config.source.slot, &config.source.publication);
                match store::slot::skip_unpublished(&client, slot, publication).await? {
                    Some(s) => println!(
                        "slot {slot:?}: moved from {} to {}; changes committed in between were \
                         written while publication {publication:?} did not exist and are not \
                         delivered (deliver them from the tables themselves)",
                        s.from, s.to
                    ),
                    None => {
                        println!("slot {slot:?}: decoding works from its position; nothing skipped")
                    }
                }
            }
            // Accepting a lost slot comes first: the preflight refuses one.
            let accepted = if new_slot {
                let new = store::slot::start_new(&mut client, &config.source.slot).await?;
                if let Some(since) = new.lost_since {
                    println!(
                        "slot {:?}: a new slot starts at {}; changes committed between {since} \
                         and {} were not captured by walhook",
                        config.source.slot, new.state.confirmed_flush, new.state.confirmed_flush
                    );
                }
                Some(new.state)
            } else {
                None
            };
            let report = preflight::database(&client, &config, &router).await?;
            if !report.passed() {
                return Err(preflight::Refused(report.errors()).into());
            }
            let change =
                setup::sync_publication(&client, &config.source.publication, &router.tables())
                    .await?;
            println!("publication {:?}: {change:?}", config.source.publication);
            let slot = match accepted {
                Some(state) => state,
                None => store::slot::open(&mut client, &config.source.slot).await?,
            };
            println!(
                "slot {:?}: confirmed up to {}",
                config.source.slot, slot.confirmed_flush
            );
        }
        Command::Teardown(arg) => {
            let config = load_config(&arg)?;
            let client = sql_client(&config).await?;
            let outcome = |dropped| if dropped { "dropped" } else { "did not exist" };
            let slot = setup::drop_slot(&client, &config.source.slot).await?;
            store::slot::forget(&client, &config.source.slot).await?;
            let publication = setup::drop_publication(&client, &config.source.publication).await?;
            println!(
                "slot {:?}: {}; publication {:?}: {}",
                config.source.slot,
                outcome(slot),
                config.source.publication,
                outcome(publication)
            );
            // Parked events are not the slot's: they are kept, and said so.
            let park = park_client(&config).await?;
            let counts = store::park::counts(park.as_ref().unwrap_or(&client)).await?;
            for (trigger, c) in counts.iter().filter(|(_, c)| c.parked + c.dead > 0) {
                println!(
                    "walhook.parked keeps {} parked and {} dead event(s) of trigger {trigger:?} \
                     (delete them with SQL if they are not wanted)",
                    c.parked, c.dead
                );
            }
        }
        Command::Status {
            config: arg,
            json,
            max_lag,
        } => {
            let config = load_config(&arg)?;
            let client = sql_client(&config).await?;
            let park = park_client(&config).await?;
            let report = walhook::status::StatusReport::gather(
                &client,
                park.as_ref().unwrap_or(&client),
                &config,
                max_lag,
            )
            .await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", report.text());
            }
            if !report.healthy() {
                return Err(Exit(1).into());
            }
        }
        Command::Replay {
            config: arg,
            trigger,
            ids,
            since,
            dead: _,
            parked,
        } => {
            let config = load_config(&arg)?;
            if let Some(t) = &trigger {
                if !config.triggers.iter().any(|c| &c.name == t) {
                    eprintln!("walhook: warning: the config names no trigger {t:?}");
                }
            }
            let source = match park_client(&config).await? {
                Some(park) => park,
                None => sql_client(&config).await?,
            };
            let client = &source;
            let filter = store::park::ReplayFilter {
                trigger,
                ids,
                since,
                pending: parked,
            };
            let what = if parked { "parked" } else { "dead" };
            let replayed = store::park::replay(client, &filter).await?;
            if replayed.is_empty() {
                println!("no {what} events matched");
            }
            for (trigger, n) in &replayed {
                println!(
                    "trigger {trigger:?}: {n} {what} event(s) are due now; the running walhook delivers them"
                );
            }
        }
        Command::Demo => demo::demo(shutdown_signal()).await?,
        Command::Health {
            config: arg,
            addr,
            ready,
        } => {
            let addr = match addr {
                Some(a) => a,
                None => {
                    let listen = load_config(&arg)?.server.listen.ok_or_else(|| {
                        anyhow::anyhow!("the config turns the status server off ([server] listen = \"\"); give --addr")
                    })?;
                    probe::loopback(listen)
                }
            };
            let path = if ready { "/readyz" } else { "/healthz" };
            let answer = probe::get(addr, path).await?;
            println!("http://{addr}{path}: {answer}");
            if !answer.is_ok() {
                return Err(Exit(1).into());
            }
        }
        Command::Listen { host, port, secret } => {
            let addr = std::net::SocketAddr::new(host, port);
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
            eprintln!("walhook listen: http://{}", listener.local_addr()?);
            tokio::select! {
                r = listen::serve(listener, secret, std::io::stdout()) => r?,
                _ = shutdown_signal() => {}
            }
        }
        Command::Tail {
            database_url,
            publication,
            tables,
            slot,
            endpos,
        } => {
            let conninfo = ConnInfo::parse(&database_url)?;
            let opts = TailOptions {
                conninfo,
                publication,
                tables: tables
                    .iter()
                    .map(|t| config::parse_table(t).map_err(|e| anyhow::anyhow!("--table: {e}")))
                    .collect::<anyhow::Result<_>>()?,
                slot,
                endpos,
            };
            tail::tail(opts, std::io::stdout().lock(), shutdown_signal()).await?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
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
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<Exit>().is_some() => {
            ExitCode::from(e.downcast_ref::<Exit>().map_or(1, |x| x.0))
        }
        Err(e) => {
            eprintln!("walhook: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
