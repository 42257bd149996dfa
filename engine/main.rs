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
    /// Answer NIP-90 job requests (kinds 5900-5903: counts, events, relay and archive
    /// statistics) from the archive on `dvm.relays` until Ctrl-C.
    Dvm,
    /// Keep the summary tables behind the statistics views current and delete orphans: a
    /// refresh every `analytics.interval` seconds until Ctrl-C (also part of `run`).
    Analytics {
        /// Fold every row committed so far, run one orphan cleanup, print a report and exit.
        #[arg(long)]
        once: bool,
        #[command(subcommand)]
        cmd: Option<AnalyticsCmd>,
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
        /// The relays speak NIP-77, so the engine reconciles instead of walking.
        #[arg(long)]
        nip77: bool,
        /// After the pass, sync the unchanged relays again and report its time and traffic.
        #[arg(long)]
        resync: bool,
    },
    /// Back up the archive to FILE: one consistent snapshot (pg_dump custom format), safe
    /// while the engine runs.
    Backup {
        /// The archive file to write (replaced only once the dump is complete).
        out: PathBuf,
        /// Dump this database instead of the configured one (connect to PostgreSQL directly,
        /// not through PgBouncer).
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Restore a backup into a fresh database (created when missing), then bring its schema up
    /// to date.
    Restore {
        /// The archive file written by `bigbrotr backup` (or `pg_dump -Fc`).
        input: PathBuf,
        /// Restore into this database instead of the configured one.
        #[arg(long)]
        database_url: Option<String>,
        /// Restore into a database that already holds tables, replacing the objects the
        /// backup contains.
        #[arg(long)]
        force: bool,
    },
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
    Testrelay {
        /// Events, one JSON object per line.
        #[arg(long)]
        events: PathBuf,
        /// Port on 127.0.0.1.
        #[arg(long)]
        port: u16,
        /// Answer NIP-77 (negentropy) reconciliation.
        #[arg(long)]
        nip77: bool,
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
enum ConfigCmd {
    /// Load and validate the configuration (file and BIGBROTR_* environment), then print the
    /// effective values with secrets masked.
    Check,
}

#[derive(Subcommand, Debug)]
enum AnalyticsCmd {
    /// Time every statistics view with EXPLAIN (ANALYZE, BUFFERS) and print a Markdown table.
    Explain {
        /// Timed runs per query after the first.
        #[arg(long, default_value_t = 5)]
        runs: u32,
        /// Print each query's plan too.
        #[arg(long)]
        plans: bool,
    },
    /// Recompute every summary from the base tables (blocks ingestion while it runs).
    Rebuild,
    /// Print how far the summaries are behind the archive.
    Status,
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
    match cli.cmd {
        Cmd::Testrelay {
            events,
            port,
            nip77,
        } => {
            let evs = bigbrotr_testkit::gen::read_jsonl(&events)?;
            eprintln!("serving {} events on ws://127.0.0.1:{port}", evs.len());
            let behavior = bigbrotr_testkit::relay::Behavior {
                neg: if nip77 {
                    bigbrotr_testkit::relay::NegMode::Normal
                } else {
                    bigbrotr_testkit::relay::NegMode::Unsupported
                },
                ..Default::default()
            };
            return bigbrotr_testkit::relay::serve_forever(port, evs, behavior).await;
        }
        Cmd::Gen { count, out, seed } => {
            let spec = bigbrotr_testkit::gen::GenSpec {
                count,
                seed,
                ..Default::default()
            };
            let evs = bigbrotr_testkit::gen::generate(&spec);
            bigbrotr_testkit::gen::write_jsonl(&out, &evs)?;
            eprintln!("wrote {} events to {}", evs.len(), out.display());
            return Ok(());
        }
        // An empty range would sync nothing and move no cursor: refuse it before any work.
        Cmd::Sync {
            since: Some(since),
            until: Some(until),
            ..
        } if since > until => {
            anyhow::bail!(
                "--since {since} is after --until {until}: the range is empty (since must be <= until)"
            );
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
            sync::stop_on_signals(stop_tx, cfg.shutdown.grace());
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
                // As in `run`: the statistics views stay current beside a long-running sync.
                let analytics = cfg.analytics.enabled.then(|| {
                    let (cfg, pool, stop) = (cfg.clone(), pool.clone(), stop_rx.clone());
                    tokio::spawn(async move {
                        if let Err(e) = bigbrotr::analytics::run_forever(&cfg, &pool, stop).await
                        {
                            tracing::warn!(error = %format!("{e:#}"), "analytics refresher stopped");
                        }
                    })
                });
                sync::run_forever(
                    &cfg,
                    pool,
                    urls,
                    stop_rx,
                    bigbrotr::http::serve_on_start(http),
                )
                .await?;
                if let Some(a) = analytics {
                    let _ = a.await;
                }
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
            sync::stop_on_signals(stop_tx, cfg.shutdown.grace());
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
            // The summaries behind the statistics views are refreshed beside the sync, off the
            // sink's transactions.
            let analytics = cfg.analytics.enabled.then(|| {
                let (cfg, pool, stop) = (cfg.clone(), pool.clone(), stop_rx.clone());
                tokio::spawn(async move {
                    if let Err(e) = bigbrotr::analytics::run_forever(&cfg, &pool, stop).await {
                        tracing::warn!(error = %format!("{e:#}"), "analytics refresher stopped");
                    }
                })
            });
            // The DVM answers job requests from the archive beside the sync; a bad `[dvm]`
            // fails the start rather than going unnoticed.
            let dvm = if cfg.dvm.enabled {
                Some(bigbrotr::dvm::start(&cfg, &archive.url).await?)
            } else {
                None
            };
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
            if let Some(a) = analytics {
                let _ = a.await;
            }
            if let Some(d) = dvm {
                d.stop().await;
            }
        }
        Cmd::Dvm => {
            // A missing key or relay list fails before the database is started.
            bigbrotr::dvm::settings(&cfg)?;
            let archive = bigbrotr::open_database(&cfg).await?;
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            sync::stop_on_signals(stop_tx, cfg.shutdown.grace());
            bigbrotr::dvm::run_forever(&cfg, &archive.url, stop_rx).await?;
        }
        Cmd::Monitor { once } => {
            let archive = bigbrotr::open_database(&cfg).await?;
            let pool = archive.pool.clone();
            bigbrotr::seed_if_empty(&cfg, &pool).await?;
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            sync::stop_on_signals(stop_tx, cfg.shutdown.grace());
            if once {
                let report = bigbrotr::monitor::run_once(&cfg, &pool, None, Some(stop_rx)).await?;
                print!("{}", report.render());
            } else {
                bigbrotr::monitor::run_forever(&cfg, &pool, stop_rx).await?;
            }
        }
        Cmd::Analytics { once, cmd } => {
            let archive = bigbrotr::open_database(&cfg).await?;
            let pool = archive.pool.clone();
            let a = &cfg.analytics;
            match cmd {
                Some(AnalyticsCmd::Explain { runs, plans }) => {
                    let (events, sightings, relays, snapshots) =
                        bigbrotr::analytics::archive_size(&pool).await?;
                    let status = bigbrotr::analytics::status(&pool).await?;
                    println!(
                        "archive: {events} events, {sightings} sightings, {relays} relays, {snapshots} snapshots"
                    );
                    print!("summaries: {}", status.render());
                    let timings = bigbrotr::analytics::explain(&pool, runs).await?;
                    print!("{}", bigbrotr::analytics::render_timings(&timings, plans));
                }
                Some(AnalyticsCmd::Rebuild) => {
                    let n = bigbrotr::analytics::rebuild(&pool).await?;
                    println!("summaries rebuilt from {n} events");
                }
                Some(AnalyticsCmd::Status) => {
                    print!("{}", bigbrotr::analytics::status(&pool).await?.render());
                }
                None => {
                    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
                    sync::stop_on_signals(stop_tx, cfg.shutdown.grace());
                    if once {
                        bigbrotr::analytics::set_view_tail(&pool, a.view_tail).await?;
                        let r = bigbrotr::analytics::refresh_all(
                            &pool,
                            a.batch,
                            std::time::Duration::from_secs(60),
                            Some(&stop_rx),
                        )
                        .await?;
                        print!("{}", r.render());
                        let c = bigbrotr::analytics::cleanup_orphans(
                            &pool,
                            a.orphan_batch,
                            Some(&stop_rx),
                        )
                        .await?;
                        print!("{}", c.render());
                    } else {
                        bigbrotr::analytics::run_forever(&cfg, &pool, stop_rx).await?;
                    }
                }
            }
        }
        Cmd::Backup { out, database_url } => {
            let report =
                bigbrotr::backup::backup_configured(&cfg, database_url.as_deref(), &out).await?;
            print!("{}", report.render());
        }
        Cmd::Restore {
            input,
            database_url,
            force,
        } => {
            let opts = bigbrotr::backup::RestoreOptions { force };
            let report =
                bigbrotr::backup::restore_configured(&cfg, database_url.as_deref(), &input, &opts)
                    .await?;
            print!("{}", report.render());
        }
        Cmd::Config {
            cmd: ConfigCmd::Check,
        } => {
            print!("{}", config_check(&cfg)?);
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
            nip77,
            resync,
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
                nip77,
                resync,
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

/// `config check`: what the process would run with, secrets masked; connection strings must
/// parse (Config::load does not open them).
fn config_check(cfg: &Config) -> anyhow::Result<String> {
    use std::fmt::Write;
    let mut shown = cfg.clone();
    for (key, url) in [
        ("database.url", &mut shown.database.url),
        (
            "http.readonly_database_url",
            &mut shown.http.readonly_database_url,
        ),
    ] {
        if url.is_empty() {
            continue;
        }
        if url.parse::<tokio_postgres::Config>().is_err() {
            anyhow::bail!(
                "{}: key `{key}` is not a valid connection string",
                source(cfg)
            );
        }
        *url = bigbrotr::backup::mask_url(url);
    }
    let mut out = String::new();
    writeln!(out, "configuration OK: {}", source(cfg))?;
    let database = if shown.database.url.is_empty() {
        format!(
            "(embedded cluster in {})",
            shown.embedded.data_dir.display()
        )
    } else {
        shown.database.url.clone()
    };
    writeln!(out, "database.url = {database}")?;
    writeln!(out, "http.listen = {}", shown.http.listen)?;
    writeln!(
        out,
        "http.readonly_database_url = {}",
        shown.http.readonly_database_url
    )?;
    writeln!(out, "net.socks5 = {}", shown.net.socks5)?;
    writeln!(out, "seeds.file = {}", shown.seeds.file.display())?;
    writeln!(out, "{shown:#?}")?;
    Ok(out)
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
