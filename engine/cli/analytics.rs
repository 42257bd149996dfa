//! `bigbrotr analytics`: the summary tables behind the statistics views (refresh, rebuild,
//! status, explain).

use bigbrotr::analytics;
use bigbrotr::config::Config;
use clap::{Args, Subcommand};

/// Flags of `bigbrotr analytics`.
#[derive(Args, Debug)]
pub struct AnalyticsArgs {
    /// Fold every row committed so far, run one orphan cleanup, print a report and exit.
    #[arg(long)]
    once: bool,
    #[command(subcommand)]
    cmd: Option<AnalyticsCmd>,
}

/// Subcommands of `bigbrotr analytics`.
#[derive(Subcommand, Debug)]
pub enum AnalyticsCmd {
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

/// `bigbrotr analytics`.
pub async fn run(cfg: &Config, args: AnalyticsArgs) -> anyhow::Result<()> {
    let archive = bigbrotr::open_database(cfg).await?;
    let pool = archive.pool.clone();
    let a = &cfg.analytics;
    match args.cmd {
        Some(AnalyticsCmd::Explain { runs, plans }) => {
            let (events, sightings, relays, snapshots) = analytics::archive_size(&pool).await?;
            let status = analytics::status(&pool).await?;
            println!(
                "archive: {events} events, {sightings} sightings, {relays} relays, {snapshots} snapshots"
            );
            print!("summaries: {}", status.render());
            let timings = analytics::explain(&pool, runs).await?;
            print!("{}", analytics::render_timings(&timings, plans));
        }
        Some(AnalyticsCmd::Rebuild) => {
            let n = analytics::rebuild(&pool).await?;
            println!("summaries rebuilt from {n} events");
        }
        Some(AnalyticsCmd::Status) => {
            print!("{}", analytics::status(&pool).await?.render());
        }
        None => {
            let stop = super::stop_on_signals(cfg);
            if args.once {
                analytics::set_view_tail(&pool, a.view_tail).await?;
                let r = analytics::refresh_all(
                    &pool,
                    a.batch,
                    std::time::Duration::from_secs(60),
                    Some(&stop),
                )
                .await?;
                print!("{}", r.render());
                let c = analytics::cleanup_orphans(&pool, a.orphan_batch, Some(&stop)).await?;
                print!("{}", c.render());
            } else {
                analytics::run_forever(cfg, &pool, stop).await?;
            }
        }
    }
    Ok(())
}
