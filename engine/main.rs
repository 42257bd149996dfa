//! The `bigbrotr` command.

use anyhow::Context;
use bigbrotr::config::Config;
use bigbrotr::stages::model::RelayUrl;
use bigbrotr::sync::{self, SyncOptions};
use clap::{Parser, Subcommand};
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
    Sync {
        /// One pass: backfill every relay up to now (or --until), drain, exit.
        #[arg(long)]
        once: bool,
        /// Sync this relay (repeatable); default: every relay in the registry.
        #[arg(long = "relay", value_name = "URL")]
        relays: Vec<String>,
        /// Oldest created_at to fetch (unix seconds).
        #[arg(long)]
        since: Option<i64>,
        /// Newest created_at to fetch (unix seconds); an explicit range leaves cursors alone.
        #[arg(long)]
        until: Option<i64>,
        /// No progress line.
        #[arg(long)]
        quiet: bool,
    },
    /// Long-running service: keep every registry relay synced (backfill, then live).
    Run,
    /// Check relays' health (NIP-11, NIP-66: DNS, TLS, open/read/write RTTs), store the
    /// results, publish kind 30166/10166 when `monitor.publish_relays` is set.
    Monitor {
        /// One pass over the registry, print a report and exit; otherwise a pass every
        /// `monitor.interval` seconds until Ctrl-C.
        #[arg(long)]
        once: bool,
    },
    /// Discover relays: seed file, HTTP lists and hints in archived events; validate candidates.
    Finder {
        /// Run every source once, validate the due candidates, print a report and exit.
        #[arg(long)]
        once: bool,
    },
    /// End-to-end ingestion benchmark on local relays (no network needed).
    Bench {
        /// Distinct events in the corpus.
        #[arg(long, default_value_t = 200_000)]
        events: usize,
        /// Relays serving them (each in its own process).
        #[arg(long, default_value_t = 8)]
        relays: usize,
        /// Fraction of the corpus every relay holds beyond its own share (0 = disjoint, 1 = all relays hold everything).
        #[arg(long, default_value_t = 0.0)]
        overlap: f64,
        /// Kinds to generate (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "1,7,0,3,10002,30023")]
        kinds: Vec<u16>,
        /// Content size range in bytes, MIN-MAX.
        #[arg(long, default_value = "20-400")]
        content: String,
        /// Corpus seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Directory for the cached corpus and the bench cluster.
        #[arg(long, default_value = "data/bench")]
        dir: PathBuf,
        /// Benchmark against this server (a fresh database is created on it) instead of the embedded cluster.
        #[arg(long)]
        database_url: Option<String>,
        /// Print the report as JSON too.
        #[arg(long)]
        json: bool,
    },
    /// The embedded PostgreSQL cluster.
    Db {
        #[command(subcommand)]
        cmd: DbCmd,
    },
    /// Serve events from a JSON-lines file as a local relay (benches, tests).
    #[command(hide = true)]
    Testrelay {
        /// Events, one JSON object per line.
        #[arg(long)]
        events: PathBuf,
        /// Port on 127.0.0.1.
        #[arg(long)]
        port: u16,
    },
    /// Generate signed events into a JSON-lines file.
    #[command(hide = true)]
    Gen {
        /// How many.
        #[arg(long)]
        count: usize,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// RNG seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

#[derive(Subcommand, Debug)]
enum DbCmd {
    /// Print the connection string of the archive.
    Url,
    /// Stop the embedded cluster.
    Stop,
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
    match cli.cmd {
        Cmd::Testrelay { events, port } => {
            let evs = bigbrotr::gen::read_jsonl(&events)?;
            eprintln!("serving {} events on ws://127.0.0.1:{port}", evs.len());
            return bigbrotr::testrelay::serve_forever(port, evs, Default::default()).await;
        }
        Cmd::Gen { count, out, seed } => {
            let spec = bigbrotr::gen::GenSpec {
                count,
                seed,
                ..Default::default()
            };
            let evs = bigbrotr::gen::generate(&spec);
            bigbrotr::gen::write_jsonl(&out, &evs)?;
            eprintln!("wrote {} events to {}", evs.len(), out.display());
            return Ok(());
        }
        _ => {}
    }
    let cfg = Config::load(cli.config.as_deref())?;
    match cli.cmd {
        Cmd::Init => {
            let archive = bigbrotr::open_database(&cfg).await?;
            let pool = archive.pool.clone();
            let (relays, refused) =
                bigbrotr::read_relay_list(&cfg.seeds.file, cfg.sync.allow_local)
                    .with_context(|| format!("key `seeds.file` in {}", source(&cfg)))?;
            let new = bigbrotr::register_relays(&pool, &relays).await?;
            println!(
                "schema ready; {} seed relays read from {} ({} new in the registry, {} lines refused)",
                relays.len(),
                cfg.seeds.file.display(),
                new,
                refused
            );
        }
        Cmd::Sync {
            once,
            relays,
            since,
            until,
            quiet,
        } => {
            let archive = bigbrotr::open_database(&cfg).await?;
            let pool = archive.pool.clone();
            let mut urls = Vec::new();
            for r in &relays {
                let u = RelayUrl::parse(r, cfg.sync.allow_local).map_err(|e| {
                    anyhow::anyhow!(
                        "--relay {r}: {e}{}",
                        if matches!(e, bigbrotr::stages::model::relay::UrlError::Local) {
                            " (set sync.allow_local = true or BIGBROTR_ALLOW_LOCAL=1)"
                        } else {
                            ""
                        }
                    )
                })?;
                urls.push(u);
            }
            bigbrotr::register_relays(&pool, &urls).await?;
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            sync::stop_on_signals(stop_tx);
            if once {
                if urls.is_empty() {
                    bigbrotr::seed_if_empty(&cfg, &pool).await?;
                    urls = registry(&pool, &cfg).await?;
                }
                let opts = SyncOptions {
                    since,
                    until,
                    progress: !quiet,
                };
                let report = sync::sync_once(&cfg, pool, urls, &opts, Some(stop_rx)).await?;
                print!("{}", report.render());
            } else {
                let http = bigbrotr::http::Http::bind(&cfg, &archive.url, pool.clone()).await?;
                sync::run_forever(
                    &cfg,
                    pool,
                    urls,
                    stop_rx,
                    bigbrotr::http::serve_on_start(http),
                )
                .await?;
            }
        }
        Cmd::Finder { once } => {
            if !once {
                anyhow::bail!(
                    "the finder runs continuously inside `bigbrotr run`; use `bigbrotr finder --once` for one pass"
                );
            }
            let archive = bigbrotr::open_database(&cfg).await?;
            let report = bigbrotr::finder::run_once(&cfg, archive.pool.clone()).await?;
            print!("{}", report.render());
        }
        Cmd::Run => {
            let archive = bigbrotr::open_database(&cfg).await?;
            let pool = archive.pool.clone();
            bigbrotr::seed_if_empty(&cfg, &pool).await?;
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            sync::stop_on_signals(stop_tx);
            let http = bigbrotr::http::Http::bind(&cfg, &archive.url, pool.clone()).await?;
            // The monitor runs beside the sync; what it learns reaches the connectors through
            // the registry (NIP-11 limits, reachability).
            let monitor = cfg.monitor.enabled.then(|| {
                let (cfg, pool, stop) = (cfg.clone(), pool.clone(), stop_rx.clone());
                tokio::spawn(async move {
                    if let Err(e) = bigbrotr::monitor::run_forever(&cfg, &pool, stop).await {
                        tracing::warn!(error = %format!("{e:#}"), "monitor stopped");
                    }
                })
            });
            sync::run_forever(
                &cfg,
                pool,
                Vec::new(),
                stop_rx,
                bigbrotr::http::serve_on_start(http),
            )
            .await?;
            if let Some(m) = monitor {
                let _ = m.await;
            }
        }
        Cmd::Monitor { once } => {
            let archive = bigbrotr::open_database(&cfg).await?;
            let pool = archive.pool.clone();
            bigbrotr::seed_if_empty(&cfg, &pool).await?;
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            sync::stop_on_signals(stop_tx);
            if once {
                let report = bigbrotr::monitor::run_once(&cfg, &pool, None, Some(stop_rx)).await?;
                print!("{}", report.render());
            } else {
                bigbrotr::monitor::run_forever(&cfg, &pool, stop_rx).await?;
            }
        }
        Cmd::Db { cmd } => {
            if !cfg.database.url.is_empty() {
                match cmd {
                    DbCmd::Url => println!("{}", cfg.database.url),
                    DbCmd::Stop => println!("database.url is set: nothing embedded to stop"),
                }
                return Ok(());
            }
            let pg = bigbrotr::embedded_pg::EmbeddedPg::start(
                &cfg.embedded.data_dir,
                cfg.embedded.port,
                &cfg.embedded.db_name,
                false,
            )
            .await?;
            match cmd {
                DbCmd::Url => println!("{}", pg.url(&cfg.embedded.db_name)),
                DbCmd::Stop => {
                    pg.stop().await?;
                    println!("embedded PostgreSQL stopped");
                }
            }
        }
        Cmd::Bench {
            events,
            relays,
            overlap,
            kinds,
            content,
            seed,
            dir,
            database_url,
            json,
        } => {
            let (lo, hi) = content
                .split_once('-')
                .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)))
                .ok_or_else(|| anyhow::anyhow!("--content {content}: expected MIN-MAX bytes"))?;
            let spec = bigbrotr::bench::BenchSpec {
                events,
                relays,
                overlap: overlap.clamp(0.0, 1.0),
                kinds,
                content: (lo, hi),
                seed,
                dir,
                database_url,
                keep: false,
            };
            let report = bigbrotr::bench::run(&cfg, &spec).await?;
            print!("{}", report.render(&spec));
            if json {
                println!("{}", serde_json::to_string(&report)?);
            }
        }
        Cmd::Testrelay { .. } | Cmd::Gen { .. } => {}
    }
    Ok(())
}

fn source(cfg: &Config) -> String {
    cfg.source
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "(built-in defaults)".into())
}

async fn registry(pool: &bigbrotr::db::Pool, cfg: &Config) -> anyhow::Result<Vec<RelayUrl>> {
    let rows = bigbrotr::db::list_relays(pool).await?;
    Ok(rows
        .into_iter()
        .filter_map(|(u, _)| RelayUrl::parse(&u, cfg.sync.allow_local).ok())
        .filter(|u| !u.network().is_overlay() || !cfg.net.socks5.is_empty())
        .collect())
}
