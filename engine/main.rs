//! The `bigbrotr` command: parses the command line and dispatches to `cli/`, one file per
//! subcommand family.

mod cli;

use bigbrotr::config::Config;
use clap::{Parser, Subcommand};
use cli::analytics::AnalyticsArgs;
use cli::bench::BenchArgs;
use cli::config::ConfigCmd;
use cli::db::{BackupArgs, DbCmd, RestoreArgs};
use cli::finder::FinderArgs;
use cli::monitor::MonitorArgs;
use cli::sync::SyncArgs;
use cli::tools::{GenArgs, TestrelayArgs};
use std::path::PathBuf;

/// Archive and monitor the Nostr network into PostgreSQL.
#[derive(Parser, Debug)]
#[command(name = "bigbrotr", version, about)]
struct Cli {
    /// Configuration file (default: config/bigbrotr.toml if present, else built-in defaults).
    #[arg(long, short, global = true, env = "BIGBROTR_CONFIG")]
    config: Option<PathBuf>,
    /// Log filter (tracing EnvFilter syntax, e.g. `info`, `bigbrotr=debug`).
    #[arg(
        long,
        global = true,
        env = "BIGBROTR_LOG",
        default_value = "info,tokio_postgres=warn"
    )]
    log: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create or upgrade the schema and load the seed relays into the registry.
    Init,
    /// Sync events from relays into the archive.
    Sync(SyncArgs),
    /// Long-running service: keep every registry relay synced (backfill, then live).
    Run,
    /// Check relays' health (NIP-11, NIP-66: DNS, TLS, open/read/write RTTs), store the
    /// results, publish kind 30166/10166 when `monitor.publish_relays` is set.
    Monitor(MonitorArgs),
    /// Answer NIP-90 job requests (kinds 5900-5903: counts, events, relay and archive
    /// statistics) from the archive on `dvm.relays` until Ctrl-C.
    Dvm,
    /// Keep the summary tables behind the statistics views current and delete orphans: a
    /// refresh every `analytics.interval` seconds until Ctrl-C (also part of `run`).
    Analytics(AnalyticsArgs),
    /// Discover relays: seed file, HTTP lists and hints in archived events; validate candidates.
    Finder(FinderArgs),
    /// End-to-end ingestion benchmark on local relays (no network needed).
    Bench(BenchArgs),
    /// Several processes on one archive: `fleet status` shows workers, relays and roles.
    Fleet {
        #[command(subcommand)]
        cmd: cli::fleet::FleetCmd,
    },
    /// Back up the archive to FILE: one consistent snapshot (pg_dump custom format), safe
    /// while the engine runs.
    Backup(BackupArgs),
    /// Restore a backup into a fresh database (created when missing), then bring its schema up
    /// to date.
    Restore(RestoreArgs),
    /// Configuration tools.
    #[command(hide = true)]
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// The embedded PostgreSQL cluster.
    Db {
        #[command(subcommand)]
        cmd: DbCmd,
    },
    /// Serve events from a JSON-lines file as a local relay (benches, tests).
    #[command(hide = true)]
    Testrelay(TestrelayArgs),
    /// Generate signed events into a JSON-lines file.
    #[command(hide = true)]
    Gen(GenArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    // File descriptors: relay sockets and HTTP connections share them. Take the hard limit,
    // and say what it is (http.max_connections is clamped to a quarter of it).
    match bigbrotr::http::server::raise_nofile_limit() {
        Ok((before, after, hard)) => {
            tracing::info!(
                soft_before = before,
                soft = after,
                hard,
                "file-descriptor limit"
            )
        }
        Err(e) => tracing::warn!(error = %e, "cannot raise the file-descriptor limit"),
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(real_main(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn real_main(cli: Cli) -> anyhow::Result<()> {
    // The tools read no configuration, and bad flags are refused before it is read.
    match cli.cmd {
        Cmd::Testrelay(args) => return cli::tools::testrelay(args).await,
        Cmd::Gen(args) => return cli::tools::gen(args),
        Cmd::Sync(ref args) => args.check()?,
        _ => {}
    }
    let cfg = Config::load(cli.config.as_deref())?;
    match cli.cmd {
        Cmd::Init => cli::db::init(&cfg).await,
        Cmd::Sync(args) => cli::sync::run(&cfg, args).await,
        Cmd::Run => cli::run::run(&cfg).await,
        Cmd::Monitor(args) => cli::monitor::run(&cfg, args).await,
        Cmd::Dvm => cli::dvm::run(&cfg).await,
        Cmd::Analytics(args) => cli::analytics::run(&cfg, args).await,
        Cmd::Finder(args) => cli::finder::run(&cfg, args).await,
        Cmd::Bench(args) => cli::bench::run(&cfg, args).await,
        Cmd::Fleet { cmd } => cli::fleet::run(&cfg, cmd).await,
        Cmd::Backup(args) => cli::db::backup(&cfg, args).await,
        Cmd::Restore(args) => cli::db::restore(&cfg, args).await,
        Cmd::Config { cmd } => cli::config::run(&cfg, cmd),
        Cmd::Db { cmd } => cli::db::db(&cfg, cmd).await,
        Cmd::Testrelay(_) | Cmd::Gen(_) => Ok(()),
    }
}
